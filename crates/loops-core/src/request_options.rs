//! Request options: how a model is asked, beyond what it is asked. Written per provider
//! in loops.yaml and per loop under `payload:` in config.yaml (the loop's win, key by key):
//!
//! ```yaml
//! providers:
//!   local:
//!     kind: openai
//!     base_url: "http://127.0.0.1:8080/v1"
//!     tool_choice: required      # auto | required | none
//!     temperature: 0.2           # 0 to 2
//!     top_p: 0.9                 # 0 to 1
//!     seed: 42
//!     parallel_tool_calls: false
//!     reasoning_effort: low      # low | medium | high
//!     thinking_budget: 2048      # tokens (Anthropic's extended thinking)
//!     extra_body: { top_k: 40, cache_prompt: true }
//! ```
//!
//! This module reads and checks them; `loops_agent::request_options` writes them into each
//! wire format's request body. A block of its own, kept apart from the provider's
//! transport settings, so each can change without the other.

use crate::config_fields::{show, Field, Map, Section, Whole};
use crate::diag::Diagnostic;
use serde::{Deserialize, Serialize};
use yaml_serde::Mapping;

/// Whether and how the model must call a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoice {
    /// The model chooses (the servers' own default).
    Auto,
    /// Every reply is a tool call. Small local models call tools only so; loops always
    /// offers `finish`, so a run still ends.
    Required,
    /// Tools are described but not called.
    None,
}

impl ToolChoice {
    pub fn as_str(&self) -> &'static str {
        match self {
            ToolChoice::Auto => "auto",
            ToolChoice::Required => "required",
            ToolChoice::None => "none",
        }
    }
}

/// How hard a reasoning model thinks (OpenAI's `reasoning_effort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }
}

/// The options of one provider or one loop; `None` is "not written", so that a loop's
/// options can lie over its provider's key by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<ReasoningEffort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_budget: Option<u32>,
    /// Merged as written into the top level of the request body (after loops' own keys,
    /// which it may not name: [`OWNED_BODY_KEYS`]).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra_body: serde_json::Map<String, serde_json::Value>,
}

// Parsing refuses NaN and infinities, so equality is total on every value that exists;
// `Payload` (which carries a loop's options) is `Eq`.
impl Eq for RequestOptions {}

impl RequestOptions {
    /// No options, for a request built by hand (a test, a benchmark).
    pub fn none() -> &'static RequestOptions {
        static NONE: std::sync::OnceLock<RequestOptions> = std::sync::OnceLock::new();
        NONE.get_or_init(RequestOptions::default)
    }

    /// Nothing written: the request is what it was before options existed.
    pub fn is_empty(&self) -> bool {
        *self == RequestOptions::default()
    }

    /// These options with `over`'s on top: each key `over` writes wins, and `extra_body`
    /// is merged key by key (a loop adds to its provider's extra body, or replaces one of
    /// its keys).
    pub fn overridden_by(&self, over: &RequestOptions) -> RequestOptions {
        let mut extra_body = self.extra_body.clone();
        for (k, v) in &over.extra_body {
            extra_body.insert(k.clone(), v.clone());
        }
        RequestOptions {
            tool_choice: over.tool_choice.or(self.tool_choice),
            temperature: over.temperature.or(self.temperature),
            top_p: over.top_p.or(self.top_p),
            seed: over.seed.or(self.seed),
            parallel_tool_calls: over.parallel_tool_calls.or(self.parallel_tool_calls),
            reasoning_effort: over.reasoning_effort.or(self.reasoning_effort),
            thinking_budget: over.thinking_budget.or(self.thinking_budget),
            extra_body,
        }
    }

    /// The keys written, in the order of [`OPTION_KEYS`].
    pub fn written_keys(&self) -> Vec<&'static str> {
        let set = [
            self.tool_choice.is_some(),
            self.temperature.is_some(),
            self.top_p.is_some(),
            self.seed.is_some(),
            self.parallel_tool_calls.is_some(),
            self.reasoning_effort.is_some(),
            self.thinking_budget.is_some(),
            !self.extra_body.is_empty(),
        ];
        OPTION_KEYS
            .iter()
            .zip(set)
            .filter_map(|(k, s)| s.then_some(*k))
            .collect()
    }

    /// One line for a transcript's header: `tool_choice=required, temperature=0.2`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = self.tool_choice {
            parts.push(format!("tool_choice={}", t.as_str()));
        }
        if let Some(t) = self.temperature {
            parts.push(format!("temperature={t}"));
        }
        if let Some(t) = self.top_p {
            parts.push(format!("top_p={t}"));
        }
        if let Some(s) = self.seed {
            parts.push(format!("seed={s}"));
        }
        if let Some(p) = self.parallel_tool_calls {
            parts.push(format!("parallel_tool_calls={p}"));
        }
        if let Some(r) = self.reasoning_effort {
            parts.push(format!("reasoning_effort={}", r.as_str()));
        }
        if let Some(b) = self.thinking_budget {
            parts.push(format!("thinking_budget={b}"));
        }
        if !self.extra_body.is_empty() {
            let keys: Vec<&str> = self.extra_body.keys().map(String::as_str).collect();
            parts.push(format!("extra_body: {}", keys.join(", ")));
        }
        parts.join(", ")
    }
}

/// The keys of request options, wherever they are written.
pub const OPTION_KEYS: &[&str] = &[
    "tool_choice",
    "temperature",
    "top_p",
    "seed",
    "parallel_tool_calls",
    "reasoning_effort",
    "thinking_budget",
    "extra_body",
];

/// Top-level keys of a request body that loops writes itself, so `extra_body` may not:
/// the conversation and the tools are the run's, the model and `max_tokens` have their
/// own settings, streaming decides how the reply is read, and the rest are what the
/// typed options above turn into (one way to write each, so no two settings fight).
pub const OWNED_BODY_KEYS: &[(&str, &str)] = &[
    (
        "model",
        "set `model:` (the provider's, `defaults.model` or `payload.model`)",
    ),
    ("max_tokens", "set `max_tokens:` under the provider"),
    ("messages", "loops builds the conversation itself"),
    (
        "system",
        "loops builds the system prompt itself (prompt.md and the runner's preamble)",
    ),
    ("tools", "loops offers the tools the loop's `tools:` allows"),
    ("stream", "loops decides how it reads the reply"),
    ("stream_options", "loops decides how it reads the reply"),
    ("tool_choice", "use the `tool_choice:` option"),
    (
        "parallel_tool_calls",
        "use the `parallel_tool_calls:` option",
    ),
    ("temperature", "use the `temperature:` option"),
    ("top_p", "use the `top_p:` option"),
    ("seed", "use the `seed:` option"),
    ("reasoning_effort", "use the `reasoning_effort:` option"),
    ("thinking", "use the `thinking_budget:` option"),
];

/// The options, as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct OptionsYaml {
    tool_choice: Field<String>,
    temperature: Field<f64>,
    top_p: Field<f64>,
    seed: Field<i64>,
    parallel_tool_calls: Field<bool>,
    reasoning_effort: Field<String>,
    thinking_budget: Field<Whole<1, { u32::MAX as u64 }>>,
    extra_body: Field<Map>,
}

/// Reads the options from `map`, the mapping `sec` reads (a provider, or a loop's
/// `payload:`); their keys count as known there, and their problems are `sec`'s.
pub(crate) fn read(sec: &mut Section, map: &Mapping) -> RequestOptions {
    let y: OptionsYaml = sec.read_also(map);
    let name = |sec: &Section, key: &str| sec.path_of(key).join(".");
    let mut o = RequestOptions {
        tool_choice: one_of(
            sec,
            "tool_choice",
            y.tool_choice,
            &[
                ("auto", ToolChoice::Auto),
                ("required", ToolChoice::Required),
                ("none", ToolChoice::None),
            ],
            "required makes every reply a tool call (small local models call tools only so; loops always offers `finish`), auto lets the model choose, none forbids calls",
        ),
        ..Default::default()
    };
    o.temperature = fraction(
        sec,
        "temperature",
        &y.temperature,
        2.0,
        "e.g. temperature: 0.2 (0 is the most repeatable; Anthropic's API takes 0 to 1)",
    );
    o.top_p = fraction(
        sec,
        "top_p",
        &y.top_p,
        1.0,
        "e.g. top_p: 0.9 (the share of probability mass sampled from)",
    );
    let bad_seed = bad_text(&y.seed);
    let msg = format!(
        "{} must be a whole number, not {bad_seed}",
        name(sec, "seed")
    );
    o.seed = sec.take(
        "seed",
        y.seed,
        msg,
        "e.g. seed: 42: the same seed and request give the same reply, on servers that support it",
    );
    let bad = bad_text(&y.parallel_tool_calls);
    let msg = format!(
        "{} must be true or false, not {bad}",
        name(sec, "parallel_tool_calls")
    );
    o.parallel_tool_calls = sec.take(
        "parallel_tool_calls",
        y.parallel_tool_calls,
        msg,
        "false asks for at most one tool call per reply",
    );
    o.reasoning_effort = one_of(
        sec,
        "reasoning_effort",
        y.reasoning_effort,
        &[
            ("low", ReasoningEffort::Low),
            ("medium", ReasoningEffort::Medium),
            ("high", ReasoningEffort::High),
        ],
        "how long a reasoning model thinks before it answers (OpenAI's reasoning_effort)",
    );
    let bad = bad_text(&y.thinking_budget);
    let msg = format!(
        "{} must be a whole number of tokens, at least 1, not {bad}",
        name(sec, "thinking_budget")
    );
    o.thinking_budget = sec
        .take("thinking_budget", y.thinking_budget, msg, "e.g. thinking_budget: 2048 (Anthropic's extended thinking wants at least 1024, and less than max_tokens)")
        .map(|w| w.saturating_u32());
    o.extra_body = extra_body(sec, y.extra_body);
    o
}

/// A setting that is one of a few words: the value of the word written, or an error
/// listing the words (`KEY must be a, b or c, not X`).
fn one_of<T: Copy>(
    sec: &mut Section,
    key: &str,
    field: Field<String>,
    words: &[(&str, T)],
    help: &str,
) -> Option<T> {
    let written = field.written()?;
    if let Ok(w) = &written {
        if let Some((_, v)) = words.iter().find(|(word, _)| word == w) {
            return Some(*v);
        }
    }
    let shown = match written {
        Ok(s) => format!("`{s}`"),
        Err(v) => show(&v),
    };
    let names: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
    let listed = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    };
    let msg = format!(
        "{} must be {listed}, not {shown}",
        sec.path_of(key).join(".")
    );
    sec.error(key, msg, help.to_string());
    None
}

/// What a value that is not the setting's type was, for its message.
fn bad_text<T>(f: &Field<T>) -> String {
    match f {
        Field::Bad(v) => show(v),
        _ => String::new(),
    }
}

/// A number from 0 to `max`, or an error at `key`.
fn fraction(sec: &mut Section, key: &str, f: &Field<f64>, max: f64, help: &str) -> Option<f64> {
    let full = sec.path_of(key).join(".");
    let shown = match f {
        Field::Absent => return None,
        Field::Ok(n) if n.is_finite() && (0.0..=max).contains(n) => return Some(*n),
        Field::Ok(n) => format!("`{n}`"),
        Field::Bad(v) => show(v),
    };
    sec.error(
        key,
        format!("{full} must be a number from 0 to {max}, not {shown}"),
        help,
    );
    None
}

/// `extra_body:` as JSON: a mapping with text keys, none of them a key loops writes.
fn extra_body(sec: &mut Section, f: Field<Map>) -> serde_json::Map<String, serde_json::Value> {
    let full = sec.path_of("extra_body").join(".");
    let help = "e.g. extra_body: { top_k: 40, cache_prompt: true }: keys merged as written into the request body";
    let map = match f.written() {
        None => return Default::default(),
        Some(Ok(m)) => m.0,
        Some(Err(v)) => {
            sec.error(
                "extra_body",
                format!("{full} must be a mapping, not {}", show(&v)),
                help,
            );
            return Default::default();
        }
    };
    let mut out = serde_json::Map::new();
    for (k, v) in &map {
        let Some(key) = k.as_str() else {
            sec.error(
                "extra_body",
                format!("{full}: the key {} is not text", show(k)),
                help,
            );
            continue;
        };
        let mut path = sec.path_of("extra_body");
        path.push(key);
        let pos = sec.loc.key(&path);
        if let Some((_, why)) = OWNED_BODY_KEYS.iter().find(|(owned, _)| *owned == key) {
            let d = Diagnostic::error(
                sec.file,
                format!("{full}.{key} is a key loops writes itself"),
            )
            .at(pos)
            .help(format!(
                "{why}; extra_body is for keys loops does not write (top_k, min_p, stop, …)"
            ));
            sec.push("extra_body", d);
            continue;
        }
        match serde_json::to_value(v) {
            Ok(j) => {
                out.insert(key.to_string(), j);
            }
            Err(e) => {
                let d = Diagnostic::error(sec.file, format!("{full}.{key} cannot be written as JSON: {e}"))
                    .at(pos)
                    .help("use plain YAML values: text, numbers, booleans, lists and mappings with text keys");
                sec.push("extra_body", d);
            }
        }
    }
    out
}
