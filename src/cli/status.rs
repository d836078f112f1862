//! `loops status`: one screen that says what the runner is doing — the daemon, the loops,
//! the inbox, the job queue, deliveries, MCP servers, recent runs and commits.

use super::error::CliError;
use super::output::{relative, span, table};
use chrono::Utc;
use loops_core::handoff::Stage;
use loops_core::layout::Layout;
use loops_core::runs::RunLog;
use loops_core::workspace::Workspace;
use serde_json::{json, Value};

type Result<T = ()> = std::result::Result<T, CliError>;

const RECENT: usize = 5;

pub(super) fn status(ws: &Workspace, json_out: bool) -> Result {
    let now = Utc::now();
    let daemon = loops_core::daemon_lock::daemon_alive(ws);
    let loops = crate::operator::loop_rows(ws, now);
    let handoffs = crate::operator::handoff_rows(ws, now);
    let store = loops_core::jobs::store::JobStore::new(ws);
    let stats = loops_core::jobs::stats::compute(&store, now, daemon.is_some());
    let deliveries = loops_core::channels::list_records(ws);
    let day_ago = now - chrono::Duration::hours(24);
    let recent_deliveries: Vec<&loops_core::channels::DeliveryRecord> =
        deliveries.iter().filter(|d| d.updated >= day_ago).collect();
    let count_status = |s: loops_core::channels::DeliveryStatus| {
        recent_deliveries.iter().filter(|d| d.status == s).count()
    };
    let layout = ws.layout();
    let mcp = mcp_servers(&layout);
    let (record_files, record_bytes) = loops_core::retention::total_size(layout.root());
    let policy = loops_core::retention::Policy::of(&ws.settings);
    // Limits the daemon's file watchers ran into (inotify watches or instances): it then
    // polls, and says so here.
    let watcher = daemon
        .as_ref()
        .and_then(|d| loops_core::watch::read_report(&layout, d.pid));

    let running = running_now(ws, &store, now);

    let runlog = RunLog::new(&layout.runs_dir(), ws.settings.rotate_bytes);
    let mut runs: Vec<loops_core::runs::RunRecord> = loops
        .iter()
        .map(|l| l.name.as_str())
        .chain(std::iter::once("main"))
        .flat_map(|n| runlog.recent(n, RECENT))
        .collect();
    runs.sort_by_key(|r| std::cmp::Reverse(r.finished));
    runs.truncate(RECENT);
    let commits = loops_core::history::read_log(&ws.root, None, RECENT).unwrap_or_default();
    // The daemon's own record: when it last stopped without a clean shutdown, and what
    // the next start recovered (.loops/daemon.jsonl, at most a couple of MB).
    let unclean: Vec<Value> = loops_core::journal::read(layout.root())
        .into_iter()
        .filter(|e| e["event"] == "unclean_stop")
        .collect();
    let unclean_24h = unclean
        .iter()
        .filter(|e| {
            e["at"]
                .as_str()
                .and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok())
                .is_some_and(|t| t >= day_ago)
        })
        .count();
    let last_unclean = unclean.last().cloned();
    // Run commits waiting in .loops/commits/, and why (git mid-operation, another branch).
    let (commits_waiting, held) = loops_core::git_gate::waiting(&layout);
    // What the live daemon made of loops.yaml: an edit it refused, settings waiting for a
    // restart.
    let settings_report = loops_core::workspace::SettingsReport::read(ws);

    let stage_count = |s: Stage| handoffs.iter().filter(|h| h.stage == s).count();
    let no_main = ws.settings.main.is_none() && stage_count(Stage::Pending) > 0;
    // Proposals a main session could not make itself wait for the person.
    let for_person = handoffs
        .iter()
        .filter(|h| h.stage == Stage::Pending && h.to == "person")
        .count();
    let failing = loops.iter().filter(|l| l.consecutive_failures > 0).count();
    let paused = loops.iter().filter(|l| l.paused.is_some()).count();
    let broken = loops
        .iter()
        .filter(|l| !l.errors.iter().all(|d| !d.is_error()))
        .count();

    if json_out {
        let local = loops_core::workspace::host_timezone();
        let v = json!({
            "workspace": ws.root,
            "version": env!("CARGO_PKG_VERSION"),
            "daemon": daemon.as_ref().map(|d| json!({
                "pid": d.pid,
                "started": d.started,
                "uptime_secs": (now - d.started).num_seconds().max(0),
                "version": d.version,
            })),
            "loops": loops.iter().map(|l| l.to_json(&local)).collect::<Vec<_>>(),
            "settings": settings_report.as_ref().map(|r| json!({
                "applied_at": r.applied_at,
                "rejected": r.rejected.as_ref().map(|e| json!({"at": e.at, "errors": e.errors})),
                "restart_needed": r.restart_needed,
            })),
            "inbox": {
                "no_main": no_main,
                "pending": stage_count(Stage::Pending),
                "for_person": for_person,
                "active": stage_count(Stage::Active),
                "rejected": stage_count(Stage::Rejected),
            },
            "jobs": {
                "active": stats.health.active,
                "waiting": stats.health.waiting,
                "delayed": stats.health.delayed,
                "paused": stats.health.paused,
                "stalled": stats.health.stalled,
                "warnings": stats.warnings,
            },
            "deliveries_24h": {
                "delivered": count_status(loops_core::channels::DeliveryStatus::Delivered),
                "delivery_failed": count_status(loops_core::channels::DeliveryStatus::DeliveryFailed),
                "blocked": count_status(loops_core::channels::DeliveryStatus::Blocked),
            },
            "mcp_servers": mcp,
            "records": {
                "files": record_files,
                "bytes": record_bytes,
                "max_total_bytes": policy.max_total_bytes,
                "max_age": policy.max_age.map(loops_core::duration::format_duration),
            },
            "running": running.iter().map(|r| json!({
                "what": r.what, "name": r.name, "detail": r.detail,
                "started": r.started, "running_secs": r.running_secs(now),
            })).collect::<Vec<_>>(),
            "watcher_problems": watcher.as_ref().map(|w| w.problems.clone()).unwrap_or_default(),
            "unclean_stops_24h": unclean_24h,
            "last_unclean_stop": last_unclean,
            "recent_runs": runs.iter().map(|r| json!({
                "loop": r.loop_name, "run_id": r.run_id, "outcome": r.outcome,
                "finished": r.finished, "duration_ms": r.duration_ms, "error": r.error,
                "held_back": r.held_back,
            })).collect::<Vec<_>>(),
            "commits": {
                "waiting": commits_waiting,
                "held": held.as_ref().map(|h| json!({"reason": h.reason, "since": h.since})),
            },
            "recent_commits": commits.iter().map(|c| json!({
                "commit": c.commit, "time": c.time, "loop": c.loop_name, "summary": c.summary,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }

    let mut out = String::new();
    out.push_str(&format!(
        "loops {} — {}\n\n",
        env!("CARGO_PKG_VERSION"),
        ws.root.display()
    ));
    let daemon_line = match &daemon {
        Some(d) => format!(
            "running, pid {}, up {}{}",
            d.pid,
            span((now - d.started).to_std().unwrap_or_default()),
            if d.version != env!("CARGO_PKG_VERSION") {
                format!(" (version {}: restart it to run this one)", d.version)
            } else {
                String::new()
            }
        ),
        None => "not running: nothing runs on schedule. Start it with `loops run` (or `loops service install`)".into(),
    };
    let mut lines: Vec<(String, String)> = vec![("daemon".into(), daemon_line)];
    lines.push((
        "loops".into(),
        format!(
            "{} — {} failing, {} paused, {} with errors",
            loops.len(),
            failing,
            paused,
            broken
        ),
    ));
    lines.push((
        "inbox".into(),
        format!(
            "{} pending, {} active, {} rejected{}",
            stage_count(Stage::Pending),
            stage_count(Stage::Active),
            stage_count(Stage::Rejected),
            if for_person > 0 {
                format!(" · {for_person} for you (to: person; see `loops inbox`)")
            } else {
                String::new()
            }
        ) + if no_main {
            " · nothing receives them: loops.yaml has no `main:` session"
        } else {
            ""
        },
    ));
    lines.push((
        "jobs".into(),
        format!(
            "{} active, {} waiting, {} delayed, {} paused, {} stalled",
            stats.health.active,
            stats.health.waiting,
            stats.health.delayed,
            stats.health.paused,
            stats.health.stalled
        ),
    ));
    if !ws.settings.channels.is_empty() || !deliveries.is_empty() {
        lines.push((
            "deliveries".into(),
            format!(
                "last 24 h: {} delivered, {} failed, {} blocked",
                count_status(loops_core::channels::DeliveryStatus::Delivered),
                count_status(loops_core::channels::DeliveryStatus::DeliveryFailed),
                count_status(loops_core::channels::DeliveryStatus::Blocked)
            ),
        ));
    }
    if let Some(line) = commits_line(commits_waiting, held.as_ref()) {
        lines.push(("commits".into(), line));
    }
    for line in settings_lines(settings_report.as_ref(), now) {
        lines.push(("loops.yaml".into(), line));
    }
    if let Some(u) = &last_unclean {
        let n = |k: &str| u["recovered"][k].as_array().map_or(0, Vec::len);
        let when = u["at"]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok())
            .map(|t| relative(t, now))
            .unwrap_or_else(|| "at an unknown time".into());
        let pids: Vec<String> = u["previous"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["pid"].to_string())
            .collect();
        lines.push((
            "crashes".into(),
            format!(
                "{unclean_24h} unclean stop(s) in 24 h; last found {when} (pid {}): recovered {} run(s), {} handoff(s), {} job(s) — see .loops/daemon.jsonl",
                pids.join(", "),
                n("runs"),
                n("handoffs"),
                n("jobs_requeued") + n("jobs_dead")
            ),
        ));
    }
    if !mcp.is_empty() {
        let s: Vec<String> = mcp
            .iter()
            .map(|m| {
                format!(
                    "{} {}{}",
                    m["name"].as_str().unwrap_or("?"),
                    m["state"].as_str().unwrap_or("?"),
                    match m["restarts"].as_u64() {
                        Some(n) if n > 0 => format!(" ({n} restart(s))"),
                        _ => String::new(),
                    }
                )
            })
            .collect();
        lines.push(("mcp".into(), s.join(", ")));
    }
    lines.push((
        "records".into(),
        format!(
            ".loops/ {} in {} files ({}; `loops prune --dry-run` shows what goes next)",
            loops_core::retention::human_bytes(record_bytes),
            record_files,
            policy.describe()
        ),
    ));
    if let Some(w) = &watcher {
        // One line per limit, naming the folders it left unwatched.
        let mut by_limit: Vec<(String, Vec<String>)> = Vec::new();
        for p in &w.problems {
            let limit = p.limit.clone().unwrap_or_else(|| p.error.clone());
            let folder = ws.relative(&p.path).display().to_string();
            match by_limit.iter_mut().find(|(l, _)| *l == limit) {
                Some((_, folders)) => folders.push(folder),
                None => by_limit.push((limit, vec![folder])),
            }
        }
        let what: Vec<String> = by_limit
            .iter()
            .map(|(l, f)| format!("{l} reached (not watched: {})", f.join(", ")))
            .collect();
        lines.push((
            "watcher".into(),
            format!(
                "polling every {}: {}",
                loops_core::duration::format_duration(loops_core::watch::POLL_EVERY),
                what.join("; ")
            ),
        ));
    }
    for (k, v) in &lines {
        out.push_str(&format!("{k:<11}{v}\n"));
    }

    if !loops.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = loops
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    l.next
                        .map(|n| relative(n, now))
                        .unwrap_or_else(|| "-".into()),
                    l.last
                        .as_ref()
                        .map(|r| format!("{} {}", r.outcome, relative(r.finished, now)))
                        .unwrap_or_else(|| "never run".into()),
                    l.status.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["LOOP", "NEXT", "LAST", "STATUS"], &rows));
    }
    if !running.is_empty() {
        out.push_str("\nRunning now\n");
        let rows: Vec<Vec<String>> = running
            .iter()
            .map(|r| {
                vec![
                    format!("{} {}", r.what, r.name),
                    span((now - r.started).to_std().unwrap_or_default()),
                    r.detail.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["WHAT", "FOR", "DETAIL"], &rows));
    }
    if !runs.is_empty() {
        out.push_str("\nRecent runs\n");
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|r| {
                vec![
                    relative(r.finished, now),
                    r.loop_name.clone(),
                    r.outcome.to_string(),
                    loops_core::text::clip(
                        r.error.as_deref().or(r.summary.as_deref()).unwrap_or(""),
                        60,
                    ),
                ]
            })
            .collect();
        out.push_str(&table(&["WHEN", "LOOP", "OUTCOME", "DETAIL"], &rows));
        out.push_str(&held_back_lines(&runs));
    }
    if !commits.is_empty() {
        out.push_str("\nRecent commits\n");
        let rows: Vec<Vec<String>> = commits
            .iter()
            .map(|c| {
                vec![
                    c.commit.chars().take(8).collect(),
                    relative(c.time, now),
                    loops_core::text::clip(&c.summary, 70),
                ]
            })
            .collect();
        out.push_str(&table(&["COMMIT", "WHEN", "SUMMARY"], &rows));
    }
    let mut warnings = stats.warnings.clone();
    if daemon.is_none() && (stats.health.waiting > 0 || stage_count(Stage::Pending) > 0) {
        warnings.push("work is waiting and no daemon is running: start `loops run`".into());
    }
    let mut seen = std::collections::HashSet::new();
    for p in watcher.iter().flat_map(|w| &w.problems) {
        if let Some(h) = p.help.as_ref().filter(|h| seen.insert(h.as_str())) {
            warnings.push(format!("the daemon's file watcher is degraded: {h}"));
        }
    }
    if !warnings.is_empty() {
        out.push('\n');
        for w in warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
    }
    print!("{out}");
    Ok(())
}

/// Something running now: a loop's run, a main-session wake or a job.
struct Running {
    what: &'static str,
    name: String,
    detail: String,
    started: chrono::DateTime<Utc>,
}

impl Running {
    fn running_secs(&self, now: chrono::DateTime<Utc>) -> i64 {
        (now - self.started).num_seconds().max(0)
    }
}

/// The runs and wakes (light jobs in the queue) that belong to a live process (a dead
/// one's are left for the next start to recover, and are not running), and the other
/// active jobs whose runner is alive; longest-running first.
fn running_now(
    ws: &Workspace,
    jobs: &loops_core::jobs::store::JobStore,
    now: chrono::DateTime<Utc>,
) -> Vec<Running> {
    let mut out: Vec<Running> = loops_core::runs::RunningSet::new(ws.layout().root())
        .all()
        .into_iter()
        .filter(|m| loops_core::fsutil::process_alive(m.pid, m.pid_start))
        // The daemon marks a run when it claims its slot, with the time it may start;
        // one claimed for a later second has not started yet.
        .filter(|m| m.started <= now)
        .map(|m| {
            let wake = m.loop_name == crate::engine::run_context::MAIN;
            Running {
                what: if wake { "wake" } else { "run" },
                name: if wake {
                    "main session".into()
                } else {
                    m.loop_name.clone()
                },
                detail: format!("{} · run {}", m.trigger, m.run_id),
                started: m.started,
            }
        })
        .collect();
    let (live, _) = jobs.live_jobs();
    out.extend(live.iter().filter_map(|j| {
        let lease = j.lease.as_ref()?;
        let shown = j.state == loops_core::jobs::job::JobState::Active && !j.kind.is_light();
        (shown && lease.owner_alive()).then(|| {
            Running {
                what: "job",
                name: format!("#{} ({})", j.id, loops_core::text::clip(&j.name, 40)),
                detail: {
                    let mut d = format!(
                        "{} · attempt {}/{}",
                        j.kind.as_str(),
                        (j.attempts + 1).min(j.max_attempts.max(1)),
                        j.max_attempts
                    );
                    // An agent's turn and last tool say where it is; a shell job's
                    // progress would only repeat "running".
                    if j.kind != loops_core::jobs::job::JobKind::Shell {
                        d.push_str(&format!(
                            " · {}",
                            loops_core::jobs::report::progress_line(j)
                        ));
                    }
                    d
                },
                started: lease.since,
            }
        })
    }));
    out.sort_by_key(|r| r.started);
    out
}

/// `.loops/mcp/<server>.json` status files, trimmed to what a person needs.
fn mcp_servers(layout: &Layout) -> Vec<Value> {
    let mut out: Vec<Value> = std::fs::read_dir(layout.mcp_dir())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| {
            let name = v
                .get("server")
                .or_else(|| v.get("name"))
                .cloned()
                .unwrap_or(Value::Null);
            json!({
                "name": name,
                "state": v.get("state").cloned().unwrap_or(Value::Null),
                "pid": v.get("pid").cloned().unwrap_or(Value::Null),
                "restarts": v.get("restarts").cloned().unwrap_or(json!(0)),
                "last_error": v.get("last_error").cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    out.sort_by(|a, b| a["name"].to_string().cmp(&b["name"].to_string()));
    out
}

/// The paths recent runs left out of their commits: a person's edits, still uncommitted
/// in the work tree, that they may want to look at.
fn held_back_lines(runs: &[loops_core::runs::RunRecord]) -> String {
    let mut out = String::new();
    for r in runs.iter().filter(|r| !r.held_back.is_empty()) {
        for h in &r.held_back {
            out.push_str(&format!(
                "  held back by {} ({}): {}: {}\n",
                r.loop_name, r.run_id, h.path, h.why
            ));
        }
    }
    if out.is_empty() {
        return out;
    }
    format!("Not committed by a run (left in the work tree as they are)\n{out}")
}

/// "held: a rebase in progress since 10:02; 14 runs waiting", or None when nothing waits.
/// What the daemon says about loops.yaml: an edit it did not apply, and keys whose change
/// waits for a restart.
fn settings_lines(
    r: Option<&loops_core::workspace::SettingsReport>,
    now: chrono::DateTime<Utc>,
) -> Vec<String> {
    let Some(r) = r else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(e) = &r.rejected {
        out.push(format!(
            "an edit {} is not applied; the daemon runs on the last good settings until it is fixed: {}",
            relative(e.at, now),
            e.errors.first().map(|l| l.lines().next().unwrap_or("")).unwrap_or("")
        ));
    }
    if !r.restart_needed.is_empty() {
        out.push(format!(
            "{} changed; it takes effect when the daemon restarts",
            r.restart_needed.join(", ")
        ));
    }
    out
}

fn commits_line(waiting: usize, held: Option<&loops_core::git_gate::HeldReport>) -> Option<String> {
    let runs = format!(
        "{waiting} run{} waiting",
        if waiting == 1 { "" } else { "s" }
    );
    match held {
        Some(h) => {
            let since = h.since.with_timezone(&chrono::Local).format("%H:%M");
            Some(format!("held: {} since {since}; {runs}", h.reason))
        }
        None if waiting > 0 => Some(runs),
        None => None,
    }
}
