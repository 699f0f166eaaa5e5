//! `berth-core`: the runtime core. Listens on a Unix socket (direct backend) and, in the VM, on
//! vsock; see `berth_core::server`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::UnixListener;

use berth_core::images::ImageService;
use berth_core::server::Core;

#[derive(Parser)]
#[command(name = "berth-core", version, about = "Berth's runtime core")]
struct Args {
    /// Unix socket to listen on (created owner-only).
    #[arg(long)]
    listen: PathBuf,
    /// Where the content store, snapshots and metadata live.
    #[arg(long)]
    data_root: PathBuf,
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

async fn run(args: Args) -> anyhow::Result<()> {
    let images = ImageService::open(&args.data_root)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("opening the store at {}", args.data_root.display()))?;
    let core = Arc::new(Core { images });
    let _ = std::fs::remove_file(&args.listen);
    let listener = {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let l = UnixListener::bind(&args.listen);
        nix::sys::stat::umask(old);
        l.with_context(|| format!("listening on {}", args.listen.display()))?
    };
    tracing::info!("berth-core listening on {}", args.listen.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting")?;
                tokio::spawn(core.clone().serve_connection(stream));
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(&args.listen);
    Ok(())
}
