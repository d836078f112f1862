//! The agent's path sandbox and file tools, against real folders and real symbolic links.

use loops_agent::files;
use loops_agent::sandbox::{Access, Sandbox, Scope};
use loops_agent::ToolResult;
use serde_json::{json, Value};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

const SOUL_SECRET: &str = "SOUL-SECRET-4711";
const USER_SECRET: &str = "USER-SECRET-4712";
const MEMORY_SECRET: &str = "MEMORY-SECRET-4713";
const OUTSIDE_SECRET: &str = "OUTSIDE-SECRET-0815";
const GIT_SECRET: &str = "GIT-SECRET-0816";
const RUNNER_SECRET: &str = "RUNNER-SECRET-0817";
const SECRETS: [&str; 6] = [
    SOUL_SECRET,
    USER_SECRET,
    MEMORY_SECRET,
    OUTSIDE_SECRET,
    GIT_SECRET,
    RUNNER_SECRET,
];

/// A workspace (`ws/`) beside a folder outside it (`outside/`) and a symbolic link to the
/// workspace from outside (`alias`), all in one temp dir. The loop under test is `a`.
struct Fx {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    outside: PathBuf,
    alias: PathBuf,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().canonicalize().expect("canonical tempdir");
    let root = base.join("ws");
    let outside = base.join("outside");
    let alias = base.join("alias");
    let f = Fx {
        _dir: dir,
        base,
        root,
        outside,
        alias,
    };
    for (rel, text) in [
        (".git/config", GIT_SECRET),
        (".git/HEAD", "ref: refs/heads/main\n"),
        (".loops/state/x.json", RUNNER_SECRET),
        (".loops/x", RUNNER_SECRET),
        ("SOUL.md", SOUL_SECRET),
        ("USER.md", USER_SECRET),
        (".working-memory/memory.md", MEMORY_SECRET),
        ("loops.yaml", "timezone: UTC\n"),
        ("domains/a/state.md", "# State of a\n"),
        ("domains/a/config.yaml", "session: isolated\n"),
        ("domains/b/state.md", "# State of b\n"),
        ("domains/b/config.yaml", "gate: [\"./check.sh\"]\n"),
        ("domains/b/check.sh", "#!/bin/sh\necho go\n"),
        ("drafts/other-loop/x.md", "other draft\n"),
        ("inbox/existing.md", "# An open handoff\n"),
    ] {
        f.put(rel, text);
    }
    for d in ["drafts/a", "inbox/active", "inbox/done/2026-01"] {
        std::fs::create_dir_all(f.root.join(d)).expect("mkdir");
    }
    std::fs::create_dir_all(&f.outside).expect("mkdir outside");
    std::fs::write(f.outside.join("secret.txt"), OUTSIDE_SECRET).expect("write secret");

    let a = f.root.join("domains/a");
    let link = |target: &Path, name: &str| symlink(target, a.join(name)).expect("symlink");
    link(Path::new("/etc"), "etc");
    link(Path::new("/etc/passwd"), "passwd");
    link(&f.outside.join("missing.txt"), "dangling");
    link(Path::new("missing.md"), "dangling-inside");
    link(Path::new("chain2"), "chain1");
    link(&f.outside.join("secret.txt"), "chain2");
    link(Path::new("../b"), "tob");
    link(Path::new("../../.git"), "gitlink");
    link(Path::new("../../SOUL.md"), "soul");
    link(Path::new("../../.loops"), "loopslink");
    link(&f.outside, "outdir");
    symlink(&f.root, &f.alias).expect("alias symlink");
    f
}

impl Fx {
    fn put(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }

    fn get(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    fn iso(&self) -> Sandbox {
        Sandbox::new(
            &self.root,
            Scope::Isolated {
                loop_name: "a".into(),
            },
        )
    }

    fn main(&self) -> Sandbox {
        Sandbox::new(&self.root, Scope::Main)
    }

    fn sb(&self, who: Who) -> Sandbox {
        match who {
            Who::Iso => self.iso(),
            Who::Main => self.main(),
        }
    }

    /// Every file under the temp dir whose content contains `needle` (symlinks not
    /// followed), to prove a refused write left nothing behind.
    fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        walkdir::WalkDir::new(&self.base)
            .follow_links(false)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle)))
            .map(|e| e.path().to_path_buf())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Iso,
    Main,
}

fn ok(r: ToolResult) -> String {
    match r {
        Ok(o) => o.text,
        Err(e) => panic!("the tool failed: {}", e.message),
    }
}

fn err(r: ToolResult) -> String {
    match r {
        Ok(o) => panic!("the tool should have failed, but returned: {}", o.text),
        Err(e) => e.message,
    }
}

fn no_secrets(msg: &str) {
    for s in SECRETS {
        assert!(!msg.contains(s), "a message echoes file contents: {msg}");
    }
}

// ---------------------------------------------------------------------------------------
// The sandbox

#[test]
fn hostile_paths_are_refused() {
    let f = fx();
    let root = f.root.display().to_string();
    let parent = f.root.parent().expect("parent").display().to_string();
    let alias = f.alias.display().to_string();
    let outside = f.outside.display().to_string();

    // (path, scopes, also refused for reading)
    use Who::{Iso, Main};
    const BOTH: &[Who] = &[Iso, Main];
    const ISO: &[Who] = &[Iso];
    let cases: Vec<(String, &[Who], bool)> = vec![
        // `..` in its many forms, even when it would stay inside
        ("../x".into(), BOTH, true),
        ("..".into(), BOTH, true),
        ("domains/../../etc/passwd".into(), BOTH, true),
        ("domains/a/../../../x".into(), BOTH, true),
        ("./../x".into(), BOTH, true),
        ("domains/a/..".into(), BOTH, true),
        ("domains/a/../b/state.md".into(), BOTH, true),
        ("domains//../x".into(), BOTH, true),
        ("domains/a/./../../x".into(), BOTH, true),
        ("inbox/done/..".into(), BOTH, true),
        ("inbox/done/../x.md".into(), BOTH, true),
        (format!("{root}/../outside/secret.txt"), BOTH, true),
        // absolute paths outside
        ("/etc/passwd".into(), BOTH, true),
        ("/tmp/x".into(), BOTH, true),
        ("/".into(), BOTH, true),
        (parent.clone(), BOTH, true),
        (format!("{parent}/outside/secret.txt"), BOTH, true),
        (format!("{outside}/secret.txt"), BOTH, true),
        (format!("{root}-other/x"), BOTH, true),
        // the workspace through a symbolic link to its root, from outside
        (format!("{alias}/domains/a/state.md"), BOTH, true),
        (format!("{alias}/loops.yaml"), BOTH, true),
        // git's and the runner's folders
        (".git".into(), BOTH, true),
        (".git/".into(), BOTH, true),
        (".git/config".into(), BOTH, true),
        (".git/HEAD".into(), BOTH, true),
        (".GIT/config".into(), BOTH, true),
        ("./.git/config".into(), BOTH, true),
        (".git/hooks/pre-commit".into(), BOTH, true),
        (format!("{root}/.git/config"), BOTH, true),
        ("domains/a/.git/config".into(), BOTH, true),
        (".loops/state/x.json".into(), BOTH, false),
        (".loops/state/x.json".into(), ISO, true),
        ("./.loops/x".into(), BOTH, false),
        ("./.loops/x".into(), ISO, true),
        (".LOOPS/x".into(), BOTH, false),
        (".loops".into(), ISO, true),
        // malformed
        ("".into(), BOTH, true),
        ("   ".into(), BOTH, true),
        ("domains/a/x\0.md".into(), BOTH, true),
        ("domains/a/x\n.md".into(), BOTH, true),
        ("..\\..\\x".into(), BOTH, true),
        ("domains\\a\\state.md".into(), BOTH, true),
        ("~/x".into(), BOTH, true),
        ("~".into(), BOTH, true),
        ("~root/x".into(), BOTH, true),
        ("C:\\x".into(), BOTH, true),
        ("C:/x".into(), BOTH, true),
        ("c:x".into(), BOTH, true),
        // symbolic links leading outside, wherever they sit in the path
        ("domains/a/etc".into(), BOTH, true),
        ("domains/a/etc/passwd".into(), BOTH, true),
        ("domains/a/etc/new-file".into(), BOTH, true),
        ("domains/a/passwd".into(), BOTH, true),
        ("domains/a/dangling".into(), BOTH, true),
        ("domains/a/dangling-inside".into(), BOTH, true),
        ("domains/a/chain1".into(), BOTH, true),
        ("domains/a/chain2".into(), BOTH, true),
        ("domains/a/outdir/secret.txt".into(), BOTH, true),
        ("domains/a/outdir/new.md".into(), BOTH, true),
        ("domains/a/gitlink".into(), BOTH, true),
        ("domains/a/gitlink/config".into(), BOTH, true),
        (format!("{root}/domains/a/passwd"), BOTH, true),
        // links that stay inside but reach what the scope may not touch
        ("domains/a/tob/state.md".into(), ISO, true),
        ("domains/a/tob/new.md".into(), ISO, false),
        ("domains/a/soul".into(), ISO, true),
        ("domains/a/loopslink/x".into(), ISO, true),
        ("domains/a/loopslink/x".into(), BOTH, false),
        // an isolated loop outside its own areas
        ("domains/b/state.md".into(), ISO, true),
        ("domains/b/new.md".into(), ISO, false),
        ("domains/A/state.md".into(), ISO, false),
        ("domains/new-loop/state.md".into(), ISO, false),
        ("domains/a".into(), ISO, false),
        ("domains/a/config.yaml".into(), ISO, false),
        ("domains/x.md".into(), ISO, false),
        ("SOUL.md".into(), ISO, true),
        ("USER.md".into(), ISO, true),
        ("soul.md".into(), ISO, true),
        (format!("{root}/SOUL.md"), ISO, true),
        (".working-memory/memory.md".into(), ISO, true),
        (".working-memory/new.md".into(), ISO, true),
        (".Working-Memory/memory.md".into(), ISO, true),
        ("inbox/active/x.md".into(), ISO, false),
        ("inbox/done/2026-01/x.md".into(), ISO, true),
        ("inbox/existing.md".into(), ISO, true),
        ("inbox/x.txt".into(), ISO, false),
        ("inbox/.hidden.md".into(), ISO, false),
        ("inbox/.md".into(), ISO, false),
        ("inbox".into(), ISO, false),
        ("drafts/other-loop/x.md".into(), ISO, true),
        ("drafts/x.md".into(), ISO, false),
        ("drafts/a".into(), ISO, false),
        ("loops.yaml".into(), ISO, true),
        ("README.md".into(), ISO, true),
        ("domains/a/prompt.md".into(), ISO, false),
        ("domains/a/.env".into(), ISO, true),
        // what a run executes, and git's own files: no scope writes them
        ("loops.yaml".into(), BOTH, false),
        ("LOOPS.yaml".into(), BOTH, false),
        ("domains/a/config.yaml".into(), BOTH, false),
        ("domains/b/config.yaml".into(), BOTH, false),
        ("domains/b/check.sh".into(), BOTH, false),
        ("domains/a/tob/check.sh".into(), BOTH, false),
        (".gitignore".into(), BOTH, false),
        ("domains/a/.gitignore".into(), BOTH, false),
        ("drafts/a/.GITATTRIBUTES".into(), BOTH, false),
        (".gitmodules".into(), BOTH, false),
        // the inbox: only through create_handoff
        ("inbox/new.md".into(), BOTH, false),
        ("inbox/existing.md".into(), BOTH, false),
        ("inbox/active/x.md".into(), BOTH, false),
        // the root itself is no file to write
        (".".into(), BOTH, false),
        (root.clone(), BOTH, false),
    ];
    assert!(cases.len() >= 40);

    let mut failures = Vec::new();
    for (path, whos, read_too) in &cases {
        for &who in *whos {
            let sb = f.sb(who);
            let accesses: &[Access] = if *read_too {
                &[Access::Write, Access::Read]
            } else {
                &[Access::Write]
            };
            for &access in accesses {
                match sb.resolve(path, access) {
                    Ok(p) => failures.push(format!(
                        "{who:?} {access:?} {path:?} was allowed (-> {})",
                        p.display()
                    )),
                    Err(e) => {
                        let msg = e.to_string();
                        no_secrets(&msg);
                        // The tools refuse it too, without a word of the contents.
                        let tool = if access == Access::Read {
                            files::read_file(&sb, &json!({ "path": path }))
                        } else {
                            files::write_file(&sb, &json!({ "path": path, "content": "PWNED" }))
                        };
                        match tool {
                            Ok(o) => failures.push(format!(
                                "{who:?} {access:?} {path:?}: the tool worked: {}",
                                o.text
                            )),
                            Err(e) => no_secrets(&e.message),
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} hostile path(s) were not refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(f.files_containing("PWNED"), Vec::<PathBuf>::new());
    assert_eq!(
        std::fs::read_to_string(f.outside.join("secret.txt")).expect("secret"),
        OUTSIDE_SECRET
    );
}

#[test]
fn allowed_paths_resolve_to_their_real_files() {
    let f = fx();
    let root = f.root.display().to_string();
    use Who::{Iso, Main};
    let cases: Vec<(Who, Access, String, &str)> = vec![
        (
            Iso,
            Access::Write,
            "domains/a/state.md".into(),
            "domains/a/state.md",
        ),
        (
            Iso,
            Access::Write,
            "./domains/a/state.md".into(),
            "domains/a/state.md",
        ),
        (
            Iso,
            Access::Write,
            "domains//a/./state.md".into(),
            "domains/a/state.md",
        ),
        (
            Iso,
            Access::Write,
            "domains/a/new/deeper/x.md".into(),
            "domains/a/new/deeper/x.md",
        ),
        (Iso, Access::Write, "drafts/a/x.md".into(), "drafts/a/x.md"),
        (Iso, Access::Write, "drafts/a/sub/".into(), "drafts/a/sub"),
        (
            Iso,
            Access::Write,
            format!("{root}/domains/a/state.md"),
            "domains/a/state.md",
        ),
        (Iso, Access::Read, "domains".into(), "domains"),
        (Iso, Access::Read, "drafts/a/x.md".into(), "drafts/a/x.md"),
        (Iso, Access::Read, "domains/a/".into(), "domains/a"),
        (Iso, Access::Read, ".".into(), ""),
        (Iso, Access::Read, "./".into(), ""),
        (Iso, Access::Read, root.clone(), ""),
        (Main, Access::Write, "SOUL.md".into(), "SOUL.md"),
        (Main, Access::Write, "USER.md".into(), "USER.md"),
        (
            Main,
            Access::Write,
            ".working-memory/memory.md".into(),
            ".working-memory/memory.md",
        ),
        (
            Main,
            Access::Write,
            "domains/b/state.md".into(),
            "domains/b/state.md",
        ),
        (
            Main,
            Access::Write,
            "domains/a/prompt.md".into(),
            "domains/a/prompt.md",
        ),
        (
            Main,
            Access::Write,
            "domains/a/tob/state.md".into(),
            "domains/b/state.md",
        ),
        (Main, Access::Read, "loops.yaml".into(), "loops.yaml"),
        (Main, Access::Read, ".loops/x".into(), ".loops/x"),
        (Main, Access::Read, "SOUL.md".into(), "SOUL.md"),
        (Main, Access::Read, "domains/a/soul".into(), "SOUL.md"),
    ];
    let mut failures = Vec::new();
    for (who, access, path, want) in &cases {
        let want = if want.is_empty() {
            f.root.clone()
        } else {
            f.root.join(want)
        };
        match f.sb(*who).resolve(path, *access) {
            Ok(p) if p == want => {}
            Ok(p) => failures.push(format!(
                "{who:?} {access:?} {path:?} -> {} (want {})",
                p.display(),
                want.display()
            )),
            Err(e) => failures.push(format!("{who:?} {access:?} {path:?} refused: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "allowed paths failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn a_root_given_through_a_symlink_is_canonical_and_its_spelling_is_inside() {
    let f = fx();
    let sb = Sandbox::new(
        &f.alias,
        Scope::Isolated {
            loop_name: "a".into(),
        },
    );
    assert_eq!(sb.root(), f.root.as_path());
    let abs = format!("{}/domains/a/state.md", f.alias.display());
    assert_eq!(
        sb.resolve(&abs, Access::Write)
            .expect("inside through the given root"),
        f.root.join("domains/a/state.md")
    );
    assert!(sb
        .resolve(&format!("{}/SOUL.md", f.alias.display()), Access::Read)
        .is_err());
}

/// Found by the path_check fuzz target (fuzz/regressions/path_check/): `<root>/~/x`,
/// `./~/x` and `<root>/ ` resolved, but `~/x` and ` `, the names the tools then show for
/// those files, were refused. Each committed input is a mode byte (0x2e: an agent job,
/// 0x2d: an isolated loop; reading, spelled from the root as given) and the path.
#[test]
fn fuzz_regression_a_name_the_tools_show_is_one_they_take() {
    let f = fx();
    let alias = f.alias.display();
    let root = f.root.display();
    let inputs: [(&[u8], &str); 2] = [
        (
            include_bytes!("../../fuzz/regressions/path_check/tilde-under-the-given-root"),
            "home folder",
        ),
        (
            include_bytes!("../../fuzz/regressions/path_check/space-name-under-the-given-root"),
            "only spaces",
        ),
    ];
    for (input, why) in inputs {
        let (&mode, path) = input.split_first().expect("a mode byte");
        let path = std::str::from_utf8(path).expect("UTF-8 path");
        let scope = if mode % 3 == 1 {
            Scope::Job { name: "a".into() }
        } else {
            Scope::Isolated {
                loop_name: "a".into(),
            }
        };
        let sb = Sandbox::new(&f.alias, scope);
        for p in [
            format!("{alias}/{path}"),
            format!("{root}/{path}"),
            format!("./{path}"),
            format!(".//{path}"),
        ] {
            for access in [Access::Read, Access::Write] {
                let e = sb.resolve(&p, access).expect_err(&p).to_string();
                assert!(e.contains(why), "{p:?}: {e}");
            }
        }
    }
    let sb = Sandbox::new(&f.alias, Scope::Main);
    let e = sb
        .resolve("domains/a/ /x", Access::Read)
        .expect_err("a space folder");
    assert!(e.to_string().contains("only spaces"), "{e}");
    for p in [format!("{root}/C:/x"), "./c:x".to_string()] {
        let e = sb.resolve(&p, Access::Read).expect_err(&p).to_string();
        assert!(e.contains("drive letter"), "{p}: {e}");
    }
    // Below the top, `~` starts a plain file name, shown and taken back the same way.
    let deeper = sb
        .resolve(&format!("{alias}/drafts/a/~notes.md"), Access::Write)
        .expect("a draft named ~notes.md");
    assert_eq!(sb.relative(&deeper), "drafts/a/~notes.md");
    assert_eq!(
        sb.resolve("drafts/a/~notes.md", Access::Write).ok(),
        Some(deeper)
    );
}

#[test]
fn refusals_say_what_is_allowed() {
    let f = fx();
    let iso = f.iso();
    let msg = |sb: &Sandbox, p: &str, a| sb.resolve(p, a).expect_err(p).to_string();

    let m = msg(&iso, "domains/b/state.md", Access::Write);
    assert!(
        m.contains("domains/b/state.md")
            && m.contains("domains/a/")
            && m.contains("drafts/a/")
            && m.contains("create_handoff"),
        "{m}"
    );
    let m = msg(&iso, "domains/b/state.md", Access::Read);
    assert!(m.contains("reads:") && m.contains("domains/a/"), "{m}");
    let m = msg(&f.main(), "domains/b/check.sh", Access::Write);
    assert!(
        m.contains("the gate of loop `b`") && m.contains("to: person"),
        "{m}"
    );
    let m = msg(&f.main(), "loops.yaml", Access::Write);
    assert!(m.contains("to: person"), "{m}");
    let m = msg(&iso, "domains/a/prompt.md", Access::Write);
    assert!(m.contains("edit_prompt: true"), "{m}");
    let m = msg(&iso, "domains/a/tob/state.md", Access::Write);
    assert!(m.contains("symbolic link to domains/b/state.md"), "{m}");
    let m = msg(&iso, "../x", Access::Read);
    assert!(m.contains("'..'") && m.contains("workspace root"), "{m}");
    let m = msg(&f.main(), ".git/config", Access::Write);
    assert!(m.contains(".git/") && m.contains("never written"), "{m}");
    let m = msg(&iso, "SOUL.md", Access::Read);
    assert!(m.contains("private to the main session"), "{m}");
    let m = msg(&f.main(), "inbox/existing.md", Access::Write);
    assert!(m.contains("create_handoff"), "{m}");
    let m = msg(&iso, "domains/a/passwd", Access::Read);
    assert!(m.contains("outside the workspace"), "{m}");
    let m = msg(&iso, "/etc/passwd", Access::Read);
    assert!(m.contains("outside the workspace"), "{m}");
    let m = msg(&iso, "domains/a/x\0y", Access::Read);
    assert!(m.contains("NUL") && !m.contains('\0'), "{m}");
    let m = msg(&iso, "", Access::Read);
    assert!(m.contains("no path given"), "{m}");

    let e: loops_agent::ToolError = iso
        .resolve("SOUL.md", Access::Read)
        .expect_err("private")
        .into();
    assert!(e.message.contains("SOUL.md"));
}

#[test]
fn relative_shows_workspace_paths() {
    let f = fx();
    let sb = f.main();
    assert_eq!(
        sb.relative(&f.root.join("domains/a/state.md")),
        "domains/a/state.md"
    );
    assert_eq!(sb.relative(&f.root), ".");
    assert_eq!(sb.relative(Path::new("/etc/passwd")), "/etc/passwd");
}

// ---------------------------------------------------------------------------------------
// read_file

#[test]
fn read_file_whole_and_ranges() {
    let f = fx();
    let sb = f.iso();
    f.put("domains/a/notes.md", "one\ntwo\nthree\nfour\nfive\n");
    assert_eq!(
        ok(files::read_file(
            &sb,
            &json!({"path": "domains/a/notes.md"})
        )),
        "one\ntwo\nthree\nfour\nfive\n"
    );

    let r = ok(files::read_file(
        &sb,
        &json!({"path": "domains/a/notes.md", "start_line": 2, "end_line": 3}),
    ));
    assert_eq!(r, "[domains/a/notes.md: lines 2-3 of 5]\ntwo\nthree\n");
    let r = ok(files::read_file(
        &sb,
        &json!({"path": "domains/a/notes.md", "start_line": 4}),
    ));
    assert_eq!(r, "[domains/a/notes.md: lines 4-5 of 5]\nfour\nfive\n");
    let r = ok(files::read_file(
        &sb,
        &json!({"path": "domains/a/notes.md", "end_line": 1}),
    ));
    assert_eq!(r, "[domains/a/notes.md: lines 1-1 of 5]\none\n");
    let r = ok(files::read_file(
        &sb,
        &json!({"path": "domains/a/notes.md", "start_line": 5, "end_line": 99}),
    ));
    assert_eq!(r, "[domains/a/notes.md: lines 5-5 of 5]\nfive\n");

    // No final newline: the last line still counts.
    f.put("domains/a/short.md", "x\ny");
    let r = ok(files::read_file(
        &sb,
        &json!({"path": "domains/a/short.md", "start_line": 2}),
    ));
    assert_eq!(r, "[domains/a/short.md: lines 2-2 of 2]\ny");

    let e = err(files::read_file(
        &sb,
        &json!({"path": "domains/a/notes.md", "start_line": 9}),
    ));
    assert!(e.contains("has 5 lines") && e.contains("start_line"), "{e}");
    let e = err(files::read_file(
        &sb,
        &json!({"path": "domains/a/notes.md", "start_line": 3, "end_line": 2}),
    ));
    assert!(e.contains("before start_line"), "{e}");
    let e = err(files::read_file(
        &sb,
        &json!({"path": "domains/a/notes.md", "start_line": 0}),
    ));
    assert!(e.contains("numbered from 1"), "{e}");

    f.put("domains/a/empty.md", "");
    let r = ok(files::read_file(
        &sb,
        &json!({"path": "domains/a/empty.md"}),
    ));
    assert!(r.contains("is empty"), "{r}");
}

#[test]
fn read_file_errors_are_clear() {
    let f = fx();
    let sb = f.iso();
    std::fs::write(
        f.root.join("domains/a/image.png"),
        [0x89u8, b'P', b'N', b'G', 0xff, 0xfe, 0, 1],
    )
    .expect("write");
    let e = err(files::read_file(
        &sb,
        &json!({"path": "domains/a/image.png"}),
    ));
    assert!(e.contains("not a text file"), "{e}");

    let e = err(files::read_file(&sb, &json!({"path": "domains/a"})));
    assert!(e.contains("folder") && e.contains("list_files"), "{e}");
    let e = err(files::read_file(&sb, &json!({"path": "domains/a/nope.md"})));
    assert!(
        e.contains("does not exist") && e.contains("list_files"),
        "{e}"
    );

    for (input, want) in [
        (json!({}), "`path` is required"),
        (json!({"file": "x"}), "given were: file"),
        (
            json!({"path": 5}),
            "`path` must be a string, not the number 5",
        ),
        (json!({"path": null}), "`path` is required"),
        (json!("domains/a/state.md"), "JSON object"),
        (json!([1, 2]), "JSON object"),
        (
            json!({"path": "domains/a/state.md", "start_line": "2"}),
            "`start_line` must be a whole line number",
        ),
        (
            json!({"path": "domains/a/state.md", "start_line": -1}),
            "`start_line` must be a whole line number",
        ),
        (
            json!({"path": "domains/a/state.md", "end_line": 2.5}),
            "`end_line` must be a whole line number",
        ),
    ] {
        let e = err(files::read_file(&sb, &input));
        assert!(
            e.starts_with("read_file: ") && e.contains(want),
            "{input}: {e}"
        );
    }
}

#[test]
fn read_file_caps_long_files_and_says_how_to_go_on() {
    let f = fx();
    let sb = f.iso();
    let line = format!("{}\n", "x".repeat(99)); // 100 bytes a line
    f.put("domains/a/big.md", &line.repeat(4000)); // 400,000 bytes
    let r = ok(files::read_file(&sb, &json!({"path": "domains/a/big.md"})));
    assert!(r.len() <= files::READ_LIMIT + 300, "{} bytes", r.len());
    let shown = files::READ_LIMIT / 100; // whole lines that fit
    assert!(
        r.contains(&format!("lines 1-{shown} of 4000"))
            && r.contains(&format!("start_line={}", shown + 1)),
        "{}",
        &r[r.len() - 300..]
    );
    assert!(r.starts_with(&line));

    let r = ok(files::read_file(
        &sb,
        &json!({"path": "domains/a/big.md", "start_line": 3001}),
    ));
    assert!(
        r.starts_with("[domains/a/big.md: lines 3001-4000 of 4000]\n"),
        "{}",
        &r[..80]
    );
    assert!(!r.contains("capped"));

    // One line longer than the cap: its start, and a note.
    f.put("domains/a/one-line.md", &"é".repeat(200_000));
    let r = ok(files::read_file(
        &sb,
        &json!({"path": "domains/a/one-line.md"}),
    ));
    assert!(
        r.len() <= files::READ_LIMIT + 300 && r.contains("line 1 alone"),
        "{}",
        r.len()
    );
}

// ---------------------------------------------------------------------------------------
// list_files

#[test]
fn list_files_hides_git_and_what_the_scope_may_not_read() {
    let f = fx();
    let iso = f.iso();
    let top = ok(files::list_files(&iso, &json!({})));
    let entries: Vec<&str> = top.lines().collect();
    assert_eq!(
        entries,
        ["domains/", "drafts/"],
        "only the way to its own folders: {top}"
    );

    let all = ok(files::list_files(&iso, &json!({"recursive": true})));
    let entries: Vec<&str> = all.lines().collect();
    for want in ["domains/a/state.md", "drafts/a/"] {
        assert!(entries.contains(&want), "{want} missing from:\n{all}");
    }
    for other in ["domains/b/", "inbox/", "drafts/other-loop/", "loops.yaml"] {
        assert!(
            !entries.iter().any(|e| e.starts_with(other)),
            "{other} listed for an isolated loop:\n{all}"
        );
    }
    for e in &entries {
        assert!(
            !e.contains(".git")
                && !e.contains(".loops")
                && !e.contains("SOUL")
                && !e.contains("USER.md")
                && !e.contains(".working-memory"),
            "{e} listed for an isolated loop"
        );
    }
    // Links leading outside, or to what the loop may not read, are left out; links are
    // never followed.
    for hidden in [
        "domains/a/etc",
        "domains/a/passwd",
        "domains/a/dangling",
        "domains/a/chain1",
        "domains/a/outdir",
        "domains/a/soul",
        "domains/a/gitlink",
        "domains/a/tob",
        "domains/a/tob/state.md",
    ] {
        assert!(
            !all.contains(&format!("{hidden}\n")) && !all.contains(&format!("{hidden}/")),
            "{hidden} listed:\n{all}"
        );
    }
    let mut sorted = entries.clone();
    sorted.sort();
    assert_eq!(entries, sorted);

    let main = ok(files::list_files(
        &f.main(),
        &json!({"path": "", "recursive": true}),
    ));
    assert!(
        main.lines().any(|l| l == "SOUL.md") && main.lines().any(|l| l == ".loops/x"),
        "{main}"
    );
    assert!(!main.lines().any(|l| l.starts_with(".git/")), "{main}");

    let e = err(files::list_files(&iso, &json!({"path": "domains/b"})));
    assert!(e.contains("reads:"), "{e}");
    let e = err(files::list_files(
        &iso,
        &json!({"path": "domains/a/state.md"}),
    ));
    assert!(e.contains("read_file"), "{e}");
    let e = err(files::list_files(&iso, &json!({"path": ".working-memory"})));
    assert!(e.contains("private"), "{e}");
    let e = err(files::list_files(&iso, &json!({"recursive": "yes"})));
    assert!(e.contains("`recursive` must be true or false"), "{e}");
}

#[test]
fn list_files_stops_at_its_cap() {
    let f = fx();
    let dir = f.root.join("domains/a/many");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for i in 0..(files::LIST_LIMIT + 50) {
        std::fs::write(dir.join(format!("f{i:05}.md")), "x").expect("write");
    }
    let r = ok(files::list_files(
        &f.iso(),
        &json!({"path": "domains/a/many"}),
    ));
    let lines: Vec<&str> = r.lines().collect();
    assert_eq!(lines.len(), files::LIST_LIMIT + 1);
    assert_eq!(lines[0], "domains/a/many/f00000.md");
    assert!(
        lines[files::LIST_LIMIT].contains("stopped at 2000 entries"),
        "{}",
        lines[files::LIST_LIMIT]
    );
}

// ---------------------------------------------------------------------------------------
// search_files

#[test]
fn search_files_finds_lines() {
    let f = fx();
    // A loop whose config lets it read domains/b/ (`reads:`).
    let scope = Scope::Isolated {
        loop_name: "a".into(),
    };
    let mut walls = loops_agent::sandbox::Walls::load(&f.root, &scope);
    walls.reads = vec!["domains/b".into()];
    let sb = Sandbox::with_walls(&f.root, scope, walls);
    f.put("domains/a/notes.md", "alpha\nthe needle here\nbeta\n");
    f.put("domains/b/log.txt", "another needle\n");
    let r = ok(files::search_files(&sb, &json!({"pattern": "needle"})));
    assert_eq!(
        r,
        "domains/a/notes.md:2: the needle here\ndomains/b/log.txt:1: another needle"
    );

    let r = ok(files::search_files(
        &sb,
        &json!({"pattern": "needle", "glob": "*.md"}),
    ));
    assert_eq!(r, "domains/a/notes.md:2: the needle here");
    let r = ok(files::search_files(
        &sb,
        &json!({"pattern": "needle", "glob": "domains/b/**"}),
    ));
    assert_eq!(r, "domains/b/log.txt:1: another needle");
    let r = ok(files::search_files(
        &sb,
        &json!({"pattern": "needle", "glob": "*.{txt,csv}"}),
    ));
    assert_eq!(r, "domains/b/log.txt:1: another needle");
    let r = ok(files::search_files(
        &sb,
        &json!({"pattern": "(?i)NEEDLE", "path": "domains/a"}),
    ));
    assert_eq!(r, "domains/a/notes.md:2: the needle here");
    let r = ok(files::search_files(
        &sb,
        &json!({"pattern": "needle", "path": "domains/b/log.txt"}),
    ));
    assert_eq!(r, "domains/b/log.txt:1: another needle");
    let r = ok(files::search_files(
        &sb,
        &json!({"pattern": "nothing-like-this"}),
    ));
    assert!(r.starts_with("no matches"), "{r}");

    let e = err(files::search_files(&sb, &json!({"pattern": "(unclosed"})));
    assert!(
        e.contains("not a valid regular expression") && e.contains("unclosed"),
        "{e}"
    );
    let e = err(files::search_files(
        &sb,
        &json!({"pattern": "x", "glob": "[abc"}),
    ));
    assert!(e.contains("glob"), "{e}");
    let e = err(files::search_files(&sb, &json!({"path": "domains"})));
    assert!(e.contains("`pattern` is required"), "{e}");
}

#[test]
fn search_files_skips_private_binary_and_large_files() {
    let f = fx();
    let iso = f.iso();
    std::fs::write(f.root.join("domains/a/bin.dat"), b"SECRET-\xff\xfe needle").expect("write");
    f.put(
        "domains/a/large.log",
        &format!("needle\n{}", "y".repeat(files::SEARCH_MAX_FILE as usize)),
    );
    for s in SECRETS {
        let r = ok(files::search_files(&iso, &json!({"pattern": s})));
        assert!(r.starts_with("no matches"), "{s}: {r}");
    }
    let r = ok(files::search_files(&iso, &json!({"pattern": "needle"})));
    assert!(
        r.starts_with("no matches") && r.contains("skipped 1 file(s) over 2 MiB"),
        "{r}"
    );
    // The main session sees its own files; still never git's.
    let r = ok(files::search_files(
        &f.main(),
        &json!({"pattern": "SECRET-47"}),
    ));
    assert_eq!(
        r.lines().filter(|l| l.contains("SECRET-47")).count(),
        3,
        "{r}"
    );
    let r = ok(files::search_files(
        &f.main(),
        &json!({"pattern": GIT_SECRET}),
    ));
    assert!(r.starts_with("no matches"), "{r}");
    let e = err(files::search_files(
        &iso,
        &json!({"pattern": "x", "path": "SOUL.md"}),
    ));
    no_secrets(&e);
}

#[test]
fn search_files_stops_at_its_cap() {
    let f = fx();
    f.put(
        "domains/a/many.md",
        &"match me\n".repeat(files::SEARCH_LIMIT + 100),
    );
    let r = ok(files::search_files(&f.iso(), &json!({"pattern": "match"})));
    let lines: Vec<&str> = r.lines().collect();
    assert_eq!(lines.len(), files::SEARCH_LIMIT + 1);
    assert_eq!(lines[0], "domains/a/many.md:1: match me");
    assert!(
        lines[files::SEARCH_LIMIT].contains("stopped at 500 matches"),
        "{r}"
    );
}

// ---------------------------------------------------------------------------------------
// write_file, edit_file, append_file

#[test]
fn write_file_creates_folders_and_reports_what_it_wrote() {
    let f = fx();
    let sb = f.iso();
    let r = files::write_file(
        &sb,
        &json!({"path": "domains/a/new/deep/x.md", "content": "hello\n"}),
    )
    .expect("write");
    assert_eq!(r.text, "wrote 6 bytes to domains/a/new/deep/x.md");
    assert_eq!(r.wrote, vec![f.root.join("domains/a/new/deep/x.md")]);
    assert_eq!(f.get("domains/a/new/deep/x.md"), "hello\n");

    let e = err(files::write_file(
        &sb,
        &json!({"path": "inbox/from-a.md", "content": "# Handoff\n"}),
    ));
    assert!(e.contains("create_handoff"), "{e}");
    assert!(!f.root.join("inbox/from-a.md").exists());

    let r = ok(files::write_file(
        &sb,
        &json!({"path": "drafts/a/d.md", "content": ""}),
    ));
    assert_eq!(r, "wrote 0 bytes to drafts/a/d.md");

    // Replacing keeps the file's read and write permissions, never an exec bit: text a
    // model wrote is never a program.
    use std::os::unix::fs::PermissionsExt;
    let script = f.put("domains/a/run.sh", "#!/bin/sh\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    ok(files::write_file(
        &sb,
        &json!({"path": "domains/a/run.sh", "content": "#!/bin/sh\necho hi\n"}),
    ));
    let mode = std::fs::metadata(&script)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);

    let e = err(files::write_file(
        &sb,
        &json!({"path": "domains/a/new", "content": "x"}),
    ));
    assert!(e.contains("is a folder"), "{e}");
    let e = err(files::write_file(&sb, &json!({"path": "domains/a/x.md"})));
    assert!(e.contains("`content` is required"), "{e}");
    let e = err(files::write_file(
        &sb,
        &json!({"path": "domains/a/x.md", "content": ["x"]}),
    ));
    assert!(e.contains("`content` must be a string"), "{e}");
    let e = err(files::write_file(
        &sb,
        &json!({"path": "domains/b/state.md", "content": "x"}),
    ));
    assert!(e.contains("domains/a/"), "{e}");
    assert_eq!(f.get("domains/b/state.md"), "# State of b\n");

    // No temporary files are left behind.
    let leftovers = f.files_containing("");
    assert!(
        !leftovers
            .iter()
            .any(|p| p.to_string_lossy().contains(".tmp.")),
        "{leftovers:?}"
    );

    let m = f.main();
    ok(files::write_file(
        &m,
        &json!({"path": "SOUL.md", "content": "new soul"}),
    ));
    ok(files::write_file(
        &m,
        &json!({"path": ".working-memory/memory.md", "content": "remembered"}),
    ));
    assert_eq!(f.get("SOUL.md"), "new soul");
}

#[test]
fn edit_file_replaces_exactly_one_occurrence() {
    let f = fx();
    let sb = f.iso();
    f.put(
        "domains/a/state.md",
        "# State\n\n- count: 1\n- seen: x\n- seen: x\n",
    );
    let r = files::edit_file(
        &sb,
        &json!({"path": "domains/a/state.md", "old_text": "count: 1", "new_text": "count: 2"}),
    )
    .expect("edit");
    assert!(
        r.text.starts_with("edited domains/a/state.md"),
        "{}",
        r.text
    );
    assert_eq!(r.wrote, vec![f.root.join("domains/a/state.md")]);
    assert_eq!(
        f.get("domains/a/state.md"),
        "# State\n\n- count: 2\n- seen: x\n- seen: x\n"
    );

    let e = err(files::edit_file(
        &sb,
        &json!({"path": "domains/a/state.md", "old_text": "count: 7", "new_text": "x"}),
    ));
    assert_eq!(
        e,
        "old_text was not found in domains/a/state.md; read the file and copy the text exactly"
    );
    let e = err(files::edit_file(
        &sb,
        &json!({"path": "domains/a/state.md", "old_text": "- seen: x", "new_text": "y"}),
    ));
    assert_eq!(e, "old_text occurs 2 times in domains/a/state.md; include more surrounding lines so it is unique");
    let e = err(files::edit_file(
        &sb,
        &json!({"path": "domains/a/state.md", "old_text": "", "new_text": "y"}),
    ));
    assert!(e.contains("old_text is empty"), "{e}");
    let e = err(files::edit_file(
        &sb,
        &json!({"path": "domains/a/state.md", "old_text": "x"}),
    ));
    assert!(e.contains("`new_text` is required"), "{e}");
    let e = err(files::edit_file(
        &sb,
        &json!({"path": "domains/a/missing.md", "old_text": "x", "new_text": "y"}),
    ));
    assert!(
        e.contains("does not exist") && e.contains("write_file"),
        "{e}"
    );
    let e = err(files::edit_file(
        &sb,
        &json!({"path": "domains/b/state.md", "old_text": "b", "new_text": "c"}),
    ));
    assert!(e.starts_with("refused to write domains/b/state.md"), "{e}");
    let e = err(files::edit_file(
        &sb,
        &json!({"path": "SOUL.md", "old_text": SOUL_SECRET, "new_text": "c"}),
    ));
    assert!(e.contains("refused to write SOUL.md"), "{e}");
    assert_eq!(
        std::fs::read_to_string(f.root.join("SOUL.md")).expect("soul"),
        SOUL_SECRET
    );

    // Overlapping occurrences are ambiguous too.
    f.put("domains/a/aaa.md", "aaa");
    let e = err(files::edit_file(
        &sb,
        &json!({"path": "domains/a/aaa.md", "old_text": "aa", "new_text": "b"}),
    ));
    assert!(e.contains("occurs 2 times"), "{e}");

    // Deleting text: an empty new_text.
    ok(files::edit_file(
        &sb,
        &json!({"path": "domains/a/state.md", "old_text": "# State\n\n", "new_text": ""}),
    ));
    assert_eq!(
        f.get("domains/a/state.md"),
        "- count: 2\n- seen: x\n- seen: x\n"
    );
}

#[test]
fn append_file_adds_a_line_break_when_needed() {
    let f = fx();
    let sb = f.iso();
    f.put("domains/a/log.md", "first");
    let r = files::append_file(
        &sb,
        &json!({"path": "domains/a/log.md", "content": "second\n"}),
    )
    .expect("append");
    assert_eq!(r.text, "appended 7 bytes to domains/a/log.md");
    assert_eq!(r.wrote, vec![f.root.join("domains/a/log.md")]);
    assert_eq!(f.get("domains/a/log.md"), "first\nsecond\n");
    ok(files::append_file(
        &sb,
        &json!({"path": "domains/a/log.md", "content": "third\n"}),
    ));
    assert_eq!(f.get("domains/a/log.md"), "first\nsecond\nthird\n");

    let r = ok(files::append_file(
        &sb,
        &json!({"path": "drafts/a/new/log.md", "content": "hello"}),
    ));
    assert!(r.contains("a new file"), "{r}");
    assert_eq!(f.get("drafts/a/new/log.md"), "hello");

    let e = err(files::append_file(
        &sb,
        &json!({"path": "domains/a/log.md", "content": ""}),
    ));
    assert!(e.contains("nothing to append"), "{e}");
    let e = err(files::append_file(
        &sb,
        &json!({"path": ".working-memory/log.md", "content": "x"}),
    ));
    assert!(e.contains("refused to write .working-memory/log.md"), "{e}");
    let e = err(files::append_file(
        &sb,
        &json!({"path": "inbox/existing.md", "content": "x"}),
    ));
    assert!(e.contains("create_handoff"), "{e}");
    std::fs::create_dir_all(f.root.join("domains/a/sub")).expect("mkdir");
    let e = err(files::append_file(
        &sb,
        &json!({"path": "domains/a/sub", "content": "x"}),
    ));
    assert!(e.contains("is a folder"), "{e}");
}

#[test]
fn specs_describe_six_tools_with_object_schemas() {
    let specs = files::specs();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "read_file",
            "list_files",
            "search_files",
            "write_file",
            "edit_file",
            "append_file"
        ]
    );
    for s in &specs {
        assert!(s.description.len() > 80, "{}: description too thin", s.name);
        assert_eq!(s.input_schema["type"], "object", "{}", s.name);
        let props = s.input_schema["properties"]
            .as_object()
            .expect("properties");
        let required: Vec<&str> = s.input_schema["required"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for r in &required {
            assert!(
                props.contains_key(*r),
                "{}: required {r} is not a property",
                s.name
            );
        }
        if s.name != "list_files" {
            assert!(
                required.contains(&if s.name == "search_files" {
                    "pattern"
                } else {
                    "path"
                }),
                "{}",
                s.name
            );
        }
    }
}
