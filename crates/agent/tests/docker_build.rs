//! The real `docker` CLI against a real berthd: `docker commit` (layers with whiteouts and
//! opaque directories, `--change`, author and message, pausing a running container) and
//! `docker build` with the classic builder (`DOCKER_BUILDKIT=0`): multi-stage into `scratch`,
//! the layer cache, `--no-cache`, `.dockerignore`, build args, `--target`, `-f`, several
//! `-t`, and Dockerfiles that fail without leaving an image, a container or a mount behind.

mod harness;

use std::path::Path;
use std::process::Output;
use std::time::Instant;

use harness::{fixtures, skip_unless_direct, Berthd};
use serde_json::Value;

fn busybox() -> String {
    format!("{}/berth/busybox:latest", fixtures()["BERTH_FIX_OPEN"])
}

fn inspect(d: &Berthd, name: &str) -> Value {
    let v: Value = serde_json::from_str(&d.docker_ok(&["inspect", name])).unwrap();
    v[0].clone()
}

fn out_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `docker build` with the classic builder; returns the whole output and whether it worked.
fn build(d: &Berthd, dir: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    let dir = dir.display().to_string();
    all.push(&dir);
    let out = d
        .docker_cmd(&all)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), out_text(&out))
}

fn build_ok(d: &Berthd, dir: &Path, args: &[&str]) -> String {
    let (ok, text) = build(d, dir, args);
    assert!(ok, "docker build {args:?} failed:\n{text}");
    text
}

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// The image id `Successfully built <id>` names.
fn built_id(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("Successfully built "))
        .unwrap_or_else(|| panic!("no `Successfully built` in:\n{text}"))
        .trim()
        .to_string()
}

#[test]
fn commit_keeps_additions_deletions_opaque_dirs_and_changes() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);

    // A first commit makes a base with a file and a directory to delete later.
    d.docker_ok(&[
        "run",
        "--name",
        "c1",
        &image,
        "sh",
        "-c",
        "mkdir -p /olddir/sub && echo old > /olddir/sub/x && echo gone > /oldfile && echo keep > /kept",
    ]);
    let base = d.docker_ok(&["commit", "c1", "cbase:1"]).trim().to_string();
    assert!(base.starts_with("sha256:"), "{base}");

    // The second container deletes the file, replaces the directory (opaque in overlay) and
    // adds files, a symlink and a hard link.
    d.docker_ok(&[
        "run",
        "--name",
        "c2",
        "cbase:1",
        "sh",
        "-c",
        "rm /oldfile && rm -rf /olddir && mkdir /olddir && echo new > /olddir/new \
         && mkdir -p /data && echo hello > /data/file && ln -s /data/file /data/link \
         && ln /data/file /data/hard && chmod 4750 /data/file",
    ]);
    let diff = d.docker_ok(&["diff", "c2"]);
    let lines: Vec<&str> = diff.lines().collect();
    for want in [
        "D /oldfile",
        "A /data",
        "A /data/file",
        "A /data/link",
        "A /data/hard",
        "C /olddir",
        "A /olddir/new",
    ] {
        assert!(lines.contains(&want), "docker diff lacks {want:?}:\n{diff}");
    }
    let id = d
        .docker_ok(&[
            "commit",
            "-a",
            "Berth Tester <t@example.com>",
            "-m",
            "made by the test",
            "--change",
            "CMD [\"cat\", \"/data/file\"]",
            "--change",
            "ENV COMMITTED=yes",
            "--change",
            "LABEL stage=two",
            "--change",
            "EXPOSE 8080",
            "c2",
            "ctest:2",
        ])
        .trim()
        .to_string();

    // The new image: the change CMD runs, the file added is there, the deleted ones are not,
    // the replaced directory holds only what the container put in it.
    assert_eq!(d.docker_ok(&["run", "--rm", "ctest:2"]), "hello\n");
    let check = d.docker_ok(&[
        "run",
        "--rm",
        "ctest:2",
        "sh",
        "-c",
        "test ! -e /oldfile && echo nofile; ls -A /olddir; cat /kept; readlink /data/link; \
         stat -c '%a %h' /data/file; echo $COMMITTED",
    ]);
    assert_eq!(
        check, "nofile\nnew\nkeep\n/data/file\n4750 2\nyes\n",
        "{check}"
    );
    let info = inspect(&d, "ctest:2");
    assert_eq!(info["Id"], id);
    assert_eq!(info["Author"], "Berth Tester <t@example.com>");
    assert_eq!(info["Comment"], "made by the test");
    assert_eq!(info["Config"]["Labels"]["stage"], "two");
    assert!(
        info["Config"]["ExposedPorts"]["8080/tcp"].is_object(),
        "{info}"
    );
    // One layer more than the base, whose layers it shares.
    let base_layers = inspect(&d, "cbase:1")["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .clone();
    let layers = info["RootFS"]["Layers"].as_array().unwrap().clone();
    assert_eq!(layers.len(), base_layers.len() + 1);
    assert_eq!(layers[..base_layers.len()], base_layers[..]);
    // `docker diff` agrees with the layer: every change is in it, as a whiteout for a deletion.
    let saved = tempfile::tempdir().unwrap();
    let archive = saved.path().join("ctest.tar");
    d.docker_ok(&["save", "-o", &archive.display().to_string(), "ctest:2"]);
    let mut paths = layer_paths_of_top(&archive);
    paths.sort();
    let mut from_diff: Vec<String> = lines
        .iter()
        .map(|l| {
            let (kind, path) = l.split_once(' ').unwrap();
            let path = path.trim_start_matches('/');
            match kind {
                "D" => match path.rsplit_once('/') {
                    Some((dir, name)) => format!("{dir}/.wh.{name}"),
                    None => format!(".wh.{path}"),
                },
                _ => path.to_string(),
            }
        })
        .collect();
    // The replaced directory is opaque in the layer.
    from_diff.push("olddir/.wh..wh..opq".into());
    from_diff.sort();
    assert_eq!(paths, from_diff, "the layer and `docker diff` disagree");
    let history = d.docker_ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.Comment}}",
        "ctest:2",
    ]);
    assert_eq!(
        history.lines().next(),
        Some("made by the test"),
        "{history}"
    );

    // An unknown change instruction is refused as dockerd refuses it.
    let out = d.docker(&["commit", "--change", "RUN echo x", "c2", "bad:1"]);
    assert!(!out.status.success());
    assert!(
        out_text(&out).contains("run is not a valid change command"),
        "{}",
        out_text(&out)
    );
    assert!(!d.docker(&["image", "inspect", "bad:1"]).status.success());

    // A running container is paused for the commit (by default) and runs on after it.
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "c3",
        &image,
        "sh",
        "-c",
        "echo live > /live && sleep 1000",
    ]);
    let mut tries = 0;
    while d
        .docker(&["exec", "c3", "test", "-e", "/live"])
        .status
        .code()
        != Some(0)
    {
        tries += 1;
        assert!(tries < 100, "the container never wrote /live");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    d.docker_ok(&["commit", "c3", "clive:1"]);
    assert_eq!(
        inspect(&d, "c3")["State"]["Status"],
        "running",
        "a commit must leave the container running"
    );
    assert_eq!(
        d.docker_ok(&["run", "--rm", "clive:1", "cat", "/live"]),
        "live\n"
    );
    // dockerd's events: the container's `commit` (with the message), the image's `tag`.
    let until = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1)
    .to_string();
    let commits = d.docker_ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &until,
        "--filter",
        "event=commit",
        "--format",
        "{{.Type}} {{.Actor.Attributes.name}} {{.Actor.Attributes.comment}}",
    ]);
    assert!(
        commits
            .lines()
            .any(|l| l == "container c2 made by the test"),
        "{commits}"
    );
    let tags = d.docker_ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &until,
        "--filter",
        "type=image",
        "--filter",
        "event=tag",
        "--format",
        "{{.Actor.Attributes.name}}",
    ]);
    assert!(tags.lines().any(|l| l == "ctest:2"), "{tags}");
    d.docker_ok(&["rm", "-f", "c1", "c2", "c3"]);
}

/// The entry names of the top layer of the one image in a `docker save` archive.
fn layer_paths_of_top(archive: &Path) -> Vec<String> {
    let mut files = std::collections::HashMap::new();
    let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        files.insert(name, data);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    let top = files[layers.last().unwrap().as_str().unwrap()].clone();
    let gz = flate2::read::GzDecoder::new(&top[..]);
    let mut t = tar::Archive::new(gz);
    t.entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .display()
                .to_string()
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

/// The toolchain fixture: busybox, tcc and musl, `cc` linking static programs.
fn toolchain() -> String {
    format!("{}/berth/toolchain:latest", fixtures()["BERTH_FIX_OPEN"])
}

/// The multi-stage example of docs/build.md (and `scripts/bench build`): a C program compiled
/// with the toolchain image in one stage, the static binary alone in `scratch` in the next.
fn multi_stage_context(dir: &Path) {
    write(
        dir,
        "Dockerfile",
        r#"# syntax=docker/dockerfile:1
# escape=\
ARG TOOLCHAIN
FROM ${TOOLCHAIN} AS build
ARG GREETING=hello
ENV OUT=/out
WORKDIR /src
COPY hello.c greet.txt ./
COPY . /ctx/
RUN mkdir -p $OUT \
 && cc -DGREETING="\"${GREETING}-$(cat greet.txt)\"" -o $OUT/hello hello.c
LABEL org.example.stage=build

FROM scratch
COPY --from=build /out/hello /hello
CMD ["/hello"]
"#,
    );
    write(
        dir,
        "hello.c",
        "#include <stdio.h>\n\nint main(void)\n{\n    puts(GREETING);\n    return 0;\n}\n",
    );
    write(dir, "greet.txt", "world");
    write(dir, "secret.txt", "do not ship");
    write(dir, "logs/debug.log", "noise");
    write(dir, ".dockerignore", "secret.txt\n**/*.log\n");
}

#[test]
fn multi_stage_build_runs_and_rebuilds_from_cache() {
    let d = Berthd::start(&[]);
    let ctx = tempfile::tempdir().unwrap();
    multi_stage_context(ctx.path());
    let toolchain_arg = format!("TOOLCHAIN={}", toolchain());

    // The base image is not pulled beforehand: berthd pulls it for the build.
    let t0 = Instant::now();
    let first = build_ok(
        &d,
        ctx.path(),
        &[
            "--build-arg",
            &toolchain_arg,
            "-t",
            "hello:1",
            "-t",
            "hello:alias",
        ],
    );
    let cold = t0.elapsed();
    assert!(first.contains("Step 1/12 : ARG TOOLCHAIN"), "{first}");
    assert!(
        first.contains("Step 2/12 : FROM ${TOOLCHAIN} AS build"),
        "{first}"
    );
    assert!(first.contains(" ---> Running in "), "{first}");
    assert!(first.contains("Successfully tagged hello:1"), "{first}");
    assert!(first.contains("Successfully tagged hello:alias"), "{first}");
    let id = built_id(&first);
    // The compiled program runs alone in `scratch`: static, no libc, no shell beside it.
    assert_eq!(d.docker_ok(&["run", "--rm", "hello:1"]), "hello-world\n");
    assert!(inspect(&d, "hello:alias")["Id"]
        .as_str()
        .unwrap()
        .contains(&id));
    // As with dockerd, the steps' images are listed with -a only; the build stage's last
    // image (nothing was built on it) is a dangling one.
    let ids = |args: &[&str]| -> std::collections::BTreeSet<String> {
        d.docker_ok(args).lines().map(str::to_string).collect()
    };
    let top = ids(&["images", "-q"]);
    assert_eq!(
        top.len(),
        3,
        "the toolchain, hello and the build stage's image: {top:?}"
    );
    assert!(ids(&["images", "-a", "-q"]).len() > 8);
    assert_eq!(ids(&["images", "-q", "-f", "dangling=true"]).len(), 1);
    // The final image is the scratch stage: one layer (the program), its own config.
    let info = inspect(&d, "hello:1");
    assert_eq!(info["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    assert_eq!(info["Config"]["Cmd"], serde_json::json!(["/hello"]));
    assert!(info["Config"]["Entrypoint"].is_null(), "{info}");
    assert!(info["Config"]["Labels"]
        .as_object()
        .is_none_or(|l| l.get("org.example.stage").is_none()));
    // Nothing but the program went into it.
    let saved = tempfile::tempdir().unwrap();
    let archive = saved.path().join("hello.tar");
    d.docker_ok(&["save", "-o", &archive.display().to_string(), "hello:1"]);
    assert_eq!(layer_paths_of_top(&archive), ["hello"]);

    // Unchanged: every step after FROM comes from the cache, no RUN runs, same image.
    let t1 = Instant::now();
    let again = build_ok(
        &d,
        ctx.path(),
        &["--build-arg", &toolchain_arg, "-t", "hello:1"],
    );
    let cached = t1.elapsed();
    assert!(!again.contains("Running in"), "{again}");
    let steps = again.matches("Step ").count();
    let hits = again.matches(" ---> Using cache").count();
    // Steps: 12; ARG TOOLCHAIN (before FROM) and the two FROMs make no image of their own.
    assert_eq!(steps, 12, "{again}");
    assert_eq!(hits, 9, "{again}");
    assert_eq!(built_id(&again), id);
    // Informational only (timings on a shared machine are not asserted): scripts/bench build
    // measures them.
    eprintln!("cold build {cold:?}, cached build {cached:?}");

    // A build arg changes the RUN step and what follows.
    let bonjour = build_ok(
        &d,
        ctx.path(),
        &[
            "--build-arg",
            &toolchain_arg,
            "--build-arg",
            "GREETING=bonjour",
            "-t",
            "hello:fr",
        ],
    );
    assert!(bonjour.contains("Running in"), "{bonjour}");
    assert_eq!(d.docker_ok(&["run", "--rm", "hello:fr"]), "bonjour-world\n");

    // A changed file in the context: its COPY and everything after it run again.
    write(ctx.path(), "greet.txt", "there");
    let changed = build_ok(
        &d,
        ctx.path(),
        &["--build-arg", &toolchain_arg, "-t", "hello:2"],
    );
    assert!(changed.contains("Running in"), "{changed}");
    assert_eq!(d.docker_ok(&["run", "--rm", "hello:2"]), "hello-there\n");

    // --no-cache runs everything again and makes a new image.
    let fresh = build_ok(
        &d,
        ctx.path(),
        &["--no-cache", "--build-arg", &toolchain_arg, "-t", "hello:2"],
    );
    assert!(!fresh.contains("Using cache"), "{fresh}");
    assert!(fresh.contains("Running in"), "{fresh}");
    assert_ne!(built_id(&fresh), built_id(&changed));

    // --target stops at the named stage; -f names another Dockerfile; -q prints the id only.
    std::fs::rename(
        ctx.path().join("Dockerfile"),
        ctx.path().join("build.Dockerfile"),
    )
    .unwrap();
    let target = build_ok(
        &d,
        ctx.path(),
        &[
            "-f",
            &ctx.path().join("build.Dockerfile").display().to_string(),
            "--target",
            "build",
            "--build-arg",
            &toolchain_arg,
            "-t",
            "hello:build",
        ],
    );
    assert!(!target.contains("FROM scratch"), "{target}");
    let info = inspect(&d, "hello:build");
    assert_eq!(info["Config"]["WorkingDir"], "/src");
    assert_eq!(info["Config"]["Labels"]["org.example.stage"], "build");
    assert!(info["Config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&Value::from("OUT=/out")));
    assert_eq!(
        d.docker_ok(&["run", "--rm", "hello:build", "/out/hello"]),
        "hello-there\n"
    );
    // .dockerignore kept the secret and the logs out of `COPY . /ctx/`.
    let files = d.docker_ok(&["run", "--rm", "hello:build", "find", "/ctx"]);
    let mut files: Vec<&str> = files.lines().collect();
    files.sort();
    assert_eq!(
        files,
        [
            "/ctx",
            "/ctx/.dockerignore",
            "/ctx/build.Dockerfile",
            "/ctx/greet.txt",
            "/ctx/hello.c",
            "/ctx/logs"
        ],
        "{files:?}"
    );
    let (ok, quiet) = build(
        &d,
        ctx.path(),
        &[
            "-q",
            "-f",
            &ctx.path().join("build.Dockerfile").display().to_string(),
            "--build-arg",
            &toolchain_arg,
        ],
    );
    assert!(ok, "{quiet}");
    assert!(quiet.trim().starts_with("sha256:"), "{quiet}");
    assert!(!quiet.contains("Step"), "{quiet}");
}

#[test]
fn config_instructions_are_stored_as_dockerd_stores_them() {
    let d = Berthd::start(&[]);
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        &format!(
            "FROM {}\n\
             SHELL [\"/bin/sh\", \"-ec\"]\n\
             ENV A=1 B=\"two words\"\n\
             ENV C=${{A}}-${{MISSING:-dflt}}\n\
             USER nobody\n\
             EXPOSE 80 53/udp\n\
             VOLUME /data\n\
             STOPSIGNAL SIGINT\n\
             HEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost || exit 1\n\
             ONBUILD RUN echo triggered\n\
             MAINTAINER someone\n\
             ADD stuff.tar.gz /opt/\n\
             COPY --chown=nobody:root owned.txt /owned/\n\
             COPY --chown=1234 owned.txt /numeric\n\
             CMD echo $A $B $C\n",
            busybox()
        ),
    );
    // A local tar archive is extracted by ADD.
    let tgz = ctx.path().join("stuff.tar.gz");
    {
        let f = std::fs::File::create(&tgz).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(6);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        t.append_data(&mut h, "inside/file.txt", &b"inside"[..])
            .unwrap();
        t.into_inner().unwrap().finish().unwrap();
    }
    write(ctx.path(), "owned.txt", "mine");
    let out = build_ok(
        &d,
        ctx.path(),
        &[
            "-t",
            "cfg:1",
            "--label",
            "built.by=test",
            "--build-arg",
            "UNUSED=1",
        ],
    );
    assert!(
        out.contains("[Warning] One or more build-args [UNUSED] were not consumed"),
        "{out}"
    );
    assert_eq!(
        d.docker_ok(&[
            "run",
            "--rm",
            "--user",
            "root",
            "cfg:1",
            "stat",
            "-c",
            "%U:%G %u:%g %a",
            "/owned/owned.txt",
            "/numeric",
        ]),
        "nobody:root 65534:0 644\nUNKNOWN:UNKNOWN 1234:1234 644\n"
    );
    let c = inspect(&d, "cfg:1");
    let cfg = &c["Config"];
    assert_eq!(cfg["Shell"], serde_json::json!(["/bin/sh", "-ec"]));
    let env: Vec<&str> = cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"B=two words"), "{env:?}");
    assert!(env.contains(&"C=1-dflt"), "{env:?}");
    assert_eq!(cfg["User"], "nobody");
    assert_eq!(cfg["Labels"]["built.by"], "test");
    assert!(cfg["ExposedPorts"]["53/udp"].is_object());
    assert!(cfg["Volumes"]["/data"].is_object());
    assert_eq!(cfg["StopSignal"], "SIGINT");
    assert_eq!(
        cfg["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "wget -q localhost || exit 1"])
    );
    assert_eq!(cfg["Healthcheck"]["Interval"], 5_000_000_000i64);
    assert_eq!(cfg["OnBuild"], serde_json::json!(["RUN echo triggered"]));
    assert_eq!(c["Author"], "someone");
    assert_eq!(
        cfg["Cmd"],
        serde_json::json!(["/bin/sh", "-ec", "echo $A $B $C"])
    );
    assert_eq!(
        d.docker_ok(&["run", "--rm", "cfg:1"]),
        "1 two words 1-dflt\n"
    );
    assert_eq!(
        d.docker_ok(&["run", "--rm", "cfg:1", "cat", "/opt/inside/file.txt"]),
        "inside"
    );
    // The ONBUILD trigger runs in an image built FROM this one.
    write(ctx.path(), "Dockerfile", "FROM cfg:1\nUSER root\n");
    let child = build_ok(&d, ctx.path(), &["-t", "cfg:child"]);
    assert!(child.contains("# Executing 1 build trigger"), "{child}");
    assert!(child.contains("triggered"), "{child}");
    assert!(inspect(&d, "cfg:child")["Config"]["OnBuild"].is_null());

    // Without DOCKER_BUILDKIT the CLI (no buildx plugin, `Builder-Version: 1` from `/_ping`)
    // falls back to the classic builder by itself.
    let out = d
        .docker_cmd(&[
            "build",
            "-t",
            "cfg:plain",
            &ctx.path().display().to_string(),
        ])
        .env_remove("DOCKER_BUILDKIT")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = out_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Successfully tagged cfg:plain"), "{text}");

    // `-f -`: the Dockerfile from stdin, added to the context by the CLI.
    let mut child = d
        .docker_cmd(&[
            "build",
            "-t",
            "cfg:stdin",
            "-f",
            "-",
            &ctx.path().display().to_string(),
        ])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"FROM cfg:1\nCMD [\"cat\", \"/owned/owned.txt\"]\n",
    )
    .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    assert_eq!(d.docker_ok(&["run", "--rm", "cfg:stdin"]), "mine");
}

/// Each bad Dockerfile fails with dockerd's kind of message and leaves no tag, no container
/// and no mount behind.
#[test]
fn bad_dockerfiles_fail_cleanly() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "present.txt", "x");
    let cases = [
        (
            format!("FROM {image}\nRUN true\nFOO bar\n"),
            "dockerfile parse error line 3: unknown instruction: FOO".to_string(),
        ),
        (
            format!("FROM {image}\nCOPY present.txt missing.txt /dst/\n"),
            "COPY failed: file not found in build context or excluded by .dockerignore: stat missing.txt: file does not exist"
                .to_string(),
        ),
        (
            format!("FROM {image}\nRUN echo before && false\n"),
            "The command '/bin/sh -c echo before && false' returned a non-zero code: 1".to_string(),
        ),
        (
            format!("FROM {image}\nRUN [\"sh\", \"-c\", \"exit 3\"]\n"),
            "The command 'sh -c exit 3' returned a non-zero code: 3".to_string(),
        ),
        (
            format!(
                "FROM {}/berth/no-such-image:latest\nRUN true\n",
                fixtures()["BERTH_FIX_OPEN"]
            ),
            "berth/no-such-image".to_string(),
        ),
        (
            "FROM scratch\nADD https://example.com/x /x\n".to_string(),
            "ADD from a URL".to_string(),
        ),
    ];
    for (i, (dockerfile, want)) in cases.iter().enumerate() {
        write(ctx.path(), "Dockerfile", dockerfile);
        let tag = format!("bad:{i}");
        let (ok, text) = build(&d, ctx.path(), &["-t", &tag]);
        assert!(!ok, "{dockerfile} should fail:\n{text}");
        assert!(text.contains(want.as_str()), "want {want:?} in:\n{text}");
        assert!(!text.contains("Successfully built"), "{text}");
        if want.contains("echo before") {
            // The failing RUN's output reached the client before the error.
            assert!(text.contains("\nbefore\n"), "{text}");
        }
        assert!(
            !d.docker(&["image", "inspect", &tag]).status.success(),
            "a failed build tagged {tag}"
        );
    }
    let ps = d.docker_ok(&["ps", "-a", "-q"]);
    assert_eq!(ps.trim(), "", "build containers were left behind: {ps}");
    if skip_unless_direct("the store's files and mounts are in the guest") {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = d.data_root.display().to_string();
    // (The core's network namespace stays bind-mounted under the data root: not the build's.)
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&root) && !l.contains("/network/netns"))
        .collect();
    assert!(
        left.is_empty(),
        "mounts left under the data root: {left:#?}"
    );
    let builds = d.data_root.join("builds");
    let left: Vec<_> = std::fs::read_dir(&builds)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "build directories left: {left:?}");
}
