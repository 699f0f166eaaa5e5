//! Container networking: the bridge `berth0` in the core's network namespace, a veth pair and an
//! address per container, and connections from the core to containers (published ports).
//! See `docs/containers.md` ("Networking").
//!
//! The core's network namespace is, in the VM, the guest's own ([`NetnsMode::Current`]); on a
//! Linux host (the direct backend) a dedicated namespace the core creates and holds with a bind
//! mount under its data root ([`NetnsMode::Dedicated`]), so the host's own interfaces, routes and
//! firewall are never touched. Work in a namespace other than the caller's runs on a short-lived
//! thread that entered it (`setns` changes only the calling thread, and pooled threads must not
//! keep a foreign namespace).
//!
//! Each container on the bridge gets a network namespace of its own, created by the core before
//! the runtime runs and bind-mounted at `<bundle>/netns` (the OCI spec names that path): `lo`,
//! and `eth0` (one end of a veth pair whose other end is enslaved to `berth0`) with the
//! container's address, a MAC derived from it as Docker does, and a default route via the
//! bridge. The address is claimed while that file exists; unmounting it frees the address and
//! destroys the pair.

pub mod netlink;
pub mod nft;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use serde::{Deserialize, Serialize};

use netlink::{link_index, Netlink};

/// The bridge's name, as Docker's is `docker0`.
pub const BRIDGE: &str = "berth0";
/// The default subnet of the bridge (the gateway is its first address).
pub const DEFAULT_SUBNET: &str = "172.30.0.0/16";
/// The name of the container's interface.
const CONTAINER_IF: &str = "eth0";
/// The magic number of the nsfs filesystem (namespace files).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An IPv4 subnet: "172.30.0.0/16".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Subnet, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid subnet {s:?}: want ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|e| format!("invalid subnet {s:?}: {e}"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|e| format!("invalid subnet {s:?}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "invalid subnet {s:?}: the prefix must be 8 to 30 bits"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The bridge's own address: the first of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.network)
    }

    /// The lowest address that is neither the network, the gateway, the broadcast address nor
    /// in `used`; `None` when the subnet is full.
    pub fn allocate(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | !self.mask();
        (first..broadcast)
            .map(Ipv4Addr::from)
            .find(|a| !used.contains(a))
    }
}

/// Docker's MAC for an address: 02:42 followed by the four bytes of the IPv4 address.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Where the bridge lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsMode {
    /// The core's own namespace (the VM guest's).
    Current,
    /// A namespace of its own, created on first use and held by a bind mount at this path.
    Dedicated(PathBuf),
}

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub mode: NetnsMode,
    pub subnet: Subnet,
    /// Masquerade traffic from the bridge to the outside (in the VM: out of the guest's
    /// interfaces). Only with [`NetnsMode::Current`].
    pub outbound_nat: bool,
}

impl NetworkConfig {
    /// A dedicated namespace under `data_root`, the default subnet, no NAT: for a core on a
    /// Linux host.
    pub fn dedicated(data_root: &Path) -> NetworkConfig {
        NetworkConfig {
            mode: NetnsMode::Dedicated(data_root.join("network").join("netns")),
            subnet: DEFAULT_SUBNET.parse().expect("valid default subnet"),
            outbound_nat: false,
        }
    }
}

/// What a container got on the bridge (`<bundle>/network.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub bridge: String,
}

pub struct Network {
    config: NetworkConfig,
    /// The dedicated namespace, once opened.
    core_ns: Mutex<Option<Arc<File>>>,
    /// Whether the bridge has been set up by this process.
    ready: Mutex<bool>,
}

impl Network {
    pub fn new(config: NetworkConfig) -> Network {
        Network {
            config,
            core_ns: Mutex::new(None),
            ready: Mutex::new(false),
        }
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The dedicated namespace, opened (or created) on first use; `None` in
    /// [`NetnsMode::Current`].
    fn core_ns(&self) -> io::Result<Option<Arc<File>>> {
        let NetnsMode::Dedicated(path) = &self.config.mode else {
            return Ok(None);
        };
        let mut slot = self.core_ns.lock().expect("netns lock");
        if let Some(f) = slot.as_ref() {
            return Ok(Some(f.clone()));
        }
        let f = match open_ns(path)? {
            Some(f) => f,
            None => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)?;
                }
                new_ns(path)?;
                open_ns(path)?.ok_or_else(|| {
                    io::Error::other(format!(
                        "{} is not a namespace after mounting",
                        path.display()
                    ))
                })?
            }
        };
        let f = Arc::new(f);
        *slot = Some(f.clone());
        Ok(Some(f))
    }

    /// Runs `f` in the core's network namespace.
    pub fn in_core<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        match self.core_ns()? {
            None => f(),
            Some(ns) => in_ns(&ns, f),
        }
    }

    /// Creates the bridge (once per process; one left by an earlier core is reused).
    pub fn ensure_bridge(&self) -> io::Result<()> {
        let mut ready = self.ready.lock().expect("bridge lock");
        if *ready {
            return Ok(());
        }
        let current = self.config.mode == NetnsMode::Current;
        if current {
            load_modules(&["bridge", "veth"]);
        }
        let subnet = self.config.subnet;
        self.in_core(|| {
            let mut nl = Netlink::open()?;
            nl.set_link(link_index("lo")?, true, None, None)?;
            nl.add_bridge(BRIDGE)
                .map_err(|e| annotate(e, "creating the bridge"))?;
            let br = link_index(BRIDGE)?;
            nl.add_address(br, subnet.gateway(), subnet.prefix)
                .map_err(|e| annotate(e, "addressing the bridge"))?;
            nl.set_link(br, true, None, None)?;
            Ok(())
        })?;
        if current && self.config.outbound_nat {
            // Containers reach the outside through the guest's own interfaces.
            if let Err(e) = fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
                tracing::warn!("enabling IPv4 forwarding: {e}");
            }
            load_modules(&["nf_tables", "nf_nat", "nft_chain_nat", "nft_masq"]);
            if let Err(e) = nft::masquerade(subnet, BRIDGE) {
                tracing::warn!(
                    "setting up outbound NAT for {subnet}: {e}; containers cannot reach the outside"
                );
            }
        }
        *ready = true;
        Ok(())
    }

    /// Gives a container its network namespace at `netns` with `ip` on the bridge.
    pub fn attach(
        &self,
        netns: &Path,
        ip: Ipv4Addr,
        hostname_seed: &str,
    ) -> io::Result<Attachment> {
        self.ensure_bridge()?;
        let subnet = self.config.subnet;
        if !subnet.contains(ip) {
            return Err(io::Error::other(format!("{ip} is not in {subnet}")));
        }
        let mac = mac_for(ip);
        // The host end gets a name of its own each time: the pair of an earlier run may still
        // be on its way out (namespaces are destroyed asynchronously).
        let peer = format!(
            "veth{}{:04x}",
            &hostname_seed[..hostname_seed.len().min(6)],
            rand::random::<u16>()
        );
        let core_ns = self.core_ns()?;
        let _ = fs::remove_file(netns);
        new_ns(netns)?;
        let result = (|| {
            let ns = open_ns(netns)?
                .ok_or_else(|| io::Error::other("the container's namespace vanished"))?;
            // The veth pair is made inside the container's namespace with its peer placed in
            // the core's, so no name in the core's namespace is ever "eth0".
            let core_fd = match &core_ns {
                Some(f) => f.try_clone()?,
                None => File::open("/proc/self/ns/net")?,
            };
            in_ns(&ns, || {
                let mut nl = Netlink::open()?;
                nl.set_link(link_index("lo")?, true, None, None)?;
                nl.add_veth(CONTAINER_IF, &peer, Some(core_fd.as_raw_fd()))
                    .map_err(|e| annotate(e, "creating the veth pair"))?;
                let eth = link_index(CONTAINER_IF)?;
                nl.set_link(eth, true, None, Some(mac))?;
                nl.add_address(eth, ip, subnet.prefix)?;
                Ok(())
            })?;
            self.in_core(|| {
                let mut nl = Netlink::open()?;
                let p = link_index(&peer)?;
                let br = link_index(BRIDGE)?;
                nl.set_link(p, true, Some(br), None)
                    .map_err(|e| annotate(e, "attaching the veth to the bridge"))
            })?;
            in_ns(&ns, || {
                let mut nl = Netlink::open()?;
                nl.add_default_route(link_index(CONTAINER_IF)?, subnet.gateway())
                    .map_err(|e| annotate(e, "adding the default route"))
            })?;
            Ok(Attachment {
                ip,
                prefix: subnet.prefix,
                gateway: subnet.gateway(),
                mac: format_mac(&mac),
                bridge: BRIDGE.into(),
            })
        })();
        if result.is_err() {
            detach(netns);
        }
        result
    }

    /// Connects to a container's address from the core's namespace.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.in_core(|| TcpStream::connect_timeout(&addr, timeout))
    }

    /// Unmounts the dedicated namespace (nothing in [`NetnsMode::Current`]): the bridge and
    /// whatever is left on it go with it. Only when no container is attached.
    pub fn release(&self) {
        let NetnsMode::Dedicated(path) = &self.config.mode else {
            return;
        };
        self.core_ns.lock().expect("netns lock").take();
        *self.ready.lock().expect("bridge lock") = false;
        detach(path);
    }
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Loads kernel modules that are not there yet (in the VM the guest carries them for
/// `modprobe`); failures are left to the step that needs the module to report.
fn load_modules(names: &[&str]) {
    for m in names {
        if Path::new("/sys/module").join(m).exists() {
            continue;
        }
        match std::process::Command::new("modprobe")
            .arg(m)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::debug!("modprobe {m}: {s}"),
            Err(e) => tracing::debug!("modprobe {m}: {e}"),
        }
    }
}

/// Opens `path` when it is a namespace file (a bind mount of one); `None` when it is missing
/// or something else.
fn open_ns(path: &Path) -> io::Result<Option<File>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: statfs is plain data; fstatfs fills it for a valid descriptor.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is open and `st` is a valid statfs to fill.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    Ok((magic == NSFS_MAGIC).then_some(f))
}

/// Creates a new network namespace and bind-mounts it at `path` (an empty file is created).
fn new_ns(path: &Path) -> io::Result<()> {
    File::create(path)?;
    let path = path.to_path_buf();
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                io::Error::other(format!(
                    "bind-mounting a network namespace at {}: {e}",
                    path.display()
                ))
            })
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Runs `f` on a new thread that entered the network namespace `ns`.
pub fn in_ns<T: Send>(ns: &File, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Unmounts and removes a namespace file made by [`new_ns`]; the namespace goes away with its
/// last user (for a container: its processes, gone by now).
pub fn detach(path: &Path) {
    if let Err(e) = umount2(path, MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            tracing::warn!("unmounting {}: {e}", path.display());
        }
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing {}: {e}", path.display()),
    }
}

/// Whether `path` is a mounted namespace file.
pub fn is_attached(path: &Path) -> bool {
    matches!(open_ns(path), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_allocate_in_order() {
        let s: Subnet = "172.30.0.0/16".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(s.to_string(), "172.30.0.0/16");
        // A host address is normalised to its network.
        assert_eq!(
            "10.1.2.3/24".parse::<Subnet>().unwrap().to_string(),
            "10.1.2.0/24"
        );
        assert!("10.0.0.0".parse::<Subnet>().is_err());
        assert!("10.0.0.0/31".parse::<Subnet>().is_err());
        assert!("10.0.0.0/x".parse::<Subnet>().is_err());
        assert!("300.0.0.0/16".parse::<Subnet>().is_err());

        let mut used = HashSet::new();
        let a = s.allocate(&used).unwrap();
        assert_eq!(a, Ipv4Addr::new(172, 30, 0, 2));
        used.insert(a);
        used.insert(Ipv4Addr::new(172, 30, 0, 3));
        assert_eq!(s.allocate(&used), Some(Ipv4Addr::new(172, 30, 0, 4)));
        // A freed address is handed out again.
        used.remove(&a);
        assert_eq!(s.allocate(&used), Some(a));
        assert!(s.contains(a) && !s.contains(Ipv4Addr::new(172, 31, 0, 2)));
    }

    #[test]
    fn a_full_subnet_has_nothing_left() {
        let s: Subnet = "10.9.0.0/30".parse().unwrap();
        // .0 network, .1 gateway, .3 broadcast: only .2.
        let mut used = HashSet::new();
        assert_eq!(s.allocate(&used), Some(Ipv4Addr::new(10, 9, 0, 2)));
        used.insert(Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(s.allocate(&used), None);
    }

    #[test]
    fn macs_are_dockers() {
        let m = mac_for(Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(format_mac(&m), "02:42:ac:11:00:02");
    }

    /// Root only: a dedicated namespace with the bridge, two attached namespaces that reach
    /// each other, addresses freed on detach, nothing left mounted after release.
    #[test]
    fn bridge_and_veths_in_a_dedicated_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let net = Network::new(NetworkConfig::dedicated(t.path()));
        let a = t.path().join("a");
        let b = t.path().join("b");
        let ia = net
            .attach(&a, Ipv4Addr::new(172, 30, 0, 2), "aaaaaa")
            .unwrap();
        let ib = net
            .attach(&b, Ipv4Addr::new(172, 30, 0, 3), "bbbbbb")
            .unwrap();
        assert_eq!(ia.mac, "02:42:ac:1e:00:02");
        assert_eq!(ib.gateway, Ipv4Addr::new(172, 30, 0, 1));
        assert!(is_attached(&a) && is_attached(&b));
        // A listener in b, reached from a (across the bridge) and from the core's namespace.
        let bns = open_ns(&b).unwrap().unwrap();
        let listener = in_ns(&bns, || std::net::TcpListener::bind("172.30.0.3:7000")).unwrap();
        let ans = open_ns(&a).unwrap().unwrap();
        in_ns(&ans, || {
            TcpStream::connect_timeout(&"172.30.0.3:7000".parse().unwrap(), Duration::from_secs(5))
        })
        .unwrap();
        listener.accept().unwrap();
        net.connect("172.30.0.3:7000".parse().unwrap(), Duration::from_secs(5))
            .unwrap();
        listener.accept().unwrap();
        drop(listener);
        detach(&a);
        detach(&b);
        assert!(!a.exists() && !b.exists());
        net.release();
        let ns_path = t.path().join("network/netns");
        assert!(!ns_path.exists());
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&t.path().display().to_string()),
            "{mounts}"
        );
    }
}
