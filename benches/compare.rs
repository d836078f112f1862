//! Side by side: `loops` against what a user would pick instead, in one run, on the same
//! machine, every workspace a temporary folder under the same $TMPDIR (so on the same
//! file system). `loops` is the release binary cargo builds for this bench
//! (`CARGO_BIN_EXE_loops`), run as a child process; the baselines are the shell scripts
//! in `benches/baselines/`, run as child processes too (each in its own process group):
//!
//! - `cron_loop.sh` (bash): the scheduler loop a person writes instead of cron + a script.
//!   Reads every domain's `every:` at start, prints "ready N", wakes every TICK seconds
//!   and runs `job.sh` (the domain's `./run.sh`, a run-log line, `git add` + `git commit`
//!   through the git CLI) for each due domain.
//! - `poll_watcher.sh` (sh): rescans `inbox/` every 2 s, as Genesis's engine rescans its
//!   job files; runs a handler per new file, moves it to `inbox/done/YYYY-MM/`, commits.
//! - `job_worker.sh` + `enqueue.sh` (sh): a job queue as files in a folder, consumed by a
//!   worker that rescans it every 2 s and runs the jobs one after another.
//!
//! Figures (every ratio is baseline / loops of a cost, so above 1 means loops costs less):
//!
//! 1. Job throughput: N trivial jobs (`true`) against a running daemon (default
//!    `max_concurrent_jobs`, 4) and against `job_worker.sh` (one at a time). First
//!    submit → the last job recorded as finished (the N-th new line of
//!    `.loops/jobs/done/index.jsonl`, or of the worker's `done/index.log`, tailed every
//!    5 ms). Submitted from this process (against writing the job file + a rename, one
//!    after another) three ways: back to back from one thread
//!    (`loops_core::jobs::queue::submit`, what `loops jobs submit` calls: each waits for its
//!    own flush), from 8 threads at once (`queue::submit`: overlapping submits share
//!    one `syncfs`), and in batches of 100 (`queue::submit_many`, one flush a batch, as
//!    the scheduler submits a slot's runs); and from a shell loop (`loops jobs submit
//!    shell --params '{"cmd": "true"}'` per job, against `sh enqueue.sh Q true` per
//!    job). Every loops submit returns only once its job is on disk. Beside it, the cost
//!    of one durable write on this file system (temp + fsync + rename + fsync of the
//!    folder), and of one `syncfs`.
//! 2. Wake latency: a handoff renamed into `inbox/` → the handler's first instruction
//!    (`date +%s%N`, appended to a log). loops: the main session is `main: {command:
//!    [handler]}` on a `loops run` daemon (the flood guard lifted so that back-to-back
//!    wakes are each measured); each handoff is dropped only after the previous wake is
//!    recorded. Poller: `poll_watcher.sh` with the same handler; each handoff is dropped
//!    after a random pause of 0–2 s, so drops fall at random points of the poll cycle
//!    (dropping right after the last one finished would always land just after a scan).
//! 3. Per-run overhead including the commit: a domain whose `./run.sh` appends
//!    `date +%s%N` to state.md. Median of each, minus the median of `./run.sh` spawned
//!    bare: loops `execute()` in-process (what the daemon does per run: record, snapshot,
//!    libgit2 commit), `loops trigger writer --json` as a child process (a manual run from
//!    a shell: includes the binary's start), and `sh job.sh WS writer` (what the cron loop
//!    runs per due entry: includes sh's start and two git processes). Interleaved, so
//!    load from elsewhere falls on all of them alike.
//! 4. Idle CPU and RSS: at once, over the same window: `loops run` with 100 loops
//!    (`every: 1h`) and a main session (so it watches the inbox too), `cron_loop.sh` over
//!    100 domains with a 60 s tick (cron's granularity) and with a 1 s tick (second
//!    granularity, which `every:` offers), and `poll_watcher.sh` on an empty inbox. CPU =
//!    utime+stime+cutime+cstime (/proc/PID/stat, clock ticks) summed over the process
//!    tree, the difference across the window (children that come and go, like `sleep`,
//!    are in their parent's cutime once reaped). RSS = VmRSS summed over the tree,
//!    sampled every second, median.
//! 5. Start-up with 1,000 domains (`every:` schedules, so the baseline can read them
//!    all): `loops run` spawn → its "loops daemon started" log line, cold (no `.loops/`)
//!    and warm (a restart), against `cron_loop.sh` spawn → its "ready 1000" line. Same
//!    workspace, interleaved, median.
//!
//! They run in this order, and every workspace is deleted only at the end: on an ext4
//! without a journal (this machine's), creating a file costs more for minutes after many
//! files were deleted, so the throughput run goes first and the start-up run, which
//! deletes `.loops/` before every cold start, last. Leave a few minutes between two runs.
//!
//!   cargo bench --bench compare                 # the full run (about 5 minutes, then the clean-up)
//!   cargo bench --bench compare -- --quick      # a short run (about 75 s, then the clean-up)
//!   options: --only wake|run|idle|startup|jobs  --wakes N  --poll-wakes N  --iters N
//!            --idle-secs S  --domains N  --reps N  --jobs N  --keep
//!
//! Exits 1 if a check fails (a wake, run, commit or job missing).

use loops::engine::loop_run::execute;
use loops::engine::run_context::{RunContext, RunRequest, Trigger};
use loops_core::domain::load_domain;
use loops_core::jobs::queue::{self, JobSpec};
use loops_core::jobs::store::JobStore;
use loops_core::runs::Outcome;
use loops_core::workspace::Workspace;
use loops_testutil::bench::*;
use loops_testutil::process::{clock_ticks_per_second, signal, signal_group, Signal};
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_loops");
const BASELINES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baselines");

fn baseline(script: &str) -> PathBuf {
    Path::new(BASELINES).join(script)
}

/// The domain command both sides run: it appends a state line, so every run has a change
/// to commit.
const RUN_SH: &str = "#!/bin/sh\ndate +%s%N >> state.md\n";

/// The handler of a handoff, for both sides. loops gives a main-session command the paths
/// in `LOOPS_HANDOFFS` and reads `{"completed": [...]}` from it; the poller passes the
/// path as `$1` and reads the exit status.
const HANDLER_SH: &str = r#"#!/bin/sh
t=$(date +%s%N)
if [ $# -gt 0 ]; then
  printf '%s %s\n' "$t" "$1" >> '@LOG@'
  exit 0
fi
printf '%s %s\n' "$t" "$LOOPS_HANDOFFS" >> '@LOG@'
printf '{"completed": ['
sep=
for p in $LOOPS_HANDOFFS; do
  n=${p##*/}
  printf '%s"%s"' "$sep" "${n%.md}"
  sep=,
done
printf ']}\n'
"#;

// ---------------------------------------------------------------------------------------
// Small helpers

fn write_exec(path: &Path, text: &str) {
    write(path, text);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod a file the bench wrote");
}

fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos() as i128
}

/// xorshift64: the pauses need to be spread, not unpredictable.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        Rng((wall_ns() as u64) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn wait_until(what: &str, limit: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > limit {
            eprintln!("timed out after {limit:?} waiting for {what}");
            return false;
        }
        std::thread::sleep(every);
    }
    true
}

fn med(v: &[f64]) -> f64 {
    pct(&sorted(v.to_vec()), 50.0)
}

fn git_count(dir: &Path) -> usize {
    let out = Command::new("git")
        .args(["rev-list", "--count", "HEAD"])
        .current_dir(dir)
        .output()
        .expect("run git rev-list");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Counts the lines appended to a file since the counter was made, reading only what is
/// new each time (the loops index grows to megabytes; rereading it every 5 ms would be
/// load of the bench's own).
struct LineCount {
    path: PathBuf,
    offset: u64,
    lines: usize,
}

impl LineCount {
    fn new(path: PathBuf) -> LineCount {
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        LineCount {
            path,
            offset,
            lines: 0,
        }
    }

    fn poll(&mut self) -> usize {
        if let Ok(mut f) = std::fs::File::open(&self.path) {
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(self.offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                // Only whole lines: a line still being written is counted next time.
                if let Some(last) = buf.iter().rposition(|&b| b == b'\n') {
                    self.lines += buf[..=last].iter().filter(|&&b| b == b'\n').count();
                    self.offset += last as u64 + 1;
                }
            }
        }
        self.lines
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

/// A child in its own process group, with a thread reading its output for a readiness
/// line. Dropping it kills the whole group, so a failed check leaves nothing running.
struct Proc {
    label: String,
    child: Child,
    spawned: Instant,
    ready: mpsc::Receiver<(Instant, String)>,
    /// loops stops on SIGTERM to itself (and stops its children); a script is stopped
    /// by signalling its group, `sleep` included.
    graceful: bool,
}

impl Proc {
    fn spawn(label: &str, mut cmd: Command, marker: &'static str, loops: bool) -> Proc {
        cmd.stdin(Stdio::null()).process_group(0);
        if loops {
            cmd.env("LOOPS_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        }
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let out: Box<dyn Read + Send> = if loops {
            Box::new(child.stderr.take().expect("stderr is piped"))
        } else {
            Box::new(child.stdout.take().expect("stdout is piped"))
        };
        let (tx, rx) = mpsc::channel();
        let name = label.to_string();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if !sent && line.contains(marker) {
                    let _ = tx.send((Instant::now(), line.clone()));
                    sent = true;
                }
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("{name}: {line}");
                }
            }
        });
        Proc {
            label: label.to_string(),
            child,
            spawned,
            ready: rx,
            graceful: loops,
        }
    }

    fn loops_daemon(label: &str, root: &Path) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.arg("--workspace").arg(root).arg("run");
        Proc::spawn(label, cmd, "loops daemon started", true)
    }

    fn script(label: &str, interpreter: &str, args: &[&Path], marker: &'static str) -> Proc {
        let mut cmd = Command::new(interpreter);
        cmd.args(args);
        Proc::spawn(label, cmd, marker, false)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time from spawn to the readiness line, and the line.
    fn wait_ready(&self, limit: Duration) -> (Duration, String) {
        match self.ready.recv_timeout(limit) {
            Ok((at, line)) => (at - self.spawned, line),
            Err(_) => panic!("{} did not say it was ready within {limit:?}", self.label),
        }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.pid() as i32;
        // A process (group) this bench started and has not reaped, so the id is still its own.
        if self.graceful {
            signal(pid, Signal::TERM);
        } else {
            signal_group(pid, Signal::TERM);
        }
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{} did not stop within 30 s; killing its group", self.label);
        // As above: not reaped yet, so the group id is still the child's.
        signal_group(pid, Signal::KILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// /proc: process trees, CPU and memory

/// The fields of /proc/PID/stat after the command name (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

/// The process and all its descendants, found through every process's parent id.
fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            if let Some(&ppid) = f.get(1) {
                children.entry(ppid as u32).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// utime + stime + cutime + cstime over the tree, in clock ticks.
fn tree_ticks(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .filter_map(stat_fields)
        .filter_map(|f| f.get(11..15).map(|t| t.iter().sum::<u64>()))
        .sum()
}

/// CPU time of each live thread in the tree, in ms, from the scheduler's own count
/// (`se.sum_exec_runtime` in /proc/PID/task/TID/sched): exact, where clock ticks are 10 ms.
fn thread_runtimes(root: u32) -> HashMap<(u32, u32), f64> {
    let mut out = HashMap::new();
    for pid in tree(root) {
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ms = std::fs::read_to_string(t.path().join("sched"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("se.sum_exec_runtime"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if let Some(ms) = ms {
                out.insert((pid, tid), ms);
            }
        }
    }
    out
}

/// CPU used across a window by the threads alive at both ends (those that came or went
/// in between are not in it: a lower bound, used beside the tick count).
fn runtime_delta(before: &HashMap<(u32, u32), f64>, after: &HashMap<(u32, u32), f64>) -> f64 {
    after
        .iter()
        .filter_map(|(k, a)| before.get(k).map(|b| a - b))
        .sum()
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn tree_rss_kb(root: u32) -> u64 {
    tree(root).into_iter().map(|p| status_kb(p, "VmRSS:")).sum()
}

fn clk_tck() -> f64 {
    clock_ticks_per_second() as f64
}

// ---------------------------------------------------------------------------------------
// The report

/// One line of the side-by-side table. Both values are costs (lower is better).
struct Row {
    key: String,
    figure: String,
    baseline: String,
    loops_text: String,
    base_text: String,
    loops: f64,
    base: f64,
    /// When loops measured 0: the measurement's resolution, so the ratio is a bound.
    floor: Option<f64>,
}

impl Row {
    fn both_zero(&self) -> bool {
        self.loops <= 0.0 && self.base <= 0.0
    }

    fn ratio(&self) -> (f64, bool) {
        if self.both_zero() {
            return (1.0, false);
        }
        match self.floor {
            Some(f) if self.loops <= 0.0 => (self.base / f, true),
            _ => (self.base / self.loops, false),
        }
    }

    fn ratio_text(&self) -> String {
        if self.both_zero() {
            return "— (both 0)".into();
        }
        let (r, bound) = self.ratio();
        let s = if r >= 100.0 {
            format!("{r:.0}")
        } else if r >= 10.0 {
            format!("{r:.1}")
        } else {
            format!("{r:.2}")
        };
        if bound {
            format!("≥ {s}")
        } else {
            s
        }
    }

    fn better(&self) -> String {
        let (r, bound) = self.ratio();
        if self.both_zero() {
            "even (both under the resolution)".into()
        } else if bound {
            format!("loops, ≥ {}×", trim_ratio(r))
        } else if !r.is_finite() {
            "—".into()
        } else if r > 1.1 {
            format!("loops, {}×", trim_ratio(r))
        } else if r < 1.0 / 1.1 {
            format!("**{}, {}×**", self.baseline_short(), trim_ratio(1.0 / r))
        } else {
            "even (within 10 %)".into()
        }
    }

    fn baseline_short(&self) -> String {
        let first = self
            .baseline
            .split_whitespace()
            .next()
            .unwrap_or("baseline");
        let first = first.trim_matches('`');
        first.strip_suffix("'s").unwrap_or(first).to_string()
    }
}

fn trim_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    failures: Vec<String>,
}

impl Report {
    fn fail(&mut self, s: String) {
        eprintln!("CHECK FAILED: {s}");
        self.failures.push(s);
    }

    fn add(&mut self, row: Row) {
        let (r, bound) = row.ratio();
        println!(
            "RESULT compare {}: loops {} | {} {} | baseline/loops = {}{:.2} -> {}",
            row.key,
            row.loops_text,
            row.baseline,
            row.base_text,
            if bound { ">=" } else { "" },
            r,
            row.better().replace("**", "")
        );
        self.rows.push(row);
    }

    fn print(&self) {
        println!(
            "\n== side by side (ratio = baseline / loops of a cost: above 1, loops costs less)\n"
        );
        println!(
            "| Figure | loops | Baseline | Baseline measured | Ratio baseline/loops | Better |"
        );
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.figure,
                r.loops_text,
                r.baseline,
                r.base_text,
                r.ratio_text(),
                r.better()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Wake latency

fn handoff_text(id: &str) -> String {
    format!(
        "---\nid: {id}\nfrom: bench\nto: main\ncreated: {}\npriority: normal\n---\n# Bench handoff {id}\n\nNothing to do.\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

fn in_done(inbox: &Path, id: &str) -> bool {
    let name = format!("{id}.md");
    std::fs::read_dir(inbox.join("done"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|m| m.path().join(&name).exists())
}

fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Where a side's handler logs its stamps: beside its workspace, not in it.
fn stamps_log(root: &Path) -> PathBuf {
    root.parent().unwrap_or(root).join("stamps.log")
}

/// Drops `n` handoffs one at a time; returns (latency to the handler's stamp, rename →
/// file in done/), both in ms.
fn drop_handoffs(
    side: &str,
    root: &Path,
    n: usize,
    warm: usize,
    mut pause: impl FnMut() -> Duration,
    mut settled: impl FnMut(usize) -> bool,
    report: &mut Report,
) -> (Vec<f64>, Vec<f64>) {
    let inbox = root.join("inbox");
    let log = stamps_log(root);
    let mut renamed: HashMap<String, i128> = HashMap::new();
    let mut e2e = Vec::new();
    for i in 0..warm + n {
        std::thread::sleep(pause());
        let id = format!("{side}-{i:04}");
        let tmp = inbox.join(".tmp").join(format!("{id}.md"));
        std::fs::write(&tmp, handoff_text(&id)).expect("write a handoff");
        std::fs::rename(&tmp, inbox.join(format!("{id}.md"))).expect("rename a handoff");
        let at_wall = wall_ns();
        let at = Instant::now();
        if !wait_until(
            &format!("{id} in inbox/done/"),
            Duration::from_secs(30),
            Duration::from_micros(200),
            || in_done(&inbox, &id),
        ) {
            report.fail(format!("{side}: handoff {id} never reached inbox/done/"));
            break;
        }
        let e = ms(at.elapsed());
        if !wait_until(
            &format!("{side}: the wake of {id} to be over"),
            Duration::from_secs(30),
            Duration::from_micros(200),
            || settled(i),
        ) {
            report.fail(format!("{side}: the wake of {id} was never recorded"));
            break;
        }
        if i >= warm {
            e2e.push(e);
            renamed.insert(id, at_wall);
        }
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut lat = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(t) = it.next().and_then(|t| t.parse::<i128>().ok()) else {
            continue;
        };
        let paths: Vec<&str> = it.collect();
        if paths.len() != 1 {
            report.fail(format!(
                "{side}: a wake was given {} handoffs, not one",
                paths.len()
            ));
            continue;
        }
        let stem = Path::new(paths[0])
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if let Some(r) = renamed.get(&stem) {
            lat.push((t - r) as f64 / 1e6);
        }
    }
    if lat.len() != n {
        report.fail(format!(
            "{side}: {} of {n} wakes stamped by the handler",
            lat.len()
        ));
    }
    (lat, e2e)
}

fn wake(args: &Args, parent: &Path, report: &mut Report) {
    let n_loops: usize = args.num("wakes", if args.quick { 20 } else { 200 });
    let n_poll: usize = args.num("poll-wakes", if args.quick { 6 } else { 60 });
    println!(
        "\n-- 2. wake latency: handoff renamed into inbox/ -> the handler's first instruction; loops {n_loops} wakes, poller {n_poll}"
    );

    // loops: a daemon whose main session is the handler.
    let dir = parent.join("wake-loops");
    let root = dir.join("ws");
    let log = stamps_log(&root);
    let handler = dir.join("handler.sh");
    write_exec(
        &handler,
        &HANDLER_SH.replace("@LOG@", &log.display().to_string()),
    );
    // The flood guard (60 wakes a minute by default) would space back-to-back wakes a
    // second apart: lifted, so that every wake is measured.
    workspace(
        &root,
        &format!(
            "main:\n  command: [\"{}\"]\n  timeout: 60s\n  max_wakes_per_minute: 1000000\n",
            handler.display()
        ),
    );
    std::fs::create_dir_all(root.join("inbox/.tmp")).expect("mkdir inbox/.tmp");
    git_commit_all(&root, "bench workspace");
    let daemon = Proc::loops_daemon("loops run (wake)", &root);
    daemon.wait_ready(Duration::from_secs(60));
    let mut rng = Rng::new();
    let runs = root.join(".loops/runs/main.jsonl");
    let (lat_l, e2e_l) = drop_handoffs(
        "loops",
        &root,
        n_loops,
        3,
        || Duration::from_millis(20 + rng.below(30)),
        |i| lines_of(&runs) > i,
        report,
    );
    drop(daemon);

    // The poller, with the same handler.
    let dir = parent.join("wake-poll");
    let root = dir.join("ws");
    let log = stamps_log(&root);
    let handler = dir.join("handler.sh");
    write_exec(
        &handler,
        &HANDLER_SH.replace("@LOG@", &log.display().to_string()),
    );
    write(&root.join(".gitignore"), "inbox/.tmp/\n");
    git_init(&root);
    std::fs::create_dir_all(root.join("inbox/.tmp")).expect("mkdir inbox/.tmp");
    git_commit_all(&root, "bench workspace");
    let poller = Proc::script(
        "poll_watcher.sh",
        "sh",
        &[&baseline("poll_watcher.sh"), &root, &handler],
        "watching",
    );
    poller.wait_ready(Duration::from_secs(10));
    let mut rng = Rng::new();
    let (lat_p, e2e_p) = drop_handoffs(
        "poll",
        &root,
        n_poll,
        1,
        || Duration::from_millis(rng.below(2000)),
        |_| true,
        report,
    );
    drop(poller);
    let commits = git_count(&root);
    if commits < 2 {
        report.fail("poller: no commit made".into());
    }

    println!("{}", summary("loops: rename -> handler start", &lat_l));
    println!("{}", summary("loops: rename -> file in done/", &e2e_l));
    println!("{}", summary("poller: rename -> handler start", &lat_p));
    println!("{}", summary("poller: rename -> file in done/", &e2e_p));
    let (sl, sp) = (sorted(lat_l), sorted(lat_p));
    for (p, key) in [(50.0, "p50"), (99.0, "p99")] {
        let (l, b) = (pct(&sl, p), pct(&sp, p));
        report.add(Row {
            key: format!("wake-latency-{key}"),
            figure: format!(
                "Wake latency {key}: handoff renamed into `inbox/` → handler's first instruction (loops n={}, poller n={})",
                sl.len(),
                sp.len()
            ),
            baseline: "poll_watcher.sh (2 s rescan)".into(),
            loops_text: format!("{l:.1} ms"),
            base_text: format!("{b:.0} ms"),
            loops: l,
            base: b,
            floor: None,
        });
    }
}

// ---------------------------------------------------------------------------------------
// 3. Per-run overhead

fn writer_domain(root: &Path) {
    write(
        &root.join("domains/writer/config.yaml"),
        "schedule:\n  every: 1h\npayload:\n  kind: command\n  command: [\"./run.sh\"]\n",
    );
    write_exec(&root.join("domains/writer/run.sh"), RUN_SH);
    write(&root.join("domains/writer/state.md"), "0\n");
}

fn timed(cmd: &mut Command) -> (f64, std::process::Output) {
    let t = Instant::now();
    let out = cmd.output().expect("run a command");
    (ms(t.elapsed()), out)
}

fn run_overhead(args: &Args, parent: &Path, report: &mut Report) {
    let iters: usize = args.num("iters", if args.quick { 20 } else { 100 });
    let warm = 3;
    println!(
        "\n-- 3. per-run overhead incl. the commit: {iters} runs of each, interleaved (+{warm} warm-up)"
    );
    let bare_root = parent.join("run-bare");
    writer_domain(&bare_root);
    let cron_root = parent.join("run-cron");
    write(&cron_root.join(".gitignore"), ".cron/\n");
    writer_domain(&cron_root);
    git_init(&cron_root);
    git_commit_all(&cron_root, "bench workspace");
    let cli_root = parent.join("run-trigger");
    workspace(&cli_root, "");
    writer_domain(&cli_root);
    git_commit_all(&cli_root, "bench workspace");
    let lib_root = parent.join("run-execute");
    workspace(&lib_root, "");
    writer_domain(&lib_root);
    git_commit_all(&lib_root, "bench workspace");

    let ws = Workspace::open(&lib_root).expect("open the execute() workspace");
    let def = load_domain(&ws, "writer")
        .def
        .expect("the writer loop is valid");
    let ctx = RunContext::new(Arc::new(ws.clone()));
    assert!(ctx.committer.is_some(), "the committer must be on");
    let rt = loops::daemon::runtime().expect("a tokio runtime");

    let (mut bare, mut cron, mut trig, mut exec) = (vec![], vec![], vec![], vec![]);
    for i in 0..warm + iters {
        let (b, out) =
            timed(Command::new("./run.sh").current_dir(bare_root.join("domains/writer")));
        assert!(out.status.success(), "bare ./run.sh failed");

        let (c, out) = timed(
            Command::new("sh")
                .arg(baseline("job.sh"))
                .arg(&cron_root)
                .arg("writer"),
        );
        if !out.status.success() {
            report.fail(format!(
                "job.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }

        let (t, out) = timed(
            Command::new(BIN)
                .arg("--workspace")
                .arg(&cli_root)
                .args(["trigger", "writer", "--json"]),
        );
        let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if rec["outcome"] != "acted" || rec["commit"].is_null() {
            report.fail(format!(
                "loops trigger: not an acted, committed run: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }

        let req = RunRequest::new(Trigger::Manual, None, 1);
        let t0 = Instant::now();
        let r = rt.block_on(execute(&ctx, &def, &req, None, None));
        let e = ms(t0.elapsed());
        if r.outcome != Outcome::Acted || r.commit.is_none() {
            report.fail(format!("execute(): not an acted, committed run: {r:?}"));
        }
        if i >= warm {
            bare.push(b);
            cron.push(c);
            trig.push(t);
            exec.push(e);
        }
    }
    let runs = warm + iters + 1;
    for (label, root) in [
        ("job.sh", &cron_root),
        ("loops trigger", &cli_root),
        ("execute()", &lib_root),
    ] {
        let c = git_count(root);
        if c != runs {
            report.fail(format!("{label}: {c} commits, expected {runs}"));
        }
    }
    println!("{}", summary("bare ./run.sh (std::process)", &bare));
    println!(
        "{}",
        summary("cron: sh job.sh (run + git add + commit)", &cron)
    );
    println!(
        "{}",
        summary("loops trigger writer --json (process)", &trig)
    );
    println!(
        "{}",
        summary("loops execute() (the daemon's per-run)", &exec)
    );
    let b = med(&bare);
    let (c, t, e) = (med(&cron), med(&trig), med(&exec));
    report.add(Row {
        key: "run-overhead-daemon".into(),
        figure: "Per-run overhead incl. the commit, p50 minus the bare `./run.sh`: what the scheduler runs per due entry".into(),
        baseline: "cron_loop.sh's job.sh (git CLI)".into(),
        loops_text: format!("{:.1} ms (execute() {e:.1} − bare {b:.1})", e - b),
        base_text: format!("{:.1} ms ({c:.1} − {b:.1})", c - b),
        loops: e - b,
        base: c - b,
        floor: None,
    });
    report.add(Row {
        key: "run-overhead-cli".into(),
        figure:
            "Same, a run started from a shell: `loops trigger NAME` (the binary's start included)"
                .into(),
        baseline: "`sh job.sh WS NAME` (git CLI)".into(),
        loops_text: format!("{:.1} ms ({t:.1} − {b:.1})", t - b),
        base_text: format!("{:.1} ms ({c:.1} − {b:.1})", c - b),
        loops: t - b,
        base: c - b,
        floor: None,
    });
}

// ---------------------------------------------------------------------------------------
// 4. Idle CPU and RSS

fn domains_every(root: &Path, n: usize, every: impl Fn(usize) -> String) {
    for i in 0..n {
        let d = root.join(format!("domains/d{i:04}"));
        write(
            &d.join("config.yaml"),
            &format!(
                "description: bench loop {i}\nschedule:\n  every: {}\npayload:\n  kind: command\n  command: [\"./run.sh\"]\ntimeout: 60s\nconcurrency: forbid\nretry: {{ max_attempts: 3, backoff: exponential, delay: 30s, jitter: 0.2 }}\nchannel:\n  platform: discord\n  name: agent-commons\n",
                every(i)
            ),
        );
        write_exec(&d.join("run.sh"), RUN_SH);
    }
}

fn idle(args: &Args, parent: &Path, report: &mut Report) {
    let window: u64 = args.num("idle-secs", if args.quick { 10 } else { 60 });
    let settle = if args.quick { 3 } else { 5 };
    println!("\n-- 4. idle: 100 loops every 1h; CPU over a {window} s window, all sides at once");

    // Slots are whole hours since the epoch: a window across one would not be idle.
    let now = chrono::Utc::now();
    let into_hour = {
        use chrono::Timelike;
        (now.minute() * 60 + now.second()) as u64
    };
    let need = settle + window + 20;
    if 3600 - into_hour < need {
        let wait = 3600 - into_hour + 5;
        println!(
            "  (waiting {wait} s: the window would cross a whole hour, when every loop fires)"
        );
        std::thread::sleep(Duration::from_secs(wait));
    }

    let lroot = parent.join("idle-loops");
    let handler = parent.join("idle-handler.sh");
    write_exec(&handler, "#!/bin/sh\necho '{\"completed\": []}'\n");
    workspace(
        &lroot,
        &format!("main:\n  command: [\"{}\"]\n", handler.display()),
    );
    domains_every(&lroot, 100, |_| "1h".into());
    git_commit_all(&lroot, "bench workspace");
    let croot = parent.join("idle-cron");
    write(&croot.join(".gitignore"), ".cron/\n");
    domains_every(&croot, 100, |_| "1h".into());
    git_init(&croot);
    git_commit_all(&croot, "bench workspace");
    let proot = parent.join("idle-poll");
    write(&proot.join(".gitignore"), "inbox/.tmp/\n");
    git_init(&proot);
    std::fs::create_dir_all(proot.join("inbox")).expect("mkdir inbox");
    git_commit_all(&proot, "bench workspace");

    let cron_sh = baseline("cron_loop.sh");
    let poll_sh = baseline("poll_watcher.sh");
    let procs = [
        Proc::loops_daemon("loops run (idle)", &lroot),
        Proc::script(
            "cron_loop.sh 60",
            "bash",
            &[&cron_sh, &croot, Path::new("60")],
            "ready",
        ),
        Proc::script(
            "cron_loop.sh 1",
            "bash",
            &[&cron_sh, &croot, Path::new("1")],
            "ready",
        ),
        Proc::script(
            "poll_watcher.sh",
            "sh",
            &[&poll_sh, &proot, &handler],
            "watching",
        ),
    ];
    for p in &procs {
        let (_, line) = p.wait_ready(Duration::from_secs(60));
        if p.label.starts_with("cron") && line.trim() != "ready 100" {
            report.fail(format!("{}: said `{line}`, not `ready 100`", p.label));
        }
    }
    std::thread::sleep(Duration::from_secs(settle));
    let t0: Vec<u64> = procs.iter().map(|p| tree_ticks(p.pid())).collect();
    let exact0 = thread_runtimes(procs[0].pid());
    let mut rss: Vec<Vec<f64>> = vec![Vec::new(); procs.len()];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(window) {
        for (i, p) in procs.iter().enumerate() {
            rss[i].push(tree_rss_kb(p.pid()) as f64 / 1024.0);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let t1: Vec<u64> = procs.iter().map(|p| tree_ticks(p.pid())).collect();
    let exact1 = thread_runtimes(procs[0].pid());
    let threads = status_kb(procs[0].pid(), "Threads:");
    let hz = clk_tck();
    let cpu_ms: Vec<f64> = (0..procs.len())
        .map(|i| t1[i].saturating_sub(t0[i]) as f64 / hz * 1e3)
        .collect();
    let rss_med: Vec<f64> = rss.iter().map(Vec::as_slice).map(med).collect();
    for (i, p) in procs.iter().enumerate() {
        println!(
            "  {:<18} CPU over {window} s: {} ticks = {:.0} ms; RSS (tree) median {:.1} MB, max {:.1} MB",
            p.label,
            t1[i].saturating_sub(t0[i]),
            cpu_ms[i],
            rss_med[i],
            rss[i].iter().cloned().fold(0.0, f64::max)
        );
    }
    let exact = runtime_delta(&exact0, &exact1);
    println!(
        "  loops daemon: {threads} threads; its threads' own count of CPU time over the window (se.sum_exec_runtime): {exact:.3} ms"
    );
    drop(procs);

    let tick_ms = 1e3 / hz;
    let names = [
        "",
        "cron_loop.sh (60 s tick)",
        "cron_loop.sh (1 s tick)",
        "poll_watcher.sh (2 s rescan)",
    ];
    for (i, key) in [(1, "cron60"), (2, "cron1"), (3, "poll")] {
        report.add(Row {
            key: format!("idle-cpu-{key}"),
            figure: format!(
                "Idle CPU over {window} s (process tree), loops: 100 loops + inbox watch"
            ),
            baseline: names[i].into(),
            loops_text: format!(
                "{:.0} ms ({} ticks; exact {exact:.2} ms)",
                cpu_ms[0],
                t1[0].saturating_sub(t0[0])
            ),
            base_text: format!("{:.0} ms", cpu_ms[i]),
            loops: cpu_ms[0],
            base: cpu_ms[i],
            floor: Some(tick_ms),
        });
    }
    let both = cpu_ms[1] + cpu_ms[3];
    report.add(Row {
        key: "idle-cpu-cron60+poll".into(),
        figure: format!(
            "Idle CPU over {window} s: loops against the two scripts it replaces, together"
        ),
        baseline: "cron_loop.sh (60 s) + poll_watcher.sh".into(),
        loops_text: format!("{:.0} ms", cpu_ms[0]),
        base_text: format!("{both:.0} ms"),
        loops: cpu_ms[0],
        base: both,
        floor: Some(tick_ms),
    });
    for (i, key) in [(1, "cron60"), (3, "poll")] {
        report.add(Row {
            key: format!("idle-rss-{key}"),
            figure: "Idle RSS (VmRSS summed over the process tree, median)".into(),
            baseline: names[i].into(),
            loops_text: format!("{:.1} MB", rss_med[0]),
            base_text: format!("{:.1} MB", rss_med[i]),
            loops: rss_med[0],
            base: rss_med[i],
            floor: None,
        });
    }
    let both = rss_med[1] + rss_med[3];
    report.add(Row {
        key: "idle-rss-cron60+poll".into(),
        figure: "Idle RSS: loops against the two scripts it replaces, together".into(),
        baseline: "cron_loop.sh (60 s) + poll_watcher.sh".into(),
        loops_text: format!("{:.1} MB", rss_med[0]),
        base_text: format!("{both:.1} MB"),
        loops: rss_med[0],
        base: both,
        floor: None,
    });
}

// ---------------------------------------------------------------------------------------
// 5. Start-up with 1,000 domains

fn startup(args: &Args, parent: &Path, report: &mut Report) {
    let n: usize = args.num("domains", 1000);
    let reps: usize = args.num("reps", if args.quick { 3 } else { 7 });
    println!("\n-- 5. start-up with {n} domains: spawn -> ready, {reps} repetitions, interleaved");
    let root = parent.join("startup");
    workspace(&root, "");
    write(&root.join(".gitignore"), ".loops/\n.cron/\n");
    domains_every(&root, n, |i| format!("{}m", 1 + i % 60));
    git_commit_all(&root, "bench workspace");
    let cron_sh = baseline("cron_loop.sh");
    let expect = format!("ready {n}");

    let (mut cold, mut warm, mut cron) = (vec![], vec![], vec![]);
    let (mut rss_loops, mut rss_cron) = (0.0, 0.0);
    // One unmeasured round first: the binary's and the script's pages come into the cache.
    for rep in 0..=reps {
        let _ = std::fs::remove_dir_all(loops_core::layout::Layout::of(&root).root());
        let mut d = Proc::loops_daemon("loops run (cold)", &root);
        let (c, line) = d.wait_ready(Duration::from_secs(60));
        if !line.contains(&format!("loops={n}")) {
            report.fail(format!("loops run did not schedule {n} loops: {line}"));
        }
        d.stop();
        let mut d = Proc::loops_daemon("loops run (warm)", &root);
        let (w, _) = d.wait_ready(Duration::from_secs(60));
        if rep == 1 {
            std::thread::sleep(Duration::from_secs(1));
            rss_loops = tree_rss_kb(d.pid()) as f64 / 1024.0;
        }
        d.stop();
        let mut s = Proc::script(
            "cron_loop.sh",
            "bash",
            &[&cron_sh, &root, Path::new("60")],
            "ready",
        );
        let (b, line) = s.wait_ready(Duration::from_secs(60));
        if line.trim() != expect {
            report.fail(format!("cron_loop.sh said `{line}`, not `{expect}`"));
        }
        if rep == 1 {
            std::thread::sleep(Duration::from_secs(1));
            rss_cron = tree_rss_kb(s.pid()) as f64 / 1024.0;
        }
        s.stop();
        if rep > 0 {
            cold.push(ms(c));
            warm.push(ms(w));
            cron.push(ms(b));
        }
    }
    println!(
        "{}",
        summary("loops run, cold: spawn -> daemon started", &cold)
    );
    println!(
        "{}",
        summary("loops run, warm: spawn -> daemon started", &warm)
    );
    println!("{}", summary("cron_loop.sh: spawn -> ready", &cron));
    println!("  RSS 1 s after ready: loops {rss_loops:.1} MB, cron_loop.sh {rss_cron:.1} MB");
    let (c, w, b) = (med(&cold), med(&warm), med(&cron));
    for (key, label, v) in [
        ("startup-warm", "warm (a restart)", w),
        ("startup-cold", "cold (first start, no `.loops/`)", c),
    ] {
        report.add(Row {
            key: key.into(),
            figure: format!("Start-up with {n} domains, spawn → ready, p50; loops {label}"),
            baseline: "cron_loop.sh (one grep, bash builtins)".into(),
            loops_text: format!("{v:.0} ms"),
            base_text: format!("{b:.0} ms"),
            loops: v,
            base: b,
            floor: None,
        });
    }
    report.add(Row {
        key: "startup-rss".into(),
        figure: format!("RSS with {n} domains, 1 s after ready"),
        baseline: "cron_loop.sh".into(),
        loops_text: format!("{rss_loops:.1} MB"),
        base_text: format!("{rss_cron:.1} MB"),
        loops: rss_loops,
        base: rss_cron,
        floor: None,
    });
}

// ---------------------------------------------------------------------------------------
// 1. Job throughput

fn shell_spec(cmd: &str) -> JobSpec {
    JobSpec {
        kind: Some("shell".into()),
        params: json!({ "cmd": cmd }),
        source: "bench".into(),
        ..Default::default()
    }
}

/// Waits until `counter` has seen `n` new lines; returns when it did.
fn drained(what: &str, counter: &mut LineCount, n: usize, limit: Duration) -> Option<Instant> {
    let until = Instant::now() + limit;
    loop {
        if counter.poll() >= n {
            return Some(Instant::now());
        }
        if Instant::now() > until {
            eprintln!("{what}: {} of {n} finished after {limit:?}", counter.lines);
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A shell loop that runs `one` (a command line) N times.
fn shell_loop(n: usize, one: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "i=0; while [ $i -lt {n} ]; do {one} || exit 1; i=$((i+1)); done"
    ));
    cmd
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn jobs(args: &Args, parent: &Path, report: &mut Report) {
    let n: usize = args.num("jobs", if args.quick { 200 } else { 1000 });
    println!("\n-- 1. job throughput: {n} jobs `true`, first submit -> last finished");
    let limit = Duration::from_secs(600);

    // What a durable write costs on this file system right now: every submit pays it
    // (the job file, and the id counter), the baseline's write + rename does not.
    let probe = parent.join("fsync-probe");
    let mut durable = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        loops_core::fsutil::atomic_write(&probe.join(format!("{i}.json")), &[b'x'; 400])
            .expect("a durable write in the temporary folder");
        durable.push(ms(t.elapsed()));
    }
    println!(
        "{}",
        summary("durable write (temp+fsync+rename+fsync dir)", &durable)
    );
    let mut syncfs = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        loops_core::fsutil::sync_filesystem(&probe).expect("syncfs of the temporary folder");
        syncfs.push(ms(t.elapsed()));
    }
    println!("{}", summary("one syncfs", &syncfs));

    // loops
    let root = parent.join("jobs-loops");
    // Shell jobs are allowed in the workspace file, as a person who submits them would.
    workspace(&root, "allow_shell_jobs: true\n");
    git_commit_all(&root, "bench workspace");
    let ws = Workspace::open(&root).expect("open the jobs workspace");
    assert!(
        ws.diagnostics.is_empty(),
        "loops.yaml: {:?}",
        ws.diagnostics
    );
    let store = JobStore::new(&ws);
    let daemon = Proc::loops_daemon("loops run (jobs)", &root);
    daemon.wait_ready(Duration::from_secs(60));
    let index = root.join(".loops/jobs/done/index.jsonl");
    let mut warmup = LineCount::new(index.clone());
    for _ in 0..3 {
        queue::submit(&store, &shell_spec("true"), chrono::Utc::now(), None).expect("submit");
    }
    if drained("loops warm-up", &mut warmup, 3, Duration::from_secs(30)).is_none() {
        report.fail("loops: warm-up jobs did not finish".into());
    }

    let mut count = LineCount::new(index.clone());
    let mut calls = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        queue::submit(&store, &shell_spec("true"), chrono::Utc::now(), None).expect("submit");
        calls.push(ms(t.elapsed()));
    }
    let l_submit = t0.elapsed();
    println!("{}", summary("loops: one queue::submit call", &calls));
    let l_lib = drained("loops (in-process submit)", &mut count, n, limit).map(|t| t - t0);

    // The same from 8 threads of this process, and in batches: the submits share flushes.
    let mut count = LineCount::new(index.clone());
    let flushes = store.flushes();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for i in 0..8 {
            let store = &store;
            s.spawn(move || {
                for _ in 0..(n / 8 + usize::from(i < n % 8)) {
                    queue::submit(store, &shell_spec("true"), chrono::Utc::now(), None)
                        .expect("submit");
                }
            });
        }
    });
    let l_threads_submit = t0.elapsed();
    let l_threads_flushes = store.flushes() - flushes;
    let l_threads = drained("loops (8 submitting threads)", &mut count, n, limit).map(|t| t - t0);

    let mut count = LineCount::new(index.clone());
    let flushes = store.flushes();
    let t0 = Instant::now();
    let mut left = n;
    while left > 0 {
        let specs = vec![shell_spec("true"); left.min(100)];
        left -= specs.len();
        queue::submit_many(&store, &specs, chrono::Utc::now(), &|_| None).expect("submit_many");
    }
    let l_batch_submit = t0.elapsed();
    let l_batch_flushes = store.flushes() - flushes;
    let l_batch = drained("loops (batches of 100)", &mut count, n, limit).map(|t| t - t0);
    println!(
        "  loops submitting: one by one {:.2} s; 8 threads {:.2} s ({l_threads_flushes} syncfs); batches of 100 {:.2} s ({l_batch_flushes} syncfs)",
        l_submit.as_secs_f64(),
        l_threads_submit.as_secs_f64(),
        l_batch_submit.as_secs_f64()
    );

    let mut count = LineCount::new(index.clone());
    let one = format!(
        "{} --workspace {} jobs submit shell --params '{{\"cmd\": \"true\"}}' >/dev/null",
        sh_quote(Path::new(BIN)),
        sh_quote(&root)
    );
    let t0 = Instant::now();
    let st = shell_loop(n, &one).status().expect("run the submit loop");
    let l_cli_submit = t0.elapsed();
    if !st.success() {
        report.fail("loops jobs submit failed in the shell loop".into());
    }
    let l_cli = drained("loops (shell-loop submit)", &mut count, n, limit).map(|t| t - t0);
    drop(daemon);
    let text = std::fs::read_to_string(&index).unwrap_or_default();
    let done = text.lines().count();
    let completed = text.lines().filter(|l| l.contains("\"completed\"")).count();
    if done != 4 * n + 3 || completed != done {
        report.fail(format!(
            "loops: {done} jobs in the index ({completed} completed), expected {}",
            4 * n + 3
        ));
    }

    // The polling worker.
    let q = parent.join("jobs-base/q");
    std::fs::create_dir_all(q.join(".tmp")).expect("mkdir the queue");
    let worker = Proc::script(
        "job_worker.sh",
        "sh",
        &[&baseline("job_worker.sh"), &q],
        "working",
    );
    worker.wait_ready(Duration::from_secs(10));
    let index = q.join("done/index.log");
    let mut seq = 0usize;
    let enqueue = |seq: &mut usize| {
        *seq += 1;
        let tmp = q.join(format!(".tmp/{:08}.job", *seq));
        std::fs::write(&tmp, "true\n").expect("write a job file");
        std::fs::rename(&tmp, q.join(format!("{:08}.job", *seq))).expect("rename a job file");
    };
    let mut warmup = LineCount::new(index.clone());
    for _ in 0..3 {
        enqueue(&mut seq);
    }
    if drained("worker warm-up", &mut warmup, 3, Duration::from_secs(30)).is_none() {
        report.fail("worker: warm-up jobs did not finish".into());
    }
    let mut count = LineCount::new(index.clone());
    let t0 = Instant::now();
    for _ in 0..n {
        enqueue(&mut seq);
    }
    let b_submit = t0.elapsed();
    let b_lib = drained("worker (in-process submit)", &mut count, n, limit).map(|t| t - t0);

    let mut count = LineCount::new(index.clone());
    let one = format!(
        "sh {} {} true",
        sh_quote(&baseline("enqueue.sh")),
        sh_quote(&q)
    );
    let t0 = Instant::now();
    let st = shell_loop(n, &one).status().expect("run the enqueue loop");
    let b_cli_submit = t0.elapsed();
    if !st.success() {
        report.fail("enqueue.sh failed in the shell loop".into());
    }
    let b_cli = drained("worker (shell-loop submit)", &mut count, n, limit).map(|t| t - t0);
    drop(worker);
    let text = std::fs::read_to_string(&index).unwrap_or_default();
    let ok = text.lines().filter(|l| l.ends_with(" 0")).count();
    if ok != 2 * n + 3 {
        report.fail(format!(
            "worker: {ok} jobs ended with exit 0, expected {}",
            2 * n + 3
        ));
    }

    let rate = |d: Option<Duration>| d.map(|d| n as f64 / d.as_secs_f64()).unwrap_or(0.0);
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
    println!(
        "  in-process submit: loops {:.2} s to submit, {:.2} s to drain ({:.0} jobs/s); worker {:.2} s to submit, {:.2} s to drain ({:.0} jobs/s)",
        l_submit.as_secs_f64(), secs(l_lib), rate(l_lib),
        b_submit.as_secs_f64(), secs(b_lib), rate(b_lib)
    );
    println!(
        "  shell-loop submit: loops {:.2} s to submit, {:.2} s to drain ({:.0} jobs/s); worker {:.2} s to submit, {:.2} s to drain ({:.0} jobs/s)",
        l_cli_submit.as_secs_f64(), secs(l_cli), rate(l_cli),
        b_cli_submit.as_secs_f64(), secs(b_cli), rate(b_cli)
    );
    for (key, how, l, b, ls, bs) in [
        (
            "jobs-inprocess",
            "submitted from one process, back to back (`queue::submit` / write + rename)",
            l_lib,
            b_lib,
            l_submit,
            b_submit,
        ),
        (
            "jobs-threads",
            "submitted from one process, 8 threads at once (`queue::submit`, flushes shared / write + rename)",
            l_threads,
            b_lib,
            l_threads_submit,
            b_submit,
        ),
        (
            "jobs-batch",
            "submitted from one process in batches of 100 (`queue::submit_many` / write + rename)",
            l_batch,
            b_lib,
            l_batch_submit,
            b_submit,
        ),
        (
            "jobs-shell",
            "submitted from a shell loop (`loops jobs submit` / `enqueue.sh`, one process per job)",
            l_cli,
            b_cli,
            l_cli_submit,
            b_cli_submit,
        ),
    ] {
        report.add(Row {
            key: key.into(),
            figure: format!("Job throughput, {n} jobs `true` {how}: first submit → last finished"),
            baseline: "job_worker.sh (2 s rescan, serial)".into(),
            loops_text: format!(
                "{:.2} s = {:.0} jobs/s (submitting {:.2} s)",
                secs(l),
                rate(l),
                ls.as_secs_f64()
            ),
            base_text: format!(
                "{:.2} s = {:.0} jobs/s (submitting {:.2} s)",
                secs(b),
                rate(b),
                bs.as_secs_f64()
            ),
            loops: secs(l),
            base: secs(b),
            floor: None,
        });
    }
}

// ---------------------------------------------------------------------------------------

fn main() {
    let args = Args::parse();
    let only = args.value("only");
    let want = |s: &str| only.as_deref().is_none_or(|o| o == s);
    println!(
        "== compare: loops against cron_loop.sh, poll_watcher.sh and job_worker.sh ({})",
        if args.quick { "quick" } else { "full" }
    );
    println!("{}", machine());
    println!("loops binary: {BIN}");
    println!("baselines: {BASELINES}");
    let tmp = tempdir(&args, "loops-bench-compare-");
    println!("workspaces under {}", tmp.path().display());
    let t = Instant::now();
    let mut report = Report::default();
    type Section = fn(&Args, &Path, &mut Report);
    let sections: [(&str, Section); 5] = [
        ("jobs", jobs),
        ("wake", wake),
        ("run", run_overhead),
        ("idle", idle),
        ("startup", startup),
    ];
    for (name, section) in sections {
        if want(name) {
            let t = Instant::now();
            section(&args, tmp.path(), &mut report);
            println!("  ({name}: {:.0} s)", t.elapsed().as_secs_f64());
        }
    }
    report.print();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\ntook {:.0} s; loadavg at the end: {}",
        t.elapsed().as_secs_f64(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !args.flag("keep") {
        // Thousands of files: on a busy disk this takes a while, and is not measured.
        print!("removing the temporary workspaces... ");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let t = Instant::now();
        drop(tmp);
        println!("{:.0} s", t.elapsed().as_secs_f64());
    } else {
        keep(&args, tmp);
    }
    if !report.failures.is_empty() {
        eprintln!("{} check(s) failed:", report.failures.len());
        for f in &report.failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}
