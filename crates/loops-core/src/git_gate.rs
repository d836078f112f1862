//! When the committer may write to a repository it shares with a person, and the lock it
//! takes to do so.
//!
//! The person is the other writer. Git keeps its state in files (MERGE_HEAD, rebase-merge/,
//! unmerged index entries, `.git/index.lock`); a commit made in the middle of one of
//! those states lands where the person does not expect it, or breaks the command they
//! are in. So before every commit the committer asks [`check`] and holds the commit back
//! while anything says "busy", and it takes `.git/index.lock` exactly as git does
//! ([`IndexLock`]), so git and loops take turns on the index and on HEAD.

use crate::layout::Layout;
use git2::{Repository, RepositoryState};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why commits are held back for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// A merge, rebase, cherry-pick, revert or bisect is in progress.
    Operation(&'static str),
    /// The index has unmerged entries (a conflict the person has not resolved).
    Conflicts,
    /// HEAD names a commit, not a branch: a commit there would be reachable from nothing.
    Detached,
    /// The person checked out another branch than the one runs commit to.
    OtherBranch { home: String, current: String },
    /// A git process holds `.git/index.lock` (a `git commit` waiting on its editor).
    GitRunning(String),
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::Operation(op) => write!(f, "{op} in progress"),
            Hold::Conflicts => write!(f, "unresolved conflicts in the index"),
            Hold::Detached => write!(f, "HEAD is detached"),
            Hold::OtherBranch { home, current } => write!(
                f,
                "branch {current} is checked out; runs commit to {home} (set git.follow_checkout to follow checkouts)"
            ),
            Hold::GitRunning(who) => write!(f, "git is running ({who})"),
        }
    }
}

/// Which branch runs commit to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BranchRule {
    /// Only this branch (short name, e.g. `main`).
    Fixed(String),
    /// Whatever branch is checked out (never a detached HEAD).
    Follow,
}

/// The operation git is in the middle of, from libgit2's view and from the files git
/// leaves (libgit2 does not know every one of them, e.g. a bisect).
pub fn operation(repo: &Repository, git_dir: &Path) -> Option<&'static str> {
    let files: [(&str, &'static str); 6] = [
        ("MERGE_HEAD", "a merge"),
        ("rebase-merge", "a rebase"),
        ("rebase-apply", "a rebase"),
        ("CHERRY_PICK_HEAD", "a cherry-pick"),
        ("REVERT_HEAD", "a revert"),
        ("BISECT_LOG", "a bisect"),
    ];
    if let Some((_, what)) = files.iter().find(|(f, _)| git_dir.join(f).exists()) {
        return Some(what);
    }
    match repo.state() {
        RepositoryState::Clean => None,
        RepositoryState::Merge => Some("a merge"),
        RepositoryState::Revert | RepositoryState::RevertSequence => Some("a revert"),
        RepositoryState::CherryPick | RepositoryState::CherryPickSequence => Some("a cherry-pick"),
        RepositoryState::Bisect => Some("a bisect"),
        _ => Some("a rebase"),
    }
}

/// The branch HEAD points at (short name), or `None` when HEAD is detached. An unborn
/// branch (a repository without commits) is a branch.
pub fn current_branch(repo: &Repository) -> Option<String> {
    let head = repo.find_reference("HEAD").ok()?;
    let target = head.symbolic_target()?;
    Some(
        target
            .strip_prefix("refs/heads/")
            .unwrap_or(target)
            .to_string(),
    )
}

/// Why a commit must wait now, if it must (everything but the index lock, which
/// [`IndexLock::acquire`] decides).
pub fn check(repo: &Repository, git_dir: &Path, rule: &BranchRule) -> Option<Hold> {
    if let Some(op) = operation(repo, git_dir) {
        return Some(Hold::Operation(op));
    }
    if has_conflicts(git_dir) {
        return Some(Hold::Conflicts);
    }
    let Some(current) = current_branch(repo) else {
        return Some(Hold::Detached);
    };
    match rule {
        BranchRule::Fixed(home) if *home != current => Some(Hold::OtherBranch {
            home: home.clone(),
            current,
        }),
        _ => None,
    }
}

/// Git commands that move HEAD or a branch when they finish. A plain `git commit` does
/// not hold `.git/index.lock` while its editor is open: it reads HEAD when it starts and
/// fails at the end if HEAD moved meanwhile, so a commit by loops in between would
/// break it. Read-only commands (`git log` in a pager) hold nothing up.
const MOVES_HEAD: &[&str] = &[
    "commit",
    "merge",
    "pull",
    "rebase",
    "cherry-pick",
    "revert",
    "am",
    "stash",
    "reset",
    "checkout",
    "switch",
    "tag",
    "notes",
    "bisect",
];

/// Git commands that rewrite files in the work tree while they run (a `git commit` only
/// reads them, so a run may go on while its editor is open).
const REWRITES_TREE: &[&str] = &[
    "merge",
    "pull",
    "rebase",
    "cherry-pick",
    "revert",
    "am",
    "stash",
    "reset",
    "checkout",
    "switch",
    "restore",
];

/// A `git` process in the work tree running a command that will move HEAD (pid and
/// command), seen through /proc; without /proc nothing is seen.
pub fn git_at_work(workdir: &Path) -> Option<String> {
    git_running(workdir, MOVES_HEAD)
}

/// A `git` process in the work tree running a command that rewrites its files.
pub fn git_rewriting(workdir: &Path) -> Option<String> {
    git_running(workdir, REWRITES_TREE)
}

fn git_running(workdir: &Path, commands: &[&str]) -> Option<String> {
    let procs = std::fs::read_dir("/proc").ok()?;
    for e in procs.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let base = e.path();
        // Where a process works is one syscall (its name is three: open, read, close), and
        // almost no process works in the workspace: this scan runs before every run and
        // commit, over every process of the machine.
        if !std::fs::read_link(base.join("cwd")).is_ok_and(|c| c.starts_with(workdir)) {
            continue;
        }
        let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
        if comm.trim() != "git" {
            continue;
        }
        let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
        if let Some(sub) = subcommand(&cmdline).filter(|s| commands.contains(&s.as_str())) {
            return Some(format!("pid {pid}: git {sub}"));
        }
    }
    None
}

/// The git subcommand in a NUL-separated command line (`git -c k=v commit -m x`).
fn subcommand(cmdline: &[u8]) -> Option<String> {
    let mut args = cmdline
        .split(|b| *b == 0)
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).into_owned());
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" | "-C" | "--git-dir" | "--work-tree" | "--namespace" => {
                args.next();
            }
            _ if a.starts_with('-') || a.is_empty() => {}
            _ => return Some(a),
        }
    }
    None
}

/// Whether the index on disk has unmerged entries (read fresh: the repository's cached
/// index may be older than the person's last `git merge`).
pub fn has_conflicts(git_dir: &Path) -> bool {
    let path = git_dir.join("index");
    path.exists() && git2::Index::open(&path).is_ok_and(|i| i.has_conflicts())
}

/// `.git/index.lock`, taken the way git takes it (created exclusively; whoever created it
/// owns the index until it is renamed over `.git/index` or removed). Removed on drop.
pub struct IndexLock {
    git_dir: PathBuf,
    file: Option<std::fs::File>,
}

/// How long to wait for another git to let go of the index: its own index writes take
/// milliseconds; a lock held longer is a command in progress (an editor open).
const LOCK_TRIES: u32 = 25;
const LOCK_WAIT: Duration = Duration::from_millis(20);

impl IndexLock {
    /// Takes the lock, waiting a little if another process has it; `Ok(None)` when it
    /// stays taken.
    pub fn acquire(git_dir: &Path) -> std::io::Result<Option<IndexLock>> {
        let path = git_dir.join("index.lock");
        for attempt in 0..LOCK_TRIES {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Some(IndexLock {
                        git_dir: git_dir.to_path_buf(),
                        file: Some(file),
                    }))
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if attempt + 1 < LOCK_TRIES {
                        std::thread::sleep(LOCK_WAIT);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn lock_path(&self) -> PathBuf {
        self.git_dir.join("index.lock")
    }

    /// A copy of the index as it is now, for libgit2 to edit: read only while the lock is
    /// held, so a `git add` that finished before cannot be written back over.
    pub fn open_copy(&self) -> Result<git2::Index, git2::Error> {
        let copy = self.git_dir.join("loops-index.tmp");
        let _ = std::fs::remove_file(&copy);
        // libgit2 writes the copy through `<copy>.lock`; a runner killed in that write
        // leaves it, and every later write of the copy would fail on it. Nobody else
        // uses the copy while `.git/index.lock` is ours, so a lock found here is stale.
        let _ = std::fs::remove_file(self.git_dir.join("loops-index.tmp.lock"));
        match std::fs::copy(self.git_dir.join("index"), &copy) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(git2::Error::from_str(&format!(
                    "cannot copy the index: {e}"
                )))
            }
        }
        git2::Index::open(&copy)
    }

    /// Writes `index` (from [`IndexLock::open_copy`]) into the lock file and renames it
    /// over `.git/index`, as git commits an index update; this releases the lock.
    pub fn commit(mut self, index: &mut git2::Index) -> Result<(), git2::Error> {
        index.write()?;
        let copy = self.git_dir.join("loops-index.tmp");
        let io = |e: std::io::Error| git2::Error::from_str(&format!("cannot write the index: {e}"));
        let bytes = std::fs::read(&copy).map_err(io)?;
        let _ = std::fs::remove_file(&copy);
        // On any failure the lock file is still ours and is removed on drop: git must
        // never find a half-written index.lock left behind.
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| git2::Error::from_str("the index lock was already released"))?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(self.lock_path(), self.git_dir.join("index")).map_err(io)?;
        self.file = None;
        Ok(())
    }
}

impl Drop for IndexLock {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(self.lock_path());
        }
    }
}

/// What `.loops/commits/.held.json` says while commits are held, for `loops status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldReport {
    pub reason: String,
    pub since: chrono::DateTime<chrono::Utc>,
    pub pid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordedRule {
    pid: u32,
    rule: BranchRule,
}

/// The rule a live daemon recorded (not this process's own).
pub fn recorded_rule(layout: &Layout) -> Option<BranchRule> {
    let text = std::fs::read_to_string(layout.branch_rule()).ok()?;
    let r: RecordedRule = serde_json::from_str(&text).ok()?;
    let alive = r.pid != std::process::id() && Path::new(&format!("/proc/{}", r.pid)).exists();
    alive.then_some(r.rule)
}

/// Records the rule this daemon chose, so a `loops trigger` beside it follows the same one.
pub fn record_rule(layout: &Layout, rule: &BranchRule) {
    let r = RecordedRule {
        pid: std::process::id(),
        rule: rule.clone(),
    };
    let text = serde_json::to_string(&r).unwrap_or_default();
    let _ = crate::fsutil::atomic_replace(&layout.branch_rule(), text.as_bytes());
}

/// Runs waiting in `.loops/commits/`, and why, for `loops status`.
pub fn waiting(layout: &Layout) -> (usize, Option<HeldReport>) {
    let n = std::fs::read_dir(layout.commits_dir())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".json") && !name.starts_with('.')
        })
        .count();
    let held = std::fs::read_to_string(layout.commits_held())
        .ok()
        .and_then(|t| serde_json::from_str::<HeldReport>(&t).ok())
        // Written by a process that has ended: what it said may no longer be true.
        .filter(|h| Path::new(&format!("/proc/{}", h.pid)).exists());
    (n, held)
}

/// A git lock file no live process holds is taken as left by a git that crashed once it
/// is this old (younger, it may belong to a git that has only just started).
pub const STALE_LOCK_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// What to do about a git lock file that a git error names (`failed to lock file
/// '…/refs/heads/main.lock' for writing`): git takes them for milliseconds, so one that
/// stays was left by a git, or a loops, that was killed while holding it. The committer
/// removes such a file once no process holds it and it is [`STALE_LOCK_AGE`] old.
pub fn lock_help(message: &str) -> Option<String> {
    let path = message.split('\'').find(|part| part.ends_with(".lock"))?;
    Some(format!(
        "if no git command is running in this repository, a git or loops that was killed left {path}: loops removes it by itself once no process holds it and it is {}s old (the next commit or sync), or remove it now",
        STALE_LOCK_AGE.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_named_in_a_git_error_is_named_in_the_help() {
        let m = "failed to lock file '/w/.git/refs/heads/main.lock' for writing: ";
        let help = super::lock_help(m).expect("help");
        assert!(
            help.contains("/w/.git/refs/heads/main.lock") && help.contains("remove it"),
            "{help}"
        );
        assert_eq!(super::lock_help("object not found"), None);
    }

    #[test]
    fn subcommand_skips_global_options() {
        assert_eq!(
            subcommand(b"git\0-c\0user.name=x\0-C\0/w\0commit\0-m\0msg\0").as_deref(),
            Some("commit")
        );
        assert_eq!(
            subcommand(b"git\0--no-pager\0log\0").as_deref(),
            Some("log")
        );
        assert_eq!(subcommand(b"git\0").as_deref(), None);
    }

    #[test]
    fn a_branch_rule_holds_other_branches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        let here = current_branch(&repo).expect("an unborn branch is a branch");
        assert_eq!(
            check(&repo, repo.path(), &BranchRule::Fixed(here.clone())),
            None
        );
        assert_eq!(check(&repo, repo.path(), &BranchRule::Follow), None);
        assert!(matches!(
            check(&repo, repo.path(), &BranchRule::Fixed("elsewhere".into())),
            Some(Hold::OtherBranch { .. })
        ));
        std::fs::write(repo.path().join("MERGE_HEAD"), "x").expect("write");
        assert_eq!(
            check(&repo, repo.path(), &BranchRule::Follow),
            Some(Hold::Operation("a merge"))
        );
    }

    #[test]
    fn the_index_lock_is_exclusive_and_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = IndexLock::acquire(dir.path()).expect("io").expect("free");
        assert!(IndexLock::acquire(dir.path()).expect("io").is_none());
        drop(first);
        assert!(!dir.path().join("index.lock").exists());
        let lock = IndexLock::acquire(dir.path())
            .expect("io")
            .expect("free again");
        let mut idx = lock.open_copy().expect("an empty index");
        lock.commit(&mut idx).expect("written");
        assert!(dir.path().join("index").exists());
        assert!(!dir.path().join("index.lock").exists());
    }
}
