//! Reads of the MVCC state: point-in-time readers over a RocksDB snapshot, ranges at the current
//! or a historical revision, history scans for watch replay, and `KvView`, the read handle the
//! API layers hold.
//!
//! Every multi-key read goes through one RocksDB snapshot, so a list is one consistent cut even
//! while apply keeps writing.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use rocksdb::{ReadOptions, Snapshot};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::codec::{self, StoredKv, history_key, sm_meta};
use crate::engine::{CF_HISTORY, CF_KV, CF_RAFT_LOG, CF_SM_META, Engine};
use crate::error::{KvError, StorageError};
use crate::model::{Event, KeyRange, KeyValue, RangeRequest, RangeResponse, Revision};
use crate::types::{Entry, LogId, StoredMembership};

/// The state machine's meta, as last committed. Shared by the state machine (its only writer,
/// which updates it right after each WriteBatch) and `KvView` (cheap infallible getters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SmStatus {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub revision: Revision,
    pub compacted: Revision,
    pub cluster_id: String,
}

#[derive(Default)]
pub(crate) struct SharedStatus(RwLock<SmStatus>);

impl SharedStatus {
    pub(crate) fn new(status: SmStatus) -> Self {
        SharedStatus(RwLock::new(status))
    }

    /// A copy of the status. A poisoned lock still holds a committed status (writers replace it
    /// whole), so poisoning is ignored rather than turned into a panic.
    pub(crate) fn get(&self) -> SmStatus {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&SmStatus) -> T) -> T {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn set(&self, status: SmStatus) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = status;
    }
}

/// Receives raw (key, value) pairs of a scan; returns false to stop.
type RawVisitor<'v> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StorageError> + 'v;

/// Kv records applied but not yet written to RocksDB (None = deleted), encoded as stored: apply
/// stages a run of commands in one WriteBatch, and each command must read its predecessors'
/// writes.
pub(crate) type PendingKv = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A consistent point-in-time reader over the kv, history and sm_meta column families,
/// optionally with staged kv writes laid over the kv family (history and sm_meta are read as
/// written: apply writes its staged run before a command that reads history).
pub(crate) struct Reader<'a> {
    engine: &'a Engine,
    snap: Snapshot<'a>,
    pending: Option<&'a PendingKv>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(engine: &'a Engine) -> Self {
        Reader {
            engine,
            snap: engine.db().snapshot(),
            pending: None,
        }
    }

    /// A reader that sees `pending` over the kv family as written.
    pub(crate) fn with_pending(engine: &'a Engine, pending: &'a PendingKv) -> Self {
        Reader {
            pending: Some(pending),
            ..Reader::new(engine)
        }
    }

    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let handle = self.engine.cf(cf)?;
        self.snap
            .get_cf(handle, key)
            .map_err(|e| StorageError::rocks(format!("get {cf}"), e))
    }

    fn meta<T: DeserializeOwned>(
        &self,
        key: &'static [u8],
        what: &'static str,
    ) -> Result<Option<T>, StorageError> {
        match self.get(CF_SM_META, key)? {
            Some(bytes) => codec::decode(what, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// How far apply got into a batch entry before a crash, if it ever stopped inside one.
    pub(crate) fn batch_progress(&self) -> Result<Option<(LogId, u32)>, StorageError> {
        self.meta(sm_meta::BATCH_PROGRESS, "batch progress")
    }

    /// The raft log entry at `index`, if present (the log shares this database).
    pub(crate) fn raft_log_entry(&self, index: u64) -> Result<Option<Entry>, StorageError> {
        match self.get(CF_RAFT_LOG, &codec::log_key(index))? {
            Some(bytes) => codec::decode("log entry", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Reads all of sm_meta at this point in time.
    pub(crate) fn status(&self) -> Result<SmStatus, StorageError> {
        Ok(SmStatus {
            last_applied: self
                .meta::<Option<LogId>>(sm_meta::LAST_APPLIED, "last applied")?
                .flatten(),
            membership: self
                .meta(sm_meta::MEMBERSHIP, "membership")?
                .unwrap_or_default(),
            revision: self.revision()?,
            compacted: self.compacted()?,
            cluster_id: self
                .meta(sm_meta::CLUSTER_ID, "cluster id")?
                .unwrap_or_default(),
        })
    }

    pub(crate) fn revision(&self) -> Result<Revision, StorageError> {
        Ok(self.meta(sm_meta::REVISION, "revision")?.unwrap_or(0))
    }

    pub(crate) fn compacted(&self) -> Result<Revision, StorageError> {
        Ok(self
            .meta(sm_meta::COMPACTED, "compacted revision")?
            .unwrap_or(0))
    }

    pub(crate) fn get_kv(&self, key: &[u8]) -> Result<Option<StoredKv>, StorageError> {
        match self.get_kv_raw(key)? {
            Some(bytes) => codec::decode("kv record", &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn get_kv_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.pending.and_then(|pending| pending.get(key)) {
            Some(staged) => Ok(staged.clone()),
            None => self.get(CF_KV, key),
        }
    }

    /// Visits raw (key, value) pairs of the kv column family inside `range`, in key order, until
    /// `visit` returns false.
    pub(crate) fn scan_kv_raw(
        &self,
        range: &KeyRange,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        if range.range_end.is_empty() {
            if let Some(value) = self.get_kv_raw(&range.key)? {
                visit(&range.key, &value)?;
            }
            return Ok(());
        }
        let mut opts = ReadOptions::default();
        let unbounded = range.range_end == [0];
        if !unbounded {
            if range.range_end.as_slice() <= range.key.as_slice() {
                return Ok(());
            }
            opts.set_iterate_upper_bound(range.range_end.clone());
        }
        let Some(pending) = self.pending.filter(|p| !p.is_empty()) else {
            return self.scan_raw(CF_KV, &range.key, opts, &mut visit);
        };
        let upper = if unbounded {
            Bound::Unbounded
        } else {
            Bound::Excluded(range.range_end.clone())
        };
        let mut staged = pending
            .range((Bound::Included(range.key.clone()), upper))
            .peekable();
        // Merge the two ordered streams; a staged record replaces (or, None, hides) the
        // written one with the same key.
        let mut stored_first = |key: &[u8], value: &[u8]| -> Result<bool, StorageError> {
            while let Some((staged_key, staged_value)) =
                staged.next_if(|(staged_key, _)| staged_key.as_slice() <= key)
            {
                let replaces = staged_key.as_slice() == key;
                if let Some(staged_value) = staged_value
                    && !visit(staged_key, staged_value)?
                {
                    return Ok(false);
                }
                if replaces {
                    return Ok(true);
                }
            }
            visit(key, value)
        };
        let mut finished = true;
        self.scan_raw(CF_KV, &range.key, opts, &mut |key, value| {
            let go_on = stored_first(key, value)?;
            finished = go_on;
            Ok(go_on)
        })?;
        if finished {
            for (key, value) in staged {
                if let Some(value) = value
                    && !visit(key, value)?
                {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Visits raw history records with `from <= revision <= to`, in (revision, sub) order.
    pub(crate) fn scan_history_raw(
        &self,
        from: Revision,
        to: Revision,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        if to < from {
            return Ok(());
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(history_key(to.saturating_add(1), 0).to_vec());
        self.scan_raw(CF_HISTORY, &history_key(from, 0), opts, &mut visit)
    }

    fn scan_raw(
        &self,
        cf: &'static str,
        start: &[u8],
        opts: ReadOptions,
        visit: &mut RawVisitor<'_>,
    ) -> Result<(), StorageError> {
        let handle = self.engine.cf(cf)?;
        let mut it = self.snap.raw_iterator_cf_opt(handle, opts);
        it.seek(start);
        while let Some((key, value)) = it.item() {
            if !visit(key, value)? {
                return Ok(());
            }
            it.next();
        }
        it.status()
            .map_err(|e| StorageError::rocks(format!("scan {cf}"), e))
    }
}

/// Collects a range response honoring limit, keys_only and count_only (etcd semantics: `count`
/// is every key in range, `more` says the limit cut the result).
struct RangeCollector<'r> {
    req: &'r RangeRequest,
    kvs: Vec<KeyValue>,
    count: i64,
}

impl<'r> RangeCollector<'r> {
    fn new(req: &'r RangeRequest) -> Self {
        RangeCollector {
            req,
            kvs: Vec::new(),
            count: 0,
        }
    }

    fn wants_values(&self) -> bool {
        !self.req.count_only && (self.req.limit <= 0 || (self.kvs.len() as i64) < self.req.limit)
    }

    fn push(&mut self, key: &[u8], stored: &StoredKv) {
        if self.wants_values() {
            let mut kv = stored.to_key_value(key);
            if self.req.keys_only {
                kv.value.clear();
            }
            self.kvs.push(kv);
        }
        self.count += 1;
    }

    fn push_raw(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        if self.wants_values() {
            let stored: StoredKv = codec::decode("kv record", value)?;
            self.push(key, &stored);
        } else {
            self.count += 1;
        }
        Ok(())
    }

    fn finish(self, revision: Revision) -> RangeResponse {
        let more = !self.req.count_only && self.req.limit > 0 && self.count > self.req.limit;
        RangeResponse {
            kvs: self.kvs,
            more,
            count: self.count,
            revision,
        }
    }
}

/// Builds a response from an already materialized state (historical reads, reads inside a txn).
pub(crate) fn respond(
    req: &RangeRequest,
    state: &BTreeMap<Vec<u8>, StoredKv>,
    revision: Revision,
) -> RangeResponse {
    let mut out = RangeCollector::new(req);
    for (key, stored) in state {
        out.push(key, stored);
    }
    out.finish(revision)
}

/// Serves a range request at one point in time: the current state, or a historical revision
/// within the history window.
pub(crate) fn range(reader: &Reader<'_>, req: &RangeRequest) -> Result<RangeResponse, KvError> {
    let current = reader.revision()?;
    let compacted = reader.compacted()?;
    check_read_revision(req.revision, current, compacted)?;
    if req.revision <= 0 || req.revision == current {
        Ok(range_current(reader, req, current)?)
    } else {
        let state = state_at(reader, &req.range, req.revision, current)?;
        Ok(respond(req, &state, req.revision))
    }
}

/// etcd's revision rules for reads: <= 0 is "current"; above current is a future revision;
/// below the compacted revision is gone (the compacted revision itself stays readable).
pub(crate) fn check_read_revision(
    revision: Revision,
    current: Revision,
    compacted: Revision,
) -> Result<(), KvError> {
    if revision <= 0 {
        return Ok(());
    }
    if revision > current {
        return Err(KvError::FutureRevision { current });
    }
    if revision < compacted {
        return Err(KvError::Compacted { compacted });
    }
    Ok(())
}

/// Range over the current state at this reader's point in time.
pub(crate) fn range_current(
    reader: &Reader<'_>,
    req: &RangeRequest,
    current: Revision,
) -> Result<RangeResponse, StorageError> {
    let mut out = RangeCollector::new(req);
    reader.scan_kv_raw(&req.range, |key, value| {
        out.push_raw(key, value)?;
        Ok(true)
    })?;
    Ok(out.finish(current))
}

/// Reconstructs the keys of `range` as they were at `revision` (compacted <= revision <= current, as etcd: the compacted revision itself stays readable):
/// start from the current state and, for every key changed after `revision`, take the `prev_kv`
/// of its first later event, which is exactly its state at `revision` (None = absent then).
/// Correct because history keeps every event after the compacted revision, each with prev_kv.
pub(crate) fn state_at(
    reader: &Reader<'_>,
    range: &KeyRange,
    revision: Revision,
    current: Revision,
) -> Result<BTreeMap<Vec<u8>, StoredKv>, StorageError> {
    let mut state = BTreeMap::new();
    reader.scan_kv_raw(range, |key, value| {
        state.insert(key.to_vec(), codec::decode("kv record", value)?);
        Ok(true)
    })?;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    reader.scan_history_raw(revision.saturating_add(1), current, |_, value| {
        let event: Event = codec::decode("history event", value)?;
        if range.contains(&event.kv.key) && seen.insert(event.kv.key.clone()) {
            match &event.prev_kv {
                Some(prev) => state.insert(event.kv.key, StoredKv::from_key_value(prev)),
                None => state.remove(&event.kv.key),
            };
        }
        Ok(true)
    })?;
    Ok(state)
}

/// One step of a watch replay.
#[derive(Debug, Default)]
pub(crate) struct HistoryChunk {
    /// Matching events, ascending; whole revisions only (a transaction is never split).
    pub events: Vec<Event>,
    /// Revision of the last event included (0 when `events` is empty).
    pub last_revision: Revision,
    /// Where the next chunk starts; None when `to` has been reached.
    pub next_from: Option<Revision>,
}

/// Bounds on one replay chunk, so a long replay yields and memory stays bounded.
pub(crate) const REPLAY_MAX_EVENTS: usize = 1000;
pub(crate) const REPLAY_MAX_SCANNED: usize = 10_000;

/// Reads the events of revisions `from..=to` that fall in `range`, refusing if `from` has been
/// compacted at this point in time (compaction may have run since the watcher registered).
pub(crate) fn read_history(
    reader: &Reader<'_>,
    from: Revision,
    to: Revision,
    range: &KeyRange,
    keep_prev_kv: bool,
) -> Result<HistoryChunk, KvError> {
    let compacted = reader.compacted()?;
    if from < compacted {
        return Err(KvError::Compacted { compacted });
    }
    let mut chunk = HistoryChunk::default();
    let mut scanned = 0usize;
    let mut current_rev: Revision = 0;
    reader.scan_history_raw(from, to, |key, value| {
        let (rev, _) = codec::decode_history_key(key)?;
        if rev != current_rev {
            if chunk.events.len() >= REPLAY_MAX_EVENTS || scanned >= REPLAY_MAX_SCANNED {
                chunk.next_from = Some(rev);
                return Ok(false);
            }
            current_rev = rev;
        }
        scanned += 1;
        let mut event: Event = codec::decode("history event", value)?;
        if range.contains(&event.kv.key) {
            if !keep_prev_kv {
                event.prev_kv = None;
            }
            chunk.last_revision = rev;
            chunk.events.push(event);
        }
        Ok(true)
    })?;
    Ok(chunk)
}

/// The read handle for API layers: `Send + Sync`, cheap to clone, reads straight from RocksDB.
#[derive(Clone)]
pub struct KvView {
    engine: Engine,
    status: Arc<SharedStatus>,
}

impl KvView {
    pub(crate) fn new(engine: Engine, status: Arc<SharedStatus>) -> Self {
        KvView { engine, status }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A consistent range read. Revision 0 = current; a historical revision must lie in
    /// (compacted, current].
    #[tracing::instrument(level = "trace", skip_all, fields(revision = req.revision))]
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        let reader = Reader::new(&self.engine);
        range(&reader, req)
    }

    /// The revision of the last applied write.
    pub fn revision(&self) -> Revision {
        self.status.with(|s| s.revision)
    }

    /// Revisions below this are no longer readable (the compacted revision itself still is).
    pub fn compacted_revision(&self) -> Revision {
        self.status.with(|s| s.compacted)
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.status.with(|s| s.last_applied)
    }

    pub fn membership(&self) -> StoredMembership {
        self.status.with(|s| s.membership.clone())
    }

    pub fn cluster_id(&self) -> String {
        self.status.with(|s| s.cluster_id.clone())
    }

    /// Approximate on-disk size of the whole store (log included).
    pub fn db_size_bytes(&self) -> u64 {
        self.engine.size_bytes()
    }

    /// A digest of every current kv (key, value, create/mod revision, version) at one point in
    /// time, with the revision it was taken at. Members that applied the same log agree on it.
    pub fn state_hash(&self) -> Result<(Revision, String), KvError> {
        let reader = Reader::new(&self.engine);
        let revision = reader.revision()?;
        let mut hasher = Sha256::new();
        let all = KeyRange {
            key: Vec::new(),
            range_end: vec![0],
        };
        reader.scan_kv_raw(&all, |key, value| {
            let stored: StoredKv = codec::decode("kv record", value)?;
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(key);
            hasher.update((stored.value.len() as u64).to_be_bytes());
            hasher.update(&stored.value);
            hasher.update(stored.create_revision.to_be_bytes());
            hasher.update(stored.mod_revision.to_be_bytes());
            hasher.update(stored.version.to_be_bytes());
            Ok(true)
        })?;
        Ok((revision, hex::encode(hasher.finalize())))
    }

    /// Reads one chunk of history for a watch replay (see `read_history`).
    pub(crate) fn history_chunk(
        &self,
        from: Revision,
        to: Revision,
        range: &KeyRange,
        keep_prev_kv: bool,
    ) -> Result<HistoryChunk, KvError> {
        let reader = Reader::new(&self.engine);
        read_history(&reader, from, to, range, keep_prev_kv)
    }
}
