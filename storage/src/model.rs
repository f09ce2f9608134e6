//! The data model of the replicated store: what a raft entry carries (`Command`), what applying it
//! returns (`CommandResult`), and the MVCC records kept per key and per revision.
//!
//! The shapes follow etcd's v3 API on purpose: the etcd-compatible gRPC service maps onto them
//! one to one, and the Kubernetes registry is written against the same transaction vocabulary.

use serde::{Deserialize, Serialize};

/// A store revision. Every committed transaction that writes bumps the global revision by one.
/// 0 means "none" (etcd uses 0 for "latest" in requests).
pub type Revision = i64;

/// One entry of the replicated log's application payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A transaction: compares, then the success or failure ops, atomically at one revision.
    Txn(TxnRequest),
    /// Record a compaction target: history before `revision` becomes unreadable at once and is
    /// deleted physically in the background.
    Compact { revision: Revision },
    /// Several commands proposed as one raft entry (group proposal: one append, one replication
    /// message and one apply call for all of them). Each is applied in order as if it had its own
    /// entry, with its own revision; a batch never contains a batch.
    Batch(Vec<Command>),
}

/// A one-line summary for raft's logs: the kind and size, never the keys or values (which may
/// be Secrets).
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Txn(txn) => write!(
                f,
                "txn({} compares, {}+{} ops)",
                txn.compares.len(),
                txn.success.len(),
                txn.failure.len()
            ),
            Command::Compact { revision } => write!(f, "compact({revision})"),
            Command::Batch(commands) => write!(f, "batch({} commands)", commands.len()),
        }
    }
}

/// The result of applying one `Command`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Txn(TxnResponse),
    Compacted {
        revision: Revision,
    },
    /// The command was rejected deterministically by the state machine (every node rejects it
    /// the same way), e.g. compacting a future revision or reading a compacted one.
    Rejected(Rejection),
    /// The results of a `Command::Batch`, one per command, in order.
    Batch(Vec<CommandResult>),
}

impl Default for CommandResult {
    fn default() -> Self {
        CommandResult::Txn(TxnResponse::default())
    }
}

/// Why the state machine refused a command. Deterministic, so safe to return from apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("mvcc: required revision has been compacted (compacted revision {compacted})")]
    Compacted { compacted: Revision },
    #[error("mvcc: required revision is a future revision (current revision {current})")]
    FutureRevision { current: Revision },
    #[error("unsupported operation: {0}")]
    Unsupported(String),
}

/// A key-value pair as stored, with its MVCC metadata.
///
/// Byte fields here and in the other model types are `serde_bytes`: bincode then copies them in
/// one piece instead of one serde call per byte (the same encoding; see codec's tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Revision of the last creation of this key.
    pub create_revision: Revision,
    /// Revision of the last modification of this key.
    pub mod_revision: Revision,
    /// Number of modifications since creation (1 after create); reset by delete.
    pub version: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
}

/// A key range: `key` alone is one key; `range_end` = `[0]` means "every key >= key";
/// otherwise `[key, range_end)`. Same encoding as etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

impl KeyRange {
    pub fn single(key: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            key: key.into(),
            range_end: Vec::new(),
        }
    }

    /// Every key starting with `prefix` (etcd's `--prefix`).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key: Vec<u8> = prefix.into();
        let range_end = prefix_end(&key);
        KeyRange { key, range_end }
    }

    /// Whether `candidate` falls inside this range.
    pub fn contains(&self, candidate: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return candidate == self.key.as_slice();
        }
        if self.range_end == [0] {
            return candidate >= self.key.as_slice();
        }
        candidate >= self.key.as_slice() && candidate < self.range_end.as_slice()
    }
}

/// The smallest key greater than every key with this prefix; `[0]` when there is none
/// (prefix empty or all 0xff), which etcd reads as "to the end of the keyspace".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// 0 = no limit.
    pub limit: i64,
    /// 0 = the current revision; otherwise read the state as of this revision.
    pub revision: Revision,
    pub keys_only: bool,
    pub count_only: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// Keys in ascending byte order.
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` returned.
    pub more: bool,
    /// The number of keys in the range (ignoring `limit`).
    pub count: i64,
    /// The store revision the read was served at.
    pub revision: Revision,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(Revision),
    ModRevision(Revision),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// One condition of a transaction. An absent key compares as version 0, create/mod revision 0,
/// lease 0; a value compare on an absent key is false (etcd semantics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub range: KeyRange,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    /// "`key` is still at `revision`": the precondition of every optimistic update.
    pub fn mod_revision_equals(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        Compare {
            range: KeyRange::single(key),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(revision),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
    },
    Delete {
        range: KeyRange,
        prev_kv: bool,
    },
    Range(RangeRequest),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl TxnRequest {
    /// An unconditional single put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        TxnRequest {
            compares: Vec::new(),
            success: vec![Op::Put {
                key: key.into(),
                value: value.into(),
                lease: 0,
                prev_kv: false,
            }],
            failure: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
    Range(RangeResponse),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<OpResponse>,
    /// The store revision after this transaction (unchanged when it wrote nothing).
    pub revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change of one key at one revision, as recorded in history and sent to watchers.
/// For a delete, `kv` holds the key, `mod_revision` = the deleting revision, and no value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte_and_handles_overflow() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), vec![b'b']);
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn key_range_contains() {
        let r = KeyRange::prefix("/a/");
        assert!(r.contains(b"/a/x"));
        assert!(!r.contains(b"/b"));
        assert!(KeyRange::single("k").contains(b"k"));
        assert!(!KeyRange::single("k").contains(b"k2"));
        let all = KeyRange {
            key: b"m".to_vec(),
            range_end: vec![0],
        };
        assert!(all.contains(b"z"));
        assert!(!all.contains(b"a"));
    }
}
