//! A queued job as it lives on disk: `.loops/jobs/<id>.json`.
//!
//! The file is the whole truth about a job: what to run, its state and every transition
//! it went through (with the time and the reason), its lease, attempts, result, tokens,
//! progress, steering messages with their read receipts, and its family (parent and
//! children). Only [`super::store::JobStore`] writes it, always atomically and under the
//! queue lock.

use super::policy::{ConcurrencyKey, KindPolicy, Lane, OnStalled, Retries, TimeLimit, WAKE_RETRY};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

pub type JobId = u64;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Ready to run as soon as a worker has room.
    Waiting,
    /// Not before `run_at`: a requested delay or a retry's backoff.
    Delayed,
    /// Leased by a worker and running.
    Active,
    /// Stopped by a person; `resume` lets it go on.
    Paused,
    /// Waiting for its children to end.
    WaitingChildren,
    Completed,
    /// It ran and failed for good (attempts used up, a permanent error, a failed child).
    Failed,
    /// The queue gave up on it without it failing on its own: refused by a gate, or
    /// stalled (its runner died) more than `max_stalled` times.
    Dead,
    Cancelled,
}

pub const ALL_STATES: &[JobState] = &[
    JobState::Waiting,
    JobState::Delayed,
    JobState::Active,
    JobState::Paused,
    JobState::WaitingChildren,
    JobState::Completed,
    JobState::Failed,
    JobState::Dead,
    JobState::Cancelled,
];

impl JobState {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Delayed => "delayed",
            JobState::Active => "active",
            JobState::Paused => "paused",
            JobState::WaitingChildren => "waiting-children",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        ALL_STATES.iter().copied().find(|st| st.as_str() == s)
    }

    /// Nothing more will happen to a job in this state (unless a person retries it).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Dead | JobState::Cancelled
        )
    }

    /// A terminal state that is not success.
    pub fn is_unsuccessful(&self) -> bool {
        matches!(
            self,
            JobState::Failed | JobState::Dead | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// A command (`cmd` through `sh -c`, or `argv`). Protected: runs code.
    Shell,
    /// A prompt on the agent loop.
    Agent,
    /// A fan-out's aggregator: an agent job that runs once its children have ended.
    Aggregator,
    /// A run of a loop (scheduled, retried, caught up or triggered). Light: in the queue
    /// while it waits and runs, gone when it ends; its history is `.loops/runs/`.
    Loop,
    /// A wake of the main session. Light, as a loop's run.
    Wake,
}

impl JobKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Shell => "shell",
            JobKind::Agent => "agent",
            JobKind::Aggregator => "aggregator",
            JobKind::Loop => "loop",
            JobKind::Wake => "wake",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "shell" => Some(JobKind::Shell),
            "agent" => Some(JobKind::Agent),
            "aggregator" => Some(JobKind::Aggregator),
            "loop" => Some(JobKind::Loop),
            "wake" => Some(JobKind::Wake),
            _ => None,
        }
    }

    /// Kinds that run code chosen by whoever submits them: never submittable over MCP.
    pub fn is_protected(&self) -> bool {
        matches!(self, JobKind::Shell)
    }

    /// The runner's own kinds: made by the daemon (or a person's trigger) for a loop's run
    /// or a wake, run by whoever made them, never submitted and never claimed by the job
    /// worker; removed when they end.
    pub fn is_light(&self) -> bool {
        self.policy().lane == Lane::Runs
    }
}

impl JobKind {
    /// The policy of this kind.
    pub const fn policy(self) -> KindPolicy {
        match self {
            JobKind::Loop => KindPolicy {
                lane: Lane::Runs,
                on_stalled: OnStalled::RecordInterrupted,
                concurrency: ConcurrencyKey::Loop,
                retries: Retries::LoopConfig,
                time_limit: TimeLimit::LoopConfig,
                pausable: false,
                steerable: false,
            },
            JobKind::Wake => KindPolicy {
                lane: Lane::Runs,
                on_stalled: OnStalled::ReturnHandoffs,
                concurrency: ConcurrencyKey::MainSession,
                retries: Retries::Fixed(WAKE_RETRY),
                time_limit: TimeLimit::MainSettings,
                pausable: false,
                steerable: false,
            },
            JobKind::Shell | JobKind::Agent | JobKind::Aggregator => KindPolicy {
                lane: Lane::Jobs,
                on_stalled: OnStalled::Requeue,
                concurrency: ConcurrencyKey::Unkeyed,
                retries: Retries::JobSettings,
                time_limit: TimeLimit::JobSettings,
                pausable: true,
                steerable: !matches!(self, JobKind::Shell),
            },
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackoffKind {
    Fixed,
    #[default]
    Exponential,
}

/// How long a failed attempt waits before the next: `delay` (fixed) or
/// `delay · 2^(attempt-1)` (exponential), spread by ±`jitter` (a fraction).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    #[serde(rename = "type")]
    pub kind: BackoffKind,
    pub delay_ms: u64,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            kind: BackoffKind::Exponential,
            delay_ms: 1000,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (1-based). The jitter is a
    /// deterministic function of the job and attempt, so a test can predict it and two
    /// jobs failing together still spread out.
    pub fn delay(&self, job: JobId, attempt: u32) -> Duration {
        let growth = match self.kind {
            BackoffKind::Fixed => crate::backoff::Growth::Fixed,
            BackoffKind::Exponential => crate::backoff::Growth::Doubling,
        };
        // A cheap, well-spread hash of (job, attempt) in [-1, 1).
        let mut x = job
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(attempt as u64)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
        let spread = (x % 2_000_001) as f64 / 1_000_000.0 - 1.0;
        crate::backoff::wait(
            Duration::from_millis(self.delay_ms),
            growth,
            attempt.saturating_sub(1),
            self.jitter.clamp(0.0, 1.0),
            spread,
            Duration::from_secs(30 * 24 * 3600),
        )
    }
}

/// What a parent does when one of its children fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnChildFail {
    /// The parent fails at once; its other children are cancelled.
    #[default]
    FailParent,
    /// The parent waits for the rest and then runs, seeing the failure among the results.
    Continue,
    /// As `continue`, but the failure is not counted against the parent.
    Ignore,
    /// The failed child is no longer waited for: the parent goes on without it.
    RemoveDep,
}

impl OnChildFail {
    pub fn as_str(&self) -> &'static str {
        match self {
            OnChildFail::FailParent => "fail_parent",
            OnChildFail::Continue => "continue",
            OnChildFail::Ignore => "ignore",
            OnChildFail::RemoveDep => "remove_dep",
        }
    }

    pub fn parse(s: &str) -> Option<OnChildFail> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "fail_parent" => Some(OnChildFail::FailParent),
            "continue" => Some(OnChildFail::Continue),
            "ignore" => Some(OnChildFail::Ignore),
            "remove_dep" => Some(OnChildFail::RemoveDep),
            _ => None,
        }
    }
}

/// Who holds an active job: a process, named by pid *and* start time so a recycled pid
/// is never mistaken for the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub pid: u32,
    #[serde(default)]
    pub pid_start: Option<u64>,
    pub since: DateTime<Utc>,
    /// The process group of a running shell job, to stop it if the owner died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid_start: Option<u64>,
}

impl Lease {
    pub fn this_process(now: DateTime<Utc>) -> Lease {
        let pid = std::process::id();
        Lease {
            pid,
            pid_start: crate::fsutil::process_start_time(pid),
            since: now,
            pgid: None,
            pgid_start: None,
        }
    }

    pub fn is_mine(&self) -> bool {
        self.pid == std::process::id()
            && self.pid_start == crate::fsutil::process_start_time(self.pid)
    }

    /// Whether the owning process is still there.
    pub fn owner_alive(&self) -> bool {
        crate::fsutil::process_alive(self.pid, self.pid_start)
    }
}

/// The fencing half of a job's lease (the owner is in [`Lease`]): every claim takes the
/// next generation, and a runner names the one it was given in every call it makes for
/// the job ([`LeaseToken`]), so one whose lease was taken over (swept as stalled and
/// claimed again) can no longer complete, renew or hold it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The latest claim's number; kept when the lease ends, so numbers only grow.
    #[serde(default)]
    pub generation: u64,
    /// A lease taken with a time to live: how long each renewal lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// … and when it lapses unless renewed; the sweep treats it as stalled after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
}

impl Fence {
    fn is_unset(&self) -> bool {
        *self == Fence::default()
    }
}

/// What a runner holds for a job it claimed: proof of that one claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseToken {
    pub job: JobId,
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub generation: u64,
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<JobState>,
    pub to: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Token counts (the same four as a run record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    #[serde(default)]
    pub input: u64,
    #[serde(default)]
    pub output: u64,
    #[serde(default)]
    pub cache_read: u64,
    #[serde(default)]
    pub cache_write: u64,
}

impl Tokens {
    pub fn add(&mut self, o: &Tokens) {
        self.input += o.input;
        self.output += o.output;
        self.cache_read += o.cache_read;
        self.cache_write += o.cache_write;
    }

    pub fn is_zero(&self) -> bool {
        *self == Tokens::default()
    }

    pub fn from_usage(u: &crate::usage::Usage) -> Tokens {
        Tokens {
            input: u.input,
            output: u.output,
            cache_read: u.cache_read,
            cache_write: u.cache_write,
        }
    }
}

/// How far a running job has got; cheap to read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Model turns made (agent) or 1 once the command started (shell).
    #[serde(default)]
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Tokens of the run going now (added to the job's tokens when it ends).
    #[serde(default, skip_serializing_if = "Tokens::is_zero")]
    pub tokens: Tokens,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<DateTime<Utc>>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// How a job's run ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout_tail: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    /// Bytes printed beyond the kept head and tail (a shell job's flood of output).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub stdout_dropped: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub stderr_dropped: u64,
    #[serde(default)]
    pub duration_ms: u64,
    /// An agent's final words (its `finish` summary or its answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A steering message for the running agent.
    Steer,
    /// A child reached a terminal state.
    ChildDone,
}

/// When and at which turn the agent read a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub at: DateTime<Utc>,
    pub turn: u64,
}

/// A message to a job: steering from a person or its parent, or a child's `child_done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub seq: u64,
    pub kind: MessageKind,
    pub at: DateTime<Utc>,
    /// `operator` (the CLI or an MCP client) or `job:<id>`.
    pub from: String,
    pub body: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Receipt>,
}

/// A request to the process that runs an active job (it watches the job's file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    Cancel,
    Pause,
    Resume,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub name: String,
    pub kind: JobKind,
    #[serde(default = "default_queue")]
    pub queue: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub params: Value,
    pub state: JobState,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    /// Delayed jobs: not before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Why the runner holds this delayed job until `run_at` (the workspace's daily
    /// budget is spent), not a retry's back-off: a follower stops waiting on it. Cleared
    /// by its next move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    pub max_attempts: u32,
    /// Attempts that ended (success or failure). A run cut short by the runner itself
    /// (shutdown, a lost lease, a stall) does not count.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    pub max_stalled: u32,
    #[serde(default)]
    pub stalls: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    #[serde(default, skip_serializing_if = "Fence::is_unset")]
    pub fence: Fence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<Control>,
    #[serde(default)]
    pub history: Vec<Transition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tokens this job's own runs used.
    #[serde(default)]
    pub tokens: Tokens,
    /// Tokens its descendants used, failed and cancelled ones included.
    #[serde(default)]
    pub child_tokens: Tokens,
    #[serde(default)]
    pub progress: Progress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// Milliseconds spent running, over every attempt and resume.
    #[serde(default)]
    pub run_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<JobId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<JobId>,
    /// Children the parent no longer waits for (`remove_dep`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_children: Vec<JobId>,
    #[serde(default)]
    pub on_child_fail: OnChildFail,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<JobMessage>,
    /// Who submitted it: `cli`, `mcp`, `job:<id>`, `replay:<id>`.
    #[serde(default)]
    pub source: String,
    /// What `--dry-run` would have done, or a replay's origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<JobId>,
}

fn default_queue() -> String {
    "default".into()
}

impl Job {
    /// Moves to `to`, recording the transition.
    pub fn transition(&mut self, to: JobState, now: DateTime<Utc>, reason: Option<String>) {
        self.history.push(Transition {
            at: now,
            from: Some(self.state),
            to,
            reason,
        });
        self.held = None;
        self.state = to;
        self.updated = now;
        if to != JobState::Delayed {
            self.run_at = None;
        }
        if to.is_terminal() {
            self.finished = Some(now);
            self.lease = None;
            self.control = None;
        }
        if to != JobState::Active {
            self.end_lease();
        }
    }

    /// Drops the lease (its generation stays, so the next claim's is higher).
    pub fn end_lease(&mut self) {
        self.lease = None;
        self.fence.ttl_ms = None;
        self.fence.expires = None;
    }

    /// The token of the lease it is under now, if any.
    pub fn lease_token(&self) -> Option<LeaseToken> {
        self.lease.as_ref().map(|l| LeaseToken {
            job: self.id,
            pid: l.pid,
            pid_start: l.pid_start,
            generation: self.fence.generation,
        })
    }

    /// Whether `t` is the lease it is under now.
    pub fn leased_by(&self, t: &LeaseToken) -> bool {
        self.lease_token().as_ref() == Some(t)
    }

    /// Whether its lease is held: the owner lives and the lease has not lapsed.
    pub fn lease_held(&self, now: DateTime<Utc>) -> bool {
        self.lease.as_ref().is_some_and(|l| l.owner_alive())
            && self.fence.expires.is_none_or(|e| e > now)
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }

    /// Tokens of the job and all its descendants.
    pub fn total_tokens(&self) -> Tokens {
        let mut t = self.tokens;
        t.add(&self.child_tokens);
        t
    }

    /// Whether a worker may start it now.
    pub fn ready(&self, now: DateTime<Utc>) -> bool {
        if self.kind.policy().lane != Lane::Jobs {
            // Run by whoever made it, never by a worker that finds it.
            return false;
        }
        match self.state {
            JobState::Waiting => true,
            JobState::Delayed => self.run_at.is_none_or(|t| t <= now),
            _ => false,
        }
    }

    /// The state to show a person. A loop's run or a wake is `delayed` in its file until
    /// it begins (its fire time is its `run_at`); once that time has come it is waiting
    /// for its turn (under `limits.max_concurrent_jobs`, or behind its loop's running
    /// one), not delayed, and is shown as `waiting`.
    pub fn shown_state(&self, now: DateTime<Utc>) -> JobState {
        let due = self.run_at.is_none_or(|t| t <= now);
        match self.state {
            JobState::Delayed if self.kind.is_light() && due => JobState::Waiting,
            s => s,
        }
    }

    /// The next time this job needs a worker's attention by the clock.
    pub fn wake_at(&self) -> Option<DateTime<Utc>> {
        (self.state == JobState::Delayed)
            .then_some(self.run_at)
            .flatten()
    }

    /// Children it still waits for.
    pub fn pending_children(&self) -> impl Iterator<Item = JobId> + '_ {
        self.children
            .iter()
            .copied()
            .filter(|c| !self.removed_children.contains(c))
    }

    /// Steering messages not yet read.
    pub fn unread_steering(&self) -> impl Iterator<Item = &JobMessage> {
        self.messages
            .iter()
            .filter(|m| m.kind == MessageKind::Steer && m.read.is_none())
    }

    pub fn child_done_messages(&self) -> impl Iterator<Item = &JobMessage> {
        self.messages
            .iter()
            .filter(|m| m.kind == MessageKind::ChildDone)
    }

    pub fn next_message_seq(&self) -> u64 {
        self.messages.iter().map(|m| m.seq).max().unwrap_or(0) + 1
    }

    /// Elapsed running time: finished runs plus the one going now.
    pub fn elapsed_ms(&self, now: DateTime<Utc>) -> u64 {
        let live = match (&self.state, &self.lease) {
            (JobState::Active | JobState::Paused, Some(l)) => {
                (now - l.since).num_milliseconds().max(0) as u64
            }
            _ => 0,
        };
        self.run_ms + live
    }
}

/// A compact line about a job, for the finished-jobs index and `jobs list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: JobId,
    pub name: String,
    pub kind: JobKind,
    pub queue: String,
    pub state: JobState,
    pub priority: i32,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub run_ms: u64,
    #[serde(default)]
    pub tokens: Tokens,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<JobId>,
    #[serde(default)]
    pub children: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&Job> for JobSummary {
    fn from(j: &Job) -> JobSummary {
        JobSummary {
            id: j.id,
            name: j.name.clone(),
            kind: j.kind,
            queue: j.queue.clone(),
            state: j.state,
            priority: j.priority,
            created: j.created,
            updated: j.updated,
            started: j.started,
            finished: j.finished,
            attempts: j.attempts,
            run_ms: j.run_ms,
            tokens: j.total_tokens(),
            parent: j.parent,
            children: j.children.len(),
            error: j.error.as_deref().map(|e| crate::text::clip(e, 200)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runners_own_runs_are_never_requeued_and_submitted_work_always_is() {
        for kind in [
            JobKind::Shell,
            JobKind::Agent,
            JobKind::Aggregator,
            JobKind::Loop,
            JobKind::Wake,
        ] {
            let p = kind.policy();
            // A slot must not run twice and a wake's handoffs must not be lost: only
            // what a worker claims from the queue goes back to it.
            assert_eq!(
                p.lane == Lane::Jobs,
                p.on_stalled == OnStalled::Requeue,
                "{kind}"
            );
            assert_eq!(p.lane == Lane::Jobs, p.pausable, "{kind}");
            assert_eq!(kind.is_light(), p.lane == Lane::Runs, "{kind}");
        }
        assert_eq!(JobKind::Wake.policy().retries, Retries::Fixed(WAKE_RETRY));
        assert_eq!(JobKind::Loop.policy().concurrency, ConcurrencyKey::Loop);
    }

    #[test]
    fn exponential_backoff_doubles_within_its_jitter() {
        let b = Backoff {
            kind: BackoffKind::Exponential,
            delay_ms: 1000,
            jitter: 0.2,
        };
        for attempt in 1..6u32 {
            let base = 1000.0 * 2f64.powi(attempt as i32 - 1);
            let d = b.delay(7, attempt).as_millis() as f64;
            assert!(
                d >= base * 0.8 - 1.0 && d <= base * 1.2 + 1.0,
                "{attempt}: {d}"
            );
        }
        let fixed = Backoff {
            kind: BackoffKind::Fixed,
            delay_ms: 500,
            jitter: 0.0,
        };
        assert_eq!(fixed.delay(1, 4), Duration::from_millis(500));
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in ALL_STATES {
            assert_eq!(JobState::parse(s.as_str()), Some(*s));
        }
        assert_eq!(
            JobState::parse("waiting_children"),
            Some(JobState::WaitingChildren)
        );
        assert!(JobState::parse("done").is_none());
    }
}
