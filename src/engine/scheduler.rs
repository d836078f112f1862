//! The scheduler: which loop runs when. It is synchronous and reads time only through a
//! [`Clock`], so tests drive it through weeks, DST changes and restarts in microseconds.
//! The loop state files are its memory; a new `Scheduler` over the same files (a
//! restart) continues exactly where the old one stopped.

use crate::engine::run_context::Trigger;
use chrono::{DateTime, Utc};
use loops_core::clock::Clock;
use loops_core::domain::LoopDef;
use loops_core::runs::{Outcome, RunLog, RunRecord};
use loops_core::schedule::{stable_hash, Missed};
use loops_core::state::{LastRun, LoopState, Pause, PendingRetry, StateStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A run the scheduler wants started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRun {
    /// The run's id, chosen when its slot is claimed.
    pub run_id: String,
    pub loop_name: String,
    pub trigger: Trigger,
    pub slot: Option<DateTime<Utc>>,
    pub attempt: u32,
    /// Caught-up runs are spread out after downtime; start no earlier than this.
    pub not_before: DateTime<Utc>,
}

/// What a finished run changed about its loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aftermath {
    Nothing,
    RetryAt(DateTime<Utc>),
    Paused(Pause),
}

struct Entry {
    def: LoopDef,
    next: Option<DateTime<Utc>>,
    /// The state's watermark and pending retry as last read, so a clock stepped back
    /// behind them is noticed without reading every state file on every wake.
    decided: Option<DateTime<Utc>>,
    retry_at: Option<(DateTime<Utc>, u32)>,
    /// The state of a loop seen but never claimed: kept in memory, written at its first
    /// claim. Losing it costs nothing (the loop is simply seen anew), and a thousand new
    /// loops must not mean a thousand files created before the daemon can start.
    fresh: Option<LoopState>,
}

pub struct Scheduler {
    clock: Arc<dyn Clock>,
    store: StateStore,
    runlog: RunLog,
    loops: BTreeMap<String, Entry>,
    stagger: Duration,
    pause_after: u32,
    /// The last start time handed to a caught-up run, to space the next one after it.
    last_catch_up: Option<DateTime<Utc>>,
}

fn ms(d: Duration) -> chrono::Duration {
    chrono::Duration::milliseconds(d.as_millis().min(i64::MAX as u128) as i64)
}

/// Writes the first-seen state of loops that have none yet; a state already there (a
/// claim that came first) is left alone.
pub fn persist_fresh(store: &StateStore, states: &[(String, LoopState)]) {
    for (name, fresh) in states {
        let r = store.update_with(name, false, |st| {
            if st.is_none() {
                *st = Some(fresh.clone());
            }
        });
        if let Err(e) = r {
            tracing::error!("{e}");
        }
    }
}

/// What a loop's watermark was computed for: its schedule and whether it is enabled. A
/// change starts the watermark afresh.
pub fn fingerprint(def: &LoopDef) -> String {
    format!("{}|enabled={}", def.schedule_fingerprint, def.enabled)
}

/// Whether the scheduler runs this loop at all (prompt loops wait for a provider).
pub fn schedulable(def: &LoopDef, has_providers: bool) -> bool {
    def.enabled && (!def.is_prompt() || has_providers)
}

impl Scheduler {
    pub fn new(
        clock: Arc<dyn Clock>,
        store: StateStore,
        runlog: RunLog,
        stagger: Duration,
        pause_after: u32,
    ) -> Self {
        Scheduler {
            clock,
            store,
            runlog,
            loops: BTreeMap::new(),
            stagger,
            pause_after,
            last_catch_up: None,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Replaces the set of loops (start-up and every reload). Loops seen for the first
    /// time get a state whose watermark is now: a new loop owes nothing for the past.
    pub fn set_loops(&mut self, defs: Vec<LoopDef>) {
        let fresh = self.set_loops_deferred(defs);
        persist_fresh(&self.store, &fresh);
    }

    /// [`Scheduler::set_loops`] without writing the first-seen state of new loops: they
    /// are returned for the caller to persist with [`persist_fresh`] off the start-up
    /// path (a thousand new loops would otherwise be a thousand files created before the
    /// daemon can start). Until then a loop's claim starts from the same in-memory state.
    pub fn set_loops_deferred(&mut self, defs: Vec<LoopDef>) -> Vec<(String, LoopState)> {
        let now = self.clock.now();
        let mut new_states = Vec::new();
        let mut next = BTreeMap::new();
        for def in defs {
            let fp = fingerprint(&def);
            let mut fresh = None;
            match self.store.load(&def.name) {
                Some(s) if s.schedule_fingerprint != fp => {
                    if let Err(e) = self.store.load_or_init(&def.name, now, &fp) {
                        tracing::error!("{e}");
                    }
                }
                Some(_) => {}
                None => {
                    // Keep first_seen across reloads of a loop not yet claimed.
                    fresh = self
                        .loops
                        .get(&def.name)
                        .and_then(|e| e.fresh.clone())
                        .filter(|s| s.schedule_fingerprint == fp)
                        .or_else(|| Some(LoopState::new(now, &fp)));
                    if let Some(s) = &fresh {
                        new_states.push((def.name.clone(), s.clone()));
                    }
                }
            }
            let name = def.name.clone();
            let mut entry = Entry {
                def,
                next: None,
                decided: None,
                retry_at: None,
                fresh,
            };
            compute_next(&self.store, &mut entry, now);
            next.insert(name, entry);
        }
        self.loops = next;
        new_states
    }

    pub fn loop_names(&self) -> impl Iterator<Item = &str> {
        self.loops.keys().map(String::as_str)
    }

    pub fn def(&self, name: &str) -> Option<&LoopDef> {
        self.loops.get(name).map(|e| &e.def)
    }

    /// Re-reads one loop's state (after a CLI pause, resume or run).
    pub fn refresh(&mut self, name: &str) {
        let now = self.clock.now();
        if let Some(e) = self.loops.get_mut(name) {
            compute_next(&self.store, e, now);
        }
    }

    /// The next instant something is due, if anything ever is.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.loops.values().filter_map(|e| e.next).min()
    }

    /// The next fire time of one loop.
    pub fn next_of(&self, name: &str) -> Option<DateTime<Utc>> {
        self.loops.get(name).and_then(|e| e.next)
    }

    /// Decides every slot that is due now: runs to start, slots recorded as missed.
    /// The watermark is saved before the runs are handed out, so a crash after this
    /// point can never run the same slot again.
    pub fn due(&mut self) -> Vec<DueRun> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for (def, _, fresh) in self.take_due_by(now) {
            let claim = claim_with(&self.store, &def, now, true, fresh.as_ref());
            out.extend(self.accept(&def.name, claim, now));
        }
        out
    }

    /// The loops whose next fire time has come, marked as being claimed so they are not
    /// handed out again while their claim is written. Each must be passed to [`claim`]
    /// and the result to [`Scheduler::accept`]. The daemon claims them in parallel: one
    /// durable write each, and a hundred loops due at once must not queue behind one another.
    pub fn take_due(&mut self, now: DateTime<Utc>) -> Vec<LoopDef> {
        self.take_due_by(now)
            .into_iter()
            .map(|(d, _, _)| d)
            .collect()
    }

    /// Like [`Scheduler::take_due`] for every loop due by `horizon` (which may be a little
    /// ahead of now), with the instant each is due and, for a loop never claimed, the
    /// in-memory state its claim starts from.
    #[allow(clippy::type_complexity)]
    pub fn take_due_by(
        &mut self,
        horizon: DateTime<Utc>,
    ) -> Vec<(LoopDef, DateTime<Utc>, Option<LoopState>)> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for e in self.loops.values_mut() {
            // A loop being claimed (no next) is looked at again once its claim is in.
            if e.next.is_some() && ahead_of_clock(&e.def, e.decided, e.retry_at, now) {
                compute_next(&self.store, e, now);
            }
            if let Some(n) = e.next.filter(|n| *n <= horizon) {
                e.next = None;
                out.push((e.def.clone(), n, e.fresh.take()));
            }
        }
        out
    }

    /// Takes a loop's claim result: records missed slots, spaces caught-up runs, and
    /// returns the runs to start.
    pub fn accept(&mut self, name: &str, claim: Option<Claim>, now: DateTime<Utc>) -> Vec<DueRun> {
        let mut out = Vec::new();
        let def = self.loops.get(name).map(|e| e.def.clone());
        if let (Some(def), Some(c)) = (def, claim) {
            if let Some(m) = c.missed {
                self.record_missed(&def, m, now);
            }
            for (trigger, slot, attempt, catch_up) in c.runs {
                let not_before = if catch_up {
                    let t = match self.last_catch_up {
                        Some(last) if last + ms(self.stagger) > now => last + ms(self.stagger),
                        _ => now,
                    };
                    self.last_catch_up = Some(t);
                    t
                } else {
                    now
                };
                out.push(DueRun {
                    run_id: loops_core::runs::new_run_id(),
                    loop_name: name.to_string(),
                    trigger,
                    slot,
                    attempt,
                    not_before,
                });
            }
        }
        self.refresh(name);
        out
    }

    fn record_missed(&self, def: &LoopDef, m: Missed, now: DateTime<Utc>) {
        let count = m
            .count
            .map(|c| c.to_string())
            .unwrap_or_else(|| "more than 100".into());
        let note = if m.too_many {
            format!(
                "{count} slots missed from {} to {} while the runner was down; more than 100, so none was run (catch_up: all is bounded)",
                m.first.to_rfc3339(),
                m.last.to_rfc3339()
            )
        } else {
            format!(
                "{count} slot(s) missed from {} to {} (catch_up: {}, starting_deadline {})",
                m.first.to_rfc3339(),
                m.last.to_rfc3339(),
                format!("{:?}", def.schedule.catch_up).to_lowercase(),
                loops_core::duration::format_duration(def.schedule.starting_deadline)
            )
        };
        if m.too_many {
            tracing::warn!(loop_name = %def.name, "{note}");
        } else {
            tracing::info!(loop_name = %def.name, "{note}");
        }
        let mut rec = RunRecord::decision(
            &def.name,
            "schedule",
            Some(m.last),
            now,
            Outcome::Missed,
            note,
        );
        rec.missed_count = m.count;
        if let Err(e) = self.runlog.append(&rec) {
            tracing::error!("{e}");
        }
    }

    /// Records a finished run in the loop's state: success resets the failure count; a
    /// failure schedules a retry with backoff or, past the limit, pauses the loop.
    pub fn finished(&mut self, def: &LoopDef, rec: &RunRecord, retryable: bool) -> Aftermath {
        let after = apply_finish(
            &self.store,
            def,
            rec,
            retryable,
            self.pause_after,
            self.clock.now(),
        );
        self.refresh(&def.name);
        after
    }
}

/// How far a loop's watermark may be ahead of the clock before the clock is taken to have
/// been stepped back. A claim writes a watermark up to a moment before its fire time, and
/// a small correction (NTP slewing, a second or two) only holds a loop back for as long
/// as it stepped; anything larger would freeze the loop until the clock caught up, for
/// days after a step of days, while `status` and `next` show its runs as imminent.
pub const CLOCK_STEP_TOLERANCE: Duration = Duration::from_secs(120);

/// The longest backoff a retry of `attempt` can wait: a pending retry further ahead than
/// this (and the tolerance) was computed by a clock that has since gone back.
fn longest_backoff(def: &LoopDef, attempt: u32) -> chrono::Duration {
    // backoff_for's jitter is largest for the largest seed unit (seed % 10_000 = 9_999).
    ms(def.retry.backoff_for(attempt, 9_999))
}

/// Whether a loop's watermark or pending retry lies further ahead of `now` than any
/// schedule puts it: the clock was stepped back after they were written.
fn ahead_of_clock(
    def: &LoopDef,
    decided: Option<DateTime<Utc>>,
    retry_at: Option<(DateTime<Utc>, u32)>,
    now: DateTime<Utc>,
) -> bool {
    let tol = ms(CLOCK_STEP_TOLERANCE);
    decided.is_some_and(|d| d > now + tol)
        || retry_at.is_some_and(|(at, attempt)| at > now + tol + longest_backoff(def, attempt))
}

/// Plans a loop's state written before the clock went back from `now` again, as if the
/// loop were first seen now: its watermark moves back to now (a slot it already decided
/// may come round again, which is what a clock stepped back means) and a retry waits no
/// longer than its backoff. Says what it changed, in words for the log.
pub fn reanchor(def: &LoopDef, s: &mut LoopState, now: DateTime<Utc>) -> Option<String> {
    let decided = s.decided_until();
    let retry = s.pending_retry.as_ref().map(|r| (r.at, r.attempt));
    if !ahead_of_clock(def, Some(decided), retry, now) {
        return None;
    }
    let mut said = Vec::new();
    if decided > now + ms(CLOCK_STEP_TOLERANCE) {
        said.push(format!(
            "its slots were decided up to {}, {} ahead of the clock",
            decided.to_rfc3339(),
            loops_core::duration::format_duration((decided - now).to_std().unwrap_or_default())
        ));
        s.watermark = Some(now);
    }
    if let Some(r) = s.pending_retry.as_mut() {
        let longest = longest_backoff(def, r.attempt);
        if r.at > now + ms(CLOCK_STEP_TOLERANCE) + longest {
            said.push(format!("its retry was set for {}", r.at.to_rfc3339()));
            r.at = now + longest;
        }
    }
    Some(format!(
        "the clock is behind this loop's state ({}): it was stepped back. The loop is scheduled from now ({}) again instead of waiting for the clock to catch up",
        said.join("; "),
        now.to_rfc3339()
    ))
}

/// Reads a loop's state and sets its next fire time. A state ahead of the clock is
/// re-anchored first (in memory for a loop never claimed, else in its file) and logged,
/// once: after that it is no longer ahead.
fn compute_next(store: &StateStore, e: &mut Entry, now: DateTime<Utc>) {
    let mut state = store.load(&e.def.name).or_else(|| e.fresh.clone());
    if let Some(s) = state.as_mut() {
        let retry = s.pending_retry.as_ref().map(|r| (r.at, r.attempt));
        if ahead_of_clock(&e.def, Some(s.decided_until()), retry, now) {
            let said = if let Some(f) = e.fresh.as_mut() {
                let said = reanchor(&e.def, f, now);
                *s = f.clone();
                said
            } else {
                let def = e.def.clone();
                match store.update(&def.name, |st| {
                    let said = st.as_mut().and_then(|st| reanchor(&def, st, now));
                    (said, st.clone())
                }) {
                    Ok((said, Some(fresh))) => {
                        *s = fresh;
                        said
                    }
                    Ok((said, None)) => said,
                    Err(err) => {
                        tracing::error!("{err}");
                        None
                    }
                }
            };
            if let Some(said) = said {
                tracing::warn!(loop_name = %e.def.name, "{said}");
            }
        }
    }
    e.decided = state.as_ref().map(LoopState::decided_until);
    e.retry_at = state
        .as_ref()
        .and_then(|s| s.pending_retry.as_ref().map(|r| (r.at, r.attempt)));
    e.next = state.and_then(|state| {
        if state.paused.is_some() || !e.def.enabled {
            return None;
        }
        let slot_fire = next_slot_fire(&e.def, &state);
        let retry = state.pending_retry.as_ref().map(|r| r.at);
        match (slot_fire, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    });
}

/// The loop's next slot: the model's chosen look (`next_check`) when an adaptive loop has
/// one, else its schedule's; never before a daily budget's pause ends.
fn next_slot_fire(def: &LoopDef, state: &LoopState) -> Option<DateTime<Utc>> {
    let fire = match state.next_check.filter(|_| def.schedule.adaptive.is_some()) {
        Some(at) => Some(at),
        None => def.schedule.next_fire_after_slot(state.decided_until()),
    };
    match state.budget_paused_until {
        Some(until) => fire.map(|f| f.max(until)),
        None => fire,
    }
}

/// The slot an adaptive loop's chosen look or a budget's pause decides at `now`, in place
/// of the schedule's plan: `Some(runs)` when one of them holds the loop. The slots they
/// passed over are decided (not missed: the model, or the budget, chose to skip them).
fn held_slot(def: &LoopDef, s: &mut LoopState, now: DateTime<Utc>) -> Option<Vec<ClaimedRun>> {
    if let Some(until) = s.budget_paused_until {
        if until > now {
            return Some(Vec::new());
        }
        s.budget_paused_until = None;
        // The slots before it were held back (decided, not missed); one falling on the
        // instant it ends (midnight) is the day's first and runs.
        let held_back = until - chrono::Duration::nanoseconds(1);
        s.watermark = Some(held_back.max(s.decided_until()));
    }
    let at = s.next_check.filter(|_| def.schedule.adaptive.is_some())?;
    if at > now {
        return Some(Vec::new());
    }
    // Exactly once: after this look the `every` grid takes over again from now.
    s.next_check = None;
    s.watermark = Some(now.max(s.decided_until()));
    Some(vec![(Trigger::Schedule, Some(at), 1, false)])
}

/// One run a claim decided: (trigger, slot, attempt, caught up?).
pub type ClaimedRun = (Trigger, Option<DateTime<Utc>>, u32, bool);

/// What claiming a loop's due slots decided: runs (trigger, slot, attempt, caught up?)
/// and the slots recorded as missed.
#[derive(Debug, Clone)]
pub struct Claim {
    pub runs: Vec<ClaimedRun>,
    pub missed: Option<Missed>,
}

/// Decides every slot of `def` due at `now` and saves the new watermark (and a due
/// retry's removal) durably, under the loop's state lock, before anything runs: after
/// this a crash can never run those slots again. `None` when the loop is paused or has
/// no state.
pub fn claim(store: &StateStore, def: &LoopDef, now: DateTime<Utc>) -> Option<Claim> {
    claim_with(store, def, now, true, None)
}

/// [`claim`] without waiting for the disk: for the daemon, which claims a batch of loops
/// at once and flushes them together with one [`loops_core::fsutil::sync_filesystem`]. A
/// crash of the process cannot undo such a claim; only a power cut in the few
/// milliseconds before the flush could.
pub fn claim_with(
    store: &StateStore,
    def: &LoopDef,
    now: DateTime<Utc>,
    durable: bool,
    fresh: Option<&LoopState>,
) -> Option<Claim> {
    let decided = store.update_with(&def.name, durable, |st| {
        if st.is_none() {
            *st = fresh.cloned();
        }
        let s = st.as_mut()?;
        if s.paused.is_some() {
            return None;
        }
        let mut runs = Vec::new();
        if let Some(r) = s.pending_retry.clone() {
            if r.at <= now {
                s.pending_retry = None;
                runs.push((Trigger::Retry, r.slot, r.attempt, false));
            }
        }
        if let Some(held) = held_slot(def, s, now) {
            runs.extend(held);
            return Some(Claim { runs, missed: None });
        }
        let plan = def.schedule.plan(s.decided_until(), now);
        s.watermark = Some(plan.watermark.max(s.decided_until()));
        for r in &plan.runs {
            let trig = if r.catch_up {
                Trigger::CatchUp
            } else {
                Trigger::Schedule
            };
            runs.push((trig, Some(r.slot), 1, r.catch_up));
        }
        Some(Claim {
            runs,
            missed: plan.missed,
        })
    });
    match decided {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    }
}

/// Updates a loop's state after a run; shared by the daemon and `loops trigger`.
pub fn apply_finish(
    store: &StateStore,
    def: &LoopDef,
    rec: &RunRecord,
    retryable: bool,
    pause_after: u32,
    now: DateTime<Utc>,
) -> Aftermath {
    let r = store.update(&def.name, |st| {
        let s = st.get_or_insert_with(|| LoopState::new(now, &fingerprint(def)));
        if matches!(rec.outcome, Outcome::Skipped | Outcome::Missed) {
            return Aftermath::Nothing;
        }
        // Set, or cleared: the model's choice holds for the next slot only.
        s.next_check = rec.next_check.filter(|_| def.schedule.adaptive.is_some());
        s.last_run = Some(LastRun {
            run_id: rec.run_id.clone(),
            started: rec.started,
            finished: rec.finished,
            outcome: rec.outcome.to_string(),
            error: rec.error.clone(),
        });
        match rec.outcome {
            Outcome::Acted | Outcome::Silent => {
                s.consecutive_failures = 0;
                s.last_success = Some(rec.started);
                s.pending_retry = None;
                Aftermath::Nothing
            }
            Outcome::Interrupted | Outcome::Budget => Aftermath::Nothing,
            _ => {
                let trig = Trigger::parse(&rec.trigger);
                if retryable && trig.retries() && rec.attempt < def.retry.max_attempts {
                    let seed = stable_hash(&rec.run_id);
                    let wait = def.retry.backoff_for(rec.attempt + 1, seed);
                    let at = now + ms(wait);
                    s.pending_retry = Some(PendingRetry {
                        slot: rec.slot,
                        attempt: rec.attempt + 1,
                        at,
                        trigger: "retry".into(),
                    });
                    return Aftermath::RetryAt(at);
                }
                s.consecutive_failures += 1;
                s.pending_retry = None;
                if s.consecutive_failures >= pause_after {
                    let p = Pause {
                        since: now,
                        reason: format!("{} consecutive failed runs", s.consecutive_failures),
                        last_error: rec.error.clone(),
                    };
                    s.paused = Some(p.clone());
                    return Aftermath::Paused(p);
                }
                Aftermath::Nothing
            }
        }
    });
    match r {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            Aftermath::Nothing
        }
    }
}

impl Trigger {
    pub fn parse(s: &str) -> Trigger {
        match s {
            "schedule" => Trigger::Schedule,
            "catch-up" => Trigger::CatchUp,
            "retry" => Trigger::Retry,
            "once" => Trigger::Once,
            _ => Trigger::Manual,
        }
    }
}
