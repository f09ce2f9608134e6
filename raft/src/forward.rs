//! What a member asks the leader to do on its behalf, carried by the `Forward` peer RPC.
//! Clients never need to know who leads: a follower forwards, the leader executes.

use serde::{Deserialize, Serialize};
use skiff_storage::{Command, CommandResult, NodeId, NodeInfo};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderRequest {
    Write(Command),
    /// The log index a linearizable read must wait for (read index).
    ReadIndex,
    AddLearner {
        id: NodeId,
        node: NodeInfo,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderReply {
    Write(CommandResult),
    ReadIndex(Option<u64>),
    MembershipChanged,
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum ForwardError {
    /// This member does not lead; `leader` is its best knowledge of who does.
    #[error("not the leader")]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    #[error("{0}")]
    Membership(String),
    /// Another membership change is still being committed: this one may go through once it is.
    #[error("{0}")]
    MembershipBusy(String),
    #[error("{0}")]
    Fatal(String),
    /// The write reached the log of a leader that then lost its leadership: a later leader may
    /// still commit it, so it must not be retried.
    #[error("{0}")]
    Indeterminate(String),
}
