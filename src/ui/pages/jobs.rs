//! `/jobs`: the queue as a tree (a fan-out's children under their parent) with progress;
//! `/jobs/ID`: one job as `loops jobs get` reports it, its messages with their read
//! receipts, and the cancel, pause, resume and message forms.

use crate::ui::app::{blocking, either, App};
use crate::ui::view;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use loops_core::jobs::job::{Job, JobId, JobState, JobSummary};
use loops_core::jobs::report;
use loops_core::jobs::store::JobStore;
use maud::{html, Markup};
use std::collections::BTreeMap;

/// How many top-level jobs the list shows, newest first.
const ROOTS_LISTED: usize = 100;

pub(in crate::ui) async fn page(State(app): State<App>) -> Response {
    let ws = app.ws.clone();
    either(
        blocking(move || {
            let (all, errors) = JobStore::new(&ws).list();
            // Runs of loops are light jobs: the loop pages show them.
            let jobs: Vec<JobSummary> = all.into_iter().filter(|j| !j.kind.is_light()).collect();
            let mut children: BTreeMap<JobId, Vec<&JobSummary>> = BTreeMap::new();
            for j in &jobs {
                if let Some(p) = j.parent {
                    children.entry(p).or_default().push(j);
                }
            }
            let now = Utc::now();
            let roots: Vec<&JobSummary> = jobs.iter().rev().filter(|j| j.parent.is_none()).take(ROOTS_LISTED).collect();
            let body = html! {
                @for e in &errors { p.error { (e.to_string()) } }
                @if roots.is_empty() {
                    p.muted { "No jobs yet: " code { "loops agent run" } " or " code { "loops jobs submit" } " adds one." }
                }
                ul.tree { @for j in roots { (tree(j, &children, now, 0)) } }
            };
            view::page("Jobs", "jobs", body)
        })
        .await,
    )
}

fn tree(
    j: &JobSummary,
    children: &BTreeMap<JobId, Vec<&JobSummary>>,
    now: DateTime<Utc>,
    depth: usize,
) -> Markup {
    html! {
        li {
            a href={ "/jobs/" (j.id) } { "#" (j.id) } " "
            (view::tag(j.state.as_str())) " " (j.kind.as_str()) " " strong { (j.name) }
            span.muted { " · " (view::ago(j.updated, now))
                @if j.tokens.input + j.tokens.output > 0 { " · " (view::tokens(j.tokens.input + j.tokens.output)) " tokens" } }
            @if let Some(e) = &j.error { " " span.error { (e) } }
            // A fan-out can be deep; past a few levels the job's own page lists the rest.
            @if let Some(kids) = children.get(&j.id).filter(|_| depth < 4) {
                ul.tree { @for c in kids { (tree(c, children, now, depth + 1)) } }
            }
        }
    }
}

pub(in crate::ui) async fn job(State(app): State<App>, Path(id): Path<String>) -> Response {
    let ws = app.ws.clone();
    let csrf = app.csrf.clone();
    either(
        blocking(move || {
            let Ok(id) = id.parse::<JobId>() else {
                return view::error_page(
                    StatusCode::NOT_FOUND,
                    &format!("`{id}` is not a job number"),
                    None,
                );
            };
            match JobStore::new(&ws).get(id) {
                Ok(Some(j)) => job_page(&j, &csrf),
                Ok(None) => view::error_page(
                    StatusCode::NOT_FOUND,
                    &format!("there is no job #{id}"),
                    Some("/jobs lists the jobs".into()),
                ),
                Err(e) => view::error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
            }
        })
        .await,
    )
}

fn job_page(j: &Job, csrf: &str) -> Response {
    let now = Utc::now();
    let body = html! {
        p { (view::tag(j.shown_state(now).as_str())) " " (report::progress_line(j))
            @if let Some(p) = j.parent { " · child of " a href={ "/jobs/" (p) } { "#" (p) } } }
        (actions(j, csrf))
        pre { (report::details(j, now)) }
        @if !j.children.is_empty() {
            h2 { "Children" }
            p { @for c in &j.children { a href={ "/jobs/" (c) } { "#" (c) } " " } }
        }
        h2 { "Messages" }
        @if j.messages.is_empty() { p.muted { "None." } } @else {
            table {
                tr { th { "#" } th { "from" } th { "sent" } th { "read" } th { "message" } }
                @for m in &j.messages {
                    tr {
                        td { (m.seq) }
                        td { (m.from) }
                        td { (view::ago(m.at, now)) }
                        td { @match &m.read { Some(r) => { "turn " (r.turn) ", " (view::ago(r.at, now)) } None => { span.muted { "not yet" } } } }
                        td.mono { (m.body.to_string()) }
                    }
                }
            }
        }
    };
    view::page(&format!("Job #{} {}", j.id, j.name), "jobs", body)
}

fn actions(j: &Job, csrf: &str) -> Markup {
    let base = format!("/jobs/{}", j.id);
    let open = !j.state.is_terminal();
    html! {
        @if open {
            p {
                (view::button(&format!("{base}/cancel"), "cancel", csrf)) " "
                // A job held for the day's budget resumes as a paused one does.
                @if j.state == JobState::Paused || j.held.is_some() {
                    (view::button(&format!("{base}/resume"), "resume", csrf))
                } @else {
                    (view::button(&format!("{base}/pause"), "pause", csrf))
                }
            }
            form.stack method="post" action={ (base) "/message" } {
                (view::csrf_field(csrf))
                input type="text" name="message" placeholder="a message for its next turn" required;
                button type="submit" { "send" }
            }
        }
    }
}
