//! The prompt, laid out stable-first so providers' prompt caches hit: the runner's
//! preamble (and, in the request, the tool schemas), the identity files (main session
//! only), prompt.md and the loop's settings, state.md — and only then the dynamic part
//! (now, the collection window, the last run, collected data, steering messages), which
//! is the one thing that changes between two quiet runs.

use super::model::SystemPart;
use super::sandbox::Scope;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::fmt::Write;

/// Files bigger than this are cut when they go into the prompt.
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// The folders `scope` writes, as a prompt names them: "`domains/x/` and `drafts/x/`".
/// From [`Scope::writable_areas`], the value the sandbox enforces.
pub fn writable_text(scope: &Scope) -> String {
    match scope.writable_areas() {
        Some(areas) => areas
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(" and "),
        None => "the workspace (except git's files and the runner's)".into(),
    }
}

/// What an isolated loop's run is told, first.
pub fn loop_preamble(loop_name: &str) -> String {
    let may_write = writable_text(&Scope::Isolated {
        loop_name: loop_name.to_string(),
    });
    format!(
        "You are `{loop_name}`, a loop run by loops, a file-system-first agent runner. You are \
started on a schedule, do one pass of your job with the tools offered, and stop.\n\
\n\
- Paths are relative to the workspace root, e.g. `domains/{loop_name}/state.md`. You may write \
only in {may_write}; a handoff is made with create_handoff.\n\
- Keep what you need next time in `domains/{loop_name}/state.md`: you remember nothing else.\n\
- Work for the main session goes through a draft (save_draft) and a handoff (create_handoff).\n\
- End with `finish` (a one-line summary). When there is nothing to do, call `finish` with \
`silent: true`, or answer exactly SILENT: a silent run changes nothing and costs nothing more.\n\
- Every file you change is committed to git with your summary, so say what you did plainly."
    )
}

/// What an agent job (`loops jobs submit agent`, `loops agent run`, MCP `submit_job`) is
/// told, first. It has no schedule, no domain folder, no prompt.md and no state.md: it
/// runs once, and writes only where its `scope` lets it.
pub fn job_preamble(scope: &Scope) -> String {
    let name = match scope {
        Scope::Job { name } | Scope::Isolated { loop_name: name } => name.as_str(),
        Scope::Main => "main",
    };
    let may_write = writable_text(scope);
    format!(
        "You are `{name}`, an agent job run by loops, a file-system-first agent runner. You were \
submitted once: do the job below with the tools offered, and stop.\n\
\n\
- Paths are relative to the workspace root. You may write only in {may_write}; a handoff is \
made with create_handoff.\n\
- Work for the main session goes through a draft (save_draft) and a handoff (create_handoff).\n\
- End with `finish` (a one-line summary of what you did or found)."
    )
}

/// The stable part of an agent job's prompt: its preamble, its prompt, its input vars.
pub fn job_system(scope: &Scope, prompt: &str, settings_yaml: &str) -> Vec<SystemPart> {
    let mut body = format!(
        "# Your instructions (the job's prompt)\n\n{}\n",
        clip_file(prompt)
    );
    if !settings_yaml.trim().is_empty() && settings_yaml.trim() != "{}" {
        let _ = write!(
            body,
            "\n# Your settings (the job's input_vars)\n\n```yaml\n{}```\n",
            ensure_newline(settings_yaml)
        );
    }
    vec![
        SystemPart {
            text: job_preamble(scope),
            cache: false,
        },
        SystemPart {
            text: body,
            cache: true,
        },
    ]
}

/// What the main session is told, first.
pub const MAIN_PREAMBLE: &str = "You are the main session of this workspace, run by loops. \
Loops (minions) hand work to you as handoffs: task files with a checklist. Each wake gives you \
the handoffs that arrived. For each: read it and its draft, do what it asks (edit the draft, \
update memory, deliver to the user), tick each checklist item with tick_item, then \
complete_handoff. A handoff you cannot finish now stays open: say why in your reply.\n\
\n\
- Paths are relative to the workspace root. Memory lives in .working-memory/ (memory.md curated, \
rules.md one-line lessons, log.md append-only).\n\
- Deliver to the user with `post` (a channel from loops.yaml). Never post SILENT, NO_REPLY or HEARTBEAT_OK.\n\
- End the wake with `finish` (a one-line summary; silent: true when there was nothing to do).";

/// The stable part of an isolated loop's prompt.
pub fn loop_system(
    loop_name: &str,
    prompt: &str,
    settings_yaml: &str,
    state: Option<&str>,
) -> Vec<SystemPart> {
    let mut body = String::new();
    let _ = write!(
        body,
        "# Your instructions (domains/{loop_name}/prompt.md)\n\n{}\n",
        clip_file(prompt)
    );
    if !settings_yaml.trim().is_empty() && settings_yaml.trim() != "{}" {
        let _ = write!(
            body,
            "\n# Your settings (from domains/{loop_name}/config.yaml)\n\n```yaml\n{}```\n",
            ensure_newline(settings_yaml)
        );
    }
    match state {
        Some(s) => {
            let _ = write!(
                body,
                "\n# Your state (domains/{loop_name}/state.md)\n\n{}\n",
                clip_file(s)
            );
        }
        None => {
            let _ = write!(
                body,
                "\n# Your state\n\n(no domains/{loop_name}/state.md yet)\n"
            );
        }
    }
    vec![
        SystemPart {
            text: loop_preamble(loop_name),
            cache: false,
        },
        SystemPart {
            text: body,
            cache: true,
        },
    ]
}

/// Adds the never-share rules to the stable head of the prompt (before the cache
/// breakpoint: they change only when the config does).
pub fn add_rules(system: &mut [SystemPart], guard: &loops_core::guard::Guard) {
    if let (Some(rules), Some(first)) = (guard.prompt_rules(), system.first_mut()) {
        first.text.push_str("\n\n");
        first.text.push_str(&rules);
    }
}

/// An identity file (SOUL.md, USER.md, memory) as the prompt shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentityText {
    Text(String),
    /// Not there (yet): the model may create it.
    Missing,
    /// There, but not text it can be given (not UTF-8, a folder): why, so that the model
    /// leaves it alone rather than write a fresh one over it.
    Unreadable(String),
}

/// The identity files, each named as `files` lists it (workspace-relative) with its text
/// now; one that cannot be read is shown as such rather than failing the run.
pub fn read_identity(root: &std::path::Path, files: &[String]) -> Vec<(String, IdentityText)> {
    files
        .iter()
        .map(|f| {
            let text = match std::fs::read_to_string(root.join(f)) {
                Ok(t) => IdentityText::Text(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => IdentityText::Missing,
                Err(e) => IdentityText::Unreadable(e.to_string()),
            };
            (f.clone(), text)
        })
        .collect()
}

/// The identity files as one system part; `None` when no file is listed.
pub fn identity_part(identity: &[(String, IdentityText)]) -> Option<SystemPart> {
    let mut id = String::new();
    for (path, text) in identity {
        let _ = match text {
            IdentityText::Text(t) => write!(id, "# {path}\n\n{}\n\n", clip_file(t)),
            IdentityText::Missing => write!(id, "# {path}\n\n(missing)\n\n"),
            IdentityText::Unreadable(why) => write!(
                id,
                "# {path}\n\n(there, but it cannot be read as text: {why}; leave it as it is, a person will fix it)\n\n"
            ),
        };
    }
    (!id.is_empty()).then_some(SystemPart {
        text: id,
        cache: false,
    })
}

/// The stable part of the main session's prompt: preamble, identity files, its prompt.
pub fn main_system(identity: &[(String, IdentityText)], prompt: &str) -> Vec<SystemPart> {
    let mut parts = vec![SystemPart {
        text: MAIN_PREAMBLE.to_string(),
        cache: false,
    }];
    if let Some(id) = identity_part(identity) {
        parts.push(id);
    }
    parts.push(SystemPart {
        text: format!("# Your instructions\n\n{}\n", clip_file(prompt)),
        cache: true,
    });
    parts
}

/// The dynamic part of a loop run: one user message, last in the request.
pub struct Dynamic<'a> {
    pub now: DateTime<Utc>,
    pub tz: Tz,
    pub trigger: &'a str,
    pub window_start: Option<DateTime<Utc>>,
    /// How the window was computed, e.g. "the last successful run minus 11m overlap".
    pub window_rule: String,
    pub last_run: Option<(String, DateTime<Utc>, Option<String>)>,
    pub collected: Option<&'a str>,
    pub steering: &'a [String],
}

pub fn dynamic_message(d: &Dynamic) -> String {
    let local = |t: DateTime<Utc>| {
        t.with_timezone(&d.tz)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
    };
    let mut s = String::new();
    let _ = writeln!(s, "Now: {} ({})", local(d.now), d.tz.name());
    let _ = writeln!(s, "Trigger: {}", d.trigger);
    match d.window_start {
        Some(w) => {
            let _ = writeln!(
                s,
                "Collection window: {} to now ({})",
                local(w),
                d.window_rule
            );
        }
        None => {
            let _ = writeln!(
                s,
                "Collection window: from the beginning (no earlier successful run)"
            );
        }
    }
    match &d.last_run {
        Some((outcome, at, summary)) => {
            let _ = writeln!(
                s,
                "Last run: {outcome} at {}{}",
                local(*at),
                summary
                    .as_deref()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(s, "Last run: none (this is the first)");
        }
    }
    if let Some(c) = d.collected {
        let _ = write!(
            s,
            "\nCollected data (from your gate command):\n\n```\n{}```\n",
            ensure_newline(&clip_file(c))
        );
    }
    if !d.steering.is_empty() {
        let _ = writeln!(s, "\nSteering messages from the operator:");
        for m in d.steering {
            let _ = writeln!(s, "- {m}");
        }
    }
    let _ = write!(s, "\nDo your job now.");
    s
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

fn clip_file(s: &str) -> String {
    if s.len() <= MAX_FILE_BYTES {
        return s.to_string();
    }
    format!(
        "{}\n[… cut at {} KiB; read the rest with read_file and a line range]",
        loops_core::text::clip(s, MAX_FILE_BYTES),
        MAX_FILE_BYTES / 1024
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_file_that_is_there_but_no_text_is_not_shown_as_missing() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("SOUL.md"), "I am careful.\n").expect("write");
        std::fs::write(d.path().join("USER.md"), b"Name: Ren\xe9\n").expect("write");
        let files: Vec<String> = ["SOUL.md", "USER.md", "MEMORY.md"]
            .iter()
            .map(|f| f.to_string())
            .collect();
        let identity = read_identity(d.path(), &files);
        assert_eq!(identity[0].1, IdentityText::Text("I am careful.\n".into()));
        assert!(matches!(identity[1].1, IdentityText::Unreadable(_)));
        assert_eq!(identity[2].1, IdentityText::Missing);
        let text = identity_part(&identity).expect("a part").text;
        assert!(text.contains("# USER.md\n\n(there, but it cannot be read as text: stream did not contain valid UTF-8; leave it as it is"), "{text}");
        assert!(text.contains("# MEMORY.md\n\n(missing)"), "{text}");
    }
}
