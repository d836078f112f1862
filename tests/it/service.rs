//! `loops service`: the systemd unit and launchd agent it renders (checked by
//! `systemd-analyze verify` and by running the launchd `sh -c` line), and install,
//! status and uninstall against a fake `systemctl` in a temporary HOME.

use crate::common::{loops_bin, loops_cmd, wait_until, TempWorkspace};
use loops::service::{self, ServiceSpec};
use loops_testutil::Signal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Escapes regex metacharacters in a literal.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A temporary HOME (with XDG_CONFIG_HOME inside it) and a bin folder for fake tools.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        Env { dir }
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    fn config(&self) -> PathBuf {
        self.home().join(".config")
    }
    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn systemctl_log(&self) -> PathBuf {
        self.dir.path().join("systemctl.log")
    }
    fn calls(&self) -> String {
        std::fs::read_to_string(self.systemctl_log()).unwrap_or_default()
    }

    /// A `systemctl` that records its arguments and answers the two status queries.
    fn fake_systemctl(&self) {
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$2\" in\n  is-active) echo active ;;\n  is-enabled) echo enabled ;;\nesac\nexit 0\n",
            self.systemctl_log().display()
        );
        let path = self.bin().join("systemctl");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A `systemctl` as it behaves without a user session bus (in a container).
    fn broken_systemctl(&self) {
        let path = self.bin().join("systemctl");
        std::fs::write(
            &path,
            "#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `loops --workspace WS ARGS…` with HOME, XDG_CONFIG_HOME and PATH pointing here.
    fn loops(&self, ws: &Path, args: &[&str]) -> std::process::Output {
        loops_cmd(self.dir.path())
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.config())
            // No linger file exists for this user, so the advice is always printed.
            .env("USER", "loops-test-user")
            // Only the fake tools: the real systemctl must never be reached.
            .env("PATH", self.bin())
            .arg("--workspace")
            .arg(ws)
            .args(args)
            .output()
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A workspace at `<tmp>/my mind` (a space, to see it quoted) with a 45s shutdown grace.
fn spaced_workspace(env: &Env) -> PathBuf {
    let ws = env.dir.path().join("my mind");
    let out = loops_cmd(env.dir.path())
        .arg("init")
        .arg(&ws)
        .output()
        .unwrap();
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    std::fs::write(ws.join("loops.yaml"), "limits:\n  shutdown_grace: 45s\n").unwrap();
    ws.canonicalize().unwrap()
}

#[test]
fn service_install_print_shows_the_unit_and_changes_nothing() {
    let env = Env::new();
    let ws = spaced_workspace(&env);
    let out = env.loops(&ws, &["service", "install", "--print"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let unit = text(&out.stdout);
    let exe = loops_bin().canonicalize().unwrap();
    let ws_s = ws.display().to_string();
    let env_file = env.config().join("loops/loops-my-mind.env");

    for line in [
        format!(
            "ExecStart={} --workspace \"{ws_s}\" run --log-format json",
            exe.display()
        ),
        format!("WorkingDirectory={ws_s}"),
        format!("EnvironmentFile=-{}", env_file.display()),
        "Restart=on-failure".into(),
        "KillMode=mixed".into(),
        // 2 × 45s grace + 15s.
        "TimeoutStopSec=105".into(),
        "SyslogIdentifier=loops-my-mind".into(),
        "WantedBy=default.target".into(),
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "missing `{line}` in:\n{unit}"
        );
    }
    // --print touches nothing.
    assert!(
        !env.config().exists(),
        "--print wrote under {}",
        env.config().display()
    );

    let filters = [
        (escape(&exe.display().to_string()), "[EXE]".to_string()),
        (escape(&env.home().display().to_string()), "[HOME]".into()),
        (escape(&ws_s), "[WS]".into()),
    ];
    let refs: Vec<(&str, &str)> = filters
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    insta::with_settings!({ filters => refs, prepend_module_to_snapshot => true }, {
        insta::assert_snapshot!("service_install_print", unit);
    });

    verify_unit(&env, "loops-my-mind.service", &unit);
}

/// `systemd-analyze verify --user` on a unit: exit 0 and not a word about the unit.
fn verify_unit(env: &Env, file_name: &str, unit: &str) {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        println!("systemd-analyze is not installed: the unit is not verified");
        return;
    };
    let dir = env.dir.path().join("verify");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file_name);
    std::fs::write(&path, unit).unwrap();
    // A user manager needs a runtime folder, which a CI job's session may not have.
    let runtime = env.dir.path().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = std::process::Command::new(analyze)
        .args(["verify", "--user"])
        .arg(&path)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", env.home())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    // systemd-analyze exits 0 on unknown keys and unparsable values, with a warning
    // naming the file: any line that names the unit is a failure.
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains(file_name)).collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify failed ({}):\n{stderr}\nunit:\n{unit}",
        out.status
    );
}

fn spec(workspace: &Path, exe: &Path, env_file: &Path) -> ServiceSpec {
    ServiceSpec {
        name: "loops-odd".into(),
        exe: exe.to_path_buf(),
        workspace: workspace.to_path_buf(),
        env_file: env_file.to_path_buf(),
        user: true,
        shutdown_grace: Duration::from_secs(30),
    }
}

#[test]
fn service_systemd_unit_quotes_odd_paths() {
    let env = Env::new();
    let ws = env.dir.path().join("it's a \"ws\" 100% $HOME");
    let exe = loops_bin().canonicalize().unwrap();
    let env_file = env.dir.path().join("keys 100%.env");
    let unit = service::render_systemd(&spec(&ws, &exe, &env_file)).unwrap();
    let root = env.dir.path().display().to_string();
    let exec = format!(
        "ExecStart={} --workspace \"{root}/it's a \\\"ws\\\" 100%% $$HOME\" run --log-format json",
        exe.display()
    );
    assert!(unit.lines().any(|l| l == exec), "want {exec} in:\n{unit}");
    assert!(unit
        .lines()
        .any(|l| l == format!("WorkingDirectory={root}/it's a \"ws\" 100%% $HOME")));
    assert!(unit
        .lines()
        .any(|l| l == format!("EnvironmentFile=-{root}/keys 100%%.env")));
    verify_unit(&env, "loops-odd.service", &unit);

    // What a unit file cannot hold safely is refused, not written.
    for bad in ["a\nb", "a\\b"] {
        let err =
            service::render_systemd(&spec(&env.dir.path().join(bad), &exe, &env_file)).unwrap_err();
        assert!(err.to_string().contains("workspace"), "{err}");
        assert!(err.help().is_some());
    }
}

/// The strings of the plist's ProgramArguments array, XML-unescaped.
fn program_arguments(plist: &str) -> Vec<String> {
    let array = plist
        .split("<key>ProgramArguments</key>")
        .nth(1)
        .and_then(|r| r.split("</array>").next())
        .expect("ProgramArguments array");
    array
        .split("<string>")
        .skip(1)
        .map(|s| {
            s.split("</string>")
                .next()
                .unwrap()
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

/// Well-formed XML, checked by `plutil -lint` where it exists, else by matching every
/// opening tag with its closing one.
fn assert_well_formed(plist: &str, dir: &Path) {
    if let Ok(out) = std::process::Command::new("plutil")
        .arg("-lint")
        .arg({
            let p = dir.join("agent.plist");
            std::fs::write(&p, plist).unwrap();
            p
        })
        .output()
    {
        assert!(out.status.success(), "plutil: {}", text(&out.stdout));
        return;
    }
    let mut stack: Vec<String> = Vec::new();
    let mut rest = plist;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("an unclosed tag") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else {
            let name = tag.split_whitespace().next().unwrap().to_string();
            stack.push(name);
        }
        // Text between tags may hold no raw markup characters.
        let text_end = rest.find('<').unwrap_or(rest.len());
        assert!(
            !rest[..text_end].contains('>') && !rest[..text_end].contains('"'),
            "unescaped text: {}",
            &rest[..text_end]
        );
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

#[test]
fn service_launchd_plist_quotes_the_shell_line() {
    let env = Env::new();
    let ws = env.dir.path().join("it's a \"ws\" & <more> $HOME");
    std::fs::create_dir_all(&ws).unwrap();
    let env_file = env.dir.path().join("keys 'x'.env");
    std::fs::write(&env_file, "FOO='from the env file'\n").unwrap();
    let log = env.home().join("Library/Logs/loops/loops-odd.log");

    // With /bin/echo in place of loops, the line prints exactly the arguments loops gets.
    let plist =
        service::render_launchd(&spec(&ws, Path::new("/bin/echo"), &env_file), &log).unwrap();
    assert_well_formed(&plist, env.dir.path());
    for needle in [
        "<string>dev.loops.loops-odd</string>",
        "<key>RunAtLoad</key>\n\t<true/>",
        "<key>SuccessfulExit</key>\n\t\t<false/>",
        "<key>StandardOutPath</key>",
        "<key>StandardErrorPath</key>",
        "/Library/Logs/loops/loops-odd.log</string>",
        "<key>WorkingDirectory</key>",
    ] {
        assert!(plist.contains(needle), "missing {needle:?} in:\n{plist}");
    }
    let args = program_arguments(&plist);
    assert_eq!(args[..2], ["/bin/sh", "-c"]);
    let out = std::process::Command::new(&args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("--workspace {} run\n", ws.display())
    );

    // A script in place of loops shows the argument boundaries and that the env file
    // was sourced and exported.
    let show = env.bin().join("show args");
    std::fs::write(
        &show,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\necho \"FOO=$FOO\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&show, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plist = service::render_launchd(&spec(&ws, &show, &env_file), &log).unwrap();
    let args = program_arguments(&plist);
    let out = std::process::Command::new(&args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        format!(
            "[--workspace]\n[{}]\n[run]\nFOO=from the env file\n",
            ws.display()
        )
    );
    // Without the env file the agent still starts.
    std::fs::remove_file(&env_file).unwrap();
    let out = std::process::Command::new(&args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).ends_with("[run]\nFOO=\n"));
}

#[test]
fn service_install_status_uninstall_with_a_fake_systemctl() {
    let env = Env::new();
    env.fake_systemctl();
    let tw = TempWorkspace::new();
    let ws = tw.path().canonicalize().unwrap();
    let name = service::default_name(&ws);
    let unit_path = env.config().join(format!("systemd/user/{name}.service"));
    let env_file = env.config().join(format!("loops/{name}.env"));

    let printed = env.loops(&ws, &["service", "install", "--print"]);
    let out = env.loops(&ws, &["service", "install"]);
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("journalctl --user -u {name} -f")),
        "{stdout}"
    );
    assert!(stdout.contains("loginctl enable-linger"), "{stdout}");

    // The unit written is the unit printed.
    assert_eq!(std::fs::read(&unit_path).unwrap(), printed.stdout);
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "env file mode {mode:o}");
    assert!(std::fs::read_to_string(&env_file)
        .unwrap()
        .contains("# ANTHROPIC_API_KEY=..."));
    assert_eq!(
        env.calls(),
        format!("--user daemon-reload\n--user enable --now {name}.service\n")
    );

    // Installing again keeps the keys a person wrote.
    std::fs::write(&env_file, "ANTHROPIC_API_KEY=sk-test\n").unwrap();
    let again = env.loops(&ws, &["service", "install"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("kept as it was"));
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        "ANTHROPIC_API_KEY=sk-test\n"
    );

    // Status: the file, systemd's answers, and the daemon's own view.
    let status = |env: &Env| -> serde_json::Value {
        let out = env.loops(&ws, &["service", "status", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let st = status(&env);
    assert_eq!(st["name"], name.as_str());
    assert_eq!(st["manager"], "systemd");
    assert_eq!(st["installed"], true);
    assert_eq!(st["active"], "active");
    assert_eq!(st["enabled"], "enabled");
    assert_eq!(st["workspace"], ws.display().to_string());
    assert_eq!(st["env_file"], env_file.display().to_string());
    assert_eq!(st["daemon"]["running"], false);

    let mut daemon = tw.start_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || status(&env)["daemon"]
            ["running"]
            == true),
        "status never saw the daemon; log:\n{}",
        daemon.log()
    );
    let st = status(&env);
    assert_eq!(st["daemon"]["pid"], daemon.pid());
    assert_eq!(st["daemon"]["version"], env!("CARGO_PKG_VERSION"));
    let human = env.loops(&ws, &["service", "status"]);
    let human = text(&human.stdout);
    assert!(
        human.contains(&format!("daemon:       running, pid {}", daemon.pid())),
        "{human}"
    );
    assert!(human.contains("manager:      active, enabled"), "{human}");
    daemon.signal(Signal::TERM);
    assert!(daemon.wait_exit(Duration::from_secs(20)).is_some());

    // Uninstall: disabled and stopped, the unit removed, the env file kept.
    std::fs::remove_file(env.systemctl_log()).unwrap();
    let out = env.loops(&ws, &["service", "uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        env.calls(),
        format!("--user disable --now {name}.service\n--user daemon-reload\n")
    );
    assert!(!unit_path.exists());
    assert!(env_file.exists());
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&env_file.display().to_string()), "{stdout}");

    // Uninstalling what is not installed says so and succeeds.
    let out = env.loops(&ws, &["service", "uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("is not installed"));
    let st = status(&env);
    assert_eq!(st["installed"], false);
}

#[test]
fn service_install_without_a_user_manager_keeps_the_unit_and_says_what_to_run() {
    let env = Env::new();
    let ws = spaced_workspace(&env);
    let unit_path = env.config().join("systemd/user/loops-my-mind.service");

    // No systemctl at all.
    let out = env.loops(&ws, &["service", "install"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(unit_path.exists(), "the unit must stay written");
    for needle in [
        "systemctl is not installed",
        "systemctl --user daemon-reload",
        "systemctl --user enable --now loops-my-mind.service",
        "loginctl enable-linger $USER",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }

    // A systemctl with no session bus to talk to.
    env.broken_systemctl();
    let out = env.loops(&ws, &["service", "install"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`systemctl --user daemon-reload` failed: Failed to connect to bus"),
        "{stderr}"
    );
    assert!(stderr.contains("systemctl --user enable --now loops-my-mind.service"));

    // Status says it cannot ask rather than failing.
    let out = env.loops(&ws, &["service", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["installed"], true);
    assert!(st["manager_error"]
        .as_str()
        .unwrap()
        .contains("Failed to connect to bus"));

    // Uninstall removes the file all the same, and says once what it could not do.
    let out = env.loops(&ws, &["service", "uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!unit_path.exists());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("Removed ") && !stdout.contains("stopped"),
        "{stdout}"
    );
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");
    assert!(
        stderr.contains("systemctl --user stop loops-my-mind.service"),
        "{stderr}"
    );
}

#[test]
fn service_refuses_system_wide_and_bad_names() {
    let env = Env::new();
    let ws = spaced_workspace(&env);
    let out = env.loops(&ws, &["service", "install", "--system"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("system-wide services are not supported"),
        "{stderr}"
    );
    assert!(stderr.contains("loginctl enable-linger"), "{stderr}");

    let out = env.loops(
        &ws,
        &["service", "install", "--print", "--name", "My Service"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("`My Service` is not a usable service name"));
    assert!(!env.config().exists());

    // --name and --env-file show up in the unit.
    let out = env.loops(
        &ws,
        &[
            "service",
            "install",
            "--print",
            "--name",
            "loops-work",
            "--env-file",
            "/etc/loops/work.env",
        ],
    );
    let unit = text(&out.stdout);
    assert!(unit.contains("\nSyslogIdentifier=loops-work\n"), "{unit}");
    assert!(
        unit.contains("\nEnvironmentFile=-/etc/loops/work.env\n"),
        "{unit}"
    );
}

#[test]
fn service_default_names() {
    assert_eq!(
        service::default_name(Path::new("/home/a/mind")),
        "loops-mind"
    );
    assert_eq!(
        service::default_name(Path::new("/home/a/My Mind (2)")),
        "loops-my-mind-2"
    );
    assert_eq!(
        service::default_name(Path::new("/home/a/.tmpX")),
        "loops-tmpx"
    );
    assert_eq!(service::default_name(Path::new("/")), "loops");
    assert!(service::check_name("loops-work_2").is_ok());
    assert!(service::check_name("-x").is_err());
    assert!(service::check_name("a/b").is_err());
}

#[test]
fn service_help() {
    let dir = tempfile::tempdir().unwrap();
    let help = |args: &[&str]| {
        let out = loops_cmd(dir.path())
            .args(args)
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert!(out.status.success());
        text(&out.stdout)
    };
    insta::with_settings!({ prepend_module_to_snapshot => true }, {
        insta::assert_snapshot!("service_help", help(&["service", "--help"]));
        insta::assert_snapshot!("service_install_help", help(&["service", "install", "--help"]));
    });
}

#[test]
fn service_install_refuses_a_folder_that_is_not_a_workspace() {
    let env = Env::new();
    let plain = env.dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let out = env.loops(&plain, &["service", "install", "--print"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is not a loops workspace"), "{stderr}");
    assert!(stderr.contains("loops init"), "{stderr}");
}
