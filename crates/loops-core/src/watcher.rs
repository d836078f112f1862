//! The file watcher: a doorbell, never the truth. Events only say "look again"; the
//! daemon rescans the folder that rang. A lost event costs latency, never a run.
//!
//! The debouncer is a task of our own rather than notify-debouncer-full: that one ticks a
//! thread every few milliseconds forever, and an idle daemon must not wake at all.
//!
//! When the system's inotify limits are reached (watches or instances), the watcher does
//! not fail silently: it says so with the sysctl to raise, records it in
//! `.loops/watcher.json` for `loops status`, and falls back to asking for a rescan every
//! [`POLL_EVERY`], so handoffs and new loops are still found, a little later.

use crate::layout::Layout;
use chrono::{DateTime, Utc};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a watcher that lost events for good (a limit was reached) asks for a rescan.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// The log filter directive that keeps notify's own lines out of the log. When a watched
/// folder is deleted (a loop removed) the kernel has already dropped its watch, and notify
/// logs its failed attempt to drop it again at INFO ("unable to remove watch descriptor")
/// and WARN ("Unable to remove the path from the watches"): internal noise about a normal
/// event, which the daemon reports in its own words ("loop removed"). What matters about
/// watching (a limit reached) reaches us as an error from notify and is logged by this
/// module; notify's own errors still show.
pub const QUIET_NOTIFY: &str = "notify=error";

/// `filter` (a `LOOPS_LOG` value, or the default) with [`QUIET_NOTIFY`] added, unless it
/// already says something of notify (someone debugging the watcher asked for it).
pub fn with_quiet_notify(filter: &str) -> String {
    if filter.contains("notify") {
        filter.to_string()
    } else if filter.trim().is_empty() {
        QUIET_NOTIFY.to_string()
    } else {
        format!("{filter},{QUIET_NOTIFY}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: the system's limit of inotify watches (fs.inotify.max_user_watches) is reached")]
    WatchLimit { path: PathBuf },
    #[error("cannot start a file watcher for {path}: the limit of inotify instances (fs.inotify.max_user_instances) or of this process's open files is reached")]
    InstanceLimit { path: PathBuf },
    #[error("cannot watch {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

impl WatchError {
    /// The fix.
    pub fn help(&self) -> Option<String> {
        match self {
            WatchError::WatchLimit { .. } => Some(
                "raise it with `sudo sysctl fs.inotify.max_user_watches=524288`, and keep it with the line `fs.inotify.max_user_watches=524288` in /etc/sysctl.d/90-loops.conf; then restart loops".into(),
            ),
            WatchError::InstanceLimit { .. } => Some(
                "raise it with `sudo sysctl fs.inotify.max_user_instances=1024`, and keep it with the line `fs.inotify.max_user_instances=1024` in /etc/sysctl.d/90-loops.conf (or raise `ulimit -n` where loops starts); then restart loops".into(),
            ),
            WatchError::Notify { .. } => None,
        }
    }

    /// The sysctl whose limit was reached, if it was one.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            WatchError::WatchLimit { .. } => Some("fs.inotify.max_user_watches"),
            WatchError::InstanceLimit { .. } => Some("fs.inotify.max_user_instances"),
            WatchError::Notify { .. } => None,
        }
    }

    /// The folder that could not be watched.
    pub fn path(&self) -> &Path {
        match self {
            WatchError::WatchLimit { path }
            | WatchError::InstanceLimit { path }
            | WatchError::Notify { path, .. } => path,
        }
    }

    /// The message, its fix and what loops does meanwhile: for the daemon's log.
    pub fn explained(&self) -> String {
        let meanwhile = format!(
            "until then loops rescans every {} instead of hearing of changes at once",
            crate::duration::format_duration(POLL_EVERY)
        );
        match self.help() {
            Some(h) => format!("{self}; {h}; {meanwhile}"),
            None => format!("{self}; {meanwhile}"),
        }
    }
}

/// How much of a folder to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The folder's own entries.
    Flat,
    /// The folder and each folder directly in it, kept up to date as folders come and go:
    /// `domains/` and `domains/<loop>/`, which is all discovery reads, without a watch
    /// (out of a limited number per user) for every folder a loop keeps its data in.
    Children,
    /// Everything below it.
    Recursive,
}

impl From<RecursiveMode> for Mode {
    fn from(m: RecursiveMode) -> Mode {
        match m {
            RecursiveMode::Recursive => Mode::Recursive,
            RecursiveMode::NonRecursive => Mode::Flat,
        }
    }
}

/// Paths that changed (deduplicated), as one batch. An empty path means "events may have
/// been lost: rescan everything".
pub type Batch = Vec<PathBuf>;

/// Keeps the watcher alive; dropping it stops watching.
pub struct Watcher {
    _watcher: Arc<Mutex<RecommendedWatcher>>,
    debouncer: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.debouncer.abort();
    }
}

/// What the notify thread tells the debouncer.
enum Raw {
    Paths(Vec<PathBuf>),
    /// Events will be missed from now on (a limit was reached): poll.
    Degraded(WatchError),
}

/// Watches `dirs` and sends batches of changed paths: the first event opens a batch,
/// everything within `debounce` after it joins, then the batch is sent. Must be called
/// inside a tokio runtime.
pub fn watch<M: Into<Mode> + Copy>(
    dirs: &[(PathBuf, M)],
    debounce: Duration,
    tx: mpsc::UnboundedSender<Batch>,
) -> Result<Watcher, WatchError> {
    watch_and_report(dirs, debounce, tx, None)
}

/// [`watch`], recording every limit it runs into in `report` (`.loops/watcher.json`),
/// where `loops status` shows it.
pub fn watch_and_report<M: Into<Mode> + Copy>(
    dirs: &[(PathBuf, M)],
    debounce: Duration,
    tx: mpsc::UnboundedSender<Batch>,
    report: Option<PathBuf>,
) -> Result<Watcher, WatchError> {
    let first = dirs.first().map(|(d, _)| d.clone()).unwrap_or_default();
    let failed = |e: WatchError| {
        if let Some(r) = &report {
            if !matches!(e, WatchError::Notify { .. }) {
                note_problem(r, &e);
            }
        }
        e
    };
    let (raw_tx, raw_rx) = mpsc::unbounded_channel::<Raw>();
    let cb_tx = raw_tx.clone();
    let watcher = notify::recommended_watcher(move |res| forward(&cb_tx, res))
        .map_err(|source| failed(classify(&first, source, true)))?;
    let watcher = Arc::new(Mutex::new(watcher));
    let mut children = Children::default();
    for (d, mode) in dirs {
        let _ = crate::fsutil::create_dir_all(d);
        let mode: Mode = (*mode).into();
        let nmode = match mode {
            Mode::Recursive => RecursiveMode::Recursive,
            _ => RecursiveMode::NonRecursive,
        };
        lock(&watcher)
            .watch(d, nmode)
            .map_err(|source| failed(classify(d, source, false)))?;
        if mode == Mode::Children {
            children.roots.push(d.clone());
            for sub in subfolders(d) {
                // Watching what is already there is part of starting: a limit reached
                // here means the daemon starts without this watcher, and polls.
                children
                    .add(&watcher, &sub)
                    .map_err(|source| failed(classify(&sub, source, false)))?;
            }
        }
    }
    let debouncer = tokio::spawn(
        Debouncer {
            raw_rx,
            watcher: watcher.clone(),
            children,
            debounce,
            report,
        }
        .run(tx),
    );
    drop(raw_tx);
    Ok(Watcher {
        _watcher: watcher,
        debouncer,
    })
}

/// Passes one of notify's events (or errors) on to the debouncer.
fn forward(tx: &mpsc::UnboundedSender<Raw>, res: notify::Result<notify::Event>) {
    match res {
        // A full queue (IN_Q_OVERFLOW): events were dropped, so look at everything.
        Ok(ev) if ev.need_rescan() => {
            let _ = tx.send(Raw::Paths(vec![PathBuf::new()]));
        }
        // Reading a file is not a change; the daemon's own reads of the files it
        // watches would otherwise wake it forever.
        Ok(ev) if ev.kind.is_access() => {}
        Ok(ev) => {
            let _ = tx.send(Raw::Paths(ev.paths));
        }
        // A folder created under a recursive watch could not be watched: from now on
        // changes there go unseen.
        Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
            let path = e.paths.first().cloned().unwrap_or_default();
            let _ = tx.send(Raw::Degraded(WatchError::WatchLimit { path }));
        }
        Err(e) => {
            tracing::warn!("file watcher: {e}");
            // An overflow or error means events may be lost: ask for a full rescan.
            let _ = tx.send(Raw::Paths(vec![PathBuf::new()]));
        }
    }
}

/// Turns the notify thread's events into batches: the task behind a [`Watcher`].
struct Debouncer {
    raw_rx: mpsc::UnboundedReceiver<Raw>,
    watcher: Arc<Mutex<RecommendedWatcher>>,
    children: Children,
    debounce: Duration,
    report: Option<PathBuf>,
}

impl Debouncer {
    /// Sends a batch for each burst of events until the notify side or `tx` is gone;
    /// once events may be missed, a full rescan every [`POLL_EVERY`] as well.
    async fn run(mut self, tx: mpsc::UnboundedSender<Batch>) {
        let mut degraded = false;
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                m = self.raw_rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
                _ = poll.tick(), if degraded => Raw::Paths(vec![PathBuf::new()]),
            };
            let (mut batch, mut problem) = self.gather(first).await;
            // New loop folders are watched before the batch goes out, so the rescan it
            // causes cannot miss a config.yaml written just after the folder appeared.
            if let Err(source) = self.children.follow(&self.watcher, &batch) {
                let path = source.paths.first().cloned().unwrap_or_default();
                problem = Some(classify(&path, source, false));
            }
            if let Some(e) = problem {
                if !degraded {
                    degraded = true;
                    tracing::error!("{}", e.explained());
                    if let Some(r) = &self.report {
                        note_problem(r, &e);
                    }
                    poll.reset();
                }
                batch.push(PathBuf::new());
            }
            if tx.send(batch).is_err() {
                return;
            }
        }
    }

    /// The paths of `first` and of what follows it within the debounce window, sorted
    /// and each once, and the last limit reported meanwhile.
    async fn gather(&mut self, first: Raw) -> (Vec<PathBuf>, Option<WatchError>) {
        let mut batch = Vec::new();
        let mut problem = None;
        let mut take = |m: Raw, batch: &mut Vec<PathBuf>| match m {
            Raw::Paths(p) => batch.extend(p),
            Raw::Degraded(e) => problem = Some(e),
        };
        take(first, &mut batch);
        // Sleep through the window, then take what came: waking for each event of a
        // storm (a run writing 100,000 files) cost the daemon seconds of CPU.
        // A bounded drain: a storm that never pauses still yields batches.
        tokio::time::sleep(self.debounce).await;
        for _ in 0..65_536 {
            match self.raw_rx.try_recv() {
                Ok(m) => take(m, &mut batch),
                Err(_) => break,
            }
        }
        batch.sort();
        batch.dedup();
        (batch, problem)
    }
}

fn lock(w: &Mutex<RecommendedWatcher>) -> std::sync::MutexGuard<'_, RecommendedWatcher> {
    // A panic while holding it cannot leave the watcher half-changed in a way that
    // matters: watching again is idempotent.
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// The folders directly in `dir`.
fn subfolders(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The folders watched under [`Mode::Children`] roots.
#[derive(Default)]
struct Children {
    roots: Vec<PathBuf>,
    watched: HashSet<PathBuf>,
}

impl Children {
    fn add(&mut self, w: &Mutex<RecommendedWatcher>, dir: &Path) -> notify::Result<()> {
        if self.watched.contains(dir) {
            return Ok(());
        }
        lock(w).watch(dir, RecursiveMode::NonRecursive)?;
        self.watched.insert(dir.to_path_buf());
        Ok(())
    }

    /// Watches folders that appeared directly in a root, forgets those that went.
    /// Forgetting first: a renamed folder keeps its watch under its new name.
    fn follow(&mut self, w: &Mutex<RecommendedWatcher>, batch: &[PathBuf]) -> notify::Result<()> {
        if self.roots.is_empty() {
            return Ok(());
        }
        let direct: Vec<&PathBuf> = batch
            .iter()
            .filter(|p| {
                p.parent()
                    .is_some_and(|d| self.roots.iter().any(|r| r == d))
            })
            .collect();
        for p in &direct {
            if self.watched.contains(*p) && !p.is_dir() {
                self.watched.remove(*p);
                let _ = lock(w).unwatch(p);
            }
        }
        for p in direct {
            if p.is_dir() {
                self.add(w, p)?;
            }
        }
        Ok(())
    }
}

fn classify(path: &Path, source: notify::Error, starting: bool) -> WatchError {
    let os = match &source.kind {
        notify::ErrorKind::Io(e) => e.raw_os_error(),
        _ => None,
    };
    let path = path.to_path_buf();
    use rustix::io::Errno;
    let is = |e: Errno| os == Some(e.raw_os_error());
    if matches!(&source.kind, notify::ErrorKind::MaxFilesWatch) || is(Errno::NOSPC) {
        WatchError::WatchLimit { path }
    } else if starting && (is(Errno::MFILE) || is(Errno::NFILE)) {
        WatchError::InstanceLimit { path }
    } else {
        WatchError::Notify { path, source }
    }
}

/// `.loops/watcher.json`: the limits the running daemon's watchers ran into.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchReport {
    pub pid: u32,
    #[serde(default)]
    pub pid_start: Option<u64>,
    pub problems: Vec<WatchProblem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchProblem {
    pub since: DateTime<Utc>,
    /// The folder it could not watch.
    #[serde(default)]
    pub path: PathBuf,
    /// The sysctl to raise (`fs.inotify.max_user_watches` or `…_instances`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// How often the folders it could not watch are rescanned instead.
    pub polling_every_ms: u64,
}

/// One process writes the report at a time (its watchers run on several threads).
static REPORT_LOCK: Mutex<()> = Mutex::new(());

fn note_problem(path: &Path, e: &WatchError) {
    let _turn = REPORT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    // A report left by an earlier daemon is replaced, not added to.
    let mut r = read_report_file(path)
        .filter(|r| r.pid == pid)
        .unwrap_or(WatchReport {
            pid,
            pid_start: crate::fsutil::process_start_time(pid),
            problems: Vec::new(),
        });
    r.problems.push(WatchProblem {
        since: Utc::now(),
        path: e.path().to_path_buf(),
        limit: e.limit().map(str::to_string),
        error: e.to_string(),
        help: e.help(),
        polling_every_ms: POLL_EVERY.as_millis() as u64,
    });
    let text = serde_json::to_string_pretty(&r).unwrap_or_default();
    if let Err(err) = crate::fsutil::atomic_write(path, text.as_bytes()) {
        tracing::warn!("{}: {err}", path.display());
    }
}

fn read_report_file(path: &Path) -> Option<WatchReport> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The problems of the daemon with this pid (`loops status`); an older daemon's are not
/// this one's.
pub fn read_report(layout: &Layout, daemon_pid: u32) -> Option<WatchReport> {
    read_report_file(&layout.watcher_report()).filter(|r| r.pid == daemon_pid)
}
