//! `skiff bench backup`: backup and restore throughput beside etcd's own tools, on the same data:
//! N keys of V bytes are loaded into a 3-member etcd 3.4 and a 3-member skiff; then
//! `etcdctl snapshot save` / `etcdctl snapshot restore` and `skiff backup` / `skiff restore` are
//! timed one after the other (never at once: they would fight for 2 cores), and the ratios
//! printed (goal: at least etcd's speed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use crate::bench::api::median;
use crate::bench::load::{self, Workload};
use crate::bench::peers::{self, BenchPki, EtcdCluster};
use crate::cli::local_cluster::LocalCluster;
use crate::pki::write_file;
use crate::progress::Progress;

#[derive(Args, Debug, Clone)]
pub struct BackupBenchArgs {
    /// Keys loaded into each system.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Value size in bytes (a small Kubernetes object is about 1 KiB of JSON).
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Working directory.
    #[arg(long, default_value = "./skiff-bench-backup")]
    pub dir: PathBuf,
}

#[derive(Serialize, Debug, Default)]
struct Timing {
    seconds: f64,
    keys_per_second: f64,
    mb_per_second: f64,
    bytes: u64,
}

#[derive(Serialize, Debug, Default)]
struct SystemResult {
    system: String,
    save: Timing,
    restore: Timing,
}

fn timing(seconds: f64, keys: u64, bytes: u64) -> Timing {
    let seconds = seconds.max(1e-6);
    Timing {
        seconds,
        keys_per_second: keys as f64 / seconds,
        mb_per_second: bytes as f64 / 1e6 / seconds,
        bytes,
    }
}

/// How often each restore is timed (the median counts: single runs of ~0.5 s vary a lot on a
/// shared 2-core machine).
const RESTORE_RUNS: usize = 3;

/// The median time of `RESTORE_RUNS` runs of the command `make(i)` builds.
fn median_of(make: impl Fn(usize) -> Command, what: &str) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for i in 0..RESTORE_RUNS {
        times.push(timed(make(i), what)?);
    }
    Ok(median(times))
}

/// Runs `command`, failing with its stderr; returns the seconds it took.
fn timed(mut command: Command, what: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed().as_secs_f64())
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

pub async fn run(args: BackupBenchArgs) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let exe = std::env::current_exe().context("locating the skiff binary")?;
    let mut results = Vec::new();

    let progress = Progress::spinner("etcd 3.4: starting 3 members on 127.0.11.1-3");
    let ips: Vec<String> = (1..=3).map(|i| format!("127.0.11.{i}")).collect();
    let pki = BenchPki::generate(&dir.join("etcd-pki"), &ips)?;
    write_file(
        &dir.join("etcd-pki/client.crt"),
        pki.client.cert_pem.as_bytes(),
        false,
    )?;
    write_file(
        &dir.join("etcd-pki/client.key"),
        pki.client.key_pem.as_bytes(),
        true,
    )?;
    let mut etcd = EtcdCluster::start(&dir, "127.0.11.", &pki).await?;
    let channels = peers::channels(&etcd.endpoints, &pki.ca_pem, &pki.client).await?;
    progress.step(&format!("etcd 3.4: loading {} keys", args.keys));
    load::run(
        &channels,
        Workload::Put,
        64,
        args.keys,
        args.value_size,
        args.keys,
    )
    .await;
    progress.step("etcd 3.4: etcdctl snapshot save / restore");
    let etcd_file = dir.join("etcd.db");
    let mut save = Command::new("etcdctl");
    save.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(&etcd.endpoints[0])
        .arg("--cacert")
        .arg(dir.join("etcd-pki/ca.crt"))
        .arg("--cert")
        .arg(dir.join("etcd-pki/client.crt"))
        .arg("--key")
        .arg(dir.join("etcd-pki/client.key"))
        .args(["snapshot", "save"])
        .arg(&etcd_file);
    let save_s = timed(save, "etcdctl snapshot save")?;
    etcd.stop().await;
    let restore_s = median_of(
        |i| {
            let mut restore = Command::new("etcdctl");
            restore
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(&etcd_file)
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-restored-{i}")));
            restore
        },
        "etcdctl snapshot restore",
    )?;
    let bytes = size(&etcd_file);
    results.push(SystemResult {
        system: "etcd-3.4".into(),
        save: timing(save_s, args.keys, bytes),
        restore: timing(restore_s, args.keys, bytes),
    });

    progress.step("skiff: starting 3 members on 127.0.12.1-3");
    let mut skiff = LocalCluster::start(&dir.join("skiff"), "127.0.12.", 3, &[], &progress).await?;
    let member_pki = skiff.pki()?;
    let endpoints: Vec<String> = (1..=3)
        .map(|i| format!("https://{}:2379", skiff.member_ip(i)))
        .collect();
    let channels = peers::channels(&endpoints, &member_pki.ca.cert_pem, &member_pki.admin).await?;
    progress.step(&format!("skiff: loading {} keys", args.keys));
    load::run(
        &channels,
        Workload::Put,
        64,
        args.keys,
        args.value_size,
        args.keys,
    )
    .await;
    progress.step("skiff: backup / restore");
    let skiff_file = dir.join("skiff.snap");
    let mut save = Command::new(&exe);
    save.args(["backup", "--data"])
        .arg(LocalCluster::member_dir(&skiff.base, 1))
        .arg("--out")
        .arg(&skiff_file);
    let save_s = timed(save, "skiff backup")?;
    skiff.stop().await;
    let restore_s = median_of(
        |i| {
            let mut restore = Command::new(&exe);
            restore
                .args(["restore", "--from"])
                .arg(&skiff_file)
                .arg("--data")
                .arg(dir.join(format!("skiff-restored-{i}")))
                .args(["--advertise", "127.0.12.9"]);
            restore
        },
        "skiff restore",
    )?;
    let bytes = size(&skiff_file);
    results.push(SystemResult {
        system: "skiff".into(),
        save: timing(save_s, args.keys, bytes),
        restore: timing(restore_s, args.keys, bytes),
    });
    progress.finish("done");

    println!();
    println!(
        "{:<10} {:>12} {:>10} {:>12} {:>10} {:>12}",
        "system", "save keys/s", "save MB/s", "restore k/s", "rest MB/s", "file bytes"
    );
    for r in &results {
        println!(
            "{:<10} {:>12.0} {:>10.1} {:>12.0} {:>10.1} {:>12}",
            r.system,
            r.save.keys_per_second,
            r.save.mb_per_second,
            r.restore.keys_per_second,
            r.restore.mb_per_second,
            r.save.bytes
        );
    }
    if let [etcd, skiff] = results.as_slice() {
        println!(
            "ratio skiff/etcd (keys/s): save {:.2}x, restore {:.2}x",
            skiff.save.keys_per_second / etcd.save.keys_per_second,
            skiff.restore.keys_per_second / etcd.restore.keys_per_second
        );
    }
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?;
    println!("results: {}", path.display());
    Ok(())
}
