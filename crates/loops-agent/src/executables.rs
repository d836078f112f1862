//! The files a run will execute, found by reading every config in the workspace: loops.yaml
//! (`main.command`, command channels, MCP server commands) and each `domains/*/config.yaml`
//! (`gate:` and `payload.command`). No model scope may write them, so text a model reads
//! can never become code the daemon runs.
//!
//! The configs are read as raw YAML, not through the validating parsers: a config with an
//! error elsewhere still names the scripts it runs, and those stay protected while the
//! person fixes it.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use yaml_serde::Value;

/// Programs that run the file named after them (`bash check.sh`, `python3 collect.py`).
const INTERPRETERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "fish", "ksh", "python", "python3", "node", "deno", "bun", "ruby",
    "perl", "php", "lua", "Rscript", "pwsh", "tsx", "ts-node", "env", "exec", "nice", "nohup",
    "command", "time", "xargs", "sudo",
];

/// Endings of files that are programs whatever runs them.
const SCRIPT_ENDINGS: &[&str] = &[
    ".sh", ".bash", ".zsh", ".py", ".js", ".mjs", ".cjs", ".ts", ".rb", ".pl", ".php", ".lua",
    ".ps1", ".R",
];

/// Workspace-relative paths ('/'-separated) of every file some config runs, each with
/// what runs it (for the refusal a model sees).
pub type Executables = BTreeMap<String, String>;

/// Every file some config in the workspace at `root` runs.
pub fn find(root: &Path) -> Executables {
    let mut out = Executables::new();
    if let Some(y) = read_yaml(&root.join("loops.yaml")) {
        from_workspace(root, &y, &mut out);
    }
    let Ok(dirs) = std::fs::read_dir(root.join("domains")) else {
        return out;
    };
    for d in dirs.flatten() {
        let dir = d.path();
        let Some(y) = read_yaml(&dir.join("config.yaml")) else {
            continue;
        };
        let name = d.file_name().to_string_lossy().into_owned();
        for key in ["gate", "payload"] {
            let Some(v) = y.get(key) else { continue };
            // `gate: {command: …}` and `payload: {command: …}`; `gate:` may be the command.
            let cmd = v
                .get("command")
                .unwrap_or(if key == "gate" { v } else { &Value::Null });
            let what = if key == "gate" {
                format!("the gate of loop `{name}`")
            } else {
                format!("the command of loop `{name}`")
            };
            add_command(root, &dir, cmd, &[], &what, &mut out);
        }
    }
    out
}

/// loops.yaml: the main session's command, command channels and MCP servers.
fn from_workspace(root: &Path, y: &Value, out: &mut Executables) {
    if let Some(cmd) = y.get("main").and_then(|m| m.get("command")) {
        add_command(
            root,
            root,
            cmd,
            &[],
            "the main session's command (loops.yaml)",
            out,
        );
    }
    if let Some(Value::Mapping(chans)) = y.get("channels") {
        for (n, c) in chans {
            if let Some(cmd) = c.get("command") {
                let what = format!("the command of channel `{}` (loops.yaml)", key_name(n));
                add_command(root, root, cmd, &[], &what, out);
            }
        }
    }
    if let Some(Value::Mapping(servers)) = y.get("mcp_servers") {
        for (n, s) in servers {
            let cwd = s
                .get("cwd")
                .and_then(Value::as_str)
                .map(|c| root.join(c.trim()))
                .unwrap_or_else(|| root.to_path_buf());
            let args: Vec<String> = match s.get("args") {
                Some(Value::Sequence(seq)) => seq.iter().filter_map(scalar).collect(),
                _ => Vec::new(),
            };
            if let Some(cmd) = s.get("command") {
                let what = format!("MCP server `{}` (loops.yaml)", key_name(n));
                add_command(root, &cwd, cmd, &args, &what, out);
            }
        }
    }
}

fn key_name(k: &Value) -> String {
    scalar(k).unwrap_or_else(|| "?".into())
}

fn read_yaml(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    yaml_serde::from_str(&text).ok()
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The words of a command: an argv list as it is, a shell string split on blanks and
/// shell punctuation (enough to find the programs it names; quoting is not needed for
/// that, since a quoted path is still one of the words).
fn words(cmd: &Value, extra: &[String]) -> Vec<String> {
    let mut w: Vec<String> = match cmd {
        Value::Sequence(seq) => seq.iter().filter_map(scalar).collect(),
        Value::String(s) => shell_words(s),
        _ => Vec::new(),
    };
    // `sh -c "…"` in an argv list: the string is a command line of its own.
    if w.len() >= 3 && INTERPRETERS.contains(&w[0].as_str()) && w[1] == "-c" {
        let inner = shell_words(&w[2]);
        w.splice(2..3, inner);
    }
    // `args:` continue the command line, so its last separator goes.
    if !extra.is_empty() && w.last().is_some_and(|x| x == SEPARATOR) {
        w.pop();
    }
    w.extend(extra.iter().cloned());
    w
}

/// A word that separates commands in a shell line: the next word is a program again.
const SEPARATOR: &str = ";";

fn shell_words(s: &str) -> Vec<String> {
    let spaced: String = s
        .chars()
        .map(|c| if ";|&()`\n".contains(c) { ';' } else { c })
        .collect();
    let mut out: Vec<String> = Vec::new();
    for part in spaced.split(';') {
        let words = part
            .split(|c: char| c.is_whitespace() || "<>'\"$".contains(c))
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        out.extend(words);
        out.push(SEPARATOR.to_string());
    }
    out
}

/// Adds the files among `cmd`'s words: the program itself, the word after an
/// interpreter, the first word after a shell separator, and any word that names an
/// existing script (by its ending or its exec bit).
fn add_command(
    root: &Path,
    cwd: &Path,
    cmd: &Value,
    extra: &[String],
    what: &str,
    out: &mut Executables,
) {
    let w = words(cmd, extra);
    let mut program_next = true;
    let mut after_interpreter = false;
    for word in &w {
        if word == SEPARATOR {
            program_next = true;
            after_interpreter = false;
            continue;
        }
        // Options and `NAME=value` assignments come before the program they belong to.
        if word.starts_with('-') || (word.contains('=') && !word.contains('/')) {
            continue;
        }
        let is_program = program_next;
        // The word an interpreter is given is its script, even before the file exists.
        let script = after_interpreter;
        after_interpreter = INTERPRETERS.contains(&base_name(word));
        program_next = after_interpreter;
        let Some(rel) = inside(root, cwd, word, script) else {
            continue;
        };
        if is_program || looks_like_script(&root.join(&rel), word) {
            out.entry(rel).or_insert_with(|| what.to_string());
        }
    }
}

fn base_name(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

fn looks_like_script(path: &Path, word: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    SCRIPT_ENDINGS.iter().any(|e| word.ends_with(e))
        || std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `word` as a workspace-relative path, if it names a place inside the workspace (a bare
/// program name found on PATH, such as `git`, is not a path: it has no '/' and no file of
/// that name in the folder).
fn inside(root: &Path, cwd: &Path, word: &str, script: bool) -> Option<String> {
    let p = Path::new(word);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        if !script && !word.contains('/') && !cwd.join(p).exists() {
            return None;
        }
        cwd.join(p)
    };
    let rel = normalise(&full)?
        .strip_prefix(normalise(root)?)
        .ok()?
        .to_path_buf();
    let names: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    (!names.is_empty()).then(|| names.join("/"))
}

/// `..` and `.` taken out by their text (the file may not exist yet).
fn normalise(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_gates_commands_channels_servers_and_main() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        let put = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        put(
            "loops.yaml",
            "main: { command: \"./bin/main.sh --x\" }\nchannels:\n  c: { kind: command, command: [python3, tools/post.py] }\nmcp_servers:\n  s: { command: node, args: [server.js], cwd: mcp }\n",
        );
        put(
            "domains/a/config.yaml",
            "gate: [\"./check.sh\"]\npayload: { kind: prompt }\n",
        );
        put(
            "domains/b/config.yaml",
            "payload: { command: \"bash run.sh && ./post\" }\n",
        );
        put("domains/b/run.sh", "");
        put(
            "domains/c/config.yaml",
            "payload: { command: [sh, -c, \"FAST=1 ./go --now\"] }\n",
        );
        put(
            "domains/d/config.yaml",
            "payload: { command: [cat, state.md] }\n",
        );
        put("domains/d/state.md", "");
        put(
            "domains/e/config.yaml",
            "gate: { command: \"../../../etc/x; git status\" }\n",
        );
        let got: Vec<String> = find(root).into_keys().collect();
        assert_eq!(
            got,
            [
                "bin/main.sh",
                "domains/a/check.sh",
                "domains/b/post",
                "domains/b/run.sh",
                "domains/c/go",
                "mcp/server.js",
                "tools/post.py",
            ]
        );
    }
}
