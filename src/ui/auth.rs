//! What guards the UI: a random token kept owner-only in `.loops/ui-token`, asked of
//! every request (a first `?token=` visit trades it for a cookie), compared in constant
//! time; and a CSRF token in every form, checked on every POST.

use super::app::App;
use super::error::UiError;
use super::view;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use loops_core::workspace::Workspace;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use subtle::ConstantTimeEq;

/// The cookie a `?token=` visit sets.
const COOKIE: &str = "loops_ui_token";

/// The workspace's UI token, and whether this call made it (then it is shown once).
pub struct Token {
    pub secret: String,
    pub created: bool,
}

/// `n` random bytes from the kernel, as hex.
pub(super) fn random_hex(n: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token in `.loops/ui-token`, made (32 random bytes, 0600) when there is none yet.
/// Made beside it and hard-linked into place, so a daemon and a `loops ui` starting
/// together agree on one token and neither reads a half-written file.
pub fn load_or_create_token(ws: &Workspace) -> Result<Token, UiError> {
    let path = ws.layout().ui_token();
    let err = |source| UiError::Token {
        path: path.clone(),
        source,
    };
    if let Some(secret) = read_token(&path).map_err(err)? {
        return Ok(Token {
            secret,
            created: false,
        });
    }
    let secret = random_hex(32).map_err(UiError::Random)?;
    let tmp = path.with_file_name(format!(".ui-token.{}", std::process::id()));
    loops_core::fsutil::atomic_write(&tmp, format!("{secret}\n").as_bytes()).map_err(err)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Token {
            secret,
            created: true,
        }),
        // Another process made it first: theirs is the token.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Token {
            secret: read_token(&path).map_err(err)?.unwrap_or(secret),
            created: false,
        }),
        Err(e) => Err(err(e)),
    }
}

fn read_token(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Equal in time that does not depend on where the two differ.
pub(super) fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The middleware in front of every route: the cookie passes; a right `?token=` sets the
/// cookie and redirects to the same page without the token in its address (so it stays
/// out of the history and the logs); anything else is a 401.
pub(super) async fn require(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(token) = app.token.as_deref() else {
        return next.run(req).await;
    };
    if cookie(req.headers()).is_some_and(|c| same(&c, token)) {
        return next.run(req).await;
    }
    match query_token(req.uri()) {
        Some(t) if same(&t, token) => with_cookie(req.uri(), token),
        Some(_) => refuse("the token in the address is not this workspace's"),
        None => refuse("this page needs the UI token"),
    }
}

fn refuse(what: &str) -> Response {
    view::error_page(
        StatusCode::UNAUTHORIZED,
        what,
        Some(
            "open the address `loops ui` printed, ending in ?token=… (`loops ui --token` shows the token)"
                .into(),
        ),
    )
}

fn cookie(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn query_token(uri: &Uri) -> Option<String> {
    let q: Query<HashMap<String, String>> = Query::try_from_uri(uri).ok()?;
    q.0.get("token").cloned()
}

/// 303 to the same path and query less `token`, setting the cookie: HttpOnly (no script
/// reads it), SameSite=Strict (no other site's page sends it).
fn with_cookie(uri: &Uri, token: &str) -> Response {
    let rest: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("token="))
        .collect();
    let mut to = uri.path().to_string();
    if !rest.is_empty() {
        to = format!("{to}?{}", rest.join("&"));
    }
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    )) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// The CSRF check of a POST: the form's `csrf` field must be this server's.
pub(super) fn check_csrf(app: &App, given: Option<&str>) -> Result<(), Box<Response>> {
    match given {
        Some(g) if same(g, &app.csrf) => Ok(()),
        _ => Err(Box::new(view::error_page(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or not this server's",
            Some(
                "reload the page (the token changes when the server restarts) and try again".into(),
            ),
        ))),
    }
}
