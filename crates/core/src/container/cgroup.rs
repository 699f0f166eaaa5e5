//! A running container's cgroup, found from its init's `/proc/<pid>/cgroup` and the mount table:
//! cgroup v2 (the VM, pure v2 hosts) or v1 controllers (runc on a hybrid host). Read for
//! `docker stats` and for the freezer state (`paused`). Parsers are pure and unit-tested.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use berth_proto::{BlkioEntry, NetworkCounters, StatsSample};

/// Where a process's cgroups are: per v1 controller, and the v2 (unified) directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupPaths {
    pub v1: HashMap<String, PathBuf>,
    pub unified: Option<PathBuf>,
}

/// `/proc/<pid>/cgroup`: (controllers, path) per line; v2's line has no controllers.
pub fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrl = it.next()?;
            let path = it.next()?;
            let ctrls = ctrl
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| c.strip_prefix("name=").unwrap_or(c).to_string())
                .collect();
            Some((ctrls, path.to_string()))
        })
        .collect()
}

/// A cgroup mount of `/proc/self/mountinfo`: the mount point, the root of the hierarchy it
/// shows, and its controllers (v1) or `None` (v2).
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    pub root: String,
    pub controllers: Option<Vec<String>>,
}

/// The cgroup mounts of a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, point) = (unescape(pre[3]), unescape(pre[4]));
        match post[0] {
            "cgroup2" => out.push(CgroupMount {
                mount_point: point.into(),
                root,
                controllers: None,
            }),
            "cgroup" => {
                let known = [
                    "cpu", "cpuacct", "memory", "pids", "blkio", "freezer", "cpuset", "devices",
                ];
                let ctrls: Vec<String> = post[2]
                    .split(',')
                    .filter_map(|o| {
                        if known.contains(&o) {
                            Some(o.to_string())
                        } else {
                            o.strip_prefix("name=").map(str::to_string)
                        }
                    })
                    .collect();
                out.push(CgroupMount {
                    mount_point: point.into(),
                    root,
                    controllers: Some(ctrls),
                });
            }
            _ => {}
        }
    }
    out
}

/// mountinfo escapes spaces and a few others as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn join_cgroup(mount: &CgroupMount, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(mount.root.as_str())
        .filter(|_| mount.root != "/")
        .unwrap_or(path);
    mount.mount_point.join(rel.trim_start_matches('/'))
}

/// Resolves the cgroup lines of a process against the mounts.
pub fn resolve(lines: &[(Vec<String>, String)], mounts: &[CgroupMount]) -> CgroupPaths {
    let mut paths = CgroupPaths::default();
    for (ctrls, path) in lines {
        if ctrls.is_empty() {
            if let Some(m) = mounts.iter().find(|m| m.controllers.is_none()) {
                paths.unified = Some(join_cgroup(m, path));
            }
            continue;
        }
        let Some(m) = mounts.iter().find(|m| {
            m.controllers
                .as_ref()
                .is_some_and(|mc| ctrls.iter().all(|c| mc.contains(c)))
        }) else {
            continue;
        };
        for c in ctrls {
            paths.v1.insert(c.clone(), join_cgroup(m, path));
        }
    }
    paths
}

impl CgroupPaths {
    /// The cgroups of a live process.
    pub fn of_pid(pid: u32) -> Option<CgroupPaths> {
        let lines = parse_proc_cgroup(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?);
        let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").ok()?);
        Some(resolve(&lines, &mounts))
    }

    /// The directory of a v1 controller, else the unified one (where v2 keeps every controller).
    fn dir(&self, v1: &str) -> Option<(&Path, bool)> {
        match self.v1.get(v1) {
            Some(p) => Some((p.as_path(), true)),
            None => self.unified.as_deref().map(|p| (p, false)),
        }
    }

    /// Whether the freezer has the cgroup frozen (the container is paused).
    pub fn frozen(&self) -> bool {
        match self.dir("freezer") {
            Some((p, true)) => read(p, "freezer.state").is_some_and(|s| s.trim() != "THAWED"),
            Some((p, false)) => read(p, "cgroup.freeze").is_some_and(|s| s.trim() == "1"),
            None => false,
        }
    }
}

impl CgroupPaths {
    /// How many times the kernel's OOM killer killed a process of the cgroup: v1
    /// `memory.oom_control`'s `oom_kill`, v2 `memory.events`' `oom_kill`. `None` when the
    /// cgroup (or the counter) cannot be read.
    pub fn oom_kills(&self) -> Option<u64> {
        let (dir, v1) = self.dir("memory")?;
        let file = if v1 {
            "memory.oom_control"
        } else {
            "memory.events"
        };
        parse_flat_keyed(&read(dir, file)?).get("oom_kill").copied()
    }
}

/// Whether the kernel limits memory + swap: v1 `memory.memsw.limit_in_bytes` on the memory
/// hierarchy; v2 whenever the memory controller is there (dockerd assumes the same: every
/// non-root v2 cgroup has `memory.swap.max`, but the root has none to look at).
pub fn swap_limit_supported() -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let mounts = parse_mountinfo(&text);
    if let Some(m) = mounts.iter().find(|m| {
        m.controllers
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c == "memory"))
    }) {
        return m.mount_point.join("memory.memsw.limit_in_bytes").exists();
    }
    let Some(unified) = mounts.iter().find(|m| m.controllers.is_none()) else {
        return false;
    };
    fs::read_to_string(unified.mount_point.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
}

fn read(dir: &Path, file: &str) -> Option<String> {
    fs::read_to_string(dir.join(file)).ok()
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file).and_then(|s| s.trim().parse().ok())
}

/// A flat `key value` file (memory.stat, cpu.stat, cpuacct.stat).
pub fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let k = w.next()?;
            let v = w.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// A limit file: a number, or "max" (unlimited: `None`).
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        None
    } else {
        t.parse().ok()
    }
}

/// v1 `blkio.throttle.io_service_bytes` / `_serviced`: "8:0 Read 4096" lines ("Total" ones and
/// the final total are left out, as dockerd's ops are read/write/sync/async/discard).
pub fn parse_blkio_v1(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (maj, min) = w.next()?.split_once(':')?;
            let op = w.next()?;
            let value = w.next()?.parse().ok()?;
            Some(BlkioEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                op: op.to_ascii_lowercase(),
                value,
            })
        })
        .collect()
}

/// v2 `io.stat`: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 …" → (bytes entries, ios entries), with
/// Docker's op names ("read", "write").
pub fn parse_io_stat(text: &str) -> (Vec<BlkioEntry>, Vec<BlkioEntry>) {
    let (mut bytes, mut ios) = (Vec::new(), Vec::new());
    for l in text.lines() {
        let mut w = l.split_whitespace();
        let Some((maj, min)) = w.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        for kv in w {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse() else { continue };
            let (list, op) = match k {
                "rbytes" => (&mut bytes, "read"),
                "wbytes" => (&mut bytes, "write"),
                "rios" => (&mut ios, "read"),
                "wios" => (&mut ios, "write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.into(),
                value,
            });
        }
    }
    (bytes, ios)
}

/// `/proc/net/dev` of the container's namespace, loopback left out.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, NetworkCounters> {
    let mut out = BTreeMap::new();
    for l in text.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let n: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if n.len() < 12 {
            continue;
        }
        out.insert(
            name.to_string(),
            NetworkCounters {
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            },
        );
    }
    out
}

/// The machine's CPU time in nanoseconds from `/proc/stat`'s first line (the sum of user, nice,
/// system, idle, iowait, irq and softirq, as dockerd) and the number of online CPUs.
pub fn parse_proc_stat(text: &str, ticks_per_second: u64) -> (u64, u32) {
    let mut total = 0;
    let mut cpus = 0;
    for l in text.lines() {
        let mut w = l.split_whitespace();
        match w.next() {
            Some("cpu") => {
                let ticks: u64 = w.take(7).filter_map(|x| x.parse::<u64>().ok()).sum();
                total = ticks * (1_000_000_000 / ticks_per_second.max(1));
            }
            Some(c) if c.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    (total, cpus)
}

pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn machine_memory() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// One sample of the process `pid`'s cgroup and network namespace.
pub fn sample(pid: u32, read_at: String) -> Option<StatsSample> {
    let cg = CgroupPaths::of_pid(pid)?;
    let mut s = StatsSample {
        running: true,
        read: read_at,
        ..Default::default()
    };
    let (system, cpus) = parse_proc_stat(
        &fs::read_to_string("/proc/stat").unwrap_or_default(),
        ticks_per_second(),
    );
    s.system_cpu = system;
    s.online_cpus = cpus;
    // CPU
    if let Some((dir, v1)) = cg.dir("cpuacct") {
        if v1 {
            s.cpu_total = read_u64(dir, "cpuacct.usage").unwrap_or(0);
            s.percpu = read(dir, "cpuacct.usage_percpu")
                .map(|t| {
                    t.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            let st = parse_flat_keyed(&read(dir, "cpuacct.stat").unwrap_or_default());
            let ns = 1_000_000_000 / ticks_per_second().max(1);
            s.cpu_user = st.get("user").copied().unwrap_or(0) * ns;
            s.cpu_kernel = st.get("system").copied().unwrap_or(0) * ns;
        } else {
            let st = parse_flat_keyed(&read(dir, "cpu.stat").unwrap_or_default());
            let us = |k: &str| st.get(k).copied().unwrap_or(0) * 1000;
            s.cpu_total = us("usage_usec");
            s.cpu_user = us("user_usec");
            s.cpu_kernel = us("system_usec");
            s.throttle_periods = st.get("nr_periods").copied().unwrap_or(0);
            s.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
            s.throttled_time = us("throttled_usec");
        }
    }
    if let Some((dir, true)) = cg.dir("cpu") {
        let st = parse_flat_keyed(&read(dir, "cpu.stat").unwrap_or_default());
        s.throttle_periods = st.get("nr_periods").copied().unwrap_or(0);
        s.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
        s.throttled_time = st.get("throttled_time").copied().unwrap_or(0);
    }
    // Memory
    let machine = machine_memory();
    if let Some((dir, v1)) = cg.dir("memory") {
        s.memory_stats = parse_flat_keyed(&read(dir, "memory.stat").unwrap_or_default());
        let (usage, max, limit) = if v1 {
            (
                read_u64(dir, "memory.usage_in_bytes"),
                read_u64(dir, "memory.max_usage_in_bytes"),
                read(dir, "memory.limit_in_bytes").and_then(|t| parse_limit(&t)),
            )
        } else {
            (
                read_u64(dir, "memory.current"),
                read_u64(dir, "memory.peak"),
                read(dir, "memory.max").and_then(|t| parse_limit(&t)),
            )
        };
        s.memory_usage = usage.unwrap_or(0);
        s.memory_max_usage = max.unwrap_or(0);
        s.memory_limit = match limit {
            Some(l) if machine == 0 || l < machine => l,
            _ => machine,
        };
    }
    // Pids
    if let Some((dir, _)) = cg.dir("pids") {
        s.pids_current = read_u64(dir, "pids.current").unwrap_or(0);
        s.pids_limit = read(dir, "pids.max")
            .and_then(|t| parse_limit(&t))
            .unwrap_or(0);
    }
    // Block i/o
    if let Some((dir, v1)) = cg.dir("blkio") {
        if v1 {
            s.blkio =
                parse_blkio_v1(&read(dir, "blkio.throttle.io_service_bytes").unwrap_or_default());
        } else {
            s.blkio = parse_io_stat(&read(dir, "io.stat").unwrap_or_default()).0;
        }
    }
    s.networks =
        parse_net_dev(&fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default());
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "12:freezer:/berth/abc\n5:cpu,cpuacct:/berth/abc\n4:memory:/berth/abc\n3:pids:/berth/abc\n1:name=systemd:/user.slice\n0::/user.slice\n";
    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
35 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
36 25 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
37 25 0:33 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
38 25 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
22 1 8:1 / / rw - ext4 /dev/sda1 rw
";

    #[test]
    fn hybrid_hosts_resolve_v1_controllers() {
        let lines = parse_proc_cgroup(HYBRID_CGROUP);
        assert_eq!(lines[1].0, vec!["cpu".to_string(), "cpuacct".to_string()]);
        assert_eq!(lines[4].0, vec!["systemd".to_string()]);
        let mounts = parse_mountinfo(HYBRID_MOUNTS);
        assert_eq!(mounts.len(), 6);
        let p = resolve(&lines, &mounts);
        assert_eq!(p.v1["memory"], Path::new("/sys/fs/cgroup/memory/berth/abc"));
        assert_eq!(
            p.v1["cpuacct"],
            Path::new("/sys/fs/cgroup/cpu,cpuacct/berth/abc")
        );
        assert_eq!(
            p.v1["freezer"],
            Path::new("/sys/fs/cgroup/freezer/berth/abc")
        );
        assert_eq!(
            p.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified/user.slice"))
        );
        assert_eq!(
            p.dir("memory"),
            Some((Path::new("/sys/fs/cgroup/memory/berth/abc"), true))
        );
        assert!(!p.v1.contains_key("blkio"));
    }

    #[test]
    fn pure_v2_resolves_the_unified_dir() {
        let lines = parse_proc_cgroup("0::/berth/abc\n");
        let mounts = parse_mountinfo(
            "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n26 1 0:23 /sub /mnt/c\\040g rw - cgroup2 none rw\n",
        );
        assert_eq!(mounts[1].mount_point, Path::new("/mnt/c g"));
        let p = resolve(&lines, &mounts);
        assert!(p.v1.is_empty());
        assert_eq!(
            p.dir("memory"),
            Some((Path::new("/sys/fs/cgroup/berth/abc"), false))
        );
    }

    #[test]
    fn files_parse() {
        let m = parse_flat_keyed("cache 4096\ntotal_inactive_file 12\nbad\n");
        assert_eq!(m["cache"], 4096);
        assert_eq!(m["total_inactive_file"], 12);
        assert_eq!(m.len(), 2);
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("67108864\n"), Some(67108864));
        let b = parse_blkio_v1("8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n");
        assert_eq!(b.len(), 3);
        assert_eq!(
            (b[0].major, b[0].minor, b[0].op.as_str(), b[0].value),
            (8, 0, "read", 4096)
        );
        let (bytes, ios) =
            parse_io_stat("254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(bytes.len(), 2);
        assert_eq!((bytes[1].op.as_str(), bytes[1].value), ("write", 200));
        assert_eq!((ios[0].op.as_str(), ios[0].value), ("read", 1));
    }

    #[test]
    fn net_dev_and_proc_stat_parse() {
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    1500      10    1    2    0     0          0         0      700       7    3    4    0     0       0          0\n";
        let n = parse_net_dev(dev);
        assert_eq!(n.len(), 1);
        let e = &n["eth0"];
        assert_eq!(
            (e.rx_bytes, e.rx_packets, e.rx_errors, e.rx_dropped),
            (1500, 10, 1, 2)
        );
        assert_eq!(
            (e.tx_bytes, e.tx_packets, e.tx_errors, e.tx_dropped),
            (700, 7, 3, 4)
        );
        let (total, cpus) = parse_proc_stat(
            "cpu  10 0 5 80 5 0 0 7 0 0\ncpu0 5 0 2 40 3 0 0 0 0 0\ncpu1 5 0 3 40 2 0 0 0 0 0\nintr 1\n",
            100,
        );
        assert_eq!(total, 100 * 10_000_000);
        assert_eq!(cpus, 2);
    }
}
