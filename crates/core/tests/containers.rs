//! Containers for real: an image store with a busybox layer, runs through the OCI runtime and
//! the detached supervisor, logs and attach over the proto channels. Needs root (CI runs as
//! root) and runc or crun.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::digest::Digest;
use berth_core::server::Core;
use berth_proto::{
    client_handshake, read_frame, AttachRequest, Channel, ContainerRef, ContainerSpec,
    ContainerStatus, ErrorCode, FrameError, Hello, ImagePut, LayerRef, LayerUnpack, LogFrame,
    LogsRequest, RawBlob, WaitCondition,
};
use tokio::io::AsyncReadExt;

const LAYER_MT: &str = "application/vnd.oci.image.layer.v1.tar";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the container tests need root (mounts, namespaces, an OCI runtime); CI runs them as root"
    );
}

fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("the container tests need a static busybox (Debian: busybox-static)");
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn append_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, &[][..]).unwrap();
}

fn busybox_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
    ] {
        append_dir(&mut b, d, mode);
    }
    append_file(
        &mut b,
        "bin/busybox",
        0o755,
        &std::fs::read(busybox()).unwrap(),
    );
    for applet in [
        "sh", "echo", "id", "sleep", "cat", "env", "pwd", "ls", "true", "hostname", "grep",
    ] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    append_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    append_file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    b.into_inner().unwrap()
}

/// A core on a fresh data root holding one image, "busybox", with Cmd ["sh"].
struct Fixture {
    root: tempfile::TempDir,
    core: Option<Arc<Core>>,
    image_id: String,
}

fn open_core(root: &Path) -> Arc<Core> {
    Arc::new(Core::open(root, Some(Path::new(env!("CARGO_BIN_EXE_berth-core")))).unwrap())
}

impl Fixture {
    fn new() -> Fixture {
        require_root();
        let root = tempfile::tempdir().unwrap();
        let core = open_core(root.path());
        let layer = busybox_layer();
        let diff = Digest::of(&layer).to_string();
        core.images
            .write_blob(
                &layer[..],
                &diff,
                layer.len() as u64,
                LAYER_MT,
                Some(&LayerUnpack {
                    diff_id: diff.clone(),
                    chain_id: diff.clone(),
                }),
            )
            .unwrap();
        let config = serde_json::json!({
            "architecture": std::env::consts::ARCH, "os": "linux",
            "config": { "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FROM_IMAGE=image"],
                        "Cmd": ["sh"], "Labels": {"from": "image"} },
            "rootfs": { "type": "layers", "diff_ids": [diff] },
        })
        .to_string();
        let config_digest = Digest::of(config.as_bytes()).to_string();
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
            "layers": [ { "mediaType": LAYER_MT, "digest": diff, "size": layer.len() } ],
        })
        .to_string();
        let info = core
            .images
            .put(&ImagePut {
                tag: Some("docker.io/library/busybox:latest".into()),
                repo_digest: None,
                index: None,
                manifest: RawBlob {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    digest: Digest::of(manifest.as_bytes()).to_string(),
                    text: manifest,
                },
                config: RawBlob {
                    media_type: "application/vnd.oci.image.config.v1+json".into(),
                    digest: config_digest,
                    text: config,
                },
                layers: vec![LayerRef {
                    digest: diff.clone(),
                    size: layer.len() as u64,
                    media_type: LAYER_MT.into(),
                    diff_id: diff.clone(),
                    chain_id: diff,
                }],
            })
            .unwrap();
        Fixture {
            root,
            core: Some(core),
            image_id: info.id,
        }
    }

    fn core(&self) -> &Arc<Core> {
        self.core.as_ref().unwrap()
    }

    fn spec(&self, cmd: &[&str]) -> ContainerSpec {
        ContainerSpec {
            image_id: self.image_id.clone(),
            image_ref: "busybox".into(),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    fn create(&self, spec: ContainerSpec) -> ContainerRef {
        let (id, _) = self
            .core()
            .containers
            .create(&self.core().images, spec)
            .unwrap();
        assert_eq!(id.len(), 64);
        ContainerRef(id)
    }

    fn run(&self, cmd: &[&str]) -> (ContainerRef, i64) {
        let c = self.create(self.spec(cmd));
        self.core().containers.start(&c).unwrap();
        let (code, _) = self
            .core()
            .containers
            .wait(&c, WaitCondition::NotRunning)
            .unwrap();
        (c, code)
    }

    fn logs(&self, c: &ContainerRef, tail: Option<u64>, since: f64) -> Vec<LogFrame> {
        let core = self.core().clone();
        let req = LogsRequest {
            container: c.clone(),
            follow: false,
            stdout: true,
            stderr: true,
            since,
            until: 0.0,
            tail,
        };
        runtime().block_on(async move {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(core.serve_connection(server));
            client_handshake(&mut client, &Hello::new("test", Channel::Logs(req)))
                .await
                .unwrap();
            let mut out = Vec::new();
            loop {
                match read_frame::<_, LogFrame>(&mut client).await {
                    Ok(f) => out.push(f),
                    Err(FrameError::Closed) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            out
        })
    }
}

impl Drop for Fixture {
    /// Leaves no container, mount or process behind.
    fn drop(&mut self) {
        if let Some(core) = &self.core {
            for c in core.containers.list(true).unwrap_or_default() {
                let _ = core.containers.remove(&ContainerRef(c.id), true);
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn lines(frames: &[LogFrame]) -> Vec<(String, String)> {
    frames
        .iter()
        .map(|f| (f.stream.clone(), f.log.clone()))
        .collect()
}

fn pair(stream: &str, log: &str) -> (String, String) {
    (stream.to_string(), log.to_string())
}

#[test]
fn echo_runs_and_logs_stdout() {
    let fx = Fixture::new();
    let (c, code) = fx.run(&["echo", "hello"]);
    assert_eq!(code, 0);
    assert_eq!(lines(&fx.logs(&c, None, 0.0)), [pair("stdout", "hello\n")]);
    let info = fx.core().containers.inspect(&c).unwrap();
    assert_eq!(info.state.status, ContainerStatus::Exited);
    assert_eq!(info.state.exit_code, Some(0));
    assert!(info.state.started_at.is_some() && info.state.finished_at.is_some());
    assert_eq!(
        (info.path.as_str(), info.args.as_slice()),
        ("echo", &["hello".to_string()][..])
    );
    assert_eq!(info.runtime, fx.core().containers.default_runtime());
    assert_eq!(info.spec.labels["from"], "image");
    assert!(info.name.contains('_'), "generated name {}", info.name);
    let log = std::fs::read_to_string(&info.log_path).unwrap();
    assert!(
        log.starts_with("{\"log\":\"hello\\n\",\"stream\":\"stdout\",\"time\":\""),
        "{log}"
    );
    // The run is over: nothing stays mounted.
    let rootfs = fx.root.path().join("containers").join(&c.0).join("rootfs");
    assert!(!berth_core::container::rootfs::is_mounted(&rootfs));
}

#[test]
fn exit_code_and_both_streams() {
    let fx = Fixture::new();
    let (c, code) = fx.run(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(code, 3);
    let mut got = lines(&fx.logs(&c, None, 0.0));
    got.sort();
    assert_eq!(got, [pair("stderr", "err\n"), pair("stdout", "out\n")]);
    let info = fx.core().containers.inspect(&c).unwrap();
    assert_eq!(info.state.exit_code, Some(3));
}

#[test]
fn env_workdir_and_user_are_merged() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "echo $A $FROM_IMAGE $(pwd) $(id -u) $(id -g) $HOME $(hostname)",
    ]);
    spec.env = vec!["A=1".into(), "FROM_IMAGE=request".into()];
    spec.working_dir = Some("/tmp".into());
    spec.user = Some("65534".into());
    spec.hostname = Some("boxy".into());
    let c = fx.create(spec);
    fx.core().containers.start(&c).unwrap();
    let (code, _) = fx
        .core()
        .containers
        .wait(&c, WaitCondition::NextExit)
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        lines(&fx.logs(&c, None, 0.0)),
        [pair(
            "stdout",
            "1 request /tmp 65534 65534 /nonexistent boxy\n"
        )]
    );
    let info = fx.core().containers.inspect(&c).unwrap();
    assert_eq!(
        info.env,
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "FROM_IMAGE=request",
            "A=1"
        ]
    );
    assert_eq!(
        (info.user.as_str(), info.working_dir.as_str()),
        ("65534", "/tmp")
    );
}

#[test]
fn a_running_container_survives_a_core_restart() {
    let mut fx = Fixture::new();
    let c = fx.create(fx.spec(&["sleep", "30"]));
    fx.core().containers.start(&c).unwrap();
    let pid = fx.core().containers.inspect(&c).unwrap().state.pid.unwrap();
    // "Restart" the core: drop it (closing its stores) and open a new one on the same root.
    drop(fx.core.take());
    fx.core = Some(open_core(fx.root.path()));
    let info = fx.core().containers.inspect(&c).unwrap();
    assert_eq!(info.state.status, ContainerStatus::Running);
    assert_eq!(info.state.pid, Some(pid));
    let started = Instant::now();
    fx.core().containers.stop(&c, None, Some(1)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
    let info = fx.core().containers.inspect(&c).unwrap();
    assert_eq!(info.state.status, ContainerStatus::Exited);
    // sleep is PID 1 in its namespace: SIGTERM has no default action there, SIGKILL ends it.
    assert_eq!(info.state.exit_code, Some(137));
}

#[test]
fn stop_kills_after_the_timeout() {
    let fx = Fixture::new();
    let c = fx.create(fx.spec(&["sleep", "100"]));
    fx.core().containers.start(&c).unwrap();
    assert_eq!(fx.core().containers.list(false).unwrap().len(), 1);
    let started = Instant::now();
    fx.core().containers.stop(&c, None, Some(1)).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let (code, _) = fx
        .core()
        .containers
        .wait(&c, WaitCondition::NotRunning)
        .unwrap();
    assert!(code == 137 || code == 143, "exit code {code}");
    assert!(fx.core().containers.list(false).unwrap().is_empty());
    assert_eq!(fx.core().containers.list(true).unwrap().len(), 1);
    // Stopping a stopped container does nothing; killing one is a conflict.
    fx.core().containers.stop(&c, None, Some(1)).unwrap();
    let e: berth_proto::Error = fx.core().containers.kill(&c, "KILL").unwrap_err().into();
    assert_eq!(e.code, ErrorCode::Conflict);
}

#[test]
fn kill_sends_the_signal() {
    let fx = Fixture::new();
    let c = fx.create(fx.spec(&[
        "sh",
        "-c",
        "trap 'echo got USR1; exit 7' USR1; while true; do sleep 0.1; done",
    ]));
    fx.core().containers.start(&c).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    fx.core().containers.kill(&c, "SIGUSR1").unwrap();
    let (code, _) = fx
        .core()
        .containers
        .wait(&c, WaitCondition::NotRunning)
        .unwrap();
    assert_eq!(code, 7);
    assert_eq!(
        lines(&fx.logs(&c, None, 0.0)),
        [pair("stdout", "got USR1\n")]
    );
}

fn mounts_mention(path: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .contains(&path.display().to_string())
}

#[test]
fn removing_a_running_container_needs_force() {
    let fx = Fixture::new();
    let c = fx.create(fx.spec(&["sleep", "100"]));
    fx.core().containers.start(&c).unwrap();
    let rootfs = fx.root.path().join("containers").join(&c.0).join("rootfs");
    assert!(mounts_mention(&rootfs));
    let e: berth_proto::Error = fx.core().containers.remove(&c, false).unwrap_err().into();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(
        e.message,
        format!("You cannot remove a running container {}. Stop the container before attempting removal or force remove", c.0)
    );
    fx.core().containers.remove(&c, true).unwrap();
    assert!(!mounts_mention(&rootfs));
    assert!(!fx.root.path().join("containers").join(&c.0).exists());
    let e: berth_proto::Error = fx.core().containers.inspect(&c).unwrap_err().into();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(e.message, format!("No such container: {}", c.0));
}

#[test]
fn names_are_unique_and_refer_to_containers() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["true"]);
    spec.name = Some("web".into());
    let c = fx.create(spec.clone());
    let e: berth_proto::Error = fx
        .core()
        .containers
        .create(&fx.core().images, spec.clone())
        .unwrap_err()
        .into();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(
        e.message,
        format!("Conflict. The container name \"/web\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.", c.0)
    );
    let by = |s: &str| {
        fx.core()
            .containers
            .inspect(&ContainerRef(s.into()))
            .map(|i| i.id)
    };
    assert_eq!(by("web").unwrap(), c.0);
    assert_eq!(by("/web").unwrap(), c.0);
    assert_eq!(by(&c.0[..10]).unwrap(), c.0);
    assert!(by("nope").is_err());
    spec.name = Some("bad name".into());
    let e: berth_proto::Error = fx
        .core()
        .containers
        .create(&fx.core().images, spec)
        .unwrap_err()
        .into();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    fx.core().containers.remove(&c, false).unwrap();
    let mut spec = fx.spec(&["true"]);
    spec.name = Some("/web".into());
    let again = fx.create(spec);
    assert_eq!(fx.core().containers.inspect(&again).unwrap().name, "web");
}

#[test]
fn logs_honour_tail_and_since() {
    let fx = Fixture::new();
    let (c, code) = fx.run(&["sh", "-c", "echo 1; echo 2; echo 3"]);
    assert_eq!(code, 0);
    let all = fx.logs(&c, None, 0.0);
    assert_eq!(all.len(), 3);
    let tail: Vec<String> = fx
        .logs(&c, Some(2), 0.0)
        .into_iter()
        .map(|f| f.log)
        .collect();
    assert_eq!(tail, ["2\n", "3\n"]);
    let later = berth_core::container::logs::unix_seconds(&all[2].time) + 10.0;
    assert!(fx.logs(&c, None, later).is_empty());
    assert_eq!(fx.logs(&c, Some(0), 0.0).len(), 0);
}

#[test]
fn attach_before_start_receives_the_output() {
    let fx = Fixture::new();
    let c = fx.create(fx.spec(&["sh", "-c", "sleep 0.2; echo attached; echo e >&2; exit 2"]));
    let core = fx.core().clone();
    let req = AttachRequest {
        container: c.clone(),
        stdin: false,
        stdout: true,
        stderr: true,
        logs: false,
    };
    let rt = runtime();
    let (mut client, server) = tokio::io::duplex(1 << 16);
    rt.spawn(core.clone().serve_connection(server));
    rt.block_on(client_handshake(
        &mut client,
        &Hello::new("test", Channel::Attach(req)),
    ))
    .unwrap();
    core.containers.start(&c).unwrap();
    let bytes = rt.block_on(async move {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut out))
            .await
            .expect("the attach stream ends when the container exits")
            .unwrap();
        out
    });
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 8 {
        let len = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
        frames.push((
            rest[0],
            String::from_utf8(rest[8..8 + len].to_vec()).unwrap(),
        ));
        rest = &rest[8 + len..];
    }
    assert!(rest.is_empty());
    frames.sort();
    assert_eq!(
        frames,
        [(1, "attached\n".to_string()), (2, "e\n".to_string())]
    );
    let (code, _) = core.containers.wait(&c, WaitCondition::NotRunning).unwrap();
    assert_eq!(code, 2);
}

#[test]
fn a_missing_command_fails_the_start_like_docker() {
    let fx = Fixture::new();
    let c = fx.create(fx.spec(&["nosuch"]));
    let e: berth_proto::Error = fx.core().containers.start(&c).unwrap_err().into();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(
        e.message
            .contains("exec: \"nosuch\": executable file not found in $PATH"),
        "{}",
        e.message
    );
    let info = fx.core().containers.inspect(&c).unwrap();
    assert_eq!(info.state.status, ContainerStatus::Created);
    assert_eq!(info.state.exit_code, Some(127));
    assert!(info
        .state
        .error
        .unwrap()
        .contains("executable file not found"));
    let rootfs = fx.root.path().join("containers").join(&c.0).join("rootfs");
    assert!(!mounts_mention(&rootfs));
}

#[test]
fn auto_remove_removes_after_exit() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sh", "-c", "exit 4"]);
    spec.host.auto_remove = true;
    let c = fx.create(spec);
    fx.core().containers.start(&c).unwrap();
    let (code, _) = fx
        .core()
        .containers
        .wait(&c, WaitCondition::Removed)
        .unwrap();
    assert_eq!(code, 4);
    assert!(fx.core().containers.inspect(&c).is_err());
    assert!(!fx.root.path().join("containers").join(&c.0).exists());
}

#[test]
fn unsupported_options_are_refused_clearly() {
    let fx = Fixture::new();
    // A network mode Berth does not have (named volumes, once refused here, are supported).
    let mut spec = fx.spec(&["true"]);
    spec.host.network_mode = "container:other".into();
    let e: berth_proto::Error = fx
        .core()
        .containers
        .create(&fx.core().images, spec)
        .unwrap_err()
        .into();
    assert_eq!(e.code, ErrorCode::Unsupported);
    assert!(fx.core().containers.list(true).unwrap().is_empty());
    let mut spec = fx.spec(&["true"]);
    spec.user = Some("nosuchuser".into());
    let e: berth_proto::Error = fx
        .core()
        .containers
        .create(&fx.core().images, spec)
        .unwrap_err()
        .into();
    assert_eq!(
        e.message,
        "unable to find user nosuchuser: no matching entries in passwd file"
    );
}

#[test]
fn binds_read_only_rootfs_and_network_none() {
    let fx = Fixture::new();
    let host_dir = fx.root.path().join("shared");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("in.txt"), "from host\n").unwrap();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "cat /data/in.txt; touch /x 2>/dev/null || echo ro; ls /sys/class/net; echo ok > /scratch/f && cat /scratch/f",
    ]);
    spec.host.binds = vec![format!("{}:/data:ro", host_dir.display())];
    spec.host.read_only_rootfs = true;
    spec.host.network_mode = "none".into();
    spec.host.tmpfs.insert("/scratch".into(), "size=1m".into());
    let c = fx.create(spec);
    fx.core().containers.start(&c).unwrap();
    let (code, _) = fx
        .core()
        .containers
        .wait(&c, WaitCondition::NotRunning)
        .unwrap();
    let out: String = fx.logs(&c, None, 0.0).into_iter().map(|f| f.log).collect();
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "from host\nro\nlo\nok\n");
}

#[test]
fn an_image_in_use_is_not_removed() {
    use berth_proto::{ImageSelector, Request, RequestFrame, Response, ResponseFrame};
    let fx = Fixture::new();
    let c = fx.create(fx.spec(&["true"]));
    let core = fx.core().clone();
    let remove = |selector: ImageSelector| {
        let core = core.clone();
        runtime().block_on(async move {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(core.serve_connection(server));
            client_handshake(&mut client, &Hello::new("test", Channel::Control))
                .await
                .unwrap();
            let req = Request::ImageRemove {
                selector,
                force: true,
                prune: true,
            };
            berth_proto::write_frame(
                &mut client,
                &RequestFrame {
                    id: 1,
                    request: req,
                },
            )
            .await
            .unwrap();
            read_frame::<_, ResponseFrame>(&mut client)
                .await
                .unwrap()
                .result
        })
    };
    let by_name = ImageSelector {
        name: Some("docker.io/library/busybox:latest".into()),
        id_prefix: None,
    };
    let e = remove(by_name.clone()).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(e.message.contains(&c.0[..12]), "{}", e.message);
    fx.core().containers.remove(&c, false).unwrap();
    assert!(matches!(remove(by_name), Ok(Response::Removed { .. })));
}

/// A create cut short between its bundle and its record (a crash) leaves a directory only; the
/// next open deletes it and keeps every bundle that has a record.
#[test]
fn a_bundle_without_a_record_is_removed_at_open() {
    let mut fx = Fixture::new();
    let c = fx.create(fx.spec(&["true"]));
    drop(fx.core.take());
    let containers = fx.root.path().join("containers");
    let orphan = containers.join("ab".repeat(32));
    std::fs::create_dir_all(orphan.join("upper")).unwrap();
    let not_an_id = containers.join("notes");
    std::fs::create_dir_all(&not_an_id).unwrap();
    fx.core = Some(open_core(fx.root.path()));
    assert!(!orphan.exists(), "the orphan bundle is gone");
    assert!(containers.join(&c.0).exists(), "a recorded bundle stays");
    assert!(not_an_id.exists(), "only id-named directories are touched");
    fx.core().containers.inspect(&c).unwrap();
}

#[test]
fn a_tty_container_starts_at_its_console_size_and_logs_what_the_terminal_shows() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sh", "-c", "echo a; stty size; printf prompt"]);
    spec.tty = true;
    spec.console_size = Some((11, 22));
    let c = fx.create(spec);
    fx.core().containers.start(&c).unwrap();
    let (code, _) = fx
        .core()
        .containers
        .wait(&c, WaitCondition::NotRunning)
        .unwrap();
    assert_eq!(code, 0);
    let shown: String = fx
        .logs(&c, None, 0.0)
        .iter()
        .map(|f| f.log.clone())
        .collect();
    // The terminal's line endings, and a last line without a newline is kept.
    assert_eq!(shown, "a\r\n11 22\r\nprompt");
}

/// The exec channel at the protocol seam: stdin packets in, stdcopy frames out, the exit code
/// recorded before the stream ends; refusals in the handshake.
#[test]
fn exec_takes_stdin_and_records_its_exit_code_before_its_stream_ends() {
    use berth_proto::{ExecAttachRequest, ExecSpec, HandshakeError, Packet};
    use tokio::io::AsyncWriteExt;
    let fx = Fixture::new();
    let c = fx.create(fx.spec(&["sleep", "100"]));
    fx.core().containers.start(&c).unwrap();
    let svc = fx.core().containers.clone();
    let exec = svc
        .exec_create(ExecSpec {
            container: c.clone(),
            cmd: ["sh", "-c", "read x; echo got $x; echo e >&2; exit 4"]
                .map(String::from)
                .to_vec(),
            attach_stdin: true,
            attach_stdout: true,
            attach_stderr: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(svc.exec_inspect(&exec).unwrap().exit_code, None);
    let core = fx.core().clone();
    let dial = move |exec: &str| {
        let core = core.clone();
        let req = ExecAttachRequest { exec: exec.into() };
        async move {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(core.serve_connection(server));
            client_handshake(&mut client, &Hello::new("test", Channel::Exec(req)))
                .await
                .map(|_| client)
        }
    };
    let rt = runtime();
    let body = rt.block_on(async {
        let mut s = dial(&exec).await.unwrap();
        s.write_all(&Packet::Stdin(b"hi\n".to_vec()).encode())
            .await
            .unwrap();
        s.write_all(&Packet::CloseStdin.encode()).await.unwrap();
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.unwrap();
        body
    });
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut rest = &body[..];
    while rest.len() >= 8 {
        let len = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
        let payload = &rest[8..8 + len];
        match rest[0] {
            1 => out.extend_from_slice(payload),
            2 => err.extend_from_slice(payload),
            k => panic!("stream {k}"),
        }
        rest = &rest[8 + len..];
    }
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"got hi\n"[..], &b"e\n"[..])
    );
    let info = svc.exec_inspect(&exec).unwrap();
    assert_eq!((info.running, info.exit_code), (false, Some(4)));
    assert!(info.pid.is_some());

    let refused = |exec: &str| match rt.block_on(dial(exec)) {
        Err(HandshakeError::Refused(e)) => e,
        other => panic!("not refused: {:?}", other.map(|_| ())),
    };
    let e = refused(&exec);
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(
        e.message,
        format!("Error: Exec command {exec} has already run")
    );
    let e = refused("nope");
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::NotFound, "No such exec instance: nope")
    );
    fx.core().containers.stop(&c, None, Some(0)).unwrap();
    let e: berth_proto::Error = svc
        .exec_create(ExecSpec {
            container: c.clone(),
            cmd: vec!["true".into()],
            ..Default::default()
        })
        .unwrap_err()
        .into();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(e.message, format!("container {} is not running", c.0));
}
