//! The agent file tools' path checker ([`Sandbox::resolve`]) against a real workspace
//! with the symbolic links a hostile or confused model would try: to the root, out of the
//! workspace, into `.git/` and `.loops/`, onto private files, dangling, and in a cycle.
//!
//! The input's first byte picks the scope (an isolated loop, an agent job, the main
//! session), the access (read or write) and whether the path is spelled from the root as
//! given, from its canonical form, or relative; the rest is the path.
//!
//! Invariant: every path is refused, or resolves to a real path inside the workspace that
//! no symbolic link leads out of, that the scope may read or write (a minion reads only its
//! own folders; no scope writes a config, git's files or the inbox), and that resolves to
//! itself when asked again by the name the tools show for it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use loops_agent::sandbox::{Access, Sandbox, Scope};
use std::os::unix::fs::symlink;
use std::path::{Component, PathBuf};
use std::sync::OnceLock;

const LOOP: &str = "alpha";

struct Fixture {
    /// The workspace root as the runner names it: a symbolic link to `real`.
    given: PathBuf,
    /// The canonical root.
    real: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        // One fixture per process, under TMPDIR (.ci/fuzz points it at a folder it removes).
        let base =
            std::env::temp_dir().join(format!("loops-fuzz-path-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let ws = base.join("ws");
        let put = |rel: &str| {
            let p = ws.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "x").unwrap();
        };
        for f in [
            ".git/config",
            ".git/hooks/pre-commit",
            ".loops/state/alpha.json",
            "SOUL.md",
            "USER.md",
            ".working-memory/memory.md",
            "domains/alpha/config.yaml",
            "domains/alpha/state.md",
            "domains/alpha/notes/today.md",
            "domains/beta/config.yaml",
            "domains/beta/state.md",
            "drafts/alpha/draft.md",
            "drafts/beta/draft.md",
            "inbox/pending.md",
            "inbox/active/claimed.md",
            "inbox/done/2026-11/old.md",
            "loops.yaml",
        ] {
            put(f);
        }
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(base.join("outside/secret.md"), "secret").unwrap();
        let link = |target: &str, at: &str| symlink(target, ws.join(at)).unwrap();
        link("../..", "domains/alpha/root");
        link("../../../outside", "domains/alpha/out");
        link("/etc", "domains/alpha/etc");
        link("missing-target", "domains/alpha/dangling");
        link("../../outside/new.md", "domains/alpha/dangling-out");
        link("cycle-b", "domains/alpha/cycle-a");
        link("cycle-a", "domains/alpha/cycle-b");
        link("../../.git", "domains/alpha/git");
        link("../../.loops", "domains/alpha/runner");
        link("../../SOUL.md", "domains/alpha/soul.md");
        link("config.yaml", "domains/alpha/config-link.yaml");
        link("../../domains/beta", "drafts/alpha/beta");
        link("../domains/beta/state.md", "inbox/link.md");
        link("../domains/alpha", "inbox/alpha-dir");
        link("../outside", "inbox/out");
        link("domains/alpha", "alpha");
        symlink(&ws, base.join("given")).unwrap();
        Fixture {
            given: base.join("given"),
            real: ws.canonicalize().unwrap(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Tool arguments are JSON strings: always UTF-8.
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let fx = fixture();
    let scope = match mode % 3 {
        0 => Scope::Isolated {
            loop_name: LOOP.into(),
        },
        1 => Scope::Job { name: LOOP.into() },
        _ => Scope::Main,
    };
    let access = if mode & 0x10 == 0 {
        Access::Read
    } else {
        Access::Write
    };
    let path = match (mode >> 5) & 3 {
        1 => format!("{}/{path}", fx.given.display()),
        2 => format!("{}/{path}", fx.real.display()),
        _ => path.to_string(),
    };
    let sb = Sandbox::new(&fx.given, scope.clone());
    let real = match sb.resolve(&path, access) {
        Ok(real) => real,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let why = format!("{path:?} ({scope:?}, {access:?}) resolved to {real:?}");

    let rel: Vec<String> = match real.strip_prefix(&fx.real) {
        Ok(rest) => rest
            .components()
            .map(|c| match c {
                Component::Normal(s) => s.to_string_lossy().into_owned(),
                other => panic!("{why}: a {other:?} component"),
            })
            .collect(),
        Err(_) => panic!("{why}: outside the workspace"),
    };
    // Every part of the path that exists is what it says: a link on the way would mean
    // the tool touches something other than what was checked.
    let mut p = fx.real.clone();
    for name in &rel {
        p.push(name);
        match std::fs::symlink_metadata(&p) {
            Ok(md) => assert!(!md.file_type().is_symlink(), "{why}: {p:?} is a link"),
            Err(_) => break,
        }
    }
    let is = |c: &str, name: &str| c.eq_ignore_ascii_case(name);
    assert!(!rel.iter().any(|c| is(c, ".git")), "{why}: inside .git");
    let top = rel.first().map(String::as_str).unwrap_or("");
    let minion = !matches!(scope, Scope::Main);
    if access == Access::Write || minion {
        assert!(!is(top, ".loops"), "{why}: the runner's folder");
    }
    if minion {
        for private in ["SOUL.md", "USER.md", ".working-memory"] {
            assert!(!is(top, private), "{why}: private to the main session");
        }
    }
    let parts: Vec<&str> = rel.iter().map(String::as_str).collect();
    if matches!(scope, Scope::Isolated { .. }) && access == Access::Read {
        // Its own folders, or the folders on the way to them; nothing else (no reads:).
        let own = |area: &str| {
            let want = [area, LOOP];
            parts.len() <= 2 && parts.iter().zip(want).all(|(a, b)| *a == b)
                || parts.len() > 2 && parts[..2] == want
        };
        assert!(
            parts.is_empty() || own("domains") || own("drafts"),
            "{why}: not the minion's to read"
        );
    }
    if access == Access::Write {
        assert!(!rel.is_empty(), "{why}: the root itself");
        // What no scope writes: configs, git's files, the inbox.
        assert!(!(parts.len() == 1 && is(parts[0], "loops.yaml")), "{why}: loops.yaml");
        assert!(
            !matches!(parts.as_slice(), ["domains", _, c] if is(c, "config.yaml")),
            "{why}: a config.yaml"
        );
        assert!(
            !parts.iter().any(|c| is(c, ".gitignore") || is(c, ".gitattributes") || is(c, ".gitmodules")),
            "{why}: git's own file"
        );
        assert!(!is(top, "inbox"), "{why}: the inbox");
        if minion {
            let ok = match parts.as_slice() {
                ["domains", LOOP, rest @ ..] => {
                    matches!(scope, Scope::Isolated { .. })
                        && !rest.is_empty()
                        && !(rest.len() == 1 && is(rest[0], "prompt.md"))
                }
                ["drafts", LOOP, _, ..] => true,
                _ => false,
            };
            assert!(ok, "{why}: not the scope's to write");
        }
    }

    let shown = sb.relative(&real);
    match sb.resolve(&shown, access) {
        Ok(again) => assert_eq!(again, real, "{why}: shown as {shown:?}"),
        Err(e) => panic!("{why}: shown as {shown:?}, which is refused: {e}"),
    }
});
