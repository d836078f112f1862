//! Every diagnostic the config readers give, case by case: loops.yaml (settings, limits,
//! git, records, main, providers, defaults, channels, MCP servers, the guard), a loop's
//! config.yaml (schedule, payload, retry, timing, env, gate, hosts, deliver, reads, tools)
//! and the params of shell and agent jobs. The snapshots record what each says and where
//! (message, help, file, line, column, severity and order), so that a rewrite of a reader
//! is held to the same words.

use loops_core::diag::Diagnostic;
use loops_core::domain::parse_config_text;
use loops_core::jobs::queue::{plan, JobSpec};
use loops_core::workspace::{parse_settings, Workspace};
use std::fmt::Write;
use std::path::Path;

/// A workspace root with the files some cases name: a main prompt and a loop's script.
fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("MAIN.md"), "You are the main session.\n").unwrap();
    std::fs::create_dir_all(dir.path().join("domains/ok")).unwrap();
    std::fs::write(dir.path().join("domains/ok/run.sh"), "#!/bin/sh\n").unwrap();
    dir
}

fn render(out: &mut String, diags: &[Diagnostic]) {
    if diags.is_empty() {
        out.push_str("(no diagnostics)\n");
    }
    for d in diags {
        writeln!(out, "{d}").unwrap();
    }
}

/// loops.yaml alone: its diagnostics and which of them stop runs (unapplied).
fn settings_case(out: &mut String, root: &Path, name: &str, text: &str) {
    let (s, diags) = parse_settings(root, text);
    writeln!(out, "## {name}\n--- loops.yaml\n{text}--- diagnostics").unwrap();
    render(out, &diags);
    writeln!(
        out,
        "--- unapplied: {}, main: {}\n",
        s.unapplied.len(),
        if s.main.is_some() { "yes" } else { "no" }
    )
    .unwrap();
}

/// A loop's config.yaml read against loops.yaml `settings` (the loop is named `ok`).
fn config_case(out: &mut String, root: &Path, name: &str, settings: &str, config: &str) {
    config_case_with(out, root, name, settings, config, true)
}

fn config_case_with(
    out: &mut String,
    root: &Path,
    name: &str,
    settings: &str,
    config: &str,
    has_prompt: bool,
) {
    let (mut s, ws_diags) = parse_settings(root, settings);
    s.timezone.get_or_insert(chrono_tz::Tz::UTC);
    let ws = Workspace {
        root: root.to_path_buf(),
        settings: s,
        diagnostics: ws_diags,
    };
    let (def, diags) = parse_config_text(&ws, "ok", config, has_prompt);
    writeln!(out, "## {name}").unwrap();
    if !settings.is_empty() {
        writeln!(out, "--- loops.yaml\n{settings}").unwrap();
    }
    if !has_prompt {
        writeln!(out, "--- (no prompt.md)").unwrap();
    }
    writeln!(out, "--- config.yaml\n{config}--- diagnostics").unwrap();
    render(out, &diags);
    writeln!(
        out,
        "--- loop: {}\n",
        if def.is_some() { "valid" } else { "not run" }
    )
    .unwrap();
}

#[test]
fn loops_yaml_diagnostics() {
    let dir = root();
    let root = dir.path();
    let mut out = String::new();
    let cases: &[(&str, &str)] = &[
        ("empty file", ""),
        ("not a mapping", "- a\n- b\n"),
        ("syntax error", "limits:\n  max_concurrent_jobs: [1, 2\n"),
        ("duplicate key", "git:\n  commit: true\n  commit: false\n"),
        (
            "top-level keys: typo, unknown, non-string",
            "timezon: UTC\nfoo: 1\n5: x\nMain: {}\n",
        ),
        (
            "timezone",
            "timezone: London\n",
        ),
        ("timezone, far off", "timezone: Mars/Base\n"),
        ("timezone, several close", "timezone: Londn\n"),
        ("timezone, not text", "timezone: 5\n"),
        (
            "limits, every error in the order written",
            "limits:\n  shutdown_grace: 5\n  max_concurrent_jobs: 0\n  catch_up_stagger: 3x\n  pause_after_failures: -1\n  max_handoff_bytes: 1023\n  max_job_log_bytes: 65535\n  max_concurent_jobs: 4\n  other: 1\n  7: x\n",
        ),
        (
            "limits, good values and an empty duration",
            "limits: { max_concurrent_jobs: 8, shutdown_grace: \"\", catch_up_stagger: 1s, pause_after_failures: 8589934592, max_handoff_bytes: 1024, max_job_log_bytes: 65536 }\n",
        ),
        ("limits, not a mapping", "limits: 5\ngit: [a]\nrecords: x\n"),
        (
            "git",
            "git:\n  commit: yes\n  follow_checkout: 1\n  branch: bad..name\n  author_name: \"\"\n  author_email: 5\n  comit: false\n  foo: 1\n",
        ),
        (
            "git, good values",
            "git: { commit: false, follow_checkout: true, branch: refs/heads/dev, author_name: Bot, author_email: bot@example.com }\n",
        ),
        ("git, branch not text", "git:\n  branch: [main]\n"),
        (
            "records",
            "records:\n  rotate_bytes: 4095\n  max_age: 30m\n  max_total_bytes: 1048575\n  rotat_bytes: 1\n  other: 1\n",
        ),
        (
            "records, max_age forms",
            "records:\n  max_age: x\n  rotate_bytes: \"4096\"\n",
        ),
        ("records, max_age not text", "records:\n  max_age: 5\n"),
        ("records, max_age empty", "records:\n  max_age: \"\"\n"),
        (
            "records, good values",
            "records: { rotate_bytes: 4096, max_age: forever, max_total_bytes: 0 }\n",
        ),
        ("records, max_age zero", "records: { max_age: 0, max_total_bytes: 1048576 }\n"),
        (
            "allow_shell_tool and allow_shell_jobs",
            "allow_shell_tool: yes\nallow_shell_jobs: 1\n",
        ),
        ("allow flags set", "allow_shell_tool: true\nallow_shell_jobs: false\n"),
        ("main, not a mapping", "main: ./main.sh\n"),
        ("main, neither command nor prompt", "main:\n  heartbeat: 30m\n"),
        (
            "main, every field wrong",
            "main:\n  command: []\n  prompt: \"\"\n  provider: 5\n  model: \"\"\n  context: SOUL.md\n  tools: read_file\n  history: -1\n  max_turns: 0\n  heartbeat: 0s\n  timeout: 3x\n  overdue_after: 5\n  max_wakes_per_minute: 0\n  max_attempts: x\n  max_handoffs_per_wake: 0\n  comand: x\n  other: 1\n",
        ),
        (
            "main, command as a string and a list",
            "main:\n  command: ./main-session.sh --wake\n  heartbeat: 1h\n  history: 20000\n  max_handoffs_per_wake: 5000\n",
        ),
        (
            "main, command list with a number",
            "main:\n  command: [./main.sh, 5]\n",
        ),
        (
            "main, both command and prompt",
            "main: { command: [./main.sh], prompt: MAIN.md }\nproviders: { anthropic: { kind: anthropic } }\n",
        ),
        (
            "main, prompt file missing, no provider",
            "main:\n  prompt: NOPE.md\n",
        ),
        (
            "main, inline prompt waits for a provider",
            "main:\n  prompt: You are the main session. Keep notes.\n",
        ),
        (
            "main, prompt with an unknown provider",
            "providers:\n  anthropic: { kind: anthropic }\nmain:\n  prompt: MAIN.md\n  provider: anthropik\n",
        ),
        (
            "main, prompt with a provider without a model",
            "providers:\n  local: { kind: openai, base_url: \"http://127.0.0.1:11434/v1\" }\nmain:\n  prompt: MAIN.md\n",
        ),
        (
            "main, prompt with two providers and no default",
            "providers:\n  a: { kind: anthropic }\n  b: { kind: anthropic }\nmain:\n  prompt: MAIN.md\n",
        ),
        ("providers, not a mapping", "providers: [anthropic]\n"),
        ("providers, null", "providers:\n"),
        (
            "providers, entry not a mapping; no kind; unknown kind",
            "providers:\n  a: x\n  b: { model: m }\n  c: { kind: bogus }\n  d: { kind: 5 }\n  5: { kind: openai }\n",
        ),
        (
            "provider, every field wrong",
            "providers:\n  local:\n    kind: openai\n    base_url: ftp://x\n    api_key_env: sk-abc\n    model: \"\"\n    max_tokens: 0\n    timeout: 0s\n    command: []\n    env: [1BAD]\n    modle: x\n    zzz: 1\n",
        ),
        (
            "provider, more wrong values",
            "providers:\n  openai:\n    api_key_env: lower-case\n    default_model: 5\n    max_tokens: 1000001\n    request_timeout: 3x\n    env: A\n    command: [claude, 5]\n  anthropic:\n    api_key_env: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n    timeout: 5\n    base_url: 5\n",
        ),
        (
            "provider, command kind without a command",
            "providers:\n  command: {}\n  cli: { kind: command, command: \"claude -p\", env: [ANTHROPIC_API_KEY] }\n",
        ),
        (
            "provider, good values",
            "providers:\n  anthropic: { api_key_env: ~, model: claude-x, max_tokens: 1000, timeout: 30s, base_url: \"https://example.com/\" }\n",
        ),
        ("defaults, not a mapping", "defaults: anthropic\n"),
        (
            "defaults",
            "defaults:\n  provider: 5\n  model: [x]\n  modle: y\n  other: z\n",
        ),
        ("channels, not a mapping", "channels: general\n"),
        ("channels, null", "channels: ~\n"),
        (
            "channels, bad names, not a mapping, no kind, unknown kind",
            "channels:\n  \"bad name!\": { kind: discord }\n  \"\": { kind: discord }\n  a: x\n  b: { url_env: X }\n  c: { kind: discrod }\n  d: { kind: zzz }\n  e: { kind: 5 }\n",
        ),
        (
            "channel, every field wrong",
            "channels:\n  hooks:\n    kind: webhook\n    url_env: https://example.com/hook\n    secret_env: 5\n    signature_header: \"\"\n    headers: { Authorization: \"not a var\", 5: X }\n    path: /abs\n    command: []\n    env: [1BAD]\n    timeout: 0s\n    retry: { max_attempts: 21, delay: x, max_delay: 5, dealy: 1s, zzz: 1 }\n    kidn: x\n    other: 1\n",
        ),
        (
            "channel, headers and retry not mappings",
            "channels:\n  my-hook:\n    kind: webhook\n    url_env: HOOK\n    headers: [a]\n    retry: 5\n",
        ),
        (
            "channels, what each kind needs",
            "channels:\n  discord: {}\n  digest: { kind: file }\n  notify: { kind: command }\n  team: { kind: slack, secret_env: SIG }\n",
        ),
        (
            "channels, a warning keeps the channel",
            "channels:\n  team: { kind: teams, url_env: TEAMS_URL, secret_env: SIG }\n",
        ),
        (
            "channels, good values",
            "channels:\n  hooks: { kind: webhook, url_env: HOOK_URL, secret_env: HOOK_SECRET, signature_header: \" X-Sig \", headers: { Authorization: HOOK_AUTH }, username: bot, timeout: 5s, retry: { max_attempts: 2, delay: 2s, max_delay: 1m } }\n  digest: { kind: file, path: ./outbox/{date}.md }\n  notify: { kind: command, command: ./notify.sh, env: [NTFY_TOKEN] }\n",
        ),
        (
            "channel, file paths",
            "channels:\n  a: { kind: file, path: ../x.md }\n  b: { kind: file, path: .git/x }\n  c: { kind: file, path: dir/ }\n  d: { kind: file, path: a//b }\n  e: { kind: file, path: 5 }\n",
        ),
        ("mcp_servers, not a mapping", "mcp_servers: [x]\n"),
        (
            "mcp_servers, bad names",
            "mcp_servers:\n  bad.name: { command: x }\n  read_file: { command: x }\n  5: { command: x }\n  ok: x\n  none: {}\n",
        ),
        (
            "mcp server, stdio fields wrong",
            "mcp_servers:\n  fs:\n    command: [\" \", x]\n    args: x\n    env: [1BAD]\n    cwd: /abs\n    timeout: 0s\n    startup_timeout: x\n    comand: y\n    zzz: 1\n",
        ),
        (
            "mcp server, command forms",
            "mcp_servers:\n  a: { command: [] }\n  b: { command: 5 }\n  c: { command: \"npx -y server\", args: [x] }\n  d: { command: server, args: [--root, 5, true] }\n  e: { command: [npx, -y, 7], cwd: \" tools/x \" }\n  f: { command: x, args: [[a]] }\n",
        ),
        (
            "mcp server, http fields wrong",
            "mcp_servers:\n  gh:\n    url: ftp://x\n    headers: { \"bad header\": X, Authorization: \"literal secret\", X-Key: \"${bad var}\", X-Two: \"${A}${B}\", X-Open: \"${OPEN\" }\n    timeout: 5\n  h2:\n    url: \"http://[bad\"\n    headers: 5\n",
        ),
        (
            "mcp server, command and url together",
            "mcp_servers:\n  both:\n    command: x\n    url: \"https://example.com/mcp\"\n    args: [a]\n    env: [A]\n    cwd: x\n    headers: { A: B }\n",
        ),
        (
            "mcp server, url with stdio keys; command with headers",
            "mcp_servers:\n  web: { url: \"https://example.com/mcp\", args: [a], env: [A], cwd: x }\n  local: { command: x, headers: { A: B } }\n",
        ),
        (
            "mcp server, good values",
            "mcp_servers:\n  everything: { command: [npx, -y, server-everything], args: [--x], env: [TOKEN], cwd: tools, timeout: 10s, startup_timeout: 1m }\n  github: { url: \"https://api.example.com/mcp/\", headers: { Authorization: \"Bearer ${GITHUB_TOKEN}\", X-Key: MY_KEY } }\n",
        ),
        (
            "guard: classification not a mapping",
            "classification: [x]\n",
        ),
        (
            "guard: classification lists and rules",
            "classification:\n  SAFE_TO_SHARE: release notes\n  never-share: [names, 5, true, [x]]\n  NEVER: {a: 1}\n  DENY_PATTERNS: [\"(\"]\n  detectors: [emial]\n  levels: [a, b]\n",
        ),
        (
            "guard: deny_patterns",
            "deny_patterns:\n  - \"(?i)falcon\"\n  - { name: cust, pattern: \"CUST-[0-9]{6}\" }\n  - { name: y }\n  - \"\"\n  - \"a*\"\n  - \"(\"\n  - 5\n  - { regex: \"x+\" }\n  - { name: e, pattern: \"\" }\n",
        ),
        ("guard: deny_patterns not a list", "deny_patterns: 5\n"),
        ("guard: deny_patterns one string", "deny_patterns: \"secret\"\n"),
        (
            "guard: detectors",
            "detectors: [email, API-KEY, emial, nope, email]\n",
        ),
        ("guard: detectors not names", "detectors: [5]\n"),
        ("guard: detectors one name", "detectors: phone\n"),
        (
            "errors across sections, in the order written",
            "records: { rotate_bytes: 1 }\ntimezone: Nowhere\ngit: { commit: x }\nchannels: { a: x }\nlimits: { max_concurrent_jobs: 0 }\nproviders: { p: x }\nmain: { history: x, command: x }\ndeny_patterns: 5\n",
        ),
    ];
    for (name, text) in cases {
        settings_case(&mut out, root, name, text);
    }
    insta::assert_snapshot!("loops_yaml", out);
}

const SETTINGS: &str = "providers:\n  anthropic: { kind: anthropic }\n  local: { kind: openai, base_url: \"http://127.0.0.1:11434/v1\" }\ndefaults: { provider: anthropic }\nchannels:\n  general: { kind: discord, url_env: DISCORD_URL }\n  alerts: { kind: slack, url_env: SLACK_URL }\nmcp_servers:\n  everything: { command: [npx, server-everything] }\n  github: { url: \"https://api.example.com/mcp\" }\n";

#[test]
fn config_yaml_diagnostics() {
    let dir = root();
    let root = dir.path();
    let mut out = String::new();
    let cmd = "schedule: { every: 10m }\npayload: { command: [\"./run.sh\"] }\n";
    let cases: &[(&str, &str, &str)] = &[
        ("empty file", "", ""),
        ("not a mapping", "", "- a\n"),
        ("syntax error", "", "schedule: { every: 10m\n"),
        ("duplicate key", "", "schedule:\n  every: 1m\n  every: 2m\n"),
        ("a good command loop", "", cmd),
        (
            "top-level keys: near misses are errors, others are settings",
            "",
            "schedul: { every: 1m }\nchannel: { name: x }\n5: x\npaylod: {}\nTools: [a]\ncollection: [a]\nschedule: { every: 10m }\npayload: { command: [\"./run.sh\"] }\n",
        ),
        (
            "scalar fields wrong",
            "",
            "description: 5\nenabled: yes\ntimeout: 0s\nmax_turns: 0\nsession: shared\nconcurrency: queue\nedit_prompt: 1\nschedule: { every: 10m }\npayload: { command: [\"./run.sh\"] }\n",
        ),
        (
            "durations: no unit, not text, bad, empty",
            "",
            "timeout: 5\nschedule: { every: 10m }\npayload: { command: [\"./run.sh\"] }\nretry: { delay: [1] }\n",
        ),
        (
            "durations: bad text",
            "",
            "timeout: 3x\nschedule: { every: \"\" }\npayload: { command: [\"./run.sh\"] }\n",
        ),
        (
            "good scalar fields",
            "",
            "description: d\nenabled: false\ntimeout: 1m\nmax_turns: 1099511627776\nsession: main\nconcurrency: replace\nedit_prompt: true\nschedule: { every: 10m }\npayload: { command: [\"./run.sh\"] }\n",
        ),
        ("schedule, not a mapping", "", "schedule: every 10m\npayload: { command: [\"./run.sh\"] }\n"),
        ("no schedule", "", "payload: { command: [\"./run.sh\"] }\n"),
        (
            "schedule, unknown keys then the first error",
            "",
            "schedule:\n  evry: 1m\n  zzz: 1\n  timezone: Mars/Base\n  every: 0s\npayload: { command: [\"./run.sh\"] }\n",
        ),
        ("schedule, timezone not text", "", "schedule: { every: 1m, timezone: 5 }\n"),
        ("schedule, no kind", "", "schedule: { timezone: UTC }\n"),
        ("schedule, two kinds", "", "schedule: { cron: \"* * * * *\", every: 1m, at: x }\n"),
        ("schedule, every below a second", "", "schedule: { every: 500ms }\n"),
        ("schedule, every not a duration", "", "schedule: { every: 10 }\n"),
        ("schedule, cron not text", "", "schedule: { cron: 5 }\n"),
        ("schedule, cron wrong", "", "schedule: { cron: \"0 25 * * *\" }\n"),
        ("schedule, at not a time", "", "schedule: { at: [x] }\n"),
        ("schedule, at wrong", "", "schedule: { at: tomorrow }\n"),
        ("schedule, at passed", "", "schedule: { at: 2020-01-01T00:00:00Z }\npayload: { command: [\"./run.sh\"] }\n"),
        ("schedule, at passed but disabled", "", "enabled: false\nschedule: { at: 2020-01-01T00:00:00Z }\npayload: { command: [\"./run.sh\"] }\n"),
        ("schedule, at in the future, local", "", "schedule: { at: \"2099-06-01 10:00\", timezone: America/New_York }\npayload: { command: [\"./run.sh\"] }\n"),
        ("schedule, jitter too long", "", "schedule: { every: 10m, jitter: 10m }\n"),
        ("schedule, jitter bad", "", "schedule: { every: 10m, jitter: x }\n"),
        ("schedule, catch_up wrong", "", "schedule: { every: 10m, catch_up: sometimes }\n"),
        ("schedule, catch_up not text", "", "schedule: { every: 10m, catch_up: [all] }\n"),
        ("schedule, starting_deadline wrong", "", "schedule: { every: 10m, starting_deadline: 5 }\n"),
        (
            "schedule, every field good",
            "",
            "schedule: { cron: \"0 9 * * 1-5\", timezone: Europe/London, jitter: 30s, catch_up: all, starting_deadline: 1h }\npayload: { command: [\"./run.sh\"] }\n",
        ),
        ("payload, not a mapping", "", "schedule: { every: 1m }\npayload: [x]\n"),
        (
            "payload, unknown keys and kind wrong",
            "",
            "schedule: { every: 1m }\npayload: { komand: x, zzz: 1, kind: shell }\n",
        ),
        ("payload, command kind without command", "", "schedule: { every: 1m }\npayload: { kind: command }\n"),
        ("payload, empty command list", "", "schedule: { every: 1m }\npayload: { command: [] }\n"),
        ("payload, empty command string", "", "schedule: { every: 1m }\npayload:\n  command: \"  \"\n"),
        ("payload, command with nothing", "", "schedule: { every: 1m }\npayload:\n  command:\n"),
        ("payload, command a number", "", "schedule: { every: 1m }\npayload: { command: 42 }\n"),
        ("payload, command a mapping", "", "schedule: { every: 1m }\npayload: { command: { a: b } }\n"),
        ("payload, command argument not text", "", "schedule: { every: 1m }\npayload: { command: [x, [y]] }\n"),
        ("payload, empty program", "", "schedule: { every: 1m }\npayload: { command: [\" \", x] }\n"),
        ("payload, script missing", "", "schedule: { every: 1m }\npayload: { command: [./nope.sh, 5, true] }\n"),
        ("payload, shell string", "", "schedule: { every: 1m }\npayload: { command: \"echo hi\" }\n"),
        (
            "prompt loop without providers",
            "",
            "schedule: { every: 1m }\npayload: { kind: prompt, command: [x] }\n",
        ),
        (
            "prompt loop: provider unknown",
            SETTINGS,
            "schedule: { every: 1m }\npayload: { provider: anthropik }\n",
        ),
        (
            "prompt loop: provider without a model",
            SETTINGS,
            "schedule: { every: 1m }\npayload:\n  provider: local\n",
        ),
        (
            "prompt loop: provider and model",
            SETTINGS,
            "schedule: { every: 1m }\npayload: { provider: local, model: llama3.1 }\n",
        ),
        (
            "prompt loop: no provider named, two configured, no default",
            "providers:\n  a: { kind: anthropic }\n  b: { kind: anthropic }\n",
            "schedule: { every: 1m }\n",
        ),
        (
            "prompt loop: deliver warning, post without channels",
            "providers:\n  a: { kind: anthropic }\n",
            "schedule: { every: 1m }\ntools: [post, deliver]\ndeliver: general\n",
        ),
        (
            "tools",
            SETTINGS,
            "schedule: { every: 1m }\ntools: [read_file, finsh, web_search, Read_File, everything, everything.echo, nosuch.tool, evrything, github.x, \"x.\", post]\n",
        ),
        (
            "tools, block list",
            "",
            "schedule: { every: 1m }\ntools:\n  - read_file\n  - finsh\n  # a comment\n\n  - \"web_search\"\n  - github.create_issue\n",
        ),
        (
            "tools, near miss of an MCP server",
            "mcp_servers:\n  github: { url: \"https://api.example.com/mcp\" }\n",
            "schedule: { every: 1m }\ntools: [githb, gitub.issues]\n",
        ),
        ("tools, not a list", "", "schedule: { every: 1m }\ntools: read_file\n"),
        ("tools, not names", "", "schedule: { every: 1m }\ntools: [read_file, 5]\n"),
        (
            "gate",
            "",
            "schedule: { every: 1m }\npayload: { command: [\"./run.sh\"] }\ngate: []\n",
        ),
        (
            "gate forms that work",
            "",
            "schedule: { every: 1m }\npayload: { command: [\"./run.sh\"] }\ngate: { command: [./g.sh, 5] }\n",
        ),
        ("gate, a mapping without command", "", "schedule: { every: 1m }\ngate: { x: 1 }\n"),
        ("gate, list with a mapping", "", "schedule: { every: 1m }\ngate: [{}]\n"),
        ("gate, a shell string", "", "schedule: { every: 1m }\ngate: \"echo x\"\n"),
        (
            "allowed_hosts",
            "",
            "schedule: { every: 1m }\nallowed_hosts: [API.GitHub.com, \"*.example.com\", \"http://x\", \"a b\", \"127.0.0.1:8080\", \"[::1]:8080\", \"*\"]\n",
        ),
        ("allowed_hosts, not names", "", "schedule: { every: 1m }\nallowed_hosts: [5]\n"),
        ("allowed_hosts, not a list", "", "schedule: { every: 1m }\nallowed_hosts: example.com\n"),
        (
            "reads",
            "",
            "schedule: { every: 1m }\nreads:\n  - domains/x/state.md\n  - /abs\n  - ~/x\n  - ../x\n  - \"a\\\\b\"\n  - .git/x\n  - .LOOPS/x\n  - \".\"\n  - \"\"\n  - 5\n  - notes/\n",
        ),
        ("reads, not a list", "", "schedule: { every: 1m }\nreads: notes/\n"),
        (
            "retry",
            "",
            "schedule: { every: 1m }\nretry:\n  max_attempts: 0\n  backoff: linear\n  delay: 5\n  jitter: 2\n  dealy: 1s\n  zzz: 1\n  5: x\n",
        ),
        ("retry, not a mapping", "", "schedule: { every: 1m }\nretry: 3\n"),
        (
            "retry, good values",
            "",
            "schedule: { every: 1m }\npayload: { command: [\"./run.sh\"] }\nretry: { max_attempts: 8589934592, backoff: fixed, delay: 1s, jitter: 0 }\n",
        ),
        ("retry, backoff not text", "", "schedule: { every: 1m }\nretry: { backoff: [x] }\n"),
        (
            "timing",
            "",
            "timing:\n  interval_minutes: 0\n  overlap_window_minutes: -1\n  other: x\npayload: { command: [\"./run.sh\"] }\n",
        ),
        (
            "timing, infinite and not numbers",
            "",
            "timing: { interval_minutes: .inf, overlap_window_minutes: x }\n",
        ),
        (
            "timing, good, and beside a schedule",
            "",
            "schedule: { every: 1m }\ntiming: { interval_minutes: 10, overlap_window_minutes: 11 }\npayload: { command: [\"./run.sh\"] }\n",
        ),
        (
            "timing alone is the schedule",
            "",
            "timing: { interval_minutes: 0.5 }\npayload: { command: [\"./run.sh\"] }\n",
        ),
        ("timing, not a mapping", "", "timing: 10\n"),
        (
            "env",
            "",
            "schedule: { every: 1m }\nenv:\n  GOOD: x\n  NUM: 5\n  1BAD: x\n  my-var: y\n  LIST: [1]\n  5: x\n  API_TOKEN: sekrit\n",
        ),
        ("env, not a mapping", "", "schedule: { every: 1m }\nenv: [A]\n"),
        (
            "deliver, without channels",
            "",
            "schedule: { every: 1m }\npayload: { command: [\"./run.sh\"] }\ndeliver: general\n",
        ),
        (
            "deliver, unknown channel, near miss",
            SETTINGS,
            "schedule: { every: 1m }\npayload: { command: [\"./run.sh\"] }\ndeliver: genral\n",
        ),
        (
            "deliver, unknown channel, far",
            SETTINGS,
            "schedule: { every: 1m }\npayload: { command: [\"./run.sh\"] }\ndeliver: { channel: zzz, thread: 5 }\n",
        ),
        (
            "deliver, no channel named",
            SETTINGS,
            "schedule: { every: 1m }\npayload: { command: [\"./run.sh\"] }\ndeliver: { thread: \"1\" }\n",
        ),
        ("deliver, empty", SETTINGS, "schedule: { every: 1m }\ndeliver: \"  \"\n"),
        ("deliver, a number", SETTINGS, "schedule: { every: 1m }\ndeliver: 5\n"),
        (
            "deliver, good",
            SETTINGS,
            "schedule: { every: 1m }\npayload: { command: [\"./run.sh\"] }\ndeliver: { channel: \" general \", thread: 1234 }\n",
        ),
        (
            "guard keys in a loop",
            "",
            "schedule: { every: 1m }\ndeny_patterns: [\"(\"]\ndetectors: [emial]\nclassification: { NEVER_SHARE: {a: 1} }\n",
        ),
        (
            "errors in the order written",
            "",
            "retry: { max_attempts: 0 }\ntimeout: x\nschedule: { every: x }\nenabled: 1\npayload: { kind: x }\nreads: 5\ndetectors: [nope]\n",
        ),
    ];
    for (name, settings, config) in cases {
        config_case(&mut out, root, name, settings, config);
    }
    config_case_with(
        &mut out,
        root,
        "a prompt loop without prompt.md",
        "",
        "schedule: { every: 1m }\n",
        false,
    );
    config_case_with(
        &mut out,
        root,
        "a prompt loop without prompt.md or payload",
        "",
        "schedule: { every: 1m }\npayload: { model: x }\n",
        false,
    );
    insta::assert_snapshot!("config_yaml", out);
}

#[test]
fn job_params_diagnostics() {
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    let cases: &[(&str, &str)] = &[
        ("shell", "5"),
        ("shell", "{}"),
        ("shell", r#"{"cmd": "ls"}"#),
        ("shell", r#"{"cmd": "  "}"#),
        ("shell", r#"{"cmd": 5}"#),
        ("shell", r#"{"argv": ["ls", "-l"]}"#),
        ("shell", r#"{"argv": []}"#),
        ("shell", r#"{"argv": ["ls", 5]}"#),
        ("shell", r#"{"cmd": "ls", "argv": ["ls"]}"#),
        ("shell", r#"{"cmd": 5, "argv": 5}"#),
        ("shell", r#"{"cmd": "ls", "cwd": "relative"}"#),
        ("shell", r#"{"cmd": "ls", "cwd": 5}"#),
        ("shell", r#"{"cmd": "ls", "cwd": "/tmp"}"#),
        ("shell", r#"{"cmd": "ls", "env": {"A": 1}}"#),
        ("shell", r#"{"cmd": "ls", "env": ["A"]}"#),
        (
            "shell",
            r#"{"cmd": "ls", "env": {"A": "b"}, "inherit": "A"}"#,
        ),
        ("shell", r#"{"cmd": "ls", "inherit": ["A", 5]}"#),
        (
            "shell",
            r#"{"cmd": "ls", "inherit": ["GITHUB_TOKEN"], "timeout": 5}"#,
        ),
        ("shell", r#"{"timeout": 5, "cmd": "ls", "cwd": "x"}"#),
        ("agent", "[]"),
        ("agent", "{}"),
        ("agent", r#"{"prompt": "  "}"#),
        ("agent", r#"{"prompt": 5}"#),
        ("agent", r#"{"prompt": "x", "tools": 5}"#),
        ("agent", r#"{"prompt": "x", "tools": ["read_file", 5]}"#),
        ("agent", r#"{"prompt": "x", "tools": ["read_fiel"]}"#),
        ("agent", r#"{"prompt": "x", "tools": ["Read_File"]}"#),
        ("agent", r#"{"prompt": "x", "tools": "read_file, finsh"}"#),
        ("agent", r#"{"prompt": "x", "tools": "read_file,, github"}"#),
        (
            "agent",
            r#"{"prompt": "x", "tools": ["github.create_issue", "web_search"]}"#,
        ),
        ("agent", r#"{"prompt": "x", "tools": ["bad name"]}"#),
        ("agent", r#"{"prompt": "x", "tools": ["x."]}"#),
        ("agent", r#"{"prompt": "x", "tools": [".x"]}"#),
        ("agent", r#"{"prompt": "x", "max_turns": 0}"#),
        ("agent", r#"{"prompt": "x", "max_turns": 1.5}"#),
        ("agent", r#"{"prompt": "x", "max_turns": 3}"#),
        ("agent", r#"{"prompt": "x", "model": 5}"#),
        ("agent", r#"{"prompt": "x", "provider": null}"#),
        ("agent", r#"{"prompt": "x", "input_vars": []}"#),
        (
            "agent",
            r#"{"prompt": "x", "input_vars": {"a": 1}, "model": "m", "provider": "p"}"#,
        ),
        ("agent", r#"{"prompt": "x", "cmd": "ls"}"#),
        ("agent", r#"{"cmd": "ls", "tools": 5}"#),
        ("aggregate", "{}"),
        ("aggregate", r#"{"tools": ["finsh"]}"#),
        ("aggregate", r#"{"prompt": "sum up", "zzz": 1}"#),
        ("bogus", "{}"),
    ];
    let mut out = String::new();
    for (kind, params) in cases {
        let spec: JobSpec =
            serde_json::from_str(&format!("{{\"kind\": \"{kind}\", \"params\": {params}}}"))
                .expect("a spec");
        let result = match plan(&spec, now) {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        writeln!(out, "{kind} {params}\n  {result}").unwrap();
    }
    insta::assert_snapshot!("job_params", out);
}
