//! Which paths the agent's file tools may read or write, and the opening of them.
//!
//! Paths come from a model, so every one is treated as hostile: it is checked as written
//! (no `..`, no home folders, no drive letters, no absolute paths outside the workspace)
//! and again after symbolic links are resolved, because what a tool touches is the real
//! file, not the name it was given. The rules:
//!
//! - `.git/` is never read or written; `.loops/` (the runner's own files) is never
//!   written, and read only by the main session.
//! - No scope writes what a run will execute: loops.yaml, any loop's `config.yaml`, and
//!   every file a config runs ([`super::executables`]); nor git's own `.gitignore`,
//!   `.gitattributes` and `.gitmodules`; nor anything in `inbox/` (handoffs are made by
//!   `create_handoff`, which sets who wrote them and runs the guard). Files the tools
//!   write never carry an exec bit.
//! - An isolated loop (a minion) reads only its own `domains/<loop>/`, its own
//!   `drafts/<loop>/` and what its config.yaml lists under `reads:`, and writes only its
//!   own domain (not its `config.yaml`, and its `prompt.md` only with `edit_prompt: true`)
//!   and its drafts.
//! - An agent job reads the workspace except what is private to the main session
//!   (`SOUL.md`, `USER.md`, `.working-memory/`, every `main.context` path), other loops'
//!   drafts, `inbox/done/` and `.env` files; it writes only its `drafts/<name>/`.
//! - The main session reads and writes the rest of the workspace.
//!
//! The check names a real path with no symbolic link in it; the operation then opens that
//! path beneath the workspace root with the kernel refusing any link on the way
//! ([`loops_core::beneath`]). A folder swapped for a link between the check and the open makes
//! the open fail; it never leads outside.

use loops_core::beneath::Beneath;
use loops_core::layout::RUNTIME_DIR;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// What a tool is about to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Whose run the tools serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A minion: its own domain, its drafts and new handoffs; nothing private.
    Isolated { loop_name: String },
    /// An ad-hoc agent job: reads like a minion; writes only `drafts/<name>/` and new
    /// handoffs (it has no domain folder of its own).
    Job { name: String },
    /// The main session: the whole workspace except git's and the runner's folders.
    Main,
}

impl Scope {
    /// The folders this scope writes files under, workspace-relative and ending in `/`;
    /// `None` for the main session, which writes the whole workspace but what no scope
    /// writes. The sandbox allows exactly these ([`Sandbox::resolve`]) and the prompt
    /// names exactly these (`context::loop_preamble`, `context::job_preamble`): one
    /// value, so what a model is told and what it may do cannot drift apart.
    pub fn writable_areas(&self) -> Option<Vec<String>> {
        match self {
            Scope::Isolated { loop_name } => Some(vec![
                format!("domains/{loop_name}/"),
                format!("drafts/{loop_name}/"),
            ]),
            Scope::Job { name } => Some(vec![format!("drafts/{name}/")]),
            Scope::Main => None,
        }
    }

    /// Who the scope is, in a refusal: "an isolated loop", "an agent job".
    fn who(&self) -> &'static str {
        match self {
            Scope::Isolated { .. } => "an isolated loop",
            Scope::Job { .. } => "an agent job",
            Scope::Main => "the main session",
        }
    }
}

/// A path the sandbox refused. The messages go to the model, so each says what was
/// refused and what would be allowed; none of them includes a file's contents.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no path given; name a file relative to the workspace root, such as domains/<loop>/state.md")]
    Empty,
    #[error("refused path {path:?}: {why}; name a file relative to the workspace root with '/' between folders, such as domains/<loop>/state.md")]
    Malformed { path: String, why: &'static str },
    #[error("refused path {path:?}: '..' is not allowed; name the file from the workspace root instead, such as domains/<loop>/state.md")]
    ParentDir { path: String },
    #[error("refused path {path:?}: it is outside the workspace; name a file relative to the workspace root, such as domains/<loop>/state.md")]
    Outside { path: String },
    #[error("refused path {path}: {link} is a symbolic link that leads outside the workspace; tools only reach files inside it")]
    SymlinkOutside { path: String, link: String },
    #[error("refused path {path}: {link} is a symbolic link to something that does not exist; name the real file instead")]
    BrokenSymlink { path: String, link: String },
    #[error("refused path {path}: {area}/ belongs to {owner} and is never {verb} by a tool")]
    Protected {
        path: String,
        area: &'static str,
        owner: &'static str,
        verb: &'static str,
    },
    #[error("refused to {verb} {path}: {what} is private to the main session; a loop's config.yaml may list what else it needs under `reads:`")]
    Private {
        path: String,
        what: &'static str,
        verb: &'static str,
    },
    #[error("refused to write {path}: {allowed}")]
    NotWritable { path: String, allowed: String },
    #[error("refused to read {path}: {allowed}")]
    NotReadable { path: String, allowed: String },
    #[error("refused to write {path}: {what} runs it, and no model may change what a run executes; to propose a change, describe it in a handoff to the person (create_handoff with to: person), who applies it")]
    Executable { path: String, what: String },
    #[error("refused to write {path}: handoffs are made with create_handoff, never written into inbox/ with the file tools (create_handoff records who wrote it)")]
    Inbox { path: String },
    #[error("could not look at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl From<SandboxError> for super::ToolError {
    fn from(e: SandboxError) -> Self {
        super::ToolError::new(e.to_string())
    }
}

/// What the workspace's configs say about the walls, read once when a sandbox is made
/// (a run cannot change them: no model writes a config).
#[derive(Debug, Default)]
pub struct Walls {
    /// Files some config runs, and what runs each.
    pub executables: super::executables::Executables,
    /// loops.yaml `main.context`: the main session's identity and memory.
    pub main_context: Vec<Vec<String>>,
    /// The isolated loop's `reads:` (paths, folders or globs from the root).
    pub reads: Vec<String>,
    /// The isolated loop's `edit_prompt: true`.
    pub edit_prompt: bool,
}

impl Walls {
    /// Reads the walls for `scope` from the configs under `root`.
    pub fn load(root: &Path, scope: &Scope) -> Walls {
        Walls {
            executables: super::executables::find(root),
            ..Walls::for_reading(root, scope)
        }
    }

    /// The walls that decide what `scope` may read, without the executables (which only
    /// writes need, and which take a read of every loop's config).
    pub fn for_reading(root: &Path, scope: &Scope) -> Walls {
        let yaml = |p: PathBuf| -> Option<yaml_serde::Value> {
            yaml_serde::from_str(&fs::read_to_string(p).ok()?).ok()
        };
        let strings = |v: Option<&yaml_serde::Value>| -> Vec<String> {
            v.and_then(|v| v.as_sequence())
                .map(|s| {
                    s.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let ws = yaml(root.join("loops.yaml"));
        let context = match ws
            .as_ref()
            .and_then(|y| y.get("main"))
            .and_then(|m| m.get("context"))
        {
            Some(c) => strings(Some(c)),
            None => loops_core::workspace::DEFAULT_MAIN_CONTEXT
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let mut walls = Walls {
            main_context: context
                .iter()
                .map(|c| names_of(c))
                .filter(|c| !c.is_empty())
                .collect(),
            ..Walls::default()
        };
        if let Scope::Isolated { loop_name } = scope {
            if let Some(cfg) = yaml(root.join("domains").join(loop_name).join("config.yaml")) {
                walls.reads = strings(cfg.get("reads"));
                walls.edit_prompt = cfg.get("edit_prompt").and_then(|v| v.as_bool()) == Some(true);
            }
        }
        walls
    }
}

/// A path's plain names as written ('/'-separated, `./` and empty parts dropped).
fn names_of(p: &str) -> Vec<String> {
    p.trim()
        .trim_end_matches('/')
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

/// Confines paths to one workspace, for one scope.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The canonical root: every real path is compared against it.
    root: PathBuf,
    /// The root as the runner named it, which may go through a symbolic link; absolute
    /// paths spelled with it are inside the workspace too.
    given_root: PathBuf,
    scope: Scope,
    walls: Arc<Walls>,
    /// The root opened once, for every open beneath it (`None` if it could not be opened;
    /// every operation then fails with that error).
    beneath: Option<Arc<Beneath>>,
}

impl Sandbox {
    /// A sandbox for `scope`, its walls read from the workspace's configs now.
    pub fn new(root: &Path, scope: Scope) -> Sandbox {
        let walls = Walls::load(root, &scope);
        Sandbox::with_walls(root, scope, walls)
    }

    pub fn with_walls(root: &Path, scope: Scope, walls: Walls) -> Sandbox {
        let canonical = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let beneath = Beneath::open(&canonical).ok().map(Arc::new);
        Sandbox {
            root: canonical,
            given_root: root.to_path_buf(),
            scope,
            walls: Arc::new(walls),
            beneath,
        }
    }

    pub fn walls(&self) -> &Walls {
        &self.walls
    }

    /// Opens a path [`Self::resolve`] returned, beneath the root, refusing any symbolic
    /// link on the way (one swapped in since the check included).
    pub fn open_read(&self, real: &Path) -> io::Result<fs::File> {
        let (b, rel) = self.beneath_rel(real)?;
        b.open_read(rel).map_err(refusal)
    }

    /// Reads at most `max` bytes of a path [`Self::resolve`] returned, with its size.
    pub fn read_prefix(&self, real: &Path, max: u64) -> io::Result<(Vec<u8>, u64)> {
        let f = self.open_read(real)?;
        let size = f.metadata()?.len();
        let mut bytes = Vec::with_capacity(size.min(max) as usize);
        f.take(max).read_to_end(&mut bytes)?;
        Ok((bytes, size))
    }

    /// The file's metadata, without following a link (`None`: it does not exist).
    pub fn metadata(&self, real: &Path) -> io::Result<Option<rustix::fs::Stat>> {
        let (b, rel) = self.beneath_rel(real)?;
        b.metadata(rel).map_err(refusal)
    }

    /// Replaces a path [`Self::resolve`] allowed for writing, atomically and beneath the
    /// root. The file keeps its read and write bits but never an exec bit: text a model
    /// wrote is never a program.
    pub fn write(&self, real: &Path, bytes: &[u8]) -> io::Result<()> {
        let mode = self
            .metadata(real)
            .ok()
            .flatten()
            .map(|st| st.st_mode & 0o666)
            .filter(|m| *m != 0)
            .unwrap_or(0o644);
        let (b, rel) = self.beneath_rel(real)?;
        b.write_atomic(rel, bytes, mode).map_err(refusal)
    }

    fn beneath_rel<'a>(&'a self, real: &'a Path) -> io::Result<(&'a Beneath, &'a Path)> {
        let b = self.beneath.as_deref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("the workspace {} cannot be opened", self.root.display()),
            )
        })?;
        let rel = real.strip_prefix(&self.root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the path is outside the workspace",
            )
        })?;
        Ok((b, rel))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The absolute real path for `path`, if this scope may read or write it.
    pub fn resolve(&self, path: &str, access: Access) -> Result<PathBuf, SandboxError> {
        let asked = self.lexical(path)?;
        let asked_shown = join(&asked);
        // Deny rules hold for the name as written too: a `.loops` that is a symbolic link
        // into the workspace is still the runner's folder.
        self.deny(&asked, &asked_shown, access)?;

        let real = self.real_path(&asked, &asked_shown)?;
        // A real path is canonical: only the canonical root can be its prefix.
        let rel = real
            .strip_prefix(&self.root)
            .ok()
            .and_then(plain_names)
            .ok_or_else(|| SandboxError::SymlinkOutside {
                path: asked_shown.clone(),
                link: asked_shown.clone(),
            })?;
        let real_shown = join(&rel);
        let shown = if rel == asked {
            asked_shown
        } else {
            format!("{asked_shown} (a symbolic link to {real_shown})")
        };
        self.deny(&rel, &shown, access)?;
        match access {
            Access::Write => self.allow_write(&rel, &shown)?,
            Access::Read => self.allow_read(&rel, &shown)?,
        }
        Ok(real)
    }

    /// `abs` relative to the workspace, '/' separated, for showing to the model ("." for
    /// the root itself; a path outside the workspace is shown as it is).
    pub fn relative(&self, abs: &Path) -> String {
        match self.components_of(abs) {
            Some(c) if c.is_empty() => ".".to_string(),
            Some(c) => join(&c),
            None => abs.display().to_string(),
        }
    }

    /// The components of `abs` below the root, if it is inside the workspace (spelled
    /// from the canonical root, or from the root as given).
    fn components_of(&self, abs: &Path) -> Option<Vec<String>> {
        let rest = abs
            .strip_prefix(&self.root)
            .or_else(|_| abs.strip_prefix(&self.given_root))
            .ok()?;
        plain_names(rest)
    }

    /// The path's plain-name components below the root, with every form of escape refused
    /// before the file system is consulted.
    fn lexical(&self, path: &str) -> Result<Vec<String>, SandboxError> {
        let malformed = |why| SandboxError::Malformed {
            path: path.to_string(),
            why,
        };
        if path.trim().is_empty() {
            return Err(SandboxError::Empty);
        }
        if path.contains('\0') {
            return Err(malformed("it contains a NUL byte"));
        }
        if path.chars().any(char::is_control) {
            return Err(malformed("it contains a control character"));
        }
        if path.contains('\\') {
            return Err(malformed("it contains a backslash"));
        }
        if path.split('/').any(|c| c == "..") {
            return Err(SandboxError::ParentDir {
                path: path.to_string(),
            });
        }
        let rel: Vec<String> = if path.starts_with('/') {
            let p = Path::new(path);
            let rest = p
                .strip_prefix(&self.root)
                .or_else(|_| p.strip_prefix(&self.given_root))
                .map_err(|_| SandboxError::Outside {
                    path: path.to_string(),
                })?;
            rest.components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect()
        } else {
            path.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
                .collect()
        };
        // Judged on the names below the root, however the path was spelled (`./~/x`,
        // `<root>/~/x`, `<root>/ `): the tools show a file by its workspace-relative name,
        // and a name they show must be one they take back.
        if rel.iter().any(|c| c.trim().is_empty()) {
            return Err(malformed("a folder or file name in it is only spaces"));
        }
        if let Some(first) = rel.first() {
            if first.starts_with('~') {
                return Err(malformed(
                    "'~' (a home folder) is not part of the workspace",
                ));
            }
            let b = first.as_bytes();
            if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
                return Err(malformed("a drive letter is not part of the workspace"));
            }
        }
        Ok(rel)
    }

    /// Walks `rel` from the root one component at a time, resolving every symbolic link
    /// on the way, so the answer is the file that would really be touched. Components past
    /// the last existing one are kept as the plain names they are.
    fn real_path(&self, rel: &[String], shown: &str) -> Result<PathBuf, SandboxError> {
        let mut real = self.root.clone();
        for (i, name) in rel.iter().enumerate() {
            let next = real.join(name);
            match fs::symlink_metadata(&next) {
                Ok(md) if md.file_type().is_symlink() => {
                    let link = join(&rel[..=i]);
                    match fs::canonicalize(&next) {
                        Ok(target) if target.starts_with(&self.root) => real = target,
                        Ok(_) => {
                            return Err(SandboxError::SymlinkOutside {
                                path: shown.to_string(),
                                link,
                            })
                        }
                        // Dangling, or a loop of links. Writing through it would create
                        // its target wherever that is, so it is refused either way.
                        Err(_) => {
                            return Err(if self.link_target_inside(&next) {
                                SandboxError::BrokenSymlink {
                                    path: shown.to_string(),
                                    link,
                                }
                            } else {
                                SandboxError::SymlinkOutside {
                                    path: shown.to_string(),
                                    link,
                                }
                            })
                        }
                    }
                }
                Ok(_) => real = next,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || rustix::io::Errno::from_io_error(&e)
                            == Some(rustix::io::Errno::NOTDIR) =>
                {
                    // Nothing exists from here on, so nothing below can be a link; the
                    // operation itself reports the missing file or the file-as-folder.
                    for rest in &rel[i..] {
                        real.push(rest);
                    }
                    return Ok(real);
                }
                Err(source) => {
                    return Err(SandboxError::Io {
                        path: shown.to_string(),
                        source,
                    })
                }
            }
        }
        Ok(real)
    }

    /// Whether a link that cannot be resolved at least names a place inside the
    /// workspace (judged by its text alone), to tell the model which mistake it made.
    fn link_target_inside(&self, link: &Path) -> bool {
        let Ok(target) = fs::read_link(link) else {
            return false;
        };
        let base = link.parent().unwrap_or(&self.root);
        let mut p = if target.is_absolute() {
            PathBuf::new()
        } else {
            base.to_path_buf()
        };
        for c in target.components() {
            match c {
                Component::ParentDir => {
                    p.pop();
                }
                Component::CurDir => {}
                other => p.push(other.as_os_str()),
            }
        }
        p.starts_with(&self.root)
    }

    /// Areas closed whatever the scope allows elsewhere.
    fn deny(&self, rel: &[String], shown: &str, access: Access) -> Result<(), SandboxError> {
        let isolated = matches!(self.scope, Scope::Isolated { .. } | Scope::Job { .. });
        // A `.git` anywhere (a nested repository too) holds hooks and config git acts on.
        if rel.iter().any(|c| is(c, ".git")) {
            return Err(SandboxError::Protected {
                path: shown.to_string(),
                area: ".git",
                owner: "git",
                verb: if access == Access::Write {
                    "written"
                } else {
                    "read"
                },
            });
        }
        let Some(top) = rel.first() else {
            return Ok(());
        };
        if is(top, RUNTIME_DIR) && (access == Access::Write || isolated) {
            return Err(SandboxError::Protected {
                path: shown.to_string(),
                area: RUNTIME_DIR,
                owner: "the runner",
                verb: if access == Access::Write {
                    "written"
                } else {
                    "read by an isolated loop"
                },
            });
        }
        Ok(())
    }

    /// What a scope may read, judged on the name as written and on the real path.
    fn allow_read(&self, rel: &[String], shown: &str) -> Result<(), SandboxError> {
        match &self.scope {
            Scope::Main => Ok(()),
            Scope::Isolated { loop_name } => self.isolated_read(loop_name, rel, shown),
            Scope::Job { name } => self.job_read(name, rel, shown),
        }
    }

    /// A minion reads its own domain and drafts and what `reads:` lists; the folders
    /// above those may be listed, so it can find its way.
    fn isolated_read(&self, me: &str, rel: &[String], shown: &str) -> Result<(), SandboxError> {
        if self.granted(rel) {
            return Ok(());
        }
        let own = matches!(rel, [area, name, ..] if (area == "domains" || area == "drafts") && name == me);
        if own && !rel.iter().any(|c| is_env_file(c)) {
            return Ok(());
        }
        if self.above_readable(me, rel) {
            return Ok(());
        }
        if let Some(what) = self.private(rel) {
            return Err(SandboxError::Private {
                path: shown.to_string(),
                what,
                verb: "read",
            });
        }
        Err(SandboxError::NotReadable {
            path: shown.to_string(),
            allowed: format!(
                "an isolated loop reads only domains/{me}/, drafts/{me}/ and the paths its config.yaml lists under `reads:` (a person adds them there)"
            ),
        })
    }

    /// Whether `rel` is a folder on the way to something the minion may read.
    fn above_readable(&self, me: &str, rel: &[String]) -> bool {
        let own = [
            vec!["domains".to_string(), me.to_string()],
            vec!["drafts".to_string(), me.to_string()],
        ];
        let grants = self.walls.reads.iter().map(|g| names_of(g));
        own.into_iter().chain(grants).any(|area| {
            // A glob's folders are reachable up to its first wildcard.
            let fixed: Vec<&String> = area.iter().take_while(|c| !is_glob(c)).collect();
            rel.len() < area.len()
                && rel.len() <= fixed.len()
                && rel.iter().zip(fixed).all(|(a, b)| a == b)
        })
    }

    /// Whether the loop's `reads:` lists `rel` (a path, a folder above it, or a glob).
    fn granted(&self, rel: &[String]) -> bool {
        self.walls.reads.iter().any(|g| {
            let g = names_of(g);
            if g.iter().any(|c| is_glob(c)) {
                glob_match(&g.join("/"), &rel.join("/"))
            } else {
                !g.is_empty() && rel.starts_with(&g)
            }
        })
    }

    fn job_read(&self, me: &str, rel: &[String], shown: &str) -> Result<(), SandboxError> {
        if let Some(what) = self.private(rel) {
            return Err(SandboxError::Private {
                path: shown.to_string(),
                what,
                verb: "read",
            });
        }
        let why = match rel {
            [d, name, ..] if d == "drafts" && name != me => {
                Some("other loops' drafts are theirs and the main session's")
            }
            [i, d, ..] if i == "inbox" && d == "done" => {
                Some("inbox/done/ holds the main session's finished work")
            }
            _ if rel.iter().any(|c| is_env_file(c)) => Some(".env files hold secrets"),
            _ => None,
        };
        match why {
            Some(why) => Err(SandboxError::NotReadable {
                path: shown.to_string(),
                allowed: format!(
                    "{why}; an agent job reads the rest of the workspace and its own drafts/{me}/"
                ),
            }),
            None => Ok(()),
        }
    }

    /// What is private to the main session: SOUL.md, USER.md, .working-memory/ and
    /// every `main.context` path.
    fn private(&self, rel: &[String]) -> Option<&'static str> {
        let top = rel.first()?;
        if is(top, "SOUL.md") {
            Some("SOUL.md")
        } else if is(top, "USER.md") {
            Some("USER.md")
        } else if is(top, ".working-memory") {
            Some(".working-memory/")
        } else if self.walls.main_context.iter().any(|c| rel.starts_with(c)) {
            Some("a main.context file")
        } else {
            None
        }
    }

    /// The areas a scope may write, judged on the name as written and on the real path.
    fn allow_write(&self, rel: &[String], shown: &str) -> Result<(), SandboxError> {
        let not_writable = |allowed: String| SandboxError::NotWritable {
            path: shown.to_string(),
            allowed,
        };
        if rel.is_empty() {
            return Err(not_writable(
                "it is the workspace root folder; name a file inside it".into(),
            ));
        }
        self.never_written(rel, shown)?;
        let Some(areas) = self.scope.writable_areas() else {
            return Ok(());
        };
        let inside = areas.iter().any(|a| {
            let area = names_of(a);
            rel.len() > area.len() && rel.starts_with(&area)
        });
        if !inside {
            return Err(not_writable(format!(
                "{} may write only under {}; hand work to others with create_handoff",
                self.scope.who(),
                areas.join(" and ")
            )));
        }
        if let (Scope::Isolated { loop_name }, [d, name, file]) = (&self.scope, rel) {
            if d == "domains"
                && name == loop_name
                && is(file, "prompt.md")
                && !self.walls.edit_prompt
            {
                return Err(not_writable(format!(
                    "prompt.md is this loop's instructions, and a loop may change them only when its config.yaml says `edit_prompt: true` (a person sets that); keep what you learn in domains/{loop_name}/state.md"
                )));
            }
        }
        Ok(())
    }

    /// What no scope writes: what a run executes, git's own files, and the inbox.
    fn never_written(&self, rel: &[String], shown: &str) -> Result<(), SandboxError> {
        let not_writable = |allowed: String| SandboxError::NotWritable {
            path: shown.to_string(),
            allowed,
        };
        if let Some(git_file) = rel
            .iter()
            .find(|c| is(c, ".gitignore") || is(c, ".gitattributes") || is(c, ".gitmodules"))
        {
            return Err(not_writable(format!(
                "{git_file} tells git what to track and how, so no model writes it (it could hide a run's changes from history); a person edits it"
            )));
        }
        if let Some(env) = rel.iter().find(|c| is_env_file(c)) {
            return Err(not_writable(format!(
                "{env} is an environment file: programs load it as settings and secrets, so no model writes it; a person edits it"
            )));
        }
        let joined = rel.join("/");
        if rel.len() == 1 && is(&rel[0], "loops.yaml") {
            return Err(SandboxError::Executable {
                path: shown.to_string(),
                what: "the runner (loops.yaml sets providers, tools, commands and what is allowed)"
                    .into(),
            });
        }
        if matches!(rel, [d, _, c] if d == "domains" && is(c, "config.yaml")) {
            return Err(SandboxError::Executable {
                path: shown.to_string(),
                what: "the runner (a loop's config.yaml sets its session, tools, gate and command)"
                    .into(),
            });
        }
        if let Some(what) = self.walls.executables.get(&joined) {
            return Err(SandboxError::Executable {
                path: shown.to_string(),
                what: what.clone(),
            });
        }
        if rel.first().is_some_and(|t| is(t, "inbox")) {
            return Err(SandboxError::Inbox {
                path: shown.to_string(),
            });
        }
        Ok(())
    }
}

fn is(c: &str, name: &str) -> bool {
    c.eq_ignore_ascii_case(name)
}

/// `.env`, `.env.local`, `prod.env`: files that hold secrets by convention.
fn is_env_file(c: &str) -> bool {
    let c = c.to_ascii_lowercase();
    c == ".env" || c.starts_with(".env.") || c.ends_with(".env")
}

fn is_glob(c: &str) -> bool {
    c.contains(['*', '?', '['])
}

/// A `reads:` glob against a path: `*` within one folder, `**` across folders; a glob
/// that matches a folder grants what is below it.
fn glob_match(glob: &str, path: &str) -> bool {
    let Ok(re) = super::glob::glob_regex(glob) else {
        return false;
    };
    let parts: Vec<&str> = path.split('/').collect();
    (1..=parts.len()).any(|n| re.is_match(&parts[..n].join("/")))
}

/// An open the kernel refused (a link on the way) as a permission error with a reason,
/// so a raced swap reads as a refusal, not as a missing file.
fn refusal(e: io::Error) -> io::Error {
    if loops_core::beneath::is_refusal(&e) {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "refused: a symbolic link appeared on the way to the file (the tools never follow one that was not there when the path was checked)",
        )
    } else {
        e
    }
}

/// The components of a relative path, if all of them are plain names.
fn plain_names(rest: &Path) -> Option<Vec<String>> {
    rest.components()
        .map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

fn join(parts: &[String]) -> String {
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// The scope a handoff's paths are judged in: that of whoever really wrote it. A loop's
/// handoff may name only what that loop could read; a handoff whose writer the runner did
/// not record is a stranger's, read like an agent job named after its claimed `from:`.
pub fn scope_of_handoff(root: &Path, h: &loops_core::handoff::Handoff) -> Scope {
    match h.written_by.as_deref() {
        Some("main") => Scope::Main,
        Some(w) if loops_core::handoff::valid_id(w) => match loop_session(root, w) {
            Some(false) => Scope::Isolated {
                loop_name: w.to_string(),
            },
            // A loop that runs in the main session wrote it with the main session's reach.
            Some(true) => Scope::Main,
            None => Scope::Main,
        },
        // The person, or the runner itself (`loops handoff create`, a paused-loop note).
        Some(_) => Scope::Main,
        None => Scope::Job {
            name: h.from.clone(),
        },
    }
}

/// A sandbox that reads as the writer of `h` would.
fn reader_of(root: &Path, h: &loops_core::handoff::Handoff) -> Sandbox {
    let scope = scope_of_handoff(root, h);
    let walls = Walls::for_reading(root, &scope);
    Sandbox::with_walls(root, scope, walls)
}

/// Whether the loop `name` runs in the main session (`None`: there is no such loop).
fn loop_session(root: &Path, name: &str) -> Option<bool> {
    let text = fs::read_to_string(root.join("domains").join(name).join("config.yaml")).ok()?;
    let v: yaml_serde::Value = yaml_serde::from_str(&text).unwrap_or(yaml_serde::Value::Null);
    Some(v.get("session").and_then(|s| s.as_str()) == Some("main"))
}

/// Checks every path a handoff names, as its writer's scope would be checked at the
/// moment of use. The error is the reason written beside a rejected handoff.
pub fn check_handoff_paths(root: &Path, h: &loops_core::handoff::Handoff) -> Result<(), String> {
    let Some(d) = &h.draft else { return Ok(()) };
    let sb = reader_of(root, h);
    sb.resolve(d, Access::Read).map(|_| ()).map_err(|e| {
        format!(
            "its `draft: {d}` was refused ({e}); written by {}. A draft is a file of the workspace its writer may read, such as drafts/<loop>/<name>.md",
            h.author()
        )
    })
}

/// At most `max` bytes of a handoff's draft and its size, read beneath the workspace root
/// in its writer's scope (`Ok(None)`: it names none).
pub fn read_draft(
    root: &Path,
    h: &loops_core::handoff::Handoff,
    max: u64,
) -> Result<Option<(String, u64)>, String> {
    let Some(d) = &h.draft else { return Ok(None) };
    let sb = reader_of(root, h);
    let real = sb.resolve(d, Access::Read).map_err(|e| e.to_string())?;
    let (bytes, size) = sb.read_prefix(&real, max).map_err(|e| e.to_string())?;
    Ok(Some((String::from_utf8_lossy(&bytes).into_owned(), size)))
}
