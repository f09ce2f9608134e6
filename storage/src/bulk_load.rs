//! Bulk loading for `skiff restore`: records are built into SST files on a worker thread while
//! the caller keeps reading, hashing and validating the backup, and become part of the store only
//! when `finish` hands the files back for ingestion, after the whole input checked out.
//!
//! Why SST files rather than write batches: a batch goes through the memtable (a skiplist insert
//! and copy per record) and is then flushed, which rebuilds the same SST files; building them
//! directly skips the memtable, and doing it on a second thread overlaps it with the reading.
//! The records arrive in each column family's key order (the snapshot reader refuses them
//! otherwise), which is what an SST file needs.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rocksdb::SstFileWriter;

use crate::engine::cf_options;
use crate::error::StorageError;

/// Bytes of records handed to the worker at a time, and batches in flight: enough to keep both
/// threads busy without holding much of the backup in memory.
const BATCH_BYTES: usize = 4 << 20;
const BATCHES_IN_FLIGHT: usize = 4;

struct Put {
    cf: &'static str,
    key: Vec<u8>,
    value: Vec<u8>,
}

enum Msg {
    Puts(Vec<Put>),
    /// Every record was sent and the input checked out: finish the files.
    Finish,
}

/// SST files per column family, in key order.
pub(crate) type Files = Vec<(&'static str, Vec<PathBuf>)>;

pub(crate) struct BulkLoader {
    tx: SyncSender<Msg>,
    worker: JoinHandle<Result<Option<Files>, StorageError>>,
    batch: Vec<Put>,
    batch_bytes: usize,
    staging: PathBuf,
}

impl BulkLoader {
    /// Starts the worker; its files go to `staging` (created empty; removed by `abandon`, and
    /// emptied by ingestion, which moves the files into the store).
    pub(crate) fn start(staging: &Path) -> Result<BulkLoader, StorageError> {
        let _ = std::fs::remove_dir_all(staging);
        std::fs::create_dir_all(staging)
            .map_err(|e| StorageError::io(format!("create {}", staging.display()), e))?;
        let (tx, rx) = sync_channel(BATCHES_IN_FLIGHT);
        let dir = staging.to_path_buf();
        let span = tracing::Span::current();
        let worker = std::thread::Builder::new()
            .name("restore-sst".into())
            .spawn(move || {
                let _entered = span.enter();
                write_files(&dir, rx)
            })
            .map_err(|e| StorageError::io("start the restore SST writer", e))?;
        Ok(BulkLoader {
            tx,
            worker,
            batch: Vec::new(),
            batch_bytes: 0,
            staging: staging.to_path_buf(),
        })
    }

    /// Queues one record; keys must ascend within a column family, and a column family's
    /// records must all come before the next one's.
    pub(crate) fn put(
        &mut self,
        cf: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.batch_bytes += key.len() + value.len();
        self.batch.push(Put { cf, key, value });
        if self.batch_bytes >= BATCH_BYTES {
            self.send_batch()?;
        }
        Ok(())
    }

    fn send_batch(&mut self) -> Result<(), StorageError> {
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        self.tx
            .send(Msg::Puts(batch))
            .map_err(|_| StorageError::WorkerStopped("restore SST writer"))
    }

    /// Finishes the files (synced to disk) and returns them for ingestion.
    pub(crate) fn finish(mut self) -> Result<Files, StorageError> {
        let sent = self.send_batch().and_then(|()| {
            self.tx
                .send(Msg::Finish)
                .map_err(|_| StorageError::WorkerStopped("restore SST writer"))
        });
        let (worker, staging) = self.stop();
        let outcome = match (worker, sent) {
            (Ok(Some(files)), Ok(())) => Ok(files),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(None), Ok(())) => Err(StorageError::WorkerStopped("restore SST writer")),
        };
        if outcome.is_err() {
            remove_quietly(&staging);
        }
        outcome
    }

    /// Stops after the input was refused (`reason`) and deletes what was written. Returns the
    /// error to report: the worker's own if it failed first (the reader then only saw it stop).
    pub(crate) fn abandon(self, reason: StorageError) -> StorageError {
        let (worker, staging) = self.stop();
        remove_quietly(&staging);
        match worker {
            Err(worker_error) => worker_error,
            Ok(_) => reason,
        }
    }

    /// Closes the channel (without `Finish` sent, the worker then gives up) and waits for the
    /// worker.
    fn stop(self) -> (Result<Option<Files>, StorageError>, PathBuf) {
        let BulkLoader {
            tx,
            worker,
            staging,
            ..
        } = self;
        drop(tx);
        let outcome = worker.join().unwrap_or(Err(StorageError::WorkerStopped(
            "restore SST writer panicked",
        )));
        (outcome, staging)
    }
}

pub(crate) fn remove_quietly(staging: &Path) {
    if let Err(e) = std::fs::remove_dir_all(staging)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %staging.display(), error = %e, "could not remove restore staging files");
    }
}

/// The worker: one SST file per column family, in the order the records come. Returns None
/// when the sender went away without `Finish` (the input was refused).
fn write_files(dir: &Path, rx: Receiver<Msg>) -> Result<Option<Files>, StorageError> {
    let opts = cf_options();
    let mut files: Files = Vec::new();
    let mut current: Option<(&'static str, SstFileWriter<'_>)> = None;
    for msg in rx {
        match msg {
            Msg::Puts(puts) => {
                for put in puts {
                    if current.as_ref().is_none_or(|(cf, _)| *cf != put.cf) {
                        finish_file(current.take())?;
                        let path = dir.join(format!("{}-{}.sst", put.cf, files.len()));
                        let writer = SstFileWriter::create(&opts);
                        writer.open(&path).map_err(|e| {
                            StorageError::rocks(format!("create {}", path.display()), e)
                        })?;
                        files.push((put.cf, vec![path]));
                        current = Some((put.cf, writer));
                    }
                    if let Some((cf, writer)) = current.as_mut() {
                        writer
                            .put(&put.key, &put.value)
                            .map_err(|e| StorageError::rocks(format!("build {cf} SST"), e))?;
                    }
                }
            }
            Msg::Finish => {
                finish_file(current.take())?;
                return Ok(Some(files));
            }
        }
    }
    Ok(None)
}

fn finish_file(current: Option<(&'static str, SstFileWriter<'_>)>) -> Result<(), StorageError> {
    if let Some((cf, mut writer)) = current {
        writer
            .finish()
            .map_err(|e| StorageError::rocks(format!("finish {cf} SST"), e))?;
    }
    Ok(())
}
