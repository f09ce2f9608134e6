//! What the etcd API needs from the node underneath it. The raft node implements `KvBackend`;
//! the gRPC services in this module only translate the wire format and enforce etcd's rules.

use std::future::Future;

use skiff_storage::watch::{WatchRequest, Watcher};
use skiff_storage::{RangeRequest, RangeResponse, Revision, TxnRequest, TxnResponse};

pub trait KvBackend: Clone + Send + Sync + 'static {
    /// Linearizable unless `serializable` (then served from local state).
    fn range(
        &self,
        req: RangeRequest,
        serializable: bool,
    ) -> impl Future<Output = Result<RangeResponse, BackendError>> + Send;
    /// Through raft (forwarded to the leader when needed).
    fn txn(
        &self,
        req: TxnRequest,
    ) -> impl Future<Output = Result<TxnResponse, BackendError>> + Send;
    fn compact(
        &self,
        revision: Revision,
    ) -> impl Future<Output = Result<Revision, BackendError>> + Send;
    fn watch(&self, req: WatchRequest) -> Result<Watcher, BackendError>;
    fn status(&self) -> impl Future<Output = Result<MemberStatus, BackendError>> + Send;
    fn members(&self) -> Vec<MemberInfo>;
    /// cluster_id, member_id, current revision, raft term — for every response header.
    fn header(&self) -> HeaderInfo;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: Revision,
    pub raft_term: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberStatus {
    pub header: HeaderInfo,
    pub version: String,
    pub db_size: i64,
    pub leader: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub raft_term: u64,
    pub is_learner: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// Why the backend could not serve a request. `error::backend_status` maps each variant to the
/// gRPC status etcd returns for the same condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("mvcc: required revision has been compacted (compacted revision {compacted})")]
    Compacted { compacted: Revision },
    #[error("mvcc: required revision is a future revision (current revision {current})")]
    FutureRevision { current: Revision },
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    /// Deterministically refused by the state machine for a reason other than the above.
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("internal error: {0}")]
    Internal(String),
}
