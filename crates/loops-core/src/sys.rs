//! The operating-system calls that have no safe wrapper, and the process ids that cross
//! into the kernel as raw numbers: the crate's one `unsafe` module.
//!
//! Everything else in the crate is `#![deny(unsafe_code)]` (src/lib.rs) and reaches the
//! kernel through std or through `rustix`'s safe wrappers (flock, syncfs, memfd, prctl,
//! getuid, the terminal size, errno values). What is here is what neither offers safely:
//!
//! - a hook run in a child between fork and exec ([`kill_child_with_parent`]): std's
//!   `pre_exec` is `unsafe` by design, whatever the hook does;
//! - libgit2's process-wide options ([`git_bound_object_cache`], [`git_cached_memory`]):
//!   a C variadic function, reachable only through `libgit2_sys`;
//! - taking ownership of a descriptor inherited across exec ([`adopt_inherited_memfd`]):
//!   std and rustix both make `from_raw_fd` `unsafe`;
//! - `fcntl(F_SETLEASE)` ([`probe_read_lease`]) and setting a signal's disposition
//!   ([`raise_default_sigpipe`]), through `libc`: rustix wraps neither (its only `sigaction` is
//!   the `runtime` feature's raw `kernel_sigaction`, Linux-raw only and "not for general
//!   use"), and nix has no `F_SETLEASE` and an `unsafe` `signal` of its own, so a new crate
//!   would buy nothing. `libc` is used nowhere else in the crate.
//!
//! Each `unsafe` block says why it is sound. The module imports nothing from the crate,
//! so it can sit in whichever layer needs it.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

pub use rustix::process::Signal;
use rustix::process::{kill_process_group, test_kill_process, test_kill_process_group, Pid};

// ---------------------------------------------------------------------------------------
// Process ids, checked before the kernel sees them (all safe: rustix's kill(2) wrappers).

/// The pid of a process, if `pid` can name one (1 ..= i32::MAX).
fn process_pid(pid: u32) -> Option<Pid> {
    // `try_from` keeps the value non-negative, which `Pid::from_raw` asserts; 0 is None.
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// The id of a process group we may signal as a group: 2 ..= i32::MAX. `kill(-0)` would
/// be this process's own group and `kill(-1)` every process there is; a value above
/// i32::MAX, negated as a `pid_t`, would name one unrelated process. None of them is a
/// group this crate started, so none is signalled.
fn group_pid(pgid: u32) -> Option<Pid> {
    process_pid(pgid).filter(|p| p.as_raw_nonzero().get() > 1)
}

/// Sends `sig` to every process in group `pgid` (`kill(-pgid, sig)`); whether the kernel
/// took it (false: no such group, no permission, or an id that is no group: see above).
pub fn signal_group(pgid: u32, sig: Signal) -> bool {
    group_pid(pgid).is_some_and(|pg| kill_process_group(pg, sig).is_ok())
}

/// Whether any process is left in group `pgid` that this process may signal
/// (`kill(-pgid, 0)` succeeds).
pub fn group_exists(pgid: u32) -> bool {
    group_pid(pgid).is_some_and(|pg| test_kill_process_group(pg).is_ok())
}

/// Whether a process `pid` exists (`kill(pid, 0)` succeeds, or fails only for want of
/// permission: it is someone else's).
pub fn process_exists(pid: u32) -> bool {
    process_pid(pid).is_some_and(|p| match test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    })
}

// ---------------------------------------------------------------------------------------
// Between fork and exec.

/// Makes the child `cmd` spawns get SIGKILL when the thread that spawned it dies
/// (`prctl(PR_SET_PDEATHSIG, SIGKILL)` in the child, before exec).
#[cfg(target_os = "linux")]
pub fn kill_child_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child, where only async-signal-safe calls are
    // allowed: it makes one prctl system call through rustix's raw-syscall backend (no
    // allocation, no lock, no libc state), captures nothing, and touches only the child.
    // Its result is ignored, as a child without the death signal is still a working child.
    unsafe {
        cmd.pre_exec(|| {
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------------------
// libgit2's process-wide options.

/// Sets libgit2's object-cache limit (`GIT_OPT_SET_CACHE_MAX_SIZE`) to `bytes`,
/// initialising libgit2 first.
pub fn git_bound_object_cache(bytes: usize) {
    libgit2_sys::init();
    // SAFETY: libgit2 is initialised (above); GIT_OPT_SET_CACHE_MAX_SIZE reads exactly one
    // variadic argument, an ssize_t, which `isize` is on every target Rust supports.
    unsafe {
        libgit2_sys::git_libgit2_opts(
            libgit2_sys::GIT_OPT_SET_CACHE_MAX_SIZE as std::ffi::c_int,
            bytes as isize,
        );
    }
}

/// libgit2's object cache, process-wide: (bytes held now, the limit)
/// (`GIT_OPT_GET_CACHED_MEMORY`).
pub fn git_cached_memory() -> (isize, isize) {
    libgit2_sys::init();
    let (mut now, mut max): (isize, isize) = (0, 0);
    // SAFETY: libgit2 is initialised (above); GIT_OPT_GET_CACHED_MEMORY writes one ssize_t
    // through each of its two pointer arguments, both valid, aligned and live for the call.
    unsafe {
        libgit2_sys::git_libgit2_opts(
            libgit2_sys::GIT_OPT_GET_CACHED_MEMORY as std::ffi::c_int,
            &mut now as *mut isize,
            &mut max as *mut isize,
        );
    }
    (now, max)
}

// ---------------------------------------------------------------------------------------
// A descriptor handed over across exec.

/// Why [`adopt_inherited_memfd`] did not take a descriptor.
#[derive(Debug)]
pub enum AdoptError {
    /// Nothing is open under that number.
    NotOpen,
    /// It is open, but it is this (as `/proc/self/fd` names it), not the memfd asked for.
    Other(PathBuf),
    /// A descriptor was adopted already: this process takes only one.
    Again,
}

/// Takes ownership of descriptor `fd`, inherited from the image this process exec'd
/// from, provided `/proc/self/fd` names it a memfd called `name` (`/memfd:<name>…`).
/// Once per process: a second call is refused.
pub fn adopt_inherited_memfd(fd: RawFd, name: &str) -> Result<File, AdoptError> {
    static ADOPTED: AtomicBool = AtomicBool::new(false);
    if fd < 0 {
        return Err(AdoptError::NotOpen);
    }
    let target =
        std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|_| AdoptError::NotOpen)?;
    if !target
        .to_string_lossy()
        .starts_with(&format!("/memfd:{name}"))
    {
        return Err(AdoptError::Other(target));
    }
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(AdoptError::Again);
    }
    // SAFETY: an `OwnedFd` must be open and owned by nothing else. It is open: the kernel
    // just named it. Nothing else owns it: it is a memfd of that name, which the previous
    // image made without close-on-exec and handed over by number (src/secrets.rs); this
    // image has not made one (it makes one only to exec again) and adopts once (the flag
    // above), so no other `File`/`OwnedFd` in this process holds the number.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

// ---------------------------------------------------------------------------------------
// Through libc: what no safe wrapper covers.

/// Takes a read lease on `file` and gives it back at once (`fcntl(F_SETLEASE, F_RDLCK)`,
/// then `F_UNLCK`). `Ok` when the kernel granted it, that is, nobody has the file open
/// for writing; else its error (`EAGAIN`: somebody does).
pub fn probe_read_lease(file: &impl AsFd) -> io::Result<()> {
    let fd = file.as_fd().as_raw_fd();
    // SAFETY: `fd` is borrowed from an open descriptor that outlives both calls; F_SETLEASE
    // takes a plain int and touches no memory of ours.
    let r = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; gives the lease back before the caller can close the file.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    Ok(())
}

/// Ends the process by SIGPIPE with its default action (death, silently), as a Unix tool
/// ends when its reader has gone; the Rust runtime had set it to be ignored. Returns only
/// if the signal is blocked.
pub fn raise_default_sigpipe() {
    // SAFETY: signal(2) only changes SIGPIPE's disposition, which no Rust code relies on
    // past this point (the process is about to die of it); raise(3) sends it to this
    // thread. Neither reads or writes any memory of ours.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
}
