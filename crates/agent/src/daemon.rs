//! berthd's state and its one socket.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use berth_registry::{Client, CredentialStore, Credentials, Platform, Reference, RegistryConfig};
use berth_vm::VmBackend;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use crate::core_client::CoreClient;
use crate::docker::{self, ApiError};

pub struct Daemon {
    /// A random id for `/info`, new each start.
    pub id: String,
    pub core: Arc<CoreClient>,
    /// Failures and restarts of the backend (`supervisor`).
    pub health: Arc<crate::supervisor::Health>,
    /// Published ports served on the host (`ports`).
    pub ports: Arc<crate::ports::Ports>,
    /// The events `GET /events` serves, followed from the core (`events`).
    pub events: Arc<crate::events::EventHub>,
    /// The platform images are pulled for: the VM's (the host's on the direct backend).
    pub platform: Platform,
    registry: RwLock<(RegistryConfig, Client)>,
    /// The settings file (`settings`), when berthd runs with one.
    pub settings: Option<Arc<crate::settings::SettingsStore>>,
    /// The registry configuration of the command line (`--registry-mirror`, `--mirror`,
    /// `--insecure-registry`), laid over the settings file's.
    flag_registry: RegistryConfig,
}

/// No stored credentials yet (the keyring comes with the settings issue): pulls use what the
/// docker CLI sends in `X-Registry-Auth`.
struct NoCredentials;

impl CredentialStore for NoCredentials {
    fn get(&self, _registry: &str) -> Option<Credentials> {
        None
    }
}

/// Credentials the docker CLI sent with one request, for one registry.
struct RequestCredentials {
    host: String,
    creds: Credentials,
}

impl CredentialStore for RequestCredentials {
    fn get(&self, registry: &str) -> Option<Credentials> {
        (registry == self.host).then(|| self.creds.clone())
    }
}

impl Daemon {
    pub fn new(
        backend: Arc<dyn VmBackend>,
        registry_config: RegistryConfig,
    ) -> anyhow::Result<Daemon> {
        let client = Client::new(registry_config.clone(), Arc::new(NoCredentials))
            .map_err(|e| anyhow::anyhow!("registry client: {e}"))?;
        Ok(Daemon {
            id: format!("{:032x}", rand::random::<u128>()),
            core: Arc::new(CoreClient::new(backend)),
            health: Arc::default(),
            ports: Arc::default(),
            events: Arc::default(),
            platform: Platform::host_linux(),
            registry: RwLock::new((registry_config.clone(), client)),
            settings: None,
            flag_registry: registry_config,
        })
    }

    /// A daemon whose registry configuration is the settings file's with the command line's
    /// (`flags`) laid over it (`settings::overlay`).
    pub fn with_settings(
        backend: Arc<dyn VmBackend>,
        flags: RegistryConfig,
        store: Arc<crate::settings::SettingsStore>,
    ) -> anyhow::Result<Daemon> {
        let file = store
            .current()
            .settings
            .registry_config()
            .map_err(|e| anyhow::anyhow!("{}: {e}", store.path().display()))?;
        let mut d = Daemon::new(backend, crate::settings::overlay(&flags, &file))?;
        d.flag_registry = flags;
        d.settings = Some(store);
        Ok(d)
    }

    /// The registry client `settings` ask for (with the command line laid over them): a new
    /// client (new CA roots, no cached tokens), not yet in use.
    pub fn prepare_registry(
        &self,
        settings: &crate::settings::Settings,
    ) -> Result<(RegistryConfig, Client), String> {
        let cfg = crate::settings::overlay(&self.flag_registry, &settings.registry_config()?);
        let client = Client::new(cfg.clone(), Arc::new(NoCredentials))
            .map_err(|e| format!("registry client: {e}"))?;
        Ok((cfg, client))
    }

    /// Makes a prepared client the one of the next pull, swapped in under the lock; pulls
    /// under way keep the client they started with.
    pub fn install_registry(&self, prepared: (RegistryConfig, Client)) {
        *self.registry.write().expect("registry lock") = prepared;
    }

    pub fn registry(&self) -> Client {
        self.registry.read().expect("registry lock").1.clone()
    }

    pub fn registry_settings(&self) -> RegistryConfig {
        self.registry.read().expect("registry lock").0.clone()
    }

    /// The client for one pull: the shared one (its token cache is reused), or one carrying the
    /// credentials the CLI sent for this pull's registry.
    pub fn registry_for_pull(
        &self,
        reference: &Reference,
        creds: Option<Credentials>,
    ) -> Result<Client, ApiError> {
        let Some(creds) = creds else {
            return Ok(self.registry());
        };
        let store = RequestCredentials {
            host: reference.registry.clone(),
            creds,
        };
        Client::new(self.registry_settings(), Arc::new(store)).map_err(|e| {
            ApiError::new(
                hyper::StatusCode::INTERNAL_SERVER_ERROR,
                format!("registry client: {e}"),
            )
        })
    }
}

/// Binds the socket owner-only (0600), whatever the umask says.
pub fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use: is another berthd running?", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the Docker API (and later the admin API) until `shutdown` resolves.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| docker::handle(daemon.clone(), req));
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await
                    {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
}

/// Where berthd keeps things when not told otherwise.
pub fn default_socket() -> PathBuf {
    berth_host::paths::socket()
}

pub fn default_data_root() -> PathBuf {
    berth_host::paths::data_root()
}
