//! Request options (tool_choice, temperature, top_p, seed, parallel_tool_calls,
//! reasoning_effort, thinking_budget, extra_body): per provider in loops.yaml and per loop
//! under `payload:`, as the real `loops` binary sends them to the fake model server in
//! each wire format, and as `loops check` judges them.

use crate::common::{git_commit_all, TempWorkspace};
use loops_testutil::fake_model::{anthropic, openai, FakeModel, Recorded};
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "sk-test-request-options";

/// A workspace with these loops.yaml lines and no example loop, committed.
fn workspace(yaml: &str) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write("loops.yaml", yaml);
    git_commit_all(ws.path(), "setup");
    ws
}

/// A prompt loop `name` with extra `payload:` lines (indented two spaces), committed.
fn prompt_loop(ws: &TempWorkspace, name: &str, payload: &str) {
    ws.add_loop(
        name,
        &format!("schedule: {{ every: 1h }}\npayload:\n  kind: prompt\n{payload}tools: [read_file, finish]\n"),
    );
    ws.write(&format!("domains/{name}/prompt.md"), "Look, then finish.\n");
    git_commit_all(ws.path(), &format!("loop {name}"));
}

/// `loops trigger NAME`, which must succeed.
fn trigger(ws: &TempWorkspace, name: &str) {
    let out = ws
        .cmd()
        .args(["trigger", name])
        .env("LOOPS_TEST_KEY", KEY)
        .timeout(Duration::from_secs(120))
        .output()
        .expect("run loops trigger");
    assert!(
        out.status.success(),
        "trigger {name}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `loops check`: its stdout with the workspace path replaced, and its exit code.
fn check(ws: &TempWorkspace) -> (String, i32) {
    let out = ws.cmd().arg("check").output().expect("run loops check");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    for root in [
        ws.path().canonicalize().expect("canonical root"),
        ws.path().to_path_buf(),
    ] {
        text = text.replace(&root.display().to_string(), "[WS]");
    }
    (text, out.status.code().expect("exit code"))
}

fn finish_openai() -> loops_testutil::fake_model::Reply {
    openai::tool_calls(
        &[("f1", "finish", json!({"summary": "looked"}))],
        (10, 2, 0),
    )
}

fn finish_anthropic() -> loops_testutil::fake_model::Reply {
    anthropic::tool_use(
        &[("f1", "finish", json!({"summary": "looked"}))],
        (10, 2, 0, 0),
    )
}

/// The body as text, and the position of `key` at its top level in it.
fn key_at(r: &Recorded, key: &str) -> usize {
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no `{key}` in {text}"))
}

/// The options sit in the stable part of the body, before the conversation: a request
/// that only adds messages still starts with the previous one's bytes.
fn assert_before_messages(r: &Recorded, keys: &[&str]) {
    let messages = key_at(r, "messages");
    for k in keys {
        assert!(key_at(r, k) < messages, "`{k}` comes before `messages`");
    }
    assert!(r.body.ends_with(b"]}"), "the body ends with the messages");
}

#[test]
fn openai_requests_carry_the_providers_options() {
    let fake = FakeModel::start(vec![finish_openai()]);
    let ws = workspace(&format!(
        "providers:
  local:
    kind: openai
    base_url: \"{}/v1\"
    api_key_env: LOOPS_TEST_KEY
    model: tiny
    tool_choice: required
    temperature: 0.2
    top_p: 0.9
    seed: 42
    parallel_tool_calls: false
    reasoning_effort: low
    extra_body: {{ top_k: 40, cache_prompt: true, chat_template_kwargs: {{ enable_thinking: false }} }}
",
        fake.url()
    ));
    prompt_loop(&ws, "scout", "");
    let (text, code) = check(&ws);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("warning:"), "{text}");
    trigger(&ws, "scout");

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let body = reqs[0].json();
    assert_eq!(body["model"], "tiny");
    assert_eq!(body["tool_choice"], "required");
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["seed"], 42);
    assert_eq!(body["parallel_tool_calls"], false);
    assert_eq!(body["reasoning_effort"], "low");
    assert_eq!(body["top_k"], 40);
    assert_eq!(body["cache_prompt"], true);
    assert_eq!(
        body["chat_template_kwargs"],
        json!({"enable_thinking": false})
    );
    assert!(body.get("thinking").is_none(), "{body}");
    assert_before_messages(&reqs[0], &["tool_choice", "temperature", "top_k"]);
}

#[test]
fn anthropic_requests_map_the_options_to_their_own_shapes() {
    let fake = FakeModel::start(vec![finish_anthropic()]);
    let ws = workspace(&format!(
        "providers:
  claude:
    kind: anthropic
    base_url: \"{}\"
    api_key_env: LOOPS_TEST_KEY
    model: test-model
    max_tokens: 4096
    tool_choice: required
    parallel_tool_calls: false
    temperature: 0.5
    thinking_budget: 1024
    seed: 7
    extra_body: {{ top_k: 5, metadata: {{ user_id: loops-test }} }}
",
        fake.url()
    ));
    prompt_loop(&ws, "scout", "");
    // Anthropic has no seed: said, but not an error.
    let (text, code) = check(&ws);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("warning: loops.yaml:")
            && text.contains(
                "providers.claude.seed is ignored by provider `claude` (kind: anthropic)"
            ),
        "{text}"
    );
    trigger(&ws, "scout");

    let reqs = fake.requests();
    let body = reqs[0].json();
    assert_eq!(
        body["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(
        body["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    assert_eq!(body["top_k"], 5);
    assert_eq!(body["metadata"], json!({"user_id": "loops-test"}));
    for absent in ["seed", "parallel_tool_calls", "reasoning_effort", "top_p"] {
        assert!(body.get(absent).is_none(), "no `{absent}` in {body}");
    }
    assert_before_messages(&reqs[0], &["tool_choice", "thinking"]);
}

#[test]
fn a_loops_payload_overrides_its_providers_options_key_by_key() {
    let fake = FakeModel::start(vec![finish_openai(), finish_openai()]);
    let ws = workspace(&format!(
        "providers:
  local:
    kind: openai
    base_url: \"{}/v1\"
    model: tiny
    tool_choice: auto
    temperature: 0.2
    seed: 1
    extra_body: {{ top_k: 40, min_p: 0.1 }}
",
        fake.url()
    ));
    prompt_loop(
        &ws,
        "eager",
        "  tool_choice: required\n  temperature: 0.7\n  extra_body: { min_p: 0.05, repeat_penalty: 1.1 }\n",
    );
    prompt_loop(&ws, "plain", "");
    let (text, code) = check(&ws);
    assert_eq!(code, 0, "{text}");
    trigger(&ws, "eager");
    trigger(&ws, "plain");

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let eager = reqs[0].json();
    assert_eq!(eager["tool_choice"], "required", "the loop's own");
    assert_eq!(eager["temperature"], 0.7, "the loop's own");
    assert_eq!(eager["seed"], 1, "the provider's, the loop names none");
    assert_eq!(eager["top_k"], 40, "the provider's extra body key");
    assert_eq!(eager["min_p"], 0.05, "the loop's value for the same key");
    assert_eq!(eager["repeat_penalty"], 1.1, "the loop's added key");
    let plain = reqs[1].json();
    assert_eq!(plain["tool_choice"], "auto");
    assert_eq!(plain["temperature"], 0.2);
    assert_eq!(plain["min_p"], 0.1);
    assert!(plain.get("repeat_penalty").is_none(), "{plain}");
}

#[test]
fn a_request_without_options_is_unchanged() {
    let fake = FakeModel::start(vec![finish_openai()]);
    let ws = workspace(&format!(
        "providers:\n  local: {{ kind: openai, base_url: \"{}/v1\", model: tiny }}\n",
        fake.url()
    ));
    prompt_loop(&ws, "scout", "");
    trigger(&ws, "scout");
    let body: Value = fake.requests()[0].json();
    let keys: Vec<&str> = body
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    // Only what loops itself writes (every reply is streamed, usage included).
    assert_eq!(
        keys,
        [
            "max_tokens",
            "messages",
            "model",
            "stream",
            "stream_options",
            "tools"
        ]
    );
}

#[test]
fn check_names_every_bad_option_at_its_place() {
    let ws = workspace(
        "providers:
  local:
    kind: openai
    base_url: \"http://127.0.0.1:9/v1\"
    model: tiny
    tool_choice: always
    temperature: 3
    top_p: -0.5
    seed: 1.5
    parallel_tool_calls: sometimes
    reasoning_effort: extreme
    thinking_budget: 0
    extra_body: { model: other, top_k: 40, messages: [] }
  claude:
    kind: anthropic
    max_tokens: 1024
    thinking_budget: 2048
    reasoning_effort: high
defaults: { provider: local }
",
    );
    prompt_loop(
        &ws,
        "scout",
        "  temprature: 0.3\n  top_p: hot\n  extra_body: [top_k]\n",
    );
    ws.add_loop(
        "tick",
        "schedule: { every: 1h }\npayload: { command: [\"true\"], temperature: 0.1 }\n",
    );
    let (text, code) = check(&ws);
    assert_eq!(code, 1, "{text}");
    insta::assert_snapshot!("check_bad_request_options", text);
}

#[test]
fn a_loops_thinking_budget_must_leave_room_in_its_providers_max_tokens() {
    let ws = workspace(
        "providers:\n  claude: { kind: anthropic, max_tokens: 2000, model: test-model }\n",
    );
    prompt_loop(&ws, "deep", "  thinking_budget: 4000\n  seed: 3\n");
    let (text, code) = check(&ws);
    assert_eq!(code, 1, "{text}");
    insta::assert_snapshot!("check_loop_thinking_budget_over_max_tokens", text);
}
