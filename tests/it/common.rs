//! Shared helpers: the temporary workspaces, daemon helper and git inspection of
//! `loops_testutil`, bound to the `loops` binary cargo built for this test target.
//!
//! The binary's path is known only here: cargo sets `CARGO_BIN_EXE_loops` when it compiles
//! the root package's test targets, not its dependencies, so loops-testutil takes the path
//! and this module passes it in, keeping `TempWorkspace::new()` and `loops_cmd(cwd)` as the
//! tests call them.
#![allow(dead_code)]

use std::ops::Deref;
use std::path::{Path, PathBuf};

pub use loops_testutil::process::{is_zombie, pid_alive, wait_until};
pub use loops_testutil::workspace::{
    drop_handoff, git, git_commit_all, git_trailers, main_script, main_seen,
};
pub use loops_testutil::DaemonProcess;

/// The path of the built `loops` binary.
pub fn loops_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loops"))
}

/// A temporary workspace created by `loops init` with this target's `loops`; everything
/// else is [`loops_testutil::TempWorkspace`]'s.
pub struct TempWorkspace(loops_testutil::TempWorkspace);

impl TempWorkspace {
    pub fn new() -> Self {
        TempWorkspace(loops_testutil::TempWorkspace::init(loops_bin()))
    }
}

impl Deref for TempWorkspace {
    type Target = loops_testutil::TempWorkspace;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// `loops` with a clean, predictable environment, run in `cwd`.
pub fn loops_cmd(cwd: &Path) -> assert_cmd::Command {
    loops_testutil::workspace::loops_cmd(&loops_bin(), cwd)
}

/// A std `Command` for `loops` with the same clean environment as [`loops_cmd`]
/// (for processes that run in the background: daemons, parallel triggers).
pub fn loops_std_cmd(cwd: &Path) -> std::process::Command {
    loops_testutil::workspace::loops_std_cmd(&loops_bin(), cwd)
}

/// The Python the MCP tests run (tests/mcp_client/drive.py, the Python test servers):
/// `target/py-venv/bin/python`, the virtual environment .ci/run makes with the versions
/// pinned in tests/mcp_client/requirements.txt, so what the machine has installed globally
/// does not decide what the tests run against. `LOOPS_TEST_PYTHON` names another (to try
/// another SDK version). Panics with what to do when neither is there: a skipped MCP test
/// would hide a broken server.
pub fn test_python() -> PathBuf {
    if let Some(p) = std::env::var_os("LOOPS_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    // target/debug/loops -> target/
    let bin = loops_bin();
    let target = bin
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let python = target.join("py-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: the MCP tests run in a virtual environment of their own with the pinned MCP Python SDK. \
         Run .ci/run (it makes it), or: python3 -m venv {venv} && {venv}/bin/python -m pip install -r tests/mcp_client/requirements.txt \
         (or set LOOPS_TEST_PYTHON to a python that has the `mcp` package)",
        python.display(),
        venv = target.join("py-venv").display(),
    );
    python
}

/// What a `loops` command did: its exit code, its output as text, and how long it took.
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

impl Out {
    /// Runs `cmd` to its end.
    pub fn of(cmd: &mut assert_cmd::Command) -> Out {
        let t0 = std::time::Instant::now();
        let out = cmd.output().expect("run loops");
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: t0.elapsed(),
        }
    }

    /// Everything it said, for an assertion's message.
    pub fn all(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The next UTC midnight: when the runner lifts what a daily budget held.
pub fn next_utc_midnight() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    now.date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        + chrono::Duration::days(1)
}
