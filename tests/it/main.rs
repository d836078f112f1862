//! The one integration-test binary: every area is a module, sharing the helpers in `common`.

mod agent;
mod attacks;
mod channels;
mod cli;
mod common;
mod config;
mod daemon;
mod exec;
mod fake_model;
mod handoff;
mod history;
mod inbox;
mod inbox_git;
mod jobs;
mod limits;
mod mcp;
mod mcp_tools;
mod progress;
mod provider;
mod retention;
mod sandbox;
mod schedule;
mod service;
mod soak;
mod status;
