//! Issue #19, the wire side: what a real server and a real bill need, through the real
//! `loops` binary against the fake model server on 127.0.0.1 answering in the shapes
//! upstream llama.cpp `llama-server` was recorded answering with
//! (crates/loops-testutil/fixtures/llama-server/): stop reasons and cut replies, streamed
//! replies with an idle timeout, capped retries, classified errors, the main session's
//! conversation trimmed to the model's context, keys optional for local servers, and
//! fallback providers.

use crate::common::{drop_handoff, git_commit_all, git_trailers, Out, TempWorkspace};
use loops_testutil::fake_model::{anthropic, llama, openai, FakeModel, Recorded, Reply};
use serde_json::{json, Value};
use std::time::Duration;

/// Generous: a slow machine must not fail these tests.
const LONG: Duration = Duration::from_secs(180);

/// What a `loops` command did.
fn loops(ws: &TempWorkspace, args: &[&str]) -> Out {
    Out::of(ws.cmd().args(args).timeout(LONG))
}

/// A workspace with these loops.yaml lines and nothing else; committed.
fn workspace(yaml: &str) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        &format!("limits:\n  shutdown_grace: 2s\n{yaml}"),
    );
    git_commit_all(ws.path(), "setup");
    ws
}

/// `local`: an OpenAI-compatible server on this machine without a key, as llama-server
/// is run, with these extra settings.
fn local_openai(fake: &FakeModel, extra: &str) -> String {
    format!(
        "providers:\n  local: {{ kind: openai, base_url: \"{}/v1\", model: gemma-3-270m, max_tokens: 600{extra} }}\n",
        fake.url()
    )
}

/// `local`: the same server's Anthropic wire (`/v1/messages`), no key configured either.
fn local_anthropic(fake: &FakeModel, extra: &str) -> String {
    format!(
        "providers:\n  local: {{ kind: anthropic, base_url: \"{}\", model: gemma-3-270m, max_tokens: 512{extra} }}\n",
        fake.url()
    )
}

/// A prompt loop `name`, never due on its own, committed.
fn prompt_loop(ws: &TempWorkspace, name: &str, extra: &str) {
    ws.add_loop(
        name,
        &format!(
            "schedule: {{ at: \"2099-01-01T00:00:00Z\" }}\npayload: {{ kind: prompt }}\n{extra}"
        ),
    );
    ws.write(
        &format!("domains/{name}/prompt.md"),
        "Call write_file with path \"drafts/x.md\" and content \"hello\". Then call finish.\n",
    );
    ws.write(&format!("domains/{name}/state.md"), "STATE-BEFORE\n");
    git_commit_all(ws.path(), &format!("loop {name}"));
}

/// `loops trigger NAME` and the run record it appended.
fn trigger(ws: &TempWorkspace, name: &str) -> (Out, Value) {
    let before = ws.runs(name).len();
    let out = loops(ws, &["trigger", name]);
    let runs = ws.runs(name);
    assert_eq!(runs.len(), before + 1, "one record\n{}", out.all());
    (out, runs.last().cloned().expect("a record"))
}

fn transcript(ws: &TempWorkspace, rec: &Value) -> String {
    let rel = rec["transcript"].as_str().expect("a transcript");
    std::fs::read_to_string(ws.path().join(rel)).expect("transcript")
}

fn error(rec: &Value) -> String {
    rec["error"].as_str().unwrap_or_default().to_string()
}

fn tokens(rec: &Value) -> (u64, u64, u64) {
    let t = &rec["tokens"];
    (
        t["input"].as_u64().unwrap_or(0),
        t["output"].as_u64().unwrap_or(0),
        t["cache_read"].as_u64().unwrap_or(0),
    )
}

/// The `tool` messages of an OpenAI request.
fn tool_messages(r: &Recorded) -> Vec<String> {
    r.json()["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn finish_call(summary: &str) -> Reply {
    openai::tool_calls(
        &[("f1", "finish", json!({"summary": summary, "silent": false}))],
        (50, 5, 0),
    )
}

// ---------------------------------------------------------------------------------------
// 1. Stop reasons: a cut reply is not an answer, a cut tool call is not run.

#[test]
fn a_text_reply_cut_at_max_tokens_fails_the_run_naming_the_key() {
    let fake = FakeModel::start(vec![llama::cut_text()]);
    let ws = workspace(&local_openai(&fake, ""));
    prompt_loop(&ws, "job", "");
    let (out, rec) = trigger(&ws, "job");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(rec["outcome"], "failed", "{rec}");
    assert_eq!(
        error(&rec),
        "reply cut at max_tokens=600; raise providers.local.max_tokens",
        "{rec}"
    );
    assert!(rec.get("summary").is_none(), "no junk summary: {rec}");
    assert_eq!(fake.request_count(), 1);
    // The recorded usage: 1675 prompt tokens, 1010 of them cached, 600 generated.
    assert_eq!(tokens(&rec), (665, 600, 1010));
    assert!(
        transcript(&ws, &rec).contains("stop: length"),
        "the stop reason is in the transcript"
    );
}

#[test]
fn tool_calls_of_a_cut_reply_are_not_run_and_the_model_is_told() {
    // The recorded reply: eight write_file calls, one of them to a path this loop may
    // write (`domains/my-loop/state.md`), salvaged from a reply cut at 600 tokens.
    let fake = FakeModel::start(vec![llama::cut_tool_calls(), finish_call("gave up")]);
    let ws = workspace(&local_openai(&fake, ""));
    prompt_loop(&ws, "my-loop", "");
    let (out, rec) = trigger(&ws, "my-loop");
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("domains/my-loop/state.md")).expect("state"),
        "STATE-BEFORE\n",
        "no salvaged call ran"
    );
    assert!(!ws.path().join("drafts/my-loop/x.md").exists());
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let told = tool_messages(&reqs[1]);
    assert_eq!(told.len(), 8, "one answer per call: {told:?}");
    for t in &told {
        assert!(t.contains("not run") && t.contains("max_tokens=600"), "{t}");
    }
    let tr = transcript(&ws, &rec);
    assert!(tr.contains("stop: length"), "{tr}");
    assert!(
        tr.contains("stop: tool_calls"),
        "every turn's stop reason: {tr}"
    );
}

#[test]
fn tool_calls_cut_twice_in_a_row_fail_the_run() {
    let fake = FakeModel::start(vec![llama::cut_tool_calls(), llama::cut_tool_calls()]);
    let ws = workspace(&local_openai(&fake, ""));
    prompt_loop(&ws, "my-loop", "");
    let (out, rec) = trigger(&ws, "my-loop");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(rec["outcome"], "failed");
    let e = error(&rec);
    assert!(
        e.starts_with("reply cut at max_tokens=600; raise providers.local.max_tokens"),
        "{e}"
    );
    assert!(e.contains("none of them was run"), "{e}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("domains/my-loop/state.md")).expect("state"),
        "STATE-BEFORE\n"
    );
}

#[test]
fn an_anthropic_reply_cut_at_max_tokens_fails_too() {
    let fake = FakeModel::start(vec![anthropic::stream_text(
        &["Working", " on it, step one of"],
        "max_tokens",
        (40, 512, 0, 0),
    )]);
    let ws = workspace(&local_anthropic(&fake, ""));
    prompt_loop(&ws, "job", "");
    let (_, rec) = trigger(&ws, "job");
    assert_eq!(rec["outcome"], "failed", "{rec}");
    assert_eq!(
        error(&rec),
        "reply cut at max_tokens=512; raise providers.local.max_tokens"
    );
    assert!(transcript(&ws, &rec).contains("stop: max_tokens"));
}

// ---------------------------------------------------------------------------------------
// 3. Streaming with an idle timeout; capped retries; every token counted.

#[test]
fn a_long_stream_that_keeps_producing_is_never_cut() {
    // 16 pieces 200 ms apart: three seconds in all, longer than the idle timeout, which
    // only ever waits for the next piece.
    let pieces: Vec<String> = (0..16).map(|i| format!("word{i} ")).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let fake = FakeModel::start(vec![
        openai::stream_text(&refs, "stop", (100, 16, 40)).paced(Duration::from_millis(200))
    ]);
    let ws = workspace(&local_openai(&fake, ", idle_timeout: 2s"));
    prompt_loop(&ws, "job", "");
    let (out, rec) = trigger(&ws, "job");
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert_eq!(fake.request_count(), 1, "not resent");
    assert!(
        rec["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("word15"),
        "{rec}"
    );
    assert_eq!(tokens(&rec), (60, 16, 40));
    let sent = fake.requests()[0].json();
    assert_eq!(sent["stream"], true, "{sent}");
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

#[test]
fn a_stalled_stream_is_retried_and_its_tokens_are_counted() {
    for kind in ["openai", "anthropic"] {
        let (stalled, whole) = match kind {
            "openai" => (
                openai::stream_text(&["one ", "two ", "three "], "stop", (100, 9, 0))
                    .stall_after(3, Duration::from_secs(30)),
                openai::stream_text(&["all done"], "stop", (100, 2, 0)),
            ),
            _ => (
                anthropic::stream_text(&["one ", "two ", "three "], "end_turn", (100, 9, 0, 0))
                    .stall_after(5, Duration::from_secs(30)),
                anthropic::stream_text(&["all done"], "end_turn", (100, 2, 0, 0)),
            ),
        };
        let fake = FakeModel::start(vec![stalled, whole]);
        let yaml = match kind {
            "openai" => local_openai(&fake, ", idle_timeout: 1s"),
            _ => local_anthropic(&fake, ", idle_timeout: 1s"),
        };
        let ws = workspace(&yaml);
        prompt_loop(&ws, "job", "");
        let (out, rec) = trigger(&ws, "job");
        assert_eq!(out.code, Some(0), "{kind}: {}", out.all());
        assert_eq!(rec["summary"], "all done", "{kind}: {rec}");
        assert_eq!(fake.request_count(), 2, "{kind}");
        let (input, output, _) = tokens(&rec);
        match kind {
            // Two pieces streamed before the stall, no usage yet: counted as output.
            "openai" => assert_eq!((input, output), (100, 2 + 2), "{rec}"),
            // message_start said 100 in; two deltas streamed before the stall.
            _ => assert_eq!((input, output), (100 + 100, 2 + 2), "{rec}"),
        }
        let tr = transcript(&ws, &rec);
        assert!(tr.contains("providers.local.idle_timeout"), "{kind}: {tr}");
        assert!(tr.contains("tokens of failed attempts"), "{kind}: {tr}");
    }
}

#[test]
fn a_500_for_an_unparseable_tool_call_is_retried_at_most_max_retries() {
    let fake = FakeModel::start(vec![
        llama::unparseable_tool_call(),
        llama::unparseable_tool_call(),
        llama::unparseable_tool_call(),
        finish_call("never reached"),
    ]);
    let ws = workspace(&local_openai(&fake, ", max_retries: 2"));
    prompt_loop(&ws, "job", "");
    let (out, rec) = trigger(&ws, "job");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(fake.request_count(), 3, "one try and two retries");
    let e = error(&rec);
    assert!(e.contains("providers.local.max_retries"), "{e}");
    assert!(e.contains("peg-native format"), "the server's message: {e}");
    // A turn is a reply, and none came.
    assert_eq!(rec["turns"], 0, "{rec}");
}

// ---------------------------------------------------------------------------------------
// 4. Deterministic errors are not retried, and say what to do.

#[test]
fn a_prompt_longer_than_the_context_is_not_retried_and_names_the_fix() {
    let fake = FakeModel::start(vec![
        llama::context_exceeded(2341, 2048),
        finish_call("unused"),
    ]);
    let ws = workspace(&local_openai(&fake, ""));
    prompt_loop(&ws, "job", "");
    let (out, rec) = trigger(&ws, "job");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(fake.request_count(), 1, "not retried");
    let e = error(&rec);
    assert!(e.contains("exceeds the available context size"), "{e}");
    assert!(e.contains("-c"), "the server's context flag: {e}");
    assert!(e.contains("2341 tokens asked"), "{e}");
}

#[test]
fn provider_errors_are_classified() {
    use loops_agent::provider::{classify, Rejection};
    let ctx = |asked, limit| Rejection::ContextLength {
        asked: Some(asked),
        limit: Some(limit),
    };
    let cases: Vec<(u16, &str, &str, Rejection)> = vec![
        (
            400,
            "request (2341 tokens) exceeds the available context size (2048 tokens), try increasing it",
            r#"{"error":{"type":"exceed_context_size_error"}}"#,
            ctx(2341, 2048),
        ),
        (
            400,
            "prompt is too long: 208000 tokens > 200000 maximum",
            "{}",
            ctx(208000, 200000),
        ),
        (
            400,
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            r#"{"error":{"code":"context_length_exceeded"}}"#,
            ctx(9000, 8192),
        ),
        (400, "max_tokens: too big", "{}", Rejection::InvalidRequest),
        (401, "invalid x-api-key", "{}", Rejection::Auth),
        (403, "forbidden", "{}", Rejection::Auth),
        (404, "model not found", "{}", Rejection::NotFound),
        (500, "internal", "{}", Rejection::Other),
    ];
    for (status, message, body, want) in cases {
        assert_eq!(
            classify(status, message, body.as_bytes()),
            want,
            "{message}"
        );
    }
}

#[test]
fn auth_and_not_found_are_not_retried() {
    for (status, hint) in [(401, "api_key_env"), (404, "base_url")] {
        let fake = FakeModel::start(vec![
            openai::error(status, "FAKE-REFUSAL"),
            finish_call("unused"),
        ]);
        let yaml = format!(
            "providers:\n  remote: {{ kind: openai, base_url: \"{}/v1\", model: m, api_key_env: LOOPS_WIRE_KEY }}\n",
            fake.url()
        );
        let ws = workspace(&yaml);
        prompt_loop(&ws, "job", "");
        let out = ws
            .cmd()
            .args(["trigger", "job"])
            .env("LOOPS_WIRE_KEY", "wire-test-key-0123")
            .timeout(LONG)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(fake.request_count(), 1, "{status} is not retried");
        let rec = ws.runs("job").pop().expect("record");
        let e = error(&rec);
        assert!(e.contains("FAKE-REFUSAL") && e.contains(hint), "{e}");
    }
}

/// `n` old wakes of the main session, each with a long answer.
fn old_wakes(n: usize) -> Value {
    let mut messages = Vec::new();
    for i in 0..n {
        messages.push(json!({"role": "user", "content": [{"type": "text", "text": format!("Wake at 2026-11-0{}T09:00:00Z (handoff): OLD-WAKE-{i}", i + 1)}]}));
        messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": format!("OLD-ANSWER-{i} {}", "lorem ipsum ".repeat(200))}]}));
    }
    json!({"summary": [], "messages": messages})
}

#[test]
fn the_main_session_trims_its_conversation_to_the_context_and_learns_it() {
    let fake = FakeModel::start(vec![]);
    let ws = workspace(&format!(
        "{}main: {{ prompt: MAIN.md }}\n",
        local_anthropic(&fake, "")
    ));
    ws.write("MAIN.md", "Do what each handoff asks, then finish.\n");
    git_commit_all(ws.path(), "main");
    let conv = ws.path().join(".loops/main/conversation.json");
    std::fs::create_dir_all(conv.parent().expect("parent")).expect("mkdir");
    std::fs::write(&conv, old_wakes(4).to_string()).expect("conversation");
    drop_handoff(
        ws.path(),
        "h1",
        "---\nid: h1\nfrom: tester\nto: main\n---\n# NEW-HANDOFF\n\nSay hello.\n",
    );
    fake.push(vec![
        Reply::json(
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 4000 tokens > 2048 maximum"}}),
        ),
        anthropic::tool_use(
            &[("c1", "complete_handoff", json!({"id": "h1", "summary": "said hello"}))],
            (10, 5, 0, 0),
        ),
        anthropic::tool_use(
            &[("f1", "finish", json!({"summary": "done", "silent": false}))],
            (10, 5, 0, 0),
        ),
    ]);
    let out = loops(&ws, &["run", "--once"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3, "one try, one after trimming, one more turn");
    let (first, second) = (
        String::from_utf8_lossy(&reqs[0].body),
        String::from_utf8_lossy(&reqs[1].body),
    );
    assert!(first.contains("OLD-WAKE-0"), "the whole conversation first");
    // A dropped wake leaves only its summary line (clipped to 160 characters).
    let whole_answer = format!("OLD-ANSWER-0 {}", "lorem ipsum ".repeat(20));
    assert!(first.contains(&whole_answer));
    assert!(!second.contains(&whole_answer), "the oldest wake went");
    assert!(
        second.contains("Earlier wakes, summarised"),
        "and left its line"
    );
    assert!(second.contains("NEW-HANDOFF"), "the new wake stayed");
    assert!(
        second.contains("Do what each handoff asks"),
        "the system prompt stayed"
    );
    assert!(second.len() < first.len() * 2048 / 4000, "it fits now");
    assert_eq!(ws.done_stems(), vec!["h1".to_string()]);
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&conv).expect("saved")).expect("json");
    let fit = saved["fit_bytes"].as_u64().expect("the limit is learned");
    assert!(fit > 0 && (fit as usize) < first.len(), "{fit}");
    // The wake's record has its estimated cost like a loop's run (a local server's
    // unpriced model: $0), so it counts in the workspace's spend.
    let wake = ws.runs("main").last().cloned().expect("the wake's record");
    assert_eq!(wake["cost_estimate"].as_f64(), Some(0.0), "{wake}");
}

// ---------------------------------------------------------------------------------------
// 5. A key is optional where the provider is local; `check` says when one is needed.

#[test]
fn a_local_anthropic_server_needs_no_key_and_check_warns_about_a_remote_one() {
    let fake = FakeModel::start(vec![anthropic::text("all done", (10, 2, 0, 0))]);
    // kind: anthropic defaults to $ANTHROPIC_API_KEY, unset in the tests' environment.
    let ws = workspace(&format!(
        "{}  remote: {{ kind: anthropic, api_key_env: LOOPS_WIRE_NEVER_SET }}\ndefaults: {{ provider: local }}\n",
        local_anthropic(&fake, "")
    ));
    prompt_loop(&ws, "job", "");
    let (out, rec) = trigger(&ws, "job");
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(rec["summary"], "all done");
    assert_eq!(fake.requests()[0].header("x-api-key"), None);

    let check = loops(&ws, &["check"]);
    assert_eq!(
        check.code,
        Some(0),
        "a warning is not an error: {}",
        check.all()
    );
    assert!(
        check.stdout.contains("$LOOPS_WIRE_NEVER_SET is not set"),
        "{}",
        check.all()
    );
    assert!(
        !check.stdout.contains("ANTHROPIC_API_KEY is not set"),
        "{}",
        check.all()
    );
}

// ---------------------------------------------------------------------------------------
// Fallbacks.

#[test]
fn an_overloaded_provider_falls_back_and_the_commit_says_so() {
    let primary = FakeModel::start(vec![
        anthropic::error(529, "Overloaded"),
        anthropic::error(529, "Overloaded"),
        anthropic::text("unused", (1, 1, 0, 0)),
    ]);
    let backup = FakeModel::start(vec![
        openai::tool_calls(
            &[(
                "w1",
                "write_file",
                json!({"path": "domains/job/state.md", "content": "WRITTEN-BY-BACKUP\n"}),
            )],
            (30, 5, 0),
        ),
        finish_call("wrote the state"),
    ]);
    let ws = workspace(&format!(
        "providers:\n  primary: {{ kind: anthropic, base_url: \"{}\", model: big, max_retries: 1, fallback: [backup] }}\n  backup: {{ kind: openai, base_url: \"{}/v1\", model: small }}\ndefaults: {{ provider: primary }}\n",
        primary.url(),
        backup.url()
    ));
    prompt_loop(&ws, "job", "");
    let (out, rec) = trigger(&ws, "job");
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(primary.request_count(), 2, "one try and max_retries: 1");
    assert_eq!(backup.request_count(), 2, "the rest of the run stays there");
    assert_eq!(
        backup.requests()[0].json()["model"],
        "small",
        "its own model"
    );
    assert_eq!(rec["fallbacks"], json!(["primary -> backup"]), "{rec}");
    assert!(transcript(&ws, &rec).contains("fallback: primary -> backup"));
    let trailers = git_trailers(ws.path(), "HEAD");
    assert!(
        trailers
            .iter()
            .any(|(k, v)| k == "Fallback" && v == "primary -> backup"),
        "{trailers:?}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("domains/job/state.md")).expect("state"),
        "WRITTEN-BY-BACKUP\n"
    );
}

#[test]
fn check_refuses_unknown_and_circular_fallbacks() {
    let ws = workspace(
        "providers:\n  a: { kind: openai, base_url: \"http://127.0.0.1:9/v1\", model: m, fallback: [backup] }\n  backup: { kind: openai, base_url: \"http://127.0.0.1:9/v1\", model: m, fallback: [a] }\n  c: { kind: openai, base_url: \"http://127.0.0.1:9/v1\", model: m, fallback: [bakup] }\n",
    );
    let out = loops(&ws, &["check"]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stdout
            .contains("providers.a.fallback comes back to itself: a -> backup -> a"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout
            .contains("providers.c.fallback names `bakup`, which is not in `providers:`"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains("did you mean `backup`?"),
        "{}",
        out.all()
    );
}

// ---------------------------------------------------------------------------------------
// A failure the same request meets again is not retried, by a loop's retry policy or a
// job's attempts.

#[test]
fn an_agent_job_whose_request_does_not_fit_the_context_fails_once_not_max_attempts_times() {
    let fake = FakeModel::start(vec![
        llama::context_exceeded(9000, 4096),
        llama::context_exceeded(9000, 4096),
        llama::context_exceeded(9000, 4096),
    ]);
    let ws = workspace(&format!(
        "{}defaults: {{ provider: local }}\n",
        local_openai(&fake, "")
    ));
    let out = loops(
        &ws,
        &[
            "jobs",
            "submit",
            "agent",
            "--params",
            r#"{"prompt": "summarise the notes"}"#,
            "--max-attempts",
            "3",
            "--json",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    let d = ws.start_daemon();
    let job = || -> Value {
        serde_json::from_str(&loops(&ws, &["jobs", "get", "1", "--json"]).stdout)
            .unwrap_or(Value::Null)
    };
    assert!(
        crate::common::wait_until(LONG, || job()["state"] == "failed"),
        "{}\n{}",
        job(),
        d.log()
    );
    let j = job();
    assert_eq!(
        j["attempts"], 1,
        "a permanent failure uses one attempt: {j}"
    );
    assert!(
        j["error"].as_str().unwrap_or_default().contains("context"),
        "{j}"
    );
    assert_eq!(fake.request_count(), 1, "never asked again");
}

#[test]
fn a_scheduled_run_whose_reply_is_cut_is_not_retried_by_its_retry_policy() {
    let fake = FakeModel::start(vec![
        llama::cut_text(),
        llama::cut_text(),
        llama::cut_text(),
    ]);
    let ws = workspace(&local_openai(&fake, ""));
    let at = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    ws.add_loop(
        "once",
        &format!(
            "schedule: {{ at: \"{at}\" }}\nretry: {{ max_attempts: 3, delay: 1s }}\npayload: {{ kind: prompt }}\n"
        ),
    );
    ws.write("domains/once/prompt.md", "Say something long.\n");
    git_commit_all(ws.path(), "loop once");
    let d = ws.start_daemon();
    assert!(
        crate::common::wait_until(LONG, || !ws.runs("once").is_empty()),
        "{}",
        d.log()
    );
    // Long enough for two retries a second apart, had there been any.
    std::thread::sleep(Duration::from_secs(4));
    let runs = ws.runs("once");
    assert_eq!(runs.len(), 1, "{runs:?}\n{}", d.log());
    assert_eq!(runs[0]["outcome"], "failed");
    assert!(
        error(&runs[0]).contains("raise providers.local.max_tokens"),
        "{}",
        runs[0]
    );
    assert_eq!(fake.request_count(), 1);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path().join(".loops/state/once.json")).expect("state"),
    )
    .expect("json");
    assert!(state["pending_retry"].is_null(), "{state}");
}

// ---------------------------------------------------------------------------------------
// Extended thinking on the Anthropic wire: the thinking block goes back as it came.

/// The assistant turn of the second request, as sent.
fn second_assistant_turn(fake: &FakeModel) -> Value {
    let reqs = fake.requests();
    assert!(reqs.len() >= 2, "{} requests", reqs.len());
    reqs[1].json()["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "assistant"))
        .cloned()
        .expect("an assistant turn")
}

#[test]
fn a_thinking_block_and_its_signature_are_sent_back_with_the_tool_result() {
    for streamed in [false, true] {
        let first = if streamed {
            anthropic::stream_thinking_tool_use(
                &["The note ", "needs a line."],
                "sig-EqQBCgIYAhIM",
                (
                    "toolu_1",
                    "write_file",
                    r#"{"path": "drafts/job/x.md", "content": "hello"}"#,
                ),
                (40, 30, 0, 0),
            )
        } else {
            anthropic::thinking_tool_use(
                "The note needs a line.",
                "sig-EqQBCgIYAhIM",
                (
                    "toolu_1",
                    "write_file",
                    json!({"path": "drafts/job/x.md", "content": "hello"}),
                ),
                (40, 30, 0, 0),
            )
        };
        let fake = FakeModel::start(vec![
            first,
            anthropic::tool_use(
                &[(
                    "toolu_2",
                    "finish",
                    json!({"summary": "wrote it", "silent": false}),
                )],
                (60, 10, 0, 0),
            ),
        ]);
        let ws = workspace(&format!(
            "providers:\n  local: {{ kind: anthropic, base_url: \"{}\", model: claude-sonnet-4-5, max_tokens: 4096, thinking_budget: 1024 }}\n",
            fake.url()
        ));
        prompt_loop(&ws, "job", "");
        let (out, rec) = trigger(&ws, "job");
        assert_eq!(
            rec["outcome"],
            "acted",
            "streamed {streamed}: {rec}\n{}",
            out.all()
        );
        let turn = second_assistant_turn(&fake);
        let content = turn["content"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            content.first(),
            Some(
                &json!({"type": "thinking", "thinking": "The note needs a line.", "signature": "sig-EqQBCgIYAhIM"})
            ),
            "streamed {streamed}: the thinking block first, as it came: {turn}"
        );
        assert_eq!(content[1]["type"], "tool_use", "{turn}");
        assert!(
            transcript(&ws, &rec).contains("### Thinking"),
            "the transcript shows the reasoning"
        );
    }
}

// ---------------------------------------------------------------------------------------
// `stream: false`, for a server that refuses streaming.

#[test]
fn stream_false_asks_for_whole_replies_and_a_slow_one_is_not_cut_by_the_idle_timeout() {
    for kind in ["openai", "anthropic"] {
        let (first, last) = if kind == "openai" {
            (
                loops_testutil::fake_model::slow(
                    openai::tool_calls(
                        &[(
                            "w1",
                            "write_file",
                            json!({"path": "drafts/job/x.md", "content": "hello"}),
                        )],
                        (50, 5, 0),
                    ),
                    Duration::from_millis(2500),
                ),
                finish_call("wrote it"),
            )
        } else {
            (
                loops_testutil::fake_model::slow(
                    anthropic::tool_use(
                        &[(
                            "w1",
                            "write_file",
                            json!({"path": "drafts/job/x.md", "content": "hello"}),
                        )],
                        (50, 5, 0, 0),
                    ),
                    Duration::from_millis(2500),
                ),
                anthropic::tool_use(
                    &[(
                        "f1",
                        "finish",
                        json!({"summary": "wrote it", "silent": false}),
                    )],
                    (50, 5, 0, 0),
                ),
            )
        };
        let fake = FakeModel::start(vec![first, last]);
        let base = if kind == "openai" {
            format!("{}/v1", fake.url())
        } else {
            fake.url()
        };
        let ws = workspace(&format!(
            "providers:\n  local: {{ kind: {kind}, base_url: \"{base}\", model: m, max_tokens: 600, stream: false, idle_timeout: 1s, max_retries: 0 }}\n"
        ));
        prompt_loop(&ws, "job", "");
        let (out, rec) = trigger(&ws, "job");
        assert_eq!(rec["outcome"], "acted", "{kind}: {rec}\n{}", out.all());
        let reqs = fake.requests();
        assert_eq!(
            reqs.len(),
            2,
            "{kind}: the slow reply was waited for, not retried"
        );
        for r in &reqs {
            let body = r.json();
            assert_eq!(body["stream"], false, "{kind}: {body}");
            assert!(body.get("stream_options").is_none(), "{kind}: {body}");
        }
    }
}

#[test]
fn check_refuses_a_stream_that_is_not_a_boolean() {
    let ws = workspace(
        "providers:\n  local: { kind: openai, base_url: \"http://127.0.0.1:9/v1\", model: m, stream: sometimes }\n",
    );
    let out = loops(&ws, &["check"]);
    assert_ne!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all()
            .contains("providers.local.stream must be true or false"),
        "{}",
        out.all()
    );
}
