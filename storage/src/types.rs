//! The openraft type configuration shared by storage/ and raft/.

use serde::{Deserialize, Serialize};

use crate::model::{Command, CommandResult};

/// Raft member id. Assigned at join time by the leader; the init node is 1.
pub type NodeId = u64;

/// What a member publishes about itself in the raft membership config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Human-readable node name (hostname or --node-name).
    pub name: String,
    /// host:port of the raft peer gRPC endpoint (default port 2380).
    pub raft_addr: String,
    /// host:port of the API/agent/admin endpoint (default port 6443).
    pub api_addr: String,
    /// host:port of the etcd-compatible client endpoint (default port 2379).
    pub client_addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// skiff's raft types: the payload is a store `Command`; snapshots are files on disk,
    /// streamed (the state machine's `SnapshotData` is a `tokio::fs::File`).
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = NodeInfo,
);

pub type LeaderId = openraft::vote::leader_id_adv::LeaderId<u64, NodeId>;
pub type CommittedLeaderId = <LeaderId as openraft::vote::RaftLeaderId>::Committed;
pub type LogId = openraft::LogId<CommittedLeaderId>;
pub type Payload = openraft::EntryPayload<Command, NodeId, NodeInfo>;
pub type Entry = openraft::Entry<CommittedLeaderId, Payload>;
pub type Vote = openraft::Vote<LeaderId>;
pub type StoredMembership = openraft::StoredMembership<CommittedLeaderId, NodeId, NodeInfo>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<CommittedLeaderId, NodeId, NodeInfo>;
/// A snapshot as openraft hands it around: its meta and the open file.
pub type Snapshot = openraft::Snapshot<CommittedLeaderId, NodeId, NodeInfo, tokio::fs::File>;
