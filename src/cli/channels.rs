//! `loops post`, `loops channels` and `loops deliveries`: delivery from scripts, and what
//! was delivered.

use super::error::CliError;
use super::output::{relative, table};
use chrono::Utc;
use loops_core::channels::{self, DeliveryStatus, Outbound, Poster};
use loops_core::guard::Guard;
use loops_core::history::Committer;
use loops_core::workspace::Workspace;
use serde_json::json;
use std::io::Read;
use std::sync::Arc;

type Result<T = ()> = std::result::Result<T, CliError>;

pub(super) struct PostArgs {
    pub channel: String,
    pub text: Option<String>,
    pub thread: Option<String>,
    pub from: String,
    pub run: Option<String>,
    pub json: bool,
}

pub(super) fn post(ws: Workspace, a: PostArgs) -> Result {
    let text = read_message(a.text.as_deref())?;
    let (poster, committer) = script_poster(ws, &a.from);
    let run_id = a.run.clone().unwrap_or_else(loops_core::runs::new_run_id);
    let o = Outbound {
        channel: a.channel.clone(),
        text,
        thread: a.thread.clone(),
        loop_name: a.from.clone(),
        run_id: run_id.clone(),
        scope: run_id,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15 * 60);
    let r = rt.block_on(poster.post(&o, deadline));
    // A file channel's entry is committed like any other change a run makes.
    if let (Ok(p), Some(c)) = (&r, &committer) {
        if let Some(w) = &p.wrote {
            commit_entry(&rt, c, &a, p, w);
        }
    }
    match r {
        Ok(p) => {
            if a.json {
                println!(
                    "{}",
                    json!({"ok": true, "key": p.key, "duplicate": p.duplicate, "detail": p.detail})
                );
            } else {
                println!("{}", p.detail);
            }
            Ok(())
        }
        Err(e) => Err(post_failed(&e, a.json)),
    }
}

/// The message: the argument, or stdin when it is '-' or not given.
fn read_message(text: Option<&str>) -> Result<String> {
    Ok(match text {
        Some("-") | None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CliError::new(format!("cannot read the message from stdin: {e}")))?;
            s
        }
        Some(t) => t.to_string(),
    })
}

/// A poster that speaks as `from`, under its guard, and the committer it commits with.
fn script_poster(ws: Workspace, from: &str) -> (Poster, Option<Committer>) {
    // A loop's own never-share rules apply when a script speaks in its name.
    let loop_guard = loops_core::domain::discover(&ws)
        .into_iter()
        .find(|e| e.name == from)
        .and_then(|e| e.def)
        .map(|d| d.guard);
    let guard = Guard::new(&ws.settings.guard, loop_guard.as_ref());
    let ws = Arc::new(ws);
    let committer = if ws.settings.git_commit {
        Committer::start(
            &ws.root,
            &ws.settings.author_name,
            &ws.settings.author_email,
        )
        .ok()
    } else {
        None
    };
    let mut poster = Poster::new(ws.clone(), committer.clone(), guard);
    if from == "main" {
        poster = poster.without_handoffs();
    }
    (poster, committer)
}

/// Commits the entry a file channel wrote at `wrote`.
fn commit_entry(
    rt: &tokio::runtime::Runtime,
    c: &Committer,
    a: &PostArgs,
    p: &channels::Posted,
    wrote: &std::path::Path,
) {
    let msg = loops_core::history::commit_message(
        &format!("{}: posted to {}", a.from, a.channel),
        &[
            ("Loop", a.from.clone()),
            ("Channel", a.channel.clone()),
            ("Delivery", p.key.clone()),
        ],
    );
    if let Err(e) = rt.block_on(c.commit(loops_core::history::CommitRequest::new(
        vec![wrote.to_path_buf()],
        msg,
    ))) {
        eprintln!("warning: the entry was written but not committed: {e}");
    }
}

/// The error `loops post` ends with; with --json, the failure is printed on stdout
/// first and the error is silent.
fn post_failed(e: &channels::PostError, json: bool) -> CliError {
    if json {
        let (status, key) = e
            .status()
            .map(|(s, k)| (s.as_str(), k.to_string()))
            .unwrap_or(("refused", String::new()));
        println!(
            "{}",
            json!({"ok": false, "status": status, "key": key, "error": e.to_string()})
        );
        return CliError::silent(1);
    }
    let help = match e {
        channels::PostError::UnknownChannel { .. } => Some(
            "`loops channels` lists the channels; docs/channels.md shows how to add one"
                .to_string(),
        ),
        channels::PostError::Failed { .. } => {
            Some("`loops deliveries --failed` lists failed deliveries".to_string())
        }
        _ => None,
    };
    let mut err = CliError::new(e.to_string());
    if let Some(h) = help {
        err = err.help(h);
    }
    err
}

pub(super) fn channels(ws: &Workspace, json: bool) -> Result {
    let rows = channel_rows(ws);
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if rows.is_empty() {
        println!("No channels. Add one under `channels:` in loops.yaml, e.g.\n\n  channels:\n    general: {{ kind: discord, url_env: DISCORD_WEBHOOK_URL }}\n\nSee docs/channels.md.");
        return Ok(());
    }
    let now = Utc::now();
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r["name"].as_str().unwrap_or_default().to_string(),
                r["kind"].as_str().unwrap_or_default().to_string(),
                channel_target(r),
                format!(
                    "{} ok, {} failed, {} blocked",
                    r["delivered"], r["failed"], r["blocked"]
                ),
                r["last"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| relative(t.with_timezone(&Utc), now))
                    .unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["CHANNEL", "KIND", "TARGET", "DELIVERIES", "LAST"],
            &table_rows
        )
    );
    Ok(())
}

/// Each channel of loops.yaml with its deliveries counted, as `loops channels --json`
/// prints it.
fn channel_rows(ws: &Workspace) -> Vec<serde_json::Value> {
    let records = channels::list_records(ws);
    ws.settings
        .channels
        .values()
        .map(|c| {
            let mine: Vec<&channels::DeliveryRecord> =
                records.iter().filter(|r| r.channel == c.name).collect();
            let count = |s: DeliveryStatus| mine.iter().filter(|r| r.status == s).count();
            // Which variables are set, never their values.
            let env: Vec<serde_json::Value> = c
                .secret_envs()
                .map(|v| json!({"name": v, "set": loops_core::secrets::var(v).is_ok_and(|x| !x.is_empty())}))
                .collect();
            json!({
                "name": c.name,
                "kind": c.kind.as_str(),
                "path": c.path,
                "command": c.command,
                "env": env,
                "delivered": count(DeliveryStatus::Delivered),
                "failed": count(DeliveryStatus::DeliveryFailed),
                "blocked": count(DeliveryStatus::Blocked),
                "last": mine.first().map(|r| r.updated),
            })
        })
        .collect()
}

/// Where a channel's row says it delivers: its file, its command, or the variables that
/// hold its address (with whether each is set).
fn channel_target(r: &serde_json::Value) -> String {
    match (r["path"].as_str(), r["command"].as_array()) {
        (Some(p), _) => p.to_string(),
        (_, Some(c)) => c
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => r["env"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|v| {
                        format!(
                            "${}{}",
                            v["name"].as_str().unwrap_or_default(),
                            if v["set"].as_bool() == Some(true) {
                                ""
                            } else {
                                " (not set)"
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
    }
}

pub(super) fn deliveries(
    ws: &Workspace,
    channel: Option<&str>,
    failed: bool,
    limit: usize,
    json: bool,
) -> Result {
    let records: Vec<channels::DeliveryRecord> = channels::list_records(ws)
        .into_iter()
        .filter(|r| channel.is_none_or(|c| r.channel == c))
        .filter(|r| {
            !failed
                || matches!(
                    r.status,
                    DeliveryStatus::DeliveryFailed | DeliveryStatus::Blocked
                )
        })
        .take(if limit == 0 { usize::MAX } else { limit })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string(&records).unwrap_or_else(|_| "[]".into())
        );
        return Ok(());
    }
    if records.is_empty() {
        println!(
            "No deliveries{}.",
            if failed { " failed or blocked" } else { "" }
        );
        return Ok(());
    }
    let now = Utc::now();
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let why = match r.status {
                DeliveryStatus::Blocked => format!("rule {}", r.rule.as_deref().unwrap_or("?")),
                _ => r.error.clone().unwrap_or_default(),
            };
            vec![
                relative(r.updated, now),
                r.channel.clone(),
                r.status.as_str().to_string(),
                r.loop_name.clone(),
                r.attempts.to_string(),
                loops_core::text::clip(&why, 60),
                r.handoff.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["WHEN", "CHANNEL", "STATUS", "FROM", "TRIES", "WHY", "HANDOFF"],
            &rows
        )
    );
    Ok(())
}
