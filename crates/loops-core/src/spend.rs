//! What the loops spent today, from their run records: tokens and estimated cost, against
//! the limits of [`crate::budget`]. Costs are estimates ([`crate::pricing`]), never a bill.

use crate::budget::{day_start, Budget};
use crate::runs::{RunLog, RunRecord};
use chrono::{DateTime, Utc};
use std::path::Path;

/// What was spent: tokens (all kinds together) and their estimated cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Spend {
    pub tokens: u64,
    /// Estimated dollars of the runs whose model has a known price.
    pub cost: f64,
    /// Some tokens were spent on a model whose price is unknown: `cost` is a lower bound.
    pub cost_unknown: bool,
    pub runs: u32,
    /// Whole record lines that could not be read (damaged by hand or by the disk): what
    /// they spent is not counted, so the figures are a lower bound.
    pub unreadable: u32,
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
        self.unreadable += o.unreadable;
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
        let unread = match self.unreadable {
            0 => String::new(),
            n => format!(
                "; {n} damaged record line{} in .loops/runs/ not counted: at least this",
                if n == 1 { "" } else { "s" }
            ),
        };
        format!("{} tokens, {cost}{unread}", self.tokens)
    }
}

/// All tokens of a usage, the kinds a budget counts together.
pub fn total(u: &crate::usage::Usage) -> u64 {
    u.input + u.output + u.cache_read + u.cache_write
}

/// What one loop spent today (its records finished since the UTC day began). Reads the
/// current record file only: a file rotated today takes its runs' spend with it.
pub fn spent_today(runlog: &RunLog, loop_name: &str, now: DateTime<Utc>) -> Spend {
    let mut s = Spend::default();
    let Ok(text) = std::fs::read_to_string(runlog.path(loop_name)) else {
        return s;
    };
    let since = day_start(now);
    for line in crate::runs::record_lines(&text) {
        match line {
            Ok(rec) if rec.finished >= since => s.add_record(&rec),
            Ok(_) => {}
            Err(()) => s.unreadable += 1,
        }
    }
    if s.unreadable > 0 {
        tracing::warn!(
            "{}: {} record line(s) cannot be read, so today's spend counted from it is a lower bound; \
             move the damaged lines out of the file (each line is one JSON record)",
            runlog.path(loop_name).display(),
            s.unreadable
        );
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

/// Which daily limit `spent` reaches, in words; `None` while under both.
pub fn over_daily(budget: &Budget, spent: &Spend) -> Option<String> {
    if let Some(t) = budget.tokens_per_day.filter(|t| spent.tokens >= *t) {
        return Some(format!(
            "{} tokens today reach budget.tokens_per_day {t}",
            spent.tokens
        ));
    }
    if let Some(c) = budget.cost_per_day.filter(|c| spent.cost >= *c) {
        return Some(format!(
            "an estimated ${:.4} today reaches budget.cost_per_day ${c}",
            spent.cost
        ));
    }
    None
}
