//! `docker import`, `docker image prune`, dangling images and `docker system df` with the
//! real docker CLI.

mod harness;

use std::process::Command;

use harness::{fixtures, Berthd, Dockerd};
use serde_json::Value;

fn ids(d: &Berthd, args: &[&str]) -> Vec<String> {
    let mut a = vec!["images", "-q", "--no-trunc"];
    a.extend_from_slice(args);
    d.docker_ok(&a).lines().map(str::to_string).collect()
}

fn image_count(d: &Berthd) -> usize {
    ids(d, &["-a"]).len()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A sorted listing of a tree: path, type and (for files) contents' hash.
fn tree(root: &std::path::Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -path ./proc -prune -o -path ./sys -prune -o -path ./dev -prune -o -path ./etc/hostname -prune -o -path ./etc/hosts -prune -o -path ./etc/resolv.conf -prune -o \\( -type f -exec sha256sum {} + \\) -o -print | sort")
        .arg("sh")
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn export_import_run_round_trip_with_changes_and_refusals() {
    let fx = fixtures();
    let busybox = format!("{}/berth/busybox:latest", fx["BERTH_FIX_OPEN"]);
    let d = Berthd::start(&[]);
    d.docker_ok(&["pull", &busybox]);
    d.docker_ok(&[
        "create",
        "--name",
        "src",
        &busybox,
        "sh",
        "-c",
        "echo hi > /hello.txt",
    ]);
    d.docker_ok(&["start", "-a", "src"]);
    let exported = d.dir.path().join("src.tar");
    d.docker_ok(&["export", "-o", exported.to_str().unwrap(), "src"]);

    // export → import (gzip-compressed, with changes and a message) → run.
    let gz = d.dir.path().join("src.tar.gz");
    assert!(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", exported.display(), gz.display()))
        .status()
        .unwrap()
        .success());
    let out = d.docker_ok(&[
        "import",
        "--change",
        "CMD [\"cat\", \"/hello.txt\"]",
        "--change",
        "ENV GREETING=imported",
        "-m",
        "from a test",
        gz.to_str().unwrap(),
        "berth/imported:v1",
    ]);
    let id = out.trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{out}");
    let run = d.docker_ok(&["run", "--rm", "berth/imported:v1"]);
    assert_eq!(run, "hi\n");
    let env = d.docker_ok(&[
        "run",
        "--rm",
        "berth/imported:v1",
        "sh",
        "-c",
        "echo $GREETING",
    ]);
    assert_eq!(env, "imported\n");
    let inspect: Value =
        serde_json::from_str(&d.docker_ok(&["image", "inspect", "berth/imported:v1"])).unwrap();
    let img = &inspect[0];
    assert_eq!(img["Id"], id.as_str());
    assert_eq!(img["Comment"], "from a test");
    assert_eq!(img["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    assert_eq!(
        img["Config"]["Cmd"],
        serde_json::json!(["cat", "/hello.txt"])
    );
    let history = d.docker_ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.Comment}}",
        "berth/imported:v1",
    ]);
    assert_eq!(history.trim(), "from a test");

    // Without -m the history says where it came from; plain tar on stdin works.
    let bytes = std::fs::read(&exported).unwrap();
    let out = d.docker_with_input(&["import", "-", "berth/imported:plain"], &bytes);
    assert!(out.status.success(), "{}", stderr(&out));
    let history = d.docker_ok(&[
        "history",
        "--format",
        "{{.Comment}}",
        "berth/imported:plain",
    ]);
    assert_eq!(history.trim(), "Imported from -");

    // The same tree: the imported image's container exported again matches the original.
    d.docker_ok(&["create", "--name", "again", "berth/imported:plain", "true"]);
    let again = d.dir.path().join("again.tar");
    d.docker_ok(&["export", "-o", again.to_str().unwrap(), "again"]);
    let (a, b) = (d.dir.path().join("a"), d.dir.path().join("b"));
    for (dir, tar) in [(&a, &exported), (&b, &again)] {
        std::fs::create_dir_all(dir).unwrap();
        assert!(Command::new("tar")
            .arg("-xf")
            .arg(tar)
            .arg("-C")
            .arg(dir)
            .status()
            .unwrap()
            .success());
    }
    let (ta, tb) = (tree(&a), tree(&b));
    assert!(ta.contains("./hello.txt"), "{ta}");
    assert_eq!(ta, tb);

    // Refusals: garbage, a `..` escape, a truncated gzip, a URL, a bad change. No image is left.
    let before = image_count(&d);
    let garbage = vec![0x42u8; 4096];
    let out = d.docker_with_input(&["import", "-", "berth/bad:garbage"], &garbage);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a tar archive"),
        "{}",
        stderr(&out)
    );

    let mut escape = Vec::new();
    {
        let mut b = tar::Builder::new(&mut escape);
        let mut h = tar::Header::new_gnu();
        let data = b"evil";
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`: write the name bytes directly.
        h.as_old_mut().name[..14].copy_from_slice(b"../escaped.txt");
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
        b.finish().unwrap();
    }
    let out = d.docker_with_input(&["import", "-", "berth/bad:escape"], &escape);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused: the name contains a \"..\" component"),
        "{}",
        stderr(&out)
    );
    assert!(!d.dir.path().join("escaped.txt").exists());

    let gz_bytes = std::fs::read(&gz).unwrap();
    let cut = &gz_bytes[..gz_bytes.len() / 2];
    let out = d.docker_with_input(&["import", "-", "berth/bad:cut"], cut);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("gzip"), "{}", stderr(&out));

    let out = d.docker(&["import", "http://example.invalid/x.tar", "berth/bad:url"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not supported by Berth"),
        "{}",
        stderr(&out)
    );

    let out = d.docker_with_input(
        &["import", "--change", "RUN true", "-", "berth/bad:change"],
        &bytes,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("run is not a valid change command"),
        "{}",
        stderr(&out)
    );
    assert_eq!(image_count(&d), before);
    let listed = d.docker_ok(&["images", "--format", "{{.Repository}}"]);
    assert!(!listed.contains("berth/bad"), "{listed}");

    // An import event.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .saturating_add(1)
        .to_string();
    let events = d.docker_ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &now,
        "--filter",
        "event=import",
        "--format",
        "{{.ID}}",
    ]);
    assert!(events.contains(&id), "{events}");
}

#[test]
fn dangling_images_prune_and_system_df() {
    let fx = fixtures();
    let busybox = format!("{}/berth/busybox:latest", fx["BERTH_FIX_OPEN"]);
    let d = Berthd::start(&[]);
    d.docker_ok(&["pull", &busybox]);
    let bb_id = ids(&d, &[&busybox])[0].clone();

    // A committed image tagged, then its tag moved to another commit: the first dangles.
    d.docker_ok(&["run", "--name", "c1", &busybox, "sh", "-c", "echo 1 > /one"]);
    let first = d
        .docker_ok(&["commit", "c1", "berth/mine:latest"])
        .trim()
        .to_string();
    d.docker_ok(&["run", "--name", "c2", &busybox, "sh", "-c", "echo 2 > /two"]);
    let second = d
        .docker_ok(&["commit", "c2", "berth/mine:latest"])
        .trim()
        .to_string();
    d.docker_ok(&["rm", "c1", "c2"]);
    let dangling = ids(&d, &["-f", "dangling=true"]);
    assert_eq!(dangling, vec![first.clone()]);
    let listed = d.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    assert!(
        listed.contains(&format!("<none>:<none> {}", &first[7..19])),
        "{listed}"
    );
    assert!(!ids(&d, &["-f", "dangling=false"]).contains(&first));

    // A container keeps the image it uses from `prune -a`; the dangling one goes by default.
    d.docker_ok(&["create", "--name", "user", "berth/mine:latest", "true"]);
    let (code, df) = d.api("GET", "/system/df", None);
    assert_eq!(code, 200, "{df}");
    let mine = df["Images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["Id"] == second.as_str())
        .unwrap_or_else(|| panic!("{df}"))
        .clone();
    assert_eq!(mine["Containers"], 1, "{mine}");
    assert!(mine["SharedSize"].as_i64().unwrap() > 0, "{mine}");
    assert!(mine["Size"].as_i64().unwrap() > mine["SharedSize"].as_i64().unwrap());
    let dfc = &df["Containers"].as_array().unwrap();
    assert_eq!(dfc.len(), 1, "{df}");
    assert_eq!(dfc[0]["Names"][0], "/user");
    assert_eq!(dfc[0]["SizeRootFs"], mine["Size"]);
    assert!(
        df["Volumes"].is_array() && df["BuildCache"].is_array(),
        "{df}"
    );
    let text = d.docker_ok(&["system", "df"]);
    for kind in ["Images", "Containers", "Local Volumes", "Build Cache"] {
        assert!(text.contains(kind), "{text}");
    }
    let verbose = d.docker_ok(&["system", "df", "-v"]);
    assert!(verbose.contains("berth/mine"), "{verbose}");
    assert!(verbose.contains("user"), "{verbose}");

    let out = d.docker_ok(&["image", "prune", "-f"]);
    assert!(out.contains(&format!("deleted: {first}")), "{out}");
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert!(!ids(&d, &["-a"]).contains(&first));
    assert!(ids(&d, &["-f", "dangling=true"]).is_empty());

    // -a: busybox (used by no container, nothing kept on it? berth/mine is made on it) and
    // berth/mine (used by "user") stay; an unused, unrelated import goes with its tag.
    let exported = d.dir.path().join("user.tar");
    d.docker_ok(&["export", "-o", exported.to_str().unwrap(), "user"]);
    let bytes = std::fs::read(&exported).unwrap();
    let out = d.docker_with_input(&["import", "-", "berth/unused:1"], &bytes);
    assert!(out.status.success(), "{}", stderr(&out));
    let unused = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = d.docker_ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: berth/unused:1"), "{out}");
    assert!(out.contains(&format!("deleted: {unused}")), "{out}");
    let left = ids(&d, &["-a"]);
    assert!(left.contains(&second), "{left:?}");
    assert!(left.contains(&bb_id), "{left:?}");
    assert!(!left.contains(&unused));

    // system prune: the stopped containers go, then the image "user" used, dangling since
    // its tag moved to another commit.
    d.docker_ok(&[
        "run",
        "--name",
        "c3",
        &busybox,
        "sh",
        "-c",
        "echo 3 > /three",
    ]);
    d.docker_ok(&["commit", "c3", "berth/mine:latest"]);
    assert_eq!(ids(&d, &["-f", "dangling=true"]), vec![second.clone()]);
    let out = d.docker_ok(&["system", "prune", "-f"]);
    assert!(out.contains("Deleted Containers"), "{out}");
    assert!(out.contains(&format!("deleted: {second}")), "{out}");
    assert!(d.docker_ok(&["ps", "-aq"]).trim().is_empty());
    assert!(!ids(&d, &["-a"]).contains(&second));
}

#[test]
fn container_sizes_in_ps_and_system_df() {
    let fx = fixtures();
    let busybox = format!("{}/berth/busybox:latest", fx["BERTH_FIX_OPEN"]);
    let d = Berthd::start(&[]);
    d.docker_ok(&["pull", &busybox]);
    // 12000 bytes in the writable layer. Not counted: the hard link's second name, a symlink
    // to the image's busybox, the whiteout of a deleted image file, a volume's contents.
    d.docker_ok(&[
        "run",
        "--name",
        "sized",
        "-v",
        "/vol",
        &busybox,
        "sh",
        "-c",
        "dd if=/dev/zero of=/data.bin bs=1000 count=12 2>/dev/null && ln /data.bin /again.bin \
         && ln -s /bin/busybox /bb && rm /etc/group \
         && dd if=/dev/zero of=/vol/v.bin bs=1000 count=5 2>/dev/null",
    ]);
    d.docker_ok(&["create", "--name", "untouched", &busybox, "true"]);
    let (code, images) = d.api("GET", "/images/json", None);
    assert_eq!(code, 200, "{images}");
    let image_size = images[0]["Size"].as_u64().unwrap();
    assert!(image_size > 0, "{images}");

    let (code, ps) = d.api("GET", "/containers/json?all=1&size=1", None);
    assert_eq!(code, 200, "{ps}");
    let by_name = |list: &Value, name: &str| -> Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["Names"][0] == format!("/{name}").as_str())
            .unwrap_or_else(|| panic!("no {name} in {list}"))
            .clone()
    };
    let sized = by_name(&ps, "sized");
    assert_eq!(sized["SizeRw"], 12000, "{sized}");
    assert_eq!(sized["SizeRootFs"], image_size + 12000, "{sized}");
    let untouched = by_name(&ps, "untouched");
    assert_eq!(untouched["SizeRw"], 0, "{untouched}");
    assert_eq!(untouched["SizeRootFs"], image_size, "{untouched}");
    // Without size=1 the sizes are not measured, as with dockerd.
    let (_, plain) = d.api("GET", "/containers/json?all=1", None);
    assert!(by_name(&plain, "sized").get("SizeRw").is_none(), "{plain}");

    let size = d.docker_ok(&[
        "ps",
        "-a",
        "-s",
        "-f",
        "name=sized",
        "--format",
        "{{.Size}}",
    ]);
    assert!(size.starts_with("12kB (virtual "), "{size}");

    let (code, df) = d.api("GET", "/system/df", None);
    assert_eq!(code, 200, "{df}");
    let sized = by_name(&df["Containers"], "sized");
    assert_eq!(sized["SizeRw"], 12000, "{sized}");
    assert_eq!(sized["SizeRootFs"], image_size + 12000, "{sized}");
    let verbose = d.docker_ok(&["system", "df", "-v"]);
    let line = verbose
        .lines()
        .find(|l| l.trim_end().ends_with(" sized"))
        .unwrap_or_else(|| panic!("{verbose}"));
    assert!(line.contains(" 12kB "), "{verbose}");
    let summary = d.docker_ok(&["system", "df"]);
    let line = summary
        .lines()
        .find(|l| l.starts_with("Containers"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(line.contains("12kB"), "{summary}");
    d.docker_ok(&["rm", "-v", "sized", "untouched"]);
}

/// One API call over a unix socket with curl: the body as JSON.
fn api(socket: &std::path::Path, method: &str, path: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "-X", method, "--unix-socket"])
        .arg(socket)
        .arg(format!("http://docker{path}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

#[test]
fn import_prune_and_df_have_dockerds_shape() {
    let d = Berthd::start(&[]);
    let dd = Dockerd::start(&[]);
    // A small flat file system, uncompressed: both stores get the same diff id from it.
    let tarball = d.dir.path().join("fs.tar");
    {
        let f = std::fs::File::create(&tarball).unwrap();
        let mut b = tar::Builder::new(f);
        for (name, data) in [
            ("etc/motd", &b"imported\n"[..]),
            ("app/run", b"#!/bin/sh\n"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
    }
    let t = tarball.to_str().unwrap();
    let args = [
        "import",
        "--change",
        "CMD [\"/app/run\"]",
        "--change",
        "ENV A=b",
        t,
        "shape:one",
    ];
    d.docker_ok(&args);
    dd.docker_ok(&args);
    let ours: Value =
        serde_json::from_str(&d.docker_ok(&["image", "inspect", "shape:one"])).unwrap();
    let theirs: Value =
        serde_json::from_str(&dd.docker_ok(&["image", "inspect", "shape:one"])).unwrap();
    for p in ["/RootFS/Layers", "/Config/Cmd", "/Architecture", "/Os"] {
        assert_eq!(ours[0].pointer(p), theirs[0].pointer(p), "{p}");
    }
    let env = |v: &Value| {
        v[0]["Config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&Value::from("A=b"))
    };
    assert!(env(&ours) && env(&theirs), "{ours} {theirs}");
    let hist = |h: &dyn Fn(&[&str]) -> String| {
        h(&["history", "--format", "{{.Comment}}", "shape:one"])
            .trim()
            .to_string()
    };
    assert_eq!(hist(&|a| d.docker_ok(a)), "Imported from -");
    assert_eq!(hist(&|a| dd.docker_ok(a)), "Imported from -");

    // A second import under the same name leaves the first dangling; prune answers alike.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    d.docker_ok(&args);
    dd.docker_ok(&args);
    for (name, socket) in [("berth", &d.socket), ("dockerd", &dd.socket)] {
        let listed = api(
            socket,
            "GET",
            "/images/json?filters=%7B%22dangling%22%3A%5B%22true%22%5D%7D",
        );
        assert_eq!(listed.as_array().unwrap().len(), 1, "{name}: {listed}");
        assert_eq!(
            listed[0]["RepoTags"][0], "<none>:<none>",
            "{name}: {listed}"
        );
    }
    let (df_ours, df_theirs) = (
        api(&d.socket, "GET", "/system/df"),
        api(&dd.socket, "GET", "/system/df"),
    );
    for k in ["Images", "Containers", "Volumes", "BuildCache"] {
        assert!(
            df_ours.get(k).is_some() && df_theirs.get(k).is_some(),
            "{k}: {df_ours} {df_theirs}"
        );
    }
    assert_eq!(keys(&df_ours["Images"][0]), keys(&df_theirs["Images"][0]));
    let (p_ours, p_theirs) = (
        api(&d.socket, "POST", "/images/prune"),
        api(&dd.socket, "POST", "/images/prune"),
    );
    assert_eq!(keys(&p_ours), keys(&p_theirs));
    let shape = |v: &Value| -> Vec<String> {
        v["ImagesDeleted"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(keys)
            .take(1)
            .collect()
    };
    assert_eq!(shape(&p_ours), vec!["Deleted".to_string()], "{p_ours}");
    assert_eq!(shape(&p_theirs), vec!["Deleted".to_string()], "{p_theirs}");
    assert!(p_ours["SpaceReclaimed"].as_u64().is_some(), "{p_ours}");
}

fn build(d: &Berthd, dir: &std::path::Path, tag: &str) -> String {
    let out = d
        .docker_cmd(&["build", "-q", "-t", tag, dir.to_str().unwrap()])
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_rebuilt_tag_leaves_a_dangling_image_and_prune_keeps_the_cache() {
    let fx = fixtures();
    let busybox = format!("{}/berth/busybox:latest", fx["BERTH_FIX_OPEN"]);
    let d = Berthd::start(&[]);
    d.docker_ok(&["pull", &busybox]);
    let ctx = d.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let dockerfile = |last: &str| {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {busybox}\nRUN echo shared > /shared\nENV STEP=two\nRUN {last}\n"),
        )
        .unwrap();
    };
    dockerfile("echo one > /last");
    let old = build(&d, &ctx, "berth/built:latest");
    let all_before = ids(&d, &["-a"]);
    dockerfile("echo two > /last");
    let new = build(&d, &ctx, "berth/built:latest");
    assert_ne!(old, new);
    // The old image dangles; the new build reused the first two steps (shared intermediates).
    assert_eq!(ids(&d, &["-f", "dangling=true"]), vec![old.clone()]);
    let intermediates: Vec<String> = all_before
        .iter()
        .filter(|i| **i != old && !ids(&d, &[]).contains(i))
        .cloned()
        .collect();
    assert_eq!(intermediates.len(), 2, "{all_before:?}");

    let out = d.docker_ok(&["image", "prune", "-f"]);
    assert!(out.contains(&format!("deleted: {old}")), "{out}");
    let left = ids(&d, &["-a"]);
    assert!(!left.contains(&old));
    // The cache steps under the kept tag stay: a rebuild uses them and gives the same image.
    for i in &intermediates {
        assert!(left.contains(i), "{i} in {left:?}");
    }
    assert_eq!(build(&d, &ctx, "berth/built:latest"), new);
    assert!(ids(&d, &["-f", "dangling=true"]).is_empty());
}
