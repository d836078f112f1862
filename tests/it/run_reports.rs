//! What a run reports, to a person and to the model: a multi-line summary is one line in
//! `loops runs` (the whole in `--json`), a timeout counts the turns that replied, tool
//! arguments that are not JSON are refused with the parse error, and an agent job's
//! prompt names exactly the paths its sandbox lets it write.

use crate::common::{git_commit_all, wait_until, TempWorkspace};
use loops_agent::sandbox::Scope;
use loops_testutil::fake_model::{self, anthropic, openai, FakeModel, Recorded, Reply};
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// A workspace with one provider `fake` of `kind` on the fake server, no example loop.
fn workspace(fake: &FakeModel, kind: &str) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    let url = match kind {
        "openai" => format!("{}/v1", fake.url()),
        _ => fake.url(),
    };
    ws.write(
        "loops.yaml",
        &format!(
            "limits:\n  shutdown_grace: 2s\nproviders:\n  fake: {{ kind: {kind}, base_url: \"{url}\", api_key_env: null, model: test-model }}\n"
        ),
    );
    git_commit_all(ws.path(), "setup");
    ws
}

/// A prompt loop with these extra config.yaml lines, committed.
fn prompt_loop(ws: &TempWorkspace, name: &str, extra: &str) {
    ws.add_loop(
        name,
        &format!("schedule: {{ every: 1h }}\npayload: {{ kind: prompt }}\n{extra}"),
    );
    ws.write(&format!("domains/{name}/prompt.md"), "Do one pass.\n");
    git_commit_all(ws.path(), &format!("loop {name}"));
}

/// `loops ARGS…`: stdout, and the exit code.
fn loops(ws: &TempWorkspace, args: &[&str]) -> (String, Option<i32>) {
    let out = ws
        .cmd()
        .args(args)
        .timeout(LONG)
        .output()
        .expect("run loops");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.code())
}

/// The last message of an openai request's conversation.
fn messages(r: &Recorded) -> Vec<Value> {
    r.json()["messages"].as_array().cloned().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Summaries in tables

#[test]
fn loops_runs_shows_one_line_of_a_multi_line_summary_and_json_the_whole() {
    let summary =
        "Checked the inbox: two stale handoffs\n- a.md is 6 hours old\n- b.md is 9 hours old";
    let fake = FakeModel::start(vec![anthropic::tool_use(
        &[("f1", "finish", json!({"summary": summary}))],
        (10, 2, 0, 0),
    )]);
    let ws = workspace(&fake, "anthropic");
    prompt_loop(&ws, "beat", "tools: [finish]\n");
    let (out, code) = loops(&ws, &["trigger", "beat"]);
    assert_eq!(code, Some(0), "{out}");

    let (table, code) = loops(&ws, &["runs", "beat"]);
    assert_eq!(code, Some(0), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one row:\n{table}");
    assert!(
        lines[1].contains("Checked the inbox: two stale handoffs …"),
        "the first line, and an ellipsis:\n{table}"
    );
    assert!(!table.contains("6 hours old"), "{table}");
    assert!(lines[1].contains("[10 in / 2 out tokens]"), "{table}");

    let (json, code) = loops(&ws, &["runs", "beat", "--json"]);
    assert_eq!(code, Some(0), "{json}");
    let recs: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(recs[0]["summary"], summary, "--json keeps the whole");
}

// ---------------------------------------------------------------------------------------
// Timeouts

#[test]
fn a_timeout_counts_the_turns_that_replied() {
    let fake = FakeModel::start(vec![
        openai::tool_calls(
            &[("r1", "read_file", json!({"path": "domains/slow/prompt.md"}))],
            (10, 2, 0),
        ),
        // The second turn is still generating when the run's time is up.
        fake_model::slow(openai::text("too late", (1, 1, 0)), Duration::from_secs(30)),
    ]);
    let ws = workspace(&fake, "openai");
    prompt_loop(&ws, "slow", "timeout: 3s\ntools: [read_file, finish]\n");
    let (out, code) = loops(&ws, &["trigger", "slow"]);
    assert_eq!(code, Some(1), "{out}");
    let rec = ws.runs("slow").pop().expect("a run record");
    assert_eq!(rec["outcome"], "timeout", "{rec}");
    assert_eq!(fake.request_count(), 2, "the second turn was asked for");
    assert_eq!(
        rec["error"], "timed out after 1 turn(s); the conversation was stopped",
        "one turn replied; the one the deadline cut made none: {rec}"
    );
}

// ---------------------------------------------------------------------------------------
// Tool arguments that are not JSON

/// An openai reply whose one tool call's arguments are `raw`, as written.
fn raw_call(name: &str, raw: &str) -> Reply {
    Reply::json(
        200,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "test-model",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": name, "arguments": raw}}
                ]},
                "finish_reason": "tool_calls"
            }],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }),
    )
}

#[test]
fn tool_arguments_that_are_not_json_are_refused_with_the_parse_error() {
    let raw = r#"{"path": "domains/notes/out.md", "content": "hi""#;
    let fake = FakeModel::start(vec![
        raw_call("write_file", raw),
        openai::tool_calls(
            &[("f1", "finish", json!({"summary": "gave up"}))],
            (10, 2, 0),
        ),
    ]);
    let ws = workspace(&fake, "openai");
    prompt_loop(&ws, "notes", "tools: [write_file, finish]\n");
    let (out, code) = loops(&ws, &["trigger", "notes"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        !ws.path().join("domains/notes/out.md").exists(),
        "the tool was not run"
    );

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let second = messages(&reqs[1]);
    let call = second
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("the model's call, echoed");
    assert_eq!(
        call["tool_calls"][0]["function"]["arguments"], "{}",
        "the call is echoed without loops' own wrapper: {call}"
    );
    let result = second
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("the tool result");
    let text = result["content"].as_str().expect("text");
    assert!(
        text.starts_with("ERROR: the arguments of `write_file` were not valid JSON (EOF while parsing an object at line 1 column "),
        "the parse error is named: {text}"
    );
    assert!(text.contains("so it was not run"), "{text}");
    assert!(text.contains(raw), "what the model wrote is quoted: {text}");
    let body = String::from_utf8_lossy(&reqs[1].body);
    assert!(
        !body.contains("_raw") && !body.contains("_loops_invalid_arguments"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------
// An agent job's prompt and its sandbox

/// The paths in backticks of the sentence "You may write only in …".
fn writable_in_prompt(system: &str) -> Vec<String> {
    let start = system
        .find("You may write only in ")
        .unwrap_or_else(|| panic!("no write rule in the prompt:\n{system}"));
    let rest = &system[start..];
    let sentence = &rest[..rest.find(';').expect("the sentence ends")];
    sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn a_loops_prompt_names_exactly_the_areas_its_sandbox_writes() {
    let scope = Scope::Isolated {
        loop_name: "scout".into(),
    };
    let preamble = loops_agent::context::loop_preamble("scout");
    assert_eq!(Some(writable_in_prompt(&preamble)), scope.writable_areas());
}

#[test]
fn an_agent_jobs_prompt_names_the_paths_its_sandbox_lets_it_write() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[
                (
                    "w1",
                    "write_file",
                    json!({"path": "drafts/job-1/notes.md", "content": "found it\n"}),
                ),
                // The path the job's prompt used to name.
                (
                    "w2",
                    "write_file",
                    json!({"path": "domains/job-1/notes.md", "content": "found it\n"}),
                ),
            ],
            (10, 2, 0, 0),
        ),
        anthropic::text("Done.", (10, 2, 0, 0)),
    ]);
    let ws = workspace(&fake, "anthropic");
    let mut daemon = ws.start_daemon();
    let (out, code) = loops(
        &ws,
        &[
            "agent",
            "run",
            "Write what you find to your notes",
            "--detach",
            "--tools",
            "write_file,finish",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let state = || {
        let (j, _) = loops(&ws, &["jobs", "get", "1", "--json"]);
        serde_json::from_str::<Value>(&j).unwrap_or_default()["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        wait_until(LONG, || state() == "completed"),
        "the job never completed: {}\n{}",
        state(),
        daemon.log()
    );
    daemon.kill();

    let reqs = fake.requests();
    let system: String = reqs[0].json()["system"]
        .as_array()
        .expect("system blocks")
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let scope = Scope::Job {
        name: "job-1".into(),
    };
    assert_eq!(
        Some(writable_in_prompt(&system)),
        scope.writable_areas(),
        "the prompt names what the sandbox allows:\n{system}"
    );
    for wrong in ["domains/job-1", "prompt.md", "state.md", "schedule"] {
        assert!(
            !system.contains(wrong),
            "`{wrong}` in the job's prompt:\n{system}"
        );
    }

    // The path the prompt names is written; the one it used to name is refused.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("drafts/job-1/notes.md")).expect("the draft"),
        "found it\n"
    );
    assert!(!ws.path().join("domains/job-1").exists());
    let results: Vec<Value> = reqs[1].json()["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .cloned()
        .unwrap_or_default();
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0]["is_error"], false, "{results:?}");
    assert_eq!(results[1]["is_error"], true, "{results:?}");
    let refusal = results[1]["content"].as_str().unwrap_or("");
    assert!(
        refusal.contains("an agent job may write only under drafts/job-1/"),
        "{refusal}"
    );
}
