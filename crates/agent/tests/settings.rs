//! Settings, registry mirrors and the admin API, end to end: the real docker CLI against a real
//! berthd, real `docker-registry` processes as mirrors (serving the open fixture registry's
//! storage on ports of their own), the fixture registries as upstreams, and liars for bad
//! content. `scripts/test` starts the fixtures and sets `BERTH_FIXTURES_ENV`.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::mirrors::{free_port, start_corrupting_proxy, RegistryMirror};
use harness::{bin_dir, fixture_image, fixtures, Berthd};
use serde_json::{json, Value};

/// A settings file in a temp dir of its own, written before berthd starts.
fn settings_file(doc: &Value) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("settings.json");
    std::fs::write(&path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    (dir, path)
}

fn etag(d: &Berthd) -> String {
    let (code, headers, _) = d.api_h("GET", "/berth/v1/settings", &[], None);
    assert_eq!(code, 200);
    headers["etag"].clone()
}

fn pull(d: &Berthd, name: &str) -> String {
    d.docker_ok(&["pull", name])
}

fn image_id(d: &Berthd, name: &str) -> String {
    let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", name])).unwrap();
    v[0]["Id"].as_str().unwrap().to_string()
}

#[test]
fn mirrors_are_tried_in_order_and_every_skip_is_reported() {
    let fx = fixtures();
    let open = &fx["BERTH_FIX_OPEN"];
    let mut m1 = RegistryMirror::start();
    let mut m2 = RegistryMirror::start();
    // Mirrors of a registry that is not Docker Hub: the open fixture registry.
    let (_conf, path) = settings_file(&json!({
        "registries": { open.as_str(): { "mirrors": [ { "url": m1.url() }, { "url": m2.url() } ] } }
    }));
    let d = Berthd::start(&["--settings", path.to_str().unwrap()]);
    let name = format!("{open}/berth/hello:latest");
    let want = fixture_image("open", "berth/hello", "latest");
    let manifest = "/v2/berth/hello/manifests/latest";

    let out = pull(&d, &name);
    assert!(
        out.contains(&format!("Using mirror {}/", m1.url())),
        "{out}"
    );
    assert!(!out.contains("Skipped"), "{out}");
    assert!(m1.requests_for(manifest) > 0, "the first mirror served");
    assert_eq!(m2.requests_for(manifest), 0, "the second was not needed");
    assert_eq!(image_id(&d, &name), want["config_digest"].as_str().unwrap());
    d.docker_ok(&["rmi", &name]);

    // The first mirror goes away: the next pull is served by the second, and says so.
    m1.stop();
    let out = pull(&d, &name);
    assert!(out.contains(&format!("Skipped {}/", m1.url())), "{out}");
    assert!(
        out.contains(&format!("Using mirror {}/", m2.url())),
        "{out}"
    );
    assert!(m2.requests_for(manifest) > 0, "the second mirror served");
    assert_eq!(image_id(&d, &name), want["config_digest"].as_str().unwrap());
    d.docker_ok(&["rmi", &name]);

    // Both gone: the registry itself.
    m2.stop();
    let out = pull(&d, &name);
    assert!(out.contains(&format!("Skipped {}/", m1.url())), "{out}");
    assert!(out.contains(&format!("Skipped {}/", m2.url())), "{out}");
    assert!(
        out.contains(&format!("Using http://{open}/ (the registry itself)")),
        "{out}"
    );
    d.docker_ok(&["rmi", &name]);

    // mirror-only, set through the admin API: no upstream any more, so the pull fails, naming
    // the mirrors that failed.
    let (code, _, body) = d.api_h(
        "PATCH",
        "/berth/v1/settings",
        &[("If-Match", &etag(&d))],
        Some(&json!({ "registries": { open.as_str(): { "mirror-only": true } } }).to_string()),
    );
    assert_eq!(code, 200, "{body}");
    let r = d.docker(&["pull", &name]);
    assert!(
        !r.status.success(),
        "mirror-only with both mirrors down must fail"
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains(&m1.addr) && err.contains(&m2.addr), "{err}");
}

#[test]
fn docker_hub_mirrors_from_the_file_and_the_command_line() {
    let m1 = RegistryMirror::start();
    let mut m2 = RegistryMirror::start();
    // daemon.json's key, and an ignored daemon.json key beside it.
    let (_conf, path) = settings_file(&json!({ "registry-mirrors": [m1.url()], "debug": true }));
    let d = Berthd::start(&[
        "--settings",
        path.to_str().unwrap(),
        "--registry-mirror",
        &m2.url(),
    ]);
    assert!(
        d.log()
            .contains("debug: accepted for daemon.json compatibility and ignored"),
        "the ignored key is warned about: {}",
        d.log()
    );
    let (_, info) = d.api("GET", "/info", None);
    assert_eq!(
        info["RegistryConfig"]["Mirrors"],
        json!([format!("{}/", m2.url()), format!("{}/", m1.url())]),
        "the command line's mirrors come first"
    );
    let out = pull(&d, "hello-world");
    assert!(
        out.contains(&format!("Using mirror {}/", m2.url())),
        "{out}"
    );
    assert_eq!(
        image_id(&d, "hello-world"),
        fixture_image("open", "library/hello-world", "latest")["config_digest"]
            .as_str()
            .unwrap()
    );
    m2.stop();
    let out = pull(&d, "busybox");
    assert!(out.contains(&format!("Skipped {}/", m2.url())), "{out}");
    assert!(
        out.contains(&format!("Using mirror {}/", m1.url())),
        "{out}"
    );
    assert!(m1.requests_for("/v2/library/busybox/manifests/latest") > 0);
}

#[test]
fn an_admin_api_edit_applies_to_the_next_pull_without_a_restart() {
    let fx = fixtures();
    let open = &fx["BERTH_FIX_OPEN"];
    let m1 = RegistryMirror::start();
    let conf = tempfile::tempdir().unwrap();
    let path = conf.path().join("sub/settings.json");
    let d = Berthd::start(&["--settings", path.to_str().unwrap()]);
    let pid = d.child.id();

    let (code, headers, body) = d.api_h("GET", "/berth/v1/settings", &[], None);
    assert_eq!(
        (code, &body),
        (200, &json!({})),
        "no file yet: the defaults"
    );
    assert_eq!(headers["berth-settings-path"], path.display().to_string());
    let e0 = headers["etag"].clone();

    let name = format!("{open}/berth/hello:latest");
    let out = pull(&d, &name);
    assert!(!out.contains("Using mirror"), "{out}");
    d.docker_ok(&["rmi", &name]);

    let doc = json!({ "registries": { open.as_str(): { "mirrors": [ { "url": m1.url() } ] } } });
    let (code, headers, body) = d.api_h(
        "PUT",
        "/berth/v1/settings",
        &[("If-Match", &e0)],
        Some(&doc.to_string()),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["appliedToRegistries"], true);
    assert_eq!(body["restartRequired"], json!([]));
    assert_ne!(headers["etag"], e0);

    // The change is on the event stream: Docker's `daemon reload`, with what changed.
    // (`--until` as a duration is whole seconds: a moment just ahead takes in this one.)
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let events = d.docker_ok(&[
        "events",
        "--since",
        "10m",
        "--until",
        &until.to_string(),
        "--filter",
        "type=daemon",
        "--format",
        "{{json .}}",
    ]);
    let last = events.lines().last();
    let last = last.unwrap_or_else(|| panic!("no daemon event\n{}", d.log()));
    let reload: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {events}"));
    assert_eq!(reload["Action"], "reload", "{reload}");
    assert_eq!(
        reload["Actor"]["Attributes"]["berth.settings.changed"],
        "registries"
    );
    assert_eq!(reload["Actor"]["Attributes"]["berth.restart-required"], "");
    assert_eq!(body["etag"].as_str().unwrap(), headers["etag"]);
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk, doc, "written to the file");

    let out = pull(&d, &name);
    assert!(
        out.contains(&format!("Using mirror {}/", m1.url())),
        "{out}"
    );
    assert!(m1.requests_for("/v2/berth/hello/manifests/latest") > 0);

    // VM resources are saved and need a VM restart, which the answer says.
    let (code, _, body) = d.api_h(
        "PATCH",
        "/berth/v1/settings",
        &[("If-Match", "*")],
        Some(r#"{"vm": {"cpus": 2, "memory": 2048}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["restartRequired"], json!(["vm.cpus", "vm.memory"]));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("when the VM restarts"),
        "{body}"
    );
    assert_eq!(
        body["settings"]["registries"], doc["registries"],
        "a merge patch"
    );

    let mut d = d;
    assert!(d.child.try_wait().unwrap().is_none(), "berthd kept running");
    assert_eq!(d.child.id(), pid);
}

#[test]
fn a_mirror_serving_wrong_content_is_refused_and_the_pull_succeeds() {
    let fx = fixtures();
    let open = &fx["BERTH_FIX_OPEN"];
    let want = fixture_image("open", "berth/hello", "latest");
    let layer = want["layers"][0]["digest"].as_str().unwrap().to_string();
    // A mirror serving another image under every name (its manifest cannot match a digest),
    // then a mirror serving the right manifest and config but a corrupted layer.
    let liar = harness::liar::start(harness::liar::Lie::None);
    let corrupting = start_corrupting_proxy(open, vec![layer.clone()]);
    let (_conf, path) = settings_file(&json!({
        "registries": { open.as_str(): { "mirrors": [
            { "url": format!("http://{liar}") }, { "url": format!("http://{corrupting}") }
        ] } }
    }));
    let d = Berthd::start(&["--settings", path.to_str().unwrap()]);
    let by_digest = format!("{open}/berth/hello@{}", want["digest"].as_str().unwrap());
    let out = pull(&d, &by_digest);
    assert!(
        out.contains(&format!("Skipped http://{liar}/: digest mismatch")),
        "{out}"
    );
    assert!(
        out.contains(&format!("Using mirror http://{corrupting}/")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Skipped http://{corrupting}/: its content failed verification"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("Fetching from http://{open}/")),
        "{out}"
    );
    assert_eq!(
        image_id(&d, &by_digest),
        want["config_digest"].as_str().unwrap()
    );
    let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", &by_digest])).unwrap();
    assert_eq!(v[0]["RootFS"]["Layers"][0], want["layers"][0]["diff_id"]);
}

#[test]
fn every_validation_error_is_answered_at_once_and_nothing_changes() {
    let (_conf, path) = settings_file(&json!({ "vm": { "cpus": 2 } }));
    let before = std::fs::read(&path).unwrap();
    let d = Berthd::start(&["--settings", path.to_str().unwrap()]);
    let e0 = etag(&d);
    let bad = json!({
        "registry-mirrors": [
            "https://mirror.example/v2/", "mirror.example", "https://m.example?x=1",
            "https://dup.example", "https://dup.example/"
        ],
        "registy": {},
        "registries": {
            "docker.io": { "mirorrs": [] },
            "quay.io": { "mirror-only": true }
        },
        "vm": { "cpus": 0, "memory": 64, "disk": 100000 }
    });
    let expect = [
        ("registry-mirrors[0]", "has a path"),
        ("registry-mirrors[1]", "not a URL"),
        ("registry-mirrors[2]", "query"),
        ("registry-mirrors[4]", "duplicate mirror"),
        ("registy", "did you mean \"registries\"?"),
        (
            "registries[\"docker.io\"].mirorrs",
            "did you mean \"mirrors\"?",
        ),
        (
            "registries[\"quay.io\"].mirror-only",
            "needs at least one mirror",
        ),
        ("vm.cpus", "out of range"),
        ("vm.memory", "out of range"),
        ("vm.disk", "out of range"),
    ];
    let check = |errors: &Value| {
        let errors = errors.as_array().unwrap();
        for (p, m) in expect {
            assert!(
                errors
                    .iter()
                    .any(|e| e["path"] == p && e["message"].as_str().unwrap().contains(m)),
                "{p}: {m} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    };

    let (code, body) = d.api(
        "POST",
        "/berth/v1/settings/validate",
        Some(&bad.to_string()),
    );
    assert_eq!(code, 200);
    assert_eq!(body["valid"], false);
    check(&body["errors"]);

    for method in ["PUT", "PATCH"] {
        let (code, _, body) = d.api_h(
            method,
            "/berth/v1/settings",
            &[("If-Match", &e0)],
            Some(&bad.to_string()),
        );
        assert_eq!(code, 400, "{method}: {body}");
        check(&body["errors"]);
        assert!(
            body["message"].as_str().unwrap().contains("vm.cpus"),
            "{body}"
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file did not change"
    );
    assert_eq!(etag(&d), e0, "the settings in force did not change");

    // A valid document with daemon.json keys Berth ignores: valid, with warnings.
    let (code, body) = d.api(
        "POST",
        "/berth/v1/settings/validate",
        Some(r#"{"log-level": "debug", "dns": ["1.1.1.1"]}"#),
    );
    assert_eq!(code, 200);
    assert_eq!(body["valid"], true, "{body}");
    assert_eq!(body["warnings"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(etag(&d), e0, "validate applies nothing");

    let (code, body) = d.api("PUT", "/berth/v1/settings", Some("{ not json"));
    assert_eq!(code, 400, "{body}");
}

#[test]
fn two_editors_cannot_overwrite_each_other() {
    let (_conf, path) = settings_file(&json!({}));
    let d = Berthd::start(&["--settings", path.to_str().unwrap()]);
    let e0 = etag(&d);
    // Both editors read e0; the first saves.
    let (code, headers, _) = d.api_h(
        "PATCH",
        "/berth/v1/settings",
        &[("If-Match", &e0)],
        Some(r#"{"registry-mirrors": ["https://first.example"]}"#),
    );
    assert_eq!(code, 200);
    let e1 = headers["etag"].clone();
    // The second editor's save is refused, with the version now current.
    let (code, headers, body) = d.api_h(
        "PUT",
        "/berth/v1/settings",
        &[("If-Match", &e0)],
        Some(r#"{"registry-mirrors": ["https://second.example"]}"#),
    );
    assert_eq!(code, 412, "{body}");
    assert_eq!(body["etag"].as_str().unwrap(), e1);
    assert_eq!(headers["etag"], e1);
    // Without If-Match at all: refused too.
    let (code, _, body) = d.api_h(
        "PUT",
        "/berth/v1/settings",
        &[],
        Some(r#"{"registry-mirrors": ["https://second.example"]}"#),
    );
    assert_eq!(code, 428, "{body}");
    let (_, got) = d.api("GET", "/berth/v1/settings", None);
    assert_eq!(
        got,
        json!({ "registry-mirrors": ["https://first.example"] })
    );
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk, got);
}

#[test]
fn a_crash_between_writing_and_renaming_keeps_the_old_file() {
    let (conf, path) = settings_file(&json!({ "vm": { "cpus": 2 } }));
    let before = std::fs::read(&path).unwrap();
    let mut d = Berthd::start_with_env(
        &["--settings", path.to_str().unwrap()],
        &[("BERTH_TEST_CRASH_BEFORE_SETTINGS_RENAME", "1")],
    );
    let e0 = etag(&d);
    let (code, _, _) = d.api_h(
        "PATCH",
        "/berth/v1/settings",
        &[("If-Match", &e0)],
        Some(r#"{"vm": {"cpus": 4}}"#),
    );
    assert_ne!(code, 200, "berthd died before answering");
    let status = d.child.wait().unwrap();
    assert!(!status.success(), "berthd aborted: {status}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the old file survived"
    );
    let temps: Vec<PathBuf> = std::fs::read_dir(conf.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert_eq!(temps.len(), 1, "the unfinished write is left: {temps:?}");
    let half: Value = serde_json::from_slice(&std::fs::read(&temps[0]).unwrap()).unwrap();
    assert_eq!(
        half["vm"]["cpus"], 4,
        "the crash came after the temp file was complete"
    );

    // Started again (without the crash): the old settings, the leftover removed.
    d.restart();
    let (_, got) = d.api("GET", "/berth/v1/settings", None);
    assert_eq!(got, json!({ "vm": { "cpus": 2 } }));
    assert!(!temps[0].exists(), "the leftover is removed at start");
    assert!(d.log().contains("a settings write that never finished"));
}

/// berthd run by hand, expected to refuse to start: its exit status and output.
fn start_expecting_refusal(settings: &Path) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin_dir().join("berthd"))
        .arg("--socket")
        .arg(dir.path().join("berthd.sock"))
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("--core-binary")
        .arg(bin_dir().join("berth-core"))
        .arg("--settings")
        .arg(settings)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berthd started with an invalid settings file");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        !dir.path().join("berthd.sock").exists(),
        "no socket was served"
    );
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_corrupt_settings_file_at_start_is_reported_never_reset() {
    for (text, needle) in [
        (
            &b"{ \"registry-mirrors\": [\"https://m.example\""[..],
            "not valid JSON",
        ),
        (
            &b"{ \"registry-mirror\": [\"https://m.example\"], \"vm\": {\"cpus\": 999} }"[..],
            "did you mean \"registry-mirrors\"?",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        std::fs::write(&path, text).unwrap();
        let (status, out) = start_expecting_refusal(&path);
        assert!(!status.success(), "{out}");
        assert!(
            out.contains(&path.display().to_string()),
            "names the file: {out}"
        );
        assert!(out.contains(needle), "{out}");
        if needle.contains("did you mean") {
            assert!(
                out.contains("vm.cpus: 999 is out of range"),
                "every error: {out}"
            );
        }
        assert_eq!(std::fs::read(&path).unwrap(), text, "left as it was");
    }
}

#[test]
fn test_mirror_reports_reachability_auth_latency_and_the_image() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let probe = |body: Value| {
        let (code, v) = d.api(
            "POST",
            "/berth/v1/registries/test-mirror",
            Some(&body.to_string()),
        );
        assert_eq!(code, 200, "{v}");
        v
    };
    let open = format!("http://{}", fx["BERTH_FIX_OPEN"]);
    let v = probe(json!({ "url": open, "image": "busybox" }));
    assert_eq!(v["reachable"], true, "{v}");
    assert_eq!(v["status"], 200);
    assert_eq!(v["tls"], "none");
    assert_eq!(v["auth"], "none");
    assert!(v["latencyMs"].is_u64(), "{v}");
    assert_eq!(v["apiVersion"], "registry/2.0");
    assert_eq!(v["image"]["repository"], "library/busybox");
    assert_eq!(v["image"]["found"], true, "{v}");
    assert_eq!(
        v["image"]["digest"],
        fixture_image("open", "library/busybox", "latest")["digest"]
    );
    assert_eq!(v["error"], Value::Null);

    let v = probe(json!({ "url": open, "image": "berth/not-there" }));
    assert_eq!(v["image"]["found"], false, "{v}");
    assert_eq!(v["image"]["error"], Value::Null, "{v}");

    let v = probe(json!({ "url": format!("http://{}", fx["BERTH_FIX_BASIC"]) }));
    assert_eq!(v["status"], 401);
    assert!(
        v["auth"].as_str().unwrap().starts_with("basic realm="),
        "{v}"
    );

    let v = probe(
        json!({ "url": format!("http://{}", fx["BERTH_FIX_TOKEN"]), "image": "berth/hello" }),
    );
    assert!(
        v["auth"].as_str().unwrap().starts_with(&format!(
            "bearer realm=\"http://{}/token\"",
            fx["BERTH_FIX_TOKEN_SERVER"]
        )),
        "{v}"
    );
    assert_eq!(v["image"]["found"], false);
    assert!(
        v["image"]["error"]
            .as_str()
            .unwrap()
            .contains("unauthorized"),
        "{v}"
    );

    let v = probe(json!({ "url": format!("http://127.0.0.1:{}", free_port()) }));
    assert_eq!(v["reachable"], false, "{v}");
    assert!(v["error"].as_str().is_some(), "{v}");

    let v = probe(json!({ "url": format!("{open}/v2/") }));
    assert_eq!(v["reachable"], false);
    assert!(v["error"].as_str().unwrap().contains("path"), "{v}");
}

/// A private D-Bus session with gnome-keyring's Secret Service, unlocked, in a temp home; both
/// daemons are stopped on drop.
struct SecretService {
    dir: tempfile::TempDir,
    bus: std::process::Child,
    keyring: std::process::Child,
    address: String,
}

impl SecretService {
    fn start() -> SecretService {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for d in ["home", "data", "config", "run"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::set_permissions(
            dir.path().join("run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let socket = dir.path().join("run/bus");
        let address = format!("unix:path={}", socket.display());
        let bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian's dbus; scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let env = session_env(dir.path(), &address);
        let mut keyring = Command::new("gnome-keyring-daemon")
            .envs(env)
            .args(["--foreground", "--unlock", "--components=secrets"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring-daemon (Debian's gnome-keyring; scripts/test installs it)");
        // --unlock reads the login keyring's password from stdin, up to its end.
        let mut stdin = keyring.stdin.take().unwrap();
        stdin.write_all(b"keyring-unlock-pw").unwrap();
        drop(stdin);
        let s = SecretService {
            dir,
            bus,
            keyring,
            address,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = s
                .command("dbus-send")
                .args([
                    "--session",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.NameHasOwner",
                    "string:org.freedesktop.secrets",
                ])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("boolean true") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Secret Service did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// The environment of a process in this session and home.
    fn env(&self) -> Vec<(String, String)> {
        session_env(self.dir.path(), &self.address)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env());
        c
    }
}

/// A session bus address, and a home, data, config and runtime dir under `dir`.
fn session_env(dir: &Path, address: &str) -> Vec<(String, String)> {
    let p = |d: &str| dir.join(d).display().to_string();
    vec![
        ("DBUS_SESSION_BUS_ADDRESS".into(), address.to_string()),
        ("HOME".into(), p("home")),
        ("XDG_DATA_HOME".into(), p("data")),
        ("XDG_CONFIG_HOME".into(), p("config")),
        ("XDG_RUNTIME_DIR".into(), p("run")),
    ]
}

impl Drop for SecretService {
    fn drop(&mut self) {
        let _ = self.keyring.kill();
        let _ = self.keyring.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// Regular files under `root` whose bytes contain `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                if let Ok(b) = std::fs::read(e.path()) {
                    if b.windows(needle.len()).any(|w| w == needle) {
                        out.push(e.path());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn docker_login_stores_the_password_in_the_keyring_and_pulls_use_it() {
    let fx = fixtures();
    let ss = SecretService::start();
    let env = ss.env();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Berthd::start_with_env(&[], &env_ref);
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
        let password = &fx[pass];
        d.docker_ok(&["login", "-u", &fx[user], "-p", password, host]);
        let name = format!("{host}/berth/hello:latest");
        d.docker_ok(&["pull", &name]);

        // The password is in the keyring: read it back through the Secret Service.
        let out = ss
            .command("secret-tool")
            .args(["lookup", "service", "berth-registry", "username", host])
            .output()
            .unwrap();
        assert!(out.status.success(), "{reg}: secret-tool: {out:?}");
        let secret: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(secret["password"], password.as_str(), "{reg}");
        assert_eq!(secret["username"], fx[user].as_str(), "{reg}");

        // The CLI kept an identity token, not the password.
        let config =
            std::fs::read_to_string(d.dir.path().join("docker-config/config.json")).unwrap();
        assert!(config.contains("identitytoken"), "{config}");

        // A pull with no credentials from the CLI at all uses the keyring's.
        let (code, body) = d.api(
            "POST",
            &format!("/images/create?fromImage={host}/berth/busybox&tag=latest"),
            None,
        );
        assert_eq!(code, 200, "{reg}: {body}");
        let v: Value = serde_json::from_str(&d.docker_ok(&[
            "image",
            "inspect",
            &format!("{host}/berth/busybox:latest"),
        ]))
        .unwrap();
        let kind = if reg == "BERTH_FIX_BASIC" {
            "basic"
        } else {
            "token"
        };
        assert_eq!(
            v[0]["Id"],
            fixture_image(kind, "berth/busybox", "latest")["config_digest"]
        );

        // And it is in no file: not under the keyring's home, data, config or runtime dirs,
        // not in berthd's data root, log, settings or the CLI's config.
        for root in [ss.dir.path(), d.dir.path()] {
            let found = files_containing(root, password.as_bytes());
            assert!(found.is_empty(), "{reg}: the password is in {found:?}");
        }
    }
}

/// `docker-credential-berth` (from the build, on the docker CLI's PATH) as the CLI's
/// `credsStore`: a `docker login` leaves no secret in config.json, the password is in Berth's
/// keyring entry, pulls work, `docker logout` erases the entry; the helper's own protocol
/// (store/get/list/erase, a malformed request) against the same real Secret Service.
#[test]
fn the_credential_helper_keeps_docker_logins_in_the_keyring() {
    let fx = fixtures();
    let ss = SecretService::start();
    let env = ss.env();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Berthd::start_with_env(&[], &env_ref);
    let config_dir = d.dir.path().join("docker-config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("config.json"), r#"{"credsStore": "berth"}"#).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let docker = |args: &[&str]| {
        d.docker_cmd(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let helper = |action: &str, input: &str| {
        use std::io::Write;
        let mut c = ss
            .command(bin_dir().join("docker-credential-berth").to_str().unwrap())
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let lookup = |host: &str| {
        let out = ss
            .command("secret-tool")
            .args(["lookup", "service", "berth-registry", "username", host])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };

    let basic = &fx["BERTH_FIX_BASIC"];
    let (user, password) = (&fx["BERTH_FIX_BASIC_USER"], &fx["BERTH_FIX_BASIC_PASS"]);
    let out = docker(&["login", "-u", user, "-p", password, basic]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let config = std::fs::read_to_string(config_dir.join("config.json")).unwrap();
    let v: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(v["credsStore"], "berth", "{config}");
    assert!(
        !config.contains("\"auth\"") && !config.contains("identitytoken"),
        "the CLI kept a secret in config.json: {config}"
    );
    assert_eq!(lookup(basic).unwrap()["password"], password.as_str());

    // The helper answers with the stored credentials; list names the registry.
    let (code, out) = helper("get", basic);
    assert_eq!(code, Some(0), "{out}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (got["Username"].as_str(), got["Secret"].as_str()),
        (Some(user.as_str()), Some(password.as_str()))
    );
    let (code, out) = helper("list", "");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()[basic],
        user.as_str()
    );

    let image = format!("{basic}/berth/hello:latest");
    let out = docker(&["pull", &image]);
    assert!(out.status.success(), "pull after login: {out:?}");

    // docker logout erases the keyring entry: the next pull has no credentials.
    let out = docker(&["logout", basic]);
    assert!(out.status.success(), "{out:?}");
    assert!(lookup(basic).is_none(), "the entry survived docker logout");
    let (code, out) = helper("get", basic);
    assert_eq!(
        (code, out.trim()),
        (Some(1), "credentials not found in native keychain")
    );
    let out = docker(&["pull", &format!("{basic}/berth/busybox:latest")]);
    assert!(
        !out.status.success(),
        "a pull without credentials succeeded"
    );

    // Stored through the helper alone (as another docker front end would), berthd's pulls
    // find them too.
    let token = &fx["BERTH_FIX_TOKEN"];
    let request = json!({
        "ServerURL": token,
        "Username": fx["BERTH_FIX_TOKEN_USER"],
        "Secret": fx["BERTH_FIX_TOKEN_PASS"],
    });
    assert_eq!(helper("store", &request.to_string()).0, Some(0));
    let (code, body) = d.api(
        "POST",
        &format!("/images/create?fromImage={token}/berth/busybox&tag=latest"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert!(!body.to_string().contains("errorDetail"), "{body}");

    // A malformed request is refused and changes nothing; erase twice says "not found".
    let (code, out) = helper("store", "{\"ServerURL\": 1}");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("store: expected"), "{out}");
    assert!(lookup(token).is_some());
    assert_eq!(helper("erase", token).0, Some(0));
    assert_eq!(helper("erase", token).0, Some(1));
    let (_, out) = helper("list", "");
    assert_eq!(out.trim(), "{}");
}

/// `berth login` goes through berthd (the registry checks the password) into the keyring;
/// a wrong password stores nothing; `berth logout` erases the entry.
#[test]
fn berth_login_and_logout() {
    let fx = fixtures();
    let ss = SecretService::start();
    let env = ss.env();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Berthd::start_with_env(&[], &env_ref);
    let berth = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut c = ss
            .command(bin_dir().join("berth").to_str().unwrap())
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let host = &fx["BERTH_FIX_TOKEN"];
    let user = &fx["BERTH_FIX_TOKEN_USER"];
    let out = berth(&["login", "-u", user, "--password-stdin", host], "wrong\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("login attempt to"), "{err}");
    let lookup = || {
        ss.command("secret-tool")
            .args(["lookup", "service", "berth-registry", "username", host])
            .output()
            .unwrap()
    };
    assert!(!lookup().status.success(), "a refused login was stored");

    let password = format!("{}\n", fx["BERTH_FIX_TOKEN_PASS"]);
    let out = berth(&["login", "-u", user, "--password-stdin", host], &password);
    assert!(out.status.success(), "{out:?}");
    let stored: Value = serde_json::from_slice(&lookup().stdout).unwrap();
    assert_eq!(stored["password"], password.trim());
    // The docker CLI, with no credentials of its own, pulls with them.
    d.docker_ok(&["pull", &format!("{host}/berth/hello:latest")]);

    let out = berth(&["logout", host], "");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Removing login credentials"));
    assert!(
        !lookup().status.success(),
        "the entry survived berth logout"
    );
}
