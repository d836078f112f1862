//! The one sweep a starting runner makes over what a dead one left: every job whose owner
//! is gone is dealt with as its kind's policy says ([`OnStalled`]). A loop's run is recorded
//! `interrupted` and not run again; a wake is recorded so too, and the handoffs it claimed
//! go back to the inbox; a submitted job is requeued (or dead past its `max_stalled`).

use crate::engine::main_session::{InboxState, Moved};
use crate::engine::run_context::RunContext;
use chrono::{DateTime, Utc};
use loops_core::handoff::Inbox;
use loops_core::jobs::policy::OnStalled;
use loops_core::jobs::queue::Swept;
use loops_core::runs::{Outcome, RunInProgress, RunRecord};

/// What the sweep found and did.
#[derive(Default)]
pub struct Recovered {
    /// (loop, run id) of each run recorded interrupted. Their jobs stay until the
    /// journal names them ([`forget_interrupted`]): a start killed in between says
    /// them again rather than never.
    pub interrupted: Vec<(String, String)>,
    /// Handoffs given back to the inbox, to be committed as released.
    pub returned: Vec<Moved>,
    /// What the queue's sweep did with submitted jobs.
    pub swept: Swept,
}

impl Recovered {
    /// The file names of the handoffs given back.
    pub fn returned_names(&self) -> Vec<String> {
        self.returned
            .iter()
            .filter_map(|m| m.paths.first()?.file_name()?.to_str().map(str::to_string))
            .collect()
    }
}

/// Sweeps every lane: the runner's own runs first (their records are written before any
/// handoff moves again), then the queue.
pub async fn sweep(
    ctx: &RunContext,
    notes: &InboxState,
    inbox: &Inbox,
    now: DateTime<Utc>,
    report: Report,
) -> Recovered {
    let mut out = Recovered::default();
    for m in ctx.running.orphans() {
        match m.kind().policy().on_stalled {
            OnStalled::RecordInterrupted | OnStalled::ReturnHandoffs => {
                if let Some(r) = record_interrupted(ctx, &m) {
                    out.interrupted.push(r);
                }
            }
            // Never a run of this lane: the queue's sweep below requeues these.
            OnStalled::Requeue => {}
        }
    }
    for id in ctx.running.remove_unreadable() {
        tracing::warn!(
            job = id,
            "removed a run's job whose parameters cannot be read (its process is gone)"
        );
    }
    // The dead wakes' handoffs, and what an older version's claims files left.
    out.returned = notes.recover_moves(inbox);
    let (runs, handoffs) = (out.interrupted.clone(), out.returned_names());
    out.swept = sweep_queue(ctx, now, move |swept| report(&runs, &handoffs, swept)).await;
    out
}

/// Says what the sweep recovered: the interrupted runs (loop, run id), the handoffs given
/// back and what the queue's sweep does. Called before the queue's changes are written.
pub type Report = Box<dyn FnOnce(&[(String, String)], &[String], &Swept) + Send>;

/// Lets go of the jobs of runs recorded interrupted, once the journal has named them.
pub fn forget_interrupted(ctx: &RunContext, recovered: &Recovered) {
    for (_, run_id) in &recovered.interrupted {
        ctx.running.remove(run_id);
    }
}

/// The queue's sweep, `report`ed before its changes are on disk (see
/// [`loops_core::jobs::queue::sweep_reporting`]), or after it if the sweep failed.
async fn sweep_queue(
    ctx: &RunContext,
    now: DateTime<Utc>,
    report: impl FnOnce(&Swept) + Send + 'static,
) -> Swept {
    let store = loops_core::jobs::store::JobStore::new(&ctx.ws);
    let once = std::sync::Arc::new(std::sync::Mutex::new(Some(report)));
    let inner = once.clone();
    let swept = tokio::task::spawn_blocking(move || {
        loops_core::jobs::queue::sweep_reporting(&store, now, |s| {
            if let Some(r) = inner.lock().ok().and_then(|mut r| r.take()) {
                r(s);
            }
        })
    })
    .await
    .ok()
    .and_then(|r| r.map_err(|e| tracing::error!("job sweep: {e}")).ok())
    .unwrap_or_default();
    if let Some(r) = once.lock().ok().and_then(|mut r| r.take()) {
        r(&swept);
    }
    for (id, why) in &swept.requeued {
        tracing::warn!(job = id, "requeued: {why}");
    }
    for (id, why) in &swept.dead {
        tracing::error!(job = id, "dead: {why}");
    }
    swept
}

/// Records a run its dead process left `interrupted` (stopping its process group if that
/// outlived it); returns (loop, run id) when the journal should name it.
fn record_interrupted(ctx: &RunContext, m: &RunInProgress) -> Option<(String, String)> {
    let named = Some((m.loop_name.clone(), m.run_id.clone()));
    // A process killed between appending a run's record and removing its job left a job
    // for a run that did finish: it is not interrupted, and a second record would count
    // the run twice. Or a start was killed after recording the run interrupted but before
    // the journal said so (the job goes only after that): said now.
    if let Some(found) = ctx.runlog.find(&m.loop_name, &m.run_id) {
        if found.outcome == Outcome::Interrupted {
            return named;
        }
        ctx.running.remove(&m.run_id);
        return None;
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
    if stop_left_group(m) {
        if let Some(n) = rec.note.as_mut() {
            n.push_str("; its process group was still running and has been stopped");
        }
    }
    rec.run_id = m.run_id.clone();
    rec.started = m.started;
    rec.attempt = m.attempt;
    // What its turns spent before the process died still counts against the budgets.
    if let Some(spent) = m.spent {
        rec.tokens = Some(spent.tokens);
        rec.cost_estimate = spent.cost_estimate;
    }
    rec.duration_ms = (now - m.started).num_milliseconds().max(0) as u64;
    tracing::warn!(loop_name = %m.loop_name, run = %m.run_id, "recorded an interrupted run left by pid {}", m.pid);
    if let Err(e) = ctx.runlog.append(&rec) {
        tracing::error!("{e}");
    }
    named
}

/// Its command runs in a process group of its own and outlives the runner: stopped, but
/// only if the group leader is the very process the runner started.
fn stop_left_group(m: &RunInProgress) -> bool {
    match m.pgid {
        Some(pgid) if loops_core::fsutil::process_alive(pgid, m.pgid_start) => {
            loops_core::sys::signal_group(pgid, loops_core::sys::Signal::KILL);
            true
        }
        _ => false,
    }
}
