//! Running a command payload: its own process group, an allow-listed environment, a
//! timeout that takes the whole group down (SIGTERM, grace, SIGKILL), and a bounded head
//! and tail of its output.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

/// Variables passed through from the runner's own environment; nothing else leaks in.
pub const ENV_ALLOW_LIST: &[&str] = &["PATH", "HOME", "USER", "LANG", "TZ"];
/// Bytes of standard output a run keeps (in its record): the first quarter of this and
/// the last three quarters, so both the first line (the commit subject, an early report)
/// and the end (the final error) survive a flood. Everything between is only counted.
pub const STDOUT_TAIL: usize = 64 * 1024;
/// The same for standard error.
pub const STDERR_TAIL: usize = 16 * 1024;
/// How much is read from a pipe at once: large reads keep a flood of output cheap.
const READ_CHUNK: usize = 64 * 1024;
/// Chunks of live output that may wait for a slow reader (a job log on a slow disk, a
/// terminal). Past this the command's pipe is simply not read until there is room, so
/// the command waits instead of the runner's memory growing: at most 16 × 64 KiB per
/// stream.
pub const LIVE_QUEUE: usize = 16;
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// Where live output goes as it arrives (a `--follow`, a job's log): bounded, see
/// [`LIVE_QUEUE`].
pub type Live = mpsc::Sender<(Stream, Vec<u8>)>;

/// A channel for [`Live`] output.
pub fn live_channel() -> (Live, mpsc::Receiver<(Stream, Vec<u8>)>) {
    mpsc::channel(LIVE_QUEUE)
}

/// `argv` as the child is best started: `sh -c CMD` gets `sh` looked up on the PATH of
/// `env` here rather than by the child. Given a program by its path, the standard library
/// starts it with `posix_spawn` (a vfork), where a bare name with a PATH of our own makes
/// it fork the whole runner, copying its page tables and then faulting on every page it
/// touches (a third of the runner's CPU per job, measured). `sh` is passed as the command
/// name (`$0`), so the shell's messages still say `sh`. Anything else is left as it is.
pub fn spawnable(argv: Vec<String>, env: &[(String, String)]) -> Vec<String> {
    match argv.as_slice() {
        [sh, c, cmd] if sh == "sh" && c == "-c" => match find_on_path("sh", env) {
            Some(path) => vec![path, "-c".into(), cmd.clone(), "sh".into()],
            None => argv,
        },
        _ => argv,
    }
}

/// Where `execvp` in the child would find `prog` on the PATH of `env`. `None` leaves the
/// search to the child: no PATH, or a relative entry met first (the child resolves it
/// against its own working folder).
pub fn find_on_path(prog: &str, env: &[(String, String)]) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let (_, path) = env.iter().rev().find(|(k, _)| k == "PATH")?;
    for dir in path.split(':') {
        if !dir.starts_with('/') {
            return None;
        }
        let p = std::path::Path::new(dir).join(prog);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                return p.to_str().map(str::to_string)
            }
            _ => {}
        }
    }
    None
}

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
    /// Everything the command printed, kept or not.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Bytes printed but not kept (between the head and the tail).
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
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
        .filter_map(|k| crate::secrets::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// Runs the command to completion, timeout or cancellation. `live` receives output as it
/// arrives (for `--follow`); `cancel` flipping to true stops the group like a timeout.
pub async fn run(
    spec: &ExecSpec,
    live: Option<Live>,
    mut cancel: Option<watch::Receiver<bool>>,
) -> ExecResult {
    let started = Instant::now();
    let mut result = ExecResult::default();
    let Some((prog, args)) = spec.argv.split_first() else {
        result.spawn_error = Some("the command is empty".into());
        return result;
    };
    let mut child = match command(spec, prog, args).spawn() {
        Ok(c) => c,
        Err(e) => {
            result.spawn_error = Some(spawn_error(prog, spec, &e));
            result.duration = started.elapsed();
            return result;
        }
    };
    let pgid = child.id();
    let (out, err) = attach(&mut child, spec, live);

    let deadline = tokio::time::Instant::now() + spec.timeout;
    let cancelled = until_cancelled(cancel.as_mut());
    tokio::pin!(cancelled);
    // The readers finish when every holder of the output pipes has closed them.
    let readers = read_both(out, err);
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
        crate::sys::signal_group(pg, crate::sys::Signal::KILL);
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
    result.keep_output(o, e);
    result.duration = started.elapsed();
    result
}

/// The task reading one of a command's output pipes.
type Reader = tokio::task::JoinHandle<Capture>;

/// Feeds the child its stdin, tells `spec.on_spawn` its pid, and starts the readers of
/// its stdout and stderr (which also pass the output on to `live`).
fn attach(
    child: &mut tokio::process::Child,
    spec: &ExecSpec,
    live: Option<Live>,
) -> (Option<Reader>, Option<Reader>) {
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
        .map(|s| tokio::spawn(capture(s, STDOUT_TAIL, Stream::Stdout, live.clone())));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(capture(s, STDERR_TAIL, Stream::Stderr, live.clone())));
    (out, err)
}

/// The command of `spec`, in a process group of its own, with only the environment the
/// spec gives it.
fn command(spec: &ExecSpec, prog: &str, args: &[String]) -> tokio::process::Command {
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
    cmd
}

/// Why `prog` could not be started, with what to check.
fn spawn_error(prog: &str, spec: &ExecSpec, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "cannot run `{prog}`: not found (relative paths are resolved in {})",
            spec.cwd.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot run `{prog}`: permission denied (is it executable? chmod +x)")
        }
        _ => format!("cannot run `{prog}`: {e}"),
    }
}

/// Resolves once `cancel` turns true; never without one.
async fn until_cancelled(cancel: Option<&mut watch::Receiver<bool>>) {
    match cancel {
        Some(rx) => {
            let _ = rx.wait_for(|v| *v).await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// What the stdout and stderr readers captured, once both have finished.
async fn read_both(out: Option<Reader>, err: Option<Reader>) -> (Option<Capture>, Option<Capture>) {
    let o = match out {
        Some(h) => h.await.ok(),
        None => None,
    };
    let e = match err {
        Some(h) => h.await.ok(),
        None => None,
    };
    (o, e)
}

impl ExecResult {
    /// Keeps the tails of what the command printed (secrets redacted) and the counts.
    fn keep_output(&mut self, out: Option<Capture>, err: Option<Capture>) {
        if let Some(c) = out {
            self.stdout_bytes = c.total;
            self.stdout_dropped = c.dropped();
            self.stdout_tail = crate::secrets::redact(&c.text()).into_owned();
        }
        if let Some(c) = err {
            self.stderr_bytes = c.total;
            self.stderr_dropped = c.dropped();
            self.stderr_tail = crate::secrets::redact(&c.text()).into_owned();
        }
    }
}

/// SIGTERM to the group, up to `grace` for it to go, then SIGKILL to whatever is left.
async fn stop_group(pgid: u32, child: &mut tokio::process::Child, grace: Duration) {
    use crate::sys::{group_exists, signal_group, Signal};
    if !signal_group(pgid, Signal::TERM) {
        return;
    }
    let until = Instant::now() + grace;
    loop {
        let _ = child.try_wait();
        let gone = !group_exists(pgid);
        if gone {
            return;
        }
        if Instant::now() >= until {
            signal_group(pgid, Signal::KILL);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `cap` bytes written to it, in a fixed buffer: memory stays the same however
/// much passes through.
#[derive(Debug, Clone)]
pub struct Ring {
    buf: Vec<u8>,
    cap: usize,
    /// Where the next byte goes once the buffer is full (the oldest byte is there).
    at: usize,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Ring {
            buf: Vec::new(),
            cap,
            at: 0,
        }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        if self.cap == 0 {
            return;
        }
        if data.len() >= self.cap {
            data = &data[data.len() - self.cap..];
            self.buf.clear();
            self.buf.extend_from_slice(data);
            self.at = 0;
            return;
        }
        let room = self.cap - self.buf.len();
        if room > 0 {
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        while !data.is_empty() {
            let n = (self.cap - self.at).min(data.len());
            self.buf[self.at..self.at + n].copy_from_slice(&data[..n]);
            self.at = (self.at + n) % self.cap;
            data = &data[n..];
        }
    }

    /// The kept bytes, oldest first.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.buf.len());
        v.extend_from_slice(&self.buf[self.at..]);
        v.extend_from_slice(&self.buf[..self.at]);
        v
    }
}

/// What is kept of one output stream: its first bytes, its last bytes and how much
/// there was in all.
#[derive(Debug, Clone)]
pub struct Capture {
    head: Vec<u8>,
    head_cap: usize,
    tail: Ring,
    tail_cap: usize,
    pub total: u64,
}

impl Capture {
    /// Keeps at most `keep` bytes: a quarter from the start, the rest from the end.
    pub fn new(keep: usize) -> Self {
        let head_cap = keep / 4;
        let tail_cap = keep - head_cap;
        Capture {
            head: Vec::new(),
            head_cap,
            tail: Ring::new(tail_cap),
            tail_cap,
            total: 0,
        }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.head.len() < self.head_cap {
            let n = (self.head_cap - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        self.tail.push(data);
    }

    /// Bytes that were neither in the head nor in the tail.
    pub fn dropped(&self) -> u64 {
        self.total
            .saturating_sub((self.head_cap + self.tail_cap) as u64)
    }

    /// The kept text; when something was dropped, a line between head and tail says how
    /// much, so nobody mistakes the two ends for the whole.
    pub fn text(&self) -> String {
        let mut bytes = self.head.clone();
        let dropped = self.dropped();
        if dropped > 0 {
            if bytes.last().is_some_and(|b| *b != b'\n') {
                bytes.push(b'\n');
            }
            bytes.extend_from_slice(
                format!(
                    "[… {dropped} bytes not kept: {} in all; the first {} and the last {} are kept]\n",
                    self.total,
                    self.head.len(),
                    self.tail_cap
                )
                .as_bytes(),
            );
        }
        bytes.extend_from_slice(&self.tail.to_vec());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Reads a stream to its end, keeping a bounded head and tail. Never stops reading: a
/// command whose pipe fills up would block, and a flood of output is no reason to fail a
/// run (its timeout bounds how long it may go on).
async fn capture<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    keep: usize,
    which: Stream,
    live: Option<Live>,
) -> Capture {
    let mut kept = Capture::new(keep);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(tx) = &live {
                    // A reader that went away is no reason to stop capturing.
                    let _ = tx.send((which, chunk[..n].to_vec())).await;
                }
                kept.push(&chunk[..n]);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_dash_c_is_given_by_its_path_and_keeps_its_name() {
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let argv = spawnable(vec!["sh".into(), "-c".into(), "echo hi".into()], &env);
        assert!(
            argv[0].ends_with("/sh") && argv[0].starts_with('/'),
            "{argv:?}"
        );
        assert_eq!(&argv[1..], ["-c", "echo hi", "sh"]);
        // A relative PATH entry first: the child's own search decides, as before.
        let rel = vec![("PATH".to_string(), "bin:/usr/bin".to_string())];
        let argv = spawnable(vec!["sh".into(), "-c".into(), "x".into()], &rel);
        assert_eq!(argv, ["sh", "-c", "x"]);
        // Anything else is left as it is.
        let argv = spawnable(vec!["./run.sh".into(), "-c".into()], &env);
        assert_eq!(argv, ["./run.sh", "-c"]);
    }
}
