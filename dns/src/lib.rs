//! Cluster DNS for skiff: the Kubernetes DNS-based service discovery names of a cluster, served
//! by hickory-server.
//!
//! What lives here:
//! - `model`: the plain input structs (Services, EndpointSlices, Pods as DNS needs them); the
//!   binary converts stored objects into these, so this crate does not depend on it.
//! - `index`: names -> records, rebuilt on change; answers are a pure function of it.
//! - `server`: hickory's server loop (UDP with truncation, TCP, EDNS0) over the index, with
//!   optional forwarding of non-cluster names.
//! - `metrics`: query counts by type and rcode for the API server's /metrics.

pub mod index;
pub mod metrics;
pub mod model;
pub mod server;

pub use index::{Answer, ClusterIndex, IndexConfig, Lookup};
pub use metrics::QueryMetrics;
pub use model::{ClusterState, Endpoint, EndpointSlice, Pod, Port, Service, ServiceKind};
pub use server::{BoundServer, ClusterDns, DnsConfig, DnsError};
