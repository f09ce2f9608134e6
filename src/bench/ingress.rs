//! `skiff bench ingress`: HTTP requests/s and p99 latency through the built-in ingress against
//! the same requests straight to the pod behind it, with wrk (Debian's `wrk`), keep-alive, on
//! one machine. The issue's goal: ingress >= 0.8x of direct.
//!
//! One member and one agent (process runtime, no kube-proxy) run in a private network
//! namespace (`unshare -n`, entered by re-executing this command). The backend pod runs this
//! binary (`--serve-backend`): a small hyper HTTP/1.1 server, so the comparison measures the
//! proxy hop, not a slow backend. The pod is reached through a Service and an Ingress like any
//! other; wrk runs direct and through the ingress in alternating rounds and the median of each
//! side is reported. With nginx at hand (`--nginx PATH`, or on PATH: the proxy the seed's
//! ingress-nginx runs) the same backend is also measured behind nginx with upstream keep-alive,
//! the peer the ratio is read against. Needs root and wrk.
//!
//! Each run also reports the CPU each party spent per request (wrk, the backend, the proxy),
//! read from /proc and from wrk's rusage: on cores that wrk, backend and proxy share, that is
//! what decides the ratio, and the backend's own figure bounds what any proxy's hop can cost.

use std::convert::Infallible;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Method;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde_json::json;

use super::api::{cpu_seconds, rss_mb, total_cpu_seconds};
use crate::apiclient::ApiClient;
use crate::cli::local_cluster::LocalCluster;
use crate::procfs::pids_where;
use crate::progress::Progress;

#[derive(Args, Debug, Clone)]
pub struct IngressBenchArgs {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Open connections (keep-alive) per wrk run.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Alternating direct/ingress rounds (the median of each side is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// nginx for the peer run (default: `nginx` on PATH; none: the peer row is skipped).
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// Working directory (data dirs, logs, results.json).
    #[arg(long, default_value = "./skiff-bench-ingress")]
    pub dir: PathBuf,
    /// Set when re-executed inside the private network namespace.
    #[arg(long, hide = true)]
    pub inside: bool,
    /// Serve the benchmark's backend on this address (what the backend pod runs).
    #[arg(long, hide = true)]
    pub serve_backend: Option<SocketAddr>,
}

/// One wrk run.
#[derive(Serialize, Debug, Clone, Default)]
struct Run {
    requests_per_second: f64,
    p99_ms: f64,
    /// Socket errors and non-2xx answers.
    errors: u64,
    /// Requests completed in the run.
    requests: u64,
    /// CPU microseconds per request, by party.
    cpu: CpuPerRequest,
}

/// CPU (user + system) per request in one run: wrk (the client), the backend pod, and the
/// proxy in between (none for the direct runs).
#[derive(Serialize, Debug, Clone, Default)]
struct CpuPerRequest {
    wrk_us: f64,
    backend_us: f64,
    proxy_us: Option<f64>,
}

/// The processes a run's CPU is read from.
struct Parties<'a> {
    backend: Option<u32>,
    /// The proxy's processes (the agent; nginx's master and workers); None when direct.
    proxy: Option<&'a [Option<u32>]>,
}

#[derive(Serialize, Debug, Default)]
struct Report {
    direct: Vec<Run>,
    ingress: Vec<Run>,
    nginx: Vec<Run>,
    direct_median: Run,
    ingress_median: Run,
    nginx_median: Option<Run>,
    /// ingress / direct requests per second (goal >= 0.8).
    throughput_ratio: f64,
    /// nginx / direct, the peer's ratio on the same machine.
    nginx_ratio: Option<f64>,
    agent_rss_mb: f64,
    build: &'static str,
}

/// Where everything listens inside the namespace.
const NODE: &str = "127.0.0.1";
const BACKEND: &str = "127.0.0.1:18080";
const NGINX: &str = "127.0.0.1:18081";
const HOST: &str = "bench.example";
const BODY: &str = "[bench] Hello, Kubernetes! From the benchmark backend\n";

pub async fn run(args: IngressBenchArgs) -> anyhow::Result<()> {
    if let Some(listen) = args.serve_backend {
        return serve_backend(listen).await;
    }
    if !args.inside {
        let mut again: Vec<OsString> = vec!["ingress".into(), "--inside".into()];
        for (flag, value) in [
            ("--duration", args.duration.to_string()),
            ("--connections", args.connections.to_string()),
            ("--threads", args.threads.to_string()),
            ("--rounds", args.rounds.to_string()),
        ] {
            again.extend([flag.into(), value.into()]);
        }
        again.extend(["--dir".into(), args.dir.clone().into_os_string()]);
        if let Some(nginx) = &args.nginx {
            again.extend(["--nginx".into(), nginx.clone().into_os_string()]);
        }
        return super::netns::run_unshared(again).await;
    }
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("wrk is not installed (apt-get install wrk)");
    }
    let progress = Progress::spinner("skiff: starting a member and an agent");
    let mut cluster = super::netns::single_member(&args.dir, &progress).await?;
    let result = match agent(&args, &cluster) {
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
    println!(
        "HTTP GET, keep-alive, {} connections, {} wrk threads, {} s per run, median of {} ({} build):",
        args.connections, args.threads, args.duration, args.rounds, report.build
    );
    let rows = [
        ("straight to the pod", Some(&report.direct_median)),
        ("through the ingress", Some(&report.ingress_median)),
        ("through nginx (peer)", report.nginx_median.as_ref()),
    ];
    for (what, run) in rows.iter().filter_map(|(w, r)| Some((w, (*r)?))) {
        let proxy = run
            .cpu
            .proxy_us
            .map(|us| format!(", proxy {us:.1}"))
            .unwrap_or_default();
        println!(
            "  {what:<20} {:>10.0} req/s   p99 {:>7.2} ms   ({} errors)   CPU us/request: wrk {:.1}, backend {:.1}{proxy}",
            run.requests_per_second, run.p99_ms, run.errors, run.cpu.wrk_us, run.cpu.backend_us
        );
    }
    println!(
        "  ingress / direct: {:.2}x (goal >= 0.8x); agent RSS {:.1} MB",
        report.throughput_ratio, report.agent_rss_mb
    );
    match report.nginx_ratio {
        Some(ratio) => println!("  nginx / direct:   {ratio:.2}x (the peer, same backend)"),
        None => println!("  nginx not found (--nginx PATH): no peer row"),
    }
    let path = args.dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("results: {}", path.display());
    Ok(())
}

/// The agent: process runtime (the backend pod is a host process), no kube-proxy, the
/// ingress on NODE:80.
fn agent(args: &IngressBenchArgs, cluster: &LocalCluster) -> anyhow::Result<tokio::process::Child> {
    let token = std::fs::read_to_string(LocalCluster::member_dir(&cluster.base, 1).join("token"))
        .context("reading the member's token")?;
    let log = std::fs::File::create(args.dir.join("agent.log"))?;
    tokio::process::Command::new(std::env::current_exe()?)
        .arg("agent")
        .args([
            "--server",
            &format!("https://{NODE}:6443"),
            "--token",
            token.trim(),
        ])
        .args([
            "--name",
            "bench-node",
            "--address",
            NODE,
            "--runtime",
            "process",
        ])
        .args(["--proxy-mode", "none"])
        .arg("--data")
        .arg(args.dir.join("agent"))
        .env("SKIFF_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting skiff agent")
}

/// The backend pod, its Service and an Ingress routing HOST to it.
fn manifests() -> anyhow::Result<[(&'static str, serde_json::Value); 3]> {
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let port = BACKEND
        .rsplit(':')
        .next()
        .unwrap_or("18080")
        .parse::<u16>()?;
    let labels = json!({"app": "bench-backend"});
    Ok([
        (
            "/api/v1/namespaces/default/pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "bench-backend", "labels": labels},
                   "spec": {"containers": [{
                       "name": "backend", "image": "skiff/bench",
                       "command": [exe, "bench", "ingress", "--serve-backend", BACKEND],
                       "ports": [{"containerPort": port}],
                       "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1}}]}}),
        ),
        (
            "/api/v1/namespaces/default/services",
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "bench-backend"},
                   "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": port}]}}),
        ),
        (
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                   "metadata": {"name": "bench"},
                   "spec": {"rules": [{"host": HOST, "http": {"paths": [{
                       "path": "/", "pathType": "Prefix",
                       "backend": {"service": {"name": "bench-backend", "port": {"number": 80}}}}]}}]}}),
        ),
    ])
}

async fn measure(
    args: &IngressBenchArgs,
    cluster: &LocalCluster,
    agent_pid: Option<u32>,
    progress: &Progress,
) -> anyhow::Result<Report> {
    let pki = cluster.pki()?;
    let api = ApiClient::connect(super::netns::MEMBER_API, &pki.ca.cert_pem, &pki.admin).await?;
    for (path, object) in manifests()? {
        let (status, body) = api.call(Method::POST, path, Some(&object)).await?;
        if !status.is_success() {
            bail!("POST {path}: {status} {}", String::from_utf8_lossy(&body));
        }
    }
    progress.step("waiting for the backend pod and its route");
    let ingress: SocketAddr = format!("{NODE}:80").parse()?;
    if !answers(ingress, Duration::from_secs(90)).await {
        bail!(
            "the backend never answered through the ingress (see {}/agent.log)",
            args.dir.display()
        );
    }
    let mut report = Report {
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        ..Report::default()
    };
    let nginx = match args.nginx.clone().or_else(|| on_path("nginx")) {
        Some(exe) => Some(start_nginx(args, &exe).await?),
        None => None,
    };
    let backend = pids_where(|cmdline, _| cmdline.contains("--serve-backend"))
        .first()
        .copied();
    let agent = [agent_pid];
    let nginx_pids: Vec<Option<u32>> = nginx.as_ref().map(Nginx::pids).unwrap_or_default();
    let direct = Parties {
        backend,
        proxy: None,
    };
    let through_ingress = Parties {
        backend,
        proxy: Some(&agent),
    };
    let through_nginx = Parties {
        backend,
        proxy: Some(&nginx_pids),
    };
    for round in 1..=args.rounds {
        progress.step(&format!(
            "round {round}/{}: straight to the pod",
            args.rounds
        ));
        report
            .direct
            .push(wrk(args, &format!("http://{BACKEND}/"), None, &direct).await?);
        progress.step(&format!(
            "round {round}/{}: through the ingress",
            args.rounds
        ));
        report.ingress.push(
            wrk(
                args,
                &format!("http://{ingress}/"),
                Some(HOST),
                &through_ingress,
            )
            .await?,
        );
        if nginx.is_some() {
            progress.step(&format!("round {round}/{}: through nginx", args.rounds));
            report.nginx.push(
                wrk(
                    args,
                    &format!("http://{NGINX}/"),
                    Some(HOST),
                    &through_nginx,
                )
                .await?,
            );
        }
    }
    drop(nginx);
    report.direct_median = median(&report.direct);
    report.ingress_median = median(&report.ingress);
    report.throughput_ratio = if report.direct_median.requests_per_second > 0.0 {
        report.ingress_median.requests_per_second / report.direct_median.requests_per_second
    } else {
        0.0
    };
    if !report.nginx.is_empty() {
        let peer = median(&report.nginx);
        report.nginx_ratio = (report.direct_median.requests_per_second > 0.0)
            .then(|| peer.requests_per_second / report.direct_median.requests_per_second);
        report.nginx_median = Some(peer);
    }
    report.agent_rss_mb = rss_mb(agent_pid);
    Ok(report)
}

/// `name` in a directory of PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The peer nginx; dropping it stops the master and, through it, its workers (a SIGKILL to the
/// master alone would leave the workers running).
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill has no memory effects; the pid is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.0.wait();
    }
}

impl Nginx {
    /// The master and its workers.
    fn pids(&self) -> Vec<Option<u32>> {
        let master = self.0.id();
        let mut pids = pids_where(|_, parent| parent == master);
        pids.push(master);
        pids.into_iter().map(Some).collect()
    }
}

/// nginx proxying NGINX to the backend with upstream keep-alive, as ingress-nginx configures
/// it (HTTP/1.1 upstream, no Connection header passed, Host and X-Forwarded-For set, no
/// access log).
async fn start_nginx(args: &IngressBenchArgs, exe: &std::path::Path) -> anyhow::Result<Nginx> {
    let prefix = args.dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let config = format!(
        r#"worker_processes auto;
pid {pid};
error_log {log} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path body;
  proxy_temp_path proxy;
  fastcgi_temp_path fastcgi;
  uwsgi_temp_path uwsgi;
  scgi_temp_path scgi;
  upstream backend {{ server {BACKEND}; keepalive 128; }}
  server {{
    listen {NGINX};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"#,
        pid = prefix.join("nginx.pid").display(),
        log = prefix.join("logs/error.log").display(),
    );
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config)?;
    let child = std::process::Command::new(exe)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let nginx = Nginx(child);
    let addr: SocketAddr = NGINX.parse()?;
    if !answers(addr, Duration::from_secs(10)).await {
        bail!(
            "nginx never answered (see {})",
            prefix.join("logs/error.log").display()
        );
    }
    Ok(nginx)
}

/// The run with the median requests/s.
fn median(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
    sorted.get(sorted.len() / 2).cloned().unwrap_or_default()
}

/// CPU seconds of the children this process has reaped (wrk, once it has exited).
fn reaped_children_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers, for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given, which outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

async fn wrk(
    args: &IngressBenchArgs,
    url: &str,
    host: Option<&str>,
    parties: &Parties<'_>,
) -> anyhow::Result<Run> {
    let cpu_now = || {
        (
            reaped_children_cpu_seconds(),
            cpu_seconds(parties.backend),
            parties.proxy.map(total_cpu_seconds),
        )
    };
    let before = cpu_now();
    let mut command = tokio::process::Command::new("wrk");
    command
        .args([
            "-t",
            &args.threads.to_string(),
            "-c",
            &args.connections.to_string(),
        ])
        .args(["-d", &format!("{}s", args.duration), "--latency"]);
    if let Some(host) = host {
        command.args(["-H", &format!("Host: {host}")]);
    }
    let out = command.arg(url).output().await.context("running wrk")?;
    let after = cpu_now();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut run = parse_wrk(&text).with_context(|| format!("reading wrk's report:\n{text}"))?;
    let per_request = |seconds: f64| seconds * 1e6 / run.requests.max(1) as f64;
    run.cpu = CpuPerRequest {
        wrk_us: per_request(after.0 - before.0),
        backend_us: per_request(after.1 - before.1),
        proxy_us: after.2.zip(before.2).map(|(a, b)| per_request(a - b)),
    };
    Ok(run)
}

/// Requests/s, the 99th percentile and the errors from wrk's `--latency` report.
fn parse_wrk(text: &str) -> anyhow::Result<Run> {
    let mut run = Run::default();
    let mut seen = (false, false);
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", rate] => {
                run.requests_per_second = rate.parse()?;
                seen.0 = true;
            }
            ["99%", latency] => {
                run.p99_ms = milliseconds(latency)?;
                seen.1 = true;
            }
            [n, "requests", "in", ..] => run.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                run.errors += rest
                    .iter()
                    .filter_map(|f| f.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if seen != (true, true) {
        bail!("no Requests/sec or 99% line");
    }
    Ok(run)
}

/// `512.00us`, `1.23ms`, `2.00s` -> milliseconds.
fn milliseconds(value: &str) -> anyhow::Result<f64> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .context("a latency without unit")?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        other => bail!("unknown latency unit {other:?}"),
    })
}

/// Whether `addr` answers GET / for HOST with the backend's body within `timeout`.
async fn answers(addr: SocketAddr, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if get(addr, HOST).await.is_some_and(|b| b == BODY) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// GET / with `Host: host` at `addr`; the body of a 200, None otherwise.
async fn get(addr: SocketAddr, host: &str) -> Option<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = http::Request::get("/")
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// The backend pod: a fixed answer over HTTP/1.1 keep-alive, until killed.
async fn serve_backend(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request| async {
                let mut response =
                    http::Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain"),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_latency_report() {
        let report = "Running 10s test @ http://127.0.0.1:18080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   580.32us  200.00us   9.00ms   90.00%
    Req/Sec    50.00k     2.00k   60.00k    70.00%
  Latency Distribution
     50%  512.00us
     75%  600.00us
     90%  800.00us
     99%    1.23ms
  1000000 requests in 10.00s, 120.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec: 100000.50
Transfer/sec:     12.00MB
";
        let run = parse_wrk(report).expect("parsed");
        assert_eq!(run.requests_per_second, 100000.5);
        assert!((run.p99_ms - 1.23).abs() < 1e-9);
        assert_eq!(run.errors, 7);
        assert_eq!(run.requests, 1_000_000);
        assert!((milliseconds("512.00us").expect("us") - 0.512).abs() < 1e-9);
        assert!(parse_wrk("nothing here").is_err());
    }
}
