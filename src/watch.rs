//! The file watcher: a doorbell, never the truth. Events only say "look again"; the
//! daemon rescans the folder that rang. A lost event costs latency, never a run.

use notify_debouncer_full::notify::{self, RecursiveMode};
use notify_debouncer_full::{new_debouncer_opt, DebounceEventResult, NoCache};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: the system's limit of inotify watches is reached")]
    WatchLimit { path: PathBuf },
    #[error("cannot watch {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

impl WatchError {
    pub fn help(&self) -> Option<String> {
        match self {
            WatchError::WatchLimit { .. } => Some(
                "raise it with `sudo sysctl fs.inotify.max_user_watches=524288` (and in /etc/sysctl.conf); until then loops rescans every few seconds instead".into(),
            ),
            WatchError::Notify { .. } => None,
        }
    }
}

/// Paths that changed (deduplicated), as one batch.
pub type Batch = Vec<PathBuf>;

/// Keeps the watcher alive; dropping it stops watching.
pub struct Watcher {
    _debouncer: notify_debouncer_full::Debouncer<notify::RecommendedWatcher, NoCache>,
}

/// Watches `dirs` (each recursively or not) and sends each debounced batch of changed
/// paths. No file-id cache: it would walk every watched tree at start (slow with a large
/// domain folder) and its rename stitching is not needed when events are only hints.
pub fn watch(
    dirs: &[(PathBuf, RecursiveMode)],
    debounce: Duration,
    tx: mpsc::UnboundedSender<Batch>,
) -> Result<Watcher, WatchError> {
    let handler = move |res: DebounceEventResult| {
        match res {
            Ok(events) => {
                // Reading a file is not a change; the daemon's own reads of the files it
                // watches would otherwise wake it forever.
                let mut paths: Vec<PathBuf> = events
                    .into_iter()
                    .filter(|e| !e.event.kind.is_access())
                    .flat_map(|e| e.event.paths.clone())
                    .collect();
                paths.sort();
                paths.dedup();
                if !paths.is_empty() {
                    let _ = tx.send(paths);
                }
            }
            Err(errs) => {
                for e in errs {
                    tracing::warn!("file watcher: {e}");
                }
                // An overflow or error means events may be lost: ask for a full rescan.
                let _ = tx.send(vec![PathBuf::new()]);
            }
        }
    };
    let mut debouncer = new_debouncer_opt::<_, notify::RecommendedWatcher, NoCache>(
        debounce,
        None,
        handler,
        NoCache,
        notify::Config::default(),
    )
    .map_err(|source| WatchError::Notify {
        path: PathBuf::new(),
        source,
    })?;
    for (d, mode) in dirs {
        let _ = std::fs::create_dir_all(d);
        debouncer
            .watch(d, *mode)
            .map_err(|source| classify(d, source))?;
    }
    Ok(Watcher {
        _debouncer: debouncer,
    })
}

fn classify(path: &Path, source: notify::Error) -> WatchError {
    let limit = matches!(&source.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&source.kind, notify::ErrorKind::Io(e) if e.raw_os_error() == Some(libc::ENOSPC));
    if limit {
        WatchError::WatchLimit {
            path: path.to_path_buf(),
        }
    } else {
        WatchError::Notify {
            path: path.to_path_buf(),
            source,
        }
    }
}
