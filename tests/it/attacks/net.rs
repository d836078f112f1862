//! Attacks on the net wall (docs/security.md).
//!
//! A prompt-injected model calls `http_get` with the worst URLs it can think of: another
//! port of an allowed host, the allowed address spelt in decimal, hex, octal or as
//! IPv4-mapped IPv6, a name that resolves to loopback. Two real HTTP servers run on
//! 127.0.0.1: the one the loop may reach and a "secret" one on another port. Each test
//! asserts that the secret server got no request, what the model was told (the
//! tool_result) and what the person reads in the transcript.

use crate::common::{git_commit_all, TempWorkspace};
use loops_testutil::fake_model::{anthropic, FakeModel, Reply};
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "sk-test-attacks-net-0000000000";
const LONG: Duration = Duration::from_secs(180);
const U: (u64, u64, u64, u64) = (10, 1, 0, 0);

/// A workspace on the scripted model, with one prompt loop `fetcher` whose config.yaml
/// lists `hosts` in `allowed_hosts`.
fn workspace(model: &FakeModel, hosts: &[String]) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        &format!(
            "limits:\n  shutdown_grace: 2s\nproviders:\n  fake: {{ kind: anthropic, base_url: \"{}\", api_key_env: LOOPS_TEST_KEY, model: test-model }}\n",
            model.url()
        ),
    );
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    ws.add_loop(
        "fetcher",
        &format!(
            "schedule: {{ every: 1h }}\npayload: {{ kind: prompt }}\ntools: [http_get, finish]\nallowed_hosts: [{}]\n",
            list.join(", ")
        ),
    );
    ws.write("domains/fetcher/prompt.md", "Fetch the status page.\n");
    git_commit_all(ws.path(), "setup");
    ws
}

/// A model that calls `http_get` on each URL in one turn, then finishes.
fn fetching(urls: &[String]) -> FakeModel {
    let ids: Vec<String> = (0..urls.len()).map(|i| format!("h{i}")).collect();
    let calls: Vec<(&str, &str, Value)> = urls
        .iter()
        .zip(&ids)
        .map(|(u, id)| (id.as_str(), "http_get", json!({ "url": u })))
        .collect();
    FakeModel::start(vec![
        anthropic::tool_use(&calls, U),
        anthropic::tool_use(
            &[("f", "finish", json!({"summary": "fetched", "silent": true}))],
            U,
        ),
    ])
}

/// `loops trigger fetcher`; the run record and the transcript it names.
fn trigger(ws: &TempWorkspace) -> (Value, String) {
    let out = ws
        .cmd()
        .args(["trigger", "fetcher"])
        .env("LOOPS_TEST_KEY", KEY)
        .timeout(LONG)
        .output()
        .expect("run loops");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = ws.runs("fetcher").pop().expect("a run record");
    let path = rec["transcript"].as_str().expect("a transcript path");
    let transcript = std::fs::read_to_string(ws.path().join(path)).expect("transcript");
    (rec, transcript)
}

fn port(server: &FakeModel) -> u16 {
    server
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("a port in the server's URL")
}

/// The secret service: answers anything, and must never be asked.
fn secret_service() -> FakeModel {
    FakeModel::start(
        (0..8)
            .map(|_| Reply::raw(200, "SECRET-SERVICE-9Q"))
            .collect(),
    )
}

#[test]
fn another_port_of_an_allowed_host_is_refused_and_the_listed_port_still_works() {
    let site = FakeModel::start(vec![Reply::raw(200, "STATUS-PAGE-OK-31")]);
    let secret = secret_service();
    let (a, b) = (port(&site), port(&secret));
    let model = fetching(&[
        format!("http://127.0.0.1:{b}/admin"),
        format!("http://127.0.0.1:{a}/status"),
    ]);
    let ws = workspace(&model, &[format!("127.0.0.1:{a}")]);
    let (rec, transcript) = trigger(&ws);

    assert!(secret.requests().is_empty(), "the other port was reached");
    assert_eq!(site.requests().len(), 1, "the legitimate call went through");
    let res = super::first_results(&model);
    assert_eq!(res.len(), 2, "{res:?}");
    let (err, text) = &res[0];
    assert!(*err, "{text}");
    assert!(
        text.contains(&format!(
            "`127.0.0.1:{b}` is not in this loop's `allowed_hosts`"
        )) && text.contains(&format!("add \"127.0.0.1:{b}\"")),
        "the refusal names the host:port and the fix: {text}"
    );
    assert!(
        !res[1].0 && res[1].1.contains("STATUS-PAGE-OK-31"),
        "{res:?}"
    );
    assert!(
        transcript.contains(&format!("`127.0.0.1:{b}` is not in")),
        "{transcript}"
    );
    assert!(!transcript.contains("SECRET-SERVICE-9Q"));
    assert_eq!(rec["outcome"], "silent", "{rec}");
}

#[test]
fn decimal_hex_octal_and_mapped_spellings_of_the_address_reach_no_other_port() {
    let site = FakeModel::start(
        (0..3)
            .map(|_| Reply::raw(200, "STATUS-PAGE-OK-32"))
            .collect(),
    );
    let secret = secret_service();
    let (a, b) = (port(&site), port(&secret));
    let spellings = [
        "2130706433",
        "0x7f000001",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "127.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ];
    let mut urls: Vec<String> = spellings
        .iter()
        .map(|s| format!("http://{s}:{b}/"))
        .collect();
    // The same spellings do name the listed address on the listed port.
    for s in ["2130706433", "0x7f.1", "0177.0.0.1"] {
        urls.push(format!("http://{s}:{a}/"));
    }
    let model = fetching(&urls);
    let ws = workspace(&model, &[format!("127.0.0.1:{a}")]);
    let (_, transcript) = trigger(&ws);

    assert!(
        secret.requests().is_empty(),
        "a spelling reached the other port"
    );
    let res = super::first_results(&model);
    assert_eq!(res.len(), urls.len(), "{res:?}");
    for (i, s) in spellings.iter().enumerate() {
        let (err, text) = &res[i];
        assert!(*err, "{s}: {text}");
        // Compared as the address it is, and reported so.
        assert!(
            text.contains(&format!("`127.0.0.1:{b}` is not in")),
            "{s}: {text}"
        );
    }
    for (err, text) in &res[spellings.len()..] {
        assert!(!err && text.contains("STATUS-PAGE-OK-32"), "{text}");
    }
    assert_eq!(site.requests().len(), 3);
    assert!(transcript.contains("is not in this loop's `allowed_hosts`"));
}

#[test]
fn an_unlisted_spelling_of_loopback_is_refused_when_only_a_name_is_listed() {
    let secret = secret_service();
    let b = port(&secret);
    let urls: Vec<String> = ["2130706433", "0x7f.1", "[::ffff:7f00:1]", "127.0.0.1"]
        .iter()
        .map(|s| format!("http://{s}:{b}/"))
        .collect();
    let model = fetching(&urls);
    let ws = workspace(&model, &[format!("localhost:{b}"), "example.com".into()]);
    trigger(&ws);
    assert!(secret.requests().is_empty());
    for (err, text) in super::first_results(&model) {
        assert!(
            err && text.contains(&format!("`127.0.0.1:{b}` is not in")),
            "{text}"
        );
    }
}

#[test]
fn a_name_resolving_to_loopback_needs_its_address_listed_too() {
    let secret = secret_service();
    let b = port(&secret);
    let model = fetching(&[format!("http://localhost:{b}/")]);
    let ws = workspace(&model, &[format!("localhost:{b}")]);
    let (_, transcript) = trigger(&ws);

    assert!(
        secret.requests().is_empty(),
        "a listed name opened loopback"
    );
    let res = super::first_results(&model);
    let (err, text) = &res[0];
    assert!(*err, "{text}");
    assert!(
        text.contains("refused: `localhost` resolves to")
            && text.contains("loopback")
            && text.contains(&format!("\"127.0.0.1:{b}\""))
            && text.contains("`allowed_hosts`"),
        "the refusal says exactly what to list: {text}"
    );
    assert!(transcript.contains("a listed name alone never opens an internal address"));

    // Listing the address it names is the fix, and it works.
    let site = FakeModel::start(vec![Reply::raw(200, "LOCAL-DEV-SERVER-33")]);
    let a = port(&site);
    let model = fetching(&[format!("http://localhost:{a}/")]);
    let ws = workspace(
        &model,
        &[format!("localhost:{a}"), format!("127.0.0.1:{a}")],
    );
    trigger(&ws);
    let res = super::first_results(&model);
    assert!(
        !res[0].0 && res[0].1.contains("LOCAL-DEV-SERVER-33"),
        "{res:?}"
    );
}

#[test]
fn loops_check_names_an_unreadable_allowed_hosts_entry_and_the_fix() {
    let model = FakeModel::start(vec![]);
    let ws = workspace(&model, &["127.0.0.1:http".into()]);
    let out = ws.cmd().arg("check").output().expect("loops check");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("domains/fetcher/config.yaml")
            && all.contains("`127.0.0.1:http` is not a host entry")
            && all.contains("from 1 to 65535")
            && all.contains("\"127.0.0.1:8080\""),
        "{all}"
    );
    assert!(model.requests().is_empty());
}
