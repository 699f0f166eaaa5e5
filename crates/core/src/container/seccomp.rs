//! The seccomp filter of a container: Berth's default profile, or none (`--privileged`,
//! `--security-opt seccomp=unconfined`), or the user's (`seccomp=<profile JSON>`, which the
//! docker CLI sends as the file's contents), turned into the OCI runtime's `linux.seccomp`.
//!
//! The default profile has Docker's intent: what ordinary programs need is allowed; what
//! reaches outside the container's share of the kernel is refused with EPERM — kernel keyrings,
//! kernel modules, kexec, new namespaces and mounts, BPF, perf, clock changes, io_uring,
//! userfaultfd and obsolete calls — unless the container holds the capability the call is
//! about (CAP_SYS_ADMIN gives back the namespace and mount calls, CAP_SYS_TIME the clocks…).
//! `clone` is allowed only without namespace flags (without CAP_SYS_ADMIN); `clone3`, whose
//! flags a filter cannot read, answers ENOSYS so that C libraries fall back to `clone`.
//! Names a kernel or architecture does not have are skipped by the runtime.

use oci_spec::runtime::LinuxSeccomp;
use serde_json::{json, Value};

/// Files, descriptors, paths, metadata and extended attributes.
#[rustfmt::skip]
const FILES: &[&str] = &[
    "read", "write", "open", "openat", "openat2", "close", "close_range", "creat", "lseek",
    "_llseek", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2",
    "pwritev2", "dup", "dup2", "dup3", "fcntl", "fcntl64", "flock", "fsync", "fdatasync", "sync",
    "syncfs", "sync_file_range", "sync_file_range2", "arm_sync_file_range", "truncate",
    "truncate64", "ftruncate", "ftruncate64", "fallocate", "sendfile", "sendfile64", "splice",
    "tee", "vmsplice", "copy_file_range", "ioctl", "readahead", "fadvise64", "fadvise64_64",
    "arm_fadvise64_64", "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "newfstatat",
    "fstatat64", "statx", "statfs", "statfs64", "fstatfs", "fstatfs64", "access", "faccessat",
    "faccessat2", "readlink", "readlinkat", "getcwd", "chdir", "fchdir", "chroot", "mkdir",
    "mkdirat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat",
    "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "chown32",
    "fchown", "fchown32", "fchownat", "lchown", "lchown32", "utime", "utimes", "utimensat",
    "utimensat_time64", "futimesat", "mknod", "mknodat", "umask", "getdents", "getdents64",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "fanotify_mark",
    "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
];

/// Memory.
#[rustfmt::skip]
const MEMORY: &[&str] = &[
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "pkey_mprotect", "pkey_alloc",
    "pkey_free", "madvise", "process_madvise", "mlock", "mlock2", "munlock", "mlockall",
    "munlockall", "mincore", "msync", "remap_file_pages", "membarrier", "memfd_create",
    "get_mempolicy",
];

/// Processes, threads, identity, scheduling and limits.
#[rustfmt::skip]
const PROCESSES: &[&str] = &[
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "waitpid",
    "kill", "tkill", "tgkill", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp",
    "getsid", "setsid", "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getegid", "getegid32", "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32",
    "setregid", "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32", "getresuid",
    "getresuid32", "getresgid", "getresgid32", "setfsuid", "setfsuid32", "setfsgid", "setfsgid32",
    "getgroups", "getgroups32", "setgroups", "setgroups32", "capget", "capset", "prctl",
    "arch_prctl", "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "getpriority",
    "setpriority", "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
    "sched_setparam", "sched_getscheduler", "sched_setscheduler", "sched_get_priority_max",
    "sched_get_priority_min", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_getattr", "sched_setattr", "getrlimit", "setrlimit", "prlimit64", "ugetrlimit",
    "getrusage", "times", "uname", "sysinfo", "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "ioprio_get", "ioprio_set", "seccomp",
    "restart_syscall", "futex", "futex_time64", "futex_waitv", "set_thread_area",
    "get_thread_area", "set_tls", "cacheflush", "breakpoint", "getcpu", "getrandom", "sethostname",
    "setdomainname", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
];

/// Signals, time, waiting for events.
#[rustfmt::skip]
const SIGNALS_TIME_POLLING: &[&str] = &[
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigreturn", "rt_sigpending",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_sigqueueinfo",
    "rt_tgsigqueueinfo", "sigaltstack", "signalfd", "signalfd4", "pause", "alarm", "sigaction",
    "sigprocmask", "sigpending", "sigsuspend", "signal", "time", "gettimeofday", "clock_gettime",
    "clock_gettime64", "clock_getres", "clock_getres_time64", "clock_nanosleep",
    "clock_nanosleep_time64", "nanosleep", "getitimer", "setitimer", "timer_create",
    "timer_settime", "timer_settime64", "timer_gettime", "timer_gettime64", "timer_getoverrun",
    "timer_delete", "timerfd_create", "timerfd_settime", "timerfd_settime64", "timerfd_gettime",
    "timerfd_gettime64", "select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll",
    "ppoll_time64", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_wait",
    "epoll_wait_old", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
];

/// Sockets, pipes, System V and POSIX IPC, asynchronous I/O.
#[rustfmt::skip]
const IPC: &[&str] = &[
    "socket", "socketpair", "bind", "connect", "listen", "accept", "accept4", "getsockname",
    "getpeername", "sendto", "recvfrom", "send", "recv", "sendmsg", "recvmsg", "sendmmsg",
    "recvmmsg", "recvmmsg_time64", "shutdown", "setsockopt", "getsockopt", "socketcall", "pipe",
    "pipe2", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "semctl", "shmget", "shmat", "shmdt", "shmctl", "ipc", "mq_open",
    "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_notify", "mq_getsetattr", "io_setup", "io_destroy", "io_submit",
    "io_cancel", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
];

/// Calls given back by a capability the container holds (the kernel still checks it).
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "SYS_ADMIN",
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "clone3",
            "bpf",
            "fanotify_init",
            "lookup_dcookie",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "name_to_handle_at",
            "swapon",
            "swapoff",
        ],
    ),
    (
        "SYS_MODULE",
        &["init_module", "finit_module", "delete_module"],
    ),
    ("SYS_BOOT", &["reboot"]),
    (
        "SYS_TIME",
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "clock_adjtime",
            "clock_adjtime64",
            "adjtimex",
        ],
    ),
    ("SYS_PACCT", &["acct"]),
    ("SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "SYS_NICE",
        &[
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
            "move_pages",
        ],
    ),
    ("SYSLOG", &["syslog"]),
    ("SYS_TTY_CONFIG", &["vhangup"]),
    ("DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("SYS_PTRACE", &["kcmp"]),
    ("BPF", &["bpf"]),
    ("PERFMON", &["perf_event_open"]),
];

/// The namespace flags of `clone`: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET.
const CLONE_NAMESPACES: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// `personality` values ordinary programs ask for: Linux, with ADDR_NO_RANDOMIZE, UNAME26,
/// both, and the query (0xffffffff).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The seccomp architectures of this build's target: the native one and the 32-bit one the
/// same kernel runs. Not x32 (which Docker's profile lists): x32-ABI programs are all but
/// unknown in images, and listing it makes the runtime's libseccomp build a filter for a third
/// ABI on every start (~10 ms of a ~45 ms crun create + start here, far more under TCG); its
/// system calls get libseccomp's bad-architecture action (the process is killed) instead.
fn architectures() -> &'static [&'static str] {
    if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    }
}

fn allow(names: &[&str]) -> Value {
    json!({ "names": names, "action": "SCMP_ACT_ALLOW" })
}

/// Berth's default profile for a container holding `caps` (names without "CAP_").
pub fn default_profile(caps: &[String]) -> LinuxSeccomp {
    let has = |c: &str| caps.iter().any(|have| have == c);
    let mut rules = vec![
        allow(FILES),
        allow(MEMORY),
        allow(PROCESSES),
        allow(SIGNALS_TIME_POLLING),
        allow(IPC),
    ];
    for &(cap, names) in BY_CAPABILITY {
        if has(cap) {
            rules.push(allow(names));
        }
    }
    if has("SYS_ADMIN") {
        rules.push(allow(&["clone"]));
    } else {
        rules.push(json!({
            "names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": CLONE_NAMESPACES, "valueTwo": 0,
                       "op": "SCMP_CMP_MASKED_EQ" }],
        }));
        rules.push(json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS }));
    }
    for &p in PERSONALITIES {
        rules.push(json!({
            "names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": p, "op": "SCMP_CMP_EQ" }],
        }));
    }
    let profile = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures(),
        "syscalls": rules,
    });
    serde_json::from_value(profile).expect("the default profile is a valid OCI seccomp")
}

/// A profile in Docker's format (what `--security-opt seccomp=FILE` sends) for a container
/// holding `caps`: `architectures` or the `archMap` entry of this machine, and the rules whose
/// `includes`/`excludes` (capabilities, architectures) fit this container.
pub fn from_docker_profile(text: &str, caps: &[String]) -> Result<LinuxSeccomp, String> {
    let p: Value =
        serde_json::from_str(text).map_err(|e| format!("decoding seccomp profile failed: {e}"))?;
    let bad = |what: &str| format!("invalid seccomp profile: {what}");
    let default_action = p["defaultAction"]
        .as_str()
        .ok_or_else(|| bad("no defaultAction"))?;
    let native = architectures()[0];
    let mut arches: Vec<String> = Vec::new();
    if let Some(map) = p["archMap"].as_array() {
        for entry in map.iter().filter(|e| e["architecture"] == native) {
            arches.push(native.to_string());
            for sub in entry["subArchitectures"].as_array().into_iter().flatten() {
                arches.extend(sub.as_str().map(str::to_string));
            }
        }
    } else if let Some(list) = p["architectures"].as_array() {
        arches.extend(list.iter().filter_map(|a| a.as_str().map(str::to_string)));
    }
    let arch_name = native.trim_start_matches("SCMP_ARCH_").to_ascii_lowercase();
    let fits = |cond: &Value, want: bool| -> bool {
        // `includes`: every listed condition holds; `excludes`: none does.
        let caps_listed: Vec<String> = cond["caps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .map(|c| c.trim_start_matches("CAP_").to_string())
            .collect();
        let arches_listed: Vec<&str> = cond["arches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let cap_hit = caps_listed.iter().any(|c| caps.contains(c));
        let arch_hit = arches_listed
            .iter()
            .any(|a| *a == arch_name || *a == native);
        if want {
            (caps_listed.is_empty() || caps_listed.iter().all(|c| caps.contains(c)))
                && (arches_listed.is_empty() || arch_hit)
        } else {
            !cap_hit && !arch_hit
        }
    };
    let mut rules = Vec::new();
    for rule in p["syscalls"].as_array().into_iter().flatten() {
        if !fits(&rule["includes"], true) || !fits(&rule["excludes"], false) {
            continue;
        }
        let mut names: Vec<Value> = rule["names"].as_array().cloned().unwrap_or_default();
        if let Some(n) = rule.get("name").filter(|n| n.is_string()) {
            names.push(n.clone());
        }
        if names.is_empty() {
            return Err(bad("a rule without names"));
        }
        let mut r = json!({ "names": names, "action": rule["action"] });
        for key in ["errnoRet", "args"] {
            if let Some(v) = rule.get(key).filter(|v| !v.is_null()) {
                r[key] = v.clone();
            }
        }
        rules.push(r);
    }
    let mut out = json!({ "defaultAction": default_action, "syscalls": rules });
    if !arches.is_empty() {
        out["architectures"] = json!(arches);
    }
    if let Some(e) = p.get("defaultErrnoRet").filter(|v| !v.is_null()) {
        out["defaultErrnoRet"] = e.clone();
    }
    serde_json::from_value(out).map_err(|e| bad(&e.to_string()))
}

/// What the container gets from its security options: `None` for no filter.
pub fn for_container(
    privileged: bool,
    security_opt: &[String],
    caps: &[String],
) -> Result<Option<LinuxSeccomp>, String> {
    let given = security_opt.iter().find_map(|o| {
        o.strip_prefix("seccomp=")
            .or_else(|| o.strip_prefix("seccomp:"))
    });
    match given {
        Some("unconfined") => Ok(None),
        Some(profile) => from_docker_profile(profile, caps).map(Some),
        // As dockerd: a privileged container gets no filter unless one is asked for.
        None if privileged => Ok(None),
        None => Ok(Some(default_profile(caps))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    fn rules_for(p: &LinuxSeccomp, name: &str) -> Vec<Value> {
        serde_json::to_value(p).unwrap()["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    #[test]
    fn the_default_refuses_namespaces_and_keyrings_unless_sys_admin() {
        let p = default_profile(&caps(&["CHOWN", "NET_BIND_SERVICE"]));
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        for refused in [
            "unshare",
            "setns",
            "mount",
            "keyctl",
            "add_key",
            "bpf",
            "io_uring_setup",
        ] {
            assert!(rules_for(&p, refused).is_empty(), "{refused} is allowed");
        }
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(rules_for(&p, "clone3")[0]["errnoRet"], 38);
        assert_eq!(rules_for(&p, "personality").len(), PERSONALITIES.len());

        let admin = default_profile(&caps(&["SYS_ADMIN"]));
        assert!(!rules_for(&admin, "unshare").is_empty());
        let clone = rules_for(&admin, "clone");
        assert!(clone[0].get("args").is_none(), "{clone:?}");
        assert_eq!(rules_for(&admin, "clone3")[0]["action"], "SCMP_ACT_ALLOW");
    }

    #[test]
    fn no_name_is_listed_twice_in_the_base_lists() {
        let mut all: Vec<&str> = [FILES, MEMORY, PROCESSES, SIGNALS_TIME_POLLING, IPC].concat();
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(before, all.len());
    }

    #[test]
    fn options_pick_the_filter() {
        let c = caps(&["CHOWN"]);
        assert!(for_container(false, &[], &c).unwrap().is_some());
        assert!(for_container(true, &[], &c).unwrap().is_none());
        assert!(for_container(false, &caps(&["seccomp=unconfined"]), &c)
            .unwrap()
            .is_none());
        let err = for_container(false, &caps(&["seccomp={nope"]), &c).unwrap_err();
        assert!(err.contains("decoding seccomp profile"), "{err}");
    }

    #[test]
    fn docker_profiles_keep_the_rules_that_fit() {
        let native = architectures()[0];
        let profile = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [{ "architecture": native, "subArchitectures": ["SCMP_ARCH_X86"] }],
            "syscalls": [
                { "names": ["read", "write"], "action": "SCMP_ACT_ALLOW" },
                { "names": ["mount"], "action": "SCMP_ACT_ALLOW",
                  "includes": { "caps": ["CAP_SYS_ADMIN"] } },
                { "names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                  "excludes": { "caps": ["CAP_FOWNER"] } },
            ],
        })
        .to_string();
        let p = from_docker_profile(&profile, &caps(&["CHOWN"])).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["architectures"][0], native);
        assert!(rules_for(&p, "mount").is_empty());
        assert_eq!(rules_for(&p, "chmod")[0]["errnoRet"], 13);
        let p = from_docker_profile(&profile, &caps(&["SYS_ADMIN", "FOWNER"])).unwrap();
        assert_eq!(rules_for(&p, "mount").len(), 1);
        assert!(rules_for(&p, "chmod").is_empty());
        assert!(from_docker_profile("{}", &[])
            .unwrap_err()
            .contains("defaultAction"));
    }
}
