//! The daemon's own record: `.loops/daemon.jsonl`, one JSON line per event in the life of
//! the runner — started, stopped cleanly, found that the previous daemon did not stop
//! cleanly (and what it recovered), could not write to the disk, removed a git lock a
//! crashed git left behind, committed late. Run records say what each run did; this file
//! says what happened to the runner, so every interruption a run record mentions has an
//! explanation here.
//!
//! Appends are single `O_APPEND` writes, like the run records. When the disk refuses a
//! write (read-only, full), the event is held in memory with its original time and
//! written, in order, as soon as the disk accepts writes again; the journal then notes
//! how long the outage lasted. The file is kept small: past [`MAX_BYTES`] it is renamed
//! to `daemon.1.jsonl` (replacing the previous one) and a new one is started.

use crate::fsutil::append_line;
use crate::layout::{Layout, RUNTIME_DIR};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Past this size the journal is rotated.
pub const MAX_BYTES: u64 = 1 << 20;
/// Events held in memory while the disk refuses writes; older ones are dropped (and
/// counted) past this, so a disk that never comes back cannot exhaust memory.
const MAX_HELD: usize = 2000;

#[derive(Debug, Clone, Copy)]
struct Outage {
    since: DateTime<Utc>,
    refused: u64,
    last: DateTime<Utc>,
}

/// An outage is over once writes have gone through for this long with no refusal: a
/// disk that refuses every write to one folder every second must not be reported as
/// failing and recovering every second.
const QUIET_BEFORE_OK: chrono::Duration = chrono::Duration::seconds(2);

#[derive(Debug, Default)]
struct Held {
    lines: VecDeque<String>,
    dropped: u64,
    /// The disk outage in progress: when it began, writes refused since, and when the
    /// last refusal came.
    outage: Option<Outage>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// Where the journal goes when it passed [`MAX_BYTES`].
    rotated: PathBuf,
    held: Mutex<Held>,
}

/// A handle on a workspace's journal; every handle on the same file in a process shares
/// its held events, so their order is kept.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Journal>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, Journal>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Journal {
    /// The journal of the workspace whose runtime folder is `runtime_dir` (`.loops/`).
    pub fn open(runtime_dir: &Path) -> Journal {
        let layout = Layout::at(runtime_dir);
        let path = layout.journal();
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.entry(path.clone())
            .or_insert_with(|| Journal {
                inner: Arc::new(Inner {
                    path,
                    rotated: layout.journal_rotated(),
                    held: Mutex::new(Held::default()),
                }),
            })
            .clone()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends an event: `{"at", "event", "pid", …fields}`. Never fails: an event the
    /// disk refuses is held and written later.
    pub fn record(&self, event: &str, fields: Value) {
        let mut obj = Map::new();
        obj.insert("at".into(), json!(Utc::now()));
        obj.insert("event".into(), json!(event));
        obj.insert("pid".into(), json!(std::process::id()));
        if let Value::Object(m) = fields {
            obj.extend(m);
        }
        let line = Value::Object(obj).to_string();
        let mut held = self.held();
        held.lines.push_back(line);
        self.write_held(&mut held);
    }

    /// Notes that a write the runner needed was refused (a read-only or full disk). The
    /// first refusal of an outage is recorded with its path and error; the outage's end
    /// is recorded by the first write that succeeds afterwards (see [`Journal::flush`]).
    pub fn disk_error(&self, path: &Path, err: &std::io::Error) {
        let mut held = self.held();
        refused(&mut held, path, err);
        self.write_held(&mut held);
    }

    /// Writes what is held, if the disk takes it now. Returns whether nothing is held.
    pub fn flush(&self) -> bool {
        let mut held = self.held();
        self.write_held(&mut held);
        held.lines.is_empty() && held.outage.is_none()
    }

    /// Whether events are waiting for the disk.
    pub fn has_held(&self) -> bool {
        let held = self.held();
        !held.lines.is_empty() || held.outage.is_some()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_held(&self, held: &mut Held) {
        if held.lines.is_empty() && held.outage.is_none() {
            return;
        }
        let path = &self.inner.path;
        if let Ok(m) = std::fs::metadata(path) {
            if m.len() >= MAX_BYTES {
                let _ = std::fs::rename(path, &self.inner.rotated);
            }
        }
        while let Some(line) = held.lines.front() {
            // An error can quote a webhook URL or a key: nothing known to be secret is
            // written down (src/secrets.rs).
            match append_line(path, &crate::secrets::redact(line)) {
                Ok(()) => {
                    held.lines.pop_front();
                }
                Err(e) => {
                    refused(held, path, &e);
                    while held.lines.len() > MAX_HELD {
                        held.lines.pop_front();
                        held.dropped += 1;
                    }
                    return;
                }
            }
        }
        let Some(o) = held.outage else {
            return;
        };
        if Utc::now() - o.last < QUIET_BEFORE_OK {
            return;
        }
        let line = json!({
            "at": Utc::now(),
            "event": "disk_ok",
            "pid": std::process::id(),
            "since": o.since,
            "refused_writes": o.refused,
            "dropped_events": held.dropped,
        })
        .to_string();
        if append_line(path, &line).is_ok() {
            tracing::info!(
                "the disk accepts writes again (refused since {}); held records written",
                o.since.to_rfc3339()
            );
            held.outage = None;
            held.dropped = 0;
        }
    }
}

/// Counts a refused write; the first of an outage is logged once and recorded (when the
/// disk lets the journal be written again) with the path and the error.
fn refused(held: &mut Held, path: &Path, err: &std::io::Error) {
    let now = Utc::now();
    if let Some(o) = held.outage.as_mut() {
        o.refused += 1;
        o.last = now;
        return;
    }
    held.outage = Some(Outage {
        since: now,
        refused: 1,
        last: now,
    });
    tracing::error!(
        "cannot write {}: {err}; what the runner could not write is kept in memory and written when the disk accepts writes again",
        path.display()
    );
    let line = json!({
        "at": now,
        "event": "disk_error",
        "pid": std::process::id(),
        "path": path,
        "error": err.to_string(),
    })
    .to_string();
    held.lines.push_back(line);
}

/// Reports a write the disk refused to the journal of the workspace whose runtime folder
/// holds `path` (found by walking up to `.loops`), if the error is one of refusal
/// (read-only, full, over quota, permission denied, an I/O error) rather than, say, a
/// missing folder.
pub fn report_io(path: &Path, err: &std::io::Error) {
    use std::io::ErrorKind::*;
    let disk = matches!(
        err.kind(),
        ReadOnlyFilesystem | StorageFull | QuotaExceeded | PermissionDenied
    ) || err.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error());
    if !disk {
        return;
    }
    if let Some(rt) = path
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == RUNTIME_DIR))
    {
        Journal::open(rt).disk_error(path, err);
    }
}

/// Every event in the journal (the rotated file first), oldest first; lines that do not
/// parse are skipped.
pub fn read(runtime_dir: &Path) -> Vec<Value> {
    let layout = Layout::at(runtime_dir);
    [layout.journal_rotated(), layout.journal()]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A daemon that started and was never seen to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct Unclosed {
    pub pid: u64,
    pub started: Option<DateTime<Utc>>,
}

/// Daemons the journal saw start and never saw stop (cleanly, or reported at a later
/// start as having stopped uncleanly), oldest first.
pub fn unclosed(events: &[Value]) -> Vec<Unclosed> {
    let mut open: Vec<Unclosed> = Vec::new();
    for e in events {
        let pid = e["pid"].as_u64().unwrap_or(0);
        match e["event"].as_str() {
            Some("started") => {
                open.retain(|o| o.pid != pid);
                open.push(Unclosed {
                    pid,
                    started: e["at"].as_str().and_then(|t| t.parse().ok()),
                });
            }
            Some("stopped") => open.retain(|o| o.pid != pid),
            Some("unclean_stop") => {
                let gone: Vec<u64> = e["previous"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["pid"].as_u64())
                    .collect();
                open.retain(|o| !gone.contains(&o.pid));
            }
            _ => {}
        }
    }
    open
}

/// Records a daemon's start in the journal of `runtime_dir`; returns the journal and the
/// daemons before it that started and were never seen to stop, read before this start
/// is written.
pub fn record_started(runtime_dir: &Path, once: bool) -> (Journal, Vec<Unclosed>) {
    let journal = Journal::open(runtime_dir);
    let me = std::process::id();
    let unclosed: Vec<Unclosed> = unclosed(&read(runtime_dir))
        .into_iter()
        .filter(|u| u.pid != u64::from(me))
        .collect();
    journal.record(
        "started",
        json!({
            "pid_start": crate::fsutil::process_start_time(me),
            "version": env!("CARGO_PKG_VERSION"),
            "mode": if once { "once" } else { "serve" },
        }),
    );
    (journal, unclosed)
}

/// The last event of a daemon that stopped cleanly; its absence at the next start is
/// what marks a crash.
pub fn record_stopped(journal: &Journal, reason: &str, started: DateTime<Utc>) {
    journal.record(
        "stopped",
        json!({
            "reason": reason,
            "uptime_ms": (Utc::now() - started).num_milliseconds().max(0),
        }),
    );
    journal.flush();
}

/// Records what a running daemon's sweep requeued or marked dead (a runner that died
/// while the daemon lived: a `loops agent run`, a lease that lapsed), if anything.
pub fn report_swept(journal: &Journal, swept: &crate::jobs::queue::Swept) {
    if swept.requeued.is_empty() && swept.dead.is_empty() {
        return;
    }
    let entries = |v: &[(u64, String)]| {
        v.iter()
            .map(|(id, why)| json!({"id": id, "why": why}))
            .collect::<Vec<_>>()
    };
    journal.record(
        "jobs_swept",
        json!({"requeued": entries(&swept.requeued), "dead": entries(&swept.dead)}),
    );
}

/// Records that the daemons before this one did not stop cleanly, with what their crash
/// left and this start recovered. With no journal from them (an older version), the
/// lock file names the last one, and a report is made only if something was recovered.
pub fn report_unclean(
    journal: &Journal,
    lock: Option<(u32, DateTime<Utc>)>,
    heartbeat: Option<DateTime<Utc>>,
    unclosed: &[Unclosed],
    runs: &[(String, String)],
    handoffs: &[String],
    swept: &crate::jobs::queue::Swept,
) {
    let recovered_anything = !runs.is_empty()
        || !handoffs.is_empty()
        || !swept.requeued.is_empty()
        || !swept.dead.is_empty();
    let mut previous: Vec<serde_json::Value> = unclosed
        .iter()
        .map(|u| {
            let beat = lock
                .filter(|(pid, _)| u64::from(*pid) == u.pid)
                .and(heartbeat);
            json!({"pid": u.pid, "started": u.started, "last_heartbeat": beat})
        })
        .collect();
    if previous.is_empty() {
        if !recovered_anything {
            return;
        }
        if let Some((pid, started)) = lock {
            previous.push(json!({
                "pid": pid,
                "started": started,
                "last_heartbeat": heartbeat,
            }));
        }
    }
    let ids = |v: &[(u64, String)]| v.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    journal.record(
        "unclean_stop",
        json!({
            "previous": previous,
            "recovered": {
                "runs": runs.iter().map(|(l, r)| json!({"loop": l, "run": r})).collect::<Vec<_>>(),
                "handoffs": handoffs,
                "jobs_requeued": ids(&swept.requeued),
                "jobs_dead": ids(&swept.dead),
            },
        }),
    );
    let who = previous
        .iter()
        .map(|p| {
            format!(
                "pid {} (last sign of life {})",
                p["pid"],
                p["last_heartbeat"].as_str().unwrap_or("unknown")
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    tracing::warn!(
        "the previous daemon did not stop cleanly: {who}; recovered {} interrupted run(s), {} handoff(s) back in the inbox, {} job(s) requeued, {} job(s) dead (see .loops/daemon.jsonl)",
        runs.len(),
        handoffs.len(),
        swept.requeued.len(),
        swept.dead.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_daemons_sweep_is_journaled_only_when_it_did_something() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path());
        report_swept(&journal, &crate::jobs::queue::Swept::default());
        let swept = crate::jobs::queue::Swept {
            requeued: vec![(7, "its runner (pid 1) stopped while it ran".into())],
            dead: vec![(9, "stalled 6 times".into())],
            other: Vec::new(),
        };
        report_swept(&journal, &swept);
        let events: Vec<Value> = read(dir.path())
            .into_iter()
            .filter(|e| e["event"] == "jobs_swept")
            .collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["requeued"][0]["id"], 7);
        assert_eq!(events[0]["dead"][0]["id"], 9);
        assert!(events[0]["requeued"][0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("stopped while it ran")));
    }

    #[test]
    fn unclosed_daemons_are_those_never_seen_to_stop() {
        let ev = |event: &str, pid: u64| json!({"at": "2026-01-01T00:00:00Z", "event": event, "pid": pid});
        let mut events = vec![ev("started", 1), ev("stopped", 1), ev("started", 2)];
        assert_eq!(
            unclosed(&events).iter().map(|u| u.pid).collect::<Vec<_>>(),
            vec![2]
        );
        // 3 was killed before it could report 2; both are unclosed.
        events.push(ev("started", 3));
        assert_eq!(
            unclosed(&events).iter().map(|u| u.pid).collect::<Vec<_>>(),
            vec![2, 3]
        );
        events
            .push(json!({"event": "unclean_stop", "pid": 4, "previous": [{"pid": 2}, {"pid": 3}]}));
        assert!(unclosed(&events).is_empty());
    }

    #[test]
    fn events_refused_by_the_disk_are_held_and_written_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A file where the journal's folder should be: every append fails.
        let runtime = dir.path().join("rt");
        std::fs::write(&runtime, "not a folder").expect("write");
        let j = Journal::open(&runtime);
        j.record("started", json!({"n": 1}));
        j.disk_error(
            &runtime.join("runs/x.jsonl"),
            &std::io::Error::from(rustix::io::Errno::ROFS),
        );
        j.record("stopped", json!({"n": 2}));
        assert!(j.has_held());
        assert!(!j.flush());
        std::fs::remove_file(&runtime).expect("rm");
        // Written at once; the outage is declared over after a quiet moment.
        j.flush();
        assert_eq!(read(&runtime).len(), 3);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(j.flush(), "written once the disk takes it");
        let events = read(&runtime);
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
        assert_eq!(kinds, ["started", "disk_error", "stopped", "disk_ok"]);
        assert!(events[3]["refused_writes"].as_u64().unwrap_or(0) >= 2);
    }
}
