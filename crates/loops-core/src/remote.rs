//! Sync with a git remote: pull (fetch, then move the branch and the work tree), push
//! (fast-forward only, never force), and what happens when the two sides disagree
//! (docs/remote.md).
//!
//! The rules come from what git-sync and the GitOps tools learned the hard way: fetch
//! and move the tree rather than `pull --ff-only`, which breaks after a force-push; replay
//! our own unpushed commits onto the fetched tip (each is a run's edit of its own paths,
//! so it replays cleanly unless the person changed the same file, and then the person's
//! version wins and the run's is kept on `refs/loops/held/<run>`); a rejected push is
//! fetched, replayed and tried again. The network steps run on a repository handle of
//! their own; only the move of the branch and the work tree runs on the committer's
//! thread ([`crate::history::Committer::exclusive`]), so no run commit interleaves with it.

use crate::git_gate::BranchRule;
use crate::guard::Guard;
use crate::layout::Layout;
use crate::remote_config::RemoteSettings;
use chrono::{DateTime, Utc};
use git2::build::{CheckoutBuilder, TreeUpdateBuilder};
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, Oid, PushOptions,
    RemoteCallbacks, Repository, Sort,
};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("git remote `{0}` is not set up in this repository (loops.yaml remote.name)")]
    NoRemote(String),
    #[error("{0} is not inside a git repository")]
    NotARepository(PathBuf),
    #[error("cannot reach remote `{remote}` ({url}): {message}")]
    Network {
        remote: String,
        url: String,
        message: String,
    },
    #[error("remote `{remote}` refused the credentials: {message}")]
    Auth { remote: String, message: String },
    #[error("remote.token_env names `{0}`, which is not set in the daemon's environment")]
    TokenUnset(String),
    #[error("{0}")]
    HostKey(#[from] crate::known_hosts::HostKeyError),
    #[error("push to `{remote}` rejected: {message}")]
    Rejected { remote: String, message: String },
    #[error("the local branch {local} and {remote}/{branch} share no commit")]
    Unrelated {
        local: String,
        remote: String,
        branch: String,
    },
    #[error("unpushed merge commit {0}: loops replays only a straight line of commits")]
    UnpushedMerge(String),
    #[error("the committer has stopped")]
    Stopped,
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

impl RemoteError {
    pub fn help(&self) -> Option<String> {
        Some(match self {
            RemoteError::NoRemote(n) => format!(
                "add it with `git remote add {n} URL`, or set remote.name in loops.yaml to one `git remote -v` lists"
            ),
            RemoteError::NotARepository(_) => "run `loops init` here, or `git init`".into(),
            RemoteError::Network { .. } => {
                "nothing is lost: runs keep committing locally and are pushed when the remote answers".into()
            }
            RemoteError::Auth { .. } => "check remote.ssh_key_file, remote.ssh_agent or remote.token_env in loops.yaml, and that the key or token may write to the repository".into(),
            RemoteError::TokenUnset(v) => format!("export {v}=… in the daemon's environment (the token is never written to loops.yaml)"),
            RemoteError::HostKey(e) => e.help(),
            RemoteError::Rejected { .. } => "loops fetches, replays its commits and tries again; if this persists, see `loops status`".into(),
            RemoteError::Unrelated { remote, branch, .. } => format!(
                "start the server from a clone of the remote (`git clone URL`), or join the histories by hand once (`git pull --allow-unrelated-histories {remote} {branch}`)"
            ),
            RemoteError::UnpushedMerge(_) => "push it by hand once (`git pull --rebase && git push`); loops syncs again after".into(),
            RemoteError::Git(e) if e.code() == git2::ErrorCode::Locked => {
                return crate::git_gate::lock_help(e.message())
            }
            RemoteError::Stopped | RemoteError::Git(_) => return None,
        })
    }

    /// Errors that trying again later can fix (the network, a rejected push), as against
    /// the ones that need the person (a host key, a missing remote).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RemoteError::Network { .. } | RemoteError::Rejected { .. } | RemoteError::Git(_)
        )
    }
}

/// What one sync did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SyncReport {
    pub remote: String,
    pub branch: String,
    /// The remote branch's tip after the fetch (`None`: it does not exist yet, or no fetch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<String>,
    pub pull: Pulled,
    /// Paths the pull changed in the work tree.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// Run commits whose change to a path the person also changed: the person's version
    /// is in the tree, the run's is kept on a ref.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldCommit>,
    pub push: Pushed,
    /// Local commits the remote does not have, and remote commits not yet here.
    pub ahead: usize,
    pub behind: usize,
}

/// What the pull did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "did", rename_all = "snake_case")]
pub enum Pulled {
    /// Not asked for (push only), or nothing came.
    #[default]
    Nothing,
    FastForward {
        from: String,
        to: String,
    },
    /// Our unpushed commits were replayed onto the fetched tip.
    Replayed {
        onto: String,
        commits: usize,
    },
    /// The remote's history was rewritten (a force-push): the branch follows it, with our
    /// unpushed commits replayed on top, and the old history is never pushed back.
    FollowedRewrite {
        onto: String,
        commits: usize,
    },
    /// Moving the tree would touch what someone is working on; nothing moved.
    Deferred {
        reason: String,
        #[serde(skip_serializing_if = "Vec::is_empty", default)]
        paths: Vec<String>,
    },
}

/// What the push did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "did", rename_all = "snake_case")]
pub enum Pushed {
    #[default]
    Nothing,
    Pushed {
        from: Option<String>,
        to: String,
        commits: usize,
    },
    /// A commit whose diff matches a never-share rule: it and what follows it stay here.
    Held {
        commit: String,
        rule: String,
        pushed: usize,
    },
}

/// A run commit kept on `refs/loops/held/<run>` because the person changed the same path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeldCommit {
    pub commit: String,
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(rename = "loop", skip_serializing_if = "Option::is_none")]
    pub loop_name: Option<String>,
    /// The paths where the person's version won.
    pub paths: Vec<String>,
    /// The remote commit holding the person's version.
    pub theirs: String,
    /// Why it is held: `conflict` (the person's version won) or `never-share: <rule>`.
    pub why: String,
}

/// The remote's state as the daemon last saw it, for `loops status` (`.loops/remote.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RemoteState {
    pub remote: String,
    pub branch: String,
    /// When the last sync ended, well or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<DateTime<Utc>>,
    /// What the last sync that worked did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_report: Option<SyncReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fetch: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_push: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<SyncFailure>,
    /// Since when syncing has failed without a success between (`None`: it works).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub failures: u32,
    /// Whether the person has been handed the current outage already.
    #[serde(default)]
    pub outage_reported: bool,
    #[serde(default)]
    pub ahead: usize,
    #[serde(default)]
    pub behind: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<String>,
    /// Commits held back (conflicts, never-share), newest last; a handoff was made for each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldCommit>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SyncFailure {
    pub at: DateTime<Utc>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl RemoteState {
    /// Run id → the ref that keeps its commit, for the runs a sync held.
    pub fn held_runs(&self) -> std::collections::HashMap<String, String> {
        self.held
            .iter()
            .filter_map(|h| h.run.clone().map(|r| (r, h.reference.clone())))
            .collect()
    }

    pub fn load(layout: &Layout) -> Option<RemoteState> {
        let text = std::fs::read_to_string(layout.remote_state()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self, layout: &Layout) {
        if let Ok(text) = serde_json::to_vec_pretty(self) {
            let _ = crate::fsutil::atomic_write(&layout.remote_state(), &text);
        }
    }
}

/// One workspace's remote, as loops.yaml describes it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub settings: RemoteSettings,
    /// The local branch runs commit to.
    pub local: String,
    /// The remote's branch.
    pub branch: String,
    pub workdir: PathBuf,
}

/// The refs loops keeps for a remote.
fn seen_ref(remote: &str, branch: &str) -> String {
    format!("refs/loops/remote/{remote}/{branch}")
}
fn tracking_ref(remote: &str, branch: &str) -> String {
    format!("refs/remotes/{remote}/{branch}")
}
fn push_ref(remote: &str, branch: &str) -> String {
    format!("refs/loops/push/{remote}/{branch}")
}
/// Where a held run commit is kept.
pub fn held_ref(name: &str) -> String {
    format!("refs/loops/held/{name}")
}

impl Remote {
    /// The remote of the repository holding `workdir`; the local branch is the one the
    /// branch rule names, else the one checked out.
    pub fn new(
        workdir: &Path,
        settings: &RemoteSettings,
        rule: Option<&BranchRule>,
    ) -> Result<Remote, RemoteError> {
        let repo = Repository::discover(workdir)
            .map_err(|_| RemoteError::NotARepository(workdir.to_path_buf()))?;
        let root = repo
            .workdir()
            .ok_or_else(|| RemoteError::NotARepository(workdir.to_path_buf()))?
            .to_path_buf();
        if repo.find_remote(&settings.name).is_err() {
            return Err(RemoteError::NoRemote(settings.name.clone()));
        }
        let local = match rule {
            Some(BranchRule::Fixed(b)) => b.clone(),
            _ => crate::git_gate::current_branch(&repo)
                .or_else(|| branch_being_rewritten(&repo))
                .unwrap_or_else(|| "main".into()),
        };
        let branch = settings.branch.clone().unwrap_or_else(|| local.clone());
        Ok(Remote {
            settings: settings.clone(),
            local,
            branch,
            workdir: root,
        })
    }

    fn open(&self) -> Result<Repository, RemoteError> {
        Repository::open(&self.workdir)
            .map_err(|_| RemoteError::NotARepository(self.workdir.clone()))
    }

    fn url(&self, repo: &Repository) -> String {
        repo.find_remote(&self.settings.name)
            .ok()
            .and_then(|r| r.url().map(redact_url))
            .unwrap_or_default()
    }

    /// Fetches the remote branch; returns its tip (`None`: the remote has no such branch).
    pub fn fetch(&self) -> Result<Option<Oid>, RemoteError> {
        let repo = self.open()?;
        let mut remote = repo
            .find_remote(&self.settings.name)
            .map_err(|_| RemoteError::NoRemote(self.settings.name.clone()))?;
        let auth = Auth::new(&self.settings, &self.url(&repo));
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(auth.callbacks());
        fo.download_tags(AutotagOption::None);
        // A branch deleted on the remote takes its tracking ref with it, so what is left
        // of it here is never taken for the remote's tip.
        fo.prune(git2::FetchPrune::On);
        let tracking = tracking_ref(&self.settings.name, &self.branch);
        let spec = format!("+refs/heads/{}:{tracking}", self.branch);
        remote
            .fetch(&[&spec], Some(&mut fo), Some("loops sync: fetch"))
            .map_err(|e| auth.explain(e, &self.settings.name, &self.url(&repo)))?;
        Ok(repo.refname_to_id(&tracking).ok())
    }

    /// Moves the local branch and the work tree to include `tip`; runs on the committer's
    /// thread (the caller's `repo`). `announce` hears the paths the checkout is about to
    /// rewrite before it starts, so the daemon can hold the runs of those loops until it
    /// has reloaded them.
    pub fn integrate(
        &self,
        repo: &Repository,
        tip: Option<Oid>,
        announce: &Announce,
    ) -> Result<Integrated, RemoteError> {
        let mut out = Integrated::default();
        let Some(tip) = tip else {
            return Ok(out);
        };
        if let Some(hold) = self.hold(repo) {
            out.pulled = Pulled::Deferred {
                reason: format!("{hold}; the pull waits"),
                paths: Vec::new(),
            };
            return Ok(out);
        }
        let Some(head) = repo.head().ok().and_then(|h| h.target()) else {
            // An unborn branch: the remote's history is all there is.
            return self.move_to(
                repo,
                (None, tip),
                tip,
                Pulled::FastForward {
                    from: String::new(),
                    to: tip.to_string(),
                },
                out,
                announce,
            );
        };
        let seen = repo
            .refname_to_id(&seen_ref(&self.settings.name, &self.branch))
            .ok();
        if head == tip || repo.graph_descendant_of(head, tip)? {
            self.set_seen(repo, tip);
            return Ok(out);
        }
        if repo.graph_descendant_of(tip, head)? {
            let did = Pulled::FastForward {
                from: head.to_string(),
                to: tip.to_string(),
            };
            return self.move_to(repo, (Some(head), tip), tip, did, out, announce);
        }
        let rewritten =
            seen.is_some_and(|s| s != tip && !repo.graph_descendant_of(tip, s).unwrap_or(false));
        let ours = self.unpushed(repo, head, tip, seen)?;
        let mut onto = tip;
        for c in &ours {
            let (next, held) = replay(repo, *c, onto)?;
            onto = next;
            if let Some(mut h) = held {
                h.theirs = tip.to_string();
                let name = h.run.clone().unwrap_or_else(|| h.commit[..12].to_string());
                h.reference = held_ref(&name);
                repo.reference(
                    &h.reference,
                    *c,
                    true,
                    "loops sync: the person's version won",
                )?;
                out.held.push(h);
            }
        }
        let did = if rewritten {
            Pulled::FollowedRewrite {
                onto: tip.to_string(),
                commits: ours.len(),
            }
        } else {
            Pulled::Replayed {
                onto: tip.to_string(),
                commits: ours.len(),
            }
        };
        self.move_to(repo, (Some(head), onto), tip, did, out, announce)
    }

    /// Why the branch must not move now: git is mid-operation, HEAD is elsewhere.
    fn hold(&self, repo: &Repository) -> Option<crate::git_gate::Hold> {
        let rule = BranchRule::Fixed(self.local.clone());
        crate::git_gate::check(repo, repo.path(), &rule).or_else(|| {
            crate::git_gate::git_at_work(&self.workdir).map(crate::git_gate::Hold::GitRunning)
        })
    }

    /// Our commits the remote does not have, oldest first: reachable from HEAD, not from
    /// the fetched tip, and not from what we last saw there (after a force-push, the old
    /// history is the person's to drop, not ours to push back).
    fn unpushed(
        &self,
        repo: &Repository,
        head: Oid,
        tip: Oid,
        seen: Option<Oid>,
    ) -> Result<Vec<Oid>, RemoteError> {
        if seen.is_none() && repo.merge_base(head, tip).is_err() {
            return Err(RemoteError::Unrelated {
                local: self.local.clone(),
                remote: self.settings.name.clone(),
                branch: self.branch.clone(),
            });
        }
        let mut walk = repo.revwalk()?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)?;
        walk.push(head)?;
        walk.hide(tip)?;
        if let Some(s) = seen {
            walk.hide(s)?;
        }
        let mut ours = Vec::new();
        for oid in walk {
            let oid = oid?;
            if repo.find_commit(oid)?.parent_count() > 1 {
                return Err(RemoteError::UnpushedMerge(
                    oid.to_string()[..12].to_string(),
                ));
            }
            ours.push(oid);
        }
        Ok(ours)
    }

    /// Checks `to` out over `from` (only where the work tree still holds `from`'s files)
    /// and moves the branch there, if nobody moved it meanwhile; then `tip` (the fetched
    /// remote tip `to` is built on) is what the remote was last seen to hold. Never `to`
    /// itself: it may hold our replayed commits, which the remote does not have yet.
    fn move_to(
        &self,
        repo: &Repository,
        (from, to): (Option<Oid>, Oid),
        tip: Oid,
        did: Pulled,
        mut out: Integrated,
        announce: &Announce,
    ) -> Result<Integrated, RemoteError> {
        let target = repo.find_commit(to)?.tree()?;
        let base = match from {
            Some(f) => Some(repo.find_commit(f)?.tree()?),
            None => None,
        };
        out.changed = changed_paths(repo, base.as_ref(), &target)?;
        if !out.changed.is_empty() {
            announce(&out.changed);
        }
        let blocked = RefCell::new(Vec::new());
        // Safe: only files that still hold HEAD's version (the baseline) are rewritten;
        // anything someone changed and did not commit stops the checkout before it starts.
        let mut co = CheckoutBuilder::new();
        co.safe();
        co.notify_on(git2::CheckoutNotificationType::CONFLICT);
        co.notify(|why, path, _, _, _| {
            if why.contains(git2::CheckoutNotificationType::CONFLICT) {
                if let Some(p) = path {
                    blocked.borrow_mut().push(p.display().to_string());
                }
            }
            true
        });
        let checked = repo.checkout_tree(target.as_object(), Some(&mut co));
        drop(co);
        let blocked = blocked.into_inner();
        if let Err(e) = checked {
            if !blocked.is_empty() || e.code() == git2::ErrorCode::Conflict {
                out.pulled = Pulled::Deferred {
                    reason: "the pull would overwrite uncommitted changes in the work tree; it waits until they are committed or undone".into(),
                    paths: blocked,
                };
                out.changed.clear();
                out.held.clear();
                return Ok(out);
            }
            if e.code() == git2::ErrorCode::Locked {
                out.pulled = Pulled::Deferred {
                    reason: "the git index is locked by another git; the pull waits".into(),
                    paths: Vec::new(),
                };
                out.changed.clear();
                out.held.clear();
                return Ok(out);
            }
            return Err(e.into());
        }
        let branch = format!("refs/heads/{}", self.local);
        let moved = match from {
            Some(f) => repo.reference_matching(&branch, to, true, f, "loops sync: pull"),
            None => repo.reference(&branch, to, true, "loops sync: pull"),
        };
        if let Err(e) = moved {
            // Someone committed between our look and the move: the paths this checkout
            // rewrote held HEAD's version before it, so theirs goes back in.
            if let Ok(now) = repo.head().and_then(|h| h.peel_to_tree()) {
                let mut back = CheckoutBuilder::new();
                back.force();
                for p in &out.changed {
                    back.path(p);
                }
                if !out.changed.is_empty() {
                    let _ = repo.checkout_tree(now.as_object(), Some(&mut back));
                }
            }
            return Err(e.into());
        }
        self.set_seen(repo, tip);
        out.pulled = did;
        out.head = Some(to);
        Ok(out)
    }

    fn set_seen(&self, repo: &Repository, tip: Oid) {
        let _ = repo.reference(
            &seen_ref(&self.settings.name, &self.branch),
            tip,
            true,
            "loops sync: seen",
        );
    }

    /// Pushes the local branch, fast-forward only. Commits whose diff the guard stops are
    /// not pushed, nor what follows them. `tip` is the remote's tip as last fetched.
    pub fn push(&self, guard: &Guard, tip: Option<Oid>) -> Result<Pushed, RemoteError> {
        let repo = self.open()?;
        let Ok(head) = repo.refname_to_id(&format!("refs/heads/{}", self.local)) else {
            return Ok(Pushed::Nothing);
        };
        if Some(head) == tip {
            return Ok(Pushed::Nothing);
        }
        if let Some(t) = tip {
            if !repo.graph_descendant_of(head, t)? {
                // Behind or diverged: the next pull replays first.
                return Ok(Pushed::Nothing);
            }
        }
        let outgoing = outgoing(&repo, head, tip)?;
        let (upto, blocked) = first_blocked(&repo, guard, &outgoing)?;
        let Some(upto) = upto else {
            return Ok(match blocked {
                Some((c, rule)) => Pushed::Held {
                    commit: c.to_string(),
                    rule,
                    pushed: 0,
                },
                None => Pushed::Nothing,
            });
        };
        let pushed = outgoing
            .iter()
            .position(|c| *c == upto)
            .map_or(0, |i| i + 1);
        self.push_commit(&repo, upto, tip)?;
        Ok(match blocked {
            Some((c, rule)) => Pushed::Held {
                commit: c.to_string(),
                rule,
                pushed,
            },
            None => Pushed::Pushed {
                from: tip.map(|t| t.to_string()),
                to: upto.to_string(),
                commits: pushed,
            },
        })
    }

    fn push_commit(
        &self,
        repo: &Repository,
        upto: Oid,
        tip: Option<Oid>,
    ) -> Result<(), RemoteError> {
        let name = &self.settings.name;
        // Named for this attempt and removed after it: a sync killed mid-push leaves the
        // ref's lock file behind, which must not stop the next one.
        let src = format!(
            "{}-{}-{}",
            push_ref(name, &self.branch),
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        repo.reference(&src, upto, true, "loops sync: push")?;
        let result = self.push_ref_to(repo, &src, upto, tip);
        if let Ok(mut r) = repo.find_reference(&src) {
            let _ = r.delete();
        }
        result
    }

    fn push_ref_to(
        &self,
        repo: &Repository,
        src: &str,
        upto: Oid,
        tip: Option<Oid>,
    ) -> Result<(), RemoteError> {
        let name = &self.settings.name;
        let mut remote = repo
            .find_remote(name)
            .map_err(|_| RemoteError::NoRemote(name.clone()))?;
        let on_disk = local_path(remote.url().unwrap_or_default(), &self.workdir);
        let dst = match &on_disk {
            // libgit2 pushes to a repository on disk by writing the ref itself, forced and
            // without a look at its old value (transports/local.c), so a person's push in
            // between would be overwritten. The objects go to a ref of our own there, and
            // the branch is then moved by compare-and-set, under git's own ref lock.
            // Named for this attempt: a daemon killed mid-push leaves the ref's lock file
            // behind there, which must not stop the next push of the same commit.
            Some(_) => format!(
                "refs/loops/incoming/{upto}-{}-{}",
                std::process::id(),
                Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ),
            None => format!("refs/heads/{}", self.branch),
        };
        let rejected: RefCell<Option<String>> = RefCell::new(None);
        let moved: Cell<bool> = Cell::new(false);
        let auth = Auth::new(&self.settings, &self.url(repo));
        let mut cb = auth.callbacks();
        cb.push_negotiation(|updates| {
            // The remote must still hold what we fetched: anything else is someone else's
            // push since, which a fast-forward from our view would not include.
            // (On disk the check is the compare-and-set after the push: the ref pushed to
            // is our own, maybe left by a push a kill cut short.)
            if on_disk.is_some() {
                return Ok(());
            }
            let expected = tip.unwrap_or_else(Oid::zero);
            if updates.iter().any(|u| u.src() != expected) {
                moved.set(true);
                return Err(git2::Error::from_str("the remote moved since the fetch"));
            }
            Ok(())
        });
        cb.push_update_reference(|_, status| {
            if let Some(s) = status {
                *rejected.borrow_mut() = Some(s.to_string());
            }
            Ok(())
        });
        let mut po = PushOptions::new();
        po.remote_callbacks(cb);
        let spec = format!("+{src}:{dst}");
        let r = remote.push(&[&spec], Some(&mut po));
        drop(po);
        if moved.get() {
            return Err(RemoteError::Rejected {
                remote: name.clone(),
                message: "the remote moved since the fetch".into(),
            });
        }
        r.map_err(|e| auth.explain(e, name, &self.url(repo)))?;
        if let Some(message) = rejected.into_inner() {
            return Err(RemoteError::Rejected {
                remote: name.clone(),
                message,
            });
        }
        if let Some(path) = on_disk {
            self.move_on_disk(&path, &dst, upto, tip)?;
        }
        repo.reference(
            &tracking_ref(name, &self.branch),
            upto,
            true,
            "loops sync: pushed",
        )?;
        self.set_seen(repo, upto);
        Ok(())
    }

    /// Moves the branch of the repository on disk at `path` from `tip` to `upto` (pushed
    /// there as `incoming`), only if it still holds `tip`.
    fn move_on_disk(
        &self,
        path: &Path,
        incoming: &str,
        upto: Oid,
        tip: Option<Oid>,
    ) -> Result<(), RemoteError> {
        let there = Repository::open(path)?;
        let branch = format!("refs/heads/{}", self.branch);
        let moved = match tip {
            Some(t) => there.reference_matching(&branch, upto, true, t, "loops sync: push"),
            None => there.reference(&branch, upto, false, "loops sync: push"),
        };
        if let Ok(mut r) = there.find_reference(incoming) {
            let _ = r.delete();
        }
        match moved {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    git2::ErrorCode::Modified | git2::ErrorCode::Exists | git2::ErrorCode::Locked
                ) =>
            {
                Err(RemoteError::Rejected {
                    remote: self.settings.name.clone(),
                    message: "the remote moved since the fetch".into(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// How far the local branch and the fetched tip are apart: (ahead, behind).
    pub fn distance(&self, tip: Option<Oid>) -> (usize, usize) {
        let Ok(repo) = self.open() else { return (0, 0) };
        let head = repo
            .refname_to_id(&format!("refs/heads/{}", self.local))
            .ok();
        match (head, tip) {
            (Some(h), Some(t)) => repo.graph_ahead_behind(h, t).unwrap_or((0, 0)),
            (Some(h), None) => (count(&repo, h), 0),
            _ => (0, 0),
        }
    }
}

fn count(repo: &Repository, head: Oid) -> usize {
    repo.revwalk()
        .and_then(|mut w| w.push(head).map(|_| w.count()))
        .unwrap_or(0)
}

/// What integrating the fetched tip did.
#[derive(Debug, Default)]
pub struct Integrated {
    pub pulled: Pulled,
    pub changed: Vec<String>,
    pub held: Vec<HeldCommit>,
    pub head: Option<Oid>,
}

/// Replays commit `c` onto `onto` as an edit of only the paths `c` changed; a path the
/// remote changed too keeps the remote's version, and `c` is reported held.
fn replay(repo: &Repository, c: Oid, onto: Oid) -> Result<(Oid, Option<HeldCommit>), RemoteError> {
    let commit = repo.find_commit(c)?;
    let parent_tree = match commit.parent(0) {
        Ok(p) => Some(p.tree()?),
        Err(_) => None,
    };
    let tree = commit.tree()?;
    let base = repo.find_commit(onto)?;
    let base_tree = base.tree()?;
    let diff = repo.diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)?;
    let mut edit = TreeUpdateBuilder::new();
    let mut theirs = Vec::new();
    for delta in diff.deltas() {
        let path = delta
            .new_file()
            .path()
            .or_else(|| delta.old_file().path())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let old = entry_id(parent_tree.as_ref(), &path);
        let new = entry_id(Some(&tree), &path);
        let now = entry_id(Some(&base_tree), &path);
        if now == new {
            continue;
        }
        if now != old {
            theirs.push(path.display().to_string());
            continue;
        }
        match tree.get_path(&path) {
            Ok(e) => edit.upsert(&path, e.id(), filemode(e.filemode())),
            Err(_) => edit.remove(&path),
        };
    }
    let new_tree = repo.find_tree(edit.create_updated(repo, &base_tree)?)?;
    let next = if new_tree.id() == base_tree.id() {
        onto
    } else {
        repo.commit(
            None,
            &commit.author(),
            &commit.committer(),
            commit.message_raw().unwrap_or(""),
            &new_tree,
            &[&base],
        )?
    };
    let held = (!theirs.is_empty()).then(|| {
        let trailers = crate::history::parse_trailers(commit.message().unwrap_or(""));
        let get = |k: &str| {
            trailers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        HeldCommit {
            commit: c.to_string(),
            reference: String::new(),
            run: get("Run"),
            loop_name: get("Loop"),
            paths: theirs,
            theirs: String::new(),
            why: "conflict".into(),
        }
    });
    Ok((next, held))
}

fn entry_id(tree: Option<&git2::Tree>, path: &Path) -> Option<(Oid, i32)> {
    tree.and_then(|t| t.get_path(path).ok())
        .map(|e| (e.id(), e.filemode()))
}

fn filemode(mode: i32) -> git2::FileMode {
    match mode {
        0o100755 => git2::FileMode::BlobExecutable,
        0o120000 => git2::FileMode::Link,
        0o160000 => git2::FileMode::Commit,
        0o040000 => git2::FileMode::Tree,
        _ => git2::FileMode::Blob,
    }
}

fn changed_paths(
    repo: &Repository,
    from: Option<&git2::Tree>,
    to: &git2::Tree,
) -> Result<Vec<String>, RemoteError> {
    let diff = repo.diff_tree_to_tree(from, Some(to), None)?;
    Ok(diff
        .deltas()
        .filter_map(|d| d.new_file().path().or_else(|| d.old_file().path()))
        .map(|p| p.display().to_string())
        .collect())
}

/// The commits a push would send, oldest first.
fn outgoing(repo: &Repository, head: Oid, tip: Option<Oid>) -> Result<Vec<Oid>, RemoteError> {
    let mut walk = repo.revwalk()?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)?;
    walk.push(head)?;
    if let Some(t) = tip {
        walk.hide(t)?;
    }
    Ok(walk.collect::<Result<Vec<_>, _>>()?)
}

/// The last commit that may be pushed (`None`: not even the first), and the first one the
/// guard stopped with its rule.
type PushLimit = (Option<Oid>, Option<(Oid, String)>);

/// The last commit that may be pushed (`None`: not even the first), and the first one the
/// guard stops with its rule. A pushed secret is public, so the added lines of every
/// outgoing commit are read before anything leaves.
fn first_blocked(
    repo: &Repository,
    guard: &Guard,
    outgoing: &[Oid],
) -> Result<PushLimit, RemoteError> {
    let mut last_ok = None;
    for c in outgoing {
        let added = added_text(repo, *c)?;
        if let Err(b) = guard.check(&added) {
            return Ok((last_ok, Some((*c, b.rule))));
        }
        last_ok = Some(*c);
    }
    Ok((last_ok, None))
}

/// The lines commit `c` adds, with the paths it touches.
fn added_text(repo: &Repository, c: Oid) -> Result<String, RemoteError> {
    let commit = repo.find_commit(c)?;
    let parent = match commit.parent(0) {
        Ok(p) => Some(p.tree()?),
        Err(_) => None,
    };
    let diff = repo.diff_tree_to_tree(parent.as_ref(), Some(&commit.tree()?), None)?;
    let mut text = String::new();
    diff.print(git2::DiffFormat::Patch, |delta, _, line| {
        match line.origin() {
            '+' => text.push_str(&String::from_utf8_lossy(line.content())),
            'F' => {
                if let Some(p) = delta.new_file().path() {
                    text.push_str(&p.display().to_string());
                    text.push('\n');
                }
            }
            _ => {}
        }
        true
    })?;
    Ok(text)
}

/// A URL without a password or token in it.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://[redacted]@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// The branch a rebase in progress is rewriting (HEAD is detached meanwhile), so a sync
/// then names the right branch and waits, rather than take another for it.
fn branch_being_rewritten(repo: &Repository) -> Option<String> {
    ["rebase-merge/head-name", "rebase-apply/head-name"]
        .iter()
        .find_map(|f| std::fs::read_to_string(repo.path().join(f)).ok())
        .and_then(|t| t.trim().strip_prefix("refs/heads/").map(str::to_string))
}

/// The folder of a remote reached as a path (`/srv/mind.git`, `../mind.git`,
/// `file:///srv/mind.git`) rather than over a network transport.
fn local_path(url: &str, workdir: &Path) -> Option<PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        return Some(PathBuf::from(p));
    }
    if url.contains("://") {
        return None;
    }
    // `host:path` is scp-style ssh, unless the part before the colon holds a slash.
    if let Some((host, _)) = url.split_once(':') {
        if !host.contains('/') {
            return None;
        }
    }
    let p = Path::new(url);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        workdir.join(p)
    })
}

/// The port of an `ssh://host:port/…` URL.
fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let host = rest.split('/').next()?;
    let host = host.rsplit('@').next()?;
    host.rsplit_once(':')?.1.parse().ok()
}

/// Credentials and host-key checks for one network step.
struct Auth<'s> {
    settings: &'s RemoteSettings,
    /// The ssh URL's port, for `[host]:port` lines of known_hosts.
    port: Option<u16>,
    failure: RefCell<Option<RemoteError>>,
    tries: Cell<u32>,
}

impl<'s> Auth<'s> {
    fn new(settings: &'s RemoteSettings, url: &str) -> Self {
        Auth {
            settings,
            port: url_port(url),
            failure: RefCell::new(None),
            tries: Cell::new(0),
        }
    }

    fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut cb = RemoteCallbacks::new();
        cb.credentials(|url, user, allowed| self.credentials(url, user, allowed));
        cb.certificate_check(|cert, host| {
            let Some(key) = cert.as_hostkey() else {
                // TLS: libgit2 has already checked the certificate against the system's.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let file = self.settings.known_hosts.as_deref();
            match crate::known_hosts::check(file, host, self.port, key) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(e) => {
                    let msg = e.to_string();
                    *self.failure.borrow_mut() = Some(e.into());
                    Err(git2::Error::from_str(&msg))
                }
            }
        });
        cb
    }

    fn credentials(
        &self,
        _url: &str,
        user: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        // libgit2 asks again after a refusal; a third ask means the server said no.
        self.tries.set(self.tries.get() + 1);
        if self.tries.get() > 3 {
            return Err(git2::Error::from_str(
                "the remote refused every credential offered",
            ));
        }
        let auth = &self.settings.auth;
        if allowed.contains(CredentialType::SSH_KEY) {
            let user = user.unwrap_or("git");
            if let Some(key) = &auth.ssh_key_file {
                return Cred::ssh_key(user, None, key, None);
            }
            if auth.ssh_agent {
                return Cred::ssh_key_from_agent(user);
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if let Some(var) = &auth.token_env {
                let Ok(token) = crate::secrets::var(var) else {
                    *self.failure.borrow_mut() = Some(RemoteError::TokenUnset(var.clone()));
                    return Err(git2::Error::from_str("token unset"));
                };
                return Cred::userpass_plaintext(user.unwrap_or("x-access-token"), &token);
            }
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user.unwrap_or("git"));
        }
        Err(git2::Error::from_str(
            "the remote asks for credentials and loops.yaml names none (remote.ssh_key_file, remote.ssh_agent or remote.token_env)",
        ))
    }

    /// The error to report for a failed network step: what a callback found, else git's.
    fn explain(&self, e: git2::Error, remote: &str, url: &str) -> RemoteError {
        if let Some(f) = self.failure.borrow_mut().take() {
            return f;
        }
        let message = crate::secrets::redact(e.message()).into_owned();
        match e.class() {
            git2::ErrorClass::Http | git2::ErrorClass::Ssh
                if e.code() == git2::ErrorCode::Auth
                    || message.contains("authentication")
                    || message.contains("401")
                    || message.contains("403") =>
            {
                RemoteError::Auth {
                    remote: remote.into(),
                    message,
                }
            }
            _ if e.code() == git2::ErrorCode::Auth || self.tries.get() > 3 => RemoteError::Auth {
                remote: remote.into(),
                message,
            },
            _ => RemoteError::Network {
                remote: remote.into(),
                url: url.into(),
                message,
            },
        }
    }
}

/// The nudge (in `.loops/signals/`) by which `loops sync` asks a serving daemon to sync
/// now; loop names cannot start with a dot, so it is no loop's.
pub const SYNC_NUDGE: &str = ".sync";

/// What a sync is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncAsk {
    pub pull: bool,
    pub push: bool,
}

/// How many times a rejected push is fetched, replayed and tried again in one sync.
const PUSH_TRIES: u32 = 3;
/// Failures in a row after which the person is handed the outage (also after an hour).
pub const FAILURES_BEFORE_HANDOFF: u32 = 5;

/// The branch rule of a workspace's settings (what the committer follows).
pub fn branch_rule(s: &crate::workspace::Settings) -> Option<BranchRule> {
    if s.git_follow_checkout {
        Some(BranchRule::Follow)
    } else {
        s.git_branch.clone().map(BranchRule::Fixed)
    }
}

/// One sync of `ws` with its remote: fetch, move the branch and the tree (on the
/// committer's thread), push; what it did is also kept for `loops status`, with a
/// handoff for what needs a person. `Ok(None)`: loops.yaml sets no remote.
pub fn sync(
    ws: &crate::workspace::Workspace,
    committer: &crate::history::Committer,
    ask: SyncAsk,
) -> Result<Option<SyncReport>, RemoteError> {
    sync_announcing(ws, committer, ask, Arc::new(|_: &[String]| {}))
}

/// Hears, on the committer's thread, the workspace-relative paths a pull is about to
/// rewrite, before the checkout starts (the daemon holds those loops' runs).
pub type Announce = Arc<dyn Fn(&[String]) + Send + Sync>;

/// [`sync`], with `announce` told of each checkout before it happens.
pub fn sync_announcing(
    ws: &crate::workspace::Workspace,
    committer: &crate::history::Committer,
    ask: SyncAsk,
    announce: Announce,
) -> Result<Option<SyncReport>, RemoteError> {
    let Some(settings) = ws.settings.remote.clone() else {
        return Ok(None);
    };
    let layout = ws.layout();
    let rule = branch_rule(&ws.settings).or_else(|| crate::git_gate::recorded_rule(&layout));
    let result = Remote::new(&ws.root, &settings, rule.as_ref())
        .and_then(|remote| sync_with(&remote, ws, committer, ask, &announce));
    let state = record(ws, committer, &settings, &result);
    state.save(&layout);
    result.map(Some)
}

fn sync_with(
    remote: &Remote,
    ws: &crate::workspace::Workspace,
    committer: &crate::history::Committer,
    ask: SyncAsk,
    announce: &Announce,
) -> Result<SyncReport, RemoteError> {
    let mut report = SyncReport {
        remote: remote.settings.name.clone(),
        branch: remote.branch.clone(),
        ..Default::default()
    };
    let guard = Guard::new(&ws.settings.guard, None).with_detector(
        crate::guard::Detector::ApiKey,
        "pushes (a pushed secret is public)",
    );
    let push = ask.push && remote.settings.push;
    let mut tries = 0;
    loop {
        let tip = remote.fetch()?;
        report.fetched = tip.map(|t| t.to_string());
        let diverged = tip.is_some_and(|t| !remote.contains(t));
        if ask.pull || (push && diverged) {
            let (r, heard) = (remote.clone(), announce.clone());
            let done = committer
                .exclusive(move |repo| r.integrate(repo, tip, &heard))
                .map_err(|_| RemoteError::Stopped)??;
            merge_pull(&mut report, done);
        }
        if !push {
            break;
        }
        match remote.push(&guard, tip) {
            Ok(p) => {
                report.push = p;
                break;
            }
            Err(RemoteError::Rejected { .. }) if tries + 1 < PUSH_TRIES => {
                tries += 1;
                std::thread::sleep(crate::backoff::wait(
                    std::time::Duration::from_millis(200),
                    crate::backoff::Growth::Doubling,
                    tries - 1,
                    0.5,
                    crate::backoff::random_spread(),
                    std::time::Duration::from_secs(5),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    let tip = report
        .fetched
        .as_deref()
        .and_then(|t| Oid::from_str(t).ok());
    let tip = match &report.push {
        Pushed::Pushed { to, .. } => Oid::from_str(to).ok(),
        _ => tip,
    };
    (report.ahead, report.behind) = remote.distance(tip);
    Ok(report)
}

/// The repository, its HEAD and the remote tip loops last saw there (`None`: never
/// synced), for the daemon's cheap looks between syncs.
fn head_and_seen(ws: &crate::workspace::Workspace) -> Option<(Repository, Oid, Option<Oid>)> {
    let r = ws.settings.remote.as_ref()?;
    let repo = Repository::open(&ws.root).ok()?;
    let head = repo.head().ok().and_then(|h| h.target())?;
    // The remote branch as `Remote::new` names it: remote.branch, else the branch runs
    // commit to, else the one checked out.
    let local = match branch_rule(&ws.settings) {
        Some(BranchRule::Fixed(b)) => Some(b),
        _ => crate::git_gate::current_branch(&repo),
    };
    let branch = r.branch.clone().or(local).unwrap_or_default();
    let seen = repo.refname_to_id(&seen_ref(&r.name, &branch)).ok();
    Some((repo, head, seen))
}

/// Whether the local branch holds commits the remote was not seen to have (cheap: two
/// refs read, for the daemon's look every fraction of a second).
pub fn has_unpushed(ws: &crate::workspace::Workspace) -> bool {
    head_and_seen(ws).is_some_and(|(_, head, seen)| seen != Some(head))
}

/// Folds one integration into the report (a retried push may integrate twice).
fn merge_pull(report: &mut SyncReport, done: Integrated) {
    let moved = !matches!(done.pulled, Pulled::Nothing);
    if moved || matches!(report.pull, Pulled::Nothing) {
        report.pull = done.pulled;
    }
    report.changed.extend(done.changed);
    report.held.extend(done.held);
}

impl Remote {
    /// Whether the local branch already holds `commit`.
    fn contains(&self, commit: Oid) -> bool {
        let Ok(repo) = self.open() else { return true };
        let Ok(head) = repo.refname_to_id(&format!("refs/heads/{}", self.local)) else {
            return false;
        };
        head == commit || repo.graph_descendant_of(head, commit).unwrap_or(false)
    }
}

/// Keeps what the sync did in the remote's state, says it in the journal, and hands the
/// person what needs them: a run's version held after a conflict, a commit the guard
/// kept back, an outage that lasts.
fn record(
    ws: &crate::workspace::Workspace,
    committer: &crate::history::Committer,
    settings: &RemoteSettings,
    result: &Result<SyncReport, RemoteError>,
) -> RemoteState {
    let layout = ws.layout();
    let journal = crate::journal::Journal::open(layout.root());
    let mut state = RemoteState::load(&layout).unwrap_or_default();
    state.remote = settings.name.clone();
    let now = Utc::now();
    state.last_attempt = Some(now);
    match result {
        Ok(r) => {
            state.branch = r.branch.clone();
            state.last_fetch = Some(now);
            state.last_report = Some(r.clone());
            if matches!(r.push, Pushed::Pushed { .. }) {
                state.last_push = Some(now);
            }
            state.failures = 0;
            state.failing_since = None;
            state.outage_reported = false;
            state.last_error = None;
            state.ahead = r.ahead;
            state.behind = r.behind;
            state.deferred = match &r.pull {
                Pulled::Deferred { reason, paths } if paths.is_empty() => Some(reason.clone()),
                Pulled::Deferred { reason, paths } => {
                    Some(format!("{reason}: {}", paths.join(", ")))
                }
                _ => None,
            };
            journal.record("sync", serde_json::to_value(r).unwrap_or_default());
            for h in &r.held {
                conflict_handoff(ws, committer, h);
                state.held.push(h.clone());
            }
            if let Pushed::Held { commit, rule, .. } = &r.push {
                if !state.held.iter().any(|h| &h.commit == commit) {
                    let h = guard_held(ws, committer, commit, rule);
                    state.held.push(h);
                }
            }
            let keep = state.held.len().saturating_sub(100);
            state.held.drain(..keep);
        }
        Err(e) => {
            state.failures += 1;
            let since = *state.failing_since.get_or_insert(now);
            state.last_error = Some(SyncFailure {
                at: now,
                message: e.to_string(),
                help: e.help(),
            });
            journal.record(
                "sync_failed",
                serde_json::json!({"error": e.to_string(), "failures": state.failures}),
            );
            tracing::warn!("sync with {}: {e}", settings.name);
            let long = now - since >= chrono::Duration::hours(1);
            if !state.outage_reported && (state.failures >= FAILURES_BEFORE_HANDOFF || long) {
                outage_handoff(ws, committer, &state, e);
                state.outage_reported = true;
            }
        }
    }
    state
}

fn handoff(
    ws: &crate::workspace::Workspace,
    committer: &crate::history::Committer,
    n: crate::handoff::NewHandoff,
) {
    crate::handoff::create_committed(ws, Some(committer), &n);
}

fn conflict_handoff(
    ws: &crate::workspace::Workspace,
    committer: &crate::history::Committer,
    h: &HeldCommit,
) {
    let who = h.loop_name.clone().unwrap_or_else(|| "a run".into());
    let n = crate::handoff::NewHandoff {
        from: "loops".into(),
        to: "main".into(),
        title: format!("Sync: the person's edit won over {who}'s in {}", h.paths.join(", ")),
        priority: crate::handoff::Priority::High,
        run: h.run.clone(),
        tags: vec!["sync-conflict".into()],
        body: format!(
            "The remote changed the same file(s) that {who}'s run {} changed before it was pushed: {}.\n\nThe person's version (remote commit {}) is in the work tree. The run's version is kept on `{}` (commit {}); see it with `git show {}`.\n",
            h.run.as_deref().unwrap_or("-"),
            h.paths.join(", "),
            &h.theirs[..h.theirs.len().min(12)],
            h.reference,
            &h.commit[..h.commit.len().min(12)],
            h.reference,
        ),
        items: vec![format!(
            "Compare the two versions and carry over what the run's version had that should be kept"
        )],
        ..Default::default()
    };
    handoff(ws, committer, n);
}

fn guard_held(
    ws: &crate::workspace::Workspace,
    committer: &crate::history::Committer,
    commit: &str,
    rule: &str,
) -> HeldCommit {
    let short = &commit[..commit.len().min(12)];
    let reference = held_ref(short);
    if let Ok(repo) = Repository::open(&ws.root) {
        if let Ok(oid) = Oid::from_str(commit) {
            let _ = repo.reference(
                &reference,
                oid,
                true,
                "loops sync: held by the never-share guard",
            );
        }
    }
    let n = crate::handoff::NewHandoff {
        from: "loops".into(),
        to: "person".into(),
        title: format!("Sync: commit {short} is not pushed: it matches never-share rule `{rule}`"),
        priority: crate::handoff::Priority::High,
        tags: vec!["sync-held".into()],
        body: format!(
            "Commit {short} would make what matches never-share rule `{rule}` public on the remote, so it is not pushed, nor any commit after it; it is kept on `{reference}`. Commits before it were pushed.\n\nTo go on: take the secret out of history on this machine (e.g. `git rebase -i {short}^` and edit or drop it), then `loops sync`. If it is no secret, loosen the rule in loops.yaml.\n"
        ),
        items: vec!["Take the secret out of the unpushed commit, then run `loops sync`".into()],
        ..Default::default()
    };
    handoff(ws, committer, n);
    HeldCommit {
        commit: commit.to_string(),
        reference,
        run: None,
        loop_name: None,
        paths: Vec::new(),
        theirs: String::new(),
        why: format!("never-share: {rule}"),
    }
}

fn outage_handoff(
    ws: &crate::workspace::Workspace,
    committer: &crate::history::Committer,
    state: &RemoteState,
    e: &RemoteError,
) {
    let n = crate::handoff::NewHandoff {
        from: "loops".into(),
        to: "person".into(),
        title: format!("Sync with `{}` has failed {} times", state.remote, state.failures),
        priority: crate::handoff::Priority::High,
        tags: vec!["sync-failing".into()],
        body: format!(
            "Syncing with the remote `{}` has failed since {} ({} tries). The last error:\n\n    {e}\n\n{}\n\nNothing is lost: runs keep committing here and are pushed when the remote accepts. `loops status` shows the remote; `loops sync` tries now.\n",
            state.remote,
            state.failing_since.map(|t| t.to_rfc3339()).unwrap_or_default(),
            state.failures,
            e.help().unwrap_or_default(),
        ),
        items: vec!["Fix what stops the sync, then run `loops sync`".into()],
        ..Default::default()
    };
    handoff(ws, committer, n);
}

/// What `loops check` says about `remote:` beyond its syntax: a remote git does not know,
/// a token variable unset here, a key file that is not there.
pub fn check(ws: &crate::workspace::Workspace) -> Vec<crate::diag::Diagnostic> {
    use crate::diag::Diagnostic;
    let Some(r) = &ws.settings.remote else {
        return Vec::new();
    };
    let file = Path::new("loops.yaml");
    let mut out = Vec::new();
    if let Err(e) = Remote::new(&ws.root, r, None) {
        let mut d = Diagnostic::error(file, format!("remote: {e}"));
        if let Some(h) = e.help() {
            d = d.help(h);
        }
        out.push(d);
    }
    if let Some(var) = &r.auth.token_env {
        if crate::secrets::var(var).is_err() {
            out.push(
                Diagnostic::warning(file, format!("remote.token_env names `{var}`, which is not set here"))
                    .help(format!("the daemon reads it when it syncs: export {var}=… in its environment (the service's environment file)")),
            );
        }
    }
    if let Some(key) = &r.auth.ssh_key_file {
        if !key.is_file() {
            out.push(
                Diagnostic::warning(file, format!("remote.ssh_key_file {} does not exist", key.display()))
                    .help("create it (`ssh-keygen -t ed25519 -f FILE`) and add its .pub as a deploy key, or fix the path"),
            );
        }
    }
    out
}

/// The loops whose last commits the remote does not have yet, while pushing works: the
/// daemon holds their next run until those are pushed, so a run never builds on state the
/// other side has not seen (docs/remote.md). Empty when pushing is off or failing (then
/// runs go on and commit locally; nothing is lost) and when nothing is unpushed.
pub fn loops_awaiting_push(ws: &crate::workspace::Workspace) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let Some(r) = &ws.settings.remote else {
        return out;
    };
    if !r.push || !has_unpushed(ws) {
        return out;
    }
    if RemoteState::load(&ws.layout()).is_some_and(|s| s.failures > 0 || s.last_attempt.is_none()) {
        return out;
    }
    let Some((repo, head, Some(seen))) = head_and_seen(ws) else {
        return out;
    };
    let Ok(mut walk) = repo.revwalk() else {
        return out;
    };
    if walk.push(head).is_err() || walk.hide(seen).is_err() {
        return out;
    }
    // A handful of commits at most: the ones made since the last push.
    for oid in walk.flatten().take(1000) {
        let Ok(c) = repo.find_commit(oid) else {
            continue;
        };
        let trailers = crate::history::parse_trailers(c.message().unwrap_or(""));
        if let Some((_, name)) = trailers.iter().find(|(k, _)| k == "Loop") {
            out.insert(name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn commit_file(repo: &Repository, rel: &str, text: &str, parent: Option<Oid>) -> Oid {
        let root = repo.workdir().expect("work tree");
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        let mut index = repo.index().expect("index");
        index.add_path(Path::new(rel)).expect("add");
        index.write().expect("index write");
        let tree = repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("tree");
        let sig = git2::Signature::now("t", "t@example.com").expect("sig");
        let parents: Vec<git2::Commit> = parent
            .map(|p| repo.find_commit(p).expect("parent"))
            .into_iter()
            .collect();
        let refs: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, rel, &tree, &refs)
            .expect("commit")
    }

    /// The daemon holds a loop's runs from the announcement on, so the announcement must
    /// come while the work tree still holds the old files, and name every path that moves.
    #[test]
    fn a_checkout_is_announced_before_it_touches_the_work_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Repository::init(dir.path().join("server")).expect("init");
        let first = commit_file(&server, "domains/a/prompt.md", "old", None);
        let laptop_dir = dir.path().join("laptop");
        let server_dir = dir.path().join("server");
        let laptop =
            Repository::clone(server_dir.to_str().expect("utf-8"), &laptop_dir).expect("clone");
        server
            .remote("origin", laptop_dir.to_str().expect("utf-8"))
            .expect("remote");
        let tip = commit_file(&laptop, "domains/a/prompt.md", "new", Some(first));

        let settings = RemoteSettings::default();
        let branch = server
            .head()
            .ok()
            .and_then(|h| h.shorthand().map(str::to_string))
            .expect("a branch");
        let remote = Remote::new(
            server.workdir().expect("wd"),
            &settings,
            Some(&BranchRule::Fixed(branch)),
        )
        .expect("remote");
        let fetched = remote.fetch().expect("fetch");
        assert_eq!(fetched, Some(tip));
        let prompt = dir.path().join("server/domains/a/prompt.md");
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        let announce: Announce = Arc::new(move |paths: &[String]| {
            let on_disk = std::fs::read_to_string(&prompt).unwrap_or_default();
            h.lock().expect("lock").push((paths.to_vec(), on_disk));
        });
        let done = remote
            .integrate(&server, fetched, &announce)
            .expect("integrate");
        assert!(matches!(done.pulled, Pulled::FastForward { .. }));
        let heard = heard.lock().expect("lock").clone();
        assert_eq!(
            heard,
            vec![(vec!["domains/a/prompt.md".to_string()], "old".to_string())]
        );
        let now = std::fs::read_to_string(dir.path().join("server/domains/a/prompt.md"));
        assert_eq!(now.expect("read"), "new");
    }
}
