//! What a day of a quiet channel costs: a 10-minute channel monitor with a fixed cadence
//! against the same monitor with adaptive cadence (`schedule.adaptive`, `finish(next_check)`),
//! on the scripted model (issue #19).
//!
//! The day is walked by the real scheduler (`loops::engine::scheduler::Scheduler`) on a
//! manual clock, from a second before midnight to the next midnight; every run it hands
//! out is a real prompt run of the `loops` binary (`loops trigger monitor --json`) against
//! the fake model server on 127.0.0.1, which answers as a model on a quiet channel would:
//! it reads the channel's file (one tool call), finds nothing new and finishes silent, and
//! in the adaptive loop asks to look again in 2h. The request bytes are the real ones the
//! runner sent; tokens are estimated from them (4 bytes a token) and priced with loops'
//! built-in list price of the model named, without prompt caching: an estimate, never a
//! bill, and the same rule for both loops.
//!
//! `cargo bench --bench cadence` (`-- --model claude-sonnet-4-5`, `-- --keep`).

use anyhow::{bail, Context};
use loops::engine::scheduler::Scheduler;
use loops_core::clock::{Clock, ManualClock};
use loops_core::domain::discover;
use loops_core::runs::{Outcome, RunLog, RunRecord};
use loops_core::state::StateStore;
use loops_core::usage::Usage;
use loops_core::workspace::Workspace;
use loops_testutil::bench::*;
use loops_testutil::fake_model::{openai, FakeModel, Reply};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_loops");
const FIXED: &str = "schedule: { every: 10m }\n";
const ADAPTIVE: &str = "schedule: { every: 10m, adaptive: { min: 10m, max: 2h } }\n";
const PROMPT: &str =
    "Watch the support channel. Read domains/monitor/channel.md: it holds the messages \
that arrived since you last looked. If there are any, summarise them in state.md and post the \
urgent ones; if there are none, finish silent. When the channel has been quiet, choose a later \
next_check; when it is busy, an earlier one.\n";
const QUIET: &str = "# #support\n\n(no new messages)\n";
/// Bytes per token for the estimate: a rough rule for English text and JSON.
const BYTES_PER_TOKEN: f64 = 4.0;

/// One monitor's day.
struct Day {
    runs: usize,
    requests: usize,
    bytes_sent: usize,
    bytes_received: usize,
    wall: Duration,
}

/// The fake model's two turns of one quiet look.
fn quiet_look(i: usize, adaptive: bool) -> Vec<Reply> {
    let mut finish = json!({"summary": "no new messages", "silent": true});
    if adaptive {
        finish["next_check"] = json!("2h");
    }
    vec![
        openai::tool_calls(
            &[(
                &format!("r{i}"),
                "read_file",
                json!({"path": "domains/monitor/channel.md"}),
            )],
            (0, 0, 0),
        ),
        openai::tool_calls(&[(&format!("f{i}"), "finish", finish)], (0, 0, 0)),
    ]
}

/// The workspace the real runs are made in.
fn run_workspace(dir: &Path, fake: &FakeModel, schedule: &str, model: &str) {
    workspace(
        dir,
        &format!(
            "providers:\n  local: {{ kind: openai, base_url: \"{}/v1\", model: {model}, max_tokens: 1024 }}\n",
            fake.url()
        ),
    );
    let _ = std::fs::remove_dir_all(dir.join("domains/example"));
    write(
        &dir.join("domains/monitor/config.yaml"),
        &format!("{schedule}payload: {{ kind: prompt }}\n"),
    );
    write(&dir.join("domains/monitor/prompt.md"), PROMPT);
    write(&dir.join("domains/monitor/channel.md"), QUIET);
    git_commit_all(dir, "bench workspace");
}

/// The workspace whose state the simulated day's scheduler keeps (no runs are made here).
fn sim_workspace(dir: &Path, schedule: &str) -> anyhow::Result<Workspace> {
    write(&dir.join("loops.yaml"), "timezone: UTC\n");
    write(
        &dir.join("domains/monitor/config.yaml"),
        &format!("{schedule}payload:\n  command: [\"true\"]\n"),
    );
    Workspace::open(dir).context("open the simulation workspace")
}

fn trigger(root: &Path) -> anyhow::Result<Value> {
    let out = Command::new(BIN)
        .args(["trigger", "monitor", "--json", "--workspace"])
        .arg(root)
        .env_remove("RUST_LOG")
        .output()
        .context("run the loops binary")?;
    let rec: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`loops trigger monitor --json` printed no record (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if rec["outcome"] != "silent" {
        bail!(
            "the quiet look was not silent: {rec}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(rec)
}

fn time(v: &Value, key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    v[key].as_str()?.parse().ok()
}

fn day(args: &Args, adaptive: bool, model: &str) -> anyhow::Result<Day> {
    let schedule = if adaptive { ADAPTIVE } else { FIXED };
    let fake = FakeModel::start(Vec::new());
    let run_tmp = tempdir(args, "loops-bench-cadence-");
    run_workspace(run_tmp.path(), &fake, schedule, model);
    let sim_tmp = tempdir(args, "loops-bench-cadence-sim-");
    let sim = sim_workspace(sim_tmp.path(), schedule)?;
    let defs: Vec<_> = discover(&sim).into_iter().filter_map(|e| e.def).collect();
    let def = defs.first().cloned().context("the monitor's config")?;
    let start: chrono::DateTime<chrono::Utc> = "2026-03-01T23:59:59Z".parse()?;
    let end = start + chrono::Duration::hours(24);
    let clock = ManualClock::new(start);
    let runlog = RunLog::new(&sim.layout().runs_dir(), 64 << 20);
    let mut sched = Scheduler::new(
        Arc::new(clock.clone()),
        StateStore::new(&sim.layout().state_dir()),
        RunLog::new(&sim.layout().runs_dir(), 64 << 20),
        Duration::from_secs(2),
        5,
    );
    sched.set_loops(defs);
    let t = Instant::now();
    let mut runs = 0;
    while let Some(wake) = sched.next_wake().filter(|w| *w < end) {
        clock.set(wake);
        for due in sched.due() {
            fake.push(quiet_look(runs, adaptive));
            let real = trigger(run_tmp.path())?;
            runs += 1;
            // The real run's choice, moved onto the simulated day.
            let chosen = match (time(&real, "next_check"), time(&real, "finished")) {
                (Some(at), Some(fin)) => Some(at - fin),
                _ => None,
            };
            let now = clock.now();
            let mut rec = RunRecord::decision(
                "monitor",
                due.trigger.as_str(),
                due.slot,
                now,
                Outcome::Silent,
                String::new(),
            );
            rec.note = None;
            rec.next_check = chosen.map(|d| now + d);
            runlog.append(&rec)?;
            sched.finished(&def, &rec, true);
        }
    }
    let reqs = fake.requests();
    if reqs.len() != 2 * runs {
        bail!("{} requests for {runs} runs of two turns", reqs.len());
    }
    let bytes_sent = reqs.iter().map(|r| r.body.len()).sum();
    // What a model on a quiet channel says: the two short tool calls above.
    let bytes_received = reqs.len() * 120;
    keep(args, run_tmp);
    keep(args, sim_tmp);
    Ok(Day {
        runs,
        requests: reqs.len(),
        bytes_sent,
        bytes_received,
        wall: t.elapsed(),
    })
}

fn cost(d: &Day, model: &str) -> Option<f64> {
    let usage = Usage {
        input: (d.bytes_sent as f64 / BYTES_PER_TOKEN) as u64,
        output: (d.bytes_received as f64 / BYTES_PER_TOKEN) as u64,
        cache_read: 0,
        cache_write: 0,
    };
    loops_core::pricing::estimate(&usage, model).map(|c| c.0)
}

fn main() {
    let args = Args::parse();
    let model = args
        .value("model")
        .unwrap_or_else(|| "claude-haiku-4-5".to_string());
    println!(
        "== cadence: a day of a 10-minute monitor on a quiet channel, fixed vs adaptive ({model})"
    );
    println!("{}", machine());
    let mut days = Vec::new();
    for adaptive in [false, true] {
        match day(&args, adaptive, &model) {
            Ok(d) => days.push(d),
            Err(e) => {
                eprintln!("cadence: {e:#}");
                std::process::exit(1);
            }
        }
    }
    for (name, d) in ["fixed every: 10m", "adaptive min 10m, max 2h"]
        .iter()
        .zip(&days)
    {
        let tokens = (d.bytes_sent + d.bytes_received) as f64 / BYTES_PER_TOKEN;
        println!(
            "  {name:<26} {:>4} runs, {:>4} requests, {:>9} bytes sent, ~{:>7.0} tokens, ~${:.4} a day (walked in {:.1?})",
            d.runs,
            d.requests,
            d.bytes_sent,
            tokens,
            cost(d, &model).unwrap_or(f64::NAN),
            d.wall
        );
    }
    let (f, a) = (&days[0], &days[1]);
    println!(
        "RESULT cadence quiet day: fixed runs={} bytes={} cost=${:.4}; adaptive runs={} bytes={} cost=${:.4}; adaptive costs {:.1} % of fixed",
        f.runs,
        f.bytes_sent,
        cost(f, &model).unwrap_or(f64::NAN),
        a.runs,
        a.bytes_sent,
        cost(a, &model).unwrap_or(f64::NAN),
        100.0 * a.bytes_sent as f64 / f.bytes_sent.max(1) as f64
    );
}
