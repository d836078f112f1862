//! The HTTP client for the `anthropic` and `openai` provider kinds: one request per model
//! call, retried on transient failures until the run's deadline.
//!
//! The API key is read from the environment at the moment of each request (so rotating
//! it needs no restart) and is never kept, logged or put in an error: nothing here that
//! could hold it derives `Debug`, the header is marked sensitive, and provider messages
//! are scrubbed of it before they are returned.

use super::model::{ModelReply, ModelRequest};
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
    #[error("provider {provider} rejected the request ({status}): {message}")]
    Rejected {
        provider: String,
        status: u16,
        message: String,
    },
    #[error("provider {provider} sent a reply that could not be read: {message}")]
    Malformed { provider: String, message: String },
    #[error("provider {provider} kept failing until the run's deadline; the last failure: {last}")]
    Deadline { provider: String, last: String },
    #[error("{0}")]
    Client(String),
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
}

/// The bytes a request would send (empty for `kind: command`, which has no wire format).
pub fn request_body(kind: ProviderKind, req: &ModelRequest<'_>) -> Vec<u8> {
    match kind {
        ProviderKind::Anthropic => anthropic::request_body(req),
        ProviderKind::OpenAi => openai::request_body(req),
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
    /// `detail` (the provider's own message) only goes into a final `Deadline`, since
    /// a body is not for logs. `wait` is what the server asked for, if it did.
    Transient {
        what: String,
        detail: Option<String>,
        wait: Option<Duration>,
    },
    Fatal(ProviderError),
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
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(30)))
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

    /// Sends the request, retrying transient failures (connect errors, timeouts, 408,
    /// 429, 5xx, a body cut short) with backoff, but never sleeping past `deadline`.
    pub async fn complete(
        &self,
        req: &ModelRequest<'_>,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        let body = request_body(self.cfg.kind, req);
        let request_bytes = body.len();
        let mut attempts = 0u32;
        let mut retried = Vec::new();
        let mut server_time = Duration::ZERO;
        let mut last: Option<String> = None;
        let mut retried_waits = 0u32;
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
            let timeout = self.cfg.request_timeout.min(deadline - now);
            attempts += 1;
            let started = Instant::now();
            let outcome = self.attempt(body.clone(), key.as_deref(), timeout).await;
            server_time += started.elapsed();
            let (what, asked) = match outcome {
                Attempt::Done(reply) => {
                    return Ok(Completion {
                        reply,
                        attempts,
                        request_bytes,
                        retried,
                        server_time,
                    })
                }
                Attempt::Fatal(e) => return Err(e),
                Attempt::Transient { what, detail, wait } => {
                    last = Some(match detail {
                        Some(d) => format!("{what}: {d}"),
                        None => what.clone(),
                    });
                    (what, wait)
                }
            };
            let wait = match asked {
                Some(w) => w,
                None => {
                    let w = loops_core::backoff::wait(
                        BACKOFF_START,
                        loops_core::backoff::Growth::Doubling,
                        retried_waits,
                        0.2,
                        loops_core::backoff::random_spread(),
                        BACKOFF_CAP,
                    );
                    retried_waits += 1;
                    w
                }
            };
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

    async fn attempt(&self, body: Vec<u8>, key: Option<&str>, timeout: Duration) -> Attempt {
        let headers = match self.headers(key) {
            Ok(h) => h,
            Err(e) => return Attempt::Fatal(e),
        };
        let sent = self
            .client
            .post(&self.endpoint)
            .headers(headers)
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return self.send_failure(&e, timeout),
        };
        let status = resp.status();
        let asked = retry_after(resp.headers());
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => {
                return Attempt::Transient {
                    what: format!(
                        "{}: the body did not arrive within {}",
                        status_line(status),
                        format_duration(timeout)
                    ),
                    detail: None,
                    wait: None,
                }
            }
            Err(e) => {
                return Attempt::Transient {
                    what: format!(
                        "{}: reading the body failed: {}",
                        status_line(status),
                        chain(&e)
                    ),
                    detail: None,
                    wait: None,
                }
            }
        };
        self.answer(status, asked, &bytes, key)
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

    /// What a response means: the reply, a failure worth retrying (408, 429, 5xx, after
    /// the wait the server `asked` for), or a refusal; the key never shows in a message.
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
        if matches!(code, 408 | 429) || status.is_server_error() {
            return Attempt::Transient {
                what: status_line(status),
                detail: Some(message),
                wait: asked,
            };
        }
        Attempt::Fatal(ProviderError::Rejected {
            provider: self.cfg.name.clone(),
            status: code,
            message,
        })
    }

    fn send_failure(&self, e: &reqwest::Error, timeout: Duration) -> Attempt {
        if e.is_timeout() {
            return Attempt::Transient {
                what: format!("no response within {}", format_duration(timeout)),
                detail: None,
                wait: None,
            };
        }
        if e.is_connect() {
            return Attempt::Transient {
                what: format!("cannot connect to {}: {}", self.endpoint, chain(e)),
                detail: None,
                wait: None,
            };
        }
        // A keep-alive connection the server closed under us, a reset mid-request:
        // the next attempt opens a fresh connection.
        if e.is_request() || e.is_body() {
            return Attempt::Transient {
                what: format!("the request failed: {}", chain(e)),
                detail: None,
                wait: None,
            };
        }
        Attempt::Fatal(ProviderError::Client(format!(
            "provider {}: cannot send the request to {}: {}",
            self.cfg.name,
            self.endpoint,
            chain(e)
        )))
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
