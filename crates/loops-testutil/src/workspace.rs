//! Temporary workspaces made by `loops init`, `loops` commands with a clean environment,
//! git inspection, and the main-session script and handoff drops of the inbox tests.
//!
//! Every function that runs `loops` takes the binary's path (or keeps the one its
//! [`TempWorkspace`] was made with): only the root package's test and bench targets know
//! it (`env!("CARGO_BIN_EXE_loops")`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::daemon::DaemonProcess;

/// A temporary workspace created by `loops init` (a git repo with one commit).
pub struct TempWorkspace {
    pub dir: tempfile::TempDir,
    /// The `loops` binary it was made with, which its commands and daemons run.
    bin: PathBuf,
}

impl TempWorkspace {
    /// `loops init` (the binary at `bin`) in a new temporary folder.
    pub fn init(bin: impl Into<PathBuf>) -> Self {
        let bin = bin.into();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = loops_cmd(&bin, dir.path())
            .arg("init")
            .arg(dir.path())
            .output()
            .expect("run loops init");
        assert!(
            out.status.success(),
            "loops init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TempWorkspace { dir, bin }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The `loops` binary this workspace runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }

    pub fn cmd(&self) -> assert_cmd::Command {
        loops_cmd(&self.bin, self.path())
    }
}

/// `loops` (the binary at `bin`) with a clean, predictable environment, run in `cwd`.
pub fn loops_cmd(bin: &Path, cwd: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(bin);
    c.current_dir(cwd)
        .env("TZ", "UTC")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env_remove("LOOPS_LOG");
    c
}

/// A std `Command` for `loops` with the same clean environment as [`loops_cmd`]
/// (for processes that run in the background: daemons, parallel triggers).
pub fn loops_std_cmd(bin: &Path, cwd: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(bin);
    c.current_dir(cwd)
        .env("TZ", "UTC")
        .env("NO_COLOR", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env_remove("LOOPS_LOG");
    c
}

/// Runs `git` in `dir` and returns its stdout; panics when git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TempWorkspace {
    /// Writes `domains/NAME/config.yaml` (creating the folder).
    pub fn add_loop(&self, name: &str, config: &str) -> PathBuf {
        self.write(&format!("domains/{name}/config.yaml"), config)
    }

    /// The run records of a loop in `.loops/runs/<loop>.jsonl`, oldest first.
    pub fn runs(&self, name: &str) -> Vec<serde_json::Value> {
        let p = self
            .path()
            .join(".loops/runs")
            .join(format!("{name}.jsonl"));
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many run records of a loop have this outcome.
    pub fn count_outcome(&self, name: &str, outcome: &str) -> usize {
        self.runs(name)
            .iter()
            .filter(|r| r["outcome"] == outcome)
            .count()
    }

    /// Starts `loops run` in the background, its stderr going to a file.
    pub fn start_daemon(&self) -> DaemonProcess {
        let log = self.path().join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        // Keep the log out of the workspace's git status: it lives in .git/info/exclude.
        let exclude = self.path().join(".git/info/exclude");
        let mut ex = std::fs::read_to_string(&exclude).unwrap_or_default();
        if !ex.contains("daemon-*.log") {
            ex.push_str("\ndaemon-*.log\n");
            std::fs::create_dir_all(exclude.parent().unwrap()).unwrap();
            std::fs::write(&exclude, ex).unwrap();
        }
        let f = std::fs::File::create(&log).expect("daemon log file");
        let child = loops_std_cmd(&self.bin, self.path())
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start loops run");
        DaemonProcess {
            child: Some(child),
            log,
        }
    }
}

/// `git add -A && git commit` with a fixed identity (setup steps of a test).
pub fn git_commit_all(dir: &Path, msg: &str) {
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            "user.name=Setup",
            "-c",
            "user.email=setup@example.com",
            "commit",
            "-q",
            "-m",
            msg,
        ],
    );
}

/// The trailers of a commit, as (key, value) pairs, read by git itself.
pub fn git_trailers(dir: &Path, rev: &str) -> Vec<(String, String)> {
    git(dir, &["log", "-1", "--format=%(trailers:only,unfold)", rev])
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Helpers for the handoff and inbox tests.

impl TempWorkspace {
    /// Removes the example loop `loops init` makes (so a daemon test runs only what it
    /// sets up) and writes loops.yaml with this `main:` section (indented YAML lines),
    /// then commits, so the tests' own commits are the only ones that follow.
    pub fn with_main(&self, main: &str) {
        let _ = std::fs::remove_dir_all(self.path().join("domains/example"));
        self.write(
            "loops.yaml",
            &format!("limits:\n  shutdown_grace: 2s\nmain:\n{main}"),
        );
        git_commit_all(self.path(), "main session");
    }

    /// The `*.md` handoff files directly in an inbox folder (`""`, `active`, `rejected`…),
    /// sorted, `.error.md` notes left out.
    pub fn inbox_files(&self, sub: &str) -> Vec<String> {
        let dir = self.path().join("inbox").join(sub);
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.ends_with(".md") && !n.ends_with(".error.md"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The stems of every file in `inbox/done/*/`, with repeats (a duplicate would show).
    pub fn done_stems(&self) -> Vec<String> {
        let mut v = Vec::new();
        for m in std::fs::read_dir(self.path().join("inbox/done"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            for f in std::fs::read_dir(m.path())
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
            {
                // Every file counts, hidden ones too: litter in done/ is a bug.
                if let Some(s) = f.file_name().to_str() {
                    v.push(s.strip_suffix(".md").unwrap_or(s).to_string());
                }
            }
        }
        v.sort();
        v
    }

    /// `loops ARGS… --json`, which must succeed; its stdout parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self
            .cmd()
            .args(args)
            .arg("--json")
            .output()
            .expect("run loops");
        assert!(
            out.status.success(),
            "loops {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "loops {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The entries of `loops inbox --json`.
    pub fn inbox_json(&self) -> Vec<serde_json::Value> {
        self.json(&["inbox"])["handoffs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// A main-session command for the tests: a small POSIX sh script in `dir` (outside the
/// workspace) that records each wake in `dir/seen/<run id>` (one line per handoff:
/// `WAKE ID`, or just `WAKE` for an empty wake), saves its stdin to `dir/stdin/<run id>`,
/// runs `extra` (sh, with `$paths` holding LOOPS_HANDOFFS), and then, if `report` is
/// true, prints `{"completed": [...]}` naming every handoff by its file stem.
/// Returns the loops.yaml `command:` line value (an argv list).
pub fn main_script(dir: &Path, extra: &str, report: bool) -> String {
    let seen = dir.join("seen");
    let stdin = dir.join("stdin");
    std::fs::create_dir_all(&seen).unwrap();
    std::fs::create_dir_all(&stdin).unwrap();
    let report = if report {
        r##"ids=$(printf '%s\n' "$paths" | sed -n 's#^.*/\([^/]*\)\.md$#"\1"#p' | paste -sd, -)
if [ -n "$ids" ]; then printf '{"completed":[%s]}\n' "$ids"; fi"##
    } else {
        ""
    };
    let script = format!(
        r##"#!/bin/sh
set -u
paths=$LOOPS_HANDOFFS
cat > "{stdin}/$LOOPS_RUN_ID"
if [ -n "$paths" ]; then
  printf '%s\n' "$paths" | sed -n "s#^.*/\([^/]*\)\.md\$#$LOOPS_WAKE \1#p" > "{seen}/$LOOPS_RUN_ID.tmp"
else
  echo "$LOOPS_WAKE" > "{seen}/$LOOPS_RUN_ID.tmp"
fi
mv "{seen}/$LOOPS_RUN_ID.tmp" "{seen}/$LOOPS_RUN_ID"
{extra}
{report}
"##,
        stdin = stdin.display(),
        seen = seen.display(),
    );
    let p = dir.join("main.sh");
    std::fs::write(&p, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("[\"{}\"]", p.display())
}

/// What the [`main_script`] in `dir` saw: (run id, wake kind, handoff id) per handoff.
pub fn main_seen(dir: &Path) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir.join("seen"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
    {
        let run = e.file_name().to_string_lossy().into_owned();
        if run.ends_with(".tmp") {
            continue;
        }
        for l in std::fs::read_to_string(e.path())
            .unwrap_or_default()
            .lines()
        {
            let mut it = l.splitn(2, ' ');
            let kind = it.next().unwrap_or_default().to_string();
            let id = it.next().unwrap_or_default().to_string();
            v.push((run.clone(), kind, id));
        }
    }
    v
}

/// Writes a handoff the Maildir way (inbox/.tmp/, then rename into inbox/); returns its path.
pub fn drop_handoff(ws: &Path, id: &str, text: &str) -> PathBuf {
    let tmp = ws.join("inbox/.tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let t = tmp.join(format!("{id}.md"));
    std::fs::write(&t, text).unwrap();
    let dest = ws.join("inbox").join(format!("{id}.md"));
    std::fs::rename(&t, &dest).unwrap();
    dest
}
