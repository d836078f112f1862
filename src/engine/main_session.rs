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
use loops_core::layout::Layout;
use loops_core::runs::{Outcome, RunInProgress, RunRecord};
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
    layout: Layout,
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
    pub fn new(layout: &Layout) -> Self {
        InboxState {
            layout: layout.clone(),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Where the runner's note on the handoff `name` is kept.
    pub fn note_path(&self, name: &str) -> PathBuf {
        self.layout.inbox_notes_dir().join(format!("{name}.json"))
    }

    pub fn note(&self, name: &str) -> Note {
        std::fs::read_to_string(self.note_path(name))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// What is wrong with a handoff's note, when there is one that cannot be read (then
    /// [`InboxState::note`] reads as no note: the hold it recorded is lost).
    pub fn note_damaged(&self, name: &str) -> Option<String> {
        let path = self.note_path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some(e.to_string()),
        };
        serde_json::from_str::<Note>(&text)
            .err()
            .map(|e| e.to_string())
    }

    /// Whether a wake whose process lives has claimed the handoff `name` (in `active/`).
    pub fn claimed_by_live_wake(&self, name: &str) -> bool {
        loops_core::runs::RunningSet::new(self.layout.root())
            .all()
            .into_iter()
            .any(|w| {
                w.loop_name == MAIN
                    && w.handoffs.iter().any(|f| f == name)
                    && loops_core::fsutil::process_alive(w.pid, w.pid_start)
            })
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
        for w in loops_core::runs::RunningSet::new(self.layout.root()).all() {
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
        // What wakes of an older version claimed, listed in a file of their own.
        let dir = self.layout.legacy_inbox_claims_dir();
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
    /// A person cancelled the wake (`loops jobs cancel`): its handoffs are back in the
    /// inbox, and not handed over again at once.
    pub cancelled_on_request: bool,
    /// A daily budget stopped the wake: the handoffs it had not finished are back in the
    /// inbox, and the next wake waits for the next UTC midnight.
    pub daily_budget_spent: bool,
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

/// Runs one wake of the main session over `claimed` (already in `active/`): a command
/// main session, or one on a model ([`crate::engine::main_agent`]).
pub async fn wake(
    ctx: &RunContext,
    main: &MainSettings,
    kind: WakeKind,
    claimed: Vec<PathBuf>,
    cancel: Option<watch::Receiver<bool>>,
) -> WakeResult {
    let run_id = loops_core::runs::new_run_id();
    let started = Utc::now();
    let marker = mark_wake(ctx, kind, &run_id, started, &claimed);
    let inbox = Inbox::of(&ctx.ws);
    let handoffs = load_claimed(ctx, &inbox, &claimed).await;
    let areas = vec![
        ctx.ws.root.join("drafts"),
        ctx.ws.root.join(".working-memory"),
    ];
    let before = loops_core::snapshot::Snapshot::of(areas.clone()).await;
    let w = WakeRun {
        ctx,
        main,
        kind,
        run_id: &run_id,
        marker: &marker,
    };
    let stop = crate::engine::run_context::cancel_on_request(ctx, &run_id, cancel);
    let (res, on_model) = w
        .run_main_session(&inbox, &handoffs, Some(stop.rx.clone()))
        .await;
    let stopped_why = (res.cancelled && stop.by_request())
        .then_some(crate::engine::run_context::CANCELLED_ON_REQUEST);
    drop(stop);
    let after = loops_core::snapshot::Snapshot::of(areas).await;
    let changed = loops_core::snapshot::changed_between(&before, &after);
    let layout = ctx.ws.layout();
    let notes = InboxState::new(&layout);
    let mut s = Settlement::new(&inbox, notes, main, &run_id, changed);
    s.stopped_why = stopped_why;
    if let Some(m) = &on_model {
        s.add_model_writes(layout.root(), &m.wrote);
        if m.outcome.outcome == Some(Outcome::Budget) {
            let why = m.outcome.error.clone().unwrap_or_default();
            s.budget_stop = Some((why, m.daily_budget_spent));
        }
    }
    s.settle(&res, &reported(&res, on_model.as_ref()), &handoffs);
    let outcome = match &s.budget_stop {
        Some(_) => Outcome::Budget,
        None => s.outcome(&res, handoffs.len()),
    };
    let mut rec = s.record(kind, started, outcome, &res, handoffs.len());
    if let Some((why, _)) = &s.budget_stop {
        rec.error = Some(why.clone());
    }
    if let Some(m) = on_model {
        add_model_wake(&mut rec, m, &ctx.ws);
    }
    if let Some(why) = stopped_why {
        rec.error = Some(why.into());
    }
    s.commit(ctx, &mut rec, kind, outcome).await;
    commit_moves(ctx.committer.as_ref(), "released", s.returned).await;
    let all = std::mem::take(&mut rec.changed);
    rec.set_changed(all);
    if let Err(e) = ctx.runlog.append(&rec) {
        tracing::error!("{e}");
    }
    ctx.running.remove(&run_id);
    WakeResult {
        record: rec,
        completed: s.completed,
        held: s.held,
        released: s.released,
        uncompleted: s.uncompleted,
        cancelled_on_request: stopped_why.is_some(),
        daily_budget_spent: s.budget_stop.is_some_and(|(_, daily)| daily),
    }
}

/// The wake's job names what it claimed: a crash gives exactly those back.
fn mark_wake(
    ctx: &RunContext,
    kind: WakeKind,
    run_id: &str,
    started: DateTime<Utc>,
    claimed: &[PathBuf],
) -> RunInProgress {
    let mut marker = RunInProgress::for_this_process(MAIN, run_id, kind.as_str(), None, 1, started);
    marker.handoffs = claimed
        .iter()
        .filter_map(|f| f.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect();
    let _ = ctx.running.put(&marker);
    marker
}

/// The claimed handoffs that can be read, in claim order. One that cannot is never left
/// in active/ with no word: it goes to rejected/ with the reason, committed.
async fn load_claimed(
    ctx: &RunContext,
    inbox: &Inbox,
    claimed: &[PathBuf],
) -> Vec<(Handoff, PathBuf)> {
    let mut loaded = Vec::new();
    let mut unreadable = Vec::new();
    for p in claimed {
        match inbox.load(p) {
            Ok(h) => loaded.push((h, p.clone())),
            Err(e) => unreadable.extend(reject_unreadable(inbox, p, &e.to_string())),
        }
    }
    commit_moves(ctx.committer.as_ref(), "rejected", unreadable).await;
    loaded
}

/// One wake, as [`wake`] was given it.
struct WakeRun<'a> {
    ctx: &'a RunContext,
    main: &'a MainSettings,
    kind: WakeKind,
    run_id: &'a str,
    marker: &'a RunInProgress,
}

impl WakeRun<'_> {
    /// Runs the main session on the handoffs. A wake on a model is also returned as
    /// the result a command would have had, so one path decides what happens to the
    /// handoffs whichever kind ran.
    async fn run_main_session(
        &self,
        inbox: &Inbox,
        handoffs: &[(Handoff, PathBuf)],
        cancel: Option<watch::Receiver<bool>>,
    ) -> (
        exec::ExecResult,
        Option<crate::engine::main_agent::ModelWake>,
    ) {
        let main = self.main;
        match &main.command {
            None if main.prompt.is_some() => {
                let w = crate::engine::main_agent::wake(
                    self.ctx,
                    main,
                    self.kind,
                    self.run_id,
                    self.marker,
                    handoffs,
                    cancel,
                )
                .await;
                (model_exec_result(&w.outcome), Some(w))
            }
            Some(argv) => (self.run_command(argv, inbox, handoffs, cancel).await, None),
            None => {
                let res = exec::ExecResult {
                    spawn_error: Some(
                        "the main session has neither `command:` nor `prompt:` in loops.yaml"
                            .into(),
                    ),
                    ..Default::default()
                };
                (res, None)
            }
        }
    }

    /// A command main session: the handoffs' paths in `LOOPS_HANDOFFS`, all of them as
    /// JSON on stdin, in its own process group under `main.timeout`.
    async fn run_command(
        &self,
        argv: &[String],
        inbox: &Inbox,
        handoffs: &[(Handoff, PathBuf)],
        cancel: Option<watch::Receiver<bool>>,
    ) -> exec::ExecResult {
        let ws = &self.ctx.ws;
        let items: Vec<serde_json::Value> = handoffs
            .iter()
            .map(|(h, p)| handoff_json(h, p, &ws.root, inbox.max_bytes()))
            .collect();
        let payload = json!({ "wake": self.kind.as_str(), "run": self.run_id, "handoffs": items });
        let (spawn_tx, mut spawn_rx) = tokio::sync::mpsc::unbounded_channel();
        let spec = ExecSpec {
            argv: argv.to_vec(),
            cwd: ws.root.clone(),
            env: self.command_env(inbox, handoffs),
            timeout: self.main.timeout,
            grace: exec::KILL_GRACE,
            on_spawn: Some(spawn_tx),
            stdin: Some(serde_json::to_vec(&payload).unwrap_or_default()),
        };
        // The marker names the command's process group, so a runner that dies mid-wake
        // has it stopped at its next start, before the handoffs go back to the inbox: an
        // orphaned main session must not work on them beside the next.
        let note_pgid = crate::engine::run_context::note_pgid(self.ctx, self.marker, &mut spawn_rx);
        // Owning the spec, the run drops the spawn sender when it ends, so a command that
        // cannot start does not leave `note_pgid` waiting.
        let run = async move { exec::run(&spec, None, cancel).await };
        let (res, ()) = tokio::join!(run, note_pgid);
        res
    }

    fn command_env(&self, inbox: &Inbox, handoffs: &[(Handoff, PathBuf)]) -> Vec<(String, String)> {
        let ws = &self.ctx.ws;
        let paths: Vec<String> = handoffs
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect();
        let mut env = exec::base_env();
        env.extend([
            ("LOOPS_WORKSPACE".to_string(), ws.root.display().to_string()),
            ("LOOPS_INBOX".to_string(), inbox.root.display().to_string()),
            ("LOOPS_RUN_ID".to_string(), self.run_id.to_string()),
            ("LOOPS_WAKE".to_string(), self.kind.as_str().to_string()),
            ("LOOPS_HANDOFFS".to_string(), paths.join("\n")),
        ]);
        env
    }
}

/// What the main session said it completed: a model's `complete_handoff` calls, or a
/// command's JSON line. Nothing, from a wake that failed.
fn reported(
    res: &exec::ExecResult,
    on_model: Option<&crate::engine::main_agent::ModelWake>,
) -> HashMap<String, Report> {
    if !res.success() {
        return HashMap::new();
    }
    match on_model {
        Some(w) => w
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
        None => reported_completions(&res.stdout_tail),
    }
}

/// What a wake does with its handoffs once the main session has ended: each is
/// completed, held in active/ with a note, or given back to the inbox; and what the
/// wake commits for it.
struct Settlement<'a> {
    inbox: &'a Inbox,
    notes: InboxState,
    main: &'a MainSettings,
    run_id: &'a str,
    /// When the main session ended: held notes and completions are dated by it.
    now: DateTime<Utc>,
    completed: Vec<String>,
    held: Vec<(String, String)>,
    released: Vec<String>,
    /// The moves of the released handoffs, committed after the wake's own commit.
    returned: Vec<Moved>,
    uncompleted: Vec<Uncompleted>,
    commit_paths: Vec<PathBuf>,
    trailers: Vec<(&'static str, String)>,
    /// Why the wake was stopped, when a person asked for it: the handoffs' notes say so.
    stopped_why: Option<&'static str>,
    /// Why a budget stopped a model wake between turns, and whether it was a daily one.
    budget_stop: Option<(String, bool)>,
}

impl<'a> Settlement<'a> {
    /// `changed`: what changed in the main session's areas while it ran.
    fn new(
        inbox: &'a Inbox,
        notes: InboxState,
        main: &'a MainSettings,
        run_id: &'a str,
        changed: Vec<PathBuf>,
    ) -> Self {
        Settlement {
            notes,
            inbox,
            main,
            run_id,
            now: Utc::now(),
            completed: Vec::new(),
            held: Vec::new(),
            released: Vec::new(),
            returned: Vec::new(),
            uncompleted: Vec::new(),
            commit_paths: changed,
            trailers: Vec::new(),
            budget_stop: None,
            stopped_why: None,
        }
    }

    /// What the model's tools wrote, wherever the main session may write.
    fn add_model_writes(&mut self, runtime: &Path, wrote: &[PathBuf]) {
        for p in wrote {
            if !p.starts_with(runtime) && !self.commit_paths.contains(p) {
                self.commit_paths.push(p.clone());
            }
        }
    }

    fn settle(
        &mut self,
        res: &exec::ExecResult,
        reported: &HashMap<String, Report>,
        handoffs: &[(Handoff, PathBuf)],
    ) {
        for (h, path) in handoffs {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let note = self.notes.note(&name);
            if !res.success() {
                let why = match self.stopped_why {
                    Some(why) => Some(why.into()),
                    None => res.failure_reason(self.main.timeout),
                };
                self.after_failure(&h.id, path, &name, note, why);
                continue;
            }
            if let Some((why, daily)) = self.budget_stop.clone() {
                if !reported.contains_key(&h.id) {
                    self.after_budget(&h.id, path, &name, note, why, daily);
                    continue;
                }
            }
            match reported.get(&h.id) {
                Some(report) => self.after_report(&h.id, path, &name, note, report),
                None => {
                    let why = "the main session did not report it completed".to_string();
                    self.hold(&h.id, &name, note, why);
                }
            }
        }
    }

    /// A failed wake gives the handoff back to the inbox, or holds it for a person once
    /// it has failed `main.max_attempts` times.
    fn after_failure(
        &mut self,
        id: &str,
        path: &Path,
        name: &str,
        mut note: Note,
        why: Option<String>,
    ) {
        note.attempts += 1;
        note.last_error = why;
        if note.attempts >= self.main.max_attempts {
            let why = format!(
                "the main session failed {} on it; last error: {}",
                match note.attempts {
                    1 => "1 time".to_string(),
                    n => format!("{n} times"),
                },
                note.last_error.as_deref().unwrap_or("unknown")
            );
            self.hold(id, name, note, why);
            return;
        }
        self.give_back(id, path, name, &note);
    }

    /// A budget stopped the wake before the main session finished with the handoff. A
    /// daily budget is not the handoff's fault: it goes back to the inbox with no attempt
    /// counted, and waits there for the next day's wakes. A wake that cannot finish within
    /// `budget.tokens_per_run` is a failed attempt, so it is not woken for forever.
    fn after_budget(
        &mut self,
        id: &str,
        path: &Path,
        name: &str,
        mut note: Note,
        why: String,
        daily: bool,
    ) {
        if !daily {
            return self.after_failure(id, path, name, note, Some(why));
        }
        note.last_error = Some(why);
        self.give_back(id, path, name, &note);
    }

    /// Returns an active handoff to the inbox, with its note.
    fn give_back(&mut self, id: &str, path: &Path, name: &str, note: &Note) {
        if let Some(back) = self.inbox.release(path) {
            self.released.push(id.to_string());
            self.returned.push(Moved {
                id: id.to_string(),
                paths: vec![path.to_path_buf(), back],
            });
        }
        self.notes.set_note(name, note);
    }

    /// The main session says it completed the handoff: it is, once every required item
    /// is ticked.
    fn after_report(&mut self, id: &str, path: &Path, name: &str, note: Note, report: &Report) {
        // The items it says it did are ticked in the file first, so the done handoff
        // shows them ticked and the rule below is the one rule for all.
        let mut ticked_now = false;
        if report.all_ticked || !report.ticked.is_empty() {
            let max = self.inbox.max_bytes();
            match handoff::tick(path, &report.ticked, report.all_ticked, max) {
                Ok(t) => ticked_now = !t.ticked.is_empty(),
                Err(e) => {
                    let why =
                        format!("completed by the main session, but its ticks were refused: {e}");
                    self.hold(id, name, note, why);
                    return;
                }
            }
        }
        // The main session may have ticked items in the file: read it again.
        let h = self.inbox.load(path).ok();
        let unticked: Vec<String> = h
            .as_ref()
            .map(|h| h.unticked().iter().map(|i| i.text.clone()).collect())
            .unwrap_or_default();
        if unticked.is_empty() {
            self.complete(id, path, name, h, &report.summary);
            return;
        }
        // What it did tick stays ticked, and in the history.
        if ticked_now {
            self.commit_paths.push(path.to_path_buf());
        }
        let why = format!(
            "completed by the main session, but not ticked: {}",
            unticked.join("; ")
        );
        self.hold(id, name, note, why);
    }

    fn complete(
        &mut self,
        id: &str,
        path: &Path,
        name: &str,
        h: Option<Handoff>,
        summary: &Option<String>,
    ) {
        match self.inbox.complete(path, summary.as_deref(), self.now) {
            Ok(done) => {
                self.commit_paths
                    .extend(self.inbox.gone_pending(name.as_ref()));
                self.commit_paths.push(path.to_path_buf());
                self.commit_paths.push(done);
                self.trailers.push(("Handoff", id.to_string()));
                if let Some(h) = &h {
                    self.trailers.extend(h.author_trailers());
                }
                self.notes.set_note(name, &Note::default());
                self.completed.push(id.to_string());
            }
            Err(e) if path.exists() => {
                // The main session did its part; the disk refused the move. Kept for
                // the daemon to finish, never handed over again.
                tracing::warn!(handoff = %id, "could not complete it yet ({e}); trying again shortly");
                self.uncompleted.push(Uncompleted {
                    id: id.to_string(),
                    from: h.as_ref().map(|h| h.author()),
                    active: path.to_path_buf(),
                    summary: summary.clone(),
                    run_id: self.run_id.to_string(),
                });
            }
            Err(e) => self
                .held
                .push((id.to_string(), format!("could not complete: {e}"))),
        }
    }

    /// Holds the handoff in active/ with `why` in its note.
    fn hold(&mut self, id: &str, name: &str, mut note: Note, why: String) {
        note.held = Some(why.clone());
        note.held_since.get_or_insert(self.now);
        self.notes.set_note(name, &note);
        self.held.push((id.to_string(), why));
    }

    fn outcome(&self, res: &exec::ExecResult, handoffs: usize) -> Outcome {
        if res.cancelled {
            Outcome::Interrupted
        } else if res.timed_out {
            Outcome::Timeout
        } else if !res.success() {
            Outcome::Failed
        } else if self.completed.is_empty()
            && self.commit_paths.is_empty()
            && res.stdout_bytes == 0
            && handoffs == 0
        {
            Outcome::Silent
        } else {
            Outcome::Acted
        }
    }

    /// The wake's run record, as a command's run would have it.
    fn record(
        &self,
        kind: WakeKind,
        started: DateTime<Utc>,
        outcome: Outcome,
        res: &exec::ExecResult,
        handoffs: usize,
    ) -> RunRecord {
        let mut rec =
            RunRecord::decision(MAIN, kind.as_str(), None, started, outcome, String::new());
        rec.run_id = self.run_id.to_string();
        let later = match self.uncompleted.len() {
            0 => String::new(),
            n => format!(", {n} to be completed when the disk allows"),
        };
        rec.note = Some(format!(
            "{handoffs} handoff(s): {} completed, {} held, {} returned to the inbox{later}",
            self.completed.len(),
            self.held.len(),
            self.released.len(),
        ));
        rec.exit_code = res.exit_code;
        rec.error = res.failure_reason(self.main.timeout);
        rec.stdout_tail = res.stdout_tail.clone();
        rec.stderr_tail = res.stderr_tail.clone();
        rec.stdout_dropped = res.stdout_dropped;
        rec.stderr_dropped = res.stderr_dropped;
        rec.finished = self.now;
        rec.duration_ms = res.duration.as_millis() as u64;
        rec
    }

    /// Commits what the wake changed and completed, in one commit.
    async fn commit(
        &mut self,
        ctx: &RunContext,
        rec: &mut RunRecord,
        kind: WakeKind,
        outcome: Outcome,
    ) {
        let Some(c) = ctx
            .committer
            .as_ref()
            .filter(|_| !self.commit_paths.is_empty())
        else {
            return;
        };
        let subject = if self.completed.is_empty() {
            format!("{MAIN}: {} wake", kind.as_str())
        } else {
            format!("{MAIN}: completed {} handoff(s)", self.completed.len())
        };
        let said = if self.completed.is_empty() {
            outcome.to_string()
        } else {
            "completed".into()
        };
        let mut t = vec![
            ("Loop", MAIN.to_string()),
            ("Run", self.run_id.to_string()),
            ("Trigger", kind.as_str().to_string()),
            ("Outcome", said),
            ("Duration-Ms", rec.duration_ms.to_string()),
        ];
        t.append(&mut self.trailers);
        t.extend(crate::engine::loop_run::token_trailers(rec));
        rec.changed = self
            .commit_paths
            .iter()
            .map(|p| ctx.ws.relative(p).display().to_string())
            .collect();
        let req = CommitRequest {
            contents: Vec::new(),
            paths: std::mem::take(&mut self.commit_paths),
            message: commit_message(&subject, &t),
            ..Default::default()
        };
        match c.commit(req).await {
            Ok(Some(oid)) => rec.commit = Some(oid.to_string()),
            Ok(None) => {}
            Err(e) => rec.note = Some(format!("not committed: {e}")),
        }
    }
}

/// A wake on a model: its provider, tokens, transcript and summary in the record,
/// instead of a command's output.
fn add_model_wake(
    rec: &mut RunRecord,
    w: crate::engine::main_agent::ModelWake,
    ws: &loops_core::workspace::Workspace,
) {
    let o = w.outcome;
    rec.cost_estimate = o.cost_estimate(&ws.settings);
    rec.provider = o.provider;
    rec.model = o.model;
    rec.tokens = o.tokens;
    rec.turns = o.turns;
    rec.fallbacks = o.fallbacks;
    rec.summary = o.summary;
    rec.transcript = o.transcript.map(|p| ws.relative(&p).display().to_string());
    rec.refused_tools = o.refused;
    rec.deliveries = o.deliveries;
    rec.stdout_tail.clear();
    if let Some(n) = o.note {
        rec.note = Some(format!("{}; {n}", rec.note.take().unwrap_or_default()));
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
