//! `docker save` / `docker load` with the real docker CLI: archives move between Berth and
//! Debian's dockerd 20.10 both ways, and an image saved by Berth keeps its manifest (a push
//! from another Berth after a load gives the digest it was pulled with).

mod harness;

use std::path::Path;
use std::process::Command;

use harness::{fixture_image, fixtures, Berthd, Dockerd};
use serde_json::Value;

/// A member of a tar file, read with tar(1).
fn member(tar: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(tar)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -xOf {} {name}: {}",
        tar.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn members(tar: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("-tf").arg(tar).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

fn inspect(out: &str) -> Value {
    serde_json::from_str::<Value>(out).unwrap()[0].clone()
}

fn diff_ids(img: &Value) -> Vec<String> {
    img["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diff_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn archives_move_between_berth_and_dockerd_both_ways() {
    let fx = fixtures();
    let open = &fx["BERTH_FIX_OPEN"];
    let d = Berthd::start(&[]);
    let busybox = format!("{open}/berth/busybox:latest");
    let hello = format!("{open}/berth/hello:v2s2");
    d.docker_ok(&["pull", &busybox]);
    d.docker_ok(&["pull", &hello]);
    let bb = fixture_image("open", "berth/busybox", "latest");
    let he = fixture_image("open", "berth/hello", "v2s2");

    // Berth's archive: Docker's manifest.json and an OCI layout with the pulled manifests.
    let from_berth = d.dir.path().join("berth.tar");
    d.docker_ok(&["save", "-o", from_berth.to_str().unwrap(), &busybox, &hello]);
    let names = members(&from_berth);
    for want in ["manifest.json", "index.json", "oci-layout", "repositories"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    for img in [&bb, &he] {
        for digest in [&img["digest"], &img["config_digest"]] {
            let path = format!("blobs/sha256/{}", hex(digest.as_str().unwrap()));
            assert!(names.contains(&path), "{path} in {names:?}");
        }
    }
    // The manifests are the registry's bytes: they hash to the digests it served.
    let m = member(
        &from_berth,
        &format!("blobs/sha256/{}", hex(bb["digest"].as_str().unwrap())),
    );
    let sum = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -xOf {} blobs/sha256/{} | sha256sum",
            from_berth.display(),
            hex(bb["digest"].as_str().unwrap())
        ))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sum.stdout).starts_with(hex(bb["digest"].as_str().unwrap())));
    assert!(!m.is_empty());
    let manifest: Value = serde_json::from_slice(&member(&from_berth, "manifest.json")).unwrap();
    let entries = manifest.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{manifest}");
    let bb_entry = entries
        .iter()
        .find(|e| e["RepoTags"][0] == busybox.as_str())
        .unwrap_or_else(|| panic!("{manifest}"));
    assert_eq!(
        bb_entry["Config"],
        format!(
            "blobs/sha256/{}",
            hex(bb["config_digest"].as_str().unwrap())
        )
    );
    let index: Value = serde_json::from_slice(&member(&from_berth, "index.json")).unwrap();
    assert!(
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["digest"] == he["digest"]
                && m["annotations"]["io.containerd.image.name"] == hello.as_str()),
        "{index}"
    );

    // dockerd 20.10 loads it: same image ids, same layers.
    let dd = Dockerd::start(&[]);
    let out = dd.docker_ok(&["load", "-i", from_berth.to_str().unwrap()]);
    assert!(out.contains(&format!("Loaded image: {busybox}")), "{out}");
    assert!(out.contains(&format!("Loaded image: {hello}")), "{out}");
    for (name, img) in [(&busybox, &bb), (&hello, &he)] {
        let v = inspect(&dd.docker_ok(&["image", "inspect", name]));
        assert_eq!(v["Id"], img["config_digest"], "{name}");
        let layers: Vec<String> = v["RootFS"]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        assert_eq!(layers, diff_ids(img), "{name}");
    }

    // dockerd's own archive (its 20.10 layout: <id>/layer.tar, no index.json) loads into a
    // Berth that never saw the image, and runs.
    let from_dockerd = dd.dir.path().join("dockerd.tar");
    dd.docker_ok(&["save", "-o", from_dockerd.to_str().unwrap(), &hello]);
    assert!(!members(&from_dockerd).iter().any(|n| n == "index.json"));
    let fresh = Berthd::start(&[]);
    let out = fresh.docker_ok(&["load", "-i", from_dockerd.to_str().unwrap()]);
    assert!(out.contains(&format!("Loaded image: {hello}")), "{out}");
    let v = inspect(&fresh.docker_ok(&["image", "inspect", &hello]));
    assert_eq!(v["Id"], he["config_digest"]);
    assert_eq!(v["RepoDigests"], Value::Array(vec![]));
    let run = fresh.docker_ok(&["run", "--rm", &hello]);
    assert!(run.contains("Hello from Berth!"), "{run}");
    // Loading it again changes nothing.
    let again = fresh.docker_ok(&["load", "-i", from_dockerd.to_str().unwrap()]);
    assert!(again.contains(&format!("Loaded image: {hello}")), "{again}");
}

#[test]
fn a_loaded_archive_keeps_the_pulled_manifest() {
    let fx = fixtures();
    let open = &fx["BERTH_FIX_OPEN"];
    let a = Berthd::start(&[]);
    let busybox = format!("{open}/berth/busybox:latest");
    a.docker_ok(&["pull", &busybox]);
    let tar = a.dir.path().join("busybox.tar");
    a.docker_ok(&["save", "-o", tar.to_str().unwrap(), &busybox]);

    let b = Berthd::start(&[]);
    let out = b.docker_ok(&["load", "-i", tar.to_str().unwrap()]);
    assert!(out.contains(&format!("Loaded image: {busybox}")), "{out}");
    let run = b.docker_ok(&["run", "--rm", &busybox, "cat", "/etc/passwd"]);
    assert!(run.contains("root:"), "{run}");
    // Pushed from there, it is byte for byte what was pulled.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dst = format!("{open}/berth/loaded-{}-{nanos}:latest", std::process::id());
    b.docker_ok(&["tag", &busybox, &dst]);
    let out = b.docker_ok(&["push", &dst]);
    let want = fixture_image("open", "berth/busybox", "latest")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(out.contains(&format!("latest: digest: {want}")), "{out}");
}

#[test]
fn loading_what_is_not_an_image_archive_fails_clearly() {
    let d = Berthd::start(&[]);
    let junk = d.dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all").unwrap();
    let out = d.docker(&["load", "-i", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a tar archive"), "{err}");
    // A tar without manifest.json.
    let dir = d.dir.path().join("plain");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hi").unwrap();
    let plain = d.dir.path().join("plain.tar");
    assert!(Command::new("tar")
        .arg("-cf")
        .arg(&plain)
        .arg("-C")
        .arg(&dir)
        .arg("hello.txt")
        .status()
        .unwrap()
        .success());
    let out = d.docker(&["load", "-i", plain.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no manifest.json"), "{err}");
    let images = d.docker_ok(&["images", "-q"]);
    assert!(images.trim().is_empty(), "{images}");
}
