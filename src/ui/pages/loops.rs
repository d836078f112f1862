//! `/loops/NAME`: a loop's files as they are (config.yaml, prompt.md), its state.md
//! rendered, and the timeline of its runs with what each cost and committed.

use super::{records, run_tokens};
use crate::operator::{self, OperatorError};
use crate::ui::app::{blocking, either, App};
use crate::ui::charts;
use crate::ui::markdown;
use crate::ui::view;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use loops_core::runs::RunRecord;
use loops_core::workspace::Workspace;
use maud::{html, Markup};

/// How much of a file a page shows: a loop's files are small; a huge one is cut.
pub(in crate::ui) const FILE_SHOWN: u64 = 256 * 1024;

/// How many runs the loop's table lists.
const RUNS_LISTED: usize = 100;

pub(in crate::ui) async fn page(State(app): State<App>, Path(name): Path<String>) -> Response {
    let ws = app.ws.clone();
    either(blocking(move || render(&ws, &name, Utc::now())).await)
}

/// An operator error as a page: a missing loop or handoff is a 404, the rest a 400.
pub(in crate::ui) fn operator_error(e: OperatorError) -> Response {
    let status = match e {
        OperatorError::NoLoop { .. } | OperatorError::NoHandoff { .. } => StatusCode::NOT_FOUND,
        OperatorError::HandoffClosed { .. }
        | OperatorError::Unticked { .. }
        | OperatorError::NotHeld { .. } => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    view::error_page(status, &e.to_string(), e.help())
}

/// The text of a file, cut at [`FILE_SHOWN`]; None when it is not there.
pub(in crate::ui) fn read_shown(path: &std::path::Path) -> Option<String> {
    let (mut text, size) = loops_core::fsutil::read_prefix(path, FILE_SHOWN).ok()?;
    if size > FILE_SHOWN {
        text.push_str(&format!(
            "\n[… cut: {size} bytes, the first {FILE_SHOWN} shown]\n"
        ));
    }
    Some(text)
}

fn render(ws: &Workspace, name: &str, now: DateTime<Utc>) -> Response {
    let entry = match operator::find_loop(ws, name) {
        Ok(e) => e,
        Err(e) => return operator_error(e),
    };
    let dir = ws.domains_dir().join(&entry.name);
    let row = operator::loop_rows(ws, now)
        .into_iter()
        .find(|r| r.name == entry.name);
    let mut runs = records(ws, &entry.name, RUNS_LISTED);
    runs.reverse();
    let state = read_shown(&dir.join("state.md"));
    let body = html! {
        @if let Some(r) = &row {
            p { (view::tag(&r.status)) " " (r.schedule)
                @if let Some(n) = r.next { " · next " (view::when(n, now)) } }
            @if let Some(d) = &r.description { p { (d) } }
            @for e in &r.errors { p.error { (e.to_string()) } }
        }
        h2 { "Runs, last 7 days" }
        (charts::timeline(ws, std::slice::from_ref(&entry.name), now, chrono::Duration::days(7)))
        h2 { "Runs" }
        (runs_table(&entry.name, &runs, now))
        h2 { "state.md" }
        @match &state {
            Some(s) => { div.markdown { (markdown::render(s)) } }
            None => { p.muted { "No state.md yet." } }
        }
        h2 { "Files" }
        (view::file_block("config.yaml", read_shown(&dir.join("config.yaml")).as_deref()))
        (view::file_block("prompt.md", read_shown(&dir.join("prompt.md")).as_deref()))
    };
    view::page(&entry.name, "runs", body)
}

fn runs_table(name: &str, runs: &[RunRecord], now: DateTime<Utc>) -> Markup {
    html! {
        @if runs.is_empty() {
            p.muted { "No runs yet: " code { "loops trigger " (name) } " runs it now." }
        } @else {
            table {
                tr { th { "started" } th { "outcome" } th { "trigger" } th { "took" } th { "tokens" } th { "commit" } th { "summary" } }
                @for r in runs {
                    tr {
                        td { a href={ "/loops/" (name) "/runs/" (r.run_id) } { (view::ago(r.started, now)) } }
                        td { (view::tag(r.outcome.as_str())) }
                        td { (r.trigger) }
                        td { (view::duration_ms(r.duration_ms)) }
                        td { @match run_tokens(r) { 0 => { "-" } n => { (view::tokens(n)) } } }
                        td { @match &r.commit { Some(c) => { (view::commit_link(c)) } None => { "-" } } }
                        td { (r.summary.as_deref().or(r.error.as_deref()).unwrap_or("")) }
                    }
                }
            }
        }
    }
}
