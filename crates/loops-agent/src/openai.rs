//! The OpenAI Chat Completions wire format, spoken by OpenAI and by most local servers
//! (Ollama, vLLM, llama.cpp, LM Studio) and gateways (OpenRouter).
//!
//! As with [`super::anthropic`], the body comes from `#[derive(Serialize)]` structs so its
//! bytes are stable-first (model, max_tokens, tools, messages with the system prompt
//! first): servers that cache prompt prefixes see the previous request as a prefix.

use super::model::{Block, Message, ModelReply, ModelRequest, Role, Usage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub fn endpoint(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    /// Streamed unless `providers.X.stream: false`: a reply that keeps coming is never
    /// cut by a timeout, and the tokens of one that stalls are known (see `provider.rs`).
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    messages: Vec<WireMessage<'a>>,
}

/// Without it a streamed reply carries no `usage`.
#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct Tool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    /// Always present: `null` only for an assistant turn that is nothing but tool calls.
    content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CallFunction<'a>,
}

#[derive(Serialize)]
struct CallFunction<'a> {
    name: &'a str,
    arguments: String,
}

fn plain(role: &'static str, content: String) -> WireMessage<'static> {
    WireMessage {
        role,
        content: Some(content),
        tool_calls: Vec::new(),
        tool_call_id: None,
    }
}

fn joined_text(m: &Message) -> Option<String> {
    let parts: Vec<&str> = m
        .content
        .iter()
        .filter_map(|b| match b {
            Block::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n"))
}

fn push_message<'a>(out: &mut Vec<WireMessage<'a>>, m: &'a Message) {
    match m.role {
        Role::Assistant => {
            let tool_calls: Vec<ToolCall<'a>> = m
                .tool_uses()
                .map(|(id, name, input)| ToolCall {
                    id,
                    kind: "function",
                    function: CallFunction {
                        name,
                        arguments: input.to_string(),
                    },
                })
                .collect();
            let text = joined_text(m).filter(|t| !t.is_empty());
            let content = match (text, tool_calls.is_empty()) {
                (Some(t), _) => Some(t),
                (None, false) => None,
                (None, true) => Some(String::new()),
            };
            out.push(WireMessage {
                role: "assistant",
                content,
                tool_calls,
                tool_call_id: None,
            });
        }
        Role::User => {
            // Tool messages must directly follow the assistant turn that asked for them,
            // so results go first and any text the user turn carries comes after.
            for b in &m.content {
                if let Block::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } = b
                {
                    let content = if *is_error {
                        format!("ERROR: {content}")
                    } else {
                        content.clone()
                    };
                    out.push(WireMessage {
                        role: "tool",
                        content: Some(content),
                        tool_calls: Vec::new(),
                        tool_call_id: Some(tool_use_id),
                    });
                }
            }
            if let Some(text) = joined_text(m) {
                out.push(plain("user", text));
            }
        }
    }
}

/// The exact bytes sent.
pub fn request_body(req: &ModelRequest<'_>) -> Vec<u8> {
    request_body_streamed(req, true)
}

/// The bytes sent, asking for a streamed reply or (`stream: false`) a whole one.
pub fn request_body_streamed(req: &ModelRequest<'_>, stream: bool) -> Vec<u8> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if !req.system.is_empty() {
        let parts: Vec<&str> = req.system.iter().map(|p| p.text.as_str()).collect();
        messages.push(plain("system", parts.join("\n\n")));
    }
    for m in req.messages {
        push_message(&mut messages, m);
    }
    let body = Body {
        model: req.model,
        max_tokens: req.max_tokens,
        stream,
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        tools: req
            .tools
            .iter()
            .map(|t| Tool {
                kind: "function",
                function: Function {
                    name: &t.name,
                    description: &t.description,
                    parameters: &t.input_schema,
                },
            })
            .collect(),
        messages,
    };
    super::request_options::body_bytes(super::request_options::Wire::OpenAi, &body, req.options)
}

#[derive(Deserialize)]
struct ReplyBody {
    choices: Option<Vec<Choice>>,
    model: Option<String>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<ReplyMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ReplyMessage {
    content: Option<Value>,
    tool_calls: Option<Vec<Value>>,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

/// Prompt tokens that were not cached are the input; cached ones are a cache read.
fn usage_of(u: WireUsage) -> Usage {
    let prompt = u.prompt_tokens.unwrap_or(0);
    let cached = u
        .prompt_tokens_details
        .and_then(|d| d.cached_tokens)
        .unwrap_or(0);
    Usage {
        input: prompt.saturating_sub(cached),
        output: u.completion_tokens.unwrap_or(0),
        cache_read: cached,
        cache_write: 0,
    }
}

/// Tool arguments arrive as a JSON string. Ones that are not a JSON object are marked
/// invalid with the parse error ([`super::model::invalid_arguments`]), so the tool
/// answers with an error the model can fix instead of the whole run failing on one bad
/// generation.
fn arguments(raw: Option<&Value>) -> Value {
    use super::model::invalid_arguments;
    let not_object = "a JSON value that is not an object of named arguments";
    match raw {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Default::default()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            Ok(Value::Null) => Value::Object(Default::default()),
            Ok(_) => invalid_arguments(s, not_object),
            Err(e) => invalid_arguments(s, &e.to_string()),
        },
        // Some servers send the arguments as an object already.
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => invalid_arguments(&other.to_string(), not_object),
    }
}

fn content_text(content: Option<Value>) -> Option<String> {
    match content? {
        Value::String(s) => Some(s),
        // A few servers answer with content parts, like the ones a request may send.
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    }
}

/// A 200 body as the neutral reply. `Err` says what is malformed.
pub fn parse_reply(body: &[u8]) -> Result<ModelReply, String> {
    let reply: ReplyBody = serde_json::from_slice(body)
        .map_err(|e| format!("the reply is not a chat completion: {e}"))?;
    if reply.error.as_ref().is_some_and(|e| !e.is_null()) {
        return Err(format!("the reply is an error: {}", error_message(body)));
    }
    let choice = reply
        .choices
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| "the reply has no `choices`".to_string())?;
    let msg = choice
        .message
        .ok_or_else(|| "choices[0] has no `message`".to_string())?;

    let mut content = Vec::new();
    if let Some(text) = content_text(msg.content).filter(|t| !t.is_empty()) {
        content.push(Block::Text { text });
    }
    let mut seen = std::collections::HashSet::new();
    for (i, call) in msg.tool_calls.unwrap_or_default().iter().enumerate() {
        let function = call
            .get("function")
            .ok_or_else(|| format!("tool_calls[{i}] has no `function`"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("tool_calls[{i}] has no function name"))?;
        // Some local servers leave ids out (or repeat them); results are matched by id.
        let id = match call.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() && !seen.contains(id) => id.to_string(),
            _ => format!("call_{i}"),
        };
        seen.insert(id.clone());
        content.push(Block::ToolUse {
            id,
            name: name.to_string(),
            input: arguments(function.get("arguments")),
        });
    }

    Ok(ModelReply {
        message: Message {
            role: Role::Assistant,
            content,
        },
        usage: usage_of(reply.usage.unwrap_or_default()),
        stop_reason: choice.finish_reason,
        model: reply.model,
    })
}

/// The provider's message from an error body. OpenAI writes `{"error":{"message":…}}`;
/// local servers also write `{"error":"…"}` (Ollama), `{"message":…}` or `{"detail":…}`.
pub fn error_message(body: &[u8]) -> String {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let found = v.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .and_then(Value::as_str)
    });
    match found {
        Some(m) if !m.trim().is_empty() => m.trim().to_string(),
        _ => super::model::body_excerpt(body),
    }
}

/// A streamed reply (`data: {chunk}` events, then `data: [DONE]`), put back together as
/// the body a reply without streaming would have had.
#[derive(Debug, Default)]
pub struct Stream {
    model: Option<String>,
    content: String,
    /// By `index`: id, name, the argument text so far.
    calls: Vec<(Option<String>, String, String)>,
    finish_reason: Option<String>,
    usage: Option<Value>,
    /// Pieces of text or arguments: what the model is known to have produced when the
    /// server reports no usage before the stream stops.
    pieces: u64,
    done: bool,
}

impl Stream {
    /// Takes one event's data. `Err`: the server sent an error in the stream (its
    /// message), or a chunk that is not JSON.
    pub fn event(&mut self, data: &str) -> Result<(), super::model::StreamFailure> {
        use super::model::StreamFailure;
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| StreamFailure::Malformed(format!("a streamed chunk is not JSON: {e}")))?;
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return Err(StreamFailure::Provider(error_message(data.as_bytes())));
        }
        if let Some(m) = v.get("model").and_then(Value::as_str) {
            self.model = Some(m.to_string());
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return Ok(());
        };
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(r.to_string());
        }
        if let Some(delta) = choice.get("delta") {
            self.delta(delta);
        }
        Ok(())
    }

    fn delta(&mut self, delta: &Value) {
        if let Some(t) = delta.get("content").and_then(Value::as_str) {
            if !t.is_empty() {
                self.content.push_str(t);
                self.pieces += 1;
            }
        }
        for (n, call) in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let i = call
                .get("index")
                .and_then(Value::as_u64)
                .map_or(n, |i| i as usize);
            // An index far past the calls so far is a server's bug, not a reason to
            // allocate without bound.
            if i > self.calls.len() + 64 {
                continue;
            }
            while self.calls.len() <= i {
                self.calls.push((None, String::new(), String::new()));
            }
            let slot = &mut self.calls[i];
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                slot.0 = Some(id.to_string());
            }
            if let Some(name) = call.pointer("/function/name").and_then(Value::as_str) {
                slot.1.push_str(name);
            }
            if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
                slot.2.push_str(args);
                self.pieces += 1;
            }
        }
    }

    /// Whether the reply came to its end (a finish reason or `[DONE]`).
    pub fn complete(&self) -> bool {
        self.done || self.finish_reason.is_some()
    }

    /// The tokens known so far: the server's usage once it sent it, else the pieces
    /// streamed as output (about one token each).
    pub fn usage(&self) -> Usage {
        match &self.usage {
            Some(u) => usage_of(serde_json::from_value(u.clone()).unwrap_or_default()),
            None => Usage {
                output: self.pieces,
                ..Usage::default()
            },
        }
    }

    /// The reply, read as a reply without streaming is.
    pub fn finish(self) -> Result<ModelReply, String> {
        let calls: Vec<Value> = self
            .calls
            .into_iter()
            .map(|(id, name, args)| {
                serde_json::json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect();
        let body = serde_json::json!({
            "model": self.model,
            "choices": [{
                "message": {"role": "assistant", "content": self.content, "tool_calls": calls},
                "finish_reason": self.finish_reason,
            }],
            "usage": self.usage,
        });
        let pieces = self.pieces;
        let mut reply = parse_reply(body.to_string().as_bytes())?;
        if reply.usage.is_zero() {
            reply.usage.output = pieces;
        }
        Ok(reply)
    }
}
