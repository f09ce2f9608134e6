//! Raft snapshot files on disk: naming, atomic publication, retention, and the two blocking
//! jobs (build from a point-in-time reader, install from a received file).
//!
//! A file is written as `*.part`, fsynced, renamed, and the directory fsynced, so a crash never
//! leaves a half-written file under a final name. Names sort by (last applied index, creation
//! time), so the newest snapshot is the greatest name.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rocksdb::WriteBatch;

use crate::engine::{CF_HISTORY, CF_KV, CF_SM_META, Engine};
use crate::error::StorageError;
use crate::snapshot::{self, Record, SnapshotHeader};
use crate::state_machine::apply::write_status;
use crate::state_machine::read::{Reader, SmStatus};
use crate::types::SnapshotMeta;

const FINAL_PREFIX: &str = "snap-";
const FINAL_SUFFIX: &str = ".skiff";
const PART_SUFFIX: &str = ".part";
/// Snapshots kept after a build: the newest and the one before it (still being sent, maybe).
pub(crate) const KEEP_SNAPSHOTS: usize = 2;

static PART_SEQ: AtomicU64 = AtomicU64::new(0);

/// The snapshot directory. Renames and deletions are serialized so retention never races a
/// publication.
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    publish: Mutex<()>,
}

impl SnapshotDir {
    /// Creates the directory and removes leftovers of interrupted writes.
    pub(crate) fn open(dir: &Path) -> Result<SnapshotDir, StorageError> {
        fs::create_dir_all(dir)
            .map_err(|e| StorageError::io(format!("create {}", dir.display()), e))?;
        for path in list(dir)? {
            if path.extension().is_some_and(|e| e == "part") {
                tracing::info!(path = %path.display(), "removing interrupted snapshot file");
                let _ = fs::remove_file(&path);
            }
        }
        Ok(SnapshotDir {
            dir: dir.to_path_buf(),
            publish: Mutex::new(()),
        })
    }

    /// A new temporary file (read + write) in the directory.
    pub(crate) fn new_part(&self, purpose: &str) -> Result<(PathBuf, File), StorageError> {
        let seq = PART_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(
            "{purpose}-{}-{seq}{PART_SUFFIX}",
            std::process::id()
        ));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io(format!("create {}", path.display()), e))?;
        Ok((path, file))
    }

    /// The final file name for a snapshot: sortable by last applied index, then time.
    fn final_path(&self, header: &SnapshotHeader) -> PathBuf {
        let index = header.last_applied.map_or(0, |l| l.index.saturating_add(1));
        let id: String = header
            .snapshot_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!(
            "{FINAL_PREFIX}{index:020}-{:016}-{id}{FINAL_SUFFIX}",
            header.created_unix_ms
        ))
    }

    /// Renames a complete, fsynced part file to its final name and makes the rename durable.
    fn publish(&self, part: &Path, header: &SnapshotHeader) -> Result<PathBuf, StorageError> {
        let _guard = self.publish.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.final_path(header);
        fs::rename(part, &path)
            .map_err(|e| StorageError::io(format!("rename {}", part.display()), e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io(format!("fsync {}", self.dir.display()), e))?;
        Ok(path)
    }

    fn finals(&self) -> Result<Vec<PathBuf>, StorageError> {
        let mut finals: Vec<PathBuf> = list(&self.dir)?
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(FINAL_PREFIX) && n.ends_with(FINAL_SUFFIX))
            })
            .collect();
        finals.sort();
        Ok(finals)
    }

    pub(crate) fn newest(&self) -> Result<Option<PathBuf>, StorageError> {
        Ok(self.finals()?.pop())
    }

    /// Deletes all but the newest `keep` snapshots (and never `protect`).
    pub(crate) fn retain_newest(
        &self,
        keep: usize,
        protect: Option<&Path>,
    ) -> Result<(), StorageError> {
        let _guard = self.publish.lock().unwrap_or_else(PoisonError::into_inner);
        let finals = self.finals()?;
        let excess = finals.len().saturating_sub(keep);
        for path in finals.into_iter().take(excess) {
            if Some(path.as_path()) == protect {
                continue;
            }
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove old snapshot");
            }
        }
        Ok(())
    }

    pub(crate) fn remove_quietly(&self, path: &Path) {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove snapshot file");
            }
            _ => {}
        }
    }
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let entries =
        fs::read_dir(dir).map_err(|e| StorageError::io(format!("list {}", dir.display()), e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(format!("list {}", dir.display()), e))?;
        paths.push(entry.path());
    }
    Ok(paths)
}

/// Opens a snapshot file and reads its header, returning the file rewound to the start.
pub(crate) fn open_snapshot(path: &Path) -> Result<(SnapshotMeta, File), StorageError> {
    let mut file =
        File::open(path).map_err(|e| StorageError::io(format!("open {}", path.display()), e))?;
    let header = snapshot::read_header(&mut BufReader::new(&mut file))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| StorageError::io(format!("seek {}", path.display()), e))?;
    Ok((header.raft_meta(), file))
}

/// Builds a snapshot file from `reader`'s point in time; returns its meta and the published
/// file, opened for reading (opened before retention runs, so it cannot vanish under us).
pub(crate) fn build(
    reader: &Reader<'_>,
    dir: &SnapshotDir,
) -> Result<(SnapshotMeta, File), StorageError> {
    let (part, file) = dir.new_part("build")?;
    let result = (|| {
        let mut out = BufWriter::new(file);
        let header = snapshot::write_from_reader(reader, &mut out, &mut |_, _| {})?;
        let file = out
            .into_inner()
            .map_err(|e| StorageError::io("flush snapshot", e.into_error()))?;
        file.sync_all()
            .map_err(|e| StorageError::io("fsync snapshot", e))?;
        let path = dir.publish(&part, &header)?;
        let published = File::open(&path)
            .map_err(|e| StorageError::io(format!("open {}", path.display()), e))?;
        dir.retain_newest(KEEP_SNAPSHOTS, Some(&path))?;
        tracing::info!(snapshot_id = %header.snapshot_id, revision = header.revision, "snapshot built");
        Ok((header.raft_meta(), published))
    })();
    if result.is_err() {
        dir.remove_quietly(&part);
    }
    result
}

/// Installs a received snapshot: validates it completely while copying it into the snapshot
/// directory, then replaces kv, history and sm_meta in one synced WriteBatch, then publishes the
/// file and deletes every other snapshot. Returns the new state machine status.
pub(crate) fn install(
    engine: &Engine,
    dir: &SnapshotDir,
    meta: &SnapshotMeta,
    mut received: File,
    our_cluster_id: &str,
) -> Result<SmStatus, StorageError> {
    received
        .seek(SeekFrom::Start(0))
        .map_err(|e| StorageError::io("rewind received snapshot", e))?;
    let (part, file) = dir.new_part("install")?;
    let result = (|| {
        let mut copy = BufWriter::new(file);
        let mut batch = WriteBatch::default();
        // 1. Clear the state machine's column families in the same batch that refills them.
        engine.clear_cf(&mut batch, CF_KV)?;
        engine.clear_cf(&mut batch, CF_HISTORY)?;
        engine.clear_cf(&mut batch, CF_SM_META)?;
        let kv_cf = engine.cf(CF_KV)?;
        let history_cf = engine.cf(CF_HISTORY)?;
        // 2. Stream and validate; nothing is written until the checksum has been checked.
        let (header, stats) = snapshot::read_snapshot(
            &mut BufReader::new(&mut received),
            Some(&mut copy),
            &mut |record: Record| {
                match record {
                    Record::Kv { key, value } => batch.put_cf(kv_cf, key, value),
                    Record::History { key, value } => batch.put_cf(history_cf, key, value),
                    Record::Header(_) | Record::End { .. } => {}
                }
                Ok(())
            },
        )?;
        // 3. It must be the snapshot raft says it is, of our cluster.
        if header.last_applied != meta.last_log_id {
            return Err(StorageError::InvalidSnapshot(format!(
                "file is snapshot {} at {:?}, raft announced one at {:?}",
                header.snapshot_id, header.last_applied, meta.last_log_id
            )));
        }
        if !our_cluster_id.is_empty()
            && !header.cluster_id.is_empty()
            && header.cluster_id != our_cluster_id
        {
            return Err(StorageError::ClusterIdMismatch {
                stored: our_cluster_id.to_string(),
                expected: header.cluster_id.clone(),
            });
        }
        let status = SmStatus {
            last_applied: header.last_applied,
            membership: meta.last_membership.clone(),
            revision: header.revision,
            compacted: header.compacted_revision,
            cluster_id: if our_cluster_id.is_empty() {
                header.cluster_id.clone()
            } else {
                our_cluster_id.to_string()
            },
        };
        write_status(engine, &mut batch, None, &status)?;
        let file = copy
            .into_inner()
            .map_err(|e| StorageError::io("flush snapshot copy", e.into_error()))?;
        file.sync_all()
            .map_err(|e| StorageError::io("fsync snapshot copy", e))?;
        // 4. State first, file second: a crash in between leaves an older current snapshot,
        //    which raft handles; the reverse would announce a snapshot the state is behind.
        engine.write(batch, true)?;
        let path = dir.publish(&part, &header)?;
        dir.retain_newest(1, Some(&path))?;
        tracing::info!(
            snapshot_id = %header.snapshot_id,
            revision = header.revision,
            kv_count = stats.kv_count,
            history_count = stats.history_count,
            bytes = stats.bytes,
            "snapshot installed"
        );
        Ok(status)
    })();
    if result.is_err() {
        dir.remove_quietly(&part);
    }
    result
}
