//! `skiff chaos`: start a local cluster (loopback mode), run a chaos scenario from the
//! skiff-chaos crate against it, save the report, exit non-zero on any violation. The fault
//! logic, workload and checkers all live in chaos/; this file only owns the processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use futures::future::BoxFuture;
use skiff_chaos::client::{Credentials, Endpoints};
use skiff_chaos::disk::{DISK_MEMBER, DISK_SIZE};
use skiff_chaos::netns::{NetnsTopology, current_netns, in_private_netns};
use skiff_chaos::scenario::FaultKind;
use skiff_chaos::{ChaosError, MemberControl, RunConfig, SCENARIOS, Scenario, run_scenario};

use crate::cli::local_cluster::LocalCluster;
use crate::pki::PEER_DNS_NAME;
use crate::progress::Progress;

/// The broken build switch of raft/src/node.rs: linearizable reads skip the read barrier.
const UNSAFE_READS_ENV: &str = "SKIFF_UNSAFE_SERIALIZABLE_READS";
/// Set by `--netns` for the re-executed chaos process: the name of its namespace topology.
const NETNS_ENV: &str = "SKIFF_CHAOS_NETNS";
/// The parent's (host) network namespace, so the child can prove it is not in it.
const HOST_NETNS_ENV: &str = "SKIFF_CHAOS_HOST_NETNS";
/// Member addresses inside the namespaces (never on the host).
const NETNS_SUBNET: &str = "10.77.0.";

#[derive(Subcommand, Debug)]
pub enum ChaosCommand {
    /// List the scenarios.
    List,
    /// Run one scenario (or --all) against a fresh local 3-member cluster.
    Run(ChaosRunArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ChaosRunArgs {
    /// Scenario name (see `skiff chaos list`).
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub scenario: Option<String>,
    /// Run every scenario in turn.
    #[arg(long)]
    pub all: bool,
    /// Seconds of workload (and faults) per scenario.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seed of the fault schedule (same seed, same faults). Default: from the clock.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where each run's report, history and member logs go.
    #[arg(long, default_value = "./chaos-results")]
    pub results: PathBuf,
    /// Members listen on PREFIX1..PREFIX3.
    #[arg(long, default_value = "127.0.40.")]
    pub ip_prefix: String,
    /// Concurrent workload clients (spread over the members).
    #[arg(long, default_value_t = 9)]
    pub clients: usize,
    /// Keys in the workload's key set.
    #[arg(long, default_value_t = 4)]
    pub keys: usize,
    /// Keep the members' data dirs even when the run passes.
    #[arg(long)]
    pub keep_data: bool,
    /// Run each member in its own network namespace, joined by a bridge in another one, with
    /// this process in a third (needs root). Enables the partition scenarios.
    #[arg(long)]
    pub netns: bool,
    /// Name prefix of the namespaces `--netns` creates (PREFIX<pid>-m1, ...), so concurrent
    /// runs on one machine are told apart.
    #[arg(long, default_value = "skc")]
    pub netns_prefix: String,
}

pub async fn run(command: ChaosCommand) -> anyhow::Result<()> {
    match command {
        ChaosCommand::List => {
            for s in SCENARIOS {
                println!("{:<24} {}", s.name, s.about);
            }
            Ok(())
        }
        ChaosCommand::Run(args) => run_all(args).await,
    }
}

async fn run_all(args: ChaosRunArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.keys == 0 || args.duration < 5 {
        bail!("--clients and --keys must be positive and --duration at least 5 s");
    }
    let inside = std::env::var(NETNS_ENV).ok();
    if args.netns && inside.is_none() {
        return run_in_netns(&args.netns_prefix).await;
    }
    let netns = match inside {
        Some(name) => {
            let host = std::env::var(HOST_NETNS_ENV).unwrap_or_default();
            if host.is_empty() || !in_private_netns(&host) {
                bail!("{NETNS_ENV} is set but this process runs in the host's network namespace");
            }
            Some(NetnsTopology::existing(&name, NETNS_SUBNET, 3))
        }
        None => None,
    };
    let scenarios: Vec<Scenario> = if args.all {
        SCENARIOS
            .iter()
            .copied()
            .filter(|s| {
                let runnable = netns.is_some() || !s.needs_netns();
                if !runnable {
                    eprintln!("skipping {}: needs --netns", s.name);
                }
                runnable
            })
            .collect()
    } else {
        let name = args.scenario.as_deref().unwrap_or_default();
        let scenario =
            Scenario::find(name).ok_or_else(|| ChaosError::UnknownScenario(name.into()))?;
        if scenario.needs_netns() && netns.is_none() {
            return Err(ChaosError::NeedsNetns(name.into()).into());
        }
        vec![scenario]
    };
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let broken = std::env::var(UNSAFE_READS_ENV).is_ok_and(|v| v == "1");
    if broken {
        eprintln!(
            "WARNING: {UNSAFE_READS_ENV}=1: members serve reads without the read barrier; expect violations"
        );
    }
    let mut failed = Vec::new();
    for scenario in scenarios {
        let passed = run_one(&args, scenario, seed, broken, netns.as_ref()).await?;
        if !passed {
            failed.push(scenario.name);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("violations found in: {}", failed.join(", ")))
    }
}

/// Creates the namespaces, re-runs this very command inside the control namespace, and
/// removes the namespaces (and anything left running in them) whatever happens.
async fn run_in_netns(prefix: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("--netns needs root (it creates network namespaces)");
    }
    let host = current_netns().ok_or_else(|| anyhow!("cannot read /proc/self/ns/net"))?;
    let valid =
        (1..=8).contains(&prefix.len()) && prefix.chars().all(|c| c.is_ascii_alphanumeric());
    if !valid {
        bail!("--netns-prefix must be 1-8 letters or digits");
    }
    let name = format!("{prefix}{}", std::process::id());
    let topology = NetnsTopology::create(&name, NETNS_SUBNET, 3)?;
    let outcome = async {
        let exe = std::env::current_exe().context("locating the skiff binary")?;
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &topology.ctl_ns()])
            .arg(exe)
            .args(std::env::args().skip(1))
            .env(NETNS_ENV, &name)
            .env(HOST_NETNS_ENV, &host)
            .kill_on_drop(true)
            .spawn()
            .context("starting the chaos run inside the namespaces")?;
        let status = tokio::select! {
            status = child.wait() => status?,
            _ = tokio::signal::ctrl_c() => {
                // The child got the same SIGINT; give it time to stop its members.
                match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                    Ok(status) => status?,
                    Err(_) => {
                        child.kill().await?;
                        bail!("interrupted");
                    }
                }
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(anyhow!(
                "the chaos run inside the namespaces failed ({status})"
            ))
        }
    }
    .await;
    topology.destroy();
    outcome
}

async fn run_one(
    args: &ChaosRunArgs,
    scenario: Scenario,
    seed: u64,
    broken: bool,
    netns: Option<&NetnsTopology>,
) -> anyhow::Result<bool> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = args
        .results
        .join(format!("{}-seed{seed}-{stamp}", scenario.name));
    let base = dir.join("cluster");
    let (ip_prefix, launchers) = match netns {
        Some(t) => (
            t.subnet.clone(),
            (0..3)
                .map(|m| vec!["ip".into(), "netns".into(), "exec".into(), t.member_ns(m)])
                .collect(),
        ),
        None => (args.ip_prefix.clone(), Vec::new()),
    };
    let progress = Progress::spinner(&format!(
        "chaos {}: starting 3 members on {ip_prefix}1-3",
        scenario.name
    ));
    let disk = if scenario.fault == FaultKind::DiskFull {
        Some(mount_small_disk(&base)?)
    } else {
        None
    };
    let server_args: Vec<String> = scenario.server_args.iter().map(|a| a.to_string()).collect();
    let started = LocalCluster::start_with_launchers(
        &base,
        &ip_prefix,
        3,
        &server_args,
        launchers,
        &progress,
    )
    .await;
    let outcome = match started {
        Ok(mut cluster) => {
            let outcome = drive(
                args,
                scenario,
                seed,
                &mut cluster,
                &progress,
                netns,
                disk.clone(),
            )
            .await;
            cluster.stop().await;
            outcome
        }
        Err(e) => Err(e),
    };
    if let Some(dir) = &disk {
        unmount(dir);
    }
    let (mut report, history) = outcome?;
    if broken {
        report.about = format!("{} [broken mode: {UNSAFE_READS_ENV}=1]", report.about);
    }
    let text = report.save(&dir, &history)?;
    progress.finish(&format!(
        "chaos {}: {}",
        scenario.name,
        if report.passed { "pass" } else { "FAIL" }
    ));
    println!("{}", report.text());
    println!("report: {}", text.display());
    if report.passed && !args.keep_data {
        remove_member_data(&base);
    }
    Ok(report.passed)
}

async fn drive(
    args: &ChaosRunArgs,
    scenario: Scenario,
    seed: u64,
    cluster: &mut LocalCluster,
    progress: &Progress,
    netns: Option<&NetnsTopology>,
    disk: Option<PathBuf>,
) -> anyhow::Result<(skiff_chaos::report::Report, skiff_chaos::history::History)> {
    let pki = cluster
        .pki()
        .context("loading the cluster's admin credentials")?;
    let endpoints = Endpoints {
        members: (1..=3)
            .map(|i| format!("https://{}:2379", cluster.member_ip(i)))
            .collect(),
        credentials: Credentials {
            ca_pem: pki.ca.cert_pem.clone(),
            cert_pem: pki.admin.cert_pem.clone(),
            key_pem: pki.admin.key_pem.clone(),
            domain: PEER_DNS_NAME.to_string(),
        },
    };
    let config = RunConfig {
        scenario,
        duration: Duration::from_secs(args.duration),
        seed,
        clients: args.clients,
        keys: args.keys,
        op_timeout: Duration::from_secs(3),
        results: args.results.clone(),
        netns: netns.cloned(),
        disk,
    };
    progress.step(&format!(
        "chaos {}: running for {} s (seed {seed})",
        scenario.name, args.duration
    ));
    let mut control = LocalMembers { cluster };
    Ok(run_scenario(&config, &endpoints, &mut control).await)
}

/// Mounts a small tmpfs as the data dir of `DISK_MEMBER` (before it starts), so the disk-full
/// fault fills that member's disk only. The mount lives in this process's private mount
/// namespace (`ip netns exec` made one), so it goes away with the run whatever happens.
fn mount_small_disk(base: &Path) -> anyhow::Result<PathBuf> {
    let dir = LocalCluster::member_dir(base, DISK_MEMBER + 1);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let status = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={DISK_SIZE}"),
            "chaos-disk",
        ])
        .arg(&dir)
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("mounting a tmpfs on {} failed ({status})", dir.display());
    }
    Ok(dir)
}

fn unmount(dir: &Path) {
    let unmounted = std::process::Command::new("umount")
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !unmounted {
        tracing::warn!(dir = %dir.display(), "could not unmount the chaos tmpfs");
    }
}

/// Drops the RocksDB dirs of a passing run; the member logs stay.
fn remove_member_data(base: &Path) {
    for index in 1..=3 {
        let dir = LocalCluster::member_dir(base, index);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::debug!(dir = %dir.display(), error = %e, "keeping member data");
        }
    }
}

/// The chaos crate's view of the local cluster: member i (0-based) is node i+1.
struct LocalMembers<'a> {
    cluster: &'a mut LocalCluster,
}

fn process_error(member: usize, e: anyhow::Error) -> ChaosError {
    ChaosError::Process {
        member,
        reason: format!("{e:#}"),
    }
}

impl MemberControl for LocalMembers<'_> {
    fn size(&self) -> usize {
        3
    }

    fn pid(&self, member: usize) -> Option<u32> {
        self.cluster.member_pid(member + 1)
    }

    fn kill(&mut self, member: usize) -> BoxFuture<'_, Result<(), ChaosError>> {
        Box::pin(async move {
            self.cluster
                .kill_member(member + 1)
                .await
                .map_err(|e| process_error(member, e))
        })
    }

    fn stop(&mut self, member: usize) -> BoxFuture<'_, Result<(), ChaosError>> {
        Box::pin(async move {
            self.cluster
                .stop_member(member + 1)
                .await
                .map_err(|e| process_error(member, e))
        })
    }

    fn restart(&mut self, member: usize) -> BoxFuture<'_, Result<(), ChaosError>> {
        Box::pin(async move {
            self.cluster
                .restart_member(member + 1)
                .map_err(|e| process_error(member, e))
        })
    }

    fn remove(&mut self, member: usize, via: usize) -> BoxFuture<'_, Result<u64, ChaosError>> {
        Box::pin(async move {
            self.cluster
                .remove_member(member + 1, via + 1)
                .await
                .map_err(|e| membership_error(member, e))
        })
    }

    fn rejoin(&mut self, member: usize, via: usize) -> BoxFuture<'_, Result<u64, ChaosError>> {
        Box::pin(async move {
            self.cluster
                .rejoin_member(member + 1, via + 1)
                .await
                .map_err(|e| membership_error(member, e))
        })
    }

    fn is_voter(&mut self, member: usize, via: usize) -> BoxFuture<'_, Result<bool, ChaosError>> {
        Box::pin(async move {
            self.cluster
                .is_voter(member + 1, via + 1)
                .await
                .map_err(|e| membership_error(member, e))
        })
    }
}

fn membership_error(member: usize, e: anyhow::Error) -> ChaosError {
    ChaosError::Membership {
        member,
        reason: format!("{e:#}"),
    }
}
