//! The docker CLI context `berth`: `docker context use berth` makes every `docker` command
//! talk to berthd. Made with the docker CLI itself (`docker context create|update|rm`), so the
//! CLI's own storage format is never guessed; `DOCKER_CONFIG` is honoured as the CLI honours it.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{bail, Context as _};

pub const NAME: &str = "berth";

fn docker(args: &[&str]) -> anyhow::Result<Output> {
    let docker = crate::doctor::find_program("docker").context(
        "the docker CLI is not installed (Debian: apt-get install docker.io, or docker-ce-cli)",
    )?;
    Command::new(docker)
        .args(args)
        .output()
        .with_context(|| format!("running docker {}", args.join(" ")))
}

fn exists() -> anyhow::Result<bool> {
    Ok(docker(&["context", "inspect", NAME])?.status.success())
}

/// Creates the context or points it at `socket` again; says which.
pub fn install(socket: &Path) -> anyhow::Result<&'static str> {
    let endpoint = format!("host=unix://{}", socket.display());
    let (verb, out) = if exists()? {
        (
            "updated",
            docker(&["context", "update", NAME, "--docker", &endpoint])?,
        )
    } else {
        (
            "created",
            docker(&[
                "context",
                "create",
                NAME,
                "--description",
                "Berth (berthd)",
                "--docker",
                &endpoint,
            ])?,
        )
    };
    if !out.status.success() {
        bail!(
            "docker context {verb}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(verb)
}

/// Removes the context; `false` when there was none.
pub fn remove() -> anyhow::Result<bool> {
    if !exists()? {
        return Ok(false);
    }
    let out = docker(&["context", "rm", "--force", NAME])?;
    if !out.status.success() {
        bail!(
            "docker context rm: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(true)
}
