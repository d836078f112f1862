//! The main session's wakes, with `loops run` as a real child process and a command main
//! session (a small POSIX sh script): discovery at start, by the heartbeat, completion
//! rules, failed wakes, `loops inbox …`, and the 1,000-handoff stress runs (with and
//! without SIGKILL). Waits poll with generous deadlines; nothing assumes a fast machine.

use crate::common::{git, git_trailers, main_script, main_seen, wait_until, Out, TempWorkspace};
use loops_testutil::Signal;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// `loops handoff create --from FROM --title TITLE [extra…] --json`; returns the id.
fn create(ws: &TempWorkspace, from: &str, title: &str, extra: &[&str]) -> String {
    let mut args = vec!["handoff", "create", "--from", from, "--title", title];
    args.extend_from_slice(extra);
    let v = ws.json(&args);
    v["id"].as_str().expect("an id").to_string()
}

fn entry(ws: &TempWorkspace, id: &str) -> Option<serde_json::Value> {
    ws.inbox_json().into_iter().find(|h| h["id"] == id)
}

/// The commit whose trailers say `Handoff: id` and `Outcome: outcome`.
fn commit_for(ws: &Path, id: &str, outcome: &str) -> Option<String> {
    git(ws, &["log", "--format=%H"])
        .lines()
        .find(|c| {
            let t = git_trailers(ws, c);
            t.iter().any(|(k, v)| k == "Handoff" && v == id)
                && t.iter().any(|(k, v)| k == "Outcome" && v == outcome)
        })
        .map(str::to_string)
}

#[test]
fn inbox_handoff_written_while_stopped_is_processed_at_start() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), "", true)
    ));
    let id = create(
        &ws,
        "research-minion",
        "Research ready",
        &["--item", "Read it", "--body", "Look at this."],
    );
    // Ticked by hand before the daemon runs: the only thing left is the wake.
    let pending = ws.path().join("inbox").join(format!("{id}.md"));
    let text = std::fs::read_to_string(&pending).unwrap();
    std::fs::write(&pending, text.replace("- [ ] Read it", "- [x] Read it")).unwrap();
    assert_eq!(ws.inbox_files(""), vec![format!("{id}.md")]);

    let mut d = ws.start_daemon();
    assert!(
        wait_until(LONG, || ws.done_stems() == vec![id.clone()]),
        "not completed at start; inbox: {:?}\nlog:\n{}",
        ws.inbox_json(),
        d.log()
    );
    assert!(ws.inbox_files("").is_empty());
    assert!(ws.inbox_files("active").is_empty());

    // The main session got it by path and as JSON on stdin.
    let seen = main_seen(tools.path());
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].1.as_str(), seen[0].2.as_str()),
        ("handoffs", id.as_str())
    );
    let stdin: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tools.path().join("stdin").join(&seen[0].0)).unwrap(),
    )
    .unwrap();
    assert_eq!(stdin["wake"], "handoffs");
    assert_eq!(stdin["run"], seen[0].0.as_str());
    let h = &stdin["handoffs"][0];
    assert_eq!(h["id"], id.as_str());
    assert_eq!(h["from"], "research-minion");
    assert_eq!(h["title"], "Research ready");
    assert!(h["path"]
        .as_str()
        .unwrap()
        .ends_with(&format!("inbox/active/{id}.md")));
    assert_eq!(h["checklist"][0]["text"], "Read it");
    assert_eq!(h["checklist"][0]["checked"], true);

    // Creation and completion are both in git, with trailers.
    let created = commit_for(ws.path(), &id, "created").expect("creation commit");
    let t = git_trailers(ws.path(), &created);
    assert!(
        t.contains(&("From".into(), "research-minion".into())),
        "{t:?}"
    );
    assert!(
        wait_until(LONG, || commit_for(ws.path(), &id, "completed").is_some()),
        "{}",
        git(ws.path(), &["log", "--format=%B"])
    );
    let done = commit_for(ws.path(), &id, "completed").unwrap();
    let files = git(
        ws.path(),
        &["show", "--no-renames", "--name-status", "--format=", &done],
    );
    assert!(files.contains("A\tinbox/done/"), "{files}");
    assert!(
        files.contains(&format!("D\tinbox/active/{id}.md")),
        "{files}"
    );
    // Leaving inbox/ was the claim's commit.
    let claimed = commit_for(ws.path(), &id, "claimed").expect("claim commit");
    let files = git(
        ws.path(),
        &[
            "show",
            "--no-renames",
            "--name-status",
            "--format=",
            &claimed,
        ],
    );
    assert!(files.contains(&format!("D\tinbox/{id}.md")), "{files}");

    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
}

#[test]
fn inbox_heartbeat_wakes_and_a_swapped_in_inbox_is_watched_again() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n  heartbeat: 2s\n",
        main_script(tools.path(), "", true)
    ));
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    // The heartbeat is a wake even with an empty inbox, and a silent one: no commit.
    let head = git(ws.path(), &["rev-parse", "HEAD"]);
    assert!(
        wait_until(LONG, || main_seen(tools.path())
            .iter()
            .any(|s| s.1 == "heartbeat" && s.2.is_empty())),
        "{}",
        d.log()
    );
    assert!(wait_until(LONG, || ws
        .runs("main")
        .iter()
        .any(|r| r["trigger"] == "heartbeat")));
    let beats: Vec<_> = ws
        .runs("main")
        .into_iter()
        .filter(|r| r["trigger"] == "heartbeat")
        .collect();
    assert!(beats.iter().all(|r| r["outcome"] == "silent"), "{beats:?}");
    assert_eq!(git(ws.path(), &["rev-parse", "HEAD"]), head);

    // A watch is on the inode of inbox/, not its name: write the handoff in a folder
    // nobody watches, then swap that folder in as inbox/ (what a sync tool or a restore
    // from backup does). The inbox watcher sees nothing of it; the workspace root's
    // watcher sees inbox/ replaced and sets the watch up anew, and a scan finds the
    // handoff (that one, or the next heartbeat's, whichever comes first).
    let staging = ws.path().join("staging");
    std::fs::create_dir_all(staging.join(".tmp")).unwrap();
    std::fs::write(
        staging.join("missed.md"),
        "---\nfrom: person\n---\n# Found by the heartbeat\n",
    )
    .unwrap();
    std::fs::rename(ws.path().join("inbox"), ws.path().join("old-inbox")).unwrap();
    std::fs::rename(&staging, ws.path().join("inbox")).unwrap();

    assert!(
        wait_until(LONG, || ws.done_stems() == vec!["missed".to_string()]),
        "{}",
        d.log()
    );
    let seen = main_seen(tools.path());
    let got: Vec<_> = seen.iter().filter(|s| s.2 == "missed").collect();
    assert_eq!(got.len(), 1, "{seen:?}");
    // And the new inbox/ is watched: a handoff dropped into it now wakes at once.
    crate::common::drop_handoff(ws.path(), "next", "# Next\n\nAfter the swap.\n");
    assert!(
        wait_until(LONG, || main_seen(tools.path())
            .iter()
            .any(|s| s.2 == "next")),
        "{}",
        d.log()
    );

    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
}

#[test]
fn inbox_completion_needs_ticked_items_and_the_cli_completes_rejects_shows() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    // Ticks the items of handoffs titled "Tick…" (with sed, in the file), then reports
    // every handoff completed.
    let tick = r#"for p in $paths; do
  if grep -q '^# Tick' "$p"; then sed -i 's/^- \[ \]/- [x]/' "$p"; fi
done"#;
    ws.with_main(&format!(
        "  command: {}\n  overdue_after: 1s\n",
        main_script(tools.path(), tick, true)
    ));
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);

    let ticked = create(&ws, "a", "Tick me", &["--item", "One", "--item", "Two"]);
    let held = create(
        &ws,
        "b",
        "Leave me",
        &[
            "--item",
            "Call the bank",
            "--item",
            "Send flowers (optional)",
        ],
    );
    let elsewhere = create(&ws, "c", "For someone else", &["--to", "someone-else"]);

    assert!(
        wait_until(LONG, || ws.done_stems() == vec![ticked.clone()]
            && entry(&ws, &held).is_some_and(|e| e["held"].is_string())),
        "{:?}\n{}",
        ws.inbox_json(),
        d.log()
    );
    let done_text = std::fs::read_to_string(
        ws.path()
            .join("inbox/done")
            .join(chrono::Utc::now().format("%Y-%m").to_string())
            .join(format!("{ticked}.md")),
    )
    .unwrap();
    assert!(done_text.contains("- [x] One\n- [x] Two"), "{done_text}");
    assert!(done_text.contains("## Completed"), "{done_text}");

    // Held: reported completed, but an item is not ticked. `loops inbox` says which.
    let e = entry(&ws, &held).expect("listed");
    assert_eq!(e["stage"], "active");
    assert_eq!(e["unticked"], serde_json::json!(["Call the bank"]));
    let why = e["held"].as_str().unwrap();
    assert!(why.contains("not ticked: Call the bank"), "{why}");
    // Shown as overdue once held longer than overdue_after (1s).
    assert!(
        wait_until(LONG, || entry(&ws, &held).unwrap()["overdue"] == true),
        "{:?}",
        entry(&ws, &held)
    );
    assert!(entry(&ws, &held).unwrap()["detail"]
        .as_str()
        .unwrap()
        .starts_with("OVERDUE"));
    let table = ws.cmd().arg("inbox").output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("OVERDUE"), "{table}");

    // Addressed elsewhere: left pending, never woken for.
    let e = entry(&ws, &elsewhere).unwrap();
    assert_eq!(e["stage"], "pending");
    assert!(!main_seen(tools.path()).iter().any(|s| s.2 == elsewhere));

    // `loops inbox complete` refuses while an item is unticked…
    let out = ws
        .cmd()
        .args(["inbox", "complete", &held, "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // With --json the error is a JSON object on stdout.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error");
    let err = v["error"]["message"].as_str().unwrap_or_default();
    assert!(err.contains("- [ ] Call the bank"), "{v}");
    assert!(
        !err.contains("flowers"),
        "optional items are not required: {err}"
    );
    assert_eq!(ws.inbox_files("active"), vec![format!("{held}.md")]);
    // …and completes once it is ticked.
    let p = ws.path().join("inbox/active").join(format!("{held}.md"));
    let t = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, t.replace("- [ ] Call the bank", "- [x] Call the bank")).unwrap();
    let v = ws.json(&["inbox", "complete", &held, "--summary", "Called; all fine"]);
    assert_eq!(v["id"], held.as_str());
    assert_eq!(v["stage"], "done");
    assert!(ws.inbox_files("active").is_empty());
    let s = ws.json(&["inbox", "show", &held]);
    assert_eq!(s["stage"], "done");
    assert_eq!(s["handoff"]["title"], "Leave me");
    assert_eq!(
        s["note"]["held"],
        serde_json::Value::Null,
        "the hold is cleared"
    );
    let text = std::fs::read_to_string(ws.path().join(s["path"].as_str().unwrap())).unwrap();
    assert!(text.contains("Called; all fine"), "{text}");
    let c = commit_for(ws.path(), &held, "completed").expect("completion committed");
    assert!(git_trailers(ws.path(), &c).contains(&("From".into(), "b".into())));

    // Reject with a reason: moved to rejected/ with the reason beside it, and committed.
    let v = ws.json(&["inbox", "reject", &elsewhere, "--reason", "not mine to do"]);
    assert_eq!(v["stage"], "rejected");
    assert_eq!(ws.inbox_files("rejected"), vec![format!("{elsewhere}.md")]);
    let note = std::fs::read_to_string(
        ws.path()
            .join("inbox/rejected")
            .join(format!("{elsewhere}.error.md")),
    )
    .unwrap();
    assert!(note.contains("not mine to do"), "{note}");
    let s = ws.json(&["inbox", "show", &elsewhere]);
    assert_eq!(s["stage"], "rejected");
    assert_eq!(s["reason"], "not mine to do");
    assert!(commit_for(ws.path(), &elsewhere, "rejected").is_some());
    let e = entry(&ws, &elsewhere).unwrap();
    assert_eq!(e["reason"], "not mine to do");
    // Done and rejected handoffs cannot be completed or rejected again.
    for args in [
        vec!["inbox", "complete", &held],
        vec!["inbox", "reject", &elsewhere, "--reason", "x"],
    ] {
        let out = ws.cmd().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("already"));
    }
    let out = ws.cmd().args(["inbox", "show", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no handoff `nope`"));

    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    // Every state change is committed: nothing of the inbox is left uncommitted.
    let status = git(ws.path(), &["status", "--porcelain", "inbox"]);
    assert!(status.trim().is_empty(), "{status}");
}

#[test]
fn inbox_failing_main_session_returns_handoffs_then_holds_them() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n  max_attempts: 2\n",
        main_script(tools.path(), "echo 'the agent is down' >&2; exit 3", false)
    ));
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let id = create(&ws, "a", "Try me", &[]);

    // First failed wake: back in the inbox (pending), one attempt noted.
    let mut saw_returned = false;
    assert!(
        wait_until(LONG, || {
            let s = ws.json(&["inbox", "show", &id]);
            if s["stage"] == "pending" && s["note"]["attempts"] == 1 {
                saw_returned = true;
            }
            s["stage"] == "active" && s["note"]["attempts"] == 2
        }),
        "{}",
        d.log()
    );
    assert!(
        saw_returned,
        "between the failures it went back to the inbox"
    );
    let s = ws.json(&["inbox", "show", &id]);
    let why = s["note"]["held"].as_str().expect("held");
    assert!(why.contains("failed 2 times"), "{why}");
    let e = entry(&ws, &id).unwrap();
    assert_eq!(e["attempts"], 2);
    assert!(e["detail"].as_str().unwrap().contains("failed 2 times"));
    d.wait_for_log("main session wake failed", LONG);
    let failed = ws.count_outcome("main", "failed");
    assert_eq!(failed, 2, "{:?}", ws.runs("main"));
    // Not retried at once: the second wake waited out the backoff after the first,
    // although releasing the handoff into inbox/ rang the doorbell straight away.
    let runs = ws.runs("main");
    let t = |r: &serde_json::Value, k: &str| {
        chrono::DateTime::parse_from_rfc3339(r[k].as_str().unwrap()).unwrap()
    };
    let gap = t(&runs[1], "started") - t(&runs[0], "finished");
    assert!(gap >= chrono::Duration::seconds(4), "retried after {gap}");
    assert_eq!(main_seen(tools.path()).len(), 2);

    // Held for a person: a later wake (for another handoff) does not try it again.
    let other = create(&ws, "a", "Another", &[]);
    assert!(
        wait_until(LONG, || main_seen(tools.path())
            .iter()
            .any(|s| s.2 == other)),
        "{}",
        d.log()
    );
    assert_eq!(
        main_seen(tools.path()).iter().filter(|s| s.2 == id).count(),
        2
    );
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
}

#[test]
fn inbox_retry_hands_a_held_handoff_back_once_the_cause_is_fixed() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    let down = tools.path().join("down");
    std::fs::write(&down, "").unwrap();
    let fail = format!(
        "if [ -e '{}' ]; then echo 'the agent is down' >&2; exit 3; fi",
        down.display()
    );
    ws.with_main(&format!(
        "  command: {}\n  max_attempts: 1\n",
        main_script(tools.path(), &fail, true)
    ));
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let id = create(&ws, "a", "Try me again", &[]);
    assert!(
        wait_until(LONG, || ws.json(&["inbox", "show", &id])["note"]["held"]
            .is_string()),
        "{}",
        d.log()
    );

    // What cannot be handed back says why, and nothing moves.
    let refused = |args: &[&str], says: &str| {
        let out = ws.cmd().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(&["inbox", "retry", "nope"], "no handoff `nope`");
    let pending = std::fs::read_dir(ws.path().join("inbox"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "md")
        })
        .count();
    assert_eq!(pending, 0, "held, not pending");

    // The cause fixed, the person hands it back (the daemon stopped, so that no wake
    // takes it before the move is committed): pending again, its failure forgotten, the
    // move committed, and the next start's wake completes it.
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    std::fs::remove_file(&down).unwrap();
    let r = ws.json(&["inbox", "retry", &id]);
    assert_eq!(r["stage"], "pending", "{r}");
    assert_eq!(r["attempts_forgotten"], 1, "{r}");
    assert!(
        r["was_held"]
            .as_str()
            .unwrap()
            .contains("failed 1 time on it"),
        "{r}"
    );
    assert!(
        commit_for(ws.path(), &id, "retried").is_some(),
        "{}",
        git(ws.path(), &["log", "--format=%B"])
    );
    assert_eq!(ws.json(&["inbox", "show", &id])["stage"], "pending");
    let mut d = ws.start_daemon();
    assert!(
        wait_until(LONG, || ws.json(&["inbox", "show", &id])["stage"] == "done"),
        "{}",
        d.log()
    );
    // The wake's commit follows the move into done/.
    assert!(
        wait_until(LONG, || commit_for(ws.path(), &id, "completed").is_some()),
        "{}",
        d.log()
    );
    let s = ws.json(&["inbox", "show", &id]);
    assert!(s["note"]["held"].is_null(), "{s}");
    assert_eq!(
        main_seen(tools.path()).iter().filter(|s| s.2 == id).count(),
        2
    );

    // A done handoff is not handed back.
    refused(&["inbox", "retry", &id], "already done");
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    let status = git(ws.path(), &["status", "--porcelain", "inbox"]);
    assert!(status.trim().is_empty(), "{status}");
}

#[test]
fn inbox_retry_refuses_a_handoff_that_is_not_held() {
    let ws = TempWorkspace::new();
    let id = create(&ws, "a", "Waiting", &[]);
    let out = ws.cmd().args(["inbox", "retry", &id]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("is not held: it is pending"), "{err}");
    assert!(
        err.contains("loops inbox show"),
        "the help says what is held: {err}"
    );
    assert!(ws.path().join(format!("inbox/{id}.md")).is_file());

    // Nor one a wake is working on: that wake's to finish or give back.
    let tools = tempfile::tempdir().unwrap();
    let hold = tools.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let wait = format!("while [ -e '{}' ]; do sleep 0.05; done", hold.display());
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), &wait, true)
    ));
    let mut d = ws.start_daemon();
    assert!(
        wait_until(LONG, || main_seen(tools.path()).iter().any(|s| s.2 == id)),
        "{}",
        d.log()
    );
    let out = ws.cmd().args(["inbox", "retry", &id]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("a wake of the main session claimed it"),
        "{err}"
    );
    std::fs::remove_file(&hold).unwrap();
    assert!(
        wait_until(LONG, || ws.json(&["inbox", "show", &id])["stage"] == "done"),
        "{}",
        d.log()
    );
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
}

// ---------------------------------------------------------------------------------------
// Stress: 8 writers, 1,000 handoffs, while the daemon runs (and is SIGKILLed).

const WRITERS: usize = 8;
const PER_WRITER: usize = 125;

/// Starts the 8 writer processes: each writes its handoffs Maildir-style itself
/// (inbox/.tmp/, then `mv` into inbox/), with front matter and a ticked item.
fn start_writers(ws: &Path) -> Vec<std::process::Child> {
    (0..WRITERS)
        .map(|w| {
            let script = format!(
                r#"set -eu
i=0
while [ $i -lt {PER_WRITER} ]; do
  id=w{w}-$(printf %04d $i)
  printf -- '---\nid: %s\nfrom: writer-{w}\npriority: normal\n---\n# Handoff %s\n\n- [x] Done already\n' "$id" "$id" > inbox/.tmp/$id.md
  mv inbox/.tmp/$id.md inbox/$id.md
  i=$((i+1))
done"#
            );
            std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(ws)
                .stdin(Stdio::null())
                .spawn()
                .expect("start a writer")
        })
        .collect()
}

fn all_ids() -> BTreeSet<String> {
    (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |i| format!("w{w}-{i:04}")))
        .collect()
}

/// The common end state: 1,000 in done/, each exactly once; inbox/ and active/ empty.
/// `killed`: the daemon was SIGKILLed, so inbox/.tmp/ may hold the runner's own
/// half-written files (dot-names, swept by clean_tmp after 36 h), never a writer's.
fn assert_all_done_once(ws: &TempWorkspace, killed: bool) {
    let done = ws.done_stems();
    let unique: BTreeSet<String> = done.iter().cloned().collect();
    assert_eq!(done.len(), unique.len(), "a handoff is in done/ twice");
    let want = all_ids();
    let extra: Vec<_> = unique.difference(&want).collect();
    let missing: Vec<_> = want.difference(&unique).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "done/ holds every handoff and nothing else: extra {extra:?}, missing {missing:?}"
    );
    assert_eq!(done.len(), WRITERS * PER_WRITER);
    assert!(ws.inbox_files("").is_empty(), "{:?}", ws.inbox_files(""));
    assert!(
        ws.inbox_files("active").is_empty(),
        "{:?}",
        ws.inbox_files("active")
    );
    assert!(ws.inbox_files("rejected").is_empty());
    let tmp: Vec<String> = std::fs::read_dir(ws.path().join("inbox/.tmp"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !(killed && n.starts_with('.')))
        .collect();
    assert!(tmp.is_empty(), "left in inbox/.tmp/: {tmp:?}");
}

fn stress_workspace() -> (TempWorkspace, tempfile::TempDir) {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n  max_wakes_per_minute: 100000\n",
        main_script(tools.path(), "", true)
    ));
    std::fs::create_dir_all(ws.path().join("inbox/.tmp")).unwrap();
    (ws, tools)
}

#[test]
fn inbox_stress_1000_handoffs_from_8_writers_each_completed_exactly_once() {
    let (ws, tools) = stress_workspace();
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let started = Instant::now();
    for mut w in start_writers(ws.path()) {
        assert!(w.wait().unwrap().success());
    }
    assert!(
        wait_until(LONG, || ws.done_stems().len() >= WRITERS * PER_WRITER),
        "{} done after {:?}\n{}",
        ws.done_stems().len(),
        started.elapsed(),
        d.log()
    );
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    assert_all_done_once(&ws, false);

    // The main session saw each handoff exactly once, in wakes that coalesced them.
    let seen = main_seen(tools.path());
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &seen {
        *count.entry(s.2.as_str()).or_default() += 1;
    }
    let dup: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "seen more than once: {dup:?}");
    assert!(
        count.keys().map(|s| s.to_string()).collect::<BTreeSet<_>>() == all_ids(),
        "the main session saw every handoff"
    );
    let wakes: BTreeSet<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert!(
        wakes.len() < WRITERS * PER_WRITER,
        "handoffs arriving together share a wake ({} wakes)",
        wakes.len()
    );
    // Every completion is in git: each done file is tracked, none is left pending.
    let tracked = git(ws.path(), &["ls-files", "inbox/done"]);
    assert_eq!(tracked.lines().count(), WRITERS * PER_WRITER);
    let status = git(ws.path(), &["status", "--porcelain", "inbox"]);
    assert!(status.trim().is_empty(), "{status}");
}

#[test]
fn inbox_stress_1000_handoffs_survive_sigkill_of_the_daemon() {
    let (ws, tools) = stress_workspace();
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let writers = start_writers(ws.path());
    // Kill the daemon 5 times at moments spread over the stream: each time a little more
    // is done, after a pseudo-random extra delay (seeded by the clock).
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut logs = Vec::new();
    for k in 0..5 {
        let want = (k + 1) * WRITERS * PER_WRITER / 7;
        wait_until(LONG, || ws.done_stems().len() >= want);
        std::thread::sleep(Duration::from_millis(next() % 150));
        d.signal(Signal::KILL);
        assert!(d.wait_exit(LONG).is_some());
        logs.push(d.log());
        d = ws.start_daemon();
    }
    for mut w in writers {
        assert!(w.wait().unwrap().success());
    }
    assert!(
        wait_until(LONG, || ws.done_stems().len() >= WRITERS * PER_WRITER
            && ws.inbox_files("").is_empty()
            && ws.inbox_files("active").is_empty()),
        "seed {seed}: {} done, pending {}, active {:?}\n{}",
        ws.done_stems().len(),
        ws.inbox_files("").len(),
        ws.inbox_files("active"),
        d.log()
    );
    // The last restart may still be starting: a SIGTERM before the process has installed
    // its handlers would kill it by default, which says nothing about loops.
    d.wait_for_log("loops daemon started", LONG);
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    assert_all_done_once(&ws, true);

    // What "exactly once" means with SIGKILL: each handoff is completed (moved to done/)
    // exactly once. The main session may have been shown a handoff again only if the
    // wake that first showed it was killed before it finished: at most one of the wakes
    // that saw a handoff finished (has a record in .loops/runs/main.jsonl).
    let finished: BTreeSet<String> = ws
        .runs("main")
        .iter()
        .filter(|r| r["outcome"] == "acted")
        .filter_map(|r| r["run_id"].as_str().map(str::to_string))
        .collect();
    let mut by_id_owned: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (run, _, id) in main_seen(tools.path()) {
        by_id_owned.entry(id).or_default().push(run);
    }
    assert!(
        by_id_owned.keys().cloned().collect::<BTreeSet<_>>() == all_ids(),
        "the main session saw every handoff"
    );
    for (id, runs) in &by_id_owned {
        let done_in = runs.iter().filter(|r| finished.contains(*r)).count();
        assert!(
            done_in <= 1,
            "seed {seed}: {id} was completed by {done_in} finished wakes: {runs:?}"
        );
    }
    let fsck = std::process::Command::new("git")
        .current_dir(ws.path())
        .args(["fsck", "--strict"])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "git fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
fn inbox_crash_recovery_returns_claimed_handoffs_but_keeps_held_ones() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), "", true)
    ));
    let active = ws.path().join("inbox/active");
    std::fs::create_dir_all(&active).unwrap();
    let hf = |title: &str| format!("---\nfrom: a\n---\n# {title}\n");
    // A wake that died: its claims file names a process that is gone.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(active.join("claimed.md"), hf("Claimed by a dead wake")).unwrap();
    ws.write(
        ".loops/inbox/claims/01DEAD.json",
        &serde_json::json!({"run_id": "01DEAD", "pid": dead_pid, "pid_start": null,
            "files": ["claimed.md"]})
        .to_string(),
    );
    // A crash between the claim (rename into active/) and the claims file being written.
    std::fs::write(
        active.join("unrecorded.md"),
        hf("Claimed, claims not written"),
    )
    .unwrap();
    // Held for a person: stays where it is.
    std::fs::write(active.join("held.md"), hf("Held")).unwrap();
    ws.write(
        ".loops/inbox/notes/held.md.json",
        r#"{"attempts": 0, "held": "the main session did not report it completed"}"#,
    );

    let mut d = ws.start_daemon();
    assert!(
        wait_until(LONG, || ws.done_stems() == vec!["claimed", "unrecorded"]),
        "{:?}\n{}",
        ws.inbox_json(),
        d.log()
    );
    assert_eq!(ws.inbox_files("active"), vec!["held.md"]);
    assert!(ws.inbox_files("").is_empty());
    assert!(!ws.path().join(".loops/inbox/claims/01DEAD.json").exists());
    d.wait_for_log("went back to the inbox", LONG);
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
}

#[test]
fn inbox_a_main_session_cut_short_by_a_crash_is_stopped_before_its_handoff_is_handed_again() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    let pidfile = tools.path().join("main.pid");
    // The first wake notes its pid and hangs; the next ones complete what they are given.
    let extra = format!(
        "if [ ! -f {p} ]; then echo $$ > {p}; sleep 120; fi",
        p = pidfile.display()
    );
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), &extra, true)
    ));
    crate::common::drop_handoff(ws.path(), "h1", "---\nfrom: a\n---\n# One\n");
    let mut d = ws.start_daemon();
    let read_pid = || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
    };
    assert!(wait_until(LONG, || read_pid().is_some()), "{}", d.log());
    let main_pid = read_pid().unwrap();
    d.signal(Signal::KILL);
    assert!(d.wait_exit(LONG).is_some());
    assert!(
        crate::common::pid_alive(main_pid),
        "the main session outlived the daemon"
    );

    let mut d2 = ws.start_daemon();
    assert!(
        wait_until(LONG, || ws.done_stems() == vec!["h1"]),
        "{}",
        d2.log()
    );
    assert!(
        wait_until(LONG, || !crate::common::pid_alive(main_pid)
            || crate::common::is_zombie(main_pid)),
        "the orphaned main session {main_pid} was stopped"
    );
    let wakes = ws.runs("main");
    assert!(
        wakes.iter().any(|w| w["outcome"] == "interrupted"
            && w["note"].as_str().unwrap_or("").contains("process group")),
        "the cut-short wake is recorded, its group stopped: {wakes:?}"
    );
    let journal = std::fs::read_to_string(ws.path().join(".loops/daemon.jsonl")).unwrap();
    let unclean: Vec<serde_json::Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "unclean_stop")
        .collect();
    assert_eq!(unclean.len(), 1, "{journal}");
    assert_eq!(unclean[0]["recovered"]["handoffs"][0], "h1.md", "{journal}");
    d2.signal(Signal::TERM);
    assert!(d2.wait_exit(LONG).expect("stops").success(), "{}", d2.log());
}

#[test]
fn inbox_a_completion_the_disk_refuses_is_finished_later_without_handing_it_over_again() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), "", true)
    ));
    // done/ cannot be made: the move that completes a handoff fails, as on a read-only disk.
    ws.write("inbox/done", "in the way\n");
    crate::common::drop_handoff(ws.path(), "h1", "---\nfrom: a\n---\n# One\n");
    let mut d = ws.start_daemon();
    d.wait_for_log("could not complete it yet", LONG);
    assert_eq!(ws.inbox_files("active"), vec!["h1.md"]);
    std::fs::remove_file(ws.path().join("inbox/done")).unwrap();
    assert!(
        wait_until(LONG, || ws.done_stems() == vec!["h1"]),
        "{}",
        d.log()
    );
    assert!(
        wait_until(LONG, || commit_for(ws.path(), "h1", "completed").is_some()),
        "the late completion is committed: {}",
        d.log()
    );
    let seen: Vec<_> = main_seen(tools.path())
        .into_iter()
        .filter(|(_, _, id)| id == "h1")
        .collect();
    assert_eq!(seen.len(), 1, "handed to the main session once: {seen:?}");
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "");
}

/// The README's flow without an editor: `loops inbox tick` by number, by text and by the
/// start of a text, `--all`, then `loops inbox complete`; each tick committed.
#[test]
fn inbox_tick_by_number_text_prefix_or_all_then_complete() {
    let ws = TempWorkspace::new();
    let id = create(
        &ws,
        "research-minion",
        "Research ready",
        &[
            "--item",
            "Read the draft",
            "--item",
            "Reply to the team",
            "--item",
            "Archive the notes (optional)",
        ],
    );
    // Completing first fails, and says how to tick.
    let out = ws
        .cmd()
        .args(["inbox", "complete", &id, "--summary", "Replied"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("loops inbox tick {id} N")), "{err}");

    // `show` numbers the items, as `tick` counts them.
    let shown = ws.cmd().args(["inbox", "show", &id]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("  1. [ ] Read the draft\n  2. [ ] Reply to the team\n"),
        "{shown}"
    );

    let out = ws.cmd().args(["inbox", "tick", &id, "1"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ticked 1. Read the draft"), "{text}");
    assert!(text.contains("2. [ ] Reply to the team"), "{text}");
    assert!(
        !text.contains("Archive"),
        "optional items are not required: {text}"
    );
    let c = commit_for(ws.path(), &id, "ticked").expect("the tick is committed");
    assert_eq!(
        git(ws.path(), &["show", "--format=", "--name-only", &c]).trim(),
        format!("inbox/{id}.md")
    );
    assert_eq!(git(ws.path(), &["status", "--porcelain", "inbox"]), "");

    // Ticked already: said, and not an error; nothing new is committed.
    let commits = git(ws.path(), &["rev-list", "--count", "HEAD"]);
    let out = ws
        .cmd()
        .args(["inbox", "tick", &id, "Read the draft"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already ticked: 1. Read the draft"));
    assert_eq!(git(ws.path(), &["rev-list", "--count", "HEAD"]), commits);

    // Unknown and ambiguous items are errors that list the items.
    for (item, says) in [
        ("9", "no checklist item `9`"),
        ("Re", "matches more than one"),
    ] {
        let out = ws
            .cmd()
            .args(["inbox", "tick", &id, item])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{item}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
        assert!(
            err.contains("1. [x] Read the draft") && err.contains("2. [ ] Reply to the team"),
            "{err}"
        );
    }
    // Neither items nor --all: clap refuses.
    assert!(!ws
        .cmd()
        .args(["inbox", "tick", &id])
        .output()
        .unwrap()
        .status
        .success());

    // The start of a text, any case; then --all (the optional item too), as JSON.
    let v = ws.json(&["inbox", "tick", &id, "reply to"]);
    assert_eq!(
        v["ticked"],
        serde_json::json!([{"number": 2, "text": "Reply to the team"}])
    );
    assert_eq!(v["complete"], true);
    assert_eq!(v["stage"], "pending");
    let v = ws.json(&["inbox", "tick", &id, "--all"]);
    assert_eq!(v["ticked"][0]["number"], 3);
    assert_eq!(v["already_ticked"].as_array().map(Vec::len), Some(2));

    let v = ws.json(&["inbox", "complete", &id, "--summary", "Replied"]);
    assert_eq!(v["stage"], "done");
    let done = std::fs::read_to_string(ws.path().join(v["path"].as_str().unwrap())).unwrap();
    assert!(
        done.contains("- [x] Read the draft\n- [x] Reply to the team\n- [x] Archive"),
        "{done}"
    );
    // The writer's record still matches: ticks never touch the front matter.
    let c = commit_for(ws.path(), &id, "completed").expect("completion committed");
    assert!(git_trailers(ws.path(), &c).contains(&("From".into(), "research-minion".into())));
    let out = ws.cmd().args(["inbox", "tick", &id, "1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already done"));
    assert_eq!(git(ws.path(), &["status", "--porcelain", "inbox"]), "");
}

/// Runner-made handoffs carry checklists (here a loop paused after failing); a command
/// main session completes them by saying what it did: `"all_ticked": true`, or the items
/// by number or text. What it did not tick holds the handoff, with the ticks it made kept
/// and committed.
#[test]
fn inbox_a_command_main_session_ticks_runner_handoffs_in_its_report() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    let report = r#"for p in $paths; do
  id=$(basename "$p" .md)
  if grep -q '^# Loop ' "$p"; then
    printf '{"completed":[{"id":"%s","all_ticked":true,"summary":"fixed and resumed"}]}\n' "$id"
  elif grep -q '^# Bad' "$p"; then
    printf '{"completed":[{"id":"%s","ticked":[1,9]}]}\n' "$id"
  else
    printf '{"completed":[{"id":"%s","ticked":[1,"thr"]}]}\n' "$id"
  fi
done"#;
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        &format!(
            "limits:\n  shutdown_grace: 2s\n  pause_after_failures: 1\nmain:\n  command: {}\n",
            main_script(tools.path(), report, false)
        ),
    );
    ws.add_loop(
        "flaky",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"echo broken >&2; exit 3\" }\n",
    );
    crate::common::git_commit_all(ws.path(), "setup");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);

    ws.cmd().args(["trigger", "flaky"]).assert().code(1);
    let partial = create(
        &ws,
        "a",
        "Three things",
        &["--item", "One", "--item", "Two", "--item", "Three"],
    );
    let bad = create(&ws, "b", "Bad report", &["--item", "Only"]);
    let paused = || {
        ws.inbox_json().into_iter().find(|h| {
            h["from"] == "loops" && h["title"].as_str().is_some_and(|t| t.contains("flaky"))
        })
    };
    assert!(
        wait_until(LONG, || paused().is_some_and(|h| h["stage"] == "done")
            && entry(&ws, &partial).is_some_and(|e| e["held"].is_string())
            && entry(&ws, &bad).is_some_and(|e| e["held"].is_string())),
        "{:#?}\n{}",
        ws.inbox_json(),
        d.log()
    );
    let h = paused().unwrap();
    let id = h["id"].as_str().unwrap().to_string();
    let done = std::fs::read_to_string(ws.path().join(h["path"].as_str().unwrap())).unwrap();
    assert!(
        !done.contains("- [ ]") && done.contains("- [x] Fix it"),
        "{done}"
    );
    assert!(done.contains("fixed and resumed"), "{done}");
    assert!(commit_for(ws.path(), &id, "completed").is_some());

    // Items 1 and "thr…" ticked; "Two" was not, so it is held, saying so.
    let e = entry(&ws, &partial).unwrap();
    assert_eq!(e["stage"], "active");
    assert_eq!(e["unticked"], serde_json::json!(["Two"]));
    assert!(
        e["held"].as_str().unwrap().contains("not ticked: Two"),
        "{e}"
    );
    let text = std::fs::read_to_string(ws.path().join(e["path"].as_str().unwrap())).unwrap();
    assert!(text.contains("- [x] One\n- [ ] Two\n- [x] Three"), "{text}");

    // A report naming an item the handoff does not have ticks nothing, and says why.
    let e = entry(&ws, &bad).unwrap();
    let why = e["held"].as_str().unwrap();
    assert!(
        why.contains("ticks were refused") && why.contains("no checklist item `9`"),
        "{why}"
    );
    assert_eq!(e["unticked"], serde_json::json!(["Only"]));

    // A person ticks the rest and completes it; the hold says it waits for that.
    let v = ws.json(&["inbox", "tick", &partial, "2"]);
    assert_eq!(v["complete"], true);
    let e = entry(&ws, &partial).unwrap();
    assert!(
        e["held"]
            .as_str()
            .unwrap()
            .contains("waiting to be completed"),
        "{e}"
    );
    ws.json(&["inbox", "complete", &partial]);

    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    let status = git(ws.path(), &["status", "--porcelain", "inbox"]);
    assert!(status.trim().is_empty(), "{status}");
}

/// A handoff a wake claimed and a completion asked for before its ticks held, as a person
/// finds it: `inbox/active/<id>.md`, held, committed.
fn held_handoff(ws: &TempWorkspace, id: &str) {
    let active = ws.path().join("inbox/active");
    std::fs::create_dir_all(&active).unwrap();
    std::fs::write(
        active.join(format!("{id}.md")),
        format!("---\nid: {id}\nfrom: scout\nto: main\n---\n# Hold me\n\n- [ ] Read it\n"),
    )
    .unwrap();
    crate::common::git_commit_all(ws.path(), "a handoff a wake claimed");
    let early = ws.cmd().args(["inbox", "complete", id]).output().unwrap();
    assert!(!early.status.success(), "unticked: held for a person");
    assert!(ws.json(&["inbox", "show", id])["note"]["held"].is_string());
}

#[test]
fn inbox_retry_beside_a_persons_git_work_takes_none_of_it() {
    let ws = TempWorkspace::new();
    held_handoff(&ws, "h7");
    // The person has an edit staged and another not, and a file git does not track.
    ws.write("notes.txt", "one\n");
    crate::common::git_commit_all(ws.path(), "notes");
    ws.write("notes.txt", "one\ntwo (staged)\n");
    git(ws.path(), &["add", "notes.txt"]);
    ws.write("notes.txt", "one\ntwo (staged)\nthree (not staged)\n");
    ws.write("scratch.txt", "mine\n");
    let r = ws.json(&["inbox", "retry", "h7"]);
    assert_eq!(r["stage"], "pending", "{r}");
    let c = commit_for(ws.path(), "h7", "retried").expect("the move is committed");
    let files = git(
        ws.path(),
        &["show", "--no-renames", "--name-only", "--format=", &c],
    );
    let mut files: Vec<&str> = files.lines().collect();
    files.sort();
    assert_eq!(
        files,
        ["inbox/active/h7.md", "inbox/h7.md"],
        "only the move"
    );
    assert_eq!(
        git(ws.path(), &["diff", "--cached", "--name-only"]).trim(),
        "notes.txt"
    );
    assert_eq!(
        git(ws.path(), &["show", ":notes.txt"]),
        "one\ntwo (staged)\n",
        "the staged edit is still staged, as it was"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes.txt")).unwrap(),
        "one\ntwo (staged)\nthree (not staged)\n"
    );
    let status = git(ws.path(), &["status", "--porcelain"]);
    assert!(status.contains("?? scratch.txt"), "{status}");
    assert!(!status.contains("inbox"), "{status}");
    git(ws.path(), &["fsck", "--strict"]);
}

#[test]
fn inbox_retry_during_a_conflicted_merge_commits_nothing_and_leaves_the_merge() {
    let ws = TempWorkspace::new();
    held_handoff(&ws, "h8");
    ws.write("notes.txt", "base\n");
    crate::common::git_commit_all(ws.path(), "notes");
    let main = git(ws.path(), &["rev-parse", "--abbrev-ref", "HEAD"]);
    git(ws.path(), &["checkout", "-q", "-b", "other"]);
    ws.write("notes.txt", "theirs\n");
    crate::common::git_commit_all(ws.path(), "theirs");
    git(ws.path(), &["checkout", "-q", main.trim()]);
    ws.write("notes.txt", "ours\n");
    crate::common::git_commit_all(ws.path(), "ours");
    let merge = std::process::Command::new("git")
        .args(["merge", "other"])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(!merge.status.success(), "the merge conflicts");
    let head = git(ws.path(), &["rev-parse", "HEAD"]);

    let out = ws.cmd().args(["inbox", "retry", "h8"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The handoff is back in the inbox; git is left mid-merge as the person left it.
    assert!(ws.path().join("inbox/h8.md").is_file());
    assert_eq!(
        git(ws.path(), &["rev-parse", "HEAD"]),
        head,
        "no commit during the merge"
    );
    assert!(
        ws.path().join(".git/MERGE_HEAD").is_file(),
        "the merge is still going"
    );
    let unmerged = git(ws.path(), &["ls-files", "-u", "notes.txt"]);
    assert_eq!(
        unmerged.lines().count(),
        3,
        "the conflict is as git left it: {unmerged}"
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        said.contains("warning"),
        "the person hears it was not committed: {said}"
    );
}

#[test]
fn inbox_retry_hands_back_a_handoff_whose_hold_note_is_damaged_saying_so() {
    let ws = TempWorkspace::new();
    let a = create(&ws, "a", "Left by a dead wake, no note", &[]);
    let b = create(&ws, "a", "Held, its note damaged", &[]);
    // Where a wake's runner killed mid-wake leaves them: in active/, with no live wake
    // naming them; the second one's hold note is cut short, as a full disk leaves it.
    std::fs::create_dir_all(ws.path().join("inbox/active")).unwrap();
    for id in [&a, &b] {
        std::fs::rename(
            ws.path().join(format!("inbox/{id}.md")),
            ws.path().join(format!("inbox/active/{id}.md")),
        )
        .unwrap();
    }
    let notes = ws.path().join(".loops/inbox/notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(
        notes.join(format!("{b}.md.json")),
        "{\"held\": \"waiting for",
    )
    .unwrap();

    // With no note, it is the next start's to give back (as for a wake still going).
    let said = Out::of(ws.cmd().args(["inbox", "retry", &a]));
    assert_eq!(said.code, Some(1), "{}", said.all());
    assert!(
        said.stderr.contains("daemon's next start"),
        "{}",
        said.all()
    );
    assert!(ws.path().join(format!("inbox/active/{a}.md")).is_file());
    let said = Out::of(ws.cmd().args(["inbox", "retry", &b]));
    assert_eq!(said.code, Some(0), "{}", said.all());
    assert!(said.stdout.contains("handed"), "{}", said.all());
    assert!(said.stdout.contains("cannot be read"), "{}", said.all());
    assert!(
        said.stdout.contains(&format!("{b}.md.json")),
        "{}",
        said.all()
    );
    assert!(ws.path().join(format!("inbox/{b}.md")).is_file());
    assert_eq!(ws.json(&["inbox", "show", &b])["stage"], "pending");
    assert!(
        !notes.join(format!("{b}.md.json")).exists(),
        "the damaged note is replaced"
    );
}

/// A rejection is read by whoever sent the handoff: `--reason ""` is refused, as the web
/// view's empty reason field is, and the handoff stays where it was.
#[test]
fn inbox_reject_refuses_an_empty_reason_and_moves_nothing() {
    let ws = TempWorkspace::new();
    let made = ws.json(&[
        "handoff", "create", "--from", "script", "--title", "Check it",
    ]);
    let id = made["id"].as_str().expect("an id").to_string();
    let head = git(ws.path(), &["rev-parse", "HEAD"]);
    for reason in ["", "   "] {
        let out = ws
            .cmd()
            .args(["inbox", "reject", &id, "--reason", reason])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{reason:?}: {err}");
        assert!(
            err.contains(&format!("no reason given for rejecting `{id}`")),
            "{err}"
        );
        assert!(err.contains("help: say why with --reason"), "{err}");
    }
    assert_eq!(ws.inbox_files(""), vec![format!("{id}.md")]);
    assert!(ws.inbox_files("rejected").is_empty());
    assert_eq!(
        git(ws.path(), &["rev-parse", "HEAD"]),
        head,
        "nothing committed"
    );
    let v = ws.json(&["inbox", "reject", &id, "--reason", "not for us"]);
    assert_eq!(v["stage"], "rejected", "{v}");
}

/// A shell completes a handoff's path, not its id: `inbox/ID.md` names the handoff, and
/// what is committed names it by its id.
#[test]
fn inbox_commands_take_a_handoffs_file_path_and_commit_its_id() {
    let ws = TempWorkspace::new();
    let made = ws.json(&[
        "handoff", "create", "--from", "script", "--title", "By path", "--item", "Look",
    ]);
    let id = made["id"].as_str().expect("an id").to_string();
    let path = format!("inbox/{id}.md");
    let shown = ws.json(&["inbox", "show", &path]);
    assert_eq!(shown["handoff"]["id"], id.as_str(), "{shown}");
    let ticked = ws.json(&["inbox", "tick", &format!("./{path}"), "1"]);
    assert_eq!(ticked["id"], id.as_str(), "{ticked}");
    let done = ws.json(&["inbox", "complete", &path, "--summary", "looked"]);
    assert_eq!(done["id"], id.as_str(), "{done}");
    let c = commit_for(ws.path(), &id, "completed").expect("the completion is committed by id");
    let trailers = git_trailers(ws.path(), &c);
    assert!(
        !trailers.iter().any(|(_, v)| v.contains("inbox/")),
        "{trailers:?}"
    );
    // A path names the file only: nothing outside the inbox is found by one.
    let out = ws
        .cmd()
        .args(["inbox", "show", "../../etc/passwd"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no handoff `passwd`"));
}
