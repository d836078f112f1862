//! loops.yaml `channels:`: where messages can go, as configured (see [`crate::channels`] for
//! sending). Checked when loops.yaml is read, so a typo is reported with its line before any
//! message is sent.

use crate::diag::{near_miss, Diagnostic, YamlLocator};
use crate::duration::{parse_duration, DURATION_HELP};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use yaml_serde::Value;

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

fn parse_channel(
    rel: &Path,
    loc: &YamlLocator,
    name: &str,
    v: &Value,
    diags: &mut Vec<Diagnostic>,
) -> Option<ChannelConfig> {
    let err = |path: &[&str], msg: String, help: String| {
        Diagnostic::error(rel, msg).at(loc.value(path)).help(help)
    };
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
        diags.push(err(
            &["channels", name],
            format!("channel `{name}` must be a mapping"),
            example(None).into(),
        ));
        return None;
    };
    let before = diags.len();
    let kind_text = map
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| ChannelKind::parse(name).map(|_| name.to_string()));
    let kind = match kind_text.as_deref().map(|k| (k, ChannelKind::parse(k))) {
        Some((_, Some(k))) => k,
        Some((other, None)) => {
            let help = match near_miss(other, KINDS) {
                Some(k) => format!("did you mean `{k}`? kind is one of {}", KINDS.join(", ")),
                None => format!("kind is one of {}", KINDS.join(", ")),
            };
            diags.push(err(
                &["channels", name, "kind"],
                format!("channel `{name}`: unknown kind `{other}`"),
                help,
            ));
            return None;
        }
        None => {
            diags.push(
                Diagnostic::error(rel, format!("channel `{name}` has no `kind`"))
                    .at(loc.key(&["channels", name]))
                    .help(format!("add kind: one of {}", KINDS.join(", "))),
            );
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
    for (k, val) in map {
        let Some(key) = k.as_str() else { continue };
        let path = ["channels", name, key];
        let env_var = |val: &Value, diags: &mut Vec<Diagnostic>| -> Option<String> {
            match val.as_str() {
                Some(s) if env_name_ok(s) => Some(s.to_string()),
                Some(s) if s.starts_with("http://") || s.starts_with("https://") => {
                    diags.push(err(
                        &path,
                        format!("channel `{name}`: `{key}` names an environment variable, not the value itself"),
                        format!("put the value in an environment variable and name it: {key}: MY_{}_URL (keep secrets out of files)", name.to_ascii_uppercase().replace('-', "_")),
                    ));
                    None
                }
                _ => {
                    diags.push(err(
                        &path,
                        format!(
                            "channel `{name}`: `{key}` must be the name of an environment variable"
                        ),
                        format!(
                            "e.g. {key}: {}_URL",
                            name.to_ascii_uppercase().replace('-', "_")
                        ),
                    ));
                    None
                }
            }
        };
        match key {
            "kind" => {}
            "url_env" => c.url_env = env_var(val, diags),
            "secret_env" => c.secret_env = env_var(val, diags),
            "signature_header" => match val.as_str() {
                Some(h) if !h.trim().is_empty() => c.signature_header = h.trim().to_string(),
                _ => diags.push(err(&path, format!("channel `{name}`: `signature_header` must be a header name"), "e.g. signature_header: X-Hub-Signature-256".into())),
            },
            "username" => c.username = val.as_str().map(str::to_string),
            "headers" => match val.as_mapping() {
                Some(h) => {
                    for (hk, hv) in h {
                        match (hk.as_str(), hv.as_str()) {
                            (Some(hn), Some(ev)) if env_name_ok(ev) => {
                                c.headers.insert(hn.to_string(), ev.to_string());
                            }
                            _ => diags.push(err(
                                &path,
                                format!("channel `{name}`: each header maps to the environment variable holding its value"),
                                "e.g. headers: { Authorization: HOOK_AUTH } (HOOK_AUTH=\"Bearer …\" in the environment)".into(),
                            )),
                        }
                    }
                }
                None => diags.push(err(&path, format!("channel `{name}`: `headers` must be a mapping"), "e.g. headers: { Authorization: HOOK_AUTH }".into())),
            },
            "path" => match val.as_str() {
                Some(p) if file_path_ok(p) => c.path = Some(p.trim().trim_start_matches("./").to_string()),
                _ => diags.push(err(
                    &path,
                    format!("channel `{name}`: `path` must be a file inside the workspace (not under .git or .loops)"),
                    "e.g. path: \"outbox/{date}.md\" ({date}, {month}, {loop} and {channel} are filled in)".into(),
                )),
            },
            "command" => match val {
                Value::String(s) if !s.trim().is_empty() => {
                    c.command = Some(vec!["sh".into(), "-c".into(), s.clone()])
                }
                Value::Sequence(seq)
                    if !seq.is_empty() && seq.iter().all(|a| a.as_str().is_some()) =>
                {
                    c.command = Some(seq.iter().filter_map(|a| a.as_str().map(str::to_string)).collect())
                }
                _ => diags.push(err(&path, format!("channel `{name}`: `command` must be an argv list or a shell string"), example(Some(ChannelKind::Command)).into())),
            },
            "env" => match val.as_sequence() {
                Some(seq) if seq.iter().all(|e| e.as_str().is_some_and(env_name_ok)) => {
                    c.env = seq.iter().filter_map(|e| e.as_str().map(str::to_string)).collect()
                }
                _ => diags.push(err(&path, format!("channel `{name}`: `env` must be a list of environment variable names"), "e.g. env: [NTFY_TOKEN]".into())),
            },
            "timeout" => match val.as_str().map(parse_duration) {
                Some(Ok(d)) if !d.is_zero() => c.timeout = d,
                _ => diags.push(err(&path, format!("channel `{name}`: `timeout` must be a duration"), DURATION_HELP.into())),
            },
            "retry" => match val.as_mapping() {
                Some(r) => {
                    for (rk, rv) in r {
                        let Some(rk) = rk.as_str() else { continue };
                        let rpath = ["channels", name, "retry", rk];
                        match rk {
                            "max_attempts" => match rv.as_u64() {
                                Some(n) if (1..=20).contains(&n) => c.retry.max_attempts = n as u32,
                                _ => diags.push(err(&rpath, format!("channel `{name}`: retry.max_attempts must be 1 to 20"), "e.g. max_attempts: 4 (the first attempt counts)".into())),
                            },
                            "delay" | "max_delay" => match rv.as_str().map(parse_duration) {
                                Some(Ok(d)) => {
                                    if rk == "delay" {
                                        c.retry.delay = d
                                    } else {
                                        c.retry.max_delay = d
                                    }
                                }
                                _ => diags.push(err(&rpath, format!("channel `{name}`: retry.{rk} must be a duration"), DURATION_HELP.into())),
                            },
                            other => {
                                let help = match near_miss(other, RETRY_KEYS) {
                                    Some(k) => format!("did you mean `{k}`? retry keys: {}", RETRY_KEYS.join(", ")),
                                    None => format!("retry keys: {}", RETRY_KEYS.join(", ")),
                                };
                                diags.push(Diagnostic::error(rel, format!("channel `{name}`: unknown key `retry.{other}`")).at(loc.key(&rpath)).help(help))
                            }
                        }
                    }
                }
                None => diags.push(err(&path, format!("channel `{name}`: `retry` must be a mapping"), "e.g. retry: { max_attempts: 4, delay: 1s }".into())),
            },
            other => {
                let help = match near_miss(other, CHANNEL_KEYS) {
                    Some(k) => format!("did you mean `{k}`? Channel keys: {}", CHANNEL_KEYS.join(", ")),
                    None => format!("channel keys: {}", CHANNEL_KEYS.join(", ")),
                };
                diags.push(
                    Diagnostic::error(rel, format!("channel `{name}`: unknown key `{other}`"))
                        .at(loc.key(&path))
                        .help(help),
                );
            }
        }
    }
    // What each kind needs.
    if kind.is_http() && c.url_env.is_none() && diags.len() == before {
        diags.push(
            Diagnostic::error(rel, format!("channel `{name}` ({}) has no `url_env`", kind.as_str()))
                .at(loc.key(&["channels", name]))
                .help(format!("{} — the webhook URL is read from that environment variable when a message is sent", example(Some(kind)))),
        );
    }
    if kind == ChannelKind::File && c.path.is_none() && diags.len() == before {
        diags.push(
            Diagnostic::error(rel, format!("channel `{name}` (file) has no `path`"))
                .at(loc.key(&["channels", name]))
                .help(example(Some(kind))),
        );
    }
    if kind == ChannelKind::Command && c.command.is_none() && diags.len() == before {
        diags.push(
            Diagnostic::error(rel, format!("channel `{name}` (command) has no `command`"))
                .at(loc.key(&["channels", name]))
                .help(example(Some(kind))),
        );
    }
    if c.secret_env.is_some() && kind != ChannelKind::Webhook {
        diags.push(
            Diagnostic::warning(rel, format!("channel `{name}`: `secret_env` only signs `webhook` channels; it is ignored for {}", kind.as_str()))
                .at(loc.key(&["channels", name, "secret_env"])),
        );
    }
    (diags.len() == before || diags[before..].iter().all(|d| !d.is_error())).then_some(c)
}

pub fn file_path_ok(p: &str) -> bool {
    let p = p.trim().trim_start_matches("./");
    if p.is_empty() || p.starts_with('/') || p.ends_with('/') {
        return false;
    }
    let parts: Vec<&str> = p.split('/').collect();
    !parts.iter().any(|c| *c == ".." || c.is_empty())
        && !matches!(parts.first(), Some(&".git") | Some(&".loops"))
}
