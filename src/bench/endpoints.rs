//! `skiff bench endpoints`: how fast an EndpointSlice change reaches the data planes — the
//! cluster DNS answer (a headless Service's A record) and a node's nftables rules (a ClusterIP
//! Service's endpoint chain). The goal of the issue: p99 <= 100 ms for both.
//!
//! One member and one agent (process runtime, nftables proxy) run in a private network
//! namespace (`unshare -n`, entered by re-executing this command): nothing on the host's network
//! or netfilter changes, and everything goes when the command ends. Each sample replaces one
//! slice's endpoint with a new address through the API (HTTP/2, mTLS) and polls until the new
//! address shows: DNS with a UDP query every millisecond, nftables by listing the service's
//! chain. The time runs from just before the write is sent. Needs root and nft.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hyper::Method;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::UdpSocket;

use super::api::{Latency, rss_mb, summarize};
use crate::apiclient::ApiClient;
use crate::cli::local_cluster::LocalCluster;
use crate::progress::Progress;

#[derive(Args, Debug, Clone)]
pub struct EndpointsBenchArgs {
    /// Endpoint changes per data plane.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Working directory (data dirs, logs, results.json).
    #[arg(long, default_value = "./skiff-bench-endpoints")]
    pub dir: PathBuf,
    /// Set when re-executed inside the private network namespace.
    #[arg(long, hide = true)]
    pub inside: bool,
}

#[derive(Serialize, Debug, Default)]
struct Report {
    dns: Latency,
    proxy: Latency,
    agent_rss_mb: f64,
    member_rss_mb: f64,
}

const MEMBER: &str = "127.0.0.1";
const DNS_NAME: &str = "bench-dns.default.svc.cluster.local";
/// How long one change may take to show before the sample counts as an error.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(args: EndpointsBenchArgs) -> anyhow::Result<()> {
    if !args.inside {
        let samples = args.samples.to_string();
        let mut again: Vec<std::ffi::OsString> = ["endpoints", "--inside", "--samples", &samples]
            .into_iter()
            .map(Into::into)
            .collect();
        again.extend(["--dir".into(), args.dir.clone().into_os_string()]);
        return super::netns::run_unshared(again).await;
    }
    let progress = Progress::spinner("skiff: starting a member and an agent");
    let mut cluster = super::netns::single_member(&args.dir, &progress).await?;
    let agent = start_agent(&args.dir, &cluster).await;
    let result = match agent {
        Ok(mut agent) => {
            let result = measure(&args, &cluster, agent.id(), &progress).await;
            let _ = agent.kill().await;
            result
        }
        Err(e) => Err(e),
    };
    cluster.stop().await;
    let report = result?;
    progress.finish("done");
    println!("EndpointSlice change -> visible (p50 / p99 ms, goal p99 <= 100):");
    for (what, l) in [
        ("cluster DNS answer", &report.dns),
        ("nftables rule", &report.proxy),
    ] {
        println!(
            "  {what:<20} {:>7.1} / {:>7.1}   ({} samples, {} errors)",
            l.p50_ms, l.p99_ms, l.samples, l.errors
        );
    }
    println!(
        "  RSS: agent {:.1} MB, member {:.1} MB",
        report.agent_rss_mb, report.member_rss_mb
    );
    let path = args.dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("results: {}", path.display());
    Ok(())
}

async fn start_agent(dir: &Path, cluster: &LocalCluster) -> anyhow::Result<tokio::process::Child> {
    let token = std::fs::read_to_string(LocalCluster::member_dir(&cluster.base, 1).join("token"))
        .context("reading the member's token")?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["agent", "--server", &format!("https://{MEMBER}:6443")])
        .args([
            "--token",
            token.trim(),
            "--name",
            "bench-node",
            "--address",
            MEMBER,
        ])
        .arg("--data")
        .arg(dir.join("agent"))
        .args(["--runtime", "process", "--proxy-mode", "nftables"])
        .env("SKIFF_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting skiff agent")?;
    Ok(child)
}

async fn client(cluster: &LocalCluster) -> anyhow::Result<ApiClient> {
    let pki = cluster.pki()?;
    ApiClient::connect(&format!("{MEMBER}:6443"), &pki.ca.cert_pem, &pki.admin).await
}

fn service(name: &str, headless: bool) -> Value {
    let mut spec = json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
    if headless {
        spec["clusterIP"] = json!("None");
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn slice(service: &str, address: Ipv4Addr) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": service, "namespace": "default",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": [address.to_string()], "conditions": {"ready": true}}]})
}

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

async fn create(api: &ApiClient, path: &str, body: &Value) -> anyhow::Result<()> {
    let (status, text) = api.call(Method::POST, path, Some(body)).await?;
    if !status.is_success() {
        bail!("POST {path}: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

async fn replace_endpoint(api: &ApiClient, service: &str, address: Ipv4Addr) -> anyhow::Result<()> {
    let path = format!("{SLICES}/{service}");
    let (status, text) = api.call(Method::GET, &path, None).await?;
    if !status.is_success() {
        bail!("GET {path}: {status}");
    }
    let mut current: Value = serde_json::from_slice(&text)?;
    current["endpoints"] = slice(service, address)["endpoints"].clone();
    let (status, text) = api.call(Method::PUT, &path, Some(&current)).await?;
    if !status.is_success() {
        bail!("PUT {path}: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

async fn measure(
    args: &EndpointsBenchArgs,
    cluster: &LocalCluster,
    agent_pid: Option<u32>,
    progress: &Progress,
) -> anyhow::Result<Report> {
    let api = client(cluster).await?;
    // The default namespace is created by the first member shortly after it starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !api
        .call(Method::GET, "/api/v1/namespaces/default", None)
        .await
        .is_ok_and(|(status, _)| status.is_success())
    {
        if Instant::now() > deadline {
            bail!("the default namespace did not appear within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = Ipv4Addr::new(10, 42, 200, 1);
    create(
        &api,
        "/api/v1/namespaces/default/services",
        &service("bench-dns", true),
    )
    .await?;
    create(
        &api,
        "/api/v1/namespaces/default/services",
        &service("bench-proxy", false),
    )
    .await?;
    create(&api, SLICES, &slice("bench-dns", first)).await?;
    create(&api, SLICES, &slice("bench-proxy", first)).await?;
    let dns = UdpSocket::bind("127.0.0.1:0").await?;
    let server: SocketAddr = format!("{MEMBER}:53").parse()?;
    // Both data planes up before the clock runs.
    let ready = Instant::now();
    while !(dns_answers(&dns, server, first).await && nft_shows(first).await) {
        if ready.elapsed() > Duration::from_secs(60) {
            bail!(
                "the DNS or the agent's proxy never showed the first endpoint (see {}/agent.log)",
                args.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut dns_ms, mut proxy_ms) = (Vec::new(), Vec::new());
    let (mut dns_errors, mut proxy_errors) = (0, 0);
    let started = Instant::now();
    for i in 0..args.samples {
        if i % 10 == 0 {
            progress.step(&format!("endpoint changes: {i}/{}", args.samples));
        }
        let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 42, 201, 0)) + i as u32 + 1);
        let t0 = Instant::now();
        replace_endpoint(&api, "bench-dns", address).await?;
        match poll_until(|| dns_answers(&dns, server, address)).await {
            true => dns_ms.push(t0.elapsed().as_secs_f64() * 1000.0),
            false => dns_errors += 1,
        }
        let t0 = Instant::now();
        replace_endpoint(&api, "bench-proxy", address).await?;
        match poll_until(|| nft_shows(address)).await {
            true => proxy_ms.push(t0.elapsed().as_secs_f64() * 1000.0),
            false => proxy_errors += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        dns: summarize(dns_ms, dns_errors, seconds),
        proxy: summarize(proxy_ms, proxy_errors, seconds),
        agent_rss_mb: rss_mb(agent_pid),
        member_rss_mb: rss_mb(cluster.member_pid(1)),
    })
}

/// Polls `check` every millisecond for up to SAMPLE_TIMEOUT.
async fn poll_until<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + SAMPLE_TIMEOUT;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// Whether the nftables chain of `bench-proxy` DNATs to `address`.
async fn nft_shows(address: Ipv4Addr) -> bool {
    let out = tokio::process::Command::new("nft")
        .args([
            "list",
            "chain",
            "ip",
            "skiff-proxy",
            "svc-default/bench-proxy/tcp/80",
        ])
        .output()
        .await;
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("__{address}/8080")))
}

/// Whether the DNS answers DNS_NAME with exactly `address`.
async fn dns_answers(socket: &UdpSocket, server: SocketAddr, address: Ipv4Addr) -> bool {
    crate::dns_probe::query_a(socket, server, DNS_NAME).await == [address]
}
