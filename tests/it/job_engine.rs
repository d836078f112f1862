//! The conformance suite of the job queue's storage interface, `JobEngine`: every queue
//! operation, idempotency, batches, fan-out under each `on_child_fail` policy, fenced
//! leases and the stalled-lease sweep, steering messages, listing, and the watermark
//! compare-and-set, written against the trait alone (it never looks at files), so that
//! any engine can be held to it. The file engine runs it below; another engine adds a
//! module like `file_engine` with its own `make`:
//!
//! ```ignore
//! mod postgres_engine {
//!     fn make() -> crate::job_engine::Fresh<PgEngine> { … an empty schema … }
//!     crate::job_engine::conformance!(make);
//! }
//! ```
//!
//! Time is passed in (`now`), so backoff and lease lapses are walked through without
//! sleeping; a stalled runner is one whose lease (taken with a time to live) lapsed.

use chrono::{DateTime, Duration as CDuration, TimeZone, Utc};
use loops_core::jobs::engine::{CasOutcome, ClaimOptions, Claimed, JobEngine};
use loops_core::jobs::job::{Job, JobId, JobResult, JobState, MessageKind, Tokens};
use loops_core::jobs::queue::{JobSpec, QueueError, RunEnd, Sender};
use serde_json::json;
use std::time::Duration;

/// An empty engine, and what must live as long as it does (a temporary folder, a
/// database schema).
pub struct Fresh<S> {
    pub engine: S,
    pub keep: Box<dyn std::any::Any>,
}

/// One `#[test]` per case of the suite, each on an engine `make()` gives.
macro_rules! conformance {
    ($make:path) => {
        $crate::job_engine::conformance!(@cases $make;
            submit_gives_new_ids_and_keeps_what_was_asked,
            an_invalid_spec_is_refused_and_nothing_is_written,
            an_idempotency_key_returns_its_holder_until_it_is_dead_or_cancelled,
            submit_many_submits_in_order_and_keys_hold_within_the_batch,
            submit_many_with_a_bad_spec_or_parent_writes_nothing,
            submit_many_asks_refused_about_each_job,
            concurrent_submits_are_each_kept_once,
            claim_leases_a_ready_job_once,
            claim_next_takes_the_lowest_priority_number_then_the_oldest,
            a_gate_sends_a_job_it_refuses_to_dead,
            finish_completed_records_the_result_and_ends_the_lease,
            a_failed_attempt_backs_off_then_fails_after_max_attempts,
            a_permanent_failure_is_not_retried_and_retry_starts_afresh,
            a_stale_lease_holder_can_neither_complete_nor_renew_nor_release,
            a_heartbeat_renews_the_lease_and_records_progress,
            past_max_stalled_a_stalled_job_is_dead,
            release_and_abort_give_the_job_back_without_an_attempt,
            cancel_ends_a_waiting_job_and_asks_a_running_one,
            cancel_cascades_to_every_descendant,
            pause_and_resume_waiting_and_running_jobs,
            hold_stops_and_continues_a_running_job_in_place,
            messages_steer_from_an_operator_or_the_parent_only,
            fanout_continue_runs_the_aggregator_after_every_child,
            fanout_ignore_marks_the_failure_ignored,
            fanout_remove_dep_stops_waiting_for_the_failed_child,
            fanout_fail_parent_fails_at_once_and_cancels_the_rest,
            a_fanout_with_a_key_is_submitted_once,
            a_parent_with_a_child_completes_after_both,
            replay_makes_a_new_job_with_overrides,
            listing_shows_live_and_finished_jobs,
            a_watermark_changes_only_from_the_value_expected,
            watermarks_of_different_keys_are_independent,
            racing_compare_and_sets_lose_no_update,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let fresh = $make();
                $crate::job_engine::cases::$case(&fresh.engine);
                drop(fresh.keep);
            }
        )*
    };
}
pub(crate) use conformance;

mod file_engine {
    use super::Fresh;
    use loops_core::jobs::store::JobStore;

    fn make() -> Fresh<JobStore> {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = JobStore::at(dir.path().join("jobs"));
        Fresh {
            engine,
            keep: Box::new(dir),
        }
    }

    crate::job_engine::conformance!(make);
}

// ---------------------------------------------------------------------------------------
// Helpers, over the trait only

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0)
        .single()
        .expect("time")
}

fn secs(n: i64) -> CDuration {
    CDuration::seconds(n)
}

fn agent(prompt: &str) -> JobSpec {
    JobSpec {
        kind: Some("agent".into()),
        params: json!({ "prompt": prompt }),
        ..Default::default()
    }
}

fn shell(cmd: &str) -> JobSpec {
    JobSpec {
        kind: Some("shell".into()),
        params: json!({ "cmd": cmd }),
        ..Default::default()
    }
}

fn keyed(key: &str, spec: JobSpec) -> JobSpec {
    JobSpec {
        idempotency_key: Some(key.into()),
        ..spec
    }
}

fn none(_: &Job) -> Option<String> {
    None
}

fn submit<S: JobEngine>(e: &S, spec: &JobSpec) -> Job {
    e.submit(spec, t0(), None).expect("submit").job
}

fn get<S: JobEngine>(e: &S, id: JobId) -> Job {
    e.get(id).expect("get").expect("the job exists")
}

fn state<S: JobEngine>(e: &S, id: JobId) -> JobState {
    get(e, id).state
}

fn ttl(s: u64) -> ClaimOptions {
    ClaimOptions {
        ttl: Some(Duration::from_secs(s)),
        ..Default::default()
    }
}

fn claim<S: JobEngine>(e: &S, id: JobId, now: DateTime<Utc>) -> Claimed {
    e.claim(id, now, &ClaimOptions::default(), &none)
        .expect("claim")
        .expect("ready to claim")
}

fn completed(summary: &str) -> RunEnd {
    RunEnd::Completed(JobResult {
        summary: Some(summary.into()),
        ..Default::default()
    })
}

fn failed(error: &str, permanent: bool) -> RunEnd {
    RunEnd::Failed {
        error: error.into(),
        result: JobResult::default(),
        permanent,
    }
}

fn end<S: JobEngine>(e: &S, c: &Claimed, how: RunEnd, now: DateTime<Utc>) -> Job {
    e.finish(&c.lease, how, Tokens::default(), 10, now)
        .expect("finish")
}

/// Claims job `id` and ends its run `how`.
fn run<S: JobEngine>(e: &S, id: JobId, how: RunEnd, now: DateTime<Utc>) -> Job {
    let c = claim(e, id, now);
    end(e, &c, how, now)
}

fn lost_lease<T: std::fmt::Debug>(r: Result<T, QueueError>, id: JobId) {
    match r {
        Err(QueueError::LostLease(i)) => assert_eq!(i, id),
        other => panic!("expected LostLease({id}), got {other:?}"),
    }
}

fn invalid_state<T: std::fmt::Debug>(r: Result<T, QueueError>) {
    assert!(
        matches!(r, Err(QueueError::InvalidState { .. })),
        "expected InvalidState, got {r:?}"
    );
}

fn child_done_of(parent: &Job, child: JobId) -> Option<serde_json::Value> {
    parent
        .messages
        .iter()
        .find(|m| {
            m.kind == MessageKind::ChildDone
                && m.body.get("child").and_then(|c| c.as_u64()) == Some(child)
        })
        .map(|m| m.body.clone())
}

fn fanout<S: JobEngine>(e: &S, policy: &str, n: usize) -> (Job, Vec<Job>) {
    let kids: Vec<JobSpec> = (0..n).map(|i| agent(&format!("child {i}"))).collect();
    let agg = JobSpec {
        on_child_fail: Some(policy.into()),
        ..agent("combine")
    };
    e.submit_fanout(&kids, &agg, t0(), &none).expect("fanout")
}

// ---------------------------------------------------------------------------------------
// The cases

pub mod cases {
    use super::*;

    pub fn submit_gives_new_ids_and_keeps_what_was_asked<S: JobEngine>(e: &S) {
        let spec = JobSpec {
            name: Some("digest".into()),
            queue: Some("slow".into()),
            priority: Some(-2),
            max_attempts: Some(5),
            timeout: Some(Duration::from_secs(90)),
            ..agent("summarise the week")
        };
        let a = e.submit(&spec, t0(), None).expect("submit");
        assert!(!a.existing);
        let b = submit(e, &agent("second"));
        assert!(b.id > a.job.id, "ids grow: {} then {}", a.job.id, b.id);
        let on_file = get(e, a.job.id);
        assert_eq!(on_file, a.job, "what submit returned is what is kept");
        assert_eq!(on_file.state, JobState::Waiting);
        assert_eq!(on_file.name, "digest");
        assert_eq!(on_file.queue, "slow");
        assert_eq!(on_file.priority, -2);
        assert_eq!(on_file.max_attempts, 5);
        assert_eq!(on_file.timeout(), Some(Duration::from_secs(90)));
        assert_eq!(on_file.params["prompt"], "summarise the week");
        assert_eq!(on_file.history.len(), 1);
        assert_eq!(on_file.history[0].from, None);

        let later = submit(
            e,
            &JobSpec {
                delay: Some(Duration::from_secs(600)),
                ..agent("later")
            },
        );
        assert_eq!(later.state, JobState::Delayed);
        assert_eq!(later.run_at, Some(t0() + secs(600)));

        let refused = e
            .submit(&shell("true"), t0(), Some("shell jobs are off here".into()))
            .expect("submit")
            .job;
        assert_eq!(refused.state, JobState::Dead);
        assert_eq!(refused.error.as_deref(), Some("shell jobs are off here"));
        assert_eq!(state(e, refused.id), JobState::Dead);
    }

    pub fn an_invalid_spec_is_refused_and_nothing_is_written<S: JobEngine>(e: &S) {
        for bad in [
            JobSpec {
                kind: Some("teleport".into()),
                ..agent("x")
            },
            agent("   "),
            JobSpec {
                max_attempts: Some(0),
                ..agent("x")
            },
            JobSpec {
                params: json!({"cmd": "true", "argv": ["true"]}),
                ..shell("true")
            },
        ] {
            let r = e.submit(&bad, t0(), None);
            assert!(
                matches!(r, Err(QueueError::InvalidSpec(_))),
                "{bad:?}: {r:?}"
            );
        }
        assert!(e.list().0.is_empty(), "nothing was written");
    }

    pub fn an_idempotency_key_returns_its_holder_until_it_is_dead_or_cancelled<S: JobEngine>(
        e: &S,
    ) {
        let first = e.submit(&keyed("k1", agent("a")), t0(), None).expect("1");
        assert!(!first.existing);
        let again = e.submit(&keyed("k1", agent("b")), t0(), None).expect("2");
        assert!(again.existing);
        assert_eq!(again.job.id, first.job.id);
        assert_eq!(again.job.params["prompt"], "a", "the holder, unchanged");

        // A completed holder still holds its key.
        run(e, first.job.id, completed("done"), t0());
        let after_done = e.submit(&keyed("k1", agent("c")), t0(), None).expect("3");
        assert!(after_done.existing);
        assert_eq!(after_done.job.id, first.job.id);

        // A cancelled or dead holder frees it.
        let k2 = submit(e, &keyed("k2", agent("a")));
        e.cancel(k2.id, t0()).expect("cancel");
        let fresh = e.submit(&keyed("k2", agent("b")), t0(), None).expect("4");
        assert!(!fresh.existing);
        assert_ne!(fresh.job.id, k2.id);

        let dead = e
            .submit(&keyed("k3", shell("true")), t0(), Some("refused".into()))
            .expect("5")
            .job;
        let fresh = e.submit(&keyed("k3", agent("b")), t0(), None).expect("6");
        assert!(!fresh.existing);
        assert_ne!(fresh.job.id, dead.id);

        // Keys are compared whole: similar keys are different keys.
        let other = e.submit(&keyed("k1 ", agent("z")), t0(), None).expect("7");
        assert!(!other.existing);
    }

    pub fn submit_many_submits_in_order_and_keys_hold_within_the_batch<S: JobEngine>(e: &S) {
        let held = submit(e, &keyed("held", agent("before the batch")));
        let mut specs: Vec<JobSpec> = (0..50).map(|i| agent(&format!("job {i}"))).collect();
        specs.push(keyed("slot@09:00", agent("first with the key")));
        specs.push(keyed("slot@09:00", agent("second with the key")));
        specs.push(keyed("held", agent("the key is held")));
        let out = e.submit_many(&specs, t0(), &none).expect("batch");
        assert_eq!(out.len(), specs.len(), "one answer per spec, in order");
        for (i, s) in out.iter().take(50).enumerate() {
            assert!(!s.existing);
            assert_eq!(s.job.params["prompt"], format!("job {i}"));
            assert_eq!(get(e, s.job.id), s.job);
        }
        let ids: Vec<JobId> = out.iter().take(51).map(|s| s.job.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");
        assert!(ids[0] > held.id);
        let (first, second, third) = (&out[50], &out[51], &out[52]);
        assert!(!first.existing);
        assert!(
            second.existing,
            "the key taken earlier in the same batch holds"
        );
        assert_eq!(second.job.id, first.job.id);
        assert!(third.existing);
        assert_eq!(third.job.id, held.id);
        assert_eq!(e.list().0.len(), 52);
        assert!(e.submit_many(&[], t0(), &none).expect("empty").is_empty());
    }

    pub fn submit_many_with_a_bad_spec_or_parent_writes_nothing<S: JobEngine>(e: &S) {
        let bad = [agent("fine"), agent(""), agent("fine too")];
        match e.submit_many(&bad, t0(), &none) {
            Err(QueueError::InvalidSpec(m)) => assert!(m.contains("job 2"), "{m}"),
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
        let orphan = [
            agent("fine"),
            JobSpec {
                parent: Some(9_999),
                ..agent("child of nobody")
            },
        ];
        assert!(matches!(
            e.submit_many(&orphan, t0(), &none),
            Err(QueueError::NotFound(9_999))
        ));
        assert!(e.list().0.is_empty(), "neither batch wrote anything");
    }

    pub fn submit_many_asks_refused_about_each_job<S: JobEngine>(e: &S) {
        let refuse_shell = |j: &Job| {
            (j.kind == loops_core::jobs::job::JobKind::Shell).then(|| "no shell here".to_string())
        };
        let out = e
            .submit_many(&[shell("true"), agent("think")], t0(), &refuse_shell)
            .expect("batch");
        assert_eq!(out[0].job.state, JobState::Dead);
        assert_eq!(out[0].job.error.as_deref(), Some("no shell here"));
        assert_eq!(out[1].job.state, JobState::Waiting);
        assert_eq!(state(e, out[0].job.id), JobState::Dead);
    }

    pub fn concurrent_submits_are_each_kept_once<S: JobEngine>(e: &S) {
        let (ids, keyed_ids) = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    s.spawn(move || {
                        let mut ids = Vec::new();
                        for i in 0..15 {
                            ids.push(submit(e, &agent(&format!("t{t} #{i}"))).id);
                        }
                        let k = e
                            .submit(&keyed("one for all", agent("x")), t0(), None)
                            .expect("keyed")
                            .job
                            .id;
                        (ids, k)
                    })
                })
                .collect();
            let mut ids = Vec::new();
            let mut keyed_ids = Vec::new();
            for t in threads {
                let (i, k) = t.join().expect("join");
                ids.extend(i);
                keyed_ids.push(k);
            }
            (ids, keyed_ids)
        });
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 8 * 15, "every submit its own id");
        assert!(
            keyed_ids.windows(2).all(|w| w[0] == w[1]),
            "one job for the key: {keyed_ids:?}"
        );
        assert_eq!(e.list().0.len(), 8 * 15 + 1);
        for id in ids {
            assert_eq!(state(e, id), JobState::Waiting);
        }
    }

    pub fn claim_leases_a_ready_job_once<S: JobEngine>(e: &S) {
        let j = submit(e, &agent("work"));
        let c = claim(e, j.id, t0());
        assert_eq!(c.lease.job, j.id);
        assert_eq!(c.job.state, JobState::Active);
        assert_eq!(c.job.attempts, 0, "an attempt counts when it ends");
        assert_eq!(c.job.started, Some(t0()));
        assert_eq!(get(e, j.id), c.job);
        assert!(
            e.claim(j.id, t0(), &ClaimOptions::default(), &none)
                .expect("claim")
                .is_none(),
            "a job is leased once"
        );
        assert!(e
            .claim(9_999, t0(), &ClaimOptions::default(), &none)
            .expect("claim")
            .is_none());

        let later = submit(
            e,
            &JobSpec {
                delay: Some(Duration::from_secs(60)),
                ..agent("later")
            },
        );
        let early = e
            .claim(later.id, t0() + secs(59), &ClaimOptions::default(), &none)
            .expect("claim");
        assert!(early.is_none(), "not before run_at");
        claim(e, later.id, t0() + secs(60));
    }

    pub fn claim_next_takes_the_lowest_priority_number_then_the_oldest<S: JobEngine>(e: &S) {
        let p = |prio: i32, name: &str, queue: &str| {
            submit(
                e,
                &JobSpec {
                    priority: Some(prio),
                    name: Some(name.into()),
                    queue: Some(queue.into()),
                    ..agent(name)
                },
            )
        };
        p(10, "low", "default");
        p(-3, "high, older", "default");
        p(0, "mid", "default");
        p(-3, "high, newer", "default");
        p(-100, "other queue", "other");
        submit(
            e,
            &JobSpec {
                priority: Some(-1000),
                delay: Some(Duration::from_secs(3600)),
                ..agent("delayed")
            },
        );
        let opts = ClaimOptions {
            queue: Some("default".into()),
            ..Default::default()
        };
        let mut order = Vec::new();
        while let Some(c) = e.claim_next(t0(), &opts, &none).expect("claim_next") {
            order.push(c.job.name.clone());
        }
        assert_eq!(order, ["high, older", "high, newer", "mid", "low"]);
        let any = e
            .claim_next(t0(), &ClaimOptions::default(), &none)
            .expect("claim_next")
            .expect("the other queue's");
        assert_eq!(any.job.name, "other queue");
        assert!(e
            .claim_next(t0(), &ClaimOptions::default(), &none)
            .expect("claim_next")
            .is_none());
    }

    pub fn a_gate_sends_a_job_it_refuses_to_dead<S: JobEngine>(e: &S) {
        let j = submit(e, &shell("rm -rf /"));
        let gate = |_: &Job| Some("shell jobs are not allowed here".to_string());
        let c = e
            .claim(j.id, t0(), &ClaimOptions::default(), &gate)
            .expect("claim");
        assert!(c.is_none());
        let after = get(e, j.id);
        assert_eq!(after.state, JobState::Dead);
        assert_eq!(
            after.error.as_deref(),
            Some("shell jobs are not allowed here")
        );
        let ok = submit(e, &agent("fine"));
        let next = e
            .claim_next(t0(), &ClaimOptions::default(), &gate)
            .expect("claim_next");
        assert!(next.is_none(), "the gate refuses every job");
        assert_eq!(state(e, ok.id), JobState::Dead);
    }

    pub fn finish_completed_records_the_result_and_ends_the_lease<S: JobEngine>(e: &S) {
        let j = submit(e, &agent("work"));
        let c = claim(e, j.id, t0());
        let tokens = Tokens {
            input: 100,
            output: 20,
            cache_read: 5,
            cache_write: 1,
        };
        let done = e
            .finish(
                &c.lease,
                completed("all done"),
                tokens,
                1234,
                t0() + secs(2),
            )
            .expect("finish");
        assert_eq!(done.state, JobState::Completed);
        assert_eq!(done.attempts, 1);
        assert_eq!(done.tokens, tokens);
        assert_eq!(done.run_ms, 1234);
        assert_eq!(done.finished, Some(t0() + secs(2)));
        assert!(done.lease.is_none());
        assert_eq!(
            done.result.as_ref().and_then(|r| r.summary.as_deref()),
            Some("all done")
        );
        assert_eq!(get(e, j.id), done);
        lost_lease(
            e.finish(&c.lease, completed("twice"), Tokens::default(), 1, t0()),
            j.id,
        );
    }

    pub fn a_failed_attempt_backs_off_then_fails_after_max_attempts<S: JobEngine>(e: &S) {
        let j = submit(
            e,
            &JobSpec {
                max_attempts: Some(3),
                backoff_type: Some("fixed".into()),
                backoff_delay: Some(Duration::from_secs(10)),
                backoff_jitter: Some(0.0),
                ..agent("flaky")
            },
        );
        let mut now = t0();
        for attempt in 1..=2u32 {
            let after = run(e, j.id, failed("503 from upstream", false), now);
            assert_eq!(after.state, JobState::Delayed, "attempt {attempt}");
            assert_eq!(after.attempts, attempt);
            assert_eq!(after.run_at, Some(now + secs(10)));
            assert_eq!(after.error.as_deref(), Some("503 from upstream"));
            let early = e
                .claim(j.id, now + secs(9), &ClaimOptions::default(), &none)
                .expect("claim");
            assert!(early.is_none(), "backing off");
            now += secs(10);
        }
        let last = run(e, j.id, failed("503 again", false), now);
        assert_eq!(last.state, JobState::Failed);
        assert_eq!(last.attempts, 3);
        assert_eq!(state(e, j.id), JobState::Failed);
    }

    pub fn a_permanent_failure_is_not_retried_and_retry_starts_afresh<S: JobEngine>(e: &S) {
        let j = submit(e, &agent("bad config"));
        let after = run(e, j.id, failed("no such provider", true), t0());
        assert_eq!(after.state, JobState::Failed);
        assert_eq!(after.attempts, 1);
        let again = e.retry(j.id, t0() + secs(5)).expect("retry");
        assert_eq!(again.state, JobState::Waiting);
        assert_eq!(again.attempts, 0);
        assert_eq!(again.error, None);
        assert_eq!(get(e, j.id), again);
        invalid_state(e.retry(j.id, t0()));
        assert!(matches!(
            e.retry(9_999, t0()),
            Err(QueueError::NotFound(9_999))
        ));
        let done = run(e, j.id, completed("fixed"), t0() + secs(6));
        assert_eq!(done.state, JobState::Completed);
    }

    pub fn a_stale_lease_holder_can_neither_complete_nor_renew_nor_release<S: JobEngine>(e: &S) {
        let j = submit(e, &agent("slow"));
        let stale = e
            .claim(j.id, t0(), &ttl(30), &none)
            .expect("claim")
            .expect("ready");
        let swept = e.sweep(t0() + secs(10)).expect("sweep");
        assert!(swept.requeued.is_empty(), "within its time to live");
        let swept = e.sweep(t0() + secs(31)).expect("sweep");
        assert_eq!(
            swept.requeued.iter().map(|r| r.0).collect::<Vec<_>>(),
            [j.id]
        );
        let requeued = get(e, j.id);
        assert_eq!(requeued.state, JobState::Waiting);
        assert_eq!(requeued.stalls, 1);
        assert_eq!(requeued.attempts, 0, "a stall uses no attempt");

        let fresh = e
            .claim(j.id, t0() + secs(32), &ttl(30), &none)
            .expect("claim")
            .expect("ready again");
        assert!(fresh.lease.generation > stale.lease.generation);
        let now = t0() + secs(33);
        lost_lease(
            e.finish(&stale.lease, completed("stale"), Tokens::default(), 1, now),
            j.id,
        );
        lost_lease(e.heartbeat(&stale.lease, now, &mut |_| {}), j.id);
        lost_lease(e.hold(&stale.lease, true, now), j.id);
        lost_lease(e.note_process_group(&stale.lease, 4242), j.id);
        e.release(&stale.lease, "stale runner stops", now)
            .expect("release of a lease not held is a no-op");
        let still = get(e, j.id);
        assert_eq!(still.state, JobState::Active, "the new holder keeps it");
        assert!(still.leased_by(&fresh.lease));
        let done = end(e, &fresh, completed("fresh"), now);
        assert_eq!(done.state, JobState::Completed);
        assert_eq!(
            done.result.and_then(|r| r.summary),
            Some("fresh".to_string())
        );
    }

    pub fn a_heartbeat_renews_the_lease_and_records_progress<S: JobEngine>(e: &S) {
        let j = submit(e, &agent("long"));
        let c = e
            .claim(j.id, t0(), &ttl(30), &none)
            .expect("claim")
            .expect("ready");
        let seen = e
            .heartbeat(&c.lease, t0() + secs(20), &mut |p| {
                p.step = 3;
                p.note = Some("reading".into());
            })
            .expect("heartbeat");
        assert_eq!(seen.progress.step, 3);
        assert_eq!(seen.progress.updated, Some(t0() + secs(20)));
        let swept = e.sweep(t0() + secs(45)).expect("sweep");
        assert!(swept.requeued.is_empty(), "renewed at +20 s until +50 s");
        let j2 = get(e, j.id);
        assert_eq!(j2.state, JobState::Active);
        assert_eq!(j2.progress.note.as_deref(), Some("reading"));
        // Cancel and pause requests reach the runner through its heartbeat.
        e.cancel(j.id, t0() + secs(46)).expect("cancel");
        let seen = e
            .heartbeat(&c.lease, t0() + secs(47), &mut |_| {})
            .expect("heartbeat");
        assert_eq!(seen.control, Some(loops_core::jobs::job::Control::Cancel));
        let swept = e.sweep(t0() + secs(78)).expect("sweep");
        assert_eq!(swept.requeued.len(), 1, "lapsed at +77 s");
    }

    pub fn past_max_stalled_a_stalled_job_is_dead<S: JobEngine>(e: &S) {
        let j = submit(
            e,
            &JobSpec {
                max_stalled: Some(1),
                ..agent("cursed")
            },
        );
        let mut now = t0();
        for _ in 0..2 {
            e.claim(j.id, now, &ttl(5), &none)
                .expect("claim")
                .expect("ready");
            now += secs(6);
            e.sweep(now).expect("sweep");
        }
        let after = get(e, j.id);
        assert_eq!(after.state, JobState::Dead);
        assert_eq!(after.stalls, 2);
        assert_eq!(after.attempts, 0);
        assert!(
            after
                .error
                .as_deref()
                .is_some_and(|e| e.contains("stalled 2 times")),
            "{:?}",
            after.error
        );
    }

    pub fn release_and_abort_give_the_job_back_without_an_attempt<S: JobEngine>(e: &S) {
        let j = submit(e, &agent("work"));
        let c = claim(e, j.id, t0());
        e.release(&c.lease, "the worker is stopping", t0())
            .expect("release");
        let back = get(e, j.id);
        assert_eq!(back.state, JobState::Waiting);
        assert_eq!(back.attempts, 0);
        assert!(back.lease.is_none());
        let c = claim(e, j.id, t0() + secs(1));
        let aborted = end(e, &c, RunEnd::Aborted("shutting down".into()), t0());
        assert_eq!(aborted.state, JobState::Waiting);
        assert_eq!(aborted.attempts, 0);
        claim(e, j.id, t0() + secs(2));
    }

    pub fn cancel_ends_a_waiting_job_and_asks_a_running_one<S: JobEngine>(e: &S) {
        let w = submit(e, &agent("waiting"));
        assert_eq!(
            e.cancel(w.id, t0()).expect("cancel").state,
            JobState::Cancelled
        );
        assert!(e
            .claim(w.id, t0(), &ClaimOptions::default(), &none)
            .expect("claim")
            .is_none());
        invalid_state(e.cancel(w.id, t0()));
        assert!(matches!(
            e.cancel(9_999, t0()),
            Err(QueueError::NotFound(9_999))
        ));

        let r = submit(e, &agent("running"));
        let c = claim(e, r.id, t0());
        let asked = e.cancel(r.id, t0()).expect("cancel");
        assert_eq!(asked.state, JobState::Active, "its runner ends it");
        assert_eq!(asked.control, Some(loops_core::jobs::job::Control::Cancel));
        let ended = end(e, &c, RunEnd::Cancelled(JobResult::default()), t0());
        assert_eq!(ended.state, JobState::Cancelled);
    }

    pub fn cancel_cascades_to_every_descendant<S: JobEngine>(e: &S) {
        let (agg, kids) = fanout(e, "continue", 3);
        let grandchild = submit(
            e,
            &JobSpec {
                parent: Some(kids[0].id),
                ..agent("grandchild")
            },
        );
        e.cancel(agg.id, t0()).expect("cancel");
        assert_eq!(state(e, agg.id), JobState::Cancelled);
        for k in &kids {
            assert_eq!(state(e, k.id), JobState::Cancelled, "child #{}", k.id);
        }
        assert_eq!(state(e, grandchild.id), JobState::Cancelled);
    }

    pub fn pause_and_resume_waiting_and_running_jobs<S: JobEngine>(e: &S) {
        let j = submit(e, &agent("work"));
        assert_eq!(e.pause(j.id, t0()).expect("pause").state, JobState::Paused);
        assert!(e
            .claim(j.id, t0(), &ClaimOptions::default(), &none)
            .expect("claim")
            .is_none());
        invalid_state(e.pause(j.id, t0()));
        assert_eq!(
            e.resume(j.id, t0()).expect("resume").state,
            JobState::Waiting
        );
        invalid_state(e.resume(j.id, t0()));

        let c = claim(e, j.id, t0());
        let asked = e.pause(j.id, t0()).expect("pause");
        assert_eq!(asked.state, JobState::Active);
        assert_eq!(asked.control, Some(loops_core::jobs::job::Control::Pause));
        let paused = end(e, &c, RunEnd::Paused, t0());
        assert_eq!(paused.state, JobState::Paused);
        assert!(paused.lease.is_none());
        assert_eq!(
            e.resume(j.id, t0()).expect("resume").state,
            JobState::Waiting
        );
        run(e, j.id, completed("done"), t0());
        invalid_state(e.pause(j.id, t0()));
    }

    pub fn hold_stops_and_continues_a_running_job_in_place<S: JobEngine>(e: &S) {
        let j = submit(e, &shell("sleep 100"));
        let c = claim(e, j.id, t0());
        // A group no process can have (beyond the largest pid Linux gives out).
        e.note_process_group(&c.lease, 4_194_400)
            .expect("note the process group");
        let held = e.hold(&c.lease, true, t0() + secs(1)).expect("hold");
        assert_eq!(held.state, JobState::Paused);
        assert!(held.leased_by(&c.lease), "the runner keeps its lease");
        let resumed = e.resume(j.id, t0() + secs(2)).expect("resume");
        assert_eq!(
            resumed.control,
            Some(loops_core::jobs::job::Control::Resume)
        );
        let going = e.hold(&c.lease, false, t0() + secs(3)).expect("continue");
        assert_eq!(going.state, JobState::Active);
        assert_eq!(going.control, None);
        let done = end(e, &c, completed("slept"), t0() + secs(4));
        assert_eq!(done.state, JobState::Completed);
    }

    pub fn messages_steer_from_an_operator_or_the_parent_only<S: JobEngine>(e: &S) {
        let j = submit(e, &agent("write"));
        let m = e
            .message(j.id, json!("shorter, please"), Sender::Operator, t0())
            .expect("message");
        assert_eq!(m.seq, 1);
        assert_eq!(m.from, "operator");
        let m2 = e
            .message(j.id, json!({"tone": "dry"}), Sender::Operator, t0())
            .expect("message");
        assert_eq!(m2.seq, 2);
        assert_eq!(get(e, j.id).unread_steering().count(), 2);
        let taken = e.take_steering(j.id, 4, t0() + secs(1)).expect("take");
        assert_eq!(taken.len(), 2);
        assert!(taken
            .iter()
            .all(|m| m.read.as_ref().is_some_and(|r| r.turn == 4)));
        assert!(e.take_steering(j.id, 5, t0()).expect("take").is_empty());
        assert_eq!(get(e, j.id).unread_steering().count(), 0);

        assert!(matches!(
            e.message(j.id, json!("hi"), Sender::Job(777), t0()),
            Err(QueueError::Permission(_))
        ));
        let (agg, kids) = fanout(e, "continue", 1);
        e.message(
            kids[0].id,
            json!("from the parent"),
            Sender::Job(agg.id),
            t0(),
        )
        .expect("a parent may steer its child");
        let sh = submit(e, &shell("true"));
        assert!(matches!(
            e.message(sh.id, json!("hi"), Sender::Operator, t0()),
            Err(QueueError::NotSteerable(_, _))
        ));
        run(e, j.id, completed("done"), t0());
        invalid_state(e.message(j.id, json!("late"), Sender::Operator, t0()));
    }

    pub fn fanout_continue_runs_the_aggregator_after_every_child<S: JobEngine>(e: &S) {
        let (agg, kids) = fanout(e, "continue", 3);
        assert_eq!(agg.state, JobState::WaitingChildren);
        assert_eq!(agg.children, kids.iter().map(|k| k.id).collect::<Vec<_>>());
        assert!(kids.iter().all(|k| k.parent == Some(agg.id)));
        assert!(e
            .claim(agg.id, t0(), &ClaimOptions::default(), &none)
            .expect("claim")
            .is_none());
        run(e, kids[0].id, completed("one"), t0());
        run(e, kids[1].id, failed("two broke", true), t0());
        assert_eq!(state(e, agg.id), JobState::WaitingChildren);
        run(e, kids[2].id, completed("three"), t0());
        let released = get(e, agg.id);
        assert_eq!(released.state, JobState::Waiting, "all three ended");
        let one = child_done_of(&released, kids[0].id).expect("child 1 reported");
        assert_eq!(one["state"], "completed");
        assert_eq!(one["summary"], "one");
        let two = child_done_of(&released, kids[1].id).expect("child 2 reported");
        assert_eq!(two["state"], "failed");
        assert_eq!(two["ignored"], false);
        let c = claim(e, agg.id, t0());
        e.mark_child_results_read(agg.id, 1, t0()).expect("read");
        assert!(get(e, agg.id)
            .messages
            .iter()
            .all(|m| m.kind != MessageKind::ChildDone || m.read.is_some()));
        assert_eq!(
            end(e, &c, completed("combined"), t0()).state,
            JobState::Completed
        );
    }

    pub fn fanout_ignore_marks_the_failure_ignored<S: JobEngine>(e: &S) {
        let (agg, kids) = fanout(e, "ignore", 2);
        run(e, kids[0].id, failed("broke", true), t0());
        run(e, kids[1].id, completed("fine"), t0());
        let released = get(e, agg.id);
        assert_eq!(released.state, JobState::Waiting);
        let failed_one = child_done_of(&released, kids[0].id).expect("reported");
        assert_eq!(failed_one["ignored"], true);
    }

    pub fn fanout_remove_dep_stops_waiting_for_the_failed_child<S: JobEngine>(e: &S) {
        let (agg, kids) = fanout(e, "remove_dep", 3);
        run(e, kids[0].id, failed("broke", true), t0());
        let after = get(e, agg.id);
        assert_eq!(after.removed_children, [kids[0].id]);
        assert_eq!(after.state, JobState::WaitingChildren);
        run(e, kids[1].id, completed("two"), t0());
        assert_eq!(state(e, agg.id), JobState::WaitingChildren);
        run(e, kids[2].id, completed("three"), t0());
        assert_eq!(state(e, agg.id), JobState::Waiting);
    }

    pub fn fanout_fail_parent_fails_at_once_and_cancels_the_rest<S: JobEngine>(e: &S) {
        let (agg, kids) = fanout(e, "fail_parent", 3);
        let running = claim(e, kids[1].id, t0());
        run(e, kids[0].id, failed("broke", true), t0());
        let parent = get(e, agg.id);
        assert_eq!(parent.state, JobState::Failed);
        assert!(
            parent
                .error
                .as_deref()
                .is_some_and(|m| m.contains(&format!("child #{}", kids[0].id))),
            "{:?}",
            parent.error
        );
        assert_eq!(state(e, kids[2].id), JobState::Cancelled);
        let asked = get(e, kids[1].id);
        assert_eq!(asked.state, JobState::Active, "a running child is asked");
        assert_eq!(asked.control, Some(loops_core::jobs::job::Control::Cancel));
        let ended = end(e, &running, RunEnd::Cancelled(JobResult::default()), t0());
        assert_eq!(ended.state, JobState::Cancelled);
        assert_eq!(state(e, agg.id), JobState::Failed);
    }

    pub fn a_fanout_with_a_key_is_submitted_once<S: JobEngine>(e: &S) {
        let agg = keyed("fan@09:00", agent("combine"));
        let kids = [agent("a"), agent("b")];
        let (a1, k1) = e.submit_fanout(&kids, &agg, t0(), &none).expect("1");
        let (a2, k2) = e.submit_fanout(&kids, &agg, t0(), &none).expect("2");
        assert_eq!(a1.id, a2.id);
        assert_eq!(
            k1.iter().map(|k| k.id).collect::<Vec<_>>(),
            k2.iter().map(|k| k.id).collect::<Vec<_>>()
        );
        assert_eq!(e.list().0.len(), 3);
        let keyed_child = [keyed("no", agent("a"))];
        assert!(matches!(
            e.submit_fanout(&keyed_child, &agent("agg"), t0(), &none),
            Err(QueueError::InvalidSpec(_))
        ));
        assert!(matches!(
            e.submit_fanout(&[], &agent("agg"), t0(), &none),
            Err(QueueError::InvalidSpec(_))
        ));
    }

    pub fn a_parent_with_a_child_completes_after_both<S: JobEngine>(e: &S) {
        let parent = submit(e, &agent("plan"));
        let pc = claim(e, parent.id, t0());
        let child = submit(
            e,
            &JobSpec {
                parent: Some(parent.id),
                ..agent("part")
            },
        );
        assert_eq!(get(e, parent.id).children, [child.id]);
        let after_run = end(e, &pc, completed("planned"), t0());
        assert_eq!(after_run.state, JobState::WaitingChildren);
        run(e, child.id, completed("part done"), t0());
        assert_eq!(state(e, parent.id), JobState::Completed);
        // A job that ended takes no more children.
        let late = e.submit(
            &JobSpec {
                parent: Some(parent.id),
                ..agent("too late")
            },
            t0(),
            None,
        );
        invalid_state(late);
        assert!(matches!(
            e.submit(
                &JobSpec {
                    parent: Some(9_999),
                    ..agent("orphan")
                },
                t0(),
                None
            ),
            Err(QueueError::NotFound(9_999))
        ));
    }

    pub fn replay_makes_a_new_job_with_overrides<S: JobEngine>(e: &S) {
        let orig = submit(
            e,
            &JobSpec {
                queue: Some("slow".into()),
                max_attempts: Some(7),
                ..agent("first try")
            },
        );
        run(e, orig.id, failed("nope", true), t0());
        let again = e
            .replay(
                orig.id,
                &[("prompt".into(), json!("second try"))],
                t0() + secs(60),
                "replay:test",
            )
            .expect("replay");
        assert_ne!(again.id, orig.id);
        assert_eq!(again.replay_of, Some(orig.id));
        assert_eq!(again.state, JobState::Waiting);
        assert_eq!(again.attempts, 0);
        assert_eq!(again.params["prompt"], "second try");
        assert_eq!(again.queue, "slow");
        assert_eq!(again.max_attempts, 7);
        assert_eq!(again.source, "replay:test");
        assert_eq!(get(e, again.id), again);
        assert_eq!(state(e, orig.id), JobState::Failed, "the original stays");
        assert!(matches!(
            e.replay(orig.id, &[("prompt".into(), json!(""))], t0(), "x"),
            Err(QueueError::InvalidSpec(_))
        ));
        assert!(matches!(
            e.replay(9_999, &[], t0(), "x"),
            Err(QueueError::NotFound(9_999))
        ));
    }

    pub fn listing_shows_live_and_finished_jobs<S: JobEngine>(e: &S) {
        let w = submit(e, &agent("waits"));
        let d = submit(e, &agent("done"));
        let c = submit(e, &agent("cancelled"));
        let a = submit(e, &agent("active"));
        run(e, d.id, completed("ok"), t0());
        e.cancel(c.id, t0()).expect("cancel");
        claim(e, a.id, t0());
        let (list, problems) = e.list();
        assert!(problems.is_empty(), "{problems:?}");
        let got: Vec<(JobId, JobState)> = list.iter().map(|s| (s.id, s.state)).collect();
        assert_eq!(
            got,
            [
                (w.id, JobState::Waiting),
                (d.id, JobState::Completed),
                (c.id, JobState::Cancelled),
                (a.id, JobState::Active)
            ]
        );
        let (live, problems) = e.live_jobs();
        assert!(problems.is_empty(), "{problems:?}");
        let mut live: Vec<JobId> = live.iter().map(|j| j.id).collect();
        live.sort_unstable();
        assert_eq!(live, [w.id, a.id]);
        assert_eq!(
            state(e, d.id),
            JobState::Completed,
            "finished jobs are kept"
        );
        assert!(e.get(9_999).expect("get").is_none());
    }

    pub fn a_watermark_changes_only_from_the_value_expected<S: JobEngine>(e: &S) {
        let k = "morning-briefing";
        let t1 = t0() + CDuration::nanoseconds(123_456_789);
        let t2 = t0() + secs(60);
        let t3 = t0() + secs(120);
        assert_eq!(e.watermark(k).expect("read"), None);
        assert_eq!(
            e.compare_and_set_watermark(k, None, t1).expect("cas"),
            CasOutcome::Swapped
        );
        assert_eq!(e.watermark(k).expect("read"), Some(t1), "to the nanosecond");
        assert_eq!(
            e.compare_and_set_watermark(k, None, t2).expect("cas"),
            CasOutcome::Conflict { current: Some(t1) }
        );
        assert_eq!(
            e.compare_and_set_watermark(k, Some(t2), t3).expect("cas"),
            CasOutcome::Conflict { current: Some(t1) }
        );
        assert_eq!(
            e.watermark(k).expect("read"),
            Some(t1),
            "a conflict changes nothing"
        );
        assert_eq!(
            e.compare_and_set_watermark(k, Some(t1), t2).expect("cas"),
            CasOutcome::Swapped
        );
        // Backwards is allowed too: the caller decides what a slot is.
        assert_eq!(
            e.compare_and_set_watermark(k, Some(t2), t1).expect("cas"),
            CasOutcome::Swapped
        );
        assert_eq!(e.watermark(k).expect("read"), Some(t1));
        assert!(e.watermark("").is_err(), "an empty key names nothing");
        assert!(e.compare_and_set_watermark("", None, t1).is_err());
    }

    pub fn watermarks_of_different_keys_are_independent<S: JobEngine>(e: &S) {
        let keys = [
            "a",
            "b",
            "a-b",
            "a_b",
            "a/b",
            "../a",
            ".a",
            "a%2Fb",
            "loop with spaces",
            "ünïcödé",
        ];
        for (i, k) in keys.iter().enumerate() {
            let t = t0() + secs(i as i64);
            assert_eq!(
                e.compare_and_set_watermark(k, None, t).expect(k),
                CasOutcome::Swapped,
                "{k}: a key of its own"
            );
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(e.watermark(k).expect(k), Some(t0() + secs(i as i64)), "{k}");
        }
        assert_eq!(e.watermark("c").expect("c"), None);
    }

    pub fn racing_compare_and_sets_lose_no_update<S: JobEngine>(e: &S) {
        let k = "racy";
        let wins: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(move || {
                        let mut wins = 0;
                        for _ in 0..10 {
                            let cur = e.watermark(k).expect("read");
                            let next = cur.unwrap_or(t0()) + secs(1);
                            if e.compare_and_set_watermark(k, cur, next).expect("cas")
                                == CasOutcome::Swapped
                            {
                                wins += 1;
                            }
                        }
                        wins
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().expect("join")).sum()
        });
        assert!(wins >= 1);
        assert_eq!(
            e.watermark(k).expect("read"),
            Some(t0() + secs(wins as i64)),
            "each of the {wins} swaps moved it on by one second, none lost"
        );
    }
}
