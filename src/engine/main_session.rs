//! The main session: the one with memory, SOUL.md and USER.md. A *wake* claims the
//! pending handoffs, hands them to the main session, and completes, holds or releases
//! each according to what it reported and what its checklist says.
//!
//! In this version the main session is a `command:` (an external agent such as
//! `claude -p`, or a script). It gets the claimed handoffs' paths in `LOOPS_HANDOFFS`
//! (one per line) and all of them as JSON on stdin, and reports which it completed by
//! printing a JSON line `{"completed": ["ID", …]}` (or `[{"id": …, "summary": …}]`) and
//! exiting 0; an object may also say which checklist items it did (`"ticked": [1,
//! "Reply"]`, or `"all_ticked": true`), which the runner ticks before it judges the
//! completion, so a script completes runner-made handoffs (a paused loop, a failed
//! delivery) without editing files. A non-zero exit is a failed wake: its handoffs go
//! back to the inbox.

use crate::engine::run_context::{RunContext, WakeKind, MAIN};
use chrono::{DateTime, Utc};
use loops_core::exec::{self, ExecSpec};
use loops_core::handoff::{self, Handoff, Inbox, NewHandoff, Priority};
use loops_core::history::{commit_message, CommitRequest};
use loops_core::runs::{Outcome, RunRecord, RunningMarker};
use loops_core::workspace::MainSettings;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

/// What the runner remembers about one handoff between wakes (`.loops/inbox/<name>.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Note {
    /// Failed wakes this handoff went through.
    #[serde(default)]
    pub attempts: u32,
    /// Held in active/: why (unticked items, not completed, too many failed wakes).
    #[serde(default)]
    pub held: Option<String>,
    #[serde(default)]
    pub held_since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Runtime notes and claims of the inbox, under `.loops/inbox/`.
#[derive(Debug, Clone)]
pub struct InboxState {
    dir: PathBuf,
}

/// Which files a wake claimed, as an older version listed them in `.loops/inbox/claims/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    run_id: String,
    pid: u32,
    pid_start: Option<u64>,
    files: Vec<String>,
}

impl InboxState {
    pub fn new(ws_runtime: &Path) -> Self {
        InboxState {
            dir: ws_runtime.join("inbox"),
        }
    }

    fn note_path(&self, name: &str) -> PathBuf {
        self.dir.join("notes").join(format!("{name}.json"))
    }

    pub fn note(&self, name: &str) -> Note {
        std::fs::read_to_string(self.note_path(name))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn set_note(&self, name: &str, note: &Note) {
        let path = self.note_path(name);
        if *note == Note::default() {
            let _ = std::fs::remove_file(path);
            return;
        }
        let text = serde_json::to_string_pretty(note).unwrap_or_default();
        if let Err(e) = loops_core::fsutil::atomic_write(&path, text.as_bytes()) {
            tracing::warn!("{}: {e}", path.display());
        }
    }

    /// Where an older version listed a wake's claims (`.loops/inbox/claims/`), read for
    /// one release.
    fn legacy_claims_dir(&self) -> PathBuf {
        self.dir.join("claims")
    }

    /// Gives back handoffs claimed by wakes whose process is gone (a crash): they return
    /// to the inbox and are processed again. Returns their file names.
    pub fn recover(&self, inbox: &Inbox) -> Vec<String> {
        self.recover_moves(inbox)
            .into_iter()
            .filter_map(|m| m.paths.first()?.file_name()?.to_str().map(str::to_string))
            .collect()
    }

    /// [`InboxState::recover`], with each handoff's move (from active/, back to inbox/)
    /// for the commit that records it.
    pub fn recover_moves(&self, inbox: &Inbox) -> Vec<Moved> {
        let mut n = Vec::new();
        let mut live: std::collections::HashSet<String> = std::collections::HashSet::new();
        // The wakes in progress (light jobs), by whether their process lives.
        let runtime = self.dir.parent().unwrap_or(&self.dir);
        for w in loops_core::runs::RunningSet::new(runtime).all() {
            if w.loop_name != MAIN {
                continue;
            }
            if loops_core::fsutil::process_alive(w.pid, w.pid_start) {
                live.extend(w.handoffs);
                continue;
            }
            for f in &w.handoffs {
                let active = inbox.active_dir().join(f);
                if active.exists() {
                    if let Some(back) = inbox.release(&active) {
                        n.push(moved(inbox, active, back));
                    }
                }
            }
        }
        let dir = self.legacy_claims_dir();
        for e in std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let Some(c) = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|t| serde_json::from_str::<Claims>(&t).ok())
            else {
                let _ = std::fs::remove_file(e.path());
                continue;
            };
            if loops_core::fsutil::process_alive(c.pid, c.pid_start) {
                live.extend(c.files);
                continue;
            }
            for f in &c.files {
                let active = inbox.active_dir().join(f);
                if !active.exists() {
                    continue;
                }
                if let Some(back) = inbox.release(&active) {
                    n.push(moved(inbox, active, back));
                }
            }
            let _ = std::fs::remove_file(e.path());
        }
        // A crash between the claim (the rename into active/) and the writing of the
        // claims file leaves a handoff in active/ that no claims file names. Whatever is
        // in active/ without a live claim and without a hold was claimed by a wake that
        // died: it goes back too. (Held handoffs wait in active/ for a person.)
        for active in inbox.active() {
            let Some(name) = active.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if live.contains(name) || self.note(name).held.is_some() {
                continue;
            }
            if let Some(back) = inbox.release(&active) {
                n.push(moved(inbox, active, back));
            }
        }
        n
    }
}

/// The move of a handoff given back to the inbox, named by its id where it can be read.
fn moved(inbox: &Inbox, active: PathBuf, back: PathBuf) -> Moved {
    let id = inbox.load(&back).map(|h| h.id).unwrap_or_else(|_| {
        back.file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into()
    });
    Moved {
        id,
        paths: vec![active, back],
    }
}

/// The outcome of one wake.
#[derive(Debug, Clone)]
pub struct WakeResult {
    pub record: RunRecord,
    pub completed: Vec<String>,
    pub held: Vec<(String, String)>,
    pub released: Vec<String>,
    /// Handoffs the main session completed that could not be moved to done/ (the disk
    /// refused): still in active/, for the daemon to complete as soon as it can.
    pub uncompleted: Vec<Uncompleted>,
}

/// A completion the disk refused: the main session's word is kept, so the handoff is
/// moved to done/ when the disk allows rather than handed to the main session again.
#[derive(Debug, Clone)]
pub struct Uncompleted {
    pub id: String,
    pub from: Option<String>,
    pub active: PathBuf,
    pub summary: Option<String>,
    pub run_id: String,
}

impl Uncompleted {
    /// Tries the completion again. `None`: not yet (the disk still refuses). `Some`: done
    /// (or the file is gone: someone else completed or released it), with the commit
    /// to make for it, if any.
    pub fn retry(&self, inbox: &Inbox) -> Option<Option<CommitRequest>> {
        if !self.active.exists() {
            return Some(None);
        }
        let done = inbox
            .complete(&self.active, self.summary.as_deref(), Utc::now())
            .ok()?;
        tracing::info!(handoff = %self.id, "completed (the disk had refused it)");
        let name = self
            .active
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        let mut t = vec![
            ("Loop", MAIN.to_string()),
            ("Run", self.run_id.clone()),
            ("Outcome", "completed".to_string()),
            ("Handoff", self.id.clone()),
        ];
        if let Some(f) = &self.from {
            t.push(("From", f.clone()));
        }
        let mut paths: Vec<PathBuf> = inbox.gone_pending(name.as_os_str()).into_iter().collect();
        paths.extend([self.active.clone(), done]);
        Some(Some(CommitRequest::new(
            paths,
            commit_message(&format!("{MAIN}: completed 1 handoff(s)"), &t),
        )))
    }
}

/// What the main session said of one handoff it completed.
#[derive(Debug, Clone, Default)]
struct Report {
    summary: Option<String>,
    /// Checklist items it says it did (`"ticked": [1, "Reply to the team"]`): ticked in the
    /// file before the completion is judged, as `loops inbox tick` would.
    ticked: Vec<handoff::ItemRef>,
    /// `"all_ticked": true`: it did every item.
    all_ticked: bool,
}

/// What the main-session command reported on stdout: `{"completed": ["ID", …]}`, or
/// objects `{"id", "summary"?, "ticked"?: [number or text, …], "all_ticked"?: bool}`.
fn reported_completions(stdout: &str) -> HashMap<String, Report> {
    let mut out = HashMap::new();
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
            continue;
        };
        let Some(list) = v.get("completed").and_then(|c| c.as_array()) else {
            continue;
        };
        for item in list {
            match item {
                serde_json::Value::String(id) => {
                    out.insert(id.clone(), Report::default());
                }
                serde_json::Value::Object(o) => {
                    if let Some(id) = o.get("id").and_then(|i| i.as_str()) {
                        let summary = o
                            .get("summary")
                            .and_then(|s| s.as_str())
                            .map(str::to_string);
                        let ticked = o
                            .get("ticked")
                            .and_then(|t| t.as_array())
                            .map(|t| {
                                t.iter()
                                    .filter_map(|x| match x {
                                        serde_json::Value::Number(n) => {
                                            n.as_u64().map(|n| handoff::ItemRef::Number(n as usize))
                                        }
                                        serde_json::Value::String(s) => {
                                            Some(handoff::ItemRef::parse(s))
                                        }
                                        _ => None,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let all_ticked =
                            o.get("all_ticked").and_then(|a| a.as_bool()) == Some(true);
                        out.insert(
                            id.to_string(),
                            Report {
                                summary,
                                ticked,
                                all_ticked,
                            },
                        );
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn handoff_json(h: &Handoff, path: &Path, ws: &Path, max_bytes: u64) -> serde_json::Value {
    // A draft may be long, but not so long that the main session's stdin becomes
    // gigabytes: beyond the handoff limit it is cut, with a line saying where the rest is.
    // The path is checked again now, in its writer's scope, and opened beneath the root.
    let draft_text = h.draft.as_ref().and_then(|d| {
        let (mut text, size) = loops_agent::sandbox::read_draft(ws, h, max_bytes).ok()??;
        if size > max_bytes {
            text.push_str(&format!(
                "\n[… cut: the draft is {size} bytes, only the first {max_bytes} are given here (limits.max_handoff_bytes); read {d} for the rest]\n"
            ));
        }
        Some(text)
    });
    json!({
        "id": h.id,
        "path": path,
        "from": h.author(),
        "claimed_from": h.from,
        "verified": h.written_by.is_some(),
        "to": h.to,
        "created": h.created,
        "run": h.run,
        "priority": h.priority,
        "draft": h.draft,
        "draft_text": draft_text,
        "due": h.due,
        "tags": h.tags,
        "flagged": h.flagged,
        "title": h.title,
        "body": h.body,
        "checklist": h.checklist,
    })
}

/// Runs one wake of a command main session over `claimed` (already in `active/`).
pub async fn wake(
    ctx: &RunContext,
    main: &MainSettings,
    kind: WakeKind,
    claimed: Vec<PathBuf>,
    cancel: Option<watch::Receiver<bool>>,
) -> WakeResult {
    let ws = ctx.ws.clone();
    let inbox = Inbox::of(&ws);
    let notes = InboxState::new(&ws.runtime_dir());
    let run_id = loops_core::runs::new_run_id();
    let started = Utc::now();
    // The wake's job names what it claimed: a crash gives exactly those back.
    let mut marker =
        RunningMarker::for_this_process(MAIN, &run_id, kind.as_str(), None, 1, started);
    marker.handoffs = claimed
        .iter()
        .filter_map(|f| f.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect();
    let _ = ctx.running.put(&marker);

    let mut items = Vec::new();
    let mut by_id: Vec<(String, PathBuf)> = Vec::new();
    let mut loaded: Vec<(Handoff, PathBuf)> = Vec::new();
    let mut unreadable = Vec::new();
    for p in &claimed {
        match inbox.load(p) {
            Ok(h) => {
                items.push(handoff_json(&h, p, &ws.root, inbox.max_bytes()));
                by_id.push((h.id.clone(), p.clone()));
                loaded.push((h, p.clone()));
            }
            // Never left in active/ with no word: it goes to rejected/ with the reason.
            Err(e) => unreadable.push(reject_unreadable(&inbox, p, &e.to_string())),
        }
    }
    let claimed: Vec<PathBuf> = claimed
        .into_iter()
        .filter(|p| by_id.iter().any(|(_, b)| b == p))
        .collect();
    commit_moves(
        ctx.committer.as_ref(),
        "rejected",
        unreadable.into_iter().flatten().collect(),
    )
    .await;
    let payload = json!({ "wake": kind.as_str(), "run": run_id, "handoffs": items });
    let mut env = exec::base_env();
    env.extend([
        ("LOOPS_WORKSPACE".to_string(), ws.root.display().to_string()),
        ("LOOPS_INBOX".to_string(), inbox.root.display().to_string()),
        ("LOOPS_RUN_ID".to_string(), run_id.clone()),
        ("LOOPS_WAKE".to_string(), kind.as_str().to_string()),
        (
            "LOOPS_HANDOFFS".to_string(),
            claimed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ]);
    let areas = vec![ws.root.join("drafts"), ws.root.join(".working-memory")];
    let before = loops_core::snapshot::Snapshot::of(areas.clone()).await;
    let mut on_model: Option<crate::engine::main_agent::ModelWake> = None;
    let res = match &main.command {
        None if main.prompt.is_some() => {
            let w =
                crate::engine::main_agent::wake(ctx, main, kind, &run_id, &loaded, cancel).await;
            let r = model_exec_result(&w.outcome);
            on_model = Some(w);
            r
        }
        Some(argv) => {
            let (spawn_tx, mut spawn_rx) = tokio::sync::mpsc::unbounded_channel();
            let spec = ExecSpec {
                argv: argv.clone(),
                cwd: ws.root.clone(),
                env,
                timeout: main.timeout,
                grace: exec::KILL_GRACE,
                on_spawn: Some(spawn_tx),
                stdin: Some(serde_json::to_vec(&payload).unwrap_or_default()),
            };
            // The marker names the command's process group, so a runner that dies
            // mid-wake has it stopped at its next start, before the handoffs go back to
            // the inbox: an orphaned main session must not work on them beside the next.
            let note_pgid = crate::engine::run_context::note_pgid(ctx, &marker, &mut spawn_rx);
            // Owning the spec, the run drops the spawn sender when it ends, so a command
            // that cannot start does not leave `note_pgid` waiting.
            let run = async move { exec::run(&spec, None, cancel).await };
            let (res, ()) = tokio::join!(run, note_pgid);
            res
        }
        None => exec::ExecResult {
            spawn_error: Some(
                "the main session has neither `command:` nor `prompt:` in loops.yaml".into(),
            ),
            ..Default::default()
        },
    };
    let after = loops_core::snapshot::Snapshot::of(areas).await;
    let now = Utc::now();
    let ok = res.success();
    let reported = match (&on_model, ok) {
        (_, false) => HashMap::new(),
        (Some(w), true) => w
            .reported
            .iter()
            .map(|(id, summary)| {
                let r = Report {
                    summary: summary.clone(),
                    ..Default::default()
                };
                (id.clone(), r)
            })
            .collect(),
        (None, true) => reported_completions(&res.stdout_tail),
    };
    let mut completed = Vec::new();
    let mut held = Vec::new();
    let mut released = Vec::new();
    let mut returned = Vec::new();
    let mut uncompleted = Vec::new();
    let mut commit_paths: Vec<PathBuf> = loops_core::snapshot::changed_between(&before, &after);
    if let Some(w) = &on_model {
        // What the model's tools wrote, wherever the main session may write.
        let runtime = ws.runtime_dir();
        for p in &w.wrote {
            if !p.starts_with(&runtime) && !commit_paths.contains(p) {
                commit_paths.push(p.clone());
            }
        }
    }
    let mut trailers: Vec<(&'static str, String)> = Vec::new();
    for (id, path) in &by_id {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let mut note = notes.note(&name);
        if !ok {
            note.attempts += 1;
            note.last_error = res.failure_reason(main.timeout);
            if note.attempts >= main.max_attempts {
                note.held = Some(format!(
                    "the main session failed {} times on it; last error: {}",
                    note.attempts,
                    note.last_error.as_deref().unwrap_or("unknown")
                ));
                note.held_since.get_or_insert(now);
                held.push((id.clone(), note.held.clone().unwrap_or_default()));
            } else if let Some(back) = inbox.release(path) {
                released.push(id.clone());
                returned.push(Moved {
                    id: id.clone(),
                    paths: vec![path.clone(), back],
                });
            }
            notes.set_note(&name, &note);
            continue;
        }
        match reported.get(id) {
            Some(report) => {
                let summary = &report.summary;
                // The items it says it did are ticked in the file first, so the done
                // handoff shows them ticked and the rule below is the one rule for all.
                let mut ticked_now = false;
                if report.all_ticked || !report.ticked.is_empty() {
                    match handoff::tick(path, &report.ticked, report.all_ticked, inbox.max_bytes())
                    {
                        Ok(t) => ticked_now = !t.ticked.is_empty(),
                        Err(e) => {
                            let why = format!(
                                "completed by the main session, but its ticks were refused: {e}"
                            );
                            note.held = Some(why.clone());
                            note.held_since.get_or_insert(now);
                            notes.set_note(&name, &note);
                            held.push((id.clone(), why));
                            continue;
                        }
                    }
                }
                // The main session may have ticked items in the file: read it again.
                let h = inbox.load(path).ok();
                let unticked: Vec<String> = h
                    .as_ref()
                    .map(|h| h.unticked().iter().map(|i| i.text.clone()).collect())
                    .unwrap_or_default();
                if unticked.is_empty() {
                    match inbox.complete(path, summary.as_deref(), now) {
                        Ok(done) => {
                            commit_paths.extend(inbox.gone_pending(name.as_ref()));
                            commit_paths.push(path.clone());
                            commit_paths.push(done);
                            trailers.push(("Handoff", id.clone()));
                            if let Some(h) = &h {
                                trailers.extend(h.author_trailers());
                            }
                            notes.set_note(&name, &Note::default());
                            completed.push(id.clone());
                        }
                        Err(e) if path.exists() => {
                            // The main session did its part; the disk refused the move.
                            // Kept for the daemon to finish, never handed over again.
                            tracing::warn!(handoff = %id, "could not complete it yet ({e}); trying again shortly");
                            uncompleted.push(Uncompleted {
                                id: id.clone(),
                                from: h.as_ref().map(|h| h.author()),
                                active: path.clone(),
                                summary: summary.clone(),
                                run_id: run_id.clone(),
                            });
                        }
                        Err(e) => held.push((id.clone(), format!("could not complete: {e}"))),
                    }
                } else {
                    let why = format!(
                        "completed by the main session, but not ticked: {}",
                        unticked.join("; ")
                    );
                    // What it did tick stays ticked, and in the history.
                    if ticked_now {
                        commit_paths.push(path.clone());
                    }
                    note.held = Some(why.clone());
                    note.held_since.get_or_insert(now);
                    notes.set_note(&name, &note);
                    held.push((id.clone(), why));
                }
            }
            None => {
                let why = "the main session did not report it completed".to_string();
                note.held = Some(why.clone());
                note.held_since.get_or_insert(now);
                notes.set_note(&name, &note);
                held.push((id.clone(), why));
            }
        }
    }
    let outcome = if res.cancelled {
        Outcome::Interrupted
    } else if res.timed_out {
        Outcome::Timeout
    } else if !ok {
        Outcome::Failed
    } else if completed.is_empty()
        && commit_paths.is_empty()
        && res.stdout_bytes == 0
        && by_id.is_empty()
    {
        Outcome::Silent
    } else {
        Outcome::Acted
    };
    let mut rec = RunRecord::decision(MAIN, kind.as_str(), None, started, outcome, String::new());
    rec.run_id = run_id.clone();
    rec.note = Some(format!(
        "{} handoff(s): {} completed, {} held, {} returned to the inbox{}",
        by_id.len(),
        completed.len(),
        held.len(),
        released.len(),
        if uncompleted.is_empty() {
            String::new()
        } else {
            format!(
                ", {} to be completed when the disk allows",
                uncompleted.len()
            )
        }
    ));
    rec.exit_code = res.exit_code;
    rec.error = res.failure_reason(main.timeout);
    rec.stdout_tail = res.stdout_tail.clone();
    rec.stderr_tail = res.stderr_tail.clone();
    rec.stdout_dropped = res.stdout_dropped;
    rec.stderr_dropped = res.stderr_dropped;
    rec.finished = now;
    rec.duration_ms = res.duration.as_millis() as u64;
    if let Some(w) = on_model {
        let o = w.outcome;
        rec.provider = o.provider;
        rec.model = o.model;
        rec.tokens = o.tokens;
        rec.turns = o.turns;
        rec.summary = o.summary;
        rec.transcript = o.transcript.map(|p| ws.relative(&p).display().to_string());
        rec.refused_tools = o.refused;
        rec.deliveries = o.deliveries;
        rec.stdout_tail.clear();
        if let Some(n) = o.note {
            rec.note = Some(format!("{}; {n}", rec.note.unwrap_or_default()));
        }
    }
    if !commit_paths.is_empty() {
        if let Some(c) = &ctx.committer {
            let subject = if completed.is_empty() {
                format!("{MAIN}: {} wake", kind.as_str())
            } else {
                format!("{MAIN}: completed {} handoff(s)", completed.len())
            };
            let mut t = vec![
                ("Loop", MAIN.to_string()),
                ("Run", run_id.clone()),
                ("Trigger", kind.as_str().to_string()),
                (
                    "Outcome",
                    if completed.is_empty() {
                        outcome.to_string()
                    } else {
                        "completed".into()
                    },
                ),
                ("Duration-Ms", rec.duration_ms.to_string()),
            ];
            t.extend(trailers);
            t.extend(crate::engine::loop_run::token_trailers(&rec));
            rec.changed = commit_paths
                .iter()
                .map(|p| ws.relative(p).display().to_string())
                .collect();
            match c
                .commit(CommitRequest {
                    contents: Vec::new(),
                    paths: commit_paths,
                    message: commit_message(&subject, &t),
                    ..Default::default()
                })
                .await
            {
                Ok(Some(oid)) => rec.commit = Some(oid.to_string()),
                Ok(None) => {}
                Err(e) => rec.note = Some(format!("not committed: {e}")),
            }
        }
    }
    commit_moves(ctx.committer.as_ref(), "released", returned).await;
    let all = std::mem::take(&mut rec.changed);
    rec.set_changed(all);
    if let Err(e) = ctx.runlog.append(&rec) {
        tracing::error!("{e}");
    }
    ctx.running.remove(&run_id);
    WakeResult {
        record: rec,
        completed,
        held,
        released,
        uncompleted,
    }
}

/// A wake on a model, seen as the result of a command, so one path decides what
/// happens to the handoffs whichever kind of main session ran.
fn model_exec_result(o: &crate::engine::prompt_run::PromptOutcome) -> exec::ExecResult {
    let outcome = o.outcome.unwrap_or(Outcome::Silent);
    let summary = o.summary.clone().unwrap_or_default();
    exec::ExecResult {
        exit_code: (!outcome.is_failure() && outcome != Outcome::Interrupted).then_some(0),
        timed_out: outcome == Outcome::Timeout,
        cancelled: outcome == Outcome::Interrupted,
        spawn_error: o.error.clone(),
        stdout_bytes: summary.len() as u64,
        stdout_tail: summary,
        duration: o.duration,
        ..Default::default()
    }
}

/// Rejects a claimed handoff that can no longer be read (changed or cut after its claim),
/// with the reason in its note; the move, for the commit that records it.
fn reject_unreadable(inbox: &Inbox, active: &std::path::Path, why: &str) -> Option<Moved> {
    let why = format!("it was claimed for the main session but could not be read then: {why}");
    let id = active
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    match inbox.reject(active, &why, Utc::now()) {
        Ok(to) => {
            tracing::warn!(handoff = %id, "rejected {}: {why} (see {})", active.display(), inbox.error_note(&to).display());
            Some(Moved {
                id,
                paths: vec![active.to_path_buf(), inbox.error_note(&to), to],
            })
        }
        Err(e) => {
            tracing::error!(handoff = %id, "{why}; and it cannot be moved to rejected/: {e}");
            None
        }
    }
}

/// One handoff moved within the inbox: its id, and the paths the move touched (where it
/// was, where it is now, a note written beside it).
#[derive(Debug, Clone)]
pub struct Moved {
    pub id: String,
    pub paths: Vec<PathBuf>,
}

/// Commits moves within the inbox (`outcome`: claimed, rejected, released) the way a
/// creation or a completion is committed: each move is in the history as it happens, so
/// `git status` shows nothing for the inbox between them, not only once it is drained.
pub async fn commit_moves(
    committer: Option<&loops_core::history::Committer>,
    outcome: &str,
    moved: Vec<Moved>,
) {
    let Some(req) = moves_request(outcome, moved) else {
        return;
    };
    if let Some(c) = committer {
        if let Err(e) = c.commit(req).await {
            tracing::warn!("handoffs {outcome}: not committed: {e}");
        }
    }
}

fn moves_request(outcome: &str, moved: Vec<Moved>) -> Option<CommitRequest> {
    if moved.is_empty() {
        return None;
    }
    let mut t: Vec<(&str, String)> = moved.iter().map(|m| ("Handoff", m.id.clone())).collect();
    t.push(("Outcome", outcome.to_string()));
    let subject = match moved.as_slice() {
        [one] => format!("{MAIN}: {outcome} handoff {}", one.id),
        many => format!("{MAIN}: {outcome} {} handoffs", many.len()),
    };
    let paths = moved.into_iter().flat_map(|m| m.paths).collect();
    Some(CommitRequest::new(paths, commit_message(&subject, &t)))
}

/// Creates a handoff from the runner itself (accountability) and commits it.
pub async fn runner_handoff(ctx: &RunContext, n: NewHandoff) -> Option<String> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        handoff::create_committed(&ctx.ws, ctx.committer.as_ref(), &n)
    })
    .await
    .ok()
    .flatten()
}

/// The handoff telling the main session a loop was paused after failing.
pub fn paused_loop_handoff(loop_name: &str, pause: &loops_core::state::Pause) -> NewHandoff {
    NewHandoff {
        from: "loops".into(),
        to: "main".into(),
        title: format!("Loop {loop_name} is paused: {}", pause.reason),
        priority: Priority::High,
        tags: vec!["loop-paused".into()],
        body: format!(
            "The loop `{loop_name}` was paused on {} after {}.\n\nLast error:\n\n```\n{}\n```\n\nFix the loop (its files are in `domains/{loop_name}/`), then run `loops resume {loop_name}`.",
            pause.since.to_rfc3339(),
            pause.reason,
            pause.last_error.as_deref().unwrap_or("(none recorded)")
        ),
        items: vec![
            format!("Find why `{loop_name}` fails (`loops runs {loop_name}`)"),
            format!("Fix it and run `loops resume {loop_name}`"),
        ],
        ..Default::default()
    }
}
