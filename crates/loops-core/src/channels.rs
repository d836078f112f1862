//! Delivery channels: where loops speak to people.
//!
//! loops.yaml `channels:` names each place a message can go: a Discord, Slack or Teams
//! incoming webhook, a generic JSON webhook (optionally signed with HMAC-SHA256), a
//! markdown file in the workspace, or a program the message is piped to. URLs, secrets
//! and header values come from environment variables named in the config and are read at
//! the moment of sending; they are never written anywhere.
//!
//! Every delivery goes through [`Poster::post`], which keeps the promises users of other
//! runners miss:
//! - silent tokens (`SILENT`, `NO_REPLY`, `HEARTBEAT_OK`) are never delivered;
//! - the never-share guard ([`crate::guard`]) checks the text and the whole request body;
//! - each delivery has an idempotency key (the logical run + channel + content hash) and
//!   a record in `.loops/deliveries/`, so a retried run or a replayed wake does not post
//!   the same message twice;
//! - transient failures (connection errors, timeouts, 429, 5xx, a failing command) are
//!   retried with backoff; a delivery that still fails is recorded as `delivery_failed`
//!   and handed to the main session with the undelivered text, so nothing said is lost.

use crate::diag::near_miss;
use crate::guard::{Blocked, Guard};
use crate::handoff::{NewHandoff, Priority};
use crate::history::Committer;
use crate::workspace::Workspace;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub use crate::channel_config::{ChannelConfig, ChannelKind, DeliveryRetry};

// ---------------------------------------------------------------------------------------
// Delivery records

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Being sent (or the sender died while sending).
    Sending,
    Delivered,
    /// Every attempt failed; the text was handed to the main session.
    DeliveryFailed,
    /// The never-share guard stopped it.
    Blocked,
}

impl DeliveryStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::DeliveryFailed => "delivery_failed",
            DeliveryStatus::Blocked => "blocked",
        }
    }
}

/// `.loops/deliveries/<key>.json`. The text itself is not kept here (it may be private);
/// its hash and size are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub key: String,
    pub channel: String,
    pub kind: ChannelKind,
    #[serde(rename = "loop")]
    pub loop_name: String,
    pub run: String,
    /// The logical run the key is made from (`loop@slot` for scheduled runs).
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    pub status: DeliveryStatus,
    pub content_sha256: String,
    pub bytes: usize,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    #[serde(default)]
    pub attempts: u32,
    /// Why the last attempt failed (never with the URL or a secret in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The rule that blocked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The handoff made for the main session (failed or blocked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<String>,
    /// Which process is sending, so a crashed sender's record can be taken over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `file` channels: the file written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// How many messages of a split text have been sent (Discord's 2,000-character limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parts_sent: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Discord's limit on one message's content, in characters.
pub const DISCORD_MAX_CHARS: usize = 2000;

/// `text` in pieces of at most `max` characters, split after a line break where there is
/// one (else after a space, else anywhere).
pub fn split_for(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        let cut_byte = rest
            .char_indices()
            .nth(max)
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let window = &rest[..cut_byte];
        let at = window
            .rfind('\n')
            .filter(|&i| i > 0)
            .or_else(|| window.rfind(' ').filter(|&i| i > 0))
            .map(|i| i + 1)
            .unwrap_or(cut_byte);
        out.push(rest[..at].trim_end().to_string());
        rest = &rest[at..];
    }
    if !rest.trim().is_empty() || out.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// Every record, newest first.
pub fn list_records(ws: &Workspace) -> Vec<DeliveryRecord> {
    let mut out: Vec<DeliveryRecord> = std::fs::read_dir(ws.layout().deliveries_dir())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a: &DeliveryRecord, b| b.created.cmp(&a.created).then(b.key.cmp(&a.key)));
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The idempotency key: the logical run, the channel and the content (text and thread).
pub fn delivery_key(scope: &str, channel: &str, thread: Option<&str>, text: &str) -> String {
    let content = sha256_hex(format!("{}\n{}", thread.unwrap_or(""), text).as_bytes());
    sha256_hex(format!("{scope}\n{channel}\n{content}").as_bytes())[..32].to_string()
}

// ---------------------------------------------------------------------------------------
// Posting

/// One message to send.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub channel: String,
    pub text: String,
    pub thread: Option<String>,
    /// The loop (or `main`, or `job-<id>`) speaking.
    pub loop_name: String,
    pub run_id: String,
    /// The logical run: a retry of the same slot, or a replayed wake, has the same scope.
    pub scope: String,
}

/// A delivery that happened (or had already happened).
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    pub key: String,
    /// Sent before under the same key: nothing was sent now.
    pub duplicate: bool,
    /// `file` channels: the file written (absolute), to be committed with the run.
    pub wrote: Option<PathBuf>,
    /// For people and the model: "posted to general (discord)".
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("{0}")]
    Invalid(String),
    #[error("there is no channel `{name}`: {help}")]
    UnknownChannel { name: String, help: String },
    #[error("{blocked}. Nothing was sent. Take that information out and post again, or hand the matter to the main session with create_handoff")]
    Blocked {
        blocked: Blocked,
        key: String,
        handoff: Option<String>,
    },
    #[error("delivery to `{channel}` failed after {attempts} attempt(s): {error}{}", handoff.as_ref().map(|h| format!(". The text was handed to the main session as {h}")).unwrap_or_default())]
    Failed {
        channel: String,
        key: String,
        attempts: u32,
        error: String,
        handoff: Option<String>,
    },
}

impl PostError {
    /// The record's status for this error, when one was recorded.
    pub fn status(&self) -> Option<(DeliveryStatus, &str)> {
        match self {
            PostError::Blocked { key, .. } => Some((DeliveryStatus::Blocked, key)),
            PostError::Failed { key, .. } => Some((DeliveryStatus::DeliveryFailed, key)),
            _ => None,
        }
    }
}

/// A short note of one delivery for the run record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryNote {
    pub channel: String,
    pub key: String,
    /// delivered | duplicate | delivery_failed | blocked
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<String>,
}

impl DeliveryNote {
    pub fn of(channel: &str, r: &Result<Posted, PostError>) -> Option<DeliveryNote> {
        let mut n = DeliveryNote {
            channel: channel.to_string(),
            key: String::new(),
            status: String::new(),
            rule: None,
            error: None,
            handoff: None,
        };
        match r {
            Ok(p) => {
                n.key = p.key.clone();
                n.status = if p.duplicate {
                    "duplicate"
                } else {
                    "delivered"
                }
                .into();
            }
            Err(PostError::Blocked {
                blocked,
                key,
                handoff,
            }) => {
                n.key = key.clone();
                n.status = "blocked".into();
                n.rule = Some(blocked.rule.clone());
                n.handoff = handoff.clone();
            }
            Err(PostError::Failed {
                key,
                error,
                handoff,
                ..
            }) => {
                n.key = key.clone();
                n.status = "delivery_failed".into();
                n.error = Some(error.clone());
                n.handoff = handoff.clone();
            }
            Err(_) => return None,
        }
        Some(n)
    }
}

/// Sends messages through the workspace's channels.
#[derive(Clone)]
pub struct Poster {
    ws: Arc<Workspace>,
    committer: Option<Committer>,
    guard: Guard,
    /// Whether a failed or blocked delivery becomes a handoff to the main session (not
    /// when the main session itself is speaking: it is told by the tool's error).
    handoffs: bool,
}

enum Attempt {
    Done(Option<PathBuf>),
    Transient(String, Option<Duration>),
    Permanent(String),
}

impl Poster {
    pub fn new(ws: Arc<Workspace>, committer: Option<Committer>, guard: Guard) -> Poster {
        Poster {
            ws,
            committer,
            guard,
            handoffs: true,
        }
    }

    /// No handoffs for failures: for the main session, which is who they would go to.
    pub fn without_handoffs(mut self) -> Poster {
        self.handoffs = false;
        self
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    pub fn channels(&self) -> &BTreeMap<String, ChannelConfig> {
        &self.ws.settings.channels
    }

    /// The configured channels, for messages: "general (discord), digest (file …)".
    pub fn channel_list(&self) -> String {
        let c: Vec<String> = self.channels().values().map(|c| c.describe()).collect();
        if c.is_empty() {
            "none are configured (loops.yaml `channels:`)".into()
        } else {
            c.join(", ")
        }
    }

    fn channel(&self, name: &str) -> Result<&ChannelConfig, PostError> {
        let channels = self.channels();
        if let Some(c) = channels.get(name.trim()) {
            return Ok(c);
        }
        // `discord:general`-style references (platform:channel, as Genesis configs write
        // them) name one configured channel by either part.
        if let Some((head, tail)) = name.split_once(':') {
            if let Some(c) = channels
                .get(tail.trim())
                .or_else(|| channels.get(head.trim()))
            {
                return Ok(c);
            }
        }
        let names: Vec<&str> = channels.keys().map(String::as_str).collect();
        let help = if names.is_empty() {
            "no channels are configured; add one under `channels:` in loops.yaml (see docs/channels.md)".to_string()
        } else {
            match near_miss(name, &names) {
                Some(n) => format!("did you mean `{n}`? The channels are: {}", names.join(", ")),
                None => format!("the channels are: {}", names.join(", ")),
            }
        };
        Err(PostError::UnknownChannel {
            name: name.to_string(),
            help,
        })
    }

    /// Sends one message, at most once per idempotency key. `deadline` bounds the retries.
    pub async fn post(&self, o: &Outbound, deadline: Instant) -> Result<Posted, PostError> {
        let text = strip_silent_lines(&o.text);
        if text.trim().is_empty() {
            return Err(PostError::Invalid(
                if o.text.trim().is_empty() {
                    "the message is empty"
                } else {
                    "silent tokens (SILENT, NO_REPLY, HEARTBEAT_OK) are never delivered; to say nothing, post nothing (or finish with silent: true)"
                }
                .into(),
            ));
        }
        let c = self.channel(&o.channel)?.clone();
        let thread = o.thread.as_deref().map(str::trim).filter(|t| !t.is_empty());
        let key = delivery_key(&o.scope, &c.name, thread, &text);
        let dir = self.ws.layout().deliveries_dir();
        let path = dir.join(format!("{key}.json"));
        let now = Utc::now();
        let mut rec = DeliveryRecord {
            key: key.clone(),
            channel: c.name.clone(),
            kind: c.kind,
            loop_name: o.loop_name.clone(),
            run: o.run_id.clone(),
            scope: o.scope.clone(),
            thread: thread.map(str::to_string),
            status: DeliveryStatus::Sending,
            content_sha256: sha256_hex(text.as_bytes()),
            bytes: text.len(),
            created: now,
            updated: now,
            attempts: 0,
            error: None,
            rule: None,
            handoff: None,
            pid: Some(std::process::id()),
            file: None,
            parts_sent: 0,
        };
        if let Some(repeat) = repeat_of(&c, &path, &mut rec) {
            return Ok(repeat);
        }
        // The guard sees the text and everything that leaves with it.
        let bodies = self.bodies(&c, &rec, &text);
        let checked = format!("{text}\n{}", bodies.join("\n"));
        if let Err(blocked) = self.guard.check(&checked) {
            return Err(self.block(o, &c, &path, rec, &text, blocked).await);
        }
        write_record(&path, &rec);
        match self
            .deliver(&c, &path, &mut rec, &text, &bodies, deadline)
            .await
        {
            Ok(wrote) => Ok(self.delivered(&c, &path, rec, wrote)),
            Err(last_error) => Err(self.failed(o, &c, &path, rec, &text, last_error).await),
        }
    }

    /// A delivery the guard refused: recorded `blocked`, handed to the main session once
    /// (with the text redacted).
    async fn block(
        &self,
        o: &Outbound,
        c: &ChannelConfig,
        path: &Path,
        mut rec: DeliveryRecord,
        text: &str,
        blocked: crate::guard::Blocked,
    ) -> PostError {
        rec.status = DeliveryStatus::Blocked;
        rec.rule = Some(blocked.rule.clone());
        rec.pid = None;
        let prior_handoff = read_record(path).and_then(|p| p.handoff);
        rec.handoff = match prior_handoff {
            Some(h) => Some(h),
            None if self.handoffs => {
                self.handoff_blocked(
                    &o.loop_name,
                    &o.run_id,
                    &format!("post to `{}`", c.describe()),
                    &c.name,
                    &blocked,
                    &self.guard.redact(text),
                )
                .await
            }
            None => None,
        };
        write_record(path, &rec);
        PostError::Blocked {
            blocked,
            key: rec.key,
            handoff: rec.handoff,
        }
    }

    fn delivered(
        &self,
        c: &ChannelConfig,
        path: &Path,
        mut rec: DeliveryRecord,
        wrote: Option<PathBuf>,
    ) -> Posted {
        rec.status = DeliveryStatus::Delivered;
        rec.updated = Utc::now();
        rec.error = None;
        rec.pid = None;
        rec.file = wrote
            .as_ref()
            .map(|w| self.ws.relative(w).display().to_string());
        write_record(path, &rec);
        let detail = match &rec.file {
            Some(f) => format!("posted to {} ({f})", c.name),
            None => format!("posted to {}", c.describe()),
        };
        Posted {
            key: rec.key,
            duplicate: false,
            wrote,
            detail,
        }
    }

    /// A delivery that still failed: recorded `delivery_failed` and handed to the main
    /// session with the undelivered text.
    async fn failed(
        &self,
        o: &Outbound,
        c: &ChannelConfig,
        path: &Path,
        mut rec: DeliveryRecord,
        text: &str,
        last_error: String,
    ) -> PostError {
        rec.status = DeliveryStatus::DeliveryFailed;
        rec.error = Some(last_error.clone());
        rec.updated = Utc::now();
        rec.pid = None;
        if self.handoffs {
            rec.handoff = self.handoff_failed(o, c, text, &last_error).await;
        }
        write_record(path, &rec);
        PostError::Failed {
            channel: c.name.clone(),
            key: rec.key,
            attempts: rec.attempts,
            error: last_error,
            handoff: rec.handoff,
        }
    }

    /// Attempts until one succeeds (the file it wrote, for a file channel), a permanent
    /// failure, the channel's attempts or the deadline; transient failures back off
    /// (doubling, or the server's `Retry-After`). `Err` is the last error.
    async fn deliver(
        &self,
        c: &ChannelConfig,
        path: &Path,
        rec: &mut DeliveryRecord,
        text: &str,
        bodies: &[String],
        deadline: Instant,
    ) -> Result<Option<PathBuf>, String> {
        let mut last_error = String::new();
        loop {
            rec.attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                last_error = if last_error.is_empty() {
                    "no time left in this run".into()
                } else {
                    format!("{last_error} (no time left to retry)")
                };
                break;
            }
            let limit = c.timeout.min(remaining);
            match self.attempt(c, rec, path, text, bodies, limit).await {
                Attempt::Done(wrote) => return Ok(wrote),
                Attempt::Permanent(e) => {
                    last_error = e;
                    break;
                }
                Attempt::Transient(e, retry_after) => {
                    last_error = e;
                    rec.error = Some(last_error.clone());
                    rec.updated = Utc::now();
                    write_record(path, rec);
                    if rec.attempts >= c.retry.max_attempts {
                        break;
                    }
                    let backoff = crate::backoff::wait(
                        c.retry.delay,
                        crate::backoff::Growth::Doubling,
                        (rec.attempts - 1).min(16),
                        0.0,
                        0.0,
                        c.retry.max_delay,
                    );
                    let wait = retry_after
                        .map(|r| r.min(c.retry.max_delay))
                        .unwrap_or(backoff);
                    if Instant::now() + wait >= deadline {
                        last_error = format!("{last_error} (no time left to retry)");
                        break;
                    }
                    tracing::info!(channel = %c.name, "delivery attempt {} failed ({last_error}); retrying in {wait:?}", rec.attempts);
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Err(last_error)
    }

    /// The JSON bodies of an HTTP channel, one per message (none for file and command
    /// channels). Discord takes 2,000 characters a message: a longer text is split at
    /// line breaks into several, never cut.
    fn bodies(&self, c: &ChannelConfig, rec: &DeliveryRecord, text: &str) -> Vec<String> {
        if c.kind == ChannelKind::Discord {
            return split_for(text, DISCORD_MAX_CHARS)
                .into_iter()
                .map(|part| {
                    let mut v = json!({ "content": part });
                    if let Some(u) = &c.username {
                        v["username"] = json!(u);
                    }
                    v.to_string()
                })
                .collect();
        }
        let v = match c.kind {
            ChannelKind::Discord => return Vec::new(),
            ChannelKind::Slack => {
                let mut v = json!({ "text": text });
                if let Some(t) = &rec.thread {
                    v["thread_ts"] = json!(t);
                }
                v
            }
            ChannelKind::Teams => json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [{ "type": "TextBlock", "text": text, "wrap": true }]
                    }
                }]
            }),
            ChannelKind::Webhook => json!({
                "id": rec.key,
                "channel": c.name,
                "text": text,
                "thread": rec.thread,
                "loop": rec.loop_name,
                "run": rec.run,
                "created": rec.created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }),
            ChannelKind::File | ChannelKind::Command => return Vec::new(),
        };
        vec![v.to_string()]
    }

    async fn attempt(
        &self,
        c: &ChannelConfig,
        rec: &mut DeliveryRecord,
        path: &Path,
        text: &str,
        bodies: &[String],
        limit: Duration,
    ) -> Attempt {
        match c.kind {
            ChannelKind::File => self.append_file(c, rec, text),
            ChannelKind::Command => self.pipe(c, rec, text, limit).await,
            _ => {
                // Parts already sent (by an earlier attempt, or a run that died) are
                // not sent again.
                while (rec.parts_sent as usize) < bodies.len() {
                    match self
                        .http(c, rec, &bodies[rec.parts_sent as usize], limit)
                        .await
                    {
                        Attempt::Done(_) => {
                            rec.parts_sent += 1;
                            if bodies.len() > 1 {
                                write_record(path, rec);
                            }
                        }
                        other => return other,
                    }
                }
                Attempt::Done(None)
            }
        }
    }

    fn append_file(&self, c: &ChannelConfig, rec: &DeliveryRecord, text: &str) -> Attempt {
        let Some(template) = &c.path else {
            return Attempt::Permanent("the channel has no path".into());
        };
        let now = Utc::now();
        let (tz, _) = self.ws.default_timezone();
        let local = now.with_timezone(&tz);
        let rel = template
            .replace("{date}", &local.format("%Y-%m-%d").to_string())
            .replace("{month}", &local.format("%Y-%m").to_string())
            .replace("{loop}", &slug(&rec.loop_name))
            .replace("{channel}", &slug(&c.name));
        if !crate::channel_config::file_path_ok(&rel) {
            return Attempt::Permanent(format!(
                "the file `{rel}` is outside the workspace; fix channels.{}.path",
                c.name
            ));
        }
        let path = self.ws.root.join(&rel);
        let mut entry = format!(
            "## {} — {}{}\n\n{}\n\n",
            local.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            rec.loop_name,
            rec.thread
                .as_deref()
                .map(|t| format!(" (thread {t})"))
                .unwrap_or_default(),
            text.trim_end()
        );
        let fresh = !path.exists();
        if fresh {
            entry = format!("# {}\n\n{entry}", c.name);
        }
        let r = path
            .parent()
            .map(crate::fsutil::create_dir_all)
            .transpose()
            .and_then(|_| {
                // Whole or not at all: the delivery is retried, and a retry after half an
                // entry would leave the half in the person's file.
                let f = crate::fsutil::open_append(&path)?;
                let before = f.metadata()?.len();
                crate::fsutil::append_whole(&f, before, entry.as_bytes())?;
                f.sync_data()
            });
        match r {
            Ok(()) => Attempt::Done(Some(path)),
            Err(e) => Attempt::Transient(format!("cannot append to {rel}: {e}"), None),
        }
    }

    async fn pipe(
        &self,
        c: &ChannelConfig,
        rec: &DeliveryRecord,
        text: &str,
        limit: Duration,
    ) -> Attempt {
        let Some(argv) = &c.command else {
            return Attempt::Permanent("the channel has no command".into());
        };
        let mut env = crate::exec::base_env();
        for name in &c.env {
            if let Ok(v) = crate::secrets::var(name) {
                env.push((name.clone(), v));
            }
        }
        env.push(("LOOPS_WORKSPACE".into(), self.ws.root.display().to_string()));
        env.push(("LOOPS_CHANNEL".into(), c.name.clone()));
        env.push(("LOOPS_LOOP".into(), rec.loop_name.clone()));
        env.push(("LOOPS_RUN_ID".into(), rec.run.clone()));
        env.push(("LOOPS_DELIVERY_ID".into(), rec.key.clone()));
        if let Some(t) = &rec.thread {
            env.push(("LOOPS_THREAD".into(), t.clone()));
        }
        let spec = crate::exec::ExecSpec {
            argv: argv.clone(),
            cwd: self.ws.root.clone(),
            env,
            timeout: limit,
            grace: crate::exec::KILL_GRACE.min(limit),
            on_spawn: None,
            // Line-oriented programs (read, mail, logger) want the last line ended.
            stdin: Some(format!("{}\n", text.trim_end_matches('\n')).into_bytes()),
        };
        let res = crate::exec::run(&spec, None, None).await;
        if res.success() {
            return Attempt::Done(None);
        }
        let mut why = res
            .failure_reason(limit)
            .unwrap_or_else(|| "the command failed".into());
        let err = res.stderr_tail.trim();
        if !err.is_empty() {
            why.push_str(&format!(": {}", crate::text::clip(err, 300)));
        }
        if res.spawn_error.is_some() {
            Attempt::Permanent(format!("{why}; fix channels.{}.command", c.name))
        } else {
            Attempt::Transient(why, None)
        }
    }

    async fn http(
        &self,
        c: &ChannelConfig,
        rec: &DeliveryRecord,
        body: &str,
        limit: Duration,
    ) -> Attempt {
        let (url, var) = match webhook_url(c, rec) {
            Ok(u) => u,
            Err(a) => return a,
        };
        let client = match reqwest::Client::builder()
            .timeout(limit)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("loops/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => return Attempt::Permanent(format!("cannot make an HTTP client: {e}")),
        };
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", rec.key.as_str());
        if c.kind == ChannelKind::Webhook {
            req = match webhook_headers(req, c, rec, body) {
                Ok(r) => r,
                Err(a) => return a,
            };
        }
        let resp = match req.body(body.to_string()).send().await {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    format!(
                        "no answer within {}",
                        crate::duration::format_duration(limit)
                    )
                } else if e.is_connect() {
                    "cannot connect".to_string()
                } else {
                    e.without_url().to_string()
                };
                return Attempt::Transient(what, None);
            }
        };
        http_answer(resp, var).await
    }

    async fn handoff_failed(
        &self,
        o: &Outbound,
        c: &ChannelConfig,
        text: &str,
        error: &str,
    ) -> Option<String> {
        let n = NewHandoff {
            from: o.loop_name.clone(),
            to: "main".into(),
            title: format!("Undelivered message for {}", c.name),
            priority: Priority::High,
            run: Some(o.run_id.clone()),
            tags: vec!["delivery-failed".into(), format!("channel:{}", c.name)],
            body: format!(
                "A message from `{}` to the channel `{}` could not be delivered: {error}.\n\nThe undelivered text:\n\n{}\n\n{}\n",
                o.loop_name,
                c.describe(),
                fence(text),
                o.thread
                    .as_deref()
                    .map(|t| format!("It was a reply in thread `{t}`."))
                    .unwrap_or_default()
            ),
            items: vec![
                format!("Deliver the text to {} (or another channel) once it works, or tell the user", c.name),
            ],
            ..Default::default()
        };
        self.make_handoff(n).await
    }

    /// Tells the main session that the guard stopped a text (`what`: "post to `x`",
    /// "handoff to `ops`"), with what matched taken out. None when it cannot be written
    /// or when the main session is the one speaking.
    pub async fn handoff_blocked(
        &self,
        loop_name: &str,
        run_id: &str,
        what: &str,
        target: &str,
        b: &Blocked,
        redacted: &str,
    ) -> Option<String> {
        if !self.handoffs {
            return None;
        }
        let n = NewHandoff {
            from: loop_name.to_string(),
            to: "main".into(),
            title: format!("A {} was blocked by the never-share guard", what.replace('`', "")),
            priority: Priority::High,
            run: Some(run_id.to_string()),
            tags: vec!["post-blocked".into(), format!("target:{target}")],
            body: format!(
                "`{loop_name}` tried a {what}, and the never-share guard stopped it: rule `{}` ({}). Nothing was sent.\n\nThe text, with what matched taken out:\n\n{}\n",
                b.rule,
                b.origin,
                fence(redacted)
            ),
            items: vec![format!(
                "Check what `{loop_name}` was about to share, and fix its prompt or data if it should not try again"
            )],
            ..Default::default()
        };
        self.make_handoff(n).await
    }

    async fn make_handoff(&self, n: NewHandoff) -> Option<String> {
        let ws = self.ws.clone();
        let committer = self.committer.clone();
        tokio::task::spawn_blocking(move || {
            crate::handoff::create_committed(&ws, committer.as_ref(), &n)
        })
        .await
        .ok()
        .flatten()
    }
}

/// The URL an http channel posts to, from the variable its `url_env` names (with a
/// Discord thread as `thread_id`), and that variable's name.
fn webhook_url<'c>(
    c: &'c ChannelConfig,
    rec: &DeliveryRecord,
) -> Result<(reqwest::Url, &'c str), Attempt> {
    let Some(var) = &c.url_env else {
        return Err(Attempt::Permanent("the channel has no url_env".into()));
    };
    let url = match crate::secrets::var(var) {
        Ok(u) if !u.trim().is_empty() => u.trim().to_string(),
        _ => {
            return Err(Attempt::Permanent(format!(
                "{var} is not set: export it with the {} webhook URL (for a service, in its environment file)",
                c.kind.as_str()
            )))
        }
    };
    let mut url = match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        _ => {
            return Err(Attempt::Permanent(format!(
                "{var} does not hold an http(s) URL; set it to the webhook URL"
            )))
        }
    };
    if c.kind == ChannelKind::Discord {
        if let Some(t) = &rec.thread {
            url.query_pairs_mut().append_pair("thread_id", t);
        }
    }
    Ok((url, var.as_str()))
}

/// A generic webhook's own headers: the delivery key, the time, the body's signature
/// when the channel has a secret, and the headers it takes from the environment.
fn webhook_headers(
    mut req: reqwest::RequestBuilder,
    c: &ChannelConfig,
    rec: &DeliveryRecord,
    body: &str,
) -> Result<reqwest::RequestBuilder, Attempt> {
    let ts = Utc::now().timestamp().to_string();
    req = req
        .header("x-loops-delivery", rec.key.as_str())
        .header("x-loops-timestamp", ts);
    if let Some(senv) = &c.secret_env {
        match crate::secrets::var(senv) {
            Ok(secret) if !secret.is_empty() => {
                req = req.header(
                    c.signature_header.as_str(),
                    format!(
                        "sha256={}",
                        hmac_sha256_hex(secret.as_bytes(), body.as_bytes())
                    ),
                );
            }
            _ => {
                return Err(Attempt::Permanent(format!(
                    "{senv} is not set: export the signing secret (channels.{}.secret_env)",
                    c.name
                )))
            }
        }
    }
    for (h, env) in &c.headers {
        match crate::secrets::var(env) {
            Ok(v) => req = req.header(h.as_str(), v),
            Err(_) => {
                return Err(Attempt::Permanent(format!(
                    "{env} is not set: export the value of the `{h}` header (channels.{}.headers)",
                    c.name
                )))
            }
        }
    }
    Ok(req)
}

/// What an http channel's answer means: delivered, worth another try (429, 408, 5xx,
/// after the server's Retry-After when it gives one), or refused for good.
async fn http_answer(resp: reqwest::Response, var: &str) -> Attempt {
    let status = resp.status();
    if status.is_success() {
        return Attempt::Done(None);
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
    let text = resp.text().await.unwrap_or_default();
    let detail = crate::text::clip(text.trim(), 200);
    let msg = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    };
    if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
        Attempt::Transient(msg, retry_after)
    } else {
        let hint = match status.as_u16() {
            401 | 403 => format!("; check the URL or credentials in {var}"),
            404 => format!("; the webhook no longer exists: update {var}"),
            _ => String::new(),
        };
        Attempt::Permanent(format!("{msg}{hint}"))
    }
}

/// The text without lines that are only a silent token (a reply that ends "HEARTBEAT_OK"
/// is not meant for people); empty when nothing else is left.
pub fn strip_silent_lines(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !crate::text::is_silent_token(l))
        .collect();
    let out = kept.join("\n");
    if out.trim().is_empty() {
        String::new()
    } else {
        out.trim_matches('\n').to_string()
    }
}

fn fence(text: &str) -> String {
    let mut ticks = "```".to_string();
    while text.contains(&ticks) {
        ticks.push('`');
    }
    format!("{ticks}text\n{}\n{ticks}", text.trim_end())
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn read_record(path: &Path) -> Option<DeliveryRecord> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn write_record(path: &Path, rec: &DeliveryRecord) {
    let r = path
        .parent()
        .map(crate::fsutil::create_dir_all)
        .transpose()
        .and_then(|_| {
            let text = serde_json::to_string_pretty(rec).map_err(std::io::Error::other)?;
            // An HTTP error quotes the webhook URL, token and all (src/secrets.rs).
            crate::fsutil::atomic_replace(path, crate::secrets::redact(&text).as_bytes())
        });
    if let Err(e) = r {
        tracing::warn!("cannot write the delivery record {}: {e}", path.display());
    }
}

/// HMAC-SHA256 of `body` under `key`, as lowercase hex.
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    match hmac::Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(body);
            hex(&m.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => String::new(),
    }
}

/// One key, one delivery: a record that says delivered (or is being sent by a live
/// process) makes this a repeat, said and not sent; otherwise `rec` carries on what an
/// earlier attempt of the same delivery began (its creation, the parts already sent).
fn repeat_of(c: &ChannelConfig, path: &Path, rec: &mut DeliveryRecord) -> Option<Posted> {
    let prev = read_record(path)?;
    let repeat = |detail: String| Posted {
        key: rec.key.clone(),
        duplicate: true,
        wrote: None,
        detail,
    };
    match prev.status {
        DeliveryStatus::Delivered => Some(repeat(format!(
            "already posted to {} at {} (same run, same text): not sent again",
            c.describe(),
            prev.updated
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))),
        DeliveryStatus::Sending
            if prev.pid.is_some_and(|p| {
                p != std::process::id() && crate::fsutil::process_alive(p, None)
            }) =>
        {
            Some(repeat(format!(
                "already being posted to {} by another process",
                c.describe()
            )))
        }
        _ => {
            rec.created = prev.created;
            rec.parts_sent = prev.parts_sent;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel_config::parse_channels;
    use crate::diag::YamlLocator;
    use yaml_serde::Value;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn keys_depend_on_scope_channel_and_content() {
        let a = delivery_key("news@2026-11-21T09:00:00Z", "general", None, "hi");
        assert_eq!(
            a,
            delivery_key("news@2026-11-21T09:00:00Z", "general", None, "hi")
        );
        assert_ne!(
            a,
            delivery_key("news@2026-11-21T10:00:00Z", "general", None, "hi")
        );
        assert_ne!(
            a,
            delivery_key("news@2026-11-21T09:00:00Z", "other", None, "hi")
        );
        assert_ne!(
            a,
            delivery_key("news@2026-11-21T09:00:00Z", "general", Some("t"), "hi")
        );
        assert_ne!(
            a,
            delivery_key("news@2026-11-21T09:00:00Z", "general", None, "hi!")
        );
    }

    #[test]
    fn long_texts_split_at_line_breaks_without_losing_anything() {
        let line = "word ".repeat(30); // 150 chars
        let text: String = (0..40).map(|i| format!("{i}: {line}\n")).collect();
        let parts = split_for(&text, DISCORD_MAX_CHARS);
        assert!(parts.len() >= 3, "{}", parts.len());
        assert!(parts.iter().all(|p| p.chars().count() <= DISCORD_MAX_CHARS));
        let joined: String = parts.join("\n");
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(squash(&joined), squash(&text));
        assert_eq!(split_for("short", 2000), vec!["short".to_string()]);
        let long_word = "x".repeat(4500);
        let p = split_for(&long_word, 2000);
        assert_eq!(p.iter().map(|x| x.len()).sum::<usize>(), 4500);
    }

    #[test]
    fn silent_lines_are_taken_out() {
        assert_eq!(strip_silent_lines("HEARTBEAT_OK"), "");
        assert_eq!(strip_silent_lines(" NO_REPLY \n"), "");
        assert_eq!(
            strip_silent_lines("News today\nHEARTBEAT_OK\n"),
            "News today"
        );
        assert_eq!(strip_silent_lines("SILENT is a word"), "SILENT is a word");
    }

    #[test]
    fn channel_config_errors_say_what_to_write() {
        let yaml = "channels:\n  general: { kind: discrod, url_env: X }\n  a: { kind: slack }\n  b: { kind: webhook, url_env: \"https://hooks.example.com/x\" }\n  c: { kind: file, path: ../out.md }\n  d: { kind: command, command: [\"./n.sh\"], colour: red }\n  ok: { kind: file, path: \"outbox/{date}.md\" }\n";
        let v: Value = yaml_serde::from_str(yaml).expect("yaml");
        let loc = YamlLocator::new(yaml);
        let mut d = Vec::new();
        let ch = parse_channels(
            Path::new("loops.yaml"),
            &loc,
            v.get("channels").expect("channels"),
            &mut d,
        );
        let all: String = d.iter().map(|x| format!("{x}\n")).collect();
        assert!(all.contains("did you mean `discord`"), "{all}");
        assert!(all.contains("has no `url_env`"), "{all}");
        assert!(
            all.contains("names an environment variable, not the value"),
            "{all}"
        );
        assert!(all.contains("inside the workspace"), "{all}");
        assert!(all.contains("unknown key `colour`"), "{all}");
        assert!(d.iter().all(|x| x.line.is_some()), "{all}");
        assert_eq!(ch.keys().collect::<Vec<_>>(), vec!["ok"]);
    }
}
