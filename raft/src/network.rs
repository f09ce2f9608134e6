//! The client side of the peer RPC: openraft's network factory over tonic with mutual TLS.
//!
//! Messages travel as bincode bytes inside one protobuf field (see proto/proto/raft.proto), so
//! the wire schema is openraft's own types and never drifts from them.
//!
//! Replication is pipelined: each leader-to-follower replication session is one bidirectional
//! gRPC stream (`StreamAppend`), so the leader sends the next AppendEntries as soon as its log
//! has it instead of waiting for the follower's previous flush. Heartbeats go as unary calls on
//! the second connection, where they never queue behind a large append or a snapshot.

use std::collections::HashMap;
use std::future::Future;
use std::io::SeekFrom;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2, stream_append_sequential};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skiff_proto::raft::RaftBytes;
use skiff_proto::raft::raft_peer_client::RaftPeerClient;
use skiff_storage::{NodeId, NodeInfo, Snapshot, SnapshotMeta, TypeConfig, Vote};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::codec::{decode, encode};

/// Large enough for a full AppendEntries batch or a snapshot chunk.
pub(crate) const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Snapshot files travel in chunks of this size.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// A replication stream with requests outstanding and no reply for this long is broken off (and
/// retried by openraft). Generous on purpose: a busy 2-core machine can take a few hundred
/// milliseconds to flush, and a broken stream costs a reconnect and a backoff. A dead peer is
/// found sooner by the connection's keepalive or a reset.
const MIN_STREAM_REPLY_WAIT: Duration = Duration::from_secs(2);

/// Lazily connected channels to peers, keyed by address; shared by raft replication and
/// write forwarding so each peer costs two HTTP/2 connections.
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

    /// A second connection for forwarded writes, read index and heartbeats: small requests that
    /// must not queue behind large AppendEntries/snapshot messages on the replication connection.
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

/// openraft asks this for one client per target peer (and one more for its heartbeats).
#[derive(Clone)]
pub struct PeerNetworkFactory {
    channels: PeerChannels,
}

impl PeerNetworkFactory {
    pub fn new(channels: PeerChannels) -> Self {
        PeerNetworkFactory { channels }
    }

    fn network(&self, target: NodeId, node: &NodeInfo, lane: Lane) -> PeerNetwork {
        PeerNetwork {
            target,
            addr: node.raft_addr.clone(),
            channels: self.channels.clone(),
            lane,
            unary_until: None,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        self.network(target, node, Lane::Replication)
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        self.network(target, node, Lane::Forwarding)
    }
}

pub struct PeerNetwork {
    target: NodeId,
    addr: String,
    channels: PeerChannels,
    /// Replication clients stream; the heartbeat client sends one unary call per heartbeat.
    lane: Lane,
    /// Until then this peer is replicated with unary calls: it answered `StreamAppend` with
    /// "unimplemented", i.e. it runs an older skiff (a rolling upgrade in progress).
    unary_until: Option<Instant>,
}

/// How long a peer without `StreamAppend` is replicated with unary calls before it is tried
/// again (it may have been upgraded meanwhile).
const UNARY_FALLBACK: Duration = Duration::from_secs(30);

type PeerRpcError = RPCError<TypeConfig>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WireError(String);

fn unreachable(message: impl Into<String>) -> PeerRpcError {
    RPCError::Unreachable(Unreachable::new(&WireError(message.into())))
}

fn network_error(message: impl Into<String>) -> PeerRpcError {
    RPCError::Network(NetworkError::new(&WireError(message.into())))
}

/// The first message of a snapshot transfer; the file's bytes follow.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotOffer {
    pub(crate) vote: Vote,
    pub(crate) meta: SnapshotMeta,
}

impl PeerNetwork {
    fn client(&self) -> Result<RaftPeerClient<Channel>, PeerRpcError> {
        self.channels
            .client_on(&self.addr, self.lane)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    /// One unary RPC: encode, send with the caller's deadline, decode `Result<Resp, RaftError>`.
    async fn call<Req, Resp>(
        &self,
        method: PeerMethod,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, PeerRpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let data = encode(request).map_err(network_error)?;
        let mut client = self.client()?;
        let message = tonic::Request::new(RaftBytes { data });
        let call = async {
            match method {
                PeerMethod::AppendEntries => client.append_entries(message).await,
                PeerMethod::Vote => client.vote(message).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "{} timed out after {ttl:?}",
                    self.addr
                )));
            }
            Ok(Err(status)) => {
                return Err(unreachable(format!("{}: {}", self.addr, status.message())));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<TypeConfig>> =
            decode(&reply.data).map_err(network_error)?;
        // The only error a peer's raft returns for these calls is that it stopped.
        result.map_err(|e| unreachable(format!("{} (member {}): {e}", self.addr, self.target)))
    }

    /// Opens a `StreamAppend` stream: requests are encoded as openraft produces them, replies
    /// decoded in order. A stream with requests outstanding and no reply within `reply_wait`
    /// ends with an error; an idle stream (the follower has everything) stays open.
    async fn open_append_stream<S>(
        &self,
        input: S,
        reply_wait: Duration,
    ) -> Result<
        BoxStream<'static, Result<StreamAppendResult<TypeConfig>, PeerRpcError>>,
        StreamOpenError,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let mut client = self.client().map_err(StreamOpenError::Other)?;
        let progress = Arc::new(StreamProgress::new());
        let sent = progress.clone();
        let requests = input.filter_map(move |request| {
            let sent = sent.clone();
            async move {
                match encode(&request) {
                    Ok(data) => {
                        sent.on_send();
                        Some(RaftBytes { data })
                    }
                    Err(e) => {
                        // Our own types always encode; ending the stream here would only stall.
                        tracing::error!(error = %e, "cannot encode AppendEntries");
                        None
                    }
                }
            }
        });
        let addr = self.addr.clone();
        let target = self.target;
        let response = tokio::time::timeout(reply_wait, client.stream_append(requests))
            .await
            .map_err(|_| {
                StreamOpenError::Other(unreachable(format!(
                    "{addr}: opening the replication stream timed out"
                )))
            })?
            .map_err(|status| match status.code() {
                tonic::Code::Unimplemented => StreamOpenError::Unimplemented,
                _ => StreamOpenError::Other(unreachable(format!("{addr}: {}", status.message()))),
            })?;
        let replies = response.into_inner();
        let state = (replies, progress, addr, false);
        let out = futures::stream::unfold(
            state,
            move |(mut replies, progress, addr, done)| async move {
                if done {
                    return None;
                }
                let item = loop {
                    let waited = tokio::time::timeout(reply_wait, replies.message()).await;
                    match waited {
                        Err(_) if progress.stalled(reply_wait) => {
                            break Err(unreachable(format!(
                                "{addr}: no replication reply within {reply_wait:?}"
                            )));
                        }
                        Err(_) => continue,
                        Ok(Err(status)) => {
                            break Err(unreachable(format!("{addr}: {}", status.message())));
                        }
                        Ok(Ok(None)) => return None,
                        Ok(Ok(Some(reply))) => {
                            progress.on_reply();
                            let decoded: Result<
                                Result<StreamAppendResult<TypeConfig>, String>,
                                String,
                            > = decode(&reply.data);
                            break match decoded {
                                Ok(Ok(result)) => Ok(result),
                                // The follower's raft stopped: nothing to retry on this stream.
                                Ok(Err(fatal)) => Err(unreachable(format!(
                                    "{addr} (member {target}): raft stopped: {fatal}"
                                ))),
                                Err(e) => Err(network_error(e)),
                            };
                        }
                    }
                };
                let done = item.is_err();
                Some((item, (replies, progress, addr, done)))
            },
        );
        Ok(Box::pin(out))
    }

    /// Sends the snapshot file: the offer, then the file in chunks.
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let streaming = |e: PeerRpcError| match e {
            RPCError::Network(e) => StreamingError::Network(e),
            RPCError::Timeout(e) => StreamingError::Timeout(e),
            other => StreamingError::Unreachable(Unreachable::new(&other)),
        };
        let offer = encode(&SnapshotOffer {
            vote,
            meta: snapshot.meta.clone(),
        })
        .map_err(|e| streaming(network_error(e)))?;
        let mut file = snapshot.snapshot;
        file.seek(SeekFrom::Start(0))
            .await
            .map_err(|e| streaming(network_error(format!("rewind snapshot: {e}"))))?;
        let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
        let read_error_slot = read_error.clone();
        let chunks = futures::stream::unfold(file, move |mut file| {
            let read_error_slot = read_error_slot.clone();
            async move {
                let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                match file.read(&mut chunk).await {
                    Ok(0) => None,
                    Ok(n) => {
                        chunk.truncate(n);
                        Some((RaftBytes { data: chunk }, file))
                    }
                    Err(e) => {
                        // Ends the upload early; the receiver then fails the checksum.
                        *read_error_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        None
                    }
                }
            }
        });
        let messages =
            futures::stream::once(async move { RaftBytes { data: offer } }).chain(chunks);
        let mut client = self.client().map_err(streaming)?;
        let reply = client
            .install_snapshot(messages)
            .await
            .map_err(|status| {
                streaming(unreachable(format!("{}: {}", self.addr, status.message())))
            })?
            .into_inner();
        if let Some(e) = read_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(streaming(network_error(format!("read snapshot file: {e}"))));
        }
        let result: Result<SnapshotResponse<TypeConfig>, String> =
            decode(&reply.data).map_err(|e| streaming(network_error(e)))?;
        result.map_err(|e| {
            streaming(unreachable(format!(
                "{}: installing the snapshot: {e}",
                self.addr
            )))
        })
    }
}

/// Why a replication stream did not open.
enum StreamOpenError {
    /// The peer runs a skiff without `StreamAppend`.
    Unimplemented,
    Other(PeerRpcError),
}

/// When a replication stream last made progress, and how many requests await a reply.
struct StreamProgress {
    outstanding: AtomicU64,
    /// Milliseconds since `epoch` of the last reply, or of the first send after an idle spell.
    last_progress_ms: AtomicU64,
    epoch: Instant,
}

impl StreamProgress {
    fn new() -> Self {
        StreamProgress {
            outstanding: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_send(&self) {
        if self.outstanding.fetch_add(1, Ordering::AcqRel) == 0 {
            self.last_progress_ms
                .store(self.now_ms(), Ordering::Release);
        }
    }

    fn on_reply(&self) {
        // Saturating: a reply without a counted send (never expected) must not wrap.
        let _ = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        self.last_progress_ms
            .store(self.now_ms(), Ordering::Release);
    }

    /// Requests are outstanding and nothing came back for `wait`.
    fn stalled(&self, wait: Duration) -> bool {
        if self.outstanding.load(Ordering::Acquire) == 0 {
            return false;
        }
        let since = self
            .now_ms()
            .saturating_sub(self.last_progress_ms.load(Ordering::Acquire));
        u128::from(since) >= wait.as_millis()
    }
}

#[derive(Clone, Copy)]
enum PeerMethod {
    AppendEntries,
    Vote,
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = tokio::fs::File;

    #[tracing::instrument(level = "trace", skip_all, fields(target = self.target))]
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, PeerRpcError> {
        self.call(PeerMethod::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, PeerRpcError>>, PeerRpcError>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        // Heartbeats: one request per stream, so a unary call says the same with less.
        let unary = self.lane == Lane::Forwarding
            || self.unary_until.is_some_and(|until| Instant::now() < until);
        if unary {
            return stream_append_sequential(self, input, option);
        }
        let reply_wait = option.hard_ttl().max(MIN_STREAM_REPLY_WAIT);
        Box::pin(async move {
            match self.open_append_stream(input, reply_wait).await {
                Ok(replies) => Ok(replies as BoxStream<'s, _>),
                Err(StreamOpenError::Other(e)) => Err(e),
                Err(StreamOpenError::Unimplemented) => {
                    tracing::info!(
                        peer = self.target,
                        addr = %self.addr,
                        "peer has no StreamAppend (an older skiff): replicating one request at a time"
                    );
                    self.unary_until = Some(Instant::now() + UNARY_FALLBACK);
                    // openraft starts the session again, and it goes unary.
                    Err(network_error(format!(
                        "{}: StreamAppend unimplemented; falling back to unary calls",
                        self.addr
                    )))
                }
            }
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target))]
    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, PeerRpcError> {
        self.call(PeerMethod::Vote, &rpc, option.hard_ttl()).await
    }

    #[tracing::instrument(level = "info", skip_all, fields(target = self.target))]
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::select! {
            result = self.send_snapshot(vote, snapshot) => result,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_stream_is_never_stalled_and_a_silent_busy_one_is() {
        let progress = StreamProgress::new();
        let wait = Duration::from_millis(20);
        // "Not stalled yet" is checked against a wait no scheduling delay can reach.
        let long = Duration::from_secs(60);
        assert!(!progress.stalled(Duration::ZERO), "nothing sent");

        progress.on_send();
        assert!(!progress.stalled(long), "just sent");
        std::thread::sleep(wait * 2);
        assert!(
            progress.stalled(wait),
            "a request and no reply for longer than the wait"
        );

        progress.on_reply();
        assert!(
            !progress.stalled(Duration::ZERO),
            "every request answered: idle"
        );
        std::thread::sleep(wait * 2);
        assert!(
            !progress.stalled(wait),
            "idle for long is still not stalled"
        );

        // A reply resets the clock even while other requests are outstanding.
        progress.on_send();
        progress.on_send();
        std::thread::sleep(wait * 2);
        progress.on_reply();
        assert!(!progress.stalled(long), "a reply just came");
    }
}
