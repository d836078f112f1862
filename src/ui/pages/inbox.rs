//! `/inbox`: the handoffs by stage (pending, active with what is left and how long it
//! waits, rejected with the reason, recently done); `/inbox/ID`: one handoff with its
//! checklist and the tick, complete and reject forms (and, when it is held, retry).

use super::loops::operator_error;
use crate::operator::{self, HandoffDetail, HandoffRow};
use crate::ui::app::{blocking, either, App};
use crate::ui::markdown;
use crate::ui::view;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use loops_core::handoff::{Handoff, Stage};
use maud::{html, Markup};

pub(in crate::ui) async fn page(State(app): State<App>) -> Response {
    let ws = app.ws.clone();
    either(
        blocking(move || {
            let now = Utc::now();
            let rows = operator::handoff_rows(&ws, now);
            let body = html! {
                h2 { "Wait times" }
                (crate::ui::charts::handoff_waits(&ws, now, 7))
                @for (stage, title) in [(Stage::Pending, "Pending"), (Stage::Active, "Active"), (Stage::Rejected, "Rejected"), (Stage::Done, "Done (most recent)")] {
                    h2 { (title) }
                    (stage_table(stage, &rows, now))
                }
            };
            view::page("Inbox", "inbox", body)
        })
        .await,
    )
}

fn stage_table(stage: Stage, rows: &[HandoffRow], now: DateTime<Utc>) -> Markup {
    let rows: Vec<&HandoffRow> = rows.iter().filter(|r| r.stage == stage).collect();
    html! {
        @if rows.is_empty() {
            p.muted { "None." }
        } @else {
            table {
                tr { th { "handoff" } th { "from" } th { "to" } th { "priority" } th { "since" } th { "detail" } }
                @for r in rows {
                    tr {
                        td { a href={ "/inbox/" (r.id) } { (r.title) } br; span.muted.mono { (r.id) } }
                        td { (r.from) }
                        td { (r.to) }
                        td { (view::tag(&r.priority)) }
                        td { @if let Some(s) = r.since { (view::ago(s, now)) } }
                        td {
                            (r.detail)
                            @if let Some(items) = r.extra.get("unticked").and_then(|v| v.as_array()) {
                                @if !items.is_empty() {
                                    ul { @for i in items { li { "☐ " (i.as_str().unwrap_or_default()) } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(in crate::ui) async fn handoff(State(app): State<App>, Path(id): Path<String>) -> Response {
    let ws = app.ws.clone();
    let csrf = app.csrf.clone();
    either(
        blocking(move || match HandoffDetail::load(&ws, &id) {
            Ok(d) => detail_page(&id, &d, &csrf),
            Err(e) => operator_error(e),
        })
        .await,
    )
}

fn detail_page(id: &str, d: &HandoffDetail, csrf: &str) -> Response {
    let open = matches!(d.stage, Stage::Pending | Stage::Active);
    let title = d
        .parsed
        .as_ref()
        .map(|h| h.title.clone())
        .unwrap_or_else(|_| id.to_string());
    let body = html! {
        p { (view::tag(&format!("{:?}", d.stage).to_lowercase())) " " span.mono { (d.rel.display().to_string()) } }
        @if let Some(r) = &d.reason { p.error { "Rejected: " (r) } }
        @if let Some(h) = &d.note.held { p.help { "Held: " (h) } }
        @if d.note.held.is_some() && d.stage == Stage::Active {
            form.stack method="post" action={ "/inbox/" (id) "/retry" } {
                (view::csrf_field(csrf))
                button type="submit" title="back to the inbox, its failed wakes forgotten, for the main session's next wake" { "hand it back to the main session" }
            }
        }
        @match &d.parsed {
            Ok(h) => { (handoff_view(id, h, open, csrf)) }
            Err(e) => { p.error { (e.to_string()) } }
        }
        @if open { (close_forms(id, csrf)) }
        details id="raw" {
            summary { "The file" }
            pre { (d.text().unwrap_or_else(|e| e.to_string())) }
        }
    };
    view::page(&title, "inbox", body)
}

fn handoff_view(id: &str, h: &Handoff, open: bool, csrf: &str) -> Markup {
    html! {
        table {
            tr { th { "from" } td { (h.author()) } }
            tr { th { "to" } td { (h.to) } }
            tr { th { "priority" } td { (h.priority.as_str()) } }
            @if let Some(c) = h.created { tr { th { "created" } td { (view::when(c, Utc::now())) } } }
            @if let Some(d) = &h.draft { tr { th { "draft" } td.mono { (d) } } }
            @if let Some(f) = &h.flagged { tr { th { "flagged" } td.error { (f) } } }
        }
        @if !h.checklist.is_empty() {
            h2 { "Checklist" }
            ul.checklist {
                @for (n, item) in h.checklist.iter().enumerate() {
                    li {
                        (if item.checked { "☑ " } else { "☐ " }) (item.text)
                        @if item.optional { span.muted { " (optional)" } }
                        @if open && !item.checked {
                            " "
                            form.inline method="post" action={ "/inbox/" (id) "/tick" } {
                                (view::csrf_field(csrf))
                                input type="hidden" name="item" value=(n + 1);
                                button type="submit" { "tick" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Body" }
        div.markdown { (markdown::render(&h.body)) }
    }
}

fn close_forms(id: &str, csrf: &str) -> Markup {
    html! {
        h2 { "Close it" }
        form.stack method="post" action={ "/inbox/" (id) "/complete" } {
            (view::csrf_field(csrf))
            input type="text" name="summary" placeholder="summary (optional)";
            button type="submit" { "complete" }
        }
        form.stack method="post" action={ "/inbox/" (id) "/reject" } {
            (view::csrf_field(csrf))
            input type="text" name="reason" placeholder="why it is rejected" required;
            button type="submit" { "reject" }
        }
    }
}
