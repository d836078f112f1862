//! `loops ui`: a web view of the workspace, for the person who would rather look than
//! read — what ran when, what it cost in tokens, what waits in the inbox, what the agent
//! said — with a few safe actions (complete, reject, tick and retry a handoff; cancel, pause,
//! resume and message a job). Every action calls the same operator and store functions
//! as the command line, so the UI adds no second way to change state.
//!
//! Server-rendered HTML (maud escapes every value), one small CSS and one small JS file
//! embedded in the binary, no CDN. Every request needs the token (auth.rs), every action
//! is a POST with the CSRF token, every response carries a strict Content-Security-Policy.
//! docs/ui.md is the person's guide.

mod actions;
mod app;
mod assets;
mod auth;
mod charts;
mod error;
mod live;
mod markdown;
mod pages;
mod view;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use loops_core::workspace::Workspace;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use app::App;
pub use auth::{load_or_create_token, Token};
pub use error::UiError;

/// How the server is asked to run.
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The token every request must carry; None serves without one (loopback only).
    pub token: Option<String>,
}

/// Refuses a listen address a stranger could reach when no token guards it.
pub fn check_listen(listen: SocketAddr, token: bool) -> Result<(), UiError> {
    if !token && !listen.ip().is_loopback() {
        return Err(UiError::OpenWithoutToken(listen));
    }
    Ok(())
}

/// Binds `opts.listen`, then serves until `stop` resolves. `ready` is called with the
/// address bound (port 0 picks one), before the first request is taken.
pub async fn serve(
    ws: Arc<Workspace>,
    opts: ServeOptions,
    ready: impl FnOnce(SocketAddr),
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), UiError> {
    check_listen(opts.listen, opts.token.is_some())?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| UiError::Bind {
            addr: opts.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| UiError::Bind {
        addr: opts.listen,
        source,
    })?;
    let app = App {
        live: live::Live::start(&ws),
        csrf: auth::random_hex(16).map_err(UiError::Random)?.into(),
        token: opts.token.map(Into::into),
        ws,
    };
    ready(bound);
    axum::serve(listener, router(app))
        .with_graceful_shutdown(stop)
        .await
        .map_err(UiError::Serve)
}

/// The UI server a daemon runs (loops.yaml `ui:`); dropping it stops the server.
pub struct DaemonUi {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DaemonUi {
    /// Stops the server and waits until it has let go of its listener.
    async fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for DaemonUi {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The UI a daemon's loops.yaml asks for, following its edits as the rest of loops.yaml
/// is followed: `ui:` added starts it, its address changed moves it, removed stops it.
/// `live` carries each settings the daemon took (a rejected edit never arrives).
pub fn follow_daemon_settings(mut live: tokio::sync::watch::Receiver<Arc<Workspace>>) -> DaemonUi {
    let task = tokio::spawn(async move {
        let mut serving: Option<(loops_core::workspace::UiSettings, DaemonUi)> = None;
        loop {
            let ws = live.borrow_and_update().clone();
            let wanted = ws.settings.ui.clone();
            if serving.as_ref().map(|(u, _)| u) != wanted.as_ref() {
                if let Some((old, ui)) = serving.take() {
                    // Aborted and awaited: its port is free before another may take it.
                    ui.stop().await;
                    tracing::info!(
                        "web UI on {} stopped (loops.yaml `ui:` changed)",
                        old.listen
                    );
                }
                serving = wanted.and_then(|u| start_with_daemon(ws).map(|ui| (u, ui)));
            }
            if live.changed().await.is_err() {
                break;
            }
        }
    });
    DaemonUi { task: Some(task) }
}

/// Starts the UI a daemon's loops.yaml asks for, always with the token. A UI that cannot
/// start (the port is taken) is logged and the daemon goes on: the loops matter more.
pub fn start_with_daemon(ws: Arc<Workspace>) -> Option<DaemonUi> {
    let listen = ws.settings.ui.as_ref()?.listen;
    let token = match load_or_create_token(&ws) {
        Ok(t) => t.secret,
        Err(e) => {
            tracing::error!("the web UI does not start: {e}");
            return None;
        }
    };
    let task = tokio::spawn(async move {
        let opts = ServeOptions {
            listen,
            token: Some(token),
        };
        let ready =
            |addr| tracing::info!("web UI on http://{addr}/ (`loops ui --token` prints its token)");
        if let Err(e) = serve(ws, opts, ready, std::future::pending()).await {
            tracing::error!(
                "the web UI stopped: {e}{}",
                e.help().map(|h| format!(" ({h})")).unwrap_or_default()
            );
        }
    });
    Some(DaemonUi { task: Some(task) })
}

fn router(app: App) -> Router {
    let pages = Router::new()
        .route("/", get(pages::overview::page))
        .route("/loops/{name}", get(pages::loops::page))
        .route("/loops/{name}/runs/{run}", get(pages::run::page))
        .route("/commits/{sha}", get(pages::run::commit))
        .route("/inbox", get(pages::inbox::page))
        .route("/inbox/{id}", get(pages::inbox::handoff))
        .route("/inbox/{id}/tick", post(actions::tick))
        .route("/inbox/{id}/complete", post(actions::complete))
        .route("/inbox/{id}/reject", post(actions::reject))
        .route("/inbox/{id}/retry", post(actions::retry))
        .route("/jobs", get(pages::jobs::page))
        .route("/jobs/{id}", get(pages::jobs::job))
        .route("/jobs/{id}/cancel", post(actions::cancel))
        .route("/jobs/{id}/pause", post(actions::pause))
        .route("/jobs/{id}/resume", post(actions::resume))
        .route("/jobs/{id}/message", post(actions::message))
        .route("/deliveries", get(pages::deliveries::page))
        .route("/history", get(pages::history::page))
        .route("/events", get(live::events))
        .route("/assets/{file}", get(assets::serve))
        .fallback(view::not_found)
        .layer(middleware::from_fn_with_state(app.clone(), auth::require))
        .with_state(app);
    // Outermost, so a refusal (401, 403) carries the same headers as a page.
    pages.layer(middleware::from_fn(security_headers))
}

/// The headers every response carries: nothing but this server's own scripts, styles and
/// images run, no page may frame it, types are not guessed, and no URL (which may carry
/// `?token=`) is sent on to another site.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; \
             frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        view::error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            &self.to_string(),
            self.help(),
        )
    }
}
