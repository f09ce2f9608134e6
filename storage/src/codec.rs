//! On-disk encodings: bincode values, big-endian keys, and the names of meta keys.
//!
//! Keys are big-endian so RocksDB's byte order is numeric order: the raft log and the history are
//! scanned by range, never by lookup of every index.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StorageError;
use crate::model::{EventKind, KeyValue, Revision};

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a value with the one bincode configuration the store uses everywhere.
pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StorageError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| StorageError::Encode {
        what,
        message: e.to_string(),
    })
}

/// Decodes a value written by `encode`; trailing bytes mean corruption, not a newer format.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| StorageError::Corrupt(format!("decode {what}: {e}")))?;
    if read != bytes.len() {
        return Err(StorageError::Corrupt(format!(
            "decode {what}: {} trailing bytes",
            bytes.len() - read
        )));
    }
    Ok(value)
}

/// Checks that `bytes` are an encoded `StoredKv`, as `decode` would, without building one.
pub(crate) fn check_stored_kv(bytes: &[u8]) -> Result<(), StorageError> {
    check::<StoredKvRef<'_>>("kv record", bytes)
}

/// Checks that `bytes` are an encoded `Event`, as `decode` would, without building one.
pub(crate) fn check_event(bytes: &[u8]) -> Result<(), StorageError> {
    check::<EventRef<'_>>("history record", bytes)
}

fn check<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<(), StorageError> {
    let (_, read): (T, usize) = bincode::serde::borrow_decode_from_slice(bytes, config())
        .map_err(|e| StorageError::Corrupt(format!("decode {what}: {e}")))?;
    if read != bytes.len() {
        return Err(StorageError::Corrupt(format!(
            "decode {what}: {} trailing bytes",
            bytes.len() - read
        )));
    }
    Ok(())
}

// Mirrors of `StoredKv`, `KeyValue` and `Event` with their byte fields borrowed, for `check_*`.
// Same encoding (bincode writes a `Vec<u8>` as its length and the bytes, as it does a `&[u8]`),
// but decoding does not copy every byte through serde's sequence visitor: that copy was a large
// part of validating a backup. The test below keeps the mirrors in step with the real types.
#[derive(Deserialize)]
#[cfg_attr(not(test), allow(dead_code))]
struct StoredKvRef<'a> {
    create_revision: Revision,
    mod_revision: Revision,
    version: i64,
    lease: i64,
    value: &'a [u8],
}

#[derive(Deserialize)]
#[cfg_attr(not(test), allow(dead_code))]
struct KeyValueRef<'a> {
    key: &'a [u8],
    create_revision: Revision,
    mod_revision: Revision,
    version: i64,
    value: &'a [u8],
    lease: i64,
}

#[derive(Deserialize)]
#[cfg_attr(not(test), allow(dead_code))]
struct EventRef<'a> {
    kind: EventKind,
    #[serde(borrow)]
    kv: KeyValueRef<'a>,
    #[serde(borrow)]
    prev_kv: Option<KeyValueRef<'a>>,
}

/// Key of a raft log entry: its index, big-endian.
pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn decode_log_key(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StorageError::Corrupt(format!("raft log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Length of a history key: revision (8) + sub-index (4).
pub(crate) const HISTORY_KEY_LEN: usize = 12;

/// Key of one event in history: revision big-endian, then its index within the transaction.
/// Revisions are never negative; a negative one (only from a bad request) clamps to 0.
pub(crate) fn history_key(revision: Revision, sub: u32) -> [u8; HISTORY_KEY_LEN] {
    let mut key = [0u8; HISTORY_KEY_LEN];
    let rev = u64::try_from(revision).unwrap_or(0);
    key[..8].copy_from_slice(&rev.to_be_bytes());
    key[8..].copy_from_slice(&sub.to_be_bytes());
    key
}

pub(crate) fn decode_history_key(key: &[u8]) -> Result<(Revision, u32), StorageError> {
    if key.len() != HISTORY_KEY_LEN {
        return Err(StorageError::Corrupt(format!(
            "history key of {} bytes",
            key.len()
        )));
    }
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&key[..8]);
    let mut sub = [0u8; 4];
    sub.copy_from_slice(&key[8..]);
    let rev = i64::try_from(u64::from_be_bytes(rev))
        .map_err(|_| StorageError::Corrupt("history revision out of range".into()))?;
    Ok((rev, u32::from_be_bytes(sub)))
}

/// Keys of the `raft_meta` column family.
pub(crate) mod raft_meta {
    pub(crate) const VOTE: &[u8] = b"vote";
    pub(crate) const COMMITTED: &[u8] = b"committed";
    pub(crate) const LAST_PURGED: &[u8] = b"last_purged";
}

/// Keys of the `sm_meta` column family. One key per field so the hot ones (revision) are read
/// without decoding the membership.
pub(crate) mod sm_meta {
    pub(crate) const LAST_APPLIED: &[u8] = b"last_applied";
    pub(crate) const MEMBERSHIP: &[u8] = b"membership";
    pub(crate) const REVISION: &[u8] = b"revision";
    pub(crate) const COMPACTED: &[u8] = b"compacted_revision";
    pub(crate) const CLUSTER_ID: &[u8] = b"cluster_id";
    /// How far into a batch entry apply got: (its log id, commands applied). Only meaningful
    /// while that entry is not yet the last applied one (a crash inside a batch).
    pub(crate) const BATCH_PROGRESS: &[u8] = b"batch_progress";
}

/// The value of one key in the `kv` column family (the key itself is the RocksDB key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct StoredKv {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub lease: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl StoredKv {
    pub(crate) fn to_key_value(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }

    pub(crate) fn into_key_value(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value,
            lease: self.lease,
        }
    }

    pub(crate) fn from_key_value(kv: &KeyValue) -> StoredKv {
        StoredKv {
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
            value: kv.value.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;

    fn key_value(key: &str, value: &[u8]) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision: 3,
            mod_revision: 300,
            version: 7,
            value: value.to_vec(),
            lease: -2,
        }
    }

    fn same(kv: &KeyValue, mirror: &KeyValueRef<'_>) -> bool {
        (
            kv.key.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.as_slice(),
            kv.lease,
        ) == (
            mirror.key,
            mirror.create_revision,
            mirror.mod_revision,
            mirror.version,
            mirror.value,
            mirror.lease,
        )
    }

    /// The byte fields are serialized as bytes (serde_bytes), not as sequences of u8: one copy
    /// instead of a serde call per byte. bincode writes both the same way, so records and log
    /// entries written before the change still decode; this pins that.
    #[test]
    fn byte_fields_encode_as_they_did_as_sequences() {
        #[derive(Serialize)]
        struct AsSequences {
            key: Vec<u8>,
            create_revision: Revision,
            mod_revision: Revision,
            version: i64,
            value: Vec<u8>,
            lease: i64,
        }
        let kv = key_value("/registry/pods/default/p", &[0, 1, 2, 255]);
        let plain = AsSequences {
            key: kv.key.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value.clone(),
            lease: kv.lease,
        };
        assert_eq!(encode("kv", &kv).unwrap(), encode("plain", &plain).unwrap());
        let put = crate::model::Op::Put {
            key: b"/k".to_vec(),
            value: vec![7; 300],
            lease: 0,
            prev_kv: true,
        };
        let bytes = encode("op", &put).unwrap();
        assert_eq!(decode::<crate::model::Op>("op", &bytes).unwrap(), put);
    }

    #[test]
    fn the_borrowed_mirrors_read_exactly_what_the_records_encode() {
        let long = vec![b'v'; 1000];
        for value in [&b""[..], b"x", &long] {
            let stored = StoredKv {
                create_revision: 1,
                mod_revision: 1 << 40,
                version: 2,
                lease: 9,
                value: value.to_vec(),
            };
            let bytes = encode("kv", &stored).unwrap();
            check_stored_kv(&bytes).unwrap();
            let (m, _): (StoredKvRef<'_>, usize) =
                bincode::serde::borrow_decode_from_slice(&bytes, config()).unwrap();
            assert_eq!(
                (
                    m.create_revision,
                    m.mod_revision,
                    m.version,
                    m.lease,
                    m.value
                ),
                (1, 1 << 40, 2, 9, value)
            );
            for (kind, prev_kv) in [
                (EventKind::Put, None),
                (EventKind::Delete, Some(key_value("/p", b"old"))),
            ] {
                let event = Event {
                    kind,
                    kv: key_value("/registry/k", value),
                    prev_kv,
                };
                let bytes = encode("event", &event).unwrap();
                check_event(&bytes).unwrap();
                let (m, _): (EventRef<'_>, usize) =
                    bincode::serde::borrow_decode_from_slice(&bytes, config()).unwrap();
                assert_eq!(m.kind, event.kind);
                assert!(same(&event.kv, &m.kv));
                assert_eq!(event.prev_kv.is_some(), m.prev_kv.is_some());
                if let (Some(prev), Some(mirror)) = (&event.prev_kv, &m.prev_kv) {
                    assert!(same(prev, mirror));
                }
                // Whatever the real decoder refuses, the check refuses.
                for cut in [1, bytes.len() / 2, bytes.len() - 1] {
                    assert!(decode::<Event>("event", &bytes[..cut]).is_err());
                    assert!(check_event(&bytes[..cut]).is_err());
                }
                let mut longer = bytes.clone();
                longer.push(0);
                assert!(check_event(&longer).is_err());
            }
        }
    }

    #[test]
    fn history_keys_sort_by_revision_then_sub_index() {
        let a = history_key(2, 7);
        let b = history_key(3, 0);
        let c = history_key(3, 1);
        assert!(a < b && b < c);
        assert_eq!(decode_history_key(&c).unwrap(), (3, 1));
        assert!(decode_history_key(&[1, 2, 3]).is_err());
    }

    #[test]
    fn log_keys_sort_numerically() {
        assert!(log_key(255) < log_key(256));
        assert_eq!(decode_log_key(&log_key(42)).unwrap(), 42);
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut bytes = encode("n", &7u64).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u64>("n", &bytes),
            Err(StorageError::Corrupt(_))
        ));
    }
}
