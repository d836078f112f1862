//! The inbox and the person's git repository: every move of a handoff (claim, rejection,
//! completion) is committed as it happens, so `git status` stays clean between them; a
//! linked inbox/ is refused, never committed away; a second handoff with a used id gets
//! a new one instead of replacing the first. The real `loops` binary as daemon, real git
//! repositories, the git CLI to check.

use crate::common::{
    drop_handoff, git, git_trailers, main_script, main_seen, wait_until, TempWorkspace,
};
use loops_testutil::Signal;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// A main-session command that waits for the file `go` in `tools` before it reports, so
/// a test can look at the repository while handoffs are claimed and being worked on.
fn gated_main(ws: &TempWorkspace, tools: &Path) {
    let gate = format!(
        "while [ ! -f '{}' ]; do sleep 0.05; done",
        tools.join("go").display()
    );
    ws.with_main(&format!("  command: {}\n", main_script(tools, &gate, true)));
}

/// The commits whose trailers say `Handoff: id` and `Outcome: outcome`, newest first.
fn commits_for(ws: &Path, id: &str, outcome: &str) -> Vec<String> {
    git(ws, &["log", "--format=%H"])
        .lines()
        .filter(|c| {
            let t = git_trailers(ws, c);
            t.iter().any(|(k, v)| k == "Handoff" && v == id)
                && t.iter().any(|(k, v)| k == "Outcome" && v == outcome)
        })
        .map(str::to_string)
        .collect()
}

/// The files a commit touched, sorted.
fn touched(ws: &Path, commit: &str) -> Vec<String> {
    let mut v: Vec<String> = git(
        ws,
        &["show", "--no-renames", "--name-only", "--format=", commit],
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(str::to_string)
    .collect();
    v.sort();
    v
}

fn status(ws: &Path) -> String {
    git(ws, &["status", "--porcelain", "--untracked-files=all"])
}

fn create(ws: &TempWorkspace, title: &str) -> String {
    let v = ws.json(&["handoff", "create", "--from", "minion", "--title", title]);
    v["id"].as_str().expect("an id").to_string()
}

#[test]
fn inbox_git_claims_rejections_and_completions_each_leave_git_status_clean() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    gated_main(&ws, tools.path());
    let a = create(&ws, "First");
    let b = create(&ws, "Second");
    // Dropped by hand: never committed before the claim.
    drop_handoff(ws.path(), "by-hand", "# Written in an editor\n\nDo this.\n");
    let mut d = ws.start_daemon();

    // Claimed, and the main session is working on them: the claims are committed.
    assert!(
        wait_until(LONG, || main_seen(tools.path()).len() == 3),
        "not all claimed in one wake: {:?}\n{}",
        main_seen(tools.path()),
        d.log()
    );
    assert_eq!(ws.inbox_files("active").len(), 3);
    assert_eq!(status(ws.path()), "", "dirty after the claim");
    for id in [&a, &b, &"by-hand".to_string()] {
        let c = commits_for(ws.path(), id, "claimed");
        assert_eq!(
            c.len(),
            1,
            "{id}: {}",
            git(ws.path(), &["log", "--format=%B"])
        );
        let files = git(
            ws.path(),
            &["show", "--no-renames", "--name-status", "--format=", &c[0]],
        );
        assert!(
            files.contains(&format!("A\tinbox/active/{id}.md")),
            "{files}"
        );
    }
    let claim = &commits_for(ws.path(), &a, "claimed")[0];
    let files = git(
        ws.path(),
        &["show", "--no-renames", "--name-status", "--format=", claim],
    );
    assert!(files.contains(&format!("D\tinbox/{a}.md")), "{files}");

    // Completed: each completion commit holds the handoffs' own paths only.
    std::fs::write(tools.path().join("go"), "").unwrap();
    assert!(
        wait_until(LONG, || ws.done_stems().len() == 3
            && commits_for(ws.path(), &a, "completed").len() == 1),
        "{}",
        d.log()
    );
    assert_eq!(status(ws.path()), "", "dirty after the completion");
    let done = &commits_for(ws.path(), &a, "completed")[0];
    for f in touched(ws.path(), done) {
        assert!(
            f.starts_with("inbox/active/") || f.starts_with("inbox/done/"),
            "{f} in the completion commit"
        );
    }

    // Rejected: the malformed file and the note beside it are committed at once.
    drop_handoff(
        ws.path(),
        "broken",
        "---\nid: broken\nfrom: x\n# never closed\n",
    );
    assert!(
        wait_until(LONG, || !commits_for(ws.path(), "broken", "rejected")
            .is_empty()),
        "{}",
        d.log()
    );
    assert_eq!(status(ws.path()), "", "dirty after the rejection");
    let r = &commits_for(ws.path(), "broken", "rejected")[0];
    assert_eq!(
        touched(ws.path(), r),
        vec!["inbox/rejected/broken.error.md", "inbox/rejected/broken.md"]
    );

    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    assert_eq!(status(ws.path()), "");
    git(ws.path(), &["fsck", "--strict"]);
}

#[test]
fn inbox_git_a_linked_inbox_is_refused_at_start_and_stays_as_it_was() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), "", true)
    ));
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("inbox");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("note.md"), "# A note\n").unwrap();
    let inbox = ws.path().join("inbox");
    let _ = std::fs::remove_dir_all(&inbox);
    std::os::unix::fs::symlink(&target, &inbox).unwrap();
    crate::common::git_commit_all(ws.path(), "inbox lives elsewhere");
    let head = git(ws.path(), &["rev-parse", "HEAD"]);
    let tracked = git(ws.path(), &["ls-files", "-s", "inbox"]);
    assert!(tracked.starts_with("120000"), "{tracked}");

    let out = ws
        .cmd()
        .arg("run")
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "loops run did not refuse: {err}");
    assert!(
        err.contains(&format!(
            "inbox/ is a symbolic link to {}",
            target.display()
        )),
        "{err}"
    );
    assert!(err.contains("make inbox/ a real folder"), "{err}");

    let out = ws.cmd().arg("check").output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "loops check passed: {said}");
    assert!(said.contains("inbox/ is a symbolic link"), "{said}");

    // Nothing committed, the link still there and tracked as before, its target intact.
    assert_eq!(git(ws.path(), &["rev-parse", "HEAD"]), head);
    assert_eq!(git(ws.path(), &["ls-files", "-s", "inbox"]), tracked);
    assert!(std::fs::symlink_metadata(&inbox)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(target.join("note.md").is_file());
    assert_eq!(status(ws.path()), "");
}

#[test]
fn inbox_git_a_reused_id_gets_a_new_one_and_each_completion_commits_only_its_own_files() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    gated_main(&ws, tools.path());
    drop_handoff(
        ws.path(),
        "dup",
        "---\nid: dup\nfrom: minion\n---\n# First\n",
    );
    let mut d = ws.start_daemon();
    assert!(
        wait_until(LONG, || main_seen(tools.path()).len() == 1),
        "{}",
        d.log()
    );
    // A second handoff with the same id and file name arrives while the first is worked
    // on: its completion must not sweep this one up, nor may it replace the first.
    drop_handoff(
        ws.path(),
        "dup",
        "---\nid: dup\nfrom: minion\n---\n# Second\n",
    );
    std::fs::write(tools.path().join("go"), "").unwrap();
    assert!(
        wait_until(LONG, || ws.done_stems() == vec!["dup", "dup-2"]
            && commits_for(ws.path(), "dup-2", "completed").len() == 1),
        "done: {:?}\n{}",
        ws.done_stems(),
        d.log()
    );
    let month = std::fs::read_dir(ws.path().join("inbox/done"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    let done = ws.path().join("inbox/done").join(&month);
    let first = std::fs::read_to_string(done.join("dup.md")).unwrap();
    let second = std::fs::read_to_string(done.join("dup-2.md")).unwrap();
    assert!(
        first.contains("# First") && first.contains("id: dup\n"),
        "{first}"
    );
    assert!(
        second.contains("# Second") && second.contains("id: dup-2\n"),
        "{second}"
    );

    // The main session and `loops inbox` saw the new id.
    let mut seen: Vec<String> = main_seen(tools.path()).into_iter().map(|s| s.2).collect();
    seen.sort();
    assert_eq!(seen, vec!["dup", "dup-2"]);
    let mut ids: Vec<String> = ws
        .inbox_json()
        .iter()
        .filter_map(|h| h["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["dup", "dup-2"]);

    // Each completion commit holds its own handoff's paths, nothing else.
    let c1 = &commits_for(ws.path(), "dup", "completed")[0];
    assert_eq!(
        touched(ws.path(), c1),
        vec![
            "inbox/active/dup.md".to_string(),
            format!("inbox/done/{month}/dup.md")
        ]
    );
    let c2 = &commits_for(ws.path(), "dup-2", "completed")[0];
    assert_eq!(
        touched(ws.path(), c2),
        vec![
            "inbox/active/dup-2.md".to_string(),
            format!("inbox/done/{month}/dup-2.md")
        ]
    );

    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    assert_eq!(status(ws.path()), "");
    git(ws.path(), &["fsck", "--strict"]);
}

/// A runner killed between moving a handoff and committing the move (here: the moves
/// made by hand, as a crash would leave them) has its moves committed at the next start,
/// so `git status` is clean without waiting for each handoff's next move; and a daemon
/// stopped with SIGTERM leaves nothing of its own uncommitted.
#[test]
fn inbox_git_moves_a_killed_runner_left_uncommitted_are_committed_at_the_next_start() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    gated_main(&ws, tools.path());
    let done_id = create(&ws, "Finished before the crash");
    let active_id = create(&ws, "Claimed before the crash");
    let rejected_id = create(&ws, "Rejected before the crash");
    let root = ws.path();
    // As the committed claims left them.
    std::fs::create_dir_all(root.join("inbox/active")).unwrap();
    for id in [&done_id, &active_id] {
        git(
            root,
            &[
                "mv",
                &format!("inbox/{id}.md"),
                &format!("inbox/active/{id}.md"),
            ],
        );
    }
    git(
        root,
        &["commit", "-qm", "claims, as the runner commits them"],
    );
    assert_eq!(status(root), "");
    // What the killed runner did after them: completed one, gave one back, rejected one.
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    std::fs::create_dir_all(root.join("inbox/done").join(&month)).unwrap();
    std::fs::rename(
        root.join(format!("inbox/active/{done_id}.md")),
        root.join(format!("inbox/done/{month}/{done_id}.md")),
    )
    .unwrap();
    std::fs::rename(
        root.join(format!("inbox/active/{active_id}.md")),
        root.join(format!("inbox/{active_id}.md")),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("inbox/rejected")).unwrap();
    std::fs::rename(
        root.join(format!("inbox/{rejected_id}.md")),
        root.join(format!("inbox/rejected/{rejected_id}.md")),
    )
    .unwrap();
    std::fs::write(
        root.join(format!("inbox/rejected/{rejected_id}.error.md")),
        "# Rejected\n\nBy hand, for the test.\n",
    )
    .unwrap();
    assert_ne!(status(root), "");

    let mut d = ws.start_daemon();
    // The given-back handoff is claimed again and held by the gated main session; the
    // rest is level with the disk once the recovery commit is made.
    assert!(
        wait_until(LONG, || main_seen(tools.path()).len() == 1
            && status(root).is_empty()),
        "not level: {}\nseen {:?}\n{}",
        status(root),
        main_seen(tools.path()),
        d.log()
    );
    let head = git(root, &["ls-tree", "-r", "--name-only", "HEAD", "inbox"]);
    assert!(
        head.contains(&format!("inbox/done/{month}/{done_id}.md")),
        "{head}"
    );
    assert!(
        head.contains(&format!("inbox/rejected/{rejected_id}.md")),
        "{head}"
    );
    assert!(
        head.contains(&format!("inbox/active/{active_id}.md")),
        "{head}"
    );
    assert!(
        !head.contains(&format!("inbox/active/{done_id}.md")),
        "{head}"
    );
    let recovered = git(root, &["log", "--format=%s", "--grep=Outcome: recovered"]);
    assert!(
        recovered.contains("inbox moves a stopped runner had not committed"),
        "{recovered}"
    );

    // Finished, then a clean stop: the completion's commit is made before it exits.
    std::fs::write(tools.path().join("go"), "").unwrap();
    assert!(
        wait_until(LONG, || ws.inbox_files("active").is_empty()),
        "{}",
        d.log()
    );
    d.signal(Signal::TERM);
    assert!(
        d.wait_exit(LONG).is_some_and(|s| s.success()),
        "{}",
        d.log()
    );
    assert_eq!(status(root), "", "dirty after a clean stop\n{}", d.log());
}
