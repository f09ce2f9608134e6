//! skiff-raft: the replicated log that makes every control-plane node's store the same store.
//!
//! What lives here:
//! - `network`: openraft's `RaftNetworkFactory` over tonic gRPC with mutual TLS (peer port 2380).
//! - `service`: the server side of the same peer RPC, plus write forwarding and read index.
//! - `node`: `RaftNode`, the handle the binary uses: writes (forwarded to the leader when this
//!   node follows), linearizable reads (read index), membership changes, metrics.
//! - `elector`: pre-voted elections that start as soon as a silent leader's lease runs out.
//! - `compaction`: the leader's background history compaction (proposed through the log, so
//!   every member compacts at the same revision).
//! - `write_batch`: group proposals (concurrent writes share one raft entry).
//! - `tls`: turning the cluster PKI's PEM files into tonic TLS configs.
//!
//! Storage (RocksDB, MVCC, watch) is skiff-storage's business; this crate never opens RocksDB.

mod codec;
pub mod compaction;
pub mod config;
mod elector;
pub mod error;
mod forward;
pub mod network;
pub mod node;
mod read_index;
pub mod service;
pub mod tls;
mod write_batch;

pub use config::RaftTuning;
pub use error::NodeError;
pub use node::{MemberView, RaftNode, RaftNodeConfig};
pub use tls::PeerTls;
