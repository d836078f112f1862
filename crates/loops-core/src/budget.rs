//! Token and cost budgets (`budget:` in a loop's config.yaml and in loops.yaml), and what
//! the loops spent today, from their run records. A day is a UTC day for every loop, so
//! that the workspace's budget, which all loops share, has one day and one reset.
//! Costs are estimates ([`crate::pricing`]), never a bill.

use crate::config_fields::{Field, Section, Whole};
use crate::diag::{Diagnostic, YamlLocator};
use crate::runs::{RunLog, RunRecord};
use chrono::{DateTime, Duration, NaiveTime, Utc};
use serde::Deserialize;
use std::path::Path;
use yaml_serde::Value;

/// `budget: {tokens_per_day, cost_per_day, tokens_per_run}`; a limit not written is none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    pub tokens_per_day: Option<u64>,
    /// Estimated dollars per UTC day.
    pub cost_per_day: Option<f64>,
    pub tokens_per_run: Option<u64>,
}

/// What was spent: tokens (all kinds together) and their estimated cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Spend {
    pub tokens: u64,
    /// Estimated dollars of the runs whose model has a known price.
    pub cost: f64,
    /// Some tokens were spent on a model whose price is unknown: `cost` is a lower bound.
    pub cost_unknown: bool,
    pub runs: u32,
}

impl Spend {
    pub fn add_record(&mut self, rec: &RunRecord) {
        let Some(u) = rec.tokens else { return };
        let tokens = total(&u);
        self.tokens += tokens;
        self.runs += 1;
        match rec.cost_estimate {
            Some(c) => self.cost += c,
            None if tokens > 0 => self.cost_unknown = true,
            None => {}
        }
    }

    pub fn add(&mut self, o: &Spend) {
        self.tokens += o.tokens;
        self.cost += o.cost;
        self.cost_unknown |= o.cost_unknown;
        self.runs += o.runs;
    }

    /// `12,345 tokens, ~$0.0123 (estimate)`, for people.
    pub fn describe(&self) -> String {
        let cost = if self.cost_unknown && self.cost == 0.0 {
            "cost unknown".to_string()
        } else if self.cost_unknown {
            format!(
                "at least ~${:.4} (estimate; some models unpriced)",
                self.cost
            )
        } else {
            format!("~${:.4} (estimate)", self.cost)
        };
        format!("{} tokens, {cost}", self.tokens)
    }
}

/// All tokens of a usage, the kinds a budget counts together.
pub fn total(u: &crate::usage::Usage) -> u64 {
    u.input + u.output + u.cache_read + u.cache_write
}

impl Budget {
    /// Which daily limit `spent` reaches, in words; `None` while under both.
    pub fn over_daily(&self, spent: &Spend) -> Option<String> {
        if let Some(t) = self.tokens_per_day.filter(|t| spent.tokens >= *t) {
            return Some(format!(
                "{} tokens today reach budget.tokens_per_day {t}",
                spent.tokens
            ));
        }
        if let Some(c) = self.cost_per_day.filter(|c| spent.cost >= *c) {
            return Some(format!(
                "an estimated ${:.4} today reaches budget.cost_per_day ${c}",
                spent.cost
            ));
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        *self == Budget::default()
    }
}

/// The start of the UTC day of `now`.
pub fn day_start(now: DateTime<Utc>) -> DateTime<Utc> {
    now.date_naive().and_time(NaiveTime::MIN).and_utc()
}

/// The next UTC midnight after `now`: when a loop paused for its daily budget resumes.
pub fn next_day(now: DateTime<Utc>) -> DateTime<Utc> {
    day_start(now) + Duration::days(1)
}

/// What one loop spent today (its records finished since the UTC day began). Reads the
/// current record file only: a file rotated today takes its runs' spend with it.
pub fn spent_today(runlog: &RunLog, loop_name: &str, now: DateTime<Utc>) -> Spend {
    let mut s = Spend::default();
    let Ok(text) = std::fs::read_to_string(runlog.path(loop_name)) else {
        return s;
    };
    let since = day_start(now);
    for rec in text
        .lines()
        .filter_map(|l| serde_json::from_str::<RunRecord>(l).ok())
        .filter(|r| r.finished >= since)
    {
        s.add_record(&rec);
    }
    s
}

/// What all loops with records in `runs_dir` spent today together (the workspace budget).
pub fn workspace_spent_today(runlog: &RunLog, runs_dir: &Path, now: DateTime<Utc>) -> Spend {
    let mut s = Spend::default();
    let Ok(rd) = std::fs::read_dir(runs_dir) else {
        return s;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        // `<loop>.jsonl`; rotated files carry a stamp after a second dot.
        if let Some(stem) = name.strip_suffix(".jsonl").filter(|s| !s.contains('.')) {
            s.add(&spent_today(runlog, stem, now));
        }
    }
    s
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BudgetYaml {
    tokens_per_day: Field<Whole<1>>,
    cost_per_day: Field<f64>,
    tokens_per_run: Field<Whole<1>>,
}

const BUDGET_KEYS: &[&str] = &["tokens_per_day", "cost_per_day", "tokens_per_run"];

/// Reads `budget:` at `path` (`["budget"]`); problems go to `diags`, each at its place.
pub(crate) fn parse(
    file: &Path,
    loc: &YamlLocator,
    path: &[&str],
    v: &Value,
    diags: &mut Vec<Diagnostic>,
) -> Budget {
    let mut b = Budget::default();
    let Some(map) = v.as_mapping() else {
        diags.push(
            Diagnostic::error(file, "`budget` must be a mapping")
                .at(loc.value(path))
                .help("e.g. budget: { tokens_per_day: 200000, cost_per_day: 1.50, tokens_per_run: 20000 }"),
        );
        return b;
    };
    let (y, mut sec) = Section::read::<BudgetYaml>(file, loc, path, map);
    sec.unknown_keys(BUDGET_KEYS);
    let whole = "a whole number of tokens, at least 1";
    b.tokens_per_day = sec
        .take(
            "tokens_per_day",
            y.tokens_per_day,
            format!("`budget.tokens_per_day` must be {whole}"),
            "e.g. tokens_per_day: 200000",
        )
        .map(|w| w.0);
    b.tokens_per_run = sec
        .take(
            "tokens_per_run",
            y.tokens_per_run,
            format!("`budget.tokens_per_run` must be {whole}"),
            "e.g. tokens_per_run: 20000",
        )
        .map(|w| w.0);
    let cost_help = "estimated dollars per UTC day, e.g. cost_per_day: 1.50";
    b.cost_per_day = match sec.take(
        "cost_per_day",
        y.cost_per_day,
        "`budget.cost_per_day` must be a number of dollars",
        cost_help,
    ) {
        Some(c) if c > 0.0 && c.is_finite() => Some(c),
        Some(_) => {
            sec.error(
                "cost_per_day",
                "`budget.cost_per_day` must be more than 0",
                cost_help,
            );
            None
        }
        None => None,
    };
    diags.extend(sec.finish());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_is_utc() {
        let t: DateTime<Utc> = "2026-03-01T23:59:00Z".parse().unwrap();
        assert_eq!(next_day(t).to_rfc3339(), "2026-03-02T00:00:00+00:00");
        assert_eq!(day_start(t).to_rfc3339(), "2026-03-01T00:00:00+00:00");
    }
}
