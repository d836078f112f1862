//! A fake model server: real HTTP on 127.0.0.1 that replays a script of replies and
//! records every request, for the provider tests and for `loops` run as a child process.
//!
//! Each request takes the next reply of the script; past its end the server answers
//! 500 "fake model: script exhausted", which a test sees as a failure it did not plan.
//! Replies are written from their own thread, so a slow one does not hold up the next
//! request (a client that timed out retries while the slow reply is still sleeping).

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub enum Reply {
    Json {
        status: u16,
        body: Value,
        headers: Vec<(String, String)>,
        delay: Duration,
    },
    Raw {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
        delay: Duration,
    },
    /// A `text/event-stream` reply written piece by piece, flushed after each, with the
    /// pauses between them: a stream that stalls and resumes, or stops for good.
    Sse { steps: Vec<Step>, delay: Duration },
}

/// One step of a streamed reply.
#[derive(Debug, Clone)]
pub enum Step {
    /// One event, as its bytes (`event: …\ndata: …\n\n`).
    Event(String),
    /// Nothing is sent for this long.
    Pause(Duration),
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply::Json {
            status,
            body,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn raw(status: u16, body: &str) -> Reply {
        Reply::Raw {
            status,
            body: body.to_string(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        match &mut self {
            Reply::Json { headers, .. } | Reply::Raw { headers, .. } => {
                headers.push((name.to_string(), value.to_string()))
            }
            Reply::Sse { .. } => {}
        }
        self
    }

    /// A stream of these events (`data:` JSON, with an `event:` name when given).
    pub fn sse(events: Vec<(Option<&str>, String)>) -> Reply {
        let steps = events
            .into_iter()
            .map(|(name, data)| {
                Step::Event(match name {
                    Some(n) => format!("event: {n}\ndata: {data}\n\n"),
                    None => format!("data: {data}\n\n"),
                })
            })
            .collect();
        Reply::Sse {
            steps,
            delay: Duration::ZERO,
        }
    }

    /// A streamed reply with `pause` after its first `after` events: it stalls there and
    /// (unless the client gave up) resumes.
    pub fn stall_after(mut self, after: usize, pause: Duration) -> Reply {
        if let Reply::Sse { steps, .. } = &mut self {
            let at = after.min(steps.len());
            steps.insert(at, Step::Pause(pause));
        }
        self
    }

    /// A streamed reply with `gap` between every two events: a slow model that keeps
    /// producing.
    pub fn paced(mut self, gap: Duration) -> Reply {
        if let Reply::Sse { steps, .. } = &mut self {
            let mut paced = Vec::new();
            for s in steps.drain(..) {
                if !paced.is_empty() {
                    paced.push(Step::Pause(gap));
                }
                paced.push(s);
            }
            *steps = paced;
        }
        self
    }

    /// A streamed reply cut off after its first `keep` events (the connection closes).
    pub fn truncated(mut self, keep: usize) -> Reply {
        if let Reply::Sse { steps, .. } = &mut self {
            let mut events = 0;
            steps.retain(|s| match s {
                Step::Event(_) => {
                    events += 1;
                    events <= keep
                }
                Step::Pause(_) => events < keep,
            });
        }
        self
    }
}

/// One request as the server received it. Header names are lowercase.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct FakeModel {
    url: String,
    server: Arc<tiny_http::Server>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeModel {
    pub fn start(script: Vec<Reply>) -> FakeModel {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind fake model"));
        let addr = server
            .server_addr()
            .to_ip()
            .expect("fake model listens on an IP address");
        let fake = FakeModel {
            url: format!("http://{addr}"),
            server: server.clone(),
            script: Arc::new(Mutex::new(script.into())),
            recorded: Arc::new(Mutex::new(Vec::new())),
        };
        let (script, recorded) = (fake.script.clone(), fake.recorded.clone());
        thread::spawn(move || serve(&server, &script, &recorded));
        fake
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("recorded lock").clone()
    }

    pub fn request_count(&self) -> usize {
        self.recorded.lock().expect("recorded lock").len()
    }

    /// Extends the script.
    pub fn push(&self, more: Vec<Reply>) {
        self.script.lock().expect("script lock").extend(more);
    }

    /// Replies not yet taken.
    pub fn remaining(&self) -> usize {
        self.script.lock().expect("script lock").len()
    }

    /// Waits until `n` requests have arrived (for a child process talking to the fake).
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let end = Instant::now() + timeout;
        loop {
            let got = self.requests();
            if got.len() >= n || Instant::now() >= end {
                return got;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        // Ends the accept loop; reply threads still sleeping finish on their own.
        self.server.unblock();
    }
}

fn serve(
    server: &tiny_http::Server,
    script: &Mutex<VecDeque<Reply>>,
    recorded: &Mutex<Vec<Recorded>>,
) {
    // `incoming_requests` ends when the server is unblocked (the FakeModel dropped).
    for mut req in server.incoming_requests() {
        let mut body = Vec::new();
        // A client that hung up mid-body still gets recorded (with what arrived).
        let _ = std::io::Read::read_to_end(req.as_reader(), &mut body);
        // Recorded and given its reply here, in arrival order; only the write is
        // handed to another thread.
        if let Ok(mut r) = recorded.lock() {
            r.push(Recorded {
                method: req.method().as_str().to_string(),
                path: req.url().to_string(),
                headers: req
                    .headers()
                    .iter()
                    .map(|h| {
                        (
                            h.field.as_str().as_str().to_ascii_lowercase(),
                            h.value.as_str().to_string(),
                        )
                    })
                    .collect(),
                body,
            });
        }
        let reply = script
            .lock()
            .ok()
            .and_then(|mut s| s.pop_front())
            .unwrap_or_else(|| {
                Reply::json(
                    500,
                    json!({"error": {"type": "api_error", "message": "fake model: script exhausted"}}),
                )
            });
        thread::spawn(move || match reply {
            Reply::Sse { steps, delay } => stream(req, &steps, delay),
            other => respond(req, other),
        });
    }
}

/// Writes a streamed reply by hand: tiny_http buffers a chunked body until it has 8 KiB,
/// which would hide every pause. Chunked encoding, flushed after each event; errors mean
/// the client has gone (it gave up on a stall), which is its business.
fn stream(req: tiny_http::Request, steps: &[Step], delay: Duration) {
    use std::io::Write;
    if !delay.is_zero() {
        thread::sleep(delay);
    }
    let mut w = req.into_writer();
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if w.write_all(head.as_bytes())
        .and_then(|_| w.flush())
        .is_err()
    {
        return;
    }
    for step in steps {
        match step {
            Step::Pause(d) => thread::sleep(*d),
            Step::Event(text) => {
                let chunk = format!("{:x}\r\n{text}\r\n", text.len());
                if w.write_all(chunk.as_bytes())
                    .and_then(|_| w.flush())
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = w.write_all(b"0\r\n\r\n").and_then(|_| w.flush());
}

fn respond(req: tiny_http::Request, reply: Reply) {
    let (status, body, headers, delay, content_type) = match reply {
        Reply::Json {
            status,
            body,
            headers,
            delay,
        } => (status, body.to_string(), headers, delay, "application/json"),
        Reply::Raw {
            status,
            body,
            headers,
            delay,
        } => (status, body, headers, delay, "application/json"),
        Reply::Sse { steps, delay } => return stream(req, &steps, delay),
    };
    if !delay.is_zero() {
        thread::sleep(delay);
    }
    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
    let mut has_type = false;
    for (k, v) in &headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    if !has_type {
        if let Ok(h) = tiny_http::Header::from_bytes("content-type", content_type) {
            resp.add_header(h);
        }
    }
    // The client may be gone (it timed out); that is its business, not a test failure.
    let _ = req.respond(resp);
}

/// A slower version of `reply`.
pub fn slow(mut reply: Reply, by: Duration) -> Reply {
    match &mut reply {
        Reply::Json { delay, .. } | Reply::Raw { delay, .. } | Reply::Sse { delay, .. } => {
            *delay = by
        }
    }
    reply
}

/// 429 with `retry-after`; the body reads as an error in both wire formats.
pub fn rate_limited(retry_after_secs: u64) -> Reply {
    Reply::json(
        429,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "fake model: rate limited"}}),
    )
    .with_header("retry-after", &retry_after_secs.to_string())
}

pub fn server_error() -> Reply {
    Reply::json(
        500,
        json!({"type": "error", "error": {"type": "api_error", "message": "fake model: internal error"}}),
    )
}

/// A 200 whose body is not JSON.
pub fn malformed() -> Reply {
    Reply::raw(200, "{\"this is\": not json")
}

pub mod anthropic {
    use super::Reply;
    use serde_json::{json, Value};

    fn message(content: Vec<Value>, stop: &str, usage: (u64, u64, u64, u64)) -> Reply {
        let (input, output, cache_read, cache_write) = usage;
        Reply::json(
            200,
            json!({
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": "fake-claude",
                "content": content,
                "stop_reason": stop,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": input,
                    "output_tokens": output,
                    "cache_read_input_tokens": cache_read,
                    "cache_creation_input_tokens": cache_write,
                }
            }),
        )
    }

    /// usage: (input, output, cache_read, cache_write)
    pub fn text(t: &str, usage: (u64, u64, u64, u64)) -> Reply {
        message(vec![json!({"type": "text", "text": t})], "end_turn", usage)
    }

    /// calls: (id, name, input)
    pub fn tool_use(calls: &[(&str, &str, Value)], usage: (u64, u64, u64, u64)) -> Reply {
        let content = calls
            .iter()
            .map(|(id, name, input)| json!({"type": "tool_use", "id": id, "name": name, "input": input}))
            .collect();
        message(content, "tool_use", usage)
    }

    /// A streamed message as the Messages API streams one: `message_start` (input and
    /// cache usage), a text block with one delta per piece, `message_delta` (the stop
    /// reason and output tokens), `message_stop`. usage: (input, output, cache_read,
    /// cache_write)
    pub fn stream_text(pieces: &[&str], stop: &str, usage: (u64, u64, u64, u64)) -> Reply {
        let mut events = vec![start(usage)];
        events.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        events.push(ev("ping", json!({"type": "ping"})));
        for p in pieces {
            events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
        }
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.extend(end(stop, usage.1));
        Reply::sse(events)
    }

    /// A streamed tool use, its input JSON sent in `pieces` (`input_json_delta`).
    pub fn stream_tool_use(
        id: &str,
        name: &str,
        pieces: &[&str],
        stop: &str,
        usage: (u64, u64, u64, u64),
    ) -> Reply {
        let mut events = vec![start(usage)];
        events.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})));
        for p in pieces {
            events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": p}})));
        }
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.extend(end(stop, usage.1));
        Reply::sse(events)
    }

    /// A reply with extended thinking before its tool use, as the Messages API answers
    /// with `thinking` enabled: a `thinking` block with its signature, then the call.
    pub fn thinking_tool_use(
        thinking: &str,
        signature: &str,
        call: (&str, &str, Value),
        usage: (u64, u64, u64, u64),
    ) -> Reply {
        let (id, name, input) = call;
        message(
            vec![
                json!({"type": "thinking", "thinking": thinking, "signature": signature}),
                json!({"type": "tool_use", "id": id, "name": name, "input": input}),
            ],
            "tool_use",
            usage,
        )
    }

    /// The same streamed: `thinking_delta`s, then one `signature_delta`, then the tool
    /// use's `input_json_delta`.
    pub fn stream_thinking_tool_use(
        thinking: &[&str],
        signature: &str,
        call: (&str, &str, &str),
        usage: (u64, u64, u64, u64),
    ) -> Reply {
        let (id, name, input) = call;
        let mut events = vec![start(usage)];
        events.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}})));
        for p in thinking {
            events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": p}})));
        }
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": signature}})));
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(ev("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})));
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": input}})));
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
        events.extend(end("tool_use", usage.1));
        Reply::sse(events)
    }

    /// An `error` event in the middle of a stream, as the API sends when overloaded.
    pub fn stream_error_event(kind: &str, msg: &str) -> (Option<&'static str>, String) {
        ev(
            "error",
            json!({"type": "error", "error": {"type": kind, "message": msg}}),
        )
    }

    fn ev(name: &'static str, data: Value) -> (Option<&'static str>, String) {
        (Some(name), data.to_string())
    }

    fn start(usage: (u64, u64, u64, u64)) -> (Option<&'static str>, String) {
        let (input, _, cache_read, cache_write) = usage;
        ev(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": "fake-claude",
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "cache_read_input_tokens": cache_read,
                          "cache_creation_input_tokens": cache_write, "output_tokens": 1}
            }}),
        )
    }

    fn end(stop: &str, output: u64) -> Vec<(Option<&'static str>, String)> {
        vec![
            ev(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output}}),
            ),
            ev("message_stop", json!({"type": "message_stop"})),
        ]
    }

    pub fn error(status: u16, msg: &str) -> Reply {
        let kind = match status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        Reply::json(
            status,
            json!({"type": "error", "error": {"type": kind, "message": msg}}),
        )
    }
}

pub mod openai {
    use super::Reply;
    use serde_json::{json, Value};

    fn completion(message: Value, finish: &str, usage: (u64, u64, u64)) -> Reply {
        let (prompt, completion, cached) = usage;
        Reply::json(
            200,
            json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1_700_000_000u64,
                "model": "fake-gpt",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "prompt_tokens_details": {"cached_tokens": cached},
                }
            }),
        )
    }

    /// usage: (prompt, completion, cached)
    pub fn text(t: &str, usage: (u64, u64, u64)) -> Reply {
        completion(json!({"role": "assistant", "content": t}), "stop", usage)
    }

    /// calls: (id, name, arguments); the arguments go out as a JSON string, as OpenAI's do.
    pub fn tool_calls(calls: &[(&str, &str, Value)], usage: (u64, u64, u64)) -> Reply {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}})
            })
            .collect();
        completion(
            json!({"role": "assistant", "content": null, "tool_calls": calls}),
            "tool_calls",
            usage,
        )
    }

    pub fn error(status: u16, msg: &str) -> Reply {
        Reply::json(
            status,
            json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "code": null}}),
        )
    }

    /// A chunk as llama-server (and OpenAI) streams one.
    fn chunk(delta: Value, finish: Option<&str>) -> String {
        json!({
            "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
            "created": 1_796_160_282u64, "id": "chatcmpl-fake", "model": "fake-gpt",
            "system_fingerprint": "b0-unknown", "object": "chat.completion.chunk"
        })
        .to_string()
    }

    /// The last chunks: the finish reason with the usage (and llama-server's timings),
    /// then `[DONE]`. usage: (prompt, completion, cached)
    fn tail(finish: &str, usage: (u64, u64, u64)) -> Vec<(Option<&'static str>, String)> {
        let (prompt, completion, cached) = usage;
        let mut last: Value =
            serde_json::from_str(&chunk(json!({}), Some(finish))).unwrap_or_default();
        last["usage"] = json!({
            "completion_tokens": completion, "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        });
        last["timings"] = json!({"cache_n": cached, "prompt_n": prompt - cached.min(prompt), "predicted_n": completion});
        vec![(None, last.to_string()), (None, "[DONE]".to_string())]
    }

    /// A streamed text reply, one chunk per piece. usage: (prompt, completion, cached)
    pub fn stream_text(pieces: &[&str], finish: &str, usage: (u64, u64, u64)) -> Reply {
        let mut events = vec![(
            None,
            chunk(json!({"role": "assistant", "content": null}), None),
        )];
        for p in pieces {
            events.push((None, chunk(json!({"content": p}), None)));
        }
        events.extend(tail(finish, usage));
        Reply::sse(events)
    }

    /// A streamed tool call, its arguments in `pieces`.
    pub fn stream_tool_call(
        id: &str,
        name: &str,
        pieces: &[&str],
        finish: &str,
        usage: (u64, u64, u64),
    ) -> Reply {
        let mut events = vec![(
            None,
            chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}
                ]}),
                None,
            ),
        )];
        for p in pieces {
            events.push((
                None,
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}),
                    None,
                ),
            ));
        }
        events.extend(tail(finish, usage));
        Reply::sse(events)
    }
}

/// Upstream llama.cpp `llama-server`, exactly as recorded
/// (`fixtures/llama-server/`, from /work/shared/fixtures): its replies cut at
/// `max_tokens`, its 500 for a tool call it cannot parse, its 400 for a prompt longer
/// than its context.
pub mod llama {
    use super::Reply;
    use serde_json::{json, Value};

    const RECORDED: &str = include_str!("../fixtures/llama-server/chat-completions-length.json");

    /// The recorded exchanges: (request, response).
    pub fn recorded() -> Vec<(Value, Value)> {
        let all: Vec<Value> = serde_json::from_str(RECORDED).expect("the fixture is JSON");
        all.into_iter()
            .map(|e| (e["request"].clone(), e["response"].clone()))
            .collect()
    }

    /// The first recorded reply: eight `write_file` calls salvaged from a reply cut at
    /// `max_tokens` (600), `finish_reason: "length"`.
    pub fn cut_tool_calls() -> Reply {
        Reply::json(200, recorded()[0].1.clone())
    }

    /// The second recorded reply: text only, cut at `max_tokens` (600).
    pub fn cut_text() -> Reply {
        Reply::json(200, recorded()[1].1.clone())
    }

    /// HTTP 500 for model output that is not a tool call it can parse.
    pub fn unparseable_tool_call() -> Reply {
        Reply::json(
            500,
            json!({"error": {"code": 500, "message": "The model produced output that does not match the expected peg-native format", "type": "server_error"}}),
        )
    }

    /// HTTP 400 for a prompt longer than `-c`.
    pub fn context_exceeded(asked: u64, n_ctx: u64) -> Reply {
        Reply::json(
            400,
            json!({"error": {"code": 400, "message": format!("request ({asked} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it"), "type": "exceed_context_size_error", "n_prompt_tokens": asked, "n_ctx": n_ctx}}),
        )
    }
}
