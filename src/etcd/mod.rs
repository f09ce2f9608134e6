//! The etcd v3 client API (the client port, 2379), wire-compatible with etcd 3.4 so that
//! `etcdctl` and other clientv3 programs work against skiff unmodified.
//!
//! What lives here:
//! - `backend`: the `KvBackend` trait the raft node implements; nothing here knows about raft.
//! - `kv`: Range, Put, DeleteRange, Txn, Compact.
//! - `watch`: the bidirectional Watch stream (create, cancel, progress, filters).
//! - `maintenance`: Status, Alarm (always empty) and Cluster MemberList.
//! - `convert`: wire types <-> `skiff_storage` model, with etcd's request validation.
//! - `error`: etcd's exact gRPC codes and messages.
//!
//! Served: KV, Watch, Maintenance (Status, Alarm), Cluster (MemberList). Not served: leases
//! (only lease 0 is accepted), auth, nested txns, ignore_value/ignore_lease, membership
//! changes, snapshots, defragment, hash; those answer UNIMPLEMENTED (or INVALID_ARGUMENT for a
//! non-zero lease).

mod backend;
mod convert;
mod error;
mod kv;
mod maintenance;
mod watch;

#[cfg(test)]
mod etcdctl_tests;
#[cfg(test)]
mod test_backend;

pub use backend::{BackendError, HeaderInfo, KvBackend, MemberInfo, MemberStatus};

use skiff_proto::etcdserverpb::cluster_server::ClusterServer;
use skiff_proto::etcdserverpb::kv_server::KvServer;
use skiff_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use skiff_proto::etcdserverpb::watch_server::WatchServer;
use tonic::service::Routes;

/// Request limits, with etcd's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EtcdLimits {
    /// Largest write (Put, DeleteRange, Txn) accepted, encoded; etcd's `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// Most compares, success ops or failure ops in one Txn; etcd's `--max-txn-ops`.
    pub max_txn_ops: usize,
}

impl Default for EtcdLimits {
    fn default() -> Self {
        EtcdLimits {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
        }
    }
}

impl EtcdLimits {
    /// The gRPC layer's own cap on a received message. Like etcd, it sits above
    /// `max_request_bytes`, so a request just over the limit gets etcd's "request is too large"
    /// rather than a transport-level RESOURCE_EXHAUSTED.
    pub fn max_decoding_message_size(&self) -> usize {
        const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
        self.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES)
    }
}

/// The four etcd services over `backend`, ready to serve (alone on the client port with
/// `tonic::transport::Server::builder().add_routes(..)`, or merged into an axum router with
/// `Routes::into_axum_router`).
pub fn services<B: KvBackend>(backend: B, limits: EtcdLimits) -> Routes {
    let max_decoding = limits.max_decoding_message_size();
    Routes::new(
        KvServer::new(kv::KvService::new(backend.clone(), limits))
            .max_decoding_message_size(max_decoding),
    )
    .add_service(
        WatchServer::new(watch::WatchService::new(backend.clone()))
            .max_decoding_message_size(max_decoding),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService::new(backend.clone()))
            .max_decoding_message_size(max_decoding),
    )
    .add_service(
        ClusterServer::new(maintenance::ClusterService::new(backend))
            .max_decoding_message_size(max_decoding),
    )
}
