//! The command line: argument definitions (clap) and one function per command. Every
//! error that reaches the user says what happened, where, and what to do next.

mod args;
mod channels;
mod commands;
mod error;
mod inbox;
mod jobs;
mod output;
mod service;
mod status;
mod sync;
mod ui;

pub use args::Cli;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use error::{die_of_sigpipe, CliError};

pub use commands::dispatch;

/// The program after `main` has protected the secrets: parses the arguments, runs the
/// command and reports an error the way the command was asked to speak (text on stderr,
/// or a JSON object on stdout with `--json`). Returns the exit code.
pub fn main() -> i32 {
    quiet_broken_pipe();
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return clap_error(e),
    };
    let json = json_requested(&matches);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    match dispatch(cli) {
        Ok(()) => 0,
        Err(e) => {
            e.report(json);
            e.code
        }
    }
}

/// Whether `--json` was given to the command or to any command above it (`loops inbox
/// --json show ID` as well as `loops inbox show ID --json`).
fn json_requested(m: &ArgMatches) -> bool {
    let here = matches!(m.try_get_one::<bool>("json"), Ok(Some(true)));
    here || m.subcommand().is_some_and(|(_, sub)| json_requested(sub))
}

/// A usage error from clap. With `--json` among the arguments a script still gets a JSON
/// object on stdout (help and version output are not errors and print as they are).
fn clap_error(e: clap::Error) -> i32 {
    let wants_json = std::env::args_os().any(|a| a == "--json");
    if !e.use_stderr() || !wants_json {
        e.exit();
    }
    let text = e.render().to_string();
    let mut lines = text.trim().lines();
    let message = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string();
    let rest: Vec<&str> = lines.map(str::trim).filter(|l| !l.is_empty()).collect();
    let err = CliError {
        message,
        help: (!rest.is_empty()).then(|| rest.join("\n")),
        code: e.exit_code(),
    };
    err.report(true);
    err.code
}

/// Writing into a closed pipe (`loops next x -n 2000 | head -1`) ends the program quietly,
/// as it does a Unix tool: killed by SIGPIPE, so the shell sees the usual status. The Rust
/// runtime ignores SIGPIPE, which the daemon needs (a child or a socket that goes away
/// must be an error, not its death), so `println!` panics on EPIPE instead; this hook
/// turns exactly that panic back into the signal and leaves every other panic alone.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        let printing = msg.starts_with("failed printing to stdout")
            || msg.starts_with("failed printing to stderr");
        if printing && msg.contains("Broken pipe") {
            die_of_sigpipe();
        }
        default(info);
    }));
}
