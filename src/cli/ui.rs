//! `loops ui`: the web view in the foreground, until Ctrl-C; `loops ui --token` prints
//! the token. The server itself is in [`crate::ui`].

use super::error::CliError;
use crate::ui::{self, ServeOptions};
use loops_core::workspace::Workspace;
use std::net::SocketAddr;
use std::sync::Arc;

type Result<T = ()> = std::result::Result<T, CliError>;

pub(super) fn ui(ws: Workspace, listen: SocketAddr, show_token: bool, no_token: bool) -> Result {
    if show_token {
        println!("{}", ui::load_or_create_token(&ws)?.secret);
        return Ok(());
    }
    ui::check_listen(listen, !no_token)?;
    let token = if no_token {
        None
    } else {
        let t = ui::load_or_create_token(&ws)?;
        if t.created {
            println!(
                "made the UI token (kept in {}; `loops ui --token` shows it again):\n  {}",
                ws.layout().ui_token().display(),
                t.secret
            );
        }
        Some(t.secret)
    };
    let with_token = token.is_some();
    let rt = crate::daemon::runtime()
        .map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(ui::serve(
        Arc::new(ws),
        ServeOptions { listen, token },
        |addr| announce(addr, with_token),
        stopped(),
    ))?;
    Ok(())
}

/// The address to open; the token is not repeated (it was shown once, when made).
fn announce(addr: SocketAddr, with_token: bool) {
    let hint = if with_token {
        " — add ?token=… the first time (`loops ui --token` prints it)"
    } else {
        ""
    };
    println!("loops ui: listening on http://{addr}/{hint}");
}

/// Ctrl-C or SIGTERM (a service manager's stop): the server finishes what it answers.
async fn stopped() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
