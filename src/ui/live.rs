//! Live pages: one file watcher for the whole server (the same `loops_core::watcher` the
//! daemon uses) feeds a broadcast, and every open page listens on `/events` (Server-Sent
//! Events). No client makes the server read the disk on a timer; a page that hears of a
//! change in what it shows fetches itself again (assets/live.js).

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use loops_core::watcher::{Mode, Watcher};
use loops_core::workspace::Workspace;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// The watcher's changes as page areas: `inbox`, `jobs`, `runs` (loops, records, state,
/// deliveries) or `all` (events may have been lost).
#[derive(Clone)]
pub(super) struct Live {
    tx: broadcast::Sender<&'static str>,
    /// Dropping the last clone stops watching.
    _watcher: Option<Arc<Watcher>>,
}

impl Live {
    /// Starts the watcher; without one (an inotify limit) pages still work, unrefreshed.
    pub(super) fn start(ws: &Workspace) -> Live {
        let (tx, _) = broadcast::channel(64);
        let layout = ws.layout();
        let dirs = [
            (ws.domains_dir(), Mode::Children),
            (ws.inbox_dir(), Mode::Recursive),
            (layout.runs_dir(), Mode::Flat),
            (layout.jobs_dir(), Mode::Flat),
            (layout.state_dir(), Mode::Flat),
            (layout.deliveries_dir(), Mode::Flat),
        ];
        let (batch_tx, mut batch_rx) = mpsc::unbounded_channel();
        let watcher = match loops_core::watcher::watch(&dirs, Duration::from_millis(200), batch_tx)
        {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                tracing::warn!(
                    "the UI's pages will not update by themselves: {}",
                    e.explained()
                );
                None
            }
        };
        let root = ws.root.clone();
        let out = tx.clone();
        tokio::spawn(async move {
            while let Some(batch) = batch_rx.recv().await {
                let mut areas: Vec<&'static str> = batch.iter().map(|p| area(&root, p)).collect();
                areas.sort_unstable();
                areas.dedup();
                for a in areas {
                    // No listener is no error: nobody has a page open.
                    let _ = out.send(a);
                }
            }
        });
        Live {
            tx,
            _watcher: watcher,
        }
    }
}

/// Which part of the pages a changed path belongs to.
fn area(root: &Path, path: &Path) -> &'static str {
    if path.as_os_str().is_empty() {
        return "all";
    }
    let rel = path.strip_prefix(root).unwrap_or(path);
    if rel.starts_with("inbox") {
        "inbox"
    } else if rel.starts_with(".loops/jobs") {
        "jobs"
    } else {
        "runs"
    }
}

/// `GET /events`: `event: change` with the area as data, until the page goes away.
pub(super) async fn events(
    State(live): State<Live>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = live.tx.subscribe();
    let s = stream::unfold(rx, |mut rx| async move {
        let area = match rx.recv().await {
            Ok(a) => a,
            // Missed some: whatever it was, the page is stale.
            Err(broadcast::error::RecvError::Lagged(_)) => "all",
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(Event::default().event("change").data(area)), rx))
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}
