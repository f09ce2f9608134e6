//! `skiff up` on real containers: hosts made of network namespaces — one bridge namespace, one
//! for the control plane (members on 10.99.0.1..N), one per agent (10.99.0.11..) with its own
//! containerd — so pods get real addresses, Services real packet rules, and nothing touches
//! the host's own network. kubectl on the host reaches the API through a relay on
//! 127.0.0.1:6443 (the members' certificates name 127.0.0.1), which dials the members from
//! inside the control-plane namespace.
//!
//! Everything here is undone by `remove`: containerd and its shims (found by the data dir on
//! their command lines), mounts under the data dir, the namespaces.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::procfs;

/// The namespaces' names start with this (one `skiff up` per machine in this mode).
const PREFIX: &str = "skiff-up";
/// The test hosts' subnet; it exists only inside the namespaces.
const SUBNET: &str = "10.99.0";

/// Why the containerd mode cannot run here (`None`: it can).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for program in [
        "containerd",
        "runc",
        "ctr",
        "nsenter",
        "ip",
        "nft",
        "gcc",
        "python3",
    ] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {program}"))
            .output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Some(format!("{program} is not installed"));
        }
    }
    for file in [
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/bin/busybox",
    ] {
        if !Path::new(file).exists() {
            return Some(format!("{file} is missing"));
        }
    }
    if images_script().is_none() {
        return Some("images/build.sh is not found (run skiff up from the source tree)".into());
    }
    None
}

/// images/build.sh: beside the working directory, or in the tree this binary was built from.
pub fn images_script() -> Option<PathBuf> {
    [
        std::env::current_dir()
            .ok()
            .map(|d| d.join("images/build.sh")),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/images/build.sh"
        ))),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.exists())
}

/// Builds the local images (busybox, pause, echo) into `out`.
pub fn build_images(out: &Path) -> anyhow::Result<()> {
    let script = images_script().context("images/build.sh not found")?;
    let built = Command::new(&script)
        .arg(out)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !built.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&built.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Member i is `member_prefix()` + i (LocalCluster's addressing).
pub fn member_prefix() -> String {
    format!("{SUBNET}.")
}

pub fn member_ip(index: usize) -> String {
    format!("{SUBNET}.{index}")
}

pub fn agent_ip(index: usize) -> String {
    format!("{SUBNET}.{}", 10 + index)
}

/// The namespaces of one `skiff up`.
pub struct UpHosts {
    data: PathBuf,
}

impl UpHosts {
    pub fn ns(host: &str) -> String {
        format!("{PREFIX}-{host}")
    }

    pub fn ns_path(host: &str) -> String {
        format!("/var/run/netns/{}", Self::ns(host))
    }

    /// The command prefix that runs a program on `host`.
    pub fn launcher(host: &str) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--net={}", Self::ns_path(host)),
            "--".into(),
        ]
    }

    /// The bridge, the control-plane host with `members` addresses and `agents` agent hosts
    /// (n1..), replacing any left by an earlier run that did not clean up.
    pub fn create(data: &Path, members: usize, agents: usize) -> anyhow::Result<UpHosts> {
        remove_namespaces();
        let hosts = UpHosts {
            data: data.to_path_buf(),
        };
        let bridge = Self::ns("br");
        ip(&["netns", "add", &bridge])?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        let mut layout = vec![(
            "cp".to_string(),
            (1..=members).map(member_ip).collect::<Vec<_>>(),
        )];
        for i in 1..=agents {
            layout.push((format!("n{i}"), vec![agent_ip(i)]));
        }
        for (host, addresses) in layout {
            let ns = Self::ns(&host);
            ip(&["netns", "add", &ns])?;
            let port = format!("v-{host}");
            ip(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
            for address in &addresses {
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{address}/24"),
                    "dev",
                    "eth0",
                ])?;
            }
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    /// Stops what runs on the hosts and deletes them.
    pub fn remove(&self) {
        teardown(&self.data);
    }
}

/// Kills the containers, containerd and its shims (these carry the data dir on their command
/// lines), removes the containers' cgroups, releases mounts under the data dir and deletes the
/// namespaces. Also what `skiff up --down` calls.
pub fn teardown(data: &Path) {
    let dir = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
    let dir = dir.to_string_lossy().into_owned();
    stop_node_processes(&format!("{dir}/agent"));
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        let mut targets: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|t| t.starts_with(&dir))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for target in targets {
            let _ = Command::new("umount").args(["-l", target]).status();
        }
    }
    remove_namespaces();
}

/// Stops every process of the agents whose data dirs start with `marker`: the agents,
/// containerd and the shims name it on their command lines, and the containers are the shims'
/// (or the process runtime's agent's) children. Killing a shim alone would leave its
/// containers running under init, so they go first; each is its pid namespace's init, which
/// takes the rest of the container with it. Their cgroups go last: with the shims gone, runc
/// never removes them, and every teardown would leave one per container behind.
fn stop_node_processes(marker: &str) {
    let node_processes = procfs::pids_where(|cmdline, _| cmdline.contains(marker));
    let containers = procfs::pids_where(|_, parent| node_processes.contains(&parent));
    let cgroups: Vec<PathBuf> = containers
        .iter()
        .flat_map(|pid| procfs::cgroup_dirs(*pid))
        .collect();
    for pid in containers.iter().chain(&node_processes) {
        // SAFETY: kill(2) on pids just read from /proc; no memory involved.
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    // They exit a moment after SIGKILL (a zombie has left its cgroups); then the cgroups go.
    let exited = |pid: &u32| {
        procfs::stat_fields(*pid).is_none_or(|fields| fields.first().is_some_and(|s| s == "Z"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut killed: Vec<u32> = containers.into_iter().chain(node_processes).collect();
    let mut left = cgroups;
    while !(killed.is_empty() && left.is_empty()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        killed.retain(|pid| !exited(pid));
        left.retain(|dir| dir.is_dir() && std::fs::remove_dir(dir).is_err());
    }
    if !(killed.is_empty() && left.is_empty()) {
        warn!(processes = ?killed, cgroups = left.len(), "not everything of the agents is gone");
    }
}

fn remove_namespaces() {
    let Ok(listing) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        if let Some(name) = line.split_whitespace().next()
            && name.starts_with(&format!("{PREFIX}-"))
        {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs `work` on a thread that has entered the network namespace at `ns_path`: sockets it
/// opens live in that namespace (and stay there when handed to other threads).
fn in_namespace<T: Send + 'static>(
    ns_path: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<T>> {
    let file = std::fs::File::open(ns_path).with_context(|| format!("opening {ns_path}"))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns(2) on a namespace fd we hold; it changes only this thread.
        let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if entered != 0 {
            warn!("setns failed: {}", std::io::Error::last_os_error());
        }
        work()
    }))
}

/// A DNS A lookup from inside the control-plane namespace.
pub async fn lookup_inside(server: SocketAddr, name: &'static str) -> Vec<std::net::Ipv4Addr> {
    let (tx, rx) = oneshot::channel();
    let started = in_namespace(&UpHosts::ns_path("cp"), move || {
        let answer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(crate::dns_probe::lookup_a(server, name)))
            .unwrap_or_default();
        let _ = tx.send(answer);
    });
    if started.is_err() {
        return Vec::new();
    }
    rx.await.unwrap_or_default()
}

/// Relays TCP from `listen` on the host to the first of `targets` that answers, dialled from
/// inside the control-plane namespace. Runs until the process ends.
pub async fn relay(listen: SocketAddr, targets: Vec<SocketAddr>) -> anyhow::Result<()> {
    let listener = StdListener::bind(listen)
        .with_context(|| format!("binding {listen} for the API relay (is something using it?)"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    // One thread in the namespace dials for every connection.
    let (dial_tx, dial_rx) = mpsc::channel::<oneshot::Sender<Option<StdStream>>>();
    in_namespace(&UpHosts::ns_path("cp"), move || {
        while let Ok(reply) = dial_rx.recv() {
            let stream = targets
                .iter()
                .find_map(|t| StdStream::connect_timeout(t, Duration::from_secs(2)).ok());
            let _ = reply.send(stream);
        }
    })?;
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, peer)) = listener.accept().await else {
                continue;
            };
            let (reply_tx, reply_rx) = oneshot::channel();
            if dial_tx.send(reply_tx).is_err() {
                return;
            }
            tokio::spawn(async move {
                let Ok(Some(outbound)) = reply_rx.await else {
                    debug!(%peer, "no member answered the relay");
                    return;
                };
                let outbound = outbound
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(outbound));
                if let Ok(mut outbound) = outbound {
                    let _ = outbound.set_nodelay(true);
                    let _ = inbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(())
}
