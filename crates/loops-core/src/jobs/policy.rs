//! What each kind of job declares about how it is run: who claims it, what stops a second
//! one alongside it, where its retries and its time limit come from, and what the sweep
//! does when its owner dies. One table, so that a loop's tick, a wake and a submitted job
//! are told apart here and nowhere else (docs/architecture.md, "one path"). Each kind's
//! entry is [`super::job::JobKind::policy`].

use std::time::Duration;

/// Who claims a job of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The runner's own runs (a loop's tick, a main-session wake): begun by the process
    /// that planned them, under `limits.max_concurrent_jobs`; never submitted, never found
    /// and claimed by the job worker; gone from the queue when they end (their history is
    /// `.loops/runs/`).
    Runs,
    /// Submitted work (`loops jobs submit`, MCP, fan-outs): claimed by the job worker.
    Jobs,
}

/// What the sweep does with a job whose owner died or whose lease lapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStalled {
    /// Recorded `interrupted` in the loop's run history and not run again: a slot runs
    /// at most once, and its retry is the loop's own decision at its next slot.
    RecordInterrupted,
    /// The handoffs it claimed go back to the inbox, for the next wake; the wake itself
    /// is recorded `interrupted`.
    ReturnHandoffs,
    /// Back to waiting, counting a stall; dead past its `max_stalled`.
    Requeue,
}

/// What keeps a second job of the same key from beginning while one runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyKey {
    /// The loop's name, checked when a run begins unless its config says
    /// `concurrency: allow` (`forbid` skips the newcomer, `replace` stops the old run).
    Loop,
    /// One wake of the main session at a time; arrivals meanwhile make one more wake.
    MainSession,
    /// None: only `limits.max_concurrent_jobs` applies.
    Unkeyed,
}

/// Where a failed job's next attempt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// The loop's `retry:` (attempts, backoff, jitter), then `pause_after_failures`.
    LoopConfig,
    /// A fixed wait, whatever woke it: a failing main session must not be retried at once
    /// by the inbox events its own release of the handoffs causes.
    Fixed(Duration),
    /// The job's own `max_attempts` and backoff, given at submit.
    JobSettings,
}

/// Where a job's time limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLimit {
    /// The loop's `timeout:`.
    LoopConfig,
    /// `main.timeout` of loops.yaml.
    MainSettings,
    /// The job's `timeout` parameter, or the worker's default.
    JobSettings,
}

/// Everything a kind declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindPolicy {
    pub lane: Lane,
    pub on_stalled: OnStalled,
    pub concurrency: ConcurrencyKey,
    pub retries: Retries,
    pub time_limit: TimeLimit,
    /// Whether `loops jobs pause` applies: a job with turns can stop between them; a
    /// loop's run or a wake runs or is stopped.
    pub pausable: bool,
    /// Whether a steering message (`loops jobs message`) is read: only an agent reads the
    /// queue between its turns.
    pub steerable: bool,
}

/// How long a failed wake waits before the next one.
pub const WAKE_RETRY: Duration = Duration::from_secs(5);
