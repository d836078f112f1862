//! Empty files made ahead of a transaction, outside the queue lock.
//!
//! Every write of a job file is a new file renamed over the old (or into place), and on
//! a busy ext4 creating a file is most of what that costs (0.3–0.6 ms here, where writing
//! 2 KB into it and renaming it take 40 µs). Made under the queue lock, those creations
//! are what every other submitter and the worker wait for. So a transaction first makes
//! the empty files it will need (outside the lock, at the same time as other
//! transactions hold it) and, under the lock, only fills and renames them.
//!
//! A spare is `.spare-<pid>-<n>` in the queue folder (no `.json`: never taken for a
//! job). Spares not used go back to the pool of this handle (a few are kept) and are
//! deleted when they are dropped (with the last clone of the handle); a crashed
//! process's are deleted by the next sweep.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Spares kept between transactions, at most.
const KEEP: usize = 16;

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
            .write_all(bytes)
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
    kept: Mutex<Vec<Spare>>,
    made: AtomicU64,
}

impl Spares {
    pub fn new(dir: PathBuf) -> Spares {
        Spares {
            dir,
            kept: Mutex::new(Vec::new()),
            made: AtomicU64::new(0),
        }
    }

    /// `n` spares: kept ones first, the rest made now. Making one can fail (a full
    /// disk): fewer are returned, and the writes without one make their own file.
    pub fn take(&self, n: usize) -> Vec<Spare> {
        let mut out: Vec<Spare> = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let at = kept.len().saturating_sub(n);
            kept.split_off(at)
        };
        while out.len() < n {
            match self.make() {
                Ok(s) => out.push(s),
                Err(_) => break,
            }
        }
        out
    }

    /// Spares a transaction did not use.
    pub fn put_back(&self, spares: Vec<Spare>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let room = KEEP.saturating_sub(kept.len());
        // Beyond the room, dropped: deleted.
        kept.extend(spares.into_iter().take(room));
    }

    fn make(&self) -> io::Result<Spare> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(".spare-{}-{n}", std::process::id()));
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
        let spares = Spares::new(d.path().to_path_buf());
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
