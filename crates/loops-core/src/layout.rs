//! Where the runner keeps its own records under `.loops/` (docs/formats.md).

use crate::workspace::Workspace;
use std::path::PathBuf;

/// Where `loops handoff create` notes the runs that made a handoff, so the runner can
/// tell a minion that wrote a draft and handed it off from one that forgot.
pub fn handoff_runs_dir(ws: &Workspace) -> PathBuf {
    ws.runtime_dir().join("handoff-runs")
}
