//! `skiff bench store`: the same etcd-v3 load against a 3-member skiff and a 3-member etcd 3.4,
//! one after the other in the same run (never at once: they would fight for 2 cores), with the
//! ratios printed at the end and saved as JSON; `--rounds` repeats the pair with fresh clusters
//! and reports the median ratios.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::bench::api::{cpu_seconds, median, total_cpu_seconds};
use crate::bench::load::{self, LoadResult, Workload};
use crate::bench::peers::{self, BenchPki, EtcdCluster};
use crate::cli::local_cluster::LocalCluster;
use crate::progress::Progress;

#[derive(Args, Debug, Clone)]
pub struct StoreBenchArgs {
    /// Requests per phase (puts, then linearizable gets).
    #[arg(long, default_value_t = 50_000)]
    pub ops: u64,
    /// Rounds, each with a fresh etcd and a fresh skiff (the first system alternates); the
    /// report gives each round's ratios and their median. This VM's run-to-run spread (either
    /// system's rate moves by up to 2x) is why one round says little.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Also measure serializable (local, no read index) gets.
    #[arg(long)]
    pub serializable_reads: bool,
    /// Send every request to member N only (1-based) instead of spreading over all members;
    /// e.g. 1 targets the leader after start-up and shows the cost of follower forwarding.
    #[arg(long)]
    pub only_member: Option<usize>,
    /// Threads of the load generator's runtime (1: a single-threaded runtime). It shares the
    /// 2 cores with the members, so its own CPU per request (reported) is taken from both
    /// systems alike.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Working directory (data dirs, logs, results.json).
    #[arg(long, default_value = "./skiff-bench")]
    pub dir: PathBuf,
}

#[derive(Serialize, Debug)]
struct SystemResult {
    system: String,
    put: LoadResult,
    get: LoadResult,
    serializable_get: Option<LoadResult>,
    /// CPU time (user + system) the three members used per request in each phase, in
    /// microseconds: what the work costs, a figure other load on the VM moves far less than
    /// a rate (steal and neighbours slow the run, they do not add work to it).
    put_cpu_us_per_op: f64,
    get_cpu_us_per_op: f64,
    /// The load generator's own CPU per request in each phase (this process), in microseconds.
    client_put_cpu_us_per_op: f64,
    client_get_cpu_us_per_op: f64,
}

pub async fn run(args: StoreBenchArgs) -> anyhow::Result<()> {
    if args.rounds == 0 {
        anyhow::bail!("--rounds must be at least 1");
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let mut rounds = Vec::new();
    let progress = Progress::spinner("store benchmark");
    for round in 1..=args.rounds {
        let run = RoundRun {
            dir: args.dir.join(format!("round-{round}")),
            args: &args,
            round,
            progress: &progress,
        };
        // Alternate which system goes first, so a drift of the machine over the run (other
        // tenants, page cache, thermal) does not always favour the same one.
        let (etcd, skiff) = if round % 2 == 1 {
            let etcd = run.etcd().await?;
            (etcd, run.skiff().await?)
        } else {
            let skiff = run.skiff().await?;
            (run.etcd().await?, skiff)
        };
        rounds.push(Round { round, etcd, skiff });
    }
    progress.finish("done");

    print_report(&rounds, &args);
    let path = args.dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&rounds)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results: {}", path.display());
    Ok(())
}

/// One round: a fresh 3-member etcd and a fresh 3-member skiff, each loaded on its own.
#[derive(Serialize, Debug)]
struct Round {
    round: usize,
    etcd: SystemResult,
    skiff: SystemResult,
}

impl Round {
    fn put_ratio(&self) -> f64 {
        self.skiff.put.per_second / self.etcd.put.per_second.max(1e-9)
    }
    fn put_p99_ratio(&self) -> f64 {
        self.skiff.put.p99_ms / self.etcd.put.p99_ms.max(1e-9)
    }
    fn get_ratio(&self) -> f64 {
        self.skiff.get.per_second / self.etcd.get.per_second.max(1e-9)
    }
    fn get_p99_ratio(&self) -> f64 {
        self.skiff.get.p99_ms / self.etcd.get.p99_ms.max(1e-9)
    }
    fn put_cpu_ratio(&self) -> f64 {
        self.skiff.put_cpu_us_per_op / self.etcd.put_cpu_us_per_op.max(1e-9)
    }
}

/// What one round's two runs share.
struct RoundRun<'a> {
    dir: PathBuf,
    args: &'a StoreBenchArgs,
    round: usize,
    progress: &'a Progress,
}

impl RoundRun<'_> {
    /// A progress line naming the round.
    fn announce(&self, what: &str) {
        let (round, rounds) = (self.round, self.args.rounds);
        self.progress
            .step(&format!("round {round}/{rounds}: {what}"));
    }

    async fn etcd(&self) -> anyhow::Result<SystemResult> {
        self.announce("etcd 3.4: starting 3 members on 127.0.8.1-3");
        let ips: Vec<String> = (1..=3).map(|i| format!("127.0.8.{i}")).collect();
        let pki = BenchPki::generate(&self.dir.join("etcd-pki"), &ips)?;
        let mut etcd = EtcdCluster::start(&self.dir, "127.0.8.", &pki).await?;
        let channels = peers::channels(&etcd.endpoints, &pki.ca_pem, &pki.client).await?;
        let channels = only_member(channels, self.args.only_member);
        self.announce("etcd 3.4: running the load");
        let result = measure("etcd-3.4", &channels, self.args, &etcd.pids()).await;
        etcd.stop().await;
        Ok(result)
    }

    async fn skiff(&self) -> anyhow::Result<SystemResult> {
        self.announce("skiff: starting 3 members on 127.0.9.1-3");
        let dir = self.dir.join("skiff");
        let mut skiff = LocalCluster::start(&dir, "127.0.9.", 3, &[], self.progress).await?;
        let member_pki = skiff.pki()?;
        let endpoints: Vec<String> = (1..=3)
            .map(|i| format!("https://{}:2379", skiff.member_ip(i)))
            .collect();
        let channels =
            peers::channels(&endpoints, &member_pki.ca.cert_pem, &member_pki.admin).await?;
        let channels = only_member(channels, self.args.only_member);
        self.announce("skiff: running the load");
        let pids: Vec<Option<u32>> = (1..=3).map(|i| skiff.member_pid(i)).collect();
        let result = measure("skiff", &channels, self.args, &pids).await;
        skiff.stop().await;
        Ok(result)
    }
}

fn only_member(
    channels: Vec<tonic::transport::Channel>,
    member: Option<usize>,
) -> Vec<tonic::transport::Channel> {
    match member.and_then(|m| channels.get(m.wrapping_sub(1)).cloned()) {
        Some(channel) => vec![channel],
        None => channels,
    }
}

/// Microseconds of member CPU per request of a phase that used `cpu_seconds`.
fn cpu_us_per_op(cpu_seconds: f64, load: &LoadResult) -> f64 {
    cpu_seconds * 1e6 / (load.ops.max(1) as f64)
}

async fn measure(
    system: &str,
    channels: &[tonic::transport::Channel],
    args: &StoreBenchArgs,
    pids: &[Option<u32>],
) -> SystemResult {
    let client = || cpu_seconds(Some(std::process::id()));
    let client_before_puts = client();
    let cpu_before_puts = total_cpu_seconds(pids);
    let put = load::run(
        channels,
        Workload::Put,
        args.clients,
        args.ops,
        args.value_size,
        args.keys,
    )
    .await;
    let cpu_before_gets = total_cpu_seconds(pids);
    let client_before_gets = client();
    let get = load::run(
        channels,
        Workload::LinearizableGet,
        args.clients,
        args.ops,
        args.value_size,
        args.keys,
    )
    .await;
    let cpu_after_gets = total_cpu_seconds(pids);
    let client_after_gets = client();
    let put_cpu_us_per_op = cpu_us_per_op(cpu_before_gets - cpu_before_puts, &put);
    let get_cpu_us_per_op = cpu_us_per_op(cpu_after_gets - cpu_before_gets, &get);
    let serializable_get = if args.serializable_reads {
        let workload = Workload::SerializableGet;
        Some(
            load::run(
                channels,
                workload,
                args.clients,
                args.ops,
                args.value_size,
                args.keys,
            )
            .await,
        )
    } else {
        None
    };
    let client_put_cpu_us_per_op = cpu_us_per_op(client_before_gets - client_before_puts, &put);
    let client_get_cpu_us_per_op = cpu_us_per_op(client_after_gets - client_before_gets, &get);
    SystemResult {
        system: system.to_string(),
        put,
        get,
        serializable_get,
        put_cpu_us_per_op,
        get_cpu_us_per_op,
        client_put_cpu_us_per_op,
        client_get_cpu_us_per_op,
    }
}

fn print_report(rounds: &[Round], args: &StoreBenchArgs) {
    println!(
        "store benchmark: {} ops per phase, {} clients, {} B values, 3 members each, TLS on both, {} round(s)",
        args.ops, args.clients, args.value_size, args.rounds
    );
    println!(
        "{:<6} {:<10} {:<6} {:>10} {:>9} {:>9} {:>7} {:>10} {:>12}",
        "ROUND", "SYSTEM", "OP", "OPS/S", "P50 ms", "P99 ms", "ERRORS", "CPU us/op", "CLIENT us/op"
    );
    for round in rounds {
        for r in [&round.etcd, &round.skiff] {
            // The serializable phase's CPU is not measured (it is an extra, rarely run).
            let us = |v: f64| format!("{v:.0}");
            let rows = [
                (
                    "put",
                    Some(&r.put),
                    us(r.put_cpu_us_per_op),
                    us(r.client_put_cpu_us_per_op),
                ),
                (
                    "get",
                    Some(&r.get),
                    us(r.get_cpu_us_per_op),
                    us(r.client_get_cpu_us_per_op),
                ),
                (
                    "get-s",
                    r.serializable_get.as_ref(),
                    "-".to_string(),
                    "-".to_string(),
                ),
            ];
            for (op, l, cpu, client) in rows
                .into_iter()
                .filter_map(|(op, l, cpu, client)| l.map(|l| (op, l, cpu, client)))
            {
                println!(
                    "{:<6} {:<10} {:<6} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>10} {:>12}",
                    round.round,
                    r.system,
                    op,
                    l.per_second,
                    l.p50_ms,
                    l.p99_ms,
                    l.errors,
                    cpu,
                    client
                );
            }
        }
        println!(
            "{:<6} ratio skiff/etcd: put throughput {:.2}x, put p99 {:.2}x, put CPU/op {:.2}x; get throughput {:.2}x, get p99 {:.2}x",
            round.round,
            round.put_ratio(),
            round.put_p99_ratio(),
            round.put_cpu_ratio(),
            round.get_ratio(),
            round.get_p99_ratio(),
        );
    }
    if rounds.len() > 1 {
        let median_of = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        println!(
            "median of {} rounds: put throughput {:.2}x, put p99 {:.2}x, put CPU/op {:.2}x; get throughput {:.2}x, get p99 {:.2}x",
            rounds.len(),
            median_of(Round::put_ratio),
            median_of(Round::put_p99_ratio),
            median_of(Round::put_cpu_ratio),
            median_of(Round::get_ratio),
            median_of(Round::get_p99_ratio),
        );
    }
}
