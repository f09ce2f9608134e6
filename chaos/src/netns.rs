//! Network namespaces for partition faults (needs root). Nothing here touches the host's
//! network: every link, address and route lives inside namespaces this module creates.
//!
//! Layout for a topology named N with members 1..=size on SUBNET (e.g. "10.77.0."):
//! - `N-br`: a namespace holding only the bridge `br0`;
//! - `N-m<i>`: member i, `eth0` = SUBNET<i>/24, a veth into the bridge;
//! - `N-ctl`: the chaos process itself (clients, watchers), `eth0` = SUBNET100/24.
//!
//! A partition is a set of blackhole routes inside member namespaces (both directions), so
//! clients in `N-ctl` still reach every member: an isolated leader keeps answering clients.

use std::process::Command;

use crate::error::ChaosError;

#[derive(Clone, Debug)]
pub struct NetnsTopology {
    pub name: String,
    pub subnet: String,
    pub size: usize,
}

fn ip(args: &[&str]) -> Result<(), ChaosError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| ChaosError::Netns(format!("ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(ChaosError::Netns(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl NetnsTopology {
    /// The names of a topology that already exists (inside the re-executed chaos process).
    pub fn existing(name: &str, subnet: &str, size: usize) -> NetnsTopology {
        NetnsTopology {
            name: name.to_string(),
            subnet: subnet.to_string(),
            size,
        }
    }

    pub fn bridge_ns(&self) -> String {
        format!("{}-br", self.name)
    }

    pub fn ctl_ns(&self) -> String {
        format!("{}-ctl", self.name)
    }

    /// Namespace of member `member` (0-based).
    pub fn member_ns(&self, member: usize) -> String {
        format!("{}-m{}", self.name, member + 1)
    }

    /// Address of member `member` (0-based).
    pub fn member_ip(&self, member: usize) -> String {
        format!("{}{}", self.subnet, member + 1)
    }

    /// Creates every namespace and link; on any failure removes what it made.
    pub fn create(name: &str, subnet: &str, size: usize) -> Result<NetnsTopology, ChaosError> {
        let topology = NetnsTopology::existing(name, subnet, size);
        if let Err(e) = topology.build() {
            topology.destroy();
            return Err(e);
        }
        Ok(topology)
    }

    fn build(&self) -> Result<(), ChaosError> {
        let br = self.bridge_ns();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        let mut hosts: Vec<(String, String)> = (0..self.size)
            .map(|m| (self.member_ns(m), self.member_ip(m)))
            .collect();
        hosts.push((self.ctl_ns(), format!("{}100", self.subnet)));
        for (k, (ns, addr)) in hosts.iter().enumerate() {
            let veth = format!("v{k}");
            ip(&["netns", "add", ns])?;
            ip(&[
                "-n", &br, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            ip(&["-n", &br, "link", "set", &veth, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &veth, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Kills whatever still runs in the member namespaces (our own children, left behind if the
    /// chaos process died) and deletes every namespace. Best effort, never fails.
    pub fn destroy(&self) {
        let mut all: Vec<String> = (0..self.size).map(|m| self.member_ns(m)).collect();
        all.push(self.ctl_ns());
        all.push(self.bridge_ns());
        for ns in &all {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) on a process inside a namespace this run created.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
            let _ = ip(&["netns", "del", ns]);
        }
    }

    /// Cuts `member` off from every other member (both directions).
    pub fn isolate(&self, member: usize) -> Result<(), ChaosError> {
        for other in (0..self.size).filter(|o| *o != member) {
            self.blackhole(member, other, "add")?;
            self.blackhole(other, member, "add")?;
        }
        Ok(())
    }

    /// Undoes `isolate(member)`; routes already gone are fine.
    pub fn heal(&self, member: usize) -> Result<(), ChaosError> {
        let mut first_error = None;
        for other in (0..self.size).filter(|o| *o != member) {
            for (from, to) in [(member, other), (other, member)] {
                if let Err(e) = self.blackhole(from, to, "del")
                    && first_error.is_none()
                {
                    first_error = Some(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn blackhole(&self, from: usize, to: usize, action: &str) -> Result<(), ChaosError> {
        let dest = format!("{}/32", self.member_ip(to));
        ip(&[
            "-n",
            &self.member_ns(from),
            "route",
            action,
            "blackhole",
            &dest,
        ])
    }
}

/// The network namespace this process runs in ("net:[inode]"), if readable.
pub fn current_netns() -> Option<String> {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .map(|p| p.display().to_string())
}

/// True when this process runs in a network namespace other than `host` (the one the parent
/// chaos process, outside the topology, reported).
pub fn in_private_netns(host: &str) -> bool {
    current_netns().is_some_and(|own| own != host)
}
