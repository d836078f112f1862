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
    let snap = Snapshot::gather(ws, now);
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&snap.to_json()).unwrap_or_default()
        );
    } else {
        print!("{}", snap.text());
    }
    Ok(())
}

/// Everything `loops status` shows, read once.
struct Snapshot<'a> {
    ws: &'a Workspace,
    now: chrono::DateTime<Utc>,
    daemon: Option<loops_core::daemon_lock::LockInfo>,
    loops: Vec<crate::operator::LoopRow>,
    handoffs: Vec<crate::operator::HandoffRow>,
    stats: loops_core::jobs::stats::Stats,
    deliveries: Vec<loops_core::channels::DeliveryRecord>,
    mcp: Vec<Value>,
    record_files: u64,
    record_bytes: u64,
    policy: loops_core::retention::Policy,
    /// Limits the daemon's file watchers ran into (inotify watches or instances): it
    /// then polls, and says so here.
    watcher: Option<loops_core::watcher::WatchReport>,
    running: Vec<Running>,
    runs: Vec<loops_core::runs::RunRecord>,
    commits: Vec<loops_core::history::LogEntry>,
    unclean_24h: usize,
    last_unclean: Option<Value>,
    /// Run commits waiting in .loops/commits/, and why (git mid-operation, another branch).
    commits_waiting: usize,
    held: Option<loops_core::git_gate::HeldReport>,
    /// What the live daemon made of loops.yaml: an edit it refused, settings waiting for
    /// a restart.
    settings_report: Option<loops_core::workspace::SettingsReport>,
    /// The git remote as the last sync saw it (loops.yaml `remote:`).
    remote: Option<loops_core::remote::RemoteState>,
    /// The main session held for the rest of the day: the budget is spent.
    main_hold: Option<crate::engine::doorbell::BudgetHold>,
    /// Why `.loops/main/budget-hold.json` cannot be read, and what to do.
    main_hold_damaged: Option<String>,
    /// What was spent today, by who spent it: the workspace budget counts all three.
    spend: SpendToday,
}

/// Today's spend (UTC day) of the loops, the main session and the agent jobs.
struct SpendToday {
    loops: loops_core::spend::Spend,
    main: loops_core::spend::Spend,
    jobs: loops_core::spend::Spend,
}

impl SpendToday {
    fn gather(
        ws: &Workspace,
        loops: &[crate::operator::LoopRow],
        now: chrono::DateTime<Utc>,
    ) -> Self {
        let layout = ws.layout();
        let runlog = loops_core::runs::RunLog::new(&layout.runs_dir(), u64::MAX);
        let mut of_loops = loops_core::spend::Spend::default();
        for row in loops {
            of_loops.add(&row.spent_today);
        }
        SpendToday {
            loops: of_loops,
            main: loops_core::spend::spent_today(&runlog, "main", now),
            jobs: loops_core::spend::jobs_spent_today(&layout.jobs_spend_dir(), now),
        }
    }

    fn total(&self) -> loops_core::spend::Spend {
        let mut all = self.loops;
        all.add(&self.main);
        all.add(&self.jobs);
        all
    }
}

impl<'a> Snapshot<'a> {
    fn gather(ws: &'a Workspace, now: chrono::DateTime<Utc>) -> Self {
        let daemon = loops_core::daemon_lock::daemon_alive(ws);
        let loops = crate::operator::loop_rows(ws, now);
        let store = loops_core::jobs::store::JobStore::new(ws);
        let layout = ws.layout();
        let (record_files, record_bytes) = loops_core::retention::total_size(layout.root());
        let (commits_waiting, held) = loops_core::git_gate::waiting(&layout);
        let (unclean_24h, last_unclean) = unclean_stops(&layout, now);
        let spend = SpendToday::gather(ws, &loops, now);
        let hold_file = layout.main_budget_hold();
        let (main_hold, main_hold_damaged) =
            match crate::engine::doorbell::BudgetHold::load(&hold_file) {
                Ok(hold) => (hold.filter(|h| now < h.until), None),
                Err(e) => (
                    None,
                    Some(crate::engine::doorbell::BudgetHold::damaged(&hold_file, &e)),
                ),
            };
        Snapshot {
            ws,
            now,
            watcher: daemon
                .as_ref()
                .and_then(|d| loops_core::watcher::read_report(&layout, d.pid)),
            stats: loops_core::jobs::stats::compute(&store, now, daemon.is_some()),
            running: running_now(ws, &store, now),
            runs: recent_runs(ws, &layout, &loops),
            handoffs: crate::operator::handoff_rows(ws, now),
            deliveries: loops_core::channels::list_records(ws),
            mcp: mcp_servers(&layout),
            policy: loops_core::retention::Policy::of(&ws.settings),
            commits: loops_core::history::read_log(&ws.root, None, RECENT).unwrap_or_default(),
            settings_report: loops_core::workspace::SettingsReport::read(ws),
            remote: ws
                .settings
                .remote
                .as_ref()
                .map(|_| loops_core::remote::RemoteState::load(&layout).unwrap_or_default()),
            daemon,
            loops,
            record_files,
            record_bytes,
            unclean_24h,
            last_unclean,
            commits_waiting,
            held,
            main_hold,
            main_hold_damaged,
            spend,
        }
    }

    fn stage_count(&self, s: Stage) -> usize {
        self.handoffs.iter().filter(|h| h.stage == s).count()
    }

    /// Handoffs wait and loops.yaml has no `main:` session to receive them.
    fn no_main(&self) -> bool {
        self.ws.settings.main.is_none() && self.stage_count(Stage::Pending) > 0
    }

    /// Proposals a main session could not make itself, waiting for the person.
    fn for_person(&self) -> usize {
        self.handoffs
            .iter()
            .filter(|h| h.stage == Stage::Pending && h.to == "person")
            .count()
    }

    /// Deliveries of the last 24 hours with status `s`.
    fn deliveries_24h(&self, s: loops_core::channels::DeliveryStatus) -> usize {
        let day_ago = self.now - chrono::Duration::hours(24);
        self.deliveries
            .iter()
            .filter(|d| d.updated >= day_ago && d.status == s)
            .count()
    }

    fn to_json(&self) -> Value {
        use loops_core::channels::DeliveryStatus;
        let (now, stats) = (self.now, &self.stats);
        let local = loops_core::workspace::host_timezone();
        json!({
            "workspace": self.ws.root,
            "version": env!("CARGO_PKG_VERSION"),
            "daemon": self.daemon.as_ref().map(|d| json!({
                "pid": d.pid,
                "started": d.started,
                "uptime_secs": (now - d.started).num_seconds().max(0),
                "version": d.version,
            })),
            "loops": self.loops.iter().map(|l| l.to_json(&local)).collect::<Vec<_>>(),
            "settings": self.settings_report.as_ref().map(|r| json!({
                "applied_at": r.applied_at,
                "rejected": r.rejected.as_ref().map(|e| json!({"at": e.at, "errors": e.errors})),
                "restart_needed": r.restart_needed,
            })),
            "inbox": {
                "no_main": self.no_main(),
                "pending": self.stage_count(Stage::Pending),
                "for_person": self.for_person(),
                "active": self.stage_count(Stage::Active),
                "rejected": self.stage_count(Stage::Rejected),
                "main_held": self.main_hold.as_ref().map(|h| json!({"until": h.until, "why": h.why})),
                "main_hold_damaged": self.main_hold_damaged,
            },
            "jobs": {
                "active": stats.health.active,
                "waiting": stats.health.waiting,
                "delayed": stats.health.delayed,
                "held": stats.health.held,
                "paused": stats.health.paused,
                "stalled": stats.health.stalled,
                "warnings": stats.warnings,
            },
            "spend_today": self.spend_json(),
            "deliveries_24h": {
                "delivered": self.deliveries_24h(DeliveryStatus::Delivered),
                "delivery_failed": self.deliveries_24h(DeliveryStatus::DeliveryFailed),
                "blocked": self.deliveries_24h(DeliveryStatus::Blocked),
            },
            "mcp_servers": self.mcp,
            "records": {
                "files": self.record_files,
                "bytes": self.record_bytes,
                "max_total_bytes": self.policy.max_total_bytes,
                "max_age": self.policy.max_age.map(loops_core::duration::format_duration),
            },
            "running": self.running.iter().map(|r| json!({
                "what": r.what, "name": r.name, "detail": r.detail,
                "started": r.started, "running_secs": r.running_secs(now),
            })).collect::<Vec<_>>(),
            "watcher_problems": self.watcher.as_ref().map(|w| w.problems.clone()).unwrap_or_default(),
            "unclean_stops_24h": self.unclean_24h,
            "last_unclean_stop": self.last_unclean,
            "recent_runs": self.runs.iter().map(|r| json!({
                "loop": r.loop_name, "run_id": r.run_id, "outcome": r.outcome,
                "finished": r.finished, "duration_ms": r.duration_ms, "error": r.error,
                "held_back": r.held_back,
            })).collect::<Vec<_>>(),
            "remote": self.remote.as_ref().map(|r| json!({
                "name": self.ws.settings.remote.as_ref().map(|s| s.name.clone()),
                "branch": r.branch,
                "ahead": r.ahead,
                "behind": r.behind,
                "last_fetch": r.last_fetch,
                "last_push": r.last_push,
                "last_error": r.last_error,
                "failing_since": r.failing_since,
                "failures": r.failures,
                "deferred": r.deferred,
                "held": r.held,
            })),
            "commits": {
                "waiting": self.commits_waiting,
                "held": self.held.as_ref().map(|h| json!({"reason": h.reason, "since": h.since})),
            },
            "recent_commits": self.commits.iter().map(|c| json!({
                "commit": c.commit, "time": c.time, "loop": c.loop_name, "summary": c.summary,
            })).collect::<Vec<_>>(),
        })
    }

    /// The screen: a header, one line per part, then the tables and the warnings.
    fn text(&self) -> String {
        let mut out = format!(
            "loops {} — {}\n\n",
            env!("CARGO_PKG_VERSION"),
            self.ws.root.display()
        );
        for (k, v) in &self.lines() {
            out.push_str(&format!("{k:<11}{v}\n"));
        }
        out.push_str(&self.tables());
        let warnings = self.warnings();
        if !warnings.is_empty() {
            out.push('\n');
            for w in warnings {
                out.push_str(&format!("warning: {w}\n"));
            }
        }
        out
    }

    fn lines(&self) -> Vec<(String, String)> {
        let mut lines: Vec<(String, String)> = vec![
            ("daemon".into(), self.daemon_line()),
            ("loops".into(), self.loops_line()),
            ("inbox".into(), self.inbox_line()),
            ("jobs".into(), self.jobs_line()),
        ];
        if let Some(line) = self.spend_line() {
            lines.push(("spend".into(), line));
        }
        if !self.ws.settings.channels.is_empty() || !self.deliveries.is_empty() {
            lines.push(("deliveries".into(), self.deliveries_line()));
        }
        if let Some(line) = self.remote_line() {
            lines.push(("remote".into(), line));
        }
        if let Some(line) = commits_line(self.commits_waiting, self.held.as_ref()) {
            lines.push(("commits".into(), line));
        }
        for line in settings_lines(self.settings_report.as_ref(), self.now) {
            lines.push(("loops.yaml".into(), line));
        }
        if let Some(line) = self.crashes_line() {
            lines.push(("crashes".into(), line));
        }
        if let Some(line) = self.mcp_line() {
            lines.push(("mcp".into(), line));
        }
        lines.push(("records".into(), self.records_line()));
        if let Some(line) = self.watcher_line() {
            lines.push(("watcher".into(), line));
        }
        lines
    }

    /// The remote: ahead/behind, the last fetch and push, what fails or waits.
    fn remote_line(&self) -> Option<String> {
        let r = self.remote.as_ref()?;
        let name = self
            .ws
            .settings
            .remote
            .as_ref()
            .map_or("origin", |s| s.name.as_str());
        let ago = |t: Option<chrono::DateTime<Utc>>| {
            t.map_or("never".to_string(), |t| relative(t, self.now))
        };
        let mut line = if r.last_attempt.is_none() {
            format!("{name}: not synced yet")
        } else {
            format!(
                "{name}/{}: {} ahead, {} behind · fetched {} · pushed {}",
                r.branch,
                r.ahead,
                r.behind,
                ago(r.last_fetch),
                ago(r.last_push)
            )
        };
        if let Some(e) = &r.last_error {
            line.push_str(&format!(
                " · FAILING since {} ({} tries): {}",
                ago(r.failing_since),
                r.failures,
                e.message
            ));
        }
        if let Some(d) = &r.deferred {
            line.push_str(&format!(" · pull deferred: {d}"));
        }
        if !r.held.is_empty() {
            line.push_str(&format!(
                " · {} commit(s) held (refs/loops/held/)",
                r.held.len()
            ));
        }
        Some(line)
    }

    fn daemon_line(&self) -> String {
        match &self.daemon {
            Some(d) => format!(
                "running, pid {}, up {}{}",
                d.pid,
                span((self.now - d.started).to_std().unwrap_or_default()),
                if d.version != env!("CARGO_PKG_VERSION") {
                    format!(" (version {}: restart it to run this one)", d.version)
                } else {
                    String::new()
                }
            ),
            None => "not running: nothing runs on schedule. Start it with `loops run` (or `loops service install`)".into(),
        }
    }

    fn loops_line(&self) -> String {
        let failing = self
            .loops
            .iter()
            .filter(|l| l.consecutive_failures > 0)
            .count();
        let paused = self.loops.iter().filter(|l| l.paused.is_some()).count();
        let broken = self
            .loops
            .iter()
            .filter(|l| !l.errors.iter().all(|d| !d.is_error()))
            .count();
        format!(
            "{} — {} failing, {} paused, {} with errors",
            self.loops.len(),
            failing,
            paused,
            broken
        )
    }

    fn inbox_line(&self) -> String {
        let for_person = self.for_person();
        format!(
            "{} pending, {} active, {} rejected{}",
            self.stage_count(Stage::Pending),
            self.stage_count(Stage::Active),
            self.stage_count(Stage::Rejected),
            if for_person > 0 {
                format!(" · {for_person} for you (to: person; see `loops inbox`)")
            } else {
                String::new()
            }
        ) + if self.no_main() {
            " · nothing receives them: loops.yaml has no `main:` session"
        } else {
            ""
        } + &self
            .main_hold
            .as_ref()
            .map(|h| {
                format!(
                    " · the main session is held until {} UTC: {} (raise `budget:` in loops.yaml to wake it sooner)",
                    h.until.format("%Y-%m-%d %H:%M"),
                    h.why
                )
            })
            .unwrap_or_default()
    }

    fn jobs_line(&self) -> String {
        let h = &self.stats.health;
        let held = match h.held {
            0 => String::new(),
            n => format!(" ({n} held for the day's budget)"),
        };
        format!(
            "{} active, {} waiting, {} delayed{held}, {} paused, {} stalled",
            h.active, h.waiting, h.delayed, h.paused, h.stalled
        )
    }

    /// Today's spend and the workspace budget over it; `None` when nothing was spent and
    /// no budget is set.
    fn spend_line(&self) -> Option<String> {
        let total = self.spend.total();
        let budget = &self.ws.settings.budget;
        if total.runs == 0 && budget.is_empty() {
            return None;
        }
        let s = &self.spend;
        let mut line = format!(
            "today (UTC) {}: loops {}, main session {}, agent jobs {} tokens",
            total.describe(),
            s.loops.tokens,
            s.main.tokens,
            s.jobs.tokens
        );
        let mut limits = Vec::new();
        if let Some(t) = budget.tokens_per_day {
            limits.push(format!("tokens_per_day {t}"));
        }
        if let Some(c) = budget.cost_per_day {
            limits.push(format!("cost_per_day ${c}"));
        }
        if !limits.is_empty() {
            let state = match loops_core::spend::over_daily(budget, &total) {
                Some(_) => "reached: nothing more starts on a model before the next UTC midnight",
                None => "not reached",
            };
            line.push_str(&format!(
                " · budget {} (loops.yaml): {state}",
                limits.join(", ")
            ));
        }
        Some(line)
    }

    fn spend_json(&self) -> serde_json::Value {
        let budget = &self.ws.settings.budget;
        let total = self.spend.total();
        json!({
            "total": total,
            "loops": self.spend.loops,
            "main_session": self.spend.main,
            "agent_jobs": self.spend.jobs,
            "budget": {
                "tokens_per_day": budget.tokens_per_day,
                "cost_per_day": budget.cost_per_day,
                "tokens_per_run": budget.tokens_per_run,
            },
            "reached": loops_core::spend::over_daily(budget, &total),
        })
    }

    fn deliveries_line(&self) -> String {
        use loops_core::channels::DeliveryStatus;
        format!(
            "last 24 h: {} delivered, {} failed, {} blocked",
            self.deliveries_24h(DeliveryStatus::Delivered),
            self.deliveries_24h(DeliveryStatus::DeliveryFailed),
            self.deliveries_24h(DeliveryStatus::Blocked)
        )
    }

    fn crashes_line(&self) -> Option<String> {
        let u = self.last_unclean.as_ref()?;
        let n = |k: &str| u["recovered"][k].as_array().map_or(0, Vec::len);
        let when = u["at"]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok())
            .map(|t| relative(t, self.now))
            .unwrap_or_else(|| "at an unknown time".into());
        let pids: Vec<String> = u["previous"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["pid"].to_string())
            .collect();
        Some(format!(
            "{} unclean stop(s) in 24 h; last found {when} (pid {}): recovered {} run(s), {} handoff(s), {} job(s) — see .loops/daemon.jsonl",
            self.unclean_24h,
            pids.join(", "),
            n("runs"),
            n("handoffs"),
            n("jobs_requeued") + n("jobs_dead")
        ))
    }

    fn mcp_line(&self) -> Option<String> {
        if self.mcp.is_empty() {
            return None;
        }
        let s: Vec<String> = self
            .mcp
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
        Some(s.join(", "))
    }

    fn records_line(&self) -> String {
        format!(
            ".loops/ {} in {} files ({}; `loops prune --dry-run` shows what goes next)",
            loops_core::retention::human_bytes(self.record_bytes),
            self.record_files,
            self.policy.describe()
        )
    }

    /// One line per limit the watcher ran into, naming the folders it left unwatched.
    fn watcher_line(&self) -> Option<String> {
        let w = self.watcher.as_ref()?;
        let mut by_limit: Vec<(String, Vec<String>)> = Vec::new();
        for p in &w.problems {
            let limit = p.limit.clone().unwrap_or_else(|| p.error.clone());
            let folder = self.ws.relative(&p.path).display().to_string();
            match by_limit.iter_mut().find(|(l, _)| *l == limit) {
                Some((_, folders)) => folders.push(folder),
                None => by_limit.push((limit, vec![folder])),
            }
        }
        let what: Vec<String> = by_limit
            .iter()
            .map(|(l, f)| format!("{l} reached (not watched: {})", f.join(", ")))
            .collect();
        Some(format!(
            "polling every {}: {}",
            loops_core::duration::format_duration(loops_core::watcher::POLL_EVERY),
            what.join("; ")
        ))
    }

    fn tables(&self) -> String {
        let mut out = String::new();
        if !self.loops.is_empty() {
            out.push('\n');
            out.push_str(&self.loops_table());
        }
        if !self.running.is_empty() {
            out.push_str("\nRunning now\n");
            out.push_str(&self.running_table());
        }
        if !self.runs.is_empty() {
            out.push_str("\nRecent runs\n");
            out.push_str(&self.runs_table());
            out.push_str(&held_back_lines(&self.runs));
        }
        if !self.commits.is_empty() {
            out.push_str("\nRecent commits\n");
            out.push_str(&self.commits_table());
        }
        out
    }

    fn loops_table(&self) -> String {
        let now = self.now;
        let rows: Vec<Vec<String>> = self
            .loops
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
        let mut header = vec!["LOOP", "NEXT", "LAST", "STATUS"];
        let rows = super::output::with_spend(&mut header, rows, &self.loops);
        table(&header, &rows)
    }

    fn running_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .running
            .iter()
            .map(|r| {
                vec![
                    format!("{} {}", r.what, r.name),
                    span((self.now - r.started).to_std().unwrap_or_default()),
                    r.detail.clone(),
                ]
            })
            .collect();
        table(&["WHAT", "FOR", "DETAIL"], &rows)
    }

    fn runs_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                vec![
                    relative(r.finished, self.now),
                    r.loop_name.clone(),
                    r.outcome.to_string(),
                    loops_core::text::clip(
                        r.error.as_deref().or(r.summary.as_deref()).unwrap_or(""),
                        60,
                    ),
                ]
            })
            .collect();
        table(&["WHEN", "LOOP", "OUTCOME", "DETAIL"], &rows)
    }

    fn commits_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .commits
            .iter()
            .map(|c| {
                vec![
                    c.commit.chars().take(8).collect(),
                    relative(c.time, self.now),
                    loops_core::text::clip(&c.summary, 70),
                ]
            })
            .collect();
        table(&["COMMIT", "WHEN", "SUMMARY"], &rows)
    }

    fn warnings(&self) -> Vec<String> {
        let mut warnings = self.stats.warnings.clone();
        warnings.extend(self.main_hold_damaged.clone());
        let waiting = self.stats.health.waiting > 0 || self.stage_count(Stage::Pending) > 0;
        if self.daemon.is_none() && waiting {
            warnings.push("work is waiting and no daemon is running: start `loops run`".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in self.watcher.iter().flat_map(|w| &w.problems) {
            if let Some(h) = p.help.as_ref().filter(|h| seen.insert(h.as_str())) {
                warnings.push(format!("the daemon's file watcher is degraded: {h}"));
            }
        }
        warnings
    }
}

/// The latest runs of every loop and of the main session, newest first.
fn recent_runs(
    ws: &Workspace,
    layout: &Layout,
    loops: &[crate::operator::LoopRow],
) -> Vec<loops_core::runs::RunRecord> {
    let runlog = RunLog::new(&layout.runs_dir(), ws.settings.rotate_bytes);
    let mut runs: Vec<loops_core::runs::RunRecord> = loops
        .iter()
        .map(|l| l.name.as_str())
        .chain(std::iter::once("main"))
        .flat_map(|n| runlog.recent(n, RECENT))
        .collect();
    runs.sort_by_key(|r| std::cmp::Reverse(r.finished));
    runs.truncate(RECENT);
    runs
}

/// The daemon's own record: how often it stopped without a clean shutdown in the last 24
/// hours, and the last such stop with what the next start recovered (.loops/daemon.jsonl,
/// at most a couple of MB).
fn unclean_stops(layout: &Layout, now: chrono::DateTime<Utc>) -> (usize, Option<Value>) {
    let day_ago = now - chrono::Duration::hours(24);
    let unclean: Vec<Value> = loops_core::journal::read(layout.root())
        .into_iter()
        .filter(|e| e["event"] == "unclean_stop")
        .collect();
    let in_24h = unclean
        .iter()
        .filter(|e| {
            e["at"]
                .as_str()
                .and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok())
                .is_some_and(|t| t >= day_ago)
        })
        .count();
    (in_24h, unclean.last().cloned())
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
