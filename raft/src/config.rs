//! Raft and compaction tunables. Defaults suit a LAN/loopback cluster; tests shrink them.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RaftTuning {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_after_logs: u64,
    /// How many entries to keep in the log below the last snapshot (so briefly lagging
    /// followers catch up from the log rather than by snapshot).
    pub logs_to_keep_after_snapshot: u64,
    /// Start elections through skiff's pre-vote as soon as a silent leader's lease expires
    /// (see elector.rs); off leaves them to openraft's own, slower timer.
    pub fast_elections: bool,
    /// How long a client write or read barrier may wait for a leader before failing.
    pub request_timeout: Duration,
    /// History compaction: keep at least this many revisions ...
    pub history_min_revisions: i64,
    /// ... and at least this much time of history.
    pub history_retention: Duration,
    /// How often the leader considers compacting.
    pub compaction_interval: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(500),
            fast_elections: true,
            snapshot_after_logs: 10_000,
            logs_to_keep_after_snapshot: 1_000,
            request_timeout: Duration::from_secs(5),
            history_min_revisions: 1_000,
            history_retention: Duration::from_secs(300),
            compaction_interval: Duration::from_secs(30),
        }
    }
}

impl RaftTuning {
    pub(crate) fn openraft_config(&self, cluster_name: &str) -> openraft::Config {
        openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.logs_to_keep_after_snapshot,
            // Entries per AppendEntries: bounded so a batch of 1.5 MiB values stays sane.
            max_payload_entries: 256,
            install_snapshot_timeout: 10_000,
            // A restarted leader must win an election again: the state machine's writes and the
            // committed pointer become durable with the next log fsync, not before apply
            // returns, which is the case openraft's docs warn leader restore against.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
    }
}
