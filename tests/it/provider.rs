//! `loops_agent::provider`: both wire formats against the fake model over real HTTP on
//! 127.0.0.1: replies and usage, tool round trips, headers and keys, retries, deadlines,
//! and the bytes of the request body.

use loops_agent::model::{Block, Message, ModelRequest, Role, SystemPart, ToolSpec, Usage};
use loops_agent::provider::{self, Completion, HttpProvider, ProviderError};
use loops_agent::{anthropic, openai};
use loops_core::providers::{ProviderConfig, ProviderKind};
use loops_core::request_options::RequestOptions;
use loops_testutil::fake_model::{self, FakeModel, Reply};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

const KINDS: [ProviderKind; 2] = [ProviderKind::Anthropic, ProviderKind::OpenAi];

fn config(kind: ProviderKind, fake: &FakeModel, key_env: Option<&str>) -> ProviderConfig {
    ProviderConfig {
        name: format!("fake-{}", kind.as_str()),
        kind,
        base_url: match kind {
            ProviderKind::OpenAi => format!("{}/v1", fake.url()),
            _ => fake.url(),
        },
        api_key_env: key_env.map(str::to_string),
        model: Some("test-model".into()),
        max_tokens: 1024,
        request_timeout: Some(Duration::from_secs(30)),
        ..ProviderConfig::new("fake", kind)
    }
}

/// Sets a key in a variable no other test uses (tests run in parallel, one process).
fn set_key(test: &str, kind: ProviderKind, value: &str) -> String {
    let name = format!(
        "LOOPS_TEST_KEY_{}_{}",
        test.to_ascii_uppercase(),
        kind.as_str().to_ascii_uppercase()
    );
    std::env::set_var(&name, value);
    name
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(120)
}

/// A conversation owned here, lent out as a `ModelRequest`.
struct Convo {
    system: Vec<SystemPart>,
    tools: Vec<ToolSpec>,
    messages: Vec<Message>,
}

impl Convo {
    fn new() -> Self {
        Convo {
            system: vec![
                SystemPart {
                    text: "You are a loop.".into(),
                    cache: true,
                },
                SystemPart {
                    text: "Today is Monday.".into(),
                    cache: false,
                },
            ],
            tools: vec![
                tool("read_file", "Reads a file."),
                tool("write_file", "Writes a file."),
            ],
            messages: vec![Message::user_text("Do the thing.")],
        }
    }

    fn req(&self) -> ModelRequest<'_> {
        ModelRequest {
            model: "test-model",
            max_tokens: 1024,
            system: &self.system,
            tools: &self.tools,
            messages: &self.messages,
            options: RequestOptions::none(),
        }
    }
}

fn tool(name: &str, description: &str) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: description.into(),
        input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
    }
}

fn text_reply(kind: ProviderKind, t: &str) -> Reply {
    match kind {
        ProviderKind::Anthropic => fake_model::anthropic::text(t, (10, 5, 0, 0)),
        _ => fake_model::openai::text(t, (10, 5, 0)),
    }
}

fn error_reply(kind: ProviderKind, status: u16, msg: &str) -> Reply {
    match kind {
        ProviderKind::Anthropic => fake_model::anthropic::error(status, msg),
        _ => fake_model::openai::error(status, msg),
    }
}

async fn complete(
    kind: ProviderKind,
    fake: &FakeModel,
    cfg: impl FnOnce(&mut ProviderConfig),
    deadline: Instant,
) -> Result<Completion, ProviderError> {
    let mut c = config(kind, fake, None);
    cfg(&mut c);
    let p = HttpProvider::new(&c).expect("provider");
    p.complete(&Convo::new().req(), deadline).await
}

// ---------------------------------------------------------------------------------------
// Replies and usage

#[tokio::test]
async fn anthropic_text_reply_usage_and_headers() {
    let fake = FakeModel::start(vec![fake_model::anthropic::text("hello", (10, 5, 100, 20))]);
    let kind = ProviderKind::Anthropic;
    let env = set_key("anthropic_text", kind, "sk-ant-test-1");
    let p = HttpProvider::new(&config(kind, &fake, Some(&env))).expect("provider");
    let c = p.complete(&Convo::new().req(), far()).await.expect("reply");

    assert_eq!(c.reply.message.role, Role::Assistant);
    assert_eq!(c.reply.message.text(), "hello");
    assert_eq!(
        c.reply.usage,
        Usage {
            input: 10,
            output: 5,
            cache_read: 100,
            cache_write: 20
        }
    );
    assert_eq!(c.reply.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(c.reply.model.as_deref(), Some("fake-claude"));
    assert_eq!(c.attempts, 1);
    assert!(c.retried.is_empty());
    assert!(c.server_time > Duration::ZERO);

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some("sk-ant-test-1"));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(c.request_bytes, r.body.len());
    assert_eq!(r.body, anthropic::request_body(&Convo::new().req()));
}

#[tokio::test]
async fn openai_text_reply_usage_and_headers() {
    let fake = FakeModel::start(vec![fake_model::openai::text("hi", (100, 7, 60))]);
    let kind = ProviderKind::OpenAi;
    let env = set_key("openai_text", kind, "sk-test-2");
    let p = HttpProvider::new(&config(kind, &fake, Some(&env))).expect("provider");
    let c = p.complete(&Convo::new().req(), far()).await.expect("reply");

    assert_eq!(c.reply.message.text(), "hi");
    assert_eq!(
        c.reply.usage,
        Usage {
            input: 40,
            output: 7,
            cache_read: 60,
            cache_write: 0
        },
        "input is the prompt tokens that were not cached"
    );
    assert_eq!(c.reply.stop_reason.as_deref(), Some("stop"));
    assert_eq!(c.reply.model.as_deref(), Some("fake-gpt"));

    let r = &fake.requests()[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization"), Some("Bearer sk-test-2"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-api-key"), None);
    assert_eq!(c.request_bytes, r.body.len());
}

#[tokio::test]
async fn openai_without_a_configured_key_sends_no_authorization() {
    let fake = FakeModel::start(vec![fake_model::openai::text("local", (3, 1, 0))]);
    let c = complete(ProviderKind::OpenAi, &fake, |_| {}, far())
        .await
        .expect("reply");
    assert_eq!(c.reply.message.text(), "local");
    assert_eq!(fake.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn the_key_is_read_at_each_request() {
    let fake = FakeModel::start(vec![
        fake_model::openai::text("one", (1, 1, 0)),
        fake_model::openai::text("two", (1, 1, 0)),
    ]);
    let kind = ProviderKind::OpenAi;
    let env = set_key("rotation", kind, "first-key");
    let p = HttpProvider::new(&config(kind, &fake, Some(&env))).expect("provider");
    p.complete(&Convo::new().req(), far()).await.expect("first");
    std::env::set_var(&env, "second-key");
    p.complete(&Convo::new().req(), far())
        .await
        .expect("second");
    let reqs = fake.requests();
    assert_eq!(reqs[0].header("authorization"), Some("Bearer first-key"));
    assert_eq!(reqs[1].header("authorization"), Some("Bearer second-key"));
}

// ---------------------------------------------------------------------------------------
// Tool round trips

fn tool_results() -> Message {
    Message {
        role: Role::User,
        content: vec![
            Block::ToolResult {
                tool_use_id: "id_a".into(),
                content: "the contents".into(),
                is_error: false,
            },
            Block::ToolResult {
                tool_use_id: "id_b".into(),
                content: "no such directory".into(),
                is_error: true,
            },
        ],
    }
}

fn calls() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("id_a", "read_file", json!({"path": "a.md"})),
        (
            "id_b",
            "write_file",
            json!({"path": "out/b.md", "text": "x"}),
        ),
    ]
}

fn assert_tool_uses(m: &Message) {
    let uses: Vec<(&str, &str, &Value)> = m.tool_uses().collect();
    assert_eq!(
        uses,
        vec![
            ("id_a", "read_file", &json!({"path": "a.md"})),
            (
                "id_b",
                "write_file",
                &json!({"path": "out/b.md", "text": "x"})
            ),
        ]
    );
}

/// A request that only adds messages starts with the previous one's bytes.
fn assert_prefix(first: &[u8], second: &[u8]) {
    let stem = first
        .strip_suffix(b"]}")
        .expect("body ends with the messages array");
    assert!(
        second.starts_with(stem),
        "the second request extends the first:\n{}\n{}",
        String::from_utf8_lossy(first),
        String::from_utf8_lossy(second)
    );
}

#[tokio::test]
async fn anthropic_tool_use_round_trip() {
    let fake = FakeModel::start(vec![
        fake_model::anthropic::tool_use(&calls(), (50, 20, 0, 0)),
        fake_model::anthropic::text("done", (80, 3, 0, 0)),
    ]);
    let p = HttpProvider::new(&config(ProviderKind::Anthropic, &fake, None)).expect("provider");
    let mut convo = Convo::new();
    let first = p.complete(&convo.req(), far()).await.expect("first");
    assert_eq!(first.reply.stop_reason.as_deref(), Some("tool_use"));
    assert_tool_uses(&first.reply.message);

    convo.messages.push(first.reply.message.clone());
    convo.messages.push(tool_results());
    let second = p.complete(&convo.req(), far()).await.expect("second");
    assert_eq!(second.reply.message.text(), "done");

    let reqs = fake.requests();
    let body = reqs[1].json();
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Do the thing."}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "id_a", "name": "read_file", "input": {"path": "a.md"}},
                {"type": "tool_use", "id": "id_b", "name": "write_file", "input": {"path": "out/b.md", "text": "x"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "id_a", "content": "the contents", "is_error": false},
                {"type": "tool_result", "tool_use_id": "id_b", "content": "no such directory", "is_error": true},
            ]},
        ])
    );
    assert_prefix(&reqs[0].body, &reqs[1].body);
}

#[tokio::test]
async fn openai_tool_calls_round_trip() {
    let fake = FakeModel::start(vec![
        fake_model::openai::tool_calls(&calls(), (50, 20, 0)),
        fake_model::openai::text("done", (80, 3, 0)),
    ]);
    let p = HttpProvider::new(&config(ProviderKind::OpenAi, &fake, None)).expect("provider");
    let mut convo = Convo::new();
    let first = p.complete(&convo.req(), far()).await.expect("first");
    assert_eq!(first.reply.stop_reason.as_deref(), Some("tool_calls"));
    assert_tool_uses(&first.reply.message);
    assert_eq!(first.reply.message.text(), "", "content null is no text");

    convo.messages.push(first.reply.message.clone());
    convo.messages.push(tool_results());
    let second = p.complete(&convo.req(), far()).await.expect("second");
    assert_eq!(second.reply.message.text(), "done");

    let reqs = fake.requests();
    let body = reqs[1].json();
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are a loop.\n\nToday is Monday."},
            {"role": "user", "content": "Do the thing."},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "id_a", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a.md\"}"}},
                {"id": "id_b", "type": "function", "function": {"name": "write_file", "arguments": "{\"path\":\"out/b.md\",\"text\":\"x\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "id_a", "content": "the contents"},
            {"role": "tool", "tool_call_id": "id_b", "content": "ERROR: no such directory"},
        ])
    );
    assert_prefix(&reqs[0].body, &reqs[1].body);
}

#[test]
fn openai_replies_from_lenient_servers() {
    // No ids, arguments that are not JSON, an empty argument string, no usage.
    let body = json!({
        "choices": [{"message": {"role": "assistant", "content": "thinking aloud", "tool_calls": [
            {"type": "function", "function": {"name": "read_file", "arguments": "{\"path\": \"a.md\""}},
            {"function": {"name": "list", "arguments": ""}},
        ]}, "finish_reason": "tool_calls"}]
    });
    let reply = openai::parse_reply(body.to_string().as_bytes()).expect("parses");
    assert_eq!(reply.message.text(), "thinking aloud");
    let uses: Vec<(&str, &str, &Value)> = reply.message.tool_uses().collect();
    assert_eq!(
        uses,
        vec![
            (
                "call_0",
                "read_file",
                &loops_agent::model::invalid_arguments(
                    "{\"path\": \"a.md\"",
                    "EOF while parsing an object at line 1 column 15"
                )
            ),
            ("call_1", "list", &json!({})),
        ]
    );
    assert!(reply.usage.is_zero());
    assert_eq!(reply.model, None);

    assert!(openai::parse_reply(b"{\"choices\": []}").is_err());
    assert!(openai::parse_reply(b"not json").is_err());
    assert!(anthropic::parse_reply(b"{\"type\": \"message\"}")
        .unwrap_err()
        .contains("content"));
}

#[test]
fn error_messages_of_both_formats() {
    assert_eq!(
        anthropic::error_message(
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}"#
        ),
        "max_tokens: too big"
    );
    assert_eq!(
        openai::error_message(br#"{"error":{"message":"bad model","type":"x"}}"#),
        "bad model"
    );
    assert_eq!(
        openai::error_message(br#"{"error":"model 'x' not found"}"#),
        "model 'x' not found"
    );
    assert_eq!(
        openai::error_message(br#"{"detail":"Not Found"}"#),
        "Not Found"
    );
    assert_eq!(
        anthropic::error_message(b"<html>Bad Gateway</html>"),
        "<html>Bad Gateway</html>"
    );
    let long = "é".repeat(800);
    let m = openai::error_message(long.as_bytes());
    assert_eq!(m.chars().count(), 501, "500 characters and an ellipsis");
    assert!(m.ends_with('…'));
}

#[test]
fn endpoints() {
    assert_eq!(
        anthropic::endpoint("https://api.anthropic.com"),
        "https://api.anthropic.com/v1/messages"
    );
    assert_eq!(
        anthropic::endpoint("https://gateway.example/v1/"),
        "https://gateway.example/v1/messages"
    );
    assert_eq!(
        openai::endpoint("http://127.0.0.1:11434/v1"),
        "http://127.0.0.1:11434/v1/chat/completions"
    );
    assert_eq!(
        openai::endpoint("https://api.openai.com/v1/"),
        "https://api.openai.com/v1/chat/completions"
    );
}

// ---------------------------------------------------------------------------------------
// Retries and failures

#[tokio::test]
async fn rate_limited_with_retry_after_then_success() {
    for kind in KINDS {
        let fake = FakeModel::start(vec![fake_model::rate_limited(1), text_reply(kind, "ok")]);
        let started = std::time::Instant::now();
        let c = complete(kind, &fake, |_| {}, far()).await.expect("reply");
        assert_eq!(c.reply.message.text(), "ok");
        assert_eq!(c.attempts, 2, "{kind:?}");
        assert_eq!(c.retried.len(), 1, "{:?}", c.retried);
        assert!(c.retried[0].contains("429"), "{:?}", c.retried);
        assert!(c.retried[0].contains("retry after 1s"), "{:?}", c.retried);
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "retry-after was honoured"
        );
        assert_eq!(fake.request_count(), 2);
    }
}

#[tokio::test]
async fn retry_after_ms_and_http_dates_are_honoured() {
    let kind = ProviderKind::Anthropic;
    let date = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let fake = FakeModel::start(vec![
        error_reply(kind, 529, "Overloaded").with_header("retry-after-ms", "300"),
        error_reply(kind, 503, "busy").with_header("retry-after", &date),
        text_reply(kind, "ok"),
    ]);
    let c = complete(kind, &fake, |_| {}, far()).await.expect("reply");
    assert_eq!(c.attempts, 3);
    assert_eq!(c.retried[0], "529 Overloaded; retry after 300ms");
    assert!(c.retried[1].starts_with("503 Service Unavailable; retry after"));
}

#[tokio::test]
async fn server_error_then_success() {
    for kind in KINDS {
        let fake = FakeModel::start(vec![fake_model::server_error(), text_reply(kind, "ok")]);
        let c = complete(kind, &fake, |_| {}, far()).await.expect("reply");
        assert_eq!(c.reply.message.text(), "ok");
        assert_eq!(c.attempts, 2);
        assert_eq!(c.retried.len(), 1);
        assert!(
            c.retried[0].starts_with("500 Internal Server Error; retry after"),
            "{:?}",
            c.retried
        );
        assert!(
            !c.retried[0].contains("fake model"),
            "no body text in retry lines"
        );
    }
}

#[tokio::test]
async fn malformed_reply_is_not_retried() {
    for kind in KINDS {
        let fake = FakeModel::start(vec![fake_model::malformed(), text_reply(kind, "unused")]);
        let err = complete(kind, &fake, |_| {}, far()).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::Malformed { .. }),
            "{kind:?}: {err:?}"
        );
        assert_eq!(fake.request_count(), 1);
    }
}

#[tokio::test]
async fn client_error_is_rejected_with_the_providers_message() {
    for kind in KINDS {
        let fake = FakeModel::start(vec![error_reply(
            kind,
            400,
            "max_tokens: 99999999 > 64000, the maximum for this model",
        )]);
        let err = complete(kind, &fake, |_| {}, far()).await.unwrap_err();
        match &err {
            ProviderError::Rejected {
                status, message, ..
            } => {
                assert_eq!(*status, 400);
                assert_eq!(
                    message,
                    "max_tokens: 99999999 > 64000, the maximum for this model"
                );
            }
            other => panic!("{kind:?}: expected Rejected, got {other:?}"),
        }
        assert!(err.to_string().contains("the maximum for this model"));
        assert_eq!(fake.request_count(), 1, "not retried");
    }
}

#[tokio::test]
async fn slow_response_times_out_and_is_retried() {
    for kind in KINDS {
        let fake = FakeModel::start(vec![
            fake_model::slow(text_reply(kind, "too late"), Duration::from_secs(3)),
            text_reply(kind, "in time"),
        ]);
        let c = complete(
            kind,
            &fake,
            |c| c.request_timeout = Some(Duration::from_millis(500)),
            far(),
        )
        .await
        .expect("reply");
        assert_eq!(c.reply.message.text(), "in time");
        assert_eq!(c.attempts, 2);
        assert_eq!(c.retried.len(), 1);
        assert!(
            c.retried[0].contains("no response within 500ms"),
            "{:?}",
            c.retried
        );
        assert!(c.server_time >= Duration::from_millis(500));
    }
}

#[tokio::test]
async fn persistent_server_errors_end_at_the_deadline() {
    for kind in KINDS {
        // An empty script answers 500 "script exhausted" to every request.
        let fake = FakeModel::start(Vec::new());
        let started = std::time::Instant::now();
        let deadline = Instant::now() + Duration::from_secs(2);
        // Retries not capped here: what is tested is the deadline.
        let err = complete(kind, &fake, |c| c.max_retries = 100, deadline)
            .await
            .unwrap_err();
        match &err {
            ProviderError::Deadline { last, .. } => {
                assert!(last.contains("500"), "{last}");
                assert!(
                    last.contains("script exhausted"),
                    "the provider's message: {last}"
                );
            }
            other => panic!("{kind:?}: expected Deadline, got {other:?}"),
        }
        // Requests are bounded by the deadline too, so only scheduling could add to it.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "gives up instead of sleeping past the deadline: {:?}",
            started.elapsed()
        );
        assert!(fake.request_count() >= 2, "retried before giving up");
    }
}

#[tokio::test]
async fn a_deadline_shorter_than_the_request_timeout_bounds_the_request() {
    let kind = ProviderKind::OpenAi;
    let fake = FakeModel::start(vec![fake_model::slow(
        text_reply(kind, "too late"),
        Duration::from_secs(5),
    )]);
    let started = std::time::Instant::now();
    let deadline = Instant::now() + Duration::from_millis(600);
    let err = complete(kind, &fake, |_| {}, deadline).await.unwrap_err();
    assert!(matches!(err, ProviderError::Deadline { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn unreachable_server_is_transient() {
    // A port that was just free: connecting is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut cfg = config(ProviderKind::OpenAi, &FakeModel::start(Vec::new()), None);
    cfg.base_url = format!("http://127.0.0.1:{port}/v1");
    cfg.max_retries = 100;
    let p = HttpProvider::new(&cfg).expect("provider");
    let deadline = Instant::now() + Duration::from_millis(1200);
    let err = p.complete(&Convo::new().req(), deadline).await.unwrap_err();
    match err {
        ProviderError::Deadline { last, .. } => {
            assert!(last.contains("cannot connect"), "{last}")
        }
        other => panic!("expected Deadline, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_key_fails_before_any_request() {
    for kind in KINDS {
        let fake = FakeModel::start(vec![text_reply(kind, "unused")]);
        let env = format!(
            "LOOPS_TEST_KEY_NEVER_SET_{}",
            kind.as_str().to_ascii_uppercase()
        );
        std::env::remove_var(&env);
        // A server on another machine (a local one needs no key: tests/it/wire.rs); the
        // address is never reached, the key is looked for first.
        let mut cfg = config(kind, &fake, Some(&env));
        cfg.base_url = "http://192.0.2.1:9/v1".into();
        let p = HttpProvider::new(&cfg).expect("provider");
        let err = p.complete(&Convo::new().req(), far()).await.unwrap_err();
        match &err {
            ProviderError::MissingKey { env: e, .. } => assert_eq!(e, &env),
            other => panic!("expected MissingKey, got {other:?}"),
        }
        assert!(err.to_string().contains(&format!("${env}")), "{err}");
        assert_eq!(fake.request_count(), 0, "no request without a key");
    }
}

#[tokio::test]
async fn the_key_never_appears_in_errors() {
    const KEY: &str = "sk-test-SECRET-7f3a9c";
    for kind in KINDS {
        let fake = FakeModel::start(vec![
            // Providers do echo keys back in "invalid key" messages.
            error_reply(kind, 401, &format!("Incorrect API key provided: {KEY}")),
            fake_model::malformed(),
        ]);
        let env = set_key("secret", kind, KEY);
        let p = HttpProvider::new(&config(kind, &fake, Some(&env))).expect("provider");
        let mut errors = Vec::new();
        errors.push(p.complete(&Convo::new().req(), far()).await.unwrap_err());
        errors.push(p.complete(&Convo::new().req(), far()).await.unwrap_err());
        let soon = Instant::now() + Duration::from_millis(800);
        errors.push(p.complete(&Convo::new().req(), soon).await.unwrap_err());
        assert!(matches!(errors[0], ProviderError::Rejected { .. }));
        assert!(matches!(errors[1], ProviderError::Malformed { .. }));
        assert!(matches!(errors[2], ProviderError::Deadline { .. }));
        for e in &errors {
            for text in [e.to_string(), format!("{e:?}")] {
                assert!(!text.contains(KEY), "the key leaked: {text}");
                assert!(!text.contains("SECRET"), "part of the key leaked: {text}");
            }
        }
        assert!(!format!("{p:?}").contains(KEY));
        // The key did go out, in the header.
        assert!(fake.requests()[0]
            .headers
            .iter()
            .any(|(_, v)| v.contains(KEY)));
    }
}

#[test]
fn command_providers_have_no_http_client() {
    let fake = FakeModel::start(Vec::new());
    let mut cfg = config(ProviderKind::Command, &fake, None);
    cfg.command = Some(vec!["claude".into(), "-p".into()]);
    assert!(matches!(
        HttpProvider::new(&cfg),
        Err(ProviderError::Client(_))
    ));
    assert!(provider::request_body(ProviderKind::Command, &Convo::new().req()).is_empty());
}

// ---------------------------------------------------------------------------------------
// The bytes of the request body

fn pos(body: &str, needle: &str) -> usize {
    body.find(needle)
        .unwrap_or_else(|| panic!("{needle} in {body}"))
}

#[test]
fn request_bodies_are_byte_stable_and_grow_as_a_prefix() {
    for kind in KINDS {
        let mut convo = Convo::new();
        let a = provider::request_body(kind, &convo.req());
        let b = provider::request_body(kind, &Convo::new().req());
        assert_eq!(a, b, "{kind:?}: same input, same bytes");
        let direct = match kind {
            ProviderKind::Anthropic => anthropic::request_body(&convo.req()),
            _ => openai::request_body(&convo.req()),
        };
        assert_eq!(a, direct);

        convo
            .messages
            .push(Message::assistant_text("Working on it."));
        convo.messages.push(Message::user_text("Go on."));
        let c = provider::request_body(kind, &convo.req());
        assert_prefix(&a, &c);
    }
}

#[test]
fn anthropic_body_layout_and_cache_breakpoints() {
    let convo = Convo::new();
    let bytes = anthropic::request_body(&convo.req());
    let body = String::from_utf8(bytes.clone()).expect("utf-8");
    assert!(body.starts_with("{\"model\":\"test-model\""), "{body}");
    let order = [
        pos(&body, "\"model\":"),
        pos(&body, "\"max_tokens\":"),
        pos(&body, "\"tools\":"),
        pos(&body, "\"system\":"),
        pos(&body, "\"messages\":"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "model, max_tokens, tools, system, messages: {body}"
    );

    let v: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        v["system"],
        json!([
            {"type": "text", "text": "You are a loop.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Today is Monday."},
        ])
    );
    assert_eq!(v["tools"][0].get("cache_control"), None);
    assert_eq!(v["tools"][1]["cache_control"], json!({"type": "ephemeral"}));
    assert_eq!(v["tools"][1]["name"], "write_file");
    assert_eq!(v["tools"][1]["input_schema"]["type"], "object");
    assert_eq!(body.matches("cache_control").count(), 2);

    // The API rejects blank text blocks, which a reply of only tool uses can carry.
    let mut blank = Convo::new();
    blank.messages.push(Message {
        role: Role::Assistant,
        content: vec![
            Block::Text { text: "".into() },
            Block::ToolUse {
                id: "id_a".into(),
                name: "read_file".into(),
                input: json!({"path": "a.md"}),
            },
        ],
    });
    let v: Value = serde_json::from_slice(&anthropic::request_body(&blank.req())).expect("json");
    assert_eq!(
        v["messages"][1]["content"],
        json!([{"type": "tool_use", "id": "id_a", "name": "read_file", "input": {"path": "a.md"}}])
    );

    // Nothing cached: no breakpoints; no tools: no `tools` key.
    let mut plain = Convo::new();
    plain.system[0].cache = false;
    plain.tools.clear();
    let body = String::from_utf8(anthropic::request_body(&plain.req())).expect("utf-8");
    assert!(!body.contains("cache_control"), "{body}");
    assert!(!body.contains("\"tools\""), "{body}");
}

#[test]
fn openai_body_layout() {
    let convo = Convo::new();
    let bytes = openai::request_body(&convo.req());
    let body = String::from_utf8(bytes.clone()).expect("utf-8");
    assert!(body.starts_with("{\"model\":\"test-model\""), "{body}");
    let order = [
        pos(&body, "\"model\":"),
        pos(&body, "\"max_tokens\":"),
        pos(&body, "\"tools\":"),
        pos(&body, "\"messages\":"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{body}");
    assert!(!body.contains("cache_control"));

    let v: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        v["tools"][0],
        json!({"type": "function", "function": {
            "name": "read_file",
            "description": "Reads a file.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        }})
    );
    assert_eq!(v["messages"][0]["role"], "system");

    // Several text blocks in one user message become one text.
    let mut two = Convo::new();
    two.tools.clear();
    two.messages = vec![Message {
        role: Role::User,
        content: vec![
            Block::Text {
                text: "first".into(),
            },
            Block::Text {
                text: "second".into(),
            },
        ],
    }];
    let v: Value = serde_json::from_slice(&openai::request_body(&two.req())).expect("json");
    assert_eq!(
        v["messages"][1],
        json!({"role": "user", "content": "first\nsecond"})
    );
    assert_eq!(v.get("tools"), None);
}
