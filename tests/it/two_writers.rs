//! One repository, two writers: the daemon commits every second while a person runs git
//! (a conflicted merge, an interactive rebase, a commit with a slow editor, `git add`,
//! checkouts). The person's git must work as if loops were not there, and every run must
//! end up on the branch exactly once.

use crate::common::{git, git_commit_all, wait_until, DaemonProcess, TempWorkspace};
use loops_testutil::Signal;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);
const STATE: &str = "domains/ticker/state.md";

/// A workspace with a 1 s command loop that appends its run id to its state.md and to a
/// ledger outside the workspace (what really ran, whatever git says).
struct Scene {
    ws: TempWorkspace,
    ledger: PathBuf,
    _outside: tempfile::TempDir,
    branch: String,
}

impl Scene {
    fn new(yaml_extra: &str) -> Scene {
        let ws = TempWorkspace::new();
        let outside = tempfile::tempdir().expect("tempdir");
        let ledger = outside.path().join("ledger.txt");
        ws.add_loop(
            "ticker",
            &format!(
                "schedule: {{ every: 1s }}\npayload:\n  kind: command\n  command: \"echo \\\"- $LOOPS_RUN_ID\\\" >> state.md; echo \\\"- $LOOPS_RUN_ID\\\" >> {}\"\n",
                ledger.display()
            ),
        );
        ws.write(STATE, "# ticker\n");
        if !yaml_extra.is_empty() {
            let cfg = ws.path().join("loops.yaml");
            let mut text = std::fs::read_to_string(&cfg).unwrap_or_default();
            text.push('\n');
            text.push_str(yaml_extra);
            std::fs::write(&cfg, text).expect("write loops.yaml");
        }
        ws.write("notes.txt", "base\n");
        git_commit_all(ws.path(), "set up the ticker");
        let branch = git(ws.path(), &["symbolic-ref", "--short", "HEAD"])
            .trim()
            .to_string();
        Scene {
            ws,
            ledger,
            _outside: outside,
            branch,
        }
    }

    fn dir(&self) -> &Path {
        self.ws.path()
    }

    fn ledger(&self) -> Vec<String> {
        lines(&std::fs::read_to_string(&self.ledger).unwrap_or_default())
    }

    /// The run lines state.md holds on `rev`.
    fn committed(&self, rev: &str) -> Vec<String> {
        let out = person(self.dir(), &["show", &format!("{rev}:{STATE}")], &[]);
        lines(&String::from_utf8_lossy(&out.stdout))
    }

    fn head(&self) -> String {
        git(self.dir(), &["rev-parse", "HEAD"]).trim().to_string()
    }

    fn ticker_commits(&self, rev: &str) -> usize {
        git(
            self.dir(),
            &["log", "--format=%H", "--grep=Loop: ticker", rev],
        )
        .lines()
        .count()
    }

    /// Starts the daemon and waits for its first run commit on the branch.
    fn start(&self) -> DaemonProcess {
        let d = self.ws.start_daemon();
        assert!(
            wait_until(LONG, || self.ticker_commits("HEAD") >= 1),
            "the ticker never committed; log:\n{}",
            d.log()
        );
        d
    }

    /// Waits for every run so far to be on `rev`, stops the daemon, and checks that
    /// every run that ever ran is there exactly once.
    fn finish(&self, mut d: DaemonProcess, rev: &str) {
        let ran = self.ledger();
        assert!(
            wait_until(LONG, || {
                let c = self.committed(rev);
                ran.iter().all(|l| c.contains(l))
            }),
            "held runs never reached {rev}; log:\n{}",
            d.log()
        );
        d.signal(Signal::TERM);
        assert!(d.wait_exit(LONG).is_some(), "the daemon stops on SIGTERM");
        let committed = self.committed(rev);
        for l in self.ledger() {
            let n = committed.iter().filter(|c| **c == l).count();
            assert_eq!(
                n,
                1,
                "run line {l:?} is on {rev} {n} times; log:\n{}",
                d.log()
            );
        }
        fsck_clean(self.dir());
    }

    fn status_text(&self) -> String {
        let out = self.ws.cmd().arg("status").output().expect("loops status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status_json(&self) -> serde_json::Value {
        let out = self
            .ws
            .cmd()
            .args(["status", "--json"])
            .output()
            .expect("loops status --json");
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Waits until `loops status` says commits are held for a reason containing `why`.
    fn wait_held(&self, d: &DaemonProcess, why: &str) {
        assert!(
            wait_until(LONG, || self.status_json()["commits"]["held"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(why))),
            "status never said commits are held ({why}): {}\nlog:\n{}",
            self.status_text(),
            d.log()
        );
        let text = self.status_text();
        assert!(text.contains("held: ") && text.contains(why), "{text}");
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("- "))
        .map(str::to_string)
        .collect()
}

/// The person's git: their own identity, no editor unless given.
fn person(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = std::process::Command::new("git");
    c.current_dir(dir)
        .args([
            "-c",
            "user.name=Person",
            "-c",
            "user.email=person@example.com",
        ])
        .args(args)
        .env("GIT_EDITOR", "true");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run git")
}

/// The person's git, tried again when another git (here: loops, for the milliseconds of
/// a commit) holds the index, as a person would after git's "Another git process seems
/// to be running" — git itself never waits for the index lock. ("could not write index":
/// the `git stash create` a merge runs first, meeting the same lock; nothing changed.)
fn person_retry(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    for _ in 0..100 {
        let out = person(dir, args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        let locked = ["index.lock", "unstaged changes", "could not write index"]
            .iter()
            .any(|m| err.contains(m));
        if out.status.success() || !locked {
            return out;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    panic!("git {args:?} kept finding the index locked");
}

fn person_ok(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = person_retry(dir, args, env);
    assert!(
        out.status.success(),
        "git {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fsck_clean(dir: &Path) {
    let out = person(dir, &["fsck", "--no-dangling"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("error"),
        "git fsck: {err}"
    );
}

fn no_conflict_markers(dir: &Path) {
    let log = git(dir, &["log", "-p", "--all"]);
    assert!(!log.contains("<<<<<<<"), "a commit holds conflict markers");
}

/// The person's branch `other` and the branch both change notes.txt: a merge conflicts.
fn conflicting_branch(s: &Scene) {
    person_ok(s.dir(), &["checkout", "-q", "-b", "other"], &[]);
    s.ws.write("notes.txt", "theirs\n");
    person_ok(s.dir(), &["commit", "-q", "-am", "theirs"], &[]);
    person_ok(s.dir(), &["checkout", "-q", &s.branch], &[]);
    s.ws.write("notes.txt", "ours\n");
    person_ok(s.dir(), &["commit", "-q", "-am", "ours"], &[]);
}

fn start_conflicted_merge(s: &Scene) -> String {
    let mut out = person_retry(s.dir(), &["merge", "other"], &[]);
    // A merge that started in the millisecond a run commit was being made read the old
    // HEAD; git refuses it cleanly (nothing changed) and the person runs it again.
    for _ in 0..5 {
        if !String::from_utf8_lossy(&out.stderr).contains("would be overwritten by merge") {
            break;
        }
        out = person_retry(s.dir(), &["merge", "other"], &[]);
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "the merge was meant to conflict: {said}"
    );
    assert!(said.contains("CONFLICT"), "{said}");
    s.head()
}

/// While the merge is conflicted, nothing is committed and the conflict stays as git
/// left it: three stages, no stage 0, markers only in the work tree.
fn assert_merge_untouched(s: &Scene, d: &DaemonProcess, head: &str) {
    s.wait_held(d, "merge");
    let before = s.ledger().len();
    assert!(
        wait_until(LONG, || s.ledger().len() >= before + 3),
        "the ticker stopped running during the merge"
    );
    assert_eq!(s.head(), head, "a commit was made during the merge");
    let unmerged = git(s.dir(), &["ls-files", "-s", "notes.txt"]);
    let stages: Vec<&str> = unmerged
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(stages, ["1", "2", "3"], "{unmerged}");
    let st = git(s.dir(), &["status", "--porcelain"]);
    assert!(st.contains("UU notes.txt"), "{st}");
    no_conflict_markers(s.dir());
    assert_eq!(
        d.log().matches("commits held: a merge in progress").count(),
        1,
        "the hold is said once; log:\n{}",
        d.log()
    );
}

#[test]
fn two_writers_conflicted_merge_is_left_alone_and_abort_works() {
    let s = Scene::new("");
    conflicting_branch(&s);
    let d = s.start();
    let head = start_conflicted_merge(&s);
    assert_merge_untouched(&s, &d, &head);
    person_ok(s.dir(), &["merge", "--abort"], &[]);
    assert_eq!(
        std::fs::read_to_string(s.dir().join("notes.txt")).unwrap(),
        "ours\n"
    );
    s.finish(d, &s.branch);
    no_conflict_markers(s.dir());
}

#[test]
fn two_writers_conflicted_merge_resolved_by_the_person() {
    let s = Scene::new("");
    conflicting_branch(&s);
    let d = s.start();
    let head = start_conflicted_merge(&s);
    assert_merge_untouched(&s, &d, &head);
    s.ws.write("notes.txt", "ours and theirs\n");
    person_ok(s.dir(), &["add", "notes.txt"], &[]);
    person_ok(s.dir(), &["commit", "--no-edit"], &[]);
    let merge = git(s.dir(), &["log", "--merges", "--format=%s", "-1"]);
    assert!(merge.contains("Merge branch 'other'"), "{merge}");
    s.finish(d, &s.branch);
    assert_eq!(
        git(s.dir(), &["show", &format!("{}:notes.txt", s.branch)]),
        "ours and theirs\n"
    );
    no_conflict_markers(s.dir());
}

#[test]
fn two_writers_interactive_rebase_stopped_at_edit_then_aborted() {
    let s = Scene::new("");
    s.ws.write("a.txt", "one\n");
    person_ok(s.dir(), &["add", "a.txt"], &[]);
    person_ok(s.dir(), &["commit", "-q", "-m", "a one"], &[]);
    s.ws.write("a.txt", "one\ntwo\n");
    person_ok(s.dir(), &["commit", "-q", "-am", "a two"], &[]);
    let d = s.start();
    let editor = [("GIT_SEQUENCE_EDITOR", "sed -i 's/^pick/edit/'")];
    person_ok(s.dir(), &["rebase", "-i", "HEAD~2"], &editor);
    assert!(s.dir().join(".git/rebase-merge").exists());
    let stopped = s.head();
    let tip = git(s.dir(), &["rev-parse", &s.branch]).trim().to_string();
    s.wait_held(&d, "rebase");
    let before = s.ledger().len();
    assert!(wait_until(LONG, || s.ledger().len() >= before + 3));
    assert_eq!(
        s.head(),
        stopped,
        "a commit was made on the rebase's detached HEAD"
    );
    assert_eq!(git(s.dir(), &["rev-parse", &s.branch]).trim(), tip);
    person_ok(s.dir(), &["rebase", "--abort"], &[]);
    assert!(!s.dir().join(".git/rebase-merge").exists());
    s.finish(d, &s.branch);
    // The abort reset state.md to the branch tip: the runs made during the stop are on
    // the branch because their lines were put back.
    let journal = std::fs::read_to_string(s.dir().join(".loops/daemon.jsonl")).unwrap();
    assert!(journal.contains("held_restored"), "{journal}");
}

#[test]
fn two_writers_person_commit_with_a_slow_editor_succeeds() {
    let s = Scene::new("");
    let d = s.start();
    s.ws.write("mine.txt", "staged by the person\n");
    person_ok(s.dir(), &["add", "mine.txt"], &[]);
    // Unstaged on top: must stay out of the person's commit and in the work tree.
    s.ws.write("mine.txt", "staged by the person\nnot staged\n");
    let editor = s.dir().join(".git/slow-editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsleep 4\necho 'my commit' > \"$1\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = s.ledger().len();
    person_ok(
        s.dir(),
        &["commit"],
        &[("GIT_EDITOR", &editor.to_string_lossy())],
    );
    assert!(
        s.ledger().len() >= before + 2,
        "the ticker ran while the editor was open"
    );
    let subject = git(s.dir(), &["log", "-1", "--format=%s", "--author=Person"]);
    assert_eq!(subject.trim(), "my commit");
    let person_commit = git(s.dir(), &["log", "-1", "--format=%H", "--author=Person"]);
    assert_eq!(
        git(
            s.dir(),
            &["show", &format!("{}:mine.txt", person_commit.trim())]
        ),
        "staged by the person\n"
    );
    let files = git(
        s.dir(),
        &["show", "--name-only", "--format=", person_commit.trim()],
    );
    assert_eq!(
        files.trim(),
        "mine.txt",
        "the person's commit holds only what they staged"
    );
    assert_eq!(
        std::fs::read_to_string(s.dir().join("mine.txt")).unwrap(),
        "staged by the person\nnot staged\n"
    );
    s.finish(d, &s.branch);
}

#[test]
fn two_writers_git_add_is_never_undone() {
    let s = Scene::new("");
    let d = s.start();
    for i in 0..40 {
        let text = format!("version {i}\n");
        s.ws.write("mine.txt", &text);
        person_ok(s.dir(), &["add", "mine.txt"], &[]);
        let staged = git(s.dir(), &["show", ":mine.txt"]);
        assert_eq!(staged, text, "the person's git add was undone at {i}");
        std::thread::sleep(Duration::from_millis(100));
        let staged = git(s.dir(), &["show", ":mine.txt"]);
        assert_eq!(staged, text, "the person's git add was undone after {i}");
        // Between a run's commit moving HEAD and its index entry following (a few
        // milliseconds; git's own commit has the same window) the runner's file can show
        // as staged: what must hold is that it settles to only the person's.
        let mut cached = String::new();
        let settled = wait_until(Duration::from_secs(10), || {
            cached = git(s.dir(), &["diff", "--cached", "--name-only"]);
            cached.trim() == "mine.txt"
        });
        assert!(settled, "staged: {cached}");
    }
    s.finish(d, &s.branch);
    assert_eq!(git(s.dir(), &["show", ":mine.txt"]), "version 39\n");
}

#[test]
fn two_writers_other_branch_holds_runs_until_the_branch_is_back() {
    let s = Scene::new("");
    let d = s.start();
    // At the same commit: a checkout of another tree would (rightly) refuse to carry the
    // ticker's uncommitted state.md across.
    person_ok(s.dir(), &["checkout", "-q", "-b", "feature"], &[]);
    let feature = s.head();
    s.wait_held(&d, "feature is checked out");
    let before = s.ledger().len();
    assert!(wait_until(LONG, || s.ledger().len() >= before + 3));
    assert_eq!(s.head(), feature, "a run was committed on feature");
    person_ok(s.dir(), &["checkout", "-q", "--detach", &s.branch], &[]);
    let detached = s.head();
    s.wait_held(&d, "HEAD is detached");
    let before = s.ledger().len();
    assert!(wait_until(LONG, || s.ledger().len() >= before + 3));
    assert_eq!(s.head(), detached, "a run was committed on a detached HEAD");
    person_ok(s.dir(), &["checkout", "-q", &s.branch], &[]);
    s.finish(d, &s.branch);
    assert_eq!(git(s.dir(), &["rev-parse", "feature"]).trim(), feature);
}

#[test]
fn two_writers_follow_checkout_commits_to_the_checked_out_branch() {
    let s = Scene::new("git:\n  follow_checkout: true\n");
    let d = s.start();
    person_ok(s.dir(), &["checkout", "-q", "-b", "feature"], &[]);
    let before = s.ticker_commits("feature");
    assert!(
        wait_until(LONG, || s.ticker_commits("feature") >= before + 2),
        "runs never landed on feature; log:\n{}",
        d.log()
    );
    s.finish(d, "feature");
}

#[test]
fn two_writers_configured_branch_is_checked() {
    let s = Scene::new("git:\n  branch: \"bad..name\"\n");
    let out = s.ws.cmd().arg("check").output().expect("loops check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("git.branch must be a branch name"), "{text}");
}

#[test]
fn two_writers_loops_trigger_follows_the_same_rules() {
    let s = Scene::new("");
    person_ok(s.dir(), &["checkout", "-q", "--detach"], &[]);
    let detached = s.head();
    let out =
        s.ws.cmd()
            .args(["trigger", "ticker", "--json"])
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run record");
    assert!(
        rec["commit"].is_null(),
        "committed on a detached HEAD: {rec}"
    );
    assert!(
        rec["note"]
            .as_str()
            .is_some_and(|n| n.contains("HEAD is detached")),
        "{rec}"
    );
    assert_eq!(s.head(), detached);
    assert_eq!(s.status_json()["commits"]["waiting"], 1);
    person_ok(s.dir(), &["checkout", "-q", &s.branch], &[]);
    let out =
        s.ws.cmd()
            .args(["trigger", "ticker", "--json"])
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = s.committed(&s.branch);
    let ran = s.ledger();
    assert_eq!(ran.len(), 2);
    assert_eq!(committed, ran, "both runs are on the branch, once each");
    assert_eq!(s.status_json()["commits"]["waiting"], 0);
    fsck_clean(s.dir());
}
