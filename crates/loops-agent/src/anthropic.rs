//! The Anthropic Messages API wire format.
//!
//! The request body is built from `#[derive(Serialize)]` structs so its bytes are a pure
//! function of the request: the key order is fixed and stable-first (model, max_tokens,
//! tools, system, messages), so a request that only adds messages shares the previous
//! request's bytes as a prefix, which is what prompt caching keys on.

use super::model::{Block, Message, ModelReply, ModelRequest, Role, Usage};
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
        })
        .collect();
    WireMessage { role, content }
}

/// The exact bytes sent.
pub fn request_body(req: &ModelRequest<'_>) -> Vec<u8> {
    let cached = req.system.iter().any(|p| p.cache);
    let last_tool = req.tools.len().checked_sub(1);
    let body = Body {
        model: req.model,
        max_tokens: req.max_tokens,
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

#[derive(Deserialize, Default)]
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
            // Thinking and server-tool blocks are the provider's business, not the loop's.
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
