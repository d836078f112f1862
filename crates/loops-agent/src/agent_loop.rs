//! The agent loop: send the conversation, run the tools the model asks for, send their
//! results, and repeat until the model calls `finish`, answers without a tool call, the
//! turn limit, the deadline or a cancellation.

use super::model::{Block, Message, ModelRequest, Role, StopReason, SystemPart, ToolSpec, Usage};
use super::provider::{Completion, HttpProvider, ProviderError, Rejection};
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
    /// After a turn's reply and tool results are in `messages`; `by` made it.
    fn after_turn(
        &mut self,
        turn: u32,
        messages: &[Message],
        usage: &Usage,
        last_tool: Option<&str>,
        by: &TurnModel,
    );
}

/// Who answered a turn: the provider (by its name in loops.yaml), the model asked for and
/// the one the provider said answered. A fallback mid-run changes them, and with them
/// what a turn costs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnModel {
    pub provider: String,
    pub asked: String,
    pub answered: Option<String>,
}

/// A provider a turn can go to, with the model and reply length it has there.
#[derive(Clone, Copy)]
pub struct Route<'a> {
    pub provider: &'a HttpProvider,
    pub model: &'a str,
    pub max_tokens: u32,
}

/// One conversation to drive.
pub struct Drive<'a> {
    pub provider: &'a HttpProvider,
    pub model: &'a str,
    pub max_tokens: u32,
    /// Where turns go, in order, when the provider before is overloaded, keeps failing
    /// or stalls (`providers.X.fallback`). Once a turn has moved on, the rest of the
    /// conversation stays there: the one that failed is not paid retries again each turn.
    pub fallbacks: Vec<Route<'a>>,
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
    /// The turns' tokens by the provider and model that answered them, in the order each
    /// first answered: a run that moved to a fallback mid-way is priced by each model for
    /// its own turns, not all of it by the last.
    pub usage_by_model: Vec<ModelUsage>,
    /// The size of each request body, in order.
    pub request_bytes: Vec<usize>,
    /// Time spent waiting on the provider, all turns.
    pub server_time: Duration,
    /// Wall time of the whole conversation.
    pub wall_time: Duration,
    /// Each move to a fallback provider, `from -> to`, in order.
    pub fallbacks: Vec<String>,
    /// Set when the conversation failed because it does not fit the model's context.
    pub overflow: Option<Overflow>,
    /// Replies in a row cut at `max_tokens` in the middle of tool calls.
    pub cut_in_a_row: u32,
    /// The conversation failed in a way the same request would fail again: the provider
    /// refused it (context length, invalid request, auth, not found), or the reply was cut
    /// at `max_tokens`, filtered or refused. A retry of the run or job cannot help; the
    /// setting the message names can.
    pub permanent: bool,
}

/// The tokens of the turns one provider's model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelUsage {
    pub provider: String,
    /// The model asked for.
    pub asked: String,
    /// The model the provider said answered, when it said.
    pub answered: Option<String>,
    pub usage: Usage,
}

/// A prompt too long for the model's context, as the provider said.
#[derive(Debug, Clone, PartialEq)]
pub struct Overflow {
    /// Tokens the request needed and the model takes, when the message said.
    pub asked: Option<u64>,
    pub limit: Option<u64>,
    /// The size of the request body that did not fit.
    pub request_bytes: usize,
    /// The turn it happened on (1: before any tool ran).
    pub turn: u32,
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

fn add_model_usage(out: &mut Driven, turn: ModelUsage) {
    let same = |m: &&mut ModelUsage| {
        m.provider == turn.provider && m.asked == turn.asked && m.answered == turn.answered
    };
    match out.usage_by_model.iter_mut().find(same) {
        Some(m) => m.usage.add(&turn.usage),
        None => out.usage_by_model.push(turn),
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
        usage_by_model: Vec::new(),
        request_bytes: Vec::new(),
        server_time: Duration::ZERO,
        wall_time: Duration::ZERO,
        fallbacks: Vec::new(),
        overflow: None,
        cut_in_a_row: 0,
        permanent: false,
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
        let (c, lost) = match d.ask(&specs, &mut out, tr).await {
            Ok(c) => c,
            Err(end) => break end,
        };
        if let Some(end) = d.take_reply(c, lost, asked_at, kit, &mut out, tr).await {
            break end;
        }
    };
    out.wall_time = started.elapsed();
    out
}

impl<'a> Drive<'a> {
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

    /// The provider and model turns go to now: the first, or the fallback the
    /// conversation has moved on to.
    fn route(&self, moved: usize) -> Option<Route<'a>> {
        match moved {
            0 => Some(Route {
                provider: self.provider,
                model: self.model,
                max_tokens: self.max_tokens,
            }),
            n => self.fallbacks.get(n - 1).copied(),
        }
    }

    /// One model call, cut short by the deadline or a cancellation, moving on to the
    /// next fallback provider when one is overloaded, keeps failing or stalls. `Ok`: the
    /// reply, and the tokens of attempts that failed on the way (already counted in
    /// `out.usage` on an `Err`). `Err`: how the conversation ends instead.
    async fn ask(
        &mut self,
        specs: &[ToolSpec],
        out: &mut Driven,
        tr: &mut Transcript,
    ) -> Result<(Completion, Usage), End> {
        let deadline = self.deadline;
        let mut lost = Usage::default();
        loop {
            let Some(route) = self.route(out.fallbacks.len()) else {
                return Err(End::Failed("no provider is left to try".into()));
            };
            let req = ModelRequest {
                model: route.model,
                max_tokens: route.max_tokens,
                system: self.system,
                tools: specs,
                messages: &out.messages,
                options: route.provider.options(),
            };
            let mut spent = Usage::default();
            let res = tokio::select! {
                r = tokio::time::timeout_at(deadline, route.provider.complete_counting(&req, deadline, &mut spent)) => r.ok(),
                _ = cancelled(&mut self.cancel) => {
                    out.usage.add(&spent);
                    return Err(End::Cancelled);
                }
            };
            lost.add(&spent);
            note_lost(tr, route.provider.name(), &spent);
            let Some(res) = res else {
                out.usage.add(&lost);
                return Err(End::Timeout);
            };
            match res {
                // A turn is a reply: a call the deadline cut made none, so a timeout
                // after one reply says "1 turn".
                Ok(c) => {
                    out.turns += 1;
                    return Ok((c, lost));
                }
                Err(e) => {
                    if let Some(next) = self.fallback_for(&e, out) {
                        let line = format!("{} -> {next}", route.provider.name());
                        tr.note(&format!("fallback: {line} ({e})"));
                        out.fallbacks.push(line);
                        continue;
                    }
                    out.usage.add(&lost);
                    let bytes = {
                        let cfg = route.provider.config();
                        super::provider::request_body_streamed(cfg.kind, &req, cfg.stream).len()
                    };
                    return Err(self.failed(e, out, tr, bytes));
                }
            }
        }
    }

    /// The next provider's name when `e` is worth a fallback and there is one left.
    fn fallback_for(&self, e: &ProviderError, out: &Driven) -> Option<String> {
        if !e.worth_a_fallback() || Instant::now() >= self.deadline {
            return None;
        }
        let next = self.route(out.fallbacks.len() + 1)?;
        Some(next.provider.name().to_string())
    }

    /// How a provider's failure ends the conversation.
    fn failed(
        &self,
        e: ProviderError,
        out: &mut Driven,
        tr: &mut Transcript,
        request_bytes: usize,
    ) -> End {
        if let ProviderError::Deadline { last, .. } = &e {
            if Instant::now() >= self.deadline {
                tr.note(&format!(
                    "the provider kept failing until the deadline: {last}"
                ));
                return End::Timeout;
            }
        }
        if let ProviderError::Rejected {
            class: Rejection::ContextLength { asked, limit },
            ..
        } = &e
        {
            out.overflow = Some(Overflow {
                asked: *asked,
                limit: *limit,
                request_bytes,
                // The turn that was being asked (it made no reply, so is not counted).
                turn: out.turns + 1,
            });
        }
        out.permanent = matches!(e, ProviderError::Rejected { .. });
        let msg = e.to_string();
        tr.note(&format!("provider error: {msg}"));
        End::Failed(msg)
    }

    /// Takes the model's reply into the transcript and the conversation, then runs the
    /// tools it called. `Some`: the conversation ends with this turn (no tool call, or
    /// `finish`).
    async fn take_reply(
        &mut self,
        c: Completion,
        lost: Usage,
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
        let mut turn_usage = c.reply.usage;
        turn_usage.add(&lost);
        out.usage.add(&turn_usage);
        let mut by = TurnModel::default();
        if let Some(route) = self.route(out.fallbacks.len()) {
            by = TurnModel {
                provider: route.provider.name().to_string(),
                asked: route.model.to_string(),
                answered: c.reply.model.clone(),
            };
            let m = ModelUsage {
                provider: route.provider.name().to_string(),
                asked: route.model.to_string(),
                answered: c.reply.model.clone(),
                usage: turn_usage,
            };
            add_model_usage(out, m);
        }
        if c.reply.model.is_some() {
            out.model = c.reply.model;
        }
        let said = c.reply.stop_reason;
        let stop = StopReason::of(said.as_deref());
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
        tr.turn_usage(
            out.turns,
            &c.reply.usage,
            ms,
            out.model.as_deref(),
            said.as_deref(),
        );
        let text = reply.text();
        out.messages.push(Message {
            role: Role::Assistant,
            content: reply.content,
        });
        if let Some(end) = self.stopped_short(&stop, &text, calls.is_empty(), out) {
            out.permanent = true;
            self.after_turn(out, &turn_usage, None, &by);
            return Some(end);
        }
        if stop == StopReason::Cut {
            // Arguments cut off mid-generation may parse and still be wrong (a path cut
            // short): none of them runs, and the model is told why.
            let results = not_run(&calls, self.cut_limit(out).1);
            tr.message(&results, "");
            out.messages.push(results);
            out.cut_in_a_row += 1;
            self.after_turn(out, &turn_usage, None, &by);
            return None;
        }
        out.cut_in_a_row = 0;
        let Some(last_tool) = calls.last().map(|c| c.1.clone()) else {
            self.after_turn(out, &turn_usage, None, &by);
            return Some(if is_silent_token(&text) {
                End::SilentToken(text.trim().to_string())
            } else {
                End::Answered(text)
            });
        };
        let results = run_calls(kit, calls, self.deadline).await;
        tr.message(&results, "");
        out.messages.push(results);
        self.after_turn(out, &turn_usage, Some(&last_tool), &by);
        kit.finish.clone().map(End::Finished)
    }

    /// `reply cut at max_tokens=512; raise providers.local.max_tokens`, for the provider
    /// the conversation is on.
    fn cut_message(&self, out: &Driven) -> String {
        let (name, max) = self.cut_limit(out);
        format!("reply cut at max_tokens={max}; raise providers.{name}.max_tokens")
    }

    /// The provider the conversation is on, and its `max_tokens`.
    fn cut_limit(&self, out: &Driven) -> (String, u32) {
        match self.route(out.fallbacks.len()) {
            Some(r) => (r.provider.name().to_string(), r.max_tokens),
            None => (self.provider.name().to_string(), self.max_tokens),
        }
    }

    /// Whether the way the reply stopped ends the conversation, whatever it says: a
    /// text cut at `max_tokens` is not an answer, a filtered or refused reply is not
    /// work done, and tool calls cut twice in a row will not get better.
    fn stopped_short(
        &self,
        stop: &StopReason,
        text: &str,
        no_calls: bool,
        out: &Driven,
    ) -> Option<End> {
        match stop {
            StopReason::Cut if no_calls => Some(End::Failed(self.cut_message(out))),
            StopReason::Cut if out.cut_in_a_row >= 1 => Some(End::Failed(format!(
                "{} (two replies in a row were cut in the middle of tool calls; none of them was run)",
                self.cut_message(out)
            ))),
            StopReason::ContentFilter => Some(End::Failed(
                "the provider's content filter stopped the reply (finish_reason: content_filter); nothing it asked for was run".into(),
            )),
            StopReason::Refusal => Some(End::Failed(format!(
                "the model refused (stop_reason: refusal): {}",
                loops_core::text::clip(text.trim(), 200)
            ))),
            _ => None,
        }
    }

    fn after_turn(&mut self, out: &Driven, usage: &Usage, last_tool: Option<&str>, by: &TurnModel) {
        if let Some(h) = self.hooks.as_deref_mut() {
            h.after_turn(out.turns, &out.messages, usage, last_tool, by);
        }
    }
}

/// Says in the transcript what failed attempts cost (counted in the run's tokens).
fn note_lost(tr: &mut Transcript, provider: &str, lost: &Usage) {
    if !lost.is_zero() {
        tr.note(&format!(
            "tokens of failed attempts on {provider}, counted: {} in, {} out, {} cache read",
            lost.input, lost.output, lost.cache_read
        ));
    }
}

/// An error result for each of `calls`, none of which was run.
fn not_run(calls: &[(String, String, serde_json::Value)], max_tokens: u32) -> Message {
    let content = calls
        .iter()
        .map(|(id, _, _)| Block::ToolResult {
            tool_use_id: id.clone(),
            content: format!(
                "not run: your reply was cut off at max_tokens={max_tokens} before it ended, so these arguments may be incomplete. Make fewer or shorter tool calls in one reply."
            ),
            is_error: true,
        })
        .collect();
    Message {
        role: Role::User,
        content,
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
