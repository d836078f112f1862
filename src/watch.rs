//! The file watcher: a doorbell, never the truth. Events only say "look again"; the
//! daemon rescans the folder that rang. A lost event costs latency, never a run.
//!
//! The debouncer is a task of our own rather than notify-debouncer-full: that one ticks a
//! thread every few milliseconds forever, and an idle daemon must not wake at all.

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
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

/// Paths that changed (deduplicated), as one batch. An empty path means "events may have
/// been lost: rescan everything".
pub type Batch = Vec<PathBuf>;

/// Keeps the watcher alive; dropping it stops watching.
pub struct Watcher {
    _watcher: RecommendedWatcher,
    debouncer: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.debouncer.abort();
    }
}

/// Watches `dirs` (each recursively or not) and sends batches of changed paths: the
/// first event opens a batch, everything within `debounce` after it joins, then the
/// batch is sent. Must be called inside a tokio runtime.
pub fn watch(
    dirs: &[(PathBuf, RecursiveMode)],
    debounce: Duration,
    tx: mpsc::UnboundedSender<Batch>,
) -> Result<Watcher, WatchError> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Batch>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            // Reading a file is not a change; the daemon's own reads of the files it
            // watches would otherwise wake it forever.
            Ok(ev) if ev.kind.is_access() => {}
            Ok(ev) => {
                let _ = raw_tx.send(ev.paths);
            }
            Err(e) => {
                tracing::warn!("file watcher: {e}");
                // An overflow or error means events may be lost: ask for a full rescan.
                let _ = raw_tx.send(vec![PathBuf::new()]);
            }
        }
    })
    .map_err(|source| WatchError::Notify {
        path: PathBuf::new(),
        source,
    })?;
    for (d, mode) in dirs {
        let _ = std::fs::create_dir_all(d);
        watcher
            .watch(d, *mode)
            .map_err(|source| classify(d, source))?;
    }
    let debouncer = tokio::spawn(async move {
        while let Some(first) = raw_rx.recv().await {
            let mut batch = first;
            let until = tokio::time::Instant::now() + debounce;
            loop {
                tokio::select! {
                    more = raw_rx.recv() => match more {
                        Some(m) => batch.extend(m),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
            batch.sort();
            batch.dedup();
            if tx.send(batch).is_err() {
                return;
            }
        }
    });
    Ok(Watcher {
        _watcher: watcher,
        debouncer,
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
