//! A handoff file's bytes, parsed as the daemon, the main session and `loops inbox` read a
//! file from `inbox/`; then the front matter of what parsed written back out the way
//! `create_handoff` writes a new handoff, and read again.
//!
//! Invariants: no panic; a parsed handoff has a usable id; a handoff the runner writes
//! reads back with the same sender, recipient, priority, run, draft, flag, tags and
//! checklist.

#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use loops_core::handoff::{parse, parse_bytes, valid_id, NewHandoff};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse_bytes(data.to_vec(), "fuzz-note") else {
        return;
    };
    assert!(valid_id(&h.id), "{:?} is not a usable id", h.id);
    let _ = h.unticked();
    serde_json::to_string(&h).expect("a handoff serializes for `loops inbox --json`");

    // Round trip through the runner's own writer. Item texts are single lines there (the
    // tool takes a list of strings), and a text that is itself a task marker or ends in
    // a backslash is markdown, not the plain text it was read as.
    let items: Vec<String> = h
        .checklist
        .iter()
        .map(|i| i.text.clone())
        .filter(|t| plain_item(t))
        .collect();
    let new = NewHandoff {
        from: h.from.clone(),
        to: h.to.clone(),
        title: "Round trip".into(),
        priority: h.priority,
        run: h.run.clone(),
        draft: h.draft.clone(),
        due: None,
        tags: h.tags.clone(),
        flagged: h.flagged.clone(),
        body: String::new(),
        items: items.clone(),
    };
    let now = Utc.with_ymd_and_hms(2026, 11, 20, 9, 30, 0).unwrap();
    let (id, text) = loops_core::handoff::render(&new, now);
    let back = match parse(&text, "unused") {
        Ok(b) => b,
        Err(e) => panic!("the runner wrote a handoff it cannot read ({e}):\n{text}"),
    };
    assert_eq!(back.id, id);
    assert_eq!(back.from, h.from, "{text}");
    let to = if h.to.is_empty() { "main" } else { &h.to };
    assert_eq!(back.to, to, "{text}");
    assert_eq!(back.priority, h.priority, "{text}");
    assert_eq!(back.run, h.run, "{text}");
    assert_eq!(back.draft, h.draft, "{text}");
    assert_eq!(back.flagged, h.flagged, "{text}");
    assert_eq!(back.tags, h.tags, "{text}");
    assert_eq!(back.created, Some(now));
    assert_eq!(back.title, "Round trip");
    let back_items: Vec<&str> = back.checklist.iter().map(|i| i.text.as_str()).collect();
    let want: Vec<&str> = items.iter().map(|t| t.trim()).collect();
    assert_eq!(back_items, want, "{text}");
});

/// An item text that markdown reads back as itself: plain words on one line.
fn plain_item(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == ',' || c == '.')
}
