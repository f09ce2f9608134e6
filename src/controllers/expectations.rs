//! Expectations: the writes a controller made that its informer cache has not shown it yet.
//!
//! Without them a reconcile that runs between "created 3 pods" and "the watch delivered them"
//! counts too few pods and creates 3 more. Kubernetes counts pending adds and deletes per
//! controller; we can be exact instead, because every write returns its store revision and the
//! informer knows the revision its cache reflects:
//! - creates are seen once the pod cache's revision reaches the revision of the last create;
//! - deletes are seen once no live (not deleting) pod in the cache has a deleted uid.
//!
//! Expectations older than `TIMEOUT` are dropped (as Kubernetes' 5 minutes), so a lost watch
//! event can only delay a controller, never wedge it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(300);

struct Pending {
    revision: i64,
    deleted: HashSet<String>,
    since: Instant,
}

#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    fn with(&self, key: &str, f: impl FnOnce(&mut Pending)) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending.entry(key.to_string()).or_insert_with(|| Pending {
            revision: 0,
            deleted: HashSet::new(),
            since: Instant::now(),
        });
        entry.since = Instant::now();
        f(entry);
    }

    /// `key` created an object at store revision `revision`.
    pub fn created(&self, key: &str, revision: i64) {
        self.with(key, |p| p.revision = p.revision.max(revision));
    }

    /// `key` deleted the object with `uid`.
    pub fn deleted(&self, key: &str, uid: &str) {
        self.with(key, |p| {
            p.deleted.insert(uid.to_string());
        });
    }

    /// Whether the cache shows every write of `key`: its revision is `cache_revision`, and
    /// `live(uid)` says whether a not-deleting object with that uid is still cached.
    pub fn satisfied(&self, key: &str, cache_revision: i64, live: impl Fn(&str) -> bool) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = pending.get_mut(key) else {
            return true;
        };
        entry.deleted.retain(|uid| live(uid));
        let done = cache_revision >= entry.revision && entry.deleted.is_empty();
        if done || entry.since.elapsed() > TIMEOUT {
            if !done {
                tracing::warn!(key, "expectations expired unmet");
            }
            pending.remove(key);
            return true;
        }
        false
    }

    /// The controller's object is gone: nothing to wait for.
    pub fn forget(&self, key: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_wait_for_the_cache_revision_and_deletes_for_the_uid_to_go() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs", 0, |_| false));
        e.created("ns/rs", 10);
        e.deleted("ns/rs", "u1");
        assert!(!e.satisfied("ns/rs", 9, |_| true));
        assert!(!e.satisfied("ns/rs", 10, |uid| uid == "u1"));
        assert!(e.satisfied("ns/rs", 10, |_| false));
        // Satisfied expectations are cleared.
        assert!(e.satisfied("ns/rs", 0, |_| true));
        e.created("ns/rs", 5);
        e.forget("ns/rs");
        assert!(e.satisfied("ns/rs", 0, |_| true));
    }
}
