//! Attacks: a prompt-injected model, a hostile handoff, a hostile MCP server or web page,
//! each tried against the real daemon with the scripted model over HTTP on 127.0.0.1. Every
//! test asserts both that the attack failed and what the person sees (the rejection note,
//! the refusal in the transcript, the log line). See docs/security.md.

mod guard;
mod net;
mod paths;
mod secrets;
mod spend;

use loops_testutil::fake_model::{FakeModel, Recorded};
use serde_json::Value;

/// The tool results the model was sent in request `r` (after the calls of the reply
/// before it), in order: (is_error, text).
fn results(r: &Recorded) -> Vec<(bool, String)> {
    let v = r.json();
    let last = v["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    last["content"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| {
            let text = match &b["content"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (b["is_error"] == true, text)
        })
        .collect()
}

/// What the model was told after the calls of its first reply.
fn first_results(model: &FakeModel) -> Vec<(bool, String)> {
    let reqs = model.requests();
    assert!(reqs.len() >= 2, "the model was asked again after its calls");
    results(&reqs[1])
}
