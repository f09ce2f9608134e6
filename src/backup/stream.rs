//! The member side of the `Backup` admin RPC: `write_snapshot` runs on a blocking thread (it is
//! RocksDB work) and its output is cut into chunks sent over a bounded channel, so a slow client
//! slows the snapshot down instead of buffering it in memory.

use std::cell::Cell;
use std::io::{self, Write};

use skiff_proto::admin::BackupChunk;
use skiff_storage::KvView;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Bytes per gRPC message (well under tonic's 4 MiB default limit).
pub const CHUNK_BYTES: usize = 256 << 10;
/// Chunks in flight between the snapshot thread and the gRPC stream.
const CHANNEL_CHUNKS: usize = 8;

pub type BackupStream = ReceiverStream<Result<BackupChunk, Status>>;

/// Starts streaming a point-in-time snapshot of `kv` (the cut is taken when the blocking thread
/// opens its RocksDB snapshot, right away). The caller does the read barrier first. The first
/// chunk carries `at_rest_keys` (the at-rest key file, empty if none).
pub fn start(kv: KvView, at_rest_keys: String) -> BackupStream {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let records = Cell::new(0u64);
        let mut writer = ChunkWriter {
            tx: &tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
            bytes: 0,
            records: &records,
            at_rest_keys: Some(at_rest_keys),
        };
        let outcome = skiff_storage::write_snapshot(&kv, &mut writer, &mut |n, _| records.set(n))
            .and_then(|header| {
                writer
                    .send_buffered()
                    .map_err(|source| skiff_storage::StorageError::Io {
                        context: "send snapshot".into(),
                        source,
                    })?;
                Ok(header)
            });
        match outcome {
            Ok(header) => tracing::info!(
                revision = header.revision,
                bytes = writer.bytes,
                records = records.get(),
                "backup streamed"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "backup stream failed");
                let _ = tx.blocking_send(Err(Status::internal(format!("snapshot failed: {e}"))));
            }
        }
    });
    ReceiverStream::new(rx)
}

/// `Write` that cuts the snapshot into `BackupChunk`s.
struct ChunkWriter<'a> {
    tx: &'a mpsc::Sender<Result<BackupChunk, Status>>,
    buf: Vec<u8>,
    bytes: u64,
    records: &'a Cell<u64>,
    /// Sent with the first chunk, then None.
    at_rest_keys: Option<String>,
}

impl ChunkWriter<'_> {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.bytes += self.buf.len() as u64;
        let chunk = BackupChunk {
            data: std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES)),
            records: self.records.get(),
            bytes: self.bytes,
            secrets_encryption_keys: self.at_rest_keys.take().unwrap_or_default(),
        };
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the backup client went away"))
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send_buffered()?;
        }
        Ok(data.len())
    }

    /// Chunks go out when full or at the end; a flush mid-way would only make small messages.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
