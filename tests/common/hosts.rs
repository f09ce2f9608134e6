//! Test hosts made of network namespaces, and a whole containerd cluster on them: the 3
//! control-plane members in one namespace, each agent (with its own private containerd) in its
//! own, all joined by a bridge living in a namespace of its own; nothing touches the host's
//! network. Real images (built locally by images/build.sh), real pod IPs from each node's
//! podCIDR. On drop: agents, containerd and shims stopped, mounts released, namespaces deleted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::kubectl::{Kubectl, kubectl};
use super::{Cluster, agents::Agent, wait_for};

/// Why the containerd tests cannot run here (they then pass vacuously, saying so).
pub fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for program in ["containerd", "runc", "ctr", "nsenter", "gcc", "ip", "nft"] {
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
    None
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's hosts.
pub struct Hosts {
    prefix: String,
    names: Vec<String>,
    dir: PathBuf,
}

impl Hosts {
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// A bridge namespace and one namespace per (host, addresses), each wired to the bridge.
    pub fn create(dir: &Path, hosts: &[(&str, &[&str])]) -> Hosts {
        let prefix = format!("skt{}", std::process::id() % 100_000);
        let mut created = Hosts {
            prefix: prefix.clone(),
            names: Vec::new(),
            dir: dir.to_path_buf(),
        };
        let bridge = created.ns("br");
        ip(&["netns", "add", &bridge]);
        created.names.push(bridge.clone());
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for (host, addresses) in hosts {
            let ns = created.ns(host);
            ip(&["netns", "add", &ns]);
            created.names.push(ns.clone());
            let port = format!("v-{host}");
            ip(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"]);
            for address in *addresses {
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{address}/24"),
                    "dev",
                    "eth0",
                ]);
            }
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        created
    }

    /// `program args...` run on `host` (`ip netns exec`).
    pub fn run(&self, host: &str, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host), program])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// An HTTP GET from `host` with busybox wget (3 s timeout); the body, or "" on failure.
    pub fn http_get(&self, host: &str, url: &str) -> String {
        let out = self.run(host, "timeout", &["3", "busybox", "wget", "-qO-", url]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        kill_agents_processes(&format!("{dir}/agent"));
        std::thread::sleep(Duration::from_millis(500));
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
        for name in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// SIGKILLs containerd and its shims (they carry the agents' state dir, `marker`, on their
/// command lines) and, first, their children: the containers, which would otherwise outlive
/// the test under init. Then removes the containers' (empty) cgroups, which runc no longer will.
fn kill_agents_processes(marker: &str) {
    let table: Vec<(i32, i32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let parent = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            Some((
                pid,
                parent,
                String::from_utf8_lossy(&cmdline).replace('\0', " "),
            ))
        })
        .collect();
    let agents: Vec<i32> = table
        .iter()
        .filter(|(_, _, cmdline)| cmdline.contains(marker))
        .map(|(pid, _, _)| *pid)
        .collect();
    let containers: Vec<i32> = table
        .iter()
        .filter(|(_, parent, _)| agents.contains(parent))
        .map(|(pid, _, _)| *pid)
        .collect();
    let mut cgroups: Vec<PathBuf> = Vec::new();
    for pid in &containers {
        let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        for line in listing.lines() {
            let mut fields = line.splitn(3, ':').skip(1);
            let (Some(controllers), Some(path)) = (fields.next(), fields.next()) else {
                continue;
            };
            // v1: one hierarchy per controller set; v2: "unified" on a hybrid host, else the root.
            let hierarchy = match controllers.trim_start_matches("name=") {
                "" if Path::new("/sys/fs/cgroup/unified").is_dir() => "/unified",
                "" => "",
                named => &format!("/{named}"),
            };
            if path.len() > 1 {
                cgroups.push(PathBuf::from(format!("/sys/fs/cgroup{hierarchy}{path}")));
            }
        }
    }
    for pid in containers.iter().chain(&agents) {
        // SAFETY: kill(2) on a pid read from /proc; no memory involved.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        cgroups.retain(|dir| dir.is_dir() && std::fs::remove_dir(dir).is_err());
        if cgroups.is_empty() {
            break;
        }
    }
}

/// The members' addresses on the "cp" host.
pub const MEMBERS: [&str; 3] = ["10.99.0.1", "10.99.0.2", "10.99.0.3"];

/// One agent of a [`ContainerdCluster`]: its node name, host and address, and the agent
/// flags beyond the common ones.
pub struct AgentSpec {
    pub name: &'static str,
    pub host: &'static str,
    pub address: &'static str,
    pub args: &'static [&'static str],
}

/// 3 members on host "cp" and one containerd agent per spec on its own host. Fields drop in
/// order: agents before the hosts they run on, the work dir last.
pub struct ContainerdCluster {
    pub agents: Vec<Agent>,
    pub cluster: Cluster,
    pub hosts: Hosts,
    pub kubectl: Kubectl,
    pub work: tempfile::TempDir,
}

impl ContainerdCluster {
    /// Builds the images, makes the hosts, starts members (with `server_args`) and agents and
    /// waits until every node is Ready.
    pub fn start(subnet: u8, server_args: &[&str], specs: &[AgentSpec]) -> ContainerdCluster {
        let work = tempfile::tempdir().expect("tempdir");
        let images = work.path().join("images");
        let build = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/images/build.sh"))
            .arg(&images)
            .output()
            .expect("images/build.sh");
        assert!(
            build.status.success(),
            "images/build.sh: {}",
            String::from_utf8_lossy(&build.stderr)
        );
        let mut layout: Vec<(&str, &[&str])> = vec![("cp", &MEMBERS)];
        let addresses: Vec<[&str; 1]> = specs.iter().map(|s| [s.address]).collect();
        for (spec, address) in specs.iter().zip(&addresses) {
            layout.push((spec.host, address));
        }
        let hosts = Hosts::create(work.path(), &layout);
        let member_ips: Vec<String> = MEMBERS.iter().map(|s| s.to_string()).collect();
        let cluster = Cluster::start_at(subnet, &member_ips, Some(&hosts.ns("cp")), server_args);
        let agents: Vec<Agent> = specs
            .iter()
            .map(|spec| {
                let ns = hosts.ns(spec.host);
                let mut args: Vec<String> = vec![
                    "--runtime".into(),
                    "containerd".into(),
                    "--netns".into(),
                    format!("/var/run/netns/{ns}"),
                    "--import-images".into(),
                    images.to_string_lossy().into_owned(),
                ];
                args.extend(spec.args.iter().map(|s| s.to_string()));
                let mut agent = Agent {
                    name: spec.name.to_string(),
                    address: spec.address.to_string(),
                    data: work.path().join(format!("agent-{}", spec.name)),
                    child: None,
                    args,
                    netns: Some(ns),
                };
                agent.spawn(&cluster);
                agent
            })
            .collect();
        let kubectl = kubectl(&cluster, None);
        let fixture = ContainerdCluster {
            agents,
            cluster,
            hosts,
            kubectl,
            work,
        };
        let expected = specs.len();
        fixture.run_flows(|fixture| {
            wait_for(
                Duration::from_secs(120),
                "every containerd node Ready",
                || {
                    let out = fixture.kubectl.run(&["get", "nodes", "--no-headers"]);
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|l| l.contains(" Ready "))
                        .count()
                        == expected
                },
            );
        });
        fixture
    }

    /// Runs `flows`; on a panic prints the containerds' logs (members and agents print their
    /// own when dropped during the unwind).
    pub fn run_flows(&self, flows: impl FnOnce(&ContainerdCluster)) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flows(self)));
        if let Err(panic) = result {
            self.dump_logs();
            std::panic::resume_unwind(panic);
        }
    }

    /// Like `run_flows`, for flows that restart or kill agents.
    pub fn run_flows_mut(&mut self, flows: impl FnOnce(&mut ContainerdCluster)) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flows(&mut *self)));
        if let Err(panic) = result {
            self.dump_logs();
            std::panic::resume_unwind(panic);
        }
    }

    pub fn dump_logs(&self) {
        for agent in &self.agents {
            if let Ok(log) = std::fs::read_to_string(agent.data.join("containerd/containerd.log")) {
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "--- containerd of {} ---\n{}",
                    agent.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }

    /// `kubectl get KIND NAME -o jsonpath=PATH`, "" when it fails.
    pub fn field(&self, kind: &str, name: &str, path: &str) -> String {
        let out = self
            .kubectl
            .run(&["get", kind, name, "-o", &format!("jsonpath={path}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The names of the pods matching label `selector` that are Ready and not terminating.
    pub fn ready_pods(&self, selector: &str) -> std::collections::BTreeSet<String> {
        let out = self.kubectl.ok(&[
            "get", "pods", "-l", selector, "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}/{.metadata.deletionTimestamp} {end}",
        ]);
        out.split_whitespace()
            .filter_map(|p| p.strip_suffix("=True/"))
            .map(str::to_string)
            .collect()
    }

    /// `sh -c SCRIPT` inside `pod` (kubectl exec); its stdout, "" when it fails.
    pub fn exec_sh(&self, pod: &str, script: &str) -> String {
        let out = self.kubectl.run(&["exec", pod, "--", "sh", "-c", script]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
