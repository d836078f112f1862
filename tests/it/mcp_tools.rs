//! MCP servers' tools in prompt loops, end to end: the real `loops` binary against real
//! MCP servers that are not ours (the reference "everything" and filesystem servers,
//! installed by .ci/run with `npm ci --prefix tests/mcp_servers`), a server written with
//! the official Python SDK that hangs on purpose, and servers that fail at start. The
//! model is the fake model server; the tests check what it was offered and what it got.

use crate::common::{
    git_commit_all, is_zombie, loops_std_cmd, pid_alive, wait_until, DaemonProcess, TempWorkspace,
};
use loops_testutil::fake_model::{anthropic, FakeModel, Recorded, Reply};
use loops_testutil::process::signal;
use loops_testutil::Signal;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The provider's API key: it must never reach an MCP server.
const KEY: &str = "sk-test-SECRET-mcp-9Qw3NeverPassedOn";
/// Generous: a slow machine (and node starting up) must not fail these tests.
const LONG: Duration = Duration::from_secs(180);
const NEVER_DUE: &str = "schedule: { at: \"2099-01-01T00:00:00Z\" }\n";

/// A reference server's executable in tests/mcp_servers/node_modules/.bin.
fn reference_server(bin: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mcp_servers/node_modules/.bin")
        .join(bin);
    assert!(
        p.exists(),
        "{} is missing: run `npm ci --prefix tests/mcp_servers` (what .ci/run does)",
        p.display()
    );
    p.display().to_string()
}

fn everything() -> String {
    reference_server("mcp-server-everything")
}

/// A workspace on the fake model with these `mcp_servers:` (indented YAML lines), no
/// example loop, everything committed.
fn workspace(fake: &FakeModel, servers: &str) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        &format!(
            "limits:\n  shutdown_grace: 2s\nproviders:\n  fake: {{ kind: anthropic, base_url: \"{}\", api_key_env: LOOPS_TEST_KEY, model: test-model }}\nmcp_servers:\n{servers}",
            fake.url()
        ),
    );
    git_commit_all(ws.path(), "setup");
    ws
}

/// A prompt loop with these config.yaml lines (a `tools:` list among them), committed.
fn prompt_loop(ws: &TempWorkspace, name: &str, extra: &str) {
    let schedule = if extra.contains("schedule:") {
        ""
    } else {
        NEVER_DUE
    };
    ws.add_loop(
        name,
        &format!("{schedule}payload: {{ kind: prompt }}\ntimeout: 5m\n{extra}"),
    );
    ws.write(
        &format!("domains/{name}/prompt.md"),
        "Use the MCP tools, then finish.\n",
    );
    git_commit_all(ws.path(), &format!("loop {name}"));
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Out {
    fn all(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// `loops trigger NAME`, which must succeed, and the run record it appended.
fn trigger(ws: &TempWorkspace, name: &str, env: &[(&str, &str)]) -> (Out, Value) {
    let t0 = Instant::now();
    let mut cmd = ws.cmd();
    cmd.args(["trigger", name])
        .env("LOOPS_TEST_KEY", KEY)
        .timeout(LONG);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run loops trigger");
    let out = Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: t0.elapsed(),
    };
    assert_eq!(out.code, Some(0), "{}", out.all());
    let rec = ws
        .runs(name)
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("no run record\n{}", out.all()));
    (out, rec)
}

/// The tools offered in an anthropic request, by name.
fn offered(r: &Recorded) -> Vec<Value> {
    r.json()["tools"].as_array().cloned().unwrap_or_default()
}

fn offered_names(r: &Recorded) -> Vec<String> {
    offered(r)
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect()
}

fn tool(r: &Recorded, name: &str) -> Value {
    offered(r)
        .into_iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("`{name}` was not offered: {:?}", offered_names(r)))
}

/// The tool_result blocks of an anthropic request's last message, by tool_use id.
fn result(r: &Recorded, id: &str) -> (String, bool) {
    let v = r.json();
    let last = v["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    let block = last["content"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == id)
        .unwrap_or_else(|| panic!("no tool_result for {id} in {last}"));
    let text = match &block["content"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    (text, block["is_error"] == true)
}

fn finish(id: &str) -> Reply {
    anthropic::tool_use(
        &[(
            id,
            "finish",
            json!({"summary": "used the MCP tools", "silent": false}),
        )],
        (10, 2, 0, 0),
    )
}

fn status(ws: &TempWorkspace, server: &str) -> Value {
    let p = ws.path().join(format!(".loops/mcp/{server}.json"));
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", p.display()))
}

/// `loops run` in the background with the provider's key, its stderr in a file
/// (as [`TempWorkspace::start_daemon`], which gives it no key).
fn start_daemon(ws: &TempWorkspace) -> DaemonProcess {
    let log = ws.path().join(".git/mcp-daemon.log");
    let f = std::fs::File::create(&log).expect("daemon log file");
    let child = loops_std_cmd(ws.path())
        .arg("run")
        .env("LOOPS_TEST_KEY", KEY)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(f)
        .spawn()
        .expect("start loops run");
    DaemonProcess {
        child: Some(child),
        log,
    }
}

fn gone(pid: i32) -> bool {
    !pid_alive(pid) || is_zombie(pid)
}

// ---------------------------------------------------------------------------------------

#[test]
fn everything_server_tools_are_offered_with_their_schemas_and_called() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[
                (
                    "e1",
                    "everything__echo",
                    json!({"message": "hello-mcp-4711"}),
                ),
                ("e2", "everything__get-env", json!({})),
                ("e3", "everything__get-sum", json!({"a": 2, "b": 40})),
            ],
            (10, 5, 0, 0),
        ),
        finish("f1"),
    ]);
    let ws = workspace(
        &fake,
        &format!(
            "  everything: {{ command: [\"{}\"], env: [MCP_PASSED_ON] }}\n",
            everything()
        ),
    );
    prompt_loop(&ws, "scout", "tools: [read_file, everything, finish]\n");
    let (out, rec) = trigger(&ws, "scout", &[("MCP_PASSED_ON", "visible-7731")]);
    assert_eq!(rec["outcome"], "acted", "{rec}\n{}", out.all());

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "{}", out.all());
    let names = offered_names(&reqs[0]);
    assert_eq!(&names[..2], ["read_file", "finish"], "{names:?}");
    for t in [
        "everything__echo",
        "everything__get-sum",
        "everything__get-env",
        "call_tool",
    ] {
        assert!(names.iter().any(|n| n == t), "{t} not offered: {names:?}");
    }
    // The server's own description and schema, as it listed them.
    let echo = tool(&reqs[0], "everything__echo");
    assert!(
        echo["description"]
            .as_str()
            .unwrap()
            .contains("Echoes back the input string"),
        "{echo}"
    );
    assert_eq!(echo["input_schema"]["type"], "object", "{echo}");
    assert_eq!(
        echo["input_schema"]["properties"]["message"]["type"], "string",
        "{echo}"
    );
    assert_eq!(
        echo["input_schema"]["required"],
        json!(["message"]),
        "{echo}"
    );
    let ct = tool(&reqs[0], "call_tool");
    assert!(
        ct["description"]
            .as_str()
            .unwrap()
            .contains("everything (all its tools)"),
        "{ct}"
    );

    let (echoed, err) = result(&reqs[1], "e1");
    assert!(!err);
    assert_eq!(echoed, "Echo: hello-mcp-4711");
    let (sum, err) = result(&reqs[1], "e3");
    assert!(!err);
    assert!(sum.contains("42"), "{sum}");
    // The server got the variable its `env:` names, and nothing secret.
    let (env, err) = result(&reqs[1], "e2");
    assert!(!err, "{env}");
    assert!(env.contains("visible-7731"), "{env}");
    assert!(
        !env.contains(KEY),
        "the API key reached the MCP server: {env}"
    );
    assert!(!env.contains("LOOPS_TEST_KEY"), "{env}");

    // The status file said where it ran; `loops trigger` stopped it on the way out.
    let st = status(&ws, "everything");
    assert_eq!(st["state"], "stopped", "{st}");
    assert_eq!(st["transport"], "stdio", "{st}");
    assert_eq!(st["restarts"], 0, "{st}");
    let pid = st["pid"].as_i64().expect("pid") as i32;
    assert!(
        wait_until(Duration::from_secs(10), || gone(pid)),
        "server pid {pid} still running"
    );
    let log = std::fs::read_to_string(ws.path().join(".loops/mcp/everything.log")).unwrap();
    assert!(log.contains("starting `"), "{log}");
    assert!(!log.contains(KEY));
    // The transcript shows the tools as offered and the call.
    let transcript =
        std::fs::read_to_string(ws.path().join(rec["transcript"].as_str().unwrap())).unwrap();
    assert!(transcript.contains("everything__echo"), "{transcript}");
}

#[test]
fn a_server_tool_entry_offers_only_that_tool_and_call_tool_keeps_to_the_list() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[
                (
                    "c1",
                    "call_tool",
                    json!({"server": "everything", "tool": "get-sum", "params": {"a": 1, "b": 2}}),
                ),
                (
                    "c2",
                    "call_tool",
                    json!({"server": "everything", "tool": "echo", "params": {"message": "via-call-tool"}}),
                ),
                ("c3", "everything__get-sum", json!({"a": 1, "b": 2})),
                (
                    "c4",
                    "call_tool",
                    json!({"tool": "everything.echo", "params": "{\"message\": \"dotted\"}"}),
                ),
            ],
            (10, 5, 0, 0),
        ),
        finish("f1"),
    ]);
    let ws = workspace(
        &fake,
        &format!("  everything: {{ command: [\"{}\"] }}\n", everything()),
    );
    prompt_loop(&ws, "narrow", "tools: [everything.echo, finish]\n");
    let (out, rec) = trigger(&ws, "narrow", &[]);
    assert_eq!(rec["outcome"], "acted", "{rec}\n{}", out.all());

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "{}", out.all());
    assert_eq!(
        offered_names(&reqs[0]),
        ["finish", "everything__echo", "call_tool"]
    );
    let (refused, err) = result(&reqs[1], "c1");
    assert!(err);
    assert!(refused.contains("refused"), "{refused}");
    assert!(refused.contains("everything.get-sum"), "{refused}");
    assert!(
        refused.contains("Allowed here: everything.echo"),
        "{refused}"
    );
    assert_eq!(
        result(&reqs[1], "c2"),
        ("Echo: via-call-tool".to_string(), false)
    );
    let (direct, err) = result(&reqs[1], "c3");
    assert!(err && direct.contains("refused"), "{direct}");
    assert_eq!(result(&reqs[1], "c4"), ("Echo: dotted".to_string(), false));
    let refused_tools: Vec<String> = rec["refused_tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(
        refused_tools.contains(&"call_tool(everything.get-sum)".to_string()),
        "{rec}"
    );
    assert!(
        refused_tools.contains(&"everything__get-sum".to_string()),
        "{rec}"
    );
}

#[test]
fn the_filesystem_server_reads_a_file() {
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().canonicalize().unwrap();
    std::fs::write(
        dir.join("notes.txt"),
        "FS-MARKER-5150: the filesystem server read this.\n",
    )
    .unwrap();
    let path = dir.join("notes.txt").display().to_string();
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[("r1", "files__read_text_file", json!({ "path": path }))],
            (10, 5, 0, 0),
        ),
        finish("f1"),
    ]);
    let ws = workspace(
        &fake,
        &format!(
            "  files:\n    command: \"{}\"\n    args: [\"{}\"]\n    timeout: 30s\n",
            reference_server("mcp-server-filesystem"),
            dir.display()
        ),
    );
    prompt_loop(
        &ws,
        "reader",
        "tools: [files.read_text_file, files.list_directory, finish]\n",
    );
    let (out, rec) = trigger(&ws, "reader", &[]);
    assert_eq!(rec["outcome"], "acted", "{rec}\n{}", out.all());
    let reqs = fake.requests();
    assert_eq!(
        offered_names(&reqs[0]),
        [
            "finish",
            "files__read_text_file",
            "files__list_directory",
            "call_tool"
        ]
    );
    let (text, err) = result(&reqs[1], "r1");
    assert!(!err, "{text}");
    assert!(text.contains("FS-MARKER-5150"), "{text}");
}

#[test]
fn servers_that_fail_at_start_leave_the_run_going_and_the_model_told() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[
                (
                    "c1",
                    "call_tool",
                    json!({"server": "broken", "tool": "anything", "params": {}}),
                ),
                ("c2", "everything__echo", json!({"message": "still-works"})),
            ],
            (10, 5, 0, 0),
        ),
        finish("f1"),
    ]);
    let ws = workspace(
        &fake,
        &format!(
            "  broken: {{ command: [\"sh\", \"-c\", \"echo broken-stderr-marker >&2; exit 3\"] }}\n  sleepy: {{ command: [\"sleep\", \"600\"], startup_timeout: 2s }}\n  missing: {{ command: [\"./no-such-server\"] }}\n  everything: {{ command: [\"{}\"] }}\n",
            everything()
        ),
    );
    prompt_loop(
        &ws,
        "hardy",
        "tools: [broken, sleepy, missing, everything.echo, finish]\n",
    );
    let (out, rec) = trigger(&ws, "hardy", &[]);
    assert_eq!(rec["outcome"], "acted", "{rec}\n{}", out.all());
    assert!(out.elapsed < Duration::from_secs(120), "{}", out.all());

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "{}", out.all());
    assert_eq!(
        offered_names(&reqs[0]),
        ["finish", "everything__echo", "call_tool"]
    );
    // The model is told what is missing and why, in call_tool's description.
    let ct = tool(&reqs[0], "call_tool");
    let d = ct["description"].as_str().unwrap();
    assert!(
        d.contains("mcp server `broken` exited at start (exit 3): broken-stderr-marker"),
        "{d}"
    );
    assert!(
        d.contains("check mcp_servers.broken.command in loops.yaml"),
        "{d}"
    );
    assert!(d.contains("mcp server `sleepy` did not finish starting within 2s (mcp_servers.sleepy.startup_timeout)"), "{d}");
    assert!(
        d.contains("mcp server `missing` could not start: `./no-such-server` was not found"),
        "{d}"
    );
    let (err_text, err) = result(&reqs[1], "c1");
    assert!(err, "{err_text}");
    assert!(err_text.contains("exited at start (exit 3)"), "{err_text}");
    assert_eq!(
        result(&reqs[1], "c2"),
        ("Echo: still-works".to_string(), false)
    );

    // The run record says it too.
    let note = rec["note"].as_str().unwrap_or_default();
    assert!(note.contains("mcp: "), "{rec}");
    assert!(note.contains("exit 3"), "{rec}");
    assert!(note.contains("sleepy"), "{rec}");
    assert_eq!(status(&ws, "broken")["state"], "failed");
    let sleepy = status(&ws, "sleepy");
    assert!(
        sleepy["last_error"]
            .as_str()
            .unwrap()
            .contains("did not finish starting"),
        "{sleepy}"
    );
    let log = std::fs::read_to_string(ws.path().join(".loops/mcp/broken.log")).unwrap();
    assert!(log.contains("broken-stderr-marker"), "{log}");
    // `loops check` is content with server names in `tools:`.
    let check = ws.cmd().arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{text}");
    assert!(!text.contains("unknown tool"), "{text}");
}

/// An MCP server on the official Python SDK: `hang` sleeps until cancelled (and notes
/// the cancellation in `marker`), `freeze` blocks the whole server (a hung server, which
/// answers nothing, not even a ping), `quick` answers at once.
fn hanging_server(dir: &Path, marker: &Path) -> PathBuf {
    let p = dir.join("hang_server.py");
    std::fs::write(
        &p,
        format!(
            r#"import asyncio, pathlib, time
try:  # the SDK's 2.x renamed FastMCP
    from mcp.server.mcpserver import MCPServer as FastMCP
except ImportError:
    from mcp.server.fastmcp import FastMCP

marker = pathlib.Path({marker:?})
mcp = FastMCP("hang")


@mcp.tool()
async def hang(seconds: int = 600) -> str:
    """Sleeps for a long time."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        marker.write_text("cancelled")
        raise
    return "woke up"


@mcp.tool()
async def freeze() -> str:
    """Blocks the server."""
    # Blocking inside a coroutine stops the event loop itself (the SDK's 2.x runs a
    # plain def tool on a worker thread, which would leave the server answering).
    time.sleep(600)
    return "thawed"


@mcp.tool()
def quick() -> str:
    """Answers at once."""
    return "quick answer"


mcp.run()
"#,
            marker = marker.display().to_string()
        ),
    )
    .unwrap();
    p
}

#[test]
fn a_hanging_call_times_out_per_call_and_is_cancelled_and_a_hung_server_is_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("cancelled");
    let script = hanging_server(tmp.path(), &marker);
    let fake = FakeModel::start(vec![
        anthropic::tool_use(&[("h1", "hang__hang", json!({}))], (10, 5, 0, 0)),
        anthropic::tool_use(&[("q1", "hang__quick", json!({}))], (10, 5, 0, 0)),
        anthropic::tool_use(&[("z1", "hang__freeze", json!({}))], (10, 5, 0, 0)),
        anthropic::tool_use(&[("q2", "hang__quick", json!({}))], (10, 5, 0, 0)),
        finish("f1"),
    ]);
    let ws = workspace(
        &fake,
        &format!(
            "  hang: {{ command: [{:?}, {:?}], timeout: 3s, startup_timeout: 60s }}\n",
            crate::common::test_python().display().to_string(),
            script.display().to_string()
        ),
    );
    prompt_loop(&ws, "patient", "tools: [hang, finish]\n");
    let (out, rec) = trigger(&ws, "patient", &[]);
    assert_eq!(rec["outcome"], "acted", "{rec}\n{}", out.all());
    // Far less than the 600 s the tool would sleep.
    assert!(out.elapsed < Duration::from_secs(120), "{}", out.all());
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 5, "{}", out.all());
    let (text, err) = result(&reqs[1], "h1");
    assert!(err, "{text}");
    assert_eq!(
        text,
        "timed out after 3s calling hang.hang (mcp_servers.hang.timeout); the call was cancelled"
    );
    // The server is still usable after a timed-out call (it answered the ping a
    // timeout calls for).
    assert_eq!(result(&reqs[2], "q1"), ("quick answer".to_string(), false));
    assert!(
        wait_until(Duration::from_secs(20), || marker.exists()),
        "the server never saw the call cancelled"
    );
    // A server that stops answering altogether fails that ping, and is replaced.
    let (text, err) = result(&reqs[3], "z1");
    assert!(
        err && text.starts_with("timed out after 3s calling hang.freeze"),
        "{text}"
    );
    assert_eq!(result(&reqs[4], "q2"), ("quick answer".to_string(), false));
    let st = status(&ws, "hang");
    assert_eq!(st["restarts"], 1, "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("did not answer a ping within 5s (health check)"),
        "{st}"
    );
}

#[test]
fn a_streamable_http_server_is_reached_by_url_with_headers_from_the_environment() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new(everything())
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the everything server on HTTP");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let up = wait_until(Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let status_now = server.try_wait().unwrap();
    let _server = Kill(server);
    assert!(
        up,
        "the everything server did not listen on {port} ({status_now:?})"
    );

    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[("e1", "web__echo", json!({"message": "over-http"}))],
            (10, 5, 0, 0),
        ),
        finish("f1"),
    ]);
    let ws = workspace(
        &fake,
        &format!(
            "  web:\n    url: \"http://127.0.0.1:{port}/mcp\"\n    headers: {{ X-Loops-Test: \"Token ${{MCP_HEADER_VALUE}}\" }}\n"
        ),
    );
    prompt_loop(&ws, "remote", "tools: [web, finish]\n");
    let (out, rec) = trigger(&ws, "remote", &[("MCP_HEADER_VALUE", "abc123")]);
    assert_eq!(rec["outcome"], "acted", "{rec}\n{}", out.all());
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "{}", out.all());
    assert!(offered_names(&reqs[0]).contains(&"web__echo".to_string()));
    assert_eq!(
        result(&reqs[1], "e1"),
        ("Echo: over-http".to_string(), false)
    );
    assert_eq!(status(&ws, "web")["transport"], "http");

    // Without the variable the header needs, the server is left out and the run says why.
    let fake2 = FakeModel::start(vec![finish("f2")]);
    let ws2 = workspace(
        &fake2,
        &format!(
            "  web:\n    url: \"http://127.0.0.1:{port}/mcp\"\n    headers: {{ X-Loops-Test: MCP_HEADER_VALUE }}\n"
        ),
    );
    prompt_loop(&ws2, "remote", "tools: [web, finish]\n");
    let (out, rec) = trigger(&ws2, "remote", &[]);
    assert_eq!(rec["outcome"], "acted", "{rec}\n{}", out.all());
    let note = rec["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("environment variable `MCP_HEADER_VALUE` is not set (mcp_servers.web.headers.X-Loops-Test needs it)"),
        "{rec}"
    );
}

#[test]
fn a_daemon_restarts_a_server_that_died_and_stops_it_when_it_stops() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[("e1", "everything__echo", json!({"message": "first"}))],
            (10, 5, 0, 0),
        ),
        finish("f1"),
    ]);
    let ws = workspace(
        &fake,
        &format!("  everything: {{ command: [\"{}\"] }}\n", everything()),
    );
    // Slots every 20 s: time enough between two runs to kill the server.
    prompt_loop(
        &ws,
        "ticker",
        "schedule: { every: 20s }\ntools: [everything, finish]\n",
    );
    let mut d = start_daemon(&ws);
    let runs_acted = |n: usize| ws.count_outcome("ticker", "acted") >= n;
    assert!(
        wait_until(LONG, || runs_acted(1)),
        "no first run: {:?}\n{}",
        ws.runs("ticker"),
        d.log()
    );
    // The next run's replies, before the next slot comes.
    fake.push(vec![
        anthropic::tool_use(
            &[("e2", "everything__echo", json!({"message": "second"}))],
            (10, 5, 0, 0),
        ),
        finish("f2"),
    ]);
    let first = status(&ws, "everything");
    assert_eq!(first["state"], "running", "{first}");
    let pid = first["pid"].as_i64().expect("pid") as i32;
    assert!(pid_alive(pid), "{first}");
    // Killing the MCP server the daemon started (a process of this test's tree).
    signal(pid, Signal::KILL);
    assert!(wait_until(Duration::from_secs(10), || gone(pid)));

    assert!(
        wait_until(LONG, || runs_acted(2)),
        "no second run: {:?}\n{}",
        ws.runs("ticker"),
        d.log()
    );
    let reqs = fake.requests();
    let second = reqs
        .iter()
        .rev()
        .find(|r| r.json()["messages"].to_string().contains("\"e2\""))
        .expect("the second run's tool result");
    assert_eq!(result(second, "e2"), ("Echo: second".to_string(), false));
    let now = status(&ws, "everything");
    assert_eq!(now["restarts"], 1, "{now}");
    assert_eq!(now["state"], "running", "{now}");
    let pid2 = now["pid"].as_i64().expect("pid") as i32;
    assert_ne!(pid2, pid);
    assert!(pid_alive(pid2), "{now}");
    assert!(
        now["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("exited"),
        "{now}"
    );

    d.signal(Signal::TERM);
    assert!(
        d.wait_exit(LONG).expect("the daemon stops").success(),
        "{}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || gone(pid2)),
        "the server (pid {pid2}) outlived the daemon"
    );
    assert_eq!(status(&ws, "everything")["state"], "stopped");
}

#[test]
fn loops_check_knows_server_names_in_tools() {
    let fake = FakeModel::start(vec![]);
    let ws = workspace(
        &fake,
        "  everything: { command: [\"mcp-server-everything\"] }\n",
    );
    prompt_loop(
        &ws,
        "good",
        "tools: [everything, everything.echo, finish]\n",
    );
    prompt_loop(&ws, "typo", "tools: [everythin, finish]\n");
    prompt_loop(&ws, "nosuch", "tools: [github.create_issue, finish]\n");
    let out = ws.cmd().arg("check").output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        // A near-miss of a server's name is a typo: an error, at the entry itself.
        text.contains("error: domains/typo/config.yaml:4:9: unknown tool `everythin` in `tools`"),
        "{text}"
    );
    assert!(text.contains("did you mean `everything`?"), "{text}");
    assert!(
        text.contains("error: domains/nosuch/config.yaml:4:8: `github.create_issue` in `tools` names MCP server `github`, which is not in loops.yaml `mcp_servers:`"),
        "{text}"
    );
    assert!(!text.contains("domains/good"), "{text}");

    // Mistakes in loops.yaml itself, with where they are.
    let ws = workspace(
        &fake,
        "  both:\n    command: [srv]\n    url: \"http://127.0.0.1:9/mcp\"\n  typo: { command: [srv], timout: 5s }\n",
    );
    let out = ws.cmd().arg("check").output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("loops.yaml:8:5: mcp server `both` has both `command` and `url`"),
        "{text}"
    );
    assert!(
        text.contains("loops.yaml:9:27: unknown key `mcp_servers.typo.timout`"),
        "{text}"
    );
    assert!(text.contains("did you mean `timeout`?"), "{text}");
}
