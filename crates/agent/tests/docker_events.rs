//! `docker events` with the real docker CLI against a real berthd: container and image events
//! with dockerd's names and attributes, in order; `--since`/`--until` windows; a live
//! `docker events`; filters; history that outlives a berthd restart; a restart policy's
//! `die` and `start`. Runs on the direct backend, and with BERTH_TEST_BACKEND=qemu on the core
//! in the VM.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{fixtures, Berthd};
use serde_json::Value;

fn busybox() -> String {
    format!("{}/berth/busybox:latest", fixtures()["BERTH_FIX_OPEN"])
}

/// Now as the docker CLI passes a Unix timestamp on: "seconds.nanoseconds".
fn now() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// `docker events --since … --until … --format '{{json .}}'` with `filters`: the events, parsed.
fn events(d: &Berthd, since: &str, until: &str, filters: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "events",
        "--since",
        since,
        "--until",
        until,
        "--format",
        "{{json .}}",
    ];
    for f in filters {
        args.extend(["--filter", f]);
    }
    d.docker_ok(&args)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The events of one container (by name), as "action" or "action attr=value".
fn actions_of(evs: &[Value], name: &str) -> Vec<String> {
    evs.iter()
        .filter(|e| e["Type"] == "container" && e["Actor"]["Attributes"]["name"] == name)
        .map(|e| {
            let a = &e["Actor"]["Attributes"];
            let action = e["Action"].as_str().unwrap().to_string();
            match action.as_str() {
                "die" | "exec_die" => {
                    format!("{action} exitCode={}", a["exitCode"].as_str().unwrap())
                }
                "kill" => format!("kill signal={}", a["signal"].as_str().unwrap()),
                _ => action,
            }
        })
        .collect()
}

/// Polls `until_ok` (every 200 ms, up to `limit`) and panics with `what` if it never holds.
fn eventually<T>(limit: Duration, what: &str, mut until_ok: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = until_ok() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn container_lifecycle_events_in_order_with_dockerd_attributes() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let t0 = now();

    let id1 = d
        .docker_ok(&[
            "create", "--name", "ev1", "--label", "tier=web", &image, "sh", "-c", "exit 3",
        ])
        .trim()
        .to_string();
    d.docker_ok(&["start", "ev1"]);
    assert_eq!(d.docker_ok(&["wait", "ev1"]).trim(), "3");
    // Attached `run`: attach comes before start.
    let out = d.docker(&["run", "--name", "ev2", &image, "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    d.docker_ok(&["run", "--rm", "--name", "ev3", &image, "true"]);
    // PID 1's sh ignores SIGTERM: the stop's SIGKILL follows after the timeout.
    d.docker_ok(&["run", "-d", "--name", "ev4", &image, "sleep", "100"]);
    d.docker_ok(&["stop", "-t", "1", "ev4"]);
    d.docker_ok(&["run", "-d", "--name", "ev5", &image, "sleep", "100"]);
    d.docker_ok(&["kill", "ev5"]);
    d.docker_ok(&["wait", "ev5"]);
    d.docker_ok(&["rm", "ev1", "ev2", "ev4", "ev5"]);
    let t1 = now();

    let evs = events(&d, &t0, &t1, &[]);
    assert_eq!(
        actions_of(&evs, "ev1"),
        ["create", "start", "die exitCode=3", "destroy"],
        "{evs:#?}"
    );
    assert_eq!(
        actions_of(&evs, "ev2"),
        ["create", "attach", "start", "die exitCode=5", "destroy"],
        "{evs:#?}"
    );
    assert_eq!(
        actions_of(&evs, "ev3"),
        ["create", "attach", "start", "die exitCode=0", "destroy"],
        "{evs:#?}"
    );
    assert_eq!(
        actions_of(&evs, "ev4"),
        [
            "create",
            "start",
            "kill signal=15",
            "kill signal=9",
            "die exitCode=137",
            "stop",
            "destroy"
        ],
        "{evs:#?}"
    );
    assert_eq!(
        actions_of(&evs, "ev5"),
        [
            "create",
            "start",
            "kill signal=9",
            "die exitCode=137",
            "destroy"
        ],
        "{evs:#?}"
    );

    // Docker's shape: legacy fields, the actor's attributes (image as given, name, labels).
    let die = evs
        .iter()
        .find(|e| e["Action"] == "die" && e["id"] == id1.as_str())
        .unwrap();
    assert_eq!(die["status"], "die");
    assert_eq!(die["from"], image.as_str());
    assert_eq!(die["Type"], "container");
    assert_eq!(die["scope"], "local");
    assert_eq!(die["Actor"]["ID"], id1.as_str());
    let attrs = &die["Actor"]["Attributes"];
    assert_eq!(attrs["image"], image.as_str(), "{die}");
    assert_eq!(attrs["name"], "ev1");
    assert_eq!(attrs["tier"], "web");
    assert_eq!(attrs["exitCode"], "3");
    let nano = die["timeNano"].as_i64().unwrap();
    assert_eq!(die["time"].as_i64().unwrap(), nano / 1_000_000_000);
    let secs: f64 = t0.parse().unwrap();
    assert!(nano as f64 / 1e9 >= secs - 1.0, "{die}");
    // In order of time.
    let times: Vec<i64> = evs
        .iter()
        .map(|e| e["timeNano"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // A window that ends before the second container was created holds none of its events.
    let create2 = evs
        .iter()
        .find(|e| e["Action"] == "create" && e["Actor"]["Attributes"]["name"] == "ev2")
        .unwrap()["timeNano"]
        .as_i64()
        .unwrap();
    let before2 = format!(
        "{}.{:09}",
        (create2 - 1) / 1_000_000_000,
        (create2 - 1) % 1_000_000_000
    );
    let early = events(&d, &t0, &before2, &[]);
    assert!(actions_of(&early, "ev2").is_empty(), "{early:#?}");
    assert_eq!(
        actions_of(&early, "ev1"),
        ["create", "start", "die exitCode=3"],
        "{early:#?}"
    );
    // And one that starts with it: of the first, only its removal at the end.
    let from2 = format!("{}.{:09}", create2 / 1_000_000_000, create2 % 1_000_000_000);
    let late = events(&d, &from2, &t1, &[]);
    assert_eq!(actions_of(&late, "ev1"), ["destroy"], "{late:#?}");
    assert_eq!(actions_of(&late, "ev2")[0], "create");
}

#[test]
fn operations_exec_rename_pause_and_restart_events() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let t0 = now();
    let id = d
        .docker_ok(&["run", "-d", "--name", "op1", &image, "sleep", "1000"])
        .trim()
        .to_string();
    let out = d.docker(&["exec", "op1", "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    d.docker_ok(&["pause", "op1"]);
    d.docker_ok(&["unpause", "op1"]);
    d.docker_ok(&["top", "op1"]);
    d.docker_ok(&["rename", "op1", "op2"]);
    d.docker_ok(&["restart", "-t", "0", "op2"]);
    d.docker_ok(&["rm", "-f", "op2"]);
    let t1 = now();

    let evs = events(&d, &t0, &t1, &[&format!("container={id}")]);
    let ours: Vec<Value> = evs
        .iter()
        .filter(|e| e["id"] == id.as_str())
        .cloned()
        .collect();
    assert_eq!(
        ours.len(),
        evs.len(),
        "the filter let others through: {evs:#?}"
    );
    let actions: Vec<&str> = ours.iter().map(|e| e["Action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "create",
            "start",
            "exec_create: sh -c exit 4",
            "exec_start: sh -c exit 4",
            "exec_die",
            "pause",
            "unpause",
            "top",
            "rename",
            "kill",
            "kill",
            "die",
            "stop",
            "start",
            "restart",
            "kill",
            "die",
            "destroy"
        ],
        "{ours:#?}"
    );
    let exec_ids: Vec<&str> = ours[2..5]
        .iter()
        .map(|e| e["Actor"]["Attributes"]["execID"].as_str().unwrap())
        .collect();
    assert_eq!(exec_ids[0].len(), 64, "{exec_ids:?}");
    assert!(exec_ids.iter().all(|x| *x == exec_ids[0]), "{exec_ids:?}");
    assert_eq!(ours[4]["Actor"]["Attributes"]["exitCode"], "4");
    assert_eq!(ours[8]["Actor"]["Attributes"]["oldName"], "/op1");
    assert_eq!(ours[8]["Actor"]["Attributes"]["name"], "op2");
    // After the rename, events carry the new name.
    assert_eq!(ours[14]["Actor"]["Attributes"]["name"], "op2");
    assert_eq!(ours[14]["Actor"]["Attributes"]["image"], image.as_str());
}

/// A `docker events --format '{{json .}}'` running in the background, and what it printed.
struct LiveEvents {
    child: std::process::Child,
    rx: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl LiveEvents {
    /// Starts `docker events`, and makes sure it is connected: `probe` (a container that
    /// exits at once) is started until its start shows up.
    fn start(d: &Berthd, probe: &str) -> LiveEvents {
        let mut child = d
            .docker_cmd(&["events", "--format", "{{json .}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<Value>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut live = LiveEvents {
            child,
            rx,
            seen: Vec::new(),
        };
        eventually(
            Duration::from_secs(60),
            "docker events to see the probe",
            || {
                d.docker_ok(&["start", probe]);
                live.read_for(Duration::from_secs(2));
                live.seen
                    .iter()
                    .any(|e| e["Action"] == "start" && e["Actor"]["Attributes"]["name"] == probe)
                    .then_some(())
            },
        );
        live
    }

    fn read_for(&mut self, how_long: Duration) {
        let deadline = Instant::now() + how_long;
        while let Ok(v) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v);
        }
    }

    /// Waits until `name` has at least `n` events; returns them (as [`actions_of`]).
    fn wait_for(&mut self, name: &str, n: usize) -> Vec<String> {
        eventually(
            Duration::from_secs(60),
            &format!("{n} events of {name}"),
            || {
                self.read_for(Duration::from_millis(100));
                let got = actions_of(&self.seen, name);
                (got.len() >= n).then_some(got)
            },
        )
    }
}

impl Drop for LiveEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_live_docker_events_sees_what_happens_after_it_started() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    d.docker_ok(&["create", "--name", "probe", &image, "true"]);
    let mut live = LiveEvents::start(&d, "probe");
    // No backlog without --since: the probe's create happened before.
    assert!(
        !live.seen.iter().any(|e| e["Action"] == "create"),
        "{:#?}",
        live.seen
    );

    d.docker(&["run", "--name", "live1", &image, "sh", "-c", "exit 7"]);
    let wanted = ["create", "attach", "start", "die exitCode=7"];
    assert_eq!(
        live.wait_for("live1", wanted.len()),
        wanted,
        "{:#?}",
        live.seen
    );
}

#[test]
fn events_go_on_across_a_core_restart_without_loss_or_repeats() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let t0 = now();
    d.docker_ok(&["create", "--name", "probe", &image, "true"]);
    let mut live = LiveEvents::start(&d, "probe");

    let (code, v) = d.api("POST", "/berth/v1/engine/restart-core", None);
    assert_eq!(code, 200, "{v}");
    // The `docker events` client stays connected: berthd follows the new core.
    d.docker(&["run", "--name", "after", &image, "sh", "-c", "exit 9"]);
    let wanted = ["create", "attach", "start", "die exitCode=9"];
    assert_eq!(
        live.wait_for("after", wanted.len()),
        wanted,
        "{:#?}",
        live.seen
    );

    // And the history holds each event once.
    let evs = events(&d, &t0, &now(), &[]);
    let probe = actions_of(&evs, "probe");
    assert_eq!(probe[0], "create");
    assert_eq!(
        probe.iter().filter(|a| *a == "start").count(),
        probe.iter().filter(|a| a.starts_with("die")).count(),
        "{probe:?}"
    );
    assert_eq!(actions_of(&evs, "after"), wanted);
    let times: Vec<i64> = evs
        .iter()
        .map(|e| e["timeNano"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{evs:#?}");
}

#[test]
fn filters_by_type_event_container_image_and_label() {
    let d = Berthd::start(&[]);
    let image = busybox();
    let t0 = now();
    d.docker_ok(&["pull", "-q", &image]);
    d.docker_ok(&["tag", &image, "other:v1"]);
    d.docker_ok(&["run", "--name", "fa", "--label", "team=a", &image, "true"]);
    d.docker_ok(&[
        "run", "--name", "fb", "--label", "team=b", "other:v1", "true",
    ]);
    let t1 = now();

    let names = |evs: &[Value]| -> Vec<String> {
        evs.iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["Type"].as_str().unwrap(),
                    e["Action"].as_str().unwrap(),
                    e["Actor"]["Attributes"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let all = events(&d, &t0, &t1, &[]);
    assert_eq!(all.len(), 10, "{:#?}", names(&all));

    let images = events(&d, &t0, &t1, &["type=image"]);
    let repo = image.rsplit_once(':').unwrap().0;
    assert_eq!(
        names(&images),
        [format!("image pull {repo}"), "image tag other:v1".into()]
    );

    // The CLI turns durations into Unix seconds.
    assert_eq!(events(&d, "10m", &t1, &["type=image"]), images);

    let dies = events(&d, &t0, &t1, &["event=die"]);
    assert_eq!(names(&dies), ["container die fa", "container die fb"]);
    let two = events(&d, &t0, &t1, &["event=die", "event=create"]);
    assert_eq!(two.len(), 4, "{:#?}", names(&two));

    let fb = events(&d, &t0, &t1, &["container=fb"]);
    assert_eq!(
        names(&fb),
        [
            "container create fb",
            "container attach fb",
            "container start fb",
            "container die fb"
        ]
    );
    // By id prefix too.
    let id = fb[0]["id"].as_str().unwrap();
    assert_eq!(
        events(&d, &t0, &t1, &[&format!("container={}", &id[..12])]).len(),
        4
    );

    // An image filter takes the containers of that image and the image's own events (the tag
    // is named by the new name), with or without the tag.
    let other = events(&d, &t0, &t1, &["image=other:v1"]);
    assert_eq!(
        names(&other),
        [
            "image tag other:v1",
            "container create fb",
            "container attach fb",
            "container start fb",
            "container die fb"
        ]
    );
    let by_repo = events(&d, &t0, &t1, &["image=other"]);
    assert_eq!(names(&by_repo), names(&other));
    let pulled = events(&d, &t0, &t1, &["type=image", &format!("image={repo}")]);
    assert_eq!(names(&pulled), [format!("image pull {repo}")]);

    let team_a = events(&d, &t0, &t1, &["label=team=a"]);
    assert_eq!(team_a.len(), 4, "{:#?}", names(&team_a));
    assert!(team_a
        .iter()
        .all(|e| e["Actor"]["Attributes"]["name"] == "fa"));
    assert_eq!(events(&d, &t0, &t1, &["label=team"]).len(), 8);
    assert!(events(&d, &t0, &t1, &["label=team=c"]).is_empty());
    // Keys combine: a type and an event.
    let starts = events(
        &d,
        &t0,
        &t1,
        &["type=container", "event=start", "label=team=b"],
    );
    assert_eq!(names(&starts), ["container start fb"]);

    // The API answers a bad time as dockerd does, before streaming.
    let (code, v) = d.api("GET", "/events?since=yesterday&until=1", None);
    assert_eq!(code, 400, "{v}");
    let (code, v) = d.api("GET", "/events?since=20&until=10", None);
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["message"],
        "`since` time (20) cannot be after `until` time (10)"
    );
}

#[test]
fn image_pull_tag_untag_and_delete_events() {
    let d = Berthd::start(&[]);
    let image = busybox();
    let repo = image.rsplit_once(':').unwrap().0.to_string();
    let t0 = now();
    d.docker_ok(&["pull", "-q", &image]);
    let id = d
        .docker_ok(&["image", "inspect", "--format", "{{.Id}}", &image])
        .trim()
        .to_string();
    d.docker_ok(&["tag", &image, "mine:v1"]);
    d.docker_ok(&["rmi", "mine:v1"]);
    d.docker_ok(&["rmi", &image]);
    let t1 = now();

    let evs = events(&d, &t0, &t1, &["type=image"]);
    let got: Vec<(String, String, String)> = evs
        .iter()
        .map(|e| {
            (
                e["Action"].as_str().unwrap().to_string(),
                e["Actor"]["ID"].as_str().unwrap().to_string(),
                e["Actor"]["Attributes"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        got,
        [
            s("pull", &image, &repo),
            s("tag", &id, "mine:v1"),
            s("untag", &id, &id),
            s("untag", &id, &id),
            s("delete", &id, &id),
        ],
        "{evs:#?}"
    );
    assert!(evs
        .iter()
        .all(|e| e["status"] == e["Action"] && e["id"] == e["Actor"]["ID"]));
    assert!(evs.iter().all(|e| e.get("from").is_none()), "{evs:#?}");
}

#[test]
fn history_survives_a_berthd_restart() {
    let mut d = Berthd::start(&[]);
    let image = busybox();
    let t0 = now();
    d.docker_ok(&["pull", "-q", &image]);
    let out = d.docker(&["run", "--name", "keep", &image, "sh", "-c", "exit 2"]);
    assert_eq!(out.status.code(), Some(2));
    d.docker_ok(&["run", "-d", "--name", "runs-on", &image, "sleep", "1000"]);
    let t1 = now();
    let before = events(&d, &t0, &t1, &[]);
    assert_eq!(
        actions_of(&before, "keep"),
        ["create", "attach", "start", "die exitCode=2"]
    );

    d.restart();
    let after = events(&d, &t0, &t1, &[]);
    assert_eq!(after, before, "the same events, once each");

    // The container that ran on is followed by the new core: its end is reported once.
    d.docker_ok(&["kill", "runs-on"]);
    d.docker_ok(&["wait", "runs-on"]);
    let t2 = now();
    let later = events(&d, &t1, &t2, &[]);
    assert_eq!(
        actions_of(&later, "runs-on"),
        ["kill signal=9", "die exitCode=137"],
        "{later:#?}"
    );
    let whole = events(&d, &t0, &now(), &[]);
    assert_eq!(whole.len(), before.len() + later.len(), "{whole:#?}");

    // An `until` ahead: the kept events, what comes meanwhile, and the end at that time.
    // Room for the removal below on a busy machine.
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(6);
    let ahead = format!("{}.{:09}", t.as_secs(), t.subsec_nanos());
    let mut child = d
        .docker_cmd(&[
            "events",
            "--since",
            &t0,
            "--until",
            &ahead,
            "--format",
            "{{json .}}",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    d.docker_ok(&["rm", "keep"]);
    eventually(
        Duration::from_secs(60),
        "docker events to end at --until",
        || child.try_wait().unwrap().map(|_| ()),
    );
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
    let seen: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(&seen[..whole.len()], &whole[..]);
    assert_eq!(
        actions_of(&seen, "keep"),
        ["create", "attach", "start", "die exitCode=2", "destroy"],
        "{seen:#?}"
    );
}

#[test]
fn a_restart_policy_shows_die_then_start() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let t0 = now();
    d.docker_ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "again",
        &image,
        "sh",
        "-c",
        "sleep 1; exit 6",
    ]);
    let seen = eventually(Duration::from_secs(90), "a restart by policy", || {
        let got = actions_of(&events(&d, &t0, &now(), &[]), "again");
        (got.len() >= 5).then_some(got)
    });
    assert_eq!(
        seen[..5],
        [
            "create",
            "start",
            "die exitCode=6",
            "start",
            "die exitCode=6"
        ],
        "{seen:?}"
    );
    d.docker_ok(&["rm", "-f", "again"]);
    let all = actions_of(&events(&d, &t0, &now(), &[]), "again");
    assert_eq!(all.last().map(String::as_str), Some("destroy"), "{all:?}");
}

#[test]
fn an_oom_kill_shows_oom_before_die() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let t0 = now();
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
    let evs = events(&d, &t0, &now(), &[]);
    assert_eq!(
        actions_of(&evs, "hog"),
        ["create", "attach", "start", "oom", "die exitCode=137"],
        "{evs:#?}"
    );
}
