//! A git smart-HTTP server on 127.0.0.1 for the remote tests: Debian's `git http-backend`
//! (the real git, hooks and all) behind a small HTTP front that asks for a token the way
//! a git host does (401 with `WWW-Authenticate: Basic`, then the token as the password).

use base64::Engine;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The server; it stops when dropped.
pub struct GitHttp {
    server: Arc<tiny_http::Server>,
    port: u16,
    /// Requests refused for want of the token.
    pub refused: Arc<AtomicUsize>,
    /// Requests served.
    pub served: Arc<AtomicUsize>,
}

impl GitHttp {
    /// Serves the repositories under `root`; with `token`, only to a client that gives it
    /// as the password of HTTP basic auth (any user name).
    pub fn start(root: &Path, token: Option<&str>) -> GitHttp {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let port = server.server_addr().to_ip().expect("ip address").port();
        let refused = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (s, root, token) = (
            server.clone(),
            root.to_path_buf(),
            token.map(str::to_string),
        );
        let (r, v) = (refused.clone(), served.clone());
        std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let (root, token, r, v) = (root.clone(), token.clone(), r.clone(), v.clone());
                std::thread::spawn(move || serve(req, &root, token.as_deref(), &r, &v));
            }
        });
        GitHttp {
            server,
            port,
            refused,
            served,
        }
    }

    /// The URL of repository `name` (a folder under the root).
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn authorized(req: &tiny_http::Request, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    req.headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Basic ").map(str::to_string))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .is_some_and(|pair| pair.split_once(':').is_some_and(|(_, pw)| pw == token))
}

fn serve(
    mut req: tiny_http::Request,
    root: &PathBuf,
    token: Option<&str>,
    refused: &AtomicUsize,
    served: &AtomicUsize,
) {
    if !authorized(&req, token) {
        refused.fetch_add(1, Ordering::SeqCst);
        let header = tiny_http::Header::from_bytes("WWW-Authenticate", "Basic realm=\"git\"")
            .expect("header");
        let _ = req.respond(
            tiny_http::Response::from_string("token needed\n")
                .with_status_code(401)
                .with_header(header),
        );
        return;
    }
    served.fetch_add(1, Ordering::SeqCst);
    let mut body = Vec::new();
    let _ = req.as_reader().read_to_end(&mut body);
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let header = |name: &'static str| {
        req.headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string())
            .unwrap_or_default()
    };
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "loops-test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", req.method().as_str())
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("Content-Type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let encoding = header("Content-Encoding");
    if !encoding.is_empty() {
        cmd.env("HTTP_CONTENT_ENCODING", encoding);
    }
    let Ok(mut child) = cmd.spawn() else {
        let _ = req.respond(
            tiny_http::Response::from_string("no git http-backend\n").with_status_code(500),
        );
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body);
    }
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_end(&mut out);
    }
    let _ = child.wait();
    let _ = req.respond(cgi_response(&out));
}

/// A CGI reply (headers, a blank line, the body) as an HTTP response.
fn cgi_response(out: &[u8]) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((at, sep)) = split else {
        return tiny_http::Response::from_data(out.to_vec()).with_status_code(500);
    };
    let head = String::from_utf8_lossy(&out[..at]).into_owned();
    let mut resp = tiny_http::Response::from_data(out[at + sep..].to_vec());
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("Status") {
            let code = v
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(200);
            resp = resp.with_status_code(code);
        } else if let Ok(h) = tiny_http::Header::from_bytes(k.trim(), v) {
            resp = resp.with_header(h);
        }
    }
    resp
}
