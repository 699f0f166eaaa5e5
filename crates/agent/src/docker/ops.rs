//! Container routes beyond the lifecycle: pause, unpause, top, stats, rename, changes, export.
//! The core reads the container (cgroup, /proc, its layer); berthd shapes dockerd's answers
//! (stats: consecutive samples become `cpu_stats` and `precpu_stats`).

use std::sync::Arc;
use std::time::Duration;

use berth_proto::{ContainerInfo, ContainerRef, Request, Response, StatsSample};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::{header, StatusCode};
use serde_json::{json, Value};

use super::containers::{inspect_info, not_found_or, simple};
use super::model::{
    BlkioStatEntry, BlkioStats, ContainerStats, CpuStats, CpuUsage, MemoryStats, NetworkStats,
    PidsStats, StorageStats, ThrottlingData,
};
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

fn cpu_stats(s: Option<&StatsSample>) -> CpuStats {
    let Some(s) = s.filter(|s| s.running) else {
        return CpuStats {
            cpu_usage: CpuUsage {
                percpu_usage: None,
                total_usage: 0,
                usage_in_kernelmode: 0,
                usage_in_usermode: 0,
            },
            online_cpus: None,
            system_cpu_usage: None,
            throttling_data: ThrottlingData {
                periods: 0,
                throttled_periods: 0,
                throttled_time: 0,
            },
        };
    };
    CpuStats {
        cpu_usage: CpuUsage {
            percpu_usage: Some(s.percpu.clone()).filter(|p| !p.is_empty()),
            total_usage: s.cpu_total,
            usage_in_kernelmode: s.cpu_kernel,
            usage_in_usermode: s.cpu_user,
        },
        online_cpus: Some(s.online_cpus),
        system_cpu_usage: Some(s.system_cpu),
        throttling_data: ThrottlingData {
            periods: s.throttle_periods,
            throttled_periods: s.throttled_periods,
            throttled_time: s.throttled_time,
        },
    }
}

/// Docker's stats object from a sample and the one before it (precpu).
pub fn stats_json(
    info: &ContainerInfo,
    cur: &StatsSample,
    pre: Option<&StatsSample>,
) -> ContainerStats {
    let running = cur.running;
    let blkio = Some(&cur.blkio)
        .filter(|b| running && !b.is_empty())
        .map(|b| {
            b.iter()
                .map(|e| BlkioStatEntry {
                    major: e.major,
                    minor: e.minor,
                    op: e.op.clone(),
                    value: e.value,
                })
                .collect()
        });
    let networks = Some(&cur.networks)
        .filter(|n| running && !n.is_empty())
        .map(|n| {
            n.iter()
                .map(|(name, c)| {
                    let stats = NetworkStats {
                        rx_bytes: c.rx_bytes,
                        rx_dropped: c.rx_dropped,
                        rx_errors: c.rx_errors,
                        rx_packets: c.rx_packets,
                        tx_bytes: c.tx_bytes,
                        tx_dropped: c.tx_dropped,
                        tx_errors: c.tx_errors,
                        tx_packets: c.tx_packets,
                    };
                    (name.clone(), stats)
                })
                .collect()
        });
    let (memory_stats, pids_stats) = if running {
        (
            MemoryStats {
                limit: Some(cur.memory_limit),
                max_usage: Some(cur.memory_max_usage).filter(|m| *m > 0),
                stats: Some(cur.memory_stats.clone()),
                usage: Some(cur.memory_usage),
            },
            PidsStats {
                current: Some(cur.pids_current),
                limit: Some(cur.pids_limit).filter(|l| *l > 0),
            },
        )
    } else {
        (MemoryStats::default(), PidsStats::default())
    };
    ContainerStats {
        blkio_stats: BlkioStats {
            io_merged_recursive: None,
            io_queue_recursive: None,
            io_service_bytes_recursive: blkio,
            io_service_time_recursive: None,
            io_serviced_recursive: None,
            io_time_recursive: None,
            io_wait_time_recursive: None,
            sectors_recursive: None,
        },
        cpu_stats: cpu_stats(Some(cur)),
        id: info.id.clone(),
        memory_stats,
        name: format!("/{}", info.name),
        networks,
        num_procs: 0,
        pids_stats,
        precpu_stats: cpu_stats(pre),
        preread: pre
            .filter(|p| p.running)
            .map(|p| p.read.as_str())
            .unwrap_or(ZERO_TIME)
            .to_string(),
        read: if running {
            cur.read.as_str()
        } else {
            ZERO_TIME
        }
        .to_string(),
        storage_stats: StorageStats {},
    }
}

fn line(v: &ContainerStats) -> Bytes {
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
    use serde_json::Map;

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

    // The json! construction the typed answer replaced, kept to show the bytes did not change.
    fn old_cpu_json(s: Option<&StatsSample>) -> Value {
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
    fn old_stats_json(info: &ContainerInfo, cur: &StatsSample, pre: Option<&StatsSample>) -> Value {
        let mut v = json!({
            "name": format!("/{}", info.name),
            "id": info.id,
            "read": if cur.running { cur.read.as_str() } else { ZERO_TIME },
            "preread": pre.filter(|p| p.running).map(|p| p.read.as_str()).unwrap_or(ZERO_TIME),
            "num_procs": 0,
            "storage_stats": {},
            "cpu_stats": old_cpu_json(Some(cur)),
            "precpu_stats": old_cpu_json(pre),
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
                .map(
                    |e| json!({ "major": e.major, "minor": e.minor, "op": e.op, "value": e.value })
                )
                .collect::<Vec<_>>());
        }
        if !cur.networks.is_empty() {
            v["networks"] = json!(cur.networks);
        }
        v
    }

    #[test]
    fn stats_are_byte_for_byte_what_they_were() {
        use berth_proto::{BlkioEntry, NetworkCounters};
        let pre = StatsSample {
            running: true,
            read: "2026-01-01T00:00:00Z".into(),
            cpu_total: 100,
            system_cpu: 1000,
            online_cpus: 2,
            percpu: vec![40, 60],
            ..Default::default()
        };
        let full = StatsSample {
            running: true,
            read: "2026-01-01T00:00:01Z".into(),
            cpu_total: 300,
            cpu_kernel: 100,
            cpu_user: 200,
            percpu: vec![100, 200],
            system_cpu: 3000,
            online_cpus: 2,
            throttle_periods: 5,
            throttled_periods: 1,
            throttled_time: 7,
            memory_usage: 4096,
            memory_max_usage: 8192,
            memory_limit: 64 << 20,
            memory_stats: [("inactive_file".to_string(), 10), ("anon".to_string(), 20)].into(),
            pids_current: 3,
            pids_limit: 100,
            networks: [(
                "eth0".to_string(),
                NetworkCounters {
                    rx_bytes: 1,
                    rx_packets: 2,
                    rx_errors: 3,
                    rx_dropped: 4,
                    tx_bytes: 5,
                    tx_packets: 6,
                    tx_errors: 7,
                    tx_dropped: 8,
                },
            )]
            .into(),
            blkio: vec![BlkioEntry {
                major: 8,
                minor: 0,
                op: "read".into(),
                value: 512,
            }],
        };
        let bare = StatsSample {
            running: true,
            read: "2026-01-01T00:00:01Z".into(),
            ..Default::default()
        };
        let stopped = StatsSample::default();
        for (cur, pre) in [
            (&full, Some(&pre)),
            (&full, None),
            (&bare, Some(&pre)),
            (&stopped, Some(&pre)),
            (&stopped, None),
        ] {
            assert_eq!(
                serde_json::to_string(&stats_json(&info(), cur, pre)).unwrap(),
                serde_json::to_string(&old_stats_json(&info(), cur, pre)).unwrap()
            );
        }
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
        let v = json!(stats_json(&info(), &cur, Some(&pre)));
        assert_eq!(v["name"], "/web");
        assert_eq!(v["cpu_stats"]["cpu_usage"]["total_usage"], 300);
        assert_eq!(v["precpu_stats"]["cpu_usage"]["total_usage"], 100);
        assert_eq!(v["precpu_stats"]["system_cpu_usage"], 1000);
        assert_eq!(v["preread"], "2026-01-01T00:00:00Z");
        assert_eq!(v["memory_stats"]["limit"], 64 << 20);
        assert_eq!(v["pids_stats"]["current"], 1);
        assert!(v["pids_stats"].get("limit").is_none());
        let v = json!(stats_json(&info(), &cur, None));
        assert_eq!(v["preread"], ZERO_TIME);
        assert_eq!(v["precpu_stats"]["cpu_usage"]["total_usage"], 0);
        let stopped = json!(stats_json(&info(), &StatsSample::default(), None));
        assert_eq!(stopped["read"], ZERO_TIME);
        assert_eq!(stopped["memory_stats"], json!({}));
    }
}
