//! `skiff bench store`: the same etcd-v3 load against a 3-member skiff and a 3-member etcd 3.4,
//! one after the other in the same run (never at once: they would fight for 2 cores), with the
//! ratios printed at the end and saved as JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::bench::load::{self, LoadResult, Workload};
use crate::bench::peers::{self, BenchPki, EtcdCluster};
use crate::cli::local_cluster::LocalCluster;
use crate::progress::Progress;

#[derive(Args, Debug, Clone)]
pub struct StoreBenchArgs {
    /// Requests per phase (puts, then linearizable gets).
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
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
}

pub async fn run(args: StoreBenchArgs) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let mut results = Vec::new();

    let progress = Progress::spinner("etcd 3.4: starting 3 members on 127.0.8.1-3");
    let ips: Vec<String> = (1..=3).map(|i| format!("127.0.8.{i}")).collect();
    let pki = BenchPki::generate(&args.dir.join("etcd-pki"), &ips)?;
    let mut etcd = EtcdCluster::start(&args.dir, "127.0.8.", &pki).await?;
    let channels = peers::channels(&etcd.endpoints, &pki.ca_pem, &pki.client).await?;
    let channels = only_member(channels, args.only_member);
    progress.step("etcd 3.4: running the load");
    let etcd_result = measure("etcd-3.4", &channels, &args).await;
    etcd.stop().await;
    results.push(etcd_result);

    progress.step("skiff: starting 3 members on 127.0.9.1-3");
    let mut skiff =
        LocalCluster::start(&args.dir.join("skiff"), "127.0.9.", 3, &[], &progress).await?;
    let member_pki = skiff.pki()?;
    let endpoints: Vec<String> = (1..=3)
        .map(|i| format!("https://{}:2379", skiff.member_ip(i)))
        .collect();
    let channels = peers::channels(&endpoints, &member_pki.ca.cert_pem, &member_pki.admin).await?;
    let channels = only_member(channels, args.only_member);
    progress.step("skiff: running the load");
    let skiff_result = measure("skiff", &channels, &args).await;
    skiff.stop().await;
    results.push(skiff_result);
    progress.finish("done");

    print_report(&results, &args);
    let path = args.dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results: {}", path.display());
    Ok(())
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

async fn measure(
    system: &str,
    channels: &[tonic::transport::Channel],
    args: &StoreBenchArgs,
) -> SystemResult {
    let put = load::run(
        channels,
        Workload::Put,
        args.clients,
        args.ops,
        args.value_size,
        args.keys,
    )
    .await;
    let get = load::run(
        channels,
        Workload::LinearizableGet,
        args.clients,
        args.ops,
        args.value_size,
        args.keys,
    )
    .await;
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
    SystemResult {
        system: system.to_string(),
        put,
        get,
        serializable_get,
    }
}

fn print_report(results: &[SystemResult], args: &StoreBenchArgs) {
    println!(
        "store benchmark: {} ops per phase, {} clients, {} B values, 3 members each, TLS on both",
        args.ops, args.clients, args.value_size
    );
    println!(
        "{:<10} {:<6} {:>10} {:>9} {:>9} {:>7}",
        "SYSTEM", "OP", "OPS/S", "P50 ms", "P99 ms", "ERRORS"
    );
    for r in results {
        let rows = [
            ("put", Some(&r.put)),
            ("get", Some(&r.get)),
            ("get-s", r.serializable_get.as_ref()),
        ];
        for (op, l) in rows.into_iter().filter_map(|(op, l)| l.map(|l| (op, l))) {
            println!(
                "{:<10} {:<6} {:>10.0} {:>9.2} {:>9.2} {:>7}",
                r.system, op, l.per_second, l.p50_ms, l.p99_ms, l.errors
            );
        }
    }
    if let [etcd, skiff] = results {
        println!(
            "ratio skiff/etcd: put throughput {:.2}x, put p99 {:.2}x; get throughput {:.2}x, get p99 {:.2}x",
            skiff.put.per_second / etcd.put.per_second.max(1e-9),
            skiff.put.p99_ms / etcd.put.p99_ms.max(1e-9),
            skiff.get.per_second / etcd.get.per_second.max(1e-9),
            skiff.get.p99_ms / etcd.get.p99_ms.max(1e-9),
        );
    }
}
