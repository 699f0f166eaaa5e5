//! `docker top`: a container's processes (pids from the runtime's `ps`) with the columns of
//! `ps -ef` read from `/proc` (the guest has no `ps`); other `ps` arguments run the machine's
//! `ps` and keep the container's rows, as dockerd does.

use std::collections::HashMap;
use std::fs;
use std::process::Command;

use berth_proto::ContainerTop;

/// The fields of `/proc/<pid>/stat` that `ps -ef` shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub ppid: u32,
    pub tty_nr: u64,
    /// Clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Clock ticks after boot.
    pub starttime: u64,
}

/// Parses `/proc/<pid>/stat` (the command name may hold spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state).
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        comm,
        ppid: field(4)? as u32,
        tty_nr: field(7)?,
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// The TTY column: `pts/N`, `ttyN`, or `?`.
pub fn tty_name(tty_nr: u64) -> String {
    if tty_nr == 0 {
        return "?".into();
    }
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        136..=143 => format!("pts/{}", minor + (major - 136) * 256),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        _ => "?".into(),
    }
}

/// The TIME column: cumulative CPU time as `[D-]HH:MM:SS`.
pub fn cpu_time(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// The STIME column: `HH:MM` today, `MonDD` this year, else the year.
pub fn start_time(
    start: chrono::DateTime<chrono::Local>,
    now: chrono::DateTime<chrono::Local>,
) -> String {
    if start.date_naive() == now.date_naive() {
        start.format("%H:%M").to_string()
    } else if start.format("%Y").to_string() == now.format("%Y").to_string() {
        start.format("%b%d").to_string()
    } else {
        start.format("%Y").to_string()
    }
}

/// The C column: lifetime CPU use in percent, as procps computes it (capped at 99).
pub fn cpu_percent(cpu_ticks: u64, elapsed_ticks: u64) -> u64 {
    if elapsed_ticks == 0 {
        return 0;
    }
    (cpu_ticks * 100 / elapsed_ticks).min(99)
}

/// uid → user name from a passwd text.
pub fn user_names(passwd: &str) -> HashMap<u32, String> {
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
        })
        .collect()
}

/// The effective uid from `/proc/<pid>/status`.
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
}

fn boot_time() -> u64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn uptime_ticks(ticks: u64) -> u64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| (secs * ticks as f64) as u64)
        .unwrap_or(0)
}

/// `ps -ef` of the given pids, from /proc.
pub fn ps_ef(pids: &[u32]) -> ContainerTop {
    let titles = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"];
    let ticks = super::cgroup::ticks_per_second();
    let users = user_names(&fs::read_to_string("/etc/passwd").unwrap_or_default());
    let boot = boot_time();
    let uptime = uptime_ticks(ticks);
    let now = chrono::Local::now();
    let mut processes = Vec::new();
    for &pid in pids {
        let Some(st) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            continue; // gone since the runtime listed it
        };
        let uid = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| effective_uid(&s));
        let user = match uid {
            Some(u) => users.get(&u).cloned().unwrap_or_else(|| u.to_string()),
            None => "?".into(),
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let cmd = if args.is_empty() {
            format!("[{}]", st.comm)
        } else {
            args.join(" ")
        };
        let cpu = st.utime + st.stime;
        let started = chrono::DateTime::from_timestamp((boot + st.starttime / ticks) as i64, 0)
            .map(|t| t.with_timezone(&chrono::Local))
            .unwrap_or(now);
        processes.push(vec![
            user,
            st.pid.to_string(),
            st.ppid.to_string(),
            cpu_percent(cpu, uptime.saturating_sub(st.starttime)).to_string(),
            start_time(started, now),
            tty_name(st.tty_nr),
            cpu_time(cpu / ticks),
            cmd,
        ]);
    }
    ContainerTop {
        titles: titles.iter().map(|t| t.to_string()).collect(),
        processes,
    }
}

/// Keeps the rows of `ps` output whose PID is one of `pids` (dockerd's parsing: the last column
/// takes the rest of the line).
pub fn filter_ps_output(output: &str, pids: &[u32]) -> Result<ContainerTop, String> {
    let mut lines = output.lines();
    let header = lines.next().unwrap_or("");
    let titles: Vec<String> = header.split_whitespace().map(str::to_string).collect();
    let pid_index = titles
        .iter()
        .position(|t| t == "PID")
        .ok_or_else(|| "Couldn't find PID field in ps output".to_string())?;
    let mut processes = Vec::new();
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(pid) = fields.get(pid_index).and_then(|p| p.parse::<u32>().ok()) else {
            return Err(format!(
                "Unexpected pid '{}'",
                fields.get(pid_index).unwrap_or(&"")
            ));
        };
        if !pids.contains(&pid) {
            continue;
        }
        let n = titles.len();
        let mut row: Vec<String> = fields
            .iter()
            .take(n.saturating_sub(1))
            .map(|s| s.to_string())
            .collect();
        if fields.len() >= n {
            row.push(fields[n - 1..].join(" "));
        }
        processes.push(row);
    }
    Ok(ContainerTop { titles, processes })
}

/// The machine's `ps` with the user's arguments, filtered to `pids`.
pub fn ps_with_args(ps_args: &str, pids: &[u32]) -> Result<ContainerTop, String> {
    let args: Vec<&str> = ps_args.split_whitespace().collect();
    let out = Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| format!("running ps: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "Error running ps: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ));
    }
    filter_ps_output(&String::from_utf8_lossy(&out.stdout), pids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let s = "42 (a b) c)) S 1 42 42 34817 42 4194560 100 0 0 0 250 150 0 0 20 0 1 0 12345 1000 10 18446744073709551615";
        let p = parse_stat(s).unwrap();
        assert_eq!(p.pid, 42);
        assert_eq!(p.comm, "a b) c)");
        assert_eq!(
            (p.ppid, p.tty_nr, p.utime, p.stime, p.starttime),
            (1, 34817, 250, 150, 12345)
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn columns_format_as_ps() {
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name(34816), "pts/0");
        assert_eq!(tty_name((136 << 8) | 5), "pts/5");
        assert_eq!(tty_name((4 << 8) | 1), "tty1");
        assert_eq!(cpu_time(0), "00:00:00");
        assert_eq!(cpu_time(3723), "01:02:03");
        assert_eq!(cpu_time(90061), "1-01:01:01");
        assert_eq!(cpu_percent(50, 100), 50);
        assert_eq!(cpu_percent(500, 100), 99);
        assert_eq!(cpu_percent(5, 0), 0);
        let now = chrono::Local
            .with_ymd_and_hms(2026, 12, 1, 20, 0, 0)
            .unwrap();
        let today = chrono::Local
            .with_ymd_and_hms(2026, 12, 1, 9, 5, 0)
            .unwrap();
        let earlier = chrono::Local.with_ymd_and_hms(2026, 3, 7, 9, 5, 0).unwrap();
        let last_year = chrono::Local.with_ymd_and_hms(2025, 3, 7, 9, 5, 0).unwrap();
        assert_eq!(start_time(today, now), "09:05");
        assert_eq!(start_time(earlier, now), "Mar07");
        assert_eq!(start_time(last_year, now), "2025");
        let users =
            user_names("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n");
        assert_eq!(users[&65534], "nobody");
        assert_eq!(effective_uid("Name:\tsh\nUid:\t1000\t0\t0\t0\n"), Some(0));
    }

    #[test]
    fn ps_output_is_filtered_by_pid() {
        let out = "  PID USER     COMMAND\n    1 root     init\n   10 root     sleep 100 now\n   11 root     other\n";
        let t = filter_ps_output(out, &[10]).unwrap();
        assert_eq!(t.titles, vec!["PID", "USER", "COMMAND"]);
        assert_eq!(
            t.processes,
            vec![vec![
                "10".to_string(),
                "root".into(),
                "sleep 100 now".into()
            ]]
        );
        assert_eq!(
            filter_ps_output("USER CMD\nroot x\n", &[1]).unwrap_err(),
            "Couldn't find PID field in ps output"
        );
    }
}
