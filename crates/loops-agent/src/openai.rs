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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    messages: Vec<WireMessage<'a>>,
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

    let u = reply.usage.unwrap_or_default();
    let prompt = u.prompt_tokens.unwrap_or(0);
    let cached = u
        .prompt_tokens_details
        .and_then(|d| d.cached_tokens)
        .unwrap_or(0);
    Ok(ModelReply {
        message: Message {
            role: Role::Assistant,
            content,
        },
        usage: Usage {
            input: prompt.saturating_sub(cached),
            output: u.completion_tokens.unwrap_or(0),
            cache_read: cached,
            cache_write: 0,
        },
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
