//! Small text helpers every layer uses.

/// Replies that mean "nothing to say": a silent exit, never delivered anywhere.
pub const SILENT_TOKENS: &[&str] = &["SILENT", "NO_REPLY", "HEARTBEAT_OK"];

/// Whether `text` is exactly a silent token (surrounding whitespace aside).
pub fn is_silent_token(text: &str) -> bool {
    let t = text.trim();
    SILENT_TOKENS.contains(&t)
}

/// At most `max` bytes of `s`, on a character boundary.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    format!("{}…", &s[..i])
}
