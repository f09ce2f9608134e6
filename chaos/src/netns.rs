//! Network namespaces for partition faults (needs root). Nothing here touches the host's
//! network: every link, address and route lives inside namespaces this module creates.
//!
//! Layout for a topology named N with members 1..=size on SUBNET (e.g. "10.77.0."):
//! - `N-br`: a namespace holding only the bridge `br0`;
//! - `N-m<i>`: member i, `eth0` = SUBNET<i>/24, a veth into the bridge;
//! - `N-ctl`: the chaos process itself (clients, watchers), `eth0` = SUBNET100/24.
//!
//! A partition is a set of one-way blackhole routes inside member namespaces, packet loss an
//! nftables rule there, packet delay nftables redirects there to a relay (`delay`), so clients
//! in `N-ctl` still reach every member: an isolated leader keeps answering clients.

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

    /// Adds (or removes) a blackhole route in `from`'s namespace: its packets to `to` are
    /// dropped. Removing a route that is already gone is fine.
    pub fn blackhole(&self, from: usize, to: usize, add: bool) -> Result<(), ChaosError> {
        let dest = format!("{}/32", self.member_ip(to));
        let ns = self.member_ns(from);
        let result = ip(&[
            "-n",
            &ns,
            "route",
            if add { "add" } else { "del" },
            "blackhole",
            &dest,
        ]);
        match result {
            Err(ChaosError::Netns(message)) if !add && message.contains("No such process") => {
                Ok(())
            }
            other => other,
        }
    }

    /// Drops `percent`% of the packets between `member` and its peers, both ways (nftables in
    /// the member's namespace).
    pub fn drop_randomly(&self, member: usize, percent: u8) -> Result<(), ChaosError> {
        let peers: Vec<String> = (0..self.size)
            .filter(|o| *o != member)
            .map(|o| self.member_ip(o))
            .collect();
        let peers = peers.join(", ");
        let percent = percent.min(100);
        let rules = format!(
            "table inet {LOSS_TABLE} {{\n\
             chain out {{ type filter hook output priority 0; policy accept; \
             ip daddr {{ {peers} }} numgen random mod 100 < {percent} drop; }}\n\
             chain in {{ type filter hook input priority 0; policy accept; \
             ip saddr {{ {peers} }} numgen random mod 100 < {percent} drop; }}\n}}\n"
        );
        nft(&self.member_ns(member), &["-f", "-"], Some(&rules))
    }

    /// Undoes `drop_randomly(member, _)`.
    pub fn clear_loss(&self, member: usize) -> Result<(), ChaosError> {
        self.delete_table(member, "inet", LOSS_TABLE)
    }

    /// Loads an nftables ruleset (`nft -f` syntax) into `member`'s namespace.
    pub fn load_rules(&self, member: usize, rules: &str) -> Result<(), ChaosError> {
        nft(&self.member_ns(member), &["-f", "-"], Some(rules))
    }

    /// Deletes a table from `member`'s namespace; one that is already gone is fine.
    pub fn delete_table(&self, member: usize, family: &str, table: &str) -> Result<(), ChaosError> {
        match nft(
            &self.member_ns(member),
            &["delete", "table", family, table],
            None,
        ) {
            Err(ChaosError::Netns(message)) if message.contains("No such file") => Ok(()),
            other => other,
        }
    }
}

/// Moves the calling thread into network namespace `ns` (a name under /run/netns, as `ip netns
/// add` makes). setns(2) moves only this thread, and for good: call it on a thread that exists
/// for this purpose, never on a pooled one.
pub fn enter_netns(ns: &str) -> Result<(), ChaosError> {
    use std::os::fd::AsRawFd;
    let path = std::path::Path::new("/run/netns").join(ns);
    let file = std::fs::File::open(&path)
        .map_err(|e| ChaosError::Netns(format!("opening {}: {e}", path.display())))?;
    // SAFETY: setns(2) with a namespace fd we hold open; it changes only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(ChaosError::Netns(format!(
            "entering {ns}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Runs blocking `work` on a new thread inside network namespace `ns`; the thread ends with it.
pub async fn run_in_netns<T: Send + 'static>(
    ns: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ChaosError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = ns.to_string();
    std::thread::Builder::new()
        .name(format!("chaos-in-{ns}"))
        .spawn(move || {
            let _ = tx.send(enter_netns(&name).map(|()| work()));
        })
        .map_err(|e| ChaosError::Netns(format!("spawning a thread for {ns}: {e}")))?;
    rx.await
        .map_err(|_| ChaosError::Netns(format!("the thread in {ns} died")))?
}

/// The nftables table packet-loss faults live in (inside member namespaces only).
const LOSS_TABLE: &str = "skiff_chaos_loss";

/// Runs nft inside namespace `ns`, feeding `stdin` when given.
fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<(), ChaosError> {
    use std::io::Write;
    let what = || format!("nft {} in {ns}", args.join(" "));
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ChaosError::Netns(format!("{}: {e}", what())))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .map_err(|e| ChaosError::Netns(format!("{}: {e}", what())))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| ChaosError::Netns(format!("{}: {e}", what())))?;
    if !out.status.success() {
        return Err(ChaosError::Netns(format!(
            "{}: {}",
            what(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
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
