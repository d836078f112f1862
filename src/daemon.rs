//! The daemon: `loops run`. It owns the workspace (one daemon per workspace, by lock),
//! keeps the scheduler fed from disk, starts runs within the concurrency limits, reloads
//! loops when their files change, and shuts down without losing a run.

use crate::engine::doorbell::Doorbell;
use crate::engine::main_session::WakeResult;
use crate::engine::recovery;
use crate::engine::run_context::{RunContext, Trigger, WakeKind};
use crate::engine::run_lane::{Finished, RunLane, STOPPING};
use crate::engine::scheduler::{claim_with, schedulable, Claim, DueRun, Scheduler};
use chrono::{DateTime, Utc};
use loops_core::clock::Clock;
use loops_core::daemon_lock::{DaemonLock, DaemonLockError, HEARTBEAT};
use loops_core::domain::{discover, DomainEntry};
use loops_core::journal::Journal;
use loops_core::runs::{Outcome, RunRecord};
use loops_core::workspace::Workspace;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{Signal, SignalKind};
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

fn chrono_ms(d: Duration) -> chrono::Duration {
    chrono::Duration::milliseconds(d.as_millis() as i64)
}

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

struct Daemon {
    ws: Arc<Workspace>,
    ctx: RunContext,
    sched: Scheduler,
    clock: Arc<dyn Clock>,
    journal: Journal,
    entries: BTreeMap<String, DomainEntry>,
    /// The loops' runs: waiting for their time, then running.
    lane: RunLane,
    /// The main session's wakes.
    bell: Doorbell,
    summary: Summary,
    /// Only `--once` reports a summary; a long-running daemon must not keep every record.
    keep_summary: bool,
    /// The settings in force, for the job worker: a good edit of loops.yaml is sent here.
    live: watch::Sender<Arc<Workspace>>,
    /// Where the watchers send what changed (the inbox's is re-armed as the folder comes
    /// and goes, and started or stopped as `main:` is).
    watch_tx: mpsc::UnboundedSender<loops_core::watcher::Batch>,
    inbox_watcher: Option<loops_core::watcher::Watcher>,
    /// Set when a watcher could not start: everything is rescanned this often instead.
    fallback_rescan: Option<Duration>,
    once: bool,
    /// What `.loops/settings.json` says about loops.yaml (see [`SettingsReport`]).
    settings_report: loops_core::workspace::SettingsReport,
    /// The settings the daemon started with (what only a restart changes), and the text of
    /// loops.yaml last applied (an event that changed nothing is not a reload).
    started_settings: loops_core::workspace::Settings,
    applied_text: Option<Vec<u8>>,
    /// Rung by `loops sync` (a `.sync` nudge): the syncer syncs now.
    sync_poke: Arc<tokio::sync::Notify>,
    /// Loops whose folders a pull is rewriting: no run starts until they are reloaded.
    pull_hold: Arc<crate::engine::pull_hold::PullHold>,
}

/// What the daemon's loop waits on: runs and wakes ending, slots claimed, files changed,
/// signals.
struct Inputs {
    done_rx: mpsc::UnboundedReceiver<Finished>,
    wake_rx: mpsc::UnboundedReceiver<WakeResult>,
    claim_tx: mpsc::UnboundedSender<(String, Option<Claim>, DateTime<Utc>)>,
    claim_rx: mpsc::UnboundedReceiver<(String, Option<Claim>, DateTime<Utc>)>,
    /// Claims sent to the blocking pool and not yet accepted.
    claiming: usize,
    watch_rx: mpsc::UnboundedReceiver<loops_core::watcher::Batch>,
    sigint: Signal,
    sigterm: Signal,
}

/// The job worker, running beside the runs and sharing their limit.
struct JobWorker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<crate::engine::worker::WorkerEnded>,
}

/// Says once, in the log and the journal, that `.loops/` was made owner-only.
fn report_tightened(journal: &Journal, tightened: std::io::Result<usize>) {
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

fn catch(kind: SignalKind) -> Result<Signal, DaemonError> {
    tokio::signal::unix::signal(kind).map_err(|source| DaemonError::Io {
        path: PathBuf::from("signal"),
        source,
    })
}

/// Runs the daemon until a signal (or, with `once`, until the due work is done).
pub async fn run(ws: Workspace, opts: DaemonOptions) -> Result<Summary, DaemonError> {
    // Before the first commit could record a linked folder's removal.
    if let Some(l) = ws.symlinked_areas().into_iter().next() {
        return Err(l.into());
    }
    let lock = DaemonLock::acquire(&ws, crate::engine::worker::shell_allowed(&ws), !opts.once)?;
    // Before anything is written: an older loops made .loops/ readable by others.
    let tightened = loops_core::fsutil::tighten(ws.layout().root());
    // Signals are caught from the first moment: a SIGTERM during start-up (recovery can
    // take a while) must stop the daemon cleanly, not kill it mid-write.
    let sigint = catch(SignalKind::interrupt())?;
    let sigterm = catch(SignalKind::terminate())?;
    // Daemons the journal saw start and never saw stop were killed (or crashed): they
    // are reported below, with what their crash left behind.
    let (journal, unclosed) = loops_core::journal::record_started(ws.layout().root(), opts.once);
    let started_at = Utc::now();
    report_tightened(&journal, tightened);
    let (mut d, mut inputs, live_rx) = Daemon::new(Arc::new(ws), &opts, journal, sigint, sigterm);
    d.recover(&lock, &unclosed).await;
    if let Some(c) = d.ctx.committer.clone().filter(|_| opts.once) {
        // Before the loops are read: a pulled loop runs in this very pass.
        crate::engine::syncer::once(&d.ws, &c, true).await;
    }
    d.reload(true);
    if !opts.once {
        // Runs triggered while no daemon served (or while this one started).
        d.take_submitted();
    }
    // loops.yaml `ui:`: the web view in this process too (src/ui/), following edits of
    // loops.yaml; dropped with the daemon.
    let _ui = (!opts.once).then(|| crate::ui::follow_daemon_settings(live_rx.clone()));
    let worker = d.start_job_worker(&opts, live_rx);
    let _watcher = d.start_watching();
    let reason = if opts.once {
        d.run_once(&opts, &mut inputs, &worker).await;
        "once: done"
    } else {
        d.serve(&opts, &mut inputs, &lock).await
    };
    if opts.once {
        d.finish_once(&mut inputs, worker).await;
        if let Some(c) = d.ctx.committer.clone() {
            crate::engine::syncer::once(&d.ws, &c, false).await;
        }
    } else {
        d.shut_down(&mut inputs, worker).await;
    }
    loops_core::journal::record_stopped(&d.journal, reason, started_at);
    drop(lock);
    if !opts.once {
        tracing::info!("loops daemon stopped");
    }
    Ok(d.summary)
}

impl Daemon {
    fn new(
        ws: Arc<Workspace>,
        opts: &DaemonOptions,
        journal: Journal,
        sigint: Signal,
        sigterm: Signal,
    ) -> (Daemon, Inputs, watch::Receiver<Arc<Workspace>>) {
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
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let (claim_tx, claim_rx) = mpsc::unbounded_channel();
        let (watch_tx, watch_rx) = mpsc::unbounded_channel();
        let (live, live_rx) = watch::channel(ws.clone());
        let permits = Arc::new(Semaphore::new(ws.settings.max_concurrent_jobs));
        let d = Daemon {
            lane: RunLane::new(permits, done_tx, opts.once && opts.progress.is_some()),
            bell: Doorbell::new(&ws, opts.clock.now(), wake_tx),
            ws: ws.clone(),
            ctx,
            sched,
            clock: opts.clock.clone(),
            journal,
            entries: BTreeMap::new(),
            summary: Summary::default(),
            keep_summary: opts.once,
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
            sync_poke: Arc::new(tokio::sync::Notify::new()),
            pull_hold: Default::default(),
        };
        let inputs = Inputs {
            done_rx,
            wake_rx,
            claim_tx,
            claim_rx,
            claiming: 0,
            watch_rx,
            sigint,
            sigterm,
        };
        (d, inputs, live_rx)
    }

    /// The start's one sweep over what a dead runner left (see [`recovery`]), reported
    /// in the journal with the unclean stop it followed.
    async fn recover(&mut self, lock: &DaemonLock, unclosed: &[loops_core::journal::Unclosed]) {
        let now = self.clock.now();
        let journal = self.journal.clone();
        let previous = lock.previous.as_ref().map(|p| (p.pid, p.started));
        let heartbeat = lock.previous_heartbeat;
        let unclosed = unclosed.to_vec();
        // Journaled before the requeues are written: a start killed right after them
        // (during the commits below, say) has still said why those jobs run again.
        let report: recovery::Report = Box::new(move |runs, handoffs, swept| {
            loops_core::journal::report_unclean(
                &journal, previous, heartbeat, &unclosed, runs, handoffs, swept,
            );
        });
        let recovered =
            recovery::sweep(&self.ctx, self.bell.notes(), self.bell.inbox(), now, report).await;
        self.bell
            .after_recovery(&self.ctx, recovered.returned.clone());
        // The recovery commits are made before any claim moves a file again, so each
        // records what a dead runner left, and a claim's own commit records the claim.
        self.bell
            .settle_commits(tokio::time::Instant::now() + Duration::from_secs(30))
            .await;
        recovery::forget_interrupted(&self.ctx, &recovered);
    }

    /// The job queue has a worker of its own; it shares the concurrency limit.
    fn start_job_worker(
        &self,
        opts: &DaemonOptions,
        live_rx: watch::Receiver<Arc<Workspace>>,
    ) -> JobWorker {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(crate::engine::worker::run(
            crate::engine::worker::WorkerConfig {
                ws: self.ws.clone(),
                committer: self.ctx.committer.clone(),
                clock: opts.clock.clone(),
                permits: self.lane.permits(),
                allow_shell: crate::engine::worker::shell_allowed(&self.ws),
                grace: self.ws.settings.shutdown_grace,
                live: Some(live_rx),
            },
            if opts.once {
                crate::engine::worker::Mode::Drain
            } else {
                crate::engine::worker::Mode::Serve
            },
            stop_rx,
            None,
        ));
        JobWorker { stop, task }
    }

    /// Watches what can change the plan (loops.yaml, domains/, nudges, the inbox); a
    /// `--once` pass watches nothing.
    fn start_watching(&mut self) -> Option<loops_core::watcher::Watcher> {
        let watcher = if self.once {
            None
        } else {
            // Clear nudges left from before: the start reads every loop's state anyway.
            let signals = self.ws.layout().signals_dir();
            let _ = std::fs::remove_dir_all(&signals);
            // The root itself, flat: loops.yaml edits, and inbox/ removed or made again.
            start_watcher(
                &self.ws,
                &[
                    (self.ws.root.clone(), loops_core::watcher::Mode::Flat),
                    (self.ws.domains_dir(), loops_core::watcher::Mode::Children),
                    (signals, loops_core::watcher::Mode::Flat),
                ],
                Duration::from_millis(100),
                &self.watch_tx,
                &mut self.fallback_rescan,
            )
        };
        self.arm_inbox_watcher();
        self.settings_report.write(&self.ws);
        if !self.once {
            // An edit between the first read of loops.yaml and the watch on it.
            self.reload_settings();
        }
        watcher
    }

    fn keep(&mut self, recs: impl IntoIterator<Item = RunRecord>) {
        if self.keep_summary {
            self.summary.runs.extend(recs);
        }
    }

    fn ring(&mut self, kind: WakeKind) {
        let now = self.clock.now();
        self.bell.ring(&self.ctx, now, kind);
    }

    fn dispatch_ready(&mut self, now: DateTime<Utc>) {
        let awaiting_push = self.awaiting_push(now);
        let skipped = self
            .lane
            .dispatch_ready(&self.ctx, &self.sched, now, &awaiting_push);
        self.keep(skipped);
    }

    /// With a remote, a loop's next run waits until its last commits are pushed (while
    /// pushing works), so a run never builds on state the other side has not seen, and
    /// until a pull that is rewriting its folder has been reloaded. Not with --once or
    /// without commits: no syncer runs then.
    fn awaiting_push(&self, now: DateTime<Utc>) -> std::collections::HashSet<String> {
        let syncing = !self.once && self.ctx.committer.is_some();
        if !(syncing && self.ws.settings.remote.is_some() && self.lane.has_ready(now)) {
            return Default::default();
        }
        let mut held = loops_core::remote::loops_awaiting_push(&self.ws);
        let ready = self.lane.ready_names(now);
        held.extend(self.pull_hold.holding(ready, std::time::Instant::now()));
        held
    }

    fn on_finished(&mut self, f: Finished) {
        let rec = self.lane.on_finished(&self.ctx, &mut self.sched, f);
        self.keep([rec]);
    }

    fn on_wake_done(&mut self, w: WakeResult, again: bool) {
        let now = self.clock.now();
        self.bell.on_wake_done(&self.ctx, &w, again, now);
        self.keep([w.record]);
    }

    fn queue(&mut self, runs: Vec<DueRun>) {
        self.lane.queue(&self.ctx, runs);
    }

    /// What a `--once` pass runs: every due slot, with `all` every loop once more.
    fn once_runs(&mut self, all: bool) -> Vec<DueRun> {
        let now = self.sched.now();
        let mut due = self.sched.due();
        if !all {
            return due;
        }
        let have: Vec<String> = due.iter().map(|r| r.loop_name.clone()).collect();
        let names: Vec<String> = self.sched.loop_names().map(str::to_string).collect();
        for name in names.into_iter().filter(|n| !have.contains(n)) {
            let Some(def) = self.sched.def(&name) else {
                continue;
            };
            if schedulable(def, self.ws.settings.has_providers) {
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
        due
    }

    /// `loops run --once`: what is due now, and the main session's waiting handoffs,
    /// until every run and the wake have ended (retries included), telling progress.
    async fn run_once(&mut self, opts: &DaemonOptions, inputs: &mut Inputs, worker: &JobWorker) {
        let due = self.once_runs(opts.all);
        self.queue(due);
        // Handoffs waiting in the inbox get one pass of the main session too.
        self.ring(WakeKind::Handoffs);
        let mut done = 0usize;
        let mut last_said = std::time::Instant::now();
        loop {
            self.dispatch_ready(self.clock.now());
            if self.lane.in_flight() == 0 && self.lane.waiting() == 0 && !self.bell.wake_running() {
                return;
            }
            let mut wait = self.wait_until(self.lane.next_due(), Duration::from_secs(3600));
            if let Some(say) = &opts.progress {
                if last_said.elapsed() >= PROGRESS_EVERY && self.lane.in_flight() > 0 {
                    say(&self.progress_waiting(done));
                    last_said = std::time::Instant::now();
                }
                wait = wait.min(PROGRESS_EVERY.saturating_sub(last_said.elapsed()));
            }
            let signalled = tokio::select! {
                Some(f) = inputs.done_rx.recv() => {
                    let record = Box::new(f.rec.clone());
                    self.on_finished(f);
                    done += 1;
                    if let Some(say) = &opts.progress {
                        say(&self.progress_finished(done, record));
                        last_said = std::time::Instant::now();
                    }
                    false
                }
                Some(w) = inputs.wake_rx.recv() => { self.on_wake_done(w, false); false }
                _ = tokio::time::sleep(wait) => false,
                _ = inputs.sigint.recv() => true,
                _ = inputs.sigterm.recv() => true,
            };
            if signalled {
                // Runs are in their own process groups: a signal to us does not reach
                // them, so stop them here rather than leave them running orphaned.
                tracing::warn!(
                    running = self.lane.in_flight(),
                    "signal: stopping running jobs"
                );
                let _ = worker.stop.send(true);
                // What has not started is recorded as not run, not started to be stopped.
                let skipped = self.lane.stop(&self.ctx, &self.sched);
                self.keep(skipped);
                self.lane.cancel_all();
            }
        }
    }

    fn progress_waiting(&self, done: usize) -> Progress {
        Progress::Waiting {
            done,
            total: done + self.lane.in_flight() + self.lane.waiting(),
            running: self.lane.running_for(self.bell.wake_running()),
            queued: self.lane.waiting(),
        }
    }

    fn progress_finished(&self, done: usize, record: Box<RunRecord>) -> Progress {
        Progress::Finished {
            done,
            total: done + self.lane.in_flight() + self.lane.waiting(),
            record,
            running: self.lane.running_for(self.bell.wake_running()),
        }
    }

    /// How long to sleep until `next` (by the injected clock), at most `longest`.
    fn wait_until(&self, next: Option<DateTime<Utc>>, longest: Duration) -> Duration {
        next.map(|t| (t - self.clock.now()).to_std().unwrap_or_default())
            .unwrap_or(longest)
    }

    /// After a `--once` pass: queued jobs that were ready are drained too, then the MCP
    /// servers stop and held records are written.
    async fn finish_once(&mut self, inputs: &mut Inputs, worker: JobWorker) {
        let mut task = worker.task;
        let finished = tokio::select! {
            _ = &mut task => true,
            _ = inputs.sigint.recv() => false,
            _ = inputs.sigterm.recv() => false,
        };
        if !finished {
            let _ = worker.stop.send(true);
            let _ = task.await;
        }
        loops_agent::mcp_client::McpPool::shutdown_all().await;
        self.flush_held();
    }

    /// The long-running daemon: plans slots, starts runs and wakes, follows edits, until
    /// a signal or a stop request; returns why it stopped.
    async fn serve(
        &mut self,
        opts: &DaemonOptions,
        inputs: &mut Inputs,
        lock: &DaemonLock,
    ) -> &'static str {
        tracing::info!(
            workspace = %self.ws.root.display(),
            loops = self.sched.loop_names().count(),
            "loops daemon started"
        );
        // Records, transcripts and finished jobs are pruned at start and hourly (loops.yaml
        // `records:`), so months of running do not fill the disk.
        let pruner = loops_core::retention::spawn(self.ws.clone());
        // loops.yaml `remote:` (read live, so adding it needs no restart).
        let syncer = self.ctx.committer.clone().map(|c| {
            crate::engine::syncer::spawn(
                self.live.subscribe(),
                c,
                self.sync_poke.clone(),
                crate::engine::syncer::Changed {
                    events: self.watch_tx.clone(),
                    hold: self.pull_hold.clone(),
                },
            )
        });
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
        self.ring(WakeKind::Handoffs);
        let mut next_touch = tokio::time::Instant::now() + HEARTBEAT;
        let reason = loop {
            // Runs that ended are accounted first, so a loop whose run just finished is not
            // seen as busy (and its next slot wrongly skipped).
            while let Ok(f) = inputs.done_rx.try_recv() {
                self.on_finished(f);
            }
            if tokio::time::Instant::now() >= next_touch {
                next_touch = tokio::time::Instant::now() + HEARTBEAT;
                lock.touch();
                // A trigger whose nudge was lost (a watcher overflow) waits at most this.
                self.take_submitted();
            }
            let wait = self
                .tick(inputs)
                .min(next_touch.saturating_duration_since(tokio::time::Instant::now()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    if self.fallback_rescan.is_some() {
                        // No watcher: look at everything it would have told us about.
                        self.on_paths_changed(&[PathBuf::new()]);
                    }
                }
                Some(batch) = inputs.watch_rx.recv() => {
                    let mut batch = batch;
                    while let Ok(more) = inputs.watch_rx.try_recv() { batch.extend(more); }
                    self.on_paths_changed(&batch);
                    self.pull_hold.applied(&batch, &self.ws.root);
                }
                Some(f) = inputs.done_rx.recv() => self.on_finished(f),
                Some(w) = inputs.wake_rx.recv() => self.on_wake_done(w, true),
                Some((name, c, at)) = inputs.claim_rx.recv() => {
                    inputs.claiming -= 1;
                    let runs = self.sched.accept(&name, c, at);
                    self.queue(runs);
                }
                _ = inputs.sigint.recv() => { tracing::info!("SIGINT: stopping"); break "SIGINT"; }
                _ = inputs.sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break "SIGTERM"; }
                _ = &mut stopped => { tracing::info!("stop requested"); break "stop requested"; }
            }
        };
        pruner.abort();
        if let Some(s) = syncer {
            s.abort();
        }
        reason
    }

    /// One pass of the daemon's loop: held records written, due slots claimed, ready runs
    /// started, the doorbell's timers; returns how long to sleep.
    fn tick(&mut self, inputs: &mut Inputs) -> Duration {
        // Records a refusing disk kept back are written as soon as it takes them.
        let held = !self.flush_held();
        let now = self.clock.now();
        self.claim_due(inputs, now);
        self.dispatch_ready(now);
        self.bell.on_timers(&self.ctx, now);
        let next = [
            self.sched.next_wake().map(|t| t - chrono_ms(CLAIM_LEAD)),
            self.lane.next_due(),
            self.bell.next_timer(),
        ]
        .into_iter()
        .flatten()
        .min();
        let mut wait = self.wait_until(next, Duration::from_secs(24 * 3600));
        if let Some(f) = self.fallback_rescan {
            wait = wait.min(f);
        }
        if held {
            wait = wait.min(Duration::from_secs(1));
        }
        wait
    }

    /// A slot is claimed (its watermark written) a moment before it fires, so that at the
    /// fire time starting the run is all that is left to do. The claims go in parallel on
    /// the blocking pool: a hundred loops due in the same second must not wait in line
    /// behind each other's writes.
    fn claim_due(&mut self, inputs: &mut Inputs, now: DateTime<Utc>) {
        let batch = self.sched.take_due_by(now + chrono_ms(CLAIM_LEAD));
        if batch.is_empty() {
            return;
        }
        for (def, due_at, fresh) in batch {
            let store = self.ctx.store.clone();
            let tx = inputs.claim_tx.clone();
            inputs.claiming += 1;
            let at = due_at.max(now);
            tokio::task::spawn_blocking(move || {
                let c = claim_with(&store, &def, at, false, fresh.as_ref());
                let _ = tx.send((def.name, c, at));
            });
        }
        // One flush for the whole batch of claims, off the runs' critical path.
        let dir = self.ctx.store.dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = loops_core::fsutil::sync_filesystem(&dir) {
                tracing::warn!("cannot flush loop state to disk: {e}");
            }
        });
    }

    /// Shutdown: no new runs; running ones get the grace period, then are stopped. Slots
    /// claimed a moment ago are recorded, not silently dropped. Running jobs get the same
    /// grace from their worker, then go back to waiting.
    async fn shut_down(&mut self, inputs: &mut Inputs, worker: JobWorker) {
        let _ = worker.stop.send(true);
        while inputs.claiming > 0 {
            let Some((name, c, at)) = inputs.claim_rx.recv().await else {
                break;
            };
            inputs.claiming -= 1;
            let runs = self.sched.accept(&name, c, at);
            self.queue(runs);
        }
        // One grace for everything that started (runs, the main session), counted from
        // now; what has not started is recorded at once and gets none: a hundred runs
        // queued behind the concurrency limit must not each start, only to be stopped.
        let grace = self.ws.settings.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let skipped = self.lane.stop(&self.ctx, &self.sched);
        let mut not_started = skipped.len();
        self.keep(skipped);
        not_started += self.stop_runs(inputs, grace, deadline).await;
        if not_started > 0 {
            tracing::info!(
                "{not_started} queued run(s) that had not started were recorded as skipped: {STOPPING}"
            );
        }
        self.stop_wake(inputs, deadline).await;
        if let Err(e) = worker.task.await {
            tracing::error!("the job worker ended badly: {e}");
        }
        // Nothing uses the MCP servers any more: they stop with the daemon.
        loops_agent::mcp_client::McpPool::shutdown_all().await;
        let flushed = self.flush_held();
        self.bell.finish_commits(&self.ctx, grace).await;
        if !flushed {
            tracing::error!("the disk still refuses writes: run records and daemon events held in memory are lost with this process");
        }
    }

    /// Waits until `deadline` for the running runs, then stops them; returns how many
    /// ended as not started (they were still waiting for a permit).
    async fn stop_runs(
        &mut self,
        inputs: &mut Inputs,
        grace: Duration,
        deadline: tokio::time::Instant,
    ) -> usize {
        let mut not_started = 0usize;
        if self.lane.in_flight() == 0 {
            return 0;
        }
        tracing::info!(
            running = self.lane.begun(),
            "waiting up to {} for running jobs",
            loops_core::duration::format_duration(grace)
        );
        while self.lane.in_flight() > 0 {
            tokio::select! {
                Some(f) = inputs.done_rx.recv() => {
                    if f.rec.outcome == Outcome::Skipped && f.rec.note.as_deref() == Some(STOPPING) {
                        not_started += 1;
                    }
                    self.on_finished(f)
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if self.lane.in_flight() > 0 {
            tracing::warn!(
                running = self.lane.in_flight(),
                "grace period over: stopping running jobs"
            );
            self.lane.cancel_all();
            while self.lane.in_flight() > 0 {
                match inputs.done_rx.recv().await {
                    Some(f) => self.on_finished(f),
                    None => break,
                }
            }
        }
        not_started
    }

    /// The main session gets the rest of the grace, then is stopped.
    async fn stop_wake(&mut self, inputs: &mut Inputs, deadline: tokio::time::Instant) {
        let Some(cancel) = self.bell.take_running() else {
            return;
        };
        tracing::info!(
            "waiting up to {} (the rest of the grace) for the main session",
            loops_core::duration::format_duration(
                deadline.saturating_duration_since(tokio::time::Instant::now())
            )
        );
        let done = tokio::time::timeout_at(deadline, inputs.wake_rx.recv()).await;
        if done.is_err() {
            let _ = cancel.send(true);
            let _ = inputs.wake_rx.recv().await;
        }
    }

    /// Writes what a refusing disk kept back (run records, daemon events, markers of
    /// finished runs); returns whether nothing is held any more.
    fn flush_held(&mut self) -> bool {
        let records = self.ctx.runlog.flush();
        let markers = self.ctx.running.flush();
        let events = self.journal.flush();
        let completions = self.bell.retry_completions(&self.ctx);
        records && markers && events && completions
    }

    /// A trigger is a submit while the daemon serves: each run submitted and not yet
    /// claimed is claimed and starts now, in the run lane with every other run, with the
    /// loop's definition read from its folder (a trigger may run a loop the scheduler
    /// does not plan).
    fn take_submitted(&mut self) {
        let claimed = match self.ctx.running.claim_submitted() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot claim the triggered runs: {e}");
                return;
            }
        };
        let now = self.clock.now();
        for s in claimed {
            let m = s.marker;
            let due = DueRun {
                run_id: m.run_id.clone(),
                loop_name: m.loop_name.clone(),
                trigger: Trigger::Manual,
                slot: None,
                attempt: 1,
                not_before: now,
            };
            let def = crate::operator::find_loop(&self.ws, &m.loop_name)
                .and_then(|e| crate::operator::loop_def(&e));
            match def {
                Ok(def) => {
                    tracing::info!(loop_name = %m.loop_name, run = %m.run_id, "triggered: the run starts now");
                    self.lane.queue_submitted(due, def, s.follow);
                }
                Err(e) => self.refuse_submitted(&m, now, &e.to_string()),
            }
        }
        self.dispatch_ready(now);
    }

    /// A triggered run whose loop cannot be read any more: recorded failed, with why.
    fn refuse_submitted(
        &mut self,
        m: &loops_core::runs::RunInProgress,
        now: DateTime<Utc>,
        why: &str,
    ) {
        let mut rec = RunRecord::decision(
            &m.loop_name,
            &m.trigger,
            None,
            now,
            Outcome::Failed,
            why.into(),
        );
        rec.run_id = m.run_id.clone();
        rec.error = Some(why.to_string());
        if let Err(e) = self.ctx.runlog.append(&rec) {
            tracing::error!("{e}");
        }
        self.ctx.running.remove(&m.run_id);
        self.keep([rec]);
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
        let signals = self.ws.layout().signals_dir();
        let inbox = self.ws.inbox_dir();
        let settings_file = self.ws.root.join("loops.yaml");
        let mut domains = false;
        let mut handoffs = false;
        let mut settings = false;
        let mut submitted = false;
        for p in paths {
            if p.as_os_str().is_empty() {
                settings = true;
                submitted = true;
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
                    if nudge.file_name() == loops_core::remote::SYNC_NUDGE {
                        self.sync_poke.notify_one();
                        let _ = std::fs::remove_file(&p);
                        continue;
                    }
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
                // A nudge from another process that changed this loop's state, or
                // submitted a run of it.
                if rest.as_os_str() == loops_core::remote::SYNC_NUDGE {
                    if p.exists() {
                        self.sync_poke.notify_one();
                        let _ = std::fs::remove_file(p);
                    }
                    continue;
                }
                if let Some(name) = rest.to_str() {
                    if p.exists() {
                        self.sched.refresh(name);
                        let _ = std::fs::remove_file(p);
                    }
                }
                submitted = true;
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
            self.ring(WakeKind::Handoffs);
        }
        if submitted {
            self.take_submitted();
        }
    }
}

impl Daemon {
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
            &[(dir, loops_core::watcher::Mode::Flat)],
            Duration::from_millis(2),
            &self.watch_tx,
            &mut self.fallback_rescan,
        );
    }

    /// An edit of loops.yaml with errors: refused whole, said once per distinct edit.
    fn refuse_settings(&mut self, new: &Workspace) {
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
        if said {
            return;
        }
        tracing::error!(
            "loops.yaml was edited, but the edit is not applied: the last good settings stay in force until it is fixed (`loops check` shows the same):\n  {}",
            errors.join("\n  ").replace('\n', "\n  ")
        );
        self.journal
            .record("settings_rejected", serde_json::json!({ "errors": errors }));
        self.settings_report.rejected = Some(loops_core::workspace::RejectedEdit {
            at: Utc::now(),
            errors,
        });
        self.settings_report.write(&self.ws);
    }

    /// Reads loops.yaml again after an edit. A good edit is in force from now on (new
    /// runs, wakes and jobs see it); one with errors is refused whole and the last good
    /// settings stay, said once per distinct edit in the log, the journal and `loops
    /// status`. Settings that only a restart can change are named. Returns whether the
    /// settings changed.
    fn reload_settings(&mut self) -> bool {
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
            self.refuse_settings(&new);
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
        let had_main = self.bell.has_main();
        self.bell
            .set_main(new.settings.main.clone(), self.sched.now());
        if had_main != self.bell.has_main() {
            self.arm_inbox_watcher();
        }
        if !self.bell.has_main() && !self.bell.inbox().pending().is_empty() {
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
        self.journal.record(
            "settings_reloaded",
            serde_json::json!({ "restart_needed": waiting }),
        );
        self.settings_report.applied_at = Some(Utc::now());
        self.settings_report.rejected = None;
        self.settings_report.restart_needed = waiting;
        self.settings_report.write(&self.ws);
        true
    }
}

/// Whether a changed path can change what loops exist or how they are configured: a
/// folder appearing or going directly under domains/, or a config.yaml / prompt.md. A
/// loop rewriting its own state.md must not make the daemon re-read every config.
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
    dirs: &[(PathBuf, loops_core::watcher::Mode)],
    debounce: Duration,
    tx: &mpsc::UnboundedSender<loops_core::watcher::Batch>,
    fallback_rescan: &mut Option<Duration>,
) -> Option<loops_core::watcher::Watcher> {
    let report = ws.layout().watcher_report();
    match loops_core::watcher::watch_and_report(dirs, debounce, tx.clone(), Some(report)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!("{}", e.explained());
            *fallback_rescan = Some(loops_core::watcher::POLL_EVERY);
            None
        }
    }
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}
