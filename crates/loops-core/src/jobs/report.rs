//! How a job is shown: one format everywhere (CLI, `--follow`, MCP).
//!
//! ```text
//! Job #12 (research acme) — active
//!   progress: turn 3 of 20, last tool read_file
//!   tokens:   1,234 in / 56 out / 789 cached
//!   runtime:  4.2s
//!   children: 20 (17 completed, 3 failed)
//! ```

use super::job::*;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// `Job #ID (name) — status`
pub fn headline(j: &Job) -> String {
    format!("Job #{} ({}) — {}", j.id, j.name, j.shown_state(Utc::now()))
}

/// Where a job is, in one line for a `--follow` display: its state and attempt, its step
/// and last tool, how many of its children are done, a delayed job's next try.
/// `children_done` is `None` when the job has no children.
pub fn follow_line(j: &Job, children_done: Option<(usize, usize)>) -> String {
    let mut parts = vec![format!("job #{} {}", j.id, j.shown_state(Utc::now()))];
    if j.state == JobState::Active {
        let n = (j.attempts + 1).min(j.max_attempts.max(1));
        parts.push(format!("attempt {n}/{}", j.max_attempts));
        parts.push(progress_line(j));
    }
    if let Some((done, all)) = children_done {
        parts.push(format!("children {done}/{all} done"));
    }
    if let (JobState::Delayed, Some(at), Some(_)) = (j.state, j.run_at, &j.held) {
        parts.push(format!("held until {}", at.format("%Y-%m-%d %H:%M UTC")));
    } else if let (JobState::Delayed, Some(at)) = (j.state, j.run_at) {
        parts.push(format!(
            "attempt {} of {} at {}",
            j.attempts + 1,
            j.max_attempts,
            at.format("%H:%M:%S UTC")
        ));
    }
    parts.join(" · ")
}

/// Thousands separators, for token counts.
pub fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn tokens_line(t: &Tokens) -> String {
    format!(
        "{} in / {} out / {} cached",
        num(t.input),
        num(t.output),
        num(t.cache_read)
    )
}

/// The tokens a job has used so far: finished runs, the one going now, its children.
pub fn tokens_now(j: &Job) -> Tokens {
    let mut t = j.total_tokens();
    t.add(&j.progress.tokens);
    t
}

pub fn progress_line(j: &Job) -> String {
    if j.kind.is_light() {
        return run_line(j);
    }
    let p = &j.progress;
    let mut s = match (j.kind, p.total) {
        (JobKind::Shell, _) if j.state == JobState::Active => "running".to_string(),
        (JobKind::Shell, _) if j.state == JobState::Paused && j.lease.is_some() => {
            "stopped (paused)".to_string()
        }
        // A job cancelled before any runner took it never ran at all.
        (_, _) if j.state == JobState::Cancelled && j.started.is_none() => {
            "cancelled before it started".to_string()
        }
        (JobKind::Shell, _) if j.state == JobState::Cancelled => "cancelled".to_string(),
        (_, Some(t)) if j.state == JobState::Cancelled => {
            format!("cancelled at turn {} of at most {t}", p.step)
        }
        (_, None) if j.state == JobState::Cancelled => format!("cancelled at turn {}", p.step),
        // The progress write at spawn can lose the race with a fast command's end.
        (JobKind::Shell, _) if j.started.is_none() => "not started".to_string(),
        (JobKind::Shell, _) => "ran".to_string(),
        (_, Some(t)) => format!("turn {} of at most {t}", p.step),
        (_, None) => format!("turn {}", p.step),
    };
    if let Some(t) = &p.last_tool {
        s.push_str(&format!(", last tool {t}"));
    }
    if let Some(n) = p.note.as_ref().filter(|_| !j.state.is_terminal()) {
        s.push_str(&format!(" ({n})"));
    }
    s
}

/// Where a loop's run or a wake is, from the run its light job names (its params are the
/// run's marker: `run_id`, `trigger`, `slot`, `begun`; a wake's `handoffs`).
fn run_line(j: &Job) -> String {
    let p = &j.params;
    let text = |k: &str| p.get(k).and_then(|v| v.as_str());
    let begun = p.get("begun").and_then(|v| v.as_bool()).unwrap_or(false);
    let mut s = match j.state {
        JobState::Cancelled => "cancelled".to_string(),
        _ if begun => "running".to_string(),
        _ => {
            "waiting to begin (its time, or its turn under limits.max_concurrent_jobs)".to_string()
        }
    };
    let mut about = Vec::new();
    if let Some(id) = text("run_id") {
        about.push(format!("run {id}"));
    }
    if let Some(t) = text("trigger") {
        about.push(match text("slot") {
            Some(slot) => format!("{t}, slot {slot}"),
            None => t.to_string(),
        });
    }
    if let Some(n) = p.get("handoffs").and_then(|v| v.as_array()).map(Vec::len) {
        about.push(format!("{n} handoff{}", if n == 1 { "" } else { "s" }));
    }
    if !about.is_empty() {
        s.push_str(&format!(" ({})", about.join("; ")));
    }
    s
}

/// Child states by count: what has ended (from child_done messages) and what has not.
pub fn child_counts(j: &Job) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in j.child_done_messages() {
        let st = c
            .body
            .get("state")
            .and_then(|v| v.as_str())
            .unwrap_or("ended");
        *m.entry(st.to_string()).or_insert(0) += 1;
    }
    let outstanding = super::queue::outstanding_children(j).len();
    if outstanding > 0 {
        m.insert("running or waiting".into(), outstanding);
    }
    m
}

pub fn children_line(j: &Job) -> Option<String> {
    if j.children.is_empty() {
        return None;
    }
    let parts: Vec<String> = child_counts(j)
        .into_iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    Some(format!("{} ({})", j.children.len(), parts.join(", ")))
}

pub fn short_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        crate::duration::format_duration(std::time::Duration::from_millis(ms))
    }
}

/// The standard report.
pub fn report(j: &Job, now: DateTime<Utc>) -> String {
    let mut s = headline(j);
    s.push('\n');
    s.push_str(&format!("  progress: {}\n", progress_line(j)));
    // A run's tokens are in its run record, not its light job.
    if !j.kind.is_light() {
        s.push_str(&format!("  tokens:   {}\n", tokens_line(&tokens_now(j))));
    }
    s.push_str(&format!("  runtime:  {}\n", short_ms(j.elapsed_ms(now))));
    if let Some(c) = children_line(j) {
        s.push_str(&format!("  children: {c}\n"));
    }
    if let Some(e) = &j.error {
        if j.state != JobState::Completed {
            s.push_str(&format!("  error:    {e}\n"));
        }
    }
    if let Some(t) = j
        .run_at
        .filter(|_| j.state == JobState::Delayed && !j.kind.is_light())
    {
        match &j.held {
            Some(why) => s.push_str(&format!("  held:     {why}\n")),
            None => s.push_str(&format!("  next try: {}\n", t.to_rfc3339())),
        }
    }
    s
}

/// Everything `jobs get` shows, as text.
pub fn details(j: &Job, now: DateTime<Utc>) -> String {
    let mut s = report(j, now);
    s.push_str(&format!(
        "  kind:     {}   queue: {}   priority: {}\n",
        j.kind, j.queue, j.priority
    ));
    s.push_str(&format!(
        "  attempts: {} of {}   stalls: {} of at most {}\n",
        j.attempts, j.max_attempts, j.stalls, j.max_stalled
    ));
    if let Some(t) = j.timeout() {
        s.push_str(&format!(
            "  timeout:  {}\n",
            crate::duration::format_duration(t)
        ));
    }
    if let Some(p) = j.parent {
        s.push_str(&format!("  parent:   #{p}\n"));
    }
    if let Some(r) = j.replay_of {
        s.push_str(&format!("  replay of #{r}\n"));
    }
    if let Some(k) = &j.idempotency_key {
        s.push_str(&format!("  idempotency key: {k}\n"));
    }
    s.push_str(&format!("  params:   {}\n", j.params));
    s.push_str(&format!("  created:  {}\n", j.created.to_rfc3339()));
    if let Some(t) = j.started {
        s.push_str(&format!("  started:  {}\n", t.to_rfc3339()));
    }
    if let Some(t) = j.finished {
        s.push_str(&format!("  finished: {}\n", t.to_rfc3339()));
    }
    if let Some(r) = &j.result {
        push_result(&mut s, r);
    }
    if !j.children.is_empty() {
        let ids: Vec<String> = j.children.iter().map(|c| format!("#{c}")).collect();
        s.push_str(&format!("  children: {}\n", ids.join(" ")));
    }
    push_history(&mut s, j);
    push_steering(&mut s, j);
    s
}

/// The `result:` section of [`details`].
fn push_result(s: &mut String, r: &JobResult) {
    s.push_str("  result:\n");
    if let Some(c) = r.exit_code {
        s.push_str(&format!("    exit code: {c}\n"));
    }
    if let Some(sig) = r.signal {
        s.push_str(&format!("    signal: {sig}\n"));
    }
    if let Some(sum) = &r.summary {
        s.push_str(&format!("    summary: {}\n", sum.replace('\n', "\n      ")));
    }
    if !r.stdout_tail.is_empty() {
        s.push_str(&format!(
            "    stdout: {}\n",
            crate::text::clip(r.stdout_tail.trim_end(), 2000).replace('\n', "\n      ")
        ));
    }
    if !r.stderr_tail.is_empty() {
        s.push_str(&format!(
            "    stderr: {}\n",
            crate::text::clip(r.stderr_tail.trim_end(), 2000).replace('\n', "\n      ")
        ));
    }
    if let Some(c) = &r.commit {
        s.push_str(&format!("    commit: {c}\n"));
    }
}

/// The `history:` section of [`details`]: every transition, with its reason.
fn push_history(s: &mut String, j: &Job) {
    s.push_str("  history:\n");
    for t in &j.history {
        s.push_str(&format!(
            "    {}  {} → {}{}\n",
            t.at.to_rfc3339(),
            t.from.map(|f| f.as_str()).unwrap_or("·"),
            t.to,
            t.reason
                .as_deref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        ));
    }
}

/// The `messages:` section of [`details`]: steering messages with their read receipts.
fn push_steering(s: &mut String, j: &Job) {
    let steer: Vec<&JobMessage> = j
        .messages
        .iter()
        .filter(|m| m.kind == MessageKind::Steer)
        .collect();
    if !steer.is_empty() {
        s.push_str("  messages:\n");
        for m in steer {
            let read = match &m.read {
                Some(r) => format!("read {} before turn {}", r.at.to_rfc3339(), r.turn),
                None => "unread".into(),
            };
            s.push_str(&format!(
                "    {}. from {} at {}: {} — {read}\n",
                m.seq,
                m.from,
                m.at.to_rfc3339(),
                m.body
            ));
        }
    }
}

/// The JSON of `jobs get --json` and MCP `get_job`: the job file plus computed fields.
pub fn to_json(j: &Job, now: DateTime<Utc>) -> Value {
    let mut v = serde_json::to_value(j).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("state".into(), json!(j.shown_state(now)));
        o.insert("report".into(), json!(headline(j)));
        o.insert("total_tokens".into(), json!(tokens_now(j)));
        o.insert("elapsed_ms".into(), json!(j.elapsed_ms(now)));
        o.insert("children_counts".into(), json!(child_counts(j)));
    }
    v
}

/// The cheap progress view (`jobs progress`, MCP `get_job_progress`).
pub fn progress_json(j: &Job, now: DateTime<Utc>) -> Value {
    json!({
        "id": j.id,
        "name": j.name,
        "state": j.shown_state(now),
        "step": j.progress.step,
        "total": j.progress.total,
        "last_tool": j.progress.last_tool,
        "tokens": tokens_now(j),
        "elapsed_ms": j.elapsed_ms(now),
        "children": child_counts(j),
        "report": report(j, now),
    })
}
