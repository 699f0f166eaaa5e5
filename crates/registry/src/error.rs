//! Everything a registry operation can fail with.

use crate::reference::ReferenceError;

/// A failed registry operation. Each message names the registry, repository or digest involved;
/// credentials never appear in one.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference does not parse.
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// The registry configuration is unusable (a mirror URL with a path, a bad scheme, ...).
    #[error("invalid registry configuration: {message}")]
    InvalidConfig {
        /// What is wrong.
        message: String,
    },
    /// The manifest or blob does not exist at the registry (on every endpoint tried).
    #[error("{what} not found on {registry}")]
    NotFound {
        /// "manifest for docker.io/library/x:latest", "blob sha256:… of berth/hello".
        what: String,
        /// The registry (or mirror) that answered.
        registry: String,
    },
    /// 401: authentication is required and no credentials were available, or they (or the
    /// token obtained with them) were refused.
    #[error("unauthorized at {registry}: {message}")]
    Unauthorized {
        /// Registry or token server that refused.
        registry: String,
        /// Why.
        message: String,
    },
    /// 403: the registry knows who we are and refuses the access.
    #[error("access denied by {registry}: {message}")]
    Denied {
        /// Registry or token server that refused.
        registry: String,
        /// Why.
        message: String,
    },
    /// The index lists no manifest for the wanted platform.
    #[error("no matching manifest for {wanted} in the manifest list entries (available: {})", available_list(.available))]
    NoMatchingPlatform {
        /// The platform asked for, `linux/amd64`.
        wanted: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// A manifest, index or config that is not what it claims (malformed JSON, wrong schema).
    #[error("invalid {what}: {message}")]
    InvalidManifest {
        /// Which document: "manifest for 127.0.0.1:15000/berth/hello:latest".
        what: String,
        /// The parser's message.
        message: String,
    },
    /// A manifest media type Berth does not pull (schema 1, artifacts, unknown).
    #[error("{what}: unsupported media type {media_type:?}: {reason}")]
    UnsupportedMediaType {
        /// Which document.
        what: String,
        /// The media type found.
        media_type: String,
        /// Why it is refused.
        reason: String,
    },
    /// Content whose sha256 is not the digest it was asked for (or announced with).
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest asked for (from the reference, the index, the manifest or the
        /// registry's Docker-Content-Digest header).
        expected: String,
        /// The sha256 of the bytes received.
        actual: String,
    },
    /// Content whose length is not the size its descriptor declares.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Which content.
        what: String,
        /// Declared size.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// Content larger than allowed (4 MiB for manifests) or than its descriptor declares.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge {
        /// Which content.
        what: String,
        /// The limit it went over.
        limit: u64,
    },
    /// An HTTP status the operation cannot use.
    #[error("HTTP {status} from {url}: {message}")]
    Http {
        /// The status code.
        status: u16,
        /// The URL requested.
        url: String,
        /// The registry's error message, or the status's reason.
        message: String,
    },
    /// No HTTP answer: connection refused or reset, TLS failure, timeout.
    #[error("cannot reach {url}: {message}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The cause chain.
        message: String,
    },
    /// Every endpoint (mirrors, then upstream) failed; each with its own error.
    #[error("all endpoints failed: {}", attempts_list(.attempts))]
    AllEndpointsFailed {
        /// (endpoint base URL, error) in the order tried.
        attempts: Vec<(String, String)>,
    },
}

fn available_list(a: &[String]) -> String {
    if a.is_empty() {
        "none".into()
    } else {
        a.join(", ")
    }
}

fn attempts_list(a: &[(String, String)]) -> String {
    a.iter()
        .map(|(e, err)| format!("{e}: {err}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl RegistryError {
    /// The manifest or blob does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }

    /// Authentication or authorisation failed (401 or 403).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            RegistryError::Unauthorized { .. } | RegistryError::Denied { .. }
        )
    }

    /// Worth retrying on the same endpoint: no answer, a 5xx, or 429.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// A definitive answer from a registry about the content itself (as opposed to the
    /// endpoint being broken): when the upstream gives one, mirrors' failures do not matter.
    pub(crate) fn is_definitive(&self) -> bool {
        matches!(
            self,
            RegistryError::NotFound { .. }
                | RegistryError::Unauthorized { .. }
                | RegistryError::Denied { .. }
                | RegistryError::NoMatchingPlatform { .. }
                | RegistryError::UnsupportedMediaType { .. }
                | RegistryError::InvalidReference(_)
        )
    }

    /// A Transport error for `url` with the whole cause chain of `e` (reqwest's own message
    /// alone is only "error sending request").
    pub(crate) fn transport(url: &str, e: &(dyn std::error::Error + 'static)) -> RegistryError {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let m = s.to_string();
            if !message.contains(&m) {
                message.push_str(": ");
                message.push_str(&m);
            }
            source = s.source();
        }
        RegistryError::Transport {
            url: url.to_string(),
            message,
        }
    }
}
