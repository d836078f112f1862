//! loops-core: the layers every part of loops stands on, each importing only those before it.
//!
//! - **base**: [`layout`] (every path under `.loops/`; it imports nothing), [`diag`]
//!   (diagnostics with file:line), [`duration`], [`clock`], [`schedule`] (when a loop
//!   fires), [`text`], [`fsutil`] (atomic writes, locks, process identity), [`secrets`],
//!   [`sys`] (the few system calls with no safe wrapper: the only `unsafe` code),
//!   [`usage`], [`tool_names`]; the configuration: [`workspace`] (loops.yaml), [`domain`]
//!   (a loop's config.yaml), [`providers`], [`channel_config`], [`mcp_config`], [`guard`]
//!   rules, [`net`] (`allowed_hosts`).
//! - **store**, what the runner keeps under `.loops/`: [`jobs`] (the queue), [`runs`]
//!   (run records), [`state`] (loop state), [`journal`], [`daemon_lock`], [`retention`].
//! - **effects**, what a run does to the world: [`exec`] (child processes), [`history`]
//!   and [`git_gate`] (commits beside a person's git), [`beneath`] (opening files beneath
//!   the workspace), [`handoff`] (the inbox), [`channels`] (delivery), [`snapshot`] (what a
//!   run changed), [`watcher`] (the file watcher).

// Every dependency is used (issue #17): one a change leaves behind is a warning here. Not
// in the unit-test build, which is handed the dev-dependencies of the integration tests.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod backoff;
pub mod beneath;
pub mod budget;
pub mod channel_config;
pub mod channels;
pub mod clock;
mod config_fields;
pub mod daemon_lock;
pub mod diag;
pub mod domain;
pub mod duration;
pub mod exec;
pub mod fsutil;
pub mod git_gate;
pub mod guard;
pub mod handoff;
pub mod history;
pub mod jobs;
pub mod journal;
pub mod known_hosts;
pub mod layout;
pub mod mcp_config;
pub mod net;
pub mod pricing;
pub mod providers;
pub mod remote;
pub mod remote_config;
pub mod request_options;
pub mod retention;
pub mod runs;
pub mod schedule;
pub mod secrets;
pub mod snapshot;
pub mod spend;
pub mod state;
pub mod sys;
pub mod text;
pub mod tool_names;
pub mod usage;
pub mod watcher;
/// The watcher's old name, kept one release for code written against it: `watch` read as
/// `tokio::sync::watch` in every file that used both.
#[doc(hidden)]
pub use watcher as watch;
pub mod workspace;
