//! The client side of the peer RPC: openraft's network factory over tonic with mutual TLS.
//!
//! Messages travel as bincode bytes inside one protobuf field (see proto/proto/raft.proto), so
//! the wire schema is openraft's own types and never drifts from them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_proto::raft::RaftBytes;
use skiff_proto::raft::raft_peer_client::RaftPeerClient;
use skiff_storage::{NodeId, NodeInfo, TypeConfig};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::codec::{decode, encode};

/// Large enough for a full AppendEntries batch or a snapshot chunk.
pub(crate) const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Lazily connected channels to peers, keyed by address; shared by raft replication and
/// write forwarding so each peer costs one HTTP/2 connection.
#[derive(Clone)]
pub struct PeerChannels {
    tls: ClientTlsConfig,
    channels: Arc<Mutex<HashMap<(String, Lane), Channel>>>,
}

/// Which connection to a peer a request travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    Replication,
    Forwarding,
}

#[derive(Debug, thiserror::Error)]
#[error("peer {addr}: {message}")]
pub struct PeerConnectError {
    pub addr: String,
    pub message: String,
}

impl PeerChannels {
    pub fn new(tls: ClientTlsConfig) -> Self {
        PeerChannels {
            tls,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The connection raft replication uses.
    pub fn client(&self, addr: &str) -> Result<RaftPeerClient<Channel>, PeerConnectError> {
        self.client_on(addr, Lane::Replication)
    }

    /// A second connection for forwarded writes and read index: small requests that must not
    /// queue behind large AppendEntries/snapshot messages on the replication connection.
    pub fn forwarding_client(
        &self,
        addr: &str,
    ) -> Result<RaftPeerClient<Channel>, PeerConnectError> {
        self.client_on(addr, Lane::Forwarding)
    }

    fn client_on(
        &self,
        addr: &str,
        lane: Lane,
    ) -> Result<RaftPeerClient<Channel>, PeerConnectError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (addr.to_string(), lane);
        let channel = match channels.get(&key) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(format!("https://{addr}"))
                    .and_then(|e| e.tls_config(self.tls.clone()))
                    .map_err(|e| PeerConnectError {
                        addr: addr.to_string(),
                        message: e.to_string(),
                    })?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy();
                channels.insert(key, channel.clone());
                channel
            }
        };
        Ok(RaftPeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// openraft asks this for one client per target peer.
#[derive(Clone)]
pub struct PeerNetworkFactory {
    channels: PeerChannels,
}

impl PeerNetworkFactory {
    pub fn new(channels: PeerChannels) -> Self {
        PeerNetworkFactory { channels }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerNetwork {
            target,
            addr: node.raft_addr.clone(),
            channels: self.channels.clone(),
        }
    }
}

pub struct PeerNetwork {
    target: NodeId,
    addr: String,
    channels: PeerChannels,
}

type PeerRpcError<E> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WireError(String);

impl PeerNetwork {
    /// One RPC: encode, send with the caller's deadline, decode `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &self,
        method: PeerMethod,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, PeerRpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data =
            encode(request).map_err(|e| RPCError::Network(NetworkError::new(&WireError(e))))?;
        let mut client = self
            .channels
            .client(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let message = tonic::Request::new(RaftBytes { data });
        let call = async {
            match method {
                PeerMethod::AppendEntries => client.append_entries(message).await,
                PeerMethod::Vote => client.vote(message).await,
                PeerMethod::InstallSnapshot => client.install_snapshot(message).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::new(&WireError(
                    format!("{} timed out after {ttl:?}", self.addr),
                ))));
            }
            Ok(Err(status)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&WireError(
                    format!("{}: {}", self.addr, status.message()),
                ))));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&WireError(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum PeerMethod {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    #[tracing::instrument(level = "trace", skip_all, fields(target = self.target))]
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, PeerRpcError<openraft::error::Infallible>> {
        self.call(PeerMethod::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target))]
    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, PeerRpcError<InstallSnapshotError>> {
        self.call(PeerMethod::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target))]
    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, PeerRpcError<openraft::error::Infallible>> {
        self.call(PeerMethod::Vote, &rpc, option.hard_ttl()).await
    }
}
