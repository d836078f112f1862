//! A real OpenSSH server on 127.0.0.1 for the remote tests: Debian's `sshd` (package
//! openssh-server, which .ci/run installs), started in a temporary folder with its own host
//! key, key authentication only, for the user running the tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The server; killed when dropped.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    /// The client's private key (authorized on the server).
    pub client_key: PathBuf,
    /// `ssh-ed25519 AAAA…` of the host key.
    pub host_key_line: String,
    pub user: String,
}

const SSHD: &str = "/usr/sbin/sshd";

impl Sshd {
    /// Starts sshd with its files under `dir`.
    pub fn start(dir: &Path) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install Debian's openssh-server (.ci/run does)"
        );
        std::fs::create_dir_all(dir).expect("mkdir");
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        for k in [&host_key, &client_key] {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(k)
                .status()
                .expect("ssh-keygen");
            assert!(ok.success(), "ssh-keygen failed");
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read key");
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, read(dir.join("client_key.pub"))).expect("authorized_keys");
        let host_pub = read(dir.join("host_key.pub"));
        let host_key_line = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n",
                host_key.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .expect("sshd_config");
        // sshd's privilege separation folder; only root can make it, and only root needs it.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = std::fs::File::create(dir.join("sshd.log")).expect("log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let up = crate::process::wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up,
            "sshd never listened: {}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| {
                if crate::process::is_root() {
                    "root".into()
                } else {
                    String::from_utf8_lossy(
                        &Command::new("id").arg("-un").output().expect("id").stdout,
                    )
                    .trim()
                    .to_string()
                }
            });
        Sshd {
            child,
            port,
            dir: dir.to_path_buf(),
            client_key,
            host_key_line,
            user,
        }
    }

    /// The `ssh://` URL of the repository at `path` on this host.
    pub fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    /// A known_hosts line for this server.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}\n", self.port, self.host_key_line)
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
