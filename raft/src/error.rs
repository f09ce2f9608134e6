//! Errors a caller of `RaftNode` can see.

use skiff_storage::{KvError, Rejection, Revision};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no leader (the cluster has no quorum or is electing)")]
    NoLeader,
    /// The outcome is unknown: the request may or may not have been applied.
    #[error("request timed out")]
    Timeout,
    #[error("mvcc: required revision has been compacted (compacted revision {compacted})")]
    Compacted { compacted: Revision },
    #[error("mvcc: required revision is a future revision (current revision {current})")]
    FutureRevision { current: Revision },
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("membership change failed: {0}")]
    Membership(String),
    #[error("raft stopped: {0}")]
    Fatal(String),
    #[error("storage: {0}")]
    Storage(String),
}

impl From<Rejection> for NodeError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Compacted { compacted } => NodeError::Compacted { compacted },
            Rejection::FutureRevision { current } => NodeError::FutureRevision { current },
            Rejection::Unsupported(msg) => NodeError::Rejected(msg),
        }
    }
}

impl From<KvError> for NodeError {
    fn from(err: KvError) -> Self {
        match err {
            KvError::Compacted { compacted } => NodeError::Compacted { compacted },
            KvError::FutureRevision { current } => NodeError::FutureRevision { current },
            other => NodeError::Storage(other.to_string()),
        }
    }
}
