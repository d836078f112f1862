//! Schedules and the scheduler, driven by a manual clock: next fire times, DST changes in
//! New York and London, stable jitter, catch-up after downtime, restarts, retries and
//! pausing. Every run the tests hand out is checked against a model computed here.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::America::New_York;
use chrono_tz::Europe::London;
use chrono_tz::Tz;
use loops::engine::run_context::Trigger;
use loops::engine::scheduler::{Aftermath, DueRun, Scheduler};
use loops_core::clock::{Clock, ManualClock};
use loops_core::domain::{discover, LoopDef};
use loops_core::runs::{Outcome, RunLog, RunRecord};
use loops_core::schedule::{jitter_offset, CatchUp, Schedule, When, MAX_CATCH_UP};
use loops_core::state::StateStore;
use loops_core::workspace::Workspace;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

const STAGGER: Duration = Duration::from_secs(2);
const PAUSE_AFTER: u32 = 5;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn mins(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

fn hours(n: i64) -> chrono::Duration {
    chrono::Duration::hours(n)
}

/// A workspace on disk with some loops, parsed through the real config reader.
struct Lab {
    dir: tempfile::TempDir,
    defs: Vec<LoopDef>,
}

impl Lab {
    fn new(loops: &[(&str, &str)]) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("loops.yaml"), "timezone: UTC\n").expect("loops.yaml");
        let mut lab = Lab {
            dir,
            defs: Vec::new(),
        };
        for (name, cfg) in loops {
            lab.write(name, cfg);
        }
        lab.reload();
        lab
    }

    fn write(&self, name: &str, cfg: &str) {
        let d = self.dir.path().join("domains").join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("config.yaml"), cfg).expect("config.yaml");
    }

    fn ws(&self) -> Workspace {
        Workspace::open(self.dir.path()).expect("open workspace")
    }

    fn reload(&mut self) {
        let entries = discover(&self.ws());
        self.defs = entries
            .into_iter()
            .map(|e| {
                // Warnings are judged by the real clock (an `at:` that has passed), the
                // lab runs on its own.
                assert!(
                    e.errors().next().is_none(),
                    "{}: {:?}",
                    e.name,
                    e.diagnostics
                );
                e.def.expect("valid loop")
            })
            .collect();
    }

    fn def(&self, name: &str) -> &LoopDef {
        self.defs
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no loop {name}"))
    }

    fn runlog(&self) -> RunLog {
        RunLog::new(&self.ws().layout().runs_dir(), 10 * 1024 * 1024)
    }

    /// A scheduler over this workspace's state and run folders (a fresh one is a restart).
    fn scheduler(&self, clock: &ManualClock) -> Scheduler {
        let ws = self.ws();
        let mut s = Scheduler::new(
            Arc::new(clock.clone()),
            StateStore::new(&ws.layout().state_dir()),
            self.runlog(),
            STAGGER,
            PAUSE_AFTER,
        );
        s.set_loops(self.defs.clone());
        s
    }

    /// Every record in `.loops/runs/<loop>.jsonl`, read from the file itself.
    fn records(&self, name: &str) -> Vec<RunRecord> {
        let path = self.ws().layout().runs_dir().join(format!("{name}.jsonl"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    /// `.loops/state/<loop>.json` as JSON.
    fn state(&self, name: &str) -> serde_json::Value {
        let path = self.ws().layout().state_dir().join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).expect("state file");
        serde_json::from_str(&text).expect("state JSON")
    }
}

/// A schedule parsed from a `schedule:` block, for a loop named `name`.
fn schedule(name: &str, block: &str) -> Schedule {
    let lab = Lab::new(&[(
        name,
        &format!("schedule:\n{block}payload:\n  command: [\"true\"]\n"),
    )]);
    lab.def(name).schedule.clone()
}

fn loop_cfg(schedule_block: &str, extra: &str) -> String {
    format!("schedule:\n{schedule_block}payload:\n  command: [\"true\"]\n{extra}")
}

/// Finishes a handed-out run: a record in the run log, then `Scheduler::finished`.
fn complete(
    lab: &Lab,
    sched: &mut Scheduler,
    clock: &ManualClock,
    run: &DueRun,
    outcome: Outcome,
) -> Aftermath {
    let now = clock.now();
    let mut rec = RunRecord::decision(
        &run.loop_name,
        run.trigger.as_str(),
        run.slot,
        run.not_before.max(now),
        outcome,
        String::new(),
    );
    rec.note = None;
    rec.attempt = run.attempt;
    if outcome.is_failure() {
        rec.exit_code = Some(1);
        rec.error = Some("exit status 1".into());
    }
    lab.runlog().append(&rec).expect("append run record");
    let def = lab.def(&run.loop_name).clone();
    sched.finished(&def, &rec, true)
}

// ---- next fire times ------------------------------------------------------------------

#[test]
fn every_slots_are_aligned_to_the_epoch() {
    let s = schedule("tenner", "  every: 10m\n");
    let t = utc("2026-01-01T10:03:17Z");
    assert_eq!(s.next_slot_after(t), Some(utc("2026-01-01T10:10:00Z")));
    assert_eq!(
        s.next_slot_after(utc("2026-01-01T10:10:00Z")),
        Some(utc("2026-01-01T10:20:00Z")),
        "strictly after"
    );
    assert_eq!(
        s.upcoming(t, 3),
        vec![
            utc("2026-01-01T10:10:00Z"),
            utc("2026-01-01T10:20:00Z"),
            utc("2026-01-01T10:30:00Z")
        ]
    );

    // An interval that does not divide an hour is still aligned to the epoch, not to
    // the moment the runner started, so a restart does not move it.
    let s = schedule("seven", "  every: 7m\n");
    let up = s.upcoming(utc("2026-05-05T05:05:05Z"), 50);
    assert_eq!(up.len(), 50);
    for w in up.windows(2) {
        assert_eq!((w[1] - w[0]).num_seconds(), 420);
    }
    assert!(up.iter().all(|t| t.timestamp() % 420 == 0), "{up:?}");
    let later = s.upcoming(up[10] - chrono::Duration::seconds(1), 5);
    assert_eq!(
        later,
        up[10..15].to_vec(),
        "same slots from any starting point"
    );
}

#[test]
fn jitter_is_a_stable_offset_inside_the_window() {
    let window = Duration::from_secs(300);
    for name in ["hourly", "morning-briefing", "channel-monitor", "a", "zz"] {
        let off = jitter_offset(name, window);
        assert_eq!(off, jitter_offset(name, window), "stable for {name}");
        assert!(off < window, "{name}: {off:?} not inside {window:?}");
    }
    assert_eq!(jitter_offset("anything", Duration::ZERO), Duration::ZERO);
    let distinct: BTreeSet<Duration> = (0..50)
        .map(|i| jitter_offset(&format!("loop-{i}"), window))
        .collect();
    assert!(
        distinct.len() > 40,
        "offsets spread loops out: {distinct:?}"
    );

    // Parsed from config.yaml: the same offset, and every fire time is slot + offset.
    let s = schedule("hourly", "  every: 1h\n  jitter: 5m\n");
    let off = jitter_offset("hourly", window);
    assert_eq!(s.offset, off);
    assert_eq!(s.jitter, window);
    let again = schedule("hourly", "  every: 1h\n  jitter: 5m\n");
    assert_eq!(again.offset, off, "the same on a new parse (another run)");
    let slot = utc("2026-02-02T10:00:00Z");
    let off_c = chrono::Duration::milliseconds(off.as_millis() as i64);
    assert_eq!(s.fire_time(slot), slot + off_c);
    // Just before this slot's fire time, the next fire time is this slot's.
    let just_before = slot + off_c - chrono::Duration::milliseconds(1);
    assert_eq!(
        s.upcoming(just_before, 2),
        vec![slot + off_c, slot + hours(1) + off_c]
    );
    assert_eq!(s.upcoming(slot + off_c, 1), vec![slot + hours(1) + off_c]);
}

#[test]
fn cron_in_new_york_is_converted_to_utc_for_the_season() {
    let s = schedule(
        "nine",
        "  cron: \"0 9 * * *\"\n  timezone: America/New_York\n",
    );
    assert_eq!(s.tz, New_York);
    // Winter: EST, UTC-5.
    assert_eq!(
        s.next_slot_after(utc("2026-01-15T00:00:00Z")),
        Some(utc("2026-01-15T14:00:00Z"))
    );
    // Summer: EDT, UTC-4.
    assert_eq!(
        s.next_slot_after(utc("2026-07-15T00:00:00Z")),
        Some(utc("2026-07-15T13:00:00Z"))
    );
    // Across the spring change (2026-03-08) the UTC time moves by an hour.
    assert_eq!(
        s.upcoming(utc("2026-03-06T00:00:00Z"), 4),
        vec![
            utc("2026-03-06T14:00:00Z"),
            utc("2026-03-07T14:00:00Z"),
            utc("2026-03-08T13:00:00Z"),
            utc("2026-03-09T13:00:00Z"),
        ]
    );
    // And back in the autumn (2026-11-01).
    assert_eq!(
        s.upcoming(utc("2026-10-31T00:00:00Z"), 3),
        vec![
            utc("2026-10-31T13:00:00Z"),
            utc("2026-11-01T14:00:00Z"),
            utc("2026-11-02T14:00:00Z"),
        ]
    );

    // Weekdays only.
    let s = schedule(
        "weekdays",
        "  cron: \"30 9 * * 1-5\"\n  timezone: America/New_York\n",
    );
    let up = s.upcoming(utc("2026-01-02T15:00:00Z"), 5); // a Friday, after 09:30 EST
    let days: Vec<Weekday> = up
        .iter()
        .map(|t| t.with_timezone(&New_York).weekday())
        .collect();
    assert_eq!(
        days,
        [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri
        ]
    );
    assert!(up
        .iter()
        .all(|t| t.with_timezone(&New_York).hour() == 9 && t.minute() == 30));

    // A cron with no timezone reads it in the workspace zone (UTC here).
    let s = schedule("utc", "  cron: \"15 6 * * *\"\n");
    assert_eq!(s.tz, chrono_tz::UTC);
    assert_eq!(
        s.next_slot_after(utc("2026-04-01T07:00:00Z")),
        Some(utc("2026-04-02T06:15:00Z"))
    );
}

#[test]
fn at_fires_once_and_never_in_the_past() {
    let s = schedule("oneshot", "  at: 2026-12-01T09:00:00Z\n");
    let at = utc("2026-12-01T09:00:00Z");
    assert_eq!(s.next_slot_after(utc("2026-11-01T00:00:00Z")), Some(at));
    assert_eq!(s.upcoming(utc("2026-11-01T00:00:00Z"), 5), vec![at]);
    assert_eq!(s.next_slot_after(at), None);
    assert!(s.upcoming(utc("2026-12-02T00:00:00Z"), 5).is_empty());

    // A local date-time is read in the loop's zone.
    let s = schedule(
        "local",
        "  at: 2026-12-01T09:00:00\n  timezone: America/New_York\n",
    );
    assert!(matches!(s.when, When::At(t) if t == utc("2026-12-01T14:00:00Z")));

    // A loop whose `at` is already past when the runner first sees it never runs.
    let lab = Lab::new(&[(
        "past",
        &loop_cfg("  at: 2026-01-01T09:00:00Z\n  catch_up: all\n", ""),
    )]);
    let clock = ManualClock::new(utc("2026-03-01T00:00:00Z"));
    let mut sched = lab.scheduler(&clock);
    assert_eq!(sched.next_wake(), None);
    assert!(sched.due().is_empty());
    clock.advance(hours(24 * 400));
    assert!(sched.due().is_empty());
    assert!(lab.records("past").is_empty());

    // One in the future runs exactly once.
    let lab = Lab::new(&[("future", &loop_cfg("  at: 2026-03-02T12:00:00Z\n", ""))]);
    let clock = ManualClock::new(utc("2026-03-01T00:00:00Z"));
    let mut sched = lab.scheduler(&clock);
    assert_eq!(sched.next_wake(), Some(utc("2026-03-02T12:00:00Z")));
    clock.set(utc("2026-03-02T12:00:00Z"));
    let runs = sched.due();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].slot, Some(utc("2026-03-02T12:00:00Z")));
    assert_eq!(runs[0].trigger, Trigger::Schedule);
    complete(&lab, &mut sched, &clock, &runs[0], Outcome::Acted);
    assert_eq!(sched.next_wake(), None);
    clock.advance(hours(48));
    assert!(
        lab.scheduler(&clock).due().is_empty(),
        "not again after a restart"
    );
}

// ---- DST ------------------------------------------------------------------------------

/// Fire times of `s` from `from` to `to`, grouped by calendar day in `tz`.
fn fires_by_local_day(
    s: &Schedule,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> BTreeMap<NaiveDate, Vec<DateTime<Tz>>> {
    let mut out: BTreeMap<NaiveDate, Vec<DateTime<Tz>>> = BTreeMap::new();
    for t in s.upcoming(from, 1000).into_iter().take_while(|t| *t < to) {
        let local = t.with_timezone(&tz);
        out.entry(local.date_naive()).or_default().push(local);
    }
    out
}

/// Drives a scheduler over one loop from `from` to `to`, restarting it after every run,
/// and returns the slots handed out. Fails on a slot handed out twice or a wake-up
/// that finds nothing due.
fn drive(lab: &Lab, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let clock = ManualClock::new(from);
    let mut sched = lab.scheduler(&clock);
    let mut slots = Vec::new();
    for _ in 0..1000 {
        let Some(wake) = sched.next_wake() else { break };
        if wake >= to {
            break;
        }
        assert!(wake >= clock.now(), "wake {wake} is in the past");
        clock.set(wake);
        let runs = sched.due();
        assert!(!runs.is_empty(), "woke at {wake} and nothing was due");
        for r in &runs {
            let slot = r.slot.expect("scheduled runs have a slot");
            assert!(
                !slots.contains(&slot),
                "slot {slot} handed out twice (now {wake}): {runs:?}"
            );
            slots.push(slot);
            complete(lab, &mut sched, &clock, r, Outcome::Acted);
        }
        sched = lab.scheduler(&clock);
        assert!(
            sched.due().is_empty(),
            "a restart at {wake} found work again"
        );
    }
    slots
}

fn assert_once_per_day(
    what: &str,
    by_day: &BTreeMap<NaiveDate, Vec<DateTime<Tz>>>,
    first: NaiveDate,
    last: NaiveDate,
) {
    let mut d = first;
    while d <= last {
        let n = by_day.get(&d).map_or(0, Vec::len);
        assert_eq!(n, 1, "{what}: {d} has {n} runs: {:?}", by_day.get(&d));
        d = d.succ_opt().expect("next day");
    }
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("date")
}

#[test]
fn dst_new_york_spring_forward_runs_once_on_the_short_day() {
    // 2026-03-08 02:00 EST becomes 03:00 EDT: 02:30 does not exist that day.
    let cfg = loop_cfg("  cron: \"30 2 * * *\"\n  timezone: America/New_York\n", "");
    let lab = Lab::new(&[("gap", &cfg)]);
    let s = lab.def("gap").schedule.clone();
    let (from, to) = (utc("2026-03-05T12:00:00Z"), utc("2026-03-11T12:00:00Z"));
    let by_day = fires_by_local_day(&s, New_York, from, to);
    assert_once_per_day("upcoming", &by_day, day(2026, 3, 6), day(2026, 3, 11));
    let on_the_day = by_day[&day(2026, 3, 8)][0];
    // croner runs a fixed-time job that falls in the gap at the first instant after it.
    assert_eq!(on_the_day.hour(), 3, "{on_the_day}");
    assert!(on_the_day.minute() <= 30, "{on_the_day}");
    assert_eq!(
        by_day[&day(2026, 3, 7)][0].to_utc(),
        utc("2026-03-07T07:30:00Z")
    );
    assert_eq!(
        by_day[&day(2026, 3, 9)][0].to_utc(),
        utc("2026-03-09T06:30:00Z")
    );

    // The scheduler hands out each of those slots exactly once, restart after restart.
    let slots = drive(&lab, from, to);
    let mut by_day: BTreeMap<NaiveDate, Vec<DateTime<Tz>>> = BTreeMap::new();
    for t in &slots {
        let l = t.with_timezone(&New_York);
        by_day.entry(l.date_naive()).or_default().push(l);
    }
    assert_once_per_day("scheduler", &by_day, day(2026, 3, 6), day(2026, 3, 11));
    assert_eq!(slots, s.upcoming(from, 6));
}

#[test]
fn dst_new_york_fall_back_runs_once_on_the_long_day() {
    // 2026-11-01 02:00 EDT becomes 01:00 EST: 01:30 happens twice that night.
    let cfg = loop_cfg("  cron: \"30 1 * * *\"\n  timezone: America/New_York\n", "");
    let lab = Lab::new(&[("overlap", &cfg)]);
    let s = lab.def("overlap").schedule.clone();
    let (from, to) = (utc("2026-10-29T12:00:00Z"), utc("2026-11-04T12:00:00Z"));
    let by_day = fires_by_local_day(&s, New_York, from, to);
    assert_once_per_day("upcoming", &by_day, day(2026, 10, 30), day(2026, 11, 4));
    // The first of the two 01:30s (EDT).
    assert_eq!(
        by_day[&day(2026, 11, 1)][0].to_utc(),
        utc("2026-11-01T05:30:00Z")
    );
    assert_eq!(
        by_day[&day(2026, 11, 2)][0].to_utc(),
        utc("2026-11-02T06:30:00Z")
    );

    let slots = drive(&lab, from, to);
    assert_eq!(slots, s.upcoming(from, 6));

    // Woken inside the repeated hour (between the two 01:30s), the scheduler owes
    // nothing more: the day's run is done and yesterday's is not replayed.
    let lab = Lab::new(&[("overlap", &cfg)]);
    let clock = ManualClock::new(utc("2026-10-31T12:00:00Z"));
    let mut sched = lab.scheduler(&clock);
    clock.set(utc("2026-11-01T05:30:00Z"));
    let runs = sched.due();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].slot, Some(utc("2026-11-01T05:30:00Z")));
    complete(&lab, &mut sched, &clock, &runs[0], Outcome::Acted);
    for t in [
        "2026-11-01T06:10:00Z",
        "2026-11-01T06:30:00Z",
        "2026-11-01T06:45:00Z",
    ] {
        clock.set(utc(t));
        assert!(sched.due().is_empty(), "{t}: {:?}", sched.due());
        assert!(
            lab.scheduler(&clock).due().is_empty(),
            "{t} after a restart"
        );
    }
    assert_eq!(sched.next_wake(), Some(utc("2026-11-02T06:30:00Z")));
}

#[test]
fn dst_new_york_down_across_the_gap_catches_up_once() {
    // Down from before the gap until after it: the day's slot is caught up once.
    let cfg = loop_cfg("  cron: \"30 2 * * *\"\n  timezone: America/New_York\n", "");
    let lab = Lab::new(&[("gap", &cfg)]);
    let clock = ManualClock::new(utc("2026-03-07T12:00:00Z"));
    lab.scheduler(&clock);
    let mut handed = Vec::new();
    for t in [
        "2026-03-08T07:00:30Z",
        "2026-03-08T07:20:00Z",
        "2026-03-08T07:45:00Z",
        "2026-03-08T12:00:00Z",
    ] {
        clock.set(utc(t));
        let mut sched = lab.scheduler(&clock);
        for r in sched.due() {
            handed.push(r.slot.expect("slot"));
            complete(&lab, &mut sched, &clock, &r, Outcome::Acted);
        }
    }
    assert_eq!(handed.len(), 1, "{handed:?}");
    assert_eq!(
        handed[0].with_timezone(&New_York).date_naive(),
        day(2026, 3, 8)
    );
}

#[test]
fn dst_new_york_back_inside_the_repeated_hour_catches_up_today() {
    // Down over the first 01:30 (EDT, 05:30Z), back during the repeated hour (01:10
    // EST, 06:10Z): today's slot is caught up once, yesterday's is not touched again.
    let cfg = loop_cfg("  cron: \"30 1 * * *\"\n  timezone: America/New_York\n", "");
    let lab = Lab::new(&[("overlap", &cfg)]);
    let clock = ManualClock::new(utc("2026-10-31T05:00:00Z"));
    let mut sched = lab.scheduler(&clock);
    clock.set(utc("2026-10-31T05:30:00Z"));
    let runs = sched.due();
    assert_eq!(runs.len(), 1);
    complete(&lab, &mut sched, &clock, &runs[0], Outcome::Acted);

    let mut handed = Vec::new();
    for t in [
        "2026-11-01T06:10:00Z",
        "2026-11-01T06:20:00Z",
        "2026-11-01T06:40:00Z",
        "2026-11-01T12:00:00Z",
    ] {
        clock.set(utc(t));
        let mut sched = lab.scheduler(&clock);
        for _ in 0..3 {
            for r in sched.due() {
                handed.push((r.slot.expect("slot"), r.trigger));
                complete(&lab, &mut sched, &clock, &r, Outcome::Acted);
            }
        }
    }
    assert_eq!(
        handed,
        vec![(utc("2026-11-01T05:30:00Z"), Trigger::CatchUp)],
        "today's slot once"
    );
    assert!(
        lab.records("overlap")
            .iter()
            .all(|r| r.outcome == Outcome::Acted),
        "nothing recorded as missed"
    );
}

#[test]
fn dst_london_spring_and_autumn() {
    let cfg = loop_cfg("  cron: \"30 1 * * *\"\n  timezone: Europe/London\n", "");
    let lab = Lab::new(&[("london", &cfg)]);
    let s = lab.def("london").schedule.clone();

    // 2026-03-29 01:00 GMT becomes 02:00 BST: 01:30 does not exist.
    let (from, to) = (utc("2026-03-26T12:00:00Z"), utc("2026-04-01T12:00:00Z"));
    let by_day = fires_by_local_day(&s, London, from, to);
    assert_once_per_day("spring", &by_day, day(2026, 3, 27), day(2026, 4, 1));
    assert_eq!(
        by_day[&day(2026, 3, 28)][0].to_utc(),
        utc("2026-03-28T01:30:00Z")
    );
    let short = by_day[&day(2026, 3, 29)][0];
    assert_eq!(short.hour(), 2, "{short}");
    assert_eq!(
        by_day[&day(2026, 3, 30)][0].to_utc(),
        utc("2026-03-30T00:30:00Z")
    );
    assert_eq!(drive(&lab, from, to), s.upcoming(from, 6));

    // 2026-10-25 02:00 BST becomes 01:00 GMT: 01:30 happens twice; it runs at the first.
    let lab = Lab::new(&[("london", &cfg)]);
    let (from, to) = (utc("2026-10-22T12:00:00Z"), utc("2026-10-28T12:00:00Z"));
    let by_day = fires_by_local_day(&s, London, from, to);
    assert_once_per_day("autumn", &by_day, day(2026, 10, 23), day(2026, 10, 28));
    assert_eq!(
        by_day[&day(2026, 10, 25)][0].to_utc(),
        utc("2026-10-25T00:30:00Z")
    );
    assert_eq!(
        by_day[&day(2026, 10, 26)][0].to_utc(),
        utc("2026-10-26T01:30:00Z")
    );
    assert_eq!(drive(&lab, from, to), s.upcoming(from, 6));

    // The daily 09:00 London job moves between 08:00Z (BST) and 09:00Z (GMT).
    let nine = schedule("nine", "  cron: \"0 9 * * *\"\n  timezone: Europe/London\n");
    assert_eq!(
        nine.upcoming(utc("2026-03-28T00:00:00Z"), 2),
        vec![utc("2026-03-28T09:00:00Z"), utc("2026-03-29T08:00:00Z")]
    );
    assert_eq!(
        nine.upcoming(utc("2026-10-24T00:00:00Z"), 2),
        vec![utc("2026-10-24T08:00:00Z"), utc("2026-10-25T09:00:00Z")]
    );
}

// ---- a simulated week -----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Handed {
    loop_name: String,
    slot: DateTime<Utc>,
    trigger: &'static str,
}

/// One wake-up of the simulated runner: takes what is due, checks it and completes it.
fn run_batch(
    lab: &Lab,
    sched: &mut Scheduler,
    clock: &ManualClock,
    handed: &mut Vec<Handed>,
) -> usize {
    let now = clock.now();
    let runs = sched.due();
    let mut catch_ups = 0;
    for r in &runs {
        let slot = r.slot.expect("slot");
        assert!(
            !handed
                .iter()
                .any(|x| x.loop_name == r.loop_name && x.slot == slot),
            "{} slot {slot} handed out twice (now {now})",
            r.loop_name
        );
        assert_eq!(r.attempt, 1);
        if r.trigger == Trigger::CatchUp {
            // Caught-up runs, across loops, are spaced by the stagger interval.
            let want = now + chrono::Duration::seconds(2 * catch_ups);
            assert_eq!(r.not_before, want, "{r:?}");
            catch_ups += 1;
        } else {
            assert_eq!(r.trigger, Trigger::Schedule, "{r:?}");
            assert_eq!(r.not_before, now);
        }
        handed.push(Handed {
            loop_name: r.loop_name.clone(),
            slot,
            trigger: r.trigger.as_str(),
        });
        complete(lab, sched, clock, r, Outcome::Acted);
    }
    runs.len()
}

#[test]
fn simulated_week_with_restarts_and_downtime() {
    let lab = Lab::new(&[
        ("quarter", &loop_cfg("  every: 15m\n", "")),
        (
            "morning",
            &loop_cfg(
                "  cron: \"0 9 * * 1-5\"\n  timezone: America/New_York\n",
                "",
            ),
        ),
        ("hourly", &loop_cfg("  every: 1h\n  jitter: 5m\n", "")),
    ]);
    let start = utc("2026-03-02T00:00:00Z"); // a Monday; US DST starts on Sunday 8 March
    let end = utc("2026-03-10T00:00:00Z");
    // (down at, up again at): fire times in (down, up] pass while the runner is down.
    let downtimes = [
        // 2h30 over Tuesday's 09:00 EST (14:00Z): older than its 1h deadline when back.
        (utc("2026-03-03T13:37:00Z"), utc("2026-03-03T16:07:00Z")),
        // 30m over Thursday's 09:00: back within the deadline, so it is caught up.
        (utc("2026-03-05T13:50:00Z"), utc("2026-03-05T14:20:00Z")),
        // 30h over the weekend, back just after the DST change.
        (utc("2026-03-06T20:10:00Z"), utc("2026-03-08T02:10:00Z")),
        // 40m over Monday's 09:00 EDT (13:00Z).
        (utc("2026-03-09T12:50:00Z"), utc("2026-03-09T13:30:00Z")),
    ];

    let clock = ManualClock::new(start);
    let mut sched = lab.scheduler(&clock);
    let mut last_restart = start;
    let mut restarts = 0;
    let mut handed: Vec<Handed> = Vec::new();
    let mut downs = downtimes.iter().peekable();
    let mut wakes = 0;

    loop {
        let wake = sched
            .next_wake()
            .expect("these loops always have a next run");
        assert!(wake >= clock.now());
        if let Some((down, up)) = downs.peek().copied() {
            if *down < wake {
                // The runner stops; time passes; a new process starts over the same files.
                clock.set(*up);
                sched = lab.scheduler(&clock);
                last_restart = *up;
                downs.next();
                run_batch(&lab, &mut sched, &clock, &mut handed);
                continue;
            }
        }
        if wake >= end {
            break;
        }
        if wake - last_restart >= hours(5) {
            // A restart without downtime: nothing is owed, nothing is run again.
            sched = lab.scheduler(&clock);
            last_restart = clock.now();
            restarts += 1;
            assert!(
                sched.due().is_empty(),
                "a restart at {} re-ran work",
                clock.now()
            );
            assert_eq!(
                sched.next_wake(),
                Some(wake),
                "a restart keeps the next wake"
            );
            continue;
        }
        clock.set(wake);
        wakes += 1;
        let n = run_batch(&lab, &mut sched, &clock, &mut handed);
        assert!(n > 0, "woke at {wake} and nothing was due");
    }
    assert!(restarts >= 20, "{restarts} restarts");
    assert!(wakes > 500, "{wakes} wakes");

    // ---- the model ----
    let in_downtime = |fire: DateTime<Utc>| {
        downtimes
            .iter()
            .position(|(down, up)| fire > *down && fire <= *up)
    };
    let mut slots: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
    let mut t = start + mins(15);
    while t < end {
        slots.entry("quarter").or_default().push(t);
        t += mins(15);
    }
    let mut t = start + hours(1);
    while t < end {
        slots.entry("hourly").or_default().push(t);
        t += hours(1);
    }
    let mut d = start.date_naive();
    while d < end.date_naive() {
        if d.weekday().num_days_from_monday() < 5 {
            let nine = New_York
                .from_local_datetime(&d.and_hms_opt(9, 0, 0).expect("09:00"))
                .single()
                .expect("09:00 exists")
                .to_utc();
            slots.entry("morning").or_default().push(nine);
        }
        d = d.succ_opt().expect("next day");
    }
    assert_eq!(slots["morning"].len(), 6);
    assert_eq!(slots["morning"][5], utc("2026-03-09T13:00:00Z"), "EDT");

    let mut expected: Vec<Handed> = Vec::new();
    // (last missed slot, how many; `None` when more than MAX_CATCH_UP, not counted)
    type MissedRec = (DateTime<Utc>, Option<usize>);
    let mut expected_missed: BTreeMap<&str, Vec<MissedRec>> = BTreeMap::new();
    let mut uncounted: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, list) in &slots {
        let def = lab.def(name);
        assert_eq!(def.schedule.catch_up, CatchUp::Once);
        let off = chrono::Duration::milliseconds(def.schedule.offset.as_millis() as i64);
        let deadline = chrono::Duration::from_std(def.schedule.starting_deadline).expect("d");
        let mut windows: BTreeMap<usize, Vec<DateTime<Utc>>> = BTreeMap::new();
        for s in list {
            let fire = *s + off;
            if fire >= end {
                continue;
            }
            match in_downtime(fire) {
                None => expected.push(Handed {
                    loop_name: name.to_string(),
                    slot: *s,
                    trigger: "schedule",
                }),
                Some(w) => windows.entry(w).or_default().push(*s),
            }
        }
        for (w, missed) in windows {
            let up = downtimes[w].1;
            let last = *missed.last().expect("a slot");
            let lateness = up - (last + off);
            let mut not_run = missed.clone();
            if lateness <= deadline {
                // catch_up: once runs the latest slot; the rest are recorded as missed.
                not_run.pop();
                expected.push(Handed {
                    loop_name: name.to_string(),
                    slot: last,
                    trigger: if lateness > chrono::Duration::seconds(60) {
                        "catch-up"
                    } else {
                        "schedule"
                    },
                });
            }
            if let Some(l) = not_run.last() {
                let count = (missed.len() <= MAX_CATCH_UP).then_some(not_run.len());
                if count.is_none() {
                    *uncounted.entry(name).or_default() += not_run.len();
                }
                expected_missed.entry(name).or_default().push((*l, count));
            }
        }
    }
    let mut got = handed.clone();
    got.sort();
    expected.sort();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);

    // The model's claims about the downtimes, spelled out.
    let has = |name: &str, slot: &str, trig: &str| {
        handed
            .iter()
            .any(|h| h.loop_name == name && h.slot == utc(slot) && h.trigger == trig)
    };
    assert!(!handed
        .iter()
        .any(|h| h.loop_name == "morning" && h.slot == utc("2026-03-03T14:00:00Z")));
    assert!(has("morning", "2026-03-05T14:00:00Z", "catch-up"));
    assert!(has("morning", "2026-03-09T13:00:00Z", "catch-up"));
    assert!(has("quarter", "2026-03-03T16:00:00Z", "catch-up"));
    assert!(has("quarter", "2026-03-08T02:00:00Z", "catch-up"));
    assert!(has("hourly", "2026-03-08T02:00:00Z", "catch-up"));

    // What the files say: acted records, one per slot; missed records as modelled.
    for name in ["quarter", "morning", "hourly"] {
        let recs = lab.records(name);
        let acted: Vec<DateTime<Utc>> = recs
            .iter()
            .filter(|r| r.outcome == Outcome::Acted)
            .map(|r| r.slot.expect("slot"))
            .collect();
        let unique: BTreeSet<_> = acted.iter().collect();
        assert_eq!(unique.len(), acted.len(), "{name}: a slot recorded twice");
        assert_eq!(
            acted.len(),
            handed.iter().filter(|h| h.loop_name == name).count()
        );
        let missed: Vec<MissedRec> = recs
            .iter()
            .filter(|r| r.outcome == Outcome::Missed)
            .map(|r| (r.slot.expect("slot"), r.missed_count))
            .collect();
        for r in recs.iter().filter(|r| r.outcome == Outcome::Missed) {
            let note = r.note.as_deref().unwrap_or_default();
            assert!(note.contains("(catch_up: once"), "{name}: {note}");
            assert!(!note.contains("none was run"), "{name}: {note}");
            if r.missed_count.is_none() {
                assert!(note.starts_with("more than 100 slot(s) missed"), "{note}");
            }
        }
        assert_eq!(
            missed,
            expected_missed.get(name).cloned().unwrap_or_default(),
            "{name}: missed records"
        );
        // Every slot is accounted for: run or recorded as missed.
        let total = slots[name]
            .iter()
            .filter(|s| {
                **s + chrono::Duration::milliseconds(
                    lab.def(name).schedule.offset.as_millis() as i64
                ) < end
            })
            .count();
        assert_eq!(
            acted.len()
                + missed.iter().filter_map(|m| m.1).sum::<usize>()
                + uncounted.get(name).copied().unwrap_or(0),
            total,
            "{name}: every slot run or missed"
        );
        let st = lab.state(name);
        assert_eq!(st["consecutive_failures"], 0);
        assert!(st["paused"].is_null());
        let wm: DateTime<Utc> = serde_json::from_value(st["watermark"].clone()).expect("watermark");
        assert_eq!(
            Some(&wm),
            acted.iter().max(),
            "{name}: watermark is the last slot"
        );
    }
    // The weekend downtime: 30h of quarter-hours, more than can be counted; the latest
    // ran, and the record names the one before it.
    let q = &expected_missed["quarter"];
    assert!(q.contains(&(utc("2026-03-08T01:45:00Z"), None)), "{q:?}");
    assert_eq!(uncounted["quarter"], 30 * 4 - 1);
    // Hourly: 30 slots, counted.
    assert!(
        expected_missed["hourly"].contains(&(utc("2026-03-08T01:00:00Z"), Some(29))),
        "{:?}",
        expected_missed["hourly"]
    );
}

// ---- catch-up policies ------------------------------------------------------------------

/// Runs a loop on time from `start` for `up_for`, then is down until `back`; returns
/// the runs due at `back`.
fn down_and_back(
    lab: &Lab,
    start: DateTime<Utc>,
    up_for: chrono::Duration,
    back: DateTime<Utc>,
) -> (ManualClock, Scheduler, Vec<DueRun>) {
    let clock = ManualClock::new(start);
    let mut sched = lab.scheduler(&clock);
    while let Some(w) = sched.next_wake().filter(|w| *w <= start + up_for) {
        clock.set(w);
        for r in sched.due() {
            assert_eq!(r.trigger, Trigger::Schedule);
            complete(lab, &mut sched, &clock, &r, Outcome::Acted);
        }
    }
    clock.set(back);
    let mut sched = lab.scheduler(&clock);
    let runs = sched.due();
    (clock, sched, runs)
}

#[test]
fn catch_up_once_runs_the_latest_slot_within_the_deadline() {
    let lab = Lab::new(&[(
        "once",
        &loop_cfg(
            "  every: 10m\n  catch_up: once\n  starting_deadline: 30m\n",
            "",
        ),
    )]);
    let (_, _, runs) = down_and_back(
        &lab,
        utc("2026-06-01T00:00:00Z"),
        hours(1),
        utc("2026-06-01T03:05:00Z"),
    );
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].slot, Some(utc("2026-06-01T03:00:00Z")));
    assert_eq!(runs[0].trigger, Trigger::CatchUp);
    let missed: Vec<_> = lab
        .records("once")
        .into_iter()
        .filter(|r| r.outcome == Outcome::Missed)
        .collect();
    assert_eq!(missed.len(), 1);
    // 01:10 … 02:50 were missed: 11 slots.
    assert_eq!(missed[0].missed_count, Some(11));
    assert_eq!(missed[0].slot, Some(utc("2026-06-01T02:50:00Z")));
    assert_eq!(missed[0].trigger, "schedule");

    // Beyond the deadline even the latest slot is only recorded.
    let lab = Lab::new(&[(
        "late",
        &loop_cfg("  cron: \"0 9 * * *\"\n  starting_deadline: 1h\n", ""),
    )]);
    let (_, mut sched, runs) = down_and_back(
        &lab,
        utc("2026-06-01T00:00:00Z"),
        hours(1),
        utc("2026-06-01T10:30:00Z"),
    );
    assert!(runs.is_empty(), "{runs:?}");
    let recs = lab.records("late");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].outcome, Outcome::Missed);
    assert_eq!(recs[0].slot, Some(utc("2026-06-01T09:00:00Z")));
    assert_eq!(recs[0].missed_count, Some(1));
    assert_eq!(sched.next_wake(), Some(utc("2026-06-02T09:00:00Z")));
    assert!(sched.due().is_empty());
}

#[test]
fn catch_up_skip_runs_none_of_the_missed_slots() {
    let lab = Lab::new(&[("skip", &loop_cfg("  every: 10m\n  catch_up: skip\n", ""))]);
    let (clock, mut sched, runs) = down_and_back(
        &lab,
        utc("2026-06-01T00:00:00Z"),
        hours(1),
        utc("2026-06-01T04:05:00Z"),
    );
    assert!(runs.is_empty(), "{runs:?}");
    let missed: Vec<_> = lab
        .records("skip")
        .into_iter()
        .filter(|r| r.outcome == Outcome::Missed)
        .collect();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].missed_count, Some(18), "01:10 … 04:00");
    // Back on time afterwards.
    assert_eq!(sched.next_wake(), Some(utc("2026-06-01T04:10:00Z")));
    clock.set(utc("2026-06-01T04:10:00Z"));
    let runs = sched.due();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].trigger, Trigger::Schedule);

    // Back within the on-time grace of the latest slot: that one is simply on time.
    let lab = Lab::new(&[("skip", &loop_cfg("  every: 10m\n  catch_up: skip\n", ""))]);
    let (_, _, runs) = down_and_back(
        &lab,
        utc("2026-06-01T00:00:00Z"),
        hours(1),
        utc("2026-06-01T04:00:30Z"),
    );
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].slot, Some(utc("2026-06-01T04:00:00Z")));
    assert_eq!(runs[0].trigger, Trigger::Schedule);
}

#[test]
fn catch_up_all_runs_each_slot_staggered() {
    let lab = Lab::new(&[(
        "all",
        &loop_cfg(
            "  every: 10m\n  catch_up: all\n  starting_deadline: 1d\n",
            "",
        ),
    )]);
    let back = utc("2026-06-01T02:05:00Z");
    let (clock, mut sched, runs) = down_and_back(&lab, utc("2026-06-01T00:00:00Z"), hours(1), back);
    let slots: Vec<_> = runs.iter().map(|r| r.slot.expect("slot")).collect();
    let want: Vec<_> = (1..=6)
        .map(|i| utc("2026-06-01T01:10:00Z") + mins(10 * (i - 1)))
        .collect();
    assert_eq!(slots, want, "01:10 … 02:00, oldest first");
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r.trigger, Trigger::CatchUp);
        assert_eq!(r.not_before, back + chrono::Duration::seconds(2 * i as i64));
    }
    assert!(lab
        .records("all")
        .iter()
        .all(|r| r.outcome != Outcome::Missed));
    for r in &runs {
        complete(&lab, &mut sched, &clock, r, Outcome::Acted);
    }
    assert!(sched.due().is_empty());
    assert!(
        lab.scheduler(&clock).due().is_empty(),
        "none again after a restart"
    );

    // Only slots within the deadline are caught up; older ones are recorded as missed.
    let lab = Lab::new(&[(
        "all",
        &loop_cfg(
            "  every: 10m\n  catch_up: all\n  starting_deadline: 25m\n",
            "",
        ),
    )]);
    let (_, _, runs) = down_and_back(&lab, utc("2026-06-01T00:00:00Z"), hours(1), back);
    let slots: Vec<_> = runs.iter().map(|r| r.slot.expect("slot")).collect();
    assert_eq!(
        slots,
        vec![
            utc("2026-06-01T01:40:00Z"),
            utc("2026-06-01T01:50:00Z"),
            utc("2026-06-01T02:00:00Z")
        ]
    );
    let missed: Vec<_> = lab
        .records("all")
        .into_iter()
        .filter(|r| r.outcome == Outcome::Missed)
        .collect();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].missed_count, Some(3));
    assert_eq!(missed[0].slot, Some(utc("2026-06-01T01:30:00Z")));
}

#[test]
fn catch_up_all_is_bounded() {
    let block = "  every: 10m\n  catch_up: all\n  starting_deadline: 30d\n";
    let cfg = loop_cfg(block, "");
    let start = utc("2026-06-01T00:00:00Z");
    let ten = |n: i64| start + mins(10 * n);
    // Back 5 minutes after the n-th slot: all n slots are late, none is on time.
    let back_after = |n: i64| ten(n) + mins(5);

    // Exactly MAX_CATCH_UP missed slots: each runs, oldest first, staggered.
    let lab = Lab::new(&[("all", &cfg)]);
    let clock = ManualClock::new(start);
    lab.scheduler(&clock);
    clock.set(back_after(MAX_CATCH_UP as i64));
    let runs = lab.scheduler(&clock).due();
    assert_eq!(runs.len(), MAX_CATCH_UP);
    assert_eq!(runs[0].slot, Some(ten(1)));
    assert_eq!(runs[MAX_CATCH_UP - 1].slot, Some(ten(MAX_CATCH_UP as i64)));
    assert!(runs.iter().all(|r| r.trigger == Trigger::CatchUp));
    assert_eq!(
        runs[MAX_CATCH_UP - 1].not_before,
        clock.now() + chrono::Duration::seconds(2 * (MAX_CATCH_UP as i64 - 1))
    );
    assert!(lab.records("all").is_empty());

    // More than that: none runs, and the record says why.
    for extra in [1, 2, 500] {
        let n = MAX_CATCH_UP as i64 + extra;
        let lab = Lab::new(&[("all", &cfg)]);
        let clock = ManualClock::new(start);
        lab.scheduler(&clock);
        clock.set(back_after(n));
        let mut sched = lab.scheduler(&clock);
        let runs = sched.due();
        assert!(runs.is_empty(), "{n} missed slots: {} run", runs.len());
        let recs = lab.records("all");
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].outcome, Outcome::Missed);
        assert_eq!(recs[0].missed_count, None, "too many to count");
        assert_eq!(recs[0].slot, Some(ten(n)));
        let note = recs[0].note.clone().unwrap_or_default();
        assert!(note.contains("more than 100"), "{note}");
        assert!(note.contains("none was run"), "{note}");
        // The slots are decided: nothing is owed for them later.
        assert!(sched.due().is_empty());
        assert!(lab.scheduler(&clock).due().is_empty());
        assert_eq!(sched.next_wake(), Some(ten(n + 1)));
    }

    // The planner says the same: too_many, nothing run, every slot decided.
    let s = schedule("p", block);
    let plan = s.plan(start, back_after(MAX_CATCH_UP as i64 + 1));
    assert!(plan.runs.is_empty(), "{plan:?}");
    let m = plan.missed.expect("missed");
    assert!(m.too_many);
    assert_eq!(m.count, None);
    assert_eq!(m.first, ten(1));
    assert_eq!(plan.watermark, ten(MAX_CATCH_UP as i64 + 1));
    let plan = s.plan(start, back_after(MAX_CATCH_UP as i64));
    assert_eq!(plan.runs.len(), MAX_CATCH_UP);
    assert_eq!(plan.missed, None);
}

#[test]
fn catch_ups_from_several_loops_are_staggered() {
    let lab = Lab::new(&[
        ("a", &loop_cfg("  every: 10m\n", "")),
        ("b", &loop_cfg("  every: 15m\n", "")),
        (
            "c",
            &loop_cfg(
                "  every: 1h\n  catch_up: all\n  starting_deadline: 1d\n",
                "",
            ),
        ),
        ("d", &loop_cfg("  every: 1h\n  catch_up: skip\n", "")),
    ]);
    let start = utc("2026-06-01T00:00:00Z");
    let clock = ManualClock::new(start);
    lab.scheduler(&clock);
    let back = utc("2026-06-01T03:07:00Z");
    clock.set(back);
    let runs = lab.scheduler(&clock).due();
    let got: Vec<(&str, DateTime<Utc>, DateTime<Utc>)> = runs
        .iter()
        .map(|r| (r.loop_name.as_str(), r.slot.expect("slot"), r.not_before))
        .collect();
    let s = |n: i64| back + chrono::Duration::seconds(n);
    assert_eq!(
        got,
        vec![
            ("a", utc("2026-06-01T03:00:00Z"), s(0)),
            ("b", utc("2026-06-01T03:00:00Z"), s(2)),
            ("c", utc("2026-06-01T01:00:00Z"), s(4)),
            ("c", utc("2026-06-01T02:00:00Z"), s(6)),
            ("c", utc("2026-06-01T03:00:00Z"), s(8)),
        ]
    );
    assert!(runs.iter().all(|r| r.trigger == Trigger::CatchUp));
}

// ---- retries and pausing ----------------------------------------------------------------

#[test]
fn retries_back_off_exponentially() {
    let lab = Lab::new(&[(
        "exact",
        &loop_cfg(
            "  every: 1h\n",
            "retry: { max_attempts: 4, backoff: exponential, delay: 10s, jitter: 0 }\n",
        ),
    )]);
    let start = utc("2026-06-01T00:30:00Z");
    let clock = ManualClock::new(start);
    let mut sched = lab.scheduler(&clock);
    clock.set(utc("2026-06-01T01:00:00Z"));
    let mut run = sched.due().pop().expect("a run");
    let slot = run.slot;
    // delay · 2^(n-1) after the n-th failed attempt: 10s, 20s, 40s.
    for (n, wait) in [(1, 10), (2, 20), (3, 40)] {
        assert_eq!(run.attempt, n);
        let now = clock.now();
        let after = complete(&lab, &mut sched, &clock, &run, Outcome::Failed);
        let at = now + chrono::Duration::seconds(wait);
        assert_eq!(after, Aftermath::RetryAt(at), "after attempt {n}");
        assert_eq!(sched.next_wake(), Some(at));
        // A restart keeps the pending retry.
        sched = lab.scheduler(&clock);
        assert!(sched.due().is_empty(), "not before its time");
        assert_eq!(sched.next_wake(), Some(at));
        clock.set(at);
        let mut runs = sched.due();
        assert_eq!(runs.len(), 1);
        run = runs.pop().expect("retry");
        assert_eq!(run.trigger, Trigger::Retry);
        assert_eq!(run.slot, slot, "a retry is for the same slot");
        assert_eq!(run.attempt, n + 1);
    }
    // The last attempt fails: no more retries, one failed run counted.
    assert_eq!(
        complete(&lab, &mut sched, &clock, &run, Outcome::Failed),
        Aftermath::Nothing
    );
    let st = lab.state("exact");
    assert_eq!(st["consecutive_failures"], 1);
    assert!(st["pending_retry"].is_null());
    assert_eq!(sched.next_wake(), Some(utc("2026-06-01T02:00:00Z")));

    // A success resets the count.
    clock.set(utc("2026-06-01T02:00:00Z"));
    let run = sched.due().pop().expect("next slot");
    assert_eq!(run.attempt, 1);
    assert_eq!(
        complete(&lab, &mut sched, &clock, &run, Outcome::Acted),
        Aftermath::Nothing
    );
    assert_eq!(lab.state("exact")["consecutive_failures"], 0);
}

#[test]
fn retry_jitter_stays_within_bounds() {
    let lab = Lab::new(&[(
        "jittery",
        &loop_cfg(
            "  every: 1h\n",
            "retry: { max_attempts: 3, delay: 30s, jitter: 0.2 }\n",
        ),
    )]);
    let clock = ManualClock::new(utc("2026-06-01T00:30:00Z"));
    let mut sched = lab.scheduler(&clock);
    let mut waits = Vec::new();
    for _ in 0..20 {
        // Attempts 1 and 2 fail, attempt 3 succeeds: the loop never pauses.
        for attempt in 1..=3 {
            let w = sched.next_wake().expect("wake");
            clock.set(w);
            let mut runs = sched.due();
            assert_eq!(runs.len(), 1, "{runs:?}");
            let r = runs.pop().expect("run");
            assert_eq!(r.attempt, attempt);
            let now = clock.now();
            if attempt == 3 {
                assert_eq!(
                    complete(&lab, &mut sched, &clock, &r, Outcome::Acted),
                    Aftermath::Nothing
                );
                continue;
            }
            let Aftermath::RetryAt(at) = complete(&lab, &mut sched, &clock, &r, Outcome::Failed)
            else {
                panic!("attempt {attempt} should be retried");
            };
            let wait = (at - now).num_milliseconds() as f64 / 1000.0;
            let base = 30.0 * 2f64.powi(attempt as i32 - 1);
            assert!(
                wait >= base * 0.8 - 0.001 && wait <= base * 1.2 + 0.001,
                "attempt {attempt}: waited {wait}s, base {base}s"
            );
            waits.push(wait / base);
        }
    }
    assert_eq!(lab.state("jittery")["consecutive_failures"], 0);
    assert_eq!(waits.len(), 40);
    let distinct: BTreeSet<i64> = waits.iter().map(|w| (w * 1000.0) as i64).collect();
    assert!(distinct.len() > 3, "jitter varies between runs: {waits:?}");
}

#[test]
fn five_consecutive_failed_runs_pause_the_loop() {
    let lab = Lab::new(&[
        (
            "flaky",
            &loop_cfg(
                "  every: 1h\n",
                "retry: { max_attempts: 2, delay: 1m, jitter: 0.2 }\n",
            ),
        ),
        ("steady", &loop_cfg("  every: 1h\n", "")),
    ]);
    let clock = ManualClock::new(utc("2026-06-01T00:30:00Z"));
    let mut sched = lab.scheduler(&clock);
    let mut failed_runs = 0;
    let mut paused = None;
    for _ in 0..100 {
        let Some(w) = sched.next_wake() else { break };
        if w > utc("2026-06-02T00:00:00Z") {
            break;
        }
        clock.set(w);
        for r in sched.due() {
            if r.loop_name == "steady" {
                complete(&lab, &mut sched, &clock, &r, Outcome::Acted);
                continue;
            }
            assert!(paused.is_none(), "a paused loop was due: {r:?}");
            match complete(&lab, &mut sched, &clock, &r, Outcome::Failed) {
                Aftermath::RetryAt(_) => assert_eq!(r.attempt, 1),
                Aftermath::Nothing => {
                    assert_eq!(r.attempt, 2);
                    failed_runs += 1;
                    assert_eq!(lab.state("flaky")["consecutive_failures"], failed_runs);
                }
                Aftermath::Paused(p) => {
                    failed_runs += 1;
                    assert!(p.reason.contains("5 consecutive failed runs"), "{p:?}");
                    assert_eq!(p.last_error.as_deref(), Some("exit status 1"));
                    paused = Some(clock.now());
                }
            }
        }
        // Restart now and then; the pause is on disk.
        if clock.now().hour().is_multiple_of(3) {
            sched = lab.scheduler(&clock);
        }
    }
    assert_eq!(failed_runs, 5);
    let paused_at = paused.expect("the loop was paused");
    // The fifth slot (05:00) failed twice: its retry came after 1m ± 20 %.
    assert!(
        paused_at >= utc("2026-06-01T05:00:48Z") && paused_at <= utc("2026-06-01T05:01:12Z"),
        "{paused_at}"
    );
    let st = lab.state("flaky");
    assert_eq!(st["consecutive_failures"], 5);
    assert!(st["paused"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("5 consecutive")));
    assert_eq!(
        sched.next_of("flaky"),
        None,
        "a paused loop has no next run"
    );
    assert!(sched.next_of("steady").is_some(), "the others go on");
    // Nothing for the paused loop, however long we wait, restart or not.
    clock.advance(hours(48));
    let runs = lab.scheduler(&clock).due();
    assert!(runs.iter().all(|r| r.loop_name == "steady"), "{runs:?}");
    let flaky = lab.records("flaky");
    assert_eq!(
        flaky
            .iter()
            .filter(|r| r.outcome == Outcome::Failed)
            .count(),
        10,
        "5 runs of 2 attempts"
    );
    assert!(flaky.iter().all(|r| r.slot.is_some_and(|s| s < paused_at)));
}

#[test]
fn a_changed_schedule_does_not_replay_the_past() {
    let start = utc("2026-06-01T00:00:00Z");
    let run_then_change = |new_cfg: Option<&str>| -> (Lab, ManualClock, Vec<DueRun>) {
        let mut lab = Lab::new(&[("report", &loop_cfg("  every: 1h\n", ""))]);
        let clock = ManualClock::new(start);
        let mut sched = lab.scheduler(&clock);
        for _ in 0..3 {
            clock.set(sched.next_wake().expect("wake"));
            for r in sched.due() {
                complete(&lab, &mut sched, &clock, &r, Outcome::Acted);
            }
        }
        assert_eq!(clock.now(), utc("2026-06-01T03:00:00Z"));
        // Down for 5h20m; meanwhile a person edits the schedule.
        clock.set(utc("2026-06-01T08:20:00Z"));
        if let Some(cfg) = new_cfg {
            lab.write("report", cfg);
            lab.reload();
        }
        let runs = lab.scheduler(&clock).due();
        (lab, clock, runs)
    };

    // Unchanged: the latest slot is caught up and the others recorded as missed.
    let (lab, _, runs) = run_then_change(None);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].slot, Some(utc("2026-06-01T08:00:00Z")));
    assert!(lab
        .records("report")
        .iter()
        .any(|r| r.outcome == Outcome::Missed));

    // Changed: a new schedule owes nothing for the time before it was written.
    for cfg in [
        loop_cfg("  every: 30m\n", ""),
        loop_cfg("  every: 1h\n  jitter: 10m\n", ""),
        loop_cfg("  cron: \"0 * * * *\"\n  catch_up: all\n", ""),
    ] {
        let (lab, clock, runs) = run_then_change(Some(&cfg));
        assert!(runs.is_empty(), "{cfg}: replayed {runs:?}");
        assert!(
            lab.records("report")
                .iter()
                .all(|r| r.outcome == Outcome::Acted),
            "{cfg}: nothing missed either"
        );
        let sched = lab.scheduler(&clock);
        let next = sched.next_wake().expect("next");
        let want = lab.def("report").schedule.upcoming(clock.now(), 1)[0];
        assert_eq!(next, want, "{cfg}");
        assert!(next > clock.now());
    }
}

/// Found by the schedule fuzz target (fuzz/regressions/schedule/): chrono reads a year of
/// six digits, and adding a jitter to `+262142-12-31T23:59:59` overflowed. `at:` takes the
/// years RFC 3339 has; the last of them still takes the longest jitter.
#[test]
fn fuzz_regression_at_takes_four_digit_years() {
    let input = include_bytes!("../../fuzz/regressions/schedule/at-year-262142-with-jitter");
    // The target's input: a byte that picks the instant and jitter, then the zone, the time.
    let text = std::str::from_utf8(&input[1..]).expect("UTF-8");
    let mut lines = text.lines();
    let tz: Tz = lines.next().expect("a zone").parse().expect("a known zone");
    let at = lines.next().expect("a time");
    assert_eq!(loops_core::domain::parse_at(at, tz), None, "{at}");
    assert_eq!(
        loops_core::domain::parse_at("-0001-01-01T00:00:00", tz),
        None
    );

    let last = loops_core::domain::parse_at("9999-12-31T23:59:59Z", tz).expect("year 9999");
    let s = schedule("far", "  at: 9999-12-31T23:59:59Z\n  jitter: 3650d\n");
    let fire = s.fire_time(last);
    assert_eq!(
        fire - last,
        chrono::Duration::from_std(s.offset).expect("offset")
    );
    assert_eq!(s.upcoming(utc("2026-11-21T00:00:00Z"), 2), vec![fire]);
}

#[test]
fn an_at_in_the_past_is_a_warning_in_check_and_never_fires_in_list() {
    let ws = crate::common::TempWorkspace::new();
    let cfg = "schedule:\n  at: 2020-01-01T09:00:00Z\npayload: { command: [\"true\"] }\n";
    ws.add_loop("once", cfg);
    let out = ws.cmd().arg("check").output().expect("loops check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error:\n{stdout}"
    );
    assert!(
        stdout.contains("warning: domains/once/config.yaml:2:7: `schedule.at` 2020-01-01T09:00:00Z has passed: this one-shot loop never fires\n  help: set a later time"),
        "{stdout}"
    );

    let out = ws.cmd().arg("list").output().expect("loops list");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("once "))
        .unwrap_or_else(|| panic!("no row for `once`:\n{stdout}"));
    assert!(row.ends_with("past: never fires"), "{row}");
    let json = ws
        .cmd()
        .args(["list", "--json"])
        .output()
        .expect("loops list --json");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let once = v["loops"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["name"] == "once"))
        .expect("once in the list");
    assert_eq!(once["status"], "past: never fires");

    // Disabled, it is not expected to fire: no warning.
    ws.add_loop("once", &format!("enabled: false\n{cfg}"));
    let out = ws.cmd().arg("check").output().expect("loops check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("has passed"), "{stdout}");

    // One in the future is ok.
    ws.add_loop(
        "once",
        "schedule:\n  at: 2999-01-01T09:00:00Z\npayload: { command: [\"true\"] }\n",
    );
    let out = ws.cmd().arg("list").output().expect("loops list");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("once ") && l.ends_with(" ok")),
        "{stdout}"
    );
}

// ---- a clock stepped back -------------------------------------------------------------

/// Runs everything due from the clock's time until `until`, completing each run; returns
/// the slots run, per loop.
fn run_until(
    lab: &Lab,
    sched: &mut Scheduler,
    clock: &ManualClock,
    until: DateTime<Utc>,
) -> BTreeMap<String, Vec<DateTime<Utc>>> {
    let mut ran: BTreeMap<String, Vec<DateTime<Utc>>> = BTreeMap::new();
    // Runs due right now (after a step) come first.
    loop {
        for r in sched.due() {
            ran.entry(r.loop_name.clone())
                .or_default()
                .push(r.slot.expect("slot"));
            complete(lab, sched, clock, &r, Outcome::Acted);
        }
        match sched.next_wake().filter(|w| *w <= until) {
            Some(w) => clock.set(w.max(clock.now())),
            None => break,
        }
    }
    clock.set(until);
    ran
}

/// Issue 16: after the clock was stepped three days ahead and back, every loop sat idle
/// until the clock caught up with the watermark, three days later. The watermark ahead of
/// the clock is noticed at the next wake, and both kinds of schedule fire on time again.
#[test]
fn a_clock_stepped_ahead_and_back_does_not_freeze_the_loops() {
    let lab = Lab::new(&[
        ("tenner", &loop_cfg("  every: 10m\n", "")),
        ("nine", &loop_cfg("  cron: \"0 9 * * *\"\n", "")),
    ]);
    let start = utc("2026-06-01T08:00:00Z");
    let clock = ManualClock::new(start);
    let mut sched = lab.scheduler(&clock);
    let ran = run_until(&lab, &mut sched, &clock, utc("2026-06-01T09:05:00Z"));
    assert_eq!(ran["tenner"].len(), 6, "{ran:?}");
    assert_eq!(ran["nine"], vec![utc("2026-06-01T09:00:00Z")]);

    // Three days ahead: what was missed is decided, the watermarks move to 4 June.
    clock.set(utc("2026-06-04T09:05:00Z"));
    let ran = run_until(&lab, &mut sched, &clock, utc("2026-06-04T09:06:00Z"));
    assert_eq!(ran["tenner"], vec![utc("2026-06-04T09:00:00Z")], "{ran:?}");
    assert_eq!(ran["nine"], vec![utc("2026-06-04T09:00:00Z")], "{ran:?}");

    // And back to the true time. Without the fix the next wake stayed at 4 June.
    clock.set(utc("2026-06-01T09:06:00Z"));
    let ran = run_until(&lab, &mut sched, &clock, utc("2026-06-02T09:30:00Z"));
    let next = sched.next_wake().expect("a next wake");
    assert!(next <= utc("2026-06-02T09:40:00Z"), "next wake {next}");
    // Every slot from the step back on runs once: 09:10 on 1 June … 09:30 on 2 June.
    let tenner = &ran["tenner"];
    assert_eq!(
        tenner.first(),
        Some(&utc("2026-06-01T09:10:00Z")),
        "{ran:?}"
    );
    assert_eq!(tenner.last(), Some(&utc("2026-06-02T09:30:00Z")), "{ran:?}");
    assert_eq!(tenner.len(), 6 * 24 + 3, "{ran:?}");
    assert_eq!(ran["nine"], vec![utc("2026-06-02T09:00:00Z")], "{ran:?}");
    let state = lab.state("tenner");
    assert_eq!(state["watermark"], "2026-06-02T09:30:00Z", "{state}");
}

/// The same found at start-up: a state file whose watermark (and retry) lie days ahead,
/// as a daemon under a wrong clock wrote them, is planned from now again, and a clock a
/// little behind (within the tolerance) changes nothing.
#[test]
fn a_watermark_ahead_of_the_clock_in_the_state_file_is_re_anchored() {
    let lab = Lab::new(&[
        ("tenner", &loop_cfg("  every: 10m\n", "")),
        ("nine", &loop_cfg("  cron: \"0 9 * * *\"\n", "")),
    ]);
    let now = utc("2026-06-01T08:58:00Z");
    let clock = ManualClock::new(now);
    drop(lab.scheduler(&clock)); // writes nothing yet; the states are made by the claims
    let store = StateStore::new(&lab.ws().layout().state_dir());
    for name in ["tenner", "nine"] {
        let fp = loops::engine::scheduler::fingerprint(lab.def(name));
        let mut s = loops_core::state::LoopState::new(now, &fp);
        s.watermark = Some(utc("2026-06-04T09:00:00Z"));
        store.save(name, &s).expect("save state");
    }
    // Tenner's watermark is only a minute ahead: a small step waits, it does not replay.
    let mut s = store.load("tenner").expect("state");
    s.watermark = Some(utc("2026-06-01T08:59:00Z"));
    s.pending_retry = Some(loops_core::state::PendingRetry {
        slot: Some(utc("2026-06-01T08:50:00Z")),
        attempt: 2,
        at: utc("2026-06-04T09:00:00Z"),
        trigger: "retry".into(),
    });
    store.save("tenner", &s).expect("save state");

    let mut sched = lab.scheduler(&clock);
    assert_eq!(
        sched.next_of("nine"),
        Some(utc("2026-06-01T09:00:00Z")),
        "the cron loop fires today"
    );
    // The retry three days out waits its backoff (30 s × 2^0 with at most 20 % jitter).
    let retry_at = sched.next_of("tenner").expect("tenner next");
    assert!(
        retry_at <= now + chrono::Duration::seconds(37),
        "retry at {retry_at}"
    );
    assert_eq!(lab.state("tenner")["watermark"], "2026-06-01T08:59:00Z");
    assert_eq!(lab.state("nine")["watermark"], "2026-06-01T08:58:00Z");
    clock.set(utc("2026-06-01T09:00:00Z"));
    let due = sched.due();
    let names: BTreeSet<&str> = due.iter().map(|r| r.loop_name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["nine", "tenner"]), "{due:?}");
}

// ---- adaptive cadence -----------------------------------------------------------------

/// Finishes `run` as an adaptive loop's model would: silent, asking to look again `after`.
fn complete_looking_again(
    lab: &Lab,
    sched: &mut Scheduler,
    clock: &ManualClock,
    run: &DueRun,
    after: Option<chrono::Duration>,
) {
    let now = clock.now();
    let mut rec = RunRecord::decision(
        &run.loop_name,
        run.trigger.as_str(),
        run.slot,
        now,
        Outcome::Silent,
        String::new(),
    );
    rec.note = None;
    rec.next_check = after.map(|d| now + d);
    lab.runlog().append(&rec).expect("append run record");
    let def = lab.def(&run.loop_name).clone();
    sched.finished(&def, &rec, true);
}

#[test]
fn a_chosen_next_check_is_the_next_slot_exactly_once_then_the_grid_again() {
    let lab = Lab::new(&[(
        "watch",
        &loop_cfg("  every: 10m\n  adaptive: { min: 5m, max: 2h }\n", ""),
    )]);
    let clock = ManualClock::new(utc("2026-03-01T10:00:30Z"));
    let mut sched = lab.scheduler(&clock);
    let first = sched.next_wake().expect("a first slot");
    clock.set(first);
    let runs = sched.due();
    assert_eq!(runs.len(), 1);
    complete_looking_again(&lab, &mut sched, &clock, &runs[0], Some(mins(45)));
    let chosen = first + mins(45);
    assert_eq!(
        sched.next_wake(),
        Some(chosen),
        "the model's choice, not the grid"
    );
    assert_eq!(
        lab.state("watch")["next_check"].as_str().map(utc),
        Some(chosen)
    );
    // Nothing in between: the grid's four slots before it are passed over, not missed.
    clock.set(chosen - chrono::Duration::seconds(1));
    assert!(sched.due().is_empty());
    clock.set(chosen);
    let runs = sched.due();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].trigger, Trigger::Schedule);
    assert!(
        lab.scheduler(&clock).due().is_empty(),
        "handed out once: a restart at the same moment finds it decided"
    );
    assert!(
        lab.records("watch")
            .iter()
            .all(|r| r.outcome != Outcome::Missed),
        "the passed-over slots are not missed"
    );
    // This run chooses nothing: the `every` grid takes over again from now.
    complete_looking_again(&lab, &mut sched, &clock, &runs[0], None);
    let next = sched.next_wake().expect("the grid");
    assert!(next > chosen && next - chosen <= mins(10), "{next}");
    assert!(lab.state("watch")["next_check"].is_null());
}

#[test]
fn a_quiet_day_of_an_adaptive_monitor_runs_a_fraction_of_the_fixed_one() {
    // The same 10-minute monitor, one day, on a channel where nothing happens: the fixed
    // loop looks every slot; the adaptive one's model asks for its maximum each time.
    let day = |adaptive: bool| {
        let block = if adaptive {
            "  every: 10m\n  adaptive: { min: 5m, max: 2h }\n"
        } else {
            "  every: 10m\n"
        };
        let lab = Lab::new(&[("monitor", &loop_cfg(block, ""))]);
        // A second before midnight: the day's first slot is 00:00.
        let start = utc("2026-02-28T23:59:59Z");
        let clock = ManualClock::new(start);
        let mut sched = lab.scheduler(&clock);
        let mut n = 0;
        while let Some(wake) = sched.next_wake().filter(|w| *w < start + hours(24)) {
            clock.set(wake);
            for r in sched.due() {
                n += 1;
                let ask = adaptive.then(|| hours(2));
                complete_looking_again(&lab, &mut sched, &clock, &r, ask);
            }
        }
        n
    };
    let fixed = day(false);
    let adaptive = day(true);
    assert_eq!(fixed, 144);
    assert!((12..=13).contains(&adaptive), "{adaptive}");
}

#[test]
fn a_loop_held_for_its_daily_budget_runs_again_the_next_day_owing_nothing() {
    let lab = Lab::new(&[("spender", &loop_cfg("  every: 1h\n", ""))]);
    let clock = ManualClock::new(utc("2026-03-01T09:59:59Z"));
    let mut sched = lab.scheduler(&clock);
    clock.set(utc("2026-03-01T10:00:00Z"));
    let runs = sched.due();
    assert_eq!(runs.len(), 1);
    complete(&lab, &mut sched, &clock, &runs[0], Outcome::Acted);
    // The run reached the daily budget: held until the next UTC midnight.
    let midnight = utc("2026-03-02T00:00:00Z");
    StateStore::new(&lab.ws().layout().state_dir())
        .update("spender", |s| {
            if let Some(s) = s.as_mut() {
                s.budget_paused_until = Some(midnight);
            }
        })
        .expect("hold");
    let mut sched = lab.scheduler(&clock);
    assert_eq!(sched.next_wake(), Some(midnight), "nothing before midnight");
    clock.set(midnight - chrono::Duration::seconds(1));
    assert!(sched.due().is_empty());
    clock.set(midnight);
    let runs = sched.due();
    assert_eq!(runs.len(), 1, "the day's first slot, once: {runs:?}");
    assert_eq!(runs[0].slot, Some(midnight));
    assert!(
        lab.records("spender")
            .iter()
            .all(|r| r.outcome != Outcome::Missed),
        "the slots held back are not missed"
    );
    assert!(lab.state("spender")["budget_paused_until"].is_null());
}
