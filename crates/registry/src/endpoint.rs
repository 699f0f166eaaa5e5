//! Where a registry's content is fetched from: its mirrors in order, then the registry itself
//! (the upstream), and which registries may be spoken to over plain http.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use url::Url;

use crate::error::RegistryError;
use crate::reference::DOCKER_HUB;

/// Docker Hub's registry API host (`docker.io` is only its name).
pub const DOCKER_HUB_UPSTREAM: &str = "https://registry-1.docker.io/";

/// The key in [`RegistryConfig::mirrors`] whose mirrors apply to every registry.
pub const ANY_REGISTRY: &str = "*";

/// How the client reaches registries. Replaced live with [`crate::Client::set_config`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Mirrors per registry host ("docker.io", "127.0.0.1:15000", or "*" for every registry),
    /// tried in order before the upstream.
    pub mirrors: BTreeMap<String, Vec<Url>>,
    /// Hosts (host or host:port, or a CIDR range) where plain http is allowed; 127.0.0.0/8, ::1
    /// and localhost are always allowed.
    pub insecure: Vec<String>,
    /// Registries never fetched from upstream: when all their mirrors fail, the pull fails.
    pub mirror_only: BTreeSet<String>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Extra certificate authorities (PEM, one or more certificates each) trusted for https
    /// endpoints besides the system's roots. Read by [`crate::Client::new`]; a
    /// [`crate::Client::set_config`] keeps the roots the client was built with.
    pub ca_certificates: Vec<Vec<u8>>,
}

/// Retries of transient failures (no answer, 5xx, 429): `attempts` in all, waiting
/// `base_backoff`, then twice that, and so on, never more than `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the first retry.
    pub base_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Attempts in all, at least one.
    pub fn attempts(&self) -> u32 {
        self.attempts.max(1)
    }
}

impl RegistryConfig {
    /// Checks what can be wrong in a configuration: mirror URLs must be http(s), with no path
    /// other than "/", no credentials, query or fragment.
    pub fn validate(&self) -> Result<(), RegistryError> {
        for (registry, urls) in &self.mirrors {
            for u in urls {
                check_mirror_url(u).map_err(|message| RegistryError::InvalidConfig {
                    message: format!("mirror {u} for {registry}: {message}"),
                })?;
            }
        }
        Ok(())
    }

    /// Whether plain http may be used for this registry host.
    pub fn http_allowed(&self, host: &str) -> bool {
        if is_loopback(host) {
            return true;
        }
        let (name, _) = split_port(host);
        self.insecure.iter().any(|entry| {
            let entry = entry.trim();
            let entry = entry
                .strip_prefix("http://")
                .or_else(|| entry.strip_prefix("https://"))
                .unwrap_or(entry)
                .trim_end_matches('/');
            if entry.eq_ignore_ascii_case(host) || entry.eq_ignore_ascii_case(name) {
                return true;
            }
            match (
                entry.split_once('/'),
                strip_brackets(name).parse::<IpAddr>(),
            ) {
                (Some((net, bits)), Ok(ip)) => cidr_contains(net, bits, ip),
                _ => false,
            }
        })
    }

    /// The mirrors to try for a registry, in order: its own, then the "*" ones.
    pub fn mirrors_for(&self, registry: &str) -> Vec<Url> {
        let mut out: Vec<Url> = Vec::new();
        for key in [registry, ANY_REGISTRY] {
            for u in self.mirrors.get(key).into_iter().flatten() {
                if !out.contains(u) {
                    out.push(u.clone());
                }
            }
        }
        out
    }
}

/// Why a mirror URL is unusable, if it is.
pub(crate) fn check_mirror_url(u: &Url) -> Result<(), String> {
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", u.scheme()));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if !(u.path().is_empty() || u.path() == "/") {
        return Err(format!(
            "a mirror URL must not have a path (got {:?})",
            u.path()
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("credentials belong in the credential store, not the URL".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("a mirror URL must not have a query or fragment".into());
    }
    Ok(())
}

/// One place content can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL, `http://127.0.0.1:15000/`; requests go to `{base}v2/…`.
    pub base: Url,
    /// host[:port] credentials are looked up by (`docker.io` for Docker Hub).
    pub host: String,
    /// A mirror rather than the registry itself.
    pub mirror: bool,
}

impl Endpoint {
    /// A mirror endpoint.
    pub fn mirror(base: Url) -> Endpoint {
        let host = host_port(&base);
        Endpoint {
            base,
            host,
            mirror: true,
        }
    }

    /// The registry's own endpoint at `scheme`.
    pub fn upstream(registry: &str, scheme: &str) -> Endpoint {
        let base = if registry == DOCKER_HUB {
            Url::parse(DOCKER_HUB_UPSTREAM)
        } else {
            Url::parse(&format!("{scheme}://{registry}/"))
        };
        // Registry hosts come from a parsed Reference or a login host; both are valid hosts.
        let base =
            base.unwrap_or_else(|_| Url::parse("https://invalid.invalid/").expect("static URL"));
        Endpoint {
            base,
            host: registry.to_string(),
            mirror: false,
        }
    }

    /// `{base}v2/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}v2/{}", self.base, path)
    }
}

/// host[:port] of a URL as Docker names registries (default ports omitted).
pub(crate) fn host_port(u: &Url) -> String {
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let name = &host[..end + 2];
            let port = host[end + 2..].strip_prefix(':');
            return (name, port);
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (host, None),
    }
}

fn strip_brackets(h: &str) -> &str {
    h.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h)
}

/// 127.0.0.0/8, ::1 and localhost, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let (name, _) = split_port(host);
    let name = strip_brackets(name);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn cidr_contains(net: &str, bits: &str, ip: IpAddr) -> bool {
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_allowed_hosts() {
        let c = RegistryConfig {
            insecure: vec![
                "reg.lan:5000".into(),
                "plain.lan".into(),
                "10.1.0.0/16".into(),
                "http://with-scheme:1/".into(),
            ],
            ..Default::default()
        };
        for h in [
            "127.0.0.1:15000",
            "127.9.9.9",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "::1",
        ] {
            assert!(c.http_allowed(h), "{h}");
        }
        for h in [
            "reg.lan:5000",
            "plain.lan",
            "plain.lan:8080",
            "10.1.2.3:5000",
            "with-scheme:1",
        ] {
            assert!(c.http_allowed(h), "{h}");
        }
        for h in [
            "reg.lan",
            "reg.lan:5001",
            "docker.io",
            "10.2.0.1:5000",
            "192.168.1.1",
            "localhost.evil.com",
        ] {
            assert!(!c.http_allowed(h), "{h}");
        }
    }

    #[test]
    fn mirrors_in_order_and_validated() {
        let m1 = Url::parse("https://m1.example/").unwrap();
        let m2 = Url::parse("http://127.0.0.1:5001").unwrap();
        let mut c = RegistryConfig::default();
        c.mirrors
            .insert("docker.io".into(), vec![m1.clone(), m2.clone()]);
        c.mirrors.insert(
            "*".into(),
            vec![m2.clone(), Url::parse("https://all.example").unwrap()],
        );
        let got: Vec<String> = c
            .mirrors_for("docker.io")
            .iter()
            .map(Url::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "https://m1.example/",
                "http://127.0.0.1:5001/",
                "https://all.example/"
            ]
        );
        assert_eq!(c.mirrors_for("quay.io").len(), 2);
        assert!(c.validate().is_ok());

        for bad in [
            "https://m.example/v2/",
            "ftp://m.example/",
            "https://u:p@m.example/",
            "https://m.example/?x=1",
        ] {
            let mut c = RegistryConfig::default();
            c.mirrors
                .insert("docker.io".into(), vec![Url::parse(bad).unwrap()]);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("docker.io"), "{bad}: {e}");
        }
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::upstream("docker.io", "http");
        assert_eq!(e.base.as_str(), "https://registry-1.docker.io/");
        assert_eq!(e.host, "docker.io");
        assert_eq!(
            e.url("library/busybox/manifests/latest"),
            "https://registry-1.docker.io/v2/library/busybox/manifests/latest"
        );
        let e = Endpoint::upstream("127.0.0.1:15000", "http");
        assert_eq!(e.base.as_str(), "http://127.0.0.1:15000/");
        let e = Endpoint::upstream("[::1]:5000", "https");
        assert_eq!(e.base.as_str(), "https://[::1]:5000/");
        let m = Endpoint::mirror(Url::parse("https://mirror.example:8443").unwrap());
        assert_eq!((m.host.as_str(), m.mirror), ("mirror.example:8443", true));
        assert_eq!(
            Endpoint::mirror(Url::parse("https://mirror.example:443").unwrap()).host,
            "mirror.example"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let r = RetryPolicy::default();
        let got: Vec<u128> = (0..7).map(|i| r.backoff(i).as_millis()).collect();
        assert_eq!(got, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(r.backoff(100).as_millis(), 5000);
        assert_eq!(RetryPolicy { attempts: 0, ..r }.attempts(), 1);
    }
}
