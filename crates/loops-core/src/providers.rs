//! Providers as configured in loops.yaml: `providers:` by name and `defaults:`.
//!
//! ```yaml
//! providers:
//!   anthropic: { kind: anthropic, api_key_env: ANTHROPIC_API_KEY, model: claude-sonnet-4-5 }
//!   local:     { kind: openai, base_url: "http://127.0.0.1:11434/v1", model: llama3.1 }
//!   claude:    { kind: command, command: ["claude", "-p"], env: [ANTHROPIC_API_KEY] }
//! defaults: { provider: anthropic, model: claude-sonnet-4-5 }
//! ```

use crate::config_fields::{
    duration_of, env_names, CommandLine, DurationField, EnvName, Field, List, NonEmpty, Section,
    Whole,
};
use crate::diag::{near_miss, Diagnostic, Severity, YamlLocator};
use crate::duration::DURATION_HELP;
use crate::request_options::RequestOptions;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use yaml_serde::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// The Anthropic Messages API.
    Anthropic,
    /// OpenAI Chat Completions and every server that speaks it.
    OpenAi,
    /// An external agent CLI given the prompt on stdin.
    Command,
}

impl ProviderKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenAi => "openai",
            ProviderKind::Command => "command",
        }
    }
}

/// One entry of `providers:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// The API root, e.g. `https://api.anthropic.com` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// The environment variable holding the API key, read at the moment of each request.
    pub api_key_env: Option<String>,
    /// The model a loop gets when neither it nor `defaults:` names one.
    pub model: Option<String>,
    pub max_tokens: u32,
    /// How long a request may go without a byte from the server (before the headers, or
    /// between two pieces of a streamed reply) before the attempt counts as stalled: a
    /// long generation that keeps streaming is never cut.
    pub idle_timeout: Duration,
    /// Ask for a streamed reply (SSE). `stream: false` for a server that refuses
    /// streaming: the reply comes whole, bounded by `timeout` and the run's own.
    pub stream: bool,
    /// `timeout:` / `request_timeout:`: a cap on one attempt's whole time, when written.
    /// Unset by default: the run's own `timeout:` bounds a turn.
    pub request_timeout: Option<Duration>,
    /// Retries of one turn after a transient failure (so `max_retries + 1` requests at
    /// most), before the turn goes to a fallback provider or fails.
    pub max_retries: u32,
    /// Providers a turn goes to, in order, when this one is overloaded, keeps failing or
    /// stalls (`fallback: [b, c]`).
    pub fallback: Vec<String>,
    /// For `kind: command`: the program and its arguments.
    pub command: Option<Vec<String>>,
    /// For `kind: command`: environment variables passed through to the program.
    pub env: Vec<String>,
    /// How the model is asked (tool_choice, temperature, …): crate::request_options.
    pub options: crate::request_options::RequestOptions,
}

impl ProviderConfig {
    /// What a provider of `kind` is when loops.yaml says no more than its kind.
    pub fn new(name: &str, kind: ProviderKind) -> ProviderConfig {
        provider_defaults(name, kind)
    }

    /// The API key, read from the environment now. `Err` names the variable when the
    /// config asks for one and it is unset, unless the server is on this machine: a
    /// local server (llama.cpp, Ollama) needs no key, so an unset one sends none.
    pub fn api_key(&self) -> Result<Option<String>, String> {
        match &self.api_key_env {
            None => Ok(None),
            Some(var) => match crate::secrets::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
                _ if self.is_local() => Ok(None),
                _ => Err(var.clone()),
            },
        }
    }

    /// Whether `base_url` points at this machine (localhost, 127.0.0.0/8, ::1).
    pub fn is_local(&self) -> bool {
        self.kind != ProviderKind::Command && is_local_url(&self.base_url)
    }
}

/// Whether an http(s) URL's host is this machine.
pub fn is_local_url(base_url: &str) -> bool {
    let Ok(url) = url::Url::parse(base_url) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `defaults:`: what a prompt loop gets when it names no provider or model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Defaults {
    pub provider: Option<String>,
    pub model: Option<String>,
}

/// `idle_timeout` unless written: longer than a CPU model takes to read a long prompt
/// before its first token.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// `max_retries` unless written.
pub const DEFAULT_MAX_RETRIES: u32 = 2;

/// The model an `anthropic` provider uses when nothing names one.
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";

const PROVIDER_KEYS: &[&str] = &[
    "kind",
    "base_url",
    "api_key_env",
    "model",
    "max_tokens",
    "timeout",
    "request_timeout",
    "idle_timeout",
    "stream",
    "max_retries",
    "fallback",
    "default_model",
    "command",
    "env",
];
const DEFAULT_KEYS: &[&str] = &["provider", "model"];

/// Parses `providers:`; problems become diagnostics and the entry is left out.
pub fn parse_providers(
    rel: &Path,
    loc: &YamlLocator,
    v: &Value,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, ProviderConfig> {
    let mut out = BTreeMap::new();
    let Some(map) = v.as_mapping() else {
        if !v.is_null() {
            diags.push(
                Diagnostic::error(rel, "`providers` must be a mapping of names to providers")
                    .at(loc.key(&["providers"]))
                    .help("e.g. providers: { anthropic: { kind: anthropic, api_key_env: ANTHROPIC_API_KEY } }"),
            );
        }
        return out;
    };
    for (k, pv) in map {
        let Some(name) = k.as_str() else { continue };
        if let Some(p) = parse_provider(rel, loc, name, pv, diags) {
            out.insert(name.to_string(), p);
        }
    }
    diags.extend(check_fallbacks(rel, loc, &out));
    out
}

/// Every `fallback:` names an HTTP provider with a model, and no chain comes back to
/// where it started.
fn check_fallbacks(
    rel: &Path,
    loc: &YamlLocator,
    providers: &BTreeMap<String, ProviderConfig>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let names: Vec<&str> = providers.keys().map(String::as_str).collect();
    for (name, p) in providers {
        let at = loc.value(&["providers", name, "fallback"]);
        for f in &p.fallback {
            let problem = match providers.get(f) {
                None => Some((
                    format!("providers.{name}.fallback names `{f}`, which is not in `providers:`"),
                    match near_miss(f, &names) {
                        Some(k) => format!("did you mean `{k}`?"),
                        None => format!("providers here: {}", names.join(", ")),
                    },
                )),
                Some(q) if q.kind == ProviderKind::Command => Some((
                    format!("providers.{name}.fallback names `{f}`, an agent CLI (kind: command)"),
                    "a turn can go only to an HTTP provider (kind: anthropic or openai)".into(),
                )),
                Some(q) if q.model.is_none() => Some((
                    format!("providers.{name}.fallback names `{f}`, which has no `model:`"),
                    format!("a turn that goes to `{f}` runs on its own model: add `model:` under providers.{f}"),
                )),
                Some(_) => None,
            };
            if let Some((message, help)) = problem {
                out.push(Diagnostic::error(rel, message).at(at).help(help));
            }
        }
        if let Some(cycle) = fallback_cycle(providers, name) {
            out.push(
                Diagnostic::error(
                    rel,
                    format!(
                        "providers.{name}.fallback comes back to itself: {}",
                        cycle.join(" -> ")
                    ),
                )
                .at(at)
                .help("a fallback chain must end; remove one of these `fallback:` entries"),
            );
        }
    }
    out
}

/// The path from `start` back to `start` through `fallback:` lists, if there is one.
fn fallback_cycle(
    providers: &BTreeMap<String, ProviderConfig>,
    start: &str,
) -> Option<Vec<String>> {
    fn walk(
        providers: &BTreeMap<String, ProviderConfig>,
        start: &str,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        let here = path.last()?.clone();
        for next in providers
            .get(&here)
            .map(|p| p.fallback.as_slice())
            .unwrap_or(&[])
        {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if path.contains(next) {
                continue;
            }
            path.push(next.clone());
            if let Some(c) = walk(providers, start, path) {
                return Some(c);
            }
            path.pop();
        }
        None
    }
    walk(providers, start, &mut vec![start.to_string()])
}

/// The providers a turn on `name` may go to, in order: its `fallback:` list, each
/// followed by its own fallbacks, none twice and never `name` itself.
pub fn fallback_chain(
    providers: &BTreeMap<String, ProviderConfig>,
    name: &str,
) -> Vec<ProviderConfig> {
    fn push(
        providers: &BTreeMap<String, ProviderConfig>,
        name: &str,
        seen: &mut Vec<String>,
        out: &mut Vec<ProviderConfig>,
    ) {
        let Some(p) = providers.get(name) else { return };
        for f in &p.fallback {
            if seen.contains(f) {
                continue;
            }
            seen.push(f.clone());
            if let Some(q) = providers.get(f) {
                out.push(q.clone());
                push(providers, f, seen, out);
            }
        }
    }
    let mut out = Vec::new();
    push(providers, name, &mut vec![name.to_string()], &mut out);
    out
}

/// Warnings for `loops check`: a provider on another machine whose key variable is
/// unset now would fail its first request.
pub fn key_warnings(providers: &BTreeMap<String, ProviderConfig>) -> Vec<Diagnostic> {
    providers
        .values()
        .filter(|p| p.kind != ProviderKind::Command)
        .filter_map(|p| match p.api_key() {
            Err(var) => Some(
                Diagnostic::warning(
                    Path::new("loops.yaml"),
                    format!("provider `{}` needs an API key, and ${var} is not set", p.name),
                )
                .help(format!(
                    "export {var}=… where loops runs (it is read at each request, never written anywhere); a provider on this machine (base_url on 127.0.0.1 or localhost) needs none"
                )),
            ),
            Ok(_) => None,
        })
        .collect()
}

/// One entry of `providers:`, as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ProviderYaml {
    kind: Field<String>,
    base_url: Field<String>,
    /// A variable name, or nothing for no key.
    api_key_env: Field<Value>,
    model: Field<NonEmpty>,
    max_tokens: Field<Whole<1, 1_000_000>>,
    timeout: Field<String>,
    request_timeout: Field<String>,
    idle_timeout: Field<String>,
    stream: Field<bool>,
    max_retries: Field<Whole<0, 100>>,
    fallback: Field<List<NonEmpty>>,
    default_model: Field<NonEmpty>,
    command: Field<CommandLine>,
    env: Field<List<EnvName>>,
}

/// The provider's kind: `kind:`, else the name when the name is a kind (`anthropic:`).
fn provider_kind(
    rel: &Path,
    loc: &YamlLocator,
    name: &str,
    kind: &Field<String>,
) -> Result<ProviderKind, Diagnostic> {
    let written = match kind {
        Field::Ok(k) => Some(k.as_str()),
        _ => None,
    };
    let kind_text =
        written.or_else(|| matches!(name, "anthropic" | "openai" | "command").then_some(name));
    match kind_text {
        Some("anthropic") => Ok(ProviderKind::Anthropic),
        Some("openai") => Ok(ProviderKind::OpenAi),
        Some("command") => Ok(ProviderKind::Command),
        Some(other) => Err(Diagnostic::error(rel, format!("provider `{name}`: unknown kind `{other}`"))
            .at(loc.value(&["providers", name, "kind"]))
            .help("kind is anthropic (Messages API), openai (Chat Completions: OpenAI, Ollama, vLLM, llama.cpp, LM Studio, OpenRouter) or command (an agent CLI such as `claude -p`)")),
        None => Err(Diagnostic::error(rel, format!("provider `{name}` has no `kind`"))
            .at(loc.key(&["providers", name]))
            .help("add kind: anthropic, kind: openai or kind: command")),
    }
}

/// What a provider of `kind` is when loops.yaml says no more than its kind.
fn provider_defaults(name: &str, kind: ProviderKind) -> ProviderConfig {
    ProviderConfig {
        name: name.to_string(),
        kind,
        base_url: match kind {
            ProviderKind::Anthropic => "https://api.anthropic.com".into(),
            ProviderKind::OpenAi => "https://api.openai.com/v1".into(),
            ProviderKind::Command => String::new(),
        },
        api_key_env: match kind {
            ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY".into()),
            _ => None,
        },
        // Anthropic's names are stable enough to default; an OpenAI-compatible server's
        // models are whatever it loaded, so those must be named.
        model: (kind == ProviderKind::Anthropic).then(|| DEFAULT_ANTHROPIC_MODEL.to_string()),
        max_tokens: 4096,
        idle_timeout: DEFAULT_IDLE_TIMEOUT,
        stream: true,
        request_timeout: None,
        max_retries: DEFAULT_MAX_RETRIES,
        fallback: Vec::new(),
        command: None,
        env: Vec::new(),
        options: Default::default(),
    }
}

fn parse_provider(
    rel: &Path,
    loc: &YamlLocator,
    name: &str,
    v: &Value,
    diags: &mut Vec<Diagnostic>,
) -> Option<ProviderConfig> {
    let Some(map) = v.as_mapping() else {
        diags.push(
            Diagnostic::error(rel, format!("provider `{name}` must be a mapping"))
                .at(loc.value(&["providers", name]))
                .help("e.g. { kind: openai, base_url: \"http://127.0.0.1:11434/v1\", model: llama3.1 }"),
        );
        return None;
    };
    let (y, mut sec) = Section::read::<ProviderYaml>(rel, loc, &["providers", name], map);
    let kind = match provider_kind(rel, loc, name, &y.kind) {
        Ok(k) => k,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    let mut p = provider_defaults(name, kind);
    // Before read_provider, which reports unknown keys: the options' keys are known.
    p.options = crate::request_options::read(&mut sec, map);
    read_provider(&mut sec, name, y, &mut p);
    check_options(&mut sec, &p);
    let mut found = sec.finish();
    if kind == ProviderKind::Command && p.command.is_none() {
        found.push(
            Diagnostic::error(
                rel,
                format!("provider `{name}` (kind: command) needs `command`"),
            )
            .at(loc.key(&["providers", name]))
            .help("e.g. command: [\"claude\", \"-p\"]; the prompt is given on stdin"),
        );
    }
    // Warnings (an option this kind ignores) keep the provider.
    let ok = !found.iter().any(Diagnostic::is_error);
    diags.extend(found);
    ok.then_some(p)
}

/// The settings of one provider, over its defaults.
fn read_provider(sec: &mut Section, name: &str, y: ProviderYaml, p: &mut ProviderConfig) {
    read_endpoint(sec, name, y.base_url, y.api_key_env, p);
    // Two spellings each of the model and the timeout: the one written later counts.
    let mut models = [("model", y.model), ("default_model", y.default_model)];
    if sec.later("model", "default_model") {
        models.reverse();
    }
    for (key, field) in models {
        let message = format!("providers.{name}.model must be a model name");
        if let Some(m) = sec.take(key, field, message, "e.g. model: claude-sonnet-4-5") {
            p.model = Some(m.0);
        }
    }
    read_timeouts(sec, name, y.timeout, y.request_timeout, y.idle_timeout, p);
    if let Some(b) = sec.take(
        "stream",
        y.stream,
        format!("providers.{name}.stream must be true or false"),
        "stream: false asks for whole replies, for a server that refuses streaming",
    ) {
        p.stream = b;
    }
    if let Some(n) = sec.take(
        "max_retries",
        y.max_retries,
        format!("providers.{name}.max_retries must be a whole number from 0 to 100"),
        "e.g. max_retries: 2 (0: a failed request is not tried again)",
    ) {
        p.max_retries = n.0 as u32;
    }
    if let Some(list) = sec.take(
        "fallback",
        y.fallback,
        format!("providers.{name}.fallback must be a list of provider names"),
        "e.g. fallback: [local] (a turn goes there when this provider is overloaded or keeps failing)",
    ) {
        p.fallback = list.0.into_iter().map(|n| n.0).collect();
    }
    if let Some(n) = sec.take(
        "max_tokens",
        y.max_tokens,
        format!("providers.{name}.max_tokens must be a whole number of at least 1"),
        "e.g. max_tokens: 4096",
    ) {
        p.max_tokens = n.0 as u32;
    }
    if let Some(c) = sec.take(
        "command",
        y.command,
        format!("providers.{name}.command must be an argv list or a shell string"),
        "e.g. command: [\"claude\", \"-p\"]",
    ) {
        p.command = Some(c.0);
    }
    if let Some(list) = sec.take(
        "env",
        y.env,
        format!("providers.{name}.env must be a list of environment variable names"),
        "e.g. env: [ANTHROPIC_API_KEY]; the values are passed through from the runner's environment",
    ) {
        p.env = env_names(list.0);
    }
    sec.unknown_keys(PROVIDER_KEYS);
}

/// `timeout` (or its other spelling `request_timeout`, the later written counts): a cap on
/// one attempt; `idle_timeout`: how long without a byte.
fn read_timeouts(
    sec: &mut Section,
    name: &str,
    timeout: Field<String>,
    request_timeout: Field<String>,
    idle_timeout: Field<String>,
    p: &mut ProviderConfig,
) {
    let mut timeouts = [("timeout", timeout), ("request_timeout", request_timeout)];
    if sec.later("timeout", "request_timeout") {
        timeouts.reverse();
    }
    // Both spellings are named `timeout` in messages, as they always were.
    for (key, field) in timeouts {
        if let Some(d) = positive_duration(sec, key, &format!("providers.{name}.timeout"), field) {
            p.request_timeout = Some(d);
        }
    }
    let idle = format!("providers.{name}.idle_timeout");
    if let Some(d) = positive_duration(sec, "idle_timeout", &idle, idle_timeout) {
        p.idle_timeout = d;
    }
}

/// The duration at `key`, longer than zero; else an error naming it `full`.
fn positive_duration(
    sec: &mut Section,
    key: &str,
    full: &str,
    field: Field<String>,
) -> Option<Duration> {
    match duration_of(field)? {
        DurationField::Ok(d) if !d.is_zero() => return Some(d),
        DurationField::Invalid(e) => sec.error(key, format!("{full}: {e}"), DURATION_HELP),
        _ => sec.error(
            key,
            format!("{full} must be a duration longer than zero"),
            DURATION_HELP,
        ),
    }
    None
}

/// Where the provider is and the variable holding its key.
fn read_endpoint(
    sec: &mut Section,
    name: &str,
    base_url: Field<String>,
    api_key_env: Field<Value>,
    p: &mut ProviderConfig,
) {
    match base_url.written() {
        Some(Ok(u)) if u.starts_with("http://") || u.starts_with("https://") => {
            p.base_url = u.trim_end_matches('/').to_string()
        }
        Some(_) => sec.error(
            "base_url",
            format!("providers.{name}.base_url must be an http:// or https:// URL"),
            "e.g. base_url: \"http://127.0.0.1:11434/v1\"",
        ),
        None => {}
    }
    match api_key_env.written() {
        Some(Ok(Value::String(s))) if valid_env_name(&s) => p.api_key_env = Some(s),
        Some(Ok(Value::Null)) => p.api_key_env = None,
        Some(Ok(Value::String(s))) if s.starts_with("sk-") || s.len() > 40 => sec.error(
            "api_key_env",
            format!("providers.{name}.api_key_env looks like a key, not a variable name"),
            "never put a key in loops.yaml: export it (e.g. ANTHROPIC_API_KEY=…) and write api_key_env: ANTHROPIC_API_KEY",
        ),
        Some(_) => sec.error(
            "api_key_env",
            format!("providers.{name}.api_key_env must be an environment variable name"),
            "e.g. api_key_env: OPENAI_API_KEY (leave it out for a local server with no key)",
        ),
        None => {}
    }
}

/// `defaults:`, as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct DefaultsYaml {
    provider: Field<String>,
    model: Field<String>,
}

/// Parses `defaults:`.
pub fn parse_defaults(
    rel: &Path,
    loc: &YamlLocator,
    v: &Value,
    diags: &mut Vec<Diagnostic>,
) -> Defaults {
    let Some(map) = v.as_mapping() else {
        diags.push(
            Diagnostic::error(rel, "`defaults` must be a mapping")
                .at(loc.key(&["defaults"]))
                .help("e.g. defaults: { provider: anthropic, model: claude-sonnet-4-5 }"),
        );
        return Defaults::default();
    };
    let (y, mut sec) = Section::read::<DefaultsYaml>(rel, loc, &["defaults"], map);
    let d = Defaults {
        provider: sec.take_bare("provider", y.provider, "defaults.provider must be a name"),
        model: sec.take_bare("model", y.model, "defaults.model must be a name"),
    };
    sec.unknown_keys(DEFAULT_KEYS);
    diags.extend(sec.finish());
    d
}

pub use crate::config_fields::valid_env_name;

/// How to configure a provider, for messages about prompt loops that wait for one.
pub const PROVIDER_HELP: &str = "prompt loops need a model provider in loops.yaml, e.g. `providers: { anthropic: { kind: anthropic, api_key_env: ANTHROPIC_API_KEY, model: claude-sonnet-4-5 } }` (or kind: openai with base_url for Ollama, vLLM, llama.cpp, LM Studio; kind: command for an agent CLI); until then they are listed but not run";

/// The provider and model a prompt run uses: the loop's own, else `defaults:`, else the
/// only provider configured; the model likewise falls back to the provider's `model`.
/// `Err((message, help))` when that leads nowhere.
pub fn resolve(
    providers: &BTreeMap<String, ProviderConfig>,
    defaults: &Defaults,
    provider: Option<&str>,
    model: Option<&str>,
) -> Result<(ProviderConfig, String), (String, String)> {
    let names = || {
        providers
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let name = match provider.or(defaults.provider.as_deref()) {
        Some(n) => n.to_string(),
        None if providers.len() == 1 => {
            providers.keys().next().cloned().unwrap_or_default()
        }
        None if providers.is_empty() => {
            return Err((
                "no model provider is configured".into(),
                PROVIDER_HELP.into(),
            ))
        }
        None => {
            return Err((
                "this prompt loop names no provider and loops.yaml has no `defaults.provider`".into(),
                format!("set `payload.provider` to one of {}, or `defaults: {{ provider: NAME }}` in loops.yaml", names()),
            ))
        }
    };
    let Some(p) = providers.get(&name) else {
        let help = match near_miss(
            &name,
            &providers.keys().map(String::as_str).collect::<Vec<_>>(),
        ) {
            Some(k) => format!("did you mean `{k}`? Providers in loops.yaml: {}", names()),
            None if providers.is_empty() => PROVIDER_HELP.to_string(),
            None => format!("providers in loops.yaml: {}", names()),
        };
        return Err((
            format!("provider `{name}` is not in loops.yaml `providers:`"),
            help,
        ));
    };
    let model = model
        .map(str::to_string)
        .or_else(|| {
            // defaults.model belongs to defaults.provider; another provider's default
            // model would be a name it does not know.
            let same = defaults.provider.as_deref().is_none_or(|d| d == name);
            same.then(|| defaults.model.clone()).flatten()
        })
        .or_else(|| p.model.clone());
    match (model, p.kind) {
        (Some(m), _) => Ok((p.clone(), m)),
        (None, ProviderKind::Command) => Ok((p.clone(), p.name.clone())),
        (None, _) => Err((
            format!("no model for provider `{name}`"),
            format!("set `payload.model`, `defaults.model`, or `model:` under providers.{name} in loops.yaml"),
        )),
    }
}

// How a provider's kind reads request options lives here, beside the kinds, so that
// request_options (which providers uses) needs nothing from providers.
/// One finding about options as a provider's kind reads them.
pub struct WireNote {
    /// The option it is about.
    pub key: &'static str,
    pub severity: Severity,
    pub message: String,
    pub help: String,
}

/// What a provider of `kind` makes of `opts` that the options alone cannot say: options
/// that wire format has no place for (ignored, so a warning), and a thinking budget that
/// leaves no room for the answer. `what` names where they are written
/// (`providers.anthropic`, `payload`).
pub fn wire_notes(
    kind: ProviderKind,
    provider: &str,
    max_tokens: u32,
    opts: &RequestOptions,
    what: &str,
) -> Vec<WireNote> {
    let mut out = Vec::new();
    let mut ignored = |key: &'static str, help: String| {
        out.push(WireNote {
            key,
            severity: Severity::Warning,
            message: format!(
                "{what}.{key} is ignored by provider `{provider}` (kind: {})",
                kind.as_str()
            ),
            help,
        })
    };
    match kind {
        ProviderKind::Command => {
            for key in opts.written_keys() {
                ignored(key, "an agent CLI makes its own requests; set its options in its own configuration or command line".into());
            }
            return out;
        }
        ProviderKind::Anthropic => {
            if opts.seed.is_some() {
                ignored("seed", "the Anthropic Messages API has no seed; remove it, or use a kind: openai provider".into());
            }
            if opts.reasoning_effort.is_some() {
                ignored(
                    "reasoning_effort",
                    "the Anthropic Messages API thinks by a token budget: use thinking_budget"
                        .into(),
                );
            }
        }
        ProviderKind::OpenAi => {
            if opts.thinking_budget.is_some() {
                ignored("thinking_budget", "Chat Completions has no thinking budget: use reasoning_effort (or the server's own key in extra_body)".into());
            }
        }
    }
    if let (ProviderKind::Anthropic, Some(b)) = (kind, opts.thinking_budget) {
        if b >= max_tokens {
            out.push(WireNote {
                key: "thinking_budget",
                severity: Severity::Error,
                message: format!("{what}.thinking_budget ({b}) must be less than providers.{provider}.max_tokens ({max_tokens})"),
                help: "the thinking budget is part of max_tokens: lower it, or raise max_tokens so the answer has room".into(),
            });
        }
    }
    out
}

/// The provider's own options as its kind reads them, reported at their keys.
fn check_options(sec: &mut Section, p: &ProviderConfig) {
    let what = format!("providers.{}", p.name);
    for n in wire_notes(p.kind, &p.name, p.max_tokens, &p.options, &what) {
        let d = match n.severity {
            Severity::Error => Diagnostic::error(sec.file, n.message),
            Severity::Warning => Diagnostic::warning(sec.file, n.message),
        };
        let d = d.at(sec.value_pos(n.key)).help(n.help);
        sec.push(n.key, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_fields::{field_names, same_keys};

    #[test]
    fn the_keys_in_messages_are_the_keys_read() {
        same_keys(field_names::<ProviderYaml>(), PROVIDER_KEYS);
        same_keys(field_names::<DefaultsYaml>(), DEFAULT_KEYS);
    }
}
