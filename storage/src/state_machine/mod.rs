//! The replicated state machine: openraft's `RaftStateMachine` over the kv, history and sm_meta
//! column families.
//!
//! - `apply`: one `Command` -> writes in a WriteBatch (MVCC, transactions, compaction).
//! - `read`: point-in-time readers, ranges (current and historical), `KvView`.
//! - `snapshot_files`: raft snapshot files (build, install, retention).
//!
//! Every entry commits in one WriteBatch together with its last-applied log id, so after a
//! crash the state is exactly that of some applied prefix of the log (crash-consistent without
//! an fsync per apply: the log's fsyncs flush the same WAL). Events go to the watch hub only
//! after their batch is committed.

mod apply;
mod read;
mod snapshot_files;

use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend};
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

pub(crate) use apply::write_status;
pub use read::KvView;
pub(crate) use read::{Reader, SharedStatus, SmStatus};
pub(crate) use snapshot_files::SnapshotDir;

use crate::compact::Compactor;
use crate::engine::Engine;
use crate::error::{StorageError, raft_read_sm, raft_snapshot, to_raft};
use crate::model::{Command, CommandResult, Rejection};
use crate::types::{
    Entry, LogId, RaftStorageError, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::watch::WatchHub;

/// The state machine handed to openraft. Its only writer is openraft's apply loop (`&mut self`).
pub struct StateMachineStore {
    engine: Engine,
    status: Arc<SharedStatus>,
    hub: WatchHub,
    snapshots: Arc<SnapshotDir>,
    compactor: Compactor,
    /// Temporary files handed out by `begin_receiving_snapshot`, removed after an install.
    receiving: Vec<PathBuf>,
}

impl StateMachineStore {
    pub(crate) fn new(
        engine: Engine,
        status: Arc<SharedStatus>,
        hub: WatchHub,
        snapshots: SnapshotDir,
        compactor: Compactor,
    ) -> Self {
        StateMachineStore {
            engine,
            status,
            hub,
            snapshots: Arc::new(snapshots),
            compactor,
            receiving: Vec::new(),
        }
    }

    /// A read view of this state machine.
    pub fn kv(&self) -> KvView {
        KvView::new(self.engine.clone(), self.status.clone())
    }

    /// Applies one entry in one WriteBatch, then publishes its events; a batch entry goes
    /// command by command (`apply_batch`).
    fn apply_entry(&mut self, entry: &Entry) -> Result<CommandResult, StorageError> {
        let log_id = entry.log_id;
        let _span =
            tracing::debug_span!("apply", index = log_id.index, term = log_id.leader_id.term)
                .entered();
        if let EntryPayload::Normal(Command::Batch(commands)) = &entry.payload {
            return self.apply_batch(log_id, commands);
        }
        let old = self.status.get();
        let mut status = old.clone();
        let mut batch = WriteBatch::default();
        let applied = {
            let reader = Reader::new(&self.engine);
            match &entry.payload {
                EntryPayload::Blank => apply::Applied::default(),
                EntryPayload::Normal(cmd) => {
                    apply::apply_command(&self.engine, &reader, &mut status, cmd, &mut batch)?
                }
                EntryPayload::Membership(membership) => {
                    status.membership = StoredMembership::new(Some(log_id), membership.clone());
                    apply::Applied::default()
                }
            }
        };
        status.last_applied = Some(log_id);
        self.commit(batch, &old, status)?;
        self.publish(&applied);
        Ok(applied.result)
    }

    /// Applies a batch entry one command at a time, each in its own WriteBatch, so every command
    /// reads the state (current and historical) its predecessors left exactly as if it had its
    /// own entry. The entry counts as applied with its last command; until then each write
    /// records how many commands are done, and a restart in the middle resumes after them.
    fn apply_batch(
        &mut self,
        log_id: LogId,
        commands: &[Command],
    ) -> Result<CommandResult, StorageError> {
        let done_before = match Reader::new(&self.engine).batch_progress()? {
            Some((at, done)) if at == log_id => done as usize,
            _ => 0,
        };
        let count = u32::try_from(commands.len())
            .map_err(|_| StorageError::Corrupt(format!("batch entry {log_id} too large")))?;
        let mut results = Vec::with_capacity(commands.len());
        for (i, command) in commands.iter().enumerate() {
            if i < done_before {
                // Applied before a restart; whoever proposed it is gone, nobody reads this.
                results.push(CommandResult::Rejected(Rejection::Unsupported(
                    "applied before a restart".into(),
                )));
                continue;
            }
            let old = self.status.get();
            let mut status = old.clone();
            let mut batch = WriteBatch::default();
            let applied = {
                let reader = Reader::new(&self.engine);
                apply::apply_command(&self.engine, &reader, &mut status, command, &mut batch)?
            };
            let done = u32::try_from(i + 1).unwrap_or(count);
            if done == count {
                status.last_applied = Some(log_id);
            } else {
                apply::write_batch_progress(&self.engine, &mut batch, log_id, done)?;
            }
            self.commit(batch, &old, status)?;
            self.publish(&applied);
            results.push(applied.result);
        }
        if commands.is_empty() {
            let old = self.status.get();
            let mut status = old.clone();
            status.last_applied = Some(log_id);
            self.commit(WriteBatch::default(), &old, status)?;
        }
        Ok(CommandResult::Batch(results))
    }

    /// Completes a batch entry that a crash interrupted, from the raft log in the same
    /// database, before anything can read or snapshot the state: otherwise the store would hold
    /// part of an entry it does not count as applied, and a snapshot of it (its meta says "up to
    /// the entry before") would make a member that installs it apply those commands twice.
    /// The entry was being applied, so it was committed; committed entries are never truncated.
    pub(crate) fn finish_interrupted_batch(&mut self) -> Result<(), StorageError> {
        let reader = Reader::new(&self.engine);
        let Some((log_id, done)) = reader.batch_progress()? else {
            return Ok(());
        };
        let next_index = self
            .status
            .with(|s| s.last_applied.map_or(0, |l| l.index + 1));
        if log_id.index != next_index {
            return Ok(()); // a batch that completed: the marker is stale
        }
        let stored = reader.raft_log_entry(log_id.index)?;
        drop(reader);
        let commands = match stored {
            Some(Entry {
                log_id: stored_id,
                payload: EntryPayload::Normal(Command::Batch(commands)),
            }) if stored_id == log_id => commands,
            other => {
                return Err(StorageError::Corrupt(format!(
                    "batch entry {log_id} was interrupted after {done} commands, but the log \
                     holds {:?} at its index",
                    other.map(|e| e.log_id)
                )));
            }
        };
        tracing::warn!(%log_id, done, total = commands.len(), "finishing a batch entry a crash interrupted");
        self.apply_batch(log_id, &commands).map(|_| ())
    }

    /// Writes `batch` with the status change from `old` to `status` (one atomic WriteBatch,
    /// no fsync: the log's fsyncs make it durable), then publishes the new status to readers.
    fn commit(
        &self,
        mut batch: WriteBatch,
        old: &SmStatus,
        status: SmStatus,
    ) -> Result<(), StorageError> {
        apply::write_status(&self.engine, &mut batch, Some(old), &status)?;
        self.engine.write(batch, false)?;
        self.status.set(status);
        Ok(())
    }

    /// Hands a committed command's events to the watch hub and its compaction target to the
    /// background compactor.
    fn publish(&self, applied: &apply::Applied) {
        if let Some((revision, events)) = &applied.events {
            self.hub.publish(*revision, events);
        }
        if let Some(compacted) = applied.compacted {
            self.compactor.request(compacted);
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        let status = self.status.get();
        Ok((status.last_applied, status.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            let result = self
                .apply_entry(&entry)
                .map_err(|e| to_raft(ErrorSubject::Apply(entry.log_id), ErrorVerb::Write, &e))?;
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder::start(self.engine.clone(), self.snapshots.clone()).await
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftStorageError> {
        // A new transfer supersedes any unfinished one; its file is garbage now.
        for path in self.receiving.drain(..) {
            self.snapshots.remove_quietly(&path);
        }
        let (path, file) = self
            .snapshots
            .new_part("receive")
            .map_err(|e| raft_snapshot(ErrorVerb::Write, &e))?;
        self.receiving.push(path);
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    #[tracing::instrument(level = "info", skip_all, fields(snapshot_id = %meta.snapshot_id))]
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftStorageError> {
        let file = snapshot.into_std().await;
        let engine = self.engine.clone();
        let dir = self.snapshots.clone();
        let meta = meta.clone();
        let cluster_id = self.status.with(|s| s.cluster_id.clone());
        let status = tokio::task::spawn_blocking(move || {
            snapshot_files::install(&engine, &dir, &meta, file, &cluster_id)
        })
        .await
        .map_err(|e| {
            StorageError::WorkerStopped(if e.is_panic() {
                "snapshot install panicked"
            } else {
                "snapshot install cancelled"
            })
        })
        .and_then(|r| r)
        .map_err(|e| {
            tracing::error!(error = %e, "snapshot install failed");
            raft_snapshot(ErrorVerb::Write, &e)
        })?;
        for path in self.receiving.drain(..) {
            self.snapshots.remove_quietly(&path);
        }
        let (revision, compacted) = (status.revision, status.compacted);
        self.status.set(status);
        self.hub.on_snapshot_installed(revision, compacted);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, RaftStorageError> {
        let newest = self
            .snapshots
            .newest()
            .map_err(|e| raft_snapshot(ErrorVerb::Read, &e))?;
        let Some(path) = newest else { return Ok(None) };
        let (meta, file) =
            snapshot_files::open_snapshot(&path).map_err(|e| raft_snapshot(ErrorVerb::Read, &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

type BuildReply = oneshot::Sender<Result<(SnapshotMeta, std::fs::File), StorageError>>;

/// Builds raft snapshots of the state as of `get_snapshot_builder`.
///
/// A RocksDB snapshot borrows the database, so it cannot live in an async builder; instead a
/// thread takes it at once (before `get_snapshot_builder` returns, so later applies are not in
/// it), keeps it while the builder lives, and writes the file on request.
pub struct SnapshotBuilder {
    requests: Result<std::sync::mpsc::Sender<BuildReply>, String>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SnapshotBuilder {
    /// Closes the request channel and waits for the thread, so the RocksDB snapshot (and the
    /// database handle it pins) is released by the time the builder is gone.
    fn drop(&mut self) {
        self.requests = Err("dropped".into());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SnapshotBuilder {
    async fn start(engine: Engine, dir: Arc<SnapshotDir>) -> SnapshotBuilder {
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let (requests, request_rx) = std::sync::mpsc::channel::<BuildReply>();
        let spawned = std::thread::Builder::new()
            .name("skiff-snapshot".into())
            .spawn(move || {
                let reader = Reader::new(&engine);
                let _ = ready_tx.send(());
                // Until the builder is dropped (the channel closes).
                while let Ok(reply) = request_rx.recv() {
                    let _ = reply.send(snapshot_files::build(&reader, &dir));
                }
            });
        match spawned {
            Err(e) => SnapshotBuilder {
                requests: Err(format!("spawn snapshot thread: {e}")),
                thread: None,
            },
            Ok(thread) => {
                let requests = match ready_rx.await {
                    Ok(()) => Ok(requests),
                    Err(_) => Err("snapshot thread exited before taking its snapshot".to_string()),
                };
                SnapshotBuilder {
                    requests,
                    thread: Some(thread),
                }
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    #[tracing::instrument(level = "info", skip_all)]
    async fn build_snapshot(&mut self) -> Result<Snapshot, RaftStorageError> {
        let stopped = |what: &'static str| {
            raft_snapshot(ErrorVerb::Write, &StorageError::WorkerStopped(what))
        };
        let requests = match &self.requests {
            Ok(requests) => requests,
            Err(message) => {
                return Err(raft_read_sm(&StorageError::Io {
                    context: "snapshot builder".into(),
                    source: std::io::Error::other(message.clone()),
                }));
            }
        };
        let (tx, rx) = oneshot::channel();
        requests.send(tx).map_err(|_| stopped("snapshot thread"))?;
        let (meta, file) = rx
            .await
            .map_err(|_| stopped("snapshot thread"))?
            .map_err(|e| {
                tracing::error!(error = %e, "snapshot build failed");
                raft_snapshot(ErrorVerb::Write, &e)
            })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}
