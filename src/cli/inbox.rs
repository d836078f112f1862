//! `loops handoff create` and `loops inbox`.

use super::args::{HandoffCommand, InboxCommand};
use super::error::CliError;
use super::output::{relative, table};
use crate::operator;
use chrono::{DateTime, Utc};
use loops_core::handoff::{Inbox, ItemRef, NewHandoff, Priority};
use loops_core::history::{commit_message, CommitRequest, Committer};
use loops_core::workspace::Workspace;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};

type Result<T = ()> = std::result::Result<T, CliError>;

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(super) fn handoff(ws: &Workspace, cmd: HandoffCommand) -> Result {
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
    let inbox = Inbox::of(ws);
    let body = read_body(&inbox, body_file, body)?;
    let due = parse_due(due)?;
    let run = loops_core::secrets::var("LOOPS_RUN_ID")
        .ok()
        .filter(|r| !r.is_empty());
    let n = NewHandoff {
        from,
        to,
        title,
        priority: Priority::parse(&priority).unwrap_or_default(),
        run,
        draft,
        due,
        tags,
        flagged: None,
        body,
        items,
    };
    check_outgoing(ws, &n)?;
    let committer = handoff_committer(ws);
    // The creation is committed before the rename delivers the file: from then on the
    // main session may complete it at once, and history must show it handed off first.
    let (id, path, _) = inbox.create_with(&n, Utc::now(), |id, dest, text| {
        if let Some(r) = &n.run {
            // Tell the runner this run handed off (no orphan-draft handoff is needed).
            let marker = ws.layout().handoff_run(r);
            let _ = loops_core::fsutil::append_line(&marker, id);
        }
        if let Some(c) = &committer {
            commit_creation(c, &n, id, dest, text);
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

/// The handoff's body: from `--body-file` (a path, or '-' for stdin), from `--body`, or
/// empty; refused when it is more than a handoff may hold.
fn read_body(inbox: &Inbox, body_file: Option<PathBuf>, body: Option<String>) -> Result<String> {
    let limit = inbox.max_bytes();
    Ok(match (body_file, body) {
        (Some(f), _) if f.as_os_str() == "-" => {
            read_bounded(&mut std::io::stdin(), "the body on stdin", limit)?
        }
        (Some(f), _) => {
            let what = format!("the body file {}", f.display());
            let mut file = std::fs::File::open(&f).map_err(|e| {
                CliError::new(format!("cannot read {what}: {e}"))
                    .help("give a readable text file, or --body TEXT")
            })?;
            if let Ok(m) = file.metadata() {
                inbox.check_size(&what, m.len())?;
            }
            read_bounded(&mut file, &what, limit)?
        }
        (None, Some(b)) => {
            inbox.check_size("the --body text", b.len() as u64)?;
            b
        }
        (None, None) => String::new(),
    })
}

/// The UTF-8 text `r` holds, when it is no more than `limit` bytes.
fn read_bounded(r: &mut dyn Read, what: &str, limit: u64) -> Result<String> {
    // Read no more than a handoff may hold (plus one byte, to know it is more): a body
    // file of gigabytes is refused without being read into memory.
    let mut bytes = Vec::new();
    r.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::new(format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(CliError::new(format!(
            "{what} is more than limits.max_handoff_bytes allows ({limit} bytes, {}): a handoff is a short note for the main session",
            loops_core::fsutil::human_bytes(limit)
        ))
        .help("write the long text to drafts/<loop>/<name>.md and pass it with --draft; keep the body to what the main session must do (or raise limits.max_handoff_bytes in loops.yaml)"));
    }
    String::from_utf8(bytes).map_err(|_| {
        CliError::new(format!("{what} is not UTF-8 text"))
            .help("a handoff is markdown: give a text file")
    })
}

/// The `--due` time.
fn parse_due(due: Option<String>) -> Result<Option<DateTime<Utc>>> {
    due.map(|d| {
        DateTime::parse_from_rfc3339(&d)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                CliError::new(format!("--due `{d}` is not an RFC 3339 time ({e})"))
                    .help("e.g. --due 2026-11-21T09:00:00Z")
            })
    })
    .transpose()
}

/// Refuses a handoff to anyone but the main session that the never-share guard stops.
fn check_outgoing(ws: &Workspace, n: &NewHandoff) -> Result {
    if n.to.trim() == "main" {
        return Ok(());
    }
    // A handoff to anyone but the main session leaves its trust: the never-share
    // guard of loops.yaml and of the sending loop reads it first.
    let loop_guard = loops_core::domain::discover(ws)
        .into_iter()
        .find(|e| e.name == n.from)
        .and_then(|e| e.def)
        .map(|d| d.guard);
    let guard = loops_core::guard::Guard::new(&ws.settings.guard, loop_guard.as_ref());
    let whole = format!("{}\n{}\n{}", n.title, n.body, n.items.join("\n"));
    if let Err(b) = guard.check(&whole) {
        return Err(
            CliError::new(format!("{b}: the handoff to `{}` was not written", n.to))
                .help("take that information out, or address the handoff to main"),
        );
    }
    Ok(())
}

/// The committer of the handoff's creation, when the workspace commits and its inbox/
/// is not a link.
fn handoff_committer(ws: &Workspace) -> Option<Committer> {
    // A linked inbox/ is not committed to: the commit would record the link's removal.
    let linked = ws.symlinked_areas();
    if let Some(l) = linked.first() {
        eprintln!("warning: not committed: {l}");
    }
    (ws.settings.git_commit && linked.is_empty())
        .then(|| {
            Committer::start(
                &ws.root,
                &ws.settings.author_name,
                &ws.settings.author_email,
            )
            .ok()
        })
        .flatten()
}

/// Commits the handoff `id` as `text` at `dest`, before the file is there.
fn commit_creation(c: &Committer, n: &NewHandoff, id: &str, dest: &Path, text: &str) {
    let req = CommitRequest {
        paths: Vec::new(),
        message: commit_message(
            &format!("{}: handoff: {}", n.from, n.title.trim()),
            &[
                ("Handoff", id.to_string()),
                ("From", n.from.clone()),
                ("Outcome", "created".into()),
            ],
        ),
        contents: vec![(dest.to_path_buf(), text.as_bytes().to_vec())],
        ..Default::default()
    };
    if let Err(e) = c.commit_blocking(req) {
        eprintln!("warning: the handoff was written but its creation not committed: {e}");
    }
}

pub(super) fn inbox(ws: &Workspace, cmd: Option<InboxCommand>, json: bool) -> Result {
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
        Some(InboxCommand::Retry { id, json: j }) => retry(ws, &id, json || j),
        Some(InboxCommand::Tick {
            id,
            items,
            all,
            json: j,
        }) => tick(ws, &id, &items, all, json || j),
    }
}

fn list(ws: &Workspace, json: bool) -> Result {
    let now = Utc::now();
    let handoffs = operator::handoff_rows(ws, now);
    if json {
        let items: Vec<_> = handoffs.iter().map(|h| h.to_json()).collect();
        let inbox = Inbox::of(ws);
        print_json(&json!({ "inbox": ws.relative(&inbox.root), "handoffs": items }));
        return Ok(());
    }
    if handoffs.is_empty() {
        println!("The inbox is empty.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = handoffs
        .iter()
        .map(|h| {
            vec![
                format!("{:?}", h.stage).to_lowercase(),
                h.id.clone(),
                h.from.clone(),
                h.priority.clone(),
                h.title.clone(),
                h.since.map(|t| relative(t, now)).unwrap_or_default(),
                h.detail.clone(),
            ]
        })
        .collect();
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
    let detail = operator::HandoffDetail::load(ws, id)?;
    if json {
        print_json(&detail.to_json());
        return Ok(());
    }
    println!("{} ({:?}) — {}", id, detail.stage, detail.rel.display());
    if let Some(r) = &detail.reason {
        println!("rejected: {r}");
    }
    if let Some(h) = &detail.note.held {
        println!("held: {h}");
        if detail.stage == loops_core::handoff::Stage::Active {
            println!("(`loops inbox retry {id}` hands it back to the main session once the cause is fixed; `complete` or `reject` closes it)");
        }
    }
    println!();
    print!("{}", detail.text()?);
    // Numbered, so `loops inbox tick ID N` can name an item.
    if let Ok(h) = &detail.parsed {
        if !h.checklist.is_empty() {
            println!("\nChecklist (`loops inbox tick {id} N` ticks item N):");
            for (i, it) in h.checklist.iter().enumerate() {
                println!("  {}. {}", i + 1, it.shown());
            }
        }
    }
    Ok(())
}

fn complete(ws: &Workspace, id: &str, summary: Option<&str>, json: bool) -> Result {
    let done = operator::complete_handoff(ws, id, summary, Utc::now())?;
    if let Some(w) = &done.warning {
        eprintln!("warning: {w}");
    }
    if json {
        print_json(&json!({ "id": done.id, "stage": "done", "path": ws.relative(&done.done) }));
    } else {
        println!(
            "completed {} → {}",
            done.id,
            ws.relative(&done.done).display()
        );
    }
    Ok(())
}

fn tick(ws: &Workspace, id: &str, items: &[String], all: bool, json: bool) -> Result {
    let which: Vec<ItemRef> = items.iter().map(|i| ItemRef::parse(i)).collect();
    let t = operator::tick_handoff(ws, id, &which, all)?;
    if let Some(w) = &t.warning {
        eprintln!("warning: {w}");
    }
    if json {
        print_json(&t.to_json());
        return Ok(());
    }
    let id = &t.ticks.id;
    for i in &t.ticks.ticked {
        println!("ticked {}. {}", i.number, i.text);
    }
    for i in &t.ticks.already {
        println!("already ticked: {}. {}", i.number, i.text);
    }
    if t.ticks.ticked.is_empty() && t.ticks.already.is_empty() {
        println!("{id} has no checklist items to tick");
    }
    if t.ticks.unticked.is_empty() {
        println!("every required item of {id} is ticked: `loops inbox complete {id} --summary …` completes it");
    } else {
        println!("still to tick:");
        for i in &t.ticks.unticked {
            println!("  {}. [ ] {}", i.number, i.text);
        }
    }
    Ok(())
}

fn reject(ws: &Workspace, id: &str, reason: &str, json: bool) -> Result {
    let r = operator::reject_handoff(ws, id, reason, Utc::now())?;
    let to = r.to;
    if let Some(w) = r.warning {
        eprintln!("warning: {w}");
    }
    if json {
        print_json(
            &json!({ "id": id, "stage": "rejected", "path": ws.relative(&to), "reason": reason }),
        );
    } else {
        println!("rejected {id} → {}", ws.relative(&to).display());
    }
    Ok(())
}

fn retry(ws: &Workspace, id: &str, json: bool) -> Result {
    let r = operator::retry_handoff(ws, id)?;
    if let Some(w) = &r.warning {
        eprintln!("warning: {w}");
    }
    if json {
        print_json(&json!({
            "id": r.id,
            "stage": "pending",
            "path": ws.relative(&r.to),
            "was_held": r.was_held,
            "attempts_forgotten": r.attempts,
        }));
        return Ok(());
    }
    println!(
        "handed {} back to the main session: {} → {}",
        r.id,
        ws.relative(&r.from).display(),
        ws.relative(&r.to).display()
    );
    println!("it had been held: {}", r.was_held);
    let budget =
        crate::engine::doorbell::BudgetHold::read(&ws.layout().main_budget_hold(), Utc::now());
    match (loops_core::daemon_lock::daemon_alive(ws), budget) {
        (_, Some(h)) => println!(
            "the main session is held until {} UTC ({}): it takes it then",
            h.until.format("%Y-%m-%d %H:%M"),
            h.why
        ),
        (Some(_), None) => println!("the daemon's next wake takes it"),
        (None, None) => println!("no daemon is running: `loops run` takes it when it starts"),
    }
    Ok(())
}
