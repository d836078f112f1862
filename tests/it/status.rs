//! `loops status`: one screen, and the same as JSON.

use crate::common::{wait_until, TempWorkspace};
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
