//! A container's network, on the container service's side: the address it gets on the bridge
//! when it starts (written to `<bundle>/network.json`, claimed while `<bundle>/netns` is
//! mounted), its `/etc/hosts` line, the host ports berthd published for it (`ports.json`), and
//! the clean-up when it stops. The namespaces and links themselves are `crate::net`'s.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::{ContainerNetwork, ContainerRef, PortBinding};

use super::store::ContainerRecord;
use super::{io_err, ContainerError, ContainerService, Result};
use crate::net::{self, Attachment};

pub const NETNS_FILE: &str = "netns";
pub const NETWORK_FILE: &str = "network.json";
pub const PORTS_FILE: &str = "ports.json";

/// Whether a network mode puts the container on the bridge.
pub fn on_bridge(mode: &str) -> bool {
    matches!(mode, "" | "default" | "bridge")
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

impl ContainerService {
    fn netns_path(&self, id: &str) -> PathBuf {
        self.bundle(id).join(NETNS_FILE)
    }

    fn attachment(&self, id: &str) -> Option<Attachment> {
        let b = fs::read(self.bundle(id).join(NETWORK_FILE)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// The addresses claimed now: those of containers whose namespace is mounted.
    fn claimed(&self) -> Result<HashSet<Ipv4Addr>> {
        let mut used = HashSet::new();
        for id in self.store.ids()? {
            if net::is_attached(&self.netns_path(&id)) {
                if let Some(a) = self.attachment(&id) {
                    used.insert(a.ip);
                }
            }
        }
        Ok(used)
    }

    /// Before a start (under the container's lock): a bridge container gets its namespace, an
    /// address and its `/etc/hosts` line. Other modes need nothing.
    pub(super) fn attach_network(&self, rec: &ContainerRecord) -> Result<()> {
        if !on_bridge(&rec.spec.host.network_mode) {
            return Ok(());
        }
        let netns = self.netns_path(&rec.id);
        // Left over from a run whose clean-up did not happen (a crash, a kill).
        net::detach(&netns);
        let attachment = {
            let _guard = self.net_lock.lock().expect("network lock");
            let used = self.claimed()?;
            let subnet = self.network.config().subnet;
            let ip = subnet.allocate(&used).ok_or_else(|| {
                ContainerError::Conflict(format!(
                    "no IPv4 address is left on the bridge network ({subnet})"
                ))
            })?;
            let a = self.network.attach(&netns, ip, &rec.id).map_err(|e| {
                ContainerError::Internal(format!("setting up the container's network: {e}"))
            })?;
            // Written while the lock is held: the next allocation sees the claim.
            if let Err(e) = write_atomic(
                &self.bundle(&rec.id).join(NETWORK_FILE),
                &serde_json::to_vec(&a).expect("serialisable"),
            ) {
                net::detach(&netns);
                return Err(io_err("writing network.json")(e));
            }
            a
        };
        let mut hosts = super::hosts_file(false);
        let host = &rec.process.hostname;
        let line = match rec.spec.domainname.as_deref().filter(|d| !d.is_empty()) {
            Some(d) => format!("{}\t{host}.{d} {host}\n", attachment.ip),
            None => format!("{}\t{host}\n", attachment.ip),
        };
        hosts.push_str(&line);
        write_atomic(&self.bundle(&rec.id).join("hosts"), hosts.as_bytes())
            .map_err(io_err("writing /etc/hosts"))?;
        Ok(())
    }

    /// After a run (the container is not running): frees its address and its veth pair.
    pub(super) fn detach_network(&self, id: &str) {
        let netns = self.netns_path(id);
        if netns.exists() {
            net::detach(&netns);
        }
    }

    /// Detaches every container that is attached but no longer running (it exited by itself,
    /// or its supervisor died). Containers being started or stopped (their lock is held) are
    /// left to that operation. Returns whether any container is still attached.
    pub(super) fn sweep_network(&self) -> bool {
        let Ok(ids) = self.store.ids() else {
            return true;
        };
        let mut attached = false;
        for id in ids {
            if !self.netns_path(&id).exists() {
                continue;
            }
            let lock = self.lock(&id);
            let Ok(_guard) = lock.try_lock() else {
                attached = true;
                continue;
            };
            if self.view(&id).running {
                attached = true;
            } else {
                self.detach_network(&id);
            }
        }
        attached
    }

    /// The network of a running container as the protocol shows it.
    pub(super) fn network_info(&self, id: &str, running: bool) -> Option<ContainerNetwork> {
        if !running {
            return None;
        }
        let a = self.attachment(id)?;
        if !net::is_attached(&self.netns_path(id)) {
            return None;
        }
        Some(ContainerNetwork {
            network: "bridge".into(),
            ip_address: a.ip.to_string(),
            prefix_len: a.prefix,
            gateway: a.gateway.to_string(),
            mac_address: a.mac,
        })
    }

    /// The host ports of the current run, as berthd recorded them.
    pub(super) fn published_ports(&self, id: &str, running: bool) -> Vec<PortBinding> {
        if !running {
            return Vec::new();
        }
        fs::read(self.bundle(id).join(PORTS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records the host ports berthd bound for a container (`ContainerPublished`).
    pub fn set_published(&self, r: &ContainerRef, ports: &[PortBinding]) -> Result<()> {
        let rec = self.find(r)?;
        write_atomic(
            &self.bundle(&rec.id).join(PORTS_FILE),
            &serde_json::to_vec(ports).expect("serialisable"),
        )
        .map_err(io_err("writing ports.json"))
    }

    /// Connects to `port` of a running bridge container, from the core's network namespace.
    pub fn connect(
        &self,
        r: &ContainerRef,
        port: u16,
        timeout: Duration,
    ) -> Result<std::net::TcpStream> {
        let rec = self.find(r)?;
        let running = self.view(&rec.id).running;
        if !running {
            return Err(ContainerError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        let Some(n) = self.network_info(&rec.id, running) else {
            return Err(ContainerError::Invalid(format!(
                "container {} is not on the bridge network (network mode {:?})",
                rec.id, rec.spec.host.network_mode
            )));
        };
        let ip: Ipv4Addr = n
            .ip_address
            .parse()
            .map_err(|e| ContainerError::Internal(format!("network.json: {e}")))?;
        self.network
            .connect(SocketAddr::from((ip, port)), timeout)
            .map_err(|e| {
                ContainerError::Conflict(format!(
                    "connecting to {ip}:{port} in container {}: {e}",
                    &rec.id[..12]
                ))
            })
    }

    /// At the end of the service (a core that stops): detaches what no longer runs and, when
    /// no container is left on the bridge, releases a dedicated namespace.
    pub fn shutdown_network(&self) {
        if !self.sweep_network() {
            self.network.release();
        }
    }
}

impl Drop for ContainerService {
    fn drop(&mut self) {
        self.shutdown_network();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_modes() {
        assert!(on_bridge("") && on_bridge("bridge") && on_bridge("default"));
        assert!(!on_bridge("none") && !on_bridge("host") && !on_bridge("container:x"));
    }
}
