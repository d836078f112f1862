//! Loop templates for `loops new` and the files `loops init` lays down. The templates
//! ship inside the binary (from the repository's `templates/`), and a workspace may add
//! its own in `templates/<name>/`, which win over the built-in ones.

use include_dir::{include_dir, Dir};
use std::path::{Path, PathBuf};

static BUILTIN: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/templates");

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("there is no template `{name}`")]
    Unknown { name: String, known: Vec<String> },
    #[error("`{0}` is not a valid loop name")]
    BadName(String),
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TemplateError {
    pub fn help(&self) -> Option<String> {
        match self {
            TemplateError::Unknown { known, .. } => {
                Some(format!("the templates are: {}", known.join(", ")))
            }
            TemplateError::BadName(_) => Some(loops_core::domain::LOOP_NAME_RULE.into()),
            TemplateError::Exists(_) => Some("pick another name, or edit the existing loop".into()),
            TemplateError::Io { .. } => None,
        }
    }
}

/// Names of every template: the workspace's own and the built-in ones.
pub fn names(workspace: &Path) -> Vec<String> {
    let mut out: Vec<String> = BUILTIN
        .dirs()
        .filter_map(|d| {
            d.path()
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
        })
        .collect();
    if let Ok(rd) = std::fs::read_dir(workspace.join("templates")) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.path().join("config.yaml").is_file() {
                if let Some(n) = e.file_name().to_str() {
                    out.push(n.to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether `loops new` takes `name`: the same rule `loops check` holds every folder in
/// `domains/` to ([`loops_core::domain::valid_loop_name`]).
pub fn valid_loop_name(name: &str) -> bool {
    loops_core::domain::valid_loop_name(name)
}

/// The files of a template: (relative path, contents, executable).
fn files(workspace: &Path, template: &str) -> Result<Vec<(PathBuf, Vec<u8>, bool)>, TemplateError> {
    let local = workspace.join("templates").join(template);
    if local.join("config.yaml").is_file() {
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(&local)
            .into_iter()
            .filter_map(|e| e.ok())
        {
            if !e.file_type().is_file() {
                continue;
            }
            let rel = e
                .path()
                .strip_prefix(&local)
                .unwrap_or(e.path())
                .to_path_buf();
            let bytes = std::fs::read(e.path()).map_err(|source| TemplateError::Io {
                path: e.path().to_path_buf(),
                source,
            })?;
            use std::os::unix::fs::PermissionsExt;
            let exec = e
                .metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            out.push((rel, bytes, exec));
        }
        return Ok(out);
    }
    let Some(dir) = BUILTIN.get_dir(template) else {
        return Err(TemplateError::Unknown {
            name: template.to_string(),
            known: names(workspace),
        });
    };
    let mut out = Vec::new();
    collect(dir, dir.path(), &mut out);
    Ok(out)
}

fn collect(dir: &Dir<'_>, base: &Path, out: &mut Vec<(PathBuf, Vec<u8>, bool)>) {
    for f in dir.files() {
        let rel = f
            .path()
            .strip_prefix(base)
            .unwrap_or(f.path())
            .to_path_buf();
        // include_dir keeps no modes; scripts are the files that must be executable.
        let exec = rel.extension().is_some_and(|x| x == "sh");
        out.push((rel, f.contents().to_vec(), exec));
    }
    for d in dir.dirs() {
        collect(d, base, out);
    }
}

/// Creates `domains/<name>/` from a template, replacing `{{name}}` with the loop name.
pub fn instantiate(
    workspace: &Path,
    template: &str,
    name: &str,
) -> Result<Vec<PathBuf>, TemplateError> {
    if !valid_loop_name(name) {
        return Err(TemplateError::BadName(name.to_string()));
    }
    let dest = workspace.join("domains").join(name);
    if dest.exists() {
        return Err(TemplateError::Exists(dest));
    }
    let files = files(workspace, template)?;
    let mut written = Vec::new();
    for (rel, bytes, exec) in files {
        let path = dest.join(&rel);
        let text = String::from_utf8_lossy(&bytes).replace("{{name}}", name);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|source| TemplateError::Io {
                path: p.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| TemplateError::Io {
            path: path.clone(),
            source,
        })?;
        if exec {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
        }
        written.push(path);
    }
    Ok(written)
}

/// The files `loops init` writes besides the example loop: (path, contents).
pub const WORKSPACE_FILES: &[(&str, &str)] = &[
    (
        "loops.yaml",
        "# Workspace settings for loops. Every key is optional; see docs/configuration.md.\n\
# timezone: Europe/London      # cron schedules without their own timezone use this (else the host's zone)\n\
limits:\n  max_concurrent_jobs: 4      # runs at once, across all loops\n  shutdown_grace: 30s         # how long `loops run` waits for running jobs when stopped\n  catch_up_stagger: 2s        # spacing between runs caught up after downtime\n  pause_after_failures: 5     # consecutive failed runs before a loop is paused\n\
\n\
# Prompt loops need a model provider; the key is read from the environment, never written here.\n\
# providers:\n\
#   anthropic: { kind: anthropic, api_key_env: ANTHROPIC_API_KEY, model: claude-sonnet-4-5 }\n\
#   local: { kind: openai, base_url: \"http://127.0.0.1:11434/v1\", model: llama3.1 }   # Ollama and friends\n\
# defaults: { provider: anthropic }\n\
# main: { prompt: MAIN.md }      # or: command: [\"./main-session.sh\"]\n\
\n\
# Shell jobs (`loops jobs submit shell`) run only when allowed (or LOOPS_ALLOW_SHELL_JOBS=1 for the daemon).\n\
# allow_shell_jobs: false\n\
\n\
# Where loops speak (docs/channels.md); URLs and secrets come from the environment.\n\
# channels:\n\
#   general: { kind: discord, url_env: DISCORD_WEBHOOK_URL }\n\
#   digest: { kind: file, path: \"outbox/{date}.md\" }\n\
# detectors: [api_key]           # never post what looks like a key or token (docs/never-share.md)\n\
# mcp_servers:                   # tools from MCP servers (docs/mcp-servers.md)\n\
#   everything: { command: [npx, -y, \"@modelcontextprotocol/server-everything\"] }\n",
    ),
    (
        "SOUL.md",
        "# Soul\n\nWho the main session is: its voice, its values, what it cares about. Given to the main\nsession only, never to isolated loops.\n",
    ),
    (
        "USER.md",
        "# User\n\nWho you are and how you like to work: names, time zone, channels, what matters this\nquarter. Given to the main session only.\n",
    ),
    (
        ".working-memory/memory.md",
        "# Memory\n\nCurated, durable facts the main session keeps. Edit freely.\n",
    ),
    (
        ".working-memory/rules.md",
        "# Rules\n\nOne-line lessons, one per line, learned the hard way.\n",
    ),
    (
        ".working-memory/log.md",
        "# Log\n\nAppend-only notes of what happened, newest last.\n",
    ),
    (".gitignore", ".loops/\n"),
    ("inbox/.gitkeep", ""),
];
