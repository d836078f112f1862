//! One run of a loop, start to finish: mark it running, run the payload, find the files
//! it changed, commit them, append the run record. Everything that runs goes through
//! here, whether the daemon scheduled it or a person triggered it.

use crate::engine::run_context::{delivery_scope, note_pgid, run_env, RunContext, RunRequest};
use chrono::Utc;
use loops_core::domain::{LoopDef, Payload};
use loops_core::exec::{self, ExecSpec};
use loops_core::history::{commit_message, CommitRequest};
use loops_core::jobs::own;
use loops_core::runs::{Outcome, RunInProgress, RunRecord};
use loops_core::snapshot::{changed_between, Snapshot};
use loops_core::workspace::Workspace;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, watch};

/// The longest a run waits for the person's git to finish moving HEAD.
const GIT_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits while a git command that rewrites the work tree (a pull, a rebase, a checkout)
/// runs in it. A run that appends to a file git is replacing writes into the file git
/// unlinks, and its line is gone before the runner can see it (the pull test found it);
/// git's own commands take a second at most, so the run starts a moment later instead.
/// A git that starts during a run can still meet it; that window is the run's length.
fn wait_for_git(root: &std::path::Path, loop_name: &str) {
    let workdir = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let t0 = std::time::Instant::now();
    let mut said = false;
    while let Some(who) = loops_core::git_gate::git_rewriting(&workdir) {
        if t0.elapsed() >= GIT_WAIT_MAX {
            tracing::warn!(
                loop_name,
                "git has been at work for {}s ({who}): the run starts anyway",
                GIT_WAIT_MAX.as_secs()
            );
            return;
        }
        if !said {
            tracing::info!(loop_name, "the run waits for git to finish ({who})");
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The start snapshot of a run: its areas' files, and which of them hold a person's
/// uncommitted edits (only worth finding when the run's changes are committed).
async fn snapshot_start(
    ctx: &RunContext,
    def: &LoopDef,
    areas: Vec<PathBuf>,
) -> (Snapshot, own::StartState) {
    let root = ctx.ws.root.clone();
    let commits = ctx.committer.is_some();
    let marker = ctx.ws.layout().dirty_at_start(&def.name);
    let loop_name = def.name.clone();
    tokio::task::spawn_blocking(move || {
        if commits {
            wait_for_git(&root, &loop_name);
        }
        let files = Snapshot::take(&areas);
        if !commits {
            return (files, own::StartState::default());
        }
        let mut start = own::StartState::read(&root, files.paths());
        // A marker left behind: the run before this one was killed before it committed.
        if let Some(then) = std::fs::read(&marker)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<PathBuf>>(&b).ok())
        {
            start.adopt_interrupted(&then);
        }
        let now = serde_json::to_vec(&start.dirty_paths()).unwrap_or_default();
        if let Some(dir) = marker.parent() {
            let _ = loops_core::fsutil::create_dir_all(dir);
        }
        let _ = loops_core::fsutil::atomic_replace(&marker, &now);
        (files, start)
    })
    .await
    .unwrap_or_default()
}

/// The run's changes are committed, or queued to be: no later run need adopt them.
fn run_finished_sorting(ctx: &RunContext, def: &LoopDef) {
    let _ = std::fs::remove_file(ctx.ws.layout().dirty_at_start(&def.name));
}

/// The files that define a loop, which are a person's to change, never a run's.
fn definition_files(def: &LoopDef) -> Vec<PathBuf> {
    vec![def.dir.join("config.yaml"), def.dir.join("prompt.md")]
}

/// The folders a loop's run may change (and whose changes are committed).
pub fn writable_areas(ws: &Workspace, def: &LoopDef) -> Vec<PathBuf> {
    vec![def.dir.clone(), ws.root.join("drafts").join(&def.name)]
}

/// Runs one loop once and returns its record (already appended to the run log).
pub async fn execute(
    ctx: &RunContext,
    def: &LoopDef,
    req: &RunRequest,
    live: Option<exec::Live>,
    cancel: Option<watch::Receiver<bool>>,
) -> RunRecord {
    let started = Utc::now();
    let marker = RunInProgress::for_this_process(
        &def.name,
        &req.run_id,
        req.trigger.as_str(),
        req.slot,
        req.attempt,
        started,
    );
    // The daemon records a run when it claims its slot, a trigger when it reserves the
    // loop; either way the run has begun now.
    if let Err(e) = ctx.running.put(&marker) {
        tracing::warn!("cannot record the run as begun: {e}");
    }
    let stop = crate::engine::run_context::cancel_on_request(ctx, &req.run_id, cancel);
    let cancel = Some(stop.rx.clone());
    let state = ctx.store.load(&def.name);
    let mut rec = starting_record(def, req, started);
    let run = PayloadRun {
        ctx,
        def,
        req,
        state: state.as_ref(),
        marker: &marker,
        areas: writable_areas(&ctx.ws, def),
    };
    let (mut changed, mut attributed) = match &def.payload {
        Payload::Prompt { .. } if !ctx.ws.settings.has_providers => {
            rec.outcome = Outcome::Skipped;
            rec.note = Some(
                "waiting for a provider: prompt loops need `providers:` in loops.yaml (see docs/configuration.md)".into(),
            );
            (Vec::new(), own::Attributed::default())
        }
        Payload::Prompt { .. } => run.prompt(live, cancel, &mut rec).await,
        Payload::Command { argv } => run.command(argv, live, cancel, &mut rec).await,
    };
    if rec.outcome == Outcome::Interrupted && stop.by_request() {
        rec.error = Some(crate::engine::run_context::CANCELLED_ON_REQUEST.into());
    }
    drop(stop);
    rec.changed = changed
        .iter()
        .map(|p| ctx.ws.relative(p).display().to_string())
        .collect();
    rec.finished = Utc::now();
    if rec.duration_ms == 0 {
        rec.duration_ms = (rec.finished - started).num_milliseconds().max(0) as u64;
    }
    note_orphan_draft(ctx, def, req, &mut changed, &mut rec);
    let sink = loops_core::history::HeldBackSink::default();
    // Until its changes are committed (or waiting in the committer's queue), a run that is
    // killed leaves them for the next run of the loop to adopt (see `snapshot_start`).
    let own_hunks = std::mem::take(&mut attributed.own_hunks);
    if commit_run(ctx, def, &mut rec, changed, own_hunks, &sink).await {
        run_finished_sorting(ctx, def);
    }
    rec.finished = rec.finished.max(started);
    if let Ok(mut more) = sink.lock() {
        attributed.held.append(&mut more);
    }
    note_held_back(ctx, def, &attributed.held, &mut rec);
    let all = std::mem::take(&mut rec.changed);
    rec.set_changed(all);
    if let Err(e) = ctx.runlog.append(&rec) {
        tracing::error!("cannot append the run record: {e}");
    }
    if rec.tokens.is_some() {
        crate::engine::budget::after_run(ctx, def, &rec.run_id).await;
    }
    ctx.running.remove(&req.run_id);
    rec
}

/// A run's record as it begins: nothing done yet.
fn starting_record(def: &LoopDef, req: &RunRequest, started: chrono::DateTime<Utc>) -> RunRecord {
    RunRecord {
        permanent_failure: false,
        loop_name: def.name.clone(),
        run_id: req.run_id.clone(),
        trigger: req.trigger.as_str().to_string(),
        slot: req.slot,
        attempt: req.attempt,
        fired: req.fired,
        started,
        finished: started,
        duration_ms: 0,
        outcome: Outcome::Silent,
        exit_code: None,
        error: None,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        stdout_dropped: 0,
        stderr_dropped: 0,
        changed: Vec::new(),
        changed_count: None,
        commit: None,
        missed_count: None,
        note: None,
        provider: None,
        model: None,
        tokens: None,
        turns: None,
        fallbacks: Vec::new(),
        summary: None,
        transcript: None,
        refused_tools: Vec::new(),
        deliveries: Vec::new(),
        held_back: Vec::new(),
        held: None,
        cost_estimate: None,
        next_check: None,
    }
}

/// What a run's payload needs around it.
struct PayloadRun<'a> {
    ctx: &'a RunContext,
    def: &'a LoopDef,
    req: &'a RunRequest,
    state: Option<&'a loops_core::state::LoopState>,
    marker: &'a RunInProgress,
    /// Where the run may write: snapshotted before and after to find its changes.
    areas: Vec<PathBuf>,
}

impl PayloadRun<'_> {
    /// A prompt payload: the agent loop; its changes are what its tools wrote (or, for an
    /// agent CLI that writes itself, what changed).
    async fn prompt(
        &self,
        live: Option<exec::Live>,
        cancel: Option<watch::Receiver<bool>>,
        rec: &mut RunRecord,
    ) -> (Vec<PathBuf>, own::Attributed) {
        let (ctx, def) = (self.ctx, self.def);
        let (before, start) = snapshot_start(ctx, def, self.areas.clone()).await;
        let p = crate::engine::prompt_run::run(
            ctx,
            def,
            self.req,
            self.state,
            self.marker,
            live,
            cancel,
        )
        .await;
        let after = Snapshot::of(self.areas.clone()).await;
        let mut all = changed_between(&before, &after);
        // Files the tools wrote outside the loop's areas (a new inbox file, or
        // anywhere for a loop in the main session's context) are the run's too.
        let layout = ctx.ws.layout();
        for w in &p.wrote {
            if !w.starts_with(layout.root()) && !all.contains(w) {
                all.push(w.clone());
            }
        }
        let writer = if p.writes_itself {
            own::Writer::Command {
                definition: definition_files(def),
                reported: None,
            }
        } else {
            own::Writer::Tools(&p.wrote)
        };
        let attributed = own::attribute(all, &start, &writer);
        let changed = attributed.committed();
        p.fill(rec, &ctx.ws, !changed.is_empty());
        (changed, attributed)
    }

    /// A command payload in its own process group; its changes are what changed in its
    /// areas, less what someone else was editing, plus what it reported in `LOOPS_WROTE`.
    async fn command(
        &self,
        argv: &[String],
        live: Option<exec::Live>,
        cancel: Option<watch::Receiver<bool>>,
        rec: &mut RunRecord,
    ) -> (Vec<PathBuf>, own::Attributed) {
        let (ctx, def, req) = (self.ctx, self.def, self.req);
        let (before, start) = snapshot_start(ctx, def, self.areas.clone()).await;
        let (spawn_tx, mut spawn_rx) = mpsc::unbounded_channel();
        let wrote_list = ctx.ws.layout().wrote_list(&req.run_id);
        if let Some(dir) = wrote_list.parent() {
            // Private like the rest of .loops/ (the daemon would tighten it otherwise).
            let _ = loops_core::fsutil::create_dir_all(dir);
        }
        let mut env = run_env(&ctx.ws, def, &req.run_id, self.state);
        env.push(("LOOPS_WROTE".into(), wrote_list.display().to_string()));
        let spec = ExecSpec {
            argv: exec::spawnable(argv.to_vec(), &env),
            cwd: def.dir.clone(),
            env,
            timeout: def.timeout,
            grace: exec::KILL_GRACE,
            on_spawn: Some(spawn_tx),
            stdin: None,
        };
        let note_pgid = note_pgid(ctx, self.marker, &mut spawn_rx);
        // The run owns the spec (and so the spawn sender): when a command cannot be
        // started at all, the sender goes with it and `note_pgid` ends instead of
        // waiting forever for a pid.
        let run = async move { exec::run(&spec, live, cancel).await };
        let (res, ()) = tokio::join!(run, note_pgid);
        let after = Snapshot::of(self.areas.clone()).await;
        let writer = own::Writer::Command {
            definition: definition_files(def),
            reported: own::take_reported(&wrote_list, &def.dir),
        };
        let attributed = own::attribute(changed_between(&before, &after), &start, &writer);
        let mut changed = attributed.committed();
        fill_from_command(rec, &res, def, &changed);
        if let (Some(d), Outcome::Acted) = (&def.deliver, rec.outcome) {
            if let Some(w) = deliver_stdout(ctx, def, req, d, &res, rec).await {
                changed.push(w);
            }
        }
        (changed, attributed)
    }
}

/// What a command's end says about the run: its output tails, its exit, and the outcome.
fn fill_from_command(
    rec: &mut RunRecord,
    res: &exec::ExecResult,
    def: &LoopDef,
    changed: &[PathBuf],
) {
    rec.exit_code = res.exit_code;
    rec.stdout_tail = res.stdout_tail.clone();
    rec.stderr_tail = res.stderr_tail.clone();
    rec.stdout_dropped = res.stdout_dropped;
    rec.stderr_dropped = res.stderr_dropped;
    rec.error = res.failure_reason(def.timeout);
    rec.permanent_failure = res.spawn_error.is_some();
    rec.outcome = if res.cancelled {
        Outcome::Interrupted
    } else if res.timed_out {
        Outcome::Timeout
    } else if !res.success() {
        Outcome::Failed
    } else if changed.is_empty()
        && (res.stdout_bytes == 0
            || loops_core::channels::strip_silent_lines(&res.stdout_tail).is_empty())
    {
        // Nothing changed and nothing said but a silent token: a silent run.
        Outcome::Silent
    } else {
        Outcome::Acted
    };
    rec.duration_ms = res.duration.as_millis() as u64;
}

/// A draft the run wrote with no handoff of its own gets one made for it, committed with
/// the run.
fn note_orphan_draft(
    ctx: &RunContext,
    def: &LoopDef,
    req: &RunRequest,
    changed: &mut Vec<PathBuf>,
    rec: &mut RunRecord,
) {
    let Some(h) = orphan_draft_handoff(ctx, def, &req.run_id, changed) else {
        return;
    };
    let n = format!("wrote a draft but no handoff: made handoff {}", h.0);
    rec.note = Some(match rec.note.take() {
        Some(old) => format!("{old}; {n}"),
        None => n,
    });
    rec.changed
        .push(ctx.ws.relative(&h.1).display().to_string());
    changed.push(h.1);
}

/// Commits the run's changes (only its own hunks); returns whether they are committed or
/// waiting in the committer's queue (a run with nothing to commit counts as committed).
async fn commit_run(
    ctx: &RunContext,
    def: &LoopDef,
    rec: &mut RunRecord,
    changed: Vec<PathBuf>,
    own_hunks: Vec<(PathBuf, Vec<u8>)>,
    sink: &loops_core::history::HeldBackSink,
) -> bool {
    let (false, Some(c)) = (changed.is_empty(), &ctx.committer) else {
        return true;
    };
    let msg = commit_message(
        &format!("{}: {}", def.name, subject_for(rec)),
        &trailers(def, rec),
    );
    let req = CommitRequest {
        paths: changed,
        message: msg,
        own_hunks,
        held_back: Some(sink.clone()),
        ..Default::default()
    };
    match c.commit(req).await {
        Ok(Some(oid)) => rec.commit = Some(oid.to_string()),
        Ok(None) => {}
        Err(e) => {
            let help = e.help().map(|h| format!(" ({h})")).unwrap_or_default();
            let held = matches!(e, loops_core::history::HistoryError::Held(_));
            if held {
                // The committer said once that commits are held; not news per run.
                tracing::debug!(loop_name = %def.name, "run commit waits: {e}");
            } else {
                tracing::warn!(loop_name = %def.name, "could not commit the run's changes: {e}{help}");
            }
            rec.note = Some(format!("not committed: {e}{help}"));
            return held;
        }
    }
    true
}

/// Names in the record, and warns of, the paths left out of the run's commit; they are
/// no longer listed as the run's changes.
fn note_held_back(
    ctx: &RunContext,
    def: &LoopDef,
    held: &[(PathBuf, String)],
    rec: &mut RunRecord,
) {
    if held.is_empty() {
        return;
    }
    for h in own::records(&ctx.ws, held) {
        tracing::warn!(loop_name = %def.name, path = %h.path, "held back from the run's commit: {}", h.why);
        rec.changed.retain(|c| *c != h.path);
        rec.held_back.push(h);
    }
}

/// `deliver:` — posts a command loop's stdout to its channel. A failure is recorded with
/// the run (and handed to the main session by the poster); it does not fail the run.
/// Returns the file a `file` channel wrote, to be committed with the run.
async fn deliver_stdout(
    ctx: &RunContext,
    def: &LoopDef,
    req: &RunRequest,
    d: &loops_core::domain::Deliver,
    res: &exec::ExecResult,
    rec: &mut RunRecord,
) -> Option<PathBuf> {
    // A cut output keeps its head and tail with a line between them saying how much
    // is missing, so the message says it is not the whole.
    let text = loops_core::channels::strip_silent_lines(&res.stdout_tail);
    if text.trim().is_empty() {
        return None;
    }
    let poster = loops_core::channels::Poster::new(
        ctx.ws.clone(),
        ctx.committer.clone(),
        loops_core::guard::Guard::new(&ctx.ws.settings.guard, Some(&def.guard)),
    );
    let o = loops_core::channels::Outbound {
        channel: d.channel.clone(),
        text,
        thread: d.thread.clone(),
        loop_name: def.name.clone(),
        run_id: req.run_id.clone(),
        scope: delivery_scope(def, req),
    };
    // Retries are bounded by the channel's own attempts; this is a last stop.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15 * 60);
    let r = poster.post(&o, deadline).await;
    if let Some(n) = loops_core::channels::DeliveryNote::of(&d.channel, &r) {
        rec.deliveries.push(n);
    }
    match r {
        Ok(p) => p.wrote,
        Err(e) => {
            tracing::warn!(loop_name = %def.name, "{e}");
            let n = format!("not delivered: {e}");
            rec.note = Some(match rec.note.take() {
                Some(old) => format!("{old}; {n}"),
                None => n,
            });
            None
        }
    }
}

/// A run that wrote a draft in `drafts/<loop>/` but made no handoff gets one made for it,
/// flagged `orphan-draft`, so the draft is not silently forgotten.
fn orphan_draft_handoff(
    ctx: &RunContext,
    def: &LoopDef,
    run_id: &str,
    changed: &[PathBuf],
) -> Option<(String, PathBuf)> {
    let drafts = ctx.ws.root.join("drafts").join(&def.name);
    let draft = changed
        .iter()
        .find(|p| p.starts_with(&drafts) && p.is_file())?;
    if ctx.ws.layout().handoff_run(run_id).exists() {
        return None;
    }
    let rel = ctx.ws.relative(draft).display().to_string();
    let n = loops_core::handoff::NewHandoff {
        from: def.name.clone(),
        to: "main".into(),
        title: format!("Draft from {} without a handoff", def.name),
        run: Some(run_id.to_string()),
        draft: Some(rel.clone()),
        flagged: Some("orphan-draft".into()),
        body: format!(
            "The run {run_id} of `{}` wrote `{rel}` but made no handoff. The runner made this one so the draft is not forgotten.",
            def.name
        ),
        items: vec!["Read the draft".into(), "Decide what to do with it".into()],
        ..Default::default()
    };
    match loops_core::handoff::Inbox::of(&ctx.ws).create(&n, Utc::now()) {
        Ok((id, path, _)) => Some((id, path)),
        Err(e) => {
            tracing::warn!(loop_name = %def.name, "could not make the orphan-draft handoff: {e}");
            None
        }
    }
}

fn subject_for(rec: &RunRecord) -> String {
    let line = rec
        .summary
        .as_deref()
        .unwrap_or(&rec.stdout_tail)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("[…"))
        .map(|l| loops_core::text::clip(l, 100));
    match (rec.outcome, line) {
        (Outcome::Acted, Some(l)) => l,
        (Outcome::Acted, None) | (Outcome::Silent, _) => {
            let names: Vec<&str> = rec
                .changed
                .iter()
                .map(|p| {
                    Path::new(p)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or(p)
                })
                .take(3)
                .collect();
            let more = rec.changed.len().saturating_sub(3);
            if more > 0 {
                format!("updated {} and {more} more", names.join(", "))
            } else {
                format!("updated {}", names.join(", "))
            }
        }
        (o, _) => format!(
            "{o}: {}",
            rec.error.as_deref().unwrap_or("see the run record")
        ),
    }
}

fn trailers(def: &LoopDef, rec: &RunRecord) -> Vec<(&'static str, String)> {
    let trigger = match rec.slot {
        Some(s) => format!(
            "{} {}",
            rec.trigger,
            s.with_timezone(&def.schedule.tz).to_rfc3339()
        ),
        None => rec.trigger.clone(),
    };
    let mut t = vec![
        ("Loop", def.name.clone()),
        ("Run", rec.run_id.clone()),
        ("Trigger", trigger),
        ("Outcome", rec.outcome.to_string()),
        ("Duration-Ms", rec.duration_ms.to_string()),
    ];
    if rec.attempt > 1 {
        t.push(("Attempt", rec.attempt.to_string()));
    }
    if let Some(c) = rec.exit_code {
        t.push(("Exit-Code", c.to_string()));
    }
    t.extend(token_trailers(rec));
    t
}

/// `Tokens-In`, `Tokens-Out`, the cache figures, `Model` and each `Fallback: a -> b`,
/// for prompt runs.
pub fn token_trailers(rec: &RunRecord) -> Vec<(&'static str, String)> {
    let mut t = Vec::new();
    if let Some(u) = &rec.tokens {
        t.push(("Tokens-In", u.input.to_string()));
        t.push(("Tokens-Out", u.output.to_string()));
        t.push(("Tokens-Cache-Read", u.cache_read.to_string()));
        t.push(("Tokens-Cache-Write", u.cache_write.to_string()));
    }
    if let Some(m) = &rec.model {
        t.push(("Model", m.clone()));
    }
    // Only when the model's price is known: an unknown cost is never written as $0.
    if let Some(c) = rec.cost_estimate {
        t.push(("Cost-Estimate", loops_core::pricing::Cost(c).display()));
    }
    for f in &rec.fallbacks {
        t.push(("Fallback", f.clone()));
    }
    t
}
