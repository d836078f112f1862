//! `loops service install|status|uninstall`: the daemon as a systemd user unit or a
//! launchd agent. The work is in [`crate::service`]; this is arguments and printing.

use super::error::CliError;
use crate::service::{self, Dirs, Manager, ServiceError, ServiceSpec};
use clap::Subcommand;
use loops_core::workspace::Workspace;
use std::path::{Path, PathBuf};

type Result<T = ()> = std::result::Result<T, CliError>;

impl From<ServiceError> for CliError {
    fn from(e: ServiceError) -> Self {
        CliError {
            help: e.help(),
            message: e.to_string(),
            code: 1,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the service file and an env file for provider keys, then enable and start it.
    #[command(
        after_help = "On Linux this writes ~/.config/systemd/user/NAME.service (restart on failure, logs to the journal)
and runs `systemctl --user daemon-reload` and `systemctl --user enable --now NAME.service`.
On macOS it writes ~/Library/LaunchAgents/dev.loops.NAME.plist and runs `launchctl bootstrap`.
Provider keys go in the env file (default ~/.config/loops/NAME.env, created mode 0600).

Examples:
  loops service install --print                 show the unit, change nothing
  loops --workspace ~/mind service install      install and start it
  loops service install --name loops-work --env-file ~/.config/loops/work.env"
    )]
    Install {
        /// Print the service file to stdout and change nothing.
        #[arg(long)]
        print: bool,
        /// A per-user service (the default, and the only kind so far).
        #[arg(long, conflicts_with = "system")]
        user: bool,
        /// A system-wide service: refused for now (use --user with `loginctl enable-linger`).
        #[arg(long)]
        system: bool,
        /// The service's name (default: loops-<workspace folder name>).
        #[arg(long)]
        name: Option<String>,
        /// The environment file read at start (default: ~/.config/loops/NAME.env).
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
    },
    /// Whether the service is installed, what the service manager says, and whether the
    /// daemon holds the workspace.
    Status {
        /// The service's name (default: loops-<workspace folder name>).
        #[arg(long)]
        name: Option<String>,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
    /// Stop and disable the service and remove its file (the env file is kept).
    Uninstall {
        /// The service's name (default: loops-<workspace folder name>).
        #[arg(long)]
        name: Option<String>,
        /// Print JSON on stdout instead of text (an error too, as {"error": {…}}).
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn service(ws_arg: Option<&Path>, cmd: ServiceCommand) -> Result {
    let dirs = Dirs::from_env()?;
    match cmd {
        ServiceCommand::Install {
            print,
            user: _,
            system,
            name,
            env_file,
        } => {
            if system {
                return Err(ServiceError::SystemWide.into());
            }
            let manager = Manager::current()?;
            let ws = Workspace::locate(ws_arg)?;
            let spec =
                ServiceSpec::for_workspace(&ws, &dirs, name.as_deref(), env_file.as_deref())?;
            if print {
                print!("{}", service::render(manager, &spec, &dirs)?);
                return Ok(());
            }
            install(manager, &spec, &dirs)
        }
        ServiceCommand::Status { name, json } => show_status(ws_arg, &dirs, name, json),
        ServiceCommand::Uninstall { name, json } => uninstall_service(ws_arg, &dirs, name, json),
    }
}

/// `loops service status`.
fn show_status(ws_arg: Option<&Path>, dirs: &Dirs, name: Option<String>, json: bool) -> Result {
    let manager = Manager::current()?;
    // With --name the workspace comes from the installed file; without it, the
    // name comes from the workspace.
    let ws = Workspace::locate(ws_arg);
    let name = match name {
        Some(n) => service::check_name(&n)?,
        None => service::default_name(&ws.as_ref().map_err(clone_ws_err)?.root),
    };
    let st = service::status(
        manager,
        dirs,
        &name,
        ws.as_ref().ok().map(|w| w.root.as_path()),
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
    } else {
        print_status(&st);
    }
    Ok(())
}

/// `loops service uninstall`.
fn uninstall_service(
    ws_arg: Option<&Path>,
    dirs: &Dirs,
    name: Option<String>,
    json: bool,
) -> Result {
    let manager = Manager::current()?;
    let name = match name {
        Some(n) => service::check_name(&n)?,
        None => service::default_name(&Workspace::locate(ws_arg)?.root),
    };
    let r = service::uninstall(manager, dirs, &name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(());
    }
    if !r.was_installed {
        println!(
            "{name} is not installed ({} does not exist); nothing to do.",
            r.unit_file.display()
        );
    } else if r.warnings.is_empty() {
        println!(
            "Removed {} ({name} is stopped and disabled).",
            r.unit_file.display()
        );
    } else {
        println!("Removed {}.", r.unit_file.display());
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(env) = &r.env_file_kept {
        println!(
            "The env file {} is kept (it may hold keys); delete it yourself if it is no longer needed.",
            env.display()
        );
    }
    Ok(())
}

/// A workspace error borrowed from a `Result` we keep using, as a `CliError`.
fn clone_ws_err(e: &loops_core::workspace::WorkspaceError) -> CliError {
    CliError {
        message: e.to_string(),
        help: e.help(),
        code: 1,
    }
}

fn install(manager: Manager, spec: &ServiceSpec, dirs: &Dirs) -> Result {
    let r = service::install(manager, spec, dirs)?;
    let name = &r.name;
    println!(
        "Installed {name} ({}) for {}",
        manager.describe(),
        spec.workspace.display()
    );
    println!("  service file: {}", r.unit_file.display());
    println!("  runs:         {}", spec.exe.display());
    println!(
        "  env file:     {}{}",
        r.env_file.display(),
        if r.env_file_created {
            " (created, mode 0600: put provider keys here, e.g. ANTHROPIC_API_KEY=...)"
        } else {
            " (kept as it was)"
        }
    );
    match manager {
        Manager::Systemd => {
            println!("\nIt is enabled and started. Next:");
            println!("  loops service status");
            println!("  journalctl --user -u {name} -f");
            if r.replaced {
                println!("\nThe unit changed; if it was already running, `systemctl --user restart {name}` applies the change.");
            }
            if r.linger != Some(true) {
                println!("\nUser services stop when you log out. To keep it running (and start it at boot):\n  loginctl enable-linger $USER");
            }
        }
        Manager::Launchd => {
            println!("\nIt is loaded and started. Next:");
            println!("  loops service status");
            if let Some(log) = &r.log_file {
                println!(
                    "  tail -f {}",
                    service::sh_quote(&log.display().to_string())
                );
            }
        }
    }
    // The unit names this very binary: one in a build folder goes with the next `cargo clean`.
    let exe = spec.exe.to_string_lossy();
    if exe.contains("/target/debug/") || exe.contains("/target/release/") {
        println!("\nThe service runs a binary in a build folder; `cargo install --path .` and installing again from ~/.cargo/bin/loops keeps it from disappearing with the next `cargo clean`.");
    }
    if r.env_file_created {
        println!("\nAfter adding keys to the env file, restart the service so it reads them.");
    }
    Ok(())
}

fn print_status(st: &service::Status) {
    println!("{} ({})", st.name, st.manager.describe());
    println!(
        "  service file: {} ({})",
        st.unit_file.display(),
        if st.installed {
            "installed"
        } else {
            "not installed"
        }
    );
    match (&st.manager_error, &st.active, &st.enabled) {
        (Some(e), _, _) => println!("  manager:      cannot ask it: {e}"),
        (None, active, enabled) => println!(
            "  manager:      {}, {}",
            active.as_deref().unwrap_or("unknown"),
            enabled.as_deref().unwrap_or("unknown")
        ),
    }
    if let Some(ws) = &st.workspace {
        println!("  workspace:    {}", ws.display());
    }
    match &st.daemon.lock {
        Some(l) => println!(
            "  daemon:       running, pid {} since {}, loops {}",
            l.pid,
            l.started.to_rfc3339(),
            l.version
        ),
        None => println!("  daemon:       not running"),
    }
    if let Some(env) = &st.env_file {
        println!(
            "  env file:     {}{}",
            env.display(),
            if env.exists() { "" } else { " (missing)" }
        );
    }
    if st.installed {
        match st.manager {
            Manager::Systemd => println!("  logs:         journalctl --user -u {} -f", st.name),
            Manager::Launchd => println!("  logs:         ~/Library/Logs/loops/{}.log", st.name),
        }
    } else {
        println!("\nInstall it with `loops service install` (`--print` shows the unit first).");
    }
}
