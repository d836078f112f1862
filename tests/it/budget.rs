//! Issue #19, the bill: the `pricing:` table, `budget:` per loop and per workspace, and
//! adaptive cadence (`schedule.adaptive`, `finish(next_check)`), through the real `loops`
//! binary against the fake model server on 127.0.0.1.

use crate::common::{git_commit_all, git_trailers, next_utc_midnight, Out, TempWorkspace};
use loops_testutil::fake_model::{openai, FakeModel, Reply};
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(180);

fn loops(ws: &TempWorkspace, args: &[&str]) -> Out {
    Out::of(ws.cmd().args(args).timeout(LONG))
}

/// A workspace whose one provider is the fake server, a model priced in loops.yaml at
/// $1,000 per million input tokens and $2,000 per million output tokens (so that the
/// fake's few tokens cost whole cents), plus these loops.yaml lines.
fn workspace(fake: &FakeModel, yaml: &str) -> TempWorkspace {
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        &format!(
            "limits:\n  shutdown_grace: 2s\nproviders:\n  local: {{ kind: openai, base_url: \"{}/v1\", model: pricey-1, max_tokens: 600 }}\npricing:\n  pricey-1: {{ input: 1000, output: 2000 }}\n{yaml}",
            fake.url()
        ),
    );
    git_commit_all(ws.path(), "setup");
    ws
}

/// A prompt loop `name` with these config.yaml lines (a schedule never due unless one is
/// given), committed.
fn prompt_loop(ws: &TempWorkspace, name: &str, extra: &str) {
    let schedule = if extra.contains("schedule:") {
        String::new()
    } else {
        "schedule: { at: \"2099-01-01T00:00:00Z\" }\n".to_string()
    };
    ws.add_loop(
        name,
        &format!("{schedule}payload: {{ kind: prompt }}\n{extra}"),
    );
    ws.write(
        &format!("domains/{name}/prompt.md"),
        "Note what you saw in state.md, then call finish.\n",
    );
    ws.write(&format!("domains/{name}/state.md"), "STATE-BEFORE\n");
    git_commit_all(ws.path(), &format!("loop {name}"));
}

fn trigger(ws: &TempWorkspace, name: &str) -> (Out, Value) {
    let before = ws.runs(name).len();
    let out = loops(ws, &["trigger", name]);
    let runs = ws.runs(name);
    assert_eq!(runs.len(), before + 1, "one record\n{}", out.all());
    (out, runs.last().cloned().expect("a record"))
}

/// One turn of 50 input and 5 output tokens: 55 tokens, an estimated $0.06.
fn write_state(name: &str, text: &str) -> Reply {
    openai::tool_calls(
        &[(
            "w1",
            "write_file",
            json!({"path": format!("domains/{name}/state.md"), "content": text}),
        )],
        (50, 5, 0),
    )
}

fn finish(args: Value) -> Reply {
    openai::tool_calls(&[("f1", "finish", args)], (50, 5, 0))
}

fn done() -> Reply {
    finish(json!({"summary": "looked", "silent": false}))
}

fn state(ws: &TempWorkspace, name: &str) -> Value {
    let p = ws.path().join(format!(".loops/state/{name}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("state json")
}

// ---------------------------------------------------------------------------------------
// Pricing: each run's estimated cost, in its record and its commit's trailers.

/// A loop's row of `loops list --json`, and the whole answer (for messages).
fn list_row(ws: &TempWorkspace, name: &str) -> (Value, Value) {
    let v: Value = serde_json::from_str(&loops(ws, &["list", "--json"]).stdout).expect("json");
    let row = v
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| v["loops"][0].clone());
    (row, v)
}

#[test]
fn a_run_records_its_estimated_cost_and_its_commit_says_it() {
    let fake = FakeModel::start(vec![write_state("job", "SEEN\n"), done()]);
    let ws = workspace(&fake, "");
    prompt_loop(&ws, "job", "");
    let (out, rec) = trigger(&ws, "job");
    assert_eq!(out.code, Some(0), "{}", out.all());
    // Two turns of 50 in and 5 out at $1,000 and $2,000 per million: 2 x $0.06.
    let cost = rec["cost_estimate"].as_f64().expect("a cost estimate");
    assert!((cost - 0.12).abs() < 1e-9, "{rec}");
    let trailers = git_trailers(ws.path(), "HEAD");
    assert!(
        trailers.contains(&("Cost-Estimate".into(), "$0.1200".into())),
        "{trailers:?}"
    );
    // `loops list` shows today's spend, and says it is an estimate.
    let list = loops(&ws, &["list"]);
    assert!(
        list.stdout.contains("110 tokens") && list.stdout.contains("~$0.1200 (estimate)"),
        "{}",
        list.all()
    );
    let (row, v) = list_row(&ws, "job");
    assert_eq!(row["spent_today"]["tokens"], 110, "{v}");
    assert_eq!(row["spent_today"]["runs"], 1, "{v}");
    assert_eq!(row["spent_today"]["unreadable_records"], 0, "{v}");

    // A damaged record line is not counted, and the spend says it is a lower bound.
    let records = ws.path().join(".loops/runs/job.jsonl");
    let mut text = std::fs::read_to_string(&records).expect("records");
    text.push_str("{\"loop\":\"job\",\"run_id\":\"torn\n");
    std::fs::write(&records, text).expect("damage a line");
    let list = loops(&ws, &["list"]);
    assert!(
        list.stdout.contains("110 tokens")
            && list
                .stdout
                .contains("1 damaged record line in .loops/runs/ not counted"),
        "{}",
        list.all()
    );
    let (row, v) = list_row(&ws, "job");
    assert_eq!(row["spent_today"]["unreadable_records"], 1, "{v}");
    // `loops runs` shows the records it can read and says what it could not.
    let runs = loops(&ws, &["runs", "job"]);
    assert_eq!(runs.code, Some(0), "{}", runs.all());
    assert!(
        runs.stderr
            .contains("1 line of .loops/runs/job.jsonl cannot be read and is not shown"),
        "{}",
        runs.all()
    );
}

#[test]
fn a_local_server_costs_nothing_unless_its_model_is_priced() {
    let fake = FakeModel::start(vec![write_state("job", "SEEN\n"), done()]);
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        &format!(
            "providers:\n  local: {{ kind: openai, base_url: \"{}/v1\", model: gemma-3-270m, max_tokens: 600 }}\n",
            fake.url()
        ),
    );
    git_commit_all(ws.path(), "setup");
    prompt_loop(&ws, "job", "");
    let (_, rec) = trigger(&ws, "job");
    assert_eq!(rec["cost_estimate"].as_f64(), Some(0.0), "{rec}");
    let trailers = git_trailers(ws.path(), "HEAD");
    assert!(
        trailers.contains(&("Cost-Estimate".into(), "$0.0000".into())),
        "{trailers:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Budgets.

#[test]
fn a_run_stops_at_the_turn_boundary_before_it_would_pass_tokens_per_run() {
    let fake = FakeModel::start(vec![
        write_state("job", "ONE\n"),
        write_state("job", "TWO\n"),
        done(),
    ]);
    let ws = workspace(&fake, "");
    prompt_loop(&ws, "job", "budget: { tokens_per_run: 100 }\n");
    let (out, rec) = trigger(&ws, "job");
    assert_eq!(rec["outcome"], "budget", "{rec}\n{}", out.all());
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("budget.tokens_per_run 100") && err.contains("55 tokens"),
        "{err}"
    );
    // One turn (55 tokens) was made; a second would reach 110.
    assert_eq!(fake.request_count(), 1);
    assert_eq!(rec["tokens"]["input"], 50, "{rec}");
    // What the first turn did is kept and committed.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("domains/job/state.md")).expect("state"),
        "ONE\n"
    );
    // Not a failure: never retried, and the loop is not paused for the day.
    assert!(state(&ws, "job")["budget_paused_until"].is_null());
    assert!(state(&ws, "job")["pending_retry"].is_null());
}

#[test]
fn a_loop_over_its_daily_budget_is_paused_until_the_next_day_with_a_handoff() {
    let fake = FakeModel::start(vec![write_state("job", "SEEN\n"), done()]);
    let ws = workspace(&fake, "");
    prompt_loop(&ws, "job", "budget: { tokens_per_day: 100 }\n");
    let (out, rec) = trigger(&ws, "job");
    // After the first turn's 55 tokens a second would pass the 100 a day: the run stops
    // there, its work kept, and the loop is paused until the next UTC midnight.
    assert_eq!(rec["outcome"], "budget", "{rec}\n{}", out.all());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("domains/job/state.md")).expect("state"),
        "SEEN\n"
    );
    let until = state(&ws, "job")["budget_paused_until"]
        .as_str()
        .expect("paused for the day")
        .parse::<chrono::DateTime<chrono::Utc>>()
        .expect("a time");
    assert_eq!(until, next_utc_midnight());
    let handoffs: Vec<String> = std::fs::read_dir(ws.path().join("inbox"))
        .expect("inbox")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "md"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|t| t.contains("daily budget"))
        .collect();
    assert_eq!(handoffs.len(), 1, "one handoff says so: {handoffs:?}");
    assert!(
        handoffs[0].contains("budget.tokens_per_day")
            && handoffs[0].contains("domains/job/config.yaml")
            && handoffs[0].contains("not a bill"),
        "{}",
        handoffs[0]
    );
    // The handoff is committed as every handoff the runner writes; nothing is left
    // uncommitted in the person's tree.
    let status = crate::common::git(ws.path(), &["status", "--porcelain"]);
    assert!(status.trim().is_empty(), "{status}");
    let list = Out::of(ws.cmd().env("COLUMNS", "250").arg("list"));
    assert!(
        list.stdout
            .contains("paused for today: daily budget reached"),
        "{}",
        list.all()
    );
    // Triggered again the same day: not started, the model never asked.
    let (_, again) = trigger(&ws, "job");
    assert_eq!(again["outcome"], "budget", "{again}");
    assert!(
        again["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("not started: "),
        "{again}"
    );
    assert_eq!(
        fake.request_count(),
        1,
        "no request after the budget was reached"
    );
    // One handoff a day, however often it is refused.
    let n = std::fs::read_dir(ws.path().join("inbox"))
        .expect("inbox")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|t| t.contains("daily budget"))
        .count();
    assert_eq!(n, 1);
}

#[test]
fn the_workspace_budget_counts_every_loop_together() {
    let fake = FakeModel::start(vec![write_state("a", "SEEN\n"), done()]);
    let ws = workspace(&fake, "budget: { cost_per_day: 0.05 }\n");
    prompt_loop(&ws, "a", "");
    prompt_loop(&ws, "b", "");
    let (_, rec) = trigger(&ws, "a");
    // A first turn is always made; a second would pass the workspace's $0.05.
    assert_eq!(rec["outcome"], "budget", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or_default()
            .contains("budget.cost_per_day")
            && rec["error"]
                .as_str()
                .unwrap_or_default()
                .contains("loops.yaml"),
        "{rec}"
    );
    // a spent ~$0.06 of the workspace's $0.05: b may not start today either.
    let (_, b) = trigger(&ws, "b");
    assert_eq!(b["outcome"], "budget", "{b}");
    let err = b["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("all loops together") && err.contains("loops.yaml"),
        "{err}"
    );
    assert_eq!(fake.request_count(), 1);
}

#[test]
fn check_names_the_line_and_the_fix_of_a_bad_budget_pricing_or_adaptive_schedule() {
    let fake = FakeModel::start(vec![]);
    let ws = workspace(&fake, "");
    ws.write(
        "loops.yaml",
        "pricing:\n  my-model: { input: 3 }\n  other: { input: -1, output: 2 }\nbudget: { cost_per_day: 0 }\n",
    );
    prompt_loop(
        &ws,
        "job",
        "schedule: { every: 10m, adaptive: { min: 3h, max: 2h } }\nbudget: { tokens_per_day: -5, per_week: 3 }\n",
    );
    let out = loops(&ws, &["check"]);
    assert_ne!(out.code, Some(0), "{}", out.all());
    let all = out.all();
    for needle in [
        "loops.yaml:2",
        "`pricing.my-model` has no `output`",
        "`pricing.other.input` must be 0 or more",
        "`budget.cost_per_day` must be more than 0",
        "domains/job/config.yaml:2:",
        "domains/job/config.yaml:3:",
        "`schedule.adaptive.min` must be longer than zero and no longer than `max`",
        "`budget.tokens_per_day` must be a whole number of tokens, at least 1",
        "per_week",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in\n{all}");
    }
}

// ---------------------------------------------------------------------------------------
// Adaptive cadence.

const ADAPTIVE: &str = "schedule: { every: 10m, adaptive: { min: 5m, max: 2h } }\n";

#[test]
fn an_adaptive_loop_offers_next_check_and_its_choice_is_the_next_slot_once() {
    let fake = FakeModel::start(vec![finish(
        json!({"summary": "quiet", "silent": true, "next_check": "45m"}),
    )]);
    let ws = workspace(&fake, "");
    prompt_loop(&ws, "watch", ADAPTIVE);
    let (out, rec) = trigger(&ws, "watch");
    assert_eq!(rec["outcome"], "silent", "{rec}\n{}", out.all());
    // The finish tool the model was offered names the bounds.
    let req = fake.requests()[0].json();
    let fin = req["tools"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["function"]["name"] == "finish"))
        .cloned()
        .expect("finish offered");
    assert!(
        fin["function"]["parameters"]["properties"]["next_check"].is_object(),
        "{fin}"
    );
    assert!(
        fin["function"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("between 5m and 2h"),
        "{fin}"
    );
    let finished: chrono::DateTime<chrono::Utc> = rec["finished"]
        .as_str()
        .expect("finished")
        .parse()
        .expect("time");
    let chosen: chrono::DateTime<chrono::Utc> = state(&ws, "watch")["next_check"]
        .as_str()
        .expect("the next check is kept")
        .parse()
        .expect("time");
    let after = chosen - finished;
    assert!(
        (after - chrono::Duration::minutes(45)).num_seconds().abs() <= 2,
        "45 minutes after the run: {after}"
    );
    // `loops next` shows it, in words and in JSON.
    let next = loops(&ws, &["next", "watch"]);
    assert!(
        next.stdout.contains("next check:") && next.stdout.contains("chosen by the model"),
        "{}",
        next.all()
    );
    let v: Value =
        serde_json::from_str(&loops(&ws, &["next", "watch", "--json"]).stdout).expect("json");
    assert_eq!(v["next_check"]["chosen_by"], "model", "{v}");
    assert_eq!(v["next_check"]["after_last_run"], "45m", "{v}");
}

#[test]
fn next_check_is_held_to_the_bounds_and_a_bad_one_is_the_models_to_fix() {
    let fake = FakeModel::start(vec![
        finish(json!({"summary": "x", "silent": true, "next_check": "soon"})),
        finish(json!({"summary": "x", "silent": true, "next_check": "9h"})),
    ]);
    let ws = workspace(&fake, "");
    prompt_loop(&ws, "watch", ADAPTIVE);
    let (_, rec) = trigger(&ws, "watch");
    assert_eq!(rec["outcome"], "silent", "{rec}");
    let told = fake.requests()[1].json()["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        told.contains("`next_check` \"soon\" is not a duration")
            && told.contains("between 5m and 2h"),
        "{told}"
    );
    let finished: chrono::DateTime<chrono::Utc> = rec["finished"]
        .as_str()
        .expect("finished")
        .parse()
        .expect("time");
    let chosen: chrono::DateTime<chrono::Utc> = state(&ws, "watch")["next_check"]
        .as_str()
        .expect("kept")
        .parse()
        .expect("time");
    assert!(
        ((chosen - finished) - chrono::Duration::hours(2))
            .num_seconds()
            .abs()
            <= 2,
        "9h is held to the 2h maximum: {}",
        chosen - finished
    );
}

#[test]
fn a_loop_without_adaptive_is_not_offered_next_check() {
    let fake = FakeModel::start(vec![finish(
        json!({"summary": "x", "silent": true, "next_check": "45m"}),
    )]);
    let ws = workspace(&fake, "");
    prompt_loop(&ws, "plain", "schedule: { every: 10m }\n");
    let (_, rec) = trigger(&ws, "plain");
    assert_eq!(rec["outcome"], "silent", "{rec}");
    let req = fake.requests()[0].json();
    let fin = req["tools"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["function"]["name"] == "finish"))
        .cloned()
        .expect("finish offered");
    assert!(
        fin["function"]["parameters"]["properties"]["next_check"].is_null(),
        "{fin}"
    );
    assert!(state(&ws, "plain")["next_check"].is_null());
}

#[test]
fn the_workspace_tokens_per_run_caps_every_run() {
    let fake = FakeModel::start(vec![
        write_state("job", "ONE\n"),
        write_state("job", "TWO\n"),
        done(),
    ]);
    let ws = workspace(&fake, "budget: { tokens_per_run: 100 }\n");
    prompt_loop(&ws, "job", "");
    let (_, rec) = trigger(&ws, "job");
    assert_eq!(rec["outcome"], "budget", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or_default()
            .contains("budget.tokens_per_run 100"),
        "{rec}"
    );
    assert_eq!(fake.request_count(), 1);
}

#[test]
fn the_workspace_budget_holds_the_main_session_until_the_next_day() {
    // Turn 1 of the main session's wake: a tool call of 55 tokens. A second turn would
    // pass the workspace's 100 tokens a day.
    let fake = FakeModel::start(vec![openai::tool_calls(
        &[("l1", "list_files", json!({"path": "."}))],
        (50, 5, 0),
    )]);
    let ws = workspace(
        &fake,
        "budget: { tokens_per_day: 100 }\nmain: { prompt: MAIN.md }\n",
    );
    ws.write("MAIN.md", "You are the main session. Work the handoffs.\n");
    git_commit_all(ws.path(), "a main session on the model");
    let handoff = |title: &str| {
        let v = ws.json(&["handoff", "create", "--from", "scout", "--title", title]);
        v["id"].as_str().expect("an id").to_string()
    };
    let first = handoff("Look at this");
    let mut d = ws.start_daemon();
    let wait = |what: &dyn Fn() -> bool| crate::common::wait_until(LONG, what);
    assert!(
        wait(&|| ws.runs("main").iter().any(|r| r["outcome"] == "budget")),
        "{}",
        d.log()
    );
    let rec = ws.runs("main").pop().expect("the wake's record");
    let why = rec["error"].as_str().unwrap_or_default().to_string();
    assert!(
        why.contains("budget.tokens_per_day") && why.contains("loops.yaml"),
        "{rec}"
    );
    assert_eq!(fake.request_count(), 1, "stopped before a second turn");
    // The handoff is not the budget's victim: back in the inbox, no attempt counted.
    assert!(
        wait(&|| ws.json(&["inbox", "show", &first])["stage"] == "pending"),
        "{}",
        d.log()
    );
    let note = ws.json(&["inbox", "show", &first])["note"].clone();
    assert_eq!(note["attempts"], 0, "{note}");
    assert!(note["held"].is_null(), "{note}");
    d.wait_for_log("the main session is held until", LONG);
    let midnight = next_utc_midnight().to_rfc3339();
    assert!(d.log().contains(&midnight), "{}", d.log());

    // The day is spent: a new handoff waits, and so does a restarted daemon.
    let second = handoff("And this");
    d.signal(loops_testutil::Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
    let d = ws.start_daemon();
    d.wait_for_log("the main session is held until", LONG);
    d.wait_for_log("loops daemon started", LONG);
    for id in [&first, &second] {
        assert_eq!(ws.json(&["inbox", "show", id])["stage"], "pending");
    }
    assert_eq!(fake.request_count(), 1, "no wake after the day was spent");
    let status = ws.json(&["status"]);
    let held = &status["inbox"]["main_held"];
    assert_eq!(held["until"], midnight.replace("+00:00", "Z"), "{status}");
    assert!(
        held["why"]
            .as_str()
            .unwrap_or_default()
            .contains("budget.tokens_per_day"),
        "{status}"
    );
    let text = Out::of(ws.cmd().env("COLUMNS", "250").arg("status"));
    assert!(
        text.stdout.contains("the main session is held until"),
        "{}",
        text.all()
    );
    assert_eq!(ws.runs("main").len(), 1, "{}", d.log());
    let status = crate::common::git(ws.path(), &["status", "--porcelain"]);
    assert!(status.trim().is_empty(), "{status}");
}

#[test]
fn a_main_session_wake_cut_by_tokens_per_run_counts_an_attempt() {
    // Each wake makes one turn of 55 tokens; a second would pass 60 a run.
    let turn = || openai::tool_calls(&[("l1", "list_files", json!({"path": "."}))], (50, 5, 0));
    let fake = FakeModel::start(vec![turn(), turn(), turn()]);
    let ws = workspace(
        &fake,
        "budget: { tokens_per_run: 60 }\nmain: { prompt: MAIN.md, max_attempts: 2 }\n",
    );
    ws.write("MAIN.md", "You are the main session. Work the handoffs.\n");
    git_commit_all(ws.path(), "a main session on the model");
    let v = ws.json(&["handoff", "create", "--from", "scout", "--title", "Too big"]);
    let id = v["id"].as_str().expect("an id").to_string();
    let mut d = ws.start_daemon();
    // Not a daily budget: the day is not spent, so the handoff is tried again (after the
    // back-off a failed wake gets) and, too big for a run, held for a person.
    assert!(
        crate::common::wait_until(LONG, || ws.json(&["inbox", "show", &id])["note"]["held"]
            .is_string()),
        "{}",
        d.log()
    );
    let show = ws.json(&["inbox", "show", &id]);
    let held = show["note"]["held"].as_str().unwrap_or_default();
    assert!(
        held.contains("failed 2 times") && held.contains("budget.tokens_per_run"),
        "{show}"
    );
    let runs = ws.runs("main");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r["outcome"] == "budget"), "{runs:?}");
    assert_eq!(fake.request_count(), 2);
    assert!(
        !d.log().contains("the main session is held until"),
        "{}",
        d.log()
    );
    d.signal(loops_testutil::Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
}

#[test]
fn a_damaged_budget_hold_is_said_and_the_budget_read_from_the_records() {
    let fake = FakeModel::start(vec![]);
    let ws = workspace(
        &fake,
        "budget: { tokens_per_day: 100 }\nmain: { prompt: MAIN.md }\n",
    );
    ws.write("MAIN.md", "You are the main session.\n");
    git_commit_all(ws.path(), "a main session on the model");
    let hold = ws.path().join(".loops/main/budget-hold.json");
    std::fs::create_dir_all(hold.parent().unwrap()).unwrap();
    std::fs::write(&hold, "{\"until\": \"tomorrow\"").unwrap();
    let mut d = ws.start_daemon();
    d.wait_for_log("budget-hold.json cannot be read", LONG);
    assert!(d.log().contains("delete the file"), "{}", d.log());
    assert!(hold.exists(), "nothing on disk is taken away");
    // `loops status` says it too, beside the other warnings, and in --json.
    let status = loops(&ws, &["status"]);
    assert!(
        status.all().contains("budget-hold.json cannot be read")
            && status.all().contains("delete the file"),
        "{}",
        status.all()
    );
    let json = ws.json(&["status"]);
    assert!(
        json["inbox"]["main_hold_damaged"]
            .as_str()
            .is_some_and(|w| w.contains("budget-hold.json")),
        "{json:#}"
    );
    assert!(json["inbox"]["main_held"].is_null());
    d.signal(loops_testutil::Signal::TERM);
    assert!(d.wait_exit(LONG).expect("stops").success(), "{}", d.log());
}

#[test]
fn a_run_that_moves_to_a_fallback_mid_way_is_priced_by_each_model_for_its_own_turns() {
    // Turn 1 on the pricey model (55 tokens, an estimated $0.06); then it fails, and the
    // turn goes to the cheap one (55 tokens, $0.00006).
    let pricey = FakeModel::start(vec![
        write_state("job", "SEEN\n"),
        Reply::json(503, json!({"error": {"message": "overloaded"}})),
    ]);
    let cheap = FakeModel::start(vec![done()]);
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        &format!(
            "limits:\n  shutdown_grace: 2s\nproviders:\n  pricey: {{ kind: openai, base_url: \"{}/v1\", model: pricey-1, max_retries: 0, fallback: [cheap] }}\n  cheap: {{ kind: openai, base_url: \"{}/v1\", model: cheap-1 }}\ndefaults: {{ provider: pricey }}\npricing:\n  pricey-1: {{ input: 1000, output: 2000 }}\n  cheap-1: {{ input: 1, output: 2 }}\n",
            pricey.url(),
            cheap.url()
        ),
    );
    git_commit_all(ws.path(), "setup");
    prompt_loop(&ws, "job", "");
    let (out, rec) = trigger(&ws, "job");
    assert_eq!(
        rec["fallbacks"],
        json!(["pricey -> cheap"]),
        "{rec}\n{}",
        out.all()
    );
    let cost = rec["cost_estimate"].as_f64().expect("a cost");
    // All of it at the cheap model's price would be $0.00012; at the pricey one's, $0.12.
    assert!((cost - 0.06006).abs() < 1e-9, "{cost}: {rec}");
}

#[test]
fn an_agent_job_held_for_the_budget_is_counted_in_status_and_runs_once_loops_yaml_raises_it() {
    let fake = FakeModel::start(vec![done(), done()]);
    let yaml = |tokens: u32| format!("budget: {{ tokens_per_day: {tokens} }}\n");
    let ws = workspace(&fake, &yaml(50));
    let d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let job = |id: &str| ws.json(&["jobs", "get", id]);
    let wait = |what: &dyn Fn() -> bool| crate::common::wait_until(LONG, what);
    // The first job's one turn (55 tokens) spends the day's 50.
    let ok = |args: &[&str]| {
        let out = loops(&ws, args);
        assert_eq!(out.code, Some(0), "{}", out.all());
        out
    };
    ok(&["agent", "run", "Look around", "--detach"]);
    assert!(wait(&|| job("1")["state"] == "completed"), "{}", d.log());
    ok(&["agent", "run", "Look again", "--detach"]);
    assert!(wait(&|| job("2")["held"].is_string()), "{:#}", job("2"));
    assert_eq!(fake.request_count(), 1);
    let status = ws.json(&["status"]);
    assert_eq!(status["jobs"]["held"], 1, "{status:#}");
    let spend = &status["spend_today"];
    assert_eq!(spend["agent_jobs"]["tokens"], 55, "{spend:#}");
    assert_eq!(spend["total"]["tokens"], 55, "{spend:#}");
    assert!(
        spend["reached"]
            .as_str()
            .is_some_and(|r| r.contains("tokens_per_day 50")),
        "{spend:#}"
    );
    let text = ok(&["status"]);
    assert!(
        text.stdout.contains("(1 held for the day's budget)")
            && text.all().contains("raise `budget:` in loops.yaml"),
        "{}",
        text.all()
    );
    assert!(
        text.stdout.contains("agent jobs 55 tokens")
            && text
                .stdout
                .contains("budget tokens_per_day 50 (loops.yaml): reached"),
        "{}",
        text.all()
    );
    // A person raises the budget: the daemon looks at the held job again, and it runs.
    let raised = std::fs::read_to_string(ws.path().join("loops.yaml"))
        .expect("loops.yaml")
        .replace(&yaml(50), &yaml(1000));
    ws.write("loops.yaml", &raised);
    assert!(
        wait(&|| job("2")["state"] == "completed"),
        "{:#}\n{}",
        job("2"),
        d.log()
    );
    assert_eq!(fake.request_count(), 2);
    let history = job("2")["history"].to_string();
    assert!(
        history.contains("its hold lifted: loops.yaml's budget changed"),
        "{history}"
    );
}

#[test]
fn a_fan_out_whose_children_are_held_for_the_budget_does_not_keep_its_follower_waiting() {
    let fake = FakeModel::start(vec![done()]);
    let ws = workspace(&fake, "budget: { tokens_per_day: 50 }\n");
    // No daemon: each `agent run` runs its jobs in the CLI process. The first spends the
    // day's 50 tokens in its one turn.
    let first = loops(&ws, &["agent", "run", "Look around"]);
    assert_eq!(first.code, Some(0), "{}", first.all());
    let items = json!([{"prompt": "Research {x}", "input_vars": {"x": "a"}}, {"prompt": "Research {x}", "input_vars": {"x": "b"}}]);
    ws.write("manifest.json", &items.to_string());
    let out = loops(
        &ws,
        &[
            "agent",
            "run",
            "Combine",
            "--fanout-manifest",
            "manifest.json",
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stderr
            .contains("waits for 2 child job(s) held for the day's budget")
            && out.stderr.contains("tokens_per_day"),
        "{}",
        out.all()
    );
    assert!(out.elapsed < Duration::from_secs(60), "{:?}", out.elapsed);
    assert_eq!(fake.request_count(), 1, "no child reached the model");
}

#[test]
fn after_a_fallback_mid_run_the_budget_prices_the_next_turn_as_the_model_now_answering() {
    // Turn 1 on a free model; then it fails, and turn 2 goes to a pricey one (55 tokens, an
    // estimated $0.06). A third at that price would pass the day's $0.10: the run stops,
    // where pricing every turn as the first model would have let it go on for free.
    let free = FakeModel::start(vec![
        write_state("job", "ONE\n"),
        Reply::json(503, json!({"error": {"message": "overloaded"}})),
    ]);
    let pricey = FakeModel::start(vec![
        write_state("job", "TWO\n"),
        write_state("job", "THREE\n"),
        done(),
    ]);
    let ws = TempWorkspace::new();
    let _ = std::fs::remove_dir_all(ws.path().join("domains/example"));
    ws.write(
        "loops.yaml",
        &format!(
            "limits:\n  shutdown_grace: 2s\nproviders:\n  free: {{ kind: openai, base_url: \"{}/v1\", model: free-1, max_retries: 0, fallback: [pricey] }}\n  pricey: {{ kind: openai, base_url: \"{}/v1\", model: pricey-1 }}\ndefaults: {{ provider: free }}\npricing:\n  free-1: {{ input: 0, output: 0 }}\n  pricey-1: {{ input: 1000, output: 2000 }}\nbudget: {{ cost_per_day: 0.10 }}\n",
            free.url(),
            pricey.url()
        ),
    );
    git_commit_all(ws.path(), "setup");
    prompt_loop(&ws, "job", "");
    let (out, rec) = trigger(&ws, "job");
    assert_eq!(
        rec["fallbacks"],
        json!(["free -> pricey"]),
        "{rec}\n{}",
        out.all()
    );
    assert_eq!(rec["outcome"], "budget", "{rec}\n{}", out.all());
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or_default()
            .contains("budget.cost_per_day"),
        "{rec}"
    );
    assert_eq!(pricey.request_count(), 1, "{rec}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("domains/job/state.md")).expect("state"),
        "TWO\n"
    );
}

#[test]
fn what_an_agent_job_spent_before_its_daemon_was_killed_still_counts_against_the_budget() {
    // Turn 1 (55 tokens) is answered; turn 2 is never answered before the daemon dies.
    let fake = FakeModel::start(vec![
        openai::tool_calls(&[("l", "list_files", json!({"path": "."}))], (50, 5, 0)),
        loops_testutil::fake_model::slow(done(), Duration::from_secs(60)),
    ]);
    let ws = workspace(&fake, "budget: { tokens_per_day: 1000 }\n");
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let out = loops(&ws, &["agent", "run", "Look around", "--detach"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    fake.wait_for_requests(2, LONG);
    d.signal(loops_testutil::Signal::KILL);
    assert!(d.wait_exit(LONG).is_some());
    // The turn made before the crash is on disk: with the budget lowered to 50 a day, the
    // day is spent, and the job that comes back after the restart is held before it asks
    // the model again.
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let spend = std::fs::read_to_string(ws.path().join(format!(".loops/spend/jobs-{day}.jsonl")))
        .expect("the job spend file");
    assert!(spend.contains(r#""input":50"#), "{spend}");
    let status = ws.json(&["status"]);
    assert_eq!(
        status["spend_today"]["agent_jobs"]["tokens"], 55,
        "{status:#}"
    );
    let yaml = std::fs::read_to_string(ws.path().join("loops.yaml")).expect("loops.yaml");
    ws.write(
        "loops.yaml",
        &yaml.replace("tokens_per_day: 1000", "tokens_per_day: 50"),
    );
    let d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    assert!(
        crate::common::wait_until(LONG, || ws.json(&["jobs", "get", "1"])["held"].is_string()),
        "{:#}\n{}",
        ws.json(&["jobs", "get", "1"]),
        d.log()
    );
    assert_eq!(fake.request_count(), 2, "no request after the restart");
}

#[test]
fn a_prompt_run_whose_daemon_is_killed_mid_way_is_recorded_interrupted_with_what_it_spent() {
    // Turn 1 (55 tokens) is answered; turn 2 is never answered before the daemon dies.
    let fake = FakeModel::start(vec![
        write_state("job", "ONE\n"),
        loops_testutil::fake_model::slow(done(), Duration::from_secs(60)),
    ]);
    let ws = workspace(&fake, "budget: { tokens_per_day: 1000 }\n");
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    prompt_loop(&ws, "job", &format!("schedule: {{ at: \"{at}\" }}\n"));
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    fake.wait_for_requests(2, LONG);
    d.signal(loops_testutil::Signal::KILL);
    assert!(d.wait_exit(LONG).is_some());
    // The next start records the run interrupted, with the tokens of the turn it made:
    // the day's spend still counts them.
    let mut d = ws.start_daemon();
    d.wait_for_log("loops daemon started", LONG);
    let rec = ws.runs("job").pop().expect("the interrupted run's record");
    assert_eq!(rec["outcome"], "interrupted", "{rec}");
    assert_eq!(rec["tokens"]["input"], 50, "{rec}");
    assert!(
        rec["cost_estimate"].as_f64().is_some_and(|c| c > 0.0),
        "{rec}"
    );
    let (row, _) = list_row(&ws, "job");
    assert_eq!(row["spent_today"]["tokens"], 55, "{row}");
    d.signal(loops_testutil::Signal::TERM);
    assert!(d.wait_exit(LONG).is_some());
}
