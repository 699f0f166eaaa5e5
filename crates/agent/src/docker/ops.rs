//! Container routes beyond the lifecycle: pause, unpause, top, stats, rename, changes, export.
//! The core reads the container (cgroup, /proc, its layer); berthd shapes dockerd's answers
//! (stats: consecutive samples become `cpu_stats` and `precpu_stats`).

use std::sync::Arc;
use std::time::Duration;

use berth_proto::{ContainerInfo, ContainerRef, Request, Response, StatsSample};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::{header, StatusCode};
use serde_json::{json, Map, Value};

use super::containers::{inspect_info, not_found_or, simple};
use super::unexpected;
use super::{json, ApiError, ApiResult, Query};
use crate::daemon::Daemon;

/// What dockerd shows for a time it does not have.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

pub async fn pause(daemon: &Daemon, id: &str) -> ApiResult {
    let req = Request::ContainerPause {
        container: ContainerRef(id.into()),
    };
    simple(daemon, req, id, StatusCode::NO_CONTENT).await
}

pub async fn unpause(daemon: &Daemon, id: &str) -> ApiResult {
    let req = Request::ContainerUnpause {
        container: ContainerRef(id.into()),
    };
    simple(daemon, req, id, StatusCode::NO_CONTENT).await
}

pub async fn top(daemon: &Daemon, id: &str, q: &Query) -> ApiResult {
    let req = Request::ContainerTop {
        container: ContainerRef(id.into()),
        ps_args: q.get("ps_args").unwrap_or("").to_string(),
    };
    match daemon.core.call(req).await {
        Ok(Response::Top(t)) => Ok(json(
            StatusCode::OK,
            &json!({ "Titles": t.titles, "Processes": t.processes }),
        )),
        Ok(other) => Err(unexpected(other)),
        Err(e) => Err(not_found_or(e, id)),
    }
}

pub async fn rename(daemon: &Daemon, id: &str, q: &Query) -> ApiResult {
    let req = Request::ContainerRename {
        container: ContainerRef(id.into()),
        name: q.get("name").unwrap_or("").to_string(),
    };
    simple(daemon, req, id, StatusCode::NO_CONTENT).await
}

pub async fn changes(daemon: &Daemon, id: &str) -> ApiResult {
    let req = Request::ContainerChanges {
        container: ContainerRef(id.into()),
    };
    match daemon.core.call(req).await {
        Ok(Response::Changes { changes }) => {
            let v: Vec<Value> = changes
                .iter()
                .map(|c| json!({ "Path": c.path, "Kind": c.kind }))
                .collect();
            Ok(json(StatusCode::OK, &v))
        }
        Ok(other) => Err(unexpected(other)),
        Err(e) => Err(not_found_or(e, id)),
    }
}

/// `GET /containers/{id}/export`: the tar streams from the core's export connection as it is
/// written, never held whole.
pub async fn export(daemon: &Daemon, id: &str) -> ApiResult {
    let info = inspect_info(daemon, id).await?;
    let stream = daemon
        .core
        .export(berth_proto::ExportRequest {
            container: ContainerRef(info.id),
        })
        .await
        .map_err(|e| not_found_or(e, id))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut chunks = tokio_util::io::ReaderStream::with_capacity(stream, 64 * 1024);
        while let Some(Ok(chunk)) = chunks.next().await {
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let mut resp = super::json_stream(rx);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/x-tar".parse().expect("valid header"),
    );
    Ok(resp)
}

async fn sample(daemon: &Daemon, id: &str) -> Result<StatsSample, ApiError> {
    let req = Request::ContainerStats {
        container: ContainerRef(id.into()),
    };
    match daemon.core.call(req).await {
        Ok(Response::Stats(s)) => Ok(*s),
        Ok(other) => Err(unexpected(other)),
        Err(e) => Err(not_found_or(e, id)),
    }
}

fn cpu_json(s: Option<&StatsSample>) -> Value {
    let Some(s) = s.filter(|s| s.running) else {
        return json!({
            "cpu_usage": { "total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0 },
            "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 },
        });
    };
    let mut usage = json!({
        "total_usage": s.cpu_total,
        "usage_in_kernelmode": s.cpu_kernel,
        "usage_in_usermode": s.cpu_user,
    });
    if !s.percpu.is_empty() {
        usage["percpu_usage"] = json!(s.percpu);
    }
    json!({
        "cpu_usage": usage,
        "system_cpu_usage": s.system_cpu,
        "online_cpus": s.online_cpus,
        "throttling_data": {
            "periods": s.throttle_periods,
            "throttled_periods": s.throttled_periods,
            "throttled_time": s.throttled_time,
        },
    })
}

/// Docker's stats object from a sample and the one before it (precpu).
pub fn stats_json(info: &ContainerInfo, cur: &StatsSample, pre: Option<&StatsSample>) -> Value {
    let mut v = json!({
        "name": format!("/{}", info.name),
        "id": info.id,
        "read": if cur.running { cur.read.as_str() } else { ZERO_TIME },
        "preread": pre.filter(|p| p.running).map(|p| p.read.as_str()).unwrap_or(ZERO_TIME),
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu_json(Some(cur)),
        "precpu_stats": cpu_json(pre),
        "pids_stats": {},
        "memory_stats": {},
        "blkio_stats": {
            "io_service_bytes_recursive": null, "io_serviced_recursive": null,
            "io_queue_recursive": null, "io_service_time_recursive": null,
            "io_wait_time_recursive": null, "io_merged_recursive": null,
            "io_time_recursive": null, "sectors_recursive": null,
        },
    });
    if !cur.running {
        return v;
    }
    let mut pids = Map::new();
    pids.insert("current".into(), json!(cur.pids_current));
    if cur.pids_limit > 0 {
        pids.insert("limit".into(), json!(cur.pids_limit));
    }
    v["pids_stats"] = Value::Object(pids);
    let mut mem = Map::new();
    mem.insert("usage".into(), json!(cur.memory_usage));
    if cur.memory_max_usage > 0 {
        mem.insert("max_usage".into(), json!(cur.memory_max_usage));
    }
    mem.insert("stats".into(), json!(cur.memory_stats));
    mem.insert("limit".into(), json!(cur.memory_limit));
    v["memory_stats"] = Value::Object(mem);
    if !cur.blkio.is_empty() {
        v["blkio_stats"]["io_service_bytes_recursive"] = json!(cur
            .blkio
            .iter()
            .map(|e| json!({ "major": e.major, "minor": e.minor, "op": e.op, "value": e.value }))
            .collect::<Vec<_>>());
    }
    if !cur.networks.is_empty() {
        v["networks"] = json!(cur.networks);
    }
    v
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("serialisable");
    b.push(b'\n');
    Bytes::from(b)
}

/// `GET /containers/{id}/stats`: with `stream` (the default) a sample every second, each with
/// the one before as precpu; without it one answer: with `one-shot` a single sample (no
/// precpu), else two samples a second apart so that CPU use can be computed, as dockerd.
pub async fn stats(daemon: Arc<Daemon>, id: &str, q: &Query) -> ApiResult {
    let info = inspect_info(&daemon, id).await?;
    let stream = q.get("stream").is_none() || q.bool("stream");
    let one_shot = q.bool("one-shot");
    if one_shot && stream {
        return Err(ApiError::bad_request(
            "cannot have stream=true and one-shot=true",
        ));
    }
    let first = sample(&daemon, &info.id).await?;
    if !stream {
        let body = if one_shot || !first.running {
            stats_json(&info, &first, None)
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let second = sample(&daemon, &info.id).await?;
            stats_json(&info, &second, Some(&first))
        };
        return Ok(json(StatusCode::OK, &body));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let mut prev: Option<StatsSample> = None;
        let mut cur = first;
        loop {
            if tx
                .send(line(&stats_json(&info, &cur, prev.as_ref())))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let next = match sample(&daemon, &info.id).await {
                Ok(s) => s,
                // Removed, or the core went away: the stream ends.
                Err(_) => return,
            };
            prev = Some(std::mem::replace(&mut cur, next));
        }
    });
    Ok(super::json_stream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ContainerInfo {
        serde_json::from_value(json!({
            "id": "abc", "name": "web", "spec": serde_json::to_value(berth_proto::ContainerSpec::default()).unwrap(),
            "path": "sh", "args": [], "env": [], "working_dir": "/", "user": "", "created": "",
            "state": { "status": "running", "pid": 1, "exit_code": 0, "started_at": null,
                       "finished_at": null, "error": null, "restart_count": 0 },
            "runtime": "runc", "log_path": "",
        }))
        .unwrap()
    }

    #[test]
    fn stats_carry_the_previous_sample_as_precpu() {
        let pre = StatsSample {
            running: true,
            read: "2026-01-01T00:00:00Z".into(),
            cpu_total: 100,
            system_cpu: 1000,
            online_cpus: 2,
            ..Default::default()
        };
        let cur = StatsSample {
            running: true,
            read: "2026-01-01T00:00:01Z".into(),
            cpu_total: 300,
            system_cpu: 3000,
            online_cpus: 2,
            memory_usage: 4096,
            memory_limit: 64 << 20,
            pids_current: 1,
            ..Default::default()
        };
        let v = stats_json(&info(), &cur, Some(&pre));
        assert_eq!(v["name"], "/web");
        assert_eq!(v["cpu_stats"]["cpu_usage"]["total_usage"], 300);
        assert_eq!(v["precpu_stats"]["cpu_usage"]["total_usage"], 100);
        assert_eq!(v["precpu_stats"]["system_cpu_usage"], 1000);
        assert_eq!(v["preread"], "2026-01-01T00:00:00Z");
        assert_eq!(v["memory_stats"]["limit"], 64 << 20);
        assert_eq!(v["pids_stats"]["current"], 1);
        assert!(v["pids_stats"].get("limit").is_none());
        let v = stats_json(&info(), &cur, None);
        assert_eq!(v["preread"], ZERO_TIME);
        assert_eq!(v["precpu_stats"]["cpu_usage"]["total_usage"], 0);
        let stopped = stats_json(&info(), &StatsSample::default(), None);
        assert_eq!(stopped["read"], ZERO_TIME);
        assert_eq!(stopped["memory_stats"], json!({}));
    }
}
