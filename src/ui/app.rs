//! What every handler shares, and the two helpers every page uses.

use super::live::Live;
use super::view;
use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::response::Response;
use loops_core::workspace::Workspace;
use std::sync::Arc;

/// The workspace, the secrets, and the watcher's events.
#[derive(Clone)]
pub(super) struct App {
    pub(super) ws: Arc<Workspace>,
    /// None only when the person asked for no token on a loopback address.
    pub(super) token: Option<Arc<str>>,
    /// Put in every form and checked on every POST; new at each start.
    pub(super) csrf: Arc<str>,
    pub(super) live: Live,
}

impl FromRef<App> for Live {
    fn from_ref(app: &App) -> Live {
        app.live.clone()
    }
}

/// Runs blocking work (file reads, git) off the async threads; a panic in it is a 500.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        view::error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the page failed: {e}"),
            None,
        )
    })
}

/// A response for `r`, or the error page it carries.
pub(super) fn either(r: Result<Response, Response>) -> Response {
    r.unwrap_or_else(|e| e)
}
