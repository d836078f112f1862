//! A daemon left alone while the person edits loops.yaml and the inbox folder: a good edit
//! is in force without a restart, a broken one is refused whole (the last good settings
//! stay) and said in the log and `loops status`, settings only a restart changes are
//! named; an inbox/ removed and made again still wakes the main session; without `main:`
//! each waiting handoff is said. The real daemon, real files, the real CLI.

use crate::common::{drop_handoff, main_script, main_seen, wait_until, TempWorkspace};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Whether the test main session in `tools` was handed the handoff `id`.
fn handed(tools: &std::path::Path, id: &str) -> bool {
    main_seen(tools).iter().any(|(_, _, h)| h == id)
}

/// A workspace whose main session is the test script in `tools` (no heartbeat), with an
/// inbox/, and its daemon started.
fn started_with_main() -> (
    TempWorkspace,
    tempfile::TempDir,
    crate::common::DaemonProcess,
) {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), "", true)
    ));
    std::fs::create_dir_all(ws.path().join("inbox")).unwrap();
    let d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    (ws, tools, d)
}

fn status_text(ws: &TempWorkspace) -> String {
    let out = ws.cmd().arg("status").output().expect("loops status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn reload_a_good_edit_takes_effect_and_a_broken_one_keeps_the_last_good_settings() {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write("loops.yaml", "limits:\n  shutdown_grace: 2s\n");
    crate::common::git_commit_all(ws.path(), "settings");
    let d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);

    // Shell jobs are off at start; turned on by an edit, without a restart.
    ws.write(
        "loops.yaml",
        "limits:\n  shutdown_grace: 2s\nallow_shell_jobs: true\n",
    );
    d.wait_for_log("loops.yaml reloaded", LONG);
    let state = |id: u64| ws.json(&["jobs", "get", &id.to_string()])["state"].clone();
    let v = ws.json(&[
        "jobs",
        "submit",
        "shell",
        "--params",
        r#"{"cmd": "echo hi"}"#,
    ]);
    let second = v["id"].as_u64().expect("a job id");
    assert!(
        wait_until(LONG, || state(second) == "completed"),
        "the shell job after the edit: {}\n{}",
        state(second),
        d.log()
    );

    // A broken edit (a key typo) is refused whole: shell jobs stay on.
    ws.write(
        "loops.yaml",
        "limits:\n  shutdown_grace: 2s\nallow_shell_jobs: true\ngit: { comit: false }\n",
    );
    d.wait_for_log("the edit is not applied", LONG);
    let log = d.log();
    assert!(log.contains("loops.yaml"), "{log}");
    assert!(log.contains("comit"), "the error names the key: {log}");
    let status = status_text(&ws);
    assert!(
        status.contains("is not applied") && status.contains("last good settings"),
        "{status}"
    );
    let v = ws.json(&[
        "jobs",
        "submit",
        "shell",
        "--params",
        r#"{"cmd": "echo hi"}"#,
    ]);
    let third = v["id"].as_u64().expect("a job id");
    assert!(
        wait_until(LONG, || state(third) == "completed"),
        "the last good settings stayed: {}\n{}",
        state(third),
        d.log()
    );
    // Said once, not per event.
    assert_eq!(d.log().matches("the edit is not applied").count(), 1);

    // Fixed, with a key only a restart changes: said in the log and in status.
    ws.write(
        "loops.yaml",
        "limits:\n  shutdown_grace: 2s\n  max_concurrent_jobs: 3\nallow_shell_jobs: true\n",
    );
    d.wait_for_log("take effect only when the daemon restarts", LONG);
    let status = status_text(&ws);
    assert!(!status.contains("is not applied"), "{status}");
    assert!(
        status.contains(
            "limits.max_concurrent_jobs changed; it takes effect when the daemon restarts"
        ),
        "{status}"
    );
    let v = ws.json(&["status"]);
    assert_eq!(
        v["settings"]["restart_needed"][0], "limits.max_concurrent_jobs",
        "{v}"
    );
}

#[test]
fn reload_adding_main_starts_waking_and_without_it_each_handoff_is_said() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write("loops.yaml", "limits:\n  shutdown_grace: 2s\n");
    crate::common::git_commit_all(ws.path(), "settings");
    let d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    drop_handoff(ws.path(), "early", "# Early\n\nFor whoever reads it.\n");
    d.wait_for_log("inbox/early.md waits: loops.yaml has no `main:`", LONG);
    assert!(
        status_text(&ws).contains("nothing receives them"),
        "{}",
        status_text(&ws)
    );

    // `main:` added by an edit: the waiting handoff is handed over, no restart.
    ws.write(
        "loops.yaml",
        &format!(
            "limits:\n  shutdown_grace: 2s\nmain:\n  command: {}\n",
            main_script(tools.path(), "", true)
        ),
    );
    assert!(
        wait_until(LONG, || handed(tools.path(), "early")),
        "{:?}\n{}",
        main_seen(tools.path()),
        d.log()
    );
}

#[test]
fn reload_an_inbox_removed_and_made_again_still_wakes_the_main_session() {
    // No heartbeat: only the watcher can notice the handoff.
    let (ws, tools, d) = started_with_main();
    drop_handoff(ws.path(), "before", "# Before\n\nFirst.\n");
    assert!(
        wait_until(LONG, || ws.done_stems().contains(&"before".to_string())),
        "{}",
        d.log()
    );
    // Moved aside and made again, as a person tidying up would.
    std::fs::rename(ws.path().join("inbox"), ws.path().join("inbox.old")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::create_dir_all(ws.path().join("inbox")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop_handoff(ws.path(), "after", "# After\n\nSecond.\n");
    assert!(
        wait_until(LONG, || handed(tools.path(), "after")),
        "the handoff in the new inbox/ was never handed over\n{}",
        d.log()
    );
}

#[test]
fn reload_a_handoff_written_in_place_is_claimed_only_once_its_writer_closes_it() {
    let (ws, tools, d) = started_with_main();
    // Written in place, in two parts with a pause between, as a slow tool would: a file
    // without front matter parses, so the first part alone looks like a whole handoff.
    let writer = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 3>inbox/slow.md; printf '# Slow\\n\\npart one\\n' >&3; sleep 3; printf 'part two\\n' >&3")
        .current_dir(ws.path())
        .spawn()
        .expect("writer");
    let mut writer = writer;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        main_seen(tools.path()).is_empty() && ws.inbox_files("").contains(&"slow.md".to_string()),
        "claimed while its writer still had it open: {:?}\n{}",
        main_seen(tools.path()),
        d.log()
    );
    assert!(writer.wait().expect("writer").success());
    assert!(
        wait_until(LONG, || ws.done_stems().contains(&"slow".to_string())),
        "{}",
        d.log()
    );
    let stdin: String = std::fs::read_dir(tools.path().join("stdin"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    assert!(
        stdin.contains("part one") && stdin.contains("part two"),
        "the main session was handed a half-written handoff: {stdin}"
    );
}
