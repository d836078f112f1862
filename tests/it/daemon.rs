//! `loops run` as a real child process on a temporary workspace: the workspace lock, hot
//! reload, overlap policies, shutdown, crash recovery, `--once --all`, and pausing.
//! Waits poll with generous deadlines; nothing assumes the machine is fast.

use crate::common::{git_commit_all, is_zombie, pid_alive, wait_until, TempWorkspace};
use loops_testutil::process::{lock_exclusive, signal, signal_child};
use loops_testutil::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// A command loop on `every: SECS` running `command` (a `sh -c` string).
fn every_loop(ws: &TempWorkspace, name: &str, every: &str, command: &str, extra: &str) {
    ws.add_loop(
        name,
        &format!(
            "schedule: {{ every: {every} }}\npayload:\n  kind: command\n  command: {}\n{extra}",
            serde_json::to_string(command).unwrap()
        ),
    );
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn settings(ws: &TempWorkspace, limits: &str) {
    ws.write("loops.yaml", &format!("limits:\n{limits}"));
}

#[test]
fn daemon_second_run_refuses_and_a_stale_lock_is_taken_over() {
    let ws = TempWorkspace::new();
    let mut first = ws.start_daemon();
    first.wait_for_log("loops daemon started", LONG);

    let out = ws.cmd().arg("run").timeout(LONG).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    assert!(
        err.contains(&format!("kill {}", first.pid())),
        "says how to stop it: {err}"
    );

    // A crash leaves the lock file behind; the next daemon takes it over.
    first.signal(Signal::KILL);
    assert!(first.wait_exit(LONG).is_some());
    assert!(ws.path().join(".loops").read_dir().unwrap().count() > 0);
    let mut second = ws.start_daemon();
    second.wait_for_log("loops daemon started", LONG);
    let out = ws.cmd().arg("run").timeout(LONG).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("pid {}", second.pid())));

    second.signal(Signal::TERM);
    let st = second.wait_exit(LONG).expect("the daemon stops on SIGTERM");
    assert!(st.success(), "{st:?}\n{}", second.log());
}

#[test]
fn daemon_hot_reloads_new_broken_and_fixed_loops() {
    let ws = TempWorkspace::new();
    let out = tempfile::tempdir().unwrap();
    let steady_out = out.path().join("steady.txt");
    let fresh_out = out.path().join("fresh.txt");
    settings(&ws, "  shutdown_grace: 1s\n");
    every_loop(
        &ws,
        "steady",
        "1s",
        &format!("echo tick >> {}", steady_out.display()),
        "",
    );
    git_commit_all(ws.path(), "steady loop");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    assert!(wait_until(LONG, || lines(&steady_out) >= 1), "{}", d.log());

    // A new folder is picked up and run within a few seconds.
    let good = format!(
        "schedule: {{ every: 1s }}\npayload: {{ kind: command, command: \"echo tick >> {}\" }}\n",
        fresh_out.display()
    );
    ws.add_loop("fresh", &good);
    assert!(wait_until(LONG, || lines(&fresh_out) >= 1), "{}", d.log());
    d.wait_for_log("new loop", LONG);

    // Broken YAML: the error names the file; the loop stops; the others keep running.
    ws.add_loop("fresh", "schedule: [every: 1s\npayload: {kind: command\n");
    d.wait_for_log("loop is not scheduled until its config is fixed", LONG);
    let log = d.log();
    assert!(log.contains("domains/fresh/config.yaml"), "{log}");
    assert!(log.contains("not valid YAML"), "{log}");
    // Let a run that had already started finish, then watch for a while.
    std::thread::sleep(Duration::from_millis(1500));
    let fresh_then = lines(&fresh_out);
    let steady_then = lines(&steady_out);
    assert!(
        wait_until(LONG, || lines(&steady_out) >= steady_then + 2),
        "the other loop keeps running: {}",
        d.log()
    );
    assert_eq!(lines(&fresh_out), fresh_then, "a broken loop does not run");
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "daemon still up"
    );

    // Fixed: it runs again.
    ws.add_loop("fresh", &good);
    d.wait_for_log("config fixed: loop scheduled again", LONG);
    assert!(
        wait_until(LONG, || lines(&fresh_out) > fresh_then),
        "{}",
        d.log()
    );

    // Removed: logged, no more runs.
    std::fs::remove_dir_all(ws.path().join("domains/fresh")).unwrap();
    d.wait_for_log("loop removed", LONG);

    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success());
}

/// Pairs (started, finished) of a loop's records with this outcome.
fn spans(ws: &TempWorkspace, name: &str, outcomes: &[&str]) -> Vec<(String, String)> {
    ws.runs(name)
        .iter()
        .filter(|r| outcomes.iter().any(|o| r["outcome"] == *o))
        .map(|r| {
            (
                r["started"].as_str().unwrap().to_string(),
                r["finished"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn any_overlap(s: &[(String, String)]) -> bool {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    for (i, a) in s.iter().enumerate() {
        for b in &s[i + 1..] {
            if parse(&a.0) < parse(&b.1) && parse(&b.0) < parse(&a.1) {
                return true;
            }
        }
    }
    false
}

#[test]
fn daemon_overlap_policies_forbid_allow_replace() {
    let ws = TempWorkspace::new();
    settings(&ws, "  shutdown_grace: 1s\n  max_concurrent_jobs: 16\n");
    for policy in ["forbid", "allow", "replace"] {
        every_loop(
            &ws,
            policy,
            "1s",
            "sleep 3",
            &format!("concurrency: {policy}\ntimeout: 60s\n"),
        );
    }
    git_commit_all(ws.path(), "overlap loops");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);

    let ok = wait_until(Duration::from_secs(90), || {
        ws.count_outcome("forbid", "skipped") >= 2
            && ws.count_outcome("replace", "interrupted") >= 1
            && any_overlap(&spans(&ws, "allow", &["silent"]))
    });
    assert!(
        ok,
        "forbid: {:?}\nallow: {:?}\nreplace: {:?}\nlog:\n{}",
        ws.runs("forbid"),
        ws.runs("allow"),
        ws.runs("replace"),
        d.log()
    );
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());

    // forbid: the skip says why, and its real runs never overlapped.
    let skipped: Vec<_> = ws
        .runs("forbid")
        .into_iter()
        .filter(|r| r["outcome"] == "skipped")
        .collect();
    assert!(skipped[0]["note"]
        .as_str()
        .unwrap()
        .contains("concurrency: forbid"));
    assert!(
        skipped[0]["slot"].is_string(),
        "a skipped slot names its slot"
    );
    assert!(!any_overlap(&spans(
        &ws,
        "forbid",
        &["silent", "interrupted"]
    )));
    // replace: the replaced run is interrupted; no two runs ran together for long.
    let interrupted: Vec<_> = ws
        .runs("replace")
        .into_iter()
        .filter(|r| r["outcome"] == "interrupted")
        .collect();
    assert_eq!(interrupted[0]["error"], "interrupted");
    assert_eq!(ws.count_outcome("replace", "skipped"), 0);
    assert_eq!(ws.count_outcome("allow", "skipped"), 0);
    assert!(ws.count_outcome("allow", "interrupted") + ws.count_outcome("allow", "silent") > 1);
    // Nothing is left marked as running.
    assert_eq!(
        runs_in_progress(&ws).len(),
        0,
        "no run in progress after a clean stop"
    );
}

#[test]
fn daemon_sigterm_interrupts_a_long_run_after_the_grace() {
    let ws = TempWorkspace::new();
    let out = tempfile::tempdir().unwrap();
    let pidfile = out.path().join("long.pid");
    settings(&ws, "  shutdown_grace: 1s\n");
    every_loop(
        &ws,
        "long",
        "1s",
        &format!("echo $$ > {}; exec sleep 120", pidfile.display()),
        "timeout: 10m\n",
    );
    git_commit_all(ws.path(), "long loop");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&pidfile)
            .is_ok_and(|t| t.trim().parse::<i32>().is_ok())),
        "{}",
        d.log()
    );
    let job_pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(job_pid));

    let t0 = Instant::now();
    d.signal(Signal::TERM);
    let st = d.wait_exit(LONG).expect("the daemon stops after the grace");
    let took = t0.elapsed();
    assert!(st.success(), "{st:?}\n{}", d.log());
    assert!(
        took >= Duration::from_millis(900),
        "the daemon waited for the grace period: {took:?}"
    );
    let log = d.log();
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("grace period over"), "{log}");
    assert!(log.contains("loops daemon stopped"), "{log}");

    let recs = ws.runs("long");
    let last = recs.last().expect("a record");
    assert_eq!(last["outcome"], "interrupted", "{recs:?}");
    assert!(last["duration_ms"].as_u64().unwrap() >= 900, "{last}");
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(job_pid)
            || is_zombie(job_pid)),
        "the job's process was stopped"
    );
    assert_eq!(runs_in_progress(&ws).len(), 0);
    // The state knows the last run was interrupted; an interruption is not a failure.
    let list = ws.cmd().args(["list", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let l = v["loops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "long")
        .unwrap();
    assert_eq!(l["last_run"]["outcome"], "interrupted");
    assert_eq!(l["consecutive_failures"], 0);
}

#[test]
fn daemon_records_a_run_left_by_a_killed_daemon_as_interrupted() {
    let ws = TempWorkspace::new();
    let out = tempfile::tempdir().unwrap();
    let pidfile = out.path().join("long.pid");
    every_loop(
        &ws,
        "long",
        "1s",
        &format!("echo $$ > {}; exec sleep 120", pidfile.display()),
        "timeout: 10m\n",
    );
    git_commit_all(ws.path(), "long loop");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&pidfile)
            .is_ok_and(|t| t.trim().parse::<i32>().is_ok())),
        "{}",
        d.log()
    );
    // The run's process group is recorded just after its command starts: a daemon
    // killed before that could not name the group to stop.
    assert!(
        wait_until(LONG, || runs_in_progress(&ws)
            .first()
            .is_some_and(|(_, m)| m["pgid"].is_number())),
        "{}",
        d.log()
    );
    let markers = runs_in_progress(&ws);
    assert_eq!(markers.len(), 1);
    let marker = markers[0].1.clone();
    assert_eq!(marker["loop"], "long");
    assert_eq!(marker["pid"], d.pid());
    let run_id = marker["run_id"].as_str().unwrap().to_string();

    d.signal(Signal::KILL);
    assert!(d.wait_exit(LONG).is_some());
    // The job is in its own process group, so it outlives the killed daemon…
    let job_pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(job_pid), "the job outlived the daemon");
    assert_eq!(ws.count_outcome("long", "interrupted"), 0);
    assert!(markers[0].0.exists(), "the crash left its run in the queue");

    // Stop scheduling it so the next daemon only recovers.
    every_loop(&ws, "long", "1s", "true", "enabled: false\n");
    let mut d2 = ws.start_daemon();
    d2.wait_for_log("loops daemon started", LONG);
    let recs = ws.runs("long");
    let rec = recs
        .iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap_or_else(|| panic!("no record of {run_id}: {recs:?}\n{}", d2.log()));
    assert_eq!(rec["outcome"], "interrupted");
    assert_eq!(rec["started"], marker["started"]);
    assert!(
        rec["note"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", marker["pid"])),
        "{rec}"
    );
    assert!(!markers[0].0.exists(), "the run is cleared from the queue");
    // …until the next daemon finds its marker and stops its process group.
    assert!(
        wait_until(LONG, || !pid_alive(job_pid) || is_zombie(job_pid)),
        "the orphaned job {job_pid} was not stopped"
    );
    assert!(
        rec["note"].as_str().unwrap().contains("process group"),
        "{rec}"
    );
    assert!(
        d2.log().contains("recorded an interrupted run"),
        "{}",
        d2.log()
    );
    d2.signal(Signal::TERM);
    assert!(d2.wait_exit(LONG).expect("stops").success());
}

#[test]
fn daemon_run_once_all_summary_and_exit_code() {
    let ws = TempWorkspace::new();
    every_loop(&ws, "good", "1h", "echo all fine", "");
    ws.cmd()
        .args(["new", "thinker", "--template", "heartbeat"])
        .assert()
        .success();
    git_commit_all(ws.path(), "loops");

    let out = ws
        .cmd()
        .args(["run", "--once", "--all"])
        .timeout(LONG)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("LOOP"), "{stdout}");
    let good = stdout
        .lines()
        .find(|l| l.starts_with("good "))
        .expect(&stdout);
    assert!(good.contains("once") && good.contains("acted"), "{good}");
    assert!(
        stdout.lines().any(|l| l.starts_with("example ")),
        "{stdout}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("thinker ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("Waiting for a provider (prompt loops): thinker"),
        "{stdout}"
    );
    assert_eq!(ws.count_outcome("good", "acted"), 1);
    assert_eq!(ws.runs("thinker").len(), 0);

    // A failing loop makes the exit code 1 and shows why.
    every_loop(&ws, "bad", "1h", "echo broken pipe dream >&2; exit 3", "");
    // A disabled loop does not run.
    every_loop(&ws, "off", "1h", "echo never", "enabled: false\n");
    let out = ws
        .cmd()
        .args(["run", "--once", "--all"])
        .timeout(LONG)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let bad = stdout
        .lines()
        .find(|l| l.starts_with("bad "))
        .expect(&stdout);
    assert!(
        bad.contains("failed") && bad.contains("exited with status 3: broken pipe dream"),
        "{bad}"
    );
    assert!(stdout.lines().any(|l| l.starts_with("good ")), "{stdout}");
    assert!(!stdout.contains("off "), "{stdout}");
    assert_eq!(ws.runs("off").len(), 0);

    // A daemon holding the workspace blocks --once too.
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let out = ws
        .cmd()
        .args(["run", "--once"])
        .timeout(LONG)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    d.kill();
}

#[test]
fn daemon_pauses_a_loop_after_five_failures_and_resume_clears_it() {
    let ws = TempWorkspace::new();
    settings(&ws, "  shutdown_grace: 1s\n");
    every_loop(
        &ws,
        "flaky",
        "1s",
        "echo nope >&2; exit 3",
        "retry: { max_attempts: 1 }\n",
    );
    git_commit_all(ws.path(), "flaky loop");
    let list_json = |ws: &TempWorkspace| -> serde_json::Value {
        let out = ws.cmd().args(["list", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["loops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "flaky")
            .cloned()
            .unwrap()
    };
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    assert!(
        wait_until(Duration::from_secs(90), || !list_json(&ws)["paused"]
            .is_null()),
        "{}",
        d.log()
    );
    d.wait_for_log("loops resume flaky", LONG);
    let l = list_json(&ws);
    assert_eq!(l["consecutive_failures"], 5);
    assert!(
        l["status"]
            .as_str()
            .unwrap()
            .starts_with("paused: 5 consecutive failed runs"),
        "{l}"
    );
    assert!(l["paused"]["last_error"]
        .as_str()
        .unwrap()
        .contains("exited with status 3: nope"));
    assert!(
        l["next_run"].is_null(),
        "a paused loop has no next run: {l}"
    );
    let human = ws.cmd().arg("list").output().unwrap();
    let row = String::from_utf8_lossy(&human.stdout)
        .lines()
        .find(|r| r.starts_with("flaky"))
        .unwrap()
        .to_string();
    assert!(row.contains("paused: 5 consecutive failed runs"), "{row}");
    // Paused means no more runs.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ws.count_outcome("flaky", "failed"),
        5,
        "{:?}",
        ws.runs("flaky")
    );

    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success());

    let out = ws.cmd().args(["resume", "flaky"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("`flaky` resumed"));
    let l = list_json(&ws);
    assert!(l["paused"].is_null(), "{l}");
    assert_eq!(l["consecutive_failures"], 0);
    assert!(!l["next_run"].is_null());
    let again = ws.cmd().args(["resume", "flaky"]).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("was not paused"));

    // Resumed, the daemon runs it again.
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    assert!(
        wait_until(LONG, || ws.count_outcome("flaky", "failed") > 5),
        "{}",
        d.log()
    );
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success());
}

/// Starts `loops ARGS` in the background with a `slow` loop that writes its pid and sleeps;
/// sends `sig` once the command runs; returns (exit status, the command's pid).
fn interrupt_slow(
    ws: &TempWorkspace,
    args: &[&str],
    sig: Signal,
) -> (std::process::ExitStatus, i32) {
    let out = tempfile::tempdir().unwrap();
    let pidfile = out.path().join("slow.pid");
    every_loop(
        ws,
        "slow",
        "1h",
        &format!("echo $$ > {}; exec sleep 120", pidfile.display()),
        "timeout: 10m\n",
    );
    let mut child = crate::common::loops_std_cmd(ws.path())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(LONG, || std::fs::read_to_string(&pidfile)
        .is_ok_and(|t| t.trim().parse::<i32>().is_ok())));
    let job: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal_child(&child, sig);
    let until = Instant::now() + LONG;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            panic!("loops {args:?} did not exit after signal {}", sig.as_raw());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let gone = wait_until(Duration::from_secs(15), || {
        !pid_alive(job) || is_zombie(job)
    });
    if !gone {
        // The job this test started: do not leave it behind.
        signal(job, Signal::KILL);
    }
    assert!(
        gone,
        "the command ({job}) kept running after loops {args:?} got signal {}",
        sig.as_raw()
    );
    (status, job)
}

#[test]
fn daemon_run_once_stops_its_runs_on_sigint() {
    let ws = TempWorkspace::new();
    let (status, _) = interrupt_slow(&ws, &["run", "--once", "--all"], Signal::INT);
    assert!(
        status.code().is_some(),
        "exited, not killed by the signal: {status:?}"
    );
    let recs = ws.runs("slow");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["outcome"], "interrupted");
    assert_eq!(runs_in_progress(&ws).len(), 0, "no marker left behind");
}

#[test]
fn daemon_trigger_stops_its_run_on_sigint() {
    let ws = TempWorkspace::new();
    let (_, _) = interrupt_slow(&ws, &["trigger", "slow"], Signal::INT);
    assert_eq!(ws.count_outcome("slow", "interrupted"), 1);
}

fn journal(ws: &TempWorkspace) -> Vec<serde_json::Value> {
    std::fs::read_to_string(ws.path().join(".loops/daemon.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn daemon_journal_records_starts_clean_stops_and_what_a_crash_left() {
    let ws = TempWorkspace::new();
    let out = tempfile::tempdir().unwrap();
    let pidfile = out.path().join("long.pid");
    every_loop(
        &ws,
        "long",
        "1s",
        &format!("echo $$ > {}; exec sleep 120", pidfile.display()),
        "timeout: 10m\n",
    );
    git_commit_all(ws.path(), "long loop");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let first = d.pid();
    assert!(
        wait_until(LONG, || pidfile.exists()),
        "the run started: {}",
        d.log()
    );
    let (_, marker) = runs_in_progress(&ws)
        .into_iter()
        .next()
        .expect("a run in progress");
    let run_id = marker["run_id"].as_str().expect("run_id").to_string();
    d.signal(Signal::KILL);
    assert!(d.wait_exit(LONG).is_some());

    every_loop(&ws, "long", "1s", "true", "enabled: false\n");
    let mut d2 = ws.start_daemon();
    d2.wait_for_log("loops daemon started", LONG);
    let log = d2.log();
    assert!(
        log.contains("did not stop cleanly") && log.contains(&format!("pid {first}")),
        "{log}"
    );
    d2.signal(Signal::TERM);
    assert!(d2.wait_exit(LONG).expect("stops").success());

    let events = journal(&ws);
    let kinds: Vec<(&str, u64)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or(""),
                e["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(kinds[0], ("started", first as u64), "{events:#?}");
    assert_eq!(kinds[1].0, "started", "{events:#?}");
    assert_eq!(kinds[2].0, "unclean_stop", "{events:#?}");
    assert_eq!(kinds.last().map(|k| k.0), Some("stopped"), "{events:#?}");
    let unclean = &events[2];
    assert_eq!(unclean["previous"][0]["pid"], first, "{unclean}");
    assert!(
        unclean["previous"][0]["last_heartbeat"].is_string(),
        "when it was last alive: {unclean}"
    );
    assert_eq!(unclean["recovered"]["runs"][0]["run"], run_id.as_str());
    assert_eq!(unclean["recovered"]["runs"][0]["loop"], "long");
    assert_eq!(events.last().unwrap()["reason"], "SIGTERM");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "unclean_stop")
            .count(),
        1,
        "a clean stop is not reported as a crash"
    );

    // `loops status` shows it.
    let st = ws.cmd().args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["last_unclean_stop"]["previous"][0]["pid"], first);
    let text = ws.cmd().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("unclean stop"), "{text}");
}

#[test]
fn daemon_a_run_recorded_before_a_crash_is_not_recorded_again_as_interrupted() {
    let ws = TempWorkspace::new();
    // A daemon killed between writing a run's record and removing its marker.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    ws.write(
        ".loops/runs/gone.jsonl",
        &format!(
            "{{\"loop\":\"gone\",\"run_id\":\"01RUN\",\"trigger\":\"schedule\",\"attempt\":1,\"started\":\"{now}\",\"finished\":\"{now}\",\"duration_ms\":5,\"outcome\":\"acted\"}}\n"
        ),
    );
    ws.write(
        ".loops/running/01RUN.json",
        &format!(
            "{{\"loop\":\"gone\",\"run_id\":\"01RUN\",\"trigger\":\"schedule\",\"attempt\":1,\"started\":\"{now}\",\"pid\":{dead_pid},\"pid_start\":1}}"
        ),
    );
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success());
    let recs = ws.runs("gone");
    assert_eq!(recs.len(), 1, "the run is recorded once: {recs:?}");
    assert_eq!(recs[0]["outcome"], "acted");
    assert!(!ws.path().join(".loops/running/01RUN.json").exists());
}

#[test]
fn daemon_trigger_of_a_command_that_cannot_start_fails_instead_of_hanging() {
    let ws = TempWorkspace::new();
    // Not executable: it passes `loops check` (the file exists) but cannot be started.
    ws.write("domains/stuck/run.sh", "#!/bin/sh\necho hi\n");
    ws.add_loop(
        "stuck",
        "schedule: { every: 1h }\nretry: { max_attempts: 1 }\npayload:\n  kind: command\n  command: [\"./run.sh\"]\n",
    );
    let out = ws
        .cmd()
        .args(["trigger", "stuck", "--json"])
        .timeout(LONG)
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "trigger ended without a record ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(rec["outcome"], "failed", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or("")
            .contains("permission denied"),
        "{rec}"
    );
}

#[test]
fn daemon_starts_while_a_dead_daemons_lock_is_still_held() {
    // The kernel can release a SIGKILLed daemon's flock seconds after the process is
    // gone (the soak test saw it); `loops status` and `loops jobs submit` also used to
    // take the lock for a moment to probe it. A daemon starting then must wait, not
    // refuse as "already running" (naming the dead one, or itself).
    let ws = TempWorkspace::new();
    let path = ws.path().join(".loops/daemon.lock");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    use std::io::Write;
    write!(
        f,
        "{{\"pid\":{dead_pid},\"pid_start\":1,\"started\":\"2026-01-01T00:00:00Z\",\"version\":\"0\"}}"
    )
    .unwrap();
    lock_exclusive(&f).unwrap();
    let mut d = ws.start_daemon();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "it waits for the lock rather than refusing: {}",
        d.log()
    );
    drop(f);
    d.wait_for_log("loops daemon started", LONG);
    assert!(d.log().contains("which has exited"), "{}", d.log());
    // Probing it does not take its lock: it keeps running, and says so.
    for _ in 0..20 {
        let out = ws.cmd().args(["status", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["daemon"]["pid"], d.pid(), "{v}");
    }
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
}

/// Issue 16: a daemon whose loop state was written under a clock three days ahead (a
/// clock stepped forward and back) ran nothing for three days. It says so once, in the
/// log, and the loop fires on schedule again.
#[test]
fn daemon_a_watermark_ahead_of_the_clock_is_logged_once_and_re_anchored() {
    let ws = TempWorkspace::new();
    every_loop(&ws, "tick", "1s", "true", "");
    git_commit_all(ws.path(), "tick loop");
    let mut d = ws.start_daemon();
    assert!(
        wait_until(LONG, || ws.count_outcome("tick", "silent") >= 1),
        "{}",
        d.log()
    );
    d.signal(Signal::TERM);
    d.wait_exit(LONG).expect("the daemon stops");

    let state_path = ws.path().join(".loops/state/tick.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let ahead = chrono::Utc::now() + chrono::Duration::days(3);
    state["watermark"] = serde_json::json!(ahead);
    std::fs::write(&state_path, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    let before = ws.runs("tick").len();

    let d = ws.start_daemon();
    assert!(
        wait_until(LONG, || ws.runs("tick").len() >= before + 2),
        "the loop fires again after the restart; log:\n{}",
        d.log()
    );
    let log = d.log();
    assert_eq!(log.matches("it was stepped back").count(), 1, "{log}");
    assert!(log.contains("ahead of the clock"), "{log}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let wm: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(state["watermark"].clone()).unwrap();
    assert!(wm < ahead - chrono::Duration::days(2), "{state}");
}

/// Issue 16: stopping took twice `shutdown_grace` with runs queued behind the concurrency
/// limit: each of them started after the grace only to be stopped. Runs that have not
/// started are recorded at once as not run; only the started ones get the grace.
#[test]
fn daemon_stopping_records_queued_runs_at_once_and_gives_the_grace_only_to_started_ones() {
    const LOOPS: usize = 40;
    let ws = TempWorkspace::new();
    settings(
        &ws,
        "  max_concurrent_jobs: 2\n  shutdown_grace: 2s\n  catch_up_stagger: 0s\n",
    );
    for i in 0..LOOPS {
        every_loop(
            &ws,
            &format!("q{i:02}"),
            "1s",
            "exec sleep 60",
            "timeout: 10m\n",
        );
    }
    git_commit_all(ws.path(), "queued loops");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    // Every loop has a run claimed: two running, the rest waiting for a permit.
    let markers = || runs_in_progress(&ws).len();
    assert!(
        wait_until(LONG, || markers() >= LOOPS),
        "{} markers; log:\n{}",
        markers(),
        d.log()
    );
    assert!(
        wait_until(LONG, || d
            .log()
            .matches("the previous run was still going")
            .count()
            >= LOOPS),
        "{}",
        d.log()
    );

    let t0 = chrono::Utc::now();
    let clock = Instant::now();
    d.signal(Signal::TERM);
    let st = d.wait_exit(LONG).expect("the daemon stops");
    let took = clock.elapsed();
    assert!(st.success(), "{st:?}\n{}", d.log());
    let log = d.log();

    let mut interrupted = 0;
    let mut not_run = 0;
    for i in 0..LOOPS {
        for r in ws.runs(&format!("q{i:02}")) {
            match r["outcome"].as_str() {
                Some("interrupted") => interrupted += 1,
                Some("skipped") if r["note"] == "the runner was stopping" => {
                    not_run += 1;
                    // Recorded when the stop began, not after the grace.
                    let at: chrono::DateTime<chrono::Utc> =
                        serde_json::from_value(r["finished"].clone()).unwrap();
                    assert!(at < t0 + chrono::Duration::seconds(2), "{r}\n{log}");
                    assert_eq!(r["duration_ms"], 0, "{r}");
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        interrupted, 2,
        "the two started runs got the grace, then were stopped\n{log}"
    );
    assert_eq!(not_run, LOOPS - 2, "{log}");
    assert!(
        log.contains(&format!(
            "{} queued run(s) that had not started were recorded as skipped: the runner was stopping",
            LOOPS - 2
        )),
        "{log}"
    );
    assert!(log.contains("running=2"), "{log}");
    assert!(log.contains("grace period over"), "{log}");
    // The grace (2 s) and the stopped commands' exit; not a grace per queued run. Generous,
    // for a slow machine.
    assert!(took < Duration::from_secs(2 + 10), "took {took:?}\n{log}");
    assert!(took >= Duration::from_millis(1900), "took {took:?}\n{log}");
    assert_eq!(markers(), 0, "no running marker is left");
}

/// `loops run --once` stopped by a signal: the run that started is stopped, and the ones
/// queued behind the concurrency limit are recorded as not run (not started only to be
/// stopped, and not dropped without a record).
#[test]
fn daemon_run_once_on_sigint_records_its_queued_runs_as_not_run() {
    let ws = TempWorkspace::new();
    // Only the slow loops: a quick one would end and take its marker away, so how many
    // markers are seen would depend on when the test looks.
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    settings(&ws, "  max_concurrent_jobs: 1\n");
    for i in 0..5 {
        every_loop(
            &ws,
            &format!("slow{i}"),
            "1h",
            "exec sleep 120",
            "timeout: 10m\n",
        );
    }
    git_commit_all(ws.path(), "slow loops");
    let mut child = crate::common::loops_std_cmd(ws.path())
        .args(["run", "--once", "--all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let running = || runs_in_progress(&ws).len();
    // Five claimed: one running, the rest behind the limit.
    assert!(wait_until(LONG, || running() >= 5));
    signal_child(&child, Signal::INT);
    let until = Instant::now() + LONG;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "loops run --once did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut outcomes = std::collections::BTreeMap::new();
    for i in 0..5 {
        for r in ws.runs(&format!("slow{i}")) {
            let key = format!(
                "{} {}",
                r["outcome"].as_str().unwrap_or(""),
                r["note"].as_str().unwrap_or("")
            );
            *outcomes.entry(key.trim().to_string()).or_insert(0) += 1;
        }
    }
    let not_run = outcomes
        .get("skipped the runner was stopping")
        .copied()
        .unwrap_or(0);
    let interrupted = outcomes.get("interrupted").copied().unwrap_or(0);
    assert_eq!(interrupted + not_run, 5, "{outcomes:?}");
    assert!(not_run >= 3, "{outcomes:?}");
    assert_eq!(running(), 0, "no marker left behind");
}

/// Deleting a loop's folder is logged once, in the daemon's words; notify's internal
/// complaints about the watch the kernel already dropped ("unable to remove watch
/// descriptor", "Unable to remove the path from the watches") are not shown, with the
/// default log level or with `LOOPS_LOG=info`.
#[test]
fn daemon_deleting_a_loop_folder_logs_it_once_without_watcher_noise() {
    for level in [None, Some("info")] {
        let ws = TempWorkspace::new();
        every_loop(&ws, "gone", "1h", "true", "");
        git_commit_all(ws.path(), "setup");
        let log = ws.path().join(".git/daemon-noise.log");
        let mut cmd = crate::common::loops_std_cmd(ws.path());
        if let Some(l) = level {
            cmd.env("LOOPS_LOG", l);
        }
        let mut child = cmd
            .arg("run")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("loops run");
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            wait_until(LONG, || read().contains("loops daemon started")),
            "{}",
            read()
        );
        std::fs::remove_dir_all(ws.path().join("domains/gone")).unwrap();
        assert!(
            wait_until(LONG, || read().contains("loop removed")),
            "{level:?}: {}",
            read()
        );
        // Give a late line the time to arrive before looking for it.
        std::thread::sleep(Duration::from_millis(500));
        signal_child(&child, Signal::TERM);
        let _ = child.wait();
        let text = read();
        assert_eq!(text.matches("loop removed").count(), 1, "{level:?}: {text}");
        assert!(
            !text.contains("watch descriptor") && !text.contains("Unable to remove"),
            "{level:?}: {text}"
        );
        assert!(!text.contains("WARN"), "{level:?}: {text}");
    }
}

/// The runs in progress the queue holds (light `loop` and `wake` jobs in `.loops/jobs/`):
/// each job's file and its run (loop, run_id, trigger, pid, started, …).
fn runs_in_progress(ws: &TempWorkspace) -> Vec<(std::path::PathBuf, serde_json::Value)> {
    let Ok(rd) = ws.path().join(".loops/jobs").read_dir() else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            matches!(v["kind"].as_str(), Some("loop" | "wake")).then(|| (p, v["params"].clone()))
        })
        .collect()
}
