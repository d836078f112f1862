//! Small file-system helpers every part of the runner shares.
//!
//! The rule they exist for: a file the runner owns is either the old version or the new
//! version, never half of one (DESIGN.md §9).

use crate::layout::RUNTIME_DIR;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Whether `path` is in (or is) a `.loops/` folder: its transcripts, logs and records
/// may quote what a loop read, so they are for the owner only (docs/security.md).
pub fn is_private(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == RUNTIME_DIR)
}

/// The mode a new file at `path` is created with (before the umask): 0600 in `.loops/`,
/// the usual 0666 elsewhere.
pub fn file_mode(path: &Path) -> u32 {
    if is_private(path) {
        0o600
    } else {
        0o666
    }
}

/// `fs::create_dir_all`, making folders in `.loops/` 0700.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    // Looked at first: `mkdir` of a folder that exists fails, but only after taking its
    // parent's lock for writing, which renames in that parent then wait behind.
    if dir.is_dir() {
        return Ok(());
    }
    let mode = if is_private(dir) { 0o700 } else { 0o777 };
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

/// Opens `path` for appending, creating it (0600 in `.loops/`) and its folder.
pub fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(file_mode(path))
        .open(path)
}

/// Makes every folder under `dir` 0700 and every file 0600 (what an older loops left
/// readable by others); symlinks are not followed. Returns how many were changed.
pub fn tighten(dir: &Path) -> io::Result<usize> {
    let mut changed = 0;
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let ft = entry.file_type();
        let want = if ft.is_dir() {
            0o700
        } else if ft.is_file() {
            0o600
        } else {
            continue;
        };
        let meta = entry.metadata().map_err(io::Error::other)?;
        if meta.permissions().mode() & 0o077 != 0 {
            let mode = (meta.permissions().mode() & 0o700) | want;
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode))?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Replaces `path` with `bytes` atomically: temp file in the same folder, fsync, rename,
/// fsync of the folder. A crash at any point leaves either the old or the new file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, true)
}

/// Replaces `path` atomically (temp file + rename) without waiting for the disk. A
/// crashed *process* still leaves the old or the new file; only a power cut can lose the
/// change. For files whose loss costs nothing but a redo (a run-in-progress marker, a
/// loop's first-seen state), where an fsync would only add latency.
pub fn atomic_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        unique_suffix()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file_mode(path))
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Rewrites a small file in place with one `pwrite` at offset 0, padding the new text
/// with spaces to the old length, so no new inode is made (creating and deleting files
/// hundreds of times a second is what a busy ext4 spends its time on). One write call is
/// never half-done by a crash of the process; the padding keeps the old text's tail from
/// showing. For whitespace-tolerant formats (JSON) and files only the runner writes;
/// falls back to [`atomic_replace`] when the file is missing.
pub fn overwrite_in_place(path: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return atomic_replace(path, text.as_bytes());
        }
        Err(e) => return Err(e),
    };
    let old_len = f.metadata()?.len() as usize;
    let mut buf = text.as_bytes().to_vec();
    if buf.len() < old_len {
        buf.resize(old_len, b' ');
    }
    f.write_all_at(&buf, 0)
}

/// Flushes everything written to the file system holding `dir` (one `syncfs`), the
/// durable end of a batch of [`atomic_replace`] writes.
pub fn sync_filesystem(dir: &Path) -> io::Result<()> {
    let f = File::open(dir)?;
    #[cfg(target_os = "linux")]
    rustix::fs::syncfs(&f)?;
    #[cfg(not(target_os = "linux"))]
    {
        // No syncfs here: sync(2) flushes every file system (and cannot fail).
        let _ = f;
        rustix::fs::sync();
    }
    Ok(())
}

/// Appends one line with a single `write` call on an `O_APPEND` descriptor, so two
/// writers never interleave inside a line. Every JSON-lines file the runner keeps (run
/// records, the journal, the job index and audit log) is written through here.
///
/// A line is whole or absent. A write the disk cuts short (full, or over a file size
/// limit) is cut back off again, so the caller's retry of the same record is not glued
/// to half of it and both lost to every reader. If the file still ends inside a line
/// (a crash mid-write, or a cut that could not be made), the line starts on a new one.
pub fn append_line(path: &Path, line: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        create_dir_all(dir)?;
    }
    // Readable too: the last byte says whether the file ends inside a line.
    let f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(file_mode(path))
        .open(path)?;
    let before = f.metadata()?.len();
    let mut buf = Vec::with_capacity(line.len() + 2);
    if before > 0 && !ends_with_newline(&f, before) {
        buf.push(b'\n');
    }
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    append_whole(&f, before, &buf)
}

fn ends_with_newline(f: &File, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    // Unreadable: assume the end is clean rather than adding blank lines to every record.
    !matches!(f.read_at(&mut last, len - 1), Ok(1) if last[0] != b'\n')
}

/// Appends `bytes` to `f` (opened with `O_APPEND`, `before` bytes long) whole, or not at
/// all: what a failing write left of them is truncated away again. A file another writer
/// appended to in the meantime is not cut (that would take their line too); the next
/// [`append_line`] then starts on a new line instead.
pub fn append_whole(mut f: &File, before: u64, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0usize;
    while written < bytes.len() {
        let err = match f.write(&bytes[written..]) {
            Ok(0) => io::Error::new(io::ErrorKind::WriteZero, "the disk took no more bytes"),
            Ok(n) => {
                written += n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        if written > 0
            && f.metadata()
                .is_ok_and(|m| m.len() == before + written as u64)
        {
            let _ = f.set_len(before);
        }
        return Err(err);
    }
    Ok(())
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (t << 16) ^ n
}

/// The start time of a process, in clock ticks since boot (Linux `/proc/<pid>/stat`
/// field 22). With the pid it names a process uniquely: a pid reused after a crash has
/// another start time, so a lease or lock naming (pid, start) is never mistaken as alive.
pub fn process_start_time(pid: u32) -> Option<u64> {
    // This process's own is asked for at every lease and run marker (thousands a second
    // under load): read once, since it cannot change while the process lives. Keyed by
    // pid, so a forked child reads its own; a read that failed is not kept.
    static OWN: std::sync::OnceLock<(u32, u64)> = std::sync::OnceLock::new();
    let me = std::process::id();
    if pid == me {
        if let Some(&(cached_pid, start)) = OWN.get() {
            if cached_pid == me {
                return Some(start);
            }
        }
        let start = read_start_time(me)?;
        let _ = OWN.set((me, start));
        return Some(start);
    }
    read_start_time(pid)
}

fn read_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named by (pid, start time) is still alive.
pub fn process_alive(pid: u32, start_time: Option<u64>) -> bool {
    if pid == 0 {
        return false;
    }
    if !crate::sys::process_exists(pid) {
        return false;
    }
    match (start_time, process_start_time(pid)) {
        (Some(recorded), Some(actual)) => recorded == actual,
        _ => true,
    }
}

/// Holds an exclusive `flock` on a file for as long as the value lives. The kernel drops
/// the lock when the process dies, so a lock can never be left stale by a crash.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Tries to take the lock without waiting; `Ok(None)` when another process holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        if let Some(dir) = path.parent() {
            create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(file_mode(path))
            .open(path)?;
        use rustix::fs::{flock, FlockOperation};
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the lock, waiting for another holder to let go.
    pub fn acquire_blocking(path: &Path) -> io::Result<FileLock> {
        Self::acquire_mode(path, rustix::fs::FlockOperation::LockExclusive)
    }

    /// Takes the lock shared with other readers, waiting for a writer to finish.
    pub fn acquire_shared(path: &Path) -> io::Result<FileLock> {
        Self::acquire_mode(path, rustix::fs::FlockOperation::LockShared)
    }

    fn acquire_mode(path: &Path, mode: rustix::fs::FlockOperation) -> io::Result<FileLock> {
        if let Some(dir) = path.parent() {
            create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(file_mode(path))
            .open(path)?;
        loop {
            match rustix::fs::flock(&file, mode) {
                Ok(()) => return Ok(FileLock { file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sets the lock file's modification time to now: a sign of life that outlives the
    /// holder, so after a crash the time of its last touch is known.
    pub fn touch(&self) -> io::Result<()> {
        self.file.set_modified(std::time::SystemTime::now())
    }

    /// Replaces the lock file's contents (e.g. with the owner's pid and start time).
    pub fn write_contents(&mut self, text: &str) -> io::Result<()> {
        use std::io::Seek;
        self.file.set_len(0)?;
        self.file.seek(io::SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_all()
    }
}

/// A byte count for people: `512 bytes`, `1.5 KiB`, `95.4 MiB`, `3.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The first `max` bytes of a file as text (lossy), and the file's whole size: for files
/// that go into a prompt or a message, which must not be read whole when they are huge.
pub fn read_prefix(path: &Path, max: u64) -> io::Result<(String, u64)> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut bytes = Vec::with_capacity(size.min(max) as usize);
    f.take(max).read_to_end(&mut bytes)?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), size))
}
