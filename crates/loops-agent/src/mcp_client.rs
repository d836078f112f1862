//! MCP clients: the servers loops.yaml `mcp_servers:` names, whose tools prompt loops may
//! offer the model (the other direction from [`crate::mcp`], where loops is the server).
//!
//! ```yaml
//! mcp_servers:
//!   everything: { command: ["npx", "-y", "@modelcontextprotocol/server-everything"] }
//!   files:      { command: mcp-server-filesystem, args: [notes], timeout: 20s }
//!   github:     { url: "https://api.githubcopilot.com/mcp/", headers: { Authorization: "Bearer ${GITHUB_TOKEN}" } }
//! ```
//!
//! - A server is started on first use and kept for the life of the process ([`McpPool`]),
//!   so a daemon pays the start-up once. One idle for a while (or whose last call timed
//!   out) is pinged before use; one that died or stopped answering is started again,
//!   with a back-off.
//! - A stdio server runs in its own process group with an allow-listed environment (API
//!   keys live in the runner's environment; only the variables its `env:` names go in),
//!   its stderr appended to `.loops/mcp/<server>.log`. It dies with the runner.
//! - `.loops/mcp/<server>.json` says how each server is doing (pid, restarts, last error).

use chrono::{DateTime, Utc};
use loops_core::duration::format_duration;
use loops_core::layout::Layout;
use loops_core::providers::valid_env_name;
use loops_core::workspace::Workspace;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ClientRequest,
    Implementation, PingRequest,
};
use rmcp::service::{MaybeSendFuture, NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A server unused for longer than this is pinged before it is used again: a daemon's
/// server may have hung (or lost its connection) while nobody was looking.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Starts allowed per server per minute; past that a server that keeps dying is left
/// down for the rest of the minute instead of being restarted in a tight loop.
const MAX_STARTS_PER_MINUTE: usize = 5;
const START_WINDOW: Duration = Duration::from_secs(60);
/// Each step of stopping a stdio server (stdin closed, then SIGTERM, then SIGKILL).
const STOP_STEP: Duration = Duration::from_secs(1);
/// How much of a server's stderr an error quotes.
const STDERR_TAIL: usize = 1500;
/// Besides [`loops_core::exec::ENV_ALLOW_LIST`]: locale and temp dir, which interpreters
/// (node, python) read and which hold no secrets.
const EXTRA_ENV: &[&str] = &["LC_ALL", "LC_CTYPE", "TMPDIR"];

pub use loops_core::mcp_config::{
    McpServerConfig, McpTransport, DEFAULT_CALL_TIMEOUT, DEFAULT_STARTUP_TIMEOUT,
};

// ---------------------------------------------------------------------------------------
// Errors

/// What went wrong talking to an MCP server. The messages go to the model and to run
/// records, so each says what happened and what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum McpClientError {
    #[error("mcp server `{server}` could not start: {reason}; check mcp_servers.{server}.command in loops.yaml")]
    Spawn { server: String, reason: String },
    #[error("mcp server `{server}` exited at start ({status}){tail}; check mcp_servers.{server}.command in loops.yaml (its stderr is in .loops/mcp/{server}.log)")]
    ExitedAtStart {
        server: String,
        status: String,
        tail: String,
    },
    #[error("mcp server `{server}` did not finish starting within {after} (mcp_servers.{server}.startup_timeout){tail}; it was stopped; see .loops/mcp/{server}.log")]
    StartTimeout {
        server: String,
        after: String,
        tail: String,
    },
    #[error("mcp server `{server}` started but the MCP handshake failed: {reason}{tail}; is mcp_servers.{server} an MCP server?")]
    Handshake {
        server: String,
        reason: String,
        tail: String,
    },
    #[error("cannot connect to mcp server `{server}` at {url}: {reason}; check mcp_servers.{server}.url and that the server is up")]
    Connect {
        server: String,
        url: String,
        reason: String,
    },
    #[error("environment variable `{var}` is not set (mcp_servers.{server}.{key} needs it); export it where loops runs")]
    MissingEnv {
        server: String,
        var: String,
        key: String,
    },
    #[error("mcp server `{server}` was started {starts} times in the last minute and is left down for {retry_in} (last error: {last})")]
    BackingOff {
        server: String,
        starts: usize,
        retry_in: String,
        last: String,
    },
    #[error("timed out after {after} calling {server}.{tool} ({limit}); the call was cancelled")]
    Timeout {
        server: String,
        tool: String,
        after: String,
        limit: String,
    },
    #[error("mcp server `{server}` went away during {server}.{tool} ({reason}); it is restarted on next use, so the call can be tried again")]
    Died {
        server: String,
        tool: String,
        reason: String,
    },
    #[error("{server}.{tool} failed: {message}")]
    Tool {
        server: String,
        tool: String,
        message: String,
    },
    #[error("mcp server `{server}` did not list its tools: {reason}")]
    List { server: String, reason: String },
    #[error("the arguments of {server}.{tool} must be a JSON object, not {got}")]
    BadArguments {
        server: String,
        tool: String,
        got: String,
    },
}

// ---------------------------------------------------------------------------------------
// The pool

/// A tool one server offers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemoteTool {
    pub server: String,
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// What one call gave back.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    /// The text parts joined; other content summarised, e.g. `[image/png, 1234 bytes]`.
    pub text: String,
    /// The server said the tool failed (`isError`).
    pub is_error: bool,
}

/// The MCP servers of one workspace in this process, started on first use.
pub struct McpPool {
    root: PathBuf,
    slots: std::sync::Mutex<HashMap<String, Arc<Slot>>>,
}

struct Slot {
    name: String,
    // A tokio mutex: starting a server is awaited while holding it, so two runs that
    // want it at once start it once.
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The configuration the current (or last) server was started with.
    cfg: Option<McpServerConfig>,
    conn: Option<Arc<Conn>>,
    tools: Option<Vec<RemoteTool>>,
    restarts: u32,
    /// When the recent starts were, for the back-off.
    starts: VecDeque<Instant>,
    last_error: Option<String>,
    /// The last server ended without being asked to (so the next start is a restart).
    died: bool,
}

struct Conn {
    service: RunningService<RoleClient, Handler>,
    /// A stdio server's process (a std mutex: only `try_wait` and `kill` happen under it).
    child: Option<std::sync::Mutex<tokio::process::Child>>,
    pid: Option<u32>,
    started: DateTime<Utc>,
    tools_changed: Arc<AtomicBool>,
    broken: AtomicBool,
    /// A call timed out: the server may be hung rather than slow, so ping it first
    /// next time (a hung server would otherwise cost every call its whole timeout).
    suspect: AtomicBool,
    last_used: std::sync::Mutex<Instant>,
}

impl Conn {
    fn new(
        service: RunningService<RoleClient, Handler>,
        child: Option<tokio::process::Child>,
        tools_changed: Arc<AtomicBool>,
    ) -> Conn {
        Conn {
            service,
            pid: child.as_ref().and_then(|c| c.id()),
            child: child.map(std::sync::Mutex::new),
            started: Utc::now(),
            tools_changed,
            broken: AtomicBool::new(false),
            suspect: AtomicBool::new(false),
            last_used: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    fn idle(&self) -> Duration {
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// How the process ended, if it has.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_ref()?;
        let mut c = child.lock().ok()?;
        c.try_wait().ok().flatten()
    }

    /// `None` while the server looks usable, else why it is not.
    fn gone(&self) -> Option<String> {
        if let Some(st) = self.exited() {
            return Some(format!("the server exited ({})", describe_exit(st)));
        }
        if self.broken.load(Ordering::Relaxed) {
            return Some("the connection failed".into());
        }
        if self.service.peer().is_transport_closed() || self.service.is_closed() {
            return Some("the server closed the connection".into());
        }
        None
    }
}

/// Our side of the MCP session: the client's name, and a flag for `tools/list_changed`.
#[derive(Clone)]
struct Handler {
    info: ClientConfig,
    tools_changed: Arc<AtomicBool>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
        self.tools_changed.store(true, Ordering::Relaxed);
        std::future::ready(())
    }
}

fn registry() -> &'static std::sync::Mutex<HashMap<PathBuf, Arc<McpPool>>> {
    static POOLS: OnceLock<std::sync::Mutex<HashMap<PathBuf, Arc<McpPool>>>> = OnceLock::new();
    POOLS.get_or_init(Default::default)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing under these locks can be left half-done by a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl McpPool {
    /// The pool of `ws` in this process (runs share servers without being handed them).
    pub fn shared(ws: &Workspace) -> Arc<McpPool> {
        lock(registry())
            .entry(ws.root.clone())
            .or_insert_with(|| {
                Arc::new(McpPool {
                    root: ws.root.clone(),
                    slots: Default::default(),
                })
            })
            .clone()
    }

    /// Stops every server of every workspace this process started.
    pub async fn shutdown_all() {
        let pools: Vec<Arc<McpPool>> = lock(registry()).values().cloned().collect();
        for p in pools {
            p.shutdown().await;
        }
    }

    /// Stops every server of this pool (in parallel); a later use starts them again.
    pub async fn shutdown(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        let mut set = tokio::task::JoinSet::new();
        for slot in slots {
            let dir = self.dir();
            set.spawn(async move {
                let mut st = slot.state.lock().await;
                if let Some(conn) = st.conn.take() {
                    log_line(&dir, &slot.name, "stopping (loops is shutting down)");
                    stop(&conn).await;
                    st.tools = None;
                    write_status(&dir, &slot.name, &st, "stopped", Some(&conn));
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// `.loops/mcp/`: the servers' status files and logs.
    pub fn dir(&self) -> PathBuf {
        Layout::of(&self.root).mcp_dir()
    }

    fn slot(&self, name: &str) -> Arc<Slot> {
        lock(&self.slots)
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    name: name.to_string(),
                    state: Default::default(),
                })
            })
            .clone()
    }

    /// The tools `cfg`'s server offers, starting it if need be.
    pub async fn list_tools(
        &self,
        cfg: &McpServerConfig,
    ) -> Result<Vec<RemoteTool>, McpClientError> {
        let slot = self.slot(&cfg.name);
        let mut st = slot.state.lock().await;
        let conn = self.ready(&mut st, cfg).await?;
        if conn.tools_changed.swap(false, Ordering::Relaxed) {
            st.tools = None;
        }
        if let Some(t) = &st.tools {
            return Ok(t.clone());
        }
        let listed = tokio::time::timeout(cfg.call_timeout, conn.service.list_all_tools()).await;
        conn.touch();
        let tools = match listed {
            Ok(Ok(tools)) => tools,
            Ok(Err(e)) => {
                let reason = e.to_string();
                if is_transport_error(&e) {
                    self.lost(&mut st, &conn, &reason).await;
                }
                return Err(McpClientError::List {
                    server: cfg.name.clone(),
                    reason,
                });
            }
            Err(_) => {
                return Err(McpClientError::List {
                    server: cfg.name.clone(),
                    reason: format!(
                        "no answer within {} (mcp_servers.{}.timeout)",
                        format_duration(cfg.call_timeout),
                        cfg.name
                    ),
                })
            }
        };
        let tools: Vec<RemoteTool> = tools
            .into_iter()
            .map(|t| RemoteTool {
                server: cfg.name.clone(),
                name: t.name.to_string(),
                description: t
                    .description
                    .map(|d| d.to_string())
                    .or(t.title)
                    .unwrap_or_default(),
                input_schema: Value::Object((*t.input_schema).clone()),
            })
            .collect();
        st.tools = Some(tools.clone());
        write_status(&self.dir(), &cfg.name, &st, "running", Some(&conn));
        Ok(tools)
    }

    /// Calls `tool` on `cfg`'s server, giving up (and cancelling the call) after `timeout`.
    pub async fn call(
        &self,
        cfg: &McpServerConfig,
        tool: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<CallResult, McpClientError> {
        let arguments = match args {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => {
                return Err(McpClientError::BadArguments {
                    server: cfg.name.clone(),
                    tool: tool.to_string(),
                    got: loops_core::text::clip(&other.to_string(), 80),
                })
            }
        };
        let slot = self.slot(&cfg.name);
        let conn = {
            let mut st = slot.state.lock().await;
            self.ready(&mut st, cfg).await?
        };
        let mut params = CallToolRequestParams::new(tool.to_string());
        if let Some(a) = arguments {
            params = params.with_arguments(a);
        }
        // Dropping the call on timeout sends `notifications/cancelled` for it.
        let res = tokio::time::timeout(timeout, conn.service.call_tool(params)).await;
        conn.touch();
        match res {
            Ok(Ok(r)) => Ok(summarise(&r)),
            Err(_) => {
                conn.suspect.store(true, Ordering::Relaxed);
                Err(McpClientError::Timeout {
                    server: cfg.name.clone(),
                    tool: tool.to_string(),
                    after: format_duration(timeout),
                    limit: if timeout < cfg.call_timeout {
                        "the time left in this run".to_string()
                    } else {
                        format!("mcp_servers.{}.timeout", cfg.name)
                    },
                })
            }
            Ok(Err(ServiceError::McpError(e))) => Err(McpClientError::Tool {
                server: cfg.name.clone(),
                tool: tool.to_string(),
                message: e.message.to_string(),
            }),
            Ok(Err(e)) if is_transport_error(&e) => {
                // Give a dying process a moment, so the reason can say how it ended.
                for _ in 0..10 {
                    if conn.exited().is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let reason = conn.gone().unwrap_or_else(|| e.to_string());
                let mut st = slot.state.lock().await;
                self.lost(&mut st, &conn, &reason).await;
                Err(McpClientError::Died {
                    server: cfg.name.clone(),
                    tool: tool.to_string(),
                    reason,
                })
            }
            Ok(Err(e)) => Err(McpClientError::Tool {
                server: cfg.name.clone(),
                tool: tool.to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// A server that is up, healthy and started with `cfg`: the running one, or a new one.
    async fn ready(
        &self,
        st: &mut SlotState,
        cfg: &McpServerConfig,
    ) -> Result<Arc<Conn>, McpClientError> {
        let dir = self.dir();
        if st.cfg.as_ref().is_some_and(|c| c != cfg) {
            if let Some(conn) = st.conn.take() {
                log_line(
                    &dir,
                    &cfg.name,
                    "loops.yaml changed: restarting with the new settings",
                );
                stop(&conn).await;
            }
            // New settings deserve a fresh start, not a back-off for the old ones' deaths.
            st.starts.clear();
            st.died = false;
            st.tools = None;
        }
        if let Some(conn) = st.conn.clone() {
            if let Some(why) = conn.gone() {
                self.lost(st, &conn, &why).await;
            } else if conn.idle() > IDLE_BEFORE_PING || conn.suspect.swap(false, Ordering::Relaxed)
            {
                let ping = conn
                    .service
                    .peer()
                    .send_request(ClientRequest::PingRequest(PingRequest::default()));
                let ok = matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)));
                if !ok {
                    let why = format!(
                        "it did not answer a ping within {} (health check)",
                        format_duration(PING_TIMEOUT)
                    );
                    self.lost(st, &conn, &why).await;
                }
            }
        }
        let conn = match st.conn.clone() {
            Some(c) => c,
            None => self.start(st, cfg).await?,
        };
        conn.touch();
        Ok(conn)
    }

    /// Forgets a connection that failed (if it is still the current one) and makes sure
    /// nothing of it is left running; the next use starts the server again.
    async fn lost(&self, st: &mut SlotState, conn: &Arc<Conn>, why: &str) {
        if !st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            return;
        }
        st.conn = None;
        st.tools = None;
        st.died = true;
        let name = st.cfg.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        tracing::warn!(server = %name, "mcp server lost: {why}");
        log_line(&self.dir(), &name, &format!("lost: {why}"));
        st.last_error = Some(why.to_string());
        stop(conn).await;
        write_status(&self.dir(), &name, st, "dead", Some(conn));
    }

    async fn start(
        &self,
        st: &mut SlotState,
        cfg: &McpServerConfig,
    ) -> Result<Arc<Conn>, McpClientError> {
        let now = Instant::now();
        while st
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) > START_WINDOW)
        {
            st.starts.pop_front();
        }
        if st.starts.len() >= MAX_STARTS_PER_MINUTE {
            let oldest = st.starts.front().copied().unwrap_or(now);
            let wait = START_WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(McpClientError::BackingOff {
                server: cfg.name.clone(),
                starts: st.starts.len(),
                retry_in: format_duration(wait.max(Duration::from_secs(1))),
                last: st.last_error.clone().unwrap_or_else(|| "none".into()),
            });
        }
        st.starts.push_back(now);
        st.cfg = Some(cfg.clone());
        let dir = self.dir();
        write_status(&dir, &cfg.name, st, "starting", None);
        let started = match &cfg.transport {
            McpTransport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                self.start_stdio(cfg, command, args, env, cwd.as_deref())
                    .await
            }
            McpTransport::Http { url, headers } => start_http(cfg, url, headers).await,
        };
        match started {
            Ok(conn) => {
                let conn = Arc::new(conn);
                if st.died {
                    st.restarts += 1;
                }
                st.died = false;
                st.tools = None;
                st.conn = Some(conn.clone());
                log_line(
                    &dir,
                    &cfg.name,
                    &match conn.pid {
                        Some(p) => format!("running (pid {p})"),
                        None => "connected".to_string(),
                    },
                );
                write_status(&dir, &cfg.name, st, "running", Some(&conn));
                Ok(conn)
            }
            Err(e) => {
                tracing::warn!(server = %cfg.name, "{e}");
                log_line(&dir, &cfg.name, &format!("failed to start: {e}"));
                st.last_error = Some(e.to_string());
                write_status(&dir, &cfg.name, st, "failed", None);
                Err(e)
            }
        }
    }

    async fn start_stdio(
        &self,
        cfg: &McpServerConfig,
        command: &str,
        args: &[String],
        env_names: &[String],
        cwd: Option<&Path>,
    ) -> Result<Conn, McpClientError> {
        let server = &cfg.name;
        let env = server_env(server, env_names)?;
        let dir = self.dir();
        let cwd = match cwd {
            Some(c) => self.root.join(c),
            None => self.root.clone(),
        };
        let argv: Vec<&str> = std::iter::once(command)
            .chain(args.iter().map(String::as_str))
            .collect();
        log_line(
            &dir,
            server,
            &format!("starting `{}` in {}", argv.join(" "), cwd.display()),
        );
        let log_path = dir.join(format!("{server}.log"));
        let spawn_err = |reason: String| McpClientError::Spawn {
            server: server.clone(),
            reason,
        };
        let log = loops_core::fsutil::open_append(&log_path)
            .map_err(|e| spawn_err(format!("cannot open {}: {e}", log_path.display())))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut child = server_command(command, args, &cwd, &env)
            .spawn()
            .map_err(|e| spawn_err(not_started(command, &cwd, &e)))?;
        let pid = child.id();
        let pump = child
            .stderr
            .take()
            .map(|e| tokio::spawn(pump_stderr(e, log)));
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            kill_group(pid, loops_core::sys::Signal::KILL);
            return Err(spawn_err(
                "its stdin and stdout could not be connected".into(),
            ));
        };
        let (handler, flag) = handler();
        let handshake =
            tokio::time::timeout(cfg.startup_timeout, handler.serve((stdout, stdin))).await;
        let starting = Starting {
            server: server.clone(),
            child,
            pid,
            pump,
            log_path,
            log_start,
        };
        match handshake {
            Ok(Ok(service)) => Ok(Conn::new(service, Some(starting.child), flag)),
            Ok(Err(e)) => Err(starting.refused(e.to_string()).await),
            Err(_) => Err(starting.timed_out(cfg.startup_timeout).await),
        }
    }
}

/// The environment of a stdio server: the runner's allow-listed variables, the extra
/// ones servers commonly need, and the variables its `env` names (each must be set).
fn server_env(server: &str, env_names: &[String]) -> Result<Vec<(String, String)>, McpClientError> {
    let mut env = loops_core::exec::base_env();
    env.extend(
        EXTRA_ENV
            .iter()
            .filter_map(|k| loops_core::secrets::var(k).ok().map(|v| (k.to_string(), v))),
    );
    for var in env_names {
        match loops_core::secrets::var(var) {
            Ok(v) => {
                env.retain(|(k, _)| k != var);
                env.push((var.clone(), v));
            }
            Err(_) => {
                return Err(McpClientError::MissingEnv {
                    server: server.to_string(),
                    var: var.clone(),
                    key: "env".into(),
                })
            }
        }
    }
    Ok(env)
}

/// The command that starts a stdio server: piped, in a process group of its own, with
/// only `env`.
fn server_command(
    command: &str,
    args: &[String],
    cwd: &Path,
    env: &[(String, String)],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Through loops, not straight to the file: a server that prints its
        // environment must not write its token into the log (src/secrets.rs).
        .stderr(Stdio::piped())
        // Its own group: a terminal's Ctrl-C is ours to handle, and stopping it
        // stops whatever it started (npx, a wrapper script) too.
        .process_group(0)
        .kill_on_drop(true);
    // If the runner dies without stopping it (SIGKILL, a crash), so does the
    // server, instead of living on as an orphan. The signal follows the thread
    // that spawned it: a runtime worker (or the main thread), which lives as long
    // as the process (nothing here spawns from tokio's short-lived blocking pool).
    #[cfg(target_os = "linux")]
    loops_core::sys::kill_child_with_parent(cmd.as_std_mut());
    cmd
}

/// Why a stdio server's command could not be started, with what to check.
fn not_started(command: &str, cwd: &Path, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "`{command}` was not found (relative paths are resolved in {}; programs are looked up in PATH)",
            cwd.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("`{command}`: permission denied (is it executable? chmod +x)")
        }
        _ => format!("`{command}`: {e}"),
    }
}

/// A stdio server spawned but not yet through its handshake.
struct Starting {
    server: String,
    child: tokio::process::Child,
    pid: Option<u32>,
    /// The task copying its stderr into its log.
    pump: Option<tokio::task::JoinHandle<()>>,
    log_path: PathBuf,
    /// Where this start's part of the log begins.
    log_start: u64,
}

impl Starting {
    /// The handshake failed: stops the server and says how it ended, with the last of
    /// what it printed.
    async fn refused(mut self, reason: String) -> McpClientError {
        // It may still be on its way out: a moment lets the error say how it ended.
        let mut status = None;
        for _ in 0..20 {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        kill_group(self.pid, loops_core::sys::Signal::KILL);
        let _ = self.child.start_kill();
        let tail = pumped_tail(self.pump, &self.log_path, self.log_start).await;
        match status {
            Some(s) => McpClientError::ExitedAtStart {
                server: self.server,
                status: describe_exit(s),
                tail,
            },
            None => McpClientError::Handshake {
                server: self.server,
                reason,
                tail,
            },
        }
    }

    /// No handshake within `after`: stops the server.
    async fn timed_out(mut self, after: Duration) -> McpClientError {
        kill_group(self.pid, loops_core::sys::Signal::KILL);
        let _ = self.child.start_kill();
        McpClientError::StartTimeout {
            server: self.server,
            after: format_duration(after),
            tail: pumped_tail(self.pump, &self.log_path, self.log_start).await,
        }
    }
}

fn handler() -> (Handler, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(false));
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("loops", env!("CARGO_PKG_VERSION")),
    );
    (
        Handler {
            info,
            tools_changed: flag.clone(),
        },
        flag,
    )
}

/// A header value from its spec: an environment variable's value, or a template with
/// `${VAR}` parts filled in.
fn header_value(server: &str, header: &str, spec: &str) -> Result<String, McpClientError> {
    let missing = |var: &str| McpClientError::MissingEnv {
        server: server.to_string(),
        var: var.to_string(),
        key: format!("headers.{header}"),
    };
    let read = |var: &str| {
        loops_core::secrets::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| missing(var))
    };
    if valid_env_name(spec) {
        return read(spec);
    }
    let mut out = spec.to_string();
    for var in loops_core::mcp_config::header_template_vars(spec).unwrap_or_default() {
        out = out.replace(&format!("${{{var}}}"), &read(&var)?);
    }
    Ok(out)
}

async fn start_http(
    cfg: &McpServerConfig,
    url: &str,
    headers: &BTreeMap<String, String>,
) -> Result<Conn, McpClientError> {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    let server = &cfg.name;
    let connect_err = |reason: String| McpClientError::Connect {
        server: server.clone(),
        url: url.to_string(),
        reason,
    };
    let mut custom = HashMap::new();
    for (h, spec) in headers {
        let value = header_value(server, h, spec)?;
        let name = reqwest::header::HeaderName::from_bytes(h.as_bytes())
            .map_err(|e| connect_err(format!("header `{h}`: {e}")))?;
        // The error would quote the value, which is likely a secret.
        let value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
            connect_err(format!(
                "header `{h}`: its value (from the environment) is not a valid header value"
            ))
        })?;
        custom.insert(name, value);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(cfg.startup_timeout.min(Duration::from_secs(30)))
        .user_agent(concat!("loops/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| connect_err(format!("cannot make an HTTP client: {e}")))?;
    let transport = StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(url.to_string()).custom_headers(custom),
    );
    let (handler, flag) = handler();
    match tokio::time::timeout(cfg.startup_timeout, handler.serve(transport)).await {
        Ok(Ok(service)) => Ok(Conn::new(service, None, flag)),
        Ok(Err(e)) => Err(connect_err(e.to_string())),
        Err(_) => Err(McpClientError::StartTimeout {
            server: server.clone(),
            after: format_duration(cfg.startup_timeout),
            tail: String::new(),
        }),
    }
}

fn is_transport_error(e: &ServiceError) -> bool {
    matches!(
        e,
        ServiceError::TransportClosed
            | ServiceError::TransportSend(_)
            | ServiceError::Cancelled { .. }
    )
}

/// Ends a connection: closes the session (a stdio server's stdin closes, which is the
/// polite way to ask it to exit), then SIGTERM and SIGKILL to its process group.
async fn stop(conn: &Conn) {
    conn.broken.store(true, Ordering::Relaxed);
    conn.service.cancellation_token().cancel();
    let Some(pid) = conn.pid else { return };
    for sig in [None, Some(loops_core::sys::Signal::TERM)] {
        if let Some(s) = sig {
            kill_group(Some(pid), s);
        }
        let until = Instant::now() + STOP_STEP;
        while conn.exited().is_none() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if conn.exited().is_some() {
            break;
        }
    }
    // Whatever it started in its group goes too, even when it exited itself.
    kill_group(Some(pid), loops_core::sys::Signal::KILL);
    if let Some(child) = &conn.child {
        if let Ok(mut c) = child.lock() {
            let _ = c.start_kill();
            let _ = c.try_wait();
        }
    }
}

fn kill_group(pid: Option<u32>, sig: loops_core::sys::Signal) {
    if let Some(p) = pid.filter(|p| *p > 1) {
        // The process group of a child we started (its pid is the group id: it was
        // spawned with process_group(0)).
        loops_core::sys::signal_group(p, sig);
    }
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited".into(),
    }
}

/// What the server wrote to its log since `from`, for an error message.
fn stderr_tail(log: &Path, from: u64) -> String {
    let Ok(mut f) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(STDERR_TAIL as u64 * 4));
    if f.seek(std::io::SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("[loops "))
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let joined = lines.join("\n");
    let mut i = joined.len().saturating_sub(STDERR_TAIL);
    while !joined.is_char_boundary(i) {
        i += 1;
    }
    format!(": {}", joined[i..].trim())
}

/// Appends a line of our own to the server's log, between its stderr lines.
/// Copies a stdio server's stderr into its log, a whole line at a time so that a secret
/// it prints is redacted whole. A line longer than [`PUMP_LINE`] is cut.
async fn pump_stderr(mut from: tokio::process::ChildStderr, mut log: std::fs::File) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let cut = match pending.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if pending.len() >= PUMP_LINE => pending.len(),
            None => continue,
        };
        let rest = pending.split_off(cut);
        let _ = log.write_all(&loops_core::secrets::redact_bytes(&pending));
        pending = rest;
    }
    if !pending.is_empty() {
        let _ = log.write_all(&loops_core::secrets::redact_bytes(&pending));
    }
}

/// The last lines a failed start printed, once they are through the pump.
async fn pumped_tail(pump: Option<tokio::task::JoinHandle<()>>, log: &Path, from: u64) -> String {
    if let Some(p) = pump {
        let _ = tokio::time::timeout(Duration::from_millis(500), p).await;
    }
    stderr_tail(log, from)
}

/// The longest stderr line of a server written whole.
const PUMP_LINE: usize = 64 * 1024;

fn log_line(dir: &Path, server: &str, text: &str) {
    if let Ok(mut f) = loops_core::fsutil::open_append(&dir.join(format!("{server}.log"))) {
        let _ = writeln!(
            f,
            "[loops {}] {}",
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            loops_core::secrets::redact(text)
        );
    }
}

#[derive(Serialize)]
struct Status<'a> {
    server: &'a str,
    transport: &'a str,
    /// starting, running, failed (did not start), dead (went away; restarted on next
    /// use) or stopped.
    state: &'a str,
    pid: Option<u32>,
    started: Option<DateTime<Utc>>,
    restarts: u32,
    last_error: Option<&'a str>,
    tools: Option<usize>,
    updated: DateTime<Utc>,
}

fn write_status(dir: &Path, server: &str, st: &SlotState, state: &str, conn: Option<&Arc<Conn>>) {
    let s = Status {
        server,
        transport: st
            .cfg
            .as_ref()
            .map(|c| c.transport.kind())
            .unwrap_or("stdio"),
        state,
        pid: conn.and_then(|c| c.pid),
        started: conn.map(|c| c.started),
        restarts: st.restarts,
        last_error: st.last_error.as_deref(),
        tools: st.tools.as_ref().map(Vec::len),
        updated: Utc::now(),
    };
    let Ok(mut bytes) = serde_json::to_vec_pretty(&s) else {
        return;
    };
    bytes.push(b'\n');
    if let Err(e) = loops_core::fsutil::atomic_replace(&dir.join(format!("{server}.json")), &bytes)
    {
        tracing::warn!(server, "cannot write the mcp status file: {e}");
    }
}

/// A tool result as text for the model.
fn summarise(r: &CallToolResult) -> CallResult {
    let mut parts: Vec<String> = r
        .content
        .iter()
        .map(|b| content_text(&serde_json::to_value(b).unwrap_or_default()))
        .collect();
    if parts.is_empty() {
        if let Some(s) = &r.structured_content {
            parts.push(s.to_string());
        }
    }
    CallResult {
        text: parts.join("\n"),
        is_error: r.is_error.unwrap_or(false),
    }
}

/// One content block as text: text as it is, binary content summarised (the model is
/// given text; an image's base64 would only fill its context).
fn content_text(v: &Value) -> String {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let bytes = |v: &Value| {
        let data = s(v, "data");
        let data = data.trim_end_matches('=');
        data.len() * 3 / 4
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => s(v, "text"),
        Some(kind @ ("image" | "audio")) => {
            let mime = s(v, "mimeType");
            let mime = if mime.is_empty() {
                kind.to_string()
            } else {
                mime
            };
            format!("[{mime}, {} bytes]", bytes(v))
        }
        Some("resource") => {
            let r = v.get("resource").cloned().unwrap_or_default();
            let uri = s(&r, "uri");
            match r.get("text").and_then(Value::as_str) {
                Some(t) => format!("[resource {uri}]\n{t}"),
                None => {
                    let mime = s(&r, "mimeType");
                    let b64 = s(&r, "blob");
                    let n = b64.trim_end_matches('=').len() * 3 / 4;
                    format!(
                        "[resource {uri}: {}, {n} bytes]",
                        if mime.is_empty() {
                            "binary".into()
                        } else {
                            mime
                        }
                    )
                }
            }
        }
        Some("resource_link") => {
            let name = s(v, "name");
            format!(
                "[resource link: {}{}]",
                s(v, "uri"),
                if name.is_empty() {
                    String::new()
                } else {
                    format!(" ({name})")
                }
            )
        }
        Some(other) => format!("[{other} content]"),
        None => v.to_string(),
    }
}

/// The name a server's tool is offered to the model under: `server__tool`, in the
/// characters and length model APIs accept (`[A-Za-z0-9_-]`, at most 64).
pub fn tool_spec_name(server: &str, tool: &str) -> String {
    let full: String = format!("{server}__{tool}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if full.len() <= 64 {
        return full;
    }
    // Too long: keep the start, and a hash of the whole so two long names stay apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{server}__{tool}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}_{:08x}", &full[..55], h as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use loops_core::diag::{Diagnostic, YamlLocator};
    use loops_core::mcp_config::{header_template_vars, parse_mcp_servers};
    use yaml_serde::Value as Yaml;

    fn parse(yaml: &str) -> (BTreeMap<String, McpServerConfig>, Vec<Diagnostic>) {
        let v: Yaml = yaml_serde::from_str(yaml).expect("yaml");
        let loc = YamlLocator::new(yaml);
        let mut diags = Vec::new();
        let m = parse_mcp_servers(
            Path::new("loops.yaml"),
            &loc,
            v.get("mcp_servers").expect("mcp_servers"),
            &mut diags,
        );
        (m, diags)
    }

    fn shown(diags: &[Diagnostic]) -> String {
        diags.iter().map(|d| format!("{d}\n")).collect()
    }

    #[test]
    fn parses_stdio_and_http_servers() {
        let (m, d) = parse(
            "mcp_servers:\n  everything:\n    command: [\"npx\", \"-y\", \"@modelcontextprotocol/server-everything\"]\n    env: [FOO_TOKEN]\n    timeout: 5s\n  files: { command: mcp-server-filesystem, args: [notes, 3], cwd: tools }\n  gh: { url: \"https://example.com/mcp\", headers: { Authorization: \"Bearer ${GH_TOKEN}\", X-Key: KEY_VAR }, startup_timeout: 1m }\n",
        );
        assert!(d.is_empty(), "{}", shown(&d));
        assert_eq!(
            m["everything"].transport,
            McpTransport::Stdio {
                command: "npx".into(),
                args: vec![
                    "-y".into(),
                    "@modelcontextprotocol/server-everything".into()
                ],
                env: vec!["FOO_TOKEN".into()],
                cwd: None,
            }
        );
        assert_eq!(m["everything"].call_timeout, Duration::from_secs(5));
        assert_eq!(m["everything"].startup_timeout, DEFAULT_STARTUP_TIMEOUT);
        assert_eq!(
            m["files"].transport,
            McpTransport::Stdio {
                command: "mcp-server-filesystem".into(),
                args: vec!["notes".into(), "3".into()],
                env: vec![],
                cwd: Some(PathBuf::from("tools")),
            }
        );
        match &m["gh"].transport {
            McpTransport::Http { url, headers } => {
                assert_eq!(url, "https://example.com/mcp");
                assert_eq!(headers["Authorization"], "Bearer ${GH_TOKEN}");
                assert_eq!(headers["X-Key"], "KEY_VAR");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m["gh"].call_timeout, DEFAULT_CALL_TIMEOUT);
        assert_eq!(m["gh"].startup_timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_shell_string_command_runs_through_sh() {
        let (m, d) = parse("mcp_servers:\n  x: { command: \"npx -y some-server\" }\n");
        assert!(d.is_empty(), "{}", shown(&d));
        assert_eq!(
            m["x"].transport,
            McpTransport::Stdio {
                command: "sh".into(),
                args: vec!["-c".into(), "npx -y some-server".into()],
                env: vec![],
                cwd: None,
            }
        );
    }

    #[test]
    fn a_bad_command_is_an_error_with_its_line() {
        let (m, d) = parse("timezone: UTC\nmcp_servers:\n  broken:\n    command: { program: x }\n");
        assert!(m.is_empty());
        let s = shown(&d);
        assert!(s.contains("loops.yaml:4:14"), "{s}");
        assert!(
            s.contains("mcp_servers.broken.command must be a program or an argv list"),
            "{s}"
        );
        assert!(s.contains("help: e.g. command: [\"npx\""), "{s}");
    }

    #[test]
    fn both_command_and_url_is_an_error() {
        let (m, d) = parse(
            "mcp_servers:\n  both:\n    command: [srv]\n    url: \"http://127.0.0.1:1/mcp\"\n",
        );
        assert!(m.is_empty());
        let s = shown(&d);
        assert!(
            s.contains("error: loops.yaml:4:5: mcp server `both` has both `command` and `url`"),
            "{s}"
        );
        let (m, d) = parse("mcp_servers:\n  neither: { timeout: 5s }\n");
        assert!(m.is_empty());
        let s = shown(&d);
        assert!(
            s.contains("loops.yaml:2:3: mcp server `neither` needs `command` or `url`"),
            "{s}"
        );
    }

    #[test]
    fn an_unknown_key_is_pointed_out_with_a_near_miss() {
        let (m, d) = parse("mcp_servers:\n  x:\n    command: [srv]\n    timout: 5s\n");
        assert!(m.is_empty());
        let s = shown(&d);
        assert!(
            s.contains("loops.yaml:4:5: unknown key `mcp_servers.x.timout`"),
            "{s}"
        );
        assert!(s.contains("did you mean `timeout`?"), "{s}");
    }

    #[test]
    fn names_secrets_and_misplaced_keys_are_errors() {
        let (m, d) = parse("mcp_servers:\n  \"my server\": { command: [srv] }\n  finish: { command: [srv] }\n  h: { url: \"http://x/mcp\", headers: { Authorization: \"Bearer sk-abc\" }, env: [A] }\n  s: { command: \"a b\", args: [c], headers: { X: Y } }\n");
        assert!(m.is_empty(), "{m:?}");
        let s = shown(&d);
        assert!(s.contains("`my server` may hold only letters"), "{s}");
        assert!(s.contains("`finish` is also a built-in tool"), "{s}");
        assert!(
            s.contains("headers.Authorization must name an environment variable"),
            "{s}"
        );
        assert!(
            s.contains("mcp_servers.h.env is for a server loops starts"),
            "{s}"
        );
        assert!(
            s.contains("mcp_servers.s.headers is for a server at a `url`"),
            "{s}"
        );
        assert!(s.contains("`args` cannot be added"), "{s}");
    }

    #[test]
    fn tool_names_fit_model_apis() {
        assert_eq!(
            tool_spec_name("everything", "get-sum"),
            "everything__get-sum"
        );
        assert_eq!(tool_spec_name("fs", "read.file v2"), "fs__read_file_v2");
        let long = tool_spec_name("server", &"x".repeat(100));
        assert_eq!(long.len(), 64);
        assert_ne!(long, tool_spec_name("server", &"x".repeat(101)));
    }

    #[test]
    fn content_is_summarised_as_text() {
        let img = serde_json::json!({"type": "image", "mimeType": "image/png", "data": "AAAA"});
        assert_eq!(content_text(&img), "[image/png, 3 bytes]");
        let res =
            serde_json::json!({"type": "resource", "resource": {"uri": "file:///a", "text": "hi"}});
        assert_eq!(content_text(&res), "[resource file:///a]\nhi");
        let t = serde_json::json!({"type": "text", "text": "Echo: x"});
        assert_eq!(content_text(&t), "Echo: x");
    }

    #[test]
    fn header_templates_name_variables() {
        assert_eq!(header_template_vars("TOKEN"), Some(vec!["TOKEN".into()]));
        assert_eq!(
            header_template_vars("Bearer ${A} ${B_2}"),
            Some(vec!["A".into(), "B_2".into()])
        );
        assert_eq!(header_template_vars("Bearer sk-123"), None);
        assert_eq!(header_template_vars("Bearer ${no"), None);
    }
}
