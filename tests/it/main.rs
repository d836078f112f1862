//! The one integration-test binary: every area is a module, sharing the helpers in `common`.

// `pub` in a test binary reaches nothing outside it. The system calls tests make (signals,
// flock, rlimits) are safe functions of loops_testutil.
#![allow(unreachable_pub)]

mod agent;
mod attacks;
mod budget;
mod channels;
mod cli;
mod common;
mod config;
mod daemon;
mod exec;
mod handoff;
mod history;
mod inbox;
mod inbox_git;
mod job_engine;
mod jobs;
mod limits;
mod mcp;
mod mcp_tools;
mod one_engine;
mod own_changes;
mod progress;
mod provider;
mod pull_race;
mod reload;
mod remote;
mod request_options;
mod retention;
mod run_reports;
mod sandbox;
mod schedule;
mod service;
mod soak;
mod status;
mod two_writers;
mod ui;
mod wire;
