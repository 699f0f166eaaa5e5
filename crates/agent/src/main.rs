//! `berthd`: runs in the foreground until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_registry::RegistryConfig;
use berth_vm::direct::{DirectBackend, DirectConfig};
use berth_vm::VmBackend;
use clap::Parser;

use berth_agent::daemon::{self, Daemon};

#[derive(Parser)]
#[command(
    name = "berthd",
    version,
    about = "Berth's host agent: the Docker API on a Unix socket"
)]
struct Args {
    /// Where the core runs: `direct` (Linux host, no VM). The VM backends come next.
    #[arg(long, default_value = "direct")]
    backend: String,
    /// The socket to serve (created 0600).
    #[arg(long, env = "BERTH_SOCKET")]
    socket: Option<PathBuf>,
    /// The core's data root (content store, snapshots, metadata).
    #[arg(long, env = "BERTH_DATA_ROOT")]
    data_root: Option<PathBuf>,
    /// The berth-core executable (default: beside berthd).
    #[arg(long)]
    core_binary: Option<PathBuf>,
    /// A Docker Hub mirror (repeatable), as daemon.json's registry-mirrors.
    #[arg(long = "registry-mirror")]
    registry_mirrors: Vec<url::Url>,
    /// A mirror for any registry: HOST=URL (repeatable, tried in order).
    #[arg(long = "mirror")]
    mirrors: Vec<String>,
    /// A registry reached over plain http (host[:port]); 127.0.0.0/8 always is.
    #[arg(long = "insecure-registry")]
    insecure: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(args))
}

fn registry_config(args: &Args) -> anyhow::Result<RegistryConfig> {
    let mut config = RegistryConfig::default();
    if !args.registry_mirrors.is_empty() {
        config
            .mirrors
            .insert("docker.io".into(), args.registry_mirrors.clone());
    }
    for m in &args.mirrors {
        let (host, url) = m
            .split_once('=')
            .with_context(|| format!("--mirror {m:?}: want HOST=URL"))?;
        let url = url::Url::parse(url).with_context(|| format!("--mirror {m:?}: bad URL"))?;
        config
            .mirrors
            .entry(host.to_string())
            .or_default()
            .push(url);
    }
    config.insecure = args.insecure.clone();
    Ok(config)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.backend != "direct" {
        bail!(
            "backend {:?} is not available yet: use --backend direct",
            args.backend
        );
    }
    let socket = args.socket.clone().unwrap_or_else(daemon::default_socket);
    let data_root = args
        .data_root
        .clone()
        .unwrap_or_else(daemon::default_data_root);
    let core_binary = match &args.core_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("berthd has no parent directory")?
            .join("berth-core"),
    };
    if !nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "the direct backend runs berth-core as this user; unpacking layers (owners, devices) needs root"
        );
    }
    let core_socket = data_root.join("core.sock");
    std::fs::create_dir_all(&data_root)
        .with_context(|| format!("creating {}", data_root.display()))?;
    let backend: Arc<dyn VmBackend> = Arc::new(DirectBackend::new(DirectConfig {
        core_binary,
        data_root: data_root.join("core"),
        socket: core_socket,
        start_timeout: Duration::from_secs(30),
    }));
    let listener = daemon::bind_socket(&socket)?;
    backend.start().await.context("starting the core")?;
    let daemon = Arc::new(Daemon::new(backend.clone(), registry_config(&args)?)?);
    tracing::info!(
        "berthd listening on unix://{} ({} backend); try: docker -H unix://{} version",
        socket.display(),
        backend.name(),
        socket.display()
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    daemon::serve(daemon, listener, shutdown).await;
    tracing::info!("berthd stopping");
    let _ = backend.stop().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
