//! Opening files beneath a root folder with the kernel's help, so that a path checked by
//! the sandbox is the path opened, even when another process swaps a folder for a
//! symbolic link between the check and the open.
//!
//! Every operation starts from a file descriptor of the root and names a relative path of
//! plain components. On Linux 5.6+ it uses `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_MAGICLINKS)`: the kernel refuses any `..`, any symbolic link and any
//! `/proc` magic link on the way. Where `openat2` is missing (older kernels, seccomp
//! filters that answer ENOSYS or EPERM) it walks the path one component at a time with
//! `O_NOFOLLOW`, which refuses a symbolic link at every step just the same.
//!
//! A refused path fails with `ELOOP` (a link on the way) or `EXDEV` (an escape): the
//! callers turn both into "refused", never into a fallback that follows the link.

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `openat2` answered that it is not there, so later opens go straight to the walk.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// A folder that files are opened beneath.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

/// Whether an error means the kernel refused a link or an escape on the way.
pub fn is_refusal(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::LOOP | Errno::XDEV))
}

impl Beneath {
    /// Opens `root` (which may itself be reached through links: it is the boundary, not
    /// something a model named).
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath {
            root: fd,
            path: root.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` for reading. Fails with ELOOP if any component is a symbolic link.
    /// Non-blocking, so a pipe swapped in for a file cannot hang the reader.
    pub fn open_read(&self, rel: &Path) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = self.open_at(rel, flags, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// Opens the existing regular file `rel` for appending (writes land at its end even
    /// while another process appends too). Fails with ELOOP on a symbolic link.
    pub fn open_append(&self, rel: &Path) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let file = File::from(self.open_at(rel, flags, Mode::empty())?);
        if !file.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(file)
    }

    /// Opens the folder `rel` (for listing, or as the parent of a write).
    pub fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_at(
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    /// `lstat` of `rel`, its parent folders opened beneath the root. `Ok(None)` when it
    /// does not exist.
    pub fn metadata(&self, rel: &Path) -> io::Result<Option<rustix::fs::Stat>> {
        let (parent, name) = split(rel)?;
        let dir = self.open_dir(&parent)?;
        match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the folder `rel` and every missing folder above it, each one made with
    /// `mkdirat` inside a folder opened beneath the root (so a link swapped in on the way
    /// is refused, never followed).
    pub fn create_dir_all(&self, rel: &Path) -> io::Result<OwnedFd> {
        let names = plain(rel)?;
        let mut dir = self.open_dir(Path::new(""))?;
        for name in names {
            match rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let next = rustix::fs::openat(
                &dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| link_as_loop(e, dir.as_fd(), &name))?;
            dir = next;
        }
        Ok(dir)
    }

    /// Replaces `rel` atomically with `bytes`: a temp file in the same folder, fsync, then
    /// a rename, all relative to the folder's descriptor. The file gets `mode` (the caller
    /// decides; files a model writes never carry an exec bit).
    pub fn write_atomic(&self, rel: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let dir = self.create_dir_all(&parent)?;
        let tmp = format!(".{name}.loops-tmp-{}-{}", std::process::id(), unique());
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o666),
        )?;
        let mut f = File::from(fd);
        let written = f
            .write_all(bytes)
            .and_then(|_| {
                // The umask applied at creation; the mode asked for is the one kept.
                rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o666)).map_err(Into::into)
            })
            .and_then(|_| f.sync_all());
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(e);
        }
        drop(f);
        if let Err(e) = rustix::fs::renameat(&dir, tmp.as_str(), &dir, name.as_str()) {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(e.into());
        }
        let _ = rustix::fs::fsync(&dir);
        Ok(())
    }

    fn open_at(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let names = plain(rel)?;
        let joined = if names.is_empty() {
            ".".to_string()
        } else {
            names.join("/")
        };
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.root, joined.as_str(), flags, mode, resolve) {
                Ok(fd) => return Ok(fd),
                // ENOSYS: an old kernel; EPERM: a seccomp filter that does not know it.
                Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                }
                // EAGAIN: the kernel could not resolve race-free this time; the walk can.
                Err(rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.walk(&names, flags, mode)
    }

    /// The fallback: one component at a time, never following a link.
    fn walk(&self, names: &[String], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let Some((last, dirs)) = names.split_last() else {
            return Ok(rustix::fs::openat(
                &self.root,
                ".",
                flags | OFlags::NOFOLLOW,
                mode,
            )?);
        };
        let mut dir: Option<OwnedFd> = None;
        for name in dirs {
            let base = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            let next = rustix::fs::openat(
                base,
                name.as_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| link_as_loop(e, base, name))?;
            dir = Some(next);
        }
        let base = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
        Ok(rustix::fs::openat(
            base,
            last.as_str(),
            flags | OFlags::NOFOLLOW,
            mode,
        )?)
    }
}

/// A link where a folder should be fails `O_NOFOLLOW | O_DIRECTORY` with ENOTDIR; it is
/// reported as ELOOP, the answer openat2 gives, so callers see one kind of refusal.
fn link_as_loop(
    e: rustix::io::Errno,
    dir: std::os::fd::BorrowedFd<'_>,
    name: &str,
) -> rustix::io::Errno {
    if e == rustix::io::Errno::NOTDIR && is_link(dir, name) {
        rustix::io::Errno::LOOP
    } else {
        e
    }
}

fn is_link(dir: std::os::fd::BorrowedFd<'_>, name: &str) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_symlink())
}

/// The components of a relative path, each a plain name; anything else is refused here
/// too, so no caller can hand the kernel a `..` or an absolute path by mistake.
fn plain(rel: &Path) -> io::Result<Vec<String>> {
    rel.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(s) => s.to_str().map(str::to_string).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "a path name is not UTF-8")
            }),
            _ => Err(rustix::io::Errno::XDEV.into()),
        })
        .collect()
}

fn split(rel: &Path) -> io::Result<(PathBuf, String)> {
    let mut names = plain(rel)?;
    let name = names.pop().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names the root itself",
        )
    })?;
    Ok((names.iter().collect(), name))
}

fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn read(b: &Beneath, rel: &str) -> io::Result<String> {
        let mut s = String::new();
        b.open_read(Path::new(rel))?.read_to_string(&mut s)?;
        Ok(s)
    }

    #[test]
    fn opens_plain_files_and_refuses_links_and_escapes() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("ws");
        std::fs::create_dir_all(root.join("a")).expect("mkdir");
        std::fs::write(root.join("a/f.md"), "inside").expect("write");
        std::fs::write(d.path().join("secret"), "outside").expect("write");
        symlink(d.path(), root.join("out")).expect("symlink");
        symlink("f.md", root.join("a/link.md")).expect("symlink");
        let b = Beneath::open(&root).expect("open root");
        assert_eq!(read(&b, "a/f.md").expect("read"), "inside");
        for bad in ["out/secret", "a/link.md", "../secret", "/etc/passwd"] {
            let e = read(&b, bad).expect_err(bad);
            assert!(is_refusal(&e), "{bad}: {e}");
        }
    }

    #[test]
    fn the_walk_refuses_what_openat2_refuses() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("ws");
        std::fs::create_dir_all(root.join("a")).expect("mkdir");
        std::fs::write(root.join("a/f.md"), "inside").expect("write");
        symlink(d.path(), root.join("out")).expect("symlink");
        symlink("f.md", root.join("a/link.md")).expect("symlink");
        let b = Beneath::open(&root).expect("open root");
        let names = |p: &str| plain(Path::new(p)).expect("plain");
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        assert!(b.walk(&names("a/f.md"), flags, Mode::empty()).is_ok());
        for bad in ["out/x", "a/link.md"] {
            let e = b.walk(&names(bad), flags, Mode::empty()).expect_err(bad);
            assert!(is_refusal(&e), "{bad}: {e}");
        }
    }

    #[test]
    fn writes_atomically_with_the_mode_asked_for() {
        let d = tempfile::tempdir().expect("tempdir");
        let b = Beneath::open(d.path()).expect("open root");
        b.write_atomic(Path::new("x/y/z.md"), b"one", 0o755)
            .expect("write");
        let md = std::fs::metadata(d.path().join("x/y/z.md")).expect("stat");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(md.permissions().mode() & 0o777, 0o644);
        symlink("/tmp", d.path().join("x/l")).expect("symlink");
        let e = b
            .write_atomic(Path::new("x/l/evil.md"), b"two", 0o644)
            .expect_err("through a link");
        assert!(is_refusal(&e), "{e}");
    }
}
