//! Container networking and published ports with the real `docker` CLI against a real berthd
//! (direct backend: the bridge lives in a network namespace of the core's own) and the
//! project's fixture registries. Runs as root.

mod harness;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use harness::{fixtures, Berthd};
use serde_json::Value;

const PAGE: &str = "hello from a berth container";

fn image() -> String {
    format!("{}/berth/busybox:latest", fixtures()["BERTH_FIX_OPEN"])
}

/// busybox httpd serving `PAGE` as /index.html on port 8000.
fn httpd_cmd() -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "mkdir -p /www && echo '{PAGE}' > /www/index.html && exec httpd -f -p 8000 -h /www"
        ),
    ]
}

/// berthd, with every container force-removed before it stops, even when a test fails.
struct Net(Berthd);

impl Net {
    fn start() -> Net {
        Net::start_with(&[])
    }

    fn start_with(args: &[&str]) -> Net {
        let d = Berthd::start(args);
        d.docker_ok(&["pull", &image()]);
        Net(d)
    }

    fn run_d(&self, opts: &[&str], cmd: &[String]) -> String {
        let image = image();
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(opts);
        args.push(&image);
        args.extend(cmd.iter().map(String::as_str));
        self.0.docker_ok(&args).trim().to_string()
    }

    fn inspect(&self, c: &str) -> Value {
        let v: Value = serde_json::from_str(&self.0.docker_ok(&["inspect", c])).unwrap();
        v[0].clone()
    }

    /// Best effort: also called from `drop`, when berthd may be gone.
    fn rm_all(&self) {
        let out = self.0.docker(&["ps", "-aq"]);
        let ids = String::from_utf8_lossy(&out.stdout);
        for id in ids.split_whitespace() {
            self.0.docker(&["rm", "-f", id]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.rm_all();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET / on 127.0.0.1:port; the whole answer.
fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Retries until the page comes (the server in the container may not listen yet).
fn get_page(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_get(port) {
            Ok(body) if body.contains(PAGE) => return body,
            r => assert!(
                Instant::now() < deadline,
                "no page on 127.0.0.1:{port}: {r:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until nothing accepts on 127.0.0.1:port.
fn wait_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "127.0.0.1:{port} still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn containers_on_the_bridge_reach_each_other_and_inspect_shows_their_addresses() {
    let n = Net::start();
    let a = n.run_d(&["--name", "web"], &httpd_cmd());
    let b = n.run_d(&["--name", "idle"], &["sleep".into(), "300".into()]);
    let (va, vb) = (n.inspect(&a), n.inspect(&b));
    let ns = &va["NetworkSettings"];
    let ip_a = ns["IPAddress"].as_str().unwrap().to_string();
    let ip_b = vb["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip_a.starts_with("172.30."), "{ns}");
    assert!(ip_b.starts_with("172.30.") && ip_b != ip_a, "{ip_a} {ip_b}");
    assert_eq!(ns["Gateway"], "172.30.0.1");
    assert_eq!(ns["IPPrefixLen"], 16);
    let bridge = &ns["Networks"]["bridge"];
    assert_eq!(bridge["IPAddress"], ip_a.as_str());
    assert_eq!(bridge["Gateway"], "172.30.0.1");
    assert_eq!(bridge["IPPrefixLen"], 16);
    let octets: Vec<u8> = ip_a.split('.').map(|o| o.parse().unwrap()).collect();
    let mac = format!(
        "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
        octets[0], octets[1], octets[2], octets[3]
    );
    assert_eq!(ns["MacAddress"], mac.as_str());
    assert_eq!(bridge["MacAddress"], mac.as_str());
    let ip_fmt = n.0.docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        "web",
    ]);
    assert_eq!(ip_fmt.trim(), ip_a);

    // A third container fetches the page from the first by address, and pings the second.
    let image = image();
    // (busybox-static's wget crashes in static glibc's resolver; nc does not resolve.)
    let fetch = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip_a} 8000");
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !got.contains(PAGE) {
        assert!(Instant::now() < deadline, "no page from {ip_a}:8000: {got}");
        let o = n.0.docker(&["run", "--rm", &image, "sh", "-c", &fetch]);
        got = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    }
    // (The image links only some applets; busybox sh runs the others itself.)
    let ping = format!("ping -c 1 -W 5 {ip_b}");
    n.0.docker_ok(&["run", "--rm", &image, "sh", "-c", &ping]);

    // Inside: eth0 with the address, the default route via the bridge, its own hosts line.
    let out = n.0.docker_ok(&[
        "run",
        "--rm",
        "--hostname",
        "inside",
        &image,
        "sh",
        "-c",
        "ip -4 addr show eth0; ip route; cat /etc/hosts; ls /sys/class/net",
    ]);
    assert!(out.contains("inet 172.30."), "{out}");
    assert!(out.contains("default via 172.30.0.1 dev eth0"), "{out}");
    let hosts_line = out
        .lines()
        .find(|l| l.ends_with("\tinside"))
        .unwrap_or_else(|| panic!("no hosts line for the container: {out}"));
    assert!(hosts_line.starts_with("172.30."), "{hosts_line}");
    let links: Vec<&str> = out.lines().filter(|l| *l == "eth0" || *l == "lo").collect();
    assert_eq!(links, ["eth0", "lo"], "{out}");

    // Stopped: no address any more, and it is free for the next container.
    n.0.docker_ok(&["stop", "-t", "1", "web"]);
    let v = n.inspect("web");
    assert_eq!(v["NetworkSettings"]["IPAddress"], "");
    assert_eq!(v["NetworkSettings"]["Networks"]["bridge"]["IPAddress"], "");
    let c = n.run_d(&[], &["sleep".into(), "300".into()]);
    let ip_c = n.inspect(&c)["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ip_c, ip_a, "the lowest free address is handed out again");
    // Started again, the first one gets an address nobody has.
    n.0.docker_ok(&["start", "web"]);
    let ip_a2 = n.inspect("web")["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip_a2 != ip_b && ip_a2 != ip_c, "{ip_a2}");
}

#[test]
fn network_none_has_only_loopback_and_host_mode_has_no_namespace() {
    let n = Net::start();
    let image = image();
    let out = n.0.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(out.trim(), "lo");
    let c = n.run_d(&["--network", "none"], &["sleep".into(), "300".into()]);
    let v = n.inspect(&c);
    assert_eq!(v["HostConfig"]["NetworkMode"], "none");
    assert_eq!(v["NetworkSettings"]["IPAddress"], "");
    assert!(
        v["NetworkSettings"]["Networks"].get("none").is_some(),
        "{v}"
    );

    // Host networking: the interfaces berthd's host has (no eth0 of our making, no namespace).
    let mut host_links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host_links.sort();
    let out = n.0.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        &image,
        "ls",
        "/sys/class/net",
    ]);
    let mut got: Vec<&str> = out.split_whitespace().collect();
    got.sort();
    if harness::test_backend() == "direct" {
        assert_eq!(got, host_links);
    } else {
        // In the VM, "host" is the guest: its own eth0 (QEMU's user network) and lo.
        assert!(got.contains(&"eth0") && got.contains(&"lo"), "{got:?}");
    }
    // Publishing with host networking is discarded with dockerd's warning.
    let o = n.0.docker(&[
        "create",
        "--network",
        "host",
        "-p",
        "127.0.0.1:1:80",
        &image,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Published ports are discarded when using host network mode"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn published_port_serves_the_host_until_the_container_stops() {
    let mut n = Net::start();
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8000");
    let id = n.run_d(&["--name", "web", "-p", &publish], &httpd_cmd());
    let page = get_page(port);
    assert!(page.starts_with("HTTP/1."), "{page}");

    // As dockerd shows it.
    let out = n.0.docker_ok(&["port", "web"]);
    assert_eq!(out.trim(), format!("8000/tcp -> 127.0.0.1:{port}"));
    let out = n.0.docker_ok(&["ps", "--format", "{{.Ports}}"]);
    assert_eq!(out.trim(), format!("127.0.0.1:{port}->8000/tcp"));
    let v = n.inspect(&id);
    let want =
        serde_json::json!({"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": port.to_string()}]});
    assert_eq!(v["HostConfig"]["PortBindings"], want);
    assert_eq!(v["NetworkSettings"]["Ports"], want);
    assert_eq!(
        v["Config"]["ExposedPorts"],
        serde_json::json!({"8000/tcp": {}})
    );

    // The port is taken: by this berthd's container, then by another program on the host.
    let o = n.0.docker(&[
        "run",
        "-d",
        "--name",
        "clash",
        "-p",
        &publish,
        &image(),
        "sleep",
        "300",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!(
            "Bind for 127.0.0.1:{port} failed: port is already allocated"
        )),
        "{}",
        stderr(&o)
    );
    let v = n.inspect("clash");
    assert_eq!(v["State"]["Running"], false);
    assert_eq!(v["State"]["Status"], "created");
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap().port();
    let o = n.0.docker(&[
        "run",
        "-d",
        "-p",
        &format!("{held}:8000"),
        &image(),
        "sleep",
        "300",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("127.0.0.1:{held}"))
            && stderr(&o).contains("address already in use"),
        "{}",
        stderr(&o)
    );
    drop(holder);
    // UDP is refused clearly at create.
    let o = n.0.docker(&["create", "-p", "5353:53/udp", &image()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("udp"), "{}", stderr(&o));

    // berthd (and the core) restart: the container still runs with its address, its port is
    // served again, and its address is not handed to a new container. (With a VM, berthd
    // stopping powers the guest off, containers with it: not restarted there.)
    let ip = n.inspect("web")["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip.starts_with("172.30."), "{ip}");
    if harness::test_backend() == "direct" {
        n.0.restart();
    }
    get_page(port);
    assert_eq!(
        n.inspect("web")["NetworkSettings"]["IPAddress"],
        ip.as_str()
    );
    let other = n.run_d(&[], &["sleep".into(), "300".into()]);
    let other_ip = n.inspect(&other)["NetworkSettings"]["IPAddress"].clone();
    assert!(
        other_ip
            .as_str()
            .is_some_and(|o| o.starts_with("172.30.") && o != ip),
        "{other_ip}"
    );
    let out = n.0.docker_ok(&["port", "web", "8000"]);
    assert_eq!(out.trim(), format!("127.0.0.1:{port}"));

    // Stopped: the listener goes, and the port can be bound by anyone.
    n.0.docker_ok(&["stop", "-t", "1", "web"]);
    wait_closed(port);
    let v = n.inspect("web");
    assert_eq!(v["NetworkSettings"]["Ports"], serde_json::json!({}));
    let out =
        n.0.docker_ok(&["ps", "-a", "--filter", "name=web", "--format", "{{.Ports}}"]);
    assert_eq!(out.trim(), "");
    TcpListener::bind(("127.0.0.1", port)).unwrap();

    // A container that exits by itself closes its port too.
    let port2 = free_port();
    n.run_d(
        &["-p", &format!("{port2}:8000")],
        &[
            "sh".into(),
            "-c".into(),
            "httpd -p 8000 -h /; sleep 1".into(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port2)).is_err() {
        assert!(Instant::now() < deadline, "port {port2} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_closed(port2);
}

#[test]
fn publish_all_gives_exposed_ports_free_host_ports() {
    let n = Net::start();
    let id = n.run_d(
        &["-P", "--expose", "8000", "--expose", "9000"],
        &httpd_cmd(),
    );
    let out = n.0.docker_ok(&["port", &id]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{out}");
    let port_of = |l: &str, key: &str| -> u16 {
        let rest = l
            .strip_prefix(&format!("{key} -> 127.0.0.1:"))
            .unwrap_or_else(|| panic!("{l}"));
        rest.parse().unwrap()
    };
    let p8000 = port_of(lines[0], "8000/tcp");
    let p9000 = port_of(lines[1], "9000/tcp");
    assert!(p8000 != 0 && p9000 != 0 && p8000 != p9000);
    get_page(p8000);
    let v = n.inspect(&id);
    assert_eq!(v["HostConfig"]["PublishAllPorts"], true);
    assert_eq!(v["HostConfig"]["PortBindings"], serde_json::json!({}));
    // Nothing listens on 9000 in the container: the connection is accepted, then closed.
    let mut s = TcpStream::connect(("127.0.0.1", p9000)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
}

#[test]
fn nothing_is_left_behind_after_containers_and_berthd_stop() {
    if harness::skip_unless_direct("counts network namespace mounts on the host") {
        return;
    }
    let mut n = Net::start();
    let port = free_port();
    n.run_d(&["-p", &format!("127.0.0.1:{port}:8000")], &httpd_cmd());
    n.run_d(&[], &["sleep".into(), "300".into()]);
    get_page(port);
    let data = n.0.data_root.display().to_string();
    let mounts = || std::fs::read_to_string("/proc/self/mounts").unwrap();
    let netns_mounts = |m: &str| {
        m.lines()
            .filter(|l| l.contains(&data) && l.contains("nsfs"))
            .count()
    };
    // The core's namespace and one per container.
    assert_eq!(netns_mounts(&mounts()), 3, "{}", mounts());
    n.rm_all();
    wait_closed(port);
    assert_eq!(netns_mounts(&mounts()), 1, "{}", mounts());
    n.0.shut_down();
    let left: Vec<String> = mounts()
        .lines()
        .filter(|l| l.contains(&data))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The VM: the bridge is the guest's own, published ports travel over vsock, and containers
/// reach the outside through the guest's NAT (here QEMU's 10.0.2.2, the host's loopback).
#[test]
fn through_the_qemu_backend_ports_and_outbound_nat() {
    let image_dir = harness::guest_image().display().to_string();
    let n = Net::start_with(&["--backend", "qemu", "--vm-image", &image_dir]);
    let port = free_port();
    let id = n.run_d(&["-p", &format!("127.0.0.1:{port}:8000")], &httpd_cmd());
    get_page(port);
    let v = n.inspect(&id);
    assert!(
        v["NetworkSettings"]["IPAddress"]
            .as_str()
            .unwrap()
            .starts_with("172.30."),
        "{}",
        v["NetworkSettings"]
    );

    // A server on the host's loopback, reached from a container as 10.0.2.2.
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = outside.accept().unwrap();
        s.write_all(b"hello from outside\n").unwrap();
    });
    let fetch = format!("sleep 5 | nc -w 10 10.0.2.2 {outside_port}");
    let out =
        n.0.docker_ok(&["run", "--rm", &image(), "sh", "-c", &fetch]);
    assert_eq!(out, "hello from outside\n");
    server.join().unwrap();

    n.0.docker_ok(&["stop", "-t", "1", &id]);
    wait_closed(port);
}
