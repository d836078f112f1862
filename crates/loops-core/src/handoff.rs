//! Handoffs: the task files minions leave in `inbox/` for the main session, and the
//! Maildir-style protocol that moves them along. The file is the handoff; nothing about
//! it lives only in memory.
//!
//! ```text
//! inbox/.tmp/     being written (never read)
//! inbox/*.md      pending
//! inbox/active/   claimed by a main-session wake, or held until its checklist is ticked
//! inbox/done/YYYY-MM/   completed
//! inbox/rejected/ malformed or refused, each with NAME.error.md saying why
//! ```

use crate::layout::Layout;
use chrono::{DateTime, Utc};
use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A handoff younger than this that does not parse may still be being written in place
/// by someone who did not use the .tmp/ rename; it is looked at again later, not rejected.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Files left in `inbox/.tmp/` longer than this were abandoned by a crashed writer.
pub const STALE_TMP: Duration = Duration::from_secs(36 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("{0}")]
    Malformed(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no handoff `{0}` in the inbox")]
    NotFound(String),
    /// A sender or receiver that is no name: empty, or with a line break or other control
    /// character that would show as two lines in `loops inbox` and in the commit message.
    #[error("the handoff's `{field}` is {why}: {value:?}")]
    BadName {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("the draft {0} does not exist")]
    MissingDraft(String),
    #[error("the draft {0} is outside the workspace")]
    DraftOutside(String),
    /// Bigger than `limits.max_handoff_bytes`. The message carries the fix, because it is
    /// also the reason written beside a rejected handoff.
    #[error(
        "{what} is {size} bytes ({}), more than limits.max_handoff_bytes allows ({limit} bytes, {}): a handoff is a short note for the main session; put the long text in a draft (a file under drafts/, named in `draft:`), or raise limits.max_handoff_bytes in loops.yaml",
        crate::fsutil::human_bytes(*size),
        crate::fsutil::human_bytes(*limit)
    )]
    TooLarge { what: String, size: u64, limit: u64 },
    /// A tick named an item the checklist does not have.
    #[error("`{id}` has no checklist item `{item}`; {}", listing(.items))]
    NoItem {
        id: String,
        item: String,
        items: Vec<Item>,
    },
    /// A tick's text matched more than one item.
    #[error("`{item}` matches more than one checklist item of `{id}`; {}", listing(.items))]
    AmbiguousItem {
        id: String,
        item: String,
        items: Vec<Item>,
    },
}

/// A checklist as `loops inbox show` numbers it, for the messages that must list it.
fn listing(items: &[Item]) -> String {
    if items.is_empty() {
        return "it has no checklist items".into();
    }
    let lines: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, it)| format!("  {}. {}", i + 1, it.shown()))
        .collect();
    format!("its items are:\n{}", lines.join("\n"))
}

impl HandoffError {
    pub fn help(&self) -> Option<String> {
        match self {
            HandoffError::Malformed(_) => Some(
                "a handoff is markdown with YAML front matter between --- lines at the top; see docs/formats.md".into(),
            ),
            HandoffError::NotFound(_) => {
                Some("`loops inbox` lists the handoffs and their ids".into())
            }
            HandoffError::MissingDraft(_) | HandoffError::DraftOutside(_) => Some(
                "name a file inside the workspace, relative to its root (e.g. drafts/my-loop/2026-11-20.md)".into(),
            ),
            HandoffError::TooLarge { .. } => Some(
                "write the long text to drafts/<loop>/<name>.md and pass it with --draft; keep the body to what the main session must do".into(),
            ),
            HandoffError::NoItem { id, .. } => Some(format!(
                "name an item by its number (1 = first, as `loops inbox show {id}` lists them) or by its text or the start of it"
            )),
            HandoffError::AmbiguousItem { .. } => {
                Some("give its number, or more of its text".into())
            }
            HandoffError::BadName { .. } => Some(
                "`from` is the name of the loop or script handing off and `to` who receives it (main by default), each a name on one line, e.g. --from research-minion".into(),
            ),
            HandoffError::Io { .. } => None,
        }
    }
}

/// An empty `to` is allowed (nothing at all, not blanks): it is written as `main`.
fn check_name(field: &'static str, value: &str) -> Result<(), HandoffError> {
    let unset_to = field == "to" && value.is_empty();
    let why = if value.trim().is_empty() && !unset_to {
        "empty"
    } else if value.chars().any(char::is_control) {
        "not one line (it holds a line break or another control character)"
    } else {
        return Ok(());
    };
    Err(HandoffError::BadName {
        field,
        value: value.to_string(),
        why,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HandoffError + '_ {
    move |source| HandoffError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Urgent,
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "urgent" => Some(Priority::Urgent),
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// One checklist item (a markdown task-list item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub text: String,
    pub checked: bool,
    /// Marked "(optional)": not needed for completion.
    pub optional: bool,
}

impl Item {
    /// `[x] text`, as a checklist line shows it.
    pub fn shown(&self) -> String {
        format!("[{}] {}", if self.checked { 'x' } else { ' ' }, self.text)
    }
}

/// Which checklist item a tick names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemRef {
    /// Its number in the checklist, 1 for the first.
    Number(usize),
    /// Its text, or the start of it (case aside) when that start is unique.
    Text(String),
}

impl ItemRef {
    /// A number when `s` is digits only, else text.
    pub fn parse(s: &str) -> ItemRef {
        let t = s.trim();
        match t.parse::<usize>() {
            Ok(n) if t.bytes().all(|b| b.is_ascii_digit()) => ItemRef::Number(n),
            _ => ItemRef::Text(t.to_string()),
        }
    }

    fn shown(&self) -> String {
        match self {
            ItemRef::Number(n) => n.to_string(),
            ItemRef::Text(t) => t.clone(),
        }
    }
}

/// One checklist item a tick touched, by its number (1 = first) and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumberedItem {
    pub number: usize,
    pub text: String,
}

/// What [`tick`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ticks {
    /// The handoff's id.
    pub id: String,
    /// Items ticked now.
    pub ticked: Vec<NumberedItem>,
    /// Items named that were ticked already (not an error: the tick is what was wanted).
    pub already: Vec<NumberedItem>,
    /// Required items still not ticked afterwards.
    pub unticked: Vec<NumberedItem>,
}

/// A parsed handoff.
#[derive(Debug, Clone, Serialize)]
pub struct Handoff {
    pub id: String,
    pub from: String,
    pub to: String,
    pub created: Option<DateTime<Utc>>,
    pub run: Option<String>,
    pub priority: Priority,
    pub draft: Option<String>,
    pub due: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub flagged: Option<String>,
    pub title: String,
    /// The markdown after the front matter.
    pub body: String,
    pub checklist: Vec<Item>,
    /// A hash of the front matter as written, to match the runner's record of the writer.
    #[serde(skip)]
    pub front_hash: String,
    /// Who really wrote it, from the runner's record ([`Inbox::load`] fills it in): `None`
    /// for a file put into `inbox/` by other means, whose `from:` is only a claim.
    pub written_by: Option<String>,
}

impl Handoff {
    /// Who wrote it, as the main session and the history show it: the runner's record, or
    /// the file's own `from:` marked as unverified.
    pub fn author(&self) -> String {
        match &self.written_by {
            Some(w) => w.clone(),
            None => format!("unverified (claims `{}`)", self.from),
        }
    }

    /// The commit trailers that say who wrote it: `From` only when the runner knows.
    pub fn author_trailers(&self) -> Vec<(&'static str, String)> {
        match &self.written_by {
            Some(w) => vec![("From", w.clone())],
            None => vec![
                ("From", "unverified".into()),
                ("Claimed-From", self.from.clone()),
            ],
        }
    }

    /// Required items not yet ticked.
    pub fn unticked(&self) -> Vec<&Item> {
        self.checklist
            .iter()
            .filter(|i| !i.checked && !i.optional)
            .collect()
    }
}

/// Splits YAML front matter from the body. Only a `---` line at byte 0 opens it (a
/// horizontal rule later in a note is not front matter); `---` or `...` closes it.
pub fn split_front_matter(text: &str) -> Result<(Option<&str>, &str), String> {
    let t = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some(rest) = t
        .strip_prefix("---\n")
        .or_else(|| t.strip_prefix("---\r\n"))
    else {
        return Ok((None, t));
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed == "..." {
            return Ok((Some(&rest[..offset]), &rest[offset + line.len()..]));
        }
        offset += line.len();
    }
    Err("the front matter is not closed: no `---` line ends it (a half-written file?)".into())
}

/// Parses a handoff file's text. `stem` (the file name without `.md`) is the id when
/// the front matter gives none, so notes written by hand in an editor work too.
pub fn parse(text: &str, stem: &str) -> Result<Handoff, HandoffError> {
    let bad = |m: String| HandoffError::Malformed(m);
    let (fm, body) = split_front_matter(text).map_err(bad)?;
    let mut h = Handoff {
        id: stem.to_string(),
        from: "person".into(),
        to: "main".into(),
        created: None,
        run: None,
        priority: Priority::Normal,
        draft: None,
        due: None,
        tags: Vec::new(),
        flagged: None,
        title: String::new(),
        body: body.to_string(),
        checklist: Vec::new(),
        front_hash: front_hash(fm.unwrap_or("")),
        written_by: None,
    };
    if let Some(fm) = fm {
        FrontMatter::parse(fm)?.apply(&mut h)?;
    }
    let (title, checklist) = read_body(body);
    h.title = title.unwrap_or_else(|| h.id.clone());
    h.checklist = checklist;
    Ok(h)
}

/// A handoff's front matter: the `key: value` mapping above its body.
struct FrontMatter(yaml_serde::Mapping);

impl FrontMatter {
    fn parse(fm: &str) -> Result<FrontMatter, HandoffError> {
        let bad = |m: String| HandoffError::Malformed(m);
        let value: yaml_serde::Value = if fm.trim().is_empty() {
            yaml_serde::Value::Null
        } else {
            yaml_serde::from_str(fm)
                .map_err(|e| bad(format!("the front matter is not valid YAML: {e}")))?
        };
        match value {
            yaml_serde::Value::Mapping(m) => Ok(FrontMatter(m)),
            yaml_serde::Value::Null => Ok(FrontMatter(yaml_serde::Mapping::new())),
            _ => Err(bad(
                "the front matter must be a mapping of `key: value` lines".into(),
            )),
        }
    }

    /// Sets what the front matter gives over the defaults `h` holds.
    fn apply(&self, h: &mut Handoff) -> Result<(), HandoffError> {
        let bad = |m: String| HandoffError::Malformed(m);
        if let Some(id) = self.string("id")? {
            if !valid_id(&id) {
                return Err(bad(format!(
                    "`id: {id}` may hold only letters, digits, `-`, `_` and `.`"
                )));
            }
            h.id = id;
        }
        if let Some(v) = self.string("from")? {
            h.from = v;
        }
        if let Some(v) = self.string("to")? {
            h.to = v;
        }
        h.created = self.time("created")?;
        h.due = self.time("due")?;
        h.run = self.string("run")?;
        h.draft = self.string("draft")?;
        h.flagged = self.string("flagged")?;
        if let Some(p) = self.string("priority")? {
            h.priority = Priority::parse(&p).ok_or_else(|| {
                bad(format!(
                    "`priority: {p}` must be one of urgent, high, normal, low"
                ))
            })?;
        }
        h.tags = self.tags()?;
        Ok(())
    }

    fn string(&self, key: &str) -> Result<Option<String>, HandoffError> {
        match self.0.get(key) {
            None | Some(yaml_serde::Value::Null) => Ok(None),
            Some(yaml_serde::Value::String(s)) => Ok(Some(s.clone())),
            Some(yaml_serde::Value::Number(n)) if key == "id" || key == "run" => {
                Ok(Some(n.to_string()))
            }
            Some(_) => Err(HandoffError::Malformed(format!("`{key}` must be a string"))),
        }
    }

    /// An RFC 3339 time, or a date (taken as midnight UTC).
    fn time(&self, key: &str) -> Result<Option<DateTime<Utc>>, HandoffError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => DateTime::parse_from_rfc3339(s.trim())
                .map(|t| Some(t.with_timezone(&Utc)))
                .or_else(|_| {
                    chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                        .map(|d| d.and_hms_opt(0, 0, 0).map(|n| n.and_utc()))
                })
                .map_err(|_| {
                    HandoffError::Malformed(format!(
                        "`{key}: {s}` is not a date and time (write RFC 3339, e.g. 2026-11-20T09:30:00Z)"
                    ))
                }),
        }
    }

    /// `tags`: a list of strings, or one comma-separated string.
    fn tags(&self) -> Result<Vec<String>, HandoffError> {
        let bad = || HandoffError::Malformed("`tags` must be a list of strings".into());
        match self.0.get("tags") {
            None | Some(yaml_serde::Value::Null) => Ok(Vec::new()),
            Some(yaml_serde::Value::Sequence(seq)) => seq
                .iter()
                .map(|t| t.as_str().map(str::to_string).ok_or_else(bad))
                .collect(),
            Some(yaml_serde::Value::String(s)) => {
                Ok(s.split(',').map(|t| t.trim().to_string()).collect())
            }
            Some(_) => Err(bad()),
        }
    }
}

fn front_hash(front: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(front.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The runner's record of who wrote a handoff: kept in `.loops/inbox/writers/<id>.json`
/// (a place no model writes), matched to the file by the hash of its front matter, which
/// ticking items and completing never change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriterRecord {
    pub from: String,
    pub run: Option<String>,
    pub front_hash: String,
}

/// The first heading and the task-list items of a markdown body.
fn read_body(body: &str) -> (Option<String>, Vec<Item>) {
    let parser = Parser::new_ext(body, Options::ENABLE_TASKLISTS);
    let mut title: Option<String> = None;
    let mut in_heading = false;
    let mut heading = String::new();
    let mut items: Vec<Item> = Vec::new();
    // One entry per list item being read, innermost last: the index in `items` of its
    // task, or None for a plain bullet. Nested items must not steal their parent's
    // place: a parent task with sub-tasks is an item too, in document order.
    let mut open: Vec<Option<usize>> = Vec::new();
    for ev in parser {
        match ev {
            Event::Start(Tag::Heading { .. }) if title.is_none() => {
                in_heading = true;
                heading.clear();
            }
            Event::End(TagEnd::Heading(_)) if in_heading => {
                in_heading = false;
                title = Some(heading.trim().to_string());
            }
            Event::Start(Tag::Item) => open.push(None),
            Event::End(TagEnd::Item) => {
                if let Some(Some(i)) = open.pop() {
                    let it = &mut items[i];
                    it.text = it.text.trim().to_string();
                    it.optional = it.text.to_ascii_lowercase().contains("(optional)");
                }
            }
            Event::TaskListMarker(checked) => {
                if let Some(top) = open.last_mut() {
                    items.push(Item {
                        text: String::new(),
                        checked,
                        optional: false,
                    });
                    *top = Some(items.len() - 1);
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if in_heading {
                    heading.push_str(&t);
                } else if let Some(Some(i)) = open.last() {
                    items[*i].text.push_str(&t);
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if let Some(Some(i)) = open.last() {
                    items[*i].text.push(' ');
                }
            }
            _ => {}
        }
    }
    (title, items)
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// What to write in a new handoff.
#[derive(Debug, Clone, Default)]
pub struct NewHandoff {
    pub from: String,
    pub to: String,
    pub title: String,
    pub priority: Priority,
    pub run: Option<String>,
    pub draft: Option<String>,
    pub due: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub flagged: Option<String>,
    pub body: String,
    pub items: Vec<String>,
}

/// Renders a new handoff; returns (id, text).
pub fn render(n: &NewHandoff, now: DateTime<Utc>) -> (String, String) {
    let from_slug: String = n
        .from
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let rand = ulid::Ulid::new().to_string();
    let id = format!(
        "{}-{}-{}",
        now.format("%Y%m%dT%H%M%S%3fZ"),
        from_slug,
        rand[rand.len() - 6..].to_ascii_lowercase()
    );
    let mut fm = yaml_serde::Mapping::new();
    let mut put = |k: &str, v: yaml_serde::Value| {
        fm.insert(yaml_serde::Value::String(k.into()), v);
    };
    let s = |v: &str| yaml_serde::Value::String(v.to_string());
    put("id", s(&id));
    put("from", s(&n.from));
    put("to", s(if n.to.is_empty() { "main" } else { &n.to }));
    put(
        "created",
        s(&now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    if let Some(r) = &n.run {
        put("run", s(r));
    }
    put("priority", s(n.priority.as_str()));
    if let Some(d) = &n.draft {
        put("draft", s(d));
    }
    if let Some(d) = &n.due {
        put(
            "due",
            s(&d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        );
    }
    if !n.tags.is_empty() {
        put(
            "tags",
            yaml_serde::Value::Sequence(n.tags.iter().map(|t| s(t)).collect()),
        );
    }
    if let Some(f) = &n.flagged {
        put("flagged", s(f));
    }
    let yaml = yaml_serde::to_string(&fm).unwrap_or_default();
    let mut text = format!("---\n{yaml}---\n# {}\n", n.title.trim());
    if !n.body.trim().is_empty() {
        text.push('\n');
        text.push_str(n.body.trim_end());
        text.push('\n');
    }
    if !n.items.is_empty() {
        text.push('\n');
        for i in &n.items {
            text.push_str(&format!("- [ ] {}\n", i.trim()));
        }
    }
    (id, text)
}

/// Cuts a handoff's body so the whole handoff fits in `limit` bytes, with a line saying
/// how much was cut. For handoffs the runner writes itself (a failed delivery carries the
/// text it could not send): losing the handoff would lose more than losing its middle.
pub fn fit_body(n: &mut NewHandoff, limit: u64) {
    let whole = render(n, Utc::now()).1.len() as u64;
    if whole <= limit {
        return;
    }
    // Room for the note, and for the id and date, which differ from one render to the
    // next: 256 bytes is more than both together.
    let rest = whole - n.body.len() as u64;
    let mut keep = (limit.saturating_sub(rest + 256) as usize).min(n.body.len());
    while !n.body.is_char_boundary(keep) {
        keep -= 1;
    }
    let cut = n.body.len() - keep;
    n.body.truncate(keep);
    n.body.push_str(&format!(
        "\n\n[… {cut} bytes cut here: a handoff may be at most {limit} bytes (limits.max_handoff_bytes)]\n"
    ));
}

/// The inbox folders of a workspace.
#[derive(Debug, Clone)]
pub struct Inbox {
    pub root: PathBuf,
    pub workspace: PathBuf,
    /// The largest handoff read or written (`limits.max_handoff_bytes`).
    max_bytes: u64,
}

/// Where a handoff is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Pending,
    Active,
    Done,
    Rejected,
}

impl Inbox {
    /// The inbox of the workspace at `workspace`, with the default size limit; use
    /// [`Inbox::of`] where the workspace's settings are at hand.
    pub fn new(workspace: &Path) -> Self {
        Inbox {
            root: workspace.join("inbox"),
            workspace: workspace.to_path_buf(),
            max_bytes: crate::workspace::DEFAULT_MAX_HANDOFF_BYTES,
        }
    }

    /// The inbox of a workspace, with its `limits.max_handoff_bytes`.
    pub fn of(ws: &crate::workspace::Workspace) -> Self {
        Inbox {
            max_bytes: ws.settings.max_handoff_bytes,
            ..Inbox::new(&ws.root)
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Reads and parses a handoff file, refusing one bigger than the limit without
    /// reading it, and says who really wrote it (see [`Handoff::written_by`]).
    pub fn load(&self, path: &Path) -> Result<Handoff, HandoffError> {
        let mut h = load_limited(path, self.max_bytes)?;
        h.written_by = self.writer_of(&h);
        Ok(h)
    }

    fn writers_dir(&self) -> PathBuf {
        Layout::of(&self.workspace).inbox_writers_dir()
    }

    /// The runner's record for `id`, whatever front matter it matches.
    fn writer_record(&self, id: &str) -> Option<WriterRecord> {
        if !valid_id(id) {
            return None;
        }
        let text = std::fs::read_to_string(self.writers_dir().join(format!("{id}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The recorded writer of `h`, if the record matches this very front matter.
    pub fn writer_of(&self, h: &Handoff) -> Option<String> {
        if !valid_id(&h.id) {
            return None;
        }
        let text =
            std::fs::read_to_string(self.writers_dir().join(format!("{}.json", h.id))).ok()?;
        let rec: WriterRecord = serde_json::from_str(&text).ok()?;
        (rec.front_hash == h.front_hash).then_some(rec.from)
    }

    /// Records that the runner itself wrote `text` as `id`, for `from`.
    fn record_writer(
        &self,
        id: &str,
        from: &str,
        run: Option<&str>,
        text: &str,
    ) -> Result<(), HandoffError> {
        let front = split_front_matter(text)
            .ok()
            .and_then(|(f, _)| f)
            .unwrap_or("");
        let rec = WriterRecord {
            from: from.to_string(),
            run: run.map(str::to_string),
            front_hash: front_hash(front),
        };
        let dir = self.writers_dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{id}.json"));
        let bytes = serde_json::to_vec(&rec).unwrap_or_default();
        crate::fsutil::atomic_write(&path, &bytes).map_err(io(&path))
    }

    /// Refuses a handoff text of `size` bytes when it is over the limit.
    pub fn check_size(&self, what: &str, size: u64) -> Result<(), HandoffError> {
        if size > self.max_bytes {
            return Err(HandoffError::TooLarge {
                what: what.to_string(),
                size,
                limit: self.max_bytes,
            });
        }
        Ok(())
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(".tmp")
    }
    pub fn active_dir(&self) -> PathBuf {
        self.root.join("active")
    }
    pub fn done_root(&self) -> PathBuf {
        self.root.join("done")
    }
    pub fn rejected_dir(&self) -> PathBuf {
        self.root.join("rejected")
    }

    /// Checks a draft path a handoff names: relative to the workspace, inside it, existing.
    pub fn check_draft(&self, draft: &str) -> Result<(), HandoffError> {
        let p = Path::new(draft);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(HandoffError::DraftOutside(draft.to_string()));
        }
        let full = self.workspace.join(p);
        let canon = full
            .canonicalize()
            .map_err(|_| HandoffError::MissingDraft(draft.to_string()))?;
        let root = self
            .workspace
            .canonicalize()
            .unwrap_or(self.workspace.clone());
        if !canon.starts_with(&root) {
            return Err(HandoffError::DraftOutside(draft.to_string()));
        }
        if !canon.is_file() {
            return Err(HandoffError::MissingDraft(draft.to_string()));
        }
        Ok(())
    }

    /// Writes a handoff Maildir-style: `.tmp/`, fsync, rename into `inbox/`. At the rename
    /// the handoff exists; nobody ever sees half of it. Returns (id, path, text).
    pub fn create(
        &self,
        n: &NewHandoff,
        now: DateTime<Utc>,
    ) -> Result<(String, PathBuf, String), HandoffError> {
        self.create_with(n, now, |_, _, _| {})
    }

    /// [`Inbox::create`], calling `before_publish(id, final path, text)` after the file is
    /// safely in `.tmp/` and before the rename delivers it. The creation commit is made
    /// there: once the file is in `inbox/` the main session may complete it at once, and
    /// the history must show it handed off before it shows it closed.
    pub fn create_with(
        &self,
        n: &NewHandoff,
        now: DateTime<Utc>,
        before_publish: impl FnOnce(&str, &Path, &str),
    ) -> Result<(String, PathBuf, String), HandoffError> {
        check_name("from", &n.from)?;
        check_name("to", &n.to)?;
        if let Some(d) = &n.draft {
            self.check_draft(d)?;
        }
        let (id, text) = render(n, now);
        self.check_size("the handoff", text.len() as u64)?;
        // Recorded before the file exists, so no reader ever sees it unattributed.
        self.record_writer(&id, &n.from, n.run.as_deref(), &text)?;
        let tmp = self.tmp_dir().join(format!("{id}.md"));
        // A handoff that is not delivered leaves nothing behind: no empty or half file in
        // .tmp/ (where it would sit until a daemon's sweep a day later) and no record of
        // a writer for a handoff that does not exist.
        let undo = |e: HandoffError| {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(self.writers_dir().join(format!("{id}.json")));
            e
        };
        std::fs::create_dir_all(self.tmp_dir())
            .map_err(io(&self.tmp_dir()))
            .map_err(undo)?;
        std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(io(&tmp))
            .map_err(undo)?;
        let dest = self.root.join(format!("{id}.md"));
        before_publish(&id, &dest, &text);
        std::fs::rename(&tmp, &dest)
            .map_err(io(&dest))
            .map_err(undo)?;
        if let Ok(d) = std::fs::File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok((id, dest, text))
    }

    /// Pending handoffs: every `*.md` directly in `inbox/`, oldest name first.
    pub fn pending(&self) -> Vec<PathBuf> {
        md_files(&self.root)
    }

    pub fn active(&self) -> Vec<PathBuf> {
        md_files(&self.active_dir())
    }

    pub fn rejected(&self) -> Vec<PathBuf> {
        md_files(&self.rejected_dir())
            .into_iter()
            .filter(|p| !p.to_string_lossy().ends_with(".error.md"))
            .collect()
    }

    /// Done handoffs, newest month first.
    pub fn done(&self) -> Vec<PathBuf> {
        let mut months: Vec<PathBuf> = std::fs::read_dir(self.done_root())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        months.sort();
        months.reverse();
        months.iter().flat_map(|m| md_files(m)).collect()
    }

    /// Claims a pending handoff: a rename into `active/`. Exactly one claimer wins;
    /// `None` when someone else got there first.
    pub fn claim(&self, pending: &Path) -> Option<PathBuf> {
        let name = pending.file_name()?;
        let _ = std::fs::create_dir_all(self.active_dir());
        let dest = self.active_dir().join(name);
        if dest.exists() {
            return None;
        }
        std::fs::rename(pending, &dest).ok().map(|()| dest)
    }

    /// Claims a pending handoff under an id no other handoff has: when its id (or file
    /// name) is already taken in `taken` (see [`Inbox::taken_ids`]), it is claimed as
    /// `<id>-2`, `-3`, …, and its front matter says so, so `loops inbox`, the main session
    /// and the completion all see the new id and no file in `done/` is ever overwritten.
    /// `None` when someone else claimed it first. The id claimed is added to `taken`.
    pub fn claim_unique(
        &self,
        pending: &Path,
        h: &Handoff,
        taken: &mut std::collections::HashSet<String>,
    ) -> Result<Option<(PathBuf, Handoff)>, HandoffError> {
        let stem = pending
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if !taken.contains(&h.id) && !taken.contains(stem) {
            let Some(active) = self.claim(pending) else {
                return Ok(None);
            };
            taken.insert(h.id.clone());
            taken.insert(stem.to_string());
            return Ok(Some((active, h.clone())));
        }
        let new_id = self.free_id(&h.id, taken);
        let text = std::fs::read_to_string(pending).map_err(io(pending))?;
        let rewritten = with_new_id(&text, h, &new_id)?;
        let _ = std::fs::create_dir_all(self.active_dir());
        let dest = self.active_dir().join(format!("{new_id}.md"));
        // The same one-winner rename as a plain claim, under the new name; the new id is
        // written in afterwards, where no other claimer looks.
        if dest.exists() || std::fs::rename(pending, &dest).is_err() {
            return Ok(None);
        }
        taken.insert(new_id.clone());
        if rewritten != text {
            self.write_via_tmp(&dest, rewritten.as_bytes())?;
        }
        let mut renamed = self.load(&dest)?;
        if let Some(from) = &h.written_by {
            let run = self.writer_record(&h.id).and_then(|r| r.run);
            self.record_writer(&new_id, from, run.as_deref(), &rewritten)?;
            renamed.written_by = Some(from.clone());
        }
        tracing::info!(handoff = %new_id, "the id `{}` was already used by another handoff: this one is `{new_id}`", h.id);
        Ok(Some((dest, renamed)))
    }

    /// Every id a new handoff must not take: the file names in `active/` and `done/`
    /// (the runner names each file after its id) and the ids inside `active/`. Files in
    /// `done/` are not opened, so the check stays cheap however long the history grows.
    pub fn taken_ids(&self) -> std::collections::HashSet<String> {
        let mut taken = std::collections::HashSet::new();
        for p in self.active() {
            if let Ok(h) = self.load(&p) {
                taken.insert(h.id);
            }
            taken.extend(stem_of(&p));
        }
        taken.extend(self.done().iter().filter_map(|p| stem_of(p)));
        taken
    }

    /// `<id>-2`, `-3`, …: the first not in `taken` and not a pending file's name.
    fn free_id(&self, id: &str, taken: &std::collections::HashSet<String>) -> String {
        // An id near the length limit is cut so that the suffix still fits.
        let base: String = id.chars().take(190).collect();
        (2u64..)
            .map(|n| format!("{base}-{n}"))
            .find(|c| !taken.contains(c) && !self.root.join(format!("{c}.md")).exists())
            .unwrap_or_else(|| format!("{base}-{}", ulid::Ulid::new()))
    }

    /// Returns an active handoff to the pending inbox (its wake died). A pending file of
    /// the same name is never overwritten: the handoff comes back as `<name>-2.md`, … .
    pub fn release(&self, active: &Path) -> Option<PathBuf> {
        self.try_release(active).ok()
    }

    /// [`Inbox::release`], saying why it could not be moved.
    pub fn try_release(&self, active: &Path) -> std::io::Result<PathBuf> {
        let name = active.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a handoff's file name",
            )
        })?;
        let dest = free_path(&self.root, name);
        std::fs::rename(active, &dest).map(|()| dest)
    }

    /// `inbox/<name>` when no file is there: the pending path a claimed handoff came from,
    /// for a commit to record it gone. A file that is there is another handoff that
    /// arrived meanwhile under the same name, and is not this commit's to take.
    pub fn gone_pending(&self, name: &std::ffi::OsStr) -> Option<PathBuf> {
        let p = self.root.join(name);
        (std::fs::symlink_metadata(&p).is_err()).then_some(p)
    }

    /// Every path a move within the inbox may have left uncommitted, for a commit that
    /// brings the history level with the disk after a runner died between a move and its
    /// commit: each file in `inbox/`, `active/`, `rejected/` and the last two months of
    /// `done/`, with the places it may have come from that are empty now. Paths already
    /// as HEAD has them cost the commit nothing.
    pub fn unsettled_paths(&self, now: DateTime<Utc>) -> Vec<PathBuf> {
        let months = [now, now - chrono::Duration::days(31)]
            .map(|t| self.done_root().join(t.format("%Y-%m").to_string()));
        let mut files: Vec<PathBuf> = self.pending();
        files.extend(md_files(&self.active_dir()));
        files.extend(md_files(&self.rejected_dir()));
        for m in &months {
            files.extend(md_files(m));
        }
        let mut out = Vec::new();
        for f in files {
            if let Some(name) = f.file_name() {
                for from in [self.root.join(name), self.active_dir().join(name)] {
                    if from != f && std::fs::symlink_metadata(&from).is_err() {
                        out.push(from);
                    }
                }
            }
            out.push(f);
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether a pending file may still be being written in place (someone who did not use
    /// the `.tmp/` rename): a file without front matter parses, so a half-written one would
    /// be claimed as it is. The kernel says whether any process has it open for writing: a
    /// read lease (`F_SETLEASE`) is refused then. Where a lease cannot be asked for (the
    /// file is another user's, a filesystem without leases), a file counts as written until
    /// it is [`SETTLE`] old. A file that arrived by rename is complete at once.
    pub fn still_written(&self, path: &Path) -> bool {
        let young = || {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < SETTLE)
        };
        match open_for_writing(path) {
            Some(open) => open,
            None => young(),
        }
    }

    /// The note written beside a rejected handoff (`NAME.error.md`).
    pub fn error_note(&self, rejected: &Path) -> PathBuf {
        let stem = stem_of(rejected).unwrap_or_default();
        self.rejected_dir().join(format!("{stem}.error.md"))
    }

    /// Writes `dest` atomically with its temporary file in `inbox/.tmp/` (the same
    /// filesystem), not beside `dest`: a crash mid-write then leaves litter only where
    /// `clean_tmp` sweeps it, never a stray dot-file in `done/` or `rejected/`.
    fn write_via_tmp(&self, dest: &Path, bytes: &[u8]) -> Result<(), HandoffError> {
        let tmp_dir = self.tmp_dir();
        std::fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("handoff");
        let tmp = tmp_dir.join(format!(
            ".{name}.{}.{}",
            std::process::id(),
            ulid::Ulid::new()
        ));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        if let Err(e) = std::fs::rename(&tmp, dest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(dest)(e));
        }
        if let Some(d) = dest.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Moves a handoff to `done/YYYY-MM/`, appending a completion note to it.
    pub fn complete(
        &self,
        path: &Path,
        summary: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<PathBuf, HandoffError> {
        let name = path
            .file_name()
            .ok_or_else(|| HandoffError::NotFound(path.display().to_string()))?;
        let dir = self.done_root().join(now.format("%Y-%m").to_string());
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let ends_with_newline = last_byte(path)
            .map_err(io(path))?
            .is_none_or(|b| b == b'\n');
        // A rename, then one appended write: no copy, no new file. A crash in between
        // leaves a done handoff without its completion note, never a lost or double one.
        // A done handoff of the same name is never replaced (ids are made unique when
        // claimed; a file completed straight from inbox/ by hand may not have been).
        let dest = free_path(&dir, name.to_str().unwrap_or("handoff.md"));
        std::fs::rename(path, &dest).map_err(io(&dest))?;
        let note = format!(
            "{}\n## Completed {}\n\n{}\n",
            if ends_with_newline { "" } else { "\n" },
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            summary
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .unwrap_or("(no summary)")
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&dest)
            .map_err(io(&dest))?;
        f.write_all(note.as_bytes()).map_err(io(&dest))?;
        Ok(dest)
    }

    /// Moves a handoff to `rejected/` with `NAME.error.md` beside it. The file itself is
    /// kept as it was: a malformed handoff is never deleted.
    pub fn reject(
        &self,
        path: &Path,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<PathBuf, HandoffError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| HandoffError::NotFound(path.display().to_string()))?
            .to_string();
        std::fs::create_dir_all(self.rejected_dir()).map_err(io(&self.rejected_dir()))?;
        let mut dest = self.rejected_dir().join(&name);
        let mut n = 1;
        while dest.exists() {
            dest = self.rejected_dir().join(format!("{n}-{name}"));
            n += 1;
        }
        let stem = dest
            .file_name()
            .and_then(|n| n.to_str())
            .map(|s| s.strip_suffix(".md").unwrap_or(s).to_string())
            .unwrap_or_default();
        let note = format!(
            "# Why {name} was rejected\n\n{reason}\n\nRejected {} from {}.\n\nFix the file and move it back into inbox/ to have it processed, or delete both files.\n",
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            path.parent().map(|p| p.display().to_string()).unwrap_or_default()
        );
        let err_path = self.rejected_dir().join(format!("{stem}.error.md"));
        self.write_via_tmp(&err_path, note.as_bytes())?;
        std::fs::rename(path, &dest).map_err(io(path))?;
        Ok(dest)
    }

    /// The reason recorded beside a rejected handoff.
    pub fn rejection_reason(&self, rejected: &Path) -> Option<String> {
        let stem = rejected.file_stem()?.to_str()?;
        let text =
            std::fs::read_to_string(self.rejected_dir().join(format!("{stem}.error.md"))).ok()?;
        text.lines()
            .skip(1)
            .find(|l| !l.trim().is_empty())
            .map(str::to_string)
    }

    /// Removes files abandoned in `.tmp/` by crashed writers.
    pub fn clean_tmp(&self, now: std::time::SystemTime) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(self.tmp_dir())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP);
            if old && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Finds a handoff by id (or file name) anywhere in the inbox.
    pub fn find(&self, id: &str) -> Option<(Stage, PathBuf)> {
        let want = id.strip_suffix(".md").unwrap_or(id);
        let stages = [
            (Stage::Pending, self.pending()),
            (Stage::Active, self.active()),
            (Stage::Rejected, self.rejected()),
            (Stage::Done, self.done()),
        ];
        // File names are ids for every handoff the runner writes; a hand-written file's
        // front matter may name another id, so look inside too.
        for (stage, files) in &stages {
            for f in files {
                if f.file_stem().and_then(|s| s.to_str()) == Some(want) {
                    return Some((*stage, f.clone()));
                }
            }
        }
        for (stage, files) in &stages {
            for f in files {
                if let Ok(h) = self.load(f) {
                    if h.id == want {
                        return Some((*stage, f.clone()));
                    }
                }
            }
        }
        None
    }
}

/// The last byte of a file, read without reading the rest.
fn last_byte(path: &Path) -> std::io::Result<Option<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(None);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(Some(b[0]))
}

/// Ticks checklist items of the handoff at `path`: those `which` names, or with `all`
/// every item. Each `[ ]` becomes `[x]` by writing that one byte where it stands, through
/// the file already open: nothing else in the file moves (the front matter, and so the
/// runner's record of the writer, stays as it was), two tickers never undo each other's
/// ticks as whole-file rewrites would, and a rename meanwhile (a claim, a completion) takes
/// the tick along instead of leaving a second copy at the old name. Items are numbered as
/// [`parse`] lists them, nested ones included, in document order.
pub fn tick(path: &Path, which: &[ItemRef], all: bool, limit: u64) -> Result<Ticks, HandoffError> {
    use std::os::unix::fs::FileExt;
    let (f, bytes) = open_to_tick(path, limit)?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("handoff");
    let h = parse_bytes(bytes.clone(), stem)?;
    let text = String::from_utf8_lossy(&bytes);
    let (_, body) = split_front_matter(&text).map_err(HandoffError::Malformed)?;
    let body_at = body.as_ptr() as usize - text.as_ptr() as usize;
    let marks = task_marks(body);
    if marks.len() != h.checklist.len() {
        return Err(HandoffError::Malformed(format!(
            "{}: its checklist could not be located in the file; tick it in an editor",
            path.display()
        )));
    }
    let items = &h.checklist;
    let chosen = chosen_items(&h, which, all)?;
    let numbered = |i: usize| NumberedItem {
        number: i + 1,
        text: items[i].text.clone(),
    };
    let mut out = Ticks {
        id: h.id.clone(),
        ..Default::default()
    };
    for &i in &chosen {
        if items[i].checked {
            out.already.push(numbered(i));
            continue;
        }
        let at = (body_at + marks[i]) as u64;
        f.write_all_at(b"x", at).map_err(io(path))?;
        out.ticked.push(numbered(i));
    }
    if !out.ticked.is_empty() {
        f.sync_data().map_err(io(path))?;
    }
    out.unticked = (0..items.len())
        .filter(|i| !items[*i].checked && !items[*i].optional && !chosen.contains(i))
        .map(numbered)
        .collect();
    Ok(out)
}

/// The handoff file at `path` opened for writing its ticks in place, and what it holds
/// (at most `limit` bytes).
fn open_to_tick(path: &Path, limit: u64) -> Result<(std::fs::File, Vec<u8>), HandoffError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link, and never a pipe or device put where a handoff was.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(io(path))?;
    let meta = f.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(HandoffError::Malformed(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let size = meta.len();
    if size > limit {
        return Err(HandoffError::TooLarge {
            what: "the file".into(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    (&mut f)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > limit {
        return Err(HandoffError::TooLarge {
            what: "the file".into(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok((f, bytes))
}

/// The indexes of the checklist items to tick: every one with `all`, and those `which`
/// names, each once, in the order given.
fn chosen_items(h: &Handoff, which: &[ItemRef], all: bool) -> Result<Vec<usize>, HandoffError> {
    let items = &h.checklist;
    let mut chosen: Vec<usize> = Vec::new();
    if all {
        chosen.extend(0..items.len());
    }
    for r in which {
        let i = find_item(items, r).map_err(|ambiguous| {
            let (id, item, items) = (h.id.clone(), r.shown(), items.clone());
            if ambiguous {
                HandoffError::AmbiguousItem { id, item, items }
            } else {
                HandoffError::NoItem { id, item, items }
            }
        })?;
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    Ok(chosen)
}

/// The byte offset, in `body`, of the character between the brackets of each task-list
/// marker, in the order [`read_body`] lists the items (the same parser, the same events).
fn task_marks(body: &str) -> Vec<usize> {
    Parser::new_ext(body, Options::ENABLE_TASKLISTS)
        .into_offset_iter()
        .filter_map(|(ev, range)| match ev {
            Event::TaskListMarker(_) => {
                let open = body.get(range.clone())?.find('[')?;
                Some(range.start + open + 1)
            }
            _ => None,
        })
        .collect()
}

/// The index of the item `r` names. `Err(true)`: the text matches more than one item;
/// `Err(false)`: none. Exact text wins over a prefix, so one item's text may begin
/// another's.
fn find_item(items: &[Item], r: &ItemRef) -> Result<usize, bool> {
    let one = |hits: Vec<usize>| match hits.as_slice() {
        [i] => Some(Ok(*i)),
        [] => None,
        _ => Some(Err(true)),
    };
    match r {
        ItemRef::Number(n) if (1..=items.len()).contains(n) => Ok(n - 1),
        ItemRef::Number(_) => Err(false),
        ItemRef::Text(t) => {
            let t = t.trim();
            if t.is_empty() {
                return Err(false);
            }
            let exact = (0..items.len()).filter(|i| items[*i].text == t).collect();
            let lower = t.to_lowercase();
            let prefix = (0..items.len())
                .filter(|i| items[*i].text.to_lowercase().starts_with(&lower))
                .collect();
            one(exact).or_else(|| one(prefix)).unwrap_or(Err(false))
        }
    }
}

/// Reads and parses a handoff file, up to the default size limit (see [`Inbox::load`]).
pub fn load(path: &Path) -> Result<Handoff, HandoffError> {
    load_limited(path, crate::workspace::DEFAULT_MAX_HANDOFF_BYTES)
}

/// Reads and parses a handoff file of at most `limit` bytes. The size is checked before
/// reading, and the read stops past the limit (a file growing meanwhile), so a huge file
/// never sits in memory.
pub fn load_limited(path: &Path, limit: u64) -> Result<Handoff, HandoffError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(io(path))?;
    let size = f.metadata().map_err(io(path))?.len();
    let too_large = |size| HandoffError::TooLarge {
        what: "the file".into(),
        size,
        limit,
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("handoff");
    parse_bytes(bytes, stem)
}

/// Parses a handoff file's bytes as [`load`] does once it has read them.
pub fn parse_bytes(bytes: Vec<u8>, stem: &str) -> Result<Handoff, HandoffError> {
    if bytes.contains(&0) {
        return Err(HandoffError::Malformed(
            "the file is binary, not markdown text".into(),
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| HandoffError::Malformed("the file is not UTF-8 text".into()))?;
    parse(&text, stem)
}

fn stem_of(p: &Path) -> Option<String> {
    p.file_stem().and_then(|s| s.to_str()).map(str::to_string)
}

/// `dir/name`, or `dir/<stem>-2.md`, `-3`, … when that is taken: a move never replaces
/// another handoff.
fn free_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if std::fs::symlink_metadata(&first).is_err() {
        return first;
    }
    let stem = name.strip_suffix(".md").unwrap_or(name);
    (2u64..)
        .map(|n| dir.join(format!("{stem}-{n}.md")))
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or(first)
}

/// `text` with the id `new_id` (its `id:` line rewritten; a file without one takes its
/// id from its name, which is new already), checked by parsing it as it will be read.
fn with_new_id(text: &str, h: &Handoff, new_id: &str) -> Result<String, HandoffError> {
    let rewritten = replace_front_id(text, new_id).unwrap_or_else(|| text.to_string());
    match parse(&rewritten, new_id) {
        Ok(n) if n.id == new_id => Ok(rewritten),
        _ => Err(HandoffError::Malformed(format!(
            "its id `{}` is already used by another handoff, and its front matter could not be given the new id `{new_id}`: write `id:` on one line of its own",
            h.id
        ))),
    }
}

/// The text with its front matter's top-level `id:` line set to `new_id`; `None` when
/// it has no such line (its id is its file name).
fn replace_front_id(text: &str, new_id: &str) -> Option<String> {
    let (front, _) = split_front_matter(text).ok()?;
    let front = front?;
    // `front` is a slice of `text`: where it starts is where it lies in memory.
    let start = front.as_ptr() as usize - text.as_ptr() as usize;
    let mut out = String::with_capacity(text.len() + 8);
    let mut replaced = false;
    for line in front.split_inclusive('\n') {
        if !replaced && line.starts_with("id:") {
            let eol = if line.ends_with("\r\n") { "\r\n" } else { "\n" };
            out.push_str(&format!("id: {new_id}{eol}"));
            replaced = true;
        } else {
            out.push_str(line);
        }
    }
    replaced.then(|| format!("{}{out}{}", &text[..start], &text[start + front.len()..]))
}

fn md_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "md")
                        && !p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether any process has `path` open for writing, asked of the kernel with a read lease
/// taken and given back at once; `None` when the kernel will not say (not our file, no
/// lease support, not a regular file).
fn open_for_writing(path: &Path) -> Option<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    match crate::sys::probe_read_lease(&f) {
        Ok(()) => Some(false),
        Err(e) if rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::AGAIN) => {
            Some(true)
        }
        Err(_) => None,
    }
}

/// Writes a handoff and commits its creation before the rename that delivers it, so the
/// history shows it handed off before any wake can show it closed. Blocking.
pub fn create_committed(
    ws: &crate::workspace::Workspace,
    committer: Option<&crate::history::Committer>,
    n: &NewHandoff,
) -> Option<String> {
    let inbox = Inbox::of(ws);
    let mut n = n.clone();
    fit_body(&mut n, inbox.max_bytes());
    let n = &n;
    let made = inbox.create_with(n, Utc::now(), |id, dest, text| {
        if let Some(c) = committer {
            let t = vec![
                ("Handoff", id.to_string()),
                ("From", n.from.clone()),
                ("Outcome", "created".to_string()),
            ];
            let req = crate::history::CommitRequest {
                paths: Vec::new(),
                message: crate::history::commit_message(
                    &format!("{}: handoff: {}", n.from, n.title),
                    &t,
                ),
                contents: vec![(dest.to_path_buf(), text.as_bytes().to_vec())],
                ..Default::default()
            };
            if let Err(e) = c.commit_blocking(req) {
                tracing::warn!("handoff {id}: creation not committed: {e}");
            }
        }
    });
    match made {
        Ok((id, _, _)) => Some(id),
        Err(e) => {
            tracing::error!("could not create a handoff ({}): {e}", n.title);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "---\nid: 20261120T093000Z-morning-briefing-7f3a\nfrom: morning-briefing\nto: main\ncreated: 2026-11-20T09:30:00Z\nrun: 01JD3K\npriority: high\ndraft: drafts/morning-briefing/2026-11-20.md\n---\n# Morning briefing ready\n\nAdd today's context.\n\n- [x] Read the draft\n- [ ] Add context from memory\n- [ ] Post a summary (optional)\n\n---\n\nA rule above is not front matter.\n";

    #[test]
    fn parses_front_matter_title_and_checklist() {
        let h = parse(SAMPLE, "x").unwrap();
        assert_eq!(h.id, "20261120T093000Z-morning-briefing-7f3a");
        assert_eq!(h.from, "morning-briefing");
        assert_eq!(h.priority, Priority::High);
        assert_eq!(h.title, "Morning briefing ready");
        assert_eq!(h.checklist.len(), 3);
        assert!(h.checklist[0].checked);
        assert!(h.checklist[2].optional);
        assert_eq!(h.unticked().len(), 1);
    }

    #[test]
    fn a_note_without_front_matter_is_a_handoff_too() {
        let h = parse("# Call the bank\n\n- [ ] call\n", "call-bank").unwrap();
        assert_eq!(h.id, "call-bank");
        assert_eq!(h.to, "main");
        assert_eq!(h.title, "Call the bank");
    }

    #[test]
    fn rejects_what_is_wrong() {
        assert!(parse("---\nid: x\nfrom: y\n", "x").is_err());
        assert!(parse("---\npriority: 5\n---\n# t\n", "x").is_err());
        assert!(parse("---\ncreated: yesterday\n---\n# t\n", "x").is_err());
        assert!(parse("---\nfrom: [a, b]\n---\n# t\n", "x").is_err());
        assert!(parse("---\n- a\n- b\n---\n", "x").is_err());
    }

    #[test]
    fn a_reused_id_is_claimed_under_a_new_one_and_keeps_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::new(dir.path());
        let n = NewHandoff {
            from: "minion".into(),
            title: "Twice".into(),
            ..Default::default()
        };
        let (id, first, _) = inbox.create(&n, Utc::now()).unwrap();
        let h = inbox.load(&first).unwrap();
        let mut taken = inbox.taken_ids();
        let (a, _) = inbox.claim_unique(&first, &h, &mut taken).unwrap().unwrap();
        inbox.complete(&a, None, Utc::now()).unwrap();
        // The same file again, as a script that copies handoffs might leave it.
        let text = std::fs::read_to_string(inbox.done()[0].clone()).unwrap();
        let again = inbox.root.join(format!("{id}.md"));
        std::fs::write(&again, &text).unwrap();
        let h = inbox.load(&again).unwrap();
        assert_eq!(h.written_by.as_deref(), Some("minion"));
        let mut taken = inbox.taken_ids();
        let (a, renamed) = inbox.claim_unique(&again, &h, &mut taken).unwrap().unwrap();
        let new_id = format!("{id}-2");
        assert_eq!(a, inbox.active_dir().join(format!("{new_id}.md")));
        assert_eq!(renamed.id, new_id);
        let reread = inbox.load(&a).unwrap();
        assert_eq!(reread.id, new_id);
        assert_eq!(reread.written_by.as_deref(), Some("minion"));
        assert!(taken.contains(&new_id));
    }

    #[test]
    fn completing_never_replaces_a_done_handoff_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::new(dir.path());
        std::fs::create_dir_all(&inbox.root).unwrap();
        let now = Utc::now();
        for body in ["# One\n", "# Two\n"] {
            let p = inbox.root.join("same.md");
            std::fs::write(&p, body).unwrap();
            inbox.complete(&p, None, now).unwrap();
        }
        let done = inbox.done();
        assert_eq!(done.len(), 2, "{done:?}");
        let texts: Vec<String> = done
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert!(texts.iter().any(|t| t.starts_with("# One")));
        assert!(texts.iter().any(|t| t.starts_with("# Two")));
    }

    #[test]
    fn the_id_line_is_rewritten_and_nothing_else() {
        let t = "---\nfrom: x\nid: a\ntitle_id: a\n---\n# id: a\n";
        assert_eq!(
            replace_front_id(t, "a-2").unwrap(),
            "---\nfrom: x\nid: a-2\ntitle_id: a\n---\n# id: a\n"
        );
        assert!(replace_front_id("---\nfrom: x\n---\n# t\n", "b").is_none());
        assert!(replace_front_id("# no front matter\n", "b").is_none());
    }

    #[test]
    fn render_round_trips() {
        let n = NewHandoff {
            from: "minion".into(),
            title: "Done".into(),
            items: vec!["Read it".into()],
            ..Default::default()
        };
        let (id, text) = render(&n, Utc::now());
        let h = parse(&text, "other").unwrap();
        assert_eq!(h.id, id);
        assert_eq!(h.title, "Done");
        assert_eq!(h.checklist.len(), 1);
    }

    #[test]
    fn tick_writes_one_byte_per_item_wherever_the_list_is() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.md");
        let text = "---\nid: h\n---\n# T\n\n```\n- [ ] not an item (code)\n```\n\n* [ ] Parent\n  - [ ] Child one\n1. [X] Numbered\n- [ ] Send flowers (optional)\n";
        std::fs::write(&p, text).unwrap();
        let t = tick(
            &p,
            &[ItemRef::parse("child"), ItemRef::Number(3)],
            false,
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            t.ticked,
            vec![NumberedItem {
                number: 2,
                text: "Child one".into()
            }]
        );
        assert_eq!(
            t.already,
            vec![NumberedItem {
                number: 3,
                text: "Numbered".into()
            }]
        );
        assert_eq!(
            t.unticked,
            vec![NumberedItem {
                number: 1,
                text: "Parent".into()
            }]
        );
        let after = std::fs::read_to_string(&p).unwrap();
        assert_eq!(after, text.replace("- [ ] Child", "- [x] Child"));
        let t = tick(&p, &[], true, 1 << 20).unwrap();
        assert_eq!(t.ticked.len(), 2, "{t:?}");
        assert!(t.unticked.is_empty());
        let h = load(&p).unwrap();
        assert!(h.checklist.iter().all(|i| i.checked), "{:?}", h.checklist);
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .contains("- [ ] not an item (code)"));
        let e = tick(&p, &[ItemRef::parse("9")], false, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("  1. [x] Parent"), "{e}");
    }
}
