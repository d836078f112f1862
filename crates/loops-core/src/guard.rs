//! The never-share guard: rules an agent with private data cannot forget.
//!
//! A loop's `classification:` block (Genesis form: `SAFE_TO_SHARE` and `NEVER_SHARE`
//! lists) is given to the model as rules; that part depends on the model listening. The
//! enforced part is here: `deny_patterns` (regexes, in the loop or in loops.yaml) and
//! built-in `detectors` switched on by name are checked on every outbound text — channel
//! posts, webhook bodies, handoffs to anyone but the main session — and a match stops the
//! text from leaving.
//!
//! A block never repeats what matched: the error names the rule, and a redacted copy
//! (each match replaced by `[blocked: rule]`) is all that is kept.
//!
//! ```yaml
//! classification:
//!   SAFE_TO_SHARE: [public release notes, open issues]
//!   NEVER_SHARE: [customer names, anything from USER.md]
//! deny_patterns:
//!   - "(?i)project\\s+falcon"
//!   - { name: customer-id, pattern: "CUST-[0-9]{6}" }
//! detectors: [email, phone, api_key, ip]
//! ```

use crate::diag::{near_miss, Diagnostic, YamlLocator};
use regex::Regex;
use std::ops::Range;
use std::path::Path;
use yaml_serde::Value;

/// A built-in detector, switched on by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detector {
    Email,
    Phone,
    ApiKey,
    Ip,
}

/// Detector names as written in `detectors:`, with the spellings people also use.
const DETECTOR_NAMES: &[(&str, Detector)] = &[
    ("email", Detector::Email),
    ("emails", Detector::Email),
    ("email_address", Detector::Email),
    ("phone", Detector::Phone),
    ("phones", Detector::Phone),
    ("phone_number", Detector::Phone),
    ("api_key", Detector::ApiKey),
    ("api_keys", Detector::ApiKey),
    ("token", Detector::ApiKey),
    ("tokens", Detector::ApiKey),
    ("secrets", Detector::ApiKey),
    ("ip", Detector::Ip),
    ("ips", Detector::Ip),
    ("ip_address", Detector::Ip),
];

/// The names `loops check` suggests.
pub const DETECTORS: &[&str] = &["email", "phone", "api_key", "ip"];

impl Detector {
    pub fn parse(name: &str) -> Option<Detector> {
        let n = name.trim().to_ascii_lowercase().replace('-', "_");
        DETECTOR_NAMES
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, d)| *d)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::ApiKey => "api_key",
            Detector::Ip => "ip",
        }
    }

    /// What the detector looks for, for the model's rules and the docs.
    pub fn describes(&self) -> &'static str {
        match self {
            Detector::Email => "email addresses",
            Detector::Phone => "phone numbers",
            Detector::ApiKey => "API keys, tokens, private keys and webhook URLs",
            Detector::Ip => "IP addresses",
        }
    }

    fn patterns(&self) -> &'static [&'static str] {
        match self {
            Detector::Email => &[r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b"],
            Detector::Phone => &[
                // +44 20 7946 0958, +1 (555) 010-9999, (555) 010-9999, 555-010-9999
                r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\b\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,5}\b",
                r"\+\d{8,15}\b",
            ],
            Detector::ApiKey => &[
                r"\bsk-(?:ant-|proj-|live-)?[A-Za-z0-9_-]{16,}",
                r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
                r"\bgh[pousr]_[A-Za-z0-9]{30,}",
                r"\bgithub_pat_[A-Za-z0-9_]{30,}",
                r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
                r"\bAKIA[0-9A-Z]{16}\b",
                r"\bAIza[0-9A-Za-z_-]{35}",
                r"\bglpat-[A-Za-z0-9_-]{20,}",
                r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{5,}",
                r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*",
                r"(?i)\b(?:api[_-]?key|secret|token|passw(?:or)?d|access[_-]?key)\b[\x22']?\s*[:=]\s*[\x22']?[A-Za-z0-9_\-./+=]{12,}",
                r"(?i)hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]+",
                r"(?i)discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_-]+",
            ],
            // Candidates only: each is confirmed by parsing it as an address.
            Detector::Ip => &[
                r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b",
                r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?:\.\d{1,3}){0,3}",
            ],
        }
    }

    fn compiled(&self) -> Vec<Regex> {
        self.patterns()
            .iter()
            .filter_map(|p| Regex::new(p).ok())
            .collect()
    }

    /// Whether a regex candidate really is what the detector looks for.
    fn confirms(&self, m: &str) -> bool {
        match self {
            Detector::Ip => {
                if m.contains(':') {
                    // At least three colons and a real IPv6 address: `a::b` in prose or
                    // code (`std::fs`) is not an address worth blocking.
                    m.matches(':').count() >= 3 && m.parse::<std::net::Ipv6Addr>().is_ok()
                } else {
                    m.parse::<std::net::Ipv4Addr>().is_ok()
                }
            }
            _ => true,
        }
    }
}

/// Where a rule comes from, for messages: `loops.yaml` or `domains/x/config.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(pub String);

/// One enforced rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The detector's name, or the pattern's `name:` (else `deny_patterns[N]`).
    pub name: String,
    pub origin: Origin,
    kind: RuleKind,
}

#[derive(Debug, Clone)]
enum RuleKind {
    Detector(Detector, Vec<Regex>),
    Pattern(Regex),
}

impl Rule {
    fn matches(&self, text: &str) -> Vec<Range<usize>> {
        match &self.kind {
            RuleKind::Pattern(re) => re
                .find_iter(text)
                .filter(|m| !m.as_str().is_empty())
                .map(|m| m.range())
                .collect(),
            RuleKind::Detector(d, res) => res
                .iter()
                .flat_map(|re| re.find_iter(text))
                .filter(|m| d.confirms(m.as_str().trim_matches(':')))
                .map(|m| m.range())
                .collect(),
        }
    }
}

impl Rule {
    /// Whether the rule matches the text or any of its normalised spellings.
    fn hits(&self, text: &str, spellings: &[String]) -> bool {
        std::iter::once(text)
            .chain(spellings.iter().map(String::as_str))
            .any(|t| !self.matches(t).is_empty())
    }
}

/// The `classification:` lists, given to the model as rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    pub safe_to_share: Vec<String>,
    pub never_share: Vec<String>,
}

/// The guard settings of one file (a loop's config.yaml or loops.yaml).
#[derive(Debug, Clone, Default)]
pub struct GuardConfig {
    pub classification: Classification,
    pub rules: Vec<Rule>,
    /// Set when a rule could not be read: the guard then fails closed (nothing leaves)
    /// rather than run without the rule someone wrote. Names the file.
    pub broken: Option<String>,
}

impl GuardConfig {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && self.classification.safe_to_share.is_empty()
            && self.classification.never_share.is_empty()
    }
}

/// The rules in force for one run: loops.yaml's and the loop's together.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    rules: Vec<Rule>,
    classification: Classification,
    broken: Option<String>,
}

/// A text the guard stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub rule: String,
    pub origin: String,
    /// Every rule that matched, first the one named above.
    pub rules: Vec<String>,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blocked by the never-share guard: the text matches rule `{}` ({})",
            self.rule, self.origin
        )?;
        if self.rules.len() > 1 {
            write!(f, " and {} other rule(s)", self.rules.len() - 1)?;
        }
        Ok(())
    }
}

impl Guard {
    /// loops.yaml's rules, then the loop's.
    pub fn new(workspace: &GuardConfig, loop_cfg: Option<&GuardConfig>) -> Guard {
        let mut g = Guard {
            rules: workspace.rules.clone(),
            classification: workspace.classification.clone(),
            broken: workspace.broken.clone(),
        };
        if let Some(l) = loop_cfg {
            g.broken = g.broken.or_else(|| l.broken.clone());
            g.rules.extend(l.rules.iter().cloned());
            g.classification
                .safe_to_share
                .extend(l.classification.safe_to_share.iter().cloned());
            g.classification
                .never_share
                .extend(l.classification.never_share.iter().cloned());
        }
        g
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.broken.is_none()
    }

    /// The guard with built-in detector `d` on as well (if it is not already), for what
    /// must never leave whatever loops.yaml says: a pushed secret is public.
    pub fn with_detector(mut self, d: Detector, origin: &str) -> Guard {
        if !self
            .rules
            .iter()
            .any(|r| matches!(r.kind, RuleKind::Detector(x, _) if x == d))
        {
            self.rules.push(Rule {
                name: d.name().to_string(),
                origin: Origin(format!("built in for {origin}")),
                kind: RuleKind::Detector(d, d.compiled()),
            });
        }
        self
    }

    /// `Err` names the first rule that matches (never what matched).
    pub fn check(&self, text: &str) -> Result<(), Blocked> {
        if let Some(file) = &self.broken {
            return Err(Blocked {
                rule: "unreadable-rules".into(),
                origin: format!(
                    "the never-share rules in {file} have errors, so nothing is sent until they are fixed; `loops check` shows them"
                ),
                rules: vec!["unreadable-rules".into()],
            });
        }
        let hits = self.hits(text);
        match hits.first() {
            None => Ok(()),
            Some(first) => Err(Blocked {
                rule: first.name.clone(),
                origin: first.origin.0.clone(),
                rules: hits.iter().map(|r| r.name.clone()).collect(),
            }),
        }
    }

    /// The rules that match `text`, as written or in any normalised spelling.
    fn hits(&self, text: &str) -> Vec<&Rule> {
        let spellings = normal::spellings(text);
        self.rules
            .iter()
            .filter(|r| r.hits(text, &spellings))
            .collect()
    }

    /// `text` with the secret gone: every match replaced by `[blocked: rule]`. A match
    /// that only a normalised spelling shows has no place in the text as written, so its
    /// whole line goes, and so do all the lines a match split over lines touches. Should
    /// anything still match after that, the whole text goes.
    pub fn redact(&self, text: &str) -> String {
        if self.hits(text).is_empty() {
            return text.to_string();
        }
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let split = self.split_over_lines(&lines);
        let out: String = lines
            .iter()
            .zip(&split)
            .map(|(line, across)| self.redact_line(line, across))
            .collect();
        match self.hits(&out).as_slice() {
            [] => out,
            hits => marker(hits),
        }
    }

    /// One line redacted: its exact matches replaced, or all of it when a normalised
    /// spelling of it still matches or a match `across` lines touches it.
    fn redact_line(&self, line: &str, across: &[&Rule]) -> String {
        let body = line.trim_end_matches(['\n', '\r']);
        let end = &line[body.len()..];
        if across.is_empty() {
            let exact = self.redact_exact(body);
            let left = self.hits(&exact);
            if left.is_empty() {
                return format!("{exact}{end}");
            }
            return format!("{}{end}", marker(&left));
        }
        format!("{}{end}", marker(across))
    }

    /// For each line, the rules whose match (in the lines normalised and laid end to end)
    /// runs over more than one line and touches this one.
    fn split_over_lines(&self, lines: &[&str]) -> Vec<Vec<&Rule>> {
        let mut out: Vec<Vec<&Rule>> = vec![Vec::new(); lines.len()];
        for laid in normal::laid_end_to_end(lines) {
            for r in &self.rules {
                for m in r.matches(&laid.text) {
                    // Spans are in order: the first line ending after the match starts,
                    // up to the last starting before it ends (empty lines never touch).
                    let from = laid.spans.partition_point(|sp| sp.end <= m.start);
                    let touched: Vec<usize> = (from..lines.len())
                        .take_while(|&i| laid.spans[i].start < m.end)
                        .filter(|&i| !laid.spans[i].is_empty())
                        .collect();
                    if touched.len() < 2 {
                        continue;
                    }
                    for i in touched {
                        if !out[i].iter().any(|x| std::ptr::eq(*x, r)) {
                            out[i].push(r);
                        }
                    }
                }
            }
        }
        out
    }

    /// `text` with every exact match replaced by `[blocked: rule]`.
    fn redact_exact(&self, text: &str) -> String {
        let mut spans: Vec<(Range<usize>, &str)> = self
            .rules
            .iter()
            .flat_map(|r| r.matches(text).into_iter().map(|m| (m, r.name.as_str())))
            .collect();
        if spans.is_empty() {
            return text.to_string();
        }
        spans.sort_by_key(|(r, _)| (r.start, std::cmp::Reverse(r.end)));
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (r, name) in spans {
            if r.start < at {
                // Overlaps a span already replaced: extend that one.
                at = at.max(r.end);
                continue;
            }
            out.push_str(&text[at..r.start]);
            out.push_str(&format!("[blocked: {name}]"));
            at = r.end;
        }
        out.push_str(&text[at.min(text.len())..]);
        out
    }

    /// The rules as the model reads them, or `None` when there are none.
    pub fn prompt_rules(&self) -> Option<String> {
        let c = &self.classification;
        if self.rules.is_empty() && c.safe_to_share.is_empty() && c.never_share.is_empty() {
            return None;
        }
        let mut s = String::from("## What you may share\n\n");
        s.push_str(
            "Everything you post to a channel or hand to anyone other than the main session leaves \
             this workspace. Follow these rules on every such text.\n",
        );
        if !c.never_share.is_empty() {
            s.push_str("\nNEVER share, in any form (not quoted, summarised or hinted at):\n");
            for n in &c.never_share {
                s.push_str(&format!("- {n}\n"));
            }
        }
        if !c.safe_to_share.is_empty() {
            s.push_str("\nSafe to share:\n");
            for n in &c.safe_to_share {
                s.push_str(&format!("- {n}\n"));
            }
        }
        if !self.rules.is_empty() {
            let mut names: Vec<String> = Vec::new();
            for r in &self.rules {
                let n = match &r.kind {
                    RuleKind::Detector(d, _) => d.describes().to_string(),
                    RuleKind::Pattern(_) => format!("rule `{}`", r.name),
                };
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            s.push_str(&format!(
                "\nOutbound texts are checked and a text that contains {} is not sent: \
                 the tool returns an error naming the rule, and the main session is told. \
                 When in doubt, leave it out or hand it to the main session.\n",
                names.join(", ")
            ));
        }
        Some(s)
    }
}

/// `[blocked: a, b]`: what stands in for a part that matched.
fn marker(hits: &[&Rule]) -> String {
    let mut names: Vec<&str> = hits.iter().map(|r| r.name.as_str()).collect();
    names.dedup();
    format!("[blocked: {}]", names.join(", "))
}

/// The spellings a rule is tried on besides the text itself, so that an invisible
/// character, a compatibility form, an entity or a line break does not hide a match.
mod normal {
    use unicode_normalization::UnicodeNormalization;

    /// Rounds of decoding: `&amp;#65;` needs two, a full-width `＆＃６５；` one more.
    const ROUNDS: usize = 4;

    /// The text normalised (line breaks kept), with its line breaks turned into one
    /// space, with them taken out (a secret split over lines), and that last one without
    /// combining marks (an overlay such as U+0336 on each letter). Empty when every
    /// spelling is the text itself.
    pub(super) fn spellings(text: &str) -> Vec<String> {
        let norm = normalise(text);
        let spaced = norm.replace('\n', " ");
        // Whitespace is collapsed, so a break stands alone: no spaces to take with it.
        let joined = norm.replace('\n', "");
        let bare = without_marks(&joined);
        let mut out: Vec<String> = Vec::new();
        for s in [norm, spaced, joined, bare] {
            if s != text && !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// Lines normalised and laid end to end, with where each line lies in the result.
    pub(super) struct Laid {
        pub text: String,
        pub spans: Vec<std::ops::Range<usize>>,
    }

    /// The lines (each normalised) laid end to end with nothing between them, with one
    /// space between them, and with nothing between them and no combining marks: the
    /// spellings [`spellings`] tries across line breaks, with the lines still findable.
    pub(super) fn laid_end_to_end(lines: &[&str]) -> Vec<Laid> {
        let norm: Vec<String> = lines
            .iter()
            .map(|l| normalise(l).trim().to_string())
            .collect();
        let joined: Vec<String> = norm.iter().map(|l| l.replace('\n', "")).collect();
        let spaced: Vec<String> = norm.iter().map(|l| l.replace('\n', " ")).collect();
        let bare: Vec<String> = joined.iter().map(|l| without_marks(l)).collect();
        vec![lay(&joined, ""), lay(&spaced, " "), lay(&bare, "")]
    }

    fn lay(lines: &[String], between: &str) -> Laid {
        let mut text = String::new();
        let mut spans = Vec::with_capacity(lines.len());
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                text.push_str(between);
            }
            spans.push(text.len()..text.len() + l.len());
            text.push_str(l);
        }
        Laid { text, spans }
    }

    fn without_marks(text: &str) -> String {
        text.chars()
            .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
            .collect()
    }

    /// Entities decoded, invisible characters removed and NFKC applied, repeated until
    /// nothing changes (each can reveal work for the others); then whitespace collapsed.
    pub(super) fn normalise(text: &str) -> String {
        let mut cur = text.to_string();
        for _ in 0..ROUNDS {
            let next: String = decode_entities(&cur)
                .chars()
                .filter(|c| !is_invisible(*c))
                .nfkc()
                .collect();
            if next == cur {
                break;
            }
            cur = next;
        }
        collapse_whitespace(&cur)
    }

    /// Named, decimal and hex references (`&amp;`, `&#65;`, `&#x41;`), also a numeric one
    /// without its `;`, which browsers decode too.
    fn decode_entities(text: &str) -> String {
        let named = html_escape::decode_html_entities(text);
        if !named.contains("&#") {
            return named.into_owned();
        }
        let mut out = String::with_capacity(named.len());
        let mut rest: &str = &named;
        while let Some(at) = rest.find("&#") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            match numeric(after) {
                Some((c, used)) => {
                    out.push(c);
                    rest = &after[used..];
                }
                None => {
                    out.push_str("&#");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The character of `65;…` or `x41…` (after `&#`) and how many bytes it took.
    fn numeric(s: &str) -> Option<(char, usize)> {
        let (radix, digits_at) = match s.as_bytes().first() {
            Some(b'x' | b'X') => (16, 1),
            _ => (10, 0),
        };
        let digits = s[digits_at..]
            .bytes()
            .take_while(|b| (*b as char).is_digit(radix))
            .count();
        if digits == 0 || digits > 8 {
            return None;
        }
        let end = digits_at + digits;
        let n = u32::from_str_radix(&s[digits_at..end], radix).ok()?;
        let c = char::from_u32(n)?;
        // As html-escape does: a NUL or a control character is not what the text meant.
        if c.is_control() && !c.is_whitespace() {
            return None;
        }
        let used = if s[end..].starts_with(';') {
            end + 1
        } else {
            end
        };
        Some((c, used))
    }

    /// Runs of whitespace become one space, or one `\n` when the run holds a line break.
    fn collapse_whitespace(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut run: Option<bool> = None; // Some(has a line break) while in a run
        for c in text.chars() {
            if c.is_whitespace() {
                let brk = is_line_break(c);
                run = Some(run.unwrap_or(false) || brk);
                continue;
            }
            if let Some(brk) = run.take() {
                out.push(if brk { '\n' } else { ' ' });
            }
            out.push(c);
        }
        if let Some(brk) = run {
            out.push(if brk { '\n' } else { ' ' });
        }
        out
    }

    fn is_line_break(c: char) -> bool {
        matches!(
            c,
            '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
        )
    }

    /// Unicode format characters (general category Cf: zero-width space, joiners, soft
    /// hyphen, bidi controls, tags…) and the other default-ignorable code points that
    /// render as nothing (variation selectors, the combining grapheme joiner, fillers).
    /// Written out (Unicode 15.1) rather than pulled from a property crate for one table.
    pub(super) fn is_invisible(c: char) -> bool {
        matches!(c as u32,
            0x00AD | 0x034F | 0x061C | 0x06DD | 0x070F | 0x08E2 | 0x115F..=0x1160
            | 0x0600..=0x0605 | 0x0890..=0x0891 | 0x17B4..=0x17B5 | 0x180B..=0x180F
            | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
            | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF9..=0xFFFB
            | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F | 0xE0100..=0xE01EF)
    }
}

const GUARD_HELP: &str = "e.g. deny_patterns: [\"(?i)project\\\\s+falcon\", { name: customer-id, pattern: \"CUST-[0-9]{6}\" }]";

/// Reads the guard keys of one mapping: `classification`, `deny_patterns`, `detectors`
/// at the top level, and `deny_patterns`/`detectors` inside `classification:` too (where
/// Genesis users put their rules). Problems become diagnostics; bad rules are left out.
pub fn parse(
    rel: &Path,
    loc: &YamlLocator,
    map: &yaml_serde::Mapping,
    diags: &mut Vec<Diagnostic>,
) -> GuardConfig {
    let errors_before = diags.iter().filter(|d| d.is_error()).count();
    let mut r = RuleReader {
        rel,
        loc,
        origin: Origin(rel.display().to_string()),
        patterns: 0,
        config: GuardConfig::default(),
        diags,
    };
    if let Some(c) = map.get("classification") {
        r.classification(c);
    }
    if let Some(v) = map.get("deny_patterns") {
        r.patterns(v, &["deny_patterns"]);
    }
    if let Some(v) = map.get("detectors") {
        r.detectors(v, &["detectors"]);
    }
    let RuleReader {
        config: mut g,
        diags,
        ..
    } = r;
    if diags.iter().filter(|d| d.is_error()).count() > errors_before {
        g.broken = Some(rel.display().to_string());
    }
    g
}

/// The guard keys of one file, being read.
struct RuleReader<'a> {
    rel: &'a Path,
    loc: &'a YamlLocator<'a>,
    origin: Origin,
    /// Patterns seen so far: an unnamed one is `deny_patterns[N]` across every list.
    patterns: usize,
    config: GuardConfig,
    diags: &'a mut Vec<Diagnostic>,
}

impl RuleReader<'_> {
    fn error(&mut self, path: &[&str], message: String, help: impl Into<String>) {
        let d = Diagnostic::error(self.rel, message)
            .at(self.loc.value(path))
            .help(help);
        self.diags.push(d);
    }

    /// `classification:`, whose keys are matched however they are cased or dashed.
    fn classification(&mut self, c: &Value) {
        let cm = match c {
            Value::Mapping(cm) => cm,
            Value::Null => return,
            _ => {
                self.diags.push(
                    Diagnostic::error(self.rel, "`classification` must be a mapping")
                        .at(self.loc.key(&["classification"]))
                        .help("e.g. classification: { SAFE_TO_SHARE: [release notes], NEVER_SHARE: [customer names] }"),
                );
                return;
            }
        };
        for (k, v) in cm {
            let Some(key) = k.as_str() else { continue };
            let path = ["classification", key];
            match key.to_ascii_uppercase().replace('-', "_").as_str() {
                "SAFE_TO_SHARE" | "SAFE" => {
                    self.config.classification.safe_to_share = self.string_list(v, &path)
                }
                "NEVER_SHARE" | "NEVER" => {
                    self.config.classification.never_share = self.string_list(v, &path)
                }
                "DENY_PATTERNS" => self.patterns(v, &path),
                "DETECTORS" => self.detectors(v, &path),
                // Other keys of a Genesis classification block (levels, notes) reach the
                // model with the loop's settings.
                _ => {}
            }
        }
    }

    fn string_list(&mut self, v: &Value, path: &[&str]) -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Sequence(seq) => seq
                .iter()
                .filter_map(crate::config_fields::yaml_scalar)
                .collect(),
            Value::Null => Vec::new(),
            _ => {
                self.error(
                    path,
                    format!("`{}` must be a list of texts", path.join(".")),
                    "e.g. NEVER_SHARE: [customer names, salaries]",
                );
                Vec::new()
            }
        }
    }

    /// `deny_patterns`: a list of regexes and `{ name, pattern }` (one alone is a list).
    fn patterns(&mut self, v: &Value, path: &[&str]) {
        let items: Vec<&Value> = match v {
            Value::Sequence(seq) => seq.iter().collect(),
            Value::String(_) | Value::Mapping(_) => vec![v],
            Value::Null => Vec::new(),
            _ => {
                let message = format!("`{}` must be a list of regexes", path.join("."));
                self.error(path, message, GUARD_HELP);
                return;
            }
        };
        for item in items {
            let i = self.patterns;
            self.patterns += 1;
            match pattern_rule(item, i, &path.join(".")) {
                Ok((name, re)) => self.config.rules.push(Rule {
                    name,
                    origin: Origin(format!("deny_patterns in {}", self.origin.0)),
                    kind: RuleKind::Pattern(re),
                }),
                Err((message, help)) => self.error(path, message, help),
            }
        }
    }

    /// `detectors`: names of built-in detectors (one alone is a list).
    fn detectors(&mut self, v: &Value, path: &[&str]) {
        let names: Vec<String> = match v {
            Value::String(s) => vec![s.clone()],
            Value::Sequence(seq) if seq.iter().all(|i| i.as_str().is_some()) => seq
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            Value::Null => Vec::new(),
            _ => {
                let message = format!("`{}` must be a list of detector names", path.join("."));
                self.error(
                    path,
                    message,
                    format!("e.g. detectors: [{}]", DETECTORS.join(", ")),
                );
                return;
            }
        };
        for n in names {
            let Some(d) = Detector::parse(&n) else {
                let help = match near_miss(&n, DETECTORS) {
                    Some(k) => format!(
                        "did you mean `{k}`? The detectors are: {}",
                        DETECTORS.join(", ")
                    ),
                    None => format!("the detectors are: {}", DETECTORS.join(", ")),
                };
                self.error(
                    path,
                    format!("unknown detector `{n}` in `{}`", path.join(".")),
                    help,
                );
                continue;
            };
            let rules = &mut self.config.rules;
            if rules
                .iter()
                .any(|r| matches!(r.kind, RuleKind::Detector(x, _) if x == d))
            {
                continue;
            }
            let res = d.compiled();
            rules.push(Rule {
                name: d.name().to_string(),
                origin: Origin(format!("detectors in {}", self.origin.0)),
                kind: RuleKind::Detector(d, res),
            });
        }
    }
}

/// The `i`-th pattern of the list at `path`: its name and regex, or what is wrong with it.
fn pattern_rule(
    item: &Value,
    i: usize,
    path: &str,
) -> Result<(String, Regex), (String, &'static str)> {
    let unnamed = || format!("deny_patterns[{i}]");
    let (name, pattern) = match item {
        Value::String(p) => (unnamed(), p.clone()),
        Value::Mapping(m) => {
            let pattern = m
                .get("pattern")
                .or_else(|| m.get("regex"))
                .and_then(Value::as_str);
            let Some(p) = pattern else {
                return Err((
                    format!("`{path}` entry {} has no `pattern`", i + 1),
                    GUARD_HELP,
                ));
            };
            let name = m.get("name").and_then(Value::as_str).map(str::to_string);
            (name.unwrap_or_else(unnamed), p.to_string())
        }
        _ => {
            return Err((
                format!(
                    "`{path}` entry {} must be a regex or {{ name, pattern }}",
                    i + 1
                ),
                GUARD_HELP,
            ))
        }
    };
    if pattern.is_empty() {
        return Err((
            format!("`{path}`: pattern `{name}` is empty"),
            "an empty pattern would match every text; remove it",
        ));
    }
    match regex::RegexBuilder::new(&pattern).size_limit(1 << 20).build() {
        Ok(re) if re.is_match("") => Err((
            format!("`{path}`: pattern `{name}` matches an empty text, so it would block every post"),
            "make it require at least one character, e.g. `a+` instead of `a*`",
        )),
        Ok(re) => Ok((name, re)),
        // The regex crate's message points at the bad part of the pattern.
        Err(e) => Err((
            format!("`{path}`: pattern `{name}` is not a valid regex: {}", e.to_string().trim()),
            "patterns use Rust regex syntax (https://docs.rs/regex); in YAML, quote the pattern and double each backslash inside double quotes",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(yaml: &str) -> (Guard, Vec<Diagnostic>) {
        let map: yaml_serde::Mapping = yaml_serde::from_str(yaml).expect("yaml");
        let loc = YamlLocator::new(yaml);
        let mut diags = Vec::new();
        let cfg = parse(Path::new("domains/x/config.yaml"), &loc, &map, &mut diags);
        (Guard::new(&GuardConfig::default(), Some(&cfg)), diags)
    }

    #[test]
    fn every_detector_finds_its_kind_and_leaves_ordinary_text_alone() {
        let (g, d) = guard("detectors: [email, phone, api_key, ip]");
        assert!(d.is_empty(), "{d:?}");
        let cases = [
            ("write to alice.smith@example.co.uk today", "email"),
            ("call me on +44 20 7946 0958", "phone"),
            ("call (555) 010-9999 after six", "phone"),
            (
                "the key is sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
                "api_key",
            ),
            ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "api_key"),
            ("AKIAIOSFODNN7EXAMPLE is the id", "api_key"),
            ("password = hunter2hunter2hunter2", "api_key"),
            ("xoxb-1234567890-abcdefghij", "api_key"),
            ("the box is at 10.0.12.7 now", "ip"),
            ("v6 2001:db8:85a3::8a2e:370:7334 is up", "ip"),
        ];
        for (text, rule) in cases {
            let b = g.check(text).expect_err(text);
            assert_eq!(b.rule, rule, "{text}");
            let red = g.redact(text);
            assert!(red.contains(&format!("[blocked: {rule}]")), "{red}");
        }
        for ok in [
            "The release is on 2026-11-21 at 09:30.",
            "Version 1.2.3 fixes std::fs::read and a::b.",
            "We shipped 42 features and closed 1,204 issues.",
            "See https://example.com/docs for more.",
            "Order 12345 costs 99.95 dollars.",
        ] {
            assert!(g.check(ok).is_ok(), "{ok}: {:?}", g.check(ok));
        }
    }

    #[test]
    fn custom_patterns_are_named_and_never_echo_the_match() {
        let (g, d) = guard(
            "classification:\n  NEVER_SHARE: [the falcon project]\n  deny_patterns: [\"(?i)falcon\"]\ndeny_patterns:\n  - { name: customer-id, pattern: \"CUST-[0-9]{6}\" }\n",
        );
        assert!(d.is_empty(), "{d:?}");
        let b = g.check("ticket for CUST-123456").expect_err("blocked");
        assert_eq!(b.rule, "customer-id");
        let msg = b.to_string();
        assert!(!msg.contains("123456"), "{msg}");
        assert!(msg.contains("domains/x/config.yaml"), "{msg}");
        let b = g.check("news on Project FALCON").expect_err("blocked");
        assert_eq!(b.rule, "deny_patterns[0]");
        assert_eq!(g.redact("a CUST-000001 b"), "a [blocked: customer-id] b");
        let rules = g.prompt_rules().expect("rules");
        assert!(rules.contains("the falcon project"), "{rules}");
    }

    #[test]
    fn normalising_undoes_invisible_characters_compatibility_forms_and_entities() {
        use super::normal::normalise;
        for (text, want) in [
            ("CUST-48\u{200B}2913", "CUST-482913"),
            ("CUST-48\u{00AD}29\u{200D}13\u{FEFF}", "CUST-482913"),
            ("CUST-\u{202E}482913\u{202C}", "CUST-482913"),
            ("CUST-\u{2060}482913\u{E0041}", "CUST-482913"),
            (
                "CUST-\u{FF14}\u{FF18}\u{FF12}\u{FF19}\u{FF11}\u{FF13}",
                "CUST-482913",
            ),
            ("\u{FF23}\u{FF35}\u{FF33}\u{FF34}-482913", "CUST-482913"),
            ("CUST&#45;482913", "CUST-482913"),
            ("&#67;&#x55;&#X53;&#x54;-482913", "CUST-482913"),
            ("&#67&#85STX", "CUSTX"),
            ("CUST&hyphen;482913", "CUST\u{2010}482913"),
            ("CUST&amp;#45;482913", "CUST-482913"),
            ("CUST\u{FF06}#45;482913", "CUST-482913"),
            ("a \t\u{00A0}\u{3000} b", "a b"),
            ("a  \r\n\t b\u{2028}c", "a\nb\nc"),
            (
                "x &#0; &#xFFFFFFFF; &#; &nosuch; AT&T",
                "x &#0; &#xFFFFFFFF; &#; &nosuch; AT&T",
            ),
        ] {
            assert_eq!(normalise(text), want, "{text:?}");
        }
    }

    #[test]
    fn a_rule_matches_through_every_disguise_and_redaction_removes_it() {
        let (g, d) = guard(
            "deny_patterns:\n  - { name: customer-id, pattern: \"CUST-[0-9]{6}\" }\n  - { name: codename, pattern: \"(?i)project falcon\" }\ndetectors: [api_key, email, phone]\n",
        );
        assert!(d.is_empty(), "{d:?}");
        for (text, rule, gone) in [
            ("ticket CUST-48\u{200B}2913 closed", "customer-id", "2913"),
            ("ticket CUST-48\u{00AD}2913 closed", "customer-id", "2913"),
            (
                "ticket CUST-\u{FF14}\u{FF18}\u{FF12}\u{FF19}\u{FF11}\u{FF13} closed",
                "customer-id",
                "\u{FF13}",
            ),
            ("ticket CUST&#45;482913 closed", "customer-id", "482913"),
            ("ticket CUST-482\n913 closed", "customer-id", "913"),
            ("news on project\nfalcon today", "codename", "falcon"),
            (
                "news on project\u{00A0}\u{00A0}falcon",
                "codename",
                "falcon",
            ),
            (
                "key sk-ant-api03-Zk9xQ2\nLmN4pR7sT1uV3wY5 ok",
                "api_key",
                "LmN4pR7s",
            ),
            (
                "key sk-ant-api03-Zk9\u{200B}xQ2LmN4pR7sT1uV3wY5",
                "api_key",
                "LmN4pR7s",
            ),
            ("mail alice&#64;example.org now", "email", "example.org"),
            ("C\u{0336}UST-482913", "customer-id", "482913"),
        ] {
            let b = g.check(text).expect_err(text);
            assert_eq!(b.rule, rule, "{text:?}");
            let red = g.redact(text);
            assert!(!red.contains(gone), "{text:?} -> {red:?}");
            assert!(red.contains(&format!("[blocked: {rule}")), "{red:?}");
            assert!(g.check(&red).is_ok(), "{red:?}");
        }
        // An exact match is still replaced in place; other lines are kept.
        assert_eq!(
            g.redact("ok line\nid CUST-482913 and CUST-48\u{200B}2914\nlast"),
            "ok line\n[blocked: customer-id]\nlast"
        );
        assert_eq!(
            g.redact("first\nid CUST-482\n913 here\nlast"),
            "first\n[blocked: customer-id]\n[blocked: customer-id]\nlast"
        );
        assert_eq!(
            g.redact("id CUST-482913 ok"),
            "id [blocked: customer-id] ok"
        );
        // Split over three lines: each line it touches goes, the others stay.
        assert_eq!(
            g.redact("keep\na CUST-4\n82\n913 b\nkeep too"),
            "keep\n[blocked: customer-id]\n[blocked: customer-id]\n[blocked: customer-id]\nkeep too"
        );
        // A split key whose first part alone already looks like a key: both parts go.
        let red = g.redact("key sk-ant-api03-Zk9xQ2\nLmN4pR7sT1uV3wY5 ok");
        assert_eq!(red, "[blocked: api_key]\n[blocked: api_key]");
        // Ordinary text is untouched by the extra spellings.
        for ok in [
            "Fish &amp; chips at 12:30",
            "caf\u{00E9} and cafe\u{0301}, \u{FB01}ne",
            "line one\nline two\n\n  indented",
            "The release is on 2026-11-21 at 09:30.",
        ] {
            assert!(g.check(ok).is_ok(), "{ok:?}");
            assert_eq!(g.redact(ok), ok);
        }
    }

    #[test]
    fn a_guard_with_an_unreadable_rule_lets_nothing_out() {
        let (g, d) = guard("detectors: [email]\ndeny_patterns: [\"(oops\"]\n");
        assert!(!d.is_empty());
        let b = g
            .check("an entirely harmless sentence")
            .expect_err("fails closed");
        assert_eq!(b.rule, "unreadable-rules");
        assert!(b.to_string().contains("loops check"), "{b}");
    }

    #[test]
    fn bad_patterns_and_detectors_are_reported_with_a_fix() {
        let (_, d) = guard("deny_patterns: [\"(unclosed\", \"a*\"]\ndetectors: [emial]\n");
        let text: Vec<String> = d.iter().map(|x| x.to_string()).collect();
        let all = text.join("\n");
        assert!(all.contains("not a valid regex"), "{all}");
        assert!(all.contains("matches an empty text"), "{all}");
        assert!(all.contains("did you mean `email`"), "{all}");
        assert!(d.iter().all(|x| x.line.is_some()), "{d:?}");
    }
}
