//! Run records: one JSON line per run in `.loops/runs/<loop>.jsonl`, and a light job in
//! `.loops/jobs/` while a run is in progress so a crash is noticed and recorded.

use crate::fsutil::{append_line, process_alive, process_start_time};
use crate::jobs::job::{Control, Job, JobId, JobKind, JobState, Lease};
use crate::jobs::policy::ConcurrencyKey;
use crate::jobs::store::{JobStore, JobTx, StoreError};
use crate::layout::Layout;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
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
    /// Stopped at a turn boundary, or not started, because it would go over its token or
    /// cost budget (`budget:`); not a failure, so never retried.
    Budget,
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
            Outcome::Budget => "budget",
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(rename = "loop")]
    pub loop_name: String,
    /// A failure retrying cannot fix: the payload's program could not be started at all
    /// (not found, not executable), or the model's provider refused the request or cut
    /// the reply (the same request fails the same way). Known to the process that ran
    /// it; not part of the record on disk.
    #[serde(skip)]
    pub permanent_failure: bool,
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
    /// The estimated cost of `tokens` in dollars (loops.yaml `pricing:`); absent when the
    /// model's price is unknown. An estimate, never a bill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_estimate: Option<f64>,
    /// An adaptive loop's model asked to look again at this instant (`finish(next_check)`,
    /// clamped to `schedule.adaptive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check: Option<DateTime<Utc>>,
    /// Each time a turn went to a fallback provider (`from -> to`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
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
    /// With a git remote: the ref keeping this run's commit because the person changed the
    /// same file and their version won (docs/remote.md). Filled in from
    /// `.loops/remote.json` when records are read (`loops runs`), not stored in the line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
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
            permanent_failure: false,
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
            fallbacks: Vec::new(),
            summary: None,
            transcript: None,
            refused_tools: Vec::new(),
            deliveries: Vec::new(),
            held_back: Vec::new(),
            held: None,
            cost_estimate: None,
            next_check: None,
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
        crate::journal::Journal::open(Layout::around_runs_dir(&self.dir).root())
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

    /// Every record of a loop's current file, in file order, and how many lines could
    /// not be read (damaged by hand or by the disk).
    pub fn all_counting_damaged(&self, loop_name: &str) -> (Vec<RunRecord>, usize) {
        let Ok(text) = std::fs::read_to_string(self.path(loop_name)) else {
            return (Vec::new(), 0);
        };
        let mut recs = Vec::new();
        let mut damaged = 0;
        for line in record_lines(&text) {
            match line {
                Ok(r) => recs.push(r),
                Err(()) => damaged += 1,
            }
        }
        (recs, damaged)
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

/// The records of a record file's text, each line read, or `Err` for a line that cannot
/// be. A last line with no newline that does not parse is a record being appended this
/// moment, not damage: it is left out without a word.
pub fn record_lines(text: &str) -> impl Iterator<Item = Result<RunRecord, ()>> + '_ {
    let appending = !text.is_empty() && !text.ends_with('\n');
    let count = text.lines().count();
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter_map(move |(i, l)| match serde_json::from_str::<RunRecord>(l) {
            Ok(r) => Some(Ok(r)),
            Err(_) if appending && i + 1 == count => None,
            Err(_) => Some(Err(())),
        })
}

/// [`record_lines`], newest first (the file's last line first): a reader that needs only
/// recent records stops when it has them, instead of parsing a file of up to
/// `rotate_bytes` whole.
pub fn record_lines_newest_first(text: &str) -> impl Iterator<Item = Result<RunRecord, ()>> + '_ {
    let appending = !text.is_empty() && !text.ends_with('\n');
    text.lines()
        .rev()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter_map(move |(i, l)| match serde_json::from_str::<RunRecord>(l) {
            Ok(r) => Some(Ok(r)),
            Err(_) if appending && i == 0 => None,
            Err(_) => Some(Err(())),
        })
}

/// A run in progress as its light job records it (the job's `params`): which run, who
/// runs it, its command's process group and, for a wake, the handoffs it claimed. An older
/// version kept the same record as a marker file in `.loops/running/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInProgress {
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
    /// A wake's claimed handoffs (their file names in `inbox/active/`), given back to the
    /// inbox if the wake's process dies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handoffs: Vec<String>,
    /// What its model turns have spent so far: a run whose process dies is recorded
    /// `interrupted` with these, so the day's budget still counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<SpentSoFar>,
}

/// The tokens of a run in progress, and their estimated cost (`None` once a turn's model
/// has no price).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpentSoFar {
    pub tokens: crate::usage::Usage,
    #[serde(default)]
    pub cost_estimate: Option<f64>,
}

impl Default for SpentSoFar {
    fn default() -> Self {
        SpentSoFar {
            tokens: crate::usage::Usage::default(),
            cost_estimate: Some(0.0),
        }
    }
}

impl SpentSoFar {
    /// Adds a turn: its tokens, and its cost when its model has a price.
    pub fn add(&mut self, usage: &crate::usage::Usage, cost: Option<f64>) {
        self.tokens.add(usage);
        self.cost_estimate = self.cost_estimate.zip(cost).map(|(a, b)| a + b);
    }
}

impl RunInProgress {
    pub fn for_this_process(
        loop_name: &str,
        run_id: &str,
        trigger: &str,
        slot: Option<DateTime<Utc>>,
        attempt: u32,
        started: DateTime<Utc>,
    ) -> Self {
        let pid = std::process::id();
        RunInProgress {
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
            handoffs: Vec::new(),
            spent: None,
        }
    }

    /// The kind of job this run is: a wake of the main session, or a loop's run.
    pub fn kind(&self) -> JobKind {
        if self.loop_name == MAIN_SESSION {
            JobKind::Wake
        } else {
            JobKind::Loop
        }
    }
}

/// The runs in progress: each a light job in the queue (`.loops/jobs/`, kind `loop`, or
/// `wake` for the main session), owned by the process running it through the job's lease,
/// listed with every other job (`loops jobs list --all`), cancellable with `loops jobs
/// cancel`, and removed when the run ends (its history is the run record). Concurrency
/// across processes (`concurrency: forbid | replace`) is checked in the queue's transaction
/// when a run begins ([`RunningSet::begin_exclusive`]).
///
/// `.loops/running/` is where an older version kept its markers: read for one release, so
/// that runs it left interrupted are recovered, and emptied as they are.
#[derive(Debug, Clone)]
pub struct RunningSet {
    store: JobStore,
    /// [`Layout::busy_dir`]: per loop, the job whose run began last.
    busy: PathBuf,
    legacy: PathBuf,
    /// Which job holds each run this process made.
    ids: Arc<Mutex<HashMap<String, JobId>>>,
    /// Runs whose job the disk would not let us remove (read-only): removed by
    /// [`RunningSet::flush`], so a finished run is not shown as running.
    stale: Arc<Mutex<Vec<String>>>,
}

/// What a loop's concurrency key file says.
#[derive(Debug, PartialEq, Eq)]
enum Busy {
    /// No file: no run of the loop has begun (or the last one ended).
    Free,
    /// The job of the run that began last.
    Job(JobId),
    /// A file that cannot be read or parsed.
    Unreadable,
}

/// A run's marker as the light job's parameters, with whether it has begun.
#[derive(Serialize, Deserialize)]
struct RunParams {
    #[serde(flatten)]
    marker: RunInProgress,
    #[serde(default)]
    begun: bool,
    /// Submitted by `loops trigger --follow`: the runner writes the run's output where
    /// the trigger reads it ([`live_output_paths`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    follow: bool,
}

/// A run submitted to the daemon (`loops trigger` while a daemon serves the workspace),
/// as the daemon claims it.
#[derive(Debug, Clone)]
pub struct SubmittedRun {
    pub marker: RunInProgress,
    pub follow: bool,
}

/// Where a submitted run stands, as its submitter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmittedState {
    /// Not claimed yet.
    Waiting,
    /// Claimed by a runner, alive or not.
    Claimed { pid: u32, alive: bool },
    /// Cancelled (`loops jobs cancel`) before a runner claimed it.
    Cancelled,
    /// Ended: its record is in the loop's run history.
    Gone,
}

/// The files a followed run's output is written to while it runs (stdout, stderr): beside
/// its transcript, owner-only like all of `.loops/`.
pub fn live_output_paths(runs_dir: &Path, loop_name: &str, run_id: &str) -> (PathBuf, PathBuf) {
    let dir = runs_dir.join(loop_name);
    (
        dir.join(format!("{run_id}.stdout.live")),
        dir.join(format!("{run_id}.stderr.live")),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RunningSet {
    /// The runs in progress of the workspace whose runner folder is `runtime_dir`.
    /// Every `RunningSet` of one workspace in a process shares what it knows of its runs
    /// (a trigger reserves the loop, the run it starts records itself begun).
    pub fn new(runtime_dir: &Path) -> Self {
        type Shared = (Arc<Mutex<HashMap<String, JobId>>>, Arc<Mutex<Vec<String>>>);
        static SHARED: std::sync::OnceLock<Mutex<HashMap<PathBuf, Shared>>> =
            std::sync::OnceLock::new();
        let (ids, stale) = lock(SHARED.get_or_init(Mutex::default))
            .entry(runtime_dir.to_path_buf())
            .or_default()
            .clone();
        let layout = Layout::at(runtime_dir);
        RunningSet {
            store: JobStore::at(layout.jobs_dir()),
            busy: layout.busy_dir(),
            legacy: layout.legacy_running_dir(),
            ids,
            stale,
        }
    }

    /// Records a run that has begun (or updates its record).
    pub fn put(&self, m: &RunInProgress) -> Result<(), RunsError> {
        self.write(m, true, false).map(|_| ())
    }

    /// Records a run that waits for its time (a slot claimed ahead of its fire time).
    pub fn put_pending(&self, m: &RunInProgress) -> Result<(), RunsError> {
        self.write(m, false, false).map(|_| ())
    }

    /// Records runs that wait for their time, all in one write of the queue (the slots a
    /// tick claims together).
    pub fn put_pending_many(&self, ms: &[RunInProgress]) -> Result<(), RunsError> {
        let now = Utc::now();
        let r = self.store.transaction(|tx| {
            let mut made = Vec::with_capacity(ms.len());
            for m in ms {
                let mut job = light_job(tx.next_id()?, m, now)?;
                job.params = serde_json::to_value(RunParams {
                    marker: m.clone(),
                    begun: false,
                    follow: false,
                })
                .unwrap_or_default();
                job.state = JobState::Delayed;
                job.run_at = Some(m.started);
                tx.put(&job, false)?;
                made.push((m.run_id.clone(), job.id));
            }
            Ok::<_, StoreError>(made)
        });
        match r {
            Ok(made) => {
                lock(&self.ids).extend(made);
                Ok(())
            }
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Submits a run for the daemon to claim (unowned until then). With `exclusive`
    /// (the loop's `concurrency` is not `allow`), `Ok(None)` when a run of the loop has
    /// begun and lives, or another submitted one waits: the same refusal as a run here.
    pub fn submit(
        &self,
        m: &RunInProgress,
        follow: bool,
        exclusive: bool,
    ) -> Result<Option<JobId>, RunsError> {
        let now = Utc::now();
        let r = self.store.transaction(|tx| {
            if exclusive && (self.busy_elsewhere(tx, m)? || waiting_submitted(tx, &m.loop_name)) {
                return Ok::<_, StoreError>(None);
            }
            let mut job = light_job(tx.next_id()?, m, now)?;
            job.params = serde_json::to_value(RunParams {
                marker: m.clone(),
                begun: false,
                follow,
            })
            .unwrap_or_default();
            job.state = JobState::Waiting;
            job.lease = None;
            // Durable: the submitter waits on it, and a daemon restarting claims it.
            tx.put(&job, true)?;
            Ok(Some(job.id))
        });
        match r {
            Ok(Some(id)) => {
                lock(&self.ids).insert(m.run_id.clone(), id);
                Ok(Some(id))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Claims every submitted run no runner has claimed, for this process: each then
    /// waits for its start as a run this process planned.
    pub fn claim_submitted(&self) -> Result<Vec<SubmittedRun>, RunsError> {
        let now = Utc::now();
        let r = self.store.transaction(|tx| {
            let (jobs, _) = tx.live_jobs();
            let mut out = Vec::new();
            for mut job in jobs.into_iter().filter(is_unclaimed_submission) {
                let Some(p) = run_params(&job) else { continue };
                job.lease = Some(Lease::this_process(now));
                job.state = JobState::Delayed;
                job.run_at = Some(now);
                job.updated = now;
                tx.put(&job, false)?;
                out.push((job.id, p));
            }
            Ok::<_, StoreError>(out)
        });
        match r {
            Ok(claimed) => {
                let mut ids = lock(&self.ids);
                Ok(claimed
                    .into_iter()
                    .map(|(id, p)| {
                        ids.insert(p.marker.run_id.clone(), id);
                        SubmittedRun {
                            marker: p.marker,
                            follow: p.follow,
                        }
                    })
                    .collect())
            }
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Takes back a submitted run no runner has claimed: `Ok(true)` when it is gone,
    /// `Ok(false)` when a runner claimed it first (then it is theirs to stop).
    pub fn withdraw(&self, id: JobId) -> Result<bool, RunsError> {
        let r = self.store.transaction(|tx| match tx.get(id)? {
            Some(j) if j.lease.is_some() => Ok::<_, StoreError>(false),
            Some(_) => tx.delete(id).map(|()| true),
            None => Ok(true),
        });
        r.map_err(|e| self.refused(e))
    }

    /// Where the submitted run `id` stands.
    pub fn submitted_state(&self, id: JobId) -> Result<SubmittedState, RunsError> {
        let job = self.store.get(id).map_err(|e| self.refused(e))?;
        Ok(match job {
            None => SubmittedState::Gone,
            Some(j) if j.state == JobState::Cancelled => SubmittedState::Cancelled,
            Some(j) => match j.lease {
                None => SubmittedState::Waiting,
                Some(l) => SubmittedState::Claimed {
                    pid: l.pid,
                    alive: l.owner_alive(),
                },
            },
        })
    }

    /// Records that a run begins, unless another process's or this one's run of the same
    /// loop has begun and is still going: `Ok(false)` then, and nothing is written.
    pub fn begin_exclusive(&self, m: &RunInProgress) -> Result<bool, RunsError> {
        self.write(m, true, true)
    }

    /// Rewrites a run's record (it only grows: fields are added, never removed).
    pub fn update(&self, m: &RunInProgress) -> Result<(), RunsError> {
        self.put(m)
    }

    fn write(&self, m: &RunInProgress, begun: bool, exclusive: bool) -> Result<bool, RunsError> {
        let known = lock(&self.ids).get(&m.run_id).copied();
        let now = Utc::now();
        let r = self.store.transaction(|tx| {
            let existing = match known {
                Some(id) => tx.get(id)?,
                None => None,
            };
            if exclusive && self.busy_elsewhere(tx, m)? {
                return Ok::<_, StoreError>(None);
            }
            let mut job = match existing {
                Some(j) => j,
                None => light_job(tx.next_id()?, m, now)?,
            };
            let follow = run_params(&job).is_some_and(|p| p.follow);
            job.params = serde_json::to_value(RunParams {
                marker: m.clone(),
                begun,
                follow,
            })
            .unwrap_or_default();
            job.updated = now;
            // Waiting for its fire time until it begins; a cancelled one stays cancelled
            // (the run it belongs to sees that, and stops).
            if job.state != JobState::Cancelled {
                let state = if begun {
                    JobState::Active
                } else {
                    JobState::Delayed
                };
                // Set, not transitioned: a light job keeps no history (its run record
                // is that), and keeps its lease while it waits.
                job.state = state;
                job.run_at = (!begun).then_some(m.started);
                if job.lease.is_none() {
                    job.lease = Some(Lease::this_process(now));
                }
            }
            if let Some(l) = job.lease.as_mut() {
                l.pgid = m.pgid;
                l.pgid_start = m.pgid_start;
            }
            if begun && job.started.is_none() {
                job.started = Some(now);
            }
            // Not flushed: the record is there for a crashed process, which the page
            // cache survives; waiting for the disk at every run start would only add latency.
            tx.put(&job, false)?;
            if begun && job.kind.policy().concurrency == ConcurrencyKey::Loop {
                self.set_busy(&m.loop_name, job.id)?;
            }
            Ok(Some(job.id))
        });
        match r {
            Ok(Some(id)) => {
                lock(&self.ids).insert(m.run_id.clone(), id);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Where the begun run of each loop is named: the concurrency key, so that checking
    /// it reads one file, not every job.
    fn busy_path(&self, loop_name: &str) -> PathBuf {
        self.busy.join(format!("{loop_name}.json"))
    }

    fn set_busy(&self, loop_name: &str, id: JobId) -> Result<(), StoreError> {
        let path = self.busy_path(loop_name);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            crate::fsutil::create_dir_all(dir).map_err(io)?;
        }
        crate::fsutil::atomic_replace(&path, id.to_string().as_bytes()).map_err(io)
    }

    fn busy_job(&self, loop_name: &str) -> Busy {
        match std::fs::read_to_string(self.busy_path(loop_name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Busy::Free,
            Err(_) => Busy::Unreadable,
            Ok(t) => t.trim().parse().map_or(Busy::Unreadable, Busy::Job),
        }
    }

    /// Whether another run of `m`'s loop has begun and its process lives (read under
    /// the queue's lock, so that checking and beginning are one step). A key file that
    /// cannot be read is not taken for a free loop: every live job is looked at instead.
    fn busy_elsewhere(&self, tx: &dyn JobTx, m: &RunInProgress) -> Result<bool, StoreError> {
        let holds = |j: &Job| {
            j.kind == JobKind::Loop
                && run_params(j).is_some_and(|p| {
                    p.begun && p.marker.loop_name == m.loop_name && p.marker.run_id != m.run_id
                })
                && j.lease.as_ref().is_some_and(|l| l.owner_alive())
        };
        match self.busy_job(&m.loop_name) {
            Busy::Free => Ok(false),
            Busy::Job(id) => Ok(tx.get(id)?.is_some_and(|j| holds(&j))),
            Busy::Unreadable => Ok(tx.live_jobs().0.iter().any(holds)),
        }
    }

    /// A queue write the disk refused, told to the journal.
    fn refused(&self, e: StoreError) -> RunsError {
        let path = self.store.dir().to_path_buf();
        let source = std::io::Error::other(e.to_string());
        crate::journal::report_io(&path, &source);
        RunsError::Io { path, source }
    }

    /// The job that holds a run, if it is in progress.
    pub fn job_of(&self, run_id: &str) -> Option<JobId> {
        if let Some(id) = lock(&self.ids).get(run_id).copied() {
            return Some(id);
        }
        self.light_jobs()
            .into_iter()
            .find(|(_, p)| p.marker.run_id == run_id)
            .map(|(j, _)| j.id)
    }

    pub fn exists(&self, run_id: &str) -> bool {
        self.job_of(run_id).is_some() || self.legacy.join(format!("{run_id}.json")).exists()
    }

    /// Whether someone asked for the run to stop (`loops jobs cancel`).
    pub fn cancel_requested(&self, run_id: &str) -> bool {
        let Some(id) = lock(&self.ids).get(run_id).copied() else {
            return false;
        };
        self.store
            .get(id)
            .ok()
            .flatten()
            .is_some_and(|j| j.control == Some(Control::Cancel) || j.state == JobState::Cancelled)
    }

    pub fn remove(&self, run_id: &str) {
        let id = self.job_of(run_id);
        let gone = match id {
            Some(id) => self
                .store
                .transaction(|tx| {
                    if let Some(j) = tx.get(id)? {
                        if self.busy_job(&j.name) == Busy::Job(id) {
                            let _ = std::fs::remove_file(self.busy_path(&j.name));
                        }
                    }
                    tx.delete(id)
                })
                .is_ok(),
            None => true,
        };
        let legacy = self.legacy.join(format!("{run_id}.json"));
        let legacy_gone = !matches!(std::fs::remove_file(&legacy), Err(e) if e.kind() != std::io::ErrorKind::NotFound);
        if gone && legacy_gone {
            lock(&self.ids).remove(run_id);
        } else {
            lock(&self.stale).push(run_id.to_string());
        }
    }

    /// Removes the runs a refusing disk kept; returns whether none is left.
    pub fn flush(&self) -> bool {
        let stale: Vec<String> = std::mem::take(&mut *lock(&self.stale));
        for run_id in stale {
            self.remove(&run_id);
        }
        lock(&self.stale).is_empty()
    }

    /// Whether runs that ended wait to be removed.
    pub fn has_stale(&self) -> bool {
        !lock(&self.stale).is_empty()
    }

    fn light_jobs(&self) -> Vec<(Job, RunParams)> {
        let (jobs, _) = self.store.live_jobs();
        jobs.into_iter()
            .filter(|j| j.kind.is_light())
            .filter_map(|j| run_params(&j).map(|p| (j, p)))
            .collect()
    }

    /// Every run in progress, each with the pid of the process running it.
    pub fn all(&self) -> Vec<RunInProgress> {
        let mut out: Vec<RunInProgress> = self
            .light_jobs()
            .into_iter()
            .map(|(j, p)| {
                let mut m = p.marker;
                if let Some(l) = j.lease {
                    m.pid = l.pid;
                    m.pid_start = l.pid_start;
                }
                m
            })
            .collect();
        out.extend(self.legacy_markers());
        out
    }

    /// What an older version left in `.loops/running/`.
    fn legacy_markers(&self) -> Vec<RunInProgress> {
        let Ok(rd) = std::fs::read_dir(&self.legacy) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect()
    }

    /// Removes light jobs whose parameters cannot be read (a damaged file) and whose owner
    /// is gone, stopping the process group their lease names: nothing can record them as
    /// runs, and left alone they would be listed as running for ever. Returns their ids.
    pub fn remove_unreadable(&self) -> Vec<JobId> {
        let r = self.store.transaction(|tx| {
            let (jobs, _) = tx.live_jobs();
            let mut gone = Vec::new();
            for j in jobs.iter().filter(|j| j.kind.is_light()) {
                let owner_gone = j.lease.as_ref().is_none_or(|l| !l.owner_alive());
                if run_params(j).is_none() && owner_gone {
                    // Its command's group, named by the lease, is stopped all the same.
                    if let Some(l) = j.lease.as_ref() {
                        if let Some(pg) = l.pgid.filter(|pg| process_alive(*pg, l.pgid_start)) {
                            crate::sys::signal_group(pg, crate::sys::Signal::KILL);
                        }
                    }
                    tx.delete(j.id)?;
                    gone.push(j.id);
                }
            }
            Ok::<_, StoreError>(gone)
        });
        r.unwrap_or_else(|e| {
            self.refused(e);
            Vec::new()
        })
    }

    /// Runs whose owning process is gone: runs a crash interrupted. A submitted run no
    /// runner claimed is not one: the next runner claims it.
    pub fn orphans(&self) -> Vec<RunInProgress> {
        let mut out: Vec<RunInProgress> = self
            .light_jobs()
            .into_iter()
            .filter_map(|(j, p)| {
                let l = j.lease?;
                let mut m = p.marker;
                m.pid = l.pid;
                m.pid_start = l.pid_start;
                Some(m)
            })
            .filter(|m| !process_alive(m.pid, m.pid_start))
            .collect();
        out.extend(
            self.legacy_markers()
                .into_iter()
                .filter(|m| !process_alive(m.pid, m.pid_start)),
        );
        out
    }
}

/// A run submitted to the daemon and not claimed yet.
fn is_unclaimed_submission(j: &Job) -> bool {
    j.kind == JobKind::Loop && j.lease.is_none() && j.state == JobState::Waiting
}

/// Whether a submitted run of `loop_name` waits to be claimed.
fn waiting_submitted(tx: &dyn JobTx, loop_name: &str) -> bool {
    let (jobs, _) = tx.live_jobs();
    jobs.iter()
        .any(|j| is_unclaimed_submission(j) && j.name == loop_name)
}

fn run_params(j: &Job) -> Option<RunParams> {
    serde_json::from_value(j.params.clone()).ok()
}

/// Whether the run a light job stands for has begun (is past its wait for its time and
/// its turn under `limits.max_concurrent_jobs`).
pub fn run_has_begun(j: &Job) -> bool {
    run_params(j).is_some_and(|p| p.begun)
}

/// The run a light job (`loop` or `wake`) stands for, as its params name it.
pub fn run_of_job(j: &Job) -> Option<RunInProgress> {
    j.kind
        .is_light()
        .then(|| run_params(j).map(|p| p.marker))
        .flatten()
}

/// A new light job for a run, leased to this process.
fn light_job(id: JobId, m: &RunInProgress, now: DateTime<Utc>) -> Result<Job, StoreError> {
    let kind = m.kind();
    let v = serde_json::json!({
        "id": id,
        "name": m.loop_name,
        "kind": kind,
        "queue": "runs",
        "state": JobState::Active,
        "created": now,
        "updated": now,
        "max_attempts": 1,
        "max_stalled": 0,
        "source": format!("{} run", m.trigger),
        "idempotency_key": m.slot.map(|slot| slot_key(&m.loop_name, slot)),
    });
    let mut job: Job = serde_json::from_value(v).map_err(|source| StoreError::Corrupt {
        path: PathBuf::from(format!("job {id}")),
        source,
    })?;
    job.lease = Some(Lease::this_process(now));
    Ok(job)
}

/// A scheduled run's idempotency key, `<loop>@<slot instant>` (DESIGN §4): every attempt
/// at the slot shares it. Its exactly-once is kept by the loop's watermark, moved past
/// the slot in one compare-and-set before the run is planned, so the key is not
/// registered in `jobs/keys/` (a light job leaves no file behind).
pub fn slot_key(loop_name: &str, slot: DateTime<Utc>) -> String {
    format!(
        "{loop_name}@{}",
        slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

/// The name main-session wakes are recorded under.
const MAIN_SESSION: &str = "main";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_line_is_counted_and_a_line_being_appended_is_not() {
        let rec = |id: &str| {
            let mut r =
                RunRecord::decision("l", "manual", None, Utc::now(), Outcome::Silent, "x".into());
            r.run_id = id.into();
            serde_json::to_string(&r).expect("json")
        };
        let read = |text: &str| {
            let (ok, bad): (Vec<_>, Vec<_>) = record_lines(text).partition(|r| r.is_ok());
            let ids: Vec<String> = ok.into_iter().flatten().map(|r| r.run_id).collect();
            (ids, bad.len())
        };
        let text = format!("{}\n{{\"torn\n\n{}\n", rec("a"), rec("b"));
        assert_eq!(read(&text), (vec!["a".into(), "b".into()], 1));
        // Being appended this moment: neither a record nor damage.
        let text = format!("{}\n{{\"loop\":\"l\",\"ru", rec("a"));
        assert_eq!(read(&text), (vec!["a".into()], 0));
        // A whole record with its newline lost (edited by hand) is still read.
        let text = format!("{}\n{}", rec("a"), rec("b"));
        assert_eq!(read(&text), (vec!["a".into(), "b".into()], 0));
    }

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
