//! loops-testutil: what the integration tests (`tests/it`) and the benches share, as a
//! library of its own (never published) rather than files included with `#[path]`.
//!
//! - [`workspace`]: temporary workspaces made by `loops init`, `loops` commands with a
//!   clean environment, git inspection, the main-session script of the inbox tests
//! - [`daemon`]: a `loops run` child process, killed when dropped
//! - [`fake_model`]: a fake model server, real HTTP on 127.0.0.1, in the Anthropic and
//!   OpenAI wire formats
//! - [`git_http`]: git's own smart-HTTP server (`git http-backend`) on 127.0.0.1 behind a
//!   token, the remote of the sync tests
//! - [`sshd`]: a real OpenSSH server on 127.0.0.1 (key auth, its own host key)
//! - [`bench`]: the benches' argument parsing, statistics and workspace skeletons
//! - [`process`]: the system calls tests make (signals, liveness, flock, rlimits, the
//!   effective uid, clock ticks) as safe functions over rustix
//! - [`pre_exec`]: the one thing that cannot be safe, a hook run between fork and exec,
//!   and the only `unsafe` code of the tests and benches
//!
//! The `loops` binary is not found here: cargo tells only the root package's test and
//! bench targets where it is (`env!("CARGO_BIN_EXE_loops")`), so they pass its path in.

// Every dependency is used (issue #17): one a change leaves behind is a warning here.
#![warn(unused_crate_dependencies)]

pub mod bench;
pub mod daemon;
pub mod fake_model;
pub mod git_http;
pub mod pre_exec;
pub mod process;
pub mod sshd;
pub mod workspace;

pub use daemon::DaemonProcess;
pub use process::Signal;
pub use workspace::TempWorkspace;
