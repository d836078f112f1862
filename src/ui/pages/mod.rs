//! One module per page. Each handler reads what it shows on a blocking thread (files,
//! git) through the same functions the command line prints, and renders it with maud.

pub(super) mod deliveries;
pub(super) mod history;
pub(super) mod inbox;
pub(super) mod jobs;
pub(super) mod loops;
pub(super) mod overview;
pub(super) mod run;

use loops_core::runs::{RunLog, RunRecord};
use loops_core::workspace::Workspace;

/// A loop's run records (the current file), oldest first, at most `limit`.
pub(super) fn records(ws: &Workspace, name: &str, limit: usize) -> Vec<RunRecord> {
    let log = RunLog::new(&ws.layout().runs_dir(), ws.settings.rotate_bytes);
    let mut recs = log.recent(name, limit);
    // Appended as runs finish: a long run that started first is put back in its place.
    recs.sort_by_key(|r| r.started);
    recs
}

/// The tokens a run used, in and out (cache reads count as input).
pub(super) fn run_tokens(r: &RunRecord) -> u64 {
    r.tokens
        .as_ref()
        .map(|t| t.input + t.output + t.cache_read + t.cache_write)
        .unwrap_or(0)
}
