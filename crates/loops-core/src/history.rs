//! Git history: the committer that records every change a run makes, and `loops log`,
//! which reads it back through the commit trailers.
//!
//! A libgit2 `Repository` must not be shared across threads, so one thread owns it and
//! every commit goes through it, in order. A commit is built from HEAD's tree plus only
//! the paths the run touched — never from the index — so whatever a person has staged
//! or edited elsewhere stays out of it.

use crate::layout::Layout;
use chrono::{DateTime, TimeZone, Utc};
use git2::{ErrorCode, Index, IndexEntry, IndexTime, Oid, Repository, Signature};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("{0}: the git index is locked by another process")]
    IndexLocked(PathBuf),
    #[error("the committer has stopped")]
    Stopped,
    #[error("{0} is not inside a git repository")]
    NotARepository(PathBuf),
    /// The commit could not be made now (a lock another git holds, a read-only disk); it
    /// is kept and made, in order, as soon as git allows.
    #[error("commit deferred ({0}); it is kept and made as soon as git allows")]
    Deferred(String),
    /// Git is in a state a commit must not interrupt (see `git_gate`); the commit waits.
    #[error("commits held: {0}")]
    Held(crate::git_gate::Hold),
}

impl HistoryError {
    pub fn help(&self) -> Option<String> {
        match self {
            HistoryError::IndexLocked(p) => Some(format!(
                "another git command is running, or one crashed: if no git is running, remove {}",
                p.display()
            )),
            HistoryError::NotARepository(_) => {
                Some("run `git init` in the workspace (or create it with `loops init`)".into())
            }
            HistoryError::Deferred(why) => {
                Some(crate::git_gate::lock_help(why).unwrap_or_else(|| {
                    "nothing to do unless it lasts: .loops/daemon.jsonl says when it is committed"
                        .into()
                }))
            }
            HistoryError::Held(_) => Some(
                "nothing to do unless it lasts: .loops/daemon.jsonl says when it is committed"
                    .into(),
            ),
            HistoryError::Git(e) if e.code() == git2::ErrorCode::Locked => {
                crate::git_gate::lock_help(e.message())
            }
            _ => None,
        }
    }
}

/// A commit to make.
#[derive(Debug, Clone, Default)]
pub struct CommitRequest {
    /// Absolute paths the run touched (files that changed, appeared or disappeared).
    pub paths: Vec<PathBuf>,
    pub message: String,
    /// Files to commit with these contents, whatever is on disk at their path (a
    /// handoff committed before the rename that delivers it).
    pub contents: Vec<(PathBuf, Vec<u8>)>,
    /// Paths (also in `paths`) a person had uncommitted edits in when the run started,
    /// with what they held then: only the run's change from that content is committed,
    /// merged onto HEAD's blob, so the person's edits stay uncommitted in the work tree.
    pub own_hunks: Vec<(PathBuf, Vec<u8>)>,
    /// Where the committer tells which of `own_hunks` it left out, and why (the run's
    /// change overlaps the person's, or the file is gone).
    pub held_back: Option<HeldBackSink>,
}

/// Paths a commit left out, with the reason; filled by the committer thread.
pub type HeldBackSink = std::sync::Arc<std::sync::Mutex<Vec<(PathBuf, String)>>>;

impl CommitRequest {
    pub fn new(paths: Vec<PathBuf>, message: String) -> Self {
        CommitRequest {
            paths,
            message,
            ..Default::default()
        }
    }

    fn hold_back(&self, path: PathBuf, why: String) {
        if let Some(sink) = &self.held_back {
            if let Ok(mut v) = sink.lock() {
                v.push((path, why));
            }
        }
    }
}

type Reply = oneshot::Sender<Result<Option<Oid>, HistoryError>>;

/// What the committer thread is asked.
enum Ask {
    Commit(CommitRequest, Reply),
    /// Make what was deferred, if git allows it now; reply how many still wait.
    Flush(oneshot::Sender<usize>),
    /// Work on the repository that no commit may interleave with (a pull moving the
    /// branch and the work tree, src/remote.rs); it runs on the committer's thread.
    Exclusive(Box<dyn FnOnce(&Repository) + Send>),
}

/// A handle to the committer thread. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    tx: std_mpsc::Sender<Ask>,
}

impl Committer {
    /// Starts the committer for the repository holding `workspace`.
    pub fn start(
        workspace: &Path,
        fallback_name: &str,
        fallback_email: &str,
    ) -> Result<Committer, HistoryError> {
        Self::start_with(workspace, fallback_name, fallback_email, None, false)
    }

    /// Starts the committer with a branch rule: `rule` from loops.yaml when it names one;
    /// otherwise the rule a live daemon recorded, else the branch checked out now. A
    /// daemon (`record`) records its rule for the CLI commands that commit beside it.
    pub fn start_with(
        workspace: &Path,
        fallback_name: &str,
        fallback_email: &str,
        rule: Option<crate::git_gate::BranchRule>,
        record: bool,
    ) -> Result<Committer, HistoryError> {
        bound_object_cache();
        let repo = Repository::discover(workspace)
            .map_err(|_| HistoryError::NotARepository(workspace.to_path_buf()))?;
        if repo.workdir().is_none() {
            return Err(HistoryError::NotARepository(workspace.to_path_buf()));
        }
        let layout = Layout::of(workspace);
        let rule = rule
            .or_else(|| {
                (!record)
                    .then(|| crate::git_gate::recorded_rule(&layout))
                    .flatten()
            })
            .unwrap_or_else(|| match crate::git_gate::current_branch(&repo) {
                Some(b) => crate::git_gate::BranchRule::Fixed(b),
                // Started on a detached HEAD: the first branch checked out is as good as any.
                None => crate::git_gate::BranchRule::Follow,
            });
        if record {
            crate::git_gate::record_rule(&layout, &rule);
        }
        let (tx, rx) = std_mpsc::channel::<Ask>();
        let mut thread = CommitterThread {
            git_dir: repo
                .path()
                .canonicalize()
                .unwrap_or_else(|_| repo.path().to_path_buf()),
            workdir: repo
                .workdir()
                .map(|w| w.canonicalize().unwrap_or_else(|_| w.to_path_buf()))
                .unwrap_or_else(|| workspace.to_path_buf()),
            repo,
            name: fallback_name.to_string(),
            email: fallback_email.to_string(),
            journal: crate::journal::Journal::open(layout.root()),
            layout,
            deferred: VecDeque::new(),
            unsynced: Vec::new(),
            reported_holders: HashSet::new(),
            rule,
            held: None,
        };
        std::thread::Builder::new()
            .name("loops-committer".into())
            .spawn(move || thread.run(rx))
            .map_err(|_| HistoryError::Stopped)?;
        Ok(Committer { tx })
    }

    /// Commits from blocking code (a CLI command, a `spawn_blocking` task); never call it
    /// from async code, where it would block a worker.
    pub fn commit_blocking(&self, req: CommitRequest) -> Result<Option<Oid>, HistoryError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Ask::Commit(req, tx))
            .map_err(|_| HistoryError::Stopped)?;
        rx.blocking_recv().map_err(|_| HistoryError::Stopped)?
    }

    /// Commits from async code.
    pub async fn commit(&self, req: CommitRequest) -> Result<Option<Oid>, HistoryError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Ask::Commit(req, tx))
            .map_err(|_| HistoryError::Stopped)?;
        rx.await.map_err(|_| HistoryError::Stopped)?
    }

    /// Runs `work` on the committer's thread with its repository, between two commits, and
    /// returns what it returns. Blocking: never from async code. `work` must not commit
    /// through this committer (it would wait for itself).
    pub fn exclusive<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Repository) -> R + Send + 'static,
    ) -> Result<R, HistoryError> {
        let (tx, rx) = std_mpsc::channel();
        let job = Box::new(move |repo: &Repository| {
            let _ = tx.send(work(repo));
        });
        self.tx
            .send(Ask::Exclusive(job))
            .map_err(|_| HistoryError::Stopped)?;
        rx.recv().map_err(|_| HistoryError::Stopped)
    }

    /// Makes the deferred commits git allows now (a stopping daemon's last try, so a
    /// lock that cleared a moment ago does not leave them for the next start); returns
    /// how many still wait.
    pub async fn flush(&self) -> Result<usize, HistoryError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Ask::Flush(tx))
            .map_err(|_| HistoryError::Stopped)?;
        rx.await.map_err(|_| HistoryError::Stopped)
    }
}

/// What libgit2's object cache may hold, in bytes of raw objects (the parsed commits and
/// trees it keeps take about three times that on the heap). Its default, 256 MiB for the
/// process, is a bound a daemon never meets in practice: every commit adds a new commit and
/// new trees along its path, parsed (by `write_tree_to`, `find_tree`, the ref update) and
/// kept in the committer's repository for good, so memory grew by about 6 KB per commit, a
/// straight line (issue 16; heaptrack: all of it under `git_object__from_odb_object` /
/// `cache_store`). The objects read again are HEAD's unchanged trees, a few hundred KiB for
/// a workspace of hundreds of loops: 4 MiB holds them, and the rest is evicted.
pub const GIT_OBJECT_CACHE_BYTES: usize = 4 << 20;

/// Lowers libgit2's process-wide object-cache limit to [`GIT_OBJECT_CACHE_BYTES`], once.
fn bound_object_cache() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        crate::sys::git_bound_object_cache(GIT_OBJECT_CACHE_BYTES);
    });
}

/// How often the committer looks again at commits it had to defer and at index entries
/// it could not update.
const RETRY_EVERY: Duration = Duration::from_secs(2);
pub use crate::git_gate::STALE_LOCK_AGE;
/// Deferred commits kept at most; beyond this the oldest are given up (and said so).
const MAX_DEFERRED: usize = 1000;
/// A commit that could not be made when asked (a lock held by another git, a read-only
/// disk). Kept in order in memory and, when the disk allows, in `.loops/commits/`, so a
/// restart still makes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deferred {
    paths: Vec<PathBuf>,
    message: String,
    since: DateTime<Utc>,
    reason: String,
    /// While commits are held: what each file held when the run ended and what HEAD held
    /// for it then (blob ids). `git rebase --abort` and the like reset the work tree;
    /// this is how the run's change is put back once they are over.
    #[serde(default)]
    snapshot: Vec<(PathBuf, String, Option<String>)>,
    #[serde(skip)]
    file: Option<PathBuf>,
}

/// The committer thread's own state: the repository, and what is waiting for git.
struct CommitterThread {
    repo: Repository,
    git_dir: PathBuf,
    workdir: PathBuf,
    name: String,
    email: String,
    layout: Layout,
    journal: crate::journal::Journal,
    deferred: VecDeque<Deferred>,
    /// Paths whose index entries could not be brought up to date (the index was locked).
    unsynced: Vec<PathBuf>,
    /// (lock, holder pid) pairs already reported, so a long wait is reported once.
    reported_holders: HashSet<(PathBuf, u32)>,
    /// Which branch run commits go to.
    rule: crate::git_gate::BranchRule,
    /// Why commits are held now and since when, so a hold is said once, not per run.
    held: Option<(crate::git_gate::Hold, DateTime<Utc>)>,
}

/// Who holds a git lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: u32,
    pub command: String,
}

impl CommitterThread {
    fn run(&mut self, rx: std_mpsc::Receiver<Ask>) {
        self.load_deferred();
        self.load_intent();
        self.clear_stale_locks();
        loop {
            // Never blocked for good: a `loops trigger` beside this daemon may have queued
            // a commit it could not make (git was busy) in .loops/commits/.
            let msg = match rx.recv_timeout(RETRY_EVERY) {
                Ok(m) => Some(m),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
            self.load_deferred();
            let late = self.retry_deferred();
            if !self.unsynced.is_empty() {
                self.sync(Vec::new());
            }
            let (req, reply) = match msg {
                Some(Ask::Commit(req, reply)) => (req, reply),
                Some(Ask::Exclusive(work)) => {
                    // A sync moves the branch too: a lock a killed git left is cleared as
                    // a commit would clear it.
                    self.clear_stale_locks();
                    work(&self.repo);
                    continue;
                }
                Some(Ask::Flush(reply)) => {
                    if !self.deferred.is_empty() && self.clear_stale_locks() {
                        self.retry_deferred();
                    }
                    let _ = reply.send(self.deferred.len());
                    continue;
                }
                None => continue,
            };
            {
                let paths = req.paths.clone();
                let r = match self.commit(req) {
                    // A late commit just made holds this run's changes too (it commits
                    // what its paths hold now): that commit is where they are.
                    Ok(None) => Ok(late
                        .iter()
                        .rev()
                        .find(|(_, ps)| ps.iter().any(|p| paths.contains(p)))
                        .map(|(oid, _)| *oid)),
                    r => r,
                };
                let _ = reply.send(r);
            }
        }
    }

    fn commit(&mut self, req: CommitRequest) -> Result<Option<Oid>, HistoryError> {
        if let Some(last) = self.deferred.back() {
            // Older commits are still waiting: this one waits behind them, so the history
            // keeps the order things happened in.
            let reason = last.reason.clone();
            self.defer(req, reason.clone());
            if let Some((h, _)) = &self.held {
                return Err(HistoryError::Held(h.clone()));
            }
            return Err(HistoryError::Deferred(reason));
        }
        match self.try_commit(&req) {
            Err(HistoryError::Git(e)) if transient(&e) => {
                let reason = e.message().to_string();
                self.defer(req, reason.clone());
                Err(HistoryError::Deferred(reason))
            }
            Err(HistoryError::Held(h)) => {
                let reason = h.to_string();
                self.defer(req, reason.clone());
                Err(HistoryError::Held(h))
            }
            r => r,
        }
    }

    /// Takes `.git/index.lock` and asks whether git is in a state a commit must wait
    /// for; the lock is held through the commit and the index update, so no git command
    /// (a checkout, a merge, the person's `git commit`) starts in between.
    fn gate(&mut self) -> Result<crate::git_gate::IndexLock, HistoryError> {
        let lock = match self.index_lock()? {
            Some(l) => l,
            None => {
                let lock = self.git_dir.join("index.lock");
                let who = lock_holder(&lock, &self.workdir)
                    .map(|h| format!("pid {}, {}", h.pid, h.command))
                    .unwrap_or_else(|| "index.lock is taken".into());
                return Err(self.hold(crate::git_gate::Hold::GitRunning(who)));
            }
        };
        if let Some(h) = crate::git_gate::check(&self.repo, &self.git_dir, &self.rule) {
            return Err(self.hold(h));
        }
        // Looked for only once the lock is ours: a git that starts later finds the index
        // locked and stops at once, rather than after its editor closes.
        if let Some(who) = crate::git_gate::git_at_work(&self.workdir) {
            return Err(self.hold(crate::git_gate::Hold::GitRunning(who)));
        }
        if self.held.is_some() {
            self.release_hold();
            self.restore_held();
        }
        Ok(lock)
    }

    /// The blobs of the regular files among `paths`, written to the object database
    /// (objects only: no ref, no index, so nothing git is in the middle of is touched).
    fn snapshot(&self, paths: &[PathBuf]) -> Vec<(PathBuf, String, Option<String>)> {
        let mut out = Vec::new();
        let tree = self.repo.head().ok().and_then(|h| h.peel_to_tree().ok());
        let mut lookup = TreeLookup::new(&self.repo, tree.as_ref());
        for p in paths {
            let Ok(rel) = p.strip_prefix(&self.workdir) else {
                continue;
            };
            if rel.as_os_str().is_empty() || is_private(rel) {
                continue;
            }
            if !std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) {
                continue;
            }
            if let Some(id) = std::fs::read(p).ok().and_then(|b| self.repo.blob(&b).ok()) {
                let base = lookup.entry(rel).map(|(b, _)| b.to_string());
                out.push((rel.to_path_buf(), id.to_string(), base));
            }
        }
        out
    }

    /// Once a hold is over: puts back what the held runs appended to a file when git
    /// took it out of the work tree (a `rebase --abort` resets files to HEAD). Only
    /// appends are certain enough to put back; any other change is left as it is.
    fn restore_held(&mut self) {
        // Per file: what HEAD held when the first held run ended, and the last run's file.
        let mut held: std::collections::BTreeMap<PathBuf, (Option<String>, String)> =
            Default::default();
        for d in &self.deferred {
            for (rel, id, base) in &d.snapshot {
                held.entry(rel.clone())
                    .and_modify(|e| e.1 = id.clone())
                    .or_insert((base.clone(), id.clone()));
            }
        }
        let blob = |id: Option<&String>| -> Option<Vec<u8>> {
            let oid = Oid::from_str(id?).ok()?;
            Some(self.repo.find_blob(oid).ok()?.content().to_vec())
        };
        let mut writes = Vec::new();
        for (rel, (base, last)) in &held {
            let (Some(last), base) = (blob(Some(last)), blob(base.as_ref()).unwrap_or_default())
            else {
                continue;
            };
            if let Some(suffix) = restored(&self.workdir.join(rel), &base, &last) {
                writes.push((rel.clone(), suffix));
            }
        }
        for (rel, suffix) in writes {
            // Appended, not replaced: a run writing the file at this moment keeps its line.
            let put_back = crate::beneath::Beneath::open(&self.workdir)
                .and_then(|b| b.open_append(&rel))
                .and_then(|mut f| std::io::Write::write_all(&mut f, &suffix));
            match put_back {
                Ok(()) => {
                    tracing::info!(path = %rel.display(), "put back what held runs appended, which git had reset");
                    self.journal.record("held_restored", json!({"path": rel}));
                }
                Err(e) => {
                    tracing::warn!(path = %rel.display(), "cannot put back what held runs appended: {e}")
                }
            }
        }
    }

    /// `.git/index.lock`, after a short wait for another git; a lock a crashed git left
    /// is cleared (see [`Self::clear_stale_locks`]). `None`: a live git holds it.
    fn index_lock(&mut self) -> Result<Option<crate::git_gate::IndexLock>, HistoryError> {
        let io = |e: std::io::Error| {
            HistoryError::Git(git2::Error::new(
                ErrorCode::Locked,
                git2::ErrorClass::Os,
                format!("cannot take .git/index.lock: {e}"),
            ))
        };
        if let Some(l) = crate::git_gate::IndexLock::acquire(&self.git_dir).map_err(io)? {
            return Ok(Some(l));
        }
        if self.clear_stale_locks() {
            return crate::git_gate::IndexLock::acquire(&self.git_dir).map_err(io);
        }
        Ok(None)
    }

    /// Notes that commits are held, saying so once per reason (log, journal, and the file
    /// `loops status` reads).
    fn hold(&mut self, h: crate::git_gate::Hold) -> HistoryError {
        let reason = h.to_string();
        if self.held.as_ref().is_none_or(|(r, _)| *r != h) {
            let since = self.held.as_ref().map_or_else(Utc::now, |(_, s)| *s);
            tracing::warn!("commits held: {reason}; runs go on and are committed when it clears");
            self.journal
                .record("commits_held", json!({"reason": reason}));
            let report = crate::git_gate::HeldReport {
                reason: reason.clone(),
                since,
                pid: std::process::id(),
            };
            let text = serde_json::to_string(&report).unwrap_or_default();
            let _ = crate::fsutil::atomic_replace(&self.layout.commits_held(), text.as_bytes());
            self.held = Some((h.clone(), since));
        }
        HistoryError::Held(h)
    }

    fn release_hold(&mut self) {
        if let Some((reason, since)) = self.held.take() {
            let reason = reason.to_string();
            tracing::info!(
                "commits resume ({reason} since {} has cleared)",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            self.journal
                .record("commits_resumed", json!({"reason": reason, "since": since}));
            let _ = std::fs::remove_file(self.layout.commits_held());
        }
    }

    fn try_commit(&mut self, req: &CommitRequest) -> Result<Option<Oid>, HistoryError> {
        let touched: Vec<PathBuf> = req
            .paths
            .iter()
            .chain(req.contents.iter().map(|(p, _)| p))
            .cloned()
            .collect();
        let lock = self.gate()?;
        self.save_intent(&touched);
        let r = match commit_paths(&self.repo, req, &self.name, &self.email) {
            Err(HistoryError::Git(e)) if e.code() == ErrorCode::Locked => {
                if self.clear_stale_locks() {
                    commit_paths(&self.repo, req, &self.name, &self.email)
                } else {
                    Err(HistoryError::Git(e))
                }
            }
            r => r,
        };
        let (oid, synced) = match r {
            Err(HistoryError::Held(h)) => return Err(self.hold(h)),
            r => r?,
        };
        if synced.is_empty() {
            self.save_intent(&[]);
        } else {
            self.sync_locked(lock, synced);
        }
        Ok(oid)
    }

    /// Brings the index up to date for `paths` and for any left over from before; what
    /// cannot be done now (another git holds the index) is kept for later.
    fn sync(&mut self, paths: Vec<PathBuf>) {
        match self.index_lock() {
            // The index is not touched while git is mid-operation: its entries (conflict
            // stages among them) are the person's until it is over. Asked with the lock
            // held, so no merge can start in between.
            Ok(Some(lock))
                if crate::git_gate::operation(&self.repo, &self.git_dir).is_none()
                    && !crate::git_gate::has_conflicts(&self.git_dir) =>
            {
                self.sync_locked(lock, paths)
            }
            _ => self.keep_unsynced(paths),
        }
    }

    fn keep_unsynced(&mut self, paths: Vec<PathBuf>) {
        for p in paths {
            if !self.unsynced.contains(&p) {
                self.unsynced.push(p);
            }
        }
    }

    fn sync_locked(&mut self, lock: crate::git_gate::IndexLock, paths: Vec<PathBuf>) {
        let mut all = std::mem::take(&mut self.unsynced);
        for p in paths {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        match sync_index(&self.repo, lock, &all) {
            Ok(()) => self.save_intent(&[]),
            Err(e) => {
                tracing::warn!("git index not updated yet ({e}); trying again at the next commit");
                self.unsynced = all;
                self.save_intent(&[]);
            }
        }
    }

    /// Writes the paths whose index entries must follow HEAD (those left over, and
    /// `touched` by the commit about to be made); removes the file when there are none.
    /// Written before each commit and removed once the index is up to date, so a crash
    /// between a commit and the index update (or a long-held index lock) does not leave
    /// `git status` showing the runner's own committed files as staged changes.
    fn save_intent(&self, touched: &[PathBuf]) {
        let path = self.layout.index_sync();
        let mut all = self.unsynced.clone();
        for p in touched {
            let rel = p.strip_prefix(&self.workdir).unwrap_or(p);
            if rel.is_relative() && !rel.as_os_str().is_empty() && !all.iter().any(|a| a == rel) {
                all.push(rel.to_path_buf());
            }
        }
        if all.is_empty() {
            let _ = std::fs::remove_file(&path);
            return;
        }
        let text: Vec<String> = all
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let _ = crate::fsutil::atomic_replace(&path, text.join("\n").as_bytes());
    }

    /// Paths a crashed process committed without updating the index for.
    fn load_intent(&mut self) {
        let path = self.layout.index_sync();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                let p = PathBuf::from(l);
                if p.is_relative() && !is_private(&p) && !self.unsynced.contains(&p) {
                    self.unsynced.push(p);
                }
            }
        }
    }

    fn defer(&mut self, req: CommitRequest, reason: String) {
        // A deferred commit is made later from what is on disk then (and may outlive this
        // process): the run's part of a file a person was editing cannot be told then.
        for (p, _) in &req.own_hunks {
            req.hold_back(
                p.clone(),
                "you had uncommitted edits in it, and the commit had to wait: only the rest of the run's changes are committed".into(),
            );
        }
        let mut paths: Vec<PathBuf> = req
            .paths
            .iter()
            .filter(|p| !req.own_hunks.iter().any(|(o, _)| o == *p))
            .cloned()
            .collect();
        // A commit of given contents (a handoff before its delivery) becomes a commit of
        // whatever is at that path by the time git allows it.
        paths.extend(req.contents.into_iter().map(|(p, _)| p));
        let mut d = Deferred {
            paths,
            message: req.message,
            since: Utc::now(),
            reason,
            snapshot: Vec::new(),
            file: None,
        };
        if self.held.is_some() {
            d.snapshot = self.snapshot(&d.paths);
        }
        let subject = d.message.lines().next().unwrap_or("").to_string();
        if self.held.is_some() {
            // The hold itself was said once (see `hold`); each run waiting is not news.
            tracing::debug!("commit deferred ({}): {subject}", d.reason);
        } else {
            tracing::warn!("commit deferred ({}): {subject}", d.reason);
            let lower = d.reason.to_ascii_lowercase();
            if lower.contains("read-only file system") || lower.contains("no space left") {
                self.journal
                    .disk_error(&self.git_dir, &std::io::Error::other(d.reason.clone()));
            }
            self.journal.record(
                "commit_deferred",
                json!({"subject": subject, "reason": d.reason}),
            );
        }
        let file = self
            .layout
            .commits_dir()
            .join(format!("{}.json", ulid::Ulid::new()));
        let text = serde_json::to_string(&d).unwrap_or_default();
        if crate::fsutil::atomic_write(&file, text.as_bytes()).is_ok() {
            d.file = Some(file);
        }
        self.deferred.push_back(d);
        while self.deferred.len() > MAX_DEFERRED {
            if let Some(old) = self.deferred.pop_front() {
                let subject = old.message.lines().next().unwrap_or("").to_string();
                tracing::error!("gave up a commit deferred since {}: {subject}", old.since);
                self.journal.record(
                    "commit_dropped",
                    json!({"subject": subject, "since": old.since, "reason": old.reason}),
                );
                if let Some(f) = old.file {
                    let _ = std::fs::remove_file(f);
                }
            }
        }
    }

    /// Commits deferred by an earlier process (a crash before git allowed them) are made
    /// first, in the order they were asked for.
    fn load_deferred(&mut self) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.layout.commits_dir())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        files.sort();
        let known: HashSet<PathBuf> = self
            .deferred
            .iter()
            .filter_map(|d| d.file.clone())
            .collect();
        let before = self.deferred.len();
        for f in files.into_iter().filter(|f| !known.contains(f)) {
            match std::fs::read_to_string(&f)
                .ok()
                .and_then(|t| serde_json::from_str::<Deferred>(&t).ok())
            {
                Some(mut d) => {
                    d.file = Some(f);
                    self.deferred.push_back(d);
                }
                None => {
                    tracing::warn!("{}: not a deferred commit; removed", f.display());
                    let _ = std::fs::remove_file(&f);
                }
            }
        }
        if self.deferred.len() != before {
            // Files are named by ULID: their names are the order they were asked for.
            self.deferred
                .make_contiguous()
                .sort_by(|a, b| a.file.cmp(&b.file));
        }
    }

    /// Makes the deferred commits git allows now, oldest first; returns each commit made
    /// with its paths.
    fn retry_deferred(&mut self) -> Vec<(Oid, Vec<PathBuf>)> {
        let mut made = Vec::new();
        while let Some(d) = self.deferred.front() {
            let message = format!(
                "{}Deferred: {}\n",
                d.message,
                d.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            let req = CommitRequest::new(d.paths.clone(), message);
            match self.try_commit(&req) {
                Ok(oid) => {
                    let Some(d) = self.deferred.pop_front() else {
                        break;
                    };
                    let subject = d.message.lines().next().unwrap_or("").to_string();
                    match oid {
                        Some(oid) => {
                            tracing::info!(commit = %oid, "made a commit deferred since {}: {subject}", d.since.to_rfc3339())
                        }
                        None => tracing::info!(
                            "a commit deferred since {} had nothing left to commit: {subject}",
                            d.since.to_rfc3339()
                        ),
                    }
                    self.journal.record(
                        "commit_made",
                        json!({
                            "subject": subject,
                            "commit": oid.map(|o| o.to_string()),
                            "deferred_since": d.since,
                        }),
                    );
                    if let Some(f) = d.file {
                        let _ = std::fs::remove_file(f);
                    }
                    if let Some(oid) = oid {
                        made.push((oid, d.paths));
                    }
                }
                Err(HistoryError::Git(g)) if transient(&g) => {
                    if let Some(d) = self.deferred.front_mut() {
                        d.reason = g.message().to_string();
                    }
                    break;
                }
                Err(HistoryError::Held(h)) => {
                    if let Some(d) = self.deferred.front_mut() {
                        d.reason = h.to_string();
                    }
                    break;
                }
                Err(e) => {
                    // It can no longer succeed by waiting: say so, and let the rest go on.
                    let Some(d) = self.deferred.pop_front() else {
                        break;
                    };
                    let subject = d.message.lines().next().unwrap_or("").to_string();
                    tracing::error!(
                        "gave up a commit deferred since {}: {subject}: {e}",
                        d.since.to_rfc3339()
                    );
                    self.journal.record(
                        "commit_dropped",
                        json!({"subject": subject, "since": d.since, "reason": e.to_string()}),
                    );
                    if let Some(f) = d.file {
                        let _ = std::fs::remove_file(f);
                    }
                }
            }
        }
        made
    }

    /// Looks at the lock files a commit needs. One held by a live process is waited for
    /// (and reported once); one nobody holds that is older than [`STALE_LOCK_AGE`] was
    /// left by a git that crashed: it is removed, and that is recorded. Returns whether
    /// anything was removed.
    fn clear_stale_locks(&mut self) -> bool {
        let workdir = self.workdir.clone();
        let mut removed = false;
        for lock in lock_candidates(&self.repo, &self.git_dir) {
            let Ok(meta) = std::fs::symlink_metadata(&lock) else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            match lock_holder(&lock, &workdir) {
                // Our own index lock, held through the commit being made.
                Some(h) if h.pid == std::process::id() => {}
                // Reported once per holder: a long hold is one event, not one per retry.
                Some(h) if self.reported_holders.insert((lock.clone(), h.pid)) => {
                    tracing::warn!(
                        "{} is held by pid {} ({}): commits wait for it",
                        lock.display(),
                        h.pid,
                        h.command
                    );
                    self.journal.record(
                        "git_lock",
                        json!({"path": lock, "action": "waiting", "holder_pid": h.pid, "holder": h.command, "age_ms": age.as_millis() as u64}),
                    );
                }
                Some(_) => {}
                None if age >= STALE_LOCK_AGE => match std::fs::remove_file(&lock) {
                    Ok(()) => {
                        removed = true;
                        tracing::warn!(
                            "removed {}: no process holds it and it is {}s old (a git command crashed and left it)",
                            lock.display(),
                            age.as_secs()
                        );
                        self.journal.record(
                            "git_lock",
                            json!({"path": lock, "action": "removed", "age_ms": age.as_millis() as u64, "why": "no live process holds it"}),
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(
                        "{} looks stale but cannot be removed: {e}; remove it by hand if no git is running",
                        lock.display()
                    ),
                },
                None => {}
            }
        }
        removed
    }
}

/// What `file` should hold so the lines held runs appended (`last` is `base` plus them)
/// are not lost: the file as it is now with them appended, unless it has them already;
/// `None` to leave it as it is.
fn restored(file: &Path, base: &[u8], last: &[u8]) -> Option<Vec<u8>> {
    let added = last.strip_prefix(base)?;
    if added.is_empty() {
        return None;
    }
    let now = std::fs::read(file).ok()?;
    if now.windows(added.len()).any(|w| w == added) {
        return None;
    }
    let mut out = Vec::with_capacity(added.len() + 1);
    if !now.is_empty() && !now.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(added);
    Some(out)
}

/// The lock files a commit by the committer can meet: the index, HEAD, the current
/// branch, packed refs, and their reflogs.
fn lock_candidates(repo: &Repository, git_dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![
        git_dir.join("index.lock"),
        git_dir.join("HEAD.lock"),
        git_dir.join("packed-refs.lock"),
        git_dir.join("logs/HEAD.lock"),
    ];
    let branch = repo
        .find_reference("HEAD")
        .ok()
        .and_then(|h| h.symbolic_target().map(str::to_string));
    if let Some(b) = branch {
        out.push(git_dir.join(format!("{b}.lock")));
        out.push(git_dir.join("logs").join(format!("{b}.lock")));
    }
    out
}

/// The work tree of the git repository `dir` is in, first making `dir` a repository
/// (`git init`) if it is in none, as `loops init` does: a workspace is a git repository.
/// None for a bare repository, which has no work tree.
pub fn discover_or_init(dir: &Path) -> Result<Option<PathBuf>, git2::Error> {
    let repo = match Repository::discover(dir) {
        Ok(r) => r,
        Err(_) => Repository::init(dir)?,
    };
    Ok(repo.workdir().map(Path::to_path_buf))
}

/// The live process holding a git lock file, if one can be seen: one with the file open
/// (git and libgit2 keep it open while writing), or a `git` running inside the work tree
/// (git may close the file and keep the lock, e.g. while an editor is open). Without
/// `/proc` nothing can be seen, and only the lock's age decides.
pub fn lock_holder(lock: &Path, workdir: &Path) -> Option<LockHolder> {
    let procs = std::fs::read_dir("/proc").ok()?;
    for e in procs.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let base = e.path();
        let command = std::fs::read_to_string(base.join("comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        let holds = std::fs::read_dir(base.join("fd"))
            .into_iter()
            .flatten()
            .filter_map(|fd| fd.ok())
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == lock));
        let git_here = command == "git"
            && std::fs::read_link(base.join("cwd")).is_ok_and(|c| c.starts_with(workdir));
        if holds || git_here {
            return Some(LockHolder { pid, command });
        }
    }
    None
}

fn signature<'a>(repo: &Repository, name: &'a str, email: &'a str) -> Signature<'static> {
    // Like git itself: the environment's identity first, then git config, then ours.
    let from_env = |n: &str, e: &str| match (crate::secrets::var(n), crate::secrets::var(e)) {
        (Ok(n), Ok(e)) if !n.trim().is_empty() && !e.trim().is_empty() => {
            Signature::now(&n, &e).ok()
        }
        _ => None,
    };
    if let Some(sig) = from_env("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL")
        .or_else(|| from_env("GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"))
    {
        return sig;
    }
    repo.signature()
        .or_else(|_| Signature::now(name, email))
        .or_else(|_| Signature::now("loops", "loops@localhost"))
        .unwrap_or_else(|_| {
            // Signature::now only fails on invalid names; this one is valid by construction.
            Signature::new("loops", "loops@localhost", &git2::Time::new(0, 0))
                .expect("a constant signature is valid")
        })
}

/// Paths under these folders are never committed by a run.
fn is_private(rel: &Path) -> bool {
    rel.components()
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .is_some_and(|top| top == crate::layout::RUNTIME_DIR || top == ".git")
}

/// Whether `.gitignore` keeps `rel` out of a run's commit: only a file git does not track
/// yet. libgit2's ignore check matches tracked files too, so on its own a `*` in some
/// `.gitignore` would hide every later change to a tracked file from history; git itself
/// keeps committing changes to a tracked file whatever `.gitignore` says.
fn ignored_untracked(repo: &Repository, rel: &Path) -> bool {
    if !repo.is_path_ignored(rel).unwrap_or(false) {
        return false;
    }
    let in_head = repo
        .head()
        .ok()
        .and_then(|h| h.peel_to_tree().ok())
        .is_some_and(|t| t.get_path(rel).is_ok());
    let in_index = repo
        .index()
        .ok()
        .is_some_and(|i| i.get_path(rel, 0).is_some());
    !(in_head || in_index)
}

/// Makes the commit; returns it (None when there was nothing to commit) and the
/// workspace-relative paths whose index entries should now follow HEAD.
fn commit_paths(
    repo: &Repository,
    req: &CommitRequest,
    name: &str,
    email: &str,
) -> Result<(Option<Oid>, Vec<PathBuf>), HistoryError> {
    let Some(workdir) = repo.workdir().map(Path::to_path_buf) else {
        return Ok((None, Vec::new()));
    };
    let workdir = workdir.canonicalize().unwrap_or(workdir);
    let paths = CommitPaths::of(repo, req, workdir);
    if paths.rels.is_empty() && paths.buffers.is_empty() {
        return Ok((None, Vec::new()));
    }
    // Many files go into packs (see Blobs); the second handle keeps the in-memory
    // backend away from the committer's own repository, whose commits must be on disk.
    let bulk_repo = (paths.rels.len() + paths.buffers.len() >= BULK_FROM)
        .then(|| Repository::open(repo.path()).ok())
        .flatten();
    let bulk_odb = bulk_repo.as_ref().and_then(|r| r.odb().ok());
    let mempack = bulk_odb
        .as_ref()
        .and_then(|o| o.add_new_mempack_backend(1000).ok());
    let mut blobs = Blobs {
        repo,
        tree: crate::beneath::Beneath::open(&paths.workdir).ok(),
        bulk: bulk_repo.as_ref().zip(mempack.as_ref()),
        pending_bytes: 0,
        pending: Vec::new(),
    };
    commit_onto_head(repo, req, &paths, &mut blobs, name, email)
}

/// What one commit request names, relative to the work tree: private paths, paths
/// outside the work tree and untracked ignored files are left out.
struct CommitPaths<'q> {
    /// The work tree, canonical when it can be.
    workdir: PathBuf,
    /// Paths whose current state is committed, sorted, each once.
    rels: Vec<PathBuf>,
    /// Paths committed with the request's contents, whatever is on disk.
    buffers: Vec<(PathBuf, &'q [u8])>,
    /// What a path with a person's uncommitted edits held when the run started.
    bases: Vec<(PathBuf, &'q [u8])>,
}

impl<'q> CommitPaths<'q> {
    fn of(repo: &Repository, req: &'q CommitRequest, workdir: PathBuf) -> Self {
        let mut rels: Vec<PathBuf> = req
            .paths
            .iter()
            .filter_map(|p| p.strip_prefix(&workdir).ok().map(Path::to_path_buf))
            .filter(|r| !r.as_os_str().is_empty() && !is_private(r))
            .filter(|r| !ignored_untracked(repo, r))
            .collect();
        rels.sort();
        rels.dedup();
        let mut buffers = relative_contents(&req.contents, &workdir);
        buffers.retain(|(r, _)| !r.as_os_str().is_empty() && !is_private(r));
        let bases = relative_contents(&req.own_hunks, &workdir);
        CommitPaths {
            workdir,
            rels,
            buffers,
            bases,
        }
    }

    fn base_of(&self, rel: &Path) -> Option<&'q [u8]> {
        self.bases.iter().find(|(r, _)| r == rel).map(|(_, b)| *b)
    }

    /// The paths whose index entries follow HEAD once the commit is made. A held-back
    /// path's index entry is left as it is: the file is not what any commit holds, and
    /// the person's staging of it is theirs.
    fn synced(&self, held: &[(PathBuf, String)]) -> Vec<PathBuf> {
        let mut synced: Vec<PathBuf> = self
            .rels
            .iter()
            .filter(|r| !held.iter().any(|(h, _)| h == *r))
            .cloned()
            .collect();
        synced.extend(self.buffers.iter().map(|(p, _)| p.clone()));
        synced
    }
}

/// The `(path, bytes)` pairs under `workdir`, with their paths made relative to it.
fn relative_contents<'q>(
    contents: &'q [(PathBuf, Vec<u8>)],
    workdir: &Path,
) -> Vec<(PathBuf, &'q [u8])> {
    contents
        .iter()
        .filter_map(|(p, b)| {
            p.strip_prefix(workdir)
                .ok()
                .map(|r| (r.to_path_buf(), b.as_slice()))
        })
        .collect()
}

/// Commits `paths` onto the current HEAD, rebuilding on the new tip while another
/// writer moves it.
fn commit_onto_head(
    repo: &Repository,
    req: &CommitRequest,
    paths: &CommitPaths,
    blobs: &mut Blobs,
    name: &str,
    email: &str,
) -> Result<(Option<Oid>, Vec<PathBuf>), HistoryError> {
    // A concurrent writer (another loops process, a person's `git commit`) can move HEAD
    // between our read and our update; libgit2 refuses then, and we rebuild on the new tip.
    for attempt in 0..20 {
        let head = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let (tree_id, held) = write_tree(repo, paths, blobs, head.as_ref())?;
        let report_held = || {
            for (rel, why) in &held {
                req.hold_back(paths.workdir.join(rel), why.clone());
            }
        };
        if head.as_ref().map(|c| c.tree_id()) == Some(tree_id) {
            report_held();
            return Ok((None, Vec::new()));
        }
        let tree = repo.find_tree(tree_id)?;
        let sig = signature(repo, name, email);
        let parents: Vec<&git2::Commit> = head.iter().collect();
        // A last look as close to the ref update as it can be: a `git commit` that started
        // since the committer's first look has read HEAD and fails if it moves now.
        if let Some(who) = crate::git_gate::git_at_work(&paths.workdir) {
            return Err(HistoryError::Held(crate::git_gate::Hold::GitRunning(who)));
        }
        match repo.commit(Some("HEAD"), &sig, &sig, &req.message, &tree, &parents) {
            Ok(oid) => {
                report_held();
                return Ok((Some(oid), paths.synced(&held)));
            }
            // Another writer's ref update takes milliseconds; a lock that stays longer
            // is the committer's to look at (a crashed git's leftover, or a long hold).
            Err(e) if e.code() == ErrorCode::Locked && attempt >= 4 => return Err(e.into()),
            Err(e) if e.code() == ErrorCode::Modified || e.code() == ErrorCode::Locked => {
                std::thread::sleep(Duration::from_millis(10 * (attempt + 1)));
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(HistoryError::Git(git2::Error::new(
        ErrorCode::Locked,
        git2::ErrorClass::Reference,
        "HEAD kept moving while committing; gave up after 20 attempts",
    )))
}

/// The tree of `head` with `paths` staged onto it, written to the repository, and the
/// paths left out with the reason.
fn write_tree(
    repo: &Repository,
    paths: &CommitPaths,
    blobs: &mut Blobs,
    head: Option<&git2::Commit>,
) -> Result<(Oid, Vec<(PathBuf, String)>), HistoryError> {
    let mut idx = Index::new()?;
    if let Some(c) = head {
        idx.read_tree(&c.tree()?)?;
    }
    let mut held: Vec<(PathBuf, String)> = Vec::new();
    for rel in &paths.rels {
        let base = paths.base_of(rel);
        if let Some(why) = stage(blobs, &mut idx, &paths.workdir, rel, base)? {
            held.push((rel.clone(), why));
        }
    }
    for (rel, bytes) in &paths.buffers {
        idx.add(&buffer_entry(blobs, rel, bytes)?)?;
    }
    // Every blob is on disk before a tree names it.
    blobs.flush()?;
    Ok((idx.write_tree_to(repo)?, held))
}

/// From this many paths on, a commit writes its blobs as packs rather than loose objects.
const BULK_FROM: usize = 500;
/// How much blob content waits in memory before it is written out as one pack.
const BULK_PACK_BYTES: u64 = 32 << 20;

/// Where a commit's blobs go. Normally straight into the object database, one loose
/// object (one file under .git/objects/) each, as `git add` does. A commit of thousands
/// of files (a run that wrote a data set) instead collects them in memory and writes a
/// pack every [`BULK_PACK_BYTES`]: 100,000 new files in .git/objects took minutes of
/// inode allocation on a busy ext4, a few packs take seconds.
struct Blobs<'r> {
    repo: &'r Repository,
    /// The work tree opened once: files are read beneath it, never through a symbolic
    /// link in a parent folder (git itself refuses a path beyond a symlink).
    tree: Option<crate::beneath::Beneath>,
    bulk: Option<(&'r Repository, &'r git2::Mempack<'r>)>,
    pending_bytes: u64,
    /// Blobs in memory, not yet in a pack.
    pending: Vec<Oid>,
}

impl Blobs<'_> {
    /// The blob of the regular file `rel`, read beneath the work tree; `None` when a
    /// parent folder is a symbolic link (or became one), or the file is no longer a
    /// regular file: such a path is not the run's to commit.
    fn write_file(&mut self, rel: &Path, size: u64) -> Result<Option<Oid>, HistoryError> {
        let Some(mut f) = self.open_regular(rel)? else {
            return Ok(None);
        };
        let repo = self.bulk.map_or(self.repo, |(b, _)| b);
        let mut w = repo.blob_writer(None)?;
        std::io::copy(&mut f, &mut w)
            .map_err(|e| git2::Error::from_str(&format!("cannot read {}: {e}", rel.display())))?;
        let id = w.commit()?;
        if self.bulk.is_some() {
            self.added(id, size)?;
        }
        Ok(Some(id))
    }

    /// The bytes of the regular file `rel`, read beneath the work tree; `None` as for
    /// [`Blobs::write_file`].
    fn read_file(&self, rel: &Path) -> Result<Option<Vec<u8>>, HistoryError> {
        let Some(mut f) = self.open_regular(rel)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut out)
            .map_err(|e| git2::Error::from_str(&format!("cannot read {}: {e}", rel.display())))?;
        Ok(Some(out))
    }

    /// The regular file `rel` opened beneath the work tree; `None` when it is gone, not a
    /// regular file, or beyond a symbolic link.
    fn open_regular(&self, rel: &Path) -> Result<Option<std::fs::File>, HistoryError> {
        let Some(tree) = &self.tree else {
            return Ok(None);
        };
        let f = match tree.open_read(rel) {
            Ok(f) => f,
            Err(e) if crate::beneath::is_refusal(&e) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(
                    git2::Error::from_str(&format!("cannot read {}: {e}", rel.display())).into(),
                )
            }
        };
        Ok(f.metadata().is_ok_and(|m| m.is_file()).then_some(f))
    }

    /// Whether a parent folder of `rel` is a symbolic link (git refuses such paths).
    fn beyond_link(&self, rel: &Path) -> bool {
        match (&self.tree, rel.parent()) {
            (Some(tree), Some(parent)) if !parent.as_os_str().is_empty() => tree
                .open_dir(parent)
                .is_err_and(|e| crate::beneath::is_refusal(&e)),
            _ => false,
        }
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<Oid, HistoryError> {
        match self.bulk {
            Some((bulk, _)) => {
                let id = bulk.blob(bytes)?;
                self.added(id, bytes.len() as u64)?;
                Ok(id)
            }
            None => Ok(self.repo.blob(bytes)?),
        }
    }

    fn added(&mut self, id: Oid, size: u64) -> Result<(), HistoryError> {
        self.pending.push(id);
        self.pending_bytes += size;
        if self.pending_bytes >= BULK_PACK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what waits in memory as a pack (with its index) into .git/objects/pack/.
    fn flush(&mut self) -> Result<(), HistoryError> {
        let Some((bulk, mempack)) = self.bulk else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        // Not Mempack::dump: it packs only what commits in memory reach, and these
        // blobs have no commit yet.
        let mut pb = bulk.packbuilder()?;
        for id in &self.pending {
            pb.insert_object(*id, None)?;
        }
        let mut buf = git2::Buf::new();
        pb.write_buf(&mut buf)?;
        drop(pb);
        let odb = self.repo.odb()?;
        let mut w = odb.packwriter()?;
        std::io::Write::write_all(&mut w, &buf)
            .map_err(|e| git2::Error::from_str(&format!("cannot write a pack: {e}")))?;
        w.commit()?;
        // libgit2 does not look for new packs before checking that a tree's entries
        // exist: without this, the tree naming these blobs is refused.
        odb.refresh()?;
        mempack.reset()?;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }
}

/// Whether a commit that failed this way can succeed later by itself: a lock another
/// process holds (or a crashed one left), or a disk that refuses writes for now. Other
/// errors are reported at once rather than deferred, so they never hold up later commits.
fn transient(e: &git2::Error) -> bool {
    let msg = e.message().to_ascii_lowercase();
    e.code() == ErrorCode::Locked
        || matches!(
            e.class(),
            git2::ErrorClass::Os | git2::ErrorClass::Filesystem
        )
        || msg.contains("read-only file system")
        || msg.contains("no space left")
        || msg.contains("permission denied")
}

fn buffer_entry(blobs: &mut Blobs, rel: &Path, bytes: &[u8]) -> Result<IndexEntry, HistoryError> {
    let path = rel.to_string_lossy().into_owned().into_bytes();
    Ok(IndexEntry {
        ctime: IndexTime::new(0, 0),
        mtime: IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode: 0o100644,
        uid: 0,
        gid: 0,
        file_size: bytes.len() as u32,
        id: blobs.write_bytes(bytes)?,
        flags: (path.len().min(0xfff)) as u16,
        flags_extended: 0,
        path,
    })
}

/// Puts what `rel` holds now into `idx`. With `base` (what the file held when the run
/// started, a person's uncommitted edits in it), only the run's change from `base` is
/// staged, onto HEAD's blob; `Some(why)` when that cannot be done and the path is left
/// out, as it is in HEAD.
fn stage(
    blobs: &mut Blobs,
    idx: &mut Index,
    workdir: &Path,
    rel: &Path,
    base: Option<&[u8]>,
) -> Result<Option<String>, HistoryError> {
    let abs = workdir.join(rel);
    if blobs.beyond_link(rel) {
        tracing::warn!(path = %rel.display(), "not committed: a folder on its way is a symbolic link");
        return Ok(None);
    }
    let meta = std::fs::symlink_metadata(&abs);
    if let Some(base) = base {
        if !meta.as_ref().is_ok_and(|m| m.is_file()) {
            return Ok(Some(
                "you had uncommitted edits in it, and the run removed or replaced it".into(),
            ));
        }
        return match run_hunks_only(blobs, idx, rel, base)? {
            Ok(entry) => {
                idx.add(&entry)?;
                Ok(None)
            }
            Err(why) => Ok(Some(why)),
        };
    }
    match meta {
        Ok(m) if m.is_file() || m.file_type().is_symlink() => {
            use std::os::unix::fs::PermissionsExt;
            let (id, mode) = if m.file_type().is_symlink() {
                let target = std::fs::read_link(&abs).unwrap_or_default();
                (
                    blobs.write_bytes(target.to_string_lossy().as_bytes())?,
                    0o120000,
                )
            } else {
                let exec = m.permissions().mode() & 0o111 != 0;
                let Some(id) = blobs.write_file(rel, m.len())? else {
                    tracing::warn!(path = %rel.display(), "not committed: it changed into something else, or a folder on its way into a symbolic link, while it was read");
                    return Ok(None);
                };
                (id, if exec { 0o100755 } else { 0o100644 })
            };
            let path = rel.to_string_lossy().into_owned().into_bytes();
            let entry = IndexEntry {
                ctime: IndexTime::new(0, 0),
                mtime: IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode,
                uid: 0,
                gid: 0,
                file_size: m.len() as u32,
                id,
                flags: (path.len().min(0xfff)) as u16,
                flags_extended: 0,
                path,
            };
            idx.add(&entry)?;
        }
        Ok(m) if m.is_dir() => {
            // A folder the run created: stage what is in it.
            for e in walkdir::WalkDir::new(&abs)
                .into_iter()
                .filter_map(|e| e.ok())
            {
                if e.file_type().is_file() {
                    if let Ok(r) = e.path().strip_prefix(workdir) {
                        if !ignored_untracked(blobs.repo, r) {
                            stage(blobs, idx, workdir, r, None)?;
                        }
                    }
                }
            }
        }
        _ => {
            // Gone: drop it (and anything below it) from the tree.
            let _ = idx.remove_path(rel);
            let _ = idx.remove_dir(rel, 0);
        }
    }
    Ok(None)
}

/// HEAD's entry for `rel` with only the run's change applied: a three-way merge whose
/// base is what the file held when the run started, "ours" HEAD's blob and "theirs" the
/// file now. `Err(why)` when HEAD has no such file or the two changes overlap; the work
/// tree file is only read.
fn run_hunks_only(
    blobs: &mut Blobs,
    idx: &Index,
    rel: &Path,
    base: &[u8],
) -> Result<Result<IndexEntry, String>, HistoryError> {
    let Some(ours) = idx.get_path(rel, 0) else {
        return Ok(Err(
            "you had uncommitted edits in it, and it is not in the last commit".into(),
        ));
    };
    let Some(now) = blobs.read_file(rel)? else {
        return Ok(Err(
            "you had uncommitted edits in it, and it could not be read beneath the work tree"
                .into(),
        ));
    };
    // The start and current contents are needed only for the merge: a second handle
    // keeps them in memory, so they never become loose objects in .git.
    let scratch = Repository::open(blobs.repo.path())?;
    let odb = scratch.odb()?;
    let _memory = odb.add_new_mempack_backend(1000)?;
    let with_id = |id: Oid| IndexEntry {
        id,
        ..copy_entry(&ours)
    };
    let ancestor = with_id(scratch.blob(base)?);
    let theirs = with_id(scratch.blob(&now)?);
    let merged = scratch.merge_file_from_index(&ancestor, &ours, &theirs, None)?;
    if !merged.is_automergeable() {
        return Ok(Err(
            "the run changed lines you had uncommitted edits in (they conflict)".into(),
        ));
    }
    let id = blobs.write_bytes(merged.content())?;
    Ok(Ok(IndexEntry {
        id,
        file_size: merged.content().len() as u32,
        ..copy_entry(&ours)
    }))
}

/// `IndexEntry` is not `Clone`.
fn copy_entry(e: &IndexEntry) -> IndexEntry {
    IndexEntry {
        ctime: e.ctime,
        mtime: e.mtime,
        dev: e.dev,
        ino: e.ino,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        file_size: e.file_size,
        id: e.id,
        flags: e.flags,
        flags_extended: e.flags_extended,
        path: e.path.clone(),
    }
}

/// Brings the repository's own index up to date for the committed paths only, so
/// `git status` is clean for them and a person's staged changes elsewhere are kept.
///
/// Each path gets what HEAD holds for it — which may be a later commit than this one, if
/// another process committed since — so `git status` tells the truth: clean when the
/// file matches HEAD, modified when it does not. The index is shared with git and with
/// other loops processes: it is read only once `.git/index.lock` is ours, and written
/// through that lock, so nobody's update in between is written back over.
fn sync_index(
    repo: &Repository,
    lock: crate::git_gate::IndexLock,
    paths: &[PathBuf],
) -> Result<(), git2::Error> {
    let tree = repo.head().ok().and_then(|h| h.peel_to_tree().ok());
    let workdir = repo.workdir().map(Path::to_path_buf);
    let paths: Vec<&PathBuf> = paths.iter().collect();
    // What HEAD holds for each path, and whether the file on disk is that, decided once
    // (not on every retry of the index write).
    let mut lookup = TreeLookup::new(repo, tree.as_ref());
    let wanted: Vec<(&PathBuf, Option<InHead>)> = paths
        .iter()
        .map(|rel| {
            let entry = lookup.entry(rel).map(|(id, mode)| {
                let matches = workdir.as_ref().map(|w| w.join(rel)).and_then(|f| {
                    let m = f.symlink_metadata().ok().filter(|m| m.is_file())?;
                    (Oid::hash_file(git2::ObjectType::Blob, &f).ok() == Some(id)).then_some(m)
                });
                (id, mode, matches)
            });
            (*rel, entry)
        })
        .collect();
    {
        let mut index = lock.open_copy()?;
        for (rel, entry) in &wanted {
            match entry {
                Some((id, mode, matches)) => {
                    if let Some(m) = matches {
                        // The file's own stat data, so `git status` sees it clean without
                        // reading it (what add_path would do, without reading the file
                        // a third time).
                        let _ = index.add(&stat_entry(rel, m, *id, *mode));
                    } else {
                        // No stat data: git compares the content and reports what differs.
                        let path = rel.to_string_lossy().into_owned().into_bytes();
                        let _ = index.add(&IndexEntry {
                            ctime: IndexTime::new(0, 0),
                            mtime: IndexTime::new(0, 0),
                            dev: 0,
                            ino: 0,
                            mode: *mode as u32,
                            uid: 0,
                            gid: 0,
                            file_size: 0,
                            id: *id,
                            flags: (path.len().min(0xfff)) as u16,
                            flags_extended: 0,
                            path,
                        });
                    }
                }
                None => {
                    let _ = index.remove_path(rel);
                }
            }
        }
        lock.commit(&mut index)
    }
}

/// What HEAD holds for a path (blob id, file mode) and, when the file on disk is that
/// blob, its metadata.
type InHead = (Oid, i32, Option<std::fs::Metadata>);

/// An index entry for a file on disk known to hold blob `id`.
fn stat_entry(rel: &Path, m: &std::fs::Metadata, id: Oid, mode: i32) -> IndexEntry {
    use std::os::unix::fs::MetadataExt;
    let path = rel.to_string_lossy().into_owned().into_bytes();
    // The index stores these fields in 32 bits, as git itself truncates them.
    IndexEntry {
        ctime: IndexTime::new(m.ctime() as i32, m.ctime_nsec() as u32),
        mtime: IndexTime::new(m.mtime() as i32, m.mtime_nsec() as u32),
        dev: m.dev() as u32,
        ino: m.ino() as u32,
        mode: mode as u32,
        uid: m.uid(),
        gid: m.gid(),
        file_size: m.len() as u32,
        id,
        flags: (path.len().min(0xfff)) as u16,
        flags_extended: 0,
        path,
    }
}

/// Finds the entries of many paths in one tree. `Tree::get_path` walks from the root and
/// re-reads every tree on the way; libgit2 does not cache big trees, so a run that wrote
/// 100,000 files into one folder re-inflated that folder's tree 100,000 times (hours).
/// Here each folder's tree is read once and its entries found by name.
struct TreeLookup<'r> {
    repo: &'r Repository,
    root: Option<git2::Tree<'r>>,
    folders: std::collections::HashMap<PathBuf, Option<git2::Tree<'r>>>,
}

impl<'r> TreeLookup<'r> {
    fn new(repo: &'r Repository, root: Option<&git2::Tree<'r>>) -> Self {
        TreeLookup {
            repo,
            root: root.cloned(),
            folders: std::collections::HashMap::new(),
        }
    }

    /// The blob id and file mode `rel` has in the tree, if it is there.
    fn entry(&mut self, rel: &Path) -> Option<(Oid, i32)> {
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            // A name that is not UTF-8 cannot be looked up by name: walk from the root.
            let e = self.root.as_ref()?.get_path(rel).ok()?;
            return Some((e.id(), e.filemode()));
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let folder = if parent.as_os_str().is_empty() {
            self.root.clone()
        } else {
            let (repo, root) = (self.repo, &self.root);
            self.folders
                .entry(parent.to_path_buf())
                .or_insert_with(|| {
                    root.as_ref()?
                        .get_path(parent)
                        .ok()?
                        .to_object(repo)
                        .ok()?
                        .into_tree()
                        .ok()
                })
                .clone()
        }?;
        let e = folder.get_name(name)?;
        Some((e.id(), e.filemode()))
    }
}

/// Builds a commit message: a subject line, then the trailers.
pub fn commit_message(subject: &str, trailers: &[(&str, String)]) -> String {
    let mut msg = String::new();
    let subject = subject.lines().next().unwrap_or("").trim();
    let subject: String = if subject.chars().count() > 72 {
        subject.chars().take(71).collect::<String>() + "…"
    } else {
        subject.to_string()
    };
    msg.push_str(&subject);
    msg.push_str("\n\n");
    for (k, v) in trailers {
        msg.push_str(k);
        msg.push_str(": ");
        msg.push_str(&v.replace('\n', " "));
        msg.push('\n');
    }
    msg
}

/// One run in the history, read back from a commit.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub commit: String,
    pub time: DateTime<Utc>,
    #[serde(rename = "loop")]
    pub loop_name: String,
    pub summary: String,
    pub outcome: Option<String>,
    pub run: Option<String>,
    pub trigger: Option<String>,
    pub duration_ms: Option<u64>,
    pub trailers: Vec<(String, String)>,
}

/// Reads the history of runs from git: commits carrying a `Loop:` trailer, newest
/// first, optionally of one loop.
pub fn read_log(
    workspace: &Path,
    loop_filter: Option<&str>,
    limit: usize,
) -> Result<Vec<LogEntry>, HistoryError> {
    let repo = Repository::discover(workspace)
        .map_err(|_| HistoryError::NotARepository(workspace.to_path_buf()))?;
    let mut walk = repo.revwalk()?;
    if walk.push_head().is_err() {
        return Ok(Vec::new());
    }
    walk.set_sorting(git2::Sort::TIME)?;
    let mut out = Vec::new();
    for oid in walk {
        let Ok(oid) = oid else { continue };
        let Ok(commit) = repo.find_commit(oid) else {
            continue;
        };
        let Some(message) = commit.message() else {
            continue;
        };
        let trailers = parse_trailers(message);
        let Some(loop_name) = trailers
            .iter()
            .find(|(k, _)| k == "Loop")
            .map(|(_, v)| v.clone())
        else {
            continue;
        };
        if loop_filter.is_some_and(|f| f != loop_name) {
            continue;
        }
        let get = |key: &str| {
            trailers
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let subject = commit.summary().unwrap_or("").to_string();
        let summary = subject
            .strip_prefix(&format!("{loop_name}: "))
            .unwrap_or(&subject)
            .to_string();
        out.push(LogEntry {
            commit: oid.to_string(),
            time: Utc
                .timestamp_opt(commit.time().seconds(), 0)
                .single()
                .unwrap_or_default(),
            outcome: get("Outcome"),
            run: get("Run"),
            trigger: get("Trigger"),
            duration_ms: get("Duration-Ms").and_then(|d| d.parse().ok()),
            loop_name,
            summary,
            trailers,
        });
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// One commit as `git show` would print it (its message, then the patch against its
/// first parent), cut at `max_bytes` with a line saying so. `rev` is a full or
/// abbreviated commit id; anything else (a branch name, `HEAD~1`) is refused, so a web
/// page cannot be made to show what no run committed.
pub fn commit_diff(workspace: &Path, rev: &str, max_bytes: usize) -> Result<String, HistoryError> {
    let repo = Repository::discover(workspace)
        .map_err(|_| HistoryError::NotARepository(workspace.to_path_buf()))?;
    if rev.len() < 7 || !rev.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(git2::Error::from_str(&format!("`{rev}` is not a commit id")).into());
    }
    let commit = repo.revparse_single(rev)?.peel_to_commit()?;
    let parent = commit.parents().next().map(|p| p.tree()).transpose()?;
    let diff = repo.diff_tree_to_tree(parent.as_ref(), Some(&commit.tree()?), None)?;
    let mut out = format!(
        "commit {}\nAuthor: {}\n\n{}\n",
        commit.id(),
        commit.author(),
        commit.message().unwrap_or("").trim_end()
    );
    let mut cut = false;
    diff.print(git2::DiffFormat::Patch, |_, _, line| {
        if out.len() >= max_bytes {
            cut = true;
            return false;
        }
        if matches!(line.origin(), '+' | '-' | ' ') {
            out.push(line.origin());
        }
        out.push_str(&String::from_utf8_lossy(line.content()));
        true
    })
    .or_else(|e| if cut { Ok(()) } else { Err(e) })?;
    if cut {
        out.push_str(&format!("\n[… cut at {max_bytes} bytes]\n"));
    }
    Ok(out)
}

/// The `Key: value` lines of a message's last paragraph.
pub fn parse_trailers(message: &str) -> Vec<(String, String)> {
    let trimmed = message.trim_end();
    let last = trimmed.rsplit("\n\n").next().unwrap_or("");
    if std::ptr::eq(last, trimmed) && !trimmed.contains("\n\n") {
        return Vec::new();
    }
    last.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (!k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                .then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libgit2's (cache now, cache limit), process-wide.
    fn cached_memory() -> (isize, isize) {
        crate::sys::git_cached_memory()
    }

    /// A daemon's committer keeps what libgit2 caches bounded (issue 16: the default
    /// bound, 256 MiB, let memory grow with every commit for hours).
    #[test]
    fn committer_bounds_the_git_object_cache() {
        let dir = tempfile::tempdir().unwrap();
        Repository::init(dir.path()).unwrap();
        let _c = Committer::start(dir.path(), "t", "t@localhost").unwrap();
        let (now, max) = cached_memory();
        assert_eq!(max, GIT_OBJECT_CACHE_BYTES as isize);
        assert!(max < 256 << 20, "below libgit2's default");
        assert!(now >= 0);
    }
}
