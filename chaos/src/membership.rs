//! Member removal and re-add: the operator's way of replacing a broken machine. The member is
//! removed from the raft membership through the admin API (`skiff server --remove`), its
//! process stopped and, on heal, its data dir wiped and the same name and address joined again
//! with the join token, as a new member with a new raft id.
//!
//! What it exercises: membership changes under load (joint consensus twice: remove, then add a
//! learner and promote it), a removed leader stepping down so leadership moves, and a member
//! with an empty store catching up from the leader's log or snapshot while clients and
//! watchers keep using its address. Heal is complete only when the new member is a voter, so
//! the next fault again starts from three voters.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span};

use crate::error::ChaosError;
use crate::nemesis::{MemberControl, Nemesis, Target};

/// How long a re-added member may take to be admitted, catch up and be promoted.
const VOTER_WITHIN: Duration = Duration::from_secs(60);

/// What `inject` did, so `heal` can bring exactly that member back.
struct Removed {
    member: usize,
    old_id: u64,
    /// A member that stays in the cluster: removal and re-join go through it.
    via: usize,
}

pub struct RemoveReadd {
    target: Target,
    removed: Option<Removed>,
}

impl RemoveReadd {
    pub fn new(target: Target) -> RemoveReadd {
        RemoveReadd {
            target,
            removed: None,
        }
    }

    /// Re-joins the removed member and waits until the cluster counts it as a voter.
    async fn readd(ctl: &mut dyn MemberControl, removed: &Removed) -> Result<String, ChaosError> {
        let started = Instant::now();
        let member = removed.member;
        let new_id = ctl.rejoin(member, removed.via).await?;
        if new_id == removed.old_id {
            return Err(ChaosError::Membership {
                member,
                reason: format!("re-joined with its old raft id {new_id}: the data was not wiped"),
            });
        }
        let deadline = started + VOTER_WITHIN;
        loop {
            // A member that has not answered yet is not a voter yet: keep asking.
            if ctl.is_voter(member, removed.via).await.unwrap_or(false) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ChaosError::Timeout {
                    what: format!("promote re-added member {member} (raft id {new_id}) to voter"),
                    secs: VOTER_WITHIN.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ms = started.elapsed().as_millis();
        info!(member, new_id, ms, "re-added member is a voter");
        Ok(format!(
            "wiped member {member}'s data; it re-joined as raft id {new_id} (was {}) and was a voter {ms} ms later",
            removed.old_id
        ))
    }
}

impl Nemesis for RemoveReadd {
    fn name(&self) -> &'static str {
        "member-remove-readd"
    }
    fn target(&self) -> Target {
        self.target
    }
    fn inject<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
        member: usize,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        let span = info_span!("remove_member", member);
        Box::pin(
            async move {
                let size = ctl.size();
                if size < 2 {
                    return Err(ChaosError::Membership {
                        member,
                        reason: "a single member cannot be removed".into(),
                    });
                }
                let via = (member + 1) % size;
                let old_id = ctl.remove(member, via).await?;
                // From here on the member is out of the cluster: heal must bring it back even
                // if stopping it fails.
                self.removed = Some(Removed {
                    member,
                    old_id,
                    via,
                });
                ctl.stop(member).await?;
                Ok(format!(
                    "removed member {member} (raft id {old_id}) through member {via}'s admin API and stopped it"
                ))
            }
            .instrument(span),
        )
    }
    fn heal<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            let Some(removed) = self.removed.take() else {
                return Ok(String::new());
            };
            let span = info_span!("readd_member", member = removed.member);
            RemoveReadd::readd(ctl, &removed).instrument(span).await
        })
    }
}
