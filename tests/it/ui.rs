//! `loops ui` over HTTP: a real `loops ui` child on 127.0.0.1, asked with reqwest. The
//! token and CSRF checks, the security headers, every page's status, escaping of text
//! from files and models, and each action changing state as the CLI does.

use crate::common::{
    drop_handoff, git, git_commit_all, loops_cmd, loops_std_cmd, DaemonProcess, TempWorkspace,
};
use reqwest::header::{HeaderMap, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use std::process::Stdio;
use std::time::Duration;

/// A running `loops ui` and a client for it.
struct Ui {
    proc: DaemonProcess,
    base: String,
    token: String,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// What a request got back.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

fn start_ui(ws: &TempWorkspace, args: &[&str]) -> Ui {
    let log = ws.path().join(".git/ui.log");
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let child = loops_std_cmd(ws.path())
        .args(["ui", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start loops ui");
    let proc = DaemonProcess {
        child: Some(child),
        log,
    };
    proc.wait_for_log("listening on http://", Duration::from_secs(30));
    let text = proc.log();
    let base = text
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split('/').nth(2))
        .map(|hostport| format!("http://{hostport}"))
        .expect("the address in the log");
    let token = std::fs::read_to_string(ws.path().join(".loops/ui-token"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    Ui {
        proc,
        base,
        token,
        rt,
        client,
    }
}

impl Ui {
    fn cookie(&self) -> String {
        format!("loops_ui_token={}", self.token)
    }

    fn send(&self, req: reqwest::RequestBuilder) -> Got {
        self.rt.block_on(async {
            let r = req.send().await.expect("request");
            Got {
                status: r.status(),
                headers: r.headers().clone(),
                body: r.text().await.unwrap_or_default(),
            }
        })
    }

    /// GET with the cookie.
    fn get(&self, path: &str) -> Got {
        self.send(
            self.client
                .get(format!("{}{path}", self.base))
                .header(COOKIE, self.cookie()),
        )
    }

    /// GET with no cookie.
    fn get_bare(&self, path: &str) -> Got {
        self.send(self.client.get(format!("{}{path}", self.base)))
    }

    /// POST a form with the cookie.
    fn post(&self, path: &str, form: &[(&str, &str)]) -> Got {
        self.send(
            self.client
                .post(format!("{}{path}", self.base))
                .header(COOKIE, self.cookie())
                .header(CONTENT_TYPE, FORM)
                .body(form_body(form)),
        )
    }

    /// The CSRF token the page at `path` puts in its forms.
    fn csrf(&self, path: &str) -> String {
        let page = self.get(path).body;
        page.split(r#"name="csrf" value=""#)
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no CSRF field on {path}:\n{page}"))
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

/// A form's fields as a browser sends them (reqwest's `form` needs a feature the
/// workspace does not build).
fn form_body(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn handoff_text(id: &str, title: &str, body: &str) -> String {
    format!(
        "---\nid: {id}\nfrom: report\nto: main\ncreated: 2026-11-20T09:30:00Z\npriority: normal\n---\n# {title}\n\n{body}\n\n- [ ] Read the draft\n- [ ] Deliver it\n"
    )
}

fn workspace() -> TempWorkspace {
    let ws = TempWorkspace::new();
    ws.write("loops.yaml", "allow_shell_jobs: true\n");
    ws.add_loop(
        "report",
        "schedule:\n  every: 1h\npayload:\n  kind: command\n  command: [\"sh\", \"-c\", \"echo ran >> out.txt; echo done\"]\n",
    );
    ws
}

fn assert_guarded(g: &Got) {
    let csp = g
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "CSP: {csp:?}");
    assert!(csp.contains("frame-ancestors 'none'"), "CSP: {csp:?}");
    assert!(!csp.contains("unsafe-inline"), "CSP: {csp:?}");
    assert_eq!(
        g.headers
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );
}

#[test]
fn the_token_guards_every_request_and_a_first_visit_trades_it_for_a_cookie() {
    let ws = workspace();
    let ui = start_ui(&ws, &[]);
    assert_eq!(
        ui.token.len(),
        64,
        "a 32-byte hex token is kept in .loops/ui-token"
    );
    let mode = std::fs::metadata(ws.path().join(".loops/ui-token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        mode.permissions().mode() & 0o077,
        0,
        "the token file is owner-only"
    );
    assert!(
        ui.proc.log().contains(&ui.token),
        "the token is printed when it is made"
    );

    for path in [
        "/",
        "/inbox",
        "/jobs",
        "/events",
        "/assets/style.css",
        "/nope",
    ] {
        let g = ui.get_bare(path);
        assert_eq!(g.status, StatusCode::UNAUTHORIZED, "{path} without a token");
        assert_guarded(&g);
    }
    let wrong = ui.get_bare("/?token=0000");
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let wrong_cookie = ui.send(
        ui.client
            .get(format!("{}/", ui.base))
            .header(COOKIE, "loops_ui_token=0000"),
    );
    assert_eq!(wrong_cookie.status, StatusCode::UNAUTHORIZED);

    let first = ui.get_bare(&format!("/inbox?token={}", ui.token));
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    assert_eq!(
        first.headers[LOCATION], "/inbox",
        "the token leaves the address"
    );
    let cookie = first.headers[SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains(&ui.token), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");

    let g = ui.get("/");
    assert_eq!(g.status, StatusCode::OK);
    assert_guarded(&g);
    assert!(g.body.contains("report"), "{}", g.body);
    assert!(!g.body.contains("<script>"), "no inline script: {}", g.body);

    let shown = loops_cmd(ws.path())
        .args(["ui", "--token"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), ui.token);
}

#[test]
fn every_page_answers_and_a_run_links_its_diff() {
    let ws = workspace();
    loops_cmd(ws.path())
        .args(["trigger", "report"])
        .assert()
        .success();
    drop_handoff(
        ws.path(),
        "h1",
        &handoff_text("h1", "Morning brief", "Read it."),
    );
    let job = loops_cmd(ws.path())
        .args([
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "true"}"#,
            "--json",
        ])
        .output()
        .unwrap();
    let job: serde_json::Value = serde_json::from_slice(&job.stdout).expect("job json");
    let job_id = job["id"].as_u64().expect("job id");
    let run = ws.runs("report")[0].clone();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let commit = run["commit"]
        .as_str()
        .expect("the run committed")
        .to_string();

    let ui = start_ui(&ws, &[]);
    let ok = [
        "/".to_string(),
        "/loops/report".into(),
        format!("/loops/report/runs/{run_id}"),
        format!("/commits/{commit}"),
        "/inbox".into(),
        "/inbox/h1".into(),
        "/jobs".into(),
        format!("/jobs/{job_id}"),
        "/deliveries".into(),
        "/history".into(),
        "/history?loop=report&outcome=acted".into(),
        "/assets/style.css".into(),
        "/assets/live.js".into(),
    ];
    for path in &ok {
        let g = ui.get(path);
        assert_eq!(g.status, StatusCode::OK, "{path}:\n{}", g.body);
        assert_guarded(&g);
    }
    let run_page = ui.get(&format!("/loops/report/runs/{run_id}")).body;
    assert!(
        run_page.contains(&format!("/commits/{commit}")),
        "{run_page}"
    );
    assert!(run_page.contains("+ran"), "the diff of out.txt: {run_page}");
    let loop_page = ui.get("/loops/report").body;
    assert!(loop_page.contains("<svg"), "the timeline: {loop_page}");
    assert!(
        loop_page.contains("o-acted"),
        "a mark for the run: {loop_page}"
    );
    let history = ui.get("/history?loop=report").body;
    assert!(history.contains(&commit[..10]), "{history}");

    for path in [
        "/loops/nope",
        "/loops/report/runs/01NOPE",
        "/inbox/nope",
        "/jobs/999999",
        "/commits/HEAD",
        "/nope",
    ] {
        assert_eq!(ui.get(path).status, StatusCode::NOT_FOUND, "{path}");
    }
    // A limit that is no number gets the page's own error; one past any history, the most.
    let bad = ui.get("/history?limit=lots");
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(
        bad.body
            .contains("`limit` is a number of commits, not `lots`"),
        "{}",
        bad.body
    );
    assert_guarded(&bad);
    let huge = ui.get("/history?loop=report&limit=999999999999999999999");
    assert_eq!(huge.status, StatusCode::OK, "{}", huge.body);
    assert!(huge.body.contains(&commit[..10]), "{}", huge.body);
    let js = ui.get("/assets/live.js");
    assert!(js.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
}

#[test]
fn text_from_files_and_models_renders_inert() {
    let ws = workspace();
    let evil = "<script>alert(1)</script>";
    ws.write(
        "domains/report/state.md",
        &format!("# State\n\n{evil}\n\n[x](javascript:alert(2))\n"),
    );
    ws.write("domains/report/prompt.md", evil);
    drop_handoff(ws.path(), "h2", &handoff_text("h2", evil, evil));
    let transcript = ".loops/runs/report/01EVIL.md";
    ws.write(
        transcript,
        &format!("# Run\n\n## Assistant\n\n{evil}\n\n### Tool call `read_file` (t1)\n\n```json\n{{\"path\": \"{evil}\"}}\n```\n\n### Tool result (t1)\n\n```\n{evil}\n```\n"),
    );
    let rec = serde_json::json!({
        "loop": "report", "run_id": "01EVIL", "trigger": "manual", "attempt": 1,
        "started": "2026-11-20T09:30:00Z", "finished": "2026-11-20T09:30:01Z", "duration_ms": 1000,
        "outcome": "acted", "summary": evil, "error": evil, "stdout_tail": evil, "transcript": transcript,
        "tokens": {"input": 10, "output": 5},
    });
    ws.write(".loops/runs/report.jsonl", &format!("{rec}\n"));

    let ui = start_ui(&ws, &[]);
    for path in [
        "/",
        "/loops/report",
        "/loops/report/runs/01EVIL",
        "/inbox",
        "/inbox/h2",
    ] {
        let g = ui.get(path);
        assert_eq!(g.status, StatusCode::OK, "{path}:\n{}", g.body);
        assert!(
            !g.body.contains("<script>alert"),
            "{path} let a script through:\n{}",
            g.body
        );
        assert!(
            !g.body.contains("javascript:"),
            "{path} kept a script link:\n{}",
            g.body
        );
    }
    let run = ui.get("/loops/report/runs/01EVIL").body;
    assert!(
        run.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{run}"
    );
    assert!(run.contains("<details"), "tool calls are folded: {run}");
    assert!(run.contains("Tool call"), "{run}");
    let state = ui.get("/loops/report").body;
    assert!(
        state.contains("<h1>State</h1>"),
        "state.md is rendered: {state}"
    );
}

#[test]
fn an_action_needs_the_csrf_token_and_does_what_the_cli_does() {
    let ws = workspace();
    drop_handoff(
        ws.path(),
        "h3",
        &handoff_text("h3", "Tick me", "Two items."),
    );
    drop_handoff(ws.path(), "h4", &handoff_text("h4", "Reject me", "No."));
    let ui = start_ui(&ws, &[]);
    let csrf = ui.csrf("/inbox/h3");

    let none = ui.post("/inbox/h3/tick", &[("item", "1")]);
    assert_eq!(none.status, StatusCode::FORBIDDEN, "{}", none.body);
    assert_guarded(&none);
    let wrong = ui.post("/inbox/h3/tick", &[("item", "1"), ("csrf", "0000")]);
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let bare = ui.send(
        ui.client
            .post(format!("{}/inbox/h3/tick", ui.base))
            .header(CONTENT_TYPE, FORM)
            .body(form_body(&[("item", "1"), ("csrf", csrf.as_str())])),
    );
    assert_eq!(
        bare.status,
        StatusCode::UNAUTHORIZED,
        "a POST needs the token too"
    );
    let text = std::fs::read_to_string(ws.path().join("inbox/h3.md")).unwrap();
    assert!(!text.contains("[x]"), "nothing was ticked: {text}");

    // Completing with an item unticked is refused, as `loops inbox complete` refuses it.
    let early = ui.post("/inbox/h3/complete", &[("csrf", &csrf)]);
    assert_eq!(early.status, StatusCode::CONFLICT, "{}", early.body);
    assert!(early.body.contains("Read the draft"), "{}", early.body);

    for item in ["1", "2"] {
        let t = ui.post("/inbox/h3/tick", &[("item", item), ("csrf", &csrf)]);
        assert_eq!(t.status, StatusCode::SEE_OTHER, "{}", t.body);
        assert_eq!(t.headers[LOCATION], "/inbox/h3");
    }
    let text = std::fs::read_to_string(ws.path().join("inbox/h3.md")).unwrap();
    assert_eq!(text.matches("- [x]").count(), 2, "{text}");
    let done = ui.post(
        "/inbox/h3/complete",
        &[("csrf", &csrf), ("summary", "sent")],
    );
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(!ws.path().join("inbox/h3.md").exists());
    assert_eq!(ws.done_stems(), vec!["h3".to_string()]);
    let log = git(ws.path(), &["log", "--format=%s"]);
    assert!(log.contains("main: completed handoff: Tick me"), "{log}");
    assert!(
        log.contains("main: ticked 1 item(s) of handoff h3"),
        "{log}"
    );
    let status = git(ws.path(), &["status", "--porcelain", "inbox"]);
    assert!(
        !status.contains("h3"),
        "the inbox is committed as the CLI commits it: {status}"
    );

    let no_reason = ui.post("/inbox/h4/reject", &[("csrf", &csrf)]);
    assert_eq!(no_reason.status, StatusCode::BAD_REQUEST);
    let r = ui.post(
        "/inbox/h4/reject",
        &[("csrf", &csrf), ("reason", "not needed")],
    );
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(ws.path().join("inbox/rejected/h4.md").exists());
    let log = git(ws.path(), &["log", "--format=%s"]);
    assert!(log.contains("main: rejected handoff h4"), "{log}");
    let again = ui.post("/inbox/h4/reject", &[("csrf", &csrf), ("reason", "twice")]);
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);

    // A handoff held for a person (here: a completion asked before its ticks) is handed
    // back to the main session as `loops inbox retry` does it; one not held is refused.
    let active = ws.path().join("inbox/active");
    std::fs::create_dir_all(&active).unwrap();
    std::fs::write(active.join("h5.md"), handoff_text("h5", "Hold me", "Held.")).unwrap();
    git_commit_all(ws.path(), "a handoff a wake claimed");
    let claimed = ui.get("/inbox/h5").body;
    assert!(!claimed.contains("/inbox/h5/retry"), "not held: {claimed}");
    let not_held = ui.post("/inbox/h5/retry", &[("csrf", &csrf)]);
    assert_eq!(not_held.status, StatusCode::CONFLICT, "{}", not_held.body);
    assert!(not_held.body.contains("is not held"), "{}", not_held.body);
    let early = ws.cmd().args(["inbox", "complete", "h5"]).output().unwrap();
    assert!(!early.status.success(), "unticked: held for a person");
    let held = ui.get("/inbox/h5").body;
    assert!(held.contains("/inbox/h5/retry"), "{held}");
    let none = ui.post("/inbox/h5/retry", &[]);
    assert_eq!(none.status, StatusCode::FORBIDDEN, "{}", none.body);
    let back = ui.post("/inbox/h5/retry", &[("csrf", &csrf)]);
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    assert!(ws.path().join("inbox/h5.md").is_file());
    assert!(!active.join("h5.md").exists());
    let log = git(ws.path(), &["log", "--format=%s"]);
    assert!(
        log.contains("main: handed held handoff h5 back to the main session"),
        "{log}"
    );
    let page = ui.get("/inbox/h5").body;
    assert!(!page.contains("Held:"), "its hold is forgotten: {page}");
}

#[test]
fn job_actions_go_through_the_queue() {
    let ws = workspace();
    let submit = |cmd: &str| {
        let out = loops_cmd(ws.path())
            .args([
                "jobs",
                "submit",
                "shell",
                "--params",
                &format!(r#"{{"cmd": "{cmd}"}}"#),
                "--json",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("job json");
        v["id"].as_u64().expect("id")
    };
    let (a, b) = (submit("true"), submit("false"));
    let ui = start_ui(&ws, &[]);
    let csrf = ui.csrf(&format!("/jobs/{a}"));
    let state = |id: u64| {
        let out = loops_cmd(ws.path())
            .args(["jobs", "get", &id.to_string(), "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("job json");
        v["state"].as_str().unwrap_or_default().to_string()
    };
    let missing = ui.post(&format!("/jobs/{a}/cancel"), &[]);
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert_eq!(state(a), "waiting");

    let p = ui.post(&format!("/jobs/{a}/pause"), &[("csrf", &csrf)]);
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(state(a), "paused");
    let r = ui.post(&format!("/jobs/{a}/resume"), &[("csrf", &csrf)]);
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(state(a), "waiting");
    let c = ui.post(&format!("/jobs/{b}/cancel"), &[("csrf", &csrf)]);
    assert_eq!(c.status, StatusCode::SEE_OTHER, "{}", c.body);
    assert_eq!(state(b), "cancelled");
    // A shell job has no agent to read a message: the queue's refusal, as the CLI's.
    let m = ui.post(
        &format!("/jobs/{a}/message"),
        &[("csrf", &csrf), ("message", "hurry")],
    );
    assert_eq!(m.status, StatusCode::CONFLICT, "{}", m.body);
    assert!(m.body.contains("no agent"), "{}", m.body);
}

#[test]
fn a_page_hears_of_a_change_through_server_sent_events() {
    let ws = workspace();
    let ui = start_ui(&ws, &[]);
    let found = ui.rt.block_on(async {
        let mut r = ui
            .client
            .get(format!("{}/events", ui.base))
            .header(COOKIE, ui.cookie())
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("events");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        // The stream is open: now the inbox changes.
        drop_handoff(ws.path(), "h5", &handoff_text("h5", "Live", "Now."));
        let mut seen = String::new();
        while let Ok(Some(chunk)) = r.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: change\ndata: inbox") {
                return Ok(seen);
            }
        }
        Err(seen)
    });
    assert!(found.is_ok(), "no change event for the inbox: {found:?}");
}

#[test]
fn an_open_address_without_a_token_is_refused() {
    let ws = workspace();
    let out = loops_cmd(ws.path())
        .args(["ui", "--listen", "0.0.0.0:0", "--no-token"])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(
        err.contains("ssh -L"),
        "the help says how to reach it safely: {err}"
    );

    // On loopback, --no-token serves without one.
    let ui = start_ui(&ws, &["--no-token"]);
    assert_eq!(ui.get_bare("/").status, StatusCode::OK);
}

#[test]
fn the_daemon_serves_the_ui_that_loops_yaml_asks_for() {
    let ws = workspace();
    ws.write("loops.yaml", "ui:\n  listn: 127.0.0.1:1\n");
    let bad = loops_cmd(ws.path()).arg("check").output().unwrap();
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(
        err.contains("loops.yaml:2"),
        "the error names the line: {err}"
    );
    assert!(err.contains("listen"), "{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    ws.write("loops.yaml", &format!("ui:\n  listen: 127.0.0.1:{port}\n"));
    loops_cmd(ws.path()).arg("check").assert().success();
    let d = ws.start_daemon();
    d.wait_for_log("web UI on http://", Duration::from_secs(30));
    let token = std::fs::read_to_string(ws.path().join(".loops/ui-token")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let c = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/");
        let bare = c.get(&url).send().await.unwrap().status();
        let with = c
            .get(&url)
            .header(COOKIE, format!("loops_ui_token={}", token.trim()))
            .send()
            .await
            .unwrap();
        (bare, with.status(), with.text().await.unwrap_or_default())
    });
    assert_eq!(status.0, StatusCode::UNAUTHORIZED);
    assert_eq!(status.1, StatusCode::OK, "{}", status.2);
    assert!(status.2.contains("report"), "{}", status.2);

    // An edit of `ui:` is followed as the rest of loops.yaml is: the UI moves to the new
    // address (the old one is let go), and goes when `ui:` does.
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let moved = free_port();
    ws.write("loops.yaml", &format!("ui:\n  listen: 127.0.0.1:{moved}\n"));
    d.wait_for_log(
        &format!("web UI on http://127.0.0.1:{moved}/"),
        Duration::from_secs(30),
    );
    let get = |port: u16| {
        rt.block_on(async {
            let c = reqwest::Client::builder().no_proxy().build().unwrap();
            c.get(format!("http://127.0.0.1:{port}/"))
                .header(COOKIE, format!("loops_ui_token={}", token.trim()))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    assert_eq!(get(moved).ok(), Some(StatusCode::OK), "{}", d.log());
    assert!(get(port).is_err(), "the old address is let go");
    ws.write("loops.yaml", "limits:\n  shutdown_grace: 2s\n");
    d.wait_for_log(
        &format!("web UI on 127.0.0.1:{moved} stopped"),
        Duration::from_secs(30),
    );
    assert!(get(moved).is_err(), "no `ui:`, no UI");
}

/// Where the browser test's screenshots go: `target/ui-screenshots/` (beside the binary's
/// `debug/`), kept after the test for a person (and docs/ui.md) to look at.
fn screenshots_dir() -> std::path::PathBuf {
    let bin = crate::common::loops_bin();
    bin.parent()
        .and_then(std::path::Path::parent)
        .map(|t| t.join("ui-screenshots"))
        .unwrap_or_else(|| std::path::PathBuf::from("target/ui-screenshots"))
}

/// The end-to-end test in a real browser (tests/browser/drive.mjs): Debian's chromium and
/// playwright-core pinned in tests/browser/package-lock.json, both installed by .ci/run.
#[test]
fn in_a_real_browser_the_ui_goes_live_and_its_actions_work() {
    let drive = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists() && drive.join("node_modules/playwright-core").exists(),
        "the browser test needs {chromium} and tests/browser/node_modules: run .ci/run (it installs them), or: \
         apt-get install chromium && npm ci --prefix tests/browser"
    );
    let ws = workspace();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    ws.write(
        "loops.yaml",
        &format!("allow_shell_jobs: true\nui:\n  listen: 127.0.0.1:{port}\n"),
    );
    drop_handoff(
        ws.path(),
        "h1",
        &handoff_text("h1", "Morning brief", "Read it."),
    );
    let d = ws.start_daemon();
    d.wait_for_log("web UI on http://", Duration::from_secs(30));
    let job = loops_cmd(ws.path())
        .args([
            "jobs",
            "submit",
            "shell",
            "--params",
            r#"{"cmd": "sleep 60"}"#,
            "--json",
        ])
        .output()
        .unwrap();
    let job: serde_json::Value = serde_json::from_slice(&job.stdout).expect("job json");
    let job = job["id"].as_u64().expect("job id").to_string();
    let active = crate::common::wait_until(Duration::from_secs(30), || {
        let out = loops_cmd(ws.path())
            .args(["jobs", "get", &job, "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v["state"] == "active")
    });
    assert!(
        active,
        "the shell job never started; daemon log:\n{}",
        d.log()
    );
    let token = std::fs::read_to_string(ws.path().join(".loops/ui-token")).unwrap();
    let out = std::process::Command::new("node")
        .arg(drive.join("drive.mjs"))
        .env("LOOPS_UI", format!("http://127.0.0.1:{port}"))
        .env("LOOPS_TOKEN", token.trim())
        .env("LOOPS_BIN", crate::common::loops_bin())
        .env("LOOPS_WS", ws.path())
        .env("LOOPS_JOB", &job)
        .env("LOOPS_SHOTS", screenshots_dir())
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    for shot in ["overview.png", "run.png", "handoff.png", "jobs.png"] {
        assert!(screenshots_dir().join(shot).exists(), "{shot} was taken");
    }
}

#[test]
fn the_pictures_show_estimated_cost_per_day_and_handoff_wait_times() {
    let ws = workspace();
    // Two prompt runs of today, one priced and one whose model has no price, as the
    // runner records them.
    let now = chrono::Utc::now();
    let rec = |id: &str, cost: Option<f64>| {
        let mut v = serde_json::json!({
            "loop": "report", "run_id": id, "trigger": "manual", "attempt": 1,
            "started": now, "finished": now, "duration_ms": 5, "outcome": "acted",
            "tokens": {"input": 1200, "output": 300, "cache_read": 0, "cache_write": 0},
            "model": "claude-sonnet-4-5",
        });
        if let Some(c) = cost {
            v["cost_estimate"] = serde_json::json!(c);
        }
        v.to_string()
    };
    ws.write(
        ".loops/runs/report.jsonl",
        &format!(
            "{}\n{}\n",
            rec("01JD3K8Q6W0Y7M2C4T5V9XBNRA", Some(0.0081)),
            rec("01JD3K8Q6W0Y7M2C4T5V9XBNRB", None)
        ),
    );
    // A handoff completed 90 minutes after it was written, and one still waiting.
    let at = |ago: i64| {
        (now - chrono::Duration::minutes(ago)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let (created, completed) = (at(180), at(90));
    ws.write(
        &format!("inbox/done/{}/h-done.md", now.format("%Y-%m")),
        &format!(
            "---\nid: h-done\nfrom: report\nto: main\ncreated: {created}\n---\n# The weekly draft\n\nbody\n\n## Completed {completed}\n\nsent\n"
        ),
    );
    ws.write(
        "inbox/h-open.md",
        &format!("---\nid: h-open\nfrom: report\nto: main\ncreated: {created}\n---\n# Still waiting\n\nbody\n"),
    );
    let ui = start_ui(&ws, &[]);
    let overview = ui.get("/");
    assert_eq!(overview.status, StatusCode::OK);
    assert!(
        overview.body.contains("3.0k tokens in 7 days")
            && overview.body.contains("≥ ~$0.0081")
            && overview.body.contains("never a bill"),
        "{}",
        overview.body
    );
    let inbox = ui.get("/inbox");
    assert_eq!(inbox.status, StatusCode::OK);
    let b = &inbox.body;
    assert!(b.contains("Wait times"), "{b}");
    assert!(
        b.contains("Completed in the last 7 days: 1, median wait 1 h 30 min, slowest 1 h 30 min"),
        "{b}"
    );
    assert!(
        b.contains("Still waiting (h-open)") && b.contains("and waiting"),
        "the open one grows to now: {b}"
    );
}

#[test]
fn a_job_held_for_the_budget_says_why_and_the_page_resumes_it() {
    let ws = workspace();
    // Nothing answers here: the job is held before any request, as the day is spent.
    ws.write(
        "loops.yaml",
        "providers:\n  p: { kind: anthropic, base_url: \"http://127.0.0.1:9\", model: test-model }\nbudget: { tokens_per_day: 10 }\n",
    );
    let now = chrono::Utc::now();
    ws.write(
        &format!(".loops/spend/jobs-{}.jsonl", now.format("%Y-%m-%d")),
        &format!(
            "{}\n",
            serde_json::json!({"finished": now, "job": 99, "attempt": 1, "tokens": {"input": 20, "output": 0}, "cost_estimate": 0.0})
        ),
    );
    let out = loops_cmd(ws.path())
        .args(["agent", "run", "Look around"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ui = start_ui(&ws, &[]);
    let page = ui.get("/jobs/1");
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("held:") && page.body.contains("tokens_per_day 10"),
        "{}",
        page.body
    );
    assert!(page.body.contains("/jobs/1/resume"), "{}", page.body);
    let csrf = ui.csrf("/jobs/1");
    let r = ui.post("/jobs/1/resume", &[("csrf", &csrf)]);
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let out = loops_cmd(ws.path())
        .args(["jobs", "get", "1", "--json"])
        .output()
        .unwrap();
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("job json");
    assert_eq!(job["state"], "waiting", "{job:#}");
    assert!(job["held"].is_null(), "{job:#}");
}
