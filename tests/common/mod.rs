//! Test harness: real `skiff server` processes on loopback addresses (127.0.X.1..3, one X per
//! test so tests can run in parallel with the default ports), driven with the real etcdctl and a
//! tonic etcd client.

#![allow(dead_code)]

pub mod agents;
pub mod attach;
pub mod fake_nodes;
pub mod hosts;
pub mod kubectl;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

pub struct Node {
    pub index: usize,
    pub ip: String,
    pub data: PathBuf,
    pub child: Option<Child>,
    pub extra_args: Vec<String>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub subnet: u8,
    /// The network namespace the members run in (None: the host's loopback).
    pub netns: Option<String>,
}

/// `program`, run inside `netns` when given (`ip netns exec`).
pub fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, program]);
            cmd
        }
        None => Command::new(program),
    }
}

impl Node {
    pub fn api(&self) -> String {
        format!("{}:6443", self.ip)
    }
    pub fn client_endpoint(&self) -> String {
        format!("https://{}:2379", self.ip)
    }
    pub fn log_path(&self) -> PathBuf {
        self.data.with_extension("log")
    }
}

impl Cluster {
    /// Starts `size` members: the first with --init, the others joining it.
    pub fn start(subnet: u8, size: usize, extra_args: &[&str]) -> Cluster {
        let ips: Vec<String> = (1..=size).map(|i| format!("127.0.{subnet}.{i}")).collect();
        Self::start_at(subnet, &ips, None, extra_args)
    }

    /// Members at `ips`, inside `netns` when given.
    pub fn start_at(
        subnet: u8,
        ips: &[String],
        netns: Option<&str>,
        extra_args: &[&str],
    ) -> Cluster {
        let size = ips.len();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            subnet,
            netns: netns.map(str::to_string),
        };
        for (i, ip) in ips.iter().enumerate() {
            let index = i + 1;
            let data = cluster.dir.path().join(format!("node{index}"));
            cluster.nodes.push(Node {
                index,
                ip: ip.clone(),
                data,
                child: None,
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            });
        }
        cluster.spawn(0, &["--init"]);
        wait_for(Duration::from_secs(30), "node1 token", || {
            cluster.nodes[0].data.join("node.json").exists()
        });
        let token = cluster.token();
        for i in 1..size {
            let join = format!("https://{}", cluster.nodes[0].api());
            cluster.spawn(i, &["--join", &join, "--token", &token]);
            let data = cluster.nodes[i].data.clone();
            wait_for(Duration::from_secs(30), "joined node identity", || {
                data.join("node.json").exists()
            });
        }
        cluster.wait_for_voters(size);
        cluster
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.nodes[0].data.join("token"))
            .expect("token")
            .trim()
            .to_string()
    }

    pub fn spawn(&mut self, i: usize, args: &[&str]) {
        let netns = self.netns.clone();
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("log file");
        let child = command_in(netns.as_deref(), SKIFF)
            .arg("server")
            .arg("--data")
            .arg(&node.data)
            .arg("--advertise")
            .arg(&node.ip)
            .arg("--name")
            .arg(format!("node{}", node.index))
            .args(&node.extra_args)
            .args(args)
            .env("SKIFF_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn skiff server");
        node.child = Some(child);
    }

    /// Restarts a stopped member with its data dir (it resumes by itself).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, &[]);
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `skiff status -o json` through member `i`.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let out = command_in(self.netns.as_deref(), SKIFF)
            .args(["status", "-o", "json", "--data"])
            .arg(&self.nodes[i].data)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn wait_for_voters(&self, expected: usize) {
        wait_for(
            Duration::from_secs(60),
            "all members voters with a leader",
            || {
                let Some(status) = self.status(0) else {
                    return false;
                };
                let members = status["members"].as_array().cloned().unwrap_or_default();
                status["leader"].is_string()
                    && members.len() == expected
                    && members
                        .iter()
                        .all(|m| m["role"] == "leader" || m["role"] == "follower")
            },
        );
    }

    /// Index of the current leader as seen by any running member.
    pub fn leader(&mut self) -> usize {
        let mut found = None;
        wait_for(Duration::from_secs(20), "a leader", || {
            for i in 0..self.nodes.len() {
                if self.nodes[i].child.is_none() {
                    continue;
                }
                if let Some(status) = self.status(i)
                    && let Some(name) = status["leader"].as_str()
                {
                    found = name
                        .strip_prefix("node")
                        .and_then(|n| n.parse::<usize>().ok())
                        .map(|n| n - 1);
                    if let Some(l) = found
                        && self.nodes[l].child.is_some()
                    {
                        return true;
                    }
                }
            }
            false
        });
        found.expect("leader")
    }

    pub fn pki(&self, file: &str) -> PathBuf {
        self.nodes[0].data.join("pki").join(file)
    }

    /// Runs etcdctl against member `i` with the admin certificate.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> Output {
        self.etcdctl_command(i, args).output().expect("run etcdctl")
    }

    pub fn etcdctl_command(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.nodes[i].client_endpoint())
            .arg("--cacert")
            .arg(self.pki("ca.crt"))
            .arg("--cert")
            .arg(self.pki("admin.crt"))
            .arg("--key")
            .arg(self.pki("admin.key"))
            .arg("--command-timeout=10s")
            .args(args);
        cmd
    }

    pub fn dump_logs(&self) {
        for node in &self.nodes {
            if let Ok(text) = std::fs::read_to_string(node.log_path()) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- node{} log (last 40 lines) ----", node.index);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

pub fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

pub fn assert_ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(output)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

impl Cluster {
    /// Number of keys under `prefix` as member `i` sees them (etcdctl 3.4 has no --count-only).
    pub fn count(&self, i: usize, prefix: &str, serializable: bool) -> i64 {
        let mut args = vec!["get", prefix, "--prefix", "--keys-only", "-w", "json"];
        if serializable {
            args.push("--consistency=s");
        }
        let out = assert_ok(&self.etcdctl(i, &args), "count");
        let value: serde_json::Value = serde_json::from_str(&out).expect("json");
        value["count"].as_i64().unwrap_or(0)
    }
}

/// A tonic etcd KV client to member `i` over mutual TLS with the admin certificate.
pub async fn etcd_client(
    cluster: &Cluster,
    i: usize,
) -> skiff_proto::etcdserverpb::kv_client::KvClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |f: &str| std::fs::read_to_string(cluster.pki(f)).expect("pki file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .identity(Identity::from_pem(read("admin.crt"), read("admin.key")))
        .domain_name("skiff-peer");
    let channel = Endpoint::from_shared(cluster.nodes[i].client_endpoint())
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    skiff_proto::etcdserverpb::kv_client::KvClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A multi-threaded runtime with rustls' ring provider installed, for tests that use tonic.
pub fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
