//! `/`: the daemon, the loops (failing and paused first), the inbox's counts, what runs
//! now, and the pictures of the last day and week.

use crate::operator::{self, LoopRow};
use crate::ui::app::{blocking, either, App};
use crate::ui::charts;
use crate::ui::view;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use loops_core::daemon_lock::LockInfo;
use loops_core::handoff::Stage;
use loops_core::jobs::job::{JobState, JobSummary};
use loops_core::jobs::store::JobStore;
use loops_core::workspace::Workspace;
use maud::{html, Markup};
use std::sync::Arc;

pub(in crate::ui) async fn page(State(app): State<App>) -> Response {
    let ws = app.ws.clone();
    either(blocking(move || render(&ws, Utc::now())).await)
}

fn render(ws: &Arc<Workspace>, now: DateTime<Utc>) -> Response {
    let daemon = loops_core::daemon_lock::daemon_alive(ws);
    let mut loops = operator::loop_rows(ws, now);
    loops.sort_by_key(|l| (attention(l), l.name.clone()));
    let handoffs = operator::handoff_rows(ws, now);
    let count = |s: Stage| handoffs.iter().filter(|h| h.stage == s).count();
    let (jobs, _) = JobStore::new(ws).list();
    let running: Vec<&JobSummary> = jobs
        .iter()
        .filter(|j| j.state == JobState::Active)
        .collect();
    let body = html! {
        div.cards {
            (daemon_card(daemon.as_ref(), now))
            div.card { "pending" b { (count(Stage::Pending)) } a href="/inbox" { "inbox" } }
            div.card { "active" b { (count(Stage::Active)) } }
            div.card { "rejected" b { (count(Stage::Rejected)) } }
            div.card { "running now" b { (running.len()) } a href="/jobs" { "jobs" } }
        }
        h2 { "Loops" }
        (loops_table(&loops, now))
        h2 { "Running" }
        (running_table(&running, now))
        h2 { "Runs, last 24 hours" }
        (charts::timeline(ws, &names(&loops), now, chrono::Duration::hours(24)))
        h2 { "Runs, last 7 days" }
        (charts::timeline(ws, &names(&loops), now, chrono::Duration::days(7)))
        h2 { "Tokens per loop per day" }
        (charts::tokens_per_day(ws, &names(&loops), now, 7))
    };
    view::page("Overview", "all", body)
}

fn names(loops: &[LoopRow]) -> Vec<String> {
    loops.iter().map(|l| l.name.clone()).collect()
}

/// Broken, failing and paused loops come first: they are what a person must see.
fn attention(l: &LoopRow) -> u8 {
    if !l.errors.is_empty() || l.status.starts_with("broken") {
        0
    } else if l.consecutive_failures > 0 || l.status.starts_with("failing") {
        1
    } else if l.paused.is_some() {
        2
    } else {
        3
    }
}

fn daemon_card(d: Option<&LockInfo>, now: DateTime<Utc>) -> Markup {
    html! {
        div.card {
            "daemon"
            @match d {
                Some(d) => {
                    b { (view::tag("up")) }
                    span.muted { "pid " (d.pid) ", up " (view::span_secs((now - d.started).num_seconds().max(0) as u64)) }
                }
                None => {
                    b { (view::tag("down")) }
                    span.muted { "start it with " code { "loops run" } }
                }
            }
        }
    }
}

fn loops_table(loops: &[LoopRow], now: DateTime<Utc>) -> Markup {
    html! {
        @if loops.is_empty() {
            p.muted { "No loops yet: " code { "loops new NAME" } " makes one." }
        } @else {
            table {
                tr { th { "loop" } th { "status" } th { "schedule" } th { "last run" } th { "next run" } }
                @for l in loops {
                    tr {
                        td { a href={ "/loops/" (l.name) } { (l.name) }
                             @if let Some(d) = &l.description { br; span.muted { (d) } } }
                        td { (view::tag(&l.status)) }
                        td { (l.schedule) }
                        td { @match &l.last {
                            Some(r) => { a href={ "/loops/" (l.name) "/runs/" (r.run_id) } { (view::tag(&r.outcome)) } " " (view::ago(r.finished, now)) }
                            None => { span.muted { "never" } }
                        } }
                        td { @match l.next {
                            Some(n) => { (view::when(n, now)) }
                            None => { span.muted { "-" } }
                        } }
                    }
                }
            }
        }
    }
}

pub(in crate::ui) fn running_table(running: &[&JobSummary], now: DateTime<Utc>) -> Markup {
    html! {
        @if running.is_empty() {
            p.muted { "Nothing runs now." }
        } @else {
            table {
                tr { th { "job" } th { "kind" } th { "name" } th { "for" } }
                @for j in running {
                    tr {
                        td { a href={ "/jobs/" (j.id) } { "#" (j.id) } }
                        td { (j.kind.as_str()) }
                        td { (j.name) }
                        td { @if let Some(s) = j.started { (view::ago(s, now)) } }
                    }
                }
            }
        }
    }
}
