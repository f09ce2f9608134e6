//! The etcd API's view of the replicated store: `KvBackend` over a `RaftNode`.

use skiff_raft::{NodeError, RaftNode};
use skiff_storage::{
    RangeRequest, RangeResponse, Revision, TxnRequest, TxnResponse, WatchRequest, Watcher,
};

use crate::etcd::{BackendError, HeaderInfo, KvBackend, MemberInfo, MemberStatus};
use crate::server::identity::NodeIdentity;

#[derive(Clone)]
pub struct RaftKvBackend {
    node: RaftNode,
    cluster_id: u64,
}

impl RaftKvBackend {
    pub fn new(node: RaftNode, identity: &NodeIdentity) -> Self {
        // etcd cluster ids are u64; ours is 16 hex digits.
        let cluster_id = u64::from_str_radix(&identity.cluster_id, 16).unwrap_or(0);
        RaftKvBackend { node, cluster_id }
    }
}

fn backend_error(error: NodeError) -> BackendError {
    match error {
        NodeError::Compacted { compacted } => BackendError::Compacted { compacted },
        NodeError::FutureRevision { current } => BackendError::FutureRevision { current },
        NodeError::NoLeader => BackendError::NoLeader,
        NodeError::Timeout => BackendError::Timeout,
        NodeError::Rejected(message) => BackendError::Rejected(message),
        other => BackendError::Internal(other.to_string()),
    }
}

impl KvBackend for RaftKvBackend {
    async fn range(
        &self,
        req: RangeRequest,
        serializable: bool,
    ) -> Result<RangeResponse, BackendError> {
        self.node
            .range(&req, serializable)
            .await
            .map_err(backend_error)
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, BackendError> {
        self.node.txn(req).await.map_err(backend_error)
    }

    async fn compact(&self, revision: Revision) -> Result<Revision, BackendError> {
        self.node.compact(revision).await.map_err(backend_error)
    }

    fn watch(&self, req: WatchRequest) -> Result<Watcher, BackendError> {
        self.node.watch_hub().watch(req).map_err(|e| match e {
            skiff_storage::WatchError::Compacted { compacted } => {
                BackendError::Compacted { compacted }
            }
            other => BackendError::Internal(other.to_string()),
        })
    }

    async fn status(&self) -> Result<MemberStatus, BackendError> {
        let metrics = self.node.metrics();
        let me = self
            .node
            .members()
            .into_iter()
            .find(|m| m.id == self.node.id());
        Ok(MemberStatus {
            header: self.header(),
            version: "3.4.0-skiff".to_string(),
            db_size: self.node.kv().db_size_bytes() as i64,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            raft_term: metrics.current_term,
            is_learner: me.is_some_and(|m| !m.voter),
        })
    }

    fn members(&self) -> Vec<MemberInfo> {
        self.node
            .members()
            .into_iter()
            .map(|m| MemberInfo {
                id: m.id,
                name: m.info.name,
                peer_urls: vec![format!("https://{}", m.info.raft_addr)],
                client_urls: vec![format!("https://{}", m.info.client_addr)],
                is_learner: !m.voter,
            })
            .collect()
    }

    fn header(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: self.cluster_id,
            member_id: self.node.id(),
            revision: self.node.kv().revision(),
            raft_term: self.node.current_term(),
        }
    }
}
