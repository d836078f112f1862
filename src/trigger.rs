//! A run asked for by hand (`loops trigger`, MCP `trigger_loop`). While a daemon serves the
//! workspace, a trigger is a submit: the run is a light `loop` job in the queue that the
//! daemon claims and runs in its run lane with every other run (its secrets, its
//! concurrency limit, its process), and the trigger waits for the run record, showing the
//! run's output as it comes with `--follow` and stopping the run on Ctrl-C. With no daemon
//! serving, the trigger runs the loop itself ([`ManualRun`]); the same checks and the same
//! record either way.

use crate::engine::loop_run;
use crate::engine::run_context::{RunContext, RunRequest, Trigger};
use crate::operator::{find_loop, loop_def, ManualRun, OperatorError};
use chrono::Utc;
use loops_core::domain::{Concurrency, LoopDef};
use loops_core::exec::{Live, Stream};
use loops_core::jobs::job::JobId;
use loops_core::runs::{
    live_output_paths, Outcome, RunInProgress, RunRecord, RunningSet, SubmittedState,
};
use loops_core::workspace::Workspace;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// How often a trigger looks at its submitted run.
const POLL: Duration = Duration::from_millis(25);
/// How long a submitted run may wait unclaimed with no daemon serving before the trigger
/// runs it itself (the daemon stopped between the check and the submit).
const UNCLAIMED_GRACE: Duration = Duration::from_secs(2);

/// Where a triggered run runs.
pub enum Triggered {
    /// Here, in this process: no daemon serves the workspace.
    Here(ManualRun),
    /// In the daemon that serves the workspace.
    Daemon(Submitted),
}

impl Triggered {
    pub fn def(&self) -> &LoopDef {
        match self {
            Triggered::Here(m) => &m.def,
            Triggered::Daemon(s) => &s.def,
        }
    }

    pub fn run_id(&self) -> &str {
        match self {
            Triggered::Here(m) => &m.req.run_id,
            Triggered::Daemon(s) => &s.req.run_id,
        }
    }

    /// Runs it (here or in the daemon) and returns its record, once the run has ended and
    /// its end is applied to the loop's state. `stop` flipping to true stops the run.
    pub async fn run(
        self,
        ctx: &RunContext,
        live: Option<Live>,
        stop: watch::Receiver<bool>,
    ) -> RunRecord {
        match self {
            Triggered::Here(manual) => run_here(ctx, manual, live, stop).await,
            Triggered::Daemon(s) => s.wait(ctx, live, stop).await,
        }
    }
}

/// Checks the loop can run now and makes its run: submitted to the daemon that serves the
/// workspace, or reserved to run here. Refused, whoever asks, when the loop is unknown or
/// broken, when it is a prompt loop without a provider, and (unless `concurrency: allow`)
/// when a run of it is in progress or waits.
pub fn trigger(ws: &Workspace, name: &str, follow: bool) -> Result<Triggered, OperatorError> {
    ws.refuse_unapplied_settings()
        .map_err(OperatorError::Settings)?;
    let def = loop_def(&find_loop(ws, name)?)?;
    if def.is_prompt() && !ws.settings.has_providers {
        return Err(OperatorError::NoProvider(name.to_string()));
    }
    match loops_core::daemon_lock::serving_daemon(ws) {
        Some(daemon) => submit(ws, def, follow, daemon.pid).map(Triggered::Daemon),
        None => ManualRun::reserve(ws, def).map(Triggered::Here),
    }
}

fn submit(
    ws: &Workspace,
    def: LoopDef,
    follow: bool,
    daemon_pid: u32,
) -> Result<Submitted, OperatorError> {
    let req = RunRequest::new(Trigger::Manual, None, 1);
    let running = RunningSet::new(ws.layout().root());
    let m = RunInProgress::for_this_process(
        &def.name,
        &req.run_id,
        req.trigger.as_str(),
        None,
        1,
        Utc::now(),
    );
    let exclusive = def.concurrency != Concurrency::Allow;
    match running.submit(&m, follow, exclusive) {
        Ok(Some(job)) => {
            ws.nudge_daemon(&def.name);
            Ok(Submitted {
                def,
                req,
                job,
                running,
                runs_dir: ws.layout().runs_dir(),
                daemon_pid,
            })
        }
        Ok(None) => Err(OperatorError::RunInProgress(def.name)),
        Err(e) => Err(OperatorError::Lock(std::io::Error::other(e.to_string()))),
    }
}

async fn run_here(
    ctx: &RunContext,
    manual: ManualRun,
    live: Option<Live>,
    stop: watch::Receiver<bool>,
) -> RunRecord {
    let rec = loop_run::execute(ctx, &manual.def, &manual.req, live, Some(stop)).await;
    manual.finish(ctx, &rec).await;
    rec
}

/// A run submitted to the daemon, waited on by its trigger.
pub struct Submitted {
    pub def: LoopDef,
    pub req: RunRequest,
    job: JobId,
    running: RunningSet,
    runs_dir: PathBuf,
    /// The daemon that was serving when it was submitted.
    pub daemon_pid: u32,
}

impl Submitted {
    async fn wait(
        self,
        ctx: &RunContext,
        live: Option<Live>,
        mut stop: watch::Receiver<bool>,
    ) -> RunRecord {
        let mut output = live.map(|tx| FollowedOutput::new(&self, tx));
        let mut asked_to_stop = false;
        let mut unclaimed_since: Option<std::time::Instant> = None;
        loop {
            if let Some(o) = output.as_mut() {
                o.pump().await;
            }
            if *stop.borrow() && !asked_to_stop {
                asked_to_stop = true;
                if let Some(rec) = self.stop(ctx) {
                    return rec;
                }
            }
            match self.running.submitted_state(self.job) {
                Ok(SubmittedState::Gone) => break,
                Ok(SubmittedState::Cancelled) => {
                    self.running.remove(&self.req.run_id);
                    return self.record_unstarted(ctx, "cancelled before the daemon started it");
                }
                Ok(SubmittedState::Claimed { alive: false, pid }) => {
                    return self.daemon_died(pid);
                }
                Ok(SubmittedState::Claimed { .. }) => unclaimed_since = None,
                Ok(SubmittedState::Waiting) => {
                    let since = *unclaimed_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= UNCLAIMED_GRACE && self.no_daemon_serves(ctx) {
                        return self
                            .run_here_instead(ctx, output.map(|o| o.live), stop)
                            .await;
                    }
                }
                Err(e) => tracing::warn!("cannot read the triggered run's job: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed(), if !asked_to_stop => {}
            }
        }
        if let Some(o) = output.as_mut() {
            o.finish().await;
        }
        self.record(ctx)
    }

    /// Asks the run to stop: taken back if no daemon claimed it yet (its record then
    /// says so, and is returned), else cancelled in the queue for the daemon to stop.
    fn stop(&self, ctx: &RunContext) -> Option<RunRecord> {
        if let Ok(true) = self.running.withdraw(self.job) {
            return Some(self.record_unstarted(ctx, "stopped before the daemon started it"));
        }
        let store = loops_core::jobs::store::JobStore::new(&ctx.ws);
        if let Err(e) = loops_core::jobs::queue::cancel(&store, self.job, Utc::now()) {
            tracing::warn!("cannot ask the daemon to stop the run: {e}");
        }
        None
    }

    fn no_daemon_serves(&self, ctx: &RunContext) -> bool {
        loops_core::daemon_lock::serving_daemon(&ctx.ws).is_none()
    }

    /// The daemon stopped before claiming the run: it is taken back and run here.
    async fn run_here_instead(
        self,
        ctx: &RunContext,
        live: Option<Live>,
        stop: watch::Receiver<bool>,
    ) -> RunRecord {
        let _ = self.running.withdraw(self.job);
        match ManualRun::reserve(&ctx.ws, self.def.clone()) {
            Ok(manual) => run_here(ctx, manual, live, stop).await,
            Err(e) => self.record_unstarted(ctx, &e.to_string()),
        }
    }

    /// The run's record, from the loop's run history.
    fn record(&self, ctx: &RunContext) -> RunRecord {
        match ctx.runlog.find(&self.def.name, &self.req.run_id) {
            Some(rec) => rec,
            None => {
                let mut rec = self.decision(
                    Outcome::Failed,
                    "the daemon ended the run but its record cannot be read; see `loops runs`",
                );
                rec.error = rec.note.clone();
                rec
            }
        }
    }

    /// The daemon that claimed the run died: its next start records the run interrupted.
    fn daemon_died(&self, pid: u32) -> RunRecord {
        self.decision(
            Outcome::Interrupted,
            &format!(
                "the daemon running it (pid {pid}) stopped before the run finished; its next start records the run as interrupted"
            ),
        )
    }

    /// A run that never started, recorded so in the loop's history.
    fn record_unstarted(&self, ctx: &RunContext, why: &str) -> RunRecord {
        let rec = self.decision(Outcome::Interrupted, why);
        if let Err(e) = ctx.runlog.append(&rec) {
            tracing::error!("{e}");
        }
        rec
    }

    fn decision(&self, outcome: Outcome, why: &str) -> RunRecord {
        let mut rec = RunRecord::decision(
            &self.def.name,
            self.req.trigger.as_str(),
            None,
            Utc::now(),
            outcome,
            why.to_string(),
        );
        rec.run_id = self.req.run_id.clone();
        rec
    }
}

/// A followed run's output, read from the files the daemon writes as the run goes
/// ([`live_output_paths`]) and passed on to the trigger's printer.
struct FollowedOutput {
    live: Live,
    files: [(Stream, PathBuf, u64); 2],
}

impl FollowedOutput {
    fn new(s: &Submitted, live: Live) -> Self {
        let (out, err) = live_output_paths(&s.runs_dir, &s.def.name, &s.req.run_id);
        FollowedOutput {
            live,
            files: [(Stream::Stdout, out, 0), (Stream::Stderr, err, 0)],
        }
    }

    /// Sends what was written since the last look.
    async fn pump(&mut self) {
        for (stream, path, read) in self.files.iter_mut() {
            let Some(bytes) = read_from(path, *read) else {
                continue;
            };
            *read += bytes.len() as u64;
            if !bytes.is_empty() {
                let _ = self.live.send((*stream, bytes)).await;
            }
        }
    }

    /// The rest of the output, then the files are removed.
    async fn finish(&mut self) {
        self.pump().await;
        for (_, path, _) in &self.files {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn read_from(path: &std::path::Path, offset: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).ok()?;
    Some(out)
}
