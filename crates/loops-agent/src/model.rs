//! The conversation, in the runner's own terms. Providers translate it to and from their
//! wire formats; the agent loop, the tools and the transcript only ever see these types.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    /// The model asks for a tool to be run.
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// What the runner answers for a tool use (errors included: they go back to the
    /// model, they never end the run).
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
    /// The model's reasoning before it answered (Anthropic's extended thinking). Sent
    /// back as it came, signature and all: the API refuses a tool result that follows a
    /// thinking turn without it. Other wire formats leave it out.
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    /// Reasoning the provider keeps encrypted; sent back as it came, like `Thinking`.
    RedactedThinking {
        data: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

impl Message {
    pub fn user_text(text: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: vec![Block::Text { text: text.into() }],
        }
    }

    pub fn assistant_text(text: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: vec![Block::Text { text: text.into() }],
        }
    }

    /// All text blocks, joined.
    pub fn text(&self) -> String {
        let parts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|b| match b {
                Block::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        parts.join("\n")
    }

    pub fn tool_uses(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
        self.content.iter().filter_map(|b| match b {
            Block::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
            _ => None,
        })
    }
}

/// Where a tool call's arguments that are not a JSON object are kept, with why: the
/// provider's reply still parses (one bad generation does not fail the run), the tool is
/// not run, and its result tells the model what was wrong (crate::tools).
const INVALID_ARGUMENTS: &str = "_loops_invalid_arguments";

/// The input of a tool call whose arguments `raw` were not a JSON object (`error`: why).
pub fn invalid_arguments(raw: &str, error: &str) -> Value {
    serde_json::json!({ INVALID_ARGUMENTS: { "raw": raw, "error": error } })
}

/// The arguments as written and why they were refused, when `input` is
/// [`invalid_arguments`]' marker.
pub fn invalid_arguments_of(input: &Value) -> Option<(&str, &str)> {
    let m = input.get(INVALID_ARGUMENTS)?;
    Some((m.get("raw")?.as_str()?, m.get("error")?.as_str()?))
}

/// Replaces the marker of invalid arguments in `reply` with `{}`: the conversation the
/// model sees again holds its call with no arguments (the tool result says what was
/// wrong), never loops' own wrapper around them.
pub fn clear_invalid_arguments(reply: &mut Message) {
    for b in &mut reply.content {
        if let Block::ToolUse { input, .. } = b {
            if invalid_arguments_of(input).is_some() {
                *input = Value::Object(Default::default());
            }
        }
    }
}

/// A tool as offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the tool's input object.
    pub input_schema: Value,
}

/// One part of the system prompt. Parts are ordered stable-first; `cache` marks the
/// last part of the stable prefix (Anthropic's `cache_control` goes there).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemPart {
    pub text: String,
    pub cache: bool,
}

pub use loops_core::usage::Usage;

/// Everything one model call needs.
#[derive(Debug, Clone)]
pub struct ModelRequest<'a> {
    pub model: &'a str,
    pub max_tokens: u32,
    pub system: &'a [SystemPart],
    pub tools: &'a [ToolSpec],
    pub messages: &'a [Message],
    /// tool_choice, temperature, …: written into the body by crate::request_options.
    pub options: &'a loops_core::request_options::RequestOptions,
}

/// What one model call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReply {
    /// The assistant message (text and tool uses).
    pub message: Message,
    pub usage: Usage,
    /// The provider's stop reason, as it said it (`end_turn`, `tool_use`, `stop`, …).
    pub stop_reason: Option<String>,
    /// The model that answered, when the provider says.
    pub model: Option<String>,
}

/// Why a streamed reply stopped short of its end.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamFailure {
    /// The server sent an error event (overloaded, a failure mid-generation): its message.
    Provider(String),
    /// An event that cannot be read.
    Malformed(String),
}

/// Why the model stopped, in the runner's terms; both wire formats' words map here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// It ended its turn (`stop`, `end_turn`, `stop_sequence`).
    Done,
    /// It asked for tools (`tool_calls`, `tool_use`).
    ToolCalls,
    /// Cut at `max_tokens` (`length`, `max_tokens`): what it said is not all it meant to.
    Cut,
    /// The provider's filter stopped it (`content_filter`).
    ContentFilter,
    /// The model declined (`refusal`).
    Refusal,
    /// Something else, as the provider said it.
    Other(String),
    /// The provider said nothing.
    Unknown,
}

impl StopReason {
    pub fn of(said: Option<&str>) -> StopReason {
        match said {
            Some("stop" | "end_turn" | "stop_sequence" | "eos") => StopReason::Done,
            Some("tool_calls" | "tool_use" | "function_call") => StopReason::ToolCalls,
            Some("length" | "max_tokens" | "model_length") => StopReason::Cut,
            Some("content_filter") => StopReason::ContentFilter,
            Some("refusal") => StopReason::Refusal,
            Some(other) => StopReason::Other(other.to_string()),
            None => StopReason::Unknown,
        }
    }
}

/// How much of an error body a message quotes.
const EXCERPT_CHARS: usize = 500;

/// An error body as text, for providers whose error has no message field.
pub(crate) fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}
