//! `/_ping`, `/version`, `/info`, `/auth`.

use base64::Engine as _;
use berth_proto::{Request, Response};
use berth_registry::Credentials;
use bytes::Bytes;
use hyper::{header, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{full, json, ApiError, ApiResult, Resp, API_VERSION, MIN_API_VERSION};
use crate::daemon::Daemon;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn ping(head: bool) -> Resp {
    hyper::Response::builder()
        .status(StatusCode::OK)
        .header("API-Version", API_VERSION)
        .header("OSType", "linux")
        .header("Docker-Experimental", "false")
        // The classic builder protocol; BuildKit is not offered.
        .header("Builder-Version", "1")
        .header(header::CACHE_CONTROL, "no-cache, no-store, must-revalidate")
        .header(header::PRAGMA, "no-cache")
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(if head {
            Bytes::new()
        } else {
            Bytes::from_static(b"OK")
        }))
        .expect("valid response")
}

fn kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub async fn version(_daemon: &Daemon) -> Resp {
    let details = json!({
        "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Arch": go_arch(),
        "Os": "linux", "KernelVersion": kernel(), "GitCommit": "", "GoVersion": "", "BuildTime": "",
        "Experimental": "false",
    });
    json(
        StatusCode::OK,
        &json!({
            "Platform": { "Name": "Berth" },
            "Components": [{ "Name": "Engine", "Version": VERSION, "Details": details }],
            "Version": VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "", "GoVersion": "", "Os": "linux", "Arch": go_arch(),
            "KernelVersion": kernel(), "BuildTime": "",
        }),
    )
}

pub async fn info(daemon: &Daemon) -> ApiResult {
    let backend = daemon.core.backend();
    let state = backend.state();
    let core = match daemon.core.call(Request::Info).await {
        Ok(Response::Info(i)) => Some(i),
        _ => None,
    };
    let counts = core
        .as_ref()
        .map(|c| c.containers.clone())
        .unwrap_or_default();
    let runtime = core.as_ref().map(|c| c.runtime.clone()).unwrap_or_default();
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_total = nix::sys::sysinfo::sysinfo()
        .map(|s| s.ram_total())
        .unwrap_or(0);
    let settings = daemon.registry_settings();
    let hub_mirrors: Vec<String> = settings
        .mirrors
        .get("docker.io")
        .map(|m| m.iter().map(|u| u.to_string()).collect())
        .unwrap_or_default();
    let mut insecure = vec!["127.0.0.0/8".to_string()];
    insecure.extend(settings.insecure.iter().cloned());
    Ok(json(
        StatusCode::OK,
        &json!({
            "ID": daemon.id, "Name": nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
            "Containers": counts.total, "ContainersRunning": counts.running,
            "ContainersPaused": counts.paused, "ContainersStopped": counts.stopped,
            "Images": core.as_ref().map(|c| c.images).unwrap_or(0),
            "Driver": core.as_ref().map(|c| c.storage_driver.clone()).unwrap_or_default(),
            "DriverStatus": [], "Plugins": { "Volume": [], "Network": [], "Authorization": null, "Log": [] },
            "MemoryLimit": true, "SwapLimit": false, "CpuCfsPeriod": true, "CpuCfsQuota": true,
            "IPv4Forwarding": true, "Debug": false, "NFd": 0, "NGoroutines": 0,
            "SystemTime": chrono::Utc::now().to_rfc3339(), "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs", "CgroupVersion": "2", "NEventsListener": 0,
            "KernelVersion": core.as_ref().map(|c| c.kernel.clone()).unwrap_or_else(kernel),
            "OperatingSystem": format!("Berth ({} backend)", backend.name()), "OSVersion": "",
            "OSType": "linux", "Architecture": std::env::consts::ARCH,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {
                "InsecureRegistryCIDRs": insecure, "IndexConfigs": {}, "Mirrors": hub_mirrors,
            },
            "NCPU": ncpu, "MemTotal": mem_total,
            "DockerRootDir": core.as_ref().map(|c| c.data_root.clone()).unwrap_or_default(),
            "ServerVersion": VERSION, "Labels": [], "ExperimentalBuild": false,
            "SecurityOptions": [], "Warnings": [],
            "DefaultRuntime": runtime, "Runtimes": { runtime.clone(): { "path": runtime } },
            "Berth": { "Backend": backend.name(), "VmState": state.to_string(),
                       "CoreSoftware": core.as_ref().map(|c| c.software.clone()),
                       "Health": daemon.health.report() },
        }),
    ))
}

#[derive(Deserialize, Default)]
struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default, rename = "serveraddress")]
    server_address: String,
}

/// The registry host a `serveraddress` names: Docker Hub's legacy index URL means docker.io.
pub use berth_host::credentials::registry_host;

/// `X-Registry-Auth`: base64url JSON of the CLI's stored credentials for the pull's registry.
pub fn decode_registry_auth(header: &str) -> Option<Credentials> {
    let h = header.trim();
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(h)
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h.trim_end_matches('='))
        })
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(h))
        .ok()?;
    let a: AuthConfig = serde_json::from_slice(&bytes).ok()?;
    (!a.username.is_empty()).then_some(Credentials {
        username: a.username,
        password: a.password,
    })
}

pub async fn auth(daemon: &Daemon, body: &[u8]) -> ApiResult {
    let a: AuthConfig = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid auth configuration: {e}")))?;
    let host = registry_host(&a.server_address);
    let creds = Credentials {
        username: a.username,
        password: a.password,
    };
    match daemon.registry().check_login(&host, &creds).await {
        // The password goes to the OS keyring; the CLI keeps an identity token instead of it.
        // Without a usable keyring the CLI keeps the credentials itself, as with dockerd.
        Ok(()) => match crate::credentials::store(&host, &creds).await {
            Ok(token) => Ok(json(
                StatusCode::OK,
                &json!({ "Status": "Login Succeeded", "IdentityToken": token }),
            )),
            Err(e) => {
                tracing::warn!("login to {host}: {e}; the docker CLI keeps the credentials");
                Ok(json(
                    StatusCode::OK,
                    &json!({ "Status": "Login Succeeded", "IdentityToken": "" }),
                ))
            }
        },
        Err(e) if e.is_auth() => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("login attempt to {host} failed: {e}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("login to {host}: {e}"),
        )),
    }
}

/// `GET /berth/v1/engine`: the admin API's view of the engine: backend, state, failures and
/// restarts (the supervisor's), and whether the core answers.
pub async fn engine(daemon: &Daemon) -> ApiResult {
    let backend = daemon.core.backend();
    let core = match daemon.core.call(Request::Info).await {
        Ok(Response::Info(i)) => {
            serde_json::json!({ "Software": i.software, "Version": i.version })
        }
        Ok(_) => serde_json::Value::Null,
        Err(e) => serde_json::json!({ "Error": e.message }),
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "Backend": backend.name(),
            "State": backend.state().to_string(),
            "Health": daemon.health.report(),
            "Resources": backend.resources().map(resources_json),
            "Core": core,
        }),
    ))
}

/// `POST /berth/v1/engine/restart-core`: a warm restart of the core (the machine and the
/// containers' shims stay): asks the core to exit for a restart, waits until it is gone, then
/// until a new one answers. Answers how long that took.
pub async fn restart_core(daemon: &Daemon) -> ApiResult {
    use std::time::{Duration, Instant};
    let began = Instant::now();
    daemon.core.call(Request::Restart).await?;
    let deadline = began + Duration::from_secs(120);
    // The old core answers pings on the old connection until it exits.
    let mut gone = false;
    loop {
        let answered = matches!(daemon.core.call(Request::Ping).await, Ok(Response::Pong));
        if !answered {
            gone = true;
        } else if gone {
            break;
        }
        if Instant::now() > deadline {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the core did not come back within {:?} (state: {})",
                    deadline - began,
                    daemon.core.backend().state()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = began.elapsed();
    tracing::info!("core restarted in {took:?}");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "TookMs": took.as_secs_f64() * 1000.0 }),
    ))
}

/// `POST /berth/v1/engine/restart-vm`: the VM restarted with the settings' `vm` values (CPUs,
/// memory, a bigger data disk), where a settings edit answered `restartRequired`. Values the
/// settings leave out keep the machine's. 409 on a backend without a VM; 400 for resources the
/// backend refuses (a smaller disk), before anything stops.
pub async fn restart_vm(daemon: &Daemon) -> ApiResult {
    use berth_vm::{Resources, VmError};
    let backend = daemon.core.backend().clone();
    let Some(current) = backend.resources() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the {} backend has no VM to restart", backend.name()),
        ));
    };
    let vm = daemon
        .settings
        .as_ref()
        .map(|s| s.current().settings.vm.clone())
        .unwrap_or_default();
    let wanted = Resources {
        cpus: vm.cpus.unwrap_or(current.cpus),
        memory_mib: vm
            .memory
            .map(|m| u32::try_from(m).unwrap_or(u32::MAX))
            .unwrap_or(current.memory_mib),
        disk_bytes: vm.disk.map(|g| g << 30).unwrap_or(current.disk_bytes),
    };
    let began = std::time::Instant::now();
    crate::supervisor::restart_machine(&daemon.core, wanted)
        .await
        .map_err(|e| match e {
            VmError::Invalid(_) | VmError::Unsupported { .. } => {
                ApiError::bad_request(format!("the VM was not restarted: {e}"))
            }
            e => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("restarting the VM: {e}"),
            ),
        })?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "Resources": resources_json(wanted),
            "TookMs": began.elapsed().as_secs_f64() * 1000.0,
        }),
    ))
}

/// A machine's resources as the admin API shows them.
pub fn resources_json(r: berth_vm::Resources) -> serde_json::Value {
    json!({ "Cpus": r.cpus, "MemoryMiB": r.memory_mib, "DiskGiB": r.disk_bytes >> 30 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts() {
        assert_eq!(registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:15001"), "127.0.0.1:15001");
        assert_eq!(
            registry_host("http://127.0.0.1:15001/v2/"),
            "127.0.0.1:15001"
        );
    }

    #[test]
    fn registry_auth_header() {
        let h = base64::engine::general_purpose::URL_SAFE
            .encode(br#"{"username":"u","password":"p","serveraddress":"x"}"#);
        let c = decode_registry_auth(&h).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        let empty = base64::engine::general_purpose::URL_SAFE.encode(b"{}");
        assert!(decode_registry_auth(&empty).is_none());
        assert!(decode_registry_auth("!!!").is_none());
    }
}
