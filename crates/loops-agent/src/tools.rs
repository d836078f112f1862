//! The tool kit one run offers the model: the file tools (see [`super::files`]), drafts
//! and handoffs, `post` to delivery channels, `http_get`, `shell`, `finish`, and the tools of
//! MCP servers.
//!
//! A loop's `tools:` is an allow-list: the model is offered exactly those tools, and a call
//! to anything else is refused (the refusal goes back to the model and is recorded). Every
//! tool error goes back to the model as the tool's result; a tool never ends a run.
//!
//! An entry of `tools:` that is not a built-in tool names an MCP server of loops.yaml
//! `mcp_servers:`: `server` (all its tools) or `server.tool` (one). Each such tool is
//! offered as `server__tool` with its own schema, and `call_tool(server, tool, params)`
//! reaches the same allow-list by name (see [`crate::mcp_client`]).

use super::model::ToolSpec;
use super::sandbox::{Access, Sandbox};
use super::{files, ToolError, ToolOk, ToolResult};
use loops_core::channels::{DeliveryNote, Outbound, Poster};
use loops_core::guard::Guard;
use loops_core::handoff::{Inbox, NewHandoff, Priority};
use loops_core::history::Committer;
use loops_core::text::clip;
use loops_core::tool_names::{self, is_known, ToolEntry};
use loops_core::workspace::Workspace;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The largest response body `http_get` hands back.
pub const HTTP_MAX_BYTES: usize = 256 * 1024;

/// The most text one MCP tool call hands back to the model.
pub const MCP_MAX_BYTES: usize = 128 * 1024;

/// Which tools of one MCP server a run may use.
#[derive(Debug, Clone, PartialEq)]
enum McpAllow {
    All,
    Only(Vec<String>),
}

/// How `shell` runs commands.
#[derive(Debug, Clone)]
pub struct ShellSpec {
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

/// A handoff the main session is working on in this wake.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub path: PathBuf,
}

/// What the tools of one run need from their surroundings.
pub struct ToolEnv {
    pub ws: Arc<Workspace>,
    pub sandbox: Sandbox,
    /// The loop (or `main`) the run belongs to: drafts and handoffs are made in its name.
    pub loop_name: String,
    pub run_id: String,
    /// The tools offered, in order.
    pub allowed: Vec<String>,
    pub allowed_hosts: Vec<String>,
    /// Set when the loop lists `shell` and loops.yaml allows it.
    pub shell: Option<ShellSpec>,
    pub committer: Option<Committer>,
    /// The main session's claimed handoffs (empty for loops).
    pub claimed: Vec<Claimed>,
    /// The never-share rules for what this run posts or hands to anyone but main.
    pub guard: Guard,
    /// The logical run posts are keyed by: a retry of the same slot, or a replayed wake,
    /// posts nothing twice (see [`loops_core::channels::delivery_key`]).
    pub delivery_scope: String,
    /// An adaptive loop's bounds (min, max): `finish` then offers `next_check`.
    pub next_check: Option<(std::time::Duration, std::time::Duration)>,
}

/// How the model ended the run with `finish`.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub summary: String,
    pub silent: bool,
    /// When the model wants to look next (`next_check`), already held to the loop's
    /// adaptive bounds.
    pub next_check: Option<std::time::Duration>,
}

/// The tools of one run, and what they did.
pub struct ToolKit {
    env: ToolEnv,
    specs: Vec<ToolSpec>,
    /// Files the tools wrote (absolute).
    pub wrote: BTreeSet<PathBuf>,
    /// Handoffs made by `create_handoff` (ids).
    pub handoffs: Vec<String>,
    /// `complete_handoff` calls: id and summary.
    pub completed: Vec<(String, Option<String>)>,
    /// Calls to tools outside the allow-list.
    pub refused: Vec<String>,
    /// Messages posted (duplicates included: the run did say them).
    pub delivered: usize,
    /// Every delivery and every blocked text, for the run record.
    pub deliveries: Vec<DeliveryNote>,
    poster: Poster,
    pub finish: Option<Finish>,
    /// MCP servers this run may use, in `tools:` order, and which of their tools.
    mcp_allowed: Vec<(String, McpAllow)>,
    /// Offered tool name (`server__tool`) to its server and the tool's own name.
    mcp_tools: std::collections::BTreeMap<String, (String, String)>,
    /// Why MCP tools the loop lists are missing from this run (a server that did not
    /// start, a tool it does not have), for the run record.
    pub mcp_errors: Vec<String>,
}

impl ToolKit {
    pub fn new(env: ToolEnv) -> ToolKit {
        let all = all_specs();
        let mut poster = Poster::new(env.ws.clone(), env.committer.clone(), env.guard.clone());
        if env.loop_name == "main" {
            poster = poster.without_handoffs();
        }
        let channels = poster.channel_list();
        let specs = env
            .allowed
            .iter()
            .filter(|name| name.as_str() != "shell" || env.shell.is_some())
            .filter_map(|name| all.iter().find(|s| &s.name == name).cloned())
            .map(|mut s| {
                // The model needs the channel names to post anywhere.
                if s.name == "post" || s.name == "deliver" {
                    s.description = format!("{} Channels: {channels}.", s.description);
                }
                if let (true, Some(b)) = (s.name == "finish", env.next_check) {
                    offer_next_check(&mut s, b);
                }
                s
            })
            .collect();
        ToolKit {
            poster,
            deliveries: Vec::new(),
            env,
            specs,
            wrote: BTreeSet::new(),
            handoffs: Vec::new(),
            completed: Vec::new(),
            refused: Vec::new(),
            delivered: 0,
            finish: None,
            mcp_allowed: Vec::new(),
            mcp_tools: Default::default(),
            mcp_errors: Vec::new(),
        }
    }

    /// Adds the tools of the MCP servers `tools:` lists (starting the servers if need
    /// be), and `call_tool`. A server that does not start costs the run its tools, not
    /// the run: the model is told in `call_tool`'s description, and [`Self::mcp_errors`]
    /// says why for the record.
    pub async fn load_mcp(&mut self) {
        let ws = self.env.ws.clone();
        let configured = &ws.settings.mcp_servers;
        let allowed = self.mcp_allow_list(configured);
        if allowed.is_empty() {
            return;
        }
        let pool = crate::mcp_client::McpPool::shared(&ws);
        let mut taken: BTreeSet<String> = self.specs.iter().map(|s| s.name.clone()).collect();
        for (server, allow) in &allowed {
            let Some(cfg) = configured.get(server) else {
                continue;
            };
            match pool.list_tools(cfg).await {
                Ok(tools) => self.offer_mcp_tools(server, allow, &tools, &mut taken),
                Err(e) => {
                    tracing::warn!(loop_name = %self.env.loop_name, server = %server, "{e}");
                    self.mcp_errors.push(e.to_string());
                }
            }
        }
        self.mcp_allowed = allowed;
        if !self.mcp_allowed.is_empty() {
            let spec = self.call_tool_spec();
            self.specs.push(spec);
        }
    }

    /// The MCP servers `tools:` names, in its order, and which of their tools. An entry
    /// naming a server loops.yaml lacks is noted in [`Self::mcp_errors`].
    fn mcp_allow_list(
        &mut self,
        configured: &std::collections::BTreeMap<String, loops_core::mcp_config::McpServerConfig>,
    ) -> Vec<(String, McpAllow)> {
        let names: Vec<&str> = configured.keys().map(String::as_str).collect();
        let mut allowed: Vec<(String, McpAllow)> = Vec::new();
        for entry in &self.env.allowed {
            let (server, tool) = match tool_names::check(entry, Some(&names)) {
                ToolEntry::Server { server, tool } => (server, tool),
                // A dotted name meant a server.
                ToolEntry::MissingServer { server, .. } => {
                    self.mcp_errors.push(format!(
                        "`{entry}` in tools: names MCP server `{server}`, which is not in loops.yaml `mcp_servers:`"
                    ));
                    continue;
                }
                // A built-in tool, or one this runner lacks (`loops check` warns).
                _ => continue,
            };
            let pos = match allowed.iter().position(|(s, _)| s == server) {
                Some(p) => p,
                None => {
                    allowed.push((server.to_string(), McpAllow::Only(Vec::new())));
                    allowed.len() - 1
                }
            };
            match (&mut allowed[pos].1, tool) {
                (a, None) => *a = McpAllow::All,
                (McpAllow::Only(list), Some(t)) if !list.iter().any(|x| x == t) => {
                    list.push(t.to_string())
                }
                _ => {}
            }
        }
        allowed
    }

    /// Offers the tools of one server that `allow` lets through, each under a name no
    /// other offered tool has (`taken`); a listed tool the server lacks is noted.
    fn offer_mcp_tools(
        &mut self,
        server: &str,
        allow: &McpAllow,
        tools: &[crate::mcp_client::RemoteTool],
        taken: &mut BTreeSet<String>,
    ) {
        if let McpAllow::Only(names) = allow {
            for n in names
                .iter()
                .filter(|n| !tools.iter().any(|t| &t.name == *n))
            {
                let have: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
                self.mcp_errors.push(format!(
                    "mcp server `{server}` has no tool `{n}` (it has: {})",
                    have.join(", ")
                ));
            }
        }
        for t in tools.iter().filter(|t| match allow {
            McpAllow::All => true,
            McpAllow::Only(names) => names.contains(&t.name),
        }) {
            let name = unique_tool_name(server, &t.name, taken);
            let description = if t.description.trim().is_empty() {
                format!("`{}` of the MCP server `{server}`.", t.name)
            } else {
                format!("{} (MCP server `{server}`)", t.description.trim())
            };
            self.specs.push(ToolSpec {
                name: name.clone(),
                description,
                input_schema: t.input_schema.clone(),
            });
            self.mcp_tools
                .insert(name, (server.to_string(), t.name.clone()));
        }
    }

    /// What the MCP allow-list permits, for descriptions and refusals.
    fn mcp_allowed_text(&self) -> String {
        let parts: Vec<String> = self
            .mcp_allowed
            .iter()
            .map(|(s, a)| match a {
                McpAllow::All => format!("{s} (all its tools)"),
                McpAllow::Only(names) => names
                    .iter()
                    .map(|n| format!("{s}.{n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
            .collect();
        parts.join(", ")
    }

    fn call_tool_spec(&self) -> ToolSpec {
        let mut description = format!(
            "Call a tool of an MCP server by name: `server`, `tool`, and `params` (the tool's arguments, as its schema says). Allowed here: {}.",
            self.mcp_allowed_text()
        );
        for e in &self.mcp_errors {
            description.push_str(&format!(" Note: {e}."));
        }
        spec(
            "call_tool",
            &description,
            json!({"type": "object", "properties": {
                "server": {"type": "string", "description": "the MCP server's name"},
                "tool": {"type": "string", "description": "the tool's name on that server"},
                "params": {"type": "object", "description": "the tool's arguments"}
            }, "required": ["server", "tool"]}),
        )
    }

    fn mcp_permits(&self, server: &str, tool: &str) -> bool {
        self.mcp_allowed.iter().any(|(s, a)| {
            s == server
                && match a {
                    McpAllow::All => true,
                    McpAllow::Only(names) => names.iter().any(|n| n == tool),
                }
        })
    }

    /// `call_tool`: an MCP tool by name, within the same allow-list as the offered ones.
    async fn call_tool(&mut self, input: &Value, deadline: Instant) -> ToolResult {
        let mut tool = str_arg(input, "tool")?;
        let mut server = opt_str(input, "server")?;
        if server.is_none() {
            // `tool: "server.tool"` (or the offered `server__tool`) says both.
            if let Some((s, t)) = tool.split_once('.').or_else(|| tool.split_once("__")) {
                let (s, t) = (s.to_string(), t.to_string());
                server = Some(s);
                tool = t;
            }
        }
        let Some(server) = server else {
            return Err(ToolError::new(format!(
                "missing argument `server`: the MCP server's name. Allowed here: {}",
                self.mcp_allowed_text()
            )));
        };
        let params = match input.get("params").or_else(|| input.get("arguments")) {
            None | Some(Value::Null) => json!({}),
            Some(Value::Object(o)) => Value::Object(o.clone()),
            // Models sometimes send the arguments as a JSON string.
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Err(ToolError::new(
                        "`params` must be a JSON object with the tool's arguments",
                    ))
                }
            },
            Some(_) => {
                return Err(ToolError::new(
                    "`params` must be a JSON object with the tool's arguments",
                ))
            }
        };
        if !self.mcp_permits(&server, &tool) {
            self.refused.push(format!("call_tool({server}.{tool})"));
            return Err(ToolError::new(format!(
                "refused: `{server}.{tool}` is not in this loop's `tools:` list. Allowed here: {}",
                self.mcp_allowed_text()
            )));
        }
        self.call_mcp(&server, &tool, params, deadline).await
    }

    /// One MCP tool call, bounded by the server's `timeout` and the time left in the run.
    async fn call_mcp(
        &mut self,
        server: &str,
        tool: &str,
        args: Value,
        deadline: Instant,
    ) -> ToolResult {
        let Some(cfg) = self.env.ws.settings.mcp_servers.get(server).cloned() else {
            return Err(ToolError::new(format!(
                "there is no MCP server `{server}` in loops.yaml `mcp_servers:`"
            )));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ToolError::new("no time left in this run"));
        }
        let pool = crate::mcp_client::McpPool::shared(&self.env.ws);
        // An MCP server may write files itself: what changes in the loop's folders while
        // it works counts as the run's, as for the shell tool.
        let watched = vec![
            self.env.ws.root.join("domains").join(&self.env.loop_name),
            self.env.ws.root.join("drafts").join(&self.env.loop_name),
        ];
        let before = loops_core::snapshot::Snapshot::of(watched.clone()).await;
        let r = pool
            .call(&cfg, tool, args, cfg.call_timeout.min(left))
            .await;
        let after = loops_core::snapshot::Snapshot::of(watched).await;
        self.wrote
            .extend(loops_core::snapshot::changed_between(&before, &after));
        match r {
            Ok(r) if r.is_error => Err(ToolError::new(format!(
                "{server}.{tool} reported an error: {}",
                clip(&r.text, MCP_MAX_BYTES)
            ))),
            Ok(r) if r.text.trim().is_empty() => Ok(ToolOk::text("(the tool returned nothing)")),
            Ok(r) => Ok(ToolOk::text(clip(&r.text, MCP_MAX_BYTES))),
            Err(e) => Err(ToolError::new(e.to_string())),
        }
    }

    /// The tools offered to the model.
    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.env.sandbox
    }

    /// Runs one tool call. Never panics and never fails the run: every problem is a
    /// [`ToolError`] for the model.
    pub async fn call(&mut self, name: &str, input: &Value, deadline: Instant) -> ToolResult {
        if !self.specs.iter().any(|s| s.name == name) {
            self.refused.push(name.to_string());
            let offered: Vec<&str> = self.specs.iter().map(|s| s.name.as_str()).collect();
            let why = if name == "shell" && self.env.allowed.iter().any(|t| t == "shell") {
                "the shell tool is off: loops.yaml must set `allow_shell_tool: true`".to_string()
            } else if is_known(name) {
                format!("`{name}` is not in this loop's `tools:` list")
            } else {
                format!("there is no tool called `{name}`")
            };
            return Err(ToolError::new(format!(
                "refused: {why}. The tools you can use are: {}",
                offered.join(", ")
            )));
        }
        if !input.is_object() {
            return Err(ToolError::new(format!(
                "the input of `{name}` must be a JSON object with the tool's arguments"
            )));
        }
        if let Some((raw, error)) = crate::model::invalid_arguments_of(input) {
            return Err(ToolError::new(format!(
                "the arguments of `{name}` were not valid JSON ({error}), so it was not run; call it again with a JSON object of its arguments. You wrote: {}",
                clip(raw, 200)
            )));
        }
        // MCP tools get their arguments as the model wrote them: the aliases below are
        // for our own tools' argument names.
        if let Some((server, tool)) = self.mcp_tools.get(name).cloned() {
            return self.call_mcp(&server, &tool, input.clone(), deadline).await;
        }
        if name == "call_tool" {
            return self.call_tool(input, deadline).await;
        }
        let input = &with_aliases(name, input);
        let sb = &self.env.sandbox;
        let result = match name {
            "read_file" => files::read_file(sb, input),
            "list_files" => files::list_files(sb, input),
            "search_files" => files::search_files(sb, input),
            "write_file" => files::write_file(sb, input),
            "edit_file" => files::edit_file(sb, input),
            "append_file" => files::append_file(sb, input),
            "save_draft" => self.save_draft(input),
            "create_handoff" => self.create_handoff(input).await,
            "complete_handoff" => self.complete_handoff(input),
            "tick_item" => self.tick_item(input),
            "post" | "deliver" => self.post(input, deadline).await,
            "http_get" => self.http_get(input, deadline).await,
            "shell" => self.shell(input, deadline).await,
            "finish" => self.finish(input),
            other => Err(ToolError::new(format!("there is no tool called `{other}`"))),
        };
        if let Ok(ok) = &result {
            self.wrote.extend(ok.wrote.iter().cloned());
        }
        result
    }

    fn save_draft(&mut self, input: &Value) -> ToolResult {
        let name = str_arg(input, "name")?;
        let content = str_arg(input, "content")?;
        let mut name = name.trim().trim_start_matches("./").to_string();
        let prefix = format!("drafts/{}/", self.env.loop_name);
        if let Some(rest) = name.strip_prefix(&prefix) {
            name = rest.to_string();
        }
        if name.is_empty() {
            return Err(ToolError::new(
                "`name` is empty; give a file name such as 2026-11-21.md",
            ));
        }
        if !name.contains('.') {
            name.push_str(".md");
        }
        let rel = format!("{prefix}{name}");
        files::write_file(self.sandbox(), &json!({ "path": rel, "content": content })).map(|mut ok| {
            ok.text = format!(
                "saved the draft as {rel}; hand it to the main session with create_handoff (draft: \"{rel}\")"
            );
            ok
        })
    }

    async fn create_handoff(&mut self, input: &Value) -> ToolResult {
        let n = self.new_handoff(input)?;
        self.guard_handoff(&n).await?;
        let inbox = Inbox::of(&self.env.ws);
        if let Some(d) = &n.draft {
            // The draft must be one the sandbox lets this run read.
            self.env.sandbox.resolve(d, Access::Read)?;
            inbox
                .check_draft(d)
                .map_err(|e| ToolError::new(format!("{e}; save it first with save_draft")))?;
        }
        // Refused here rather than cut later: the model can move the text into a draft.
        let size = loops_core::handoff::render(&n, chrono::Utc::now()).1.len() as u64;
        inbox.check_size("this handoff", size).map_err(|e| {
            ToolError::new(format!(
                "{e}. Nothing was written: save the long text with save_draft and hand off a short note naming it in `draft`"
            ))
        })?;
        let ws = self.env.ws.clone();
        let committer = self.env.committer.clone();
        let made = tokio::task::spawn_blocking(move || {
            loops_core::handoff::create_committed(&ws, committer.as_ref(), &n)
        })
        .await
        .ok()
        .flatten();
        match made {
            Some(id) => {
                let marker = self.env.ws.layout().handoff_run(&self.env.run_id);
                let _ = loops_core::fsutil::atomic_replace(&marker, id.as_bytes());
                self.handoffs.push(id.clone());
                Ok(ToolOk::text(format!("handed off as {id}")))
            }
            None => Err(ToolError::new(
                "the handoff could not be written (see the runner's log); try again",
            )),
        }
    }

    /// The handoff `create_handoff`'s input describes, from this run's loop.
    fn new_handoff(&self, input: &Value) -> Result<NewHandoff, ToolError> {
        let title = str_arg(input, "title")?.trim().to_string();
        if title.is_empty() {
            return Err(ToolError::new(
                "`title` is empty: say in a few words what the main session should do",
            ));
        }
        let body = opt_str(input, "body")?.unwrap_or_default();
        let draft = opt_str(input, "draft")?.map(|d| d.trim().trim_start_matches("./").to_string());
        let to = opt_str(input, "to")?.unwrap_or_else(|| "main".into());
        let priority = match opt_str(input, "priority")? {
            None => Priority::Normal,
            Some(p) => Priority::parse(&p).ok_or_else(|| {
                ToolError::new(format!(
                    "priority `{p}` is not one of urgent, high, normal, low"
                ))
            })?,
        };
        let items = match input.get("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| ToolError::new("`items` must be a list of strings"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(ToolError::new("`items` must be a list of strings")),
        };
        Ok(NewHandoff {
            from: self.env.loop_name.clone(),
            to: to.trim().to_string(),
            title,
            priority,
            run: Some(self.env.run_id.clone()),
            draft,
            body,
            items,
            ..Default::default()
        })
    }

    /// Refuses a handoff the never-share guard stops: the main session is told (with what
    /// matched taken out) and the blocked delivery is recorded.
    async fn guard_handoff(&mut self, n: &NewHandoff) -> Result<(), ToolError> {
        let to = &n.to;
        // Whoever it is for, a handoff carries text a model wrote after reading
        // strangers' text: the guard reads it before it exists anywhere.
        let whole = format!("{}\n{}\n{}", n.title, n.body, n.items.join("\n"));
        let Err(b) = self.env.guard.check(&whole) else {
            return Ok(());
        };
        let handoff = self
            .poster
            .handoff_blocked(
                &self.env.loop_name,
                &self.env.run_id,
                &format!("handoff to `{to}`"),
                &format!("handoff:{to}"),
                &b,
                &self.env.guard.redact(&whole),
            )
            .await;
        self.deliveries.push(DeliveryNote {
            channel: format!("handoff:{to}"),
            key: String::new(),
            status: "blocked".into(),
            rule: Some(b.rule.clone()),
            error: None,
            handoff,
        });
        Err(ToolError::new(format!(
            "{b}. The handoff to `{to}` was not written. Take that information out, or hand it to the main session instead"
        )))
    }

    fn claimed(&self, id: &str) -> Result<&Claimed, ToolError> {
        self.env.claimed.iter().find(|c| c.id == id).ok_or_else(|| {
            let ids: Vec<&str> = self.env.claimed.iter().map(|c| c.id.as_str()).collect();
            if ids.is_empty() {
                ToolError::new("no handoffs are open in this wake")
            } else {
                ToolError::new(format!(
                    "`{id}` is not one of this wake's handoffs: {}",
                    ids.join(", ")
                ))
            }
        })
    }

    fn complete_handoff(&mut self, input: &Value) -> ToolResult {
        let id = str_arg(input, "id")?;
        let summary = opt_str(input, "summary")?;
        let c = self.claimed(&id)?;
        let h = Inbox::of(&self.env.ws)
            .load(&c.path)
            .map_err(|e| ToolError::new(e.to_string()))?;
        let unticked: Vec<String> = h.unticked().iter().map(|i| i.text.clone()).collect();
        if !unticked.is_empty() {
            return Err(ToolError::new(format!(
                "`{id}` still has unticked items: {}. Do them and tick each with tick_item, then complete it",
                unticked.join("; ")
            )));
        }
        self.completed.retain(|(i, _)| *i != id);
        self.completed.push((id.clone(), summary));
        Ok(ToolOk::text(format!(
            "{id} will be completed when this wake ends"
        )))
    }

    fn tick_item(&mut self, input: &Value) -> ToolResult {
        let id = str_arg(input, "id")?;
        let item = match input.get("item") {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(ToolError::new(
                    "`item` must be the item's text or its number (1 = first)",
                ))
            }
        };
        let path = self.claimed(&id)?.path.clone();
        // The same tick as `loops inbox tick`: items numbered as the handoff lists them.
        let limit = Inbox::of(&self.env.ws).max_bytes();
        let t = loops_core::handoff::tick(
            &path,
            &[loops_core::handoff::ItemRef::parse(&item)],
            false,
            limit,
        )
        .map_err(|e| ToolError::new(e.to_string()))?;
        let said = match (t.ticked.first(), t.already.first()) {
            (Some(i), _) => format!("ticked: {}. {}", i.number, i.text),
            (None, Some(i)) => format!("already ticked: {}. {}", i.number, i.text),
            (None, None) => "nothing to tick".to_string(),
        };
        let left: Vec<String> = t
            .unticked
            .iter()
            .map(|i| format!("{}. {}", i.number, i.text))
            .collect();
        Ok(ToolOk::text(if left.is_empty() {
            format!("{said}; every required item is ticked")
        } else {
            format!("{said}; still to tick: {}", left.join("; "))
        }))
    }

    async fn post(&mut self, input: &Value, deadline: Instant) -> ToolResult {
        let text = str_arg(input, "text")?;
        if text.trim().is_empty() {
            return Err(ToolError::new("`text` is empty"));
        }
        let channel = match opt_str(input, "channel")? {
            Some(c) if !c.trim().is_empty() => c.trim().to_string(),
            // With one channel there is nothing to choose.
            _ if self.poster.channels().len() == 1 => self
                .poster
                .channels()
                .keys()
                .next()
                .cloned()
                .unwrap_or_default(),
            _ => {
                return Err(ToolError::new(format!(
                    "missing argument `channel`; the channels are: {}",
                    self.poster.channel_list()
                )))
            }
        };
        let thread = opt_str(input, "thread")?;
        let o = Outbound {
            channel: channel.clone(),
            text,
            thread,
            loop_name: self.env.loop_name.clone(),
            run_id: self.env.run_id.clone(),
            scope: self.env.delivery_scope.clone(),
        };
        let r = self.poster.post(&o, deadline).await;
        if let Some(n) = DeliveryNote::of(&channel, &r) {
            self.deliveries.push(n);
        }
        match r {
            Ok(p) => {
                self.delivered += 1;
                Ok(ToolOk {
                    text: p.detail,
                    wrote: p.wrote.into_iter().collect(),
                })
            }
            Err(e) => Err(ToolError::new(e.to_string())),
        }
    }

    /// Replaces, in the model's own message, what the guard would block in outbound
    /// tool inputs, so a blocked secret reaches neither the transcript nor the saved
    /// conversation. The calls themselves run on the original inputs (and are blocked).
    pub fn screen(&self, msg: &mut super::model::Message) {
        if self.env.guard.is_empty() {
            return;
        }
        for b in &mut msg.content {
            if let super::model::Block::ToolUse { name, input, .. } = b {
                if is_outbound(name) {
                    redact_strings(input, &self.env.guard);
                }
            }
        }
    }

    fn finish(&mut self, input: &Value) -> ToolResult {
        let summary = opt_str(input, "summary")?.unwrap_or_default();
        let silent = match input.get("silent") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(_) => return Err(ToolError::new("`silent` must be true or false")),
        };
        let next_check = match self.env.next_check {
            Some(bounds) => next_check_arg(input, bounds)?,
            None => None,
        };
        self.finish = Some(Finish {
            summary,
            silent,
            next_check,
        });
        Ok(ToolOk::text("finished"))
    }

    async fn http_get(&mut self, input: &Value, deadline: Instant) -> ToolResult {
        let url = str_arg(input, "url")?;
        let parsed = reqwest::Url::parse(url.trim())
            .map_err(|e| ToolError::new(format!("`{url}` is not a URL: {e}")))?;
        // The wall (loops_core::net): host and port listed, and an internal address only when
        // that address itself is listed.
        let net_err = |e: loops_core::net::NetError| ToolError::new(e.to_string());
        let wall = loops_core::net::AllowList::new(&self.env.allowed_hosts);
        let target = wall.check_url(&parsed).map_err(net_err)?;
        let addrs = loops_core::net::resolve(&target).await.map_err(net_err)?;
        let addr = wall.pick_address(&target, &addrs).map_err(net_err)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = remaining.min(Duration::from_secs(30));
        if timeout.is_zero() {
            return Err(ToolError::new("no time left in this run"));
        }
        // Pin the connection to the address just checked, so a second DNS answer cannot
        // point it somewhere else (keyed by the name as the URL spells it, which is what
        // reqwest looks up); redirects are reported, not followed. No proxy: a proxy
        // would resolve the name itself, past the check.
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(url::Host::Domain(name)) = parsed.host() {
            builder = builder.resolve(name, std::net::SocketAddr::new(addr, target.port));
        }
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .user_agent(concat!("loops/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ToolError::new(format!("cannot make an HTTP client: {e}")))?;
        let mut resp = client
            .get(parsed.clone())
            .send()
            .await
            .map_err(|e| ToolError::new(format!("GET {url} failed: {}", without_url(&e))))?;
        let status = resp.status();
        if status.is_redirection() {
            let to = resp
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("?");
            return Ok(ToolOk::text(format!(
                "HTTP {status}: redirected to {to} (not followed; fetch it if its host is allowed)"
            )));
        }
        let mut body: Vec<u8> = Vec::new();
        let mut truncated = false;
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    let room = HTTP_MAX_BYTES.saturating_sub(body.len());
                    body.extend_from_slice(&c[..c.len().min(room)]);
                    if c.len() > room {
                        truncated = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(ToolError::new(format!(
                        "reading {url} failed: {}",
                        without_url(&e)
                    )))
                }
            }
        }
        let text = String::from_utf8_lossy(&body);
        let mut out = format!("HTTP {status}\n\n{text}");
        if truncated {
            out.push_str(&format!("\n\n[… cut at {} KiB]", HTTP_MAX_BYTES / 1024));
        }
        Ok(ToolOk::text(out))
    }

    async fn shell(&mut self, input: &Value, deadline: Instant) -> ToolResult {
        let Some(spec) = self.env.shell.clone() else {
            return Err(ToolError::new("the shell tool is off"));
        };
        let command = str_arg(input, "command")?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ToolError::new("no time left in this run"));
        }
        let exec = loops_core::exec::ExecSpec {
            argv: vec!["sh".into(), "-c".into(), command],
            cwd: spec.cwd.clone(),
            env: spec.env.clone(),
            timeout: remaining,
            grace: loops_core::exec::KILL_GRACE.min(remaining),
            on_spawn: None,
            stdin: None,
        };
        // The loop's drafts too: what the command writes there is the run's, and only
        // what the tools report writing is committed with a prompt run.
        let watched = vec![
            spec.cwd.clone(),
            self.env.ws.root.join("drafts").join(&self.env.loop_name),
        ];
        let before = loops_core::snapshot::Snapshot::of(watched.clone()).await;
        let res = loops_core::exec::run(&exec, None, None).await;
        let after = loops_core::snapshot::Snapshot::of(watched).await;
        let wrote = loops_core::snapshot::changed_between(&before, &after);
        let mut out = match (res.exit_code, res.failure_reason(remaining)) {
            (Some(0), _) => "exit 0".to_string(),
            (_, Some(why)) => why,
            (c, None) => format!("exit {c:?}"),
        };
        if !res.stdout_tail.is_empty() {
            out.push_str(&format!(
                "\n\nstdout:\n{}",
                tail(&res.stdout_tail, 16 * 1024)
            ));
        }
        if !res.stderr_tail.is_empty() {
            out.push_str(&format!(
                "\n\nstderr:\n{}",
                tail(&res.stderr_tail, 8 * 1024)
            ));
        }
        if res.success() {
            Ok(ToolOk { text: out, wrote })
        } else {
            self.wrote.extend(wrote);
            Err(ToolError::new(out))
        }
    }
}

/// The name an MCP tool is offered as, `server__tool`, taken into `taken`: two tools
/// that sanitise to one name must stay two tools, so a later one gets `_2`, `_3`, ….
fn unique_tool_name(server: &str, tool: &str, taken: &mut BTreeSet<String>) -> String {
    let base = crate::mcp_client::tool_spec_name(server, tool);
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        let suffix = format!("_{n}");
        let keep = base.len().min(64 - suffix.len());
        name = format!("{}{suffix}", &base[..keep]);
        n += 1;
    }
    taken.insert(name.clone());
    name
}

/// Argument names models commonly use for the same thing (other agents' tool sets spell
/// them so): accepted as the documented name when that one is absent, so a model trained
/// on another harness is not refused over a spelling.
const ALIASES: &[(&str, &str, &str)] = &[
    ("*", "file_path", "path"),
    ("*", "filename", "path"),
    ("*", "file", "path"),
    ("edit_file", "old_string", "old_text"),
    ("edit_file", "new_string", "new_text"),
    ("edit_file", "old", "old_text"),
    ("edit_file", "new", "new_text"),
    ("write_file", "text", "content"),
    ("append_file", "text", "content"),
    ("save_draft", "path", "name"),
    ("save_draft", "text", "content"),
    ("read_file", "from_line", "start_line"),
    ("read_file", "to_line", "end_line"),
    ("search_files", "regex", "pattern"),
    ("search_files", "query", "pattern"),
    ("create_handoff", "checklist", "items"),
    ("create_handoff", "description", "body"),
    ("complete_handoff", "handoff_id", "id"),
    ("tick_item", "handoff_id", "id"),
    ("deliver", "message", "text"),
    ("post", "message", "text"),
    ("post", "content", "text"),
    ("post", "thread_id", "thread"),
    ("post", "thread_ts", "thread"),
    ("finish", "reason", "summary"),
];

/// Tools whose text leaves the run: posts, and handoffs to anyone (the guard reads both).
fn is_outbound(name: &str) -> bool {
    matches!(name, "post" | "deliver" | "create_handoff")
}

fn redact_strings(v: &mut Value, guard: &Guard) {
    match v {
        Value::String(s) if guard.check(s).is_err() => *s = guard.redact(s),
        Value::Array(a) => a.iter_mut().for_each(|x| redact_strings(x, guard)),
        Value::Object(o) => o.values_mut().for_each(|x| redact_strings(x, guard)),
        _ => {}
    }
}

fn with_aliases(tool: &str, input: &Value) -> Value {
    let Some(obj) = input.as_object() else {
        return input.clone();
    };
    let mut out = obj.clone();
    for (t, alias, name) in ALIASES {
        if (*t == "*" || *t == tool) && !out.contains_key(*name) {
            if let Some(v) = out.get(*alias).cloned() {
                out.insert(name.to_string(), v);
            }
        }
    }
    Value::Object(out)
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "the URL");
    }
    s
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = s.len() - max;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn str_arg(input: &Value, key: &str) -> Result<String, ToolError> {
    match input.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None => Err(ToolError::new(format!("missing argument `{key}`"))),
        Some(_) => Err(ToolError::new(format!("`{key}` must be a string"))),
    }
}

/// Adds `next_check` to `finish` for an adaptive loop, saying its bounds.
fn offer_next_check(s: &mut ToolSpec, (min, max): (std::time::Duration, std::time::Duration)) {
    let (min, max) = (
        loops_core::duration::format_duration(min),
        loops_core::duration::format_duration(max),
    );
    s.description = format!(
        "{} next_check: when this loop should look again, e.g. \"45m\" (between {min} and {max}; leave it out for the usual schedule).",
        s.description
    );
    if let Some(props) = s
        .input_schema
        .get_mut("properties")
        .and_then(Value::as_object_mut)
    {
        props.insert(
            "next_check".into(),
            json!({"type": "string", "description": format!("a duration from {min} to {max}, e.g. 45m")}),
        );
    }
}

/// `finish`'s `next_check`, held to `(min, max)`; an unreadable one is the model's to fix.
fn next_check_arg(
    input: &Value,
    (min, max): (std::time::Duration, std::time::Duration),
) -> Result<Option<std::time::Duration>, ToolError> {
    let Some(text) = opt_str(input, "next_check")? else {
        return Ok(None);
    };
    match loops_core::duration::parse_duration(text.trim()) {
        Ok(d) => Ok(Some(d.clamp(min, max))),
        Err(e) => Err(ToolError::new(format!(
            "`next_check` {text:?} is not a duration ({e}): write e.g. \"45m\" or \"2h\", between {} and {}, and call finish again",
            loops_core::duration::format_duration(min),
            loops_core::duration::format_duration(max)
        ))),
    }
}

fn opt_str(input: &Value, key: &str) -> Result<Option<String>, ToolError> {
    match input.get(key) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(ToolError::new(format!("`{key}` must be a string"))),
    }
}

fn spec(name: &str, description: &str, schema: Value) -> ToolSpec {
    ToolSpec {
        name: name.to_string(),
        description: description.to_string(),
        input_schema: schema,
    }
}

/// Every tool's spec, in [`KNOWN`] order.
pub fn all_specs() -> Vec<ToolSpec> {
    let mut out = files::specs();
    out.extend([
        spec(
            "save_draft",
            "Save a draft for the main session in drafts/<your loop>/NAME. Then hand it off with create_handoff.",
            json!({"type": "object", "properties": {
                "name": {"type": "string", "description": "file name, e.g. 2026-11-21.md"},
                "content": {"type": "string"}
            }, "required": ["name", "content"]}),
        ),
        spec(
            "create_handoff",
            "Hand work to the main session: a task file in inbox/ (the only way to write there). Give a title, what to do (body), the draft if any, and checklist items that must all be done. With to: person it goes to the person instead: the way to propose a change no model may make itself (loops.yaml, a loop's config.yaml, a script a loop runs); say exactly what to change and why.",
            json!({"type": "object", "properties": {
                "title": {"type": "string"},
                "body": {"type": "string"},
                "draft": {"type": "string", "description": "workspace path of a draft, e.g. drafts/my-loop/x.md"},
                "items": {"type": "array", "items": {"type": "string"}},
                "priority": {"type": "string", "enum": ["urgent", "high", "normal", "low"]},
                "to": {"type": "string", "description": "main (default), person (a proposal for the person to apply), or another recipient"}
            }, "required": ["title"]}),
        ),
        spec(
            "complete_handoff",
            "Mark one of this wake's handoffs done (every checklist item must be ticked first).",
            json!({"type": "object", "properties": {
                "id": {"type": "string"},
                "summary": {"type": "string", "description": "what was done, one line"}
            }, "required": ["id"]}),
        ),
        spec(
            "tick_item",
            "Tick a checklist item of one of this wake's handoffs, by its text or its number (1 = first).",
            json!({"type": "object", "properties": {
                "id": {"type": "string"},
                "item": {"type": ["string", "integer"]}
            }, "required": ["id", "item"]}),
        ),
        spec(
            "post",
            "Post a message to a delivery channel (loops.yaml `channels:`). A message is posted once per run however often you call this; silent tokens are never posted; a text that breaks the never-share rules is not sent.",
            json!({"type": "object", "properties": {
                "channel": {"type": "string", "description": "a channel name"},
                "text": {"type": "string"},
                "thread": {"type": "string", "description": "reply in this thread (Slack thread_ts, Discord thread id)"}
            }, "required": ["channel", "text"]}),
        ),
        spec(
            "deliver",
            "Deliver a message to the user through a delivery channel (the same as `post`).",
            json!({"type": "object", "properties": {
                "channel": {"type": "string", "description": "a channel name"},
                "text": {"type": "string"},
                "thread": {"type": "string"}
            }, "required": ["channel", "text"]}),
        ),
        spec(
            "http_get",
            "Fetch a URL (GET) from a host and port listed in this loop's allowed_hosts (an entry without a port allows only 80 for http and 443 for https). Redirects are reported, not followed. The body is cut at 256 KiB.",
            json!({"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}),
        ),
        spec(
            "shell",
            "Run a shell command in this loop's folder; returns the exit status and output tails.",
            json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}),
        ),
        spec(
            "finish",
            "End this run. silent: true when there was nothing to do (nothing is committed or delivered).",
            json!({"type": "object", "properties": {
                "summary": {"type": "string", "description": "what this run did, one line"},
                "silent": {"type": "boolean"}
            }, "required": ["summary", "silent"]}),
        ),
    ]);
    out
}

#[cfg(test)]
mod tests {
    use loops_core::text::is_silent_token;

    #[test]
    fn silent_tokens_are_exact() {
        assert!(is_silent_token(" HEARTBEAT_OK\n"));
        assert!(is_silent_token("SILENT"));
        assert!(!is_silent_token("SILENT, but here is news"));
        assert!(!is_silent_token("silent"));
    }
}
