//! Schedules: a timezone, a cron expression (or `at:` time) and a duration, through the
//! parsers config.yaml goes through, then the fire times the scheduler would compute from
//! instants next to daylight-saving changes.
//!
//! The input is text of up to three lines, `timezone`, `cron expression or at-time`,
//! `duration`; its first byte picks the instant to search from and the jitter offset.
//!
//! Invariants: no panic; a duration prints back as the same duration; for every schedule,
//! `next_slot_after(t) > t`, `last_slot_at_or_before(t) <= t` with no slot between the two,
//! upcoming fire times strictly increase, and a plan never runs a slot twice or a slot
//! outside the window it was asked about.

#![no_main]

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use libfuzzer_sys::fuzz_target;
use loops_core::domain::parse_at;
use loops_core::duration::{format_duration, parse_duration};
use loops_core::schedule::{parse_cron, CatchUp, Schedule, TzSource, When};
use loops_core::workspace::parse_timezone;
use std::time::Duration;

/// Instants a minute before daylight-saving changes (and one on a quiet day): the United
/// States and Europe, spring and autumn; Lord Howe Island moves by half an hour; Chile's
/// changes fall at midnight.
const FROM: &[(i32, u32, u32, u32, u32)] = &[
    (2026, 3, 8, 6, 59),
    (2026, 11, 1, 5, 59),
    (2026, 3, 29, 0, 59),
    (2026, 10, 25, 0, 59),
    (2026, 4, 4, 14, 59),
    (2026, 9, 6, 3, 59),
    (2026, 6, 15, 12, 0),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // config.yaml is UTF-8 text before any of these parsers see it.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let tz_name = lines.next().unwrap_or_default();
    let expr = lines.next().unwrap_or_default();
    let dur_text = lines.next().unwrap_or_default();

    let tz = parse_timezone(tz_name).unwrap_or(Tz::UTC);
    let (y, mo, d, h, mi) = FROM[usize::from(pick) % FROM.len()];
    let Some(from) = Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single() else {
        return;
    };
    let jitter = Duration::from_millis(u64::from(pick) * 7919);

    if let Ok(cron) = parse_cron(expr) {
        check(
            &schedule(
                When::Cron {
                    expr: expr.trim().to_string(),
                    cron: Box::new(cron),
                },
                tz,
                jitter,
            ),
            from,
        );
    }
    if let Some(at) = parse_at(expr, tz) {
        check(&schedule(When::At(at), tz, jitter), from);
    }
    if let Ok(d) = parse_duration(dur_text) {
        let shown = format_duration(d);
        assert_eq!(
            parse_duration(&shown),
            Ok(d),
            "{dur_text:?} prints as {shown:?}"
        );
        // parse_schedule refuses an interval shorter than a second, and a jitter as long.
        if d >= Duration::from_secs(1) {
            check(&schedule(When::Every(d), tz, jitter.min(d / 2)), from);
        }
    }
});

fn schedule(when: When, tz: Tz, jitter: Duration) -> Schedule {
    let offset = loops_core::schedule::jitter_offset("fuzz-loop", jitter);
    Schedule {
        starting_deadline: Schedule::default_deadline(&when),
        adaptive: None,
        when,
        tz,
        tz_source: TzSource::Loop,
        jitter,
        offset,
        catch_up: CatchUp::All,
    }
}

fn check(s: &Schedule, from: DateTime<Utc>) {
    let _ = s.describe();
    if let Some(next) = s.next_slot_after(from) {
        assert!(
            next > from,
            "{}: next slot {next} after {from}",
            s.describe()
        );
    }
    if let Some(last) = s.last_slot_at_or_before(from) {
        assert!(last <= from, "{}: last slot {last} at {from}", s.describe());
        // The backward search agrees with the forward one: nothing fires in between.
        if let Some(after) = s.next_slot_after(last) {
            assert!(
                after > from,
                "{}: slot {after} lies between the last slot {last} and {from}",
                s.describe()
            );
        }
    }
    let up = s.upcoming(from, 4);
    assert!(
        up.windows(2).all(|w| w[0] < w[1]),
        "{}: upcoming {up:?}",
        s.describe()
    );

    for catch_up in [CatchUp::Once, CatchUp::Skip, CatchUp::All] {
        let s = Schedule {
            catch_up,
            ..s.clone()
        };
        // A daemon down for three days comes back at `from`.
        let watermark = from - chrono::Duration::days(3);
        let plan = s.plan(watermark, from);
        assert!(plan.watermark >= watermark, "{plan:?}");
        let mut slots: Vec<_> = plan.runs.iter().map(|r| r.slot).collect();
        assert!(
            slots.iter().all(|&t| t > watermark && t <= from),
            "{}: {plan:?}",
            s.describe()
        );
        slots.dedup();
        assert_eq!(
            slots.len(),
            plan.runs.len(),
            "a slot planned twice: {plan:?}"
        );
        // Planning again at the same instant from the new watermark runs nothing more.
        let again = s.plan(plan.watermark, from);
        assert!(
            again.runs.is_empty(),
            "{}: {plan:?} then {again:?}",
            s.describe()
        );
    }
}
