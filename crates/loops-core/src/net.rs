//! The network wall of `http_get`: which hosts, ports and addresses a loop may reach.
//!
//! A loop lists `allowed_hosts`. Each entry is a host and, optionally, a port:
//!
//! - `api.github.com` — that name, on the URL scheme's default port only (80 for `http`,
//!   443 for `https`). No port means "the default one", never "any": a model that may
//!   fetch a web page must not be able to reach a database on another port of that host.
//! - `127.0.0.1:8080`, `[::1]:8080` — that address and that port only.
//! - `*.example.com` — any subdomain of `example.com` (not `example.com` itself), with the
//!   same port rule: `*.example.com:8443` allows port 8443 only.
//!
//! Hosts are compared as parsed [`url::Host`] values, never as strings: an address in the
//! URL or in an entry may be spelt `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1` or
//! `[::ffff:7f00:1]` and all mean 127.0.0.1 (the `url` crate's WHATWG host parser reads
//! the IPv4 spellings; IPv4-mapped IPv6 is folded to IPv4 here).
//!
//! Listing a name is not enough to reach an internal address. A name that resolves to a
//! loopback, private, link-local, CGNAT, unspecified or otherwise non-public address is
//! refused unless that very address, with the port, is itself listed: `localhost:8080`
//! needs `127.0.0.1:8080` (or `[::1]:8080`) beside it. Otherwise a name someone else
//! controls (or a wildcard) could be pointed at the local network by its DNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use url::{Host, Url};

/// Why an entry cannot be read, or why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("`{entry}` is not a host entry: {why}")]
    BadEntry { entry: String, why: String },
    #[error("only http:// and https:// URLs can be fetched")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error(
        "refused: `{target}` is not in this loop's `allowed_hosts` ({listed}). An entry \
         without a port allows only the scheme's default port (80 for http, 443 for https); \
         to allow this, add \"{target}\" to `allowed_hosts` in the loop's config.yaml"
    )]
    NotListed { target: String, listed: String },
    #[error(
        "refused: `{host}` resolves to {addrs} ({kinds}), and a listed name alone never \
         opens an internal address. To allow it, add the address the service listens on, \
         with the port, to `allowed_hosts` in the loop's config.yaml: {entries}"
    )]
    Internal {
        host: String,
        /// The refused addresses, e.g. `::1 and 127.0.0.1`.
        addrs: String,
        /// Their kinds, e.g. `a loopback address`.
        kinds: String,
        /// The entries that would allow them, e.g. `"[::1]:8080" or "127.0.0.1:8080"`.
        entries: String,
    },
    #[error("cannot resolve {host}: {why}")]
    Resolve { host: String, why: String },
    #[error("{host} has no address")]
    NoAddress { host: String },
}

/// The host part of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// An address, canonical (IPv4-mapped IPv6 folded to IPv4).
    Ip(IpAddr),
    /// A domain name, lower case, without a trailing dot.
    Name(String),
    /// `*.domain`: the subdomains of this domain.
    Subdomains(String),
}

/// One `allowed_hosts` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub host: HostPattern,
    /// `None`: the URL scheme's default port only.
    pub port: Option<u16>,
}

impl Entry {
    /// Reads `api.github.com`, `*.example.com:8443`, `127.0.0.1:8080`, `[::1]:8080`.
    pub fn parse(text: &str) -> Result<Entry, NetError> {
        let t = text.trim();
        let bad = |why: &str| NetError::BadEntry {
            entry: t.to_string(),
            why: why.to_string(),
        };
        if t.is_empty() {
            return Err(bad("it is empty"));
        }
        if t.contains('/') || t.contains('@') {
            return Err(bad(
                "write the host only, without a scheme, user or path, e.g. `api.github.com` or `127.0.0.1:8080`",
            ));
        }
        let (host, port) = split_port(t).map_err(|why| bad(&why))?;
        let host = match host.strip_prefix("*.") {
            Some(domain) => match parse_host(domain) {
                Ok(HostPattern::Name(d)) => HostPattern::Subdomains(d),
                Ok(_) => {
                    return Err(bad(
                        "`*.` must be followed by a domain name, not an address",
                    ))
                }
                Err(why) => return Err(bad(&why)),
            },
            None if host.contains('*') => {
                return Err(bad(
                    "`*` may only stand as the whole first label, as in `*.example.com`",
                ))
            }
            None => parse_host(&host).map_err(|why| bad(&why))?,
        };
        Ok(Entry { host, port })
    }

    fn allows_port(&self, port: u16, default: u16) -> bool {
        self.port.unwrap_or(default) == port
    }

    fn names(&self, host: &HostPattern) -> bool {
        match (&self.host, host) {
            (HostPattern::Ip(a), HostPattern::Ip(b)) => a == b,
            (HostPattern::Name(a), HostPattern::Name(b)) => a == b,
            (HostPattern::Subdomains(d), HostPattern::Name(b)) => b
                .strip_suffix(d.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            _ => false,
        }
    }
}

/// Splits `host[:port]`, where host may be `[v6]` or a bare IPv6 address (no port then).
fn split_port(t: &str) -> Result<(String, Option<u16>), String> {
    if t.parse::<Ipv6Addr>().is_ok() {
        return Ok((format!("[{t}]"), None));
    }
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("the `[` of an IPv6 address has no `]`".into());
        };
        match after {
            "" => (format!("[{inside}]"), None),
            p => match p.strip_prefix(':') {
                Some(p) => (format!("[{inside}]"), Some(p)),
                None => return Err("only `:port` may follow `]`, e.g. `[::1]:8080`".into()),
            },
        }
    } else {
        match t.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("write an IPv6 address in brackets, e.g. `[::1]:8080`".into())
            }
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (t.to_string(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => Some(n),
            _ => return Err(format!("the port `{p}` must be a number from 1 to 65535")),
        },
    };
    Ok((host, port))
}

/// Parses a host as a URL's host is parsed (so `0x7f.1` is 127.0.0.1 here as in a URL).
fn parse_host(host: &str) -> Result<HostPattern, String> {
    Host::parse(host)
        .map(|h| pattern_of(&h))
        .map_err(|e| format!("{e}"))
}

/// A parsed URL host as a pattern: addresses canonical, names without a trailing dot.
pub fn pattern_of<S: AsRef<str>>(host: &Host<S>) -> HostPattern {
    match host {
        Host::Ipv4(a) => HostPattern::Ip(IpAddr::V4(*a)),
        Host::Ipv6(a) => HostPattern::Ip(canonical(IpAddr::V6(*a))),
        Host::Domain(d) => {
            let d = d.as_ref().to_ascii_lowercase();
            HostPattern::Name(d.strip_suffix('.').unwrap_or(&d).to_string())
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// What a URL asks to reach, once its host and port are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: HostPattern,
    pub port: u16,
    default_port: u16,
}

impl Target {
    /// `host:port` as an entry would write it.
    pub fn entry(&self) -> String {
        entry_text(&self.host, self.port)
    }
}

fn entry_text(host: &HostPattern, port: u16) -> String {
    match host {
        HostPattern::Ip(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        HostPattern::Ip(IpAddr::V4(a)) => format!("{a}:{port}"),
        HostPattern::Name(n) | HostPattern::Subdomains(n) => format!("{n}:{port}"),
    }
}

/// A loop's `allowed_hosts`, parsed.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    entries: Vec<Entry>,
    /// As written, for messages.
    written: Vec<String>,
}

impl AllowList {
    /// Entries that do not parse are left out: `loops check` reports them and the loop
    /// does not run, so at run time leaving one out can only refuse more, never allow.
    pub fn new(entries: &[String]) -> AllowList {
        AllowList {
            entries: entries
                .iter()
                .filter_map(|e| Entry::parse(e).ok())
                .collect(),
            written: entries.to_vec(),
        }
    }

    /// The URL's host and port, when an entry lists them.
    pub fn check_url(&self, url: &Url) -> Result<Target, NetError> {
        let default_port = match url.scheme() {
            "http" => 80,
            "https" => 443,
            _ => return Err(NetError::Scheme),
        };
        let host = pattern_of(&url.host().ok_or(NetError::NoHost)?);
        let port = url.port().unwrap_or(default_port);
        let target = Target {
            host,
            port,
            default_port,
        };
        if self.lists(&target.host, port, default_port) {
            return Ok(target);
        }
        Err(NetError::NotListed {
            target: target.entry(),
            listed: if self.written.is_empty() {
                "the list is empty".into()
            } else {
                self.written.join(", ")
            },
        })
    }

    fn lists(&self, host: &HostPattern, port: u16, default_port: u16) -> bool {
        self.entries
            .iter()
            .any(|e| e.names(host) && e.allows_port(port, default_port))
    }

    /// The address to connect to: the first one that is public, or internal and itself
    /// listed with the target's port. Refused when there is none.
    pub fn pick_address(&self, target: &Target, addrs: &[IpAddr]) -> Result<IpAddr, NetError> {
        let mut refused: Vec<(IpAddr, &'static str)> = Vec::new();
        for a in addrs.iter().map(|a| canonical(*a)) {
            match internal_kind(a) {
                Some(kind)
                    if !self.lists(&HostPattern::Ip(a), target.port, target.default_port) =>
                {
                    if !refused.iter().any(|(r, _)| *r == a) {
                        refused.push((a, kind));
                    }
                }
                _ => return Ok(a),
            }
        }
        let host = match &target.host {
            HostPattern::Ip(a) => a.to_string(),
            HostPattern::Name(n) | HostPattern::Subdomains(n) => n.clone(),
        };
        if refused.is_empty() {
            return Err(NetError::NoAddress { host });
        }
        Err(refusal(host, &refused, target.port))
    }
}

/// The refusal of internal addresses, naming each and the entry that would allow it.
fn refusal(host: String, refused: &[(IpAddr, &'static str)], port: u16) -> NetError {
    let mut kinds: Vec<&str> = refused.iter().map(|(_, k)| *k).collect();
    kinds.dedup();
    let plural = if refused.len() > 1 {
        "addresses"
    } else {
        "address"
    };
    let article = if refused.len() > 1 { "" } else { "a " };
    NetError::Internal {
        host,
        addrs: join_or(refused.iter().map(|(a, _)| a.to_string()), " and "),
        kinds: format!("{article}{} {plural}", kinds.join(" and ")),
        entries: join_or(
            refused
                .iter()
                .map(|(a, _)| format!("\"{}\"", entry_text(&HostPattern::Ip(*a), port))),
            " or ",
        ),
    }
}

fn join_or(items: impl Iterator<Item = String>, last: &str) -> String {
    let v: Vec<String> = items.collect();
    match v.split_last() {
        Some((l, rest)) if !rest.is_empty() => format!("{}{last}{l}", rest.join(", ")),
        _ => v.concat(),
    }
}

/// The addresses of the target: the address itself, or what its name resolves to.
pub async fn resolve(target: &Target) -> Result<Vec<IpAddr>, NetError> {
    let name = match &target.host {
        HostPattern::Ip(a) => return Ok(vec![*a]),
        HostPattern::Name(n) | HostPattern::Subdomains(n) => n.clone(),
    };
    let found = tokio::net::lookup_host((name.as_str(), target.port))
        .await
        .map_err(|e| NetError::Resolve {
            host: name.clone(),
            why: e.to_string(),
        })?;
    Ok(found.map(|s: SocketAddr| s.ip()).collect())
}

/// What kind of non-public address `ip` is, or `None` for a public one.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

/// Loopback, private, link-local, CGNAT, unspecified and the other non-public ranges.
pub fn is_private(ip: IpAddr) -> bool {
    internal_kind(ip).is_some()
}

fn v4_kind(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = v4.octets();
    Some(match (a, b) {
        (0, _) => "unspecified",
        (127, _) => "loopback",
        (10, _) | (192, 168) => "private",
        (172, 16..=31) => "private",
        (169, 254) => "link-local",
        (100, 64..=127) => "shared (CGNAT)",
        (192, 0) if v4.octets()[2] == 0 => "reserved",
        (198, 18..=19) => "reserved",
        (224..=239, _) => "multicast",
        (240..=255, _) => "reserved",
        _ => return None,
    })
}

fn v6_kind(v6: Ipv6Addr) -> Option<&'static str> {
    let s = v6.segments();
    if v6.is_unspecified() {
        return Some("unspecified");
    }
    if v6.is_loopback() {
        return Some("loopback");
    }
    // Addresses that carry an IPv4 address inside: NAT64 (64:ff9b::/96) and 6to4
    // (2002::/16) reach that IPv4 address, so they are what it is.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_kind(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    if s[0] == 0x2002 {
        return v4_kind(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    Some(match s[0] {
        // The deprecated IPv4-compatible form (::a.b.c.d) and the rest of ::/96.
        0 if s[1..6] == [0, 0, 0, 0, 0] => "reserved",
        x if x & 0xfe00 == 0xfc00 => "private",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local",
        x if x & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::new(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn url_target(l: &AllowList, url: &str) -> Result<Target, NetError> {
        l.check_url(&Url::parse(url).expect("url"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_entry_with_a_port_allows_that_port_only() {
        let l = list(&["127.0.0.1:8080", "[::1]:8080", "api.github.com:8443"]);
        assert!(url_target(&l, "http://127.0.0.1:8080/x").is_ok());
        assert!(url_target(&l, "https://127.0.0.1:8080/x").is_ok());
        assert!(url_target(&l, "http://[::1]:8080/").is_ok());
        assert!(url_target(&l, "https://api.github.com:8443/").is_ok());
        for refused in [
            "http://127.0.0.1:9999/",
            "http://127.0.0.1/",
            "http://[::1]:9999/",
            "https://api.github.com/",
        ] {
            let e = url_target(&l, refused).expect_err(refused);
            assert!(matches!(e, NetError::NotListed { .. }), "{refused}: {e}");
        }
    }

    #[test]
    fn an_entry_without_a_port_allows_the_scheme_default_only() {
        let l = list(&["example.com", "*.example.org"]);
        assert!(url_target(&l, "http://example.com/").is_ok());
        assert!(url_target(&l, "https://example.com/").is_ok());
        assert!(url_target(&l, "http://example.com:80/").is_ok());
        assert!(url_target(&l, "https://a.b.example.org/").is_ok());
        for refused in [
            "http://example.com:443/",
            "https://example.com:80/",
            "http://example.com:8080/",
            "https://a.example.org:8443/",
            "https://example.org/",
            "https://evilexample.org/",
        ] {
            assert!(url_target(&l, refused).is_err(), "{refused}");
        }
        // An explicit default port is the same as none, in either place.
        let l = list(&["example.com:80"]);
        assert!(url_target(&l, "http://example.com/").is_ok());
        assert!(url_target(&l, "https://example.com/").is_err());
    }

    #[test]
    fn every_spelling_of_an_address_is_the_same_address() {
        let spellings = [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "0177.0.0.01",
            "127.1",
            "127.0.1",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[0:0:0:0:0:ffff:7f00:1]",
        ];
        for entry in spellings {
            let l = list(&[&format!("{entry}:8080")]);
            for url in spellings {
                let u = format!("http://{url}:8080/");
                let t = url_target(&l, &u).unwrap_or_else(|e| panic!("{entry} vs {url}: {e}"));
                assert_eq!(t.host, HostPattern::Ip(ip("127.0.0.1")), "{url}");
                let other = format!("http://{url}:9999/");
                assert!(url_target(&l, &other).is_err(), "{entry} vs {other}");
            }
        }
    }

    #[test]
    fn the_url_parser_already_folds_ipv4_spellings_but_not_mapped_ipv6() {
        // What the `url` crate does by itself; the mapped form is folded here.
        for (u, host) in [
            ("http://2130706433/", "127.0.0.1"),
            ("http://0x7f.1/", "127.0.0.1"),
            ("http://0177.0.0.1/", "127.0.0.1"),
            ("http://127.1/", "127.0.0.1"),
            ("http://[::ffff:127.0.0.1]/", "[::ffff:7f00:1]"),
        ] {
            assert_eq!(Url::parse(u).expect("url").host_str(), Some(host), "{u}");
        }
    }

    #[test]
    fn userinfo_and_fragments_do_not_change_the_host_that_is_checked() {
        let l = list(&["127.0.0.1:8080"]);
        for u in [
            "http://127.0.0.1:8080@127.0.0.1:9999/",
            "http://127.0.0.1:9999#@127.0.0.1:8080/",
            "http://127.0.0.1:9999/?@127.0.0.1:8080",
            "http://127.0.0.1:9999\\@127.0.0.1:8080/",
        ] {
            match url_target(&l, u) {
                Ok(t) => assert_eq!(t.port, 8080, "{u}"),
                Err(e) => assert!(e.to_string().contains("127.0.0.1:9999"), "{u}: {e}"),
            }
        }
    }

    #[test]
    fn names_and_wildcards_compare_as_hosts() {
        let l = list(&["API.GitHub.com", "*.example.com", "localhost."]);
        assert!(url_target(&l, "https://api.github.com/").is_ok());
        assert!(url_target(&l, "https://api.github.com./").is_ok());
        assert!(url_target(&l, "http://localhost/").is_ok());
        assert!(url_target(&l, "https://x.example.com/").is_ok());
        assert!(url_target(&l, "https://example.com/").is_err());
        assert!(url_target(&l, "https://github.com/").is_err());
        // A name is not its address: listing the name does not list 127.0.0.1.
        assert!(url_target(&l, "http://127.0.0.1/").is_err());
    }

    #[test]
    fn entries_that_cannot_be_read_say_how_to_write_them() {
        for (bad, says) in [
            ("", "empty"),
            ("https://api.github.com", "without a scheme"),
            ("api.github.com/path", "host only"),
            ("127.0.0.1:http", "from 1 to 65535"),
            ("127.0.0.1:0", "from 1 to 65535"),
            ("127.0.0.1:70000", "from 1 to 65535"),
            ("::1:8080:", "in brackets"),
            ("fe80::1:8080:x", "in brackets"),
            ("[::1", "no `]`"),
            ("[::1]8080", "only `:port`"),
            ("*.127.0.0.1", "domain name"),
            ("a.*.example.com", "first label"),
            ("exa mple.com", "not a host"),
            ("[zz::1]", "not a host"),
        ] {
            let e = Entry::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(
            Entry::parse("::1").expect("bare v6"),
            Entry {
                host: HostPattern::Ip(ip("::1")),
                port: None
            }
        );
    }

    #[test]
    fn a_name_reaches_an_internal_address_only_when_the_address_is_listed() {
        let l = list(&["localhost:8080", "*.example.com"]);
        let t = url_target(&l, "http://localhost:8080/").expect("listed name");
        let e = l
            .pick_address(&t, &[ip("127.0.0.1")])
            .expect_err("the address is not listed");
        let msg = e.to_string();
        assert!(msg.contains("loopback"), "{msg}");
        assert!(msg.contains("\"127.0.0.1:8080\""), "{msg}");
        let e = l
            .pick_address(&t, &[ip("::ffff:10.0.0.1")])
            .expect_err("mapped");
        assert!(e.to_string().contains("\"10.0.0.1:8080\""), "{e}");

        let l = list(&["localhost:8080", "127.0.0.1:8080"]);
        let t = url_target(&l, "http://localhost:8080/").expect("listed");
        assert_eq!(
            l.pick_address(&t, &[ip("::1"), ip("127.0.0.1")]),
            Ok(ip("127.0.0.1"))
        );
        let none = list(&["localhost:8080"]);
        let msg = none
            .pick_address(&t, &[ip("::1"), ip("127.0.0.1")])
            .expect_err("neither listed")
            .to_string();
        assert!(
            msg.contains("resolves to ::1 and 127.0.0.1 (loopback addresses)")
                && msg.contains("\"[::1]:8080\" or \"127.0.0.1:8080\""),
            "{msg}"
        );
        // Listed on another port only: still refused.
        let l = list(&["localhost:8080", "127.0.0.1:9999"]);
        assert!(l.pick_address(&t, &[ip("127.0.0.1")]).is_err());

        // A wildcard resolving to the metadata service is refused; a public answer is used.
        let l = list(&["*.example.com"]);
        let t = url_target(&l, "http://x.example.com/").expect("wildcard");
        let e = l
            .pick_address(&t, &[ip("169.254.169.254")])
            .expect_err("link-local");
        assert!(e.to_string().contains("link-local"), "{e}");
        assert_eq!(
            l.pick_address(&t, &[ip("10.1.1.1"), ip("93.184.216.34")]),
            Ok(ip("93.184.216.34"))
        );
        assert!(matches!(
            l.pick_address(&t, &[]),
            Err(NetError::NoAddress { .. })
        ));
    }

    #[test]
    fn internal_addresses_are_recognised_by_kind() {
        for (a, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.255", "shared (CGNAT)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "private"),
            ("fd12:3456::1", "private"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:192.168.0.1", "private"),
            ("::127.0.0.1", "reserved"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:a00:1::1", "private"),
        ] {
            assert_eq!(internal_kind(ip(a)), Some(kind), "{a}");
            assert!(is_private(ip(a)), "{a}");
        }
        for a in [
            "93.184.216.34",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(internal_kind(ip(a)), None, "{a}");
        }
    }
}
