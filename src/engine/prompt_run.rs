//! One run of a prompt loop: the gate, the context, then the model — an agent session
//! ([`loops_agent::session`]) or an agent CLI run as a program — and the transcript:
//! everything but the commit, which [`crate::engine::loop_run::execute`] makes for every
//! kind of run alike.

use crate::engine::run_context::{RunContext, RunRequest};
use chrono::{DateTime, Utc};
use loops_agent::agent_loop::End;
use loops_agent::context::{self, Dynamic};
use loops_agent::model::{Message, SystemPart, Usage};
use loops_agent::sandbox::{Sandbox, Scope};
use loops_agent::session::{
    Limits, ModelChoice, SessionRun, SessionSpec, TimeLimit, TranscriptSpec,
};
use loops_agent::tools::{ShellSpec, ToolEnv, ToolKit};
use loops_agent::transcript::{Redactor, Transcript};
use loops_core::domain::{LoopDef, Payload};
use loops_core::exec::{self, ExecSpec};
use loops_core::guard::Guard;
use loops_core::providers::ProviderConfig;
use loops_core::runs::{Outcome, RunInProgress, RunRecord};
use loops_core::state::LoopState;
use loops_core::text::is_silent_token;
use loops_core::tool_names::ISOLATED_DEFAULT;
use loops_core::workspace::Workspace;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What a prompt run did, before the commit.
#[derive(Debug, Clone, Default)]
pub struct PromptOutcome {
    pub outcome: Option<Outcome>,
    /// Set when the run said "silent" but may still have changed files.
    pub said_silent: bool,
    pub error: Option<String>,
    pub note: Option<String>,
    pub summary: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub tokens: Option<Usage>,
    /// `tokens` by the provider and model that answered (more than one after a fallback
    /// mid-run).
    pub usage_by_model: Vec<loops_agent::agent_loop::ModelUsage>,
    pub turns: Option<u32>,
    /// Each move to a fallback provider, `from -> to`.
    pub fallbacks: Vec<String>,
    pub transcript: Option<PathBuf>,
    pub refused: Vec<String>,
    pub deliveries: Vec<loops_core::channels::DeliveryNote>,
    /// Files the tools wrote (absolute), committed with the run.
    pub wrote: Vec<PathBuf>,
    /// The agent was an outside program (a `command` provider) that writes files itself,
    /// not through loops' tools: its changes are told apart as a command loop's are.
    pub writes_itself: bool,
    pub exit_code: Option<i32>,
    /// An adaptive loop's model asked to look again this long after the run.
    pub next_check: Option<Duration>,
    /// The conversation failed as the same request would fail again (a refused request,
    /// a cut reply): the run is not retried.
    pub permanent: bool,
    /// The model the run asked for (`model` is what the provider says answered): a
    /// price is looked up by the one, else the other.
    pub asked_model: Option<String>,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub duration: Duration,
}

impl PromptOutcome {
    pub(crate) fn failed(error: String) -> Self {
        PromptOutcome {
            outcome: Some(Outcome::Failed),
            error: Some(error),
            ..Default::default()
        }
    }

    /// What a session's end means for a run (of a loop, or of the main session): its
    /// outcome, its error, and notes on refused tool calls and missing MCP tools.
    pub(crate) fn of_session(run: &SessionRun, asked: &ModelChoice) -> PromptOutcome {
        let (driven, kit) = (&run.driven, &run.kit);
        let mut out = PromptOutcome {
            tokens: Some(driven.usage),
            usage_by_model: driven.usage_by_model.clone(),
            turns: Some(driven.turns),
            fallbacks: driven.fallbacks.clone(),
            model: Some(run.model(asked)),
            asked_model: Some(asked.model.clone()),
            permanent: driven.permanent,
            summary: driven.summary(),
            refused: kit.refused.clone(),
            deliveries: kit.deliveries.clone(),
            wrote: kit.wrote.iter().cloned().collect(),
            ..Default::default()
        };
        out.judge_end(&driven.end, driven.turns, acted_by_tools(kit));
        if let End::Finished(f) = &driven.end {
            out.next_check = f.next_check;
        }
        if !kit.refused.is_empty() {
            out.add_note(format!("refused tool call(s): {}", kit.refused.join(", ")));
        }
        if !kit.mcp_errors.is_empty() {
            // The run went on without those tools; the record says which and why.
            out.add_note(format!("mcp: {}", kit.mcp_errors.join("; ")));
        }
        out
    }

    /// What the run's tokens cost, estimated: each model's turns at its own price.
    pub(crate) fn cost_estimate(&self, s: &loops_core::workspace::Settings) -> Option<f64> {
        let total = self.tokens.as_ref()?;
        let models = [self.model.as_deref(), self.asked_model.as_deref()];
        crate::engine::budget::cost_of_turns(
            s,
            self.provider.as_deref(),
            &models,
            total,
            &self.usage_by_model,
        )
    }

    /// Sets the outcome (and the error, or the note) for how the conversation ended.
    /// `acted`: the tools did something (wrote, handed off, posted, completed), so a run
    /// that says it had nothing to do still acted.
    fn judge_end(&mut self, end: &End, turns: u32, acted: bool) {
        let quiet = |silent: bool| {
            if silent && !acted {
                Outcome::Silent
            } else {
                Outcome::Acted
            }
        };
        self.outcome = Some(match end {
            End::Finished(f) => {
                self.said_silent = f.silent;
                quiet(f.silent)
            }
            End::SilentToken(t) => {
                self.said_silent = true;
                self.note = Some(format!("answered {t}"));
                quiet(true)
            }
            End::Answered(t) => quiet(t.trim().is_empty()),
            End::MaxTurns(n) => {
                self.error = Some(format!(
                    "stopped after {n} model turns without finishing (raise `max_turns`, or make the prompt end with `finish`)"
                ));
                Outcome::Failed
            }
            End::Timeout => {
                self.error = Some(format!(
                    "timed out after {turns} turn(s); the conversation was stopped"
                ));
                Outcome::Timeout
            }
            End::Cancelled | End::Paused => {
                self.error = Some("interrupted".into());
                Outcome::Interrupted
            }
            End::Failed(e) => {
                self.error = Some(e.clone());
                Outcome::Failed
            }
        });
    }

    fn add_note(&mut self, n: String) {
        self.note = Some(match self.note.take() {
            Some(o) => format!("{o}; {n}"),
            None => n,
        });
    }

    /// The transcript's last line: how the run ended.
    pub(crate) fn note_end(&self, tr: &mut Transcript) {
        tr.note(&format!(
            "outcome: {}{}",
            self.outcome.unwrap_or(Outcome::Silent),
            self.error
                .as_deref()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        ));
    }

    /// Writes what the run did into its record. `changed` says whether any file in the
    /// loop's areas changed: a run that said "silent" but changed files acted.
    pub fn fill(self, rec: &mut RunRecord, ws: &Workspace, changed: bool) {
        rec.cost_estimate = self.cost_estimate(&ws.settings);
        let redactor = Redactor::for_settings(&ws.settings);
        let mut outcome = self.outcome.unwrap_or(Outcome::Silent);
        let mut note = self.note;
        // A run that said "silent" but changed files acted; the record says so (also when
        // its own tools already made it `acted`), keeping any other note.
        let contradicted = self.said_silent && matches!(outcome, Outcome::Silent | Outcome::Acted);
        if changed && (outcome == Outcome::Silent || contradicted) {
            outcome = Outcome::Acted;
            if self.said_silent {
                let n = "the model said there was nothing to do, but files changed: committed";
                note = Some(match note.take() {
                    Some(old) => format!("{n}; {old}"),
                    None => n.to_string(),
                });
            }
        }
        rec.outcome = outcome;
        rec.permanent_failure |= self.permanent && outcome == Outcome::Failed;
        rec.error = self.error.map(|e| redactor.redact(&e));
        if note.is_some() {
            rec.note = note.map(|n| redactor.redact(&n));
        }
        rec.summary = self.summary.map(|s| redactor.redact(&s));
        rec.next_check = self
            .next_check
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| chrono::Utc::now() + d);
        rec.provider = self.provider;
        rec.model = self.model;
        rec.tokens = self.tokens;
        rec.turns = self.turns;
        rec.fallbacks = self.fallbacks;
        rec.transcript = self
            .transcript
            .map(|p| ws.relative(&p).display().to_string());
        rec.refused_tools = self.refused;
        rec.deliveries = self.deliveries;
        rec.exit_code = self.exit_code;
        rec.stdout_tail = redactor.redact(&self.stdout_tail);
        rec.stderr_tail = redactor.redact(&self.stderr_tail);
        rec.duration_ms = self.duration.as_millis() as u64;
    }
}

/// Whether the tools did something a run is `acted` for, whatever the model said.
fn acted_by_tools(kit: &ToolKit) -> bool {
    !kit.wrote.is_empty()
        || !kit.handoffs.is_empty()
        || kit.delivered > 0
        || !kit.completed.is_empty()
}

/// The tools a loop is offered: its `tools:` list, else the isolated default.
pub(crate) fn loop_tools(def: &LoopDef) -> Vec<String> {
    match &def.tools {
        Some(t) => t.clone(),
        None => ISOLATED_DEFAULT.iter().map(|s| s.to_string()).collect(),
    }
}

/// The collection window's start and how it was computed.
fn window(def: &LoopDef, state: Option<&LoopState>) -> (Option<DateTime<Utc>>, String) {
    let start = crate::engine::run_context::window_start(def, state);
    let rule = match def.overlap {
        Some(o) => format!(
            "the last successful run minus the {} overlap",
            loops_core::duration::format_duration(o)
        ),
        None => "the last successful run minus 10 % of the interval".to_string(),
    };
    (start, rule)
}
/// Runs the loop's `gate:`. `Ok(Some(text))`: go on, with what it printed; `Ok(None)`:
/// nothing to do (it printed nothing or exited non-zero) — a silent run at zero tokens.
async fn run_gate(
    argv: &[String],
    def: &LoopDef,
    env: Vec<(String, String)>,
    deadline: Instant,
    cancel: Option<watch::Receiver<bool>>,
) -> Result<Option<String>, PromptOutcome> {
    let spec = ExecSpec {
        argv: argv.to_vec(),
        cwd: def.dir.clone(),
        env,
        timeout: deadline.saturating_duration_since(Instant::now()),
        grace: exec::KILL_GRACE,
        on_spawn: None,
        stdin: None,
    };
    let res = exec::run(&spec, None, cancel).await;
    if res.cancelled {
        return Err(PromptOutcome {
            outcome: Some(Outcome::Interrupted),
            error: Some("interrupted during the gate".into()),
            ..Default::default()
        });
    }
    if res.timed_out {
        return Err(PromptOutcome {
            outcome: Some(Outcome::Timeout),
            error: Some(format!(
                "the gate command timed out after {}",
                loops_core::duration::format_duration(def.timeout)
            )),
            ..Default::default()
        });
    }
    if let Some(e) = &res.spawn_error {
        return Err(PromptOutcome::failed(format!(
            "the gate command could not start: {e} (check `gate:` in domains/{}/config.yaml)",
            def.name
        )));
    }
    if !res.success() || res.stdout_tail.trim().is_empty() {
        let why = if res.success() {
            "the gate printed nothing: nothing to do".to_string()
        } else {
            format!(
                "the gate said nothing to do ({})",
                res.failure_reason(def.timeout).unwrap_or_default()
            )
        };
        return Err(PromptOutcome {
            outcome: Some(Outcome::Silent),
            note: Some(why),
            exit_code: res.exit_code,
            stderr_tail: res.stderr_tail,
            duration: res.duration,
            tokens: Some(Usage::default()),
            ..Default::default()
        });
    }
    Ok(Some(res.stdout_tail))
}

/// Runs a prompt loop once.
pub async fn run(
    ctx: &RunContext,
    def: &LoopDef,
    req: &RunRequest,
    state: Option<&LoopState>,
    marker: &RunInProgress,
    live: Option<loops_core::exec::Live>,
    cancel: Option<watch::Receiver<bool>>,
) -> PromptOutcome {
    let started = std::time::Instant::now();
    let deadline = Instant::now() + def.timeout;
    let Payload::Prompt {
        model,
        provider,
        options,
    } = &def.payload
    else {
        return PromptOutcome::failed("not a prompt loop".into());
    };
    let mut choice =
        match ModelChoice::resolve(&ctx.ws.settings, provider.as_deref(), model.as_deref()) {
            Ok(c) => c,
            Err(e) => return PromptOutcome::failed(e.to_string()),
        };
    // The loop's request options lie over its provider's, key by key.
    choice.provider.options = choice.provider.options.overridden_by(options);
    let now = Utc::now();
    let held = crate::engine::budget::held_until(def, state, now);
    if let Some(why) = held.or_else(|| crate::engine::budget::over_today(ctx, def, now)) {
        crate::engine::budget::hold_for_the_day(ctx, def, &req.run_id, &why, now).await;
        let mut out = PromptOutcome {
            outcome: Some(Outcome::Budget),
            error: Some(format!("not started: {why}")),
            provider: Some(choice.provider.name.clone()),
            ..Default::default()
        };
        out.duration = started.elapsed();
        return out;
    }
    let mut env = crate::engine::run_context::run_env(&ctx.ws, def, &req.run_id, state);
    env.push(("LOOPS_WINDOW_END".into(), now.to_rfc3339()));
    let run = PromptRun {
        ctx,
        def,
        req,
        state,
        now,
        deadline,
        env,
    };
    let mut out = match run.prompt(cancel.clone()).await {
        Err(mut out) => {
            out.duration = started.elapsed();
            out
        }
        Ok(prompt) => {
            let tpath = Transcript::path_for(&ctx.ws.layout().runs_dir(), &def.name, &req.run_id);
            let mut tr = run.transcript(&choice, tpath.clone(), live);
            let mut out = if choice.is_agent_cli() {
                run.agent_cli(&choice.provider, prompt, marker, cancel, &mut tr)
                    .await
            } else {
                run.session(&choice, prompt, marker, cancel, &mut tr).await
            };
            if out.model.is_none() {
                out.model = Some(choice.model.clone());
            }
            out.transcript = Some(tpath);
            out.duration = started.elapsed();
            out.note_end(&mut tr);
            out
        }
    };
    out.provider = Some(choice.provider.name);
    out
}

/// One prompt run, as [`run`] was given it.
struct PromptRun<'a> {
    ctx: &'a RunContext,
    def: &'a LoopDef,
    req: &'a RunRequest,
    state: Option<&'a LoopState>,
    /// When it started: the prompt's "now" and the collection window's end.
    now: DateTime<Utc>,
    /// The loop's `timeout:`, counted from the start: the gate's time is the run's.
    deadline: Instant,
    /// The environment of the gate, the `shell` tool and an agent CLI.
    env: Vec<(String, String)>,
}

/// A run's prompt: the stable part (before the guard's rules) and the dynamic message.
struct LoopPrompt {
    system: Vec<SystemPart>,
    dynamic: String,
}

impl PromptRun<'_> {
    /// The gate, then the prompt. `Err`: the run ends here (the gate found nothing to
    /// do, or failed; prompt.md is gone).
    async fn prompt(
        &self,
        cancel: Option<watch::Receiver<bool>>,
    ) -> Result<LoopPrompt, PromptOutcome> {
        // The gate runs before any model call: a quiet channel costs nothing.
        let collected = match &self.def.gate {
            Some(argv) => run_gate(argv, self.def, self.env.clone(), self.deadline, cancel).await?,
            None => None,
        };
        let system = self.system().map_err(PromptOutcome::failed)?;
        Ok(LoopPrompt {
            system,
            dynamic: self.dynamic(collected.as_deref()),
        })
    }

    /// Whether the loop runs in the main session's context (`session: main`).
    fn main_scope(&self) -> bool {
        self.def.session == loops_core::domain::Session::Main
    }

    /// The never-share rules of this loop: loops.yaml's, then its own.
    fn guard(&self) -> Guard {
        Guard::new(&self.ctx.ws.settings.guard, Some(&self.def.guard))
    }

    /// The stable part: preamble, prompt.md, settings, state.md; and for a loop in the
    /// main session's context, its identity and memory too.
    fn system(&self) -> Result<Vec<SystemPart>, String> {
        let (ws, def) = (&self.ctx.ws, self.def);
        // Checked when the loop was loaded, but it may have gone or been broken since: a
        // run without its instructions must fail, not talk to the model with an empty
        // prompt.
        let prompt = std::fs::read_to_string(def.dir.join("prompt.md")).map_err(|e| {
            format!(
                "cannot read domains/{}/prompt.md: {e}; restore it (as UTF-8 text), then `loops check`",
                def.name
            )
        })?;
        // A state.md that is there but cannot be read would be left out without a word,
        // and the model, seeing no state, would write a fresh one over the old.
        let state_md = match std::fs::read_to_string(def.dir.join("state.md")) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(format!(
                    "cannot read domains/{}/state.md: {e}; save it as UTF-8 text (or remove it to start the loop's state afresh), then the next run reads it",
                    def.name
                ))
            }
        };
        let settings_yaml = if def.settings.is_empty() {
            String::new()
        } else {
            yaml_serde::to_string(&def.settings).unwrap_or_default()
        };
        let mut system =
            context::loop_system(&def.name, &prompt, &settings_yaml, state_md.as_deref());
        if self.main_scope() {
            let files = ws
                .settings
                .main
                .as_ref()
                .map(|m| m.context.clone())
                .unwrap_or_else(|| {
                    loops_core::workspace::DEFAULT_MAIN_CONTEXT
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                });
            if let Some(id) = context::identity_part(&context::read_identity(&ws.root, &files)) {
                system.insert(1, id);
            }
        }
        Ok(system)
    }

    /// The dynamic message: now, the trigger, the window, the last run, what the gate
    /// collected.
    fn dynamic(&self, collected: Option<&str>) -> String {
        let (window_start, window_rule) = window(self.def, self.state);
        let last_run = self
            .state
            .and_then(|s| s.last_run.as_ref())
            .map(|r| (r.outcome.clone(), r.finished, r.error.clone()));
        context::dynamic_message(&Dynamic {
            now: self.now,
            tz: self.def.schedule.tz,
            trigger: self.req.trigger.as_str(),
            window_start,
            window_rule,
            last_run,
            collected,
            steering: &[],
        })
    }

    fn transcript(
        &self,
        choice: &ModelChoice,
        path: PathBuf,
        live: Option<loops_core::exec::Live>,
    ) -> Transcript {
        let mut facts = vec![
            ("trigger", self.req.trigger.as_str().to_string()),
            ("started", self.now.to_rfc3339()),
        ];
        facts.extend(choice.facts());
        TranscriptSpec {
            path,
            title: format!("{} — run {}", self.def.name, self.req.run_id),
            facts,
            echo: live,
        }
        .open(&self.ctx.ws.settings)
    }

    /// The conversation on an HTTP provider, with the loop's tools.
    async fn session(
        &self,
        choice: &ModelChoice,
        prompt: LoopPrompt,
        marker: &RunInProgress,
        cancel: Option<watch::Receiver<bool>>,
        tr: &mut Transcript,
    ) -> PromptOutcome {
        let budget = crate::engine::budget::RunBudget::for_run(self.ctx, self.def, self.now);
        let mut hooks = crate::engine::budget::RunHooks::new(self.ctx, budget, marker);
        let spec = SessionSpec {
            model: choice,
            tools: self.tool_env(),
            system: prompt.system,
            messages: vec![Message::user_text(prompt.dynamic)],
            limits: Limits {
                max_turns: self.def.max_turns,
                time: TimeLimit::Until(self.deadline),
            },
            cancel,
            hooks: Some(&mut hooks),
        };
        let mut out = match spec.run(tr).await {
            Ok(run) => PromptOutcome::of_session(&run, choice),
            Err(e) => PromptOutcome::failed(e.to_string()),
        };
        if let Some(stop) = hooks.budget.and_then(|b| b.stopped) {
            tr.note(&format!("budget: {}", stop.why));
            if stop.daily {
                // The next run would stop after its first turn too: the day is spent.
                crate::engine::budget::hold_for_the_day(
                    self.ctx,
                    self.def,
                    &self.req.run_id,
                    &stop.why,
                    self.now,
                )
                .await;
            }
            out.outcome = Some(Outcome::Budget);
            out.error = Some(stop.why);
        }
        out
    }

    fn tool_env(&self) -> ToolEnv {
        let (ws, def) = (&self.ctx.ws, self.def);
        let lists_shell = def
            .tools
            .as_ref()
            .is_some_and(|t| t.iter().any(|x| x == "shell"));
        let shell = (lists_shell && ws.settings.allow_shell_tool).then(|| ShellSpec {
            cwd: def.dir.clone(),
            env: self.env.clone(),
        });
        ToolEnv {
            ws: ws.clone(),
            sandbox: loop_sandbox(&ws.root, def, self.main_scope()),
            loop_name: def.name.clone(),
            run_id: self.req.run_id.clone(),
            allowed: loop_tools(def),
            allowed_hosts: def.allowed_hosts.clone(),
            shell,
            committer: self.ctx.committer.clone(),
            claimed: Vec::new(),
            guard: self.guard(),
            delivery_scope: crate::engine::run_context::delivery_scope(def, self.req),
            next_check: def.schedule.adaptive.map(|a| (a.min, a.max)),
        }
    }

    /// A `kind: command` provider: an agent CLI that does its own tool loop. It gets the
    /// assembled prompt on stdin, runs in the workspace root in its own process group
    /// under the loop's timeout, and its final text is the run's summary.
    async fn agent_cli(
        &self,
        pcfg: &ProviderConfig,
        prompt: LoopPrompt,
        marker: &RunInProgress,
        cancel: Option<watch::Receiver<bool>>,
        tr: &mut Transcript,
    ) -> PromptOutcome {
        let Some(argv) = pcfg.command.clone() else {
            return PromptOutcome::failed(format!("provider `{}` has no `command`", pcfg.name));
        };
        let stdin = self.agent_cli_prompt(prompt);
        let mut env = self.env.clone();
        for name in &pcfg.env {
            if let Ok(v) = loops_core::secrets::var(name) {
                env.retain(|(k, _)| k != name);
                env.push((name.clone(), v));
            }
        }
        tr.write(&format!("## Prompt (on stdin of `{}`)\n\n", argv.join(" ")));
        tr.message(&Message::user_text(stdin.clone()), "");
        let (spawn_tx, mut spawn_rx) = mpsc::unbounded_channel();
        let spec = ExecSpec {
            argv,
            cwd: self.ctx.ws.root.clone(),
            env,
            timeout: self.deadline.saturating_duration_since(Instant::now()),
            grace: exec::KILL_GRACE,
            on_spawn: Some(spawn_tx),
            stdin: Some(stdin.into_bytes()),
        };
        // The run owns the spec, so the spawn sender goes when the run ends: an agent CLI
        // that cannot start does not leave `note_pgid` waiting for a pid forever.
        let run = async move { exec::run(&spec, None, cancel).await };
        let (res, ()) = tokio::join!(
            run,
            crate::engine::run_context::note_pgid(self.ctx, marker, &mut spawn_rx)
        );
        let text = res.stdout_tail.trim().to_string();
        tr.message(&Message::assistant_text(text.clone()), " (final text)");
        if !res.stderr_tail.trim().is_empty() {
            tr.note(&format!("stderr:\n{}", res.stderr_tail.trim_end()));
        }
        agent_cli_outcome(res, text, self.def.timeout)
    }

    /// The whole prompt as one text. An agent CLI is not a session, so the never-share
    /// rules are added here, where a session adds them itself.
    fn agent_cli_prompt(&self, prompt: LoopPrompt) -> String {
        let mut system = prompt.system;
        context::add_rules(&mut system, &self.guard());
        let mut text = String::new();
        for p in &system {
            text.push_str(&p.text);
            text.push_str("\n\n");
        }
        text.push_str(&prompt.dynamic);
        text.push('\n');
        text
    }
}

/// How an agent CLI's run ended, as a run's outcome: its final text is the summary.
fn agent_cli_outcome(res: exec::ExecResult, text: String, timeout: Duration) -> PromptOutcome {
    let mut out = PromptOutcome {
        exit_code: res.exit_code,
        stdout_tail: res.stdout_tail.clone(),
        stderr_tail: res.stderr_tail.clone(),
        error: res.failure_reason(timeout),
        turns: Some(1),
        writes_itself: true,
        ..Default::default()
    };
    out.outcome = Some(if res.cancelled {
        Outcome::Interrupted
    } else if res.timed_out {
        Outcome::Timeout
    } else if !res.success() {
        Outcome::Failed
    } else if text.is_empty() || is_silent_token(&text) {
        out.said_silent = true;
        Outcome::Silent
    } else {
        out.summary = Some(text);
        Outcome::Acted
    });
    out
}

/// The sandbox of one run of `def`: its scope, and the walls read from the configs now,
/// with the loop's own `reads:` and `edit_prompt:` as its parsed config says.
fn loop_sandbox(root: &std::path::Path, def: &LoopDef, main_scope: bool) -> Sandbox {
    let scope = if main_scope {
        Scope::Main
    } else {
        Scope::Isolated {
            loop_name: def.name.clone(),
        }
    };
    let mut walls = loops_agent::sandbox::Walls::load(root, &scope);
    walls.reads = def.reads.clone();
    walls.edit_prompt = def.edit_prompt;
    Sandbox::with_walls(root, scope, walls)
}
