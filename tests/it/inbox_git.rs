//! The inbox and the person's git repository: a linked inbox/ is refused, never committed
//! away. The real `loops` binary, real git repositories, the git CLI to check.

use crate::common::{git, main_script, TempWorkspace};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn status(ws: &std::path::Path) -> String {
    git(ws, &["status", "--porcelain", "--untracked-files=all"])
}

#[test]
fn inbox_git_a_linked_inbox_is_refused_at_start_and_stays_as_it_was() {
    let ws = TempWorkspace::new();
    let tools = tempfile::tempdir().unwrap();
    ws.with_main(&format!(
        "  command: {}\n",
        main_script(tools.path(), "", true)
    ));
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("inbox");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("note.md"), "# A note\n").unwrap();
    let inbox = ws.path().join("inbox");
    let _ = std::fs::remove_dir_all(&inbox);
    std::os::unix::fs::symlink(&target, &inbox).unwrap();
    crate::common::git_commit_all(ws.path(), "inbox lives elsewhere");
    let head = git(ws.path(), &["rev-parse", "HEAD"]);
    let tracked = git(ws.path(), &["ls-files", "-s", "inbox"]);
    assert!(tracked.starts_with("120000"), "{tracked}");

    let out = ws
        .cmd()
        .arg("run")
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "loops run did not refuse: {err}");
    assert!(
        err.contains(&format!(
            "inbox/ is a symbolic link to {}",
            target.display()
        )),
        "{err}"
    );
    assert!(err.contains("make inbox/ a real folder"), "{err}");

    let out = ws.cmd().arg("check").output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "loops check passed: {said}");
    assert!(said.contains("inbox/ is a symbolic link"), "{said}");

    // Nothing committed, the link still there and tracked as before, its target intact.
    assert_eq!(git(ws.path(), &["rev-parse", "HEAD"]), head);
    assert_eq!(git(ws.path(), &["ls-files", "-s", "inbox"]), tracked);
    assert!(std::fs::symlink_metadata(&inbox)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(target.join("note.md").is_file());
    assert_eq!(status(ws.path()), "");
}
