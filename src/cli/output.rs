//! Plain-text tables and time formatting for the terminal.

use chrono::{DateTime, Utc};

/// Left-aligned columns, two spaces apart, sized to their widest cell. A cell is one
/// line: a multi-line value (a run's summary) shows its first line and `…`; `--json`
/// keeps the whole.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| one_line(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
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
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// The first line of `text` that says something, with `…` when more follows.
pub(super) fn one_line(text: &str) -> String {
    if !text.contains('\n') {
        return text.to_string();
    }
    let text = text.trim();
    match text.split_once('\n') {
        None => text.to_string(),
        Some((first, _)) => format!("{} …", first.trim_end()),
    }
}

/// The width a table should fit: the terminal's when stdout is one, else `$COLUMNS`
/// when set (as clap's help reads it), else 100.
pub(super) fn width() -> usize {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        // TIOCGWINSZ on stdout.
        if let Ok(ws) = rustix::termios::tcgetwinsize(std::io::stdout()) {
            if ws.ws_col > 0 {
                return ws.ws_col as usize;
            }
        }
    }
    loops_core::secrets::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c > 0)
        .unwrap_or(100)
}

/// The widest line of a rendered table, in characters.
pub(super) fn widest(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

/// [`table`], with the last column's cells shortened (ending in `…`) so that no line is
/// wider than `width`; the other columns are kept whole, and the last keeps at least 12
/// characters however narrow the terminal.
pub(super) fn table_fit(header: &[&str], rows: &[Vec<String>], width: usize) -> String {
    let Some(last) = header.len().checked_sub(1) else {
        return String::new();
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| one_line(c)).collect())
        .collect();
    let col = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain(std::iter::once(header[i].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let before: usize = (0..last).map(|i| col(i) + 2).sum();
    let room = width.saturating_sub(before).max(12);
    let clipped: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Some(c) = r.get_mut(last) {
                if c.chars().count() > room {
                    *c = format!("{}…", c.chars().take(room - 1).collect::<String>());
                }
            }
            r
        })
        .collect();
    table(header, &clipped)
}

/// "3m ago", "in 2h" — relative to `now`.
pub(super) fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
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

/// A span a person reads at a glance, to its two largest units: `0s`, `42s`, `18m 23s`,
/// `3h 5m`, `2d 4h` (an uptime of `18m23s594ms` says more than anyone wants to know).
pub(super) fn span(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (big, small, units) = if s < 60 {
        return format!("{s}s");
    } else if s < 3600 {
        (s / 60, s % 60, ("m", "s"))
    } else if s < 86_400 {
        (s / 3600, s % 3600 / 60, ("h", "m"))
    } else {
        (s / 86_400, s % 86_400 / 3600, ("d", "h"))
    };
    if small == 0 {
        format!("{big}{}", units.0)
    } else {
        format!("{big}{} {small}{}", units.0, units.1)
    }
}

/// A run's duration: `8ms`, `1.2s`, `3m 12s` (never `0.0s` for a run that took 8 ms).
pub(super) fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        span(std::time::Duration::from_millis(ms))
    }
}

/// A time in the host's zone with its UTC offset, `2026-11-21 07:30:00 +01:00`, so that
/// a time read from a log or a copy of it pasted elsewhere is never ambiguous.
pub(super) fn local_stamp<Tz: chrono::TimeZone>(t: DateTime<Utc>, tz: &Tz, seconds: bool) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let fmt = if seconds {
        "%Y-%m-%d %H:%M:%S %:z"
    } else {
        "%Y-%m-%d %H:%M %:z"
    };
    t.with_timezone(tz).format(fmt).to_string()
}

pub(super) fn short_local<Tz: chrono::TimeZone>(t: DateTime<Utc>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    t.with_timezone(tz)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// Prints live output (a followed run or job) as it arrives, each stream to its own.
pub(super) fn spawn_printer(
    mut rx: tokio::sync::mpsc::Receiver<(loops_core::exec::Stream, Vec<u8>)>,
) -> tokio::task::JoinHandle<()> {
    use std::io::Write;
    tokio::spawn(async move {
        while let Some((stream, bytes)) = rx.recv().await {
            // A terminal's scrollback and a CI log keep what is printed (src/secrets.rs).
            let bytes = loops_core::secrets::redact_bytes(&bytes);
            match stream {
                loops_core::exec::Stream::Stdout => {
                    let _ = std::io::stdout().write_all(&bytes);
                    let _ = std::io::stdout().flush();
                }
                loops_core::exec::Stream::Stderr => {
                    let _ = std::io::stderr().write_all(&bytes);
                }
            }
        }
    })
}

/// Flips to true on the first SIGINT or SIGTERM: a command running work in this process
/// stops it cleanly (its process group, its records) instead of dying mid-write.
pub(super) fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::watch::channel(false);
    // The handlers are in place when this returns (not when the task first runs): a run
    // the daemon starts at once must find Ctrl-C caught, or this process dies of it.
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return rx;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// A `TODAY (ESTIMATE)` column before the status, when any loop spent tokens today:
/// what each spent since the UTC day began (`loops list --json` has it as numbers).
pub(super) fn with_spend(
    header: &mut Vec<&str>,
    mut rows: Vec<Vec<String>>,
    loops: &[crate::operator::LoopRow],
) -> Vec<Vec<String>> {
    let nothing = |s: &loops_core::spend::Spend| s.tokens == 0 && s.unreadable == 0;
    if loops.iter().all(|l| nothing(&l.spent_today)) {
        return rows;
    }
    let at = header.len().saturating_sub(1);
    header.insert(at, "TODAY (ESTIMATE)");
    for (row, l) in rows.iter_mut().zip(loops) {
        let spent = if nothing(&l.spent_today) {
            "-".to_string()
        } else {
            l.spent_today.describe()
        };
        row.insert(at.min(row.len()), spent);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn spans_round_to_two_units() {
        let ms = Duration::from_millis;
        assert_eq!(span(ms(8)), "0s");
        assert_eq!(span(ms(42_900)), "42s");
        assert_eq!(span(ms((18 * 60 + 23) * 1000 + 594)), "18m 23s");
        assert_eq!(span(ms(18 * 60 * 1000)), "18m");
        assert_eq!(span(ms((3 * 3600 + 5 * 60 + 59) * 1000)), "3h 5m");
        assert_eq!(span(ms((2 * 86_400 + 4 * 3600) * 1000)), "2d 4h");
        assert_eq!(duration_ms(8), "8ms");
        assert_eq!(duration_ms(1234), "1.2s");
        assert_eq!(duration_ms(192_000), "3m 12s");
    }

    #[test]
    fn local_stamps_carry_the_offset() {
        let t: DateTime<Utc> = "2026-11-21T06:30:00Z".parse().unwrap();
        assert_eq!(
            local_stamp(t, &chrono_tz::Europe::Berlin, true),
            "2026-11-21 07:30:00 +01:00"
        );
        assert_eq!(
            local_stamp(t, &chrono_tz::UTC, false),
            "2026-11-21 06:30 +00:00"
        );
    }
}
