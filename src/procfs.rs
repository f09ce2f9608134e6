//! What this host's /proc says about other processes: their parent, start time, CPU fields
//! and cgroups, and which ones match a command line. Used where skiff has to find processes
//! it did not keep a handle to: the benches' peers, the process runtime's leftovers, and the
//! containers of a local cluster being torn down.

use std::path::PathBuf;

/// The fields of /proc/PID/stat after the command name (which may hold spaces, closed by ')'):
/// state first, then ppid, ... utime at 11, stime at 12, starttime at 19.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When process `pid` started (clock ticks since boot), if it exists: with the pid, this names
/// one process even after the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Process `pid`'s command line: its arguments, each followed by a space ("" if it is gone).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// Processes (other than this one) whose command line ([`cmdline`]) and parent pid satisfy
/// `wanted`, in pid order.
pub fn pids_where(wanted: impl Fn(&str, u32) -> bool) -> Vec<u32> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            let parent = stat_fields(*pid)
                .and_then(|fields| fields.get(1)?.parse::<u32>().ok())
                .unwrap_or(0);
            wanted(&cmdline(*pid), parent)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Memory only process `pid` holds (kB): its private pages, clean and dirty, leaving out
/// those it shares with another process (a forked child's pages not yet written, a binary's
/// text). 0 if it is gone.
pub fn private_kb(pid: u32) -> u64 {
    let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return 0;
    };
    rollup
        .lines()
        .filter(|line| line.starts_with("Private_Clean:") || line.starts_with("Private_Dirty:"))
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// The cgroup directories process `pid` sits in, one per mounted hierarchy (cgroup v1
/// controllers at /sys/fs/cgroup/<controllers>, v2 at /sys/fs/cgroup/unified on a hybrid host
/// or /sys/fs/cgroup itself); the root cgroups are left out.
pub fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let root = PathBuf::from("/sys/fs/cgroup");
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let relative = path.trim_start_matches('/');
            if relative.is_empty() {
                return None;
            }
            let hierarchy = if controllers.is_empty() {
                let hybrid = root.join("unified");
                if hybrid.is_dir() {
                    hybrid
                } else {
                    root.clone()
                }
            } else {
                root.join(controllers.trim_start_matches("name="))
            };
            Some(hierarchy.join(relative))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn finds_processes_by_command_line_and_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("30.123")
            .spawn()
            .expect("sleep");
        let own = std::process::id();
        // spawn returns once exec has begun, but the kernel publishes the new
        // command line a moment later (after close-on-exec wakes us), so poll.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut by_line = Vec::new();
        while by_line.is_empty() && Instant::now() < deadline {
            by_line = pids_where(|cmdline, _| cmdline == "sleep 30.123 ");
            if by_line.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let by_parent = pids_where(|_, parent| parent == own);
        let started = start_time(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(by_line, vec![child.id()]);
        assert!(by_parent.contains(&child.id()), "{by_parent:?}");
        assert!(started.is_some());
        assert_eq!(start_time(child.id()), None, "reaped");
    }

    #[test]
    fn private_memory_is_some_of_ours_and_none_of_a_missing_process() {
        let ours = private_kb(std::process::id());
        assert!(ours > 0);
        assert_eq!(private_kb(0), 0);
    }

    #[test]
    fn cgroup_dirs_name_each_hierarchy_below_its_mount() {
        // Our own cgroups: whatever they are, each lies under /sys/fs/cgroup.
        for dir in cgroup_dirs(std::process::id()) {
            assert!(dir.starts_with("/sys/fs/cgroup/"), "{}", dir.display());
        }
        assert!(cgroup_dirs(0).is_empty());
    }
}
