//! The agent loop: send the conversation, run the tools the model asks for, send their
//! results, and repeat until the model calls `finish`, answers without a tool call, the
//! turn limit, the deadline or a cancellation.

use super::model::{Block, Message, ModelRequest, Role, SystemPart, ToolSpec, Usage};
use super::provider::{Completion, HttpProvider, ProviderError};
use super::tools::{Finish, ToolKit};
use super::transcript::Transcript;
use loops_core::text::is_silent_token;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a conversation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The model called `finish`.
    Finished(Finish),
    /// The model answered with text and no tool call.
    Answered(String),
    /// The model answered exactly SILENT, NO_REPLY or HEARTBEAT_OK.
    SilentToken(String),
    /// `max_turns` model turns and still no end.
    MaxTurns(u32),
    Timeout,
    Cancelled,
    /// Stopped between turns because its hooks asked (a paused job).
    Paused,
    /// The provider refused or failed for good.
    Failed(String),
}

/// What the runner of a conversation wants before the next model turn.
#[derive(Debug, Default)]
pub struct BeforeTurn {
    /// Texts to add to the conversation now (steering messages).
    pub inject: Vec<String>,
    /// Stop here, between turns, with the conversation as it is.
    pub pause: bool,
}

/// Called around every model turn: a job reads its steering messages before each turn,
/// and saves its conversation and progress after each.
pub trait TurnHooks: Send {
    /// `turn` is the number of the turn about to be made (1-based, this drive).
    fn before_turn(&mut self, turn: u32) -> BeforeTurn;
    /// After a turn's reply and tool results are in `messages`.
    fn after_turn(
        &mut self,
        turn: u32,
        messages: &[Message],
        usage: &Usage,
        last_tool: Option<&str>,
    );
}

/// One conversation to drive.
pub struct Drive<'a> {
    pub provider: &'a HttpProvider,
    pub model: &'a str,
    pub max_tokens: u32,
    pub system: &'a [SystemPart],
    pub messages: Vec<Message>,
    pub max_turns: u32,
    pub deadline: Instant,
    pub cancel: Option<watch::Receiver<bool>>,
    pub hooks: Option<&'a mut dyn TurnHooks>,
}

/// What driving it produced.
#[derive(Debug, Clone)]
pub struct Driven {
    pub end: End,
    /// The whole conversation, the new replies and tool results included.
    pub messages: Vec<Message>,
    pub usage: Usage,
    /// Model replies received: a call that timed out, was cancelled or failed made none.
    pub turns: u32,
    /// The model the provider said answered.
    pub model: Option<String>,
    /// The size of each request body, in order.
    pub request_bytes: Vec<usize>,
    /// Time spent waiting on the provider, all turns.
    pub server_time: Duration,
    /// Wall time of the whole conversation.
    pub wall_time: Duration,
}

impl Driven {
    /// The text that says what the run did: the finish summary or the final answer.
    pub fn summary(&self) -> Option<String> {
        match &self.end {
            End::Finished(f) if !f.summary.trim().is_empty() => Some(f.summary.trim().to_string()),
            End::Answered(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => None,
        }
    }
}

async fn cancelled(cancel: &mut Option<watch::Receiver<bool>>) {
    match cancel {
        Some(rx) => {
            while !*rx.borrow() {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
        None => std::future::pending::<()>().await,
    }
}

pub async fn drive(mut d: Drive<'_>, kit: &mut ToolKit, tr: &mut Transcript) -> Driven {
    let started = Instant::now();
    let mut out = Driven {
        end: End::MaxTurns(d.max_turns),
        messages: std::mem::take(&mut d.messages),
        usage: Usage::default(),
        turns: 0,
        model: None,
        request_bytes: Vec::new(),
        server_time: Duration::ZERO,
        wall_time: Duration::ZERO,
    };
    tr.system(d.system, kit.specs());
    if let Some(last) = out.messages.last() {
        tr.message(last, "");
    }
    let specs = kit.specs().to_vec();
    out.end = loop {
        if let Some(end) = d.before_turn(&mut out, tr) {
            break end;
        }
        let asked_at = Instant::now();
        let c = match d.ask(&specs, &mut out, tr).await {
            Ok(c) => c,
            Err(end) => break end,
        };
        if let Some(end) = d.take_reply(c, asked_at, kit, &mut out, tr).await {
            break end;
        }
    };
    out.wall_time = started.elapsed();
    out
}

impl Drive<'_> {
    /// Whether the conversation stops before the next turn; else the steering messages
    /// the hooks give are added to it.
    fn before_turn(&mut self, out: &mut Driven, tr: &mut Transcript) -> Option<End> {
        if out.turns >= self.max_turns {
            return Some(End::MaxTurns(self.max_turns));
        }
        if self.cancel.as_ref().is_some_and(|c| *c.borrow()) {
            return Some(End::Cancelled);
        }
        if Instant::now() >= self.deadline {
            return Some(End::Timeout);
        }
        let h = self.hooks.as_deref_mut()?;
        let b = h.before_turn(out.turns + 1);
        if b.pause {
            return Some(End::Paused);
        }
        if !b.inject.is_empty() {
            let text = b.inject.join("\n\n");
            tr.note(&format!(
                "steering message(s) before turn {}:\n{text}",
                out.turns + 1
            ));
            inject_text(&mut out.messages, text);
        }
        None
    }

    /// One model call, cut short by the deadline or a cancellation. `Err`: how the
    /// conversation ends instead.
    async fn ask(
        &mut self,
        specs: &[ToolSpec],
        out: &mut Driven,
        tr: &mut Transcript,
    ) -> Result<Completion, End> {
        let (provider, deadline) = (self.provider, self.deadline);
        let req = ModelRequest {
            model: self.model,
            max_tokens: self.max_tokens,
            system: self.system,
            tools: specs,
            messages: &out.messages,
            options: provider.options(),
        };
        let res: Result<Completion, ProviderError> = tokio::select! {
            r = tokio::time::timeout_at(deadline, provider.complete(&req, deadline)) => match r {
                Ok(r) => r,
                Err(_) => return Err(End::Timeout),
            },
            _ = cancelled(&mut self.cancel) => return Err(End::Cancelled),
        };
        match res {
            // A turn is a reply: a call that timed out or failed made none, so a timeout
            // after one reply says "1 turn", however the deadline caught the second call.
            Ok(c) => {
                out.turns += 1;
                Ok(c)
            }
            Err(ProviderError::Deadline { last, .. }) if Instant::now() >= deadline => {
                tr.note(&format!(
                    "the provider kept failing until the deadline: {last}"
                ));
                Err(End::Timeout)
            }
            Err(e) => {
                let msg = e.to_string();
                tr.note(&format!("provider error: {msg}"));
                Err(End::Failed(msg))
            }
        }
    }

    /// Takes the model's reply into the transcript and the conversation, then runs the
    /// tools it called. `Some`: the conversation ends with this turn (no tool call, or
    /// `finish`).
    async fn take_reply(
        &mut self,
        c: Completion,
        asked_at: Instant,
        kit: &mut ToolKit,
        out: &mut Driven,
        tr: &mut Transcript,
    ) -> Option<End> {
        out.server_time += c.server_time;
        out.request_bytes.push(c.request_bytes);
        for r in &c.retried {
            tr.note(&format!("retried: {r}"));
        }
        let turn_usage = c.reply.usage;
        out.usage.add(&turn_usage);
        if c.reply.model.is_some() {
            out.model = c.reply.model;
        }
        let mut reply = c.reply.message;
        let calls: Vec<(String, String, serde_json::Value)> = reply
            .tool_uses()
            .map(|(id, name, input)| (id.to_string(), name.to_string(), input.clone()))
            .collect();
        super::model::clear_invalid_arguments(&mut reply);
        // What the guard will block must not be kept anywhere: the calls run on the
        // original inputs, the transcript and the conversation keep a redacted copy.
        kit.screen(&mut reply);
        tr.message(&reply, &format!(" (turn {})", out.turns));
        let ms = asked_at.elapsed().as_millis();
        tr.turn_usage(out.turns, &turn_usage, ms, out.model.as_deref());
        let text = reply.text();
        out.messages.push(Message {
            role: Role::Assistant,
            content: reply.content,
        });
        let Some(last_tool) = calls.last().map(|c| c.1.clone()) else {
            self.after_turn(out, &turn_usage, None);
            return Some(if is_silent_token(&text) {
                End::SilentToken(text.trim().to_string())
            } else {
                End::Answered(text)
            });
        };
        let results = run_calls(kit, calls, self.deadline).await;
        tr.message(&results, "");
        out.messages.push(results);
        self.after_turn(out, &turn_usage, Some(&last_tool));
        kit.finish.clone().map(End::Finished)
    }

    fn after_turn(&mut self, out: &Driven, usage: &Usage, last_tool: Option<&str>) {
        if let Some(h) = self.hooks.as_deref_mut() {
            h.after_turn(out.turns, &out.messages, usage, last_tool);
        }
    }
}

/// Runs the tool calls in order. Every result, an error too, goes back to the model as
/// one user message.
async fn run_calls(
    kit: &mut ToolKit,
    calls: Vec<(String, String, serde_json::Value)>,
    deadline: Instant,
) -> Message {
    let mut results = Vec::new();
    for (id, name, input) in calls {
        let (content, is_error) = match kit.call(&name, &input, deadline).await {
            Ok(ok) => (ok.text, false),
            Err(e) => (e.message, true),
        };
        results.push(Block::ToolResult {
            tool_use_id: id,
            content,
            is_error,
        });
    }
    Message {
        role: Role::User,
        content: results,
    }
}

/// Adds text to the conversation as the user's: to the last user message if the
/// conversation ends with one (after tool results: providers want turns to alternate),
/// else as a new user message.
fn inject_text(messages: &mut Vec<Message>, text: String) {
    match messages.last_mut() {
        Some(m) if m.role == Role::User => m.content.push(Block::Text { text }),
        _ => messages.push(Message::user_text(text)),
    }
}
