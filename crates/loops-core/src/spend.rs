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
        if let Some(u) = rec.tokens {
            self.add_run(&u, rec.cost_estimate);
        }
    }

    /// One run's (or job attempt's) tokens, and their cost when the model has a price.
    fn add_run(&mut self, u: &crate::usage::Usage, cost: Option<f64>) {
        let tokens = total(u);
        self.tokens += tokens;
        self.runs += 1;
        match cost {
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
    // Records are appended as runs end, so the file runs oldest to newest; read from the
    // end, the first record a whole day older than today's start ends the reading (a
    // day of slack for a clock set back). Every budgeted run's start sums this for
    // every loop, and the file may hold megabytes of older days.
    let long_before = since - chrono::Duration::days(1);
    for line in crate::runs::record_lines_newest_first(&text) {
        match line {
            Ok(rec) if rec.finished >= since => s.add_record(&rec),
            Ok(rec) if rec.finished < long_before => break,
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

/// What all loops with records in `runs_dir` spent today together, with the agent jobs
/// whose spend is in `jobs_spend_dir` (the workspace budget covers both).
pub fn workspace_spent_today(
    runlog: &RunLog,
    runs_dir: &Path,
    jobs_spend_dir: &Path,
    now: DateTime<Utc>,
) -> Spend {
    let mut s = jobs_spent_today(jobs_spend_dir, now);
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

/// What one turn of an agent job spent (or, at the end of an attempt, what no turn
/// accounted for), as it is kept: a line of the day's file in
/// [`crate::layout::Layout::jobs_spend_dir`]. Jobs have no run records, and the done
/// index is far too long to sum on every check.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobSpend {
    pub finished: DateTime<Utc>,
    pub job: u64,
    pub attempt: u32,
    pub tokens: crate::usage::Usage,
    /// `None`: the model's price is unknown.
    pub cost_estimate: Option<f64>,
}

/// How many days of job spend files are kept (only today's is read; the rest are for a
/// person looking back).
const JOB_SPEND_DAYS: i64 = 7;

/// The file of the UTC day of `at`.
fn job_spend_file(dir: &Path, at: DateTime<Utc>) -> std::path::PathBuf {
    dir.join(format!("jobs-{}.jsonl", at.format("%Y-%m-%d")))
}

/// Appends a line of an agent job's spend to its day's file; the first line of a day
/// removes the files of days past [`JOB_SPEND_DAYS`].
pub fn record_job_spend(dir: &Path, spend: &JobSpend) -> std::io::Result<()> {
    let path = job_spend_file(dir, spend.finished);
    let new_day = !path.exists();
    let line = serde_json::to_string(spend).map_err(std::io::Error::other)?;
    crate::fsutil::append_line(&path, &line)?;
    if new_day {
        prune_job_spend(dir, spend.finished);
    }
    Ok(())
}

fn prune_job_spend(dir: &Path, now: DateTime<Utc>) {
    let oldest = job_spend_file(dir, now - chrono::Duration::days(JOB_SPEND_DAYS));
    let Some(oldest) = oldest.file_name().map(|n| n.to_string_lossy().to_string()) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        // The names sort by day: `jobs-YYYY-MM-DD.jsonl`.
        if name.starts_with("jobs-") && name.ends_with(".jsonl") && name < oldest {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What agent jobs spent today, from today's file in `dir`; `runs` counts their
/// attempts, not the lines (one a turn).
pub fn jobs_spent_today(dir: &Path, now: DateTime<Utc>) -> Spend {
    let mut s = Spend::default();
    let mut attempts = std::collections::HashSet::new();
    let path = job_spend_file(dir, now);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return s;
    };
    let since = day_start(now);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<JobSpend>(line) {
            Ok(j) if j.finished >= since => {
                s.add_run(&j.tokens, j.cost_estimate);
                attempts.insert((j.job, j.attempt));
            }
            Ok(_) => {}
            Err(_) => s.unreadable += 1,
        }
    }
    s.runs = attempts.len() as u32;
    if s.unreadable > 0 {
        tracing::warn!(
            "{}: {} line(s) cannot be read, so today's spend of agent jobs is a lower bound; \
             move the damaged lines out of the file (each line is one JSON record)",
            path.display(),
            s.unreadable
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, h, 0, 0)
            .single()
            .expect("time")
    }

    fn attempt(job: u64, finished: DateTime<Utc>, input: u64, cost: Option<f64>) -> JobSpend {
        JobSpend {
            finished,
            job,
            attempt: 1,
            tokens: crate::usage::Usage {
                input,
                output: 10,
                ..Default::default()
            },
            cost_estimate: cost,
        }
    }

    #[test]
    fn agent_jobs_spend_today_is_the_sum_of_todays_file_and_old_days_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        record_job_spend(dir.path(), &attempt(1, at(1, 23), 1000, Some(1.0))).expect("write");
        record_job_spend(dir.path(), &attempt(2, at(9, 8), 90, Some(0.25))).expect("write");
        record_job_spend(dir.path(), &attempt(3, at(9, 9), 20, None)).expect("write");
        record_job_spend(dir.path(), &attempt(3, at(9, 10), 0, None)).expect("write");
        std::fs::write(dir.path().join("jobs-2026-11-01.jsonl.bak"), "x").expect("other");
        let s = jobs_spent_today(dir.path(), at(9, 12));
        assert_eq!((s.tokens, s.runs), (140, 2), "three lines, two attempts");
        assert!((s.cost - 0.25).abs() < 1e-9);
        assert!(s.cost_unknown, "job 3's model has no price");
        assert_eq!(jobs_spent_today(dir.path(), at(10, 0)), Spend::default());
        assert!(
            !dir.path().join("jobs-2026-12-01.jsonl").exists(),
            "a day more than a week old is removed when a new day begins"
        );
        assert!(dir.path().join("jobs-2026-11-01.jsonl.bak").exists());
    }

    fn record(finished: DateTime<Utc>, input: u64) -> String {
        let mut r = RunRecord::decision(
            "l",
            "schedule",
            None,
            finished,
            crate::runs::Outcome::Acted,
            String::new(),
        );
        r.tokens = Some(crate::usage::Usage {
            input,
            ..Default::default()
        });
        r.cost_estimate = Some(0.5);
        serde_json::to_string(&r).expect("json")
    }

    #[test]
    fn a_loops_spend_today_reads_back_only_to_the_records_of_days_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RunLog::new(dir.path(), u64::MAX);
        let mut lines = vec![
            "{a line damaged long ago".to_string(),
            record(at(1, 9), 1_000_000),
        ];
        // A record of yesterday (within the slack) and a damaged line after it are read;
        // today's records count, in any order among themselves.
        lines.push(record(at(8, 23), 7));
        lines.push("{damaged".into());
        lines.push(record(at(9, 10), 100));
        lines.push(record(at(9, 8), 20));
        std::fs::write(log.path("l"), lines.join("\n") + "\n").expect("write");
        let s = spent_today(&log, "l", at(9, 12));
        assert_eq!((s.tokens, s.runs), (120, 2), "{s:?}");
        assert!((s.cost - 1.0).abs() < 1e-9, "{s:?}");
        assert_eq!(
            s.unreadable, 1,
            "the line before the old record is not read: {s:?}"
        );
        // A record being appended (no newline yet) is not damage.
        let mut text = lines.join("\n") + "\n";
        text.push_str("{\"loop\": \"l\", \"run");
        std::fs::write(log.path("l"), text).expect("write");
        assert_eq!(spent_today(&log, "l", at(9, 12)).unreadable, 1);
    }

    #[test]
    fn a_damaged_job_spend_line_is_counted_as_unreadable_and_the_rest_still_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        record_job_spend(dir.path(), &attempt(1, at(9, 8), 90, Some(0.5))).expect("write");
        crate::fsutil::append_line(&dir.path().join("jobs-2026-12-09.jsonl"), "{not json")
            .expect("damage");
        let s = jobs_spent_today(dir.path(), at(9, 12));
        assert_eq!((s.tokens, s.unreadable), (100, 1));
    }
}
