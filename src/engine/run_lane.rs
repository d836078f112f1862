//! The lane of the runner's own runs: a loop's planned runs wait here for their fire time
//! (each already a light `loop` job in the queue, so a crash before it starts is recorded
//! `interrupted`), then begin within `limits.max_concurrent_jobs` and the loop's
//! concurrency key (`forbid` skips, `replace` stops the older run, `allow` runs both), and
//! their end is applied to the loop's state (failures in a row, retries, a pause).

use crate::engine::loop_run;
use crate::engine::run_context::{RunContext, RunRequest, Trigger};
use crate::engine::scheduler::{apply_finish, Aftermath, DueRun, Scheduler};
use chrono::{DateTime, Utc};
use loops_core::clock::Clock;
use loops_core::domain::{Concurrency, LoopDef};
use loops_core::exec::{Live, Stream};
use loops_core::runs::{Outcome, RunRecord};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};

/// Why a run the runner never started, because it was stopping, was skipped.
pub const STOPPING: &str = "the runner was stopping";

/// A run that ended, with what its end did to the loop's state.
pub struct Finished {
    def: LoopDef,
    pub rec: RunRecord,
    after: Aftermath,
}

/// A run waiting for its fire time: planned by the scheduler (its loop's definition is
/// the scheduler's), or submitted by a trigger (with the definition the daemon read for it,
/// since a trigger may run a loop the scheduler does not plan: disabled, or one-shot done).
struct Planned {
    due: DueRun,
    def: Option<LoopDef>,
    /// Its output is written for the trigger that follows it.
    follow: bool,
}

struct RunningRun {
    run_id: String,
    cancel: watch::Sender<bool>,
    started: std::time::Instant,
    /// Set once the run has its permit (is running, not queued behind the limit).
    begun: Arc<AtomicBool>,
}

/// How soon a run held for its loop's unpushed commits looks again.
const PUSH_RECHECK_MS: i64 = 200;

/// The runs waiting for their time and those running.
pub struct RunLane {
    running: HashMap<String, Vec<RunningRun>>,
    pending: Vec<Planned>,
    permits: Arc<Semaphore>,
    /// Flips to true when the runner stops: runs still waiting for a permit are then
    /// recorded as not run at once instead of starting only to be stopped.
    stopping: watch::Sender<bool>,
    done_tx: mpsc::UnboundedSender<Finished>,
    in_flight: usize,
    /// A progress display shows each run's end: the log need not say it too.
    quiet_finish: bool,
}

impl RunLane {
    /// A lane sharing `permits` (the global limit) with the job worker; each run's end is
    /// sent to `done_tx`.
    pub fn new(
        permits: Arc<Semaphore>,
        done_tx: mpsc::UnboundedSender<Finished>,
        quiet_finish: bool,
    ) -> Self {
        RunLane {
            running: HashMap::new(),
            pending: Vec::new(),
            permits,
            stopping: watch::channel(false).0,
            done_tx,
            in_flight: 0,
            quiet_finish,
        }
    }

    /// The global limit, shared with the job worker.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }

    /// How many runs have been started and not yet ended (including those waiting for a
    /// permit).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How many wait for their fire time.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// The earliest fire time of a waiting run.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.pending.iter().map(|p| p.due.not_before).min()
    }

    /// Runs that hold a permit (have begun), not those queued behind the limit.
    pub fn begun(&self) -> usize {
        self.running
            .values()
            .flatten()
            .filter(|r| r.begun.load(Ordering::SeqCst))
            .count()
    }

    /// Stops every running run (their process groups too).
    pub fn cancel_all(&self) {
        for r in self.running.values().flatten() {
            let _ = r.cancel.send(true);
        }
    }

    /// The runner stops: every waiting run is recorded as not run (returned), and runs
    /// still waiting for a permit are told to give up.
    pub fn stop(&mut self, ctx: &RunContext, sched: &Scheduler) -> Vec<RunRecord> {
        let mut out = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            if let Some(def) = p.def.or_else(|| sched.def(&p.due.loop_name).cloned()) {
                out.push(self.record_skip(ctx, sched, &def, &p.due, STOPPING));
            }
        }
        let _ = self.stopping.send(true);
        out
    }

    /// What is running now and for how long, longest first.
    pub fn running_for(&self, wake_running: bool) -> Vec<(String, Duration)> {
        let mut out: Vec<(String, Duration)> = self
            .running
            .iter()
            .flat_map(|(name, runs)| runs.iter().map(|r| (name.clone(), r.started.elapsed())))
            .collect();
        if wake_running {
            out.push(("main session".into(), Duration::ZERO));
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Queues claimed runs until their fire time. Each gets its running marker now, so a
    /// crash between the claim and the start is recorded as an interrupted run, not lost.
    pub fn queue(&mut self, ctx: &RunContext, runs: Vec<DueRun>) {
        let markers: Vec<_> = runs
            .iter()
            .map(|due| {
                loops_core::runs::RunInProgress::for_this_process(
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
            if let Err(e) = ctx.running.put_pending_many(&markers) {
                tracing::warn!("cannot record the pending runs: {e}");
            }
        }
        self.pending.extend(runs.into_iter().map(|due| Planned {
            due,
            def: None,
            follow: false,
        }));
    }

    /// Queues a run a trigger submitted and this process claimed (its job exists).
    pub fn queue_submitted(&mut self, due: DueRun, def: LoopDef, follow: bool) {
        self.pending.push(Planned {
            due,
            def: Some(def),
            follow,
        });
    }

    /// Whether a pending run's time has come.
    pub fn has_ready(&self, now: DateTime<Utc>) -> bool {
        self.pending.iter().any(|p| p.due.not_before <= now)
    }

    /// The loops with a run whose time has come.
    pub fn ready_names(&self, now: DateTime<Utc>) -> impl Iterator<Item = &str> {
        self.pending
            .iter()
            .filter(move |p| p.due.not_before <= now)
            .map(|p| p.due.loop_name.as_str())
    }

    /// Starts every pending run whose time has come, except those of the loops in
    /// `awaiting_push` (their last commits are not pushed yet, or a pull is rewriting their
    /// folder), which look again shortly.
    pub fn dispatch_ready(
        &mut self,
        ctx: &RunContext,
        sched: &Scheduler,
        now: DateTime<Utc>,
        awaiting_push: &std::collections::HashSet<String>,
    ) -> Vec<RunRecord> {
        let (ready, mut later): (Vec<Planned>, Vec<Planned>) = self
            .pending
            .drain(..)
            .partition(|p| p.due.not_before <= now);
        let (held, ready): (Vec<Planned>, Vec<Planned>) = ready
            .into_iter()
            .partition(|p| awaiting_push.contains(&p.due.loop_name));
        for mut p in held {
            p.due.not_before = now + chrono::Duration::milliseconds(PUSH_RECHECK_MS);
            later.push(p);
        }
        self.pending = later;
        ready
            .into_iter()
            .filter_map(|p| self.dispatch(ctx, sched, p))
            .collect()
    }

    /// Starts `due`'s run in a task of its own; returns the record of a run decided
    /// against at once (its loop gone, or `concurrency: forbid` with the last one going).
    fn dispatch(&mut self, ctx: &RunContext, sched: &Scheduler, p: Planned) -> Option<RunRecord> {
        let due = p.due;
        let Some(def) = p.def.or_else(|| sched.def(&due.loop_name).cloned()) else {
            // Removed, disabled or broken between its claim and its fire time.
            record_gone(ctx, sched, &due);
            return None;
        };
        let busy = self.running.get(&def.name).is_some_and(|r| !r.is_empty());
        if busy && !self.make_room(&def) {
            let why = "the previous run was still going (concurrency: forbid)";
            return Some(self.record_skip(ctx, sched, &def, &due, why));
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
            fired: Some(sched.now()),
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let begun = Arc::new(AtomicBool::new(false));
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
        let run = LaneRun {
            ctx: ctx.clone(),
            def,
            req,
            exclusive,
            begun,
            cancel: cancel_rx,
            permits: self.permits.clone(),
            stopping: self.stopping.subscribe(),
            clock: sched.clock(),
            follow: p.follow,
        };
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let _ = done.send(run.run().await);
        });
        None
    }

    /// The loop's key is held by a run of this process: whether `def`'s run may go ahead
    /// (`allow`; `replace`, which stops the running one) or not (`forbid`).
    fn make_room(&self, def: &LoopDef) -> bool {
        match def.concurrency {
            Concurrency::Forbid => false,
            Concurrency::Replace => {
                for r in self.running.get(&def.name).into_iter().flatten() {
                    tracing::info!(loop_name = %def.name, run = %r.run_id, "replacing the running run (concurrency: replace)");
                    let _ = r.cancel.send(true);
                }
                true
            }
            Concurrency::Allow => true,
        }
    }

    /// Records `due` as skipped, with why, and lets go of its job.
    pub fn record_skip(
        &mut self,
        ctx: &RunContext,
        sched: &Scheduler,
        def: &LoopDef,
        due: &DueRun,
        why: &str,
    ) -> RunRecord {
        ctx.running.remove(&due.run_id);
        let mut rec = RunRecord::decision(
            &def.name,
            due.trigger.as_str(),
            due.slot,
            sched.now(),
            Outcome::Skipped,
            why.to_string(),
        );
        rec.run_id = due.run_id.clone();
        tracing::info!(loop_name = %def.name, "slot skipped: {why}");
        if let Err(e) = ctx.runlog.append(&rec) {
            tracing::error!("{e}");
        }
        rec
    }

    /// A run ended: said, its loop's plan refreshed, a retry or a pause reported; returns
    /// its record.
    pub fn on_finished(
        &mut self,
        ctx: &RunContext,
        sched: &mut Scheduler,
        f: Finished,
    ) -> RunRecord {
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
        sched.refresh(&f.def.name);
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
                let ctx = ctx.clone();
                let n = crate::engine::main_session::paused_loop_handoff(&rec.loop_name, &p);
                tokio::spawn(async move {
                    crate::engine::main_session::runner_handoff(&ctx, n).await;
                });
            }
            Aftermath::Nothing => {}
        }
        f.rec
    }
}

/// One run on its way through the lane: a permit, the loop's key, the run, its end applied.
struct LaneRun {
    ctx: RunContext,
    def: LoopDef,
    req: RunRequest,
    /// Whether the loop's key is checked across processes when the run begins.
    exclusive: bool,
    begun: Arc<AtomicBool>,
    cancel: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
    follow: bool,
}

impl LaneRun {
    async fn run(mut self) -> Finished {
        let (ctx, def, req) = (&self.ctx, &self.def, &self.req);
        // The global limit queues runs; it never makes a slot's run disappear. One still
        // waiting for its turn when the runner stops is recorded as not run.
        let _permit = tokio::select! {
            biased;
            Ok(_) = self.stopping.wait_for(|s| *s) => {
                let rec = record_not_run(ctx, def, req, self.clock.now(), STOPPING);
                return Finished { def: self.def, rec, after: Aftermath::Nothing };
            }
            p = self.permits.clone().acquire_owned() => p,
        };
        // A run a person cancelled while it waited (for its turn, or its staggered time)
        // does not begin only to be stopped: it is recorded as not run, saying why.
        if cancelled_before_begin(ctx, req).await {
            let why = crate::engine::run_context::CANCELLED_BEFORE_IT_BEGAN;
            tracing::info!(loop_name = %def.name, run = %req.run_id, "not run: {why}");
            let rec = record_not_run(ctx, def, req, self.clock.now(), why);
            return Finished {
                def: self.def,
                rec,
                after: Aftermath::Nothing,
            };
        }
        if self.exclusive && !begin_alone(ctx, def, req).await {
            let why = "another process was running this loop (concurrency: forbid)";
            tracing::info!(loop_name = %def.name, "slot skipped: {why}");
            let rec = record_not_run(ctx, def, req, self.clock.now(), why);
            return Finished {
                def: self.def,
                rec,
                after: Aftermath::Nothing,
            };
        }
        self.begun.store(true, Ordering::SeqCst);
        let (live, writer) = match self.follow {
            true => follow_output(ctx, def, req),
            false => (None, None),
        };
        let rec = loop_run::execute(ctx, def, req, live, Some(self.cancel.clone())).await;
        if let Some(w) = writer {
            let _ = w.await;
        }
        // A permanent failure is not retried: a missing or non-executable program, a
        // request the provider refused, a reply cut at max_tokens; and a run asked for by
        // hand is not retried either (the person sees its outcome).
        let permanent = rec.permanent_failure || req.trigger == Trigger::Manual;
        let store = ctx.store.clone();
        let pause_after = ctx.ws.settings.pause_after_failures;
        let clock = self.clock.clone();
        let def = self.def;
        tokio::task::spawn_blocking(move || {
            let after = apply_finish(&store, &def, &rec, !permanent, pause_after, clock.now());
            Finished { def, rec, after }
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// The output of a followed run, written (redacted: the trigger's process knows none of the
/// daemon's secrets) where its trigger reads it; the trigger removes the files.
fn follow_output(
    ctx: &RunContext,
    def: &LoopDef,
    req: &RunRequest,
) -> (Option<Live>, Option<tokio::task::JoinHandle<()>>) {
    let (out, err) =
        loops_core::runs::live_output_paths(&ctx.ws.layout().runs_dir(), &def.name, &req.run_id);
    let open = |p: &std::path::Path| {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = p.parent() {
            let _ = loops_core::fsutil::create_dir_all(dir);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(p)
            .map_err(|e| {
                tracing::warn!(
                    "cannot write a followed run's output to {}: {e}",
                    p.display()
                )
            })
            .ok()
    };
    let (Some(mut out), Some(mut err)) = (open(&out), open(&err)) else {
        return (None, None);
    };
    let (tx, mut rx) = loops_core::exec::live_channel();
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        while let Some((stream, bytes)) = rx.blocking_recv() {
            let bytes = loops_core::secrets::redact_bytes(&bytes);
            let _ = match stream {
                Stream::Stdout => out.write_all(&bytes),
                Stream::Stderr => err.write_all(&bytes),
            };
        }
    });
    (Some(tx), Some(writer))
}

/// Records a run whose loop was removed, disabled or broken before its fire time.
fn record_gone(ctx: &RunContext, sched: &Scheduler, due: &DueRun) {
    ctx.running.remove(&due.run_id);
    let mut rec = RunRecord::decision(
        &due.loop_name,
        due.trigger.as_str(),
        due.slot,
        sched.now(),
        Outcome::Skipped,
        "the loop was removed, disabled or broken before its run started".into(),
    );
    rec.run_id = due.run_id.clone();
    if let Err(e) = ctx.runlog.append(&rec) {
        tracing::error!("{e}");
    }
}

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

/// Whether the run's job was cancelled (`loops jobs cancel`) before the run began.
async fn cancelled_before_begin(ctx: &RunContext, req: &RunRequest) -> bool {
    let running = ctx.running.clone();
    let run_id = req.run_id.clone();
    tokio::task::spawn_blocking(move || running.cancel_requested(&run_id))
        .await
        .unwrap_or(false)
}

/// Begins `req`'s run unless another live process has begun a run of the loop
/// (`concurrency: forbid`, or `replace` across processes). A queue it cannot read does not
/// stop the run: it is said, and the run goes ahead as it would without the check.
async fn begin_alone(ctx: &RunContext, def: &LoopDef, req: &RunRequest) -> bool {
    let m = loops_core::runs::RunInProgress::for_this_process(
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
