//! loops-agent: prompt loops' agent loop, the providers it talks to, the tools it offers
//! and the MCP servers it reaches. Stands on `loops_core`; never imports the engine: what a
//! tool does to the world goes through the effects it is handed (the committer, the inbox,
//! the poster).
//!
//! - [`model`]: the conversation in the runner's own terms
//! - [`provider`], [`anthropic`], [`openai`]: HTTP providers, their wire formats, retries
//! - [`sandbox`]: which paths a tool may read or write
//! - [`files`]: the file tools (read, list, search, write, edit, append)
//! - [`tools`]: the tool kit a run offers, and the other tools
//! - [`context`]: the prompt, laid out stable-first
//! - [`transcript`]: the record of a run, `.loops/runs/<loop>/<run>.md`
//! - [`agent_loop`]: the agent loop itself
//! - [`session`]: one agent session, set up the same way for a prompt loop, a main-session
//!   wake and an agent job
//! - [`mcp_client`]: the MCP servers of loops.yaml `mcp_servers:`

// Every dependency is used (issue #17): one a change leaves behind is a warning here.
#![warn(unused_crate_dependencies)]

pub mod agent_loop;
pub mod anthropic;
pub mod context;
pub mod executables;
pub mod files;
pub(crate) mod glob;
pub mod mcp_client;
pub mod model;
pub mod openai;
pub mod provider;
pub mod request_options;
/// The agent loop's old name, kept one release for code written against it: `run` read as
/// `loops_core::runs`, the run records.
#[doc(hidden)]
pub use agent_loop as run;
pub mod sandbox;
pub mod session;
pub mod sse;
pub mod tools;
pub mod transcript;

use std::path::PathBuf;

/// A tool that worked: the text the model gets back, and the files it wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolOk {
    pub text: String,
    /// Absolute paths of files the tool created, changed or removed.
    pub wrote: Vec<PathBuf>,
}

impl ToolOk {
    pub fn text(text: impl Into<String>) -> Self {
        ToolOk {
            text: text.into(),
            wrote: Vec::new(),
        }
    }
}

/// A tool that failed. The message goes back to the model as the tool's result (it
/// never ends the run), so it says what was wrong and what would work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    pub message: String,
}

impl ToolError {
    pub fn new(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
        }
    }
}

pub type ToolResult = Result<ToolOk, ToolError>;
