//! Error types of the storage crate, and their mapping onto the `std::io::Error` openraft's
//! storage traits return.
//!
//! Two audiences: `StorageError` is for operators and raft (the disk, the files, corruption);
//! `KvError` is for readers, whose requests can be refused for MVCC reasons (a compacted or a
//! future revision) that say nothing about the health of the store.

use crate::model::Revision;

/// Open, I/O and corruption errors. Never produced by a well-formed request on a healthy disk.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {context}: {source}")]
    RocksDb {
        context: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("i/o: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Data read back from disk does not decode or violates an invariant.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// A value could not be encoded (should not happen for our own types).
    #[error("encode {what}: {message}")]
    Encode { what: &'static str, message: String },
    /// A snapshot or backup file is malformed, truncated or fails its checksum.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// The store belongs to another cluster than the one we were asked to open it for.
    #[error("cluster id mismatch: store has {stored:?}, expected {expected:?}")]
    ClusterIdMismatch { stored: String, expected: String },
    /// A background worker (the log writer) is gone; the store is shutting down or broken.
    #[error("storage worker stopped: {0}")]
    WorkerStopped(&'static str),
}

impl StorageError {
    pub(crate) fn rocks(context: impl Into<String>, source: rocksdb::Error) -> Self {
        StorageError::RocksDb {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Why a read was refused.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("mvcc: required revision has been compacted (compacted revision {compacted})")]
    Compacted { compacted: Revision },
    #[error("mvcc: required revision is a future revision (current revision {current})")]
    FutureRevision { current: Revision },
    #[error("storage: {0}")]
    Storage(String),
}

impl From<StorageError> for KvError {
    fn from(e: StorageError) -> Self {
        KvError::Storage(e.to_string())
    }
}

/// Maps our error onto what openraft's storage traits return, keeping what failed in the message.
/// openraft shuts the node down on any storage error, which is what we want for a broken disk.
pub(crate) fn raft_io(what: impl std::fmt::Display, e: &StorageError) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}
