//! Pushing to a registry: blobs the registry already has are skipped (HEAD), blobs another
//! repository of the same registry has are mounted, the rest are uploaded in one PUT or in
//! chunks (PATCH with Content-Range, then PUT), and the manifest goes last, byte for byte, so
//! its digest is the one the image was pulled with.
//!
//! A push always goes to the registry itself: mirrors serve pulls only, and never see the
//! credentials of a push.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use tokio::sync::Mutex;

use crate::client::{check_status, error_message, sha256_digest, AuthMode, Client, Request};
use crate::endpoint::{Endpoint, RegistryConfig};
use crate::error::RegistryError;
use crate::reference::Reference;

/// The registry's advice on the smallest chunk it takes (OCI distribution spec 1.1).
const OCI_CHUNK_MIN_LENGTH: &str = "oci-chunk-min-length";
/// Docker's header naming the digest of what was stored.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// How a 401 in the middle of an upload (a token that expired) is told apart.
const REFUSED_PART_WAY: &str = "was refused part-way";

impl RegistryError {
    /// A failed upload that may succeed if started again: no answer, a 5xx or 429, or a token
    /// that expired part-way (it has been dropped, the next attempt gets a new one).
    pub fn upload_may_succeed_again(&self) -> bool {
        match self {
            RegistryError::Unauthorized { message, .. } => message.contains(REFUSED_PART_WAY),
            e => e.is_transient(),
        }
    }
}

/// The token scope for pushing to a repository (a push reads it too: HEAD, mounts).
pub fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// How blob uploads are cut: blobs up to `chunk_threshold` bytes go in one PUT, larger ones in
/// PATCHes of `chunk_size` bytes (more if the registry asks for a larger minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadPolicy {
    /// Largest blob uploaded in one request.
    pub chunk_threshold: u64,
    /// Bytes per PATCH of a chunked upload.
    pub chunk_size: u64,
}

impl Default for UploadPolicy {
    fn default() -> Self {
        UploadPolicy {
            chunk_threshold: 128 << 20,
            chunk_size: 64 << 20,
        }
    }
}

/// An upload the registry has opened (the answer to a POST): where to send the bytes.
#[derive(Debug, Clone)]
pub struct UploadSession {
    location: url::Url,
    /// The registry's `OCI-Chunk-Min-Length`, if it sent one.
    min_chunk: Option<u64>,
}

/// What a cross-repository mount did.
#[derive(Debug)]
pub enum Mount {
    /// The blob is now in the repository.
    Mounted,
    /// The registry did not mount (the source lacks the blob, or may not be read) and opened
    /// an upload instead.
    Declined(UploadSession),
}

/// Bytes of a blob to upload, from wherever the caller reads them.
pub type UploadBody =
    Pin<Box<dyn Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Send>>;

/// The body being uploaded, shared by the requests of a chunked upload.
struct Source {
    body: UploadBody,
    /// Bytes read from `body` but not yet sent (a chunk ended inside them).
    pending: Option<Bytes>,
    /// Bytes handed out so far.
    taken: u64,
    size: u64,
    digest: String,
}

impl Source {
    /// The next piece, at most `max` bytes; an error if the body ends before `size` or goes
    /// past it.
    async fn next(&mut self, max: u64) -> Option<Result<Bytes, std::io::Error>> {
        if max == 0 {
            return None;
        }
        let mut chunk = match self.pending.take() {
            Some(b) => b,
            None => match self.body.next().await {
                Some(Ok(b)) => b,
                Some(Err(e)) => return Some(Err(std::io::Error::other(e))),
                None if self.taken == self.size => return None,
                None => {
                    return Some(Err(std::io::Error::other(format!(
                        "blob {} ended after {} of its {} bytes",
                        self.digest, self.taken, self.size
                    ))))
                }
            },
        };
        if self.taken + chunk.len() as u64 > self.size {
            return Some(Err(std::io::Error::other(format!(
                "blob {} is longer than its {} bytes",
                self.digest, self.size
            ))));
        }
        if chunk.len() as u64 > max {
            self.pending = Some(chunk.split_off(max as usize));
        }
        self.taken += chunk.len() as u64;
        Some(Ok(chunk))
    }
}

/// A request body of exactly `len` bytes taken from the shared source.
fn part(source: Arc<Mutex<Source>>, len: u64) -> reqwest::Body {
    let stream = futures_util::stream::unfold((source, len), |(source, left)| async move {
        if left == 0 {
            return None;
        }
        let item = source.lock().await.next(left).await?;
        let left = match &item {
            Ok(b) => left - b.len() as u64,
            Err(_) => 0,
        };
        Some((item, (source, left)))
    });
    reqwest::Body::wrap_stream(stream)
}

impl Client {
    /// Whether the repository `r` has the blob (HEAD). Asked with the push scope, so that one
    /// token serves the whole push.
    pub async fn blob_exists(&self, r: &Reference, digest: &str) -> Result<bool, RegistryError> {
        let cfg = self.config();
        let ep = self.upstream(&cfg, &r.registry).await;
        let req = Request {
            url: ep.url(&format!("{}/blobs/{digest}", r.repository)),
            endpoint: &ep,
            scope: Some(push_scope(&r.repository)),
            accept: None,
            range_from: None,
            what: format!("blob {digest} of {}", r.name()),
            method: Method::HEAD,
            body: None,
        };
        match self.get(&cfg, &req, AuthMode::Store).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens an upload into `r` (POST), or mounts `digest` from the repository `from` of the
    /// same registry when given (the registry may decline and open an upload instead).
    pub async fn start_upload(
        &self,
        r: &Reference,
        mount: Option<(&str, &str)>,
    ) -> Result<Mount, RegistryError> {
        let cfg = self.config();
        let ep = self.upstream(&cfg, &r.registry).await;
        let mut url = parse_url(&ep.url(&format!("{}/blobs/uploads/", r.repository)))?;
        let mut scope = push_scope(&r.repository);
        if let Some((digest, from)) = mount {
            url.query_pairs_mut()
                .append_pair("mount", digest)
                .append_pair("from", from);
            scope.push_str(&format!(" repository:{from}:pull"));
        }
        let req = Request {
            url: url.to_string(),
            endpoint: &ep,
            scope: Some(scope),
            accept: None,
            range_from: None,
            what: format!("upload to {}", r.name()),
            method: Method::POST,
            body: None,
        };
        let resp = self.get(&cfg, &req, AuthMode::Store).await?;
        match resp.status() {
            StatusCode::CREATED if mount.is_some() => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Declined(session_from(&resp, &url)?)),
            status => Err(RegistryError::Http {
                status: status.as_u16(),
                url: req.url.clone(),
                message: format!(
                    "the registry answered {status} to an upload request (201 for a mount or 202 expected)"
                ),
            }),
        }
    }

    /// Uploads a blob of `size` bytes with digest `digest` into `r`: in one PUT up to the
    /// policy's threshold, else in chunks. `session` is an upload already opened (a declined
    /// mount); otherwise one is opened. The body is streamed, never held whole.
    pub async fn push_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        body: UploadBody,
        policy: UploadPolicy,
        session: Option<UploadSession>,
    ) -> Result<(), RegistryError> {
        let session = match session {
            Some(s) => s,
            None => match self.start_upload(r, None).await? {
                Mount::Declined(s) => s,
                Mount::Mounted => unreachable!("no mount was asked for"),
            },
        };
        let cfg = self.config();
        let ep = self.upstream(&cfg, &r.registry).await;
        let scope = push_scope(&r.repository);
        let source = Arc::new(Mutex::new(Source {
            body,
            pending: None,
            taken: 0,
            size,
            digest: digest.to_string(),
        }));
        let what = format!("blob {digest} of {}", r.name());
        let mut location = session.location;
        if size > policy.chunk_threshold {
            let chunk = policy.chunk_size.max(session.min_chunk.unwrap_or(0)).max(1);
            let mut offset = 0u64;
            while offset < size {
                let n = chunk.min(size - offset);
                let last = offset + n - 1;
                let resp = self
                    .send_stream(
                        &cfg,
                        &ep,
                        &scope,
                        Method::PATCH,
                        location.clone(),
                        n,
                        part(source.clone(), n),
                        Some(format!("{offset}-{last}")),
                        &what,
                    )
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(RegistryError::Http {
                        status: resp.status().as_u16(),
                        url: location.to_string(),
                        message: format!(
                            "the registry answered {} to a chunk of {what} (202 expected)",
                            resp.status()
                        ),
                    });
                }
                // The registry says how much it holds: "0-<last byte>".
                let acked = resp
                    .headers()
                    .get(reqwest::header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().trim_start_matches("bytes=").split_once('-'))
                    .and_then(|(_, end)| end.trim().parse::<u64>().ok());
                if let Some(end) = acked {
                    if end != last {
                        return Err(RegistryError::Http {
                            status: 202,
                            url: location.to_string(),
                            message: format!(
                                "the registry holds bytes 0-{end} of {what} after a chunk ending at byte {last}"
                            ),
                        });
                    }
                }
                location = session_from(&resp, &location)?.location;
                offset += n;
            }
            location.query_pairs_mut().append_pair("digest", digest);
            let resp = self
                .send_stream(
                    &cfg,
                    &ep,
                    &scope,
                    Method::PUT,
                    location,
                    0,
                    reqwest::Body::from(Bytes::new()),
                    None,
                    &what,
                )
                .await?;
            return check_stored(&resp, digest, &what);
        }
        location.query_pairs_mut().append_pair("digest", digest);
        let resp = self
            .send_stream(
                &cfg,
                &ep,
                &scope,
                Method::PUT,
                location,
                size,
                part(source, size),
                None,
                &what,
            )
            .await?;
        check_stored(&resp, digest, &what)
    }

    /// PUTs a manifest under `reference` (a tag or its digest) with its media type, exactly as
    /// given; returns its digest, checked against what the registry says it stored.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<String, RegistryError> {
        let cfg = self.config();
        let ep = self.upstream(&cfg, &r.registry).await;
        let digest = sha256_digest(&bytes);
        let req = Request {
            url: ep.url(&format!("{}/manifests/{reference}", r.repository)),
            endpoint: &ep,
            scope: Some(push_scope(&r.repository)),
            accept: None,
            range_from: None,
            what: format!("manifest {reference} of {}", r.name()),
            method: Method::PUT,
            body: Some((bytes, media_type.to_string())),
        };
        let resp = self.get(&cfg, &req, AuthMode::Store).await?;
        check_stored(&resp, &digest, &req.what)?;
        Ok(digest)
    }

    /// One request whose body cannot be sent twice, with the authorisation an earlier request
    /// of the same scope obtained. A 401 here (a token that expired part-way) drops the token,
    /// so that the caller's next attempt gets a fresh one.
    #[allow(clippy::too_many_arguments)]
    async fn send_stream(
        &self,
        cfg: &RegistryConfig,
        ep: &Endpoint,
        scope: &str,
        method: Method,
        url: url::Url,
        len: u64,
        body: reqwest::Body,
        content_range: Option<String>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut rb = self
            .http_for(&url, self.tls_relaxed(cfg, &url))
            .request(method.clone(), url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .body(body);
        if let Some(range) = content_range {
            rb = rb.header(reqwest::header::CONTENT_RANGE, range);
        }
        if let Some(a) = self.authorization(cfg, ep, scope).await? {
            let mut v = HeaderValue::from_str(&a).map_err(|_| RegistryError::Unauthorized {
                registry: ep.host.clone(),
                message: "credentials or token contain characters not allowed in a header".into(),
            })?;
            v.set_sensitive(true);
            rb = rb.header(AUTHORIZATION, v);
        }
        let shown = {
            let mut u = url.clone();
            u.set_query(None);
            u.to_string()
        };
        let resp = rb
            .send()
            .await
            .map_err(|e| RegistryError::transport(&shown, &e))?;
        tracing::debug!(url = %shown, %method, status = resp.status().as_u16(), "upload request");
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::UNAUTHORIZED => {
                self.drop_token(ep, scope);
                let detail = error_message(resp).await;
                Err(RegistryError::Unauthorized {
                    registry: ep.host.clone(),
                    message: format!("the upload of {what} {REFUSED_PART_WAY}: {detail}"),
                })
            }
            StatusCode::NOT_FOUND => {
                let detail = error_message(resp).await;
                Err(RegistryError::Http {
                    status: 404,
                    url: shown,
                    message: format!("the upload of {what} is gone: {detail}"),
                })
            }
            _ => {
                let req = Request {
                    endpoint: ep,
                    url: shown.clone(),
                    scope: None,
                    accept: None,
                    range_from: None,
                    what: what.to_string(),
                    method,
                    body: None,
                };
                check_status(resp, &req).await
            }
        }
    }
}

fn parse_url(s: &str) -> Result<url::Url, RegistryError> {
    url::Url::parse(s).map_err(|e| RegistryError::InvalidConfig {
        message: format!("bad URL {s}: {e}"),
    })
}

/// The upload named by a response's Location (relative to the request's URL, or absolute).
fn session_from(resp: &reqwest::Response, base: &url::Url) -> Result<UploadSession, RegistryError> {
    let location = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::Http {
            status: resp.status().as_u16(),
            url: base.to_string(),
            message: "the registry opened an upload without saying where (no Location header)"
                .into(),
        })?;
    let location = base.join(location).map_err(|e| RegistryError::Http {
        status: resp.status().as_u16(),
        url: base.to_string(),
        message: format!("the registry's upload Location {location:?} is not a URL: {e}"),
    })?;
    if !matches!(location.scheme(), "http" | "https") {
        return Err(RegistryError::Http {
            status: resp.status().as_u16(),
            url: base.to_string(),
            message: format!("the registry's upload Location {location} is not http(s)"),
        });
    }
    let min_chunk = resp
        .headers()
        .get(OCI_CHUNK_MIN_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    Ok(UploadSession {
        location,
        min_chunk,
    })
}

/// A 201 for stored content: the digest the registry announces must be the one sent.
fn check_stored(resp: &reqwest::Response, digest: &str, what: &str) -> Result<(), RegistryError> {
    if resp.status() != StatusCode::CREATED {
        return Err(RegistryError::Http {
            status: resp.status().as_u16(),
            url: resp.url().to_string(),
            message: format!(
                "the registry answered {} when storing {what} (201 expected)",
                resp.status()
            ),
        });
    }
    match resp
        .headers()
        .get(DOCKER_CONTENT_DIGEST)
        .and_then(|v| v.to_str().ok())
    {
        Some(stored) if stored.trim() != digest => Err(RegistryError::DigestMismatch {
            expected: digest.to_string(),
            actual: format!("{} (what the registry says it stored)", stored.trim()),
        }),
        _ => Ok(()),
    }
}
