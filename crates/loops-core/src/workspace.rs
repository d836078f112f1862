//! A workspace: the folder (a git repository) that holds loops.yaml, the domains, the
//! inbox and the runner's `.loops/` runtime folder. This module finds it, reads its
//! settings and knows where everything lives inside it.

use crate::config_fields::{
    duration_of, CommandLine, DurationField, Field, List, Map, NonEmpty, Section, Whole,
};
use crate::diag::{Diagnostic, YamlLocator};
use crate::duration::{parse_duration, DURATION_HELP};
use crate::layout::Layout;
use chrono_tz::Tz;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use yaml_serde::Value;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a folder")]
    NotADirectory(PathBuf),
    #[error("the workspace {0} does not exist")]
    Missing(PathBuf),
    #[error("loops.yaml is not valid:\n{0}")]
    InvalidSettings(String),
    /// Settings loops.yaml names but that could not be applied (each diagnostic a line).
    #[error("loops.yaml has settings that cannot be applied, so nothing runs until they are fixed:\n{0}")]
    Unapplied(String),
    #[error("no workspace found in {0} or above (no loops.yaml or domains/ folder)")]
    NotFound(PathBuf),
}

/// The folders whose files loops commits. Each must be a real folder: git does not track
/// files beyond a symbolic link, so a commit of a path inside a linked folder would record
/// the link's removal (and the link itself is the person's, not loops').
pub const TRACKED_AREAS: &[&str] = &[
    "domains",
    "drafts",
    "inbox",
    "inbox/active",
    "inbox/done",
    "inbox/rejected",
    ".working-memory",
];

/// A workspace folder loops commits that is a symbolic link: refused at start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}/ is a symbolic link to {}; git does not track files beyond a symlink, so loops would commit its removal", .area.display(), .target.display())]
pub struct SymlinkedArea {
    /// Relative to the workspace root.
    pub area: PathBuf,
    pub target: PathBuf,
}

impl SymlinkedArea {
    pub fn help(&self) -> String {
        let (a, t) = (self.area.display(), self.target.display());
        format!(
            "make {a}/ a real folder: remove the link (`rm {a}` leaves {t} as it is), `mkdir {a}`, and move the contents of {t} into it; or set `git: {{commit: false}}` in loops.yaml to keep the link and no history"
        )
    }
}

impl WorkspaceError {
    pub fn help(&self) -> Option<String> {
        match self {
            WorkspaceError::Missing(p) => Some(format!(
                "create it with `loops init {}`, or pass an existing folder with --workspace",
                p.display()
            )),
            WorkspaceError::NotADirectory(_) => {
                Some("pass a folder with --workspace, or create one with `loops init DIR`".into())
            }
            WorkspaceError::Unapplied(_) => Some(
                "fix loops.yaml as shown (`loops check` lists every problem), then start again; the defaults are not used in their place, as they may do what you meant to stop"
                    .into(),
            ),
            WorkspaceError::InvalidSettings(_) => {
                Some("fix loops.yaml as shown; `loops check` lists every problem".into())
            }
            WorkspaceError::NotFound(_) => Some(
                "run `loops init` to make this folder a workspace, or pass `--workspace DIR`"
                    .into(),
            ),
            WorkspaceError::Io { .. } => None,
        }
    }
}

/// Settings from loops.yaml, with their defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub timezone: Option<Tz>,
    pub max_concurrent_jobs: usize,
    pub shutdown_grace: Duration,
    pub catch_up_stagger: Duration,
    pub pause_after_failures: u32,
    /// The largest handoff file the main session is given; bigger ones are rejected.
    pub max_handoff_bytes: u64,
    /// How much of each attempt's output a shell job's log keeps.
    pub max_job_log_bytes: u64,
    pub git_commit: bool,
    /// `git.branch`: the branch run commits go to (`None`: the one checked out when the
    /// daemon started).
    pub git_branch: Option<String>,
    /// `git.follow_checkout`: commit to whatever branch the person checks out.
    pub git_follow_checkout: bool,
    pub author_name: String,
    pub author_email: String,
    pub rotate_bytes: u64,
    /// `records.max_age`: `.loops/` records older than this are pruned (`None`: kept forever).
    pub max_age: Option<Duration>,
    /// `records.max_total_bytes`: the cap on `.loops/` (`None`: no cap).
    pub max_total_bytes: Option<u64>,
    /// Whether any model provider is configured (prompt loops wait for one).
    pub has_providers: bool,
    /// `providers:` by name.
    pub providers: std::collections::BTreeMap<String, crate::providers::ProviderConfig>,
    /// `defaults:`: the provider and model a prompt loop gets when it names none.
    pub defaults: crate::providers::Defaults,
    /// `allow_shell_tool: true` lets loops that list `shell` in `tools:` use it.
    pub allow_shell_tool: bool,
    /// `allow_shell_jobs: true` lets shell jobs run (as `LOOPS_ALLOW_SHELL_JOBS=1` does).
    pub allow_shell_jobs: bool,
    /// The main session (`main:`), when configured.
    pub main: Option<MainSettings>,
    /// `channels:` by name: where messages are delivered.
    pub channels: std::collections::BTreeMap<String, crate::channel_config::ChannelConfig>,
    /// The never-share rules every loop and the main session keep (`classification`,
    /// `deny_patterns`, `detectors`).
    pub guard: crate::guard::GuardConfig,
    /// `mcp_servers:` by name: MCP servers whose tools loops may list in `tools:`.
    pub mcp_servers: std::collections::BTreeMap<String, crate::mcp_config::McpServerConfig>,
    /// `remote:`: the git remote the workspace syncs with (`None`: no sync).
    pub remote: Option<crate::remote_config::RemoteSettings>,
    /// `pricing:`: model prices over the built-in estimates.
    pub pricing: crate::pricing::Pricing,
    /// `budget:`: limits on all loops together.
    pub budget: crate::budget::Budget,
    /// `ui:`: the daemon serves the web view too (`None`: only `loops ui` does).
    pub ui: Option<UiSettings>,
    /// Errors in loops.yaml whose setting could not be applied, so that a default stands
    /// in for what the person wrote: while there are any, nothing runs
    /// ([`Workspace::refuse_unapplied_settings`]).
    pub unapplied: Vec<Diagnostic>,
}

/// loops.yaml `main:`: the session that receives handoffs.
#[derive(Debug, Clone, PartialEq)]
pub struct MainSettings {
    /// An external agent or script that receives the claimed handoffs.
    pub command: Option<Vec<String>>,
    /// A prompt file (relative to the workspace) for a model-driven main session.
    pub prompt: Option<String>,
    /// The provider and model of a prompt main session (else `defaults:`).
    pub provider: Option<String>,
    pub model: Option<String>,
    /// Files given to the main session as its identity and memory (workspace-relative).
    pub context: Vec<String>,
    /// How many messages of conversation the main session keeps between wakes.
    pub history: usize,
    /// The turn limit of one wake.
    pub max_turns: u32,
    /// The tools a prompt main session is offered (None: the default set).
    pub tools: Option<Vec<String>>,
    /// A wake every this often, even with an empty inbox; also a rescan of the inbox.
    pub heartbeat: Option<Duration>,
    pub timeout: Duration,
    /// An active handoff held longer than this is shown as overdue.
    pub overdue_after: Duration,
    /// The flood guard: wakes are spaced so there are at most this many a minute.
    pub max_wakes_per_minute: u32,
    /// Failed wakes a handoff may go through before it is held for a person.
    pub max_attempts: u32,
    /// The most handoffs one wake takes (the rest wait for the next wake).
    pub max_handoffs_per_wake: u32,
}

/// What a prompt main session reads as its identity and memory when `main.context` is unset.
pub const DEFAULT_MAIN_CONTEXT: &[&str] = &[
    "SOUL.md",
    "USER.md",
    ".working-memory/memory.md",
    ".working-memory/rules.md",
];

impl MainSettings {
    /// The prompt main session's instructions: `main.prompt` names a file (relative to
    /// the workspace) or, when it is not a file name (it has spaces or line breaks and no
    /// such file exists), is the instructions themselves. `Err` says what is missing.
    pub fn prompt_text(&self, root: &Path) -> Option<Result<String, String>> {
        let p = self.prompt.as_ref()?;
        let path = root.join(p.trim());
        Some(match std::fs::read_to_string(&path) {
            Ok(t) => Ok(t),
            Err(_) if looks_inline(p) => Ok(p.clone()),
            Err(e) => Err(format!(
                "cannot read the main session's prompt `{}` (loops.yaml main.prompt): {e}; create it or fix the path",
                p.trim()
            )),
        })
    }
}

/// Why a file that is there cannot be read as text; `None` when it can, or is not there.
fn not_text(path: &Path) -> Option<std::io::Error> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Some(e),
        _ => None,
    }
}

fn looks_inline(p: &str) -> bool {
    let t = p.trim();
    t.contains('\n') || (t.contains(' ') && !t.ends_with(".md") && !t.ends_with(".txt"))
}

impl Default for MainSettings {
    fn default() -> Self {
        MainSettings {
            command: None,
            prompt: None,
            provider: None,
            model: None,
            context: DEFAULT_MAIN_CONTEXT.iter().map(|s| s.to_string()).collect(),
            history: 40,
            max_turns: 30,
            tools: None,
            heartbeat: None,
            timeout: Duration::from_secs(600),
            overdue_after: Duration::from_secs(24 * 3600),
            max_wakes_per_minute: 60,
            max_attempts: 3,
            max_handoffs_per_wake: 500,
        }
    }
}

impl Settings {
    /// The environment variables whose values loops.yaml makes secrets: provider keys
    /// and the variables providers, channels and MCP servers are given.
    pub fn secret_env_names(&self) -> Vec<String> {
        let providers = self
            .providers
            .values()
            .flat_map(|p| p.api_key_env.iter().chain(p.env.iter()).cloned());
        let channels = self
            .channels
            .values()
            .flat_map(|c| c.secret_envs().chain(c.env.iter()).cloned());
        let mcp = self.mcp_servers.values().flat_map(|m| m.secret_env_names());
        let token = self
            .remote
            .iter()
            .flat_map(|r| r.auth.token_env.iter().cloned());
        let mut names: Vec<String> = providers.chain(channels).chain(mcp).chain(token).collect();
        names.sort();
        names.dedup();
        names
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            timezone: None,
            max_concurrent_jobs: 4,
            shutdown_grace: Duration::from_secs(30),
            catch_up_stagger: Duration::from_secs(2),
            pause_after_failures: 5,
            max_handoff_bytes: DEFAULT_MAX_HANDOFF_BYTES,
            max_job_log_bytes: DEFAULT_MAX_JOB_LOG_BYTES,
            git_commit: true,
            git_branch: None,
            git_follow_checkout: false,
            author_name: "loops".into(),
            author_email: "loops@localhost".into(),
            rotate_bytes: 10 * 1024 * 1024,
            max_age: Some(Duration::from_secs(90 * 24 * 3600)),
            max_total_bytes: Some(1024 * 1024 * 1024),
            has_providers: false,
            providers: Default::default(),
            defaults: Default::default(),
            allow_shell_tool: false,
            allow_shell_jobs: false,
            main: None,
            channels: Default::default(),
            guard: Default::default(),
            mcp_servers: Default::default(),
            remote: None,
            pricing: Default::default(),
            budget: Default::default(),
            ui: None,
            unapplied: Vec::new(),
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "timezone",
    "limits",
    "git",
    "records",
    "providers",
    "defaults",
    "main",
    "channels",
    "mcp_servers",
    "remote",
    "allow_shell_jobs",
    "allow_shell_tool",
    "classification",
    "deny_patterns",
    "detectors",
    "pricing",
    "budget",
    "ui",
];
const LIMIT_KEYS: &[&str] = &[
    "max_concurrent_jobs",
    "shutdown_grace",
    "catch_up_stagger",
    "pause_after_failures",
    "max_handoff_bytes",
    "max_job_log_bytes",
];

/// `limits.max_handoff_bytes`: a handoff is a note for the main session (its text goes
/// whole into a prompt or onto a command's stdin); long material belongs in a draft.
pub const DEFAULT_MAX_HANDOFF_BYTES: u64 = 1024 * 1024;
/// `limits.max_job_log_bytes`: per attempt of a shell job.
pub const DEFAULT_MAX_JOB_LOG_BYTES: u64 = 16 * 1024 * 1024;
const GIT_KEYS: &[&str] = &[
    "commit",
    "author_name",
    "author_email",
    "branch",
    "follow_checkout",
];
const RECORD_KEYS: &[&str] = &["rotate_bytes", "max_age", "max_total_bytes"];
const UI_KEYS: &[&str] = &["listen"];

/// `ui:` in loops.yaml: where the daemon serves the web view (docs/ui.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiSettings {
    /// An IP address and port; the token guards it whatever the address.
    pub listen: std::net::SocketAddr,
}

/// An opened workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub settings: Settings,
    /// Problems found in loops.yaml (errors leave the defaults in force).
    pub diagnostics: Vec<Diagnostic>,
}

impl Workspace {
    /// Opens the workspace at `root` (which must exist) and reads loops.yaml.
    pub fn open(root: &Path) -> Result<Workspace, WorkspaceError> {
        let meta = std::fs::metadata(root).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                WorkspaceError::Missing(root.to_path_buf())
            } else {
                WorkspaceError::Io {
                    path: root.to_path_buf(),
                    source,
                }
            }
        })?;
        if !meta.is_dir() {
            return Err(WorkspaceError::NotADirectory(root.to_path_buf()));
        }
        let root = root.canonicalize().map_err(|source| WorkspaceError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let (settings, mut diagnostics) = read_settings(&root);
        let mut ws = Workspace {
            root,
            settings,
            diagnostics: Vec::new(),
        };
        diagnostics.extend(ws.symlinked_areas().iter().map(|l| {
            let mut d = Diagnostic::error(&l.area, l.to_string());
            d.help = Some(l.help());
            d
        }));
        ws.diagnostics = diagnostics;
        learn_env_secrets(&ws.domains_dir());
        Ok(ws)
    }

    /// The workspace for a command: `--workspace` when given, else the nearest folder
    /// upward holding loops.yaml or domains/. Without either it is an error: a command
    /// run in the wrong folder must not quietly make that folder a workspace (the daemon
    /// would create `.loops/` and `domains/` there).
    pub fn locate(explicit: Option<&Path>) -> Result<Workspace, WorkspaceError> {
        if let Some(p) = explicit {
            return Workspace::open(p);
        }
        let cwd = std::env::current_dir().map_err(|source| WorkspaceError::Io {
            path: PathBuf::from("."),
            source,
        })?;
        match cwd
            .ancestors()
            .find(|d| d.join("loops.yaml").is_file() || d.join("domains").is_dir())
        {
            Some(found) => Workspace::open(found),
            None => Err(WorkspaceError::NotFound(cwd)),
        }
    }

    /// The folders of the workspace that are symbolic links, when loops commits to git
    /// (see [`SymlinkedArea`]). Empty when history is off or there is no repository.
    pub fn symlinked_areas(&self) -> Vec<SymlinkedArea> {
        let in_repo = self.root.ancestors().any(|d| d.join(".git").exists());
        if !self.settings.git_commit || !in_repo {
            return Vec::new();
        }
        TRACKED_AREAS
            .iter()
            .filter_map(|area| {
                let p = self.root.join(area);
                let meta = std::fs::symlink_metadata(&p).ok()?;
                meta.file_type().is_symlink().then(|| SymlinkedArea {
                    area: PathBuf::from(area),
                    target: std::fs::read_link(&p).unwrap_or_default(),
                })
            })
            .collect()
    }

    pub fn domains_dir(&self) -> PathBuf {
        self.root.join("domains")
    }
    pub fn inbox_dir(&self) -> PathBuf {
        self.root.join("inbox")
    }
    /// Where the runner keeps its own files (`.loops/`).
    pub fn layout(&self) -> Layout {
        Layout::of(&self.root)
    }

    /// Tells a running daemon (if any) that a loop's state changed on disk: a file named
    /// after the loop in [`Layout::signals_dir`], which it watches.
    pub fn nudge_daemon(&self, loop_name: &str) {
        let signal = self.layout().signals_dir().join(loop_name);
        let _ = crate::fsutil::atomic_replace(&signal, b"");
    }

    /// `path` relative to the workspace root, for messages.
    pub fn relative(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| path.to_path_buf())
    }

    /// `Err` while loops.yaml has settings it could not apply: a run (`loops run`,
    /// `loops trigger`) would use the defaults in their place.
    pub fn refuse_unapplied_settings(&self) -> Result<(), WorkspaceError> {
        if self.settings.unapplied.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = self
            .settings
            .unapplied
            .iter()
            .map(|d| format!("  {}", d.to_string().replace('\n', "\n  ")))
            .collect();
        Err(WorkspaceError::Unapplied(lines.join("\n")))
    }

    /// The zone a loop without its own `timezone` uses, and where it came from.
    pub fn default_timezone(&self) -> (Tz, crate::schedule::TzSource) {
        match self.settings.timezone {
            Some(tz) => (tz, crate::schedule::TzSource::Workspace),
            None => (host_timezone(), crate::schedule::TzSource::Host),
        }
    }
}

/// The host's zone (TZ, then the system setting), UTC when it cannot be told.
pub fn host_timezone() -> Tz {
    if let Ok(tz) = crate::secrets::var("TZ") {
        if let Ok(z) = tz.trim_start_matches(':').parse::<Tz>() {
            return z;
        }
    }
    iana_time_zone::get_timezone()
        .ok()
        .and_then(|s| s.parse::<Tz>().ok())
        .unwrap_or(Tz::UTC)
}

/// Parses a timezone name, suggesting the closest real ones when it is a typo or a bare
/// city (`London`, `new york`): people write the place, IANA names are `Area/City`.
pub fn parse_timezone(name: &str) -> Result<Tz, (String, String)> {
    name.parse::<Tz>().map_err(|_| {
        let suggestions = timezone_suggestions(name);
        let help = match suggestions.as_slice() {
            [] => "use an IANA zone name like Europe/London, America/New_York or UTC".to_string(),
            [one] => format!(
                "did you mean `{one}`? Use an IANA zone name like Europe/London or America/New_York"
            ),
            many => format!(
                "did you mean {}? Use an IANA zone name like Europe/London or America/New_York",
                many.iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        };
        (format!("unknown timezone `{name}`"), help)
    })
}

/// The zones closest to `name` (at most three, the best first): by the whole name, or by
/// the city part alone, so `London` finds `Europe/London` and `Londn` still does.
fn timezone_suggestions(name: &str) -> Vec<&'static str> {
    let want = name.trim().to_ascii_lowercase().replace(' ', "_");
    if want.is_empty() {
        return Vec::new();
    }
    // A full name may be further off (`Europe/Londn`, `America/NewYork`); a bare word is
    // close to many cities by chance, the shorter the more: allow fewer edits.
    let limit = if want.contains('/') {
        3
    } else if want.len() >= 5 {
        2
    } else {
        1
    };
    let mut scored: Vec<(usize, &'static str)> = chrono_tz::TZ_VARIANTS
        .iter()
        .filter_map(|z| {
            let full = z.name().to_ascii_lowercase();
            let city = full.rsplit('/').next().unwrap_or(&full);
            let d = strsim::levenshtein(&want, &full).min(strsim::levenshtein(&want, city));
            (d <= limit).then_some((d, z.name()))
        })
        .collect();
    scored.sort();
    let Some(&(best, _)) = scored.first() else {
        return Vec::new();
    };
    scored
        .into_iter()
        .take_while(|(d, _)| *d == best)
        .map(|(_, n)| n)
        .take(3)
        .collect()
}

fn read_settings(root: &Path) -> (Settings, Vec<Diagnostic>) {
    let text = match std::fs::read_to_string(root.join("loops.yaml")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (Settings::default(), Vec::new())
        }
        Err(e) => {
            let help = if e.kind() == std::io::ErrorKind::InvalidData {
                "save loops.yaml as UTF-8 text"
            } else {
                "make loops.yaml a file this user can read (or remove it: every setting then has its default)"
            };
            let d =
                Diagnostic::error(Path::new("loops.yaml"), format!("cannot read: {e}")).help(help);
            let s = Settings {
                unapplied: vec![d.clone()],
                ..Settings::default()
            };
            return (s, vec![d]);
        }
    };
    let (settings, diags) = parse_settings(root, &text);
    // From now on nothing this process writes down shows them (src/secrets.rs).
    crate::secrets::learn_vars(settings.secret_env_names().iter().map(String::as_str));
    (settings, diags)
}

/// Parses loops.yaml text as [`Workspace::open`] does (`root` is where `main.prompt` is
/// looked for), without reading the file: for the fuzz targets (fuzz/).
#[doc(hidden)]
pub fn parse_settings(root: &Path, text: &str) -> (Settings, Vec<Diagnostic>) {
    let rel = PathBuf::from("loops.yaml");
    let mut s = Settings::default();
    let mut diags = Vec::new();
    let value: Value = match yaml_serde::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            diags.push(crate::diag::yaml_syntax_diagnostic(&rel, text, &e));
            s.unapplied = diags.clone();
            return (s, diags);
        }
    };
    let loc = YamlLocator::new(text);
    let map = match value {
        Value::Mapping(m) => m,
        Value::Null => return (s, diags),
        _ => {
            diags.push(
                Diagnostic::error(&rel, "loops.yaml must be a mapping of settings")
                    .help("start with e.g. `timezone: Europe/London`"),
            );
            s.unapplied = diags.clone();
            return (s, diags);
        }
    };
    let (yaml, mut sec) = Section::read::<SettingsYaml>(&rel, &loc, &[], &map);
    read_top(&mut sec, yaml, &mut s);
    for (key, d) in sec.finish_keyed() {
        // A channel, provider or MCP server with an error is left out, and whatever uses
        // it fails and says so. Anywhere else a default would silently stand in for what
        // the person wrote (`git: {comit: false}` keeps committing), so nothing may run.
        let left_out = matches!(
            key.as_deref(),
            Some("channels" | "providers" | "defaults" | "mcp_servers")
        );
        if d.is_error() && !left_out {
            s.unapplied.push(d.clone());
        }
        diags.push(d);
    }
    s.guard = crate::guard::parse(&rel, &loc, &map, &mut diags);
    if let Some(m) = &s.main {
        check_main(root, &rel, &loc, m, &s, &mut diags);
        // A main session that cannot run is no main session: handoffs wait in the inbox
        // (and `loops run` says so) rather than failing wake after wake until held.
        let runnable = m.command.is_some() || (m.prompt.is_some() && !s.providers.is_empty());
        if !runnable {
            if m.command.is_none() && m.prompt.is_none() {
                diags.push(
                    Diagnostic::warning(&rel, "`main` has neither `command` nor `prompt`: no main session runs")
                        .at(loc.key(&["main"]))
                        .help("add `command: [\"./main-session.sh\"]` (an agent CLI or script) or `prompt: MAIN.md` (a model)"),
                );
            }
            s.main = None;
        }
    }
    (s, diags)
}

/// loops.yaml, key by key. The sections with readers of their own (providers, channels,
/// MCP servers) are handed over as written; the guard's keys are read by
/// [`crate::guard::parse`].
#[derive(Deserialize, Default)]
#[serde(default)]
struct SettingsYaml {
    timezone: Field<String>,
    limits: Field<Map>,
    git: Field<Map>,
    records: Field<Map>,
    providers: Field<Value>,
    defaults: Field<Value>,
    main: Field<Map>,
    channels: Field<Value>,
    mcp_servers: Field<Value>,
    remote: Field<Map>,
    allow_shell_jobs: Field<bool>,
    allow_shell_tool: Field<bool>,
    classification: Field<IgnoredAny>,
    deny_patterns: Field<IgnoredAny>,
    detectors: Field<IgnoredAny>,
    pricing: Field<Value>,
    budget: Field<Value>,
    ui: Field<Map>,
}

/// `ui:`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct UiYaml {
    listen: Field<String>,
}

/// `limits:`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct LimitsYaml {
    max_concurrent_jobs: Field<Whole<1>>,
    shutdown_grace: Field<String>,
    catch_up_stagger: Field<String>,
    pause_after_failures: Field<Whole<1>>,
    max_handoff_bytes: Field<Whole<1024>>,
    max_job_log_bytes: Field<Whole<65536>>,
}

/// `git:`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct GitYaml {
    commit: Field<bool>,
    author_name: Field<NonEmpty>,
    author_email: Field<NonEmpty>,
    branch: Field<String>,
    follow_checkout: Field<bool>,
}

/// `records:`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RecordsYaml {
    rotate_bytes: Field<Whole<4096>>,
    /// A duration, `forever`, or 0.
    max_age: Field<Value>,
    max_total_bytes: Field<u64>,
}

/// Reads `y` into `s`; the problems go to `sec`, which places each at its key.
fn read_top(sec: &mut Section, mut y: SettingsYaml, s: &mut Settings) {
    let file = sec.file;
    match std::mem::take(&mut y.timezone).written() {
        Some(Ok(name)) => match parse_timezone(&name) {
            Ok(tz) => s.timezone = Some(tz),
            Err((m, h)) => sec.error("timezone", m, h),
        },
        Some(Err(_)) => sec.error(
            "timezone",
            "timezone must be a zone name",
            "e.g. timezone: Europe/London",
        ),
        None => {}
    }
    read_mapped_sections(sec, &mut y, s);
    read_parsed_sections(sec, &mut y, s);
    if let Some(b) = sec.take(
        "allow_shell_tool",
        y.allow_shell_tool,
        "allow_shell_tool must be true or false",
        "allow_shell_tool: true lets loops that list `shell` in `tools:` run commands",
    ) {
        s.allow_shell_tool = b;
    }
    if let Some(b) = sec.take(
        "allow_shell_jobs",
        y.allow_shell_jobs,
        "allow_shell_jobs must be true or false",
        "allow_shell_jobs: true lets `loops jobs submit shell` run commands",
    ) {
        s.allow_shell_jobs = b;
    }
    match y.main.written() {
        Some(Ok(Map(m))) => s.main = Some(read_main(sec, &m)),
        Some(Err(_)) => sec.push(
            "main",
            Diagnostic::error(file, "`main` must be a mapping")
                .at(sec.key_pos("main"))
                .help("e.g. main: { command: [\"./main-session.sh\"], heartbeat: 30m }"),
        ),
        None => {}
    }
    sec.unknown_keys(TOP_KEYS);
}

/// The sections that are mappings of their own keys: `limits`, `git`, `records`, `ui`,
/// `remote`.
fn read_mapped_sections(sec: &mut Section, y: &mut SettingsYaml, s: &mut Settings) {
    let (file, loc) = (sec.file, sec.loc);
    // `limits`, `git` and `records` that are not mappings hold no settings to read.
    if let Field::Ok(Map(m)) = std::mem::take(&mut y.limits) {
        let (l, mut ls) = Section::read::<LimitsYaml>(file, loc, &["limits"], &m);
        read_limits(&mut ls, l, s);
        sec.extend("limits", ls.finish());
    }
    if let Field::Ok(Map(m)) = std::mem::take(&mut y.git) {
        let (g, mut gs) = Section::read::<GitYaml>(file, loc, &["git"], &m);
        read_git(&mut gs, g, s);
        sec.extend("git", gs.finish());
    }
    if let Field::Ok(Map(m)) = std::mem::take(&mut y.records) {
        let (r, mut rs) = Section::read::<RecordsYaml>(file, loc, &["records"], &m);
        read_records(&mut rs, r, s);
        sec.extend("records", rs.finish());
    }
    match std::mem::take(&mut y.ui).written() {
        Some(Ok(Map(m))) => {
            let (u, mut us) = Section::read::<UiYaml>(file, loc, &["ui"], &m);
            s.ui = read_ui(&mut us, u);
            sec.extend("ui", us.finish());
        }
        Some(Err(_)) => sec.error(
            "ui",
            "`ui` must be a mapping",
            "e.g. ui: { listen: 127.0.0.1:7788 }",
        ),
        None => {}
    }
    match std::mem::take(&mut y.remote).written() {
        Some(Ok(Map(m))) => {
            let (r, mut rs) =
                Section::read::<crate::remote_config::RemoteYaml>(file, loc, &["remote"], &m);
            s.remote = Some(crate::remote_config::read_remote(&mut rs, r));
            sec.extend("remote", rs.finish());
        }
        Some(Err(_)) => sec.error(
            "remote",
            "`remote` must be a mapping",
            "e.g. remote: { name: origin, pull_every: 30s }",
        ),
        None => {}
    }
}

/// The sections read by their own modules: MCP servers, providers and their defaults,
/// pricing, the budget, channels.
fn read_parsed_sections(sec: &mut Section, y: &mut SettingsYaml, s: &mut Settings) {
    let (file, loc) = (sec.file, sec.loc);
    let mut found = Vec::new();
    if let Field::Ok(v) = std::mem::take(&mut y.mcp_servers) {
        s.mcp_servers = crate::mcp_config::parse_mcp_servers(file, loc, &v, &mut found);
        sec.extend("mcp_servers", std::mem::take(&mut found));
    }
    if let Field::Ok(v) = std::mem::take(&mut y.providers) {
        s.providers = crate::providers::parse_providers(file, loc, &v, &mut found);
        s.has_providers = !s.providers.is_empty();
        sec.extend("providers", std::mem::take(&mut found));
    }
    if let Field::Ok(v) = std::mem::take(&mut y.defaults) {
        s.defaults = crate::providers::parse_defaults(file, loc, &v, &mut found);
        sec.extend("defaults", std::mem::take(&mut found));
    }
    if let Some(v) = std::mem::take(&mut y.pricing).written() {
        let v = v.unwrap_or_else(|v| v);
        s.pricing = crate::pricing::parse(file, loc, &v, &mut found);
        sec.extend("pricing", std::mem::take(&mut found));
    }
    if let Some(v) = std::mem::take(&mut y.budget).written() {
        let v = v.unwrap_or_else(|v| v);
        s.budget = crate::budget::parse(file, loc, &["budget"], &v, &mut found);
        sec.extend("budget", std::mem::take(&mut found));
    }
    if let Field::Ok(v) = std::mem::take(&mut y.channels) {
        s.channels = crate::channel_config::parse_channels(file, loc, &v, &mut found);
        sec.extend("channels", std::mem::take(&mut found));
    }
}

fn read_limits(sec: &mut Section, l: LimitsYaml, s: &mut Settings) {
    if let Some(n) = sec.take(
        "max_concurrent_jobs",
        l.max_concurrent_jobs,
        "limits.max_concurrent_jobs must be a whole number of at least 1",
        "e.g. max_concurrent_jobs: 4",
    ) {
        s.max_concurrent_jobs = n.0 as usize;
    }
    if let Some(n) = sec.take(
        "pause_after_failures",
        l.pause_after_failures,
        "limits.pause_after_failures must be a whole number of at least 1",
        "e.g. pause_after_failures: 5",
    ) {
        s.pause_after_failures = n.saturating_u32();
    }
    if let Some(n) = sec.take(
        "max_handoff_bytes",
        l.max_handoff_bytes,
        "limits.max_handoff_bytes must be a number of bytes, at least 1024",
        "e.g. max_handoff_bytes: 1048576 (1 MiB, the default)",
    ) {
        s.max_handoff_bytes = n.0;
    }
    if let Some(n) = sec.take(
        "max_job_log_bytes",
        l.max_job_log_bytes,
        "limits.max_job_log_bytes must be a number of bytes, at least 65536",
        "e.g. max_job_log_bytes: 16777216 (16 MiB, the default)",
    ) {
        s.max_job_log_bytes = n.0;
    }
    let durations = [
        ("shutdown_grace", l.shutdown_grace, &mut s.shutdown_grace),
        (
            "catch_up_stagger",
            l.catch_up_stagger,
            &mut s.catch_up_stagger,
        ),
    ];
    for (key, field, slot) in durations {
        if let Some(d) = sec.duration(key, field) {
            *slot = d;
        }
    }
    sec.unknown_keys(LIMIT_KEYS);
}

fn read_git(sec: &mut Section, g: GitYaml, s: &mut Settings) {
    if let Some(b) = sec.take_bare("commit", g.commit, "git.commit must be true or false") {
        s.git_commit = b;
    }
    if let Some(b) = sec.take_bare(
        "follow_checkout",
        g.follow_checkout,
        "git.follow_checkout must be true or false",
    ) {
        s.git_follow_checkout = b;
    }
    match g.branch.written() {
        Some(Ok(b)) if crate::config_fields::valid_branch(b.trim()) => {
            let b = b.trim();
            s.git_branch = Some(b.strip_prefix("refs/heads/").unwrap_or(b).to_string());
        }
        Some(_) => sec.error_bare("branch", "git.branch must be a branch name, e.g. main"),
        None => {}
    }
    let authors = [
        ("author_name", g.author_name, &mut s.author_name),
        ("author_email", g.author_email, &mut s.author_email),
    ];
    for (key, field, slot) in authors {
        if let Some(t) = sec.take_bare(key, field, format!("git.{key} must be a non-empty string"))
        {
            *slot = t.0;
        }
    }
    sec.unknown_keys(GIT_KEYS);
}

fn read_records(sec: &mut Section, r: RecordsYaml, s: &mut Settings) {
    if let Some(n) = sec.take(
        "rotate_bytes",
        r.rotate_bytes,
        "records.rotate_bytes must be a number of bytes, at least 4096",
        "e.g. rotate_bytes: 10485760 (10 MiB)",
    ) {
        s.rotate_bytes = n.0;
    }
    if let Field::Ok(v) = r.max_age {
        match max_age(&v) {
            Ok(age) => s.max_age = age,
            Err(message) => sec.error(
                "max_age",
                message,
                "e.g. max_age: 90d, or max_age: forever to keep every record",
            ),
        }
    }
    match r.max_total_bytes.written() {
        Some(Ok(0)) => s.max_total_bytes = None,
        Some(Ok(n)) if n >= 1024 * 1024 => s.max_total_bytes = Some(n),
        Some(_) => sec.error(
            "max_total_bytes",
            "records.max_total_bytes must be a number of bytes, at least 1048576 (1 MiB), or 0 for no cap",
            "e.g. max_total_bytes: 1073741824 (1 GiB)",
        ),
        None => {}
    }
    sec.unknown_keys(RECORD_KEYS);
}

fn read_ui(sec: &mut Section, u: UiYaml) -> Option<UiSettings> {
    sec.unknown_keys(UI_KEYS);
    let help = "e.g. listen: 127.0.0.1:7788 (an IP address and a port; reach it from elsewhere through `ssh -L`)";
    match u.listen.written() {
        Some(Ok(l)) => match l.trim().parse() {
            Ok(listen) => Some(UiSettings { listen }),
            Err(_) => {
                sec.error(
                    "listen",
                    format!("ui.listen `{l}` is not an IP address and port"),
                    help,
                );
                None
            }
        },
        Some(Err(_)) => {
            sec.error(
                "listen",
                "ui.listen must be an address such as 127.0.0.1:7788",
                help,
            );
            None
        }
        None => {
            sec.error(
                "listen",
                "ui: needs `listen:`, the address to serve on",
                help,
            );
            None
        }
    }
}

/// `records.max_age`: a duration of at least an hour, or `forever` (or 0) for no limit.
fn max_age(v: &Value) -> Result<Option<Duration>, String> {
    let text = match v {
        Value::String(t) => t.trim().to_string(),
        Value::Number(n) if n.as_u64() == Some(0) => "0".into(),
        _ => return Err("records.max_age must be a duration or `forever`".into()),
    };
    if text == "forever" || text == "0" {
        return Ok(None);
    }
    match parse_duration(&text) {
        Ok(d) if d >= Duration::from_secs(3600) => Ok(Some(d)),
        Ok(_) => Err("records.max_age must be at least 1h".to_string()),
        Err(e) => Err(format!("records.max_age: {e}")),
    }
}

/// Cross-checks of a prompt main session: its prompt file and its provider.
fn check_main(
    root: &Path,
    rel: &Path,
    loc: &YamlLocator,
    m: &MainSettings,
    s: &Settings,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(prompt) = &m.prompt else { return };
    if m.command.is_some() {
        diags.push(
            Diagnostic::warning(rel, "`main` has both `command` and `prompt`: `command` is used")
                .at(loc.key(&["main", "prompt"]))
                .help("keep one: `command` runs an agent CLI or script, `prompt` runs the main session on a model"),
        );
        return;
    }
    let file = root.join(prompt.trim());
    if !file.is_file() && !looks_inline(prompt) {
        diags.push(
            Diagnostic::error(rel, format!("main.prompt: `{prompt}` does not exist"))
                .at(loc.value(&["main", "prompt"]))
                .help(format!("create {prompt} with the main session's instructions (a path relative to the workspace root)")),
        );
    } else if let Some(e) = not_text(&file) {
        // Every wake would fail on it, the first long after the person looked.
        diags.push(
            Diagnostic::error(
                rel,
                format!(
                    "main.prompt: `{}` cannot be read as text: {e}",
                    prompt.trim()
                ),
            )
            .at(loc.value(&["main", "prompt"]))
            .help("save it as UTF-8 text: it is the main session's instructions"),
        );
    }
    for f in &m.context {
        if let Some(e) = not_text(&root.join(f)) {
            diags.push(
                Diagnostic::warning(rel, format!("main.context: `{f}` cannot be read as text: {e}"))
                    .at(loc.key(&["main"]))
                    .help("save it as UTF-8 text: until then the main session is told it is there but not what it says"),
            );
        }
    }
    if s.providers.is_empty() {
        diags.push(
            Diagnostic::warning(
                rel,
                "the main session is a prompt and is waiting for a provider",
            )
            .at(loc.key(&["main", "prompt"]))
            .help(crate::providers::PROVIDER_HELP),
        );
    } else if let Err((msg, help)) = crate::providers::resolve(
        &s.providers,
        &s.defaults,
        m.provider.as_deref(),
        m.model.as_deref(),
    ) {
        diags.push(
            Diagnostic::error(rel, format!("main session: {msg}"))
                .at(loc.key(&["main"]))
                .help(help),
        );
    }
}

const MAIN_KEYS: &[&str] = &[
    "command",
    "prompt",
    "provider",
    "model",
    "context",
    "heartbeat",
    "timeout",
    "overdue_after",
    "max_wakes_per_minute",
    "max_attempts",
    "max_handoffs_per_wake",
    "history",
    "max_turns",
    "tools",
];

/// `main:`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct MainYaml {
    command: Field<CommandLine>,
    prompt: Field<NonEmpty>,
    provider: Field<NonEmpty>,
    model: Field<NonEmpty>,
    context: Field<List<String>>,
    heartbeat: Field<String>,
    timeout: Field<String>,
    overdue_after: Field<String>,
    max_wakes_per_minute: Field<Whole<1>>,
    max_attempts: Field<Whole<1>>,
    max_handoffs_per_wake: Field<Whole<1>>,
    history: Field<u64>,
    max_turns: Field<Whole<1>>,
    tools: Field<List<String>>,
}

/// `main:` (a mapping); its problems go to `top` at the key `main`.
fn read_main(top: &mut Section, map: &yaml_serde::Mapping) -> MainSettings {
    let (y, mut sec) = Section::read::<MainYaml>(top.file, top.loc, &["main"], map);
    let command = sec
        .take(
            "command",
            y.command,
            "`main.command` must be an argv list or a shell string",
            "e.g. command: [\"./main-session.sh\"] (it runs in the workspace root)",
        )
        .map(|c| c.0);
    let prompt = sec
        .take(
            "prompt",
            y.prompt,
            "`main.prompt` must be the path of a prompt file",
            "e.g. prompt: MAIN.md (relative to the workspace root)",
        )
        .map(|p| p.0);
    let mut m = MainSettings {
        command,
        prompt,
        ..MainSettings::default()
    };
    for (key, field, slot) in [
        ("provider", y.provider, &mut m.provider),
        ("model", y.model, &mut m.model),
    ] {
        let help = "e.g. provider: anthropic";
        if let Some(n) = sec.take(key, field, format!("`main.{key}` must be a name"), help) {
            *slot = Some(n.0);
        }
    }
    if let Some(list) = sec.take(
        "context",
        y.context,
        "`main.context` must be a list",
        "e.g. context: [SOUL.md, USER.md, .working-memory/memory.md]",
    ) {
        m.context = list.0;
    }
    m.tools = sec
        .take(
            "tools",
            y.tools,
            "`main.tools` must be a list",
            "e.g. tools: [read_file, edit_file, complete_handoff, finish]",
        )
        .map(|l| l.0);
    let durations = [y.heartbeat, y.timeout, y.overdue_after];
    let counts = [
        y.max_wakes_per_minute,
        y.max_attempts,
        y.max_handoffs_per_wake,
    ];
    read_main_limits(&mut sec, y.history, y.max_turns, durations, counts, &mut m);
    sec.unknown_keys(MAIN_KEYS);
    top.extend("main", sec.finish());
    m
}

/// The limits of the main session: how much conversation it keeps, how long a wake may
/// take and how often one comes.
fn read_main_limits(
    sec: &mut Section,
    history: Field<u64>,
    max_turns: Field<Whole<1>>,
    [heartbeat, timeout, overdue_after]: [Field<String>; 3],
    counts: [Field<Whole<1>>; 3],
    m: &mut MainSettings,
) {
    if let Some(n) = sec.take(
        "history",
        history,
        "`main.history` must be a number of messages",
        "e.g. history: 40 (0 keeps no conversation between wakes)",
    ) {
        m.history = n.min(10_000) as usize;
    }
    if let Some(n) = sec.take(
        "max_turns",
        max_turns,
        "`main.max_turns` must be a whole number of at least 1",
        "e.g. max_turns: 30",
    ) {
        m.max_turns = n.saturating_u32();
    }
    m.heartbeat = positive_duration(sec, "heartbeat", heartbeat).or(m.heartbeat);
    m.timeout = positive_duration(sec, "timeout", timeout).unwrap_or(m.timeout);
    m.overdue_after =
        positive_duration(sec, "overdue_after", overdue_after).unwrap_or(m.overdue_after);
    let [wakes, attempts, per_wake] = counts;
    let mut count = |key: &str, f: Field<Whole<1>>| {
        let message = format!("`main.{key}` must be a whole number of at least 1");
        sec.take(key, f, message, "e.g. 60")
    };
    if let Some(n) = count("max_wakes_per_minute", wakes) {
        m.max_wakes_per_minute = n.saturating_u32();
    }
    if let Some(n) = count("max_attempts", attempts) {
        m.max_attempts = n.saturating_u32();
    }
    if let Some(n) = count("max_handoffs_per_wake", per_wake) {
        m.max_handoffs_per_wake = n.0.min(2000) as u32;
    }
}

/// `main.heartbeat`, `main.timeout` or `main.overdue_after`: a duration longer than zero.
fn positive_duration(sec: &mut Section, key: &str, f: Field<String>) -> Option<Duration> {
    match duration_of(f)? {
        DurationField::Ok(d) if !d.is_zero() => return Some(d),
        DurationField::Invalid(e) => sec.error(key, format!("main.{key}: {e}"), DURATION_HELP),
        _ => sec.error(
            key,
            format!("`main.{key}` must be a duration longer than zero"),
            DURATION_HELP,
        ),
    }
    None
}

/// The settings a running daemon cannot change without a restart, by loops.yaml key: the
/// concurrency limit sizes a semaphore shared by running work, the committer is started
/// once with its branch rule and author, the scheduler with its catch-up and pause rules.
pub fn restart_needed(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut differs = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    differs(
        old.max_concurrent_jobs != new.max_concurrent_jobs,
        "limits.max_concurrent_jobs",
    );
    differs(
        old.catch_up_stagger != new.catch_up_stagger,
        "limits.catch_up_stagger",
    );
    differs(
        old.pause_after_failures != new.pause_after_failures,
        "limits.pause_after_failures",
    );
    differs(old.git_commit != new.git_commit, "git.commit");
    differs(old.git_branch != new.git_branch, "git.branch");
    differs(
        old.git_follow_checkout != new.git_follow_checkout,
        "git.follow_checkout",
    );
    differs(
        old.author_name != new.author_name || old.author_email != new.author_email,
        "git.author",
    );
    keys
}

/// What a running daemon made of loops.yaml, kept in `.loops/settings.json` for `loops
/// status`: when it last applied the file, an edit it refused (the last good settings
/// stay in force), and the changed settings that wait for a restart.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SettingsReport {
    pub pid: u32,
    pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub rejected: Option<RejectedEdit>,
    #[serde(default)]
    pub restart_needed: Vec<String>,
}

/// An edit of loops.yaml the daemon did not apply, and why (each problem with its place).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RejectedEdit {
    pub at: chrono::DateTime<chrono::Utc>,
    pub errors: Vec<String>,
}

impl SettingsReport {
    /// The report of the live daemon of `ws`, if it wrote one.
    pub fn read(ws: &Workspace) -> Option<SettingsReport> {
        let text = std::fs::read_to_string(ws.layout().settings_report()).ok()?;
        let r: SettingsReport = serde_json::from_str(&text).ok()?;
        // Written by a process that has ended: what it said may no longer be true.
        Path::new(&format!("/proc/{}", r.pid)).exists().then_some(r)
    }

    pub fn write(&self, ws: &Workspace) {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        let path = ws.layout().settings_report();
        if let Err(e) = crate::fsutil::atomic_replace(&path, text.as_bytes()) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}
/// Learns (src/secrets.rs) the secret-looking `env:` values of every loop under
/// `domains_dir`, so that running one loop redacts another's token that a hostile
/// command or tool read from its config.yaml. Unreadable configs are skipped: `loops
/// check` reports them.
pub fn learn_env_secrets(domains_dir: &Path) {
    let Ok(read) = std::fs::read_dir(domains_dir) else {
        return;
    };
    for e in read.filter_map(|e| e.ok()) {
        let Ok(text) = std::fs::read_to_string(e.path().join("config.yaml")) else {
            continue;
        };
        let Ok(v) = yaml_serde::from_str::<yaml_serde::Value>(&text) else {
            continue;
        };
        let Some(env) = v.get("env").and_then(yaml_serde::Value::as_mapping) else {
            continue;
        };
        crate::secrets::learn(
            env.iter()
                .filter(|(k, _)| k.as_str().is_some_and(crate::secrets::looks_secret))
                .filter_map(|(_, v)| yaml_scalar(v)),
        );
    }
}

pub use crate::config_fields::yaml_scalar;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_fields::{field_names, same_keys};

    #[test]
    fn the_keys_in_messages_are_the_keys_read() {
        same_keys(field_names::<SettingsYaml>(), TOP_KEYS);
        same_keys(field_names::<LimitsYaml>(), LIMIT_KEYS);
        same_keys(field_names::<GitYaml>(), GIT_KEYS);
        same_keys(field_names::<RecordsYaml>(), RECORD_KEYS);
        same_keys(field_names::<UiYaml>(), UI_KEYS);
        same_keys(
            field_names::<crate::remote_config::RemoteYaml>(),
            crate::remote_config::REMOTE_KEYS,
        );
        same_keys(field_names::<MainYaml>(), MAIN_KEYS);
    }
}
