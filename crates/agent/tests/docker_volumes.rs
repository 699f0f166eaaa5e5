//! The real `docker` CLI against a real berthd for volumes (named, anonymous, the image's,
//! copy-up, the volume routes), memory limits with the OOM killer, `--pids-limit`, and that bad
//! input and stops leave no mounts, cgroups, network namespaces or supervisors behind. Runs on
//! the direct backend, and with BERTH_TEST_BACKEND=qemu on the core in the VM (the host-side
//! checks are direct-only).

mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{fixtures, skip_unless_direct, Berthd};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn busybox() -> String {
    format!("{}/berth/busybox:latest", fixtures()["BERTH_FIX_OPEN"])
}

fn layers() -> String {
    format!("{}/berth/layers:latest", fixtures()["BERTH_FIX_OPEN"])
}

fn inspect(d: &Berthd, what: &[&str]) -> Value {
    let mut args = vec!["inspect"];
    args.extend_from_slice(what);
    let v: Value = serde_json::from_str(&d.docker_ok(&args)).unwrap();
    v[0].clone()
}

/// Runs docker expecting it to fail; returns its stderr.
fn docker_err(d: &Berthd, args: &[&str]) -> String {
    let out = d.docker(args);
    assert!(
        !out.status.success(),
        "docker {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn volume_names(d: &Berthd, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["volume", "ls", "-q"];
    args.extend_from_slice(extra);
    let mut v: Vec<String> = d.docker_ok(&args).lines().map(str::to_string).collect();
    v.sort();
    v
}

fn is_anonymous_name(n: &str) -> bool {
    n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn named_volumes_keep_data_copy_up_and_are_refused_while_used() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    d.docker_ok(&["pull", "-q", &layers()]);

    // Created by hand, with a label: dockerd's record.
    assert_eq!(
        d.docker_ok(&["volume", "create", "--label", "team=a", "v1"])
            .trim(),
        "v1"
    );
    let v = inspect(&d, &["--type", "volume", "v1"]);
    assert_eq!(v["Name"], "v1");
    assert_eq!(v["Driver"], "local");
    assert_eq!(v["Scope"], "local");
    assert_eq!(v["Labels"]["team"], "a");
    assert!(v["CreatedAt"].as_str().unwrap().ends_with('Z'), "{v}");
    let mountpoint = v["Mountpoint"].as_str().unwrap().to_string();
    if test_is_direct() {
        assert_eq!(
            Path::new(&mountpoint),
            d.data_root.join("core/volumes/v1/_data"),
            "{v}"
        );
    }
    // Bad names and drivers, in dockerd's words.
    let e = docker_err(&d, &["volume", "create", "a"]);
    assert!(
        e.contains("create a: volume name is too short, names should be at least two alphanumeric characters"),
        "{e}"
    );
    for bad in ["a/b", "..", "../etc"] {
        let e = docker_err(&d, &["volume", "create", bad]);
        assert!(
            e.contains(&format!(
                "create {bad}: \"{bad}\" includes invalid characters for a local volume name"
            )),
            "{e}"
        );
    }
    let e = docker_err(&d, &["volume", "create", "-d", "nope", "v4"]);
    assert!(
        e.contains("create v4: error looking up volume plugin nope: plugin \"nope\" not found"),
        "{e}"
    );
    let e = docker_err(&d, &["volume", "create", "-o", "foo=bar", "v5"]);
    assert!(e.contains("create v5: invalid option: \"foo\""), "{e}");
    let e = docker_err(&d, &["run", "--rm", "-v", "bad$name:/x", &image, "true"]);
    assert!(e.contains("includes invalid characters"), "{e}");
    let e = docker_err(&d, &["run", "--rm", "-v", "ok1:/x:bogus", &image, "true"]);
    assert!(e.contains("invalid mode: bogus"), "{e}");

    // Data written by one container is there for the next; read-only means read-only.
    d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "v1:/data",
        &image,
        "sh",
        "-c",
        "echo hello > /data/f",
    ]);
    let out = d.docker_ok(&["run", "--rm", "-v", "v1:/data:ro", &image, "cat", "/data/f"]);
    assert_eq!(out, "hello\n");
    let e = docker_err(
        &d,
        &[
            "run",
            "--rm",
            "-v",
            "v1:/data:ro",
            &image,
            "sh",
            "-c",
            "echo x > /data/g",
        ],
    );
    assert!(e.contains("Read-only file system"), "{e}");

    // A volume named by `run` is made on demand and first filled with the image's /etc.
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "etcvol:/etc",
        &image,
        "cat",
        "/etc/passwd",
    ]);
    assert!(out.starts_with("root:"), "{out}");
    assert!(volume_names(&d, &[]).contains(&"etcvol".to_string()));
    let out = d.docker_ok(&["run", "--rm", "-v", "etcvol:/x", &image, "ls", "/x"]);
    let files: Vec<&str> = out.lines().collect();
    assert!(
        files.contains(&"passwd") && files.contains(&"group"),
        "{out}"
    );
    // Changed content is kept: no second copy-up over it.
    d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "etcvol:/etc",
        &image,
        "sh",
        "-c",
        "echo mine > /etc/passwd",
    ]);
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "etcvol:/etc",
        &image,
        "cat",
        "/etc/passwd",
    ]);
    assert_eq!(out, "mine\n");
    // nocopy: the volume starts empty (but for what the runtime mounts there).
    let out = d.docker_ok(&["run", "--rm", "-v", "nc:/etc:nocopy", &image, "ls", "/etc"]);
    assert!(!out.contains("passwd"), "{out}");

    // Copy-up keeps owners and modes (berth/layers has setuid, setgid, sticky, other owners).
    d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "perm:/perm",
        "-v",
        "owners:/owners",
        &layers(),
    ]);
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "perm:/p",
        "-v",
        "owners:/o",
        &image,
        "stat",
        "-c",
        "%a %u:%g %n",
        "/p/setgid-dir",
        "/p/setgid-dir/file.txt",
        "/p/setuid",
        "/p/sticky",
        "/p/sticky/nobody-file",
        "/p/readonly",
        "/o/dir1000",
        "/o/dir1000/file",
        "/o/nobody",
    ]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "2775 0:1000 /p/setgid-dir",
            "664 0:1000 /p/setgid-dir/file.txt",
            "4755 0:0 /p/setuid",
            "1777 0:0 /p/sticky",
            "644 65534:65534 /p/sticky/nobody-file",
            "444 0:0 /p/readonly",
            "750 1000:1000 /o/dir1000",
            "640 1000:1000 /o/dir1000/file",
            "600 65534:65534 /o/nobody",
        ],
        "{out}"
    );

    // Inspect's Mounts, as dockerd shows them; `--mount` makes anonymous volumes with labels.
    let host_dir = tempfile::tempdir().unwrap();
    let bind = format!("{}:/b:ro", host_dir.path().display());
    let id = d
        .docker_ok(&[
            "run",
            "-d",
            "--name",
            "m1",
            "-v",
            "v1:/data",
            "-v",
            &bind,
            "--mount",
            "type=volume,dst=/m,volume-label=made=by-mount",
            &image,
            "sleep",
            "1000",
        ])
        .trim()
        .to_string();
    let c = inspect(&d, &["m1"]);
    let mounts = c["Mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 3, "{c}");
    let by = |dst: &str| {
        mounts
            .iter()
            .find(|m| m["Destination"] == dst)
            .unwrap_or_else(|| panic!("no mount at {dst}: {mounts:?}"))
            .clone()
    };
    let m = by("/data");
    assert_eq!(m["Type"], "volume");
    assert_eq!(m["Name"], "v1");
    assert_eq!(m["Source"], mountpoint.as_str());
    assert_eq!(m["Driver"], "local");
    assert_eq!(m["Mode"], "z");
    assert_eq!(m["RW"], true);
    assert_eq!(m["Propagation"], "");
    let b = by("/b");
    assert_eq!(b["Type"], "bind");
    assert_eq!(b["Source"], host_dir.path().display().to_string());
    assert_eq!(b["Mode"], "ro");
    assert_eq!(b["RW"], false);
    assert_eq!(b["Propagation"], "rprivate");
    assert!(b.get("Name").is_none() && b.get("Driver").is_none(), "{b}");
    let anon = by("/m");
    let anon_name = anon["Name"].as_str().unwrap().to_string();
    assert!(is_anonymous_name(&anon_name), "{anon}");
    let av = inspect(&d, &["--type", "volume", &anon_name]);
    assert_eq!(av["Labels"]["made"], "by-mount", "{av}");
    // The CLI sends -v in no particular order.
    let binds = c["HostConfig"]["Binds"].as_array().unwrap();
    assert!(binds.contains(&Value::from("v1:/data")), "{binds:?}");
    assert!(binds.contains(&Value::from(bind.as_str())), "{binds:?}");
    assert_eq!(c["HostConfig"]["Mounts"][0]["Type"], "volume");
    let ps = d.docker_ok(&["ps", "--filter", "name=m1", "--format", "{{.Mounts}}"]);
    assert!(ps.contains("v1"), "{ps}");

    // In use: refused, force or not (dockerd 20.10 refuses both).
    for args in [
        &["volume", "rm", "v1"][..],
        &["volume", "rm", "-f", "v1"][..],
    ] {
        let e = docker_err(&d, args);
        assert!(
            e.contains(&format!("remove v1: volume is in use - [{id}]")),
            "{e}"
        );
    }
    let (code, body) = d.api("DELETE", "/volumes/v1", None);
    assert_eq!(code, 409, "{body}");
    // Missing: 404, not an error with force.
    let e = docker_err(&d, &["volume", "rm", "nosuch"]);
    assert!(e.contains("get nosuch: no such volume"), "{e}");
    d.docker_ok(&["volume", "rm", "-f", "nosuch"]);
    let (code, _) = d.api("GET", "/volumes/nosuch", None);
    assert_eq!(code, 404);

    // Filters.
    assert_eq!(volume_names(&d, &["--filter", "label=team=a"]), ["v1"]);
    assert_eq!(
        volume_names(&d, &["--filter", "label=team=b"]),
        Vec::<String>::new()
    );
    let dangling = volume_names(&d, &["--filter", "dangling=true"]);
    assert!(!dangling.contains(&"v1".to_string()) && !dangling.contains(&anon_name));
    assert!(dangling.contains(&"etcvol".to_string()), "{dangling:?}");
    let used = volume_names(&d, &["--filter", "dangling=false"]);
    assert_eq!(used, {
        let mut u = vec!["v1".to_string(), anon_name.clone()];
        u.sort();
        u
    });
    assert_eq!(volume_names(&d, &["--filter", "name=etc"]), ["etcvol"]);
    assert_eq!(volume_names(&d, &["--filter", "driver=local"]).len(), 6);

    // system df counts the data and the users.
    let (code, df) = d.api("GET", "/system/df", None);
    assert_eq!(code, 200, "{df}");
    let v1 = df["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["Name"] == "v1")
        .unwrap()
        .clone();
    assert_eq!(v1["UsageData"]["Size"], 6, "{v1}");
    assert_eq!(v1["UsageData"]["RefCount"], 1, "{v1}");
    let out = d.docker_ok(&["system", "df", "-v"]);
    assert!(out.contains("Local Volumes space usage"), "{out}");

    // Removing the container without -v keeps even its anonymous volume; prune (API 1.45)
    // removes anonymous volumes only, `--all` the named ones too.
    d.docker_ok(&["rm", "-f", "m1"]);
    assert!(volume_names(&d, &[]).contains(&anon_name));
    let out = d.docker_ok(&["volume", "prune", "-f"]);
    assert!(out.contains(&anon_name), "{out}");
    let left = volume_names(&d, &[]);
    assert!(!left.contains(&anon_name), "{left:?}");
    assert_eq!(left, ["etcvol", "nc", "owners", "perm", "v1"]);
    // An old client (API 1.41) prunes every unused volume, as dockerd 20.10 did; here with a
    // label filter so only one goes.
    let (code, body) = d.api(
        "POST",
        "/v1.41/volumes/prune?filters=%7B%22label%22%3A%7B%22team%3Da%22%3Atrue%7D%7D",
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["VolumesDeleted"], serde_json::json!(["v1"]));
    assert_eq!(body["SpaceReclaimed"], 6);
    d.docker_ok(&["volume", "prune", "-a", "-f"]);
    assert_eq!(volume_names(&d, &[]), Vec::<String>::new());
    if test_is_direct() {
        let left: Vec<_> = std::fs::read_dir(d.data_root.join("core/volumes"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

fn test_is_direct() -> bool {
    harness::test_backend() == "direct"
}

/// Pushes (once; the content is fixed) `berth/busybox:with-volume` to the open fixture
/// registry: berth/busybox's layer with `Volumes: {"/etc": {}, "/srv/empty": {}}` in its config.
fn image_with_volumes() -> String {
    let reg = fixtures()["BERTH_FIX_OPEN"].clone();
    let curl = |args: &[&str]| -> Vec<u8> {
        let out = Command::new("curl")
            .args(["-sSf"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let base = format!("http://{reg}/v2/berth/busybox");
    let manifest: Value = serde_json::from_slice(&curl(&[
        "-H",
        &format!("Accept: {oci}"),
        &format!("{base}/manifests/latest"),
    ]))
    .unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let mut config: Value =
        serde_json::from_slice(&curl(&[&format!("{base}/blobs/{config_digest}")])).unwrap();
    config["config"]["Volumes"] = serde_json::json!({ "/etc": {}, "/srv/empty": {} });
    let config = serde_json::to_vec(&config).unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("config.json");
    std::fs::write(&config_file, &config).unwrap();
    // A monolithic upload: POST for a location, PUT the bytes with the digest.
    let head = String::from_utf8(curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        &format!("{base}/blobs/uploads/"),
    ]))
    .unwrap();
    let location = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .expect("upload location");
    let location = if location.starts_with('/') {
        format!("http://{reg}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", config_file.display()),
        &format!("{location}{sep}digest={digest}"),
    ]);
    let mut m = manifest.clone();
    m["config"]["digest"] = digest.into();
    m["config"]["size"] = config.len().into();
    let manifest_file = dir.path().join("manifest.json");
    std::fs::write(&manifest_file, serde_json::to_vec(&m).unwrap()).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {oci}"),
        "--data-binary",
        &format!("@{}", manifest_file.display()),
        &format!("{base}/manifests/with-volume"),
    ]);
    format!("{reg}/berth/busybox:with-volume")
}

#[test]
fn anonymous_volumes_go_with_rm_v_and_auto_remove() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);

    // `--rm` removes the anonymous volume with the container.
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "/anon",
        &image,
        "sh",
        "-c",
        "echo x > /anon/f; ls /anon",
    ]);
    assert_eq!(out, "f\n");
    assert_eq!(volume_names(&d, &[]), Vec::<String>::new());

    // `rm -v` removes anonymous volumes, never named ones; plain `rm` keeps both.
    d.docker_ok(&[
        "create", "--name", "a1", "-v", "/anon", "-v", "keep:/k", &image, "true",
    ]);
    let c = inspect(&d, &["a1"]);
    assert_eq!(
        c["Config"]["Volumes"],
        serde_json::json!({ "/anon": {} }),
        "{c}"
    );
    let anon = c["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == "/anon")
        .unwrap()
        .clone();
    let name = anon["Name"].as_str().unwrap().to_string();
    assert!(is_anonymous_name(&name), "{anon}");
    assert_eq!(anon["Mode"], "");
    assert_eq!(anon["Driver"], "local");
    assert_eq!(volume_names(&d, &[]), {
        let mut v = vec![name.clone(), "keep".into()];
        v.sort();
        v
    });
    d.docker_ok(&["rm", "-v", "a1"]);
    assert_eq!(volume_names(&d, &[]), ["keep"]);
    d.docker_ok(&["create", "--name", "a2", "-v", "/anon", &image, "true"]);
    d.docker_ok(&["rm", "a2"]);
    let left = volume_names(&d, &[]);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|n| is_anonymous_name(n)), "{left:?}");

    // The image's Volumes: anonymous volumes, filled from the image, gone with `--rm`.
    let with_volume = image_with_volumes();
    d.docker_ok(&["pull", "-q", &with_volume]);
    let before = volume_names(&d, &[]);
    d.docker_ok(&["create", "--name", "iv", &with_volume, "cat", "/etc/passwd"]);
    let c = inspect(&d, &["iv"]);
    let dests: Vec<&str> = c["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Destination"].as_str().unwrap())
        .collect();
    assert_eq!(dests, ["/etc", "/srv/empty"], "{c}");
    assert_eq!(
        c["Config"]["Volumes"],
        serde_json::json!({ "/etc": {}, "/srv/empty": {} })
    );
    assert_eq!(volume_names(&d, &[]).len(), before.len() + 2);
    let out = d.docker_ok(&["start", "-a", "iv"]);
    assert!(out.starts_with("root:"), "{out}");
    // The volumes' mount points are not changes of the container's layer (as dockerd).
    assert_eq!(d.docker_ok(&["diff", "iv"]), "");
    d.docker_ok(&["rm", "-v", "iv"]);
    assert_eq!(volume_names(&d, &[]), before);
    // A `-v` at the image's volume path replaces the anonymous volume.
    let out = d.docker_ok(&["run", "--rm", "-v", "etc2:/etc", &with_volume, "ls", "/etc"]);
    assert!(out.contains("passwd"), "{out}");
    let after = volume_names(&d, &[]);
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert!(after.contains(&"etc2".to_string()));
}

#[test]
fn memory_limit_kills_with_oom_reported() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    // The string doubles until it no longer fits in 64 MiB.
    let out = d.docker(&[
        "run",
        "--name",
        "hog",
        "-m",
        "64m",
        &image,
        "sh",
        "-c",
        "x=aaaaaaaa; while true; do x=$x$x; done",
    ]);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    let c = inspect(&d, &["hog"]);
    assert_eq!(c["State"]["OOMKilled"], true, "{c}");
    assert_eq!(c["State"]["ExitCode"], 137);
    assert_eq!(c["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(c["HostConfig"]["MemorySwap"], 128 << 20);

    // Under the limit: no OOM; killed some other way: no OOM either.
    d.docker_ok(&["run", "--name", "fine", "-m", "64m", &image, "true"]);
    assert_eq!(inspect(&d, &["fine"])["State"]["OOMKilled"], false);
    d.docker_ok(&[
        "run", "-d", "--name", "sleeper", "-m", "64m", &image, "sleep", "1000",
    ]);
    d.docker_ok(&["kill", "sleeper"]);
    d.docker_ok(&["wait", "sleeper"]);
    let s = &inspect(&d, &["sleeper"])["State"];
    assert_eq!(
        (s["ExitCode"].as_i64(), s["OOMKilled"].as_bool()),
        (Some(137), Some(false)),
        "{s}"
    );

    // An explicit --memory-swap is kept; dockerd's refusals.
    d.docker_ok(&[
        "create",
        "--name",
        "sw",
        "-m",
        "64m",
        "--memory-swap",
        "96m",
        &image,
    ]);
    assert_eq!(inspect(&d, &["sw"])["HostConfig"]["MemorySwap"], 96 << 20);
    let e = docker_err(
        &d,
        &[
            "run",
            "--rm",
            "-m",
            "64m",
            "--memory-swap",
            "32m",
            &image,
            "true",
        ],
    );
    assert!(
        e.contains("Minimum memoryswap limit should be larger than memory limit, see usage"),
        "{e}"
    );
    let e = docker_err(&d, &["run", "--rm", "--memory-swap", "32m", &image, "true"]);
    assert!(
        e.contains("You should always set the Memory limit when using Memoryswap limit, see usage"),
        "{e}"
    );
    let e = docker_err(&d, &["run", "--rm", "-m", "1m", &image, "true"]);
    assert!(e.contains("Minimum memory limit allowed is 6MB"), "{e}");
}

#[test]
fn pids_limit_makes_forks_fail() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let forks = "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait; echo all-forked";
    // Without a limit every fork works.
    let out = d.docker_ok(&["run", "--rm", &image, "sh", "-c", forks]);
    assert_eq!(out, "all-forked\n");
    // With 5 pids (the shell and four sleeps) the fifth sleep cannot be forked.
    let out = d.docker(&[
        "run",
        "--name",
        "pl",
        "--pids-limit",
        "5",
        &image,
        "sh",
        "-c",
        forks,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout} {stderr}");
    assert!(!stdout.contains("all-forked"), "{stdout}");
    assert!(stderr.contains("can't fork"), "{stderr}");
    let c = inspect(&d, &["pl"]);
    assert_eq!(c["HostConfig"]["PidsLimit"], 5, "{c}");
}

/// The container's traces on the host: mounts under the data root (but the core's own
/// network namespace), cgroups, the runtime's state and supervisor processes.
fn leftovers(d: &Berthd, ids: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let root = d.data_root.display().to_string();
    let own_netns = d.data_root.join("core/network/netns").display().to_string();
    for line in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        if let Some(point) = line.split(' ').nth(4) {
            if point.starts_with(&root) && point != own_netns {
                found.push(format!("mount {point}"));
            }
        }
    }
    let cgroup_roots: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .chain([Path::new("/sys/fs/cgroup").to_path_buf()])
        .collect();
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect();
    for id in ids {
        for r in &cgroup_roots {
            let p = r.join("berth").join(id);
            if p.exists() {
                found.push(format!("cgroup {}", p.display()));
            }
        }
        for runtime in ["runc", "crun"] {
            let p = d.data_root.join("core/runtime").join(runtime).join(id);
            if p.exists() {
                found.push(format!("runtime state {}", p.display()));
            }
        }
        let netns = d.data_root.join("core/containers").join(id).join("netns");
        if netns.exists() {
            found.push(format!("netns file {}", netns.display()));
        }
        for p in procs
            .iter()
            .filter(|c| c.contains(" shim ") && c.contains(id.as_str()))
        {
            found.push(format!("supervisor {p}"));
        }
    }
    found
}

#[test]
fn bad_input_and_stops_leave_nothing_behind() {
    if skip_unless_direct("the mounts, cgroups and processes checked are the guest's") {
        return;
    }
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let reg = fixtures()["BERTH_FIX_OPEN"].clone();

    // An image that does not exist: nothing is created.
    let e = docker_err(
        &d,
        &[
            "run",
            "--rm",
            &format!("{reg}/berth/no-such-image:1"),
            "true",
        ],
    );
    assert!(e.contains("not found") || e.contains("unknown"), "{e}");
    // A missing executable: 127, the container stays created.
    let out = d.docker(&["run", "--name", "e127", &image, "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    // A name clash.
    d.docker_ok(&["create", "--name", "dup", &image, "true"]);
    let e = docker_err(
        &d,
        &[
            "run", "--name", "dup", "-v", "clash:/x", "-v", "/y", &image, "true",
        ],
    );
    assert!(e.contains("is already in use"), "{e}");
    // Invalid port specs, through the CLI and straight at the API.
    docker_err(&d, &["run", "--rm", "-p", "99999:80", &image, "true"]);
    let (code, body) = d.api(
        "POST",
        "/containers/create?name=badport",
        Some(&format!(
            r#"{{"Image":"{image}","HostConfig":{{"PortBindings":{{"80/tcp":[{{"HostPort":"notaport"}}]}}}}}}"#
        )),
    );
    assert_eq!(code, 400, "{body}");
    // Bad mounts, refused before anything is made.
    docker_err(&d, &["run", "--rm", "-v", "ok1:/x:bogus", &image, "true"]);
    docker_err(
        &d,
        &[
            "run",
            "--rm",
            "--mount",
            "type=bind,src=/no/such/dir,dst=/x",
            &image,
            "true",
        ],
    );
    // A container that exits at once, with an anonymous volume and auto-remove.
    d.docker_ok(&["run", "--name", "quick", &image, "true"]);
    d.docker_ok(&["run", "--rm", "-v", "/scratch", &image, "true"]);
    // rm -f of a running one, on the bridge with a published port.
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "rf",
        "-p",
        "127.0.0.1::80",
        &image,
        "sleep",
        "1000",
    ]);
    // While it runs, every trace looked for below is there: the checks can see them.
    let rf_id = inspect(&d, &["rf"])["Id"].as_str().unwrap().to_string();
    let live = leftovers(&d, std::slice::from_ref(&rf_id));
    for kind in [
        "mount",
        "cgroup",
        "runtime state",
        "netns file",
        "supervisor",
    ] {
        assert!(
            live.iter().any(|l| l.starts_with(kind)),
            "no {kind} seen for a running container: {live:#?}"
        );
    }
    // One that ignores SIGTERM, stopped with -t 1 (killed after a second).
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        &image,
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 1; done",
    ]);
    d.docker_ok(&["stop", "-t", "1", "stubborn"]);
    assert_eq!(inspect(&d, &["stubborn"])["State"]["ExitCode"], 137);

    let ids: Vec<String> = d
        .docker_ok(&["ps", "-aq", "--no-trunc"])
        .lines()
        .map(str::to_string)
        .collect();
    assert!(ids.contains(&rf_id));
    d.docker_ok(&["rm", "-f", "rf"]);
    assert_eq!(ids.len(), 5, "e127, dup, quick, stubborn, rf: {ids:?}");
    assert_eq!(
        volume_names(&d, &[]),
        Vec::<String>::new(),
        "no volume survives the failed and auto-removed runs"
    );
    // The supervisors finish their last writes just after the state says the run is over.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = leftovers(&d, &ids);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // And the same after removing everything.
    d.docker_ok(&["rm", "-f", "e127", "dup", "quick", "stubborn"]);
    assert_eq!(leftovers(&d, &ids), Vec::<String>::new());
    let bundles: Vec<_> = std::fs::read_dir(d.data_root.join("core/containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(bundles.is_empty(), "{bundles:?}");
}
