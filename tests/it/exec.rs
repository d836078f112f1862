//! `loops_core::exec::run`: exit codes, bounded output tails, the allow-listed environment,
//! process-group timeouts and spawn errors. Real processes, no mocks.

use crate::common::is_zombie;
use loops_core::exec::{self, ExecSpec, STDERR_TAIL, STDOUT_TAIL};
use std::path::Path;
use std::time::{Duration, Instant};

fn spec(script: &str, cwd: &Path) -> ExecSpec {
    ExecSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        cwd: cwd.to_path_buf(),
        env: exec::base_env(),
        timeout: Duration::from_secs(60),
        grace: Duration::from_secs(1),
        on_spawn: None,
        stdin: None,
    }
}

#[tokio::test]
async fn exec_exit_codes_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let ok = exec::run(&spec("echo hello; echo oops >&2", dir.path()), None, None).await;
    assert_eq!(ok.exit_code, Some(0));
    assert!(ok.success());
    assert_eq!(ok.stdout_tail, "hello\n");
    assert_eq!(ok.stderr_tail, "oops\n");
    assert_eq!(ok.stdout_bytes, 6);
    assert!(ok.failure_reason(Duration::from_secs(1)).is_none());

    let bad = exec::run(&spec("echo why >&2; exit 3", dir.path()), None, None).await;
    assert_eq!(bad.exit_code, Some(3));
    assert!(!bad.success());
    assert!(!bad.timed_out);
    let reason = bad.failure_reason(Duration::from_secs(1)).unwrap();
    assert!(reason.contains("status 3"), "{reason}");
    assert!(
        reason.contains("why"),
        "the last stderr line is in the reason: {reason}"
    );

    // The working directory is the one given.
    let pwd = exec::run(&spec("pwd -P", dir.path()), None, None).await;
    assert_eq!(
        Path::new(pwd.stdout_tail.trim()),
        dir.path().canonicalize().unwrap()
    );
}

#[tokio::test]
async fn exec_output_tails_are_capped_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    // 200 000 bytes on stdout, 50 000 on stderr; the last line of each is recognisable.
    let script = "head -c 199990 /dev/zero | tr '\\0' a; printf 'END-OUT-X\\n'; \
                  head -c 49990 /dev/zero | tr '\\0' b >&2; printf 'END-ERR-X\\n' >&2";
    let r = exec::run(&spec(script, dir.path()), None, None).await;
    assert_eq!(r.exit_code, Some(0), "{}", r.stderr_tail);
    assert_eq!(r.stdout_bytes, 200_000);
    assert_eq!(r.stderr_bytes, 50_000);

    // The first quarter of what is kept comes from the start, the rest from the end, and
    // a line between them says how much is missing.
    let out_cut = 200_000 - STDOUT_TAIL as u64;
    assert_eq!(r.stdout_dropped, out_cut);
    let (head, rest) = r.stdout_tail.split_once('\n').unwrap();
    assert_eq!(
        head,
        "a".repeat(STDOUT_TAIL / 4),
        "the first 16 KiB are kept"
    );
    let (note, tail) = rest.split_once('\n').unwrap();
    assert!(
        note.contains(&out_cut.to_string()),
        "the note says how many bytes were cut: {note}"
    );
    assert_eq!(
        tail.len(),
        STDOUT_TAIL - STDOUT_TAIL / 4,
        "and the last 48 KiB"
    );
    assert!(tail.ends_with("aEND-OUT-X\n"));

    let err_cut = 50_000 - STDERR_TAIL as u64;
    assert_eq!(r.stderr_dropped, err_cut);
    let (head, rest) = r.stderr_tail.split_once('\n').unwrap();
    assert_eq!(head.len(), STDERR_TAIL / 4);
    let (note, tail) = rest.split_once('\n').unwrap();
    assert!(note.contains(&err_cut.to_string()), "{note}");
    assert_eq!(tail.len(), STDERR_TAIL - STDERR_TAIL / 4);
    assert!(tail.ends_with("bEND-ERR-X\n"));

    // Under the cap nothing is cut and there is no note.
    let small = exec::run(
        &spec("head -c 1000 /dev/zero | tr '\\0' c", dir.path()),
        None,
        None,
    )
    .await;
    assert_eq!(small.stdout_tail, "c".repeat(1000));
    assert_eq!(small.stdout_dropped, 0);
}

#[tokio::test]
async fn exec_environment_is_the_allow_list_plus_what_is_given() {
    let dir = tempfile::tempdir().unwrap();
    // Whatever else is in the test's environment (cargo sets plenty) must not leak.
    let outside: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| !exec::ENV_ALLOW_LIST.contains(&k.as_str()))
        .collect();
    assert!(
        !outside.is_empty(),
        "the test process has variables off the allow-list"
    );
    let mut s = spec("env", dir.path());
    s.env = exec::base_env();
    s.env.push(("LOOPS_EXTRA".into(), "given".into()));
    let r = exec::run(&s, None, None).await;
    assert_eq!(r.exit_code, Some(0));
    let names: Vec<&str> = r
        .stdout_tail
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(r.stdout_tail.contains("LOOPS_EXTRA=given\n"));
    for k in &outside {
        assert!(
            !names.contains(&k.as_str()) || ["PWD", "SHLVL", "_", "OLDPWD"].contains(&k.as_str()),
            "{k} leaked into the command's environment"
        );
    }
    // `sh` itself may add PWD, SHLVL and `_`; everything else comes from the spec.
    let allowed = [
        "PATH",
        "HOME",
        "USER",
        "LANG",
        "TZ",
        "LOOPS_EXTRA",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    ];
    for n in &names {
        assert!(
            allowed.contains(n),
            "unexpected variable {n} in {:?}",
            names
        );
    }
    assert!(names.contains(&"PATH"), "PATH is passed through");

    // base_env holds only allow-listed names.
    for (k, _) in exec::base_env() {
        assert!(exec::ENV_ALLOW_LIST.contains(&k.as_str()), "{k}");
    }

    // An empty spec env means an empty environment (nothing inherited).
    let mut bare = spec("env", dir.path());
    bare.argv = vec!["/usr/bin/env".into()];
    bare.env = vec![("ONLY".into(), "this".into())];
    let r = exec::run(&bare, None, None).await;
    assert_eq!(r.stdout_tail, "ONLY=this\n");
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    // The grandchild ignores SIGTERM and would sleep for a minute; its parent waits on it.
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {p}; exec sleep 60' & wait",
        p = pidfile.display()
    );
    let mut s = spec(&script, dir.path());
    s.timeout = Duration::from_secs(1);
    s.grace = Duration::from_secs(1);
    let started = Instant::now();
    let r = exec::run(&s, None, None).await;
    let took = started.elapsed();
    assert!(r.timed_out, "{r:?}");
    assert!(!r.success());
    assert!(
        took < Duration::from_secs(30),
        "run() returned after the timeout and grace, not after the sleep: {took:?}"
    );
    let reason = r.failure_reason(s.timeout).unwrap();
    assert!(reason.contains("timed out"), "{reason}");

    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("the grandchild wrote its pid")
        .trim()
        .parse()
        .unwrap();
    // SIGKILL is delivered by the time kill() returns, but the zombie may need its
    // parent (init) to reap it; allow a generous moment.
    let gone = crate::common::wait_until(Duration::from_secs(10), || {
        !crate::common::pid_alive(pid) || is_zombie(pid)
    });
    assert!(gone, "grandchild {pid} outlived the run");
}

#[tokio::test]
async fn exec_leftover_background_children_do_not_outlive_a_finished_run() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    // The leader exits at once, leaving a background child without the output pipes.
    let script = format!(
        "sh -c 'echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 60' >/dev/null 2>&1 & \
         while [ ! -s {p} ]; do sleep 0.01; done; echo started",
        p = pidfile.display()
    );
    let r = exec::run(&spec(&script, dir.path()), None, None).await;
    assert_eq!(r.exit_code, Some(0));
    assert!(crate::common::wait_until(
        Duration::from_secs(5),
        || pidfile.exists() && !std::fs::read_to_string(&pidfile).unwrap().trim().is_empty()
    ));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = crate::common::wait_until(Duration::from_secs(10), || {
        !crate::common::pid_alive(pid) || is_zombie(pid)
    });
    assert!(gone, "background child {pid} outlived the run");
}

#[tokio::test]
async fn exec_cancel_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let s = spec("sleep 60", dir.path());
    let h = tokio::spawn(async move { exec::run(&s, None, Some(rx)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(true).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), h)
        .await
        .expect("run() returns after cancel")
        .unwrap();
    assert!(r.cancelled);
    assert!(!r.timed_out);
    assert_eq!(
        r.failure_reason(Duration::from_secs(1)).as_deref(),
        Some("interrupted")
    );
}

#[tokio::test]
async fn exec_missing_program_is_a_clear_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec("", dir.path());
    s.argv = vec!["./no-such-script.sh".into()];
    let r = exec::run(&s, None, None).await;
    let e = r.spawn_error.clone().expect("spawn_error");
    assert!(e.contains("./no-such-script.sh"), "{e}");
    assert!(e.contains("not found"), "{e}");
    assert!(
        e.contains(&dir.path().display().to_string()),
        "names the folder: {e}"
    );
    assert_eq!(r.exit_code, None);
    assert!(!r.success());
    assert_eq!(r.failure_reason(Duration::from_secs(1)), Some(e));

    // A file that is there but not executable.
    std::fs::write(dir.path().join("plain.sh"), "#!/bin/sh\necho hi\n").unwrap();
    s.argv = vec!["./plain.sh".into()];
    let r = exec::run(&s, None, None).await;
    let e = r.spawn_error.expect("spawn_error");
    assert!(
        e.contains("permission denied") && e.contains("chmod +x"),
        "{e}"
    );

    // An empty command.
    s.argv = vec![];
    let r = exec::run(&s, None, None).await;
    assert!(r.spawn_error.unwrap().contains("empty"));
}
