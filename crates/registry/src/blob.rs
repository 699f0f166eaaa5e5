//! Streaming a blob: endpoint fallback before the first byte, a size bound on the way, and
//! resuming with a Range request when the connection drops mid-body.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::CONTENT_RANGE;
use reqwest::StatusCode;

use crate::auth;
use crate::client::{combine_failures, AuthMode, Candidate, Client, Request, SkippedEndpoint};
use crate::endpoint::{Endpoint, RegistryConfig};
use crate::error::RegistryError;
use crate::manifest::Descriptor;
use crate::reference::Reference;

/// Resumes of one blob in all, whatever the progress between them.
const MAX_RESUMES: u32 = 64;

/// The body of a blob, as it arrives. Not verified against its digest (the core does that
/// while it writes), but never longer than the descriptor's size.
pub struct BlobStream {
    /// Who serves it.
    pub endpoint: Endpoint,
    /// Endpoints tried and skipped before it, with the reason.
    pub skipped: Vec<SkippedEndpoint>,
    /// The bytes.
    pub stream: Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("endpoint", &self.endpoint)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Where a blob stream is.
struct Download {
    client: Client,
    cfg: Arc<RegistryConfig>,
    endpoint: Endpoint,
    repository: String,
    desc: Descriptor,
    what: String,
    body: Body,
    url: String,
    received: u64,
    /// Resume attempts since the last byte arrived.
    failures: u32,
    resumes: u32,
    done: bool,
}

impl Client {
    /// GETs a blob as a stream. Endpoints: the registry's mirrors in order, then the registry;
    /// one that fails before the body starts is skipped (and listed in `skipped`). The stream
    /// fails if more than `desc.size` bytes arrive, and resumes with a Range request when the
    /// connection drops (if the server answers it with 206), up to the retry policy.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<BlobStream, RegistryError> {
        self.fetch_blob_excluding(r, desc, &[]).await
    }

    /// [`Client::fetch_blob`] from the endpoints other than `exclude` (those whose content
    /// already failed verification for this blob, say).
    pub async fn fetch_blob_excluding(
        &self,
        r: &Reference,
        desc: &Descriptor,
        exclude: &[Endpoint],
    ) -> Result<BlobStream, RegistryError> {
        let cfg = self.config();
        let what = format!("blob {} of {}", desc.digest, r.name());
        let mut skipped = Vec::new();
        let mut attempts = Vec::new();
        let endpoints: Vec<Candidate> = self
            .endpoints(&cfg, &r.registry)
            .await
            .into_iter()
            .filter(|c| !exclude.iter().any(|x| x.base == c.endpoint.base))
            .collect();
        if endpoints.is_empty() && !exclude.is_empty() {
            return Err(RegistryError::InvalidConfig {
                message: format!(
                    "no endpoint left for {what}: {} served content that failed verification",
                    exclude
                        .iter()
                        .map(|e| e.base.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
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
                None => {
                    self.open_blob(&cfg, &ep, &r.repository, desc, &what, 0)
                        .await
                }
                Some(why) => Err(RegistryError::InvalidConfig { message: why }),
            };
            match result {
                Ok((url, body)) => {
                    let download = Download {
                        client: self.clone(),
                        cfg: cfg.clone(),
                        endpoint: ep.clone(),
                        repository: r.repository.clone(),
                        desc: desc.clone(),
                        what,
                        body,
                        url,
                        received: 0,
                        failures: 0,
                        resumes: 0,
                        done: false,
                    };
                    return Ok(BlobStream {
                        endpoint: ep,
                        skipped,
                        stream: Box::pin(stream(download)),
                    });
                }
                Err(e) => {
                    if i + 1 < count {
                        tracing::warn!(endpoint = %ep.base, error = %e, "skipping endpoint for {what}");
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

    /// GET of the blob from `from` on: 200 for the whole blob, 206 for a resume.
    async fn open_blob(
        &self,
        cfg: &RegistryConfig,
        ep: &Endpoint,
        repository: &str,
        desc: &Descriptor,
        what: &str,
        from: u64,
    ) -> Result<(String, Body), RegistryError> {
        let req = Request {
            endpoint: ep,
            url: ep.url(&format!("{repository}/blobs/{}", desc.digest)),
            scope: Some(auth::pull_scope(repository)),
            accept: None,
            range_from: (from > 0).then_some(from),
            what: what.to_string(),
            method: reqwest::Method::GET,
            body: None,
        };
        let resp = self.get(cfg, &req, AuthMode::Store).await?;
        let url = req.url.clone();
        match (from, resp.status()) {
            (0, _) => {
                if resp.content_length().is_some_and(|n| n > desc.size) {
                    return Err(RegistryError::TooLarge {
                        what: what.to_string(),
                        limit: desc.size,
                    });
                }
            }
            (_, StatusCode::PARTIAL_CONTENT) => {
                // "bytes START-END/TOTAL": the part must start where we are.
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if start.is_some_and(|s| s != from) {
                    return Err(RegistryError::Transport {
                        url,
                        message: format!(
                            "resume of {what} at byte {from} answered with a range starting at {}",
                            start.unwrap_or(0)
                        ),
                    });
                }
            }
            (_, status) => {
                return Err(RegistryError::Http {
                    status: status.as_u16(),
                    url,
                    message: format!("the server does not resume downloads (answered {status} to a Range request at byte {from})"),
                });
            }
        }
        Ok((url, Box::pin(resp.bytes_stream())))
    }
}

fn stream(download: Download) -> impl Stream<Item = Result<Bytes, RegistryError>> + Send {
    futures_util::stream::unfold(download, |mut d| async move {
        if d.done {
            return None;
        }
        let item = d.next().await?;
        d.done = item.is_err();
        Some((item, d))
    })
}

impl Download {
    /// The next chunk, None at the end, or the error that ends the stream.
    async fn next(&mut self) -> Option<Result<Bytes, RegistryError>> {
        loop {
            let cause = match self.body.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    self.failures = 0;
                    if self.received > self.desc.size {
                        return Some(Err(RegistryError::TooLarge {
                            what: self.what.clone(),
                            limit: self.desc.size,
                        }));
                    }
                    return Some(Ok(chunk));
                }
                None if self.received == self.desc.size => return None,
                None => RegistryError::SizeMismatch {
                    what: self.what.clone(),
                    expected: self.desc.size,
                    actual: self.received,
                },
                Some(Err(e)) => RegistryError::transport(&self.url, &e),
            };
            if let Err(e) = self.resume(cause).await {
                return Some(Err(e));
            }
        }
    }

    /// Replaces the body with the rest of the blob, or says why it cannot.
    async fn resume(&mut self, cause: RegistryError) -> Result<(), RegistryError> {
        let mut cause = cause;
        loop {
            self.failures += 1;
            self.resumes += 1;
            if self.failures >= self.cfg.retry.attempts() || self.resumes > MAX_RESUMES {
                return Err(cause);
            }
            tracing::info!(what = %self.what, received = self.received, error = %cause, "connection lost, resuming");
            tokio::time::sleep(self.cfg.retry.backoff(self.failures - 1)).await;
            let opened = self
                .client
                .open_blob(
                    &self.cfg,
                    &self.endpoint,
                    &self.repository,
                    &self.desc,
                    &self.what,
                    self.received,
                )
                .await;
            match opened {
                Ok((url, body)) => {
                    self.url = url;
                    self.body = body;
                    return Ok(());
                }
                Err(e) if e.is_transient() => cause = e,
                Err(RegistryError::Http {
                    status,
                    url,
                    message,
                }) if status != 416 => {
                    return Err(RegistryError::Transport {
                        url,
                        message: format!("{cause}; cannot resume: {message}"),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }
}
