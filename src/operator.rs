//! What a person — or an agent acting for one over MCP — does to a workspace from outside
//! the daemon: see the loops with their next and last runs, run one now, read the inbox,
//! and complete a handoff. The command line prints these results and the MCP server
//! ([`crate::mcp`]) returns them, so the two always say the same thing.

use crate::engine::main_session::{InboxState, Note};
use crate::engine::run_context::{RunContext, RunRequest, Trigger};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use loops_core::diag::Diagnostic;
use loops_core::domain::{discover, load_domain, Concurrency, DomainEntry, LoopDef, Payload};
use loops_core::handoff::{Handoff, HandoffError, Inbox, Stage};
use loops_core::history::{commit_message, CommitRequest, Committer};
use loops_core::runs::RunRecord;
use loops_core::runs::{RunInProgress, RunningSet};
use loops_core::schedule::TzSource;
use loops_core::state::{LastRun, LoopState, Pause, StateStore};
use loops_core::workspace::Workspace;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("no loop named `{name}` in {} (looked for {})", workspace.display(), looked.display())]
    NoLoop {
        name: String,
        workspace: PathBuf,
        looked: PathBuf,
        known: Vec<String>,
    },
    #[error("loop `{name}` has errors:\n{details}")]
    BrokenLoop { name: String, details: String },
    #[error("`{0}` is a prompt loop and no model provider is configured")]
    NoProvider(String),
    #[error("a run of `{0}` is in progress")]
    RunInProgress(String),
    #[error("cannot reserve the run in the queue: {0}")]
    Lock(std::io::Error),
    #[error("no handoff `{id}` in {}", inbox.display())]
    NoHandoff { id: String, inbox: PathBuf },
    #[error("`{id}` is already {stage}")]
    HandoffClosed { id: String, stage: String },
    #[error("cannot move {} back to the inbox: {source}", path.display())]
    MoveBack {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no reason given for rejecting `{0}`")]
    NoReason(String),
    #[error("`{id}` is not held: {why}")]
    NotHeld { id: String, why: String },
    #[error("`{id}` has unticked checklist items:\n{}", bullets(.items))]
    Unticked {
        id: String,
        items: Vec<String>,
        /// Workspace-relative, for the help text.
        path: PathBuf,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    /// loops.yaml has settings it could not apply; a run would use the defaults instead.
    #[error(transparent)]
    Settings(loops_core::workspace::WorkspaceError),
}

fn bullets(items: &[String]) -> String {
    items
        .iter()
        .map(|u| format!("  - [ ] {u}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl OperatorError {
    pub fn help(&self) -> Option<String> {
        match self {
            OperatorError::NoLoop { name, known, .. } => Some(loop_name_help(name, known)),
            OperatorError::BrokenLoop { .. } => Some(
                "fix the file as shown, then try again (`loops check` lists every problem)".into(),
            ),
            OperatorError::NoReason(_) => Some(
                "say why with --reason \"…\": it is kept beside the handoff in inbox/rejected/ for whoever reads the rejection".into(),
            ),
            OperatorError::NoProvider(_) => Some(
                "prompt loops need `providers:` in loops.yaml; command loops run now".into(),
            ),
            OperatorError::RunInProgress(_) => Some(
                "wait for it to finish (`loops runs NAME` shows it when done), or set `concurrency: allow` in its config.yaml".into(),
            ),
            OperatorError::NoHandoff { .. } => {
                Some("`loops inbox` lists the handoffs and their ids".into())
            }
            OperatorError::HandoffClosed { .. } => {
                Some("`loops inbox` lists what is still pending or active".into())
            }
            OperatorError::MoveBack { .. } => Some(
                "the handoff is still held where it was: check that inbox/ and inbox/active/ are writable, then try again".into(),
            ),
            OperatorError::NotHeld { .. } => Some(
                "only a handoff held for a person (`held:` in `loops inbox show ID`) is handed back; `loops inbox` lists each handoff's stage".into(),
            ),
            OperatorError::Unticked { id, path, .. } => Some(format!(
                "tick them with `loops inbox tick {id} N` (the item's number or text; `--all` for every item), or in {} (`- [x]`), then complete it again",
                path.display()
            )),
            OperatorError::Handoff(e) => e.help(),
            OperatorError::Settings(e) => e.help(),
            OperatorError::Lock(_) | OperatorError::Read { .. } => None,
        }
    }
}

fn loop_name_help(name: &str, known: &[String]) -> String {
    let names: Vec<&str> = known.iter().map(String::as_str).collect();
    match loops_core::diag::near_miss(name, &names) {
        Some(n) => format!("did you mean `{n}`?"),
        None if names.is_empty() => {
            "there are no loops yet: create one with `loops new NAME`".to_string()
        }
        None => format!("the loops are: {}", names.join(", ")),
    }
}

// ---------------------------------------------------------------------------------------
// Loops

/// A loop by name, or an error that lists the names there are.
pub fn find_loop(ws: &Workspace, name: &str) -> Result<DomainEntry, OperatorError> {
    let config = ws.domains_dir().join(name).join("config.yaml");
    // The name is checked before it is joined to a path, so `../x` never leaves domains/.
    if !crate::templates::valid_loop_name(name) || !config.is_file() {
        return Err(OperatorError::NoLoop {
            name: name.to_string(),
            workspace: ws.root.clone(),
            looked: ws.relative(&config),
            known: discover(ws).into_iter().map(|e| e.name).collect(),
        });
    }
    Ok(load_domain(ws, name))
}

/// The loop's definition, or its errors.
pub fn loop_def(entry: &DomainEntry) -> Result<LoopDef, OperatorError> {
    entry.def.clone().ok_or_else(|| OperatorError::BrokenLoop {
        name: entry.name.clone(),
        details: entry
            .errors()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// One loop as `loops list` shows it.
#[derive(Debug, Clone)]
pub struct LoopRow {
    pub name: String,
    pub description: Option<String>,
    /// command, prompt, or `?` when config.yaml does not parse.
    pub kind: &'static str,
    /// The schedule in words, `-` when config.yaml does not parse.
    pub schedule: String,
    pub tz: Option<Tz>,
    pub tz_source: Option<TzSource>,
    pub enabled: Option<bool>,
    pub next: Option<DateTime<Utc>>,
    /// ok, disabled, paused: …, waiting for a provider, failing (n in a row), past: never fires (a one-shot `at:` that has passed), broken: …
    pub status: String,
    pub last: Option<LastRun>,
    pub consecutive_failures: u32,
    pub paused: Option<Pause>,
    pub errors: Vec<Diagnostic>,
    /// What the loop spent since the UTC day began (tokens, estimated cost).
    pub spent_today: loops_core::spend::Spend,
}

impl LoopRow {
    /// The JSON of one entry of `loops list --json` (and MCP `list_loops`), with the next
    /// run also in the host's zone (`local`) and in the loop's own.
    pub fn to_json(&self, local: &Tz) -> Value {
        let loop_time = match (self.next, self.tz) {
            (Some(n), Some(z)) => Some(n.with_timezone(&z).to_rfc3339()),
            _ => None,
        };
        json!({
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "schedule": self.schedule,
            "timezone": self.tz.map(|t| t.name().to_string()),
            "timezone_source": self.tz_source,
            "next_run": self.next,
            "next_run_local": self.next.map(|n| n.with_timezone(local).to_rfc3339()),
            "next_run_loop_time": loop_time,
            "enabled": self.enabled,
            "status": self.status,
            "last_run": self.last,
            "consecutive_failures": self.consecutive_failures,
            "paused": self.paused,
            "errors": self.errors,
            "spent_today": {
                "tokens": self.spent_today.tokens,
                "cost_estimate_usd": (!self.spent_today.cost_unknown || self.spent_today.cost > 0.0)
                    .then_some(self.spent_today.cost),
                "cost_unknown": self.spent_today.cost_unknown,
                "runs": self.spent_today.runs,
                "unreadable_records": self.spent_today.unreadable,
            },
        })
    }
}

/// Every loop in domains/, with its state, as of `now`.
pub fn loop_rows(ws: &Workspace, now: DateTime<Utc>) -> Vec<LoopRow> {
    let store = StateStore::new(&ws.layout().state_dir());
    discover(ws)
        .iter()
        .map(|e| loop_row(ws, e, store.load(&e.name).as_ref(), now))
        .collect()
}

fn loop_row(
    ws: &Workspace,
    e: &DomainEntry,
    state: Option<&LoopState>,
    now: DateTime<Utc>,
) -> LoopRow {
    let mut row = LoopRow {
        name: e.name.clone(),
        description: None,
        kind: "?",
        schedule: "-".into(),
        tz: None,
        tz_source: None,
        enabled: None,
        next: None,
        status: String::new(),
        last: state.and_then(|s| s.last_run.clone()),
        consecutive_failures: state.map(|s| s.consecutive_failures).unwrap_or(0),
        paused: state.and_then(|s| s.paused.clone()),
        errors: e.errors().cloned().collect(),
        spent_today: loops_core::spend::spent_today(
            &loops_core::runs::RunLog::new(&ws.layout().runs_dir(), u64::MAX),
            &e.name,
            now,
        ),
    };
    let Some(def) = &e.def else {
        let first = e
            .errors()
            .next()
            .map(|d| d.message.clone())
            .unwrap_or_default();
        row.status = format!("broken: {first}");
        return row;
    };
    row.description = def.description.clone();
    row.kind = match def.payload {
        Payload::Command { .. } => "command",
        Payload::Prompt { .. } => "prompt",
    };
    row.schedule = def.schedule.describe();
    row.tz = Some(def.schedule.tz);
    row.tz_source = Some(def.schedule.tz_source);
    row.enabled = Some(def.enabled);
    row.status = loop_status(ws, def, state);
    // A loop kept beside an error (a prompt.md or state.md that is no text) still runs,
    // and each run fails on it: the error is what to fix, not "ok" or "waiting".
    if let Some(first) = e.errors().next() {
        if !row.status.starts_with("paused") {
            row.status = format!("broken: {}", first.message);
        }
    }
    row.next = next_run(ws, def, state, now);
    if row.status == "ok" {
        if let Some(past) = past_one_shot(def, now) {
            row.status = past;
        }
    }
    if let Some(until) = state
        .and_then(|s| s.budget_paused_until)
        .filter(|u| *u > now)
    {
        row.status = format!(
            "paused for today: daily budget reached (resumes {})",
            until.format("%Y-%m-%d %H:%M UTC")
        );
    }
    row
}

/// A one-shot `at:` that has passed is not `ok`: it never fires (after its starting
/// deadline not even as a caught-up run), as `loops check` warns too.
fn past_one_shot(def: &LoopDef, now: DateTime<Utc>) -> Option<String> {
    let loops_core::schedule::When::At(at) = def.schedule.when else {
        return None;
    };
    if at > now {
        return None;
    }
    let catchable = chrono::Duration::from_std(def.schedule.starting_deadline)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .is_some_and(|until| until > now);
    Some(if catchable {
        "past: fires only if caught up".to_string()
    } else {
        "past: never fires".to_string()
    })
}

fn loop_status(ws: &Workspace, def: &LoopDef, state: Option<&LoopState>) -> String {
    let failures = state.map(|s| s.consecutive_failures).unwrap_or(0);
    if !def.enabled {
        "disabled".to_string()
    } else if let Some(p) = state.and_then(|s| s.paused.as_ref()) {
        format!("paused: {}", p.reason)
    } else if def.is_prompt() && !ws.settings.has_providers {
        "waiting for a provider".to_string()
    } else if failures > 0 {
        format!("failing ({failures} in a row)")
    } else {
        "ok".to_string()
    }
}

/// The next fire time of a loop that will run, or its pending retry if sooner.
fn next_run(
    ws: &Workspace,
    def: &LoopDef,
    state: Option<&LoopState>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let runnable = def.enabled
        && state.and_then(|s| s.paused.as_ref()).is_none()
        && (!def.is_prompt() || ws.settings.has_providers);
    let mut next = runnable
        .then(|| def.schedule.upcoming(now, 1).into_iter().next())
        .flatten();
    if let Some(at) = state
        .and_then(|s| s.next_check)
        .filter(|_| runnable && def.schedule.adaptive.is_some())
    {
        next = Some(at);
    }
    if let Some(until) = state.and_then(|s| s.budget_paused_until) {
        next = next.map(|n| n.max(until));
    }
    if let Some(r) = state.and_then(|s| s.pending_retry.as_ref()) {
        next = Some(next.map_or(r.at, |n| n.min(r.at)));
    }
    next
}

/// A loop about to be run by hand in this process (`loops trigger`, MCP `trigger_loop`,
/// when no daemon serves the workspace: see [`crate::trigger`]): its run is reserved in the
/// queue (a light `loop` job that has begun), so a scheduled run or another
/// trigger cannot start alongside it, and the reservation is the run's own record.
pub struct ManualRun {
    pub def: LoopDef,
    /// The run to make: its id is the reservation's.
    pub req: RunRequest,
    running: RunningSet,
}

impl ManualRun {
    /// Reserves a run of `def`, checked already, to run in this process.
    pub fn reserve(ws: &Workspace, def: LoopDef) -> Result<ManualRun, OperatorError> {
        let name = def.name.clone();
        let name = name.as_str();
        let req = RunRequest::new(Trigger::Manual, None, 1);
        let running = RunningSet::new(ws.layout().root());
        let m = RunInProgress::for_this_process(
            name,
            &req.run_id,
            req.trigger.as_str(),
            None,
            1,
            Utc::now(),
        );
        let begun = if def.concurrency == Concurrency::Allow {
            running.put(&m).map(|()| true)
        } else {
            running.begin_exclusive(&m)
        };
        match begun {
            Ok(true) => Ok(ManualRun { def, req, running }),
            Ok(false) => Err(OperatorError::RunInProgress(name.to_string())),
            Err(e) => Err(OperatorError::Lock(std::io::Error::other(e.to_string()))),
        }
    }

    /// After the run: releases the lock, then records the outcome in the loop's state
    /// (failures in a row, a pause), tells the main session when that paused the loop,
    /// and nudges a running daemon to re-read the state.
    pub async fn finish(self, ctx: &RunContext, rec: &RunRecord) {
        let after = crate::engine::scheduler::apply_finish(
            &ctx.store,
            &self.def,
            rec,
            false,
            ctx.ws.settings.pause_after_failures,
            Utc::now(),
        );
        if let crate::engine::scheduler::Aftermath::Paused(p) = after {
            let n = crate::engine::main_session::paused_loop_handoff(&self.def.name, &p);
            crate::engine::main_session::runner_handoff(ctx, n).await;
        }
        ctx.ws.nudge_daemon(&self.def.name);
    }
}

impl Drop for ManualRun {
    /// A reservation whose run never started (or whose run ended) is let go.
    fn drop(&mut self) {
        self.running.remove(&self.req.run_id);
    }
}

// ---------------------------------------------------------------------------------------
// The inbox

/// How many recently done handoffs a listing shows.
pub const DONE_LISTED: usize = 10;

/// One handoff as `loops inbox` lists it.
#[derive(Debug, Clone)]
pub struct HandoffRow {
    pub stage: Stage,
    pub id: String,
    /// Who wrote it, as the runner knows it ([`loops_core::handoff::Handoff::author`]).
    pub from: String,
    /// Its recipient: `main`, `person` (a proposal for the person to apply), or another.
    pub to: String,
    pub priority: String,
    pub title: String,
    /// Workspace-relative.
    pub path: PathBuf,
    /// When it reached its folder (the file's modification time).
    pub since: Option<DateTime<Utc>>,
    pub detail: String,
    /// Per-stage fields: unticked items and holds (active), the reason (rejected).
    pub extra: Map<String, Value>,
}

impl HandoffRow {
    /// One entry of `loops inbox --json` (and MCP `list_handoffs`).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "stage": self.stage, "id": self.id, "from": self.from, "to": self.to, "priority": self.priority,
            "title": self.title, "path": self.path, "since": self.since, "detail": self.detail,
        });
        if let Some(o) = v.as_object_mut() {
            o.extend(self.extra.clone());
        }
        v
    }
}

/// Every handoff by stage: pending, active, rejected, then the [`DONE_LISTED`] most
/// recently done.
pub fn handoff_rows(ws: &Workspace, now: DateTime<Utc>) -> Vec<HandoffRow> {
    let inbox = Inbox::of(ws);
    let notes = InboxState::new(&ws.layout());
    let mut rows = Vec::new();
    for p in inbox.pending() {
        rows.push(handoff_row(
            ws,
            Stage::Pending,
            &p,
            now,
            Map::new(),
            String::new(),
        ));
    }
    for p in inbox.active() {
        let (extra, detail) = active_details(ws, &notes, &p, now);
        rows.push(handoff_row(ws, Stage::Active, &p, now, extra, detail));
    }
    for p in inbox.rejected() {
        let reason = inbox.rejection_reason(&p).unwrap_or_default();
        let mut extra = Map::new();
        extra.insert("reason".into(), json!(reason));
        rows.push(handoff_row(ws, Stage::Rejected, &p, now, extra, reason));
    }
    for p in inbox.done().into_iter().take(DONE_LISTED) {
        rows.push(handoff_row(
            ws,
            Stage::Done,
            &p,
            now,
            Map::new(),
            String::new(),
        ));
    }
    rows
}

fn handoff_row(
    ws: &Workspace,
    stage: Stage,
    path: &Path,
    now: DateTime<Utc>,
    extra: Map<String, Value>,
    detail: String,
) -> HandoffRow {
    let (id, from, to, title, priority) = match Inbox::of(ws).load(path) {
        Ok(h) => (
            h.id.clone(),
            h.author(),
            h.to,
            h.title,
            h.priority.as_str().to_string(),
        ),
        // A file that does not parse is still listed, by its name, so it can be found.
        Err(_) => (
            file_stem(path),
            "?".into(),
            "?".into(),
            "(does not parse)".into(),
            "-".into(),
        ),
    };
    // A pending handoff the main session does not take says who it waits for.
    let detail = match (stage, to.as_str()) {
        (Stage::Pending, "person") if detail.is_empty() => {
            "for you: a proposal to apply by hand (then `loops inbox complete`)".to_string()
        }
        (Stage::Pending, t) if detail.is_empty() && t != "main" && t != "?" => {
            format!("addressed to `{t}`; the main session does not take it")
        }
        _ => detail,
    };
    HandoffRow {
        stage,
        id,
        from,
        to,
        priority,
        title,
        path: ws.relative(path),
        since: age(path, now),
        detail,
        extra,
    }
}

/// An active handoff's unticked items and why it is held, and its detail line.
fn active_details(
    ws: &Workspace,
    notes: &InboxState,
    p: &Path,
    now: DateTime<Utc>,
) -> (Map<String, Value>, String) {
    let overdue_after = ws
        .settings
        .main
        .as_ref()
        .map(|m| m.overdue_after)
        .unwrap_or(std::time::Duration::from_secs(86400));
    let note = notes.note(&file_name(p));
    let unticked: Vec<String> = Inbox::of(ws)
        .load(p)
        .map(|h| h.unticked().iter().map(|i| i.text.clone()).collect())
        .unwrap_or_default();
    let held_since = note.held_since.or_else(|| age(p, now));
    let overdue =
        held_since.is_some_and(|t| (now - t).to_std().unwrap_or_default() > overdue_after);
    let mut detail = note
        .held
        .clone()
        .unwrap_or_else(|| "claimed by a wake".into());
    if overdue {
        detail = format!("OVERDUE: {detail}");
    }
    let extra = json!({ "unticked": unticked, "held": note.held, "overdue": overdue, "attempts": note.attempts });
    (extra.as_object().cloned().unwrap_or_default(), detail)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

fn age(path: &Path, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    let t: DateTime<Utc> = m.into();
    Some(t.min(now))
}

/// Where a handoff is, by id.
pub fn find_handoff(inbox: &Inbox, id: &str) -> Result<(Stage, PathBuf), OperatorError> {
    inbox.find(id).ok_or_else(|| OperatorError::NoHandoff {
        id: id.to_string(),
        inbox: inbox.root.clone(),
    })
}

/// A handoff that can still be completed or rejected (pending or active).
pub fn find_open_handoff(inbox: &Inbox, id: &str) -> Result<PathBuf, OperatorError> {
    let (stage, path) = find_handoff(inbox, id)?;
    if matches!(stage, Stage::Done | Stage::Rejected) {
        return Err(OperatorError::HandoffClosed {
            id: id.to_string(),
            stage: format!("{stage:?}").to_lowercase(),
        });
    }
    Ok(path)
}

/// One handoff in full, as `loops inbox show` reports it.
pub struct HandoffDetail {
    pub stage: Stage,
    pub path: PathBuf,
    /// Workspace-relative.
    pub rel: PathBuf,
    pub parsed: Result<Handoff, HandoffError>,
    pub note: Note,
    /// Why it was rejected (rejected handoffs only).
    pub reason: Option<String>,
    /// `limits.max_handoff_bytes`: a rejected file can be far bigger, and is shown cut.
    pub max_bytes: u64,
}

impl HandoffDetail {
    pub fn load(ws: &Workspace, id: &str) -> Result<HandoffDetail, OperatorError> {
        let inbox = Inbox::of(ws);
        let (stage, path) = find_handoff(&inbox, id)?;
        let note = InboxState::new(&ws.layout()).note(&file_name(&path));
        let reason = (stage == Stage::Rejected)
            .then(|| inbox.rejection_reason(&path))
            .flatten();
        Ok(HandoffDetail {
            stage,
            rel: ws.relative(&path),
            parsed: inbox.load(&path),
            max_bytes: inbox.max_bytes(),
            path,
            note,
            reason,
        })
    }

    /// The file as it is on disk (lossy UTF-8), up to the handoff size limit: a huge
    /// rejected file is shown cut, with a line saying so, never read whole.
    pub fn text(&self) -> Result<String, OperatorError> {
        let (mut text, size) = loops_core::fsutil::read_prefix(&self.path, self.max_bytes)
            .map_err(|source| OperatorError::Read {
                path: self.path.clone(),
                source,
            })?;
        if size > self.max_bytes {
            text.push_str(&format!(
                "\n[… cut: the file is {size} bytes; only the first {} are shown]\n",
                self.max_bytes
            ));
        }
        Ok(text)
    }

    /// The JSON of `loops inbox show --json` (and MCP `get_handoff`).
    pub fn to_json(&self) -> Value {
        let (h, err) = match &self.parsed {
            Ok(h) => (serde_json::to_value(h).unwrap_or_default(), None),
            Err(e) => (Value::Null, Some(e.to_string())),
        };
        json!({
            "stage": self.stage, "path": self.rel, "handoff": h, "error": err,
            "note": self.note, "reason": self.reason,
        })
    }
}

/// A handoff moved to done/.
pub struct Completed {
    pub id: String,
    /// Where it is now.
    pub done: PathBuf,
    /// Why the completion was not committed, when it was not.
    pub warning: Option<String>,
}

/// Completes a handoff by hand: every required checklist item must be ticked. An
/// attempt with unticked items is noted on the handoff (`loops inbox` shows it held),
/// and a completion is committed like the main session's.
pub fn complete_handoff(
    ws: &Workspace,
    id: &str,
    summary: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Completed, OperatorError> {
    let inbox = Inbox::of(ws);
    let path = find_open_handoff(&inbox, id)?;
    let h = inbox.load(&path)?;
    let name = file_name(&path);
    let notes = InboxState::new(&ws.layout());
    let unticked: Vec<String> = h.unticked().iter().map(|i| i.text.clone()).collect();
    if !unticked.is_empty() {
        let mut note = notes.note(&name);
        note.held = Some(format!(
            "completion asked, but not ticked: {}",
            unticked.join("; ")
        ));
        note.held_since.get_or_insert(now);
        notes.set_note(&name, &note);
        return Err(OperatorError::Unticked {
            id: id.to_string(),
            items: unticked,
            path: ws.relative(&path),
        });
    }
    let done = inbox.complete(&path, summary, now)?;
    notes.set_note(&name, &Note::default());
    let warning = commit_inbox_change(
        ws,
        inbox
            .gone_pending(name.as_ref())
            .into_iter()
            .chain([path.clone(), done.clone()])
            .collect(),
        &format!("main: completed handoff: {}", h.title),
        [("Handoff", h.id.clone())]
            .into_iter()
            .chain(h.author_trailers())
            .chain([("Outcome", "completed".into())])
            .collect(),
    );
    Ok(Completed {
        id: h.id,
        done,
        warning,
    })
}

/// A handoff moved to rejected/.
pub struct Rejected {
    pub id: String,
    /// Where it is now.
    pub to: PathBuf,
    /// Why the rejection was not committed, when it was not.
    pub warning: Option<String>,
}

/// Rejects a pending or active handoff with `reason` (kept beside it in
/// `NAME.error.md`), and commits the move like a completion.
pub fn reject_handoff(
    ws: &Workspace,
    id: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Rejected, OperatorError> {
    if reason.trim().is_empty() {
        return Err(OperatorError::NoReason(id.to_string()));
    }
    let inbox = Inbox::of(ws);
    let path = find_open_handoff(&inbox, id)?;
    let name = file_name(&path);
    let to = inbox.reject(&path, reason, now)?;
    let err_file = inbox.error_note(&to);
    let warning = commit_inbox_change(
        ws,
        inbox
            .gone_pending(name.as_ref())
            .into_iter()
            .chain([path.clone(), to.clone(), err_file])
            .collect(),
        &format!("main: rejected handoff {id}"),
        vec![("Handoff", id.to_string()), ("Outcome", "rejected".into())],
    );
    Ok(Rejected {
        id: id.to_string(),
        to,
        warning,
    })
}

/// A held handoff given back to the main session.
pub struct Retried {
    pub id: String,
    /// Where it was held (in `active/`).
    pub from: PathBuf,
    /// Where it waits now (in `inbox/`).
    pub to: PathBuf,
    /// Why it had been held.
    pub was_held: String,
    /// The failed wakes it had been through, now forgotten.
    pub attempts: u32,
    /// Why the move was not committed, when it should have been.
    pub warning: Option<String>,
}

/// Gives a handoff held for a person (after `main.max_attempts` failed wakes, or a
/// completion without its ticks) back to the main session: it moves from `active/` to
/// the inbox with its failed attempts forgotten, so the next wake takes it with the full
/// `max_attempts` again, and the move is committed like the others. Only a held handoff:
/// an active one that is not held is a running wake's, which is not the person's to take.
pub fn retry_handoff(ws: &Workspace, id: &str) -> Result<Retried, OperatorError> {
    let inbox = Inbox::of(ws);
    let (stage, path) = find_handoff(&inbox, id)?;
    let not_held = |why: &str| OperatorError::NotHeld {
        id: id.to_string(),
        why: why.to_string(),
    };
    let notes = InboxState::new(&ws.layout());
    let name = file_name(&path);
    let note = notes.note(&name);
    let was_held = match (stage, note.held.clone()) {
        (Stage::Done | Stage::Rejected, _) => {
            return Err(OperatorError::HandoffClosed {
                id: id.to_string(),
                stage: format!("{stage:?}").to_lowercase(),
            })
        }
        (Stage::Pending, _) => {
            return Err(not_held(
                "it is pending, and the main session takes it at its next wake",
            ))
        }
        (Stage::Active, Some(why)) => why,
        // Held by a note that cannot be read (a full disk, a crash mid-write), with no
        // live wake on it: it would wait in active/ for the daemon's next start. Handed
        // back here, saying so.
        (Stage::Active, None) => match notes.note_damaged(&name) {
            Some(e) if !notes.claimed_by_live_wake(&name) => format!(
                "unknown: its note {} cannot be read ({e}); it is replaced",
                ws.relative(&notes.note_path(&name)).display()
            ),
            _ => {
                return Err(not_held(
                    "a wake of the main session claimed it, and gives it back when it ends (or the daemon's next start does, if that wake's runner is gone); `loops jobs cancel` on a running wake stops it sooner",
                ))
            }
        },
    };
    let to = inbox
        .try_release(&path)
        .map_err(|source| OperatorError::MoveBack {
            path: ws.relative(&path),
            source,
        })?;
    notes.set_note(&name, &Note::default());
    notes.set_note(&file_name(&to), &Note::default());
    let warning = commit_inbox_change(
        ws,
        vec![path.clone(), to.clone()],
        &format!("main: handed held handoff {id} back to the main session"),
        vec![("Handoff", id.to_string()), ("Outcome", "retried".into())],
    );
    Ok(Retried {
        id: id.to_string(),
        from: path,
        to,
        was_held,
        attempts: note.attempts,
        warning,
    })
}

/// The body of a steering message to a job (`loops jobs message`, the UI): a JSON object
/// is sent as it is, any other text as `{"directive": TEXT}`.
pub fn job_message_body(message: &str) -> Value {
    serde_json::from_str::<Value>(message)
        .ok()
        .filter(|v| v.is_object())
        .unwrap_or_else(|| json!({ "directive": message }))
}

/// A tick of a handoff's checklist by hand (`loops inbox tick`, MCP `tick_handoff`).
pub struct TickedHandoff {
    pub ticks: loops_core::handoff::Ticks,
    pub stage: Stage,
    /// Where it is (workspace-relative).
    pub path: PathBuf,
    /// Why the tick was not committed, when it should have been.
    pub warning: Option<String>,
}

/// Ticks items of a pending or active handoff (see [`loops_core::handoff::tick`]) and commits
/// the file, so `git status` shows nothing for the inbox between moves. A hold that
/// waited for these ticks says what is left, or that it only waits for a completion now.
pub fn tick_handoff(
    ws: &Workspace,
    id: &str,
    which: &[loops_core::handoff::ItemRef],
    all: bool,
) -> Result<TickedHandoff, OperatorError> {
    let inbox = Inbox::of(ws);
    let (stage, path) = find_handoff(&inbox, id)?;
    if matches!(stage, Stage::Done | Stage::Rejected) {
        return Err(OperatorError::HandoffClosed {
            id: id.to_string(),
            stage: format!("{stage:?}").to_lowercase(),
        });
    }
    let ticks = loops_core::handoff::tick(&path, which, all, inbox.max_bytes())?;
    let name = file_name(&path);
    let notes = InboxState::new(&ws.layout());
    let mut note = notes.note(&name);
    if !ticks.ticked.is_empty()
        && note
            .held
            .as_deref()
            .is_some_and(|h| h.contains("not ticked"))
    {
        note.held = Some(if ticks.unticked.is_empty() {
            format!(
                "every required item is ticked; waiting to be completed (`loops inbox complete {}`)",
                ticks.id
            )
        } else {
            let left: Vec<&str> = ticks.unticked.iter().map(|i| i.text.as_str()).collect();
            format!("not ticked: {}", left.join("; "))
        });
        notes.set_note(&name, &note);
    }
    let warning = if ticks.ticked.is_empty() {
        None
    } else {
        commit_inbox_change(
            ws,
            vec![path.clone()],
            &format!(
                "main: ticked {} item(s) of handoff {}",
                ticks.ticked.len(),
                ticks.id
            ),
            vec![("Handoff", ticks.id.clone()), ("Outcome", "ticked".into())],
        )
    };
    Ok(TickedHandoff {
        ticks,
        stage,
        path: ws.relative(&path),
        warning,
    })
}

impl TickedHandoff {
    /// The JSON of `loops inbox tick --json` (and MCP `tick_handoff`).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.ticks.id, "stage": self.stage, "path": self.path,
            "ticked": self.ticks.ticked, "already_ticked": self.ticks.already,
            "unticked": self.ticks.unticked, "complete": self.ticks.unticked.is_empty(),
            "warning": self.warning,
        })
    }
}

/// Commits `paths` with handoff trailers, when the workspace keeps history. Returns why
/// it was not committed, when it should have been; a failed commit never undoes the
/// inbox change, which is already on disk. Blocking: call it from a plain thread.
pub fn commit_inbox_change(
    ws: &Workspace,
    paths: Vec<PathBuf>,
    subject: &str,
    trailers: Vec<(&str, String)>,
) -> Option<String> {
    if !ws.settings.git_commit {
        return None;
    }
    // A linked inbox/ is not committed to: the commit would record the link's removal.
    if let Some(l) = ws.symlinked_areas().first() {
        return Some(format!("not committed: {l}"));
    }
    // Not a repository (or not yet): history is off, as for a run.
    let Ok(c) = Committer::start(
        &ws.root,
        &ws.settings.author_name,
        &ws.settings.author_email,
    ) else {
        return None;
    };
    c.commit_blocking(CommitRequest {
        contents: Vec::new(),
        paths,
        message: commit_message(subject, &trailers),
        ..Default::default()
    })
    .err()
    .map(|e| format!("not committed: {e}"))
}
