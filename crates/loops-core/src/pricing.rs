//! What tokens cost, as an estimate: loops.yaml's `pricing:` table over built-in prices of
//! the common models. Everything that shows a cost (budgets, `loops status`, `loops list`,
//! the `Cost-Estimate` trailer, the web UI) asks [`Pricing::estimate`], so they agree.
//!
//! The built-in prices are public list prices as loops last knew them: estimates that may
//! be out of date, never a bill. A model matches its price exactly, else by the longest
//! known prefix (`claude-sonnet-4-5-20250929` is priced as `claude-sonnet-4`); a model
//! nothing matches costs "unknown" (`None`), never silently 0, unless its provider is a
//! local server, which costs nothing.

use crate::config_fields::{Field, Section};
use crate::diag::{Diagnostic, YamlLocator};
use crate::usage::Usage;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use yaml_serde::Value;

/// Dollars per million tokens of each kind.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

/// An estimated cost in dollars.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, serde::Serialize)]
pub struct Cost(pub f64);

impl Cost {
    /// `$0.0123`: four decimals, so a cheap run does not read as free.
    pub fn display(&self) -> String {
        format!("${:.4}", self.0)
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost(self.0 + o.0)
    }
}

const fn p(input: f64, output: f64, cache_read: f64, cache_write: f64) -> Price {
    Price {
        input,
        output,
        cache_read,
        cache_write,
    }
}

/// Built-in list prices (USD per million tokens). Estimates that may be out of date:
/// override any of them under `pricing:` in loops.yaml. Keys are model-name prefixes.
pub const BUILT_IN: &[(&str, Price)] = &[
    ("claude-opus-4-5", p(5.0, 25.0, 0.5, 6.25)),
    ("claude-opus-4", p(15.0, 75.0, 1.5, 18.75)),
    ("claude-sonnet-4", p(3.0, 15.0, 0.3, 3.75)),
    ("claude-haiku-4", p(1.0, 5.0, 0.1, 1.25)),
    ("claude-3-7-sonnet", p(3.0, 15.0, 0.3, 3.75)),
    ("claude-3-5-sonnet", p(3.0, 15.0, 0.3, 3.75)),
    ("claude-3-5-haiku", p(0.8, 4.0, 0.08, 1.0)),
    ("claude-3-opus", p(15.0, 75.0, 1.5, 18.75)),
    ("claude-3-haiku", p(0.25, 1.25, 0.03, 0.3)),
    // OpenAI charges no cache writes: a written prefix costs plain input.
    ("gpt-5", p(1.25, 10.0, 0.125, 1.25)),
    ("gpt-5-mini", p(0.25, 2.0, 0.025, 0.25)),
    ("gpt-5-nano", p(0.05, 0.4, 0.005, 0.05)),
    ("gpt-4.1", p(2.0, 8.0, 0.5, 2.0)),
    ("gpt-4.1-mini", p(0.4, 1.6, 0.1, 0.4)),
    ("gpt-4.1-nano", p(0.1, 0.4, 0.025, 0.1)),
    ("gpt-4o", p(2.5, 10.0, 1.25, 2.5)),
    ("gpt-4o-mini", p(0.15, 0.6, 0.075, 0.15)),
    ("o3", p(2.0, 8.0, 0.5, 2.0)),
    ("o4-mini", p(1.1, 4.4, 0.275, 1.1)),
];

/// loops.yaml `pricing:`: per-model prices that replace (or add to) the built-in ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pricing {
    pub overrides: BTreeMap<String, Price>,
}

impl Pricing {
    /// The price of `model`: loops.yaml's, else the built-in; exact first, then the
    /// longest prefix (an override of `gpt-4o` covers `gpt-4o-2024-08-06` too).
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.overrides.get(model) {
            return Some(*p);
        }
        let over = self.overrides.iter().map(|(k, p)| (k.as_str(), *p));
        over.chain(BUILT_IN.iter().copied())
            .filter(|(k, _)| model.starts_with(k))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, p)| p)
    }

    /// The estimated cost of `usage` on `model`; `None` when its price is unknown. `local`:
    /// the provider is a server on this machine or network, which costs nothing (a price
    /// written for the model in loops.yaml still counts).
    pub fn estimate(&self, usage: &Usage, model: &str, local: bool) -> Option<Cost> {
        match self.price(model) {
            Some(p) => Some(cost_of(usage, &p)),
            None if local => Some(Cost(0.0)),
            None => None,
        }
    }
}

/// `usage` at `p`. `input` is uncached input, as loops records it for both wire formats.
fn cost_of(u: &Usage, p: &Price) -> Cost {
    let m = 1_000_000.0;
    Cost(
        (u.input as f64 * p.input
            + u.output as f64 * p.output
            + u.cache_read as f64 * p.cache_read
            + u.cache_write as f64 * p.cache_write)
            / m,
    )
}

/// The estimated cost of `usage` on `model` with the built-in prices only (see
/// [`Pricing::estimate`] for the workspace's table).
pub fn estimate(usage: &Usage, model: &str) -> Option<Cost> {
    Pricing::default().estimate(usage, model, false)
}

/// Whether a provider's `base_url` is a server on this machine or a private network: its
/// tokens cost nothing.
pub fn is_local_url(base_url: &str) -> bool {
    let rest = base_url.split("://").nth(1).unwrap_or(base_url);
    let hostport = rest.split('/').next().unwrap_or("");
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => hostport.split(':').next().unwrap_or(""),
    };
    if host == "localhost" || host.ends_with(".local") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// One model's price as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct PriceYaml {
    input: Field<f64>,
    output: Field<f64>,
    cache_read: Field<f64>,
    cache_write: Field<f64>,
}

const PRICE_KEYS: &[&str] = &["input", "output", "cache_read", "cache_write"];
const PRICE_HELP: &str =
    "dollars per million tokens, e.g. pricing: { my-model: { input: 3, output: 15 } }";

/// Reads loops.yaml `pricing:`; problems go to `diags`, each at its place.
pub(crate) fn parse(
    file: &Path,
    loc: &YamlLocator,
    v: &Value,
    diags: &mut Vec<Diagnostic>,
) -> Pricing {
    let mut out = Pricing::default();
    let Some(map) = v.as_mapping() else {
        diags.push(
            Diagnostic::error(file, "`pricing` must be a mapping of model names")
                .at(loc.value(&["pricing"]))
                .help(PRICE_HELP),
        );
        return out;
    };
    for (k, v) in map {
        let Some(model) = k.as_str() else { continue };
        match v.as_mapping() {
            Some(m) => {
                let (y, mut sec) = Section::read::<PriceYaml>(file, loc, &["pricing", model], m);
                let missing = [("input", &y.input), ("output", &y.output)]
                    .into_iter()
                    .filter(|(_, f)| matches!(f, Field::Absent))
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>();
                if !missing.is_empty() {
                    diags.push(
                        Diagnostic::error(
                            file,
                            format!("`pricing.{model}` has no `{}`", missing.join("` or `")),
                        )
                        .at(loc.key(&["pricing", model]))
                        .help(PRICE_HELP),
                    );
                }
                if let Some(price) = read_price(&mut sec, y, model) {
                    out.overrides.insert(model.to_string(), price);
                }
                diags.extend(sec.finish());
            }
            None => diags.push(
                Diagnostic::error(file, format!("`pricing.{model}` must be a mapping"))
                    .at(loc.value(&["pricing", model]))
                    .help(PRICE_HELP),
            ),
        }
    }
    out
}

/// One model's price: `input` and `output` are needed; the cache prices default to the
/// input price (what a provider without cache discounts charges).
fn read_price(sec: &mut Section, y: PriceYaml, model: &str) -> Option<Price> {
    sec.unknown_keys(PRICE_KEYS);
    let one = |sec: &mut Section, key: &str, f: Field<f64>| {
        let v = sec.take(
            key,
            f,
            format!("`pricing.{model}.{key}` must be a number"),
            PRICE_HELP,
        )?;
        if !(v >= 0.0 && f64::is_finite(v)) {
            sec.error(
                key,
                format!("`pricing.{model}.{key}` must be 0 or more"),
                PRICE_HELP,
            );
            return None;
        }
        Some(v)
    };
    let input = one(sec, "input", y.input);
    let output = one(sec, "output", y.output);
    let cache_read = one(sec, "cache_read", y.cache_read);
    let cache_write = one(sec, "cache_write", y.cache_write);
    let (Some(input), Some(output)) = (input, output) else {
        return None;
    };
    Some(Price {
        input,
        output,
        cache_read: cache_read.unwrap_or(input),
        cache_write: cache_write.unwrap_or(input),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Usage {
        Usage {
            input,
            output,
            cache_read,
            cache_write,
        }
    }

    #[test]
    fn a_dated_model_name_is_priced_by_its_longest_known_prefix() {
        let p = Pricing::default();
        assert_eq!(
            p.price("claude-opus-4-5-20251101"),
            p.price("claude-opus-4-5")
        );
        assert_ne!(p.price("claude-opus-4-5"), p.price("claude-opus-4"));
        assert_eq!(p.price("gpt-4o-mini-2024-07-18"), p.price("gpt-4o-mini"));
        assert_eq!(p.price("gemma-3-270m"), None);
    }

    #[test]
    fn an_unknown_model_costs_unknown_unless_its_server_is_local() {
        let u = usage(1_000_000, 0, 0, 0);
        let p = Pricing::default();
        assert_eq!(p.estimate(&u, "my-own-model", false), None);
        assert_eq!(p.estimate(&u, "my-own-model", true), Some(Cost(0.0)));
        // A price written for it counts even on a local server.
        let mut p = Pricing::default();
        p.overrides.insert(
            "my-own".into(),
            Price {
                input: 2.0,
                output: 4.0,
                cache_read: 2.0,
                cache_write: 2.0,
            },
        );
        assert_eq!(p.estimate(&u, "my-own-model", true), Some(Cost(2.0)));
    }

    #[test]
    fn each_kind_of_token_has_its_price() {
        let cost = estimate(
            &usage(1_000_000, 1_000_000, 1_000_000, 1_000_000),
            "claude-sonnet-4-5",
        )
        .expect("priced");
        assert!(
            (cost.0 - (3.0 + 15.0 + 0.3 + 3.75)).abs() < 1e-9,
            "{cost:?}"
        );
        assert_eq!(Cost(0.012345).display(), "$0.0123");
    }

    #[test]
    fn local_servers_are_told_apart_from_remote_ones() {
        for url in [
            "http://127.0.0.1:8080/v1",
            "http://localhost:11434",
            "http://[::1]:8080",
            "http://192.168.1.20:8000/v1",
            "http://gpu-box.local:8080",
        ] {
            assert!(is_local_url(url), "{url}");
        }
        for url in [
            "https://api.anthropic.com",
            "https://api.openai.com/v1",
            "http://8.8.8.8",
        ] {
            assert!(!is_local_url(url), "{url}");
        }
    }
}
