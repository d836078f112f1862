//! Group commit: many writers, one flush.
//!
//! A queue operation writes its files (a temporary file renamed in) under the queue lock,
//! lets go of the lock, and then calls [`GroupCommit::commit`], which returns once a flush
//! that *began after those writes* has ended. A writer that arrives while a flush is in
//! flight is not covered by it (the flush may have passed its files already): it waits
//! for the next one, which one of the waiting writers (the leader) makes for all of them.
//! So N operations that overlap share about one flush, not N, and each still returns
//! only once its own writes are on disk.
//!
//! The flush is a `syncfs` of the file system holding the queue: one call covers every
//! file and folder written, whatever their number, where an fsync covers one.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};

/// The flushes of one folder's writers in this process.
#[derive(Debug, Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    flushed: Condvar,
    flushes: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Writes announced so far (each `commit` call is one).
    written: u64,
    /// Every write up to this number is covered by a finished flush.
    flushed: u64,
    /// A leader is flushing now.
    flushing: bool,
    /// Flushes begun so far, and the number of the latest begun one that has ended well:
    /// what [`GroupCommit::mark`] and [`GroupCommit::flushed_since`] compare.
    begun: u64,
    ended_well: u64,
}

impl GroupCommit {
    pub fn new() -> GroupCommit {
        GroupCommit::default()
    }

    /// Returns once everything this thread wrote before the call is on disk, by `flush`
    /// called here or by another thread's call that began after this one did. A failed
    /// flush is reported to its leader; the writers it was to cover try again themselves.
    pub fn commit(&self, flush: &dyn Fn() -> io::Result<()>) -> io::Result<()> {
        let mut st = self.lock();
        st.written += 1;
        let mine = st.written;
        loop {
            if st.flushed >= mine {
                return Ok(());
            }
            if !st.flushing {
                // Lead: this flush begins after every write announced so far.
                st.flushing = true;
                st.begun += 1;
                let number = st.begun;
                let upto = st.written;
                drop(st);
                let r = flush();
                self.flushes.fetch_add(1, Ordering::Relaxed);
                st = self.lock();
                st.flushing = false;
                if r.is_ok() {
                    st.flushed = st.flushed.max(upto);
                    st.ended_well = st.ended_well.max(number);
                }
                self.flushed.notify_all();
                r?;
                continue;
            }
            st = self
                .flushed
                .wait(st)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// A mark for a change made without a `commit` of its own (a file emptied to be used
    /// again): it is on disk once [`GroupCommit::flushed_since`] the mark, by a flush
    /// some writer made meanwhile.
    pub fn mark(&self) -> u64 {
        self.lock().begun
    }

    /// Whether a flush that began after `mark` was taken has ended well.
    pub fn flushed_since(&self, mark: u64) -> bool {
        self.lock().ended_well > mark
    }

    /// How many flushes were made (for benches and tests: writes per flush).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is three counters, consistent after every statement: a panic
        // elsewhere while it was held leaves nothing half-done.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The one [`GroupCommit`] of `dir` in this process, so that every handle on the same
/// queue (a `JobStore` is made per request in places) shares its flushes.
pub fn for_dir(dir: &Path) -> Arc<GroupCommit> {
    static ALL: OnceLock<Mutex<HashMap<PathBuf, Weak<GroupCommit>>>> = OnceLock::new();
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(g) = all.get(dir).and_then(Weak::upgrade) {
        return g;
    }
    // Forget the folders nobody holds any more (a test suite makes thousands).
    all.retain(|_, w| w.strong_count() > 0);
    let g = Arc::new(GroupCommit::new());
    all.insert(dir.to_path_buf(), Arc::downgrade(&g));
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn a_lone_writer_flushes_once_per_commit() {
        let g = GroupCommit::new();
        for _ in 0..3 {
            g.commit(&|| Ok(())).expect("commit");
        }
        assert_eq!(g.flushes(), 3);
    }

    #[test]
    fn overlapping_writers_share_flushes_and_each_is_covered_by_one_begun_after_it() {
        let g = Arc::new(GroupCommit::new());
        // A "disk": writes land in `pending`; a flush copies what was pending when it
        // began into `durable`, slowly.
        let pending = Arc::new(Mutex::new(Vec::<u32>::new()));
        let durable = Arc::new(Mutex::new(Vec::<u32>::new()));
        let threads: Vec<_> = (0..16u32)
            .map(|t| {
                let (g, pending, durable) = (g.clone(), pending.clone(), durable.clone());
                std::thread::spawn(move || {
                    for i in 0..20u32 {
                        let w = t * 1000 + i;
                        pending.lock().expect("lock").push(w);
                        let flush = || {
                            let snapshot = pending.lock().expect("lock").clone();
                            std::thread::sleep(Duration::from_millis(2));
                            durable.lock().expect("lock").extend(snapshot);
                            Ok(())
                        };
                        g.commit(&flush).expect("commit");
                        assert!(
                            durable.lock().expect("lock").contains(&w),
                            "write {w} returned before a flush covered it"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        assert!(
            g.flushes() < 16 * 20 / 2,
            "{} flushes for 320 commits: they were not shared",
            g.flushes()
        );
    }

    #[test]
    fn a_failed_flush_fails_its_leader_and_the_others_try_again() {
        let g = Arc::new(GroupCommit::new());
        let failed_once = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (g, failed_once) = (g.clone(), failed_once.clone());
                std::thread::spawn(move || {
                    g.commit(&|| {
                        std::thread::sleep(Duration::from_millis(5));
                        if failed_once.swap(true, Ordering::SeqCst) {
                            Ok(())
                        } else {
                            Err(io::Error::other("disk on fire"))
                        }
                    })
                    .is_ok()
                })
            })
            .collect();
        let oks = threads
            .into_iter()
            .map(|t| t.join().expect("join"))
            .filter(|ok| *ok)
            .count();
        assert_eq!(
            oks, 3,
            "exactly the leader of the failed flush sees the error"
        );
    }

    #[test]
    fn a_mark_is_flushed_only_by_a_flush_begun_after_it() {
        let g = GroupCommit::new();
        g.commit(&|| Ok(())).expect("commit");
        let m = g.mark();
        assert!(!g.flushed_since(m), "no flush has begun since");
        let _ = g.commit(&|| Err(io::Error::other("full")));
        assert!(!g.flushed_since(m), "a failed flush covers nothing");
        g.commit(&|| Ok(())).expect("commit");
        assert!(g.flushed_since(m));
    }

    #[test]
    fn one_folder_one_group_while_it_is_held() {
        let a = for_dir(Path::new("/nonexistent/group-commit-test"));
        let b = for_dir(Path::new("/nonexistent/group-commit-test"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = for_dir(Path::new("/nonexistent/group-commit-other"));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
