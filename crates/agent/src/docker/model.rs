//! The Docker Engine API answers the UI reads, as types: `GET /containers/json` items,
//! `GET /images/json` items, `GET /images/{name}/history` items, `GET /events` messages and
//! `GET /containers/{id}/stats` objects.
//! berthd serialises those answers through these types, and their JSON Schema
//! (`docs/docker-api.schema.json`, generated with `schemars`) is what the UI's TypeScript types
//! are generated from (`ui/scripts/gen-types.mjs` → `ui/src/lib/api/generated/docker.ts`), so
//! the UI's types are what is really sent.
//!
//! Field names are Docker's exactly. Fields are declared in byte order, which is the order the
//! `json!` objects these types replaced were written in (a `serde_json` map is sorted), so the
//! bytes on the wire did not change (`tests::key_order_is_sorted`). A field that dockerd omits
//! is an `Option` skipped when `None`; one it sends as `null` is an `Option` without a skip.

#![allow(non_snake_case)] // Docker's field names, exactly

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

/// One item of `GET /containers/json` (Docker's `ContainerSummary`).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct ContainerSummary {
    /// The command and its arguments, joined with spaces.
    pub Command: String,
    /// When the container was created (Unix seconds).
    pub Created: i64,
    pub HostConfig: SummaryHostConfig,
    /// The full container id (64 hex digits).
    pub Id: String,
    /// The image as the user named it at create.
    pub Image: String,
    /// The image's id ("sha256:…").
    pub ImageID: String,
    pub Labels: BTreeMap<String, String>,
    pub Mounts: Vec<MountPoint>,
    /// The container's name with a leading "/".
    pub Names: Vec<String>,
    pub NetworkSettings: SummaryNetworkSettings,
    /// Published ports and exposed ones without a binding; empty unless it runs.
    pub Ports: Vec<PortSummary>,
    /// The image's size plus the writable layer's (`/system/df`, and `size=1` of
    /// `GET /containers/json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub SizeRootFs: Option<u64>,
    /// The writable layer's size, measured by the core (`/system/df`, `size=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub SizeRw: Option<u64>,
    /// "created", "running", "paused", "restarting", "removing", "exited" or "dead".
    pub State: String,
    /// `docker ps`'s STATUS column: "Up 5 minutes", "Exited (0) 2 hours ago", …
    pub Status: String,
}

/// A `ContainerSummary`'s `HostConfig`.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct SummaryHostConfig {
    pub NetworkMode: String,
}

/// A `ContainerSummary`'s `NetworkSettings`.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct SummaryNetworkSettings {
    /// By network name ("bridge", "host", "none").
    pub Networks: BTreeMap<String, EndpointSettings>,
}

/// A container's endpoint on a network (Docker's `EndpointSettings`); the addresses are empty
/// unless the container runs.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct EndpointSettings {
    pub Aliases: Option<Vec<String>>,
    pub DNSNames: Option<Vec<String>>,
    pub DriverOpts: Option<BTreeMap<String, String>>,
    pub EndpointID: String,
    pub Gateway: String,
    pub GlobalIPv6Address: String,
    pub GlobalIPv6PrefixLen: u32,
    /// Always null: Berth takes no per-endpoint IPAM configuration.
    pub IPAMConfig: Option<Value>,
    pub IPAddress: String,
    pub IPPrefixLen: u8,
    pub IPv6Gateway: String,
    pub Links: Option<Vec<String>>,
    pub MacAddress: String,
    pub NetworkID: String,
}

/// One of a container's mounts (Docker's `MountPoint`, in `docker ps` and inspect).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct MountPoint {
    pub Destination: String,
    /// "local" for volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub Driver: Option<String>,
    pub Mode: String,
    /// The volume's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub Name: Option<String>,
    pub Propagation: String,
    pub RW: bool,
    pub Source: String,
    /// "bind", "volume" or "tmpfs".
    pub Type: String,
}

/// One port of a `ContainerSummary` (Docker's `Port`).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct PortSummary {
    /// The host address of a published port; absent for an exposed port without a binding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub IP: Option<String>,
    pub PrivatePort: u16,
    /// The host port of a published port; absent for an exposed port without a binding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub PublicPort: Option<u16>,
    /// "tcp", "udp" or "sctp".
    pub Type: String,
}

/// One item of `GET /images/json` (Docker's `ImageSummary`).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct ImageSummary {
    /// How many containers use it (`/system/df`); -1 when not counted (`GET /images/json`).
    pub Containers: i64,
    /// When the image was created, from its config (Unix seconds; 0 if unknown).
    pub Created: i64,
    /// The image id ("sha256:…").
    pub Id: String,
    /// The config's labels; null without any.
    pub Labels: Option<BTreeMap<String, String>>,
    pub ParentId: String,
    /// "name@sha256:…"; a dangling image has `<none>@<none>`.
    pub RepoDigests: Vec<String>,
    /// Familiar names ("busybox:latest"); a dangling image has `<none>:<none>`.
    pub RepoTags: Vec<String>,
    /// Bytes shared with other images (`/system/df`); -1 when not computed.
    pub SharedSize: i64,
    /// The layers' unpacked size in bytes.
    pub Size: u64,
    /// The same as `Size` (deprecated in Docker's API).
    pub VirtualSize: u64,
}

/// One item of `GET /images/{name}/history` (newest first, as `docker history`).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct ImageHistoryItem {
    pub Comment: String,
    /// Unix seconds (0 if unknown).
    pub Created: i64,
    /// The instruction that made the layer.
    pub CreatedBy: String,
    /// The image id on the newest entry, `<missing>` on the others.
    pub Id: String,
    /// The layer's unpacked size (0 for an entry without a layer).
    pub Size: u64,
    /// The image's tags on the newest entry; null on the others (and without tags).
    pub Tags: Option<Vec<String>>,
}

/// One message of `GET /events` (Docker's `events.Message`), newline-delimited.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct EventMessage {
    /// "create", "start", "die", "exec_create: sh -c …", "pull", "tag", …
    pub Action: String,
    pub Actor: EventActor,
    /// "container", "image", "volume", "network", …
    pub Type: String,
    /// Legacy (pre-1.22): the image of a container event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Legacy (pre-1.22): the actor's id, on container and image events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Always "local".
    pub scope: String,
    /// Legacy (pre-1.22): the action, on container and image events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Unix seconds.
    pub time: i64,
    /// Unix nanoseconds.
    pub timeNano: i64,
}

/// The object of an event.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct EventActor {
    /// Container events carry `image`, `name` and the container's labels.
    pub Attributes: BTreeMap<String, String>,
    /// A container id, an image id or reference, a volume name, …
    pub ID: String,
}

/// One object of `GET /containers/{id}/stats` (Docker's `StatsResponse`): one sample with the
/// one before it as `precpu_stats`. A container that does not run has zeros, the zero time and
/// empty `memory_stats`/`pids_stats`.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct ContainerStats {
    pub blkio_stats: BlkioStats,
    pub cpu_stats: CpuStats,
    /// The full container id.
    pub id: String,
    pub memory_stats: MemoryStats,
    /// The container's name with a leading "/".
    pub name: String,
    /// By interface, in the container's network namespace; absent without any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networks: Option<BTreeMap<String, NetworkStats>>,
    /// Always 0 (Windows only in Docker).
    pub num_procs: u32,
    pub pids_stats: PidsStats,
    /// The previous sample's CPU figures (zeros without one).
    pub precpu_stats: CpuStats,
    /// The previous sample's time (RFC 3339; `0001-01-01T00:00:00Z` without one).
    pub preread: String,
    /// This sample's time (RFC 3339; `0001-01-01T00:00:00Z` when the container does not run).
    pub read: String,
    /// Always empty (Windows only in Docker).
    pub storage_stats: StorageStats,
}

/// A stats object's `blkio_stats`: only `io_service_bytes_recursive` is filled (cgroup v1 and
/// v2), and only when there is any; the others are null.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct BlkioStats {
    pub io_merged_recursive: Option<Vec<BlkioStatEntry>>,
    pub io_queue_recursive: Option<Vec<BlkioStatEntry>>,
    pub io_service_bytes_recursive: Option<Vec<BlkioStatEntry>>,
    pub io_service_time_recursive: Option<Vec<BlkioStatEntry>>,
    pub io_serviced_recursive: Option<Vec<BlkioStatEntry>>,
    pub io_time_recursive: Option<Vec<BlkioStatEntry>>,
    pub io_wait_time_recursive: Option<Vec<BlkioStatEntry>>,
    pub sectors_recursive: Option<Vec<BlkioStatEntry>>,
}

/// One block I/O counter of a device.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct BlkioStatEntry {
    pub major: u64,
    pub minor: u64,
    /// "read", "write", …
    pub op: String,
    pub value: u64,
}

/// A stats object's `cpu_stats` or `precpu_stats` (nanoseconds).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct CpuStats {
    pub cpu_usage: CpuUsage,
    /// Absent in a sample of a container that does not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online_cpus: Option<u32>,
    /// The host's CPU time; absent in a sample of a container that does not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_cpu_usage: Option<u64>,
    pub throttling_data: ThrottlingData,
}

/// The container's CPU time (nanoseconds).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct CpuUsage {
    /// Per CPU (cgroup v1 only); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percpu_usage: Option<Vec<u64>>,
    pub total_usage: u64,
    pub usage_in_kernelmode: u64,
    pub usage_in_usermode: u64,
}

/// CFS throttling of the container's cgroup.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct ThrottlingData {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
}

/// A stats object's `memory_stats` (bytes); empty when the container does not run.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq, Default)]
pub struct MemoryStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The peak (cgroup v1, or v2's `memory.peak`); absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_usage: Option<u64>,
    /// The cgroup's `memory.stat` counters (`inactive_file`, `cache`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<BTreeMap<String, u64>>,
    /// Including the page cache (`docker stats` subtracts the inactive file pages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<u64>,
}

/// A stats object's `pids_stats`; empty when the container does not run.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq, Default)]
pub struct PidsStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    /// Absent without a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// One interface's counters.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct NetworkStats {
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub rx_errors: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub tx_errors: u64,
    pub tx_packets: u64,
}

/// A stats object's `storage_stats`: always empty.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)] // no fields at all: `additionalProperties: false` in the schema
pub struct StorageStats {}

/// The JSON Schema of these types (`docs/docker-api.schema.json`): each one in `$defs`, as
/// serialised (a field skipped when empty is not required; `null` is in its type).
pub fn schema() -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    generator.subschema_for::<ContainerSummary>();
    generator.subschema_for::<ImageSummary>();
    generator.subschema_for::<ImageHistoryItem>();
    generator.subschema_for::<EventMessage>();
    generator.subschema_for::<ContainerStats>();
    let mut defs = generator.take_definitions(true);
    for def in defs.values_mut() {
        absent_is_not_null(def);
    }
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Berth's Docker Engine API answers",
        "description": "The answers berthd serialises through crates/agent/src/docker/model.rs.",
        "$defs": defs,
    })
}

/// schemars gives an `Option` skipped when `None` the type `[T, "null"]` and leaves it out of
/// `required`; here every field that is not required is one of those (it is absent, never
/// null), so its type is `T` alone.
fn absent_is_not_null(def: &mut Value) {
    let required: Vec<Value> = def["required"].as_array().cloned().unwrap_or_default();
    let Some(props) = def.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, prop) in props.iter_mut() {
        if required.contains(&Value::String(name.clone())) {
            continue;
        }
        if let Some(types) = prop.get("type").and_then(Value::as_array) {
            let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
            prop["type"] = match kept.as_slice() {
                [one] => one.clone(),
                _ => Value::Array(kept),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> EndpointSettings {
        EndpointSettings {
            Aliases: None,
            DNSNames: None,
            DriverOpts: None,
            EndpointID: String::new(),
            Gateway: String::new(),
            GlobalIPv6Address: String::new(),
            GlobalIPv6PrefixLen: 0,
            IPAMConfig: None,
            IPAddress: "10.0.0.2".into(),
            IPPrefixLen: 24,
            IPv6Gateway: String::new(),
            Links: None,
            MacAddress: String::new(),
            NetworkID: "n".into(),
        }
    }

    /// A struct writes its fields in declaration order, a `serde_json::Value` sorted: the two
    /// agree, so the answers are byte for byte what the `json!` objects were.
    fn assert_sorted<T: Serialize>(v: &T) {
        let direct = serde_json::to_string(v).unwrap();
        let sorted = serde_json::to_string(&serde_json::to_value(v).unwrap()).unwrap();
        assert_eq!(direct, sorted);
    }

    #[test]
    fn key_order_is_sorted() {
        let mut networks = BTreeMap::new();
        networks.insert("bridge".to_string(), endpoint());
        let c = ContainerSummary {
            Command: "sh".into(),
            Created: 1,
            HostConfig: SummaryHostConfig {
                NetworkMode: "bridge".into(),
            },
            Id: "id".into(),
            Image: "busybox".into(),
            ImageID: "sha256:x".into(),
            Labels: BTreeMap::from([("a".to_string(), "b".to_string())]),
            Mounts: vec![MountPoint {
                Destination: "/d".into(),
                Driver: Some("local".into()),
                Mode: "z".into(),
                Name: Some("v".into()),
                Propagation: String::new(),
                RW: true,
                Source: "/s".into(),
                Type: "volume".into(),
            }],
            Names: vec!["/n".into()],
            NetworkSettings: SummaryNetworkSettings { Networks: networks },
            Ports: vec![PortSummary {
                IP: Some("127.0.0.1".into()),
                PrivatePort: 80,
                PublicPort: Some(8080),
                Type: "tcp".into(),
            }],
            SizeRootFs: Some(2),
            SizeRw: Some(0),
            State: "running".into(),
            Status: "Up".into(),
        };
        assert_sorted(&c);
        assert_sorted(&ImageSummary {
            Containers: -1,
            Created: 1,
            Id: "sha256:x".into(),
            Labels: Some(BTreeMap::new()),
            ParentId: String::new(),
            RepoDigests: vec![],
            RepoTags: vec!["a:b".into()],
            SharedSize: -1,
            Size: 3,
            VirtualSize: 3,
        });
        assert_sorted(&ImageHistoryItem {
            Comment: String::new(),
            Created: 1,
            CreatedBy: "RUN x".into(),
            Id: "<missing>".into(),
            Size: 0,
            Tags: None,
        });
        assert_sorted(&EventMessage {
            Action: "start".into(),
            Actor: EventActor {
                Attributes: BTreeMap::new(),
                ID: "id".into(),
            },
            Type: "container".into(),
            from: Some("busybox".into()),
            id: Some("id".into()),
            scope: "local".into(),
            status: Some("start".into()),
            time: 1,
            timeNano: 1_000_000_000,
        });
    }

    /// docs/docker-api.schema.json is generated from these types; regenerate it with
    /// `BERTH_UPDATE_SCHEMA=1 cargo test -p berth-agent --lib docker::model::tests::schema_is_fresh`.
    #[test]
    fn schema_is_fresh() {
        crate::schema_file::assert_fresh(
            "docker-api.schema.json",
            &schema(),
            "docker::model::tests::schema_is_fresh",
        );
    }
}
