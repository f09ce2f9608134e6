//! `skiff agent`: the kubelet (and, with `crate::proxy`, kube-proxy) of one node.
//!
//! It joins with the cluster token once (a node certificate kept under `--data`), registers
//! its Node, keeps its Lease fresh, watches the pods bound to it over gRPC and runs them with
//! the chosen runtime, and serves `kubectl logs/exec/port-forward` to the API server on its
//! Kubelet port. When the control plane is unreachable the pods keep running; the watches
//! resume from the last revision they saw once a member answers again.

pub mod control_plane;
pub mod egress;
pub mod env;
pub mod kubelet_server;
pub mod logs;
pub mod metrics_server;
pub mod node;
pub mod pods;
pub mod routes;
pub mod runtime;
pub mod static_pods;
pub mod volumes;
pub(crate) mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tracing::{info, warn};

use crate::json_path::JsonPath;
use control_plane::{ControlPlane, Credentials};
use pods::{EventRecorder, NodeContext, PodManager, PodRegistry, ServiceCache};
use runtime::Runtime;
pub use runtime::process::reaper::Reaper;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// Host processes (no images, no isolation beyond mount/UTS namespaces as root).
    Process,
    /// containerd over CRI (real images and pod networking).
    Containerd,
}

/// How Services are routed on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// nftables DNAT (kube-proxy's nftables mode).
    Nftables,
    /// iptables DNAT (kube-proxy's iptables mode), for nodes without nftables.
    Iptables,
    /// No service routing on this node.
    None,
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// A control-plane member (https://ADDR:6443); repeat or comma-separate for failover.
    #[arg(long, required_unless_present = "cleanup", value_delimiter = ',')]
    pub server: Vec<String>,
    /// The join token printed by `skiff server --init` (needed on the first start only).
    #[arg(long, env = "SKIFF_TOKEN")]
    pub token: Option<String>,
    /// Data directory (node certificate, pod directories, runtime state).
    #[arg(long, default_value = "./skiff-agent")]
    pub data: PathBuf,
    /// Node name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The node's IP address (InternalIP; the API server reaches the Kubelet port here).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Where the Kubelet API (logs, exec, port-forward) listens (default ADDRESS:10250).
    #[arg(long)]
    pub kubelet_listen: Option<SocketAddr>,
    #[arg(long, value_enum, default_value = "process")]
    pub runtime: RuntimeKind,
    /// An existing containerd socket (default: start a private containerd under --data).
    #[arg(long)]
    pub containerd_socket: Option<PathBuf>,
    /// Image tarballs to import into containerd at start (see images/build.sh).
    #[arg(long)]
    pub import_images: Option<PathBuf>,
    /// The network namespace (path) this node lives in; its containerd is started inside.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// The cluster DNS server written into pods' resolv.conf (dnsPolicy ClusterFirst); default
    /// 10.43.0.10 (kube-dns) when this node routes Services, else the node's resolv.conf.
    #[arg(long)]
    pub cluster_dns: Option<String>,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Extra node labels (key=value, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    #[arg(long, default_value_t = 110)]
    pub max_pods: u64,
    /// Service routing (default: nftables with the containerd runtime, none with process,
    /// whose pods share the host's network).
    #[arg(long, value_enum)]
    pub proxy_mode: Option<ProxyMode>,
    /// Remove the proxy's rules from this node and exit.
    #[arg(long)]
    pub cleanup: bool,
    #[command(flatten)]
    pub ingress: crate::ingress::IngressArgs,
    /// Where the agent serves Prometheus metrics, GET /metrics (default ADDRESS:10249).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// A directory of Pod manifests run on this node as static pods (mirrored to the API as
    /// `<name>-<node>`), like the kubelet's --pod-manifest-path.
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "node".into())
}

/// The containerd runtime for this node (a private containerd unless --containerd-socket).
async fn containerd_runtime(
    args: &AgentArgs,
    name: &str,
    pod_cidr: Option<String>,
) -> anyhow::Result<Arc<dyn Runtime>> {
    let options = runtime::containerd::ContainerdOptions {
        state_dir: args.data.join("containerd"),
        socket: args.containerd_socket.clone(),
        pod_cidr,
        netns: args.netns.clone(),
        cgroup_parent: format!("skiff-{name}"),
        import_images: args.import_images.clone(),
    };
    Ok(Arc::new(
        runtime::containerd::ContainerdRuntime::start(options).await?,
    ))
}

/// Runs the agent until a shutdown signal. `reaper` stops what is left of the process
/// runtime's containers once this process is gone (forked in `main` while it had one thread;
/// `Reaper::none()` for containerd, whose containers outlive an agent restart by design).
pub async fn run(mut args: AgentArgs, reaper: Reaper) -> anyhow::Result<()> {
    // containerd and its shims run with other working directories: a relative --data (skiff
    // up's default ./skiff-up) would name the wrong state dir to them.
    args.data = std::path::absolute(&args.data)
        .with_context(|| format!("resolving {}", args.data.display()))?;
    if args.cleanup {
        crate::proxy::cleanup().await?;
        egress::remove().await?;
        println!("proxy rules removed");
        return Ok(());
    }
    let name = args.name.clone().unwrap_or_else(host_name);
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let sans = vec![args.address.clone(), name.clone()];
    let credentials = Credentials::load_or_join(
        &args.data,
        &args.server,
        args.token.as_deref(),
        &name,
        &sans,
    )
    .await?;
    let control = Arc::new(ControlPlane::new(credentials.clone()));
    let host = node::HostInfo::probe(args.max_pods);
    let node_ip: std::net::IpAddr = args.address.parse().context("--address must be an IP")?;
    let kubelet_listen = args
        .kubelet_listen
        .unwrap_or(SocketAddr::new(node_ip, 10250));
    // Before registering: the Node's label says whether this node serves Ingresses.
    let ingress = crate::ingress::start_or_log(&args.ingress, node_ip, control.clone()).await;

    // Register first: the containerd runtime needs the node's pod CIDR.
    let mut labels: Vec<(String, String)> = args
        .node_labels
        .iter()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    labels.push((
        crate::ingress::class::ROLE_NODE_LABEL.to_string(),
        ingress.is_some().to_string(),
    ));
    let runtime_name = match args.runtime {
        RuntimeKind::Process => "process",
        RuntimeKind::Containerd => "containerd",
    };
    let spec = Arc::new(node::NodeSpec {
        name: name.clone(),
        address: args.address.clone(),
        kubelet_port: kubelet_listen.port(),
        labels,
        runtime: runtime_name,
        host: host.clone(),
    });
    let registered = node::register(&control, &spec).await;
    let pod_cidr = registered
        .at("/spec/podCIDR")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    let runtime: Arc<dyn Runtime> = match args.runtime {
        RuntimeKind::Process => Arc::new(runtime::process::ProcessRuntime::open(
            &args.data.join("runtime"),
            node_ip,
            reaper,
        )?),
        RuntimeKind::Containerd => containerd_runtime(&args, &name, pod_cidr.clone()).await?,
    };
    info!(node = %name, runtime = runtime.name(), pod_cidr = pod_cidr.as_deref().unwrap_or(""), "agent starting");
    tokio::spawn(node::heartbeat(control.clone(), spec.clone()));

    let proxy_mode = args.proxy_mode.unwrap_or(match args.runtime {
        RuntimeKind::Containerd => ProxyMode::Nftables,
        RuntimeKind::Process => ProxyMode::None,
    });
    let registry = Arc::new(PodRegistry::default());
    let services = Arc::new(ServiceCache::default());
    let context = Arc::new(NodeContext {
        node_ip: args.address.clone(),
        runtime: runtime.clone(),
        control: control.clone(),
        pods_dir: args.data.join("pods"),
        services: services.clone(),
        resources: host.resources(),
        // With service routing, pods ask the cluster DNS at kube-dns's ClusterIP.
        cluster_dns: args.cluster_dns.clone().or_else(|| {
            (proxy_mode != ProxyMode::None)
                .then(|| crate::apiserver::service_network::cluster_dns_ip().to_string())
        }),
        cluster_domain: args.cluster_domain.clone(),
        registry: registry.clone(),
        events: EventRecorder::start(control.clone()),
    });
    let kubelet = kubelet_server::serve(
        kubelet_listen,
        &credentials,
        registry.clone(),
        runtime.clone(),
    )
    .await?;
    let pods = tokio::spawn(watch::pods(
        control.clone(),
        name.clone(),
        PodManager::new(context),
    ));
    if let Some(dir) = args.pod_manifest_path.clone() {
        tokio::spawn(static_pods::run(control.clone(), name.clone(), dir));
    }
    let proxy = match proxy_mode {
        ProxyMode::Nftables => Some(crate::proxy::DataPlane::Nftables),
        ProxyMode::Iptables => Some(crate::proxy::DataPlane::Iptables),
        ProxyMode::None => None,
    }
    .map(|plane| crate::proxy::Proxy::new(name.clone(), args.address.clone(), plane));
    if let Some(proxy) = &proxy {
        tokio::spawn(proxy.clone().run());
        tokio::spawn(watch::endpoint_slices(control.clone(), proxy.clone()));
    }
    // Pods with their own network (containerd) reach other nodes' pods through routes, and
    // other hosts through the node's address.
    let own_pod_network = args.runtime == RuntimeKind::Containerd;
    if own_pod_network && let Err(e) = egress::install(crate::nodeapi::pod_cidr::CLUSTER_CIDR).await
    {
        warn!(error = %e, "pods' traffic to hosts outside the pod network is not masqueraded");
    }
    if own_pod_network || proxy.is_some() {
        let sinks = watch::NodeSinks {
            routes: own_pod_network.then(|| routes::Routes::new(name.clone())),
            proxy: proxy.clone(),
        };
        tokio::spawn(watch::nodes(control.clone(), sinks));
    }
    let service_watch = tokio::spawn(watch::services(control.clone(), services, proxy.clone()));
    let mut metrics_sources = vec![metrics_server::kubelet_source(
        name.clone(),
        registry.clone(),
    )];
    if let Some(proxy) = &proxy {
        let proxy = proxy.clone();
        metrics_sources.push(Arc::new(move || proxy.metrics.render()));
    }
    metrics_sources.extend(ingress.iter().map(|role| {
        let metrics = role.metrics.clone();
        Arc::new(move || metrics.render()) as metrics_server::Source
    }));
    let metrics_listen = args
        .metrics_listen
        .unwrap_or(SocketAddr::new(node_ip, 10249));
    if let Err(e) = metrics_server::serve(metrics_listen, metrics_sources).await {
        warn!(error = %e, "agent metrics are not served");
    }
    info!(node = %name, kubelet = %kubelet_listen, "skiff agent running");
    tokio::select! {
        _ = crate::server::shutdown_signal() => info!("shutting down; pods keep running until the next start"),
        r = kubelet => anyhow::bail!("kubelet server stopped: {r:?}"),
        r = pods => anyhow::bail!("pod watch stopped: {r:?}"),
        r = service_watch => anyhow::bail!("service watch stopped: {r:?}"),
    }
    Ok(())
}
