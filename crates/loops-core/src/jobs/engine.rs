//! The storage interface of the job queue: every operation on the queue, its leases and
//! the loops' slot watermarks, as one trait an engine implements. The file engine
//! ([`JobStore`], `.loops/jobs/` and `.loops/watermarks/`) is the one there is; an engine
//! for a database is meant to drop in beside it and pass the same conformance suite
//! (`tests/it/job_engine.rs`), which is written against this trait only.
//!
//! An engine gets the queue's state machine for free by giving one transaction as a
//! [`JobTx`] and running the `queue::*_in` functions inside it, as the file engine does
//! here; it may answer some operations its own way (a database claims with
//! `FOR UPDATE SKIP LOCKED`), as long as the suite still passes.
//!
//! Durability: every operation that changes what a person or a crash must not lose
//! (a submit, an end, a cancel, a watermark) returns only once that change is on disk.
//! Leases are fenced: [`JobEngine::claim`] hands out a [`LeaseToken`], and every call a
//! runner makes for the job afterwards names it; once the lease is taken over (the sweep
//! requeued the job and it was claimed again) the old token is refused with
//! [`QueueError::LostLease`].

use super::job::{Job, JobId, JobMessage, JobSummary, Progress, Tokens};
use super::queue::{self, Holder, JobSpec, QueueError, RunEnd, Sender, Submitted, Swept};
use super::store::{JobStore, StoreError};
use chrono::{DateTime, Utc};
use serde_json::Value;

pub use super::job::LeaseToken;
pub use super::queue::{ClaimOptions, Claimed};
pub use super::store::CasOutcome;

/// A storage engine for the job queue.
pub trait JobEngine: Send + Sync {
    // -- Submitting ----------------------------------------------------------------------

    /// Submits one job. A spec with an idempotency key held by a job that is not dead or
    /// cancelled returns that job (`existing`). `refused`: why it may not run at all; it
    /// is recorded, straight as dead, so that it never waits silently.
    fn submit(
        &self,
        spec: &JobSpec,
        now: DateTime<Utc>,
        refused: Option<String>,
    ) -> Result<Submitted, QueueError>;

    /// Submits a batch, in order, as one durable write: what `submit` of each would
    /// return. A bad spec or a missing parent refuses the whole batch.
    fn submit_many(
        &self,
        specs: &[JobSpec],
        now: DateTime<Utc>,
        refused: &dyn Fn(&Job) -> Option<String>,
    ) -> Result<Vec<Submitted>, QueueError>;

    /// Submits children and an aggregator that runs once they have all ended; the
    /// aggregator's `on_child_fail` decides what a failed child does. Atomic: no child
    /// can be claimed before the whole group is written.
    fn submit_fanout(
        &self,
        children: &[JobSpec],
        aggregator: &JobSpec,
        now: DateTime<Utc>,
        refused: &dyn Fn(&Job) -> Option<String>,
    ) -> Result<(Job, Vec<Job>), QueueError>;

    /// A new job with the parameters of `id` (overridden by `overrides`, dotted paths).
    fn replay(
        &self,
        id: JobId,
        overrides: &[(String, Value)],
        now: DateTime<Utc>,
        source: &str,
    ) -> Result<Job, QueueError>;

    /// A dead or failed job runs again, with fresh attempts.
    fn retry(&self, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError>;

    // -- Running: leases -------------------------------------------------------------------

    /// Leases job `id` to the caller if it is ready. `gate` says why it may not run here
    /// at all (it then goes to dead). `None`: not ready (taken, cancelled, delayed, or a
    /// fan-out child whose group is not all written yet).
    fn claim(
        &self,
        id: JobId,
        now: DateTime<Utc>,
        opts: &ClaimOptions,
        gate: &dyn Fn(&Job) -> Option<String>,
    ) -> Result<Option<Claimed>, QueueError>;

    /// Leases the ready job to run next (lowest priority number, then oldest).
    fn claim_next(
        &self,
        now: DateTime<Utc>,
        opts: &ClaimOptions,
        gate: &dyn Fn(&Job) -> Option<String>,
    ) -> Result<Option<Claimed>, QueueError>;

    /// Renews the lease (if it was taken with a time to live) and records progress;
    /// returns the job as it is now, with any cancel or pause request and new messages.
    fn heartbeat(
        &self,
        lease: &LeaseToken,
        now: DateTime<Utc>,
        update: &mut dyn FnMut(&mut Progress),
    ) -> Result<Job, QueueError>;

    /// Records how the run ended: completed, failed (retried with backoff while
    /// attempts remain and the error is not permanent), cancelled, paused, or given
    /// back (aborted, no attempt used).
    fn finish(
        &self,
        lease: &LeaseToken,
        end: RunEnd,
        tokens: Tokens,
        run_ms: u64,
        now: DateTime<Utc>,
    ) -> Result<Job, QueueError>;

    /// A running job stopped in place (`paused`) or continued; the lease is kept.
    fn hold(&self, lease: &LeaseToken, paused: bool, now: DateTime<Utc>)
        -> Result<Job, QueueError>;

    /// Gives the lease back: the job waits again, no attempt used. A lease no longer
    /// held is left alone.
    fn release(&self, lease: &LeaseToken, why: &str, now: DateTime<Utc>) -> Result<(), QueueError>;

    /// Records the process group a running job's command runs in, so the sweep can
    /// stop it if its runner dies.
    fn note_process_group(&self, lease: &LeaseToken, pgid: u32) -> Result<(), QueueError>;

    /// Marks the unread steering messages read at `turn` and returns them.
    fn take_steering(
        &self,
        id: JobId,
        turn: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<JobMessage>, QueueError>;

    /// Marks the children's results read (an aggregator was given them).
    fn mark_child_results_read(
        &self,
        id: JobId,
        turn: u64,
        now: DateTime<Utc>,
    ) -> Result<(), QueueError>;

    // -- A person's operations -------------------------------------------------------------

    /// Cancels a job and its descendants; a running one is asked to stop.
    fn cancel(&self, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError>;

    /// Pauses a waiting or delayed job; a running one is asked to.
    fn pause(&self, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError>;

    fn resume(&self, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError>;

    /// A steering message for an agent job, from an operator or the job's parent.
    fn message(
        &self,
        id: JobId,
        body: Value,
        from: Sender,
        now: DateTime<Utc>,
    ) -> Result<JobMessage, QueueError>;

    // -- Upkeep ------------------------------------------------------------------------------

    /// Requeues (counting a stall) or kills the jobs whose lease is stalled: its owner
    /// died, or it lapsed without a renewal; finishes what a crash left half-done.
    fn sweep(&self, now: DateTime<Utc>) -> Result<Swept, QueueError>;

    // -- Reading -----------------------------------------------------------------------------

    /// A job, live or finished.
    fn get(&self, id: JobId) -> Result<Option<Job>, QueueError>;

    /// Every job not yet finished; records that cannot be read are reported beside.
    fn live_jobs(&self) -> (Vec<Job>, Vec<QueueError>);

    /// A summary of every job, oldest first; records that cannot be read beside.
    fn list(&self) -> (Vec<JobSummary>, Vec<QueueError>);

    // -- Loop records ------------------------------------------------------------------------

    /// The last slot fired of a loop (`key`: its name), if it has one.
    fn watermark(&self, key: &str) -> Result<Option<DateTime<Utc>>, QueueError>;

    /// Sets the watermark of `key` to `new` if and only if it is still `expected`
    /// (`None`: it has none). Of two schedulers racing for one slot, one swaps.
    fn compare_and_set_watermark(
        &self,
        key: &str,
        expected: Option<DateTime<Utc>>,
        new: DateTime<Utc>,
    ) -> Result<CasOutcome, QueueError>;
}

fn errors(e: Vec<StoreError>) -> Vec<QueueError> {
    e.into_iter().map(QueueError::from).collect()
}

/// The file engine.
impl JobEngine for JobStore {
    fn submit(
        &self,
        spec: &JobSpec,
        now: DateTime<Utc>,
        refused: Option<String>,
    ) -> Result<Submitted, QueueError> {
        queue::submit(self, spec, now, refused)
    }

    fn submit_many(
        &self,
        specs: &[JobSpec],
        now: DateTime<Utc>,
        refused: &dyn Fn(&Job) -> Option<String>,
    ) -> Result<Vec<Submitted>, QueueError> {
        queue::submit_many(self, specs, now, refused)
    }

    fn submit_fanout(
        &self,
        children: &[JobSpec],
        aggregator: &JobSpec,
        now: DateTime<Utc>,
        refused: &dyn Fn(&Job) -> Option<String>,
    ) -> Result<(Job, Vec<Job>), QueueError> {
        queue::submit_fanout(self, children, aggregator, now, refused)
    }

    fn replay(
        &self,
        id: JobId,
        overrides: &[(String, Value)],
        now: DateTime<Utc>,
        source: &str,
    ) -> Result<Job, QueueError> {
        queue::replay(self, id, overrides, now, source)
    }

    fn retry(&self, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
        queue::retry(self, id, now)
    }

    fn claim(
        &self,
        id: JobId,
        now: DateTime<Utc>,
        opts: &ClaimOptions,
        gate: &dyn Fn(&Job) -> Option<String>,
    ) -> Result<Option<Claimed>, QueueError> {
        self.transaction(|tx| queue::claim_in(tx, id, now, opts, gate))
    }

    fn claim_next(
        &self,
        now: DateTime<Utc>,
        opts: &ClaimOptions,
        gate: &dyn Fn(&Job) -> Option<String>,
    ) -> Result<Option<Claimed>, QueueError> {
        self.transaction(|tx| queue::claim_next_in(tx, now, opts, gate))
    }

    fn heartbeat(
        &self,
        lease: &LeaseToken,
        now: DateTime<Utc>,
        update: &mut dyn FnMut(&mut Progress),
    ) -> Result<Job, QueueError> {
        self.transaction(|tx| queue::heartbeat_in(tx, lease.job, Holder::Token(lease), now, update))
    }

    fn finish(
        &self,
        lease: &LeaseToken,
        end: RunEnd,
        tokens: Tokens,
        run_ms: u64,
        now: DateTime<Utc>,
    ) -> Result<Job, QueueError> {
        self.transaction(|tx| {
            queue::finish_in(
                tx,
                lease.job,
                Holder::Token(lease),
                end,
                tokens,
                run_ms,
                now,
            )
        })
    }

    fn hold(
        &self,
        lease: &LeaseToken,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<Job, QueueError> {
        self.transaction(|tx| queue::hold_in(tx, lease.job, Holder::Token(lease), paused, now))
    }

    fn release(&self, lease: &LeaseToken, why: &str, now: DateTime<Utc>) -> Result<(), QueueError> {
        self.transaction(|tx| queue::release_in(tx, lease.job, Holder::Token(lease), why, now))
    }

    fn note_process_group(&self, lease: &LeaseToken, pgid: u32) -> Result<(), QueueError> {
        self.transaction(|tx| queue::note_pgid_in(tx, lease.job, Holder::Token(lease), pgid))
    }

    fn take_steering(
        &self,
        id: JobId,
        turn: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<JobMessage>, QueueError> {
        queue::take_steering(self, id, turn, now)
    }

    fn mark_child_results_read(
        &self,
        id: JobId,
        turn: u64,
        now: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        queue::mark_child_results_read(self, id, turn, now)
    }

    fn cancel(&self, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
        queue::cancel(self, id, now)
    }

    fn pause(&self, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
        queue::pause(self, id, now)
    }

    fn resume(&self, id: JobId, now: DateTime<Utc>) -> Result<Job, QueueError> {
        queue::resume(self, id, now)
    }

    fn message(
        &self,
        id: JobId,
        body: Value,
        from: Sender,
        now: DateTime<Utc>,
    ) -> Result<JobMessage, QueueError> {
        queue::message(self, id, body, from, now)
    }

    fn sweep(&self, now: DateTime<Utc>) -> Result<Swept, QueueError> {
        queue::sweep(self, now)
    }

    fn get(&self, id: JobId) -> Result<Option<Job>, QueueError> {
        Ok(JobStore::get(self, id)?)
    }

    fn live_jobs(&self) -> (Vec<Job>, Vec<QueueError>) {
        let (jobs, e) = JobStore::live_jobs(self);
        (jobs, errors(e))
    }

    fn list(&self) -> (Vec<JobSummary>, Vec<QueueError>) {
        let (jobs, e) = JobStore::list(self);
        (jobs, errors(e))
    }

    fn watermark(&self, key: &str) -> Result<Option<DateTime<Utc>>, QueueError> {
        Ok(JobStore::watermark(self, key)?)
    }

    fn compare_and_set_watermark(
        &self,
        key: &str,
        expected: Option<DateTime<Utc>>,
        new: DateTime<Utc>,
    ) -> Result<CasOutcome, QueueError> {
        Ok(JobStore::compare_and_set_watermark(
            self, key, expected, new,
        )?)
    }
}
