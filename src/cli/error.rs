//! The error every command returns at the command-line edge, and how it is told.

/// An error at the command-line edge: what happened, and what to do.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub help: Option<String>,
    pub code: i32,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            help: None,
            code: 1,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Tells the user: `error: …` and `  help: …` on stderr, or with `json` one object on
    /// stdout, `{"error": {"message", "hint", "exit_code"}}`, so a script that asked for
    /// JSON can parse the failure too. A silent error (its command already printed its
    /// report) prints nothing.
    pub fn report(&self, json: bool) {
        if self.message.is_empty() {
            return;
        }
        if json {
            let v = serde_json::json!({
                "error": {
                    "message": self.message,
                    "hint": self.help,
                    "exit_code": self.code,
                }
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return;
        }
        eprintln!("error: {}", self.message);
        if let Some(h) = &self.help {
            eprintln!("  help: {h}");
        }
    }

    /// Exit quietly with a code (the command already printed its report).
    pub fn silent(code: i32) -> Self {
        CliError {
            message: String::new(),
            help: None,
            code,
        }
    }
}

macro_rules! from_module_error {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                CliError { help: e.help(), message: e.to_string(), code: 1 }
            }
        }
    )*};
}

from_module_error!(
    loops_core::workspace::WorkspaceError,
    loops_core::history::HistoryError,
    crate::daemon::DaemonError,
    crate::templates::TemplateError,
    loops_core::watcher::WatchError,
    loops_core::handoff::HandoffError,
    crate::operator::OperatorError,
    crate::mcp::McpError,
    crate::ui::UiError
);

impl From<loops_core::state::StateError> for CliError {
    fn from(e: loops_core::state::StateError) -> Self {
        CliError::new(e.to_string())
    }
}

/// Ends the process as a Unix tool ends when its reader has gone: by SIGPIPE, silently.
pub(crate) fn die_of_sigpipe() -> ! {
    loops_core::sys::raise_default_sigpipe();
    // Not reached once the signal is delivered; the status a shell shows for it.
    std::process::exit(141)
}
