//! Running a command payload: its own process group, an allow-listed environment, a
//! timeout that takes the whole group down (SIGTERM, grace, SIGKILL), and bounded tails
//! of its output.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

/// Variables passed through from the runner's own environment; nothing else leaks in.
pub const ENV_ALLOW_LIST: &[&str] = &["PATH", "HOME", "USER", "LANG", "TZ"];
pub const STDOUT_TAIL: usize = 64 * 1024;
pub const STDERR_TAIL: usize = 16 * 1024;
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// What to run and how.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// The full environment of the child (see [`base_env`]).
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub grace: Duration,
    /// Told the child's pid (= its process group id) as soon as it is spawned, so the
    /// caller can record it: a runner that dies can then have its orphans stopped.
    pub on_spawn: Option<mpsc::UnboundedSender<u32>>,
    /// Bytes given to the command on stdin (else stdin is empty).
    pub stdin: Option<Vec<u8>>,
}

/// Which stream a live chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a command ended.
#[derive(Debug, Clone, Default)]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub cancelled: bool,
    /// The program could not be started at all (not found, not executable).
    pub spawn_error: Option<String>,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub duration: Duration,
}

impl ExecResult {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.cancelled
    }

    /// A one-line reason for a failure, for records and logs.
    pub fn failure_reason(&self, timeout: Duration) -> Option<String> {
        if let Some(e) = &self.spawn_error {
            return Some(e.clone());
        }
        if self.timed_out {
            return Some(format!(
                "timed out after {}; the process group was stopped",
                crate::duration::format_duration(timeout)
            ));
        }
        if self.cancelled {
            return Some("interrupted".into());
        }
        if let Some(sig) = self.signal {
            return Some(format!("killed by signal {sig}"));
        }
        match self.exit_code {
            Some(0) | None => None,
            Some(c) => {
                let last = self
                    .stderr_tail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| format!(": {}", l.trim()))
                    .unwrap_or_default();
                Some(format!("exited with status {c}{last}"))
            }
        }
    }
}

/// The allow-listed part of the runner's environment.
pub fn base_env() -> Vec<(String, String)> {
    ENV_ALLOW_LIST
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// Runs the command to completion, timeout or cancellation. `live` receives output as it
/// arrives (for `--follow`); `cancel` flipping to true stops the group like a timeout.
pub async fn run(
    spec: &ExecSpec,
    live: Option<mpsc::UnboundedSender<(Stream, Vec<u8>)>>,
    mut cancel: Option<watch::Receiver<bool>>,
) -> ExecResult {
    let started = Instant::now();
    let mut result = ExecResult::default();
    let Some((prog, args)) = spec.argv.split_first() else {
        result.spawn_error = Some("the command is empty".into());
        return result;
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            result.spawn_error = Some(match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "cannot run `{prog}`: not found (relative paths are resolved in {})",
                    spec.cwd.display()
                ),
                std::io::ErrorKind::PermissionDenied => {
                    format!("cannot run `{prog}`: permission denied (is it executable? chmod +x)")
                }
                _ => format!("cannot run `{prog}`: {e}"),
            });
            result.duration = started.elapsed();
            return result;
        }
    };
    let pgid = child.id().map(|p| p as i32);
    if let (Some(mut w), Some(bytes)) = (child.stdin.take(), spec.stdin.clone()) {
        // A command that does not read its stdin must not block the run: write in a
        // task, and a closed pipe is not an error.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = w.write_all(&bytes).await;
            let _ = w.shutdown().await;
        });
    }
    if let (Some(tx), Some(pid)) = (&spec.on_spawn, child.id()) {
        let _ = tx.send(pid);
    }
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(read_tail(s, STDOUT_TAIL, Stream::Stdout, live.clone())));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(read_tail(s, STDERR_TAIL, Stream::Stderr, live.clone())));
    drop(live);

    let deadline = tokio::time::Instant::now() + spec.timeout;
    let cancelled = async {
        match cancel.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|v| *v).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(cancelled);

    // The readers finish when every holder of the output pipes has closed them.
    let readers = async move {
        let o = match out {
            Some(h) => h.await.ok(),
            None => None,
        };
        let e = match err {
            Some(h) => h.await.ok(),
            None => None,
        };
        (o, e)
    };
    tokio::pin!(readers);
    let mut outputs = None;
    let mut status = None;
    tokio::select! {
        s = child.wait() => status = s.ok(),
        _ = tokio::time::sleep_until(deadline) => result.timed_out = true,
        _ = &mut cancelled => result.cancelled = true,
    }
    if status.is_some() {
        // The leader is done; its output pipes may still be held by children it left
        // behind. The run lasts until they close, bounded by the same deadline.
        tokio::select! {
            r = &mut readers => outputs = Some(r),
            _ = tokio::time::sleep_until(deadline) => result.timed_out = true,
            _ = &mut cancelled => result.cancelled = true,
        }
    }
    if result.timed_out || result.cancelled {
        if let Some(pg) = pgid {
            stop_group(pg, &mut child, spec.grace).await;
        }
        if status.is_none() {
            status = child.wait().await.ok();
        }
    } else if let Some(pg) = pgid {
        // Nothing the run started may outlive it holding the loop's files.
        signal_group(pg, libc::SIGKILL);
    }
    if let Some(st) = status {
        use std::os::unix::process::ExitStatusExt;
        result.exit_code = st.code();
        result.signal = st.signal();
    }
    let (o, e) = match outputs {
        Some(r) => r,
        // A process that left the group (setsid) could hold the pipes forever: after the
        // group is stopped, give the readers a moment, then give up on the tails.
        None => tokio::time::timeout(spec.grace + Duration::from_secs(1), readers)
            .await
            .unwrap_or((None, None)),
    };
    if let Some((tail, n)) = o {
        result.stdout_tail = tail;
        result.stdout_bytes = n;
    }
    if let Some((tail, n)) = e {
        result.stderr_tail = tail;
        result.stderr_bytes = n;
    }
    result.duration = started.elapsed();
    result
}

fn signal_group(pgid: i32, sig: i32) -> bool {
    // SAFETY: signalling a process group we created; a negative pid names the group.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// SIGTERM to the group, up to `grace` for it to go, then SIGKILL to whatever is left.
async fn stop_group(pgid: i32, child: &mut tokio::process::Child, grace: Duration) {
    if !signal_group(pgid, libc::SIGTERM) {
        return;
    }
    let until = Instant::now() + grace;
    loop {
        let _ = child.try_wait();
        // SAFETY: signal 0 only probes whether any member of the group exists.
        let gone = unsafe { libc::kill(-pgid, 0) } != 0;
        if gone {
            return;
        }
        if Instant::now() >= until {
            signal_group(pgid, libc::SIGKILL);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_tail<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    cap: usize,
    which: Stream,
    live: Option<mpsc::UnboundedSender<(Stream, Vec<u8>)>>,
) -> (String, u64) {
    let mut buf = std::collections::VecDeque::<u8>::with_capacity(cap.min(8192));
    let mut chunk = vec![0u8; 8192];
    let mut total: u64 = 0;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                if let Some(tx) = &live {
                    let _ = tx.send((which, chunk[..n].to_vec()));
                }
                buf.extend(&chunk[..n]);
                if buf.len() > cap {
                    let excess = buf.len() - cap;
                    buf.drain(..excess);
                }
            }
        }
    }
    let bytes: Vec<u8> = buf.into_iter().collect();
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if total > cap as u64 {
        text = format!("[… {} earlier bytes not kept]\n{text}", total - cap as u64);
    }
    (text, total)
}
