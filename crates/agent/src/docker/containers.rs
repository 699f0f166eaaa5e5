//! Container routes: create, start, stop, kill, wait, remove, list, inspect, logs, attach.
//! berthd translates; the core (which merges the image config and runs the OCI runtime) decides.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_proto::{
    ContainerInfo, ContainerRef, ContainerSpec, ContainerStatus, HostSpec, MountSpec, Request,
    Response, RestartPolicy, WaitCondition,
};
use bytes::Bytes;
use hyper::{header, Request as HttpRequest, StatusCode};
use serde_json::{json, Value};

use super::model::{ContainerSummary, MountPoint, SummaryHostConfig};
use super::{empty, json, strings, unexpected, ApiError, ApiResult, Query};
use crate::daemon::Daemon;
use crate::names::{familiar, selector};

/// Docker's Cmd/Entrypoint may be a list or (from old clients) a string.
fn command(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(vec![s.clone()]),
        other => Some(strings(other)),
    }
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// A JSON object of strings (Labels, Tmpfs) as a map; anything else is empty.
fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Docker's `HostConfig.Mounts` (`--mount`). Volume drivers other than `local` do not exist.
fn mount_specs(v: &Value) -> Result<Vec<MountSpec>, ApiError> {
    let Some(list) = v.as_array() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for m in list {
        let source = m["Source"].as_str().unwrap_or("").to_string();
        let driver = &m["VolumeOptions"]["DriverConfig"];
        let name = driver["Name"].as_str().unwrap_or("");
        if !matches!(name, "" | "local") {
            return Err(ApiError::not_found(format!(
                "create {source}: error looking up volume plugin {name}: plugin \"{name}\" not found"
            )));
        }
        if let Some(key) = driver["Options"].as_object().and_then(|o| o.keys().next()) {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "create {source}: the local driver's options are not supported yet ({key:?})"
                ),
            ));
        }
        out.push(MountSpec {
            kind: m["Type"].as_str().unwrap_or("").to_string(),
            source,
            target: m["Target"].as_str().unwrap_or("").to_string(),
            read_only: m["ReadOnly"].as_bool().unwrap_or(false),
            no_copy: m["VolumeOptions"]["NoCopy"].as_bool().unwrap_or(false),
            labels: string_map(&m["VolumeOptions"]["Labels"]),
            propagation: m["BindOptions"]["Propagation"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            tmpfs_size: m["TmpfsOptions"]["SizeBytes"].as_i64().unwrap_or(0),
            tmpfs_mode: m["TmpfsOptions"]["Mode"].as_u64().unwrap_or(0) as u32,
        });
    }
    Ok(out)
}

/// Docker's `MountPoint`s of a container (inspect's and `docker ps`'s `Mounts`).
fn mount_points(c: &ContainerInfo) -> Vec<MountPoint> {
    let some = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
    c.mounts
        .iter()
        .map(|m| MountPoint {
            Destination: m.destination.clone(),
            Driver: some(&m.driver),
            Mode: m.mode.clone(),
            Name: some(&m.name),
            Propagation: m.propagation.clone(),
            RW: m.rw,
            Source: m.source.clone(),
            Type: m.kind.clone(),
        })
        .collect()
}

/// `HostConfig.Mounts` as given (null without any, as dockerd).
fn host_mounts(h: &HostSpec) -> Value {
    if h.mounts.is_empty() {
        return Value::Null;
    }
    h.mounts
        .iter()
        .map(|m| {
            let mut v = json!({ "Type": m.kind, "Target": m.target });
            if !m.source.is_empty() {
                v["Source"] = json!(m.source);
            }
            if m.read_only {
                v["ReadOnly"] = json!(true);
            }
            if m.kind == "volume" {
                v["VolumeOptions"] = json!({ "NoCopy": m.no_copy, "Labels": m.labels });
            }
            v
        })
        .collect()
}

/// The create body (Docker's Config with HostConfig inside) as a [`ContainerSpec`].
/// `--log-driver`/`--log-opt` (Docker's `HostConfig.LogConfig`): Berth keeps json-file logs,
/// capped by default (`berth_proto::LogLimits`); the options are checked here.
fn log_opts(v: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    match v["Type"].as_str().unwrap_or("") {
        "" | "json-file" => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "logging driver {other:?} is not supported: Berth keeps json-file logs \
                 (rotated with --log-opt max-size=… max-file=…)"
            )))
        }
    }
    let opts = string_map(&v["Config"]);
    berth_proto::LogLimits::from_opts(&opts).map_err(ApiError::bad_request)?;
    Ok(opts)
}

pub fn spec_from_body(
    body: &Value,
    name: Option<String>,
    image_id: String,
) -> Result<ContainerSpec, ApiError> {
    let h = &body["HostConfig"];
    let labels = string_map(&body["Labels"]);
    let tmpfs = string_map(&h["Tmpfs"]);
    let network_mode = match h["NetworkMode"].as_str().unwrap_or("") {
        "" | "default" => "bridge".to_string(),
        m => m.to_string(),
    };
    if !["bridge", "none", "host"].contains(&network_mode.as_str()) {
        return Err(ApiError::bad_request(format!(
            "network {network_mode} not found"
        )));
    }
    let port_bindings =
        crate::ports::parse_bindings(&h["PortBindings"]).map_err(ApiError::bad_request)?;
    let mounts = mount_specs(&h["Mounts"])?;
    let log_opts = log_opts(&h["LogConfig"])?;
    if let Some(b) = port_bindings.iter().find(|b| b.protocol != "tcp") {
        return Err(ApiError::bad_request(format!(
            "publishing {} ports is not supported yet ({}): only TCP ports can be published",
            b.protocol,
            crate::ports::port_key(b.container_port, &b.protocol)
        )));
    }
    // Docker's ExposedPorts include the published ones; the image's are added by create().
    let mut exposed =
        crate::ports::exposed_keys(&body["ExposedPorts"]).map_err(ApiError::bad_request)?;
    for b in &port_bindings {
        exposed.insert(crate::ports::port_key(b.container_port, &b.protocol));
    }
    Ok(ContainerSpec {
        name,
        image_id,
        image_ref: body["Image"].as_str().unwrap_or("").to_string(),
        hostname: opt_str(&body["Hostname"]),
        domainname: opt_str(&body["Domainname"]),
        user: opt_str(&body["User"]),
        env: strings(&body["Env"]),
        cmd: command(&body["Cmd"]),
        entrypoint: command(&body["Entrypoint"]),
        working_dir: opt_str(&body["WorkingDir"]),
        labels,
        tty: body["Tty"].as_bool().unwrap_or(false),
        open_stdin: body["OpenStdin"].as_bool().unwrap_or(false),
        stdin_once: body["StdinOnce"].as_bool().unwrap_or(false),
        console_size: super::exec::console_size(&h["ConsoleSize"]),
        stop_signal: opt_str(&body["StopSignal"]),
        stop_timeout: body["StopTimeout"].as_i64(),
        host: HostSpec {
            network_mode,
            binds: strings(&h["Binds"]),
            tmpfs,
            read_only_rootfs: h["ReadonlyRootfs"].as_bool().unwrap_or(false),
            memory: h["Memory"].as_i64().unwrap_or(0),
            memory_swap: h["MemorySwap"].as_i64().unwrap_or(0),
            nano_cpus: h["NanoCpus"].as_i64().unwrap_or(0),
            cpu_shares: h["CpuShares"].as_i64().unwrap_or(0),
            pids_limit: h["PidsLimit"].as_i64().filter(|p| *p > 0),
            privileged: h["Privileged"].as_bool().unwrap_or(false),
            cap_add: strings(&h["CapAdd"]),
            cap_drop: strings(&h["CapDrop"]),
            security_opt: strings(&h["SecurityOpt"]),
            auto_remove: h["AutoRemove"].as_bool().unwrap_or(false),
            restart_policy: RestartPolicy {
                name: h["RestartPolicy"]["Name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                maximum_retry_count: h["RestartPolicy"]["MaximumRetryCount"]
                    .as_i64()
                    .unwrap_or(0),
            },
            port_bindings,
            publish_all_ports: h["PublishAllPorts"].as_bool().unwrap_or(false),
            mounts,
            log_opts,
        },
        exposed_ports: exposed.into_iter().collect(),
        volumes: body["Volumes"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
    })
}

pub(super) fn not_found_or(e: berth_proto::Error, what: &str) -> ApiError {
    if e.code == berth_proto::ErrorCode::NotFound {
        return ApiError::not_found(format!("No such container: {what}"));
    }
    e.into()
}

pub async fn create(daemon: &Daemon, q: &Query, body: &[u8]) -> ApiResult {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in the create request: {e}")))?;
    let image = body["Image"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("no image was given (config.Image is empty)"))?;
    let sel =
        selector(image).map_err(|_| ApiError::not_found(format!("No such image: {image}")))?;
    let shown = sel
        .name
        .as_deref()
        .map(familiar)
        .unwrap_or_else(|| image.to_string());
    let (image_id, image_config) = match daemon
        .core
        .call(Request::ImageInspect { selector: sel })
        .await
    {
        Ok(Response::Image(i)) => (i.id, i.config),
        Ok(other) => return Err(unexpected(other)),
        // The docker CLI pulls on this exact answer, then creates again.
        Err(e) if e.code == berth_proto::ErrorCode::NotFound => {
            return Err(ApiError::not_found(format!("No such image: {shown}")))
        }
        Err(e) => return Err(e.into()),
    };
    let name = q
        .get("name")
        .filter(|n| !n.is_empty())
        .map(|n| n.trim_start_matches('/').to_string());
    if let Some(n) = &name {
        let valid = n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(ApiError::bad_request(format!(
                "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
    }
    let mut spec = spec_from_body(&body, name, image_id)?;
    // The image's EXPOSE belongs to the container's ExposedPorts (what `-P` publishes).
    let image_exposed = serde_json::from_str::<Value>(&image_config)
        .ok()
        .and_then(|c| crate::ports::exposed_keys(&c["config"]["ExposedPorts"]).ok())
        .unwrap_or_default();
    let mut exposed: std::collections::BTreeSet<String> = spec.exposed_ports.drain(..).collect();
    exposed.extend(image_exposed);
    spec.exposed_ports = exposed.into_iter().collect();
    let discarded = spec.host.network_mode == "host" && !spec.host.port_bindings.is_empty();
    match daemon
        .core
        .call(Request::ContainerCreate(Box::new(spec)))
        .await?
    {
        Response::ContainerCreated { id, mut warnings } => {
            if discarded {
                warnings.push("Published ports are discarded when using host network mode".into());
            }
            Ok(json(
                StatusCode::CREATED,
                &json!({ "Id": id, "Warnings": warnings }),
            ))
        }
        other => Err(unexpected(other)),
    }
}

pub(super) async fn simple(daemon: &Daemon, req: Request, what: &str, ok: StatusCode) -> ApiResult {
    match daemon.core.call(req).await {
        Ok(Response::Done) => Ok(empty(ok)),
        Ok(other) => Err(unexpected(other)),
        Err(e) => Err(not_found_or(e, what)),
    }
}

pub async fn start(daemon: &Daemon, id: &str) -> ApiResult {
    let info = inspect_info(daemon, id).await?;
    if info.state.status == ContainerStatus::Running {
        return Ok(empty(StatusCode::NOT_MODIFIED));
    }
    start_publishing(daemon, &info, id).await
}

/// Starts a container with its published ports: the host listeners are bound first (a port in
/// use fails the start, which then never happens), recorded in the core, and served once the
/// container runs, until it stops.
async fn start_publishing(daemon: &Daemon, info: &ContainerInfo, id: &str) -> ApiResult {
    let container = ContainerRef(info.id.clone());
    let wanted = crate::ports::wanted(&info.spec);
    let mut bound = None;
    if !wanted.is_empty() {
        let b = daemon.ports.bind(&wanted, &info.id).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "driver failed programming external connectivity on endpoint {} ({}): {e}",
                    info.name, info.id
                ),
            )
        })?;
        let req = Request::ContainerPublished {
            container: container.clone(),
            ports: b.ports(),
        };
        simple(daemon, req, id, StatusCode::NO_CONTENT).await?;
        bound = Some(b);
    }
    let started = simple(
        daemon,
        Request::ContainerStart { container },
        id,
        StatusCode::NO_CONTENT,
    )
    .await?;
    if let Some(b) = bound {
        let token = daemon.ports.serve(daemon.core.clone(), &info.id, b);
        daemon
            .ports
            .watch(daemon.core.clone(), info.id.clone(), token);
    }
    Ok(started)
}

pub async fn stop(daemon: &Daemon, id: &str, q: &Query) -> ApiResult {
    let info = inspect_info(daemon, id).await?;
    // A container the core is about to restart (its policy) is stopped too: that cancels it.
    if !matches!(
        info.state.status,
        ContainerStatus::Running | ContainerStatus::Paused | ContainerStatus::Restarting
    ) {
        return Ok(empty(StatusCode::NOT_MODIFIED));
    }
    let timeout = q.get("t").or(q.get("timeout")).and_then(|t| t.parse().ok());
    let signal = q
        .get("signal")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let stopped = simple(
        daemon,
        Request::ContainerStop {
            container: ContainerRef(id.into()),
            signal,
            timeout,
        },
        id,
        StatusCode::NO_CONTENT,
    )
    .await?;
    daemon.ports.unpublish(&info.id, None);
    Ok(stopped)
}

/// `docker restart`: stop (signal, then SIGKILL after the timeout) if running, then start.
pub async fn restart(daemon: &Daemon, id: &str, q: &Query) -> ApiResult {
    let info = inspect_info(daemon, id).await?;
    if matches!(
        info.state.status,
        ContainerStatus::Running | ContainerStatus::Paused
    ) {
        let timeout = q.get("t").or(q.get("timeout")).and_then(|t| t.parse().ok());
        let signal = q
            .get("signal")
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let stop = Request::ContainerStop {
            container: ContainerRef(info.id.clone()),
            signal,
            timeout,
        };
        simple(daemon, stop, id, StatusCode::NO_CONTENT).await?;
        daemon.ports.unpublish(&info.id, None);
    }
    let started = start_publishing(daemon, &info, id).await?;
    // dockerd's `restart` follows the stop's and the start's events; the core adds the
    // container's attributes.
    crate::events::publish(
        &daemon.core,
        berth_proto::Event {
            seq: 0,
            kind: berth_proto::CONTAINER_EVENT.into(),
            action: "restart".into(),
            actor_id: info.id.clone(),
            attributes: Default::default(),
            time_nano: 0,
        },
    )
    .await;
    Ok(started)
}

/// `docker container prune`: removes every container that is not running (label filters
/// honoured), and says which.
pub async fn prune(daemon: &Daemon, q: &Query) -> ApiResult {
    let filters = q.filters()?;
    let containers = match daemon
        .core
        .call(Request::ContainerList { all: true })
        .await?
    {
        Response::Containers { containers } => containers,
        other => return Err(unexpected(other)),
    };
    let mut deleted = Vec::new();
    for c in containers {
        if matches!(
            c.state.status,
            ContainerStatus::Running | ContainerStatus::Paused | ContainerStatus::Restarting
        ) {
            continue;
        }
        if let Some(labels) = filters.get("label") {
            let ok = labels.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => c.spec.labels.get(k).map(String::as_str) == Some(v),
                None => c.spec.labels.contains_key(l),
            });
            if !ok {
                continue;
            }
        }
        let req = Request::ContainerRemove {
            container: ContainerRef(c.id.clone()),
            force: false,
            volumes: false,
        };
        match daemon.core.call(req).await {
            Ok(_) => deleted.push(c.id),
            // Started (or removed) since the listing: not ours to prune any more.
            Err(e) => tracing::debug!("prune skipped {}: {e}", c.id),
        }
    }
    Ok(json(
        StatusCode::OK,
        &json!({ "ContainersDeleted": deleted, "SpaceReclaimed": 0 }),
    ))
}

pub async fn kill(daemon: &Daemon, id: &str, q: &Query) -> ApiResult {
    let info = inspect_info(daemon, id).await?;
    if !matches!(
        info.state.status,
        ContainerStatus::Running | ContainerStatus::Paused
    ) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Cannot kill container: {id}: Container {} is not running",
                info.id
            ),
        ));
    }
    let signal = q
        .get("signal")
        .filter(|s| !s.is_empty())
        .unwrap_or("SIGKILL")
        .to_string();
    simple(
        daemon,
        Request::ContainerKill {
            container: ContainerRef(id.into()),
            signal,
        },
        id,
        StatusCode::NO_CONTENT,
    )
    .await
}

/// `POST /containers/{id}/wait`: like dockerd, the status line and headers go out at once (the
/// docker CLI starts the container only after it has them) and the body when the condition holds.
pub async fn wait(daemon: Arc<Daemon>, id: &str, q: &Query) -> ApiResult {
    let condition = match q.get("condition").unwrap_or("") {
        "" | "not-running" => WaitCondition::NotRunning,
        "next-exit" => WaitCondition::NextExit,
        "removed" => WaitCondition::Removed,
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid condition: \"{other}\""
            )))
        }
    };
    // Fail fast for a container that does not exist, before the long wait.
    let info = inspect_info(&daemon, id).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        let req = Request::ContainerWait {
            container: ContainerRef(info.id),
            condition,
        };
        let body = match daemon.core.call(req).await {
            Ok(Response::Exited { code, error }) => {
                json!({ "StatusCode": code, "Error": error.map(|m| json!({ "Message": m })) })
            }
            Ok(other) => {
                json!({ "StatusCode": -1, "Error": { "Message": format!("unexpected answer: {other:?}") } })
            }
            Err(e) => json!({ "StatusCode": -1, "Error": { "Message": e.message } }),
        };
        let mut b = serde_json::to_vec(&body).expect("serialisable");
        b.push(b'\n');
        let _ = tx.send(Bytes::from(b)).await;
    });
    Ok(super::json_stream(rx))
}

pub async fn remove(daemon: &Daemon, id: &str, q: &Query) -> ApiResult {
    let req = Request::ContainerRemove {
        container: ContainerRef(id.into()),
        force: q.bool("force"),
        volumes: q.bool("v"),
    };
    simple(daemon, req, id, StatusCode::NO_CONTENT).await
}

pub(super) async fn inspect_info(daemon: &Daemon, id: &str) -> Result<ContainerInfo, ApiError> {
    match daemon
        .core
        .call(Request::ContainerInspect {
            container: ContainerRef(id.into()),
        })
        .await
    {
        Ok(Response::Container(c)) => Ok(*c),
        Ok(other) => Err(unexpected(other)),
        Err(e) => Err(not_found_or(e, id)),
    }
}

fn status_word(s: ContainerStatus) -> &'static str {
    match s {
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Paused => "paused",
        ContainerStatus::Restarting => "restarting",
        ContainerStatus::Removing => "removing",
        ContainerStatus::Exited => "exited",
        ContainerStatus::Dead => "dead",
    }
}

fn unix(t: &Option<String>) -> Option<chrono::DateTime<chrono::Utc>> {
    t.as_deref()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn ago(t: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (chrono::Utc::now() - t).num_seconds().max(0);
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 86400 * 2 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

/// `docker ps`'s STATUS column.
fn status_text(c: &ContainerInfo) -> String {
    match c.state.status {
        ContainerStatus::Created => "Created".into(),
        ContainerStatus::Running => format!(
            "Up {}",
            unix(&c.state.started_at).map(ago).unwrap_or_default()
        ),
        ContainerStatus::Paused => format!(
            "Up {} (Paused)",
            unix(&c.state.started_at).map(ago).unwrap_or_default()
        ),
        ContainerStatus::Restarting => format!(
            "Restarting ({}) {} ago",
            c.state.exit_code.unwrap_or(0),
            unix(&c.state.finished_at).map(ago).unwrap_or_default()
        ),
        ContainerStatus::Removing => "Removal In Progress".into(),
        ContainerStatus::Exited => format!(
            "Exited ({}) {} ago",
            c.state.exit_code.unwrap_or(0),
            unix(&c.state.finished_at).map(ago).unwrap_or_default()
        ),
        ContainerStatus::Dead => "Dead".into(),
    }
}

fn shell_join(path: &str, args: &[String]) -> String {
    std::iter::once(path.to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn summary(c: &ContainerInfo) -> ContainerSummary {
    ContainerSummary {
        Command: shell_join(&c.path, &c.args),
        Created: unix(&Some(c.created.clone()))
            .map(|t| t.timestamp())
            .unwrap_or(0),
        HostConfig: SummaryHostConfig {
            NetworkMode: c.spec.host.network_mode.clone(),
        },
        Id: c.id.clone(),
        Image: c.spec.image_ref.clone(),
        ImageID: c.spec.image_id.clone(),
        Labels: c.spec.labels.clone(),
        Mounts: mount_points(c),
        Names: vec![format!("/{}", c.name)],
        NetworkSettings: super::net::summary_networks(c),
        Ports: super::net::summary_ports(c),
        SizeRootFs: None,
        SizeRw: None,
        State: status_word(c.state.status).to_string(),
        Status: status_text(c),
    }
}

pub async fn list(daemon: &Daemon, q: &Query) -> ApiResult {
    let filters = q.filters()?;
    let all = q.bool("all") || filters.contains_key("status");
    let containers = match daemon.core.call(Request::ContainerList { all }).await? {
        Response::Containers { containers } => containers,
        other => return Err(unexpected(other)),
    };
    let mut out = Vec::new();
    for c in &containers {
        if let Some(st) = filters.get("status") {
            if !st.iter().any(|s| s == status_word(c.state.status)) {
                continue;
            }
        }
        if let Some(names) = filters.get("name") {
            if !names
                .iter()
                .any(|n| c.name.contains(n.trim_start_matches('/')))
            {
                continue;
            }
        }
        if let Some(ids) = filters.get("id") {
            if !ids.iter().any(|i| c.id.starts_with(i.as_str())) {
                continue;
            }
        }
        if let Some(labels) = filters.get("label") {
            let ok = labels.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => c.spec.labels.get(k).map(String::as_str) == Some(v),
                None => c.spec.labels.contains_key(l),
            });
            if !ok {
                continue;
            }
        }
        out.push(summary(c));
    }
    out.sort_by_key(|v| std::cmp::Reverse(v.Created));
    if q.bool("size") {
        // `docker ps -s`: the writable layer measured by the core, the image's size under it.
        let sizes = sizes(daemon).await?;
        let images = match daemon.core.call(Request::ImageList).await? {
            Response::Images { images } => images,
            other => return Err(unexpected(other)),
        };
        for v in &mut out {
            let image = images
                .iter()
                .find(|i| i.id == v.ImageID)
                .map_or(0, |i| i.size);
            set_sizes(v, sizes.get(&v.Id).copied().unwrap_or(0), image);
        }
    }
    Ok(json(StatusCode::OK, &out))
}

/// Every container's writable layer size by id, measured by the core.
pub(super) async fn sizes(daemon: &Daemon) -> Result<BTreeMap<String, u64>, ApiError> {
    match daemon.core.call(Request::ContainerSizes).await? {
        Response::ContainerSizes { sizes } => Ok(sizes),
        other => Err(unexpected(other)),
    }
}

/// `SizeRw` and `SizeRootFs` as dockerd reports them: the writable layer, and the whole root
/// file system (the image's layers plus the writable one).
pub(super) fn set_sizes(v: &mut ContainerSummary, rw: u64, image: u64) {
    v.SizeRw = Some(rw);
    v.SizeRootFs = Some(image + rw);
}

pub async fn inspect(daemon: &Daemon, id: &str) -> ApiResult {
    let c = inspect_info(daemon, id).await?;
    let s = &c.state;
    let running = s.status == ContainerStatus::Running || s.status == ContainerStatus::Paused;
    let h = &c.spec.host;
    let v = json!({
        "Id": c.id,
        "Created": c.created,
        "Path": c.path,
        "Args": c.args,
        "State": {
            "Status": status_word(s.status), "Running": running,
            "Paused": s.status == ContainerStatus::Paused,
            "Restarting": s.status == ContainerStatus::Restarting, "OOMKilled": s.oom_killed,
            "Dead": s.status == ContainerStatus::Dead, "Pid": if running { s.pid.unwrap_or(0) } else { 0 },
            "ExitCode": s.exit_code.unwrap_or(0), "Error": s.error.clone().unwrap_or_default(),
            "StartedAt": s.started_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "FinishedAt": s.finished_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
        },
        "Image": c.spec.image_id,
        "LogPath": c.log_path,
        "Name": format!("/{}", c.name),
        "RestartCount": s.restart_count,
        "Driver": "overlayfs",
        "Platform": "linux",
        "HostConfig": {
            "Binds": h.binds, "NetworkMode": h.network_mode, "AutoRemove": h.auto_remove,
            "LogConfig": { "Type": "json-file", "Config": h.log_opts },
            "RestartPolicy": { "Name": h.restart_policy.name, "MaximumRetryCount": h.restart_policy.maximum_retry_count },
            "Privileged": h.privileged, "ReadonlyRootfs": h.read_only_rootfs, "Tmpfs": h.tmpfs,
            "Memory": h.memory, "MemorySwap": h.memory_swap, "NanoCpus": h.nano_cpus,
            "CpuShares": h.cpu_shares, "Mounts": host_mounts(h),
            "PidsLimit": h.pids_limit, "CapAdd": h.cap_add, "CapDrop": h.cap_drop,
            "SecurityOpt": h.security_opt, "Runtime": c.runtime,
            "PortBindings": super::net::port_bindings(&c.spec),
            "PublishAllPorts": h.publish_all_ports,
        },
        "Mounts": mount_points(&c),
        "Config": {
            "Hostname": c.spec.hostname.clone().unwrap_or_else(|| c.id[..12].to_string()),
            "Domainname": c.spec.domainname.clone().unwrap_or_default(),
            "User": c.user, "Tty": c.spec.tty, "OpenStdin": c.spec.open_stdin, "StdinOnce": c.spec.stdin_once,
            "Env": c.env, "Cmd": c.spec.cmd, "Image": c.spec.image_ref,
            "WorkingDir": c.working_dir, "Entrypoint": c.spec.entrypoint, "Labels": c.spec.labels,
            "StopSignal": c.spec.stop_signal, "StopTimeout": c.spec.stop_timeout,
            "ExposedPorts": super::net::exposed_ports(&c.spec),
            "Volumes": if c.spec.volumes.is_empty() { Value::Null } else {
                c.spec.volumes.iter().map(|v| (v.clone(), json!({}))).collect::<serde_json::Map<_, _>>().into()
            },
        },
        "NetworkSettings": super::net::network_settings(&c),
    });
    Ok(json(StatusCode::OK, &v))
}

/// Docker's stdcopy header: stream (1 stdout, 2 stderr), three zero bytes, big-endian length.
pub fn stdcopy_frame(stream: u8, payload: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(8 + payload.len());
    b.push(stream);
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    Bytes::from(b)
}

pub async fn logs(daemon: Arc<Daemon>, id: &str, q: &Query) -> ApiResult {
    let info = inspect_info(&daemon, id).await?;
    let (stdout, stderr) = (q.bool("stdout"), q.bool("stderr"));
    if !stdout && !stderr {
        return Err(ApiError::bad_request("You must choose at least one stream"));
    }
    let since = q
        .get("since")
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.0);
    let until = q
        .get("until")
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.0);
    let tail = q
        .get("tail")
        .filter(|t| *t != "all")
        .and_then(|t| t.parse().ok());
    let request = berth_proto::LogsRequest {
        container: ContainerRef(info.id.clone()),
        follow: q.bool("follow"),
        stdout,
        stderr,
        since,
        until,
        tail,
    };
    let timestamps = q.bool("timestamps");
    let tty = info.spec.tty;
    let mut frames = daemon
        .core
        .logs(request)
        .await
        .map_err(|e| not_found_or(e, id))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        while let Some(Ok(f)) = frames.recv().await {
            let mut line = Vec::new();
            if timestamps {
                line.extend_from_slice(f.time.as_bytes());
                line.push(b' ');
            }
            line.extend_from_slice(f.log.as_bytes());
            let chunk = if tty {
                Bytes::from(line)
            } else {
                stdcopy_frame(if f.stream == "stderr" { 2 } else { 1 }, &line)
            };
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let ct = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    let mut resp = super::json_stream(rx);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, ct.parse().expect("valid header"));
    Ok(resp)
}

/// `POST /containers/{id}/attach`: the connection is hijacked (HTTP upgrade to "tcp", as the
/// docker CLI asks) and then carries the container's stdio both ways.
pub async fn attach(
    daemon: Arc<Daemon>,
    id: &str,
    q: &Query,
    req: HttpRequest<hyper::body::Incoming>,
) -> ApiResult {
    let info = inspect_info(&daemon, id).await?;
    let request = berth_proto::AttachRequest {
        container: ContainerRef(info.id.clone()),
        stdin: q.bool("stdin"),
        stdout: q.bool("stdout"),
        stderr: q.bool("stderr"),
        logs: q.bool("logs"),
    };
    let core_stream = daemon
        .core
        .attach(request)
        .await
        .map_err(|e| not_found_or(e, id))?;
    let upgrade = req.headers().get(header::UPGRADE).is_some();
    let stdin = q.bool("stdin");
    Ok(super::exec::hijack(
        req,
        upgrade,
        core_stream,
        info.spec.tty,
        stdin,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_maps_to_a_spec() {
        let body = json!({
            "Image": "busybox", "Cmd": ["echo", "hi"], "Env": ["A=1"], "Tty": false,
            "Labels": {"k": "v"},
            "HostConfig": { "AutoRemove": true, "NetworkMode": "default", "Memory": 1048576,
                            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3} },
        });
        let s = spec_from_body(&body, Some("x".into()), "sha256:ab".into()).unwrap();
        assert_eq!(s.cmd, Some(vec!["echo".to_string(), "hi".to_string()]));
        assert_eq!(s.entrypoint, None);
        assert_eq!(s.host.network_mode, "bridge");
        assert!(s.host.auto_remove);
        assert_eq!(s.host.memory, 1048576);
        assert_eq!(s.host.restart_policy.maximum_retry_count, 3);
        assert_eq!(s.labels["k"], "v");
        let bad = json!({ "Image": "busybox", "HostConfig": { "NetworkMode": "weird" } });
        assert!(spec_from_body(&bad, None, "sha256:ab".into()).is_err());
    }

    #[test]
    fn volumes_mounts_and_swap_map_to_the_spec() {
        let body = json!({
            "Image": "busybox", "Volumes": { "/anon": {} },
            "HostConfig": {
                "Binds": ["data:/data:ro"], "Memory": 67108864, "MemorySwap": -1,
                "Mounts": [
                    { "Type": "volume", "Target": "/m", "ReadOnly": true,
                      "VolumeOptions": { "NoCopy": true, "Labels": { "a": "b" } } },
                    { "Type": "tmpfs", "Target": "/t",
                      "TmpfsOptions": { "SizeBytes": 1048576, "Mode": 448 } },
                ],
            },
        });
        let s = spec_from_body(&body, None, "sha256:ab".into()).unwrap();
        assert_eq!(s.volumes, ["/anon"]);
        assert_eq!(s.host.binds, ["data:/data:ro"]);
        assert_eq!(s.host.memory_swap, -1);
        let m = &s.host.mounts;
        assert_eq!((m[0].kind.as_str(), m[0].target.as_str()), ("volume", "/m"));
        assert!(m[0].read_only && m[0].no_copy && m[0].source.is_empty());
        assert_eq!(m[0].labels["a"], "b");
        assert_eq!((m[1].tmpfs_size, m[1].tmpfs_mode), (1 << 20, 0o700));
        let plugin = json!({ "Image": "busybox", "HostConfig": { "Mounts": [
            { "Type": "volume", "Source": "v", "Target": "/v",
              "VolumeOptions": { "DriverConfig": { "Name": "nfs" } } } ] } });
        let e = spec_from_body(&plugin, None, "sha256:ab".into()).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(
            e.message,
            "create v: error looking up volume plugin nfs: plugin \"nfs\" not found"
        );
    }

    #[test]
    fn stdcopy_header() {
        let f = stdcopy_frame(2, b"abc");
        assert_eq!(&f[..], &[2, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']);
    }
}
