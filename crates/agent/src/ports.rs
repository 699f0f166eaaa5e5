//! Published ports: berthd listens on the host while a container runs and forwards every
//! accepted TCP connection over a [`Channel::PortForward`](berth_proto::Channel) stream of its
//! own to the core, which connects to the container's address and splices the bytes. The same
//! path serves the direct backend and the VM.
//!
//! The host address is 127.0.0.1 unless the user names another (`-p 0.0.0.0:8080:80`): a
//! security default, unlike dockerd's 0.0.0.0. A host port of 0 (`-p 80`, `-P`) takes a free
//! port from the kernel. Listeners (and the connections they carry) end when the container
//! stops; berthd binds the same ports again when it restarts and finds the container running
//! (the ports of a run are recorded in the core, see `Request::ContainerPublished`).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::{
    ContainerInfo, ContainerRef, ContainerSpec, ErrorCode, PortBinding, PortForward, Request,
    Response, WaitCondition,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::core_client::CoreClient;

/// Where `-p 8080:80` listens: loopback only (see the module docs).
pub const DEFAULT_HOST_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A container port key as Docker writes it: "80/tcp".
pub fn port_key(port: u16, protocol: &str) -> String {
    format!("{port}/{protocol}")
}

/// Parses Docker's "80/tcp" (no protocol means tcp).
pub fn parse_port_key(key: &str) -> Result<(u16, String), String> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((p, proto)),
        _ => Err(format!("invalid containerPort: {port}")),
    }
}

/// Reads `HostConfig.PortBindings` (`{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`).
pub fn parse_bindings(v: &serde_json::Value) -> Result<Vec<PortBinding>, String> {
    let Some(map) = v.as_object() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (key, list) in map {
        let (container_port, protocol) = parse_port_key(key)?;
        let entries: Vec<&serde_json::Value> = match list {
            serde_json::Value::Array(a) => a.iter().collect(),
            serde_json::Value::Null => Vec::new(),
            other => vec![other],
        };
        if entries.is_empty() {
            // `-p 80` from old clients: publish on any port.
            out.push(PortBinding {
                container_port,
                protocol: protocol.clone(),
                host_ip: String::new(),
                host_port: 0,
            });
        }
        for e in entries {
            let host_ip = e["HostIp"].as_str().unwrap_or("").trim().to_string();
            if !host_ip.is_empty() {
                let bare = host_ip.trim_start_matches('[').trim_end_matches(']');
                bare.parse::<IpAddr>()
                    .map_err(|_| format!("invalid host IP address: {host_ip}"))?;
            }
            let hp = e["HostPort"].as_str().unwrap_or("").trim();
            let host_port = if hp.is_empty() {
                0
            } else if hp.contains('-') {
                return Err(format!(
                    "host port ranges are not supported ({hp} for {key}): give one port"
                ));
            } else {
                hp.parse::<u16>()
                    .map_err(|_| format!("invalid hostPort: {hp}"))?
            };
            out.push(PortBinding {
                container_port,
                protocol: protocol.clone(),
                host_ip: host_ip
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                host_port,
            });
        }
    }
    Ok(out)
}

/// The keys of a Docker `ExposedPorts` object, normalised ("80" → "80/tcp").
pub fn exposed_keys(v: &serde_json::Value) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    if let Some(map) = v.as_object() {
        for k in map.keys() {
            let (p, proto) = parse_port_key(k)?;
            out.insert(port_key(p, &proto));
        }
    }
    Ok(out)
}

/// What a start of this container publishes: its `-p` bindings, and with `-P` every exposed
/// TCP port that has none on a free port. Only bridge containers publish.
pub fn wanted(spec: &ContainerSpec) -> Vec<PortBinding> {
    if !matches!(spec.host.network_mode.as_str(), "" | "default" | "bridge") {
        return Vec::new();
    }
    let mut out = spec.host.port_bindings.clone();
    if spec.host.publish_all_ports {
        for key in &spec.exposed_ports {
            let Ok((port, proto)) = parse_port_key(key) else {
                continue;
            };
            let bound = out
                .iter()
                .any(|b| b.container_port == port && b.protocol == proto);
            if !bound && proto == "tcp" {
                out.push(PortBinding {
                    container_port: port,
                    protocol: proto,
                    host_ip: String::new(),
                    host_port: 0,
                });
            }
        }
    }
    out
}

/// The host address a binding listens on.
pub fn host_ip(b: &PortBinding) -> Result<IpAddr, String> {
    if b.host_ip.is_empty() {
        return Ok(IpAddr::V4(DEFAULT_HOST_IP));
    }
    b.host_ip
        .parse()
        .map_err(|_| format!("invalid host IP address: {}", b.host_ip))
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// another container of this berthd has the port
    #[error("Bind for {addr} failed: port is already allocated")]
    Allocated { addr: String },
    /// the host refused the listener
    #[error("Error starting userland proxy: listen {proto} {addr}: bind: {message}")]
    Bind {
        proto: &'static str,
        addr: String,
        message: String,
    },
    /// not something berthd publishes
    #[error("{0}")]
    Unsupported(String),
}

/// The listeners of one run of a container.
struct Published {
    token: u64,
    ports: Vec<PortBinding>,
    tasks: Vec<JoinHandle<()>>,
    /// Dropped with the run: every forwarded connection ends with it.
    _alive: watch::Sender<()>,
}

impl Drop for Published {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Listeners bound for a start that has not been confirmed yet.
pub struct Bound {
    listeners: Vec<(PortBinding, TcpListener)>,
}

impl Bound {
    /// The bindings with their actual host addresses and ports.
    pub fn ports(&self) -> Vec<PortBinding> {
        self.listeners.iter().map(|(b, _)| b.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

#[derive(Default)]
pub struct Ports {
    published: Mutex<HashMap<String, Published>>,
    next: AtomicU64,
}

fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

fn display_addr(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

impl Ports {
    /// Binds a listener for each binding (all or none). `except` is the container itself, whose
    /// own earlier listeners do not count as taken.
    pub async fn bind(
        &self,
        bindings: &[PortBinding],
        except: &str,
    ) -> Result<Bound, PublishError> {
        let mut listeners = Vec::new();
        for b in bindings {
            if b.protocol != "tcp" {
                return Err(PublishError::Unsupported(format!(
                    "publishing {} ports is not supported yet ({})",
                    b.protocol,
                    port_key(b.container_port, &b.protocol)
                )));
            }
            let ip = host_ip(b).map_err(PublishError::Unsupported)?;
            if b.host_port != 0 {
                let taken = self
                    .published
                    .lock()
                    .expect("ports lock")
                    .iter()
                    .filter(|(id, _)| id.as_str() != except)
                    .flat_map(|(_, p)| p.ports.iter())
                    .any(|p| {
                        p.host_port == b.host_port && host_ip(p).is_ok_and(|pip| overlaps(pip, ip))
                    });
                if taken {
                    return Err(PublishError::Allocated {
                        addr: display_addr(ip, b.host_port),
                    });
                }
            }
            let listener = TcpListener::bind(SocketAddr::new(ip, b.host_port))
                .await
                .map_err(|e| PublishError::Bind {
                    proto: if ip.is_ipv4() { "tcp4" } else { "tcp6" },
                    addr: display_addr(ip, b.host_port),
                    message: match e.kind() {
                        std::io::ErrorKind::AddrInUse => "address already in use".into(),
                        _ => e.to_string(),
                    },
                })?;
            let actual = listener
                .local_addr()
                .map_err(|e| PublishError::Unsupported(format!("listener address: {e}")))?;
            let mut got = b.clone();
            got.host_ip = ip.to_string();
            got.host_port = actual.port();
            listeners.push((got, listener));
        }
        Ok(Bound { listeners })
    }

    /// Serves bound listeners for a container's run; replaces any earlier run's. Returns the
    /// run's token for [`Ports::unpublish`].
    pub fn serve(&self, core: Arc<CoreClient>, container_id: &str, bound: Bound) -> u64 {
        let token = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let (alive, _) = watch::channel(());
        let mut tasks = Vec::new();
        let mut ports = Vec::new();
        for (binding, listener) in bound.listeners {
            ports.push(binding.clone());
            let core = core.clone();
            let id = container_id.to_string();
            let alive = alive.subscribe();
            tasks.push(tokio::spawn(async move {
                loop {
                    let (client, peer) = match listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!("accepting on {}: {e}", binding.host_port);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    tracing::debug!(
                        "{peer} → container {} port {}",
                        &id[..12.min(id.len())],
                        binding.container_port
                    );
                    tokio::spawn(forward(
                        core.clone(),
                        id.clone(),
                        binding.container_port,
                        client,
                        alive.clone(),
                    ));
                }
            }));
        }
        let run = Published {
            token,
            ports,
            tasks,
            _alive: alive,
        };
        self.published
            .lock()
            .expect("ports lock")
            .insert(container_id.to_string(), run);
        token
    }

    /// Closes a container's listeners and connections; with `token`, only if they are still
    /// that run's.
    pub fn unpublish(&self, container_id: &str, token: Option<u64>) {
        let mut map = self.published.lock().expect("ports lock");
        if let Some(p) = map.get(container_id) {
            if token.is_none_or(|t| t == p.token) {
                map.remove(container_id);
            }
        }
    }

    /// The host ports served for a container now.
    pub fn ports_of(&self, container_id: &str) -> Vec<PortBinding> {
        self.published
            .lock()
            .expect("ports lock")
            .get(container_id)
            .map(|p| p.ports.clone())
            .unwrap_or_default()
    }

    /// Watches the container's run: when it ends (or the container goes), its listeners go.
    pub fn watch(self: &Arc<Self>, core: Arc<CoreClient>, container_id: String, token: u64) {
        let ports = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let req = Request::ContainerWait {
                    container: ContainerRef(container_id.clone()),
                    condition: WaitCondition::NotRunning,
                };
                match core.call(req).await {
                    Ok(_) => break,
                    Err(e) if e.code == ErrorCode::NotFound => break,
                    // The core is restarting: ask again.
                    Err(e) => {
                        tracing::debug!("watching container {container_id}: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                if ports.upgrade().is_none() {
                    return;
                }
            }
            if let Some(p) = ports.upgrade() {
                p.unpublish(&container_id, Some(token));
            }
        });
    }

    /// After berthd starts: serves again the ports recorded for every running container.
    pub async fn restore(self: &Arc<Self>, core: Arc<CoreClient>) {
        let containers = match core.call(Request::ContainerList { all: false }).await {
            Ok(Response::Containers { containers }) => containers,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!("listing containers to restore their ports: {e}");
                return;
            }
        };
        for c in containers.iter().filter(|c| !c.ports.is_empty()) {
            self.restore_one(&core, c).await;
        }
    }

    async fn restore_one(self: &Arc<Self>, core: &Arc<CoreClient>, c: &ContainerInfo) {
        match self.bind(&c.ports, &c.id).await {
            Ok(bound) => {
                let token = self.serve(core.clone(), &c.id, bound);
                self.watch(core.clone(), c.id.clone(), token);
                tracing::info!(
                    "serving the published ports of container {} again",
                    &c.id[..12]
                );
            }
            Err(e) => tracing::warn!(
                "cannot publish the ports of container {} again: {e}",
                &c.id[..12]
            ),
        }
    }
}

/// One client connection: its own stream to the core, then bytes both ways until either end
/// closes or the run ends.
async fn forward(
    core: Arc<CoreClient>,
    id: String,
    port: u16,
    mut client: TcpStream,
    mut alive: watch::Receiver<()>,
) {
    let _ = client.set_nodelay(true);
    let req = PortForward {
        container: ContainerRef(id.clone()),
        port,
        protocol: "tcp".into(),
    };
    let stream = match core.port_forward(req).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("forwarding to container {id} port {port}: {e}");
            return;
        }
    };
    // The client's half-close goes on to the core only where the transport has half-close
    // (the direct backend's Unix socket); the VM's hybrid vsock would end the whole stream, so
    // there the answer keeps flowing until the container closes.
    let half_close = core.backend().name() == "direct";
    let (mut client_rd, mut client_wr) = client.split();
    let (mut core_rd, mut core_wr) = tokio::io::split(stream);
    let up = async {
        let _ = tokio::io::copy(&mut client_rd, &mut core_wr).await;
        if half_close {
            let _ = core_wr.shutdown().await;
        }
        std::future::pending::<()>().await
    };
    let down = async {
        if let Err(e) = tokio::io::copy(&mut core_rd, &mut client_wr).await {
            tracing::debug!("forwarded connection to {id} port {port}: {e}");
        }
        let _ = client_wr.shutdown().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = alive.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b(port: u16, ip: &str, host_port: u16) -> PortBinding {
        PortBinding {
            container_port: port,
            protocol: "tcp".into(),
            host_ip: ip.into(),
            host_port,
        }
    }

    #[test]
    fn port_bindings_parse_like_dockers() {
        let v = json!({
            "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}, {"HostIp": "", "HostPort": ""}],
            "53/udp": [{"HostIp": "", "HostPort": "5353"}],
            "9000": [{"HostIp": "[::1]", "HostPort": "9000"}],
        });
        let mut got = parse_bindings(&v).unwrap();
        got.sort_by_key(|b| (b.container_port, b.host_port));
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[0],
            PortBinding {
                container_port: 53,
                protocol: "udp".into(),
                host_ip: "".into(),
                host_port: 5353
            }
        );
        assert_eq!(got[1], b(80, "", 0));
        assert_eq!(got[2], b(80, "127.0.0.1", 8080));
        assert_eq!(got[3], b(9000, "::1", 9000));

        for (bad, msg) in [
            (json!({"abc/tcp": []}), "invalid containerPort: abc"),
            (json!({"80/xyz": []}), "invalid proto: xyz"),
            (json!({"0/tcp": []}), "invalid containerPort: 0"),
            (
                json!({"80/tcp": [{"HostIp": "", "HostPort": "99999"}]}),
                "invalid hostPort: 99999",
            ),
            (
                json!({"80/tcp": [{"HostIp": "localhost", "HostPort": "1"}]}),
                "invalid host IP address: localhost",
            ),
            (
                json!({"80/tcp": [{"HostIp": "", "HostPort": "8000-8010"}]}),
                "host port ranges are not supported",
            ),
        ] {
            let e = parse_bindings(&bad).unwrap_err();
            assert!(e.contains(msg), "{bad}: {e}");
        }
        assert!(parse_bindings(&json!(null)).unwrap().is_empty());
        let keys = exposed_keys(&json!({"80": {}, "53/UDP": {}})).unwrap();
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), ["53/udp", "80/tcp"]);
    }

    #[test]
    fn publish_all_adds_exposed_tcp_ports_without_a_binding() {
        let mut spec = ContainerSpec::default();
        spec.host.network_mode = "bridge".into();
        spec.host.port_bindings = vec![b(80, "", 8080)];
        spec.exposed_ports = vec!["80/tcp".into(), "443/tcp".into(), "53/udp".into()];
        assert_eq!(wanted(&spec), vec![b(80, "", 8080)]);
        spec.host.publish_all_ports = true;
        assert_eq!(wanted(&spec), vec![b(80, "", 8080), b(443, "", 0)]);
        spec.host.network_mode = "host".into();
        assert!(wanted(&spec).is_empty());
    }

    #[test]
    fn the_default_host_address_is_loopback() {
        assert_eq!(
            host_ip(&b(80, "", 1)).unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
        assert_eq!(
            host_ip(&b(80, "0.0.0.0", 1)).unwrap(),
            IpAddr::from([0, 0, 0, 0])
        );
    }

    #[tokio::test]
    async fn a_port_taken_by_another_container_is_already_allocated() {
        let ports = Ports::default();
        let bound = ports.bind(&[b(80, "", 0)], "a").await.unwrap();
        let got = bound.ports();
        assert_eq!(got[0].host_ip, "127.0.0.1");
        assert_ne!(got[0].host_port, 0, "a free port was chosen");
        // A core that never started: nothing here dials it.
        let backend = berth_vm::direct::DirectBackend::new(berth_vm::direct::DirectConfig {
            core_binary: "/nonexistent/berth-core".into(),
            data_root: "/nonexistent".into(),
            socket: "/nonexistent/core.sock".into(),
            start_timeout: Duration::from_secs(1),
        });
        let core = Arc::new(CoreClient::new(Arc::new(backend)));
        let token = ports.serve(core.clone(), "a", bound);
        let port = got[0].host_port;
        let e = match ports.bind(&[b(81, "", port)], "b").await {
            Err(e) => e,
            Ok(_) => panic!("bound a taken port"),
        };
        assert_eq!(
            e.to_string(),
            format!("Bind for 127.0.0.1:{port} failed: port is already allocated")
        );
        // The same on 0.0.0.0 overlaps too.
        assert!(ports.bind(&[b(81, "0.0.0.0", port)], "b").await.is_err());
        // A stale token does not close the current run; the right one does.
        ports.unpublish("a", Some(token + 1));
        assert_eq!(ports.ports_of("a").len(), 1);
        ports.unpublish("a", Some(token));
        assert!(ports.ports_of("a").is_empty());
        // Closed: the port can be bound again (the listener task was aborted).
        let mut again = None;
        for _ in 0..50 {
            match ports.bind(&[b(80, "", port)], "b").await {
                Ok(x) => {
                    again = Some(x);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        assert!(again.is_some(), "the port was freed");

        // Something else on the host holds a port: the OS's answer.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = other.local_addr().unwrap().port();
        let e = match ports.bind(&[b(80, "", port)], "c").await {
            Err(e) => e,
            Ok(_) => panic!("bound a port in use"),
        };
        assert_eq!(
            e.to_string(),
            format!(
                "Error starting userland proxy: listen tcp4 127.0.0.1:{port}: bind: address already in use"
            )
        );
        let e = match ports
            .bind(
                &[PortBinding {
                    protocol: "udp".into(),
                    ..b(53, "", 0)
                }],
                "c",
            )
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("bound udp"),
        };
        assert!(e.to_string().contains("udp"), "{e}");
    }
}
