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

use berth_registry::Credentials;
use serde::{Deserialize, Serialize};

/// The keyring service Berth's registry credentials are stored under.
pub const SERVICE: &str = "berth-registry";

/// What one keyring entry holds (its secret, as JSON).
#[derive(Serialize, Deserialize)]
struct Stored {
    username: String,
    password: String,
    /// The identity token handed to the docker CLI at login.
    token: String,
}

fn entry(host: &str) -> Result<keyring::Entry, String> {
    keyring::Entry::new(SERVICE, host).map_err(|e| format!("the OS keyring: {e}"))
}

/// Stores credentials for a registry host; returns the identity token for the docker CLI.
pub async fn store(host: &str, creds: &Credentials) -> Result<String, String> {
    let host = host.to_string();
    let stored = Stored {
        username: creds.username.clone(),
        password: creds.password.clone(),
        token: format!("berth-{:032x}", rand::random::<u128>()),
    };
    tokio::task::spawn_blocking(move || {
        let secret = serde_json::to_string(&stored).expect("serialises");
        entry(&host)?
            .set_password(&secret)
            .map_err(|e| format!("storing the credentials for {host} in the OS keyring: {e}"))?;
        Ok(stored.token)
    })
    .await
    .map_err(|e| format!("keyring task: {e}"))?
}

/// The stored credentials for a registry host, if any.
pub async fn get(host: &str) -> Result<Option<Credentials>, String> {
    let host = host.to_string();
    tokio::task::spawn_blocking(move || match entry(&host)?.get_password() {
        Ok(secret) => {
            let s: Stored = serde_json::from_str(&secret).map_err(|e| {
                format!("the keyring entry for {host} is not Berth's (service {SERVICE}): {e}")
            })?;
            Ok(Some(Credentials {
                username: s.username,
                password: s.password,
            }))
        }
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(format!("reading the OS keyring for {host}: {e}")),
    })
    .await
    .map_err(|e| format!("keyring task: {e}"))?
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
