//! The raft log: openraft's `RaftLogStorage` over the `raft_log` and `raft_meta` column families,
//! with group commit.
//!
//! Why a writer thread: a write is acknowledged only once the log is fsynced, and an fsync costs
//! the same for one entry as for a hundred. Every write (append, truncate, purge, vote,
//! committed) is queued to one thread, which drains the queue, writes everything in one
//! WriteBatch with one fsync, then completes every waiter. One queue also keeps the order
//! openraft requires: no write is applied before an earlier one.
//!
//! Entries appended but not yet flushed sit in `pending` so readers (replication) see them at
//! once, as openraft requires; the writer removes them after they are durable.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use rocksdb::{ReadOptions, WriteBatch};
use tokio::sync::oneshot;

use crate::codec::{self, log_key, raft_meta};
use crate::engine::{CF_RAFT_LOG, CF_RAFT_META, Engine, WeakEngine};
use crate::error::{StorageError, raft_io};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// At most this many queued writes go into one batch, so one fsync never waits on an unbounded
/// amount of data.
const MAX_GROUP: usize = 1024;

/// The raft log store. Cheap to clone; every clone shares the writer and the pending entries.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<LogShared>,
}

struct LogShared {
    engine: Engine,
    /// Appended, not yet durable. Keyed by index.
    pending: Mutex<BTreeMap<u64, Entry>>,
    writer: Sender<WriteOp>,
}

type Reply = oneshot::Sender<Result<(), StorageError>>;

enum WriteOp {
    Append {
        entries: Vec<(u64, LogId, Vec<u8>)>,
        callback: IOFlushed<TypeConfig>,
    },
    Truncate {
        since: u64,
        reply: Reply,
    },
    Purge {
        upto: LogId,
        reply: Reply,
    },
    SaveVote {
        vote: Vote,
        reply: Reply,
    },
    SaveCommitted {
        committed: Option<LogId>,
        reply: Reply,
    },
}

impl WriteOp {
    /// Everything but the committed pointer must be on disk before it is acknowledged. A lost
    /// committed pointer only means re-applying from an older point after a crash.
    fn needs_sync(&self) -> bool {
        !matches!(self, WriteOp::SaveCommitted { .. })
    }
}

impl LogStore {
    /// Starts the writer thread over an opened engine.
    pub(crate) fn open(engine: Engine) -> Result<LogStore, StorageError> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(LogShared {
            engine: engine.clone(),
            pending: Mutex::new(BTreeMap::new()),
            writer: tx,
        });
        let weak_engine = engine.downgrade();
        let weak_shared = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("skiff-log-writer".into())
            .spawn(move || writer_loop(weak_engine, weak_shared, rx))
            .map_err(|e| StorageError::io("spawn log writer thread", e))?;
        Ok(LogStore { shared })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        // The map holds plain data that is valid after any panic; ignore poisoning.
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError> {
        self.shared
            .writer
            .send(op)
            .map_err(|_| StorageError::WorkerStopped("log writer"))
    }

    async fn submit(&self, make: impl FnOnce(Reply) -> WriteOp) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await
            .map_err(|_| StorageError::WorkerStopped("log writer"))?
    }

    fn read_raft_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static [u8],
        what: &'static str,
    ) -> Result<Option<T>, StorageError> {
        let engine = &self.shared.engine;
        let value = engine
            .db()
            .get_cf(engine.cf(CF_RAFT_META)?, key)
            .map_err(|e| StorageError::rocks(format!("read {what}"), e))?;
        value.map(|bytes| codec::decode(what, &bytes)).transpose()
    }

    /// Entries with `start <= index < end` from the pending map and RocksDB. Pending is read
    /// first: an entry leaves it only after it is in RocksDB, so none can be missed in between.
    fn read_entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let pending: Vec<Entry> = self
            .pending()
            .range(start..end)
            .map(|(_, e)| e.clone())
            .collect();
        let engine = &self.shared.engine;
        let mut found: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(log_key(end).to_vec());
        let mut it = engine
            .db()
            .raw_iterator_cf_opt(engine.cf(CF_RAFT_LOG)?, opts);
        it.seek(log_key(start));
        while let Some((key, value)) = it.item() {
            let index = codec::decode_log_key(key)?;
            let entry: Entry = codec::decode("log entry", value)?;
            if entry.log_id.index != index {
                return Err(StorageError::Corrupt(format!(
                    "log entry {} stored at index {index}",
                    entry.log_id
                )));
            }
            found.insert(index, entry);
            it.next();
        }
        it.status()
            .map_err(|e| StorageError::rocks("scan raft log", e))?;
        for entry in pending {
            found.insert(entry.log_id.index, entry);
        }
        Ok(found.into_values().collect())
    }

    fn last_in_db(&self) -> Result<Option<LogId>, StorageError> {
        let engine = &self.shared.engine;
        let mut it = engine.db().raw_iterator_cf(engine.cf(CF_RAFT_LOG)?);
        it.seek_to_last();
        let last = match it.value() {
            Some(value) => Some(codec::decode::<Entry>("log entry", value)?.log_id),
            None => None,
        };
        it.status()
            .map_err(|e| StorageError::rocks("seek raft log", e))?;
        Ok(last)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StorageError> {
        let pending_last = self.pending().last_key_value().map(|(_, e)| e.log_id);
        let db_last = self.last_in_db()?;
        let last_purged: Option<LogId> =
            self.read_raft_meta(raft_meta::LAST_PURGED, "last purged log id")?;
        // The last log id is the newest present entry, or the purge point when nothing is left.
        let last_log_id = pending_last.max(db_last).max(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }
}

fn range_to_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let (start, end) = range_to_bounds(&range);
        self.read_entries(start, end)
            .map_err(|e| raft_io("read raft log", &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        self.read_raft_meta(raft_meta::VOTE, "vote")
            .map_err(|e| raft_io("read vote", &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        self.log_state()
            .map_err(|e| raft_io("read raft log state", &e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let vote = *vote;
        self.submit(|reply| WriteOp::SaveVote { vote, reply })
            .await
            .map_err(|e| raft_io("write vote", &e))
    }

    /// Queued, not awaited. Nothing depends on it being durable — a lost committed pointer only
    /// means re-applying from an older point — and the writer's queue keeps it in order with the
    /// appends and purges around it, so awaiting the fsync in progress would only add latency.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        let (reply, _ignored) = oneshot::channel();
        self.send(WriteOp::SaveCommitted { committed, reply })
            .map_err(|e| raft_io("write committed log id", &e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        let committed: Option<Option<LogId>> = self
            .read_raft_meta(raft_meta::COMMITTED, "committed log id")
            .map_err(|e| raft_io("read committed log id", &e))?;
        Ok(committed.flatten())
    }

    /// Makes the entries readable at once and queues them; `callback` fires after the fsync.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in &entries {
            let bytes =
                codec::encode("log entry", entry).map_err(|e| raft_io("write raft log", &e))?;
            encoded.push((entry.log_id.index, entry.log_id, bytes));
        }
        {
            let mut pending = self.pending();
            for entry in entries {
                pending.insert(entry.log_id.index, entry);
            }
        }
        tracing::trace!(count = encoded.len(), "log append queued");
        self.send(WriteOp::Append {
            entries: encoded,
            callback,
        })
        .map_err(|e| raft_io("write raft log", &e))
    }

    /// Removes every entry after `last_log_id` (all of them when it is `None`).
    #[tracing::instrument(level = "debug", skip(self))]
    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let since = last_log_id.map_or(0, |l| l.index.saturating_add(1));
        self.submit(|reply| WriteOp::Truncate { since, reply })
            .await
            .map_err(|e| raft_io("truncate raft log", &e))?;
        // Everything appended before the truncate was flushed (and left `pending`) before it;
        // this only guards against an entry whose flush failed.
        self.pending().retain(|index, _| *index < since);
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        self.submit(|reply| WriteOp::Purge {
            upto: log_id,
            reply,
        })
        .await
        .map_err(|e| raft_io("purge raft log", &e))?;
        self.pending().retain(|index, _| *index > log_id.index);
        Ok(())
    }
}

/// The writer thread: drain the queue, one WriteBatch, one fsync, complete every waiter.
fn writer_loop(engine: WeakEngine, shared: std::sync::Weak<LogShared>, rx: Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        // Borrow the database for this batch only, so dropping the store closes it.
        let result = match engine.upgrade() {
            Some(engine) => write_group(&engine, &ops),
            None => Err(StorageError::WorkerStopped("database closed")),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, ops = ops.len(), "raft log write failed");
        }
        complete_group(&shared, ops, &result);
    }
}

fn write_group(engine: &Engine, ops: &[WriteOp]) -> Result<(), StorageError> {
    let _span = tracing::trace_span!("log_write_group", ops = ops.len()).entered();
    let log_cf = engine.cf(CF_RAFT_LOG)?;
    let meta_cf = engine.cf(CF_RAFT_META)?;
    let mut batch = WriteBatch::default();
    let mut sync = false;
    for op in ops {
        sync |= op.needs_sync();
        match op {
            WriteOp::Append { entries, .. } => {
                for (index, _, bytes) in entries {
                    batch.put_cf(log_cf, log_key(*index), bytes);
                }
            }
            WriteOp::Truncate { since, .. } => {
                batch.delete_range_cf(log_cf, log_key(*since), log_key(u64::MAX));
                batch.delete_cf(log_cf, log_key(u64::MAX));
            }
            WriteOp::Purge { upto, .. } => {
                batch.delete_range_cf(log_cf, log_key(0), log_key(upto.index.saturating_add(1)));
                if upto.index == u64::MAX {
                    batch.delete_cf(log_cf, log_key(u64::MAX));
                }
                batch.put_cf(
                    meta_cf,
                    raft_meta::LAST_PURGED,
                    codec::encode("last purged", upto)?,
                );
            }
            WriteOp::SaveVote { vote, .. } => {
                batch.put_cf(meta_cf, raft_meta::VOTE, codec::encode("vote", vote)?);
            }
            WriteOp::SaveCommitted { committed, .. } => {
                batch.put_cf(
                    meta_cf,
                    raft_meta::COMMITTED,
                    codec::encode("committed", committed)?,
                );
            }
        }
    }
    engine.write(batch, sync)
}

fn complete_group(
    shared: &std::sync::Weak<LogShared>,
    ops: Vec<WriteOp>,
    result: &Result<(), StorageError>,
) {
    let shared = shared.upgrade();
    for op in ops {
        match op {
            WriteOp::Append { entries, callback } => {
                if let (Ok(()), Some(shared)) = (result, &shared) {
                    let mut pending = shared
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for (index, log_id, _) in &entries {
                        // Only drop what was written: a newer entry at the same index stays.
                        if pending.get(index).is_some_and(|e| e.log_id == *log_id) {
                            pending.remove(index);
                        }
                    }
                }
                callback.io_completed(match result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                });
            }
            WriteOp::Truncate { reply, .. }
            | WriteOp::Purge { reply, .. }
            | WriteOp::SaveVote { reply, .. }
            | WriteOp::SaveCommitted { reply, .. } => {
                let _ = reply.send(match result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StorageError::io(
                        "raft log write",
                        std::io::Error::other(e.to_string()),
                    )),
                });
            }
        }
    }
}
