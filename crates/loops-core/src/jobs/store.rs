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
//! ```
//!
//! Terminal jobs move to `done/` so that the live folder, which a daemon scans at start
//! and watches, stays as small as the work in flight, and `jobs list` over a hundred
//! thousand finished jobs reads one index file instead of a hundred thousand.

use super::job::{Job, JobId, JobSummary};
use crate::fsutil::{atomic_replace, atomic_write, FileLock};
use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};

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
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The job folder of a workspace.
#[derive(Debug, Clone)]
pub struct JobStore {
    dir: PathBuf,
}

impl JobStore {
    pub fn new(ws: &crate::workspace::Workspace) -> JobStore {
        JobStore::at(ws.runtime_dir().join("jobs"))
    }

    pub fn at(dir: PathBuf) -> JobStore {
        JobStore { dir }
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

    fn index_path(&self) -> PathBuf {
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
    /// here, so two processes never interleave their changes.
    pub fn transaction<R, E>(&self, f: impl FnOnce(&mut Tx) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        crate::fsutil::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join(".lock");
        let lock = FileLock::acquire_blocking(&lock_path).map_err(io(&lock_path))?;
        let mut tx = Tx {
            store: self,
            _lock: lock,
        };
        f(&mut tx)
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

    /// A summary of every job, newest last: the live ones read from their files, the
    /// finished ones from the index (the last line about an id wins).
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
        for j in &live {
            all.insert(j.id, JobSummary::from(j));
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
}

impl Tx<'_> {
    pub fn store(&self) -> &JobStore {
        self.store
    }

    pub fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.store.get(id)
    }

    /// Gives out the next job id.
    pub fn next_id(&mut self) -> Result<JobId, StoreError> {
        let seq = self.store.dir.join(".seq");
        let last = match std::fs::read_to_string(&seq) {
            Ok(s) => s.trim().parse::<JobId>().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&seq)(e)),
        };
        // Lost or damaged: never hand out an id that is already taken.
        let last = match last {
            Some(n) => n,
            None => self.highest_id_on_disk(),
        };
        let id = last + 1;
        atomic_replace(&seq, id.to_string().as_bytes()).map_err(io(&seq))?;
        Ok(id)
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

    /// Writes a job. A terminal job is summarised into the index and moved to `done/`; a
    /// job that leaves a terminal state (a retry) comes back to the live folder.
    pub fn put(&mut self, job: &Job, durable: bool) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(job).unwrap_or_default();
        let live = self.store.live_path(job.id);
        if job.state.is_terminal() {
            // Written live first: a crash before the move leaves a terminal job in the
            // live folder, which the next sweep finishes moving.
            atomic_write(&live, &bytes).map_err(io(&live))?;
            self.finalize(job)?;
        } else {
            if durable {
                atomic_write(&live, &bytes).map_err(io(&live))?;
            } else {
                atomic_replace(&live, &bytes).map_err(io(&live))?;
            }
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
    pub fn finalize(&mut self, job: &Job) -> Result<(), StoreError> {
        let done_dir = self.store.done_dir();
        crate::fsutil::create_dir_all(&done_dir).map_err(io(&done_dir))?;
        let index = self.store.index_path();
        let line = serde_json::to_string(&JobSummary::from(job)).unwrap_or_default();
        crate::fsutil::append_line(&index, &line).map_err(io(&index))?;
        let live = self.store.live_path(job.id);
        let done = self.store.done_path(job.id);
        std::fs::rename(&live, &done).map_err(io(&live))?;
        // The move is durable once both folders are: done/ (where it arrives) first, so
        // a power cut never keeps only the leaving.
        for dir in [&done_dir, &self.store.dir] {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// The job holding an idempotency key, if any holds it.
    pub fn key_holder(&self, key: &str) -> Result<Option<JobId>, StoreError> {
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

    pub fn set_key(&mut self, key: &str, id: JobId) -> Result<(), StoreError> {
        let p = self.key_path(key);
        let v = serde_json::json!({ "key": key, "id": id });
        atomic_write(&p, v.to_string().as_bytes()).map_err(io(&p))
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
        self.store.dir.join("keys").join(format!("{name}.json"))
    }
}

pub fn read_job(p: &Path) -> Result<Job, StoreError> {
    let bytes = std::fs::read(p).map_err(io(p))?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
        path: p.to_path_buf(),
        source,
    })
}
