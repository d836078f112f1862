//! `loops jobs stats`: what the queue did over the last 24 hours, per job kind, and
//! whether it is healthy now (work waiting with no daemon to run it, a queue that
//! stopped moving, jobs whose runner died).

use super::job::*;
use super::store::JobStore;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// How long ready work may wait, with nothing running in its queue, before the queue is
/// called stuck.
pub const STUCK_AFTER: chrono::Duration = chrono::Duration::minutes(2);

#[derive(Debug, Default, Clone, Serialize)]
pub struct KindStats {
    pub total: usize,
    pub completed: usize,
    pub failed: usize,
    pub dead: usize,
    pub cancelled: usize,
    pub waiting: usize,
    pub active: usize,
    /// Average run time of the completed ones, in milliseconds.
    pub avg_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Health {
    pub waiting: usize,
    pub delayed: usize,
    pub active: usize,
    pub paused: usize,
    pub waiting_children: usize,
    /// Active jobs whose runner is gone (the next sweep requeues them).
    pub stalled: usize,
    /// Delayed jobs held for the day's budget (among `delayed`).
    pub held: usize,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub window_hours: u32,
    pub kinds: BTreeMap<String, KindStats>,
    pub health: Health,
    pub daemon_running: bool,
    pub warnings: Vec<String>,
}

pub fn compute(store: &JobStore, now: DateTime<Utc>, daemon_running: bool) -> Stats {
    let since = now - chrono::Duration::hours(24);
    let mut st = Stats {
        window_hours: 24,
        daemon_running,
        ..Default::default()
    };
    let (summaries, errors) = store.list();
    for e in errors {
        st.warnings.push(format!("unreadable job file: {e}"));
    }
    st.kinds = kind_stats(&summaries, since);
    let (live, _) = store.live_jobs();
    let ready = st.health.count(&live, now);
    ready.warn(&mut st.warnings, now, daemon_running);
    if st.health.held > 0 {
        st.warnings.push(format!(
            "{} agent job(s) held for the day's budget: they run at the next UTC midnight; to run them sooner, raise `budget:` in loops.yaml (a daemon then lifts the holds), or `loops jobs resume ID`",
            st.health.held
        ));
    }
    if st.health.stalled > 0 {
        st.warnings.push(format!(
            "{} active job(s) have lost their runner; the next sweep (at the daemon's start, or within 30s while it runs) requeues them",
            st.health.stalled
        ));
    }
    st
}

/// Per kind, the jobs created or finished since `since`, and those not ended yet.
fn kind_stats(summaries: &[JobSummary], since: DateTime<Utc>) -> BTreeMap<String, KindStats> {
    let mut kinds: BTreeMap<String, KindStats> = BTreeMap::new();
    let mut sums: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    for s in summaries {
        let recent = s.created >= since || s.finished.is_some_and(|f| f >= since);
        if !recent && s.state.is_terminal() {
            continue;
        }
        let k = kinds.entry(s.kind.as_str().to_string()).or_default();
        k.total += 1;
        match s.state {
            JobState::Completed => {
                k.completed += 1;
                let e = sums.entry(s.kind.as_str().to_string()).or_default();
                e.0 += s.run_ms;
                e.1 += 1;
            }
            JobState::Failed => k.failed += 1,
            JobState::Dead => k.dead += 1,
            JobState::Cancelled => k.cancelled += 1,
            JobState::Active => k.active += 1,
            _ => k.waiting += 1,
        }
    }
    for (kind, (ms, n)) in sums {
        if let Some(k) = kinds.get_mut(&kind) {
            k.avg_ms = (n > 0).then(|| ms / n as u64);
        }
    }
    kinds
}

/// Which queues have ready work, and which have a job running.
struct Readiness {
    /// Per queue: how many jobs are ready, and since when the oldest has been.
    ready: BTreeMap<String, (usize, DateTime<Utc>)>,
    active_queues: std::collections::HashSet<String>,
}

impl Health {
    /// Counts the live jobs by state; returns which queues have work ready.
    fn count(&mut self, live: &[Job], now: DateTime<Utc>) -> Readiness {
        let mut stuck: BTreeMap<String, (usize, DateTime<Utc>)> = BTreeMap::new();
        let mut active_queues: std::collections::HashSet<String> = Default::default();
        for j in live {
            match j.state {
                JobState::Waiting => self.waiting += 1,
                JobState::Delayed => {
                    self.delayed += 1;
                    self.held += usize::from(j.held.is_some());
                }
                JobState::Active => {
                    self.active += 1;
                    active_queues.insert(j.queue.clone());
                    if j.lease.as_ref().is_some_and(|l| !l.owner_alive()) {
                        self.stalled += 1;
                    }
                }
                JobState::Paused => self.paused += 1,
                JobState::WaitingChildren => self.waiting_children += 1,
                _ => {}
            }
            if j.ready(now) {
                // Ready since it was last touched (submitted, requeued, or its delay ran out).
                let since = j.run_at.unwrap_or(j.updated).max(j.updated.min(now));
                let e = stuck.entry(j.queue.clone()).or_insert((0, since));
                e.0 += 1;
                e.1 = e.1.min(since);
            }
        }
        Readiness {
            ready: stuck,
            active_queues,
        }
    }
}

impl Readiness {
    /// Warns of ready work with no daemon to run it, or of a queue that stopped moving
    /// under a running daemon.
    fn warn(&self, warnings: &mut Vec<String>, now: DateTime<Utc>, daemon_running: bool) {
        let ready: usize = self.ready.values().map(|v| v.0).sum();
        if ready > 0 && !daemon_running {
            warnings.push(format!(
                "{ready} job(s) are ready but no daemon is running: nothing will run them until `loops run` starts (or use `--follow` to run one here)"
            ));
        } else if daemon_running {
            for (q, (n, since)) in &self.ready {
                if !self.active_queues.contains(q) && now - *since > STUCK_AFTER {
                    warnings.push(format!(
                        "queue `{q}` has stopped moving: {n} job(s) ready since {}, none running; check the daemon's log (`loops status`)",
                        since.to_rfc3339()
                    ));
                }
            }
        }
    }
}

/// The text view.
pub fn render(st: &Stats) -> String {
    let mut s = format!("Jobs over the last {} hours\n", st.window_hours);
    if st.kinds.is_empty() {
        s.push_str("  (none)\n");
    } else {
        s.push_str(&format!(
            "  {:<11} {:>6} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8} {:>10}\n",
            "kind", "total", "done", "failed", "dead", "cancelled", "waiting", "active", "avg time"
        ));
        for (k, v) in &st.kinds {
            s.push_str(&format!(
                "  {:<11} {:>6} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8} {:>10}\n",
                k,
                v.total,
                v.completed,
                v.failed,
                v.dead,
                v.cancelled,
                v.waiting,
                v.active,
                v.avg_ms
                    .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into())
            ));
        }
    }
    let h = &st.health;
    s.push_str(&format!(
        "Queue now: {} waiting, {} delayed, {} active, {} paused, {} waiting for children, {} stalled\n",
        h.waiting, h.delayed, h.active, h.paused, h.waiting_children, h.stalled
    ));
    s.push_str(&format!(
        "Daemon: {}\n",
        if st.daemon_running {
            "running"
        } else {
            "not running"
        }
    ));
    for w in &st.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}
