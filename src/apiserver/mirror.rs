//! A member-local, always-current copy of every object under one store prefix: listed from this
//! member's replica, then followed by a watch, relisted whenever the watch ends (compaction,
//! slow consumer). Used where a request path must not read the store: RBAC decisions and the
//! table of custom kinds.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_raft::RaftNode;
use skiff_storage::{EventKind, KeyRange, RangeRequest, WatchMessage, WatchRequest};

use super::status::ApiError;

type Objects = BTreeMap<String, Value>;
type OnChange = dyn Fn(&Objects) + Send + Sync;

/// The least time between two `on_change` calls while changes keep coming.
const ON_CHANGE_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Default)]
pub struct Mirror {
    objects: Arc<RwLock<Objects>>,
}

impl Mirror {
    /// Starts following `prefix` on `node`; `on_change` runs after every applied batch.
    pub fn follow(
        node: RaftNode,
        prefix: &'static str,
        on_change: impl Fn(&Objects) + Send + Sync + 'static,
    ) -> Self {
        let mirror = Mirror::default();
        let task = mirror.clone();
        let on_change: Arc<OnChange> = Arc::new(on_change);
        tokio::spawn(async move {
            loop {
                match task.list_and_watch(&node, prefix, &*on_change).await {
                    Ok(()) => tracing::debug!(prefix, "mirror watch ended; relisting"),
                    Err(e) => tracing::warn!(prefix, error = %e, "mirror sync failed; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        mirror
    }

    /// Runs `f` over the current objects.
    pub fn with<T>(&self, f: impl FnOnce(&Objects) -> T) -> Option<T> {
        self.objects.read().ok().map(|objects| f(&objects))
    }

    async fn list_and_watch(
        &self,
        node: &RaftNode,
        prefix: &str,
        on_change: &OnChange,
    ) -> Result<(), ApiError> {
        let request = RangeRequest {
            range: KeyRange::prefix(prefix),
            ..Default::default()
        };
        // This member's own replica, as every read a follower serves without read index.
        let listed = node.range(&request, true).await?;
        let fresh: Objects = listed
            .kvs
            .iter()
            .filter_map(|kv| {
                let value = serde_json::from_slice(&kv.value).ok()?;
                Some((String::from_utf8_lossy(&kv.key).into_owned(), value))
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
            let apply = |objects: &mut Objects| {
                for event in &events {
                    let key = String::from_utf8_lossy(&event.kv.key).into_owned();
                    match event.kind {
                        EventKind::Put => match serde_json::from_slice(&event.kv.value) {
                            Ok(value) => {
                                objects.insert(key, value);
                            }
                            Err(e) => tracing::warn!(key, error = %e, "undecodable object"),
                        },
                        EventKind::Delete => {
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
        change: impl FnOnce(&mut Objects),
        on_change: &OnChange,
    ) -> Result<(), ApiError> {
        let mut objects = self
            .objects
            .write()
            .map_err(|_| ApiError::Internal("mirror state is poisoned".into()))?;
        change(&mut objects);
        on_change(&objects);
        Ok(())
    }

    #[cfg(test)]
    pub fn with_objects(objects: Vec<(String, Value)>) -> Self {
        Mirror {
            objects: Arc::new(RwLock::new(objects.into_iter().collect())),
        }
    }
}
