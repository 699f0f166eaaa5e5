//! Volumes: directories in the core's data root that containers mount, as dockerd's `local`
//! driver keeps them. berthd shapes Docker's JSON; the core validates names, creates, counts
//! users and removes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `docker volume create` (and a volume a container names that does not exist yet).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct VolumeCreate {
    /// "" makes an anonymous volume (a random 64-hex name).
    pub name: String,
    /// "" or "local" (the only driver).
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    /// The driver's options (`-o`).
    pub options: BTreeMap<String, String>,
}

/// A volume as the core knows it (Docker's `Volume` object, plus who uses it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct VolumeInfo {
    pub name: String,
    /// Always "local".
    pub driver: String,
    /// The directory containers mount (`<data root>/volumes/<name>/_data`).
    pub mountpoint: String,
    /// RFC 3339.
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    /// Always "local".
    pub scope: String,
    /// Made for a container without a name of the user's (`-v /dst`, an image's `Volumes`).
    pub anonymous: bool,
    /// The containers (ids) whose mounts name it.
    pub used_by: Vec<String>,
    /// Bytes under the mountpoint, when asked for (`docker system df`).
    pub size: Option<u64>,
}

/// A mount a container asks for in Docker's `HostConfig.Mounts` form (`--mount`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MountSpec {
    /// "bind", "volume" or "tmpfs".
    pub kind: String,
    /// A volume's name ("" for an anonymous one) or a bind's absolute host path.
    pub source: String,
    pub target: String,
    pub read_only: bool,
    /// Volumes: do not fill a new volume with the image's content at the target.
    pub no_copy: bool,
    /// Volumes: labels of a volume this mount creates.
    pub labels: BTreeMap<String, String>,
    /// Binds: "rprivate" (default), "private", "rshared", "shared", "rslave", "slave".
    pub propagation: String,
    /// tmpfs: size in bytes (0: the kernel's default).
    pub tmpfs_size: i64,
    /// tmpfs: the mode bits (0: 1777).
    pub tmpfs_mode: u32,
}

/// One of a container's mounts as inspect shows it (Docker's `MountPoint`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MountPoint {
    /// "bind", "volume" or "tmpfs".
    pub kind: String,
    /// The volume's name ("" for binds).
    pub name: String,
    /// The host (core-side) path.
    pub source: String,
    pub destination: String,
    /// "local" for volumes.
    pub driver: String,
    /// The options as given ("z" for a named volume without any, as dockerd shows it).
    pub mode: String,
    pub rw: bool,
    pub propagation: String,
}
