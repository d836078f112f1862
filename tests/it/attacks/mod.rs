//! Attacks: a prompt-injected model, a hostile handoff, a hostile MCP server or web page,
//! each tried against the real daemon with the scripted model over HTTP on 127.0.0.1. Every
//! test asserts both that the attack failed and what the person sees (the rejection note,
//! the refusal in the transcript, the log line). See docs/security.md.

mod guard;
mod net;
mod paths;
mod secrets;
