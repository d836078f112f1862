//! Everything that runs is a job (issue #17): a loop's run in progress is a light `loop`
//! job in the queue, seen by `loops jobs list --all`, stopped by `loops jobs cancel`, and
//! it keeps `concurrency: forbid` across processes; no `.loops/running/` markers or
//! `.loops/locks/*.run` files are made.

use crate::common::{
    git_commit_all, loops_std_cmd, main_script, main_seen, wait_until, TempWorkspace,
};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn long_loop(ws: &TempWorkspace) {
    ws.add_loop(
        "long",
        "schedule: { every: 1s }\npayload:\n  kind: command\n  command: \"exec sleep 120\"\ntimeout: 10m\n",
    );
    git_commit_all(ws.path(), "long loop");
}

fn jobs(ws: &TempWorkspace, args: &[&str]) -> Vec<serde_json::Value> {
    let out = ws.cmd().args(args).output().expect("loops jobs list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("json")
}

/// A loop whose run takes 3 s, triggered by hand (no daemon: it runs in the trigger).
fn trigger_slow_loop(ws: &TempWorkspace, name: &str) -> std::process::Child {
    ws.add_loop(
        name,
        "schedule: { every: 1h }\npayload:\n  kind: command\n  command: \"sleep 3\"\n",
    );
    git_commit_all(ws.path(), "slow loop");
    loops_std_cmd(ws.path())
        .args(["trigger", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("trigger")
}

fn loop_jobs(ws: &TempWorkspace) -> Vec<serde_json::Value> {
    jobs(ws, &["jobs", "list", "--all", "--json"])
        .into_iter()
        .filter(|j| j["kind"] == "loop" && j["name"] == "long")
        .collect()
}

/// A record's error, or a handoff's note, says a person's cancel stopped the run.
fn cancelled_on_request(error: &serde_json::Value) -> bool {
    error
        .as_str()
        .is_some_and(|e| e.contains("cancelled on request"))
}

#[test]
fn a_running_loop_tick_is_a_job_that_jobs_cancel_stops() {
    let ws = TempWorkspace::new();
    long_loop(&ws);
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    assert!(
        wait_until(LONG, || loop_jobs(&ws)
            .iter()
            .any(|j| j["state"] == "active")),
        "no loop job in `jobs list --all`: {}",
        d.log()
    );
    // The runner's own jobs stay out of the plain listing (the queue's work).
    assert!(
        !jobs(&ws, &["jobs", "list", "--json"])
            .iter()
            .any(|j| j["kind"] == "loop"),
        "a plain `jobs list` shows only submitted jobs"
    );
    let job = loop_jobs(&ws)
        .into_iter()
        .find(|j| j["state"] == "active")
        .expect("active");
    let id = job["id"].as_u64().expect("id").to_string();

    // A person's trigger meanwhile is refused: the loop's run is in progress elsewhere.
    let t = ws
        .cmd()
        .args(["trigger", "long"])
        .output()
        .expect("trigger");
    assert!(!t.status.success());
    assert!(
        String::from_utf8_lossy(&t.stderr).contains("in progress"),
        "{}",
        String::from_utf8_lossy(&t.stderr)
    );

    // Shown as a run (which, begun), not as an agent's turns and tokens.
    let got = ws.cmd().args(["jobs", "get", &id]).output().expect("get");
    let shown = String::from_utf8_lossy(&got.stdout);
    assert!(
        shown.contains("progress: running (run ") && !shown.contains("tokens:"),
        "{shown}"
    );

    // A run has no turns to pause between: refused, saying what does work.
    let p = ws
        .cmd()
        .args(["jobs", "pause", &id])
        .output()
        .expect("pause");
    assert!(!p.status.success());
    assert!(
        String::from_utf8_lossy(&p.stderr).contains("cannot be paused"),
        "{}",
        String::from_utf8_lossy(&p.stderr)
    );

    // Nor does it read the queue: a steering message would sit unread, so it is refused.
    let m = ws
        .cmd()
        .args(["jobs", "message", &id, "stop now"])
        .output()
        .expect("message");
    assert!(!m.status.success());
    let said = String::from_utf8_lossy(&m.stderr);
    assert!(
        said.contains("is a loop job: it has no agent to read a message")
            && said.contains(&format!("loops jobs cancel {id}")),
        "{said}"
    );

    let out = ws
        .cmd()
        .args(["jobs", "cancel", &id, "--json"])
        .output()
        .expect("cancel");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["state"], "cancelled", "{v}");
    // The answer carries the run's record: a person's cancel, not a shutdown.
    assert_eq!(v["run"]["outcome"], "interrupted", "{v}");
    assert!(cancelled_on_request(&v["run"]["error"]), "{v}");
    assert!(
        wait_until(LONG, || ws.count_outcome("long", "interrupted") >= 1),
        "the cancelled run is recorded as interrupted: {:?}\n{}",
        ws.runs("long"),
        d.log()
    );
    assert!(
        wait_until(LONG, || !loop_jobs(&ws)
            .iter()
            .any(
                |j| j["id"].as_u64().map(|i| i.to_string()) == Some(id.clone())
            )),
        "the ended run leaves the queue"
    );
    d.kill();
    assert!(!ws.path().join(".loops/running").exists(), "no run markers");
    assert!(!ws.path().join(".loops/locks").exists(), "no run locks");
}

#[test]
fn jobs_cancel_stops_a_wake_and_its_handoff_waits_before_it_is_handed_over_again() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().expect("tempdir");
    ws.with_main(&format!(
        "  command: {}\n  max_attempts: 5\n",
        main_script(tools.path(), "exec sleep 120", false)
    ));
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let h = ws.json(&["handoff", "create", "--from", "a", "--title", "Stop me"]);
    let handoff = h["id"].as_str().expect("id").to_string();
    let wake_job = || {
        jobs(&ws, &["jobs", "list", "--all", "--json"])
            .into_iter()
            .find(|j| j["kind"] == "wake" && j["state"] == "active")
    };
    // Cancels the wake running now; returns what the cancel said.
    let cancel_the_wake = || {
        assert!(wait_until(LONG, || wake_job().is_some()), "{}", d.log());
        let id = wake_job().expect("wake")["id"].to_string();
        let out = ws
            .cmd()
            .args(["jobs", "cancel", &id])
            .output()
            .expect("cancel");
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        said
    };
    let said = cancel_the_wake();
    assert!(
        said.contains("cancelled")
            && said.contains("recorded interrupted: cancelled on request")
            && said.contains("went back to the inbox"),
        "{said}"
    );
    let first = ws.runs("main");
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(cancelled_on_request(&first[0]["error"]), "{first:?}");
    let s = ws.json(&["inbox", "show", &handoff]);
    assert!(cancelled_on_request(&s["note"]["last_error"]), "{s}");

    // Handed over again, but not the instant the person stopped it.
    assert!(
        wait_until(LONG, || main_seen(tools.path()).len() >= 2),
        "{}",
        d.log()
    );
    cancel_the_wake();
    let runs = ws.runs("main");
    assert_eq!(runs.len(), 2, "{runs:?}");
    let t = |r: &serde_json::Value, k: &str| {
        chrono::DateTime::parse_from_rfc3339(r[k].as_str().expect("time")).expect("rfc3339")
    };
    let gap = t(&runs[1], "started") - t(&runs[0], "finished");
    assert!(
        gap >= chrono::Duration::seconds(4),
        "handed over again after {gap}"
    );
    assert_eq!(ws.json(&["inbox", "show", &handoff])["note"]["attempts"], 2);
    d.kill();
}

#[test]
fn a_run_cancelled_while_it_waits_for_its_turn_never_begins() {
    let ws = TempWorkspace::new();
    ws.write("loops.yaml", "limits:\n  max_concurrent_jobs: 1\n");
    for (name, cmd) in [
        ("hog", "exec sleep 120"),
        ("queued", "echo ran >> state.md"),
    ] {
        ws.add_loop(
            name,
            &format!(
                "schedule: {{ every: 1h }}\npayload:\n  kind: command\n  command: \"{cmd}\"\n"
            ),
        );
    }
    git_commit_all(ws.path(), "two loops, one at a time");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let trigger = |name: &str| {
        loops_std_cmd(ws.path())
            .args(["trigger", name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("trigger")
    };
    let listed = |name: &str| {
        jobs(&ws, &["jobs", "list", "--all", "--json"])
            .into_iter()
            .find(|j| j["name"] == name)
            .map(|j| j["id"].to_string())
    };
    let mut hog = trigger("hog");
    // The hog holds the one permit (its run has begun) before the other is triggered.
    let begun = |name: &str| {
        jobs(&ws, &["jobs", "list", "--all", "--json"])
            .into_iter()
            .any(|j| j["name"] == name && j["state"] == "active")
    };
    assert!(wait_until(LONG, || begun("hog")), "{}", d.log());
    let mut queued = trigger("queued");
    // Claimed by the daemon, waiting behind the limit of one.
    d.wait_for_log("triggered: the run starts now loop_name=queued", LONG);
    assert!(
        wait_until(LONG, || listed("queued").is_some()),
        "{}",
        d.log()
    );
    let id = listed("queued").expect("queued");
    // Its time has come and it waits for its turn: shown as waiting, not delayed.
    let state_of = |args: &[&str]| {
        jobs(&ws, args)
            .into_iter()
            .find(|j| j["name"] == "queued")
            .map(|j| j["state"].clone())
    };
    assert_eq!(
        state_of(&["jobs", "list", "--all", "--json"]),
        Some(serde_json::json!("waiting"))
    );
    assert!(state_of(&["jobs", "list", "--all", "--status", "waiting", "--json"]).is_some());
    let got = ws.json(&["jobs", "get", &id]);
    assert_eq!(got["state"], "waiting", "{got}");
    let out = ws
        .cmd()
        .args(["jobs", "cancel", &id])
        .output()
        .expect("cancel");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("had not begun") && said.contains("recorded as not run"),
        "{said}"
    );

    // Its turn comes when the hog is stopped: it is recorded as not run, and never ran.
    let hog_id = listed("hog").expect("hog");
    let out = ws
        .cmd()
        .args(["jobs", "cancel", &hog_id])
        .output()
        .expect("cancel");
    assert!(out.status.success());
    assert!(
        wait_until(LONG, || !ws.runs("queued").is_empty()),
        "{}",
        d.log()
    );
    let rec = &ws.runs("queued")[0];
    assert_eq!(rec["outcome"], "skipped", "{rec}");
    assert!(
        rec["note"]
            .as_str()
            .is_some_and(|n| n.contains("cancelled on request before it began")),
        "{rec}"
    );
    assert!(
        !ws.path().join("domains/queued/state.md").exists(),
        "it ran"
    );
    let _ = hog.wait();
    let _ = queued.wait();
    d.kill();
}

#[test]
fn a_trigger_holds_the_loop_against_the_daemon_across_processes() {
    let ws = TempWorkspace::new();
    let mut first = trigger_slow_loop(&ws, "slowtrig");
    assert!(
        wait_until(LONG, || jobs(
            &ws,
            &["jobs", "list", "--kind", "loop", "--json"]
        )
        .iter()
        .any(|j| j["name"] == "slowtrig" && j["state"] == "active")),
        "the trigger's run is a loop job"
    );
    let second = ws
        .cmd()
        .args(["trigger", "slowtrig"])
        .output()
        .expect("trigger");
    assert!(
        !second.status.success(),
        "a second trigger is refused while the first runs"
    );
    assert!(first.wait().expect("wait").success());
    assert_eq!(ws.runs("slowtrig").len(), 1);
    assert!(jobs(&ws, &["jobs", "list", "--all", "--json"]).is_empty());
}

fn echo_loop(ws: &TempWorkspace) {
    ws.add_loop(
        "echo",
        "schedule: { every: 24h }\npayload:\n  kind: command\n  command: \"echo parent=$PPID; echo to-stderr >&2; echo done >> out.md\"\n",
    );
    git_commit_all(ws.path(), "echo loop");
}

/// The pid of the process that ran a command loop, from its `parent=` line.
fn parent_of(text: &str) -> Option<i32> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("parent="))
        .and_then(|p| p.trim().parse().ok())
}

#[test]
fn a_trigger_while_the_daemon_serves_is_a_submit_the_daemon_runs() {
    let ws = TempWorkspace::new();
    echo_loop(&ws);
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let before = ws.runs("echo").len();

    let out = ws
        .cmd()
        .args(["trigger", "echo", "--json"])
        .output()
        .expect("trigger");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json record");
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert_eq!(rec["trigger"], "manual", "{rec}");
    // Run by the daemon, in its run lane: the command's parent is the daemon.
    assert_eq!(
        parent_of(rec["stdout_tail"].as_str().unwrap_or("")),
        Some(d.pid()),
        "{rec}"
    );
    assert!(rec["commit"].is_string(), "its change is committed: {rec}");
    let runs = ws.runs("echo");
    assert_eq!(runs.len(), before + 1, "one record: {runs:?}");
    assert_eq!(runs.last().expect("run")["run_id"], rec["run_id"]);
    assert!(
        d.log().contains("triggered: the run starts now"),
        "{}",
        d.log()
    );

    // Followed: the daemon's output streams to the trigger's terminal, each stream to its
    // own, and the trigger says who runs it.
    let out = ws
        .cmd()
        .args(["trigger", "echo", "--follow"])
        .output()
        .expect("trigger --follow");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(parent_of(&stdout), Some(d.pid()), "{stdout}");
    assert!(stderr.contains("to-stderr"), "{stderr}");
    assert!(
        stderr.contains(&format!("by the daemon (pid {})", d.pid())),
        "{stderr}"
    );
    // Nothing is left of the followed output, and no job of the runs.
    let left: Vec<_> = walk(&ws.path().join(".loops/runs/echo"))
        .into_iter()
        .filter(|p| p.ends_with(".live"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(jobs(&ws, &["jobs", "list", "--all", "--json"]).is_empty());
    d.kill();
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .collect()
}

#[test]
fn ctrl_c_on_a_trigger_stops_the_run_in_the_daemon() {
    let ws = TempWorkspace::new();
    ws.add_loop(
        "long",
        "schedule: { every: 24h }\npayload:\n  kind: command\n  command: \"exec sleep 120\"\ntimeout: 10m\n",
    );
    git_commit_all(ws.path(), "long loop");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let before = ws.count_outcome("long", "interrupted");
    let mut t = loops_std_cmd(ws.path())
        .args(["trigger", "long"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("trigger");
    assert!(
        wait_until(LONG, || loop_jobs(&ws)
            .iter()
            .any(|j| j["state"] == "active")),
        "the triggered run begins in the daemon: {}",
        d.log()
    );
    loops_testutil::process::signal_child(&t, loops_testutil::process::Signal::INT);
    let status = t.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "Ctrl-C exits 130");
    assert!(
        wait_until(LONG, || ws.count_outcome("long", "interrupted") > before),
        "the daemon's run is recorded interrupted: {:?}\n{}",
        ws.runs("long"),
        d.log()
    );
    assert!(
        wait_until(LONG, || loop_jobs(&ws).is_empty()),
        "the stopped run leaves the queue"
    );
    d.kill();
}

#[test]
fn a_damaged_run_job_left_by_a_dead_daemon_is_removed_and_said() {
    let ws = TempWorkspace::new();
    long_loop(&ws);
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    assert!(
        wait_until(LONG, || loop_jobs(&ws)
            .iter()
            .any(|j| j["state"] == "active")),
        "{}",
        d.log()
    );
    let id = loop_jobs(&ws)[0]["id"].as_u64().expect("id");
    let path = ws.path().join(format!(".loops/jobs/{id}.json"));
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_default()).unwrap_or_default()
    };
    // The command's process group is in the lease once it is spawned.
    assert!(wait_until(LONG, || read()["lease"]["pgid"].is_number()));
    d.signal(loops_testutil::process::Signal::KILL);
    assert!(d.wait_exit(LONG).is_some());
    // Its parameters damaged (a torn write, a hand edit): no run can be read from it.
    let mut job = read();
    job["params"] = serde_json::json!("garbage");
    std::fs::write(&path, serde_json::to_vec(&job).expect("json")).expect("write");
    // The loop is off, so the next daemon only recovers.
    ws.add_loop(
        "long",
        "enabled: false\nschedule: { every: 1s }\npayload:\n  kind: command\n  command: \"true\"\n",
    );
    let mut d2 = ws.start_daemon();
    d2.wait_for_log("loops daemon started", LONG);
    assert!(!path.exists(), "the damaged job is gone: {}", d2.log());
    assert!(
        d2.log()
            .contains("removed a run's job whose parameters cannot be read"),
        "{}",
        d2.log()
    );
    assert!(jobs(&ws, &["jobs", "list", "--all", "--json"]).is_empty());
    // The command the dead daemon left running, found through the lease, is stopped.
    let pgid = job["lease"]["pgid"]
        .as_i64()
        .expect("the lease names the group") as i32;
    assert!(
        wait_until(LONG, || !crate::common::pid_alive(pgid)
            || crate::common::is_zombie(pgid)),
        "the orphaned command {pgid} still runs"
    );
    d2.kill();
}

#[test]
fn a_damaged_concurrency_key_does_not_let_a_second_run_begin() {
    let ws = TempWorkspace::new();
    let mut first = trigger_slow_loop(&ws, "slowkey");
    let key = ws.path().join(".loops/jobs/busy/slowkey.json");
    assert!(wait_until(LONG, || key.exists()), "the run holds its key");
    std::fs::write(&key, "not a job id").expect("damage the key");
    let second = ws
        .cmd()
        .args(["trigger", "slowkey"])
        .output()
        .expect("trigger");
    assert!(
        !second.status.success(),
        "a second trigger is refused while the first runs, damaged key or not"
    );
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in progress"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(first.wait().expect("wait").success());
    assert_eq!(ws.runs("slowkey").len(), 1);
}
