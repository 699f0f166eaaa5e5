//! `berth-core`: the runtime core. Listens on a Unix socket (direct backend) and, in the VM, on
//! vsock (`--listen vsock:PORT`); see `berth_core::server`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::UnixListener;

use berth_core::server::Core;

#[derive(Parser, Clone)]
#[command(name = "berth-core", version, about = "Berth's runtime core")]
struct Args {
    /// Where to listen: a Unix socket path (created owner-only), or `vsock:PORT` for AF_VSOCK
    /// on any CID (inside the VM).
    #[arg(long)]
    listen: Listen,
    /// Where the content store, snapshots and metadata live.
    #[arg(long)]
    data_root: PathBuf,
    /// With `--listen vsock:…`: once listening, connect to the host (CID 2) on this vsock port,
    /// write one line and close, so the host knows it can dial the core.
    #[arg(long)]
    ready_port: Option<u32>,
    /// Where the container bridge lives: `current` (this process's network namespace: the
    /// VM's), `dedicated` (a namespace of its own under the data root, never touching the
    /// host's network), or `auto`: current when listening on vsock, else dedicated.
    #[arg(long, default_value = "auto", value_parser = ["auto", "current", "dedicated"])]
    network_namespace: String,
    /// The bridge's subnet; its first address is the gateway.
    #[arg(long, env = "BERTH_BRIDGE_SUBNET", default_value = berth_core::net::DEFAULT_SUBNET)]
    bridge_subnet: berth_core::net::Subnet,
}

fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (the shim's shim.log on a full data disk) is skipped:
        // the default reports it with eprintln!, which panics on the same full disk and
        // would take a container's exit code with it.
        .log_internal_errors(false)
        .init();
    // The per-container supervisor: the core runs this binary as `berth-core shim …`.
    if std::env::args_os().nth(1).is_some_and(|a| a == "shim") {
        let shim = berth_core::container::shim::ShimArgs::parse_from(std::env::args_os().skip(1));
        return berth_core::container::shim::run(shim).map_err(anyhow::Error::from);
    }
    let mut timing = StartTiming::new(started);
    timing.step("log");
    let args = Args::parse();
    timing.step("args");
    // The stores open on a thread of their own from here, while the runtime starts and the
    // listener is bound (they need neither; in a VM without KVM opening them is most of the
    // core's start, see docs/vm.md).
    let opening = {
        let args = args.clone();
        std::thread::Builder::new()
            .name("open".into())
            .spawn(move || open_core(&args))
            .context("starting the store's thread")?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    timing.step("runtime");
    let result = runtime.block_on(run(args, timing, opening));
    // Requests blocked in a wait (`docker wait`, a follow of logs) must not keep a stopping
    // core alive: containers live in their shims, not here.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    if result.is_ok() && RESTART.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::info!("exiting for a restart");
        std::process::exit(berth_proto::RESTART_EXIT_CODE);
    }
    result
}

/// Set when the core stops because a client asked for a restart (`Request::Restart`).
static RESTART: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone)]
enum Listen {
    Unix(PathBuf),
    Vsock(u32),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Listen, String> {
        match s.strip_prefix("vsock:") {
            Some(port) => port
                .parse()
                .map(Listen::Vsock)
                .map_err(|e| format!("bad vsock port {port:?}: {e}")),
            None => Ok(Listen::Unix(PathBuf::from(s))),
        }
    }
}

/// The stores being opened (see `main`).
type Opening = std::thread::JoinHandle<anyhow::Result<Arc<Core>>>;

async fn run(args: Args, timing: StartTiming, opening: Opening) -> anyhow::Result<()> {
    match args.listen.clone() {
        Listen::Unix(path) => run_unix(path, opening).await,
        Listen::Vsock(port) => run_vsock(args, port, timing, opening).await,
    }
}

/// Waits for the stores (a blocking wait, off the runtime's threads).
async fn opened(opening: Opening) -> anyhow::Result<Arc<Core>> {
    tokio::task::spawn_blocking(move || opening.join())
        .await
        .context("waiting for the store")?
        .map_err(|_| anyhow::anyhow!("opening the store panicked"))?
}

/// The core's start, step by step, for the boot split (`scripts/bench boot`, `docs/vm.md`):
/// each step's time since the previous one, from `main`; `exec` is from the fork that started
/// this process to `main` (its start time in `/proc/self/stat` against `/proc/uptime`; clock
/// ticks, so ±10 ms).
struct StartTiming {
    last: std::time::Instant,
    steps: Vec<(&'static str, std::time::Duration)>,
    exec: Option<f64>,
}

impl StartTiming {
    fn new(started: std::time::Instant) -> StartTiming {
        StartTiming {
            last: started,
            steps: Vec::new(),
            exec: exec_seconds().map(|e| (e - started.elapsed().as_secs_f64()).max(0.0)),
        }
    }

    fn step(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.steps.push((name, now - self.last));
        tracing::debug!("start: {name} took {:?}", now - self.last);
        self.last = now;
    }

    /// "exec 12 ms, runtime 3 ms, …".
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = self.exec {
            parts.push(format!("exec {:.0} ms", e * 1000.0));
        }
        for (name, d) in &self.steps {
            parts.push(format!("{name} {:.0} ms", d.as_secs_f64() * 1000.0));
        }
        parts.join(", ")
    }
}

/// The guest's uptime in seconds, from `/proc/uptime`.
fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How long ago the kernel started this process (`/proc/self/stat`'s start time, in clock
/// ticks since boot, against the uptime): the exec and the binary's loading.
fn exec_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command's closing parenthesis; start time is the 22nd field.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    Some((uptime()? - ticks / hz as f64).max(0.0))
}

fn open_core(args: &Args) -> anyhow::Result<Arc<Core>> {
    use berth_core::net::{NetnsMode, NetworkConfig};
    let current = match args.network_namespace.as_str() {
        "current" => true,
        "dedicated" => false,
        _ => matches!(args.listen, Listen::Vsock(_)),
    };
    let network = NetworkConfig {
        mode: if current {
            NetnsMode::Current
        } else {
            NetworkConfig::dedicated(&args.data_root).mode
        },
        subnet: args.bridge_subnet,
        // In the VM containers reach the outside through the guest's NAT; on a host the
        // dedicated namespace has no way out (see docs/containers.md).
        outbound_nat: current,
    };
    let core = Core::open_with_network(&args.data_root, None, network)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("opening the store at {}", args.data_root.display()))?;
    Ok(Arc::new(core))
}

async fn run_unix(path: PathBuf, opening: Opening) -> anyhow::Result<()> {
    let core = opened(opening).await?;
    let _ = std::fs::remove_file(&path);
    let listener = {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let l = UnixListener::bind(&path);
        nix::sys::stat::umask(old);
        l.with_context(|| format!("listening on {}", path.display()))?
    };
    tracing::info!("berth-core listening on {}", path.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting")?;
                tokio::spawn(core.clone().serve_connection(stream));
            }
            _ = term.recv() => break,
            _ = core.restart.notified() => {
                // Let the answer to the restart request reach its caller first.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                RESTART.store(true, std::sync::atomic::Ordering::SeqCst);
                break;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // A dedicated network namespace nobody uses any more is not left mounted.
    core.containers.shutdown_network();
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// In the VM: every host connection arrives on one vsock port; its hello names the channel.
#[cfg(target_os = "linux")]
async fn run_vsock(
    args: Args,
    port: u32,
    mut timing: StartTiming,
    opening: Opening,
) -> anyhow::Result<()> {
    let listener = bind_vsock(port).await?;
    timing.step("listen");
    let core = opened(opening).await?;
    timing.step("store");
    tracing::info!("berth-core listening on vsock port {port}");
    if let Some(ready) = args.ready_port {
        // Beside the accept loop, not before it: after a warm restart nobody listens on the
        // host's port any more and the connect only fails after the transport's timeout (~2 s
        // with vhost-device-vsock), while berthd is already dialling the core. Not fatal
        // either way: a host that does not listen simply dials until the core answers.
        tokio::spawn(async move {
            let announced = announce_ready(ready).await;
            timing.step("announce");
            match announced {
                // The guest's uptime, for `scripts/bench boot`'s split of the boot time, and the
                // core's own start step by step.
                Ok(()) => tracing::info!(
                    "berth-core ready (guest uptime {}; {})",
                    uptime().map_or_else(|| "?".into(), |u| format!("{u:.2}")),
                    timing.summary()
                ),
                Err(e) => tracing::debug!(
                    "could not tell the host on vsock port {ready} that the core is up: {e}"
                ),
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting")?;
                tokio::spawn(core.clone().serve_connection(stream));
            }
            _ = term.recv() => break,
            _ = core.restart.notified() => {
                // Let the answer to the restart request reach its caller first.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                RESTART.store(true, std::sync::atomic::Ordering::SeqCst);
                break;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}

/// How long the core waits for the guest's vsock modules, which the init loads while the
/// core opens its stores (`vm-image/init`).
#[cfg(target_os = "linux")]
const VSOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// An error that only says the guest's vsock modules are not loaded yet: no `AF_VSOCK` (the
/// socket family), or no transport to the host.
#[cfg(target_os = "linux")]
fn vsock_not_yet(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::ENODEV | libc::ENETUNREACH | libc::EADDRNOTAVAIL)
    )
}

/// The listener on every CID, once the guest has `AF_VSOCK`.
#[cfg(target_os = "linux")]
async fn bind_vsock(port: u32) -> anyhow::Result<tokio_vsock::VsockListener> {
    let deadline = std::time::Instant::now() + VSOCK_WAIT;
    loop {
        let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
        match tokio_vsock::VsockListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if vsock_not_yet(&e) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("listening on vsock port {port}")),
        }
    }
}

/// One short connection to the host: the guest's vsock driver is up and the core listens.
/// Tried again while the transport to the host is still being loaded.
#[cfg(target_os = "linux")]
async fn announce_ready(port: u32) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_HOST, port);
    let deadline = std::time::Instant::now() + VSOCK_WAIT;
    let mut s = loop {
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio_vsock::VsockStream::connect(addr),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5 s"))?
        {
            Ok(s) => break s,
            Err(e) if vsock_not_yet(&e) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(e) => return Err(e),
        }
    };
    s.write_all(berth_proto::READY_LINE.as_bytes()).await?;
    s.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn run_vsock(
    _args: Args,
    port: u32,
    _timing: StartTiming,
    _opening: Opening,
) -> anyhow::Result<()> {
    anyhow::bail!("vsock:{port}: AF_VSOCK listening is only available on Linux")
}
