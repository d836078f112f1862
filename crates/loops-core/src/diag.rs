//! Diagnostics: what is wrong with a file a person wrote, where, and what would be right.
//!
//! YAML parsing gives positions only for syntax errors, so semantic errors (a bad
//! duration, an unknown timezone) find their line and column with [`YamlLocator`], a
//! small scanner over the source text that maps a key path to where it is written.

use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Path relative to the workspace root when inside it.
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            line: None,
            column: None,
            message: message.into(),
            help: None,
        }
    }

    pub fn warning(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, message)
        }
    }

    pub fn at(mut self, pos: Option<Pos>) -> Self {
        if let Some(p) = pos {
            self.line = Some(p.line);
            self.column = Some(p.column);
        }
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col` (or as much of it as is known).
    pub fn location(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", self.file.display()),
            (Some(l), None) => format!("{}:{l}", self.file.display()),
            _ => self.file.display().to_string(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.location(), self.message)?;
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Finds where a key path (`["schedule", "every"]`) is written in a YAML document.
///
/// It understands block mappings by indentation and single-line flow mappings
/// (`retry: { delay: 30s }`), which is how config files are written in practice. When a
/// path cannot be found it answers with the nearest ancestor that can.
pub struct YamlLocator<'a> {
    lines: Vec<&'a str>,
}

struct KeyAt {
    line: usize,
    indent: usize,
    key: String,
    key_col: usize,
    value_col: Option<usize>,
}

impl<'a> YamlLocator<'a> {
    pub fn new(text: &'a str) -> Self {
        YamlLocator {
            lines: text.lines().collect(),
        }
    }

    fn keys(&self) -> Vec<KeyAt> {
        let mut out = Vec::new();
        for (i, raw) in self.lines.iter().enumerate() {
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
                continue;
            }
            let indent = raw.len() - trimmed.len();
            let (body, indent) = match trimmed.strip_prefix("- ") {
                Some(rest) => (rest, indent + 2),
                None => (trimmed, indent),
            };
            if let Some((key, after)) = split_key(body) {
                let value_off = body.len() - after.trim_start().len();
                let value_col = if after.trim().is_empty() || after.trim_start().starts_with('#') {
                    None
                } else {
                    Some(indent + value_off + 1)
                };
                out.push(KeyAt {
                    line: i + 1,
                    indent,
                    key,
                    key_col: indent + 1,
                    value_col,
                });
            }
        }
        out
    }

    /// Where the key at `path` is written.
    pub fn key(&self, path: &[&str]) -> Option<Pos> {
        self.find(path).map(|(p, _)| p)
    }

    /// The text of a 1-based line.
    pub fn line_text(&self, line: usize) -> Option<&'a str> {
        self.lines.get(line.checked_sub(1)?).copied()
    }

    /// Where the value of `path` is written (falls back to the key).
    pub fn value(&self, path: &[&str]) -> Option<Pos> {
        self.find(path).map(|(k, v)| v.unwrap_or(k))
    }

    fn find(&self, path: &[&str]) -> Option<(Pos, Option<Pos>)> {
        if path.is_empty() {
            return None;
        }
        let keys = self.keys();
        let mut stack: Vec<(usize, String)> = Vec::new();
        let mut best: Option<(usize, Pos, Option<Pos>)> = None;
        for k in &keys {
            while stack.last().is_some_and(|(ind, _)| *ind >= k.indent) {
                stack.pop();
            }
            stack.push((k.indent, k.key.clone()));
            let current: Vec<&str> = stack.iter().map(|(_, s)| s.as_str()).collect();
            let depth = matching_prefix(&current, path);
            if depth == current.len() && depth > 0 {
                let key_pos = Pos {
                    line: k.line,
                    column: k.key_col,
                };
                let val_pos = k.value_col.map(|c| Pos {
                    line: k.line,
                    column: c,
                });
                if depth == path.len() {
                    return Some((key_pos, val_pos));
                }
                // A flow mapping on this line may hold the rest of the path.
                if let Some(found) = self.in_flow(k.line, &path[depth..]) {
                    return Some(found);
                }
                if best.as_ref().is_none_or(|(d, _, _)| depth > *d) {
                    best = Some((depth, key_pos, val_pos));
                }
            }
        }
        best.map(|(_, k, v)| (k, v))
    }

    /// The first and second places `key` is written in the mapping that starts at
    /// `start` (the whole document when `None` or 1:1): for a duplicate key, which the
    /// YAML parser reports only by the mapping it is in.
    pub fn duplicate(&self, start: Option<Pos>, key: &str) -> Option<(Pos, Pos)> {
        let start = start.unwrap_or(Pos { line: 1, column: 1 });
        // A flow mapping (`{ every: 1m, every: 2m }`): the key twice on its line.
        if let Some(line) = self.line_text(start.line) {
            let from = start.column.saturating_sub(1);
            if line.get(from..).is_some_and(|t| t.starts_with('{')) {
                let needle = format!("{key}:");
                let found: Vec<usize> = line[from..]
                    .match_indices(&needle)
                    .map(|(i, _)| from + i)
                    .filter(|i| {
                        // A whole key: after `{`, `,` or a space.
                        line[..*i]
                            .chars()
                            .last()
                            .is_some_and(|c| c == '{' || c == ',' || c == ' ')
                    })
                    .collect();
                if let [a, b, ..] = found.as_slice() {
                    let pos = |i: usize| Pos {
                        line: start.line,
                        column: i + 1,
                    };
                    return Some((pos(*a), pos(*b)));
                }
            }
        }
        let keys = self.keys();
        let mut inside = keys.iter().filter(|k| k.line >= start.line).peekable();
        // The mapping's own keys are at the indentation of its first key.
        let indent = inside.peek()?.indent;
        let same: Vec<Pos> = inside
            .take_while(|k| k.indent >= indent)
            .filter(|k| k.indent == indent && k.key == key)
            .map(|k| Pos {
                line: k.line,
                column: k.key_col,
            })
            .collect();
        match same.as_slice() {
            [a, b, ..] => Some((*a, *b)),
            _ => None,
        }
    }

    fn in_flow(&self, line: usize, rest: &[&str]) -> Option<(Pos, Option<Pos>)> {
        let text = self.lines.get(line - 1)?;
        let open = text.find('{')?;
        let mut from = open;
        for key in rest {
            let needle = format!("{key}:");
            let idx = text[from..].find(&needle)? + from;
            from = idx + needle.len();
        }
        let key_col = from - rest.last()?.len() - 1;
        let after = &text[from..];
        let value_col = from + (after.len() - after.trim_start().len());
        Some((
            Pos {
                line,
                column: key_col + 1,
            },
            Some(Pos {
                line,
                column: value_col + 1,
            }),
        ))
    }
}

fn matching_prefix(current: &[&str], path: &[&str]) -> usize {
    current
        .iter()
        .zip(path.iter())
        .take_while(|(a, b)| a == b)
        .count()
}

/// Splits `key: rest` (quoted keys allowed); `None` when the line is not a mapping key.
fn split_key(body: &str) -> Option<(String, &str)> {
    if let Some(q) = body.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = body[1..].find(q)? + 1;
        let after = body[end + 1..].strip_prefix(':')?;
        if !(after.is_empty() || after.starts_with(' ')) {
            return None;
        }
        return Some((body[1..end].to_string(), after));
    }
    let idx = body.find(':')?;
    let key = &body[..idx];
    if key.is_empty()
        || key.contains(' ')
        || key.starts_with('{')
        || key.starts_with('[')
        || key.starts_with('#')
    {
        return None;
    }
    let after = &body[idx + 1..];
    if !(after.is_empty() || after.starts_with(' ')) {
        return None;
    }
    Some((key.to_string(), after))
}

/// The known name closest to `word`, when it is close enough to be a typo.
pub fn near_miss<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = word.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        if lower == *k {
            return Some(k);
        }
        let d = strsim::damerau_levenshtein(&lower, k);
        let limit = if k.len() >= 5 { 2 } else { 1 };
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

/// A diagnostic for a YAML syntax error, at the fault rather than where the parser
/// noticed it. libyaml reports the place it gave up (for an unclosed `[` or quote, the next
/// line or the end of the file) and names the construct it was reading with where that
/// began: an opened flow list or mapping, a quoted text, a key without its colon. That
/// beginning is the fault. A duplicate key comes with no usable position at all (1:1, or
/// the mapping's start), so its second occurrence is found in `text`.
pub fn yaml_syntax_diagnostic(rel: &Path, text: &str, e: &yaml_serde::Error) -> Diagnostic {
    let msg = e.to_string();
    let start = e.location().map(|l| Pos {
        line: l.line(),
        column: l.column(),
    });
    if let Some(d) = duplicate_key_diagnostic(rel, text, &msg, start) {
        return d;
    }
    let context = msg.rsplit_once(", while ").map_or("", |(_, c)| c);
    let help = if context.starts_with("parsing a flow sequence") {
        "the list opened with `[` here is not closed: end it with `]` on this line (items are separated by `,`)"
    } else if context.starts_with("parsing a flow mapping") {
        "the mapping opened with `{` here is not closed: end it with `}` on this line (entries are separated by `,`)"
    } else if context.starts_with("scanning a quoted scalar") {
        "the quote opened here is not closed: end the text with the same quote"
    } else if context.starts_with("scanning a simple key") {
        "this line is neither `key: value` nor a list item: add the colon (and a space after it), or join it to the line above"
    } else {
        "check the indentation (spaces, not tabs) and that every `key: value` has a space after the colon"
    };
    let mut d = Diagnostic::error(rel, format!("not valid YAML: {msg}")).help(help);
    let at = opened_construct(&msg).or(start);
    if let Some(p) = at {
        d.line = Some(p.line);
        d.column = Some(p.column);
    }
    d
}

/// Where the construct libyaml names in `…, while scanning a quoted scalar at line 2
/// column 10` began, for constructs that are opened and must be closed. A block mapping or
/// list is not one: there the place the parser stopped is the bad line.
fn opened_construct(msg: &str) -> Option<Pos> {
    let (_, context) = msg.rsplit_once(", while ")?;
    if !(context.starts_with("scanning") || context.starts_with("parsing a flow")) {
        return None;
    }
    let (_, mark) = context.rsplit_once(" at line ")?;
    let (line, column) = mark.split_once(" column ")?;
    Some(Pos {
        line: line.trim().parse().ok()?,
        column: column.trim().parse().ok()?,
    })
}

/// `schedule: duplicate entry with key "every" at line 2 column 3` (the mapping's path and
/// start): a diagnostic at the key's second occurrence.
fn duplicate_key_diagnostic(
    rel: &Path,
    text: &str,
    msg: &str,
    start: Option<Pos>,
) -> Option<Diagnostic> {
    let idx = msg.find("duplicate entry with key ")?;
    let path = msg[..idx].trim_end().trim_end_matches(':');
    let rest = &msg[idx + "duplicate entry with key ".len()..];
    let key = match rest.strip_prefix('"') {
        Some(q) => q.split('"').next()?.to_string(),
        None => rest
            .split_whitespace()
            .next()?
            .trim_matches('`')
            .to_string(),
    };
    let (first, second) = YamlLocator::new(text).duplicate(start, &key)?;
    let within = if path.is_empty() {
        String::new()
    } else {
        format!(" in `{path}`")
    };
    Some(
        Diagnostic::error(
            rel,
            format!(
                "not valid YAML: `{key}` is written twice{within} (first at line {})",
                first.line
            ),
        )
        .at(Some(second))
        .help("a key may appear once in a mapping: keep one of them (YAML would not say which one counts)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "description: x\nschedule:\n  every: 10 minutes\n  timezone: Mars/Base\nretry: { max_attempts: 3, delay: 3x }\npayload:\n  command:\n    - ./run.sh\n";

    #[test]
    fn finds_block_keys() {
        let l = YamlLocator::new(DOC);
        assert_eq!(l.key(&["schedule"]), Some(Pos { line: 2, column: 1 }));
        assert_eq!(
            l.value(&["schedule", "every"]),
            Some(Pos {
                line: 3,
                column: 10
            })
        );
        assert_eq!(
            l.key(&["schedule", "timezone"]),
            Some(Pos { line: 4, column: 3 })
        );
    }

    #[test]
    fn finds_flow_keys() {
        let l = YamlLocator::new(DOC);
        assert_eq!(
            l.value(&["retry", "delay"]),
            // `retry: { max_attempts: 3, delay: 3x }`: `3x` starts at column 34.
            Some(Pos {
                line: 5,
                column: 34
            })
        );
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let l = YamlLocator::new(DOC);
        assert_eq!(
            l.key(&["schedule", "cron"]),
            Some(Pos { line: 2, column: 1 })
        );
    }

    #[test]
    fn near_misses() {
        let known = ["schedule", "payload", "retry", "timeout"];
        assert_eq!(near_miss("schedul", &known), Some("schedule"));
        assert_eq!(near_miss("Schedule", &known), Some("schedule"));
        assert_eq!(near_miss("channel", &known), None);
    }
}
