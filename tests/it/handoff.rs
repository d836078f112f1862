//! Handoff files: the format (as people, editors and Obsidian write it), `loops handoff
//! create`, the rejection of what is malformed (and only once it has settled), and the
//! runner's accountability handoffs (orphan drafts, paused loops). Real files, real
//! processes, real git; waits poll with generous deadlines.

use crate::common::{
    drop_handoff, git, git_commit_all, git_trailers, main_script, main_seen, wait_until,
    TempWorkspace,
};
use loops_testutil::pre_exec::limit_file_size;
use loops_testutil::Signal;
use std::io::Write;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// `loops inbox show ID --json`.
fn show(ws: &TempWorkspace, id: &str) -> serde_json::Value {
    ws.json(&["inbox", "show", id])
}

fn items(h: &serde_json::Value) -> Vec<(String, bool, bool)> {
    h["checklist"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["text"].as_str().unwrap().to_string(),
                i["checked"].as_bool().unwrap(),
                i["optional"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn it(text: &str, checked: bool, optional: bool) -> (String, bool, bool) {
    (text.to_string(), checked, optional)
}

#[test]
fn handoff_format_as_people_editors_and_obsidian_write_it() {
    let ws = TempWorkspace::new();
    // A note written by hand in an editor: no front matter at all. Task lists as
    // CommonMark + GFM read them: `*` and `+` bullets, `[X]`, nested items, an item in a
    // code block (not an item), a `[ ]` that is not at an item's start (not an item).
    drop_handoff(
        ws.path(),
        "call-the-bank",
        "# Call the *bank*\n\nAbout the `loan`.\n\n- [ ] Find the number\n* [X] Write the questions\n+ [x] Check the balance\n  - [ ] Nested: ask about fees\n- plain bullet, not a task\n- text then [ ] later\n\n```\n- [ ] inside a code block\n```\n\n1. [ ] An ordered task (optional)\n",
    );
    let s = show(&ws, "call-the-bank");
    assert_eq!(s["stage"], "pending");
    assert_eq!(s["error"], serde_json::Value::Null);
    let h = &s["handoff"];
    assert_eq!(h["id"], "call-the-bank", "the file name is the id");
    assert_eq!(h["from"], "person");
    assert_eq!(h["to"], "main");
    assert_eq!(h["priority"], "normal");
    assert_eq!(h["title"], "Call the bank");
    assert_eq!(
        items(h),
        vec![
            it("Find the number", false, false),
            it("Write the questions", true, false),
            it("Check the balance", true, false),
            it("Nested: ask about fees", false, false),
            it("An ordered task (optional)", false, true),
        ]
    );

    // Obsidian: a tags list, aliases and other keys of its own, a date-only `created`.
    drop_handoff(
        ws.path(),
        "obsidian-note",
        "---\ntags:\n  - inbox\n  - money\naliases: [Bank call]\ncssclasses: wide\ncreated: 2026-11-20\npriority: high\nfrom: phone\n---\n\n# From my phone\n\n- [ ] Pay the invoice\n",
    );
    let h = &show(&ws, "obsidian-note")["handoff"];
    assert_eq!(h["tags"], serde_json::json!(["inbox", "money"]));
    assert_eq!(h["priority"], "high");
    assert_eq!(h["from"], "phone");
    assert_eq!(h["created"], "2026-11-20T00:00:00Z");
    assert_eq!(items(h), vec![it("Pay the invoice", false, false)]);

    // `---` later in the body is a horizontal rule (or a setext underline), never front
    // matter; a note that starts with text has none.
    drop_handoff(
        ws.path(),
        "rules",
        "Just a line first.\n\n---\nfrom: not-front-matter\n---\n\n# Title after a rule\n\n- [ ] Still an item\n",
    );
    let s = show(&ws, "rules");
    assert_eq!(s["error"], serde_json::Value::Null, "{s}");
    let h = &s["handoff"];
    assert_eq!(h["from"], "person", "a rule later on is not front matter");
    assert!(h["body"]
        .as_str()
        .unwrap()
        .starts_with("Just a line first."));
    assert_eq!(items(h), vec![it("Still an item", false, false)]);
    // Front matter, then a horizontal rule in the body: the front matter ends at its
    // own closing line, the rule stays in the body.
    drop_handoff(
        ws.path(),
        "fm-then-rule",
        "---\nfrom: minion\n---\n# Above\n\n- [x] one\n\n---\n\n- [ ] two\n",
    );
    let h = &show(&ws, "fm-then-rule")["handoff"];
    assert_eq!(h["from"], "minion");
    assert!(h["body"].as_str().unwrap().contains("\n---\n"));
    assert_eq!(
        items(h),
        vec![it("one", true, false), it("two", false, false)]
    );

    // CRLF line endings (Windows editors), with a BOM.
    drop_handoff(
        ws.path(),
        "windows",
        "\u{feff}---\r\nid: from-windows\r\nfrom: laptop\r\npriority: urgent\r\n---\r\n# Written on Windows\r\n\r\n- [x] Saved with CRLF\r\n- [ ] Still parsed\r\n",
    );
    let s = show(&ws, "from-windows");
    assert_eq!(s["error"], serde_json::Value::Null, "{s}");
    let h = &s["handoff"];
    assert_eq!(h["id"], "from-windows", "the front matter's id wins");
    assert_eq!(h["from"], "laptop");
    assert_eq!(h["priority"], "urgent");
    assert_eq!(h["title"], "Written on Windows");
    assert_eq!(
        items(h),
        vec![
            it("Saved with CRLF", true, false),
            it("Still parsed", false, false)
        ]
    );

    // Empty front matter is fine too.
    drop_handoff(ws.path(), "empty-fm", "---\n---\n# Nothing above\n");
    assert_eq!(show(&ws, "empty-fm")["handoff"]["title"], "Nothing above");

    // All of them are listed as pending and parse.
    let list = ws.inbox_json();
    assert_eq!(list.len(), 6, "{list:?}");
    assert!(list.iter().all(|h| h["stage"] == "pending"));
    assert!(
        list.iter().all(|h| h["title"] != "(does not parse)"),
        "{list:?}"
    );
}

#[test]
fn handoff_create_writes_every_flag_and_commits_with_trailers() {
    let ws = TempWorkspace::new();
    ws.write("drafts/research-minion/2026-11-20.md", "# Draft\n");
    git_commit_all(ws.path(), "a draft");
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        body.path(),
        "Read the draft, then **reply**.\n\nSecond paragraph.\n",
    )
    .unwrap();
    let out = ws
        .cmd()
        .env("LOOPS_RUN_ID", "01TESTRUN")
        .args([
            "handoff",
            "create",
            "--from",
            "research-minion",
            "--title",
            "Research ready",
            "--to",
            "main",
            "--priority",
            "urgent",
            "--draft",
            "drafts/research-minion/2026-11-20.md",
            "--body-file",
        ])
        .arg(body.path())
        .args([
            "--item",
            "Read the draft",
            "--item",
            "Reply to the team",
            "--item",
            "Archive it (optional)",
            "--due",
            "2026-11-21T09:00:00Z",
            "--tag",
            "research",
            "--tag",
            "weekly",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.contains("-research-minion-"), "{id}");
    let path = ws.path().join("inbox").join(format!("{id}.md"));
    assert_eq!(v["path"], path.display().to_string());
    assert_eq!(ws.inbox_files(""), vec![format!("{id}.md")]);
    let tmp = std::fs::read_dir(ws.path().join("inbox/.tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "nothing left in inbox/.tmp/");

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("---\n"), "{text}");
    assert!(text.contains("\n# Research ready\n"), "{text}");
    assert!(text.contains("Second paragraph."), "{text}");
    assert!(
        text.contains("- [ ] Read the draft\n- [ ] Reply to the team\n"),
        "{text}"
    );
    let h = &show(&ws, &id)["handoff"];
    assert_eq!(h["id"], id.as_str());
    assert_eq!(h["from"], "research-minion");
    assert_eq!(h["to"], "main");
    assert_eq!(h["priority"], "urgent");
    assert_eq!(h["run"], "01TESTRUN", "LOOPS_RUN_ID is the run");
    assert_eq!(h["draft"], "drafts/research-minion/2026-11-20.md");
    assert_eq!(h["due"], "2026-11-21T09:00:00Z");
    assert_eq!(h["tags"], serde_json::json!(["research", "weekly"]));
    assert!(h["created"].is_string());
    assert_eq!(
        items(h),
        vec![
            it("Read the draft", false, false),
            it("Reply to the team", false, false),
            it("Archive it (optional)", false, true),
        ]
    );
    // The runner hears that run 01TESTRUN handed off.
    let marker = std::fs::read_to_string(ws.path().join(".loops/handoff-runs/01TESTRUN")).unwrap();
    assert!(marker.contains(&id), "{marker}");

    // Committed, with trailers.
    let t = git_trailers(ws.path(), "HEAD");
    assert!(t.contains(&("Handoff".into(), id.clone())), "{t:?}");
    assert!(
        t.contains(&("From".into(), "research-minion".into())),
        "{t:?}"
    );
    assert!(t.contains(&("Outcome".into(), "created".into())), "{t:?}");
    let files = git(ws.path(), &["show", "--name-only", "--format=", "HEAD"]);
    assert_eq!(files.trim(), format!("inbox/{id}.md"));

    // Plain output, body from stdin, no LOOPS_RUN_ID: prints the id, no run.
    let out = ws
        .cmd()
        .env_remove("LOOPS_RUN_ID")
        .args([
            "handoff",
            "create",
            "--from",
            "script",
            "--title",
            "From stdin",
            "--body-file",
            "-",
        ])
        .write_stdin("Piped body.\n")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id2 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let h = &show(&ws, &id2)["handoff"];
    assert_eq!(h["run"], serde_json::Value::Null);
    assert_eq!(h["priority"], "normal");
    assert!(h["body"].as_str().unwrap().contains("Piped body."));
    assert_ne!(id, id2);
}

#[test]
fn handoff_create_refuses_a_bad_draft_or_input_and_writes_nothing() {
    let ws = TempWorkspace::new();
    ws.write("drafts/x/ok.md", "# ok\n");
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::create_dir_all(ws.path().join("drafts/x/folder")).unwrap();
    git_commit_all(ws.path(), "drafts");
    let head = git(ws.path(), &["rev-parse", "HEAD"]);
    let outside_path = outside.path().display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--draft", "drafts/x/missing.md"], "does not exist"),
        (vec!["--draft", "../x"], "outside the workspace"),
        (
            vec!["--draft", "drafts/../../x.md"],
            "outside the workspace",
        ),
        (vec!["--draft", &outside_path], "outside the workspace"),
        (vec!["--draft", "drafts/x/folder"], "does not exist"),
        (vec!["--priority", "5"], "invalid value '5'"),
        (vec!["--due", "tomorrow"], "not an RFC 3339 time"),
        (
            vec!["--body-file", "/nonexistent/body.md"],
            "cannot read the body file",
        ),
    ];
    for (extra, want) in &cases {
        let out = ws
            .cmd()
            .args(["handoff", "create", "--from", "x", "--title", "T"])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(out.stdout.is_empty(), "{extra:?}");
    }
    // A symlink inside the workspace pointing out of it is outside too.
    std::os::unix::fs::symlink(outside.path(), ws.path().join("drafts/x/link.md")).unwrap();
    let out = ws
        .cmd()
        .args([
            "handoff",
            "create",
            "--from",
            "x",
            "--title",
            "T",
            "--draft",
            "drafts/x/link.md",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the workspace"));
    // An empty title.
    let out = ws
        .cmd()
        .args(["handoff", "create", "--from", "x", "--title", "  "])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("title is empty"));

    // Nothing was written or committed.
    assert!(ws.inbox_files("").is_empty(), "{:?}", ws.inbox_files(""));
    let tmp = std::fs::read_dir(ws.path().join("inbox/.tmp"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(tmp, 0);
    assert_eq!(git(ws.path(), &["rev-parse", "HEAD"]), head);

    // The good draft works.
    let out = ws
        .cmd()
        .args([
            "handoff",
            "create",
            "--from",
            "x",
            "--title",
            "T",
            "--draft",
            "drafts/x/ok.md",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn handoff_create_refuses_a_sender_or_receiver_that_is_no_name() {
    let ws = TempWorkspace::new();
    let head = git(ws.path(), &["rev-parse", "HEAD"]);
    let cases: [(&[&str], &str); 4] = [
        (&["--from", ""], "the handoff's `from` is empty"),
        (&["--from", "  "], "the handoff's `from` is empty"),
        (
            &["--from", "x\npriority: urgent"],
            "the handoff's `from` is not one line",
        ),
        (
            &["--from", "x", "--to", "main\r"],
            "the handoff's `to` is not one line",
        ),
    ];
    for (args, want) in cases {
        let out = ws
            .cmd()
            .args(["handoff", "create", "--title", "T"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            err.contains("help: `from` is the name of the loop"),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(ws.inbox_files("").is_empty(), "{:?}", ws.inbox_files(""));
    let writers = std::fs::read_dir(ws.path().join(".loops/inbox/writers"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(
        writers, 0,
        "no writer recorded for a handoff that was not written"
    );
    assert_eq!(
        git(ws.path(), &["rev-parse", "HEAD"]),
        head,
        "nothing committed"
    );
    // A name with spaces is still a name.
    let out = ws
        .cmd()
        .args([
            "handoff",
            "create",
            "--from",
            "nightly script",
            "--title",
            "T",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn handoff_malformed_files_are_rejected_once_settled_and_never_block_the_others() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), "", true)
    ));
    let inbox = ws.path().join("inbox");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);

    // A file written in place (no .tmp/ rename), slowly: the front matter is not closed
    // yet. While it keeps being written it is young and must not be rejected, even
    // though other handoffs wake the main session meanwhile.
    let slow = inbox.join("slow.md");
    let mut f = std::fs::File::create(&slow).unwrap();
    f.write_all(b"---\nfrom: slow-writer\n").unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < until {
        writeln!(f, "note{n}: still writing").unwrap();
        f.flush().unwrap();
        if n % 5 == 0 {
            drop_handoff(
                ws.path(),
                &format!("good-{n}"),
                &format!("---\nfrom: a\n---\n# Good {n}\n"),
            );
        }
        assert!(
            !inbox.join("rejected/slow.md").exists(),
            "a file still being written was rejected"
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let goods: Vec<String> = (0..n).step_by(5).map(|i| format!("good-{i}")).collect();
    assert!(
        wait_until(LONG, || ws.done_stems() == {
            let mut g = goods.clone();
            g.sort();
            g
        }),
        "{:?}\n{}",
        ws.inbox_json(),
        d.log()
    );
    assert!(!inbox.join("rejected/slow.md").exists());
    // Another file written in place, finished in time: processed, not rejected.
    {
        let mut g = std::fs::File::create(inbox.join("finished.md")).unwrap();
        g.write_all(b"---\nfrom: b\n").unwrap();
        g.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        g.write_all(b"---\n# Finished in place\n").unwrap();
    }

    // Garbage and wrong types, renamed in whole: rejected once they have settled.
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "binary",
            vec![0x7f, b'E', b'L', b'F', 0, 1, 2, 0xff, 0xfe, 0],
            "binary",
        ),
        ("latin1", b"# caf\xe9\n".to_vec(), "not UTF-8"),
        (
            "prio",
            b"---\npriority: 5\n---\n# t\n".to_vec(),
            "`priority` must be a string",
        ),
        (
            "prio-word",
            b"---\npriority: asap\n---\n# t\n".to_vec(),
            "must be one of urgent",
        ),
        (
            "created",
            b"---\ncreated: yesterday\n---\n# t\n".to_vec(),
            "`created: yesterday` is not a date",
        ),
        (
            "from-list",
            b"---\nfrom: [a, b]\n---\n# t\n".to_vec(),
            "`from` must be a string",
        ),
        (
            "not-yaml",
            b"---\nfrom: [a\n---\n# t\n".to_vec(),
            "not valid YAML",
        ),
        (
            "a-list",
            b"---\n- a\n- b\n---\n".to_vec(),
            "must be a mapping",
        ),
        (
            "bad-id",
            b"---\nid: ../../etc\n---\n# t\n".to_vec(),
            "may hold only letters",
        ),
    ];
    for (name, bytes, _) in &bad {
        let tmp = inbox.join(".tmp").join(format!("{name}.md"));
        std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, inbox.join(format!("{name}.md"))).unwrap();
    }
    drop_handoff(ws.path(), "after-the-bad", "---\nfrom: c\n---\n# After\n");

    // The slow writer gives up without closing its front matter: once settled, rejected.
    drop(f);
    let mut want_rejected: Vec<String> = bad.iter().map(|b| format!("{}.md", b.0)).collect();
    want_rejected.push("slow.md".into());
    want_rejected.sort();
    assert!(
        wait_until(LONG, || ws.inbox_files("rejected") == want_rejected),
        "{:?}\n{}",
        ws.inbox_files("rejected"),
        d.log()
    );
    assert!(
        wait_until(LONG, || ws
            .done_stems()
            .contains(&"after-the-bad".to_string())
            && ws.done_stems().contains(&"finished".to_string())),
        "{:?}\n{}",
        ws.inbox_json(),
        d.log()
    );
    // Each rejected file is kept byte for byte, with NAME.error.md giving the reason.
    for (name, bytes, why) in &bad {
        let kept = std::fs::read(inbox.join("rejected").join(format!("{name}.md"))).unwrap();
        assert_eq!(&kept, bytes, "{name} kept intact");
        let err = std::fs::read_to_string(inbox.join("rejected").join(format!("{name}.error.md")))
            .unwrap();
        assert!(err.contains(why), "{name}: {err}");
        let s = show(&ws, name);
        assert_eq!(s["stage"], "rejected");
        assert!(s["reason"].as_str().unwrap().contains(why), "{s}");
    }
    let err = std::fs::read_to_string(inbox.join("rejected/slow.error.md")).unwrap();
    assert!(err.contains("not closed"), "{err}");
    let kept = std::fs::read_to_string(inbox.join("rejected/slow.md")).unwrap();
    assert!(kept.starts_with("---\nfrom: slow-writer\nnote0: still writing\n"));
    assert!(
        kept.contains(&format!("note{}: still writing", n - 1)),
        "{kept}"
    );
    let listed = ws.inbox_json();
    let rejected: Vec<_> = listed.iter().filter(|h| h["stage"] == "rejected").collect();
    assert_eq!(rejected.len(), want_rejected.len());
    assert!(rejected
        .iter()
        .all(|h| !h["reason"].as_str().unwrap().is_empty()));

    // The main session never saw a malformed file.
    let seen = main_seen(tools.path());
    assert!(
        seen.iter()
            .all(|s| s.2.starts_with("good-") || s.2 == "after-the-bad" || s.2 == "finished"),
        "{seen:?}"
    );
    assert!(ws.inbox_files("").is_empty());
    assert!(ws.inbox_files("active").is_empty());
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
}

// ---------------------------------------------------------------------------------------
// Accountability: handoffs the runner makes itself.

fn loop_config(cmd: &str, extra: &str) -> String {
    format!(
        "schedule: {{ every: 1h }}\npayload:\n  kind: command\n  command: {}\n{extra}",
        serde_json::to_string(cmd).unwrap()
    )
}

#[test]
fn handoff_orphan_draft_gets_a_flagged_handoff_but_a_handed_off_one_does_not() {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    // Forgets to hand off its draft.
    ws.add_loop(
        "forgetful",
        &loop_config(
            "mkdir -p \"$LOOPS_WORKSPACE/drafts/forgetful\" && echo '# Draft' > \"$LOOPS_WORKSPACE/drafts/forgetful/x.md\" && echo wrote it",
            "",
        ),
    );
    // Hands off its draft itself with `loops handoff create` (LOOPS_RUN_ID set by the runner).
    let bin = crate::common::loops_bin();
    ws.add_loop(
        "dutiful",
        &loop_config(
            &format!(
                "cd \"$LOOPS_WORKSPACE\" && mkdir -p drafts/dutiful && echo '# Draft' > drafts/dutiful/y.md && {} handoff create --from dutiful --title 'Draft ready' --draft drafts/dutiful/y.md",
                bin.display()
            ),
            "",
        ),
    );
    git_commit_all(ws.path(), "loops");

    for name in ["forgetful", "dutiful"] {
        let out = ws
            .cmd()
            .args(["trigger", name])
            .timeout(LONG)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = ws.inbox_json();
    assert_eq!(list.len(), 2, "{list:?}");
    let by = |from: &str| -> serde_json::Value {
        let e = list.iter().find(|h| h["from"] == from).expect(from);
        show(&ws, e["id"].as_str().unwrap())["handoff"].clone()
    };
    let orphan = by("forgetful");
    assert_eq!(orphan["flagged"], "orphan-draft");
    assert_eq!(orphan["draft"], "drafts/forgetful/x.md");
    let run = ws.runs("forgetful")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(orphan["run"], run.as_str());
    assert!(orphan["body"]
        .as_str()
        .unwrap()
        .contains("drafts/forgetful/x.md"));
    assert!(ws.runs("forgetful")[0]["note"]
        .as_str()
        .unwrap()
        .contains("no handoff"));
    // Committed with the run.
    let files = git(ws.path(), &["log", "--name-only", "--format=", "-n", "5"]);
    assert!(
        files.contains(&format!("inbox/{}.md", orphan["id"].as_str().unwrap())),
        "{files}"
    );

    let handed = by("dutiful");
    assert_eq!(handed["flagged"], serde_json::Value::Null);
    assert_eq!(handed["title"], "Draft ready");
    let run = ws.runs("dutiful")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        handed["run"],
        run.as_str(),
        "the runner's LOOPS_RUN_ID reached it"
    );
}

#[test]
fn handoff_a_loop_paused_after_failures_hands_off_its_last_error() {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        "limits:\n  shutdown_grace: 1s\n  pause_after_failures: 5\n",
    );
    ws.add_loop(
        "flaky",
        "schedule: { every: 1s }\npayload:\n  kind: command\n  command: \"echo 'the API said 503' >&2; exit 7\"\nretry: { max_attempts: 1 }\n",
    );
    git_commit_all(ws.path(), "flaky loop");
    let mut d = ws.start_daemon();
    assert!(
        wait_until(Duration::from_secs(90), || !ws.inbox_files("").is_empty()),
        "{:?}\n{}",
        ws.runs("flaky"),
        d.log()
    );
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    assert_eq!(
        ws.count_outcome("flaky", "failed"),
        5,
        "{:?}",
        ws.runs("flaky")
    );
    let list = ws.inbox_json();
    assert_eq!(list.len(), 1, "one handoff for one pause: {list:?}");
    let id = list[0]["id"].as_str().unwrap().to_string();
    let h = &show(&ws, &id)["handoff"];
    assert_eq!(h["from"], "loops");
    assert_eq!(h["to"], "main");
    assert_eq!(h["priority"], "high");
    let title = h["title"].as_str().unwrap();
    assert!(
        title.contains("flaky") && title.contains("paused"),
        "{title}"
    );
    let body = h["body"].as_str().unwrap();
    assert!(body.contains("the API said 503"), "the last error: {body}");
    assert!(body.contains("loops resume flaky"), "{body}");
    assert!(!h["checklist"].as_array().unwrap().is_empty());
    let c = git(ws.path(), &["log", "--format=%H"])
        .lines()
        .find(|c| git_trailers(ws.path(), c).contains(&("Handoff".into(), id.clone())))
        .map(str::to_string)
        .expect("the handoff is committed");
    assert!(git_trailers(ws.path(), &c).contains(&("Outcome".into(), "created".into())));
}

/// Issue 16: a `loops handoff create` the disk refused left its file, empty or in part,
/// in `inbox/.tmp/`. The failure says what happened and leaves nothing behind. The disk
/// is full for real: the command may not grow a file past 4 KB (RLIMIT_FSIZE), and its
/// body is 16 KB.
#[test]
fn handoff_create_that_the_disk_refuses_leaves_nothing_in_tmp() {
    let ws = TempWorkspace::new();
    let body = "a line of the body that the disk will not take\n".repeat(350);
    let mut cmd = crate::common::loops_std_cmd(ws.path());
    cmd.args([
        "handoff", "create", "--from", "x", "--title", "Too big", "--body", &body,
    ]);
    limit_file_size(&mut cmd, 4096);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("inbox/.tmp/"), "{err}");
    assert!(err.contains("File too large"), "{err}");
    let left: Vec<_> = std::fs::read_dir(ws.path().join("inbox/.tmp"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in inbox/.tmp/: {left:?}");
    let writers: Vec<_> = std::fs::read_dir(ws.path().join(".loops/inbox/writers"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(writers.is_empty(), "writer records left: {writers:?}");
    assert!(ws.inbox_files("").is_empty(), "{:?}", ws.inbox_files(""));
    // The same command on a disk with room delivers it.
    ws.cmd()
        .args([
            "handoff", "create", "--from", "x", "--title", "Fits", "--body", &body,
        ])
        .assert()
        .success();
    assert_eq!(ws.inbox_files("").len(), 1, "{:?}", ws.inbox_files(""));
}
