//! The transcript of a prompt run: `.loops/runs/<loop>/<run>.md`, readable markdown with
//! every message, every tool call and its result, and the token counts of each turn.
//! It is appended to as the run goes, so it can be followed while the run is live and a
//! crash keeps everything up to the last turn.
//!
//! Every line passes through a [`Redactor`] first: the value of every secret loops knows
//! (provider keys, channel URLs and tokens, MCP server `env`, see src/secrets.rs) is
//! replaced, whatever put it there (a tool that read a file, an error that quoted a URL).

use super::model::{Block, Message, Role, SystemPart, ToolSpec, Usage};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces secret values with `[redacted]`.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// The values, now, of every secret variable loops.yaml names (provider keys,
    /// channel URLs and tokens, MCP server `env` and headers), on top of every secret
    /// this process already knows (src/secrets.rs).
    pub fn for_settings(settings: &loops_core::workspace::Settings) -> Redactor {
        let mut secrets: Vec<String> = settings
            .secret_env_names()
            .iter()
            .filter_map(|name| loops_core::secrets::var(name).ok())
            .filter(|s| s.len() >= loops_core::secrets::MIN_SECRET_LEN)
            .collect();
        loops_core::secrets::learn(&secrets);
        secrets.sort();
        secrets.dedup();
        // Longest first: a secret that holds another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), loops_core::secrets::REDACTED);
            }
        }
        loops_core::secrets::redact(&out).into_owned()
    }
}

/// An open transcript.
pub struct Transcript {
    path: PathBuf,
    file: Option<std::fs::File>,
    redactor: Redactor,
    /// Where `--follow` wants the transcript as it grows.
    echo: Option<loops_core::exec::Live>,
}

impl Transcript {
    /// The transcript path of a run.
    pub fn path_for(runs_dir: &Path, loop_name: &str, run_id: &str) -> PathBuf {
        runs_dir.join(loop_name).join(format!("{run_id}.md"))
    }

    /// Starts a transcript. A transcript that cannot be written is logged and skipped:
    /// the run itself goes on.
    pub fn create(path: PathBuf, redactor: Redactor) -> Transcript {
        let file = loops_core::fsutil::open_append(&path);
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("cannot write the transcript {}: {e}", path.display());
                None
            }
        };
        Transcript {
            path,
            file,
            redactor,
            echo: None,
        }
    }

    /// Also sends everything written to `echo` (for `loops trigger --follow`).
    pub fn echo_to(&mut self, echo: Option<loops_core::exec::Live>) {
        self.echo = echo;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What it scrubs: the main session keeps its conversation with the same.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub fn write(&mut self, text: &str) {
        let text = self.redactor.redact(text);
        if let Some(tx) = &self.echo {
            // The echo is for a person watching; the file below has everything. A
            // watcher too slow to keep up misses lines rather than slowing the run.
            let _ = tx.try_send((loops_core::exec::Stream::Stdout, text.as_bytes().to_vec()));
        }
        if let Some(f) = &mut self.file {
            if let Err(e) = f.write_all(text.as_bytes()) {
                tracing::warn!("transcript {}: {e}", self.path.display());
                self.file = None;
            }
        }
    }

    pub fn header(&mut self, title: &str, facts: &[(&str, String)]) {
        let mut s = format!("# {title}\n\n");
        for (k, v) in facts {
            s.push_str(&format!("- {k}: {v}\n"));
        }
        s.push('\n');
        self.write(&s);
    }

    pub fn system(&mut self, parts: &[SystemPart], tools: &[ToolSpec]) {
        let mut s = String::from("## System prompt\n\n");
        for p in parts {
            s.push_str(&fence(&p.text));
        }
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        s.push_str(&format!(
            "Tools offered: {}\n\n",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
        self.write(&s);
    }

    pub fn message(&mut self, m: &Message, heading: &str) {
        let who = match m.role {
            Role::User => "User",
            Role::Assistant => "Assistant",
        };
        let mut s = format!("## {who}{heading}\n\n");
        for b in &m.content {
            match b {
                Block::Text { text } => {
                    s.push_str(text.trim_end());
                    s.push_str("\n\n");
                }
                Block::ToolUse { id, name, input } => {
                    let args = serde_json::to_string_pretty(input).unwrap_or_default();
                    s.push_str(&format!(
                        "### Tool call `{name}` ({id})\n\n```json\n{args}\n```\n\n"
                    ));
                }
                Block::Thinking { thinking, .. } => {
                    s.push_str("### Thinking\n\n");
                    s.push_str(&fence(thinking));
                }
                Block::RedactedThinking { data } => {
                    s.push_str(&format!(
                        "### Thinking (redacted by the provider, {} bytes)\n\n",
                        data.len()
                    ));
                }
                Block::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } => {
                    let kind = if *is_error {
                        "Tool error"
                    } else {
                        "Tool result"
                    };
                    s.push_str(&format!("### {kind} ({tool_use_id})\n\n"));
                    s.push_str(&fence(content));
                }
            }
        }
        self.write(&s);
    }

    /// The turn's tokens, time, model and stop reason (as the provider said it:
    /// `end_turn`, `tool_calls`, `length`, …).
    pub fn turn_usage(
        &mut self,
        turn: u32,
        usage: &Usage,
        ms: u128,
        model: Option<&str>,
        stop: Option<&str>,
    ) {
        self.write(&format!(
            "_turn {turn}: {} in, {} out, {} cache read, {} cache write; {ms} ms{}; stop: {}_\n\n",
            usage.input,
            usage.output,
            usage.cache_read,
            usage.cache_write,
            model.map(|m| format!("; {m}")).unwrap_or_default(),
            stop.unwrap_or("(not said)")
        ));
    }

    pub fn note(&mut self, text: &str) {
        self.write(&format!("> {}\n\n", text.replace('\n', "\n> ")));
    }
}

/// A fenced block long enough not to be closed by the text inside it.
fn fence(text: &str) -> String {
    let mut ticks = 3;
    while text.contains(&"`".repeat(ticks)) {
        ticks += 1;
    }
    let f = "`".repeat(ticks);
    format!("{f}\n{}\n{f}\n\n", text.trim_end())
}
