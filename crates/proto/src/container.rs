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
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
    pub host: HostSpec,
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
}

/// Which containers a request means: an id, an id prefix or a name (with or without '/').
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
/// handshake the stream is raw: the host writes stdin bytes, the core writes output framed with
/// Docker's stdcopy header (8 bytes: stream, 0, 0, 0, big-endian length) unless the container
/// has a TTY, in which case output is raw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttachRequest {
    pub container: ContainerRef,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Also replay the logs before the live output (`docker attach --logs`).
    pub logs: bool,
}
