//! The OCI runtime `config.json` of a container: Docker's defaults (mounts, capabilities,
//! masked and read-only paths, namespaces) with the request's changes (privileged, cap add/drop,
//! binds, tmpfs, read-only rootfs, cgroup limits). Pure: it writes nothing.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use super::process::{process_env, ResolvedUser};
use super::store::ContainerRecord;

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability Linux defines (as of 5.9), for `--privileged` and `--cap-add ALL`.
pub const ALL_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Paths Docker hides from unprivileged containers.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only in unprivileged containers.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// a capability name Linux does not define
    #[error("unknown capability: {0:?}")]
    Capability(String),
    /// a bind that is not "SRC:DST[:OPTIONS]"
    #[error("invalid volume specification: {0:?}")]
    Bind(String),
    /// a volume name where a host path was expected
    #[error("{0:?} names a volume, not a host path")]
    NamedVolume(String),
    /// a mount dockerd would refuse (its message)
    #[error("{0}")]
    Mount(String),
    /// resource limits dockerd would refuse (its message)
    #[error("{0}")]
    Resources(String),
    /// a seccomp profile that cannot be used (its message)
    #[error("{0}")]
    Seccomp(String),
    /// a mount destination that is not absolute
    #[error("invalid mount destination {0:?}: it must be an absolute path")]
    Destination(String),
    /// a network mode Berth does not have
    #[error("network mode {0:?} is not supported yet (none, host and bridge are)")]
    Network(String),
    /// the oci-spec builders refused a value
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// A bind mount from `HostSpec.binds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
    pub propagation: String,
}

/// Parses "SRC:DST[:OPTIONS]" (options: ro, rw, z, Z, nocopy and a propagation mode).
pub fn parse_bind(b: &str) -> Result<Bind, SpecError> {
    let parts: Vec<&str> = b.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => return Err(SpecError::Bind(b.to_string())),
    };
    if src.is_empty() || dst.is_empty() {
        return Err(SpecError::Bind(b.to_string()));
    }
    if !src.starts_with('/') {
        return Err(SpecError::NamedVolume(b.to_string()));
    }
    if !dst.starts_with('/') {
        return Err(SpecError::Destination(dst.to_string()));
    }
    let mut bind = Bind {
        source: PathBuf::from(src),
        destination: dst.to_string(),
        read_only: false,
        propagation: "rprivate".into(),
    };
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => bind.read_only = true,
            "rw" => bind.read_only = false,
            "z" | "Z" | "nocopy" => {}
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                bind.propagation = o.to_string()
            }
            _ => return Err(SpecError::Bind(b.to_string())),
        }
    }
    Ok(bind)
}

fn cap_name(c: &str) -> String {
    let u = c.trim().to_ascii_uppercase();
    u.strip_prefix("CAP_").map(str::to_string).unwrap_or(u)
}

/// The capability names (without "CAP_") a container gets, as Docker computes them.
pub fn capabilities(
    privileged: bool,
    add: &[String],
    drop: &[String],
) -> Result<Vec<String>, SpecError> {
    let add: Vec<String> = add.iter().map(|c| cap_name(c)).collect();
    let drop: Vec<String> = drop.iter().map(|c| cap_name(c)).collect();
    for c in add.iter().chain(&drop) {
        if c != "ALL" && !ALL_CAPS.contains(&c.as_str()) {
            return Err(SpecError::Capability(format!("CAP_{c}")));
        }
    }
    // "All" is what this process may hand on (its bounding set), as dockerd does: a core
    // without CAP_SYS_RESOURCE (a restricted host) would otherwise fail every privileged start.
    let bounding = bounding_set();
    let all: Vec<&str> = ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .map(|(_, c)| *c)
        .collect();
    if privileged {
        return Ok(all.iter().map(|c| c.to_string()).collect());
    }
    let base: &[&str] = if add.iter().any(|c| c == "ALL") {
        &all
    } else {
        DEFAULT_CAPS
    };
    let mut caps: Vec<String> = if drop.iter().any(|c| c == "ALL") {
        vec![]
    } else {
        base.iter()
            .filter(|c| !drop.iter().any(|d| d == *c))
            .map(|c| c.to_string())
            .collect()
    };
    for c in add.iter().filter(|c| *c != "ALL") {
        if !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    Ok(caps)
}

/// The capability bounding set of this process (`CapBnd` in /proc/self/status); every
/// capability when it cannot be read. `ALL_CAPS[n]` is capability number `n`.
fn bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// Everything the spec needs beyond the record.
pub struct SpecInput<'a> {
    pub record: &'a ContainerRecord,
    pub user: &'a ResolvedUser,
    /// The container's directory, holding `hosts`, `hostname` and `resolv.conf`.
    pub bundle: &'a Path,
    /// RLIMIT_NOFILE for the process (soft = hard).
    pub nofile: u64,
    /// A pure cgroup v2 host: the container gets its own cgroup namespace.
    pub cgroup_v2: bool,
    /// The kernel limits memory + swap (v1 `memory.memsw.*`; v2 `memory.swap.max`).
    pub swap_limit: bool,
}

/// Builds the spec; also returns warnings about requested options that are ignored.
pub fn build(input: &SpecInput) -> Result<(Spec, Vec<String>), SpecError> {
    let rec = input.record;
    let host = &rec.spec.host;
    let mut warnings = Vec::new();
    let mut no_new_privileges = false;
    for o in &host.security_opt {
        match o.as_str() {
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true" => {
                no_new_privileges = true
            }
            "no-new-privileges:false" | "no-new-privileges=false" => no_new_privileges = false,
            // The filter itself is `seccomp::for_container`'s.
            o if o.starts_with("seccomp=") || o.starts_with("seccomp:") => {}
            o if o.starts_with("apparmor=") || o.starts_with("label=") => {}
            other => warnings.push(format!("security option {other:?} is ignored")),
        }
    }

    let cap_names = capabilities(host.privileged, &host.cap_add, &host.cap_drop)?;
    let seccomp = super::seccomp::for_container(host.privileged, &host.security_opt, &cap_names)
        .map_err(SpecError::Seccomp)?;
    let caps: Capabilities = cap_names
        .iter()
        .filter_map(|c| c.parse::<Capability>().ok())
        .collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()?;
    let user = UserBuilder::default()
        .uid(input.user.uid)
        .gid(input.user.gid)
        .additional_gids(input.user.additional_gids.clone())
        .build()?;
    let mut env = process_env(&rec.process.env, &rec.process.hostname, &input.user.home);
    if rec.spec.tty {
        // As dockerd: a terminal is an xterm unless the container says otherwise.
        if !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
    }
    let mut process = ProcessBuilder::default()
        .terminal(rec.spec.tty)
        .args(rec.process.args.clone())
        .env(env)
        .cwd(rec.process.working_dir.clone())
        .user(user)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(input.nofile)
            .hard(input.nofile)
            .build()?])
        .no_new_privileges(no_new_privileges)
        .build()?;
    if let (true, Some((rows, cols))) = (rec.spec.tty, rec.spec.console_size) {
        // The terminal's first size (HostConfig.ConsoleSize), before any resize arrives.
        process.set_console_size(Some(
            oci_spec::runtime::BoxBuilder::default()
                .height(u64::from(rows))
                .width(u64::from(cols))
                .build()?,
        ));
    }

    let mounts = mounts(input)?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    // A bridge container joins the namespace the core prepares at start (`<bundle>/netns`,
    // see `network.rs`); `none` gets a new one with only loopback.
    let mut netns_path = None;
    match host.network_mode.as_str() {
        "host" => {}
        "" | "default" | "bridge" => {
            namespaces.push(LinuxNamespaceType::Network);
            netns_path = Some(input.bundle.join(super::network::NETNS_FILE));
        }
        "none" => namespaces.push(LinuxNamespaceType::Network),
        other => return Err(SpecError::Network(other.to_string())),
    }
    if input.cgroup_v2 {
        namespaces.push(LinuxNamespaceType::Cgroup);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|typ| {
            let mut b = LinuxNamespaceBuilder::default().typ(typ);
            if typ == LinuxNamespaceType::Network {
                if let Some(p) = &netns_path {
                    b = b.path(p.clone());
                }
            }
            b.build()
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(host.privileged)
            .access("rwm")
            .build()?]);
    check_memory(host.memory, host.memory_swap)?;
    if host.memory > 0 {
        let mut memory = LinuxMemoryBuilder::default().limit(host.memory);
        if input.swap_limit {
            // Docker's MemorySwap (memory + swap): unset is twice the memory, -1 unlimited.
            memory = memory.swap(match host.memory_swap {
                0 => host.memory.saturating_mul(2),
                s => s,
            });
        }
        resources = resources.memory(memory.build()?);
    }
    if host.nano_cpus > 0 || host.cpu_shares > 0 {
        let mut cpu = LinuxCpuBuilder::default();
        if host.nano_cpus > 0 {
            let period: u64 = 100_000;
            cpu = cpu
                .period(period)
                .quota(host.nano_cpus.saturating_mul(period as i64) / 1_000_000_000);
        }
        if host.cpu_shares > 0 {
            cpu = cpu.shares(host.cpu_shares as u64);
        }
        resources = resources.cpu(cpu.build()?);
    }
    if let Some(limit) = host.pids_limit.filter(|l| *l > 0) {
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    let (masked, readonly): (Vec<String>, Vec<String>) = if host.privileged {
        (vec![], vec![])
    } else {
        (
            MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
        )
    };
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build()?)
        .cgroups_path(PathBuf::from(format!("/berth/{}", rec.id)))
        .masked_paths(masked)
        .readonly_paths(readonly)
        .build()?;
    linux.set_seccomp(seccomp);

    let mut spec = Spec::default();
    spec.set_version("1.0.2".into());
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(host.read_only_rootfs)
            .build()?,
    ));
    spec.set_process(Some(process));
    spec.set_hostname(Some(rec.process.hostname.clone()));
    spec.set_domainname(rec.spec.domainname.clone().filter(|d| !d.is_empty()));
    spec.set_mounts(Some(mounts));
    spec.set_annotations(None);
    spec.set_linux(Some(linux));
    Ok((spec, warnings))
}

/// dockerd's checks of `-m` and `--memory-swap`.
pub fn check_memory(memory: i64, swap: i64) -> Result<(), SpecError> {
    if memory > 0 && memory < 6 << 20 {
        return Err(SpecError::Resources(
            "Minimum memory limit allowed is 6MB".into(),
        ));
    }
    if swap > 0 && memory == 0 {
        return Err(SpecError::Resources(
            "You should always set the Memory limit when using Memoryswap limit, see usage".into(),
        ));
    }
    if swap > 0 && swap < memory {
        return Err(SpecError::Resources(
            "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
        ));
    }
    Ok(())
}

fn mount(dst: &str, typ: &str, src: &str, opts: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn mounts(input: &SpecInput) -> Result<Vec<Mount>, SpecError> {
    let host = &input.record.spec.host;
    let mut user = Vec::new();
    for (dst, opts) in &host.tmpfs {
        if !dst.starts_with('/') {
            return Err(SpecError::Destination(dst.clone()));
        }
        let mut o = vec!["nosuid", "noexec", "nodev"];
        o.extend(opts.split(',').filter(|o| !o.is_empty()));
        user.push(mount(dst, "tmpfs", "tmpfs", &o)?);
    }
    // Parents before children (`/a` before `/a/b`), or a later mount would hide an earlier.
    let mut planned: Vec<&super::mounts::ContainerMount> = input.record.mounts.iter().collect();
    planned.sort_by_key(|m| Path::new(&m.destination).components().count());
    for m in planned {
        if m.kind == "tmpfs" {
            let o: Vec<&str> = m.tmpfs_options.iter().map(String::as_str).collect();
            user.push(mount(&m.destination, "tmpfs", "tmpfs", &o)?);
            continue;
        }
        let src = m.source.display().to_string();
        let propagation = if m.propagation.is_empty() {
            "rprivate"
        } else {
            m.propagation.as_str()
        };
        let o = ["rbind", propagation, if m.read_only { "ro" } else { "rw" }];
        user.push(mount(&m.destination, "bind", &src, &o)?);
    }
    let taken = |d: &str| user.iter().any(|m| m.destination() == Path::new(d));
    let bundle = |f: &str| input.bundle.join(f).display().to_string();
    let sys_opts: &[&str] = if host.privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let defaults = [
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount("/sys", "sysfs", "sysfs", sys_opts)?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/etc/resolv.conf",
            "bind",
            &bundle("resolv.conf"),
            &["rbind", "rprivate"],
        )?,
        mount(
            "/etc/hostname",
            "bind",
            &bundle("hostname"),
            &["rbind", "rprivate"],
        )?,
        mount(
            "/etc/hosts",
            "bind",
            &bundle("hosts"),
            &["rbind", "rprivate"],
        )?,
    ];
    let mut out: Vec<Mount> = defaults
        .into_iter()
        .filter(|m| !taken(&m.destination().display().to_string()))
        .collect();
    out.extend(user);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::store::ProcessConfig;
    use berth_proto::{ContainerSpec, HostSpec};

    fn record(host: HostSpec) -> ContainerRecord {
        let mounts = crate::container::mounts::plan(
            &ContainerSpec {
                host: host.clone(),
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        ContainerRecord {
            id: "ab".repeat(32),
            name: "x".into(),
            spec: ContainerSpec {
                image_id: "sha256:x".into(),
                host,
                ..Default::default()
            },
            process: ProcessConfig {
                args: vec!["echo".into(), "hi".into()],
                env: vec!["A=1".into()],
                working_dir: "/w".into(),
                user: "".into(),
                stop_signal: "SIGTERM".into(),
                hostname: "abab".into(),
            },
            created: "2026-01-01T00:00:00Z".into(),
            runtime: "runc".into(),
            layers: vec![],
            mounts,
        }
    }

    fn json_of(host: HostSpec) -> serde_json::Value {
        let rec = record(host);
        let user = ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10],
            home: "/home/a".into(),
        };
        let (spec, _) = build(&SpecInput {
            record: &rec,
            user: &user,
            bundle: Path::new("/b"),
            nofile: 20000,
            cgroup_v2: false,
            swap_limit: true,
        })
        .unwrap();
        serde_json::to_value(&spec).unwrap()
    }

    fn caps_of(v: &serde_json::Value) -> Vec<String> {
        let mut c: Vec<String> = v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        c.sort();
        c
    }

    #[test]
    fn defaults_are_dockers() {
        let v = json_of(HostSpec::default());
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["process"]["args"], serde_json::json!(["echo", "hi"]));
        assert_eq!(v["process"]["cwd"], "/w");
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(
            v["process"]["user"]["additionalGids"],
            serde_json::json!([10])
        );
        assert_eq!(
            v["process"]["env"],
            serde_json::json!([
                format!("PATH={}", crate::container::process::DEFAULT_PATH),
                "HOSTNAME=abab",
                "A=1",
                "HOME=/home/a"
            ])
        );
        assert_eq!(v["process"]["rlimits"][0]["hard"], 20000);
        assert_eq!(v["hostname"], "abab");
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["root"]["readonly"], false);
        let caps = caps_of(&v);
        assert_eq!(caps.len(), DEFAULT_CAPS.len());
        assert!(caps.contains(&"CAP_NET_BIND_SERVICE".to_string()));
        assert!(v["process"]["capabilities"]["inheritable"]
            .as_array()
            .unwrap()
            .is_empty());
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(v["linux"]["namespaces"][4]["path"], "/b/netns");
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/etc/hosts",
        ] {
            assert!(dests.contains(&d), "{d} in {dests:?}");
        }
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("/proc/kcore")));
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], false);
        assert!(v["linux"]["resources"].get("memory").is_none());
    }

    #[test]
    fn host_options_change_the_spec() {
        let mut host = HostSpec {
            network_mode: "host".into(),
            memory: 64 << 20,
            nano_cpus: 1_500_000_000,
            cpu_shares: 512,
            pids_limit: Some(50),
            read_only_rootfs: true,
            cap_add: vec!["sys_admin".into()],
            cap_drop: vec!["CAP_CHOWN".into()],
            binds: vec!["/data:/data:ro".into(), "/x:/dev/shm".into()],
            ..Default::default()
        };
        host.tmpfs.insert("/run".into(), "size=1m".into());
        let v = json_of(host.clone());
        let caps = caps_of(&v);
        assert!(caps.contains(&"CAP_SYS_ADMIN".into()) && !caps.contains(&"CAP_CHOWN".into()));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 150_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 512);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 50);
        assert_eq!(v["root"]["readonly"], true);
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"));
        let mounts = v["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["source"], "/data");
        assert!(data["options"].as_array().unwrap().contains(&"ro".into()));
        let shm: Vec<_> = mounts
            .iter()
            .filter(|m| m["destination"] == "/dev/shm")
            .collect();
        assert_eq!(shm.len(), 1, "a user mount replaces the default");
        assert_eq!(shm[0]["type"], "bind");
        let run = mounts.iter().find(|m| m["destination"] == "/run").unwrap();
        assert_eq!(run["type"], "tmpfs");
        assert!(run["options"]
            .as_array()
            .unwrap()
            .contains(&"size=1m".into()));

        host.privileged = true;
        let v = json_of(host);
        assert_eq!(
            caps_of(&v).len(),
            capabilities(true, &[], &[]).unwrap().len()
        );
        assert!(caps_of(&v).len() > DEFAULT_CAPS.len());
        assert!(v["linux"]["maskedPaths"].as_array().unwrap().is_empty());
        assert!(v["linux"].get("seccomp").is_none(), "privileged: no filter");
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], true);
    }

    #[test]
    fn cap_rules() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            capabilities(false, &[], &s(&["ALL"])).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            capabilities(false, &s(&["NET_ADMIN"]), &s(&["ALL"])).unwrap(),
            ["NET_ADMIN"]
        );
        // ALL is every capability this process may hand on.
        let bounding = bounding_set();
        let expected = (0..ALL_CAPS.len())
            .filter(|bit| bounding & (1u64 << bit) != 0)
            .count();
        assert_eq!(
            capabilities(false, &s(&["ALL"]), &[]).unwrap().len(),
            expected
        );
        assert_eq!(capabilities(true, &[], &[]).unwrap().len(), expected);
        assert!(matches!(
            capabilities(false, &s(&["CAP_NOPE"]), &[]),
            Err(SpecError::Capability(c)) if c == "CAP_NOPE"
        ));
        // Every name must be one oci-spec knows, or it would be silently lost.
        for c in ALL_CAPS {
            assert!(c.parse::<Capability>().is_ok(), "{c}");
        }
    }

    #[test]
    fn binds_parse() {
        let b = parse_bind("/a:/b:ro,rshared").unwrap();
        assert_eq!(b.source, Path::new("/a"));
        assert!(b.read_only);
        assert_eq!(b.propagation, "rshared");
        assert!(matches!(
            parse_bind("vol:/b"),
            Err(SpecError::NamedVolume(_))
        ));
        assert!(matches!(parse_bind("/a"), Err(SpecError::Bind(_))));
        assert!(matches!(parse_bind("/a:b"), Err(SpecError::Destination(_))));
        assert!(matches!(parse_bind("/a:/b:bogus"), Err(SpecError::Bind(_))));
        let rec = record(HostSpec {
            network_mode: "container:other".into(),
            ..Default::default()
        });
        let user = ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/".into(),
        };
        let r = build(&SpecInput {
            record: &rec,
            user: &user,
            bundle: Path::new("/b"),
            nofile: 1024,
            cgroup_v2: true,
            swap_limit: true,
        });
        assert!(matches!(r, Err(SpecError::Network(_))));
    }
}
