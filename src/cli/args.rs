//! The command line's arguments (clap): every command, its flags and its help text.

use super::{jobs, service};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// loops — a file-system-first agent loop runner.
///
/// A loop is a folder: domains/NAME/config.yaml (schedule, payload) plus prompt.md for
/// prompt loops. `loops run` finds every loop, runs each on its schedule, and commits
/// what each run changed to git, so `git log` is the history of what your agents did.
#[derive(Debug, Parser)]
#[command(
    name = "loops",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Start with `loops init ~/mind`, then `loops new NAME --template command`, `loops check`, and `loops run`."
)]
pub struct Cli {
    /// The workspace folder (default: the nearest folder upward holding loops.yaml or domains/).
    #[arg(long, global = true, value_name = "DIR")]
    pub workspace: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a workspace: git repository, loops.yaml, SOUL.md, USER.md, .working-memory/,
    /// .gitignore and one example loop.
    Init {
        /// Where to create it (default: the current folder).
        dir: Option<PathBuf>,
    },
    /// Create domains/NAME from a template.
    #[command(
        after_help = "Templates: command, heartbeat, channel-monitor, morning-briefing, research-minion (and any in the workspace's templates/ folder)."
    )]
    New {
        /// The loop's name: lowercase letters, digits, - and _.
        name: String,
        /// The template to start from.
        #[arg(long, short, default_value = "command")]
        template: String,
    },
    /// Validate loops.yaml and every loop; exit code 1 when anything is wrong.
    Check {
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Every loop: schedule, timezone, next run, last outcome, and whether it is paused or failing.
    List {
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// The next fire times of a loop, in its timezone and in UTC: check a cron expression before trusting it.
    Next {
        /// The loop's name.
        name: String,
        /// How many fire times (1 to 10000).
        #[arg(long, short = 'n', default_value_t = 5, value_parser = fire_time_count)]
        count: usize,
        /// Start from this instant (RFC 3339) instead of now.
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon in the foreground: every loop on its schedule, until SIGINT/SIGTERM.
    #[command(
        after_help = "With --once, runs what is due now, waits for it and exits with a summary (exit code 1 if a run failed). With --once --all, runs every enabled loop once."
    )]
    Run {
        /// Run what is due now, wait for it, and exit.
        #[arg(long)]
        once: bool,
        /// With --once: run every enabled loop once, due or not.
        #[arg(long, requires = "once")]
        all: bool,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
    },
    /// Run a loop now, once, and report its outcome.
    #[command(
        after_help = "While a daemon serves the workspace (`loops run`), the run is handed to it: it runs in the daemon's run lane, with its settings, secrets and concurrency limit, and this command waits for the record (Ctrl-C stops the run there). With no daemon, the loop runs in this process. Either way a run of a loop with `concurrency: forbid` or `replace` is refused while another is in progress, and the exit status is 0 for a run that did not fail, 1 for one that failed, 130 for one stopped.\n\nExamples:\n  loops trigger report            # run it, print its output and outcome\n  loops trigger report --follow   # stream its output as it runs\n  loops trigger report --json     # the run record as JSON"
    )]
    Trigger {
        /// The loop's name.
        name: String,
        /// Stream the command's output while it runs.
        #[arg(long, short)]
        follow: bool,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// The history of runs, read from git (commits carrying a `Loop:` trailer).
    Log {
        /// Only this loop.
        name: Option<String>,
        /// At most this many entries (0: all).
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Recent run records of a loop from .loops/runs (every run, including silent, skipped
    /// and missed ones), ordered by start time, the latest last.
    ///
    /// Without NAME: the records of every loop and of the main session's wakes, merged by
    /// start time, with a LOOP column.
    #[command(
        after_help = "Examples:\n  loops runs              the latest 20 runs of every loop, with a LOOP column\n  loops runs news -n 5    the latest 5 runs of `news`\n  loops runs --json       the records as JSON (each names its loop in `loop`)"
    )]
    Runs {
        /// The loop's name (default: every loop, and `main` for the main session's wakes).
        name: Option<String>,
        /// The latest this many runs (by start time; 0: all).
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Hand work off to the main session: write a handoff into inbox/ (atomically).
    #[command(subcommand)]
    Handoff(HandoffCommand),
    /// The inbox: pending, active (with age and unticked items), rejected (with the
    /// reason) and recently done handoffs.
    Inbox {
        #[command(subcommand)]
        command: Option<InboxCommand>,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Sync with the git remote of loops.yaml `remote:` now: fetch, fast-forward or replay
    /// this workspace's unpushed commits onto what came, push (fast-forward only).
    #[command(
        after_help = "A serving daemon syncs by itself (every remote.pull_every, and remote.push_delay after a commit); beside one, `loops sync` asks it to sync now and prints what it did.

What can happen:
  the person's uncommitted edit would be overwritten  the pull is deferred, nothing moves
  the remote changed a file a run changed too         the remote's version wins; the run's is kept on refs/loops/held/<run> with a handoff
  the remote's history was rewritten (force-push)     followed; unpushed commits replayed on top; the old history is never pushed back
  a commit matches a never-share rule or an API key   it is not pushed (nor what follows it); a handoff says how to go on

See docs/remote.md for a laptop+server setup."
    )]
    Sync {
        /// Push only: do not move the branch to what the remote has (unless a push needs it).
        #[arg(long)]
        no_pull: bool,
        /// Pull only.
        #[arg(long)]
        no_push: bool,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// One screen: the daemon (pid, uptime, version), every loop (next run, last outcome,
    /// failing or paused), the inbox, the job queue, deliveries, MCP servers, recent runs and commits.
    Status {
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Remove old run records, transcripts, finished jobs and delivery records from .loops/.
    #[command(after_help = "What goes is set in loops.yaml `records:`:
  max_age: 90d                  anything older is removed (`forever` keeps all)
  max_total_bytes: 1073741824   then the oldest go while .loops/ is over this (0: no cap)
  rotate_bytes: 10485760        run records, jobs/audit.log and MCP server logs rotate at this size

Live state is never removed: loop state, runs in progress, live jobs, the current run-record file of each loop. The daemon does the same pass at start and every hour; this command does it now.

Examples:
  loops prune --dry-run     what would go, nothing removed
  loops prune --json")]
    Prune {
        /// Show what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Post a message to a delivery channel (loops.yaml `channels:`), as a loop would.
    #[command(
        after_help = "The message is TEXT, or stdin when TEXT is `-` or absent:

  echo \"Deploy finished\" | loops post general --as deploy-watch
  loops post digest \"Three new issues today\" --run nightly-2026-11-21

The never-share guard of loops.yaml (and of the loop named by --as) checks the text first. With --run, the same text to the same channel is posted once however often the command runs. A delivery that fails after its retries is handed to the main session with the text; the exit code is 1."
    )]
    Post {
        /// The channel's name in loops.yaml.
        channel: String,
        /// The message (default: read from stdin).
        text: Option<String>,
        /// Reply in this thread (Slack thread_ts, Discord thread id).
        #[arg(long)]
        thread: Option<String>,
        /// Who is speaking: a loop's name (its guard rules apply), or `main`.
        #[arg(long = "as", default_value = "cli", value_name = "LOOP")]
        from: String,
        /// An idempotency scope: a repeat with the same --run, channel and text is not sent again.
        #[arg(long)]
        run: Option<String>,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// The delivery channels of loops.yaml: kind, target (environment variables: set or not, never their values) and delivery counts.
    Channels {
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Recent deliveries from .loops/deliveries: delivered, delivery_failed (handed to the main session) and blocked.
    Deliveries {
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Only failed and blocked deliveries.
        #[arg(long)]
        failed: bool,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// The job queue: submit, list, get, progress, logs, cancel, pause, resume, replay,
    /// retry, message, stats. Jobs live in .loops/jobs/, one file each.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Run a prompt on the agent loop as a job (`loops agent run "PROMPT"`), or fan one
    /// out over a manifest.
    #[command(subcommand)]
    Agent(jobs::AgentCommand),
    /// Stop scheduling a loop until `loops resume`.
    Pause {
        name: String,
        /// Why (shown in `loops list`).
        #[arg(long, default_value = PAUSED_BY_HAND)]
        reason: String,
    },
    /// Schedule a paused loop again (its missed slots are not replayed).
    Resume { name: String },
    /// Serve loops, handoffs and jobs to other agents over the Model Context Protocol (stdio).
    #[command(
        after_help = "Speaks MCP on stdin/stdout until the client closes them; logs go to stderr (LOOPS_LOG sets the level, default warn). Register it with an MCP client as the command `loops --workspace DIR mcp`.\n\nTools: list_loops, trigger_loop, list_handoffs, get_handoff, tick_handoff, complete_handoff, submit_job, get_job, list_jobs, get_job_progress, cancel_job, pause_job, resume_job, replay_job, send_job_message, get_job_stats. Shell jobs cannot be submitted over MCP."
    )]
    Mcp,
    /// A web view of the workspace: loops, runs, transcripts, diffs, the inbox and jobs.
    #[command(
        after_help = "Serves until Ctrl-C. Every request needs the UI token (kept 0600 in .loops/ui-token, printed when it is made): open the address with ?token=… once and a cookie keeps it. To reach a server's UI from a laptop, keep it on 127.0.0.1 and use `ssh -L 7788:127.0.0.1:7788 HOST` (docs/ui.md).\n\nExamples:\n  loops ui                          # http://127.0.0.1:7788/\n  loops ui --listen 127.0.0.1:9000  # another port\n  loops ui --token                  # print the token and exit"
    )]
    Ui {
        /// The address to listen on (loopback unless you mean it; port 0 picks one).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7788")]
        listen: std::net::SocketAddr,
        /// Print the UI token (made if there is none yet) and exit.
        #[arg(long, conflicts_with = "no_token")]
        token: bool,
        /// Serve without a token: refused unless the address is a loopback one.
        #[arg(long)]
        no_token: bool,
    },
    /// Run the daemon unattended, as a systemd user unit or a launchd agent.
    ///
    /// A systemd user unit (Linux) or launchd agent (macOS) that starts at login, restarts
    /// on failure and logs to the journal (or a log file).
    #[command(
        subcommand,
        after_help = "Examples:
  loops service install --print        show the unit for this workspace, change nothing
  loops service install                write it, enable it and start it
  loops service status                 the unit, the service manager's view, the daemon's own
  journalctl --user -u loops-mind -f   follow its logs (the name is loops-<workspace folder>)
  loops service uninstall              stop it and remove the unit (the env file is kept)

Provider keys go in ~/.config/loops/NAME.env (KEY=value lines). See docs/deploy.md, which also covers Docker."
    )]
    Service(service::ServiceCommand),
}

#[derive(Debug, Subcommand)]
pub enum HandoffCommand {
    /// Write a handoff: inbox/.tmp/, fsync, rename into inbox/. Prints its id.
    #[command(
        after_help = "Inside a loop's command, LOOPS_RUN_ID is picked up as the handoff's run, so the runner knows the run handed its draft off.\n\nExample:\n  loops handoff create --from research-minion --title \"Research ready\" \\\n    --draft drafts/research-minion/2026-11-20.md --item \"Read the draft\" --item \"Reply to the team\""
    )]
    Create {
        /// The loop (or script) handing off.
        #[arg(long)]
        from: String,
        /// The title (the handoff's first heading).
        #[arg(long)]
        title: String,
        /// Who receives it.
        #[arg(long, default_value = "main")]
        to: String,
        /// urgent, high, normal or low.
        #[arg(long, default_value = "normal", value_parser = ["urgent", "high", "normal", "low"])]
        priority: String,
        /// A draft in the workspace this handoff is about (workspace-relative path).
        #[arg(long)]
        draft: Option<String>,
        /// The instructions, from a file ('-' for stdin).
        #[arg(long, conflicts_with = "body")]
        body_file: Option<PathBuf>,
        /// The instructions, inline.
        #[arg(long)]
        body: Option<String>,
        /// A checklist item (repeatable). Add "(optional)" to one the main session may skip.
        #[arg(long = "item")]
        items: Vec<String>,
        /// A due time (RFC 3339).
        #[arg(long)]
        due: Option<String>,
        /// A tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// Every handoff by stage (the default).
    List {
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// One handoff: front matter, body, checklist, where it is and what is noted about it.
    Show {
        /// The handoff's id, as `loops inbox` lists it (or its file's path).
        #[arg(value_parser = handoff_id)]
        id: String,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Tick checklist items of a pending or active handoff, and commit the file.
    #[command(
        after_help = "Name items by their number (1 = first, as `loops inbox show ID` lists them) or by their text, or a unique start of it:

  loops inbox tick ID 2
  loops inbox tick ID \"Reply to the team\" \"Read\"
  loops inbox tick ID --all

An item ticked already is reported, not an error; an item the handoff does not have is an error that lists its items. Once every required item is ticked, `loops inbox complete ID` completes it."
    )]
    Tick {
        /// The handoff's id, as `loops inbox` lists it (or its file's path).
        #[arg(value_parser = handoff_id)]
        id: String,
        /// The items: numbers, texts or the start of a text.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        items: Vec<String>,
        /// Tick every item of the checklist.
        #[arg(long)]
        all: bool,
        /// Print what was ticked as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Complete a handoff: every required checklist item must be ticked. Moves it to
    /// inbox/done/YYYY-MM/ and commits.
    Complete {
        /// The handoff's id, as `loops inbox` lists it (or its file's path).
        #[arg(value_parser = handoff_id)]
        id: String,
        /// What was done.
        #[arg(long)]
        summary: Option<String>,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Hand a handoff held for a person back to the main session: moves it from
    /// inbox/active/ to inbox/ with its failed wakes forgotten, and commits. For one held
    /// after `main.max_attempts` failed wakes once the cause is fixed, or one completed
    /// without its ticks (also one held by a note that cannot be read: the answer names
    /// it).
    Retry {
        /// The handoff's id, as `loops inbox` lists it (or its file's path).
        #[arg(value_parser = handoff_id)]
        id: String,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Refuse a handoff: moves it to inbox/rejected/ with the reason beside it.
    Reject {
        /// The handoff's id, as `loops inbox` lists it (or its file's path).
        #[arg(value_parser = handoff_id)]
        id: String,
        #[arg(long)]
        reason: String,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
}

/// The most fire times `loops next` lists: each is computed before the first is printed.
const MAX_FIRE_TIMES: usize = 10_000;

/// `loops next -n`: a count of fire times there is a point in listing.
fn fire_time_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=MAX_FIRE_TIMES) => Ok(n),
        Ok(_) => Err(format!(
            "give 1 to {MAX_FIRE_TIMES} fire times (use --from to start later)"
        )),
        Err(e) => Err(format!(
            "{e} (a whole number of fire times, 1 to {MAX_FIRE_TIMES})"
        )),
    }
}

/// The reason of a `loops pause` that gives none (also `--reason`'s default).
pub(super) const PAUSED_BY_HAND: &str = "paused by hand";

/// A handoff named by the path of its file (`inbox/ID.md`, as a shell completes it) is
/// that file's id: the id is what goes into commit trailers and messages, never the path.
fn handoff_id(text: &str) -> Result<String, String> {
    let t = text.trim();
    let name = if t.contains('/') || t.ends_with(".md") {
        std::path::Path::new(t)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(t)
    } else {
        t
    };
    let id = name.strip_suffix(".md").unwrap_or(name);
    if id.is_empty() {
        return Err("give a handoff's id, as `loops inbox` lists it".into());
    }
    Ok(id.to_string())
}
