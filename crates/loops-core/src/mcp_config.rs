//! loops.yaml `mcp_servers:`: the MCP servers prompt loops may be offered tools of, as
//! configured (see `mcp::client` for connecting to them). Checked when loops.yaml is read.

use crate::config_fields::valid_env_name;
use crate::config_fields::{
    duration_of, env_names, DurationField, EnvName, Field, List, Map, Scalar, Section,
};
use crate::diag::{Diagnostic, YamlLocator};
use crate::duration::DURATION_HELP;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use yaml_serde::Value as Yaml;

/// How long one tool call may take when loops.yaml says nothing (`timeout`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to start and answer `initialize` (`startup_timeout`).
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One entry of `mcp_servers:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    pub name: String,
    pub transport: McpTransport,
    /// The longest one tool call may take (`timeout`).
    pub call_timeout: Duration,
    /// The longest starting and the `initialize` handshake may take.
    pub startup_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// A child process speaking JSON-RPC on stdin/stdout.
    Stdio {
        command: String,
        args: Vec<String>,
        /// Names of environment variables passed through; their values are read at
        /// each start and never stored.
        env: Vec<String>,
        /// Relative to the workspace root (the default).
        cwd: Option<PathBuf>,
    },
    /// A streamable-HTTP server.
    Http {
        url: String,
        /// Header name to an environment variable name, or to a template such as
        /// `Bearer ${GITHUB_TOKEN}`; read at each connect.
        headers: BTreeMap<String, String>,
    },
}

impl McpServerConfig {
    /// The variables whose values this server is given: its `env:` (stdio) or the
    /// variables its headers are made of (http). Each is a secret to redact.
    pub fn secret_env_names(&self) -> Vec<String> {
        match &self.transport {
            McpTransport::Stdio { env, .. } => env.clone(),
            McpTransport::Http { headers, .. } => headers
                .values()
                .flat_map(|h| header_template_vars(h).unwrap_or_default())
                .collect(),
        }
    }
}

impl McpTransport {
    pub fn kind(&self) -> &'static str {
        match self {
            McpTransport::Stdio { .. } => "stdio",
            McpTransport::Http { .. } => "http",
        }
    }
}

// ---------------------------------------------------------------------------------------
// loops.yaml

const SERVER_KEYS: &[&str] = &[
    "command",
    "args",
    "env",
    "cwd",
    "url",
    "headers",
    "timeout",
    "startup_timeout",
];

const SERVER_EXAMPLE: &str = "e.g. everything: { command: [\"npx\", \"-y\", \"@modelcontextprotocol/server-everything\"] } or github: { url: \"https://api.githubcopilot.com/mcp/\", headers: { Authorization: \"Bearer ${GITHUB_TOKEN}\" } }";

pub use crate::tool_names::valid_server_name;

/// Parses `mcp_servers:`; problems become diagnostics and the entry is left out.
pub fn parse_mcp_servers(
    rel: &Path,
    loc: &YamlLocator,
    v: &Yaml,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, McpServerConfig> {
    let mut out = BTreeMap::new();
    let Some(map) = v.as_mapping() else {
        if !v.is_null() {
            diags.push(
                Diagnostic::error(rel, "`mcp_servers` must be a mapping of names to servers")
                    .at(loc.key(&["mcp_servers"]))
                    .help(format!("mcp_servers:\n    {SERVER_EXAMPLE}")),
            );
        }
        return out;
    };
    for (k, sv) in map {
        let Some(name) = k.as_str() else { continue };
        if !valid_server_name(name) {
            diags.push(
                Diagnostic::error(rel, format!("mcp server name `{name}` may hold only letters, digits, `_` and `-`"))
                    .at(loc.key(&["mcp_servers", name]))
                    .help("the name becomes part of its tools' names (`NAME__tool`), e.g. `github` or `my-files`"),
            );
            continue;
        }
        if crate::tool_names::is_known(name) {
            diags.push(
                Diagnostic::error(
                    rel,
                    format!("mcp server name `{name}` is also a built-in tool"),
                )
                .at(loc.key(&["mcp_servers", name]))
                .help(format!(
                    "`tools: [{name}]` would be ambiguous; rename the server, e.g. `{name}-mcp`"
                )),
            );
            continue;
        }
        if let Some(cfg) = parse_server(rel, loc, name, sv, diags) {
            out.insert(name.to_string(), cfg);
        }
    }
    out
}

/// A header value as written: an environment variable name, or a template whose
/// `${VAR}` parts are environment variables. `None` when it is neither (a literal,
/// perhaps a secret pasted in).
pub fn header_template_vars(spec: &str) -> Option<Vec<String>> {
    if valid_env_name(spec) {
        return Some(vec![spec.to_string()]);
    }
    let mut vars = Vec::new();
    let mut rest = spec;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let end = after.find('}')?;
        let var = &after[..end];
        if !valid_env_name(var) {
            return None;
        }
        vars.push(var.to_string());
        rest = &after[end + 1..];
    }
    (!vars.is_empty()).then_some(vars)
}

/// One entry of `mcp_servers:`, as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ServerYaml {
    command: Field<ServerCommand>,
    args: Field<List<Scalar>>,
    env: Field<List<EnvName>>,
    cwd: Field<String>,
    url: Field<String>,
    headers: Field<Map>,
    timeout: Field<String>,
    startup_timeout: Field<String>,
}

/// A server's `command`: a line (a program, or with spaces a shell command line), or an
/// argv list of texts, numbers or booleans.
enum ServerCommand {
    Line(String),
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for ServerCommand {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let scalar = crate::config_fields::yaml_scalar;
        match Yaml::deserialize(d)? {
            Yaml::String(s) if !s.trim().is_empty() => Ok(ServerCommand::Line(s)),
            Yaml::Sequence(seq) if !seq.is_empty() && seq.iter().all(|a| scalar(a).is_some()) => {
                Ok(ServerCommand::Argv(seq.iter().filter_map(scalar).collect()))
            }
            _ => Err(serde::de::Error::custom("not a command")),
        }
    }
}

/// What one server's keys say, each checked on its own.
struct ServerParts {
    /// The program and its arguments.
    command: Option<(String, Vec<String>)>,
    /// `command` is a shell command line (`sh -c`).
    shell_string: bool,
    args: Option<Vec<String>>,
    env: Vec<String>,
    cwd: Option<PathBuf>,
    url: Option<String>,
    headers: BTreeMap<String, String>,
    call_timeout: Duration,
    startup_timeout: Duration,
}

fn parse_server(
    rel: &Path,
    loc: &YamlLocator,
    name: &str,
    v: &Yaml,
    diags: &mut Vec<Diagnostic>,
) -> Option<McpServerConfig> {
    let Some(map) = v.as_mapping() else {
        diags.push(
            Diagnostic::error(
                rel,
                format!("mcp server `{name}` must be a mapping with `command` or `url`"),
            )
            .at(loc.value(&["mcp_servers", name]))
            .help(SERVER_EXAMPLE),
        );
        return None;
    };
    let (y, mut sec) = Section::read::<ServerYaml>(rel, loc, &["mcp_servers", name], map);
    let written: Vec<&str> = SERVER_KEYS
        .iter()
        .copied()
        .filter(|k| map.contains_key(*k))
        .collect();
    let parts = read_server(&mut sec, name, y);
    let mut found = sec.finish();
    found.extend(server_conflicts(rel, loc, name, &written, &parts));
    if !found.is_empty() {
        diags.extend(found);
        return None;
    }
    let transport = match (parts.command, parts.url) {
        (Some((command, mut argv)), None) => {
            argv.extend(parts.args.unwrap_or_default());
            McpTransport::Stdio {
                command,
                args: argv,
                env: parts.env,
                cwd: parts.cwd,
            }
        }
        (None, Some(url)) => McpTransport::Http {
            url,
            headers: parts.headers,
        },
        _ => return None,
    };
    Some(McpServerConfig {
        name: name.to_string(),
        transport,
        call_timeout: parts.call_timeout,
        startup_timeout: parts.startup_timeout,
    })
}

/// Each key of one server on its own; their problems go to `sec`.
fn read_server(sec: &mut Section, name: &str, y: ServerYaml) -> ServerParts {
    let at = |key: &str| format!("mcp_servers.{name}.{key}");
    let mut p = ServerParts {
        command: None,
        shell_string: false,
        args: None,
        env: Vec::new(),
        cwd: None,
        url: None,
        headers: BTreeMap::new(),
        call_timeout: DEFAULT_CALL_TIMEOUT,
        startup_timeout: DEFAULT_STARTUP_TIMEOUT,
    };
    (p.command, p.shell_string) = read_command(sec, name, y.command);
    p.args = sec
        .take(
            "args",
            y.args,
            format!("{} must be a list of arguments", at("args")),
            "e.g. args: [\"--root\", \"notes\"]",
        )
        .map(|l| l.0.into_iter().map(|a| a.0).collect());
    if let Some(list) = sec.take(
        "env",
        y.env,
        format!("{} must be a list of environment variable names", at("env")),
        "e.g. env: [GITHUB_TOKEN]; the values are passed through from the runner's environment at each start and never written down",
    ) {
        p.env = env_names(list.0);
    }
    match y.cwd.written() {
        Some(Ok(c)) if !c.trim().is_empty() && !Path::new(c.trim()).is_absolute() => {
            p.cwd = Some(PathBuf::from(c.trim()))
        }
        Some(_) => sec.error(
            "cwd",
            format!(
                "{} must be a folder relative to the workspace root",
                at("cwd")
            ),
            "e.g. cwd: tools/my-server",
        ),
        None => {}
    }
    match y.url.written() {
        Some(Ok(u))
            if (u.starts_with("http://") || u.starts_with("https://"))
                && reqwest::Url::parse(&u).is_ok() =>
        {
            p.url = Some(u)
        }
        Some(_) => sec.error(
            "url",
            format!("{} must be an http:// or https:// URL", at("url")),
            "e.g. url: \"http://127.0.0.1:3001/mcp\" (a streamable-HTTP MCP endpoint)",
        ),
        None => {}
    }
    if let Some(Map(h)) = sec.take(
        "headers",
        y.headers,
        format!(
            "{} must be a mapping of header names to environment variables",
            at("headers")
        ),
        "e.g. headers: { Authorization: \"Bearer ${MY_TOKEN}\" }",
    ) {
        p.headers = read_headers(sec, name, &h);
    }
    if let Some(d) = positive_duration(sec, name, "timeout", y.timeout) {
        p.call_timeout = d;
    }
    if let Some(d) = positive_duration(sec, name, "startup_timeout", y.startup_timeout) {
        p.startup_timeout = d;
    }
    sec.unknown_keys(SERVER_KEYS);
    p
}

/// A server's `command`: the program and its arguments, and whether it is a shell
/// command line.
fn read_command(
    sec: &mut Section,
    name: &str,
    f: Field<ServerCommand>,
) -> (Option<(String, Vec<String>)>, bool) {
    let at = format!("mcp_servers.{name}.command");
    let command = sec.take(
        "command",
        f,
        format!("{at} must be a program or an argv list"),
        "e.g. command: [\"npx\", \"-y\", \"@modelcontextprotocol/server-everything\"] (relative paths are resolved in the workspace root, or in `cwd`)",
    );
    match command {
        // A line with spaces is a shell command line, as `command:` is elsewhere in
        // loops; a bare word is the program.
        Some(ServerCommand::Line(s)) if s.trim().contains(char::is_whitespace) => {
            (Some(("sh".into(), vec!["-c".into(), s])), true)
        }
        Some(ServerCommand::Line(s)) => (Some((s.trim().to_string(), Vec::new())), false),
        Some(ServerCommand::Argv(mut argv)) => {
            let prog = argv.remove(0);
            if prog.trim().is_empty() {
                sec.error(
                    "command",
                    format!("{at}: the program name is empty"),
                    "e.g. command: [\"npx\", \"-y\", \"@modelcontextprotocol/server-everything\"]",
                );
                return (None, false);
            }
            (Some((prog, argv)), false)
        }
        None => (None, false),
    }
}

/// `timeout` or `startup_timeout`: a duration longer than zero.
fn positive_duration(
    sec: &mut Section,
    name: &str,
    key: &str,
    f: Field<String>,
) -> Option<Duration> {
    let at = format!("mcp_servers.{name}.{key}");
    match duration_of(f)? {
        DurationField::Ok(d) if !d.is_zero() => return Some(d),
        DurationField::Invalid(e) => sec.error(key, format!("{at}: {e}"), DURATION_HELP),
        _ => sec.error(
            key,
            format!("{at} must be a duration longer than zero"),
            DURATION_HELP,
        ),
    }
    None
}

/// A server's `headers:`: each a valid header name with an environment variable (or a
/// `${VAR}` template) for its value.
fn read_headers(
    sec: &mut Section,
    name: &str,
    h: &yaml_serde::Mapping,
) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    for (hk, hv) in h {
        let Some(header) = hk.as_str() else { continue };
        let hpath = ["mcp_servers", name, "headers", header];
        let at = format!("mcp_servers.{name}.headers");
        let problem = if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
            (
                format!("{at}: `{header}` is not a valid header name"),
                "e.g. headers: { Authorization: \"Bearer ${MY_TOKEN}\" }",
            )
        } else {
            match hv.as_str() {
                Some(spec) if header_template_vars(spec).is_some() => {
                    headers.insert(header.to_string(), spec.to_string());
                    continue;
                }
                _ => (
                    format!("{at}.{header} must name an environment variable (or be a template like \"Bearer ${{MY_TOKEN}}\")"),
                    "never write a secret in loops.yaml: export it (e.g. MY_TOKEN=…) and write `Authorization: \"Bearer ${MY_TOKEN}\"` or `X-Api-Key: MY_KEY`",
                ),
            }
        };
        let d = Diagnostic::error(sec.file, problem.0)
            .at(sec.loc.value(&hpath))
            .help(problem.1);
        sec.push("headers", d);
    }
    headers
}

/// Keys that cannot go together: `command` with `url`, a stdio key beside `url`, `headers`
/// beside `command`, `args` after a shell command line. `written` is the keys present.
fn server_conflicts(
    rel: &Path,
    loc: &YamlLocator,
    name: &str,
    written: &[&str],
    p: &ServerParts,
) -> Vec<Diagnostic> {
    let has = |k: &str| written.contains(&k);
    let key = |k: &str| loc.key(&["mcp_servers", name, k]);
    let mut out = Vec::new();
    if has("command") && has("url") {
        out.push(
            Diagnostic::error(rel, format!("mcp server `{name}` has both `command` and `url`"))
                .at(key("url"))
                .help("keep `command` for a server loops starts (stdio), or `url` for one already running (streamable HTTP)"),
        );
    } else if !has("command") && !has("url") {
        out.push(
            Diagnostic::error(rel, format!("mcp server `{name}` needs `command` or `url`"))
                .at(loc.key(&["mcp_servers", name]))
                .help(SERVER_EXAMPLE),
        );
    }
    if has("url") {
        for k in ["args", "env", "cwd"].into_iter().filter(|k| has(k)) {
            out.push(
                Diagnostic::error(rel, format!("mcp_servers.{name}.{k} is for a server loops starts (`command`), not for one at a `url`"))
                    .at(key(k))
                    .help("remove it; an HTTP server's credentials go in `headers`"),
            );
        }
    }
    if has("command") && has("headers") {
        out.push(
            Diagnostic::error(
                rel,
                format!(
                    "mcp_servers.{name}.headers is for a server at a `url`, not one loops starts"
                ),
            )
            .at(key("headers"))
            .help("pass credentials to a stdio server with `env: [VAR]`"),
        );
    }
    if p.shell_string && p.args.is_some() {
        out.push(
            Diagnostic::error(rel, format!("mcp_servers.{name}: `command` is a shell command line, so `args` cannot be added to it"))
                .at(key("args"))
                .help("write the command as an argv list, e.g. command: [\"npx\", \"-y\", \"some-server\"], or put the arguments in the command line"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_fields::{field_names, same_keys};

    #[test]
    fn the_keys_in_messages_are_the_keys_read() {
        same_keys(field_names::<ServerYaml>(), SERVER_KEYS);
    }
}
