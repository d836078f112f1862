//! `loops mcp` driven by a client that is not ours: the official MCP Python SDK, through
//! tests/mcp_client/drive.py, which starts `loops --workspace WS mcp` over stdio, lists
//! the tools and makes the calls each test gives it. Without the SDK these tests fail
//! (`.ci/run` installs it): a skipped test would hide a broken server.

use crate::common::{git, git_trailers, loops_bin, TempWorkspace};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOOLS: [&str; 16] = [
    "list_loops",
    "trigger_loop",
    "list_handoffs",
    "get_handoff",
    "tick_handoff",
    "complete_handoff",
    "submit_job",
    "get_job",
    "list_jobs",
    "get_job_progress",
    "cancel_job",
    "pause_job",
    "resume_job",
    "replay_job",
    "send_job_message",
    "get_job_stats",
];

/// Generous: a cold Python start plus git commits on a slow machine.
const SESSION_LIMIT: Duration = Duration::from_secs(120);

/// The venv's python, checked to have the SDK (a venv made but never filled says so).
fn require_python_sdk() -> std::path::PathBuf {
    let python = crate::common::test_python();
    let out = Command::new(&python)
        .args(["-c", "import mcp"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run .ci/run, which makes the MCP tests' virtual environment",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "{} has no MCP Python SDK: run .ci/run, or `{} -m pip install -r tests/mcp_client/requirements.txt`\n{}",
        python.display(),
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// One MCP session: initialize, tools/list, then `calls` ([{"tool", "args"}], where a
/// string "$N.field" is call N's result field). Returns drive.py's report.
pub(crate) fn session(ws: &TempWorkspace, calls: Value) -> Value {
    let python = require_python_sdk();
    let io = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (io.path().join("stdout"), io.path().join("stderr"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client/drive.py");
    // Output goes to files, not pipes, so a long report can never block the child.
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(loops_bin())
        .arg(ws.path())
        .arg(calls.to_string())
        .env("TZ", "UTC")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env_remove("LOOPS_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("start drive.py");
    let deadline = Instant::now() + SESSION_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for drive.py") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the MCP session did not finish in {SESSION_LIMIT:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "drive.py failed ({status}):\n{stderr}\n{stdout}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("drive.py printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// The parsed content of call `i`, which must have succeeded.
pub(crate) fn ok(report: &Value, i: usize) -> &Value {
    let r = &report["results"][i];
    assert_eq!(
        r["is_error"], false,
        "call {i} ({}) failed: {r:#}",
        r["tool"]
    );
    &r["content"]
}

/// The error text (message and help) of call `i`, which must have failed as a tool
/// error, not a protocol error.
fn tool_error(report: &Value, i: usize) -> String {
    let r = &report["results"][i];
    assert_eq!(
        r["is_error"], true,
        "call {i} ({}) should have failed: {r:#}",
        r["tool"]
    );
    assert!(
        r.get("protocol_error").is_none(),
        "call {i} was a protocol error, not a tool error: {r:#}"
    );
    format!("{} / help: {}", r["content"]["error"], r["content"]["help"])
}

fn job_file(ws: &TempWorkspace, id: u64) -> std::path::PathBuf {
    ws.path().join(".loops/jobs").join(format!("{id}.json"))
}

/// The job files (`<id>.json`) anywhere under .loops/jobs/.
fn job_files(ws: &TempWorkspace) -> Vec<String> {
    walk_names(&ws.path().join(".loops/jobs"))
        .into_iter()
        .filter(|n| {
            n.strip_suffix(".json")
                .is_some_and(|s| s.parse::<u64>().is_ok())
        })
        .collect()
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            v.extend(walk_names(&e.path()));
        } else {
            v.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    v
}

#[test]
fn mcp_lists_every_tool_with_a_description_and_a_schema() {
    let ws = TempWorkspace::new();
    let r = session(&ws, json!([]));
    assert_eq!(r["server"]["name"], "loops");
    assert_eq!(r["server"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        r["instructions"]
            .as_str()
            .is_some_and(|s| s.contains("submit_job")),
        "{:#}",
        r["instructions"]
    );
    let tools = r["tools"].as_array().expect("tools");
    let mut names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    let mut want = TOOLS.to_vec();
    want.sort_unstable();
    assert_eq!(names, want);
    for t in tools {
        let d = t["description"].as_str().unwrap_or_default();
        assert!(d.len() > 80, "{} has a thin description: {d:?}", t["name"]);
        assert_eq!(t["input_schema"]["type"], "object", "{t:#}");
    }
    let submit = tools.iter().find(|t| t["name"] == "submit_job").unwrap();
    let props = &submit["input_schema"]["properties"];
    for field in [
        "kind",
        "params",
        "idempotency_key",
        "parent",
        "delay",
        "timeout",
    ] {
        assert!(
            props[field]["description"].is_string(),
            "submit_job.{field}: {props:#}"
        );
    }
    assert_eq!(submit["input_schema"]["required"], json!(["params"]));
}

#[test]
fn mcp_list_loops_sees_the_workspace_loops() {
    let ws = TempWorkspace::new();
    ws.add_loop(
        "disk-watch",
        "description: Warn when the disk fills up\nschedule:\n  cron: \"*/30 8-18 * * 1-5\"\n  timezone: Europe/London\npayload:\n  command: [\"./run.sh\"]\n",
    );
    ws.write("domains/disk-watch/run.sh", "#!/bin/sh\nexit 0\n");
    ws.cmd()
        .args(["new", "scout", "--template", "research-minion"])
        .assert()
        .success();
    let r = session(&ws, json!([{ "tool": "list_loops" }]));
    let loops = ok(&r, 0)["loops"].as_array().expect("loops").clone();
    let by_name = |n: &str| {
        loops
            .iter()
            .find(|l| l["name"] == n)
            .unwrap_or_else(|| panic!("no {n} in {loops:#?}"))
            .clone()
    };
    let disk = by_name("disk-watch");
    assert_eq!(disk["description"], "Warn when the disk fills up");
    assert_eq!(disk["kind"], "command");
    assert_eq!(disk["timezone"], "Europe/London");
    assert_eq!(disk["enabled"], true);
    assert_eq!(disk["status"], "ok");
    assert!(disk["schedule"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(disk["next_run"].is_string(), "{disk:#}");
    assert!(disk["last_run"].is_null());
    let scout = by_name("scout");
    assert_eq!(scout["kind"], "prompt");
    assert_eq!(scout["status"], "waiting for a provider");
    assert!(scout["next_run"].is_null());
    assert_eq!(by_name("example")["kind"], "command");
    // The CLI says the same.
    let cli = ws.json(&["list"]);
    assert_eq!(cli["loops"].as_array().map(Vec::len), Some(loops.len()));
}

/// A model copies a job id as it read it: `#1` from a list, or "1" as text. Each is the
/// job; what is no id is refused naming the value, and the schema still says a number.
#[test]
fn mcp_takes_a_job_id_as_a_number_a_string_or_as_lists_print_it() {
    let ws = TempWorkspace::new();
    let r = session(
        &ws,
        json!([
            { "tool": "submit_job", "args": { "params": { "prompt": "Parent" } } },
            { "tool": "get_job", "args": { "id": "#1" } },
            { "tool": "get_job_progress", "args": { "id": " 1 " } },
            { "tool": "submit_job", "args": { "params": { "prompt": "Child" }, "parent": "#1" } },
            { "tool": "get_job", "args": { "id": "one" } },
            { "tool": "get_job", "args": { "id": -1 } },
            { "tool": "cancel_job", "args": { "id": "#1" } },
        ]),
    );
    assert_eq!(
        ok(&r, 0)["id"],
        1,
        "a fresh queue starts at 1: {:#}",
        ok(&r, 0)
    );
    assert_eq!(ok(&r, 1)["id"], 1);
    assert_eq!(ok(&r, 2)["id"], 1);
    assert_eq!(ok(&r, 3)["parent"], 1, "{:#}", ok(&r, 3));
    for i in [4, 5] {
        let res = &r["results"][i];
        assert_eq!(res["is_error"], true, "call {i}: {res:#}");
        assert!(
            res.to_string().contains("is not a job id"),
            "call {i}: {res:#}"
        );
    }
    assert_eq!(ok(&r, 6)["state"], "cancelled", "{:#}", ok(&r, 6));
    let tools = r["tools"].as_array().expect("tools");
    let get_job = tools
        .iter()
        .find(|t| t["name"] == "get_job")
        .expect("get_job");
    let id = &get_job["input_schema"]["properties"]["id"];
    assert!(
        id["type"] == "integer" || id.to_string().contains("integer"),
        "{id}"
    );
}

#[test]
fn mcp_submits_an_agent_job_that_the_queue_and_its_files_know() {
    let ws = TempWorkspace::new();
    let r = session(
        &ws,
        json!([
            { "tool": "submit_job", "args": {
                "kind": "agent", "name": "weekly research",
                "params": { "prompt": "Summarise the inbox" },
                "priority": 2, "timeout": "5m", "delay": 0, "idempotency_key": "weekly-1" } },
            { "tool": "submit_job", "args": {
                "params": { "prompt": "Summarise the inbox" }, "idempotency_key": "weekly-1" } },
            { "tool": "get_job", "args": { "id": "$0.id" } },
            { "tool": "list_jobs", "args": {} },
            { "tool": "list_jobs", "args": { "status": "waiting", "name": "WEEKLY" } },
            { "tool": "get_job_progress", "args": { "id": "$0.id" } },
            { "tool": "get_job_stats" },
            { "tool": "list_jobs", "args": { "status": "finished" } },
            { "tool": "get_job", "args": { "id": 999999 } },
            { "tool": "submit_job", "args": { "params": { "prompt": "x" }, "timeout": "soon" } },
        ]),
    );
    let job = ok(&r, 0);
    let id = job["id"].as_u64().expect("an id");
    assert_eq!(job["kind"], "agent");
    assert_eq!(job["state"], "waiting");
    assert_eq!(job["source"], "mcp");
    assert_eq!(job["priority"], 2);
    assert_eq!(job["timeout_ms"], 300_000);
    assert_eq!(job["existing"], false);
    assert!(
        job["warning"]
            .as_str()
            .is_some_and(|w| w.contains("loops run")),
        "{job:#}"
    );
    // The repeat with the same idempotency key is the same job.
    assert_eq!(ok(&r, 1)["id"], id);
    assert_eq!(ok(&r, 1)["existing"], true);
    // On disk, where the daemon's worker will find it.
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(job_file(&ws, id)).expect("job file"))
            .expect("job JSON");
    assert_eq!(on_disk["id"], id);
    assert_eq!(on_disk["params"]["prompt"], "Summarise the inbox");
    assert_eq!(job_files(&ws).len(), 1, "{:?}", job_files(&ws));
    assert_eq!(ok(&r, 2)["id"], id);
    assert_eq!(ok(&r, 2)["name"], "weekly research");
    for i in [3, 4] {
        let listed = ok(&r, i);
        assert_eq!(listed["total"], 1, "{listed:#}");
        assert_eq!(listed["jobs"][0]["id"], id);
    }
    assert_eq!(ok(&r, 5)["state"], "waiting");
    let stats = ok(&r, 6);
    assert_eq!(stats["daemon_running"], false);
    assert_eq!(stats["kinds"]["agent"]["total"], 1, "{stats:#}");
    assert!(tool_error(&r, 7).contains("waiting-children"));
    assert!(tool_error(&r, 8).contains("no job #999999"));
    assert!(tool_error(&r, 9).contains("soon"));
}

#[test]
fn mcp_controls_jobs_cancel_pause_resume_replay() {
    let ws = TempWorkspace::new();
    let r = session(
        &ws,
        json!([
            { "tool": "submit_job", "args": {
                "params": { "prompt": "Research {{topic}}", "input_vars": { "topic": "tides" } },
                "idempotency_key": "k" } },
            { "tool": "pause_job", "args": { "id": "$0.id" } },
            { "tool": "resume_job", "args": { "id": "$0.id" } },
            { "tool": "resume_job", "args": { "id": "$0.id" } },
            { "tool": "cancel_job", "args": { "id": "$0.id" } },
            { "tool": "cancel_job", "args": { "id": "$0.id" } },
            { "tool": "replay_job", "args": { "id": "$0.id", "set": { "input_vars.topic": "moons" } } },
            // A cancelled job frees its key: the same key makes a new job.
            { "tool": "submit_job", "args": { "params": { "prompt": "again" }, "idempotency_key": "k" } },
        ]),
    );
    let id = ok(&r, 0)["id"].as_u64().expect("id");
    assert_eq!(ok(&r, 1)["state"], "paused");
    assert_eq!(ok(&r, 2)["state"], "waiting");
    assert!(tool_error(&r, 3).contains("only paused jobs can be resumed"));
    assert_eq!(ok(&r, 4)["state"], "cancelled");
    assert!(tool_error(&r, 5).contains("replay"));
    let replay = ok(&r, 6);
    assert_ne!(replay["id"], id);
    assert_eq!(replay["replay_of"], id);
    assert_eq!(replay["params"]["input_vars"]["topic"], "moons");
    assert_eq!(replay["source"], "mcp");
    let again = ok(&r, 7);
    assert_eq!(again["existing"], false);
    assert_ne!(again["id"], id);
}

#[test]
fn mcp_refuses_shell_jobs_and_writes_nothing() {
    let ws = TempWorkspace::new();
    let marker = ws.path().join("ran");
    let r = session(
        &ws,
        json!([
            { "tool": "submit_job", "args": {
                "kind": "shell", "params": { "cmd": format!("touch {}", marker.display()) } } },
            { "tool": "submit_job", "args": { "kind": " SHELL ", "params": { "argv": ["true"] } } },
            { "tool": "list_jobs" },
        ]),
    );
    for i in [0, 1] {
        let e = tool_error(&r, i);
        assert!(e.contains("permission denied"), "{e}");
        assert!(e.contains("loops jobs submit shell"), "{e}");
    }
    assert_eq!(ok(&r, 2)["total"], 0);
    assert!(job_files(&ws).is_empty(), "{:?}", job_files(&ws));
    assert!(!marker.exists());
}

#[test]
fn mcp_observes_and_controls_a_shell_job_a_person_submitted() {
    let ws = TempWorkspace::new();
    // A person's shell job, submitted the way `loops jobs submit shell` does.
    let w = loops_core::workspace::Workspace::open(ws.path()).expect("workspace");
    let spec: loops_core::jobs::queue::JobSpec =
        serde_json::from_value(json!({ "kind": "shell", "params": { "cmd": "echo hi" } }))
            .expect("spec");
    let store = loops_core::jobs::store::JobStore::new(&w);
    let id = loops_core::jobs::queue::submit(&store, &spec, chrono::Utc::now(), None)
        .expect("submit")
        .job
        .id;
    let r = session(
        &ws,
        json!([
            { "tool": "get_job", "args": { "id": id } },
            { "tool": "replay_job", "args": { "id": id, "set": { "cmd": "rm -rf ~" } } },
            { "tool": "pause_job", "args": { "id": id } },
            { "tool": "cancel_job", "args": { "id": id } },
        ]),
    );
    assert_eq!(ok(&r, 0)["kind"], "shell");
    assert!(tool_error(&r, 1).contains("permission denied"));
    assert_eq!(ok(&r, 2)["state"], "paused");
    assert_eq!(ok(&r, 3)["state"], "cancelled");
    // The refused replay wrote no job.
    assert_eq!(job_files(&ws).len(), 1, "{:?}", job_files(&ws));
}

#[test]
fn mcp_job_messages_come_from_the_operator_or_the_parent_only() {
    let ws = TempWorkspace::new();
    let r = session(
        &ws,
        json!([
            { "tool": "submit_job", "args": { "name": "a", "params": { "prompt": "parent" } } },
            { "tool": "submit_job", "args": { "name": "b", "params": { "prompt": "stranger" } } },
            { "tool": "submit_job", "args": { "name": "c", "params": { "prompt": "child" }, "parent": "$0.id" } },
            { "tool": "send_job_message", "args": { "id": "$1.id", "message": { "text": "stop" }, "from_job": "$0.id" } },
            { "tool": "send_job_message", "args": { "id": "$2.id", "message": { "text": "go on" }, "from_job": "$0.id" } },
            { "tool": "send_job_message", "args": { "id": "$1.id", "message": { "text": "hello" } } },
            { "tool": "get_job", "args": { "id": "$2.id" } },
        ]),
    );
    let parent = ok(&r, 0)["id"].as_u64().unwrap();
    let e = tool_error(&r, 3);
    assert!(e.contains("permission denied"), "{e}");
    assert!(e.contains("not the parent"), "{e}");
    assert_eq!(ok(&r, 4)["message"]["from"], format!("job:{parent}"));
    assert_eq!(ok(&r, 5)["message"]["from"], "operator");
    let child = ok(&r, 6);
    assert_eq!(child["parent"], parent);
    assert_eq!(child["messages"][0]["body"]["text"], "go on");
}

/// The commit whose trailers say `Handoff: id` and `Outcome: outcome`.
fn handoff_commit(ws: &Path, id: &str, outcome: &str) -> Option<String> {
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
fn mcp_lists_reads_and_completes_handoffs() {
    let ws = TempWorkspace::new();
    let created = ws.json(&[
        "handoff",
        "create",
        "--from",
        "research-minion",
        "--title",
        "Research ready",
        "--item",
        "Read the draft",
        "--body",
        "The findings are in.",
    ]);
    let id = created["id"].as_str().expect("id").to_string();
    let r = session(
        &ws,
        json!([
            { "tool": "list_handoffs" },
            { "tool": "list_handoffs", "args": { "status": "pending" } },
            { "tool": "list_handoffs", "args": { "status": "done" } },
            { "tool": "get_handoff", "args": { "id": id } },
            { "tool": "complete_handoff", "args": { "id": id, "note": "Read it" } },
            { "tool": "get_handoff", "args": { "id": "no-such-handoff" } },
        ]),
    );
    let all = ok(&r, 0)["handoffs"].as_array().unwrap().clone();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["id"], id.as_str());
    assert_eq!(all[0]["stage"], "pending");
    assert_eq!(all[0]["title"], "Research ready");
    assert_eq!(ok(&r, 1)["handoffs"].as_array().map(Vec::len), Some(1));
    assert_eq!(ok(&r, 2)["handoffs"], json!([]));
    let shown = ok(&r, 3);
    assert_eq!(shown["stage"], "pending");
    assert_eq!(shown["handoff"]["from"], "research-minion");
    assert!(shown["text"]
        .as_str()
        .is_some_and(|t| t.contains("- [ ] Read the draft")));
    let e = tool_error(&r, 4);
    assert!(
        e.contains("unticked") && e.contains("Read the draft"),
        "{e}"
    );
    assert!(tool_error(&r, 5).contains("loops inbox"));
    assert_eq!(ws.inbox_files(""), vec![format!("{id}.md")]);

    // Ticked by hand: now it completes, and the completion is committed.
    let pending = ws.path().join("inbox").join(format!("{id}.md"));
    let text = std::fs::read_to_string(&pending).unwrap();
    std::fs::write(&pending, text.replace("- [ ] Read", "- [x] Read")).unwrap();
    let r = session(
        &ws,
        json!([
            { "tool": "complete_handoff", "args": { "id": id, "note": "Read it" } },
            { "tool": "list_handoffs", "args": { "status": "done" } },
            { "tool": "complete_handoff", "args": { "id": id } },
        ]),
    );
    let done = ok(&r, 0);
    assert_eq!(done["stage"], "done");
    assert!(done["warning"].is_null(), "{done:#}");
    assert_eq!(ok(&r, 1)["handoffs"][0]["id"], id.as_str());
    assert!(tool_error(&r, 2).contains("already done"));
    assert_eq!(ws.done_stems(), vec![id.clone()]);
    assert!(ws.inbox_files("").is_empty());
    assert!(
        handoff_commit(ws.path(), &id, "completed").is_some(),
        "no completion commit:\n{}",
        git(ws.path(), &["log", "--format=%H %s"])
    );
    assert_eq!(git(ws.path(), &["status", "--porcelain", "inbox"]), "");
}

#[test]
fn mcp_ticks_handoff_items_by_number_text_or_all_then_completes() {
    let ws = TempWorkspace::new();
    let created = ws.json(&[
        "handoff",
        "create",
        "--from",
        "research-minion",
        "--title",
        "Research ready",
        "--item",
        "Read the draft",
        "--item",
        "Reply to the team",
        "--item",
        "Archive it",
    ]);
    let id = created["id"].as_str().expect("id").to_string();
    let r = session(
        &ws,
        json!([
            { "tool": "tick_handoff", "args": { "id": id, "items": [1, "reply"] } },
            { "tool": "tick_handoff", "args": { "id": id, "items": [1] } },
            { "tool": "tick_handoff", "args": { "id": id, "items": [7] } },
            { "tool": "tick_handoff", "args": { "id": id } },
            { "tool": "tick_handoff", "args": { "id": id, "all": true } },
            { "tool": "complete_handoff", "args": { "id": id, "note": "Done" } },
            { "tool": "tick_handoff", "args": { "id": id, "all": true } },
        ]),
    );
    let first = ok(&r, 0);
    assert_eq!(
        first["ticked"],
        json!([{"number": 1, "text": "Read the draft"}, {"number": 2, "text": "Reply to the team"}])
    );
    assert_eq!(
        first["unticked"],
        json!([{"number": 3, "text": "Archive it"}])
    );
    assert_eq!(first["complete"], false);
    // Ticking a ticked item again is reported, not refused.
    let again = ok(&r, 1);
    assert_eq!(again["ticked"], json!([]));
    assert_eq!(
        again["already_ticked"],
        json!([{"number": 1, "text": "Read the draft"}])
    );
    // An item it does not have: the error lists the items there are.
    let e = tool_error(&r, 2);
    assert!(
        e.contains("no checklist item `7`") && e.contains("3. [ ] Archive it"),
        "{e}"
    );
    assert!(tool_error(&r, 3).contains("no items named"));
    assert_eq!(ok(&r, 4)["complete"], true);
    assert_eq!(ok(&r, 5)["stage"], "done");
    assert!(tool_error(&r, 6).contains("already done"));
    // Each tick that changed the file was committed; nothing of the inbox is left over.
    let ticks = git(
        ws.path(),
        &["log", "--format=%s", "--grep=^Outcome: ticked$"],
    );
    assert_eq!(ticks.lines().count(), 2, "{ticks}");
    assert!(handoff_commit(ws.path(), &id, "completed").is_some());
    assert_eq!(git(ws.path(), &["status", "--porcelain", "inbox"]), "");
}

#[test]
fn mcp_triggers_a_command_loop_and_refuses_what_cannot_run() {
    let ws = TempWorkspace::new();
    ws.cmd()
        .args(["new", "scout", "--template", "research-minion"])
        .assert()
        .success();
    let r = session(
        &ws,
        json!([
            { "tool": "trigger_loop", "args": { "name": "example" } },
            { "tool": "trigger_loop", "args": { "name": "example" } },
            { "tool": "trigger_loop", "args": { "name": "exampel" } },
            { "tool": "trigger_loop", "args": { "name": "scout" } },
            { "tool": "trigger_loop", "args": { "name": "../example" } },
            { "tool": "list_loops" },
        ]),
    );
    let first = ok(&r, 0);
    assert_eq!(first["loop"], "example");
    assert_eq!(first["trigger"], "manual");
    assert_eq!(first["outcome"], "acted", "{first:#}");
    let commit = first["commit"].as_str().expect("a commit").to_string();
    let trailers = git_trailers(ws.path(), &commit);
    assert!(
        trailers.iter().any(|(k, v)| k == "Loop" && v == "example"),
        "{trailers:?}"
    );
    // Nothing changed since: a silent run, recorded and not committed.
    let second = ok(&r, 1);
    assert_eq!(second["outcome"], "silent", "{second:#}");
    assert!(second["commit"].is_null());
    assert!(tool_error(&r, 2).contains("did you mean `example`"));
    assert!(tool_error(&r, 3).contains("no model provider"));
    assert!(tool_error(&r, 4).contains("no loop named"));
    let example = ok(&r, 5)["loops"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "example"))
        .cloned()
        .expect("example");
    assert_eq!(example["last_run"]["outcome"], "silent");
    assert_eq!(ws.count_outcome("example", "acted"), 1);
    assert_eq!(ws.count_outcome("example", "silent"), 1);
}

#[test]
fn mcp_trigger_respects_a_run_of_the_loop_in_another_process() {
    let ws = TempWorkspace::new();
    // Another process (this test) is running the loop: its run has begun in the queue.
    let w = loops_core::workspace::Workspace::open(ws.path()).expect("workspace");
    let running = loops_core::runs::RunningSet::new(w.layout().root());
    let m = loops_core::runs::RunInProgress::for_this_process(
        "example",
        "01OTHER",
        "manual",
        None,
        1,
        chrono::Utc::now(),
    );
    assert!(running.begin_exclusive(&m).expect("queue"));
    let r = session(
        &ws,
        json!([{ "tool": "trigger_loop", "args": { "name": "example" } }]),
    );
    assert!(tool_error(&r, 0).contains("in progress"));
    assert_eq!(ws.runs("example").len(), 0);
}

#[test]
fn mcp_help_names_every_tool_the_server_lists() {
    let ws = TempWorkspace::new();
    let out = ws
        .cmd()
        .args(["mcp", "--help"])
        .output()
        .expect("run loops");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for tool in TOOLS {
        assert!(
            help.contains(tool),
            "`loops mcp --help` does not name {tool}:\n{help}"
        );
    }
}
