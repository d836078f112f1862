//! loops: a file-system-first agent loop runner.
//!
//! A loop is a folder (`domains/<name>/config.yaml` + `prompt.md`); a run is a job; the
//! history is git. The modules are named after the design's nouns:
//!
//! - [`agent`]: prompt loops: the agent loop, providers, tools
//! - [`workspace`]: finding the workspace and reading loops.yaml
//! - [`domain`]: discovering and validating loop folders
//! - [`schedule`] and [`scheduler`]: when each loop runs, exactly once per slot
//! - [`jobs`] and [`exec`]: running one loop, its process group, its output
//! - [`history`]: the git committer and `loops log`
//! - [`beneath`]: opening files beneath the workspace root with the kernel's help
//! - [`runs`] and [`state`]: what the runner records on disk under `.loops/`
//! - [`watch`] and [`daemon`]: `loops run`; [`journal`]: the daemon's own record of its life
//! - [`channels`] and [`guard`]: delivering messages, and what may never be shared
//! - [`net`]: the network wall of `http_get` (`allowed_hosts`: hosts, ports, addresses)
//! - [`operator`]: what a person does from outside the daemon (list, trigger, inbox)
//! - [`mcp`]: `loops mcp`, the same operations and the job queue as MCP tools
//! - [`secrets`]: the environment handed over at start, and nothing of it left for children
//! - [`service`]: `loops service`, the daemon as a systemd user unit or launchd agent
//! - [`cli`]: the command line
//! - [`sys`]: the few system calls with no safe wrapper: the crate's only `unsafe` code

#![deny(unsafe_code)]

pub mod agent;
pub mod beneath;
pub mod channel_config;
pub mod channels;
pub mod cli;
pub mod clock;
pub mod providers;
pub mod daemon;
pub mod daemon_lock;
pub mod diag;
pub mod domain;
pub mod engine;
pub mod duration;
pub mod exec;
pub mod fsutil;
pub mod git_gate;
pub mod guard;
pub mod handoff;
pub mod history;
pub mod jobs;
pub mod journal;
pub mod layout;
pub mod mcp;
pub mod mcp_config;
pub mod net;
pub mod operator;
pub mod retention;
pub mod runs;
pub mod schedule;
pub mod secrets;
pub mod service;
pub mod snapshot;
pub mod state;
pub mod sys;
pub mod templates;
pub mod usage;
pub mod text;
pub mod tool_names;
pub mod watch;
pub mod workspace;
