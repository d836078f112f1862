//! loops.yaml `remote:`: a bare repository on disk is the remote, the workspace ("server")
//! runs loops, a second clone ("laptop") is the person, driven with the real git CLI.

use crate::common::{
    git, git_commit_all, loops_cmd, loops_std_cmd, wait_until, DaemonProcess, TempWorkspace,
};
use loops_testutil::git_http::GitHttp;
use loops_testutil::sshd::Sshd;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

struct Scene {
    server: TempWorkspace,
    _dirs: tempfile::TempDir,
    remote: PathBuf,
    laptop: PathBuf,
    branch: String,
}

impl Scene {
    /// A server workspace with a command loop `ticker` (appends a line to its state.md),
    /// pushed to a new bare remote, and the laptop's clone of it.
    fn new(remote_yaml: &str) -> Scene {
        let server = TempWorkspace::new();
        let _ = std::fs::remove_dir_all(server.path().join("domains/example"));
        server.add_loop(
            "ticker",
            "schedule: { every: 1h }\npayload:\n  kind: command\n  command: \"echo \\\"- $LOOPS_RUN_ID\\\" >> state.md\"\n",
        );
        server.write("domains/ticker/state.md", "# ticker\n");
        server.write(
            "loops.yaml",
            &format!("limits:\n  shutdown_grace: 2s\nremote:\n{remote_yaml}"),
        );
        git_commit_all(server.path(), "set up the server");
        let dirs = tempfile::tempdir().expect("tempdir");
        let remote = dirs.path().join("remote.git");
        let branch = git(server.path(), &["symbolic-ref", "--short", "HEAD"])
            .trim()
            .to_string();
        git(
            dirs.path(),
            &["init", "-q", "--bare", "-b", &branch, "remote.git"],
        );
        git(
            server.path(),
            &[
                "remote",
                "add",
                "origin",
                remote.to_str().expect("utf-8 path"),
            ],
        );
        git(server.path(), &["push", "-q", "origin", &branch]);
        let laptop = dirs.path().join("laptop");
        git(
            dirs.path(),
            &["clone", "-q", remote.to_str().expect("utf-8"), "laptop"],
        );
        for (k, v) in [
            ("user.name", "Person"),
            ("user.email", "person@example.com"),
        ] {
            git(&laptop, &["config", k, v]);
        }
        Scene {
            server,
            _dirs: dirs,
            remote,
            laptop,
            branch,
        }
    }

    /// The server's remote becomes the same bare repository served by git's smart-HTTP
    /// backend on 127.0.0.1 (hooks run; `token` is asked for).
    fn over_http(&self, token: Option<&str>) -> GitHttp {
        let http = GitHttp::start(self.remote.parent().expect("parent"), token);
        git(
            self.server.path(),
            &["remote", "set-url", "origin", &http.url("remote.git")],
        );
        http
    }

    /// `loops run` with `vars` in its environment.
    fn daemon_with(&self, vars: &[(&str, &str)]) -> DaemonProcess {
        let log = self.server.path().join(".git/daemon-remote.log");
        let f = std::fs::File::create(&log).expect("log");
        let mut cmd = loops_std_cmd(self.server.path());
        cmd.arg("run")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(f);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        DaemonProcess {
            child: Some(cmd.spawn().expect("loops run")),
            log,
        }
    }

    fn sync(&self, args: &[&str]) -> std::process::Output {
        loops_cmd(self.server.path())
            .arg("sync")
            .args(args)
            .output()
            .expect("loops sync")
    }

    fn sync_ok(&self) -> String {
        let out = self.sync(&[]);
        assert!(
            out.status.success(),
            "loops sync failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn trigger(&self, name: &str) {
        let out = loops_cmd(self.server.path())
            .args(["trigger", name])
            .output()
            .expect("trigger");
        assert!(
            out.status.success(),
            "trigger: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The laptop: edit, commit, push.
    fn laptop_commit(&self, rel: &str, text: &str, msg: &str) {
        let p = self.laptop.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        git(&self.laptop, &["add", "-A"]);
        git(&self.laptop, &["commit", "-q", "-m", msg]);
        git(&self.laptop, &["push", "-q", "origin", &self.branch]);
    }

    fn remote_log(&self) -> String {
        git(&self.remote, &["log", "--format=%H %s", &self.branch])
    }

    fn fsck_all(&self) {
        for dir in [
            self.server.path(),
            self.remote.as_path(),
            self.laptop.as_path(),
        ] {
            let out = std::process::Command::new("git")
                .current_dir(dir)
                .args(["fsck", "--no-progress"])
                .output()
                .expect("fsck");
            assert!(
                out.status.success(),
                "git fsck in {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn linear(dir: &Path) -> bool {
    git(dir, &["rev-list", "--merges", "HEAD"])
        .trim()
        .is_empty()
}

fn inbox_files(ws: &Path) -> Vec<String> {
    std::fs::read_dir(ws.join("inbox"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "md"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

#[test]
fn a_loop_pushed_from_the_laptop_runs_on_the_server_and_its_runs_come_back() {
    let sc = Scene::new("  pull_every: 1s\n  push_delay: 200ms\n");
    let mut daemon = sc.server.start_daemon();
    daemon.wait_for_log("loops daemon started", LONG);
    sc.laptop_commit(
        "domains/hello/config.yaml",
        "schedule: { every: 1s }\npayload:\n  kind: command\n  command: \"echo \\\"- $LOOPS_RUN_ID\\\" >> state.md\"\n",
        "laptop: add hello",
    );
    let pushed_at = std::time::Instant::now();
    assert!(
        wait_until(LONG, || sc.server.count_outcome("hello", "acted") >= 1),
        "the server never ran the loop; log:\n{}",
        daemon.log()
    );
    // Within pull_every + 1 s of the push, give or take the loop's own 1 s schedule and
    // a slow machine: the bar is asserted loosely here and measured in the bench.
    assert!(pushed_at.elapsed() < Duration::from_secs(20));
    assert!(
        wait_until(LONG, || sc.remote_log().contains("hello: ")),
        "the server's runs never reached the remote; log:\n{}",
        daemon.log()
    );
    daemon.kill();
    git(&sc.laptop, &["pull", "-q", "--ff-only"]);
    let log = loops_cmd(&sc.laptop)
        .args(["log", "hello", "--json"])
        .output()
        .expect("loops log");
    let entries: serde_json::Value = serde_json::from_slice(&log.stdout).expect("json");
    let entries = entries.as_array().expect("array");
    assert!(!entries.is_empty(), "loops log on the laptop shows no run");
    assert!(
        entries.iter().all(|e| e["run"].is_string()),
        "every entry carries its run trailer: {entries:?}"
    );
    assert!(linear(&sc.laptop) && linear(sc.server.path()));
    sc.fsck_all();
}

#[test]
fn the_same_file_edited_on_both_sides_keeps_the_persons_version_and_holds_the_runs() {
    let sc = Scene::new("  pull_every: 0\n");
    sc.trigger("ticker");
    let run_commit = git(sc.server.path(), &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    git(&sc.laptop, &["pull", "-q"]);
    sc.laptop_commit(
        "domains/ticker/state.md",
        "# ticker\nthe person's line\n",
        "person: edit state",
    );
    let out = sc.sync_ok();
    assert!(out.contains("conflict: domains/ticker/state.md"), "{out}");
    let state = std::fs::read_to_string(sc.server.path().join("domains/ticker/state.md")).unwrap();
    assert_eq!(
        state, "# ticker\nthe person's line\n",
        "the person's version is in the tree"
    );
    let held = git(
        sc.server.path(),
        &[
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/loops/held/",
        ],
    );
    assert!(
        held.contains(&run_commit),
        "the run's commit is kept on a held ref: {held}"
    );
    let kept = git(
        sc.server.path(),
        &["show", &format!("{run_commit}:domains/ticker/state.md")],
    );
    assert!(kept.contains("- "), "the run's version is whole on the ref");
    let notes = inbox_files(sc.server.path());
    assert!(
        notes.iter().any(|n| n.contains("sync-conflict")
            && n.contains("refs/loops/held/")
            && n.contains("domains/ticker/state.md")),
        "a handoff names both versions: {notes:?}"
    );
    assert!(!state.contains("<<<<<<<"));
    // The run's record says where its version is.
    let runs = loops_cmd(sc.server.path())
        .args(["runs", "ticker", "--json"])
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("json");
    let held_ref = runs
        .as_array()
        .and_then(|a| a.iter().find(|r| r["commit"] == run_commit.as_str()))
        .map(|r| r["held"].clone());
    assert!(
        held_ref
            .as_ref()
            .and_then(|h| h.as_str())
            .is_some_and(|h| h.starts_with("refs/loops/held/")),
        "the run record does not say held: {runs}"
    );
    let text = loops_cmd(sc.server.path())
        .args(["runs", "ticker"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("held: the person's edit"));
    // Nothing of the held run was pushed, and the remote and the server agree.
    assert!(!sc.remote_log().contains(&run_commit));
    assert_eq!(
        git(
            sc.server.path(),
            &["status", "--porcelain", "--untracked-files=no"]
        )
        .trim(),
        ""
    );
    assert!(linear(sc.server.path()));
    sc.fsck_all();
}

#[test]
fn run_commits_are_replayed_onto_the_laptops_edits_of_other_files() {
    let sc = Scene::new("  pull_every: 0\n");
    sc.trigger("ticker");
    sc.laptop_commit(
        "domains/ticker/prompt-notes.md",
        "from the laptop\n",
        "laptop: notes",
    );
    let out = sc.sync_ok();
    assert!(out.contains("1 unpushed commit(s) replayed"), "{out}");
    assert!(out.contains("pushed 1 commit(s)"), "{out}");
    let log = sc.remote_log();
    assert!(
        log.contains("laptop: notes") && log.contains("ticker: "),
        "{log}"
    );
    assert!(sc
        .server
        .path()
        .join("domains/ticker/prompt-notes.md")
        .exists());
    assert!(linear(&sc.remote));
    sc.fsck_all();
}

#[test]
fn a_pull_that_would_overwrite_the_persons_uncommitted_edit_waits() {
    let sc = Scene::new("  pull_every: 0\n");
    sc.laptop_commit("notes.md", "laptop version\n", "laptop: notes");
    // The person is editing the same file on the server, uncommitted.
    std::fs::write(sc.server.path().join("notes.md"), "work in progress\n").unwrap();
    let out = sc.sync_ok();
    assert!(out.contains("deferred"), "{out}");
    assert_eq!(
        std::fs::read_to_string(sc.server.path().join("notes.md")).unwrap(),
        "work in progress\n",
        "the person's work is never touched"
    );
    let status = loops_cmd(sc.server.path()).arg("status").output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("pull deferred"), "{status}");
    // Once it is out of the way, the pull goes on.
    std::fs::remove_file(sc.server.path().join("notes.md")).unwrap();
    let out = sc.sync_ok();
    assert!(out.contains("fast-forwarded"), "{out}");
    assert_eq!(
        std::fs::read_to_string(sc.server.path().join("notes.md")).unwrap(),
        "laptop version\n"
    );
}

#[test]
fn a_force_push_is_followed_and_the_old_history_never_pushed_back() {
    let sc = Scene::new("  pull_every: 0\n");
    sc.laptop_commit("a.md", "a\n", "laptop: a (to be rewritten)");
    sc.sync_ok();
    let dropped = git(&sc.laptop, &["rev-parse", "HEAD"]).trim().to_string();
    sc.trigger("ticker");
    // The person rewrites history: a different commit in place of the last one.
    git(&sc.laptop, &["reset", "-q", "--hard", "HEAD~1"]);
    std::fs::write(sc.laptop.join("b.md"), "b\n").unwrap();
    git(&sc.laptop, &["add", "-A"]);
    git(&sc.laptop, &["commit", "-q", "-m", "laptop: b instead"]);
    git(&sc.laptop, &["push", "-q", "--force", "origin", &sc.branch]);
    let out = sc.sync_ok();
    assert!(out.contains("rewritten"), "{out}");
    let log = sc.remote_log();
    assert!(!log.contains(&dropped), "the old history came back: {log}");
    assert!(
        log.contains("laptop: b instead") && log.contains("ticker: "),
        "{log}"
    );
    assert!(!sc.server.path().join("a.md").exists());
    sc.fsck_all();
}

#[test]
fn a_commit_with_an_api_key_is_not_pushed() {
    let sc = Scene::new("  pull_every: 0\n");
    sc.trigger("ticker");
    let clean = git(sc.server.path(), &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    sc.server.write(
        "domains/ticker/config.yaml",
        "schedule: { every: 1h }\npayload:\n  kind: command\n  command: \"echo 'key: sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx' >> state.md\"\n",
    );
    git_commit_all(sc.server.path(), "ticker leaks");
    sc.trigger("ticker");
    let leaked = git(sc.server.path(), &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    let out = sc.sync_ok();
    assert!(out.contains("held") && out.contains("api_key"), "{out}");
    let log = sc.remote_log();
    assert!(
        log.contains(&clean),
        "the clean commit before it is pushed: {log}"
    );
    assert!(
        !log.contains(&leaked),
        "the leaking commit was pushed: {log}"
    );
    let all = git(&sc.remote, &["log", "--all", "-p"]);
    assert!(!all.contains("sk-ant-api03"), "the key reached the remote");
    let notes = inbox_files(sc.server.path());
    assert!(
        notes
            .iter()
            .any(|n| n.contains("to: person") && n.contains("api_key")),
        "{notes:?}"
    );
}

#[test]
fn a_remote_that_refuses_pushes_for_a_while_gets_every_commit_once_in_order() {
    let sc = Scene::new("  pull_every: 1s\n  push_delay: 100ms\n");
    let _http = sc.over_http(None);
    // The remote's own hook says no while `closed` exists, as a read-only remote does.
    let hook = sc.remote.join("hooks/pre-receive");
    let closed = sc.remote.join("closed");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n[ -e {} ] && {{ echo 'read-only for now' >&2; exit 1; }}\nexit 0\n",
            closed.display()
        ),
    )
    .unwrap();
    git(&sc.remote, &["config", "core.hooksPath", "hooks"]);
    std::process::Command::new("chmod")
        .args(["+x", hook.to_str().unwrap()])
        .status()
        .unwrap();
    std::fs::write(&closed, "").unwrap();
    sc.server.write(
        "domains/ticker/config.yaml",
        "schedule: { every: 1s }\npayload:\n  kind: command\n  command: \"echo \\\"- $LOOPS_RUN_ID\\\" >> state.md\"\n",
    );
    git_commit_all(sc.server.path(), "tick every second");
    let before = sc.remote_log();
    let mut daemon = sc.server.start_daemon();
    assert!(wait_until(LONG, || sc
        .server
        .count_outcome("ticker", "acted")
        >= 4));
    assert!(
        wait_until(LONG, || {
            let o = loops_cmd(sc.server.path())
                .args(["status", "--json"])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            v["remote"]["failures"].as_u64().unwrap_or(0) >= 1
        }),
        "the refusal never showed in status; log:\n{}",
        daemon.log()
    );
    assert_eq!(
        sc.remote_log(),
        before,
        "nothing got through while closed; log:\n{}",
        daemon.log()
    );
    let status = loops_cmd(sc.server.path()).arg("status").output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("FAILING") && status.contains("ahead"),
        "{status}"
    );
    std::fs::remove_file(&closed).unwrap();
    assert!(
        wait_until(LONG, || sc.remote_log().contains("ticker: ")),
        "nothing arrived once the remote opened; log:\n{}",
        daemon.log()
    );
    daemon.kill();
    let out = sc.sync_ok();
    assert!(out.contains("ahead 0, behind 0"), "{out}");
    let ours = git(sc.server.path(), &["log", "--format=%H", &sc.branch]);
    let theirs = git(&sc.remote, &["log", "--format=%H", &sc.branch]);
    assert_eq!(ours, theirs, "every commit, once, in order");
    let runs = git(
        &sc.remote,
        &["log", "--format=%(trailers:key=Run,valueonly)", &sc.branch],
    );
    let ids: Vec<&str> = runs.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert!(ids.len() >= 4);
    assert_eq!(ids.len(), unique.len(), "a run's commit arrived twice");
    sc.fsck_all();
}

#[test]
fn an_https_style_remote_takes_the_token_named_by_token_env_and_nothing_keeps_it() {
    const TOKEN: &str = "tok-3f9a1c7e5b2d4f6a8c0e";
    let sc = Scene::new("  pull_every: 1s\n  push_delay: 100ms\n  token_env: GIT_TOKEN\n");
    let http = sc.over_http(Some(TOKEN));
    sc.trigger("ticker");
    // Unset: said, with the fix, and nothing sent.
    let out = sc.sync(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GIT_TOKEN") && err.contains("not set") && err.contains("help:"),
        "{err}"
    );
    // Wrong: refused by the server, said as such.
    let out = loops_cmd(sc.server.path())
        .arg("sync")
        .env("GIT_TOKEN", "wrong-token-000000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the credentials") || err.contains("authentication"),
        "{err}"
    );
    assert!(http.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // Right, through the daemon (which hands its secrets over a pipe, not the environment).
    let mut daemon = sc.daemon_with(&[("GIT_TOKEN", TOKEN)]);
    assert!(
        wait_until(LONG, || sc.remote_log().contains("ticker: ")),
        "the daemon never pushed with the token; log:\n{}",
        daemon.log()
    );
    git(&sc.laptop, &["pull", "-q", "--ff-only"]);
    sc.laptop_commit("from-laptop.md", "hi\n", "laptop: hi");
    assert!(
        wait_until(LONG, || sc.server.path().join("from-laptop.md").exists()),
        "the daemon never pulled; log:\n{}",
        daemon.log()
    );
    daemon.kill();
    for dir in [
        sc.server.path().join(".loops"),
        sc.server.path().join(".git"),
    ] {
        let hits = std::process::Command::new("grep")
            .args(["-rl", TOKEN])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            hits.stdout.is_empty(),
            "the token was written to {}",
            String::from_utf8_lossy(&hits.stdout)
        );
    }
    assert!(!daemon.log().contains(TOKEN));
}

#[test]
fn sync_without_a_remote_or_with_a_missing_one_says_what_to_do() {
    let ws = TempWorkspace::new();
    let out = loops_cmd(ws.path()).arg("sync").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no `remote:`") && err.contains("help:"),
        "{err}"
    );
    ws.write("loops.yaml", "remote:\n  name: upstream\n");
    let out = loops_cmd(ws.path()).arg("sync").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`upstream`") && err.contains("git remote add upstream"),
        "{err}"
    );
}

#[test]
fn loops_check_names_a_bad_remote_setting_and_the_fix() {
    let ws = TempWorkspace::new();
    ws.write(
        "loops.yaml",
        "remote:\n  name: origin\n  pull_every: soon\n  token_env: \"my token\"\n  pusj: true\n",
    );
    let out = loops_cmd(ws.path()).arg("check").output().unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("loops.yaml:3"), "{text}");
    assert!(text.contains("remote.pull_every"), "{text}");
    assert!(text.contains("remote.token_env"), "{text}");
    assert!(
        text.contains("unknown key `remote.pusj`") && text.contains("did you mean `push`?"),
        "{text}"
    );
}

#[test]
fn the_laptop_edits_a_prompt_fifty_times_while_the_server_commits_every_second() {
    let sc = Scene::new("  pull_every: 1s\n  push_delay: 100ms\n");
    sc.server.write(
        "domains/ticker/config.yaml",
        "schedule: { every: 1s }\npayload:\n  kind: command\n  command: \"echo \\\"- $LOOPS_RUN_ID\\\" >> state.md\"\n",
    );
    git_commit_all(sc.server.path(), "tick every second");
    git(sc.server.path(), &["push", "-q", "origin", &sc.branch]);
    git(&sc.laptop, &["pull", "-q", "--ff-only"]);
    let mut daemon = sc.server.start_daemon();
    daemon.wait_for_log("loops daemon started", LONG);
    let prompt = "domains/ticker/notes.md";
    for i in 0..50 {
        std::fs::write(sc.laptop.join(prompt), format!("edit {i}\n")).unwrap();
        git(&sc.laptop, &["add", "-A"]);
        git(
            &sc.laptop,
            &["commit", "-q", "-m", &format!("laptop: edit {i}")],
        );
        // As a person does: rebase onto what the server pushed meanwhile, push, again
        // if the server got in first.
        let pushed = wait_until(LONG, || {
            let rebased = std::process::Command::new("git")
                .current_dir(&sc.laptop)
                .args(["pull", "-q", "--rebase", "origin", &sc.branch])
                .status()
                .is_ok_and(|s| s.success());
            rebased
                && std::process::Command::new("git")
                    .current_dir(&sc.laptop)
                    .args(["push", "-q", "origin", &sc.branch])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        });
        assert!(pushed, "the laptop could not push edit {i}");
    }
    assert!(
        wait_until(LONG, || std::fs::read_to_string(
            sc.server.path().join(prompt)
        )
        .is_ok_and(|t| t == "edit 49\n")),
        "the server never got the last edit; log:\n{}",
        daemon.log()
    );
    // The laptop's fifty edits can take less time than five ticks on a fast machine:
    // wait for enough committed runs rather than hoping the edits took long enough.
    let committed = |sc: &Scene| {
        sc.server
            .runs("ticker")
            .iter()
            .filter(|r| r["commit"].is_string())
            .count()
    };
    assert!(
        wait_until(LONG, || committed(&sc) >= 5),
        "the server committed only {} runs; log:\n{}",
        committed(&sc),
        daemon.log()
    );
    daemon.kill();
    // A daemon killed while it moved the branch leaves the branch's lock file: the sync
    // names it and fails until the lock is stale (no holder, 10 s old), then clears it.
    let synced = wait_until(LONG, || {
        let out = sc.sync(&[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success() || err.contains(".lock"),
            "loops sync failed: {err}"
        );
        out.status.success()
    });
    assert!(synced, "the sync never went through");
    git(
        &sc.laptop,
        &["pull", "-q", "--rebase", "origin", &sc.branch],
    );
    let remote = git(&sc.remote, &["log", "--format=%s", &sc.branch]);
    for i in 0..50 {
        assert!(
            remote.contains(&format!("laptop: edit {i}\n")),
            "edit {i} was lost"
        );
    }
    // Every run the server recorded with a commit reached the remote.
    let runs: Vec<String> = sc
        .server
        .runs("ticker")
        .iter()
        .filter(|r| r["commit"].is_string())
        .map(|r| r["run_id"].as_str().unwrap_or_default().to_string())
        .collect();
    let trailers = git(
        &sc.remote,
        &["log", "--format=%(trailers:key=Run,valueonly)", &sc.branch],
    );
    for id in &runs {
        assert!(
            trailers.contains(id.as_str()),
            "run {id} never reached the remote; its record: {:?}\nserver: {}\nlog:\n{}",
            sc.server
                .runs("ticker")
                .iter()
                .find(|r| r["run_id"] == id.as_str()),
            git(
                sc.server.path(),
                &[
                    "log",
                    "--all",
                    "--format=%h %s %(trailers:key=Run,valueonly)"
                ]
            ),
            daemon.log()
        );
    }
    assert!(
        runs.len() >= 5,
        "the server ran too little to prove anything: {}",
        runs.len()
    );
    for dir in [sc.server.path(), sc.laptop.as_path()] {
        let markers = std::process::Command::new("git")
            .current_dir(dir)
            .args(["grep", "-l", "^<<<<<<<"])
            .output()
            .unwrap();
        assert!(
            markers.stdout.is_empty(),
            "conflict markers in {}",
            dir.display()
        );
    }
    assert!(linear(&sc.remote));
    sc.fsck_all();
}

#[test]
fn an_ssh_remote_is_reached_with_the_deploy_key_and_an_unknown_or_changed_host_key_is_refused() {
    let sc = Scene::new("  pull_every: 0\n");
    let sshd = Sshd::start(&sc._dirs.path().join("sshd"));
    git(
        sc.server.path(),
        &["remote", "set-url", "origin", &sshd.url(&sc.remote)],
    );
    let known = sc._dirs.path().join("known_hosts");
    let yaml = |kh: &Path| {
        format!(
            "limits:\n  shutdown_grace: 2s\nremote:\n  pull_every: 0\n  ssh_key_file: {}\n  known_hosts: {}\n",
            sshd.client_key.display(),
            kh.display()
        )
    };
    sc.server.write("loops.yaml", &yaml(&known));
    git_commit_all(sc.server.path(), "remote over ssh");
    let before = sc.remote_log();
    // A host not in known_hosts: refused, with its fingerprint and the line to add.
    std::fs::write(&known, "").unwrap();
    let out = sc.sync(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not in") && err.contains("SHA256:") && err.contains("ssh-keyscan"),
        "{err}"
    );
    assert_eq!(
        sc.remote_log(),
        before,
        "nothing was pushed to an unchecked host"
    );
    // A host whose key changed: refused.
    let other = sc._dirs.path().join("other_key");
    std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_line: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", sshd.port, other_line.join(" ")),
    )
    .unwrap();
    let out = sc.sync(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(sc.remote_log(), before);
    // The right key: the push goes through sshd with the deploy key.
    std::fs::write(&known, sshd.known_hosts_line()).unwrap();
    let out = sc.sync(&[]);
    assert!(
        out.status.success(),
        "{}{}\nsshd:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert!(sc.remote_log().contains("remote over ssh"));
    git(&sc.laptop, &["pull", "-q", "--ff-only"]);
    sc.laptop_commit("over-ssh.md", "hi\n", "laptop: over ssh");
    assert!(String::from_utf8_lossy(&sc.sync(&[]).stdout).contains("fast-forwarded"));
    assert!(sc.server.path().join("over-ssh.md").exists());
    sc.fsck_all();
}

#[test]
fn a_loops_next_run_waits_until_its_last_commit_is_pushed() {
    // A push every 2 s at the soonest, a run due every second: each run must find the
    // one before it already on the remote.
    let sc = Scene::new("  pull_every: 30s\n  push_delay: 2s\n");
    sc.server.write(
        "domains/ticker/config.yaml",
        "schedule: { every: 1s }\npayload:\n  kind: command\n  command: \"git -C ../.. ls-remote origin HEAD | cut -c1-40 > ../../.git/seen-$LOOPS_RUN_ID; echo \\\"- $LOOPS_RUN_ID\\\" >> state.md\"\n",
    );
    git_commit_all(sc.server.path(), "tick every second");
    git(sc.server.path(), &["push", "-q", "origin", &sc.branch]);
    let mut daemon = sc.server.start_daemon();
    assert!(
        wait_until(LONG, || sc.server.count_outcome("ticker", "acted") >= 4),
        "log:\n{}",
        daemon.log()
    );
    daemon.kill();
    // Each run (after the first) saw, at its start, the remote holding the run before it.
    let runs: Vec<serde_json::Value> = sc
        .server
        .runs("ticker")
        .into_iter()
        .filter(|r| r["outcome"] == "acted")
        .collect();
    for pair in runs.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let seen_file = sc
            .server
            .path()
            .join(format!(".git/seen-{}", after["run_id"].as_str().unwrap()));
        let seen = std::fs::read_to_string(&seen_file).unwrap_or_default();
        let seen = seen.trim();
        // The remote's tip at the second run's start holds the first run's trailer.
        let trailers = git(
            &sc.remote,
            &["log", "--format=%(trailers:key=Run,valueonly)", seen],
        );
        assert!(
            trailers.contains(before["run_id"].as_str().unwrap()),
            "run {} started before run {} was pushed",
            after["run_id"],
            before["run_id"]
        );
    }
}

#[test]
fn a_lock_a_killed_push_left_in_a_folder_remote_stops_nothing() {
    let sc = Scene::new("  pull_every: 0\n");
    sc.trigger("ticker");
    let head = git(sc.server.path(), &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    // What a daemon SIGKILLed in the middle of pushing this commit leaves there.
    let incoming = sc.remote.join("refs/loops/incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::write(incoming.join(format!("{head}.lock")), "").unwrap();
    let out = sc.sync_ok();
    assert!(out.contains("pushed 1 commit(s)"), "{out}");
    assert!(sc.remote_log().contains(&head));
}

#[test]
fn a_pull_waits_while_the_person_is_in_the_middle_of_a_rebase_on_the_server() {
    let sc = Scene::new("  pull_every: 0\n");
    sc.laptop_commit("from-laptop.md", "hi\n", "laptop: hi");
    // The person's rebase stops (an --exec that fails): a rebase is in progress.
    let stopped = std::process::Command::new("git")
        .current_dir(sc.server.path())
        .args([
            "-c",
            "core.editor=true",
            "rebase",
            "--exec",
            "false",
            "HEAD~1",
        ])
        .output()
        .unwrap();
    assert!(!stopped.status.success(), "the rebase was meant to stop");
    let head = git(sc.server.path(), &["rev-parse", "HEAD"]);
    let out = sc.sync_ok();
    assert!(out.contains("deferred") && out.contains("rebase"), "{out}");
    assert_eq!(
        git(sc.server.path(), &["rev-parse", "HEAD"]),
        head,
        "HEAD moved mid-rebase"
    );
    assert!(!sc.server.path().join("from-laptop.md").exists());
    git(sc.server.path(), &["rebase", "--abort"]);
    let out = sc.sync_ok();
    assert!(out.contains("fast-forwarded"), "{out}");
    assert!(sc.server.path().join("from-laptop.md").exists());
    sc.fsck_all();
}

#[test]
fn a_once_pass_pulls_before_it_runs_and_pushes_after() {
    // A server driven by cron (`loops run --once`) has no daemon to sync for it.
    let sc = Scene::new("  pull_every: 30s\n");
    sc.laptop_commit(
        "domains/hello/config.yaml",
        "schedule: { every: 1h }\npayload:\n  kind: command\n  command: \"echo \\\"- $LOOPS_RUN_ID\\\" >> state.md\"\n",
        "laptop: add hello",
    );
    let out = loops_cmd(sc.server.path())
        .args(["run", "--once", "--all"])
        .output()
        .expect("loops run --once");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert_eq!(
        sc.server.count_outcome("hello", "acted"),
        1,
        "the pulled loop ran in the same pass: {said}"
    );
    assert!(
        sc.remote_log().contains("hello: "),
        "the pass pushed its run: {}\n{said}",
        sc.remote_log()
    );
    assert!(linear(sc.server.path()));
    sc.fsck_all();
}

#[test]
fn a_branch_lock_left_by_a_killed_git_is_named_then_cleared_once_it_is_stale() {
    let sc = Scene::new("  pull_every: 0\n");
    sc.laptop_commit("from-laptop.md", "hi\n", "laptop: hi");
    let head = git(sc.server.path(), &["rev-parse", "HEAD"]);
    // What a git (or a loops) killed while moving the branch leaves behind.
    let lock = sc
        .server
        .path()
        .join(".git/refs/heads")
        .join(format!("{}.lock", sc.branch));
    std::fs::write(&lock, "").unwrap();
    let out = sc.sync(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{}.lock", sc.branch)) && err.contains("remove it"),
        "{err}"
    );
    assert_eq!(git(sc.server.path(), &["rev-parse", "HEAD"]), head);
    assert!(
        !sc.server.path().join("from-laptop.md").exists(),
        "the work tree is as HEAD has it"
    );
    assert!(git(sc.server.path(), &["status", "--porcelain"])
        .trim()
        .is_empty());
    assert!(
        lock.exists(),
        "a lock this young may be a git's that has only just taken it"
    );
    // Once it is old and no process holds it, the next sync removes it and goes on.
    let aged = std::process::Command::new("touch")
        .args(["-d", "-20 seconds"])
        .arg(&lock)
        .status()
        .unwrap();
    assert!(aged.success());
    let out = sc.sync_ok();
    assert!(!lock.exists());
    assert!(out.contains("fast-forwarded"), "{out}");
    assert!(sc.server.path().join("from-laptop.md").exists());
}
