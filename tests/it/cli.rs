//! Snapshots of what a person sees at the command line. Temp paths, times, run ids and
//! commit hashes are normalised by insta filters.

use crate::common::{git_commit_all, loops_cmd, TempWorkspace};
use std::path::Path;

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
        let out = ws.cmd().arg("check").output().unwrap();
        let text = show(&out);
        assert_eq!(out.status.code(), Some(0), "template {t}:\n{text}");
        assert!(
            text.contains("0 error(s), 0 warning(s)") && !text.contains("warning:"),
            "template {t}: `loops check` is not clean:\n{text}"
        );
    }
}
