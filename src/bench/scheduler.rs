//! `skiff bench scheduler`: scheduling throughput against issue 4's goal (>= 1000 pods/s onto
//! 100 simulated nodes). A 3-member cluster (separate processes, as `skiff bench api`) gets
//! `--nodes` fake Ready nodes registered through the API (allocatable cpu/memory/pods, zone and
//! disk labels, as tests/scheduling.rs registers them; no kubelet, so nothing runs the pods), then:
//! 1. bare pods: `--clients` concurrent clients create `--pods` pods with resource requests, a
//!    tenth each with a nodeSelector, required node affinity, a topology spread constraint,
//!    preferred node affinity and preferred pod anti-affinity, so every filter and score does
//!    work; a pod watch times each pod from its create request to the event showing
//!    spec.nodeName set: pods/s from the first create to the last binding, p50/p99 of
//!    create -> bound;
//! 2. one Deployment of `--deployment-pods` replicas: pods/s from the Deployment's create to
//!    the last pod bound (the ReplicaSet controller's creates and the scheduler together), and
//!    p50/p99 of pod first seen -> bound;
//!
//! with each member's RSS before and after. No kube-scheduler runs on this machine, so the
//! figures stand against the goal, not beside a peer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use hyper::Method;
use serde::Serialize;
use serde_json::{Value, json};

use super::api::{Latency, connect, cpu_seconds, megabytes, on_three_members, rss_mb, summarize};
use crate::apiclient::ApiClient;
use crate::cli::local_cluster::LocalCluster;
use crate::json_path::JsonPath;
use crate::progress::Progress;

#[derive(Args, Debug, Clone)]
pub struct SchedulerBenchArgs {
    /// Fake nodes to register.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Bare pods created by the clients (phase 1).
    #[arg(long, default_value_t = 5000)]
    pub pods: usize,
    /// Replicas of the Deployment (phase 2; 0 skips it).
    #[arg(long, default_value_t = 5000)]
    pub deployment_pods: usize,
    /// Concurrent creating clients in phase 1.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Working directory (data dirs, logs, results.json).
    #[arg(long, default_value = "./skiff-bench-scheduler")]
    pub dir: PathBuf,
}

/// The goal of issue 4.
const GOAL_PODS_PER_SECOND: f64 = 1000.0;
const ZONES: usize = 4;
const PODS_NAMESPACE: &str = "bench-pods";
/// A create not answered in this long is sent again, through another member, up to
/// `CREATE_ATTEMPTS` times in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CREATE_ATTEMPTS: usize = 5;
const DEPLOYMENT_NAMESPACE: &str = "bench-deploy";

#[derive(Serialize, Debug, Default)]
struct Phase {
    pods: usize,
    bound: usize,
    seconds: f64,
    pods_per_second: f64,
    /// Phase 1: create request sent -> bound; phase 2: pod first seen -> bound.
    latency: Latency,
    /// Phase 1: creates that failed or timed out (and were sent again).
    create_errors: u64,
    /// CPU seconds each member used during the phase, and all three together per pod bound.
    cpu_seconds: Vec<f64>,
    cpu_ms_per_pod: f64,
}

impl Phase {
    /// `latencies` (ms) of the pods bound, the last of them `seconds` after the phase began.
    fn new(pods: usize, latencies: Vec<f64>, seconds: f64, create_errors: u64) -> Self {
        let bound = latencies.len();
        Phase {
            pods,
            bound,
            seconds,
            pods_per_second: if seconds > 0.0 {
                bound as f64 / seconds
            } else {
                0.0
            },
            latency: summarize(latencies, 0, seconds),
            create_errors,
            cpu_seconds: Vec::new(),
            cpu_ms_per_pod: 0.0,
        }
    }

    /// Records the members' CPU use since `before` (`cpu_all`).
    fn with_cpu(mut self, before: &[f64], after: &[f64]) -> Self {
        self.cpu_seconds = after.iter().zip(before).map(|(a, b)| a - b).collect();
        if self.bound > 0 {
            self.cpu_ms_per_pod = self.cpu_seconds.iter().sum::<f64>() * 1000.0 / self.bound as f64;
        }
        self
    }
}

#[derive(Serialize, Debug, Default)]
struct Report {
    nodes: usize,
    clients: usize,
    /// The member leading (running the scheduler and controllers) at the start and at the
    /// end: an overloaded machine can lose a leader mid-run, and the new one starts cold.
    leader: usize,
    leader_at_end: usize,
    bare_pods: Phase,
    deployment: Option<Phase>,
    rss_idle_mb: Vec<f64>,
    rss_after_pods_mb: Vec<f64>,
    rss_after_deployment_mb: Vec<f64>,
}

pub async fn run(args: SchedulerBenchArgs) -> anyhow::Result<()> {
    on_three_members(
        &args.dir,
        "127.0.77.",
        async |cluster, progress| measure(&args, cluster, progress).await,
        |report| print_report(report, &args),
    )
    .await
}

/// A call that must succeed (set-up steps).
async fn must(client: &ApiClient, method: Method, path: &str, body: &Value) -> anyhow::Result<()> {
    let (status, reply) = client.call(method, path, Some(body)).await?;
    if !status.is_success() {
        bail!("{path}: {status} {}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}

fn rss_all(cluster: &LocalCluster) -> Vec<f64> {
    (1..=3).map(|i| rss_mb(cluster.member_pid(i))).collect()
}

fn cpu_all(cluster: &LocalCluster) -> Vec<f64> {
    (1..=3)
        .map(|i| cpu_seconds(cluster.member_pid(i)))
        .collect()
}

async fn measure(
    args: &SchedulerBenchArgs,
    cluster: &LocalCluster,
    progress: &Progress,
) -> anyhow::Result<Report> {
    let mut members = Vec::new();
    // Two connections per member, so 64 clients are not all one connection's streams.
    for i in 0..6 {
        members.push(connect(cluster, 1 + i % 3).await?);
    }
    let leader = cluster.leader_index().await?;
    eprintln!(
        "leader: node{leader} (pid {})",
        cluster.member_pid(leader).unwrap_or(0)
    );
    for ns in [PODS_NAMESPACE, DEPLOYMENT_NAMESPACE] {
        must(
            &members[0],
            Method::POST,
            "/api/v1/namespaces",
            &json!({"metadata": {"name": ns}}),
        )
        .await?;
    }
    progress.step(&format!("registering {} fake nodes", args.nodes));
    register_nodes(&members, args).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut report = Report {
        nodes: args.nodes,
        clients: args.clients,
        leader,
        rss_idle_mb: rss_all(cluster),
        ..Report::default()
    };

    progress.step(&format!(
        "phase 1: {} pods from {} clients",
        args.pods, args.clients
    ));
    let cpu = cpu_all(cluster);
    report.bare_pods = bare_pods(args, cluster, &members, progress)
        .await?
        .with_cpu(&cpu, &cpu_all(cluster));
    report.rss_after_pods_mb = rss_all(cluster);

    if args.deployment_pods > 0 {
        progress.step(&format!(
            "phase 2: a Deployment of {} replicas",
            args.deployment_pods
        ));
        let cpu = cpu_all(cluster);
        let phase = deployment(args, cluster, &members, progress).await?;
        report.deployment = Some(phase.with_cpu(&cpu, &cpu_all(cluster)));
        report.rss_after_deployment_mb = rss_all(cluster);
    }
    report.leader_at_end = cluster.leader_index().await.unwrap_or(0);
    Ok(report)
}

/// Nodes big enough for every pod of both phases (allocatable pods too: the kubelet's default
/// of 110 would not hold 10,000 pods on 100 nodes), half with an SSD label, spread over zones.
async fn register_nodes(members: &[ApiClient], args: &SchedulerBenchArgs) -> anyhow::Result<()> {
    let per_node = (args.pods + args.deployment_pods).div_ceil(args.nodes.max(1)) * 2;
    let max_pods = per_node.max(110).to_string();
    let mut tasks = Vec::new();
    for i in 0..args.nodes {
        let client = members[i % members.len()].clone();
        let name = format!("sim-{i:03}");
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": format!("zone-{}", i % ZONES),
                "disk": if i % 2 == 0 { "ssd" } else { "hdd" }}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": max_pods},
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": max_pods}}});
        tasks.push(tokio::spawn(async move {
            must(&client, Method::POST, "/api/v1/nodes", &node).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    // A create that dropped the status would leave every pod unschedulable: check one.
    let (_, body) = members[0]
        .call(Method::GET, "/api/v1/nodes/sim-000", None)
        .await?;
    let node: Value = serde_json::from_slice(&body)?;
    if node.at("/status/allocatable/cpu").is_none() {
        bail!("the registered node has no allocatable resources: {node}");
    }
    Ok(())
}

/// Pod `i` of phase 1: requests for every pod, and one of the scheduling rules for most.
fn bare_pod(i: usize) -> Value {
    let group = format!("g{}", i % 10);
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox:1.36",
        "resources": {"requests": {
            "cpu": format!("{}m", 10 + (i % 5) * 10),
            "memory": format!("{}Mi", 16 + (i % 4) * 16)}}}]});
    let selector = json!({"matchLabels": {"group": group}});
    match i % 10 {
        1 => spec["nodeSelector"] = json!({"disk": "ssd"}),
        2 => {
            spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone",
                    "operator": "In", "values": ["zone-0", "zone-1"]}]}]}}})
        }
        3 => {
            spec["topologySpreadConstraints"] = json!([{"maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": selector}])
        }
        4 => {
            spec["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "preference": {"matchExpressions": [
                    {"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}})
        }
        5 => {
            spec["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                    "labelSelector": selector}}]}})
        }
        _ => {}
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p-{i}"), "labels": {"app": "bench", "group": group}},
        "spec": spec})
}

/// When each pod of a namespace was first seen and first seen bound, from one watch.
#[derive(Default)]
struct Timeline {
    seen: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
}

struct BindWatch {
    timeline: Arc<Mutex<Timeline>>,
    bound: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl BindWatch {
    /// Watches the pods of `namespace` from now on (re-watching from the last revision seen
    /// when a stream ends).
    async fn start(client: ApiClient, namespace: &str) -> anyhow::Result<Self> {
        let (_, body) = client
            .call(
                Method::GET,
                &format!("/api/v1/namespaces/{namespace}/pods"),
                None,
            )
            .await?;
        let list: Value = serde_json::from_slice(&body)?;
        let mut revision = list
            .at("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_string();
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let bound = Arc::new(AtomicUsize::new(0));
        let (t, b) = (timeline.clone(), bound.clone());
        let namespace = namespace.to_string();
        let task = tokio::spawn(async move {
            loop {
                let path = format!(
                    "/api/v1/namespaces/{namespace}/pods?watch=1&allowWatchBookmarks=true&resourceVersion={revision}"
                );
                let mut gone = false;
                client
                    .watch(&path, |line| {
                        let Ok(event) = serde_json::from_slice::<Value>(line) else {
                            return true;
                        };
                        if event.get("type").and_then(Value::as_str) == Some("ERROR") {
                            gone = true;
                            return false;
                        }
                        let object = &event["object"];
                        if let Some(rv) = object
                            .at("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                        {
                            revision = rv.to_string();
                        }
                        let Some(name) = object.at("/metadata/name").and_then(Value::as_str) else {
                            return true;
                        };
                        let now = Instant::now();
                        let mut timeline = t.lock().unwrap_or_else(|e| e.into_inner());
                        timeline.seen.entry(name.to_string()).or_insert(now);
                        let on_node = object
                            .at("/spec/nodeName")
                            .and_then(Value::as_str)
                            .is_some_and(|n| !n.is_empty());
                        if on_node && !timeline.bound.contains_key(name) {
                            timeline.bound.insert(name.to_string(), now);
                            b.fetch_add(1, Ordering::Relaxed);
                        }
                        true
                    })
                    .await?;
                if gone {
                    bail!("the pod watch fell behind the compacted history");
                }
            }
        });
        Ok(BindWatch {
            timeline,
            bound,
            task,
        })
    }

    /// Waits until `count` pods are bound or `timeout` passes, showing progress.
    async fn wait(&self, count: usize, timeout: Duration, progress: &Progress, label: &str) {
        let deadline = Instant::now() + timeout;
        while self.bound.load(Ordering::Relaxed) < count && Instant::now() < deadline {
            if self.task.is_finished() {
                break;
            }
            let seen = self
                .timeline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .seen
                .len();
            progress.step(&format!(
                "{label}: {seen} pods seen, {} bound of {count}",
                self.bound.load(Ordering::Relaxed)
            ));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn finish(self) -> Timeline {
        self.task.abort();
        std::mem::take(&mut *self.timeline.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn bare_pods(
    args: &SchedulerBenchArgs,
    cluster: &LocalCluster,
    members: &[ApiClient],
    progress: &Progress,
) -> anyhow::Result<Phase> {
    let watch = BindWatch::start(connect(cluster, 1).await?, PODS_NAMESPACE).await?;
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; args.pods]));
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let path = format!("/api/v1/namespaces/{PODS_NAMESPACE}/pods");
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let members = members.to_vec();
        let (sent, next, errors, path, total) = (
            sent.clone(),
            next.clone(),
            errors.clone(),
            path.clone(),
            args.pods,
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = bare_pod(i);
                sent.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(Instant::now());
                // A member losing leadership can leave a request hanging: give up on it after
                // a while and send it again through the next member (409: the first one made it).
                for attempt in 0..CREATE_ATTEMPTS {
                    let client = &members[(c + attempt) % members.len()];
                    let call = client.call(Method::POST, &path, Some(&body));
                    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                        Ok(Ok((status, _)))
                            if status.is_success() || status == hyper::StatusCode::CONFLICT =>
                        {
                            break;
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    let timeout = Duration::from_secs(args.timeout);
    watch.wait(args.pods, timeout, progress, "bare pods").await;
    for task in tasks {
        let _ = task.await;
    }
    let timeline = watch.finish();
    let sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|e| e.into_inner()));
    let mut latencies = Vec::new();
    let mut last = started;
    for (i, sent_at) in sent.iter().enumerate() {
        let (Some(sent_at), Some(bound_at)) = (sent_at, timeline.bound.get(&format!("p-{i}")))
        else {
            continue;
        };
        latencies.push(bound_at.duration_since(*sent_at).as_secs_f64() * 1000.0);
        last = last.max(*bound_at);
    }
    let seconds = last.duration_since(started).as_secs_f64();
    Ok(Phase::new(
        args.pods,
        latencies,
        seconds,
        errors.load(Ordering::Relaxed),
    ))
}

async fn deployment(
    args: &SchedulerBenchArgs,
    cluster: &LocalCluster,
    members: &[ApiClient],
    progress: &Progress,
) -> anyhow::Result<Phase> {
    let watch = BindWatch::start(connect(cluster, 1).await?, DEPLOYMENT_NAMESPACE).await?;
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench"},
        "spec": {"replicas": args.deployment_pods,
            "selector": {"matchLabels": {"app": "bench-deploy"}},
            "template": {"metadata": {"labels": {"app": "bench-deploy"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}});
    let started = Instant::now();
    must(
        &members[0],
        Method::POST,
        &format!("/apis/apps/v1/namespaces/{DEPLOYMENT_NAMESPACE}/deployments"),
        &deployment,
    )
    .await?;
    let timeout = Duration::from_secs(args.timeout);
    watch
        .wait(args.deployment_pods, timeout, progress, "deployment")
        .await;
    let timeline = watch.finish();
    let mut latencies = Vec::new();
    let mut last = started;
    for (name, bound_at) in &timeline.bound {
        if let Some(seen_at) = timeline.seen.get(name) {
            latencies.push(bound_at.duration_since(*seen_at).as_secs_f64() * 1000.0);
        }
        last = last.max(*bound_at);
    }
    let seconds = last.duration_since(started).as_secs_f64();
    Ok(Phase::new(args.deployment_pods, latencies, seconds, 0))
}

fn print_report(r: &Report, args: &SchedulerBenchArgs) {
    println!();
    println!(
        "{:<34} {:>7} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10}",
        "phase", "pods", "bound", "seconds", "pods/s", "p50 ms", "p99 ms", "CPU ms/pod"
    );
    let mut rows = vec![(
        format!("bare pods ({} clients)", args.clients),
        &r.bare_pods,
    )];
    if let Some(d) = &r.deployment {
        rows.push(("deployment (first seen -> bound)".to_string(), d));
    }
    for (name, p) in rows {
        println!(
            "{name:<34} {:>7} {:>7} {:>8.1} {:>9.0} {:>9.1} {:>9.1} {:>10.2}",
            p.pods,
            p.bound,
            p.seconds,
            p.pods_per_second,
            p.latency.p50_ms,
            p.latency.p99_ms,
            p.cpu_ms_per_pod
        );
    }
    if r.bare_pods.create_errors > 0 {
        println!("create errors: {}", r.bare_pods.create_errors);
    }
    println!(
        "{} nodes; leader node{} (at the end node{}); RSS MB (members 1/2/3): idle {}; after pods {}; after deployment {}",
        r.nodes,
        r.leader,
        r.leader_at_end,
        megabytes(&r.rss_idle_mb),
        megabytes(&r.rss_after_pods_mb),
        megabytes(&r.rss_after_deployment_mb)
    );
    let met = |p: &Phase| p.bound == p.pods && p.pods_per_second >= GOAL_PODS_PER_SECOND;
    println!(
        "goal >= {GOAL_PODS_PER_SECOND:.0} pods/s: bare pods {}{}",
        if met(&r.bare_pods) { "met" } else { "NOT met" },
        match &r.deployment {
            Some(d) => format!("; deployment {}", if met(d) { "met" } else { "NOT met" }),
            None => String::new(),
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_mix_exercises_each_rule() {
        assert!(bare_pod(0)["spec"].get("affinity").is_none());
        assert_eq!(bare_pod(1)["spec"]["nodeSelector"]["disk"], "ssd");
        assert!(bare_pod(2).at("/spec/affinity/nodeAffinity").is_some());
        assert!(bare_pod(3)["spec"]["topologySpreadConstraints"].is_array());
        assert!(bare_pod(15).at("/spec/affinity/podAntiAffinity").is_some());
        assert_eq!(bare_pod(7)["metadata"]["name"], "p-7");
    }
}
