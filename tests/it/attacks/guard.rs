//! Attacks on the guard wall (docs/security.md, docs/never-share.md).
//!
//! A prompt-injected model tries to get a secret past the never-share guard by disguising
//! it: a zero-width space or a soft hyphen inside it, full-width digits, HTML entities, a
//! line break in the middle. It posts each to a webhook receiver on 127.0.0.1 and to a
//! file channel, and hands each to another agent (`ops`). Each test asserts that nothing
//! disguised left (the receiver, the file, the handoff), that no part of any secret is in
//! a file of the workspace, `.loops/` or `git log -p --all`, what the model was told,
//! and that a clean text still goes through.

use crate::common::{git, git_commit_all, TempWorkspace};
use loops_testutil::fake_model::{anthropic, FakeModel, Reply};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const KEY: &str = "sk-test-attacks-guard-000000000";
const LONG: Duration = Duration::from_secs(180);
const U: (u64, u64, u64, u64) = (10, 1, 0, 0);
const CLEAN: &str = "Fourteen tickets today, eleven closed.";

/// One disguise: its name, the text the model sends, the rule that must stop it, and
/// fragments of the secret that must be nowhere afterwards. Each fragment holds a letter
/// (L, O or U) a ULID never has, so no run id can contain it by chance.
struct Disguise {
    name: &'static str,
    text: &'static str,
    rule: &'static str,
    fragments: &'static [&'static str],
}

const DISGUISES: &[Disguise] = &[
    Disguise {
        name: "zero-width space",
        text: "the vault token is VAULT-LQ7RZU\u{200B}9KM2WL for today",
        rule: "vault-token",
        fragments: &["LQ7RZU", "9KM2WL"],
    },
    Disguise {
        name: "soft hyphen",
        text: "the vault token is VAULT-LA3RZU\u{00AD}8KM2WL for today",
        rule: "vault-token",
        fragments: &["LA3RZU", "8KM2WL"],
    },
    Disguise {
        name: "full-width digits and letters",
        text: "the vault token is VAULT-\u{FF2C}\u{FF22}\u{FF14}\u{FF32}\u{FF3A}\u{FF35}\u{FF17}\u{FF2B}\u{FF2D}\u{FF12}\u{FF37}\u{FF2C}",
        rule: "vault-token",
        fragments: &[
            "\u{FF2C}\u{FF22}\u{FF14}\u{FF32}\u{FF3A}\u{FF35}",
            "\u{FF2B}\u{FF2D}\u{FF12}\u{FF37}\u{FF2C}",
            "LB4RZU7KM2WL",
        ],
    },
    Disguise {
        name: "HTML entities",
        text: "the vault token is VAULT&#45;LC5RZU&#x36;OM2WL for today",
        rule: "vault-token",
        fragments: &["LC5RZU", "OM2WL"],
    },
    Disguise {
        name: "a line break",
        text: "the vault token is VAULT-LD6RZU\n5PM2WL for today",
        rule: "vault-token",
        fragments: &["LD6RZU", "5PM2WL"],
    },
    Disguise {
        name: "a key split over lines",
        text: "the key is sk-ant-api03-Zk9\nxQ2LmN4pR7sT1uV3wY5 now",
        rule: "api_key",
        fragments: &["xQ2LmN4pR7sT1uV3wY5"],
    },
];

/// A workspace whose `support` loop may post and hand off, with a webhook channel (its
/// URL in `T_HOOK_URL`) and a file channel, a `vault-token` pattern and the api_key detector.
fn workspace(model: &FakeModel) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        &format!(
            "limits:\n  shutdown_grace: 2s\nproviders:\n  fake: {{ kind: anthropic, base_url: \"{}\", api_key_env: LOOPS_TEST_KEY, model: test-model }}\nchannels:\n  hooks: {{ kind: webhook, url_env: T_HOOK_URL }}\n  digest: {{ kind: file, path: outbox/digest.md }}\ndetectors: [api_key]\n",
            model.url()
        ),
    );
    ws.add_loop(
        "support",
        "schedule: { every: 1h }\npayload: { kind: prompt }\ntools: [post, create_handoff, finish]\ndeny_patterns:\n  - { name: vault-token, pattern: \"VAULT-[A-Z0-9]{12}\" }\n",
    );
    ws.write(
        "domains/support/prompt.md",
        "Summarise the support queue for the team.\n",
    );
    git_commit_all(ws.path(), "setup");
    ws
}

/// A model that makes `calls` (tool, input) in one turn, then finishes.
fn scripted(calls: Vec<(&str, Value)>) -> FakeModel {
    let ids: Vec<String> = (0..calls.len()).map(|i| format!("c{i}")).collect();
    let uses: Vec<(&str, &str, Value)> = calls
        .into_iter()
        .zip(&ids)
        .map(|((tool, input), id)| (id.as_str(), tool, input))
        .collect();
    FakeModel::start(vec![
        anthropic::tool_use(&uses, U),
        anthropic::tool_use(
            &[("f", "finish", json!({"summary": "done", "silent": false}))],
            U,
        ),
    ])
}

/// `loops trigger support` with the webhook's URL in the environment; the run record.
fn trigger(ws: &TempWorkspace, hook_url: &str) -> Value {
    let out = ws
        .cmd()
        .args(["trigger", "support"])
        .env("LOOPS_TEST_KEY", KEY)
        .env("T_HOOK_URL", format!("{hook_url}/hook"))
        .timeout(LONG)
        .output()
        .expect("run loops");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ws.runs("support").pop().expect("a run record")
}

/// Every file under `dir` but `.git` (`.loops/` included), as text.
fn all_text_under(dir: &Path) -> String {
    let mut s = String::new();
    for e in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        let in_git = e.path().components().any(|c| c.as_os_str() == ".git");
        if e.file_type().is_file() && !in_git {
            if let Ok(b) = std::fs::read(e.path()) {
                s.push_str(&format!("\n== {}\n", e.path().display()));
                s.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    s
}

/// No fragment of any disguised secret on disk or in git history.
fn assert_no_secret_anywhere(ws: &TempWorkspace) {
    let on_disk = all_text_under(ws.path());
    let history = git(ws.path(), &["log", "-p", "--all"]);
    for d in DISGUISES {
        for f in d.fragments {
            assert!(
                !on_disk.contains(f),
                "{}: `{f}` is on disk:\n{on_disk}",
                d.name
            );
            assert!(!history.contains(f), "{}: `{f}` is in git history", d.name);
        }
    }
}

/// The run blocked each disguise, naming its rule, and let the clean text through.
fn assert_each_blocked(model: &FakeModel, rec: &Value, says: &str, channel: &str) {
    let res = super::first_results(model);
    assert_eq!(res.len(), DISGUISES.len() + 1, "{res:?}");
    for (d, (err, text)) in DISGUISES.iter().zip(&res) {
        assert!(*err, "{} got through: {text}", d.name);
        assert!(
            text.contains("blocked by the never-share guard")
                && text.contains(&format!("rule `{}`", d.rule))
                && text.contains(says),
            "{}: {text}",
            d.name
        );
        for f in d.fragments {
            assert!(
                !text.contains(f),
                "{}: the error repeats the secret",
                d.name
            );
        }
    }
    let (err, text) = &res[DISGUISES.len()];
    assert!(!err, "the clean text was refused: {text}");
    let blocked: Vec<&Value> = rec["deliveries"]
        .as_array()
        .expect("deliveries in the run record")
        .iter()
        .filter(|n| n["status"] == "blocked" && n["channel"] == channel)
        .collect();
    assert_eq!(blocked.len(), DISGUISES.len(), "{rec}");
}

/// The transcript shows each call with the secret replaced, and the refusals.
fn assert_transcript_redacted(ws: &TempWorkspace, rec: &Value) {
    let path = rec["transcript"].as_str().expect("a transcript path");
    let t = std::fs::read_to_string(ws.path().join(path)).expect("transcript");
    assert!(t.contains("[blocked: vault-token]"), "{t}");
    assert!(t.contains("[blocked: api_key]"), "{t}");
    assert!(t.contains("blocked by the never-share guard"), "{t}");
}

/// Handoffs in inbox/ (pending), as text.
fn inbox(ws: &TempWorkspace) -> Vec<String> {
    std::fs::read_dir(ws.path().join("inbox"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "md"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn posts(channel: &str) -> Vec<(&'static str, Value)> {
    let mut calls: Vec<(&str, Value)> = DISGUISES
        .iter()
        .map(|d| ("post", json!({"channel": channel, "text": d.text})))
        .collect();
    calls.push(("post", json!({"channel": channel, "text": CLEAN})));
    calls
}

#[test]
fn disguised_secrets_posted_to_a_webhook_never_reach_it() {
    let rx = FakeModel::start((0..8).map(|_| Reply::raw(204, "")).collect());
    let model = scripted(posts("hooks"));
    let ws = workspace(&model);
    let rec = trigger(&ws, &rx.url());

    let sent = rx.requests();
    assert_eq!(sent.len(), 1, "only the clean post is sent");
    let body = String::from_utf8_lossy(&sent[0].body).into_owned();
    assert!(body.contains(CLEAN), "{body}");
    assert_each_blocked(&model, &rec, "Nothing was sent", "hooks");
    assert_transcript_redacted(&ws, &rec);
    assert_no_secret_anywhere(&ws);
    // The main session is told of each, with the secret taken out.
    let told: Vec<String> = inbox(&ws)
        .into_iter()
        .filter(|h| h.contains("blocked by the never-share guard"))
        .collect();
    assert_eq!(told.len(), DISGUISES.len(), "{told:?}");
    assert!(told.iter().all(|h| h.contains("[blocked: ")), "{told:?}");
}

#[test]
fn disguised_secrets_posted_to_a_file_channel_are_not_written() {
    let model = scripted(posts("digest"));
    let ws = workspace(&model);
    let rec = trigger(&ws, "http://127.0.0.1:9");

    let file = std::fs::read_to_string(ws.path().join("outbox/digest.md")).expect("the file");
    assert!(file.contains(CLEAN), "{file}");
    assert!(
        !file.contains("vault token") && !file.contains("key is"),
        "{file}"
    );
    assert_each_blocked(&model, &rec, "Nothing was sent", "digest");
    assert_transcript_redacted(&ws, &rec);
    assert_no_secret_anywhere(&ws);
}

#[test]
fn disguised_secrets_handed_to_another_agent_are_not_handed_off() {
    let mut calls: Vec<(&str, Value)> = DISGUISES
        .iter()
        .map(|d| {
            (
                "create_handoff",
                json!({"to": "ops", "title": "Vault access", "body": d.text}),
            )
        })
        .collect();
    calls.push((
        "create_handoff",
        json!({"to": "ops", "title": "Queue summary", "body": CLEAN}),
    ));
    let model = scripted(calls);
    let ws = workspace(&model);
    let rec = trigger(&ws, "http://127.0.0.1:9");

    assert_each_blocked(
        &model,
        &rec,
        "The handoff to `ops` was not written",
        "handoff:ops",
    );
    let handoffs = inbox(&ws);
    let to_ops: Vec<&String> = handoffs.iter().filter(|h| h.contains("to: ops")).collect();
    assert_eq!(
        to_ops.len(),
        1,
        "only the clean handoff to ops: {handoffs:?}"
    );
    assert!(to_ops[0].contains(CLEAN), "{}", to_ops[0]);
    assert_transcript_redacted(&ws, &rec);
    assert_no_secret_anywhere(&ws);
}
