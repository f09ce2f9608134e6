//! Step 2 of compaction: reclaiming the space of history that apply already deleted logically.
//!
//! Apply records the compacted revision and range-deletes the history below it in its own
//! WriteBatch (step 1, atomic, so nothing needs resuming after a crash). The range tombstone
//! leaves the old data in SST files until RocksDB compacts them; this worker asks RocksDB to do
//! that now, off the apply path, on a thread of its own.

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use crate::codec::history_key;
use crate::engine::{CF_HISTORY, Engine, WeakEngine};
use crate::model::Revision;

/// Handle to the background compaction thread. Requests coalesce: only the newest target of a
/// burst is compacted. Dropping the handle waits for a running compaction, so that once the
/// store's handles are gone the database is really closed (and can be reopened at once).
pub(crate) struct Compactor {
    tx: Option<Sender<Revision>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Compactor {
    pub(crate) fn start(engine: &Engine) -> Compactor {
        let (tx, rx) = mpsc::channel();
        let weak = engine.downgrade();
        let spawned = std::thread::Builder::new()
            .name("skiff-compactor".into())
            .spawn(move || run(weak, rx));
        match spawned {
            Ok(thread) => Compactor {
                tx: Some(tx),
                thread: Some(thread),
            },
            Err(e) => {
                // Not fatal: space is still reclaimed by RocksDB's own compactions, later.
                tracing::warn!(error = %e, "could not start the compaction thread");
                Compactor {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    /// Asks for the history at or below `revision` to be physically reclaimed.
    pub(crate) fn request(&self, revision: Revision) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(revision);
        }
    }
}

fn run(engine: WeakEngine, rx: Receiver<Revision>) {
    while let Ok(mut target) = rx.recv() {
        while let Ok(newer) = rx.try_recv() {
            target = target.max(newer);
        }
        // The worker must not keep the database open: it borrows it for one job at a time.
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let Ok(cf) = engine.cf(CF_HISTORY) else {
            return;
        };
        let _span = tracing::info_span!("compact_history", revision = target).entered();
        let started = std::time::Instant::now();
        engine
            .db()
            .compact_range_cf(cf, None::<&[u8]>, Some(history_key(target, 0)));
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "history space reclaimed"
        );
    }
}
