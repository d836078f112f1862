//! Snapshots of what a person sees at the command line. Temp paths, times, run ids and
//! commit hashes are normalised by insta filters.

use crate::common::{git_commit_all, loops_cmd, TempWorkspace};
use loops_testutil::Signal;
use std::path::Path;
use std::time::Duration;

/// Escapes regex metacharacters in a literal.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Filters that hide a workspace path (both as given and canonical), times, ids and hashes.
fn filters(ws: &Path) -> Vec<(String, String)> {
    let mut f = Vec::new();
    let canon = ws.canonicalize().unwrap();
    for p in [canon.as_path(), ws] {
        f.push((escape(&p.display().to_string()), "[WS]".to_string()));
    }
    f.extend(
        [
            (r"\b[0-9A-HJKMNP-TV-Z]{26}\b", "[RUN]"),
            (r"\b[0-9a-f]{40}\b", "[COMMIT]"),
            (r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}| [A-Z]{3,5})?", "[TIME]"),
            (r"\((in|[0-9]+[smhd] ago)[^)]*\)", "([REL])"),
            (r"\b(in \d+[smhd]|\d+[smhd] ago|just now)\b", "[REL]"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string())),
    );
    f
}

/// stdout and stderr of a finished command, with its exit code, as one text.
fn show(out: &std::process::Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

macro_rules! snap {
    ($name:expr, $ws:expr, $text:expr) => {{
        let f = filters($ws);
        let refs: Vec<(&str, &str)> = f.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        insta::with_settings!({ filters => refs, prepend_module_to_snapshot => true }, {
            insta::assert_snapshot!($name, $text);
        });
    }};
}

#[test]
fn cli_init() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("mind");
    let out = loops_cmd(dir.path()).arg("init").arg(&ws).output().unwrap();
    snap!("cli_init", &ws, show(&out));
    assert!(ws.join(".git").is_dir());
    // Running it again keeps everything and writes nothing new.
    let again = loops_cmd(dir.path()).arg("init").arg(&ws).output().unwrap();
    snap!("cli_init_again", &ws, show(&again));
}

#[test]
fn cli_new_and_its_errors() {
    let ws = TempWorkspace::new();
    let p = ws.path();
    let ok = ws
        .cmd()
        .args(["new", "x", "--template", "command"])
        .output()
        .unwrap();
    snap!("cli_new_command", p, show(&ok));
    assert!(p.join("domains/x/run.sh").is_file());
    let unknown = ws
        .cmd()
        .args(["new", "y", "--template", "nope"])
        .output()
        .unwrap();
    snap!("cli_new_unknown_template", p, show(&unknown));
    let bad = ws.cmd().args(["new", "Bad_Name"]).output().unwrap();
    snap!("cli_new_bad_name", p, show(&bad));
    let exists = ws.cmd().args(["new", "x"]).output().unwrap();
    snap!("cli_new_existing_name", p, show(&exists));
    assert!(!p.join("domains/y").exists());
    assert!(!p.join("domains/Bad_Name").exists());
}

/// A workspace with one loop of each interesting kind.
fn varied_workspace() -> TempWorkspace {
    let ws = TempWorkspace::new();
    ws.add_loop(
        "nightly",
        "schedule:\n  cron: \"30 2 * * *\"\n  timezone: America/New_York\npayload: { kind: command, command: \"true\" }\n",
    );
    ws.add_loop(
        "off",
        "enabled: false\nschedule: { every: 5m }\npayload: { kind: command, command: \"true\" }\n",
    );
    ws.add_loop(
        "broken",
        "schedule: { every: 5 }\npayload: { kind: command, command: \"true\" }\n",
    );
    ws.add_loop(
        "failing",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"exit 3\" }\n",
    );
    ws.add_loop(
        "held",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"true\" }\n",
    );
    ws.cmd()
        .args(["new", "thinker", "--template", "heartbeat"])
        .assert()
        .success();
    git_commit_all(ws.path(), "loops");
    ws.cmd().args(["trigger", "failing"]).assert().code(1);
    ws.cmd()
        .args(["pause", "held", "--reason", "on holiday"])
        .assert()
        .success();
    ws
}

#[test]
fn cli_list_human_and_json_keys() {
    let ws = varied_workspace();
    let out = ws.cmd().arg("list").env("COLUMNS", "200").output().unwrap();
    // Column widths follow the (normalised) values, so collapse runs of spaces.
    let text = show(&out)
        .lines()
        .map(|l| {
            l.split("  ")
                .filter(|c| !c.is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect::<Vec<_>>()
        .join("\n");
    snap!("cli_list", ws.path(), text);

    let out = ws.cmd().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut top: Vec<&String> = v.as_object().unwrap().keys().collect();
    top.sort();
    let mut text = format!("top: {top:?}\n");
    for l in v["loops"].as_array().unwrap() {
        let mut keys: Vec<&String> = l.as_object().unwrap().keys().collect();
        keys.sort();
        text.push_str(&format!(
            "{} [{}] {}: {keys:?}\n",
            l["name"].as_str().unwrap(),
            l["kind"].as_str().unwrap(),
            l["status"].as_str().unwrap()
        ));
    }
    snap!("cli_list_json_keys", ws.path(), text);
    let nightly = v["loops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "nightly")
        .unwrap();
    assert_eq!(nightly["timezone"], "America/New_York");
    assert_eq!(nightly["timezone_source"], "loop");
    let loop_time = nightly["next_run_loop_time"].as_str().unwrap();
    assert!(
        loop_time.contains("T02:30:00") || loop_time.contains("T03:00:00"),
        "the next run in the loop's own zone: {loop_time}"
    );
}

#[test]
fn cli_next_cron_across_dst_in_new_york() {
    let ws = varied_workspace();
    let out = ws
        .cmd()
        .args([
            "next",
            "nightly",
            "--count",
            "3",
            "--from",
            "2026-03-07T12:00:00Z",
        ])
        .output()
        .unwrap();
    // No filters on times here: the times are the point.
    insta::with_settings!({ prepend_module_to_snapshot => true }, {
        insta::assert_snapshot!("cli_next_dst", show(&out));
    });
    let json = ws
        .cmd()
        .args([
            "next",
            "nightly",
            "--count",
            "3",
            "--from",
            "2026-03-07T12:00:00Z",
            "--json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let utc: Vec<&str> = v["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["utc"].as_str().unwrap())
        .collect();
    assert_eq!(
        utc,
        [
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z",
            "2026-03-10T06:30:00Z"
        ]
    );

    let bad = ws
        .cmd()
        .args(["next", "nightly", "--from", "tomorrow"])
        .output()
        .unwrap();
    snap!("cli_next_bad_from", ws.path(), show(&bad));
}

/// A daily 01:30 New York cron fires once on the day clocks spring forward (01:30 EST
/// comes before the change), not a second time at 03:00 EDT.
#[test]
fn cli_next_cron_before_the_gap_fires_once_on_dst_day() {
    let ws = TempWorkspace::new();
    ws.add_loop(
        "early",
        "schedule:\n  cron: \"30 1 * * *\"\n  timezone: America/New_York\npayload: { kind: command, command: \"true\" }\n",
    );
    let json = ws
        .cmd()
        .args([
            "next",
            "early",
            "--count",
            "3",
            "--from",
            "2026-03-07T12:00:00Z",
            "--json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let utc: Vec<&str> = v["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["utc"].as_str().unwrap())
        .collect();
    assert_eq!(
        utc,
        [
            "2026-03-08T06:30:00Z",
            "2026-03-09T05:30:00Z",
            "2026-03-10T05:30:00Z"
        ]
    );
}

#[test]
fn cli_trigger_unknown_loop_suggests_the_close_name() {
    let ws = TempWorkspace::new();
    let out = ws.cmd().args(["trigger", "exampel"]).output().unwrap();
    snap!("cli_trigger_unknown_close", ws.path(), show(&out));
    let out = ws.cmd().args(["trigger", "zzzzzz"]).output().unwrap();
    snap!("cli_trigger_unknown_far", ws.path(), show(&out));
}

#[test]
fn cli_help_top_level_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let top = loops_cmd(dir.path())
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    snap!("cli_help", dir.path(), show(&top));
    let run = loops_cmd(dir.path())
        .args(["run", "--help"])
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    snap!("cli_help_run", dir.path(), show(&run));
}

/// Cron fire times are whole seconds, whatever the sub-second part of "now".
#[test]
fn cli_next_cron_times_are_whole_seconds() {
    let ws = varied_workspace();
    let json = ws
        .cmd()
        .args(["next", "nightly", "--count", "2", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    for n in v["next"].as_array().unwrap() {
        let utc = n["utc"].as_str().unwrap();
        assert!(
            utc.ends_with(":30:00Z") || utc.ends_with(":00:00Z"),
            "{utc}"
        );
    }
}

/// A command run where there is no workspace (no loops.yaml, no domains/ in the folder or
/// above) says so and what to do, and leaves the folder as it was: it must not quietly
/// become a workspace with `.loops/` and `domains/`.
#[test]
fn cli_outside_a_workspace_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path().join("notes");
    std::fs::create_dir(&here).unwrap();
    for args in [
        &["run", "--once"][..],
        &["run"],
        &["status"],
        &["list"],
        &["trigger", "x"],
        &["new", "x"],
        &["jobs", "list"],
        &["inbox"],
    ] {
        let out = loops_cmd(&here).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "no workspace found in {} or above",
                here.canonicalize().unwrap().display()
            )) && err.contains("run `loops init`")
                && err.contains("--workspace"),
            "{args:?}: {err}"
        );
        let left: Vec<_> = std::fs::read_dir(&here).unwrap().collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
    }
    // A workspace named with --workspace is used as it is, as the message says.
    loops_cmd(&here)
        .arg("--workspace")
        .arg(&here)
        .arg("list")
        .assert()
        .success();
    // And `loops init` still makes one here.
    loops_cmd(&here).arg("init").assert().success();
    assert!(here.join("loops.yaml").is_file());
    loops_cmd(&here).arg("list").assert().success();
}

/// Output into a closed pipe (`loops next x -n 2000 | head -1`) ends the command as it
/// ends a Unix tool: by SIGPIPE, with nothing on stderr (no panic, no backtrace).
#[test]
fn cli_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let ws = TempWorkspace::new();
    // The reader takes one line and goes, while loops still has most of its output to write.
    let mut child = crate::common::loops_std_cmd(ws.path())
        .args(["next", "example", "-n", "5000"])
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("example:"), "{first}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(Signal::PIPE.as_raw()),
        "{:?}",
        out.status
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    // Every command, text or JSON: the reader is gone before the first byte.
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["status"],
        &["log"],
        &["runs", "example"],
        &["inbox"],
        &["jobs", "list"],
        &["check"],
        &["next", "example", "--json"],
    ] {
        let mut child = crate::common::loops_std_cmd(ws.path())
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.signal(),
            Some(Signal::PIPE.as_raw()),
            "{args:?}: {:?}",
            out.status
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }
}

/// With `--json`, an error is a JSON object on stdout (and nothing on stderr), so a
/// script that asked for JSON can read the failure; the exit code stays non-zero.
#[test]
fn cli_json_errors_are_json_on_stdout() {
    let ws = TempWorkspace::new();
    let parse = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    // An unknown loop: the message and the hint, as the text form gives them.
    let out = ws
        .cmd()
        .args(["next", "exampel", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let v = parse(&out);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exampel"), "{v}");
    assert!(v["error"]["hint"].as_str().is_some(), "{v}");
    assert_eq!(v["error"]["exit_code"], 1);
    let text = ws.cmd().args(["next", "exampel"]).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stderr).contains(msg));
    assert!(text.stdout.is_empty());

    // No workspace at all.
    let dir = tempfile::tempdir().unwrap();
    let out = loops_cmd(dir.path())
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = parse(&out);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("no workspace found in"),
        "{v}"
    );

    // A subcommand's own --json, and a job that does not exist.
    let out = ws
        .cmd()
        .args(["jobs", "get", "999", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(parse(&out)["error"]["message"], "there is no job #999");

    // A refused shell job: one document (the dead job, with why), not the job and an error.
    let out = ws
        .cmd()
        .args([
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "true"}"#,
            "--json",
        ])
        .env_remove("LOOPS_ALLOW_SHELL_JOBS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = parse(&out);
    assert_eq!(v["state"], "dead", "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("turned off")),
        "{v}"
    );

    // A usage error clap finds keeps clap's exit code 2.
    let out = ws
        .cmd()
        .args(["list", "--json", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v = parse(&out);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("--bogus"),
        "{v}"
    );
}

/// Every `--json` flag says what it does in `--help`.
#[test]
fn cli_every_json_flag_has_help() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if a.get_id() == "json" && a.get_help().is_none_or(|h| h.to_string().is_empty()) {
                missing.push(path.to_string());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&loops::cli::Cli::command(), "loops", &mut missing);
    assert!(missing.is_empty(), "--json without help: {missing:?}");
    let help = loops_cmd(Path::new("/"))
        .args(["status", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    let line = text.lines().find(|l| l.contains("--json")).unwrap();
    assert!(line.contains("Print JSON"), "{line}");
}

/// `loops list` fits 100 columns when it is not on a terminal (and no COLUMNS says
/// otherwise): one next-run column in the host's zone, the loop's own time beside it
/// where its zone differs, the status shortened to what is left.
#[test]
fn cli_list_fits_100_columns() {
    let ws = varied_workspace();
    let out = ws.cmd().arg("list").env_remove("COLUMNS").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for l in text.lines() {
        assert!(
            l.chars().count() <= 100,
            "{} columns: {l}\n{text}",
            l.chars().count()
        );
    }
    let header = text.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["LOOP", "KIND", "SCHEDULE", "NEXT", "RUN", "(UTC)", "LAST", "STATUS"]
    );
    let nightly = text.lines().find(|l| l.starts_with("nightly")).unwrap();
    assert!(
        nightly.contains(" · 02:30 E") || nightly.contains(" · 03:00 E"),
        "the loop's own time where its zone differs: {nightly}"
    );
    let example = text.lines().find(|l| l.starts_with("example")).unwrap();
    assert!(
        !example.contains('·'),
        "same zone, no second time: {example}"
    );
    // A wide terminal gets every column.
    let out = ws.cmd().arg("list").env("COLUMNS", "200").output().unwrap();
    let wide = String::from_utf8_lossy(&out.stdout);
    assert!(
        wide.lines()
            .next()
            .unwrap()
            .contains("NEXT RUN (LOOP TIME)"),
        "{wide}"
    );
    assert!(
        wide.contains("broken: `schedule.every: 5` has no unit"),
        "{wide}"
    );
}

/// `log` and `runs` show times with their zone's offset and a short run's duration in
/// milliseconds; `runs` orders by start time, whatever order the runs finished in.
#[test]
fn cli_log_and_runs_show_the_zone_short_durations_and_start_order() {
    let ws = TempWorkspace::new();
    for _ in 0..2 {
        ws.cmd().args(["trigger", "example"]).assert().success();
    }
    for (tz, offset) in [("UTC", "+00:00"), ("Asia/Kolkata", "+05:30")] {
        let out = ws.cmd().arg("log").env("TZ", tz).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let row = text.lines().nth(1).unwrap_or_default();
        let cells: Vec<&str> = row.split("  ").filter(|c| !c.is_empty()).collect();
        assert!(cells[0].trim().ends_with(offset), "{tz}: {text}");
        let duration = cells[cells.len() - 2].trim();
        assert!(
            duration.ends_with("ms") && duration.trim_end_matches("ms").parse::<u64>().is_ok()
                || duration.ends_with('s') && !duration.starts_with("0.0"),
            "{tz}: a run of a few ms: {duration:?} in {text}"
        );
        assert!(!text.contains("0.0s"), "{text}");
        let out = ws
            .cmd()
            .args(["runs", "example"])
            .env("TZ", tz)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().nth(1).unwrap().contains(offset),
            "{tz}: {text}"
        );
    }

    // The run that started first finished last: its record is the file's last line.
    let file = ws.path().join(".loops/runs/example.jsonl");
    let mut recs: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2);
    let (first, second) = (recs[0]["run_id"].clone(), recs[1]["run_id"].clone());
    recs[0]["finished"] = serde_json::json!("2099-01-01T00:00:00Z");
    recs.reverse();
    let lines: Vec<String> = recs.iter().map(|r| r.to_string() + "\n").collect();
    std::fs::write(&file, lines.concat()).unwrap();
    let out = ws
        .cmd()
        .args(["runs", "example", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let order: Vec<&serde_json::Value> =
        v.as_array().unwrap().iter().map(|r| &r["run_id"]).collect();
    assert_eq!(order, [&first, &second], "by start time, the latest last");
    let out = ws
        .cmd()
        .args(["runs", "example", "-n", "1", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["run_id"], second, "-n 1 is the latest start");
    let help = ws.cmd().args(["runs", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("ordered by start time"));
}

/// `next -n` is a count there is a point in listing: a huge one made it compute (and
/// reserve memory for) every fire time before printing the first, and `usize::MAX` panicked.
/// `runs -n 0` and `log -n 0` are every record, as `jobs list -n 0` is every job.
#[test]
fn cli_next_refuses_a_count_it_cannot_list_and_n_0_lists_every_run() {
    let ws = TempWorkspace::new();
    for bad in ["0", "10001", "18446744073709551615", "many"] {
        let out = ws
            .cmd()
            .args(["next", "example", "-n", bad])
            .timeout(Duration::from_secs(20))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "-n {bad}: {err}");
        assert!(err.contains("1 to 10000"), "-n {bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let v = ws.json(&["next", "example", "-n", "10000"]);
    let times = v
        .as_object()
        .unwrap()
        .values()
        .find_map(|x| x.as_array().filter(|a| a.len() > 100));
    assert_eq!(times.map(Vec::len), Some(10000), "{:.400}", v.to_string());

    for _ in 0..3 {
        ws.cmd().args(["trigger", "example"]).assert().success();
    }
    let count = |args: &[&str]| {
        let out = ws.cmd().args(args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().map(Vec::len).unwrap_or_default()
    };
    assert_eq!(count(&["runs", "example", "-n", "0", "--json"]), 3);
    assert_eq!(count(&["runs", "-n", "0", "--json"]), 3);
    assert_eq!(count(&["runs", "example", "-n", "2", "--json"]), 2);
    // The example loop commits only when it changes something: git holds fewer runs.
    let logged = count(&["log", "-n", "1000", "--json"]);
    assert!(logged >= 1);
    assert_eq!(count(&["log", "-n", "0", "--json"]), logged);
}

/// `pause --reason ""` is a pause without a reason: the default one, not a bare "paused:".
#[test]
fn cli_pause_with_an_empty_reason_gives_the_default_one() {
    let ws = TempWorkspace::new();
    for reason in ["", "  ", "disk is full"] {
        ws.cmd()
            .args(["pause", "example", "--reason", reason])
            .assert()
            .success();
        let v = ws.json(&["list"]);
        let row = &v["loops"][0];
        let want = if reason.trim().is_empty() {
            "paused by hand"
        } else {
            reason
        };
        assert_eq!(row["paused"]["reason"], want, "{row}");
        assert_eq!(row["status"], format!("paused: {want}"), "{row}");
        ws.cmd().args(["resume", "example"]).assert().success();
    }
}

/// `runs` without a name: every loop's records (and those of a loop whose folder is gone),
/// merged by start time with a LOOP column; rotated files are not taken for loops.
#[test]
fn cli_runs_without_a_name_merges_every_loop_by_start_time() {
    let ws = TempWorkspace::new();
    ws.add_loop(
        "second",
        "schedule: { every: 1h }\npayload: { command: [\"true\"] }\n",
    );
    git_commit_all(ws.path(), "second");
    let empty = ws.cmd().arg("runs").output().unwrap();
    assert!(empty.status.success());
    assert!(
        String::from_utf8_lossy(&empty.stdout).contains("No run records yet"),
        "{}",
        String::from_utf8_lossy(&empty.stdout)
    );
    for name in ["example", "second", "example"] {
        ws.cmd().args(["trigger", name]).assert().success();
    }
    // What rotation leaves beside the current file, and a loop since removed.
    let runs_dir = ws.path().join(".loops/runs");
    let example = std::fs::read_to_string(runs_dir.join("example.jsonl")).unwrap();
    std::fs::write(runs_dir.join("example.20261101T000000Z.jsonl"), &example).unwrap();
    let gone = example
        .lines()
        .next()
        .unwrap()
        .replace("\"loop\":\"example\"", "\"loop\":\"gone\"");
    let mut gone_rec: serde_json::Value = serde_json::from_str(&gone).unwrap();
    gone_rec["run_id"] = "01GONE".into();
    gone_rec["started"] = "2020-01-01T00:00:00Z".into();
    std::fs::write(runs_dir.join("gone.jsonl"), format!("{gone_rec}\n")).unwrap();

    let out = ws.cmd().args(["runs", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let loops: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["loop"].as_str().unwrap())
        .collect();
    assert_eq!(loops, ["gone", "example", "second", "example"], "{v:#}");
    let started: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["started"].as_str().unwrap())
        .collect();
    let mut sorted = started.clone();
    sorted.sort_unstable();
    assert_eq!(started, sorted, "by start time, the latest last");

    let out = ws.cmd().args(["runs", "-n", "2"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "a header and the latest two: {text}");
    assert!(
        lines[0].starts_with("STARTED") && lines[0].contains(" LOOP "),
        "{text}"
    );
    assert!(lines[1].contains(" second "), "{text}");
    assert!(lines[2].contains(" example "), "{text}");
    // With a name, one loop's records and no LOOP column, as before.
    let out = ws.cmd().args(["runs", "second"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("LOOP"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
}

/// `trigger` in a workspace that is not a git repository says the run's changes were not
/// committed, and why, instead of a bare "acted".
#[test]
fn cli_trigger_outside_git_says_nothing_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("plain");
    std::fs::create_dir_all(ws.join("domains/w")).unwrap();
    std::fs::write(
        ws.join("domains/w/config.yaml"),
        "schedule: { every: 1h }\npayload: { kind: command, command: \"date +%N > out.txt\" }\n",
    )
    .unwrap();
    // `git` must not find a repository above the temp folder either.
    let cmd = || {
        let mut c = loops_cmd(&ws);
        c.env("GIT_CEILING_DIRECTORIES", dir.path());
        c
    };
    let out = cmd().args(["trigger", "w"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("w: acted"), "{err}");
    assert!(
        err.contains("nothing was committed:")
            && err.contains("is not inside a git repository")
            && err.contains("git init"),
        "{err}"
    );
    assert!(
        ws.join("domains/w/out.txt").is_file(),
        "the run wrote its file"
    );
    let out = cmd().args(["trigger", "w", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "acted");
    assert!(v["commit"].is_null());
    assert!(
        v["not_committed"]
            .as_str()
            .is_some_and(|w| w.contains("not inside a git repository")),
        "{v}"
    );
    // In a repository, a committed run says nothing of the kind.
    let ws = TempWorkspace::new();
    let out = ws.cmd().args(["trigger", "example"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(", commit ") && !err.contains("nothing was committed"),
        "{err}"
    );
}

/// The names listed after `prefix` on one line of `text`, split at commas (`(and …)` and a
/// final full stop left out).
fn listed_after(text: &str, prefix: &str) -> Vec<String> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"));
    let line = line.split(" (and").next().unwrap_or(line);
    let mut v: Vec<String> = line
        .split(',')
        .map(|s| s.trim().trim_end_matches('.').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    v.sort();
    v
}

/// Every bundled template, as `loops new` makes it, says only what the runner does: in a
/// workspace with what the templates name (a provider `anthropic`, a channel `general`),
/// `loops check` finds nothing to report, error or warning. The list of templates comes
/// from the binary itself, so a new template is checked too; `loops new --help` names the
/// same ones.
#[test]
fn cli_every_bundled_template_checks_clean() {
    let probe = TempWorkspace::new();
    let unknown = probe
        .cmd()
        .args(["new", "y", "--template", "no-such-template"])
        .output()
        .unwrap();
    let templates = listed_after(
        &String::from_utf8_lossy(&unknown.stderr),
        "help: the templates are:",
    );
    assert!(templates.len() >= 5, "{templates:?}");
    let help = probe.cmd().args(["new", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).replace('\n', " ");
    assert_eq!(
        listed_after(&help.replace("Templates:", "\nTemplates:"), "Templates:"),
        templates,
        "`loops new --help` lists other templates than there are"
    );
    for t in &templates {
        let ws = TempWorkspace::new();
        let yaml = std::fs::read_to_string(ws.path().join("loops.yaml")).unwrap();
        ws.write(
            "loops.yaml",
            &format!(
                "{yaml}\nproviders:\n  anthropic: {{ kind: anthropic, api_key_env: ANTHROPIC_API_KEY, model: claude-sonnet-4-5 }}\nchannels:\n  general: {{ kind: file, path: \"outbox/{{date}}.md\" }}\n"
            ),
        );
        let name = format!("from-{t}");
        ws.cmd()
            .args(["new", &name, "--template", t])
            .assert()
            .success();
        // The key is set: an unset one is a warning of its own (issue #19).
        let out = ws
            .cmd()
            .arg("check")
            .env("ANTHROPIC_API_KEY", "test-key-never-sent")
            .output()
            .unwrap();
        let text = show(&out);
        assert_eq!(out.status.code(), Some(0), "template {t}:\n{text}");
        assert!(
            text.contains("0 error(s), 0 warning(s)") && !text.contains("warning:"),
            "template {t}: `loops check` is not clean:\n{text}"
        );
    }
}

#[test]
fn every_template_checks_clean_with_only_a_local_provider_as_default() {
    // The templates name no provider and no model: a workspace whose one provider is a
    // local OpenAI-compatible server (no Anthropic anywhere) takes each as it comes.
    let probe = TempWorkspace::new();
    let unknown = probe
        .cmd()
        .args(["new", "y", "--template", "no-such-template"])
        .output()
        .unwrap();
    let templates = listed_after(
        &String::from_utf8_lossy(&unknown.stderr),
        "help: the templates are:",
    );
    assert!(templates.len() >= 5, "{templates:?}");
    for t in &templates {
        let ws = TempWorkspace::new();
        let yaml = std::fs::read_to_string(ws.path().join("loops.yaml")).unwrap();
        ws.write(
            "loops.yaml",
            &format!(
                "{yaml}\nproviders:\n  local: {{ kind: openai, base_url: \"http://127.0.0.1:8080/v1\", model: gemma-3-270m }}\ndefaults: {{ provider: local, model: gemma-3-270m }}\nchannels:\n  general: {{ kind: file, path: \"outbox/{{date}}.md\" }}\n"
            ),
        );
        let name = format!("from-{t}");
        ws.cmd()
            .args(["new", &name, "--template", t])
            .assert()
            .success();
        let config =
            std::fs::read_to_string(ws.path().join(format!("domains/{name}/config.yaml"))).unwrap();
        let written: Vec<&str> = config
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert!(
            !written
                .iter()
                .any(|l| l.contains("provider:") || l.contains("model:")),
            "template {t} names a provider or a model:\n{config}"
        );
        let out = ws.cmd().arg("check").output().unwrap();
        let text = show(&out);
        assert_eq!(out.status.code(), Some(0), "template {t}:\n{text}");
        assert!(
            text.contains("0 error(s), 0 warning(s)"),
            "template {t}: `loops check` is not clean:\n{text}"
        );
    }
}
