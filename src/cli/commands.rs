//! One function per command.

use super::args::{Cli, Command, LogFormat};
use super::error::CliError;
use super::output::{duration_ms, local_stamp, relative, short_local, table, table_fit};
use crate::daemon::{self, DaemonOptions};
use crate::engine::run_context::RunContext;
use crate::operator;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use loops_core::clock::SystemClock;
use loops_core::diag::Severity;
use loops_core::domain::{discover, DomainEntry};
use loops_core::runs::{Outcome, RunLog};
use loops_core::state::{Pause, StateStore};
use loops_core::workspace::{host_timezone, Workspace};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

type Result<T = ()> = std::result::Result<T, CliError>;

pub fn dispatch(cli: Cli) -> Result {
    let ws_arg = cli.workspace.as_deref();
    match cli.command {
        Command::Init { dir } => init(dir.as_deref().or(ws_arg)),
        Command::New { name, template } => new_loop(&Workspace::locate(ws_arg)?, &name, &template),
        Command::Check { json } => check(&Workspace::locate(ws_arg)?, json),
        Command::List { json } => list(&Workspace::locate(ws_arg)?, json),
        Command::Next {
            name,
            count,
            from,
            json,
        } => next(
            &Workspace::locate(ws_arg)?,
            &name,
            count,
            from.as_deref(),
            json,
        ),
        Command::Run {
            once,
            all,
            log_format,
        } => run(Workspace::locate(ws_arg)?, once, all, log_format),
        Command::Trigger { name, follow, json } => {
            trigger(Workspace::locate(ws_arg)?, &name, follow, json)
        }
        Command::Log { name, limit, json } => {
            log(&Workspace::locate(ws_arg)?, name.as_deref(), limit, json)
        }
        Command::Runs { name, limit, json } => {
            runs(&Workspace::locate(ws_arg)?, name.as_deref(), limit, json)
        }
        Command::Handoff(h) => super::inbox::handoff(&Workspace::locate(ws_arg)?, h),
        Command::Inbox { command, json } => {
            super::inbox::inbox(&Workspace::locate(ws_arg)?, command, json)
        }
        Command::Post {
            channel,
            text,
            thread,
            from,
            run,
            json,
        } => super::channels::post(
            Workspace::locate(ws_arg)?,
            super::channels::PostArgs {
                channel,
                text,
                thread,
                from,
                run,
                json,
            },
        ),
        Command::Sync {
            no_pull,
            no_push,
            json,
        } => super::sync::sync(
            &Workspace::locate(ws_arg)?,
            loops_core::remote::SyncAsk {
                pull: !no_pull,
                push: !no_push,
            },
            json,
        ),
        Command::Status { json } => super::status::status(&Workspace::locate(ws_arg)?, json),
        Command::Prune { dry_run, json } => prune(&Workspace::locate(ws_arg)?, dry_run, json),
        Command::Channels { json } => super::channels::channels(&Workspace::locate(ws_arg)?, json),
        Command::Deliveries {
            channel,
            failed,
            limit,
            json,
        } => super::channels::deliveries(
            &Workspace::locate(ws_arg)?,
            channel.as_deref(),
            failed,
            limit,
            json,
        ),
        Command::Jobs(c) => super::jobs::jobs(&Workspace::locate(ws_arg)?, c),
        Command::Agent(c) => super::jobs::agent(&Workspace::locate(ws_arg)?, c),
        Command::Pause { name, reason } => pause(&Workspace::locate(ws_arg)?, &name, &reason),
        Command::Resume { name } => resume(&Workspace::locate(ws_arg)?, &name),
        Command::Mcp => Ok(crate::mcp::serve_stdio(Workspace::locate(ws_arg)?)?),
        Command::Ui {
            listen,
            token,
            no_token,
        } => super::ui::ui(Workspace::locate(ws_arg)?, listen, token, no_token),
        Command::Service(c) => super::service::service(ws_arg, c),
    }
}

/// How much of a run's error or summary a table shows.
const DETAIL_CHARS: usize = 100;

/// The one-line explanation of a run record: its error, else its note.
fn detail(r: &loops_core::runs::RunRecord) -> String {
    let text = r
        .held
        .as_ref()
        .map(|h| {
            format!("held: the person's edit of the same file won; this run's version is on {h}")
        })
        .or_else(|| r.error.clone())
        .or_else(|| r.summary.clone())
        .or_else(|| r.note.clone())
        .unwrap_or_default();
    // One short line in a table (the whole is in `--json`), so the cost below stays on it.
    let text = super::output::one_line(&text);
    let text = match text.char_indices().nth(DETAIL_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    };
    // A prompt run also shows what it cost.
    match &r.tokens {
        Some(t) if !t.is_zero() => format!(
            "{text} [{} in / {} out tokens{}]",
            t.input,
            t.output,
            if t.cache_read > 0 {
                format!(", {} cached", t.cache_read)
            } else {
                String::new()
            }
        )
        .trim_start()
        .to_string(),
        _ => text,
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A loop by name, or an error that lists the names there are.
fn find_loop(ws: &Workspace, name: &str) -> Result<DomainEntry> {
    Ok(operator::find_loop(ws, name)?)
}

// ---------------------------------------------------------------------------------------

fn init(dir: Option<&Path>) -> Result {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_dir()
            .map_err(|e| CliError::new(format!("cannot read the current folder: {e}")))?,
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", dir.display())))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let mut written = Vec::new();
    for (rel, text) in crate::templates::WORKSPACE_FILES {
        let path = dir.join(rel);
        if path.exists() {
            continue; // never overwrite what a person already has
        }
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)
                .map_err(|e| CliError::new(format!("cannot create {}: {e}", p.display())))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| CliError::new(format!("cannot write {}: {e}", path.display())))?;
        written.push(path);
    }
    if !dir.join("domains").join("example").exists() && !dir.join("domains").is_dir() {
        written.extend(crate::templates::instantiate(&dir, "command", "example")?);
    } else {
        std::fs::create_dir_all(dir.join("domains")).ok();
    }
    // A workspace is a git repository: its history is the record of what loops did.
    let workdir = loops_core::history::discover_or_init(&dir).map_err(|e| {
        CliError::new(format!(
            "cannot create a git repository in {}: {e}",
            dir.display()
        ))
    })?;
    if !written.is_empty() {
        if let Some(workdir) = workdir {
            let workdir = workdir.canonicalize().unwrap_or(workdir);
            let committer =
                loops_core::history::Committer::start(&dir, "loops", "loops@localhost")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|e| CliError::new(e.to_string()))?;
            let paths: Vec<_> = written
                .iter()
                .map(|p| p.canonicalize().unwrap_or(p.clone()))
                .filter(|p| p.starts_with(&workdir))
                .collect();
            rt.block_on(committer.commit(loops_core::history::CommitRequest {
                contents: Vec::new(),
                paths,
                message: "loops: new workspace\n".into(),
                ..Default::default()
            }))?;
        }
    }
    if written.is_empty() {
        println!(
            "{} is already a loops workspace; nothing was changed.",
            dir.display()
        );
        return Ok(());
    }
    println!("Created a loops workspace in {}", dir.display());
    for p in &written {
        println!("  {}", p.strip_prefix(&dir).unwrap_or(p).display());
    }
    println!(
        "\nNext:\n  cd {}\n  loops list\n  loops trigger example --follow\n  loops run",
        dir.display()
    );
    Ok(())
}

fn new_loop(ws: &Workspace, name: &str, template: &str) -> Result {
    let written = crate::templates::instantiate(&ws.root, template, name)?;
    println!("Created loop `{name}` from template `{template}`:");
    for p in &written {
        println!("  {}", ws.relative(p).display());
    }
    println!("\nEdit domains/{name}/config.yaml, then `loops check` and `loops next {name}`.");
    Ok(())
}

fn check(ws: &Workspace, json: bool) -> Result {
    let entries = discover(ws);
    let mut diags = loops_core::domain::check_report(ws, &entries);
    diags.extend(loops_core::remote::check(ws));
    diags.extend(loops_core::providers::key_warnings(&ws.settings.providers));
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags.len() - errors;
    if json {
        print_json(&json!({
            "ok": errors == 0,
            "workspace": ws.root,
            "loops": entries.len(),
            "errors": errors,
            "warnings": warnings,
            "diagnostics": diags,
        }));
    } else {
        for d in &diags {
            println!("{d}");
        }
        if !diags.is_empty() {
            println!();
        }
        let ok = entries
            .iter()
            .filter(|e| e.def.is_some() && e.errors().next().is_none())
            .count();
        println!(
            "{} loop(s) checked: {ok} valid, {} with errors; {errors} error(s), {warnings} warning(s)",
            entries.len(),
            entries.len() - ok
        );
    }
    if errors > 0 {
        Err(CliError::silent(1))
    } else {
        Ok(())
    }
}

fn list(ws: &Workspace, json: bool) -> Result {
    let now = Utc::now();
    let local = host_timezone();
    let loops = operator::loop_rows(ws, now);
    if json {
        let items: Vec<_> = loops.iter().map(|l| l.to_json(&local)).collect();
        print_json(
            &json!({ "workspace": ws.root, "local_timezone": local.name(), "loops": items }),
        );
        return Ok(());
    }
    if loops.is_empty() {
        println!(
            "No loops in {}. Create one with `loops new NAME`.",
            ws.domains_dir().display()
        );
        return Ok(());
    }
    let next_header = format!("NEXT RUN ({})", local.name());
    let rows: Vec<Vec<String>> = loops.iter().map(|l| list_row(l, &local, now)).collect();
    let mut header = vec![
        "LOOP",
        "KIND",
        "SCHEDULE",
        "TIMEZONE",
        &next_header,
        "NEXT RUN (LOOP TIME)",
        "LAST",
        "STATUS",
    ];
    let rows = super::output::with_spend(&mut header, rows, &loops);
    let wide = table(&header, &rows);
    let width = super::output::width();
    if super::output::widest(&wide) <= width {
        print!("{wide}");
        return Ok(());
    }
    // Too wide for the terminal (or 100 columns): one next-run column, in the host's
    // zone with the loop's own time beside it only where that zone differs, and the
    // status shortened to what is left (`loops list --json` has it whole).
    let rows: Vec<Vec<String>> = loops
        .iter()
        .map(|l| compact_list_row(l, &local, now))
        .collect();
    let mut header = vec!["LOOP", "KIND", "SCHEDULE", &next_header, "LAST", "STATUS"];
    let rows = super::output::with_spend(&mut header, rows, &loops);
    print!("{}", table_fit(&header, &rows, width));
    Ok(())
}

/// One line of the narrow `loops list` table.
fn compact_list_row(l: &operator::LoopRow, local: &Tz, now: DateTime<Utc>) -> Vec<String> {
    let next = l.next.map(|n| {
        let at = n.with_timezone(local);
        let days = (at.date_naive() - now.with_timezone(local).date_naive()).num_days();
        let when = match days {
            0 => at.format("%H:%M"),
            1..=6 => at.format("%a %H:%M"),
            _ => at.format("%Y-%m-%d %H:%M"),
        };
        let mut s = format!("{when} ({})", relative(n, now));
        if let Some(z) = l.tz.filter(|z| z.name() != local.name()) {
            s.push_str(&format!(" · {}", n.with_timezone(&z).format("%H:%M %Z")));
        }
        s
    });
    vec![
        l.name.clone(),
        l.kind.to_string(),
        l.schedule.clone(),
        next.unwrap_or_else(|| "-".into()),
        l.last
            .as_ref()
            .map(|r| format!("{} {}", r.outcome, relative(r.finished, now)))
            .unwrap_or_else(|| "never ran".into()),
        l.status.clone(),
    ]
}

/// One line of the `loops list` table.
fn list_row(l: &operator::LoopRow, local: &Tz, now: DateTime<Utc>) -> Vec<String> {
    vec![
        l.name.clone(),
        l.kind.to_string(),
        l.schedule.clone(),
        l.tz.map(|t| t.name().to_string())
            .unwrap_or_else(|| "-".into()),
        l.next
            .map(|n| format!("{} ({})", short_local(n, local), relative(n, now)))
            .unwrap_or_else(|| "-".into()),
        match (l.next, l.tz) {
            (Some(n), Some(z)) => short_local(n, &z),
            _ => "-".into(),
        },
        l.last
            .as_ref()
            .map(|r| format!("{} {}", r.outcome, relative(r.finished, now)))
            .unwrap_or_else(|| "never ran".into()),
        l.status.clone(),
    ]
}

fn next(ws: &Workspace, name: &str, count: usize, from: Option<&str>, json: bool) -> Result {
    let def = &operator::loop_def(&find_loop(ws, name)?)?;
    let from = match from {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                CliError::new(format!("--from `{s}` is not an RFC 3339 time ({e})"))
                    .help("e.g. --from 2026-03-08T00:00:00-05:00")
            })?,
        None => Utc::now(),
    };
    let chosen = chosen_next_check(ws, def);
    let times = def.schedule.upcoming(from, count);
    let tz = def.schedule.tz;
    if json {
        print_json(&json!({
            "loop": name,
            "next_check": chosen.map(|(at, after)| json!({
                "utc": at,
                "local": at.with_timezone(&tz).to_rfc3339(),
                "after_last_run": after.map(loops_core::duration::format_duration),
                "chosen_by": "model",
            })),
            "schedule": def.schedule.describe(),
            "timezone": tz.name(),
            "timezone_source": def.schedule.tz_source,
            "jitter_offset_ms": def.schedule.offset.as_millis() as u64,
            "from": from,
            "next": times.iter().map(|t| json!({"utc": t, "local": t.with_timezone(&tz).to_rfc3339()})).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let src = match def.schedule.tz_source {
        loops_core::schedule::TzSource::Loop => "from the loop's config",
        loops_core::schedule::TzSource::Workspace => "from loops.yaml",
        loops_core::schedule::TzSource::Host => "the host's zone",
    };
    println!(
        "{name}: {} (timezone {}, {src})",
        def.schedule.describe(),
        tz.name()
    );
    if !def.schedule.offset.is_zero() {
        println!(
            "jitter offset: {}",
            loops_core::duration::format_duration(def.schedule.offset)
        );
    }
    if let Some((at, after)) = chosen {
        let after = after
            .map(|d| {
                format!(
                    " (+{} after the last run)",
                    loops_core::duration::format_duration(d)
                )
            })
            .unwrap_or_default();
        println!(
            "next check: {}{after}, chosen by the model (finish next_check); then the schedule again",
            at.with_timezone(&tz).format("%a %Y-%m-%d %H:%M:%S %Z")
        );
    }
    if times.is_empty() {
        println!("no fire times after {}", from.to_rfc3339());
    }
    let rows: Vec<Vec<String>> = times
        .iter()
        .map(|t| {
            vec![
                t.with_timezone(&tz)
                    .format("%a %Y-%m-%d %H:%M:%S %Z (%:z)")
                    .to_string(),
                t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        print!(
            "{}",
            table(&[&format!("LOOP TIME ({})", tz.name()), "UTC"], &rows)
        );
    }
    Ok(())
}

/// An adaptive loop's next look as its model chose it, and how long after the last run's
/// end that is.
fn chosen_next_check(
    ws: &Workspace,
    def: &loops_core::domain::LoopDef,
) -> Option<(DateTime<Utc>, Option<std::time::Duration>)> {
    def.schedule.adaptive?;
    let state = loops_core::state::StateStore::new(&ws.layout().state_dir()).load(&def.name)?;
    let at = state.next_check?;
    let after = state
        .last_run
        .and_then(|r| (at - r.finished).to_std().ok())
        // Rounded to the minute: the run's end and the chosen instant are a moment apart.
        .map(|d| std::time::Duration::from_secs((d.as_secs() + 30) / 60 * 60));
    Some((at, after))
}

fn init_tracing(format: LogFormat) {
    // rmcp's info is protocol chatter (a server's whole `instructions` at each start);
    // what matters about MCP servers is logged by loops itself.
    let filter = loops_core::secrets::var("LOOPS_LOG")
        .ok()
        .and_then(|f| {
            tracing_subscriber::EnvFilter::try_new(loops_core::watcher::with_quiet_notify(&f)).ok()
        })
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new(loops_core::watcher::with_quiet_notify(
                "info,rmcp=warn",
            ))
        });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| loops_core::secrets::RedactingWriter(std::io::stderr()))
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    daemon::runtime().map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))
}

fn run(ws: Workspace, once: bool, all: bool, log_format: LogFormat) -> Result {
    ws.refuse_unapplied_settings()?;
    init_tracing(log_format);
    let rt = runtime()?;
    let opts = DaemonOptions {
        once,
        all,
        clock: Arc::new(SystemClock),
        stop: None,
        progress: once.then(|| Arc::new(say_progress) as daemon::ProgressFn),
    };
    let root = ws.root.clone();
    let summary = rt.block_on(daemon::run(ws, opts))?;
    if !once {
        return Ok(());
    }
    // The --once summary goes to stdout.
    if summary.runs.is_empty() {
        println!("Nothing was due in {}.", root.display());
        if !all {
            println!("(`loops run --once --all` runs every enabled loop once.)");
        }
    } else {
        let rows: Vec<Vec<String>> = summary
            .runs
            .iter()
            .map(|r| {
                vec![
                    r.loop_name.clone(),
                    r.trigger.clone(),
                    r.outcome.to_string(),
                    format!("{} ms", r.duration_ms),
                    r.commit
                        .as_deref()
                        .map(|c| c[..c.len().min(10)].to_string())
                        .unwrap_or_else(|| "-".into()),
                    detail(r),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["LOOP", "TRIGGER", "OUTCOME", "TIME", "COMMIT", "DETAIL"],
                &rows
            )
        );
    }
    if !summary.waiting_for_provider.is_empty() {
        println!(
            "\nWaiting for a provider (prompt loops): {}\n  Prompt loops run once a model provider is configured in loops.yaml, e.g.\n    providers:\n      anthropic: {{ kind: anthropic, api_key_env: ANTHROPIC_API_KEY, model: claude-sonnet-4-5 }}\n  (or kind: openai with base_url for Ollama, vLLM, llama.cpp, LM Studio); see docs/configuration.md.",
            summary.waiting_for_provider.join(", ")
        );
    }
    if !summary.broken.is_empty() {
        println!(
            "\nNot run, config has errors: {} (see `loops check`)",
            summary.broken.join(", ")
        );
    }
    if summary.failed() {
        return Err(CliError::silent(1));
    }
    Ok(())
}

fn trigger(ws: Workspace, name: &str, follow: bool, json_out: bool) -> Result {
    let rt = runtime()?;
    // Ctrl-C or SIGTERM stops the run's whole process group and records it as
    // interrupted, rather than leaving the command running with no one watching. Caught
    // before the run is submitted: a serving daemon may start it at once.
    let cancel_rx = {
        let _in_runtime = rt.enter();
        super::output::stop_on_signal()
    };
    let triggered = crate::trigger::trigger(&ws, name, follow)?;
    let ws = Arc::new(ws);
    let ctx = RunContext::new(ws.clone());
    if !json_out {
        let by = match &triggered {
            crate::trigger::Triggered::Daemon(s) => {
                format!(" by the daemon (pid {})", s.daemon_pid)
            }
            crate::trigger::Triggered::Here(_) => String::new(),
        };
        eprintln!("running {name} (run {}){by}…", triggered.run_id());
    }
    let rec = rt.block_on(async {
        let (tx, rx) = loops_core::exec::live_channel();
        let live = follow.then_some(tx);
        let printer = super::output::spawn_printer(rx);
        let rec = triggered.run(&ctx, live, cancel_rx).await;
        let _ = printer.await;
        // MCP servers the run started live in this process: they end with it.
        loops_agent::mcp_client::McpPool::shutdown_all().await;
        rec
    });
    // Without a committer an `acted` run's changes are only in the work tree: say so, or
    // the outcome reads as if they were kept in git like every other run's.
    let not_committed = ctx
        .history_off
        .as_deref()
        .filter(|_| rec.commit.is_none() && rec.outcome == Outcome::Acted);
    if json_out {
        let mut v = serde_json::to_value(&rec).unwrap_or_default();
        if let (Some(why), Some(o)) = (not_committed, v.as_object_mut()) {
            o.insert("not_committed".into(), json!(why));
        }
        print_json(&v);
    } else {
        if let (false, Some(summary)) = (follow, &rec.summary) {
            println!("{summary}");
        } else if !follow && !rec.stdout_tail.is_empty() {
            print!("{}", rec.stdout_tail);
            if !rec.stdout_tail.ends_with('\n') {
                println!();
            }
        }
        if !follow && !rec.stderr_tail.is_empty() && rec.outcome.is_failure() {
            eprint!("{}", rec.stderr_tail);
        }
        eprintln!(
            "{name}: {} in {} ms{}{}{}",
            rec.outcome,
            rec.duration_ms,
            rec.exit_code
                .map(|c| format!(", exit {c}"))
                .unwrap_or_default(),
            rec.commit
                .as_deref()
                .map(|c| format!(", commit {}", &c[..c.len().min(10)]))
                .unwrap_or_default(),
            rec.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
        );
        if let Some(why) = not_committed {
            eprintln!("nothing was committed: {why}");
        }
    }
    if rec.outcome == Outcome::Interrupted {
        return Err(CliError::silent(130));
    }
    if rec.outcome.is_failure() {
        return Err(CliError::silent(1));
    }
    Ok(())
}

fn log(ws: &Workspace, name: Option<&str>, limit: usize, json: bool) -> Result {
    if let Some(n) = name {
        find_loop(ws, n)?;
    }
    let limit = if limit == 0 { usize::MAX } else { limit };
    let entries = loops_core::history::read_log(&ws.root, name, limit)?;
    if json {
        print_json(&serde_json::to_value(&entries).unwrap_or_default());
        return Ok(());
    }
    if entries.is_empty() {
        println!(
            "No runs in the git history yet{}.",
            name.map(|n| format!(" for `{n}`")).unwrap_or_default()
        );
        return Ok(());
    }
    let local = host_timezone();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                local_stamp(e.time, &local, false),
                e.loop_name.clone(),
                e.outcome.clone().unwrap_or_else(|| "-".into()),
                e.summary.clone(),
                e.duration_ms.map(duration_ms).unwrap_or_else(|| "-".into()),
                e.commit[..10].to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["TIME", "LOOP", "OUTCOME", "SUMMARY", "DURATION", "COMMIT"],
            &rows
        )
    );
    Ok(())
}

fn runs(ws: &Workspace, name: Option<&str>, limit: usize, json: bool) -> Result {
    let names = match name {
        Some(n) => {
            find_loop(ws, n)?;
            vec![n.to_string()]
        }
        None => loops_with_records(ws),
    };
    let log = RunLog::new(&ws.layout().runs_dir(), ws.settings.rotate_bytes);
    // Records are appended as runs finish, so the file is in finish order: a long run
    // that started first would show after the short ones that overtook it. The whole
    // current file is read (as `recent` does anyway), ordered by start, and the last
    // `limit` kept.
    let mut recs = Vec::new();
    for n in &names {
        let (mut of_loop, damaged) = log.all_counting_damaged(n);
        note_damaged(ws, &log, n, damaged);
        recs.append(&mut of_loop);
    }
    recs.sort_by_key(|r| r.started);
    let keep = if limit == 0 { recs.len() } else { limit };
    let mut recs = recs.split_off(recs.len().saturating_sub(keep));
    if let Some(state) = loops_core::remote::RemoteState::load(&ws.layout()) {
        let held = state.held_runs();
        for r in &mut recs {
            r.held = held.get(&r.run_id).cloned();
        }
    }
    if json {
        print_json(&serde_json::to_value(&recs).unwrap_or_default());
        return Ok(());
    }
    if recs.is_empty() {
        match name {
            Some(n) => println!("`{n}` has no run records yet."),
            None => println!(
                "No run records yet: `loops trigger NAME` runs a loop now, `loops run` runs them on their schedules."
            ),
        }
        return Ok(());
    }
    print!("{}", runs_table(&recs, name.is_none()));
    Ok(())
}

/// Every discovered loop, then `main` (the main session's wakes) and any loop whose folder
/// is gone but whose records are still in .loops/runs/.
fn loops_with_records(ws: &Workspace) -> Vec<String> {
    let mut names: Vec<String> = loops_core::domain::discover(ws)
        .into_iter()
        .map(|e| e.name)
        .collect();
    let on_disk = std::fs::read_dir(ws.layout().runs_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            // A rotated file has a stamp in its name, which no loop name has.
            file.strip_suffix(".jsonl")
                .filter(|n| loops_core::domain::valid_loop_name(n))
                .map(str::to_string)
        });
    for n in on_disk {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

fn note_damaged(ws: &Workspace, log: &RunLog, name: &str, damaged: usize) {
    if damaged > 0 {
        eprintln!(
            "note: {damaged} line{} of {} cannot be read and {} not shown; each line is one JSON record: move the damaged ones out of the file",
            if damaged == 1 { "" } else { "s" },
            ws.relative(&log.path(name)).display(),
            if damaged == 1 { "is" } else { "are" },
        );
    }
}

fn runs_table(recs: &[loops_core::runs::RunRecord], with_loop: bool) -> String {
    let local = host_timezone();
    let rows: Vec<Vec<String>> = recs
        .iter()
        .map(|r| {
            let mut row = vec![local_stamp(r.started, &local, true)];
            if with_loop {
                row.push(r.loop_name.clone());
            }
            row.extend([
                r.trigger.clone(),
                r.outcome.to_string(),
                duration_ms(r.duration_ms),
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                detail(r),
            ]);
            row
        })
        .collect();
    let header: &[&str] = if with_loop {
        &[
            "STARTED", "LOOP", "TRIGGER", "OUTCOME", "TIME", "EXIT", "DETAIL",
        ]
    } else {
        &["STARTED", "TRIGGER", "OUTCOME", "TIME", "EXIT", "DETAIL"]
    };
    table(header, &rows)
}

fn pause(ws: &Workspace, name: &str, reason: &str) -> Result {
    find_loop(ws, name)?;
    let store = StateStore::new(&ws.layout().state_dir());
    let now = Utc::now();
    store.update(name, |s| {
        let st = s.get_or_insert_with(|| loops_core::state::LoopState::new(now, ""));
        st.paused = Some(Pause {
            since: now,
            // `--reason ""` is no reason: `loops list` would show a bare "paused:".
            reason: Some(reason.trim())
                .filter(|r| !r.is_empty())
                .unwrap_or(super::args::PAUSED_BY_HAND)
                .to_string(),
            last_error: None,
        });
    })?;
    ws.nudge_daemon(name);
    println!("`{name}` is paused; `loops resume {name}` schedules it again.");
    Ok(())
}

fn resume(ws: &Workspace, name: &str) -> Result {
    find_loop(ws, name)?;
    let store = StateStore::new(&ws.layout().state_dir());
    let now = Utc::now();
    let was = store.update(name, |s| {
        let st = s.get_or_insert_with(|| loops_core::state::LoopState::new(now, ""));
        let was = st.paused.take();
        let held = st.budget_paused_until.take().filter(|u| *u > now);
        st.consecutive_failures = 0;
        st.pending_retry = None;
        // Slots that passed while paused are not owed.
        st.watermark = Some(now);
        (was, held)
    })?;
    ws.nudge_daemon(name);
    match was {
        (Some(p), _) => println!(
            "`{name}` resumed (it was paused since {}: {}).",
            p.since.to_rfc3339(),
            p.reason
        ),
        (None, Some(until)) => println!(
            "`{name}` resumed (it was held for its daily budget until {}); a run that would pass the budget still stops at its next turn.",
            until.to_rfc3339()
        ),
        (None, None) => println!("`{name}` was not paused; nothing to do."),
    }
    Ok(())
}

fn prune(ws: &Workspace, dry_run: bool, json_out: bool) -> Result {
    use loops_core::retention::{human_bytes, Policy};
    let policy = Policy::of(&ws.settings);
    // Steps of a long pass on a terminal; scripts reading stderr get only what matters.
    let on_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let say = |line: &str| {
        if on_tty && !json_out {
            eprintln!("{line}…");
        }
    };
    let r = loops_core::retention::prune(ws, std::time::SystemTime::now(), dry_run, &say);
    if json_out {
        print_json(&serde_json::to_value(&r).unwrap_or_default());
    } else {
        let verb = if dry_run { "would remove" } else { "removed" };
        if r.removed.is_empty() {
            println!(
                "nothing to remove: .loops/ holds {} in {} files ({})",
                human_bytes(r.bytes_before),
                r.files_before,
                policy.describe()
            );
        } else {
            let rows: Vec<Vec<String>> = r
                .removed
                .iter()
                .map(|(k, t)| {
                    vec![
                        k.label().to_string(),
                        t.items.to_string(),
                        t.files.to_string(),
                        human_bytes(t.bytes),
                    ]
                })
                .collect();
            print!("{}", table(&["WHAT", "ITEMS", "FILES", "SIZE"], &rows));
            println!(
                "{verb} {} older than max_age, {} more to fit max_total_bytes ({}); .loops/ {} → {}",
                r.expired.items,
                r.over_cap.items,
                policy.describe(),
                human_bytes(r.bytes_before),
                human_bytes(r.bytes_after)
            );
        }
        for f in &r.rotated {
            println!("rotated {f}");
        }
        if let Some(w) = &r.warning {
            eprintln!("warning: {w}");
        }
    }
    for e in &r.errors {
        eprintln!("error: {e}");
    }
    if r.errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::silent(1))
    }
}

/// A `--once` pass's progress on stderr, one line per event: `[ 3/13] report acted in
/// 206 ms · commit 16b2c8b498 · running: digest, sync`. The summary table follows on stdout.
fn say_progress(p: &daemon::Progress) {
    fn names(running: &[(String, std::time::Duration)], with_time: bool) -> String {
        const SHOWN: usize = 4;
        let mut parts: Vec<String> = running
            .iter()
            .take(SHOWN)
            .map(|(n, d)| {
                if with_time && !d.is_zero() {
                    format!(
                        "{n} for {}",
                        loops_core::duration::format_duration(std::time::Duration::from_secs(
                            d.as_secs()
                        ))
                    )
                } else {
                    n.clone()
                }
            })
            .collect();
        if running.len() > SHOWN {
            parts.push(format!("{} more", running.len() - SHOWN));
        }
        parts.join(", ")
    }
    let line = match p {
        daemon::Progress::Finished {
            done,
            total,
            record: r,
            running,
        } => {
            let width = total.to_string().len();
            let mut line = format!(
                "[{done:>width$}/{total}] {} {} in {} ms",
                r.loop_name, r.outcome, r.duration_ms
            );
            if let Some(c) = &r.commit {
                line.push_str(&format!(" · commit {}", &c[..c.len().min(10)]));
            }
            if r.outcome.is_failure() {
                if let Some(e) = r.error.as_deref().and_then(|e| e.lines().next()) {
                    line.push_str(&format!(": {e}"));
                }
            }
            if !running.is_empty() {
                line.push_str(&format!(" · running: {}", names(running, false)));
            }
            line
        }
        daemon::Progress::Waiting {
            done,
            total,
            running,
            queued,
        } => {
            let width = total.to_string().len();
            let mut line = format!("[{done:>width$}/{total}] running: {}", names(running, true));
            if *queued > 0 {
                line.push_str(&format!(" · {queued} queued"));
            }
            line
        }
    };
    eprintln!("{line}");
}
