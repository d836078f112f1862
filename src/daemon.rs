//! The daemon: `loops run`. It owns the workspace (one daemon per workspace, by lock),
//! keeps the scheduler fed from disk, starts runs within the concurrency limits, reloads
//! loops when their files change, and shuts down without losing a run.

use crate::engine::loop_run;
use crate::engine::run_context::{RunContext, RunRequest, Trigger};
use crate::engine::scheduler::{
    apply_finish, claim_with, schedulable, Aftermath, Claim, DueRun, Scheduler,
};
use chrono::{DateTime, Utc};
use loops_core::clock::Clock;
use loops_core::daemon_lock::{DaemonLock, DaemonLockError, HEARTBEAT};
use loops_core::domain::{discover, Concurrency, DomainEntry, LoopDef};
use loops_core::runs::{Outcome, RunRecord};
use loops_core::workspace::Workspace;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] DaemonLockError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Refused at start, before anything is committed: see [`loops_core::workspace::SymlinkedArea`].
    #[error("{0}")]
    SymlinkedArea(#[from] loops_core::workspace::SymlinkedArea),
}

impl DaemonError {
    pub fn help(&self) -> Option<String> {
        match self {
            DaemonError::Lock(e) => e.help(),
            DaemonError::Io { .. } => None,
            DaemonError::SymlinkedArea(l) => Some(l.help()),
        }
    }
}

/// The async runtime the daemon and the CLI run on: two workers (the work is waiting,
/// not computing) and a small blocking pool, because every thread makes each fork of a
/// command dearer.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
}

/// How long before its fire time a slot is claimed (its watermark written), so that at
/// the fire time only the start of the run is left.
const CLAIM_LEAD: Duration = Duration::from_millis(200);
/// Why a run the runner never started, because it was stopping, was skipped.
const STOPPING: &str = "the runner was stopping";

fn chrono_ms(d: Duration) -> chrono::Duration {
    chrono::Duration::milliseconds(d.as_millis() as i64)
}

/// How soon a pending handoff still open for writing is looked at again.
const STILL_WRITTEN_RETRY: Duration = Duration::from_millis(100);

/// How `loops run` behaves.
#[derive(Clone)]
pub struct DaemonOptions {
    /// Run what is due now (and with `all`, every loop once), wait, and exit.
    pub once: bool,
    pub all: bool,
    pub clock: Arc<dyn Clock>,
    /// Stop when this flips to true (tests; signals are handled too).
    pub stop: Option<watch::Receiver<bool>>,
    /// With `once`: told as runs end, and every [`PROGRESS_EVERY`] while they go on.
    pub progress: Option<ProgressFn>,
}

/// Receives a `--once` pass's [`Progress`].
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How often a `--once` pass says what is still running when nothing has ended.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Where a `--once` pass is, for a progress display.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A run ended: the `done`th of `total` (which grows if a retry is queued).
    Finished {
        done: usize,
        total: usize,
        record: Box<RunRecord>,
        running: Vec<(String, Duration)>,
    },
    /// Nothing ended for a while: what is running, and for how long.
    Waiting {
        done: usize,
        total: usize,
        running: Vec<(String, Duration)>,
        queued: usize,
    },
}

/// What a `--once` pass did, for its summary.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub runs: Vec<RunRecord>,
    pub waiting_for_provider: Vec<String>,
    pub broken: Vec<String>,
    pub disabled: Vec<String>,
}

impl Summary {
    pub fn failed(&self) -> bool {
        self.runs.iter().any(|r| r.outcome.is_failure())
    }
}

struct Finished {
    def: LoopDef,
    rec: RunRecord,
    after: Aftermath,
}

struct RunningRun {
    run_id: String,
    cancel: watch::Sender<bool>,
    started: std::time::Instant,
    /// Set once the run has its permit (is running, not queued behind the limit).
    begun: Arc<std::sync::atomic::AtomicBool>,
}

struct Daemon {
    ws: Arc<Workspace>,
    ctx: RunContext,
    sched: Scheduler,
    entries: BTreeMap<String, DomainEntry>,
    running: HashMap<String, Vec<RunningRun>>,
    pending: Vec<DueRun>,
    permits: Arc<Semaphore>,
    /// Flips to true when the runner stops: runs still waiting for a permit are then
    /// recorded as not run at once instead of starting only to be stopped.
    stopping: watch::Sender<bool>,
    done_tx: mpsc::UnboundedSender<Finished>,
    summary: Summary,
    /// Only `--once` reports a summary; a long-running daemon must not keep every record.
    keep_summary: bool,
    /// A progress display shows each run's end: the log need not say it too.
    quiet_finish: bool,
    in_flight: usize,
    /// The main session's wakes: one at a time, coalesced, flood-guarded.
    wakes: Wakes,
    /// Commits of inbox moves made in the background, awaited at a clean stop so that a
    /// stopped daemon leaves the history level with the inbox.
    commits: tokio::task::JoinSet<()>,
    /// The settings in force, for the job worker: a good edit of loops.yaml is sent here.
    live: watch::Sender<Arc<Workspace>>,
    /// Where the watchers send what changed (the inbox's is re-armed as the folder comes
    /// and goes, and started or stopped as `main:` is).
    watch_tx: mpsc::UnboundedSender<loops_core::watch::Batch>,
    inbox_watcher: Option<loops_core::watch::Watcher>,
    /// Set when a watcher could not start: everything is rescanned this often instead.
    fallback_rescan: Option<Duration>,
    once: bool,
    /// What `.loops/settings.json` says about loops.yaml (see [`SettingsReport`]).
    settings_report: loops_core::workspace::SettingsReport,
    /// The settings the daemon started with (what only a restart changes), and the text of
    /// loops.yaml last applied (an event that changed nothing is not a reload).
    started_settings: loops_core::workspace::Settings,
    applied_text: Option<Vec<u8>>,
}

impl Wakes {
    /// The main session's timers after a clock stepped back: a heartbeat or a retry further
    /// ahead than it can ever be set would wait until the clock caught up (days, after a
    /// step of days), so it is planned from now again.
    fn reanchor(&mut self, now: DateTime<Utc>) {
        let tol = chrono_ms(crate::engine::scheduler::CLOCK_STEP_TOLERANCE);
        if let Some(h) = self.main.as_ref().and_then(|m| m.heartbeat).map(chrono_ms) {
            let t = self.next_heartbeat;
            self.next_heartbeat = reanchored(t, now, h + tol, now + h);
            if self.next_heartbeat != t {
                tracing::warn!(
                    "the clock was stepped back: the main session's next heartbeat was further ahead than its interval; planned from now"
                );
            }
        }
        // Retries wait a settle time or a back-off of seconds; an hour is beyond any.
        let longest = chrono::Duration::hours(1) + tol;
        self.retry_at = reanchored(self.retry_at, now, longest, now);
        self.backoff_until = reanchored(self.backoff_until, now, longest, now);
    }
}

/// `t`, or `instead` when `t` is more than `longest` ahead of `now`.
fn reanchored(
    t: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    longest: chrono::Duration,
    instead: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    t.map(|t| if t > now + longest { instead } else { t })
}

/// State of the main session's wakes.
struct Wakes {
    main: Option<loops_core::workspace::MainSettings>,
    inbox: loops_core::handoff::Inbox,
    notes: crate::engine::main_session::InboxState,
    running: Option<watch::Sender<bool>>,
    /// Something arrived (or a heartbeat fell) while a wake was running, or the flood
    /// guard held a wake back: wake again as soon as allowed.
    wanted: bool,
    wanted_kind: crate::engine::run_context::WakeKind,
    /// Start times of recent wakes, for the flood guard.
    recent: std::collections::VecDeque<DateTime<Utc>>,
    /// A held-back wake (flood guard) or a recheck of unsettled files.
    retry_at: Option<DateTime<Utc>>,
    next_heartbeat: Option<DateTime<Utc>>,
    /// After a failed wake, no wake before this time: the inbox events its own release
    /// of the handoffs causes must not retry a failing main session at once.
    backoff_until: Option<DateTime<Utc>>,
    done_tx: mpsc::UnboundedSender<crate::engine::main_session::WakeResult>,
    /// Names of handoffs addressed elsewhere than main, already reported once.
    not_for_main: std::collections::HashSet<PathBuf>,
    /// Completions the disk refused, tried again until it accepts them.
    uncompleted: Vec<crate::engine::main_session::Uncompleted>,
    /// Pending handoffs already said to wait for want of a `main:` session.
    unreceived: std::collections::HashSet<String>,
}

/// Runs the daemon until a signal (or, with `once`, until the due work is done).
/// Says once, in the log and the journal, that `.loops/` was made owner-only.
fn report_tightened(journal: &loops_core::journal::Journal, tightened: std::io::Result<usize>) {
    match tightened {
        Ok(0) => {}
        Ok(n) => {
            tracing::warn!("made {n} file(s) and folder(s) in .loops/ readable by their owner only (an older loops left them readable by others)");
            journal.record("runtime_tightened", serde_json::json!({ "changed": n }));
        }
        Err(e) => tracing::warn!(
            "cannot make .loops/ owner-only: {e}; run `chmod -R go-rwx .loops` in the workspace"
        ),
    }
}

pub async fn run(ws: Workspace, opts: DaemonOptions) -> Result<Summary, DaemonError> {
    // Before the first commit could record a linked folder's removal.
    if let Some(l) = ws.symlinked_areas().into_iter().next() {
        return Err(l.into());
    }
    let lock = DaemonLock::acquire(&ws, crate::engine::worker::shell_allowed(&ws))?;
    // Before anything is written: an older loops made .loops/ readable by others.
    let tightened = loops_core::fsutil::tighten(&ws.runtime_dir());
    // Signals are caught from the first moment: a SIGTERM during start-up (recovery can
    // take a while) must stop the daemon cleanly, not kill it mid-write.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|source| DaemonError::Io {
            path: PathBuf::from("signal"),
            source,
        })?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| DaemonError::Io {
            path: PathBuf::from("signal"),
            source,
        })?;
    // Daemons the journal saw start and never saw stop were killed (or crashed): they
    // are reported below, with what their crash left behind.
    let (journal, unclosed) = loops_core::journal::record_started(&ws.runtime_dir(), opts.once);
    let started_at = Utc::now();
    report_tightened(&journal, tightened);
    let ws = Arc::new(ws);
    for d in &ws.diagnostics {
        tracing::warn!("{d}");
    }
    let ctx = RunContext::new(ws.clone());
    let sched = Scheduler::new(
        opts.clock.clone(),
        ctx.store.clone(),
        ctx.runlog.clone(),
        ws.settings.catch_up_stagger,
        ws.settings.pause_after_failures,
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (wake_tx, mut wake_rx) =
        mpsc::unbounded_channel::<crate::engine::main_session::WakeResult>();
    let main = ws.settings.main.clone();
    let wakes = Wakes {
        next_heartbeat: main
            .as_ref()
            .and_then(|m| m.heartbeat)
            .map(|h| opts.clock.now() + chrono_ms(h)),
        main,
        inbox: loops_core::handoff::Inbox::of(&ws),
        notes: crate::engine::main_session::InboxState::new(&ws.runtime_dir()),
        running: None,
        wanted: false,
        wanted_kind: crate::engine::run_context::WakeKind::Handoffs,
        recent: std::collections::VecDeque::new(),
        retry_at: None,
        backoff_until: None,
        done_tx: wake_tx,
        not_for_main: std::collections::HashSet::new(),
        uncompleted: Vec::new(),
        unreceived: std::collections::HashSet::new(),
    };
    let (claim_tx, mut claim_rx) =
        mpsc::unbounded_channel::<(String, Option<Claim>, DateTime<Utc>)>();
    let mut claiming = 0usize;
    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel();
    let (live, live_rx) = watch::channel(ws.clone());
    let mut d = Daemon {
        permits: Arc::new(Semaphore::new(ws.settings.max_concurrent_jobs)),
        stopping: watch::channel(false).0,
        ws: ws.clone(),
        ctx,
        sched,
        entries: BTreeMap::new(),
        running: HashMap::new(),
        pending: Vec::new(),
        done_tx,
        summary: Summary::default(),
        keep_summary: opts.once,
        quiet_finish: opts.once && opts.progress.is_some(),
        in_flight: 0,
        wakes,
        commits: tokio::task::JoinSet::new(),
        live,
        watch_tx,
        inbox_watcher: None,
        fallback_rescan: None,
        once: opts.once,
        settings_report: loops_core::workspace::SettingsReport {
            pid: std::process::id(),
            applied_at: Some(Utc::now()),
            ..Default::default()
        },
        started_settings: ws.settings.clone(),
        applied_text: std::fs::read(ws.root.join("loops.yaml")).ok(),
    };
    let interrupted = d.recover_interrupted();
    let requeued_handoffs = d.recover_inbox();
    // The recovery commits are made before any claim moves a file again, so each records
    // what a dead runner left, and a claim's own commit records the claim.
    let settle = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(_)) = tokio::time::timeout_at(settle, d.commits.join_next()).await {}
    // Jobs whose runner died are requeued here rather than by the worker's first sweep,
    // so the journal can name them with the rest of what the crash left.
    let swept = {
        let store = loops_core::jobs::store::JobStore::new(&ws);
        let now = opts.clock.now();
        tokio::task::spawn_blocking(move || loops_core::jobs::queue::sweep(&store, now))
            .await
            .ok()
            .and_then(|r| r.map_err(|e| tracing::error!("job sweep: {e}")).ok())
            .unwrap_or_default()
    };
    for (id, why) in &swept.requeued {
        tracing::warn!(job = id, "requeued: {why}");
    }
    for (id, why) in &swept.dead {
        tracing::error!(job = id, "dead: {why}");
    }
    loops_core::journal::report_unclean(
        &journal,
        lock.previous.as_ref().map(|p| (p.pid, p.started)),
        lock.previous_heartbeat,
        &unclosed,
        &interrupted,
        &requeued_handoffs,
        &swept,
    );
    for (_, run_id) in &interrupted {
        d.ctx.running.remove(run_id);
    }
    d.reload(true);

    // The job queue has a worker of its own; it shares the concurrency limit.
    let (job_stop_tx, job_stop_rx) = watch::channel(false);
    let job_worker = tokio::spawn(crate::engine::worker::run(
        crate::engine::worker::WorkerConfig {
            ws: ws.clone(),
            committer: d.ctx.committer.clone(),
            clock: opts.clock.clone(),
            permits: d.permits.clone(),
            allow_shell: crate::engine::worker::shell_allowed(&ws),
            grace: ws.settings.shutdown_grace,
            live: Some(live_rx),
        },
        if opts.once {
            crate::engine::worker::Mode::Drain
        } else {
            crate::engine::worker::Mode::Serve
        },
        job_stop_rx,
        None,
    ));

    let _watcher = if opts.once {
        None
    } else {
        // Clear nudges left from before: the start reads every loop's state anyway.
        let _ = std::fs::remove_dir_all(ws.signals_dir());
        // The root itself, flat: loops.yaml edits, and inbox/ removed or made again.
        start_watcher(
            &ws,
            &[
                (ws.root.clone(), loops_core::watch::Mode::Flat),
                (ws.domains_dir(), loops_core::watch::Mode::Children),
                (ws.signals_dir(), loops_core::watch::Mode::Flat),
            ],
            Duration::from_millis(100),
            &d.watch_tx,
            &mut d.fallback_rescan,
        )
    };
    d.arm_inbox_watcher();
    d.settings_report.write(&ws);
    if !opts.once {
        // An edit between the first read of loops.yaml and the watch on it.
        d.reload_settings();
    }

    if opts.once {
        let now = d.sched.now();
        let mut due = d.sched.due();
        if opts.all {
            let have: Vec<String> = due.iter().map(|r| r.loop_name.clone()).collect();
            let names: Vec<String> = d.sched.loop_names().map(str::to_string).collect();
            for name in names {
                if have.contains(&name) {
                    continue;
                }
                let Some(def) = d.sched.def(&name) else {
                    continue;
                };
                if schedulable(def, d.ws.settings.has_providers) {
                    due.push(DueRun {
                        run_id: loops_core::runs::new_run_id(),
                        loop_name: name,
                        trigger: Trigger::Once,
                        slot: None,
                        attempt: 1,
                        not_before: now,
                    });
                }
            }
        }
        d.queue(due);
        // Handoffs waiting in the inbox get one pass of the main session too.
        d.try_wake(
            opts.clock.now(),
            crate::engine::run_context::WakeKind::Handoffs,
        );
        let mut done = 0usize;
        let mut last_said = std::time::Instant::now();
        loop {
            d.dispatch_ready(opts.clock.now());
            if d.in_flight == 0 && d.pending.is_empty() && d.wakes.running.is_none() {
                break;
            }
            let mut wait = d
                .pending
                .iter()
                .map(|p| p.not_before)
                .min()
                .map(|t| (t - opts.clock.now()).to_std().unwrap_or_default())
                .unwrap_or(Duration::from_secs(3600));
            if let Some(say) = &opts.progress {
                if last_said.elapsed() >= PROGRESS_EVERY && d.in_flight > 0 {
                    say(&Progress::Waiting {
                        done,
                        total: done + d.in_flight + d.pending.len(),
                        running: d.running_for(),
                        queued: d.pending.len(),
                    });
                    last_said = std::time::Instant::now();
                }
                wait = wait.min(PROGRESS_EVERY.saturating_sub(last_said.elapsed()));
            }
            let signalled = tokio::select! {
                Some(f) = done_rx.recv() => {
                    let record = Box::new(f.rec.clone());
                    d.on_finished(f);
                    done += 1;
                    if let Some(say) = &opts.progress {
                        say(&Progress::Finished {
                            done,
                            total: done + d.in_flight + d.pending.len(),
                            record,
                            running: d.running_for(),
                        });
                        last_said = std::time::Instant::now();
                    }
                    false
                }
                Some(w) = wake_rx.recv() => { d.on_wake_done(w, false); false }
                _ = tokio::time::sleep(wait) => false,
                _ = sigint.recv() => true,
                _ = sigterm.recv() => true,
            };
            if signalled {
                // Runs are in their own process groups: a signal to us does not reach
                // them, so stop them here rather than leave them running orphaned.
                tracing::warn!(running = d.in_flight, "signal: stopping running jobs");
                let _ = job_stop_tx.send(true);
                // What has not started is recorded as not run, not started to be stopped.
                for due in std::mem::take(&mut d.pending) {
                    if let Some(def) = d.sched.def(&due.loop_name).cloned() {
                        d.record_skip(&def, &due, STOPPING);
                    }
                }
                let _ = d.stopping.send(true);
                for runs in d.running.values() {
                    for r in runs {
                        let _ = r.cancel.send(true);
                    }
                }
            }
        }
        // Queued jobs that were ready are drained too.
        let mut job_worker = job_worker;
        let finished = tokio::select! {
            _ = &mut job_worker => true,
            _ = sigint.recv() => false,
            _ = sigterm.recv() => false,
        };
        if !finished {
            let _ = job_stop_tx.send(true);
            let _ = job_worker.await;
        }
        loops_agent::mcp_client::McpPool::shutdown_all().await;
        d.flush_held(&journal);
        loops_core::journal::record_stopped(&journal, "once: done", started_at);
        drop(lock);
        return Ok(d.summary);
    }

    tracing::info!(
        workspace = %ws.root.display(),
        loops = d.sched.loop_names().count(),
        "loops daemon started"
    );
    // Records, transcripts and finished jobs are pruned at start and hourly (loops.yaml
    // `records:`), so months of running do not fill the disk.
    let pruner = loops_core::retention::spawn(ws.clone());
    let mut stop = opts.stop.clone();
    let stopped = async move {
        match stop.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|v| *v).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(stopped);
    // The start-up scan: handoffs written while the daemon was down are processed now.
    d.try_wake(
        opts.clock.now(),
        crate::engine::run_context::WakeKind::Handoffs,
    );

    let mut next_touch = tokio::time::Instant::now() + HEARTBEAT;
    let reason;
    loop {
        // Runs that ended are accounted first, so a loop whose run just finished is not
        // seen as busy (and its next slot wrongly skipped).
        while let Ok(f) = done_rx.try_recv() {
            d.on_finished(f);
        }
        if tokio::time::Instant::now() >= next_touch {
            next_touch = tokio::time::Instant::now() + HEARTBEAT;
            lock.touch();
        }
        // Records a refusing disk kept back are written as soon as it takes them.
        let held = !d.flush_held(&journal);
        let now = opts.clock.now();
        // A slot is claimed (its watermark written) a moment before it fires, so that at
        // the fire time starting the run is all that is left to do. The claims go in
        // parallel on the blocking pool: a hundred loops due in the same second must not
        // wait in line behind each other's writes.
        let batch = d.sched.take_due_by(now + chrono_ms(CLAIM_LEAD));
        let batch_len = batch.len();
        for (def, due_at, fresh) in batch {
            let store = d.ctx.store.clone();
            let tx = claim_tx.clone();
            claiming += 1;
            let at = due_at.max(now);
            tokio::task::spawn_blocking(move || {
                let c = claim_with(&store, &def, at, false, fresh.as_ref());
                let _ = tx.send((def.name, c, at));
            });
        }
        if batch_len > 0 {
            // One flush for the whole batch of claims, off the runs' critical path.
            let dir = d.ctx.store.dir().to_path_buf();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = loops_core::fsutil::sync_filesystem(&dir) {
                    tracing::warn!("cannot flush loop state to disk: {e}");
                }
            });
        }
        d.dispatch_ready(now);
        if d.wakes.retry_at.is_some_and(|t| t <= now) {
            d.wakes.retry_at = None;
            let kind = d.wakes.wanted_kind;
            d.try_wake(now, kind);
        }
        d.wakes.reanchor(now);
        if d.wakes.next_heartbeat.is_some_and(|t| t <= now) {
            let every = d.wakes.main.as_ref().and_then(|m| m.heartbeat);
            d.wakes.next_heartbeat = every.map(|h| now + chrono_ms(h));
            // A daemon up for months still sweeps what crashed writers left in .tmp/.
            d.wakes.inbox.clean_tmp(std::time::SystemTime::now());
            d.try_wake(now, crate::engine::run_context::WakeKind::Heartbeat);
        }
        let next = [
            d.sched.next_wake().map(|t| t - chrono_ms(CLAIM_LEAD)),
            d.pending.iter().map(|p| p.not_before).min(),
            d.wakes.retry_at,
            d.wakes.next_heartbeat,
        ]
        .into_iter()
        .flatten()
        .min();
        let mut wait = next
            .map(|t| (t - opts.clock.now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(24 * 3600));
        if let Some(f) = d.fallback_rescan {
            wait = wait.min(f);
        }
        wait = wait.min(next_touch.saturating_duration_since(tokio::time::Instant::now()));
        if held {
            wait = wait.min(Duration::from_secs(1));
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                if d.fallback_rescan.is_some() {
                    // No watcher: look at everything it would have told us about.
                    d.on_paths_changed(&[PathBuf::new()]);
                }
            }
            Some(batch) = watch_rx.recv() => {
                let mut batch = batch;
                while let Ok(more) = watch_rx.try_recv() { batch.extend(more); }
                d.on_paths_changed(&batch);
            }
            Some(f) = done_rx.recv() => d.on_finished(f),
            Some(w) = wake_rx.recv() => d.on_wake_done(w, true),
            Some((name, c, at)) = claim_rx.recv() => {
                claiming -= 1;
                let runs = d.sched.accept(&name, c, at);
                d.queue(runs);
            }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); reason = "SIGINT"; break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); reason = "SIGTERM"; break; }
            _ = &mut stopped => { tracing::info!("stop requested"); reason = "stop requested"; break; }
        }
    }

    pruner.abort();
    // Shutdown: no new runs; running ones get the grace period, then are stopped.
    // Slots claimed a moment ago are recorded, not silently dropped. Running jobs get
    // the same grace from their worker, then go back to waiting.
    let _ = job_stop_tx.send(true);
    while claiming > 0 {
        let Some((name, c, at)) = claim_rx.recv().await else {
            break;
        };
        claiming -= 1;
        let runs = d.sched.accept(&name, c, at);
        d.queue(runs);
    }
    // One grace for everything that started (runs, the main session), counted from
    // now; what has not started is recorded at once and gets none: a hundred runs queued
    // behind the concurrency limit must not each start, only to be stopped.
    let grace = ws.settings.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let mut not_started = 0usize;
    for due in std::mem::take(&mut d.pending) {
        if let Some(def) = d.sched.def(&due.loop_name).cloned() {
            d.record_skip(&def, &due, STOPPING);
            not_started += 1;
        }
    }
    let _ = d.stopping.send(true);
    if d.in_flight > 0 {
        let started = d
            .running
            .values()
            .flatten()
            .filter(|r| r.begun.load(std::sync::atomic::Ordering::SeqCst))
            .count();
        tracing::info!(
            running = started,
            "waiting up to {} for running jobs",
            loops_core::duration::format_duration(grace)
        );
        while d.in_flight > 0 {
            tokio::select! {
                Some(f) = done_rx.recv() => {
                    if f.rec.outcome == Outcome::Skipped && f.rec.note.as_deref() == Some(STOPPING) {
                        not_started += 1;
                    }
                    d.on_finished(f)
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if d.in_flight > 0 {
            tracing::warn!(
                running = d.in_flight,
                "grace period over: stopping running jobs"
            );
            for runs in d.running.values() {
                for r in runs {
                    let _ = r.cancel.send(true);
                }
            }
            while d.in_flight > 0 {
                match done_rx.recv().await {
                    Some(f) => d.on_finished(f),
                    None => break,
                }
            }
        }
    }
    if not_started > 0 {
        tracing::info!(
            "{not_started} queued run(s) that had not started were recorded as skipped: {STOPPING}"
        );
    }
    if let Some(cancel) = d.wakes.running.take() {
        tracing::info!(
            "waiting up to {} (the rest of the grace) for the main session",
            loops_core::duration::format_duration(
                deadline.saturating_duration_since(tokio::time::Instant::now())
            )
        );
        let done = tokio::time::timeout_at(deadline, wake_rx.recv()).await;
        if done.is_err() {
            let _ = cancel.send(true);
            let _ = wake_rx.recv().await;
        }
    }
    if let Err(e) = job_worker.await {
        tracing::error!("the job worker ended badly: {e}");
    }
    // Nothing uses the MCP servers any more: they stop with the daemon.
    loops_agent::mcp_client::McpPool::shutdown_all().await;
    let flushed = d.flush_held(&journal);
    d.finish_commits(grace).await;
    if !flushed {
        tracing::error!("the disk still refuses writes: run records and daemon events held in memory are lost with this process");
    }
    loops_core::journal::record_stopped(&journal, reason, started_at);
    drop(lock);
    tracing::info!("loops daemon stopped");
    Ok(d.summary)
}

impl Daemon {
    /// What is running now and for how long, longest first.
    fn running_for(&self) -> Vec<(String, Duration)> {
        let mut out: Vec<(String, Duration)> = self
            .running
            .iter()
            .flat_map(|(name, runs)| runs.iter().map(|r| (name.clone(), r.started.elapsed())))
            .collect();
        if self.wakes.running.is_some() {
            out.push(("main session".into(), Duration::ZERO));
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Runs left "running" by a process that died are recorded as interrupted; returns
    /// (loop, run id) of each.
    fn recover_interrupted(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for m in self.ctx.running.orphans() {
            // A process killed between appending a run's record and removing its marker
            // left a marker for a run that did finish: it is not interrupted, and a
            // second record would count the run twice.
            if let Some(found) = self.ctx.runlog.find(&m.loop_name, &m.run_id) {
                // Or a start was killed after recording the run interrupted but before the
                // journal said so (the marker goes only after that): said now.
                if found.outcome == Outcome::Interrupted {
                    out.push((m.loop_name.clone(), m.run_id.clone()));
                } else {
                    self.ctx.running.remove(&m.run_id);
                }
                continue;
            }
            let now = Utc::now();
            let mut rec = RunRecord::decision(
                &m.loop_name,
                &m.trigger,
                m.slot,
                now,
                Outcome::Interrupted,
                format!(
                    "the process running it (pid {}) stopped before the run finished",
                    m.pid
                ),
            );
            // Its command runs in a process group of its own and outlives the runner;
            // stop it, but only if the group leader is the very process we started.
            if let Some(pgid) = m.pgid {
                if loops_core::fsutil::process_alive(pgid, m.pgid_start) {
                    loops_core::sys::signal_group(pgid, loops_core::sys::Signal::KILL);
                    if let Some(n) = rec.note.as_mut() {
                        n.push_str("; its process group was still running and has been stopped");
                    }
                }
            }
            rec.run_id = m.run_id.clone();
            rec.started = m.started;
            rec.attempt = m.attempt;
            rec.duration_ms = (now - m.started).num_milliseconds().max(0) as u64;
            tracing::warn!(loop_name = %m.loop_name, run = %m.run_id, "recorded an interrupted run left by pid {}", m.pid);
            if let Err(e) = self.ctx.runlog.append(&rec) {
                tracing::error!("{e}");
            }
            // Its marker is removed once the journal names it (see the start).
            out.push((m.loop_name.clone(), m.run_id.clone()));
        }
        out
    }

    /// Writes what a refusing disk kept back (run records, daemon events, markers of
    /// finished runs); returns whether nothing is held any more.
    fn flush_held(&mut self, journal: &loops_core::journal::Journal) -> bool {
        let records = self.ctx.runlog.flush();
        let markers = self.ctx.running.flush();
        let events = journal.flush();
        let completions = self.retry_completions();
        records && markers && events && completions
    }

    /// Completes the handoffs whose move to done/ the disk refused; returns whether none
    /// is left waiting.
    fn retry_completions(&mut self) -> bool {
        if self.wakes.uncompleted.is_empty() {
            return true;
        }
        let inbox = self.wakes.inbox.clone();
        let mut commits = Vec::new();
        self.wakes.uncompleted.retain(|u| match u.retry(&inbox) {
            Some(c) => {
                commits.extend(c);
                false
            }
            None => true,
        });
        if let (Some(c), false) = (self.ctx.committer.clone(), commits.is_empty()) {
            self.commits.spawn(async move {
                for req in commits {
                    if let Err(e) = c.commit(req).await {
                        tracing::warn!("a late completion is not committed yet: {e}");
                    }
                }
            });
        }
        self.wakes.uncompleted.is_empty()
    }

    /// Rediscovers the domains and tells the scheduler; logs what changed.
    fn reload(&mut self, first: bool) {
        let found = discover(&self.ws);
        let mut next = BTreeMap::new();
        let mut changed = first;
        for e in found {
            let prev = self.entries.get(&e.name);
            let is_new = prev.is_none();
            let edited = prev.is_some_and(|p| p.content_hash != e.content_hash);
            let errors: Vec<String> = e.errors().map(|d| d.to_string()).collect();
            if is_new || edited {
                changed = true;
                if !errors.is_empty() {
                    for err in &errors {
                        tracing::error!(loop_name = %e.name, "{err}");
                    }
                    tracing::warn!(loop_name = %e.name, "loop is not scheduled until its config is fixed");
                } else if !first {
                    tracing::info!(loop_name = %e.name, "{}", if is_new { "new loop" } else { "loop reloaded" });
                }
            }
            if errors.is_empty() && prev.is_some_and(|p| p.def.is_none()) {
                tracing::info!(loop_name = %e.name, "config fixed: loop scheduled again");
            }
            next.insert(e.name.clone(), e);
        }
        for name in self.entries.keys() {
            if !next.contains_key(name) {
                changed = true;
                tracing::info!(loop_name = %name, "loop removed");
            }
        }
        self.entries = next;
        if !changed {
            return;
        }
        let has_providers = self.ws.settings.has_providers;
        let mut defs = Vec::new();
        for e in self.entries.values() {
            match &e.def {
                Some(def) if schedulable(def, has_providers) => defs.push(def.clone()),
                Some(def) if def.is_prompt() && def.enabled => {
                    if first {
                        tracing::info!(loop_name = %def.name, "waiting for a provider: add `providers:` to loops.yaml to run prompt loops");
                    }
                    push_unique(&mut self.summary.waiting_for_provider, &def.name);
                }
                Some(def) => push_unique(&mut self.summary.disabled, &def.name),
                None => push_unique(&mut self.summary.broken, &e.name),
            }
        }
        let fresh = self.sched.set_loops_deferred(defs);
        if !fresh.is_empty() {
            let store = self.ctx.store.clone();
            tokio::task::spawn_blocking(move || {
                crate::engine::scheduler::persist_fresh(&store, &fresh)
            });
        }
    }

    fn on_paths_changed(&mut self, paths: &[PathBuf]) {
        let signals = self.ws.signals_dir();
        let inbox = self.ws.inbox_dir();
        let settings_file = self.ws.root.join("loops.yaml");
        let mut domains = false;
        let mut handoffs = false;
        let mut settings = false;
        for p in paths {
            if p.as_os_str().is_empty() {
                settings = true;
                // Events may have been lost (an overflow, or no watcher at all): every
                // folder the watcher covers is looked at, nudges included.
                domains = true;
                handoffs = true;
                for nudge in std::fs::read_dir(&signals)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok())
                {
                    let p = nudge.path();
                    if let Some(name) = nudge.file_name().to_str() {
                        self.sched.refresh(name);
                        let _ = std::fs::remove_file(&p);
                    }
                }
            } else if *p == settings_file {
                settings = true;
            } else if *p == inbox {
                // inbox/ itself was removed, moved aside or made again: the watch on the
                // old folder sees nothing more, so it is set up on what is there now.
                self.arm_inbox_watcher();
                handoffs = true;
            } else if p.parent() == Some(inbox.as_path()) {
                // The doorbell: something arrived in (or left) the inbox.
                handoffs = true;
            } else if let Ok(rest) = p.strip_prefix(&signals) {
                // A nudge from another process that changed this loop's state.
                if let Some(name) = rest.to_str() {
                    if p.exists() {
                        self.sched.refresh(name);
                        let _ = std::fs::remove_file(p);
                    }
                }
            } else if affects_discovery(&self.ws.domains_dir(), p) {
                domains = true;
            }
        }
        if settings && self.reload_settings() {
            domains = true;
            handoffs = true;
        }
        if domains {
            self.reload(false);
        }
        if handoffs {
            let now = self.sched.now();
            self.try_wake(now, crate::engine::run_context::WakeKind::Handoffs);
        }
    }

    /// Queues claimed runs until their fire time. Each gets its running marker now, so a
    /// crash between the claim and the start is recorded as an interrupted run, not lost.
    fn queue(&mut self, runs: Vec<DueRun>) {
        let markers: Vec<_> = runs
            .iter()
            .map(|due| {
                loops_core::runs::RunningMarker::for_this_process(
                    &due.loop_name,
                    &due.run_id,
                    due.trigger.as_str(),
                    due.slot,
                    due.attempt,
                    due.not_before,
                )
            })
            .collect();
        if !markers.is_empty() {
            if let Err(e) = self.ctx.running.put_pending_many(&markers) {
                tracing::warn!("cannot record the pending runs: {e}");
            }
        }
        self.pending.extend(runs);
    }

    /// Starts every pending run whose time has come.
    fn dispatch_ready(&mut self, now: DateTime<Utc>) {
        let (ready, later): (Vec<DueRun>, Vec<DueRun>) =
            self.pending.drain(..).partition(|p| p.not_before <= now);
        self.pending = later;
        for due in ready {
            self.dispatch(due);
        }
    }

    fn dispatch(&mut self, due: DueRun) {
        let Some(def) = self.sched.def(&due.loop_name).cloned() else {
            // Removed, disabled or broken between its claim and its fire time.
            self.ctx.running.remove(&due.run_id);
            let mut rec = RunRecord::decision(
                &due.loop_name,
                due.trigger.as_str(),
                due.slot,
                self.sched.now(),
                Outcome::Skipped,
                "the loop was removed, disabled or broken before its run started".into(),
            );
            rec.run_id = due.run_id.clone();
            if let Err(e) = self.ctx.runlog.append(&rec) {
                tracing::error!("{e}");
            }
            return;
        };
        let busy = self.running.get(&def.name).is_some_and(|r| !r.is_empty());
        if busy {
            match def.concurrency {
                Concurrency::Forbid => {
                    self.record_skip(
                        &def,
                        &due,
                        "the previous run was still going (concurrency: forbid)",
                    );
                    return;
                }
                Concurrency::Replace => {
                    for r in self.running.get(&def.name).into_iter().flatten() {
                        tracing::info!(loop_name = %def.name, run = %r.run_id, "replacing the running run (concurrency: replace)");
                        let _ = r.cancel.send(true);
                    }
                }
                Concurrency::Allow => {}
            }
        }
        // Across processes (a person's `loops trigger`), forbid is kept in the queue: the
        // run begins only if no other live run of the loop has (one transaction, made in
        // the run's own task so that a hundred runs due together do not wait on each
        // other's writes). A run replacing this process's own goes ahead: that one is
        // being stopped.
        let exclusive = def.concurrency != Concurrency::Allow && !busy;
        let req = RunRequest {
            run_id: due.run_id.clone(),
            trigger: due.trigger,
            slot: due.slot,
            attempt: due.attempt,
            fired: Some(self.sched.now()),
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let begun = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.running
            .entry(def.name.clone())
            .or_default()
            .push(RunningRun {
                run_id: req.run_id.clone(),
                cancel: cancel_tx,
                started: std::time::Instant::now(),
                begun: begun.clone(),
            });
        self.in_flight += 1;
        let ctx = self.ctx.clone();
        let permits = self.permits.clone();
        let done = self.done_tx.clone();
        let clock = self.sched.clock();
        let pause_after = self.ws.settings.pause_after_failures;
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            // The global limit queues runs; it never makes a slot's run disappear. One
            // still waiting for its turn when the runner stops is recorded as not run.
            let _permit = tokio::select! {
                biased;
                Ok(_) = stopping.wait_for(|s| *s) => {
                    let rec = record_not_run(&ctx, &def, &req, clock.now(), STOPPING);
                    let _ = done.send(Finished { def, rec, after: Aftermath::Nothing });
                    return;
                }
                p = permits.acquire_owned() => p,
            };
            if exclusive && !begin_alone(&ctx, &def, &req).await {
                let why = "another process was running this loop (concurrency: forbid)";
                tracing::info!(loop_name = %def.name, "slot skipped: {why}");
                let rec = record_not_run(&ctx, &def, &req, clock.now(), why);
                let _ = done.send(Finished {
                    def,
                    rec,
                    after: Aftermath::Nothing,
                });
                return;
            }
            begun.store(true, std::sync::atomic::Ordering::SeqCst);
            let rec = loop_run::execute(&ctx, &def, &req, None, Some(cancel_rx)).await;
            // A program that could not be started at all is a permanent error: retrying
            // cannot fix a missing or non-executable file.
            let permanent = rec.cannot_start;
            let store = ctx.store.clone();
            let (def, rec, after) = tokio::task::spawn_blocking(move || {
                let after = apply_finish(&store, &def, &rec, !permanent, pause_after, clock.now());
                (def, rec, after)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            let _ = done.send(Finished { def, rec, after });
        });
    }

    fn record_skip(&mut self, def: &LoopDef, due: &DueRun, why: &str) {
        self.ctx.running.remove(&due.run_id);
        let mut rec = RunRecord::decision(
            &def.name,
            due.trigger.as_str(),
            due.slot,
            self.sched.now(),
            Outcome::Skipped,
            why.to_string(),
        );
        rec.run_id = due.run_id.clone();
        tracing::info!(loop_name = %def.name, "slot skipped: {why}");
        if let Err(e) = self.ctx.runlog.append(&rec) {
            tracing::error!("{e}");
        }
        if self.keep_summary {
            self.summary.runs.push(rec);
        }
    }

    fn on_finished(&mut self, f: Finished) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(list) = self.running.get_mut(&f.def.name) {
            list.retain(|r| r.run_id != f.rec.run_id);
        }
        let rec = &f.rec;
        let err = rec.error.as_deref().unwrap_or("");
        match rec.outcome {
            Outcome::Failed | Outcome::Timeout => {
                tracing::warn!(loop_name = %rec.loop_name, run = %rec.run_id, outcome = %rec.outcome, duration_ms = rec.duration_ms, "{err}")
            }
            _ if self.quiet_finish => {
                tracing::debug!(loop_name = %rec.loop_name, run = %rec.run_id, outcome = %rec.outcome, duration_ms = rec.duration_ms, commit = rec.commit.as_deref().unwrap_or(""), "run finished")
            }
            _ => {
                tracing::info!(loop_name = %rec.loop_name, run = %rec.run_id, outcome = %rec.outcome, duration_ms = rec.duration_ms, commit = rec.commit.as_deref().unwrap_or(""), "run finished")
            }
        }
        self.sched.refresh(&f.def.name);
        let after = f.after.clone();
        match after {
            Aftermath::RetryAt(at) => {
                tracing::info!(loop_name = %rec.loop_name, "retry {} at {}", rec.attempt + 1, at.to_rfc3339())
            }
            Aftermath::Paused(p) => {
                tracing::error!(
                    loop_name = %rec.loop_name,
                    "loop paused after {}; last error: {}. Fix it, then `loops resume {}`",
                    p.reason,
                    p.last_error.as_deref().unwrap_or("none"),
                    rec.loop_name
                );
                // The main session hears of it through a handoff, not only the log.
                let ctx = self.ctx.clone();
                let n = crate::engine::main_session::paused_loop_handoff(&rec.loop_name, &p);
                tokio::spawn(async move {
                    crate::engine::main_session::runner_handoff(&ctx, n).await;
                });
            }
            Aftermath::Nothing => {}
        }
        if self.keep_summary {
            self.summary.runs.push(f.rec);
        }
    }
}

impl Daemon {
    /// Handoffs claimed by a wake that died with the last runner go back to the inbox;
    /// stale files in inbox/.tmp/ are cleaned.
    fn recover_inbox(&mut self) -> Vec<String> {
        let moves = self.wakes.notes.recover_moves(&self.wakes.inbox);
        let back: Vec<String> = moves
            .iter()
            .filter_map(|m| m.paths.first()?.file_name()?.to_str().map(str::to_string))
            .collect();
        self.commit_moves("released", moves);
        if !back.is_empty() {
            tracing::warn!(
                "{} handoff(s) claimed by a wake that did not finish went back to the inbox",
                back.len()
            );
        }
        let cleaned = self.wakes.inbox.clean_tmp(std::time::SystemTime::now());
        if cleaned > 0 {
            tracing::info!("removed {cleaned} file(s) abandoned in inbox/.tmp/");
        }
        self.commit_inbox_state();
        if self.wakes.main.is_none() && !self.wakes.inbox.pending().is_empty() {
            tracing::warn!("handoffs are waiting in inbox/ but loops.yaml has no `main:` session to receive them");
        }
        back
    }

    /// Watches inbox/ when there is a main session to wake (and not for a `--once` pass):
    /// with almost no debounce, since a handoff should wake it within milliseconds and
    /// handoffs arriving during a wake are coalesced into the next one anyway. Called
    /// again when inbox/ is made anew: a watch stays on the folder it was set on.
    fn arm_inbox_watcher(&mut self) {
        self.inbox_watcher = None;
        // Watched without a main session too: each arrival is then said, not left silent.
        if self.once {
            return;
        }
        let dir = self.ws.inbox_dir();
        if !dir.is_dir() {
            // Watched again when it is made (the root's watcher sees that).
            return;
        }
        self.inbox_watcher = start_watcher(
            &self.ws,
            &[(dir, loops_core::watch::Mode::Flat)],
            Duration::from_millis(2),
            &self.watch_tx,
            &mut self.fallback_rescan,
        );
    }

    /// Without `main:` nothing receives handoffs: each one that arrives is said once (the
    /// log and the journal), with the fix, instead of waiting in silence.
    fn say_unreceived(&mut self) {
        let pending = self.wakes.inbox.pending();
        let names: std::collections::HashSet<String> = pending
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        self.wakes.unreceived.retain(|n| names.contains(n));
        let new: Vec<String> = names
            .into_iter()
            .filter(|n| !self.wakes.unreceived.contains(n))
            .collect();
        if new.is_empty() {
            return;
        }
        let journal = loops_core::journal::Journal::open(&self.ws.runtime_dir());
        for n in &new {
            tracing::warn!(
                "inbox/{n} waits: loops.yaml has no `main:` session to receive handoffs; add one (it takes effect without a restart)"
            );
            journal.record("handoff_unreceived", serde_json::json!({ "file": n }));
        }
        self.wakes.unreceived.extend(new);
    }

    /// Reads loops.yaml again after an edit. A good edit is in force from now on (new
    /// runs, wakes and jobs see it); one with errors is refused whole and the last good
    /// settings stay, said once per distinct edit in the log, the journal and `loops
    /// status`. Settings that only a restart can change are named. Returns whether the
    /// settings changed.
    fn reload_settings(&mut self) -> bool {
        let journal = loops_core::journal::Journal::open(&self.ws.runtime_dir());
        let new = match Workspace::open(&self.ws.root) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(
                    "loops.yaml: cannot read it again ({e}); the settings in force stay"
                );
                return false;
            }
        };
        if !new.settings.unapplied.is_empty() {
            let errors: Vec<String> = new
                .settings
                .unapplied
                .iter()
                .map(|d| d.to_string())
                .collect();
            let said = self
                .settings_report
                .rejected
                .as_ref()
                .is_some_and(|r| r.errors == errors);
            if !said {
                tracing::error!(
                    "loops.yaml was edited, but the edit is not applied: the last good settings stay in force until it is fixed (`loops check` shows the same):\n  {}",
                    errors.join("\n  ").replace('\n', "\n  ")
                );
                journal.record("settings_rejected", serde_json::json!({ "errors": errors }));
                self.settings_report.rejected = Some(loops_core::workspace::RejectedEdit {
                    at: Utc::now(),
                    errors,
                });
                self.settings_report.write(&self.ws);
            }
            return false;
        }
        let text_of = |ws: &Workspace| std::fs::read(ws.root.join("loops.yaml")).ok();
        let unchanged = self.settings_report.rejected.is_none()
            && self.applied_text.as_deref() == text_of(&new).as_deref();
        if unchanged {
            return false;
        }
        self.applied_text = text_of(&new);
        let mut waiting: Vec<String> = self.settings_report.restart_needed.clone();
        for k in loops_core::workspace::restart_needed(&self.started_settings, &new.settings) {
            if !waiting.iter().any(|w| w == k) {
                waiting.push(k.to_string());
            }
        }
        // A key set back to what the daemon started with needs no restart any more.
        let now_differs =
            loops_core::workspace::restart_needed(&self.started_settings, &new.settings);
        waiting.retain(|k| now_differs.contains(&k.as_str()));
        for d in &new.diagnostics {
            tracing::warn!("{d}");
        }
        let new = Arc::new(new);
        self.ws = new.clone();
        self.ctx.ws = new.clone();
        let _ = self.live.send(new.clone());
        let had_main = self.wakes.main.is_some();
        self.wakes.main = new.settings.main.clone();
        let now = self.sched.now();
        self.wakes.next_heartbeat = self
            .wakes
            .main
            .as_ref()
            .and_then(|m| m.heartbeat)
            .map(|h| now + chrono_ms(h));
        if had_main != self.wakes.main.is_some() {
            self.arm_inbox_watcher();
        }
        if self.wakes.main.is_none() && !self.wakes.inbox.pending().is_empty() {
            tracing::warn!("handoffs are waiting in inbox/ but loops.yaml has no `main:` session to receive them");
        }
        if waiting.is_empty() {
            tracing::info!("loops.yaml reloaded: its settings are in force");
        } else {
            tracing::warn!(
                "loops.yaml reloaded; {} changed but take effect only when the daemon restarts",
                waiting.join(", ")
            );
        }
        journal.record(
            "settings_reloaded",
            serde_json::json!({ "restart_needed": waiting }),
        );
        self.settings_report.applied_at = Some(Utc::now());
        self.settings_report.rejected = None;
        self.settings_report.restart_needed = waiting;
        self.settings_report.write(&self.ws);
        true
    }

    /// Waits (up to `grace`) for the inbox commits still on their way, then for the
    /// committer to make what it had to defer, if git allows it now; what is still
    /// waiting is said, and made at the next start (it is kept in `.loops/commits/`).
    async fn finish_commits(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while !self.commits.is_empty() {
            match tokio::time::timeout_at(deadline, self.commits.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(c) = &self.ctx.committer {
            match tokio::time::timeout_at(deadline, c.flush()).await {
                Ok(Ok(0)) | Err(_) => {}
                Ok(Ok(n)) => tracing::warn!(
                    "{n} commit(s) still wait for git; they are kept in .loops/commits/ and made at the next start"
                ),
                Ok(Err(e)) => tracing::warn!("the committer: {e}"),
            }
        }
    }

    /// Commits moves within the inbox in the background (see
    /// [`crate::engine::main_session::commit_moves`]).
    fn commit_moves(
        &mut self,
        outcome: &'static str,
        moved: Vec<crate::engine::main_session::Moved>,
    ) {
        if moved.is_empty() {
            return;
        }
        let c = self.ctx.committer.clone();
        // Finished ones are reaped here, so the set holds only what is on its way.
        while self.commits.try_join_next().is_some() {}
        self.commits.spawn(async move {
            crate::engine::main_session::commit_moves(c.as_ref(), outcome, moved).await;
        });
    }

    /// A runner killed between a move within the inbox (a claim, a return, a rejection,
    /// a completion) and its commit leaves the move on disk but not in the history:
    /// commit the inbox as it is now (see [`loops_core::handoff::Inbox::unsettled_paths`]),
    /// so `git status` is clean again without waiting for each handoff's next move.
    fn commit_inbox_state(&mut self) {
        let Some(c) = self.ctx.committer.clone() else {
            return;
        };
        let paths = self.wakes.inbox.unsettled_paths(Utc::now());
        if paths.is_empty() {
            return;
        }
        let msg = loops_core::history::commit_message(
            "main: record inbox moves a stopped runner had not committed",
            &[
                ("Loop", crate::engine::run_context::MAIN.to_string()),
                ("Outcome", "recovered".to_string()),
            ],
        );
        self.commits.spawn(async move {
            match c
                .commit(loops_core::history::CommitRequest::new(paths, msg))
                .await
            {
                Ok(Some(oid)) => {
                    tracing::warn!(commit = %oid, "committed inbox moves a stopped runner had made but not committed")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("could not commit the inbox's recovered moves: {e}"),
            }
        });
    }

    /// Starts a main-session wake if one is allowed now: claims every pending handoff for
    /// main (rejecting malformed ones that have settled), and runs the main session on
    /// them. A wake already running, or the flood guard, turns this into a later wake;
    /// nothing is ever dropped, because the files stay in the inbox until claimed.
    fn try_wake(&mut self, now: DateTime<Utc>, kind: crate::engine::run_context::WakeKind) {
        use crate::engine::run_context::WakeKind;
        let Some(main) = self.wakes.main.clone() else {
            self.say_unreceived();
            return;
        };
        if self.wakes.running.is_some() {
            self.wakes.wanted = true;
            if kind == WakeKind::Heartbeat {
                self.wakes.wanted_kind = kind;
            }
            return;
        }
        if let Some(at) = self.wakes.backoff_until.filter(|t| now < *t) {
            self.wakes.retry_at = Some(self.wakes.retry_at.map_or(at, |r| r.min(at)));
            if kind == WakeKind::Heartbeat {
                self.wakes.wanted_kind = kind;
            }
            return;
        }
        while self
            .wakes
            .recent
            .front()
            .is_some_and(|t| now - *t >= chrono::Duration::seconds(60))
        {
            self.wakes.recent.pop_front();
        }
        if self.wakes.recent.len() >= main.max_wakes_per_minute as usize {
            let at =
                self.wakes.recent.front().copied().unwrap_or(now) + chrono::Duration::seconds(60);
            self.wakes.retry_at = Some(self.wakes.retry_at.map_or(at, |r| r.min(at)));
            self.wakes.wanted_kind = kind;
            return;
        }
        let (claimed, claims) = self.claim_pending(now, main.max_handoffs_per_wake as usize);
        if claimed.is_empty() && kind == WakeKind::Handoffs {
            return;
        }
        self.wakes.recent.push_back(now);
        self.wakes.wanted = false;
        self.wakes.wanted_kind = WakeKind::Handoffs;
        let (cancel_tx, cancel_rx) = watch::channel(false);
        self.wakes.running = Some(cancel_tx);
        let ctx = self.ctx.clone();
        let tx = self.wakes.done_tx.clone();
        tracing::info!(
            handoffs = claimed.len(),
            kind = kind.as_str(),
            "waking the main session"
        );
        tokio::spawn(async move {
            // The claims are in the history before the main session starts on them.
            crate::engine::main_session::commit_moves(ctx.committer.as_ref(), "claimed", claims)
                .await;
            let r = crate::engine::main_session::wake(&ctx, &main, kind, claimed, Some(cancel_rx))
                .await;
            let _ = tx.send(r);
        });
    }

    /// Claims the pending handoffs for main, at most `cap` (so a wake's argument list
    /// and its report stay well inside the system's limits; the rest go to the next wake
    /// at once), each under an id no other handoff has, and rejects the malformed ones
    /// that have settled (committed at once). Returns the claimed files in `active/` and
    /// the claims to commit.
    fn claim_pending(
        &mut self,
        now: DateTime<Utc>,
        cap: usize,
    ) -> (Vec<PathBuf>, Vec<crate::engine::main_session::Moved>) {
        use crate::engine::main_session::Moved;
        let inbox = self.wakes.inbox.clone();
        let mut claimed = Vec::new();
        let mut claims = Vec::new();
        let mut rejected = Vec::new();
        let mut reject = |p: &std::path::Path, id: &str, why: &str| match inbox.reject(p, why, now)
        {
            Ok(to) => {
                tracing::warn!(handoff = %id, "rejected {}: {why} (see {})", p.display(), inbox.error_note(&to).display());
                rejected.push(Moved {
                    id: id.to_string(),
                    paths: vec![p.to_path_buf(), inbox.error_note(&to), to],
                });
            }
            Err(err) => tracing::error!("cannot reject {}: {err}", p.display()),
        };
        let mut taken: Option<std::collections::HashSet<String>> = None;
        for p in inbox.pending() {
            if claimed.len() >= cap {
                self.wakes.wanted = true;
                break;
            }
            if inbox.still_written(&p) {
                // Its writer's close is not an event the watcher passes on: look again soon.
                let at = now + chrono_ms(STILL_WRITTEN_RETRY);
                self.wakes.retry_at = Some(self.wakes.retry_at.map_or(at, |r| r.min(at)));
                continue;
            }
            match inbox.load(&p) {
                Ok(h) if h.to == "main" => {
                    // Every path it names is checked now, in its writer's scope: a
                    // handoff is a stranger's text until the runner says who wrote it.
                    if let Err(why) =
                        loops_agent::sandbox::check_handoff_paths(&inbox.workspace, &h)
                    {
                        reject(&p, &h.id, &why);
                        continue;
                    }
                    let taken = taken.get_or_insert_with(|| inbox.taken_ids());
                    match inbox.claim_unique(&p, &h, taken) {
                        Ok(Some((a, h))) => {
                            claims.push(Moved {
                                id: h.id,
                                paths: vec![p.clone(), a.clone()],
                            });
                            claimed.push(a);
                        }
                        Ok(None) => {}
                        Err(e) => reject(&p, &h.id, &e.to_string()),
                    }
                }
                Ok(h) => {
                    if self.wakes.not_for_main.insert(p.clone()) {
                        tracing::info!(handoff = %h.id, to = %h.to, "handoff is addressed to `{}`, not the main session: left in the inbox", h.to);
                    }
                }
                Err(e) => {
                    let young = std::fs::metadata(&p)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age < loops_core::handoff::SETTLE);
                    if young {
                        // Perhaps still being written in place: look again once it settles.
                        let at = now + chrono_ms(loops_core::handoff::SETTLE);
                        self.wakes.retry_at = Some(self.wakes.retry_at.map_or(at, |r| r.min(at)));
                    } else {
                        let name = p.file_stem().unwrap_or_default().to_string_lossy();
                        reject(&p, &name, &e.to_string());
                    }
                }
            }
        }
        self.commit_moves("rejected", rejected);
        (claimed, claims)
    }

    fn on_wake_done(&mut self, w: crate::engine::main_session::WakeResult, again: bool) {
        self.wakes.running = None;
        self.wakes.uncompleted.extend(w.uncompleted.iter().cloned());
        let rec = &w.record;
        match rec.outcome {
            Outcome::Failed | Outcome::Timeout => tracing::warn!(
                run = %rec.run_id,
                outcome = %rec.outcome,
                "main session wake failed: {}; {} handoff(s) back in the inbox",
                rec.error.as_deref().unwrap_or(""),
                w.released.len()
            ),
            _ => tracing::info!(
                run = %rec.run_id,
                outcome = %rec.outcome,
                completed = w.completed.len(),
                held = w.held.len(),
                "main session wake finished"
            ),
        }
        for (id, why) in &w.held {
            tracing::info!(handoff = %id, "held in inbox/active/: {why}");
        }
        if self.keep_summary {
            self.summary.runs.push(w.record.clone());
        }
        let pending = !self.wakes.inbox.pending().is_empty();
        let failed = rec.outcome.is_failure();
        // A failing main session is retried, but not at once (whatever wakes it).
        self.wakes.backoff_until = failed.then(|| self.sched.now() + chrono::Duration::seconds(5));
        if self.wakes.wanted || (pending && !failed) || (again && pending) {
            let kind = self.wakes.wanted_kind;
            let now = self.sched.now();
            if failed {
                // A failing main session is retried, but not at once.
                let at = now + chrono::Duration::seconds(5);
                self.wakes.retry_at = Some(self.wakes.retry_at.map_or(at, |r| r.min(at)));
                self.wakes.wanted_kind = kind;
            } else {
                self.try_wake(now, kind);
            }
        }
    }
}

/// Whether a changed path can change what loops exist or how they are configured: a
/// folder appearing or going directly under domains/, or a config.yaml / prompt.md. A
/// loop rewriting its own state.md must not make the daemon re-read every config.
/// Records a run that was never started (`skipped`, with why) and lets go of its job.
fn record_not_run(
    ctx: &RunContext,
    def: &LoopDef,
    req: &RunRequest,
    at: DateTime<Utc>,
    why: &str,
) -> RunRecord {
    ctx.running.remove(&req.run_id);
    let mut rec = RunRecord::decision(
        &def.name,
        req.trigger.as_str(),
        req.slot,
        at,
        Outcome::Skipped,
        why.into(),
    );
    rec.run_id = req.run_id.clone();
    rec.attempt = req.attempt;
    if let Err(e) = ctx.runlog.append(&rec) {
        tracing::error!("{e}");
    }
    rec
}

/// Begins `req`'s run unless another live process has begun a run of the loop
/// (`concurrency: forbid`, or `replace` across processes). A queue it cannot read does not
/// stop the run: it is said, and the run goes ahead as it would without the check.
async fn begin_alone(ctx: &RunContext, def: &LoopDef, req: &RunRequest) -> bool {
    let m = loops_core::runs::RunningMarker::for_this_process(
        &def.name,
        &req.run_id,
        req.trigger.as_str(),
        req.slot,
        req.attempt,
        Utc::now(),
    );
    let running = ctx.running.clone();
    let name = def.name.clone();
    tokio::task::spawn_blocking(move || match running.begin_exclusive(&m) {
        Ok(alone) => alone,
        Err(e) => {
            tracing::warn!("cannot check who else runs {name}: {e}");
            true
        }
    })
    .await
    .unwrap_or(true)
}

fn affects_discovery(domains: &std::path::Path, p: &std::path::Path) -> bool {
    let Ok(rest) = p.strip_prefix(domains) else {
        return false;
    };
    let depth = rest.components().count();
    depth <= 1
        || (depth == 2
            && matches!(
                rest.file_name().and_then(|n| n.to_str()),
                Some("config.yaml") | Some("prompt.md")
            ))
}

/// Starts a watcher; when it cannot (an inotify limit), says why and what to do, records
/// it for `loops status`, and turns on a periodic rescan (domains and inbox) so nothing
/// waits for an event that will never come.
fn start_watcher(
    ws: &Workspace,
    dirs: &[(PathBuf, loops_core::watch::Mode)],
    debounce: Duration,
    tx: &mpsc::UnboundedSender<loops_core::watch::Batch>,
    fallback_rescan: &mut Option<Duration>,
) -> Option<loops_core::watch::Watcher> {
    let report = loops_core::watch::report_path(&ws.runtime_dir());
    match loops_core::watch::watch_and_report(dirs, debounce, tx.clone(), Some(report)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!("{}", e.explained());
            *fallback_rescan = Some(loops_core::watch::POLL_EVERY);
            None
        }
    }
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_beyond_its_longest_wait_is_planned_from_now() {
        let now = Utc::now();
        let h = chrono::Duration::minutes(30);
        let later = now + chrono::Duration::days(3);
        assert_eq!(reanchored(Some(later), now, h, now + h), Some(now + h));
        assert_eq!(reanchored(Some(now + h), now, h, now), Some(now + h));
        assert_eq!(reanchored(None, now, h, now), None);
    }
}
