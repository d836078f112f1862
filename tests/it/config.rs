//! Loop discovery and `loops check`: good, broken and Genesis-style configs, and one
//! snapshot per error class with its file, line and column.

use crate::common::TempWorkspace;
use loops_core::diag::Severity;
use loops_core::domain::{discover, Payload};
use loops_core::schedule::{CatchUp, When};
use loops_core::workspace::Workspace;
use std::path::Path;
use std::time::Duration;

/// A workspace made by `loops init` with the example loop removed, so every test sees
/// only the loops it writes.
fn bare_workspace() -> TempWorkspace {
    let ws = TempWorkspace::new();
    std::fs::remove_dir_all(ws.path().join("domains/example")).expect("remove example loop");
    ws
}

fn write_loop(ws: &TempWorkspace, name: &str, config: &str) {
    ws.write(&format!("domains/{name}/config.yaml"), config);
}

/// `loops check` (or `loops check --json`): stdout with the workspace path replaced, and
/// the exit code.
fn check(ws: &TempWorkspace, json: bool) -> (String, i32) {
    let mut cmd = ws.cmd();
    cmd.arg("check");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run loops check");
    let mut stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    for root in [
        ws.path().canonicalize().expect("canonical root"),
        ws.path().to_path_buf(),
    ] {
        stdout = stdout.replace(&root.display().to_string(), "[WS]");
    }
    (stdout, out.status.code().expect("exit code"))
}

/// The 1-based line and column where `needle` starts in `text` (the n-th occurrence).
fn pos_of(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let idx = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("`{needle}` not in the config"))
        .0;
    let before = &text[..idx];
    let line = before.matches('\n').count() + 1;
    let col = idx - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// One loop, `loops check`: asserts exit code 1, that the first error points at
/// `needle` in config.yaml, and returns the output for the snapshot.
fn check_one_error(name: &str, config: &str, needle: &str) -> String {
    let ws = bare_workspace();
    write_loop(&ws, name, config);
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "an error must exit 1:\n{out}");
    let (line, col) = pos_of(config, needle, 0);
    let want = format!("error: domains/{name}/config.yaml:{line}:{col}: ");
    assert!(
        out.lines().next().is_some_and(|l| l.starts_with(&want)),
        "expected the first line to start with `{want}`:\n{out}"
    );
    assert!(
        out.contains("1 loop(s) checked: 0 valid, 1 with errors"),
        "{out}"
    );
    out
}

const GOOD: &str = "\
description: a good loop
schedule:
  every: 10m
  timezone: UTC
payload:
  command: [\"echo\", \"hello\"]
";

const GENESIS: &str = "\
description: Watch the agent-commons channel and take part
timing:
  interval_minutes: 10
  overlap_window_minutes: 11
channel:
  name: agent-commons
  platform: discord
classification:
  labels: [question, answer, chatter]
  threshold: 0.7
payload:
  command: [\"echo\", \"collect\"]
";

const BROKEN: &str = "\
schedule:
  cron: \"61 * * * *\"
payload:
  command: [\"echo\", \"hi\"]
";

#[test]
fn discovery_keeps_good_and_genesis_loops_beside_a_broken_one() {
    let ws = bare_workspace();
    ws.write("loops.yaml", "timezone: Europe/London\n");
    write_loop(&ws, "good", GOOD);
    write_loop(&ws, "genesis", GENESIS);
    write_loop(&ws, "broken", BROKEN);
    // Ignored: folders starting with `.` or `_`, and a folder without config.yaml.
    write_loop(&ws, "_draft", GOOD);
    write_loop(&ws, ".hidden", GOOD);
    ws.write("domains/notes/readme.md", "not a loop\n");

    let w = Workspace::open(ws.path()).expect("open workspace");
    assert!(w.diagnostics.is_empty(), "{:?}", w.diagnostics);
    let entries = discover(&w);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["broken", "genesis", "good"]);

    let broken = &entries[0];
    assert!(broken.def.is_none(), "a broken loop has no definition");
    let errs: Vec<_> = broken.errors().collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].file, Path::new("domains/broken/config.yaml"));
    assert_eq!((errs[0].line, errs[0].column), (Some(2), Some(9)));
    assert!(errs[0].message.contains("minute field `61`"), "{}", errs[0]);

    let good = entries[2].def.as_ref().expect("good loop parses");
    assert!(entries[2].diagnostics.is_empty());
    assert!(matches!(good.schedule.when, When::Every(d) if d == Duration::from_secs(600)));
    assert_eq!(good.schedule.tz, chrono_tz::UTC);
    assert_eq!(good.description.as_deref(), Some("a good loop"));
    assert_eq!(
        good.payload,
        Payload::Command {
            argv: vec!["echo".into(), "hello".into()]
        }
    );

    let g = &entries[1];
    assert!(g.diagnostics.is_empty(), "{:?}", g.diagnostics);
    let def = g.def.as_ref().expect("Genesis-style config is valid");
    assert!(
        matches!(def.schedule.when, When::Every(d) if d == Duration::from_secs(600)),
        "interval_minutes: 10 is every 10m, got {}",
        def.schedule.describe()
    );
    assert_eq!(def.schedule.describe(), "every 10m");
    assert_eq!(def.schedule.catch_up, CatchUp::Once);
    assert_eq!(def.schedule.tz, chrono_tz::Europe::London, "workspace zone");
    assert_eq!(def.overlap, Some(Duration::from_secs(660)));
    // Unknown blocks are kept, unchanged, for the prompt.
    let class = def
        .settings
        .get("classification")
        .and_then(|v| v.as_mapping())
        .expect("classification kept in settings");
    assert_eq!(
        class.get("threshold").and_then(|v| v.as_f64()),
        Some(0.7),
        "{class:?}"
    );
    assert_eq!(
        class
            .get("labels")
            .and_then(|v| v.as_sequence())
            .map(|s| s.len()),
        Some(3)
    );
    assert_eq!(
        def.settings
            .get("channel")
            .and_then(|c| c.get("name"))
            .and_then(|v| v.as_str()),
        Some("agent-commons")
    );
    assert!(def.settings.contains_key("timing"));
}

#[test]
fn a_broken_loop_is_picked_up_again_once_fixed() {
    let ws = bare_workspace();
    write_loop(&ws, "good", GOOD);
    write_loop(&ws, "later", BROKEN);
    let w = Workspace::open(ws.path()).expect("open");
    let entries = discover(&w);
    assert!(entries[0].def.is_some() && entries[1].def.is_none());

    let (out, code) = check(&ws, false);
    assert_eq!(code, 1);
    assert!(
        out.contains("2 loop(s) checked: 1 valid, 1 with errors"),
        "{out}"
    );

    write_loop(&ws, "later", &BROKEN.replace("61 * * * *", "1 * * * *"));
    let entries = discover(&w);
    assert!(entries.iter().all(|e| e.def.is_some()), "{entries:?}");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 loop(s) checked: 2 valid, 0 with errors"),
        "{out}"
    );
}

#[test]
fn several_broken_loops_are_each_reported() {
    let ws = bare_workspace();
    write_loop(&ws, "a", BROKEN);
    write_loop(
        &ws,
        "b",
        "schedule:\n  every: 10 minutes\npayload:\n  command: [\"true\"]\n",
    );
    write_loop(&ws, "c", GOOD);
    write_loop(&ws, "d", "schedule: [unclosed\n");
    let w = Workspace::open(ws.path()).expect("open");
    let entries = discover(&w);
    let valid: Vec<&str> = entries
        .iter()
        .filter(|e| e.def.is_some())
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(valid, ["c"]);
    for e in entries.iter().filter(|e| e.def.is_none()) {
        let first = e.errors().next().expect("an error");
        assert_eq!(
            first.file,
            Path::new("domains").join(&e.name).join("config.yaml")
        );
        assert!(first.line.is_some(), "{first}");
    }
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1);
    assert!(
        out.contains("4 loop(s) checked: 1 valid, 3 with errors"),
        "{out}"
    );
}

// ---- one snapshot per error class ----------------------------------------------------

#[test]
fn check_yaml_syntax_error() {
    let cfg = "description: watch\nschedule:\n  every: 10m\n  jitter: a: b\npayload:\n  command: [\"true\"]\n";
    // The parser points at the second colon on line 4.
    let out = check_one_error("syntax", cfg, ": b");
    assert!(out.contains("config.yaml:4:12: not valid YAML"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_bad_duration() {
    let cfg = "schedule:\n  every: 10 minutes\npayload:\n  command: [\"true\"]\n";
    let out = check_one_error("duration", cfg, "10 minutes");
    assert!(out.contains("`10 minutes` is not a duration"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_number_without_unit() {
    let cfg = "schedule:\n  every: 10\npayload:\n  command: [\"true\"]\n";
    let out = check_one_error("nounit", cfg, "10");
    assert!(out.contains("has no unit"), "{out}");
    assert!(out.contains("10s or 10m"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_unknown_timezone_with_suggestion() {
    let cfg = "schedule:\n  cron: \"0 9 * * *\"\n  timezone: America/NewYork\npayload:\n  command: [\"true\"]\n";
    let out = check_one_error("tz", cfg, "America/NewYork");
    assert!(out.contains("did you mean `America/New_York`?"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_bad_cron_names_the_field() {
    let cfg = "schedule:\n  cron: \"61 * * * *\"\npayload:\n  command: [\"true\"]\n";
    let out = check_one_error("cron", cfg, "\"61");
    assert!(out.contains("the minute field `61`"), "{out}");
    assert!(out.contains("0-59"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_bad_cron_hour_and_weekday_fields() {
    let ws = bare_workspace();
    write_loop(
        &ws,
        "hour",
        "schedule:\n  cron: \"0 25 * * *\"\npayload:\n  command: [\"true\"]\n",
    );
    write_loop(
        &ws,
        "weekday",
        "schedule:\n  cron: \"0 9 * * MON-FRX\"\npayload:\n  command: [\"true\"]\n",
    );
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1);
    assert!(out.contains("the hour field `25`"), "{out}");
    assert!(out.contains("the day of week field `MON-FRX`"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_cron_wrong_field_count() {
    let cfg = "schedule:\n  cron: \"0 9 * *\"\npayload:\n  command: [\"true\"]\n";
    let out = check_one_error("fields", cfg, "\"0 9");
    assert!(out.contains("has 4 fields"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_cron_that_never_fires() {
    let cfg = "schedule:\n  cron: \"0 0 30 2 *\"\npayload:\n  command: [\"true\"]\n";
    let out = check_one_error("never", cfg, "\"0 0 30 2");
    assert!(out.contains("never fires"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_near_miss_schedule_key() {
    let cfg = "schedul:\n  every: 10m\npayload:\n  command: [\"true\"]\n";
    let out = check_one_error("typo", cfg, "schedul:");
    assert!(out.contains("unknown key `schedul`"), "{out}");
    assert!(out.contains("did you mean `schedule`?"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_near_miss_retry_key() {
    let cfg =
        "schedule:\n  every: 10m\npayload:\n  command: [\"true\"]\nretyr: { max_attempts: 3 }\n";
    let out = check_one_error("typo", cfg, "retyr");
    assert!(out.contains("did you mean `retry`?"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn a_payload_key_at_the_top_level_is_an_error_saying_where_it_goes() {
    // Written beside `schedule:`, `command` would be a setting for a prompt loop's
    // prompt: the loop the person meant to run a script would wait for a model instead.
    let cfg = "schedule:\n  every: 1h\ncommand: sleep 30\n";
    let out = check_one_error("misplaced", cfg, "command:");
    assert!(
        out.contains("`command` belongs under `payload:`, not at the top level"),
        "{out}"
    );
    assert!(
        out.contains("payload: { kind: command, command: [\"./run.sh\"] }"),
        "{out}"
    );
    for (key, line) in [
        ("model", "model: claude-sonnet-4-5\n"),
        ("provider", "provider: anthropic\n"),
        ("kind", "kind: command\n"),
    ] {
        let cfg = format!("schedule:\n  every: 1h\npayload:\n  command: [\"true\"]\n{line}");
        let out = check_one_error("misplaced", &cfg, line.trim_end());
        assert!(
            out.contains(&format!("`{key}` belongs under `payload:`")),
            "{out}"
        );
    }
}

#[test]
fn a_prompt_md_or_config_yaml_that_is_no_readable_text_is_an_error_naming_it() {
    let ws = bare_workspace();
    let bytes = |rel: &str, b: &[u8]| std::fs::write(ws.path().join(rel), b).expect("write");
    let prompt_loop = "schedule:\n  every: 1h\npayload:\n  kind: prompt\n";
    write_loop(&ws, "latin1", prompt_loop);
    bytes("domains/latin1/prompt.md", b"R\xe9sum\xe9 the news\n");
    write_loop(&ws, "folder", prompt_loop);
    std::fs::create_dir_all(ws.path().join("domains/folder/prompt.md")).expect("mkdir");
    std::fs::create_dir_all(ws.path().join("domains/noconfig/config.yaml")).expect("mkdir");
    // A command loop does not read prompt.md: whatever is there is not its business.
    write_loop(
        &ws,
        "script",
        "schedule:\n  every: 1h\npayload:\n  command: [\"true\"]\n",
    );
    bytes("domains/script/prompt.md", b"\xff");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    for want in [
        "error: domains/latin1/prompt.md: prompt.md is not UTF-8 text (the first bad byte is at offset 1)",
        "error: domains/folder/prompt.md: cannot read prompt.md: Is a directory",
        "error: domains/noconfig/config.yaml: cannot read config.yaml: Is a directory",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    assert!(
        !out.contains("needs prompt.md"),
        "a folder is not a missing file: {out}"
    );
    assert!(!out.contains("domains/script/"), "{out}");
    assert!(
        out.contains("4 loop(s) checked: 1 valid, 3 with errors"),
        "{out}"
    );
}

#[test]
fn a_state_md_that_is_no_text_is_an_error_in_check_and_the_file_is_kept() {
    let ws = bare_workspace();
    let prompt_loop = "schedule:\n  every: 1h\npayload:\n  kind: prompt\n";
    write_loop(&ws, "notes", prompt_loop);
    ws.write("domains/notes/prompt.md", "Keep notes.\n");
    let state = b"seen: caf\xe9\n";
    std::fs::write(ws.path().join("domains/notes/state.md"), state).expect("write");
    // A command loop's state.md is its own business: the runner never reads it.
    write_loop(
        &ws,
        "script",
        "schedule:\n  every: 1h\npayload:\n  command: [\"true\"]\n",
    );
    std::fs::write(ws.path().join("domains/script/state.md"), b"\xff").expect("write");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "error: domains/notes/state.md: state.md is not UTF-8 text (the first bad byte is at offset 9)"
        ),
        "{out}"
    );
    assert!(
        out.contains("remove it to start the loop's state afresh"),
        "{out}"
    );
    assert!(!out.contains("domains/script/"), "{out}");
    assert!(out.contains("1 valid, 1 with errors"), "{out}");
    let list = ws.json(&["list"]);
    let notes = list["loops"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["name"] == "notes"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        notes["status"], "broken: state.md is not UTF-8 text (the first bad byte is at offset 9)",
        "{notes}"
    );
    assert_eq!(
        std::fs::read(ws.path().join("domains/notes/state.md")).expect("read"),
        state,
        "check changes nothing"
    );
}

#[test]
fn a_loops_yaml_that_cannot_be_read_says_why_and_what_to_do() {
    let ws = bare_workspace();
    std::fs::write(ws.path().join("loops.yaml"), b"budget: \xff\n").expect("write");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: loops.yaml: cannot read: stream did not contain valid UTF-8"),
        "{out}"
    );
    assert!(out.contains("help: save loops.yaml as UTF-8 text"), "{out}");
    std::fs::remove_file(ws.path().join("loops.yaml")).expect("rm");
    std::fs::create_dir(ws.path().join("loops.yaml")).expect("mkdir");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: loops.yaml: cannot read: Is a directory"),
        "{out}"
    );
    assert!(
        out.contains("help: make loops.yaml a file this user can read"),
        "{out}"
    );
}

#[test]
fn check_prompt_loop_without_prompt_md() {
    let cfg = "schedule:\n  every: 10m\npayload:\n  kind: prompt\n  model: claude-sonnet-4-5\n";
    let out = check_one_error("briefing", cfg, "payload:");
    assert!(out.contains("needs prompt.md"), "{out}");
    assert!(out.contains("create domains/briefing/prompt.md"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_empty_command_list() {
    let cfg = "schedule:\n  every: 10m\npayload:\n  command: []\n";
    let out = check_one_error("empty", cfg, "[]");
    assert!(out.contains("the command is empty"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_empty_command_string() {
    let cfg = "schedule:\n  every: 10m\npayload:\n  command: \"\"\n";
    let out = check_one_error("empty", cfg, "\"\"");
    assert!(out.contains("the command is empty"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_both_every_and_cron() {
    let cfg = "schedule:\n  every: 10m\n  cron: \"0 9 * * *\"\npayload:\n  command: [\"true\"]\n";
    let out = check_one_error("both", cfg, "\"0 9");
    assert!(out.contains("has both every and cron"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_bad_concurrency() {
    let cfg = "schedule:\n  every: 10m\npayload:\n  command: [\"true\"]\nconcurrency: sometimes\n";
    let out = check_one_error("conc", cfg, "sometimes");
    assert!(out.contains("must be forbid, allow or replace"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_errors_inside_flow_mappings() {
    let cfg = "schedule: { every: 10m, jitter: 5 }\npayload: { kind: command, command: [\"true\"] }\nretry: { max_attempts: 0, delay: 3x }\n";
    let ws = bare_workspace();
    write_loop(&ws, "flow", cfg);
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    for (needle, msg) in [
        ("5 }", "`schedule.jitter: 5` has no unit"),
        ("0, delay", "`retry.max_attempts` must be"),
        ("3x", "retry.delay: `3x` is not a duration"),
    ] {
        let (l, c) = pos_of(cfg, needle, 0);
        let want = format!("domains/flow/config.yaml:{l}:{c}: {msg}");
        assert!(out.contains(&want), "expected `{want}` in\n{out}");
    }
    insta::assert_snapshot!(out);
}

#[test]
fn check_bad_loops_yaml_key_and_timezone() {
    let ws = bare_workspace();
    write_loop(&ws, "good", GOOD);
    let yaml = "timezone: Europe/Londn\nlimts:\n  max_concurrent_jobs: 2\n";
    ws.write("loops.yaml", yaml);
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    let (l, c) = pos_of(yaml, "Europe/Londn", 0);
    assert!(
        out.contains(&format!(
            "error: loops.yaml:{l}:{c}: unknown timezone `Europe/Londn`"
        )),
        "{out}"
    );
    assert!(out.contains("did you mean `Europe/London`?"), "{out}");
    let (l, c) = pos_of(yaml, "limts", 0);
    assert!(
        out.contains(&format!("error: loops.yaml:{l}:{c}: unknown key `limts`")),
        "{out}"
    );
    assert!(out.contains("did you mean `limits`?"), "{out}");
    // The loops themselves are still checked.
    assert!(out.contains("1 loop(s) checked: 1 valid"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_bad_nested_loops_yaml_key() {
    let ws = bare_workspace();
    let yaml = "limits:\n  max_concurent_jobs: 2\n  catch_up_stagger: 2 seconds\n";
    ws.write("loops.yaml", yaml);
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    let (l, c) = pos_of(yaml, "max_concurent_jobs", 0);
    assert!(
        out.contains(&format!(
            "loops.yaml:{l}:{c}: unknown key `limits.max_concurent_jobs`"
        )),
        "{out}"
    );
    assert!(out.contains("did you mean `max_concurrent_jobs`?"), "{out}");
    let (l, c) = pos_of(yaml, "2 seconds", 0);
    assert!(
        out.contains(&format!("loops.yaml:{l}:{c}: limits.catch_up_stagger")),
        "{out}"
    );
    insta::assert_snapshot!(out);
}

#[test]
fn check_warning_only_exits_zero() {
    let ws = bare_workspace();
    write_loop(
        &ws,
        "briefing",
        "schedule:\n  cron: \"30 9 * * 1-5\"\n  timezone: America/New_York\npayload:\n  kind: prompt\n",
    );
    ws.write(
        "domains/briefing/prompt.md",
        "Write the morning briefing.\n",
    );
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "warnings alone must not fail:\n{out}");
    assert!(out.starts_with("warning: domains/briefing/config.yaml: prompt loop `briefing` is waiting for a provider"), "{out}");
    assert!(out.contains("0 error(s), 1 warning(s)"), "{out}");
    insta::assert_snapshot!(out);

    // With a provider configured the warning goes away.
    ws.write(
        "loops.yaml",
        // No key variable: an unset key would be warned about (issue #19).
        "providers:\n  anthropic:\n    api_key_env: ~\n",
    );
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "1 loop(s) checked: 1 valid, 0 with errors; 0 error(s), 0 warning(s)"
    );
}

#[test]
fn check_json_shape() {
    let ws = bare_workspace();
    write_loop(&ws, "good", GOOD);
    let cfg =
        "schedule:\n  every: 10m\n  timezone: America/NewYork\npayload:\n  command: [\"true\"]\n";
    write_loop(&ws, "tz", cfg);
    write_loop(
        &ws,
        "prompt",
        "schedule:\n  every: 1h\npayload:\n  kind: prompt\n",
    );
    ws.write("domains/prompt/prompt.md", "hello\n");
    let (out, code) = check(&ws, true);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("check --json is JSON");
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"], 1);
    assert_eq!(v["warnings"], 1);
    assert_eq!(v["loops"], 3);
    assert_eq!(v["workspace"], "[WS]");
    let diags = v["diagnostics"].as_array().expect("diagnostics array");
    assert_eq!(diags.len(), 2);
    let warn = &diags[0];
    assert_eq!(warn["severity"], "warning");
    assert_eq!(warn["file"], "domains/prompt/config.yaml");
    assert!(warn["line"].is_null() && warn["column"].is_null(), "{warn}");
    let err = &diags[1];
    assert_eq!(err["severity"], "error");
    assert_eq!(err["file"], "domains/tz/config.yaml");
    let (l, c) = pos_of(cfg, "America/NewYork", 0);
    assert_eq!(err["line"], l as u64);
    assert_eq!(err["column"], c as u64);
    assert_eq!(err["message"], "unknown timezone `America/NewYork`");
    assert!(err["help"]
        .as_str()
        .is_some_and(|h| h.contains("America/New_York")));
    insta::assert_snapshot!(out);

    // All good: ok true, exit 0.
    std::fs::remove_dir_all(ws.path().join("domains/tz")).expect("rm");
    let (out, code) = check(&ws, true);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], 0);
}

#[test]
fn diagnostics_from_the_library_match_the_cli() {
    let ws = bare_workspace();
    let cfg = "schedule:\n  every: 10m\npayload:\n  command: [\"true\"]\nconcurrency: sometimes\n";
    write_loop(&ws, "conc", cfg);
    let w = Workspace::open(ws.path()).expect("open");
    let e = discover(&w).pop().expect("one loop");
    assert_eq!(e.diagnostics.len(), 1);
    let d = &e.diagnostics[0];
    assert_eq!(d.severity, Severity::Error);
    assert_eq!((d.line, d.column), (Some(5), Some(14)));
    let (out, _) = check(&ws, false);
    assert!(out.starts_with(&format!("{d}\n")), "{out}");
}

#[test]
fn check_missing_script_and_broken_loops_yaml() {
    let ws = bare_workspace();
    let cfg = "schedule:\n  every: 10m\npayload:\n  command: [\"./collect.sh\", \"--since\", \"{window_start}\"]\n";
    write_loop(&ws, "collector", cfg);
    write_loop(&ws, "good", GOOD);
    let yaml = "timezone: UTC\nlimits:\n  max_concurrent_jobs: [1\n";
    ws.write("loops.yaml", yaml);
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    // The unclosed list is reported where it opens, not where the parser gave up (the
    // end of the file).
    let (l, c) = pos_of(yaml, "[1", 0);
    assert!(
        out.starts_with(&format!("error: loops.yaml:{l}:{c}: not valid YAML")),
        "{out}"
    );
    let (l, c) = pos_of(cfg, "[\"./collect.sh", 0);
    assert!(
        out.contains(&format!(
            "error: domains/collector/config.yaml:{l}:{c}: `./collect.sh` does not exist in collector"
        )),
        "{out}"
    );
    // A broken loops.yaml does not stop the loops from being checked.
    assert!(
        out.contains("2 loop(s) checked: 1 valid, 1 with errors"),
        "{out}"
    );
    insta::assert_snapshot!(out);

    // Creating the script fixes the loop.
    ws.write("domains/collector/collect.sh", "#!/bin/sh\necho hi\n");
    ws.write("loops.yaml", "timezone: UTC\n");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn check_reports_bad_providers_with_the_fix() {
    let ws = bare_workspace();
    ws.write(
        "loops.yaml",
        "providers:\n  claude:\n    kind: antropic\n  openai:\n    api_key_env: sk-ant-0123456789abcdefghijklmnopqrstuvwxyz0123\n  local:\n    kind: openai\n    base_url: localhost:11434\n    modle: llama3.1\n  cli:\n    kind: command\n",
    );
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("loops.yaml:3:11: provider `claude`: unknown kind `antropic`"),
        "{out}"
    );
    assert!(
        out.contains("looks like a key, not a variable name"),
        "{out}"
    );
    assert!(
        !out.contains("sk-ant-0123456789"),
        "a key is never echoed:\n{out}"
    );
    assert!(
        out.contains("providers.local.base_url must be an http:// or https:// URL"),
        "{out}"
    );
    assert!(out.contains("unknown key `providers.local.modle`"), "{out}");
    assert!(out.contains("did you mean `model`?"), "{out}");
    assert!(
        out.contains("provider `cli` (kind: command) needs `command`"),
        "{out}"
    );
}

#[test]
fn check_resolves_each_prompt_loops_provider_and_model() {
    let ws = bare_workspace();
    ws.write(
        "loops.yaml",
        "providers:\n  anthropic: { kind: anthropic }\n  local: { kind: openai, base_url: \"http://127.0.0.1:11434/v1\" }\n",
    );
    for (name, payload) in [
        ("typo", "payload: { kind: prompt, provider: anthropc }"),
        ("unnamed", "payload: { kind: prompt }"),
        ("nomodel", "payload: { kind: prompt, provider: local }"),
        ("fine", "payload: { kind: prompt, provider: anthropic }"),
        (
            "fine-local",
            "payload: { kind: prompt, provider: local, model: llama3.1 }",
        ),
    ] {
        write_loop(
            &ws,
            name,
            &format!("schedule: {{ every: 1h }}\n{payload}\n"),
        );
        ws.write(&format!("domains/{name}/prompt.md"), "Do it.\n");
    }
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "domains/typo/config.yaml:2:36: provider `anthropc` is not in loops.yaml `providers:`"
        ),
        "{out}"
    );
    assert!(out.contains("did you mean `anthropic`?"), "{out}");
    assert!(out.contains("domains/unnamed/config.yaml:2:1: this prompt loop names no provider and loops.yaml has no `defaults.provider`"), "{out}");
    assert!(out.contains("no model for provider `local`"), "{out}");
    assert!(
        out.contains("5 loop(s) checked: 2 valid, 3 with errors"),
        "{out}"
    );

    // `defaults:` settles the unnamed one.
    ws.write(
        "loops.yaml",
        "providers:\n  anthropic: { kind: anthropic }\n  local: { kind: openai, base_url: \"http://127.0.0.1:11434/v1\", model: llama3.1 }\ndefaults: { provider: anthropic }\n",
    );
    let (out, _) = check(&ws, false);
    assert!(
        out.contains("5 loop(s) checked: 4 valid, 1 with errors"),
        "{out}"
    );
}

#[test]
fn check_validates_a_prompt_main_session() {
    let ws = bare_workspace();
    ws.write(
        "loops.yaml",
        "providers:\n  anthropic: { kind: anthropic }\nmain:\n  prompt: MAIN.md\n  provider: antropic\n",
    );
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("main.prompt: `MAIN.md` does not exist"),
        "{out}"
    );
    assert!(
        out.contains("main session: provider `antropic` is not in loops.yaml"),
        "{out}"
    );
    ws.write("MAIN.md", "Be helpful.\n");
    ws.write(
        "loops.yaml",
        "providers:\n  anthropic: { kind: anthropic }\nmain:\n  prompt: MAIN.md\n",
    );
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn check_names_a_main_prompt_or_identity_file_that_is_no_text() {
    let ws = bare_workspace();
    ws.write(
        "loops.yaml",
        "providers:\n  anthropic: { kind: anthropic }\nmain:\n  prompt: MAIN.md\n",
    );
    std::fs::write(ws.path().join("MAIN.md"), b"Be helpful, Ren\xe9.\n").expect("write");
    std::fs::write(ws.path().join("USER.md"), b"Name: Ren\xe9\n").expect("write");
    let soul = ws.path().join("SOUL.md");
    let _ = std::fs::remove_file(&soul);
    std::fs::create_dir_all(&soul).expect("mkdir");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    for want in [
        "error: loops.yaml:4:11: main.prompt: `MAIN.md` cannot be read as text: stream did not contain valid UTF-8",
        "warning: loops.yaml:3:1: main.context: `USER.md` cannot be read as text: stream did not contain valid UTF-8",
        "main.context: `SOUL.md` cannot be read as text: Is a directory",
        "help: save it as UTF-8 text: until then the main session is told it is there but not what it says",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    // A missing identity file is no problem: a workspace starts without memory.
    assert!(!out.contains(".working-memory/"), "{out}");
    ws.write("MAIN.md", "Be helpful.\n");
    ws.write("USER.md", "Name: Rene\n");
    std::fs::remove_dir(&soul).expect("rmdir");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("main."), "{out}");
}

/// Inputs the config_yaml fuzz target found (fuzz/regressions/config_yaml/): minutes too many
/// for a duration, and a one-shot time so far ahead that adding its jitter overflowed. Each
/// made `loops check`, `loops list` and the daemon panic; now each is an error at its value,
/// and the loop beside them still runs.
#[test]
fn fuzz_regressions_are_errors_at_their_value() {
    let cases: [(&str, &[u8], &str, &str); 3] = [
        (
            "interval",
            include_bytes!("../../fuzz/regressions/config_yaml/interval-minutes-inf"),
            ".inf",
            "`timing.interval_minutes` must be a number of minutes",
        ),
        (
            "overlap",
            include_bytes!("../../fuzz/regressions/config_yaml/overlap-minutes-inf"),
            ".inf",
            "`timing.overlap_window_minutes` must be a number of minutes",
        ),
        (
            "far-at",
            include_bytes!("../../fuzz/regressions/config_yaml/at-year-262142-with-jitter"),
            "\"+262142",
            "is not a date and time",
        ),
    ];
    let ws = bare_workspace();
    write_loop(&ws, "good", GOOD);
    for (name, input, needle, message) in cases {
        let config = std::str::from_utf8(input).expect("a UTF-8 config.yaml");
        let out = check_one_error(name, config, needle);
        assert!(out.contains(message), "{out}");
        write_loop(&ws, name, config);
    }
    let out = ws
        .cmd()
        .args(["list", "--json"])
        .output()
        .expect("run loops list");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"good\""), "{stdout}");

    // Slightly smaller numbers are fine; past a second and ten years they are not.
    let ws = bare_workspace();
    let w = |timing: &str| {
        let config = format!("timing: {timing}\npayload: {{ command: \"true\" }}\n");
        write_loop(&ws, "t", &config);
        let w = Workspace::open(ws.path()).expect("open workspace");
        discover(&w).remove(0)
    };
    let ok = w("{ interval_minutes: 5256000, overlap_window_minutes: 0 }");
    assert!(ok.def.is_some(), "{:?}", ok.diagnostics);
    for bad in [
        "{ interval_minutes: 1e300 }",
        "{ interval_minutes: 0.001 }",
        "{ interval_minutes: .nan }",
        "{ interval_minutes: 10, overlap_window_minutes: -1 }",
        "{ interval_minutes: 10, overlap_window_minutes: 1e20 }",
    ] {
        let e = w(bad);
        assert!(
            e.def.is_none() && e.errors().count() == 1,
            "{bad}: {:?}",
            e.diagnostics
        );
    }
}

/// A count past what u32 holds is "no limit", not its low 32 bits: 2^32 turns were none.
#[test]
fn huge_counts_saturate_instead_of_wrapping() {
    let ws = bare_workspace();
    write_loop(
        &ws,
        "big",
        "schedule: { every: 1h }\npayload: { command: \"true\" }\nmax_turns: 4294967296\nretry: { max_attempts: 4294967297 }\n",
    );
    let w = Workspace::open(ws.path()).expect("open workspace");
    let def = discover(&w).remove(0).def.expect("a valid loop");
    assert_eq!(def.max_turns, u32::MAX);
    assert_eq!(def.retry.max_attempts, u32::MAX);
}

// ---- what `loops check` says, and that it is true (issue 16) -----------------------------

/// `loops ARGS` in the workspace: (stdout, stderr, exit code).
fn loops(ws: &TempWorkspace, args: &[&str]) -> (String, String, i32) {
    let out = ws.cmd().args(args).output().expect("run loops");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().expect("exit code"),
    )
}

#[test]
fn a_tool_name_typo_is_an_error_with_did_you_mean() {
    let ws = bare_workspace();
    let cfg = "schedule: { every: 1h }\npayload: { kind: prompt }\ntools: [read_file, finsh, web_search]\n";
    write_loop(&ws, "typo", cfg);
    ws.write("domains/typo/prompt.md", "Do the thing.\n");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "a typo must fail the check:\n{out}");
    let (l, c) = pos_of(cfg, "finsh", 0);
    assert!(
        out.contains(&format!(
            "error: domains/typo/config.yaml:{l}:{c}: unknown tool `finsh` in `tools`\n  help: did you mean `finish`?"
        )),
        "{out}"
    );
    // A name like no tool at all (another runner's) is still only a warning.
    let (l, c) = pos_of(cfg, "web_search", 0);
    assert!(
        out.contains(&format!(
            "warning: domains/typo/config.yaml:{l}:{c}: unknown tool `web_search` in `tools`"
        )),
        "{out}"
    );
    assert!(out.contains("0 valid, 1 with errors"), "{out}");

    // A block list points at the entry's own line.
    let cfg = "schedule: { every: 1h }\npayload: { kind: prompt }\ntools:\n  - read_file\n  - Read_File\n";
    write_loop(&ws, "typo", cfg);
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    let (l, c) = pos_of(cfg, "Read_File", 0);
    assert!(
        out.contains(&format!(
            "error: domains/typo/config.yaml:{l}:{c}: unknown tool `Read_File` in `tools`\n  help: did you mean `read_file`?"
        )),
        "{out}"
    );
}

#[test]
fn a_loops_yaml_key_typo_is_an_error_and_nothing_runs_with_the_default() {
    let ws = TempWorkspace::new();
    let yaml = "git: {comit: false}\nmain:\n  command: [\"./main.sh\"]\n  hartbeat: 30m\n";
    ws.write("loops.yaml", yaml);
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    let comit = pos_of(yaml, "comit", 0);
    let (l, c) = comit;
    assert!(
        out.contains(&format!(
            "error: loops.yaml:{l}:{c}: unknown key `git.comit`\n  help: did you mean `commit`?"
        )),
        "{out}"
    );
    let (l, c) = pos_of(yaml, "hartbeat", 0);
    assert!(
        out.contains(&format!(
            "error: loops.yaml:{l}:{c}: unknown key `main.hartbeat`\n  help: did you mean `heartbeat`?"
        )),
        "{out}"
    );

    // The daemon, `run --once` and `trigger` do not start with `commit: true` in its place.
    let head = crate::common::git(ws.path(), &["rev-parse", "HEAD"]);
    for args in [
        &["run", "--once", "--all"][..],
        &["trigger", "example"],
        &["run"],
    ] {
        let (_, err, code) = loops(&ws, args);
        assert_eq!(code, 1, "loops {args:?} must refuse:\n{err}");
        assert!(
            err.contains("loops.yaml has settings that cannot be applied, so nothing runs until they are fixed"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(&format!(
                "loops.yaml:{}:{}: unknown key `git.comit`",
                comit.0, comit.1
            )) && err.contains("did you mean `commit`?"),
            "{args:?}: {err}"
        );
        assert!(err.contains("`loops check` lists every problem"), "{err}");
    }
    assert_eq!(
        crate::common::git(ws.path(), &["rev-parse", "HEAD"]),
        head,
        "nothing was committed"
    );
    assert!(ws.runs("example").is_empty(), "nothing ran");

    // Fixed, it runs.
    ws.write("loops.yaml", "git: {commit: false}\n");
    let (out, err, code) = loops(&ws, &["run", "--once", "--all"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_bundled_workspaces_pass_check() {
    // What `loops init` lays down.
    let ws = TempWorkspace::new();
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 error(s), 0 warning(s)"), "{out}");

    // The repository's own example workspace (loops.yaml and domains/), copied so the
    // check sees exactly those files.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ws = bare_workspace();
    std::fs::copy(repo.join("loops.yaml"), ws.path().join("loops.yaml")).expect("copy loops.yaml");
    for e in std::fs::read_dir(repo.join("domains")).expect("read domains/") {
        let e = e.expect("entry");
        copy_tree(&e.path(), &ws.path().join("domains").join(e.file_name()));
    }
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" 0 with errors; 0 error(s)"), "{out}");
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read_dir") {
            let e = e.expect("entry");
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).expect("copy");
    }
}

#[test]
fn check_says_commits_are_off_outside_a_git_repository() {
    let ws = bare_workspace();
    write_loop(&ws, "good", GOOD);
    std::fs::remove_dir_all(ws.path().join(".git")).expect("remove .git");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "a warning, not an error:\n{out}");
    assert!(
        out.starts_with("warning: [WS]: this workspace is not a git repository: commits are off, so nothing a run changes is recorded in history\n  help: run `git init` in [WS]"),
        "{out}"
    );
    // Saying so in loops.yaml is the other way to quiet it.
    ws.write("loops.yaml", "git: { commit: false }\n");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("git repository"), "{out}");
}

#[test]
fn check_a_command_of_the_wrong_type_says_so() {
    let cfg = "schedule:\n  every: 10m\npayload:\n  command: 42\n";
    let out = check_one_error("typed", cfg, "42");
    assert!(
        out.contains(
            "`payload.command` must be a list of strings or a string, not the number `42`"
        ),
        "{out}"
    );
    assert!(!out.contains("empty"), "{out}");
    let cfg = "schedule:\n  every: 10m\npayload:\n  command: { run: x }\n";
    let out = check_one_error("typed", cfg, "{ run");
    assert!(
        out.contains("must be a list of strings or a string, not a mapping"),
        "{out}"
    );
}

#[test]
fn check_refuses_the_folder_names_loops_new_refuses() {
    let ws = bare_workspace();
    write_loop(&ws, "Morning Report", GOOD);
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("error: domains/Morning Report: `Morning Report` is not a valid loop name (a loop is named by its folder)\n  help: rename the folder, e.g. `mv domains/Morning Report domains/morning-report`; use lowercase letters, digits, - and _, starting with a letter or digit, at most 64 characters"),
        "{out}"
    );
    assert!(
        out.contains("1 loop(s) checked: 0 valid, 1 with errors"),
        "{out}"
    );
    // `loops new` says the same rule.
    let (_, err, code) = loops(&ws, &["new", "Morning Report"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("use lowercase letters, digits, - and _, starting with a letter or digit, at most 64 characters"),
        "{err}"
    );
    // And the name it suggests is one `loops new` takes.
    let (out, err, code) = loops(&ws, &["new", "morning-report"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_bare_city_as_timezone_gets_the_iana_name() {
    for (tz, want) in [
        ("London", "did you mean `Europe/London`?"),
        ("new york", "did you mean `America/New_York`?"),
        ("Tokio", "did you mean `Asia/Tokyo`?"),
        ("europe/london", "did you mean `Europe/London`?"),
    ] {
        let cfg = format!(
            "schedule:\n  cron: \"0 9 * * *\"\n  timezone: {tz}\npayload:\n  command: [\"true\"]\n"
        );
        let out = check_one_error("zoned", &cfg, tz);
        assert!(out.contains(&format!("unknown timezone `{tz}`")), "{out}");
        assert!(out.contains(want), "{tz}: {out}");
    }
    // loops.yaml too.
    let ws = bare_workspace();
    ws.write("loops.yaml", "timezone: Paris\n");
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: loops.yaml:1:11: unknown timezone `Paris`\n  help: did you mean `Europe/Paris`?"),
        "{out}"
    );
}

#[test]
fn yaml_syntax_errors_point_at_the_fault() {
    // (config, where the fault is, what the message says)
    let cases = [
        (
            "schedule:\n  every: 10m\npayload:\n  command: [\"true\"\ntimeout: 5s\n",
            "[",
            "the list opened with `[` here is not closed",
        ),
        (
            "schedule: {every: 10m\npayload:\n  command: [\"true\"]\n",
            "{",
            "the mapping opened with `{` here is not closed",
        ),
        (
            "schedule:\n  every: 10m\npayload:\n  command: \"echo hi\n",
            "\"echo",
            "the quote opened here is not closed",
        ),
        (
            "description: x\nschedule\npayload:\n  command: [\"true\"]\n",
            "schedule",
            "add the colon",
        ),
    ];
    for (cfg, fault, help) in cases {
        let out = check_one_error("syntax", cfg, fault);
        assert!(out.contains("not valid YAML"), "{out}");
        assert!(out.contains(help), "{out}");
    }
}

#[test]
fn duplicate_keys_point_at_the_second_one() {
    let cfg = "schedule:\n  every: 10m\npayload:\n  command: [\"true\"]\nschedule:\n  every: 5m\n";
    let (l, c) = pos_of(cfg, "schedule", 1);
    let ws = bare_workspace();
    write_loop(&ws, "twice", cfg);
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("error: domains/twice/config.yaml:{l}:{c}: not valid YAML: `schedule` is written twice (first at line 1)\n  help: a key may appear once in a mapping")),
        "{out}"
    );

    let cfg = "schedule:\n  every: 10m\n  every: 5m\npayload:\n  command: [\"true\"]\n";
    let out = check_one_error("twice", cfg, "every: 5m");
    assert!(
        out.contains("`every` is written twice in `schedule` (first at line 2)"),
        "{out}"
    );
    let cfg = "schedule: { every: 10m, every: 5m }\npayload:\n  command: [\"true\"]\n";
    let out = check_one_error("twice", cfg, "every: 5m");
    assert!(
        out.contains("`every` is written twice in `schedule`"),
        "{out}"
    );

    // loops.yaml too, and then nothing runs on its defaults.
    let ws = TempWorkspace::new();
    let yaml = "git:\n  commit: false\ngit:\n  commit: true\n";
    ws.write("loops.yaml", yaml);
    let (out, code) = check(&ws, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "error: loops.yaml:3:1: not valid YAML: `git` is written twice (first at line 1)"
        ),
        "{out}"
    );
    let (_, err, code) = loops(&ws, &["run", "--once"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("`git` is written twice"), "{err}");
}

#[test]
fn check_gives_the_provider_help_once_for_every_waiting_loop() {
    let ws = bare_workspace();
    for name in ["alpha", "beta", "gamma"] {
        write_loop(
            &ws,
            name,
            "schedule: { every: 1h }\npayload: { kind: prompt }\n",
        );
        ws.write(&format!("domains/{name}/prompt.md"), "Think.\n");
    }
    let (out, code) = check(&ws, false);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("prompt loops need a model provider").count(),
        1,
        "the help once:\n{out}"
    );
    assert!(
        out.starts_with("warning: loops.yaml: 3 prompt loops are waiting for a provider: `alpha`, `beta`, `gamma`\n  help: prompt loops need a model provider in loops.yaml"),
        "{out}"
    );
    assert!(out.contains("0 error(s), 1 warning(s)"), "{out}");
}
