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
        p.legend.muted { "acted = green, silent = grey, skipped/missed/budget = yellow, failed/timeout = red, interrupted = purple" }
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

/// What one loop spent on one day: tokens, and their estimated cost where the model's
/// price is known (loops.yaml `pricing:`; a record without `cost_estimate` is unpriced).
#[derive(Clone, Copy, Default)]
struct DaySpend {
    tokens: u64,
    cost: f64,
    unpriced: bool,
}

impl DaySpend {
    fn add(&mut self, r: &loops_core::runs::RunRecord) {
        let n = run_tokens(r);
        self.tokens += n;
        match r.cost_estimate {
            Some(c) => self.cost += c,
            None if n > 0 => self.unpriced = true,
            None => {}
        }
    }

    fn cost_label(&self) -> String {
        match (self.unpriced, self.cost > 0.0) {
            (true, false) => "cost unknown".into(),
            (true, true) => format!("≥ ~${:.4}", self.cost),
            (false, _) => format!("~${:.4}", self.cost),
        }
    }
}

/// Tokens per loop per UTC day over the last `days` days, stacked, with each bar's
/// estimated cost (from the run records' `cost_estimate`, priced by loops.yaml
/// `pricing:`) above it: an estimate, never a bill.
pub(super) fn tokens_per_day(
    ws: &Workspace,
    names: &[String],
    now: DateTime<Utc>,
    days: i64,
) -> Markup {
    let today = now.date_naive();
    let dates: Vec<NaiveDate> = (0..days).rev().map(|d| today - Duration::days(d)).collect();
    // per[day][loop]
    let mut per = vec![vec![DaySpend::default(); names.len()]; dates.len()];
    for (li, name) in names.iter().enumerate() {
        for r in records(ws, name, RECORDS_READ) {
            if let Some(di) = dates.iter().position(|d| *d == r.started.date_naive()) {
                per[di][li].add(&r);
            }
        }
    }
    let day_total = |d: &[DaySpend]| {
        d.iter().fold(DaySpend::default(), |mut a, s| {
            a.tokens += s.tokens;
            a.cost += s.cost;
            a.unpriced |= s.unpriced;
            a
        })
    };
    let totals: Vec<DaySpend> = per.iter().map(|d| day_total(d)).collect();
    let max = totals.iter().map(|t| t.tokens).max().unwrap_or(0);
    if max == 0 {
        return html! { p.muted { "No tokens used in the last " (days) " days (command loops use none)." } };
    }
    let (height, base) = (236.0, 190.0);
    let slot = (WIDTH - 60.0) / dates.len() as f64;
    let scale = (base - 26.0) / max as f64;
    let mut bars = Vec::new();
    for (di, d) in dates.iter().enumerate() {
        let x0 = 60.0 + slot * di as f64;
        let mut y = base;
        for (li, s) in per[di].iter().enumerate().filter(|(_, s)| s.tokens > 0) {
            let h = s.tokens as f64 * scale;
            y -= h;
            let tip = format!(
                "{} · {d} · {} tokens · {} (estimate)",
                names[li],
                s.tokens,
                s.cost_label()
            );
            bars.push((x0, y, h, li, tip));
        }
    }
    let week = day_total(&totals);
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (height) } width=(WIDTH) height=(height) role="img" {
            title { "Tokens and estimated cost per loop per day" }
            text x="4" y="14" { (view::tokens(max)) }
            line.grid x1="50" x2=(WIDTH) y1=(base) y2=(base);
            @for (x0, y, h, li, tip) in &bars {
                rect class={ "s" (li % 6) } x=(format!("{x0:.1}")) y=(format!("{y:.1}")) width=(format!("{:.1}", slot * 0.7)) height=(format!("{h:.1}")) {
                    title { (tip) }
                }
            }
            @for (di, d) in dates.iter().enumerate() {
                @let cx = format!("{:.1}", 60.0 + slot * (di as f64 + 0.35));
                text x=(cx) y=(height - 24.0) text-anchor="middle" { (d.format("%a %d")) }
                @if totals[di].tokens > 0 {
                    text.cost x=(cx) y=(height - 8.0) text-anchor="middle" { (totals[di].cost_label()) }
                }
            }
        }
        p.legend { @for (li, n) in names.iter().enumerate() { span { i class={ "s" (li % 6) } {} (n) } } }
        p.muted {
            (view::tokens(week.tokens)) " tokens in " (days) " days, " (week.cost_label())
            ": an estimate from token counts and loops.yaml " code { "pricing:" } " (or the built-in list prices), never a bill."
        }
    }
}

/// How many handoffs the wait-time picture shows, newest first.
const WAITS_SHOWN: usize = 30;

/// One handoff's wait: from its `created` to its `## Completed` note, or to now while it
/// is still pending or active.
struct Wait {
    title: String,
    id: String,
    created: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
}

/// When a done handoff was completed: the time of its last `## Completed …` note.
fn completed_at(body: &str) -> Option<DateTime<Utc>> {
    body.lines()
        .rev()
        .find_map(|l| l.strip_prefix("## Completed "))
        .and_then(|t| t.trim().parse().ok())
}

fn waits(ws: &Workspace, now: DateTime<Utc>, days: i64) -> Vec<Wait> {
    let inbox = loops_core::handoff::Inbox::of(ws);
    let since = now - Duration::days(days);
    let limit = ws.settings.max_handoff_bytes;
    let read = |p: &std::path::Path| loops_core::handoff::load_limited(p, limit).ok();
    let mut out: Vec<Wait> = Vec::new();
    for p in inbox.done().into_iter().take(WAITS_SHOWN * 4) {
        let Some(h) = read(&p) else { continue };
        let (Some(created), Some(ended)) = (h.created, completed_at(&h.body)) else {
            continue;
        };
        if ended >= since {
            out.push(Wait {
                title: h.title,
                id: h.id,
                created,
                ended: Some(ended),
            });
        }
    }
    for p in inbox.pending().into_iter().chain(inbox.active()) {
        if let Some(h) = read(&p) {
            if let Some(created) = h.created {
                out.push(Wait {
                    title: h.title,
                    id: h.id,
                    created,
                    ended: None,
                });
            }
        }
    }
    out.sort_by_key(|w| std::cmp::Reverse(w.created));
    out.truncate(WAITS_SHOWN);
    out
}

/// Handoff wait times: a bar per handoff (the newest first) from when it was written to
/// when it was completed, or to now (lighter) while it still waits; the median and the
/// slowest of the completed ones above.
pub(super) fn handoff_waits(ws: &Workspace, now: DateTime<Utc>, days: i64) -> Markup {
    let waits = waits(ws, now, days);
    if waits.is_empty() {
        return html! { p.muted { "No handoff completed or waiting in the last " (days) " days." } };
    }
    let secs = |w: &Wait| (w.ended.unwrap_or(now) - w.created).num_seconds().max(0) as u64;
    let max = waits.iter().map(secs).max().unwrap_or(0).max(1);
    let mut done: Vec<u64> = waits
        .iter()
        .filter(|w| w.ended.is_some())
        .map(secs)
        .collect();
    done.sort_unstable();
    let plot = WIDTH - LABEL - 80.0;
    let lane = 18.0;
    let height = 8.0 + lane * waits.len() as f64;
    html! {
        @if let (Some(median), Some(slowest)) = (done.get(done.len() / 2), done.last()) {
            p { "Completed in the last " (days) " days: " (done.len()) ", median wait " (view::span_secs(*median)) ", slowest " (view::span_secs(*slowest)) "." }
        }
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (height) } width=(WIDTH) height=(height) role="img" {
            title { "Handoff wait times" }
            @for (i, w) in waits.iter().enumerate() {
                @let y = 4.0 + lane * i as f64;
                @let s = secs(w);
                @let len = (plot * s as f64 / max as f64).max(2.0);
                text x=(LABEL - 6.0) y=(y + 11.0) text-anchor="end" { (loops_core::text::clip(&w.title, 22)) }
                rect class=(if w.ended.is_some() { "wait-done" } else { "wait-open" }) x=(LABEL) y=(y + 1.0) width=(format!("{len:.1}")) height=(lane - 6.0) {
                    title {
                        (w.title) " (" (w.id) ") · written " (w.created.format("%Y-%m-%d %H:%M UTC")) " · "
                        @if w.ended.is_some() { "waited " } @else { "still waiting after " }
                        (view::span_secs(s))
                    }
                }
                text x=(format!("{:.1}", LABEL + len + 6.0)) y=(y + 11.0) {
                    (view::span_secs(s)) @if w.ended.is_none() { " and waiting" }
                }
            }
        }
        p.legend.muted { "dark = completed, light = still pending or active" }
    }
}
