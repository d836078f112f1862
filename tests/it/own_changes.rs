//! A run commits only its own changes: the person's uncommitted edits in the same files,
//! and files the person writes while a loop runs, stay out of the loop's commits and stay
//! in the work tree as the person left them. The real `loops` binary, real git
//! repositories, and the git CLI as the person.

use crate::common::{git, git_commit_all, loops_std_cmd, wait_until, TempWorkspace};
use loops_testutil::fake_model::{anthropic, slow, FakeModel, Reply};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// A command loop `x` (never due by itself) running `command` in domains/x/, with a
/// `state.md` holding `state`; everything committed.
fn command_loop(ws: &TempWorkspace, command: &str, state: &str) {
    ws.add_loop(
        "x",
        &format!(
            "schedule: {{ at: \"2099-01-01T00:00:00Z\" }}\npayload:\n  kind: command\n  command: {}\n",
            serde_json::to_string(command).expect("a string")
        ),
    );
    ws.write("domains/x/state.md", state);
    git_commit_all(ws.path(), "loop x");
}

fn trigger(ws: &TempWorkspace, name: &str, env: &[(&str, &str)]) -> Value {
    let mut c = ws.cmd();
    c.args(["trigger", name, "--json"])
        .timeout(Duration::from_secs(120));
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run loops trigger");
    assert!(
        out.status.success(),
        "trigger failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("trigger --json prints the run record")
}

fn read(ws: &TempWorkspace, rel: &str) -> String {
    std::fs::read_to_string(ws.path().join(rel)).expect("read a work tree file")
}

/// The paths each commit carrying a `Loop:` trailer changed.
fn loop_commit_paths(dir: &Path) -> Vec<String> {
    git(
        dir,
        &["log", "--grep", "^Loop: ", "--name-only", "--format="],
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(str::to_string)
    .collect()
}

fn fsck_clean(dir: &Path) {
    assert_eq!(
        git(dir, &["fsck", "--no-progress", "--no-dangling"]).trim(),
        "",
        "git fsck reports problems"
    );
}

fn held(rec: &Value) -> Vec<(String, String)> {
    rec["held_back"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    (
                        h["path"].as_str().unwrap_or("").to_string(),
                        h["why"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn own_changes_a_persons_uncommitted_line_stays_out_of_the_runs_commit() {
    let ws = TempWorkspace::new();
    command_loop(&ws, "echo '- run line' >> state.md", "# x\n");
    // The person adds a line at the top and does not commit it.
    ws.write("domains/x/state.md", "person line\n# x\n");
    let rec = trigger(&ws, "x", &[]);
    assert!(rec["commit"].is_string(), "{rec}");
    assert!(held(&rec).is_empty(), "{rec}");
    assert_eq!(
        git(ws.path(), &["show", "HEAD:domains/x/state.md"]),
        "# x\n- run line\n",
        "the commit holds the run's line only"
    );
    assert_eq!(
        read(&ws, "domains/x/state.md"),
        "person line\n# x\n- run line\n"
    );
    // The index follows the commit: the person's line is an unstaged modification.
    let diff = git(
        ws.path(),
        &["diff", "-U0", "--no-color", "domains/x/state.md"],
    );
    let changes: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(changes, vec!["+person line"], "{diff}");
    assert_eq!(git(ws.path(), &["diff", "--cached", "--name-only"]), "");
    fsck_clean(ws.path());
}

#[test]
fn own_changes_a_conflicting_edit_is_held_back_and_left_as_it_is() {
    let ws = TempWorkspace::new();
    // The run marks the status line it finds, and writes a log of its own.
    command_loop(
        &ws,
        "sed -i 's/^status: \\(.*\\)$/status: \\1 (checked)/' state.md; echo checked >> log.md",
        "# x\nstatus: old\n",
    );
    ws.write(
        "domains/x/state.md",
        "# x\nstatus: the person's new status\n",
    );
    let before = git(ws.path(), &["rev-parse", "HEAD"]);
    let rec = trigger(&ws, "x", &[]);
    let h = held(&rec);
    assert_eq!(h.len(), 1, "{rec}");
    assert_eq!(h[0].0, "domains/x/state.md", "{rec}");
    assert!(h[0].1.contains("conflict"), "the reason is given: {rec}");
    assert!(
        !rec["changed"].to_string().contains("state.md"),
        "a held-back path is not listed as committed: {rec}"
    );
    // The rest of the run is committed; state.md is as HEAD had it.
    assert_ne!(git(ws.path(), &["rev-parse", "HEAD"]), before);
    assert_eq!(
        git(ws.path(), &["show", "--name-only", "--format=", "HEAD"]).trim(),
        "domains/x/log.md"
    );
    assert_eq!(
        git(ws.path(), &["show", "HEAD:domains/x/state.md"]),
        "# x\nstatus: old\n"
    );
    // The committer never writes the file, and leaves its index entry alone.
    assert_eq!(
        read(&ws, "domains/x/state.md"),
        "# x\nstatus: the person's new status (checked)\n"
    );
    assert_eq!(git(ws.path(), &["diff", "--cached", "--name-only"]), "");
    assert_eq!(
        git(ws.path(), &["status", "--porcelain", "domains/x/state.md"]),
        " M domains/x/state.md\n"
    );
    // `loops status` names it.
    let out = ws.cmd().arg("status").output().expect("loops status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("held back by x") && text.contains("domains/x/state.md"),
        "{text}"
    );
    fsck_clean(ws.path());
}

#[test]
fn own_changes_files_the_person_writes_during_a_command_run_are_not_its() {
    let ws = TempWorkspace::new();
    let flags = tempfile::tempdir().expect("tempdir");
    let started = flags.path().join("started");
    // A slow command that lists what it wrote in $LOOPS_WROTE.
    command_loop(
        &ws,
        &format!(
            "touch '{}'; sleep 2; echo '- run' >> state.md; echo state.md >> \"$LOOPS_WROTE\"",
            started.display()
        ),
        "# x\n",
    );
    ws.write("domains/x/prompt.md", "Old words.\n");
    git_commit_all(ws.path(), "prompt");
    let child = loops_std_cmd(ws.path())
        .args(["trigger", "x", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start loops trigger");
    assert!(wait_until(Duration::from_secs(30), || started.exists()));
    // The person, while the command sleeps.
    ws.write("domains/x/notes.md", "the person's notes\n");
    ws.write("domains/x/prompt.md", "New words, the person's.\n");
    let out = child.wait_with_output().expect("wait for loops trigger");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec: Value = serde_json::from_slice(&out.stdout).expect("a run record");
    assert_eq!(
        git(ws.path(), &["show", "--name-only", "--format=", "HEAD"]).trim(),
        "domains/x/state.md",
        "{rec}"
    );
    let mut h: Vec<String> = held(&rec).into_iter().map(|(p, _)| p).collect();
    h.sort();
    assert_eq!(
        h,
        vec!["domains/x/notes.md", "domains/x/prompt.md"],
        "{rec}"
    );
    assert_eq!(read(&ws, "domains/x/notes.md"), "the person's notes\n");
    assert_eq!(
        read(&ws, "domains/x/prompt.md"),
        "New words, the person's.\n"
    );
    let status = git(ws.path(), &["status", "--porcelain", "domains/x"]);
    assert!(status.contains(" M domains/x/prompt.md"), "{status}");
    assert!(status.contains("?? domains/x/notes.md"), "{status}");
    let paths = loop_commit_paths(ws.path());
    assert!(
        !paths
            .iter()
            .any(|p| p.ends_with("notes.md") || p.ends_with("prompt.md")),
        "{paths:?}"
    );
    fsck_clean(ws.path());
}

#[test]
fn own_changes_a_command_changing_its_own_definition_is_held_back() {
    let ws = TempWorkspace::new();
    // No $LOOPS_WROTE: everything the command changed is its, but its definition.
    command_loop(
        &ws,
        "echo '- run' >> state.md; echo '# changed' >> config.yaml",
        "# x\n",
    );
    let rec = trigger(&ws, "x", &[]);
    let h = held(&rec);
    assert_eq!(h.len(), 1, "{rec}");
    assert_eq!(h[0].0, "domains/x/config.yaml");
    assert_eq!(
        git(ws.path(), &["show", "--name-only", "--format=", "HEAD"]).trim(),
        "domains/x/state.md"
    );
    fsck_clean(ws.path());
}

const KEY: &str = "sk-test-own-changes";

fn turn(calls: &[(&str, Value)]) -> Reply {
    let ids: Vec<String> = (0..calls.len()).map(|i| format!("c{i}")).collect();
    let with_ids: Vec<(&str, &str, Value)> = calls
        .iter()
        .zip(&ids)
        .map(|((n, v), id)| (id.as_str(), *n, v.clone()))
        .collect();
    anthropic::tool_use(&with_ids, (10, 5, 0, 0))
}

#[test]
fn own_changes_a_prompt_run_commits_only_what_its_tools_wrote() {
    // The model writes state.md, then takes two seconds over its last turn, while the
    // person writes notes.md in the same folder.
    let fake = FakeModel::start(vec![
        turn(&[(
            "write_file",
            json!({"path": "domains/p/state.md", "content": "# state\nthe model's\n"}),
        )]),
        slow(
            turn(&[("finish", json!({"summary": "done"}))]),
            Duration::from_secs(2),
        ),
    ]);
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        &format!(
            "providers:\n  fake: {{ kind: anthropic, base_url: \"{}\", api_key_env: LOOPS_TEST_KEY, model: test-model }}\n",
            fake.url()
        ),
    );
    ws.add_loop(
        "p",
        "schedule: { at: \"2099-01-01T00:00:00Z\" }\npayload: { kind: prompt }\ntools: [read_file, write_file, finish]\n",
    );
    ws.write("domains/p/prompt.md", "Write your state, then finish.\n");
    ws.write("domains/p/state.md", "# state\n");
    ws.write("domains/p/notes.md", "# notes\n");
    git_commit_all(ws.path(), "loop p");
    let child = loops_std_cmd(ws.path())
        .args(["trigger", "p", "--json"])
        .env("LOOPS_TEST_KEY", KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start loops trigger");
    assert_eq!(fake.wait_for_requests(2, Duration::from_secs(60)).len(), 2);
    ws.write("domains/p/notes.md", "# notes\nthe person's\n");
    let out = child.wait_with_output().expect("wait for loops trigger");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec: Value = serde_json::from_slice(&out.stdout).expect("a run record");
    assert!(rec["commit"].is_string(), "{rec}");
    assert_eq!(
        git(ws.path(), &["show", "--name-only", "--format=", "HEAD"]).trim(),
        "domains/p/state.md",
        "{rec}"
    );
    let h = held(&rec);
    assert_eq!(h.len(), 1, "{rec}");
    assert_eq!(h[0].0, "domains/p/notes.md");
    assert_eq!(read(&ws, "domains/p/notes.md"), "# notes\nthe person's\n");
    assert_eq!(
        git(ws.path(), &["status", "--porcelain", "domains/p"]),
        " M domains/p/notes.md\n"
    );
    assert!(!loop_commit_paths(ws.path())
        .iter()
        .any(|p| p.ends_with("notes.md")));
    fsck_clean(ws.path());
}
