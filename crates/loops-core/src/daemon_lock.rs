//! `.loops/daemon.lock`: which process is the workspace's daemon. Held (flock) for the
//! daemon's life and naming it by pid and start time, so that anyone can tell whether a
//! daemon runs without taking the lock.

use crate::fsutil::{process_alive, process_start_time, FileLock};
use crate::workspace::Workspace;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DaemonLockError {
    #[error(
        "another `loops run` is already running for {workspace} (pid {pid}, started {started})"
    )]
    AlreadyRunning {
        workspace: PathBuf,
        pid: u32,
        started: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DaemonLockError {
    pub fn help(&self) -> Option<String> {
        match self {
            DaemonLockError::AlreadyRunning { pid, .. } => Some(format!(
                "stop it first (`kill {pid}`), or use it: `loops trigger NAME` works while it runs"
            )),
            DaemonLockError::Io { .. } => None,
        }
    }
}

/// What `.loops/daemon.lock` says about its holder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    #[serde(default)]
    pub pid_start: Option<u64>,
    pub started: DateTime<Utc>,
    pub version: String,
    /// Whether this daemon runs shell jobs (so the CLI can refuse them at submit).
    #[serde(default)]
    pub allow_shell_jobs: bool,
    /// Whether this daemon serves (not a `--once` pass): it then claims the runs `loops
    /// trigger` submits, rather than the trigger running the loop itself.
    #[serde(default)]
    pub takes_runs: bool,
}

/// The workspace's daemon lock, held for the daemon's lifetime.
pub struct DaemonLock {
    lock: FileLock,
    /// What the lock file said before this daemon took it (the previous daemon), and
    /// when that daemon last showed a sign of life (the file's modification time).
    pub previous: Option<LockInfo>,
    pub previous_heartbeat: Option<DateTime<Utc>>,
}

/// How often a running daemon touches its lock file, so that after a crash the next
/// start can say when the dead daemon was last alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// How long a start waits for the kernel to release the lock of a daemon that is dead.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(60);

impl DaemonLock {
    /// Takes the lock for this process, or says who holds it. `allow_shell_jobs` and
    /// `takes_runs` are recorded for the CLI (it refuses shell jobs this daemon would not
    /// run, and submits triggered runs to a daemon that takes them).
    pub fn acquire(
        ws: &Workspace,
        allow_shell_jobs: bool,
        takes_runs: bool,
    ) -> Result<DaemonLock, DaemonLockError> {
        let path = ws.layout().daemon_lock();
        let io = |source| DaemonLockError::Io {
            path: path.clone(),
            source,
        };
        // Held is not always a running daemon. The kernel may release a killed daemon's
        // flock a while after the process is gone (seconds, on a loaded machine: the
        // soak test saw it), and an older `loops` probe takes it for a moment. So look
        // again for a short while, and for longer while the holder the file names is
        // dead, before refusing to start.
        let t0 = std::time::Instant::now();
        let mut said = false;
        let got = loop {
            if let Some(l) = FileLock::try_acquire(&path).map_err(io)? {
                break Some(l);
            }
            let dead_holder = read_lock_info(ws)
                .filter(|i| i.pid_start.is_some() && !process_alive(i.pid, i.pid_start));
            let waited = t0.elapsed();
            match dead_holder {
                Some(i) if waited < LOCK_RELEASE_WAIT => {
                    if !said {
                        said = true;
                        tracing::info!(
                            "waiting for the system to release the lock of the previous daemon (pid {}, which has exited)",
                            i.pid
                        );
                    }
                }
                _ if waited < Duration::from_millis(200) => {}
                _ => break None,
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match got {
            Some(mut lock) => {
                let previous = read_lock_info(ws);
                let previous_heartbeat = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .filter(|_| previous.is_some())
                    .map(DateTime::<Utc>::from);
                let pid = std::process::id();
                let info = LockInfo {
                    pid,
                    pid_start: process_start_time(pid),
                    started: Utc::now(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    allow_shell_jobs,
                    takes_runs,
                };
                lock.write_contents(&serde_json::to_string(&info).unwrap_or_default())
                    .map_err(io)?;
                Ok(DaemonLock {
                    lock,
                    previous,
                    previous_heartbeat,
                })
            }
            None => {
                let info = read_lock_info(ws);
                Err(DaemonLockError::AlreadyRunning {
                    workspace: ws.root.clone(),
                    pid: info.as_ref().map(|i| i.pid).unwrap_or(0),
                    started: info
                        .map(|i| i.started.to_rfc3339())
                        .unwrap_or_else(|| "at an unknown time".into()),
                })
            }
        }
    }
}

/// The running daemon's lock info, if a daemon holds the lock right now.
pub fn daemon_alive(ws: &Workspace) -> Option<LockInfo> {
    // The holder is named in the file by pid and start time: checking that process is
    // enough, and takes no lock. A probe that took the lock, even for a moment, made a
    // daemon starting in that moment refuse to run, "already running" as itself.
    if let Some(info) = read_lock_info(ws) {
        if info.pid_start.is_some() {
            return process_alive(info.pid, info.pid_start).then_some(info);
        }
    }
    match FileLock::try_acquire(&ws.layout().daemon_lock()) {
        Ok(Some(_free)) => None,
        Ok(None) => read_lock_info(ws),
        Err(_) => None,
    }
}

/// The daemon that takes triggered runs, if one serves the workspace now.
pub fn serving_daemon(ws: &Workspace) -> Option<LockInfo> {
    daemon_alive(ws).filter(|i| i.takes_runs)
}

fn read_lock_info(ws: &Workspace) -> Option<LockInfo> {
    let text = std::fs::read_to_string(ws.layout().daemon_lock()).ok()?;
    serde_json::from_str(&text).ok()
}

impl DaemonLock {
    /// A sign of life for the next start to read after a crash (the file's mtime).
    pub fn touch(&self) {
        let _ = self.lock.touch();
    }
}
