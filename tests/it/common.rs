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

// ---------------------------------------------------------------------------------------
// Helpers for the exec, history, daemon and cli tests.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The path of the built `loops` binary.
pub fn loops_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("loops")
}

/// The Python the MCP tests run (tests/mcp_client/drive.py, the Python test servers):
/// `target/py-venv/bin/python`, the virtual environment .ci/run makes with the versions
/// pinned in tests/mcp_client/requirements.txt, so what the machine has installed globally
/// does not decide what the tests run against. `LOOPS_TEST_PYTHON` names another (to try
/// another SDK version). Panics with what to do when neither is there: a skipped MCP test
/// would hide a broken server.
pub fn test_python() -> PathBuf {
    if let Some(p) = std::env::var_os("LOOPS_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    // target/debug/loops -> target/
    let bin = loops_bin();
    let target = bin
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let python = target.join("py-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: the MCP tests run in a virtual environment of their own with the pinned MCP Python SDK. \
         Run .ci/run (it makes it), or: python3 -m venv {venv} && {venv}/bin/python -m pip install -r tests/mcp_client/requirements.txt \
         (or set LOOPS_TEST_PYTHON to a python that has the `mcp` package)",
        python.display(),
        venv = target.join("py-venv").display(),
    );
    python
}

/// A std `Command` for `loops` with the same clean environment as [`loops_cmd`]
/// (for processes that run in the background: daemons, parallel triggers).
pub fn loops_std_cmd(cwd: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(loops_bin());
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

/// Polls `f` every 50 ms until it is true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// Whether a process with this pid exists (signal 0 probe).
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 }
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
        let child = loops_std_cmd(self.path())
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

/// A `loops run` child process; SIGKILLed on drop if still running.
pub struct DaemonProcess {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl DaemonProcess {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("child").id() as i32
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (generously) until the daemon logs `needle`; panics with the log if it never does.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.log().contains(needle)),
            "the daemon never logged {needle:?}; log:\n{}",
            self.log()
        );
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the daemon to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.as_mut()?.try_wait().expect("try_wait") {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
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

/// A zombie has exited and only waits to be reaped: it holds nothing.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
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
