//! Scheduled snapshots (`skiff server --snapshot-cron`).
//!
//! Every member writes its own snapshots of its own applied state into its own directory (as
//! k3s does): no coordination, and a member keeps taking them while the cluster has no quorum,
//! which is when one is most wanted. Each file's header says the revision it holds. After each
//! snapshot the directory is pruned to the retention.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use skiff_raft::RaftNode;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use super::cron::Schedule;
use super::error::BackupError;
use super::files;

pub struct SnapshotSchedule {
    pub schedule: Schedule,
    pub retention: usize,
    pub dir: PathBuf,
    /// This member's name, part of each file name.
    pub member: String,
    /// The at-rest key file, carried in each snapshot so that a restore into a new PKI reads
    /// its Secrets (set when the member starts).
    pub at_rest_keys: Option<String>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the schedule until the process exits.
pub fn spawn(node: RaftNode, config: SnapshotSchedule) -> Result<JoinHandle<()>, BackupError> {
    std::fs::create_dir_all(&config.dir)
        .map_err(|e| BackupError::io("creating snapshot dir", &config.dir, e))?;
    info!(dir = %config.dir.display(), retention = config.retention, "scheduled snapshots enabled");
    Ok(tokio::spawn(async move {
        let mut last = (now_unix_ms() / 1000) as i64;
        loop {
            let Some(next) = config.schedule.next_after(last) else {
                warn!("the snapshot schedule never fires again");
                return;
            };
            let now_ms = now_unix_ms();
            let wait_ms = (next * 1000).saturating_sub(now_ms as i64).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            last = next.max((now_unix_ms() / 1000) as i64);
            let span = info_span!("scheduled_snapshot", dir = %config.dir.display());
            if let Err(e) = take(&node, &config).instrument(span).await {
                warn!(error = %e, "scheduled snapshot failed");
            }
        }
    }))
}

async fn take(node: &RaftNode, config: &SnapshotSchedule) -> Result<(), BackupError> {
    let kv = node.kv().clone();
    let path = config
        .dir
        .join(files::scheduled_name(&config.member, now_unix_ms()));
    let dir = config.dir.clone();
    let retention = config.retention;
    let at_rest_keys = config.at_rest_keys.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || -> Result<(), BackupError> {
        let _entered = span.enter();
        let wrapping = super::envelope::Wrapping {
            at_rest_keys: at_rest_keys.as_deref(),
            ..Default::default()
        };
        let header = files::write_atomically(&path, |w| -> Result<_, BackupError> {
            let written = super::envelope::write_wrapped(w, wrapping, |mut inner| {
                skiff_storage::write_snapshot(&kv, &mut inner, &mut |_, _| {})
                    .map_err(io::Error::other)
            });
            written.map_err(|e| BackupError::writing(&path, e))
        })?;
        info!(file = %path.display(), revision = header.revision, "scheduled snapshot written");
        for removed in files::prune(&dir, retention)? {
            info!(file = %removed.display(), "old snapshot pruned");
        }
        Ok(())
    })
    .await
    .map_err(|e| BackupError::io("snapshot thread", &config.dir, std::io::Error::other(e)))?
}
