//! The Kubernetes API server on the replicated store.
//!
//! What lives here: request parsing and routing (`router`, `request`), discovery and the
//! OpenAPI index (`discovery`), authentication (`auth`; authorization = any cluster-CA client
//! certificate until RBAC lands), the verbs (`handlers`, `patch`, `watch`), the generic object
//! store over raft (`store`), server-side printing (`table`), selectors and Status errors.
//! Per-kind rules live in `crate::registry`.

pub mod admission;
pub mod apply;
pub mod at_rest;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod bootstrap;
pub mod bootstrap_tokens;
pub mod discovery;
pub mod eviction;
pub mod handlers;
pub mod metrics;
pub mod mirror;
pub mod objects;
pub mod patch;
pub mod pod_streams;
pub mod port_forward;
pub mod protobuf;
pub mod request;
pub mod resource_metrics;
pub mod router;
pub mod selector;
pub mod service_network;
pub mod static_tokens;
pub mod status;
pub mod store;
pub mod subresources;
pub mod table;
pub mod tokens;
pub mod ui;
pub mod watch;

use axum::Router;
use skiff_raft::RaftNode;

/// The in-process API of one member. Built once and shared: the REST routes and the
/// controllers then use the same Objects (one ServiceNetwork allocator, one store handle).
pub fn objects(node: RaftNode) -> objects::Objects {
    objects::Objects::new(store::ObjectStore::new(node))
}

/// Where CustomResourceDefinitions live in the store.
const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// The REST API routes for one member, ready to merge into the API port's Router.
/// How one member's API is set up.
pub struct ApiOptions {
    /// `host:port` clients reach this member at.
    pub server_address: String,
    /// Where the audit log goes (None: no audit log).
    pub audit_log: Option<std::path::PathBuf>,
    /// Bearer tokens from `--token-auth-file`.
    pub static_tokens: static_tokens::StaticTokens,
    /// The cluster's join token, accepted as a bootstrap bearer token.
    pub join_token: Option<crate::pki::JoinToken>,
    /// How this member reaches the nodes' Kubelet APIs (logs, exec, metrics), and the usage
    /// samples it keeps.
    pub pod_metrics: resource_metrics::PodMetrics,
    /// This member's cluster DNS, whose query counters /metrics shows.
    pub cluster_dns: Option<skiff_dns::ClusterDns>,
    /// How the dashboard asks the members for their raft status.
    pub member: ui::MemberAccess,
}

pub fn routes(node: RaftNode, objects: objects::Objects, options: ApiOptions) -> Router {
    let ApiOptions {
        server_address,
        audit_log,
        static_tokens,
        join_token,
        pod_metrics,
        cluster_dns,
        member,
    } = options;
    // The custom kinds this member serves follow the CRDs in its replica (the mirror's task
    // runs for the life of the process).
    mirror::Mirror::follow(node.clone(), CRD_PREFIX, |objects| {
        let crds: Vec<serde_json::Value> = objects.values().cloned().collect();
        crate::registry::custom::set_definitions(&crds);
    });
    let audit = audit_log.and_then(|path| match audit::AuditLog::open(path.clone()) {
        Ok(log) => Some(log),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no audit log");
            None
        }
    });
    router::routes(router::ApiState {
        objects: objects.clone(),
        authorizer: authz::Authorizer::follow(node),
        server_address,
        metrics: metrics::Metrics::new(cluster_dns),
        audit,
        in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(router::MAX_IN_FLIGHT)),
        tokens: tokens::TokenIssuer::new(objects.store().clone()),
        static_tokens: std::sync::Arc::new(static_tokens),
        join_token,
        kubelets: pod_metrics.kubelets,
        usage_samples: pod_metrics.samples,
        member,
    })
}
