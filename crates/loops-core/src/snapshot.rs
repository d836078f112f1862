//! Change snapshots: the files under some folders at one moment, to tell afterwards which
//! of them a run created, changed or removed (what its commit takes).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::UNIX_EPOCH;

/// A file's identity for change detection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileSig {
    len: u64,
    mtime_ns: u128,
    hash: Option<u64>,
}

/// Files under `dirs`, with enough to tell whether a run changed them.
fn files_under(dirs: &[PathBuf]) -> HashMap<PathBuf, FileSig> {
    let mut out = HashMap::new();
    for d in dirs {
        for e in walkdir::WalkDir::new(d)
            .into_iter()
            .filter_entry(|e| e.file_name() != ".git")
            .filter_map(|e| e.ok())
        {
            if e.file_type().is_dir() {
                continue;
            }
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            let mtime_ns = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            // Content hashes catch a same-size rewrite inside one mtime tick.
            let hash = (m.len() <= 1 << 20 && m.is_file())
                .then(|| std::fs::read(e.path()).ok())
                .flatten()
                .map(|b| crate::schedule::stable_hash(&String::from_utf8_lossy(&b)));
            out.insert(
                e.path().to_path_buf(),
                FileSig {
                    len: m.len(),
                    mtime_ns,
                    hash,
                },
            );
        }
    }
    out
}

/// Files under some folders at one moment.
#[derive(Default)]
pub struct Snapshot(HashMap<PathBuf, FileSig>);

impl Snapshot {
    /// The files under `dirs` now. Blocking.
    pub fn take(dirs: &[PathBuf]) -> Snapshot {
        Snapshot(files_under(dirs))
    }

    /// The files under `areas` now, read off the async threads.
    pub async fn of(areas: Vec<PathBuf>) -> Snapshot {
        tokio::task::spawn_blocking(move || Snapshot::take(&areas))
            .await
            .unwrap_or_default()
    }

    /// Every file the snapshot holds.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.0.keys()
    }
}

/// The files that appeared, changed or disappeared between two snapshots.
pub fn changed_between(before: &Snapshot, after: &Snapshot) -> Vec<PathBuf> {
    changed_paths(&before.0, &after.0)
}

fn changed_paths(
    before: &HashMap<PathBuf, FileSig>,
    after: &HashMap<PathBuf, FileSig>,
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = after
        .iter()
        .filter(|(p, sig)| match before.get(*p) {
            None => true,
            Some(old) => match (old.hash, sig.hash) {
                (Some(a), Some(b)) => a != b || old.len != sig.len,
                _ => old != *sig,
            },
        })
        .map(|(p, _)| p.clone())
        .chain(before.keys().filter(|p| !after.contains_key(*p)).cloned())
        .collect();
    out.sort();
    out
}
