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

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

pub(crate) use apply::write_status;
pub use read::KvView;
use read::PendingKv;
pub(crate) use read::{Reader, SharedStatus, SmStatus};
pub(crate) use snapshot_files::SnapshotDir;

use crate::compact::Compactor;
use crate::engine::Engine;
use crate::error::{StorageError, raft_io};
use crate::model::{Command, CommandResult, Rejection};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::watch::WatchHub;

/// A run staged past this size is written before the next command, bounding the memory one
/// apply call holds (openraft hands over many entries at once after a restart).
const MAX_STAGED_BYTES: usize = 4 << 20;

/// Commands applied but not yet written: openraft's entries of one apply call (and a batch
/// entry's commands) go to RocksDB in one WriteBatch instead of one write each. Each command
/// reads through `pending`, so it sees exactly what it would have seen had every predecessor
/// been written on its own.
struct StagedRun {
    batch: WriteBatch,
    pending: PendingKv,
    /// The status as last written to sm_meta (and published).
    written: SmStatus,
    /// The status including the staged commands.
    status: SmStatus,
    /// Staged commands' events and compaction targets, published once written.
    unpublished: Vec<apply::Applied>,
}

impl StagedRun {
    fn new(written: SmStatus) -> Self {
        StagedRun {
            batch: WriteBatch::default(),
            pending: PendingKv::new(),
            status: written.clone(),
            written,
            unpublished: Vec::new(),
        }
    }

    /// Whether commands are staged (status-only changes, such as a blank entry's last applied,
    /// change nothing a command reads).
    fn has_commands(&self) -> bool {
        !self.unpublished.is_empty()
    }
}

/// The state machine handed to openraft. Its only writer is openraft's apply loop (`&mut self`).
pub struct StateMachineStore {
    engine: Engine,
    status: Arc<SharedStatus>,
    hub: WatchHub,
    snapshots: Arc<SnapshotDir>,
    compactor: Compactor,
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
        }
    }

    /// Applies committed entries outside raft, exactly as raft's `apply` does, and returns each
    /// entry's result: for tools and tests that drive a state machine without a cluster.
    pub fn apply_entries(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Vec<CommandResult>, StorageError> {
        let mut run = StagedRun::new(self.status.get());
        let mut results = Vec::new();
        for entry in entries {
            results.push(self.apply_entry(&mut run, &entry)?);
        }
        if !results.is_empty() {
            self.write_run(&mut run)?;
        }
        Ok(results)
    }

    /// Where the raft transport writes a snapshot it receives from the leader.
    pub fn snapshot_inbox(&self) -> SnapshotInbox {
        SnapshotInbox {
            dir: self.snapshots.clone(),
        }
    }

    /// A read view of this state machine.
    pub fn kv(&self) -> KvView {
        KvView::new(self.engine.clone(), self.status.clone())
    }

    /// Applies one entry into `run`; a batch entry goes command by command (`apply_batch`).
    fn apply_entry(
        &self,
        run: &mut StagedRun,
        entry: &Entry,
    ) -> Result<CommandResult, StorageError> {
        let log_id = entry.log_id;
        let _span =
            tracing::debug_span!("apply", index = log_id.index, term = log_id.leader_id.term)
                .entered();
        let result = match &entry.payload {
            EntryPayload::Normal(Command::Batch(commands)) => {
                return self.apply_batch(run, log_id, commands);
            }
            EntryPayload::Blank => CommandResult::default(),
            EntryPayload::Normal(command) => self.apply_command(run, command, None)?,
            EntryPayload::Membership(membership) => {
                run.status.membership = StoredMembership::new(Some(log_id), membership.clone());
                CommandResult::default()
            }
        };
        run.status.last_applied = Some(log_id);
        Ok(result)
    }

    /// Applies a batch entry one command at a time, so every command reads the state (current
    /// and historical) its predecessors left exactly as if it had its own entry. The entry
    /// counts as applied with its last command; a run written in the middle of the entry records
    /// how many commands are done, and a restart there resumes after them.
    fn apply_batch(
        &self,
        run: &mut StagedRun,
        log_id: LogId,
        commands: &[Command],
    ) -> Result<CommandResult, StorageError> {
        let done_before = match Reader::new(&self.engine).batch_progress()? {
            Some((at, done)) if at == log_id => done as usize,
            _ => 0,
        };
        let mut results = Vec::with_capacity(commands.len());
        for (i, command) in commands.iter().enumerate() {
            if i < done_before {
                // Applied before a restart; whoever proposed it is gone, nobody reads this.
                results.push(CommandResult::Rejected(Rejection::Unsupported(
                    "applied before a restart".into(),
                )));
                continue;
            }
            let done = u32::try_from(i)
                .map_err(|_| StorageError::Corrupt(format!("batch entry {log_id} too large")))?;
            let inside = (i > 0).then_some((log_id, done));
            results.push(self.apply_command(run, command, inside)?);
        }
        run.status.last_applied = Some(log_id);
        Ok(CommandResult::Batch(results))
    }

    /// Applies one command into `run`, first writing the run out if the command reads history
    /// (staged writes are invisible there) or the run is large. `inside` is the batch entry and
    /// the count of its commands already applied, when this command is not its first.
    fn apply_command(
        &self,
        run: &mut StagedRun,
        command: &Command,
        inside: Option<(LogId, u32)>,
    ) -> Result<CommandResult, StorageError> {
        if run.has_commands()
            && (apply::reads_history(command, run.status.revision)
                || run.batch.size_in_bytes() >= MAX_STAGED_BYTES)
        {
            if let Some((log_id, done)) = inside {
                apply::write_batch_progress(&self.engine, &mut run.batch, log_id, done)?;
            }
            self.write_run(run)?;
        }
        let mut applied = {
            let reader = Reader::with_pending(&self.engine, &run.pending);
            apply::apply_command(
                &self.engine,
                &reader,
                &mut run.status,
                command,
                &mut run.batch,
            )?
        };
        run.pending.extend(applied.kv_writes.drain(..));
        let result = std::mem::take(&mut applied.result);
        run.unpublished.push(applied);
        Ok(result)
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
        let mut run = StagedRun::new(self.status.get());
        self.apply_batch(&mut run, log_id, &commands)?;
        self.write_run(&mut run)
    }

    /// Writes the run's batch with its status change (one atomic WriteBatch, no fsync: the
    /// log's fsyncs make it durable), then publishes the new status to readers and the run's
    /// events to watchers, in that order: nobody sees a revision before it can be read.
    fn write_run(&self, run: &mut StagedRun) -> Result<(), StorageError> {
        let mut batch = std::mem::take(&mut run.batch);
        apply::write_status(&self.engine, &mut batch, Some(&run.written), &run.status)?;
        self.engine.write(batch, false)?;
        self.status.set(run.status.clone());
        run.written = run.status.clone();
        run.pending.clear();
        for applied in run.unpublished.drain(..) {
            self.publish(&applied);
        }
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
    type SnapshotData = tokio::fs::File;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        let status = self.status.get();
        Ok((status.last_applied, status.membership))
    }

    /// Stages every entry of the stream into one run, writes the run, and only then answers the
    /// clients: a client told "applied" can read what it wrote.
    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut run = StagedRun::new(self.status.get());
        let mut answers = Vec::new();
        let mut last = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let result = self
                .apply_entry(&mut run, &entry)
                .map_err(|e| raft_io(format_args!("apply {}", entry.log_id), &e))?;
            if let Some(responder) = responder {
                answers.push((responder, result));
            }
            last = Some(entry.log_id);
        }
        if let Some(last) = last {
            self.write_run(&mut run)
                .map_err(|e| raft_io(format_args!("apply up to {last}"), &e))?;
        }
        for (responder, result) in answers {
            responder.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder::start(self.engine.clone(), self.snapshots.clone()).await
    }

    #[tracing::instrument(level = "info", skip_all, fields(last_log_id = ?meta.last_log_id))]
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: tokio::fs::File,
    ) -> Result<(), std::io::Error> {
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
            raft_io("install snapshot", &e)
        })?;
        let (revision, compacted) = (status.revision, status.compacted);
        self.status.set(status);
        self.hub.on_snapshot_installed(revision, compacted);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let newest = self
            .snapshots
            .newest()
            .map_err(|e| raft_io("find the newest snapshot", &e))?;
        let Some(path) = newest else { return Ok(None) };
        let (meta, file) =
            snapshot_files::open_snapshot(&path).map_err(|e| raft_io("open snapshot", &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        }))
    }
}

/// Receives snapshots streamed by a leader into temporary files in the snapshot directory. The
/// file becomes openraft's snapshot data once complete; `install_snapshot` validates it while
/// copying it into place, so the received file is garbage afterwards either way.
#[derive(Clone)]
pub struct SnapshotInbox {
    dir: Arc<SnapshotDir>,
}

impl SnapshotInbox {
    /// A new empty file to receive into, and the guard that removes it when dropped.
    pub fn create(&self) -> Result<(tokio::fs::File, ReceivedSnapshotFile), StorageError> {
        let (path, file) = self.dir.new_part("receive")?;
        Ok((
            tokio::fs::File::from_std(file),
            ReceivedSnapshotFile {
                dir: self.dir.clone(),
                path,
            },
        ))
    }
}

/// Removes a received snapshot file when the transfer is over, installed or not.
pub struct ReceivedSnapshotFile {
    dir: Arc<SnapshotDir>,
    path: PathBuf,
}

impl Drop for ReceivedSnapshotFile {
    fn drop(&mut self) {
        self.dir.remove_quietly(&self.path);
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
    type SnapshotData = tokio::fs::File;

    #[tracing::instrument(level = "info", skip_all)]
    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let stopped =
            |what: &'static str| raft_io("build snapshot", &StorageError::WorkerStopped(what));
        let requests = match &self.requests {
            Ok(requests) => requests,
            Err(message) => {
                return Err(std::io::Error::other(format!(
                    "build snapshot: snapshot builder: {message}"
                )));
            }
        };
        let (tx, rx) = oneshot::channel();
        requests.send(tx).map_err(|_| stopped("snapshot thread"))?;
        let (meta, file) = rx
            .await
            .map_err(|_| stopped("snapshot thread"))?
            .map_err(|e| {
                tracing::error!(error = %e, "snapshot build failed");
                raft_io("build snapshot", &e)
            })?;
        Ok(Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        })
    }
}
