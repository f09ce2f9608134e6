//! The server side of the peer RPC (port 2380): raft messages in, raft replies out, plus the
//! leader side of write forwarding and read index.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use skiff_proto::raft::RaftBytes;
use skiff_proto::raft::raft_peer_server::{RaftPeer, RaftPeerServer};
use skiff_storage::{Snapshot, TypeConfig};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::codec::{decode, encode};
use crate::elector::PreVoteRequest;
use crate::forward::{ForwardError, LeaderReply, LeaderRequest};
use crate::network::{MAX_MESSAGE_BYTES, SnapshotOffer};
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

/// Checks the whole received file (format, SHA-256 trailer) and that it is the snapshot offered.
async fn verify_received(
    mut file: std::fs::File,
    offer: &SnapshotOffer,
) -> Result<tokio::fs::File, Status> {
    let expected = offer.meta.last_log_id;
    tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Status::internal(format!("rewind received snapshot: {e}")))?;
        let (header, _) = skiff_storage::verify_snapshot(&mut std::io::BufReader::new(&mut file))
            .map_err(|e| Status::data_loss(format!("received snapshot: {e}")))?;
        if header.last_applied != expected {
            return Err(Status::invalid_argument(format!(
                "received snapshot is at {:?}, the offer said {:?}",
                header.last_applied, expected
            )));
        }
        Ok(tokio::fs::File::from_std(file))
    })
    .await
    .map_err(|e| Status::internal(format!("verify received snapshot: {e}")))?
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<RaftBytes, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftPeer for PeerService {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn append_entries(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = request(req)?;
        bytes(&self.node.raft().append_entries(rpc).await)
    }

    type StreamAppendStream = ReplyStream;

    /// One replication session from the leader: requests are handed to raft as they arrive
    /// (openraft pipelines them into the log) and each reply goes back in order once its entries
    /// are flushed. A request that does not decode ends the session with an error.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn stream_append(
        &self,
        req: Request<Streaming<RaftBytes>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let (bad_tx, bad_rx) = tokio::sync::oneshot::channel::<Status>();
        let mut bad_tx = Some(bad_tx);
        let requests = req.into_inner().scan((), move |(), message| {
            let decoded = match message {
                Ok(message) => decode::<AppendEntriesRequest<TypeConfig>>(&message.data)
                    .map_err(Status::invalid_argument),
                Err(status) => Err(status),
            };
            let next = match decoded {
                Ok(rpc) => Some(rpc),
                Err(status) => {
                    if let Some(tx) = bad_tx.take() {
                        let _ = tx.send(status);
                    }
                    None
                }
            };
            futures::future::ready(next)
        });
        let replies = self.node.raft().stream_append(requests).map(|result| {
            let reply: Result<_, String> = result.map_err(|fatal| fatal.to_string());
            encode(&reply)
                .map(|data| RaftBytes { data })
                .map_err(Status::internal)
        });
        // After the last reply, a request stream that ended on bad input says why.
        let why = futures::stream::once(async move { bad_rx.await.ok() })
            .filter_map(|status| futures::future::ready(status.map(Err)));
        Ok(Response::new(Box::pin(replies.chain(why))))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn vote(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let rpc: VoteRequest<TypeConfig> = request(req)?;
        bytes(&self.node.raft().vote(rpc).await)
    }

    /// Receives a whole snapshot into a file in the snapshot directory, then has raft install
    /// it (the state machine validates its checksum while copying it into place).
    #[tracing::instrument(level = "info", skip_all)]
    async fn install_snapshot(
        &self,
        req: Request<Streaming<RaftBytes>>,
    ) -> Result<Response<RaftBytes>, Status> {
        let mut messages = req.into_inner();
        let offer: SnapshotOffer = match messages.message().await? {
            Some(first) => decode(&first.data).map_err(Status::invalid_argument)?,
            None => return Err(Status::invalid_argument("empty snapshot transfer")),
        };
        let (mut file, _received) = self
            .node
            .snapshot_inbox()
            .create()
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut received_bytes: u64 = 0;
        while let Some(chunk) = messages.message().await? {
            file.write_all(&chunk.data)
                .await
                .map_err(|e| Status::internal(format!("write received snapshot: {e}")))?;
            received_bytes += chunk.data.len() as u64;
        }
        file.flush()
            .await
            .map_err(|e| Status::internal(format!("write received snapshot: {e}")))?;
        // Raft stops this member on a failed install, so a transfer cut short or corrupted on
        // the way is refused here instead (the leader sends it again).
        let file = verify_received(file.into_std().await, &offer).await?;
        tracing::info!(
            last_log_id = ?offer.meta.last_log_id,
            received_bytes,
            "snapshot received and verified; installing"
        );
        let snapshot = Snapshot {
            meta: offer.meta,
            snapshot: file,
        };
        let result: Result<_, String> = self
            .node
            .raft()
            .install_full_snapshot(offer.vote, snapshot)
            .await
            .map_err(|fatal| fatal.to_string());
        bytes(&result)
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use openraft::EntryPayload;
    use skiff_storage::{
        Command, CommittedLeaderId, Entry, LogId, SnapshotMeta, Store, StoreOptions, TxnRequest,
        Vote,
    };

    use super::*;

    /// A store with a few keys and a snapshot file of it, as a leader would send it.
    fn store_snapshot(dir: &std::path::Path) -> (Vec<u8>, Option<LogId>) {
        let mut store = Store::open(&dir.join("store"), StoreOptions::default()).unwrap();
        let entries = (1..=5).map(|index| Entry {
            log_id: LogId::new(
                CommittedLeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            ),
            payload: EntryPayload::Normal(Command::Txn(TxnRequest::put(format!("/k{index}"), "v"))),
        });
        store.state_machine.apply_entries(entries).unwrap();
        let mut bytes = Vec::new();
        let header = skiff_storage::write_snapshot(&store.kv, &mut bytes, &mut |_, _| {}).unwrap();
        (bytes, header.last_applied)
    }

    fn received(dir: &std::path::Path, bytes: &[u8]) -> std::fs::File {
        let path = dir.join("received");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        std::fs::File::open(&path).unwrap()
    }

    fn offer(last_log_id: Option<LogId>) -> SnapshotOffer {
        SnapshotOffer {
            vote: Vote::new_committed(1, 1),
            meta: SnapshotMeta {
                last_log_id,
                ..Default::default()
            },
        }
    }

    #[tokio::test]
    async fn a_complete_snapshot_passes_and_a_cut_or_mislabelled_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, last_applied) = store_snapshot(dir.path());
        assert_eq!(last_applied.map(|l| l.index), Some(5));

        let whole = received(dir.path(), &bytes);
        assert!(verify_received(whole, &offer(last_applied)).await.is_ok());

        let cut = received(dir.path(), &bytes[..bytes.len() - 40]);
        let refused = verify_received(cut, &offer(last_applied))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::DataLoss, "{refused:?}");

        let whole = received(dir.path(), &bytes);
        let other = LogId::new(
            CommittedLeaderId {
                term: 2,
                node_id: 1,
            },
            9,
        );
        let refused = verify_received(whole, &offer(Some(other)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    }
}
