//! Run records: one JSON line per run in `.loops/runs/<loop>.jsonl`, and a marker in
//! `.loops/running/` while a run is in progress so a crash is noticed and recorded.

use crate::fsutil::{append_line, atomic_replace, process_alive, process_start_time};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: {source}; the record is kept in memory and written as soon as the disk accepts it"
    )]
    Held {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did something: printed output or changed files.
    Acted,
    /// It ran and had nothing to do.
    Silent,
    Failed,
    Timeout,
    /// A slot that came while a run was going (`concurrency: forbid`).
    Skipped,
    /// Slots that passed while the runner was down and were not caught up.
    Missed,
    /// Stopped by shutdown, replacement or a crash of the runner.
    Interrupted,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Acted => "acted",
            Outcome::Silent => "silent",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Skipped => "skipped",
            Outcome::Missed => "missed",
            Outcome::Interrupted => "interrupted",
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Timeout)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `.loops/runs/<loop>.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(rename = "loop")]
    pub loop_name: String,
    /// The payload's program could not be started at all (not found, not executable): a
    /// permanent failure, which retrying cannot fix. Known to the process that ran it; not
    /// part of the record on disk.
    #[serde(skip)]
    pub cannot_start: bool,
    pub run_id: String,
    /// schedule | catch-up | retry | manual | once
    pub trigger: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<DateTime<Utc>>,
    #[serde(default = "one")]
    pub attempt: u32,
    /// When the scheduler fired the run (scheduled runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired: Option<DateTime<Utc>>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub duration_ms: u64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout_tail: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    /// Bytes of standard output the run printed beyond what `stdout_tail` keeps (its
    /// head and tail): a flood of output is recorded as cut, never silently.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stdout_dropped: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stderr_dropped: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// How many paths the run changed, when `changed` lists only the first
    /// [`CHANGED_KEPT`] of them (a run that wrote 100,000 files must not make a
    /// record of megabytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// For missed records: how many slots, and the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Prompt runs: the provider and model, tokens, turns, the summary and the transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<crate::usage::Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
    /// What the run said it did (the finish summary or the final answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Workspace-relative path of the transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    /// Tools the model called that are not in the loop's allow-list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_tools: Vec<String>,
    /// Messages posted to channels, and texts the never-share guard blocked. A failed
    /// delivery is `delivery_failed` here and does not change the run's outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<crate::channels::DeliveryNote>,
    /// Files that changed during the run but were left out of its commit, because they
    /// hold a person's edits the run's part cannot be separated from (or are not the
    /// run's at all). They stay in the work tree as they are, uncommitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_back: Vec<HeldBack>,
}

/// A path left out of a run's commit, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBack {
    /// Workspace-relative.
    pub path: String,
    pub why: String,
}

fn one() -> u32 {
    1
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The most changed paths a run record lists; the commit holds them all.
pub const CHANGED_KEPT: usize = 1000;

impl RunRecord {
    /// Sets `changed` from workspace-relative paths, keeping the first [`CHANGED_KEPT`]
    /// and the count of all of them when there are more.
    pub fn set_changed(&mut self, paths: Vec<String>) {
        let n = paths.len();
        self.changed = paths;
        if n > CHANGED_KEPT {
            self.changed.truncate(CHANGED_KEPT);
            self.changed_count = Some(n);
        } else {
            self.changed_count = None;
        }
    }

    /// A record for something decided without running (skipped, missed).
    pub fn decision(
        loop_name: &str,
        trigger: &str,
        slot: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        outcome: Outcome,
        note: String,
    ) -> Self {
        RunRecord {
            loop_name: loop_name.to_string(),
            cannot_start: false,
            run_id: new_run_id(),
            trigger: trigger.to_string(),
            slot,
            attempt: 1,
            fired: None,
            started: now,
            finished: now,
            duration_ms: 0,
            outcome,
            exit_code: None,
            error: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            stdout_dropped: 0,
            stderr_dropped: 0,
            changed: Vec::new(),
            changed_count: None,
            commit: None,
            missed_count: None,
            note: Some(note),
            provider: None,
            model: None,
            tokens: None,
            turns: None,
            summary: None,
            transcript: None,
            refused_tools: Vec::new(),
            deliveries: Vec::new(),
            held_back: Vec::new(),
        }
    }
}

/// A new run id: a ULID, sortable by time.
pub fn new_run_id() -> String {
    ulid::Ulid::new().to_string()
}

/// Records held in memory while the disk refuses them; beyond this the oldest are
/// dropped (and said so), so a disk that never comes back cannot exhaust memory.
const MAX_HELD_RECORDS: usize = 10_000;

/// Appends and reads run records.
#[derive(Debug, Clone)]
pub struct RunLog {
    dir: PathBuf,
    rotate_bytes: u64,
    /// Lines the disk refused (read-only, full), in order, with their files: a run that
    /// ended while the disk was away is still recorded once it is back.
    held: Arc<Mutex<VecDeque<(PathBuf, String)>>>,
}

impl RunLog {
    pub fn new(dir: &Path, rotate_bytes: u64) -> Self {
        RunLog {
            dir: dir.to_path_buf(),
            rotate_bytes,
            held: Arc::default(),
        }
    }

    fn journal(&self) -> crate::journal::Journal {
        crate::journal::Journal::open(self.dir.parent().unwrap_or(&self.dir))
    }

    pub fn path(&self, loop_name: &str) -> PathBuf {
        self.dir.join(format!("{loop_name}.jsonl"))
    }

    /// Appends a record, rotating the file first when it has grown past the limit.
    /// Rotated files are kept (`<loop>.<timestamp>.jsonl`): history is never capped silently.
    /// A record the disk refuses is held and written, in order, by the next append or
    /// [`RunLog::flush`]; the error says so.
    pub fn append(&self, rec: &RunRecord) -> Result<(), RunsError> {
        // Tails and errors may quote a secret; none is written down (src/secrets.rs).
        let line =
            crate::secrets::redact(&serde_json::to_string(rec).unwrap_or_default()).into_owned();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.push_back((self.path(&rec.loop_name), line));
        self.write_held(&mut held)
    }

    /// Writes the records the disk refused earlier, if it takes them now. Returns whether
    /// nothing is held any more.
    pub fn flush(&self) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_empty() {
            return true;
        }
        let ok = self.write_held(&mut held).is_ok();
        if ok {
            // The journal noted the outage; it can say now that it is over.
            self.journal().flush();
        }
        ok
    }

    /// Whether records are waiting for the disk.
    pub fn has_held(&self) -> bool {
        !self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn write_held(&self, held: &mut VecDeque<(PathBuf, String)>) -> Result<(), RunsError> {
        while let Some((path, line)) = held.front() {
            self.rotate_if_full(path);
            if let Err(source) = append_line(path, line) {
                let path = path.clone();
                self.journal().disk_error(&path, &source);
                while held.len() > MAX_HELD_RECORDS {
                    if let Some((p, _)) = held.pop_front() {
                        tracing::error!("{}: a run record was dropped: the disk has refused writes for too long", p.display());
                    }
                }
                return Err(RunsError::Held { path, source });
            }
            held.pop_front();
        }
        Ok(())
    }

    fn rotate_if_full(&self, path: &Path) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.len() < self.rotate_bytes {
            return;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("runs")
            .to_string();
        let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        // Never rename over an earlier rotated file (two rotations in one ms).
        let mut rotated = self.dir.join(format!("{stem}.{stamp}.jsonl"));
        let mut n = 1;
        while rotated.exists() {
            rotated = self.dir.join(format!("{stem}.{stamp}-{n}.jsonl"));
            n += 1;
        }
        let _ = std::fs::rename(path, rotated);
    }

    /// The most recent `limit` records of a loop (current file only), oldest first.
    /// Lines that do not parse (a torn write after a power cut) are skipped.
    pub fn recent(&self, loop_name: &str, limit: usize) -> Vec<RunRecord> {
        let Ok(text) = std::fs::read_to_string(self.path(loop_name)) else {
            return Vec::new();
        };
        let mut out: Vec<RunRecord> = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(limit)
            .collect();
        out.reverse();
        out
    }

    /// Finds a run by id in a loop's current record file.
    pub fn find(&self, loop_name: &str, run_id: &str) -> Option<RunRecord> {
        let text = std::fs::read_to_string(self.path(loop_name)).ok()?;
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<RunRecord>(l).ok())
            .find(|r| r.run_id == run_id)
    }
}

/// The marker of a run in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningMarker {
    #[serde(rename = "loop")]
    pub loop_name: String,
    pub run_id: String,
    pub trigger: String,
    #[serde(default)]
    pub slot: Option<DateTime<Utc>>,
    pub attempt: u32,
    pub started: DateTime<Utc>,
    pub pid: u32,
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// The command's process group (its leader's pid) and the leader's start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid_start: Option<u64>,
}

impl RunningMarker {
    pub fn for_this_process(
        loop_name: &str,
        run_id: &str,
        trigger: &str,
        slot: Option<DateTime<Utc>>,
        attempt: u32,
        started: DateTime<Utc>,
    ) -> Self {
        let pid = std::process::id();
        RunningMarker {
            loop_name: loop_name.to_string(),
            run_id: run_id.to_string(),
            trigger: trigger.to_string(),
            slot,
            attempt,
            started,
            pid,
            pid_start: process_start_time(pid),
            pgid: None,
            pgid_start: None,
        }
    }
}

/// Markers of runs in progress in `.loops/running/`.
#[derive(Debug, Clone)]
pub struct RunningSet {
    dir: PathBuf,
    /// Markers of finished runs the disk would not let us remove (read-only): removed by
    /// [`RunningSet::flush`], so a finished run is not shown as running.
    stale: Arc<Mutex<Vec<PathBuf>>>,
}

impl RunningSet {
    pub fn new(dir: &Path) -> Self {
        RunningSet {
            dir: dir.to_path_buf(),
            stale: Arc::default(),
        }
    }

    pub fn put(&self, m: &RunningMarker) -> Result<(), RunsError> {
        let path = self.dir.join(format!("{}.json", m.run_id));
        let text = serde_json::to_string(m).unwrap_or_default();
        // Not fsynced: the marker is there for a crashed process, which the page cache
        // survives; waiting for the disk at every run start would only add latency.
        atomic_replace(&path, text.as_bytes()).map_err(|source| {
            crate::journal::report_io(&path, &source);
            RunsError::Io { path, source }
        })
    }

    /// Rewrites a marker in place (it only grows: fields are added, never removed).
    pub fn update(&self, m: &RunningMarker) -> Result<(), RunsError> {
        let path = self.dir.join(format!("{}.json", m.run_id));
        let text = serde_json::to_string(m).unwrap_or_default();
        crate::fsutil::overwrite_in_place(&path, &text)
            .map_err(|source| RunsError::Io { path, source })
    }

    pub fn exists(&self, run_id: &str) -> bool {
        self.dir.join(format!("{run_id}.json")).exists()
    }

    pub fn remove(&self, run_id: &str) {
        let path = self.dir.join(format!("{run_id}.json"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                self.stale
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(path);
            }
            _ => {}
        }
    }

    /// Removes the markers a refusing disk kept; returns whether none is left.
    pub fn flush(&self) -> bool {
        let mut stale = self.stale.lock().unwrap_or_else(|e| e.into_inner());
        stale.retain(|p| {
            std::fs::remove_file(p).is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
        });
        stale.is_empty()
    }

    /// Whether markers of finished runs wait to be removed.
    pub fn has_stale(&self) -> bool {
        !self
            .stale
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    pub fn all(&self) -> Vec<RunningMarker> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect()
    }

    /// Markers whose owning process is gone: runs a crash interrupted.
    pub fn orphans(&self) -> Vec<RunningMarker> {
        self.all()
            .into_iter()
            .filter(|m| !process_alive(m.pid, m.pid_start))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_disk_refuses_are_held_and_written_in_order_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A file where the runtime folder should be: every append fails, as on a
        // read-only disk.
        let rt = dir.path().join("rt");
        std::fs::write(&rt, "in the way").expect("write");
        let log = RunLog::new(&rt.join("runs"), 1 << 20);
        let now = Utc::now();
        for i in 0..3 {
            let rec = RunRecord::decision(
                "l",
                "manual",
                None,
                now,
                Outcome::Silent,
                format!("run {i}"),
            );
            let err = log.append(&rec).expect_err("the disk refuses");
            assert!(err.to_string().contains("kept in memory"), "{err}");
        }
        assert!(log.has_held());
        assert!(!log.flush());
        std::fs::remove_file(&rt).expect("rm");
        assert!(log.flush(), "written once the disk takes them");
        assert!(!log.has_held());
        let notes: Vec<String> = log
            .recent("l", 10)
            .into_iter()
            .filter_map(|r| r.note)
            .collect();
        assert_eq!(notes, ["run 0", "run 1", "run 2"]);
        let journal = crate::journal::read(&rt);
        assert!(
            journal.iter().any(|e| e["event"] == "disk_error"),
            "{journal:?}"
        );
    }

    #[test]
    fn a_full_record_file_is_rotated_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RunLog::new(dir.path(), 4096);
        let now = Utc::now();
        for i in 0..100 {
            let rec = RunRecord::decision(
                "l",
                "manual",
                None,
                now,
                Outcome::Silent,
                format!("run {i}"),
            );
            log.append(&rec).expect("append");
        }
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(files.len() > 1, "rotated: {files:?}");
        // Nothing is dropped: every record is in one of the files.
        let total: usize = files
            .iter()
            .map(|f| {
                std::fs::read_to_string(dir.path().join(f))
                    .expect("read")
                    .lines()
                    .count()
            })
            .sum();
        assert_eq!(total, 100);
        // The current file holds the newest records.
        let recent = log.recent("l", 1);
        assert_eq!(recent[0].note.as_deref(), Some("run 99"));
    }
}
