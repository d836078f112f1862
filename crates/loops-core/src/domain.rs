//! Domains: the loop folders under `domains/`. Discovery finds them; parsing turns each
//! `config.yaml` into a typed [`LoopDef`] or a list of diagnostics that say exactly what
//! to fix. One broken loop never stops the others.

use crate::config_fields::{describe_type, show, Field, List, Map, Section, Whole};
use crate::diag::{near_miss, Diagnostic, YamlLocator};
use crate::duration::{parse_duration, DURATION_HELP, MAX_DURATION};
use crate::layout::RUNTIME_DIR;
use crate::request_options::RequestOptions;
use crate::schedule::{jitter_offset, parse_cron, CatchUp, Schedule, TzSource, When};
use crate::workspace::{parse_timezone, Workspace};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use yaml_serde::{Mapping, Value};

/// What a loop runs each tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Payload {
    /// A program: argv, run directly (a string in config.yaml becomes `sh -c STRING`).
    Command { argv: Vec<String> },
    /// An LLM prompt driven as an agent loop (prompt.md beside config.yaml).
    Prompt {
        model: Option<String>,
        provider: Option<String>,
        /// The loop's request options (tool_choice, temperature, …), over its provider's.
        #[serde(skip_serializing_if = "RequestOptions::is_empty")]
        options: RequestOptions,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    #[default]
    Forbid,
    Allow,
    Replace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    Fixed,
    #[default]
    Exponential,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Backoff,
    #[serde(with = "ms")]
    pub delay: Duration,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential,
            delay: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2, 3, …): `delay · 2^(n-2)` for
    /// exponential, with a jitter drawn from `seed` so it is reproducible in tests.
    pub fn backoff_for(&self, next_attempt: u32, seed: u64) -> Duration {
        let growth = match self.backoff {
            Backoff::Fixed => crate::backoff::Growth::Fixed,
            Backoff::Exponential => crate::backoff::Growth::Doubling,
        };
        crate::backoff::wait(
            self.delay,
            growth,
            next_attempt.saturating_sub(2),
            self.jitter,
            crate::backoff::seeded_spread(seed),
            Duration::from_secs(86_400),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Session {
    #[default]
    Isolated,
    Main,
}

/// `deliver:` — where a command loop's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    pub channel: String,
    pub thread: Option<String>,
}

/// A loop, parsed and valid.
#[derive(Debug, Clone)]
pub struct LoopDef {
    pub name: String,
    pub dir: PathBuf,
    pub description: Option<String>,
    pub enabled: bool,
    pub schedule: Schedule,
    pub payload: Payload,
    pub timeout: Duration,
    pub max_turns: u32,
    pub session: Session,
    pub tools: Option<Vec<String>>,
    pub concurrency: Concurrency,
    pub retry: RetryPolicy,
    pub env: Vec<(String, String)>,
    /// Genesis `timing.overlap_window_minutes`: how far the collection window reaches back.
    pub overlap: Option<Duration>,
    /// A command run before any model call; no output (or a failure) is a silent run.
    pub gate: Option<Vec<String>>,
    /// Hosts `http_get` may fetch from.
    pub allowed_hosts: Vec<String>,
    /// What an isolated loop may read beyond its own domain and drafts (`reads:`).
    pub reads: Vec<String>,
    /// Whether the loop's model may rewrite its own prompt.md (`edit_prompt:`).
    pub edit_prompt: bool,
    /// Command loops: the channel their stdout is delivered to (`deliver:`).
    pub deliver: Option<Deliver>,
    /// The loop's never-share rules (`classification`, `deny_patterns`, `detectors`).
    pub guard: crate::guard::GuardConfig,
    /// Every key the runner does not know, kept for the prompt.
    pub settings: Mapping,
    /// `budget:`: this loop's token and cost limits (none when not written).
    pub budget: crate::budget::Budget,
    /// A fingerprint of config.yaml's schedule, to notice when it changes.
    pub schedule_fingerprint: String,
}

impl LoopDef {
    pub fn is_prompt(&self) -> bool {
        matches!(self.payload, Payload::Prompt { .. })
    }
}

/// One folder under `domains/`, parsed or not.
#[derive(Debug, Clone)]
pub struct DomainEntry {
    pub name: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// The loop, when config.yaml has no errors.
    pub def: Option<LoopDef>,
    /// Errors and warnings for this loop's files.
    pub diagnostics: Vec<Diagnostic>,
    /// A hash of config.yaml and prompt.md, to tell an edit from a touch.
    pub content_hash: u64,
}

impl DomainEntry {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

/// What a loop's name may be, said the same way by `loops new` and `loops check`.
pub const LOOP_NAME_RULE: &str =
    "use lowercase letters, digits, - and _, starting with a letter or digit, at most 64 characters (e.g. morning-briefing)";

/// Whether `name` may name a loop. The name is a folder, a file name in `.loops/`, a
/// commit trailer and a `{{name}}` substitution, so it is kept to what is safe in each.
pub fn valid_loop_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A valid name close to `name`, to suggest a rename: lowercased, other characters
/// turned into `-`.
fn suggested_loop_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out
        .trim_start_matches(['-', '_'])
        .trim_end_matches('-')
        .chars()
        .take(64)
        .collect();
    if out.is_empty() {
        "my-loop".into()
    } else {
        out
    }
}

/// Finds every loop folder: `domains/*/config.yaml`, skipping names starting with `.` or `_`.
pub fn discover(ws: &Workspace) -> Vec<DomainEntry> {
    let dir = ws.domains_dir();
    let mut out = Vec::new();
    let Ok(read) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut dirs: Vec<PathBuf> = read
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for d in dirs {
        let Some(name) = d.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        // A config.yaml that is there but is no file (a folder, a broken link) is a loop
        // the person meant to write: said by `load_domain`, not passed over in silence.
        if std::fs::symlink_metadata(d.join("config.yaml")).is_err() {
            continue;
        }
        out.push(load_domain(ws, &name));
    }
    out
}

/// Everything `loops check` reports: loops.yaml's problems, the workspace's own (it is not
/// a git repository), then each loop's, with what many loops share said once.
pub fn check_report(ws: &Workspace, entries: &[DomainEntry]) -> Vec<Diagnostic> {
    let mut out = ws.diagnostics.clone();
    if ws.settings.git_commit && !is_git_worktree(&ws.root) {
        out.push(
            Diagnostic::warning(
                &ws.root,
                "this workspace is not a git repository: commits are off, so nothing a run changes is recorded in history",
            )
            .help(format!(
                "run `git init` in {} (loops commits each run's changes there), or set `git: {{ commit: false }}` in loops.yaml if you do not want commits",
                ws.root.display()
            )),
        );
    }
    let waiting = |d: &Diagnostic| {
        !d.is_error()
            && d.help.as_deref() == Some(crate::providers::PROVIDER_HELP)
            && d.message.starts_with("prompt loop `")
    };
    let waits: Vec<(&str, &Diagnostic)> = entries
        .iter()
        .flat_map(|e| e.diagnostics.iter().map(move |d| (e.name.as_str(), d)))
        .filter(|(_, d)| waiting(d))
        .collect();
    let merge = waits.len() > 1;
    for e in entries {
        out.extend(
            e.diagnostics
                .iter()
                .filter(|d| !(merge && waiting(d)))
                .cloned(),
        );
    }
    // One help for every prompt loop, not the same paragraph once per loop.
    if merge {
        let names: Vec<String> = waits.iter().map(|(n, _)| format!("`{n}`")).collect();
        out.push(
            Diagnostic::warning(
                Path::new("loops.yaml"),
                format!(
                    "{} prompt loops are waiting for a provider: {}",
                    waits.len(),
                    names.join(", ")
                ),
            )
            .help(crate::providers::PROVIDER_HELP),
        );
    }
    out
}

/// Whether `root` is inside a git work tree (as the committer needs it to be).
fn is_git_worktree(root: &Path) -> bool {
    git2::Repository::discover(root).is_ok_and(|r| r.workdir().is_some())
}

/// Loads one loop folder by name.
pub fn load_domain(ws: &Workspace, name: &str) -> DomainEntry {
    let dir = ws.domains_dir().join(name);
    let config_path = dir.join("config.yaml");
    let rel = ws.relative(&config_path);
    let mut entry = DomainEntry {
        name: name.to_string(),
        dir: dir.clone(),
        config_path: config_path.clone(),
        def: None,
        diagnostics: Vec::new(),
        content_hash: 0,
    };
    let text = match std::fs::read(&config_path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                entry.diagnostics.push(
                    Diagnostic::error(&rel, "config.yaml is not UTF-8 text")
                        .help("save the file as UTF-8"),
                );
                return entry;
            }
        },
        Err(e) => {
            entry.diagnostics.push(
                Diagnostic::error(&rel, format!("cannot read config.yaml: {e}")).help(
                    "make config.yaml a file the runner can read (a folder or a broken link is not a loop)",
                ),
            );
            return entry;
        }
    };
    let prompt = std::fs::read(dir.join("prompt.md")).ok();
    entry.content_hash = {
        let mut h = crate::schedule::stable_hash(&text);
        if let Some(p) = &prompt {
            h ^= crate::schedule::stable_hash(&String::from_utf8_lossy(p)).rotate_left(1);
        }
        h
    };
    // One that is there but cannot be read is said below, not taken for a missing one.
    let has_prompt = prompt.is_some() || dir.join("prompt.md").exists();
    let (def, diags) = parse_config(ws, name, &dir, &rel, &text, has_prompt);
    entry.def = def;
    entry.diagnostics = diags;
    if let Some(d) = unreadable_prompt(ws, &dir, prompt.as_deref(), entry.def.as_ref()) {
        // Said now, not first at a tick long after the person looked. The loop stays
        // defined: each run fails with this file and its fix, recorded where `loops status`
        // shows a failing loop, instead of the loop quietly dropping out of the schedule.
        entry.diagnostics.push(d);
    }
    entry
        .diagnostics
        .extend(unreadable_state(ws, &dir, entry.def.as_ref()));
    if !valid_loop_name(name) {
        // The loop is not run: `loops new`, `trigger` and the name's other uses refuse it.
        let folder = ws.relative(&dir);
        let fixed = suggested_loop_name(name);
        entry.diagnostics.insert(
            0,
            Diagnostic::error(
                &folder,
                format!("`{name}` is not a valid loop name (a loop is named by its folder)"),
            )
            .help(format!(
                "rename the folder, e.g. `mv {} {}`; {LOOP_NAME_RULE}",
                folder.display(),
                folder.with_file_name(&fixed).display()
            )),
        );
        entry.def = None;
    }
    entry
}

/// What is wrong with a prompt loop's prompt.md when it is there but is no text a model
/// could be given: not UTF-8, or not a file that can be read (a folder).
fn unreadable_prompt(
    ws: &Workspace,
    dir: &Path,
    prompt: Option<&[u8]>,
    def: Option<&LoopDef>,
) -> Option<Diagnostic> {
    if !def.is_some_and(LoopDef::is_prompt) {
        return None;
    }
    let path = dir.join("prompt.md");
    let bytes = match prompt {
        Some(bytes) => Ok(bytes.to_vec()),
        None => std::fs::read(&path),
    };
    unreadable_text(ws, &path, bytes).map(|d| {
        d.help("make it a file of UTF-8 text: it is what the model is given as the loop's instructions")
    })
}

/// The same for its state.md: a run reads it before it asks the model, and fails while it
/// cannot, so `loops check` says it before the first tick does.
fn unreadable_state(ws: &Workspace, dir: &Path, def: Option<&LoopDef>) -> Option<Diagnostic> {
    if !def.is_some_and(LoopDef::is_prompt) {
        return None;
    }
    let path = dir.join("state.md");
    unreadable_text(ws, &path, std::fs::read(&path)).map(|d| {
        d.help(
            "make it a file of UTF-8 text, or remove it to start the loop's state afresh: until then each run fails before its model is asked",
        )
    })
}

/// An error naming a file that is there but is not UTF-8 text; none when it is text or is
/// not there at all.
fn unreadable_text(
    ws: &Workspace,
    path: &Path,
    bytes: std::io::Result<Vec<u8>>,
) -> Option<Diagnostic> {
    let rel = ws.relative(path);
    let file = path.file_name()?.to_string_lossy().into_owned();
    match bytes {
        Ok(bytes) => std::str::from_utf8(&bytes).err().map(|e| {
            Diagnostic::error(
                &rel,
                format!(
                    "{file} is not UTF-8 text (the first bad byte is at offset {})",
                    e.valid_up_to()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Diagnostic::error(&rel, format!("cannot read {file}: {e}"))),
    }
}

/// Parses config.yaml text for the loop `name` as [`load_domain`] does, without reading
/// the loop folder: for the fuzz targets (fuzz/), which parse thousands of texts a second.
#[doc(hidden)]
pub fn parse_config_text(
    ws: &Workspace,
    name: &str,
    text: &str,
    has_prompt: bool,
) -> (Option<LoopDef>, Vec<Diagnostic>) {
    let dir = ws.domains_dir().join(name);
    let rel = ws.relative(&dir.join("config.yaml"));
    parse_config(ws, name, &dir, &rel, text, has_prompt)
}

const TOP_KEYS: &[&str] = &[
    "description",
    "enabled",
    "schedule",
    "payload",
    "timeout",
    "max_turns",
    "session",
    "tools",
    "concurrency",
    "retry",
    "timing",
    "env",
    "gate",
    "allowed_hosts",
    "deliver",
    "deny_patterns",
    "detectors",
    "reads",
    "edit_prompt",
    "budget",
];
const SCHEDULE_KEYS: &[&str] = &[
    "every",
    "cron",
    "at",
    "timezone",
    "jitter",
    "catch_up",
    "starting_deadline",
    "adaptive",
];
const PAYLOAD_KEYS: &[&str] = &["kind", "command", "model", "provider"];
const RETRY_KEYS: &[&str] = &["max_attempts", "backoff", "delay", "jitter"];

struct Ctx<'a> {
    rel: &'a Path,
    loc: &'a YamlLocator<'a>,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn err(&mut self, path: &[&str], msg: impl Into<String>, help: impl Into<String>) {
        let d = Diagnostic::error(self.rel, msg)
            .at(self.loc.value(path))
            .help(help);
        self.diags.push(d);
    }

    fn duration(&mut self, path: &[&str], v: &Value) -> Option<Duration> {
        match loop_duration(&path.join("."), v) {
            Ok(d) => Some(d),
            Err((message, help)) => {
                self.err(path, message, help);
                None
            }
        }
    }
}

/// A duration of a loop's config.yaml (`timeout`, `schedule.every`, `retry.delay`), or
/// the message and help of what is wrong with it; `path` is the setting's dotted path.
fn loop_duration(path: &str, v: &Value) -> Result<Duration, (String, String)> {
    let text = match v {
        Value::String(s) => s,
        Value::Number(n) => {
            return Err((
                format!("`{path}: {n}` has no unit"),
                format!("write e.g. {n}s or {n}m; {DURATION_HELP}"),
            ))
        }
        _ => {
            return Err((
                format!("`{path}` must be a duration"),
                DURATION_HELP.to_string(),
            ))
        }
    };
    parse_duration(text).map_err(|e| (format!("{path}: {e}"), DURATION_HELP.to_string()))
}

/// [`loop_duration`] of `key` in `sec`, its problem reported there.
fn section_duration(sec: &mut Section, key: &str, v: &Value) -> Option<Duration> {
    match loop_duration(&sec.path_of(key).join("."), v) {
        Ok(d) => Some(d),
        Err((message, help)) => {
            sec.error(key, message, help);
            None
        }
    }
}

/// The option `v` names, of `options` (by their names as written in config.yaml).
fn one_of<T: Copy>(v: &Value, options: &[(&str, T)]) -> Option<T> {
    let s = v.as_str()?;
    options.iter().find(|(name, _)| *name == s).map(|(_, t)| *t)
}

/// A loop's config.yaml, key by key. `schedule` and `payload` are read after the rest
/// (they are checked against what the other keys say); every key the struct does not
/// name is one of the loop's settings for the prompt, unless it is a typo of a key.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ConfigYaml {
    description: Field<String>,
    enabled: Field<bool>,
    schedule: Field<Value>,
    payload: Field<Value>,
    timeout: Field<Value>,
    max_turns: Field<Whole<1>>,
    session: Field<Value>,
    tools: Field<List<String>>,
    concurrency: Field<Value>,
    retry: Field<Map>,
    /// The Genesis form of a schedule; kept among the settings as well.
    timing: Field<Value>,
    env: Field<Map>,
    gate: Field<Gate>,
    allowed_hosts: Field<List<String>>,
    deliver: Field<Value>,
    deny_patterns: Field<IgnoredAny>,
    detectors: Field<IgnoredAny>,
    reads: Field<List<Value>>,
    edit_prompt: Field<bool>,
    budget: Field<Value>,
}

/// `gate:`: a command (an argv list, or a line of shell), or `{ command: … }`.
struct Gate(Vec<String>);

impl<'de> Deserialize<'de> for Gate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::workspace::yaml_scalar;
        let v = Value::deserialize(d)?;
        let command = v.as_mapping().and_then(|m| m.get("command")).unwrap_or(&v);
        match command {
            Value::String(s) if !s.trim().is_empty() => {
                Ok(Gate(vec!["sh".to_string(), "-c".to_string(), s.clone()]))
            }
            Value::Sequence(seq)
                if !seq.is_empty() && seq.iter().all(|a| yaml_scalar(a).is_some()) =>
            {
                Ok(Gate(seq.iter().filter_map(yaml_scalar).collect()))
            }
            _ => Err(serde::de::Error::custom("not a command")),
        }
    }
}

/// What the keys of config.yaml other than `schedule` and `payload` say, with the
/// defaults of those not written.
struct LoopKeys {
    description: Option<String>,
    enabled: bool,
    schedule: Option<Value>,
    payload: Option<Value>,
    timeout: Duration,
    max_turns: u32,
    session: Session,
    tools: Option<Vec<String>>,
    concurrency: Concurrency,
    retry: RetryPolicy,
    env: Vec<(String, String)>,
    timing_interval: Option<Duration>,
    overlap: Option<Duration>,
    gate: Option<Vec<String>>,
    allowed_hosts: Vec<String>,
    reads: Vec<String>,
    edit_prompt: bool,
    deliver: Option<Deliver>,
}

impl Default for LoopKeys {
    fn default() -> Self {
        LoopKeys {
            description: None,
            enabled: true,
            schedule: None,
            payload: None,
            timeout: Duration::from_secs(300),
            max_turns: 20,
            session: Session::Isolated,
            tools: None,
            concurrency: Concurrency::Forbid,
            retry: RetryPolicy::default(),
            env: Vec::new(),
            timing_interval: None,
            overlap: None,
            gate: None,
            allowed_hosts: Vec::new(),
            reads: Vec::new(),
            edit_prompt: false,
            deliver: None,
        }
    }
}

/// Reads every key but `schedule` and `payload` (kept as written for later).
fn read_loop_keys(sec: &mut Section, ws: &Workspace, y: ConfigYaml) -> LoopKeys {
    let mut k = LoopKeys {
        description: y.description.written().and_then(Result::ok),
        schedule: y.schedule.written().and_then(Result::ok),
        payload: y.payload.written().and_then(Result::ok),
        ..LoopKeys::default()
    };
    if let Some(b) = sec.take(
        "enabled",
        y.enabled,
        "`enabled` must be true or false",
        "e.g. enabled: false",
    ) {
        k.enabled = b;
    }
    if let Field::Ok(v) = y.timeout {
        match section_duration(sec, "timeout", &v) {
            Some(d) if d.is_zero() => sec.error(
                "timeout",
                "`timeout` must be longer than zero",
                "e.g. timeout: 5m",
            ),
            Some(d) => k.timeout = d,
            None => {}
        }
    }
    // A count past u32 means "no limit", not its low 32 bits (2^32 turns is not none).
    if let Some(n) = sec.take(
        "max_turns",
        y.max_turns,
        "`max_turns` must be a whole number of at least 1",
        "e.g. max_turns: 20",
    ) {
        k.max_turns = n.saturating_u32();
    }
    read_choices(sec, y.session, y.concurrency, &mut k);
    k.tools = read_tools(sec, ws, y.tools);
    k.gate = sec
        .take(
            "gate",
            y.gate,
            "`gate` must be a command (an argv list or a shell string)",
            "e.g. gate: [\"./new-messages.sh\"]: it runs before the model; no output means nothing to do",
        )
        .map(|g| g.0);
    if let Some(hosts) = sec.take(
        "allowed_hosts",
        y.allowed_hosts,
        "`allowed_hosts` must be a list of host names",
        "e.g. allowed_hosts: [api.github.com, news.ycombinator.com] (names only, no https:// or paths)",
    ) {
        k.allowed_hosts = hosts.0.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
        check_hosts(sec, &k.allowed_hosts);
    }
    if let Some(items) = y.reads.written() {
        k.reads = read_reads(sec, items.ok());
    }
    if let Some(b) = sec.take(
        "edit_prompt",
        y.edit_prompt,
        "`edit_prompt` must be true or false",
        "edit_prompt: true lets this loop's model rewrite its own prompt.md (off by default: an injected text would persist across runs)",
    ) {
        k.edit_prompt = b;
    }
    read_nested(sec, ws, y.retry, y.env, y.deliver, y.timing, &mut k);
    k
}

/// `session` and `concurrency`: one of their names.
fn read_choices(
    sec: &mut Section,
    session: Field<Value>,
    concurrency: Field<Value>,
    k: &mut LoopKeys,
) {
    if let Field::Ok(v) = session {
        match one_of(
            &v,
            &[("isolated", Session::Isolated), ("main", Session::Main)],
        ) {
            Some(s) => k.session = s,
            None => sec.error(
                "session",
                format!("`session` must be isolated or main, not {}", show(&v)),
                "isolated is a minion (no SOUL, no memory); main is the main session",
            ),
        }
    }
    if let Field::Ok(v) = concurrency {
        let options = [
            ("forbid", Concurrency::Forbid),
            ("allow", Concurrency::Allow),
            ("replace", Concurrency::Replace),
        ];
        match one_of(&v, &options) {
            Some(c) => k.concurrency = c,
            None => sec.error("concurrency", format!("`concurrency` must be forbid, allow or replace, not {}", show(&v)), "forbid skips a tick while a run is going (default); allow overlaps; replace stops the old run"),
        }
    }
}

/// The keys that hold mappings: `retry`, `env`, `deliver` (or a name) and `timing`.
fn read_nested(
    sec: &mut Section,
    ws: &Workspace,
    retry: Field<Map>,
    env: Field<Map>,
    deliver: Field<Value>,
    timing: Field<Value>,
    k: &mut LoopKeys,
) {
    if let Some(Map(m)) = sec.take(
        "retry",
        retry,
        "`retry` must be a mapping",
        "e.g. retry: { max_attempts: 3, delay: 30s }",
    ) {
        let found = read_retry(sec.file, sec.loc, &m, &mut k.retry);
        sec.extend("retry", found);
    }
    if let Some(Map(m)) = sec.take(
        "env",
        env,
        "`env` must be a mapping of NAME: value",
        "e.g. env: { REPORT_TITLE: Weekly }",
    ) {
        k.env = read_env(sec, &m);
    }
    if let Field::Ok(v) = deliver {
        k.deliver = read_deliver(sec, ws, &v);
    }
    if let Field::Ok(v) = timing {
        read_timing(sec, &v, k);
    }
}

/// `env:`: NAME: value pairs, each value a string, number or boolean.
fn read_env(sec: &mut Section, m: &Mapping) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (ek, ev) in m {
        let example = "e.g. env: { REPORT_TITLE: Weekly }";
        let (at, message, help) = match (ek.as_str(), crate::workspace::yaml_scalar(ev)) {
            (Some(k), Some(val)) if crate::providers::valid_env_name(k) => {
                env.push((k.to_string(), val));
                continue;
            }
            (Some(k), _) if !crate::providers::valid_env_name(k) => (
                vec!["env", k],
                format!("`{k}` is not a valid environment variable name"),
                "use letters, digits and _ and do not start with a digit",
            ),
            (Some(k), _) => (
                vec!["env", k],
                format!("env.{k} must be a string, number or boolean"),
                example,
            ),
            _ => (vec!["env"], "env keys must be strings".to_string(), example),
        };
        let d = Diagnostic::error(sec.file, message)
            .at(sec.loc.value(&at))
            .help(help);
        sec.push("env", d);
    }
    env
}

/// `deliver:`: a channel of loops.yaml (`general`, or `{ channel: general, thread: … }`).
fn read_deliver(sec: &mut Section, ws: &Workspace, v: &Value) -> Option<Deliver> {
    let (channel, thread) = match v {
        Value::String(s) => (Some(s.trim().to_string()), None),
        Value::Mapping(m) => (
            m.get("channel")
                .and_then(Value::as_str)
                .map(|s| s.trim().to_string()),
            m.get("thread").and_then(crate::workspace::yaml_scalar),
        ),
        _ => (None, None),
    };
    let Some(c) = channel.filter(|c| !c.is_empty()) else {
        sec.error(
            "deliver",
            "`deliver` must name a channel from loops.yaml `channels:`",
            "e.g. deliver: general, or deliver: { channel: general, thread: \"1234\" }",
        );
        return None;
    };
    if ws.settings.channels.contains_key(&c) {
        return Some(Deliver { channel: c, thread });
    }
    let names: Vec<&str> = ws.settings.channels.keys().map(String::as_str).collect();
    let help = if names.is_empty() {
        "no channels are configured: add one under `channels:` in loops.yaml (see docs/channels.md)"
            .to_string()
    } else {
        match near_miss(&c, &names) {
            Some(n) => format!("did you mean `{n}`? The channels are: {}", names.join(", ")),
            None => format!("the channels in loops.yaml are: {}", names.join(", ")),
        }
    };
    sec.error(
        "deliver",
        format!("`deliver`: there is no channel `{c}`"),
        help,
    );
    None
}

/// `timing:` (the Genesis form): its other keys are kept but only these two mean
/// something here. Held to what `schedule.every` takes: at least a second, at most
/// MAX_DURATION (`.inf` and 1e300 are numbers too).
fn read_timing(sec: &mut Section, v: &Value, k: &mut LoopKeys) {
    let Some(m) = v.as_mapping() else {
        sec.error(
            "timing",
            "`timing` must be a mapping",
            "e.g. timing: { interval_minutes: 10 }",
        );
        return;
    };
    let mut problem = |key: &str, message: String, help: &str| {
        let d = Diagnostic::error(sec.file, message)
            .at(sec.loc.value(&["timing", key]))
            .help(help);
        sec.push("timing", d);
    };
    if let Some(iv) = m.get("interval_minutes") {
        match iv.as_f64().and_then(minutes) {
            Some(d) if d >= Duration::from_secs(1) => k.timing_interval = Some(d),
            _ => problem("interval_minutes", format!("`timing.interval_minutes` must be a number of minutes from 1 second (0.017) to ten years, not {}", show(iv)), "e.g. interval_minutes: 10"),
        }
    }
    if let Some(ov) = m.get("overlap_window_minutes") {
        match ov.as_f64().and_then(minutes) {
            Some(d) => k.overlap = Some(d),
            _ => problem("overlap_window_minutes", format!("`timing.overlap_window_minutes` must be a number of minutes from 0 to ten years, not {}", show(ov)), "e.g. overlap_window_minutes: 11"),
        }
    }
}

/// Each `allowed_hosts` entry as `http_get` reads it (crate::net), so a typo is an error
/// here rather than a host that is silently never allowed.
fn check_hosts(sec: &mut Section, hosts: &[String]) {
    for h in hosts {
        if let Err(e) = crate::net::Entry::parse(h) {
            sec.error(
                "allowed_hosts",
                format!("`allowed_hosts`: {e}"),
                "e.g. allowed_hosts: [api.github.com, \"*.example.com\", \"127.0.0.1:8080\", \"[::1]:8080\"]; without a port only the scheme's default (80 for http, 443 for https) is allowed",
            );
        }
    }
}

/// `tools:`: the allow-list of tools, each entry checked.
fn read_tools(
    sec: &mut Section,
    ws: &Workspace,
    tools: Field<List<String>>,
) -> Option<Vec<String>> {
    let list = sec.take(
        "tools",
        tools,
        "`tools` must be a list of tool names",
        "e.g. tools: [read_file, edit_file, finish]",
    )?;
    for t in &list.0 {
        if let Some(d) = tool_diagnostic(sec, ws, t) {
            sec.push("tools", d);
        }
    }
    Some(list.0)
}

/// What is wrong with the entry `t` of `tools:`, by [`crate::tool_names::check`]: a
/// built-in tool, or an MCP server of loops.yaml (`server`, or `server.tool`), is right.
fn tool_diagnostic(sec: &Section, ws: &Workspace, t: &str) -> Option<Diagnostic> {
    use crate::tool_names::{check, ToolEntry, KNOWN};
    let names: Vec<&str> = ws.settings.mcp_servers.keys().map(String::as_str).collect();
    let listed = if names.is_empty() {
        "loops.yaml has no `mcp_servers:`".to_string()
    } else {
        format!("the MCP servers in loops.yaml are: {}", names.join(", "))
    };
    let rel = sec.file;
    match check(t, Some(&names)) {
        ToolEntry::Builtin | ToolEntry::Server { .. } => None,
        // `server.tool` can only mean an MCP server: a missing one is a mistake to fix.
        ToolEntry::MissingServer { server, suggestion } => {
            let help = match suggestion {
                Some(k) => format!("did you mean `{k}`? ({listed})"),
                None => format!("add it under `mcp_servers:` in loops.yaml, e.g. {server}: {{ command: [\"npx\", \"-y\", \"some-mcp-server\"] }} ({listed})"),
            };
            Some(Diagnostic::error(rel, format!("`{t}` in `tools` names MCP server `{server}`, which is not in loops.yaml `mcp_servers:`"))
                .at(sec.loc.value(&["tools"]))
                .help(help))
        }
        // A near miss of a real tool is a typo (`finsh`): an error, or the loop would run
        // without the tool it was written for.
        ToolEntry::Typo { suggestion } => Some(
            Diagnostic::error(rel, format!("unknown tool `{t}` in `tools`"))
                .help(format!("did you mean `{suggestion}`? Tools: {}; {listed}", KNOWN.join(", ")))
                .at(tool_pos(sec.loc, t)),
        ),
        // Any other name is a warning, not an error: loops written for other runners (or
        // for tools a later version adds) still run with what exists.
        ToolEntry::Unknown => Some(
            Diagnostic::warning(rel, format!("unknown tool `{t}` in `tools`"))
                .help(format!("it is not offered to the model; the tools are: {}; an MCP server's name (or `server.tool`) offers its tools ({listed})", KNOWN.join(", ")))
                .at(tool_pos(sec.loc, t)),
        ),
    }
}

/// Where the entry `t` of `tools:` is written (its list when it cannot be told apart).
fn tool_pos(loc: &YamlLocator, t: &str) -> Option<crate::diag::Pos> {
    let list = loc.value(&["tools"])?;
    let text = loc.line_text(list.line)?;
    // `tools: [read_file, finsh]` on one line: the word itself.
    let from = list.column.saturating_sub(1);
    let found = text
        .get(from..)?
        .match_indices(t)
        .map(|(i, _)| from + i)
        .find(|&i| {
            let before = text[..i].chars().last();
            let after = text[i + t.len()..].chars().next();
            let edge = |c: Option<char>| {
                c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            };
            edge(before) && edge(after)
        });
    if let Some(i) = found {
        return Some(crate::diag::Pos {
            line: list.line,
            column: i + 1,
        });
    }
    // A block list: the `- finsh` line below the key.
    let below = (list.line + 1..).map_while(|l| loc.line_text(l).map(|t| (l, t)));
    for (l, line) in below {
        let item = line.trim_start();
        let Some(rest) = item.strip_prefix("- ") else {
            if item.is_empty() || item.starts_with('#') {
                continue;
            }
            break;
        };
        if rest.trim().trim_matches(|c| c == '"' || c == '\'') == t {
            return Some(crate::diag::Pos {
                line: l,
                column: line.len() - rest.len() + 1,
            });
        }
    }
    Some(list)
}

fn parse_config(
    ws: &Workspace,
    name: &str,
    dir: &Path,
    rel: &Path,
    text: &str,
    has_prompt: bool,
) -> (Option<LoopDef>, Vec<Diagnostic>) {
    let loc = YamlLocator::new(text);
    let mut cx = Ctx {
        rel,
        loc: &loc,
        diags: Vec::new(),
    };
    let value: Value = match yaml_serde::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return (
                None,
                vec![crate::diag::yaml_syntax_diagnostic(rel, text, &e)],
            )
        }
    };
    let map = match value {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        _ => {
            cx.diags.push(
                Diagnostic::error(rel, "config.yaml must be a mapping of keys")
                    .at(Some(crate::diag::Pos { line: 1, column: 1 }))
                    .help("start with e.g. `schedule:` and `payload:`; see docs/configuration.md"),
            );
            return (None, cx.diags);
        }
    };
    let guard = crate::guard::parse(rel, &loc, &map, &mut cx.diags);
    let (yaml, mut sec) = Section::read::<ConfigYaml>(rel, &loc, &[], &map);
    let keys = read_loop_keys(&mut sec, ws, yaml);
    let settings = loop_settings(&mut sec, &map);
    cx.diags.extend(sec.finish());
    let budget = match map.get("budget") {
        Some(v) => crate::budget::parse(rel, &loc, &["budget"], v, &mut cx.diags),
        None => Default::default(),
    };

    let payload = parse_payload(&mut cx, keys.payload.as_ref(), has_prompt, dir);
    payload_warnings(&mut cx, ws, &keys, payload.as_ref());
    let schedule = loop_schedule(&mut cx, ws, name, &keys, &settings);
    check_provider(&mut cx, ws, name, payload.as_ref());

    // A loop's `env:` is written in config.yaml (and so in git), but a value whose name
    // says it is a secret still stays out of transcripts and logs.
    crate::secrets::learn(
        keys.env
            .iter()
            .filter(|(k, _)| crate::secrets::looks_secret(k))
            .map(|(_, v)| v),
    );
    let has_errors = cx.diags.iter().any(|d| d.is_error());
    let def = match (schedule, payload, has_errors) {
        (Some(schedule), Some(payload), false) => Some(LoopDef {
            budget,
            ..loop_def(name, dir, keys, schedule, payload, guard, settings)
        }),
        _ => None,
    };
    (def, cx.diags)
}

/// The loop, from config.yaml with no errors.
fn loop_def(
    name: &str,
    dir: &Path,
    keys: LoopKeys,
    schedule: Schedule,
    payload: Payload,
    guard: crate::guard::GuardConfig,
    settings: Mapping,
) -> LoopDef {
    LoopDef {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        description: keys.description,
        enabled: keys.enabled,
        schedule_fingerprint: format!(
            "{}|{}|{}",
            schedule.describe(),
            schedule.tz.name(),
            schedule.offset.as_millis()
        ),
        schedule,
        payload,
        timeout: keys.timeout,
        max_turns: keys.max_turns,
        session: keys.session,
        tools: keys.tools,
        concurrency: keys.concurrency,
        retry: keys.retry,
        env: keys.env,
        overlap: keys.overlap,
        gate: keys.gate,
        allowed_hosts: keys.allowed_hosts,
        reads: keys.reads,
        edit_prompt: keys.edit_prompt,
        deliver: keys.deliver,
        guard,
        settings,
        budget: Default::default(),
    }
}

/// The keys of config.yaml the runner does not read, kept for the prompt as the loop's
/// settings (with `timing`, which it reads too); a key one typo away from a known one is
/// a mistake, not a setting.
fn loop_settings(sec: &mut Section, map: &Mapping) -> Mapping {
    let unknown = sec.unknown();
    let mut settings = Mapping::new();
    for (k, v) in map {
        let kept = match k.as_str() {
            None | Some("timing") => true,
            Some(key) if unknown.iter().any(|u| u == key) => {
                if PAYLOAD_KEYS.contains(&key) {
                    sec.push(key, misplaced_payload_key(sec, key));
                    continue;
                }
                let typo = near_miss(key, TOP_KEYS).is_some_and(|known| known != key);
                if typo {
                    let d = Diagnostic::error(sec.file, format!("unknown key `{key}`"))
                        .at(sec.key_pos(key))
                        .help(format!(
                            "did you mean `{}`?",
                            near_miss(key, TOP_KEYS).unwrap_or_default()
                        ));
                    sec.push(key, d);
                }
                !typo
            }
            Some(_) => false,
        };
        if kept {
            settings.insert(k.clone(), v.clone());
        }
    }
    settings
}

/// A payload key written at the top level (`command: ./run.sh` beside `schedule:`): kept
/// as a setting it would leave the loop a prompt loop, or run another model, without a
/// word, so it is an error that says where the key goes.
fn misplaced_payload_key(sec: &Section, key: &str) -> Diagnostic {
    let example = match key {
        "command" | "kind" => "payload: { kind: command, command: [\"./run.sh\"] }",
        "model" => "payload: { kind: prompt, model: claude-sonnet-4-5 }",
        _ => "payload: { kind: prompt, provider: anthropic }",
    };
    Diagnostic::error(
        sec.file,
        format!("`{key}` belongs under `payload:`, not at the top level"),
    )
    .at(sec.key_pos(key))
    .help(format!(
        "move it into the payload, e.g. `{example}`; at the top level it would only be a setting handed to the prompt"
    ))
}

/// What the payload and the other keys say together: `post` with no channel to post
/// to, `deliver` on a prompt loop.
fn payload_warnings(cx: &mut Ctx, ws: &Workspace, keys: &LoopKeys, payload: Option<&Payload>) {
    let rel = cx.rel;
    let posts = keys
        .tools
        .as_ref()
        .is_some_and(|t| t.iter().any(|x| x == "post" || x == "deliver"));
    if ws.settings.channels.is_empty() && posts {
        cx.diags.push(
            Diagnostic::warning(rel, "`post` is in `tools`, but loops.yaml has no `channels:`: every post will fail")
                .at(cx.loc.value(&["tools"]))
                .help("add a channel, e.g. channels: { general: { kind: discord, url_env: DISCORD_WEBHOOK_URL } } (see docs/channels.md)"),
        );
    }
    if keys.deliver.is_some() && matches!(payload, Some(Payload::Prompt { .. })) {
        cx.diags.push(
            Diagnostic::warning(
                rel,
                "`deliver` applies to command loops: a prompt loop posts with the `post` tool",
            )
            .at(cx.loc.key(&["deliver"]))
            .help("add `post` to `tools:` and tell the model in prompt.md where to post"),
        );
    }
}

/// The loop's schedule: `schedule:`, else the Genesis `timing.interval_minutes`; and a
/// one-shot `at:` that has passed.
fn loop_schedule(
    cx: &mut Ctx,
    ws: &Workspace,
    name: &str,
    keys: &LoopKeys,
    settings: &Mapping,
) -> Option<Schedule> {
    let rel = cx.rel;
    if keys.schedule.is_some() && keys.timing_interval.is_some() {
        cx.diags.push(
            Diagnostic::warning(rel, "`timing.interval_minutes` is ignored because `schedule:` is set")
                .at(cx.loc.key(&["timing", "interval_minutes"]))
                .help("keep one: remove `timing.interval_minutes`, or remove `schedule:` to run every that many minutes"),
        );
    }
    let schedule = match (&keys.schedule, keys.timing_interval) {
        (Some(v), _) => parse_schedule(cx, ws, name, v),
        (None, Some(iv)) => Some(Schedule {
            when: When::Every(iv),
            tz: ws.default_timezone().0,
            tz_source: ws.default_timezone().1,
            jitter: Duration::ZERO,
            offset: Duration::ZERO,
            catch_up: CatchUp::Once,
            starting_deadline: Schedule::default_deadline(&When::Every(iv)),
            adaptive: None,
        }),
        // A `timing.interval_minutes` that is there but wrong has its own error already.
        (None, None)
            if settings
                .get("timing")
                .and_then(Value::as_mapping)
                .is_some_and(|m| m.contains_key("interval_minutes")) =>
        {
            None
        }
        (None, None) => {
            cx.diags.push(
                Diagnostic::error(rel, "this loop has no schedule")
                    .at(Some(crate::diag::Pos { line: 1, column: 1 }))
                    .help("add e.g. `schedule: { every: 10m }`, `schedule: { cron: \"0 9 * * *\" }` or `schedule: { at: 2026-12-01T09:00:00Z }`"),
            );
            None
        }
    };
    // A disabled loop is not expected to fire.
    if let Some(sch) = schedule.as_ref().filter(|_| keys.enabled) {
        if let When::At(t) = sch.when {
            past_at_warning(cx, t, sch.starting_deadline, Utc::now());
        }
    }
    schedule
}

/// A prompt loop's provider and model, as loops.yaml resolves them.
fn check_provider(cx: &mut Ctx, ws: &Workspace, name: &str, payload: Option<&Payload>) {
    let Some(Payload::Prompt {
        model,
        provider,
        options,
    }) = payload
    else {
        return;
    };
    if !ws.settings.has_providers {
        cx.diags.push(
            Diagnostic::warning(
                cx.rel,
                format!("prompt loop `{name}` is waiting for a provider"),
            )
            .help(crate::providers::PROVIDER_HELP),
        );
        return;
    }
    match crate::providers::resolve(
        &ws.settings.providers,
        &ws.settings.defaults,
        provider.as_deref(),
        model.as_deref(),
    ) {
        Ok((p, _)) => {
            // The loop's own options as its provider's kind reads them (the provider's
            // were checked in loops.yaml), in the order they are written.
            let mut found: Vec<Diagnostic> =
                crate::providers::wire_notes(p.kind, &p.name, p.max_tokens, options, "payload")
                    .into_iter()
                    .map(|n| {
                        let d = match n.severity {
                            crate::diag::Severity::Error => Diagnostic::error(cx.rel, n.message),
                            crate::diag::Severity::Warning => {
                                Diagnostic::warning(cx.rel, n.message)
                            }
                        };
                        d.at(cx.loc.value(&["payload", n.key])).help(n.help)
                    })
                    .collect();
            found.sort_by_key(|d| (d.line, d.column));
            cx.diags.extend(found);
        }
        Err((msg, help)) => {
            let at = if provider.is_some() {
                cx.loc.value(&["payload", "provider"])
            } else {
                None
            }
            .or(cx.loc.key(&["payload"]));
            cx.diags
                .push(Diagnostic::error(cx.rel, msg).at(at).help(help));
        }
    }
}

/// `payload:`, as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct PayloadYaml {
    kind: Field<Value>,
    command: Field<Value>,
    model: Field<String>,
    provider: Field<String>,
}

fn parse_payload(cx: &mut Ctx, v: Option<&Value>, has_prompt: bool, dir: &Path) -> Option<Payload> {
    let empty = Mapping::new();
    let map = match v {
        None | Some(Value::Null) => &empty,
        Some(Value::Mapping(m)) => m,
        Some(_) => {
            cx.err(
                &["payload"],
                "`payload` must be a mapping",
                "e.g. payload: { kind: command, command: [\"./run.sh\"] }",
            );
            return None;
        }
    };
    let (y, mut sec) = Section::read::<PayloadYaml>(cx.rel, cx.loc, &["payload"], map);
    let options = crate::request_options::read(&mut sec, map);
    sec.unknown_keys(PAYLOAD_KEYS);
    cx.diags.extend(sec.finish());
    let command = y.command.written().and_then(Result::ok);
    let kind = match y.kind.written().and_then(Result::ok) {
        None if command.is_some() => "command",
        None => "prompt",
        Some(Value::String(s)) if s == "command" => "command",
        Some(Value::String(s)) if s == "prompt" => "prompt",
        Some(other) => {
            cx.err(
                &["payload", "kind"],
                format!(
                    "`payload.kind` must be command or prompt, not {}",
                    show(&other)
                ),
                "command runs a program; prompt drives a model with prompt.md",
            );
            return None;
        }
    };
    if kind == "command" {
        if let Some(&key) = options.written_keys().first() {
            cx.err(
                &["payload", key],
                format!("`payload.{key}` is a request option of prompt loops; a command loop asks no model"),
                "remove it, or make this a prompt loop (`kind: prompt` with prompt.md)",
            );
        }
        let argv = command_argv(cx, command.as_ref())?;
        check_program(cx, &argv[0], dir);
        return Some(Payload::Command { argv });
    }
    if command.is_some() {
        cx.err(
            &["payload", "command"],
            "a prompt loop does not take `payload.command`",
            "set `kind: command` to run a program, or remove `command`",
        );
    }
    if !has_prompt {
        let rel = cx.rel;
        cx.diags.push(
            Diagnostic::error(rel, "a prompt loop needs prompt.md beside config.yaml")
                .at(cx.loc.key(&["payload"]).or(Some(crate::diag::Pos { line: 1, column: 1 })))
                .help(format!(
                    "create {}/prompt.md, or make it a command loop with `payload: {{ command: [\"./run.sh\"] }}`",
                    rel.parent().map(|p| p.display().to_string()).unwrap_or_default()
                )),
        );
    }
    Some(Payload::Prompt {
        model: y.model.written().and_then(Result::ok),
        provider: y.provider.written().and_then(Result::ok),
        options,
    })
}

/// A command loop's `payload.command`: an argv list, or a string run through `sh -c`.
fn command_argv(cx: &mut Ctx, command: Option<&Value>) -> Option<Vec<String>> {
    let at = ["payload", "command"];
    match command {
        None => {
            cx.err(
                &["payload"],
                "a command loop needs `payload.command`",
                "e.g. command: [\"./run.sh\", \"--quiet\"] or command: \"echo hello\"",
            );
            None
        }
        Some(Value::String(s)) if !s.trim().is_empty() => {
            Some(vec!["sh".to_string(), "-c".to_string(), s.clone()])
        }
        Some(Value::Sequence(seq)) if !seq.is_empty() => {
            let mut argv = Vec::new();
            for (i, item) in seq.iter().enumerate() {
                let Some(s) = crate::workspace::yaml_scalar(item) else {
                    cx.err(
                        &at,
                        format!("argument {} of `payload.command` is not a string", i + 1),
                        "every argument must be a plain string",
                    );
                    return None;
                };
                argv.push(s);
            }
            if argv[0].trim().is_empty() {
                cx.err(
                    &at,
                    "the program name in `payload.command` is empty",
                    "e.g. command: [\"./run.sh\"]",
                );
                return None;
            }
            Some(argv)
        }
        // `command: []`, `command: ""`, `command:` with nothing after it.
        Some(Value::Sequence(_) | Value::String(_) | Value::Null) => {
            cx.err(&at, "the command is empty", "give an argv list like [\"./run.sh\", \"--flag\"] or a shell string like \"echo hello\"");
            None
        }
        Some(other) => {
            cx.err(
                &at,
                format!("`payload.command` must be a list of strings or a string, not {}", describe_type(other)),
                "an argv list runs the program directly: [\"./run.sh\", \"--flag\"]; a string runs through sh -c: \"echo hello\" (quote it: command: \"42\")",
            );
            None
        }
    }
}

/// A relative program path is resolved in the loop's folder; say so early if missing.
fn check_program(cx: &mut Ctx, prog: &str, dir: &Path) {
    if (prog.starts_with("./") || prog.starts_with("../")) && !dir.join(prog).exists() {
        cx.err(
            &["payload", "command"],
            format!(
                "`{prog}` does not exist in {}",
                dir.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("the loop folder")
            ),
            "the command runs in the loop's folder; create the script there (and chmod +x it)",
        );
    }
}

/// `schedule:`, as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ScheduleYaml {
    every: Field<Value>,
    cron: Field<Value>,
    at: Field<Value>,
    timezone: Field<Value>,
    jitter: Field<Value>,
    catch_up: Field<Value>,
    starting_deadline: Field<Value>,
    adaptive: Field<Value>,
}

fn parse_schedule(cx: &mut Ctx, ws: &Workspace, name: &str, v: &Value) -> Option<Schedule> {
    let Some(map) = v.as_mapping() else {
        cx.err(
            &["schedule"],
            "`schedule` must be a mapping",
            "e.g. schedule: { every: 10m }",
        );
        return None;
    };
    let (y, mut sec) = Section::read::<ScheduleYaml>(cx.rel, cx.loc, &["schedule"], map);
    sec.unknown_keys(SCHEDULE_KEYS);
    cx.diags.extend(sec.finish());
    let (tz, tz_source) = match y.timezone.written().and_then(Result::ok) {
        None => ws.default_timezone(),
        Some(Value::String(s)) => match parse_timezone(&s) {
            Ok(tz) => (tz, TzSource::Loop),
            Err((m, h)) => {
                cx.err(&["schedule", "timezone"], m, h);
                return None;
            }
        },
        Some(_) => {
            cx.err(
                &["schedule", "timezone"],
                "`schedule.timezone` must be a zone name",
                "e.g. timezone: America/New_York",
            );
            return None;
        }
    };
    let when = schedule_when(cx, [y.every, y.cron, y.at], tz)?;
    let jitter = match y.jitter.written().and_then(Result::ok) {
        Some(j) => cx.duration(&["schedule", "jitter"], &j)?,
        None => Duration::ZERO,
    };
    if let When::Every(iv) = when {
        if jitter >= iv && !jitter.is_zero() {
            cx.err(
                &["schedule", "jitter"],
                "`schedule.jitter` must be shorter than the interval",
                "a jitter spreads loops inside one interval, e.g. every: 10m with jitter: 30s",
            );
            return None;
        }
    }
    let catch_up = match y.catch_up.written().and_then(Result::ok) {
        None => CatchUp::Once,
        Some(Value::String(s)) if s == "once" => CatchUp::Once,
        Some(Value::String(s)) if s == "skip" => CatchUp::Skip,
        Some(Value::String(s)) if s == "all" => CatchUp::All,
        Some(other) => {
            cx.err(
                &["schedule", "catch_up"],
                format!("`catch_up` must be once, skip or all, not {}", show(&other)),
                "once runs the latest missed slot; skip runs none; all runs each (up to 100)",
            );
            return None;
        }
    };
    let starting_deadline = match y.starting_deadline.written().and_then(Result::ok) {
        Some(d) => cx.duration(&["schedule", "starting_deadline"], &d)?,
        None => Schedule::default_deadline(&when),
    };
    let adaptive = match y.adaptive.written() {
        Some(v) => Some(parse_adaptive(cx, &when, v.unwrap_or_else(|v| v))?),
        None => None,
    };
    Some(Schedule {
        adaptive,
        offset: jitter_offset(name, jitter),
        when,
        tz,
        tz_source,
        jitter,
        catch_up,
        starting_deadline,
    })
}

/// `schedule.adaptive: {min, max}`: only beside `every`, with `min` no longer than `max`.
fn parse_adaptive(cx: &mut Ctx, when: &When, v: Value) -> Option<crate::schedule::Adaptive> {
    let at = ["schedule", "adaptive"];
    let help = "e.g. schedule: { every: 10m, adaptive: { min: 5m, max: 2h } }";
    if !matches!(when, When::Every(_)) {
        cx.err(&at, "`schedule.adaptive` needs `every`", help);
        return None;
    }
    let Some(m) = v.as_mapping() else {
        cx.err(
            &at,
            "`schedule.adaptive` must be a mapping with `min` and `max`",
            help,
        );
        return None;
    };
    if let Some(k) = m
        .keys()
        .filter_map(Value::as_str)
        .find(|k| !["min", "max"].contains(k))
    {
        let path = ["schedule", "adaptive", k];
        cx.diags.push(
            Diagnostic::error(cx.rel, format!("unknown key `{k}` in `schedule.adaptive`"))
                .at(cx.loc.key(&path))
                .help(help),
        );
        return None;
    }
    let mut bound = |k: &str| match m.get(k) {
        Some(d) => cx.duration(&["schedule", "adaptive", k], d),
        None => {
            cx.err(&at, format!("`schedule.adaptive` has no `{k}`"), help);
            None
        }
    };
    let (min, max) = (bound("min")?, bound("max")?);
    if min.is_zero() || min > max {
        cx.err(
            &["schedule", "adaptive", "min"],
            "`schedule.adaptive.min` must be longer than zero and no longer than `max`",
            help,
        );
        return None;
    }
    Some(crate::schedule::Adaptive { min, max })
}

/// When the schedule fires: exactly one of `every`, `cron` and `at`.
fn schedule_when(cx: &mut Ctx, kinds: [Field<Value>; 3], tz: chrono_tz::Tz) -> Option<When> {
    let written: Vec<(&str, Value)> = ["every", "cron", "at"]
        .into_iter()
        .zip(kinds)
        .filter_map(|(k, f)| f.written().and_then(Result::ok).map(|v| (k, v)))
        .collect();
    let (kind, v) = match written.as_slice() {
        [] => {
            cx.err(
                &["schedule"],
                "`schedule` needs one of every, cron or at",
                "e.g. every: 10m, cron: \"30 9 * * 1-5\", or at: 2026-12-01T09:00:00Z",
            );
            return None;
        }
        [(a, _), (b, _), ..] => {
            cx.err(
                &["schedule", b],
                format!("`schedule` has both {a} and {b}"),
                "a loop has one schedule: keep one of every, cron or at",
            );
            return None;
        }
        [(kind, v)] => (*kind, v),
    };
    match kind {
        "every" => {
            let d = cx.duration(&["schedule", "every"], v)?;
            if d < Duration::from_secs(1) {
                cx.err(
                    &["schedule", "every"],
                    "`schedule.every` must be at least 1s",
                    "e.g. every: 30s",
                );
                return None;
            }
            Some(When::Every(d))
        }
        "cron" => {
            let Some(expr) = v.as_str() else {
                cx.err(
                    &["schedule", "cron"],
                    "`schedule.cron` must be a quoted string",
                    "e.g. cron: \"30 9 * * 1-5\"",
                );
                return None;
            };
            match parse_cron(expr) {
                Ok(c) => Some(When::Cron {
                    expr: expr.trim().to_string(),
                    cron: Box::new(c),
                }),
                Err(p) => {
                    cx.err(&["schedule", "cron"], p.message, p.help);
                    None
                }
            }
        }
        _ => {
            let Some(s) = crate::workspace::yaml_scalar(v) else {
                cx.err(
                    &["schedule", "at"],
                    "`schedule.at` must be a date and time",
                    "e.g. at: 2026-12-01T09:00:00Z",
                );
                return None;
            };
            match parse_at(&s, tz) {
                Some(t) => Some(When::At(t)),
                None => {
                    cx.err(&["schedule", "at"], format!("`{s}` is not a date and time"), "write RFC 3339, e.g. 2026-12-01T09:00:00Z, or 2026-12-01T09:00:00 to read it in the loop's timezone");
                    None
                }
            }
        }
    }
}

/// A one-shot `at:` that has passed never fires (once its starting deadline has gone
/// too, not even as a caught-up run), while the loop is valid and `ok`: say so.
fn past_at_warning(cx: &mut Ctx, at: DateTime<Utc>, deadline: Duration, now: DateTime<Utc>) {
    if at > now {
        return;
    }
    let shown = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let until = chrono::Duration::from_std(deadline)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .filter(|u| *u > now);
    let message = match until {
        Some(u) => format!(
            "`schedule.at` {shown} has passed: this one-shot loop runs only if the runner catches it up before {} (its starting_deadline), and never after",
            u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => format!("`schedule.at` {shown} has passed: this one-shot loop never fires"),
    };
    cx.diags.push(
        Diagnostic::warning(cx.rel, message)
            .at(cx.loc.value(&["schedule", "at"]))
            .help("set a later time to run it once more, or set `enabled: false` (or remove the folder) when it is done"),
    );
}

/// `reads:`: workspace paths, folders or globs an isolated loop may read (`None`: not a
/// list). Each is checked as the sandbox will judge it, so a typo is found here and not
/// as a refusal mid-run.
fn read_reads(sec: &mut Section, items: Option<List<Value>>) -> Vec<String> {
    let example = "e.g. reads: [domains/news/state.md, notes/, \"drafts/scout/*.md\"] (paths from the workspace root)";
    let Some(List(items)) = items else {
        sec.error("reads", "`reads` must be a list of paths", example);
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = i.to_string();
        let problem = match item.as_str().map(str::trim).filter(|p| !p.is_empty()) {
            None => "each entry of `reads` must be a path".to_string(),
            Some(p) => match reads_refusal(p) {
                Some(why) => format!("`reads` entry {p:?}: {why}"),
                None => {
                    out.push(p.to_string());
                    continue;
                }
            },
        };
        let d = Diagnostic::error(sec.file, problem)
            .at(sec.loc.value(&["reads", &at]))
            .help(example);
        sec.push("reads", d);
    }
    out
}

/// Why the sandbox would never let an isolated loop read `p`, if it would not.
fn reads_refusal(p: &str) -> Option<&'static str> {
    let names: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if p.starts_with('/') || p.starts_with('~') {
        Some("it must be relative to the workspace root")
    } else if names.contains(&"..") {
        Some("'..' is not allowed")
    } else if p.contains('\\') {
        Some("use '/' between folders")
    } else if names.iter().any(|c| c.eq_ignore_ascii_case(".git")) {
        Some(".git/ is never readable by a loop")
    } else if names
        .first()
        .is_some_and(|c| c.eq_ignore_ascii_case(RUNTIME_DIR))
    {
        Some(".loops/ is never readable by an isolated loop")
    } else if names.is_empty() {
        Some("it names the whole workspace; list the folders the loop needs instead")
    } else {
        None
    }
}

/// `retry:`, as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RetryYaml {
    max_attempts: Field<Whole<1>>,
    backoff: Field<Value>,
    delay: Field<Value>,
    jitter: Field<f64>,
}

/// `retry:` over the defaults in `retry`; the problems, in the order the keys are written.
fn read_retry(
    rel: &Path,
    loc: &YamlLocator,
    map: &Mapping,
    retry: &mut RetryPolicy,
) -> Vec<Diagnostic> {
    let (y, mut sec) = Section::read::<RetryYaml>(rel, loc, &["retry"], map);
    if let Some(n) = sec.take(
        "max_attempts",
        y.max_attempts,
        "`retry.max_attempts` must be a whole number of at least 1",
        "1 means no retry",
    ) {
        retry.max_attempts = n.saturating_u32();
    }
    if let Field::Ok(v) = y.backoff {
        let options = [
            ("fixed", Backoff::Fixed),
            ("exponential", Backoff::Exponential),
        ];
        match one_of(&v, &options) {
            Some(b) => retry.backoff = b,
            None => sec.error(
                "backoff",
                format!(
                    "`retry.backoff` must be fixed or exponential, not {}",
                    show(&v)
                ),
                "exponential waits delay, 2·delay, 4·delay …",
            ),
        }
    }
    if let Field::Ok(v) = y.delay {
        if let Some(d) = section_duration(&mut sec, "delay", &v) {
            retry.delay = d;
        }
    }
    match y.jitter.written() {
        Some(Ok(j)) if (0.0..=1.0).contains(&j) => retry.jitter = j,
        Some(_) => sec.error(
            "jitter",
            "`retry.jitter` must be a fraction between 0 and 1",
            "e.g. jitter: 0.2 spreads each wait by ±20 %",
        ),
        None => {}
    }
    sec.unknown_keys(RETRY_KEYS);
    sec.finish()
}

/// Parses `at:`: RFC 3339, or a local date-time read in `tz`. Years run from 0000 to 9999,
/// as in RFC 3339: chrono's formats also read six-digit years, at the edge of its range,
/// where adding a jitter to the time overflows.
pub fn parse_at(s: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    use chrono::Datelike;
    parse_at_any_year(s, tz).filter(|t| (0..=9999).contains(&t.year()))
}

fn parse_at_any_year(s: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s.trim(), fmt) {
            return tz
                .from_local_datetime(&n)
                .earliest()
                .map(|t| t.with_timezone(&Utc));
        }
    }
    None
}

/// A number of minutes as a duration, when it is one: not negative, NaN or past
/// [`MAX_DURATION`].
fn minutes(n: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(n * 60.0)
        .ok()
        .filter(|d| *d <= MAX_DURATION)
}

mod ms {
    use serde::Serializer;
    use std::time::Duration;
    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_fields::{field_names, same_keys};

    #[test]
    fn the_keys_in_messages_are_the_keys_read() {
        same_keys(field_names::<ConfigYaml>(), TOP_KEYS);
        same_keys(field_names::<ScheduleYaml>(), SCHEDULE_KEYS);
        same_keys(field_names::<PayloadYaml>(), PAYLOAD_KEYS);
        same_keys(field_names::<RetryYaml>(), RETRY_KEYS);
    }
}
