//! The pictures, drawn on the server as SVG (no script needed to read them): each loop's
//! runs over a span as a timeline, and the tokens each loop used per day as stacked bars.
//! Colours come from classes in style.css (the CSP allows no inline style).

use super::pages::{records, run_tokens};
use super::view;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use loops_core::workspace::Workspace;
use maud::{html, Markup};

const WIDTH: f64 = 900.0;
const LABEL: f64 = 150.0;
const LANE: f64 = 22.0;
/// A loop's records read for a picture: a loop every minute makes 10,080 in a week.
const RECORDS_READ: usize = 20_000;

/// Each loop a lane; each run a mark where it started, as wide as it took (at least a
/// sliver), coloured by outcome.
pub(super) fn timeline(
    ws: &Workspace,
    names: &[String],
    now: DateTime<Utc>,
    span: Duration,
) -> Markup {
    let start = now - span;
    let plot = WIDTH - LABEL - 10.0;
    let x = |t: DateTime<Utc>| {
        LABEL
            + plot * ((t - start).num_seconds() as f64 / span.num_seconds() as f64).clamp(0.0, 1.0)
    };
    let height = 24.0 + LANE * names.len().max(1) as f64;
    let ticks = axis_ticks(start, span);
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (height) } width=(WIDTH) height=(height) role="img" {
            title { "Runs per loop, last " (view::span_secs(span.num_seconds() as u64)) }
            @for (t, label) in &ticks {
                line.grid x1=(x(*t)) x2=(x(*t)) y1="0" y2=(height - 16.0);
                text x=(x(*t)) y=(height - 4.0) text-anchor="middle" { (label) }
            }
            @if names.is_empty() { text x=(LABEL) y="16" { "no loops" } }
            @for (i, name) in names.iter().enumerate() {
                @let y = 4.0 + LANE * i as f64;
                text x=(LABEL - 6.0) y=(y + 13.0) text-anchor="end" { (name) }
                @for r in records(ws, name, RECORDS_READ).iter().filter(|r| r.finished >= start) {
                    @let x0 = x(r.started);
                    @let w = (x(r.finished) - x0).max(2.0);
                    rect class={ "o-" (r.outcome.as_str()) } x=(format!("{x0:.1}")) y=(y + 2.0) width=(format!("{w:.1}")) height=(LANE - 8.0) {
                        title { (name) " · " (r.outcome.as_str()) " · " (r.started.format("%Y-%m-%d %H:%M UTC")) " · " (view::duration_ms(r.duration_ms)) }
                    }
                }
            }
        }
        p.legend.muted { "acted = green, silent = grey, skipped/missed = yellow, failed/timeout = red, interrupted = purple" }
    }
}

/// Grid lines: every 6 hours over a day or less, else every day (UTC).
fn axis_ticks(start: DateTime<Utc>, span: Duration) -> Vec<(DateTime<Utc>, String)> {
    let step = if span <= Duration::hours(24) {
        Duration::hours(6)
    } else {
        Duration::days(1)
    };
    let secs = step.num_seconds();
    let first = (start.timestamp() / secs + 1) * secs;
    let end = start + span;
    let mut out = Vec::new();
    let mut t = DateTime::<Utc>::from_timestamp(first, 0).unwrap_or(start);
    while t <= end {
        let label = if step < Duration::days(1) {
            t.format("%H:%M").to_string()
        } else {
            t.format("%a %d").to_string()
        };
        out.push((t, label));
        t += step;
    }
    out
}

/// Tokens per loop per UTC day over the last `days` days, stacked. Only tokens: a cost
/// needs a price table, which loops.yaml does not have.
pub(super) fn tokens_per_day(
    ws: &Workspace,
    names: &[String],
    now: DateTime<Utc>,
    days: i64,
) -> Markup {
    let today = now.date_naive();
    let dates: Vec<NaiveDate> = (0..days).rev().map(|d| today - Duration::days(d)).collect();
    // per[day][loop]
    let mut per = vec![vec![0u64; names.len()]; dates.len()];
    for (li, name) in names.iter().enumerate() {
        for r in records(ws, name, RECORDS_READ) {
            if let Some(di) = dates.iter().position(|d| *d == r.started.date_naive()) {
                per[di][li] += run_tokens(&r);
            }
        }
    }
    let max = per.iter().map(|d| d.iter().sum::<u64>()).max().unwrap_or(0);
    if max == 0 {
        return html! { p.muted { "No tokens used in the last " (days) " days (command loops use none)." } };
    }
    let (height, base) = (220.0, 190.0);
    let slot = (WIDTH - 60.0) / dates.len() as f64;
    let scale = (base - 10.0) / max as f64;
    let mut bars = Vec::new();
    for (di, d) in dates.iter().enumerate() {
        let x0 = 60.0 + slot * di as f64;
        let mut y = base;
        for (li, n) in per[di].iter().enumerate().filter(|(_, n)| **n > 0) {
            let h = *n as f64 * scale;
            y -= h;
            bars.push((x0, y, h, li, format!("{} · {d} · {n} tokens", names[li])));
        }
    }
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (height) } width=(WIDTH) height=(height) role="img" {
            title { "Tokens per loop per day" }
            text x="4" y="14" { (view::tokens(max)) }
            line.grid x1="50" x2=(WIDTH) y1=(base) y2=(base);
            @for (x0, y, h, li, tip) in &bars {
                rect class={ "s" (li % 6) } x=(format!("{x0:.1}")) y=(format!("{y:.1}")) width=(format!("{:.1}", slot * 0.7)) height=(format!("{h:.1}")) {
                    title { (tip) }
                }
            }
            @for (di, d) in dates.iter().enumerate() {
                text x=(format!("{:.1}", 60.0 + slot * (di as f64 + 0.35))) y=(height - 8.0) text-anchor="middle" { (d.format("%a %d")) }
            }
        }
        p.legend { @for (li, n) in names.iter().enumerate() { span { i class={ "s" (li % 6) } {} (n) } } }
    }
}
