//! Retention: how long `.loops/` keeps what only ever grows.
//!
//! Run records, transcripts, finished jobs, delivery records and logs are appended to for as
//! long as the daemon runs; a year of it must not fill the disk. Two limits from loops.yaml
//! `records:` decide what goes: `max_age` (anything older is removed) and `max_total_bytes`
//! (a cap on `.loops/` as a whole: the oldest removable things go first until it fits).
//! Live state is never removed, whatever its size or age: loop state, run markers, locks,
//! the current run-record file of each loop, jobs that are not finished, the queue's id
//! counter. Files that are appended to in place (`jobs/audit.log`, MCP server logs) are
//! rotated at `rotate_bytes`, so their old parts can age out like the rest.
//!
//! The daemon prunes at start and then hourly; `loops prune` does it on demand and shows
//! what it would remove with `--dry-run`.

use crate::jobs::job::JobId;
use crate::jobs::store::JobStore;
use crate::workspace::{Settings, Workspace};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// The limits in force, from loops.yaml `records:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Remove what is older than this; `None` keeps everything (`max_age: forever`).
    pub max_age: Option<Duration>,
    /// Keep `.loops/` under this many bytes; `None` is no cap (`max_total_bytes: 0`).
    pub max_total_bytes: Option<u64>,
    /// Files appended to in place are rotated at this size.
    pub rotate_bytes: u64,
}

impl Policy {
    pub fn of(settings: &Settings) -> Policy {
        Policy {
            max_age: settings.max_age,
            max_total_bytes: settings.max_total_bytes,
            rotate_bytes: settings.rotate_bytes,
        }
    }

    /// `max_age 90d, max_total_bytes 1.0 GiB`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "max_age {}, max_total_bytes {}",
            self.max_age
                .map(crate::duration::format_duration)
                .unwrap_or_else(|| "forever".into()),
            self.max_total_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "none".into()),
        )
    }
}

/// What a removable thing is, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `runs/<loop>.<stamp>.jsonl`: run records rotated out of the current file.
    RunRecords,
    /// `runs/<loop>/<run-id>.md`: prompt-run and main-session transcripts.
    Transcripts,
    /// A finished job: `jobs/done/<id>.json`, its log, transcript, conversation, index
    /// line and idempotency key.
    Jobs,
    /// `deliveries/<key>.json`.
    Deliveries,
    /// `handoff-runs/<run-id>`.
    HandoffRuns,
    /// Rotated logs (`*.log.<stamp>`) and set-aside damaged files.
    Logs,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::RunRecords => "rotated run records",
            Kind::Transcripts => "transcripts",
            Kind::Jobs => "finished jobs",
            Kind::Deliveries => "delivery records",
            Kind::HandoffRuns => "handoff-run notes",
            Kind::Logs => "rotated logs",
        }
    }
}

/// Counts of one kind removed.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Tally {
    /// Things removed (a finished job is one thing of up to five files).
    pub items: u64,
    pub files: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, item: &Item) {
        self.items += 1;
        self.files += item.paths.len() as u64;
        self.bytes += item.bytes;
    }
}

/// What one pass did (or, with `dry_run`, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub max_age: Option<String>,
    pub max_total_bytes: Option<u64>,
    /// `.loops/` before the pass: every file in it.
    pub files_before: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Removed for being older than `max_age`.
    pub expired: Tally,
    /// Removed, though younger than `max_age`, to get under `max_total_bytes`.
    pub over_cap: Tally,
    pub removed: BTreeMap<Kind, Tally>,
    /// Files rotated because they passed `rotate_bytes` (relative to the workspace).
    pub rotated: Vec<String>,
    /// Files that could not be removed or rotated, with the reason.
    pub errors: Vec<String>,
    /// Set when `.loops/` is still over the cap with nothing removable left.
    pub warning: Option<String>,
}

impl Report {
    pub fn removed_items(&self) -> u64 {
        self.expired.items + self.over_cap.items
    }
}

/// Something that is removed whole: one file, or a finished job with its companions.
#[derive(Debug)]
struct Item {
    kind: Kind,
    paths: Vec<PathBuf>,
    bytes: u64,
    modified: SystemTime,
    job: Option<JobId>,
}

/// One pass over `.loops/`: rotates the files that passed `rotate_bytes`, then removes
/// what is older than `max_age`, then the oldest of the rest while `.loops/` is over
/// `max_total_bytes`. `say` gets a line for each step of a long pass.
pub fn prune(ws: &Workspace, now: SystemTime, dry_run: bool, say: &dyn Fn(&str)) -> Report {
    let policy = Policy::of(&ws.settings);
    let layout = ws.layout();
    let root = layout.root();
    let mut report = Report {
        dry_run,
        max_age: policy.max_age.map(crate::duration::format_duration),
        max_total_bytes: policy.max_total_bytes,
        ..Report::default()
    };
    if !root.is_dir() {
        return report;
    }
    if !dry_run {
        rotate_growing_logs(ws, &policy, now, &mut report);
    }
    say("scanning .loops/");
    let (files, bytes) = total_size(root);
    report.files_before = files;
    report.bytes_before = bytes;
    let items = collect(ws, &mut report);
    say(&format!(
        "{} files, {}; {} removable items",
        files,
        human_bytes(bytes),
        items.len()
    ));

    let cutoff = policy.max_age.and_then(|a| now.checked_sub(a));
    let (mut doomed, mut kept): (Vec<Item>, Vec<Item>) = items
        .into_iter()
        .partition(|i| cutoff.is_some_and(|c| i.modified < c));
    for i in &doomed {
        report.expired.add(i);
        report.removed.entry(i.kind).or_default().add(i);
    }
    let mut remaining = bytes.saturating_sub(report.expired.bytes);
    if let Some(cap) = policy.max_total_bytes {
        if remaining > cap {
            kept.sort_by_key(|i| i.modified);
            let mut rest = Vec::new();
            for i in kept {
                if remaining > cap {
                    remaining = remaining.saturating_sub(i.bytes);
                    report.over_cap.add(&i);
                    report.removed.entry(i.kind).or_default().add(&i);
                    doomed.push(i);
                } else {
                    rest.push(i);
                }
            }
            if remaining > cap {
                report.warning = Some(format!(
                    ".loops/ still holds {} with nothing old left to remove, over records.max_total_bytes ({}): the rest is live state (current run records, live jobs and their logs, loop state). Raise max_total_bytes in loops.yaml, or see what is large with `du -sh .loops/*`",
                    human_bytes(remaining),
                    human_bytes(cap)
                ));
            }
        }
    }
    report.bytes_after = remaining;
    if !dry_run && !doomed.is_empty() {
        say(&format!("removing {} items", doomed.len()));
        remove(ws, doomed, &mut report);
    }
    report
}

/// Every file under `dir` and their total size.
pub fn total_size(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for e in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if e.file_type().is_file() {
            if let Ok(m) = e.metadata() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

fn meta(p: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::symlink_metadata(p).ok()?;
    if !m.is_file() {
        return None;
    }
    Some((m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

fn files_in(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
}

fn single(kind: Kind, path: PathBuf) -> Option<Item> {
    let (bytes, modified) = meta(&path)?;
    Some(Item {
        kind,
        paths: vec![path],
        bytes,
        modified,
        job: None,
    })
}

fn rotated_run_file(name: &str) -> bool {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"^.+\.\d{8}T\d{6}(\.\d+)?Z(-\d+)?\.jsonl$").expect("a valid regex")
    })
    .is_match(name)
}

/// A log rotated by [`rotate_log`]: `<name>.log.<stamp>`.
fn rotated_log(name: &str) -> bool {
    name.contains(".log.")
}

/// Everything that may be removed, each with its size and age.
fn collect(ws: &Workspace, report: &mut Report) -> Vec<Item> {
    let layout = ws.layout();
    let mut items = Vec::new();

    // Transcripts of runs still going are being written: never theirs.
    let mut running: HashSet<String> = crate::runs::RunningSet::new(layout.root())
        .all()
        .into_iter()
        .map(|m| m.run_id)
        .collect();
    // An older version's markers (`.loops/running/<run>.json`), read for one release.
    running.extend(
        files_in(&layout.legacy_running_dir())
            .filter_map(|(n, _)| n.strip_suffix(".json").map(str::to_string)),
    );
    for (name, path) in files_in(&layout.runs_dir()) {
        if path.is_dir() {
            for (t, tp) in files_in(&path) {
                let stem = t.strip_suffix(".md").unwrap_or(&t);
                if !running.contains(stem) {
                    items.extend(single(Kind::Transcripts, tp));
                }
            }
        } else if rotated_run_file(&name) {
            items.extend(single(Kind::RunRecords, path));
        }
    }

    for (_, path) in files_in(&layout.deliveries_dir()) {
        items.extend(single(Kind::Deliveries, path));
    }
    for (_, path) in files_in(&layout.handoff_runs_dir()) {
        items.extend(single(Kind::HandoffRuns, path));
    }
    for (name, path) in files_in(&layout.main_dir()) {
        if name.starts_with("conversation.corrupt-") {
            items.extend(single(Kind::Logs, path));
        }
    }
    for (name, path) in files_in(&layout.mcp_dir())
        .chain(files_in(&layout.jobs_dir()))
        .chain(files_in(layout.root()))
    {
        if rotated_log(&name) {
            items.extend(single(Kind::Logs, path));
        }
    }

    collect_jobs(ws, &mut items, report);
    items
}

/// Finished jobs, each with the files that belong to it; live jobs are left alone, and so
/// is a finished parent while a child of it is still live (the child reports to it).
fn collect_jobs(ws: &Workspace, items: &mut Vec<Item>, report: &mut Report) {
    let store = JobStore::new(ws);
    let dir = store.dir().to_path_buf();
    if !dir.is_dir() {
        return;
    }
    let (live, errors) = store.live_jobs();
    let mut protected: HashSet<JobId> = live.iter().map(|j| j.id).collect();
    protected.extend(live.iter().filter_map(|j| j.parent));
    // A live file that cannot be read is still a live job: keep its id out of reach.
    protected.extend(store.live_ids());
    for e in errors {
        report.errors.push(e.to_string());
    }
    let companions = |id: JobId| {
        [
            store.log_path(id),
            store.transcript_path(id),
            store.conversation_path(id),
        ]
    };
    let mut seen: HashSet<JobId> = HashSet::new();
    for (name, path) in files_in(&store.done_dir()) {
        let Some(id) = name
            .strip_suffix(".json")
            .and_then(|s| s.parse::<JobId>().ok())
        else {
            continue;
        };
        if protected.contains(&id) {
            continue;
        }
        let Some((mut bytes, modified)) = meta(&path) else {
            continue;
        };
        seen.insert(id);
        let mut paths = vec![path];
        for c in companions(id) {
            if let Some((b, _)) = meta(&c) {
                bytes += b;
                paths.push(c);
            }
        }
        items.push(Item {
            kind: Kind::Jobs,
            paths,
            bytes,
            modified,
            job: Some(id),
        });
    }
    // A log or transcript whose job is neither live nor finished (its job file was
    // removed by hand, or a crash came between the two removals).
    for (name, path) in files_in(&dir) {
        let Some(id) = [".log", ".md", ".conversation.json"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .and_then(|s| s.parse::<JobId>().ok())
        else {
            continue;
        };
        if protected.contains(&id) || seen.contains(&id) || store.done_path(id).exists() {
            continue;
        }
        items.extend(single(Kind::Jobs, path));
    }
}

/// Removes what was chosen. Finished jobs go under the queue lock, with their index
/// lines and idempotency keys, so `jobs list` never shows a job whose file is gone.
fn remove(ws: &Workspace, doomed: Vec<Item>, report: &mut Report) {
    let (jobs, files): (Vec<Item>, Vec<Item>) = doomed.into_iter().partition(|i| i.job.is_some());
    for item in &files {
        for p in &item.paths {
            remove_file(ws, p, report);
        }
    }
    if jobs.is_empty() {
        return;
    }
    let store = JobStore::new(ws);
    let ids: HashSet<JobId> = jobs.iter().filter_map(|i| i.job).collect();
    let res = store.transaction(|tx| -> Result<(), crate::jobs::store::StoreError> {
        let store = tx.store();
        // Checked again under the lock: a replay or retry may have brought one back.
        let gone: HashSet<JobId> = ids
            .iter()
            .copied()
            .filter(|id| !store.live_path(*id).exists())
            .collect();
        for item in &jobs {
            if item.job.is_some_and(|id| gone.contains(&id)) {
                for p in &item.paths {
                    remove_file(ws, p, report);
                }
            }
        }
        remove_keys(ws, store, &gone, report);
        rewrite_index(ws, store, &gone, report);
        Ok(())
    });
    if let Err(e) = res {
        report.errors.push(e.to_string());
    }
}

fn remove_file(ws: &Workspace, p: &Path, report: &mut Report) {
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report
            .errors
            .push(format!("cannot remove {}: {e}", rel(ws, p))),
    }
}

fn remove_keys(ws: &Workspace, store: &JobStore, gone: &HashSet<JobId>, report: &mut Report) {
    for (_, path) in files_in(&store.keys_dir()) {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let id = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_u64()));
        if id.is_some_and(|id| gone.contains(&id)) {
            remove_file(ws, &path, report);
        }
    }
}

/// Drops the index lines of removed jobs, replacing the index atomically.
fn rewrite_index(ws: &Workspace, store: &JobStore, gone: &HashSet<JobId>, report: &mut Report) {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: JobId,
    }
    let path = store.index_path();
    let Ok(f) = std::fs::File::open(&path) else {
        return;
    };
    let mut out = Vec::new();
    let mut dropped = 0u64;
    for line in std::io::BufReader::new(f).split(b'\n') {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                report
                    .errors
                    .push(format!("cannot read {}: {e}", rel(ws, &path)));
                return;
            }
        };
        if line.is_empty() {
            continue;
        }
        let id = serde_json::from_slice::<IdOnly>(&line).ok().map(|l| l.id);
        if id.is_some_and(|id| gone.contains(&id)) {
            dropped += 1;
            continue;
        }
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    if dropped == 0 {
        return;
    }
    if let Err(e) = crate::fsutil::atomic_write(&path, &out) {
        report
            .errors
            .push(format!("cannot rewrite {}: {e}", rel(ws, &path)));
    }
}

/// Rotates the files that are appended to in place once they pass `rotate_bytes`.
fn rotate_growing_logs(ws: &Workspace, policy: &Policy, now: SystemTime, report: &mut Report) {
    let mut logs: Vec<PathBuf> = vec![JobStore::new(ws).audit_path()];
    logs.extend(
        files_in(&ws.layout().mcp_dir())
            .filter(|(n, _)| n.ends_with(".log"))
            .map(|(_, p)| p),
    );
    for p in logs {
        match rotate_log(&p, policy.rotate_bytes, now) {
            Ok(Some(to)) => report.rotated.push(rel(ws, &to)),
            Ok(None) => {}
            Err(e) => report
                .errors
                .push(format!("cannot rotate {}: {e}", rel(ws, &p))),
        }
    }
}

/// Moves a log's content to `<name>.<stamp>` when it has passed `limit` bytes, leaving
/// the log empty. Copied, then truncated, rather than renamed: an MCP server holds its
/// log open for as long as it runs, and would go on writing to a renamed file. The few
/// lines written between the copy and the truncation are lost; nothing else.
pub fn rotate_log(path: &Path, limit: u64, now: SystemTime) -> std::io::Result<Option<PathBuf>> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if len < limit {
        return Ok(None);
    }
    let stamp = chrono::DateTime::<chrono::Utc>::from(now).format("%Y%m%dT%H%M%S%.3fZ");
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("log")
        .to_string();
    let mut to = path.with_file_name(format!("{name}.{stamp}"));
    let mut n = 1;
    while to.exists() {
        to = path.with_file_name(format!("{name}.{stamp}-{n}"));
        n += 1;
    }
    std::fs::copy(path, &to)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(Some(to))
}

fn rel(ws: &Workspace, p: &Path) -> String {
    p.strip_prefix(&ws.root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// How often the daemon prunes after its first pass at start.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The daemon's pruning: a pass at start, then one an hour, each on the blocking pool so
/// that a large `.loops/` never holds up a run. Logged when it removed something.
pub fn spawn(ws: Arc<Workspace>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let w = ws.clone();
            let pass =
                tokio::task::spawn_blocking(move || prune(&w, SystemTime::now(), false, &|_| {}))
                    .await;
            if let Ok(r) = pass {
                log(&ws, &r);
            }
            tokio::time::sleep(PRUNE_EVERY).await;
        }
    })
}

fn log(ws: &Workspace, r: &Report) {
    let policy = Policy::of(&ws.settings);
    if r.removed_items() > 0 || !r.rotated.is_empty() {
        let kinds: Vec<String> = r
            .removed
            .iter()
            .map(|(k, t)| format!("{} {}", t.items, k.label()))
            .collect();
        tracing::info!(
            removed_bytes = r.expired.bytes + r.over_cap.bytes,
            rotated = r.rotated.len(),
            "pruned .loops/ ({}): {}; now {}",
            policy.describe(),
            if kinds.is_empty() {
                "nothing removed".to_string()
            } else {
                kinds.join(", ")
            },
            human_bytes(r.bytes_after)
        );
    }
    for e in &r.errors {
        tracing::warn!("pruning .loops/: {e}");
    }
    if let Some(w) = &r.warning {
        tracing::warn!("{w}");
    }
}
