//! The one RocksDB a node keeps, with its column families.
//!
//! Everything durable about a node lives here so a single WriteBatch can change the kv state, the
//! history and the applied log id together, and a single WAL fsync makes all earlier writes
//! durable (the state machine writes without fsync and rides on the log's fsyncs).

use std::path::Path;
use std::sync::{Arc, Weak};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options, WriteBatch, WriteOptions,
};

use crate::error::StorageError;

/// Raft log entries: key = index (u64 BE), value = bincode `Entry`.
pub(crate) const CF_RAFT_LOG: &str = "raft_log";
/// Raft vote, committed log id, last purged log id.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// Current kv state: key bytes -> bincode `StoredKv`.
pub(crate) const CF_KV: &str = "kv";
/// Events by revision: key = revision (u64 BE) ++ sub-index (u32 BE) -> bincode `Event`.
pub(crate) const CF_HISTORY: &str = "history";
/// State machine meta: last applied, membership, revision, compacted revision, cluster id.
pub(crate) const CF_SM_META: &str = "sm_meta";

const COLUMN_FAMILIES: [&str; 5] = [CF_RAFT_LOG, CF_RAFT_META, CF_KV, CF_HISTORY, CF_SM_META];

/// A cheap, cloneable handle to the node's RocksDB. The database closes when the last strong
/// handle drops; background threads hold a `WeakEngine` so they never keep it open.
#[derive(Clone)]
pub(crate) struct Engine {
    db: Arc<DB>,
}

/// A handle that does not keep the database open (for background workers).
#[derive(Clone)]
pub(crate) struct WeakEngine {
    db: Weak<DB>,
}

impl WeakEngine {
    pub(crate) fn upgrade(&self) -> Option<Engine> {
        self.db.upgrade().map(|db| Engine { db })
    }
}

/// The options of every column family (also those of SST files built for ingestion, so that
/// they are laid out as the column family's own would be).
pub(crate) fn cf_options() -> Options {
    let mut cf_opts = Options::default();
    cf_opts.set_compression_type(DBCompressionType::Lz4);
    cf_opts
}

impl Engine {
    /// Opens (creating if missing) the database in `dir` with all column families.
    #[tracing::instrument(level = "info", skip_all, fields(dir = %dir.display()))]
    pub(crate) fn open(dir: &Path) -> Result<Engine, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::io(format!("create {}", dir.display()), e))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_keep_log_file_num(4);
        // The raft log and sm_meta are written constantly; bound the WAL so that old WAL files
        // are released by flushing the column families that pin them.
        opts.set_max_total_wal_size(128 << 20);
        let cfs = || {
            COLUMN_FAMILIES
                .iter()
                .map(|name| ColumnFamilyDescriptor::new(*name, cf_options()))
        };
        // Reopening in the same process (tests, restore) can race with the background threads
        // of the previous handle letting go of it; RocksDB then reports its LOCK as held by this
        // process. That lock is released within milliseconds, so wait briefly for it. A lock
        // held by another process is reported at once.
        let mut attempts = 0;
        let db = loop {
            match DB::open_cf_descriptors(&opts, dir, cfs()) {
                Ok(db) => break db,
                Err(e)
                    if attempts < 100 && e.to_string().contains("lock hold by current process") =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(StorageError::rocks(format!("open {}", dir.display()), e)),
            }
        };
        tracing::info!("rocksdb opened");
        Ok(Engine { db: Arc::new(db) })
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn downgrade(&self) -> WeakEngine {
        WeakEngine {
            db: Arc::downgrade(&self.db),
        }
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::Corrupt(format!("column family {name} missing")))
    }

    /// Writes a batch atomically. `sync` fsyncs the WAL (and with it every earlier write).
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| StorageError::rocks("write batch", e))
    }

    /// Moves finished SST files (keys ascending, none in the column family yet) into a column
    /// family: RocksDB links them in and syncs them, so they are durable when this returns.
    pub(crate) fn ingest(
        &self,
        name: &'static str,
        files: &[std::path::PathBuf],
    ) -> Result<(), StorageError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut opts = rocksdb::IngestExternalFileOptions::default();
        opts.set_move_files(true);
        // Nothing of these keys is in a memtable: refuse rather than flush if that is ever wrong.
        opts.set_allow_blocking_flush(false);
        self.db
            .ingest_external_file_cf_opts(self.cf(name)?, &opts, files.to_vec())
            .map_err(|e| StorageError::rocks(format!("ingest into {name}"), e))
    }

    /// Adds to `batch` the deletion of every key of a column family, exactly: a range delete
    /// from the first to the last key plus a point delete of the last key (range ends are
    /// exclusive, and keys are arbitrary bytes, so no fixed upper bound covers them all).
    pub(crate) fn clear_cf(
        &self,
        batch: &mut WriteBatch,
        name: &'static str,
    ) -> Result<(), StorageError> {
        let cf = self.cf(name)?;
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_to_first();
        let first = it.key().map(<[u8]>::to_vec);
        it.seek_to_last();
        let last = it.key().map(<[u8]>::to_vec);
        it.status()
            .map_err(|e| StorageError::rocks(format!("scan {name}"), e))?;
        if let (Some(first), Some(last)) = (first, last) {
            batch.delete_range_cf(cf, first.as_slice(), last.as_slice());
            batch.delete_cf(cf, last);
        }
        Ok(())
    }

    /// Approximate bytes on disk and in memtables, over all column families.
    pub(crate) fn size_bytes(&self) -> u64 {
        let mut total = 0u64;
        for name in COLUMN_FAMILIES {
            let Some(cf) = self.db.cf_handle(name) else {
                continue;
            };
            for prop in [
                rocksdb::properties::TOTAL_SST_FILES_SIZE,
                rocksdb::properties::SIZE_ALL_MEM_TABLES,
            ] {
                if let Ok(Some(v)) = self.db.property_int_value_cf(cf, prop) {
                    total = total.saturating_add(v);
                }
            }
        }
        total
    }
}
