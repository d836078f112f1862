//! Empty files made ahead of a transaction, outside the queue lock, and the files a
//! transaction replaced, emptied to be used again.
//!
//! Every write of a job file is a new file renamed over the old (or into place), and on
//! a busy ext4 creating a file is most of what that costs (0.3–0.6 ms here, where writing
//! 2 KB into it and renaming it take 40 µs). Made under the queue lock, those creations
//! are what every other submitter and the worker wait for. So a transaction first makes
//! the empty files it will need (outside the lock, at the same time as other
//! transactions hold it) and, under the lock, only fills and renames them.
//!
//! Creating a file costs that much because of the files freed before it: on this disk
//! (ext4 without a journal) the kernel will not reuse an inode freed in the last minute
//! and steps over each such inode at every creation, and freeing one (the old version a
//! rename replaces) waits for the device to discard its blocks (the file system is
//! mounted with `discard`). A job's file is rewritten three or four times in its life,
//! so a busy queue freed inodes faster than it could create them. So the old version is
//! not freed: before the rename it is given a spare's name (a hard link, no new inode),
//! and after the lock a thread of its own ([`Spares::recycle`]) empties it and puts it in
//! the pool. An emptied spare is handed out only once a flush that began after it was
//! emptied has ended, so on disk it is an empty file before it is filled again: after a
//! power cut a file renamed in but not flushed is at worst empty, as a new file would
//! be, never an older version of some job.
//!
//! A spare is `.spare-<pid>-<n>` in the queue folder (no `.json`: never taken for a
//! job). Spares not used go back to the pool of this handle and are deleted when they
//! are dropped (with the last clone of the handle); a crashed process's are deleted by
//! the next sweep.

use super::group_commit::GroupCommit;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

/// Spares kept between transactions, at most (each is an open file): enough for the
/// versions a busy worker replaces between two flushes.
const KEEP: usize = 64;

/// Batches of replaced files waiting for the recycler, at most: past it a writer frees
/// its own (it pays the freeing itself, as before, instead of holding more of them).
const RECYCLER_QUEUE: usize = 256;

/// What the recycler thread is given to do.
type Work = Box<dyn FnOnce() + Send>;

/// An empty file, open for writing; deleted if dropped unused.
#[derive(Debug)]
pub struct Spare {
    path: PathBuf,
    file: File,
    used: bool,
}

impl Spare {
    /// Fills the spare with `bytes` and renames it to `to`: `to` is replaced whole (as
    /// `fsutil::atomic_replace` does), on disk with the next flush of the file system.
    pub fn fill_into(mut self, to: &Path, bytes: &[u8]) -> io::Result<()> {
        let r = self
            .file
            .write_all_at(bytes, 0)
            .and_then(|()| std::fs::rename(&self.path, to));
        self.used = r.is_ok();
        r
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if !self.used {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The spares of one queue handle.
#[derive(Debug)]
pub struct Spares {
    dir: PathBuf,
    /// Spares ready or emptied, each with the flush mark it must be flushed past
    /// (`None`: made empty, ready at once), oldest first.
    kept: Mutex<VecDeque<(Option<u64>, Spare)>>,
    made: AtomicU64,
    flusher: Arc<GroupCommit>,
}

impl Spares {
    /// The spares of the queue in `dir`, whose flushes `flusher` makes.
    pub fn new(dir: PathBuf, flusher: Arc<GroupCommit>) -> Spares {
        Spares {
            dir,
            kept: Mutex::new(VecDeque::new()),
            made: AtomicU64::new(0),
            flusher,
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, VecDeque<(Option<u64>, Spare)>> {
        // A list of open files: whole after every statement.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `n` spares: kept ones that are ready first, the rest made now. Making one can
    /// fail (a full disk): fewer are returned, and the writes without one make their
    /// own file.
    pub fn take(&self, n: usize) -> Vec<Spare> {
        let mut out = Vec::with_capacity(n);
        {
            let mut kept = self.kept();
            while out.len() < n {
                match kept.front() {
                    Some((mark, _)) if mark.is_none_or(|m| self.flusher.flushed_since(m)) => {
                        out.extend(kept.pop_front().map(|(_, s)| s));
                    }
                    _ => break,
                }
            }
        }
        while out.len() < n {
            match self.make() {
                Ok(s) => out.push(s),
                Err(_) => break,
            }
        }
        out
    }

    /// Spares a transaction did not use: ready again at once.
    pub fn put_back(&self, spares: Vec<Spare>) {
        let mut kept = self.kept();
        for s in spares {
            if kept.len() >= KEEP {
                break; // the rest are dropped: deleted
            }
            kept.push_front((None, s));
        }
    }

    /// A name for a spare of this process.
    pub fn next_name(&self) -> PathBuf {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(".spare-{}-{n}", std::process::id()))
    }

    fn make(&self) -> io::Result<Spare> {
        let path = self.next_name();
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::fsutil::file_mode(&path))
            .open(&path)?;
        Ok(Spare {
            path,
            file,
            used: false,
        })
    }

    /// Gives the file now at `path` a spare's name, before a write replaces it or a
    /// delete removes it: the old version then lives on as a spare instead of being
    /// freed. `None` when there is no file there (or it cannot be linked: it is then
    /// freed as before).
    pub fn adopt(&self, path: &Path) -> Option<Spare> {
        let name = self.next_name();
        std::fs::hard_link(path, &name).ok()?;
        match OpenOptions::new().write(true).open(&name) {
            Ok(file) => Some(Spare {
                path: name,
                file,
                used: false,
            }),
            Err(_) => {
                let _ = std::fs::remove_file(&name);
                None
            }
        }
    }

    /// Empties adopted old versions and keeps them for later writes, on the recycler
    /// thread, after the lock: emptying frees their blocks, which waits for the disk.
    /// If that thread cannot be had or is behind, they are freed here.
    pub fn recycle(self: &Arc<Self>, old: Vec<Spare>) {
        if old.is_empty() {
            return;
        }
        static RECYCLER: OnceLock<Option<SyncSender<Work>>> = OnceLock::new();
        let recycler = RECYCLER.get_or_init(|| {
            let (tx, rx) = sync_channel::<Work>(RECYCLER_QUEUE);
            std::thread::Builder::new()
                .name("loops-recycler".into())
                .spawn(move || rx.into_iter().for_each(|work| work()))
                .ok()
                .map(|_| tx)
        });
        let me = Arc::clone(self);
        let work: Work = Box::new(move || me.empty_and_keep(old));
        match recycler {
            Some(tx) => match tx.try_send(work) {
                Ok(()) => {}
                Err(TrySendError::Full(w) | TrySendError::Disconnected(w)) => drop(w),
            },
            None => drop(work),
        }
    }

    fn empty_and_keep(&self, old: Vec<Spare>) {
        let mut emptied = Vec::with_capacity(old.len());
        for s in old {
            // A spare that cannot be emptied is dropped: deleted.
            if s.file.set_len(0).is_ok() {
                emptied.push(s);
            }
        }
        // Taken after emptying: only a flush that begins later has it on disk.
        let mark = self.flusher.mark();
        let mut kept = self.kept();
        for s in emptied {
            if kept.len() >= KEEP {
                break;
            }
            kept.push_back((Some(mark), s));
        }
    }

    /// Deletes the spares of processes that are gone (a crash leaves them).
    pub fn remove_orphans(dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(".spare-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !crate::fsutil::process_alive(pid, None) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn spares_are_filled_into_place_kept_for_later_and_cleaned_up() {
        let d = tempfile::tempdir().expect("tempdir");
        let spares = Spares::new(d.path().to_path_buf(), Arc::new(GroupCommit::new()));
        let mut got = spares.take(3);
        assert_eq!(got.len(), 3);
        let s = got.pop().expect("one");
        s.fill_into(&d.path().join("1.json"), b"{}").expect("fill");
        assert_eq!(
            std::fs::read_to_string(d.path().join("1.json")).expect("read"),
            "{}"
        );
        spares.put_back(got);
        let again = spares.take(1);
        assert_eq!(again.len(), 1, "a kept one is given again");
        assert_eq!(names(d.path()).len(), 3, "1.json and two spares");
        spares.put_back(again);
        drop(spares);
        assert_eq!(names(d.path()), ["1.json"], "unused spares are deleted");
    }

    #[test]
    fn a_replaced_file_is_used_again_once_emptied_and_flushed() {
        let d = tempfile::tempdir().expect("tempdir");
        let flusher = Arc::new(GroupCommit::new());
        let spares = Arc::new(Spares::new(d.path().to_path_buf(), flusher.clone()));
        let live = d.path().join("1.json");
        std::fs::write(&live, "old version").expect("write");
        let old = spares.adopt(&live).expect("adopted");
        let new = spares.take(1).pop().expect("a spare");
        new.fill_into(&live, b"new").expect("fill");
        spares.empty_and_keep(vec![old]);
        let fresh = spares.take(1);
        assert_eq!(
            names(d.path()).len(),
            3,
            "1.json, the old version, a new spare"
        );
        spares.put_back(fresh);
        let _ = spares.take(1); // the new spare again, not the old version
        flusher.commit(&|| Ok(())).expect("flush");
        let again = spares.take(1).pop().expect("the old version");
        again
            .fill_into(&d.path().join("2.json"), b"{}")
            .expect("fill");
        assert_eq!(
            std::fs::read_to_string(d.path().join("2.json")).expect("read"),
            "{}",
            "emptied before it was filled"
        );
        assert_eq!(std::fs::read_to_string(&live).expect("read"), "new");
    }

    #[test]
    fn a_dead_process_s_spares_are_removed_and_no_others() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut c = std::process::Command::new("true").spawn().expect("spawn");
        let dead = c.id();
        c.wait().expect("wait");
        for name in [
            format!(".spare-{dead}-0"),
            format!(".spare-{}-0", std::process::id()),
            "7.json".to_string(),
        ] {
            std::fs::write(d.path().join(name), "").expect("write");
        }
        Spares::remove_orphans(d.path());
        assert_eq!(
            names(d.path()),
            [format!(".spare-{}-0", std::process::id()), "7.json".into()]
        );
    }
}
