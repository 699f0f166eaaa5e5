//! The real `docker` CLI against a real berthd (direct backend, real berth-core child) and the
//! project's fixture registries (`scripts/fixtures up`; `scripts/test` starts them and sets
//! `BERTH_FIXTURES_ENV`). Runs as root (layer unpack creates devices and sets owners).

mod harness;

use harness::{fixture_image, fixtures, Berthd};
use serde_json::Value;

#[test]
fn pull_by_tag_then_images_inspect_history_match_the_registry() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let open = &fx["BERTH_FIX_OPEN"];
    let img = fixture_image("open", "berth/hello", "latest");
    let name = format!("{open}/berth/hello:latest");

    let out = d.docker_ok(&["pull", &name]);
    assert!(out.contains("Status: Downloaded newer image for"), "{out}");
    assert!(out.contains(img["digest"].as_str().unwrap()), "{out}");

    let ids = d.docker_ok(&[
        "images",
        "--no-trunc",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
    ]);
    let config = img["config_digest"].as_str().unwrap();
    assert!(
        ids.contains(&format!("{open}/berth/hello:latest {config}")),
        "{ids}"
    );

    let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", &name])).unwrap();
    let v = &v[0];
    assert_eq!(v["Id"], config);
    assert_eq!(v["RepoTags"][0], name);
    assert_eq!(
        v["RepoDigests"][0],
        format!("{open}/berth/hello@{}", img["digest"].as_str().unwrap())
    );
    assert_eq!(v["Config"]["Cmd"][0], "/hello");
    assert_eq!(v["Os"], "linux");
    let diff_ids: Vec<&str> = img["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diff_id"].as_str().unwrap())
        .collect();
    let layers: Vec<&str> = v["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers, diff_ids);
    assert!(v["Size"].as_u64().unwrap() > 0);

    let hist = d.docker_ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.ID}}|{{.CreatedBy}}",
        &name,
    ]);
    assert!(hist.lines().next().unwrap().starts_with(config), "{hist}");

    // Pulling again changes nothing and says so.
    let out = d.docker_ok(&["pull", &name]);
    assert!(out.contains("Image is up to date"), "{out}");
    assert!(out.contains("Already exists"), "{out}");
}

#[test]
fn pull_by_digest_and_v2s2_and_multiarch() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let open = &fx["BERTH_FIX_OPEN"];

    let img = fixture_image("open", "berth/busybox", "v2s2");
    let digest = img["digest"].as_str().unwrap();
    let by_digest = format!("{open}/berth/busybox@{digest}");
    d.docker_ok(&["pull", &by_digest]);
    let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", &by_digest])).unwrap();
    assert_eq!(v[0]["Id"], img["config_digest"]);
    assert_eq!(
        v[0]["RepoTags"].as_array().unwrap().len(),
        0,
        "pulled by digest: no tag"
    );

    // zstd and uncompressed layers (OCI only).
    let zstd = format!("{open}/berth/zstd:latest");
    d.docker_ok(&["pull", &zstd]);
    let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", &zstd])).unwrap();
    let img = fixture_image("open", "berth/zstd", "latest");
    assert_eq!(v[0]["Id"], img["config_digest"]);
    let media: Vec<&str> = img["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["media_type"].as_str().unwrap())
        .collect();
    assert!(media.iter().any(|m| m.ends_with("+zstd")), "{media:?}");
    assert!(media.iter().any(|m| m.ends_with(".tar")), "{media:?}");

    for tag in ["latest", "v2s2"] {
        let img = fixture_image("open", "berth/multiarch", tag);
        let name = format!("{open}/berth/multiarch:{tag}");
        d.docker_ok(&["pull", &name]);
        let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", &name])).unwrap();
        let want = platform_config(&img, "amd64");
        assert_eq!(
            v[0]["Id"].as_str().unwrap(),
            want,
            "{tag}: the amd64 image is chosen"
        );
        assert_eq!(v[0]["Architecture"], "amd64");
        // Both tags hold the same amd64 image, so after both pulls it carries both digests.
        let want = format!("{open}/berth/multiarch@{}", img["digest"].as_str().unwrap());
        assert!(
            v[0]["RepoDigests"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d == &want),
            "{tag}: the repo digest is the index's: {}",
            v[0]["RepoDigests"]
        );
        let arm = d.docker(&["pull", "--platform", "linux/s390x", &name]);
        assert!(!arm.status.success(), "{tag}: no s390x image");
        let err = String::from_utf8_lossy(&arm.stderr);
        assert!(
            err.contains("s390x"),
            "{tag}: the error names the platform: {err}"
        );
    }
}

/// The amd64 config digest of a multi-arch fixture.
fn platform_config(img: &Value, arch: &str) -> String {
    for m in img["manifests"].as_array().expect("an index has manifests") {
        if m["platform"]["architecture"] == arch {
            return m["config_digest"].as_str().unwrap().to_string();
        }
    }
    panic!("no {arch} config in {img}")
}

#[test]
fn tag_and_rmi_behave_like_docker() {
    if harness::skip_unless_direct("reads the store's files on the host") {
        return;
    }
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let open = &fx["BERTH_FIX_OPEN"];
    let name = format!("{open}/berth/hello:latest");
    d.docker_ok(&["pull", &name]);
    d.docker_ok(&["tag", &name, "mine/hello:1"]);
    d.docker_ok(&["tag", &name, "mine/hello:2"]);
    let tags = d.docker_ok(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "mine/hello",
    ]);
    assert_eq!(tags.lines().count(), 2, "{tags}");

    // By id with tags in several repositories: refused without force.
    let id = d
        .docker_ok(&["image", "inspect", "--format", "{{.Id}}", &name])
        .trim()
        .to_string();
    let r = d.docker(&["rmi", &id[7..19]]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("must be forced"));

    let out = d.docker_ok(&["rmi", "mine/hello:1"]);
    assert!(out.contains("Untagged: mine/hello:1"), "{out}");
    assert!(!out.contains("Deleted"), "{out}");
    let out = d.docker_ok(&["rmi", "-f", &id[7..19]]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    let left = d.docker_ok(&["images", "-q"]);
    assert!(left.trim().is_empty(), "{left}");
    assert_eq!(
        store_entries(&d),
        Vec::<String>::new(),
        "removal frees blobs and snapshots"
    );

    let r = d.docker(&["rmi", "nothing:here"]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("No such image"));
    let r = d.docker(&["image", "inspect", "nothing:here"]);
    assert!(!r.status.success());
}

#[test]
fn login_then_pull_from_basic_and_token_registries() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    for (reg, user, pass) in [
        (
            "BERTH_FIX_BASIC",
            "BERTH_FIX_BASIC_USER",
            "BERTH_FIX_BASIC_PASS",
        ),
        (
            "BERTH_FIX_TOKEN",
            "BERTH_FIX_TOKEN_USER",
            "BERTH_FIX_TOKEN_PASS",
        ),
    ] {
        let host = &fx[reg];
        let name = format!("{host}/berth/hello:latest");
        let anon = d.docker(&["pull", &name]);
        assert!(!anon.status.success(), "{reg}: anonymous pull must fail");

        let bad = d.docker(&["login", "-u", &fx[user], "-p", "wrong-password", host]);
        assert!(
            !bad.status.success(),
            "{reg}: a wrong password must be refused"
        );

        d.docker_ok(&["login", "-u", &fx[user], "-p", &fx[pass], host]);
        d.docker_ok(&["pull", &name]);
        let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", &name])).unwrap();
        let kind = if reg == "BERTH_FIX_BASIC" {
            "basic"
        } else {
            "token"
        };
        assert_eq!(
            v[0]["Id"],
            fixture_image(kind, "berth/hello", "latest")["config_digest"]
        );
    }
}

#[test]
fn docker_hub_names_pull_through_a_mirror() {
    let fx = fixtures();
    let mirror = format!("http://{}", fx["BERTH_FIX_OPEN"]);
    let d = Berthd::start(&["--registry-mirror", &mirror]);
    let out = d.docker_ok(&["pull", "busybox"]);
    assert!(out.contains("Using mirror"), "the mirror is named: {out}");
    let out = d.docker_ok(&["pull", "hello-world"]);
    assert!(out.contains("Pulling from library/hello-world"), "{out}");
    let v: Value =
        serde_json::from_str(&d.docker_ok(&["image", "inspect", "hello-world"])).unwrap();
    assert_eq!(
        v[0]["Id"],
        fixture_image("open", "library/hello-world", "latest")["config_digest"]
    );
    d.docker_ok(&["rmi", "hello-world"]);
    let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", "busybox"])).unwrap();
    assert_eq!(v[0]["RepoTags"][0], "busybox:latest");
    assert_eq!(
        v[0]["Id"],
        fixture_image("open", "library/busybox", "latest")["config_digest"]
    );
    let df = d.docker_ok(&["system", "df", "--format", "{{json .}}"]);
    let df: Value = serde_json::from_str(df.lines().next().unwrap()).unwrap();
    assert_eq!(df["Type"], "Images");
    assert_eq!(df["TotalCount"], "1");
}

/// Files under the store's blob and snapshot dirs (what a failed pull must not add to).
fn store_entries(d: &Berthd) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["blobs/sha256", "snapshots"] {
        if let Ok(rd) = std::fs::read_dir(d.data_root.join("core").join(sub)) {
            out.extend(rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_lying_registry_gets_a_clear_error_and_leaves_the_store_as_it_was() {
    if harness::skip_unless_direct("reads the store's files on the host") {
        return;
    }
    use harness::liar::{start, Lie};
    let _ = std::fs::remove_file("/tmp/berth-liar-escaped");
    let d = Berthd::start(&[]);
    let honest = start(Lie::None);
    d.docker_ok(&["pull", &format!("{honest}/liar/img:1")]);
    let before = store_entries(&d);
    let images_before = d.docker_ok(&["images", "-q", "--no-trunc"]);
    assert!(!before.is_empty());

    for (lie, expect) in [
        (Lie::WrongDigest, "digest"),
        (Lie::Truncated, "connection closed"),
        (Lie::ServerError, "500"),
        (Lie::UnauthorizedAfterLogin, "credentials were refused"),
        (Lie::MalformedManifest, "manifest"),
        (Lie::WrongDiffId, "diff"),
        (Lie::EscapingLayer, "\"..\" component"),
    ] {
        let host = start(lie);
        if lie == Lie::UnauthorizedAfterLogin {
            d.docker_ok(&["login", "-u", "someone", "-p", "secret", &host]);
        }
        let out = d.docker(&["pull", &format!("{host}/liar/img:1")]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{lie:?}: the pull must fail: {text}");
        assert!(
            text.to_lowercase().contains(expect),
            "{lie:?}: the error says {expect:?}: {text}"
        );
        assert_eq!(
            store_entries(&d),
            before,
            "{lie:?}: nothing new in the store"
        );
        assert_eq!(
            d.docker_ok(&["images", "-q", "--no-trunc"]),
            images_before,
            "{lie:?}"
        );
    }
    assert!(
        !std::path::Path::new("/tmp/berth-liar-escaped").exists(),
        "nothing escaped the snapshot"
    );
}

#[test]
fn killing_berthd_mid_pull_leaves_a_consistent_store() {
    if harness::skip_unless_direct("reads the store's files on the host") {
        return;
    }
    use harness::liar::{start, Lie};
    let mut d = Berthd::start(&[]);
    let host = start(Lie::Slow);
    let name = format!("{host}/slow/img:1");
    let mut pull = std::process::Command::new("docker")
        .args([
            "-H",
            &format!("unix://{}", d.socket.display()),
            "pull",
            &name,
        ])
        .env("DOCKER_CONFIG", d.dir.path().join("docker-config"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the layer is half-way in: its bytes are in the store's ingest area.
    let ingest = d.data_root.join("core/ingest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_dir(&ingest).map(|r| r.count()).unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    d.kill_and_restart();
    let _ = pull.wait();
    // Nothing half-made is visible.
    assert_eq!(
        d.docker_ok(&["images", "-q"]).trim(),
        "",
        "no image after the kill"
    );
    assert_eq!(
        store_entries(&d),
        Vec::<String>::new(),
        "no blob or snapshot after the kill"
    );
    let leftovers = std::fs::read_dir(&ingest).map(|r| r.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "ingest is cleared at start");
    // And the same pull then succeeds.
    d.docker_ok(&["pull", &name]);
    let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", &name])).unwrap();
    assert_eq!(v[0]["RepoTags"][0], name);
}

#[test]
fn socket_is_owner_only_and_version_negotiates() {
    use std::os::unix::fs::PermissionsExt;
    let d = Berthd::start(&[]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let v = d.docker_ok(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(v.trim(), "1.45");
    let info = d.docker_ok(&[
        "info",
        "--format",
        "{{.OperatingSystem}}|{{.DefaultRuntime}}",
    ]);
    assert!(info.contains("Berth"), "{info}");
    let runtime = info.trim().rsplit('|').next().unwrap();
    assert!(
        ["runc", "crun"].contains(&runtime),
        "/info names the OCI runtime: {info}"
    );
}

/// The edge-case image, merged by the kernel's overlayfs exactly as a container will see it,
/// matches the tree the fixture script says it should have (whiteouts, opaque dirs, file↔dir
/// replacement, links, modes, owners, FIFO, xattr, long and unicode names).
#[test]
fn the_layers_fixture_merges_to_the_expected_tree() {
    if harness::skip_unless_direct("reads the snapshot's files on the host") {
        return;
    }
    use sha2::{Digest as _, Sha256};
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let name = format!("{}/berth/layers:latest", fx["BERTH_FIX_OPEN"]);
    d.docker_ok(&["pull", &name]);
    let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", &name])).unwrap();
    let mut chain: Option<String> = None;
    let mut lowers = Vec::new();
    for diff in v[0]["RootFS"]["Layers"].as_array().unwrap() {
        let diff = diff.as_str().unwrap();
        let next = match &chain {
            None => diff.to_string(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {diff}")))
            ),
        };
        let dir = d
            .data_root
            .join("core/snapshots")
            .join(&next[7..])
            .join("diff");
        assert!(dir.is_dir(), "snapshot {next} is at {}", dir.display());
        lowers.push(dir.display().to_string());
        chain = Some(next);
    }
    lowers.reverse();
    let merged = d.dir.path().join("merged");
    std::fs::create_dir_all(&merged).unwrap();
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!("lowerdir={}", lowers.join(":")),
        ])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(st.success(), "mounting the overlay (needs root)");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new("python3")
        .arg(repo.join("fixtures/check_tree.py"))
        .arg(&merged)
        .arg(&fx["BERTH_FIX_LAYERS_EXPECTED"])
        .output()
        .unwrap();
    let _ = std::process::Command::new("umount").arg(&merged).status();
    assert!(
        out.status.success(),
        "merged tree differs from the expected one:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same images pulled into Debian's dockerd 20.10 and into Berth: `images`, `inspect` and
/// `history` agree on what matters (ids, digests, sizes, config, layers, history).
#[test]
fn images_inspect_and_history_match_dockerd() {
    let fx = fixtures();
    let open = fx["BERTH_FIX_OPEN"].clone();
    let berth = Berthd::start(&[]);
    let dockerd = harness::Dockerd::start(&[&open]);
    let names: Vec<String> = [
        "berth/hello:latest",
        "berth/hello:v2s2",
        "berth/busybox:latest",
        "berth/layers:latest",
        "berth/layers:v2s2",
        "berth/multiarch:latest",
        "berth/multiarch:v2s2",
    ]
    .iter()
    .map(|n| format!("{open}/{n}"))
    .collect();
    for n in &names {
        berth.docker_ok(&["pull", "-q", n]);
        dockerd.docker_ok(&["pull", "-q", n]);
    }
    let inspect_fields = [
        "Id",
        "RepoTags",
        "RepoDigests",
        "Parent",
        "Comment",
        "Created",
        "Author",
        "Config",
        "Architecture",
        "Variant",
        "Os",
        "Size",
        "RootFS",
    ];
    for n in &names {
        let b: Value = serde_json::from_str(&berth.docker_ok(&["image", "inspect", n])).unwrap();
        let d: Value = serde_json::from_str(&dockerd.docker_ok(&["image", "inspect", n])).unwrap();
        for f in inspect_fields {
            let (mut bv, mut dv) = (b[0][f].clone(), d[0][f].clone());
            if f == "RepoTags" || f == "RepoDigests" {
                sort(&mut bv);
                sort(&mut dv);
            }
            assert_eq!(
                bv, dv,
                "{n}: inspect field {f} differs (left Berth, right dockerd)"
            );
        }
        let fmt = "{{.ID}}|{{.CreatedAt}}|{{.CreatedBy}}|{{.Size}}|{{.Comment}}";
        let bh = berth.docker_ok(&["history", "--no-trunc", "--human=false", "--format", fmt, n]);
        let dh = dockerd.docker_ok(&["history", "--no-trunc", "--human=false", "--format", fmt, n]);
        assert_eq!(bh, dh, "{n}: history differs");
    }
    // Tag and remove the same way on both: the same lines come back.
    let hello = &names[0];
    for cli in [&berth as &dyn Cli, &dockerd as &dyn Cli] {
        cli.run(&["tag", hello, "compare/hello:1"]);
    }
    for args in [
        &["rmi", "compare/hello:1"][..],
        &["rmi", hello],
        &["rmi", &names[1]],
    ] {
        assert_eq!(
            berth.run(args),
            dockerd.run(args),
            "docker {args:?} differs"
        );
    }
    let fmt = "{{.Repository}}|{{.Tag}}|{{.ID}}|{{.Digest}}|{{.CreatedAt}}|{{.Size}}";
    let list = |out: String| {
        let mut l: Vec<String> = out.lines().map(str::to_string).collect();
        l.sort();
        l
    };
    assert_eq!(
        list(berth.docker_ok(&["images", "--digests", "--no-trunc", "--format", fmt])),
        list(dockerd.docker_ok(&["images", "--digests", "--no-trunc", "--format", fmt])),
        "docker images differs"
    );
}

trait Cli {
    fn run(&self, args: &[&str]) -> String;
}

impl Cli for Berthd {
    fn run(&self, args: &[&str]) -> String {
        self.docker_ok(args)
    }
}

impl Cli for harness::Dockerd {
    fn run(&self, args: &[&str]) -> String {
        self.docker_ok(args)
    }
}

fn sort(v: &mut Value) {
    if let Some(a) = v.as_array_mut() {
        a.sort_by_key(|x| x.to_string());
    }
}

// ---- containers -------------------------------------------------------------------------

#[test]
fn docker_run_hello_prints_its_greeting_and_rm_cleans_up() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let image = format!("{}/berth/hello:latest", fx["BERTH_FIX_OPEN"]);
    // Not pulled yet: `docker run` pulls on the daemon's "No such image", then runs.
    let out = d.docker_ok(&["run", "--rm", &image]);
    assert!(out.contains("Hello from Berth!"), "{out}");
    let ps = d.docker_ok(&["ps", "-a", "-q"]);
    assert_eq!(ps.trim(), "", "--rm removed the container");
}

#[test]
fn container_lifecycle_create_start_logs_wait_ps_rm() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let image = format!("{}/berth/busybox:latest", fx["BERTH_FIX_OPEN"]);
    d.docker_ok(&["pull", "-q", &image]);

    let id = d
        .docker_ok(&[
            "create",
            "--name",
            "lc",
            "-e",
            "WHO=berth",
            &image,
            "sh",
            "-c",
            "echo out $WHO; echo err >&2; exit 3",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{id}");
    let ps = d.docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert!(ps.contains("lc created"), "{ps}");
    d.docker_ok(&["start", "lc"]);
    let code = d.docker_ok(&["wait", "lc"]);
    assert_eq!(code.trim(), "3");
    let out = d.docker(&["logs", "lc"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out berth\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let state = d.docker_ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        "lc",
    ]);
    assert_eq!(state.trim(), "exited 3");
    let ps = d.docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("lc Exited (3)"), "{ps}");
    let counts = d.docker_ok(&["info", "--format", "{{.Containers}} {{.ContainersStopped}}"]);
    assert_eq!(counts.trim(), "1 1");

    let dup = d.docker(&["create", "--name", "lc", &image]);
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("is already in use"),
        "name conflict"
    );

    d.docker_ok(&["rm", "lc"]);
    assert_eq!(d.docker_ok(&["ps", "-a", "-q"]).trim(), "");
    let gone = d.docker(&["inspect", "lc"]);
    assert!(!gone.status.success());
}

#[test]
fn detached_container_runs_until_stopped() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let image = format!("{}/berth/busybox:latest", fx["BERTH_FIX_OPEN"]);
    d.docker_ok(&["pull", "-q", &image]);
    d.docker_ok(&["run", "-d", "--name", "sleeper", &image, "sleep", "300"]);
    let ps = d.docker_ok(&["ps", "--format", "{{.Names}} {{.State}}"]);
    assert!(ps.contains("sleeper running"), "{ps}");
    let r = d.docker(&["rm", "sleeper"]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("cannot remove a running container"));
    let started = d.docker_ok(&["inspect", "--format", "{{.State.StartedAt}}", "sleeper"]);
    d.docker_ok(&["restart", "-t", "1", "sleeper"]);
    let again = d.docker_ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.StartedAt}}",
        "sleeper",
    ]);
    assert!(again.starts_with("running "), "{again}");
    assert_ne!(
        again.trim().split(' ').nth(1),
        Some(started.trim()),
        "restart started it anew"
    );
    d.docker_ok(&["stop", "-t", "1", "sleeper"]);
    let state = d.docker_ok(&["inspect", "--format", "{{.State.Status}}", "sleeper"]);
    assert_eq!(state.trim(), "exited");
    // prune removes stopped containers and leaves running ones.
    d.docker_ok(&["run", "-d", "--name", "keeper", &image, "sleep", "300"]);
    let out = d.docker_ok(&["container", "prune", "-f"]);
    assert!(out.contains("Deleted Containers"), "{out}");
    let left = d.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(left.trim(), "keeper", "{left}");
    d.docker_ok(&["rm", "-f", "keeper"]);
}

/// `docker logs -f` follows a running container: lines arrive while it runs (not only at its
/// end), and the command ends when the container does.
#[test]
fn logs_follow_streams_until_the_container_exits() {
    use std::io::{BufRead, BufReader};
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let image = format!("{}/berth/busybox:latest", fx["BERTH_FIX_OPEN"]);
    d.docker_ok(&["pull", "-q", &image]);
    // It prints "first", then waits for a file that only the test creates.
    let id = d.docker_ok(&[
        "run",
        "-d",
        &image,
        "sh",
        "-c",
        "echo first; while [ ! -e /go ]; do sleep 0.2; done; echo second",
    ]);
    let id = id.trim();
    let mut follow = d
        .docker_cmd(&["logs", "-f", id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    // The container still runs: the follow is live, not a replay after the end.
    let state = d.docker_ok(&["inspect", "--format", "{{.State.Status}}", id]);
    assert_eq!(state.trim(), "running");
    d.docker_ok(&["exec", id, "touch", "/go"]);
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(lines.next().is_none(), "the follow ends with the container");
    assert!(follow.wait().unwrap().success());
}

// ---- the QEMU backend ---------------------------------------------------------------------

/// The same Docker workflow through the VM: berthd boots the guest under QEMU (TCG here), pulls
/// stream over vsock into the core inside, containers run under crun in the guest, and the
/// store on the VM's data disk survives a berthd (and so VM) restart.
#[test]
fn through_the_qemu_backend_pull_run_and_restart() {
    let fx = fixtures();
    let image_dir = harness::guest_image();
    let image_dir = image_dir.display().to_string();
    let mut d = Berthd::start(&["--backend", "qemu", "--vm-image", &image_dir]);
    let info = d.docker_ok(&["info", "--format", "{{.OperatingSystem}}"]);
    assert!(info.contains("qemu backend"), "{info}");
    let open = &fx["BERTH_FIX_OPEN"];
    let busybox = format!("{open}/berth/busybox:latest");
    d.docker_ok(&["pull", &busybox]);
    let out = d.docker_ok(&["run", "--rm", &format!("{open}/berth/hello:latest")]);
    assert!(out.contains("Hello from Berth!"), "{out}");
    let id = d.docker_ok(&[
        "run",
        "-d",
        &busybox,
        "sh",
        "-c",
        "echo in the guest; uname -r",
    ]);
    let id = id.trim();
    assert_eq!(d.docker_ok(&["wait", id]).trim(), "0");
    let logs = d.docker_ok(&["logs", id]);
    assert!(logs.starts_with("in the guest\n"), "{logs}");
    let runtime = d.docker_ok(&["inspect", "--format", "{{.HostConfig.Runtime}}", id]);
    assert_eq!(runtime.trim(), "crun", "pure cgroup v2 in the guest: crun");
    let info = d.docker_ok(&["info", "--format", "{{.DefaultRuntime}}"]);
    assert_eq!(info.trim(), "crun");
    // Still running when berthd stops: it gets SIGTERM and its timeout before the guest goes.
    let graceful = d.docker_ok(&[
        "run",
        "-d",
        &busybox,
        "sh",
        "-c",
        "trap 'echo stopped cleanly; exit 0' TERM; echo up; while :; do sleep 1; done",
    ]);
    let graceful = graceful.trim();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while d.docker_ok(&["logs", graceful]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the trap is never set"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    d.restart();
    let state = d.docker_ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        graceful,
    ]);
    assert_eq!(
        state.trim(),
        "exited 0",
        "stopped by its signal, not by the power-off"
    );
    assert_eq!(d.docker_ok(&["logs", graceful]), "up\nstopped cleanly\n");
    let images = d.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        images.contains(&busybox),
        "images survive the VM restart: {images}"
    );
    let state = d.docker_ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        id,
    ]);
    assert_eq!(
        state.trim(),
        "exited 0",
        "the stopped container survives too"
    );
}

/// A client that does not hijack the connection (plain HTTP, as curl) gets the output in the
/// response body, stdcopy-framed, from the start it attached before.
#[test]
fn attach_without_hijack_streams_the_output_as_the_body() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let image = format!("{}/berth/busybox:latest", fx["BERTH_FIX_OPEN"]);
    d.docker_ok(&["pull", "-q", &image]);
    let id = d.docker_ok(&["create", &image, "echo", "through plain http"]);
    let id = id.trim();
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--no-buffer", "-X", "POST", "--unix-socket"])
        .arg(&d.socket)
        .arg(format!(
            "http://berth/containers/{id}/attach?stream=1&stdout=1&stderr=1"
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl (scripts/test installs it)");
    // Attached before the start, as `docker run` does.
    std::thread::sleep(std::time::Duration::from_millis(300));
    d.docker_ok(&["start", id]);
    let out = curl.wait_with_output().unwrap();
    let body = out.stdout;
    assert!(body.len() > 8, "{body:?}");
    assert_eq!(&body[..4], &[1, 0, 0, 0], "a stdout stdcopy header");
    let len = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
    assert_eq!(&body[8..8 + len], b"through plain http\n");
}
