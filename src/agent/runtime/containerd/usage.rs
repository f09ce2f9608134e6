//! A container's CPU and memory use: CRI's ContainerStats (what the kubelet's summary API
//! reads), with the container's cgroup v1 files as the fallback when containerd has no
//! metrics for it (a task that is only just starting, a plugin without stats support).

use skiff_proto::cri::ContainerStats;
use tracing::warn;

use crate::agent::runtime::Usage;

/// Usage from a ContainerStats reply; None when it carries neither CPU nor memory.
pub fn from_stats(stats: &ContainerStats) -> Option<Usage> {
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value);
    let memory = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value);
    if cpu.is_none() && memory.is_none() {
        return None;
    }
    Some(Usage {
        cpu_nanos: cpu.unwrap_or(0),
        memory_bytes: memory.unwrap_or(0),
    })
}

/// The cgroup path of `controller` in a /proc/<pid>/cgroup listing (cgroup v1).
fn cgroup_path<'a>(listing: &'a str, controller: &str) -> Option<&'a str> {
    listing.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    })
}

fn read_u64(path: String) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// CPU and memory of the cgroup (v1) a process runs in.
pub fn from_cgroup(pid: u32) -> Option<Usage> {
    let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let memory = cgroup_path(&listing, "memory")
        .and_then(|p| read_u64(format!("/sys/fs/cgroup/memory{p}/memory.usage_in_bytes")));
    let cpu = cgroup_path(&listing, "cpuacct")
        .and_then(|p| read_u64(format!("/sys/fs/cgroup/cpuacct{p}/cpuacct.usage")));
    if memory.is_none() && cpu.is_none() {
        warn!(pid, "no cgroup v1 usage for this container");
        return None;
    }
    Some(Usage {
        cpu_nanos: cpu.unwrap_or(0),
        memory_bytes: memory.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use skiff_proto::cri::{CpuUsage, MemoryUsage, UInt64Value};

    use super::*;

    #[test]
    fn stats_become_usage() {
        let stats = ContainerStats {
            cpu: Some(CpuUsage {
                timestamp: 1,
                usage_core_nano_seconds: Some(UInt64Value { value: 42 }),
            }),
            memory: Some(MemoryUsage {
                timestamp: 1,
                working_set_bytes: Some(UInt64Value { value: 4096 }),
            }),
            ..Default::default()
        };
        assert_eq!(
            from_stats(&stats),
            Some(Usage {
                cpu_nanos: 42,
                memory_bytes: 4096
            })
        );
        assert_eq!(from_stats(&ContainerStats::default()), None);
    }

    #[test]
    fn cgroup_paths_are_found_per_controller() {
        let listing = "12:cpu,cpuacct:/skiff-n1/abc\n4:memory:/skiff-n1/abc\n1:name=systemd:/\n";
        assert_eq!(cgroup_path(listing, "cpuacct"), Some("/skiff-n1/abc"));
        assert_eq!(cgroup_path(listing, "memory"), Some("/skiff-n1/abc"));
        assert_eq!(cgroup_path(listing, "pids"), None);
    }
}
