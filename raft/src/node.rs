//! `RaftNode`: the one handle the binary holds for the replicated store.
//!
//! Writes go through `write`: proposed locally when this member leads, otherwise forwarded to the
//! leader over the peer RPC. Linearizable reads call `read_barrier` first (read index: ask the
//! leader for its commit index, confirmed by a quorum heartbeat, then wait until this member has
//! applied it) and then read local state, so every member serves reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ReadPolicy, ServerState};
use skiff_storage::{
    Command, CommandResult, KvView, NodeId, NodeInfo, RangeRequest, RangeResponse, Revision,
    SnapshotInbox, StateMachineStore, Store, TxnRequest, TxnResponse, TypeConfig, WatchHub,
};
use tracing::{Instrument, info, info_span, warn};

use crate::codec::{decode, encode};
use crate::config::RaftTuning;
use crate::elector::{self, Elector, PreVoteReply, PreVoteRequest};
use crate::error::NodeError;
use crate::forward::{ForwardError, LeaderReply, LeaderRequest};
use crate::network::{PeerChannels, PeerNetworkFactory};
use crate::read_index::ReadIndexBatcher;
use crate::tls::PeerTls;
use crate::write_batch::WriteBatcher;

pub struct RaftNodeConfig {
    pub id: NodeId,
    pub info: NodeInfo,
    pub cluster_id: String,
    pub tuning: RaftTuning,
    pub tls: PeerTls,
}

/// A member as seen in the current membership config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub id: NodeId,
    pub info: NodeInfo,
    pub voter: bool,
}

/// A deliberately broken mode for chaos runs, to prove the checkers can fail: with
/// SKIFF_UNSAFE_SERIALIZABLE_READS=1 linearizable reads skip the read barrier and may be stale.
fn unsafe_serializable_reads() -> bool {
    static UNSAFE: OnceLock<bool> = OnceLock::new();
    *UNSAFE.get_or_init(|| {
        let on = std::env::var("SKIFF_UNSAFE_SERIALIZABLE_READS").is_ok_and(|v| v == "1");
        if on {
            warn!(
                "SKIFF_UNSAFE_SERIALIZABLE_READS=1: linearizable reads SKIP the read barrier and \
                 can return stale data. This is a chaos-testing switch; never run a real cluster \
                 with it."
            );
        }
        on
    })
}

#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    id: NodeId,
    info: NodeInfo,
    raft: Raft<TypeConfig, StateMachineStore>,
    snapshot_inbox: SnapshotInbox,
    kv: KvView,
    watch: WatchHub,
    channels: PeerChannels,
    tuning: RaftTuning,
    reads: ReadIndexBatcher,
    writes: WriteBatcher,
    elector: Elector,
}

impl RaftNode {
    /// Starts raft over an opened store. Does not initialize or join: see `initialize`.
    pub async fn start(config: RaftNodeConfig, store: Store) -> Result<RaftNode, NodeError> {
        // Says so in the log at start-up when the broken chaos mode is on.
        unsafe_serializable_reads();
        let raft_config = config
            .tuning
            .openraft_config(&config.cluster_id)
            .validate()
            .map_err(|e| NodeError::Fatal(format!("invalid raft config: {e}")))?;
        let channels = PeerChannels::new(config.tls.client_config());
        let network = PeerNetworkFactory::new(channels.clone());
        let snapshot_inbox = store.state_machine.snapshot_inbox();
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            network,
            store.log,
            store.state_machine,
        )
        .await
        .map_err(|e| NodeError::Fatal(e.to_string()))?;
        let node = RaftNode {
            inner: Arc::new(NodeInner {
                id: config.id,
                info: config.info,
                raft,
                snapshot_inbox,
                kv: store.kv,
                watch: store.watch,
                channels,
                tuning: config.tuning,
                reads: ReadIndexBatcher::default(),
                writes: WriteBatcher::default(),
                elector: Elector::default(),
            }),
        };
        crate::compaction::spawn(node.clone());
        if node.inner.tuning.fast_elections {
            tokio::spawn(elector::run(node.clone(), node.inner.elector.clone()));
        }
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }
    pub fn info(&self) -> &NodeInfo {
        &self.inner.info
    }
    pub fn raft(&self) -> &Raft<TypeConfig, StateMachineStore> {
        &self.inner.raft
    }
    /// Where snapshots a leader sends are received (see service.rs).
    pub(crate) fn snapshot_inbox(&self) -> &SnapshotInbox {
        &self.inner.snapshot_inbox
    }
    pub fn kv(&self) -> &KvView {
        &self.inner.kv
    }
    pub fn watch_hub(&self) -> &WatchHub {
        &self.inner.watch
    }
    pub fn tuning(&self) -> &RaftTuning {
        &self.inner.tuning
    }
    pub fn metrics(&self) -> openraft::RaftMetrics<TypeConfig> {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    /// The current raft term, without cloning the whole metrics (called on every etcd response).
    pub fn current_term(&self) -> u64 {
        self.inner.raft.metrics().borrow_watched().current_term
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow_watched();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, info))
    }

    pub fn members(&self) -> Vec<MemberView> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, info)| MemberView {
                id: *id,
                info: info.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// Makes this node the first and only member of a new cluster.
    pub async fn initialize(&self) -> Result<(), NodeError> {
        let mut members = BTreeMap::new();
        members.insert(self.inner.id, self.inner.info.clone());
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::Fatal(e.to_string())),
        }
    }

    /// Proposes a command and returns its result once applied (on the leader). Concurrent
    /// writes share raft entries (see write_batch.rs).
    pub async fn write(&self, command: Command) -> Result<CommandResult, NodeError> {
        let node = self.clone();
        let in_flight = crate::write_batch::in_flight_limit(self.is_leader());
        self.inner
            .writes
            .write(command, in_flight, move |command| {
                let node = node.clone();
                async move { node.propose(command).await }
            })
            .await
    }

    /// One proposal: here when this member leads, else forwarded to the leader.
    async fn propose(&self, command: Command) -> Result<CommandResult, NodeError> {
        match self.on_leader(LeaderRequest::Write(command)).await? {
            LeaderReply::Write(result) => Ok(result),
            other => Err(NodeError::Fatal(format!(
                "unexpected leader reply {other:?}"
            ))),
        }
    }

    /// A transaction through raft; deterministic rejections become errors.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, NodeError> {
        match self.write(Command::Txn(request)).await? {
            CommandResult::Txn(response) => Ok(response),
            CommandResult::Rejected(rejection) => Err(rejection.into()),
            CommandResult::Compacted { .. } | CommandResult::Batch(_) => Err(NodeError::Fatal(
                "a txn got the result of another kind of command".into(),
            )),
        }
    }

    /// Compacts history below `revision` on every member.
    pub async fn compact(&self, revision: Revision) -> Result<Revision, NodeError> {
        match self.write(Command::Compact { revision }).await? {
            CommandResult::Compacted { revision } => Ok(revision),
            CommandResult::Rejected(rejection) => Err(rejection.into()),
            CommandResult::Txn(_) | CommandResult::Batch(_) => Err(NodeError::Fatal(
                "a compaction got the result of another kind of command".into(),
            )),
        }
    }

    /// Waits until this member has applied everything committed before the call (read index).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let node = self.clone();
        let fetch = move || {
            let node = node.clone();
            async move {
                match node.on_leader(LeaderRequest::ReadIndex).await? {
                    LeaderReply::ReadIndex(index) => Ok(index),
                    other => Err(NodeError::Fatal(format!(
                        "unexpected leader reply {other:?}"
                    ))),
                }
            }
        };
        let read_index = self.inner.reads.read_index(fetch).await?;
        if read_index.is_some() {
            self.inner
                .raft
                .wait(Some(self.inner.tuning.request_timeout))
                .applied_index_at_least(read_index, "read index")
                .await
                .map_err(|_| NodeError::Timeout)?;
        }
        Ok(())
    }

    /// A range read: linearizable (read index) unless `serializable`.
    pub async fn range(
        &self,
        request: &RangeRequest,
        serializable: bool,
    ) -> Result<RangeResponse, NodeError> {
        if !serializable && !unsafe_serializable_reads() {
            self.read_barrier().await?;
        }
        Ok(self.inner.kv.range(request)?)
    }

    pub async fn add_learner(&self, id: NodeId, info: NodeInfo) -> Result<(), NodeError> {
        self.on_leader(LeaderRequest::AddLearner { id, node: info })
            .await
            .map(|_| ())
    }

    pub async fn promote(&self, id: NodeId) -> Result<(), NodeError> {
        self.on_leader(LeaderRequest::Promote { id })
            .await
            .map(|_| ())
    }

    pub async fn remove(&self, id: NodeId) -> Result<(), NodeError> {
        self.on_leader(LeaderRequest::Remove { id })
            .await
            .map(|_| ())
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
    }

    /// Runs `request` on the leader: here if this member leads, else forwarded. Retries while
    /// there is no leader or the leader moved, until the request timeout. A forwarded write whose
    /// reply is lost is not retried (it may have been applied): that is reported as `Timeout`.
    async fn on_leader(&self, request: LeaderRequest) -> Result<LeaderReply, NodeError> {
        let deadline = Instant::now() + self.inner.tuning.request_timeout;
        let retry_pause = Duration::from_millis(25);
        loop {
            let outcome = match self.leader() {
                Some((leader_id, _)) if leader_id == self.inner.id => {
                    self.execute_as_leader(request.clone()).await
                }
                Some((leader_id, leader)) => {
                    let span = info_span!("forward", leader = leader_id);
                    let forwarded = tokio::select! {
                        outcome = self.forward(&leader, &request).instrument(span) => outcome,
                        () = self.leader_moved_from(leader_id) => Err(
                            ForwardTransport::Indeterminate(
                                "the leader changed while the request was with it".into(),
                            ),
                        ),
                    };
                    match forwarded {
                        Ok(outcome) => outcome,
                        Err(ForwardTransport::NotSent) => {
                            Err(ForwardError::NotLeader { leader: None })
                        }
                        Err(ForwardTransport::Indeterminate(message)) => {
                            if matches!(request, LeaderRequest::Write(_)) {
                                warn!(%message, "forwarded write lost its reply");
                                return Err(NodeError::Timeout);
                            }
                            Err(ForwardError::NotLeader { leader: None })
                        }
                    }
                }
                None => Err(ForwardError::NotLeader { leader: None }),
            };
            match outcome {
                Ok(reply) => return Ok(reply),
                Err(ForwardError::NotLeader { .. }) => {
                    if Instant::now() >= deadline {
                        return Err(NodeError::NoLeader);
                    }
                    tokio::time::sleep(retry_pause).await;
                }
                Err(ForwardError::MembershipBusy(message)) => {
                    // Members joining back to back (a learner added while the previous one is
                    // being promoted) wait their turn instead of failing the join.
                    if Instant::now() >= deadline {
                        return Err(NodeError::Membership(message));
                    }
                    tokio::time::sleep(retry_pause * 4).await;
                }
                Err(ForwardError::Membership(message)) => {
                    return Err(NodeError::Membership(message));
                }
                Err(ForwardError::Fatal(message)) => return Err(NodeError::Fatal(message)),
                Err(ForwardError::Indeterminate(message)) => {
                    warn!(%message, "write outcome unknown");
                    return Err(NodeError::Timeout);
                }
            }
        }
    }

    /// Resolves once this member no longer sees `leader_id` as the leader (it voted in a new
    /// election or heard from a new leader). A request still with a paused or cut-off old
    /// leader gets no answer worth waiting the whole request timeout for: a read retries on the
    /// new leader at once, a write reports its outcome as unknown at once.
    async fn leader_moved_from(&self, leader_id: NodeId) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader != Some(leader_id) {
                return;
            }
            if metrics.changed().await.is_err() {
                // Raft stopped: the forward's own timeout decides.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn forward(
        &self,
        leader: &NodeInfo,
        request: &LeaderRequest,
    ) -> Result<Result<LeaderReply, ForwardError>, ForwardTransport> {
        let data = encode(request).map_err(ForwardTransport::Indeterminate)?;
        let mut client = self
            .inner
            .channels
            .forwarding_client(&leader.raft_addr)
            .map_err(|e| ForwardTransport::Indeterminate(e.to_string()))?;
        let timeout = self.inner.tuning.request_timeout;
        let reply = match tokio::time::timeout(
            timeout,
            client.forward(skiff_proto::raft::RaftBytes { data }),
        )
        .await
        {
            Err(_) => return Err(ForwardTransport::Indeterminate("forward timed out".into())),
            Ok(Err(status)) if is_connect_failure(&status) => {
                return Err(ForwardTransport::NotSent);
            }
            Ok(Err(status)) => return Err(ForwardTransport::Indeterminate(status.to_string())),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        decode(&reply.data).map_err(ForwardTransport::Indeterminate)
    }

    /// Asks every other voter for a pre-vote (in parallel, each bounded by `within`); returns
    /// how many granted it, as soon as `enough` have: a paused or cut-off old leader never
    /// answers, and waiting for it would add the whole timeout to the failover.
    pub(crate) async fn collect_pre_votes(
        &self,
        ask: &PreVoteRequest,
        within: Duration,
        enough: usize,
    ) -> usize {
        let Ok(data) = encode(ask) else {
            return 0;
        };
        let peers: Vec<(NodeId, NodeInfo)> = self
            .members()
            .into_iter()
            .filter(|m| m.voter && m.id != self.inner.id)
            .map(|m| (m.id, m.info))
            .collect();
        let asks = peers.into_iter().map(|(id, info)| {
            let data = data.clone();
            let channels = self.inner.channels.clone();
            async move {
                let mut client = channels.forwarding_client(&info.raft_addr).ok()?;
                let call = client.pre_vote(skiff_proto::raft::RaftBytes { data });
                let reply = tokio::time::timeout(within, call).await.ok()?.ok()?;
                let reply: PreVoteReply = decode(&reply.into_inner().data).ok()?;
                if !reply.granted {
                    tracing::debug!(peer = id, reason = %reply.reason, "pre-vote refused");
                }
                Some(reply.granted)
            }
        });
        let mut pending: futures::stream::FuturesUnordered<_> = asks.collect();
        let mut granted = 0;
        while granted < enough
            && let Some(answer) = futures::StreamExt::next(&mut pending).await
        {
            if answer == Some(true) {
                granted += 1;
            }
        }
        granted
    }

    /// The voter side of a pre-vote: would this member grant `ask` a real vote now?
    pub(crate) async fn answer_pre_vote(&self, ask: &PreVoteRequest) -> PreVoteReply {
        let Some(view) = elector::election_view(self).await else {
            return PreVoteReply {
                granted: false,
                reason: "raft is shutting down".into(),
            };
        };
        match elector::pre_vote_decision(&view, ask, self.inner.tuning.election_timeout_max) {
            Ok(()) => {
                self.inner.elector.note_grant();
                PreVoteReply {
                    granted: true,
                    reason: String::new(),
                }
            }
            Err(reason) => PreVoteReply {
                granted: false,
                reason,
            },
        }
    }

    /// The leader side of every `LeaderRequest`, also served to forwarding followers.
    pub(crate) async fn execute_as_leader(
        &self,
        request: LeaderRequest,
    ) -> Result<LeaderReply, ForwardError> {
        let raft = &self.inner.raft;
        match request {
            LeaderRequest::Write(command) => match raft.client_write(command).await {
                Ok(response) => Ok(LeaderReply::Write(response.data)),
                Err(e) => Err(self.write_error(e)),
            },
            LeaderRequest::ReadIndex => match raft.get_read_log_id(ReadPolicy::ReadIndex).await {
                Ok((read_log_id, _applied)) => {
                    Ok(LeaderReply::ReadIndex(Some(read_log_id.index())))
                }
                Err(RaftError::APIError(_)) => Err(ForwardError::NotLeader {
                    leader: self.leader(),
                }),
                Err(RaftError::Fatal(e)) => Err(ForwardError::Fatal(e.to_string())),
            },
            LeaderRequest::AddLearner { id, node } => {
                info!(id, %node, "adding learner");
                raft.add_learner(id, node, false)
                    .await
                    .map(|_| LeaderReply::MembershipChanged)
                    .map_err(|e| self.write_error(e))
            }
            LeaderRequest::Promote { id } => {
                if self.members().iter().any(|m| m.id == id && m.voter) {
                    return Ok(LeaderReply::MembershipChanged);
                }
                self.require_caught_up(id)?;
                info!(id, "promoting learner to voter");
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map(|_| LeaderReply::MembershipChanged)
                    .map_err(|e| self.write_error(e))
            }
            LeaderRequest::Remove { id } => {
                info!(id, "removing member");
                if self.members().iter().any(|m| m.id == id && m.voter) {
                    raft.change_membership(
                        ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                        false,
                    )
                    .await
                    .map_err(|e| self.write_error(e))?;
                }
                if self.members().iter().any(|m| m.id == id) {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| self.write_error(e))?;
                }
                Ok(LeaderReply::MembershipChanged)
            }
        }
    }

    /// A learner is promoted only once it has nearly all of the log, so that adding it to the
    /// quorum cannot stall commits while it catches up.
    fn require_caught_up(&self, id: NodeId) -> Result<(), ForwardError> {
        const MAX_LAG: u64 = 64;
        let metrics = self.metrics();
        if metrics.current_leader != Some(self.inner.id) {
            return Err(ForwardError::NotLeader {
                leader: self.leader(),
            });
        }
        let last = metrics.last_log_index.unwrap_or(0);
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index)
            .unwrap_or(0);
        if matched + MAX_LAG < last {
            return Err(ForwardError::Membership(format!(
                "member {id} has not caught up yet (matched {matched} of {last})"
            )));
        }
        Ok(())
    }

    /// The commit index as the leader computes it: the highest index a quorum of voters has.
    /// `None` on followers (they only know what they applied).
    pub fn leader_commit_index(&self, metrics: &openraft::RaftMetrics<TypeConfig>) -> Option<u64> {
        let replication = metrics.replication.as_ref()?;
        let membership = metrics.membership_config.membership();
        let mut matched: Vec<u64> = membership
            .voter_ids()
            .map(|id| {
                if id == self.inner.id {
                    metrics.last_log_index.unwrap_or(0)
                } else {
                    replication
                        .get(&id)
                        .cloned()
                        .flatten()
                        .map(|l| l.index)
                        .unwrap_or(0)
                }
            })
            .collect();
        if matched.is_empty() {
            return None;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        matched.get(matched.len() / 2).copied()
    }

    fn write_error(
        &self,
        error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> ForwardError {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ForwardError::NotLeader {
                leader: f.leader_id.zip(f.leader_node),
            },
            RaftError::APIError(e @ ClientWriteError::LogEntryDiscarded(_)) => {
                ForwardError::Indeterminate(e.to_string())
            }
            RaftError::APIError(e @ ClientWriteError::PreconditionFailed(_)) => {
                ForwardError::Membership(e.to_string())
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                e @ openraft::error::ChangeMembershipError::InProgress(_),
            )) => ForwardError::MembershipBusy(e.to_string()),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ForwardError::Membership(e.to_string())
            }
            RaftError::Fatal(e) => ForwardError::Fatal(e.to_string()),
        }
    }
}

enum ForwardTransport {
    /// The request never reached the leader (connection refused): safe to retry.
    NotSent,
    /// It may have reached the leader.
    Indeterminate(String),
}

fn is_connect_failure(status: &tonic::Status) -> bool {
    use std::error::Error;
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source: Option<&dyn Error> = status.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            );
        }
        if err.to_string().contains("tcp connect error") {
            return true;
        }
        source = err.source();
    }
    false
}
