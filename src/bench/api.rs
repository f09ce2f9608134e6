//! `skiff bench api`: the Kubernetes REST API of a 3-member cluster under load, through
//! HTTP/2 + mTLS as client-go talks to it:
//! 1. watch fan-out: W watchers of pods, then a few pod creations; each watcher's delivery
//!    latency (create sent -> event received) is one sample (goal: p99 <= 100 ms at W = 1000);
//! 2. creates at a fixed rate (open loop, default 500/s; goal: p99 <= 50 ms);
//! 3. gets by name and paged lists (closed loop);
//! 4. the max sustained create rate (closed loop, C clients);
//!
//! and each member's RSS idle and holding everything created (the memory targets: <= 150 MB
//! idle, <= 600 MB with 10k pods). No peer is run: there is no kube-apiserver on this machine,
//! so the figures stand against the Kubernetes SLOs quoted in the issue.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use hyper::Method;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::apiclient::ApiClient;
use crate::cli::local_cluster::LocalCluster;
use crate::json_path::JsonPath;
use crate::progress::Progress;

#[derive(Args, Debug, Clone)]
pub struct ApiBenchArgs {
    /// Creates per second in the fixed-rate phase.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Seconds of the fixed-rate phase (rate x seconds pods are created).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Concurrent clients of the closed-loop phases.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Watchers of the fan-out phase.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Pods created while the watchers watch.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Working directory (data dirs, logs, results.json).
    #[arg(long, default_value = "./skiff-bench-api")]
    pub dir: PathBuf,
}

#[derive(Serialize, Debug, Default, Clone)]
pub(super) struct Latency {
    pub samples: usize,
    pub errors: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize, Debug, Default)]
struct Report {
    watch_delivery: Latency,
    create_at_rate: Latency,
    get: Latency,
    list: Latency,
    max_create: Latency,
    pods_held: u64,
    rss_idle_mb: Vec<f64>,
    rss_loaded_mb: Vec<f64>,
}

pub(super) fn summarize(mut ms: Vec<f64>, errors: u64, seconds: f64) -> Latency {
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        if ms.is_empty() {
            0.0
        } else {
            ms[((ms.len() as f64 - 1.0) * q).round() as usize]
        }
    };
    Latency {
        samples: ms.len(),
        errors,
        per_second: if seconds > 0.0 {
            ms.len() as f64 / seconds
        } else {
            0.0
        },
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// RSS figures of the members, "a / b / c" (MB).
/// The middle value (the mean of the two middle ones for an even count).
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

pub(super) fn megabytes(v: &[f64]) -> String {
    v.iter()
        .map(|m| format!("{m:.0}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// CPU time (user + system, seconds) process `pid` has used so far: a figure that, unlike
/// a rate, says what the work costs even when other jobs share the cores.
pub(super) fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else {
        return 0.0;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    crate::procfs::stat_fields(pid)
        .and_then(|fields| {
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0)
}

/// CPU seconds the processes `pids` have used so far, together.
pub(super) fn total_cpu_seconds(pids: &[Option<u32>]) -> f64 {
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

pub(super) fn rss_mb(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else {
        return 0.0;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A pod bound to a node that does not exist: nothing schedules or runs it, so the load is
/// the API server's and the store's alone.
fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"},
                     "annotations": {"bench.skiff.dev/sent": now_nanos().to_string()}},
        "spec": {"nodeName": "bench-node", "containers": [{"name": "c", "image": "busybox"}]},
    })
}

struct Clients {
    members: Vec<ApiClient>,
}

impl Clients {
    fn pick(&self, i: usize) -> &ApiClient {
        &self.members[i % self.members.len()]
    }
}

pub async fn run(args: ApiBenchArgs) -> anyhow::Result<()> {
    on_three_members(
        &args.dir,
        "127.0.10.",
        async |cluster, progress| measure(&args, cluster, progress).await,
        |report| print_report(report, &args),
    )
    .await
}

/// The frame of a benchmark on a fresh 3-member cluster (separate processes, data and logs in
/// DIR/skiff, members on PREFIX1-3): measure, stop the cluster whatever the outcome, then
/// print the report and save it as DIR/results.json.
pub(super) async fn on_three_members<R: Serialize>(
    dir: &std::path::Path,
    prefix: &str,
    measure: impl AsyncFnOnce(&LocalCluster, &Progress) -> anyhow::Result<R>,
    print: impl FnOnce(&R),
) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let progress = Progress::spinner(&format!("skiff: starting 3 members on {prefix}1-3"));
    let mut cluster = LocalCluster::start(&dir.join("skiff"), prefix, 3, &[], &progress).await?;
    let result = measure(&cluster, &progress).await;
    cluster.stop().await;
    let report = result?;
    progress.finish("done");
    print(&report);
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results: {}", path.display());
    Ok(())
}

/// A client of member `member`'s Kubernetes API as the cluster's admin.
pub(super) async fn connect(cluster: &LocalCluster, member: usize) -> anyhow::Result<ApiClient> {
    let pki = cluster.pki()?;
    ApiClient::connect(
        &format!("{}:6443", cluster.member_ip(member)),
        &pki.ca.cert_pem,
        &pki.admin,
    )
    .await
}

async fn measure(
    args: &ApiBenchArgs,
    cluster: &LocalCluster,
    progress: &Progress,
) -> anyhow::Result<Report> {
    let mut members = Vec::new();
    for i in 1..=3 {
        members.push(connect(cluster, i).await?);
    }
    let clients = Arc::new(Clients { members });
    for ns in ["bench", "bench-watch"] {
        let (status, body) = clients
            .pick(0)
            .call(
                Method::POST,
                "/api/v1/namespaces",
                Some(&json!({"metadata": {"name": ns}})),
            )
            .await?;
        if !status.is_success() {
            bail!(
                "creating namespace {ns}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut report = Report {
        rss_idle_mb: (1..=3).map(|i| rss_mb(cluster.member_pid(i))).collect(),
        ..Report::default()
    };

    progress.step(&format!(
        "watch fan-out: {} watchers, {} changes",
        args.watchers, args.changes
    ));
    report.watch_delivery = watch_fan_out(args, cluster, &clients).await?;

    progress.step(&format!(
        "creates at {}/s for {} s",
        args.rate, args.seconds
    ));
    let (created, latency) = creates_at_rate(args, &clients).await;
    report.create_at_rate = latency;
    report.pods_held = created;

    progress.step("gets and lists");
    report.get = closed_loop(args, &clients, Duration::from_secs(5), move |i| {
        (
            Method::GET,
            format!(
                "/api/v1/namespaces/bench/pods/p-{}",
                i as u64 % created.max(1)
            ),
            None,
        )
    })
    .await;
    report.list = closed_loop(args, &clients, Duration::from_secs(5), |_| {
        (
            Method::GET,
            "/api/v1/namespaces/bench/pods?limit=500".to_string(),
            None,
        )
    })
    .await;

    progress.step("max sustained create rate");
    let base = AtomicU64::new(0);
    let base = Arc::new(base);
    report.max_create = closed_loop(
        args,
        &clients,
        Duration::from_secs(args.seconds.min(10)),
        move |_| {
            let n = base.fetch_add(1, Ordering::Relaxed);
            (
                Method::POST,
                "/api/v1/namespaces/bench/pods".to_string(),
                Some(pod(&format!("max-{n}"))),
            )
        },
    )
    .await;
    report.pods_held += report.max_create.samples as u64;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.rss_loaded_mb = (1..=3).map(|i| rss_mb(cluster.member_pid(i))).collect();
    Ok(report)
}

/// Watchers on their own connections (100 streams each), then `changes` creations.
async fn watch_fan_out(
    args: &ApiBenchArgs,
    cluster: &LocalCluster,
    clients: &Clients,
) -> anyhow::Result<Latency> {
    let (_, body) = clients
        .pick(0)
        .call(Method::GET, "/api/v1/namespaces/bench-watch/pods", None)
        .await?;
    let list: Value = serde_json::from_slice(&body)?;
    let rv = list
        .at("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("0")
        .to_string();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicU64::new(0));
    let mut connections = Vec::new();
    for c in 0..args.watchers.div_ceil(100) {
        connections.push(connect(cluster, 1 + c % 3).await?);
    }
    let path = format!("/api/v1/namespaces/bench-watch/pods?watch=1&resourceVersion={rv}");
    let mut tasks = Vec::new();
    for w in 0..args.watchers {
        let client = connections[w / 100].clone();
        let (path, samples, received) = (path.clone(), samples.clone(), received.clone());
        let changes = args.changes;
        tasks.push(tokio::spawn(async move {
            let mut seen = 0;
            let mut mine = Vec::new();
            let _ = client
                .watch(&path, |line| {
                    let sent = serde_json::from_slice::<Value>(line).ok().and_then(|e| {
                        e.at("/object/metadata/annotations/bench.skiff.dev~1sent")
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse::<u128>().ok())
                    });
                    if let Some(sent) = sent {
                        mine.push((now_nanos().saturating_sub(sent)) as f64 / 1e6);
                        received.fetch_add(1, Ordering::Relaxed);
                        seen += 1;
                    }
                    seen < changes
                })
                .await;
            samples.lock().await.extend(mine);
        }));
    }
    // Let every watch reach the server before the first change.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    for i in 0..args.changes {
        let _ = clients
            .pick(i)
            .call(
                Method::POST,
                "/api/v1/namespaces/bench-watch/pods",
                Some(&pod(&format!("w-{i}"))),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected = (args.watchers * args.changes) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.abort();
    }
    let samples = std::mem::take(&mut *samples.lock().await);
    let missing = expected.saturating_sub(samples.len() as u64);
    Ok(summarize(samples, missing, started.elapsed().as_secs_f64()))
}

/// Open loop: one create every 1/rate s whatever the replies, for `seconds`.
async fn creates_at_rate(args: &ApiBenchArgs, clients: &Arc<Clients>) -> (u64, Latency) {
    let total = args.rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let samples = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(started + interval * i as u32).await;
        let (clients, samples, errors) = (clients.clone(), samples.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let begin = Instant::now();
            let body = pod(&format!("p-{i}"));
            match clients
                .pick(i as usize)
                .call(Method::POST, "/api/v1/namespaces/bench/pods", Some(&body))
                .await
            {
                Ok((status, _)) if status.is_success() => {
                    samples
                        .lock()
                        .await
                        .push(begin.elapsed().as_secs_f64() * 1000.0);
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let samples = std::mem::take(&mut *samples.lock().await);
    let created = samples.len() as u64;
    (
        created,
        summarize(samples, errors.load(Ordering::Relaxed), seconds),
    )
}

type RequestFn = dyn Fn(usize) -> (Method, String, Option<Value>) + Send + Sync;

/// Closed loop: `clients` tasks each sending its next request when the last one returns.
async fn closed_loop(
    args: &ApiBenchArgs,
    clients: &Arc<Clients>,
    length: Duration,
    next: impl Fn(usize) -> (Method, String, Option<Value>) + Send + Sync + 'static,
) -> Latency {
    let next: Arc<RequestFn> = Arc::new(next);
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (clients, next, counter, errors) = (
            clients.clone(),
            next.clone(),
            counter.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed) as usize;
                let (method, path, body) = next(n);
                let begin = Instant::now();
                match clients.pick(c).call(method, &path, body.as_ref()).await {
                    Ok((status, _)) if status.is_success() => {
                        mine.push(begin.elapsed().as_secs_f64() * 1000.0)
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            mine
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        if let Ok(mine) = task.await {
            samples.extend(mine);
        }
    }
    summarize(
        samples,
        errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    )
}

fn print_report(r: &Report, args: &ApiBenchArgs) {
    println!();
    println!(
        "{:<28} {:>9} {:>7} {:>10} {:>9} {:>9}",
        "phase", "samples", "errors", "per sec", "p50 ms", "p99 ms"
    );
    let rows = [
        (
            format!("watch delivery ({} w)", args.watchers),
            &r.watch_delivery,
        ),
        (format!("create @ {}/s", args.rate), &r.create_at_rate),
        ("get".to_string(), &r.get),
        ("list (limit 500)".to_string(), &r.list),
        (
            format!("create max ({} clients)", args.clients),
            &r.max_create,
        ),
    ];
    for (name, l) in rows {
        println!(
            "{name:<28} {:>9} {:>7} {:>10.0} {:>9.2} {:>9.2}",
            l.samples, l.errors, l.per_second, l.p50_ms, l.p99_ms
        );
    }
    println!(
        "RSS idle (MB, members 1/2/3):          {}",
        megabytes(&r.rss_idle_mb)
    );
    println!(
        "RSS holding {} pods (MB, members 1/2/3): {}",
        r.pods_held,
        megabytes(&r.rss_loaded_mb)
    );
    println!(
        "goals: create p99 <= 50 ms at 500/s: {}; watch p99 <= 100 ms: {}",
        if r.create_at_rate.p99_ms <= 50.0 && r.create_at_rate.errors == 0 {
            "met"
        } else {
            "NOT met"
        },
        if r.watch_delivery.p99_ms <= 100.0 && r.watch_delivery.errors == 0 {
            "met"
        } else {
            "NOT met"
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn percentiles_of_a_known_series() {
        let l = summarize((1..=100).map(f64::from).collect(), 2, 10.0);
        assert_eq!(l.samples, 100);
        assert_eq!(l.p50_ms, 51.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.per_second, 10.0);
        assert_eq!(l.errors, 2);
    }
}
