//! Progress on long CLI work: `loops run --once` over many loops, and `jobs submit --follow`.

use crate::common::{git_commit_all, loops_std_cmd, TempWorkspace};
use std::time::Duration;

fn command_loop(ws: &TempWorkspace, name: &str, script: &str) {
    ws.add_loop(
        name,
        &format!(
            "schedule:\n  every: 1h\npayload:\n  command: [\"sh\", \"-c\", {}]\n",
            serde_json::to_string(script).expect("json string")
        ),
    );
}

#[test]
fn run_once_over_many_loops_reports_each_end_and_what_is_still_running() {
    let ws = TempWorkspace::new();
    for i in 0..8 {
        command_loop(&ws, &format!("quick-{i}"), &format!("echo {i} > out.md"));
    }
    command_loop(&ws, "broken", "echo 'disk on fire' >&2; exit 3");
    // Long enough that, once the others have ended, the pass says what it still waits for.
    command_loop(&ws, "slow", "sleep 13; echo done > out.md");
    git_commit_all(ws.path(), "loops");

    let out = loops_std_cmd(ws.path())
        .args(["run", "--once", "--all"])
        .output()
        .expect("loops run --once");
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed run fails the pass: {err}"
    );
    // 8 quick loops, the broken one, the slow one and the workspace's example loop.
    let total = 11;
    let ends: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with('[') && l.contains(" in ") && l.contains(" ms"))
        .collect();
    assert_eq!(ends.len(), total, "one line per run: {err}");
    for (n, line) in ends.iter().enumerate() {
        assert!(
            line.starts_with(&format!("[{:>2}/{total}]", n + 1)),
            "counted in order: {line}\n{err}"
        );
    }
    assert!(
        ends.iter()
            .any(|l| l.contains("broken failed") && l.contains("disk on fire")),
        "{err}"
    );
    assert!(
        ends.iter()
            .any(|l| l.contains("quick-3 acted") && l.contains("commit ")),
        "{err}"
    );
    assert!(
        ends.last().is_some_and(|l| l.contains("slow acted")),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.contains("running: slow for")
            && l.starts_with(&format!("[{}/{total}]", total - 1))),
        "a pass waiting on a long run says so: {err}"
    );
    // The progress lines replace the per-run log lines; the summary table is on stdout.
    assert!(!err.contains("run finished"), "{err}");
    assert!(
        stdout.contains("LOOP") && stdout.contains("slow"),
        "{stdout}"
    );
}

#[test]
fn following_a_job_shows_its_state_and_attempt_as_they_change() {
    let ws = TempWorkspace::new();
    ws.write("loops.yaml", "allow_shell_jobs: true\n");
    git_commit_all(ws.path(), "allow shell jobs");
    let submit = |daemon: bool| {
        let out = loops_std_cmd(ws.path())
            .args([
                "jobs",
                "submit",
                "shell",
                "--params",
                r#"{"cmd": "echo first; sleep 1; echo second"}"#,
                "--follow",
            ])
            .output()
            .expect("jobs submit --follow");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "daemon {daemon}: {err}");
        assert!(
            stdout.contains("first") && stdout.contains("second"),
            "the output streams on stdout: {stdout}"
        );
        assert!(
            err.lines()
                .any(|l| l.starts_with("job #") && l.contains("active · attempt 1/3")),
            "daemon {daemon}: {err}"
        );
        assert!(stdout.contains("completed"), "{stdout}");
    };
    // Run here (no daemon), then followed through the files of a daemon's run.
    submit(false);
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", Duration::from_secs(60));
    submit(true);
    d.kill();
}
