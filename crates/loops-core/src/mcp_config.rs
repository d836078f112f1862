//! loops.yaml `mcp_servers:`: the MCP servers prompt loops may be offered tools of, as
//! configured (see `mcp::client` for connecting to them). Checked when loops.yaml is read.

use crate::diag::{near_miss, Diagnostic, YamlLocator};
use crate::duration::{parse_duration, DURATION_HELP};
use crate::providers::valid_env_name;
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

/// Whether `name` can name a server: it becomes part of tool names (`name__tool`).
pub fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

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

fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
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

fn parse_server(
    rel: &Path,
    loc: &YamlLocator,
    name: &str,
    v: &Yaml,
    diags: &mut Vec<Diagnostic>,
) -> Option<McpServerConfig> {
    let err = |path: &[&str], msg: String, help: String| {
        Diagnostic::error(rel, msg).at(loc.value(path)).help(help)
    };
    let Some(map) = v.as_mapping() else {
        diags.push(err(
            &["mcp_servers", name],
            format!("mcp server `{name}` must be a mapping with `command` or `url`"),
            SERVER_EXAMPLE.to_string(),
        ));
        return None;
    };
    let before = diags.len();
    let mut command: Option<(String, Vec<String>)> = None;
    let mut shell_string = false;
    let mut args: Option<Vec<String>> = None;
    let mut env = Vec::new();
    let mut cwd = None;
    let mut url = None;
    let mut headers = BTreeMap::new();
    let mut call_timeout = DEFAULT_CALL_TIMEOUT;
    let mut startup_timeout = DEFAULT_STARTUP_TIMEOUT;
    let mut seen: Vec<&str> = Vec::new();
    for (k, val) in map {
        let Some(key) = k.as_str() else { continue };
        let path = ["mcp_servers", name, key];
        let at = format!("mcp_servers.{name}.{key}");
        seen.push(key);
        match key {
            "command" => match val {
                Yaml::String(s) if !s.trim().is_empty() => {
                    // A string with spaces is a shell command line, as `command:` is
                    // elsewhere in loops; a bare word is the program.
                    if s.trim().contains(char::is_whitespace) {
                        shell_string = true;
                        command = Some(("sh".into(), vec!["-c".into(), s.clone()]));
                    } else {
                        command = Some((s.trim().to_string(), Vec::new()));
                    }
                }
                Yaml::Sequence(seq) if !seq.is_empty() && seq.iter().all(|a| scalar(a).is_some()) => {
                    let mut argv: Vec<String> = seq.iter().filter_map(scalar).collect();
                    let prog = argv.remove(0);
                    if prog.trim().is_empty() {
                        diags.push(err(&path, format!("{at}: the program name is empty"), "e.g. command: [\"npx\", \"-y\", \"@modelcontextprotocol/server-everything\"]".into()));
                    } else {
                        command = Some((prog, argv));
                    }
                }
                _ => diags.push(err(
                    &path,
                    format!("{at} must be a program or an argv list"),
                    "e.g. command: [\"npx\", \"-y\", \"@modelcontextprotocol/server-everything\"] (relative paths are resolved in the workspace root, or in `cwd`)".into(),
                )),
            },
            "args" => match val.as_sequence() {
                Some(seq) if seq.iter().all(|a| scalar(a).is_some()) => {
                    args = Some(seq.iter().filter_map(scalar).collect())
                }
                _ => diags.push(err(&path, format!("{at} must be a list of arguments"), "e.g. args: [\"--root\", \"notes\"]".into())),
            },
            "env" => match val.as_sequence() {
                Some(seq) if seq.iter().all(|e| e.as_str().is_some_and(valid_env_name)) => {
                    env = seq.iter().filter_map(|e| e.as_str().map(str::to_string)).collect()
                }
                _ => diags.push(err(
                    &path,
                    format!("{at} must be a list of environment variable names"),
                    "e.g. env: [GITHUB_TOKEN]; the values are passed through from the runner's environment at each start and never written down".into(),
                )),
            },
            "cwd" => match val.as_str() {
                Some(c) if !c.trim().is_empty() && !Path::new(c.trim()).is_absolute() => {
                    cwd = Some(PathBuf::from(c.trim()))
                }
                _ => diags.push(err(&path, format!("{at} must be a folder relative to the workspace root"), "e.g. cwd: tools/my-server".into())),
            },
            "url" => match val.as_str() {
                Some(u) if (u.starts_with("http://") || u.starts_with("https://")) && reqwest::Url::parse(u).is_ok() => {
                    url = Some(u.to_string())
                }
                _ => diags.push(err(
                    &path,
                    format!("{at} must be an http:// or https:// URL"),
                    "e.g. url: \"http://127.0.0.1:3001/mcp\" (a streamable-HTTP MCP endpoint)".into(),
                )),
            },
            "headers" => match val.as_mapping() {
                Some(hm) => {
                    for (hk, hv) in hm {
                        let Some(h) = hk.as_str() else { continue };
                        let hpath = ["mcp_servers", name, "headers", h];
                        if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                            diags.push(err(&hpath, format!("{at}: `{h}` is not a valid header name"), "e.g. headers: { Authorization: \"Bearer ${MY_TOKEN}\" }".into()));
                            continue;
                        }
                        match hv.as_str() {
                            Some(spec) if header_template_vars(spec).is_some() => {
                                headers.insert(h.to_string(), spec.to_string());
                            }
                            _ => diags.push(err(
                                &hpath,
                                format!("{at}.{h} must name an environment variable (or be a template like \"Bearer ${{MY_TOKEN}}\")"),
                                "never write a secret in loops.yaml: export it (e.g. MY_TOKEN=…) and write `Authorization: \"Bearer ${MY_TOKEN}\"` or `X-Api-Key: MY_KEY`".into(),
                            )),
                        }
                    }
                }
                None => diags.push(err(&path, format!("{at} must be a mapping of header names to environment variables"), "e.g. headers: { Authorization: \"Bearer ${MY_TOKEN}\" }".into())),
            },
            "timeout" | "startup_timeout" => match val.as_str().map(parse_duration) {
                Some(Ok(d)) if !d.is_zero() => {
                    if key == "timeout" {
                        call_timeout = d
                    } else {
                        startup_timeout = d
                    }
                }
                Some(Err(e)) => diags.push(err(&path, format!("{at}: {e}"), DURATION_HELP.into())),
                _ => diags.push(err(&path, format!("{at} must be a duration longer than zero"), DURATION_HELP.into())),
            },
            other => {
                let d = Diagnostic::error(rel, format!("unknown key `mcp_servers.{name}.{other}`"))
                    .at(loc.key(&path));
                diags.push(match near_miss(other, SERVER_KEYS) {
                    Some(k) => d.help(format!("did you mean `{k}`?")),
                    None => d.help(format!("known keys here: {}", SERVER_KEYS.join(", "))),
                });
            }
        }
    }
    let has = |k: &str| seen.contains(&k);
    if has("command") && has("url") {
        diags.push(
            Diagnostic::error(rel, format!("mcp server `{name}` has both `command` and `url`"))
                .at(loc.key(&["mcp_servers", name, "url"]))
                .help("keep `command` for a server loops starts (stdio), or `url` for one already running (streamable HTTP)"),
        );
    } else if !has("command") && !has("url") {
        diags.push(
            Diagnostic::error(rel, format!("mcp server `{name}` needs `command` or `url`"))
                .at(loc.key(&["mcp_servers", name]))
                .help(SERVER_EXAMPLE),
        );
    }
    if has("url") {
        for k in ["args", "env", "cwd"] {
            if has(k) {
                diags.push(
                    Diagnostic::error(rel, format!("mcp_servers.{name}.{k} is for a server loops starts (`command`), not for one at a `url`"))
                        .at(loc.key(&["mcp_servers", name, k]))
                        .help("remove it; an HTTP server's credentials go in `headers`"),
                );
            }
        }
    }
    if has("command") && has("headers") {
        diags.push(
            Diagnostic::error(
                rel,
                format!(
                    "mcp_servers.{name}.headers is for a server at a `url`, not one loops starts"
                ),
            )
            .at(loc.key(&["mcp_servers", name, "headers"]))
            .help("pass credentials to a stdio server with `env: [VAR]`"),
        );
    }
    if shell_string && args.is_some() {
        diags.push(
            Diagnostic::error(rel, format!("mcp_servers.{name}: `command` is a shell command line, so `args` cannot be added to it"))
                .at(loc.key(&["mcp_servers", name, "args"]))
                .help("write the command as an argv list, e.g. command: [\"npx\", \"-y\", \"some-server\"], or put the arguments in the command line"),
        );
    }
    if diags.len() != before {
        return None;
    }
    let transport = match (command, url) {
        (Some((command, mut argv)), None) => {
            argv.extend(args.unwrap_or_default());
            McpTransport::Stdio {
                command,
                args: argv,
                env,
                cwd,
            }
        }
        (None, Some(url)) => McpTransport::Http { url, headers },
        _ => return None,
    };
    Some(McpServerConfig {
        name: name.to_string(),
        transport,
        call_timeout,
        startup_timeout,
    })
}
