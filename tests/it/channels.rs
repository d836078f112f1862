//! Delivery channels and the never-share guard, against local HTTP receivers on 127.0.0.1
//! standing in for Discord, Slack, Teams and a generic webhook.

use crate::common::{git, git_commit_all, wait_until, Out, TempWorkspace};
use loops_testutil::fake_model::FakeModel;
use loops_testutil::fake_model::{anthropic, Recorded, Reply};
use loops_testutil::process::signal_child;
use loops_testutil::Signal;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const KEY: &str = "sk-test-channels-0000000000";
const HOOK_SECRET: &str = "s3cr3t-signing-key-for-tests";
const LONG: Duration = Duration::from_secs(120);

fn ok() -> Reply {
    Reply::raw(204, "")
}

/// A receiver answering `replies` in order (then 500).
fn receiver(replies: Vec<Reply>) -> FakeModel {
    FakeModel::start(replies)
}

fn body_json(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).expect("a JSON body")
}

/// A workspace with no example loop and these loops.yaml lines, committed.
fn workspace(yaml: &str) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write("loops.yaml", yaml);
    git_commit_all(ws.path(), "setup");
    ws
}

/// Every channel kind that speaks HTTP, all pointing at `url` (each at its own path).
fn http_channels(url: &str, retry: &str) -> (String, Vec<(String, String)>) {
    let yaml = format!(
        "channels:\n  general: {{ kind: discord, url_env: T_DISCORD_URL, username: loops-bot{retry} }}\n  team: {{ kind: slack, url_env: T_SLACK_URL{retry} }}\n  teams: {{ kind: teams, url_env: T_TEAMS_URL{retry} }}\n  hooks:\n    kind: webhook\n    url_env: T_HOOK_URL\n    secret_env: T_HOOK_SECRET\n    headers: {{ Authorization: T_HOOK_AUTH }}\n    retry: {{ max_attempts: 3, delay: 10ms }}\n"
    );
    let env = vec![
        (
            "T_DISCORD_URL".to_string(),
            format!("{url}/discord/123/tok"),
        ),
        ("T_SLACK_URL".to_string(), format!("{url}/slack/T0/B0/xyz")),
        ("T_TEAMS_URL".to_string(), format!("{url}/teams/workflow")),
        ("T_HOOK_URL".to_string(), format!("{url}/hook")),
        ("T_HOOK_SECRET".to_string(), HOOK_SECRET.to_string()),
        (
            "T_HOOK_AUTH".to_string(),
            "Bearer hook-auth-value-123".to_string(),
        ),
    ];
    (yaml, env)
}

fn loops(ws: &TempWorkspace, env: &[(String, String)], args: &[&str]) -> Out {
    let mut c = ws.cmd();
    c.args(args).env("LOOPS_TEST_KEY", KEY).timeout(LONG);
    for (k, v) in env {
        c.env(k, v);
    }
    Out::of(&mut c)
}

/// Every file under `dir` as text (binary files lossily).
fn all_text_under(dir: &Path) -> String {
    let mut s = String::new();
    for e in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if e.file_type().is_file() && !e.path().components().any(|c| c.as_os_str() == ".git") {
            if let Ok(b) = std::fs::read(e.path()) {
                s.push_str(&format!("\n== {}\n", e.path().display()));
                s.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    s
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
    m.update(body);
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn inbox_texts(ws: &TempWorkspace) -> Vec<String> {
    std::fs::read_dir(ws.path().join("inbox"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "md"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn each_http_channel_sends_its_own_wire_format_with_the_exact_headers() {
    let rx = receiver(vec![ok(), ok(), ok(), ok()]);
    let (yaml, env) = http_channels(&rx.url(), "");
    let ws = workspace(&yaml);

    for (channel, text, thread) in [
        ("general", "Deploy finished: v1.4.2", Some("998877")),
        (
            "team",
            "Standup notes are in the doc",
            Some("1700000000.000100"),
        ),
        ("teams", "Build *green* on main", None),
        ("hooks", "Nightly report ready", Some("t-1")),
    ] {
        let mut args = vec!["post", channel, text, "--as", "reporter", "--run", "r-1"];
        if let Some(t) = thread {
            args.extend(["--thread", t]);
        }
        let out = loops(&ws, &env, &args);
        assert_eq!(
            out.code,
            Some(0),
            "{channel}: {}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains(&format!("posted to {channel}")),
            "{}",
            out.stdout
        );
    }
    let reqs = rx.wait_for_requests(4, LONG);
    assert_eq!(reqs.len(), 4);
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    }

    // Discord: content, username; the thread goes in the query.
    assert_eq!(reqs[0].path, "/discord/123/tok?thread_id=998877");
    assert_eq!(
        body_json(&reqs[0]),
        json!({"content": "Deploy finished: v1.4.2", "username": "loops-bot"})
    );
    // Slack: text and thread_ts.
    assert_eq!(reqs[1].path, "/slack/T0/B0/xyz");
    assert_eq!(
        body_json(&reqs[1]),
        json!({"text": "Standup notes are in the doc", "thread_ts": "1700000000.000100"})
    );
    // Teams (workflow / incoming webhook): an Adaptive Card with one text block.
    assert_eq!(reqs[2].path, "/teams/workflow");
    let t = body_json(&reqs[2]);
    assert_eq!(t["type"], "message");
    let card = &t["attachments"][0];
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["content"]["type"], "AdaptiveCard");
    assert_eq!(
        card["content"]["body"][0],
        json!({"type": "TextBlock", "text": "Build *green* on main", "wrap": true})
    );
    // Webhook: the JSON envelope, signed over the exact body bytes.
    let h = &reqs[3];
    assert_eq!(h.path, "/hook");
    let b = body_json(h);
    assert_eq!(b["text"], "Nightly report ready");
    assert_eq!(b["channel"], "hooks");
    assert_eq!(b["thread"], "t-1");
    assert_eq!(b["loop"], "reporter");
    assert_eq!(b["run"], "r-1");
    let id = b["id"].as_str().expect("id").to_string();
    assert_eq!(h.header("x-loops-delivery"), Some(id.as_str()));
    assert_eq!(h.header("idempotency-key"), Some(id.as_str()));
    assert_eq!(
        h.header("x-loops-signature").map(str::to_string),
        Some(format!("sha256={}", hmac_hex(HOOK_SECRET, &h.body)))
    );
    assert_eq!(
        h.header("authorization"),
        Some("Bearer hook-auth-value-123")
    );
    assert!(h
        .header("x-loops-timestamp")
        .is_some_and(|t| t.parse::<i64>().is_ok()));

    // Records for each, and no URL or secret written anywhere.
    let recs: Value = serde_json::from_str(&loops(&ws, &env, &["deliveries", "--json"]).stdout)
        .expect("deliveries --json");
    let recs = recs.as_array().expect("array");
    assert_eq!(recs.len(), 4, "{recs:?}");
    assert!(recs.iter().all(|r| r["status"] == "delivered"), "{recs:?}");
    let listed = |limit: &str| {
        let out = loops(&ws, &env, &["deliveries", "--json", "--limit", limit]).stdout;
        let v: Value = serde_json::from_str(&out).expect("deliveries --json --limit");
        v.as_array().map(Vec::len).unwrap_or_default()
    };
    assert_eq!(
        (listed("0"), listed("1")),
        (4, 1),
        "--limit 0 is all of them"
    );
    let on_disk = all_text_under(ws.path());
    for (_, v) in &env {
        assert!(
            !on_disk.contains(v.as_str()),
            "{v} was written somewhere:\n{on_disk}"
        );
    }
    let list = loops(&ws, &env, &["channels"]);
    assert!(
        list.stdout.contains("general") && list.stdout.contains("1 ok"),
        "{}",
        list.stdout
    );
    assert!(!list.stdout.contains(&rx.url()), "{}", list.stdout);
}

#[test]
fn the_same_run_posting_the_same_text_is_sent_once() {
    let rx = receiver(vec![ok(), ok(), ok()]);
    let (yaml, env) = http_channels(&rx.url(), "");
    let ws = workspace(&yaml);
    for _ in 0..3 {
        let out = loops(
            &ws,
            &env,
            &["post", "team", "Same words", "--run", "slot-9"],
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    let again = loops(
        &ws,
        &env,
        &["post", "team", "Same words", "--run", "slot-9", "--json"],
    );
    let v: Value = serde_json::from_str(&again.stdout).expect("json");
    assert_eq!(v["duplicate"], true, "{v}");
    // A different run, or different words, is a new message.
    assert_eq!(
        loops(
            &ws,
            &env,
            &["post", "team", "Same words", "--run", "slot-10"]
        )
        .code,
        Some(0)
    );
    assert_eq!(
        loops(
            &ws,
            &env,
            &["post", "team", "Other words", "--run", "slot-9"]
        )
        .code,
        Some(0)
    );
    std::thread::sleep(Duration::from_millis(300));
    let texts: Vec<Value> = rx
        .requests()
        .iter()
        .map(|r| body_json(r)["text"].clone())
        .collect();
    assert_eq!(
        texts,
        vec![
            json!("Same words"),
            json!("Same words"),
            json!("Other words")
        ]
    );
}

#[test]
fn transient_failures_are_retried_then_the_text_is_handed_to_main() {
    let rx = receiver(vec![
        Reply::raw(503, "busy"),
        Reply::raw(429, "slow down").with_header("retry-after", "0"),
        Reply::raw(500, "oops"),
        Reply::raw(404, "Unknown Webhook"),
    ]);
    let (yaml, env) = http_channels(&rx.url(), "");
    let ws = workspace(&yaml);
    let out = loops(
        &ws,
        &env,
        &[
            "post",
            "hooks",
            "The quarterly numbers are in",
            "--as",
            "watcher",
        ],
    );
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("failed after 3 attempt(s)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("HTTP 500"), "{}", out.stderr);
    assert_eq!(rx.requests().len(), 3);

    // Nothing said is lost: the main session has it, with the text.
    let inbox = inbox_texts(&ws);
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert!(
        inbox[0].contains("The quarterly numbers are in"),
        "{}",
        inbox[0]
    );
    assert!(inbox[0].contains("delivery-failed"), "{}", inbox[0]);
    assert!(inbox[0].contains("from: watcher"), "{}", inbox[0]);
    // The handoff is committed like every other.
    assert!(
        git(ws.path(), &["log", "--oneline"]).contains("handoff"),
        "not committed"
    );

    let failed: Value =
        serde_json::from_str(&loops(&ws, &env, &["deliveries", "--failed", "--json"]).stdout)
            .expect("json");
    assert_eq!(failed[0]["status"], "delivery_failed", "{failed}");
    assert_eq!(failed[0]["attempts"], 3, "{failed}");
    assert!(failed[0]["handoff"].is_string(), "{failed}");

    // A permanent error (the webhook is gone) is not retried.
    let out = loops(
        &ws,
        &env,
        &["post", "hooks", "Second message", "--as", "watcher"],
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("HTTP 404") && out.stderr.contains("T_HOOK_URL"),
        "{}",
        out.stderr
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rx.requests().len(), 4);

    // An unset URL variable is named, with what to do.
    let mut no_env = env.clone();
    no_env.retain(|(k, _)| k != "T_SLACK_URL");
    let out = loops(&ws, &no_env, &["post", "team", "hello"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("T_SLACK_URL is not set"),
        "{}",
        out.stderr
    );
}

#[test]
fn silent_tokens_and_unknown_channels_are_refused_without_sending() {
    let rx = receiver(vec![ok()]);
    let (yaml, env) = http_channels(&rx.url(), "");
    let ws = workspace(&yaml);
    for token in ["HEARTBEAT_OK", "NO_REPLY", " SILENT \n"] {
        let out = loops(&ws, &env, &["post", "general", token]);
        assert_eq!(out.code, Some(1), "{token}");
        assert!(out.stderr.contains("never delivered"), "{}", out.stderr);
    }
    let out = loops(&ws, &env, &["post", "genral", "hi"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("did you mean `general`"),
        "{}",
        out.stderr
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(rx.requests().is_empty());
}

#[test]
fn a_command_loop_delivers_its_stdout_to_file_http_and_command_channels() {
    let rx = receiver(vec![ok()]);
    let (mut yaml, env) = http_channels(&rx.url(), "");
    yaml.push_str("  digest: { kind: file, path: \"outbox/{channel}-{date}.md\" }\n  pipe: { kind: command, command: \"cat > piped.txt; echo $LOOPS_CHANNEL $LOOPS_LOOP >> piped.txt\" }\n");
    let ws = workspace(&yaml);
    ws.add_loop(
        "news",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"echo 'Three new issues today'\" }\ndeliver: digest\n",
    );
    ws.add_loop(
        "ping",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"echo 'Ping from the server'\" }\ndeliver: { channel: team, thread: \"42.1\" }\n",
    );
    ws.add_loop(
        "pipe",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"echo 'Through a program'\" }\ndeliver: pipe\n",
    );
    ws.add_loop(
        "quiet",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"echo HEARTBEAT_OK\" }\ndeliver: team\n",
    );
    git_commit_all(ws.path(), "loops");

    for name in ["news", "ping", "pipe", "quiet"] {
        let out = loops(&ws, &env, &["trigger", name]);
        assert_eq!(out.code, Some(0), "{name}: {}\n{}", out.stdout, out.stderr);
    }
    // The file channel: appended to, committed with the run.
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let digest = std::fs::read_to_string(ws.path().join(format!("outbox/digest-{date}.md")))
        .expect("the digest file");
    assert!(
        digest.contains("Three new issues today") && digest.contains("news"),
        "{digest}"
    );
    assert!(
        git(ws.path(), &["ls-files", "outbox"]).contains("digest-"),
        "not committed"
    );
    let rec = ws.runs("news").pop().expect("a record");
    assert_eq!(rec["outcome"], "acted");
    assert_eq!(rec["deliveries"][0]["status"], "delivered", "{rec}");
    // HTTP, in its thread.
    let reqs = rx.wait_for_requests(1, LONG);
    assert_eq!(
        body_json(&reqs[0]),
        json!({"text": "Ping from the server", "thread_ts": "42.1"})
    );
    // A program, given the text on stdin.
    let piped = std::fs::read_to_string(ws.path().join("piped.txt")).expect("piped.txt");
    assert_eq!(piped, "Through a program\npipe pipe\n");
    // A silent token is a silent run: nothing delivered.
    let q = ws.runs("quiet").pop().expect("a record");
    assert_eq!(q["outcome"], "silent", "{q}");
    assert!(q.get("deliveries").is_none(), "{q}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rx.requests().len(), 1);
}

#[test]
fn a_delivery_failure_does_not_fail_the_run_and_is_recorded_separately() {
    let rx = receiver(vec![Reply::raw(500, "down"), Reply::raw(500, "down")]);
    let (yaml, env) = http_channels(&rx.url(), "");
    let yaml = yaml.replace(
        "url_env: T_SLACK_URL",
        "url_env: T_SLACK_URL, retry: { max_attempts: 2, delay: 10ms }",
    );
    let ws = workspace(&yaml);
    ws.add_loop(
        "ping",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"echo 'Disk is at 91%'\" }\ndeliver: team\n",
    );
    git_commit_all(ws.path(), "loops");
    let out = loops(&ws, &env, &["trigger", "ping"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let rec = ws.runs("ping").pop().expect("a record");
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert_eq!(rec["deliveries"][0]["status"], "delivery_failed", "{rec}");
    assert!(rec["deliveries"][0]["handoff"].is_string(), "{rec}");
    let inbox = inbox_texts(&ws);
    assert!(
        inbox.iter().any(|h| h.contains("Disk is at 91%")),
        "{inbox:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Prompt loops: the post tool, retried runs, and the guard.

fn anthropic_provider(model: &FakeModel) -> String {
    format!(
        "providers:\n  fake: {{ kind: anthropic, base_url: \"{}\", api_key_env: LOOPS_TEST_KEY, model: test-model }}\n",
        model.url()
    )
}

const U: (u64, u64, u64, u64) = (100, 10, 0, 0);

#[test]
fn a_retried_scheduled_run_posts_its_message_once() {
    let rx = receiver(vec![ok(), ok()]);
    let model = FakeModel::start(vec![
        anthropic::tool_use(
            &[(
                "p1",
                "post",
                json!({"channel": "team", "text": "Weekly summary: all green"}),
            )],
            U,
        ),
        // The run then fails: the provider keeps failing (500, past its retries): a
        // transient failure, so the slot is retried. (A 400 would not be: the same
        // request would be refused again.)
        loops_testutil::fake_model::server_error(),
        loops_testutil::fake_model::server_error(),
        loops_testutil::fake_model::server_error(),
        // The retry of the same slot says the same thing again, then finishes.
        anthropic::tool_use(
            &[(
                "p2",
                "post",
                json!({"channel": "team", "text": "Weekly summary: all green"}),
            )],
            U,
        ),
        anthropic::tool_use(
            &[("f", "finish", json!({"summary": "posted", "silent": false}))],
            U,
        ),
    ]);
    let (yaml, env) = http_channels(&rx.url(), "");
    let ws = workspace(&format!("{yaml}{}", anthropic_provider(&model)));
    let at = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    ws.add_loop(
        "weekly",
        &format!("schedule: {{ at: \"{at}\" }}\npayload: {{ kind: prompt }}\ntools: [post, finish]\nretry: {{ max_attempts: 2, delay: 1s, jitter: 0 }}\n"),
    );
    ws.write(
        "domains/weekly/prompt.md",
        "Post the weekly summary to team.\n",
    );
    git_commit_all(ws.path(), "loop");

    let mut cmd = crate::common::loops_std_cmd(ws.path());
    cmd.arg("run").env("LOOPS_TEST_KEY", KEY);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let log = ws.path().join(".git/daemon.log");
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("loops run");
    let done = wait_until(LONG, || ws.runs("weekly").len() >= 2);
    signal_child(&child, Signal::TERM);
    let _ = child.wait();
    let runs = ws.runs("weekly");
    assert!(
        done,
        "{runs:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(runs[0]["outcome"], "failed", "{runs:?}");
    assert_eq!(runs[1]["attempt"], 2, "{runs:?}");
    assert_eq!(runs[0]["deliveries"][0]["status"], "delivered", "{runs:?}");
    assert_eq!(runs[1]["deliveries"][0]["status"], "duplicate", "{runs:?}");
    // The model was told the second post was not sent again.
    let reqs = model.requests();
    let told = String::from_utf8_lossy(&reqs.last().expect("requests").body).into_owned();
    assert!(told.contains("not sent again"), "{told}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rx.requests().len(), 1, "the message was posted twice");
}

#[test]
fn the_guard_blocks_every_detector_and_a_custom_pattern_and_keeps_no_secret() {
    let rx = receiver(vec![ok()]);
    let secrets = [
        ("email", "write to alice.jones@example.org for access"),
        ("phone", "her number is +44 20 7946 0958"),
        ("api_key", "use key sk-ant-api03-Zk9xQ2LmN4pR7sT1uV3wY5"),
        ("ip", "the database is at 10.20.30.40"),
        ("customer-id", "ticket for CUST-482913 is closed"),
    ];
    let mut script = Vec::new();
    for (i, (_, text)) in secrets.iter().enumerate() {
        let id = format!("b{i}");
        script.push(anthropic::tool_use(
            &[(
                id.as_str(),
                "post",
                json!({"channel": "team", "text": text}),
            )],
            U,
        ));
    }
    script.push(anthropic::tool_use(
        &[(
            "h",
            "create_handoff",
            json!({"to": "ops", "title": "Call back", "body": "her number is +44 20 7946 0958"}),
        )],
        U,
    ));
    script.push(anthropic::tool_use(
        &[(
            "ok",
            "post",
            json!({"channel": "team", "text": "All five tickets are closed."}),
        )],
        U,
    ));
    script.push(anthropic::tool_use(
        &[("f", "finish", json!({"summary": "done", "silent": false}))],
        U,
    ));
    let model = FakeModel::start(script);
    let (yaml, env) = http_channels(&rx.url(), "");
    let ws = workspace(&format!(
        "{yaml}{}detectors: [email, phone, api_key]\n",
        anthropic_provider(&model)
    ));
    ws.add_loop(
        "support",
        "schedule: { every: 1h }\npayload: { kind: prompt }\ntools: [post, create_handoff, finish]\nclassification:\n  SAFE_TO_SHARE: [ticket counts]\n  NEVER_SHARE: [customer identifiers, contact details]\n  deny_patterns:\n    - { name: customer-id, pattern: \"CUST-[0-9]{6}\" }\ndetectors: [ip]\n",
    );
    ws.write(
        "domains/support/prompt.md",
        "Summarise the support queue for the team.\n",
    );
    git_commit_all(ws.path(), "loop");

    let out = loops(&ws, &env, &["trigger", "support"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);

    // Only the clean post left.
    std::thread::sleep(Duration::from_millis(200));
    let sent = rx.requests();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(body_json(&sent[0])["text"], "All five tickets are closed.");

    // The model was given the rules, and told which rule stopped each post.
    let reqs = model.requests();
    let system = reqs[0].json()["system"].to_string();
    assert!(
        system.contains("customer identifiers") && system.contains("NEVER share"),
        "{system}"
    );
    for (i, (rule, _)) in secrets.iter().enumerate() {
        let last = reqs[i + 1].json()["messages"]
            .as_array()
            .and_then(|m| m.last().cloned())
            .expect("messages");
        let result = last["content"][0].clone();
        assert_eq!(result["is_error"], true, "{result}");
        let content = result["content"].to_string();
        assert!(
            content.contains(&format!("rule `{rule}`")),
            "{rule}: {content}"
        );
    }
    let handoff_result = reqs[6].json()["messages"]
        .as_array()
        .and_then(|m| m.last().cloned())
        .expect("m");
    assert!(
        handoff_result.to_string().contains("rule `phone`"),
        "{handoff_result}"
    );

    // No secret anywhere on disk: not in the transcript, the run record, the delivery
    // records, the handoffs to main, the history.
    let on_disk = all_text_under(ws.path());
    let history = git(ws.path(), &["log", "-p", "--all"]);
    for needle in [
        "alice.jones@example.org",
        "7946 0958",
        "Zk9xQ2LmN4pR7sT1uV3wY5",
        "10.20.30.40",
        "CUST-482913",
    ] {
        assert!(!on_disk.contains(needle), "{needle} is on disk:\n{on_disk}");
        assert!(!history.contains(needle), "{needle} is in git history");
    }
    let rec = ws.runs("support").pop().expect("record");
    let blocked: Vec<&Value> = rec["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|d| d["status"] == "blocked")
        .collect();
    assert_eq!(blocked.len(), 6, "{rec}");
    // The main session is told, with what matched taken out.
    let inbox = inbox_texts(&ws);
    assert_eq!(inbox.len(), 6, "{inbox:?}");
    assert!(
        inbox.iter().any(|h| h.contains("[blocked: email]")),
        "{inbox:?}"
    );
    assert!(
        inbox.iter().any(|h| h.contains("handoff to ops")),
        "{inbox:?}"
    );
    let transcript =
        std::fs::read_to_string(ws.path().join(rec["transcript"].as_str().expect("t")))
            .expect("transcript");
    assert!(
        transcript.contains("[blocked: customer-id]"),
        "{transcript}"
    );
}

#[test]
fn loops_check_validates_channels_patterns_and_deliver() {
    let ws = workspace(
        "channels:\n  general: { kind: discord, url_env: \"https://discord.com/api/webhooks/1/x\" }\n  digest: { kind: file, path: outbox/d.md }\ndeny_patterns: [\"(unclosed\"]\ndetectors: [emails, phnoe]\n",
    );
    ws.add_loop(
        "x",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"true\" }\ndeliver: digets\ndeny_patterns: [\"a*\"]\n",
    );
    let out = loops(&ws, &[], &["check"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let all = format!("{}{}", out.stdout, out.stderr);
    for needle in [
        "loops.yaml:2:",
        "names an environment variable, not the value",
        "not a valid regex",
        "did you mean `phone`",
        "domains/x/config.yaml:3:",
        "did you mean `digest`",
        "matches an empty text",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }
}

#[test]
fn a_replayed_main_session_wake_posts_nothing_twice() {
    let rx = receiver(vec![ok(), ok()]);
    let text = "Good morning: three meetings today";
    let model = FakeModel::start(vec![
        anthropic::tool_use(
            &[("p1", "post", json!({"channel": "team", "text": text}))],
            U,
        ),
        anthropic::error(400, "the wake fails after posting"),
    ]);
    let (yaml, env) = http_channels(&rx.url(), "");
    let ws = workspace(&format!(
        "{yaml}{}main: {{ prompt: MAIN.md }}\n",
        anthropic_provider(&model)
    ));
    ws.write("MAIN.md", "Deliver what the loops hand you.\n");
    git_commit_all(ws.path(), "main");
    let made = loops(
        &ws,
        &env,
        &[
            "handoff",
            "create",
            "--from",
            "briefing",
            "--title",
            "Morning briefing ready",
            "--body",
            "Post it to team.",
        ],
    );
    assert_eq!(made.code, Some(0), "{}", made.stderr);

    let first = loops(&ws, &env, &["run", "--once"]);
    // A failed wake makes `run --once` exit 1.
    assert_eq!(first.code, Some(1), "{}\n{}", first.stdout, first.stderr);
    let mains = ws.runs("main");
    assert_eq!(mains.len(), 1, "{mains:?}");
    assert_eq!(
        mains[0]["deliveries"][0]["status"], "delivered",
        "{mains:?}"
    );
    // The wake failed: its handoff is back in the inbox, to be worked again.
    let pending: Vec<String> = std::fs::read_dir(ws.path().join("inbox"))
        .expect("inbox")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let id = pending[0].trim_end_matches(".md").to_string();

    // The replayed wake says the same thing again: it is not posted twice.
    model.push(vec![
        anthropic::tool_use(
            &[("p2", "post", json!({"channel": "team", "text": text}))],
            U,
        ),
        anthropic::tool_use(
            &[(
                "c",
                "complete_handoff",
                json!({"id": id, "summary": "posted"}),
            )],
            U,
        ),
        anthropic::tool_use(
            &[(
                "f",
                "finish",
                json!({"summary": "posted the briefing", "silent": false}),
            )],
            U,
        ),
    ]);
    let second = loops(&ws, &env, &["run", "--once"]);
    assert_eq!(second.code, Some(0), "{}\n{}", second.stdout, second.stderr);
    let mains = ws.runs("main");
    assert_eq!(mains.len(), 2, "{mains:?}");
    assert_eq!(
        mains[1]["deliveries"][0]["status"], "duplicate",
        "{mains:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rx.requests().len(), 1, "the briefing was posted twice");
}

#[test]
fn a_script_handing_off_to_another_agent_is_guarded_too() {
    let ws = workspace("detectors: [email]\n");
    ws.add_loop(
        "crm",
        "schedule: { every: 1h }\npayload: { kind: command, command: \"true\" }\ndeny_patterns: [{ name: deal-size, pattern: \"\\\\$[0-9]+k\" }]\n",
    );
    git_commit_all(ws.path(), "loop");
    let blocked = loops(
        &ws,
        &[],
        &[
            "handoff",
            "create",
            "--from",
            "crm",
            "--to",
            "sales-bot",
            "--title",
            "Follow up",
            "--body",
            "Write to bob@example.com",
        ],
    );
    assert_eq!(blocked.code, Some(1), "{}", blocked.stdout);
    assert!(
        blocked.stderr.contains("rule `email`"),
        "{}",
        blocked.stderr
    );
    assert!(
        !blocked.stderr.contains("bob@example.com"),
        "{}",
        blocked.stderr
    );
    let custom = loops(
        &ws,
        &[],
        &[
            "handoff",
            "create",
            "--from",
            "crm",
            "--to",
            "sales-bot",
            "--title",
            "Deal worth $40k",
        ],
    );
    assert_eq!(custom.code, Some(1));
    assert!(
        custom.stderr.contains("rule `deal-size`"),
        "{}",
        custom.stderr
    );
    assert!(inbox_texts(&ws).is_empty());
    // To the main session, which may know everything, it goes through.
    let to_main = loops(
        &ws,
        &[],
        &[
            "handoff",
            "create",
            "--from",
            "crm",
            "--title",
            "Follow up",
            "--body",
            "Write to bob@example.com",
        ],
    );
    assert_eq!(to_main.code, Some(0), "{}", to_main.stderr);
    assert_eq!(inbox_texts(&ws).len(), 1);
}
