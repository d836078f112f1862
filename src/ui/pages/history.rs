//! `/history`: `loops log` as a page — the runs git remembers, filtered by loop and
//! outcome, each linked to its diff.

use crate::ui::app::{blocking, either, App};
use crate::ui::view;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use maud::html;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(in crate::ui) struct Filter {
    #[serde(rename = "loop")]
    name: Option<String>,
    outcome: Option<String>,
    /// Text, not a number, so that `?limit=lots` gets this page's error, not the
    /// framework's plain-text rejection.
    limit: Option<String>,
}

/// At most this many commits are read for one page.
const MAX_LIMIT: usize = 1000;

pub(in crate::ui) async fn page(State(app): State<App>, Query(f): Query<Filter>) -> Response {
    let ws = app.ws.clone();
    either(
        blocking(move || {
            let name = f.name.filter(|n| !n.is_empty());
            let outcome = f.outcome.filter(|o| !o.is_empty());
            let limit = match f.limit.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
                None => 50,
                Some(l) => match l.parse::<u64>() {
                    Ok(n) => usize::try_from(n).unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT),
                    // More than any history holds: all of the most a page shows.
                    Err(_) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => MAX_LIMIT,
                    Err(_) => {
                        return view::error_page(
                            StatusCode::BAD_REQUEST,
                            &format!("`limit` is a number of commits, not `{l}`"),
                            Some(format!("e.g. /history?limit=100 (at most {MAX_LIMIT})")),
                        )
                    }
                },
            };
            // With an outcome filter more commits are read, so the page is not empty
            // because the newest fifty were all of another outcome.
            let read = if outcome.is_some() { MAX_LIMIT } else { limit };
            let entries = match loops_core::history::read_log(&ws.root, name.as_deref(), read) {
                Ok(e) => e,
                Err(e) => return view::error_page(StatusCode::BAD_REQUEST, &e.to_string(), e.help()),
            };
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|e| outcome.is_none() || e.outcome == outcome)
                .take(limit)
                .collect();
            let now = Utc::now();
            let body = html! {
                form.stack method="get" action="/history" {
                    input type="text" name="loop" placeholder="loop" value=(name.as_deref().unwrap_or(""));
                    input type="text" name="outcome" placeholder="outcome (acted, failed, completed…)" value=(outcome.as_deref().unwrap_or(""));
                    button type="submit" { "filter" }
                }
                @if entries.is_empty() { p.muted { "No runs in the git history match." } } @else {
                    table {
                        tr { th { "when" } th { "loop" } th { "outcome" } th { "summary" } th { "took" } th { "commit" } }
                        @for e in &entries {
                            tr {
                                td { (view::ago(e.time, now)) }
                                td { a href={ "/loops/" (e.loop_name) } { (e.loop_name) } }
                                td { (view::tag(e.outcome.as_deref().unwrap_or("-"))) }
                                td { @match &e.run {
                                    Some(r) => { a href={ "/loops/" (e.loop_name) "/runs/" (r) } { (e.summary) } }
                                    None => { (e.summary) }
                                } }
                                td { (e.duration_ms.map(view::duration_ms).unwrap_or_else(|| "-".into())) }
                                td { (view::commit_link(&e.commit)) }
                            }
                        }
                    }
                }
            };
            view::page("History", "runs", body)
        })
        .await,
    )
}
