//! A `loops run` child process, as the daemon tests start it.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::process::{wait_until, Signal};

/// A `loops run` child process; SIGKILLed on drop if still running.
pub struct DaemonProcess {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl DaemonProcess {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("child").id() as i32
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (generously) until the daemon logs `needle`; panics with the log if it never does.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.log().contains(needle)),
            "the daemon never logged {needle:?}; log:\n{}",
            self.log()
        );
    }

    /// Sends `sig` to the daemon (not yet reaped, so the pid is still its own).
    pub fn signal(&self, sig: Signal) {
        crate::process::signal_child(self.child.as_ref().expect("child"), sig);
    }

    /// Waits for the daemon to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.as_mut()?.try_wait().expect("try_wait") {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
