//! The person pulls while the daemon commits: a bare remote, a second clone that pushes to
//! the same loop's folder, and `git pull` (merge, then rebase, alternately) 30 times in the
//! workspace while a 1 s command loop appends to its `state.md`. Afterwards git itself says
//! the repository is sound, and every run's line is on the branch exactly once.

use crate::common::{git, git_commit_all, TempWorkspace};
use loops_testutil::Signal;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PULLS: usize = 30;

/// `git ARGS` as the person, with its exit status and output (a refused pull is an answer).
fn person(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Person",
            "-c",
            "user.email=person@example.com",
        ])
        .args(args)
        .env("GIT_EDITOR", "true")
        .output()
        .expect("run git");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Whether git refused only because the loop's file was mid-write (the person retries, as
/// they would): anything else is a failure of the test.
fn retryable(text: &str) -> bool {
    [
        "unstaged changes",
        "uncommitted changes",
        "would be overwritten",
        "index.lock",
        // git never waits for the index lock: a pull that meets loops' few-millisecond
        // hold of it is refused whole, and the person runs it again.
        "could not write index",
        "stash failed",
        "cannot lock ref",
        "Please commit your changes or stash them",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// Runs a pull until git takes it (at most 50 tries); an operation git left half-done is
/// aborted first, which must always work.
fn pull(ws: &Path, rebase: bool) {
    let args: &[&str] = if rebase {
        &["pull", "--rebase", "-q", "origin", "main"]
    } else {
        &["pull", "--no-rebase", "--no-edit", "-q", "origin", "main"]
    };
    let mut last = String::new();
    for _ in 0..50 {
        let (ok, text) = person(ws, args);
        last = text.clone();
        if ok {
            return;
        }
        if ws.join(".git/rebase-merge").exists() || ws.join(".git/rebase-apply").exists() {
            let (aborted, why) = person(ws, &["rebase", "--abort"]);
            assert!(aborted, "git rebase --abort failed: {why}");
        }
        if ws.join(".git/MERGE_HEAD").exists() {
            let (aborted, why) = person(ws, &["merge", "--abort"]);
            assert!(aborted, "git merge --abort failed: {why}");
        }
        assert!(retryable(&text), "git {args:?} failed: {text}");
        std::thread::sleep(Duration::from_millis(150));
    }
    let status = person(ws, &["status", "--short"]).1;
    let diff = person(ws, &["diff"]).1;
    panic!("git {args:?} never went through; last: {last}\nstatus:\n{status}\ndiff:\n{diff}");
}

#[test]
fn pulls_with_merge_and_rebase_beside_a_committing_daemon_lose_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote.git");
    let ledger = tmp.path().join("ledger.txt");
    git(
        tmp.path(),
        &["init", "-q", "--bare", "-b", "main", "remote.git"],
    );

    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.add_loop(
        "ticker",
        &format!(
            "schedule: {{ every: 1s }}\npayload: {{ command: [\"sh\", \"-c\", \"echo \\\"run $LOOPS_RUN_ID\\\" >> state.md; echo \\\"$LOOPS_RUN_ID\\\" >> {}\"] }}\n",
            ledger.display()
        ),
    );
    ws.write("domains/ticker/state.md", "# ticker\n");
    ws.write("loops.yaml", "limits:\n  shutdown_grace: 2s\n");
    git_commit_all(ws.path(), "ticker");
    git(ws.path(), &["branch", "-M", "main"]);
    git(
        ws.path(),
        &["remote", "add", "origin", &remote.display().to_string()],
    );
    git(ws.path(), &["push", "-q", "origin", "main"]);
    let other = tmp.path().join("other");
    git(
        tmp.path(),
        &["clone", "-q", &remote.display().to_string(), "other"],
    );

    let mut daemon = ws.start_daemon();
    let t0 = Instant::now();
    for i in 0..PULLS {
        // The other clone writes to the same loop's folder and pushes.
        let notes = other.join("domains/ticker/notes.md");
        let mut text = std::fs::read_to_string(&notes).unwrap_or_default();
        text.push_str(&format!("note {i}\n"));
        std::fs::write(&notes, text).expect("notes");
        let (ok, why) = person(&other, &["commit", "-qam", &format!("note {i}")]);
        if !ok {
            // The first note is a new file.
            person(&other, &["add", "domains/ticker/notes.md"]);
            let (ok, why2) = person(&other, &["commit", "-qm", &format!("note {i}")]);
            assert!(ok, "{why}\n{why2}");
        }
        let (ok, why) = person(&other, &["push", "-q", "origin", "main"]);
        assert!(ok, "push from the other clone: {why}");
        pull(ws.path(), i % 2 == 1);
    }
    // Let a few more runs land after the last pull, then stop the daemon.
    std::thread::sleep(Duration::from_secs(2));
    daemon.signal(Signal::TERM);
    daemon
        .wait_exit(Duration::from_secs(60))
        .expect("the daemon stops on SIGTERM");
    let elapsed = t0.elapsed();

    // git says the repository is sound, and the work tree is as the person left it: clean.
    let (ok, fsck) = person(ws.path(), &["fsck", "--no-progress"]);
    assert!(ok, "git fsck: {fsck}");
    let status = git(ws.path(), &["status", "--porcelain"]);
    assert!(
        status.trim().is_empty(),
        "git status after the pulls:\n{status}\ndiff:\n{}\ndaemon log:\n{}",
        git(ws.path(), &["diff"]),
        daemon.log()
    );
    let history = git(ws.path(), &["log", "-p", "main"]);
    assert!(!history.contains("<<<<<<<"), "conflict markers in history");

    // Every run's line is on the branch exactly once; every note arrived.
    let state = git(ws.path(), &["show", "main:domains/ticker/state.md"]);
    let runs: Vec<String> = std::fs::read_to_string(&ledger)
        .expect("ledger")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(runs.len() >= 3, "only {} runs in {elapsed:?}", runs.len());
    for r in &runs {
        let n = state.lines().filter(|l| *l == format!("run {r}")).count();
        assert_eq!(
            n,
            1,
            "run {r} is on the branch {n} times:\n{state}\nits record: {:?}\ndaemon log:\n{}\nhistory:\n{}",
            ws.runs("ticker")
                .iter()
                .find(|x| x["run_id"] == r.as_str())
                .cloned(),
            daemon.log(),
            git(ws.path(), &["log", "--format=%h %s%n%b", "-n", "60", "main"])
        );
    }
    let notes = git(ws.path(), &["show", "main:domains/ticker/notes.md"]);
    assert_eq!(notes.lines().count(), PULLS, "{notes}");
    // And nothing was committed on no branch: every commit is reachable from main.
    let loose = git(ws.path(), &["log", "--all", "--not", "main", "--oneline"]);
    assert!(loose.trim().is_empty(), "commits off the branch:\n{loose}");
}
