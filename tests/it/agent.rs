//! Prompt loops end to end: the real `loops` binary, run as a child process, against the
//! fake model server (real HTTP on 127.0.0.1). Each test checks what a person would: the
//! files, git's history and trailers, the run records and transcripts, and what was sent
//! to the model.

use crate::common::{drop_handoff, git, git_commit_all, git_trailers, Out, TempWorkspace};
use loops_testutil::fake_model::{self, anthropic, openai, FakeModel, Recorded, Reply};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API key the runner is given. Distinctive, so a leak anywhere is found by a search.
const KEY: &str = "sk-test-SECRET-q7Zp3LxW9vKeyNeverWritten";
const SOUL: &str = "SOUL-MARKER-4412: I keep this workspace, and I am private to the main session.";
const MAIN_PROMPT: &str = "MAIN-PROMPT-MARKER: do what each handoff asks, then finish.";
/// Generous: a slow machine must not fail these tests.
const LONG: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------
// Setup

fn anthropic_provider(fake: &FakeModel) -> String {
    format!(
        "providers:\n  fake: {{ kind: anthropic, base_url: \"{}\", api_key_env: LOOPS_TEST_KEY, model: test-model }}\n",
        fake.url()
    )
}

fn openai_provider(fake: &FakeModel) -> String {
    format!(
        "providers:\n  fake: {{ kind: openai, base_url: \"{}/v1\", api_key_env: LOOPS_TEST_KEY, model: test-model }}\n",
        fake.url()
    )
}

/// A workspace with `providers` (loops.yaml lines), a model-driven main session when
/// `main`, a distinctive SOUL.md, no example loop; everything committed.
fn workspace(providers: &str, main: bool) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    let mut yaml = format!("limits:\n  shutdown_grace: 2s\n{providers}");
    if main {
        yaml.push_str("main: { prompt: MAIN.md }\n");
        yaml.push_str("channels:\n  general: { kind: file, path: \"outbox/general/{date}.md\" }\n");
    }
    ws.write("loops.yaml", &yaml);
    ws.write("SOUL.md", &format!("{SOUL}\n"));
    ws.write("MAIN.md", &format!("{MAIN_PROMPT}\n"));
    git_commit_all(ws.path(), "setup");
    ws
}

/// A schedule that is never due: for loops in workspaces where `loops run --once` runs,
/// so that an interval slot falling between two commands cannot start an unplanned run.
const NEVER_DUE: &str = "schedule: { at: \"2099-01-01T00:00:00Z\" }\n";

/// A prompt loop `name` (every hour, unless `extra` has a schedule) with extra
/// config.yaml lines, committed.
fn prompt_loop(ws: &TempWorkspace, name: &str, extra: &str, prompt: &str, state: &str) {
    let schedule = if extra.contains("schedule:") {
        ""
    } else {
        "schedule: { every: 1h }\n"
    };
    ws.add_loop(
        name,
        &format!("{schedule}payload: {{ kind: prompt }}\n{extra}"),
    );
    ws.write(&format!("domains/{name}/prompt.md"), prompt);
    ws.write(&format!("domains/{name}/state.md"), state);
    git_commit_all(ws.path(), &format!("loop {name}"));
}

/// `loops ARGS…` in the workspace, with the API key in the environment.
fn loops(ws: &TempWorkspace, args: &[&str]) -> Out {
    Out::of(ws.cmd().args(args).env("LOOPS_TEST_KEY", KEY).timeout(LONG))
}

/// `loops trigger NAME` and the run record it appended.
fn trigger(ws: &TempWorkspace, name: &str) -> (Out, Value) {
    let before = ws.runs(name).len();
    let out = loops(ws, &["trigger", name]);
    let runs = ws.runs(name);
    assert_eq!(
        runs.len(),
        before + 1,
        "one run record per trigger\n{}",
        out.all()
    );
    (out, runs.last().cloned().unwrap())
}

fn commit_count(ws: &TempWorkspace) -> usize {
    git(ws.path(), &["rev-list", "--count", "HEAD"])
        .trim()
        .parse()
        .unwrap()
}

fn trailer<'a>(t: &'a [(String, String)], key: &str) -> Option<&'a str> {
    t.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Anthropic usage: (input, output, cache_read, cache_write).
type Usage = (u64, u64, u64, u64);

/// The sum of anthropic usage tuples.
fn sum(usages: &[Usage]) -> Usage {
    usages.iter().fold((0, 0, 0, 0), |a, u| {
        (a.0 + u.0, a.1 + u.1, a.2 + u.2, a.3 + u.3)
    })
}

fn tokens(rec: &Value) -> Usage {
    let t = &rec["tokens"];
    assert!(t.is_object(), "the record has no tokens: {rec}");
    (
        t["input"].as_u64().unwrap(),
        t["output"].as_u64().unwrap(),
        t["cache_read"].as_u64().unwrap(),
        t["cache_write"].as_u64().unwrap(),
    )
}

fn body(r: &Recorded) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The system prompt of an anthropic request, its text blocks joined.
fn system_text(r: &Recorded) -> String {
    r.json()["system"]
        .as_array()
        .expect("anthropic system blocks")
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The tool names offered in a request (either wire format).
fn offered(r: &Recorded) -> Vec<String> {
    r.json()["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|t| {
            t["name"]
                .as_str()
                .or_else(|| t["function"]["name"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// The tool_result blocks of an anthropic request's last message.
fn tool_results(r: &Recorded) -> Vec<Value> {
    let v = r.json();
    let last = v["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    last["content"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|b| b["type"] == "tool_result")
        .collect()
}

/// The text of an anthropic request's user messages (text blocks only).
fn user_text(r: &Recorded) -> String {
    let v = r.json();
    let mut s = String::new();
    for m in v["messages"].as_array().cloned().unwrap_or_default() {
        if m["role"] != "user" {
            continue;
        }
        match &m["content"] {
            Value::String(t) => s.push_str(t),
            Value::Array(a) => {
                for b in a {
                    if let Some(t) = b["text"].as_str() {
                        s.push_str(t);
                        s.push('\n');
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// The single pending handoff in inbox/: (file name, id from its front matter, text).
fn pending_handoff(ws: &TempWorkspace) -> (String, String, String) {
    let files = ws.inbox_files("");
    assert_eq!(files.len(), 1, "one pending handoff: {files:?}");
    let text = std::fs::read_to_string(ws.path().join("inbox").join(&files[0])).unwrap();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("handoff id")
        .trim()
        .to_string();
    (files[0].clone(), id, text)
}

fn read(ws: &TempWorkspace, rel: &str) -> String {
    std::fs::read_to_string(ws.path().join(rel))
        .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn ok(out: &Out) {
    assert_eq!(out.code, Some(0), "{}", out.all());
}

// ---------------------------------------------------------------------------------------
// 1, 12. The whole path: a minion on a model, then the main session on a model.

const SCOUT_PROMPT: &str =
    "SCOUT-PROMPT-MARKER: read your state, note what you found, draft a report and hand it off.\n";
const SCOUT_STATE: &str = "# scout state\n\nseen: 0\n";
const DRAFT: &str = "DRAFT-BODY-MARKER: three new things were found today.\n";
const TITLE: &str = "Scout report ready for review";

/// The script of a minion run on the anthropic format: read state, edit it, save a draft,
/// hand it off with two items, finish. Returns the replies and their usage.
fn scout_script() -> (Vec<Reply>, Vec<Usage>) {
    let usage = vec![
        (120, 11, 0, 900),
        (40, 22, 900, 0),
        (35, 33, 900, 0),
        (30, 44, 900, 0),
        (25, 5, 900, 0),
    ];
    let replies = vec![
        anthropic::tool_use(
            &[("t1", "read_file", json!({"path": "domains/scout/state.md"}))],
            usage[0],
        ),
        anthropic::tool_use(
            &[(
                "t2",
                "edit_file",
                json!({"path": "domains/scout/state.md", "old_text": "seen: 0", "new_text": "seen: 3"}),
            )],
            usage[1],
        ),
        anthropic::tool_use(
            &[(
                "t3",
                "save_draft",
                json!({"name": "report.md", "content": DRAFT}),
            )],
            usage[2],
        ),
        anthropic::tool_use(
            &[(
                "t4",
                "create_handoff",
                json!({
                    "title": TITLE,
                    "body": "Review the draft and deliver it.",
                    "draft": "drafts/scout/report.md",
                    "items": ["Read the draft", "Deliver the report"],
                }),
            )],
            usage[3],
        ),
        anthropic::tool_use(
            &[(
                "t5",
                "finish",
                json!({"summary": "found three things and handed off a report", "silent": false}),
            )],
            usage[4],
        ),
    ];
    (replies, usage)
}

/// The main session's script for one handoff: tick both items, complete, deliver, finish.
fn main_script(id: &str) -> (Vec<Reply>, Vec<Usage>) {
    let usage = vec![(300, 20, 0, 1500), (60, 30, 1500, 0), (50, 10, 1500, 0)];
    let replies = vec![
        anthropic::tool_use(
            &[
                ("m1", "tick_item", json!({"id": id, "item": 1})),
                (
                    "m2",
                    "tick_item",
                    json!({"id": id, "item": "Deliver the report"}),
                ),
            ],
            usage[0],
        ),
        anthropic::tool_use(
            &[
                (
                    "m3",
                    "complete_handoff",
                    json!({"id": id, "summary": "delivered the scout report"}),
                ),
                (
                    "m4",
                    "post",
                    json!({"text": "REPORT-DELIVERED-MARKER: three new things today.", "channel": "general"}),
                ),
            ],
            usage[1],
        ),
        anthropic::tool_use(
            &[(
                "m5",
                "finish",
                json!({"summary": "delivered the scout report", "silent": false}),
            )],
            usage[2],
        ),
    ];
    (replies, usage)
}

#[test]
fn minion_and_main_session_on_a_model_anthropic() {
    let (script, usage) = scout_script();
    let fake = FakeModel::start(script);
    let ws = workspace(&anthropic_provider(&fake), true);
    prompt_loop(&ws, "scout", NEVER_DUE, SCOUT_PROMPT, SCOUT_STATE);
    let commits_before = commit_count(&ws);

    // --- The minion.
    let (out, rec) = trigger(&ws, "scout");
    ok(&out);
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert_eq!(fake.request_count(), 5, "{}", out.all());
    assert_eq!(fake.remaining(), 0);
    // The summary is printed.
    assert!(
        out.stdout
            .contains("found three things and handed off a report"),
        "{}",
        out.all()
    );

    // Its files.
    assert_eq!(
        read(&ws, "domains/scout/state.md"),
        "# scout state\n\nseen: 3\n"
    );
    assert_eq!(read(&ws, "drafts/scout/report.md"), DRAFT);
    let (file, id, text) = pending_handoff(&ws);
    assert!(text.contains(&format!("# {TITLE}")), "{text}");
    assert!(text.contains("draft: drafts/scout/report.md"), "{text}");
    assert!(text.contains("from: scout"), "{text}");
    assert!(text.contains("- [ ] Read the draft"), "{text}");
    assert!(text.contains("- [ ] Deliver the report"), "{text}");

    // Its history: the handoff's own commit, then the run's.
    assert_eq!(
        commit_count(&ws),
        commits_before + 2,
        "{}",
        git(ws.path(), &["log", "--stat"])
    );
    let t = git_trailers(ws.path(), "HEAD");
    let (i, o, cr, cw) = sum(&usage);
    assert_eq!(trailer(&t, "Loop"), Some("scout"), "{t:?}");
    assert_eq!(trailer(&t, "Outcome"), Some("acted"), "{t:?}");
    assert_eq!(trailer(&t, "Run"), rec["run_id"].as_str(), "{t:?}");
    assert_eq!(
        trailer(&t, "Tokens-In"),
        Some(i.to_string().as_str()),
        "{t:?}"
    );
    assert_eq!(
        trailer(&t, "Tokens-Out"),
        Some(o.to_string().as_str()),
        "{t:?}"
    );
    assert_eq!(
        trailer(&t, "Tokens-Cache-Read"),
        Some(cr.to_string().as_str()),
        "{t:?}"
    );
    assert_eq!(
        trailer(&t, "Tokens-Cache-Write"),
        Some(cw.to_string().as_str()),
        "{t:?}"
    );
    // The model the provider said answered.
    assert_eq!(trailer(&t, "Model"), Some("fake-claude"), "{t:?}");
    assert_eq!(
        rec["commit"].as_str().map(str::to_string),
        Some(git(ws.path(), &["rev-parse", "HEAD"]).trim().to_string())
    );
    let files = git(ws.path(), &["show", "--name-only", "--format=", "HEAD"]);
    assert!(files.contains("domains/scout/state.md"), "{files}");
    assert!(files.contains("drafts/scout/report.md"), "{files}");
    let handoff_files = git(ws.path(), &["show", "--name-only", "--format=", "HEAD~1"]);
    assert!(
        handoff_files.contains(&format!("inbox/{file}")),
        "{handoff_files}"
    );
    assert!(
        git(ws.path(), &["status", "--porcelain"]).trim().is_empty(),
        "{}",
        git(ws.path(), &["status", "--porcelain"])
    );

    // Its record and transcript.
    assert_eq!(tokens(&rec), (i, o, cr, cw));
    assert_eq!(rec["turns"], 5, "{rec}");
    assert_eq!(rec["provider"], "fake", "{rec}");
    assert_eq!(rec["model"], "fake-claude", "{rec}");
    assert_eq!(rec["summary"], "found three things and handed off a report");
    let tpath = rec["transcript"].as_str().expect("transcript path");
    assert!(tpath.starts_with(".loops/runs/scout/"), "{tpath}");
    let transcript = read(&ws, tpath);
    for tool in [
        "read_file",
        "edit_file",
        "save_draft",
        "create_handoff",
        "finish",
    ] {
        assert!(
            transcript.contains(&format!("Tool call `{tool}`")),
            "the transcript misses {tool}:\n{transcript}"
        );
    }
    assert!(transcript.contains("SCOUT-PROMPT-MARKER"), "{transcript}");

    // What was sent: the minion is isolated (its prompt and state, no SOUL.md).
    let reqs = fake.requests();
    let first = &reqs[0];
    assert_eq!(first.path, "/v1/messages");
    assert_eq!(first.header("x-api-key"), Some(KEY));
    assert!(first.header("anthropic-version").is_some());
    let sys = system_text(first);
    assert!(sys.contains("SCOUT-PROMPT-MARKER"), "{sys}");
    assert!(sys.contains("seen: 0"), "the state is in the prompt: {sys}");
    for r in &reqs {
        assert!(!body(r).contains("SOUL-MARKER"), "a minion saw SOUL.md");
        assert!(!body(r).contains(KEY), "the key is in a request body");
    }
    assert!(body(first).contains("cache_control"), "{}", body(first));
    assert!(
        first.json()["system"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["cache_control"]["type"] == "ephemeral"),
        "{}",
        body(first)
    );
    assert_eq!(first.json()["model"], "test-model");
    // The read_file result (state.md) went back to the model.
    let r2 = tool_results(&reqs[1]);
    assert_eq!(r2.len(), 1);
    assert_eq!(r2[0]["tool_use_id"], "t1");
    assert_eq!(r2[0]["is_error"], false);
    assert!(
        r2[0]["content"].as_str().unwrap().contains("seen: 0"),
        "{r2:?}"
    );
    for (n, r) in reqs.iter().enumerate().skip(1) {
        for res in tool_results(r) {
            assert_eq!(res["is_error"], false, "request {n}: {res}");
        }
    }

    // --- The main session, woken by `loops run --once`.
    let (mscript, musage) = main_script(&id);
    fake.push(mscript);
    let out = loops(&ws, &["run", "--once"]);
    ok(&out);
    assert_eq!(fake.request_count(), 5 + 3, "{}", out.all());
    assert_eq!(ws.runs("scout").len(), 1, "scout was not due again");
    let mains = ws.runs("main");
    assert_eq!(mains.len(), 1, "{}", out.all());
    let mrec = &mains[0];
    assert_eq!(mrec["outcome"], "acted", "{mrec}");
    assert_eq!(tokens(mrec), sum(&musage));
    assert_eq!(mrec["provider"], "fake");
    assert!(
        mrec["transcript"]
            .as_str()
            .is_some_and(|p| ws.path().join(p).is_file()),
        "{mrec}"
    );

    // The handoff is done, ticked; the delivery is in the outbox; all committed.
    assert!(ws.inbox_files("").is_empty(), "{:?}", ws.inbox_files(""));
    assert!(ws.inbox_files("active").is_empty());
    let stem = file.strip_suffix(".md").unwrap().to_string();
    assert_eq!(ws.done_stems(), vec![stem.clone()]);
    let month = std::fs::read_dir(ws.path().join("inbox/done"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let done = std::fs::read_to_string(month.join(&file)).unwrap();
    assert!(done.contains("- [x] Read the draft"), "{done}");
    assert!(done.contains("- [x] Deliver the report"), "{done}");
    let outbox = ws.path().join("outbox/general");
    let outs: Vec<PathBuf> = std::fs::read_dir(&outbox)
        .expect("outbox/general")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(outs.len(), 1, "{outs:?}");
    assert!(std::fs::read_to_string(&outs[0])
        .unwrap()
        .contains("REPORT-DELIVERED-MARKER"));
    let t = git_trailers(ws.path(), "HEAD");
    assert_eq!(trailer(&t, "Loop"), Some("main"), "{t:?}");
    assert_eq!(trailer(&t, "Handoff"), Some(id.as_str()), "{t:?}");
    let (mi, mo, mcr, mcw) = sum(&musage);
    assert_eq!(
        trailer(&t, "Tokens-In"),
        Some(mi.to_string().as_str()),
        "{t:?}"
    );
    assert_eq!(
        trailer(&t, "Tokens-Out"),
        Some(mo.to_string().as_str()),
        "{t:?}"
    );
    assert_eq!(
        trailer(&t, "Tokens-Cache-Read"),
        Some(mcr.to_string().as_str()),
        "{t:?}"
    );
    assert_eq!(
        trailer(&t, "Tokens-Cache-Write"),
        Some(mcw.to_string().as_str()),
        "{t:?}"
    );
    assert_eq!(trailer(&t, "Model"), Some("fake-claude"), "{t:?}");
    let tracked = git(ws.path(), &["ls-files", "outbox", "inbox"]);
    assert!(tracked.contains("outbox/general/"), "{tracked}");
    assert!(tracked.contains("inbox/done/"), "{tracked}");
    assert!(!tracked.contains(&format!("inbox/{file}")), "{tracked}");
    assert!(
        git(ws.path(), &["status", "--porcelain"]).trim().is_empty(),
        "{}",
        git(ws.path(), &["status", "--porcelain"])
    );
    assert!(ws.path().join(".loops/main/conversation.json").is_file());

    // What the main session was sent: its identity, the handoff and the draft's text.
    let reqs = fake.requests();
    let m = &reqs[5];
    let sys = system_text(m);
    assert!(sys.contains("SOUL-MARKER-4412"), "{sys}");
    assert!(sys.contains("MAIN-PROMPT-MARKER"), "{sys}");
    assert!(!sys.contains("SCOUT-PROMPT-MARKER"), "{sys}");
    let user = user_text(m);
    assert!(user.contains(TITLE), "{user}");
    assert!(user.contains(&id), "{user}");
    assert!(user.contains("DRAFT-BODY-MARKER"), "{user}");
    assert!(user.contains("Deliver the report"), "{user}");
    assert_eq!(m.header("x-api-key"), Some(KEY));
    assert!(body(m).contains("cache_control"));
    let main_tools = offered(m);
    for tool in ["tick_item", "complete_handoff", "post", "finish"] {
        assert!(main_tools.iter().any(|t| t == tool), "{main_tools:?}");
    }
    for res in tool_results(&reqs[6])
        .iter()
        .chain(tool_results(&reqs[7]).iter())
    {
        assert_eq!(res["is_error"], false, "{res}");
    }
}

#[test]
fn main_session_conversation_persists_between_wakes() {
    let fake = FakeModel::start(vec![]);
    let ws = workspace(&anthropic_provider(&fake), true);
    drop_handoff(
        ws.path(),
        "first-handoff",
        "---\nid: first-handoff\nfrom: tester\nto: main\n---\n# FIRST-WAKE-TITLE\n\nSay hello.\n",
    );
    fake.push(vec![anthropic::text(
        "FIRST-WAKE-ANSWER: looked at it.",
        (10, 5, 0, 0),
    )]);
    // The first handoff is not completed (it is held); what matters is the conversation.
    let out = loops(&ws, &["run", "--once"]);
    ok(&out);
    assert_eq!(fake.request_count(), 1, "{}", out.all());
    let conv = ws.path().join(".loops/main/conversation.json");
    assert!(conv.is_file(), "{}", out.all());
    let saved = std::fs::read_to_string(&conv).unwrap();
    assert!(saved.contains("FIRST-WAKE-ANSWER"), "{saved}");

    drop_handoff(
        ws.path(),
        "second-handoff",
        "---\nid: second-handoff\nfrom: tester\nto: main\n---\n# SECOND-WAKE-TITLE\n\nSay hello again.\n",
    );
    fake.push(vec![
        anthropic::tool_use(
            &[("s1", "complete_handoff", json!({"id": "second-handoff"}))],
            (10, 5, 0, 0),
        ),
        anthropic::tool_use(
            &[("s2", "finish", json!({"summary": "done", "silent": false}))],
            (10, 5, 0, 0),
        ),
    ]);
    let out = loops(&ws, &["run", "--once"]);
    ok(&out);
    assert_eq!(fake.request_count(), 3, "{}", out.all());
    let second = &fake.requests()[1];
    let v = second.json();
    let msgs = v["messages"].as_array().unwrap();
    // The first wake (its message and its answer), then the second wake.
    let text = body(second);
    assert!(text.contains("FIRST-WAKE-TITLE"), "{text}");
    assert!(text.contains("FIRST-WAKE-ANSWER"), "{text}");
    assert!(text.contains("SECOND-WAKE-TITLE"), "{text}");
    assert!(msgs.len() >= 3, "{msgs:?}");
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[1]["role"], "assistant");
    assert!(msgs[1].to_string().contains("FIRST-WAKE-ANSWER"));
    let last = msgs.last().unwrap().to_string();
    assert!(last.contains("SECOND-WAKE-TITLE"), "{last}");
    assert!(!last.contains("FIRST-WAKE-TITLE"), "{last}");
    assert_eq!(ws.done_stems(), vec!["second-handoff".to_string()]);
    // The conversation now holds both wakes.
    let saved = std::fs::read_to_string(&conv).unwrap();
    assert!(saved.contains("FIRST-WAKE-ANSWER") && saved.contains("SECOND-WAKE-TITLE"));
}

// ---------------------------------------------------------------------------------------
// 2. The openai wire format.

#[test]
fn minion_on_openai_format() {
    let usage = [(200u64, 10u64, 50u64), (190, 20, 150), (180, 7, 150)];
    let fake = FakeModel::start(vec![
        openai::tool_calls(
            &[(
                "call_1",
                "read_file",
                json!({"path": "domains/scout/state.md"}),
            )],
            usage[0],
        ),
        openai::tool_calls(
            &[
                (
                    "call_2",
                    "edit_file",
                    json!({"path": "domains/scout/state.md", "old_text": "seen: 0", "new_text": "seen: 7"}),
                ),
                (
                    "call_3",
                    "save_draft",
                    json!({"name": "oa.md", "content": DRAFT}),
                ),
            ],
            usage[1],
        ),
        openai::tool_calls(
            &[(
                "call_4",
                "finish",
                json!({"summary": "counted seven on openai", "silent": false}),
            )],
            usage[2],
        ),
    ]);
    let ws = workspace(&openai_provider(&fake), false);
    prompt_loop(&ws, "scout", "", SCOUT_PROMPT, SCOUT_STATE);
    let before = commit_count(&ws);
    let (out, rec) = trigger(&ws, "scout");
    ok(&out);
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert_eq!(
        read(&ws, "domains/scout/state.md"),
        "# scout state\n\nseen: 7\n"
    );
    assert_eq!(read(&ws, "drafts/scout/oa.md"), DRAFT);
    // A draft without a handoff gets one made for it (flagged).
    let (_, _, text) = pending_handoff(&ws);
    assert!(text.contains("orphan-draft"), "{text}");
    assert!(commit_count(&ws) > before);
    let t = git_trailers(ws.path(), "HEAD");
    assert_eq!(trailer(&t, "Loop"), Some("scout"));
    assert_eq!(trailer(&t, "Outcome"), Some("acted"));
    // OpenAI counts cached tokens inside prompt_tokens: input is the uncached part.
    let input: u64 = usage.iter().map(|u| u.0 - u.2).sum();
    let output: u64 = usage.iter().map(|u| u.1).sum();
    let cached: u64 = usage.iter().map(|u| u.2).sum();
    assert_eq!(
        trailer(&t, "Tokens-In"),
        Some(input.to_string().as_str()),
        "{t:?}"
    );
    assert_eq!(
        trailer(&t, "Tokens-Out"),
        Some(output.to_string().as_str()),
        "{t:?}"
    );
    assert_eq!(
        trailer(&t, "Tokens-Cache-Read"),
        Some(cached.to_string().as_str()),
        "{t:?}"
    );
    assert_eq!(trailer(&t, "Model"), Some("fake-gpt"), "{t:?}");
    assert_eq!(tokens(&rec), (input, output, cached, 0));
    let files = git(ws.path(), &["show", "--name-only", "--format=", "HEAD"]);
    assert!(files.contains("domains/scout/state.md"), "{files}");

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let v0 = reqs[0].json();
    let m0 = v0["messages"].as_array().unwrap();
    assert_eq!(m0[0]["role"], "system");
    assert!(m0[0].to_string().contains("SCOUT-PROMPT-MARKER"));
    assert!(!body(&reqs[0]).contains("SOUL-MARKER"));
    assert_eq!(reqs[0].json()["tools"][0]["type"], "function");
    // The second request carries the assistant's tool call and a `tool` message answering it.
    let v1 = reqs[1].json();
    let m1 = v1["messages"].as_array().unwrap();
    let call = m1
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("assistant turn");
    assert_eq!(call["tool_calls"][0]["id"], "call_1");
    assert_eq!(call["tool_calls"][0]["function"]["name"], "read_file");
    let tool = m1.last().unwrap();
    assert_eq!(tool["role"], "tool", "{tool}");
    assert_eq!(tool["tool_call_id"], "call_1");
    assert!(tool["content"].as_str().unwrap().contains("seen: 0"));
    // Two calls in one turn: two tool messages, in order.
    let v2 = reqs[2].json();
    let tools: Vec<&Value> = v2["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tools.len(), 3);
    assert_eq!(tools[1]["tool_call_id"], "call_2");
    assert_eq!(tools[2]["tool_call_id"], "call_3");
}

// ---------------------------------------------------------------------------------------
// 3. Silent runs.

#[test]
fn silent_runs_commit_nothing_but_are_recorded() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[(
                "f1",
                "finish",
                json!({"summary": "nothing new", "silent": true}),
            )],
            (70, 8, 0, 0),
        ),
        anthropic::text("HEARTBEAT_OK", (60, 3, 0, 0)),
    ]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "quiet", "", "Check for news.\n", "nothing yet\n");
    let before = commit_count(&ws);

    let (out, rec) = trigger(&ws, "quiet");
    ok(&out);
    assert_eq!(rec["outcome"], "silent", "{rec}");
    assert_eq!(tokens(&rec), (70, 8, 0, 0));
    assert!(rec["commit"].is_null(), "{rec}");
    assert_eq!(commit_count(&ws), before);

    let (out, rec) = trigger(&ws, "quiet");
    ok(&out);
    assert_eq!(rec["outcome"], "silent", "{rec}");
    assert_eq!(tokens(&rec), (60, 3, 0, 0));
    assert!(rec["commit"].is_null(), "{rec}");
    assert_eq!(commit_count(&ws), before);
    assert_eq!(fake.request_count(), 2);
    assert!(git(ws.path(), &["status", "--porcelain"]).trim().is_empty());
    assert!(ws.inbox_files("").is_empty());
    assert!(!ws.path().join("outbox").exists());
}

#[test]
fn a_run_that_says_silent_but_changed_files_is_committed_and_flagged() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[(
                "e1",
                "edit_file",
                json!({"path": "domains/quiet/state.md", "old_text": "count: 1", "new_text": "count: 2"}),
            )],
            (20, 4, 0, 0),
        ),
        anthropic::tool_use(
            &[(
                "f1",
                "finish",
                json!({"summary": "nothing new", "silent": true}),
            )],
            (20, 4, 0, 0),
        ),
    ]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "quiet", "", "Count.\n", "count: 1\n");
    let before = commit_count(&ws);
    let (out, rec) = trigger(&ws, "quiet");
    ok(&out);
    // Changed files are never left uncommitted, and the contradiction is on record.
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert_eq!(commit_count(&ws), before + 1);
    assert_eq!(read(&ws, "domains/quiet/state.md"), "count: 2\n");
    assert!(git(ws.path(), &["status", "--porcelain"]).trim().is_empty());
    let note = rec["note"].as_str().unwrap_or_default();
    assert!(note.contains("said there was nothing to do"), "{rec}");
}

// ---------------------------------------------------------------------------------------
// 4. The allow-list.

#[test]
fn a_tool_outside_the_allow_list_is_refused() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[(
                "w1",
                "write_file",
                json!({"path": "domains/scout/notes.md", "content": "should never exist"}),
            )],
            (50, 9, 0, 0),
        ),
        anthropic::tool_use(
            &[(
                "f1",
                "finish",
                json!({"summary": "could not write", "silent": false}),
            )],
            (55, 4, 0, 0),
        ),
    ]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(
        &ws,
        "scout",
        "tools: [read_file, finish]\n",
        SCOUT_PROMPT,
        SCOUT_STATE,
    );
    let (out, rec) = trigger(&ws, "scout");
    ok(&out);
    assert!(!ws.path().join("domains/scout/notes.md").exists());
    assert_eq!(rec["refused_tools"], json!(["write_file"]), "{rec}");
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert_eq!(tokens(&rec), (105, 13, 0, 0));

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(offered(&reqs[0]), vec!["read_file", "finish"]);
    let res = tool_results(&reqs[1]);
    assert_eq!(res.len(), 1, "{res:?}");
    assert_eq!(res[0]["tool_use_id"], "w1");
    assert_eq!(res[0]["is_error"], true, "{res:?}");
    let msg = res[0]["content"].as_str().unwrap();
    assert!(msg.contains("refused"), "{msg}");
    assert!(msg.contains("write_file"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// 5. The sandbox, through the model.

#[test]
fn the_sandbox_holds_against_the_model() {
    let unique = format!(
        "loops-escape-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let abs = std::env::temp_dir().join(format!("{unique}-abs.md"));
    let up = format!("../{unique}-up.md");
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[
                (
                    "e1",
                    "write_file",
                    json!({"path": up, "content": "ESCAPED"}),
                ),
                (
                    "e2",
                    "write_file",
                    json!({"path": ".git/config", "content": "ESCAPED"}),
                ),
                (
                    "e3",
                    "write_file",
                    json!({"path": abs.display().to_string(), "content": "ESCAPED"}),
                ),
                (
                    "e4",
                    "write_file",
                    json!({"path": "domains/other/state.md", "content": "ESCAPED"}),
                ),
                (
                    "e5",
                    "write_file",
                    json!({"path": "SOUL.md", "content": "ESCAPED"}),
                ),
                (
                    "e6",
                    "append_file",
                    json!({"path": "domains/scout/config.yaml", "content": "ESCAPED"}),
                ),
                ("e7", "read_file", json!({"path": "SOUL.md"})),
            ],
            (10, 10, 0, 0),
        ),
        anthropic::tool_use(
            &[("f1", "finish", json!({"summary": "tried", "silent": false}))],
            (10, 10, 0, 0),
        ),
    ]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "other", "", "Other loop.\n", "other state\n");
    prompt_loop(&ws, "scout", "", SCOUT_PROMPT, SCOUT_STATE);
    let git_config = read(&ws, ".git/config");
    let scout_config = read(&ws, "domains/scout/config.yaml");
    let before = commit_count(&ws);

    let (out, rec) = trigger(&ws, "scout");
    ok(&out);
    assert!(
        matches!(rec["outcome"].as_str(), Some("acted" | "silent")),
        "{rec}"
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let res = tool_results(&reqs[1]);
    assert_eq!(res.len(), 7, "{res:?}");
    for r in &res {
        assert_eq!(r["is_error"], true, "{r}");
        assert!(r["content"].as_str().unwrap().contains("refused"), "{r}");
        assert!(
            !r["content"].as_str().unwrap().contains("SOUL-MARKER"),
            "{r}"
        );
    }
    let parent = ws.path().parent().unwrap();
    assert!(!parent.join(format!("{unique}-up.md")).exists());
    assert!(!abs.exists());
    assert_eq!(read(&ws, ".git/config"), git_config);
    assert_eq!(read(&ws, "domains/other/state.md"), "other state\n");
    assert_eq!(read(&ws, "SOUL.md"), format!("{SOUL}\n"));
    assert_eq!(read(&ws, "domains/scout/config.yaml"), scout_config);
    assert_eq!(commit_count(&ws), before);
    assert!(git(ws.path(), &["status", "--porcelain"]).trim().is_empty());
    let walk_hits: Vec<PathBuf> = walk(ws.path())
        .into_iter()
        .filter(|p| !p.starts_with(ws.path().join(".git/objects")))
        .filter(|p| std::fs::read(p).is_ok_and(|b| contains(&b, b"ESCAPED")))
        .collect();
    // The transcript holds the calls' arguments; nothing else does.
    assert!(
        walk_hits
            .iter()
            .all(|p| p.starts_with(ws.path().join(".loops"))),
        "{walk_hits:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. The gate.

#[test]
fn the_gate_decides_before_any_model_call() {
    let fake = FakeModel::start(vec![]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(
        &ws,
        "gated",
        "gate: \"true\"\n",
        "Reply to new messages.\n",
        "s\n",
    );
    let before = commit_count(&ws);
    let (out, rec) = trigger(&ws, "gated");
    ok(&out);
    assert_eq!(rec["outcome"], "silent", "{rec}");
    assert_eq!(fake.request_count(), 0, "a quiet gate costs no request");
    assert_eq!(commit_count(&ws), before);

    // A gate that prints something: it goes to the model, with the window it saw.
    ws.add_loop(
        "gated",
        "schedule: { every: 1h }\npayload: { kind: prompt }\ngate: 'echo NEW-MESSAGE-42; echo \"WINDOW=[$LOOPS_WINDOW_START]\"'\n",
    );
    git_commit_all(ws.path(), "gate prints");
    fake.push(vec![anthropic::tool_use(
        &[(
            "f1",
            "finish",
            json!({"summary": "nothing to reply", "silent": true}),
        )],
        (10, 2, 0, 0),
    )]);
    let (out, rec) = trigger(&ws, "gated");
    ok(&out);
    assert_eq!(rec["outcome"], "silent", "{rec}");
    assert_eq!(fake.request_count(), 1);
    let user = user_text(&fake.requests()[0]);
    assert!(user.contains("NEW-MESSAGE-42"), "{user}");
    // The first (silent) run succeeded, so the window starts from it.
    let window = user
        .split("WINDOW=[")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap_or_default();
    assert!(
        window.len() >= 19 && window.starts_with("20"),
        "LOOPS_WINDOW_START was not given to the gate: {user}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. Provider errors.

#[test]
fn a_rejected_request_fails_the_run_with_the_providers_message() {
    let fake = FakeModel::start(vec![anthropic::error(
        400,
        "fake: messages.0.content is malformed MSG-400",
    )]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "scout", "", SCOUT_PROMPT, SCOUT_STATE);
    let before = commit_count(&ws);
    let (out, rec) = trigger(&ws, "scout");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(rec["outcome"], "failed", "{rec}");
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(err.contains("MSG-400"), "{rec}");
    assert!(err.contains("400"), "{rec}");
    assert!(out.stderr.contains("MSG-400"), "{}", out.all());
    assert_eq!(fake.request_count(), 1, "a 400 is not retried");
    assert_eq!(commit_count(&ws), before);
}

#[test]
fn a_state_md_that_is_not_text_fails_the_run_before_the_model_and_is_kept() {
    // Left out of the prompt, the model would see no state and write a fresh state.md
    // over the one the loop kept.
    let fake = FakeModel::start(vec![anthropic::text("SILENT", (10, 1, 0, 0))]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "scout", "", SCOUT_PROMPT, SCOUT_STATE);
    let state = ws.path().join("domains/scout/state.md");
    let latin1 = b"seen: caf\xe9 opening hours\n";
    std::fs::write(&state, latin1).expect("write");
    let before = commit_count(&ws);
    let (out, rec) = trigger(&ws, "scout");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(rec["outcome"], "failed", "{rec}");
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(err.contains("cannot read domains/scout/state.md"), "{rec}");
    assert!(err.contains("save it as UTF-8 text"), "{rec}");
    assert!(
        out.stderr.contains("domains/scout/state.md"),
        "{}",
        out.all()
    );
    assert_eq!(fake.request_count(), 0, "the model was never asked");
    assert_eq!(
        std::fs::read(&state).expect("read"),
        latin1,
        "kept as it was"
    );
    assert_eq!(commit_count(&ws), before);
}

#[test]
fn a_rate_limit_is_waited_out_and_retried() {
    let fake = FakeModel::start(vec![
        fake_model::rate_limited(1),
        anthropic::tool_use(
            &[(
                "f1",
                "finish",
                json!({"summary": "after the wait", "silent": false}),
            )],
            (10, 2, 0, 0),
        ),
    ]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "scout", "timeout: 60s\n", SCOUT_PROMPT, SCOUT_STATE);
    let (out, rec) = trigger(&ws, "scout");
    ok(&out);
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert_eq!(rec["summary"], "after the wait");
    assert_eq!(fake.request_count(), 2);
    assert_eq!(rec["turns"], 1, "a retry is not a turn: {rec}");
    let transcript = read(&ws, rec["transcript"].as_str().unwrap());
    assert!(transcript.contains("retried"), "{transcript}");
}

#[test]
fn a_slow_model_times_the_run_out() {
    let slow_by = Duration::from_secs(20);
    let fake = FakeModel::start(vec![
        fake_model::slow(anthropic::text("too late", (1, 1, 0, 0)), slow_by),
        fake_model::slow(anthropic::text("too late", (1, 1, 0, 0)), slow_by),
    ]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "scout", "timeout: 2s\n", SCOUT_PROMPT, SCOUT_STATE);
    let (out, rec) = trigger(&ws, "scout");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(rec["outcome"], "timeout", "{rec}");
    assert!(
        out.elapsed < slow_by,
        "the run waited for the slow reply: {:?}",
        out.elapsed
    );
    assert!(fake.request_count() >= 1);
}

// ---------------------------------------------------------------------------------------
// 8. max_turns.

#[test]
fn max_turns_stops_a_model_that_never_finishes() {
    let read = |id: &str| {
        anthropic::tool_use(
            &[(id, "read_file", json!({"path": "domains/scout/state.md"}))],
            (10, 1, 0, 0),
        )
    };
    let fake = FakeModel::start(vec![read("r1"), read("r2"), read("r3"), read("r4")]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "scout", "max_turns: 2\n", SCOUT_PROMPT, SCOUT_STATE);
    let (out, rec) = trigger(&ws, "scout");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(rec["outcome"], "failed", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or_default()
            .contains("max_turns"),
        "{rec}"
    );
    assert_eq!(rec["turns"], 2, "{rec}");
    assert_eq!(fake.request_count(), 2);
    assert_eq!(tokens(&rec), (20, 2, 0, 0));
}

// ---------------------------------------------------------------------------------------
// 9. The key is never written.

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_api_key_is_never_written_anywhere() {
    let (mut script, _) = scout_script();
    // The model quotes the key in its summary (as if a tool had shown it).
    script.pop();
    script.push(anthropic::tool_use(
        &[(
            "t5",
            "finish",
            json!({"summary": format!("handed off; btw the key is {KEY}"), "silent": false}),
        )],
        (1, 1, 0, 0),
    ));
    let fake = FakeModel::start(script);
    let ws = workspace(&anthropic_provider(&fake), true);
    prompt_loop(&ws, "scout", NEVER_DUE, SCOUT_PROMPT, SCOUT_STATE);
    let mut outputs = Vec::new();

    let (out, rec) = trigger(&ws, "scout");
    ok(&out);
    assert_eq!(rec["outcome"], "acted", "{rec}");
    outputs.push(out);
    let (_, id, _) = pending_handoff(&ws);
    // The main session quotes it too: in a completion summary and its own summary.
    fake.push(vec![
        anthropic::tool_use(
            &[
                ("m1", "tick_item", json!({"id": id, "item": 1})),
                ("m2", "tick_item", json!({"id": id, "item": 2})),
                (
                    "m3",
                    "complete_handoff",
                    json!({"id": id, "summary": format!("done; the key was {KEY}")}),
                ),
            ],
            (10, 10, 0, 0),
        ),
        anthropic::tool_use(
            &[(
                "m4",
                "finish",
                json!({"summary": format!("finished with {KEY}"), "silent": false}),
            )],
            (10, 10, 0, 0),
        ),
    ]);
    let out = loops(&ws, &["run", "--once"]);
    ok(&out);
    assert_eq!(ws.done_stems().len(), 1, "{}", out.all());
    outputs.push(out);

    // A provider that echoes the key back in its error message.
    fake.push(vec![anthropic::error(
        401,
        &format!("invalid x-api-key: {KEY} is not a valid key"),
    )]);
    let (out, rec) = trigger(&ws, "scout");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(rec["outcome"], "failed", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid key"),
        "the provider's message is kept, the key cut out: {rec}"
    );
    outputs.push(out);
    // The same through --json.
    fake.push(vec![anthropic::error(
        401,
        &format!("invalid x-api-key: {KEY} is not a valid key"),
    )]);
    let out = loops(&ws, &["trigger", "scout", "--json"]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    outputs.push(out);
    // The main session, too, on a provider that echoes the key.
    drop_handoff(
        ws.path(),
        "secret-wake",
        "---\nid: secret-wake\nfrom: tester\nto: main\n---\n# Another one\n\nLook.\n",
    );
    fake.push(vec![anthropic::error(
        401,
        &format!("invalid x-api-key: {KEY} is not a valid key"),
    )]);
    let out = loops(&ws, &["run", "--once"]);
    let mains = ws.runs("main");
    assert_eq!(mains.len(), 2, "{}", out.all());
    assert_eq!(mains[1]["outcome"], "failed", "{}", mains[1]);
    assert!(
        mains[1]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid key"),
        "{}",
        mains[1]
    );
    outputs.push(out);
    outputs.push(loops(&ws, &["inbox"]));
    outputs.push(loops(&ws, &["log"]));
    outputs.push(loops(&ws, &["runs", "scout"]));

    // The key reached the fake (so the test can fail)…
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.header("x-api-key") == Some(KEY)));
    // …and nothing else.
    let key = KEY.as_bytes();
    let leaks: Vec<PathBuf> = walk(ws.path())
        .into_iter()
        .filter(|p| !p.starts_with(ws.path().join(".git/objects")))
        .filter(|p| std::fs::read(p).is_ok_and(|b| contains(&b, key)))
        .collect();
    assert!(leaks.is_empty(), "the key was written to {leaks:?}");
    assert!(ws.path().join(".loops/main/conversation.json").is_file());
    assert!(walk(&ws.path().join(".loops/runs")).len() >= 5);
    let history = git(ws.path(), &["log", "-p", "--all"]);
    assert!(
        history.contains("DRAFT-BODY-MARKER"),
        "the log covers the runs"
    );
    assert!(!history.contains(KEY), "the key is in git history");
    for o in &outputs {
        assert!(!o.stdout.contains(KEY), "the key was printed: {}", o.all());
        assert!(!o.stderr.contains(KEY), "the key was printed: {}", o.all());
    }
}

// ---------------------------------------------------------------------------------------
// 10. `kind: command` providers (an agent CLI).

/// A provider that runs `script` (sh) as an agent CLI; the script is written outside the
/// workspace, in `dir`.
fn command_provider(dir: &Path, script: &str) -> String {
    let p = dir.join("fake-agent.sh");
    std::fs::write(&p, format!("#!/bin/sh\n{script}")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "providers:\n  cli: {{ kind: command, command: [\"{}\"] }}\n",
        p.display()
    )
}

#[test]
fn a_command_provider_acts_and_commits() {
    let outside = tempfile::tempdir().unwrap();
    let stdin = outside.path().join("stdin.txt");
    // Progress goes to stderr; the final text on stdout is the run's summary.
    let script = format!(
        "cat > '{}'\necho '- checked by the agent' >> domains/agentic/state.md\necho 'working...' >&2\necho 'did the thing'\n",
        stdin.display()
    );
    let ws = workspace(&command_provider(outside.path(), &script), false);
    prompt_loop(
        &ws,
        "agentic",
        "",
        "AGENT-CLI-PROMPT-MARKER: check and note it.\n",
        "# state\n",
    );
    let before = commit_count(&ws);
    let (out, rec) = trigger(&ws, "agentic");
    ok(&out);
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert_eq!(rec["summary"], "did the thing", "{rec}");
    assert_eq!(rec["provider"], "cli");
    assert!(out.stdout.contains("did the thing"), "{}", out.all());
    assert_eq!(
        read(&ws, "domains/agentic/state.md"),
        "# state\n- checked by the agent\n"
    );
    assert_eq!(commit_count(&ws), before + 1);
    let subject = git(ws.path(), &["log", "-1", "--format=%s"]);
    assert_eq!(subject.trim(), "agentic: did the thing");
    let t = git_trailers(ws.path(), "HEAD");
    assert_eq!(trailer(&t, "Loop"), Some("agentic"));
    assert_eq!(trailer(&t, "Outcome"), Some("acted"));
    let files = git(ws.path(), &["show", "--name-only", "--format=", "HEAD"]);
    assert!(files.contains("domains/agentic/state.md"), "{files}");
    assert!(git(ws.path(), &["status", "--porcelain"]).trim().is_empty());
    let given = std::fs::read_to_string(&stdin).expect("the agent got stdin");
    assert!(given.contains("AGENT-CLI-PROMPT-MARKER"), "{given}");
    assert!(given.contains("# state"), "{given}");
    assert!(given.contains("Collection window"), "{given}");
    assert!(!given.contains("SOUL-MARKER"), "{given}");
    let transcript = read(&ws, rec["transcript"].as_str().expect("transcript"));
    assert!(transcript.contains("did the thing"), "{transcript}");
}

#[test]
fn a_command_provider_can_be_silent() {
    let outside = tempfile::tempdir().unwrap();
    let ws = workspace(
        &command_provider(outside.path(), "cat > /dev/null\necho SILENT\n"),
        false,
    );
    prompt_loop(&ws, "agentic", "", "Do it.\n", "# state\n");
    let before = commit_count(&ws);
    let (out, rec) = trigger(&ws, "agentic");
    ok(&out);
    assert_eq!(rec["outcome"], "silent", "{rec}");
    assert_eq!(commit_count(&ws), before);
}

#[test]
fn a_command_provider_that_runs_too_long_times_out() {
    let outside = tempfile::tempdir().unwrap();
    let ws = workspace(
        &command_provider(outside.path(), "cat > /dev/null\nsleep 30\necho late\n"),
        false,
    );
    prompt_loop(&ws, "agentic", "timeout: 2s\n", "Do it.\n", "# state\n");
    let (out, rec) = trigger(&ws, "agentic");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(rec["outcome"], "timeout", "{rec}");
    assert!(out.elapsed < Duration::from_secs(30), "{:?}", out.elapsed);
}

// ---------------------------------------------------------------------------------------
// 11. The bundled example.

#[test]
fn the_bundled_channel_monitor_runs_on_a_model() {
    let fake = FakeModel::start(vec![anthropic::tool_use(
        &[(
            "f1",
            "finish",
            json!({"summary": "nothing worth saying", "silent": true}),
        )],
        (500, 12, 0, 2000),
    )]);
    let ws = workspace(
        &format!(
            "providers:\n  anthropic: {{ kind: anthropic, base_url: \"{}\", api_key_env: LOOPS_TEST_KEY }}\n",
            fake.url()
        ),
        false,
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("domains/channel-monitor");
    let dest = ws.path().join("domains/channel-monitor");
    std::fs::create_dir_all(&dest).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        assert!(e.file_type().unwrap().is_file(), "{:?}", e.path());
        std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
    git_commit_all(ws.path(), "channel-monitor");
    let before = commit_count(&ws);

    let check = loops(&ws, &["check"]);
    assert_eq!(check.code, Some(0), "{}", check.all());
    assert!(
        check.stdout.contains(" 0 error(s)") || check.stderr.contains(" 0 error(s)"),
        "{}",
        check.all()
    );

    let (out, rec) = trigger(&ws, "channel-monitor");
    ok(&out);
    assert_eq!(rec["outcome"], "silent", "{rec}");
    assert_eq!(commit_count(&ws), before);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let sys = system_text(&reqs[0]);
    assert!(sys.contains("classification"), "{sys}");
    assert!(sys.contains("NEVER_SHARE"), "{sys}");
    assert!(sys.contains("agent-commons"), "{sys}");
    let prompt = std::fs::read_to_string(src.join("prompt.md")).unwrap();
    let first_line = prompt.lines().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        sys.contains(first_line),
        "prompt.md is in the system prompt"
    );
    assert!(user_text(&reqs[0]).contains("Collection window"));
    // It gets the model it names, and the tools it lists that exist (channel tools
    // listed before they exist are left out, not offered as broken ones).
    let config: Value =
        yaml_serde::from_str(&std::fs::read_to_string(src.join("config.yaml")).unwrap()).unwrap();
    assert_eq!(reqs[0].json()["model"], config["payload"]["model"]);
    let listed: Vec<&str> = config["tools"]
        .as_array()
        .expect("channel-monitor lists its tools")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let known = [
        "read_file",
        "list_files",
        "search_files",
        "write_file",
        "edit_file",
        "append_file",
        "save_draft",
        "create_handoff",
        "complete_handoff",
        "tick_item",
        "post",
        "deliver",
        "http_get",
        "finish",
    ];
    let expected: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|t| known.contains(t))
        .collect();
    assert!(expected.contains(&"finish"), "{listed:?}");
    assert_eq!(offered(&reqs[0]), expected);
}

// ---------------------------------------------------------------------------------------
// http_get, shell and `session: main`: the tools that reach further.

#[test]
fn http_get_fetches_only_from_allowed_hosts() {
    let big = "x".repeat(300 * 1024);
    let site = FakeModel::start(vec![
        Reply::raw(200, "SITE-CONTENT-77"),
        Reply::raw(200, &big),
    ]);
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[
                (
                    "h1",
                    "http_get",
                    json!({"url": format!("{}/page", site.url())}),
                ),
                ("h2", "http_get", json!({"url": "http://example.com/x"})),
                (
                    "h3",
                    "http_get",
                    json!({"url": format!("{}/big", site.url())}),
                ),
                ("h4", "http_get", json!({"url": "file:///etc/passwd"})),
            ],
            (10, 1, 0, 0),
        ),
        anthropic::tool_use(
            &[(
                "f1",
                "finish",
                json!({"summary": "fetched", "silent": true}),
            )],
            (10, 1, 0, 0),
        ),
    ]);
    let ws = workspace(&anthropic_provider(&fake), false);
    // An entry names the port too: without one only 80/443 would be allowed.
    let listed = site.url().trim_start_matches("http://").to_string();
    prompt_loop(
        &ws,
        "fetcher",
        &format!("tools: [http_get, finish]\nallowed_hosts: [\"{listed}\"]\n"),
        "Fetch the page.\n",
        "",
    );
    let (out, rec) = trigger(&ws, "fetcher");
    ok(&out);
    assert_eq!(rec["outcome"], "silent", "{rec}");
    let reqs = fake.requests();
    let res = tool_results(&reqs[1]);
    assert_eq!(res.len(), 4, "{res:?}");
    let text = |i: usize| res[i]["content"].as_str().unwrap_or_default().to_string();
    assert_eq!(res[0]["is_error"], false, "{res:?}");
    assert!(text(0).contains("SITE-CONTENT-77"), "{}", text(0));
    assert_eq!(res[1]["is_error"], true);
    assert!(text(1).contains("allowed_hosts"), "{}", text(1));
    assert_eq!(res[2]["is_error"], false);
    assert!(text(2).contains("cut at 256 KiB"), "the body is capped");
    assert!(text(2).len() < 260 * 1024, "{}", text(2).len());
    assert_eq!(res[3]["is_error"], true);
    assert!(text(3).contains("http"), "{}", text(3));
    assert_eq!(
        site.requests().len(),
        2,
        "nothing fetched from refused hosts"
    );
}

#[test]
fn a_host_no_entry_names_is_refused_before_any_connection() {
    let site = FakeModel::start(vec![Reply::raw(200, "SHOULD-NOT-BE-FETCHED")]);
    let url = site.url().replace("127.0.0.1", "localhost");
    let fake = FakeModel::start(vec![
        anthropic::tool_use(&[("h1", "http_get", json!({ "url": url }))], (10, 1, 0, 0)),
        anthropic::tool_use(
            &[("f1", "finish", json!({"summary": "no", "silent": true}))],
            (10, 1, 0, 0),
        ),
    ]);
    let ws = workspace(&anthropic_provider(&fake), false);
    // `*.localhost` matches subdomains only, not `localhost` itself.
    prompt_loop(
        &ws,
        "fetcher",
        "tools: [http_get, finish]\nallowed_hosts: [\"*.localhost\", \"example.com\"]\n",
        "Fetch.\n",
        "",
    );
    let (out, _) = trigger(&ws, "fetcher");
    ok(&out);
    let res = tool_results(&fake.requests()[1]);
    assert_eq!(res[0]["is_error"], true, "{res:?}");
    assert!(site.requests().is_empty());
}

#[test]
fn the_shell_tool_needs_the_loop_and_loops_yaml_to_allow_it() {
    let script = || {
        vec![
            anthropic::tool_use(
                &[(
                    "s1",
                    "shell",
                    json!({"command": "echo made > made.txt; echo SHELL-OUT-5"}),
                )],
                (10, 1, 0, 0),
            ),
            anthropic::tool_use(
                &[(
                    "f1",
                    "finish",
                    json!({"summary": "ran it", "silent": false}),
                )],
                (10, 1, 0, 0),
            ),
        ]
    };
    // Listed by the loop, but loops.yaml does not allow it: not offered, refused.
    let fake = FakeModel::start(script());
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "sh", "tools: [shell, finish]\n", "Run it.\n", "");
    let (out, rec) = trigger(&ws, "sh");
    ok(&out);
    let reqs = fake.requests();
    assert_eq!(offered(&reqs[0]), vec!["finish"]);
    let res = tool_results(&reqs[1]);
    assert_eq!(res[0]["is_error"], true);
    assert!(
        res[0]["content"]
            .as_str()
            .unwrap()
            .contains("allow_shell_tool"),
        "{res:?}"
    );
    assert_eq!(rec["refused_tools"], json!(["shell"]));
    assert!(!ws.path().join("domains/sh/made.txt").exists());

    // Allowed: it runs in the loop's folder, and what it wrote is committed.
    let fake = FakeModel::start(script());
    let ws = workspace(
        &format!("{}allow_shell_tool: true\n", anthropic_provider(&fake)),
        false,
    );
    prompt_loop(&ws, "sh", "tools: [shell, finish]\n", "Run it.\n", "");
    let (out, rec) = trigger(&ws, "sh");
    ok(&out);
    let reqs = fake.requests();
    assert_eq!(offered(&reqs[0]), vec!["shell", "finish"]);
    let res = tool_results(&reqs[1]);
    assert_eq!(res[0]["is_error"], false, "{res:?}");
    assert!(res[0]["content"].as_str().unwrap().contains("SHELL-OUT-5"));
    assert_eq!(read(&ws, "domains/sh/made.txt"), "made\n");
    assert!(rec["commit"].is_string(), "{rec}");
    let tracked = git(ws.path(), &["ls-files", "domains/sh/made.txt"]);
    assert!(tracked.contains("made.txt"), "committed: {tracked}");
}

#[test]
fn a_loop_in_the_main_session_gets_identity_and_wider_writes() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[(
                "a1",
                "append_file",
                json!({"path": ".working-memory/memory.md", "content": "- MEMORY-LINE-9"}),
            )],
            (10, 1, 0, 0),
        ),
        anthropic::tool_use(
            &[(
                "f1",
                "finish",
                json!({"summary": "remembered", "silent": false}),
            )],
            (10, 1, 0, 0),
        ),
    ]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(
        &ws,
        "reflect",
        "session: main\ntools: [append_file, finish]\n",
        "Reflect.\n",
        "",
    );
    let (out, rec) = trigger(&ws, "reflect");
    ok(&out);
    let reqs = fake.requests();
    assert!(system_text(&reqs[0]).contains("SOUL-MARKER-4412"));
    assert!(read(&ws, ".working-memory/memory.md").contains("MEMORY-LINE-9"));
    let show = git(ws.path(), &["show", "--stat", "HEAD"]);
    assert!(show.contains(".working-memory/memory.md"), "{show}\n{rec}");
}

#[test]
fn the_main_sessions_conversation_is_bounded_by_whole_wakes() {
    use loops::engine::main_agent::Conversation;
    use loops_agent::model::{Block, Message, Role};
    let wake = |n: usize| -> Vec<Message> {
        vec![
            Message::user_text(format!("Wake at T{n} (handoffs): 1 handoff(s): job {n}")),
            Message {
                role: Role::Assistant,
                content: vec![Block::ToolUse {
                    id: format!("c{n}"),
                    name: "complete_handoff".into(),
                    input: json!({"id": format!("H{n}")}),
                }],
            },
            Message {
                role: Role::User,
                content: vec![Block::ToolResult {
                    tool_use_id: format!("c{n}"),
                    content: "ok".into(),
                    is_error: false,
                }],
            },
            Message::assistant_text(format!("done with {n}")),
        ]
    };
    let mut c = Conversation::default();
    for n in 0..10 {
        c.messages.extend(wake(n));
        c.bound(10);
        assert!(c.messages.len() <= 10, "{}", c.messages.len());
        // Every kept conversation starts at a wake, so no tool result lost its call.
        let first = &c.messages[0];
        assert!(first.text().starts_with("Wake at"), "{first:?}");
    }
    assert_eq!(c.summary.len(), 8, "{:?}", c.summary);
    assert!(c.summary[0].starts_with("Wake at T0"), "{:?}", c.summary);
    assert!(c.summary[0].contains("completed H0"), "{:?}", c.summary);
    let msgs = c.with_wake("Wake at T10 (heartbeat): no new handoffs.".into());
    assert!(msgs[0].text().starts_with("Earlier wakes, summarised"));
    assert!(msgs.last().unwrap().text().contains("T10"));
}

#[test]
fn argument_names_from_other_harnesses_are_understood() {
    let fake = FakeModel::start(vec![
        anthropic::tool_use(
            &[(
                "e1",
                "edit_file",
                json!({"file_path": "domains/scout/state.md", "old_string": "seen: 0", "new_string": "seen: 5"}),
            )],
            (10, 1, 0, 0),
        ),
        anthropic::tool_use(
            &[(
                "f1",
                "finish",
                json!({"summary": "counted", "silent": false}),
            )],
            (10, 1, 0, 0),
        ),
    ]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "scout", "", SCOUT_PROMPT, SCOUT_STATE);
    let (out, rec) = trigger(&ws, "scout");
    ok(&out);
    assert_eq!(rec["outcome"], "acted", "{rec}");
    assert!(read(&ws, "domains/scout/state.md").contains("seen: 5"));
}

#[test]
fn a_main_session_prompt_may_be_written_inline() {
    let fake = FakeModel::start(vec![anthropic::text("HEARTBEAT_OK", (10, 1, 0, 0))]);
    let ws = workspace(&anthropic_provider(&fake), false);
    let yaml = format!(
        "{}main:\n  prompt: \"INLINE-MAIN-PROMPT: you are the main session; be brief.\"\n",
        anthropic_provider(&fake)
    );
    ws.write("loops.yaml", &yaml);
    git_commit_all(ws.path(), "inline main");
    let out = loops(&ws, &["check"]);
    ok(&out);
    drop_handoff(
        ws.path(),
        "20261121T000000Z-x-aaaaaa",
        "---\nid: 20261121T000000Z-x-aaaaaa\nfrom: x\nto: main\n---\n# Say hi\n",
    );
    let out = loops(&ws, &["run", "--once"]);
    ok(&out);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1, "{}", out.all());
    assert!(system_text(&reqs[0]).contains("INLINE-MAIN-PROMPT"));
    assert!(user_text(&reqs[0]).contains("Say hi"));
}

#[test]
fn run_once_all_runs_every_bundled_prompt_loop_on_a_model() {
    // Three silent answers: one for each bundled prompt loop.
    let fake = FakeModel::start(vec![
        anthropic::text("SILENT", (300, 2, 0, 0)),
        anthropic::text("SILENT", (300, 2, 0, 0)),
        anthropic::text("SILENT", (300, 2, 0, 0)),
    ]);
    let ws = workspace(
        &format!(
            "providers:\n  anthropic: {{ kind: anthropic, base_url: \"{}\", api_key_env: LOOPS_TEST_KEY }}\n",
            fake.url()
        ),
        false,
    );
    for name in ["channel-monitor", "heartbeat", "morning-briefing"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("domains")
            .join(name);
        let dest = ws.path().join("domains").join(name);
        std::fs::create_dir_all(&dest).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    }
    git_commit_all(ws.path(), "bundled prompt loops");
    let before = commit_count(&ws);
    let out = loops(&ws, &["run", "--once", "--all"]);
    ok(&out);
    assert_eq!(fake.requests().len(), 3, "{}", out.all());
    for name in ["channel-monitor", "heartbeat", "morning-briefing"] {
        let runs = ws.runs(name);
        assert_eq!(runs.len(), 1, "{name}: {runs:?}");
        assert_eq!(runs[0]["outcome"], "silent", "{name}: {}", runs[0]);
        assert_eq!(runs[0]["tokens"]["input"], 300, "{name}");
    }
    assert_eq!(commit_count(&ws), before, "silent runs commit nothing");
    // Each loop was sent its own prompt, and none of them SOUL.md.
    for r in fake.requests() {
        let sys = system_text(&r);
        assert!(
            !sys.contains("SOUL-MARKER-4412"),
            "isolated loops get no SOUL.md"
        );
    }
}

#[test]
fn a_prompt_md_gone_since_the_check_fails_the_run_without_a_model_call() {
    let fake = FakeModel::start(vec![]);
    let ws = workspace(&anthropic_provider(&fake), false);
    prompt_loop(&ws, "scout", "", SCOUT_PROMPT, SCOUT_STATE);
    // Not UTF-8: unreadable as instructions.
    std::fs::write(
        ws.path().join("domains/scout/prompt.md"),
        [0xff, 0xfe, 0x00],
    )
    .unwrap();
    let (out, rec) = trigger(&ws, "scout");
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(rec["outcome"], "failed", "{rec}");
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(err.contains("domains/scout/prompt.md"), "{err}");
    assert!(fake.requests().is_empty());
}
