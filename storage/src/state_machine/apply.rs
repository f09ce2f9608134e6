//! Applying one `Command` to the MVCC state: everything it changes goes into the caller's
//! WriteBatch, nothing touches RocksDB directly, so an entry commits atomically with its
//! last-applied log id.
//!
//! Determinism is the whole point: every member applies the same log to the same state and must
//! produce the same bytes and the same `CommandResult`. So every refusal is decided before the
//! first write of a transaction (duplicate keys, revisions of range ops), and evaluation uses
//! only the pre-transaction state plus the transaction's own earlier writes.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

use rocksdb::WriteBatch;

use crate::codec::{self, StoredKv, history_key, sm_meta};
use crate::engine::{CF_HISTORY, CF_KV, CF_SM_META, Engine};
use crate::error::{KvError, StorageError};
use crate::model::{
    Command, CommandResult, Compare, CompareOp, CompareTarget, Event, EventKind, KeyRange,
    KeyValue, Op, OpResponse, RangeRequest, RangeResponse, Rejection, Revision, TxnRequest,
    TxnResponse,
};
use crate::state_machine::read::{self, Reader, SmStatus};
use crate::types::LogId;

/// The outcome of applying one command, beyond what is already in the batch.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub result: CommandResult,
    /// The revision this command created and its events, in order, for the watch hub.
    pub events: Option<(Revision, Vec<Event>)>,
    /// A new compacted revision, for the background compactor.
    pub compacted: Option<Revision>,
    /// The kv records this command put in the batch (None = deleted), encoded as stored, so
    /// that later commands of the same staged run read them.
    pub kv_writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Applied {
    fn rejected(rejection: Rejection) -> Self {
        Applied {
            result: CommandResult::Rejected(rejection),
            ..Applied::default()
        }
    }
}

/// Applies `cmd` on top of `reader`'s state, updating `status` (revision, compacted revision) and
/// adding its writes to `batch`. The caller writes `status` to sm_meta in the same batch.
pub(crate) fn apply_command(
    engine: &Engine,
    reader: &Reader<'_>,
    status: &mut SmStatus,
    cmd: &Command,
    batch: &mut WriteBatch,
) -> Result<Applied, StorageError> {
    match cmd {
        Command::Txn(req) => apply_txn(engine, reader, status, req, batch),
        Command::Compact { revision } => apply_compact(engine, status, *revision, batch),
        // The state machine applies a top-level batch command by command; one nested in
        // another is refused (deterministically) rather than recursed into.
        Command::Batch(_) => Ok(Applied::rejected(Rejection::Unsupported(
            "a batch inside a batch".into(),
        ))),
    }
}

/// Records in `batch` that the first `done` commands of the batch entry `log_id` are applied,
/// so a restart inside the entry resumes after them instead of applying them twice.
pub(crate) fn write_batch_progress(
    engine: &Engine,
    batch: &mut WriteBatch,
    log_id: LogId,
    done: u32,
) -> Result<(), StorageError> {
    batch.put_cf(
        engine.cf(CF_SM_META)?,
        sm_meta::BATCH_PROGRESS,
        codec::encode("batch progress", &(log_id, done))?,
    );
    Ok(())
}

/// Step 1 of compaction (the logical one): record the target and drop the history below it in
/// the same batch (the target's own events stay: a watch may start at the compacted revision);
/// reads and watches refuse the revisions below it from this commit on. Step 2, reclaiming the
/// space, is the background compactor's job and needs no bookkeeping to resume.
fn apply_compact(
    engine: &Engine,
    status: &mut SmStatus,
    revision: Revision,
    batch: &mut WriteBatch,
) -> Result<Applied, StorageError> {
    if revision > status.revision {
        return Ok(Applied::rejected(Rejection::FutureRevision {
            current: status.revision,
        }));
    }
    if revision <= status.compacted {
        return Ok(Applied::rejected(Rejection::Compacted {
            compacted: status.compacted,
        }));
    }
    batch.delete_range_cf(
        engine.cf(CF_HISTORY)?,
        history_key(0, 0),
        history_key(revision, 0),
    );
    status.compacted = revision;
    tracing::info!(revision, "compaction recorded");
    Ok(Applied {
        result: CommandResult::Compacted { revision },
        compacted: Some(revision),
        ..Applied::default()
    })
}

fn apply_txn(
    engine: &Engine,
    reader: &Reader<'_>,
    status: &mut SmStatus,
    req: &TxnRequest,
    batch: &mut WriteBatch,
) -> Result<Applied, StorageError> {
    // 1. Refuse malformed transactions before looking at any data (etcd validates both branches).
    if let Err(rejection) = check_writes(&req.success).and_then(|()| check_writes(&req.failure)) {
        return Ok(Applied::rejected(rejection));
    }
    // 2. Compares see the state before the transaction.
    let succeeded = evaluate_compares(reader, &req.compares)?;
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    // 3. Range ops at a revision outside (compacted, current] refuse the whole transaction.
    for op in ops {
        let Op::Range(r) = op else { continue };
        match read::check_read_revision(r.revision, status.revision, status.compacted) {
            Ok(()) => {}
            Err(KvError::Compacted { compacted }) => {
                return Ok(Applied::rejected(Rejection::Compacted { compacted }));
            }
            Err(KvError::FutureRevision { current }) => {
                return Ok(Applied::rejected(Rejection::FutureRevision { current }));
            }
            Err(KvError::Storage(message)) => return Err(StorageError::Corrupt(message)),
        }
    }
    // 4. Run the ops in order; later ops see earlier ops' writes through the overlay.
    let mut txn = TxnWriter::new(reader, status.revision);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        responses.push(txn.run(op)?);
    }
    // 5. One revision for the whole transaction, only if it changed something.
    let TxnWriter {
        overlay,
        events,
        new_revision,
        ..
    } = txn;
    if events.is_empty() {
        let response = TxnResponse {
            succeeded,
            responses,
            revision: status.revision,
        };
        return Ok(Applied {
            result: CommandResult::Txn(response),
            ..Applied::default()
        });
    }
    let kv_cf = engine.cf(CF_KV)?;
    let mut kv_writes = Vec::with_capacity(overlay.len());
    for (key, value) in overlay {
        let encoded = match value {
            Some(stored) => {
                let encoded = codec::encode("kv record", &stored)?;
                batch.put_cf(kv_cf, &key, &encoded);
                Some(encoded)
            }
            None => {
                batch.delete_cf(kv_cf, &key);
                None
            }
        };
        kv_writes.push((key, encoded));
    }
    let history_cf = engine.cf(CF_HISTORY)?;
    for (sub, event) in events.iter().enumerate() {
        let sub = u32::try_from(sub)
            .map_err(|_| StorageError::Corrupt("too many events in one txn".into()))?;
        batch.put_cf(
            history_cf,
            history_key(new_revision, sub),
            codec::encode("history event", event)?,
        );
    }
    status.revision = new_revision;
    let response = TxnResponse {
        succeeded,
        responses,
        revision: new_revision,
    };
    Ok(Applied {
        result: CommandResult::Txn(response),
        events: Some((new_revision, events)),
        compacted: None,
        kv_writes,
    })
}

/// Whether applying `cmd` on top of `current` may read the history column family (a range op
/// at an older revision): staged writes are invisible there, so the run must be written first.
pub(crate) fn reads_history(cmd: &Command, current: Revision) -> bool {
    let Command::Txn(req) = cmd else {
        return false;
    };
    req.success
        .iter()
        .chain(&req.failure)
        .any(|op| matches!(op, Op::Range(r) if r.revision > 0 && r.revision < current))
}

/// etcd's rule: a key may be written once per transaction branch; a put inside a delete range of
/// the same branch counts as a second write. Overlapping deletes are fine.
fn check_writes(ops: &[Op]) -> Result<(), Rejection> {
    let deletes: Vec<&KeyRange> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Delete { range, .. } => Some(range),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        let Op::Put { key, .. } = op else { continue };
        if !puts.insert(key.as_slice()) || deletes.iter().any(|r| r.contains(key)) {
            return Err(Rejection::Unsupported(
                "duplicate key given in txn request".into(),
            ));
        }
    }
    Ok(())
}

/// All compares must hold. A compare over a range holds when it holds for every key in it; an
/// empty range compares against an absent key.
fn evaluate_compares(reader: &Reader<'_>, compares: &[Compare]) -> Result<bool, StorageError> {
    for compare in compares {
        let mut any = false;
        let mut holds = true;
        reader.scan_kv_raw(&compare.range, |_, value| {
            any = true;
            let stored: StoredKv = codec::decode("kv record", value)?;
            holds = compare_one(compare, Some(&stored));
            Ok(holds)
        })?;
        if !any {
            holds = compare_one(compare, None);
        }
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One compare against one key (None = absent: version, revisions and lease are 0, and a value
/// compare is false whatever its operator, as in etcd).
fn compare_one(compare: &Compare, kv: Option<&StoredKv>) -> bool {
    let ordering = match (&compare.target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(want), Some(kv)) => kv.value.as_slice().cmp(want.as_slice()),
        (CompareTarget::Version(want), kv) => kv.map_or(0, |k| k.version).cmp(want),
        (CompareTarget::CreateRevision(want), kv) => kv.map_or(0, |k| k.create_revision).cmp(want),
        (CompareTarget::ModRevision(want), kv) => kv.map_or(0, |k| k.mod_revision).cmp(want),
        (CompareTarget::Lease(want), kv) => kv.map_or(0, |k| k.lease).cmp(want),
    };
    match compare.op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::Greater => ordering == Ordering::Greater,
        CompareOp::Less => ordering == Ordering::Less,
        CompareOp::NotEqual => ordering != Ordering::Equal,
    }
}

/// A transaction in progress: its writes so far (None = deleted) over the pre-transaction state.
struct TxnWriter<'r, 'a> {
    reader: &'r Reader<'a>,
    base_revision: Revision,
    new_revision: Revision,
    overlay: BTreeMap<Vec<u8>, Option<StoredKv>>,
    events: Vec<Event>,
}

impl<'r, 'a> TxnWriter<'r, 'a> {
    fn new(reader: &'r Reader<'a>, base_revision: Revision) -> Self {
        TxnWriter {
            reader,
            base_revision,
            new_revision: base_revision.saturating_add(1),
            overlay: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<StoredKv>, StorageError> {
        match self.overlay.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.reader.get_kv(key),
        }
    }

    /// The current state of `range` including this transaction's writes.
    fn scan(&self, range: &KeyRange) -> Result<BTreeMap<Vec<u8>, StoredKv>, StorageError> {
        let mut state = BTreeMap::new();
        self.reader.scan_kv_raw(range, |key, value| {
            state.insert(key.to_vec(), codec::decode("kv record", value)?);
            Ok(true)
        })?;
        for (key, value) in self.overlay.iter().filter(|(k, _)| range.contains(k)) {
            match value {
                Some(stored) => state.insert(key.clone(), stored.clone()),
                None => state.remove(key),
            };
        }
        Ok(state)
    }

    fn run(&mut self, op: &Op) -> Result<OpResponse, StorageError> {
        match op {
            Op::Put {
                key,
                value,
                lease,
                prev_kv,
            } => self.put(key, value, *lease, *prev_kv),
            Op::Delete { range, prev_kv } => self.delete(range, *prev_kv),
            Op::Range(req) => self.range(req).map(OpResponse::Range),
        }
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        want_prev: bool,
    ) -> Result<OpResponse, StorageError> {
        let prev = self.get(key)?;
        let stored = StoredKv {
            create_revision: prev
                .as_ref()
                .map_or(self.new_revision, |p| p.create_revision),
            mod_revision: self.new_revision,
            version: prev.as_ref().map_or(1, |p| p.version.saturating_add(1)),
            lease,
            value: value.to_vec(),
        };
        let prev_kv = prev.map(|p| p.into_key_value(key.to_vec()));
        self.events.push(Event {
            kind: EventKind::Put,
            kv: stored.to_key_value(key),
            prev_kv: prev_kv.clone(),
        });
        self.overlay.insert(key.to_vec(), Some(stored));
        Ok(OpResponse::Put {
            prev_kv: if want_prev { prev_kv } else { None },
        })
    }

    fn delete(&mut self, range: &KeyRange, want_prev: bool) -> Result<OpResponse, StorageError> {
        let existing = self.scan(range)?;
        let deleted = existing.len() as i64;
        let mut prev_kvs = Vec::new();
        for (key, stored) in existing {
            let prev = stored.into_key_value(key.clone());
            let tombstone = KeyValue {
                key: key.clone(),
                mod_revision: self.new_revision,
                ..KeyValue::default()
            };
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: tombstone,
                prev_kv: Some(prev.clone()),
            });
            self.overlay.insert(key, None);
            if want_prev {
                prev_kvs.push(prev);
            }
        }
        Ok(OpResponse::Delete { deleted, prev_kvs })
    }

    /// Revision 0 reads the latest state including this transaction's writes; the base
    /// revision or an older one reads the state as of that revision (already validated).
    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StorageError> {
        if req.revision <= 0 {
            let state = self.scan(&req.range)?;
            let revision = if self.events.is_empty() {
                self.base_revision
            } else {
                self.new_revision
            };
            Ok(read::respond(req, &state, revision))
        } else if req.revision == self.base_revision {
            read::range_current(self.reader, req, self.base_revision)
        } else {
            let state = read::state_at(self.reader, &req.range, req.revision, self.base_revision)?;
            Ok(read::respond(req, &state, req.revision))
        }
    }
}

/// Adds to `batch` the sm_meta fields of `new` that differ from `old` (last applied always).
pub(crate) fn write_status(
    engine: &Engine,
    batch: &mut WriteBatch,
    old: Option<&SmStatus>,
    new: &SmStatus,
) -> Result<(), StorageError> {
    let cf = engine.cf(CF_SM_META)?;
    batch.put_cf(
        cf,
        sm_meta::LAST_APPLIED,
        codec::encode("last applied", &new.last_applied)?,
    );
    if old.is_none_or(|o| o.membership != new.membership) {
        batch.put_cf(
            cf,
            sm_meta::MEMBERSHIP,
            codec::encode("membership", &new.membership)?,
        );
    }
    if old.is_none_or(|o| o.revision != new.revision) {
        batch.put_cf(
            cf,
            sm_meta::REVISION,
            codec::encode("revision", &new.revision)?,
        );
    }
    if old.is_none_or(|o| o.compacted != new.compacted) {
        batch.put_cf(
            cf,
            sm_meta::COMPACTED,
            codec::encode("compacted revision", &new.compacted)?,
        );
    }
    if old.is_none_or(|o| o.cluster_id != new.cluster_id) {
        batch.put_cf(
            cf,
            sm_meta::CLUSTER_ID,
            codec::encode("cluster id", &new.cluster_id)?,
        );
    }
    Ok(())
}
