//! The watch hub: fan-out of applied events to watchers, fed from apply, never blocked by them.
//!
//! Public contract (other crates rely on exactly this):
//! - `WatchHub::watch(req)` registers a watcher. `start_revision == 0` means "events after the
//!   current revision"; otherwise events with revision >= start_revision are replayed from
//!   history first, then live events follow, in revision order, each exactly once.
//!   A start revision below the compacted revision fails with `WatchError::Compacted` (the
//!   compacted revision itself can still be watched from, as in etcd).
//! - Each watcher has a bounded queue. Apply never waits on it: a watcher whose queue is full is
//!   closed with `WatchMessage::Closed(WatchError::TooSlow)` and the client re-watches/re-lists.
//! - `Watcher::request_progress()` and the hub's periodic progress tick enqueue
//!   `WatchMessage::Progress { revision }`: every event at or below that revision matching the
//!   watch has already been delivered before it (bookmark semantics).
//! - Dropping a `Watcher` unregisters it.
//!
//! How (after etcd's watchable store): the hub keeps one bounded queue per watcher and apply
//! `try_send`s into it under the hub lock, so apply never waits. A watcher registered with a
//! start revision notes, under the same lock, the last published revision P; live events > P
//! queue up while the watcher replays history [start, P] from RocksDB in its own task, so there
//! is neither a gap nor a duplicate. Closing a watcher (too slow, compacted) goes through a
//! separate flag plus dropping its queue's sender, so the close arrives even when the queue is
//! full. Progress is decided under the hub lock too: when a watcher's queue is empty, every
//! event up to P has been handed over, which is exactly what a bookmark promises.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::error::KvError;
use crate::model::{Event, KeyRange, Revision};
use crate::state_machine::KvView;

/// What to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchRequest {
    pub range: KeyRange,
    /// 0 = only changes after the current revision.
    pub start_revision: Revision,
    /// Fill `Event::prev_kv` (otherwise it is stripped to save bandwidth).
    pub prev_kv: bool,
    /// Deliver periodic `Progress` messages while idle.
    pub progress_notify: bool,
}

/// What a watcher receives, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// Events of one or more revisions, ascending; `revision` is the last revision included.
    Events {
        revision: Revision,
        events: Vec<Event>,
    },
    /// Everything up to `revision` has been delivered.
    Progress { revision: Revision },
    /// The watch ended; no more messages follow.
    Closed(WatchError),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("mvcc: required revision has been compacted (compacted revision {compacted})")]
    Compacted { compacted: Revision },
    #[error("watcher fell too far behind and was closed")]
    TooSlow,
    #[error("store is shutting down")]
    ShuttingDown,
    #[error("storage error while replaying history: {0}")]
    Storage(String),
}

/// The fan-out point between apply and watchers. Cheap to clone.
#[derive(Clone)]
pub struct WatchHub {
    shared: Arc<HubShared>,
}

struct HubShared {
    kv: KvView,
    capacity: usize,
    progress_interval: Duration,
    state: Mutex<HubState>,
}

struct HubState {
    /// The last revision handed to the watchers (events of revisions <= this are queued).
    published: Revision,
    next_id: u64,
    watchers: HashMap<u64, Slot>,
}

/// The hub's side of one watcher.
struct Slot {
    range: KeyRange,
    prev_kv: bool,
    /// Events below this revision are not for this watcher (it replays them, or asked to start
    /// later).
    min_revision: Revision,
    tx: mpsc::Sender<Queued>,
    signals: Arc<Signals>,
}

/// Out-of-band signals from the hub to one watcher; they bypass the (possibly full) queue.
#[derive(Default)]
struct Signals {
    closed: Mutex<Option<WatchError>>,
    progress_requested: AtomicBool,
}

impl Signals {
    fn close(&self, reason: WatchError) {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        if closed.is_none() {
            *closed = Some(reason);
        }
    }

    fn take_closed(&self) -> Option<WatchError> {
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// What travels through a watcher's queue.
enum Queued {
    Message(WatchMessage),
    /// Replay revisions `from..=to` from history before anything queued after this (used after
    /// a snapshot install replaced the state under live watchers).
    Replay {
        from: Revision,
        to: Revision,
    },
}

impl WatchHub {
    /// `published` is the store's revision at open: nothing at or below it will be published.
    pub(crate) fn new(
        kv: KvView,
        published: Revision,
        capacity: usize,
        progress_interval: Duration,
    ) -> Self {
        WatchHub {
            shared: Arc::new(HubShared {
                kv,
                capacity: capacity.max(1),
                progress_interval,
                state: Mutex::new(HubState {
                    published,
                    next_id: 1,
                    watchers: HashMap::new(),
                }),
            }),
        }
    }

    /// Registers a watcher. See the module doc for the delivery contract.
    #[tracing::instrument(level = "debug", skip_all, fields(start = req.start_revision))]
    pub fn watch(&self, req: WatchRequest) -> Result<Watcher, WatchError> {
        let compacted = self.shared.kv.compacted_revision();
        if req.start_revision > 0 && req.start_revision < compacted {
            return Err(WatchError::Compacted { compacted });
        }
        let (tx, rx) = mpsc::channel(self.shared.capacity);
        let signals = Arc::new(Signals::default());
        let mut state = self.shared.lock();
        let published = state.published;
        // 1. Under the lock, P = published: live events > P will be queued from now on.
        // 2. Events in [start, P] are replayed from history by the watcher itself, first.
        let (min_revision, replay) = if req.start_revision <= 0 {
            (published.saturating_add(1), None)
        } else if req.start_revision <= published {
            (req.start_revision, Some((req.start_revision, published)))
        } else {
            (req.start_revision, None)
        };
        let id = state.next_id;
        state.next_id += 1;
        state.watchers.insert(
            id,
            Slot {
                range: req.range.clone(),
                prev_kv: req.prev_kv,
                min_revision,
                tx,
                signals: signals.clone(),
            },
        );
        drop(state);
        tracing::debug!(id, published, ?replay, "watcher registered");
        Ok(Watcher {
            id,
            shared: self.shared.clone(),
            rx,
            range: req.range,
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            min_revision,
            replay,
            signals,
            finished: false,
            ticker: None,
        })
    }

    /// The last revision published to watchers.
    pub fn revision(&self) -> Revision {
        self.shared.lock().published
    }

    pub fn watcher_count(&self) -> usize {
        self.shared.lock().watchers.len()
    }

    /// Closes every watcher with `ShuttingDown` (the store is going away).
    pub fn shutdown(&self) {
        let mut state = self.shared.lock();
        for (_, slot) in state.watchers.drain() {
            slot.signals.close(WatchError::ShuttingDown);
        }
    }

    /// Hands the events of one committed revision to every interested watcher. Never blocks: a
    /// watcher whose queue is full is closed with `TooSlow` and removed.
    pub(crate) fn publish(&self, revision: Revision, events: &[Event]) {
        let mut state = self.shared.lock();
        state.published = state.published.max(revision);
        let mut dead: Vec<(u64, Option<WatchError>)> = Vec::new();
        for (id, slot) in &state.watchers {
            if revision < slot.min_revision {
                continue;
            }
            let matching: Vec<Event> = events
                .iter()
                .filter(|e| slot.range.contains(&e.kv.key))
                .map(|e| {
                    if slot.prev_kv {
                        e.clone()
                    } else {
                        Event {
                            prev_kv: None,
                            ..e.clone()
                        }
                    }
                })
                .collect();
            if matching.is_empty() {
                continue;
            }
            match slot.tx.try_send(Queued::Message(WatchMessage::Events {
                revision,
                events: matching,
            })) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => dead.push((*id, Some(WatchError::TooSlow))),
                Err(TrySendError::Closed(_)) => dead.push((*id, None)),
            }
        }
        for (id, reason) in dead {
            if let (Some(slot), Some(reason)) = (state.watchers.remove(&id), reason) {
                tracing::warn!(id, revision, "watcher fell behind; closing it");
                slot.signals.close(reason);
            }
        }
    }

    /// A snapshot replaced the state under live watchers: the published revision jumps from P
    /// to `revision`. Watchers replay (P, revision] from the installed history when it reaches
    /// back that far, otherwise they are closed as compacted (they re-list).
    pub(crate) fn on_snapshot_installed(&self, revision: Revision, compacted: Revision) {
        let mut state = self.shared.lock();
        let old = state.published;
        state.published = revision;
        let mut dead: Vec<(u64, WatchError)> = Vec::new();
        for (id, slot) in &state.watchers {
            if revision < old {
                // The state moved backwards: what the watcher saw may no longer exist.
                dead.push((*id, WatchError::Compacted { compacted }));
                continue;
            }
            let from = old.saturating_add(1).max(slot.min_revision);
            if from > revision {
                continue;
            }
            if from < compacted {
                dead.push((*id, WatchError::Compacted { compacted }));
                continue;
            }
            match slot.tx.try_send(Queued::Replay { from, to: revision }) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => dead.push((*id, WatchError::TooSlow)),
                Err(TrySendError::Closed(_)) => {}
            }
        }
        tracing::info!(
            old,
            revision,
            compacted,
            closed = dead.len(),
            "watch hub rebased on snapshot"
        );
        for (id, reason) in dead {
            if let Some(slot) = state.watchers.remove(&id) {
                slot.signals.close(reason);
            }
        }
    }
}

impl HubShared {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        // Every critical section leaves the state consistent; a panic elsewhere is no reason to
        // stop serving watchers.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unregister(&self, id: u64) {
        self.lock().watchers.remove(&id);
    }
}

/// One registered watch. Messages come from `next()`; dropping it unregisters it.
pub struct Watcher {
    id: u64,
    shared: Arc<HubShared>,
    rx: mpsc::Receiver<Queued>,
    range: KeyRange,
    prev_kv: bool,
    progress_notify: bool,
    min_revision: Revision,
    /// History still to replay (inclusive bounds) before the queue.
    replay: Option<(Revision, Revision)>,
    signals: Arc<Signals>,
    finished: bool,
    ticker: Option<Interval>,
}

/// What a queue check under the hub lock found.
enum Idle {
    Progress(Revision),
    Queued(Queued),
    Disconnected,
}

impl Watcher {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next message; `None` once `Closed` has been returned. Cancel safe.
    pub async fn next(&mut self) -> Option<WatchMessage> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(reason) = self.signals.take_closed() {
                return Some(self.finish(reason));
            }
            if let Some((from, to)) = self.replay {
                match self.replay_step(from, to).await {
                    Ok(Some(message)) => return Some(message),
                    Ok(None) => continue,
                    Err(reason) => return Some(self.finish(reason)),
                }
            }
            if self
                .signals
                .progress_requested
                .swap(false, Ordering::SeqCst)
            {
                match self.check_idle() {
                    Idle::Progress(revision) => return Some(WatchMessage::Progress { revision }),
                    Idle::Queued(queued) => {
                        // Not idle yet: answer the request once the queue drains.
                        self.signals
                            .progress_requested
                            .store(true, Ordering::SeqCst);
                        if let Some(message) = self.handle(queued) {
                            return Some(message);
                        }
                        continue;
                    }
                    Idle::Disconnected => return Some(self.finish_disconnected()),
                }
            }
            let queued = if self.progress_notify {
                let period = self.shared.progress_interval.max(Duration::from_millis(1));
                let ticker = self.ticker.get_or_insert_with(|| {
                    let mut t = tokio::time::interval_at(Instant::now() + period, period);
                    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    t
                });
                let woke = tokio::select! {
                    biased;
                    queued = self.rx.recv() => Some(queued),
                    _ = ticker.tick() => None,
                };
                match woke {
                    Some(queued) => queued,
                    None => match self.check_idle() {
                        Idle::Progress(revision) => {
                            return Some(WatchMessage::Progress { revision });
                        }
                        Idle::Queued(queued) => Some(queued),
                        Idle::Disconnected => None,
                    },
                }
            } else {
                self.rx.recv().await
            };
            match queued {
                Some(queued) => {
                    if let Some(message) = self.handle(queued) {
                        return Some(message);
                    }
                }
                None => return Some(self.finish_disconnected()),
            }
        }
    }

    /// Asks for a `Progress` message; it comes after everything already queued.
    pub fn request_progress(&self) {
        let state = self.shared.lock();
        let Some(slot) = state.watchers.get(&self.id) else {
            return;
        };
        let message = WatchMessage::Progress {
            revision: state.published,
        };
        if let Err(TrySendError::Full(_)) = slot.tx.try_send(Queued::Message(message)) {
            self.signals
                .progress_requested
                .store(true, Ordering::SeqCst);
        }
    }

    /// Under the hub lock nothing is being published, so an empty queue (and no replay left)
    /// means every event up to `published` has been delivered.
    fn check_idle(&mut self) -> Idle {
        let state = self.shared.lock();
        match self.rx.try_recv() {
            Ok(queued) => Idle::Queued(queued),
            Err(TryRecvError::Empty) => Idle::Progress(state.published),
            Err(TryRecvError::Disconnected) => Idle::Disconnected,
        }
    }

    fn handle(&mut self, queued: Queued) -> Option<WatchMessage> {
        match queued {
            Queued::Message(WatchMessage::Events { revision, .. })
                if revision < self.min_revision =>
            {
                None
            }
            Queued::Message(message) => Some(message),
            Queued::Replay { from, to } => {
                let from = from.max(self.min_revision);
                if from <= to {
                    self.replay = Some((from, to));
                }
                None
            }
        }
    }

    /// Reads one chunk of history off the async runtime. The replay position only advances
    /// when a chunk is returned, so a cancelled `next()` loses nothing.
    async fn replay_step(
        &mut self,
        from: Revision,
        to: Revision,
    ) -> Result<Option<WatchMessage>, WatchError> {
        let kv = self.shared.kv.clone();
        let range = self.range.clone();
        let keep_prev_kv = self.prev_kv;
        let chunk =
            tokio::task::spawn_blocking(move || kv.history_chunk(from, to, &range, keep_prev_kv))
                .await
                .map_err(|e| WatchError::Storage(format!("history replay task: {e}")))?
                .map_err(|e| match e {
                    KvError::Compacted { compacted } => WatchError::Compacted { compacted },
                    other => WatchError::Storage(other.to_string()),
                })?;
        self.replay = chunk.next_from.map(|next| (next, to));
        if chunk.events.is_empty() {
            return Ok(None);
        }
        Ok(Some(WatchMessage::Events {
            revision: chunk.last_revision,
            events: chunk.events,
        }))
    }

    fn finish(&mut self, reason: WatchError) -> WatchMessage {
        self.finished = true;
        self.replay = None;
        self.shared.unregister(self.id);
        tracing::debug!(id = self.id, %reason, "watcher closed");
        WatchMessage::Closed(reason)
    }

    fn finish_disconnected(&mut self) -> WatchMessage {
        let reason = self
            .signals
            .take_closed()
            .unwrap_or(WatchError::ShuttingDown);
        self.finish(reason)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}
