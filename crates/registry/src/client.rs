//! The registry client: requests with authentication and retries, endpoint fallback, and
//! resolving a reference to a verified manifest and config.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RANGE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use crate::auth::{self, AuthCache, Challenge, CredentialStore, Credentials, TokenResponse};
use crate::endpoint::{check_mirror_url, is_loopback, Endpoint, RegistryConfig};
use crate::error::RegistryError;
use crate::manifest::{
    self, classify, media_type, Descriptor, ImageIndex, ImageManifest, ManifestKind, Platform,
};
use crate::reference::{is_sha256_digest, Reference, DOCKER_HUB};

/// How long the https attempt at a registry that also allows http may take before the client
/// falls back to http (a plain-http server may never answer a TLS hello).
const TLS_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection establishment limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence on a connection before it counts as dropped (a blob then resumes).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an error body is read for its message.
const ERROR_BODY_MAX: u64 = 64 * 1024;
/// Docker's header naming a manifest's digest.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// A document fetched and verified: a manifest, an index or a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Its media type.
    pub media_type: String,
    /// `sha256:` of its bytes.
    pub digest: String,
    /// The bytes exactly as the registry sent them.
    pub bytes: Bytes,
}

/// A reference resolved for one platform: everything needed to pull its layers.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference asked for.
    pub reference: Reference,
    /// The digest the reference resolved to at the registry: the index/manifest-list digest for
    /// multi-arch images, else the manifest digest (Docker's RepoDigests value).
    pub repo_digest: String,
    /// The index or manifest list, for multi-arch images.
    pub index: Option<Fetched>,
    /// The platform manifest.
    pub manifest: Fetched,
    /// The image config.
    pub config: Fetched,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
    /// Who served the manifest.
    pub endpoint: Endpoint,
    /// Endpoints tried and skipped, with the reason, in order (for a visible fallback).
    pub skipped: Vec<SkippedEndpoint>,
}

/// An endpoint that was tried and failed, after which the next one was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEndpoint {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Why it was skipped (the error's message).
    pub reason: String,
}

/// The OCI distribution client. Cheap to clone; clones share configuration, connections and
/// the token cache.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Index: [through a proxy?][accepting invalid certificates?]
    http: [[reqwest::Client; 2]; 2],
    config: RwLock<Arc<RegistryConfig>>,
    creds: Arc<dyn CredentialStore>,
    auth: AuthCache,
    /// The scheme that answered, per registry host that may use either.
    schemes: Mutex<HashMap<String, &'static str>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config())
            .finish_non_exhaustive()
    }
}

/// Whose credentials a request uses.
#[derive(Clone, Copy)]
pub(crate) enum AuthMode<'a> {
    /// The credential store's, with the token cache.
    Store,
    /// These, for a login check: nothing cached is used or kept.
    Login(&'a Credentials),
}

/// One GET to an endpoint.
pub(crate) struct Request<'a> {
    pub endpoint: &'a Endpoint,
    pub url: String,
    /// The token scope (`repository:x:pull`), None for the base `/v2/`.
    pub scope: Option<String>,
    pub accept: Option<&'static str>,
    /// Ask for the content from this offset on (`Range: bytes=N-`).
    pub range_from: Option<u64>,
    /// What is fetched, for error messages: "manifest for docker.io/library/x:latest".
    pub what: String,
    /// GET unless said otherwise (a push HEADs, POSTs and PUTs).
    pub method: reqwest::Method,
    /// A body sent (again) with every attempt, and its content type.
    pub body: Option<(Bytes, String)>,
}

/// An endpoint to try, or to report as unusable (a mirror URL with a path, ...).
pub(crate) struct Candidate {
    pub endpoint: Endpoint,
    pub unusable: Option<String>,
}

/// What authorisation the last attempt carried.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    Nothing,
    Basic,
    CachedToken,
    FreshToken,
}

impl Client {
    /// A client with this configuration and credential store.
    pub fn new(
        config: RegistryConfig,
        creds: Arc<dyn CredentialStore>,
    ) -> Result<Client, RegistryError> {
        config.validate()?;
        let mut roots = Vec::new();
        for pem in &config.ca_certificates {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                RegistryError::InvalidConfig {
                    message: format!("a CA certificate does not parse as PEM: {e}"),
                }
            })?;
            if certs.is_empty() {
                return Err(RegistryError::InvalidConfig {
                    message: "a CA file holds no PEM certificate".into(),
                });
            }
            roots.extend(certs);
        }
        let build = |proxied: bool, accept_invalid: bool| {
            let mut b = reqwest::Client::builder()
                .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .danger_accept_invalid_certs(accept_invalid);
            for cert in &roots {
                b = b.add_root_certificate(cert.clone());
            }
            if !proxied {
                b = b.no_proxy();
            }
            b.build().map_err(|e| RegistryError::InvalidConfig {
                message: format!("cannot set up the HTTP client: {e}"),
            })
        };
        let http = [
            [build(false, false)?, build(false, true)?],
            [build(true, false)?, build(true, true)?],
        ];
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                config: RwLock::new(Arc::new(config)),
                creds,
                auth: AuthCache::default(),
                schemes: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A client with this one's configuration, credentials and connections, but token and
    /// challenge caches of its own (for probes that must not teach the shared client).
    pub(crate) fn detached(&self) -> Client {
        Client {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                config: RwLock::new(self.config()),
                creds: self.inner.creds.clone(),
                auth: AuthCache::default(),
                schemes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Replaces the configuration; the next operation uses it. Invalid mirror URLs are skipped
    /// (and reported in `skipped`) when used; check with [`RegistryConfig::validate`] first.
    pub fn set_config(&self, config: RegistryConfig) {
        *self.inner.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        // Which hosts may use http may have changed.
        self.inner
            .schemes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<RegistryConfig> {
        self.inner
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets cached tokens and learned challenges (after credentials changed).
    pub fn forget_auth(&self) {
        self.inner.auth.clear();
    }

    /// Resolves a tag or digest to its manifest for `platform`, and fetches the config.
    ///
    /// Endpoints are the registry's mirrors in order, then the registry; a failing mirror is
    /// recorded in [`Resolved::skipped`] and the next endpoint tried. Every document is checked
    /// against its digest and size: a manifest fetched by digest must hash to it, one fetched by
    /// tag must match the registry's Docker-Content-Digest when it sends one.
    pub async fn resolve(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<Resolved, RegistryError> {
        let cfg = self.config();
        let what = format!("manifest for {r}");
        let mut skipped = Vec::new();
        let mut attempts = Vec::new();
        let endpoints = self.endpoints(&cfg, &r.registry).await;
        let count = endpoints.len();
        for (
            i,
            Candidate {
                endpoint: ep,
                unusable,
            },
        ) in endpoints.into_iter().enumerate()
        {
            let result = match unusable {
                None => self.resolve_on(&cfg, r, platform, &ep).await,
                Some(why) => Err(RegistryError::InvalidConfig { message: why }),
            };
            match result {
                Ok(mut resolved) => {
                    resolved.skipped = skipped;
                    return Ok(resolved);
                }
                Err(e) => {
                    if i + 1 < count {
                        tracing::warn!(endpoint = %ep.base, error = %e, "skipping endpoint for {r}");
                        skipped.push(SkippedEndpoint {
                            endpoint: ep.clone(),
                            reason: e.to_string(),
                        });
                    }
                    attempts.push((ep, e));
                }
            }
        }
        Err(combine_failures(attempts, &r.registry, &what))
    }

    /// Checks credentials against a registry's `/v2/` (Basic, or a token obtained with them).
    /// Accepts Docker Hub's "https://index.docker.io/v1/" and URLs as the host.
    pub async fn check_login(
        &self,
        registry_host: &str,
        creds: &Credentials,
    ) -> Result<(), RegistryError> {
        let cfg = self.config();
        let host = login_host(registry_host);
        if host != DOCKER_HUB && url::Url::parse(&format!("https://{host}/")).is_err() {
            return Err(RegistryError::InvalidConfig {
                message: format!("invalid registry host {registry_host:?}"),
            });
        }
        let ep = self.upstream(&cfg, &host).await;
        let req = Request {
            url: ep.url(""),
            endpoint: &ep,
            scope: None,
            accept: None,
            range_from: None,
            what: format!("registry API of {host}"),
            method: reqwest::Method::GET,
            body: None,
        };
        self.get(&cfg, &req, AuthMode::Login(creds)).await.map(drop)
    }

    /// Mirrors then upstream; a mirror whose URL is unusable comes with the reason.
    pub(crate) async fn endpoints(&self, cfg: &RegistryConfig, registry: &str) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = cfg
            .mirrors_for(registry)
            .into_iter()
            .map(|u| {
                let unusable = check_mirror_url(&u)
                    .err()
                    .map(|why| format!("unusable mirror URL: {why}"));
                Candidate {
                    endpoint: Endpoint::mirror(u),
                    unusable,
                }
            })
            .collect();
        if !cfg.mirror_only.contains(registry) {
            out.push(Candidate {
                endpoint: self.upstream(cfg, registry).await,
                unusable: None,
            });
        }
        out
    }

    /// The registry's own endpoint. A registry that may use plain http is tried with https
    /// first and falls back to http when TLS or the connection fails (as Docker does); the
    /// scheme that answered is remembered.
    pub(crate) async fn upstream(&self, cfg: &RegistryConfig, registry: &str) -> Endpoint {
        if registry == DOCKER_HUB || !cfg.http_allowed(registry) {
            return Endpoint::upstream(registry, "https");
        }
        if let Some(s) = self
            .inner
            .schemes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
        {
            return Endpoint::upstream(registry, s);
        }
        let remember = |s: &'static str| {
            self.inner
                .schemes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(registry.to_string(), s);
        };
        let https = Endpoint::upstream(registry, "https");
        let probe = self
            .http_for(&https.base, true)
            .get(https.url(""))
            .timeout(TLS_PROBE_TIMEOUT)
            .send()
            .await;
        match probe {
            Ok(_) => {
                remember("https");
                https
            }
            Err(e) => {
                tracing::debug!(registry, error = %e, "https failed, trying http");
                let http = Endpoint::upstream(registry, "http");
                if self
                    .http_for(&http.base, true)
                    .get(http.url(""))
                    .send()
                    .await
                    .is_ok()
                {
                    remember("http");
                }
                http
            }
        }
    }

    /// The HTTP client for a URL: loopback is never proxied (as Go's ProxyFromEnvironment);
    /// registries that may use http also have their certificates unchecked over https.
    pub(crate) fn http_for(&self, url: &url::Url, insecure: bool) -> &reqwest::Client {
        let host = crate::endpoint::host_port(url);
        let proxied = !is_loopback(&host);
        &self.inner.http[usize::from(proxied)][usize::from(insecure)]
    }

    pub(crate) fn tls_relaxed(&self, cfg: &RegistryConfig, url: &url::Url) -> bool {
        url.scheme() == "https" && cfg.http_allowed(&crate::endpoint::host_port(url))
    }

    async fn resolve_on(
        &self,
        cfg: &RegistryConfig,
        r: &Reference,
        platform: &Platform,
        ep: &Endpoint,
    ) -> Result<Resolved, RegistryError> {
        let what = format!("manifest for {r}");
        let top = self
            .fetch_manifest(
                cfg,
                ep,
                r,
                r.manifest_reference(),
                r.digest.as_deref(),
                None,
                &what,
            )
            .await?;
        let (index, manifest) = match classify(&top.media_type, &what)? {
            ManifestKind::Image => (None, top),
            ManifestKind::Index => {
                let idx = ImageIndex::parse(&top.bytes, &what)?;
                let d = idx.select(platform)?;
                let what = format!("manifest {} ({platform}) of {r}", d.digest);
                if classify(&d.media_type, &what)? != ManifestKind::Image {
                    return Err(RegistryError::UnsupportedMediaType {
                        what,
                        media_type: d.media_type.clone(),
                        reason: "nested indexes are not supported".into(),
                    });
                }
                let m = self
                    .fetch_manifest(cfg, ep, r, &d.digest, Some(&d.digest), Some(d.size), &what)
                    .await?;
                if classify(&m.media_type, &what)? != ManifestKind::Image {
                    return Err(RegistryError::UnsupportedMediaType {
                        what,
                        media_type: m.media_type,
                        reason: "the index entry is not an image manifest".into(),
                    });
                }
                (Some(top), m)
            }
        };
        let repo_digest = index.as_ref().unwrap_or(&manifest).digest.clone();
        let m = ImageManifest::parse(&manifest.bytes, &what)?;
        let config_what = format!("image config {} of {r}", m.config.digest);
        if !matches!(
            m.config.media_type.as_str(),
            media_type::OCI_CONFIG | media_type::DOCKER_CONFIG
        ) {
            return Err(RegistryError::UnsupportedMediaType {
                what: config_what,
                media_type: m.config.media_type.clone(),
                reason: "not a container image (OCI or Docker image config expected)".into(),
            });
        }
        let config = self
            .fetch_config(cfg, ep, r, &m.config, &config_what)
            .await?;
        Ok(Resolved {
            reference: r.clone(),
            repo_digest,
            index,
            manifest,
            config,
            layers: m.layers,
            endpoint: ep.clone(),
            skipped: Vec::new(),
        })
    }

    /// GETs a manifest and verifies it: at most 4 MiB, `expected_size` when known, sha256 equal
    /// to `expected_digest` when fetched by digest, else to Docker-Content-Digest when sent.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_manifest(
        &self,
        cfg: &RegistryConfig,
        ep: &Endpoint,
        r: &Reference,
        reference: &str,
        expected_digest: Option<&str>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<Fetched, RegistryError> {
        if expected_size.is_some_and(|s| s > manifest::MANIFEST_MAX) {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit: manifest::MANIFEST_MAX,
            });
        }
        let req = Request {
            endpoint: ep,
            url: ep.url(&format!("{}/manifests/{reference}", r.repository)),
            scope: Some(auth::pull_scope(&r.repository)),
            accept: Some(media_type::MANIFEST_ACCEPT),
            range_from: None,
            what: what.to_string(),
            method: reqwest::Method::GET,
            body: None,
        };
        let (headers, bytes) = self.get_small(cfg, &req, manifest::MANIFEST_MAX).await?;
        if let Some(size) = expected_size {
            if bytes.len() as u64 != size {
                return Err(RegistryError::SizeMismatch {
                    what: what.to_string(),
                    expected: size,
                    actual: bytes.len() as u64,
                });
            }
        }
        let digest = sha256_digest(&bytes);
        let announced = headers
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .filter(|d| is_sha256_digest(d));
        if let Some(expected) = expected_digest.or(announced) {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: digest,
                });
            }
        }
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let media_type = manifest::effective_media_type(&bytes, content_type)
            .or_else(|| guess_media_type(&bytes))
            .ok_or_else(
                || match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Err(e) => RegistryError::InvalidManifest {
                        what: what.to_string(),
                        message: e.to_string(),
                    },
                    Ok(_) => RegistryError::UnsupportedMediaType {
                        what: what.to_string(),
                        media_type: content_type.unwrap_or("").to_string(),
                        reason: "the registry sent no usable media type".into(),
                    },
                },
            )?;
        Ok(Fetched {
            media_type,
            digest,
            bytes,
        })
    }

    async fn fetch_config(
        &self,
        cfg: &RegistryConfig,
        ep: &Endpoint,
        r: &Reference,
        desc: &Descriptor,
        what: &str,
    ) -> Result<Fetched, RegistryError> {
        if desc.size > manifest::CONFIG_MAX {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit: manifest::CONFIG_MAX,
            });
        }
        let req = Request {
            endpoint: ep,
            url: ep.url(&format!("{}/blobs/{}", r.repository, desc.digest)),
            scope: Some(auth::pull_scope(&r.repository)),
            accept: None,
            range_from: None,
            what: what.to_string(),
            method: reqwest::Method::GET,
            body: None,
        };
        let (_, bytes) = self
            .get_small(cfg, &req, desc.size)
            .await
            .map_err(|e| match e {
                RegistryError::TooLarge { .. } => RegistryError::SizeMismatch {
                    what: what.to_string(),
                    expected: desc.size,
                    actual: desc.size + 1,
                },
                e => e,
            })?;
        if bytes.len() as u64 != desc.size {
            return Err(RegistryError::SizeMismatch {
                what: what.to_string(),
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        let digest = sha256_digest(&bytes);
        if digest != desc.digest {
            return Err(RegistryError::DigestMismatch {
                expected: desc.digest.clone(),
                actual: digest,
            });
        }
        Ok(Fetched {
            media_type: desc.media_type.clone(),
            digest,
            bytes,
        })
    }

    /// GET and read a small body (at most `limit` bytes), retrying a body cut short.
    async fn get_small(
        &self,
        cfg: &RegistryConfig,
        req: &Request<'_>,
        limit: u64,
    ) -> Result<(HeaderMap, Bytes), RegistryError> {
        let attempts = cfg.retry.attempts();
        let mut attempt = 0;
        loop {
            let resp = self.get(cfg, req, AuthMode::Store).await?;
            let headers = resp.headers().clone();
            match read_limited(resp, limit, &req.what).await {
                Ok(b) => return Ok((headers, b)),
                Err(e) if e.is_transient() && attempt + 1 < attempts => {
                    tracing::debug!(url = %req.url, error = %e, "body cut short, retrying");
                    tokio::time::sleep(cfg.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// GET with authentication: anonymous first (or with what the endpoint is known to want);
    /// on 401 answer the challenge (Basic with credentials, or a Bearer token from the realm)
    /// and try again; a refused cached token is dropped and replaced once. Returns a 2xx
    /// response, or the error its status means.
    pub(crate) async fn get(
        &self,
        cfg: &RegistryConfig,
        req: &Request<'_>,
        mode: AuthMode<'_>,
    ) -> Result<reqwest::Response, RegistryError> {
        let ep = req.endpoint;
        let key = ep.base.as_str();
        let scope = req.scope.as_deref().unwrap_or("");
        let (creds, login) = match mode {
            AuthMode::Store => (auth::lookup(&*self.inner.creds, &ep.host), false),
            AuthMode::Login(c) => (Some(c.clone()), true),
        };
        let (mut header, mut sent) = (None, Sent::Nothing);
        if !login {
            match self.inner.auth.challenge(key) {
                Some(Challenge::Basic) => {
                    if let Some(c) = &creds {
                        (header, sent) = (Some(c.basic_header()), Sent::Basic);
                    }
                }
                Some(Challenge::Bearer { realm, service, .. }) => {
                    if let Some(t) = self.inner.auth.token(key, scope) {
                        (header, sent) = (Some(format!("Bearer {t}")), Sent::CachedToken);
                    } else {
                        let token = self
                            .token(
                                cfg,
                                ep,
                                &realm,
                                service.as_deref(),
                                req.scope.as_deref(),
                                creds.as_ref(),
                                false,
                            )
                            .await?;
                        (header, sent) = (Some(format!("Bearer {token}")), Sent::FreshToken);
                    }
                }
                None => {}
            }
        }
        loop {
            let resp = self.send(cfg, req, header.as_deref()).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return check_status(resp, req).await;
            }
            let offered: Vec<String> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            let detail = error_message(resp).await;
            let challenge = auth::choose_challenge(offered.iter().map(String::as_str));
            let refused = |message: String| RegistryError::Unauthorized {
                registry: ep.host.clone(),
                message,
            };
            match sent {
                Sent::Basic => return Err(refused(format!("the credentials were refused: {detail}"))),
                Sent::FreshToken if creds.is_some() => {
                    let scope = scope_name(scope);
                    return Err(refused(format!(
                        "access to {scope} refused with the configured credentials: {detail}"
                    )));
                }
                Sent::FreshToken => {
                    return Err(refused(format!(
                        "anonymous access to {} refused (no credentials configured; log in first): {detail}",
                        scope_name(scope),
                    )))
                }
                Sent::CachedToken => self.inner.auth.drop_token(key, scope),
                Sent::Nothing => {}
            }
            let Some(challenge) = challenge else {
                return Err(refused(format!(
                    "401 without a usable authentication challenge: {detail}"
                )));
            };
            if !login {
                self.inner.auth.set_challenge(key, challenge.clone());
            }
            match challenge {
                Challenge::Basic => {
                    let Some(c) = &creds else {
                        return Err(refused(
                            "authentication required and no credentials configured (log in first)"
                                .into(),
                        ));
                    };
                    (header, sent) = (Some(c.basic_header()), Sent::Basic);
                }
                Challenge::Bearer { realm, service, .. } => {
                    let token = self
                        .token(
                            cfg,
                            ep,
                            &realm,
                            service.as_deref(),
                            req.scope.as_deref(),
                            creds.as_ref(),
                            login,
                        )
                        .await?;
                    (header, sent) = (Some(format!("Bearer {token}")), Sent::FreshToken);
                }
            }
        }
    }

    /// The `Authorization` header for a request whose body cannot be sent twice (a streamed
    /// upload): what the endpoint is known to want, for `scope`. An earlier request of the
    /// same scope (the upload's POST) has learnt the challenge and cached the token.
    pub(crate) async fn authorization(
        &self,
        cfg: &RegistryConfig,
        ep: &Endpoint,
        scope: &str,
    ) -> Result<Option<String>, RegistryError> {
        let key = ep.base.as_str();
        let creds = auth::lookup(&*self.inner.creds, &ep.host);
        match self.inner.auth.challenge(key) {
            Some(Challenge::Basic) => Ok(creds.map(|c| c.basic_header())),
            Some(Challenge::Bearer { realm, service, .. }) => {
                if let Some(t) = self.inner.auth.token(key, scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let token = self
                    .token(
                        cfg,
                        ep,
                        &realm,
                        service.as_deref(),
                        Some(scope),
                        creds.as_ref(),
                        false,
                    )
                    .await?;
                Ok(Some(format!("Bearer {token}")))
            }
            None => Ok(None),
        }
    }

    /// Forgets the token of a scope that the registry refused part-way (it expired).
    pub(crate) fn drop_token(&self, ep: &Endpoint, scope: &str) {
        self.inner.auth.drop_token(ep.base.as_str(), scope);
    }

    /// A bearer token from `realm` (Docker token authentication), with the credentials when
    /// there are some; cached per (endpoint, scope) unless for a login check.
    #[allow(clippy::too_many_arguments)]
    async fn token(
        &self,
        cfg: &RegistryConfig,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        creds: Option<&Credentials>,
        login: bool,
    ) -> Result<String, RegistryError> {
        let mut url = url::Url::parse(realm).map_err(|e| RegistryError::Unauthorized {
            registry: ep.host.clone(),
            message: format!("the registry named an invalid token realm {realm:?}: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RegistryError::Unauthorized {
                registry: ep.host.clone(),
                message: format!("the registry named a token realm that is not http(s): {realm:?}"),
            });
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            // Several scopes (a push that mounts from another repository) are separated by
            // spaces in the cache key and sent as one `scope` parameter each.
            for s in scope.into_iter().flat_map(str::split_whitespace) {
                q.append_pair("scope", s);
            }
            if let (Some(c), true) = (creds, login) {
                q.append_pair("account", &c.username);
            }
        }
        let realm_host = crate::endpoint::host_port(&url);
        let attempts = cfg.retry.attempts();
        let mut attempt = 0;
        let resp = loop {
            let mut rb = self
                .http_for(&url, self.tls_relaxed(cfg, &url))
                .get(url.clone());
            if let Some(c) = creds {
                rb = rb.header(AUTHORIZATION, c.basic_header());
            }
            let result = match rb.send().await {
                Ok(r)
                    if r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    Err(http_error(r, url.as_str()).await)
                }
                Ok(r) => Ok(r),
                Err(e) => Err(RegistryError::transport(&strip_query(&url), &e)),
            };
            match result {
                Ok(r) => break r,
                Err(e) if attempt + 1 < attempts => {
                    tracing::debug!(error = %e, "token request failed, retrying");
                    tokio::time::sleep(cfg.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            let detail = error_message(resp).await;
            let message = match creds {
                Some(_) => format!(
                    "the token server refused the credentials for {}: {detail}",
                    ep.host
                ),
                None => format!(
                    "the token server requires credentials for {} (log in first): {detail}",
                    ep.host
                ),
            };
            return Err(RegistryError::Unauthorized {
                registry: realm_host,
                message,
            });
        }
        if status == StatusCode::FORBIDDEN {
            let detail = error_message(resp).await;
            return Err(RegistryError::Denied {
                registry: realm_host,
                message: format!(
                    "token for {} refused: {detail}",
                    scope_name(scope.unwrap_or(""))
                ),
            });
        }
        if !status.is_success() {
            return Err(http_error(resp, &strip_query(&url)).await);
        }
        let body = read_limited(resp, 1024 * 1024, "token response").await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Unauthorized {
                registry: realm_host.clone(),
                message: format!("the token server's answer is not valid JSON: {e}"),
            })?;
        let (token, lifetime) = parsed
            .into_token()
            .ok_or_else(|| RegistryError::Unauthorized {
                registry: realm_host,
                message: "the token server answered without a token".into(),
            })?;
        if !login {
            self.inner.auth.set_token(
                ep.base.as_str(),
                scope.unwrap_or(""),
                token.clone(),
                lifetime,
            );
        }
        Ok(token)
    }

    /// One GET, retried with backoff while the answer is transient (no answer, 5xx, 429).
    /// Returns any other response as it is.
    async fn send(
        &self,
        cfg: &RegistryConfig,
        req: &Request<'_>,
        authorization: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = url::Url::parse(&req.url).map_err(|e| RegistryError::InvalidConfig {
            message: format!("bad URL {}: {e}", req.url),
        })?;
        let client = self.http_for(&url, self.tls_relaxed(cfg, &url));
        let attempts = cfg.retry.attempts();
        let mut attempt = 0;
        loop {
            let mut rb = client.request(req.method.clone(), url.clone());
            if let Some((body, content_type)) = &req.body {
                rb = rb.header(CONTENT_TYPE, content_type).body(body.clone());
            } else if req.method == reqwest::Method::POST || req.method == reqwest::Method::PUT {
                rb = rb.header(reqwest::header::CONTENT_LENGTH, 0);
            }
            if let Some(a) = authorization {
                let mut v = HeaderValue::from_str(a).map_err(|_| RegistryError::Unauthorized {
                    registry: req.endpoint.host.clone(),
                    message: "credentials or token contain characters not allowed in a header"
                        .into(),
                })?;
                v.set_sensitive(true);
                rb = rb.header(AUTHORIZATION, v);
            }
            if let Some(a) = req.accept {
                rb = rb.header(ACCEPT, a);
            }
            if let Some(from) = req.range_from {
                rb = rb.header(RANGE, format!("bytes={from}-"));
            }
            let (error, wait) = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    tracing::debug!(url = %req.url, status = status.as_u16(), method = %req.method, "registry request");
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Ok(resp);
                    }
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    (http_error(resp, &req.url).await, retry_after)
                }
                Err(e) => (RegistryError::transport(&req.url, &e), None),
            };
            if attempt + 1 >= attempts {
                return Err(error);
            }
            let wait = wait
                .unwrap_or_else(|| cfg.retry.backoff(attempt))
                .min(cfg.retry.max_backoff);
            tracing::debug!(url = %req.url, error = %error, ?wait, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// Docker Hub's legacy login address and URLs reduced to the registry host.
fn login_host(s: &str) -> String {
    let s = s.trim();
    let bare = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = bare.split('/').next().unwrap_or(bare);
    match host {
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

/// "repository berth/hello" for "repository:berth/hello:pull".
fn scope_name(scope: &str) -> String {
    // The first scope names the repository the request is about.
    let scope = scope.split_whitespace().next().unwrap_or("");
    match scope
        .strip_prefix("repository:")
        .and_then(|s| s.rsplit_once(':'))
    {
        Some((repo, _)) => format!("repository {repo}"),
        None if scope.is_empty() => "the registry".into(),
        None => scope.to_string(),
    }
}

fn strip_query(u: &url::Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.to_string()
}

/// `sha256:<hex>` of some bytes.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A manifest without a media type anywhere: an OCI index or manifest by its shape.
fn guess_media_type(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if v.get("manifests").is_some() {
        Some(media_type::OCI_INDEX.to_string())
    } else if v.get("config").is_some() && v.get("layers").is_some() {
        Some(media_type::OCI_MANIFEST.to_string())
    } else {
        None
    }
}

/// Reads a whole body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(
    resp: reqwest::Response,
    limit: u64,
    what: &str,
) -> Result<Bytes, RegistryError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(RegistryError::TooLarge {
            what: what.to_string(),
            limit,
        });
    }
    let url = resp.url().to_string();
    let mut buf = BytesMut::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| RegistryError::transport(&url, &e))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A 2xx response as it is; anything else as the error it means.
pub(crate) async fn check_status(
    resp: reqwest::Response,
    req: &Request<'_>,
) -> Result<reqwest::Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    match status {
        StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
            what: req.what.clone(),
            registry: req.endpoint.host.clone(),
        }),
        StatusCode::FORBIDDEN => {
            let detail = error_message(resp).await;
            Err(RegistryError::Denied {
                registry: req.endpoint.host.clone(),
                message: format!("{}: {detail}", req.what),
            })
        }
        _ => Err(http_error(resp, &req.url).await),
    }
}

pub(crate) async fn http_error(resp: reqwest::Response, url: &str) -> RegistryError {
    let status = resp.status().as_u16();
    let message = error_message(resp).await;
    RegistryError::Http {
        status,
        url: url.to_string(),
        message,
    }
}

/// The registry's error message: the distribution spec's `{"errors":[{code,message}]}`, else
/// the start of the body, else the status's reason.
pub(crate) async fn error_message(resp: reqwest::Response) -> String {
    let status = resp.status();
    let reason = status.canonical_reason().unwrap_or("error").to_string();
    let Ok(body) = read_limited(resp, ERROR_BODY_MAX, "error body").await else {
        return reason;
    };
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        return reason;
    }
    let short: String = text.chars().take(200).collect();
    short
}

/// The error of a pull that failed on every endpoint: one endpoint's error as it is; the
/// upstream's when it gave a definitive answer (not found, refused, ...); NotFound when every
/// endpoint said so; else all of them.
pub(crate) fn combine_failures(
    attempts: Vec<(Endpoint, RegistryError)>,
    registry: &str,
    what: &str,
) -> RegistryError {
    if attempts.is_empty() {
        return RegistryError::InvalidConfig {
            message: format!("{registry} is mirror-only but has no mirrors configured ({what})"),
        };
    }
    if attempts.iter().all(|(_, e)| e.is_not_found()) {
        let registry = attempts
            .iter()
            .rev()
            .find(|(ep, _)| !ep.mirror)
            .map_or(registry, |(ep, _)| ep.host.as_str());
        return RegistryError::NotFound {
            what: what.to_string(),
            registry: registry.to_string(),
        };
    }
    let upstream_definitive = attempts
        .last()
        .is_some_and(|(ep, e)| !ep.mirror && e.is_definitive());
    if attempts.len() == 1 || upstream_definitive {
        let mut attempts = attempts;
        return attempts.pop().map(|(_, e)| e).expect("not empty");
    }
    RegistryError::AllEndpointsFailed {
        attempts: attempts
            .into_iter()
            .map(|(ep, e)| (ep.base.to_string(), e.to_string()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_hosts() {
        assert_eq!(login_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(login_host(""), "docker.io");
        assert_eq!(login_host("docker.io"), "docker.io");
        assert_eq!(login_host("127.0.0.1:15001"), "127.0.0.1:15001");
        assert_eq!(login_host("http://127.0.0.1:15001/v2/"), "127.0.0.1:15001");
    }

    #[test]
    fn failures_combine() {
        let m = Endpoint::mirror(url::Url::parse("http://m.example/").unwrap());
        let u = Endpoint::upstream("reg.example", "https");
        let nf = |h: &str| RegistryError::NotFound {
            what: "manifest for x".into(),
            registry: h.into(),
        };
        let e = combine_failures(
            vec![(m.clone(), nf("m.example")), (u.clone(), nf("reg.example"))],
            "reg.example",
            "manifest for x",
        );
        assert!(e.is_not_found());
        assert!(
            e.to_string()
                .contains("manifest for x not found on reg.example"),
            "{e}"
        );
        let http500 = || RegistryError::Http {
            status: 500,
            url: "u".into(),
            message: "boom".into(),
        };
        let e = combine_failures(
            vec![(m.clone(), http500()), (u.clone(), nf("reg.example"))],
            "reg.example",
            "w",
        );
        assert!(e.is_not_found());
        let e = combine_failures(
            vec![(m.clone(), http500()), (u.clone(), http500())],
            "reg.example",
            "w",
        );
        match e {
            RegistryError::AllEndpointsFailed { attempts } => assert_eq!(attempts.len(), 2),
            other => panic!("{other:?}"),
        }
        let e = combine_failures(vec![(u, http500())], "reg.example", "w");
        assert!(matches!(e, RegistryError::Http { status: 500, .. }));
        assert!(matches!(
            combine_failures(vec![], "r", "w"),
            RegistryError::InvalidConfig { .. }
        ));
    }

    #[test]
    fn scope_names() {
        assert_eq!(
            scope_name("repository:berth/hello:pull"),
            "repository berth/hello"
        );
        assert_eq!(scope_name(""), "the registry");
        assert_eq!(
            scope_name("repository:berth/new:pull,push repository:berth/hello:pull"),
            "repository berth/new"
        );
    }
}
