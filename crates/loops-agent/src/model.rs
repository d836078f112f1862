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
