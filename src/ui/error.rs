//! Why the UI server did not start, and what to do.

use std::net::SocketAddr;

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("the UI would listen on {0}, which is not a loopback address, without a token")]
    OpenWithoutToken(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot make the UI token {}: {source}", path.display())]
    Token {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a random secret from /dev/urandom: {0}")]
    Random(std::io::Error),
    #[error("the UI server stopped: {0}")]
    Serve(std::io::Error),
}

impl UiError {
    pub fn help(&self) -> Option<String> {
        match self {
            UiError::OpenWithoutToken(_) => Some(
                "drop --no-token (the token then guards every request), or listen on 127.0.0.1 and reach it through `ssh -L` (docs/ui.md)".into(),
            ),
            UiError::Bind { .. } => Some(
                "another program holds the port: choose another with --listen 127.0.0.1:PORT (loops.yaml `ui: {listen: …}` for the daemon)".into(),
            ),
            UiError::Token { .. } => {
                Some("the token is kept in .loops/: check that the folder is yours and writable".into())
            }
            UiError::Random(_) | UiError::Serve(_) => None,
        }
    }
}
