//! Which paths the agent's file tools may read or write.
//!
//! Paths come from a model, so every one is treated as hostile: it is checked as written
//! (no `..`, no home folders, no drive letters, no absolute paths outside the workspace)
//! and again after symbolic links are resolved, because what a tool touches is the real
//! file, not the name it was given. The rules:
//!
//! - `.git/` is never read or written; `.loops/` (the runner's own files) is never
//!   written, and read only by the main session.
//! - An isolated loop (a minion) reads everything else except what is private to the main
//!   session (`SOUL.md`, `USER.md`, `.working-memory/`), and writes only its own
//!   `domains/<loop>/` (but not its `config.yaml`), `drafts/<loop>/`, and new `*.md`
//!   handoffs directly in `inbox/`.
//! - The main session writes anywhere else in the workspace.
//!
//! A check and the file operation that follows are two system calls, so a process that
//! swaps a folder for a symbolic link in between could still win the race; the threat
//! here is a model asking for the wrong path, which is stopped completely.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

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
    #[error("refused to {verb} {path}: {what} is private to the main session; an isolated loop may read the rest of the workspace")]
    Private {
        path: String,
        what: &'static str,
        verb: &'static str,
    },
    #[error("refused to write {path}: {allowed}")]
    NotWritable { path: String, allowed: String },
    #[error("refused to write {path}: it already exists, and a handoff in the inbox is never overwritten; write a new file with another name, such as inbox/<loop>-<topic>.md")]
    InboxExists { path: String },
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

/// Confines paths to one workspace, for one scope.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The canonical root: every real path is compared against it.
    root: PathBuf,
    /// The root as the runner named it, which may go through a symbolic link; absolute
    /// paths spelled with it are inside the workspace too.
    given_root: PathBuf,
    scope: Scope,
}

impl Sandbox {
    pub fn new(root: &Path, scope: Scope) -> Sandbox {
        let canonical = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        Sandbox {
            root: canonical,
            given_root: root.to_path_buf(),
            scope,
        }
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
        if access == Access::Write {
            self.allow_write(&rel, &real, &shown)?;
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
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
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
        let is = |c: &String, name: &str| c.eq_ignore_ascii_case(name);
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
        if is(top, ".loops") && (access == Access::Write || isolated) {
            return Err(SandboxError::Protected {
                path: shown.to_string(),
                area: ".loops",
                owner: "the runner",
                verb: if access == Access::Write {
                    "written"
                } else {
                    "read by an isolated loop"
                },
            });
        }
        if isolated {
            let private = if is(top, "SOUL.md") {
                Some("SOUL.md")
            } else if is(top, "USER.md") {
                Some("USER.md")
            } else if is(top, ".working-memory") {
                Some(".working-memory/")
            } else {
                None
            };
            if let Some(what) = private {
                return Err(SandboxError::Private {
                    path: shown.to_string(),
                    what,
                    verb: if access == Access::Write {
                        "write"
                    } else {
                        "read"
                    },
                });
            }
        }
        Ok(())
    }

    /// The areas a scope may write, judged on the real path.
    fn allow_write(&self, rel: &[String], real: &Path, shown: &str) -> Result<(), SandboxError> {
        let not_writable = |allowed: String| SandboxError::NotWritable {
            path: shown.to_string(),
            allowed,
        };
        if rel.is_empty() {
            return Err(not_writable(
                "it is the workspace root folder; name a file inside it".into(),
            ));
        }
        let (loop_name, own_domain) = match &self.scope {
            Scope::Isolated { loop_name } => (loop_name, true),
            Scope::Job { name } => (name, false),
            Scope::Main => return Ok(()),
        };
        let areas = if own_domain {
            format!(
                "an isolated loop may write only under domains/{loop_name}/ and drafts/{loop_name}/, \
                 or create a new .md handoff directly in inbox/"
            )
        } else {
            format!(
                "an agent job may write only under drafts/{loop_name}/, or create a new .md handoff directly in inbox/"
            )
        };
        let parts: Vec<&str> = rel.iter().map(String::as_str).collect();
        match parts.as_slice() {
            ["domains", name, rest @ ..] | ["drafts", name, rest @ ..]
                if *name == loop_name.as_str()
                    && !rest.is_empty()
                    && (own_domain || parts[0] == "drafts") =>
            {
                // config.yaml says which session a loop runs in and which tools it gets:
                // a minion that could edit it would promote itself to the main session.
                if parts[0] == "domains"
                    && rest.len() == 1
                    && rest[0].eq_ignore_ascii_case("config.yaml")
                {
                    return Err(not_writable(format!(
                        "a loop's config.yaml sets its session and tools, so an isolated loop cannot change it; keep what you need in domains/{loop_name}/state.md"
                    )));
                }
                Ok(())
            }
            ["inbox", name] => {
                if !name.ends_with(".md") || name.starts_with('.') || name.len() <= 3 {
                    return Err(not_writable(format!(
                        "a handoff in inbox/ is a .md file whose name does not start with '.'; {areas}"
                    )));
                }
                match fs::symlink_metadata(real) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Ok(_) => Err(SandboxError::InboxExists {
                        path: shown.to_string(),
                    }),
                    Err(source) => Err(SandboxError::Io {
                        path: shown.to_string(),
                        source,
                    }),
                }
            }
            ["inbox", _, _, ..] => Err(not_writable(format!(
                "inbox/ subfolders belong to the runner and the main session; {areas}"
            ))),
            _ => Err(not_writable(areas)),
        }
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
