//! `loops handoff create` and `loops inbox`.

use super::output::{relative, table};
use super::{CliError, HandoffCommand, InboxCommand};
use crate::handoff::{self, Inbox, NewHandoff, Priority, Stage};
use crate::history::{commit_message, CommitRequest, Committer};
use crate::main_session::InboxState;
use crate::workspace::Workspace;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};

type Result<T = ()> = std::result::Result<T, CliError>;

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Commits `paths` with handoff trailers, when the workspace keeps history.
fn commit(ws: &Workspace, paths: Vec<PathBuf>, subject: &str, trailers: Vec<(&str, String)>) {
    if !ws.settings.git_commit {
        return;
    }
    let Ok(c) = Committer::start(
        &ws.root,
        &ws.settings.author_name,
        &ws.settings.author_email,
    ) else {
        return;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    if let Err(e) = rt.block_on(c.commit(CommitRequest {
        contents: Vec::new(),
        paths,
        message: commit_message(subject, &trailers),
    })) {
        eprintln!("warning: not committed: {e}");
    }
}

pub fn handoff(ws: &Workspace, cmd: HandoffCommand) -> Result {
    let HandoffCommand::Create {
        from,
        title,
        to,
        priority,
        draft,
        body_file,
        body,
        items,
        due,
        tags,
        json,
    } = cmd;
    if title.trim().is_empty() {
        return Err(
            CliError::new("the title is empty").help("give --title \"what this handoff is about\"")
        );
    }
    let body = match (body_file, body) {
        (Some(f), _) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CliError::new(format!("cannot read the body from stdin: {e}")))?;
            s
        }
        (Some(f), _) => std::fs::read_to_string(&f).map_err(|e| {
            CliError::new(format!("cannot read the body file {}: {e}", f.display()))
                .help("give a readable text file, or --body TEXT")
        })?,
        (None, Some(b)) => b,
        (None, None) => String::new(),
    };
    let due = due
        .map(|d| {
            DateTime::parse_from_rfc3339(&d)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    CliError::new(format!("--due `{d}` is not an RFC 3339 time ({e})"))
                        .help("e.g. --due 2026-11-21T09:00:00Z")
                })
        })
        .transpose()?;
    let run = std::env::var("LOOPS_RUN_ID").ok().filter(|r| !r.is_empty());
    let n = NewHandoff {
        from: from.clone(),
        to,
        title: title.clone(),
        priority: Priority::parse(&priority).unwrap_or_default(),
        run: run.clone(),
        draft,
        due,
        tags,
        flagged: None,
        body,
        items,
    };
    let inbox = Inbox::new(&ws.root);
    let committer = ws
        .settings
        .git_commit
        .then(|| {
            Committer::start(
                &ws.root,
                &ws.settings.author_name,
                &ws.settings.author_email,
            )
            .ok()
        })
        .flatten();
    // The creation is committed before the rename delivers the file: from then on the
    // main session may complete it at once, and history must show it handed off first.
    let (id, path, _) = inbox.create_with(&n, Utc::now(), |id, dest, text| {
        if let Some(r) = &run {
            // Tell the runner this run handed off (no orphan-draft handoff is needed).
            let marker = crate::jobs::handoff_runs_dir(ws).join(r);
            let _ = crate::fsutil::append_line(&marker, id);
        }
        if let Some(c) = &committer {
            let req = CommitRequest {
                paths: Vec::new(),
                message: commit_message(
                    &format!("{from}: handoff: {}", title.trim()),
                    &[
                        ("Handoff", id.to_string()),
                        ("From", from.clone()),
                        ("Outcome", "created".into()),
                    ],
                ),
                contents: vec![(dest.to_path_buf(), text.as_bytes().to_vec())],
            };
            if let Err(e) = c.commit_blocking(req) {
                eprintln!("warning: the handoff was written but its creation not committed: {e}");
            }
        }
    })?;
    if json {
        print_json(&json!({ "id": id, "path": path }));
    } else {
        println!("{id}");
        eprintln!("handed off: {}", ws.relative(&path).display());
    }
    Ok(())
}

pub fn inbox(ws: &Workspace, cmd: Option<InboxCommand>, json: bool) -> Result {
    match cmd {
        None => list(ws, json),
        Some(InboxCommand::List { json: j }) => list(ws, json || j),
        Some(InboxCommand::Show { id, json: j }) => show(ws, &id, json || j),
        Some(InboxCommand::Complete {
            id,
            summary,
            json: j,
        }) => complete(ws, &id, summary.as_deref(), json || j),
        Some(InboxCommand::Reject {
            id,
            reason,
            json: j,
        }) => reject(ws, &id, &reason, json || j),
    }
}

fn find(inbox: &Inbox, id: &str) -> Result<(Stage, PathBuf)> {
    inbox.find(id).ok_or_else(|| {
        CliError::new(format!("no handoff `{id}` in {}", inbox.root.display()))
            .help("`loops inbox` lists the handoffs and their ids")
    })
}

fn age(path: &Path, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    let t: DateTime<Utc> = m.into();
    Some(t.min(now))
}

fn list(ws: &Workspace, json: bool) -> Result {
    let inbox = Inbox::new(&ws.root);
    let notes = InboxState::new(&ws.runtime_dir());
    let overdue_after = ws
        .settings
        .main
        .as_ref()
        .map(|m| m.overdue_after)
        .unwrap_or(std::time::Duration::from_secs(86400));
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut items = Vec::new();
    let mut add = |stage: Stage, path: &Path, extra: serde_json::Value, detail: String| {
        let parsed = handoff::load(path);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let (id, from, title, priority) = match &parsed {
            Ok(h) => (
                h.id.clone(),
                h.from.clone(),
                h.title.clone(),
                h.priority.as_str().to_string(),
            ),
            Err(_) => (
                name.clone(),
                "?".into(),
                "(does not parse)".into(),
                "-".into(),
            ),
        };
        let since = age(path, now);
        rows.push(vec![
            format!("{stage:?}").to_lowercase(),
            id.clone(),
            from.clone(),
            priority.clone(),
            title.clone(),
            since.map(|t| relative(t, now)).unwrap_or_default(),
            detail.clone(),
        ]);
        let mut v = json!({
            "stage": stage, "id": id, "from": from, "priority": priority, "title": title,
            "path": ws.relative(path), "since": since, "detail": detail,
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        items.push(v);
    };
    for p in inbox.pending() {
        add(Stage::Pending, &p, json!({}), String::new());
    }
    for p in inbox.active() {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let note = notes.note(&name);
        let unticked: Vec<String> = handoff::load(&p)
            .map(|h| h.unticked().iter().map(|i| i.text.clone()).collect())
            .unwrap_or_default();
        let held_since = note.held_since.or_else(|| age(&p, now));
        let overdue =
            held_since.is_some_and(|t| (now - t).to_std().unwrap_or_default() > overdue_after);
        let mut detail = note
            .held
            .clone()
            .unwrap_or_else(|| "claimed by a wake".into());
        if overdue {
            detail = format!("OVERDUE: {detail}");
        }
        add(
            Stage::Active,
            &p,
            json!({ "unticked": unticked, "held": note.held, "overdue": overdue, "attempts": note.attempts }),
            detail,
        );
    }
    for p in inbox.rejected() {
        let reason = inbox.rejection_reason(&p).unwrap_or_default();
        add(
            Stage::Rejected,
            &p,
            json!({ "reason": reason }),
            reason.clone(),
        );
    }
    for p in inbox.done().into_iter().take(10) {
        add(Stage::Done, &p, json!({}), String::new());
    }
    if json {
        print_json(&json!({ "inbox": ws.relative(&inbox.root), "handoffs": items }));
        return Ok(());
    }
    if rows.is_empty() {
        println!("The inbox is empty.");
        return Ok(());
    }
    print!(
        "{}",
        table(
            &["STAGE", "ID", "FROM", "PRIORITY", "TITLE", "SINCE", "DETAIL"],
            &rows
        )
    );
    Ok(())
}

fn show(ws: &Workspace, id: &str, json: bool) -> Result {
    let inbox = Inbox::new(&ws.root);
    let (stage, path) = find(&inbox, id)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let note = InboxState::new(&ws.runtime_dir()).note(&name);
    let parsed = handoff::load(&path);
    if json {
        let (h, err) = match &parsed {
            Ok(h) => (serde_json::to_value(h).unwrap_or_default(), None),
            Err(e) => (serde_json::Value::Null, Some(e.to_string())),
        };
        print_json(&json!({
            "stage": stage, "path": ws.relative(&path), "handoff": h, "error": err,
            "note": note, "reason": (stage == Stage::Rejected).then(|| inbox.rejection_reason(&path)).flatten(),
        }));
        return Ok(());
    }
    println!("{} ({:?}) — {}", id, stage, ws.relative(&path).display());
    if let Some(r) = (stage == Stage::Rejected)
        .then(|| inbox.rejection_reason(&path))
        .flatten()
    {
        println!("rejected: {r}");
    }
    if let Some(h) = &note.held {
        println!("held: {h}");
    }
    println!();
    match std::fs::read(&path) {
        Ok(bytes) => print!("{}", String::from_utf8_lossy(&bytes)),
        Err(e) => {
            return Err(CliError::new(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    }
    Ok(())
}

/// A handoff that can still be completed or rejected (pending or active).
fn find_open(inbox: &Inbox, id: &str) -> Result<PathBuf> {
    let (stage, path) = find(inbox, id)?;
    if matches!(stage, Stage::Done | Stage::Rejected) {
        return Err(CliError::new(format!(
            "`{id}` is already {}",
            format!("{stage:?}").to_lowercase()
        ))
        .help("`loops inbox` lists what is still pending or active"));
    }
    Ok(path)
}

fn complete(ws: &Workspace, id: &str, summary: Option<&str>, json: bool) -> Result {
    let inbox = Inbox::new(&ws.root);
    let path = find_open(&inbox, id)?;
    let h = handoff::load(&path)?;
    let unticked: Vec<String> = h.unticked().iter().map(|i| i.text.clone()).collect();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let notes = InboxState::new(&ws.runtime_dir());
    if !unticked.is_empty() {
        let mut note = notes.note(&name);
        note.held = Some(format!(
            "completion asked, but not ticked: {}",
            unticked.join("; ")
        ));
        note.held_since.get_or_insert(Utc::now());
        notes.set_note(&name, &note);
        return Err(CliError::new(format!(
            "`{id}` has unticked checklist items:\n{}",
            unticked
                .iter()
                .map(|u| format!("  - [ ] {u}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
        .help(format!(
            "tick them in {} (`- [x]`), or mark an item \"(optional)\", then complete it again",
            ws.relative(&path).display()
        )));
    }
    let done = inbox.complete(&path, summary, Utc::now())?;
    notes.set_note(&name, &crate::main_session::Note::default());
    commit(
        ws,
        vec![inbox.root.join(&name), path.clone(), done.clone()],
        &format!("main: completed handoff: {}", h.title),
        vec![
            ("Handoff", h.id.clone()),
            ("From", h.from.clone()),
            ("Outcome", "completed".into()),
        ],
    );
    if json {
        print_json(&json!({ "id": h.id, "stage": "done", "path": ws.relative(&done) }));
    } else {
        println!("completed {} → {}", h.id, ws.relative(&done).display());
    }
    Ok(())
}

fn reject(ws: &Workspace, id: &str, reason: &str, json: bool) -> Result {
    let inbox = Inbox::new(&ws.root);
    let path = find_open(&inbox, id)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let to = inbox.reject(&path, reason, Utc::now())?;
    let err_file = to.with_file_name(format!(
        "{}.error.md",
        to.file_stem().and_then(|s| s.to_str()).unwrap_or_default()
    ));
    commit(
        ws,
        vec![inbox.root.join(&name), path.clone(), to.clone(), err_file],
        &format!("main: rejected handoff {id}"),
        vec![("Handoff", id.to_string()), ("Outcome", "rejected".into())],
    );
    if json {
        print_json(
            &json!({ "id": id, "stage": "rejected", "path": ws.relative(&to), "reason": reason }),
        );
    } else {
        println!("rejected {id} → {}", ws.relative(&to).display());
    }
    Ok(())
}
