//! Resource limits, with real processes and files: a gigabyte of output (a command loop, a
//! shell job, a command main session), a 100 MB handoff, thousands of files in a loop's
//! folder, and the inotify limits, lowered for real in a child user namespace (which has
//! its own `/proc/sys/user/max_inotify_*`). Waits poll with generous deadlines; nothing
//! assumes a fast machine.

use crate::common::{
    drop_handoff, git, git_commit_all, loops_std_cmd, main_script, main_seen, wait_until,
    DaemonProcess, TempWorkspace,
};
use loops_testutil::fake_model::{anthropic, FakeModel};
use loops_testutil::pre_exec::limit_file_size;
use loops_testutil::process::set_file_size_limit;
use loops_testutil::Signal;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(180);
const GIB: u64 = 1 << 30;
/// What a run record keeps of stdout, head and tail together (exec::STDOUT_TAIL).
const STDOUT_KEPT: u64 = 64 * 1024;

/// A workspace without the example loop, with these loops.yaml lines, committed.
fn workspace(yaml: &str) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write("loops.yaml", yaml);
    git_commit_all(ws.path(), "setup");
    ws
}

/// `loops ARGS…` must succeed; its stdout parsed as JSON.
fn loops_json(ws: &TempWorkspace, args: &[&str]) -> Value {
    let out = loops_std_cmd(ws.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run loops");
    assert!(
        out.status.success(),
        "loops {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "loops {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The peak resident memory of a process, in bytes (`VmHWM`).
fn peak_rss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// A loop that prints gigabytes

#[test]
fn limits_a_gigabyte_of_output_keeps_a_bounded_record_and_a_capped_job_log() {
    let ws = workspace("allow_shell_jobs: true\nlimits:\n  max_job_log_bytes: 1048576\n");
    ws.add_loop(
        "flood",
        "schedule: { every: 1d }\npayload:\n  kind: command\n  command: |\n    head -c 1073741824 /dev/zero | tr '\\0' x; echo END\ntimeout: 600s\n",
    );
    git_commit_all(ws.path(), "flood");

    // A command loop: 1 GiB and 4 bytes, kept as 16 KiB of head and 48 KiB of tail.
    let rec = loops_json(&ws, &["trigger", "flood", "--json"]);
    assert_eq!(rec["outcome"], "acted", "{rec}");
    let dropped = GIB + 4 - STDOUT_KEPT;
    assert_eq!(rec["stdout_dropped"], dropped, "{}", rec["error"]);
    let tail = rec["stdout_tail"].as_str().expect("stdout_tail");
    assert!(
        tail.len() < STDOUT_KEPT as usize + 200,
        "the kept output is bounded: {} bytes",
        tail.len()
    );
    assert!(tail.starts_with(&"x".repeat(1000)), "the head is kept");
    assert!(tail.ends_with("xEND\n"), "the tail is kept");
    assert!(
        tail.contains(&format!("[… {dropped} bytes not kept: {} in all", GIB + 4)),
        "a line says how much is missing"
    );
    // The record on disk is as small as that; nothing was committed (no file changed).
    let records = ws.path().join(".loops/runs/flood.jsonl");
    assert!(file_size(&records) < 200_000, "{}", file_size(&records));
    assert!(rec["commit"].is_null(), "{rec}");

    // A shell job: the same bounded result, and a log of at most max_job_log_bytes.
    let job = loops_json(
        &ws,
        &[
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "head -c 1073741824 /dev/zero | tr '\\0' y; echo END"}"#,
            "--follow",
            "--json",
        ],
    );
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        job["result"]["stdout_dropped"], dropped,
        "{}",
        job["result"]
    );
    let id = job["id"].as_u64().expect("job id");
    let log = [
        ws.path().join(format!(".loops/jobs/done/{id}.log")),
        ws.path().join(format!(".loops/jobs/{id}.log")),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("the job's log");
    let size = file_size(&log);
    assert!(
        size <= 1048576 + 1024,
        "the log is capped at max_job_log_bytes: {size} bytes"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.starts_with(&format!("--- job #{id} attempt 1 started")));
    let marker = format!(
        "[… {} bytes of output not written to this log",
        GIB + 4 - 1048576
    );
    assert!(text.contains(&marker), "the log says what was cut");
    assert!(text.contains("limits.max_job_log_bytes"));
    assert!(text.ends_with("yEND\n"), "the end of the output is kept");
}

#[test]
fn limits_the_daemon_stays_responsive_while_a_loop_and_the_main_session_flood() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    // The main session prints 256 MiB before its completion line.
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(
            tools.path(),
            "head -c 268435456 /dev/zero | tr '\\0' m; echo",
            true
        )
    ));
    // A loop that never stops printing until it is stopped.
    let started = tools.path().join("flood-started");
    ws.add_loop(
        "flood",
        &format!(
            "schedule: {{ every: 1s }}\npayload:\n  kind: command\n  command: \"touch {}; exec cat /dev/zero\"\ntimeout: 600s\n",
            started.display()
        ),
    );
    git_commit_all(ws.path(), "flood");

    let mut d = ws.start_daemon();
    assert!(
        wait_until(LONG, || started.exists()),
        "the flood never started; log:\n{}",
        d.log()
    );
    // While it floods, a handoff goes through the (also flooding) main session…
    let id = ws.json(&[
        "handoff",
        "create",
        "--from",
        "tester",
        "--title",
        "While flooding",
    ])["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(
        wait_until(LONG, || ws.done_stems() == vec![id.clone()]),
        "the handoff was not completed while a loop flooded; log:\n{}",
        d.log()
    );
    // …and the CLI gets its answers.
    let status = ws.json(&["status"]);
    assert_eq!(status["daemon"]["pid"], d.pid(), "{status}");
    let peak = peak_rss(d.pid());
    assert!(
        peak > 0 && peak < 256 << 20,
        "the daemon's memory stays bounded: peak {peak} bytes"
    );
    assert_eq!(
        ws.count_outcome("flood", "interrupted"),
        0,
        "still flooding"
    );

    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).is_some(), "the daemon did not stop");
    let runs = ws.runs("flood");
    let flood = runs
        .iter()
        .find(|r| r["outcome"] == "interrupted")
        .unwrap_or_else(|| panic!("no interrupted flood run: {runs:?}"));
    assert!(flood["stdout_dropped"].as_u64().unwrap_or(0) > 0, "{flood}");
    assert!(flood["stdout_tail"].as_str().unwrap_or("").len() < STDOUT_KEPT as usize + 200);

    // The main session's completion line came after 256 MiB, and was still read.
    let main = ws
        .runs("main")
        .into_iter()
        .find(|r| r["outcome"] == "acted")
        .expect("the main session's record");
    assert!(
        main["stdout_dropped"].as_u64().unwrap_or(0) > (256 << 20) - STDOUT_KEPT,
        "{}",
        main["stdout_dropped"]
    );
    assert!(main["stdout_tail"]
        .as_str()
        .unwrap_or("")
        .ends_with(&format!("{{\"completed\":[\"{id}\"]}}\n")));
}

// ---------------------------------------------------------------------------------------
// A handoff of 100 MB

/// Writes a handoff of about `mib` MiB the Maildir way, a MiB at a time.
fn write_big_handoff(dir: &Path, name: &str, mib: usize) -> PathBuf {
    let tmp = dir.join(".tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let t = tmp.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&t).unwrap());
    f.write_all(b"---\nfrom: tester\n---\n# A very big handoff\n\n")
        .unwrap();
    let line = "all work and no play makes a very long handoff\n".repeat(23_000);
    let chunk = &line.as_bytes()[..1 << 20];
    for _ in 0..mib {
        f.write_all(chunk).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let dest = dir.join(name);
    std::fs::rename(&t, &dest).unwrap();
    dest
}

#[test]
fn limits_a_100_mb_handoff_is_rejected_unread_and_the_others_flow() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), "", true)
    ));
    let big = write_big_handoff(&ws.path().join("inbox"), "big.md", 100);
    let size = file_size(&big);
    assert!(size > 100 << 20);
    drop_handoff(
        ws.path(),
        "small",
        "---\nid: small\nfrom: tester\n---\n# Small\n\nA normal handoff.\n",
    );

    let mut d = ws.start_daemon();
    assert!(
        wait_until(LONG, || ws.done_stems() == vec!["small".to_string()]
            && ws.inbox_files("rejected") == vec!["big.md".to_string()]),
        "done: {:?}, rejected: {:?}, inbox: {:?}; log:\n{}",
        ws.done_stems(),
        ws.inbox_files("rejected"),
        ws.inbox_files(""),
        d.log()
    );
    // Never read whole: the daemon's peak memory is far below the file's size.
    let peak = peak_rss(d.pid());
    assert!(
        peak > 0 && peak < 80 << 20,
        "the daemon read the big handoff: peak {peak} bytes"
    );
    // Kept as it was, with a note giving its size, the limit and the fix.
    let kept = ws.path().join("inbox/rejected/big.md");
    assert_eq!(file_size(&kept), size, "the file itself is kept");
    let note = std::fs::read_to_string(ws.path().join("inbox/rejected/big.error.md")).unwrap();
    for want in [
        "big.md",
        &format!("{size} bytes"),
        "limits.max_handoff_bytes",
        "1048576 bytes",
        "draft",
    ] {
        assert!(note.contains(want), "{want:?} missing from:\n{note}");
    }
    assert!(d.log().contains("big.md"), "{}", d.log());
    // The main session only ever saw the small one.
    let seen: Vec<String> = main_seen(tools.path()).into_iter().map(|s| s.2).collect();
    assert_eq!(seen, vec!["small".to_string()]);
    // `loops inbox show` shows its start, cut.
    let out = loops_std_cmd(ws.path())
        .args(["inbox", "show", "big"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.len() < (1 << 20) + 4096, "{}", out.stdout.len());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("the file is {size} bytes")));
    d.kill();

    // `loops handoff create` refuses a body over the limit, from a file or from stdin.
    let body = tools.path().join("body.md");
    std::fs::write(&body, "x".repeat(2 << 20)).unwrap();
    let out = loops_std_cmd(ws.path())
        .args([
            "handoff",
            "create",
            "--from",
            "t",
            "--title",
            "Too big",
            "--body-file",
        ])
        .arg(&body)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "body.md",
        "2097152 bytes",
        "limits.max_handoff_bytes",
        "--draft",
    ] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    let mut child = loops_std_cmd(ws.path())
        .args([
            "handoff",
            "create",
            "--from",
            "t",
            "--title",
            "Too big",
            "--body-file",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI stops reading at the limit; a broken pipe here is its refusal.
    let _ = child.stdin.take().unwrap().write_all(&vec![b'y'; 2 << 20]);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the body on stdin"), "{err}");
    assert!(err.contains("limits.max_handoff_bytes"), "{err}");
    assert!(ws.inbox_files("").is_empty(), "{:?}", ws.inbox_files(""));
}

#[test]
fn limits_the_create_handoff_tool_refuses_an_oversize_body() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[(
                "t1",
                "create_handoff",
                json!({"title": "Everything", "body": "z".repeat(4096)}),
            )],
            (10, 10, 0, 0),
        ),
        anthropic::tool_use(
            &[("t2", "finish", json!({"summary": "gave up"}))],
            (10, 10, 0, 0),
        ),
    ]);
    let ws = workspace(&format!(
        "limits:\n  max_handoff_bytes: 1024\nproviders:\n  fake: {{ kind: anthropic, base_url: \"{}\", api_key_env: LOOPS_TEST_KEY, model: test-model }}\n",
        fake.url()
    ));
    ws.add_loop(
        "scout",
        "schedule: { every: 1d }\npayload: { kind: prompt }\ntools: [create_handoff, save_draft, finish]\n",
    );
    ws.write("domains/scout/prompt.md", "Hand off what you find.\n");
    git_commit_all(ws.path(), "scout");

    let out = loops_std_cmd(ws.path())
        .args(["trigger", "scout"])
        .env("LOOPS_TEST_KEY", "sk-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    // The tool's answer, as the model got it in the second request.
    let second = reqs[1].json();
    let result = second["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .and_then(|c| c.iter().find(|b| b["type"] == "tool_result"))
        .cloned()
        .expect("a tool result");
    assert_eq!(result["is_error"], true, "{result}");
    let text = result["content"].to_string();
    for want in [
        "limits.max_handoff_bytes",
        "1024 bytes",
        "save_draft",
        "Nothing was written",
    ] {
        assert!(text.contains(want), "{want:?} missing from {text}");
    }
    assert!(ws.inbox_files("").is_empty());
}

// ---------------------------------------------------------------------------------------
// Many files in a loop's folder

/// How many files the test writes (and the run writes): LOOPS_TEST_MANY_FILES to measure
/// bigger (docs/performance.md has 100,000), a few thousand to keep CI quick while still
/// going through the paths that matter (packs from 500 files, records past 1,000 paths).
fn many() -> usize {
    std::env::var("LOOPS_TEST_MANY_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn limits_thousands_of_files_in_a_loop_folder_list_check_start_run_and_commit() {
    let n = many();
    let ws = workspace("limits:\n  shutdown_grace: 2s\n");
    // The run writes n new files under data/ and rewrites the n files directly in its
    // folder (which the daemon watches).
    ws.add_loop(
        "many",
        &format!(
            "schedule: {{ every: 1d }}\npayload:\n  kind: command\n  command: |\n    mkdir -p data; i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo \"v$i\" > data/f$i.txt; echo \"w$i\" > g$i.txt; done; echo wrote\ntimeout: 600s\n"
        ),
    );
    let dir = ws.path().join("domains/many");
    for i in 1..=n {
        std::fs::write(dir.join(format!("g{i}.txt")), format!("old{i}\n")).unwrap();
    }
    git_commit_all(ws.path(), "many files");

    let list = loops_json(&ws, &["list", "--json"]);
    assert!(list.to_string().contains("\"many\""), "{list}");
    let out = loops_std_cmd(ws.path()).arg("check").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut d = ws.start_daemon();
    d.wait_for_log("daemon started", LONG);
    let rec = loops_json(&ws, &["trigger", "many", "--json"]);
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert!(rec["commit"].is_string(), "not committed: {}", rec["note"]);
    // The record lists the first 1,000 paths and counts them all.
    assert_eq!(rec["changed"].as_array().map(Vec::len), Some(1000));
    assert_eq!(rec["changed_count"], 2 * n, "{}", rec["changed_count"]);

    // All of them are in the commit, the working tree is clean, the repository sound.
    let files = git(
        ws.path(),
        &["ls-tree", "-r", "--name-only", "HEAD", "domains/many"],
    );
    assert_eq!(files.lines().count(), 2 * n + 1, "config.yaml and 2n files");
    assert_eq!(
        git(ws.path(), &["show", &format!("HEAD:domains/many/g{n}.txt")]),
        format!("w{n}\n")
    );
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "");
    git(ws.path(), &["fsck", "--no-dangling"]);
    let packs = std::fs::read_dir(ws.path().join(".git/objects/pack"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert!(packs > 0, "the blobs went into a pack");

    // The daemon took the storm of events in the loop's folder and still answers.
    let status = ws.json(&["status"]);
    assert_eq!(status["daemon"]["pid"], d.pid(), "{status}");
    d.signal(Signal::TERM);
    assert!(d.wait_exit(LONG).is_some(), "the daemon did not stop");
    assert!(!d.log().contains("ERROR"), "{}", d.log());
}

// ---------------------------------------------------------------------------------------
// The inotify limits, for real: a child user namespace has its own inotify limits
// (/proc/sys/user/max_inotify_instances and max_inotify_watches), which its root may
// lower without touching the host's.

/// Whether this machine lets us make a user namespace (`unshare --user`).
fn userns_available() -> bool {
    std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `loops run` in a new user namespace whose `/proc/sys/user/<knob>` is `value`.
fn start_limited_daemon(ws: &TempWorkspace, knob: &str, value: u32) -> DaemonProcess {
    let log = ws.path().join(format!("daemon-{knob}.log"));
    let exclude = ws.path().join(".git/info/exclude");
    let mut ex = std::fs::read_to_string(&exclude).unwrap_or_default();
    ex.push_str("\ndaemon-*.log\n");
    std::fs::write(&exclude, ex).unwrap();
    let f = std::fs::File::create(&log).unwrap();
    let bin = crate::common::loops_bin();
    let c = loops_std_cmd(ws.path());
    // The same environment as every other daemon of the tests; only the program differs.
    let envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)> = c
        .get_envs()
        .map(|(k, v)| (k.to_os_string(), v.map(|v| v.to_os_string())))
        .collect();
    let mut cmd = std::process::Command::new("unshare");
    cmd.current_dir(ws.path())
        .args(["--user", "--map-root-user", "sh", "-c"])
        .arg(format!(
            "echo {value} > /proc/sys/user/{knob} && exec \"$0\" run"
        ))
        .arg(&bin);
    for (k, v) in envs {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .expect("start loops run under unshare");
    DaemonProcess {
        child: Some(child),
        log,
    }
}

/// A workspace whose main session is the shared test script, when this machine lets a
/// test lower inotify limits in a user namespace of its own (else says why it skips).
fn userns_workspace() -> Option<(TempWorkspace, tempfile::TempDir)> {
    if !userns_available() {
        eprintln!("skipped: this machine does not allow user namespaces (unshare --user)");
        return None;
    }
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().expect("tempdir");
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), "", true)
    ));
    Some((ws, tools))
}

#[test]
fn limits_without_inotify_instances_the_daemon_polls_and_says_how_to_fix_it() {
    let Some((ws, _tools)) = userns_workspace() else {
        return;
    };
    let d = start_limited_daemon(&ws, "max_inotify_instances", 0);
    d.wait_for_log("daemon started", LONG);
    let log = d.log();
    assert!(log.contains("fs.inotify.max_user_instances"), "{log}");
    assert!(
        log.contains("sudo sysctl fs.inotify.max_user_instances="),
        "{log}"
    );
    assert!(log.contains("rescans every 2s"), "{log}");

    // No watcher at all, and still: a handoff is found and completed (no heartbeat is
    // configured, so only the fallback polling can find it)…
    let id = ws.json(&["handoff", "create", "--from", "tester", "--title", "Polled"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(
        wait_until(LONG, || ws.done_stems() == vec![id.clone()]),
        "the handoff was never picked up; log:\n{}",
        d.log()
    );
    // …and a loop added now is discovered.
    ws.add_loop(
        "late",
        "schedule: { every: 1d }\npayload: { kind: command, command: \"true\" }\n",
    );
    d.wait_for_log("loop_name=late", LONG);

    // `loops status` says what is wrong and how to fix it.
    let status = ws.json(&["status"]);
    let problems = status["watcher_problems"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!problems.is_empty(), "{status}");
    assert!(
        problems
            .iter()
            .all(|p| p["limit"] == "fs.inotify.max_user_instances"),
        "{problems:?}"
    );
    let out = loops_std_cmd(ws.path()).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("polling every 2s"), "{text}");
    assert!(
        text.contains("sudo sysctl fs.inotify.max_user_instances="),
        "{text}"
    );
}

#[test]
fn limits_running_out_of_inotify_watches_later_falls_back_to_polling() {
    let Some((ws, _tools)) = userns_workspace() else {
        return;
    };
    ws.add_loop(
        "alpha",
        "schedule: { every: 1d }\npayload: { kind: command, command: \"true\" }\n",
    );
    git_commit_all(ws.path(), "alpha");
    // Exactly what the daemon needs at start: the workspace root (loops.yaml, inbox/
    // itself), domains/, domains/alpha/, .loops/signals/, inbox/ and .loops/jobs/. The
    // next loop folder is one too many.
    let d = start_limited_daemon(&ws, "max_inotify_watches", 6);
    d.wait_for_log("daemon started", LONG);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !d.log().contains("inotify"),
        "the start should fit in 6 watches:\n{}",
        d.log()
    );

    std::fs::create_dir_all(ws.path().join("domains/beta")).unwrap();
    d.wait_for_log("fs.inotify.max_user_watches", LONG);
    assert!(d.log().contains("sudo sysctl fs.inotify.max_user_watches="));
    // domains/beta/ is not watched: its config.yaml is found by polling.
    ws.add_loop(
        "beta",
        "schedule: { every: 1d }\npayload: { kind: command, command: \"true\" }\n",
    );
    assert!(
        wait_until(LONG, || {
            loops_json(&ws, &["status", "--json"])["watcher_problems"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
                && d.log().lines().any(|l| l.contains("loop_name=beta"))
        }),
        "beta was never found; log:\n{}",
        d.log()
    );
    let status = ws.json(&["status"]);
    assert_eq!(
        status["watcher_problems"][0]["limit"], "fs.inotify.max_user_watches",
        "{status}"
    );
    // An edit inside the unwatched folder makes no event anywhere: only polling sees it.
    ws.add_loop(
        "beta",
        "schedul: { every: 1d }\npayload: { kind: command, command: \"true\" }\n",
    );
    d.wait_for_log("not scheduled until its config is fixed", LONG);
    // The inbox watch was made at start and still rings the doorbell.
    let id = ws.json(&[
        "handoff",
        "create",
        "--from",
        "tester",
        "--title",
        "Still flowing",
    ])["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(
        wait_until(LONG, || ws.done_stems() == vec![id.clone()]),
        "log:\n{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------------------
// The settings

#[test]
fn limits_settings_are_checked_with_the_file_and_the_fix() {
    let ws = workspace("limits:\n  max_handoff_bytes: 1MB\n  max_job_log_bytes: 100\n");
    let out = loops_std_cmd(ws.path()).arg("check").output().unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "loops.yaml",
        "limits.max_handoff_bytes must be a number of bytes, at least 1024",
        "max_handoff_bytes: 1048576",
        "limits.max_job_log_bytes must be a number of bytes, at least 65536",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

// ---- a full disk -----------------------------------------------------------------------

/// `loops run` that may not grow any file past `limit` bytes: a write past it is cut
/// short, then refused with EFBIG, as on a full disk (SIGXFSZ ignored, as a disk-full
/// write raises no signal).
fn start_daemon_with_file_limit(ws: &TempWorkspace, limit: u64) -> DaemonProcess {
    let log = ws.path().join("daemon-fsize.log");
    let exclude = ws.path().join(".git/info/exclude");
    let mut ex = std::fs::read_to_string(&exclude).unwrap_or_default();
    ex.push_str("\ndaemon-*.log\n");
    std::fs::write(&exclude, ex).unwrap();
    let f = std::fs::File::create(&log).unwrap();
    let mut cmd = loops_std_cmd(ws.path());
    cmd.arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f);
    limit_file_size(&mut cmd, limit);
    let child = cmd.spawn().expect("start loops run with a file size limit");
    DaemonProcess {
        child: Some(child),
        log,
    }
}

/// Lines of a file that are not JSON.
fn torn_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_err())
        .map(|l| l.chars().take(200).collect())
        .collect()
}

/// Issue 16: on a full disk a run record was written in part, and the record's retry,
/// once the disk took writes again, went onto the same line: one line neither half of
/// which parses, and a run `loops runs` never shows. A refused append is cut back off;
/// after the disk frees every record reads.
#[test]
fn a_full_disk_never_tears_a_run_record() {
    let ws = workspace("");
    ws.add_loop(
        "tick",
        "schedule: { every: 1s }\npayload:\n  kind: command\n  command: \"true\"\n",
    );
    git_commit_all(ws.path(), "tick");
    let records = ws.path().join(".loops/runs/tick.jsonl");
    {
        let mut d = ws.start_daemon();
        assert!(
            wait_until(LONG, || ws.count_outcome("tick", "silent") >= 1),
            "{}",
            d.log()
        );
        d.signal(Signal::TERM);
        d.wait_exit(LONG).expect("the daemon stops");
    }
    // Earlier history, so the records file is the one file near the limit: copies of the
    // first record under other run ids.
    let text = std::fs::read_to_string(&records).unwrap();
    let first = text.lines().next().unwrap().to_string();
    let rec: Value = serde_json::from_str(&first).unwrap();
    let id = rec["run_id"].as_str().unwrap().to_string();
    assert!(first.len() > 200, "{first}");
    let mut history = String::new();
    for i in 0..600 {
        history.push_str(&first.replace(&id, &format!("{id}-{i}")));
        history.push('\n');
    }
    std::fs::write(&records, &history).unwrap();
    // The next record fits only in part.
    let limit = history.len() as u64 + 100;

    let mut d = start_daemon_with_file_limit(&ws, limit);
    d.wait_for_log("loops daemon started", LONG);
    assert!(
        wait_until(LONG, || d.log().contains("os error 27")),
        "the daemon never met the limit; log:\n{}",
        d.log()
    );
    // A few retries against the limit, each cut back.
    std::thread::sleep(Duration::from_secs(3));
    let size = std::fs::metadata(&records).unwrap().len();
    assert_eq!(size, history.len() as u64, "the part written was cut back");
    assert!(torn_lines(&records).is_empty());

    set_file_size_limit(d.pid(), None);
    assert!(
        wait_until(LONG, || ws.runs("tick").len() >= 600 + 3),
        "the held records are written once the disk frees; log:\n{}",
        d.log()
    );
    d.signal(Signal::TERM);
    d.wait_exit(LONG).expect("the daemon stops");

    assert_eq!(torn_lines(&records), Vec::<String>::new());
    let lines = std::fs::read_to_string(&records).unwrap().lines().count();
    let listed = loops_json(&ws, &["runs", "tick", "-n", "100000", "--json"]);
    let listed = listed
        .as_array()
        .or_else(|| listed["runs"].as_array())
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(listed, lines, "`loops runs` reads every record");
    // Nor is any line of the journal, which the same limit held.
    let journal = ws.path().join(".loops/daemon.jsonl");
    assert_eq!(torn_lines(&journal), Vec::<String>::new());
}

/// A file that ends inside a line (a crash mid-write, or a cut that could not be made)
/// gets the next record on a line of its own, so only the torn one is lost.
#[test]
fn a_record_after_a_torn_line_starts_on_a_new_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.jsonl");
    std::fs::write(&p, "{\"a\":1}\n{\"run_id\":\"torn").unwrap();
    loops_core::fsutil::append_line(&p, "{\"b\":2}").unwrap();
    loops_core::fsutil::append_line(&p, "{\"c\":3}").unwrap();
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "{\"a\":1}\n{\"run_id\":\"torn\n{\"b\":2}\n{\"c\":3}\n"
    );
}
