//! `berth login`: the credentials go to berthd (`POST /auth`, as `docker login` sends them),
//! which checks them with the registry and keeps them in the OS keyring.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context};
use nix::sys::termios::{self, LocalFlags, SetArg};

/// The password: all of standard input (`--password-stdin`, without its final newline), else
/// asked for on the terminal with echo off.
pub fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if from_stdin {
        let mut all = String::new();
        std::io::Read::read_to_string(&mut stdin.lock(), &mut all)
            .context("reading the password from standard input")?;
        let p = all.trim_end_matches(['\n', '\r']).to_string();
        if p.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(p);
    }
    if !stdin.is_terminal() {
        bail!("no terminal to ask for the password: use --password-stdin");
    }
    eprint!("Password: ");
    std::io::stderr().flush()?;
    let saved = termios::tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    termios::tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turning echo off")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn login(socket: &Path, server: &str, username: &str, password: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "username": username,
        "password": password,
        "serveraddress": server,
    })
    .to_string();
    let (status, answer) = crate::engine::request_with_body(socket, "POST", "/auth", Some(&body))?;
    if status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(answer);
        bail!("{message}");
    }
    Ok(())
}
