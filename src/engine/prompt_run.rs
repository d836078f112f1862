//! One run of a prompt loop: the gate, the context, the provider (HTTP or an agent CLI),
//! the tools, the transcript — everything but the commit, which [`crate::engine::loop_run::execute`]
//! makes for every kind of run alike.

use crate::engine::run_context::{RunContext, RunRequest};
use chrono::{DateTime, Utc};
use loops_agent::context::{self, Dynamic};
use loops_agent::model::{Message, Usage};
use loops_agent::provider::HttpProvider;
use loops_agent::run::{drive, Drive, End};
use loops_agent::sandbox::{Sandbox, Scope};
use loops_agent::tools::{ShellSpec, ToolEnv, ToolKit};
use loops_agent::transcript::{Redactor, Transcript};
use loops_core::domain::{LoopDef, Payload};
use loops_core::exec::{self, ExecSpec};
use loops_core::providers::{ProviderConfig, ProviderKind};
use loops_core::runs::{Outcome, RunRecord, RunningMarker};
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
    pub turns: Option<u32>,
    pub transcript: Option<PathBuf>,
    pub refused: Vec<String>,
    pub deliveries: Vec<loops_core::channels::DeliveryNote>,
    /// Files the tools wrote (absolute), committed with the run.
    pub wrote: Vec<PathBuf>,
    /// The agent was an outside program (a `command` provider) that writes files itself,
    /// not through loops' tools: its changes are told apart as a command loop's are.
    pub writes_itself: bool,
    pub exit_code: Option<i32>,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub duration: Duration,
}

impl PromptOutcome {
    fn failed(error: String) -> Self {
        PromptOutcome {
            outcome: Some(Outcome::Failed),
            error: Some(error),
            ..Default::default()
        }
    }

    /// Writes what the run did into its record. `changed` says whether any file in the
    /// loop's areas changed: a run that said "silent" but changed files acted.
    pub fn fill(self, rec: &mut RunRecord, ws: &Workspace, changed: bool) {
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
        rec.error = self.error.map(|e| redactor.redact(&e));
        if note.is_some() {
            rec.note = note.map(|n| redactor.redact(&n));
        }
        rec.summary = self.summary.map(|s| redactor.redact(&s));
        rec.provider = self.provider;
        rec.model = self.model;
        rec.tokens = self.tokens;
        rec.turns = self.turns;
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

/// The tools a loop is offered: its `tools:` list, else the isolated default.
pub fn loop_tools(def: &LoopDef) -> Vec<String> {
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
    marker: &RunningMarker,
    live: Option<loops_core::exec::Live>,
    cancel: Option<watch::Receiver<bool>>,
) -> PromptOutcome {
    let started = std::time::Instant::now();
    let deadline = Instant::now() + def.timeout;
    let ws = &ctx.ws;
    let Payload::Prompt { model, provider } = &def.payload else {
        return PromptOutcome::failed("not a prompt loop".into());
    };
    let (pcfg, model) = match loops_core::providers::resolve(
        &ws.settings.providers,
        &ws.settings.defaults,
        provider.as_deref(),
        model.as_deref(),
    ) {
        Ok(r) => r,
        Err((msg, help)) => return PromptOutcome::failed(format!("{msg} ({help})")),
    };
    let mut env = crate::engine::run_context::run_env(ws, def, &req.run_id, state);
    let (window_start, window_rule) = window(def, state);
    let now = Utc::now();
    env.push(("LOOPS_WINDOW_END".into(), now.to_rfc3339()));

    // The gate runs before any model call: a quiet channel costs nothing.
    let collected = match &def.gate {
        Some(argv) => match run_gate(argv, def, env.clone(), deadline, cancel.clone()).await {
            Ok(c) => c,
            Err(mut o) => {
                o.provider = Some(pcfg.name.clone());
                o.duration = started.elapsed();
                return o;
            }
        },
        None => None,
    };

    // Checked when the loop was loaded, but it may have gone or been broken since: a run
    // without its instructions must fail, not talk to the model with an empty prompt.
    let prompt = match std::fs::read_to_string(def.dir.join("prompt.md")) {
        Ok(p) => p,
        Err(e) => {
            let mut o = PromptOutcome::failed(format!(
                "cannot read domains/{}/prompt.md: {e}; restore it (as UTF-8 text), then `loops check`",
                def.name
            ));
            o.provider = Some(pcfg.name.clone());
            o.duration = started.elapsed();
            return o;
        }
    };
    let state_md = std::fs::read_to_string(def.dir.join("state.md")).ok();
    let settings_yaml = if def.settings.is_empty() {
        String::new()
    } else {
        yaml_serde::to_string(&def.settings).unwrap_or_default()
    };
    let mut system = context::loop_system(&def.name, &prompt, &settings_yaml, state_md.as_deref());
    context::add_rules(
        &mut system,
        &loops_core::guard::Guard::new(&ws.settings.guard, Some(&def.guard)),
    );
    let main_scope = def.session == loops_core::domain::Session::Main;
    if main_scope {
        // A loop in the main session's context gets its identity and memory too.
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
        let identity: Vec<(String, Option<String>)> = files
            .iter()
            .map(|f| (f.clone(), std::fs::read_to_string(ws.root.join(f)).ok()))
            .collect();
        if let Some(id) = context::identity_part(&identity) {
            system.insert(1, id);
        }
    }
    let last_run = state
        .and_then(|s| s.last_run.as_ref())
        .map(|r| (r.outcome.clone(), r.finished, r.error.clone()));
    let dynamic = context::dynamic_message(&Dynamic {
        now,
        tz: def.schedule.tz,
        trigger: req.trigger.as_str(),
        window_start,
        window_rule,
        last_run,
        collected: collected.as_deref(),
        steering: &[],
    });
    let redactor = Redactor::for_settings(&ws.settings);
    let tpath = Transcript::path_for(&ws.runs_dir(), &def.name, &req.run_id);
    let mut tr = Transcript::create(tpath.clone(), redactor);
    tr.echo_to(live);
    tr.header(
        &format!("{} — run {}", def.name, req.run_id),
        &[
            ("trigger", req.trigger.as_str().to_string()),
            ("started", now.to_rfc3339()),
            (
                "provider",
                format!("{} ({})", pcfg.name, pcfg.kind.as_str()),
            ),
            ("model", model.clone()),
        ],
    );

    let mut out = if pcfg.kind == ProviderKind::Command {
        command_provider(
            ctx, def, &pcfg, &system, &dynamic, env, deadline, marker, cancel, &mut tr,
        )
        .await
    } else {
        let shell = (def
            .tools
            .as_ref()
            .is_some_and(|t| t.iter().any(|x| x == "shell"))
            && ws.settings.allow_shell_tool)
            .then(|| ShellSpec {
                cwd: def.dir.clone(),
                env: env.clone(),
            });
        let mut kit = ToolKit::new(ToolEnv {
            ws: ws.clone(),
            sandbox: loop_sandbox(&ws.root, def, main_scope),
            loop_name: def.name.clone(),
            run_id: req.run_id.clone(),
            allowed: loop_tools(def),
            allowed_hosts: def.allowed_hosts.clone(),
            shell,
            committer: ctx.committer.clone(),
            claimed: Vec::new(),
            guard: loops_core::guard::Guard::new(&ws.settings.guard, Some(&def.guard)),
            delivery_scope: crate::engine::run_context::delivery_scope(def, req),
        });
        kit.load_mcp().await;
        http_provider(
            &pcfg,
            &model,
            def.max_turns,
            &system,
            vec![Message::user_text(dynamic)],
            deadline,
            cancel,
            kit,
            &mut tr,
        )
        .await
        .0
    };
    out.provider = Some(pcfg.name.clone());
    if out.model.is_none() {
        out.model = Some(model);
    }
    out.transcript = Some(tpath);
    out.duration = started.elapsed();
    tr.note(&format!(
        "outcome: {}{}",
        out.outcome.unwrap_or(Outcome::Silent),
        out.error
            .as_deref()
            .map(|e| format!(" — {e}"))
            .unwrap_or_default()
    ));
    out
}

/// Drives the conversation on an HTTP provider and maps how it ended to an outcome.
/// Also returns the conversation and the tool kit (the main session needs both).
#[allow(clippy::too_many_arguments)]
pub async fn http_provider(
    pcfg: &ProviderConfig,
    model: &str,
    max_turns: u32,
    system: &[loops_agent::model::SystemPart],
    messages: Vec<Message>,
    deadline: Instant,
    cancel: Option<watch::Receiver<bool>>,
    mut kit: ToolKit,
    tr: &mut Transcript,
) -> (PromptOutcome, Vec<Message>, ToolKit) {
    let provider = match HttpProvider::new(pcfg) {
        Ok(p) => p,
        Err(e) => return (PromptOutcome::failed(e.to_string()), messages, kit),
    };
    for e in &kit.mcp_errors {
        tr.note(&format!("mcp: {e}"));
    }
    let driven = drive(
        Drive {
            provider: &provider,
            model,
            max_tokens: pcfg.max_tokens,
            system,
            messages,
            max_turns,
            deadline,
            cancel,
            hooks: None,
        },
        &mut kit,
        tr,
    )
    .await;
    let mut out = PromptOutcome {
        tokens: Some(driven.usage),
        turns: Some(driven.turns),
        model: driven.model.clone().or_else(|| Some(model.to_string())),
        summary: driven.summary(),
        refused: kit.refused.clone(),
        deliveries: kit.deliveries.clone(),
        wrote: kit.wrote.iter().cloned().collect(),
        ..Default::default()
    };
    let acted_by_tools = !kit.wrote.is_empty()
        || !kit.handoffs.is_empty()
        || kit.delivered > 0
        || !kit.completed.is_empty();
    match &driven.end {
        End::Finished(f) => {
            out.said_silent = f.silent;
            out.outcome = Some(if f.silent && !acted_by_tools {
                Outcome::Silent
            } else {
                Outcome::Acted
            });
        }
        End::SilentToken(t) => {
            out.said_silent = true;
            out.outcome = Some(if acted_by_tools {
                Outcome::Acted
            } else {
                Outcome::Silent
            });
            out.note = Some(format!("answered {t}"));
        }
        End::Answered(t) => {
            out.outcome = Some(if t.trim().is_empty() && !acted_by_tools {
                Outcome::Silent
            } else {
                Outcome::Acted
            });
        }
        End::MaxTurns(n) => {
            out.outcome = Some(Outcome::Failed);
            out.error = Some(format!(
                "stopped after {n} model turns without finishing (raise `max_turns`, or make the prompt end with `finish`)"
            ));
        }
        End::Timeout => {
            out.outcome = Some(Outcome::Timeout);
            out.error = Some(format!(
                "timed out after {} turn(s); the conversation was stopped",
                driven.turns
            ));
        }
        End::Cancelled | End::Paused => {
            out.outcome = Some(Outcome::Interrupted);
            out.error = Some("interrupted".into());
        }
        End::Failed(e) => {
            out.outcome = Some(Outcome::Failed);
            out.error = Some(e.clone());
        }
    }
    if !kit.refused.is_empty() {
        let n = format!("refused tool call(s): {}", kit.refused.join(", "));
        out.note = Some(match out.note.take() {
            Some(o) => format!("{o}; {n}"),
            None => n,
        });
    }
    if !kit.mcp_errors.is_empty() {
        // The run went on without those tools; the record says which and why.
        let n = format!("mcp: {}", kit.mcp_errors.join("; "));
        out.note = Some(match out.note.take() {
            Some(o) => format!("{o}; {n}"),
            None => n,
        });
    }
    (out, driven.messages, kit)
}

/// A `kind: command` provider: an agent CLI that does its own tool loop. It gets the
/// assembled prompt on stdin, runs in the workspace root in its own process group under
/// the loop's timeout, and its final text is the run's summary.
#[allow(clippy::too_many_arguments)]
async fn command_provider(
    ctx: &RunContext,
    def: &LoopDef,
    pcfg: &ProviderConfig,
    system: &[loops_agent::model::SystemPart],
    dynamic: &str,
    mut env: Vec<(String, String)>,
    deadline: Instant,
    marker: &RunningMarker,
    cancel: Option<watch::Receiver<bool>>,
    tr: &mut Transcript,
) -> PromptOutcome {
    let Some(argv) = pcfg.command.clone() else {
        return PromptOutcome::failed(format!("provider `{}` has no `command`", pcfg.name));
    };
    let mut prompt = String::new();
    for p in system {
        prompt.push_str(&p.text);
        prompt.push_str("\n\n");
    }
    prompt.push_str(dynamic);
    prompt.push('\n');
    for name in &pcfg.env {
        if let Ok(v) = loops_core::secrets::var(name) {
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), v));
        }
    }
    tr.write(&format!("## Prompt (on stdin of `{}`)\n\n", argv.join(" ")));
    tr.message(&Message::user_text(prompt.clone()), "");
    let (spawn_tx, mut spawn_rx) = mpsc::unbounded_channel();
    let spec = ExecSpec {
        argv,
        cwd: ctx.ws.root.clone(),
        env,
        timeout: deadline.saturating_duration_since(Instant::now()),
        grace: exec::KILL_GRACE,
        on_spawn: Some(spawn_tx),
        stdin: Some(prompt.into_bytes()),
    };
    // The run owns the spec, so the spawn sender goes when the run ends: an agent CLI
    // that cannot start does not leave `note_pgid` waiting for a pid forever.
    let run = async move { exec::run(&spec, None, cancel).await };
    let (res, ()) = tokio::join!(
        run,
        crate::engine::run_context::note_pgid(ctx, marker, &mut spawn_rx)
    );
    let text = res.stdout_tail.trim().to_string();
    tr.message(&Message::assistant_text(text.clone()), " (final text)");
    if !res.stderr_tail.trim().is_empty() {
        tr.note(&format!("stderr:\n{}", res.stderr_tail.trim_end()));
    }
    let mut out = PromptOutcome {
        exit_code: res.exit_code,
        stdout_tail: res.stdout_tail.clone(),
        stderr_tail: res.stderr_tail.clone(),
        error: res.failure_reason(def.timeout),
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
