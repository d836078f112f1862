//! `/deliveries`: every message to a channel and what became of it; blocked posts (the
//! never-share guard) and failed ones first. The text itself is never stored, so never
//! shown: only its size and the rule or error.

use crate::ui::app::{blocking, either, App};
use crate::ui::view;
use axum::extract::State;
use axum::response::Response;
use chrono::Utc;
use loops_core::channels::{list_records, DeliveryRecord, DeliveryStatus};
use maud::html;

/// How many deliveries the page lists.
const LISTED: usize = 200;

pub(in crate::ui) async fn page(State(app): State<App>) -> Response {
    let ws = app.ws.clone();
    either(
        blocking(move || {
            let now = Utc::now();
            let all = list_records(&ws);
            let bad = |r: &&DeliveryRecord| {
                matches!(r.status, DeliveryStatus::Blocked | DeliveryStatus::DeliveryFailed)
            };
            let blocked: Vec<&DeliveryRecord> = all.iter().filter(bad).take(LISTED).collect();
            let rest: Vec<&DeliveryRecord> = all.iter().take(LISTED).collect();
            let table = |rows: &[&DeliveryRecord]| html! {
                @if rows.is_empty() { p.muted { "None." } } @else {
                    table {
                        tr { th { "when" } th { "channel" } th { "status" } th { "loop" } th { "bytes" } th { "why" } }
                        @for r in rows {
                            tr {
                                td { (view::ago(r.updated, now)) }
                                td { (r.channel) }
                                td { (view::tag(r.status.as_str())) }
                                td { a href={ "/loops/" (r.loop_name) "/runs/" (r.run) } { (r.loop_name) } }
                                td { (r.bytes) }
                                td { @match r.status {
                                    DeliveryStatus::Blocked => { "rule " (r.rule.as_deref().unwrap_or("?")) }
                                    _ => { (r.error.as_deref().unwrap_or("")) }
                                } }
                            }
                        }
                    }
                }
            };
            let body = html! {
                h2 { "Blocked and failed" }
                (table(&blocked))
                h2 { "All, newest first" }
                (table(&rest))
            };
            view::page("Deliveries", "runs", body)
        })
        .await,
    )
}
