//! kube-proxy: programs the node's packet filter so Service addresses (ClusterIP, external and
//! load-balancer IPs, node ports) reach ready endpoints. A role of `skiff agent`, fed by its
//! gRPC watches of Services and EndpointSlices (never the REST API).
//!
//! What lives where: `model` turns the objects into service ports; `nft` (the default) and
//! `iptables` render them for their data plane; this module owns the sync loop: it coalesces
//! bursts of watch events, applies only what changed, and falls back to a full rewrite after a
//! failure.

pub mod announce;
pub mod iptables;
pub mod metrics;
pub mod model;
pub mod nft;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use model::Model;

/// The service CIDR the node must route so node-local clients reach ClusterIPs.
pub const SERVICE_CIDR: &str = "10.43.0.0/16";
/// The pod network: traffic from elsewhere into a Service is masqueraded.
pub const CLUSTER_CIDR: &str = crate::nodeapi::pod_cidr::CLUSTER_CIDR;

/// How long a burst of watch events may take to land before the rules are rendered.
const COALESCE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot run {program} (apt-get install {package}): {source}")]
    Spawn {
        program: &'static str,
        package: &'static str,
        source: std::io::Error,
    },
    #[error("{program} refused the rules: {message}")]
    Rejected {
        program: &'static str,
        message: String,
    },
}

/// The packet filter the rules go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPlane {
    Nftables,
    Iptables,
}

/// What was last applied, so a sync sends only the difference.
enum Applied {
    Nothing,
    Nftables(nft::Ruleset),
    Iptables(BTreeSet<String>),
}

/// The proxy of one node: the model the watches keep current, and a wake-up for the sync loop.
pub struct Proxy {
    node: String,
    node_ip: String,
    plane: DataPlane,
    model: Mutex<Model>,
    changed: Notify,
    pub metrics: metrics::ProxyMetrics,
}

impl Proxy {
    pub fn new(node: String, node_ip: String, plane: DataPlane) -> Arc<Self> {
        Arc::new(Proxy {
            node,
            node_ip,
            plane,
            model: Mutex::new(Model::default()),
            changed: Notify::new(),
            metrics: metrics::ProxyMetrics::new(plane),
        })
    }

    /// Changes the model and schedules a sync.
    pub fn update(&self, change: impl FnOnce(&mut Model)) {
        change(&mut self.model.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_one();
    }

    /// Applies the model whenever it changes, forever.
    pub async fn run(self: Arc<Self>) {
        prepare_node().await;
        let mut applied = Applied::Nothing;
        let mut announcer = announce::Announcer::new(self.node.clone(), self.node_ip.clone());
        loop {
            self.changed.notified().await;
            tokio::time::sleep(COALESCE).await;
            let started = Instant::now();
            let (addresses, nodes) = {
                let model = self.model.lock().unwrap_or_else(|p| p.into_inner());
                (model.load_balancer_ips(), model.nodes().clone())
            };
            announcer.sync(&addresses, &nodes).await;
            let outcome = self.sync(&applied).await;
            match &outcome {
                Ok(_) => self.metrics.synced(started.elapsed()),
                Err(_) => self.metrics.failed(),
            }
            match outcome {
                Ok(Some(next)) => {
                    applied = next;
                    info!(
                        took_ms = started.elapsed().as_millis() as u64,
                        "proxy rules applied"
                    );
                }
                Ok(None) => debug!("proxy rules unchanged"),
                Err(e) => {
                    warn!(error = %e, "proxy rules not applied; rewriting them in 1 s");
                    applied = Applied::Nothing;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.changed.notify_one();
                }
            }
        }
    }

    /// One sync; `None` when nothing changed since `applied`.
    async fn sync(&self, applied: &Applied) -> Result<Option<Applied>, ProxyError> {
        let ports = self.model.lock().unwrap_or_else(|p| p.into_inner()).ports();
        match self.plane {
            DataPlane::Nftables => {
                let wanted = nft::Ruleset::build(&ports, &self.node, CLUSTER_CIDR);
                let commands = match applied {
                    Applied::Nftables(old) if *old == wanted => return Ok(None),
                    Applied::Nftables(old) => nft::render_diff(old, &wanted),
                    _ => nft::render_full(&wanted),
                };
                apply_nft(&commands).await?;
                debug!(
                    service_ports = ports.len(),
                    chains = wanted.chain_count(),
                    "nftables synced"
                );
                Ok(Some(Applied::Nftables(wanted)))
            }
            DataPlane::Iptables => {
                let previous = match applied {
                    Applied::Iptables(chains) => chains.clone(),
                    _ => BTreeSet::new(),
                };
                let rendered = iptables::render(&ports, &self.node, CLUSTER_CIDR, &previous);
                run_with_input(
                    "iptables-restore",
                    "iptables",
                    &["--noflush", "-w", "5"],
                    &rendered.text,
                )
                .await?;
                ensure_iptables_jumps().await?;
                Ok(Some(Applied::Iptables(rendered.chains)))
            }
        }
    }
}

/// Runs one `nft -f -` transaction (also the agent's egress masquerade uses it).
pub async fn apply_nft(commands: &str) -> Result<(), ProxyError> {
    run_with_input("nft", "nftables", &["-f", "-"], commands).await
}

async fn run_with_input(
    program: &'static str,
    package: &'static str,
    args: &[&str],
    input: &str,
) -> Result<(), ProxyError> {
    let spawn_error = |source| ProxyError::Spawn {
        program,
        package,
        source,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(spawn_error)?;
    }
    let output = child.wait_with_output().await.map_err(spawn_error)?;
    if output.status.success() {
        return Ok(());
    }
    Err(ProxyError::Rejected {
        program,
        message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

async fn iptables(args: &[&str]) -> Result<bool, ProxyError> {
    let output = tokio::process::Command::new("iptables")
        .args(args)
        .output()
        .await
        .map_err(|source| ProxyError::Spawn {
            program: "iptables",
            package: "iptables",
            source,
        })?;
    Ok(output.status.success())
}

/// The jumps from the built-in chains into skiff's, inserted once (checked with `-C`).
async fn ensure_iptables_jumps() -> Result<(), ProxyError> {
    for (table, builtin, chain) in iptables::JUMPS {
        let rule = ["-t", table, "-C", builtin, "-j", chain, "-w", "5"];
        if !iptables(&rule).await? {
            let insert = ["-t", table, "-I", builtin, "1", "-j", chain, "-w", "5"];
            if !iptables(&insert).await? {
                return Err(ProxyError::Rejected {
                    program: "iptables",
                    message: format!("could not insert the jump {table}/{builtin} -> {chain}"),
                });
            }
        }
    }
    Ok(())
}

/// What the node's kernel needs besides the rules: bridged pod traffic through netfilter
/// (same-node backends), forwarding, and a route covering the service CIDR (node-local
/// clients; DNAT in the output hook re-routes to the endpoint).
async fn prepare_node() {
    for (path, value) in [
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
        ("/proc/sys/net/ipv4/ip_forward", "1"),
    ] {
        if let Err(e) = std::fs::write(path, value) {
            debug!(path, error = %e, "sysctl not set");
        }
    }
    let routed = |args: &'static [&'static str]| async move {
        tokio::process::Command::new("ip")
            .args(args)
            .output()
            .await
            .is_ok_and(|o| !o.stdout.is_empty())
    };
    if !routed(&["route", "show", SERVICE_CIDR]).await
        && !routed(&["route", "show", "default"]).await
    {
        let added = tokio::process::Command::new("ip")
            .args(["route", "add", SERVICE_CIDR, "dev", "lo"])
            .status()
            .await;
        if !added.is_ok_and(|s| s.success()) {
            warn!(
                "no route covers the service CIDR {SERVICE_CIDR}: node-local clients cannot reach ClusterIPs"
            );
        }
    }
}

/// Removes everything the proxy installed, in both data planes (`skiff agent --cleanup`).
pub async fn cleanup() -> Result<(), ProxyError> {
    apply_nft(&nft::render_cleanup()).await?;
    // iptables is optional: absent means there is nothing of ours in it.
    let Ok(true) = iptables(&["-t", "nat", "-S", "-w", "5"]).await else {
        return Ok(());
    };
    for (table, builtin, chain) in iptables::JUMPS {
        while iptables(&["-t", table, "-D", builtin, "-j", chain, "-w", "5"]).await? {}
    }
    for table in ["nat", "filter"] {
        let listed = tokio::process::Command::new("iptables")
            .args(["-t", table, "-S", "-w", "5"])
            .output()
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ours: Vec<&str> = listed
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|c| c.starts_with("SKIFF-"))
            .collect();
        for chain in &ours {
            iptables(&["-t", table, "-F", chain, "-w", "5"]).await?;
        }
        for chain in &ours {
            iptables(&["-t", table, "-X", chain, "-w", "5"]).await?;
        }
    }
    Ok(())
}
