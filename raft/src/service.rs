//! The server side of the peer RPC (port 2380): raft messages in, raft replies out, plus the
//! leader side of write forwarding and read index.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use skiff_proto::raft::RaftBytes;
use skiff_proto::raft::raft_peer_server::{RaftPeer, RaftPeerServer};
use skiff_storage::{NodeId, TypeConfig};
use tonic::{Request, Response, Status};

use crate::codec::{decode, encode};
use crate::elector::PreVoteRequest;
use crate::forward::{ForwardError, LeaderReply, LeaderRequest};
use crate::network::MAX_MESSAGE_BYTES;
use crate::node::RaftNode;

pub struct PeerService {
    node: RaftNode,
}

impl PeerService {
    pub fn server(node: RaftNode) -> RaftPeerServer<PeerService> {
        RaftPeerServer::new(PeerService { node })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn bytes<T: serde::Serialize>(value: &T) -> Result<Response<RaftBytes>, Status> {
    encode(value)
        .map(|data| Response::new(RaftBytes { data }))
        .map_err(Status::internal)
}

fn request<T: serde::de::DeserializeOwned>(req: Request<RaftBytes>) -> Result<T, Status> {
    decode(&req.into_inner().data).map_err(Status::invalid_argument)
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn append_entries(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = request(req)?;
        bytes(&self.node.raft().append_entries(rpc).await)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn vote(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let rpc: VoteRequest<NodeId> = request(req)?;
        bytes(&self.node.raft().vote(rpc).await)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn install_snapshot(
        &self,
        req: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = request(req)?;
        bytes(&self.node.raft().install_snapshot(rpc).await)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn forward(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let leader_request: LeaderRequest = request(req)?;
        let reply: Result<LeaderReply, ForwardError> =
            self.node.execute_as_leader(leader_request).await;
        bytes(&reply)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn read_index(&self, _req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let reply = self.node.execute_as_leader(LeaderRequest::ReadIndex).await;
        bytes(&reply)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn pre_vote(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let ask: PreVoteRequest = request(req)?;
        bytes(&self.node.answer_pre_vote(&ask).await)
    }
}
