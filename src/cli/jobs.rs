//! `loops jobs …` and `loops agent run`: the job queue at the command line.

use super::error::CliError;
use super::output::table;
use crate::engine::worker;
use chrono::Utc;
use clap::{Args, Subcommand};
use loops_core::clock::SystemClock;
use loops_core::jobs::job::{Job, JobId, JobKind, JobState, JobSummary};
use loops_core::jobs::queue::{self, JobSpec, QueueError, Sender};
use loops_core::jobs::store::JobStore;
use loops_core::jobs::{report, stats};
use loops_core::workspace::Workspace;
use serde_json::{json, Value};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

type Result<T = ()> = std::result::Result<T, CliError>;

impl From<QueueError> for CliError {
    fn from(e: QueueError) -> Self {
        CliError {
            help: e.help(),
            message: e.to_string(),
            code: 1,
        }
    }
}

impl From<loops_core::jobs::store::StoreError> for CliError {
    fn from(e: loops_core::jobs::store::StoreError) -> Self {
        CliError {
            help: e.help(),
            message: e.to_string(),
            code: 1,
        }
    }
}

/// The options every submission takes.
#[derive(Debug, Args, Clone, Default)]
pub struct SubmitOptions {
    /// A name to show in lists and reports (default: from the command or prompt).
    #[arg(long)]
    pub name: Option<String>,
    /// The queue it joins (ordering only; all queues share the concurrency limit).
    #[arg(long)]
    pub queue: Option<String>,
    /// Lower runs first (default 0).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Do not start before this long from now (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION")]
    pub delay: Option<String>,
    /// Attempts before it is failed for good (default 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// How the wait between attempts grows (default exponential).
    #[arg(long, value_parser = ["fixed", "exponential"])]
    pub backoff_type: Option<String>,
    /// The first wait between attempts (default 1s).
    #[arg(long, value_name = "DURATION")]
    pub backoff_delay: Option<String>,
    /// Spread of each wait, as a fraction (default 0.2 = ±20 %).
    #[arg(long)]
    pub backoff_jitter: Option<f64>,
    /// Stop a run after this long (default: 1h for shell jobs, 10m for agent jobs).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Times its runner may die under it before it is dead (default 5).
    #[arg(long)]
    pub max_stalled: Option<u32>,
    /// A repeat submit with the same key returns the existing job (a key held only by
    /// dead or cancelled jobs is free again).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Make it a child of this job (the parent waits for it).
    #[arg(long, value_name = "ID", value_parser = job_id)]
    pub parent: Option<JobId>,
    /// What a parent does when a child fails: fail_parent, continue, ignore, remove_dep.
    #[arg(long, value_parser = ["fail_parent", "continue", "ignore", "remove_dep"])]
    pub on_child_fail: Option<String>,
    /// Check it and show what would be submitted; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Submit a job. Shell jobs: --params '{"cmd": "make test", "cwd": "/abs/dir"}' or
    /// '{"argv": ["make", "test"]}', optional "env" and "inherit" (names of secrets to
    /// pass from the daemon's environment at spawn). Agent jobs: '{"prompt": "…",
    /// "tools": [...], "model": "…", "max_turns": 10}'.
    #[command(
        after_help = "Shell jobs run only where they are allowed: LOOPS_ALLOW_SHELL_JOBS=1 in the daemon's environment, or `allow_shell_jobs: true` in loops.yaml. A refused job is recorded as dead at once, with the reason.\n\nExamples:\n  loops jobs submit shell -- ./backup.sh --full\n  loops jobs submit shell --params '{\"cmd\": \"./backup.sh\", \"cwd\": \"/srv/app\"}' --timeout 10m\n  loops jobs submit agent --params '{\"prompt\": \"Summarise inbox/done this week\"}' --follow"
    )]
    Submit {
        /// shell or agent.
        #[arg(value_parser = ["shell", "agent"])]
        kind: String,
        /// The job's parameters as JSON.
        #[arg(long, conflicts_with = "params_file")]
        params: Option<String>,
        /// The parameters from a JSON file ('-' for stdin).
        #[arg(long)]
        params_file: Option<PathBuf>,
        /// A shell job's program and its arguments, after `--`, run as they are (no shell):
        /// the same as --params '{"argv": [...]}'. For cwd or env, use --params.
        #[arg(last = true, value_name = "COMMAND", conflicts_with_all = ["params", "params_file"])]
        command: Vec<String>,
        #[command(flatten)]
        opts: Box<SubmitOptions>,
        /// Wait and stream its progress (runs it here if no daemon is running).
        #[arg(long, short)]
        follow: bool,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Jobs, newest first.
    List {
        /// Only jobs in this state (waiting, delayed, active, paused, waiting-children,
        /// completed, failed, dead, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only jobs whose name contains this.
        #[arg(long)]
        name: Option<String>,
        /// Only this kind (shell, agent, aggregator; loop and wake are the runner's own).
        #[arg(long)]
        kind: Option<String>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// The runner's own jobs too: loop runs in progress (kind loop, queue runs) and
        /// main-session wakes (kind wake), which `loops jobs cancel ID` stops like any job.
        #[arg(long)]
        all: bool,
        /// At most this many (0: all). Default: 50, or all with --json.
        #[arg(long, short = 'n')]
        limit: Option<usize>,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// One job: params, state history, attempts, result, tokens, timings, children,
    /// steering messages with their read receipts.
    Get {
        #[arg(value_parser = job_id)]
        id: JobId,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Where a job is: step, total if known, last tool, tokens, elapsed (cheap to call).
    Progress {
        #[arg(value_parser = job_id)]
        id: JobId,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// A job's transcript (agent) or output (shell).
    Logs {
        #[arg(value_parser = job_id)]
        id: JobId,
        /// Keep printing as it grows, until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a job and its descendants (a running one is stopped).
    Cancel {
        #[arg(value_parser = job_id)]
        id: JobId,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Pause a job: a waiting one is held; a running agent stops between turns with its
    /// conversation saved; a running shell job's process group is stopped.
    Pause {
        #[arg(value_parser = job_id)]
        id: JobId,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused job (an agent continues from its saved conversation), or run an
    /// agent job held for the day's budget now (held again at once if it is still spent).
    Resume {
        #[arg(value_parser = job_id)]
        id: JobId,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Submit a new job with the same parameters, keeping timeout, queue, retries and
    /// parent. `--set key=value` changes a parameter (the value is JSON if it parses).
    Replay {
        #[arg(value_parser = job_id)]
        id: JobId,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long, short)]
        follow: bool,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Run a dead or failed job again, with fresh attempts.
    Retry {
        #[arg(value_parser = job_id)]
        id: JobId,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Send a steering message to an agent job: the agent reads it before its next model
    /// turn. A shell job has no agent to read one, so it is refused.
    #[command(
        after_help = "Example:\n  loops jobs message 42 '{\"directive\": \"focus on revenue\"}'\n\nOnly an operator (this command) or the job's parent (--from-job) may steer a job."
    )]
    Message {
        #[arg(value_parser = job_id)]
        id: JobId,
        /// The message: JSON (plain text is sent as {"directive": TEXT}).
        message: String,
        /// Send as this job (it must be the target's parent).
        #[arg(long, value_name = "ID", value_parser = job_id)]
        from_job: Option<JobId>,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// The last 24 hours per job kind, and the queue's health now.
    Stats {
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run a prompt on the agent loop as a job. By default it waits and streams the
    /// transcript (running it here if no daemon is running); --detach only submits it.
    #[command(
        after_help = "Fan-out: --fanout-manifest FILE takes a JSON array of {\"prompt\": \"…\", \"input_vars\": {…}} (or of job specs: {\"kind\": \"agent\", \"params\": {…}, …}). Each becomes a child job; PROMPT becomes the aggregator, which runs once every child has ended and sees all their results. Token totals roll up to the aggregator.\n\nExamples:\n  loops agent run \"List the open questions in drafts/\" --tools read_file,list_files,finish\n  loops agent run \"Compare the findings\" --fanout-manifest companies.json --detach"
    )]
    Run(AgentRun),
}

#[derive(Debug, Args)]
pub struct AgentRun {
    /// What to do (with --fanout-manifest: what the aggregator does with the results).
    pub prompt: Option<String>,
    /// Tools it may use, comma-separated (default: the isolated set).
    #[arg(long)]
    pub tools: Option<String>,
    /// The model (default: loops.yaml `defaults:`).
    #[arg(long)]
    pub model: Option<String>,
    /// The provider from loops.yaml (default: `defaults:`).
    #[arg(long)]
    pub provider: Option<String>,
    /// At most this many model turns (default 20).
    #[arg(long)]
    pub max_turns: Option<u32>,
    /// Children from a JSON manifest, plus one aggregator.
    #[arg(long, value_name = "FILE")]
    pub fanout_manifest: Option<PathBuf>,
    #[command(flatten)]
    pub opts: SubmitOptions,
    /// Wait and stream (the default).
    #[arg(long, short, conflicts_with = "detach")]
    pub follow: bool,
    /// Submit and return at once.
    #[arg(long, short)]
    pub detach: bool,
    /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
    #[arg(long)]
    pub json: bool,
}

fn dur(s: &Option<String>, what: &str) -> Result<Option<Duration>> {
    match s {
        None => Ok(None),
        Some(t) => loops_core::duration::parse_duration(t)
            .map(Some)
            .map_err(|e| {
                CliError::new(format!("--{what} {t}: {e}"))
                    .help("durations look like 30s, 5m, 2h or 1h30m")
            }),
    }
}

fn spec_from(kind: &str, params: Value, o: &SubmitOptions) -> Result<JobSpec> {
    Ok(JobSpec {
        kind: Some(kind.to_string()),
        name: o.name.clone(),
        params,
        queue: o.queue.clone(),
        priority: o.priority,
        delay: dur(&o.delay, "delay")?,
        max_attempts: o.max_attempts,
        backoff_type: o.backoff_type.clone(),
        backoff_delay: dur(&o.backoff_delay, "backoff-delay")?,
        backoff_jitter: o.backoff_jitter,
        timeout: dur(&o.timeout, "timeout")?,
        max_stalled: o.max_stalled,
        idempotency_key: o.idempotency_key.clone(),
        parent: o.parent,
        on_child_fail: o.on_child_fail.clone(),
        source: "cli".into(),
    })
}

fn read_json_arg(inline: Option<&str>, file: Option<&PathBuf>, what: &str) -> Result<Value> {
    let (text, origin) = match (inline, file) {
        (Some(t), _) => (t.to_string(), format!("--{what}")),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CliError::new(format!("cannot read stdin: {e}")))?;
            (s, "stdin".into())
        }
        (None, Some(f)) => (
            std::fs::read_to_string(f).map_err(|e| {
                CliError::new(format!("cannot read {}: {e}", f.display()))
                    .help("give the path of a JSON file")
            })?,
            f.display().to_string(),
        ),
        (None, None) => {
            return Err(CliError::new(format!("no --{what} given"))
                .help("e.g. --params '{\"cmd\": \"echo hello\"}', or for a shell job the command after `--`: loops jobs submit shell -- echo hello"))
        }
    };
    serde_json::from_str(&text).map_err(|e| {
        CliError::new(format!("{origin} is not valid JSON: {e} (line {}, column {})", e.line(), e.column()))
            .help("JSON needs double quotes around names and strings; wrap the whole value in single quotes in the shell")
    })
}

/// Whether shell jobs submitted now will be allowed where they will run.
fn shell_allowed_for(ws: &Workspace, inline: bool) -> bool {
    if ws.settings.allow_shell_jobs {
        return true;
    }
    match loops_core::daemon_lock::daemon_alive(ws) {
        Some(info) if !inline => info.allow_shell_jobs,
        _ => worker::shell_allowed(ws),
    }
}

fn audit(store: &JobStore, job: &Job, allowed: bool) {
    let env_keys: Vec<String> = job
        .params
        .get("env")
        .and_then(|e| e.as_object())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut params = job.params.clone();
    if let Some(o) = params.as_object_mut() {
        // Values given inline are shown by key only; secrets come through `inherit`.
        o.insert("env".into(), json!(env_keys));
    }
    let entry = json!({
        "at": Utc::now(),
        "job": job.id,
        "source": job.source,
        "user": loops_core::secrets::var("USER").unwrap_or_default(),
        "params": params,
        "allowed": allowed,
        "state": job.state,
        "error": job.error,
    });
    if let Err(e) = store.audit(&entry) {
        eprintln!("warning: cannot append to the audit log: {e}");
    }
}

pub(super) fn jobs(ws: &Workspace, cmd: JobsCommand) -> Result {
    let store = JobStore::new(ws);
    match cmd {
        JobsCommand::Submit {
            kind,
            params,
            params_file,
            command,
            opts,
            follow,
            json,
        } => {
            let params = match (kind.as_str(), command.is_empty()) {
                (_, true) => read_json_arg(params.as_deref(), params_file.as_ref(), "params")?,
                ("shell", false) => serde_json::json!({ "argv": command }),
                _ => {
                    return Err(CliError::new("an agent job takes no command after `--`")
                    .help("an agent job is a prompt: --params '{\"prompt\": \"…\"}', or `loops agent run \"…\"`"))
                }
            };
            let spec = spec_from(&kind, params, &opts)?;
            submit_and_report(ws, &store, spec, opts.dry_run, follow, json)
        }
        JobsCommand::List {
            status,
            name,
            kind,
            queue,
            all,
            limit,
            json,
        } => list(
            &store,
            ListFilter {
                status,
                name,
                kind,
                queue,
                with_runs: all,
            },
            limit,
            json,
        ),
        JobsCommand::Get { id, json } => show_job(&store, id, json),
        JobsCommand::Progress { id, json } => show_progress(&store, id, json),
        JobsCommand::Logs { id, follow } => logs(ws, &store, id, follow),
        JobsCommand::Cancel { id, json } => cancel_job(ws, &store, id, json),
        JobsCommand::Pause { id, json } => pause_job(&store, id, json),
        JobsCommand::Resume { id, json } => resume_job(ws, &store, id, json),
        JobsCommand::Replay {
            id,
            set,
            follow,
            json,
        } => replay_job(ws, &store, id, &set, follow, json),
        JobsCommand::Retry { id, json } => retry_job(ws, &store, id, json),
        JobsCommand::Message {
            id,
            message,
            from_job,
            json,
        } => message_job(&store, id, message, from_job, json),
        JobsCommand::Stats { json } => show_stats(ws, &store, json),
    }
}

/// `loops jobs get ID`.
/// A job id as lists and reports print it (`#42`) or as a number (`42`).
fn job_id(text: &str) -> std::result::Result<JobId, String> {
    let digits = text.trim().strip_prefix('#').unwrap_or(text.trim());
    digits.parse::<JobId>().map_err(|_| {
        format!(
            "`{text}` is not a job id: give its number as `loops jobs list` shows it (42 or #42)"
        )
    })
}

fn show_job(store: &JobStore, id: JobId, json: bool) -> Result {
    let now = Utc::now();
    let j = get(store, id)?;
    if json {
        print_json(&report::to_json(&j, now));
    } else {
        print!("{}", report::details(&j, now));
    }
    Ok(())
}

/// `loops jobs progress ID`.
fn show_progress(store: &JobStore, id: JobId, json: bool) -> Result {
    let now = Utc::now();
    let j = get(store, id)?;
    if json {
        print_json(&report::progress_json(&j, now));
    } else {
        print!("{}", report::report(&j, now));
    }
    Ok(())
}

/// `loops jobs cancel ID`: asks, then waits briefly for the run to stop.
fn cancel_job(ws: &Workspace, store: &JobStore, id: JobId, json: bool) -> Result {
    let j = queue::cancel(store, id, Utc::now())?;
    if j.kind.is_light() && !j.state.is_terminal() {
        if !loops_core::runs::run_has_begun(&j) {
            return not_begun_report(&j, json);
        }
        return cancel_report(ws, wait_for_run_to_stop(store, j), json);
    }
    let j = if j.state.is_terminal() {
        j
    } else {
        wait_for_runner(store, id, |j| j.state.is_terminal())?
    };
    done_report(&j, json, "cancel requested; its runner is stopping it")
}

/// A cancelled run that was still waiting to begin: it will not start.
fn not_begun_report(j: &Job, json: bool) -> Result {
    if json {
        print_json(&report::to_json(j, Utc::now()));
        return Ok(());
    }
    println!("Job #{} ({}) — cancel requested", j.id, j.name);
    println!(
        "  run:      had not begun (waiting for its time, or its turn under limits.max_concurrent_jobs): it is recorded as not run instead of starting"
    );
    println!("  history:  `loops runs {}`", j.name);
    Ok(())
}

/// What a cancel of a loop's run or a wake did: the run's record once it has one (how
/// long it ran, what it was recorded as), or that its runner is still stopping it.
fn cancel_report(ws: &Workspace, stopped: Stopped, json: bool) -> Result {
    let (j, run) = match stopped {
        Stopped::Still(j) => {
            return done_report(&j, json, "cancel requested; its runner is stopping it")
        }
        Stopped::Ended(j, run) => (j, run),
    };
    let log = loops_core::runs::RunLog::new(&ws.layout().runs_dir(), ws.settings.rotate_bytes);
    let rec = run.as_ref().and_then(|r| log.find(&r.loop_name, &r.run_id));
    if json {
        let mut v = report::to_json(&j, Utc::now());
        v["run"] = rec.as_ref().map_or(Value::Null, |r| json!(r));
        print_json(&v);
        return Ok(());
    }
    println!("{}", report::headline(&j));
    match (&run, &rec) {
        (Some(m), Some(r)) => {
            println!(
                "  run:      {} of `{}`, stopped after {}, recorded {}{}",
                r.run_id,
                m.loop_name,
                report::short_ms(r.duration_ms),
                r.outcome.as_str(),
                r.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            if j.kind == JobKind::Wake {
                println!(
                    "  inbox:    its handoffs went back to the inbox, an attempt counted; the main session is woken for them again in {} (`loops inbox reject ID` drops one)",
                    loops_core::duration::format_duration(loops_core::jobs::policy::WAKE_RETRY)
                );
            }
            println!("  history:  `loops runs {}`", m.loop_name);
        }
        _ => {
            if let Some(e) = &j.error {
                println!("  {e}");
            }
        }
    }
    Ok(())
}

/// `loops jobs pause ID`: asks, then waits briefly for the runner to hold it.
fn pause_job(store: &JobStore, id: JobId, json: bool) -> Result {
    let j = queue::pause(store, id, Utc::now())?;
    let j = if j.state == JobState::Paused {
        j
    } else {
        wait_for_runner(store, id, |j| j.state != JobState::Active)?
    };
    done_report(
        &j,
        json,
        "pause requested; it stops at the end of its current turn",
    )
}

/// `loops jobs resume ID`.
fn resume_job(ws: &Workspace, store: &JobStore, id: JobId, json: bool) -> Result {
    let j = queue::resume(store, id, Utc::now())?;
    let j = if j.control.is_some() {
        wait_for_runner(store, id, |j| j.control.is_none())?
    } else {
        j
    };
    if !json && j.state == JobState::Waiting {
        warn_if_no_daemon(ws);
    }
    done_report(&j, json, "")
}

/// `loops jobs replay ID [--set KEY=VALUE]…`.
fn replay_job(
    ws: &Workspace,
    store: &JobStore,
    id: JobId,
    set: &[String],
    follow: bool,
    json: bool,
) -> Result {
    let overrides = parse_overrides(set)?;
    let j = queue::replay(store, id, &overrides, Utc::now(), &format!("replay:{id}"))?;
    after_submit(ws, store, j, false, follow, json)
}

/// The `--set KEY=VALUE` pairs of a replay; a value is JSON when it parses, else a string.
fn parse_overrides(set: &[String]) -> Result<Vec<(String, Value)>> {
    let mut overrides = Vec::new();
    for s in set {
        let Some((k, v)) = s.split_once('=') else {
            return Err(CliError::new(format!("--set {s}: expected KEY=VALUE"))
                .help("e.g. --set prompt=\"try again\" or --set max_turns=5"));
        };
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        overrides.push((k.trim().to_string(), v));
    }
    Ok(overrides)
}

/// `loops jobs retry ID`.
fn retry_job(ws: &Workspace, store: &JobStore, id: JobId, json: bool) -> Result {
    let j = queue::retry(store, id, Utc::now())?;
    if !json {
        warn_if_no_daemon(ws);
    }
    done_report(&j, json, "")
}

/// `loops jobs message ID MESSAGE`: plain text is sent as `{"directive": TEXT}`.
fn message_job(
    store: &JobStore,
    id: JobId,
    message: String,
    from_job: Option<JobId>,
    json: bool,
) -> Result {
    let body = crate::operator::job_message_body(&message);
    let from = from_job.map(Sender::Job).unwrap_or(Sender::Operator);
    let m = queue::message(store, id, body, from, Utc::now())?;
    if json {
        print_json(&serde_json::to_value(&m).unwrap_or_default());
    } else {
        println!(
            "message {} sent to job #{id}; it is read before the agent's next turn (`loops jobs get {id}` shows the receipt)",
            m.seq
        );
    }
    Ok(())
}

/// `loops jobs stats`.
fn show_stats(ws: &Workspace, store: &JobStore, json: bool) -> Result {
    let st = stats::compute(
        store,
        Utc::now(),
        loops_core::daemon_lock::daemon_alive(ws).is_some(),
    );
    if json {
        print_json(&serde_json::to_value(&st).unwrap_or_default());
    } else {
        print!("{}", stats::render(&st));
    }
    Ok(())
}

fn get(store: &JobStore, id: JobId) -> Result<Job> {
    store
        .get(id)?
        .ok_or_else(|| QueueError::NotFound(id).into())
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn done_report(j: &Job, json: bool, pending_note: &str) -> Result {
    if json {
        print_json(&report::to_json(j, Utc::now()));
    } else {
        print!("{}", report::report(j, Utc::now()));
        if j.control.is_some() && !pending_note.is_empty() {
            println!("  ({pending_note})");
        }
    }
    Ok(())
}

/// Waits (briefly) for a job's runner to act on a request; returns the job as it is then.
fn wait_for_runner(store: &JobStore, id: JobId, done: impl Fn(&Job) -> bool) -> Result<Job> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let j = get(store, id)?;
        if done(&j) || std::time::Instant::now() >= deadline {
            return Ok(j);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loop's run or a wake asked to stop, as far as the cancel can tell.
enum Stopped {
    /// Still running when the wait ended: its runner is stopping it.
    Still(Job),
    /// Its job is gone: the run has ended and been recorded (the run's record, not the
    /// queue, is its history). With the run the job stood for.
    Ended(Job, Option<Box<loops_core::runs::RunInProgress>>),
}

fn wait_for_run_to_stop(store: &JobStore, asked: Job) -> Stopped {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let run = loops_core::runs::run_of_job(&asked).map(Box::new);
    loop {
        match store.get(asked.id) {
            Ok(Some(j)) if j.state.is_terminal() => return Stopped::Ended(j, run),
            Ok(Some(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(Some(j)) => return Stopped::Still(j),
            _ => {
                let mut j = asked;
                let why = format!(
                    "the run was stopped and recorded as interrupted (`loops runs {}`)",
                    j.name
                );
                j.transition(JobState::Cancelled, Utc::now(), Some(why.clone()));
                j.error = Some(why);
                return Stopped::Ended(j, run);
            }
        }
    }
}

fn warn_if_no_daemon(ws: &Workspace) {
    if loops_core::daemon_lock::daemon_alive(ws).is_none() {
        eprintln!(
            "note: no daemon is running in this workspace: nothing will run it until `loops run` starts (or run it here with `--follow`)"
        );
    }
}

fn submit_and_report(
    ws: &Workspace,
    store: &JobStore,
    spec: JobSpec,
    dry_run: bool,
    follow: bool,
    json: bool,
) -> Result {
    let now = Utc::now();
    let planned = queue::plan(&spec, now)?;
    let inline = follow && loops_core::daemon_lock::daemon_alive(ws).is_none();
    let refused = (planned.kind == JobKind::Shell && !shell_allowed_for(ws, inline))
        .then(worker::shell_refusal);
    if dry_run {
        let mut v = serde_json::to_value(&planned).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("id");
            o.insert("dry_run".into(), json!(true));
            o.insert("would_be_refused".into(), json!(refused));
        }
        if json {
            print_json(&v);
        } else {
            println!(
                "dry run: this {} job would be submitted (nothing was written):",
                planned.kind
            );
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            if let Some(r) = &refused {
                println!("it would be refused: {r}");
            }
        }
        return Ok(());
    }
    let sub = queue::submit(store, &spec, now, refused.clone())?;
    if sub.job.kind == JobKind::Shell && !sub.existing {
        audit(store, &sub.job, refused.is_none());
    }
    if sub.existing && !json {
        eprintln!(
            "the idempotency key is held by job #{} ({}): no new job was submitted",
            sub.job.id, sub.job.state
        );
    }
    if sub.job.state == JobState::Dead {
        if json {
            // One JSON document on stdout: the dead job, whose `error` says why.
            print_json(&report::to_json(&sub.job, Utc::now()));
            return Err(CliError::silent(1));
        }
        return Err(CliError::new(format!(
            "job #{} was refused and is dead: {}",
            sub.job.id,
            sub.job.error.clone().unwrap_or_default()
        ))
        .help("shell jobs need LOOPS_ALLOW_SHELL_JOBS=1 where they run (the daemon's environment), or `allow_shell_jobs: true` in loops.yaml"));
    }
    after_submit(ws, store, sub.job, sub.existing, follow, json)
}

fn after_submit(
    ws: &Workspace,
    store: &JobStore,
    job: Job,
    existing: bool,
    follow: bool,
    json: bool,
) -> Result {
    if !follow {
        if json {
            let mut v = report::to_json(&job, Utc::now());
            if let Some(o) = v.as_object_mut() {
                o.insert("existing".into(), json!(existing));
            }
            print_json(&v);
        } else {
            println!("{}", report::headline(&job));
        }
        if !json {
            warn_if_no_daemon(ws);
        }
        return Ok(());
    }
    let end = follow_job(ws, store, job.id, !json)?;
    if json {
        print_json(&report::to_json(&end, Utc::now()));
    } else {
        print!("{}", report::report(&end, Utc::now()));
    }
    if let Some((n, why)) = held_children(store, &end) {
        eprintln!(
            "note: job #{} waits for {n} child job(s) held for the day's budget; they run by themselves at the next UTC midnight while `loops run` serves the workspace: {why}",
            end.id
        );
        return Err(CliError::silent(1));
    }
    if let Some(why) = &end.held {
        eprintln!(
            "note: job #{} is held, and runs by itself at {} while `loops run` serves the workspace: {why}",
            end.id,
            end.run_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        );
        return Err(CliError::silent(1));
    }
    match end.state {
        JobState::Completed | JobState::Paused => Ok(()),
        JobState::Waiting | JobState::Delayed => {
            eprintln!("note: job #{} is {} (it runs again when `loops run` starts, or with `loops jobs replay`)", end.id, end.state);
            Err(CliError::silent(1))
        }
        _ => Err(CliError::silent(1)),
    }
}

/// A fan-out's aggregator whose every outstanding child is held for the day's budget:
/// how many, and why the first is.
fn held_children(store: &JobStore, j: &Job) -> Option<(usize, String)> {
    if j.state != JobState::WaitingChildren {
        return None;
    }
    let pending = queue::outstanding_children(j);
    let mut why = None;
    for c in &pending {
        let held = store.get(*c).ok().flatten().and_then(|c| c.held)?;
        why.get_or_insert(held);
    }
    why.map(|w| (pending.len(), w))
}

/// Waits for a job to end (or pause), streaming its output: runs it here when no daemon
/// is running, else follows the daemon's run through the job's files.
fn follow_job(ws: &Workspace, store: &JobStore, id: JobId, stream: bool) -> Result<Job> {
    let rt = crate::daemon::runtime()
        .map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))?;
    if loops_core::daemon_lock::daemon_alive(ws).is_none() {
        if run_here(&rt, ws, store, id, stream) == Ran::Here {
            return get(store, id);
        }
        if stream {
            eprintln!("note: job #{id} ran in another process (a daemon that started meanwhile): its output follows");
        }
    }
    // A daemon runs it: follow its files.
    rt.block_on(follow_daemon_run(store, id, stream))
}

/// Who ran a job the CLI set out to run itself.
#[derive(Debug, PartialEq, Eq)]
enum Ran {
    Here,
    /// A daemon that started after the CLI looked for one claimed the job first.
    Elsewhere,
}

/// A worker for this process alone, as the daemon's would be, without its grace period.
fn inline_worker(ws: &Workspace) -> worker::WorkerConfig {
    let ws = Arc::new(ws.clone());
    let committer = if ws.settings.git_commit {
        loops_core::history::Committer::start(
            &ws.root,
            &ws.settings.author_name,
            &ws.settings.author_email,
        )
        .ok()
    } else {
        None
    };
    worker::WorkerConfig {
        ws: ws.clone(),
        committer,
        clock: Arc::new(SystemClock),
        permits: Arc::new(tokio::sync::Semaphore::new(ws.settings.max_concurrent_jobs)),
        allow_shell: worker::shell_allowed(&ws),
        grace: Duration::from_secs(0),
        live: None,
    }
}

/// Runs job `id` in this process (no daemon is running) until it ends, pauses or a
/// signal stops it; with `stream`, its output on stdout and its progress on stderr.
fn run_here(
    rt: &tokio::runtime::Runtime,
    ws: &Workspace,
    store: &JobStore,
    id: JobId,
    stream: bool,
) -> Ran {
    let cfg = inline_worker(ws);
    if stream {
        eprintln!("no daemon is running: running job #{id} here (Ctrl-C stops it; it then waits for `loops run`)");
    }
    rt.block_on(async {
        let (tx, rx) = loops_core::exec::live_channel();
        // With --json the stream is not printed: stdout is the one JSON document.
        let (tx, printer) = if stream {
            (Some(tx), Some(super::output::spawn_printer(rx)))
        } else {
            (None, None)
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let mut signalled = super::output::stop_on_signal();
        let on_signal = {
            let stop_tx = stop_tx.clone();
            tokio::spawn(async move {
                if signalled.changed().await.is_ok() {
                    let _ = stop_tx.send(true);
                }
            })
        };
        let taken = tokio::spawn(taken_elsewhere(store.clone(), id, stop_tx));
        let watcher = stream.then(|| watch_progress(store.clone(), id));
        let ended = worker::run(cfg, worker::Mode::Only(id), stop_rx, tx).await;
        on_signal.abort();
        if let Some(w) = watcher {
            w.abort();
        }
        loops_agent::mcp_client::McpPool::shutdown_all().await;
        if let Some(p) = printer {
            let _ = p.await;
        }
        taken.abort();
        // Not started here, yet it ran: another worker claimed it first, and its output
        // is in the job's files (the job may even have ended before this process looked).
        let ran = store
            .get(id)
            .ok()
            .flatten()
            .is_some_and(|j| j.started.is_some());
        if !ended.ran_target && ran {
            Ran::Elsewhere
        } else {
            Ran::Here
        }
    })
}

/// Watches job `id` while this process means to run it: a daemon that started after the
/// CLI looked for one may claim it first. Then this process's worker is stopped (it has
/// nothing of the job to run), so that the CLI follows the daemon's run as it goes.
async fn taken_elsewhere(store: JobStore, id: JobId, stop: Arc<tokio::sync::watch::Sender<bool>>) {
    let me = std::process::id();
    loop {
        match store.get(id) {
            Ok(Some(j)) if j.state.is_terminal() || j.state == JobState::Paused => return,
            Ok(Some(j)) if j.state == JobState::Active => {
                if j.lease.as_ref().is_some_and(|l| l.pid != me) {
                    let _ = stop.send(true);
                    return;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints job `id`'s progress lines until aborted.
fn watch_progress(store: JobStore, id: JobId) -> tokio::task::JoinHandle<()> {
    // The job's file says where it is; read it beside the run, as a follower of
    // a daemon's run would.
    tokio::spawn(async move {
        let mut w = ProgressWatch::default();
        loop {
            if let Ok(Some(j)) = store.get(id) {
                w.observe(&store, &j);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Follows the daemon's run of job `id` through its files until it ends or pauses.
async fn follow_daemon_run(store: &JobStore, id: JobId, stream: bool) -> Result<Job> {
    let (wtx, mut wrx) = tokio::sync::mpsc::unbounded_channel();
    let _w = loops_core::watcher::watch(
        &[(store.dir().to_path_buf(), loops_core::watcher::Mode::Flat)],
        Duration::from_millis(20),
        wtx,
    )
    .ok();
    let mut tail = Tail::default();
    let mut progress = ProgressWatch::default();
    loop {
        if stream {
            tail.pump(store, id);
        }
        let job = store.get(id)?;
        if let (true, Some(j)) = (stream, &job) {
            progress.observe(store, j);
        }
        match job {
            Some(j)
                if j.state.is_terminal()
                    || j.state == JobState::Paused
                    || j.held.is_some()
                    || held_children(store, &j).is_some() =>
            {
                if stream {
                    tail.pump(store, id);
                }
                return Ok(j);
            }
            Some(_) => {}
            None => return Err(QueueError::NotFound(id).into()),
        }
        // Events wake us at once; the timeout is the safety net.
        let _ = tokio::time::timeout(Duration::from_secs(1), wrx.recv()).await;
    }
}

/// Prints a job's progress line on stderr each time it changes (`--follow`): state,
/// attempt, step, last tool, children done. The output itself streams on stdout.
#[derive(Default)]
struct ProgressWatch {
    last: String,
}

impl ProgressWatch {
    fn observe(&mut self, store: &JobStore, j: &Job) {
        // The report printed at the end says how it ended.
        if j.state.is_terminal() {
            return;
        }
        let children = (!j.children.is_empty()).then(|| {
            let done = j
                .children
                .iter()
                .filter(|c| {
                    store
                        .get(**c)
                        .ok()
                        .flatten()
                        .is_some_and(|k| k.state.is_terminal())
                })
                .count();
            (done, j.children.len())
        });
        let line = report::follow_line(j, children);
        if line != self.last {
            eprintln!("{line}");
            self.last = line;
        }
    }
}

/// Prints what a job's transcript or log gained since the last call.
#[derive(Default)]
struct Tail {
    offset: u64,
}

impl Tail {
    fn pump(&mut self, store: &JobStore, id: JobId) {
        let path = [store.transcript_path(id), store.log_path(id)]
            .into_iter()
            .find(|p| p.exists());
        let Some(path) = path else {
            return;
        };
        let Ok(mut f) = std::fs::File::open(&path) else {
            return;
        };
        if f.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        // Copied through a small buffer: a log is up to limits.max_job_log_bytes per
        // attempt, and need not sit in memory to be printed.
        let mut out = std::io::stdout().lock();
        let copied = std::io::copy(&mut f, &mut out);
        if let Ok(n) = copied {
            self.offset += n;
        }
        let flushed = out.flush();
        // `loops jobs logs ID | head`: the reader has gone, so there is no one to tail for.
        if [copied.err(), flushed.err()]
            .iter()
            .flatten()
            .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        {
            super::error::die_of_sigpipe();
        }
    }
}

fn logs(ws: &Workspace, store: &JobStore, id: JobId, follow: bool) -> Result {
    let j = get(store, id)?;
    let _ = ws;
    let mut tail = Tail::default();
    tail.pump(store, id);
    if tail.offset == 0 && !follow {
        if j.state.is_terminal() {
            eprintln!(
                "job #{id} has no output: it ended ({}) without printing anything",
                j.state
            );
        } else {
            eprintln!("job #{id} has no output yet ({})", j.state);
        }
        return Ok(());
    }
    if follow && !(j.state.is_terminal()) {
        let rt = crate::daemon::runtime()
            .map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))?;
        rt.block_on(async {
            let (wtx, mut wrx) = tokio::sync::mpsc::unbounded_channel();
            let _w = loops_core::watcher::watch(
                &[(store.dir().to_path_buf(), loops_core::watcher::Mode::Flat)],
                Duration::from_millis(20),
                wtx,
            )
            .ok();
            loop {
                tail.pump(store, id);
                if store
                    .get(id)
                    .ok()
                    .flatten()
                    .is_none_or(|j| j.state.is_terminal())
                {
                    tail.pump(store, id);
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), wrx.recv()).await;
            }
        });
    }
    Ok(())
}

/// Which jobs `loops jobs list` shows.
struct ListFilter {
    status: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    /// The runner's own loop runs and wakes too (`--all`).
    with_runs: bool,
}

fn list(store: &JobStore, filter: ListFilter, limit: Option<usize>, json: bool) -> Result {
    let with_runs = filter.with_runs;
    let (mut rows, total) = filter.matching(store)?;
    let matched = rows.len();
    let limit = limit.unwrap_or(if json { 0 } else { 50 });
    if limit > 0 {
        rows.truncate(limit);
    }
    if json {
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "{}",
            if total == 0 {
                "no jobs yet: `loops jobs submit` or `loops agent run` adds one"
            } else {
                "no jobs match"
            }
        );
        // A loop's run or a wake is a job only while it waits or runs: a person who
        // looks for a finished one is told where it went.
        if with_runs {
            println!("(loops' runs and the main session's wakes are listed while they wait or run; `loops runs` has the finished ones)");
        }
        return Ok(());
    }
    print!("{}", list_table(&rows));
    if matched > rows.len() {
        println!(
            "… {} more (use --limit 0 for all, or filter with --status / --name)",
            matched - rows.len()
        );
    }
    Ok(())
}

impl ListFilter {
    /// The jobs that pass, newest first, and how many jobs there are in all.
    fn matching(self, store: &JobStore) -> Result<(Vec<JobSummary>, usize)> {
        let ListFilter {
            status,
            name,
            kind,
            queue,
            with_runs,
        } = self;
        let status = status.map(|s| parse_state_arg(&s)).transpose()?;
        let kind = kind.map(|k| parse_kind_arg(&k)).transpose()?;
        let (all, errors) = store.list();
        for e in errors {
            eprintln!("warning: {e}");
        }
        let total = all.len();
        let rows = all
            .into_iter()
            .rev()
            .filter(|s| status.is_none_or(|st| s.state == st))
            .filter(|s| kind.is_none_or(|k| s.kind == k))
            .filter(|s| with_runs || kind.is_some() || !s.kind.is_light())
            .filter(|s| name.as_deref().is_none_or(|n| s.name.contains(n)))
            .filter(|s| queue.as_deref().is_none_or(|q| s.queue == q))
            .collect();
        Ok((rows, total))
    }
}

/// The state `--status` names.
fn parse_state_arg(s: &str) -> Result<JobState> {
    JobState::parse(s).ok_or_else(|| {
        CliError::new(format!("unknown status `{s}`")).help(
            "use one of: waiting, delayed, active, paused, waiting-children, completed, failed, dead, cancelled",
        )
    })
}

/// The kind `--kind` names.
fn parse_kind_arg(k: &str) -> Result<JobKind> {
    JobKind::parse(k).ok_or_else(|| {
        CliError::new(format!("unknown kind `{k}`"))
            .help("use shell, agent, aggregator, loop or wake")
    })
}

/// The table `loops jobs list` prints: one row a job.
fn list_table(rows: &[JobSummary]) -> String {
    let now = Utc::now();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                format!("#{}", s.id),
                s.name.clone(),
                s.kind.to_string(),
                s.state.to_string(),
                s.queue.clone(),
                s.priority.to_string(),
                s.attempts.to_string(),
                if s.tokens.is_zero() {
                    "-".into()
                } else {
                    format!(
                        "{}/{}",
                        report::num(s.tokens.input),
                        report::num(s.tokens.output)
                    )
                },
                super::output::relative(s.created, now),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "KIND",
            "STATE",
            "QUEUE",
            "PRI",
            "ATTEMPTS",
            "TOKENS IN/OUT",
            "CREATED",
        ],
        &body,
    )
}

pub(super) fn agent(ws: &Workspace, cmd: AgentCommand) -> Result {
    let AgentCommand::Run(a) = cmd;
    let store = JobStore::new(ws);
    let params = agent_params(&a);
    let follow = !a.detach;
    let Some(manifest) = &a.fanout_manifest else {
        let Some(prompt) = a.prompt.clone().filter(|p| !p.trim().is_empty()) else {
            return Err(CliError::new("no prompt given")
                .help("loops agent run \"what to do\" (or --fanout-manifest FILE)"));
        };
        let mut params = params;
        params.insert("prompt".into(), json!(prompt));
        let spec = spec_from("agent", Value::Object(params), &a.opts)?;
        return submit_and_report(ws, &store, spec, a.opts.dry_run, follow, a.json);
    };
    // Fan-out.
    let children = fanout_children(manifest, &params, &a.opts)?;
    let mut agg_params = params.clone();
    if let Some(p) = a.prompt.clone().filter(|p| !p.trim().is_empty()) {
        agg_params.insert("prompt".into(), json!(p));
    }
    let mut agg = spec_from("aggregator", Value::Object(agg_params), &a.opts)?;
    if agg.name.is_none() {
        agg.name = Some(format!("fan-out of {}", children.len()));
    }
    submit_fanout(ws, &store, &children, &agg, &a, follow)
}

/// The agent parameters `loops agent run` takes as options (every child of a fan-out
/// starts from them too).
fn agent_params(a: &AgentRun) -> serde_json::Map<String, Value> {
    let mut params = serde_json::Map::new();
    if let Some(t) = &a.tools {
        params.insert("tools".into(), json!(t));
    }
    if let Some(m) = &a.model {
        params.insert("model".into(), json!(m));
    }
    if let Some(p) = &a.provider {
        params.insert("provider".into(), json!(p));
    }
    if let Some(n) = a.max_turns {
        params.insert("max_turns".into(), json!(n));
    }
    params
}

/// The children a fan-out manifest lists, one spec an item.
fn fanout_children(
    manifest: &std::path::Path,
    params: &serde_json::Map<String, Value>,
    opts: &SubmitOptions,
) -> Result<Vec<JobSpec>> {
    let text = std::fs::read_to_string(manifest).map_err(|e| {
        CliError::new(format!("cannot read {}: {e}", manifest.display())).help(
            "give a JSON file: an array of {\"prompt\": …, \"input_vars\": {…}} or of job specs",
        )
    })?;
    let items: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
        CliError::new(format!(
            "{}:{}:{}: not a JSON array: {e}",
            manifest.display(),
            e.line(),
            e.column()
        ))
        .help("the manifest is an array: [{\"prompt\": \"Research {company}\", \"input_vars\": {\"company\": \"Acme\"}}, …]")
    })?;
    let mut children = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{} item {}", manifest.display(), i + 1);
        let spec = if item.get("kind").is_some() || item.get("params").is_some() {
            let mut s: JobSpec = serde_json::from_value(item.clone()).map_err(|e| {
                CliError::new(format!("{at}: {e}"))
                    .help("a job spec has kind, params and optional name, queue, priority, timeout, max_attempts, …")
            })?;
            s.source = "cli".into();
            s
        } else {
            prompt_item_spec(item, &at, params, opts)?
        };
        children.push(spec);
    }
    Ok(children)
}

/// The fields a prompt item of a fan-out manifest may have.
const PROMPT_ITEM_FIELDS: &[&str] = &[
    "prompt",
    "input_vars",
    "name",
    "tools",
    "model",
    "provider",
    "max_turns",
];

/// The agent job a prompt item (`{"prompt": …, "input_vars": {…}}`) of a fan-out
/// manifest stands for: the run's parameters, with the item's fields over them.
fn prompt_item_spec(
    item: &Value,
    at: &str,
    params: &serde_json::Map<String, Value>,
    opts: &SubmitOptions,
) -> Result<JobSpec> {
    let Some(obj) = item.as_object() else {
        return Err(CliError::new(format!(
            "{at}: expected an object, got {item}"
        )));
    };
    for k in obj.keys() {
        if !PROMPT_ITEM_FIELDS.contains(&k.as_str()) {
            return Err(CliError::new(format!("{at}: unknown field \"{k}\"")).help(
                "a prompt item has prompt and optional input_vars, name, tools, model, max_turns",
            ));
        }
    }
    let mut p = params.clone();
    for (k, v) in obj {
        if k != "name" {
            p.insert(k.clone(), v.clone());
        }
    }
    Ok(JobSpec {
        kind: Some("agent".into()),
        name: prompt_item_name(obj),
        params: Value::Object(p),
        timeout: dur(&opts.timeout, "timeout")?,
        max_attempts: opts.max_attempts,
        queue: opts.queue.clone(),
        priority: opts.priority,
        source: "cli".into(),
        ..Default::default()
    })
}

/// A prompt item's name: its own, else its prompt with the variables filled in, on one
/// line and clipped.
fn prompt_item_name(obj: &serde_json::Map<String, Value>) -> Option<String> {
    obj.get("name")
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .or_else(|| {
            obj.get("prompt")
                .and_then(|p| p.as_str())
                .map(|p| worker::fill_vars(p, obj.get("input_vars").and_then(|v| v.as_object())))
        })
        .map(|n| loops_core::text::clip(&n.split_whitespace().collect::<Vec<_>>().join(" "), 48))
}

/// Submits a fan-out's children and aggregator (or, with --dry-run, only checks them),
/// then reports or follows the aggregator as a single submission would.
fn submit_fanout(
    ws: &Workspace,
    store: &JobStore,
    children: &[JobSpec],
    agg: &JobSpec,
    a: &AgentRun,
    follow: bool,
) -> Result {
    let now = Utc::now();
    if a.opts.dry_run {
        for (i, c) in children.iter().enumerate() {
            queue::plan(c, now).map_err(|e| CliError::new(format!("child {}: {e}", i + 1)))?;
        }
        queue::plan(agg, now)?;
        println!(
            "dry run: {} children and one aggregator would be submitted (nothing was written)",
            children.len()
        );
        return Ok(());
    }
    let inline = follow && loops_core::daemon_lock::daemon_alive(ws).is_none();
    let shell_ok = shell_allowed_for(ws, inline);
    let (agg_job, kids) = queue::submit_fanout(store, children, agg, now, &|j: &Job| {
        (j.kind == JobKind::Shell && !shell_ok).then(worker::shell_refusal)
    })?;
    for k in kids.iter().filter(|k| k.kind == JobKind::Shell) {
        audit(store, k, shell_ok);
    }
    if !a.json {
        println!(
            "{} with {} children (#{}–#{})",
            report::headline(&agg_job),
            kids.len(),
            kids.first().map(|k| k.id).unwrap_or(0),
            kids.last().map(|k| k.id).unwrap_or(0)
        );
    }
    after_submit(ws, store, agg_job, false, follow, a.json)
}
