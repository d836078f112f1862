//! Shared helpers: temporary workspaces, the `loops` binary, git inspection.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A temporary workspace created by `loops init` (a git repo with one commit).
pub struct TempWorkspace {
    pub dir: tempfile::TempDir,
}

impl TempWorkspace {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = loops_cmd(dir.path())
            .arg("init")
            .arg(dir.path())
            .output()
            .expect("run loops init");
        assert!(
            out.status.success(),
            "loops init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TempWorkspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }

    pub fn cmd(&self) -> assert_cmd::Command {
        loops_cmd(self.path())
    }
}

/// `loops` with a clean, predictable environment, run in `cwd`.
pub fn loops_cmd(cwd: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("loops").expect("loops binary");
    c.current_dir(cwd)
        .env("TZ", "UTC")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env_remove("LOOPS_LOG");
    c
}
