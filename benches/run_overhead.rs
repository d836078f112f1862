//! Runner overhead of one command run: `loops::engine::loop_run::execute` (running marker, change
//! snapshot before and after, the process in its own group, the run record, and a git
//! commit of the changed file) against spawning the same argv bare with
//! `std::process::Command`. Also a silent run (`true`: nothing changes, nothing is
//! committed) and, to locate the cost, `loops_core::exec::run` alone (the process layer
//! without snapshot, record or commit).
//!
//!   cargo bench --bench run_overhead                 # 200 iterations each
//!   cargo bench --bench run_overhead -- --quick      # 30 iterations each
//!   options: --iters N  --keep

use loops::engine::loop_run::execute;
use loops::engine::run_context::{RunContext, RunRequest, Trigger};
use loops_core::domain::load_domain;
use loops_core::exec::{self, ExecSpec};
use loops_core::runs::Outcome;
use loops_core::workspace::Workspace;
use loops_testutil::bench::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITE_CMD: &str = "date +%s%N > state.md";

fn bare(argv: &[&str], cwd: &Path) -> f64 {
    let t = Instant::now();
    let st = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .status()
        .unwrap();
    let d = ms(t.elapsed());
    assert!(st.success());
    d
}

struct Stats {
    label: String,
    s: Vec<f64>,
}

impl Stats {
    fn p(&self, p: f64) -> f64 {
        pct(&sorted(self.s.clone()), p)
    }
}

fn main() {
    let args = Args::parse();
    let iters: usize = args.num("iters", if args.quick { 30 } else { 200 });
    let warm = 5;
    println!("== run_overhead: {iters} iterations per case (+{warm} warm-up)");
    println!("{}", machine());

    let tmp = tempdir(&args, "loops-bench-run-");
    let root = tmp.path().to_path_buf();
    workspace(&root, "limits:\n  max_concurrent_jobs: 4\n");
    write(
        &root.join("domains/writer/config.yaml"),
        &format!("schedule:\n  every: 1h\npayload:\n  kind: command\n  command: [\"sh\", \"-c\", \"{WRITE_CMD}\"]\n"),
    );
    write(&root.join("domains/writer/state.md"), "0\n");
    write(
        &root.join("domains/silent/config.yaml"),
        "schedule:\n  every: 1h\npayload:\n  kind: command\n  command: [\"true\"]\n",
    );
    write(
        &root.join("domains/silent/state.md"),
        "nothing changes here\n",
    );
    // A realistic domain folder has a few more files the snapshot walks.
    for d in ["writer", "silent"] {
        write(
            &root.join(format!("domains/{d}/prompt.md")),
            &"notes line\n".repeat(40),
        );
        write(
            &root.join(format!("domains/{d}/notes/archive.md")),
            &"x".repeat(4000),
        );
    }
    git_commit_all(&root, "bench workspace");

    let ws = Workspace::open(&root).unwrap();
    let writer = load_domain(&ws, "writer")
        .def
        .expect("writer loop is valid");
    let silent = load_domain(&ws, "silent")
        .def
        .expect("silent loop is valid");
    let ctx = RunContext::new(Arc::new(ws.clone()));
    assert!(ctx.committer.is_some(), "the committer must be on");
    let rt = loops::daemon::runtime().unwrap();

    let writer_dir = root.join("domains/writer");
    let silent_dir = root.join("domains/silent");
    let mut cases: Vec<Stats> = Vec::new();

    // 1. bare spawn of the writing command.
    let mut s = Vec::new();
    for i in 0..iters + warm {
        let d = bare(&["sh", "-c", WRITE_CMD], &writer_dir);
        if i >= warm {
            s.push(d);
        }
    }
    // Put the file back as the runner last committed it, so every run changes it.
    let _ = std::process::Command::new("git")
        .args(["checkout", "--", "domains/writer/state.md"])
        .current_dir(&root)
        .status();
    cases.push(Stats {
        label: "bare sh -c 'date > state.md' (std::process)".into(),
        s,
    });

    // 2. execute(): acted run with a git commit.
    let mut s = Vec::new();
    let mut exec_part = Vec::new();
    let mut commits = 0;
    for i in 0..iters + warm {
        let req = RunRequest::new(Trigger::Manual, None, 1);
        let t = Instant::now();
        let rec = rt.block_on(execute(&ctx, &writer, &req, None, None));
        let d = ms(t.elapsed());
        assert_eq!(rec.outcome, Outcome::Acted, "{rec:?}");
        if i >= warm {
            s.push(d);
            exec_part.push(rec.duration_ms as f64);
            commits += rec.commit.is_some() as usize;
        }
    }
    assert_eq!(commits, iters, "every acted run must commit");
    cases.push(Stats {
        label: "execute(): acted run + record + git commit".into(),
        s,
    });

    // 3. bare `true`.
    let mut s = Vec::new();
    for i in 0..iters + warm {
        let d = bare(&["true"], &silent_dir);
        if i >= warm {
            s.push(d);
        }
    }
    cases.push(Stats {
        label: "bare true (std::process)".into(),
        s,
    });

    // 4. execute(): silent run.
    let mut s = Vec::new();
    for i in 0..iters + warm {
        let req = RunRequest::new(Trigger::Manual, None, 1);
        let t = Instant::now();
        let rec = rt.block_on(execute(&ctx, &silent, &req, None, None));
        let d = ms(t.elapsed());
        assert_eq!(rec.outcome, Outcome::Silent, "{rec:?}");
        assert!(rec.commit.is_none());
        if i >= warm {
            s.push(d);
        }
    }
    cases.push(Stats {
        label: "execute(): silent run (true, no commit)".into(),
        s,
    });

    // 5. exec::run alone (process group, env, piped output, reader tasks).
    let spec = ExecSpec {
        argv: vec!["true".into()],
        cwd: silent_dir.clone(),
        env: exec::base_env(),
        timeout: Duration::from_secs(30),
        grace: exec::KILL_GRACE,
        on_spawn: None,
        stdin: None,
    };
    let mut s = Vec::new();
    for i in 0..iters + warm {
        let t = Instant::now();
        let r = rt.block_on(exec::run(&spec, None, None));
        let d = ms(t.elapsed());
        assert!(r.success());
        if i >= warm {
            s.push(d);
        }
    }
    cases.push(Stats {
        label: "exec::run(true) alone (process layer)".into(),
        s,
    });

    // 5b. exec::run of the writing command alone.
    let spec_w = ExecSpec {
        argv: vec!["sh".into(), "-c".into(), WRITE_CMD.into()],
        cwd: writer_dir.clone(),
        ..spec.clone()
    };
    let mut s = Vec::new();
    for i in 0..iters + warm {
        let t = Instant::now();
        let r = rt.block_on(exec::run(&spec_w, None, None));
        let d = ms(t.elapsed());
        assert!(r.success());
        if i >= warm {
            s.push(d);
        }
    }
    cases.push(Stats {
        label: "exec::run(sh -c 'date > state.md') alone".into(),
        s,
    });

    // 6. tokio::process bare (what exec::run builds on), for reference.
    let mut s = Vec::new();
    for i in 0..iters + warm {
        let t = Instant::now();
        let st = rt.block_on(async {
            tokio::process::Command::new("true")
                .current_dir(&silent_dir)
                .status()
                .await
                .unwrap()
        });
        let d = ms(t.elapsed());
        assert!(st.success());
        if i >= warm {
            s.push(d);
        }
    }
    cases.push(Stats {
        label: "bare true (tokio::process)".into(),
        s,
    });

    for c in &cases {
        println!("{}", summary(&c.label, &c.s));
    }
    let by = |l: &str| cases.iter().find(|c| c.label.starts_with(l)).unwrap();
    let exw = by("exec::run(sh");
    let (bw, ew, bt, es, ex, tk) = (
        by("bare sh"),
        by("execute(): acted"),
        by("bare true (std"),
        by("execute(): silent"),
        by("exec::run"),
        by("bare true (tokio"),
    );
    let ov_acted = ew.p(50.0) - bw.p(50.0);
    let ov_silent = es.p(50.0) - bt.p(50.0);
    println!(
        "  of which the command itself (rec.duration_ms, exec::run's own timing): p50={:.3} ms",
        pct(&sorted(exec_part.clone()), 50.0)
    );
    println!(
        "  exec::run(true) over bare std spawn: p50 +{:.3} ms; tokio::process over std: p50 +{:.3} ms",
        ex.p(50.0) - bt.p(50.0),
        tk.p(50.0) - bt.p(50.0)
    );
    println!(
        "  exec::run(sh -c ...) over bare std spawn: p50 +{:.3} ms",
        exw.p(50.0) - bw.p(50.0)
    );
    println!(
        "RESULT run_overhead acted+commit: execute p50={:.3} p90={:.3} ms, bare p50={:.3} p90={:.3} ms, overhead p50={:.3} ms p90={:.3} ms -> target <=20ms median: {}",
        ew.p(50.0),
        ew.p(90.0),
        bw.p(50.0),
        bw.p(90.0),
        ov_acted,
        ew.p(90.0) - bw.p(90.0),
        if ov_acted <= 20.0 { "PASS" } else { "FAIL" }
    );
    println!(
        "RESULT run_overhead silent: execute p50={:.3} p90={:.3} ms, bare p50={:.3} p90={:.3} ms, overhead p50={:.3} ms p90={:.3} ms",
        es.p(50.0),
        es.p(90.0),
        bt.p(50.0),
        bt.p(90.0),
        ov_silent,
        es.p(90.0) - bt.p(90.0)
    );
    keep(&args, tmp);
}
