//! `skiff agent` processes for tests: each joins the test cluster with its token and runs
//! its pods; on drop the agents and whatever their pods left are killed.

use std::path::PathBuf;
use std::process::{Child, Stdio};

use super::{Cluster, SKIFF};

pub struct Agent {
    pub name: String,
    pub address: String,
    pub data: PathBuf,
    pub child: Option<Child>,
    pub args: Vec<String>,
    /// The node's network namespace (None: the host's loopback).
    pub netns: Option<String>,
}

impl Agent {
    pub fn log_path(&self) -> PathBuf {
        self.data.with_extension("log")
    }

    /// Starts (or restarts) the agent against every member of `cluster`.
    pub fn spawn(&mut self, cluster: &Cluster) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("agent log");
        let servers: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("https://{}", n.api()))
            .collect();
        // nsenter --net, not `ip netns exec`: the latter remounts /sys, and the containerd the
        // agent starts would find no cgroup v1 mounts.
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = std::process::Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}"))
                    .arg("--")
                    .arg(SKIFF);
                c
            }
            None => std::process::Command::new(SKIFF),
        };
        let child = command
            .arg("agent")
            .arg("--server")
            .arg(servers.join(","))
            .arg("--token")
            .arg(cluster.token())
            .arg("--data")
            .arg(&self.data)
            .arg("--name")
            .arg(&self.name)
            .arg("--address")
            .arg(&self.address)
            .args(&self.args)
            .env("SKIFF_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn skiff agent");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The process runtime's containers die with their agent (parent-death signal).
    }

    /// Processes working in one of this agent's process-runtime pod directories: its
    /// containers and anything they started.
    pub fn container_processes(&self) -> Vec<String> {
        let pods = self.data.join("runtime").join("pods");
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&pods))
            })
            .map(|entry| {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                format!(
                    "{} {}",
                    entry.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                )
            })
            .collect()
    }

    pub fn dump_log(&self) {
        if let Ok(log) = std::fs::read_to_string(self.log_path()) {
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- agent {} log (last lines) ---", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A failed test shows what each agent was doing, as Cluster does for its members.
        if std::thread::panicking() {
            self.dump_log();
        }
        self.kill();
    }
}

/// Agents named `agent1..` on 127.0.<subnet>.11.. (one data dir each under the cluster's dir).
pub fn start(cluster: &Cluster, count: usize, args: &[&str]) -> Vec<Agent> {
    (1..=count)
        .map(|i| {
            let mut agent = Agent {
                name: format!("agent{i}"),
                address: format!("127.0.{}.{}", cluster.subnet, 10 + i),
                data: cluster.dir.path().join(format!("agent{i}")),
                child: None,
                args: args.iter().map(|s| s.to_string()).collect(),
                netns: None,
            };
            agent.spawn(cluster);
            agent
        })
        .collect()
}
