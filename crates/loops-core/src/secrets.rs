//! Secrets stay with the daemon (docs/security.md, "Secrets").
//!
//! A child running as the same user can read `/proc/<pid>/environ` and `/proc/<pid>/mem` of
//! the loops process that started it: `env_clear()` on the child is no boundary. So, first
//! thing in `main`, loops takes the whole environment it was given, hands it to a fresh
//! copy of itself through an anonymous in-memory file (a memfd: never on disk, never
//! blocks, any size), and `execve`s that copy with only [`KEPT`] names in its environment.
//! `execve` keeps the pid, so a service manager or a test that signals the pid still
//! reaches loops. The new image reads the handed-over environment into [`var`]'s map,
//! closes the memfd and marks itself undumpable, so a same-user child can read neither its
//! memory nor its (already clean) environment block.
//!
//! Everything in loops that reads the environment asks [`var`]; only [`KEPT`] names are
//! left for the libraries that read the environment themselves (libgit2: HOME,
//! XDG_CONFIG_HOME; reqwest: the proxy variables; chrono: TZ; clap: COLUMNS).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::OnceLock;

/// The variable naming the memfd that carries the environment into the re-executed image.
const HANDOVER_FD: &str = "LOOPS_ENV_HANDOVER_FD";

/// Environment names left in the process's own environment block: none is a secret, and
/// each is read by a library (not through [`var`]) or by a tool loops runs for the person
/// (systemctl needs the session bus). Everything else is only in [`var`]'s map.
pub const KEPT: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TERM",
    "COLUMNS",
    "LINES",
    "NO_COLOR",
    "CLICOLOR",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "DBUS_SESSION_BUS_ADDRESS",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "GIT_CONFIG_NOSYSTEM",
    "GIT_CONFIG_GLOBAL",
    "GIT_CEILING_DIRECTORIES",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    // reqwest reads these itself. A proxy URL with a password in it stays visible to
    // children: docs/security.md says to keep proxy credentials out of it.
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// Prefixes of kept names (the locale categories).
const KEPT_PREFIXES: &[&str] = &["LC_"];

/// The environment loops was started with, once handed over.
static ENV: OnceLock<BTreeMap<OsString, OsString>> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot hand the environment over to a clean copy of loops: {0}; check that /proc is mounted (loops re-executes /proc/self/exe to keep API keys out of its environment block)")]
    Handover(std::io::Error),
    #[error("the environment handed over in {HANDOVER_FD}={fd} is unreadable: {reason}; unset {HANDOVER_FD} (it is loops' own, not a setting)")]
    Adopt { fd: String, reason: String },
}

/// Whether `name` stays in the process's own environment block.
pub fn is_kept(name: &str) -> bool {
    KEPT.contains(&name) || KEPT_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The value of an environment variable loops was started with, as `std::env::var` gives
/// it. In a process that was not re-executed (unit tests, the library used from
/// elsewhere) the real environment.
pub fn var(name: &str) -> Result<String, std::env::VarError> {
    match ENV.get() {
        Some(map) => match map.get(std::ffi::OsStr::new(name)) {
            None => Err(std::env::VarError::NotPresent),
            Some(v) => v
                .to_str()
                .map(str::to_string)
                .ok_or_else(|| std::env::VarError::NotUnicode(v.clone())),
        },
        None => std::env::var(name),
    }
}

/// Like [`var`], for names whose value may not be UTF-8 (paths).
pub fn var_os(name: &str) -> Option<OsString> {
    match ENV.get() {
        Some(map) => map.get(std::ffi::OsStr::new(name)).cloned(),
        None => std::env::var_os(name),
    }
}

/// The kept part of the environment, for a tool that must inherit it (a service manager).
pub fn kept_env() -> Vec<(OsString, OsString)> {
    match ENV.get() {
        Some(map) => map
            .iter()
            .filter(|(k, _)| k.to_str().is_some_and(is_kept))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => std::env::vars_os()
            .filter(|(k, _)| k.to_str().is_some_and(is_kept))
            .collect(),
    }
}

/// Called first in `main`, before any thread exists. In a fresh start, re-executes loops
/// with a clean environment (does not return); in the re-executed image, takes the
/// handed-over environment and makes the process undumpable.
pub fn protect() -> Result<(), SecretsError> {
    match std::env::var(HANDOVER_FD) {
        Ok(fd) => adopt(&fd),
        Err(_) => reexec(),
    }
}

#[cfg(target_os = "linux")]
fn reexec() -> Result<(), SecretsError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let file = handover_file(&encode(&env)).map_err(SecretsError::Handover)?;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "loops".into());
    let kept = env.iter().filter(|(k, _)| k.to_str().is_some_and(is_kept));
    // exec replaces this image (same pid); it only returns on failure.
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env_clear()
        .envs(kept.map(|(k, v)| (k, v)))
        .env(HANDOVER_FD, file.as_raw_fd().to_string())
        .exec();
    drop(file);
    Err(SecretsError::Handover(err))
}

#[cfg(not(target_os = "linux"))]
fn reexec() -> Result<(), SecretsError> {
    // No /proc/<pid>/environ to read here; keep the map so [`var`] behaves the same.
    let _ = ENV.set(std::env::vars_os().collect());
    Ok(())
}

/// A memfd (inherited across exec: no close-on-exec) holding `bytes`, read from the start.
#[cfg(target_os = "linux")]
fn handover_file(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    let fd = rustix::fs::memfd_create(HANDOVER_NAME, rustix::fs::MemfdFlags::empty())?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f)
}

/// The handover memfd's name (`/proc/<pid>/fd/<n>` shows `/memfd:loops-env`).
const HANDOVER_NAME: &str = "loops-env";

/// Reads the handed-over environment, closes its memfd, drops the marker and turns off
/// dumping: from here on no child of this process can read what it holds.
fn adopt(fd: &str) -> Result<(), SecretsError> {
    use std::io::Read;
    let bad = |reason: String| SecretsError::Adopt {
        fd: fd.to_string(),
        reason,
    };
    let n: i32 = fd
        .parse()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| bad("not a file descriptor number".into()))?;
    // Only the memfd `reexec` made: a stray value (set by hand, inherited from another
    // tool) must not make loops swallow its stdin or some other file as the environment.
    // The File owns and closes it.
    let mut f = crate::sys::adopt_inherited_memfd(n, HANDOVER_NAME).map_err(|e| {
        bad(match e {
            crate::sys::AdoptError::NotOpen => "the descriptor is not open".into(),
            crate::sys::AdoptError::Other(target) => {
                format!("it is {}, not loops' handover", target.display())
            }
            crate::sys::AdoptError::Again => "a handover was taken already".into(),
        })
    })?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
    drop(f);
    let env = decode(&bytes).ok_or_else(|| bad("it is cut short".into()))?;
    // Single-threaded still: nothing else reads the environment while it changes.
    std::env::remove_var(HANDOVER_FD);
    let _ = ENV.set(env.into_iter().collect());
    undumpable();
    Ok(())
}

/// Keeps a same-user process from reading this one's memory, environment or open files
/// through /proc or ptrace (root is not stopped: docs/security.md).
fn undumpable() {
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
}

// ---------------------------------------------------------------------------------------
// Redaction: every secret loops knows, replaced wherever loops writes text down.

/// Values shorter than this are not redacted: `[redacted]` in place of every `abc` or
/// `true` would mangle transcripts and logs, and a secret that short protects nothing.
pub const MIN_SECRET_LEN: usize = 6;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Every secret value learned so far, longest first (a secret holding another is
/// replaced whole). It only grows: a key rotated out of loops.yaml is still a secret.
static KNOWN: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());
static SCANNED: std::sync::Once = std::sync::Once::new();

/// Name parts that mark a variable as a secret even when no setting names it (a key a
/// person exported for a script, a token a shell job inherits).
const SECRET_WORDS: &[&str] = &[
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "AUTH",
    "WEBHOOK",
    "PRIVATE",
    "COOKIE",
    "DSN",
];

/// Names the words above match that hold paths, not secrets.
const NOT_SECRET: &[&str] = &["SSH_AUTH_SOCK", "XAUTHORITY", "GPG_AGENT_INFO"];

/// Whether a variable's name says it holds a secret (`ANTHROPIC_API_KEY`, `NTFY_TOKEN`).
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    if is_kept(name) || NOT_SECRET.contains(&upper.as_str()) {
        return false;
    }
    upper
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|part| SECRET_WORDS.iter().any(|w| part.contains(w)))
}

/// Adds values to the secrets every later [`redact`] replaces.
pub fn learn<I, S>(values: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let fresh: Vec<String> = values
        .into_iter()
        .map(|v| v.as_ref().trim().to_string())
        .filter(|v| v.len() >= MIN_SECRET_LEN)
        .collect();
    if fresh.is_empty() {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    for v in fresh {
        // As written, and as it appears inside a JSON string (a record, a log line).
        let json = serde_json::to_string(&v).unwrap_or_default();
        let escaped = json.trim_matches('"').to_string();
        for form in [v, escaped] {
            if !known.contains(&form) {
                known.push(form);
            }
        }
    }
    known.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
}

/// Learns the values, now, of the variables `names` names.
pub fn learn_vars<'a>(names: impl IntoIterator<Item = &'a str>) {
    learn(names.into_iter().filter_map(|n| var(n).ok()));
}

/// `text` with every known secret replaced by [`REDACTED`].
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    SCANNED.call_once(|| {
        let names: Vec<String> = match ENV.get() {
            Some(map) => map
                .keys()
                .filter_map(|k| k.to_str().map(str::to_string))
                .collect(),
            None => std::env::vars_os()
                .filter_map(|(k, _)| k.into_string().ok())
                .collect(),
        };
        learn_vars(names.iter().map(String::as_str).filter(|n| looks_secret(n)));
    });
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    let mut out = std::borrow::Cow::Borrowed(text);
    for s in known.iter() {
        if out.contains(s.as_str()) {
            out = std::borrow::Cow::Owned(out.replace(s.as_str(), REDACTED));
        }
    }
    out
}

/// [`redact`] for bytes that may not be UTF-8 (a chunk of a child's output): only
/// valid text is searched, which is where a secret that was printed is.
pub fn redact_bytes(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let text = String::from_utf8_lossy(bytes);
    match redact(&text) {
        std::borrow::Cow::Borrowed(_) => std::borrow::Cow::Borrowed(bytes),
        std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.into_bytes()),
    }
}

/// A writer that redacts each write (for the log on stderr: tracing writes one event per
/// call, so a secret is never split between two writes).
pub struct RedactingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&redact_bytes(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Length-prefixed pairs: values may hold newlines, `=` and NUL-free bytes of any kind.
fn encode(env: &[(OsString, OsString)]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for (k, v) in env {
        for part in [k.as_bytes(), v.as_bytes()] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn decode(mut bytes: &[u8]) -> Option<Vec<(OsString, OsString)>> {
    use std::os::unix::ffi::OsStringExt;
    let take = |b: &mut &[u8]| -> Option<OsString> {
        let (len, rest) = b.split_first_chunk::<8>()?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
        let (part, rest) = (rest.get(..len)?, rest.get(len..)?);
        *b = rest;
        Some(OsString::from_vec(part.to_vec()))
    };
    let mut env = Vec::new();
    while !bytes.is_empty() {
        let k = take(&mut bytes)?;
        let v = take(&mut bytes)?;
        env.push((k, v));
    }
    Some(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handover_keeps_newlines_and_equals() {
        let env = vec![
            ("A".into(), "x=y\nz".into()),
            ("EMPTY".into(), "".into()),
            ("B".into(), "é".into()),
        ];
        assert_eq!(decode(&encode(&env)), Some(env));
    }

    #[test]
    fn a_cut_handover_is_refused() {
        let bytes = encode(&[("KEY".into(), "value".into())]);
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn locale_names_are_kept_and_keys_are_not() {
        assert!(is_kept("LC_ALL"));
        assert!(is_kept("PATH"));
        assert!(!is_kept("ANTHROPIC_API_KEY"));
        assert!(!is_kept("LOOPS_ALLOW_SHELL_JOBS"));
    }

    #[test]
    fn learned_secrets_are_redacted_and_short_ones_are_not() {
        learn(["sk-unit-test-secret-1", "abc"]);
        assert_eq!(redact("key=sk-unit-test-secret-1!"), "key=[redacted]!");
        assert_eq!(redact("abc"), "abc");
    }

    #[test]
    fn names_that_say_secret_are_secret() {
        assert!(looks_secret("ANTHROPIC_API_KEY"));
        assert!(looks_secret("ntfy_token"));
        assert!(!looks_secret("PATH"));
        assert!(!looks_secret("REPORT_TITLE"));
    }
}
