//! What the runner remembers about each loop between runs and across restarts:
//! `.loops/state/<loop>.json`. The slot watermark in it is what makes "exactly one run
//! per slot" survive a restart: a slot at or before it was already run, skipped or missed.

use crate::fsutil::atomic_write;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a loop is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub since: DateTime<Utc>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A retry waiting for its backoff to pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRetry {
    pub slot: Option<DateTime<Utc>>,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub trigger: String,
}

/// The last run's outcome, kept for `loops list` and the next run's environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub run_id: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopState {
    /// When the runner first saw this loop; no slot before it is ever owed.
    pub first_seen: DateTime<Utc>,
    /// Every slot at or before this instant is decided (run, skipped or missed).
    #[serde(default)]
    pub watermark: Option<DateTime<Utc>>,
    /// The schedule the watermark was computed for; a changed schedule starts afresh.
    #[serde(default)]
    pub schedule_fingerprint: String,
    #[serde(default)]
    pub last_run: Option<LastRun>,
    /// Start of the last run that succeeded: the collection window's anchor.
    #[serde(default)]
    pub last_success: Option<DateTime<Utc>>,
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default)]
    pub paused: Option<Pause>,
    #[serde(default)]
    pub pending_retry: Option<PendingRetry>,
    /// An adaptive loop's next look, as its model chose it (`finish(next_check)`): the
    /// next slot is this instant, once, instead of the `every` grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check: Option<DateTime<Utc>>,
    /// The loop went over a daily budget: no slot runs before this instant (the next
    /// UTC midnight), and then it resumes by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_paused_until: Option<DateTime<Utc>>,
}

impl LoopState {
    pub fn new(now: DateTime<Utc>, fingerprint: &str) -> Self {
        LoopState {
            first_seen: now,
            watermark: Some(now),
            schedule_fingerprint: fingerprint.to_string(),
            last_run: None,
            last_success: None,
            consecutive_failures: 0,
            paused: None,
            pending_retry: None,
            next_check: None,
            budget_paused_until: None,
        }
    }

    /// The watermark to plan from.
    pub fn decided_until(&self) -> DateTime<Utc> {
        self.watermark.unwrap_or(self.first_seen)
    }
}

/// Reads and writes loop state files.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: &Path) -> Self {
        StateStore {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.lock"))
    }

    /// The stored state; `None` when the loop was never seen (or its file is unreadable,
    /// which the next update sets aside). Read under a shared lock: writers rewrite the
    /// file in place, and a reader must never see half of a write.
    pub fn load(&self, name: &str) -> Option<LoopState> {
        // Do not create a lock file just to learn there is no state.
        if !self.path(name).exists() {
            return None;
        }
        let _lock = crate::fsutil::FileLock::acquire_shared(&self.lock_path(name)).ok()?;
        self.read_unlocked(name).ok().flatten()
    }

    /// Reads the file; `Err` with the parse error when it exists but is not a state.
    fn read_unlocked(&self, name: &str) -> Result<Option<LoopState>, String> {
        let text = match std::fs::read_to_string(self.path(name)) {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// The stored state, or a fresh one saved now.
    pub fn load_or_init(
        &self,
        name: &str,
        now: DateTime<Utc>,
        fingerprint: &str,
    ) -> Result<LoopState, StateError> {
        // Relaxed: a first-seen state lost to a power cut is simply made again, and a
        // thousand loops seen at once must not wait for the disk a thousand times.
        self.update_with(name, false, |st| {
            match st {
                Some(s) if s.schedule_fingerprint != fingerprint => {
                    // A new schedule owes nothing for the time before it was written.
                    s.schedule_fingerprint = fingerprint.to_string();
                    s.watermark = Some(s.watermark.map_or(now, |w| w.max(now)));
                }
                Some(_) => {}
                None => *st = Some(LoopState::new(now, fingerprint)),
            }
            st.clone()
                .unwrap_or_else(|| LoopState::new(now, fingerprint))
        })
    }

    /// Read-modify-write of one loop's state under an exclusive lock, so the daemon and
    /// a CLI command touching the same loop never lose each other's update.
    pub fn update<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Option<LoopState>) -> R,
    ) -> Result<R, StateError> {
        self.update_with(name, true, f)
    }

    /// [`StateStore::update`], choosing whether to wait for the disk. A relaxed write
    /// survives a crash of the process (the page cache does); the caller flushes a batch
    /// of them with one [`crate::fsutil::sync_filesystem`] instead of one fsync each.
    pub fn update_with<R>(
        &self,
        name: &str,
        durable: bool,
        f: impl FnOnce(&mut Option<LoopState>) -> R,
    ) -> Result<R, StateError> {
        let lock_path = self.lock_path(name);
        let _lock = crate::fsutil::FileLock::acquire_blocking(&lock_path)
            .map_err(|source| io_error(lock_path.clone(), source))?;
        let path = self.path(name);
        let mut state = match self.read_unlocked(name) {
            Ok(s) => s,
            Err(e) => {
                // Never overwrite what cannot be read: keep it beside, start afresh.
                let aside = path.with_extension("json.corrupt");
                tracing::warn!(
                    "{}: unreadable loop state ({e}); kept as {} and starting afresh",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(&path, &aside);
                None
            }
        };
        let before = state.clone();
        let r = f(&mut state);
        if state != before {
            if let Some(s) = &state {
                if durable {
                    self.save(name, s)?;
                } else {
                    let path = self.path(name);
                    let text = serde_json::to_string_pretty(s).unwrap_or_default();
                    crate::fsutil::overwrite_in_place(&path, &text)
                        .map_err(|source| io_error(path, source))?;
                }
            }
        }
        Ok(r)
    }

    pub fn save(&self, name: &str, state: &LoopState) -> Result<(), StateError> {
        let path = self.path(name);
        let text = serde_json::to_string_pretty(state).unwrap_or_default();
        atomic_write(&path, text.as_bytes()).map_err(|source| io_error(path, source))
    }
}

/// A state write that failed; a disk refusing writes is also noted in the daemon's
/// journal, which says when it accepts them again.
fn io_error(path: PathBuf, source: std::io::Error) -> StateError {
    crate::journal::report_io(&path, &source);
    StateError::Io { path, source }
}
