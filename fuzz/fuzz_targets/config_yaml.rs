//! A loop's config.yaml (and, after a NUL byte, the workspace's loops.yaml) through the
//! parsers `loops check` and the daemon use, with every diagnostic rendered both ways
//! `loops check` prints it.
//!
//! Invariants: no panic; a loop is valid exactly when no error was reported; every
//! diagnostic points into the text it was about; a valid loop can be scheduled.

#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use loops_core::diag::Diagnostic;
use loops_core::domain::parse_config_text;
use loops_core::workspace::{parse_settings, Settings, Workspace};
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    // The settings decide which channels, providers and MCP servers a loop may name, so
    // both files come from one input.
    let (config, loops_yaml) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    // load_domain refuses a config.yaml that is not UTF-8 before it parses anything.
    let Ok(config) = std::str::from_utf8(config) else {
        return;
    };
    // A root that does not exist: `main.prompt` is looked for there, and must not be found
    // on whatever machine runs the fuzzer.
    let root = PathBuf::from("/nonexistent/loops-fuzz-workspace");
    // Workspace::open reads loops.yaml as UTF-8 text or not at all.
    let loops_yaml = loops_yaml.and_then(|s| std::str::from_utf8(s).ok());
    let (mut settings, ws_diags) = match loops_yaml {
        Some(text) => parse_settings(&root, text),
        None => (Settings::default(), Vec::new()),
    };
    check_diagnostics(&ws_diags, loops_yaml);
    // Without a zone of its own the workspace would use the host's, which differs
    // between machines; the fuzzer must see the same thing everywhere.
    if settings.timezone.is_none() {
        settings.timezone = Some(chrono_tz::Tz::UTC);
    }
    let ws = Workspace {
        root,
        settings,
        diagnostics: ws_diags,
    };

    let (def, diags) = parse_config_text(&ws, "fuzz-loop", config, true);
    check_diagnostics(&diags, Some(config));
    let has_errors = diags.iter().any(Diagnostic::is_error);
    assert_eq!(
        def.is_some(),
        !has_errors,
        "a loop is valid exactly when config.yaml has no errors: {diags:#?}"
    );

    if let Some(def) = def {
        // What `loops list` and the scheduler do with a freshly loaded loop.
        let now = Utc.with_ymd_and_hms(2026, 3, 8, 6, 59, 0).unwrap();
        let _ = def.schedule.describe();
        let next = def.schedule.upcoming(now, 3);
        assert!(next.windows(2).all(|w| w[0] < w[1]), "{next:?}");
        let _ = def.schedule.plan(now - chrono::Duration::days(2), now);
        let _ = def.retry.backoff_for(2, 1234);
        let _ = def.retry.backoff_for(u32::MAX, u64::MAX);
    }
});

fn check_diagnostics(diags: &[Diagnostic], text: Option<&str>) {
    for d in diags {
        let _ = d.to_string();
        let _ = d.location();
        serde_json::to_string(d).expect("a diagnostic serializes for `loops check --json`");
        assert!(!d.message.is_empty(), "a diagnostic says what is wrong");
        // Positions are 1-based and point at a line of the file (the YAML parser may point
        // one past the last line, at the end of the input).
        if let Some(line) = d.line {
            assert!(line >= 1, "{d:?}");
            if let Some(text) = text {
                assert!(line <= yaml_lines(text) + 1, "{d:?} in {text:?}");
            }
        }
        if let Some(col) = d.column {
            assert!(col >= 1, "{d:?}");
        }
    }
}

/// Lines as YAML 1.1 counts them: a lone CR, NEL, LS and PS end a line too.
fn yaml_lines(text: &str) -> usize {
    let breaks = ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];
    text.replace("\r\n", "\n").matches(breaks).count() + 1
}
