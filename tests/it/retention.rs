//! Retention: `loops prune` and the daemon's own pruning of `.loops/` (loops.yaml `records:`).

use crate::common::{git_commit_all, loops_std_cmd, wait_until, TempWorkspace};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn ws_with(yaml: &str) -> TempWorkspace {
    let ws = TempWorkspace::new();
    ws.write("loops.yaml", yaml);
    git_commit_all(ws.path(), "setup");
    ws
}

/// Writes a file under `.loops/` and dates it `age` ago.
fn aged(ws: &TempWorkspace, rel: &str, bytes: usize, age: Duration) -> PathBuf {
    let p = ws.path().join(".loops").join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, vec![b'x'; bytes]).expect("write");
    backdate(&p, age);
    p
}

fn backdate(p: &Path, age: Duration) {
    let f = std::fs::File::options()
        .write(true)
        .open(p)
        .expect("open to date");
    f.set_modified(SystemTime::now() - age).expect("set mtime");
}

fn loops(ws: &TempWorkspace, args: &[&str]) -> std::process::Output {
    loops_std_cmd(ws.path())
        .args(args)
        .env("LOOPS_ALLOW_SHELL_JOBS", "1")
        .output()
        .expect("run loops")
}

fn json_of(ws: &TempWorkspace, args: &[&str]) -> Value {
    let out = loops(ws, args);
    assert!(
        out.status.success(),
        "loops {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Submits a shell job and runs it here (no daemon), returning its id.
fn finished_job(ws: &TempWorkspace, cmd: &str, key: Option<&str>) -> u64 {
    let params = serde_json::json!({ "cmd": cmd }).to_string();
    let mut args = vec![
        "jobs", "submit", "shell", "--params", &params, "--follow", "--json",
    ];
    if let Some(k) = key {
        args.extend(["--idempotency-key", k]);
    }
    let job = json_of(ws, &args);
    assert_eq!(job["state"], "completed", "{job:#}");
    job["id"].as_u64().expect("job id")
}

fn job_ids(ws: &TempWorkspace) -> Vec<u64> {
    json_of(ws, &["jobs", "list", "--json"])
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|j| j["id"].as_u64())
        .collect()
}

#[test]
fn old_records_transcripts_jobs_and_deliveries_go_and_live_state_stays() {
    let ws = ws_with("allow_shell_jobs: true\nrecords:\n  max_age: 30d\n");
    let old = 40 * DAY;
    let young = 10 * DAY;

    // Two finished jobs, one of them with an idempotency key; the old one is dated back.
    let gone_job = finished_job(&ws, "echo old job output", Some("nightly-2026-01-01"));
    let kept_job = finished_job(&ws, "echo young job output", None);
    let jobs = ws.path().join(".loops/jobs");
    assert!(
        jobs.join(format!("{gone_job}.log")).exists(),
        "a shell job has a log"
    );
    backdate(&jobs.join(format!("done/{gone_job}.json")), old);
    // A live job (waiting: no daemon) older than max_age is live state all the same.
    let params = r#"{"cmd": "true"}"#;
    let live_job = json_of(
        &ws,
        &["jobs", "submit", "shell", "--params", params, "--json"],
    )["id"]
        .as_u64()
        .expect("id");
    backdate(&jobs.join(format!("{live_job}.json")), old);

    let old_rotated = aged(&ws, "runs/example.20250101T000000.000Z.jsonl", 500, old);
    let young_rotated = aged(&ws, "runs/example.20251101T000000.000Z.jsonl", 500, young);
    let current = aged(&ws, "runs/example.jsonl", 500, old);
    let old_transcript = aged(&ws, "runs/brief/01OLD.md", 300, old);
    let young_transcript = aged(&ws, "runs/brief/01YOUNG.md", 300, young);
    // A run still going (its marker in running/) keeps its transcript whatever its date.
    let running_transcript = aged(&ws, "runs/brief/01RUNNING.md", 300, old);
    aged(&ws, "running/01RUNNING.json", 10, old);
    let old_delivery = aged(&ws, "deliveries/aaaa.json", 100, old);
    let young_delivery = aged(&ws, "deliveries/bbbb.json", 100, young);
    let old_note = aged(&ws, "handoff-runs/01OLD", 10, old);
    let state = aged(&ws, "state/example.json", 100, old);

    // A dry run says what would go and removes nothing.
    let dry = json_of(&ws, &["prune", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["expired"]["items"], 5, "{dry:#}");
    assert!(old_transcript.exists() && old_delivery.exists());

    let r = json_of(&ws, &["prune", "--json"]);
    assert_eq!(r["expired"]["items"], 5, "{r:#}");
    assert_eq!(r["removed"]["jobs"]["items"], 1, "{r:#}");
    assert_eq!(r["errors"], serde_json::json!([]));
    for p in [&old_rotated, &old_transcript, &old_delivery, &old_note] {
        assert!(!p.exists(), "{} should be gone", p.display());
    }
    for p in [
        &young_rotated,
        &current,
        &young_transcript,
        &running_transcript,
        &young_delivery,
        &state,
    ] {
        assert!(p.exists(), "{} should be kept", p.display());
    }
    // The old job is gone whole: its file, its log, its index line and its key.
    assert!(!jobs.join(format!("done/{gone_job}.json")).exists());
    assert!(!jobs.join(format!("{gone_job}.log")).exists());
    let index = std::fs::read_to_string(jobs.join("done/index.jsonl")).expect("index");
    assert!(!index.contains(&format!("\"id\":{gone_job},")), "{index}");
    let ids = job_ids(&ws);
    assert!(!ids.contains(&gone_job), "{ids:?}");
    assert!(
        ids.contains(&kept_job) && ids.contains(&live_job),
        "{ids:?}"
    );
    assert!(jobs.join(format!("{kept_job}.log")).exists());
    let out = loops(&ws, &["jobs", "get", &gone_job.to_string()]);
    assert!(!out.status.success());
    // Its idempotency key is free again: the same key makes a new job.
    let again = json_of(
        &ws,
        &[
            "jobs",
            "submit",
            "shell",
            "--params",
            params,
            "--idempotency-key",
            "nightly-2026-01-01",
            "--json",
        ],
    );
    assert_eq!(again["existing"], false, "{again:#}");

    // A second pass has nothing left to do.
    let r = json_of(&ws, &["prune", "--json"]);
    assert_eq!(r["expired"]["items"], 0, "{r:#}");
}

#[test]
fn over_the_size_cap_the_oldest_go_first_and_live_state_is_never_removed() {
    let ws = ws_with("records:\n  max_age: forever\n  max_total_bytes: 1048576\n");
    let mib = 1024 * 1024;
    // Six transcripts of 300 KiB, a day apart, all far younger than any age limit.
    let transcripts: Vec<PathBuf> = (0..6)
        .map(|i| {
            aged(
                &ws,
                &format!("runs/brief/01T{i}.md"),
                300 * 1024,
                DAY * (10 - i),
            )
        })
        .collect();
    let r = json_of(&ws, &["prune", "--json"]);
    assert_eq!(
        r["expired"]["items"], 0,
        "max_age: forever removes nothing by age"
    );
    assert!(r["over_cap"]["items"].as_u64().unwrap_or(0) >= 3, "{r:#}");
    assert!(
        r["bytes_after"].as_u64().unwrap_or(u64::MAX) <= mib,
        "{r:#}"
    );
    // Oldest first: the newest three are still there, the oldest three are not.
    for t in &transcripts[..3] {
        assert!(!t.exists(), "{} (old) should be gone", t.display());
    }
    for t in &transcripts[3..] {
        assert!(t.exists(), "{} (newest) should be kept", t.display());
    }
    assert!(r["warning"].is_null(), "{r:#}");

    // Live state over the cap by itself: kept, with a warning that says what to do.
    let current = aged(&ws, "runs/example.jsonl", 2 * mib as usize, 400 * DAY);
    let out = loops(&ws, &["prune"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(current.exists(), "the current record file is live state");
    assert!(
        err.contains("max_total_bytes") && err.contains("loops.yaml"),
        "{err}"
    );
}

#[test]
fn logs_appended_in_place_are_rotated_and_their_old_parts_age_out() {
    let ws = ws_with("records:\n  rotate_bytes: 4096\n  max_age: 30d\n");
    let audit = aged(&ws, "jobs/audit.log", 10_000, Duration::ZERO);
    let mcp = aged(&ws, "mcp/chat.log", 5_000, Duration::ZERO);
    let small = aged(&ws, "mcp/quiet.log", 100, Duration::ZERO);
    let r = json_of(&ws, &["prune", "--json"]);
    assert_eq!(r["rotated"].as_array().map(|a| a.len()), Some(2), "{r:#}");
    for p in [&audit, &mcp] {
        assert_eq!(std::fs::metadata(p).expect("still there").len(), 0);
    }
    assert_eq!(std::fs::metadata(&small).expect("small").len(), 100);
    let rotated: Vec<PathBuf> = std::fs::read_dir(ws.path().join(".loops/mcp"))
        .expect("mcp dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("chat.log."))
        .collect();
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    assert_eq!(
        std::fs::metadata(&rotated[0]).expect("rotated").len(),
        5_000
    );
    // Once old enough, the rotated part goes like any other record.
    backdate(&rotated[0], 31 * DAY);
    let r = json_of(&ws, &["prune", "--json"]);
    assert_eq!(r["removed"]["logs"]["items"], 1, "{r:#}");
    assert!(!rotated[0].exists());
}

#[test]
fn the_daemon_prunes_at_start() {
    let ws = ws_with("records:\n  max_age: 7d\n");
    let old = aged(&ws, "runs/brief/01OLD.md", 100, 8 * DAY);
    let young = aged(&ws, "runs/brief/01YOUNG.md", 100, DAY);
    let mut d = ws.start_daemon();
    assert!(
        wait_until(Duration::from_secs(60), || !old.exists()),
        "the daemon did not prune: {}",
        d.log()
    );
    assert!(young.exists());
    d.wait_for_log("pruned .loops/", Duration::from_secs(30));
    d.kill();
}

#[test]
fn bad_retention_settings_are_errors_naming_the_line_and_the_fix() {
    let ws = ws_with("records:\n  max_age: 5m\n  max_total_bytes: 100\n");
    let out = loops(&ws, &["check"]);
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        err.contains("loops.yaml:2") && err.contains("max_age must be at least 1h"),
        "{err}"
    );
    assert!(err.contains("max_age: 90d"), "{err}");
    assert!(
        err.contains("loops.yaml:3") && err.contains("max_total_bytes"),
        "{err}"
    );
    let ws = ws_with("records:\n  max_age: soon\n");
    let out = loops(&ws, &["check"]);
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("records.max_age"), "{err}");
}
