//! Registry credentials in the OS keyring (the `keyring` crate: the Secret Service on Linux, the
//! Keychain on macOS, Credential Manager on Windows), never in a file, a log or the VM.
//!
//! One entry per registry host under the service [`SERVICE`], the host as its account, the
//! secret a small JSON document ([`Stored`]). The keyring crate cannot enumerate entries, so the
//! hosts that have one are listed in one more entry ([`INDEX_SERVICE`]), which
//! `docker-credential-berth list` reads.
//!
//! Every call blocks (a D-Bus round trip on Linux): async callers run them on a blocking pool.

use serde::{Deserialize, Serialize};

/// The keyring service Berth's registry credentials are stored under.
pub const SERVICE: &str = "berth-registry";
/// The keyring service of the entry that lists the hosts with credentials.
pub const INDEX_SERVICE: &str = "berth-registry-index";
const INDEX_ACCOUNT: &str = "hosts";

/// The user name docker's credential helpers use for an identity token.
pub const TOKEN_USERNAME: &str = "<token>";

/// What one keyring entry holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub username: String,
    /// Empty when only an identity token was handed to us (a `store` of `<token>` for a host we
    /// hold nothing for).
    pub password: String,
    /// The identity token berthd handed the docker CLI at login.
    pub token: String,
}

impl Stored {
    /// Whether this entry can log in to the registry (it has a password, not only a token).
    pub fn has_password(&self) -> bool {
        !self.password.is_empty() && self.username != TOKEN_USERNAME
    }
}

/// Why the keyring could not be used; the message says for which host and what failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The registry host a Docker `serveraddress` / credential-helper `ServerURL` names:
/// Docker Hub's many spellings become `docker.io`; a scheme and a path are dropped.
pub fn registry_host(server_address: &str) -> String {
    let s = server_address.trim();
    if s.is_empty()
        || s.contains("index.docker.io")
        || s == "docker.io"
        || s.contains("registry-1.docker.io")
    {
        return "docker.io".into();
    }
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    s.split('/').next().unwrap_or(s).to_string()
}

/// The `ServerURL` the docker CLI uses for a host: Docker Hub's is its v1 index URL.
pub fn server_url(host: &str) -> String {
    if host == "docker.io" {
        "https://index.docker.io/v1/".into()
    } else {
        host.to_string()
    }
}

fn entry(service: &str, account: &str) -> Result<keyring::Entry, Error> {
    keyring::Entry::new(service, account).map_err(|e| Error(format!("the OS keyring: {e}")))
}

/// A fresh identity token (a random handle; it grants nothing by itself).
pub fn new_token() -> String {
    format!("berth-{:032x}", rand::random::<u128>())
}

/// Stores `stored` for a registry host, replacing what was there.
pub fn store(host: &str, stored: &Stored) -> Result<(), Error> {
    let secret = serde_json::to_string(stored).expect("serialises");
    entry(SERVICE, host)?.set_password(&secret).map_err(|e| {
        Error(format!(
            "storing the credentials for {host} in the OS keyring: {e}"
        ))
    })?;
    let mut hosts = hosts()?;
    if !hosts.iter().any(|h| h == host) {
        hosts.push(host.to_string());
        hosts.sort();
        write_index(&hosts)?;
    }
    Ok(())
}

/// The stored credentials for a registry host, if any.
pub fn get(host: &str) -> Result<Option<Stored>, Error> {
    match entry(SERVICE, host)?.get_password() {
        Ok(secret) => serde_json::from_str(&secret).map(Some).map_err(|e| {
            Error(format!(
                "the keyring entry for {host} is not Berth's (service {SERVICE}): {e}"
            ))
        }),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(Error(format!("reading the OS keyring for {host}: {e}"))),
    }
}

/// Removes a registry host's credentials; `false` when there were none.
pub fn erase(host: &str) -> Result<bool, Error> {
    let existed = match entry(SERVICE, host)?.delete_credential() {
        Ok(()) => true,
        Err(keyring::Error::NoEntry) => false,
        Err(e) => {
            return Err(Error(format!(
                "removing the credentials for {host} from the OS keyring: {e}"
            )))
        }
    };
    let mut hosts = hosts()?;
    let before = hosts.len();
    hosts.retain(|h| h != host);
    if hosts.len() != before {
        write_index(&hosts)?;
    }
    Ok(existed)
}

/// The hosts that have credentials, sorted.
pub fn hosts() -> Result<Vec<String>, Error> {
    match entry(INDEX_SERVICE, INDEX_ACCOUNT)?.get_password() {
        Ok(list) => serde_json::from_str(&list)
            .map_err(|e| Error(format!("the keyring's list of Berth's registries: {e}"))),
        Err(keyring::Error::NoEntry) => Ok(Vec::new()),
        Err(e) => Err(Error(format!(
            "reading the list of Berth's registries from the OS keyring: {e}"
        ))),
    }
}

fn write_index(hosts: &[String]) -> Result<(), Error> {
    let e = entry(INDEX_SERVICE, INDEX_ACCOUNT)?;
    let r = if hosts.is_empty() {
        match e.delete_credential() {
            Err(keyring::Error::NoEntry) => Ok(()),
            r => r,
        }
    } else {
        e.set_password(&serde_json::to_string(hosts).expect("serialises"))
    };
    r.map_err(|e| {
        Error(format!(
            "writing the list of Berth's registries to the OS keyring: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_from_server_addresses() {
        assert_eq!(registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_host(""), "docker.io");
        assert_eq!(registry_host("127.0.0.1:15001"), "127.0.0.1:15001");
        assert_eq!(
            registry_host("http://127.0.0.1:15001/v2/"),
            "127.0.0.1:15001"
        );
        assert_eq!(server_url("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(server_url("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn only_a_password_logs_in() {
        let mut s = Stored {
            username: "u".into(),
            password: "p".into(),
            token: new_token(),
        };
        assert!(s.has_password());
        s.password.clear();
        assert!(!s.has_password());
        let t = Stored {
            username: TOKEN_USERNAME.into(),
            password: "x".into(),
            token: "x".into(),
        };
        assert!(!t.has_password());
        assert_ne!(new_token(), new_token());
    }
}
