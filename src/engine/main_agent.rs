//! The main session on a model: a wake gives the model the claimed handoffs (front
//! matter, body, checklist and the draft's text), its identity files and its
//! conversation so far, and the tools to read memory, edit drafts, tick items, deliver
//! and complete handoffs.
//!
//! The conversation is kept on disk between wakes (`.loops/main/conversation.json`) and
//! bounded by `main.history` messages: when it grows past that, whole older wakes are
//! dropped from the front (never half a wake, so no tool result loses its call) and each
//! dropped wake leaves one summary line — when it was, what it was about and how it ended.
//! The newest 20 summary lines are kept and shown at the start of the conversation.

use crate::engine::prompt_run::PromptOutcome;
use crate::engine::run_context::RunContext;
use crate::engine::run_context::{WakeKind, MAIN};
use chrono::Utc;
use loops_agent::agent_loop::Overflow;
use loops_agent::context;
use loops_agent::model::{Block, Message, Role, SystemPart};
use loops_agent::sandbox::{Sandbox, Scope};
use loops_agent::session::{
    Limits, ModelChoice, SessionRun, SessionSpec, TimeLimit, TranscriptSpec,
};
use loops_agent::tools::{Claimed, ToolEnv};
use loops_agent::transcript::{Redactor, Transcript};
use loops_core::guard::Guard;
use loops_core::handoff::Handoff;
use loops_core::runs::Outcome;
use loops_core::runs::RunInProgress;
use loops_core::tool_names::MAIN_DEFAULT;
use loops_core::workspace::{MainSettings, Workspace};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

/// The most summary lines of dropped wakes kept.
pub const SUMMARY_LINES: usize = 20;

/// The main session's conversation between wakes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Conversation {
    /// One line per dropped wake, oldest first.
    #[serde(default)]
    pub summary: Vec<String>,
    #[serde(default)]
    pub messages: Vec<Message>,
    /// How many bytes of kept conversation fit the model's context, learned from the
    /// provider's first "exceeds the context" error: older wakes past it are dropped
    /// before each wake, so the error is not met again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit_bytes: Option<usize>,
}

impl Conversation {
    /// Loads it; a missing or unreadable file is an empty conversation (an unreadable one
    /// is set aside, not overwritten, so a person can look at it).
    pub fn load(path: &Path) -> Conversation {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Conversation::default();
        };
        match serde_json::from_str(&text) {
            Ok(c) => c,
            Err(e) => {
                let aside = path.with_extension(format!("corrupt-{}.json", Utc::now().timestamp()));
                tracing::warn!(
                    "{} is not readable ({e}); set aside as {} and starting afresh",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(path, aside);
                Conversation::default()
            }
        }
    }

    /// Writes it, with every API key value `redactor` knows replaced (a model that
    /// quoted one must not have it kept on disk).
    pub fn save(&self, path: &Path, redactor: &Redactor) -> std::io::Result<()> {
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        loops_core::fsutil::atomic_write(path, redactor.redact(&text).as_bytes())
    }

    /// Drops whole wakes from the front until at most `limit` messages remain, and
    /// then until they fit what the model's context was learned to take.
    pub fn bound(&mut self, limit: usize) {
        while self.messages.len() > limit {
            self.drop_oldest_wake();
        }
        if let Some(bytes) = self.fit_bytes {
            self.fit(bytes);
        }
        self.clip_summary();
    }

    /// Drops whole wakes from the front until the messages take at most `bytes` (as
    /// JSON, about what they take in a request). Returns how many wakes went.
    pub fn fit(&mut self, bytes: usize) -> usize {
        let mut dropped = 0;
        while !self.messages.is_empty() && message_bytes(&self.messages) > bytes {
            self.drop_oldest_wake();
            dropped += 1;
        }
        self.clip_summary();
        dropped
    }

    /// Drops the oldest wake, leaving a summary line for it.
    fn drop_oldest_wake(&mut self) {
        // The next wake starts at a user message that is text, not tool results.
        let next = self
            .messages
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, m)| is_wake_start(m))
            .map(|(i, _)| i)
            .unwrap_or(self.messages.len());
        let dropped: Vec<Message> = self.messages.drain(..next).collect();
        self.summary.push(summarise(&dropped));
        // A wake that began in the same message as the last tool results of the one
        // before it must not keep results whose calls were just dropped.
        if let Some(first) = self.messages.first_mut() {
            first
                .content
                .retain(|b| !matches!(b, Block::ToolResult { .. }));
        }
    }

    fn clip_summary(&mut self) {
        if self.summary.len() > SUMMARY_LINES {
            let cut = self.summary.len() - SUMMARY_LINES;
            self.summary.drain(..cut);
        }
    }

    /// Learns from a context error how much kept conversation fits: of the request that
    /// did not fit, the part that is not the kept conversation (prompt, tools, the
    /// wake) stays, so the conversation gets what is left of the limit, with a margin.
    /// Without the numbers, half of what was kept.
    pub fn learn_fit(&mut self, o: &Overflow) -> usize {
        let kept = message_bytes(&self.messages);
        let fixed = o.request_bytes.saturating_sub(kept);
        let fits = match (o.asked, o.limit) {
            (Some(asked), Some(limit)) if asked > 0 => {
                let total = o.request_bytes as f64 * limit as f64 / asked as f64 * 0.9;
                (total as usize).saturating_sub(fixed)
            }
            _ => kept / 2,
        };
        let fits = self.fit_bytes.map_or(fits, |known| known.min(fits));
        self.fit_bytes = Some(fits);
        fits
    }

    /// The messages to send: the summary of dropped wakes, the kept conversation and
    /// the new wake's message (merged into the last user message if the conversation
    /// ended on one, since roles must alternate).
    pub fn with_wake(&self, wake: String) -> Vec<Message> {
        let mut msgs = self.messages.clone();
        let wake_block = Block::Text { text: wake };
        match msgs.last_mut() {
            Some(last) if last.role == Role::User => last.content.push(wake_block),
            _ => msgs.push(Message {
                role: Role::User,
                content: vec![wake_block],
            }),
        }
        if !self.summary.is_empty() {
            let text = format!(
                "Earlier wakes, summarised (older turns are dropped to keep this conversation short):\n{}",
                self.summary
                    .iter()
                    .map(|l| format!("- {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            if let Some(first) = msgs.first_mut() {
                first.content.insert(0, Block::Text { text });
            }
        }
        msgs
    }
}

fn message_bytes(messages: &[Message]) -> usize {
    serde_json::to_vec(messages).map_or(0, |v| v.len())
}

fn is_wake_start(m: &Message) -> bool {
    m.role == Role::User
        && m.content
            .iter()
            .any(|b| matches!(b, Block::Text { text } if text.starts_with("Wake at")))
}

fn summarise(dropped: &[Message]) -> String {
    let first = dropped
        .iter()
        .find(|m| is_wake_start(m))
        .and_then(|m| {
            m.content.iter().rev().find_map(|b| match b {
                Block::Text { text } if text.starts_with("Wake") => Some(text.clone()),
                _ => None,
            })
        })
        .and_then(|t| t.lines().next().map(str::to_string))
        .unwrap_or_else(|| "a wake".into());
    let last = dropped
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant && !m.text().trim().is_empty())
        .map(|m| loops_core::text::clip(m.text().trim().lines().next().unwrap_or(""), 160));
    let done: Vec<String> = dropped
        .iter()
        .flat_map(|m| m.tool_uses())
        .filter(|(_, name, _)| *name == "complete_handoff" || *name == "finish")
        .filter_map(|(_, name, input)| {
            let s = input.get("summary").and_then(|s| s.as_str()).unwrap_or("");
            let id = input.get("id").and_then(|s| s.as_str());
            match (name, id) {
                ("complete_handoff", Some(id)) => Some(format!("completed {id}")),
                ("finish", _) if !s.is_empty() => Some(loops_core::text::clip(s, 160)),
                _ => None,
            }
        })
        .collect();
    let mut line = first;
    if !done.is_empty() {
        line.push_str(&format!(" → {}", done.join("; ")));
    } else if let Some(l) = last {
        line.push_str(&format!(" → {l}"));
    }
    line
}

/// The text of a wake: when, why, and every claimed handoff in full.
pub fn wake_message(kind: WakeKind, handoffs: &[(Handoff, PathBuf)], ws_root: &Path) -> String {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut s = match kind {
        WakeKind::Heartbeat if handoffs.is_empty() => format!(
            "Wake at {now} (heartbeat): no new handoffs. Check whatever your instructions say to check; if there is nothing to do, answer exactly HEARTBEAT_OK."
        ),
        _ => {
            let titles: Vec<&str> = handoffs.iter().map(|(h, _)| h.title.as_str()).collect();
            format!(
                "Wake at {now} ({}): {} handoff(s): {}",
                kind.as_str(),
                handoffs.len(),
                titles.join("; ")
            )
        }
    };
    for (h, path) in handoffs {
        push_handoff(&mut s, h, path, ws_root);
    }
    s
}

/// Appends one claimed handoff to a wake's text: its facts, title, body, checklist and
/// draft.
fn push_handoff(s: &mut String, h: &Handoff, path: &Path, ws_root: &Path) {
    let rel = path
        .strip_prefix(ws_root)
        .unwrap_or(path)
        .display()
        .to_string();
    s.push_str(&format!(
        "\n\n---\n## Handoff {}\n\n- file: {rel}\n- from: {}\n- priority: {}\n",
        h.id,
        h.author(),
        h.priority.as_str()
    ));
    if let Some(c) = h.created {
        s.push_str(&format!("- created: {}\n", c.to_rfc3339()));
    }
    if let Some(d) = h.due {
        s.push_str(&format!("- due: {}\n", d.to_rfc3339()));
    }
    if let Some(f) = &h.flagged {
        s.push_str(&format!("- flagged: {f}\n"));
    }
    if !h.tags.is_empty() {
        s.push_str(&format!("- tags: {}\n", h.tags.join(", ")));
    }
    // The body is at most limits.max_handoff_bytes, which is still far more than a
    // model should get unasked: past this much it reads the file itself.
    let body = h.body.trim();
    let body = if body.len() > context::MAX_FILE_BYTES {
        format!(
            "{}\n\n[… the body is {} bytes; read {rel} for the rest]",
            loops_core::text::clip(body, context::MAX_FILE_BYTES),
            body.len()
        )
    } else {
        body.to_string()
    };
    s.push_str(&format!("\n# {}\n\n{body}\n", h.title));
    if !h.checklist.is_empty() {
        s.push_str("\nChecklist (tick each with tick_item when done):\n");
        for (i, item) in h.checklist.iter().enumerate() {
            s.push_str(&format!(
                "{}. [{}] {}{}\n",
                i + 1,
                if item.checked { "x" } else { " " },
                item.text,
                if item.optional { " (optional)" } else { "" }
            ));
        }
    }
    if let Some(d) = &h.draft {
        // Only what the clip keeps is read: a draft of gigabytes costs no memory. The
        // path is checked again now, in its writer's scope, and opened beneath the root.
        let max = context::MAX_FILE_BYTES as u64 + 4;
        match loops_agent::sandbox::read_draft(ws_root, h, max)
            .map(|d| d.map(|(t, _)| t).unwrap_or_default())
        {
            Ok(t) => s.push_str(&format!(
                "\nDraft `{d}`:\n\n```markdown\n{}\n```\n",
                loops_core::text::clip(t.trim_end(), context::MAX_FILE_BYTES)
            )),
            Err(e) => s.push_str(&format!("\nDraft `{d}`: cannot be read ({e})\n")),
        }
    }
}

/// What a wake on a model produced.
pub struct ModelWake {
    pub outcome: PromptOutcome,
    /// Handoffs the model completed, with their summaries.
    pub reported: HashMap<String, Option<String>>,
    /// Files the tools wrote.
    pub wrote: Vec<PathBuf>,
    /// A daily budget stopped the wake between turns: the day is spent, and the wakes
    /// wait for the next UTC midnight.
    pub daily_budget_spent: bool,
}

impl ModelWake {
    fn failed(error: String) -> ModelWake {
        ModelWake {
            outcome: PromptOutcome::failed(error),
            reported: HashMap::new(),
            wrote: Vec::new(),
            daily_budget_spent: false,
        }
    }
}

/// Runs one wake of a prompt main session.
pub async fn wake(
    ctx: &RunContext,
    main: &MainSettings,
    kind: WakeKind,
    run_id: &str,
    marker: &RunInProgress,
    handoffs: &[(Handoff, PathBuf)],
    cancel: Option<watch::Receiver<bool>>,
) -> ModelWake {
    let started = std::time::Instant::now();
    let ws = &ctx.ws;
    let (system, choice) = match main_system(ws, main) {
        Ok(x) => x,
        Err(e) => return ModelWake::failed(e),
    };
    let layout = ws.layout();
    let conv_path = layout.conversation();
    let mut conv = if main.history == 0 {
        Conversation::default()
    } else {
        Conversation::load(&conv_path)
    };
    if let Some(bytes) = conv.fit_bytes {
        conv.fit(bytes);
    }
    let tpath = Transcript::path_for(&layout.runs_dir(), MAIN, run_id);
    let mut facts = vec![("handoffs", handoffs.len().to_string())];
    facts.extend(choice.facts());
    let mut tr = TranscriptSpec {
        path: tpath.clone(),
        title: format!("main — {} wake {run_id}", kind.as_str()),
        facts,
        echo: None,
    }
    .open(&ws.settings);
    let session = Wake {
        ctx,
        main,
        kind,
        run_id,
        handoffs,
        system: &system,
        choice: &choice,
        cancel,
    };
    // The workspace's budget (loops.yaml), shared with every loop, covers the main
    // session too: a wake stops between turns before it would pass it.
    let budget = crate::engine::budget::RunBudget::for_main_wake(ctx, Utc::now());
    let mut hooks = crate::engine::budget::RunHooks::new(ctx, budget, marker);
    let mut run = session.converse(&conv, &mut tr, &mut hooks).await;
    if let Some(o) = run.as_ref().ok().and_then(|r| r.driven.overflow.clone()) {
        if session.fit_after_overflow(&mut conv, &o, &conv_path, &mut tr) {
            run = session.converse(&conv, &mut tr, &mut hooks).await;
        }
    }
    let mut outcome = match &run {
        Ok(run) => PromptOutcome::of_session(run, &choice),
        Err(e) => PromptOutcome::failed(e.to_string()),
    };
    let stop = hooks.budget.and_then(|b| b.stopped);
    let daily_budget_spent = stop.as_ref().is_some_and(|s| s.daily);
    if let Some(stop) = stop {
        tr.note(&format!("budget: {}", stop.why));
        outcome.outcome = Some(Outcome::Budget);
        outcome.error = Some(stop.why);
    }
    outcome.provider = Some(choice.provider.name.clone());
    outcome.transcript = Some(tpath);
    outcome.duration = started.elapsed();
    let failed = outcome
        .outcome
        .is_some_and(|o| o.is_failure() || o == Outcome::Interrupted);
    if let Ok(run) = &run {
        if !failed && main.history > 0 {
            let messages = &run.driven.messages;
            keep_conversation(conv, messages, main.history, &conv_path, tr.redactor());
        }
    }
    outcome.note_end(&mut tr);
    let mut w = finish_wake(outcome, run.ok(), tr.redactor());
    w.daily_budget_spent = daily_budget_spent;
    w
}

/// One wake's conversation, as it can be had twice (once more after a context error).
struct Wake<'a> {
    ctx: &'a RunContext,
    main: &'a MainSettings,
    kind: WakeKind,
    run_id: &'a str,
    handoffs: &'a [(Handoff, PathBuf)],
    system: &'a [SystemPart],
    choice: &'a ModelChoice,
    cancel: Option<watch::Receiver<bool>>,
}

impl Wake<'_> {
    async fn converse(
        &self,
        conv: &Conversation,
        tr: &mut Transcript,
        hooks: &mut crate::engine::budget::RunHooks<'_>,
    ) -> Result<SessionRun, loops_agent::session::SessionError> {
        let ws = &self.ctx.ws;
        let spec = SessionSpec {
            model: self.choice,
            tools: main_tools(self.ctx, self.main, self.run_id, self.handoffs),
            system: self.system.to_vec(),
            messages: conv.with_wake(wake_message(self.kind, self.handoffs, &ws.root)),
            limits: Limits {
                max_turns: self.main.max_turns,
                time: TimeLimit::For(self.main.timeout),
            },
            cancel: self.cancel.clone(),
            hooks: Some(hooks),
        };
        spec.run(tr).await
    }

    /// After the provider said the conversation does not fit its context: learns how
    /// much fits (kept for the next wakes too) and drops the oldest wakes. `true`: try
    /// once more, which is worth it only when the error came before any tool ran and
    /// something was dropped.
    fn fit_after_overflow(
        &self,
        conv: &mut Conversation,
        o: &Overflow,
        path: &Path,
        tr: &mut Transcript,
    ) -> bool {
        let fits = conv.learn_fit(o);
        let dropped = conv.fit(fits);
        if self.main.history > 0 {
            if let Err(e) = conv.save(path, tr.redactor()) {
                tracing::warn!("cannot save the main session's conversation: {e}");
            }
        }
        let again = o.turn == 1 && dropped > 0;
        tr.note(&format!(
            "the conversation did not fit the model's context: {dropped} oldest wake(s) dropped (about {fits} bytes of kept conversation fit, learned for the next wakes){}",
            if again { "; trying once more" } else { "" }
        ));
        again
    }
}

/// The main session's prompt (preamble, identity files, its instructions) and the model
/// it runs on. `Err`: why this wake cannot run.
fn main_system(
    ws: &Workspace,
    main: &MainSettings,
) -> Result<(Vec<SystemPart>, ModelChoice), String> {
    let prompt = match main.prompt_text(&ws.root) {
        None => {
            return Err(
                "the main session has neither `command:` nor `prompt:` in loops.yaml".into(),
            )
        }
        Some(r) => r?,
    };
    let choice = ModelChoice::resolve(
        &ws.settings,
        main.provider.as_deref(),
        main.model.as_deref(),
    )
    .map_err(|e| format!("main session: {e}"))?;
    if choice.is_agent_cli() {
        return Err(format!(
            "provider `{}` is an agent CLI (kind: command); a main session on one is `main.command` in loops.yaml",
            choice.provider.name
        ));
    }
    let identity = context::read_identity(&ws.root, &main.context);
    Ok((context::main_system(&identity, &prompt), choice))
}

/// The main session's tools: the whole workspace as its scope, this wake's handoffs to
/// tick and complete.
fn main_tools(
    ctx: &RunContext,
    main: &MainSettings,
    run_id: &str,
    handoffs: &[(Handoff, PathBuf)],
) -> ToolEnv {
    let ws = &ctx.ws;
    ToolEnv {
        ws: ws.clone(),
        sandbox: Sandbox::new(&ws.root, Scope::Main),
        loop_name: MAIN.to_string(),
        run_id: run_id.to_string(),
        allowed: match &main.tools {
            Some(t) => t.clone(),
            None => MAIN_DEFAULT.iter().map(|s| s.to_string()).collect(),
        },
        allowed_hosts: Vec::new(),
        shell: None,
        committer: ctx.committer.clone(),
        claimed: handoffs
            .iter()
            .map(|(h, p)| Claimed {
                id: h.id.clone(),
                path: p.clone(),
            })
            .collect(),
        guard: Guard::new(&ws.settings.guard, None),
        delivery_scope: wake_delivery_scope(run_id, handoffs),
        next_check: None,
    }
}

/// A wake replayed over the same handoffs posts nothing twice.
fn wake_delivery_scope(run_id: &str, handoffs: &[(Handoff, PathBuf)]) -> String {
    if handoffs.is_empty() {
        return run_id.to_string();
    }
    let mut ids: Vec<&str> = handoffs.iter().map(|(h, _)| h.id.as_str()).collect();
    ids.sort_unstable();
    format!("main@{}", ids.join(","))
}

/// Stores the conversation after a wake that did not fail, bounded by `main.history`.
fn keep_conversation(
    before: Conversation,
    messages: &[Message],
    history: usize,
    path: &Path,
    redactor: &Redactor,
) {
    let mut stored = Conversation {
        summary: before.summary,
        messages: messages.to_vec(),
        fit_bytes: before.fit_bytes,
    };
    // The summary line of the dropped wakes is at the front of `messages`; keep it out
    // of the stored conversation (it lives in `summary`).
    if !stored.summary.is_empty() {
        if let Some(first) = stored.messages.first_mut() {
            if matches!(first.content.first(), Some(Block::Text { text }) if text.starts_with("Earlier wakes, summarised"))
            {
                first.content.remove(0);
            }
        }
    }
    stored.bound(history);
    if let Err(e) = stored.save(path, redactor) {
        tracing::warn!("cannot save the main session's conversation: {e}");
    }
}

/// What the model said goes into the run record and the completed handoffs: the same
/// redaction as a loop's record (see `PromptOutcome::fill`).
fn finish_wake(
    mut outcome: PromptOutcome,
    run: Option<SessionRun>,
    redactor: &Redactor,
) -> ModelWake {
    let redact = |t: Option<String>| t.map(|t| redactor.redact(&t));
    outcome.summary = redact(outcome.summary.take());
    outcome.error = redact(outcome.error.take());
    outcome.note = redact(outcome.note.take());
    let Some(run) = run else {
        return ModelWake {
            outcome,
            reported: HashMap::new(),
            wrote: Vec::new(),
            daily_budget_spent: false,
        };
    };
    ModelWake {
        reported: run
            .kit
            .completed
            .iter()
            .map(|(id, summary)| (id.clone(), redact(summary.clone())))
            .collect(),
        wrote: run.kit.wrote.iter().cloned().collect(),
        outcome,
        daily_budget_spent: false,
    }
}
