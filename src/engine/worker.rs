//! The job runner: picks ready jobs off the queue (lowest priority number first, then
//! oldest), leases them, runs them in their lane (shell or agent) and records how they
//! ended. The daemon runs one of these; `--follow` with no daemon runs one for a single
//! job and its children.
//!
//! It keeps an index of the live jobs in memory, rebuilt from disk at start and
//! refreshed from watcher events on `.loops/jobs/` (events are hints: each one re-reads
//! the file it names), with a heartbeat sweep as the safety net. Requests for a running
//! job (cancel, pause, resume) arrive the same way, as changes to its file.

use crate::engine::budget::{self, RunBudget};
use chrono::{DateTime, Utc};
use loops_agent::agent_loop::{BeforeTurn, End, TurnHooks, TurnModel};
use loops_agent::context;
use loops_agent::model::{Message, SystemPart, Usage};
use loops_agent::sandbox::{Sandbox, Scope};
use loops_agent::session::{
    Limits, ModelChoice, SessionRun, SessionSpec, TimeLimit, TranscriptSpec,
};
use loops_agent::tools::ToolEnv;
use loops_agent::transcript::Transcript;
use loops_core::clock::Clock;
use loops_core::exec::{self, ExecSpec};
use loops_core::guard::Guard;
use loops_core::history::Committer;
use loops_core::jobs::job::*;
use loops_core::jobs::params::{AgentParams, Command, JobParams, ShellParams};
use loops_core::jobs::queue::{self, ClaimOptions, Holder, QueueError, RunEnd};
use loops_core::jobs::store::{JobStore, NeedsFlush};
use loops_core::tool_names::ISOLATED_DEFAULT;
use loops_core::workspace::Workspace;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

/// Output of a followed job, as it arrives.
pub type Live = exec::Live;

/// Default limits when a job names none.
pub const SHELL_TIMEOUT: Duration = Duration::from_secs(3600);
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(600);
pub const AGENT_MAX_TURNS: u32 = 20;
/// How often the worker re-reads the whole queue and sweeps for dead runners.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Whether this process may run shell jobs.
pub fn shell_allowed(ws: &Workspace) -> bool {
    ws.settings.allow_shell_jobs
        || loops_core::secrets::var("LOOPS_ALLOW_SHELL_JOBS")
            .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// Why a shell job is refused here.
pub fn shell_refusal() -> String {
    "shell jobs are turned off: start the daemon with LOOPS_ALLOW_SHELL_JOBS=1, or set `allow_shell_jobs: true` in loops.yaml".into()
}

#[derive(Clone)]
pub struct WorkerConfig {
    pub ws: Arc<Workspace>,
    pub committer: Option<Committer>,
    pub clock: Arc<dyn Clock>,
    pub permits: Arc<Semaphore>,
    pub allow_shell: bool,
    /// How long running jobs get to finish when the worker stops.
    pub grace: Duration,
    /// The daemon's settings as loops.yaml is edited: jobs started after a good edit run
    /// with it (`allow_shell_jobs`, providers, MCP servers).
    pub live: Option<watch::Receiver<Arc<Workspace>>>,
}

/// What a worker takes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything, until stopped (the daemon).
    Serve,
    /// What is ready now, then exit when nothing is running (`loops run --once`).
    Drain,
    /// One job and its descendants, until it has ended (`--follow` with no daemon).
    Only(JobId),
}

/// A request to a running job's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctl {
    Run,
    Pause,
    Resume,
    Cancel,
    /// The worker is stopping: end now, the job goes back to waiting.
    Shutdown,
}

#[derive(Debug, Clone)]
struct Entry {
    state: JobState,
    priority: i32,
    run_at: Option<DateTime<Utc>>,
    parent: Option<JobId>,
    /// Delayed by a hold (the day's budget), not a back-off.
    held: bool,
}

/// The index's waiting and delayed jobs in the order they run, and the delayed ones by
/// when they are due: picking the next jobs reads a few entries, not the whole index.
#[derive(Default)]
struct Queued {
    order: BTreeSet<(i32, JobId)>,
    due: BTreeSet<(DateTime<Utc>, JobId)>,
}

impl Queued {
    fn add(&mut self, id: JobId, e: &Entry) {
        if matches!(e.state, JobState::Waiting | JobState::Delayed) {
            self.order.insert((e.priority, id));
            if let (JobState::Delayed, Some(t)) = (e.state, e.run_at) {
                self.due.insert((t, id));
            }
        }
    }

    fn remove(&mut self, id: JobId, e: &Entry) {
        self.order.remove(&(e.priority, id));
        if let Some(t) = e.run_at {
            self.due.remove(&(t, id));
        }
    }
}

struct Running {
    ctl: watch::Sender<Ctl>,
}

struct Done {
    id: JobId,
    parent: Option<JobId>,
    /// The job as its end was recorded, when it was.
    job: Option<Job>,
}

struct Worker {
    cfg: WorkerConfig,
    store: JobStore,
    mode: Mode,
    index: HashMap<JobId, Entry>,
    /// The waiting and delayed ones of `index`, ordered.
    queued: Queued,
    running: HashMap<JobId, Running>,
    done_tx: mpsc::UnboundedSender<Done>,
    ledger: Ledger,
    live: Option<Live>,
    /// In `Mode::Only`: whether this worker started the job it is for.
    ran_target: bool,
}

/// What a worker did, said when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerEnded {
    /// In `Mode::Only(id)`: this worker started job `id` at least once (else another
    /// worker, a daemon's, claimed it first).
    pub ran_target: bool,
}

/// Runs the worker until `stop` flips (or, in the other modes, until its work is done).
pub async fn run(
    cfg: WorkerConfig,
    mode: Mode,
    mut stop: watch::Receiver<bool>,
    live: Option<Live>,
) -> WorkerEnded {
    let store = JobStore::new(&cfg.ws);
    if let Err(e) = loops_core::fsutil::create_dir_all(store.dir()) {
        tracing::error!("cannot create {}: {e}", store.dir().display());
        return WorkerEnded::default();
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (ledger, ledger_task) = Ledger::open(store.clone());
    let mut w = Worker {
        cfg: cfg.clone(),
        store: store.clone(),
        mode,
        index: HashMap::new(),
        queued: Queued::default(),
        running: HashMap::new(),
        done_tx,
        ledger,
        live,
        ran_target: false,
    };
    // The watch begins before the first read of the queue: a job submitted while the
    // worker starts is then either read now or told by an event, never missed until the
    // next rescan (a submit right after "daemon started" waited 30 s for it).
    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel();
    let _watcher = watch_queue(&cfg, &store, mode, watch_tx);
    w.sweep().await;
    w.reload_all();
    let rescan = if _watcher.is_some() {
        SWEEP_EVERY
    } else {
        Duration::from_secs(1)
    };
    let mut next_sweep = Instant::now() + rescan;

    loop {
        while let Ok(d) = done_rx.try_recv() {
            w.on_done(d);
        }
        if *stop.borrow() {
            break;
        }
        let starved = w.dispatch().await;
        let mode = w.mode;
        match mode {
            Mode::Drain if w.running.is_empty() && !w.has_ready() => break,
            Mode::Only(t) if w.running.is_empty() && w.target_ended(t) => break,
            _ => {}
        }
        let wait = w.wait(next_sweep);
        let permits = cfg.permits.clone();
        tokio::select! {
            // Dispatch follows a good edit of loops.yaml at once (a changed budget lifts
            // holds).
            _ = settings_changed(w.cfg.live.clone()) => {}
            Some(batch) = watch_rx.recv() => {
                let mut batch = batch;
                while let Ok(more) = watch_rx.try_recv() { batch.extend(more); }
                w.on_paths(&batch);
            }
            Some(d) = done_rx.recv() => w.on_done(d),
            p = permits.acquire_owned(), if starved => drop(p),
            _ = tokio::time::sleep(wait) => {
                if Instant::now() >= next_sweep {
                    w.sweep().await;
                    w.reload_all();
                    next_sweep = Instant::now() + rescan;
                }
            }
            _ = stop.changed() => {}
        }
    }

    w.stop_running(&mut done_rx).await;
    let ended = WorkerEnded {
        ran_target: w.ran_target,
    };
    // What the ledger still holds (a started job's note) is written before returning.
    drop(w);
    let _ = ledger_task.await;
    ended
}

/// Resolves when a good edit of loops.yaml is applied; never, without a settings feed (or
/// once the feed is gone).
async fn settings_changed(live: Option<watch::Receiver<Arc<Workspace>>>) {
    if let Some(mut rx) = live {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// Watches the queue's folder for submits and edits; when the watcher cannot start, says
/// so (the worker then rescans every second).
fn watch_queue(
    cfg: &WorkerConfig,
    store: &JobStore,
    mode: Mode,
    tx: mpsc::UnboundedSender<loops_core::watcher::Batch>,
) -> Option<loops_core::watcher::Watcher> {
    match loops_core::watcher::watch_and_report(
        &[(store.dir().to_path_buf(), loops_core::watcher::Mode::Flat)],
        Duration::from_millis(2),
        tx,
        // Only the daemon's problems are shown by `loops status`; a CLI following one
        // job must not replace the daemon's report with its own.
        matches!(mode, Mode::Serve).then(|| cfg.ws.layout().watcher_report()),
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            // The job queue does its own rescans (every second here), not POLL_EVERY.
            let help = e.help().map(|h| format!("; {h}")).unwrap_or_default();
            tracing::error!("{e}{help}; until then the job queue is rescanned every second");
            None
        }
    }
}

impl Worker {
    /// Stopping: running jobs get the grace period to end on their own, then are told to
    /// stop; they go back to waiting without using an attempt.
    async fn stop_running(&mut self, done_rx: &mut mpsc::UnboundedReceiver<Done>) {
        if self.running.is_empty() {
            return;
        }
        let deadline = Instant::now() + self.cfg.grace;
        while !self.running.is_empty() {
            tokio::select! {
                Some(d) = done_rx.recv() => self.on_done(d),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        for r in self.running.values() {
            let _ = r.ctl.send(Ctl::Shutdown);
        }
        while !self.running.is_empty() {
            match done_rx.recv().await {
                Some(d) => self.on_done(d),
                None => break,
            }
        }
    }

    async fn sweep(&mut self) {
        let store = self.store.clone();
        let now = self.cfg.clock.now();
        let journal = loops_core::journal::Journal::open(self.cfg.ws.layout().root());
        // Journaled before the requeues are written, as a start's are: a job that runs
        // again because its runner died while this daemon lived is said too.
        let r = tokio::task::spawn_blocking(move || {
            queue::sweep_reporting(&store, now, |s| {
                loops_core::journal::report_swept(&journal, s);
            })
        })
        .await;
        match r {
            Ok(Ok(s)) => {
                for (id, why) in &s.requeued {
                    tracing::warn!(job = id, "requeued: {why}");
                }
                for (id, why) in &s.dead {
                    tracing::error!(job = id, "dead: {why}");
                }
                for o in &s.other {
                    tracing::info!("job sweep: {o}");
                }
            }
            Ok(Err(e)) => tracing::error!("job sweep: {e}"),
            Err(e) => tracing::error!("job sweep: {e}"),
        }
    }

    fn reload_all(&mut self) {
        let (jobs, errors) = self.store.live_jobs();
        for e in errors {
            tracing::warn!("{e}");
        }
        self.index.clear();
        self.queued = Queued::default();
        for j in jobs {
            self.note(&j);
        }
    }

    fn note(&mut self, j: &Job) {
        let entry = (!j.state.is_terminal()).then_some(Entry {
            state: j.state,
            priority: j.priority,
            run_at: j.run_at,
            parent: j.parent,
            held: j.held.is_some(),
        });
        self.set(j.id, entry);
    }

    /// Puts `id` in the index as `entry`, or takes it out (`None`).
    fn set(&mut self, id: JobId, entry: Option<Entry>) {
        if let Some(old) = self.index.remove(&id) {
            self.queued.remove(id, &old);
        }
        if let Some(e) = entry {
            self.queued.add(id, &e);
            self.index.insert(id, e);
        }
    }

    /// How long the loop may sleep: until the next sweep, or the next delayed job's time.
    fn wait(&self, next_sweep: Instant) -> Duration {
        let wait = next_sweep.saturating_duration_since(Instant::now());
        match self.next_delayed() {
            Some(t) => wait.min((t - self.cfg.clock.now()).to_std().unwrap_or_default()),
            None => wait,
        }
    }

    /// When the first delayed job of this worker's is due.
    fn next_delayed(&self) -> Option<DateTime<Utc>> {
        self.queued
            .due
            .iter()
            .find(|(_, id)| self.in_scope(*id))
            .map(|(t, _)| *t)
    }

    fn reload(&mut self, id: JobId) -> Option<Job> {
        match self.store.get(id) {
            Ok(Some(j)) => {
                self.note(&j);
                Some(j)
            }
            Ok(None) => {
                self.set(id, None);
                None
            }
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    fn on_paths(&mut self, paths: &[PathBuf]) {
        if paths.iter().any(|p| p.as_os_str().is_empty()) {
            self.reload_all();
        }
        let mut ids: Vec<JobId> = paths
            .iter()
            .filter_map(|p| self.store.id_of_live_path(p))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let job = self.reload(id);
            if let (Some(r), Some(j)) = (self.running.get(&id), job) {
                let want = match j.control {
                    Some(Control::Cancel) => Some(Ctl::Cancel),
                    Some(Control::Pause) => Some(Ctl::Pause),
                    Some(Control::Resume) => Some(Ctl::Resume),
                    None => None,
                };
                if let Some(c) = want {
                    if *r.ctl.borrow() != c {
                        let _ = r.ctl.send(c);
                    }
                }
            }
        }
    }

    fn on_done(&mut self, d: Done) {
        self.running.remove(&d.id);
        // The job as its end wrote it: no need to read it back.
        match d.job {
            Some(j) => self.note(&j),
            None => {
                self.reload(d.id);
            }
        }
        if let Some(p) = d.parent {
            self.reload(p);
        }
    }

    /// Whether `id` is work for this worker.
    fn in_scope(&self, id: JobId) -> bool {
        match self.mode {
            Mode::Only(t) => {
                let mut cur = Some(id);
                let mut hops = 0;
                while let Some(c) = cur {
                    if c == t {
                        return true;
                    }
                    hops += 1;
                    if hops > 64 {
                        return false;
                    }
                    cur = self.index.get(&c).and_then(|e| e.parent);
                }
                false
            }
            _ => true,
        }
    }

    /// The first `limit` ready jobs, in the order they run (lowest priority number, then
    /// oldest): read off the queued set in order, never the whole index.
    fn ready(&self, limit: usize) -> Vec<JobId> {
        let now = self.cfg.clock.now();
        self.queued
            .order
            .iter()
            .filter(|(_, id)| {
                !self.running.contains_key(id)
                    && self.index.get(id).is_some_and(|e| match e.state {
                        JobState::Waiting => true,
                        JobState::Delayed => e.run_at.is_none_or(|t| t <= now),
                        _ => false,
                    })
                    && self.in_scope(*id)
            })
            .map(|(_, id)| *id)
            .take(limit)
            .collect()
    }

    fn has_ready(&self) -> bool {
        !self.ready(1).is_empty()
    }

    fn target_ended(&mut self, t: JobId) -> bool {
        if self.only_holds_left() {
            // Held for the day: nothing here runs it before then (the daemon will).
            return true;
        }
        if self.index.contains_key(&t) {
            return false;
        }
        match self.store.get(t) {
            Ok(Some(j)) => j.state.is_terminal() || j.state == JobState::Paused,
            _ => true,
        }
    }

    /// Nothing in this worker's scope can run before a hold ends: each live job in it is
    /// held for the day's budget, or waits for children (a fan-out's aggregator).
    fn only_holds_left(&self) -> bool {
        let mut held = false;
        for (id, e) in &self.index {
            if !self.in_scope(*id) {
                continue;
            }
            match (e.state, e.held) {
                (JobState::Delayed, true) => held = true,
                (JobState::WaitingChildren, _) => {}
                _ => return false,
            }
        }
        held
    }

    /// Starts ready jobs while there are permits. Returns true when ready jobs wait for
    /// a permit.
    async fn dispatch(&mut self) -> bool {
        self.follow_settings();
        loop {
            // A few more than can start: the claim goes on past the ones it cannot have.
            let ready = self.ready(self.cfg.permits.available_permits() + 16);
            if ready.is_empty() {
                return false;
            }
            let permits = self.free_permits(ready.len());
            if permits.is_empty() {
                return true;
            }
            let claims = self
                .ledger
                .claim(
                    ready,
                    permits.len(),
                    self.cfg.allow_shell,
                    self.cfg.clock.now(),
                )
                .await;
            let claims = match claims {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("cannot claim jobs: {e}");
                    return false;
                }
            };
            let started = !claims.claimed.is_empty();
            // Every one missed leaves the ready set, so this loop ends.
            let missed = !claims.missed.is_empty() || !claims.failed.is_empty();
            self.settle_misses(&claims);
            // Unused permits go back as they are dropped.
            for (job, permit) in claims.claimed.into_iter().zip(permits) {
                self.note(&job);
                self.start(job, permit);
            }
            if !started && !missed {
                return false;
            }
        }
    }

    /// As many free permits as there are, up to `n`.
    fn free_permits(&self, n: usize) -> Vec<tokio::sync::OwnedSemaphorePermit> {
        std::iter::from_fn(|| self.cfg.permits.clone().try_acquire_owned().ok())
            .take(n)
            .collect()
    }

    /// Ready jobs a claim did not get.
    fn settle_misses(&mut self, claims: &Claims) {
        for &id in &claims.missed {
            // Taken by another worker, refused, or not yet visible.
            let j = self.reload(id);
            if j.is_none_or(|j| j.ready(self.cfg.clock.now())) {
                // A fan-out child whose parent is not written yet: leave it for the
                // event that writes the parent (or one that cannot be read now).
                self.set(id, None);
            }
        }
        for (id, e) in &claims.failed {
            tracing::error!(job = id, "cannot claim: {e}");
            self.set(*id, None);
        }
    }

    /// Takes up the settings of a good edit of loops.yaml, if there was one.
    fn follow_settings(&mut self) {
        let Some(rx) = self.cfg.live.as_mut() else {
            return;
        };
        if rx.has_changed().unwrap_or(false) {
            let ws = rx.borrow_and_update().clone();
            let budget_changed = ws.settings.budget != self.cfg.ws.settings.budget;
            self.cfg.allow_shell = shell_allowed(&ws);
            self.cfg.ws = ws;
            if budget_changed {
                self.lift_holds();
            }
        }
    }

    /// loops.yaml's budget changed: the jobs held for the old one are looked at again
    /// (and held again at once, before any request, if the day is still spent).
    fn lift_holds(&mut self) {
        let held: Vec<JobId> = self
            .index
            .iter()
            .filter(|(_, e)| e.held)
            .map(|(id, _)| *id)
            .collect();
        let now = self.cfg.clock.now();
        for id in held {
            match queue::lift_hold(
                &self.store,
                id,
                now,
                "its hold lifted: loops.yaml's budget changed",
            ) {
                Ok(j) => self.note(&j),
                Err(e) => tracing::warn!(job = id, "cannot lift the job's budget hold: {e}"),
            }
        }
    }

    fn start(&mut self, job: Job, permit: tokio::sync::OwnedSemaphorePermit) {
        let (ctl_tx, ctl_rx) = watch::channel(Ctl::Run);
        self.running.insert(job.id, Running { ctl: ctl_tx });
        let cfg = self.cfg.clone();
        let store = self.store.clone();
        let done = self.done_tx.clone();
        let ledger = self.ledger.clone();
        let live = match self.mode {
            Mode::Only(t) if t == job.id => {
                self.ran_target = true;
                self.live.clone()
            }
            _ => None,
        };
        tracing::info!(job = job.id, kind = %job.kind, name = %job.name, "job started");
        tokio::spawn(async move {
            let id = job.id;
            let parent = job.parent;
            let t0 = std::time::Instant::now();
            let (end, tokens) = match job.kind {
                // Never ready to a worker (Job::ready), so never claimed by one.
                JobKind::Loop | JobKind::Wake => (
                    RunEnd::Aborted(format!("a {} job is run by whoever made it", job.kind)),
                    Tokens::default(),
                ),
                // Read as the queue read them when the job was submitted; a job file
                // changed since (by hand, or by another version) fails for good.
                _ => match job.typed_params() {
                    Err(e) => (permanent_failure(e), Tokens::default()),
                    Ok(JobParams::Shell(p)) => {
                        run_shell(&cfg, &store, &ledger, &job, &p, ctl_rx, live).await
                    }
                    Ok(JobParams::Agent(p)) => {
                        run_agent(&cfg, &store, &job, &p, ctl_rx, live).await
                    }
                },
            };
            let ms = t0.elapsed().as_millis() as u64;
            let now = cfg.clock.now();
            let label = match &end {
                RunEnd::Completed(_) => "completed".to_string(),
                RunEnd::Failed { error, .. } => format!("failed: {error}"),
                RunEnd::Cancelled(_) => "cancelled".into(),
                RunEnd::Paused => "paused".into(),
                RunEnd::Aborted(why) => format!("stopped: {why}"),
                RunEnd::Held { why, .. } => format!("held: {why}"),
            };
            // The end is asked of the ledger before the permit goes: the claim the freed
            // place brings is written after it, so a fan-out's `fail_parent` has cancelled
            // the siblings before the next one can be claimed. Then the place under the
            // limit goes to the next job while the end is written and flushed (the limit
            // is on what runs, not on what is being recorded).
            let recorded = ledger.finish(id, end, tokens, ms, now);
            drop(permit);
            // Resolves once the end is on disk (shared with the ends around it).
            let recorded = match recorded.await {
                Ok(j) => {
                    tracing::info!(job = id, state = %j.state, "job run ended: {label}");
                    Some(j)
                }
                Err(e) => {
                    tracing::warn!(
                        job = id,
                        "job run ended ({label}) but could not be recorded: {e}"
                    );
                    None
                }
            };
            let _ = done.send(Done {
                id,
                parent,
                job: recorded,
            });
        });
    }
}

// ---------------------------------------------------------------------------------------
// The ledger: the worker's writes to the queue, combined

/// Writes combined into one transaction, at most.
const LEDGER_BATCH: usize = 256;

/// A write the worker asks of the queue.
enum Op {
    /// Lease up to `want` of `ids`, tried in that order, to this process.
    Claim {
        ids: Vec<JobId>,
        want: usize,
        allow_shell: bool,
        at: DateTime<Utc>,
        reply: oneshot::Sender<Result<Claims, String>>,
    },
    /// A shell job's command started as process group `pgid`.
    Started {
        id: JobId,
        pgid: u32,
        at: DateTime<Utc>,
    },
    /// A run ended (boxed: a result with its output tails is large).
    Finish {
        id: JobId,
        end: Box<RunEnd>,
        tokens: Tokens,
        run_ms: u64,
        at: DateTime<Utc>,
        reply: oneshot::Sender<Result<Job, String>>,
    },
}

impl Op {
    /// About how many files the op writes (spares are made for them before the lock).
    fn files(&self) -> usize {
        match self {
            Op::Claim { want, .. } => *want,
            Op::Started { .. } => 1,
            Op::Finish { .. } => 1,
        }
    }

    /// Tells the asker the op was never made.
    fn refuse(self, why: &str) {
        match self {
            Op::Claim { reply, .. } => drop(reply.send(Err(why.to_string()))),
            Op::Finish { reply, .. } => drop(reply.send(Err(why.to_string()))),
            Op::Started { .. } => {}
        }
    }
}

/// What a claim got.
#[derive(Default)]
struct Claims {
    claimed: Vec<Job>,
    /// Tried and not leased (taken, no longer ready, refused by the gate).
    missed: Vec<JobId>,
    failed: Vec<(JobId, String)>,
}

/// The worker's one writer to the queue. Every claim, start note and end the worker and
/// its running jobs make goes to one task, which makes all that are waiting in one
/// transaction of the queue and one flush: one lock taken (and one `syncfs`) for many
/// jobs, where each op alone would take its own. Nothing is weaker for it: a claim is
/// answered once written (as a claim alone is: it need not be on disk, a power cut only
/// puts the job back to waiting), an end only once the flush that covers it has ended.
#[derive(Clone)]
struct Ledger {
    tx: mpsc::UnboundedSender<Op>,
}

impl Ledger {
    /// The ledger of `store`, and its task, which ends when every handle is dropped.
    fn open(store: JobStore) -> (Ledger, tokio::task::JoinHandle<()>) {
        let st = store.clone();
        Ledger::open_flushing(
            store,
            Arc::new(move |needs| st.flush_writes(needs).map_err(|e| e.to_string())),
        )
    }

    /// [`Ledger::open`], its writes made durable by `flush` (a test puts a disk that
    /// stalls or refuses here).
    fn open_flushing(store: JobStore, flush: Flush) -> (Ledger, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Ledger { tx }, tokio::spawn(keep_ledger(store, flush, rx)))
    }

    async fn claim(
        &self,
        ids: Vec<JobId>,
        want: usize,
        allow_shell: bool,
        at: DateTime<Utc>,
    ) -> Result<Claims, String> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Claim {
            ids,
            want,
            allow_shell,
            at,
            reply,
        });
        rx.await
            .unwrap_or_else(|_| Err("the queue writer stopped".into()))
    }

    fn started(&self, id: JobId, pgid: u32, at: DateTime<Utc>) {
        self.send(Op::Started { id, pgid, at });
    }

    /// Records a run's end: asked for at once (so that it is written before any claim
    /// asked for after this call), the future resolving once it is on disk.
    fn finish(
        &self,
        id: JobId,
        end: RunEnd,
        tokens: Tokens,
        run_ms: u64,
        at: DateTime<Utc>,
    ) -> impl std::future::Future<Output = Result<Job, String>> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Finish {
            id,
            end: Box::new(end),
            tokens,
            run_ms,
            at,
            reply,
        });
        async move {
            rx.await
                .unwrap_or_else(|_| Err("the queue writer stopped".into()))
        }
    }

    fn send(&self, op: Op) {
        if let Err(mpsc::error::SendError(op)) = self.tx.send(op) {
            op.refuse("the queue writer stopped");
        }
    }
}

/// Takes what waits, writes it as one batch, and again, until every handle is gone. A
/// batch's flush runs on its own while the next batch is written: a claim never waits
/// for the disk, and the ends of the batches written meanwhile share one flush.
async fn keep_ledger(store: JobStore, flush: Flush, mut rx: mpsc::UnboundedReceiver<Op>) {
    let (flush_tx, flush_rx) = mpsc::unbounded_channel();
    let flusher = tokio::spawn(keep_flushing(flush, flush_rx));
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while ops.len() < LEDGER_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let st = store.clone();
        match tokio::task::spawn_blocking(move || write_batch(&st, ops)).await {
            Ok(Some(written)) => {
                if let Err(mpsc::error::SendError(w)) = flush_tx.send(written) {
                    w.answer(Err("the queue's flusher stopped".into()));
                }
            }
            Ok(None) => {}
            // Its ops' askers hear of it through their dropped replies.
            Err(e) => tracing::error!("the job queue writer failed: {e}"),
        }
    }
    // The last ends are answered before the ledger is gone.
    drop(flush_tx);
    let _ = flusher.await;
}

/// Flushes what the ledger wrote, one flush for every batch written since the last one
/// began, and answers their ends.
async fn keep_flushing(flush: Flush, mut rx: mpsc::UnboundedReceiver<WrittenEnds>) {
    while let Some(first) = rx.recv().await {
        let mut batches = vec![first];
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        let flush = flush.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let needs = batches.iter().fold(NeedsFlush::NO, |n, b| n.or(b.needs));
            let flushed = flush(needs);
            for b in batches {
                b.answer(flushed.clone());
            }
        })
        .await;
        if let Err(e) = flushed {
            // Its ends' askers hear of it through their dropped replies.
            tracing::error!("the job queue's flusher failed: {e}");
        }
    }
}

/// Makes the writes of the batches it is given durable (one `syncfs` of the queue's
/// file system), or says why not.
type Flush = Arc<dyn Fn(NeedsFlush) -> Result<(), String> + Send + Sync>;

/// Ends written in a batch, to be answered once they are on disk.
struct WrittenEnds {
    needs: NeedsFlush,
    ended: Vec<(EndReply, Result<Job, String>)>,
}

/// Where a run's end is answered: the job as recorded, or why it could not be.
type EndReply = oneshot::Sender<Result<Job, String>>;

impl WrittenEnds {
    /// Answers each end with how the flush that covers it went.
    fn answer(self, flushed: Result<(), String>) {
        for (reply, res) in self.ended {
            // Written but not flushed: not reported as recorded.
            let res = match &flushed {
                Err(e) => Err(e.clone()),
                Ok(()) => res,
            };
            let _ = reply.send(res);
        }
    }
}

/// Makes `ops` in one transaction, in order. Claims are answered as soon as they are
/// written; the ends written are returned, to be answered after the flush.
fn write_batch(store: &JobStore, ops: Vec<Op>) -> Option<WrittenEnds> {
    // A start note followed by its job's end in the same batch is not written: the end
    // replaces it in the same transaction, and the process group has ended with the run.
    let ending: HashSet<JobId> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Finish { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    let files = ops.iter().map(Op::files).sum();
    let mut pending = ops.into_iter();
    let mut ended = Vec::new();
    let r = store.transaction_flushed_later(files, |tx| {
        for op in pending.by_ref() {
            match op {
                Op::Claim {
                    ids,
                    want,
                    allow_shell,
                    at,
                    reply,
                } => {
                    let _ = reply.send(Ok(claim_some(tx, &ids, want, allow_shell, at)));
                }
                Op::Started { id, .. } if ending.contains(&id) => {}
                Op::Started { id, pgid, at } => {
                    if let Err(e) = queue::note_started_in(tx, id, Holder::ThisProcess, pgid, at) {
                        tracing::warn!(job = id, "cannot record its process group: {e}");
                    }
                }
                Op::Finish {
                    id,
                    end,
                    tokens,
                    run_ms,
                    at,
                    reply,
                } => {
                    let r = queue::finish_in(tx, id, Holder::ThisProcess, *end, tokens, run_ms, at);
                    ended.push((reply, r.map_err(|e| e.to_string())));
                }
            }
        }
        Ok::<(), QueueError>(())
    });
    match r {
        Ok(((), needs)) => {
            // Every op was reached: the iterator is empty.
            pending.for_each(|op| op.refuse("not written"));
            Some(WrittenEnds { needs, ended })
        }
        Err(e) => {
            let why = e.to_string();
            for (reply, _) in ended {
                let _ = reply.send(Err(why.clone()));
            }
            // Ops the transaction never reached (it could not take the lock).
            pending.for_each(|op| op.refuse(&why));
            None
        }
    }
}

/// Leases up to `want` of `ids`, in order.
fn claim_some(
    tx: &mut loops_core::jobs::store::Tx,
    ids: &[JobId],
    want: usize,
    allow_shell: bool,
    at: DateTime<Utc>,
) -> Claims {
    let gate = |j: &Job| (j.kind == JobKind::Shell && !allow_shell).then(shell_refusal);
    let opts = ClaimOptions::default();
    let mut out = Claims::default();
    for &id in ids {
        if out.claimed.len() >= want {
            break;
        }
        match queue::claim_in(tx, id, at, &opts, &gate) {
            Ok(Some(c)) => out.claimed.push(c.job),
            Ok(None) => out.missed.push(id),
            Err(e) => out.failed.push((id, e.to_string())),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The shell lane

/// A shell job's command line: a `cmd` runs as `sh -c CMD` (see [`exec::spawnable`]).
fn shell_argv(command: &Command, env: &[(String, String)]) -> Vec<String> {
    match command {
        Command::Line(_) => exec::spawnable(command.argv(), env),
        Command::Argv(argv) => argv.clone(),
    }
}

/// The environment of a shell job: the runner's allow-list, the job's own `env`, and
/// the secrets it names in `inherit`, read from the runner's environment only now.
fn shell_env(ws: &Workspace, job: &Job, p: &ShellParams) -> Result<Vec<(String, String)>, String> {
    let mut env = exec::base_env();
    env.push(("LOOPS_WORKSPACE".into(), ws.root.display().to_string()));
    env.push(("LOOPS_JOB_ID".into(), job.id.to_string()));
    for (k, v) in &p.env {
        env.retain(|(x, _)| x != k);
        env.push((k.clone(), v.clone()));
    }
    for n in &p.inherit {
        match loops_core::secrets::var(n) {
            Ok(v) => {
                // Inherited from the runner: a secret, whatever its name.
                loops_core::secrets::learn([&v]);
                env.retain(|(x, _)| x != n);
                env.push((n.clone(), v));
            }
            Err(_) => {
                return Err(format!(
                    "the job inherits {n}, which is not set in the runner's environment; set it where the daemon starts (or drop it from \"inherit\")"
                ))
            }
        }
    }
    Ok(env)
}

/// A shell job's log, bounded: each attempt writes its first bytes as they arrive and,
/// once past `limits.max_job_log_bytes`, only keeps its last bytes in memory, written at
/// the end after a line saying how much was left out. A job that prints gigabytes is
/// not stopped for it (its timeout bounds it); it just cannot fill the disk.
struct CappedLog {
    head_left: u64,
    tail: exec::Ring,
    tail_cap: usize,
    cap: u64,
    past_head: u64,
}

impl CappedLog {
    fn new(cap: u64) -> Self {
        // A quarter of the cap for the end, at most 1 MiB: it waits in memory.
        let tail_cap = (cap / 4).min(1 << 20) as usize;
        CappedLog {
            head_left: cap - tail_cap as u64,
            tail: exec::Ring::new(tail_cap),
            tail_cap,
            cap,
            past_head: 0,
        }
    }

    /// What of `chunk` goes to the file now; the rest goes to the tail.
    fn admit<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let n = (self.head_left.min(chunk.len() as u64)) as usize;
        self.head_left -= n as u64;
        let rest = &chunk[n..];
        self.past_head += rest.len() as u64;
        self.tail.push(rest);
        &chunk[..n]
    }

    /// What to write when the output has ended: the tail, after a note when bytes were
    /// left out.
    fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let dropped = self.past_head.saturating_sub(self.tail_cap as u64);
        if dropped > 0 {
            out.extend_from_slice(
                format!(
                    "\n[… {dropped} bytes of output not written to this log: it keeps the first and the last part of each attempt, {} bytes in all (limits.max_job_log_bytes in loops.yaml); the job went on running]\n",
                    self.cap
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(&self.tail.to_vec());
        out
    }
}

async fn run_shell(
    cfg: &WorkerConfig,
    store: &JobStore,
    ledger: &Ledger,
    job: &Job,
    params: &ShellParams,
    mut ctl: watch::Receiver<Ctl>,
    live: Option<Live>,
) -> (RunEnd, Tokens) {
    let (argv, cwd, env) = match shell_command(&cfg.ws, job, params) {
        Ok(c) => c,
        Err(error) => {
            let end = RunEnd::Failed {
                error,
                result: JobResult::default(),
                permanent: true,
            };
            return (end, Tokens::default());
        }
    };
    let timeout = job.timeout().unwrap_or(SHELL_TIMEOUT);
    // The output goes to the job's log as it arrives (and to a follower).
    let (out_tx, writer) = spawn_log_writer(cfg, store, job, live);
    let (pg_tx, mut pg_rx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let spec = ExecSpec {
        argv,
        cwd,
        env,
        // The job's own deadline is kept here, so time spent paused does not count.
        timeout: Duration::from_secs(100 * 365 * 24 * 3600),
        grace: exec::KILL_GRACE,
        on_spawn: Some(pg_tx),
        stdin: None,
    };
    let fut = exec::run(&spec, Some(out_tx), Some(cancel_rx));
    tokio::pin!(fut);
    let mut run = ShellControl {
        deadline: Instant::now() + timeout,
        paused_at: None,
        pgid: None,
        ended_by: None,
        cancel: cancel_tx,
    };
    let res = loop {
        tokio::select! {
            res = &mut fut => break res,
            Some(pg) = pg_rx.recv() => {
                run.pgid = Some(pg);
                ledger.started(job.id, pg, cfg.clock.now());
            }
            _ = tokio::time::sleep_until(run.deadline), if run.paused_at.is_none() && run.ended_by.is_none() => {
                run.end(Ended::Timeout);
            }
            changed = ctl.changed(), if run.ended_by.is_none() => {
                if changed.is_ok() {
                    let c = *ctl.borrow_and_update();
                    run.obey(c, store, job.id, cfg.clock.now()).await;
                }
            }
        }
    };
    let _ = writer.await;
    (shell_end(run.ended_by, &res, timeout), Tokens::default())
}

/// What a shell job runs (argv), where, and with what environment.
type ShellCommand = (Vec<String>, PathBuf, Vec<(String, String)>);

/// A shell job's [`ShellCommand`]; `Err` says what to fix (a permanent failure: replaying
/// the job unchanged cannot help).
fn shell_command(ws: &Workspace, job: &Job, p: &ShellParams) -> Result<ShellCommand, String> {
    let cwd = p.cwd.clone().unwrap_or_else(|| ws.root.clone());
    if !cwd.is_dir() {
        return Err(format!(
            "the working folder {} does not exist; fix \"cwd\" and replay the job",
            cwd.display()
        ));
    }
    let env = shell_env(ws, job, p)?;
    let argv = shell_argv(&p.command, &env);
    Ok((argv, cwd, env))
}

/// Writes a shell job's output to its log (capped, redacted) and passes it on to a
/// follower; returns where to send the output and the writer to await.
fn spawn_log_writer(
    cfg: &WorkerConfig,
    store: &JobStore,
    job: &Job,
    live: Option<Live>,
) -> (Live, tokio::task::JoinHandle<()>) {
    let log_path = store.log_path(job.id);
    let (out_tx, mut out_rx) = exec::live_channel();
    let header = format!(
        "--- job #{} attempt {} started {} ---\n",
        job.id,
        job.attempts + 1,
        cfg.clock.now().to_rfc3339()
    );
    let log_cap = cfg.ws.settings.max_job_log_bytes;
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // Made with the first output: an attempt that prints nothing leaves no file (a
        // new file per job is much of what a burst of silent jobs costs the disk).
        let mut log_file = LazyLog {
            path: log_path,
            header,
            file: None,
        };
        let mut log = CappedLog::new(log_cap);
        while let Some((stream, chunk)) = out_rx.blocking_recv() {
            // Redacted per chunk: a secret split across two reads of the pipe would slip
            // through, which is why the run's record is redacted whole too.
            log_file.write(&loops_core::secrets::redact_bytes(log.admit(&chunk)));
            if let Some(l) = &live {
                let _ = l.blocking_send((stream, chunk));
            }
        }
        let tail = log.finish();
        if !tail.is_empty() {
            log_file.write(&loops_core::secrets::redact_bytes(&tail));
        }
        if let Some(f) = log_file.file.as_mut() {
            let _ = f.flush();
        }
    });
    (out_tx, writer)
}

/// A job attempt's log, opened (and its header written) when the first output comes.
struct LazyLog {
    path: PathBuf,
    header: String,
    file: Option<std::fs::File>,
}

impl LazyLog {
    fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        if self.file.is_none() {
            let Ok(mut f) = loops_core::fsutil::open_append(&self.path) else {
                return;
            };
            let _ = f.write_all(self.header.as_bytes());
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(bytes);
        }
    }
}

/// Why a shell job's command was stopped before it ended by itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    Timeout,
    Cancel,
    Shutdown,
}

/// A running shell job's command as its worker steers it: paused (its group stopped, the
/// pause not counted against its timeout), resumed, or stopped.
struct ShellControl {
    deadline: Instant,
    paused_at: Option<Instant>,
    /// The process group this task started, once it is spawned.
    pgid: Option<u32>,
    ended_by: Option<Ended>,
    cancel: watch::Sender<bool>,
}

impl ShellControl {
    fn end(&mut self, why: Ended) {
        self.ended_by = Some(why);
        let _ = self.cancel.send(true);
    }

    fn signal(&self, sig: loops_core::sys::Signal) {
        if let Some(pg) = self.pgid {
            loops_core::sys::signal_group(pg, sig);
        }
    }

    async fn obey(&mut self, c: Ctl, store: &JobStore, id: JobId, now: DateTime<Utc>) {
        match c {
            Ctl::Pause if self.paused_at.is_none() && self.pgid.is_some() => {
                self.signal(loops_core::sys::Signal::STOP);
                self.paused_at = Some(Instant::now());
                hold(store, id, true, now).await;
            }
            Ctl::Resume if self.paused_at.is_some() => {
                self.signal(loops_core::sys::Signal::CONT);
                if let Some(p) = self.paused_at.take() {
                    self.deadline += p.elapsed();
                }
                hold(store, id, false, now).await;
            }
            Ctl::Cancel | Ctl::Shutdown => {
                if self.paused_at.take().is_some() {
                    // A stopped group must run to die.
                    self.signal(loops_core::sys::Signal::CONT);
                }
                self.end(if c == Ctl::Cancel {
                    Ended::Cancel
                } else {
                    Ended::Shutdown
                });
            }
            _ => {}
        }
    }
}

/// Records a shell job held (paused) or let go again.
async fn hold(store: &JobStore, id: JobId, paused: bool, now: DateTime<Utc>) {
    let st = store.clone();
    let _ = tokio::task::spawn_blocking(move || queue::hold(&st, id, paused, now)).await;
}

/// How a shell job's attempt ended, from why it was stopped (if it was) and its result.
fn shell_end(ended_by: Option<Ended>, res: &exec::ExecResult, timeout: Duration) -> RunEnd {
    let result = JobResult {
        exit_code: res.exit_code,
        signal: res.signal,
        stdout_tail: res.stdout_tail.clone(),
        stderr_tail: res.stderr_tail.clone(),
        stdout_dropped: res.stdout_dropped,
        stderr_dropped: res.stderr_dropped,
        duration_ms: res.duration.as_millis() as u64,
        ..Default::default()
    };
    match ended_by {
        Some(Ended::Timeout) => RunEnd::Failed {
            error: format!(
                "timed out after {}; its process group was stopped",
                loops_core::duration::format_duration(timeout)
            ),
            result,
            permanent: false,
        },
        Some(Ended::Cancel) => RunEnd::Cancelled(result),
        Some(Ended::Shutdown) => RunEnd::Aborted(
            "the runner stopped while it ran; it runs again from the start, no attempt used".into(),
        ),
        None if res.spawn_error.is_some() => RunEnd::Failed {
            error: res.spawn_error.clone().unwrap_or_default(),
            result,
            permanent: true,
        },
        None if res.success() => RunEnd::Completed(result),
        None => RunEnd::Failed {
            error: res
                .failure_reason(timeout)
                .unwrap_or_else(|| "failed".into()),
            result,
            permanent: false,
        },
    }
}

// ---------------------------------------------------------------------------------------
// The agent lane

/// `{name}` in a prompt replaced by its input variable.
pub fn fill_vars(
    prompt: &str,
    vars: Option<&serde_json::Map<String, serde_json::Value>>,
) -> String {
    let Some(vars) = vars else {
        return prompt.to_string();
    };
    let mut out = prompt.to_string();
    for (k, v) in vars {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out = out.replace(&format!("{{{k}}}"), &text);
    }
    out
}

/// Reads steering messages before each turn and saves the conversation and progress
/// after each.
struct JobHooks {
    store: JobStore,
    id: JobId,
    clock: Arc<dyn Clock>,
    ctl: watch::Receiver<Ctl>,
    /// Turns made in earlier sessions of this job (before a pause or a stall).
    offset: u32,
    max_turns: u32,
    conversation: PathBuf,
    tokens: Tokens,
    aggregator: bool,
    /// The workspace's budget (loops.yaml), which agent jobs share with every loop and
    /// the main session.
    budget: Option<RunBudget>,
    spend: JobSpender,
}

/// What an attempt of an agent job spends, written turn by turn to the day's spend file:
/// a crash loses at most the turn in flight, and every other run's budget counts it at
/// once rather than when the attempt ends.
struct JobSpender {
    ws: Arc<Workspace>,
    clock: Arc<dyn Clock>,
    job: JobId,
    attempt: u32,
    /// What the lines written so far add up to.
    written: Usage,
}

impl JobSpender {
    fn turn(&mut self, usage: &Usage, by: &TurnModel) {
        self.write(
            *usage,
            &by.provider,
            [by.answered.as_deref(), Some(&by.asked)],
        );
    }

    /// The end of the attempt: what no turn accounted for (a call cut short, retries
    /// that failed), priced as the last model that answered.
    fn rest(
        &mut self,
        total: &Usage,
        last: Option<&loops_agent::agent_loop::ModelUsage>,
        asked: &ModelChoice,
    ) {
        let w = self.written;
        let rest = Usage {
            input: total.input.saturating_sub(w.input),
            output: total.output.saturating_sub(w.output),
            cache_read: total.cache_read.saturating_sub(w.cache_read),
            cache_write: total.cache_write.saturating_sub(w.cache_write),
        };
        match last {
            Some(m) => self.write(rest, &m.provider, [m.answered.as_deref(), Some(&m.asked)]),
            None => self.write(rest, &asked.provider.name, [None, Some(&asked.model)]),
        }
    }

    fn write(&mut self, usage: Usage, provider: &str, models: [Option<&str>; 2]) {
        if usage.is_zero() {
            return;
        }
        self.written.add(&usage);
        let line = loops_core::spend::JobSpend {
            finished: self.clock.now(),
            job: self.job,
            attempt: self.attempt,
            tokens: usage,
            cost_estimate: budget::cost_of(&self.ws.settings, Some(provider), &models, &usage),
        };
        let dir = self.ws.layout().jobs_spend_dir();
        if let Err(e) = loops_core::spend::record_job_spend(&dir, &line) {
            tracing::warn!(
                job = self.job,
                "cannot record what the job spent in {}: {e}; the workspace budget does not count it",
                dir.display()
            );
        }
    }
}

impl TurnHooks for JobHooks {
    fn before_turn(&mut self, turn: u32) -> BeforeTurn {
        let mut b = BeforeTurn::default();
        if matches!(*self.ctl.borrow(), Ctl::Pause) {
            b.pause = true;
            return b;
        }
        if let Some(budget) = self.budget.as_mut() {
            if budget.before_turn(turn).pause {
                b.pause = true;
                return b;
            }
        }
        let global = (self.offset + turn) as u64;
        let now = self.clock.now();
        if self.aggregator && turn == 1 {
            let _ = queue::mark_child_results_read(&self.store, self.id, global, now);
        }
        match queue::take_steering(&self.store, self.id, global, now) {
            Ok(msgs) => {
                for m in msgs {
                    let body = match m.body.get("directive").and_then(|d| d.as_str()) {
                        Some(d) if m.body.as_object().is_some_and(|o| o.len() == 1) => {
                            d.to_string()
                        }
                        _ => m.body.to_string(),
                    };
                    b.inject.push(format!(
                        "[Steering message {} from {} at {}] {}",
                        m.seq,
                        m.from,
                        m.at.to_rfc3339(),
                        body
                    ));
                }
            }
            Err(e) => tracing::warn!(job = self.id, "cannot read steering messages: {e}"),
        }
        b
    }

    fn after_turn(
        &mut self,
        turn: u32,
        messages: &[Message],
        usage: &Usage,
        last_tool: Option<&str>,
        by: &TurnModel,
    ) {
        self.tokens.add(&Tokens::from_usage(usage));
        if let Some(budget) = self.budget.as_mut() {
            budget.after_turn(turn, messages, usage, last_tool, by);
        }
        self.spend.turn(usage, by);
        if let Ok(text) = serde_json::to_string(messages) {
            // What a tool read (a key in a file) is not written down (src/secrets.rs).
            let bytes = loops_core::secrets::redact(&text);
            if let Err(e) = loops_core::fsutil::atomic_replace(&self.conversation, bytes.as_bytes())
            {
                tracing::warn!(job = self.id, "cannot save the conversation: {e}");
            }
        }
        let step = (self.offset + turn) as u64;
        let total = self.max_turns as u64;
        let tokens = self.tokens;
        let tool = last_tool.map(str::to_string);
        let r = queue::progress(&self.store, self.id, self.clock.now(), |p| {
            p.step = step;
            p.total = Some(total);
            if tool.is_some() {
                p.last_tool = tool;
            }
            p.tokens = tokens;
        });
        if let Err(e) = r {
            tracing::warn!(job = self.id, "cannot record progress: {e}");
        }
    }
}

fn child_results_text(job: &Job) -> String {
    let mut s = format!(
        "## Results of the {} child jobs\n\nEvery child has ended. Their results, in the order they ended:\n",
        job.children.len()
    );
    for m in job.child_done_messages() {
        let b = &m.body;
        let id = b.get("child").and_then(|v| v.as_u64()).unwrap_or(0);
        let name = b.get("name").and_then(|v| v.as_str()).unwrap_or("");
        let state = b.get("state").and_then(|v| v.as_str()).unwrap_or("");
        s.push_str(&format!("\n### Child #{id} ({name}) — {state}\n"));
        if job.removed_children.contains(&id) {
            s.push_str("(removed from the dependencies after it failed)\n");
        }
        if b.get("ignored").and_then(|v| v.as_bool()) == Some(true) {
            s.push_str("(its failure is ignored: on_child_fail is ignore)\n");
        }
        if let Some(t) = b.get("summary").and_then(|v| v.as_str()) {
            s.push_str(&format!("{t}\n"));
        }
        if let Some(t) = b
            .get("stdout_tail")
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
        {
            s.push_str(&format!("Output:\n```\n{}\n```\n", t.trim_end()));
        }
        if let Some(c) = b.get("exit_code").and_then(|v| v.as_i64()) {
            s.push_str(&format!("Exit code: {c}\n"));
        }
        if let Some(e) = b.get("error").and_then(|v| v.as_str()) {
            s.push_str(&format!("Error: {e}\n"));
        }
    }
    s
}

/// What an agent job's params and saved state make of its session.
struct AgentPlan {
    model: ModelChoice,
    /// The name it acts as, `job-<id>`: its drafts and handoffs are made under it.
    name: String,
    system: Vec<SystemPart>,
    tools: Vec<String>,
    /// Over all its sessions (a resumed job continues the count).
    max_turns: u32,
    timeout: Duration,
    conversation: PathBuf,
    /// The conversation of an earlier session (before a pause, a stall or a shutdown).
    saved: Option<Vec<Message>>,
    /// Turns made in earlier sessions.
    offset: u32,
    aggregator: bool,
}

/// What an agent job's tools may touch; its prompt is written from the same value.
fn job_scope(name: &str) -> Scope {
    Scope::Job {
        name: name.to_string(),
    }
}

/// The default prompt of a fan-out's aggregator that names none.
const AGGREGATOR_PROMPT: &str = "Combine the results of the child jobs into one clear report: what each found, what failed, and what it adds up to. Then call finish with the report as the summary.";

impl AgentPlan {
    /// Reads the job's params and saved conversation. `Err`: why it cannot run at all
    /// (a failure no retry mends).
    fn of(
        ws: &Workspace,
        store: &JobStore,
        job: &Job,
        p: &AgentParams,
    ) -> Result<AgentPlan, String> {
        let model = ModelChoice::resolve(&ws.settings, p.provider.as_deref(), p.model.as_deref())
            .map_err(|e| e.to_string())?;
        if model.is_agent_cli() {
            return Err(format!(
                "provider `{}` is a command provider; agent jobs run on the agent loop and need an anthropic or openai provider (pass --model with one, or set `defaults:` in loops.yaml)",
                model.provider.name
            ));
        }
        let vars = &p.input_vars;
        let aggregator = job.kind == JobKind::Aggregator;
        let prompt_raw = match p.prompt.as_str() {
            blank if blank.trim().is_empty() && aggregator => AGGREGATOR_PROMPT,
            prompt => prompt,
        };
        let name = format!("job-{}", job.id);
        // No input_vars (`{}`) is no settings section.
        let settings = yaml_serde::to_string(vars).unwrap_or_default();
        // The prompt says where the job may write from the scope its sandbox enforces.
        let system = context::job_system(
            &job_scope(&name),
            &fill_vars(prompt_raw, Some(vars)),
            &settings,
        );
        let conversation = store.conversation_path(job.id);
        let saved: Option<Vec<Message>> = std::fs::read(&conversation)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|m: &Vec<Message>| !m.is_empty());
        Ok(AgentPlan {
            model,
            name,
            system,
            tools: p
                .tools
                .clone()
                .unwrap_or_else(|| ISOLATED_DEFAULT.iter().map(|s| s.to_string()).collect()),
            max_turns: p.max_turns.unwrap_or(AGENT_MAX_TURNS),
            timeout: job.timeout().unwrap_or(AGENT_TIMEOUT),
            offset: if saved.is_some() {
                job.progress.step as u32
            } else {
                0
            },
            saved,
            conversation,
            aggregator,
        })
    }

    /// Opens the attempt's transcript; a resumed job says so first.
    fn transcript(
        &self,
        ws: &Workspace,
        store: &JobStore,
        job: &Job,
        live: Option<Live>,
        now: DateTime<Utc>,
    ) -> Transcript {
        let mut facts = vec![
            ("kind", job.kind.as_str().to_string()),
            ("started", now.to_rfc3339()),
        ];
        facts.extend(self.model.facts());
        facts.push(("tools", self.tools.join(", ")));
        TranscriptSpec {
            path: store.transcript_path(job.id),
            title: format!(
                "Job #{} ({}) — attempt {}",
                job.id,
                job.name,
                job.attempts + 1
            ),
            facts,
            echo: live,
        }
        .open(&ws.settings)
    }

    /// The conversation to continue: the saved one, or a first message.
    fn messages(&mut self, job: &Job, now: DateTime<Utc>, tr: &mut Transcript) -> Vec<Message> {
        if let Some(m) = self.saved.take() {
            tr.note(&format!(
                "resumed from its saved conversation ({} messages, {} turns made); completed tool calls are not repeated",
                m.len(),
                self.offset
            ));
            return m;
        }
        let mut first = format!(
            "Now: {}\nThis is job #{} ({}), attempt {} of {}.\n",
            now.to_rfc3339(),
            job.id,
            job.name,
            job.attempts + 1,
            job.max_attempts
        );
        if self.aggregator {
            first.push('\n');
            first.push_str(&child_results_text(job));
        }
        vec![Message::user_text(first)]
    }

    /// The job's tools: it reads like a minion and writes only its drafts and handoffs.
    fn tool_env(&self, cfg: &WorkerConfig, job: &Job) -> ToolEnv {
        let ws = &cfg.ws;
        ToolEnv {
            ws: ws.clone(),
            sandbox: Sandbox::new(&ws.root, job_scope(&self.name)),
            loop_name: self.name.clone(),
            run_id: format!("job-{}-{}", job.id, job.attempts + 1),
            allowed: self.tools.clone(),
            allowed_hosts: Vec::new(),
            shell: None,
            committer: cfg.committer.clone(),
            claimed: Vec::new(),
            guard: Guard::new(&ws.settings.guard, None),
            // Every attempt of a job is the same job: a retry posts nothing twice.
            delivery_scope: format!("job-{}", job.id),
            next_check: None,
        }
    }
}

/// A job that can never run as asked: retrying would fail the same way.
fn permanent_failure(error: String) -> RunEnd {
    RunEnd::Failed {
        error,
        result: JobResult::default(),
        permanent: true,
    }
}

async fn run_agent(
    cfg: &WorkerConfig,
    store: &JobStore,
    job: &Job,
    params: &AgentParams,
    ctl: watch::Receiver<Ctl>,
    live: Option<Live>,
) -> (RunEnd, Tokens) {
    let mut plan = match AgentPlan::of(&cfg.ws, store, job, params) {
        Ok(p) => p,
        Err(e) => return (permanent_failure(e), Tokens::default()),
    };
    let now = cfg.clock.now();
    let runlog = loops_core::runs::RunLog::new(&cfg.ws.layout().runs_dir(), u64::MAX);
    if let Some(why) = budget::workspace_over_today(&cfg.ws, &runlog, now) {
        return (
            held_for_the_day(job.id, &why, now, false),
            Tokens::default(),
        );
    }
    let mut tr = plan.transcript(&cfg.ws, store, job, live, now);
    let messages = plan.messages(job, now, &mut tr);
    let mut hooks = JobHooks {
        store: store.clone(),
        id: job.id,
        clock: cfg.clock.clone(),
        ctl: ctl.clone(),
        offset: plan.offset,
        max_turns: plan.max_turns,
        conversation: plan.conversation.clone(),
        tokens: Tokens::default(),
        aggregator: plan.aggregator,
        budget: RunBudget::for_agent_job(&cfg.ws, &runlog, now),
        spend: JobSpender {
            ws: cfg.ws.clone(),
            clock: cfg.clock.clone(),
            job: job.id,
            attempt: job.attempts + 1,
            written: Usage::default(),
        },
    };
    let (cancel, forward) = cancel_on_stop(ctl.clone());
    let spec = SessionSpec {
        model: &plan.model,
        tools: plan.tool_env(cfg, job),
        system: std::mem::take(&mut plan.system),
        messages,
        limits: Limits {
            max_turns: plan.max_turns.saturating_sub(plan.offset).max(1),
            time: TimeLimit::For(plan.timeout),
        },
        cancel: Some(cancel),
        hooks: Some(&mut hooks),
    };
    let run = spec.run(&mut tr).await;
    forward.abort();
    let run = match run {
        Ok(run) => run,
        Err(e) => {
            let end = permanent_failure(e.to_string());
            note_end(&mut tr, &end);
            return (end, Tokens::default());
        }
    };
    save_conversation(&plan.conversation, &run.driven.messages);
    let last = run.driven.usage_by_model.last();
    hooks.spend.rest(&run.driven.usage, last, &plan.model);
    let tokens = Tokens::from_usage(&run.driven.usage);
    let turns = plan.offset + run.driven.turns;
    let mut result = JobResult {
        duration_ms: run.driven.wall_time.as_millis() as u64,
        summary: run.driven.summary(),
        turns: Some(turns),
        model: Some(run.model(&plan.model)),
        ..Default::default()
    };
    commit_job_writes(cfg, job, &run, tokens, &mut result, &mut tr).await;
    let permanent = run.driven.permanent;
    let end = match hooks.budget.and_then(|b| b.stopped) {
        Some(stop) => budget_end(job.id, stop, result, cfg.clock.now()),
        None => job_end(run.driven.end, result, &plan, turns, permanent, &ctl),
    };
    note_end(&mut tr, &end);
    (end, tokens)
}

/// An agent job the workspace's daily budget holds: it waits for the next UTC midnight,
/// no attempt used. `begun`: it was stopped between turns (its conversation is saved
/// and goes on then), not before its first.
fn held_for_the_day(id: JobId, why: &str, now: DateTime<Utc>, begun: bool) -> RunEnd {
    let until = loops_core::budget::next_day(now);
    let what = if begun {
        "stopped between turns and held"
    } else {
        "not started: held"
    };
    RunEnd::Held {
        why: format!(
            "{what} until {} (the next UTC midnight), no attempt used: {why}; to run it sooner, raise `budget:` in loops.yaml (a serving daemon then looks again) or `loops jobs resume {id}`",
            until.to_rfc3339()
        ),
        until,
    }
}

/// How an attempt the budget stopped between turns ends: a daily budget holds the job
/// for the day; `tokens_per_run` fails it for good (every attempt would stop the same).
fn budget_end(id: JobId, stop: budget::Stop, result: JobResult, now: DateTime<Utc>) -> RunEnd {
    if stop.daily {
        return held_for_the_day(id, &stop.why, now, true);
    }
    RunEnd::Failed {
        error: format!(
            "{} (loops.yaml caps every attempt of an agent job)",
            stop.why
        ),
        result,
        permanent: true,
    }
}

/// A stop signal for the session: cancel and shutdown stop a model call in flight; pause
/// waits for the turn to end (the hooks see it). Abort the task when the session ends.
fn cancel_on_stop(
    mut ctl: watch::Receiver<Ctl>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let forward = tokio::spawn(async move {
        loop {
            if matches!(*ctl.borrow_and_update(), Ctl::Cancel | Ctl::Shutdown) {
                let _ = cancel_tx.send(true);
                return;
            }
            if ctl.changed().await.is_err() {
                return;
            }
        }
    });
    (cancel_rx, forward)
}

/// The whole conversation, for a resume; what a tool read (a key in a file) is not
/// written down (src/secrets.rs).
fn save_conversation(path: &std::path::Path, messages: &[Message]) {
    if let Ok(text) = serde_json::to_string(messages) {
        let _ =
            loops_core::fsutil::atomic_replace(path, loops_core::secrets::redact(&text).as_bytes());
    }
}

/// What the tools wrote is committed, like a loop's run.
async fn commit_job_writes(
    cfg: &WorkerConfig,
    job: &Job,
    run: &SessionRun,
    tokens: Tokens,
    result: &mut JobResult,
    tr: &mut Transcript,
) {
    let wrote: Vec<PathBuf> = run.kit.wrote.iter().cloned().collect();
    let Some(c) = cfg.committer.as_ref().filter(|_| !wrote.is_empty()) else {
        return;
    };
    let subject = format!(
        "job #{}: {}",
        job.id,
        result
            .summary
            .as_deref()
            .map(|s| loops_core::text::clip(s.lines().next().unwrap_or(""), 60))
            .unwrap_or_else(|| job.name.clone())
    );
    let trailers = vec![
        ("Job", job.id.to_string()),
        ("Job-Kind", job.kind.as_str().to_string()),
        ("Tokens-In", tokens.input.to_string()),
        ("Tokens-Out", tokens.output.to_string()),
        ("Model", result.model.clone().unwrap_or_default()),
    ];
    let msg = loops_core::history::commit_message(&subject, &trailers);
    match c
        .commit(loops_core::history::CommitRequest::new(wrote, msg))
        .await
    {
        Ok(Some(oid)) => result.commit = Some(oid.to_string()),
        Ok(None) => {}
        Err(e) => tr.note(&format!("could not commit the files it wrote: {e}")),
    }
}

/// How the job's attempt ended, for the queue. A timeout or a provider failure starts
/// the next attempt afresh (its saved conversation is dropped); a shutdown keeps it.
fn job_end(
    end: End,
    result: JobResult,
    plan: &AgentPlan,
    turns: u32,
    permanent: bool,
    ctl: &watch::Receiver<Ctl>,
) -> RunEnd {
    match end {
        End::Finished(_) | End::Answered(_) | End::SilentToken(_) => RunEnd::Completed(result),
        End::MaxTurns(_) => RunEnd::Failed {
            error: format!(
                "stopped after {turns} model turns without finishing (raise max_turns, or ask it to call finish)"
            ),
            result,
            permanent: true,
        },
        End::Timeout => {
            let _ = std::fs::remove_file(&plan.conversation);
            RunEnd::Failed {
                error: format!(
                    "timed out after {} ({} turns)",
                    loops_core::duration::format_duration(plan.timeout),
                    turns
                ),
                result,
                permanent: false,
            }
        }
        End::Cancelled => match *ctl.borrow() {
            Ctl::Shutdown => RunEnd::Aborted(
                "the runner stopped while it ran; it continues from its saved conversation, no attempt used".into(),
            ),
            _ => RunEnd::Cancelled(result),
        },
        End::Paused => RunEnd::Paused,
        // A refused request or a cut reply fails the same way on the next attempt: the
        // job ends now, its error naming the setting to change.
        End::Failed(e) => {
            let _ = std::fs::remove_file(&plan.conversation);
            RunEnd::Failed {
                error: e,
                result,
                permanent,
            }
        }
    }
}

/// The transcript's last line: how the attempt ended.
fn note_end(tr: &mut Transcript, end: &RunEnd) {
    tr.note(&format!(
        "run ended: {}",
        match end {
            RunEnd::Completed(_) => "completed".to_string(),
            RunEnd::Failed { error, .. } => format!("failed — {error}"),
            RunEnd::Cancelled(_) => "cancelled".into(),
            RunEnd::Paused => "paused (conversation saved)".into(),
            RunEnd::Aborted(w) => w.clone(),
            RunEnd::Held { why, .. } => format!("held (conversation saved) — {why}"),
        }
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use loops_core::jobs::queue::JobSpec;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc as std_mpsc;

    /// A disk that flushes at once until it is armed; then the test holds its next
    /// flush, and lets it fail or pass.
    struct HeldDisk {
        armed: Arc<AtomicBool>,
        passed: Arc<AtomicUsize>,
        entered: std_mpsc::Receiver<()>,
        release: std_mpsc::Sender<Result<(), String>>,
    }

    fn held_disk() -> (HeldDisk, Flush) {
        let (entered_tx, entered) = std_mpsc::channel();
        let (release, release_rx) = std_mpsc::channel::<Result<(), String>>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let armed = Arc::new(AtomicBool::new(false));
        let passed = Arc::new(AtomicUsize::new(0));
        let (a, p) = (armed.clone(), passed.clone());
        let flush: Flush = Arc::new(move |_| {
            if !a.load(Ordering::SeqCst) {
                p.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            let _ = entered_tx.send(());
            let rx = release_rx.lock().map_err(|e| e.to_string())?;
            rx.recv()
                .unwrap_or_else(|_| Err("the test went away".into()))
        });
        let disk = HeldDisk {
            armed,
            passed,
            entered,
            release,
        };
        (disk, flush)
    }

    fn one_claimed_job(store: &JobStore) -> JobId {
        let spec = JobSpec {
            kind: Some("shell".into()),
            params: serde_json::json!({ "cmd": "true" }),
            source: "test".into(),
            ..Default::default()
        };
        queue::submit(store, &spec, Utc::now(), None)
            .expect("submitted")
            .job
            .id
    }

    /// Ends the job through the ledger while the disk holds its flush: the end is not
    /// answered until the flush has ended, and is answered with the flush's failure.
    async fn end_under(flush_result: Result<(), String>) -> Result<Job, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = JobStore::at(dir.path().join("jobs"));
        let id = one_claimed_job(&store);
        let (disk, flush) = held_disk();
        let (ledger, task) = Ledger::open_flushing(store.clone(), flush);
        let claims = ledger
            .claim(vec![id], 1, true, Utc::now())
            .await
            .expect("claim written");
        assert_eq!(claims.claimed.len(), 1, "the job is leased");
        // The claim's own batch is flushed (at once) before the disk holds the next.
        let waited = Instant::now();
        while disk.passed.load(Ordering::SeqCst) == 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "no flush of the claim"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        disk.armed.store(true, Ordering::SeqCst);
        let end = RunEnd::Completed(JobResult::default());
        let l = ledger.clone();
        let mut finished =
            tokio::spawn(async move { l.finish(id, end, Tokens::default(), 1, Utc::now()).await });
        // The end is written; its flush has begun and is held.
        tokio::task::spawn_blocking(move || {
            disk.entered.recv().expect("the flush began");
            disk
        })
        .await
        .map(|disk| {
            for _ in 0..20 {
                std::thread::yield_now();
            }
            assert!(!finished.is_finished(), "answered before its flush ended");
            disk.release.send(flush_result).expect("released");
        })
        .expect("the flush was waited for");
        let answered = (&mut finished).await.expect("the finish task");
        drop(ledger);
        let _ = task.await;
        drop(store);
        drop(dir);
        answered
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_end_is_answered_only_after_the_flush_that_covers_it() {
        let answered = end_under(Ok(())).await;
        let job = answered.expect("recorded");
        assert_eq!(job.state, JobState::Completed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_end_whose_flush_fails_is_not_reported_recorded() {
        let answered = end_under(Err("injected: the disk refused the flush".into())).await;
        let e = answered.expect_err("a failed flush is not a recorded end");
        assert!(e.contains("injected"), "{e}");
    }
}
