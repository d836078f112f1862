//! `loops mcp`: a Model Context Protocol server on stdin/stdout, so another agent (an
//! MCP client: a coding agent, an IDE, a chat app) can see and run this workspace's
//! loops, work its inbox, and use the job queue. Built on rmcp, the official Rust SDK.
//!
//! - Every tool re-reads the workspace from disk, as each CLI command does, so a server
//!   that runs for hours never answers from a stale loops.yaml.
//! - A failure the caller can act on (an unknown loop, a refused shell job, a job in the
//!   wrong state) is a tool result with `isError` and a `help` line, never a protocol
//!   error: clients show protocol errors opaquely, and a model could not recover.
//! - Shell jobs cannot be submitted here: they run commands chosen by whoever submits
//!   them. They can be observed and controlled like any job.
//! - Stdout is the protocol; logs go to stderr.
//!
//! [`client`] is the other direction: loops as the client of the MCP servers loops.yaml
//! names, whose tools prompt loops offer the model.

use crate::engine::run_context::RunContext;
use crate::operator::{self, OperatorError};
use chrono::Utc;
use loops_core::daemon_lock::daemon_alive;
use loops_core::jobs::job::{JobId, JobKind, JobState, ALL_STATES};
use loops_core::jobs::queue::{self, JobSpec, QueueError, Sender};
use loops_core::jobs::store::{JobStore, StoreError};
use loops_core::jobs::{report, stats};
use loops_core::workspace::{host_timezone, Workspace, WorkspaceError};
use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the MCP session did not start: {0}")]
    Handshake(String),
    #[error("the MCP session stopped unexpectedly: {0}")]
    Session(String),
}

impl McpError {
    pub fn help(&self) -> Option<String> {
        match self {
            McpError::Handshake(_) => Some(
                "`loops mcp` is started by an MCP client, which speaks JSON-RPC on its stdin; register it with the client as the command `loops --workspace DIR mcp`".into(),
            ),
            McpError::Runtime(_) | McpError::Session(_) => None,
        }
    }
}

/// Serves the workspace's tools on stdin/stdout until the client closes them (or the
/// process gets SIGINT/SIGTERM), then waits for runs it started to stop.
pub fn serve_stdio(ws: Workspace) -> Result<(), McpError> {
    init_logging();
    let rt = crate::daemon::runtime().map_err(McpError::Runtime)?;
    let result = rt.block_on(serve(LoopsServer::new(ws.root)));
    // A blocked read of stdin must not keep the process alive once the session is over.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Logs to stderr only: stdout carries the protocol, and one stray line there would
/// break the client's parser.
fn init_logging() {
    let filter = loops_core::secrets::var("LOOPS_LOG")
        .ok()
        .and_then(|f| {
            tracing_subscriber::EnvFilter::try_new(loops_core::watcher::with_quiet_notify(&f)).ok()
        })
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new(loops_core::watcher::with_quiet_notify("warn"))
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| loops_core::secrets::RedactingWriter(std::io::stderr()))
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// How many loop runs one server may have going at once (each also needs its loop's
/// lock); it is also how shutdown counts the runs still going.
const MAX_RUNS: u32 = 64;

/// How long shutdown waits for runs to stop: the SIGTERM grace of a command, and more.
const RUN_STOP_WAIT: Duration = Duration::from_secs(15);

async fn serve(server: LoopsServer) -> Result<(), McpError> {
    let runs = server.runs.clone();
    let service = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpError::Handshake(e.to_string()))?;
    let cancel = service.cancellation_token();
    // SIGINT/SIGTERM end the session the way a closed stdin does: in-flight calls are
    // cancelled, and so their runs' process groups are stopped rather than orphaned.
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        cancel.cancel();
    });
    let quit = service.waiting().await;
    signals.abort();
    // Every run holds a permit until it has recorded its end.
    if tokio::time::timeout(RUN_STOP_WAIT, runs.acquire_many(MAX_RUNS))
        .await
        .is_err()
    {
        tracing::warn!("runs were still stopping when the MCP server exited");
    }
    quit.map(|_| ())
        .map_err(|e| McpError::Session(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// Tool results

/// A failure the caller can act on: it becomes a tool result with `isError`.
#[derive(Debug)]
struct ToolError {
    message: String,
    help: Option<String>,
}

impl ToolError {
    fn new(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

macro_rules! tool_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ToolError {
            fn from(e: $t) -> Self {
                ToolError { help: e.help(), message: e.to_string() }
            }
        }
    )*};
}

tool_error_from!(QueueError, StoreError, OperatorError, WorkspaceError);

type ToolOutcome = Result<Value, ToolError>;

/// The MCP result of a tool: its JSON as text, or the error and what to do about it.
fn reply(r: ToolOutcome) -> CallToolResult {
    match r {
        Ok(v) => CallToolResult::success(vec![ContentBlock::text(v.to_string())]),
        Err(e) => {
            let body = json!({ "error": e.message, "help": e.help });
            CallToolResult::error(vec![ContentBlock::text(body.to_string())])
        }
    }
}

fn stopped(e: tokio::task::JoinError) -> ToolError {
    ToolError::new(format!("the tool stopped unexpectedly: {e}"))
}

// ---------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Deserialize, JsonSchema)]
struct LoopArgs {
    /// The loop's name: its folder under domains/ (list_loops gives them).
    name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum HandoffStatus {
    Pending,
    Active,
    Done,
    Rejected,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ListHandoffsArgs {
    /// Only handoffs in this stage (default: every stage).
    #[serde(default)]
    status: Option<HandoffStatus>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct HandoffArgs {
    /// The handoff's id, e.g. "20261120T093000Z-morning-briefing-7f3a" (list_handoffs gives them).
    id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct CompleteHandoffArgs {
    /// The handoff's id.
    id: String,
    /// What was done: recorded in the handoff as it moves to done/.
    #[serde(default)]
    note: Option<String>,
}

/// A checklist item: its number (1 = first) or its text (or a unique start of it).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum ItemArg {
    Number(usize),
    Text(String),
}

#[derive(Debug, Deserialize, JsonSchema)]
struct TickHandoffArgs {
    /// The handoff's id.
    id: String,
    /// The items to tick: numbers (1 = first, in the order of get_handoff's checklist) or texts (or a unique start of one).
    #[serde(default)]
    items: Vec<ItemArg>,
    /// Tick every item of the checklist.
    #[serde(default)]
    all: bool,
}

/// A duration: a string like "30s", "5m", "1h30m", or a number of seconds.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
enum DurationArg {
    Text(String),
    Seconds(f64),
}

/// The fields of [`JobSpec`], with a schema; serialised back into a `JobSpec` so the
/// queue parses them exactly as it parses a CLI submission.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct SubmitJobArgs {
    /// The kind of job: "agent" (the default) runs a prompt on the agent loop. "shell" is refused over MCP.
    #[serde(default)]
    kind: Option<String>,
    /// A short name for listings (default: the start of the prompt).
    #[serde(default)]
    name: Option<String>,
    /// What to run. For an agent job: {"prompt": "what to do"} and optionally "tools" (a list of tool names), "model", "provider", "max_turns" (at least 1) and "input_vars" (an object of values for {{name}} placeholders in the prompt).
    params: Map<String, Value>,
    /// The queue to run in (default "default").
    #[serde(default)]
    queue: Option<String>,
    /// Higher runs first among ready jobs (default 0).
    #[serde(default)]
    priority: Option<i32>,
    /// Do not start before this much time has passed.
    #[serde(default)]
    delay: Option<DurationArg>,
    /// How many times to try before the job fails for good (default 3, at least 1).
    #[serde(default)]
    max_attempts: Option<u32>,
    /// "exponential" (default: the delay doubles each retry) or "fixed".
    #[serde(default)]
    backoff_type: Option<String>,
    /// The first retry's delay (default 1s).
    #[serde(default)]
    backoff_delay: Option<DurationArg>,
    /// Random spread of retry delays, a fraction from 0 to 1 (default 0.2).
    #[serde(default)]
    backoff_jitter: Option<f64>,
    /// Stop an attempt that runs longer than this.
    #[serde(default)]
    timeout: Option<DurationArg>,
    /// How many times the job may be requeued after its runner died before it is marked dead (default 5).
    #[serde(default)]
    max_stalled: Option<u32>,
    /// A key that makes the submission safe to repeat: while a job holding this key is not dead or cancelled, submitting again returns that job (with "existing": true) instead of a new one.
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Make this job a child of that job id (the parent must not have ended); the parent waits for its children.
    #[serde(default, deserialize_with = "opt_job_id")]
    #[schemars(with = "Option<JobId>")]
    parent: Option<JobId>,
    /// With a parent: what a failure of this child does to it: "fail_parent" (default), "continue", "ignore" or "remove_dep".
    #[serde(default)]
    on_child_fail: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct JobArgs {
    /// The job's id (a number; submit_job and list_jobs give them).
    #[serde(deserialize_with = "job_id")]
    #[schemars(with = "JobId")]
    id: JobId,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ListJobsArgs {
    /// Only jobs in this state: waiting, delayed, active, paused, waiting-children, completed, failed, dead or cancelled.
    #[serde(default)]
    status: Option<String>,
    /// Only jobs whose name contains this text (case-insensitive).
    #[serde(default)]
    name: Option<String>,
    /// At most this many jobs, newest first (default 100).
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ReplayJobArgs {
    /// The job to run again.
    #[serde(deserialize_with = "job_id")]
    #[schemars(with = "JobId")]
    id: JobId,
    /// Changes to its params for the new job: keys are param names, or dotted paths into them ("input_vars.city"), values replace what is there.
    #[serde(default)]
    set: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct SendJobMessageArgs {
    /// The job to steer.
    #[serde(deserialize_with = "job_id")]
    #[schemars(with = "JobId")]
    id: JobId,
    /// The message: any JSON object, e.g. {"text": "focus on the EU market"}. An agent job reads it before its next turn.
    message: Map<String, Value>,
    /// Send as this job instead of as the operator: allowed only when it is the target's parent.
    #[serde(default, deserialize_with = "opt_job_id")]
    #[schemars(with = "Option<JobId>")]
    from_job: Option<JobId>,
}

/// A job id as a client may write it: 42, "42", or "#42" as `loops jobs list` prints it
/// (a model copies what it read).
fn job_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<JobId, D::Error> {
    id_of(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn opt_job_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<JobId>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => id_of(&v).map(Some).map_err(serde::de::Error::custom),
    }
}

fn id_of(v: &Value) -> Result<JobId, String> {
    let id = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let t = s.trim();
            t.strip_prefix('#').unwrap_or(t).parse::<JobId>().ok()
        }
        _ => None,
    };
    id.ok_or_else(|| {
        format!("{v} is not a job id: give its number as list_jobs and submit_job return it (42, or \"#42\")")
    })
}

// ---------------------------------------------------------------------------------------
// What the tools say about themselves (a model reads these to decide what to call).

const INSTRUCTIONS: &str = "loops runs agent loops in a workspace: each loop is a folder under domains/ with a schedule and a command or a prompt; every change a run makes is committed to git. Use these tools to see the loops (list_loops) and run one now (trigger_loop); to work the inbox of handoffs that loops leave for the main session (list_handoffs, get_handoff, tick_handoff, complete_handoff); and to use the job queue: submit an agent job (submit_job), watch it (get_job, get_job_progress, list_jobs, get_job_stats), steer it (send_job_message) and control it (pause_job, resume_job, cancel_job, replay_job). Jobs run only while the daemon (`loops run`) is running. Shell jobs cannot be submitted over MCP. Every tool returns JSON; a failed call says what went wrong and what to do in `error` and `help`.";

const LIST_LOOPS: &str = "List every loop in the workspace (the folders under domains/). Takes no arguments. Returns {workspace, local_timezone, loops: [...]}, one entry per loop: name, description, kind (\"command\" runs a program, \"prompt\" runs a model on prompt.md), schedule (in words), timezone, enabled, status (ok, disabled, paused: why, waiting for a provider, failing (n in a row), or broken: the first config error), next_run (UTC, also next_run_local and next_run_loop_time; null when it will not run), last_run (outcome such as acted, silent or failed, with its times and error), consecutive_failures, paused, and errors (problems in its config.yaml).";

const TRIGGER_LOOP: &str = "Run a loop now, once, and wait for it to finish (like `loops trigger NAME`). Argument: name, the loop's name from list_loops. Returns the run record: outcome (acted: it printed output or changed files; silent: nothing to do; failed; timeout; interrupted), summary, error, exit_code, duration_ms, changed (files), commit (the git commit of its changes, if any), stdout_tail and stderr_tail. A run that fails is still a successful call: read `outcome`. Refused when the loop does not exist or its config has errors, when a run of it is already going (unless its config says `concurrency: allow`), and for a prompt loop when no model provider is configured. Cancelling the call stops the run.";

const LIST_HANDOFFS: &str = "List the handoffs in the inbox: work that loops hand to the main session. Argument: status (optional): pending (waiting to be picked up), active (claimed by the main session), done (completed; only the 10 most recent are listed) or rejected; default every stage. Returns {inbox, handoffs: [...]}, each with stage, id, from (the loop), priority, title, path, since, detail, and per stage: unticked checklist items, held and overdue (active), reason (rejected).";

const GET_HANDOFF: &str = "Read one handoff in full. Argument: id (from list_handoffs). Returns stage, path, handoff (id, from, to, created, priority, draft, due, tags, title, body, checklist with each item's text, ticked and optional flags), error (when the file does not parse), note (why it is held, failed wakes), reason (when rejected) and text (the markdown file as it is).";

const TICK_HANDOFF: &str = "Tick checklist items of a pending or active handoff (like `loops inbox tick`): each becomes `- [x]` in its file, and the change is committed to git. Arguments: id; items: a list of item numbers (1 = first, as in get_handoff's checklist) or texts (or a unique start of one); or all: true for every item. An item ticked already is reported in already_ticked, not an error; an item the handoff does not have fails the call, listing its items. Returns {id, stage, path, ticked, already_ticked, unticked (required items still open), complete (true when complete_handoff can now complete it)}.";

const COMPLETE_HANDOFF: &str = "Complete a handoff: it moves to inbox/done/YYYY-MM/ and the change is committed to git. Arguments: id; note (optional): what was done. Only a pending or active handoff can be completed, and only when every required checklist item is ticked (`- [x]` in its file); otherwise the call fails and lists the unticked items. Returns {id, stage: \"done\", path}.";

const SUBMIT_JOB: &str = "Submit a job to the queue. Argument kind: \"agent\" (the default) runs a prompt on the agent loop with tools; shell jobs cannot be submitted over MCP (permission denied: a person submits those with `loops jobs submit shell`). params for an agent job: {\"prompt\": \"what to do\"}, optionally tools, model, provider, max_turns, input_vars. Optional: name, queue, priority (higher first), delay, timeout, backoff_delay (durations like \"30s\" or seconds), max_attempts, backoff_type, backoff_jitter, max_stalled, idempotency_key (repeat-safe submission), parent (a job id this becomes a child of), on_child_fail. Returns the job (id, name, kind, state such as waiting or delayed, params, history, report...) plus existing (true when the idempotency key returned an earlier job) and, when no daemon is running, a warning: nothing runs the job until `loops run` starts.";

const GET_JOB: &str = "Get one job with everything known about it. Argument: id. Returns the job: id, name, kind, queue, priority, params, state (waiting, delayed, active, paused, waiting-children, completed, failed, dead, cancelled), history of transitions with reasons, attempts, result, error, tokens, progress, parent and children, messages, plus report (a one-line summary), total_tokens, elapsed_ms and children_counts.";

const LIST_JOBS: &str = "List jobs, newest first. Arguments (all optional): status (one state: waiting, delayed, active, paused, waiting-children, completed, failed, dead, cancelled), name (a part of the job name, case-insensitive), limit (default 100). Returns {jobs: [summaries with id, name, kind, queue, state, priority, created, updated, started, finished, attempts, run_ms, tokens, parent, children (count), error], total (how many matched), warnings (unreadable job files)}.";

const GET_JOB_PROGRESS: &str = "A job's progress, cheaply: for polling a running job. Argument: id. Returns id, name, state, step and total (turns so far and the limit), last_tool, tokens, elapsed_ms, children (counts by state) and report (a short text summary).";

const CANCEL_JOB: &str = "Cancel a job and, cascading, its children. Argument: id. A job not running is cancelled at once; a running one is asked to stop and its runner records the end. Fails for a job that has already ended (use replay_job to run it again). Returns the job.";

const PAUSE_JOB: &str = "Pause a job. Argument: id. A waiting or delayed job is paused at once; a running one is asked to stop (an agent between turns, a shell job's processes are stopped). Other states fail. Resume it with resume_job. Returns the job.";

const RESUME_JOB: &str = "Resume a paused job. Argument: id. A stopped running job continues where it was; otherwise it goes back to waiting (an agent continues its saved conversation). An agent job held for the day's budget (delayed, with `held` saying why) goes back to waiting, and is held again at once if the budget is still spent. Fails when the job is neither. Returns the job.";

const REPLAY_JOB: &str = "Run a job again as a new job with the same parameters, queue, priority, timeout, retries and parent. Arguments: id; set (optional): changes to the params, {\"key\": value}, keys may be dotted paths (\"input_vars.city\"). A shell job can be replayed as it was but not with changes over MCP. Returns the new job (its replay_of is the original id).";

const SEND_JOB_MESSAGE: &str = "Send a steering message to an agent job that has not ended; it reads it before its next turn (a shell job has no agent to read one: refused). Arguments: id; message: a JSON object, e.g. {\"text\": \"also cover pricing\"}; from_job (optional): send as that job, which must be the target's parent (otherwise permission denied); without it the message is from the operator. Returns {id, message} with the message's seq, kind, time and sender.";

const GET_JOB_STATS: &str = "Statistics of the job queue. Takes no arguments. Returns window_hours (24), kinds (per job kind over that window: total, completed, failed, dead, cancelled, waiting, active, avg_ms), health (jobs waiting, delayed, active, paused, waiting for children, stalled now), daemon_running, and warnings (e.g. work waiting with no daemon to run it, a stuck queue).";

// ---------------------------------------------------------------------------------------
// The server

#[derive(Clone)]
pub struct LoopsServer {
    root: PathBuf,
    /// Permits held by runs in progress (see [`MAX_RUNS`]).
    runs: Arc<Semaphore>,
    tool_router: ToolRouter<Self>,
}

impl LoopsServer {
    pub fn new(root: PathBuf) -> Self {
        LoopsServer {
            root,
            runs: Arc::new(Semaphore::new(MAX_RUNS as usize)),
            tool_router: Self::tool_router(),
        }
    }

    /// Runs `f` on the workspace as it is on disk now, on a blocking thread: every tool
    /// reads and writes files, and commits wait for git.
    async fn with_ws<F>(&self, f: F) -> Result<CallToolResult, ErrorData>
    where
        F: FnOnce(&Workspace) -> ToolOutcome + Send + 'static,
    {
        let root = self.root.clone();
        let r = tokio::task::spawn_blocking(move || f(&Workspace::open(&root)?))
            .await
            .unwrap_or_else(|e| Err(stopped(e)));
        Ok(reply(r))
    }

    async fn trigger(&self, name: String, rc: RequestContext<RoleServer>) -> ToolOutcome {
        // Held until the run has recorded its end, so shutdown can wait for it.
        let _permit = self.runs.clone().try_acquire_owned().map_err(|_| {
            ToolError::new(format!(
                "{MAX_RUNS} loop runs are already going in this server"
            ))
            .help("wait for one to finish, then try again")
        })?;
        let root = self.root.clone();
        let (ctx, triggered) = tokio::task::spawn_blocking(move || -> Result<_, ToolError> {
            let ws = Workspace::open(&root)?;
            let triggered = crate::trigger::trigger(&ws, &name, false)?;
            Ok((RunContext::new(Arc::new(ws)), triggered))
        })
        .await
        .map_err(stopped)??;
        // A client that cancels the call (or goes away) stops the run's whole process
        // group, as Ctrl-C does for `loops trigger`.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(async move {
            rc.ct.cancelled().await;
            let _ = stop_tx.send(true);
        });
        let rec = triggered.run(&ctx, None, stop_rx).await;
        watcher.abort();
        serde_json::to_value(&rec).map_err(|e| ToolError::new(e.to_string()))
    }
}

#[tool_router(router = tool_router)]
impl LoopsServer {
    #[tool(description = LIST_LOOPS)]
    async fn list_loops(&self) -> Result<CallToolResult, ErrorData> {
        self.with_ws(ops::list_loops).await
    }

    #[tool(description = TRIGGER_LOOP)]
    async fn trigger_loop(
        &self,
        Parameters(a): Parameters<LoopArgs>,
        rc: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(reply(self.trigger(a.name, rc).await))
    }

    #[tool(description = LIST_HANDOFFS)]
    async fn list_handoffs(
        &self,
        Parameters(a): Parameters<ListHandoffsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::list_handoffs(ws, a.status))
            .await
    }

    #[tool(description = GET_HANDOFF)]
    async fn get_handoff(
        &self,
        Parameters(a): Parameters<HandoffArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::get_handoff(ws, &a.id)).await
    }

    #[tool(description = TICK_HANDOFF)]
    async fn tick_handoff(
        &self,
        Parameters(a): Parameters<TickHandoffArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::tick_handoff(ws, a)).await
    }

    #[tool(description = COMPLETE_HANDOFF)]
    async fn complete_handoff(
        &self,
        Parameters(a): Parameters<CompleteHandoffArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::complete_handoff(ws, &a.id, a.note.as_deref()))
            .await
    }

    #[tool(description = SUBMIT_JOB)]
    async fn submit_job(
        &self,
        Parameters(a): Parameters<SubmitJobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::submit_job(ws, a)).await
    }

    #[tool(description = GET_JOB)]
    async fn get_job(
        &self,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::get_job(ws, a.id)).await
    }

    #[tool(description = LIST_JOBS)]
    async fn list_jobs(
        &self,
        Parameters(a): Parameters<ListJobsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::list_jobs(ws, a)).await
    }

    #[tool(description = GET_JOB_PROGRESS)]
    async fn get_job_progress(
        &self,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::get_job_progress(ws, a.id))
            .await
    }

    #[tool(description = CANCEL_JOB)]
    async fn cancel_job(
        &self,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::control(ws, a.id, queue::cancel))
            .await
    }

    #[tool(description = PAUSE_JOB)]
    async fn pause_job(
        &self,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::control(ws, a.id, queue::pause))
            .await
    }

    #[tool(description = RESUME_JOB)]
    async fn resume_job(
        &self,
        Parameters(a): Parameters<JobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::control(ws, a.id, queue::resume))
            .await
    }

    #[tool(description = REPLAY_JOB)]
    async fn replay_job(
        &self,
        Parameters(a): Parameters<ReplayJobArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::replay_job(ws, a)).await
    }

    #[tool(description = SEND_JOB_MESSAGE)]
    async fn send_job_message(
        &self,
        Parameters(a): Parameters<SendJobMessageArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.with_ws(move |ws| ops::send_job_message(ws, a)).await
    }

    #[tool(description = GET_JOB_STATS)]
    async fn get_job_stats(&self) -> Result<CallToolResult, ErrorData> {
        self.with_ws(ops::get_job_stats).await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for LoopsServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("loops", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

// ---------------------------------------------------------------------------------------
// The tools' work: plain blocking functions of the workspace and the arguments.

mod ops {
    use super::*;

    pub(super) fn list_loops(ws: &Workspace) -> ToolOutcome {
        let local = host_timezone();
        let loops: Vec<Value> = operator::loop_rows(ws, Utc::now())
            .iter()
            .map(|l| l.to_json(&local))
            .collect();
        Ok(json!({ "workspace": ws.root, "local_timezone": local.name(), "loops": loops }))
    }

    pub(super) fn list_handoffs(ws: &Workspace, status: Option<HandoffStatus>) -> ToolOutcome {
        use loops_core::handoff::Stage;
        let wanted = status.map(|s| match s {
            HandoffStatus::Pending => Stage::Pending,
            HandoffStatus::Active => Stage::Active,
            HandoffStatus::Done => Stage::Done,
            HandoffStatus::Rejected => Stage::Rejected,
        });
        let handoffs: Vec<Value> = operator::handoff_rows(ws, Utc::now())
            .iter()
            .filter(|h| wanted.is_none_or(|w| h.stage == w))
            .map(|h| h.to_json())
            .collect();
        Ok(json!({ "inbox": ws.relative(&ws.inbox_dir()), "handoffs": handoffs }))
    }

    pub(super) fn get_handoff(ws: &Workspace, id: &str) -> ToolOutcome {
        let detail = operator::HandoffDetail::load(ws, id)?;
        let mut v = detail.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("text".into(), json!(detail.text()?));
        }
        Ok(v)
    }

    pub(super) fn tick_handoff(ws: &Workspace, a: TickHandoffArgs) -> ToolOutcome {
        use loops_core::handoff::ItemRef;
        if a.items.is_empty() && !a.all {
            return Err(ToolError::new("no items named")
                .help("give items (numbers or texts), or all: true"));
        }
        let which: Vec<ItemRef> = a
            .items
            .into_iter()
            .map(|i| match i {
                ItemArg::Number(n) => ItemRef::Number(n),
                ItemArg::Text(t) => ItemRef::parse(&t),
            })
            .collect();
        Ok(operator::tick_handoff(ws, &a.id, &which, a.all)?.to_json())
    }

    pub(super) fn complete_handoff(ws: &Workspace, id: &str, note: Option<&str>) -> ToolOutcome {
        let done = operator::complete_handoff(ws, id, note, Utc::now())?;
        Ok(json!({
            "id": done.id, "stage": "done", "path": ws.relative(&done.done), "warning": done.warning,
        }))
    }

    /// Refuses kinds that run code chosen by the submitter, before anything is written.
    fn refuse_protected(kind: Option<&str>) -> Result<(), ToolError> {
        match kind.and_then(JobKind::parse).filter(JobKind::is_protected) {
            Some(k) => Err(ToolError::new(format!(
                "permission denied: {k} jobs run commands and cannot be submitted over MCP; a person can submit them with `loops jobs submit {k} …`"
            ))
            .help("submit an agent job instead: kind \"agent\" with params {\"prompt\": \"what to do\"}")),
            None => Ok(()),
        }
    }

    pub(super) fn submit_job(ws: &Workspace, a: SubmitJobArgs) -> ToolOutcome {
        refuse_protected(a.kind.as_deref())?;
        let mut spec: JobSpec = serde_json::to_value(&a)
            .and_then(serde_json::from_value)
            .map_err(|e| {
                ToolError::new(format!("the job is not valid: {e}")).help(
                    "durations are strings like \"30s\", \"5m\", \"1h\" or numbers of seconds",
                )
            })?;
        spec.source = "mcp".into();
        let now = Utc::now();
        let sub = queue::submit(&JobStore::new(ws), &spec, now, None)?;
        let mut v = report::to_json(&sub.job, now);
        if let Some(o) = v.as_object_mut() {
            o.insert("existing".into(), json!(sub.existing));
            if daemon_alive(ws).is_none() {
                o.insert(
                    "warning".into(),
                    json!("no daemon is running in this workspace: nothing runs the job until `loops run` starts"),
                );
            }
        }
        Ok(v)
    }

    fn load_job(store: &JobStore, id: JobId) -> Result<loops_core::jobs::job::Job, ToolError> {
        Ok(store.get(id)?.ok_or(QueueError::NotFound(id))?)
    }

    pub(super) fn get_job(ws: &Workspace, id: JobId) -> ToolOutcome {
        Ok(report::to_json(
            &load_job(&JobStore::new(ws), id)?,
            Utc::now(),
        ))
    }

    pub(super) fn get_job_progress(ws: &Workspace, id: JobId) -> ToolOutcome {
        Ok(report::progress_json(
            &load_job(&JobStore::new(ws), id)?,
            Utc::now(),
        ))
    }

    fn parse_state(s: &str) -> Result<JobState, ToolError> {
        JobState::parse(s).ok_or_else(|| {
            let names: Vec<&str> = ALL_STATES.iter().map(|s| s.as_str()).collect();
            ToolError::new(format!("unknown job state `{s}`"))
                .help(format!("the states are: {}", names.join(", ")))
        })
    }

    pub(super) fn list_jobs(ws: &Workspace, a: ListJobsArgs) -> ToolOutcome {
        let state = a.status.as_deref().map(parse_state).transpose()?;
        let needle = a.name.map(|n| n.to_lowercase());
        let (jobs, errors) = JobStore::new(ws).list();
        // The store lists oldest first; a caller wants what just happened.
        let matched: Vec<_> = jobs
            .into_iter()
            .rev()
            .filter(|j| state.is_none_or(|s| j.state == s))
            .filter(|j| {
                needle
                    .as_deref()
                    .is_none_or(|n| j.name.to_lowercase().contains(n))
            })
            .collect();
        let total = matched.len();
        let shown: Vec<_> = matched.into_iter().take(a.limit.unwrap_or(100)).collect();
        let warnings: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        Ok(json!({ "jobs": shown, "total": total, "warnings": warnings }))
    }

    /// cancel, pause or resume: the queue decides what each state allows.
    pub(super) fn control(
        ws: &Workspace,
        id: JobId,
        op: fn(
            &JobStore,
            JobId,
            chrono::DateTime<Utc>,
        ) -> Result<loops_core::jobs::job::Job, QueueError>,
    ) -> ToolOutcome {
        let now = Utc::now();
        Ok(report::to_json(&op(&JobStore::new(ws), id, now)?, now))
    }

    pub(super) fn replay_job(ws: &Workspace, a: ReplayJobArgs) -> ToolOutcome {
        let store = JobStore::new(ws);
        let overrides: Vec<(String, Value)> = a.set.unwrap_or_default().into_iter().collect();
        let orig = load_job(&store, a.id)?;
        // Replaying a shell job as a person submitted it runs nothing new; changing its
        // params would let the caller choose the command, which MCP may not.
        if orig.kind.is_protected() && !overrides.is_empty() {
            return Err(ToolError::new(format!(
                "permission denied: job #{} is a {} job; its params cannot be changed over MCP",
                a.id, orig.kind
            ))
            .help(format!(
                "replay it without `set`, or a person can run `loops jobs replay {}` with changes",
                a.id
            )));
        }
        let now = Utc::now();
        let job = queue::replay(&store, a.id, &overrides, now, "mcp")?;
        Ok(report::to_json(&job, now))
    }

    pub(super) fn send_job_message(ws: &Workspace, a: SendJobMessageArgs) -> ToolOutcome {
        let from = a.from_job.map_or(Sender::Operator, Sender::Job);
        let m = queue::message(
            &JobStore::new(ws),
            a.id,
            Value::Object(a.message),
            from,
            Utc::now(),
        )?;
        Ok(json!({ "id": a.id, "message": m }))
    }

    pub(super) fn get_job_stats(ws: &Workspace) -> ToolOutcome {
        let st = stats::compute(&JobStore::new(ws), Utc::now(), daemon_alive(ws).is_some());
        serde_json::to_value(&st).map_err(|e| ToolError::new(e.to_string()))
    }
}
