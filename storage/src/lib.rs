//! skiff-storage: everything a control-plane node keeps on disk, in one RocksDB.
//!
//! What lives here (and only here):
//! - `engine`: opening RocksDB with its column families (raft log, raft meta, kv, history, sm meta).
//! - `codec`: on-disk encodings (bincode values, big-endian keys).
//! - `log_store`: openraft's `RaftLogStorage` with group commit (one fsync per batch of appends).
//! - `state_machine`: openraft's `RaftStateMachine`; MVCC apply of `Command`s in one WriteBatch,
//!   reads (`KvView`), historical reads within the history window, raft snapshot files.
//! - `watch`: the `WatchHub` fed from apply; bounded per-watcher queues, resume from history.
//! - `compact`: background physical deletion of history below the compacted revision.
//! - `snapshot`: the streaming snapshot/backup file format (header, records, SHA-256 trailer).
//! - `store`: `Store::open`, which wires the above together, and restore from a backup.
//!
//! raft/ and the binary use the handles `Store::open` returns; they never touch RocksDB directly.

mod bulk_load;
mod codec;
mod compact;
mod engine;
pub mod error;
pub mod log_store;
pub mod model;
pub mod snapshot;
pub mod state_machine;
pub mod store;
pub mod types;
pub mod watch;

pub use error::{KvError, StorageError};
pub use log_store::LogStore;
pub use model::*;
pub use snapshot::{
    SnapshotHeader, SnapshotStats, read_header, scan_snapshot, scan_snapshot_kvs, verify_snapshot,
    write_snapshot,
};
pub use state_machine::{
    KvView, ReceivedSnapshotFile, SnapshotBuilder, SnapshotInbox, StateMachineStore,
};
pub use store::{Store, StoreOptions};
pub use types::*;
pub use watch::{WatchError, WatchHub, WatchMessage, WatchRequest, Watcher};
