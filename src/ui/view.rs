//! The frame every page shares (navigation, the live script) and the small pieces pages
//! are made of. maud escapes every `(value)`, so text from a file or a model is text.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

/// The navigation, in order: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/inbox", "Inbox"),
    ("/jobs", "Jobs"),
    ("/deliveries", "Deliveries"),
    ("/history", "History"),
];

/// A whole page. `live` names what the page shows (`inbox`, `jobs`, `runs`, `all`): the
/// script reloads the page's main part when the watcher reports a change there.
pub(super) fn page(title: &str, live: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · loops" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/live.js" defer {}
            }
            body data-live=(live) {
                header {
                    nav {
                        span.brand { "loops" }
                        @for (href, label) in NAV {
                            a href=(href) { (label) }
                        }
                        span #live-status .muted {}
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    markup.into_response()
}

/// Any address that is not a page.
pub(super) async fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "no such page",
        Some("the overview (/) links every page".into()),
    )
}

/// An error as a page with its status: what went wrong, and what to do.
pub(super) fn error_page(status: StatusCode, what: &str, help: Option<String>) -> Response {
    let body = html! {
        p.error { (what) }
        @if let Some(h) = help { p.help { (h) } }
        p { a href="/" { "Back to the overview" } }
    };
    let title = status.canonical_reason().unwrap_or("Error");
    (status, page(title, "none", body)).into_response()
}

/// `2026-11-20 09:30:00 UTC` and how long ago.
pub(super) fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(t.to_rfc3339()) {
            (t.format("%Y-%m-%d %H:%M:%S UTC")) " "
            span.muted { "(" (ago(t, now)) ")" }
        }
    }
}

/// `3 min ago`, `in 2 h`.
pub(super) fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let span = span_secs(secs.unsigned_abs());
    if secs >= 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

pub(super) fn span_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

pub(super) fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        span_secs(ms / 1000)
    }
}

/// `12.3k` tokens.
pub(super) fn tokens(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1000..=999_999 => format!("{:.1}k", n as f64 / 1000.0),
        _ => format!("{:.1}M", n as f64 / 1_000_000.0),
    }
}

/// An outcome (or state) as a coloured tag: the class is the word itself, limited to
/// letters and `-` so no text picks a class of its own.
pub(super) fn tag(word: &str) -> Markup {
    let class: String = word
        .chars()
        .take_while(|c| c.is_ascii_alphabetic() || *c == '-')
        .collect();
    html! { span class={ "tag " (class) } { (word) } }
}

/// A file's text shown as it is.
pub(super) fn file_block(name: &str, text: Option<&str>) -> Markup {
    html! {
        figure.file {
            figcaption { (name) }
            @match text {
                Some(t) => { pre { (t) } }
                None => { p.muted { "(no such file)" } }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub(super) fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A form of one button posting to `action`.
pub(super) fn button(action: &str, label: &str, csrf: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(csrf))
            button type="submit" { (label) }
        }
    }
}

/// A short commit id linked to its diff.
pub(super) fn commit_link(sha: &str) -> Markup {
    let short: String = sha.chars().take(10).collect();
    html! { a.mono href={ "/commits/" (sha) } { (short) } }
}
