//! A loop's state.md (or a handoff's body) as HTML: CommonMark through pulldown-cmark,
//! with every piece of raw HTML in the text turned into escaped text and every link or
//! image whose address is a script (`javascript:`, `data:`, …) made inert. The CSP would
//! stop a script anyway; this keeps the markup itself clean.

use maud::{Markup, PreEscaped};
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};

pub(super) fn render(text: &str) -> Markup {
    let opts = Options::ENABLE_TABLES | Options::ENABLE_TASKLISTS | Options::ENABLE_STRIKETHROUGH;
    let events = Parser::new_ext(text, opts).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        other => other,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    PreEscaped(out)
}

/// Web and mail addresses and plain relative ones pass; any other scheme becomes `#`.
fn safe_url(url: CowStr<'_>) -> CowStr<'_> {
    let lower = url.trim().to_ascii_lowercase();
    let colon = lower.find(':');
    let scheme = colon.map(|c| &lower[..c]);
    // `a/b:c` is a path with a colon in it, not a scheme.
    let relative = match (colon, lower.find(['/', '?', '#'])) {
        (None, _) => true,
        (Some(c), Some(s)) => s < c,
        (Some(_), None) => false,
    };
    match scheme {
        _ if relative => url,
        Some("http" | "https" | "mailto") => url,
        _ => CowStr::Borrowed("#"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_html_is_text() {
        let html = render("# Hi\n\n<script>alert(1)</script>\n\nand <b onclick=x>b</b>").0;
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<b "), "{html}");
    }

    #[test]
    fn a_script_address_goes_nowhere() {
        let html = render("[x](javascript:alert(1)) [y](https://e.org) [z](notes/a.md)").0;
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("https://e.org"), "{html}");
        assert!(html.contains("notes/a.md"), "{html}");
    }
}
