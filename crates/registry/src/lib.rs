//! berth-registry: the host-side OCI distribution client of Berth.
//!
//! It turns what a user typed (`busybox`, `127.0.0.1:15000/berth/hello@sha256:…`) into a
//! [`Reference`], resolves it for a [`Platform`] to a verified manifest and config
//! ([`Client::resolve`]), and streams layers ([`Client::fetch_blob`]) without ever holding a
//! whole blob in memory. Mirrors come first, the registry last, and every endpoint skipped on
//! the way is reported so the fallback is visible. See `docs/registry-client.md`.

mod auth;
mod blob;
mod client;
mod endpoint;
mod error;
pub mod manifest;
mod probe;
mod push;
pub mod reference;

#[cfg(test)]
mod fake_registry;
#[cfg(test)]
mod tests;

pub use auth::{
    choose_challenge, parse_www_authenticate, Challenge, CredentialStore, Credentials,
    RawChallenge, StaticCredentials,
};
pub use blob::BlobStream;
pub use client::{Client, Fetched, Resolved, SkippedEndpoint};
pub use endpoint::{Endpoint, RegistryConfig, RetryPolicy, ANY_REGISTRY, DOCKER_HUB_UPSTREAM};
pub use error::RegistryError;
pub use manifest::{media_type, Descriptor, ImageIndex, ImageManifest, Platform};
pub use probe::{ImageCheck, MirrorProbe, TlsUse};
pub use push::{push_scope, Mount, UploadBody, UploadPolicy, UploadSession};
pub use reference::{Reference, ReferenceError};
