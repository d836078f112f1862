//! Continuity across a pull (docs/remote.md): a loop whose folder a pull is rewriting
//! does not start a run until the daemon has reloaded that folder, so no run reads half
//! of a pulled prompt or a config the hot reload has not checked yet.
//!
//! The sync announces the paths on the committer's thread before the checkout starts; it
//! then says which of them it really changed (a deferred or failed pull changes nothing,
//! and its loops are let go at once); the daemon lets a loop go when it has processed a
//! batch of file events naming its folder, which the syncer sends after the checkout.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A hold is let go after this even if its batch never arrives (a dropped channel), so a
/// lost event delays a loop and never stops it.
const AT_MOST: Duration = Duration::from_secs(60);

/// What a pulled path holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    /// `domains/<name>/…`: that loop.
    Loop(String),
    /// loops.yaml: every loop (defaults, providers and limits may change).
    Everything,
}

fn scope_of(relative: &Path) -> Option<Scope> {
    let mut parts = relative.components();
    match parts.next()?.as_os_str().to_str()? {
        "loops.yaml" if parts.next().is_none() => Some(Scope::Everything),
        "domains" => {
            let name = parts.next()?.as_os_str().to_str()?;
            Some(Scope::Loop(name.to_string()))
        }
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    since: Instant,
    /// The checkout finished and its paths are on their way to the daemon.
    landed: bool,
}

/// The loops a pull holds, shared by the syncer (which announces) and the daemon (which
/// asks and lets go).
#[derive(Debug, Default)]
pub struct PullHold {
    held: Mutex<HashMap<Scope, Entry>>,
}

impl PullHold {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Scope, Entry>) -> T) -> T {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut held)
    }

    /// A checkout of these workspace-relative paths is about to start.
    pub fn announce(&self, paths: &[String], now: Instant) {
        let scopes: HashSet<Scope> = paths
            .iter()
            .filter_map(|p| scope_of(Path::new(p)))
            .collect();
        self.with(|held| {
            for s in scopes {
                held.insert(
                    s,
                    Entry {
                        since: now,
                        landed: false,
                    },
                );
            }
        });
    }

    /// The sync ended having changed `changed` (workspace-relative): their loops stay held
    /// until the daemon applies them; what was announced and not changed is let go.
    pub fn landed(&self, changed: &[String]) {
        let scopes: HashSet<Scope> = changed
            .iter()
            .filter_map(|p| scope_of(Path::new(p)))
            .collect();
        self.with(|held| {
            held.retain(|s, e| {
                if scopes.contains(s) {
                    e.landed = true;
                }
                e.landed
            })
        });
    }

    /// The daemon has processed `batch` (absolute paths under `root`): what it covers is
    /// reloaded, so those loops may run. An empty path (a full rescan) covers everything.
    pub fn applied(&self, batch: &[PathBuf], root: &Path) {
        let mut covered = HashSet::new();
        let mut all = false;
        for p in batch {
            if p.as_os_str().is_empty() {
                all = true;
            } else if let Some(s) = p.strip_prefix(root).ok().and_then(scope_of) {
                covered.insert(s);
            }
        }
        self.with(|held| held.retain(|s, e| !(e.landed && (all || covered.contains(s)))));
    }

    /// Which of `ready` (loop names) wait for a pull: those it named, or all of them while
    /// loops.yaml is being pulled.
    pub fn holding<'a>(
        &self,
        ready: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> HashSet<String> {
        self.with(|held| {
            held.retain(|_, e| now.duration_since(e.since) < AT_MOST);
            if held.is_empty() {
                return HashSet::new();
            }
            let all = held.contains_key(&Scope::Everything);
            ready
                .into_iter()
                .filter(|n| all || held.contains_key(&Scope::Loop(n.to_string())))
                .map(str::to_string)
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_loop_is_held_from_the_announcement_until_its_folder_is_applied() {
        let (hold, now, root) = (PullHold::default(), Instant::now(), Path::new("/w"));
        hold.announce(&paths(&["domains/a/prompt.md", "notes.md"]), now);
        assert_eq!(
            hold.holding(["a", "b"], now),
            HashSet::from(["a".to_string()])
        );
        hold.landed(&paths(&["domains/a/prompt.md"]));
        // An unrelated batch (the inbox) does not let it go; its own folder does.
        hold.applied(&[root.join("inbox/x.md")], root);
        assert_eq!(hold.holding(["a"], now).len(), 1);
        hold.applied(&[root.join("domains/a/prompt.md")], root);
        assert!(hold.holding(["a"], now).is_empty());
    }

    #[test]
    fn a_deferred_pull_lets_go_and_a_pulled_loops_yaml_holds_all() {
        let (hold, now, root) = (PullHold::default(), Instant::now(), Path::new("/w"));
        hold.announce(&paths(&["domains/a/config.yaml"]), now);
        // Before the checkout lands, even a batch naming the folder does not let go: the
        // files on disk may still be the old ones.
        hold.applied(&[root.join("domains/a/config.yaml")], root);
        assert_eq!(hold.holding(["a"], now).len(), 1);
        hold.landed(&[]);
        assert!(hold.holding(["a"], now).is_empty());
        hold.announce(&paths(&["loops.yaml"]), now);
        assert_eq!(hold.holding(["a", "b"], now).len(), 2);
        assert!(
            hold.holding(["a"], now + AT_MOST).is_empty(),
            "never held forever"
        );
    }
}
