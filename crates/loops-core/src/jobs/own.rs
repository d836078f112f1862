//! Which of the files that changed during a run are the run's own.
//!
//! The workspace is a person's repository, and they may be editing it while a loop runs.
//! At the start of a run the runner notes which files in the loop's areas are dirty
//! against HEAD (the person's uncommitted edits) and keeps their content; after the run
//! it sorts the changed paths:
//!
//! - a path that was clean at the start and that the run wrote is committed as it is;
//! - a path that was dirty at the start and that the run wrote is committed with only the
//!   run's change from its start content, merged onto HEAD's blob (the committer does
//!   the merge, see `history::stage`); when that cannot be done it is held back;
//! - a path the run did not write is held back: for a prompt loop, any path its tools
//!   did not report writing; for a command loop, the loop's own definition
//!   (`config.yaml`, `prompt.md`). Everything else a command loop's folder gained or
//!   changed during the run counts as the command's: which process wrote a file is not
//!   something the runner can see.
//!
//! A held-back path stays in the work tree as it is, uncommitted, and is named in the run
//! record's `held_back`.

use crate::layout::Layout;
use crate::runs::HeldBack;
use git2::Repository;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Dirty files up to this size keep their start content, so the run's part of a later
/// change can be told from the person's; a larger one that changes is held back.
pub const KEEP_MAX: u64 = 4 << 20;

/// A file that differed from HEAD when the run started.
#[derive(Debug, Clone)]
enum Dirty {
    /// Its text then, the base the run's own change is measured from.
    Text(Vec<u8>),
    /// Not in HEAD: all of it is the person's, not yet committed.
    Untracked,
    /// Too large or not text to keep; the reason says which.
    Unkept(&'static str),
}

/// The person's uncommitted files in a run's areas at its start.
#[derive(Debug, Default)]
pub struct StartState {
    dirty: HashMap<PathBuf, Dirty>,
}

impl StartState {
    /// Notes which of `files` (absolute, regular files) differ from HEAD in the
    /// repository holding the workspace at `root`. Without a repository nothing is dirty:
    /// nothing is committed then either.
    pub fn read<'a>(root: &Path, files: impl Iterator<Item = &'a PathBuf>) -> StartState {
        let mut dirty = HashMap::new();
        let Ok(repo) = Repository::discover(root) else {
            return StartState { dirty };
        };
        let Some(workdir) = repo.workdir().map(|w| w.canonicalize().unwrap_or(w.into())) else {
            return StartState { dirty };
        };
        let tree = repo.head().ok().and_then(|h| h.peel_to_tree().ok());
        let index = repo.index().ok();
        // The runner's waiting commits are in the workspace's `.loops/`, which is not at
        // the repository's top when the workspace is a folder inside it.
        let queued = queued_by_runner(&Layout::of(root), &workdir);
        for abs in files {
            let Ok(rel) = abs.strip_prefix(&workdir) else {
                continue;
            };
            if is_queued_as_it_is(&queued, abs, rel) {
                continue;
            }
            if let Some(d) = dirty_against_head(&repo, tree.as_ref(), index.as_ref(), abs, rel) {
                dirty.insert(abs.clone(), d);
            }
        }
        StartState { dirty }
    }
}

/// What the runner's own commits still waiting in `.loops/commits/` (git was busy: a
/// rebase, a merge, a lock) will commit: the path relative to `workdir` (the repository's
/// work tree) to the blob the run left there, or `None` when the waiting commit recorded
/// no content. A file dirty only because of them is the runner's work, not the person's.
fn queued_by_runner(layout: &Layout, workdir: &Path) -> HashMap<PathBuf, Option<git2::Oid>> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(layout.commits_dir()) else {
        return out;
    };
    let mut files: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    // Oldest first (the names are ULIDs), so a later run's content wins.
    files.sort();
    for f in files {
        let Some(v) = std::fs::read(&f)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            continue;
        };
        for p in v["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
        {
            if let Ok(rel) = Path::new(p).strip_prefix(workdir) {
                out.entry(rel.to_path_buf()).or_insert(None);
            }
        }
        for s in v["snapshot"].as_array().into_iter().flatten() {
            let (Some(rel), Some(blob)) = (s[0].as_str(), s[1].as_str()) else {
                continue;
            };
            out.insert(PathBuf::from(rel), git2::Oid::from_str(blob).ok());
        }
    }
    out
}

/// Whether `abs` is exactly what a waiting commit of the runner's will commit.
fn is_queued_as_it_is(
    queued: &HashMap<PathBuf, Option<git2::Oid>>,
    abs: &Path,
    rel: &Path,
) -> bool {
    match queued.get(rel) {
        None => false,
        Some(None) => true,
        Some(Some(blob)) => git2::Oid::hash_file(git2::ObjectType::Blob, abs).ok() == Some(*blob),
    }
}

impl StartState {
    /// The files that were dirty at the start (absolute).
    pub fn dirty_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.dirty.keys().cloned().collect();
        v.sort();
        v
    }

    /// A run of this loop was interrupted (killed) before it could commit: what became
    /// dirty since that run started is its work, not the person's, and is committed by this
    /// run as its own. What was already dirty when it started stays the person's.
    pub fn adopt_interrupted(&mut self, dirty_then: &[PathBuf]) {
        self.dirty.retain(|p, _| dirty_then.contains(p));
    }
}

/// What `abs` is against HEAD, `None` when it is what HEAD holds (or git ignores it).
fn dirty_against_head(
    repo: &Repository,
    tree: Option<&git2::Tree>,
    index: Option<&git2::Index>,
    abs: &Path,
    rel: &Path,
) -> Option<Dirty> {
    let m = abs.symlink_metadata().ok().filter(|m| m.is_file())?;
    let Some(in_head) = tree.and_then(|t| t.get_path(rel).ok()).map(|e| e.id()) else {
        // An ignored file is never committed, so it needs no protecting.
        return (!repo.is_path_ignored(rel).unwrap_or(false)).then_some(Dirty::Untracked);
    };
    // git's own shortcut: an index entry that is HEAD's blob and has the file's size and
    // mtime means the file is that blob, without reading it.
    let clean_by_stat = index.and_then(|i| i.get_path(rel, 0)).is_some_and(|e| {
        e.id == in_head
            && u64::from(e.file_size) == m.len()
            && i64::from(e.mtime.seconds()) == m.mtime()
            && i64::from(e.mtime.nanoseconds()) == m.mtime_nsec()
    });
    if clean_by_stat {
        return None;
    }
    if m.len() > KEEP_MAX {
        let same = git2::Oid::hash_file(git2::ObjectType::Blob, abs).ok() == Some(in_head);
        return (!same).then_some(Dirty::Unkept("larger than 4 MiB"));
    }
    let bytes = std::fs::read(abs).ok()?;
    if git2::Oid::hash_object(git2::ObjectType::Blob, &bytes).ok() == Some(in_head) {
        return None;
    }
    Some(if bytes.contains(&0) {
        Dirty::Unkept("not text")
    } else {
        Dirty::Text(bytes)
    })
}

/// Who made a run's changes, as far as the runner can tell.
pub enum Writer<'a> {
    /// A command: every change in its areas but the loop's definition files, or, when it
    /// listed what it wrote in `$LOOPS_WROTE`, only those.
    Command {
        definition: Vec<PathBuf>,
        reported: Option<Vec<PathBuf>>,
    },
    /// A prompt loop's tools, which report each file they write.
    Tools(&'a [PathBuf]),
}

/// A run's changed paths, sorted by whose they are.
#[derive(Debug, Default)]
pub struct Attributed {
    /// The run's, committed as they are.
    pub commit: Vec<PathBuf>,
    /// The run's, but the person had uncommitted edits in them at the start (the start
    /// content): only the run's change is committed.
    pub own_hunks: Vec<(PathBuf, Vec<u8>)>,
    /// Not committed, and why.
    pub held: Vec<(PathBuf, String)>,
}

impl Attributed {
    /// Every path committed, whole or in part.
    pub fn committed(&self) -> Vec<PathBuf> {
        let mut all = self.commit.clone();
        all.extend(self.own_hunks.iter().map(|(p, _)| p.clone()));
        all.sort();
        all
    }
}

/// Sorts the paths that changed during a run (see the module's documentation).
pub fn attribute(changed: Vec<PathBuf>, start: &StartState, writer: &Writer) -> Attributed {
    let mut out = Attributed::default();
    for p in changed {
        let not_written = match writer {
            Writer::Command { definition, .. } if definition.contains(&p) => {
                Some("the loop's own definition: a run never commits a change to it")
            }
            Writer::Command {
                reported: Some(r), ..
            } => (!r.contains(&p)).then_some(
                "changed during the run, but the command did not list it in $LOOPS_WROTE",
            ),
            Writer::Command { .. } => None,
            Writer::Tools(wrote) => (!wrote.contains(&p))
                .then_some("changed during the run, but not by the run's tools"),
        };
        if let Some(why) = not_written {
            out.held.push((p, why.into()));
            continue;
        }
        match start.dirty.get(&p) {
            None => out.commit.push(p),
            Some(Dirty::Text(base)) => out.own_hunks.push((p, base.clone())),
            Some(Dirty::Untracked) => out.held.push((
                p,
                "it was there, uncommitted, before the run: what is the run's cannot be told apart"
                    .into(),
            )),
            Some(Dirty::Unkept(what)) => out.held.push((
                p,
                format!("you had uncommitted edits in it, and it is {what}: the run's part cannot be told apart"),
            )),
        }
    }
    out
}

/// The files a command listed in `$LOOPS_WROTE` (absolute, `.` and `..` resolved by name),
/// or `None` when it listed nothing; the list is removed.
pub fn take_reported(list: &Path, cwd: &Path) -> Option<Vec<PathBuf>> {
    let text = std::fs::read_to_string(list).ok()?;
    let _ = std::fs::remove_file(list);
    Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| lexical(&cwd.join(l)))
            .collect(),
    )
}

/// `p` with `.` dropped and each `..` taking away the name before it, without looking at
/// the disk (a listed file may be gone).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The held-back paths as the run record lists them (workspace-relative).
pub fn records(ws: &crate::workspace::Workspace, held: &[(PathBuf, String)]) -> Vec<HeldBack> {
    held.iter()
        .map(|(p, why)| HeldBack {
            path: ws.relative(p).display().to_string(),
            why: why.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository in a temporary folder with `files` committed.
    fn repo_with(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let repo = Repository::init(&root).expect("init");
        let mut idx = repo.index().expect("index");
        for (rel, text) in files {
            std::fs::write(root.join(rel), text).expect("write");
            idx.add_path(Path::new(rel)).expect("add");
        }
        idx.write().expect("write index");
        let tree = repo
            .find_tree(idx.write_tree().expect("tree"))
            .expect("find");
        let sig = git2::Signature::now("t", "t@example.com").expect("sig");
        repo.commit(Some("HEAD"), &sig, &sig, "setup", &tree, &[])
            .expect("commit");
        (dir, root)
    }

    #[test]
    fn start_state_keeps_the_text_of_dirty_files_only() {
        let (_d, root) = repo_with(&[("clean.md", "a\n"), ("dirty.md", "b\n")]);
        std::fs::write(root.join("dirty.md"), "mine\nb\n").expect("edit");
        std::fs::write(root.join("new.md"), "new\n").expect("new");
        let files = [
            root.join("clean.md"),
            root.join("dirty.md"),
            root.join("new.md"),
        ];
        let s = StartState::read(&root, files.iter());
        assert!(!s.dirty.contains_key(&files[0]));
        assert!(matches!(s.dirty.get(&files[1]), Some(Dirty::Text(t)) if t == b"mine\nb\n"));
        assert!(matches!(s.dirty.get(&files[2]), Some(Dirty::Untracked)));
    }

    /// The committer keeps a commit git did not allow yet in the workspace's `.loops/`;
    /// with the workspace a folder inside the repository, that is not `<top>/.loops/`, and
    /// the file the waiting commit holds must still not be taken for the person's edit.
    #[test]
    fn a_waiting_runner_commit_is_found_in_a_workspace_inside_the_repository() {
        let (_d, top) = repo_with(&[("README.md", "top\n")]);
        let ws = top.join("sub").join("ws");
        let state = ws.join("domains").join("x").join("state.md");
        std::fs::create_dir_all(state.parent().expect("parent")).expect("mkdir");
        std::fs::write(&state, "the run's\n").expect("write");
        let blob = git2::Oid::hash_file(git2::ObjectType::Blob, &state).expect("hash");
        let rel = state.strip_prefix(&top).expect("inside");
        // As `history` defers one: absolute paths, and the blobs relative to the work tree.
        let waiting = serde_json::json!({
            "paths": [state],
            "message": "x: run",
            "since": "2026-01-01T00:00:00Z",
            "reason": "index.lock is held",
            "snapshot": [[rel, blob.to_string(), null]],
        });
        let commits = Layout::of(&ws).commits_dir();
        std::fs::create_dir_all(&commits).expect("mkdir");
        std::fs::write(
            commits.join("01JAAAAAAAAAAAAAAAAAAAAAAA.json"),
            waiting.to_string(),
        )
        .expect("write");
        let s = StartState::read(&ws, [state.clone()].iter());
        assert!(s.dirty_paths().is_empty(), "{:?}", s.dirty_paths());
        // A later edit of the person's is theirs again.
        std::fs::write(&state, "the run's\nmine\n").expect("edit");
        let s = StartState::read(&ws, [state.clone()].iter());
        assert_eq!(s.dirty_paths(), vec![state]);
    }

    #[test]
    fn attribute_sorts_by_writer_and_start_state() {
        let (_d, root) = repo_with(&[("s.md", "a\n")]);
        std::fs::write(root.join("s.md"), "mine\na\n").expect("edit");
        let s_md = root.join("s.md");
        let start = StartState::read(&root, [s_md.clone()].iter());
        let (cfg, other) = (root.join("config.yaml"), root.join("o.md"));
        let changed = vec![s_md.clone(), cfg.clone(), other.clone()];
        let cmd = Writer::Command {
            definition: vec![cfg.clone()],
            reported: None,
        };
        let a = attribute(changed.clone(), &start, &cmd);
        assert_eq!(a.commit, vec![other.clone()]);
        assert_eq!(a.own_hunks.len(), 1);
        assert_eq!(a.held.len(), 1);
        assert_eq!(a.held[0].0, cfg);
        let wrote = vec![s_md.clone()];
        let a = attribute(changed, &start, &Writer::Tools(&wrote));
        assert!(a.commit.is_empty());
        assert_eq!(a.committed(), vec![s_md]);
        assert_eq!(a.held.len(), 2);
    }

    #[test]
    fn a_reported_list_is_resolved_from_the_commands_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = dir.path().join("wrote");
        std::fs::write(&list, "state.md\n./a/../b.md\n\n/abs/c.md\n").expect("write");
        let cwd = Path::new("/ws/domains/x");
        let got = take_reported(&list, cwd).expect("a list");
        assert_eq!(
            got,
            vec![
                PathBuf::from("/ws/domains/x/state.md"),
                PathBuf::from("/ws/domains/x/b.md"),
                PathBuf::from("/abs/c.md"),
            ]
        );
        assert!(!list.exists(), "the list is removed");
        assert!(take_reported(&list, cwd).is_none());
    }
}
