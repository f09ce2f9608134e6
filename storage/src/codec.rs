//! On-disk encodings: bincode values, big-endian keys, and the names of meta keys.
//!
//! Keys are big-endian so RocksDB's byte order is numeric order: the raft log and the history are
//! scanned by range, never by lookup of every index.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StorageError;
use crate::model::{KeyValue, Revision};

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
}

/// The value of one key in the `kv` column family (the key itself is the RocksDB key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct StoredKv {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub lease: i64,
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
