//! Every path the runner keeps under `.loops/`, built in one place: [`Layout`].
//! docs/formats.md says what each file holds; here each is one line.
//!
//! This module imports nothing from the crate, so every layer may use it: the
//! configuration hands out a workspace's layout, and the privacy rules name the folder
//! through [`RUNTIME_DIR`]. Inside a folder that one store owns, that store names its
//! items (`jobs/` by `JobStore`, `state/<loop>.json` by `StateStore`, `runs/<loop>.jsonl`
//! by `RunLog`), so a store can be opened in any folder (tests do).

use std::path::{Path, PathBuf};

/// The name of a workspace's runtime folder, the runner's alone (git-ignored).
pub const RUNTIME_DIR: &str = ".loops";

/// The runner's own files of one workspace: `<workspace>/.loops/` and what is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of the workspace at `workspace_root`.
    pub fn of(workspace_root: &Path) -> Layout {
        Layout {
            root: workspace_root.join(RUNTIME_DIR),
        }
    }

    /// The layout whose runtime folder is `runtime_dir` itself, for the functions that are
    /// handed `.loops/` as a path rather than a workspace.
    pub(crate) fn at(runtime_dir: &Path) -> Layout {
        Layout {
            root: runtime_dir.to_path_buf(),
        }
    }

    /// The layout whose [`Layout::runs_dir`] is `runs_dir`: a run log is handed its folder
    /// and notes what the disk refused in the journal beside it.
    pub(crate) fn around_runs_dir(runs_dir: &Path) -> Layout {
        Layout::at(runs_dir.parent().unwrap_or(runs_dir))
    }

    /// `.loops/` itself: pruned by size as a whole, made owner-only at start.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Held (flock) by the running daemon; its pid and start time, its mtime a heartbeat.
    pub fn daemon_lock(&self) -> PathBuf {
        self.join("daemon.lock")
    }

    /// The daemon's own record (`daemon.jsonl`): starts, stops, crashes and recoveries.
    pub fn journal(&self) -> PathBuf {
        self.join("daemon.jsonl")
    }

    /// The previous journal, once `daemon.jsonl` passed its size limit.
    pub fn journal_rotated(&self) -> PathBuf {
        self.join("daemon.1.jsonl")
    }

    /// What the running daemon made of loops.yaml (applied, refused, waiting for a restart).
    pub fn settings_report(&self) -> PathBuf {
        self.join("settings.json")
    }

    /// The inotify limits the running daemon's watchers ran into.
    pub fn watcher_report(&self) -> PathBuf {
        self.join("watcher.json")
    }

    /// Nudges from other processes, one file per loop: re-read that loop's state.
    pub fn signals_dir(&self) -> PathBuf {
        self.join("signals")
    }

    /// What the runner remembers about each loop (`<loop>.json`, `<loop>.lock`).
    pub fn state_dir(&self) -> PathBuf {
        self.join("state")
    }

    /// Run records (`<loop>.jsonl`, rotated ones) and transcripts (`<loop>/<run-id>.md`).
    pub fn runs_dir(&self) -> PathBuf {
        self.join("runs")
    }

    /// Values changed only by compare-and-set, such as a loop's last slot fired.
    pub fn watermarks_dir(&self) -> PathBuf {
        self.join("watermarks")
    }

    /// The job queue, the runs in progress among its jobs.
    pub fn jobs_dir(&self) -> PathBuf {
        self.join("jobs")
    }

    /// What agent jobs spent, one file per UTC day (`jobs-YYYY-MM-DD.jsonl`): the
    /// workspace budget counts them with the loops' run records.
    pub fn jobs_spend_dir(&self) -> PathBuf {
        self.join("spend")
    }

    /// Per loop, the light job whose run began last: the key `concurrency` is checked on.
    pub fn busy_dir(&self) -> PathBuf {
        self.jobs_dir().join("busy")
    }

    /// Markers of runs in progress written by older versions, read for one release.
    pub fn legacy_running_dir(&self) -> PathBuf {
        self.join("running")
    }

    /// `$LOOPS_WROTE` of a command run in progress: the files it lists as written.
    pub fn wrote_list(&self, run_id: &str) -> PathBuf {
        self.join("wrote").join(run_id)
    }

    /// The files a running run of `loop_name` found dirty at its start, so the run after
    /// it (the first was killed) can tell the person's edits from its work.
    pub fn dirty_at_start(&self, loop_name: &str) -> PathBuf {
        self.join("own").join(format!("{loop_name}.json"))
    }

    /// Commits git did not allow yet (`<ulid>.json`), made later, oldest first.
    pub fn commits_dir(&self) -> PathBuf {
        self.join("commits")
    }

    /// Paths whose git index entries must still follow HEAD after a commit.
    pub fn index_sync(&self) -> PathBuf {
        self.commits_dir().join("index-sync.txt")
    }

    /// Why commits are held now (a rebase, a merge, a lock), for `loops status`.
    pub fn commits_held(&self) -> PathBuf {
        self.commits_dir().join(".held.json")
    }

    /// The git remote as the last sync saw it (`loops status`).
    pub fn remote_state(&self) -> PathBuf {
        self.join("remote.json")
    }

    /// The branch rule the daemon chose, so a `loops trigger` beside it follows it.
    pub fn branch_rule(&self) -> PathBuf {
        self.commits_dir().join(".branch.json")
    }

    /// The main session's files between wakes.
    pub fn main_dir(&self) -> PathBuf {
        self.join("main")
    }

    /// A prompt main session's conversation between wakes.
    pub fn conversation(&self) -> PathBuf {
        self.main_dir().join("conversation.json")
    }

    /// Until when the main session is held because the day's budget is spent.
    pub fn main_budget_hold(&self) -> PathBuf {
        self.main_dir().join("budget-hold.json")
    }

    /// Who really wrote each handoff the runner created (`<id>.json`), whatever `from:` says.
    pub fn inbox_writers_dir(&self) -> PathBuf {
        self.join("inbox").join("writers")
    }

    /// Per handoff, its failed attempts and why it is held (`<id>.md.json`).
    pub fn inbox_notes_dir(&self) -> PathBuf {
        self.join("inbox").join("notes")
    }

    /// What a wake of an older version claimed, read for one release.
    pub fn legacy_inbox_claims_dir(&self) -> PathBuf {
        self.join("inbox").join("claims")
    }

    /// The handoffs each run made (`<run-id>`), so a draft left without one is noticed.
    pub fn handoff_runs_dir(&self) -> PathBuf {
        self.join("handoff-runs")
    }

    /// The handoff ids run `run_id` made, one a line.
    pub fn handoff_run(&self, run_id: &str) -> PathBuf {
        self.handoff_runs_dir().join(run_id)
    }

    /// One record per message to a delivery channel (`<key>.json`), never its text.
    pub fn deliveries_dir(&self) -> PathBuf {
        self.join("deliveries")
    }

    /// Each MCP server's status (`<server>.json`) and log (`<server>.log`).
    pub fn mcp_dir(&self) -> PathBuf {
        self.join("mcp")
    }

    /// The secret `loops ui` asks every request for, owner-only (docs/ui.md).
    pub fn ui_token(&self) -> PathBuf {
        self.join("ui-token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path, as docs/formats.md names it: renaming one loses what an older version
    /// left there, so it must be a decision, not a slip.
    #[test]
    fn every_path_is_where_formats_md_says() {
        let l = Layout::of(Path::new("/ws"));
        let got: Vec<(PathBuf, &str)> = vec![
            (l.root().to_path_buf(), "/ws/.loops"),
            (l.daemon_lock(), "/ws/.loops/daemon.lock"),
            (l.journal(), "/ws/.loops/daemon.jsonl"),
            (l.journal_rotated(), "/ws/.loops/daemon.1.jsonl"),
            (l.settings_report(), "/ws/.loops/settings.json"),
            (l.watcher_report(), "/ws/.loops/watcher.json"),
            (l.signals_dir(), "/ws/.loops/signals"),
            (l.state_dir(), "/ws/.loops/state"),
            (l.runs_dir(), "/ws/.loops/runs"),
            (l.watermarks_dir(), "/ws/.loops/watermarks"),
            (l.jobs_dir(), "/ws/.loops/jobs"),
            (l.busy_dir(), "/ws/.loops/jobs/busy"),
            (l.legacy_running_dir(), "/ws/.loops/running"),
            (l.wrote_list("01RUN"), "/ws/.loops/wrote/01RUN"),
            (l.dirty_at_start("report"), "/ws/.loops/own/report.json"),
            (l.commits_dir(), "/ws/.loops/commits"),
            (l.index_sync(), "/ws/.loops/commits/index-sync.txt"),
            (l.commits_held(), "/ws/.loops/commits/.held.json"),
            (l.remote_state(), "/ws/.loops/remote.json"),
            (l.branch_rule(), "/ws/.loops/commits/.branch.json"),
            (l.main_dir(), "/ws/.loops/main"),
            (l.conversation(), "/ws/.loops/main/conversation.json"),
            (l.main_budget_hold(), "/ws/.loops/main/budget-hold.json"),
            (l.inbox_writers_dir(), "/ws/.loops/inbox/writers"),
            (l.inbox_notes_dir(), "/ws/.loops/inbox/notes"),
            (l.legacy_inbox_claims_dir(), "/ws/.loops/inbox/claims"),
            (l.handoff_runs_dir(), "/ws/.loops/handoff-runs"),
            (l.handoff_run("01RUN"), "/ws/.loops/handoff-runs/01RUN"),
            (l.deliveries_dir(), "/ws/.loops/deliveries"),
            (l.mcp_dir(), "/ws/.loops/mcp"),
            (l.ui_token(), "/ws/.loops/ui-token"),
        ];
        for (path, want) in got {
            assert_eq!(path, Path::new(want));
        }
    }

    #[test]
    fn a_runtime_folder_given_as_it_is_is_the_same_layout() {
        assert_eq!(
            Layout::at(Path::new("/ws/.loops")),
            Layout::of(Path::new("/ws"))
        );
    }

    #[test]
    fn the_runs_folder_is_in_the_layout_it_names() {
        let l = Layout::of(Path::new("/ws"));
        assert_eq!(Layout::around_runs_dir(&l.runs_dir()), l);
    }
}
