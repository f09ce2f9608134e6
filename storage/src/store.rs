//! Opening a node's store: one RocksDB, and the four handles raft/ and the API layers use.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rocksdb::WriteBatch;

use crate::bulk_load::{self, BulkLoader};
use crate::codec::{self, sm_meta};
use crate::compact::Compactor;
use crate::engine::{CF_HISTORY, CF_KV, CF_RAFT_LOG, CF_SM_META, Engine};
use crate::error::StorageError;
use crate::log_store::LogStore;
use crate::snapshot::{self, Record, SnapshotHeader};
use crate::state_machine::{
    KvView, Reader, SharedStatus, SmStatus, SnapshotDir, StateMachineStore,
};
use crate::watch::WatchHub;

/// Tunables of a store. Tests shrink them.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The cluster this store belongs to. Written on first open; a different non-empty id on a
    /// later open is refused. Empty = take whatever the store (or the first snapshot) says.
    pub cluster_id: String,
    /// Where raft snapshots go; default `<dir>/snapshots`.
    pub snapshot_dir: Option<PathBuf>,
    /// Messages a watcher may have queued before it is closed as too slow.
    pub watch_queue_capacity: usize,
    /// Period of progress messages for watchers that asked for them.
    pub progress_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cluster_id: String::new(),
            snapshot_dir: None,
            watch_queue_capacity: 10_000,
            progress_interval: Duration::from_secs(5),
        }
    }
}

/// A node's store: the raft log, the state machine, and the read and watch handles over it.
/// The database closes when every handle (and every clone of `kv`/`watch`) is dropped.
pub struct Store {
    pub log: LogStore,
    pub state_machine: StateMachineStore,
    pub kv: KvView,
    pub watch: WatchHub,
}

impl Store {
    /// Opens the store in `dir` (created if missing) and recovers everything from RocksDB: the
    /// state is that of the last applied entry that committed, the watch hub resumes at its
    /// revision.
    #[tracing::instrument(level = "info", skip_all, fields(dir = %dir.display()))]
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StorageError> {
        let engine = Engine::open(dir)?;
        let mut status = Reader::new(&engine).status()?;
        adopt_cluster_id(&engine, &mut status, &opts.cluster_id)?;
        let shared = Arc::new(SharedStatus::new(status.clone()));
        let kv = KvView::new(engine.clone(), shared.clone());
        let watch = WatchHub::new(
            kv.clone(),
            status.revision,
            opts.watch_queue_capacity,
            opts.progress_interval,
        );
        let log = LogStore::open(engine.clone())?;
        let snapshot_dir = opts
            .snapshot_dir
            .clone()
            .unwrap_or_else(|| dir.join("snapshots"));
        let snapshots = SnapshotDir::open(&snapshot_dir)?;
        let compactor = Compactor::start(&engine);
        let mut state_machine =
            StateMachineStore::new(engine, shared, watch.clone(), snapshots, compactor);
        state_machine.finish_interrupted_batch()?;
        tracing::info!(
            revision = status.revision,
            compacted = status.compacted,
            last_applied = ?status.last_applied,
            cluster_id = %status.cluster_id,
            "store opened"
        );
        Ok(Store {
            log,
            state_machine,
            kv,
            watch,
        })
    }

    /// Creates a new store in `dir` from a backup (`skiff restore`): the kv state and history of
    /// the backup, under `opts.cluster_id` (a new cluster), with no raft log and no membership,
    /// ready for a new cluster to be initialized on top. Refuses a directory that holds data.
    pub fn restore_backup(
        dir: &Path,
        opts: &StoreOptions,
        input: &mut impl Read,
    ) -> Result<SnapshotHeader, StorageError> {
        Self::restore_backup_checked(dir, opts, input, true)
    }

    /// `restore_backup`; `check_digest = false` tolerates a SHA-256 trailer mismatch
    /// (`skiff restore --skip-hash-check`) while still refusing a malformed or truncated file.
    #[tracing::instrument(level = "info", skip_all, fields(dir = %dir.display()))]
    pub fn restore_backup_checked(
        dir: &Path,
        opts: &StoreOptions,
        input: &mut impl Read,
        check_digest: bool,
    ) -> Result<SnapshotHeader, StorageError> {
        // Creating a database costs a dozen fsyncs (~10 ms each here): do it on another thread
        // while the backup is read. An existing database is opened first, to be refused at
        // once if it holds data.
        if dir.join("CURRENT").exists() {
            drop(open_empty(dir)?);
        }
        let opening = {
            let dir = dir.to_path_buf();
            std::thread::Builder::new()
                .name("restore-open".into())
                .spawn(move || open_empty(&dir))
                .map_err(|e| StorageError::io("start the restore thread", e))?
        };
        // Bulk load: SST files built on a second thread while this one reads, hashes and
        // validates, ingested only once the whole file checked out; the status record (what
        // makes the directory a store at the backup's revision) goes last, after the data is
        // durable, so a crash mid-restore never leaves a store that looks complete.
        let staging = dir.join("restore-staging");
        let read = BulkLoader::start(&staging).and_then(|mut loader| {
            let read = snapshot::read_snapshot_checked(
                input,
                None,
                check_digest,
                &mut |record: Record| match record {
                    Record::Kv { key, value } => loader.put(CF_KV, key, value),
                    Record::History { key, value } => loader.put(CF_HISTORY, key.to_vec(), value),
                    Record::Header(_) | Record::End { .. } => Ok(()),
                },
            );
            match read {
                Ok(read) => Ok((read, loader)),
                Err(e) => Err(loader.abandon(e)),
            }
        });
        let engine = opening
            .join()
            .unwrap_or(Err(StorageError::WorkerStopped("restore open panicked")));
        let ((header, stats), loader, engine) = match (read, engine) {
            (Ok((read, loader)), Ok(engine)) => (read, loader, engine),
            (Ok((_, loader)), Err(e)) => return Err(loader.abandon(e)),
            (Err(e), _) => return Err(e),
        };
        let files = loader.finish()?;
        let ingested = files
            .iter()
            .try_for_each(|&(cf, ref paths)| engine.ingest(cf, paths));
        bulk_load::remove_quietly(&staging);
        ingested?;
        let mut batch = WriteBatch::default();
        let status = SmStatus {
            last_applied: None,
            membership: Default::default(),
            revision: header.revision,
            compacted: header.compacted_revision,
            cluster_id: opts.cluster_id.clone(),
        };
        crate::state_machine::write_status(&engine, &mut batch, None, &status)?;
        engine.write(batch, true)?;
        tracing::info!(
            revision = header.revision,
            kv_count = stats.kv_count,
            from_cluster = %header.cluster_id,
            "backup restored"
        );
        Ok(header)
    }
}

/// First open writes the cluster id; later opens must agree with it.
fn adopt_cluster_id(
    engine: &Engine,
    status: &mut SmStatus,
    wanted: &str,
) -> Result<(), StorageError> {
    if wanted.is_empty() || status.cluster_id == wanted {
        return Ok(());
    }
    if !status.cluster_id.is_empty() {
        return Err(StorageError::ClusterIdMismatch {
            stored: status.cluster_id.clone(),
            expected: wanted.to_string(),
        });
    }
    let mut batch = WriteBatch::default();
    batch.put_cf(
        engine.cf(CF_SM_META)?,
        sm_meta::CLUSTER_ID,
        codec::encode("cluster id", &wanted.to_string())?,
    );
    engine.write(batch, true)?;
    status.cluster_id = wanted.to_string();
    Ok(())
}

/// Opens (creating) the database in `dir`, refusing one that holds data.
fn open_empty(dir: &Path) -> Result<Engine, StorageError> {
    let engine = Engine::open(dir)?;
    ensure_empty(&engine, dir)?;
    Ok(engine)
}

fn ensure_empty(engine: &Engine, dir: &Path) -> Result<(), StorageError> {
    for cf in [CF_KV, CF_HISTORY, CF_RAFT_LOG, CF_SM_META] {
        let mut it = engine.db().raw_iterator_cf(engine.cf(cf)?);
        it.seek_to_first();
        if it.valid() {
            return Err(StorageError::Io {
                context: format!("restore into {}", dir.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the directory already holds a store",
                ),
            });
        }
        it.status()
            .map_err(|e| StorageError::rocks(format!("scan {cf}"), e))?;
    }
    Ok(())
}
