//! The doorbell: what wakes the main session. A handoff arriving in `inbox/`, the start-up
//! scan, a heartbeat or a retry rings it; it claims the pending handoffs for main (at most
//! one wake runs, arrivals meanwhile make one more) and starts the wake, whose light job
//! names the handoffs it claimed. A flood guard and a back-off after a failed wake keep a
//! failing main session from being woken in a loop; nothing is dropped, because a handoff
//! stays in the inbox until a wake claims it.

use crate::engine::main_session::{commit_moves, wake, InboxState, Moved, Uncompleted, WakeResult};
use crate::engine::run_context::{RunContext, WakeKind};
use chrono::{DateTime, Utc};
use loops_core::jobs::policy::WAKE_RETRY;
use loops_core::runs::Outcome;
use loops_core::workspace::{MainSettings, Workspace};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How soon a pending handoff still open for writing is looked at again.
const STILL_WRITTEN_RETRY: Duration = Duration::from_millis(100);

fn chrono_ms(d: Duration) -> chrono::Duration {
    chrono::Duration::milliseconds(d.as_millis() as i64)
}

/// `.loops/main/budget-hold.json`: the day's budget is spent, and the main session is
/// not woken before `until`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct BudgetHold {
    pub until: DateTime<Utc>,
    pub why: String,
}

impl BudgetHold {
    /// The hold in `path`, if it still holds at `now`.
    pub fn read(path: &std::path::Path, now: DateTime<Utc>) -> Option<BudgetHold> {
        BudgetHold::load(path)
            .ok()
            .flatten()
            .filter(|h| now < h.until)
    }

    /// What a hold file that cannot be read means, and what to do.
    pub(crate) fn damaged(path: &std::path::Path, error: &str) -> String {
        format!(
            "{} cannot be read ({error}): it is ignored, and the main session's budget is checked from the run records; delete the file to silence this",
            path.display()
        )
    }

    /// The hold in `path` (`None`: there is none), or why it cannot be read.
    pub(crate) fn load(path: &std::path::Path) -> Result<Option<BudgetHold>, String> {
        match std::fs::read(path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A hold an earlier run of the daemon wrote, said again: the person who starts the
/// daemon hears why the main session does not wake.
fn held_at_start(ws: &Workspace, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let path = ws.layout().main_budget_hold();
    let hold = match BudgetHold::load(&path) {
        Ok(hold) => hold.filter(|h| now < h.until)?,
        Err(e) => {
            // The day's spend is read from the run records at the next wake anyway.
            tracing::warn!("{}", BudgetHold::damaged(&path, &e));
            return None;
        }
    };
    say_held(hold.until, &hold.why);
    Some(hold.until)
}

fn say_held(until: DateTime<Utc>, why: &str) {
    tracing::warn!(
        "the main session is held until {}: {why}; handoffs wait in the inbox until then (raise `budget:` in loops.yaml to wake it sooner)",
        until.to_rfc3339()
    );
}

/// The main session's wakes: one at a time, coalesced, flood-guarded.
pub struct Doorbell {
    main: Option<MainSettings>,
    inbox: loops_core::handoff::Inbox,
    notes: InboxState,
    running: Option<watch::Sender<bool>>,
    /// Something arrived (or a heartbeat fell) while a wake was running, or the flood
    /// guard held a wake back: wake again as soon as allowed.
    wanted: bool,
    wanted_kind: WakeKind,
    /// Start times of recent wakes, for the flood guard.
    recent: VecDeque<DateTime<Utc>>,
    /// A held-back wake (flood guard) or a recheck of unsettled files.
    retry_at: Option<DateTime<Utc>>,
    next_heartbeat: Option<DateTime<Utc>>,
    /// After a failed wake, no wake before this time: the inbox events its own release
    /// of the handoffs causes must not retry a failing main session at once.
    backoff_until: Option<DateTime<Utc>>,
    /// The workspace's daily budget is spent: a model main session is not woken before
    /// this time (the next UTC midnight), and its handoffs wait in the inbox.
    budget_until: Option<DateTime<Utc>>,
    done_tx: mpsc::UnboundedSender<WakeResult>,
    /// Names of handoffs addressed elsewhere than main, already reported once.
    not_for_main: HashSet<PathBuf>,
    /// Completions the disk refused, tried again until it accepts them.
    uncompleted: Vec<Uncompleted>,
    /// Pending handoffs already said to wait for want of a `main:` session.
    unreceived: HashSet<String>,
    /// Commits of inbox moves made in the background, awaited at a clean stop so that a
    /// stopped daemon leaves the history level with the inbox.
    commits: tokio::task::JoinSet<()>,
}

impl Doorbell {
    /// A doorbell for `ws`'s inbox; each wake's result is sent to `done_tx`.
    pub fn new(
        ws: &Workspace,
        now: DateTime<Utc>,
        done_tx: mpsc::UnboundedSender<WakeResult>,
    ) -> Self {
        let main = ws.settings.main.clone();
        Doorbell {
            next_heartbeat: main
                .as_ref()
                .and_then(|m| m.heartbeat)
                .map(|h| now + chrono_ms(h)),
            main,
            inbox: loops_core::handoff::Inbox::of(ws),
            notes: InboxState::new(&ws.layout()),
            running: None,
            wanted: false,
            wanted_kind: WakeKind::Handoffs,
            recent: VecDeque::new(),
            retry_at: None,
            backoff_until: None,
            budget_until: held_at_start(ws, now),
            done_tx,
            not_for_main: HashSet::new(),
            uncompleted: Vec::new(),
            unreceived: HashSet::new(),
            commits: tokio::task::JoinSet::new(),
        }
    }

    pub fn inbox(&self) -> &loops_core::handoff::Inbox {
        &self.inbox
    }

    pub fn notes(&self) -> &InboxState {
        &self.notes
    }

    pub fn has_main(&self) -> bool {
        self.main.is_some()
    }

    pub fn wake_running(&self) -> bool {
        self.running.is_some()
    }

    /// Takes the running wake's stop switch (at shutdown).
    pub fn take_running(&mut self) -> Option<watch::Sender<bool>> {
        self.running.take()
    }

    /// The settings of a reloaded loops.yaml: the heartbeat is planned from now.
    pub fn set_main(&mut self, main: Option<MainSettings>, now: DateTime<Utc>) {
        self.main = main;
        // A new loops.yaml may have raised the budget: the next ring looks again.
        self.budget_until = None;
        let _ = std::fs::remove_file(self.budget_hold_path());
        self.next_heartbeat = self
            .main
            .as_ref()
            .and_then(|m| m.heartbeat)
            .map(|h| now + chrono_ms(h));
    }

    /// The next time a timer of the doorbell falls (a retry or the heartbeat).
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        [self.retry_at, self.next_heartbeat]
            .into_iter()
            .flatten()
            .min()
    }

    /// Rings for the timers that fell by `now`: a held-back wake, then the heartbeat.
    pub fn on_timers(&mut self, ctx: &RunContext, now: DateTime<Utc>) {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            let kind = self.wanted_kind;
            self.ring(ctx, now, kind);
        }
        self.reanchor(now);
        if self.next_heartbeat.is_some_and(|t| t <= now) {
            let every = self.main.as_ref().and_then(|m| m.heartbeat);
            self.next_heartbeat = every.map(|h| now + chrono_ms(h));
            // A daemon up for months still sweeps what crashed writers left in .tmp/.
            self.inbox.clean_tmp(std::time::SystemTime::now());
            self.ring(ctx, now, WakeKind::Heartbeat);
        }
    }

    /// The main session's timers after a clock stepped back: a heartbeat or a retry further
    /// ahead than it can ever be set would wait until the clock caught up (days, after a
    /// step of days), so it is planned from now again.
    fn reanchor(&mut self, now: DateTime<Utc>) {
        let tol = chrono_ms(crate::engine::scheduler::CLOCK_STEP_TOLERANCE);
        if let Some(h) = self.main.as_ref().and_then(|m| m.heartbeat).map(chrono_ms) {
            let t = self.next_heartbeat;
            self.next_heartbeat = reanchored(t, now, h + tol, now + h);
            if self.next_heartbeat != t {
                tracing::warn!(
                    "the clock was stepped back: the main session's next heartbeat was further ahead than its interval; planned from now"
                );
            }
        }
        // Retries wait a settle time or a back-off of seconds; an hour is beyond any.
        let longest = chrono::Duration::hours(1) + tol;
        self.retry_at = reanchored(self.retry_at, now, longest, now);
        self.backoff_until = reanchored(self.backoff_until, now, longest, now);
    }

    /// After the start's sweep: the handoffs it gave back are committed as released,
    /// stale files in inbox/.tmp/ are cleaned, and what a killed runner moved without
    /// committing is committed.
    pub fn after_recovery(&mut self, ctx: &RunContext, returned: Vec<Moved>) {
        if !returned.is_empty() {
            tracing::warn!(
                "{} handoff(s) claimed by a wake that did not finish went back to the inbox",
                returned.len()
            );
        }
        self.commit_moves(ctx, "released", returned);
        let cleaned = self.inbox.clean_tmp(std::time::SystemTime::now());
        if cleaned > 0 {
            tracing::info!("removed {cleaned} file(s) abandoned in inbox/.tmp/");
        }
        self.commit_inbox_state(ctx);
        if self.main.is_none() && !self.inbox.pending().is_empty() {
            tracing::warn!("handoffs are waiting in inbox/ but loops.yaml has no `main:` session to receive them");
        }
    }

    /// Waits (until `deadline`) for the commits of the recovery, so that each records what
    /// a dead runner left before a claim's own commit records the claim.
    pub async fn settle_commits(&mut self, deadline: tokio::time::Instant) {
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.commits.join_next()).await {}
    }

    /// Without `main:` nothing receives handoffs: each one that arrives is said once (the
    /// log and the journal), with the fix, instead of waiting in silence.
    fn say_unreceived(&mut self, ctx: &RunContext) {
        let pending = self.inbox.pending();
        let names: std::collections::HashSet<String> = pending
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        self.unreceived.retain(|n| names.contains(n));
        let new: Vec<String> = names
            .into_iter()
            .filter(|n| !self.unreceived.contains(n))
            .collect();
        if new.is_empty() {
            return;
        }
        let journal = loops_core::journal::Journal::open(ctx.ws.layout().root());
        for n in &new {
            tracing::warn!(
                "inbox/{n} waits: loops.yaml has no `main:` session to receive handoffs; add one (it takes effect without a restart)"
            );
            journal.record("handoff_unreceived", serde_json::json!({ "file": n }));
        }
        self.unreceived.extend(new);
    }

    /// Waits (up to `grace`) for the inbox commits still on their way, then for the
    /// committer to make what it had to defer, if git allows it now; what is still
    /// waiting is said, and made at the next start (it is kept in `.loops/commits/`).
    pub async fn finish_commits(&mut self, ctx: &RunContext, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while !self.commits.is_empty() {
            match tokio::time::timeout_at(deadline, self.commits.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(c) = &ctx.committer {
            match tokio::time::timeout_at(deadline, c.flush()).await {
                Ok(Ok(0)) | Err(_) => {}
                Ok(Ok(n)) => tracing::warn!(
                    "{n} commit(s) still wait for git; they are kept in .loops/commits/ and made at the next start"
                ),
                Ok(Err(e)) => tracing::warn!("the committer: {e}"),
            }
        }
    }

    /// Commits moves within the inbox in the background (see [`commit_moves`]).
    fn commit_moves(&mut self, ctx: &RunContext, outcome: &'static str, moved: Vec<Moved>) {
        if moved.is_empty() {
            return;
        }
        let c = ctx.committer.clone();
        // Finished ones are reaped here, so the set holds only what is on its way.
        while self.commits.try_join_next().is_some() {}
        self.commits.spawn(async move {
            commit_moves(c.as_ref(), outcome, moved).await;
        });
    }

    /// A runner killed between a move within the inbox (a claim, a return, a rejection,
    /// a completion) and its commit leaves the move on disk but not in the history:
    /// commit the inbox as it is now (see [`loops_core::handoff::Inbox::unsettled_paths`]),
    /// so `git status` is clean again without waiting for each handoff's next move.
    fn commit_inbox_state(&mut self, ctx: &RunContext) {
        let Some(c) = ctx.committer.clone() else {
            return;
        };
        let paths = self.inbox.unsettled_paths(Utc::now());
        if paths.is_empty() {
            return;
        }
        let msg = loops_core::history::commit_message(
            "main: record inbox moves a stopped runner had not committed",
            &[
                ("Loop", crate::engine::run_context::MAIN.to_string()),
                ("Outcome", "recovered".to_string()),
            ],
        );
        self.commits.spawn(async move {
            match c
                .commit(loops_core::history::CommitRequest::new(paths, msg))
                .await
            {
                Ok(Some(oid)) => {
                    tracing::warn!(commit = %oid, "committed inbox moves a stopped runner had made but not committed")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("could not commit the inbox's recovered moves: {e}"),
            }
        });
    }

    /// Starts a main-session wake if one is allowed now: claims every pending handoff for
    /// main (rejecting malformed ones that have settled), and runs the main session on
    /// them. A wake already running, or the flood guard, turns this into a later wake;
    /// nothing is ever dropped, because the files stay in the inbox until claimed.
    pub fn ring(&mut self, ctx: &RunContext, now: DateTime<Utc>, kind: WakeKind) {
        let Some(main) = self.main.clone() else {
            self.say_unreceived(ctx);
            return;
        };
        if self.running.is_some() {
            self.wanted = true;
            if kind == WakeKind::Heartbeat {
                self.wanted_kind = kind;
            }
            return;
        }
        if let Some(at) = self.backoff_until.filter(|t| now < *t) {
            self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
            if kind == WakeKind::Heartbeat {
                self.wanted_kind = kind;
            }
            return;
        }
        if self.held_for_budget(ctx, &main, now, kind) {
            return;
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now - *t >= chrono::Duration::seconds(60))
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= main.max_wakes_per_minute as usize {
            let at = self.recent.front().copied().unwrap_or(now) + chrono::Duration::seconds(60);
            self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
            self.wanted_kind = kind;
            return;
        }
        let (claimed, claims) = self.claim_pending(ctx, now, main.max_handoffs_per_wake as usize);
        if claimed.is_empty() && kind == WakeKind::Handoffs {
            return;
        }
        self.recent.push_back(now);
        self.wanted = false;
        self.wanted_kind = WakeKind::Handoffs;
        let (cancel_tx, cancel_rx) = watch::channel(false);
        self.running = Some(cancel_tx);
        let ctx = ctx.clone();
        let tx = self.done_tx.clone();
        tracing::info!(
            handoffs = claimed.len(),
            kind = kind.as_str(),
            "waking the main session"
        );
        tokio::spawn(async move {
            // The claims are in the history before the main session starts on them.
            commit_moves(ctx.committer.as_ref(), "claimed", claims).await;
            let r = wake(&ctx, &main, kind, claimed, Some(cancel_rx)).await;
            let _ = tx.send(r);
        });
    }

    /// Whether a wake must wait for tomorrow: the main session runs on a model and the
    /// workspace's daily budget (loops.yaml `budget:`, shared with every loop) is spent.
    /// A command main session's cost is its own business: it is never held.
    fn held_for_budget(
        &mut self,
        ctx: &RunContext,
        main: &MainSettings,
        now: DateTime<Utc>,
        kind: WakeKind,
    ) -> bool {
        if main.command.is_some() || main.prompt.is_none() {
            return false;
        }
        let tomorrow = loops_core::budget::next_day(now);
        let held = match self.budget_until.filter(|u| now < *u && *u <= tomorrow) {
            Some(until) => {
                self.look_again_at(until);
                true
            }
            None => match crate::engine::budget::main_over_today(ctx, now) {
                Some(why) => {
                    self.hold_for_budget(&why, now);
                    true
                }
                None => false,
            },
        };
        if held {
            if kind == WakeKind::Heartbeat {
                self.wanted_kind = kind;
            }
            self.wanted = true;
        }
        held
    }

    /// Holds every wake until the next UTC midnight, said once, and written down so that
    /// a restart does not give a spent day another wake.
    fn hold_for_budget(&mut self, why: &str, now: DateTime<Utc>) {
        let until = loops_core::budget::next_day(now);
        if self.budget_until != Some(until) {
            say_held(until, why);
            let hold = BudgetHold {
                until,
                why: why.to_string(),
            };
            let text = serde_json::to_vec_pretty(&hold).unwrap_or_default();
            let path = self.budget_hold_path();
            if let Err(e) = loops_core::fsutil::atomic_write(&path, &text) {
                tracing::warn!(
                    "cannot record the main session's budget hold in {}: {e}",
                    path.display()
                );
            }
        }
        self.budget_until = Some(until);
        self.look_again_at(until);
    }

    fn budget_hold_path(&self) -> std::path::PathBuf {
        self.notes.layout().main_budget_hold()
    }

    /// Claims the pending handoffs for main, at most `cap` (so a wake's argument list
    /// and its report stay well inside the system's limits; the rest go to the next wake
    /// at once), each under an id no other handoff has, and rejects the malformed ones
    /// that have settled (committed at once). Returns the claimed files in `active/` and
    /// the claims to commit.
    fn claim_pending(
        &mut self,
        ctx: &RunContext,
        now: DateTime<Utc>,
        cap: usize,
    ) -> (Vec<PathBuf>, Vec<Moved>) {
        let inbox = self.inbox.clone();
        let mut c = Claiming {
            inbox: &inbox,
            now,
            claimed: Vec::new(),
            claims: Vec::new(),
            rejected: Vec::new(),
            taken: None,
        };
        for p in inbox.pending() {
            if c.claimed.len() >= cap {
                self.wanted = true;
                break;
            }
            if inbox.still_written(&p) {
                // Its writer's close is not an event the watcher passes on: look again soon.
                self.look_again_at(now + chrono_ms(STILL_WRITTEN_RETRY));
                continue;
            }
            match inbox.load(&p) {
                Ok(h) if h.to == "main" => c.claim(&p, &h),
                Ok(h) => {
                    if self.not_for_main.insert(p.clone()) {
                        tracing::info!(handoff = %h.id, to = %h.to, "handoff is addressed to `{}`, not the main session: left in the inbox", h.to);
                    }
                }
                Err(e) => {
                    if settling(&p) {
                        // Perhaps still being written in place: look again once it settles.
                        self.look_again_at(now + chrono_ms(loops_core::handoff::SETTLE));
                    } else {
                        let name = p.file_stem().unwrap_or_default().to_string_lossy();
                        c.reject(&p, &name, &e.to_string());
                    }
                }
            }
        }
        let Claiming {
            claimed,
            claims,
            rejected,
            ..
        } = c;
        self.commit_moves(ctx, "rejected", rejected);
        (claimed, claims)
    }

    /// Rings again by `at` at the latest.
    fn look_again_at(&mut self, at: DateTime<Utc>) {
        self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
    }

    /// A wake ended: said, and the next one planned (at once if more waits, after
    /// [`WAKE_RETRY`] if it failed).
    pub fn on_wake_done(
        &mut self,
        ctx: &RunContext,
        w: &WakeResult,
        again: bool,
        now: DateTime<Utc>,
    ) {
        self.running = None;
        self.uncompleted.extend(w.uncompleted.iter().cloned());
        let rec = &w.record;
        match rec.outcome {
            Outcome::Failed | Outcome::Timeout => tracing::warn!(
                run = %rec.run_id,
                outcome = %rec.outcome,
                "main session wake failed: {}; {} handoff(s) back in the inbox",
                rec.error.as_deref().unwrap_or(""),
                w.released.len()
            ),
            _ if w.cancelled_on_request => tracing::info!(
                run = %rec.run_id,
                "main session wake cancelled on request; {} handoff(s) back in the inbox, handed over again in {}",
                w.released.len(),
                loops_core::duration::format_duration(WAKE_RETRY)
            ),
            _ => tracing::info!(
                run = %rec.run_id,
                outcome = %rec.outcome,
                completed = w.completed.len(),
                held = w.held.len(),
                "main session wake finished"
            ),
        }
        for (id, why) in &w.held {
            tracing::info!(handoff = %id, "held in inbox/active/: {why}");
        }
        if w.daily_budget_spent {
            // The day is spent: another wake now would stop after its first turn.
            let why = rec.error.clone().unwrap_or_default();
            self.hold_for_budget(&why, now);
            self.wanted = true;
            return;
        }
        let pending = !self.inbox.pending().is_empty();
        // A cancelled wake waits as a failed one does: the person who stopped it is not
        // answered by the same wake starting again the same instant.
        // So does one `budget.tokens_per_run` cut short: woken at once it would be again.
        let failed =
            rec.outcome.is_failure() || rec.outcome == Outcome::Budget || w.cancelled_on_request;
        // A failing main session is retried, but not at once (whatever wakes it).
        let retry = chrono_ms(WAKE_RETRY);
        self.backoff_until = failed.then(|| now + retry);
        if self.wanted || (pending && !failed) || (again && pending) {
            let kind = self.wanted_kind;
            if failed {
                // A failing main session is retried, but not at once.
                let at = now + retry;
                self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
                self.wanted_kind = kind;
            } else {
                self.ring(ctx, now, kind);
            }
        }
    }

    /// Completes the handoffs whose move to done/ the disk refused; returns whether none
    /// is left waiting.
    pub fn retry_completions(&mut self, ctx: &RunContext) -> bool {
        if self.uncompleted.is_empty() {
            return true;
        }
        let inbox = self.inbox.clone();
        let mut commits = Vec::new();
        self.uncompleted.retain(|u| match u.retry(&inbox) {
            Some(c) => {
                commits.extend(c);
                false
            }
            None => true,
        });
        if let (Some(c), false) = (ctx.committer.clone(), commits.is_empty()) {
            self.commits.spawn(async move {
                for req in commits {
                    if let Err(e) = c.commit(req).await {
                        tracing::warn!("a late completion is not committed yet: {e}");
                    }
                }
            });
        }
        self.uncompleted.is_empty()
    }
}

/// `t`, or `instead` when `t` is more than `longest` ahead of `now`.
fn reanchored(
    t: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    longest: chrono::Duration,
    instead: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    t.map(|t| if t > now + longest { instead } else { t })
}

/// Whether the file `p` was modified less than [`loops_core::handoff::SETTLE`] ago.
fn settling(p: &std::path::Path) -> bool {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < loops_core::handoff::SETTLE)
}

/// What one claim of the pending handoffs has done so far.
struct Claiming<'a> {
    inbox: &'a loops_core::handoff::Inbox,
    now: DateTime<Utc>,
    /// The claimed files in `active/`.
    claimed: Vec<PathBuf>,
    /// The claims, to commit before the wake starts.
    claims: Vec<Moved>,
    /// The handoffs rejected, to commit at once.
    rejected: Vec<Moved>,
    /// The ids handoffs already have, read at the first claim.
    taken: Option<HashSet<String>>,
}

impl Claiming<'_> {
    /// Claims the pending handoff `p` for main under an id no other handoff has, or
    /// rejects it.
    fn claim(&mut self, p: &std::path::Path, h: &loops_core::handoff::Handoff) {
        // Every path it names is checked now, in its writer's scope: a
        // handoff is a stranger's text until the runner says who wrote it.
        if let Err(why) = loops_agent::sandbox::check_handoff_paths(&self.inbox.workspace, h) {
            self.reject(p, &h.id, &why);
            return;
        }
        let inbox = self.inbox;
        let taken = self.taken.get_or_insert_with(|| inbox.taken_ids());
        match inbox.claim_unique(p, h, taken) {
            Ok(Some((a, h))) => {
                self.claims.push(Moved {
                    id: h.id,
                    paths: vec![p.to_path_buf(), a.clone()],
                });
                self.claimed.push(a);
            }
            Ok(None) => {}
            Err(e) => self.reject(p, &h.id, &e.to_string()),
        }
    }

    /// Moves the pending handoff `p` to `rejected/` with a note saying why.
    fn reject(&mut self, p: &std::path::Path, id: &str, why: &str) {
        let inbox = self.inbox;
        match inbox.reject(p, why, self.now) {
            Ok(to) => {
                tracing::warn!(handoff = %id, "rejected {}: {why} (see {})", p.display(), inbox.error_note(&to).display());
                self.rejected.push(Moved {
                    id: id.to_string(),
                    paths: vec![p.to_path_buf(), inbox.error_note(&to), to],
                });
            }
            Err(err) => tracing::error!("cannot reject {}: {err}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_beyond_its_longest_wait_is_planned_from_now() {
        let now = Utc::now();
        let h = chrono::Duration::minutes(30);
        let later = now + chrono::Duration::days(3);
        assert_eq!(reanchored(Some(later), now, h, now + h), Some(now + h));
        assert_eq!(reanchored(Some(now + h), now, h, now), Some(now + h));
        assert_eq!(reanchored(None, now, h, now), None);
    }
}
