//! The built-in Ingress controller: a role of `skiff agent`, on by default, so an Ingress
//! works with nothing installed (k3s bundles Traefik for the same reason; no image can be
//! pulled here). Every node serves HTTP on its address's port 80 and HTTPS on 443 —
//! hostNetwork-style, the seed's DaemonSet + HostNetwork recommendation — and proxies
//! straight to the ready endpoint pods of the backend Services. The leader's
//! `controllers::ingress_status` publishes those node addresses in Ingress status.
//!
//! What lives where: `class` (which Ingresses are skiff's: shared with the node API and the
//! status controller), `annotations` (the ingress-nginx annotations honoured), `paths`
//! (Exact/Prefix/regex matching and rewrites), `table` (the routing table, a pure function of
//! the watched objects), `tls` (certificates from Secrets, chosen by SNI), `upstream`
//! (connections to pods), `proxy` (the request path), `listen` (the listeners), `feed` (the
//! gRPC watches), `metrics`. This file owns the rebuild loop: it coalesces bursts of watch
//! events, rebuilds what changed and swaps it in.

pub mod annotations;
pub mod class;
mod feed;
mod listen;
pub mod metrics;
pub mod paths;
mod proxy;
pub mod table;
pub mod tls;
mod upstream;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::agent::control_plane::ControlPlane;
use feed::{SecretWatches, Watched};
use metrics::IngressMetrics;
use proxy::{Proxy, Routes};
use table::{Inputs, Table};
use tls::{CertSet, Certificates};

/// How long a burst of watch events may take to land before the table is rebuilt.
const COALESCE: Duration = Duration::from_millis(10);

#[derive(Args, Debug, Clone, Default)]
pub struct IngressArgs {
    /// Turn the built-in Ingress controller off on this node (it serves ports 80/443 otherwise).
    #[arg(long = "no-ingress")]
    pub disabled: bool,
    /// Where the ingress serves HTTP (default ADDRESS:80).
    #[arg(long)]
    pub ingress_http_listen: Option<SocketAddr>,
    /// Where the ingress serves HTTPS (default ADDRESS:443).
    #[arg(long)]
    pub ingress_https_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(
        "cannot listen on {addr} for the ingress ({source}); set --ingress-http-listen/--ingress-https-listen or --no-ingress"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start an ingress worker: {0}")]
    Worker(std::io::Error),
}

/// The ingress of one node: the watched objects, a wake-up for the rebuild loop, and what the
/// listeners read (routes, certificates).
pub struct IngressRole {
    watched: Mutex<Watched>,
    changed: Notify,
    routes: Arc<Routes>,
    certificates: Arc<Certificates>,
    pub metrics: Arc<IngressMetrics>,
}

impl IngressRole {
    /// Changes the watched objects and schedules a rebuild.
    fn update(&self, change: impl FnOnce(&mut Watched)) {
        change(&mut self.watched.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_one();
    }

    /// Rebuilds routes and certificates whenever the objects change, forever; keeps the
    /// Secret watches to the Secrets in use.
    async fn run(self: Arc<Self>, control: Arc<ControlPlane>) {
        let mut secrets = SecretWatches::new(control);
        let (mut route_problems, mut cert_problems) = (Reported::default(), Reported::default());
        loop {
            self.changed.notified().await;
            tokio::time::sleep(COALESCE).await;
            let (table, certs) = {
                let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
                if !w.loaded() {
                    continue;
                }
                let table = std::mem::take(&mut w.routes_dirty).then(|| {
                    let inputs = Inputs {
                        ingresses: &w.ingresses,
                        classes: &w.classes,
                        services: &w.services,
                    };
                    let mut warnings = Vec::new();
                    (Table::build(&inputs, &mut warnings), warnings)
                });
                let certs = std::mem::take(&mut w.certs_dirty).then(|| {
                    let served = table::served(&w.ingresses, &w.classes);
                    let mut warnings = Vec::new();
                    let set = CertSet::build(&served, &w.secrets, &mut warnings);
                    (set, tls::wanted_secrets(&served), warnings)
                });
                (table, certs)
            };
            if let Some((table, warnings)) = table {
                info!(
                    ingresses = table.ingresses,
                    paths = table.paths,
                    "ingress routes updated"
                );
                self.routes.replace(table);
                route_problems.update(warnings);
            }
            if let Some((set, wanted, warnings)) = certs {
                info!(secrets = set.secrets, "ingress certificates updated");
                self.certificates.replace(set);
                secrets.follow(&self, &wanted);
                cert_problems.update(warnings);
            }
        }
    }
}

/// Problems of one kind of rebuild already logged: each is logged when it appears, and again
/// only after it went away and came back (rebuilds happen on every endpoint change).
#[derive(Default)]
struct Reported(BTreeSet<String>);

impl Reported {
    fn update(&mut self, current: Vec<String>) {
        for problem in &current {
            if !self.0.contains(problem) {
                warn!("{problem}");
            }
        }
        self.0 = current.into_iter().collect();
    }
}

/// Starts the ingress role: listeners on the node's ports, the watches, the rebuild loop.
/// Returns the role (its metrics) once the listeners are bound.
pub async fn start(
    args: &IngressArgs,
    address: IpAddr,
    control: Arc<ControlPlane>,
) -> Result<Arc<IngressRole>, IngressError> {
    let http = args
        .ingress_http_listen
        .unwrap_or(SocketAddr::new(address, 80));
    let https = args
        .ingress_https_listen
        .unwrap_or(SocketAddr::new(address, 443));
    let role = Arc::new(IngressRole {
        watched: Mutex::new(Watched::default()),
        changed: Notify::new(),
        routes: Arc::new(Routes::default()),
        certificates: Arc::new(Certificates::new()?),
        metrics: Arc::new(IngressMetrics::default()),
    });
    let tls = Arc::new(role.certificates.server_config()?);
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let make_proxy = || {
        Arc::new(Proxy::new(
            role.routes.clone(),
            Arc::new(upstream::Upstreams::default()),
            role.metrics.clone(),
            Some(https.port()),
        ))
    };
    let listeners = listen::Listeners { http, https, tls };
    listen::start_workers(workers, listeners, make_proxy).await?;
    tokio::spawn(role.clone().run(control.clone()));
    feed::start(&role, &control);
    info!(%http, %https, workers, "ingress serving");
    Ok(role)
}

/// `start`, with a failure logged instead of stopping the agent: a node that cannot take
/// ports 80/443 still runs its pods.
pub async fn start_or_log(
    args: &IngressArgs,
    address: IpAddr,
    control: Arc<ControlPlane>,
) -> Option<Arc<IngressRole>> {
    if args.disabled {
        info!("ingress role off (--no-ingress)");
        return None;
    }
    match start(args, address, control).await {
        Ok(role) => Some(role),
        Err(e) => {
            error!(error = %e, "ingress role not started");
            None
        }
    }
}
