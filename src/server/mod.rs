//! `skiff server`: a control-plane member. Binds its three ports, becomes a member (create,
//! join or resume), opens the store, starts raft and serves until SIGINT/SIGTERM.

pub mod admin;
pub mod api_listener;
pub mod bootstrap;
pub mod cluster_status;
mod etcd_backend;
pub mod identity;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::routing::get;
use skiff_proto::admin::PromoteRequest;
use skiff_proto::admin::admin_server::AdminServer;
use skiff_raft::service::PeerService;
use skiff_raft::{PeerTls, RaftNode, RaftNodeConfig};
use skiff_storage::{Store, StoreOptions};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{error, info, warn};

use crate::cli::ServerArgs;
use crate::etcd::EtcdLimits;
use crate::pki::at_rest::{self, AtRestKeys};
use bootstrap::{Membership, Origin};
use etcd_backend::RaftKvBackend;
use identity::NodeIdentity;

/// Where this member listens and what it tells others.
#[derive(Clone, Debug)]
pub struct Addresses {
    pub name: String,
    pub advertise: String,
    pub api_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub raft_listen: SocketAddr,
    pub api_advertised: String,
    pub client_advertised: String,
    pub raft_advertised: String,
}

impl Addresses {
    pub fn from_args(args: &ServerArgs) -> anyhow::Result<Self> {
        Self::new(
            &args.advertise,
            args.name.clone(),
            args.api_listen,
            args.client_listen,
            args.raft_listen,
        )
    }

    /// Addresses from an advertised IP; listen addresses default to it with the usual ports.
    pub fn new(
        advertise: &str,
        name: Option<String>,
        api_listen: Option<SocketAddr>,
        client_listen: Option<SocketAddr>,
        raft_listen: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let ip: std::net::IpAddr = advertise
            .parse()
            .map_err(|_| anyhow!("--advertise must be an IP address, got {advertise:?}"))?;
        let pick = |flag: Option<SocketAddr>, port: u16| flag.unwrap_or(SocketAddr::new(ip, port));
        let advertised = |listen: SocketAddr| {
            if listen.ip().is_unspecified() {
                SocketAddr::new(ip, listen.port()).to_string()
            } else {
                listen.to_string()
            }
        };
        let api_listen = pick(api_listen, 6443);
        let client_listen = pick(client_listen, 2379);
        let raft_listen = pick(raft_listen, 2380);
        Ok(Addresses {
            name: name.unwrap_or_else(|| format!("node-{advertise}")),
            advertise: advertise.to_string(),
            api_listen,
            client_listen,
            raft_listen,
            api_advertised: advertised(api_listen),
            client_advertised: advertised(client_listen),
            raft_advertised: advertised(raft_listen),
        })
    }

    /// Names and IPs this member's certificate must carry.
    pub fn sans(&self) -> Vec<String> {
        let mut sans = vec![self.advertise.clone()];
        for addr in [self.api_listen, self.client_listen, self.raft_listen] {
            let ip = addr.ip().to_string();
            if !addr.ip().is_unspecified() && !sans.contains(&ip) {
                sans.push(ip);
            }
        }
        sans
    }

    pub fn identity(&self, node_id: u64, cluster_id: String) -> NodeIdentity {
        NodeIdentity {
            node_id,
            cluster_id,
            name: self.name.clone(),
            raft_addr: self.raft_advertised.clone(),
            api_addr: self.api_advertised.clone(),
            client_addr: self.client_advertised.clone(),
        }
    }
}

/// Accepted connections with Nagle off: small gRPC replies must not wait for the peer's delayed
/// ACK (a 40 ms stall per request otherwise).
fn low_latency(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn bind(role: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {role} port"))
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    if let Some(target) = &args.remove {
        return remove_member(&args, target).await;
    }
    let addrs = Addresses::from_args(&args)?;
    // Checked before anything is bound or written; the member name is fixed up below.
    let snapshot_schedule = args.snapshots.schedule(&args.data, &addrs.name)?;
    let tuning = args.tuning()?;
    // Bind first: a used port is reported before anything is written to the data dir.
    let api_listener = bind("API", addrs.api_listen).await?;
    let client_listener = bind("etcd client", addrs.client_listen).await?;
    let raft_listener = bind("raft peer", addrs.raft_listen).await?;
    let cluster_dns = crate::dns_feed::bind(&args).await?;

    let membership = bootstrap::become_member(
        &args.data,
        args.init,
        args.join.as_deref(),
        args.token.as_deref(),
        &addrs,
    )
    .await?;
    let Membership {
        identity,
        pki,
        token,
        origin,
    } = membership;
    match &pki.secrets_encryption {
        Some(text) => {
            let keys = AtRestKeys::parse(text).with_context(|| {
                format!(
                    "reading {}",
                    args.data.join("pki").join(at_rest::KEY_FILE).display()
                )
            })?;
            if crate::apiserver::at_rest::install(keys).is_err() {
                bail!("the at-rest keys were already installed in this process");
            }
        }
        None => warn!(
            "no {} in the data dir (a cluster made before Secrets were encrypted): Secrets are stored unencrypted",
            at_rest::KEY_FILE
        ),
    }
    if identity.raft_addr != addrs.raft_advertised || identity.api_addr != addrs.api_advertised {
        warn!(stored = %identity.raft_addr, given = %addrs.raft_advertised, "addresses differ from the ones this member joined with; peers still use the stored ones");
    }

    let store = Store::open(
        &args.data.join("db"),
        StoreOptions {
            cluster_id: identity.cluster_id.clone(),
            ..Default::default()
        },
    )
    .context("opening the store")?;
    let tls = PeerTls {
        ca_pem: pki.ca.cert_pem.clone(),
        cert_pem: pki.node.cert_pem.clone(),
        key_pem: pki.node.key_pem.clone(),
    };
    let node = RaftNode::start(
        RaftNodeConfig {
            id: identity.node_id,
            info: identity.node_info(),
            cluster_id: identity.cluster_id.clone(),
            tuning,
            tls: tls.clone(),
        },
        store,
    )
    .await?;

    // Raft peer port: mutual TLS, cluster CA only.
    let peer_server = Server::builder()
        .tls_config(tls.server_config())?
        .add_service(PeerService::server(node.clone()))
        .serve_with_incoming(low_latency(raft_listener));
    let peer_task = tokio::spawn(peer_server);

    // etcd-compatible client port: mutual TLS (the store holds secrets).
    let backend = RaftKvBackend::new(node.clone(), &identity);
    let etcd_tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.node.cert_pem, &pki.node.key_pem))
        .client_ca_root(Certificate::from_pem(&pki.ca.cert_pem));
    let limits = EtcdLimits {
        max_request_bytes: args.max_request_bytes,
        ..Default::default()
    };
    let etcd_server = Server::builder()
        .tls_config(etcd_tls)?
        .add_routes(crate::etcd::services(backend.clone(), limits))
        .serve_with_incoming(low_latency(client_listener));
    let etcd_task = tokio::spawn(etcd_server);

    // A restored member seals its state into a raft snapshot before anyone can join.
    if origin == Origin::Restored {
        crate::backup::restore::finish_first_start(&node, &args.data).await?;
    }
    if let Some(mut schedule) = snapshot_schedule {
        schedule.member = identity.name.clone();
        schedule.at_rest_keys = pki.secrets_encryption.clone();
        crate::backup::schedule::spawn(node.clone(), schedule)?;
    }

    // API port: admin gRPC + bootstrap routes (the Kubernetes REST API joins here).
    let admin = admin::AdminService {
        node: node.clone(),
        pki: pki.clone(),
        token: token.clone(),
        cluster_id: identity.cluster_id.clone(),
    };
    let ca_pem = pki.ca.cert_pem.clone();
    let ready_node = node.clone();
    let objects = crate::apiserver::objects(node.clone());
    let node_api = crate::nodeapi::NodeApi::server(
        objects.clone(),
        node.clone(),
        crate::pki::ClusterCa::from_pem(pki.ca.clone()),
        token.clone(),
    );
    // The nodes' usage, read by the metrics API and by the autoscaler alike.
    let pod_metrics = crate::apiserver::resource_metrics::PodMetrics {
        kubelets: crate::apiserver::pod_streams::Kubelets::new(
            pki.ca.cert_pem.clone(),
            crate::pki::ClusterCa::from_pem(pki.ca.clone())
                .issue_client("kube-apiserver-kubelet-client", Some("system:masters"))?,
        ),
        samples: Default::default(),
    };
    let router: Router = tonic::service::Routes::new(AdminServer::new(admin))
        .add_service(node_api)
        .into_axum_router()
        .route("/cacerts", get(move || async move { ca_pem }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                match ready_node.leader() {
                    Some(_) => (http::StatusCode::OK, "ok"),
                    None => (http::StatusCode::SERVICE_UNAVAILABLE, "no leader"),
                }
            }),
        )
        .merge(crate::apiserver::routes(
            node.clone(),
            objects.clone(),
            crate::apiserver::ApiOptions {
                pod_metrics: pod_metrics.clone(),
                server_address: addrs.api_advertised.clone(),
                audit_log: Some(args.data.join("audit.log")),
                static_tokens: match &args.token_auth_file {
                    Some(path) => crate::apiserver::static_tokens::StaticTokens::load(path)?,
                    None => Default::default(),
                },
                join_token: Some(token.clone()),
                cluster_dns: cluster_dns.as_ref().map(|(dns, _)| dns.clone()),
                member: crate::apiserver::ui::MemberAccess {
                    api_addr: identity.api_addr.clone(),
                    ca_pem: pki.ca.cert_pem.clone(),
                    identity: pki.node.clone(),
                },
            },
        ));
    let acceptor =
        api_listener::tls_acceptor(&pki.ca.cert_pem, &pki.node.cert_pem, &pki.node.key_pem)?;
    let api_task = tokio::spawn(api_listener::serve(api_listener, acceptor, router));

    match origin {
        Origin::Created | Origin::Restored => {
            node.initialize().await?;
            println!("skiff: cluster {} created.", identity.cluster_id);
            println!(
                "join token (also in {}):\n{token}",
                bootstrap::token_path(&args.data).display()
            );
            println!(
                "kubeconfig: {}",
                args.data.join("admin.kubeconfig").display()
            );
        }
        Origin::Joined | Origin::Resumed => {
            tokio::spawn(promote_when_caught_up(
                node.clone(),
                token.secret.clone(),
                pki.ca.cert_pem.clone(),
            ));
        }
    }
    tokio::spawn(crate::apiserver::bootstrap::ensure_system_namespaces(
        node.clone(),
    ));
    // Controllers run on whichever member leads; this task starts and stops them.
    let controllers = crate::controllers::spawn(
        objects.clone(),
        node.clone(),
        crate::controllers::Config {
            lb_pool: args.service_lb_pool.clone(),
            pod_metrics: Some(pod_metrics),
        },
    );
    if let Some((dns, server)) = cluster_dns {
        crate::dns_feed::spawn(&node, dns, server);
        // Pods reach this member's DNS through kube-system/kube-dns (10.43.0.10).
        tokio::spawn(crate::apiserver::bootstrap::register_cluster_dns(
            objects,
            addrs.advertise.clone(),
        ));
    }
    tokio::spawn(crate::apiserver::authz::defaults::ensure_default_policy(
        node.clone(),
    ));
    tokio::spawn(crate::apiserver::bootstrap::ensure_cluster_info(
        node.clone(),
        pki.ca.cert_pem.clone(),
        format!("https://{}", addrs.api_advertised),
    ));
    info!(
        node_id = identity.node_id,
        api = %addrs.api_listen, client = %addrs.client_listen, raft = %addrs.raft_listen,
        "skiff server running"
    );

    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        r = peer_task => Err(anyhow!("raft peer server stopped: {r:?}")),
        r = etcd_task => Err(anyhow!("etcd server stopped: {r:?}")),
        r = api_task => Err(anyhow!("API server stopped: {r:?}")),
    };
    info!("shutting down");
    controllers.abort();
    node.shutdown().await;
    outcome
}

/// A learner asks the leader to make it a voter until it is one. The leader refuses until the
/// learner has caught up, so this simply retries.
async fn promote_when_caught_up(node: RaftNode, secret: String, ca_pem: String) {
    loop {
        let me = node.members().into_iter().find(|m| m.id == node.id());
        match me {
            Some(m) if m.voter => return,
            Some(_) => {}
            // Not in the membership we know yet (still replicating it): wait.
            None => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        if let Some((_, leader)) = node.leader() {
            match bootstrap::admin_client(&leader.api_addr, &ca_pem, None).await {
                Ok(mut client) => match client
                    .promote(PromoteRequest {
                        token_secret: secret.clone(),
                        node_id: node.id(),
                    })
                    .await
                {
                    Ok(_) => info!("promoted to voter"),
                    Err(status) => info!(reason = status.message(), "promotion pending"),
                },
                Err(e) => warn!(error = %e, "cannot reach the leader to ask for promotion"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn remove_member(args: &ServerArgs, target: &str) -> anyhow::Result<()> {
    let identity = NodeIdentity::load(&args.data)?.ok_or_else(|| {
        anyhow!(
            "{} holds no member; --remove needs the data dir of a member",
            args.data.display()
        )
    })?;
    let pki = crate::pki::PkiPaths::new(&args.data).load()?;
    let mut client =
        bootstrap::admin_client(&identity.api_addr, &pki.ca.cert_pem, Some(&pki.admin)).await?;
    let (node_id, name) = match target.parse::<u64>() {
        Ok(id) => (id, String::new()),
        Err(_) => (0, target.to_string()),
    };
    client
        .remove(skiff_proto::admin::RemoveRequest { node_id, name })
        .await
        .map_err(|s| anyhow!("remove failed: {}", s.message()))?;
    println!("member {target} removed");
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    error!(error = %e, "cannot install SIGTERM handler");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
