//! Limits set in a child between fork and exec: the one place the tests and benches need
//! `unsafe`, because [`CommandExt::pre_exec`] is an unsafe function.
//!
//! Why it is sound: `pre_exec` is unsafe because the closure runs in the forked child,
//! where only async-signal-safe calls are allowed (another thread of the parent may have
//! held a lock, the allocator's among them, at the moment of the fork). The closure below
//! allocates nothing, takes no lock and touches no memory shared with the parent: it
//! makes two system calls, signal(2) through libc and setrlimit(2) through rustix (a raw
//! system call on Linux), both async-signal-safe, and returns an `io::Error` built from
//! an errno value (no allocation). `libc::signal` itself is unsafe only because a handler
//! function could be installed; `SIG_IGN` is no function, so nothing runs later either.
//! rustix has no sigaction outside its runtime internals, hence libc for that one call.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{Resource, Rlimit};

/// Makes the child `cmd` starts unable to grow any file past `bytes` (`RLIMIT_FSIZE`,
/// the hard limit left unlimited), with `SIGXFSZ` ignored: a write past the limit is cut
/// short, then refused with EFBIG, as on a full disk (which raises no signal). Both are
/// inherited across exec, so the program `cmd` runs starts with them.
pub fn limit_file_size(cmd: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: see the module documentation: only async-signal-safe calls, no allocation,
    // nothing shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            rustix::process::setrlimit(
                Resource::Fsize,
                Rlimit {
                    current: Some(bytes),
                    maximum: None,
                },
            )?;
            Ok(())
        })
    }
}
