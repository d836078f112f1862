//! `loops service`: running the daemon unattended under the user's service manager, a
//! systemd user unit on Linux or a launchd agent on macOS.
//!
//! Rendering is pure (a [`ServiceSpec`] in, the file's text out), so it is tested without
//! a manager. Installing writes the file first and only then asks the manager to load
//! it: when the manager cannot be reached (no user session bus in a container, no
//! `systemctl` at all) the file stays written and the error says what to run by hand.

use loops_core::daemon_lock::LockInfo;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("$HOME is not set, so there is nowhere to put the service's files")]
    NoHome,
    #[error("`{0}` is not a usable service name")]
    BadName(String),
    #[error("the {what} {path:?} cannot be written into a service file: {why}")]
    UnsafePath {
        what: &'static str,
        path: PathBuf,
        why: &'static str,
    },
    #[error("cannot tell where the running loops binary is: {0}")]
    Exe(#[source] std::io::Error),
    #[error("{0} is not a loops workspace (it has neither loops.yaml nor domains/)")]
    NotAWorkspace(PathBuf),
    #[error("system-wide services are not supported yet")]
    SystemWide,
    #[error("`loops service` supports Linux (systemd) and macOS (launchd), not {0}")]
    Unsupported(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is written but the manager did not take it.
    #[error("wrote {unit}, but `{command}` failed: {detail}")]
    Manager {
        unit: PathBuf,
        command: String,
        detail: String,
        /// The commands that finish the job by hand.
        manual: Vec<String>,
    },
}

impl ServiceError {
    pub fn help(&self) -> Option<String> {
        match self {
            ServiceError::NoHome => {
                Some("set HOME (and XDG_CONFIG_HOME if your configuration lives elsewhere)".into())
            }
            ServiceError::BadName(_) => Some(
                "use lowercase letters, digits, - and _, at most 64 characters (e.g. --name loops-mind)"
                    .into(),
            ),
            ServiceError::UnsafePath { .. } => Some(
                "move it to a path without line breaks, control characters or backslashes (or run `loops run` under your own supervisor)"
                    .into(),
            ),
            ServiceError::Exe(_) => Some(
                "run `loops service install` from an installed loops binary (e.g. after `cargo install --path .`)"
                    .into(),
            ),
            ServiceError::NotAWorkspace(_) => Some(
                "pass the workspace with --workspace DIR, or create one with `loops init DIR`"
                    .into(),
            ),
            ServiceError::SystemWide => Some(
                "install a user service instead (the default); `loginctl enable-linger $USER` starts it at boot without a login"
                    .into(),
            ),
            ServiceError::Unsupported(_) => Some(
                "run `loops run` under your platform's supervisor, or in Docker; see docs/deploy.md"
                    .into(),
            ),
            ServiceError::Io { .. } => None,
            ServiceError::Manager { manual, .. } => Some(format!(
                "the file is in place but the service is not running. Run by hand:\n  {}",
                manual.join("\n  ")
            )),
        }
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServiceError + '_ {
    move |source| ServiceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which service manager a platform has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    /// The manager of the platform this binary was built for.
    pub fn current() -> Result<Manager> {
        if cfg!(target_os = "macos") {
            Ok(Manager::Launchd)
        } else if cfg!(target_os = "linux") {
            Ok(Manager::Systemd)
        } else {
            Err(ServiceError::Unsupported(std::env::consts::OS))
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Manager::Systemd => "systemd user unit",
            Manager::Launchd => "launchd agent",
        }
    }
}

/// Where the service's files go: `$HOME` and `$XDG_CONFIG_HOME` (else `~/.config`), read
/// from the environment so tests (and unusual setups) can point them elsewhere.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub home: PathBuf,
    pub config: PathBuf,
}

impl Dirs {
    pub fn from_env() -> Result<Dirs> {
        let home = loops_core::secrets::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_absolute())
            .ok_or(ServiceError::NoHome)?;
        // The XDG spec says a relative value is to be ignored.
        let config = loops_core::secrets::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|c| c.is_absolute())
            .unwrap_or_else(|| home.join(".config"));
        Ok(Dirs { home, config })
    }

    /// The unit file (systemd) or property list (launchd) of service `name`.
    pub fn unit_path(&self, manager: Manager, name: &str) -> PathBuf {
        match manager {
            Manager::Systemd => self
                .config
                .join("systemd")
                .join("user")
                .join(format!("{name}.service")),
            Manager::Launchd => self
                .home
                .join("Library")
                .join("LaunchAgents")
                .join(format!("{}.plist", launchd_label(name))),
        }
    }

    /// The environment file for provider keys, unless `--env-file` names another.
    pub fn default_env_file(&self, name: &str) -> PathBuf {
        self.config.join("loops").join(format!("{name}.env"))
    }

    /// Where a launchd agent's output goes (launchd has no journal).
    pub fn launchd_log(&self, name: &str) -> PathBuf {
        self.home
            .join("Library")
            .join("Logs")
            .join("loops")
            .join(format!("{name}.log"))
    }
}

/// The launchd label of service `name`.
pub fn launchd_label(name: &str) -> String {
    format!("dev.loops.{name}")
}

/// Everything a service file says.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// The unit's name: `loops-<workspace folder>` unless chosen.
    pub name: String,
    /// The loops binary, canonical (a service must not depend on `$PATH`).
    pub exe: PathBuf,
    /// The workspace, canonical and absolute.
    pub workspace: PathBuf,
    /// The environment file read at start (provider keys); it may be missing.
    pub env_file: PathBuf,
    /// A per-user service (the only kind supported so far).
    pub user: bool,
    /// The workspace's `limits.shutdown_grace`, which the stop timeout must outlast.
    pub shutdown_grace: Duration,
}

impl ServiceSpec {
    /// The spec for the daemon of `workspace` run by this very binary.
    pub fn for_workspace(
        workspace: &loops_core::workspace::Workspace,
        dirs: &Dirs,
        name: Option<&str>,
        env_file: Option<&Path>,
    ) -> Result<ServiceSpec> {
        // Without --workspace, a command run in the wrong folder lands on that folder: a
        // service that runs nothing at every boot helps no one.
        let root = &workspace.root;
        if !root.join("loops.yaml").is_file() && !root.join("domains").is_dir() {
            return Err(ServiceError::NotAWorkspace(root.clone()));
        }
        let name = match name {
            Some(n) => check_name(n)?,
            None => default_name(&workspace.root),
        };
        let exe = std::env::current_exe()
            .and_then(|e| e.canonicalize())
            .map_err(ServiceError::Exe)?;
        let env_file = match env_file {
            // The manager reads it from its own working folder, so it must be absolute.
            Some(f) => std::path::absolute(f).map_err(io_err(f))?,
            None => dirs.default_env_file(&name),
        };
        Ok(ServiceSpec {
            name,
            exe,
            workspace: workspace.root.clone(),
            env_file,
            user: true,
            shutdown_grace: workspace.settings.shutdown_grace,
        })
    }

    /// How long the manager waits after SIGTERM before it kills: the daemon waits
    /// `shutdown_grace` for running jobs, then up to as long again for them (and the main
    /// session) to stop, and the margin keeps the manager's SIGKILL a last resort rather
    /// than the usual end of a stop.
    pub fn stop_timeout(&self) -> Duration {
        self.shutdown_grace * 2 + Duration::from_secs(15)
    }
}

/// `loops-<folder name>`, lowercased, anything but letters and digits turned into `-`.
pub fn default_name(workspace: &Path) -> String {
    let folder = workspace
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut slug = String::new();
    for c in folder.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_matches('-').chars().take(50).collect();
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "loops".into()
    } else {
        format!("loops-{slug}")
    }
}

/// A name given with `--name`: it becomes a file name, a unit name and a launchd label.
pub fn check_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(name.to_string())
    } else {
        Err(ServiceError::BadName(name.to_string()))
    }
}

/// A path as text fit for a service file: UTF-8, and no character that would end a line
/// or (for systemd) be read as an escape.
fn path_text<'p>(what: &'static str, path: &'p Path, systemd: bool) -> Result<&'p str> {
    let bad = |why| ServiceError::UnsafePath {
        what,
        path: path.to_path_buf(),
        why,
    };
    let text = path.to_str().ok_or_else(|| bad("it is not valid UTF-8"))?;
    if text.chars().any(char::is_control) {
        return Err(bad("it holds a line break or another control character"));
    }
    // systemd reads backslashes as escapes in some settings and not in others, and a
    // trailing one continues the line: rather than guess, refuse.
    if systemd && text.contains('\\') {
        return Err(bad("it holds a backslash"));
    }
    if !path.is_absolute() {
        return Err(bad("it is not absolute"));
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------------
// systemd

/// `%` starts a specifier in (nearly) every systemd setting.
fn systemd_plain(s: &str) -> String {
    s.replace('%', "%%")
}

/// One word of a systemd command line: `%` and `$` doubled (specifiers, variables), and
/// double quotes (with `\"` and `\\` escapes) around anything but plain characters.
fn systemd_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@=".contains(c));
    let s = s.replace('%', "%%").replace('$', "$$");
    if plain {
        s
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The systemd user unit.
pub fn render_systemd(spec: &ServiceSpec) -> Result<String> {
    let exe = path_text("loops binary", &spec.exe, true)?;
    let ws = path_text("workspace", &spec.workspace, true)?;
    let env = path_text("environment file", &spec.env_file, true)?;
    let exec = [exe, "--workspace", ws, "run", "--log-format", "json"]
        .iter()
        .map(|w| systemd_word(w))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(format!(
        "\
# Written by `loops service install`; `loops service uninstall` removes it.
[Unit]
Description=loops daemon for {ws_plain}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec}
WorkingDirectory={ws_plain}
# Provider keys (ANTHROPIC_API_KEY=...); the leading - lets the service start without it.
EnvironmentFile=-{env_plain}
Restart=on-failure
RestartSec=5
# SIGTERM to loops alone, so it can let running jobs finish; once it has exited (or
# TimeoutStopSec has passed), SIGKILL to whatever is left in the unit.
KillMode=mixed
TimeoutStopSec={timeout}
StandardOutput=journal
StandardError=journal
SyslogIdentifier={name}

[Install]
WantedBy=default.target
",
        ws_plain = systemd_plain(ws),
        env_plain = systemd_plain(env),
        timeout = spec.stop_timeout().as_secs(),
        name = spec.name,
    ))
}

// ---------------------------------------------------------------------------------------
// launchd

/// A word for `sh`: single quotes, with each `'` written as `'\''`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The `sh -c` script a launchd agent runs: launchd has no EnvironmentFile, so the shell
/// exports the env file's assignments (`set -a`) and then becomes loops (`exec`, so
/// launchd's SIGTERM reaches loops itself).
pub fn launchd_script(spec: &ServiceSpec) -> Result<String> {
    let exe = path_text("loops binary", &spec.exe, false)?;
    let ws = path_text("workspace", &spec.workspace, false)?;
    let env = sh_quote(path_text("environment file", &spec.env_file, false)?);
    Ok(format!(
        "set -a; [ -f {env} ] && . {env}; exec {} --workspace {} run",
        sh_quote(exe),
        sh_quote(ws)
    ))
}

/// The launchd agent's property list; its output goes to `log`.
pub fn render_launchd(spec: &ServiceSpec, log: &Path) -> Result<String> {
    let script = launchd_script(spec)?;
    let ws = path_text("workspace", &spec.workspace, false)?;
    let log = path_text("log file", log, false)?;
    Ok(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by `loops service install`; `loops service uninstall` removes it. -->
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>{label}</string>
	<key>ProgramArguments</key>
	<array>
		<string>/bin/sh</string>
		<string>-c</string>
		<string>{script}</string>
	</array>
	<key>WorkingDirectory</key>
	<string>{ws}</string>
	<key>RunAtLoad</key>
	<true/>
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<key>ThrottleInterval</key>
	<integer>5</integer>
	<key>ExitTimeOut</key>
	<integer>{timeout}</integer>
	<key>StandardOutPath</key>
	<string>{log}</string>
	<key>StandardErrorPath</key>
	<string>{log}</string>
</dict>
</plist>
"#,
        label = xml_escape(&launchd_label(&spec.name)),
        script = xml_escape(&script),
        ws = xml_escape(ws),
        log = xml_escape(log),
        timeout = spec.stop_timeout().as_secs(),
    ))
}

/// The service file for `manager`.
pub fn render(manager: Manager, spec: &ServiceSpec, dirs: &Dirs) -> Result<String> {
    match manager {
        Manager::Systemd => render_systemd(spec),
        Manager::Launchd => render_launchd(spec, &dirs.launchd_log(&spec.name)),
    }
}

// ---------------------------------------------------------------------------------------
// Talking to the manager

/// How a manager command went wrong.
enum ToolError {
    /// The program is not on `PATH`.
    Missing,
    /// It ran and failed; its stderr (or exit status).
    Failed(String),
}

impl ToolError {
    fn detail(&self, program: &str) -> String {
        match self {
            ToolError::Missing => format!("{program} is not installed (or not on PATH)"),
            ToolError::Failed(s) => s.clone(),
        }
    }
}

/// Runs a manager command; its stdout on success.
fn tool(program: &str, args: &[&str]) -> std::result::Result<String, ToolError> {
    let out = match Command::new(program)
        .args(args)
        // The person's session (PATH, the bus), none of the secrets loops was given.
        .env_clear()
        .envs(loops_core::secrets::kept_env())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ToolError::Missing),
        Err(e) => return Err(ToolError::Failed(e.to_string())),
    };
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(ToolError::Failed(if stderr.is_empty() {
        format!("it exited with {}", out.status)
    } else {
        stderr
    }))
}

/// Runs a query whose answer is on stdout whatever its exit code (`systemctl is-active`
/// exits 3 for "inactive"). `Err` when it printed nothing.
fn query(program: &str, args: &[&str]) -> std::result::Result<String, ToolError> {
    let out = match Command::new(program)
        .args(args)
        // The person's session (PATH, the bus), none of the secrets loops was given.
        .env_clear()
        .envs(loops_core::secrets::kept_env())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ToolError::Missing),
        Err(e) => return Err(ToolError::Failed(e.to_string())),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !stdout.is_empty() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(ToolError::Failed(if stderr.is_empty() {
        format!("it exited with {}", out.status)
    } else {
        stderr
    }))
}

fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

fn manual_commands(manager: Manager, spec_name: &str, unit: &Path) -> Vec<String> {
    match manager {
        Manager::Systemd => vec![
            "systemctl --user daemon-reload".into(),
            format!("systemctl --user enable --now {spec_name}.service"),
            "loginctl enable-linger $USER   # keeps it running without a login session".into(),
        ],
        Manager::Launchd => vec![format!(
            "launchctl bootstrap gui/$(id -u) {}",
            sh_quote(&unit.display().to_string())
        )],
    }
}

// ---------------------------------------------------------------------------------------
// install, status, uninstall

/// What `install` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallReport {
    pub name: String,
    pub manager: Manager,
    pub unit_file: PathBuf,
    /// Whether a different unit file was there before (a running service keeps the old
    /// one until it is restarted).
    pub replaced: bool,
    pub env_file: PathBuf,
    /// Whether the env file was created now (an existing one is never touched).
    pub env_file_created: bool,
    /// Where the output goes (a file for launchd; None for the journal).
    pub log_file: Option<PathBuf>,
    /// Whether the user's services keep running without a login (systemd linger), when
    /// it can be told.
    pub linger: Option<bool>,
}

/// Writes the service file and the env file, then has the manager enable and start it.
pub fn install(manager: Manager, spec: &ServiceSpec, dirs: &Dirs) -> Result<InstallReport> {
    if !spec.user {
        return Err(ServiceError::SystemWide);
    }
    let text = render(manager, spec, dirs)?;
    let unit = dirs.unit_path(manager, &spec.name);
    let replaced = match std::fs::read_to_string(&unit) {
        Ok(old) => old != text,
        Err(_) => false,
    };
    loops_core::fsutil::atomic_write(&unit, text.as_bytes()).map_err(io_err(&unit))?;
    let env_file_created = create_env_file(spec)?;
    let log_file = match manager {
        Manager::Systemd => None,
        Manager::Launchd => {
            // launchd opens the log file but does not create its folder.
            let log = dirs.launchd_log(&spec.name);
            if let Some(dir) = log.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            Some(log)
        }
    };
    let manual = manual_commands(manager, &spec.name, &unit);
    let fail = |command: String, e: ToolError, program: &str| ServiceError::Manager {
        unit: unit.clone(),
        command,
        detail: e.detail(program),
        manual: manual.clone(),
    };
    match manager {
        Manager::Systemd => {
            let service = format!("{}.service", spec.name);
            for args in [
                vec!["--user", "daemon-reload"],
                vec!["--user", "enable", "--now", &service],
            ] {
                tool("systemctl", &args)
                    .map_err(|e| fail(format!("systemctl {}", args.join(" ")), e, "systemctl"))?;
            }
        }
        Manager::Launchd => {
            let domain = format!("gui/{}", uid());
            let target = format!("{domain}/{}", launchd_label(&spec.name));
            let unit_text = unit.display().to_string();
            // A reinstall replaces the loaded agent: bootstrap refuses a label already
            // loaded. Neither step matters when nothing was loaded or disabled before.
            let _ = tool("launchctl", &["bootout", &target]);
            let _ = tool("launchctl", &["enable", &target]);
            tool("launchctl", &["bootstrap", &domain, &unit_text]).map_err(|e| {
                fail(
                    format!("launchctl bootstrap {domain} {unit_text}"),
                    e,
                    "launchctl",
                )
            })?;
        }
    }
    Ok(InstallReport {
        name: spec.name.clone(),
        manager,
        unit_file: unit,
        replaced,
        env_file: spec.env_file.clone(),
        env_file_created,
        log_file,
        linger: match manager {
            Manager::Systemd => linger(),
            Manager::Launchd => None,
        },
    })
}

/// Creates the env file (mode 0600: it will hold API keys) with a commented template,
/// unless it exists. Returns whether it was created.
fn create_env_file(spec: &ServiceSpec) -> Result<bool> {
    let path = &spec.env_file;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io_err(path)(e)),
    };
    let template = format!(
        "\
# Environment of the loops service `{name}` (workspace {ws}).
# One KEY=value per line. Leave values unquoted where you can: docker's --env-file keeps
# quotes as part of the value. Read at every start (systemd EnvironmentFile, or sourced by
# sh under launchd), so restart the service after editing it. It holds secrets: keep it
# mode 0600 and out of git.
#
# ANTHROPIC_API_KEY=...
# OPENAI_API_KEY=...
# The service manager's PATH is short; widen it if your loops' commands need more:
# PATH=/usr/local/bin:/usr/bin:/bin
",
        name = spec.name,
        ws = spec.workspace.display(),
    );
    file.write_all(template.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io_err(path))?;
    Ok(true)
}

/// Whether systemd keeps this user's services running without a login session.
fn linger() -> Option<bool> {
    let user = loops_core::secrets::var("USER")
        .or_else(|_| loops_core::secrets::var("LOGNAME"))
        .ok()?;
    if user.is_empty() || user.contains('/') {
        return None;
    }
    Some(Path::new("/var/lib/systemd/linger").join(user).exists())
}

/// What `status` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub name: String,
    pub manager: Manager,
    pub unit_file: PathBuf,
    pub installed: bool,
    /// `systemctl --user is-active` (active, inactive, failed, …) or launchd's state.
    pub active: Option<String>,
    /// `systemctl --user is-enabled` (enabled, disabled, not-found, …), or whether
    /// launchd has the agent loaded.
    pub enabled: Option<String>,
    /// Why the manager could not be asked.
    pub manager_error: Option<String>,
    /// The workspace the unit runs (from the unit file), else the one given.
    pub workspace: Option<PathBuf>,
    pub env_file: Option<PathBuf>,
    /// The daemon's own view, from the workspace's `.loops/daemon.lock`.
    pub daemon: DaemonView,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DaemonView {
    /// Whether a `loops run` holds the workspace's lock right now.
    pub running: bool,
    #[serde(flatten)]
    pub lock: Option<LockInfo>,
}

/// The service's state: its file, the manager's view and the daemon's own.
pub fn status(manager: Manager, dirs: &Dirs, name: &str, workspace: Option<&Path>) -> Status {
    let unit = dirs.unit_path(manager, name);
    let text = std::fs::read_to_string(&unit).ok();
    let from_unit = text
        .as_deref()
        .map(|t| parse_installed(manager, t))
        .unwrap_or_default();
    let (mut active, mut enabled, mut manager_error) = (None, None, None);
    match manager {
        Manager::Systemd => {
            let service = format!("{name}.service");
            match query("systemctl", &["--user", "is-active", &service]) {
                Ok(s) => active = Some(s),
                Err(e) => manager_error = Some(e.detail("systemctl")),
            }
            if manager_error.is_none() {
                match query("systemctl", &["--user", "is-enabled", &service]) {
                    Ok(s) => enabled = Some(s),
                    Err(e) => manager_error = Some(e.detail("systemctl")),
                }
            }
        }
        Manager::Launchd => {
            let target = format!("gui/{}/{}", uid(), launchd_label(name));
            match tool("launchctl", &["print", &target]) {
                Ok(out) => {
                    enabled = Some("loaded".into());
                    active = out
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("state = "))
                        .map(str::to_string);
                }
                Err(ToolError::Missing) => {
                    manager_error = Some(ToolError::Missing.detail("launchctl"))
                }
                // `launchctl print` fails for a label it does not know.
                Err(ToolError::Failed(_)) => enabled = Some("not loaded".into()),
            }
        }
    }
    let workspace = from_unit
        .workspace
        .or_else(|| workspace.map(Path::to_path_buf));
    let lock = workspace.as_deref().and_then(|w| {
        loops_core::workspace::Workspace::open(w)
            .ok()
            .and_then(|ws| loops_core::daemon_lock::daemon_alive(&ws))
    });
    Status {
        name: name.to_string(),
        manager,
        installed: text.is_some(),
        unit_file: unit,
        active,
        enabled,
        manager_error,
        workspace,
        env_file: from_unit
            .env_file
            .or_else(|| Some(dirs.default_env_file(name))),
        daemon: DaemonView {
            running: lock.is_some(),
            lock,
        },
    }
}

/// What an installed service file says about where things are.
#[derive(Debug, Default)]
struct Installed {
    workspace: Option<PathBuf>,
    env_file: Option<PathBuf>,
}

fn parse_installed(manager: Manager, text: &str) -> Installed {
    match manager {
        Manager::Systemd => {
            let value = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| PathBuf::from(v.trim().replace("%%", "%")))
            };
            Installed {
                workspace: value("WorkingDirectory="),
                env_file: value("EnvironmentFile=-").or_else(|| value("EnvironmentFile=")),
            }
        }
        Manager::Launchd => {
            let workspace = text
                .split("<key>WorkingDirectory</key>")
                .nth(1)
                .and_then(|rest| rest.split("<string>").nth(1))
                .and_then(|rest| rest.split("</string>").next())
                .map(|v| PathBuf::from(xml_unescape(v)));
            Installed {
                workspace,
                env_file: None,
            }
        }
    }
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// What `uninstall` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UninstallReport {
    pub name: String,
    pub manager: Manager,
    pub unit_file: PathBuf,
    /// Whether there was a service file to remove.
    pub was_installed: bool,
    /// The env file, kept (it holds keys a person wrote), when it exists.
    pub env_file_kept: Option<PathBuf>,
    /// Steps the manager refused; the file is removed regardless.
    pub warnings: Vec<String>,
}

/// Stops and disables the service and removes its file; the env file stays. Removing
/// what is not installed is not an error.
pub fn uninstall(manager: Manager, dirs: &Dirs, name: &str) -> Result<UninstallReport> {
    let unit = dirs.unit_path(manager, name);
    let text = std::fs::read_to_string(&unit).ok();
    let was_installed = text.is_some();
    let env_file = text
        .as_deref()
        .and_then(|t| parse_installed(manager, t).env_file)
        .unwrap_or_else(|| dirs.default_env_file(name));
    let mut warnings = Vec::new();
    match manager {
        Manager::Systemd => {
            let service = format!("{name}.service");
            // With no unit file there is nothing systemd could have loaded from us.
            if was_installed {
                if let Err(e) = tool("systemctl", &["--user", "disable", "--now", &service]) {
                    warnings.push(format!(
                        "`systemctl --user disable --now {service}` failed: {}; if it still runs, stop it with `systemctl --user stop {service}`",
                        e.detail("systemctl")
                    ));
                }
            }
        }
        Manager::Launchd => {
            let target = format!("gui/{}/{}", uid(), launchd_label(name));
            // Fails when the agent is not loaded, which is what we want anyway.
            let _ = tool("launchctl", &["bootout", &target]);
        }
    }
    if was_installed {
        match std::fs::remove_file(&unit) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&unit)(e)),
        }
        if manager == Manager::Systemd {
            // So systemd forgets the unit now rather than at the next reload.
            // Said once: when disabling failed, this fails the same way.
            if let Err(e) = tool("systemctl", &["--user", "daemon-reload"]) {
                if warnings.is_empty() && !matches!(e, ToolError::Missing) {
                    warnings.push(format!(
                        "`systemctl --user daemon-reload` failed: {}",
                        e.detail("systemctl")
                    ));
                }
            }
        }
    }
    Ok(UninstallReport {
        name: name.to_string(),
        manager,
        unit_file: unit,
        was_installed,
        env_file_kept: env_file.exists().then_some(env_file),
        warnings,
    })
}
