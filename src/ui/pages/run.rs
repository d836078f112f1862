//! `/loops/NAME/runs/ID`: one run's record, its transcript with every tool call and
//! result folded, and the diff of its commit; `/commits/SHA`: a commit's diff alone.

use super::loops::{operator_error, read_shown};
use crate::operator;
use crate::ui::app::{blocking, either, App};
use crate::ui::view;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use loops_core::runs::{RunLog, RunRecord};
use loops_core::workspace::Workspace;
use maud::{html, Markup};
use std::path::Component;

/// How much of a diff a page shows.
const DIFF_SHOWN: usize = 512 * 1024;

pub(in crate::ui) async fn page(
    State(app): State<App>,
    Path((name, run)): Path<(String, String)>,
) -> Response {
    let ws = app.ws.clone();
    either(blocking(move || render(&ws, &name, &run)).await)
}

pub(in crate::ui) async fn commit(State(app): State<App>, Path(sha): Path<String>) -> Response {
    let ws = app.ws.clone();
    either(
        blocking(
            move || match loops_core::history::commit_diff(&ws.root, &sha, DIFF_SHOWN) {
                Ok(d) => view::page(&format!("Commit {}", short(&sha)), "none", diff_block(&d)),
                Err(e) => view::error_page(StatusCode::NOT_FOUND, &e.to_string(), e.help()),
            },
        )
        .await,
    )
}

fn short(sha: &str) -> String {
    sha.chars().take(10).collect()
}

fn render(ws: &Workspace, name: &str, run: &str) -> Response {
    if let Err(e) = operator::find_loop(ws, name) {
        return operator_error(e);
    }
    let log = RunLog::new(&ws.layout().runs_dir(), ws.settings.rotate_bytes);
    let Some(rec) = log.find(name, run) else {
        return view::error_page(
            StatusCode::NOT_FOUND,
            &format!("`{name}` has no run `{run}` in its current records"),
            Some(format!(
                "/loops/{name} lists its runs; older ones may have been pruned"
            )),
        );
    };
    let transcript = rec
        .transcript
        .as_deref()
        .and_then(|t| transcript_text(ws, t));
    let diff = rec
        .commit
        .as_deref()
        .map(|c| loops_core::history::commit_diff(&ws.root, c, DIFF_SHOWN));
    let body = html! {
        p { a href={ "/loops/" (name) } { "← " (name) } }
        (record_table(&rec))
        @if !rec.stdout_tail.is_empty() { h2 { "Output" } pre { (rec.stdout_tail) } }
        @if !rec.stderr_tail.is_empty() { h2 { "Errors" } pre { (rec.stderr_tail) } }
        h2 { "Transcript" }
        @match &transcript {
            Some(t) => { (transcript_view(t)) }
            None => { p.muted { "No transcript (command runs keep their output above)." } }
        }
        h2 { "Commit" }
        @match diff {
            Some(Ok(d)) => { (diff_block(&d)) }
            Some(Err(e)) => { p.error { (e.to_string()) } }
            None => { p.muted { "This run committed nothing." } }
        }
    };
    view::page(&format!("{name} · run {run}"), "runs", body)
}

/// The transcript a record names, only when the path stays in `.loops/runs/` (a record
/// is the runner's own, but a page reads no file a line of text could point elsewhere).
fn transcript_text(ws: &Workspace, rel: &str) -> Option<String> {
    let rel = std::path::Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let path = ws.root.join(rel);
    path.starts_with(ws.layout().runs_dir())
        .then(|| read_shown(&path))
        .flatten()
}

fn record_table(r: &RunRecord) -> Markup {
    let tokens = r.tokens.as_ref();
    html! {
        table {
            tr { th { "outcome" } td { (view::tag(r.outcome.as_str())) } }
            tr { th { "trigger" } td { (r.trigger) @if r.attempt > 1 { " (attempt " (r.attempt) ")" } } }
            tr { th { "started" } td { (view::when(r.started, Utc::now())) } }
            tr { th { "took" } td { (view::duration_ms(r.duration_ms)) } }
            @if let Some(m) = &r.model { tr { th { "model" } td { (m) @if let Some(p) = &r.provider { " (" (p) ")" } } } }
            @if let Some(t) = tokens {
                tr { th { "tokens" } td { (t.input) " in, " (t.output) " out, " (t.cache_read) " cache read, " (t.cache_write) " cache write" } }
            }
            @if let Some(n) = r.turns { tr { th { "turns" } td { (n) } } }
            @if let Some(c) = r.exit_code { tr { th { "exit code" } td { (c) } } }
            @if let Some(s) = &r.summary { tr { th { "summary" } td { (s) } } }
            @if let Some(e) = &r.error { tr { th { "error" } td.error { (e) } } }
            @if let Some(n) = &r.note { tr { th { "note" } td { (n) } } }
            @if let Some(c) = &r.commit { tr { th { "commit" } td { (view::commit_link(c)) } } }
            @if !r.changed.is_empty() { tr { th { "changed" } td.mono { (r.changed.join(", ")) } } }
            @if !r.refused_tools.is_empty() { tr { th { "refused tools" } td { (r.refused_tools.join(", ")) } } }
        }
    }
}

/// One part of a transcript: its heading (`## User`, `### Tool call …`) and its text.
struct Section<'a> {
    heading: &'a str,
    level: usize,
    text: String,
}

/// Splits at `## ` and `### ` headings outside fenced blocks (a tool result quoting
/// markdown stays in its section).
fn sections(t: &str) -> Vec<Section<'_>> {
    let mut out = vec![Section {
        heading: "",
        level: 1,
        text: String::new(),
    }];
    let mut fence: Option<usize> = None;
    for line in t.lines() {
        let ticks = line.chars().take_while(|c| *c == '`').count();
        if ticks >= 3 {
            fence = match fence {
                Some(n) if ticks >= n && line.trim_end().len() == ticks => None,
                None => Some(ticks),
                open => open,
            };
        }
        let level = if line.starts_with("### ") {
            3
        } else if line.starts_with("## ") {
            2
        } else {
            0
        };
        if fence.is_none() && ticks == 0 && level > 0 {
            out.push(Section {
                heading: line[level + 1..].trim(),
                level,
                text: String::new(),
            });
            continue;
        }
        if let Some(s) = out.last_mut() {
            s.text.push_str(line);
            s.text.push('\n');
        }
    }
    out
}

/// The transcript as text, with the system prompt and every tool call, result and error
/// folded in a `<details>` (the headings say which).
fn transcript_view(t: &str) -> Markup {
    html! {
        @for (i, s) in sections(t).iter().enumerate() {
            @let folded = s.level == 3 || s.heading.starts_with("System prompt");
            @if folded {
                details id={ "t" (i) } {
                    summary { (s.heading) }
                    pre { (s.text.trim()) }
                }
            } @else {
                @if !s.heading.is_empty() { h3 { (s.heading) } }
                @if !s.text.trim().is_empty() { pre { (s.text.trim()) } }
            }
        }
    }
}

/// A diff with its added, removed and hunk lines marked (escaped like every text).
fn diff_block(d: &str) -> Markup {
    html! {
        pre.diff {
            @for line in d.lines() {
                @let class = if line.starts_with("+++") || line.starts_with("---") { "" }
                    else if line.starts_with('+') { "add" }
                    else if line.starts_with('-') { "del" }
                    else if line.starts_with("@@") { "hunk" } else { "" };
                span class=(class) { (line) } "\n"
            }
        }
    }
}
