//! `loops sync`: one pull and push with the workspace's git remote, now, and what it did.
//! Beside a serving daemon the daemon does it (one process moves the branch and the work
//! tree, between its own commits); otherwise this process does.

use super::error::CliError;
use loops_core::remote::{self, Pulled, Pushed, RemoteState, SyncAsk, SyncReport};
use loops_core::workspace::Workspace;
use std::time::{Duration, Instant};

type Result<T = ()> = std::result::Result<T, CliError>;

/// How long `loops sync` waits for a serving daemon's sync.
const DAEMON_WAIT: Duration = Duration::from_secs(300);

pub(super) fn sync(ws: &Workspace, ask: SyncAsk, json: bool) -> Result {
    if ws.settings.remote.is_none() {
        return Err(CliError::new("loops.yaml sets no `remote:`, so there is nothing to sync with")
            .help("add `remote: {name: origin}` to loops.yaml (and `git remote add origin URL`); docs/remote.md shows a laptop+server setup"));
    }
    ws.refuse_unapplied_settings()?;
    let report = match loops_core::daemon_lock::serving_daemon(ws) {
        Some(d) => by_daemon(ws, d.pid)?,
        None => here(ws, ask)?,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", describe(&report));
    }
    Ok(())
}

fn here(ws: &Workspace, ask: SyncAsk) -> Result<SyncReport> {
    let committer = loops_core::history::Committer::start_with(
        &ws.root,
        &ws.settings.author_name,
        &ws.settings.author_email,
        remote::branch_rule(&ws.settings),
        false,
    )?;
    match remote::sync(ws, &committer, ask) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(CliError::new("loops.yaml sets no `remote:`")),
        Err(e) => Err(CliError {
            help: e.help(),
            message: format!("sync failed: {e}"),
            code: 1,
        }),
    }
}

/// Nudges the daemon and waits for its sync to end.
fn by_daemon(ws: &Workspace, pid: u32) -> Result<SyncReport> {
    let layout = ws.layout();
    let before = RemoteState::load(&layout).and_then(|s| s.last_attempt);
    ws.nudge_daemon(remote::SYNC_NUDGE);
    eprintln!("asked the daemon (pid {pid}) to sync…");
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let state = RemoteState::load(&layout).unwrap_or_default();
        if state.last_attempt.is_some() && state.last_attempt != before {
            return match (state.last_error, state.last_report) {
                (Some(e), _) => Err(CliError {
                    message: format!("sync failed: {}", e.message),
                    help: e.help,
                    code: 1,
                }),
                (None, Some(r)) => Ok(r),
                (None, None) => Ok(SyncReport::default()),
            };
        }
        if started.elapsed() > DAEMON_WAIT {
            return Err(CliError::new(format!(
                "the daemon (pid {pid}) did not sync within {} s",
                DAEMON_WAIT.as_secs()
            ))
            .help(
                "see its log (`loops status`); a daemon older than this loops ignores the request",
            ));
        }
    }
}

/// The report as lines of text.
fn describe(r: &SyncReport) -> String {
    let mut out = format!("remote {}/{}\n", r.remote, r.branch);
    let changed = if r.changed.is_empty() {
        String::new()
    } else {
        format!(" ({} path(s) changed)", r.changed.len())
    };
    let pull = match &r.pull {
        Pulled::Nothing => "up to date".to_string(),
        Pulled::FastForward { to, .. } => format!("fast-forwarded to {}{changed}", short(to)),
        Pulled::Replayed { onto, commits } => {
            format!("{commits} unpushed commit(s) replayed onto {}{changed}", short(onto))
        }
        Pulled::FollowedRewrite { onto, commits } => format!(
            "the remote's history was rewritten: followed it to {}, {commits} unpushed commit(s) replayed on top{changed}",
            short(onto)
        ),
        Pulled::Deferred { reason, paths } if paths.is_empty() => format!("deferred: {reason}"),
        Pulled::Deferred { reason, paths } => {
            format!("deferred: {reason} ({})", paths.join(", "))
        }
    };
    out.push_str(&format!("  pull: {pull}\n"));
    for h in &r.held {
        out.push_str(&format!(
            "  conflict: {} — the remote's version is in the tree; the run's is kept on {}\n",
            h.paths.join(", "),
            h.reference
        ));
    }
    let push = match &r.push {
        Pushed::Nothing => "nothing to push".to_string(),
        Pushed::Pushed { to, commits, .. } => format!("pushed {commits} commit(s), now at {}", short(to)),
        Pushed::Held { commit, rule, pushed } => format!(
            "commit {} held: it matches never-share rule `{rule}` ({pushed} commit(s) before it pushed); see `loops inbox`",
            short(commit)
        ),
    };
    out.push_str(&format!("  push: {push}\n"));
    out.push_str(&format!("  ahead {}, behind {}\n", r.ahead, r.behind));
    out
}

fn short(oid: &str) -> &str {
    &oid[..oid.len().min(12)]
}
