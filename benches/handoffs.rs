//! Handoffs, end to end, under the real daemon (`loops::daemon::run` in-process on
//! `loops::daemon::runtime()`, stopped through `DaemonOptions.stop`) on a temporary
//! workspace (`git init`, `loops.yaml` with a `main: {command: [...]}` session, no domains).
//! Handoffs are written Maildir-style by the bench itself: `inbox/.tmp/NAME.md`, then a
//! rename into `inbox/` (the id of such a handoff is its file stem).
//!
//! 1. Wake latency: one handoff at a time, each written only after the previous one is
//!    completed and its wake recorded, so every one measures a cold wake (not a batch
//!    coalesced into a running wake). The main session is a POSIX sh script whose first
//!    action appends `date +%s%N` and `$LOOPS_HANDOFFS` to a log; latency = that instant −
//!    the wall-clock instant just after the rename. End to end = rename → the file in
//!    `inbox/done/YYYY-MM/` (seen by polling every 100 µs). Target: p99 ≤ 50 ms.
//! 2. Throughput: N handoffs dropped as fast as possible by 4 writer threads; the main
//!    session is a trivial sh script that reports every handoff it got as completed.
//!    Measured from the first write to the last handoff in done/ (the newest mtime
//!    there); beside it, to the moment the wakes' run records account for every handoff
//!    as completed (polled every 1 ms; a record is written after the wake's git commit). Every id must be in done/ exactly once (one file, one
//!    "## Completed" note, delivered to the main session once), inbox/ and active/
//!    empty, nothing rejected. Target: ≥ 500 handoffs/s, no loss.
//!
//! The throughput run goes first, and both workspaces are deleted only when the bench
//! ends (see `main`). The workspaces are made under $TMPDIR (default /tmp): set
//! `TMPDIR=/dev/shm` to take the disk's file system out of the figures.
//!
//!   cargo bench --bench handoffs                    # burst of 5,000; 1,000 cold wakes
//!   cargo bench --bench handoffs -- --quick         # burst of 1,000; 100 cold wakes
//!   options: --wakes N  --burst N  --writers N  --only latency|throughput
//!            --max-wakes N (main.max_wakes_per_minute in the throughput run; default: the
//!            product default, 60)  --keep

use loops::daemon::{self, DaemonOptions};
use loops_core::clock::SystemClock;
use loops_core::workspace::Workspace;
use loops_testutil::bench::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The daemon running in-process on its own runtime's worker threads, while the bench's
/// main thread writes handoffs and watches the folders with plain std calls.
struct Daemon {
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<daemon::Summary, daemon::DaemonError>>,
}

impl Daemon {
    fn start(root: &Path) -> Daemon {
        let ws = Workspace::open(root).expect("open workspace");
        assert!(
            ws.diagnostics.is_empty(),
            "loops.yaml: {:?}",
            ws.diagnostics
        );
        assert!(ws.settings.main.is_some(), "loops.yaml has no main:");
        let rt = daemon::runtime().unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let opts = DaemonOptions {
            once: false,
            all: false,
            clock: Arc::new(SystemClock),
            stop: Some(stop_rx),
            progress: None,
        };
        let task = rt.spawn(daemon::run(ws, opts));
        Daemon { rt, stop, task }
    }

    fn stop(self) {
        let _ = self.stop.send(true);
        let r = self.rt.block_on(self.task).expect("daemon task");
        r.expect("daemon");
    }
}

fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn handoff_text(id: &str) -> String {
    format!(
        "---\nid: {id}\nfrom: bench\nto: main\ncreated: {}\npriority: normal\n---\n# Bench handoff {id}\n\nNothing to do.\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Maildir-style delivery: write in inbox/.tmp/, rename into inbox/. No fsync: the
/// writer's durability is not what is measured, and a rename is what rings the doorbell.
fn drop_handoff(inbox: &Path, id: &str) {
    let tmp = inbox.join(".tmp").join(format!("{id}.md"));
    std::fs::write(&tmp, handoff_text(id)).unwrap();
    std::fs::rename(&tmp, inbox.join(format!("{id}.md"))).unwrap();
}

/// `*.md` files directly in a folder.
fn md_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| n.ends_with(".md"))
                        && e.file_type().is_ok_and(|t| t.is_file())
                })
                .count()
        })
        .unwrap_or(0)
}

/// Every done handoff: (stem, path), over all the month folders.
fn done_files(inbox: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for m in std::fs::read_dir(inbox.join("done"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
    {
        for f in std::fs::read_dir(m.path())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let p = f.path();
            if let Some(stem) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".md"))
            {
                out.push((stem.to_string(), p));
            }
        }
    }
    out
}

fn is_done(inbox: &Path, id: &str) -> bool {
    let name = format!("{id}.md");
    std::fs::read_dir(inbox.join("done"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .any(|m| m.path().join(&name).exists())
}

#[derive(serde::Deserialize)]
struct WakeRec {
    started: chrono::DateTime<chrono::Utc>,
    outcome: String,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    stdout_tail: String,
}

/// Every main-session wake record (rotated files too).
fn wake_records(root: &Path) -> Vec<WakeRec> {
    let mut v: Vec<WakeRec> = Vec::new();
    for e in std::fs::read_dir(root.join(".loops/runs"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
    {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with("main.") && n.ends_with(".jsonl") {
            for line in std::fs::read_to_string(e.path()).unwrap().lines() {
                v.push(serde_json::from_str(line).expect("main run record"));
            }
        }
    }
    v.sort_by_key(|r| r.started);
    v
}

/// How many handoffs a wake had, from its record's note ("N handoff(s): …").
fn wake_size(r: &WakeRec) -> usize {
    r.note
        .as_deref()
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// (handoffs, completed, held) of a wake, from its record's note
/// ("N handoff(s): C completed, H held, R returned to the inbox").
fn wake_counts(note: &str) -> (usize, usize, usize) {
    let nums: Vec<usize> = note
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    match nums.as_slice() {
        [n, c, h, _] => (*n, *c, *h),
        _ => (0, 0, 0),
    }
}

/// Lines in the main session's run log (one per finished wake).
fn wake_lines(root: &Path) -> usize {
    std::fs::read(root.join(".loops/runs/main.jsonl"))
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

fn wait_until(what: &str, limit: Duration, every: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// The main session for the latency run: its first action stamps the time.
const LATENCY_SCRIPT: &str = r#"t=$(date +%s%N)
printf '%s %s\n' "$t" "$LOOPS_HANDOFFS" >> "$BENCH_LOG"
printf '{"completed": ['
sep=
for p in $LOOPS_HANDOFFS; do
  n=${p##*/}
  printf '%s"%s"' "$sep" "${n%.md}"
  sep=,
done
printf ']}\n'
"#;

/// The main session for the throughput run: it records what it was given and reports
/// all of it completed (sh builtins only).
const TRIVIAL_SCRIPT: &str = r#"printf '%s\n' "$LOOPS_HANDOFFS" >> "$BENCH_LOG"
printf '{"completed": ['
sep=
for p in $LOOPS_HANDOFFS; do
  n=${p##*/}
  printf '%s"%s"' "$sep" "${n%.md}"
  sep=,
done
printf ']}\n'
"#;

/// A workspace under `dir/ws` whose main session runs `script` (saved as
/// `dir/main.sh`, logging to `dir/log`).
fn handoff_workspace(dir: &Path, script: &str, extra_main: &str) -> (PathBuf, PathBuf) {
    let root = dir.join("ws");
    let log = dir.join("log");
    let sh = dir.join("main.sh");
    write(&sh, &format!("BENCH_LOG='{}'\n{script}", log.display()));
    let yaml = format!(
        "main:\n  command: [\"sh\", \"{}\"]\n  timeout: 60s\n{extra_main}",
        sh.display()
    );
    workspace(&root, &yaml);
    std::fs::create_dir_all(root.join("inbox/.tmp")).unwrap();
    git_commit_all(&root, "bench workspace");
    (root, log)
}

/// Diagnostic floor: the same script started directly with std::process::Command
/// (spawn → its `date +%s%N`), i.e. what creating sh + date costs without the daemon.
fn bare_start(dir: &Path, reps: usize) -> Vec<f64> {
    let log = dir.join("bare.log");
    let sh = dir.join("bare.sh");
    write(
        &sh,
        &format!("BENCH_LOG='{}'\n{LATENCY_SCRIPT}", log.display()),
    );
    let mut v = Vec::new();
    for i in 0..reps {
        let _ = std::fs::remove_file(&log);
        let t = wall_ns();
        let out = std::process::Command::new("sh")
            .arg(&sh)
            .env("LOOPS_HANDOFFS", format!("/x/inbox/active/bare-{i}.md"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = std::fs::read_to_string(&log).unwrap();
        let started: i128 = text.split_whitespace().next().unwrap().parse().unwrap();
        v.push((started - t) as f64 / 1e6);
    }
    v
}

fn latency(args: &Args, n: usize) -> tempfile::TempDir {
    let warmup = 5;
    println!(
        "\n== wake latency: {n} handoffs, one at a time (each a cold wake), + {warmup} warm-ups"
    );
    let tmp = tempdir(args, "loops-bench-handoff-lat-");
    // The flood guard (main.max_wakes_per_minute, default 60) would space a thousand
    // back-to-back wakes a second apart; it is lifted here so each wake is measured.
    let (root, log) = handoff_workspace(
        tmp.path(),
        LATENCY_SCRIPT,
        "  max_wakes_per_minute: 1000000\n",
    );
    let inbox = root.join("inbox");
    let bare = bare_start(tmp.path(), 50);

    let d = Daemon::start(&root);
    let mut renamed: HashMap<String, i128> = HashMap::new();
    let mut e2e = Vec::new();
    let t_all = Instant::now();
    for i in 0..warmup + n {
        let id = if i < warmup {
            format!("warm-{i:02}")
        } else {
            format!("lat-{:05}", i - warmup)
        };
        let tmpf = inbox.join(".tmp").join(format!("{id}.md"));
        std::fs::write(&tmpf, handoff_text(&id)).unwrap();
        std::fs::rename(&tmpf, inbox.join(format!("{id}.md"))).unwrap();
        let at_wall = wall_ns();
        let at = Instant::now();
        // Completed: in done/. Polled every 100 µs.
        wait_until(
            &format!("{id} in inbox/done/"),
            Duration::from_secs(60),
            Duration::from_micros(100),
            || is_done(&inbox, &id),
        );
        let e = ms(at.elapsed());
        // The wake is over when its record is written; give the daemon a moment more to
        // account it, so the next handoff finds no wake running.
        wait_until(
            "the wake's run record",
            Duration::from_secs(60),
            Duration::from_micros(200),
            || wake_lines(&root) > i,
        );
        std::thread::sleep(Duration::from_millis(5));
        if i >= warmup {
            e2e.push(e);
            renamed.insert(id, at_wall);
        }
    }
    let wall = t_all.elapsed();
    d.stop();

    // Match each wake's start stamp to its handoff.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lat = Vec::new();
    let mut bad_wakes = 0usize;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let t: i128 = it.next().unwrap().parse().unwrap();
        let paths: Vec<&str> = it.collect();
        if paths.len() != 1 {
            bad_wakes += 1;
            continue;
        }
        let stem = Path::new(paths[0])
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .to_string();
        if let Some(r) = renamed.get(&stem) {
            lat.push((t - r) as f64 / 1e6);
        }
    }
    let recs = wake_records(&root);
    // rename → the wake's record `started` (the daemon's side of the latency).
    let mut react = Vec::new();
    // The record names no handoff, but its stdout tail is the completion line with the id.
    for r in &recs {
        let Some(id) = r.stdout_tail.split('"').find(|t| t.starts_with("lat-")) else {
            continue;
        };
        if let Some(at) = renamed.get(id) {
            let s = r.started.timestamp_nanos_opt().unwrap() as i128;
            react.push((s - at) as f64 / 1e6);
        }
    }
    let sizes: Vec<usize> = recs.iter().map(wake_size).collect();
    let acted = recs.iter().filter(|r| r.outcome == "acted").count();
    let durs: Vec<f64> = recs
        .iter()
        .skip(warmup)
        .filter_map(|r| r.duration_ms.map(|d| d as f64))
        .collect();
    println!(
        "{} handoffs in {:.1} s; wakes recorded: {} ({} acted), handoffs per wake: min {} max {}; wakes given != 1 handoff: {bad_wakes}",
        n,
        wall.as_secs_f64(),
        recs.len(),
        acted,
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0),
    );
    println!("{}", summary("wake latency: rename -> command start", &lat));
    println!(
        "{}",
        summary("  of which: rename -> wake record `started`", &react)
    );
    println!(
        "{}",
        summary("end to end: rename -> file in inbox/done/", &e2e)
    );
    println!(
        "{}",
        summary("  the command's run (record duration_ms)", &durs)
    );
    println!(
        "{}",
        summary("diagnostic: bare spawn -> sh+date start", &bare)
    );
    let s = sorted(lat.clone());
    let e = sorted(e2e.clone());
    let ok = lat.len() == n && bad_wakes == 0 && pct(&s, 99.0) <= 50.0;
    println!(
        "RESULT handoffs wake-latency n={n}: rename->command start p50={:.3} ms p99={:.3} ms max={:.3} ms; rename->done p50={:.3} ms p99={:.3} ms; wakes={} measured={} -> target p99<=50ms: {}",
        pct(&s, 50.0),
        pct(&s, 99.0),
        pct(&s, 100.0),
        pct(&e, 50.0),
        pct(&e, 99.0),
        recs.len(),
        lat.len(),
        if ok { "PASS" } else { "FAIL" }
    );
    tmp
}

fn throughput(args: &Args, n: usize, writers: usize) -> tempfile::TempDir {
    let max_wakes: Option<u32> = args
        .value("max-wakes")
        .map(|v| v.parse().expect("--max-wakes N"));
    println!(
        "\n== throughput: {n} handoffs from {writers} writer threads, trivial command main session, main.max_wakes_per_minute={}",
        max_wakes.map_or("60 (default)".to_string(), |m| m.to_string())
    );
    let tmp = tempdir(args, "loops-bench-handoff-tp-");
    let extra = max_wakes
        .map(|m| format!("  max_wakes_per_minute: {m}\n"))
        .unwrap_or_default();
    let (root, log) = handoff_workspace(tmp.path(), TRIVIAL_SCRIPT, &extra);
    let inbox = root.join("inbox");
    let d = Daemon::start(&root);
    // Let the daemon set up its watcher and make its start-up scan (an empty inbox).
    std::thread::sleep(Duration::from_millis(300));

    let ids: Vec<Vec<String>> = (0..writers)
        .map(|w| {
            (0..n)
                .filter(|i| i % writers == w)
                .map(|i| format!("tp-w{w}-{i:05}"))
                .collect()
        })
        .collect();
    let barrier = Arc::new(std::sync::Barrier::new(writers + 1));
    let handles: Vec<_> = ids
        .iter()
        .cloned()
        .map(|mine| {
            let inbox = inbox.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let t0 = Instant::now();
                for id in &mine {
                    drop_handoff(&inbox, id);
                }
                (t0, Instant::now())
            })
        })
        .collect();
    barrier.wait();
    let times: Vec<(Instant, Instant)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let first = times.iter().map(|t| t.0).min().unwrap();
    let written = times.iter().map(|t| t.1).max().unwrap();
    let first_wall = wall_ns() - (Instant::now() - first).as_nanos() as i128;
    // Drained: the wakes' records account for every handoff as completed (a record is
    // written after its handoffs are in done/ and committed). Watching the small run log
    // rather than read_dir-ing thousands of files keeps the bench off the CPU it measures.
    // It also stops once every handoff is completed or held (a held one stays held).
    let limit = Duration::from_secs(120);
    let mut drained = None;
    let t_wait = Instant::now();
    while t_wait.elapsed() < limit {
        let (mut c, mut h) = (0, 0);
        for line in std::fs::read_to_string(root.join(".loops/runs/main.jsonl"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(r) = serde_json::from_str::<WakeRec>(line) {
                let (_, ci, hi) = wake_counts(r.note.as_deref().unwrap_or(""));
                c += ci;
                h += hi;
            }
        }
        if c == n {
            drained = Some(Instant::now());
            break;
        }
        if c + h >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    d.stop();

    let done = done_files(&inbox);
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (stem, _) in &done {
        *per_id.entry(stem.as_str()).or_default() += 1;
    }
    let all: Vec<&String> = ids.iter().flatten().collect();
    let missing = all
        .iter()
        .filter(|i| !per_id.contains_key(i.as_str()))
        .count();
    let dup_files = per_id.values().filter(|c| **c > 1).count();
    let extra_ids = per_id.len() + missing - all.len();
    let mut multi_completed = 0usize;
    let mut newest_mtime: Option<SystemTime> = None;
    for (_, p) in &done {
        let text = std::fs::read_to_string(p).unwrap();
        if text.matches("\n## Completed ").count() != 1 {
            multi_completed += 1;
        }
        let m = std::fs::metadata(p).unwrap().modified().unwrap();
        newest_mtime = Some(newest_mtime.map_or(m, |x: SystemTime| x.max(m)));
    }
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(&log).unwrap_or_default().lines() {
        if let Some(stem) = Path::new(line.trim()).file_stem() {
            *delivered
                .entry(stem.to_string_lossy().to_string())
                .or_default() += 1;
        }
    }
    let redelivered = delivered.values().filter(|c| **c > 1).count();
    let left_inbox = md_count(&inbox);
    let left_active = md_count(&inbox.join("active"));
    let rejected = md_count(&inbox.join("rejected"));
    let recs = wake_records(&root);
    let wakes = recs.len();
    let jsonl_lines = wake_lines(&root);
    let failed: Vec<&WakeRec> = recs.iter().filter(|r| r.outcome != "acted").collect();
    let sizes: Vec<usize> = recs.iter().map(wake_size).collect();
    let durs: Vec<f64> = recs
        .iter()
        .filter_map(|r| r.duration_ms.map(|d| d as f64))
        .collect();

    let write_s = (written - first).as_secs_f64();
    println!(
        "writers: {n} handoffs renamed into inbox/ in {:.1} ms ({:.0}/s)",
        write_s * 1e3,
        n as f64 / write_s
    );
    println!(
        "wakes: {wakes} (lines of .loops/runs/main.jsonl: {jsonl_lines}), not acted: {}; handoffs per wake: {:?}",
        failed.len(),
        sizes
    );
    for r in failed.iter().take(5) {
        println!("  {} wake: {}", r.outcome, r.error.as_deref().unwrap_or(""));
    }
    println!(
        "{}",
        summary("main-session command run (duration_ms)", &durs)
    );
    println!(
        "check: {} in done/ of {n}; missing {missing}, in done/ twice {dup_files}, unknown ids {extra_ids}, completed twice {multi_completed}, delivered to main twice {redelivered}; left in inbox/ {left_inbox}, in active/ {left_active}, rejected {rejected}",
        done.len()
    );
    let lossless = missing == 0
        && dup_files == 0
        && extra_ids == 0
        && multi_completed == 0
        && redelivered == 0
        && left_inbox == 0
        && left_active == 0
        && rejected == 0;
    let Some(drained) = drained else {
        println!(
            "RESULT handoffs throughput n={n} writers={writers}: NOT drained (done {} of {n}, held in active/ {left_active}; waited up to {limit:?}); wakes={wakes} -> target >=500/s, no loss: FAIL",
            done.len()
        );
        return tmp;
    };
    let secs = (drained - first).as_secs_f64();
    // The figure: first write -> the last handoff in done/ (the newest mtime there; its
    // rename follows the write by one fsync). Beside it: until the last wake's run record,
    // i.e. also committed to git and recorded.
    let mtime_secs = newest_mtime
        .map(|m| {
            (m.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128 - first_wall) as f64 / 1e9
        })
        .unwrap_or(f64::NAN);
    let rate = n as f64 / mtime_secs;
    println!(
        "first write -> newest mtime in done/ (the last file in): {:.1} ms; first write -> every handoff recorded completed (committed too): {:.1} ms",
        mtime_secs * 1e3,
        secs * 1e3
    );
    let ok = lossless && rate >= 500.0;
    println!(
        "RESULT handoffs throughput n={n} writers={writers}: {rate:.0} handoffs/s ({:.1} ms first write -> last in done/; {:.0}/s counting the commit and run record); wakes={wakes}; lossless={} -> target >=500/s, no loss: {}",
        mtime_secs * 1e3,
        n as f64 / secs,
        if lossless { "yes" } else { "NO" },
        if ok { "PASS" } else { "FAIL" }
    );
    tmp
}

fn main() {
    let args = Args::parse();
    let wakes: usize = args.num("wakes", if args.quick { 100 } else { 1000 });
    let burst: usize = args.num("burst", if args.quick { 1000 } else { 5000 });
    let writers: usize = args.num("writers", 4);
    let only = args.value("only");
    println!("== handoffs: wake latency ({wakes} cold wakes) and throughput ({burst} from {writers} writers), real daemon in-process");
    println!("{}", machine());
    // Throughput first, and every workspace is removed only at the very end: on ext4
    // without a journal, inodes freed in the last 60-300 s are skipped one by one at every
    // file creation, so deleting one run's thousands of files slows the next run's writes.
    let mut dirs = Vec::new();
    if only.as_deref().is_none_or(|o| o == "throughput") {
        dirs.push(throughput(&args, burst, writers));
    }
    if only.as_deref().is_none_or(|o| o == "latency") {
        dirs.push(latency(&args, wakes));
    }
    for d in dirs {
        keep(&args, d);
    }
}
