//! The control loops (ReplicaSet, Deployment, garbage collector), run in-process on the raft
//! leader only.
//!
//! What lives here: `spawn` (the leadership loop: start everything when this member becomes
//! leader, stop it all when it stops being one, so exactly one member writes as the
//! controllers), the `Reconcile` trait and the worker loop that drives a controller from its
//! queue. Shared machinery: `informer` (list + watch + cache per kind), `queue` (de-duplicating,
//! rate-limited work queue), `ownership` (ownerReferences, selectors, the handlers mapping a
//! dependent to its controller's key), `expectations` (writes a controller made but its cache
//! has not seen yet), `modify` (one guarded write). One controller per file: `replicaset`,
//! `deployment` (with its pure parts in `rollout` and `deployment_status`), `gc`.
//!
//! Not yet: ReplicationController, custom resources in the garbage collector (it covers the
//! kinds of `registry::kinds()`).
//!
//! Controllers write through `Objects`, the same admission, validation and optimistic
//! concurrency path as kubectl; a lost race is an error, retried with backoff.

pub mod autoscale_math;
pub mod autoscaler;
pub mod deployment;
pub mod deployment_status;
pub mod disruption;
pub mod endpoints;
pub mod event_ttl;
pub mod expectations;
pub mod gc;
pub mod informer;
pub mod ingress_status;
pub mod namespace;
pub mod nodelifecycle;
pub mod ownership;
pub mod pod_affinity;
pub mod queue;
pub mod replicaset;
pub mod resourcequota;
pub mod rollout;
pub mod service_lb;
pub mod serviceaccounts;
pub mod volume_binding;
pub mod volume_fit;
// The scheduler and the batch, stateful and daemon workloads, started by `workloads::start`.
pub mod cronjob;
pub mod daemonset;
pub mod fit;
pub mod job;
pub mod recorder;
pub mod scheduler;
pub mod statefulset;
pub mod templates;
pub mod topology_spread;
pub mod workloads;

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use skiff_raft::RaftNode;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::apiserver::objects::{Objects, Part, Scope};
use crate::apiserver::status::ApiError;
use crate::registry::{self, Kind};
use informer::{Informers, RESYNC_PERIOD};
use queue::WorkQueue;

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next event for this key.
    Done,
    /// Look again after this long even without an event (e.g. waiting for minReadySeconds).
    RequeueAfter(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("watch: {0}")]
    Watch(#[from] skiff_storage::WatchError),
}

/// A controller: brings the world in line with one object, named by its queue key.
/// Idempotent: called again for the same key it must converge, not repeat itself.
pub trait Reconcile: Send + Sync + 'static {
    /// For logs and spans.
    fn name(&self) -> &'static str;

    fn reconcile(&self, key: &str) -> impl Future<Output = Result<Action, Error>> + Send;
}

/// Changes one object through the guaranteed-update loop: `change` is applied to the current
/// stored object (re-read on a lost race), so it must be a function of that object, not of a
/// cached copy. Returns the written object, or None when it no longer exists (its deletion is
/// news the controller hears of anyway).
pub async fn modify(
    objects: &Objects,
    kind: &'static dyn Kind,
    namespace: Option<&str>,
    name: &str,
    part: Part,
    change: impl Fn(&mut serde_json::Value) + Send + Sync,
) -> Result<Option<serde_json::Value>, Error> {
    let transform = |current: &serde_json::Value| {
        let mut next = current.clone();
        change(&mut next);
        Ok(next)
    };
    match objects
        .update(Scope::new(kind, namespace), name, part, &transform, false)
        .await
    {
        Ok(written) => Ok(Some(written)),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Workers per controller: a few keys reconcile in parallel, never one key twice at once.
const WORKERS: usize = 2;

/// Runs `workers` loops taking keys from `queue` until the task is dropped.
pub async fn run_workers<R: Reconcile>(controller: Arc<R>, queue: Arc<WorkQueue>, workers: usize) {
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let controller = controller.clone();
        let queue = queue.clone();
        tasks.spawn(async move {
            loop {
                let key = queue.get().await;
                let span = tracing::info_span!("reconcile", controller = controller.name(), %key);
                let result = controller.reconcile(&key).instrument(span.clone()).await;
                let _entered = span.enter();
                match result {
                    Ok(Action::Done) => queue.forget(&key),
                    Ok(Action::RequeueAfter(delay)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), delay);
                    }
                    // Lost races are routine with several writers; the retry fixes them.
                    Err(Error::Api(ApiError::Conflict { .. } | ApiError::AlreadyExists { .. })) => {
                        tracing::debug!("lost a race; retrying");
                        queue.add_rate_limited(key.clone());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, failures = queue.failures(&key), "reconcile failed");
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// What the operator chose for the controllers (`skiff server` flags), and what they read
/// besides the store.
#[derive(Clone, Default)]
pub struct Config {
    /// Addresses for LoadBalancer Services; none: the nodes' own addresses.
    pub lb_pool: Option<service_lb::AddressPool>,
    /// The pods' resource usage, for the HorizontalPodAutoscaler (none: no autoscaling).
    pub pod_metrics: Option<crate::apiserver::resource_metrics::PodMetrics>,
}

/// Starts the leadership loop: the controllers run while this member leads.
pub fn spawn(objects: Objects, node: RaftNode, config: Config) -> JoinHandle<()> {
    tokio::spawn(lead(objects, node, config).instrument(tracing::info_span!("controllers")))
}

/// The leadership loop:
/// 1. wait until this member is leader;
/// 2. start every informer and controller in one task set;
/// 3. when leadership goes (or the raft node shuts down), abort the set and wait for it to
///    finish, so no write is issued by a former leader after it noticed;
/// 4. repeat.
async fn lead(objects: Objects, node: RaftNode, config: Config) {
    let mut metrics = node.raft().metrics();
    loop {
        while !node.is_leader() {
            if metrics.changed().await.is_err() {
                return;
            }
        }
        let term = node.current_term();
        tracing::info!(term, "became leader; starting controllers");
        let mut tasks = JoinSet::new();
        start_all(&objects, &config, &mut tasks);
        let mut shutting_down = false;
        while node.is_leader() && node.current_term() == term {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        shutting_down = true;
                        break;
                    }
                }
                Some(ended) = tasks.join_next() => {
                    if let Err(e) = ended && e.is_panic() {
                        tracing::error!(error = %e, "a controller task panicked");
                    }
                }
            }
        }
        tasks.shutdown().await;
        tracing::info!(term, "no longer leader; controllers stopped");
        if shutting_down {
            return;
        }
    }
}

/// Builds the informers and controllers of one leadership term into `tasks`.
fn start_all(objects: &Objects, config: &Config, tasks: &mut JoinSet<()>) {
    let informers = Arc::new(Informers::new(objects.clone(), RESYNC_PERIOD));
    let workloads = (
        registry::lookup("", "v1", "pods"),
        registry::lookup("apps", "v1", "replicasets"),
        registry::lookup("apps", "v1", "deployments"),
    );
    match workloads {
        (Some(pods), Some(replicasets), Some(deployments)) => {
            let (rs, rs_queue) = replicaset::ReplicaSetController::new(
                objects.clone(),
                &informers,
                replicasets,
                pods,
            );
            tasks.spawn(start_when_synced(rs, rs_queue, informers.clone()));
            if let Some(rcs) = registry::lookup("", "v1", "replicationcontrollers") {
                let (rc, rc_queue) =
                    replicaset::ReplicaSetController::new(objects.clone(), &informers, rcs, pods);
                tasks.spawn(start_when_synced(rc, rc_queue, informers.clone()));
            }
            let (deploy, deploy_queue) = deployment::DeploymentController::new(
                objects.clone(),
                &informers,
                deployments,
                replicasets,
                pods,
            );
            tasks.spawn(start_when_synced(deploy, deploy_queue, informers.clone()));
        }
        _ => tracing::warn!(
            "pods, replicasets or deployments are not served; workload controllers disabled"
        ),
    }
    let (gc, gc_queue) = gc::GarbageCollector::new(objects.clone(), &informers);
    tasks.spawn(start_when_synced(gc, gc_queue, informers.clone()));
    start_cluster_controllers(objects, config, &informers, tasks);
    workloads::start(objects, &informers, tasks);
    informers.start(tasks);
}

/// The namespace, service-account, endpoints, LoadBalancer-address, Ingress-address and
/// event-expiry controllers.
fn start_cluster_controllers(
    objects: &Objects,
    config: &Config,
    informers: &Arc<Informers>,
    tasks: &mut JoinSet<()>,
) {
    let core = |resource: &str| registry::lookup("", "v1", resource);
    let (Some(namespaces), Some(service_accounts), Some(config_maps)) = (
        core("namespaces"),
        core("serviceaccounts"),
        core("configmaps"),
    ) else {
        tracing::warn!("core kinds missing; namespace controllers disabled");
        return;
    };
    let (ns, ns_queue) =
        namespace::NamespaceController::new(objects.clone(), informers, namespaces);
    tasks.spawn(start_when_synced(ns, ns_queue, informers.clone()));
    let kinds = serviceaccounts::Kinds {
        namespaces,
        service_accounts,
        config_maps,
    };
    let (sa, sa_queue) =
        serviceaccounts::ServiceAccountController::new(objects.clone(), informers, kinds);
    tasks.spawn(start_when_synced(sa, sa_queue, informers.clone()));
    if let (Some(services), Some(pods), Some(endpoints), Some(slices)) = (
        core("services"),
        core("pods"),
        core("endpoints"),
        registry::lookup("discovery.k8s.io", "v1", "endpointslices"),
    ) {
        let kinds = endpoints::Kinds {
            services,
            pods,
            endpoints,
            slices,
        };
        let (ep, ep_queue) = endpoints::EndpointsController::new(objects.clone(), informers, kinds);
        tasks.spawn(start_when_synced(ep, ep_queue, informers.clone()));
    }
    if let Some(quotas) = core("resourcequotas") {
        let counted = ["pods", "services", "persistentvolumeclaims", "configmaps"]
            .into_iter()
            .filter_map(core)
            .collect();
        let kinds = resourcequota::Kinds { quotas, counted };
        let (rq, rq_queue) =
            resourcequota::ResourceQuotaController::new(objects.clone(), informers, kinds);
        tasks.spawn(start_when_synced(rq, rq_queue, informers.clone()));
    }
    if let (Some(services), Some(nodes)) = (core("services"), core("nodes")) {
        let (lb, lb_queue) = service_lb::ServiceLbController::new(
            objects.clone(),
            informers,
            services,
            nodes,
            config.lb_pool.clone(),
        );
        tasks.spawn(start_when_synced(lb, lb_queue, informers.clone()));
    }
    let networking = |resource: &str| registry::lookup("networking.k8s.io", "v1", resource);
    if let (Some(ingresses), Some(classes), Some(nodes)) = (
        networking("ingresses"),
        networking("ingressclasses"),
        core("nodes"),
    ) {
        let kinds = ingress_status::Kinds {
            ingresses,
            classes,
            nodes,
        };
        let (is, is_queue) =
            ingress_status::IngressStatusController::new(objects.clone(), informers, kinds);
        tasks.spawn(start_when_synced(is, is_queue, informers.clone()));
    }
    if let (Some(volumes), Some(claims), Some(classes), Some(pods)) = (
        core("persistentvolumes"),
        core("persistentvolumeclaims"),
        registry::lookup("storage.k8s.io", "v1", "storageclasses"),
        core("pods"),
    ) {
        let kinds = volume_binding::Kinds {
            volumes,
            claims,
            classes,
            pods,
        };
        let (binder, binder_queue) =
            volume_binding::VolumeBinder::new(objects.clone(), informers, kinds);
        tasks.spawn(start_when_synced(binder, binder_queue, informers.clone()));
    }
    if let (Some(autoscalers), Some(pods), Some(metrics)) = (
        registry::lookup("autoscaling", "v2", "horizontalpodautoscalers"),
        core("pods"),
        config.pod_metrics.clone(),
    ) {
        let (hpa, hpa_queue) =
            autoscaler::Autoscaler::new(objects.clone(), informers, autoscalers, pods, metrics);
        tasks.spawn(start_when_synced(hpa, hpa_queue, informers.clone()));
    }
    if let (Some(budgets), Some(pods)) = (
        registry::lookup("policy", "v1", "poddisruptionbudgets"),
        core("pods"),
    ) {
        let apps = |resource: &str| registry::lookup("apps", "v1", resource);
        let scaled = [
            apps("replicasets"),
            apps("deployments"),
            apps("statefulsets"),
            core("replicationcontrollers"),
        ];
        let kinds = disruption::Kinds {
            budgets,
            pods,
            scaled: scaled.into_iter().flatten().collect(),
        };
        let (dc, dc_queue) =
            disruption::DisruptionController::new(objects.clone(), informers, kinds);
        tasks.spawn(start_when_synced(dc, dc_queue, informers.clone()));
    }
    if let Some(events) = core("events") {
        tasks.spawn(event_ttl::run(objects.clone(), events));
    }
    if let (Some(nodes), Some(pods), Some(leases)) = (
        core("nodes"),
        core("pods"),
        registry::lookup("coordination.k8s.io", "v1", "leases"),
    ) {
        let kinds = nodelifecycle::Kinds { nodes, pods };
        let (nl, nl_queue) =
            nodelifecycle::NodeLifecycleController::new(objects.clone(), informers, kinds, leases);
        tasks.spawn(start_when_synced(nl, nl_queue, informers.clone()));
    }
}

/// Runs a controller's workers once every informer has listed: a controller acting on a
/// half-filled cache would create what already exists.
async fn start_when_synced<R: Reconcile>(
    controller: Arc<R>,
    queue: Arc<WorkQueue>,
    informers: Arc<Informers>,
) {
    for informer in informers.all() {
        informer.wait_synced().await;
    }
    tracing::info!(
        controller = controller.name(),
        "caches synced; starting workers"
    );
    run_workers(controller, queue, WORKERS).await;
}
