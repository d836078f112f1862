//! One agent session: what a prompt loop's run, a wake of the main session on a model and
//! an agent job have in common. Each caller says only what is its own, in a
//! [`SessionSpec`]: who the session acts as and what its tools may touch (a
//! [`ToolEnv`]: sandbox scope, allow-list, effects handles), the stable part of the prompt,
//! the conversation it continues, its limits, a cancel signal and hooks around turns. The
//! session does the rest once, the same way for all three: the provider's client, the
//! never-share rules in the prompt, the tool kit with its MCP tools, and the conversation
//! itself, with everything it says and does written to the transcript.
//!
//! Two steps come before a session and are shared too: which provider and model it talks
//! to ([`ModelChoice::resolve`], on its own because a prompt loop on an agent CLI runs that
//! as a program instead), and the transcript's opening with its redaction
//! ([`TranscriptSpec::open`], used by that program's run as well).

use crate::agent_loop::{drive, Drive, Driven, Route, TurnHooks};
use crate::context;
use crate::model::{Message, SystemPart};
use crate::provider::{HttpProvider, ProviderError};
use crate::tools::{ToolEnv, ToolKit};
use crate::transcript::{Redactor, Transcript};
use loops_core::providers::{ProviderConfig, ProviderKind};
use loops_core::workspace::Settings;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a session could not start. Once it has started, nothing fails it: how the
/// conversation ended is in [`Driven::end`].
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// loops.yaml has no provider that fits what the caller's config names.
    #[error("{message} ({help})")]
    NoProvider { message: String, help: String },
    /// The provider's HTTP client could not be made.
    #[error(transparent)]
    Client(#[from] ProviderError),
}

/// The provider and model a session talks to.
#[derive(Debug, Clone)]
pub struct ModelChoice {
    pub provider: ProviderConfig,
    pub model: String,
    /// Where a turn goes when `provider` is overloaded, keeps failing or stalls: its
    /// `fallback:` chain, each with its own model.
    pub fallbacks: Vec<(ProviderConfig, String)>,
}

impl ModelChoice {
    /// The provider and model `provider` and `model` name, else loops.yaml's
    /// `defaults:`, else its only provider.
    pub fn resolve(
        settings: &Settings,
        provider: Option<&str>,
        model: Option<&str>,
    ) -> Result<ModelChoice, SessionError> {
        loops_core::providers::resolve(&settings.providers, &settings.defaults, provider, model)
            .map(|(provider, model)| ModelChoice {
                fallbacks: loops_core::providers::fallback_chain(
                    &settings.providers,
                    &provider.name,
                )
                .into_iter()
                .filter(|p| p.kind != ProviderKind::Command)
                .filter_map(|p| p.model.clone().map(|m| (p, m)))
                .collect(),
                provider,
                model,
            })
            .map_err(|(message, help)| SessionError::NoProvider { message, help })
    }

    /// An agent CLI (`kind: command`) does its own tool loop: it is run as a program,
    /// never as a session.
    pub fn is_agent_cli(&self) -> bool {
        self.provider.kind == ProviderKind::Command
    }

    /// The transcript header's lines that name it.
    pub fn facts(&self) -> [(&'static str, String); 2] {
        [
            (
                "provider",
                format!("{} ({})", self.provider.name, self.provider.kind.as_str()),
            ),
            ("model", self.model.clone()),
        ]
    }
}

/// Where a transcript is written and how it opens.
pub struct TranscriptSpec {
    pub path: PathBuf,
    pub title: String,
    /// The header's lines, in order (see [`ModelChoice::facts`]).
    pub facts: Vec<(&'static str, String)>,
    /// Where `--follow` wants it as it grows.
    pub echo: Option<loops_core::exec::Live>,
}

impl TranscriptSpec {
    /// Opens the transcript with its header. Every line is scrubbed of the value of every
    /// secret loops.yaml names ([`Redactor::for_settings`]), read now: a key rotated since
    /// the last run is the one replaced.
    pub fn open(self, settings: &Settings) -> Transcript {
        let mut tr = Transcript::create(self.path, Redactor::for_settings(settings));
        tr.echo_to(self.echo);
        tr.header(&self.title, &self.facts);
        tr
    }
}

/// How far a session may go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Model turns in this session (a resumed job passes what it has left).
    pub max_turns: u32,
    pub time: TimeLimit,
}

/// When a session's time is up.
#[derive(Debug, Clone, Copy)]
pub enum TimeLimit {
    /// At this instant: a loop's `timeout:` covers its whole run, the gate included.
    Until(Instant),
    /// This long from the first model turn: a main session's or a job's timeout is the
    /// conversation's, not also the time its MCP servers take to start.
    For(Duration),
}

/// What differs between one session and another.
pub struct SessionSpec<'a> {
    pub model: &'a ModelChoice,
    /// Who the session acts as and what its tools may touch; its guard also writes the
    /// never-share rules into the prompt.
    pub tools: ToolEnv,
    /// The stable part of the prompt, before the guard's rules are added.
    pub system: Vec<SystemPart>,
    /// The conversation to continue; its last message is the new one (the wake, the
    /// job's first message, a loop's dynamic part).
    pub messages: Vec<Message>,
    pub limits: Limits,
    pub cancel: Option<watch::Receiver<bool>>,
    pub hooks: Option<&'a mut dyn TurnHooks>,
}

/// A session that ran: how the conversation went, and what its tools did.
pub struct SessionRun {
    pub driven: Driven,
    pub kit: ToolKit,
}

impl SessionRun {
    /// The model that answered, or the one asked for when the provider did not say.
    pub fn model(&self, asked: &ModelChoice) -> String {
        self.driven
            .model
            .clone()
            .unwrap_or_else(|| asked.model.clone())
    }
}

impl SessionSpec<'_> {
    /// Runs the session, writing it into `tr` (opened by the caller, which writes its
    /// outcome there after).
    pub async fn run(self, tr: &mut Transcript) -> Result<SessionRun, SessionError> {
        // Before the tool kit: a provider that cannot be reached must not start the MCP
        // servers first.
        let provider = HttpProvider::new(&self.model.provider)?;
        let fallbacks = self
            .model
            .fallbacks
            .iter()
            .map(|(p, m)| HttpProvider::new(p).map(|h| (h, m.as_str())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut system = self.system;
        context::add_rules(&mut system, &self.tools.guard);
        let mut kit = ToolKit::new(self.tools);
        kit.load_mcp().await;
        // The run goes on without the tools of a server that did not start; the
        // transcript says which and why.
        for e in &kit.mcp_errors {
            tr.note(&format!("mcp: {e}"));
        }
        let deadline = match self.limits.time {
            TimeLimit::Until(at) => at,
            TimeLimit::For(d) => Instant::now() + d,
        };
        let driven = drive(
            Drive {
                provider: &provider,
                model: &self.model.model,
                max_tokens: self.model.provider.max_tokens,
                fallbacks: fallbacks
                    .iter()
                    .map(|(p, m)| Route {
                        provider: p,
                        model: m,
                        max_tokens: p.config().max_tokens,
                    })
                    .collect(),
                system: &system,
                messages: self.messages,
                max_turns: self.limits.max_turns,
                deadline,
                cancel: self.cancel,
                // Shortened to this call's borrows (a coercion `Option` does not make).
                hooks: self.hooks.map(|h| h as &mut dyn TurnHooks),
            },
            &mut kit,
            tr,
        )
        .await;
        Ok(SessionRun { driven, kit })
    }
}
