//! Container messages. berthd translates the Docker API into these: it resolves the image to an
//! id and merges nothing; the core merges the image config with the request, as dockerd does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What `docker create` asks for (the subset of Docker's `Config` + `HostConfig` Berth honours).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ContainerSpec {
    /// Without the leading '/'; the core picks a name when none is given.
    pub name: Option<String>,
    /// The image id ("sha256:…"), resolved by the host.
    pub image_id: String,
    /// What the user typed, shown as `Image` in `docker ps`.
    pub image_ref: String,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    /// "user", "uid", "user:group" or "uid:gid"; empty means the image's.
    pub user: Option<String>,
    /// Added to (and overriding by key) the image's Env.
    pub env: Vec<String>,
    /// Replaces the image's Cmd when set.
    pub cmd: Option<Vec<String>>,
    /// Replaces the image's Entrypoint when set (an empty list clears it).
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub tty: bool,
    pub open_stdin: bool,
    /// Close the container's stdin when the first attached client closes its own.
    #[serde(default)]
    pub stdin_once: bool,
    /// The terminal's first size (rows, cols) with `tty` (Docker's HostConfig.ConsoleSize).
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
    pub host: HostSpec,
    /// Docker's `ExposedPorts` ("80/tcp"), the image's merged in by the host.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Docker's `Config.Volumes` of the request: destinations that get an anonymous volume
    /// (`-v /dst`); the image's are added by the core.
    #[serde(default)]
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct HostSpec {
    /// "none", "host", "bridge" (default).
    pub network_mode: String,
    /// "SRC:DST[:ro]" bind mounts (source on the core's side) and "NAME:DST" volumes.
    pub binds: Vec<String>,
    /// Mount point → options.
    pub tmpfs: BTreeMap<String, String>,
    pub read_only_rootfs: bool,
    /// Bytes; 0 = unlimited.
    pub memory: i64,
    /// Memory + swap in bytes (Docker's `MemorySwap`): 0 = twice `memory`, -1 = unlimited.
    #[serde(default)]
    pub memory_swap: i64,
    /// CPUs × 1e9; 0 = unlimited.
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    pub pids_limit: Option<i64>,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub auto_remove: bool,
    pub restart_policy: RestartPolicy,
    /// `-p`: the requested bindings (host port 0: any free one), as the user gave them.
    #[serde(default)]
    pub port_bindings: Vec<PortBinding>,
    /// `-P`: every exposed port gets a free host port.
    #[serde(default)]
    pub publish_all_ports: bool,
    /// `--mount` (Docker's `HostConfig.Mounts`).
    #[serde(default)]
    pub mounts: Vec<crate::MountSpec>,
    /// `--log-opt` (Docker's `HostConfig.LogConfig.Config` of the json-file driver), as given:
    /// checked by [`LogLimits::from_opts`] when the container is created.
    #[serde(default)]
    pub log_opts: BTreeMap<String, String>,
}

/// How big a container's json-file log grows: it rotates when the next entry would take the
/// file past `max_size` bytes (0: never), keeping `max_files` files, the current one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_size: u64,
    pub max_files: u32,
}

impl LogLimits {
    /// Berth's cap when the container names none: 10 MiB × 3 files.
    pub const DEFAULT: LogLimits = LogLimits {
        max_size: 10 << 20,
        max_files: 3,
    };

    /// The limits of `--log-opt max-size=…`/`max-file=…` as dockerd's json-file driver reads
    /// them: sizes like `512k`, `10m`, `1.5g` (binary multiples), `-1` for no limit; `max-file`
    /// a count of at least 1, only with a `max-size`; without a `max-file`, one file (which is
    /// started afresh at the limit). Neither: [`LogLimits::DEFAULT`]. The attribute options
    /// json-file also accepts (`labels`, `env`, `env-regex`, `tag`) are taken and ignored.
    pub fn from_opts(opts: &BTreeMap<String, String>) -> Result<LogLimits, String> {
        for key in opts.keys() {
            if !["max-size", "max-file", "labels", "env", "env-regex", "tag"]
                .contains(&key.as_str())
            {
                return Err(format!("unknown log opt '{key}' for json-file log driver"));
            }
        }
        if !opts.contains_key("max-size") && !opts.contains_key("max-file") {
            return Ok(LogLimits::DEFAULT);
        }
        let max_size = match opts.get("max-size").map(|s| s.trim()) {
            None | Some("-1") => 0,
            Some(s) => parse_size(s).filter(|n| *n > 0).ok_or_else(|| {
                format!("invalid max-size {s:?}: a size such as 512k, 10m or 1g, or -1")
            })?,
        };
        let max_files = match opts.get("max-file") {
            None => 1,
            Some(s) => s
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("invalid max-file {s:?}: a whole number, at least 1"))?,
        };
        if max_size == 0 && max_files != 1 {
            return Err("max-file can only be set when max-size is set".into());
        }
        Ok(LogLimits {
            max_size,
            max_files,
        })
    }
}

/// `10m`, `1.5G`, `512kb`, `2MiB`, `100` (bytes): binary multiples, as Docker's RAMInBytes.
fn parse_size(s: &str) -> Option<u64> {
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    let bytes = number * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// A container port published on the host. Served by berthd on the host, which forwards each
/// connection over its own [`crate::Channel::PortForward`] stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PortBinding {
    pub container_port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
    /// The host address; "" is berthd's default (127.0.0.1).
    pub host_ip: String,
    /// 0: any free port.
    pub host_port: u16,
}

/// A container's place on the bridge while it runs (Docker's `NetworkSettings`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ContainerNetwork {
    /// The network's name as Docker shows it ("bridge").
    pub network: String,
    pub ip_address: String,
    pub prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
}

/// A connection to a container's port on its own stream: after the handshake the stream
/// carries the connection's bytes both ways. The core connects to the container's address
/// before it answers the hello; a container that is not running, not on the bridge, or whose
/// port refuses is refused in the handshake.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortForward {
    pub container: ContainerRef,
    pub port: u16,
    /// "tcp" (the only one for now).
    pub protocol: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RestartPolicy {
    /// "", "no", "always", "unless-stopped", "on-failure".
    pub name: String,
    pub maximum_retry_count: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    pub status: ContainerStatus,
    pub pid: Option<u32>,
    pub exit_code: Option<i64>,
    /// RFC 3339, or None when never started / not finished.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Why the last start failed, if it did.
    pub error: Option<String>,
    pub restart_count: u64,
    /// The last run ended with the kernel's OOM killer killing a process of the container.
    #[serde(default)]
    pub oom_killed: bool,
}

/// A container as the core knows it: the request, the merged process, the state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerInfo {
    /// 64 hex characters.
    pub id: String,
    pub name: String,
    pub spec: ContainerSpec,
    /// The process after merging image config and request.
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub created: String,
    pub state: ContainerState,
    /// Which OCI runtime runs it ("runc" or "crun").
    pub runtime: String,
    pub log_path: String,
    /// The container's address on the bridge while it runs.
    #[serde(default)]
    pub network: Option<ContainerNetwork>,
    /// The host ports berthd published for the current run (see
    /// [`crate::Request::ContainerPublished`]); empty when not running.
    #[serde(default)]
    pub ports: Vec<PortBinding>,
    /// Binds, volumes and `--mount` tmpfs, as inspect shows them.
    #[serde(default)]
    pub mounts: Vec<crate::MountPoint>,
}

/// Which containers a request means: an id, an id prefix or a name (with or without '/').
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ContainerRef(pub String);

/// Docker's wait conditions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WaitCondition {
    #[default]
    NotRunning,
    NextExit,
    Removed,
}

/// A log stream on its own connection ([`crate::Channel::Logs`]): frames of [`LogFrame`] until
/// the end (or forever with `follow` until the container stops).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogsRequest {
    pub container: ContainerRef,
    pub follow: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Unix seconds (fractional allowed); 0 = from the start.
    pub since: f64,
    pub until: f64,
    /// Last N lines; None = all.
    pub tail: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogFrame {
    /// "stdout" or "stderr".
    pub stream: String,
    /// RFC 3339 with nanoseconds.
    pub time: String,
    /// The bytes of the line, newline included (lossy UTF-8 is not allowed: base64 would be;
    /// Docker's json-file keeps strings, and so do we).
    pub log: String,
}

/// Attach to a container's stdio on its own connection ([`crate::Channel::Attach`]). After the
/// handshake the host writes [`crate::Packet`]s (stdin bytes, the closing of stdin) and the core
/// writes output framed with Docker's stdcopy header (8 bytes: stream, 0, 0, 0, big-endian
/// length) unless the container has a TTY, in which case output is raw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttachRequest {
    pub container: ContainerRef,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Also replay the logs before the live output (`docker attach --logs`).
    pub logs: bool,
}

/// `docker top`: the container's processes, one row per process, columns named by `titles`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ContainerTop {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

/// One network interface's counters, as in Docker's stats.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NetworkCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// One block i/o counter (Docker's `BlkioStatEntry`): op is "read", "write", …
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

/// One sample of a container's resource use, read from its cgroup and network namespace
/// (`container_stats`). berthd turns consecutive samples into Docker's stats (cpu and precpu).
/// Times are nanoseconds, sizes bytes. `running: false` is an empty sample (not running).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StatsSample {
    pub running: bool,
    /// RFC 3339 with nanoseconds.
    pub read: String,
    pub cpu_total: u64,
    pub cpu_kernel: u64,
    pub cpu_user: u64,
    /// Per-CPU usage (cgroup v1 only; empty on v2, as dockerd).
    pub percpu: Vec<u64>,
    /// The machine's CPU time (all CPUs, all modes) since boot, from `/proc/stat`.
    pub system_cpu: u64,
    pub online_cpus: u32,
    pub throttle_periods: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
    pub memory_usage: u64,
    pub memory_max_usage: u64,
    /// The cgroup's limit, or the machine's memory when unlimited.
    pub memory_limit: u64,
    /// `memory.stat` as the kernel names its keys (v1 or v2 names).
    pub memory_stats: BTreeMap<String, u64>,
    pub pids_current: u64,
    /// 0: unlimited.
    pub pids_limit: u64,
    /// Interfaces of the container's network namespace but loopback.
    pub networks: BTreeMap<String, NetworkCounters>,
    pub blkio: Vec<BlkioEntry>,
}

/// One change of a container's file system against its image (`docker diff`): kind 0 is
/// modified, 1 added, 2 deleted (Docker's numbers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct FsChange {
    pub path: String,
    pub kind: u8,
}

/// A tar of a container's file system on its own connection ([`crate::Channel::Export`]): after
/// the welcome the core writes the tar's raw bytes and closes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExportRequest {
    pub container: ContainerRef,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn log_opts_read_like_dockerds_json_file_driver() {
        assert_eq!(LogLimits::from_opts(&opts(&[])), Ok(LogLimits::DEFAULT));
        let l = |p: &[(&str, &str)]| LogLimits::from_opts(&opts(p));
        assert_eq!(
            l(&[("max-size", "10m"), ("max-file", "5")]),
            Ok(LogLimits {
                max_size: 10 << 20,
                max_files: 5
            })
        );
        assert_eq!(l(&[("max-size", "1.5k")]).unwrap().max_size, 1536);
        assert_eq!(l(&[("max-size", "2MiB")]).unwrap().max_size, 2 << 20);
        assert_eq!(l(&[("max-size", "1gb")]).unwrap().max_size, 1 << 30);
        assert_eq!(l(&[("max-size", "100")]).unwrap().max_size, 100);
        // One file without a max-file; -1 means no limit.
        assert_eq!(l(&[("max-size", "1m")]).unwrap().max_files, 1);
        assert_eq!(l(&[("max-size", "-1")]).unwrap().max_size, 0);
        assert_eq!(l(&[("tag", "{{.Name}}")]), Ok(LogLimits::DEFAULT));
        for bad in [
            &[("max-size", "10x")][..],
            &[("max-size", "0")],
            &[("max-size", "m")],
            &[("max-size", "1m"), ("max-file", "0")],
            &[("max-size", "1m"), ("max-file", "two")],
            &[("max-file", "3")],
            &[("compress", "true")],
        ] {
            assert!(l(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            l(&[("mode", "non-blocking")]).unwrap_err(),
            "unknown log opt 'mode' for json-file log driver"
        );
    }
}
