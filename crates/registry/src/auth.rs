//! Registry authentication: credentials, `WWW-Authenticate` challenges, and the bearer tokens
//! obtained from a registry's token server (Docker's token authentication), cached per endpoint
//! and repository scope.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

/// A user name and password (or personal access token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token; never printed.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The `Authorization` header value for HTTP Basic authentication.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Where the client finds credentials for a registry host (`docker.io`, `127.0.0.1:15001`).
pub trait CredentialStore: Send + Sync {
    /// Credentials for this registry host, if any.
    fn get(&self, registry_host: &str) -> Option<Credentials>;
}

/// A fixed map of registry host to credentials.
#[derive(Debug, Clone, Default)]
pub struct StaticCredentials(pub HashMap<String, Credentials>);

impl StaticCredentials {
    /// No credentials at all: every pull is anonymous.
    pub fn none() -> StaticCredentials {
        StaticCredentials::default()
    }

    /// Adds credentials for one host.
    pub fn with(mut self, registry_host: &str, creds: Credentials) -> StaticCredentials {
        self.0.insert(registry_host.to_string(), creds);
        self
    }
}

impl CredentialStore for StaticCredentials {
    fn get(&self, registry_host: &str) -> Option<Credentials> {
        self.0.get(registry_host).cloned()
    }
}

/// The names credentials for a registry host may be stored under. Docker Hub's are stored by
/// `docker login` as "https://index.docker.io/v1/".
pub(crate) fn credential_keys(registry_host: &str) -> Vec<String> {
    let mut keys = vec![registry_host.to_string()];
    if registry_host == crate::reference::DOCKER_HUB {
        for k in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
        ] {
            keys.push(k.to_string());
        }
    } else {
        keys.push(format!("https://{registry_host}"));
        keys.push(format!("http://{registry_host}"));
    }
    keys
}

/// Looks credentials up under every name they may be stored as.
pub(crate) fn lookup(store: &dyn CredentialStore, registry_host: &str) -> Option<Credentials> {
    credential_keys(registry_host)
        .iter()
        .find_map(|k| store.get(k))
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`: send the user name and password with every request.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`: get a token from `realm`.
    Bearer {
        /// The token server's URL.
        realm: String,
        /// The `service` parameter to pass on.
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
}

/// A challenge as written: a scheme and its parameters (names lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChallenge {
    /// The scheme, lowercased: "basic", "bearer".
    pub scheme: String,
    /// Parameters in order, names lowercased, quoted values unescaped.
    pub params: Vec<(String, String)>,
}

impl RawChallenge {
    /// The value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235): one or more challenges separated by commas,
/// each a scheme followed by `name=value` or `name="quoted, value"` parameters (or a token68).
/// Commas and escaped quotes inside quoted strings do not split. Malformed trailing input is
/// dropped rather than failing the whole header.
pub fn parse_www_authenticate(header: &str) -> Vec<RawChallenge> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out: Vec<RawChallenge> = Vec::new();
    loop {
        p.skip_ws_and_commas();
        if p.done() {
            break;
        }
        let Some(scheme) = p.token() else {
            break;
        };
        let mut ch = RawChallenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        // Parameters until the next thing that is a bare token (a new scheme).
        loop {
            let save = p.i;
            p.skip_ws_and_commas();
            if p.done() {
                break;
            }
            let Some(name) = p.token() else {
                // Not a token: the rest of a token68, or garbage. Skip it (to the next comma
                // outside quotes), always making progress.
                let before = p.i;
                if !p.skip_token68() {
                    p.skip_to_comma();
                }
                if p.i == before {
                    p.i += 1;
                }
                continue;
            };
            p.skip_ws();
            if p.peek() == Some(b'=') {
                p.i += 1;
                // A token68 ends in '='s and has no value after it.
                p.skip_ws();
                let value = if p.peek() == Some(b'"') {
                    p.quoted()
                } else {
                    // Strictly a token; servers also send bare URLs here.
                    p.bare_value()
                };
                ch.params.push((name.to_ascii_lowercase(), value));
            } else {
                // A bare token: the next challenge's scheme.
                p.i = save;
                break;
            }
        }
        out.push(ch);
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
            if !tchar {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn bare_value(&mut self) -> String {
        let start = self.i;
        while let Some(c) = self.peek() {
            if matches!(c, b',' | b' ' | b'\t' | b'"') {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    fn skip_token68(&mut self) -> bool {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || b"-._~+/".contains(&c) {
                self.i += 1;
            } else {
                break;
            }
        }
        while self.peek() == Some(b'=') {
            self.i += 1;
        }
        self.i > start
    }
    fn quoted(&mut self) -> String {
        debug_assert_eq!(self.peek(), Some(b'"'));
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    fn skip_to_comma(&mut self) {
        let mut in_quotes = false;
        while let Some(c) = self.peek() {
            match c {
                b'"' => in_quotes = !in_quotes,
                b'\\' if in_quotes => self.i += 1,
                b',' if !in_quotes => return,
                _ => {}
            }
            self.i += 1;
        }
    }
}

/// The challenge Berth will answer out of all a 401 offered: Bearer before Basic (a registry
/// offering both prefers tokens).
pub fn choose_challenge<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let all: Vec<RawChallenge> = headers
        .into_iter()
        .flat_map(parse_www_authenticate)
        .collect();
    if let Some(b) = all
        .iter()
        .find(|c| c.scheme == "bearer" && c.param("realm").is_some())
    {
        return Some(Challenge::Bearer {
            realm: b.param("realm").unwrap_or_default().to_string(),
            service: b.param("service").map(str::to_string),
            scope: b.param("scope").map(str::to_string),
        });
    }
    all.iter()
        .any(|c| c.scheme == "basic")
        .then_some(Challenge::Basic)
}

/// The token scope for pulling a repository.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// A token server's answer (Docker token authentication). Docker's servers send `token`, OAuth2
/// ones `access_token`; both may be present.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub(crate) fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let lifetime = Duration::from_secs(self.expires_in.filter(|&s| s > 0).unwrap_or(60));
        Some((token, lifetime))
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// What the client has learned about authenticating to endpoints: the challenge each endpoint
/// answered with, and unexpired bearer tokens per (endpoint, scope).
#[derive(Default)]
pub(crate) struct AuthCache {
    inner: Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    challenges: HashMap<String, Challenge>,
    tokens: HashMap<(String, String), (String, Instant)>,
}

/// Tokens are dropped this long before they expire, so a request never carries one that runs
/// out on its way.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

impl AuthCache {
    fn state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn challenge(&self, endpoint: &str) -> Option<Challenge> {
        self.state().challenges.get(endpoint).cloned()
    }

    pub(crate) fn set_challenge(&self, endpoint: &str, c: Challenge) {
        self.state().challenges.insert(endpoint.to_string(), c);
    }

    pub(crate) fn token(&self, endpoint: &str, scope: &str) -> Option<String> {
        let mut st = self.state();
        let key = (endpoint.to_string(), scope.to_string());
        match st.tokens.get(&key) {
            Some((t, until)) if Instant::now() < *until => Some(t.clone()),
            Some(_) => {
                st.tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn set_token(&self, endpoint: &str, scope: &str, token: String, lifetime: Duration) {
        let until = Instant::now()
            + lifetime
                .saturating_sub(EXPIRY_MARGIN)
                .max(Duration::from_secs(1));
        self.state()
            .tokens
            .insert((endpoint.to_string(), scope.to_string()), (token, until));
    }

    pub(crate) fn drop_token(&self, endpoint: &str, scope: &str) {
        self.state()
            .tokens
            .remove(&(endpoint.to_string(), scope.to_string()));
    }

    /// Forgets everything (after a configuration change).
    pub(crate) fn clear(&self) {
        let mut st = self.state();
        st.challenges.clear();
        st.tokens.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(c: &RawChallenge) -> Vec<(&str, &str)> {
        c.params
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }

    #[test]
    fn bearer_with_commas_in_quotes() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#;
        let c = parse_www_authenticate(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(
            params(&c[0]),
            [
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:samalba/my-app:pull,push")
            ]
        );
    }

    #[test]
    fn basic_and_variants() {
        let c = parse_www_authenticate(r#"Basic realm="Registry Realm""#);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));

        // Case, spacing, unquoted values, escapes, error params.
        let c = parse_www_authenticate(
            r#"  BEARER   Realm = http://127.0.0.1:15003/token , Service="a \"q\" b",error="insufficient_scope""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].param("realm"), Some("http://127.0.0.1:15003/token"));
        assert_eq!(c[0].param("service"), Some(r#"a "q" b"#));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));

        // Two challenges in one header, and a token68.
        let c = parse_www_authenticate(
            r#"Newauth realm="apps", type=1, title="Login, to \"apps\"", Basic realm="simple""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].param("title"), Some(r#"Login, to "apps""#));
        assert_eq!(c[1].scheme, "basic");
        let c = parse_www_authenticate("Negotiate abc123==, Basic realm=x");
        assert_eq!(
            c.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
            ["negotiate", "basic"]
        );

        // Garbage never panics.
        for h in [
            "",
            ",,,",
            "\"",
            "Bearer realm=\"unterminated",
            "=x",
            "Bearer ,=,\"a,b\"",
            "Basic \u{e9}",
        ] {
            let _ = parse_www_authenticate(h);
        }
    }

    #[test]
    fn choosing() {
        let bearer = r#"Bearer realm="https://t/token",service="reg""#;
        assert_eq!(
            choose_challenge([r#"Basic realm="r""#, bearer]),
            Some(Challenge::Bearer {
                realm: "https://t/token".into(),
                service: Some("reg".into()),
                scope: None
            })
        );
        assert_eq!(
            choose_challenge([r#"Basic realm="r""#]),
            Some(Challenge::Basic)
        );
        assert_eq!(choose_challenge(["Bearer service=x"]), None);
        assert_eq!(choose_challenge(["Digest realm=x"]), None);
        assert_eq!(
            pull_scope("library/busybox"),
            "repository:library/busybox:pull"
        );
    }

    #[test]
    fn credentials_are_redacted_and_looked_up_by_alias() {
        let c = Credentials {
            username: "u".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.basic_header(), "Basic dTpzM2NyZXQ=");
        let store = StaticCredentials::none().with("https://index.docker.io/v1/", c.clone());
        assert_eq!(lookup(&store, "docker.io"), Some(c.clone()));
        assert_eq!(lookup(&store, "quay.io"), None);
        let store = StaticCredentials::none().with("127.0.0.1:15001", c.clone());
        assert_eq!(lookup(&store, "127.0.0.1:15001"), Some(c));
    }

    #[test]
    fn token_cache_expiry() {
        let cache = AuthCache::default();
        cache.set_token("e", "s", "t".into(), Duration::from_secs(60));
        assert_eq!(cache.token("e", "s").as_deref(), Some("t"));
        assert_eq!(cache.token("e", "other"), None);
        cache.drop_token("e", "s");
        assert_eq!(cache.token("e", "s"), None);
        cache.set_token("e", "s", "t".into(), Duration::from_millis(1));
        // Lifetime floors at one second.
        assert!(cache.token("e", "s").is_some());
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":0}"#).unwrap();
        assert_eq!(t.into_token(), Some(("a".into(), Duration::from_secs(60))));
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"b","access_token":"a","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token(), Some(("b".into(), Duration::from_secs(300))));
        let t: TokenResponse = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }
}
