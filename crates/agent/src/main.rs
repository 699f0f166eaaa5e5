//! `berthd`: runs in the foreground until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_registry::RegistryConfig;
use berth_vm::direct::{DirectBackend, DirectConfig};
use berth_vm::qemu::{GuestArch, QemuBackend, QemuConfig};
use berth_vm::VmBackend;

use berth_agent::daemon::{self, Daemon};

#[derive(clap::Parser)]
#[command(
    name = "berthd",
    version,
    about = "Berth's host agent: the Docker API on a Unix socket"
)]
struct Args {
    /// Where the core runs: `direct` (Linux host, no VM: berth-core as a child process) or
    /// `qemu` (the guest from vm-image/build under QEMU).
    #[arg(long, default_value = "direct")]
    backend: String,
    /// The guest built by `vm-image/build` (qemu backend): a directory holding the kernel
    /// (bzImage or Image) and initramfs.cpio.gz. Default: ~/.cache/berth/vm/<arch>.
    #[arg(long, env = "BERTH_VM_IMAGE")]
    vm_image: Option<PathBuf>,
    /// VM CPUs (qemu backend).
    #[arg(long, env = "BERTH_VM_CPUS", default_value_t = 2)]
    vm_cpus: u32,
    /// VM memory in MiB (qemu backend).
    #[arg(long, default_value_t = 1024)]
    vm_memory: u32,
    /// Size of the VM's data disk in GiB, used when the disk is first created (qemu backend;
    /// sparse: it takes only what the guest writes).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=16384))]
    vm_disk: u64,
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
    /// The settings file (default: $XDG_CONFIG_HOME/berth/settings.json, else
    /// ~/.config/berth/settings.json). berthd refuses to start when it does not validate.
    /// The registry flags above are laid over it; `vm` values apply where no --vm-* flag is
    /// given.
    #[arg(long, env = "BERTH_SETTINGS")]
    settings: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk) is skipped rather than reported with
        // eprintln!, which would panic on the same stderr.
        .log_internal_errors(false)
        .init();
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let mut args =
        <Args as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let settings_path = args
        .settings
        .clone()
        .unwrap_or_else(berth_agent::settings::default_path);
    // A settings file that does not validate stops berthd here, naming the file and every
    // error; it is never reset.
    let store = berth_agent::settings::SettingsStore::load(&settings_path).inspect_err(|e| {
        tracing::error!("{e}");
    })?;
    for w in &store.load_warnings {
        tracing::warn!("{}: {w}", settings_path.display());
    }
    vm_from_settings(&mut args, &matches, &store.current().settings);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(args, Arc::new(store)))
}

/// The settings file's `vm` values, where the command line gave none.
fn vm_from_settings(
    args: &mut Args,
    matches: &clap::ArgMatches,
    settings: &berth_agent::settings::Settings,
) {
    let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    if let (false, Some(n)) = (given("vm_cpus"), settings.vm.cpus) {
        args.vm_cpus = n;
    }
    if let (false, Some(n)) = (given("vm_memory"), settings.vm.memory) {
        args.vm_memory = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let (false, Some(n)) = (given("vm_disk"), settings.vm.disk) {
        args.vm_disk = n;
    }
}

fn qemu_backend(args: &Args, data_root: &std::path::Path) -> anyhow::Result<QemuBackend> {
    let arch = GuestArch::host().context("no guest architecture for this host")?;
    let dir = match &args.vm_image {
        Some(d) => d.clone(),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/berth/vm")
            .join(arch.as_str()),
    };
    let kernel = ["bzImage", "Image", "vmlinux"]
        .iter()
        .map(|k| dir.join(k))
        .find(|p| p.is_file())
        .with_context(|| format!("no guest kernel in {}: run vm-image/build", dir.display()))?;
    let initramfs = dir.join("initramfs.cpio.gz");
    if !initramfs.is_file() {
        bail!("no initramfs in {}: run vm-image/build", dir.display());
    }
    let mut config = QemuConfig::new(arch, kernel, initramfs, data_root.join("vm"));
    config.cpus = args.vm_cpus;
    config.memory_mib = args.vm_memory;
    config.data_disk_size = args.vm_disk << 30;
    // The core's log filter inside the guest (its log goes to the console log).
    if let Some(filter) = std::env::var("BERTH_GUEST_LOG")
        .ok()
        .filter(|f| !f.is_empty())
    {
        config.kernel_args.push(format!("berth.log={filter}"));
    }
    config.vsock_helper = berth_vm::find_program("vhost-device-vsock")
        .context("vhost-device-vsock is not installed (cargo install vhost-device-vsock)")?;
    Ok(QemuBackend::new(config))
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

async fn run(
    args: Args,
    settings: Arc<berth_agent::settings::SettingsStore>,
) -> anyhow::Result<()> {
    let socket = args.socket.clone().unwrap_or_else(daemon::default_socket);
    let data_root = args
        .data_root
        .clone()
        .unwrap_or_else(daemon::default_data_root);
    std::fs::create_dir_all(&data_root)
        .with_context(|| format!("creating {}", data_root.display()))?;
    let backend: Arc<dyn VmBackend> = match args.backend.as_str() {
        "direct" => {
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
            Arc::new(DirectBackend::new(DirectConfig {
                core_binary,
                data_root: data_root.join("core"),
                socket: data_root.join("core.sock"),
                start_timeout: Duration::from_secs(30),
            }))
        }
        "qemu" => Arc::new(qemu_backend(&args, &data_root)?),
        other => bail!("unknown backend {other:?}: use direct or qemu"),
    };
    let listener = daemon::bind_socket(&socket)?;
    backend.start().await.context("starting the core")?;
    let daemon = Arc::new(Daemon::with_settings(
        backend.clone(),
        registry_config(&args)?,
        settings,
    )?);
    // Containers that kept running while berthd was down get their published ports back.
    daemon.ports.restore(daemon.core.clone()).await;
    // `docker events` follows the core's event log from here on.
    let events = tokio::spawn(berth_agent::events::follow_core(
        daemon.core.clone(),
        daemon.events.clone(),
    ));
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
    // A machine or core that dies is found, reported and started again.
    let supervisor = tokio::spawn(berth_agent::supervisor::supervise(
        daemon.core.clone(),
        daemon.health.clone(),
    ));
    let core = daemon.core.clone();
    daemon::serve(daemon, listener, shutdown).await;
    tracing::info!("berthd stopping");
    supervisor.abort();
    events.abort();
    if backend.name() != "direct" {
        // The machine is about to power off: containers get their stop signal and timeout
        // first, as `docker stop` gives them, rather than dying with the guest.
        // A core that does not answer (a hung guest) must not keep berthd from stopping.
        let cap = berth_agent::supervisor::CONTAINER_STOP_CAP;
        if tokio::time::timeout(cap, berth_agent::supervisor::stop_running_containers(&core))
            .await
            .is_err()
        {
            tracing::warn!("containers did not stop within {cap:?}; powering the guest off");
        }
    }
    let _ = backend.stop().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
