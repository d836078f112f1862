//! The UI's only ways to change anything: each is a POST carrying the CSRF token, and
//! each calls the function the command line calls (`loops inbox tick|complete|reject|retry`,
//! `loops jobs cancel|pause|resume|message`), then sends the browser back to the page.

use super::app::{blocking, either, App};
use super::auth::check_csrf;
use super::pages::loops::operator_error;
use super::view;
use crate::operator;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::Utc;
use loops_core::handoff::ItemRef;
use loops_core::jobs::job::JobId;
use loops_core::jobs::queue::{self, QueueError, Sender};
use loops_core::jobs::store::JobStore;
use loops_core::workspace::Workspace;
use serde::Deserialize;

/// Every form's fields; each action reads the ones it needs.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Fields {
    csrf: Option<String>,
    item: Option<String>,
    all: Option<String>,
    summary: Option<String>,
    reason: Option<String>,
    message: Option<String>,
}

fn back(to: String) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn missing(what: &str) -> Response {
    view::error_page(
        StatusCode::BAD_REQUEST,
        &format!("the form has no {what}"),
        Some("fill it in and send it again".into()),
    )
}

pub(super) async fn tick(
    State(app): State<App>,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&app, f.csrf.as_deref()) {
        return *r;
    }
    let all = f.all.is_some();
    let which: Vec<ItemRef> = nonempty(&f.item).map(ItemRef::parse).into_iter().collect();
    if which.is_empty() && !all {
        return missing("item to tick");
    }
    handoff_action(&app, id, move |ws, id| {
        operator::tick_handoff(ws, id, &which, all).map(drop)
    })
    .await
}

pub(super) async fn complete(
    State(app): State<App>,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&app, f.csrf.as_deref()) {
        return *r;
    }
    let summary = nonempty(&f.summary).map(str::to_string);
    handoff_action(&app, id, move |ws, id| {
        operator::complete_handoff(ws, id, summary.as_deref(), Utc::now()).map(drop)
    })
    .await
}

pub(super) async fn reject(
    State(app): State<App>,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&app, f.csrf.as_deref()) {
        return *r;
    }
    let Some(reason) = nonempty(&f.reason).map(str::to_string) else {
        return missing("reason");
    };
    handoff_action(&app, id, move |ws, id| {
        operator::reject_handoff(ws, id, &reason, Utc::now()).map(drop)
    })
    .await
}

pub(super) async fn retry(
    State(app): State<App>,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&app, f.csrf.as_deref()) {
        return *r;
    }
    handoff_action(&app, id, |ws, id| operator::retry_handoff(ws, id).map(drop)).await
}

/// Does `op` to handoff `id` off the async threads (it moves files and commits), then
/// sends the browser back to the handoff's page, or shows why it was refused.
async fn handoff_action(
    app: &App,
    id: String,
    op: impl FnOnce(&Workspace, &str) -> Result<(), operator::OperatorError> + Send + 'static,
) -> Response {
    let ws = app.ws.clone();
    either(
        blocking(move || match op(&ws, &id) {
            Ok(()) => back(format!("/inbox/{id}")),
            Err(e) => operator_error(e),
        })
        .await,
    )
}

/// What a job action does, as the queue's own functions.
type JobOp =
    fn(&JobStore, JobId, chrono::DateTime<Utc>) -> Result<loops_core::jobs::job::Job, QueueError>;

async fn job_action(app: App, id: String, f: Fields, op: JobOp) -> Response {
    if let Err(r) = check_csrf(&app, f.csrf.as_deref()) {
        return *r;
    }
    let Ok(job) = id.parse::<JobId>() else {
        return view::error_page(
            StatusCode::NOT_FOUND,
            &format!("`{id}` is not a job number"),
            None,
        );
    };
    let ws = app.ws.clone();
    either(
        blocking(move || match op(&JobStore::new(&ws), job, Utc::now()) {
            Ok(_) => back(format!("/jobs/{job}")),
            Err(e) => queue_error(e),
        })
        .await,
    )
}

fn queue_error(e: QueueError) -> Response {
    let status = match e {
        QueueError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::CONFLICT,
    };
    view::error_page(status, &e.to_string(), e.help())
}

pub(super) async fn cancel(
    State(app): State<App>,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    job_action(app, id, f, queue::cancel).await
}

pub(super) async fn pause(
    State(app): State<App>,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    job_action(app, id, f, queue::pause).await
}

pub(super) async fn resume(
    State(app): State<App>,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    job_action(app, id, f, queue::resume).await
}

pub(super) async fn message(
    State(app): State<App>,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&app, f.csrf.as_deref()) {
        return *r;
    }
    let Some(text) = nonempty(&f.message).map(str::to_string) else {
        return missing("message");
    };
    let Ok(job) = id.parse::<JobId>() else {
        return view::error_page(
            StatusCode::NOT_FOUND,
            &format!("`{id}` is not a job number"),
            None,
        );
    };
    let ws = app.ws.clone();
    either(
        blocking(move || {
            let body = operator::job_message_body(&text);
            match queue::message(&JobStore::new(&ws), job, body, Sender::Operator, Utc::now()) {
                Ok(_) => back(format!("/jobs/{job}")),
                Err(e) => queue_error(e),
            }
        })
        .await,
    )
}
