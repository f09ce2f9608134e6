//! The work queue between informers and a controller's workers, after client-go's
//! `RateLimitingQueue`:
//!
//! - de-duplication: a key added while already waiting is processed once;
//! - a key re-added while a worker processes it waits and is processed again after `done`, so
//!   one key is never reconciled twice at once and no change is missed;
//! - per-key exponential backoff for failures (`add_rate_limited`, 5 ms doubling up to a cap,
//!   reset by `forget`), and plain delays (`add_after`) for "look again in N seconds".
//!
//! Delayed keys sit in a heap that `get` itself drains, so the queue spawns no timer tasks and
//! dies with its owner.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Backoff of the first failure; each further failure doubles it (client-go's default).
pub const BASE_BACKOFF: Duration = Duration::from_millis(5);
/// Backoff never exceeds this (client-go: 1000 s).
pub const MAX_BACKOFF: Duration = Duration::from_secs(1000);

#[derive(Default)]
struct State {
    /// Keys ready to be handed out, in order.
    ready: VecDeque<String>,
    /// Keys waiting in `ready` or to be re-queued once their processing ends.
    dirty: HashSet<String>,
    /// Keys a worker holds right now.
    processing: HashSet<String>,
    /// Keys to add later: (when, sequence, key); sequence keeps the heap order total.
    delayed: BinaryHeap<Reverse<(Instant, u64, String)>>,
    sequence: u64,
    /// Consecutive failures per key, for the backoff.
    failures: HashMap<String, u32>,
}

impl State {
    fn add(&mut self, key: String) -> bool {
        if self.dirty.contains(&key) {
            return false;
        }
        self.dirty.insert(key.clone());
        if self.processing.contains(&key) {
            // `done` puts it back.
            return false;
        }
        self.ready.push_back(key);
        true
    }

    /// Moves delayed keys whose time has come to `ready`.
    fn promote_due(&mut self, now: Instant) {
        while let Some(Reverse((at, _, _))) = self.delayed.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, _, key))) = self.delayed.pop() {
                self.add(key);
            }
        }
    }
}

/// A de-duplicating, rate-limited work queue of object keys. Shared by `Arc`.
pub struct WorkQueue {
    state: Mutex<State>,
    notify: Notify,
    max_backoff: Duration,
}

impl Default for WorkQueue {
    fn default() -> Self {
        Self::new(MAX_BACKOFF)
    }
}

impl WorkQueue {
    pub fn new(max_backoff: Duration) -> Self {
        WorkQueue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            max_backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent sets behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: impl Into<String>) {
        if self.lock().add(key.into()) {
            self.notify.notify_one();
        }
    }

    /// Adds `key` once `delay` has passed (at once for a zero delay).
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let mut state = self.lock();
        state.sequence += 1;
        let sequence = state.sequence;
        state
            .delayed
            .push(Reverse((Instant::now() + delay, sequence, key.into())));
        drop(state);
        // A waiting worker recomputes how long to sleep.
        self.notify.notify_one();
    }

    /// Adds `key` after its backoff: 5 ms, 10 ms, 20 ms, ... up to the cap.
    pub fn add_rate_limited(&self, key: impl Into<String>) {
        let key = key.into();
        let delay = {
            let mut state = self.lock();
            let failures = state.failures.entry(key.clone()).or_insert(0);
            let delay = backoff(*failures, self.max_backoff);
            *failures = failures.saturating_add(1);
            delay
        };
        self.add_after(key, delay);
    }

    /// Clears the failure count of `key` (it succeeded).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    pub fn failures(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to process. The caller must call `done` with it.
    pub async fn get(&self) -> String {
        loop {
            let wake_at = {
                let mut state = self.lock();
                state.promote_due(Instant::now());
                if let Some(key) = state.ready.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    return key;
                }
                state.delayed.peek().map(|Reverse((at, _, _))| *at)
            };
            // notify_one stores a permit when nobody waits, so an add between the check above
            // and this await is not lost.
            match wake_at {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.notify.notified()).await;
                }
                None => self.notify.notified().await,
            }
        }
    }

    /// Ends the processing of `key`; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &str) {
        let mut state = self.lock();
        state.processing.remove(key);
        if state.dirty.contains(key) {
            state.ready.push_back(key.to_string());
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Keys ready or delayed (not counting those being processed).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.ready.len() + state.delayed.len()
    }
}

/// The backoff after `failures` earlier failures: 5 ms * 2^failures, capped.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let factor = 2u64.saturating_pow(failures.min(40));
    let millis = (BASE_BACKOFF.as_millis() as u64).saturating_mul(factor);
    Duration::from_millis(millis).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(q: &WorkQueue) -> String {
        tokio::time::timeout(Duration::from_secs(5), q.get())
            .await
            .expect("a key in time")
    }

    #[tokio::test]
    async fn a_key_added_twice_is_processed_once() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(next(&q).await, "a");
        assert_eq!(next(&q).await, "b");
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn a_key_re_added_while_processing_comes_back_after_done() {
        let q = WorkQueue::default();
        q.add("a");
        let key = next(&q).await;
        q.add("a");
        q.add("a");
        // Not handed out while still being processed.
        assert_eq!(q.len(), 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), q.get())
                .await
                .is_err()
        );
        q.done(&key);
        assert_eq!(next(&q).await, "a");
        q.done("a");
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn delayed_keys_arrive_after_their_delay() {
        let q = WorkQueue::default();
        let start = Instant::now();
        q.add_after("late", Duration::from_millis(80));
        q.add_after("soon", Duration::from_millis(20));
        assert_eq!(next(&q).await, "soon");
        assert_eq!(next(&q).await, "late");
        assert!(start.elapsed() >= Duration::from_millis(80));
    }

    #[tokio::test]
    async fn failures_back_off_exponentially_until_forgotten() {
        assert_eq!(backoff(0, MAX_BACKOFF), Duration::from_millis(5));
        assert_eq!(backoff(1, MAX_BACKOFF), Duration::from_millis(10));
        assert_eq!(backoff(10, MAX_BACKOFF), Duration::from_millis(5120));
        assert_eq!(backoff(30, MAX_BACKOFF), MAX_BACKOFF);
        assert_eq!(
            backoff(u32::MAX, Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        let q = WorkQueue::default();
        q.add_rate_limited("k");
        q.add_rate_limited("k");
        assert_eq!(q.failures("k"), 2);
        assert_eq!(next(&q).await, "k");
        q.forget("k");
        assert_eq!(q.failures("k"), 0);
    }
}
