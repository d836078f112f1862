//! The params of shell and agent jobs, typed: what a manifest, `--params` or an MCP call
//! gives as JSON is read into [`ShellParams`] or [`AgentParams`] by serde, and the first
//! thing wrong with it is said in the words `loops jobs submit` has always used.
//!
//! The JSON is what a job file keeps; [`parse`] (or [`Job::typed_params`]) is the one
//! reader of it, for the queue checking a submit or a replay and for the worker running
//! the job.

use super::job::{Job, JobKind};
use crate::config_fields::{field_names, Field, Whole};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What a shell job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellParams {
    pub command: Command,
    /// An absolute folder to run in.
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    /// Variables the job inherits from the runner (its secrets).
    pub inherit: Vec<String>,
}

/// A shell job's program: a command line (`cmd`) or a program and its arguments (`argv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run as `sh -c LINE`.
    Line(String),
    /// Never empty.
    Argv(Vec<String>),
}

impl Command {
    /// The program and its arguments (a line becomes `sh -c LINE`).
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Line(c) => vec!["sh".into(), "-c".into(), c.clone()],
            Command::Argv(a) => a.clone(),
        }
    }

    /// The command as a person wrote it: the line, or the argv joined by spaces.
    pub fn text(&self) -> String {
        match self {
            Command::Line(c) => c.clone(),
            Command::Argv(a) => a.join(" "),
        }
    }
}

/// What an agent job (or a fan-out's aggregator) asks of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentParams {
    pub prompt: String,
    /// The allow-list of tools (`None`: the default set).
    pub tools: Option<Vec<String>>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub max_turns: Option<u32>,
    pub input_vars: Map<String, Value>,
}

/// A job's params, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum JobParams {
    Shell(ShellParams),
    Agent(AgentParams),
}

impl JobParams {
    /// Reads `params` as the params of a `kind` job (see [`parse`]).
    pub fn of(kind: JobKind, params: &Value) -> Result<JobParams, String> {
        parse(kind, params)
    }
}

impl Job {
    /// This job's params, typed. `Err` names the job and says the first thing wrong
    /// with them: a job file edited by hand, or written by a version that took other
    /// params, can no longer be run as it is.
    pub fn typed_params(&self) -> Result<JobParams, String> {
        parse(self.kind, &self.params).map_err(|e| {
            format!(
                "job #{}'s params cannot be read: {e}; replay it with that fixed (`loops jobs replay {} --set KEY=VALUE`) or submit it anew",
                self.id, self.id
            )
        })
    }
}

type Json<T> = Field<T, Value>;

#[derive(Deserialize, Default)]
#[serde(default)]
struct ShellJson {
    cmd: Json<String>,
    argv: Json<Vec<String>>,
    cwd: Json<String>,
    env: Json<BTreeMap<String, String>>,
    inherit: Json<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AgentJson {
    prompt: Json<String>,
    tools: Json<ToolList>,
    model: Json<String>,
    provider: Json<String>,
    max_turns: Json<Whole<1>>,
    input_vars: Json<Map<String, Value>>,
}

/// `tools`: a list of names, or one comma-separated string of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum ToolList {
    Line(String),
    List(Vec<String>),
}

impl ToolList {
    fn names(self) -> Vec<String> {
        match self {
            ToolList::Line(s) => s
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            ToolList::List(list) => list,
        }
    }
}

/// Reads `params` as the params of a `kind` job; `Err` says the first thing wrong.
pub fn parse(kind: JobKind, params: &Value) -> Result<JobParams, String> {
    let Some(obj) = params.as_object() else {
        return Err(format!(
            "{kind} job params must be a JSON object, got {params}"
        ));
    };
    match kind {
        JobKind::Loop | JobKind::Wake => Err(format!(
            "{kind} jobs are the runner's own (a loop's run, a wake of the main session); to run a loop now, use `loops trigger NAME`"
        )),
        JobKind::Shell => shell(read(obj)).map(JobParams::Shell),
        JobKind::Agent | JobKind::Aggregator => agent(kind, read(obj)).map(JobParams::Agent),
    }
    .and_then(|p| match unknown::<ShellJson, AgentJson>(kind, obj) {
        Some(e) => Err(e),
        None => Ok(p),
    })
}

fn read<T: DeserializeOwned + Default>(obj: &Map<String, Value>) -> T {
    T::deserialize(Value::Object(obj.clone())).unwrap_or_default()
}

/// The first key `obj` has that its kind does not take.
fn unknown<S: DeserializeOwned, A: DeserializeOwned>(
    kind: JobKind,
    obj: &Map<String, Value>,
) -> Option<String> {
    let (names, what) = match kind {
        JobKind::Shell => (field_names::<S>(), "shell"),
        _ => (field_names::<A>(), "agent"),
    };
    let k = obj.keys().find(|k| !names.contains(&k.as_str()))?;
    Some(format!(
        "unknown {what} job parameter \"{k}\" (known: {})",
        names.join(", ")
    ))
}

fn shell(p: ShellJson) -> Result<ShellParams, String> {
    let command = match (p.cmd.written(), p.argv.written()) {
        (Some(Ok(c)), None) if !c.trim().is_empty() => Command::Line(c),
        (None, Some(Ok(a))) if !a.is_empty() => Command::Argv(a),
        (Some(_), Some(_)) => {
            return Err(
                "give either \"cmd\" (run through sh -c) or \"argv\" (a list), not both".into(),
            )
        }
        _ => return Err(
            "a shell job needs \"cmd\": \"a command line\" or \"argv\": [\"program\", \"arg\", …]"
                .into(),
        ),
    };
    let cwd = match p.cwd.written() {
        Some(Ok(c)) if std::path::Path::new(&c).is_absolute() => Some(PathBuf::from(c)),
        Some(Ok(c)) => {
            return Err(format!(
                "\"cwd\" must be an absolute path, got {}",
                Value::String(c)
            ))
        }
        Some(Err(v)) => return Err(format!("\"cwd\" must be an absolute path, got {v}")),
        None => None,
    };
    let env = match p.env.written() {
        Some(Ok(env)) => env,
        Some(Err(_)) => return Err("\"env\" must be an object of string values, e.g. {\"MODE\": \"fast\"}; name secrets in \"inherit\" instead".into()),
        None => BTreeMap::new(),
    };
    let inherit =
        match p.inherit.written() {
            Some(Ok(names)) => names,
            Some(Err(_)) => return Err(
                "\"inherit\" must be a list of environment variable names, e.g. [\"GITHUB_TOKEN\"]"
                    .into(),
            ),
            None => Vec::new(),
        };
    Ok(ShellParams {
        command,
        cwd,
        env,
        inherit,
    })
}

fn agent(kind: JobKind, p: AgentJson) -> Result<AgentParams, String> {
    let prompt = match p.prompt {
        Field::Ok(s) => s,
        _ => String::new(),
    };
    if prompt.trim().is_empty() && kind == JobKind::Agent {
        return Err("an agent job needs \"prompt\": \"what to do\"".into());
    }
    let tools = match p.tools.written() {
        Some(Ok(list)) => Some(check_tools(list.names())?),
        Some(Err(_)) => {
            return Err("\"tools\" is a list of tool names (or a comma-separated string)".into())
        }
        None => None,
    };
    let max_turns = match p.max_turns.written() {
        Some(Ok(n)) => Some(n.saturating_u32()),
        Some(Err(m)) => {
            return Err(format!(
                "\"max_turns\" must be a whole number of at least 1, got {m}"
            ))
        }
        None => None,
    };
    let model = text("model", p.model)?;
    let provider = text("provider", p.provider)?;
    let input_vars = match p.input_vars.written() {
        Some(Ok(vars)) => vars,
        Some(Err(_)) => return Err("\"input_vars\" must be an object of names to values".into()),
        None => Map::new(),
    };
    Ok(AgentParams {
        prompt,
        tools,
        model,
        provider,
        max_turns,
        input_vars,
    })
}

fn text(key: &str, f: Json<String>) -> Result<Option<String>, String> {
    match f.written() {
        Some(Ok(s)) => Ok(Some(s)),
        Some(Err(_)) => Err(format!("\"{key}\" must be a string")),
        None => Ok(None),
    }
}

/// Every name a built-in tool or an MCP server reference, by
/// [`crate::tool_names::check`]; the servers themselves are checked when the job runs.
fn check_tools(names: Vec<String>) -> Result<Vec<String>, String> {
    use crate::tool_names::{check, ToolEntry, KNOWN};
    for n in &names {
        let hint = match check(n, None) {
            ToolEntry::Builtin | ToolEntry::Server { .. } => continue,
            ToolEntry::Typo { suggestion } => format!(" (did you mean `{suggestion}`?)"),
            _ => String::new(),
        };
        return Err(format!(
            "unknown tool `{n}`{hint}; known tools: {}, or an MCP server from loops.yaml (`server` or `server.tool`)",
            KNOWN.join(", ")
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shell_params_are_typed() {
        let p = parse(
            JobKind::Shell,
            &json!({"cmd": "ls -l", "cwd": "/tmp", "env": {"A": "b"}, "inherit": ["T"]}),
        );
        assert_eq!(
            p,
            Ok(JobParams::Shell(ShellParams {
                command: Command::Line("ls -l".into()),
                cwd: Some("/tmp".into()),
                env: [("A".to_string(), "b".to_string())].into(),
                inherit: vec!["T".into()],
            }))
        );
    }

    #[test]
    fn agent_params_are_typed() {
        let Ok(JobParams::Agent(a)) = parse(
            JobKind::Agent,
            &json!({"prompt": "x", "tools": "read_file, github.issues", "max_turns": 3}),
        ) else {
            panic!("agent params")
        };
        assert_eq!(
            a.tools,
            Some(vec!["read_file".into(), "github.issues".into()])
        );
        assert_eq!(a.max_turns, Some(3));
    }

    #[test]
    fn a_command_keeps_how_it_was_written() {
        let Ok(JobParams::Shell(p)) = parse(JobKind::Shell, &json!({"argv": ["ls", "-l"]})) else {
            panic!("shell params")
        };
        assert_eq!(p.command, Command::Argv(vec!["ls".into(), "-l".into()]));
        assert_eq!(p.command.argv(), ["ls", "-l"]);
        assert_eq!(p.command.text(), "ls -l");
        let line = Command::Line("ls -l | wc".into());
        assert_eq!(line.argv(), ["sh", "-c", "ls -l | wc"]);
        assert_eq!(line.text(), "ls -l | wc");
    }

    #[test]
    fn the_known_keys_are_the_structs_fields() {
        assert_eq!(
            field_names::<ShellJson>(),
            ["cmd", "argv", "cwd", "env", "inherit"]
        );
        assert_eq!(
            field_names::<AgentJson>(),
            [
                "prompt",
                "tools",
                "model",
                "provider",
                "max_turns",
                "input_vars"
            ]
        );
    }
}
