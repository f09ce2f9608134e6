//! History compaction, driven by the leader and agreed through the log.
//!
//! Why through the log: every member must refuse the same old revisions, or a watch resumed on
//! another member would see a different history. The leader samples (time, revision) pairs and
//! proposes `Compact` to the newest revision that is both older than the retention time and at
//! least `history_min_revisions` behind the head. Physical deletion happens in storage.

use std::collections::VecDeque;
use std::time::Instant;

use skiff_storage::Revision;
use tracing::{debug, warn};

use crate::node::RaftNode;

/// Chooses compaction targets from revision samples. Pure, so it is unit tested on its own.
#[derive(Default)]
pub struct CompactionPlanner {
    samples: VecDeque<(Instant, Revision)>,
}

impl CompactionPlanner {
    /// Records the current revision and returns the revision to compact to, if any.
    pub fn plan(
        &mut self,
        now: Instant,
        current: Revision,
        compacted: Revision,
        retention: std::time::Duration,
        min_revisions: i64,
    ) -> Option<Revision> {
        self.samples.push_back((now, current));
        // The newest sample old enough to fall outside the retention window.
        let mut old_enough = None;
        while let Some(&(at, revision)) = self.samples.front() {
            if now.duration_since(at) >= retention {
                old_enough = Some(revision);
                self.samples.pop_front();
            } else {
                break;
            }
        }
        if let Some(revision) = old_enough {
            // Keep that sample as the floor for the next round.
            self.samples.push_front((now - retention, revision));
        }
        let target = old_enough?.min(current - min_revisions);
        (target > compacted).then_some(target)
    }
}

pub(crate) fn spawn(node: RaftNode) {
    tokio::spawn(async move {
        let mut planner = CompactionPlanner::default();
        let interval = node.tuning().compaction_interval;
        loop {
            tokio::time::sleep(interval).await;
            let kv = node.kv();
            let target = planner.plan(
                Instant::now(),
                kv.revision(),
                kv.compacted_revision(),
                node.tuning().history_retention,
                node.tuning().history_min_revisions,
            );
            let Some(revision) = target else { continue };
            if !node.is_leader() {
                continue;
            }
            match node.compact(revision).await {
                Ok(done) => debug!(revision = done, "history compacted"),
                Err(e) => warn!(revision, error = %e, "history compaction failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn compacts_only_past_retention_and_min_revisions() {
        let mut planner = CompactionPlanner::default();
        let start = Instant::now();
        let retention = Duration::from_secs(60);
        assert_eq!(planner.plan(start, 5_000, 0, retention, 1_000), None);
        assert_eq!(
            planner.plan(start + Duration::from_secs(30), 8_000, 0, retention, 1_000),
            None
        );
        // 60 s later: the sample at `start` (revision 5000) is out of the window.
        assert_eq!(
            planner.plan(start + Duration::from_secs(61), 9_000, 0, retention, 1_000),
            Some(5_000)
        );
        // Min revisions caps the target.
        assert_eq!(
            planner.plan(
                start + Duration::from_secs(95),
                8_500,
                5_000,
                retention,
                1_000
            ),
            Some(7_500)
        );
        // Nothing new to compact.
        assert_eq!(
            planner.plan(
                start + Duration::from_secs(96),
                8_500,
                7_500,
                retention,
                1_000
            ),
            None
        );
    }
}
