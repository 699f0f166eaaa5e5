//! "Test mirror": what a settings editor shows before a mirror URL is saved: whether the
//! endpoint answers the registry API, over what TLS, which authentication it asks for, how long
//! it took, and (when an image is named) whether it has that image's manifest.

use std::time::Instant;

use reqwest::header::WWW_AUTHENTICATE;
use serde::Serialize;

use crate::auth::{self, parse_www_authenticate};
use crate::client::{read_limited, sha256_digest, AuthMode, Client, Request};
use crate::endpoint::{check_mirror_url, Endpoint};
use crate::error::RegistryError;
use crate::manifest::{self, media_type};
use crate::reference::Reference;

/// What probing one endpoint found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorProbe {
    /// The URL probed.
    pub url: String,
    /// Whether `GET /v2/` got an HTTP answer at all.
    pub reachable: bool,
    /// The status of `GET /v2/` (200 open, 401 asks for authentication).
    pub status: Option<u16>,
    /// How the connection was secured.
    pub tls: TlsUse,
    /// The authentication `/v2/` asked for: "none", or the scheme and realm of its challenge.
    pub auth: Option<String>,
    /// Time to the answer of `GET /v2/`, in milliseconds.
    pub latency_ms: Option<u64>,
    /// `Docker-Distribution-API-Version`, when sent.
    pub api_version: Option<String>,
    /// The image check, when an image was named.
    pub image: Option<ImageCheck>,
    /// Why the endpoint is unusable, if it is.
    pub error: Option<String>,
}

/// How a probe's connection was secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsUse {
    /// Plain http.
    None,
    /// https with the certificate checked against the trusted roots.
    Verified,
    /// https without checking the certificate (an insecure or loopback registry).
    Unverified,
}

/// Whether the endpoint has an image's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageCheck {
    /// The image asked about, normalised (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The repository path asked on the endpoint (`library/busybox`).
    pub repository: String,
    /// Whether the manifest was found.
    pub found: bool,
    /// The manifest's digest (sha256 of what was served), when found.
    pub digest: Option<String>,
    /// Why the check could not answer (authentication refused, ...), when it could not.
    pub error: Option<String>,
}

impl Client {
    /// Probes `url` as a mirror: `GET /v2/`, then the manifest of `image` when given, with
    /// the credentials stored for the mirror's host. Never fails: what went wrong is in the
    /// answer. Nothing is cached (no challenge or token is kept for later pulls).
    pub async fn probe_mirror(&self, url: &url::Url, image: Option<&str>) -> MirrorProbe {
        let mut out = MirrorProbe {
            url: url.to_string(),
            reachable: false,
            status: None,
            tls: TlsUse::None,
            auth: None,
            latency_ms: None,
            api_version: None,
            image: None,
            error: None,
        };
        if let Err(why) = check_mirror_url(url) {
            out.error = Some(format!("unusable mirror URL: {why}"));
            return out;
        }
        let cfg = self.config();
        let relaxed = self.tls_relaxed(&cfg, url);
        out.tls = match (url.scheme(), relaxed) {
            ("https", false) => TlsUse::Verified,
            ("https", true) => TlsUse::Unverified,
            _ => TlsUse::None,
        };
        let ep = Endpoint::mirror(url.clone());
        let started = Instant::now();
        let answer = self
            .http_for(url, relaxed)
            .get(ep.url(""))
            .timeout(std::time::Duration::from_secs(15))
            .send()
            .await;
        let resp = match answer {
            Ok(r) => r,
            Err(e) => {
                out.error = Some(RegistryError::transport(&ep.url(""), &e).to_string());
                return out;
            }
        };
        out.latency_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        out.reachable = true;
        let status = resp.status();
        out.status = Some(status.as_u16());
        out.api_version = resp
            .headers()
            .get("docker-distribution-api-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let challenges: Vec<String> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        out.auth = Some(describe_challenges(&challenges));
        if !(status.is_success() || status == reqwest::StatusCode::UNAUTHORIZED) {
            out.error = Some(format!(
                "GET {} answered {status}: not a registry API endpoint",
                ep.url("")
            ));
        }
        if let Some(image) = image {
            out.image = Some(self.probe_image(&ep, image).await);
        }
        out
    }

    async fn probe_image(&self, ep: &Endpoint, image: &str) -> ImageCheck {
        let r = match Reference::parse(image) {
            Ok(r) => r,
            Err(e) => {
                return ImageCheck {
                    reference: image.to_string(),
                    repository: String::new(),
                    found: false,
                    digest: None,
                    error: Some(e.to_string()),
                }
            }
        };
        let mut check = ImageCheck {
            reference: r.to_string(),
            repository: r.repository.clone(),
            found: false,
            digest: None,
            error: None,
        };
        let cfg = self.config();
        let req = Request {
            endpoint: ep,
            url: ep.url(&format!(
                "{}/manifests/{}",
                r.repository,
                r.manifest_reference()
            )),
            scope: Some(auth::pull_scope(&r.repository)),
            accept: Some(media_type::MANIFEST_ACCEPT),
            range_from: None,
            what: format!("manifest for {r}"),
            method: reqwest::Method::GET,
            body: None,
        };
        // A probe must not teach the shared client a challenge or token: use a throwaway client
        // with the same configuration and credentials.
        let probe = self.detached();
        match probe.get(&cfg, &req, AuthMode::Store).await {
            Ok(resp) => match read_limited(resp, manifest::MANIFEST_MAX, &req.what).await {
                Ok(bytes) => {
                    let digest = sha256_digest(&bytes);
                    if let Some(want) = &r.digest {
                        if *want != digest {
                            check.error = Some(
                                RegistryError::DigestMismatch {
                                    expected: want.clone(),
                                    actual: digest,
                                }
                                .to_string(),
                            );
                            return check;
                        }
                    }
                    check.found = true;
                    check.digest = Some(digest);
                }
                Err(e) => check.error = Some(e.to_string()),
            },
            Err(e) if e.is_not_found() => {}
            Err(e) => check.error = Some(e.to_string()),
        }
        check
    }
}

/// "none", or each challenge's scheme with its realm/service.
fn describe_challenges(headers: &[String]) -> String {
    let mut parts = Vec::new();
    for h in headers {
        for c in parse_www_authenticate(h) {
            let mut s = c.scheme.clone();
            for name in ["realm", "service"] {
                if let Some(v) = c.param(name) {
                    s.push_str(&format!(" {name}=\"{v}\""));
                }
            }
            parts.push(s);
        }
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_described() {
        assert_eq!(describe_challenges(&[]), "none");
        assert_eq!(
            describe_challenges(&[
                r#"Bearer realm="http://t/token",service="reg",scope="x""#.into()
            ]),
            r#"bearer realm="http://t/token" service="reg""#
        );
        assert_eq!(
            describe_challenges(&[r#"Basic realm="r""#.into()]),
            r#"basic realm="r""#
        );
    }
}
