//! `loops status`: one screen, and the same as JSON.

use crate::common::{wait_until, TempWorkspace};
use loops_testutil::process::signal_child;
use loops_testutil::Signal;
use std::time::Duration;

fn status_json(ws: &TempWorkspace) -> serde_json::Value {
    let out = ws
        .cmd()
        .args(["status", "--json"])
        .output()
        .expect("loops status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

#[test]
fn status_shows_the_daemon_loops_inbox_jobs_and_recent_work() {
    let ws = TempWorkspace::new();
    // Without a daemon it says so, and what to do.
    let out = ws.cmd().arg("status").output().expect("loops status");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success());
    assert!(
        text.contains("not running") && text.contains("loops run"),
        "{text}"
    );
    assert!(text.contains("example"), "{text}");
    assert!(status_json(&ws)["daemon"].is_null());

    let ws_done = ws
        .cmd()
        .args([
            "handoff",
            "create",
            "--from",
            "tester",
            "--title",
            "Look at this",
        ])
        .output()
        .expect("handoff");
    assert!(ws_done.status.success());
    // A run to show, made now rather than waiting for the loop's schedule.
    let trig = ws
        .cmd()
        .args(["trigger", "example"])
        .output()
        .expect("trigger");
    assert!(
        trig.status.success(),
        "{}",
        String::from_utf8_lossy(&trig.stderr)
    );
    let mut d = ws.start_daemon();
    let started = wait_until(Duration::from_secs(60), || {
        let v = status_json(&ws);
        v["daemon"]["pid"].as_i64() == Some(d.pid() as i64)
    });
    let v = status_json(&ws);
    assert!(started, "{v:#}\n{}", d.log());
    assert!(
        v["daemon"]["uptime_secs"].as_i64().is_some_and(|s| s >= 0),
        "{v}"
    );
    assert_eq!(v["version"], v["daemon"]["version"]);
    assert_eq!(v["loops"][0]["name"], "example", "{v}");
    assert!(v["inbox"]["pending"].is_number(), "{v}");
    assert!(v["jobs"]["waiting"].is_number(), "{v}");
    assert_eq!(v["recent_runs"][0]["loop"], "example", "{v}");
    assert!(v["records"]["bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
    assert_eq!(v["records"]["max_age"], "90d", "{v}");
    assert!(
        v["recent_commits"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    let text = String::from_utf8_lossy(&ws.cmd().arg("status").output().expect("status").stdout)
        .into_owned();
    assert!(
        text.contains(&format!("running, pid {}", d.pid())),
        "{text}"
    );
    assert!(
        text.contains("Recent runs")
            && text.contains("Recent commits")
            && text.contains("records    .loops/"),
        "{text}"
    );
    d.kill();
}

/// `status` shows what runs now (a loop's run, a job) with how long it has run, and the
/// daemon's uptime rounded as a person reads it (`up 12s`, not `up 12s345ms`).
#[test]
fn status_shows_what_runs_now_and_a_rounded_uptime() {
    let ws = TempWorkspace::new();
    ws.write(
        "loops.yaml",
        "allow_shell_jobs: true\nlimits:\n  shutdown_grace: 1s\n",
    );
    ws.add_loop(
        "slow",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"sleep 30\" }\n",
    );
    crate::common::git_commit_all(ws.path(), "setup");
    let mut d = ws.start_daemon();
    assert!(
        wait_until(Duration::from_secs(60), || !status_json(&ws)["daemon"]
            .is_null()),
        "{}",
        d.log()
    );
    ws.cmd()
        .args([
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "sleep 30"}"#,
        ])
        .assert()
        .success();
    let mut trigger = crate::common::loops_std_cmd(ws.path())
        .args(["trigger", "slow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("trigger");
    let seen = wait_until(Duration::from_secs(60), || {
        let v = status_json(&ws);
        let what: Vec<&str> = v["running"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["what"].as_str())
            .collect();
        what.contains(&"run") && what.contains(&"job")
    });
    let v = status_json(&ws);
    assert!(seen, "{v:#}\n{}", d.log());
    for r in v["running"].as_array().unwrap() {
        assert!(r["running_secs"].as_i64().is_some_and(|s| s >= 0), "{r}");
    }
    let text = String::from_utf8_lossy(&ws.cmd().arg("status").output().expect("status").stdout)
        .into_owned();
    let running: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "Running now")
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(
        running.iter().any(|l| l.starts_with("run slow"))
            && running.iter().any(|l| l.starts_with("job #1 (sleep 30)")),
        "{text}"
    );
    let up = text
        .lines()
        .find(|l| l.starts_with("daemon"))
        .and_then(|l| l.split(", up ").nth(1))
        .unwrap_or_else(|| panic!("no uptime: {text}"));
    let up_ok = regex::Regex::new(r"^\d+[smhd]( \d+[smhd])?$").unwrap();
    assert!(up_ok.is_match(up), "uptime {up:?}");
    signal_child(&trigger, Signal::TERM);
    let _ = trigger.wait();
    // A clean stop ends the job's `sleep` too (shutdown_grace 1s), leaving nothing behind.
    d.signal(Signal::TERM);
    d.wait_exit(Duration::from_secs(30));
    d.kill();
}
