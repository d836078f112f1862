//! The system calls the tests and benches make, as safe functions: rustix checks the ids
//! and owns the descriptors, so no caller needs `unsafe` (or libc) for them.
//!
//! Signals are fire-and-forget, as a test's `kill` always was: a process that is already
//! gone is what the test then checks for, not an error of the signal.

use std::fs::File;
use std::process::Child;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Resource, Rlimit};

pub use rustix::process::Signal;

/// Sends `sig` to process `pid` (`kill(pid, sig)`); errors are ignored. A pid of 0 or
/// below (which kill(2) reads as a process group) sends nothing.
pub fn signal(pid: i32, sig: Signal) {
    if let Some(p) = positive(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Sends `sig` to a child this process started and has not reaped yet.
pub fn signal_child(child: &Child, sig: Signal) {
    let _ = rustix::process::kill_process(Pid::from_child(child), sig);
}

/// Sends `sig` to every process of group `pgid` (`kill(-pgid, sig)`); errors are ignored.
pub fn signal_group(pgid: i32, sig: Signal) {
    if let Some(p) = positive(pgid) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

/// Whether a process with this pid exists and may be signalled (`kill(pid, 0)`).
pub fn pid_alive(pid: i32) -> bool {
    positive(pid).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// Whether process group `pgid` still has a process in it (`kill(-pgid, 0)`).
pub fn group_alive(pgid: i32) -> bool {
    positive(pgid).is_some_and(|p| rustix::process::test_kill_process_group(p).is_ok())
}

fn positive(raw: i32) -> Option<Pid> {
    if raw > 0 {
        Pid::from_raw(raw)
    } else {
        None
    }
}

/// A zombie has exited and only waits to be reaped: it holds nothing.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Whether the tests run as root (effective uid 0), which file permissions do not stop.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Takes an exclusive flock(2) on `file`, waiting for it; held until the file is closed.
pub fn lock_exclusive(file: &File) -> std::io::Result<()> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(())
}

/// Sets the file size limit (`RLIMIT_FSIZE`) of process `pid`: `soft` bytes, or none.
/// The hard limit stays unlimited, so the soft one can be raised again: the disk frees.
/// Panics when prlimit(2) fails.
pub fn set_file_size_limit(pid: i32, soft: Option<u64>) {
    let lim = Rlimit {
        current: soft,
        maximum: None,
    };
    // None would be this process: never limit the test itself.
    let p = positive(pid).unwrap_or_else(|| panic!("set_file_size_limit: {pid} is not a pid"));
    if let Err(e) = rustix::process::prlimit(Some(p), Resource::Fsize, lim) {
        panic!("prlimit: {e}");
    }
}

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of the CPU
/// times in /proc/PID/stat.
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// Polls `f` every 50 ms until it is true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
