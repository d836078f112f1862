//! Plain-text tables and time formatting for the terminal.

use chrono::{DateTime, Utc};

/// Left-aligned columns, two spaces apart, sized to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                let pad = widths[i] - c.chars().count() + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// "3m ago", "in 2h" — relative to `now`.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let (abs, future) = (secs.unsigned_abs(), secs > 0);
    let span = if abs < 60 {
        format!("{abs}s")
    } else if abs < 3600 {
        format!("{}m", abs / 60)
    } else if abs < 86_400 {
        format!("{}h", abs / 3600)
    } else {
        format!("{}d", abs / 86_400)
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

pub fn short_local<Tz: chrono::TimeZone>(t: DateTime<Utc>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    t.with_timezone(tz)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// Prints live output (a followed run or job) as it arrives, each stream to its own.
pub fn spawn_printer(
    mut rx: tokio::sync::mpsc::Receiver<(crate::exec::Stream, Vec<u8>)>,
) -> tokio::task::JoinHandle<()> {
    use std::io::Write;
    tokio::spawn(async move {
        while let Some((stream, bytes)) = rx.recv().await {
            // A terminal's scrollback and a CI log keep what is printed (src/secrets.rs).
            let bytes = crate::secrets::redact_bytes(&bytes);
            match stream {
                crate::exec::Stream::Stdout => {
                    let _ = std::io::stdout().write_all(&bytes);
                    let _ = std::io::stdout().flush();
                }
                crate::exec::Stream::Stderr => {
                    let _ = std::io::stderr().write_all(&bytes);
                }
            }
        }
    })
}

/// Flips to true on the first SIGINT or SIGTERM: a command running work in this process
/// stops it cleanly (its process group, its records) instead of dying mid-write.
pub fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    rx
}
