//! `docker-credential-berth`: Docker's credential-helper protocol over Berth's keyring entries,
//! so `"credsStore": "berth"` in `~/.docker/config.json` keeps every registry password in the
//! OS keyring, in the same entries berthd reads for pulls (and `docker logout` erases them).
//!
//! The protocol: the action is the only argument; `store` reads `{"ServerURL", "Username",
//! "Secret"}` on stdin, `get` and `erase` read a server URL, `list` prints `{ServerURL:
//! Username}`. Failures print one line on stdout and exit 1; a missing entry is the exact
//! "credentials not found in native keychain" the docker CLI recognises.

use std::io::{Read, Write};
use std::process::ExitCode;

use berth_host::credentials::{self, registry_host, Stored, TOKEN_USERNAME};
use serde::{Deserialize, Serialize};

const NOT_FOUND: &str = "credentials not found in native keychain";

#[derive(Deserialize, Serialize)]
struct Creds {
    #[serde(rename = "ServerURL")]
    server_url: String,
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

fn main() -> ExitCode {
    let action = std::env::args().nth(1).unwrap_or_default();
    let mut input = String::new();
    if matches!(action.as_str(), "store" | "get" | "erase") {
        if let Err(e) = std::io::stdin().read_to_string(&mut input) {
            return fail(&format!("reading standard input: {e}"));
        }
    }
    let result = match action.as_str() {
        "store" => store(&input).map(|()| String::new()),
        "get" => get(input.trim()),
        "erase" => erase(input.trim()).map(|()| String::new()),
        "list" => list(),
        "version" => Ok(format!(
            "docker-credential-berth {}\n",
            env!("CARGO_PKG_VERSION")
        )),
        _ => Err(format!(
            "usage: docker-credential-berth store|get|erase|list|version (got {action:?})"
        )),
    };
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout();
            if stdout.write_all(out.as_bytes()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    println!("{message}");
    ExitCode::FAILURE
}

fn store(input: &str) -> Result<(), String> {
    let c: Creds = serde_json::from_str(input)
        .map_err(|e| format!("store: expected {{\"ServerURL\",\"Username\",\"Secret\"}}: {e}"))?;
    if c.server_url.trim().is_empty() {
        return Err("store: no ServerURL".into());
    }
    let host = registry_host(&c.server_url);
    let existing = credentials::get(&host).map_err(|e| e.to_string())?;
    let stored = if c.username == TOKEN_USERNAME {
        // After `docker login` against berthd the CLI hands back the identity token berthd
        // gave it; the entry berthd wrote (with the password) stays as it is.
        if existing.as_ref().is_some_and(|s| s.token == c.secret) {
            return Ok(());
        }
        Stored {
            username: TOKEN_USERNAME.into(),
            password: String::new(),
            token: c.secret,
        }
    } else {
        let token = match existing {
            Some(s) if s.username == c.username && s.password == c.secret => s.token,
            _ => credentials::new_token(),
        };
        Stored {
            username: c.username,
            password: c.secret,
            token,
        }
    };
    credentials::store(&host, &stored).map_err(|e| e.to_string())
}

fn get(server_url: &str) -> Result<String, String> {
    let host = registry_host(server_url);
    let stored = credentials::get(&host)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| NOT_FOUND.to_string())?;
    let (username, secret) = if stored.has_password() {
        (stored.username, stored.password)
    } else {
        (TOKEN_USERNAME.to_string(), stored.token)
    };
    let c = Creds {
        server_url: server_url.to_string(),
        username,
        secret,
    };
    Ok(serde_json::to_string(&c).expect("serialises") + "\n")
}

fn erase(server_url: &str) -> Result<(), String> {
    let host = registry_host(server_url);
    match credentials::erase(&host).map_err(|e| e.to_string())? {
        true => Ok(()),
        false => Err(NOT_FOUND.into()),
    }
}

fn list() -> Result<String, String> {
    let mut out = serde_json::Map::new();
    for host in credentials::hosts().map_err(|e| e.to_string())? {
        // An entry that vanished since the index was written is left out.
        if let Some(s) = credentials::get(&host).map_err(|e| e.to_string())? {
            out.insert(credentials::server_url(&host), s.username.into());
        }
    }
    Ok(serde_json::Value::Object(out).to_string() + "\n")
}
