//! The snapshot / backup file format: one streaming format for raft snapshots (installed on
//! lagging members) and for `skiff backup` / `skiff restore`.
//!
//! Layout (all integers big-endian):
//! ```text
//! magic "SKIFFSN1"
//! record*             tag u8, then:
//!   1 Header          len u32, bincode SnapshotHeader            (exactly one, first)
//!   2 Kv              key len u32, key, value len u32, value      (ascending keys)
//!   3 History         key [12] (revision u64, sub u32), value len u32, value (ascending keys)
//!   4 End             kv count u64, history count u64            (exactly one, last)
//! trailer             SHA-256 of every byte before it (32 bytes), then end of file
//! ```
//! Values are the store's own bincode records (`StoredKv`, `Event`), copied byte for byte, so
//! writing a snapshot never re-encodes. A reader validates framing, order, counts, every value,
//! and the trailer; a truncated file or a flipped byte is refused with a message saying which.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, HISTORY_KEY_LEN, StoredKv};
use crate::error::StorageError;
use crate::model::{KeyRange, Revision};
use crate::state_machine::{KvView, Reader, SmStatus};
use crate::types::{LogId, SnapshotMeta, StoredMembership};

/// Version of this layout written today. Version 2 added `SnapshotHeader::skiff_version`;
/// readers accept 1 and 2 and refuse others.
pub const FORMAT_VERSION: u32 = 2;
const OLDEST_READABLE_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"SKIFFSN1";
const TAG_HEADER: u8 = 1;
const TAG_KV: u8 = 2;
const TAG_HISTORY: u8 = 3;
const TAG_END: u8 = 4;
/// Bounds that keep a corrupt length field from allocating gigabytes.
const MAX_HEADER_LEN: u32 = 16 << 20;
const MAX_KEY_LEN: u32 = 16 << 20;
const MAX_VALUE_LEN: u32 = 256 << 20;
/// How often (in records) the progress callback runs while writing.
const PROGRESS_EVERY: u64 = 1024;

/// What a snapshot is of: the point in the log and the store it was taken at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub format_version: u32,
    pub cluster_id: String,
    pub revision: Revision,
    pub compacted_revision: Revision,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub created_unix_ms: u64,
    /// Unique per snapshot; names its file and shows in logs.
    pub snapshot_id: String,
    /// Version of the software that wrote the snapshot (empty in format version 1).
    pub skiff_version: String,
}

/// The header as format version 1 wrote it (no `skiff_version`), still readable.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct SnapshotHeaderV1 {
    format_version: u32,
    cluster_id: String,
    revision: Revision,
    compacted_revision: Revision,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    created_unix_ms: u64,
    snapshot_id: String,
}

impl From<SnapshotHeaderV1> for SnapshotHeader {
    fn from(v1: SnapshotHeaderV1) -> Self {
        SnapshotHeader {
            format_version: v1.format_version,
            cluster_id: v1.cluster_id,
            revision: v1.revision,
            compacted_revision: v1.compacted_revision,
            last_applied: v1.last_applied,
            membership: v1.membership,
            created_unix_ms: v1.created_unix_ms,
            snapshot_id: v1.snapshot_id,
            skiff_version: String::new(),
        }
    }
}

/// Decodes a header of any readable format version.
fn decode_header(bytes: &[u8]) -> Result<SnapshotHeader, StorageError> {
    match codec::decode::<SnapshotHeader>("snapshot header", bytes) {
        Ok(h) => Ok(h),
        Err(current) => codec::decode::<SnapshotHeaderV1>("snapshot header", bytes)
            .ok()
            .filter(|v1| v1.format_version == 1)
            .map(SnapshotHeader::from)
            .ok_or_else(|| invalid(current.to_string())),
    }
}

impl SnapshotHeader {
    /// The openraft view of this snapshot.
    pub fn raft_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
        }
    }
}

/// Counts from a verified snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub kv_count: u64,
    pub history_count: u64,
    /// Total file size, trailer included.
    pub bytes: u64,
}

/// Writes a consistent point-in-time snapshot of `kv`'s store to `out` (backup, or any caller
/// that wants the state as a stream). `progress(records, bytes)` is called as it goes.
#[tracing::instrument(level = "info", skip_all)]
pub fn write_snapshot(
    kv: &KvView,
    out: &mut impl Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SnapshotHeader, StorageError> {
    let reader = Reader::new(kv.engine());
    write_from_reader(&reader, out, progress)
}

/// Reads a whole snapshot, checking its structure, every record and the SHA-256 trailer.
pub fn verify_snapshot(
    input: &mut impl Read,
) -> Result<(SnapshotHeader, SnapshotStats), StorageError> {
    read_snapshot(input, None, &mut |_: Record| Ok(()))
}

/// Reads a whole snapshot like `verify_snapshot`, copying its bytes to `out` as they are read
/// (a backup client keeps what it receives and validates it in the same pass), and calling
/// `on_kv_key` with every kv key (to describe what the snapshot holds).
/// `check_digest = false` still checks the structure but tolerates a SHA-256 mismatch
/// (`--skip-hash-check`).
pub fn scan_snapshot(
    input: &mut impl Read,
    out: Option<&mut dyn Write>,
    check_digest: bool,
    on_kv_key: &mut dyn FnMut(&[u8]),
) -> Result<(SnapshotHeader, SnapshotStats), StorageError> {
    read_snapshot_checked(input, out, check_digest, &mut |record: Record| {
        if let Record::Kv { key, .. } = record {
            on_kv_key(&key);
        }
        Ok(())
    })
}

/// Reads a whole snapshot like `scan_snapshot`, calling `on_kv` with every key-value pair as
/// the store held it at the snapshot's revision (for selective restores of single objects).
pub fn scan_snapshot_kvs(
    input: &mut impl Read,
    check_digest: bool,
    on_kv: &mut dyn FnMut(crate::model::KeyValue),
) -> Result<(SnapshotHeader, SnapshotStats), StorageError> {
    read_snapshot_checked(input, None, check_digest, &mut |record: Record| {
        if let Record::Kv { key, value } = record {
            let stored: StoredKv = codec::decode("kv record", &value)?;
            on_kv(stored.to_key_value(&key));
        }
        Ok(())
    })
}

/// Reads only the header (to describe a snapshot file without reading it all).
pub fn read_header(input: &mut impl Read) -> Result<SnapshotHeader, StorageError> {
    let mut r = HashingReader::new(TeeReader {
        inner: input,
        copy: None,
    });
    read_magic(&mut r)?;
    match read_record(&mut r)? {
        Record::Header(h) => Ok(h),
        _ => Err(invalid("first record is not the header")),
    }
}

static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes the snapshot of the point in time `reader` was opened at.
pub(crate) fn write_from_reader(
    reader: &Reader<'_>,
    out: &mut impl Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SnapshotHeader, StorageError> {
    let status: SmStatus = reader.status()?;
    let created_unix_ms = now_unix_ms();
    let (term, index) = status
        .last_applied
        .map_or((0, 0), |l| (l.leader_id.term, l.index));
    let seq = SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed);
    let header = SnapshotHeader {
        format_version: FORMAT_VERSION,
        cluster_id: status.cluster_id.clone(),
        revision: status.revision,
        compacted_revision: status.compacted,
        last_applied: status.last_applied,
        membership: status.membership.clone(),
        created_unix_ms,
        snapshot_id: format!("{term}-{index}-{}-{created_unix_ms}-{seq}", status.revision),
        // The workspace shares one version, so this is the skiff binary's version too.
        skiff_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut w = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut records = 0u64;
    w.put(MAGIC)?;
    let header_bytes = codec::encode("snapshot header", &header)?;
    w.put(&[TAG_HEADER])?;
    w.put_len(header_bytes.len(), MAX_HEADER_LEN)?;
    w.put(&header_bytes)?;

    // Counts a record written, reporting progress every PROGRESS_EVERY records.
    let mut counted = |records: &mut u64, bytes: u64| {
        *records += 1;
        if records.is_multiple_of(PROGRESS_EVERY) {
            progress(*records, bytes);
        }
    };
    let mut kv_count = 0u64;
    let all = KeyRange {
        key: Vec::new(),
        range_end: vec![0],
    };
    reader.scan_kv_raw(&all, |key, value| {
        w.put_record(TAG_KV, key, value)?;
        kv_count += 1;
        counted(&mut records, w.bytes);
        Ok(true)
    })?;

    // From the compacted revision itself: the live store keeps its events (compaction drops
    // only what lies below it) and a watch may start there, as in etcd. A snapshot without them
    // would make such a watch skip that revision on a member that installed it.
    let mut history_count = 0u64;
    reader.scan_history_raw(status.compacted, Revision::MAX - 1, |key, value| {
        w.put_record(TAG_HISTORY, key, value)?;
        history_count += 1;
        counted(&mut records, w.bytes);
        Ok(true)
    })?;

    w.put(&[TAG_END])?;
    w.put(&kv_count.to_be_bytes())?;
    w.put(&history_count.to_be_bytes())?;
    let digest = w.hasher.finalize_reset();
    w.inner
        .write_all(&digest)
        .map_err(|e| StorageError::io("write snapshot trailer", e))?;
    w.bytes += digest.len() as u64;
    w.inner
        .flush()
        .map_err(|e| StorageError::io("flush snapshot", e))?;
    progress(records, w.bytes);
    tracing::info!(
        kv_count,
        history_count,
        bytes = w.bytes,
        revision = header.revision,
        "snapshot written"
    );
    Ok(header)
}

/// One decoded record, handed to the consumer of `read_snapshot`. Values are validated (they
/// decode) but passed raw so they can be written to RocksDB as they are.
pub(crate) enum Record {
    Header(SnapshotHeader),
    Kv {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    History {
        key: [u8; HISTORY_KEY_LEN],
        value: Vec<u8>,
    },
    End {
        kv_count: u64,
        history_count: u64,
    },
}

/// Reads and validates a snapshot, handing every record to `visit`, and copying the raw bytes
/// to `copy` when given. `visit` sees records before the trailer is checked: consumers must not
/// make anything durable until this returns Ok.
pub(crate) fn read_snapshot(
    input: &mut impl Read,
    copy: Option<&mut dyn Write>,
    visit: &mut dyn FnMut(Record) -> Result<(), StorageError>,
) -> Result<(SnapshotHeader, SnapshotStats), StorageError> {
    read_snapshot_checked(input, copy, true, visit)
}

/// `read_snapshot`, with the trailer check optional (the structure is always checked).
pub(crate) fn read_snapshot_checked(
    input: &mut impl Read,
    copy: Option<&mut dyn Write>,
    check_digest: bool,
    visit: &mut dyn FnMut(Record) -> Result<(), StorageError>,
) -> Result<(SnapshotHeader, SnapshotStats), StorageError> {
    let mut r = HashingReader::new(TeeReader { inner: input, copy });
    read_magic(&mut r)?;
    let header = match read_record(&mut r)? {
        Record::Header(h) => h,
        _ => return Err(invalid("first record is not the header")),
    };
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&header.format_version) {
        return Err(invalid(format!(
            "unsupported format version {}",
            header.format_version
        )));
    }
    visit(Record::Header(header.clone()))?;
    let mut stats = SnapshotStats::default();
    let mut last_kv: Option<Vec<u8>> = None;
    let mut last_history: Option<[u8; HISTORY_KEY_LEN]> = None;
    loop {
        let record = read_record(&mut r)?;
        match &record {
            Record::Header(_) => return Err(invalid("second header record")),
            Record::Kv { key, value } => {
                if last_history.is_some() {
                    return Err(invalid("kv record after history records"));
                }
                if last_kv
                    .as_ref()
                    .is_some_and(|prev| prev.as_slice() >= key.as_slice())
                {
                    return Err(invalid("kv records out of order"));
                }
                codec::check_stored_kv(value).map_err(|e| invalid(e.to_string()))?;
                last_kv = Some(key.clone());
                stats.kv_count += 1;
            }
            Record::History { key, value } => {
                if last_history.as_ref().is_some_and(|prev| prev >= key) {
                    return Err(invalid("history records out of order"));
                }
                let (revision, _) =
                    codec::decode_history_key(key).map_err(|e| invalid(e.to_string()))?;
                // Snapshots of earlier builds start after the compacted revision; both are valid.
                if revision < header.compacted_revision || revision > header.revision {
                    return Err(invalid(format!(
                        "history revision {revision} outside the snapshot window"
                    )));
                }
                codec::check_event(value).map_err(|e| invalid(e.to_string()))?;
                last_history = Some(*key);
                stats.history_count += 1;
            }
            Record::End {
                kv_count,
                history_count,
            } => {
                if (*kv_count, *history_count) != (stats.kv_count, stats.history_count) {
                    return Err(invalid(format!(
                        "end record counts ({kv_count} kv, {history_count} history) do not match the records ({} kv, {} history)",
                        stats.kv_count, stats.history_count
                    )));
                }
                break;
            }
        }
        visit(record)?;
    }
    let digest = r.hasher.finalize_reset();
    let mut trailer = [0u8; 32];
    r.read_raw(&mut trailer, "checksum trailer")?;
    if check_digest && digest.as_slice() != trailer {
        return Err(invalid("SHA-256 checksum mismatch: the file is corrupt"));
    }
    let mut extra = [0u8; 1];
    if r.inner
        .read(&mut extra)
        .map_err(|e| StorageError::io("read snapshot", e))?
        != 0
    {
        return Err(invalid("unexpected data after the checksum trailer"));
    }
    stats.bytes = r.bytes;
    Ok((header, stats))
}

fn invalid(message: impl Into<String>) -> StorageError {
    StorageError::InvalidSnapshot(message.into())
}

fn read_magic<R: Read>(r: &mut HashingReader<R>) -> Result<(), StorageError> {
    let mut magic = [0u8; 8];
    r.read_hashed(&mut magic, "magic")?;
    if &magic != MAGIC {
        return Err(invalid("not a skiff snapshot (bad magic)"));
    }
    Ok(())
}

fn read_record<R: Read>(r: &mut HashingReader<R>) -> Result<Record, StorageError> {
    let mut tag = [0u8; 1];
    r.read_hashed(&mut tag, "record tag")?;
    match tag[0] {
        TAG_HEADER => {
            let bytes = r.read_vec(MAX_HEADER_LEN, "header")?;
            Ok(Record::Header(decode_header(&bytes)?))
        }
        TAG_KV => {
            let key = r.read_vec(MAX_KEY_LEN, "kv key")?;
            let value = r.read_vec(MAX_VALUE_LEN, "kv value")?;
            Ok(Record::Kv { key, value })
        }
        TAG_HISTORY => {
            let mut key = [0u8; HISTORY_KEY_LEN];
            r.read_hashed(&mut key, "history key")?;
            let value = r.read_vec(MAX_VALUE_LEN, "history value")?;
            Ok(Record::History { key, value })
        }
        TAG_END => {
            let mut counts = [0u8; 16];
            r.read_hashed(&mut counts, "end record")?;
            let mut kv = [0u8; 8];
            let mut history = [0u8; 8];
            kv.copy_from_slice(&counts[..8]);
            history.copy_from_slice(&counts[8..]);
            Ok(Record::End {
                kv_count: u64::from_be_bytes(kv),
                history_count: u64::from_be_bytes(history),
            })
        }
        other => Err(invalid(format!(
            "unknown record tag {other} at byte {}",
            r.bytes - 1
        ))),
    }
}

/// Hashes and counts every byte written.
struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.inner
            .write_all(bytes)
            .map_err(|e| StorageError::io("write snapshot", e))?;
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// A kv or history record: its tag, the key (length-prefixed for kv records; history keys
    /// have a fixed length), then the value with its length.
    fn put_record(&mut self, tag: u8, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.put(&[tag])?;
        if tag == TAG_KV {
            self.put_len(key.len(), MAX_KEY_LEN)?;
        }
        self.put(key)?;
        self.put_len(value.len(), MAX_VALUE_LEN)?;
        self.put(value)
    }

    fn put_len(&mut self, len: usize, max: u32) -> Result<(), StorageError> {
        let len = u32::try_from(len)
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| {
                invalid(format!(
                    "record field of {len} bytes exceeds the format limit {max}"
                ))
            })?;
        self.put(&len.to_be_bytes())
    }
}

/// Passes bytes through, copying them to `copy` (used to keep a received snapshot on disk
/// while validating it in the same pass).
struct TeeReader<'a, R: Read> {
    inner: R,
    copy: Option<&'a mut dyn Write>,
}

impl<R: Read> Read for TeeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(copy) = self.copy.as_mut() {
            copy.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Hashes and counts bytes read; the trailer is read around the hash.
struct HashingReader<R: Read> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn read_raw(&mut self, buf: &mut [u8], what: &str) -> Result<(), StorageError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.bytes += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(invalid(format!(
                "truncated: the file ends inside the {what} (after {} bytes)",
                self.bytes
            ))),
            Err(e) => Err(StorageError::io(format!("read snapshot {what}"), e)),
        }
    }

    fn read_hashed(&mut self, buf: &mut [u8], what: &str) -> Result<(), StorageError> {
        self.read_raw(buf, what)?;
        self.hasher.update(&*buf);
        Ok(())
    }

    fn read_vec(&mut self, max: u32, what: &str) -> Result<Vec<u8>, StorageError> {
        let mut len = [0u8; 4];
        self.read_hashed(&mut len, what)?;
        let len = u32::from_be_bytes(len);
        if len > max {
            return Err(invalid(format!(
                "{what} length {len} exceeds the limit {max} (corrupt length field)"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_hashed(&mut buf, what)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot with no records around `header_bytes`, with a valid trailer.
    fn empty_snapshot(header_bytes: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(TAG_HEADER);
        out.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(header_bytes);
        out.push(TAG_END);
        out.extend_from_slice(&[0u8; 16]);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    #[test]
    fn format_version_1_headers_are_still_read() {
        let v1 = SnapshotHeaderV1 {
            format_version: 1,
            cluster_id: "old".into(),
            revision: 0,
            compacted_revision: 0,
            last_applied: None,
            membership: Default::default(),
            created_unix_ms: 7,
            snapshot_id: "s".into(),
        };
        let bytes = empty_snapshot(&codec::encode("v1 header", &v1).unwrap());
        let (header, stats) = verify_snapshot(&mut bytes.as_slice()).unwrap();
        assert_eq!(
            (header.format_version, header.cluster_id.as_str()),
            (1, "old")
        );
        assert!(header.skiff_version.is_empty());
        assert_eq!(stats.kv_count, 0);
    }

    #[test]
    fn skipping_the_hash_check_still_checks_structure() {
        let header = SnapshotHeader {
            format_version: FORMAT_VERSION,
            skiff_version: "0.1.0".into(),
            ..Default::default()
        };
        let mut bytes = empty_snapshot(&codec::encode("header", &header).unwrap());
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let err = verify_snapshot(&mut bytes.as_slice()).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        let (read, _) = scan_snapshot(&mut bytes.as_slice(), None, false, &mut |_| {}).unwrap();
        assert_eq!(read.skiff_version, "0.1.0");
        let truncated = &bytes[..bytes.len() - 40];
        let err = scan_snapshot(&mut &truncated[..], None, false, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn refuses_garbage_and_empty_input() {
        let err = verify_snapshot(&mut &b""[..]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = verify_snapshot(&mut &b"NOTSKIFF and more"[..]).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }
}
