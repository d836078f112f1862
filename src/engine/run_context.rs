//! What every run needs from its surroundings (the workspace, its committer, the records
//! it writes to) and what caused it: a loop's trigger or a main-session wake.

use chrono::{DateTime, Utc};
use loops_core::domain::LoopDef;
use loops_core::exec;
use loops_core::history::Committer;
use loops_core::runs::{new_run_id, RunInProgress, RunLog, RunningSet};
use loops_core::schedule::When;
use loops_core::state::{LoopState, StateStore};
use loops_core::workspace::Workspace;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What caused a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    CatchUp,
    Retry,
    Manual,
    Once,
}

impl Trigger {
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch-up",
            Trigger::Retry => "retry",
            Trigger::Manual => "manual",
            Trigger::Once => "once",
        }
    }

    /// Scheduled work is retried on failure; a person's trigger reports back instead.
    pub fn retries(&self) -> bool {
        matches!(self, Trigger::Schedule | Trigger::CatchUp | Trigger::Retry)
    }
}

/// A run to make.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub run_id: String,
    pub trigger: Trigger,
    pub slot: Option<DateTime<Utc>>,
    pub attempt: u32,
    /// When the scheduler fired it (handed it to its task); `started` comes after any
    /// wait for a concurrency permit and for the CPU.
    pub fired: Option<DateTime<Utc>>,
}

impl RunRequest {
    pub fn new(trigger: Trigger, slot: Option<DateTime<Utc>>, attempt: u32) -> Self {
        RunRequest {
            run_id: new_run_id(),
            trigger,
            slot,
            attempt,
            fired: None,
        }
    }
}

/// The logical run a loop's posts are keyed by: its slot, which every retry of the slot
/// keeps; a run without a slot (a manual trigger) is its own.
pub fn delivery_scope(def: &LoopDef, req: &RunRequest) -> String {
    match req.slot {
        Some(slot) => loops_core::runs::slot_key(&def.name, slot),
        None => req.run_id.clone(),
    }
}

/// What every run needs from its surroundings.
#[derive(Clone)]
pub struct RunContext {
    pub ws: Arc<Workspace>,
    pub committer: Option<Committer>,
    /// Why there is no committer though loops.yaml wants one (not a git repository), in
    /// words with what to do: `loops trigger` says it beside an outcome that would
    /// otherwise read as if the run's changes were kept in git.
    pub history_off: Option<String>,
    pub runlog: RunLog,
    pub running: RunningSet,
    pub store: StateStore,
}

impl RunContext {
    pub fn new(ws: Arc<Workspace>) -> Self {
        let mut history_off = None;
        let committer = if ws.settings.git_commit {
            match Committer::start_with(
                &ws.root,
                &ws.settings.author_name,
                &ws.settings.author_email,
                branch_rule(&ws.settings),
                is_daemon(&ws),
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    let why = format!(
                        "{e}{}",
                        e.help().map(|h| format!("; {h}")).unwrap_or_default()
                    );
                    tracing::warn!("history is off: {why}");
                    history_off = Some(why);
                    None
                }
            }
        } else {
            // Turned off on purpose (`git.commit: false`): nothing to explain per run.
            None
        };
        let layout = ws.layout();
        RunContext {
            runlog: RunLog::new(&layout.runs_dir(), ws.settings.rotate_bytes),
            running: RunningSet::new(layout.root()),
            store: StateStore::new(&layout.state_dir()),
            committer,
            history_off,
            ws,
        }
    }
}

/// The branch rule loops.yaml sets, if it sets one.
fn branch_rule(s: &loops_core::workspace::Settings) -> Option<loops_core::git_gate::BranchRule> {
    if s.git_follow_checkout {
        Some(loops_core::git_gate::BranchRule::Follow)
    } else {
        s.git_branch
            .clone()
            .map(loops_core::git_gate::BranchRule::Fixed)
    }
}

/// Whether this process is the workspace's daemon (whose starting branch is the default
/// for everyone), rather than a CLI command beside it.
fn is_daemon(ws: &Workspace) -> bool {
    loops_core::daemon_lock::daemon_alive(ws).is_some_and(|d| d.pid == std::process::id())
}

/// The collection window's start: the last successful run's start minus the overlap.
pub fn window_start(def: &LoopDef, state: Option<&LoopState>) -> Option<DateTime<Utc>> {
    let last = state?.last_success?;
    let overlap = def.overlap.unwrap_or(match def.schedule.when {
        When::Every(iv) => iv / 10,
        _ => Duration::ZERO,
    });
    Some(last - chrono::Duration::milliseconds(overlap.as_millis() as i64))
}

/// The full environment a loop's command gets.
pub fn run_env(
    ws: &Workspace,
    def: &LoopDef,
    run_id: &str,
    state: Option<&LoopState>,
) -> Vec<(String, String)> {
    let mut env = exec::base_env();
    let ws_root = ws.root.display().to_string();
    env.push(("LOOPS_WORKSPACE".into(), ws_root));
    env.push(("LOOPS_DOMAIN".into(), def.dir.display().to_string()));
    env.push(("LOOPS_LOOP".into(), def.name.clone()));
    env.push(("LOOPS_RUN_ID".into(), run_id.to_string()));
    env.push(("LOOPS_INBOX".into(), ws.inbox_dir().display().to_string()));
    env.push((
        "LOOPS_WINDOW_START".into(),
        window_start(def, state)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
    ));
    env.push((
        "LOOPS_LAST_RUN".into(),
        state
            .and_then(|s| s.last_run.as_ref())
            .map(|r| r.finished.to_rfc3339())
            .unwrap_or_default(),
    ));
    for (k, v) in &def.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Records the process group of a run's child in its marker, so a runner that dies can
/// have the group stopped at its next start.
pub async fn note_pgid(
    ctx: &RunContext,
    marker: &RunInProgress,
    spawn_rx: &mut mpsc::UnboundedReceiver<u32>,
) {
    if let Some(pid) = spawn_rx.recv().await {
        let mut m = marker.clone();
        m.pgid = Some(pid);
        m.pgid_start = loops_core::fsutil::process_start_time(pid);
        if let Err(e) = ctx.running.update(&m) {
            tracing::warn!("cannot update the running marker: {e}");
        }
    }
}

/// The name main-session wakes are recorded under (`.loops/runs/main.jsonl`).
pub const MAIN: &str = "main";

/// Why a wake happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeKind {
    Handoffs,
    Heartbeat,
}

impl WakeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            WakeKind::Handoffs => "handoffs",
            WakeKind::Heartbeat => "heartbeat",
        }
    }
}

/// How often a run looks whether someone asked it to stop (`loops jobs cancel`).
const CANCEL_POLL: Duration = Duration::from_millis(250);

/// Why a run stopped when a person asked for it (`loops jobs cancel`, MCP `cancel_job`):
/// its record says so, rather than the "interrupted" of a shutdown or a replacement.
pub const CANCELLED_ON_REQUEST: &str =
    "cancelled on request (`loops jobs cancel`, MCP `cancel_job`, or Ctrl-C on `loops trigger`)";

/// Why a run cancelled while it waited for its time or its turn was not run.
pub const CANCELLED_BEFORE_IT_BEGAN: &str =
    "cancelled on request before it began (`loops jobs cancel`, MCP `cancel_job`, or Ctrl-C on `loops trigger`)";

/// A run's stop signal, and whether what fired it was a person's request.
pub struct StopSignal {
    pub rx: tokio::sync::watch::Receiver<bool>,
    requested: Arc<AtomicBool>,
}

impl StopSignal {
    /// The run was stopped because its job was cancelled from outside.
    pub fn by_request(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// A stop signal for a run that fires when `caller` does (the daemon replacing the run, a
/// person's Ctrl-C) or when its job is cancelled from outside (`loops jobs cancel`, the MCP
/// server). Ends with the run: once the returned receiver is dropped.
pub fn cancel_on_request(
    ctx: &RunContext,
    run_id: &str,
    caller: Option<tokio::sync::watch::Receiver<bool>>,
) -> StopSignal {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let requested = Arc::new(AtomicBool::new(false));
    let flag = requested.clone();
    let running = ctx.running.clone();
    let run_id = run_id.to_string();
    tokio::spawn(async move {
        let mut caller = caller;
        loop {
            let asked = match caller.as_mut() {
                Some(c) => tokio::select! {
                    changed = c.changed() => match changed {
                        Ok(()) => *c.borrow(),
                        Err(_) => { caller = None; false }
                    },
                    _ = tokio::time::sleep(CANCEL_POLL) => false,
                    _ = tx.closed() => return,
                },
                None => tokio::select! {
                    _ = tokio::time::sleep(CANCEL_POLL) => false,
                    _ = tx.closed() => return,
                },
            };
            let r = running.clone();
            let id = run_id.clone();
            let requested = !asked
                && tokio::task::spawn_blocking(move || r.cancel_requested(&id))
                    .await
                    .unwrap_or(false);
            if asked || requested {
                flag.store(requested, Ordering::Release);
                let _ = tx.send(true);
                return;
            }
        }
    });
    StopSignal { rx, requested }
}
