//! Git history through `loops trigger` and `loops run --once`: what a run's commit holds,
//! what it leaves alone, its signature, concurrent committers, and `loops log`.

use crate::common::{git, git_commit_all, git_trailers, loops_std_cmd, TempWorkspace};
use serde_json::Value;

/// A command loop that appends to its state.md and prints `line`.
fn writer_loop(ws: &TempWorkspace, name: &str, line: &str) {
    ws.add_loop(
        name,
        &format!(
            "schedule: {{ every: 1h }}\npayload:\n  kind: command\n  command: \"echo '{line}'; echo \\\"- $LOOPS_RUN_ID\\\" >> state.md\"\n"
        ),
    );
    ws.write(&format!("domains/{name}/state.md"), &format!("# {name}\n"));
}

fn trigger_json(ws: &TempWorkspace, name: &str) -> Value {
    let out = ws.cmd().args(["trigger", name, "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "trigger {name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("trigger --json prints the run record")
}

fn head(ws: &TempWorkspace) -> String {
    git(ws.path(), &["rev-parse", "HEAD"]).trim().to_string()
}

#[test]
fn history_run_commit_has_subject_trailers_and_only_the_runs_paths() {
    let ws = TempWorkspace::new();
    writer_loop(&ws, "notes", "noted the weather");
    // A file the domain's .gitignore excludes is never committed, even though the run writes it.
    ws.write("domains/notes/.gitignore", "cache/\n");
    let cfg = ws.add_loop(
        "notes",
        "schedule: { every: 1h }\npayload:\n  kind: command\n  command: \"echo 'noted the weather'; echo \\\"- $LOOPS_RUN_ID\\\" >> state.md; mkdir -p cache; echo tmp > cache/x\"\n",
    );
    assert!(cfg.exists());
    git_commit_all(ws.path(), "add notes loop");
    let before = head(&ws);

    // A person's work in progress: an unstaged edit, a staged new file, a staged edit.
    ws.write("USER.md", "# User\n\nhalf-written thought\n");
    ws.write("scratch.txt", "staged by a person\n");
    git(ws.path(), &["add", "scratch.txt"]);
    ws.write("SOUL.md", "# Soul\n\nstaged edit\n");
    git(ws.path(), &["add", "SOUL.md"]);

    let rec = trigger_json(&ws, "notes");
    assert_eq!(rec["outcome"], "acted");
    let commit = rec["commit"]
        .as_str()
        .expect("the run was committed")
        .to_string();
    assert_eq!(head(&ws), commit);
    assert_eq!(
        git(ws.path(), &["rev-parse", "HEAD~1"]).trim(),
        before,
        "exactly one commit on top"
    );

    // Subject and trailers.
    let subject = git(ws.path(), &["log", "-1", "--format=%s"]);
    assert_eq!(subject.trim(), "notes: noted the weather");
    let t = git_trailers(ws.path(), "HEAD");
    let get = |k: &str| {
        t.iter()
            .find(|(tk, _)| tk == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("trailer {k} missing in {t:?}"))
    };
    assert_eq!(get("Loop"), "notes");
    assert_eq!(get("Run"), rec["run_id"].as_str().unwrap());
    assert_eq!(get("Trigger"), "manual");
    assert_eq!(get("Outcome"), "acted");
    assert!(get("Duration-Ms").parse::<u64>().is_ok(), "{t:?}");
    assert_eq!(get("Exit-Code"), "0");
    // `git log --grep` finds it as the design promises.
    let grep = git(ws.path(), &["log", "--format=%H", "--grep", "Loop: notes"]);
    assert_eq!(grep.trim(), commit);

    // Only the run's path is in the commit.
    let files = git(ws.path(), &["show", "--name-only", "--format=", "HEAD"]);
    assert_eq!(files.trim(), "domains/notes/state.md");
    let tree = git(ws.path(), &["ls-tree", "-r", "--name-only", "HEAD"]);
    assert!(!tree.lines().any(|l| l.starts_with(".loops")), "{tree}");
    assert!(!tree.contains("cache/x"), "{tree}");
    assert!(!tree.contains("scratch.txt"), "{tree}");
    assert!(ws.path().join(".loops/runs/notes.jsonl").exists());

    // The person's edits are exactly as they were; the run's file is clean.
    let status = git(ws.path(), &["status", "--porcelain"]);
    let lines: Vec<&str> = status.lines().collect();
    assert!(lines.contains(&" M USER.md"), "{status}");
    assert!(lines.contains(&"A  scratch.txt"), "{status}");
    assert!(lines.contains(&"M  SOUL.md"), "{status}");
    assert!(!status.contains("state.md"), "{status}");
    assert!(!status.contains(".loops"), "{status}");
    assert_eq!(
        git(ws.path(), &["show", "HEAD:SOUL.md"]),
        git(ws.path(), &["show", "HEAD~1:SOUL.md"]),
        "the staged SOUL.md edit is not in the run's commit"
    );
    assert_eq!(
        git(ws.path(), &["show", ":SOUL.md"]),
        "# Soul\n\nstaged edit\n",
        "the staged edit is still staged"
    );

    // A second run commits again, on top, still leaving the person's work alone.
    let rec2 = trigger_json(&ws, "notes");
    assert_eq!(git(ws.path(), &["rev-parse", "HEAD~1"]).trim(), commit);
    assert_eq!(head(&ws), rec2["commit"].as_str().unwrap());
    let status2 = git(ws.path(), &["status", "--porcelain"]);
    assert_eq!(status2, status);
    assert_eq!(
        git(ws.path(), &["fsck", "--no-progress", "--no-dangling"]).trim(),
        ""
    );
}

#[test]
fn history_silent_run_makes_no_commit_and_output_only_run_neither() {
    let ws = TempWorkspace::new();
    ws.add_loop(
        "quiet",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"true\" }\n",
    );
    ws.add_loop(
        "talker",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"echo just talking\" }\n",
    );
    git_commit_all(ws.path(), "add loops");
    let before = head(&ws);

    let rec = trigger_json(&ws, "quiet");
    assert_eq!(rec["outcome"], "silent");
    assert!(rec.get("commit").is_none() || rec["commit"].is_null());
    assert_eq!(head(&ws), before, "a silent run makes no commit");

    let rec = trigger_json(&ws, "talker");
    assert_eq!(rec["outcome"], "acted");
    assert_eq!(
        head(&ws),
        before,
        "a run that changed no file makes no commit"
    );
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "");

    // Both are still recorded as runs.
    assert_eq!(ws.count_outcome("quiet", "silent"), 1);
    assert_eq!(ws.count_outcome("talker", "acted"), 1);
}

#[test]
fn history_signature_falls_back_without_a_git_identity() {
    let ws = TempWorkspace::new();
    writer_loop(&ws, "notes", "signed");
    git_commit_all(ws.path(), "add notes loop");
    let home = tempfile::tempdir().unwrap();

    let run = |ws: &TempWorkspace| {
        let out = loops_std_cmd(ws.path())
            .args(["trigger", "notes"])
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("GIT_AUTHOR_NAME")
            .env_remove("GIT_AUTHOR_EMAIL")
            .env_remove("GIT_COMMITTER_NAME")
            .env_remove("GIT_COMMITTER_EMAIL")
            .env_remove("EMAIL")
            .env_remove("GIT_CONFIG_GLOBAL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&ws);
    let who = git(ws.path(), &["log", "-1", "--format=%an <%ae>|%cn <%ce>"]);
    assert_eq!(
        who.trim(),
        "loops <loops@localhost>|loops <loops@localhost>"
    );

    // With an identity in the repository's own config, that one is used.
    git(ws.path(), &["config", "user.name", "Repo Person"]);
    git(ws.path(), &["config", "user.email", "repo@example.com"]);
    run(&ws);
    let who = git(ws.path(), &["log", "-1", "--format=%an <%ae>"]);
    assert_eq!(who.trim(), "Repo Person <repo@example.com>");
}

#[test]
fn history_parallel_triggers_make_clean_commits() {
    let ws = TempWorkspace::new();
    writer_loop(&ws, "alpha", "alpha wrote");
    writer_loop(&ws, "beta", "beta wrote");
    git_commit_all(ws.path(), "add loops");
    let base = head(&ws);

    const ROUNDS: usize = 4;
    for _ in 0..ROUNDS {
        let children: Vec<_> = ["alpha", "beta"]
            .iter()
            .map(|n| {
                loops_std_cmd(ws.path())
                    .args(["trigger", n])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let range = format!("{base}..HEAD");
    let subjects = git(ws.path(), &["log", "--format=%s", &range]);
    assert_eq!(subjects.lines().count(), 2 * ROUNDS, "{subjects}");
    assert_eq!(subjects.matches("alpha: alpha wrote").count(), ROUNDS);
    assert_eq!(subjects.matches("beta: beta wrote").count(), ROUNDS);
    // Linear history: every commit has one parent and touches only its own loop's file.
    for c in git(ws.path(), &["rev-list", &range]).lines() {
        let parents = git(ws.path(), &["rev-list", "--parents", "-n", "1", c]);
        assert_eq!(parents.split_whitespace().count(), 2, "{parents}");
        let loop_name = git_trailers(ws.path(), c)
            .into_iter()
            .find(|(k, _)| k == "Loop")
            .unwrap()
            .1;
        let files = git(ws.path(), &["show", "--name-only", "--format=", c]);
        assert_eq!(files.trim(), format!("domains/{loop_name}/state.md"));
    }
    // Every line either run wrote is in HEAD: no commit lost another's change.
    for n in ["alpha", "beta"] {
        let in_head = git(ws.path(), &["show", &format!("HEAD:domains/{n}/state.md")]);
        assert_eq!(
            in_head.lines().filter(|l| l.starts_with("- ")).count(),
            ROUNDS
        );
    }
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "");
    assert_eq!(
        git(ws.path(), &["fsck", "--no-progress", "--no-dangling"]).trim(),
        ""
    );
}

#[test]
fn history_run_once_all_commits_each_loop_and_log_reads_it_back() {
    let ws = TempWorkspace::new();
    writer_loop(&ws, "alpha", "alpha wrote");
    writer_loop(&ws, "beta", "beta wrote");
    ws.add_loop(
        "quiet",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"true\" }\n",
    );
    git_commit_all(ws.path(), "add loops");
    let base = head(&ws);

    let out = ws.cmd().args(["run", "--once", "--all"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let range = format!("{base}..HEAD");
    let subjects = git(ws.path(), &["log", "--format=%s", &range]);
    // alpha, beta and the workspace's example loop change files; quiet does not.
    assert!(subjects.contains("alpha: alpha wrote"), "{subjects}");
    assert!(subjects.contains("beta: beta wrote"), "{subjects}");
    assert!(!subjects.contains("quiet"), "{subjects}");
    assert_eq!(subjects.lines().count(), 3, "{subjects}");
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "");
    assert_eq!(
        git(ws.path(), &["fsck", "--no-progress", "--no-dangling"]).trim(),
        ""
    );
    let t = git_trailers(ws.path(), "HEAD");
    assert!(
        t.contains(&("Trigger".to_string(), "once".to_string())),
        "{t:?}"
    );

    // loops log: every run, newest first, with time, loop, outcome, summary, duration.
    let log = ws.cmd().arg("log").output().unwrap();
    assert!(log.status.success());
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(text.starts_with("TIME"), "{text}");
    for s in ["alpha wrote", "beta wrote", "alpha", "beta", "acted"] {
        assert!(text.contains(s), "{s} missing from:\n{text}");
    }
    assert!(
        !text.contains("new workspace"),
        "commits without a Loop trailer are not runs"
    );

    let json = ws.cmd().args(["log", "alpha", "--json"]).output().unwrap();
    assert!(json.status.success());
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{v:#}");
    let e = &entries[0];
    assert_eq!(e["loop"], "alpha");
    assert_eq!(e["outcome"], "acted");
    assert_eq!(e["summary"], "alpha wrote");
    assert_eq!(e["trigger"], "once");
    assert!(e["duration_ms"].is_u64(), "{e}");
    assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    assert_eq!(
        e["commit"].as_str().unwrap(),
        git(
            ws.path(),
            &["log", "-1", "--format=%H", "--grep", "Loop: alpha"]
        )
        .trim()
    );
    let run_id = e["run"].as_str().unwrap();
    assert!(ws.runs("alpha").iter().any(|r| r["run_id"] == run_id));

    // A loop with no commits, and an unknown loop.
    let q = ws.cmd().args(["log", "quiet"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&q.stdout).contains("No runs in the git history yet for `quiet`")
    );
    let bad = ws.cmd().args(["log", "alpah"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("did you mean `alpha`?"));
}

#[test]
fn history_a_file_the_run_deletes_is_removed_in_its_commit() {
    let ws = TempWorkspace::new();
    ws.add_loop(
        "tidy",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"rm -f old.md; mkdir -p new; echo hi > new/a.md; echo tidied\" }\n",
    );
    ws.write("domains/tidy/old.md", "old\n");
    git_commit_all(ws.path(), "tidy loop");
    let rec = trigger_json(&ws, "tidy");
    assert!(rec["commit"].is_string(), "{rec}");
    let files = git(ws.path(), &["show", "--name-status", "--format=", "HEAD"]);
    let mut lines: Vec<&str> = files.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["A\tdomains/tidy/new/a.md", "D\tdomains/tidy/old.md"]
    );
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "");
}

/// Makes a file look `secs` seconds old.
#[test]
fn history_a_lock_a_killed_index_update_left_does_not_stop_the_index_following_head() {
    // A runner SIGKILLed while libgit2 wrote its copy of the index leaves the copy's lock
    // behind (`.git/loops-index.tmp.lock`; found by the soak test). Every later index
    // update then failed, so commits went on and `git status` showed them as staged
    // deletions with the files untracked.
    let ws = TempWorkspace::new();
    writer_loop(&ws, "w", "wrote");
    git_commit_all(ws.path(), "writer loop");
    std::fs::write(ws.path().join(".git/loops-index.tmp.lock"), b"").unwrap();
    for _ in 0..2 {
        let rec = trigger_json(&ws, "w");
        assert!(rec["commit"].is_string(), "{rec}");
        assert_eq!(
            git(
                ws.path(),
                &["status", "--porcelain", "--untracked-files=all"]
            ),
            "",
            "the index follows the run's commit"
        );
    }
}

fn age(p: &std::path::Path, secs: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .expect("open to age");
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(secs))
        .expect("set mtime");
}

fn journal_events(ws: &TempWorkspace, event: &str) -> Vec<Value> {
    std::fs::read_to_string(ws.path().join(".loops/daemon.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == event)
        .collect()
}

#[test]
fn history_git_locks_left_by_a_crashed_git_are_removed_and_recorded() {
    let ws = TempWorkspace::new();
    writer_loop(&ws, "notes", "noted");
    git_commit_all(ws.path(), "notes loop");
    let branch = git(ws.path(), &["symbolic-ref", "HEAD"]).trim().to_string();
    // A git killed mid-commit leaves its locks: the branch's and the index's.
    let ref_lock = ws.path().join(".git").join(format!("{branch}.lock"));
    let index_lock = ws.path().join(".git/index.lock");
    for l in [&ref_lock, &index_lock] {
        std::fs::write(l, b"").unwrap();
        age(l, 60);
    }

    let rec = trigger_json(&ws, "notes");
    assert!(
        rec["commit"].is_string(),
        "the run is committed despite the leftovers: {rec}"
    );
    assert_eq!(head(&ws), rec["commit"].as_str().unwrap());
    assert!(!ref_lock.exists() && !index_lock.exists());
    let removed: Vec<String> = journal_events(&ws, "git_lock")
        .iter()
        .filter(|e| e["action"] == "removed")
        .filter_map(|e| e["path"].as_str().map(str::to_string))
        .collect();
    assert!(
        removed.iter().any(|p| p.ends_with("index.lock"))
            && removed
                .iter()
                .any(|p| p.ends_with(&format!("{branch}.lock"))),
        "each removal is recorded: {removed:?}"
    );
    // The index was brought up to date too: nothing shows as changed.
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "");
}

#[test]
fn history_a_lock_a_live_git_holds_is_waited_for_and_the_commit_made_later() {
    let ws = TempWorkspace::new();
    ws.add_loop(
        "notes",
        "schedule: { every: 1h }\npayload:\n  kind: command\n  command: \"if [ -f ran ]; then echo second; else echo first; touch ran; fi; echo \\\"- $LOOPS_RUN_ID\\\" >> state.md\"\n",
    );
    ws.write("domains/notes/state.md", "# notes\n");
    git_commit_all(ws.path(), "notes loop");
    let before = head(&ws);
    let branch = git(ws.path(), &["symbolic-ref", "HEAD"]).trim().to_string();
    let lock = ws.path().join(".git").join(format!("{branch}.lock"));
    let out = tempfile::tempdir().unwrap();
    let release = out.path().join("release");
    let kept = out.path().join("kept");
    // A live process holding the branch lock (as git does while it writes), until told.
    let script = format!(
        "exec 3>>{lock}; while [ ! -f {release} ]; do sleep 0.1; done; if [ -f {lock} ]; then touch {kept}; fi; rm -f {lock}",
        lock = lock.display(),
        release = release.display(),
        kept = kept.display()
    );
    let mut holder = std::process::Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    assert!(crate::common::wait_until(
        std::time::Duration::from_secs(30),
        || lock.exists()
    ));
    // Old, but held: it must not be taken for a crashed git's leftover.
    age(&lock, 600);

    let rec = trigger_json(&ws, "notes");
    assert!(rec["commit"].is_null(), "{rec}");
    let note = rec["note"].as_str().unwrap_or("");
    assert!(note.contains("commit deferred"), "{note}");
    assert_eq!(head(&ws), before, "nothing was committed under the lock");
    let waiting = journal_events(&ws, "git_lock");
    assert!(
        waiting
            .iter()
            .any(|e| e["action"] == "waiting" && e["holder_pid"] == holder.id()),
        "the wait is recorded with the holder: {waiting:?}"
    );
    let deferred = std::fs::read_dir(ws.path().join(".loops/commits"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(deferred, 1, "the deferred commit is kept on disk");

    std::fs::write(&release, b"").unwrap();
    holder.wait().unwrap();
    assert!(kept.exists(), "the live holder's lock was left alone");

    // The next commit (here, by the next process) makes the deferred one first. It
    // commits what the paths hold by then, so it holds the second run's change to
    // state.md too, and the second run names it as its commit.
    let rec2 = trigger_json(&ws, "notes");
    let log = git(
        ws.path(),
        &["log", "--format=%s", &format!("{before}..HEAD")],
    );
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["notes: first"],
        "the deferred run is in the history"
    );
    assert_eq!(rec2["commit"].as_str(), Some(head(&ws).as_str()), "{rec2}");
    let state = git(ws.path(), &["show", "HEAD:domains/notes/state.md"]);
    for r in [&rec, &rec2] {
        let id = r["run_id"].as_str().unwrap();
        assert!(state.contains(id), "{id} is committed: {state}");
    }
    let trailers = git_trailers(ws.path(), "HEAD");
    assert!(
        trailers.iter().any(|(k, _)| k == "Deferred"),
        "the late commit says when it was asked for: {trailers:?}"
    );
    assert_eq!(
        std::fs::read_dir(ws.path().join(".loops/commits"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count(),
        0
    );
    assert!(!journal_events(&ws, "commit_made").is_empty());
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "");
}
