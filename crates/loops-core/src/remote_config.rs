//! loops.yaml `remote:`: the git remote a workspace syncs with (docs/remote.md).
//!
//! Credentials are named here, never written: a key file's path, the ssh agent, or the
//! variable that holds an https token, read at the moment of use.

use crate::config_fields::{Field, Section};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// How the workspace syncs with its remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    /// The git remote's name in `.git/config` (`git remote add NAME URL`).
    pub name: String,
    /// The remote branch; `None`: the branch runs commit to.
    pub branch: Option<String>,
    /// How often to fetch; zero: never pull, push only.
    pub pull_every: Duration,
    pub push: bool,
    /// Commits made within this time of each other go in one push.
    pub push_delay: Duration,
    pub auth: RemoteAuth,
    /// The known_hosts file an ssh remote's host key is checked against (`None`:
    /// `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
}

/// Credentials, by reference only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteAuth {
    pub ssh_key_file: Option<PathBuf>,
    pub ssh_agent: bool,
    /// The environment variable holding an https token.
    pub token_env: Option<String>,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            name: "origin".into(),
            branch: None,
            pull_every: Duration::from_secs(30),
            push: true,
            push_delay: Duration::from_secs(2),
            auth: RemoteAuth::default(),
            known_hosts: None,
        }
    }
}

pub(crate) const REMOTE_KEYS: &[&str] = &[
    "name",
    "branch",
    "pull_every",
    "push",
    "push_delay",
    "ssh_key_file",
    "ssh_agent",
    "token_env",
    "known_hosts",
];

/// `remote:` as written.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct RemoteYaml {
    name: Field<String>,
    branch: Field<String>,
    pull_every: Field<String>,
    push: Field<bool>,
    push_delay: Field<String>,
    ssh_key_file: Field<String>,
    ssh_agent: Field<bool>,
    token_env: Field<String>,
    known_hosts: Field<String>,
}

/// Reads `remote:`; problems go to `sec`, each at its key.
pub(crate) fn read_remote(sec: &mut Section, y: RemoteYaml) -> RemoteSettings {
    let mut r = RemoteSettings::default();
    match y.name.written() {
        Some(Ok(n)) if git2::Remote::is_valid_name(n.trim()) => r.name = n.trim().to_string(),
        Some(_) => sec.error(
            "name",
            "remote.name must be the name of a git remote",
            "e.g. name: origin (see `git remote -v`)",
        ),
        None => {}
    }
    match y.branch.written() {
        Some(Ok(b)) if crate::config_fields::valid_branch(b.trim()) => {
            let b = b.trim();
            r.branch = Some(b.strip_prefix("refs/heads/").unwrap_or(b).to_string());
        }
        Some(_) => sec.error_bare("branch", "remote.branch must be a branch name, e.g. main"),
        None => {}
    }
    read_times(sec, &y.pull_every, &y.push_delay, &mut r);
    if let Some(b) = sec.take_bare("push", y.push, "remote.push must be true or false") {
        r.push = b;
    }
    if let Some(b) = sec.take_bare(
        "ssh_agent",
        y.ssh_agent,
        "remote.ssh_agent must be true or false",
    ) {
        r.auth.ssh_agent = b;
    }
    r.auth.ssh_key_file = path_field(sec, "ssh_key_file", y.ssh_key_file);
    r.known_hosts = path_field(sec, "known_hosts", y.known_hosts);
    match y.token_env.written() {
        Some(Ok(v)) if valid_var(v.trim()) => r.auth.token_env = Some(v.trim().to_string()),
        Some(_) => sec.error(
            "token_env",
            "remote.token_env must name an environment variable",
            "e.g. token_env: GITHUB_TOKEN (the token itself never goes in loops.yaml)",
        ),
        None => {}
    }
    sec.unknown_keys(REMOTE_KEYS);
    r
}

fn read_times(
    sec: &mut Section,
    pull: &Field<String>,
    delay: &Field<String>,
    r: &mut RemoteSettings,
) {
    let fields = [
        ("pull_every", pull.clone(), &mut r.pull_every),
        ("push_delay", delay.clone(), &mut r.push_delay),
    ];
    for (key, field, slot) in fields {
        let field = match field {
            // `pull_every: 0` (a number) is how push-only is written.
            Field::Bad(yaml_serde::Value::Number(n)) if n.as_u64() == Some(0) => {
                *slot = Duration::ZERO;
                continue;
            }
            f => f,
        };
        if let Some(d) = sec.duration(key, field) {
            *slot = d;
        }
    }
}

/// A path setting; `~/` is the home folder.
fn path_field(sec: &mut Section, key: &str, f: Field<String>) -> Option<PathBuf> {
    match f.written() {
        Some(Ok(p)) if !p.trim().is_empty() => Some(expand_home(p.trim())),
        Some(_) => {
            sec.error(
                key,
                format!("remote.{key} must be a file path"),
                "e.g. ssh_key_file: ~/.ssh/loops_deploy_key",
            );
            None
        }
        None => None,
    }
}

/// `~/x` as a path under `$HOME`.
pub fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

fn valid_var(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
