//! `berth`: Berth's command line. For now it reports on berthd; start/stop/doctor come with the
//! VM issue.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Berth: containers on your workstation"
)]
struct Args {
    /// berthd's socket.
    #[arg(long, env = "BERTH_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Is berthd up, which backend, what state is the core in.
    Status,
}

fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("berth/berthd.sock"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".berth/run/berthd.sock"),
    }
}

/// One GET over the socket; HTTP/1.0 so the body ends with the connection.
fn get(socket: &PathBuf, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach berthd at {} (is it running?)",
            socket.display()
        )
    })?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: berthd\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("malformed answer from berthd")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed status line from berthd")?;
    Ok((status, body.to_string()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = args.socket.unwrap_or_else(default_socket);
    match args.command {
        Command::Status => {
            let (status, body) = get(&socket, "/info")?;
            if status != 200 {
                bail!("berthd answered {status}: {body}");
            }
            let info: serde_json::Value = serde_json::from_str(&body).context("decoding /info")?;
            println!("berthd:  running at {}", socket.display());
            println!("version: {}", info["ServerVersion"].as_str().unwrap_or("?"));
            println!(
                "backend: {}",
                info["Berth"]["Backend"].as_str().unwrap_or("?")
            );
            println!(
                "core:    {}",
                info["Berth"]["VmState"].as_str().unwrap_or("?")
            );
            println!("images:  {}", info["Images"]);
        }
    }
    Ok(())
}
