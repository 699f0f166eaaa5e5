//! Image references as users write them, normalised the way Docker does: `busybox` means
//! `docker.io/library/busybox:latest`.
//!
//! Grammar (distribution's reference grammar):
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := host [ ":" port ]         host: DNS labels joined by '.', or "[" IPv6 "]"
//! path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [\w][\w.-]{0,127}
//! digest     := "sha256:" [a-f0-9]{64}
//! ```
//!
//! The first component is a registry host only when it contains '.' or ':' or is `localhost`;
//! otherwise the registry is Docker Hub, whose one-component names live under `library/`.

use std::fmt;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The name Docker Hub had before `docker.io`; normalised away.
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// Where Docker Hub's official images live.
const OFFICIAL_NAMESPACE: &str = "library";
/// Longest name (registry + "/" + repository) the grammar allows.
const NAME_MAX: usize = 255;
/// Longest tag the grammar allows.
const TAG_MAX: usize = 128;

/// An image reference that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing to parse.
    #[error("invalid reference format: empty reference")]
    Empty,
    /// Docker's classic error for any capital letter in the repository path.
    #[error("invalid reference format: repository name must be lowercase")]
    Uppercase {
        /// The input.
        reference: String,
    },
    /// A bare 64-hex string is an image id, never a name.
    #[error("invalid repository name ({reference}), cannot specify 64-byte hexadecimal strings")]
    HexName {
        /// The input.
        reference: String,
    },
    /// The tag does not match `[\w][\w.-]{0,127}`.
    #[error("invalid reference format: invalid tag {tag:?} in {reference:?}")]
    InvalidTag {
        /// The input.
        reference: String,
        /// The offending tag.
        tag: String,
    },
    /// The digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid reference format: invalid digest {digest:?} in {reference:?} (expected sha256:<64 hex digits>)")]
    InvalidDigest {
        /// The input.
        reference: String,
        /// The offending digest.
        digest: String,
    },
    /// The registry part is not a host name, IP address or `[IPv6]`, with an optional port.
    #[error("invalid reference format: invalid registry host {domain:?} in {reference:?}")]
    InvalidDomain {
        /// The input.
        reference: String,
        /// The offending host.
        domain: String,
    },
    /// A path component breaks the grammar (empty, leading/trailing separator, bad character).
    #[error("invalid reference format: invalid repository path component {component:?} in {reference:?}")]
    InvalidComponent {
        /// The input.
        reference: String,
        /// The offending component.
        component: String,
    },
    /// Registry plus repository longer than 255 characters.
    #[error("invalid reference format: repository name must not be more than {NAME_MAX} characters ({reference:?})")]
    NameTooLong {
        /// The input.
        reference: String,
    },
}

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host with optional port: `docker.io`, `127.0.0.1:15000`, `[::1]:5000`.
    pub registry: String,
    /// Repository path inside the registry: `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when the input named neither tag nor digest.
    pub tag: Option<String>,
    /// `sha256:<hex>` when the input pinned a digest.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises a reference the way `docker pull` does.
    ///
    /// "busybox" → docker.io/library/busybox:latest; "user/app" → docker.io/user/app:latest;
    /// "index.docker.io/x" → docker.io/library/x; "localhost:5000/a/b:t" keeps its registry;
    /// "a:t@sha256:…" keeps both tag and digest. The tag defaults to "latest" only without a
    /// digest.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::HexName {
                reference: s.to_string(),
            });
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            if !is_sha256_digest(d) {
                return Err(ReferenceError::InvalidDigest {
                    reference: s.to_string(),
                    digest: d.to_string(),
                });
            }
        }
        // A tag is a ':' after the last '/', so "host:5000/repo" has none.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            if !is_tag(t) {
                return Err(ReferenceError::InvalidTag {
                    reference: s.to_string(),
                    tag: t.to_string(),
                });
            }
        }

        let (registry, remainder) = split_registry(name);
        if registry != DOCKER_HUB && !is_domain(registry) {
            return Err(ReferenceError::InvalidDomain {
                reference: s.to_string(),
                domain: registry.to_string(),
            });
        }
        let registry = if registry == LEGACY_DOCKER_HUB {
            DOCKER_HUB
        } else {
            registry
        };
        if remainder.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase {
                reference: s.to_string(),
            });
        }
        for component in remainder.split('/') {
            if !is_path_component(component) {
                return Err(ReferenceError::InvalidComponent {
                    reference: s.to_string(),
                    component: component.to_string(),
                });
            }
        }
        let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{remainder}")
        } else {
            remainder.to_string()
        };
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(ReferenceError::NameTooLong {
                reference: s.to_string(),
            });
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// Fully qualified name without tag or digest: "docker.io/library/busybox".
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short name `docker images` shows: "busybox", "user/app",
    /// "127.0.0.1:15000/berth/hello".
    pub fn familiar_name(&self) -> String {
        if self.registry != DOCKER_HUB {
            return self.name();
        }
        match self.repository.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.repository.clone(),
        }
    }

    /// The same repository with this tag. Like Docker's `WithTag`, a digest is kept.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            ..self.clone()
        }
    }

    /// The same repository pinned to this digest. Like Docker's `WithDigest`, a tag is kept.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// What to ask the registry's manifest endpoint for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    /// "docker.io/library/busybox:latest", "name@sha256:…" or "name:tag@sha256:…".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// `sha256:` followed by 64 lowercase hex digits: the only digest form Berth accepts.
pub fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Docker's rule: the part before the first '/' is a registry only when it looks like a host.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => (DOCKER_HUB, name),
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && is_word(b[0])
        && b[1..].iter().all(|&c| is_word(c) || c == b'.' || c == b'-')
}

/// `[a-z0-9]+ ((. | _ | __ | -+) [a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A run of separators between two alphanumerics.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// host [":" port], where host is DNS labels joined by '.' (labels of alphanumerics and inner
/// '-'), or a bracketed IPv6 address.
fn is_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if d.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_normalisation_table() {
        // input, registry, repository, tag, digest
        type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let cases: &[Case] = &[
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                None,
            ),
            ("user/app", "docker.io", "user/app", Some("latest"), None),
            (
                "user/app:v1.2-rc_3",
                "docker.io",
                "user/app",
                Some("v1.2-rc_3"),
                None,
            ),
            (
                "docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "docker.io/library/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "index.docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "index.docker.io/user/x",
                "docker.io",
                "user/x",
                Some("latest"),
                None,
            ),
            (
                "library/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            ("a/b/c", "docker.io", "a/b/c", Some("latest"), None),
            ("localhost/foo", "localhost", "foo", Some("latest"), None),
            (
                "localhost:5000/a/b:t",
                "localhost:5000",
                "a/b",
                Some("t"),
                None,
            ),
            (
                "localhost:5000",
                "docker.io",
                "library/localhost",
                Some("5000"),
                None,
            ),
            (
                "quay.io/coreos/etcd",
                "quay.io",
                "coreos/etcd",
                Some("latest"),
                None,
            ),
            (
                "my-reg.example.com:443/x",
                "my-reg.example.com:443",
                "x",
                Some("latest"),
                None,
            ),
            ("[::1]:5000/x:y", "[::1]:5000", "x", Some("y"), None),
            (
                "127.0.0.1:15000/berth/hello",
                "127.0.0.1:15000",
                "berth/hello",
                Some("latest"),
                None,
            ),
            (
                "127.0.0.1:15000/berth/hello@X",
                "127.0.0.1:15000",
                "berth/hello",
                None,
                Some(D),
            ),
            ("busybox@X", "docker.io", "library/busybox", None, Some(D)),
            ("a:t@X", "docker.io", "library/a", Some("t"), Some(D)),
            (
                "a__b/c-d---e_f.g",
                "docker.io",
                "a__b/c-d---e_f.g",
                Some("latest"),
                None,
            ),
            ("a.b.c/d", "a.b.c", "d", Some("latest"), None),
            (
                "Example.com/foo",
                "Example.com",
                "foo",
                Some("latest"),
                None,
            ),
        ];
        for (input, registry, repository, tag, digest) in cases {
            let input = input.replace('X', D);
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, *registry, "{input}");
            assert_eq!(r.repository, *repository, "{input}");
            assert_eq!(r.tag.as_deref(), *tag, "{input}");
            assert_eq!(r.digest.as_deref(), *digest, "{input}");
        }
    }

    #[test]
    fn errors() {
        let long = format!("a/{}", "b".repeat(260));
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "empty"),
            ("Busybox".into(), "repository name must be lowercase"),
            ("user/App".into(), "repository name must be lowercase"),
            ("UPPER/Case".into(), "repository name must be lowercase"),
            (
                "localhost:5000/Foo".into(),
                "repository name must be lowercase",
            ),
            ("a".repeat(64).replace('a', "f"), "64-byte hexadecimal"),
            ("busybox:".into(), "invalid tag"),
            ("busybox:-x".into(), "invalid tag"),
            (format!("busybox:{}", "t".repeat(129)), "invalid tag"),
            ("busybox@sha256:abc".into(), "invalid digest"),
            ("busybox@md5:0123".into(), "invalid digest"),
            (
                format!("busybox@{}", D.to_uppercase().replace("SHA256", "sha256")),
                "invalid digest",
            ),
            ("a//b".into(), "path component"),
            ("a/b/".into(), "path component"),
            ("-a".into(), "path component"),
            ("a-".into(), "path component"),
            ("a..b".into(), "path component"),
            ("a___b".into(), "path component"),
            ("a b".into(), "path component"),
            ("host:port/x".into(), "invalid registry host"),
            ("-bad.com/x".into(), "invalid registry host"),
            ("[zz]:5/x".into(), "invalid registry host"),
            (long, "more than 255"),
        ];
        for (input, want) in cases {
            let e = Reference::parse(&input).expect_err(&input).to_string();
            assert!(e.contains(want), "{input:?}: {e:?} should mention {want:?}");
        }
    }

    #[test]
    fn names_and_display() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.familiar_name(), "busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = Reference::parse("user/app:1").unwrap();
        assert_eq!(r.familiar_name(), "user/app");
        assert_eq!(
            Reference::parse("library/a/b").unwrap().familiar_name(),
            "library/a/b"
        );
        let r = Reference::parse(&format!("127.0.0.1:15000/berth/hello@{D}")).unwrap();
        assert_eq!(r.familiar_name(), "127.0.0.1:15000/berth/hello");
        assert_eq!(r.to_string(), format!("127.0.0.1:15000/berth/hello@{D}"));
        assert_eq!(r.manifest_reference(), D);
        let r = Reference::parse(&format!("a:t@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/a:t@{D}"));
        assert_eq!(r.manifest_reference(), D);
        // Display output parses back to the same reference.
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn with_tag_and_digest_keep_the_other() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.with_tag("1").to_string(), "docker.io/library/busybox:1");
        let pinned = r.with_digest(D);
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/busybox:latest@{D}")
        );
        assert_eq!(
            pinned.with_tag("2").to_string(),
            format!("docker.io/library/busybox:2@{D}")
        );
    }
}
