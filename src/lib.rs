//! loops: a file-system-first agent loop runner.
//!
//! A loop is a folder (`domains/<name>/config.yaml` + `prompt.md`); a run is a job; the
//! history is git. This crate is the top of three layers (docs/architecture.md): the
//! config, the `.loops/` store and the effects are in `loops_core`; the agent loop,
//! providers, tools and MCP client in `loops_agent`; here:
//!
//! - [`engine`]: everything that runs: the scheduler, a loop's run, a main-session wake,
//!   the job worker
//! - [`daemon`]: `loops run`, wiring the engine to the watcher and the clock
//! - [`operator`]: what a person does from outside the daemon (list, inbox, a run here)
//! - [`trigger`]: a run asked for by hand: submitted to the serving daemon, or run here
//! - [`mcp`]: `loops mcp`, the same operations and the job queue as MCP tools
//! - [`service`]: `loops service`, the daemon as a systemd user unit or launchd agent
//! - [`templates`]: the loops `loops new` makes
//! - [`ui`]: `loops ui`, a web view of the same, with the inbox's and the jobs' actions
//! - [`cli`]: the command line

// Every dependency is used (issue #17). Not in the unit-test build: it is handed the
// dev-dependencies of the integration tests and benches too, which it does not use.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod cli;
pub mod daemon;
pub mod engine;
pub mod mcp;
pub mod operator;
pub mod service;
pub mod templates;
pub mod trigger;
pub mod ui;
