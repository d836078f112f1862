//! Memory over time: the release daemon (`loops run`) on a temporary workspace with N
//! command loops, each `schedule: {every: 1s}` appending a line to its own `state.md`, so
//! every run is a commit. The daemon's VmRSS (with RssAnon / RssFile and the peak VmHWM)
//! is read from /proc every interval and printed, with the commits made so far, then a
//! `RESULT` line: the first and last samples and the growth over the second half of the
//! run, which is what says whether memory levels off.
//!
//! Knobs are environment variables, with defaults that finish in about a minute:
//!
//!   LOOPS_MEM_LOOPS=20       loops, each every 1s
//!   LOOPS_MEM_SECS=60        how long the daemon runs
//!   LOOPS_MEM_SAMPLE=5       seconds between samples
//!   LOOPS_MEM_COMMIT=1       0 sets `git.commit: false` (the comparison without commits)
//!   LOOPS_MEM_CONCURRENT=    `limits.max_concurrent_jobs` (unset: the default, 4)
//!   LOOPS_MEM_BIN=           another `loops` binary to measure (an older build)
//!   LOOPS_MEM_KEEP=1         keep the workspace
//!
//!   cargo bench --bench memory                          # 20 loops, 60 s, every 5 s
//!   LOOPS_MEM_LOOPS=100 LOOPS_MEM_SECS=3600 LOOPS_MEM_SAMPLE=60 \
//!     nice -n 19 cargo bench --bench memory             # the one-hour figure
//!
//! The binary is the one cargo builds for this bench (`CARGO_BIN_EXE_loops`, the `bench`
//! profile: release settings) unless LOOPS_MEM_BIN names another.

use loops_testutil::bench::*;
use loops_testutil::process::{signal_child, Signal};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| {
            eprintln!("{name}: `{v}` is not a whole number");
            std::process::exit(2)
        }),
        _ => default,
    }
}

/// Fields of /proc/PID/status, in kB.
fn status_kb(pid: u32, keys: &[&str]) -> Vec<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    keys.iter()
        .map(|k| {
            text.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

fn commits(root: &Path) -> u64 {
    Command::new("git")
        .args(["rev-list", "--count", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn stop(mut child: Child) {
    signal_child(&child, Signal::TERM);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("daemon did not stop within 60 s of SIGTERM; killed");
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let loops = env_num("LOOPS_MEM_LOOPS", 20);
    let secs = env_num("LOOPS_MEM_SECS", 60);
    let sample = env_num("LOOPS_MEM_SAMPLE", 5).max(1);
    let commit = env_num("LOOPS_MEM_COMMIT", 1) != 0;
    let concurrent = std::env::var("LOOPS_MEM_CONCURRENT")
        .ok()
        .filter(|v| !v.is_empty());
    let bin = std::env::var("LOOPS_MEM_BIN")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_loops").to_string());
    let keep = env_num("LOOPS_MEM_KEEP", 0) != 0;

    println!("{}", machine());
    println!(
        "memory: {loops} loops every 1s, git.commit: {commit}, {secs} s, a sample every {sample} s, max_concurrent_jobs {}; binary {bin}",
        concurrent.as_deref().unwrap_or("default")
    );

    let dir = tempfile::Builder::new()
        .prefix("loops-bench-memory-")
        .tempdir()
        .unwrap();
    let root = dir.path().to_path_buf();
    let mut yaml = format!("git:\n  commit: {commit}\n");
    if let Some(c) = &concurrent {
        yaml.push_str(&format!("limits:\n  max_concurrent_jobs: {c}\n"));
    }
    workspace(&root, &yaml);
    for i in 0..loops {
        write(
            &root.join(format!("domains/m{i:03}/config.yaml")),
            "schedule:\n  every: 1s\npayload:\n  kind: command\n  command: [\"sh\", \"-c\", \"date +%s%N >> \\\"$LOOPS_DOMAIN/state.md\\\"\"]\n",
        );
        write(&root.join(format!("domains/m{i:03}/state.md")), "");
    }
    git_commit_all(&root, "bench workspace");

    let child = Command::new(&bin)
        .args(["run", "--workspace"])
        .arg(&root)
        .env("LOOPS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn loops run");
    let pid = child.id();
    // The clock starts once the daemon holds its workspace (its lock file is there), so
    // the first sample is the started daemon, not the process before its re-exec.
    let lock = root.join(".loops/daemon.lock");
    let wait = Instant::now();
    while !lock.exists() && wait.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "t_s", "rss_mb", "anon_mb", "file_mb", "hwm_mb", "commits"
    );
    let mut rows: Vec<(f64, f64)> = Vec::new();
    let mut next = Duration::ZERO;
    loop {
        let now = start.elapsed();
        if now < next {
            std::thread::sleep(next - now);
        }
        let t = start.elapsed().as_secs_f64();
        let kb = status_kb(pid, &["VmRSS:", "RssAnon:", "RssFile:", "VmHWM:"]);
        let mb = |k: u64| k as f64 / 1024.0;
        println!(
            "{:>7.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9}",
            t,
            mb(kb[0]),
            mb(kb[1]),
            mb(kb[2]),
            mb(kb[3]),
            commits(&root)
        );
        rows.push((t, mb(kb[0])));
        if next.as_secs() >= secs {
            break;
        }
        next += Duration::from_secs(sample);
    }
    stop(child);

    let (first, last) = (rows[0].1, rows[rows.len() - 1].1);
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    // The growth over the second half, per 10 minutes: near zero once memory has levelled
    // off, the run's own slope while it keeps growing.
    let mid = rows.len() / 2;
    let (t0, r0) = rows[mid];
    let (t1, r1) = rows[rows.len() - 1];
    let slope = if t1 > t0 {
        (r1 - r0) / (t1 - t0) * 600.0
    } else {
        0.0
    };
    println!(
        "RESULT memory: {loops} loops, commit {commit}, {secs} s: VmRSS first {first:.1} MB, last {last:.1} MB, max {max:.1} MB; second half {:+.1} MB per 10 min; {} commits",
        slope,
        commits(&root)
    );
    if keep {
        println!("workspace kept at {}", dir.keep().display());
    }
}
