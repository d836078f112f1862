//! The job queue: its operations as a table over real job files (the library, with the
//! clock passed in), and end to end through the real binary: the daemon, SIGKILL and
//! restart, shell gates, concurrent submitters, agent jobs on the fake model (pause and
//! resume, steering, fan-out under each `on_child_fail` policy).

use crate::common::{git_commit_all, loops_std_cmd, wait_until, TempWorkspace};
use chrono::{DateTime, Duration as CDuration, TimeZone, Utc};
use loops_core::jobs::job::{Job, JobState, Lease};
use loops_core::jobs::queue::{self, JobSpec, QueueError, RunEnd, Sender};
use loops_core::jobs::store::JobStore;
use loops_testutil::fake_model::{anthropic, FakeModel, Reply};
use loops_testutil::process::{group_alive, pid_alive, signal_child};
use loops_testutil::Signal;
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0)
        .single()
        .expect("time")
}

fn store() -> (tempfile::TempDir, JobStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = JobStore::at(dir.path().join("jobs"));
    (dir, s)
}

fn agent_spec(prompt: &str) -> JobSpec {
    JobSpec {
        kind: Some("agent".into()),
        params: json!({ "prompt": prompt }),
        ..Default::default()
    }
}

fn shell_spec(cmd: &str) -> JobSpec {
    JobSpec {
        kind: Some("shell".into()),
        params: json!({ "cmd": cmd }),
        ..Default::default()
    }
}

fn submit(s: &JobStore, spec: &JobSpec) -> Job {
    queue::submit(s, spec, t0(), None).expect("submit").job
}

fn get(s: &JobStore, id: u64) -> Job {
    s.get(id).expect("read").expect("job exists")
}

/// A pid that is certainly not running: a child we started and reaped.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = c.id();
    c.wait().expect("wait");
    pid
}

/// Puts a job in `state` the way the queue would, so each operation can be tried on it.
fn job_in(s: &JobStore, state: JobState) -> Job {
    let j = submit(s, &agent_spec("work"));
    let id = j.id;
    let now = t0();
    match state {
        JobState::Waiting => {}
        JobState::Delayed => {
            let spec = JobSpec {
                delay: Some(Duration::from_secs(3600)),
                ..agent_spec("later")
            };
            return submit(s, &spec);
        }
        JobState::Active => {
            queue::claim(s, id, now, &|_| None)
                .expect("claim")
                .expect("claimed");
        }
        JobState::Paused => {
            queue::pause(s, id, now).expect("pause");
        }
        JobState::WaitingChildren => {
            let (agg, _) =
                queue::submit_fanout(s, &[agent_spec("child")], &agent_spec("agg"), now, &|_| {
                    None
                })
                .expect("fanout");
            return agg;
        }
        JobState::Completed => {
            queue::claim(s, id, now, &|_| None).expect("claim");
            queue::finish(
                s,
                id,
                RunEnd::Completed(Default::default()),
                Default::default(),
                5,
                now,
            )
            .expect("finish");
        }
        JobState::Failed => {
            queue::claim(s, id, now, &|_| None).expect("claim");
            queue::finish(
                s,
                id,
                RunEnd::Failed {
                    error: "boom".into(),
                    result: Default::default(),
                    permanent: true,
                },
                Default::default(),
                5,
                now,
            )
            .expect("finish");
        }
        JobState::Dead => {
            return queue::submit(s, &agent_spec("refused"), now, Some("refused here".into()))
                .expect("submit")
                .job;
        }
        JobState::Cancelled => {
            queue::cancel(s, id, now).expect("cancel");
        }
    }
    get(s, id)
}

#[test]
fn every_operation_from_every_state() {
    use JobState::*;
    // (from, operation, Some(resulting state) | None for a refusal).
    // An active job is leased by this (live) process: cancel and pause become requests
    // to its runner, so its state stays active with `control` set.
    let table: &[(JobState, &str, Option<JobState>)] = &[
        (Waiting, "cancel", Some(Cancelled)),
        (Waiting, "pause", Some(Paused)),
        (Waiting, "resume", None),
        (Waiting, "retry", None),
        (Waiting, "message", Some(Waiting)),
        (Delayed, "cancel", Some(Cancelled)),
        (Delayed, "pause", Some(Paused)),
        (Delayed, "resume", None),
        (Delayed, "retry", None),
        (Active, "cancel", Some(Active)),
        (Active, "pause", Some(Active)),
        (Active, "resume", None),
        (Active, "retry", None),
        (Active, "message", Some(Active)),
        (Paused, "cancel", Some(Cancelled)),
        (Paused, "pause", None),
        (Paused, "resume", Some(Waiting)),
        (Paused, "retry", None),
        (WaitingChildren, "cancel", Some(Cancelled)),
        (WaitingChildren, "pause", None),
        (WaitingChildren, "resume", None),
        (Completed, "cancel", None),
        (Completed, "pause", None),
        (Completed, "resume", None),
        (Completed, "retry", None),
        (Completed, "message", None),
        (Failed, "cancel", None),
        (Failed, "retry", Some(Waiting)),
        (Dead, "cancel", None),
        (Dead, "resume", None),
        (Dead, "retry", Some(Waiting)),
        (Cancelled, "cancel", None),
        (Cancelled, "retry", None),
        (Cancelled, "message", None),
    ];
    for (from, op, want) in table {
        let (_d, s) = store();
        let j = job_in(&s, *from);
        assert_eq!(j.state, *from, "setup of {from}");
        let now = t0() + CDuration::seconds(1);
        let r: Result<Job, QueueError> = match *op {
            "cancel" => queue::cancel(&s, j.id, now),
            "pause" => queue::pause(&s, j.id, now),
            "resume" => queue::resume(&s, j.id, now),
            "retry" => queue::retry(&s, j.id, now),
            "message" => queue::message(&s, j.id, json!({"directive": "x"}), Sender::Operator, now)
                .map(|_| get(&s, j.id)),
            _ => unreachable!(),
        };
        match (want, r) {
            (Some(w), Ok(after)) => {
                assert_eq!(after.state, *w, "{op} from {from}");
                let on_disk = get(&s, j.id);
                assert_eq!(on_disk.state, *w, "{op} from {from}: the file says so too");
                if on_disk.state != *from {
                    let last = on_disk.history.last().expect("history");
                    assert_eq!(
                        (last.from, last.to),
                        (Some(*from), *w),
                        "{op} from {from}: transition recorded"
                    );
                    assert_eq!(last.at, now, "{op} from {from}: with its time");
                }
            }
            (None, Err(e)) => {
                assert!(
                    matches!(e, QueueError::InvalidState { .. }),
                    "{op} from {from}: {e}"
                );
                assert_eq!(
                    get(&s, j.id).state,
                    *from,
                    "{op} from {from}: a refusal changes nothing"
                );
            }
            (w, r) => panic!("{op} from {from}: wanted {w:?}, got {r:?}"),
        }
    }
}

#[test]
fn idempotency_key_returns_the_holder_and_is_freed_by_dead_or_cancelled() {
    let (_d, s) = store();
    let spec = JobSpec {
        idempotency_key: Some("nightly-2026-11-20".into()),
        ..agent_spec("report")
    };
    let a = queue::submit(&s, &spec, t0(), None).expect("submit");
    let b = queue::submit(&s, &spec, t0(), None).expect("submit again");
    assert!(!a.existing && b.existing);
    assert_eq!(a.job.id, b.job.id);
    // A completed holder keeps the key.
    queue::claim(&s, a.job.id, t0(), &|_| None).expect("claim");
    queue::finish(
        &s,
        a.job.id,
        RunEnd::Completed(Default::default()),
        Default::default(),
        1,
        t0(),
    )
    .expect("finish");
    let c = queue::submit(&s, &spec, t0(), None).expect("after completion");
    assert!(c.existing && c.job.id == a.job.id && c.job.state == JobState::Completed);
    // A cancelled or dead holder frees it.
    let spec2 = JobSpec {
        idempotency_key: Some("k2".into()),
        ..agent_spec("x")
    };
    let first = submit(&s, &spec2);
    queue::cancel(&s, first.id, t0()).expect("cancel");
    let second = queue::submit(&s, &spec2, t0(), None).expect("resubmit");
    assert!(!second.existing && second.job.id != first.id);
    let spec3 = JobSpec {
        idempotency_key: Some("k3".into()),
        ..agent_spec("y")
    };
    let dead = queue::submit(&s, &spec3, t0(), Some("refused".into()))
        .expect("refused")
        .job;
    assert_eq!(dead.state, JobState::Dead);
    let again = queue::submit(&s, &spec3, t0(), None).expect("after dead");
    assert!(!again.existing && again.job.id != dead.id);
}

#[test]
fn retries_back_off_on_the_clock_passed_in_then_fail() {
    let (_d, s) = store();
    let spec = JobSpec {
        max_attempts: Some(3),
        backoff_type: Some("exponential".into()),
        backoff_delay: Some(Duration::from_secs(10)),
        backoff_jitter: Some(0.0),
        ..shell_spec("false")
    };
    let j = submit(&s, &spec);
    let mut now = t0();
    let fail = |now| {
        queue::finish(
            &s,
            j.id,
            RunEnd::Failed {
                error: "exited with status 1".into(),
                result: Default::default(),
                permanent: false,
            },
            Default::default(),
            3,
            now,
        )
        .expect("finish")
    };
    for (attempt, wait) in [(1u32, 10i64), (2, 20)] {
        queue::claim(&s, j.id, now, &|_| None)
            .expect("claim")
            .expect("ready");
        let after = fail(now);
        assert_eq!(after.state, JobState::Delayed);
        assert_eq!(after.attempts, attempt);
        assert_eq!(
            after.run_at,
            Some(now + CDuration::seconds(wait)),
            "attempt {attempt}"
        );
        // Not a moment early.
        let early = now + CDuration::seconds(wait) - CDuration::milliseconds(1);
        assert!(queue::claim(&s, j.id, early, &|_| None)
            .expect("claim")
            .is_none());
        now += CDuration::seconds(wait);
    }
    queue::claim(&s, j.id, now, &|_| None)
        .expect("claim")
        .expect("ready");
    let last = fail(now);
    assert_eq!(last.state, JobState::Failed);
    assert_eq!(last.attempts, 3);
    assert!(last
        .history
        .last()
        .and_then(|t| t.reason.clone())
        .unwrap_or_default()
        .contains("3 of 3"));
    // A permanent error is not retried.
    let p = submit(&s, &shell_spec("x"));
    queue::claim(&s, p.id, now, &|_| None).expect("claim");
    let r = queue::finish(
        &s,
        p.id,
        RunEnd::Failed {
            error: "bad".into(),
            result: Default::default(),
            permanent: true,
        },
        Default::default(),
        1,
        now,
    )
    .expect("finish");
    assert_eq!((r.state, r.attempts), (JobState::Failed, 1));
}

#[test]
fn a_runner_that_died_counts_a_stall_not_an_attempt_until_max_stalled_makes_it_dead() {
    let (_d, s) = store();
    let j = submit(
        &s,
        &JobSpec {
            max_stalled: Some(2),
            ..shell_spec("sleep 1")
        },
    );
    let mut now = t0();
    for stall in 1..=3u32 {
        // Leased by a process that is gone.
        queue::claim(&s, j.id, now, &|_| None)
            .expect("claim")
            .expect("ready");
        let mut on_disk = get(&s, j.id);
        on_disk.lease = Some(Lease {
            pid: dead_pid(),
            pid_start: Some(1),
            since: now,
            pgid: None,
            pgid_start: None,
        });
        std::fs::write(
            s.live_path(j.id),
            serde_json::to_vec(&on_disk).expect("json"),
        )
        .expect("write");
        now += CDuration::seconds(5);
        // What the sweep will do is said while the job is still as the dead runner left
        // it: a daemon journals it there, so a kill right after the write loses nothing.
        let mut told = None;
        let swept = queue::sweep_reporting(&s, now, |r| {
            let still = get(&s, j.id);
            assert!(
                still.lease.is_some(),
                "reported after the requeue was written"
            );
            told = Some(r.clone());
        })
        .expect("sweep");
        let told = told.expect("the sweep reported");
        assert_eq!(told.requeued, swept.requeued, "stall {stall}");
        assert_eq!(told.dead, swept.dead, "stall {stall}");
        let after = get(&s, j.id);
        assert_eq!(after.stalls, stall);
        assert_eq!(after.attempts, 0, "a stall never uses an attempt");
        if stall <= 2 {
            assert_eq!(after.state, JobState::Waiting, "stall {stall}");
            assert_eq!(swept.requeued.len(), 1);
        } else {
            assert_eq!(after.state, JobState::Dead, "past max_stalled");
            assert!(
                after
                    .error
                    .as_deref()
                    .unwrap_or("")
                    .contains("stalled 3 times"),
                "{:?}",
                after.error
            );
        }
    }
}

#[test]
fn cancel_cascades_to_every_descendant() {
    let (_d, s) = store();
    let kids: Vec<JobSpec> = (0..3).map(|i| agent_spec(&format!("child {i}"))).collect();
    let (agg, children) =
        queue::submit_fanout(&s, &kids, &agent_spec("combine"), t0(), &|_| None).expect("fanout");
    assert_eq!(agg.state, JobState::WaitingChildren);
    // A grandchild under the first child.
    let g = submit(
        &s,
        &JobSpec {
            parent: Some(children[0].id),
            ..agent_spec("grandchild")
        },
    );
    assert_eq!(
        get(&s, children[0].id).state,
        JobState::Waiting,
        "a waiting parent that gains a child still runs"
    );
    queue::cancel(&s, agg.id, t0()).expect("cancel");
    for id in children.iter().map(|c| c.id).chain([agg.id, g.id]) {
        assert_eq!(get(&s, id).state, JobState::Cancelled, "job #{id}");
    }
}

#[test]
fn replay_keeps_timeout_queue_retries_and_parent_and_applies_overrides() {
    let (_d, s) = store();
    let parent = submit(&s, &agent_spec("parent"));
    let spec = JobSpec {
        queue: Some("research".into()),
        priority: Some(-5),
        timeout: Some(Duration::from_secs(90)),
        max_attempts: Some(7),
        backoff_type: Some("fixed".into()),
        backoff_delay: Some(Duration::from_secs(4)),
        parent: Some(parent.id),
        ..agent_spec("find the numbers")
    };
    let orig = submit(&s, &spec);
    let r = queue::replay(
        &s,
        orig.id,
        &[("prompt".into(), json!("find the revenue"))],
        t0(),
        "cli",
    )
    .expect("replay");
    assert_ne!(r.id, orig.id);
    assert_eq!(r.state, JobState::Waiting);
    assert_eq!(r.timeout_ms, Some(90_000));
    assert_eq!(
        (r.queue.as_str(), r.priority, r.max_attempts),
        ("research", -5, 7)
    );
    assert_eq!(r.backoff, orig.backoff);
    assert_eq!(r.parent, Some(parent.id));
    assert_eq!(r.replay_of, Some(orig.id));
    assert_eq!(r.params["prompt"], "find the revenue");
    assert!(
        get(&s, parent.id).children.contains(&r.id),
        "the parent waits for the replay too"
    );
    // An override that makes the params invalid is refused.
    let bad = queue::replay(&s, orig.id, &[("max_turns".into(), json!(0))], t0(), "cli");
    assert!(matches!(bad, Err(QueueError::InvalidSpec(_))));
}

#[test]
fn only_an_operator_or_the_parent_may_steer() {
    let (_d, s) = store();
    let parent = submit(&s, &agent_spec("parent"));
    let other = submit(&s, &agent_spec("other"));
    let child = submit(
        &s,
        &JobSpec {
            parent: Some(parent.id),
            ..agent_spec("child")
        },
    );
    let e = queue::message(
        &s,
        child.id,
        json!({"directive": "stop"}),
        Sender::Job(other.id),
        t0(),
    );
    assert!(matches!(e, Err(QueueError::Permission(_))), "{e:?}");
    let m = queue::message(
        &s,
        child.id,
        json!({"directive": "go"}),
        Sender::Job(parent.id),
        t0(),
    )
    .expect("parent");
    assert_eq!(m.from, format!("job:{}", parent.id));
    queue::message(
        &s,
        child.id,
        json!({"directive": "me"}),
        Sender::Operator,
        t0(),
    )
    .expect("operator");
    assert_eq!(get(&s, child.id).messages.len(), 2);
}

#[test]
fn a_damaged_job_file_is_reported_and_left_alone() {
    let (_d, s) = store();
    let j = submit(&s, &agent_spec("fine"));
    std::fs::write(s.live_path(99), "{ not json").expect("write");
    let (jobs, errors) = s.live_jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].id, j.id);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("99.json"), "{}", errors[0]);
    queue::sweep(&s, t0()).expect("sweep goes on");
    assert_eq!(
        std::fs::read_to_string(s.live_path(99)).expect("kept"),
        "{ not json"
    );
    // The next id never collides with it.
    let k = submit(&s, &agent_spec("next"));
    assert!(k.id > j.id);
}

// ---------------------------------------------------------------------------------------
// Through the binary

fn ws_with(yaml: &str) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write("loops.yaml", yaml);
    git_commit_all(ws.path(), "setup");
    ws
}

fn loops_json(ws: &TempWorkspace, args: &[&str]) -> Value {
    let out = ok(ws, args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "loops {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs loops and insists it succeeds.
fn ok(ws: &TempWorkspace, args: &[&str]) -> std::process::Output {
    let out = loops_std_cmd(ws.path())
        .args(args)
        .output()
        .expect("run loops");
    assert!(
        out.status.success(),
        "loops {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn job_json(ws: &TempWorkspace, id: u64) -> Value {
    loops_json(ws, &["jobs", "get", &id.to_string(), "--json"])
}

fn state_of(ws: &TempWorkspace, id: u64) -> String {
    job_json(ws, id)["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn shell_jobs_are_refused_to_dead_at_once_unless_allowed() {
    let ws = ws_with("limits:\n  shutdown_grace: 1s\n");
    let out = loops_std_cmd(ws.path())
        .args([
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "touch ran"}"#,
        ])
        .env_remove("LOOPS_ALLOW_SHELL_JOBS")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LOOPS_ALLOW_SHELL_JOBS=1") && err.contains("dead"),
        "{err}"
    );
    let j = job_json(&ws, 1);
    assert_eq!(j["state"], "dead");
    assert!(j["error"].as_str().unwrap_or("").contains("turned off"));
    // Audited, refused or not.
    let audit =
        std::fs::read_to_string(ws.path().join(".loops/jobs/audit.log")).expect("audit log");
    assert!(
        audit.contains("\"allowed\":false") && audit.contains("touch ran"),
        "{audit}"
    );
    // A daemon without the permission refuses a job that reached the queue another way.
    let d = ws.start_daemon();
    let s = JobStore::at(ws.path().join(".loops/jobs"));
    let sneaked = queue::submit(&s, &shell_spec("touch ran"), Utc::now(), None)
        .expect("submit")
        .job;
    assert!(
        wait_until(LONG, || state_of(&ws, sneaked.id) == "dead"),
        "the daemon never refused it: {}",
        d.log()
    );
    assert!(!ws.path().join("ran").exists());
}

/// `loops jobs submit shell -- PROGRAM ARGS…` is a shell job of that argv: each argument
/// reaches the program as it was typed, with no shell splitting it again.
#[test]
fn a_shell_job_takes_its_command_after_a_double_dash_argument_by_argument() {
    let ws = ws_with("allow_shell_jobs: true\n");
    let script = "printf '%s|' \"$@\" > out.txt";
    let v = loops_json(
        &ws,
        &[
            "jobs", "submit", "shell", "--follow", "--json", "--", "sh", "-c", script, "sh", "a b",
            "$HOME", "*",
        ],
    );
    let id = v["id"].as_u64().unwrap_or_else(|| panic!("{v:#}"));
    let job = job_json(&ws, id);
    assert_eq!(job["state"], "completed", "{job:#}");
    assert_eq!(
        job["params"]["argv"],
        serde_json::json!(["sh", "-c", script, "sh", "a b", "$HOME", "*"]),
        "{job:#}"
    );
    let out = std::fs::read_to_string(ws.path().join("out.txt")).expect("the job wrote out.txt");
    assert_eq!(out, "a b|$HOME|*|");

    // An agent job is a prompt, and --params and a command are one or the other.
    for args in [
        &["jobs", "submit", "agent", "--", "echo", "hi"][..],
        &[
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "true"}"#,
            "--",
            "true",
        ][..],
    ] {
        let out = loops_std_cmd(ws.path())
            .args(args)
            .output()
            .expect("run loops");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("takes no command after `--`") || err.contains("cannot be used with"),
            "{args:?}: {err}"
        );
    }
    let out = loops_std_cmd(ws.path())
        .args(["jobs", "submit", "shell"])
        .output()
        .expect("run loops");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loops jobs submit shell -- echo hello"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn concurrent_submits_with_one_idempotency_key_make_one_job() {
    let ws = ws_with("allow_shell_jobs: true\n");
    let kids: Vec<std::process::Child> = (0..8)
        .map(|_| {
            loops_std_cmd(ws.path())
                .args([
                    "jobs",
                    "submit",
                    "agent",
                    "--params",
                    r#"{"prompt": "once"}"#,
                    "--idempotency-key",
                    "same-key",
                    "--json",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut ids = Vec::new();
    for k in kids {
        let out = k.wait_with_output().expect("wait");
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        ids.push(v["id"].as_u64().expect("id"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every submitter got the same job");
    let list = loops_json(&ws, &["jobs", "list", "--json"]);
    assert_eq!(list.as_array().map(|a| a.len()), Some(1));
}

#[test]
fn priority_decides_the_order_and_delayed_jobs_wait() {
    let ws = ws_with("allow_shell_jobs: true\nlimits:\n  max_concurrent_jobs: 1\n");
    let log = ws.path().join("order.log");
    let sub = |name: &str, prio: &str, extra: &[&str]| {
        let params = json!({"cmd": format!("echo {name} >> {}", log.display())}).to_string();
        let mut args = vec![
            "jobs",
            "submit",
            "shell",
            "--params",
            &params,
            "--priority",
            prio,
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        let out = loops_std_cmd(ws.path())
            .args(&args)
            .output()
            .expect("submit");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sub("low", "10", &[]);
    sub("high", "-3", &[]);
    sub("mid", "0", &[]);
    sub("later", "-100", &["--delay", "1h"]);
    ok(&ws, &["run", "--once"]);
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "high\nmid\nlow\n"
    );
    assert_eq!(state_of(&ws, 4), "delayed");
}

#[test]
fn a_daemon_killed_mid_job_has_it_requeued_and_completed_at_the_next_start() {
    let ws = ws_with("allow_shell_jobs: true\nlimits:\n  shutdown_grace: 1s\n");
    // The first run starts a long sleep; the second (after the requeue) finishes.
    let cmd = "if [ -f second ]; then echo finished; exit 0; fi; touch second; sleep 60";
    let out = loops_std_cmd(ws.path())
        .args([
            "jobs",
            "submit",
            "shell",
            "--params",
            &json!({"cmd": cmd}).to_string(),
        ])
        .output()
        .expect("submit");
    assert!(out.status.success());
    let mut d = ws.start_daemon();
    assert!(
        wait_until(LONG, || ws.path().join("second").exists()),
        "never started: {}",
        d.log()
    );
    assert!(wait_until(LONG, || job_json(&ws, 1)["lease"]["pgid"].is_u64()));
    let pgid = job_json(&ws, 1)["lease"]["pgid"].as_u64().expect("pgid") as i32;
    d.signal(Signal::KILL);
    d.wait_exit(LONG);
    assert_eq!(
        state_of(&ws, 1),
        "active",
        "the file still says active: nobody recorded anything"
    );
    let d2 = ws.start_daemon();
    assert!(
        wait_until(LONG, || state_of(&ws, 1) == "completed"),
        "not completed: {}",
        d2.log()
    );
    let j = job_json(&ws, 1);
    assert_eq!(j["stalls"], 1);
    assert_eq!(j["attempts"], 1, "the killed run did not use an attempt");
    assert!(j["result"]["stdout_tail"]
        .as_str()
        .unwrap_or("")
        .contains("finished"));
    let reasons: Vec<String> = j["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|t| t["reason"].as_str().map(str::to_string))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("requeued") && r.contains("no attempt used")),
        "{reasons:?}"
    );
    // The orphaned sleep of the first run was stopped.
    assert!(
        wait_until(LONG, || !group_alive(pgid)),
        "the old process group still runs"
    );
}

// ---------------------------------------------------------------------------------------
// Agent jobs on the fake model

const KEY: &str = "sk-test-jobs-KEY-never-written-0042";

fn agent_ws(fake: &FakeModel, extra: &str) -> TempWorkspace {
    ws_with(&format!(
        "limits:\n  shutdown_grace: 2s\n{extra}\nproviders:\n  fake: {{ kind: anthropic, base_url: \"{}\", api_key_env: LOOPS_TEST_KEY, model: test-model }}\n",
        fake.url()
    ))
}

fn start_daemon_with_key(ws: &TempWorkspace) -> std::process::Child {
    let log = std::fs::File::create(ws.path().join(".git/daemon.log")).expect("log");
    loops_std_cmd(ws.path())
        .arg("run")
        .env("LOOPS_TEST_KEY", KEY)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("daemon")
}

fn stop(mut c: std::process::Child) {
    signal_child(&c, Signal::TERM);
    let _ = c.wait();
}

fn body(r: &loops_testutil::fake_model::Recorded) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}

#[test]
fn a_paused_agent_job_resumes_from_its_conversation_without_repeating_tool_calls() {
    let fake = FakeModel::start(vec![
        loops_testutil::fake_model::slow(
            anthropic::tool_use(
                &[(
                    "t1",
                    "append_file",
                    json!({"path": "drafts/job-1/notes.md", "content": "one line\n"}),
                )],
                (100, 10, 0, 0),
            ),
            Duration::from_millis(1500),
        ),
        anthropic::text("All done.", (120, 5, 0, 0)),
    ]);
    let ws = agent_ws(&fake, "");
    let daemon = start_daemon_with_key(&ws);
    ok(
        &ws,
        &[
            "agent",
            "run",
            "Write one line to your notes",
            "--detach",
            "--tools",
            "append_file,finish",
        ],
    );
    fake.wait_for_requests(1, LONG);
    ok(&ws, &["jobs", "pause", "1"]);
    assert!(
        wait_until(LONG, || state_of(&ws, 1) == "paused"),
        "never paused"
    );
    assert_eq!(
        fake.request_count(),
        1,
        "it stopped between turns: no second model call"
    );
    assert!(ws.path().join(".loops/jobs/1.conversation.json").exists());
    ok(&ws, &["jobs", "resume", "1"]);
    assert!(
        wait_until(LONG, || state_of(&ws, 1) == "completed"),
        "never completed"
    );
    stop(daemon);
    let reqs = fake.requests();
    assert_eq!(
        reqs.len(),
        2,
        "exactly one more model call after the resume"
    );
    assert!(
        body(&reqs[1]).contains("tool_result"),
        "the resumed call carries the earlier tool result"
    );
    let notes = std::fs::read_to_string(ws.path().join("drafts/job-1/notes.md")).expect("notes");
    assert_eq!(notes, "one line\n", "the tool ran once");
    let j = job_json(&ws, 1);
    assert_eq!(j["tokens"]["input"], 220, "tokens from both sessions");
    assert_eq!(j["result"]["turns"], 2);
}

#[test]
fn steering_messages_reach_the_model_before_the_next_turn_with_a_receipt() {
    let fake = FakeModel::start(vec![
        loops_testutil::fake_model::slow(
            anthropic::tool_use(&[("t1", "list_files", json!({"path": "."}))], (10, 1, 0, 0)),
            Duration::from_millis(1500),
        ),
        anthropic::text("Focused on revenue.", (10, 1, 0, 0)),
    ]);
    let ws = agent_ws(&fake, "");
    let daemon = start_daemon_with_key(&ws);
    let out = loops_std_cmd(ws.path())
        .args(["agent", "run", "Study the numbers", "--detach"])
        .output()
        .expect("submit");
    assert!(out.status.success());
    fake.wait_for_requests(1, LONG);
    ok(
        &ws,
        &[
            "jobs",
            "message",
            "1",
            r#"{"directive": "focus on revenue"}"#,
        ],
    );
    assert!(
        wait_until(LONG, || state_of(&ws, 1) == "completed"),
        "not completed: {}\ndaemon log:\n{}",
        job_json(&ws, 1)["history"],
        std::fs::read_to_string(ws.path().join(".git/daemon.log")).unwrap_or_default()
    );
    stop(daemon);
    let reqs = fake.requests();
    assert!(!body(&reqs[0]).contains("focus on revenue"));
    assert!(
        body(&reqs[1]).contains("focus on revenue"),
        "turn 2 carries the message"
    );
    let j = job_json(&ws, 1);
    let m = &j["messages"][0];
    assert_eq!(m["from"], "operator");
    assert_eq!(m["read"]["turn"], 2, "read before turn 2: {m}");
    assert!(m["read"]["at"].is_string());
}

/// 20 children (#2–#21) under an aggregator (#1), run one at a time so the fake model's
/// script lines up with them; children #4, #10 and #16 fail after a tool turn.
fn fanout(policy: &str) -> (TempWorkspace, FakeModel, Value) {
    let failing = [4u64, 10, 16];
    let mut script: Vec<Reply> = Vec::new();
    for id in 2..=21u64 {
        if failing.contains(&id) {
            script.push(anthropic::tool_use(
                &[("t", "list_files", json!({"path": "."}))],
                (100, 10, 0, 0),
            ));
            script.push(anthropic::error(400, "fake model: refused"));
        } else {
            script.push(anthropic::text(
                &format!("child result {id}"),
                (50, 5, 0, 0),
            ));
        }
    }
    script.push(anthropic::text("aggregate report", (30, 3, 0, 0)));
    let fake = FakeModel::start(script);
    let ws = agent_ws(&fake, "  max_concurrent_jobs: 1");
    let items: Vec<Value> = (0..20).map(|i| json!({"prompt": "Research {company}", "input_vars": {"company": format!("co-{i}")}})).collect();
    ws.write(
        "manifest.json",
        &serde_json::to_string(&items).expect("json"),
    );
    let out = loops_std_cmd(ws.path())
        .args([
            "agent",
            "run",
            "Combine the research",
            "--fanout-manifest",
            "manifest.json",
            "--on-child-fail",
            policy,
            "--max-attempts",
            "1",
            "--json",
        ])
        .env("LOOPS_TEST_KEY", KEY)
        .output()
        .expect("agent run");
    let agg = job_json(&ws, 1);
    let _ = out;
    (ws, fake, agg)
}

fn assert_aggregated(policy: &str) {
    let (ws, fake, agg) = fanout(policy);
    assert_eq!(agg["state"], "completed", "{policy}: {}", agg["error"]);
    assert_eq!(agg["kind"], "aggregator");
    let reqs = fake.requests();
    assert_eq!(
        reqs.len(),
        24,
        "{policy}: 17 + 3×2 child calls and the aggregator's"
    );
    let last = body(reqs.last().expect("request"));
    for id in 2..=21 {
        assert!(
            last.contains(&format!("Child #{id} ")),
            "{policy}: the aggregator sees child {id}"
        );
    }
    assert_eq!(
        last.matches("— failed").count(),
        3,
        "{policy}: and the 3 failures"
    );
    assert!(
        last.contains("co-7"),
        "{policy}: children's prompts had their input_vars filled"
    );
    // 17 × 50 + 3 × 100 + 30 (the aggregator's own).
    assert_eq!(
        agg["total_tokens"]["input"],
        17 * 50 + 3 * 100 + 30,
        "{policy}"
    );
    assert_eq!(agg["child_tokens"]["output"], 17 * 5 + 3 * 10, "{policy}");
    let counts = &agg["children_counts"];
    assert_eq!(
        (counts["completed"].as_u64(), counts["failed"].as_u64()),
        (Some(17), Some(3)),
        "{policy}: {counts}"
    );
    for id in [4, 10, 16] {
        assert_eq!(state_of(&ws, id), "failed");
    }
}

#[test]
fn fanout_with_continue_runs_the_aggregator_on_every_result() {
    assert_aggregated("continue");
}

#[test]
fn fanout_with_ignore_runs_the_aggregator_on_every_result() {
    assert_aggregated("ignore");
}

#[test]
fn fanout_with_remove_dep_runs_the_aggregator_on_every_result() {
    assert_aggregated("remove_dep");
    let (_ws, _f, agg) = fanout("remove_dep");
    let removed: Vec<u64> = agg["removed_children"]
        .as_array()
        .expect("removed")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert_eq!(removed, vec![4, 10, 16]);
}

#[test]
fn fanout_with_fail_parent_fails_at_the_first_failure_and_cancels_the_rest() {
    let (ws, fake, agg) = fanout("fail_parent");
    assert_eq!(agg["state"], "failed", "{}", agg["history"]);
    assert!(
        agg["error"].as_str().unwrap_or("").contains("child #4"),
        "{}",
        agg["error"]
    );
    // #2 and #3 answered, #4 made two calls; no one after it, no aggregator.
    assert_eq!(fake.request_count(), 4);
    for id in 5..=21 {
        assert_eq!(state_of(&ws, id), "cancelled", "child {id}");
    }
    assert_eq!(
        agg["total_tokens"]["input"],
        2 * 50 + 100,
        "the failed child's tokens count too"
    );
}

/// A job file whose params no longer read (edited by hand, or written by a version that
/// took other params) fails that job for good, naming it and the field; its params are
/// kept as they were.
#[test]
fn a_job_whose_params_were_edited_fails_naming_the_field() {
    let ws = ws_with("allow_shell_jobs: true\nlimits:\n  shutdown_grace: 1s\n");
    let s = JobStore::at(ws.path().join(".loops/jobs"));
    let edit = |spec: JobSpec, params: Value| {
        let j = queue::submit(&s, &spec, Utc::now(), None)
            .expect("submit")
            .job;
        let path = s.live_path(j.id);
        let mut on_disk: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("job file")).expect("json");
        on_disk["params"] = params;
        std::fs::write(&path, serde_json::to_vec(&on_disk).expect("json")).expect("write");
        j.id
    };
    let cases = [
        (
            edit(
                shell_spec("touch ran"),
                json!({"cmd": "touch ran", "cwd": 5}),
            ),
            "\"cwd\" must be an absolute path, got 5",
        ),
        (
            edit(agent_spec("hello"), json!({"prompt": 5})),
            "an agent job needs \"prompt\"",
        ),
        (
            edit(
                agent_spec("hello"),
                json!({"prompt": "hello", "max_turn": 3}),
            ),
            "unknown agent job parameter \"max_turn\"",
        ),
    ];
    let d = ws.start_daemon();
    for (id, said) in cases {
        assert!(
            wait_until(LONG, || state_of(&ws, id) == "failed"),
            "job #{id} never failed: {} {}",
            job_json(&ws, id),
            d.log()
        );
        let j = job_json(&ws, id);
        let error = j["error"].as_str().unwrap_or("");
        assert!(
            error.starts_with(&format!("job #{id}'s params cannot be read: {said}"))
                && error.contains(&format!("loops jobs replay {id} --set")),
            "{error}"
        );
        assert_eq!(j["attempts"], 1, "not retried: {j}");
    }
    assert_eq!(
        job_json(&ws, 1)["params"],
        json!({"cmd": "touch ran", "cwd": 5})
    );
    assert!(!ws.path().join("ran").exists());
}

// ---------------------------------------------------------------------------------------
// What a person sees at the command line

fn run_loops(ws: &TempWorkspace, args: &[&str]) -> std::process::Output {
    loops_std_cmd(ws.path())
        .args(args)
        .output()
        .expect("run loops")
}

#[test]
fn without_a_daemon_the_cli_says_nothing_will_run_it_and_stats_warn() {
    let ws = ws_with("limits:\n  shutdown_grace: 1s\n");
    let out = run_loops(
        &ws,
        &[
            "jobs",
            "submit",
            "agent",
            "--params",
            r#"{"prompt": "hello"}"#,
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Job #1 (hello) — waiting"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing will run it until `loops run` starts"),
        "{err}"
    );
    let stats = run_loops(&ws, &["jobs", "stats"]);
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("no daemon is running"), "{text}");
    let v = loops_json(&ws, &["jobs", "stats", "--json"]);
    assert_eq!(v["health"]["waiting"], 1);
    assert_eq!(v["kinds"]["agent"]["total"], 1);
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let ws = ws_with("allow_shell_jobs: true\n");
    let cases: &[(&[&str], &str)] = &[
        (
            &["jobs", "submit", "shell", "--params", "{cmd: ls}"],
            "not valid JSON",
        ),
        (
            &[
                "jobs",
                "submit",
                "shell",
                "--params",
                r#"{"cmd": "ls", "argv": ["ls"]}"#,
            ],
            "not both",
        ),
        (
            &[
                "jobs",
                "submit",
                "shell",
                "--params",
                r#"{"cmd": "ls", "cwd": "relative/dir"}"#,
            ],
            "absolute path",
        ),
        (
            &[
                "jobs",
                "submit",
                "shell",
                "--params",
                r#"{"cmd": "ls", "timeout": 5}"#,
            ],
            "unknown shell job parameter \"timeout\"",
        ),
        (
            &[
                "jobs",
                "submit",
                "agent",
                "--params",
                r#"{"prompt": "x", "tools": ["read_fiel"]}"#,
            ],
            "did you mean `read_file`",
        ),
        (
            &[
                "jobs",
                "submit",
                "agent",
                "--params",
                r#"{"prompt": "x"}"#,
                "--delay",
                "soon",
            ],
            "--delay soon",
        ),
        (
            &[
                "jobs",
                "submit",
                "agent",
                "--params",
                r#"{"prompt": "x"}"#,
                "--backoff-jitter",
                "3",
            ],
            "between 0 and 1",
        ),
        (&["jobs", "get", "999"], "there is no job #999"),
        (
            &["jobs", "list", "--status", "done"],
            "unknown status `done`",
        ),
        (&["jobs", "retry", "999"], "there is no job #999"),
    ];
    for (args, needle) in cases {
        let out = run_loops(&ws, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.contains("help:"), "{args:?} says what to do: {err}");
    }
    assert!(
        !ws.path().join(".loops/jobs/1.json").exists(),
        "nothing was submitted"
    );
    // A dry run checks and shows, and writes nothing either.
    let out = run_loops(
        &ws,
        &[
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "ls"}"#,
            "--dry-run",
            "--json",
        ],
    );
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["params"]["cmd"], "ls");
    assert!(!ws.path().join(".loops/jobs/1.json").exists());
}

#[test]
fn follow_streams_a_daemon_run_and_cancel_stops_a_running_command() {
    let ws = ws_with("allow_shell_jobs: true\nlimits:\n  shutdown_grace: 1s\n");
    let d = ws.start_daemon();
    let out = run_loops(
        &ws,
        &[
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "echo first; sleep 0.3; echo second"}"#,
            "--follow",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("first") && text.contains("second"), "{text}");
    assert!(
        text.contains("Job #1 (echo first; sleep 0.3; echo second) — completed"),
        "{text}"
    );
    let logs = run_loops(&ws, &["jobs", "logs", "1"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("second"));

    let out = run_loops(
        &ws,
        &[
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "echo $$ > pid; exec sleep 60"}"#,
        ],
    );
    assert!(out.status.success());
    assert!(wait_until(LONG, || std::fs::read_to_string(
        ws.path().join("pid")
    )
    .is_ok_and(|p| !p.trim().is_empty())));
    let pid: i32 = std::fs::read_to_string(ws.path().join("pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    let out = run_loops(&ws, &["jobs", "cancel", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("Job #2 (echo $$ > pid; exec sleep 60) — cancelled"));
    assert!(
        wait_until(LONG, || !pid_alive(pid)),
        "the command still runs"
    );
    assert_eq!(
        job_json(&ws, 2)["attempts"],
        0,
        "a cancel is not a failed attempt"
    );
}

/// A shell job has no agent to read a steering message: `loops jobs message` refuses it
/// instead of accepting it "for the agent's next turn". And a cancelled job's progress
/// says it was cancelled, not that it "ran".
#[test]
fn a_shell_job_refuses_messages_and_a_cancelled_one_says_cancelled() {
    let ws = ws_with("allow_shell_jobs: true\nlimits:\n  shutdown_grace: 1s\n");
    ok(
        &ws,
        &[
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "sleep 60"}"#,
        ],
    );
    let out = run_loops(&ws, &["jobs", "message", "1", "stop now"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("job #1 is a shell job: it has no agent to read a message")
            && err.contains("loops jobs cancel 1"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        job_json(&ws, 1)["messages"].as_array().map_or(0, Vec::len),
        0
    );
    // An agent job takes one, as before.
    ok(
        &ws,
        &["jobs", "submit", "agent", "--params", r#"{"prompt": "hi"}"#],
    );
    let out = ok(&ws, &["jobs", "message", "2", "focus"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent to job #2"));

    // Cancelled before any runner took it.
    ok(&ws, &["jobs", "cancel", "2"]);
    let p = ok(&ws, &["jobs", "progress", "2"]);
    assert!(
        String::from_utf8_lossy(&p.stdout).contains("progress: cancelled before it started"),
        "{}",
        String::from_utf8_lossy(&p.stdout)
    );
    // Cancelled while its command ran.
    let d = ws.start_daemon();
    assert!(
        wait_until(LONG, || state_of(&ws, 1) == "active"),
        "never started: {}",
        d.log()
    );
    ok(&ws, &["jobs", "cancel", "1"]);
    let p = ok(&ws, &["jobs", "progress", "1"]);
    let text = String::from_utf8_lossy(&p.stdout);
    assert!(
        text.contains("— cancelled") && text.contains("progress: cancelled\n"),
        "{text}"
    );
    assert!(!text.contains("progress: ran"), "{text}");
    let v = loops_json(&ws, &["jobs", "progress", "1", "--json"]);
    assert!(
        v["report"]
            .as_str()
            .is_some_and(|r| r.contains("progress: cancelled\n")),
        "{v}"
    );
}

/// `--follow` with no daemon runs the job here; a daemon that starts meanwhile may claim
/// it first. The CLI then follows the daemon's run: the job's output is still what it
/// prints, and it says where the job ran. (The CLI is stopped with SIGSTOP until the
/// daemon has run the job, so the daemon is sure to win the claim.)
#[test]
fn follow_shows_the_output_of_a_job_a_daemon_that_started_meanwhile_ran() {
    let ws = ws_with("allow_shell_jobs: true\nlimits:\n  shutdown_grace: 1s\n");
    let err_path = ws.path().join(".git/follow.err");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let cli = loops_std_cmd(ws.path())
        .args([
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "echo printed-by-the-job"}"#,
            "--delay",
            "2s",
            "--follow",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("spawn the follower");
    let said = |s: &str| {
        std::fs::read_to_string(&err_path)
            .unwrap_or_default()
            .contains(s)
    };
    assert!(
        wait_until(LONG, || said("running job #1 here")),
        "the follower never started"
    );
    // Let it settle into waiting for the delay, then freeze it.
    std::thread::sleep(Duration::from_millis(300));
    signal_child(&cli, Signal::STOP);
    let daemon = start_daemon_with_key(&ws);
    let ran = wait_until(LONG, || state_of(&ws, 1) == "completed");
    stop(daemon);
    signal_child(&cli, Signal::CONT);
    let out = cli.wait_with_output().expect("wait for the follower");
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(ran, "the daemon never ran the job");
    assert!(out.status.success(), "the follower failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("printed-by-the-job"),
        "the job's output is missing:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("job #1 ran in another process"),
        "the follower did not say where the job ran:\n{stderr}"
    );
}

/// A job's log is made with its first output: a silent job leaves no file, and `jobs logs`
/// says it ended without printing; a job that prints gets its attempt header and output.
#[test]
fn a_silent_job_leaves_no_log_and_logs_says_so() {
    let ws = ws_with("allow_shell_jobs: true\n");
    ok(
        &ws,
        &["jobs", "submit", "shell", "--params", r#"{"cmd": "true"}"#],
    );
    ok(
        &ws,
        &[
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "echo spoke"}"#,
        ],
    );
    ok(&ws, &["run", "--once"]);
    assert_eq!(state_of(&ws, 1), "completed");
    assert!(!ws.path().join(".loops/jobs/1.log").exists());
    let silent = ok(&ws, &["jobs", "logs", "1"]);
    assert!(silent.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&silent.stderr)
            .contains("job #1 has no output: it ended (completed) without printing anything"),
        "{}",
        String::from_utf8_lossy(&silent.stderr)
    );
    let spoke = String::from_utf8_lossy(&ok(&ws, &["jobs", "logs", "2"]).stdout).to_string();
    assert!(spoke.starts_with("--- job #2 attempt 1 started"), "{spoke}");
    assert!(spoke.contains("spoke"), "{spoke}");
}

#[test]
fn a_job_id_is_taken_as_lists_print_it_and_a_wrong_one_says_what_an_id_is() {
    let ws = ws_with("allow_shell_jobs: true\n");
    let job = loops_json(
        &ws,
        &[
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "true"}"#,
            "--json",
        ],
    );
    let id = job["id"].as_u64().expect("an id");
    // `loops jobs list` and every report say `#N`: that is what a person copies.
    let hashed = format!("#{id}");
    assert_eq!(
        loops_json(&ws, &["jobs", "get", &hashed, "--json"])["id"],
        id
    );
    let cancelled = loops_json(&ws, &["jobs", "cancel", &hashed, "--json"]);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");

    let out = run_loops(&ws, &["jobs", "get", "abc"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "`abc` is not a job id: give its number as `loops jobs list` shows it (42 or #42)"
        ),
        "{err}"
    );
}
