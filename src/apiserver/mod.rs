//! The Kubernetes API server on the replicated store.
//!
//! What lives here: request parsing and routing (`router`, `request`), discovery and the
//! OpenAPI index (`discovery`), authentication (`auth`; authorization = any cluster-CA client
//! certificate until RBAC lands), the verbs (`handlers`, `patch`, `watch`), the generic object
//! store over raft (`store`), server-side printing (`table`), selectors and Status errors.
//! Per-kind rules live in `crate::registry`.

pub mod apply;
pub mod auth;
pub mod authz;
pub mod bootstrap;
pub mod discovery;
pub mod handlers;
pub mod objects;
pub mod patch;
pub mod protobuf;
pub mod request;
pub mod router;
pub mod selector;
pub mod service_network;
pub mod status;
pub mod store;
pub mod subresources;
pub mod table;
pub mod watch;

use axum::Router;
use skiff_raft::RaftNode;

/// The in-process API of one member. Built once and shared: the REST routes and the
/// controllers then use the same Objects (one ServiceNetwork allocator, one store handle).
pub fn objects(node: RaftNode) -> objects::Objects {
    objects::Objects::new(store::ObjectStore::new(node))
}

/// The REST API routes for one member, ready to merge into the API port's Router.
pub fn routes(node: RaftNode, objects: objects::Objects, server_address: String) -> Router {
    router::routes(router::ApiState {
        objects,
        authorizer: authz::Authorizer::follow(node),
        server_address,
    })
}
