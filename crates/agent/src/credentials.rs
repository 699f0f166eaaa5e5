//! Registry credentials in the OS keyring (the `keyring` crate: Secret Service on Linux, the
//! Keychain on macOS, Credential Manager on Windows), never in a file, a log or the VM.
//!
//! `docker login` against berthd (`POST /auth`) checks the credentials with the registry, then
//! stores them here under the service [`SERVICE`] and the registry host as the account, and
//! answers with an identity token: a random handle the docker CLI keeps in its config.json
//! *instead of* the password. A pull whose `X-Registry-Auth` carries no password (only that
//! token, or nothing) uses the keyring's credentials for the image's registry.
//!
//! Keyring calls block (D-Bus round trips on Linux), so they run on tokio's blocking pool.

use berth_host::credentials::{self as keyring_store, Stored};
use berth_registry::Credentials;

pub use keyring_store::SERVICE;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, keyring_store::Error> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("keyring task: {e}"))?
        .map_err(|e| e.to_string())
}

/// Stores credentials for a registry host; returns the identity token for the docker CLI.
pub async fn store(host: &str, creds: &Credentials) -> Result<String, String> {
    let host = host.to_string();
    let stored = Stored {
        username: creds.username.clone(),
        password: creds.password.clone(),
        token: keyring_store::new_token(),
    };
    blocking(move || keyring_store::store(&host, &stored).map(|()| stored.token)).await
}

/// The stored credentials for a registry host, if any (an entry holding only an identity
/// token, no password, counts as none).
pub async fn get(host: &str) -> Result<Option<Credentials>, String> {
    let host = host.to_string();
    let found = blocking(move || keyring_store::get(&host)).await?;
    Ok(found.filter(Stored::has_password).map(|s| Credentials {
        username: s.username,
        password: s.password,
    }))
}

/// The credentials of one pull: those the CLI sent when they carry a password, else the
/// keyring's for the registry (a keyring that cannot be read means anonymous, with a warning).
pub async fn for_pull(registry_host: &str, header: Option<&str>) -> Option<Credentials> {
    let sent = header.and_then(crate::docker::decode_registry_auth);
    if let Some(c) = sent.filter(|c| !c.password.is_empty()) {
        return Some(c);
    }
    match get(registry_host).await {
        Ok(found) => found,
        Err(e) => {
            // Once at warn level (a machine without a Secret Service would say it on every
            // anonymous pull), then at debug.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!("pulling from {registry_host} without stored credentials: {e}");
            } else {
                tracing::warn!("pulling from {registry_host} without stored credentials: {e}");
            }
            None
        }
    }
}
