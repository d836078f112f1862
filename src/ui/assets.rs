//! The two files the pages load, compiled into the binary: nothing comes from anywhere
//! else (no CDN), and the Content-Security-Policy allows nothing else.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const STYLE: &str = include_str!("assets/style.css");
const LIVE: &str = include_str!("assets/live.js");

pub(super) async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "live.js" => (LIVE, "text/javascript; charset=utf-8"),
        _ => return super::view::not_found().await,
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, kind)], body).into_response()
}
