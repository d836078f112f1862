//! Token and cost budgets (`budget:` in a loop's config.yaml and in loops.yaml): the
//! limits as written. What was spent against them is [`crate::spend`]. A day is a UTC day
//! for every loop, so that the workspace's budget, which all loops share, has one day and
//! one reset. Costs are estimates ([`crate::pricing`]), never a bill.

use crate::config_fields::{Field, Section, Whole};
use crate::diag::{Diagnostic, YamlLocator};
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

impl Budget {
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
