//! Pre-voted elections that start as soon as the leader lease lets them succeed.
//!
//! Why: openraft starts an election only after the leader lease (its election_timeout_max)
//! *plus* a random election timeout, checked on a tick every 1.5 heartbeats: 800-1150 ms of
//! silence with our 300-500 ms timeouts (measured on 0.9; 0.10's timer is the same design, and
//! its opt-in pre-vote does not shorten that wait). Without a pre-vote, when the leader dies, the
//! follower with the shorter log (under write load one usually is) may time out first, take the
//! next term, be refused for its log, and by holding that term refuse the up-to-date follower's
//! vote too; the election then needs another round plus openraft's "smaller log" back-off. That
//! was the tail of the measured failover time (p99 ~2 s).
//!
//! This task, one per member, runs beside openraft's own timer (which stays as the fallback):
//! 1. a voting follower whose leader has been silent for the lease plus a random jitter (the
//!    other followers' leases have then expired too, so they may grant a vote),
//! 2. asks every other voter for a pre-vote, which changes no state anywhere: granted when that
//!    voter's own lease has expired, it has not moved to the candidate's term or beyond, and the
//!    candidate's log is at least as up to date as its own,
//! 3. and with a quorum of pre-votes triggers a real openraft election (which alone decides).
//!
//! A member that grants a pre-vote holds back its own campaign for a while, so two followers
//! rarely split the vote by campaigning at the same moment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use rand::Rng;
use serde::{Deserialize, Serialize};
use skiff_storage::NodeId;
use skiff_storage::{LogId, Vote};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::node::RaftNode;

/// A pre-vote must see the peer's lease expired by this much, so that the real vote request,
/// sent a moment later, is not refused by the lease either.
const LEASE_MARGIN: Duration = Duration::from_millis(15);
/// How long a member that granted a pre-vote leaves the campaign to the candidate.
const DEFER_AFTER_GRANT: Duration = Duration::from_millis(400);
/// Upper bound of the random wait past the lease (spreads the followers' campaigns apart).
const JITTER_MAX_MS: u64 = 150;
/// How long a candidate waits for pre-vote replies.
const PRE_VOTE_TIMEOUT: Duration = Duration::from_millis(300);
/// The longest the task sleeps between looks at the leader's silence.
const MAX_NAP: Duration = Duration::from_millis(50);

/// A member's election state as openraft's core sees it.
#[derive(Clone, Debug)]
pub(crate) struct ElectionView {
    pub vote: Vote,
    /// Since the vote was last refreshed (by the leader's heartbeats); None: never since start.
    pub silence: Option<Duration>,
    pub last_log: Option<LogId>,
    pub leader: bool,
    pub voter: bool,
    pub voters: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteRequest {
    pub candidate: NodeId,
    /// The term the candidate would campaign in.
    pub term: u64,
    pub last_log: Option<LogId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteReply {
    pub granted: bool,
    /// Why not (for the logs).
    pub reason: String,
}

/// Whether `view` (the member asked) would grant `request` a real vote soon after now.
pub(crate) fn pre_vote_decision(
    view: &ElectionView,
    request: &PreVoteRequest,
    lease: Duration,
) -> Result<(), String> {
    if view.leader {
        return Err("I am the leader".into());
    }
    let my_term = view.vote.leader_id().term;
    if my_term >= request.term {
        return Err(format!("my term {my_term} >= {}", request.term));
    }
    if view.vote.is_committed()
        && let Some(silence) = view.silence
        && silence < lease + LEASE_MARGIN
    {
        return Err(format!("heard from my leader {silence:?} ago"));
    }
    if request.last_log < view.last_log {
        return Err(format!(
            "my log {:?} is ahead of {:?}",
            view.last_log, request.last_log
        ));
    }
    Ok(())
}

/// Whether a follower in `view` should ask for pre-votes now.
pub(crate) fn should_campaign(view: &ElectionView, lease: Duration, jitter: Duration) -> bool {
    !view.leader
        && view.voter
        && view.voters >= 2
        // Only when following an established leader that went silent: a candidate's own
        // rounds (uncommitted votes) are openraft's business.
        && view.vote.is_committed()
        && view.silence.is_none_or(|s| s >= lease + jitter)
}

/// The campaign's shared state: when this member last granted a pre-vote.
#[derive(Clone, Default)]
pub(crate) struct Elector {
    granted_at: Arc<Mutex<Option<Instant>>>,
}

impl Elector {
    pub(crate) fn note_grant(&self) {
        *self.granted_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn deferring(&self) -> bool {
        self.granted_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < DEFER_AFTER_GRANT)
    }
}

/// Reads the election state from openraft's core (serialized with its other work).
pub(crate) async fn election_view(node: &RaftNode) -> Option<ElectionView> {
    let id = node.id();
    let (vote, silence) = node
        .raft()
        .with_raft_state(|state| {
            let silence = state
                .vote_last_modified()
                .map(|at| openraft::Instant::elapsed(&at));
            (*state.vote_ref(), silence)
        })
        .await
        .ok()?;
    let metrics = node.metrics();
    let membership = metrics.membership_config.membership();
    let voters = membership.voter_ids().count();
    let voter = membership.voter_ids().any(|v| v == id);
    let last_log = node.raft().data_metrics().borrow_watched().last_log;
    Some(ElectionView {
        vote,
        silence,
        last_log,
        leader: metrics.state == openraft::ServerState::Leader,
        voter,
        voters,
    })
}

/// The member's campaign loop; ends when raft shuts down.
pub(crate) async fn run(node: RaftNode, elector: Elector) {
    let lease = node.tuning().election_timeout_max;
    let mut jitter = new_jitter();
    loop {
        let Some(view) = election_view(&node).await else {
            return;
        };
        let waited = view.silence.unwrap_or(Duration::MAX);
        if waited < lease {
            // The leader is alive: draw a fresh jitter for its next silence.
            jitter = new_jitter();
        }
        if !should_campaign(&view, lease, jitter) || elector.deferring() {
            let nap = (lease + jitter).saturating_sub(waited).min(MAX_NAP);
            tokio::time::sleep(nap.max(Duration::from_millis(5))).await;
            continue;
        }
        let term = view.vote.leader_id().term + 1;
        let request = PreVoteRequest {
            candidate: node.id(),
            term,
            last_log: view.last_log,
        };
        // Our own vote counts: a quorum is a majority of the voters.
        let needed = view.voters / 2;
        let granted = node
            .collect_pre_votes(&request, PRE_VOTE_TIMEOUT, needed)
            .await;
        if granted >= needed {
            info!(
                term,
                granted,
                silence_ms = waited.as_millis() as u64,
                "leader silent past its lease; pre-vote won, campaigning"
            );
            if node.raft().trigger().elect(false).await.is_err() {
                return;
            }
        } else {
            debug!(term, granted, "pre-vote lost; waiting");
            tokio::time::sleep(MAX_NAP).await;
        }
    }
}

fn new_jitter() -> Duration {
    Duration::from_millis(rand::rng().random_range(0..JITTER_MAX_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(500);

    fn follower(term: u64, silence_ms: u64, log: (u64, u64)) -> ElectionView {
        ElectionView {
            vote: Vote::new_committed(term, 1),
            silence: Some(Duration::from_millis(silence_ms)),
            last_log: Some(LogId::new(
                skiff_storage::CommittedLeaderId {
                    term: log.0,
                    node_id: 1,
                },
                log.1,
            )),
            leader: false,
            voter: true,
            voters: 3,
        }
    }

    fn ask(term: u64, log: (u64, u64)) -> PreVoteRequest {
        PreVoteRequest {
            candidate: 2,
            term,
            last_log: Some(LogId::new(
                skiff_storage::CommittedLeaderId {
                    term: log.0,
                    node_id: 1,
                },
                log.1,
            )),
        }
    }

    #[test]
    fn a_pre_vote_waits_for_the_lease_and_the_log() {
        let peer = follower(3, 600, (3, 100));
        assert!(pre_vote_decision(&peer, &ask(4, (3, 100)), LEASE).is_ok());
        assert!(pre_vote_decision(&peer, &ask(4, (3, 101)), LEASE).is_ok());
        // A shorter log is refused: that candidate would lose the real vote.
        assert!(pre_vote_decision(&peer, &ask(4, (3, 99)), LEASE).is_err());
        // The lease has not expired yet.
        let fresh = follower(3, 200, (3, 100));
        assert!(pre_vote_decision(&fresh, &ask(4, (3, 100)), LEASE).is_err());
        // Already in the candidate's term (it voted for somebody, maybe itself).
        assert!(pre_vote_decision(&peer, &ask(3, (3, 100)), LEASE).is_err());
        let mut leader = peer.clone();
        leader.leader = true;
        assert!(pre_vote_decision(&leader, &ask(4, (3, 100)), LEASE).is_err());
    }

    #[test]
    fn only_a_silent_leaders_voting_follower_campaigns() {
        let jitter = Duration::from_millis(100);
        assert!(should_campaign(&follower(3, 650, (3, 1)), LEASE, jitter));
        assert!(!should_campaign(&follower(3, 550, (3, 1)), LEASE, jitter));
        let mut learner = follower(3, 900, (3, 1));
        learner.voter = false;
        assert!(!should_campaign(&learner, LEASE, jitter));
        let mut candidate = follower(3, 900, (3, 1));
        candidate.vote = Vote::new(4, 1);
        assert!(!should_campaign(&candidate, LEASE, jitter));
        let mut alone = follower(3, 900, (3, 1));
        alone.voters = 1;
        assert!(!should_campaign(&alone, LEASE, jitter));
    }
}
