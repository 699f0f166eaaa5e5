//! `berth`: Berth's command line. Starts and stops the engine (berthd, and with it the VM),
//! reports on it, and checks the machine (`doctor`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

mod context;
mod doctor;
mod engine;
mod login;

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
    /// Start berthd in the background (and so the VM) unless it already answers; returns once
    /// the Docker API does.
    Start {
        /// `qemu` (a VM) or `direct` (berth-core on this Linux host).
        #[arg(long, env = "BERTH_BACKEND", default_value = "qemu")]
        backend: String,
        /// The berthd executable (default: beside `berth`, else on PATH).
        #[arg(long)]
        berthd: Option<PathBuf>,
        /// Where berthd writes its log (default: beside the socket).
        #[arg(long)]
        log: Option<PathBuf>,
        /// Seconds to wait for the engine.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
        /// More berthd options, after `--` (e.g. `-- --data-root DIR --vm-memory 2048`).
        #[arg(last = true)]
        berthd_args: Vec<String>,
    },
    /// Stop berthd: it stops the VM (containers' supervisors on the direct backend keep
    /// running). SIGKILL after the timeout.
    Stop {
        #[arg(long, default_value_t = 90)]
        timeout: u64,
    },
    /// Is berthd up, which backend, what state is the core in. Exit status 1 when it is not
    /// running.
    Status,
    /// Check what Berth needs on this machine. Exit status 1 when something would stop it.
    Doctor {
        /// The backend to check for.
        #[arg(long, env = "BERTH_BACKEND", default_value = "qemu")]
        backend: String,
        /// The guest image directory (default: ~/.cache/berth/vm/<arch>).
        #[arg(long, env = "BERTH_VM_IMAGE")]
        vm_image: Option<PathBuf>,
        /// berthd's data root (default as berthd's).
        #[arg(long, env = "BERTH_DATA_ROOT")]
        data_root: Option<PathBuf>,
        /// berthd's settings file (default as berthd's).
        #[arg(long, env = "BERTH_SETTINGS")]
        settings: Option<PathBuf>,
    },
    /// Log in to a registry through berthd: it checks the credentials with the registry and
    /// keeps them in the OS keyring (no file gets the password). Pulls by berthd and by the
    /// docker CLI use them.
    Login {
        /// The registry (host[:port]); Docker Hub when left out.
        server: Option<String>,
        #[arg(short, long)]
        username: String,
        /// Read the password from standard input (else it is asked for on the terminal).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget a registry's credentials (the OS keyring entry berthd and
    /// docker-credential-berth use).
    Logout {
        /// The registry (host[:port]); Docker Hub when left out.
        server: Option<String>,
    },
    /// The docker CLI context `berth` (`docker context use berth`), pointing at berthd's
    /// socket. `berth start` installs it.
    Context {
        #[command(subcommand)]
        action: ContextAction,
    },
}

#[derive(Subcommand)]
enum ContextAction {
    /// Create the context, or point it at the socket again.
    Install,
    /// Remove the context (as an uninstall does).
    Remove,
}

use berth_host::paths::{self, home};

fn default_vm_image() -> PathBuf {
    let arch = berth_vm::qemu::GuestArch::host()
        .map(|a| a.as_str())
        .unwrap_or("amd64");
    home().join(".cache/berth/vm").join(arch)
}

fn find_berthd() -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()?.with_file_name("berthd");
    if beside.is_file() {
        return Ok(beside);
    }
    doctor::find_program("berthd").context("berthd not found beside berth nor on PATH")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = args.socket.unwrap_or_else(paths::socket);
    match args.command {
        Command::Start {
            backend,
            berthd,
            log,
            timeout,
            berthd_args,
        } => {
            let berthd = match berthd {
                Some(p) => p,
                None => find_berthd()?,
            };
            let log = log.unwrap_or_else(|| socket.with_file_name("berthd.log"));
            let mut args = vec!["--backend".to_string(), backend.clone()];
            args.extend(berthd_args);
            let opts = engine::StartOptions {
                socket: socket.clone(),
                berthd,
                log,
                args,
                timeout: Duration::from_secs(timeout),
            };
            match engine::start(&opts, |line| eprintln!("{line}"))? {
                engine::Started::Already => {
                    println!("berthd is already running at {}", socket.display())
                }
                engine::Started::Now { pid, took } => println!(
                    "berthd is up (pid {pid}, {backend} backend) after {:.1} s; try: docker -H unix://{} version",
                    took.as_secs_f64(),
                    socket.display()
                ),
            }
            match context::install(&socket) {
                Ok(_) => {
                    println!("the docker context `berth` points at it: docker context use berth")
                }
                Err(e) => eprintln!("no docker context `berth`: {e:#}"),
            }
        }
        Command::Stop { timeout } => match engine::stop(&socket, Duration::from_secs(timeout))? {
            engine::Stopped::NotRunning => {
                println!("berthd is not running at {}", socket.display())
            }
            engine::Stopped::Now { pid, killed: false } => println!("berthd stopped (pid {pid})"),
            engine::Stopped::Now { pid, killed: true } => {
                println!("berthd (pid {pid}) did not stop within {timeout} s: killed")
            }
        },
        Command::Status => {
            let (status, body) = match engine::request(&socket, "GET", "/info") {
                Ok(r) => r,
                Err(e) => {
                    println!("berthd:  not running ({e:#})");
                    std::process::exit(1);
                }
            };
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
            println!(
                "runtime: {}",
                info["DefaultRuntime"].as_str().unwrap_or("?")
            );
            println!(
                "containers: {} ({} running)",
                info["Containers"], info["ContainersRunning"]
            );
            println!("images:  {}", info["Images"]);
        }
        Command::Doctor {
            backend,
            vm_image,
            data_root,
            settings,
        } => {
            let ctx = doctor::Context {
                socket,
                backend,
                vm_image: vm_image.unwrap_or_else(default_vm_image),
                data_root: data_root.unwrap_or_else(paths::data_root),
                settings: settings.unwrap_or_else(paths::settings),
            };
            let checks = doctor::run(&ctx);
            for c in &checks {
                println!("{c}");
            }
            if checks.iter().any(|c| c.level == doctor::Level::Fail) {
                std::process::exit(1);
            }
        }
        Command::Login {
            server,
            username,
            password_stdin,
        } => {
            let server = server.unwrap_or_else(|| "https://index.docker.io/v1/".into());
            let password = login::read_password(password_stdin)?;
            login::login(&socket, &server, &username, &password)?;
            println!("Login Succeeded (the password is in the OS keyring)");
        }
        Command::Logout { server } => {
            let host = berth_host::credentials::registry_host(server.as_deref().unwrap_or(""));
            match berth_host::credentials::erase(&host)? {
                true => println!("Removing login credentials for {host}"),
                false => println!("Not logged in to {host}"),
            }
        }
        Command::Context { action } => match action {
            ContextAction::Install => {
                let verb = context::install(&socket)?;
                println!("docker context `berth` {verb}: unix://{}", socket.display());
            }
            ContextAction::Remove => match context::remove()? {
                true => println!("docker context `berth` removed"),
                false => println!("there is no docker context `berth`"),
            },
        },
    }
    Ok(())
}
