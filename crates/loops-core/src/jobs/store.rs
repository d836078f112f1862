//! The queue on disk.
//!
//! ```text
//! .loops/jobs/
//!   .lock                 flock: one process at a time reads-modifies-writes job files
//!   .seq                  the last job id given out
//!   <id>.json             a live job (not terminal), replaced atomically
//!   <id>.log              a shell job's output, as it arrives
//!   <id>.md               an agent job's transcript, turn by turn
//!   <id>.conversation.json  an agent job's conversation, saved after every turn (resume)
//!   keys/<hash>.json      idempotency key → job id
//!   audit.log             one JSON line per shell-job submission
//!   done/<id>.json        a job that reached a terminal state
//!   done/index.jsonl      one summary line per terminal transition (`jobs list` reads it)
//! .loops/watermarks/
//!   .lock                 flock: one compare-and-set at a time
//!   <key>.json            a loop's last slot fired (`<key>` percent-encoded)
//! ```
//!
//! Terminal jobs move to `done/` so that the live folder, which a daemon scans at start
//! and watches, stays as small as the work in flight, and `jobs list` over a hundred
//! thousand finished jobs reads one index file instead of a hundred thousand.
//!
//! This is the file engine: [`JobTx`] is what the queue's operations (in `queue`) need
//! from a transaction, and [`Tx`] gives it over these files. Every write is a temporary
//! file renamed in; a transaction that must be durable (a submit, a state a person or a
//! crash must not lose) flushes the file system once, after letting go of the lock,
//! through the process's [`GroupCommit`] for the folder, so that transactions that
//! overlap share one `syncfs`. It returns only after that flush.

use super::group_commit::{self, GroupCommit};
use super::job::{Job, JobId, JobSummary};
use super::spares::{Spare, Spares};
use crate::fsutil::{atomic_replace, FileLock};
use crate::layout::Layout;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot access {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid job file: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("`{key}` cannot name a watermark: {why}")]
    InvalidKey { key: String, why: &'static str },
}

impl StoreError {
    pub fn help(&self) -> Option<String> {
        match self {
            StoreError::Io { .. } => Some(
                "check that .loops/ is writable and the disk is not full".into(),
            ),
            StoreError::Corrupt { path, .. } => Some(format!(
                "the file was edited by hand or damaged; fix its JSON or move it aside ({} is left as it is)",
                path.display()
            )),
            StoreError::InvalidKey { .. } => {
                Some("a watermark key is a loop's name: 1 to 80 characters".into())
            }
        }
    }
}

fn flush_through(flusher: &GroupCommit, dir: &Path) -> Result<(), StoreError> {
    flusher
        .commit(&|| crate::fsutil::sync_filesystem(dir))
        .map_err(io(dir))
}

/// Makes `dir` if it is not there. Looked at first: `mkdir` of a folder that exists
/// still takes its parent's lock for writing, which every rename in the queue folder
/// then waits behind (for `done/`, whose parent is the queue folder).
fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    crate::fsutil::create_dir_all(dir).map_err(io(dir))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a transaction made with [`JobStore::transaction_flushed_later`] wrote
/// something that must reach the disk before it is reported done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "its writes are not on disk until flush_writes is called"]
pub struct NeedsFlush(bool);

impl NeedsFlush {
    /// Nothing to flush.
    pub const NO: NeedsFlush = NeedsFlush(false);

    /// What one flush must cover for both.
    pub fn or(self, other: NeedsFlush) -> NeedsFlush {
        NeedsFlush(self.0 || other.0)
    }
}

/// What the queue's operations need from one transaction of an engine: whole jobs read
/// and written, the id counter, idempotency keys, all seen and changed as one (under the
/// queue lock here; in a database, one transaction). The operations in `queue` are
/// written against this, so an engine that gives it gets the whole state machine.
pub trait JobTx {
    /// A job, live or finished.
    fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;
    /// Whether a job has been written at all (live or finished).
    fn exists(&self, id: JobId) -> Result<bool, StoreError>;
    /// Every job not yet finished. Records that cannot be read are reported, not fatal.
    fn live_jobs(&self) -> (Vec<Job>, Vec<StoreError>);
    /// The next job id: never one given out before.
    fn next_id(&mut self) -> Result<JobId, StoreError>;
    /// Writes a job. `durable`: the transaction must be on disk before it returns; a
    /// terminal job always is, and is moved to the finished ones.
    fn put(&mut self, job: &Job, durable: bool) -> Result<(), StoreError>;
    /// Moves a terminal job to the finished ones (again, after a crash mid-way).
    fn finalize(&mut self, job: &Job) -> Result<(), StoreError>;
    /// Removes a light job (a loop's run, a wake) that ended: its history is its run
    /// record, not the queue. Removing one that is not there is no error.
    fn delete(&mut self, id: JobId) -> Result<(), StoreError>;
    /// The job holding an idempotency key, if any holds it.
    fn key_holder(&self, key: &str) -> Result<Option<JobId>, StoreError>;
    fn set_key(&mut self, key: &str, id: JobId) -> Result<(), StoreError>;
    /// The transaction must be durable before it returns even if it wrote nothing
    /// itself: it answered with something another writer may not have flushed yet.
    fn require_durable(&mut self);
}

/// The job folder of a workspace.
#[derive(Debug, Clone)]
pub struct JobStore {
    dir: PathBuf,
    watermarks: PathBuf,
    flusher: Arc<GroupCommit>,
    watermark_flusher: Arc<GroupCommit>,
    spares: Arc<Spares>,
}

impl JobStore {
    pub fn new(ws: &crate::workspace::Workspace) -> JobStore {
        let layout = ws.layout();
        JobStore::with_watermarks(layout.jobs_dir(), layout.watermarks_dir())
    }

    /// The queue in `dir`; its watermarks beside it, as in a workspace's runtime folder
    /// (inside it when `dir` has no parent).
    pub fn at(dir: PathBuf) -> JobStore {
        let runtime = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => dir.as_path(),
        };
        let watermarks = Layout::at(runtime).watermarks_dir();
        JobStore::with_watermarks(dir, watermarks)
    }

    fn with_watermarks(dir: PathBuf, watermarks: PathBuf) -> JobStore {
        let flusher = group_commit::for_dir(&dir);
        JobStore {
            spares: Arc::new(Spares::new(dir.clone(), flusher.clone())),
            flusher,
            watermark_flusher: group_commit::for_dir(&watermarks),
            dir,
            watermarks,
        }
    }

    /// How many times this process has flushed the queue's file system for it (its
    /// durable transactions share flushes when they overlap).
    pub fn flushes(&self) -> u64 {
        self.flusher.flushes()
    }

    /// Flushes this queue's writes so far: one `syncfs`, shared with every other
    /// transaction of this process waiting for one.
    fn flush(&self) -> Result<(), StoreError> {
        flush_through(&self.flusher, &self.dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn done_dir(&self) -> PathBuf {
        self.dir.join("done")
    }

    pub fn live_path(&self, id: JobId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn done_path(&self, id: JobId) -> PathBuf {
        self.done_dir().join(format!("{id}.json"))
    }

    /// A shell job's output log.
    pub fn log_path(&self, id: JobId) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// An agent job's transcript.
    pub fn transcript_path(&self, id: JobId) -> PathBuf {
        self.dir.join(format!("{id}.md"))
    }

    /// An agent job's saved conversation.
    pub fn conversation_path(&self, id: JobId) -> PathBuf {
        self.dir.join(format!("{id}.conversation.json"))
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// The jobs holding idempotency keys, one file per key.
    pub(crate) fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// One summary line per finished job.
    pub(crate) fn index_path(&self) -> PathBuf {
        self.done_dir().join("index.jsonl")
    }

    /// The id in a live job file's name (`<id>.json`), for watcher events.
    pub fn id_of_live_path(&self, p: &Path) -> Option<JobId> {
        if p.parent() != Some(self.dir.as_path()) {
            return None;
        }
        let name = p.file_name()?.to_str()?;
        name.strip_suffix(".json")?.parse().ok()
    }

    /// Runs `f` holding the queue lock: every read-modify-write of job files goes through
    /// here, so two processes never interleave their changes. If `f` wrote something
    /// durable, this returns once it is on disk: the lock is let go first, and the flush
    /// is shared with the transactions that overlap this one.
    pub fn transaction<R, E>(&self, f: impl FnOnce(&mut Tx) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        self.transaction_writing(1, f)
    }

    /// [`JobStore::transaction`] for one that will write about `files` files: their
    /// empty files are made before the lock is taken (see `spares`).
    pub fn transaction_writing<R, E>(
        &self,
        files: usize,
        f: impl FnOnce(&mut Tx) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        self.run_transaction(files, true, f)
    }

    /// [`JobStore::transaction_writing`] that returns once its changes are written, before
    /// they are flushed: the caller learns whether they need a flush, and makes it with
    /// [`JobStore::flush_writes`] before it tells anyone they are on disk. A writer that
    /// batches (the worker's ledger) writes its next batch while this one's flush runs.
    pub fn transaction_flushed_later<R, E>(
        &self,
        files: usize,
        f: impl FnOnce(&mut Tx) -> Result<R, E>,
    ) -> Result<(R, NeedsFlush), E>
    where
        E: From<StoreError>,
    {
        let mut durable = false;
        let r = self.run_transaction(files, false, |tx| {
            let r = f(tx);
            durable = tx.durable;
            r
        })?;
        Ok((r, NeedsFlush(durable)))
    }

    /// Flushes what this process's transactions have written so far (one `syncfs`,
    /// shared with every other writer waiting for one); see
    /// [`JobStore::transaction_flushed_later`].
    pub fn flush_writes(&self, needs: NeedsFlush) -> Result<(), StoreError> {
        if needs.0 {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// A transaction whose every change the next one like it would make again if a
    /// power cut lost it (the sweep: a requeue, a move to `done/`, a parent's release):
    /// it returns without waiting for the disk. A crashed *process* still loses nothing,
    /// and the next durable transaction's flush carries these writes too.
    pub fn transaction_redone_if_lost<R, E>(
        &self,
        f: impl FnOnce(&mut Tx) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        self.run_transaction(1, false, f)
    }

    fn run_transaction<R, E>(
        &self,
        files: usize,
        flush: bool,
        f: impl FnOnce(&mut Tx) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        ensure_dir(&self.dir)?;
        let spares = self.spares.take(files);
        let lock_path = self.dir.join(".lock");
        let lock = match FileLock::acquire_blocking(&lock_path) {
            Ok(l) => l,
            Err(e) => {
                self.spares.put_back(spares);
                return Err(io(&lock_path)(e).into());
            }
        };
        let mut tx = Tx {
            store: self,
            _lock: lock,
            seq: None,
            durable: false,
            spares,
            old: Vec::new(),
        };
        let r = f(&mut tx);
        let durable = tx.durable;
        let unused = std::mem::take(&mut tx.spares);
        let old = std::mem::take(&mut tx.old);
        drop(tx);
        self.spares.recycle(old);
        self.spares.put_back(unused);
        let flushed = if durable && flush {
            self.flush()
        } else {
            Ok(())
        };
        let r = r?;
        flushed?;
        Ok(r)
    }

    /// Reads a job without the lock (a snapshot: fine for looking, not for changing).
    pub fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        for p in [self.live_path(id), self.done_path(id)] {
            match read_job(&p) {
                Ok(j) => return Ok(Some(j)),
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Ids of the live (non-terminal) jobs, from the folder's names alone.
    pub fn live_ids(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every live job, read now. Files that cannot be read are reported, not fatal.
    pub fn live_jobs(&self) -> (Vec<Job>, Vec<StoreError>) {
        let mut jobs = Vec::new();
        let mut errors = Vec::new();
        for id in self.live_ids() {
            match read_job(&self.live_path(id)) {
                Ok(j) => jobs.push(j),
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(e),
            }
        }
        (jobs, errors)
    }

    /// A summary of every job, newest last: the live ones read from their files (each in
    /// the state shown to a person, [`Job::shown_state`]), the finished ones from the
    /// index (the last line about an id wins).
    pub fn list(&self) -> (Vec<JobSummary>, Vec<StoreError>) {
        let (live, errors) = self.live_jobs();
        let live_ids: HashSet<JobId> = live.iter().map(|j| j.id).collect();
        let mut all: BTreeMap<JobId, JobSummary> = BTreeMap::new();
        if let Ok(f) = std::fs::File::open(self.index_path()) {
            let reader = std::io::BufReader::with_capacity(1 << 20, f);
            for line in reader.split(b'\n').map_while(Result::ok) {
                if line.is_empty() {
                    continue;
                }
                // A torn last line (a crash mid-append) is skipped; the job's file in
                // done/ still has the whole truth.
                if let Ok(s) = serde_json::from_slice::<JobSummary>(&line) {
                    if !live_ids.contains(&s.id) {
                        all.insert(s.id, s);
                    }
                }
            }
        }
        let now = chrono::Utc::now();
        for j in &live {
            let mut s = JobSummary::from(j);
            s.state = j.shown_state(now);
            all.insert(j.id, s);
        }
        (all.into_values().collect(), errors)
    }

    /// Appends one line to the shell-job audit log.
    pub fn audit(&self, entry: &serde_json::Value) -> Result<(), StoreError> {
        let p = self.audit_path();
        let line = serde_json::to_string(entry).unwrap_or_default();
        crate::fsutil::append_line(&p, &line).map_err(io(&p))
    }
}

/// The queue, locked.
pub struct Tx<'a> {
    store: &'a JobStore,
    _lock: FileLock,
    /// The last id given out, once this transaction has given one.
    seq: Option<JobId>,
    /// Something was written that must be on disk before the transaction returns.
    durable: bool,
    /// Empty files made before the lock was taken, for the writes to fill.
    spares: Vec<Spare>,
    /// The old versions this transaction's writes replaced or removed, kept under a
    /// spare's name to be emptied and used again after the lock (see `spares`).
    old: Vec<Spare>,
}

impl Tx<'_> {
    pub fn store(&self) -> &JobStore {
        self.store
    }

    /// Replaces `path` with `bytes` whole (renamed in), in a spare if one is left.
    fn write_file(&mut self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let old = self.store.spares.adopt(path);
        let r = match self.spares.pop() {
            Some(spare) => spare.fill_into(path, bytes).map_err(io(path)),
            None => atomic_replace(path, bytes).map_err(io(path)),
        };
        self.keep_if_replaced(old, r.is_ok());
        r
    }

    /// An adopted old version is used again only if it was replaced: if the write
    /// failed it is still the file in place, and only its spare name is removed.
    fn keep_if_replaced(&mut self, old: Option<Spare>, replaced: bool) {
        if let (Some(s), true) = (old, replaced) {
            self.old.push(s);
        }
    }

    fn seq_path(&self) -> PathBuf {
        self.store.dir.join(".seq")
    }

    fn last_id(&self) -> Result<JobId, StoreError> {
        let seq = self.seq_path();
        let last = match std::fs::read_to_string(&seq) {
            Ok(s) => s.trim().parse::<JobId>().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&seq)(e)),
        };
        // Lost or damaged: never hand out an id that is already taken.
        Ok(match last {
            Some(n) => n,
            None => self.highest_id_on_disk(),
        })
    }

    fn highest_id_on_disk(&self) -> JobId {
        let in_dir = |d: &Path| -> JobId {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name();
                    n.to_str()?.strip_suffix(".json")?.parse::<JobId>().ok()
                })
                .max()
                .unwrap_or(0)
        };
        let (listed, _) = self.store.list();
        in_dir(&self.store.dir)
            .max(in_dir(&self.store.done_dir()))
            .max(listed.last().map(|s| s.id).unwrap_or(0))
    }

    fn key_path(&self, key: &str) -> PathBuf {
        // Two independent 64-bit FNV-1a hashes: a file name of fixed, safe characters
        // whatever the key holds. The key itself is stored and compared too.
        let fnv = |offset: u64| {
            key.bytes().fold(offset, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
            })
        };
        let name = format!(
            "{:016x}{:016x}",
            fnv(0xcbf2_9ce4_8422_2325),
            fnv(0x6c62_272e_07bb_0142)
        );
        self.store.keys_dir().join(format!("{name}.json"))
    }
}

impl JobTx for Tx<'_> {
    fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.store.get(id)
    }

    fn exists(&self, id: JobId) -> Result<bool, StoreError> {
        Ok(self.store.live_path(id).exists() || self.store.done_path(id).exists())
    }

    fn live_jobs(&self) -> (Vec<Job>, Vec<StoreError>) {
        self.store.live_jobs()
    }

    /// Gives out the next job id.
    fn next_id(&mut self) -> Result<JobId, StoreError> {
        let last = match self.seq {
            Some(n) => n,
            None => self.last_id()?,
        };
        let mut id = last + 1;
        if self.exists(id)? {
            // The counter fell behind the files (a power cut kept a job but not the
            // counter's last change): never write over a job.
            id = self.highest_id_on_disk().max(id) + 1;
        }
        // Recorded before the job is written (one pwrite, no new file): a transaction
        // that fails after writing a job never leaves the counter behind it.
        let seq = self.seq_path();
        crate::fsutil::overwrite_in_place(&seq, &id.to_string()).map_err(io(&seq))?;
        self.seq = Some(id);
        Ok(id)
    }

    /// Writes a job. A terminal job is summarised into the index and moved to `done/`; a
    /// job that leaves a terminal state (a retry) comes back to the live folder.
    fn put(&mut self, job: &Job, durable: bool) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(job).unwrap_or_default();
        let live = self.store.live_path(job.id);
        // Renamed in, never half-written; on disk once the transaction's flush is done.
        self.write_file(&live, &bytes)?;
        if job.state.is_terminal() {
            // Written live first: a crash before the move leaves a terminal job in the
            // live folder, which the next sweep finishes moving.
            self.finalize(job)?;
        } else {
            self.durable |= durable;
            let done = self.store.done_path(job.id);
            match std::fs::remove_file(&done) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&done)(e)),
            }
        }
        Ok(())
    }

    /// Moves a terminal job from the live folder into `done/`, indexing it.
    fn delete(&mut self, id: JobId) -> Result<(), StoreError> {
        let live = self.store.live_path(id);
        let old = self.store.spares.adopt(&live);
        let r = match std::fs::remove_file(&live) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&live)(e)),
            _ => Ok(()),
        };
        self.keep_if_replaced(old, r.is_ok());
        r
    }

    fn finalize(&mut self, job: &Job) -> Result<(), StoreError> {
        let done_dir = self.store.done_dir();
        ensure_dir(&done_dir)?;
        let index = self.store.index_path();
        let line = serde_json::to_string(&JobSummary::from(job)).unwrap_or_default();
        crate::fsutil::append_line(&index, &line).map_err(io(&index))?;
        let live = self.store.live_path(job.id);
        let done = self.store.done_path(job.id);
        std::fs::rename(&live, &done).map_err(io(&live))?;
        // The move, the index line and the job are on disk once the flush is done.
        self.durable = true;
        Ok(())
    }

    fn key_holder(&self, key: &str) -> Result<Option<JobId>, StoreError> {
        let p = self.key_path(key);
        match std::fs::read(&p) {
            Ok(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if v.get("key").and_then(|k| k.as_str()) != Some(key) {
                    return Ok(None);
                }
                Ok(v.get("id").and_then(|i| i.as_u64()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    fn set_key(&mut self, key: &str, id: JobId) -> Result<(), StoreError> {
        let p = self.key_path(key);
        let v = serde_json::json!({ "key": key, "id": id });
        if let Some(keys) = p.parent() {
            crate::fsutil::create_dir_all(keys).map_err(io(keys))?;
        }
        self.write_file(&p, v.to_string().as_bytes())?;
        self.durable = true;
        Ok(())
    }

    fn require_durable(&mut self) {
        self.durable = true;
    }
}

// ---------------------------------------------------------------------------------------
// Watermarks: a loop's last slot fired, changed only by compare-and-set

/// The result of a watermark compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// It held the expected value and now holds the new one (on disk).
    Swapped,
    /// It held something else (shown), and was left as it was.
    Conflict { current: Option<DateTime<Utc>> },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WatermarkFile {
    key: String,
    slot: DateTime<Utc>,
}

impl JobStore {
    /// Where watermarks are kept (`.loops/watermarks/`).
    pub fn watermark_dir(&self) -> &Path {
        &self.watermarks
    }

    fn watermark_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let bad = |why| StoreError::InvalidKey {
            key: key.chars().take(80).collect(),
            why,
        };
        if key.is_empty() {
            return Err(bad("it is empty"));
        }
        if key.chars().count() > 80 {
            return Err(bad("it is longer than 80 characters"));
        }
        // Percent-encoded: one name per key, of safe characters, readable for a loop's
        // name (which is all letters, digits and dashes).
        let mut name = String::with_capacity(key.len() + 5);
        for b in key.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(b as char);
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        name.push_str(".json");
        Ok(self.watermarks.join(name))
    }

    fn read_watermark(&self, p: &Path, key: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        match std::fs::read(p) {
            Ok(bytes) => {
                let w: WatermarkFile =
                    serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                        path: p.to_path_buf(),
                        source,
                    })?;
                Ok((w.key == key).then_some(w.slot))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(p)(e)),
        }
    }

    /// A key's watermark, if it has one.
    pub fn watermark(&self, key: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let p = self.watermark_path(key)?;
        self.read_watermark(&p, key)
    }

    /// Sets a key's watermark to `new` only if it is still `expected` (`None`: it has
    /// none yet). Durable before it returns `Swapped`.
    pub fn compare_and_set_watermark(
        &self,
        key: &str,
        expected: Option<DateTime<Utc>>,
        new: DateTime<Utc>,
    ) -> Result<CasOutcome, StoreError> {
        let p = self.watermark_path(key)?;
        let dir = &self.watermarks;
        crate::fsutil::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(".lock");
        let lock = FileLock::acquire_blocking(&lock_path).map_err(io(&lock_path))?;
        let current = self.read_watermark(&p, key)?;
        if current != expected {
            drop(lock);
            // What it saw may be another writer's change not yet flushed.
            flush_through(&self.watermark_flusher, dir)?;
            return Ok(CasOutcome::Conflict { current });
        }
        let body = serde_json::to_vec(&WatermarkFile {
            key: key.to_string(),
            slot: new,
        })
        .unwrap_or_default();
        atomic_replace(&p, &body).map_err(io(&p))?;
        drop(lock);
        flush_through(&self.watermark_flusher, dir)?;
        Ok(CasOutcome::Swapped)
    }
}

/// Reads a job file. A reader without the queue lock can open a version just as a
/// write replaces it, and the replaced version's file is then emptied and used again for
/// another write (see `spares`): what it read may be empty, cut short or another job.
/// Such a read is made again, and the name then leads to the version in place; only a
/// file that reads wrong every time (edited by hand) is returned as it reads.
pub fn read_job(p: &Path) -> Result<Job, StoreError> {
    const TRIES: usize = 5;
    let named = p
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<JobId>().ok());
    let mut tries = 1;
    loop {
        let r = read_job_once(p);
        let wrong = match &r {
            Ok(j) => named.is_some_and(|id| id != j.id),
            Err(StoreError::Corrupt { .. }) => true,
            Err(_) => false,
        };
        if !wrong || tries >= TRIES {
            return r;
        }
        tries += 1;
    }
}

fn read_job_once(p: &Path) -> Result<Job, StoreError> {
    let bytes = std::fs::read(p).map_err(io(p))?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
        path: p.to_path_buf(),
        source,
    })
}
