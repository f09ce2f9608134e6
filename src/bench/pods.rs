//! `skiff bench pods`: pod startup latency, as Kubernetes' SLO defines it — from the pod's
//! creation to the moment a watcher sees it Running with every container ready (images are
//! local, so no pull time is involved). A `skiff up` cluster (3 members, 2 agents; the
//! containerd layout as root, else the process runtime, or as --runtime says) gets `--pods`
//! pods created at `--rate` per second; the report has p50/p99 (goal p99 <= 1 s) and each
//! agent's RSS before and with every pod running (goal: <= 50 MB + 1 MB per pod).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use hyper::Method;
use serde::Serialize;
use serde_json::{Value, json};

use super::api::{Latency, rss_mb, summarize};
use crate::cli::up::LocalUp;
use crate::cli::{UpArgs, UpRuntime};
use crate::json_path::JsonPath;
use crate::progress::Progress;

#[derive(Args, Debug, Clone)]
pub struct PodsBenchArgs {
    /// Pods to start.
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
    /// Pods created per second.
    #[arg(long, default_value_t = 20)]
    pub rate: u64,
    /// containerd, process, or auto (containerd when it can run here).
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: UpRuntime,
    /// Working directory (the cluster's data, logs, results.json).
    #[arg(long, default_value = "./skiff-bench-pods")]
    pub dir: PathBuf,
}

#[derive(Serialize, Debug, Default)]
struct Report {
    runtime: String,
    /// Creates per second actually sent (the target is `--rate`).
    offered_per_second: f64,
    startup: Latency,
    /// Each pod's create -> Running and ready, in creation order (where a tail sits in time).
    startup_ms_by_pod: Vec<(String, f64)>,
    agent_rss_idle_mb: Vec<f64>,
    agent_rss_loaded_mb: Vec<f64>,
    pods_per_agent: Vec<usize>,
}

const NAMESPACE: &str = "default";

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"bench": "pods"}},
           "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
               "name": "main", "image": "skiff/busybox:1.35",
               "command": ["sh", "-c", "exec sleep 3600"]}]}})
}

fn running_and_ready(pod: &Value) -> bool {
    pod.at("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod
            .at("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

pub async fn run(args: PodsBenchArgs) -> anyhow::Result<()> {
    if args.pods == 0 || args.rate == 0 {
        bail!("--pods and --rate must be positive");
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    let up_args = UpArgs {
        data: args.dir.join("cluster"),
        nodes: 3,
        agents: 2,
        runtime: args.runtime,
        kubeconfig: args.dir.join("kubeconfig"),
        merge_kubeconfig: false,
        down: false,
    };
    std::fs::create_dir_all(&up_args.data)?;
    let progress = Progress::spinner("skiff bench pods");
    let up = LocalUp::start(&up_args, &progress).await?;
    let result = measure(&args, &up, &progress).await;
    progress.step("stopping the cluster");
    up.stop().await;
    let report = result?;
    progress.finish("done");
    println!(
        "pod startup ({}, {} pods at {}/s (sent at {:.1}/s) over {} agents): p50 {:.0} ms, p99 {:.0} ms (goal p99 <= 1000 ms), {} errors",
        report.runtime,
        report.startup.samples,
        args.rate,
        report.offered_per_second,
        report.pods_per_agent.len(),
        report.startup.p50_ms,
        report.startup.p99_ms,
        report.startup.errors
    );
    for (i, (idle, loaded)) in report
        .agent_rss_idle_mb
        .iter()
        .zip(&report.agent_rss_loaded_mb)
        .enumerate()
    {
        let pods = report.pods_per_agent.get(i).copied().unwrap_or(0);
        println!(
            "  agent{} RSS: {idle:.1} MB idle, {loaded:.1} MB with {pods} pods (goal <= {} MB)",
            i + 1,
            50 + pods
        );
    }
    let path = args.dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("results: {}", path.display());
    Ok(())
}

/// An agent's resident memory plus what its container reaper adds. The reaper is the agent's
/// child with the same command line (forked, see agent::Reaper); it shares the agent's pages
/// until it writes to them, so its own cost is its private memory, not its RSS.
fn agent_rss_mb(agent: Option<u32>) -> f64 {
    let Some(agent) = agent else {
        return 0.0;
    };
    let own_cmdline = crate::procfs::cmdline(agent);
    let reapers =
        crate::procfs::pids_where(|cmdline, parent| parent == agent && cmdline == own_cmdline);
    let private_kb: u64 = reapers.into_iter().map(crate::procfs::private_kb).sum();
    rss_mb(Some(agent)) + private_kb as f64 / 1024.0
}

async fn measure(
    args: &PodsBenchArgs,
    up: &LocalUp,
    progress: &Progress,
) -> anyhow::Result<Report> {
    let api = Arc::new(up.client().await?);
    let agent_rss_idle_mb: Vec<f64> = up.agent_pids().into_iter().map(agent_rss_mb).collect();
    // Created-at per pod name; the watcher turns it into a latency once the pod is ready.
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let (_, list) = api
        .call(
            Method::GET,
            &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
            None,
        )
        .await?;
    let list: Value = serde_json::from_slice(&list)?;
    let revision = list
        .at("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("0")
        .to_string();
    let watcher = {
        let (api, created, latencies) = (api.clone(), created.clone(), latencies.clone());
        let path = format!(
            "/api/v1/namespaces/{NAMESPACE}/pods?watch=true&labelSelector=bench%3Dpods&resourceVersion={revision}"
        );
        tokio::spawn(async move {
            let _ = api
                .watch(&path, |line| {
                    let Ok(event) = serde_json::from_slice::<Value>(line) else {
                        return true;
                    };
                    let object = &event["object"];
                    if running_and_ready(object)
                        && let Some(name) = object.at("/metadata/name").and_then(Value::as_str)
                    {
                        let started = created.lock().ok().and_then(|c| c.get(name).copied());
                        if let (Some(started), Ok(mut done)) = (started, latencies.lock()) {
                            done.entry(name.to_string())
                                .or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    true
                })
                .await;
        })
    };
    // Open loop: each create is its own task started at its due time, so a slow API answer
    // under load does not lower the offered rate (serial creates reached ~9 pods/s of 20).
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let began = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..args.pods {
        let name = format!("bench-{i}");
        let due = began + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        if let Ok(mut c) = created.lock() {
            c.insert(name.clone(), Instant::now());
        }
        let api = api.clone();
        creates.spawn(async move {
            let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
            match api.call(Method::POST, &path, Some(&pod(&name))).await {
                Ok((status, _)) if status.is_success() => true,
                Ok((status, body)) => {
                    tracing::warn!(pod = name, %status, body = %String::from_utf8_lossy(&body), "create failed");
                    false
                }
                Err(error) => {
                    tracing::warn!(pod = name, error = %error, "create failed");
                    false
                }
            }
        });
        if i % 20 == 0 {
            progress.step(&format!("created {i}/{} pods", args.pods));
        }
    }
    let offered_seconds = began.elapsed().as_secs_f64();
    let mut errors = 0u64;
    while let Some(outcome) = creates.join_next().await {
        if !matches!(outcome, Ok(true)) {
            errors += 1;
        }
    }
    // Every created pod ready, or 60 s after the last create.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = latencies.lock().map(|l| l.len()).unwrap_or(0);
        if done as u64 + errors >= args.pods as u64 || Instant::now() > deadline {
            break;
        }
        progress.step(&format!("{done}/{} pods running", args.pods));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = began.elapsed().as_secs_f64();
    watcher.abort();
    let agent_rss_loaded_mb: Vec<f64> = up.agent_pids().into_iter().map(agent_rss_mb).collect();
    let startup_ms_by_pod: Vec<(String, f64)> = match latencies.lock() {
        Ok(latencies) => (0..args.pods)
            .filter_map(|i| {
                let name = format!("bench-{i}");
                let ms = latencies.get(&name).copied()?;
                Some((name, ms))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let samples: Vec<f64> = startup_ms_by_pod.iter().map(|(_, ms)| *ms).collect();
    let missing = (args.pods as u64).saturating_sub(errors + samples.len() as u64);
    // Pods per node, for the RSS goal.
    let (_, body) = api
        .call(
            Method::GET,
            &format!("/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=bench%3Dpods"),
            None,
        )
        .await?;
    let pods: Value = serde_json::from_slice(&body)?;
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        if let Some(node) = pod.at("/spec/nodeName").and_then(Value::as_str) {
            *per_node.entry(node.to_string()).or_default() += 1;
        }
    }
    let pods_per_agent = (1..=agent_rss_idle_mb.len())
        .map(|i| per_node.get(&format!("agent{i}")).copied().unwrap_or(0))
        .collect();
    Ok(Report {
        runtime: up.runtime_name().to_string(),
        offered_per_second: if offered_seconds > 0.0 {
            (args.pods.saturating_sub(1)) as f64 / offered_seconds
        } else {
            0.0
        },
        startup: summarize(samples, errors + missing, seconds),
        startup_ms_by_pod,
        agent_rss_idle_mb,
        agent_rss_loaded_mb,
        pods_per_agent,
    })
}
