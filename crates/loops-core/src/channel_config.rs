//! loops.yaml `channels:`: where messages can go, as configured (see [`crate::channels`] for
//! sending). Checked when loops.yaml is read, so a typo is reported with its line before any
//! message is sent.

use crate::config_fields::{
    duration_of, env_names, CommandLine, DurationField, EnvName, Field, List, Map, NonEmpty,
    Section, Whole,
};
use crate::diag::{near_miss, Diagnostic, YamlLocator};
use crate::duration::DURATION_HELP;
use crate::layout::RUNTIME_DIR;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use yaml_serde::{Mapping, Value};

/// What kind of place a channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Discord,
    Slack,
    Teams,
    Webhook,
    File,
    Command,
}

impl ChannelKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelKind::Discord => "discord",
            ChannelKind::Slack => "slack",
            ChannelKind::Teams => "teams",
            ChannelKind::Webhook => "webhook",
            ChannelKind::File => "file",
            ChannelKind::Command => "command",
        }
    }

    fn parse(s: &str) -> Option<ChannelKind> {
        Some(match s {
            "discord" => ChannelKind::Discord,
            "slack" => ChannelKind::Slack,
            "teams" => ChannelKind::Teams,
            "webhook" => ChannelKind::Webhook,
            "file" => ChannelKind::File,
            "command" => ChannelKind::Command,
            _ => return None,
        })
    }

    fn is_http(&self) -> bool {
        !matches!(self, ChannelKind::File | ChannelKind::Command)
    }
}

const KINDS: &[&str] = &["discord", "slack", "teams", "webhook", "file", "command"];

/// How a failing delivery is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRetry {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The wait before the second attempt; doubled for each one after.
    pub delay: Duration,
    /// The longest single wait (a `Retry-After` is honoured up to this too).
    pub max_delay: Duration,
}

impl Default for DeliveryRetry {
    fn default() -> Self {
        DeliveryRetry {
            max_attempts: 4,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// One entry of loops.yaml `channels:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    /// HTTP kinds: the environment variable holding the webhook URL.
    pub url_env: Option<String>,
    /// `webhook`: the environment variable holding the HMAC-SHA256 key.
    pub secret_env: Option<String>,
    /// `webhook`: the header carrying the signature.
    pub signature_header: String,
    /// `webhook`: extra headers, each value read from the named environment variable.
    pub headers: BTreeMap<String, String>,
    /// `discord`: the name the message is posted under.
    pub username: Option<String>,
    /// `file`: the workspace-relative file, with `{date}`, `{month}`, `{loop}`, `{channel}`.
    pub path: Option<String>,
    /// `command`: the program and its arguments; the message is its stdin.
    pub command: Option<Vec<String>>,
    /// `command`: environment variables passed through to the program.
    pub env: Vec<String>,
    /// How long one attempt may take.
    pub timeout: Duration,
    pub retry: DeliveryRetry,
}

impl ChannelConfig {
    /// The environment variables whose values are secrets (for the redactor).
    pub fn secret_envs(&self) -> impl Iterator<Item = &String> {
        self.url_env
            .iter()
            .chain(self.secret_env.iter())
            .chain(self.headers.values())
    }

    /// One line for the model and `loops channels`: `general (discord)`.
    pub fn describe(&self) -> String {
        match (&self.kind, &self.path) {
            (ChannelKind::File, Some(p)) => format!("{} (file {p})", self.name),
            _ => format!("{} ({})", self.name, self.kind.as_str()),
        }
    }
}

const CHANNEL_KEYS: &[&str] = &[
    "kind",
    "url_env",
    "secret_env",
    "signature_header",
    "headers",
    "username",
    "path",
    "command",
    "env",
    "timeout",
    "retry",
];
const RETRY_KEYS: &[&str] = &["max_attempts", "delay", "max_delay"];

fn example(kind: Option<ChannelKind>) -> &'static str {
    match kind {
        Some(ChannelKind::Discord) => {
            "e.g. general: { kind: discord, url_env: DISCORD_WEBHOOK_URL }"
        }
        Some(ChannelKind::Slack) => "e.g. team: { kind: slack, url_env: SLACK_WEBHOOK_URL }",
        Some(ChannelKind::Teams) => "e.g. teams: { kind: teams, url_env: TEAMS_WEBHOOK_URL }",
        Some(ChannelKind::Webhook) => {
            "e.g. hooks: { kind: webhook, url_env: HOOK_URL, secret_env: HOOK_SECRET }"
        }
        Some(ChannelKind::File) => "e.g. digest: { kind: file, path: \"outbox/{date}.md\" }",
        Some(ChannelKind::Command) => {
            "e.g. notify: { kind: command, command: [\"./notify.sh\"] } (the message is its stdin)"
        }
        None => "e.g. general: { kind: discord, url_env: DISCORD_WEBHOOK_URL }",
    }
}

/// Parses `channels:`; problems become diagnostics and the entry is left out.
pub fn parse_channels(
    rel: &Path,
    loc: &YamlLocator,
    v: &Value,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, ChannelConfig> {
    let mut out = BTreeMap::new();
    let Some(map) = v.as_mapping() else {
        if !v.is_null() {
            diags.push(
                Diagnostic::error(rel, "`channels` must be a mapping of names to channels")
                    .at(loc.key(&["channels"]))
                    .help(example(None)),
            );
        }
        return out;
    };
    for (k, cv) in map {
        let Some(name) = k.as_str() else { continue };
        if let Some(c) = parse_channel(rel, loc, name, cv, diags) {
            out.insert(name.to_string(), c);
        }
    }
    out
}

fn env_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// One entry of `channels:`, as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ChannelYaml {
    kind: Field<String>,
    url_env: Field<String>,
    secret_env: Field<String>,
    signature_header: Field<NonEmpty>,
    headers: Field<Map>,
    username: Field<String>,
    path: Field<String>,
    command: Field<CommandLine>,
    env: Field<List<EnvName>>,
    timeout: Field<String>,
    retry: Field<Map>,
}

/// A channel's `retry:`, as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RetryYaml {
    max_attempts: Field<Whole<1, 20>>,
    delay: Field<String>,
    max_delay: Field<String>,
}

/// The channel's kind: `kind:`, else the name when the name is a kind (`discord:`).
fn channel_kind(
    rel: &Path,
    loc: &YamlLocator,
    name: &str,
    kind: &Field<String>,
) -> Result<ChannelKind, Diagnostic> {
    let written = match kind {
        Field::Ok(k) => Some(k.as_str()),
        _ => None,
    };
    let kind_text = written.or_else(|| ChannelKind::parse(name).map(|_| name));
    match kind_text.map(|k| (k, ChannelKind::parse(k))) {
        Some((_, Some(k))) => Ok(k),
        Some((other, None)) => {
            let help = match near_miss(other, KINDS) {
                Some(k) => format!("did you mean `{k}`? kind is one of {}", KINDS.join(", ")),
                None => format!("kind is one of {}", KINDS.join(", ")),
            };
            Err(
                Diagnostic::error(rel, format!("channel `{name}`: unknown kind `{other}`"))
                    .at(loc.value(&["channels", name, "kind"]))
                    .help(help),
            )
        }
        None => Err(
            Diagnostic::error(rel, format!("channel `{name}` has no `kind`"))
                .at(loc.key(&["channels", name]))
                .help(format!("add kind: one of {}", KINDS.join(", "))),
        ),
    }
}

fn parse_channel(
    rel: &Path,
    loc: &YamlLocator,
    name: &str,
    v: &Value,
    diags: &mut Vec<Diagnostic>,
) -> Option<ChannelConfig> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        diags.push(
            Diagnostic::error(
                rel,
                format!("channel name `{name}` may use only letters, digits, `-` and `_`"),
            )
            .at(loc.key(&["channels", name]))
            .help(example(None)),
        );
        return None;
    }
    let Some(map) = v.as_mapping() else {
        diags.push(
            Diagnostic::error(rel, format!("channel `{name}` must be a mapping"))
                .at(loc.value(&["channels", name]))
                .help(example(None)),
        );
        return None;
    };
    let (y, mut sec) = Section::read::<ChannelYaml>(rel, loc, &["channels", name], map);
    let kind = match channel_kind(rel, loc, name, &y.kind) {
        Ok(k) => k,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    let mut c = ChannelConfig {
        name: name.to_string(),
        kind,
        url_env: None,
        secret_env: None,
        signature_header: "X-Loops-Signature".into(),
        headers: BTreeMap::new(),
        username: None,
        path: None,
        command: None,
        env: Vec::new(),
        timeout: Duration::from_secs(if kind == ChannelKind::Command { 60 } else { 15 }),
        retry: DeliveryRetry::default(),
    };
    read_channel(&mut sec, name, y, &mut c);
    let mut found = sec.finish();
    found.extend(kind_needs(rel, loc, &c, found.is_empty()));
    let ok = found.iter().all(|d| !d.is_error());
    diags.extend(found);
    ok.then_some(c)
}

/// The settings of one channel, over its defaults.
fn read_channel(sec: &mut Section, name: &str, y: ChannelYaml, c: &mut ChannelConfig) {
    c.url_env = env_var(sec, name, "url_env", y.url_env);
    c.secret_env = env_var(sec, name, "secret_env", y.secret_env);
    if let Some(h) = sec.take(
        "signature_header",
        y.signature_header,
        format!("channel `{name}`: `signature_header` must be a header name"),
        "e.g. signature_header: X-Hub-Signature-256",
    ) {
        c.signature_header = h.0.trim().to_string();
    }
    // Any other value is no name to post under.
    c.username = match y.username {
        Field::Ok(u) => Some(u),
        _ => None,
    };
    if let Some(Map(h)) = sec.take(
        "headers",
        y.headers,
        format!("channel `{name}`: `headers` must be a mapping"),
        "e.g. headers: { Authorization: HOOK_AUTH }",
    ) {
        read_headers(sec, name, &h, c);
    }
    match y.path.written() {
        Some(Ok(p)) if file_path_ok(&p) => {
            c.path = Some(p.trim().trim_start_matches("./").to_string())
        }
        Some(_) => sec.error(
            "path",
            format!("channel `{name}`: `path` must be a file inside the workspace (not under .git or .loops)"),
            "e.g. path: \"outbox/{date}.md\" ({date}, {month}, {loop} and {channel} are filled in)",
        ),
        None => {}
    }
    c.command = sec
        .take(
            "command",
            y.command,
            format!("channel `{name}`: `command` must be an argv list or a shell string"),
            example(Some(ChannelKind::Command)),
        )
        .map(|cmd| cmd.0);
    if let Some(list) = sec.take(
        "env",
        y.env,
        format!("channel `{name}`: `env` must be a list of environment variable names"),
        "e.g. env: [NTFY_TOKEN]",
    ) {
        c.env = env_names(list.0);
    }
    match duration_of(y.timeout) {
        Some(DurationField::Ok(d)) if !d.is_zero() => c.timeout = d,
        Some(_) => sec.error(
            "timeout",
            format!("channel `{name}`: `timeout` must be a duration"),
            DURATION_HELP,
        ),
        None => {}
    }
    if let Some(Map(r)) = sec.take(
        "retry",
        y.retry,
        format!("channel `{name}`: `retry` must be a mapping"),
        "e.g. retry: { max_attempts: 4, delay: 1s }",
    ) {
        let retry = read_retry(sec.file, sec.loc, name, &r, &mut c.retry);
        sec.extend("retry", retry);
    }
    unknown_channel_keys(sec, name);
}

/// Keys a channel does not have, with the closest one.
fn unknown_channel_keys(sec: &mut Section, name: &str) {
    for other in sec.unknown() {
        let help = match near_miss(&other, CHANNEL_KEYS) {
            Some(k) => format!(
                "did you mean `{k}`? Channel keys: {}",
                CHANNEL_KEYS.join(", ")
            ),
            None => format!("channel keys: {}", CHANNEL_KEYS.join(", ")),
        };
        let d = Diagnostic::error(sec.file, format!("channel `{name}`: unknown key `{other}`"))
            .at(sec.key_pos(&other))
            .help(help);
        sec.push(&other, d);
    }
}

/// `url_env` or `secret_env`: the name of the variable that holds the value.
fn env_var(sec: &mut Section, name: &str, key: &str, f: Field<String>) -> Option<String> {
    let upper = name.to_ascii_uppercase().replace('-', "_");
    match f.written()? {
        Ok(s) if env_name_ok(&s) => return Some(s),
        Ok(s) if s.starts_with("http://") || s.starts_with("https://") => sec.error(
            key,
            format!("channel `{name}`: `{key}` names an environment variable, not the value itself"),
            format!("put the value in an environment variable and name it: {key}: MY_{upper}_URL (keep secrets out of files)"),
        ),
        _ => sec.error(
            key,
            format!("channel `{name}`: `{key}` must be the name of an environment variable"),
            format!("e.g. {key}: {upper}_URL"),
        ),
    }
    None
}

/// `headers:`: each header's value is read from the environment variable it names.
fn read_headers(sec: &mut Section, name: &str, h: &Mapping, c: &mut ChannelConfig) {
    for (hk, hv) in h {
        match (hk.as_str(), hv.as_str()) {
            (Some(hn), Some(ev)) if env_name_ok(ev) => {
                c.headers.insert(hn.to_string(), ev.to_string());
            }
            _ => sec.error(
                "headers",
                format!("channel `{name}`: each header maps to the environment variable holding its value"),
                "e.g. headers: { Authorization: HOOK_AUTH } (HOOK_AUTH=\"Bearer …\" in the environment)",
            ),
        }
    }
}

/// A channel's `retry:`.
fn read_retry(
    rel: &Path,
    loc: &YamlLocator,
    name: &str,
    map: &Mapping,
    retry: &mut DeliveryRetry,
) -> Vec<Diagnostic> {
    let (y, mut sec) = Section::read::<RetryYaml>(rel, loc, &["channels", name, "retry"], map);
    if let Some(n) = sec.take(
        "max_attempts",
        y.max_attempts,
        format!("channel `{name}`: retry.max_attempts must be 1 to 20"),
        "e.g. max_attempts: 4 (the first attempt counts)",
    ) {
        retry.max_attempts = n.0 as u32;
    }
    for (key, field, slot) in [
        ("delay", y.delay, &mut retry.delay),
        ("max_delay", y.max_delay, &mut retry.max_delay),
    ] {
        match duration_of(field) {
            Some(DurationField::Ok(d)) => *slot = d,
            Some(_) => sec.error(
                key,
                format!("channel `{name}`: retry.{key} must be a duration"),
                DURATION_HELP,
            ),
            None => {}
        }
    }
    for other in sec.unknown() {
        let help = match near_miss(&other, RETRY_KEYS) {
            Some(k) => format!("did you mean `{k}`? retry keys: {}", RETRY_KEYS.join(", ")),
            None => format!("retry keys: {}", RETRY_KEYS.join(", ")),
        };
        let d = Diagnostic::error(
            rel,
            format!("channel `{name}`: unknown key `retry.{other}`"),
        )
        .at(sec.key_pos(&other))
        .help(help);
        sec.push(&other, d);
    }
    sec.finish()
}

/// What each kind needs (said only of a channel with nothing else wrong), and a
/// `secret_env` that signs nothing.
fn kind_needs(rel: &Path, loc: &YamlLocator, c: &ChannelConfig, clean: bool) -> Vec<Diagnostic> {
    let (name, kind) = (c.name.as_str(), c.kind);
    let at = loc.key(&["channels", name]);
    let mut out = Vec::new();
    if clean && kind.is_http() && c.url_env.is_none() {
        out.push(
            Diagnostic::error(rel, format!("channel `{name}` ({}) has no `url_env`", kind.as_str()))
                .at(at)
                .help(format!("{} — the webhook URL is read from that environment variable when a message is sent", example(Some(kind)))),
        );
    }
    if clean && kind == ChannelKind::File && c.path.is_none() {
        out.push(
            Diagnostic::error(rel, format!("channel `{name}` (file) has no `path`"))
                .at(at)
                .help(example(Some(kind))),
        );
    }
    if clean && kind == ChannelKind::Command && c.command.is_none() {
        out.push(
            Diagnostic::error(rel, format!("channel `{name}` (command) has no `command`"))
                .at(at)
                .help(example(Some(kind))),
        );
    }
    if c.secret_env.is_some() && kind != ChannelKind::Webhook {
        out.push(
            Diagnostic::warning(rel, format!("channel `{name}`: `secret_env` only signs `webhook` channels; it is ignored for {}", kind.as_str()))
                .at(loc.key(&["channels", name, "secret_env"])),
        );
    }
    out
}

pub fn file_path_ok(p: &str) -> bool {
    let p = p.trim().trim_start_matches("./");
    if p.is_empty() || p.starts_with('/') || p.ends_with('/') {
        return false;
    }
    let parts: Vec<&str> = p.split('/').collect();
    !parts.iter().any(|c| *c == ".." || c.is_empty())
        && !parts
            .first()
            .is_some_and(|top| *top == ".git" || *top == RUNTIME_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_fields::{field_names, same_keys};

    #[test]
    fn the_keys_in_messages_are_the_keys_read() {
        same_keys(field_names::<ChannelYaml>(), CHANNEL_KEYS);
        same_keys(field_names::<RetryYaml>(), RETRY_KEYS);
    }
}
