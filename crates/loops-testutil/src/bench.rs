//! Helpers shared by the benchmark binaries (`harness = false`, plain std timing): the
//! command line, percentiles and summaries, workspace skeletons, the machine's description.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Command-line flags after `cargo bench --bench NAME --`. Cargo itself adds `--bench`,
/// which is ignored.
pub struct Args {
    pub quick: bool,
    raw: Vec<String>,
}

impl Args {
    pub fn parse() -> Args {
        let raw: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        if raw.iter().any(|a| a == "--help" || a == "-h") {
            println!("{}", usage());
            std::process::exit(0);
        }
        Args {
            quick: raw.iter().any(|a| a == "--quick"),
            raw,
        }
    }

    /// The value of `--name VALUE` (or `--name=VALUE`).
    pub fn value(&self, name: &str) -> Option<String> {
        let flag = format!("--{name}");
        let mut it = self.raw.iter();
        while let Some(a) = it.next() {
            if *a == flag {
                return it.next().cloned();
            }
            if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return Some(v.to_string());
            }
        }
        None
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.value(name) {
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{name}: `{v}` is not a number");
                std::process::exit(2)
            }),
            None => default,
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.raw.iter().any(|a| *a == format!("--{name}"))
    }
}

fn usage() -> &'static str {
    "options: --quick (short run), and per bench: see docs/performance.md"
}

/// Nearest-rank percentile of an ascending slice (p in 0..=100).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A summary line: n, min, p50, p90, p99, max (milliseconds).
pub fn summary(label: &str, samples: &[f64]) -> String {
    let s = sorted(samples.to_vec());
    format!(
        "{label:<44} n={:<5} min={:>8.3} p50={:>8.3} p90={:>8.3} p99={:>8.3} max={:>8.3} ms",
        s.len(),
        pct(&s, 0.0),
        pct(&s, 50.0),
        pct(&s, 90.0),
        pct(&s, 99.0),
        pct(&s, 100.0)
    )
}

/// `git init` the folder, with a local identity so commits never depend on the host.
pub fn git_init(dir: &Path) {
    let run = |args: &[&str]| {
        let st = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git must be installed to run the benchmarks");
        assert!(
            st.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    run(&["init", "-q"]);
    run(&["config", "user.name", "loops-bench"]);
    run(&["config", "user.email", "bench@localhost"]);
    run(&["config", "commit.gpgsign", "false"]);
}

/// Commits everything in the folder (the workspace's starting point).
pub fn git_commit_all(dir: &Path, msg: &str) {
    for args in [
        vec!["add", "-A"],
        vec!["commit", "-q", "--allow-empty", "-m", msg],
    ] {
        let st = Command::new("git")
            .args(&args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A workspace skeleton: loops.yaml, .gitignore, domains/.
pub fn workspace(dir: &Path, loops_yaml: &str) {
    write(&dir.join("loops.yaml"), loops_yaml);
    write(&dir.join(".gitignore"), ".loops/\n");
    std::fs::create_dir_all(dir.join("domains")).unwrap();
    git_init(dir);
}

fn first_line_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The machine the figures come from.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("?")
        .to_string();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "machine: nproc={nproc}, cpu={model}, mem={mem}, kernel={kernel}, {}; loadavg at start: {load}",
        first_line_of("rustc", &["--version"])
    )
}

/// The workspace folder for a bench run: `--keep` keeps it for inspection.
pub fn tempdir(args: &Args, prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    if args.flag("keep") {
        eprintln!("(keeping {})", d.path().display());
    }
    d
}

pub fn keep(args: &Args, d: tempfile::TempDir) {
    if args.flag("keep") {
        let p = d.keep();
        println!("workspace kept at {}", p.display());
    }
}
