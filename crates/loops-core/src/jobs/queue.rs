//! Every operation on the queue, as one locked transaction over the job files: submit
//! (with idempotency keys, in batches, and atomic fan-out), claim (a fenced lease),
//! heartbeat, finish (retries with backoff), cancel (cascading), pause, resume, replay,
//! retry, steering messages, and the sweep that requeues jobs whose runner died or whose
//! lease lapsed. Each takes `now` from the caller's clock, so a test can walk through
//! days of backoff without sleeping.
//!
//! Each operation is written once, as a `*_in` function over a [`JobTx`] (one
//! transaction of any engine); the functions taking a [`JobStore`] run it in a
//! transaction of the file engine, and `engine::JobEngine` is the interface over both.

use super::job::*;
use super::params::JobParams;
use super::store::{JobStore, JobTx, StoreError};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("there is no job #{0}")]
    NotFound(JobId),
    #[error("job #{id} is {state}: cannot {op} it")]
    InvalidState {
        id: JobId,
        state: JobState,
        op: &'static str,
        help: String,
    },
    #[error("{0}")]
    InvalidSpec(String),
    #[error("permission denied: {0}")]
    Permission(String),
    #[error("job #{0} is no longer leased by this process (its lease was taken over)")]
    LostLease(JobId),
    #[error("job #{0} is a {1} job: it has no agent to read a message")]
    NotSteerable(JobId, JobKind),
}

impl QueueError {
    pub fn help(&self) -> Option<String> {
        match self {
            QueueError::Store(e) => e.help(),
            QueueError::NotFound(_) => Some("`loops jobs list` shows the jobs there are".into()),
            QueueError::InvalidState { help, .. } => Some(help.clone()),
            QueueError::InvalidSpec(_) => {
                Some("`loops jobs submit --help` shows the parameters each kind takes".into())
            }
            QueueError::Permission(_) => None,
            QueueError::LostLease(_) => None,
            QueueError::NotSteerable(id, JobKind::Shell) => Some(format!(
                "messages steer agent jobs between model turns; to change what a shell job runs, \
                 cancel it (`loops jobs cancel {id}`) or run it again changed (`loops jobs replay {id} --set cmd=\"…\"`)"
            )),
            QueueError::NotSteerable(id, _) => Some(format!(
                "messages steer agent jobs between model turns; a loop's run or a wake reads none: \
                 `loops jobs cancel {id}` stops it, and what the loop's next run reads is its prompt.md and state.md"
            )),
        }
    }
}

/// Who sends a steering message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A person at the CLI, or an MCP client acting for one.
    Operator,
    /// Another job: allowed only if it is the target's parent.
    Job(JobId),
}

impl Sender {
    fn label(&self) -> String {
        match self {
            Sender::Operator => "operator".into(),
            Sender::Job(id) => format!("job:{id}"),
        }
    }
}

/// A request to run something. Deserialises from the JSON a manifest, `--params` or an
/// MCP call gives; durations are `"30s"`-style strings or numbers of seconds.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub params: Value,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default, deserialize_with = "de_duration")]
    pub delay: Option<Duration>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub backoff_type: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    pub backoff_delay: Option<Duration>,
    #[serde(default)]
    pub backoff_jitter: Option<f64>,
    #[serde(default, deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub max_stalled: Option<u32>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub parent: Option<JobId>,
    #[serde(default)]
    pub on_child_fail: Option<String>,
    /// Set by the caller, not by the request.
    #[serde(skip)]
    pub source: String,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| *f >= 0.0)
            .map(|f| Some(Duration::from_secs_f64(f)))
            .ok_or_else(|| serde::de::Error::custom("a duration must be 0 or more seconds")),
        Some(Value::String(s)) => crate::duration::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Some(other) => Err(serde::de::Error::custom(format!(
            "a duration is a string like \"30s\" or a number of seconds, not {other}"
        ))),
    }
}

/// The result of a submit.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub job: Job,
    /// The idempotency key was already held: this is the job that holds it.
    pub existing: bool,
}

/// Reads a job's params as [`JobParams::of`] does (the worker reads them so too); `Err`
/// is the first thing wrong with them.
fn validate_params(kind: JobKind, params: &Value) -> Result<JobParams, QueueError> {
    JobParams::of(kind, params).map_err(QueueError::InvalidSpec)
}

/// A job's name when its spec gives none: its command or its prompt, on one line.
fn default_name(kind: JobKind, params: &JobParams) -> String {
    let raw = match (kind, params) {
        (JobKind::Aggregator, _) => "aggregate".into(),
        (_, JobParams::Shell(p)) => p.command.text(),
        (_, JobParams::Agent(p)) => p.prompt.clone(),
    };
    let one_line: String = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::text::clip(&one_line, 48)
}

/// Builds (and checks) the job a spec describes, without writing anything.
pub fn plan(spec: &JobSpec, now: DateTime<Utc>) -> Result<Job, QueueError> {
    let kind_s = spec.kind.as_deref().unwrap_or("agent");
    let kind = JobKind::parse(kind_s).ok_or_else(|| {
        QueueError::InvalidSpec(format!("unknown job kind `{kind_s}` (known: shell, agent)"))
    })?;
    let typed = validate_params(kind, &spec.params)?;
    let RunSettings {
        backoff,
        on_child_fail,
        max_attempts,
        queue,
    } = RunSettings::of(spec)?;
    let delayed = spec.delay.filter(|d| !d.is_zero());
    let state = if delayed.is_some() {
        JobState::Delayed
    } else {
        JobState::Waiting
    };
    Ok(Job {
        id: 0,
        name: spec
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| default_name(kind, &typed)),
        kind,
        queue,
        priority: spec.priority.unwrap_or(0),
        params: spec.params.clone(),
        state,
        created: now,
        updated: now,
        run_at: delayed.map(|d| now + chrono_d(d)),
        held: None,
        max_attempts,
        attempts: 0,
        backoff,
        timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
        max_stalled: spec.max_stalled.unwrap_or(5),
        stalls: 0,
        idempotency_key: spec.idempotency_key.clone().filter(|k| !k.is_empty()),
        lease: None,
        fence: Fence::default(),
        control: None,
        history: vec![Transition {
            at: now,
            from: None,
            to: state,
            reason: delayed.map(|d| {
                format!(
                    "submitted with a delay of {}",
                    crate::duration::format_duration(d)
                )
            }),
        }],
        result: None,
        error: None,
        tokens: Tokens::default(),
        child_tokens: Tokens::default(),
        progress: Progress::default(),
        started: None,
        finished: None,
        run_ms: 0,
        parent: spec.parent,
        children: Vec::new(),
        removed_children: Vec::new(),
        on_child_fail,
        messages: Vec::new(),
        source: if spec.source.is_empty() {
            "cli".into()
        } else {
            spec.source.clone()
        },
        replay_of: None,
    })
}

/// How a spec's job is retried, what its failing children do to it, and its queue:
/// checked, with the defaults filled in.
struct RunSettings {
    backoff: Backoff,
    on_child_fail: OnChildFail,
    max_attempts: u32,
    queue: String,
}

impl RunSettings {
    fn of(spec: &JobSpec) -> Result<RunSettings, QueueError> {
        let backoff_kind = match spec.backoff_type.as_deref() {
            None => BackoffKind::Exponential,
            Some("fixed") => BackoffKind::Fixed,
            Some("exponential") => BackoffKind::Exponential,
            Some(o) => {
                return Err(QueueError::InvalidSpec(format!(
                    "unknown backoff type `{o}` (use fixed or exponential)"
                )))
            }
        };
        let jitter = spec.backoff_jitter.unwrap_or(0.2);
        if !(0.0..=1.0).contains(&jitter) {
            return Err(QueueError::InvalidSpec(format!(
                "backoff jitter is a fraction between 0 and 1, got {jitter}"
            )));
        }
        let on_child_fail = match spec.on_child_fail.as_deref() {
            None => OnChildFail::FailParent,
            Some(s) => OnChildFail::parse(s).ok_or_else(|| {
                QueueError::InvalidSpec(format!(
                    "unknown on_child_fail `{s}` (use fail_parent, continue, ignore or remove_dep)"
                ))
            })?,
        };
        let max_attempts = spec.max_attempts.unwrap_or(3);
        if max_attempts == 0 {
            return Err(QueueError::InvalidSpec(
                "max attempts must be at least 1".into(),
            ));
        }
        if spec.timeout.is_some_and(|t| t.is_zero()) {
            return Err(QueueError::InvalidSpec(
                "a timeout must be more than 0".into(),
            ));
        }
        let queue = spec.queue.clone().unwrap_or_else(|| "default".into());
        if queue.trim().is_empty() {
            return Err(QueueError::InvalidSpec(
                "a queue name cannot be empty".into(),
            ));
        }
        Ok(RunSettings {
            backoff: Backoff {
                kind: backoff_kind,
                delay_ms: spec
                    .backoff_delay
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(1000),
                jitter,
            },
            on_child_fail,
            max_attempts,
            queue,
        })
    }
}

pub fn chrono_d(d: Duration) -> chrono::Duration {
    chrono::Duration::milliseconds(d.as_millis().min(i64::MAX as u128) as i64)
}

/// Submits one job. `refused` is why it may not run at all (a closed gate): the job is
/// still recorded, straight as dead with that reason, so it never waits silently.
pub fn submit(
    store: &JobStore,
    spec: &JobSpec,
    now: DateTime<Utc>,
    refused: Option<String>,
) -> Result<Submitted, QueueError> {
    let job = plan(spec, now)?;
    store.transaction_writing(files_written(&job), |tx| submit_in(tx, job, now, refused))
}

/// About how many files submitting `job` writes: itself, its key, its parent.
fn files_written(job: &Job) -> usize {
    1 + usize::from(job.idempotency_key.is_some()) + usize::from(job.parent.is_some())
}

/// Writes a planned job (see [`plan`]) unless its idempotency key is held.
pub fn submit_in(
    tx: &mut dyn JobTx,
    mut job: Job,
    now: DateTime<Utc>,
    refused: Option<String>,
) -> Result<Submitted, QueueError> {
    if let Some(key) = &job.idempotency_key {
        if let Some(existing) = key_holder_job(tx, key)? {
            // Its holder may have been written by a transaction whose flush is still
            // under way: the answer is only given once it is on disk.
            tx.require_durable();
            return Ok(Submitted {
                job: existing,
                existing: true,
            });
        }
    }
    if let Some(p) = job.parent {
        attach_to_parent(tx, p, now)?;
    }
    job.id = tx.next_id()?;
    if let Some(why) = refused {
        job.error = Some(why.clone());
        job.transition(JobState::Dead, now, Some(why));
    }
    if let Some(p) = job.parent {
        let mut parent = tx.get(p)?.ok_or(QueueError::NotFound(p))?;
        parent.children.push(job.id);
        save(tx, &mut parent, now)?;
    }
    if let Some(key) = &job.idempotency_key {
        tx.set_key(key, job.id)?;
    }
    save(tx, &mut job, now)?;
    Ok(Submitted {
        job,
        existing: false,
    })
}

/// Submits a batch in one transaction with one flush (a scheduler's slot, a manifest):
/// what a submit each would do, in order, at a fraction of the cost. Every spec is
/// checked first and every parent named, so a bad one refuses the whole batch and
/// nothing is written. `refused` is asked about each planned job, as `submit`'s is.
pub fn submit_many(
    store: &JobStore,
    specs: &[JobSpec],
    now: DateTime<Utc>,
    refused: &dyn Fn(&Job) -> Option<String>,
) -> Result<Vec<Submitted>, QueueError> {
    let jobs = plan_many(specs, now)?;
    let files = jobs.iter().map(files_written).sum();
    store.transaction_writing(files, |tx| submit_many_in(tx, jobs, now, refused))
}

/// Plans every spec of a batch, naming the one that is wrong.
pub fn plan_many(specs: &[JobSpec], now: DateTime<Utc>) -> Result<Vec<Job>, QueueError> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            plan(s, now).map_err(|e| match e {
                QueueError::InvalidSpec(m) => {
                    QueueError::InvalidSpec(format!("job {}: {m}", i + 1))
                }
                e => e,
            })
        })
        .collect()
}

pub fn submit_many_in(
    tx: &mut dyn JobTx,
    jobs: Vec<Job>,
    now: DateTime<Utc>,
    refused: &dyn Fn(&Job) -> Option<String>,
) -> Result<Vec<Submitted>, QueueError> {
    for job in &jobs {
        let held = match &job.idempotency_key {
            Some(key) => key_holder_job(tx, key)?.is_some(),
            None => false,
        };
        if let (Some(p), false) = (job.parent, held) {
            attach_to_parent(tx, p, now)?;
        }
    }
    jobs.into_iter()
        .map(|job| {
            let why = refused(&job);
            submit_in(tx, job, now, why)
        })
        .collect()
}

fn key_holder_job(tx: &dyn JobTx, key: &str) -> Result<Option<Job>, QueueError> {
    let Some(id) = tx.key_holder(key)? else {
        return Ok(None);
    };
    match tx.get(id)? {
        // A key held only by a dead or cancelled job is free again.
        Some(j) if !matches!(j.state, JobState::Dead | JobState::Cancelled) => Ok(Some(j)),
        _ => Ok(None),
    }
}

fn attach_to_parent(tx: &dyn JobTx, p: JobId, now: DateTime<Utc>) -> Result<(), QueueError> {
    let parent = tx.get(p)?.ok_or(QueueError::NotFound(p))?;
    let _ = now;
    if parent.state.is_terminal() {
        return Err(QueueError::InvalidState {
            id: p,
            state: parent.state,
            op: "add a child to",
            help: "a child can only be added to a job that has not ended".into(),
        });
    }
    Ok(())
}

/// Submits a fan-out: `children` and one aggregator that runs once they have all ended,
/// with their results. It is atomic: the children are written first and the aggregator
/// last, and a worker never starts a child whose parent file does not exist yet, so
/// either the whole group becomes visible or (after a crash mid-way) the sweep cancels
/// the orphans. Returns the aggregator and its children.
pub fn submit_fanout(
    store: &JobStore,
    children: &[JobSpec],
    aggregator: &JobSpec,
    now: DateTime<Utc>,
    refused: &dyn Fn(&Job) -> Option<String>,
) -> Result<(Job, Vec<Job>), QueueError> {
    let (agg, kids) = plan_fanout(children, aggregator, now)?;
    let files = files_written(&agg) + kids.len();
    store.transaction_writing(files, |tx| submit_fanout_in(tx, agg, kids, now, refused))
}

/// Plans a fan-out: its aggregator and its children, checked.
pub fn plan_fanout(
    children: &[JobSpec],
    aggregator: &JobSpec,
    now: DateTime<Utc>,
) -> Result<(Job, Vec<Job>), QueueError> {
    if children.is_empty() {
        return Err(QueueError::InvalidSpec(
            "a fan-out manifest needs at least one child".into(),
        ));
    }
    let mut agg = plan(aggregator, now)?;
    agg.kind = JobKind::Aggregator;
    if aggregator.on_child_fail.is_none() {
        agg.on_child_fail = OnChildFail::Continue;
    }
    let mut kids = Vec::new();
    for (i, c) in children.iter().enumerate() {
        let k =
            plan(c, now).map_err(|e| QueueError::InvalidSpec(format!("child {}: {e}", i + 1)))?;
        if c.idempotency_key.is_some() {
            return Err(QueueError::InvalidSpec(format!(
                "child {}: fan-out children cannot carry idempotency keys; put one on the whole fan-out instead",
                i + 1
            )));
        }
        kids.push(k);
    }
    Ok((agg, kids))
}

/// Writes a planned fan-out (see [`plan_fanout`]) unless its key is held.
pub fn submit_fanout_in(
    tx: &mut dyn JobTx,
    mut agg: Job,
    mut kids: Vec<Job>,
    now: DateTime<Utc>,
    refused: &dyn Fn(&Job) -> Option<String>,
) -> Result<(Job, Vec<Job>), QueueError> {
    if let Some(key) = &agg.idempotency_key {
        if let Some(existing) = key_holder_job(tx, key)? {
            tx.require_durable();
            let mut kids = Vec::new();
            for c in &existing.children {
                if let Some(j) = tx.get(*c)? {
                    kids.push(j);
                }
            }
            return Ok((existing, kids));
        }
    }
    if let Some(p) = agg.parent {
        attach_to_parent(tx, p, now)?;
    }
    agg.id = tx.next_id()?;
    for k in kids.iter_mut() {
        k.id = tx.next_id()?;
        k.parent = Some(agg.id);
        agg.children.push(k.id);
    }
    agg.transition(
        JobState::WaitingChildren,
        now,
        Some(format!("waiting for {} children", kids.len())),
    );
    // The history starts with the state it was created in.
    agg.history
        .retain(|t| t.from.is_some() || t.to == JobState::WaitingChildren);
    if let Some(first) = agg.history.first_mut() {
        first.from = None;
    }
    for k in kids.iter_mut() {
        if let Some(why) = refused(k) {
            k.error = Some(why.clone());
            k.transition(JobState::Dead, now, Some(why));
        }
        // Children are written before their parent exists; their terminal
        // notifications are applied when the parent is written below.
        let bytes_job = k.clone();
        tx.put(&bytes_job, true)?;
    }
    if let Some(key) = &agg.idempotency_key {
        tx.set_key(key, agg.id)?;
    }
    if let Some(p) = agg.parent {
        let mut parent = tx.get(p)?.ok_or(QueueError::NotFound(p))?;
        parent.children.push(agg.id);
        save(tx, &mut parent, now)?;
    }
    save(tx, &mut agg, now)?;
    // Children refused at once count as ended.
    for k in kids.iter().filter(|k| k.state.is_terminal()) {
        notify_parent(tx, k, now)?;
    }
    let agg = tx.get(agg.id)?.unwrap_or(agg);
    Ok((agg, kids))
}

/// Writes a job; if it has just reached a terminal state, tells its parent.
fn save(tx: &mut dyn JobTx, job: &mut Job, now: DateTime<Utc>) -> Result<(), QueueError> {
    let durable = job.state.is_terminal()
        || job.history.len() <= 1
        || matches!(job.state, JobState::Paused | JobState::Waiting);
    tx.put(job, durable)?;
    if job.state.is_terminal() && job.parent.is_some() {
        notify_parent(tx, job, now)?;
    }
    Ok(())
}

/// Posts `child_done` to the parent of a terminal job, rolls its tokens up, and applies
/// the parent's `on_child_fail` policy. Safe to repeat: a child is reported once.
fn notify_parent(tx: &mut dyn JobTx, child: &Job, now: DateTime<Utc>) -> Result<(), QueueError> {
    let Some(pid) = child.parent else {
        return Ok(());
    };
    let Some(mut parent) = tx.get(pid)? else {
        return Ok(());
    };
    let already = parent
        .child_done_messages()
        .any(|m| m.body.get("child").and_then(|c| c.as_u64()) == Some(child.id));
    if already || !parent.children.contains(&child.id) {
        return Ok(());
    }
    let tokens = child.total_tokens();
    let ignored = child.state.is_unsuccessful() && parent.on_child_fail == OnChildFail::Ignore;
    let body = child_done_body(child, ignored, &tokens);
    let seq = parent.next_message_seq();
    parent.messages.push(JobMessage {
        seq,
        kind: MessageKind::ChildDone,
        at: now,
        from: format!("job:{}", child.id),
        body,
        read: None,
    });
    parent.child_tokens.add(&tokens);
    parent.updated = now;
    let cascade = if child.state.is_unsuccessful() && !parent.state.is_terminal() {
        apply_child_failure(&mut parent, child, now)
    } else {
        Vec::new()
    };
    maybe_release(&mut parent, now);
    save(tx, &mut parent, now)?;
    for c in cascade {
        if c != child.id {
            cancel_tree(
                tx,
                c,
                now,
                &format!("its parent #{} failed", parent.id),
                false,
            )?;
        }
    }
    Ok(())
}

/// The body of the `child_done` message a parent gets when `child` ends.
fn child_done_body(child: &Job, ignored: bool, tokens: &Tokens) -> Value {
    serde_json::json!({
        "ignored": ignored,
        "child": child.id,
        "name": child.name,
        "kind": child.kind.as_str(),
        "state": child.state.as_str(),
        "summary": child.result.as_ref().and_then(|r| r.summary.clone()),
        "exit_code": child.result.as_ref().and_then(|r| r.exit_code),
        "stdout_tail": child.result.as_ref().map(|r| crate::text::clip(&r.stdout_tail, 4000)),
        "error": child.error,
        "tokens": tokens,
    })
}

/// Applies the parent's `on_child_fail` policy to a child that ended unsuccessfully;
/// returns the children to cancel with it (when the parent fails).
fn apply_child_failure(parent: &mut Job, child: &Job, now: DateTime<Utc>) -> Vec<JobId> {
    match parent.on_child_fail {
        OnChildFail::FailParent => {
            let why = format!(
                "child #{} ({}) ended {}{}",
                child.id,
                child.name,
                child.state,
                child
                    .error
                    .as_deref()
                    .map(|e| format!(": {}", crate::text::clip(e, 200)))
                    .unwrap_or_default()
            );
            parent.error = Some(why.clone());
            if parent.state == JobState::Active {
                // Its runner is told to stop; it records the failure when it does.
                parent.control = Some(Control::Cancel);
            } else {
                parent.transition(JobState::Failed, now, Some(why));
            }
            parent.pending_children().collect()
        }
        OnChildFail::RemoveDep => {
            parent.removed_children.push(child.id);
            Vec::new()
        }
        OnChildFail::Continue | OnChildFail::Ignore => Vec::new(),
    }
}

/// Children a parent still waits for that have not reported.
pub fn outstanding_children(job: &Job) -> Vec<JobId> {
    let done: std::collections::HashSet<u64> = job
        .child_done_messages()
        .filter_map(|m| m.body.get("child").and_then(|c| c.as_u64()))
        .collect();
    job.pending_children()
        .filter(|c| !done.contains(c))
        .collect()
}

/// A parent in waiting-children whose children have all ended moves on: to run (if it
/// has not run yet, like a fan-out's aggregator) or to completed.
fn maybe_release(parent: &mut Job, now: DateTime<Utc>) {
    if parent.state != JobState::WaitingChildren || !outstanding_children(parent).is_empty() {
        return;
    }
    let n = parent.children.len();
    if parent.started.is_none() {
        parent.transition(
            JobState::Waiting,
            now,
            Some(format!("all {n} children ended")),
        );
    } else {
        parent.transition(
            JobState::Completed,
            now,
            Some(format!("its run and all {n} children ended")),
        );
    }
}

/// How a runner names the lease it holds.
#[derive(Debug, Clone, Copy)]
pub enum Holder<'a> {
    /// Whatever lease this process holds on the job (the owner's pid and start time):
    /// what a runner that kept no token can say.
    ThisProcess,
    /// The one claim this token came from: refused once the lease was taken over, even
    /// by this same process.
    Token(&'a LeaseToken),
}

impl Holder<'_> {
    fn holds(&self, job: &Job) -> bool {
        match self {
            Holder::ThisProcess => job.lease.as_ref().is_some_and(|l| l.is_mine()),
            Holder::Token(t) => t.job == job.id && job.leased_by(t),
        }
    }
}

/// How a claim leases a job.
#[derive(Debug, Clone, Default)]
pub struct ClaimOptions {
    /// The lease lapses this long after the claim and after each heartbeat unless
    /// renewed; the sweep then takes it back (stalled). `None`: it lasts as long as the
    /// owning process lives, which is all this engine can tell of a local runner.
    pub ttl: Option<Duration>,
    /// `claim_next` only: take jobs of this queue only.
    pub queue: Option<String>,
}

/// A job leased to its caller, and the token every later call for it must show.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: Job,
    pub lease: LeaseToken,
}

/// Leases a ready job to this process. `gate` says why a job may not run here at all
/// (it then goes to dead at once). Returns `None` if it is no longer ready (another
/// worker took it, or it was cancelled meanwhile).
pub fn claim(
    store: &JobStore,
    id: JobId,
    now: DateTime<Utc>,
    gate: &dyn Fn(&Job) -> Option<String>,
) -> Result<Option<Job>, QueueError> {
    let opts = ClaimOptions::default();
    store.transaction(|tx| Ok(claim_in(tx, id, now, &opts, gate)?.map(|c| c.job)))
}

pub fn claim_in(
    tx: &mut dyn JobTx,
    id: JobId,
    now: DateTime<Utc>,
    opts: &ClaimOptions,
    gate: &dyn Fn(&Job) -> Option<String>,
) -> Result<Option<Claimed>, QueueError> {
    let Some(mut job) = tx.get(id)? else {
        return Ok(None);
    };
    if !job.ready(now) {
        return Ok(None);
    }
    // A fan-out child is not visible until its parent is written (atomic fan-out).
    if let Some(p) = job.parent {
        if !tx.exists(p)? {
            return Ok(None);
        }
    }
    if let Some(why) = gate(&job) {
        job.error = Some(why.clone());
        job.transition(JobState::Dead, now, Some(why));
        save(tx, &mut job, now)?;
        return Ok(None);
    }
    let attempt = job.attempts + 1;
    job.transition(
        JobState::Active,
        now,
        Some(format!("attempt {attempt} of {}", job.max_attempts)),
    );
    job.lease = Some(Lease::this_process(now));
    job.fence.generation += 1;
    job.fence.ttl_ms = opts.ttl.map(|t| t.as_millis().min(u64::MAX as u128) as u64);
    job.fence.expires = opts.ttl.map(|t| now + chrono_d(t));
    job.control = None;
    job.started.get_or_insert(now);
    job.progress.updated = Some(now);
    save(tx, &mut job, now)?;
    let lease = job.lease_token().ok_or(QueueError::LostLease(id))?;
    Ok(Some(Claimed { job, lease }))
}

/// Leases the job a worker should run next: the ready one with the lowest priority
/// number, then the oldest, of `opts.queue` if given. Jobs `gate` refuses go to dead on
/// the way.
pub fn claim_next_in(
    tx: &mut dyn JobTx,
    now: DateTime<Utc>,
    opts: &ClaimOptions,
    gate: &dyn Fn(&Job) -> Option<String>,
) -> Result<Option<Claimed>, QueueError> {
    let (jobs, _) = tx.live_jobs();
    let mut ready: Vec<(i32, JobId)> = jobs
        .iter()
        .filter(|j| j.ready(now))
        .filter(|j| opts.queue.as_ref().is_none_or(|q| *q == j.queue))
        .map(|j| (j.priority, j.id))
        .collect();
    ready.sort_unstable();
    for (_, id) in ready {
        if let Some(c) = claim_in(tx, id, now, opts, gate)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// How a run of a job ended, as its runner reports it.
#[derive(Debug, Clone)]
pub enum RunEnd {
    Completed(JobResult),
    Failed {
        error: String,
        result: JobResult,
        /// Retrying cannot help (a bad parameter, a refused permission).
        permanent: bool,
    },
    /// Stopped on a cancel request.
    Cancelled(JobResult),
    /// An agent stopped between turns on a pause request; its conversation is saved.
    Paused,
    /// The runner itself cut the run short (shutdown): back to waiting, no attempt used.
    Aborted(String),
    /// The runner held the job back, before it began or between turns, until `until`
    /// (the workspace's daily budget is spent): delayed, no attempt used, an agent's
    /// conversation saved so it goes on from where it stopped.
    Held {
        why: String,
        until: DateTime<Utc>,
    },
}

/// Records the end of a run this process holds the lease on.
pub fn finish(
    store: &JobStore,
    id: JobId,
    end: RunEnd,
    tokens: Tokens,
    run_ms: u64,
    now: DateTime<Utc>,
) -> Result<Job, QueueError> {
    store.transaction(|tx| finish_in(tx, id, Holder::ThisProcess, end, tokens, run_ms, now))
}

/// Records the end of a run: refused ([`QueueError::LostLease`]) unless `holder` holds
/// the job's lease now.
pub fn finish_in(
    tx: &mut dyn JobTx,
    id: JobId,
    holder: Holder,
    end: RunEnd,
    tokens: Tokens,
    run_ms: u64,
    now: DateTime<Utc>,
) -> Result<Job, QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    if !holder.holds(&job) || !matches!(job.state, JobState::Active | JobState::Paused) {
        return Err(QueueError::LostLease(id));
    }
    job.tokens.add(&tokens);
    job.run_ms += run_ms;
    job.progress.updated = Some(now);
    job.progress.tokens = Tokens::default();
    let cascade = apply_end(&mut job, end, now);
    save(tx, &mut job, now)?;
    if cascade {
        for c in job.pending_children().collect::<Vec<_>>() {
            cancel_tree(
                tx,
                c,
                now,
                &format!("its parent #{} was cancelled", job.id),
                false,
            )?;
        }
    }
    Ok(job)
}

/// Moves a job whose run ended as `end` on; returns whether its pending children are to
/// be cancelled with it.
fn apply_end(job: &mut Job, end: RunEnd, now: DateTime<Utc>) -> bool {
    match end {
        RunEnd::Completed(result) => {
            job.attempts += 1;
            job.result = Some(result);
            job.error = None;
            if outstanding_children(job).is_empty() {
                job.transition(JobState::Completed, now, None);
            } else {
                let n = outstanding_children(job).len();
                job.transition(
                    JobState::WaitingChildren,
                    now,
                    Some(format!("its run ended; waiting for {n} children")),
                );
            }
            false
        }
        RunEnd::Failed {
            error,
            result,
            permanent,
        } => run_failed(job, error, result, permanent, now),
        RunEnd::Cancelled(result) => {
            job.result = Some(result);
            // A parent failed by its child's failure keeps that reason.
            let (state, why) = match job.error.clone() {
                Some(e) if e.starts_with("child #") => (JobState::Failed, e),
                _ => (JobState::Cancelled, "cancelled while running".to_string()),
            };
            job.transition(state, now, Some(why));
            true
        }
        RunEnd::Paused => {
            job.transition(
                JobState::Paused,
                now,
                Some("paused between turns; its conversation is saved".into()),
            );
            job.end_lease();
            job.control = None;
            false
        }
        RunEnd::Held { why, until } => {
            job.transition(JobState::Delayed, now, Some(why.clone()));
            job.held = Some(why);
            job.run_at = Some(until);
            job.end_lease();
            false
        }
        RunEnd::Aborted(why) => {
            let to = if job.state == JobState::Paused {
                JobState::Paused
            } else {
                JobState::Waiting
            };
            job.transition(to, now, Some(why));
            job.end_lease();
            false
        }
    }
}

/// A failed run: cancelled (when a cancel was asked), retried after its back-off while
/// attempts are left and the error is not permanent, else failed for good. Returns
/// whether its pending children are to be cancelled with it.
fn run_failed(
    job: &mut Job,
    error: String,
    result: JobResult,
    permanent: bool,
    now: DateTime<Utc>,
) -> bool {
    job.attempts += 1;
    job.result = Some(result);
    job.error = Some(error.clone());
    if job.control == Some(Control::Cancel) {
        job.transition(JobState::Cancelled, now, Some(error));
        return true;
    }
    if !permanent && job.attempts < job.max_attempts {
        let wait = job.backoff.delay(job.id, job.attempts);
        job.transition(
            JobState::Delayed,
            now,
            Some(format!(
                "attempt {} of {} failed: {}; retrying in {}",
                job.attempts,
                job.max_attempts,
                crate::text::clip(&error, 300),
                crate::duration::format_duration(wait)
            )),
        );
        job.run_at = Some(now + chrono_d(wait));
    } else {
        let why = if permanent {
            format!("failed (not retried: the error is permanent): {error}")
        } else {
            format!(
                "failed {} of {} attempts; last error: {error}",
                job.attempts, job.max_attempts
            )
        };
        job.transition(JobState::Failed, now, Some(why));
    }
    false
}

/// Updates a running job's progress (and tokens so far), returning the job as it is on
/// disk now: the runner sees cancel/pause requests and new messages this way.
pub fn progress(
    store: &JobStore,
    id: JobId,
    now: DateTime<Utc>,
    f: impl FnOnce(&mut Progress),
) -> Result<Job, QueueError> {
    let mut f = Some(f);
    store.transaction(|tx| {
        heartbeat_in(tx, id, Holder::ThisProcess, now, &mut |p| {
            if let Some(f) = f.take() {
                f(p)
            }
        })
    })
}

/// A runner's heartbeat: renews a lease taken with a time to live, records progress
/// (`update`), and returns the job as it is now (cancel and pause requests, messages).
pub fn heartbeat_in(
    tx: &mut dyn JobTx,
    id: JobId,
    holder: Holder,
    now: DateTime<Utc>,
    update: &mut dyn FnMut(&mut Progress),
) -> Result<Job, QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    if !holder.holds(&job) {
        return Err(QueueError::LostLease(id));
    }
    update(&mut job.progress);
    job.progress.updated = Some(now);
    job.updated = now;
    if let Some(ttl) = job.fence.ttl_ms {
        job.fence.expires =
            Some(now + chrono::Duration::milliseconds(ttl.min(i64::MAX as u64) as i64));
    }
    tx.put(&job, false)?;
    Ok(job)
}

/// Records the process group of a running shell job in its lease.
pub fn note_pgid(store: &JobStore, id: JobId, pgid: u32) -> Result<(), QueueError> {
    store.transaction(|tx| note_pgid_in(tx, id, Holder::ThisProcess, pgid))
}

pub fn note_pgid_in(
    tx: &mut dyn JobTx,
    id: JobId,
    holder: Holder,
    pgid: u32,
) -> Result<(), QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    if !holder.holds(&job) {
        return match holder {
            // As before tokens: a runner without one is told nothing.
            Holder::ThisProcess => Ok(()),
            Holder::Token(_) => Err(QueueError::LostLease(id)),
        };
    }
    if name_group(&mut job, pgid) {
        tx.put(&job, false)?;
    }
    Ok(())
}

/// Names the process group `pgid` (with its leader's start time) in the job's lease, so
/// the sweep can stop it if the runner dies; whether the job has a lease to name it in.
fn name_group(job: &mut Job, pgid: u32) -> bool {
    let Some(l) = job.lease.as_mut() else {
        return false;
    };
    l.pgid = Some(pgid);
    l.pgid_start = crate::fsutil::process_start_time(pgid);
    true
}

/// Records that a running job's command has started as process group `pgid`: the group
/// in its lease (so the sweep can stop it if this runner dies) and a progress note, in
/// one write where `note_pgid` and `progress` make two. A job that is no longer running
/// under `holder` (it ended meanwhile) is left alone: its group is gone with its run.
pub fn note_started_in(
    tx: &mut dyn JobTx,
    id: JobId,
    holder: Holder,
    pgid: u32,
    now: DateTime<Utc>,
) -> Result<(), QueueError> {
    let Some(mut job) = tx.get(id)? else {
        return Ok(());
    };
    let running = matches!(job.state, JobState::Active | JobState::Paused);
    if !holder.holds(&job) || !running {
        return match holder {
            Holder::ThisProcess => Ok(()),
            Holder::Token(_) => Err(QueueError::LostLease(id)),
        };
    }
    name_group(&mut job, pgid);
    job.progress.step = 1;
    job.progress.total = Some(1);
    job.progress.note = Some(format!("running as process group {pgid}"));
    job.progress.updated = Some(now);
    job.updated = now;
    if let Some(ttl) = job.fence.ttl_ms {
        job.fence.expires =
            Some(now + chrono::Duration::milliseconds(ttl.min(i64::MAX as u64) as i64));
    }
    tx.put(&job, false)?;
    Ok(())
}

/// Marks the unread steering messages read at `turn` and returns them.
pub fn take_steering(
    store: &JobStore,
    id: JobId,
    turn: u64,
    now: DateTime<Utc>,
) -> Result<Vec<JobMessage>, QueueError> {
    store.transaction(|tx| take_steering_in(tx, id, turn, now))
}

pub fn take_steering_in(
    tx: &mut dyn JobTx,
    id: JobId,
    turn: u64,
    now: DateTime<Utc>,
) -> Result<Vec<JobMessage>, QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    let mut taken = Vec::new();
    for m in job.messages.iter_mut() {
        if m.kind == MessageKind::Steer && m.read.is_none() {
            m.read = Some(Receipt { at: now, turn });
            taken.push(m.clone());
        }
    }
    if !taken.is_empty() {
        job.updated = now;
        tx.put(&job, true)?;
    }
    Ok(taken)
}

/// Marks child_done messages read (the aggregator has been given them).
pub fn mark_child_results_read(
    store: &JobStore,
    id: JobId,
    turn: u64,
    now: DateTime<Utc>,
) -> Result<(), QueueError> {
    store.transaction(|tx| mark_child_results_read_in(tx, id, turn, now))
}

pub fn mark_child_results_read_in(
    tx: &mut dyn JobTx,
    id: JobId,
    turn: u64,
    now: DateTime<Utc>,
) -> Result<(), QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    let mut changed = false;
    for m in job.messages.iter_mut() {
        if m.kind == MessageKind::ChildDone && m.read.is_none() {
            m.read = Some(Receipt { at: now, turn });
            changed = true;
        }
    }
    if changed {
        tx.put(&job, false)?;
    }
    Ok(())
}

/// Cancels a job and (cascading) its descendants. A running job is asked to stop (its
/// runner records the end); anything else is cancelled at once.
pub fn cancel(store: &JobStore, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
    store.transaction(|tx| cancel_in(tx, id, now))
}

pub fn cancel_in(tx: &mut dyn JobTx, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
    cancel_tree(tx, id, now, "cancelled by the operator", true)?;
    tx.get(id)?.ok_or(QueueError::NotFound(id))
}

fn cancel_tree(
    tx: &mut dyn JobTx,
    id: JobId,
    now: DateTime<Utc>,
    why: &str,
    strict: bool,
) -> Result<(), QueueError> {
    let Some(mut job) = tx.get(id)? else {
        return if strict {
            Err(QueueError::NotFound(id))
        } else {
            Ok(())
        };
    };
    if job.state.is_terminal() {
        return if strict {
            Err(QueueError::InvalidState {
                id,
                state: job.state,
                op: "cancel",
                help: "it has already ended; `loops jobs replay` runs it again as a new job".into(),
            })
        } else {
            Ok(())
        };
    }
    if job.lease_held(now) {
        job.control = Some(Control::Cancel);
        job.updated = now;
        if job.state == JobState::Paused {
            // A stopped process group cannot act on a request: its runner continues it
            // and then stops it (it watches the file).
            job.history.push(Transition {
                at: now,
                from: Some(job.state),
                to: job.state,
                reason: Some(format!("cancel requested: {why}")),
            });
        }
        tx.put(&job, true)?;
    } else {
        job.transition(JobState::Cancelled, now, Some(why.to_string()));
        save(tx, &mut job, now)?;
    }
    for c in job.children.clone() {
        cancel_tree(
            tx,
            c,
            now,
            &format!("its parent #{id} was cancelled"),
            false,
        )?;
    }
    Ok(())
}

/// Pauses a job: a waiting or delayed one at once; a running one is asked to stop (an
/// agent between turns, a shell job's process group is stopped).
pub fn pause(store: &JobStore, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
    store.transaction(|tx| pause_in(tx, id, now))
}

pub fn pause_in(tx: &mut dyn JobTx, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    if !job.kind.policy().pausable {
        // A loop's run or a wake has no turns to stop between: it runs or it is stopped.
        return Err(QueueError::InvalidState {
            id,
            state: job.state,
            op: "pause",
            help: format!(
                "a {} job cannot be paused: `loops jobs cancel {id}` stops this run, `loops pause {}` stops scheduling the loop",
                job.kind, job.name
            ),
        });
    }
    match job.state {
        JobState::Waiting | JobState::Delayed => {
            job.transition(JobState::Paused, now, Some("paused by the operator".into()));
        }
        JobState::Active if job.lease_held(now) => {
            job.control = Some(Control::Pause);
            job.updated = now;
        }
        s => {
            return Err(QueueError::InvalidState {
                id,
                state: s,
                op: "pause",
                help: "only waiting, delayed and running jobs can be paused".into(),
            })
        }
    }
    save(tx, &mut job, now)?;
    Ok(job)
}

/// Resumes a paused job: a stopped shell job continues in place; anything else goes back
/// to waiting (an agent then continues from its saved conversation).
pub fn resume(store: &JobStore, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
    store.transaction(|tx| resume_in(tx, id, now))
}

pub fn resume_in(tx: &mut dyn JobTx, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    if job.state == JobState::Delayed && job.held.is_some() {
        return lift_hold_in(tx, id, now, "its hold lifted by the operator");
    }
    if job.state != JobState::Paused {
        return Err(QueueError::InvalidState {
            id,
            state: job.state,
            op: "resume",
            help: "only paused jobs can be resumed (and agent jobs held for the day's budget)"
                .into(),
        });
    }
    if job.lease_held(now) {
        job.control = Some(Control::Resume);
        job.updated = now;
    } else {
        job.transition(
            JobState::Waiting,
            now,
            Some("resumed by the operator".into()),
        );
    }
    save(tx, &mut job, now)?;
    Ok(job)
}

/// A job held for the day's budget goes back to waiting now, `why` recorded; any other
/// job is returned as it is. If the budget is still spent, the worker holds it again
/// before any request.
pub fn lift_hold(
    store: &JobStore,
    id: JobId,
    now: DateTime<Utc>,
    why: &str,
) -> Result<Job, QueueError> {
    store.transaction(|tx| lift_hold_in(tx, id, now, why))
}

pub fn lift_hold_in(
    tx: &mut dyn JobTx,
    id: JobId,
    now: DateTime<Utc>,
    why: &str,
) -> Result<Job, QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    if job.state != JobState::Delayed || job.held.is_none() {
        return Ok(job);
    }
    job.transition(JobState::Waiting, now, Some(why.to_string()));
    save(tx, &mut job, now)?;
    Ok(job)
}

/// Runs a dead or failed job again, with fresh attempts.
pub fn retry(store: &JobStore, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
    store.transaction(|tx| retry_in(tx, id, now))
}

pub fn retry_in(tx: &mut dyn JobTx, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    if !matches!(job.state, JobState::Dead | JobState::Failed) {
        return Err(QueueError::InvalidState {
            id,
            state: job.state,
            op: "retry",
            help: "retry is for dead or failed jobs; `loops jobs replay` runs any job again as a new one".into(),
        });
    }
    job.attempts = 0;
    job.stalls = 0;
    job.error = None;
    job.finished = None;
    job.transition(
        JobState::Waiting,
        now,
        Some("retried by the operator".into()),
    );
    save(tx, &mut job, now)?;
    Ok(job)
}

/// Submits a new job with the same parameters as `id` (with `overrides` applied to its
/// params), keeping its timeout, queue, priority, retries and parent.
pub fn replay(
    store: &JobStore,
    id: JobId,
    overrides: &[(String, Value)],
    now: DateTime<Utc>,
    source: &str,
) -> Result<Job, QueueError> {
    let orig = store.get(id)?.ok_or(QueueError::NotFound(id))?;
    let (kind, params) = replay_params(&orig, overrides)?;
    store.transaction(|tx| replay_in(tx, &orig, kind, params, now, source))
}

/// The kind and params a replay of `orig` runs with, checked.
pub fn replay_params(
    orig: &Job,
    overrides: &[(String, Value)],
) -> Result<(JobKind, Value), QueueError> {
    let mut params = orig.params.clone();
    for (k, v) in overrides {
        set_path(&mut params, k, v.clone());
    }
    let kind = if orig.kind == JobKind::Aggregator {
        JobKind::Agent
    } else {
        orig.kind
    };
    validate_params(kind, &params)?;
    Ok((kind, params))
}

/// Writes the replay of `orig` (see [`replay_params`]).
pub fn replay_in(
    tx: &mut dyn JobTx,
    orig: &Job,
    kind: JobKind,
    params: Value,
    now: DateTime<Utc>,
    source: &str,
) -> Result<Job, QueueError> {
    let id = orig.id;
    let mut job = orig.clone();
    job.id = tx.next_id()?;
    job.params = params;
    job.kind = kind;
    job.state = JobState::Waiting;
    job.created = now;
    job.updated = now;
    job.run_at = None;
    job.attempts = 0;
    job.stalls = 0;
    job.idempotency_key = None;
    job.lease = None;
    job.fence = Fence::default();
    job.control = None;
    job.history = vec![Transition {
        at: now,
        from: None,
        to: JobState::Waiting,
        reason: Some(format!("replay of job #{id}")),
    }];
    job.result = None;
    job.error = None;
    job.tokens = Tokens::default();
    job.child_tokens = Tokens::default();
    job.progress = Progress::default();
    job.started = None;
    job.finished = None;
    job.run_ms = 0;
    job.children = Vec::new();
    job.removed_children = Vec::new();
    job.messages = Vec::new();
    job.source = source.to_string();
    job.replay_of = Some(id);
    if let Some(p) = job.parent {
        if let Some(mut parent) = tx.get(p)? {
            if !parent.state.is_terminal() {
                parent.children.push(job.id);
                if parent.state == JobState::Waiting || parent.state == JobState::Delayed {
                    parent.transition(
                        JobState::WaitingChildren,
                        now,
                        Some(format!("waiting for its new child #{}", job.id)),
                    );
                }
                save(tx, &mut parent, now)?;
            }
        }
    }
    save(tx, &mut job, now)?;
    Ok(job)
}

/// Sets `a.b.c` in a JSON object, creating objects on the way.
fn set_path(root: &mut Value, path: &str, v: Value) {
    let mut cur = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == parts.len() {
            obj.insert(p.to_string(), v);
            return;
        }
        cur = obj
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

/// Sends a message to a job. Only an operator or the job's parent may.
pub fn message(
    store: &JobStore,
    id: JobId,
    body: Value,
    from: Sender,
    now: DateTime<Utc>,
) -> Result<JobMessage, QueueError> {
    store.transaction(|tx| message_in(tx, id, body, from, now))
}

pub fn message_in(
    tx: &mut dyn JobTx,
    id: JobId,
    body: Value,
    from: Sender,
    now: DateTime<Utc>,
) -> Result<JobMessage, QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    if let Sender::Job(sender) = from {
        if job.parent != Some(sender) {
            return Err(QueueError::Permission(format!(
                "job #{sender} is not the parent of job #{id}; only an operator or the job's parent may steer it"
            )));
        }
    }
    // A shell job's command, a loop's run and a wake never read the queue: a message
    // accepted for them would sit unread while the sender believes it was heard.
    if !job.kind.policy().steerable {
        return Err(QueueError::NotSteerable(id, job.kind));
    }
    if job.state.is_terminal() {
        return Err(QueueError::InvalidState {
            id,
            state: job.state,
            op: "message",
            help: "messages steer a job that is still to run or running".into(),
        });
    }
    let m = JobMessage {
        seq: job.next_message_seq(),
        kind: MessageKind::Steer,
        at: now,
        from: from.label(),
        body,
        read: None,
    };
    job.messages.push(m.clone());
    job.updated = now;
    tx.put(&job, true)?;
    Ok(m)
}

/// What a sweep did, one line each.
#[derive(Debug, Default, Clone)]
pub struct Swept {
    pub requeued: Vec<(JobId, String)>,
    pub dead: Vec<(JobId, String)>,
    pub other: Vec<String>,
}

/// Finds jobs whose runner died (or whose lease lapsed without a renewal) and requeues
/// them (counting a stall) or, past `max_stalled`, marks them dead; finishes moves a
/// crash interrupted; cancels fan-out children whose submission never completed;
/// releases parents whose children all ended.
pub fn sweep(store: &JobStore, now: DateTime<Utc>) -> Result<Swept, QueueError> {
    sweep_reporting(store, now, |_| {})
}

/// [`sweep`], handing what it is about to do to `report` before the transaction is
/// written. A starting daemon journals its recovery there: killed a moment after the
/// requeue is on disk, the journal would otherwise never say why the job ran again (the
/// next start finds nothing left to requeue). Killed before the write, the next sweep
/// does and reports it again; a repeat said twice is better than one never said.
pub fn sweep_reporting(
    store: &JobStore,
    now: DateTime<Utc>,
    report: impl FnOnce(&Swept),
) -> Result<Swept, QueueError> {
    // Whatever a sweep does, the next one does again if a power cut lost it: it need not
    // wait for the disk.
    let swept = store.transaction_redone_if_lost(|tx| {
        report(&stalls_due(tx, now));
        sweep_in(tx, now)
    })?;
    super::spares::Spares::remove_orphans(store.dir());
    Ok(swept)
}

pub fn sweep_in(tx: &mut dyn JobTx, now: DateTime<Utc>) -> Result<Swept, QueueError> {
    let mut out = Swept::default();
    let (jobs, errors) = tx.live_jobs();
    for e in errors {
        out.other.push(format!("skipped: {e}"));
    }
    for mut job in jobs {
        if job.kind.policy().on_stalled != super::policy::OnStalled::Requeue {
            // A loop's run or a wake: the runner's recovery does what its kind says
            // (records an interrupted run, returns a dead wake's handoffs).
            continue;
        }
        if job.state.is_terminal() {
            tx.finalize(&job)?;
            continue;
        }
        if let Some(lease) = job.lease.clone() {
            let dead = !lease.owner_alive();
            let lapsed = job.fence.expires.filter(|e| *e <= now);
            if dead || lapsed.is_some() {
                stalled(&mut job, &lease, dead, lapsed, now, &mut out);
                save(tx, &mut job, now)?;
                continue;
            }
        }
        if let Some(p) = job.parent {
            if !tx.exists(p)? && now - job.created > chrono::Duration::seconds(60) {
                job.transition(
                    JobState::Cancelled,
                    now,
                    Some(format!(
                        "its fan-out submission did not complete (parent #{p} was never written)"
                    )),
                );
                tx.put(&job, true)?;
                out.other.push(format!("cancelled orphan job #{}", job.id));
                continue;
            }
        }
        if job.state == JobState::WaitingChildren {
            // A crash between a child's end and its report: report it now.
            for c in outstanding_children(&job) {
                if let Some(child) = tx.get(c)? {
                    if child.state.is_terminal() {
                        notify_parent(tx, &child, now)?;
                    }
                } else {
                    job.removed_children.push(c);
                }
            }
            if let Some(mut j) = tx.get(job.id)? {
                let before = j.state;
                maybe_release(&mut j, now);
                if j.state != before {
                    save(tx, &mut j, now)?;
                }
            }
        }
    }
    Ok(out)
}

/// What a sweep under the same lock would requeue or mark dead, without doing it.
fn stalls_due(tx: &mut dyn JobTx, now: DateTime<Utc>) -> Swept {
    let mut out = Swept::default();
    let (jobs, _) = tx.live_jobs();
    for job in jobs {
        if job.kind.policy().on_stalled != super::policy::OnStalled::Requeue
            || job.state.is_terminal()
        {
            continue;
        }
        if let Some(lease) = &job.lease {
            let dead = !lease.owner_alive();
            let lapsed = job.fence.expires.filter(|e| *e <= now);
            if dead || lapsed.is_some() {
                let (gives_up, why) = stall_verdict(&job, lease, dead, lapsed);
                if gives_up {
                    out.dead.push((job.id, why));
                } else {
                    out.requeued.push((job.id, why));
                }
            }
        }
    }
    out
}

/// Whether a stalled job is now past its `max_stalled` (dead), and why, in words.
fn stall_verdict(
    job: &Job,
    lease: &Lease,
    dead: bool,
    lapsed: Option<DateTime<Utc>>,
) -> (bool, String) {
    let stalls = job.stalls + 1;
    if stalls > job.max_stalled {
        let why = if dead || lapsed.is_none() {
            format!(
                "stalled {stalls} times (max_stalled {}): its runner (pid {}) died each time",
                job.max_stalled, lease.pid
            )
        } else {
            format!(
                "stalled {stalls} times (max_stalled {}): its runner (pid {}) died or let its lease lapse each time",
                job.max_stalled, lease.pid
            )
        };
        return (true, why);
    }
    let cause = match (dead, lapsed) {
        (false, Some(at)) => format!(
            "its runner's lease (pid {}) lapsed at {} without a renewal",
            lease.pid,
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        _ => format!("its runner (pid {}) stopped while it ran", lease.pid),
    };
    let why = format!(
        "{cause}; requeued (stall {stalls} of at most {}), no attempt used",
        job.max_stalled
    );
    (false, why)
}

/// A job whose runner died (`dead`) or whose lease lapsed: requeued, counting a stall,
/// or dead past `max_stalled`.
fn stalled(
    job: &mut Job,
    lease: &Lease,
    dead: bool,
    lapsed: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    out: &mut Swept,
) {
    if dead {
        if let Some(pg) = lease.pgid {
            if crate::fsutil::process_alive(pg, lease.pgid_start) {
                // The process group recorded for this job, checked by its start time to be
                // the very one we started.
                crate::sys::signal_group(pg, crate::sys::Signal::KILL);
            }
        }
    }
    // An owner that lives on past its lapsed lease keeps its process group: it finds
    // the lease gone at its next call and stops the run itself.
    let (gives_up, why) = stall_verdict(job, lease, dead, lapsed);
    job.stalls += 1;
    if gives_up {
        job.error = Some(why.clone());
        job.transition(JobState::Dead, now, Some(why.clone()));
        out.dead.push((job.id, why));
    } else {
        let to = if job.state == JobState::Paused {
            JobState::Paused
        } else {
            JobState::Waiting
        };
        job.transition(to, now, Some(why.clone()));
        job.end_lease();
        job.control = None;
        out.requeued.push((job.id, why));
    }
}

/// For a runner that stops: its leased jobs go back to waiting with no attempt used.
pub fn release_mine(
    store: &JobStore,
    id: JobId,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), QueueError> {
    store.transaction(|tx| release_in(tx, id, Holder::ThisProcess, why, now))
}

/// Gives a lease back: the job goes back to waiting (or stays paused), no attempt used.
/// A lease `holder` does not hold (any more) is left alone.
pub fn release_in(
    tx: &mut dyn JobTx,
    id: JobId,
    holder: Holder,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), QueueError> {
    let Some(mut job) = tx.get(id)? else {
        return Ok(());
    };
    if holder.holds(&job) && !job.state.is_terminal() {
        let to = if job.state == JobState::Paused {
            JobState::Paused
        } else {
            JobState::Waiting
        };
        job.transition(to, now, Some(why.to_string()));
        job.end_lease();
        save(tx, &mut job, now)?;
    }
    Ok(())
}

/// A running shell job stopped (SIGSTOP) or continued in place: its runner keeps the
/// lease and the process, only the state changes.
pub fn hold(
    store: &JobStore,
    id: JobId,
    paused: bool,
    now: DateTime<Utc>,
) -> Result<Job, QueueError> {
    store.transaction(|tx| hold_in(tx, id, Holder::ThisProcess, paused, now))
}

pub fn hold_in(
    tx: &mut dyn JobTx,
    id: JobId,
    holder: Holder,
    paused: bool,
    now: DateTime<Utc>,
) -> Result<Job, QueueError> {
    let mut job = tx.get(id)?.ok_or(QueueError::NotFound(id))?;
    if !holder.holds(&job) {
        return Err(QueueError::LostLease(id));
    }
    let (lease, fence) = (job.lease.clone(), job.fence);
    let (to, why) = if paused {
        (
            JobState::Paused,
            "paused by the operator: its process group is stopped",
        )
    } else {
        (
            JobState::Active,
            "resumed by the operator: its process group continues",
        )
    };
    if job.state != to {
        job.transition(to, now, Some(why.into()));
    }
    job.lease = lease;
    job.fence = fence;
    if matches!(job.control, Some(Control::Pause) | Some(Control::Resume)) {
        job.control = None;
    }
    tx.put(&job, true)?;
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_whose_params_no_longer_read_is_named_with_the_field() {
        let spec = JobSpec {
            kind: Some("shell".into()),
            params: json!({"cmd": "true"}),
            ..Default::default()
        };
        let mut job = plan(&spec, chrono::Utc::now()).expect("a job");
        assert!(job.typed_params().is_ok());
        job.id = 7;
        job.params = json!({"cmd": "true", "cwd": 5});
        let e = job.typed_params().expect_err("cwd is not a path");
        assert!(
            e.starts_with(
                "job #7's params cannot be read: \"cwd\" must be an absolute path, got 5;"
            ) && e.contains("loops jobs replay 7 --set"),
            "{e}"
        );
    }
}
