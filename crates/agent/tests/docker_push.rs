//! `docker push` with the real docker CLI against a real berthd and the fixture registries
//! (open, Basic, token): byte-identical manifests, layers the registry has, cross-repository
//! mounts, refusals that leave nothing behind. Each test pushes to repositories of its own
//! (named after the process and the clock) since the registries keep what they are given.

mod harness;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use harness::{fixture_image, fixtures, Berthd};
use serde_json::Value;

/// A repository name nobody used before: `berth/push-<what>-<pid>-<nanos>`.
fn fresh_repo(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("berth/push-{what}-{}-{nanos}", std::process::id())
}

/// Which fixture registry a host is, with its credentials (None for the open one).
struct Registry {
    kind: &'static str,
    host: String,
    creds: Option<(String, String)>,
}

fn registries() -> Vec<Registry> {
    let fx = fixtures();
    vec![
        Registry {
            kind: "open",
            host: fx["BERTH_FIX_OPEN"].clone(),
            creds: None,
        },
        Registry {
            kind: "basic",
            host: fx["BERTH_FIX_BASIC"].clone(),
            creds: Some((
                fx["BERTH_FIX_BASIC_USER"].clone(),
                fx["BERTH_FIX_BASIC_PASS"].clone(),
            )),
        },
        Registry {
            kind: "token",
            host: fx["BERTH_FIX_TOKEN"].clone(),
            creds: Some((
                fx["BERTH_FIX_TOKEN_USER"].clone(),
                fx["BERTH_FIX_TOKEN_PASS"].clone(),
            )),
        },
    ]
}

/// `Authorization` for a direct look at a registry: Basic, or a pull token from the token
/// server.
fn authorization(reg: &Registry, repo: &str) -> Option<String> {
    let (user, pass) = reg.creds.as_ref()?;
    if reg.kind == "basic" {
        let out = Command::new("sh")
            .args(["-c", &format!("printf %s '{user}:{pass}' | base64 -w0")])
            .output()
            .unwrap();
        return Some(format!("Basic {}", String::from_utf8_lossy(&out.stdout)));
    }
    let fx = fixtures();
    let out = Command::new("curl")
        .args(["-sSf", "-u", &format!("{user}:{pass}")])
        .arg(format!(
            "http://{}/token?service=berth-fixture-registry&scope=repository:{repo}:pull",
            fx["BERTH_FIX_TOKEN_SERVER"]
        ))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("token server answers JSON");
    Some(format!("Bearer {}", v["token"].as_str().unwrap()))
}

/// What the registry itself serves for `repo:tag`: the HTTP status, the manifest's sha256
/// (computed from the bytes) and its Content-Type.
fn served_manifest(reg: &Registry, repo: &str, tag: &str) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let head = dir.path().join("head");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code}"])
        .args([
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        ]);
    if let Some(a) = authorization(reg, repo) {
        cmd.args(["-H", &format!("Authorization: {a}")]);
    }
    let out = cmd
        .arg(format!("http://{}/v2/{repo}/manifests/{tag}", reg.host))
        .output()
        .unwrap();
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let digest = Command::new("sha256sum").arg(&body).output().unwrap();
    let digest = format!(
        "sha256:{}",
        String::from_utf8_lossy(&digest.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
    );
    let content_type = std::fs::read_to_string(&head)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (code, digest, content_type)
}

fn login(d: &Berthd, reg: &Registry) {
    if let Some((user, pass)) = &reg.creds {
        d.docker_ok(&["login", "-u", user, "-p", pass, &reg.host]);
    }
}

fn repo_digests(d: &Berthd, name: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(&d.docker_ok(&["image", "inspect", name])).unwrap();
    v[0]["RepoDigests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The layer lines of a push's output ("<id>: <status>"), final states only.
fn layer_states(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(id, _)| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|(_, s)| s.trim().to_string())
        .filter(|s| s == "Pushed" || s == "Layer already exists" || s.starts_with("Mounted from"))
        .collect()
}

#[test]
fn push_to_each_registry_then_pull_back_gives_the_same_digest() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let open = &fx["BERTH_FIX_OPEN"];
    // berth/busybox:latest is OCI, berth/hello:v2s2 is Docker schema 2: both go out as they
    // came in.
    let cases = [("berth/busybox", "latest"), ("berth/hello", "v2s2")];
    for reg in registries() {
        login(&d, &reg);
        for (src_repo, src_tag) in cases {
            let fixture = fixture_image("open", src_repo, src_tag);
            let want = fixture["digest"].as_str().unwrap();
            let layers = fixture["layers"].as_array().unwrap().len();
            let src = format!("{open}/{src_repo}:{src_tag}");
            d.docker_ok(&["pull", &src]);
            let repo = fresh_repo(reg.kind);
            let dst = format!("{}/{repo}:{src_tag}", reg.host);
            d.docker_ok(&["tag", &src, &dst]);

            let out = d.docker_ok(&["push", &dst]);
            assert!(
                out.contains(&format!(
                    "The push refers to repository [{}/{repo}]",
                    reg.host
                )),
                "{out}"
            );
            let size = fixture["size"].as_u64().unwrap();
            assert!(
                out.contains(&format!("{src_tag}: digest: {want} size: {size}")),
                "{}: {out}",
                reg.kind
            );
            let states = layer_states(&out);
            assert_eq!(states.len(), layers, "{out}");
            if reg.kind == "open" {
                // Pulled from this registry: its layers are mounted, not uploaded again.
                assert!(
                    states
                        .iter()
                        .all(|s| s == &format!("Mounted from {src_repo}")),
                    "{out}"
                );
            } else {
                assert!(states.iter().all(|s| s == "Pushed"), "{out}");
            }
            assert!(out.contains("Preparing"), "{out}");

            // The registry serves the very manifest that was pulled, with its media type.
            let (code, served, content_type) = served_manifest(&reg, &repo, src_tag);
            assert_eq!(code, 200, "{}: {repo}:{src_tag}", reg.kind);
            assert_eq!(served, want, "{}", reg.kind);
            assert_eq!(content_type, fixture["media_type"].as_str().unwrap());
            // The image now carries the pushed repository's digest, as with dockerd.
            assert!(
                repo_digests(&d, &dst).contains(&format!("{}/{repo}@{want}", reg.host)),
                "{:?}",
                repo_digests(&d, &dst)
            );

            // Again: the registry has everything.
            let again = d.docker_ok(&["push", &dst]);
            let states = layer_states(&again);
            assert_eq!(states.len(), layers, "{again}");
            assert!(
                states.iter().all(|s| s == "Layer already exists"),
                "{again}"
            );
            assert!(again.contains(&format!("digest: {want}")), "{again}");

            // Gone locally (every name, so the layers come from the pushed repository), then
            // pulled back: the same digest, the layers verified by the core again.
            d.docker_ok(&["rmi", &dst, &src]);
            let pulled = d.docker_ok(&["pull", &dst]);
            assert!(pulled.contains(&format!("Digest: {want}")), "{pulled}");
            assert!(pulled.contains("Pull complete"), "{pulled}");
            assert_eq!(
                repo_digests(&d, &dst),
                vec![format!("{}/{repo}@{want}", reg.host)]
            );
            d.docker_ok(&["rmi", &dst]);
        }
    }
}

#[test]
fn a_second_repository_on_the_same_registry_mounts_the_layers() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let src = format!("{}/berth/hello:latest", fx["BERTH_FIX_OPEN"]);
    d.docker_ok(&["pull", &src]);
    let token = registries()
        .into_iter()
        .find(|r| r.kind == "token")
        .unwrap();
    login(&d, &token);
    let first = fresh_repo("mount-a");
    let second = fresh_repo("mount-b");
    let a = format!("{}/{first}:latest", token.host);
    let b = format!("{}/{second}:latest", token.host);
    d.docker_ok(&["tag", &src, &a]);
    d.docker_ok(&["tag", &src, &b]);
    let out = d.docker_ok(&["push", &a]);
    assert_eq!(layer_states(&out), vec!["Pushed"], "{out}");
    // The first push recorded where the layer now is: the second mounts it from there (a
    // token with pull on the source and push on the target).
    let out = d.docker_ok(&["push", &b]);
    assert_eq!(
        layer_states(&out),
        vec![format!("Mounted from {first}")],
        "{out}"
    );
    let want = fixture_image("open", "berth/hello", "latest")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, served, _) = served_manifest(&token, &second, "latest");
    assert_eq!((code, served), (200, want));
}

#[test]
fn push_without_login_fails_clearly_and_leaves_nothing() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let src = format!("{}/berth/hello:latest", fx["BERTH_FIX_OPEN"]);
    d.docker_ok(&["pull", &src]);
    for reg in registries().into_iter().filter(|r| r.creds.is_some()) {
        let repo = fresh_repo("anon");
        let dst = format!("{}/{repo}:latest", reg.host);
        d.docker_ok(&["tag", &src, &dst]);
        let out = d.docker(&["push", &dst]);
        assert!(
            !out.status.success(),
            "{}: anonymous push must fail",
            reg.kind
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("unauthorized"), "{}: {text}", reg.kind);
        assert!(text.contains("log in first"), "{}: {text}", reg.kind);
        assert!(!text.contains("Pushed"), "{text}");
        // Nothing of it at the registry (looked at with credentials), nothing recorded locally.
        let (code, _, _) = served_manifest(&reg, &repo, "latest");
        assert_eq!(code, 404, "{}: {repo} must not exist", reg.kind);
        assert!(
            !repo_digests(&d, &dst).iter().any(|r| r.contains(&repo)),
            "{:?}",
            repo_digests(&d, &dst)
        );
    }
}

#[test]
fn pushing_what_does_not_exist_fails_as_dockerd_does() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let open = &fx["BERTH_FIX_OPEN"];
    let repo = fresh_repo("missing");
    let out = d.docker(&["push", &format!("{open}/{repo}:latest")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "An image does not exist locally with the tag: {open}/{repo}"
        )),
        "{err}"
    );

    let src = format!("{open}/berth/hello:latest");
    d.docker_ok(&["pull", &src]);
    d.docker_ok(&["tag", &src, &format!("{open}/{repo}:one")]);
    let out = d.docker(&["push", &format!("{open}/{repo}:two")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("tag does not exist: {open}/{repo}:two")),
        "{err}"
    );
    let (code, _, _) = served_manifest(&registries().into_iter().next().unwrap(), &repo, "one");
    assert_eq!(code, 404, "nothing was pushed");
}

#[test]
fn push_all_tags_sends_every_tag_of_the_repository() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let open = &fx["BERTH_FIX_OPEN"];
    d.docker_ok(&["pull", &format!("{open}/berth/hello:latest")]);
    d.docker_ok(&["pull", &format!("{open}/berth/busybox:latest")]);
    let repo = fresh_repo("all");
    d.docker_ok(&[
        "tag",
        &format!("{open}/berth/hello:latest"),
        &format!("{open}/{repo}:one"),
    ]);
    d.docker_ok(&[
        "tag",
        &format!("{open}/berth/busybox:latest"),
        &format!("{open}/{repo}:two"),
    ]);
    let out = d.docker_ok(&["push", "--all-tags", &format!("{open}/{repo}")]);
    let hello = fixture_image("open", "berth/hello", "latest");
    let busybox = fixture_image("open", "berth/busybox", "latest");
    assert!(
        out.contains(&format!(
            "one: digest: {}",
            hello["digest"].as_str().unwrap()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "two: digest: {}",
            busybox["digest"].as_str().unwrap()
        )),
        "{out}"
    );
    let open_reg = registries().into_iter().next().unwrap();
    assert_eq!(
        served_manifest(&open_reg, &repo, "two").1,
        busybox["digest"].as_str().unwrap()
    );
}

/// Issue 7's round trip: pull → run → commit → tag → push to each fixture registry (open,
/// basic and token auth) → rmi → pull again: the same digest and image id, and the change is
/// in the pulled image.
#[test]
fn pull_run_commit_push_rmi_pull_gives_the_same_image() {
    let fx = fixtures();
    let d = Berthd::start(&[]);
    let base = format!("{}/berth/busybox:latest", fx["BERTH_FIX_OPEN"]);
    d.docker_ok(&["pull", "-q", &base]);
    d.docker_ok(&[
        "run",
        "--name",
        "changed",
        &base,
        "sh",
        "-c",
        "echo committed > /etc/berth-note && rm /etc/hostname.orig 2>/dev/null; true",
    ]);
    let id = d
        .docker_ok(&[
            "commit",
            "-m",
            "round trip",
            "changed",
            "berth-roundtrip:v1",
        ])
        .trim()
        .to_string();
    assert!(id.starts_with("sha256:"), "{id}");
    let mut pushed = Vec::new();
    for reg in registries() {
        login(&d, &reg);
        let name = format!("{}/{}:v1", reg.host, fresh_repo("commit"));
        d.docker_ok(&["tag", "berth-roundtrip:v1", &name]);
        let out = d.docker_ok(&["push", &name]);
        let digest = out
            .lines()
            .find_map(|l| l.split_once("digest: ").map(|(_, r)| r))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("{}: no digest in {out}", reg.kind))
            .to_string();
        pushed.push((reg.kind, name, digest));
    }
    // Every local name goes: the image itself is gone before the pulls.
    for (_, name, _) in &pushed {
        d.docker_ok(&["rmi", name]);
    }
    d.docker_ok(&["rmi", "berth-roundtrip:v1"]);
    let gone = d.docker(&["image", "inspect", &id]);
    assert!(!gone.status.success(), "the committed image is still there");
    for (kind, name, digest) in &pushed {
        d.docker_ok(&["pull", "-q", name]);
        let repo = name.rsplit_once(':').unwrap().0;
        assert!(
            repo_digests(&d, name).contains(&format!("{repo}@{digest}")),
            "{kind}: {:?} lacks {digest}",
            repo_digests(&d, name)
        );
        let pulled = d.docker_ok(&["image", "inspect", "--format", "{{.Id}}", name]);
        assert_eq!(pulled.trim(), id, "{kind}");
        let note = d.docker_ok(&["run", "--rm", name, "cat", "/etc/berth-note"]);
        assert_eq!(note, "committed\n", "{kind}");
    }
}
