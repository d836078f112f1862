//! The HTTP client for the `anthropic` and `openai` provider kinds: one request per model
//! call, retried on transient failures until the run's deadline.
//!
//! The API key is read from the environment at the moment of each request (so rotating
//! it needs no restart) and is never kept, logged or put in an error: nothing here that
//! could hold it derives `Debug`, the header is marked sensitive, and provider messages
//! are scrubbed of it before they are returned.

use super::model::{ModelReply, ModelRequest, StreamFailure, Usage};
use super::sse;
use super::{anthropic, openai};
use loops_core::duration::format_duration;
use loops_core::providers::{ProviderConfig, ProviderKind};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider {provider} needs an API key in ${env}; export it (it is read at each request and never written anywhere)")]
    MissingKey { provider: String, env: String },
    /// A refusal that the same request would meet again: never retried.
    #[error("provider {provider} rejected the request ({status}): {message}{hint}")]
    Rejected {
        provider: String,
        status: u16,
        message: String,
        class: Rejection,
        /// What to do about it, from `class` (starts with "; ", or is empty).
        hint: String,
    },
    #[error("provider {provider} sent a reply that could not be read: {message}")]
    Malformed { provider: String, message: String },
    #[error("provider {provider} kept failing until the run's deadline; the last failure: {last}")]
    Deadline { provider: String, last: String },
    /// Transient failures, each retried, until `max_retries` was used up.
    #[error("provider {provider} failed {attempts} time(s) in a row, the retries of providers.{provider}.max_retries ({retries}) used up; the last failure: {last}")]
    Exhausted {
        provider: String,
        attempts: u32,
        retries: u32,
        last: String,
    },
    #[error("{0}")]
    Client(String),
}

/// What kind of refusal a provider's error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The prompt does not fit the model's context. The numbers, when the message
    /// gives them: what the request needed and what the model takes, in tokens.
    ContextLength {
        asked: Option<u64>,
        limit: Option<u64>,
    },
    /// 400 or 422: the request itself is wrong.
    InvalidRequest,
    /// 401 or 403: the key.
    Auth,
    /// 404: the URL or the model.
    NotFound,
    Other,
}

impl ProviderError {
    /// Whether another provider might answer where this one could not: it is overloaded,
    /// down or stalled (not a refusal of the request itself).
    pub fn worth_a_fallback(&self) -> bool {
        matches!(
            self,
            ProviderError::Exhausted { .. } | ProviderError::Deadline { .. }
        )
    }
}

/// One model call that worked, and what it took.
#[derive(Debug, Clone)]
pub struct Completion {
    pub reply: ModelReply,
    /// HTTP requests made, the successful one included.
    pub attempts: u32,
    pub request_bytes: usize,
    /// One line per transient failure that was retried, e.g.
    /// `429 Too Many Requests; retry after 2s`.
    pub retried: Vec<String>,
    /// Time spent waiting on HTTP over all attempts (backoff sleeps excluded).
    pub server_time: Duration,
    /// Tokens of the attempts that failed (as reported, or as streamed), not in
    /// `reply.usage`: they are paid for all the same.
    pub lost: Usage,
}

/// The bytes a request would send (empty for `kind: command`, which has no wire format).
pub fn request_body(kind: ProviderKind, req: &ModelRequest<'_>) -> Vec<u8> {
    request_body_streamed(kind, req, true)
}

/// [`request_body`], streamed or not (`providers.X.stream`).
pub fn request_body_streamed(kind: ProviderKind, req: &ModelRequest<'_>, stream: bool) -> Vec<u8> {
    match kind {
        ProviderKind::Anthropic => anthropic::request_body_streamed(req, stream),
        ProviderKind::OpenAi => openai::request_body_streamed(req, stream),
        ProviderKind::Command => Vec::new(),
    }
}

const ANTHROPIC_VERSION: &str = "2023-06-01";
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

pub struct HttpProvider {
    cfg: ProviderConfig,
    endpoint: String,
    client: reqwest::Client,
}

// By hand, to keep it obvious that nothing secret could ever be printed.
impl std::fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProvider")
            .field("name", &self.cfg.name)
            .field("kind", &self.cfg.kind)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt {
    Done(ModelReply),
    /// Worth another try. `what` is logged and kept in [`Completion::retried`];
    /// `detail` (the provider's own message) only goes into a final error, since a body
    /// is not for logs. `wait` is what the server asked for, if it did; `spent` the
    /// tokens the attempt is known to have used.
    Transient {
        what: String,
        detail: Option<String>,
        wait: Option<Duration>,
        spent: Usage,
    },
    Fatal(ProviderError),
}

impl Attempt {
    fn transient(what: String) -> Attempt {
        Attempt::Transient {
            what,
            detail: None,
            wait: None,
            spent: Usage::default(),
        }
    }
}

/// How long one attempt may take: `idle` without a byte, `total` in all.
#[derive(Clone, Copy)]
struct Bounds {
    idle: Duration,
    total: Duration,
}

/// A reply being streamed, in either wire format.
enum Streamed {
    Anthropic(anthropic::Stream),
    OpenAi(openai::Stream),
}

impl Streamed {
    fn event(&mut self, e: &sse::Event) -> Result<(), StreamFailure> {
        match self {
            Streamed::Anthropic(s) => s.event(e.name.as_deref(), &e.data),
            Streamed::OpenAi(s) => s.event(&e.data),
        }
    }

    fn usage(&self) -> Usage {
        match self {
            Streamed::Anthropic(s) => s.usage(),
            Streamed::OpenAi(s) => s.usage(),
        }
    }

    fn complete(&self) -> bool {
        match self {
            Streamed::Anthropic(s) => s.complete(),
            Streamed::OpenAi(s) => s.complete(),
        }
    }

    fn finish(self) -> Result<ModelReply, String> {
        match self {
            Streamed::Anthropic(s) => s.finish(),
            Streamed::OpenAi(s) => s.finish(),
        }
    }
}

impl HttpProvider {
    pub fn new(cfg: &ProviderConfig) -> Result<HttpProvider, ProviderError> {
        let endpoint = match cfg.kind {
            ProviderKind::Anthropic => anthropic::endpoint(&cfg.base_url),
            ProviderKind::OpenAi => openai::endpoint(&cfg.base_url),
            ProviderKind::Command => {
                return Err(ProviderError::Client(format!(
                    "provider {} is kind: command; it is run as a program, not over HTTP",
                    cfg.name
                )))
            }
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("loops/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.idle_timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| {
                ProviderError::Client(format!("cannot set up the HTTP client: {}", chain(&e)))
            })?;
        Ok(HttpProvider {
            cfg: cfg.clone(),
            endpoint,
            client,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The request options each request carries (the provider's, with a loop's on top).
    pub fn options(&self) -> &loops_core::request_options::RequestOptions {
        &self.cfg.options
    }

    /// The provider's name in loops.yaml.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    /// [`HttpProvider::complete_counting`], the tokens of failed attempts in
    /// [`Completion::lost`] (and lost with an error).
    pub async fn complete(
        &self,
        req: &ModelRequest<'_>,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        let mut lost = Usage::default();
        self.complete_counting(req, deadline, &mut lost).await
    }

    /// Sends the request, retrying transient failures (connect errors, stalls, 408, 409,
    /// 429, 5xx, a body cut short) with backoff, at most `max_retries` times and never
    /// sleeping past `deadline`. The tokens of every failed attempt are added to `lost`
    /// as it fails, so a caller counts them whatever the end.
    pub async fn complete_counting(
        &self,
        req: &ModelRequest<'_>,
        deadline: Instant,
        lost: &mut Usage,
    ) -> Result<Completion, ProviderError> {
        let body = request_body_streamed(self.cfg.kind, req, self.cfg.stream);
        let request_bytes = body.len();
        let mut lost_here = Usage::default();
        let mut attempts = 0u32;
        let mut retried = Vec::new();
        let mut server_time = Duration::ZERO;
        let mut last: Option<String> = None;
        loop {
            let key = self
                .cfg
                .api_key()
                .map_err(|env| ProviderError::MissingKey {
                    provider: self.cfg.name.clone(),
                    env,
                })?;
            let now = Instant::now();
            if now >= deadline {
                return Err(self.deadline(last));
            }
            let total = self
                .cfg
                .request_timeout
                .unwrap_or(Duration::MAX)
                .min(deadline - now);
            // A whole reply sends nothing until it is done: only the total bounds it.
            let idle = if self.cfg.stream {
                self.cfg.idle_timeout
            } else {
                total
            };
            let bounds = Bounds { idle, total };
            attempts += 1;
            let started = Instant::now();
            let outcome = self.attempt(body.clone(), key.as_deref(), bounds).await;
            server_time += started.elapsed();
            let (what, asked) = match outcome {
                Attempt::Done(reply) => {
                    return Ok(Completion {
                        reply,
                        attempts,
                        request_bytes,
                        retried,
                        server_time,
                        lost: lost_here,
                    });
                }
                Attempt::Fatal(e) => return Err(e),
                Attempt::Transient {
                    what,
                    detail,
                    wait,
                    spent,
                } => {
                    lost.add(&spent);
                    lost_here.add(&spent);
                    last = Some(match detail {
                        Some(d) => format!("{what}: {d}"),
                        None => what.clone(),
                    });
                    (what, wait)
                }
            };
            if attempts > self.cfg.max_retries {
                return Err(ProviderError::Exhausted {
                    provider: self.cfg.name.clone(),
                    attempts,
                    retries: self.cfg.max_retries,
                    last: last.unwrap_or_default(),
                });
            }
            let wait = asked.unwrap_or_else(|| backoff(attempts - 1));
            if Instant::now() + wait >= deadline {
                return Err(self.deadline(last));
            }
            let line = format!("{what}; retry after {}", format_duration(wait));
            tracing::warn!(provider = %self.cfg.name, attempt = attempts, "{line}");
            retried.push(line);
            tokio::time::sleep(wait).await;
        }
    }

    fn deadline(&self, last: Option<String>) -> ProviderError {
        ProviderError::Deadline {
            provider: self.cfg.name.clone(),
            last: last.unwrap_or_else(|| "the deadline had passed before the first request".into()),
        }
    }

    async fn attempt(&self, body: Vec<u8>, key: Option<&str>, bounds: Bounds) -> Attempt {
        let headers = match self.headers(key) {
            Ok(h) => h,
            Err(e) => return Attempt::Fatal(e),
        };
        let send = self
            .client
            .post(&self.endpoint)
            .headers(headers)
            .timeout(bounds.total)
            .body(body)
            .send();
        let resp = match tokio::time::timeout(bounds.idle, send).await {
            Err(_) => return Attempt::transient(self.stalled("before the reply began", 0)),
            Ok(Err(e)) => return self.send_failure(&e, bounds.total),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let asked = retry_after(resp.headers());
        if status.is_success() && is_event_stream(resp.headers()) {
            return self.read_stream(resp, bounds, key).await;
        }
        match self.read_body(resp, bounds).await {
            Ok(bytes) => self.answer(status, asked, &bytes, key),
            Err(what) => Attempt::transient(format!("{}: {what}", status_line(status))),
        }
    }

    /// What a stall says: how long nothing came, and the key that sets it.
    fn stalled(&self, when: &str, events: u64) -> String {
        let after = if events > 0 {
            format!(" after {events} streamed event(s)")
        } else {
            String::new()
        };
        format!(
            "no bytes from the server for {} {when}{after} (providers.{}.idle_timeout; raise it for a slow model)",
            format_duration(self.cfg.idle_timeout),
            self.cfg.name
        )
    }

    /// A whole (not streamed) body, each piece within the idle timeout. `Err`: why not.
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        bounds: Bounds,
    ) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        loop {
            match tokio::time::timeout(bounds.idle, resp.chunk()).await {
                Err(_) => return Err(self.stalled("in the middle of the body", 0)),
                Ok(Ok(Some(piece))) => bytes.extend_from_slice(&piece),
                Ok(Ok(None)) => return Ok(bytes),
                Ok(Err(e)) if e.is_timeout() => {
                    return Err(format!(
                        "the body did not arrive within {} (providers.{}.timeout)",
                        format_duration(bounds.total),
                        self.cfg.name
                    ))
                }
                Ok(Err(e)) => return Err(format!("reading the body failed: {}", chain(&e))),
            }
        }
    }

    /// A streamed reply: events until the end, none more than `idle` after the last.
    /// A stall or a cut stream is transient, with the tokens it had used so far.
    async fn read_stream(
        &self,
        mut resp: reqwest::Response,
        bounds: Bounds,
        key: Option<&str>,
    ) -> Attempt {
        let mut acc = match self.cfg.kind {
            ProviderKind::Anthropic => Streamed::Anthropic(anthropic::Stream::default()),
            _ => Streamed::OpenAi(openai::Stream::default()),
        };
        let mut split = sse::Splitter::default();
        let mut events = 0u64;
        let cut = |what: String, acc: &Streamed| Attempt::Transient {
            what,
            detail: None,
            wait: None,
            spent: acc.usage(),
        };
        loop {
            let piece = match tokio::time::timeout(bounds.idle, resp.chunk()).await {
                Err(_) => return cut(self.stalled("in the middle of the stream", events), &acc),
                Ok(Ok(Some(piece))) => piece,
                Ok(Ok(None)) => break,
                Ok(Err(e)) if e.is_timeout() => {
                    let what = format!(
                        "the streamed reply took longer than {} (providers.{}.timeout)",
                        format_duration(bounds.total),
                        self.cfg.name
                    );
                    return cut(what, &acc);
                }
                Ok(Err(e)) => {
                    return cut(format!("the stream broke off: {}", chain(&e)), &acc);
                }
            };
            for e in split.push(&piece) {
                events += 1;
                if let Err(f) = acc.event(&e) {
                    return self.stream_failure(f, acc.usage(), key);
                }
            }
        }
        if let Some(e) = split.finish() {
            if let Err(f) = acc.event(&e) {
                return self.stream_failure(f, acc.usage(), key);
            }
        }
        if !acc.complete() {
            let what = format!("the stream ended after {events} event(s), before the reply did");
            return cut(what, &acc);
        }
        match acc.finish() {
            Ok(reply) => Attempt::Done(reply),
            Err(message) => Attempt::Fatal(ProviderError::Malformed {
                provider: self.cfg.name.clone(),
                message: scrub(message, key),
            }),
        }
    }

    /// An error inside a stream: the server's (overloaded, a failure mid-generation) is
    /// worth another try; an event that cannot be read is not.
    fn stream_failure(&self, f: StreamFailure, spent: Usage, key: Option<&str>) -> Attempt {
        match f {
            StreamFailure::Provider(message) => Attempt::Transient {
                what: "the server sent an error in the stream".into(),
                detail: Some(scrub(message, key)),
                wait: None,
                spent,
            },
            StreamFailure::Malformed(message) => Attempt::Fatal(ProviderError::Malformed {
                provider: self.cfg.name.clone(),
                message: scrub(message, key),
            }),
        }
    }

    /// The headers of a request: JSON, the API key as this provider's kind expects it,
    /// and Anthropic's API version.
    fn headers(&self, key: Option<&str>) -> Result<HeaderMap, ProviderError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = key {
            let value = match self.cfg.kind {
                ProviderKind::Anthropic => HeaderValue::from_str(key),
                _ => HeaderValue::from_str(&format!("Bearer {key}")),
            };
            let Ok(mut value) = value else {
                return Err(ProviderError::Client(format!(
                    "the API key in ${} is not a valid HTTP header value",
                    self.cfg.api_key_env.as_deref().unwrap_or("?")
                )));
            };
            value.set_sensitive(true);
            let name = match self.cfg.kind {
                ProviderKind::Anthropic => "x-api-key",
                _ => "authorization",
            };
            headers.insert(name, value);
        }
        if self.cfg.kind == ProviderKind::Anthropic {
            headers.insert(
                "anthropic-version",
                HeaderValue::from_static(ANTHROPIC_VERSION),
            );
        }
        Ok(headers)
    }

    /// What a response means: the reply, a failure worth retrying (408, 409, 429, 5xx,
    /// after the wait the server `asked` for), or a refusal; the key never shows in a
    /// message.
    fn answer(
        &self,
        status: reqwest::StatusCode,
        asked: Option<Duration>,
        bytes: &[u8],
        key: Option<&str>,
    ) -> Attempt {
        if status.is_success() {
            let parsed = match self.cfg.kind {
                ProviderKind::Anthropic => anthropic::parse_reply(bytes),
                _ => openai::parse_reply(bytes),
            };
            return match parsed {
                Ok(reply) => Attempt::Done(reply),
                Err(message) => Attempt::Fatal(ProviderError::Malformed {
                    provider: self.cfg.name.clone(),
                    message: scrub(message, key),
                }),
            };
        }
        let message = scrub(
            match self.cfg.kind {
                ProviderKind::Anthropic => anthropic::error_message(bytes),
                _ => openai::error_message(bytes),
            },
            key,
        );
        let code = status.as_u16();
        let class = classify(code, &message, bytes);
        let transient = matches!(code, 408 | 409 | 429) || status.is_server_error();
        if transient && class == Rejection::Other {
            return Attempt::Transient {
                what: status_line(status),
                detail: Some(message),
                wait: asked,
                spent: Usage::default(),
            };
        }
        Attempt::Fatal(ProviderError::Rejected {
            provider: self.cfg.name.clone(),
            status: code,
            hint: hint(&class, &self.cfg),
            message,
            class,
        })
    }

    fn send_failure(&self, e: &reqwest::Error, timeout: Duration) -> Attempt {
        if e.is_timeout() {
            return Attempt::transient(format!(
                "no response within {} (providers.{}.timeout)",
                format_duration(timeout),
                self.cfg.name
            ));
        }
        if e.is_connect() {
            return Attempt::transient(format!(
                "cannot connect to {}: {}",
                self.endpoint,
                chain(e)
            ));
        }
        // A keep-alive connection the server closed under us, a reset mid-request:
        // the next attempt opens a fresh connection.
        if e.is_request() || e.is_body() {
            return Attempt::transient(format!("the request failed: {}", chain(e)));
        }
        Attempt::Fatal(ProviderError::Client(format!(
            "provider {}: cannot send the request to {}: {}",
            self.cfg.name,
            self.endpoint,
            chain(e)
        )))
    }
}

/// The wait before retry number `n + 1`, when the server asked for none.
fn backoff(n: u32) -> Duration {
    loops_core::backoff::wait(
        BACKOFF_START,
        loops_core::backoff::Growth::Doubling,
        n,
        0.2,
        loops_core::backoff::random_spread(),
        BACKOFF_CAP,
    )
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// What kind of refusal an error is: a prompt too long for the context (whatever the
/// status: servers use 400 and 413), else by status.
pub fn classify(status: u16, message: &str, body: &[u8]) -> Rejection {
    let lower = message.to_ascii_lowercase();
    let body_type = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/type")
                .or_else(|| v.pointer("/error/code"))
                .and_then(|t| t.as_str().map(str::to_string))
        })
        .unwrap_or_default();
    let context = [
        "exceeds the available context size",
        "context_length_exceeded",
        "prompt is too long",
        "maximum context length",
        "context window",
    ]
    .iter()
    .any(|p| lower.contains(p))
        || matches!(
            body_type.as_str(),
            "exceed_context_size_error" | "context_length_exceeded"
        );
    if context {
        let (asked, limit) = context_numbers(message);
        return Rejection::ContextLength { asked, limit };
    }
    match status {
        400 | 413 | 422 => Rejection::InvalidRequest,
        401 | 403 => Rejection::Auth,
        404 => Rejection::NotFound,
        _ => Rejection::Other,
    }
}

/// The two token counts a context error gives ("request (2341 tokens) exceeds the
/// available context size (2048 tokens)", "prompt is too long: 208000 tokens > 200000
/// maximum", "maximum context length is 8192 tokens … resulted in 9000 tokens"): the
/// larger is what was asked, the smaller the limit.
fn context_numbers(message: &str) -> (Option<u64>, Option<u64>) {
    let numbers: Vec<u64> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .filter_map(|w| w.parse().ok())
        .filter(|n| *n >= 16)
        .collect();
    match numbers.as_slice() {
        [a, b, ..] if a != b => (Some(*a.max(b)), Some(*a.min(b))),
        _ => (None, None),
    }
}

/// What to do about a refusal, naming the setting.
fn hint(class: &Rejection, cfg: &ProviderConfig) -> String {
    let name = &cfg.name;
    match class {
        Rejection::ContextLength { asked, limit } => {
            let numbers = match (asked, limit) {
                (Some(a), Some(l)) => format!(" ({a} tokens asked, the model's context is {l})"),
                _ => String::new(),
            };
            format!(
                "; the prompt does not fit the model's context{numbers}, and retrying cannot change that: give the server a larger context (llama-server `-c`, Ollama `num_ctx`), use a model with a larger one, or shorten the prompt (state.md, the loop's settings)"
            )
        }
        Rejection::InvalidRequest => format!(
            "; not retried, the same request would be refused again: check providers.{name} (model, max_tokens) in loops.yaml"
        ),
        Rejection::Auth => match &cfg.api_key_env {
            Some(_) => format!("; not retried: check the key providers.{name}.api_key_env names"),
            None => format!("; not retried: providers.{name} sends no key (set api_key_env)"),
        },
        Rejection::NotFound => format!(
            "; not retried: check providers.{name}.base_url and the model name"
        ),
        Rejection::Other => String::new(),
    }
}

/// `429 Too Many Requests`; 529 is Anthropic's own and has no standard reason phrase.
fn status_line(status: StatusCode) -> String {
    match (status.as_u16(), status.canonical_reason()) {
        (529, _) => "529 Overloaded".into(),
        (code, Some(reason)) => format!("{code} {reason}"),
        (code, None) => code.to_string(),
    }
}

/// An error and its sources on one line: reqwest's own text ("error sending request")
/// says little without the cause underneath.
fn chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A provider could echo the key back (in an "invalid key" message, say).
fn scrub(message: String, key: Option<&str>) -> String {
    match key {
        Some(k) if k.len() >= 4 && message.contains(k) => message.replace(k, "[redacted]"),
        _ => message,
    }
}

/// `retry-after-ms`, or `retry-after` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let v = text("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let left = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(left.to_std().unwrap_or(Duration::ZERO))
}
