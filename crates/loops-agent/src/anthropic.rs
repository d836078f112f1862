//! The Anthropic Messages API wire format.
//!
//! The request body is built from `#[derive(Serialize)]` structs so its bytes are a pure
//! function of the request: the key order is fixed and stable-first (model, max_tokens,
//! tools, system, messages), so a request that only adds messages shares the previous
//! request's bytes as a prefix, which is what prompt caching keys on.

use super::model::{Block, Message, ModelReply, ModelRequest, Role, StreamFailure, Usage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub fn endpoint(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    // Both `https://api.anthropic.com` and `…/v1` are written in the wild.
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    /// Streamed unless `providers.X.stream: false`: a reply that keeps coming is never
    /// cut by a timeout, and the tokens of one that stalls are known (see `provider.rs`).
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<SystemBlock<'a>>,
    messages: Vec<WireMessage<'a>>,
}

#[derive(Serialize)]
struct CacheControl {
    #[serde(rename = "type")]
    kind: &'static str,
}

const EPHEMERAL: CacheControl = CacheControl { kind: "ephemeral" };

#[derive(Serialize)]
struct Tool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<CacheControl>,
}

#[derive(Serialize)]
struct SystemBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<CacheControl>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<WireBlock<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
        is_error: bool,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
}

fn wire_message(m: &Message) -> WireMessage<'_> {
    let role = match m.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    // The API rejects blank text blocks; a reply that was only tool uses can carry one.
    let keep = |b: &&Block| !matches!(b, Block::Text { text } if text.trim().is_empty());
    let kept = m.content.iter().filter(keep).count();
    let content = m
        .content
        .iter()
        .filter(|b| kept == 0 || keep(b))
        .map(|b| match b {
            Block::Text { text } => WireBlock::Text { text },
            Block::ToolUse { id, name, input } => WireBlock::ToolUse { id, name, input },
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => WireBlock::ToolResult {
                tool_use_id,
                content,
                is_error: *is_error,
            },
            Block::Thinking {
                thinking,
                signature,
            } => WireBlock::Thinking {
                thinking,
                signature,
            },
            Block::RedactedThinking { data } => WireBlock::RedactedThinking { data },
        })
        .collect();
    WireMessage { role, content }
}

/// The exact bytes sent.
pub fn request_body(req: &ModelRequest<'_>) -> Vec<u8> {
    request_body_streamed(req, true)
}

/// The bytes sent, asking for a streamed reply or (`stream: false`) a whole one.
pub fn request_body_streamed(req: &ModelRequest<'_>, stream: bool) -> Vec<u8> {
    let cached = req.system.iter().any(|p| p.cache);
    let last_tool = req.tools.len().checked_sub(1);
    let body = Body {
        model: req.model,
        max_tokens: req.max_tokens,
        stream,
        tools: req
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| Tool {
                name: &t.name,
                description: &t.description,
                input_schema: &t.input_schema,
                // Tools come before the system prompt in the cached prefix, so they get
                // their own breakpoint: a system prompt change then leaves them cached.
                cache_control: (cached && Some(i) == last_tool).then_some(EPHEMERAL),
            })
            .collect(),
        system: req
            .system
            .iter()
            .map(|p| SystemBlock {
                kind: "text",
                text: &p.text,
                cache_control: p.cache.then_some(EPHEMERAL),
            })
            .collect(),
        messages: req.messages.iter().map(wire_message).collect(),
    };
    super::request_options::body_bytes(super::request_options::Wire::Anthropic, &body, req.options)
}

#[derive(Deserialize)]
struct ReplyBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    content: Option<Vec<Value>>,
    stop_reason: Option<String>,
    model: Option<String>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize, Default)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

/// A 200 body as the neutral reply. `Err` says what is malformed.
pub fn parse_reply(body: &[u8]) -> Result<ModelReply, String> {
    let reply: ReplyBody =
        serde_json::from_slice(body).map_err(|e| format!("the reply is not a message: {e}"))?;
    if reply.kind.as_deref() == Some("error") || reply.error.is_some() {
        return Err(format!("the reply is an error: {}", error_message(body)));
    }
    let blocks = reply
        .content
        .ok_or_else(|| "the reply has no `content`".to_string())?;
    let mut content = Vec::new();
    for (i, b) in blocks.into_iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = b
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("content[{i}] is a text block without `text`"))?;
                content.push(Block::Text { text: text.into() });
            }
            Some("tool_use") => {
                let field = |k: &str| {
                    b.get(k)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| format!("content[{i}] is a tool_use block without `{k}`"))
                };
                content.push(Block::ToolUse {
                    id: field("id")?,
                    name: field("name")?,
                    input: b
                        .get("input")
                        .cloned()
                        .unwrap_or(Value::Object(Default::default())),
                });
            }
            Some("thinking") => {
                let text = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                content.push(Block::Thinking {
                    thinking: text("thinking"),
                    signature: text("signature"),
                });
            }
            Some("redacted_thinking") => {
                let data = b.get("data").and_then(Value::as_str).unwrap_or("");
                content.push(Block::RedactedThinking { data: data.into() });
            }
            // Server-tool blocks are the provider's business, not the loop's.
            Some(_) => {}
            None => return Err(format!("content[{i}] has no `type`")),
        }
    }
    let u = reply.usage.unwrap_or_default();
    Ok(ModelReply {
        message: Message {
            role: Role::Assistant,
            content,
        },
        usage: Usage {
            input: u.input_tokens.unwrap_or(0),
            output: u.output_tokens.unwrap_or(0),
            cache_read: u.cache_read_input_tokens.unwrap_or(0),
            cache_write: u.cache_creation_input_tokens.unwrap_or(0),
        },
        stop_reason: reply.stop_reason,
        model: reply.model,
    })
}

/// The provider's message from an error body (`{"type":"error","error":{"message":…}}`).
pub fn error_message(body: &[u8]) -> String {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let found = v.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .and_then(Value::as_str)
    });
    match found {
        Some(m) if !m.trim().is_empty() => m.trim().to_string(),
        _ => super::model::body_excerpt(body),
    }
}

/// A streamed reply (`message_start`, content blocks with their deltas, `message_delta`,
/// `message_stop`), put back together as the body a reply without streaming would have
/// had.
#[derive(Debug, Default)]
pub struct Stream {
    model: Option<String>,
    /// By index: the block as it started, and the text or input JSON its deltas added.
    blocks: Vec<(Value, String)>,
    stop_reason: Option<String>,
    usage: WireUsage,
    /// Deltas seen: what the model is known to have produced before `message_delta`
    /// reports the output tokens.
    pieces: u64,
    stopped: bool,
}

impl Stream {
    /// Takes one event. `Err`: the server sent an `error` event (overloaded, say), or an
    /// event that is not JSON.
    pub fn event(&mut self, name: Option<&str>, data: &str) -> Result<(), StreamFailure> {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| StreamFailure::Malformed(format!("a streamed event is not JSON: {e}")))?;
        let kind = v.get("type").and_then(Value::as_str).or(name).unwrap_or("");
        match kind {
            "message_start" => {
                let m = v.get("message").cloned().unwrap_or(Value::Null);
                self.model = m.get("model").and_then(Value::as_str).map(str::to_string);
                self.add_usage(m.get("usage"));
            }
            "content_block_start" => {
                let i = index(&v);
                if i <= self.blocks.len() + 64 {
                    while self.blocks.len() <= i {
                        self.blocks.push((Value::Null, String::new()));
                    }
                    self.blocks[i].0 = v.get("content_block").cloned().unwrap_or(Value::Null);
                }
            }
            "content_block_delta" => self.delta(&v),
            "message_delta" => {
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(r.to_string());
                }
                self.add_usage(v.get("usage"));
            }
            "message_stop" => self.stopped = true,
            "error" => return Err(StreamFailure::Provider(error_message(data.as_bytes()))),
            // ping, content_block_stop, and whatever comes later.
            _ => {}
        }
        Ok(())
    }

    fn delta(&mut self, v: &Value) {
        let i = index(v);
        let Some(block) = self.blocks.get_mut(i) else {
            return;
        };
        let d = v.get("delta");
        if let Some(sig) = d.and_then(|d| d.get("signature")).and_then(Value::as_str) {
            // signature_delta: the whole signature of a thinking block, once, at its end.
            if let Some(o) = block.0.as_object_mut() {
                o.insert("signature".into(), Value::String(sig.to_string()));
            }
            return;
        }
        let piece = d
            .and_then(|d| {
                d.get("text")
                    .or_else(|| d.get("partial_json"))
                    .or_else(|| d.get("thinking"))
            })
            .and_then(Value::as_str);
        if let Some(p) = piece {
            block.1.push_str(p);
            self.pieces += 1;
        }
    }

    /// Usage fields overwrite: `message_delta` carries the running output count.
    fn add_usage(&mut self, u: Option<&Value>) {
        let Some(u) = u.and_then(|u| serde_json::from_value::<WireUsage>(u.clone()).ok()) else {
            return;
        };
        let u0 = &mut self.usage;
        u0.input_tokens = u.input_tokens.or(u0.input_tokens);
        u0.output_tokens = u.output_tokens.or(u0.output_tokens);
        u0.cache_read_input_tokens = u.cache_read_input_tokens.or(u0.cache_read_input_tokens);
        u0.cache_creation_input_tokens = u
            .cache_creation_input_tokens
            .or(u0.cache_creation_input_tokens);
    }

    /// Whether the reply came to its end.
    pub fn complete(&self) -> bool {
        self.stopped || self.stop_reason.is_some()
    }

    /// The tokens known so far: the output the server counted, or the deltas seen if
    /// more.
    pub fn usage(&self) -> Usage {
        let u = &self.usage;
        Usage {
            input: u.input_tokens.unwrap_or(0),
            // message_start says 1 before anything is generated; a stream that stalls
            // before message_delta has produced at least its deltas.
            output: u.output_tokens.unwrap_or(0).max(self.pieces),
            cache_read: u.cache_read_input_tokens.unwrap_or(0),
            cache_write: u.cache_creation_input_tokens.unwrap_or(0),
        }
    }

    /// The reply, read as a reply without streaming is.
    pub fn finish(self) -> Result<ModelReply, String> {
        let usage = self.usage();
        let content: Vec<Value> = self
            .blocks
            .into_iter()
            .filter(|(b, _)| !b.is_null())
            .map(|(mut b, added)| {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => b["text"] = Value::String(added),
                    Some("thinking") => b["thinking"] = Value::String(added),
                    Some("tool_use") if !added.trim().is_empty() => {
                        // Input cut short stays as written, never run (see run.rs).
                        b["input"] = serde_json::from_str::<Value>(&added)
                            .unwrap_or_else(|_| serde_json::json!({ "_raw": added }));
                    }
                    _ => {}
                }
                b
            })
            .collect();
        let body = serde_json::json!({
            "type": "message",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
        });
        let mut reply = parse_reply(body.to_string().as_bytes())?;
        reply.usage = usage;
        Ok(reply)
    }
}

fn index(v: &Value) -> usize {
    v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize
}
