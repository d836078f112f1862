//! The ssh host-key check of a git remote, against an OpenSSH `known_hosts` file.
//!
//! libgit2 leaves the check to the caller; accepting whatever key a host shows would let
//! anyone between the daemon and its remote read and rewrite the workspace's history. So
//! a host that is not listed is an error with the line to add, and a host whose key
//! changed is an error too, never accepted silently. Plain and hashed (`|1|salt|hash`)
//! host names are read, `@revoked` lines refuse a key, and `@cert-authority` lines are
//! skipped (loops does not check host certificates).

use base64::Engine;
use git2::cert::CertHostkey;
use hmac::{Hmac, KeyInit, Mac};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HostKeyError {
    #[error("the ssh host key of {host} is not in {file} ({kind} SHA256:{fingerprint})")]
    Unknown {
        host: String,
        file: String,
        kind: String,
        fingerprint: String,
    },
    #[error("the ssh host key of {host} does not match {file}: the host, or someone between, changed it")]
    Changed { host: String, file: String },
    #[error("the ssh host key of {host} is revoked in {file}")]
    Revoked { host: String, file: String },
    #[error("cannot read {file} (remote.known_hosts): {error}")]
    Unreadable { file: String, error: String },
    #[error("{host} showed no ssh host key")]
    NoKey { host: String },
}

impl HostKeyError {
    pub fn help(&self) -> String {
        match self {
            HostKeyError::Unknown { host, file, .. } => format!(
                "check the fingerprint with the host's owner, then add it: `ssh-keyscan {host} >> {file}` (or name another file in remote.known_hosts)"
            ),
            HostKeyError::Changed { file, .. } | HostKeyError::Revoked { file, .. } => format!(
                "if the host's key really changed, remove its old line from {file} and add the new one; otherwise do not connect"
            ),
            HostKeyError::Unreadable { .. } => {
                "create it (`ssh-keyscan HOST > FILE`) or fix remote.known_hosts in loops.yaml".into()
            }
            HostKeyError::NoKey { .. } => "check the remote's URL".into(),
        }
    }
}

/// The file checked when loops.yaml names none.
pub fn default_file() -> PathBuf {
    crate::remote_config::expand_home("~/.ssh/known_hosts")
}

/// Whether `file` lists `key` for `host` (`port`: the URL's, when not 22).
pub fn check(
    file: Option<&Path>,
    host: &str,
    port: Option<u16>,
    key: &CertHostkey,
) -> Result<(), HostKeyError> {
    let file = file.map(Path::to_path_buf).unwrap_or_else(default_file);
    let shown = file.display().to_string();
    let (Some(raw), Some(kind)) = (key.hostkey(), key.hostkey_type()) else {
        return Err(HostKeyError::NoKey { host: host.into() });
    };
    let text = std::fs::read_to_string(&file).map_err(|e| HostKeyError::Unreadable {
        file: shown.clone(),
        error: e.to_string(),
    })?;
    let names = match port {
        Some(p) if p != 22 => vec![format!("[{host}]:{p}")],
        _ => vec![host.to_string()],
    };
    let mut listed = false;
    for line in text.lines().map(str::trim) {
        let Some(entry) = Entry::parse(line) else {
            continue;
        };
        if !names.iter().any(|n| entry.names(n)) {
            continue;
        }
        let same = entry.kind == kind.name() && entry.key == raw;
        match entry.marker {
            Some("@revoked") if same => {
                return Err(HostKeyError::Revoked {
                    host: host.into(),
                    file: shown,
                })
            }
            Some(_) => continue,
            None if same => return Ok(()),
            None => listed = true,
        }
    }
    if listed {
        return Err(HostKeyError::Changed {
            host: names[0].clone(),
            file: shown,
        });
    }
    let fingerprint = base64::engine::general_purpose::STANDARD_NO_PAD.encode(
        key.hash_sha256()
            .map(|h| h.to_vec())
            .unwrap_or_else(|| sha2_of(raw)),
    );
    Err(HostKeyError::Unknown {
        host: names[0].clone(),
        file: shown,
        kind: kind.name().into(),
        fingerprint,
    })
}

fn sha2_of(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// One line of a known_hosts file.
struct Entry<'l> {
    marker: Option<&'l str>,
    hosts: &'l str,
    kind: &'l str,
    key: Vec<u8>,
}

impl<'l> Entry<'l> {
    fn parse(line: &'l str) -> Option<Entry<'l>> {
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut parts = line.split_whitespace();
        let mut first = parts.next()?;
        let marker = first.starts_with('@').then_some(first);
        if marker.is_some() {
            first = parts.next()?;
        }
        let kind = parts.next()?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(parts.next()?)
            .ok()?;
        Some(Entry {
            marker,
            hosts: first,
            kind,
            key,
        })
    }

    /// Whether the entry's host patterns name `name` (a negated pattern wins).
    fn names(&self, name: &str) -> bool {
        if let Some(hashed) = self.hosts.strip_prefix("|1|") {
            return hashed_names(hashed, name);
        }
        let mut hit = false;
        for pat in self.hosts.split(',') {
            if let Some(neg) = pat.strip_prefix('!') {
                if glob(neg, name) {
                    return false;
                }
            } else if glob(pat, name) {
                hit = true;
            }
        }
        hit
    }
}

/// `|1|salt|hash`: HMAC-SHA1 of the name keyed by the salt (OpenSSH's HashKnownHosts).
fn hashed_names(hashed: &str, name: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// OpenSSH's host patterns: `*` and `?`, case-insensitive.
fn glob(pat: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pat.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_negated_and_hashed_names() {
        let e =
            Entry::parse("example.com,*.example.org,!bad.example.org ssh-ed25519 AAAA").unwrap();
        assert!(e.names("example.com"));
        assert!(e.names("git.example.org"));
        assert!(!e.names("bad.example.org"));
        assert!(!e.names("example.net"));
        // `ssh-keygen -H` of "github.com" with this salt.
        let salt = base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdefghij");
        let mut mac =
            <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(b"0123456789abcdefghij").unwrap();
        mac.update(b"github.com");
        let hash = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let line = format!("|1|{salt}|{hash} ssh-ed25519 AAAA");
        let e = Entry::parse(&line).unwrap();
        assert!(e.names("github.com"));
        assert!(!e.names("gitlab.com"));
    }

    #[test]
    fn markers_and_comments() {
        assert!(Entry::parse("# a comment").is_none());
        let e = Entry::parse("@revoked host ssh-rsa AAAA").unwrap();
        assert_eq!(e.marker, Some("@revoked"));
        assert_eq!(e.kind, "ssh-rsa");
    }
}
