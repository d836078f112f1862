//! The daemon's side of loops.yaml `remote:`: a pull every `pull_every`, a push once the
//! oldest unpushed commit has waited `push_delay` (so commits close together go in one
//! push), `loops sync` on request, and after a failure a wait that grows with each one
//! (docs/remote.md). Each sync is one blocking call of [`loops_core::remote::sync`].

use super::pull_hold::PullHold;
use loops_core::history::Committer;
use loops_core::remote::{self, Pulled, Pushed, RemoteState, SyncAsk, SyncReport};
use loops_core::workspace::Workspace;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How often the syncer looks for unpushed commits.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// The longest wait after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Starts the syncer; `poke` asks for a sync now (a `loops sync` beside the daemon); the
/// paths a pull changed go to `changed`, the daemon's channel of file events, so the hot
/// reload of a pulled loop runs at once rather than after the watcher's debounce; `hold`
/// hears of each checkout before it starts, so those loops wait for that reload.
pub fn spawn(
    live: watch::Receiver<Arc<Workspace>>,
    committer: Committer,
    poke: Arc<Notify>,
    changed: Changed,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(live, committer, poke, changed))
}

/// Where the paths a pull changed go: the daemon's channel of file events, and the hold
/// on those loops' runs that the daemon lets go once it has applied them.
#[derive(Clone)]
pub struct Changed {
    pub events: tokio::sync::mpsc::UnboundedSender<loops_core::watcher::Batch>,
    pub hold: Arc<PullHold>,
}

struct Timers {
    next_pull: Instant,
    /// When a commit not yet pushed was first seen.
    unpushed_since: Option<Instant>,
    /// No sync before this after a failure.
    not_before: Instant,
}

async fn run(
    mut live: watch::Receiver<Arc<Workspace>>,
    committer: Committer,
    poke: Arc<Notify>,
    changed: Changed,
) {
    let now = Instant::now();
    let mut t = Timers {
        next_pull: now,
        unpushed_since: None,
        not_before: now,
    };
    let mut poked = false;
    loop {
        let ws = live.borrow().clone();
        if let Some(settings) = ws.settings.remote.clone() {
            let now = Instant::now();
            if t.unpushed_since.is_none() && settings.push && remote::has_unpushed(&ws) {
                t.unpushed_since = Some(now);
            }
            let pull = poked || (!settings.pull_every.is_zero() && now >= t.next_pull);
            let push = poked
                || t.unpushed_since
                    .is_some_and(|s| now.duration_since(s) >= settings.push_delay);
            if (pull || push) && (poked || now >= t.not_before) {
                poked = false;
                let ok = sync_once(
                    &ws,
                    &committer,
                    SyncAsk { pull, push: true },
                    Some(&changed),
                )
                .await;
                let now = Instant::now();
                if pull || !ok {
                    t.next_pull = now + settings.pull_every.max(Duration::from_secs(1));
                }
                t.unpushed_since = None;
                t.not_before = if ok { now } else { now + backoff(&ws) };
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = poke.notified() => poked = true,
            changed = live.changed() => if changed.is_err() { return },
        }
    }
}

/// The wait after the latest failure: 2 s doubled per failure in a row, with jitter.
fn backoff(ws: &Workspace) -> Duration {
    let failures = RemoteState::load(&ws.layout()).map_or(1, |s| s.failures.max(1));
    loops_core::backoff::wait(
        Duration::from_secs(2),
        loops_core::backoff::Growth::Doubling,
        failures - 1,
        0.3,
        loops_core::backoff::random_spread(),
        MAX_BACKOFF,
    )
}

/// The sync of a `loops run --once` pass, which has no syncer: a pull before it (unless
/// `pull_every` is 0) so a server driven by cron runs what the laptop pushed, or a push
/// after it. A failure is said and kept for `loops status` as the daemon's are; the pass
/// goes on, and what was not pushed goes with the next one.
pub async fn once(ws: &Arc<Workspace>, committer: &Committer, pull: bool) {
    let Some(settings) = &ws.settings.remote else {
        return;
    };
    let ask = if pull {
        SyncAsk {
            pull: !settings.pull_every.is_zero(),
            push: false,
        }
    } else {
        SyncAsk {
            pull: false,
            push: settings.push,
        }
    };
    if ask.pull || ask.push {
        sync_once(ws, committer, ask, None).await;
    }
}

/// One sync on the blocking pool; says what it did. `false`: it failed.
async fn sync_once(
    ws: &Arc<Workspace>,
    committer: &Committer,
    ask: SyncAsk,
    changed: Option<&Changed>,
) -> bool {
    let (w, c) = (ws.clone(), committer.clone());
    let hold = changed.map(|c| c.hold.clone());
    let announce: remote::Announce = Arc::new(move |paths: &[String]| {
        if let Some(h) = &hold {
            h.announce(paths, std::time::Instant::now());
        }
    });
    let done =
        tokio::task::spawn_blocking(move || remote::sync_announcing(&w, &c, ask, announce)).await;
    let pulled = match &done {
        Ok(Ok(Some(report))) => report.changed.as_slice(),
        _ => &[],
    };
    // Before the paths are sent: the daemon lets a loop go only once it is marked landed.
    if let Some(c) = changed {
        c.hold.landed(pulled);
    }
    match done {
        Ok(Ok(Some(report))) => {
            say(&report);
            if let Some(c) = changed.filter(|_| !report.changed.is_empty()) {
                let paths = report.changed.iter().map(|p| ws.root.join(p)).collect();
                let _ = c.events.send(paths);
            }
            true
        }
        Ok(Ok(None)) => true,
        Ok(Err(e)) => {
            tracing::warn!(
                "sync: {e}{}",
                e.help().map(|h| format!(" ({h})")).unwrap_or_default()
            );
            false
        }
        Err(e) => {
            tracing::error!("sync: the sync task failed: {e}");
            false
        }
    }
}

/// The log line of a sync that did something.
fn say(r: &SyncReport) {
    match &r.pull {
        Pulled::Nothing => {}
        Pulled::FastForward { to, .. } => {
            tracing::info!(changed = r.changed.len(), "pulled {}/{} to {}", r.remote, r.branch, short(to))
        }
        Pulled::Replayed { onto, commits } => tracing::info!(
            changed = r.changed.len(),
            "pulled {}/{}: {commits} unpushed commit(s) replayed onto {}",
            r.remote,
            r.branch,
            short(onto)
        ),
        Pulled::FollowedRewrite { onto, commits } => tracing::warn!(
            "the history of {}/{} was rewritten (a force-push): followed it to {}, {commits} unpushed commit(s) replayed on top; the old history is not pushed back",
            r.remote,
            r.branch,
            short(onto)
        ),
        Pulled::Deferred { reason, paths } => tracing::warn!(
            "pull from {}/{} deferred: {reason}{}",
            r.remote,
            r.branch,
            if paths.is_empty() { String::new() } else { format!(" ({})", paths.join(", ")) }
        ),
    }
    for h in &r.held {
        tracing::warn!(
            "sync conflict in {}: the remote's version won; the run's is kept on {}",
            h.paths.join(", "),
            h.reference
        );
    }
    match &r.push {
        Pushed::Nothing => {}
        Pushed::Pushed { to, commits, .. } => {
            tracing::info!("pushed {commits} commit(s) to {}/{} ({})", r.remote, r.branch, short(to))
        }
        Pushed::Held { commit, rule, pushed } => tracing::warn!(
            "commit {} not pushed: it matches never-share rule `{rule}` ({pushed} before it pushed); see `loops inbox`",
            short(commit)
        ),
    }
}

fn short(oid: &str) -> &str {
    &oid[..oid.len().min(12)]
}
