//! When a loop runs: the schedule kinds, their next fire times as UTC instants, the stable
//! jitter offset, and the slot planner that makes "exactly one run per slot" hold.
//!
//! A *slot* is a nominal instant a schedule names (10:00:00 for `every: 1h`, 09:30 New
//! York time for a cron). A loop fires at `slot + offset`, where the offset is a stable
//! hash of its name within `jitter`. The planner is a pure function of the schedule, the
//! loop's watermark (the last slot already decided) and "now", so it can be driven by a
//! simulated clock through weeks, DST changes and restarts.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A slot later than this is "on time"; later still, it is being caught up.
pub const ON_TIME_GRACE: Duration = Duration::from_secs(60);
/// `catch_up: all` runs at most this many missed slots; more are reported, not run.
pub const MAX_CATCH_UP: usize = 100;

/// What a schedule names.
#[derive(Debug, Clone)]
pub enum When {
    /// Fixed interval, slots aligned to the Unix epoch so they do not move on restart.
    Every(Duration),
    /// A cron expression read in the schedule's timezone.
    Cron { expr: String, cron: Box<Cron> },
    /// One shot.
    At(DateTime<Utc>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    #[default]
    Once,
    Skip,
    All,
}

/// Where a schedule's timezone came from; always shown so no one is surprised by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TzSource {
    Loop,
    Workspace,
    Host,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub when: When,
    pub tz: Tz,
    pub tz_source: TzSource,
    /// The configured jitter window.
    pub jitter: Duration,
    /// This loop's stable offset inside the jitter window.
    pub offset: Duration,
    pub catch_up: CatchUp,
    pub starting_deadline: Duration,
    /// `adaptive: {min, max}`: the model may choose its next look within these bounds.
    pub adaptive: Option<Adaptive>,
}

/// `schedule.adaptive`: the bounds of the next look a model may choose
/// (`finish(next_check)`), used once instead of `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adaptive {
    pub min: Duration,
    pub max: Duration,
}

impl Adaptive {
    /// `d` held inside the bounds.
    pub fn clamp(&self, d: Duration) -> Duration {
        d.clamp(self.min, self.max)
    }
}

/// Stable 64-bit FNV-1a: the same name gives the same offset on every machine and run.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The offset a loop named `name` gets inside a jitter window.
pub fn jitter_offset(name: &str, jitter: Duration) -> Duration {
    let ms = jitter.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(stable_hash(name) % ms)
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::milliseconds(d.as_millis().min(i64::MAX as u128) as i64)
}

impl Schedule {
    /// The default `starting_deadline`: an interval loop always catches up its latest
    /// slot; a cron or one-shot loop older than an hour is not replayed (a morning
    /// briefing must not arrive at midnight).
    pub fn default_deadline(when: &When) -> Duration {
        match when {
            When::Every(iv) => (*iv).max(ON_TIME_GRACE),
            _ => Duration::from_secs(3600),
        }
    }

    /// The first nominal slot strictly after `t`.
    pub fn next_slot_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.when {
            When::Every(iv) => {
                let iv = iv.as_millis() as i64;
                if iv <= 0 {
                    return None;
                }
                let ms = t.timestamp_millis();
                let k = ms.div_euclid(iv) + 1;
                Utc.timestamp_millis_opt(k.checked_mul(iv)?).single()
            }
            When::Cron { cron, .. } => next_cron_slot(cron, self.tz, t),
            When::At(at) => (*at > t).then_some(*at),
        }
    }

    /// The last nominal slot at or before `t`.
    pub fn last_slot_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.when {
            When::Every(iv) => {
                let iv = iv.as_millis() as i64;
                if iv <= 0 {
                    return None;
                }
                let k = t.timestamp_millis().div_euclid(iv);
                Utc.timestamp_millis_opt(k.checked_mul(iv)?).single()
            }
            When::Cron { cron, .. } => {
                // croner's backward search disagrees with its forward search around DST
                // changes: a time skipped by spring-forward resolves to the last instant
                // before the gap (not the first after it), and from inside a repeated
                // hour it can miss that day's occurrence. Slots are what the forward
                // search names, so step back two occurrences and walk forward to `t`.
                let p1 = cron
                    .find_previous_occurrence(&t.with_timezone(&self.tz), true)
                    .ok()?;
                let p2 = cron.find_previous_occurrence(&p1, false).unwrap_or(p1);
                let mut cursor = p2.with_timezone(&Utc).min(t) - chrono::Duration::seconds(1);
                let mut last = None;
                for _ in 0..1000 {
                    match self.next_slot_after(cursor) {
                        Some(s) if s <= t => {
                            last = Some(s);
                            cursor = s;
                        }
                        _ => break,
                    }
                }
                last
            }
            When::At(at) => (*at <= t).then_some(*at),
        }
    }

    /// When a slot actually fires.
    pub fn fire_time(&self, slot: DateTime<Utc>) -> DateTime<Utc> {
        slot + chrono_dur(self.offset)
    }

    /// The next fire instant strictly after the slot `after` (a watermark).
    pub fn next_fire_after_slot(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_slot_after(after).map(|s| self.fire_time(s))
    }

    /// The next `count` fire times after `t`, for `loops next` and `loops list`.
    pub fn upcoming(&self, t: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        // `count` may come from a person's `-n`: the list grows as it goes, not all at once.
        let mut out = Vec::with_capacity(count.min(64));
        let mut cursor = t - chrono_dur(self.offset);
        while out.len() < count {
            match self.next_slot_after(cursor) {
                Some(s) => {
                    out.push(self.fire_time(s));
                    cursor = s;
                }
                None => break,
            }
        }
        out
    }

    /// A short description: `every 10m`, `cron 30 9 * * 1-5`, `at 2026-12-01T09:00:00Z`.
    pub fn describe(&self) -> String {
        match &self.when {
            When::Every(iv) => format!("every {}", crate::duration::format_duration(*iv)),
            When::Cron { expr, .. } => format!("cron {expr}"),
            When::At(at) => format!("at {}", at.to_rfc3339()),
        }
    }

    /// Plans what to do at `now` for a loop whose slots up to `watermark` are decided.
    pub fn plan(&self, watermark: DateTime<Utc>, now: DateTime<Utc>) -> Plan {
        let horizon = now - chrono_dur(self.offset);
        let mut plan = Plan {
            watermark,
            runs: Vec::new(),
            missed: None,
        };
        let Some(first) = self.next_slot_after(watermark) else {
            return plan;
        };
        if first > horizon {
            return plan;
        }
        let Some(last) = self.last_slot_at_or_before(horizon) else {
            return plan;
        };
        plan.watermark = last;
        let (due, more) = self.due_slots(first, last);
        let runs = self.runs_of(&due, last, more, now);
        let total = if more { None } else { Some(due.len()) };
        let run_count = runs.len();
        let missed_count = total.map(|t| t - run_count);
        if missed_count != Some(0) {
            plan.missed = Some(Missed {
                first,
                last: self.last_missed(&due, last, more, &runs),
                count: missed_count,
                // Only `catch_up: all` gives up on running; once and skip decide as usual.
                too_many: more && self.catch_up == CatchUp::All,
            });
        }
        plan.runs = runs;
        plan
    }

    /// The slots from `first` to `last`, both included: at most [`MAX_CATCH_UP`] and
    /// `last`, with `true` when there were more between them.
    fn due_slots(&self, first: DateTime<Utc>, last: DateTime<Utc>) -> (Vec<DateTime<Utc>>, bool) {
        // Enumerate at most MAX_CATCH_UP + 1 slots; beyond that only the count matters.
        let mut due = vec![first];
        let mut more = false;
        let mut cursor = first;
        while cursor < last {
            match self.next_slot_after(cursor) {
                Some(s) if s <= last => {
                    if due.len() >= MAX_CATCH_UP {
                        more = true;
                        break;
                    }
                    due.push(s);
                    cursor = s;
                }
                _ => break,
            }
        }
        if due.last() != Some(&last) && !more {
            due.push(last);
        }
        (due, more)
    }

    /// Which of the due slots run now, as the loop's `catch_up` and starting deadline say.
    fn runs_of(
        &self,
        due: &[DateTime<Utc>],
        last: DateTime<Utc>,
        more: bool,
        now: DateTime<Utc>,
    ) -> Vec<PlannedRun> {
        let lateness = |s: DateTime<Utc>| (now - self.fire_time(s)).to_std().unwrap_or_default();
        let grace = ON_TIME_GRACE.min(self.starting_deadline);
        let within = |s: DateTime<Utc>| lateness(s) <= self.starting_deadline;
        let mut runs: Vec<PlannedRun> = Vec::new();
        match self.catch_up {
            CatchUp::Once => {
                if within(last) {
                    runs.push(PlannedRun {
                        slot: last,
                        catch_up: lateness(last) > grace,
                    });
                }
            }
            CatchUp::Skip => {
                if lateness(last) <= grace {
                    runs.push(PlannedRun {
                        slot: last,
                        catch_up: false,
                    });
                }
            }
            CatchUp::All => {
                if !more {
                    for s in due {
                        if within(*s) {
                            runs.push(PlannedRun {
                                slot: *s,
                                catch_up: lateness(*s) > grace,
                            });
                        }
                    }
                }
            }
        }
        runs
    }

    /// The latest due slot that does not run.
    fn last_missed(
        &self,
        due: &[DateTime<Utc>],
        last: DateTime<Utc>,
        more: bool,
        runs: &[PlannedRun],
    ) -> DateTime<Utc> {
        if !runs.iter().any(|r| r.slot == last) {
            last
        } else if more {
            // `due` stops short of `last`; only `last` ran, so the slot before it.
            self.last_slot_at_or_before(last - chrono::Duration::milliseconds(1))
                .unwrap_or(last)
        } else {
            due.iter()
                .rev()
                .find(|s| !runs.iter().any(|r| r.slot == **s))
                .copied()
                .unwrap_or(last)
        }
    }
}

/// The next cron slot strictly after `t`, as a whole-second UTC instant.
///
/// croner answers a search that lands in a spring-forward gap with the first instant
/// after the gap, even when the pattern names no time inside the gap (`30 1 * * *`
/// searched from 01:30 on the changeover day gives 03:00). Such an answer is kept only
/// when a wall-clock time the pattern names really fell in the gap; otherwise the search
/// goes on, so a job fires exactly once a day across the change.
fn next_cron_slot(cron: &Cron, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::{Timelike, Utc as U};
    // Sub-second "now" must not leak into slots: search from the whole second.
    let mut cursor = t.with_nanosecond(0).unwrap_or(t);
    for _ in 0..8 {
        let c = cron
            .find_next_occurrence(&cursor.with_timezone(&tz), false)
            .ok()?;
        let c_utc = c.with_timezone(&U).with_nanosecond(0)?;
        if cron.is_time_matching(&c).unwrap_or(false) || gap_held_a_match(cron, tz, c_utc) {
            return Some(c_utc);
        }
        cursor = c_utc;
    }
    None
}

/// Whether the wall-clock hour just before `after_gap` was skipped by a DST change and
/// holds a time the pattern names.
fn gap_held_a_match(cron: &Cron, tz: Tz, after_gap: DateTime<Utc>) -> bool {
    let local = after_gap.with_timezone(&tz).naive_local();
    let before = (after_gap - chrono::Duration::seconds(1))
        .with_timezone(&tz)
        .naive_local();
    let skipped = (local - before).num_seconds() - 1;
    if skipped <= 0 {
        return false;
    }
    // Match on wall-clock fields only: read the skipped local times as if they were UTC.
    (1..=skipped.min(4 * 3600)).any(|s| {
        let wall = before + chrono::Duration::seconds(s);
        cron.is_time_matching(&Utc.from_utc_datetime(&wall))
            .unwrap_or(false)
    })
}

/// The result of planning one loop at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The new watermark: every slot up to it is decided by this plan.
    pub watermark: DateTime<Utc>,
    pub runs: Vec<PlannedRun>,
    pub missed: Option<Missed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRun {
    pub slot: DateTime<Utc>,
    /// Late beyond the on-time grace: this run catches up after downtime.
    pub catch_up: bool,
}

/// Slots that were decided without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// `None` when there were more than [`MAX_CATCH_UP`] (not counted further).
    pub count: Option<usize>,
    /// More than [`MAX_CATCH_UP`] slots were missed with `catch_up: all`, so none ran.
    /// (With once or skip a long downtime only leaves `count` unknown.)
    pub too_many: bool,
}

/// Parses a cron expression, naming the field that fails.
pub fn parse_cron(expr: &str) -> Result<Cron, CronProblem> {
    use std::str::FromStr;
    let trimmed = expr.trim();
    if trimmed.is_empty() {
        return Err(CronProblem {
            message: "the cron expression is empty".into(),
            help: CRON_HELP.into(),
        });
    }
    if trimmed.starts_with('@') {
        return Cron::from_str(trimmed).map_err(|e| CronProblem {
            message: format!("`{trimmed}` is not a cron expression ({e})"),
            help: "the shorthands are @yearly, @monthly, @weekly, @daily, @hourly".into(),
        });
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    let names: &[&str] = match fields.len() {
        5 => &["minute", "hour", "day of month", "month", "day of week"],
        6 => &["second", "minute", "hour", "day of month", "month", "day of week"],
        n => {
            return Err(CronProblem {
                message: format!("`{trimmed}` has {n} fields"),
                help: format!(
                    "a cron expression has 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first; {CRON_HELP}"
                ),
            })
        }
    };
    match Cron::from_str(trimmed) {
        Ok(c) => {
            // Patterns like "0 0 30 2 *" parse but never fire; say so now, not never.
            let probe = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
            if let Some(p) = probe {
                if c.find_next_occurrence(&p, false).is_err() {
                    return Err(CronProblem {
                        message: format!("`{trimmed}` never fires"),
                        help: "check the day of month against the month (e.g. 30 2 is 30 February)"
                            .into(),
                    });
                }
            }
            Ok(c)
        }
        Err(e) => {
            // Find the first field that fails on its own, everything else a wildcard.
            for (i, name) in names.iter().enumerate() {
                let probe: Vec<&str> = (0..fields.len())
                    .map(|j| if j == i { fields[j] } else { "*" })
                    .collect();
                if Cron::from_str(&probe.join(" ")).is_err() {
                    return Err(CronProblem {
                        message: format!(
                            "the {name} field `{}` of `{trimmed}` is not valid",
                            fields[i]
                        ),
                        help: format!("{}; {CRON_HELP}", field_range(name)),
                    });
                }
            }
            Err(CronProblem {
                message: format!("`{trimmed}` is not a valid cron expression ({e})"),
                help: CRON_HELP.into(),
            })
        }
    }
}

const CRON_HELP: &str =
    "e.g. \"30 9 * * 1-5\" is 09:30 on weekdays; check it with `loops next LOOP`";

fn field_range(name: &str) -> &'static str {
    match name {
        "second" | "minute" => "it takes 0-59, lists (1,2), ranges (1-5), steps (*/15)",
        "hour" => "it takes 0-23, lists, ranges and steps",
        "day of month" => "it takes 1-31, L (last day) or W (nearest weekday)",
        "month" => "it takes 1-12 or JAN-DEC",
        _ => "it takes 0-7 (0 and 7 are Sunday) or SUN-SAT, # (nth weekday) and L",
    }
}

/// A cron expression problem, with what would be right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronProblem {
    pub message: String,
    pub help: String,
}
