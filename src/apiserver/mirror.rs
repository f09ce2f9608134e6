//! A member-local, always-current copy of every object under one store prefix: listed from this
//! member's replica, then followed by a watch, relisted whenever the watch ends (compaction,
//! slow consumer). Used where a request path must not read the store: RBAC decisions and the
//! table of custom kinds; and, as a projection keeping only what it needs of each object, by
//! the cluster DNS feed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_raft::RaftNode;
use skiff_storage::{EventKind, KeyRange, RangeRequest, WatchMessage, WatchRequest};

use super::status::ApiError;

type Objects<T> = BTreeMap<String, T>;
type OnChange<T> = dyn Fn(&Objects<T>) + Send + Sync;
/// What a mirror keeps of a stored object (its JSON bytes); None: nothing (not kept).
type Project<T> = dyn Fn(&str, &[u8]) -> Option<T> + Send + Sync;

/// The least time between two `on_change` calls while changes keep coming.
const ON_CHANGE_INTERVAL: Duration = Duration::from_millis(100);

/// The objects as JSON values (`follow`), or what a projection keeps of each
/// (`follow_projected`).
pub struct Mirror<T = Value> {
    objects: Arc<RwLock<Objects<T>>>,
}

impl<T> Clone for Mirror<T> {
    fn clone(&self) -> Self {
        Mirror {
            objects: self.objects.clone(),
        }
    }
}

impl<T> Default for Mirror<T> {
    fn default() -> Self {
        Mirror {
            objects: Arc::new(RwLock::new(BTreeMap::new())),
        }
    }
}

impl Mirror<Value> {
    /// Starts following `prefix` on `node`, keeping every object as a JSON value;
    /// `on_change` runs after applied changes (see `follow_projected`).
    pub fn follow(
        node: RaftNode,
        prefix: &'static str,
        on_change: impl Fn(&Objects<Value>) + Send + Sync + 'static,
    ) -> Self {
        Mirror::follow_projected(node, prefix, decode_value, on_change)
    }

    #[cfg(test)]
    pub fn with_objects(objects: Vec<(String, Value)>) -> Self {
        Mirror {
            objects: Arc::new(RwLock::new(objects.into_iter().collect())),
        }
    }
}

/// Any stored object as a JSON value (an undecodable one is logged and left out).
fn decode_value(key: &str, bytes: &[u8]) -> Option<Value> {
    let plain = super::at_rest::from_storage(key.as_bytes(), bytes)
        .map_err(|e| tracing::warn!(key, error = %e, "stored object does not open"))
        .ok()?;
    serde_json::from_slice(&plain)
        .map_err(|e| tracing::warn!(key, error = %e, "undecodable object"))
        .ok()
}

impl<T: Send + Sync + 'static> Mirror<T> {
    /// Starts following `prefix` on `node`, keeping `project`'s part of each object (a mirror
    /// of thousands of pods for a few fields each need not hold every pod as a JSON tree);
    /// `on_change` runs after applied changes, at most once per `ON_CHANGE_INTERVAL` while
    /// they keep coming and always after the last of a burst.
    pub fn follow_projected(
        node: RaftNode,
        prefix: &'static str,
        project: impl Fn(&str, &[u8]) -> Option<T> + Send + Sync + 'static,
        on_change: impl Fn(&Objects<T>) + Send + Sync + 'static,
    ) -> Self {
        let mirror = Mirror::default();
        let task = mirror.clone();
        let on_change: Arc<OnChange<T>> = Arc::new(on_change);
        let project: Arc<Project<T>> = Arc::new(project);
        tokio::spawn(async move {
            loop {
                match task
                    .list_and_watch(&node, prefix, &*project, &*on_change)
                    .await
                {
                    Ok(()) => tracing::debug!(prefix, "mirror watch ended; relisting"),
                    Err(e) => tracing::warn!(prefix, error = %e, "mirror sync failed; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        mirror
    }

    /// Runs `f` over the current objects.
    pub fn with<R>(&self, f: impl FnOnce(&Objects<T>) -> R) -> Option<R> {
        self.objects.read().ok().map(|objects| f(&objects))
    }

    async fn list_and_watch(
        &self,
        node: &RaftNode,
        prefix: &str,
        project: &Project<T>,
        on_change: &OnChange<T>,
    ) -> Result<(), ApiError> {
        let request = RangeRequest {
            range: KeyRange::prefix(prefix),
            ..Default::default()
        };
        // This member's own replica, as every read a follower serves without read index.
        let listed = node.range(&request, true).await?;
        let fresh: Objects<T> = listed
            .kvs
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                let kept = project(&key, &kv.value)?;
                Some((key, kept))
            })
            .collect();
        self.replace(|objects| *objects = fresh, on_change)?;
        let mut watcher = node
            .watch_hub()
            .watch(WatchRequest {
                range: KeyRange::prefix(prefix),
                start_revision: listed.revision + 1,
                prev_kv: false,
                progress_notify: false,
            })
            .map_err(|e| ApiError::Internal(format!("watch of {prefix}: {e}")))?;
        // `on_change` rebuilds whatever the caller derives from all the objects (the DNS
        // index of every pod, say): run per event it made each write cost O(objects), which
        // dominated the server's CPU while thousands of pods were created and bound. The copy
        // itself is updated at once; `on_change` at most once per ON_CHANGE_INTERVAL, and
        // always after the last change of a burst.
        let mut last_change = Instant::now();
        let mut pending = false;
        loop {
            let message = if pending {
                let due = last_change + ON_CHANGE_INTERVAL;
                tokio::select! {
                    message = watcher.next() => message,
                    _ = tokio::time::sleep_until(due.into()) => {
                        self.replace(|_| {}, on_change)?;
                        (last_change, pending) = (Instant::now(), false);
                        continue;
                    }
                }
            } else {
                watcher.next().await
            };
            let events = match message {
                None | Some(WatchMessage::Closed(_)) => return Ok(()),
                Some(WatchMessage::Progress { .. }) => continue,
                Some(WatchMessage::Events { events, .. }) => events,
            };
            let apply = |objects: &mut Objects<T>| {
                for event in &events {
                    let key = String::from_utf8_lossy(&event.kv.key).into_owned();
                    let kept = match event.kind {
                        EventKind::Put => project(&key, &event.kv.value),
                        EventKind::Delete => None,
                    };
                    match kept {
                        Some(kept) => {
                            objects.insert(key, kept);
                        }
                        None => {
                            objects.remove(&key);
                        }
                    }
                }
            };
            if last_change.elapsed() >= ON_CHANGE_INTERVAL {
                self.replace(apply, on_change)?;
                (last_change, pending) = (Instant::now(), false);
            } else {
                self.replace(apply, &|_| {})?;
                pending = true;
            }
        }
    }

    fn replace(
        &self,
        change: impl FnOnce(&mut Objects<T>),
        on_change: &OnChange<T>,
    ) -> Result<(), ApiError> {
        let mut objects = self
            .objects
            .write()
            .map_err(|_| ApiError::Internal("mirror state is poisoned".into()))?;
        change(&mut objects);
        on_change(&objects);
        Ok(())
    }
}
