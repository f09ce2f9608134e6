//! Informers: one list + watch + in-memory cache per kind, shared by every controller that
//! reads the kind, with event fan-out to the controllers' handlers.
//!
//! After kube-rs' reflector and client-go's shared informer:
//! 1. list the whole kind (a linearizable read) and swap it into the cache at once, telling
//!    handlers about every difference from the previous cache (all of it on the first list);
//! 2. watch the store's hub from the list's revision + 1, applying each event to the cache
//!    before the handlers hear of it (a handler, and the reconcile it queues, sees the new state);
//! 3. when the watch ends (compacted history, a watcher too slow for the hub, shutdown), list
//!    again: the swap in step 1 turns whatever was missed into ordinary events;
//! 4. every `resync` period, hand every cached object to the handlers again, so a reconcile
//!    that was dropped (a bug, a lost race) is retried eventually.
//!
//! The cache is keyed by `namespace/name` (`name` for cluster-scoped kinds), which is also the
//! object's store key without the kind's prefix.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use skiff_storage::{EventKind, KeyRange, WatchMessage, WatchRequest};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::Error;
use super::ownership::controller_uid;
use crate::apiserver::objects::{ListOptions, Objects, Scope};
use crate::apiserver::store::{decode, list_prefix};
use crate::json_path::JsonPath;
use crate::registry::{Kind, KindInfo};

/// How often every cached object is handed to the handlers again (client-go's resync).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(300);
/// Pause before listing again after a watch ended, so a failing store is not hammered.
const RELIST_DELAY: Duration = Duration::from_millis(500);

/// Called with (old, new) for every change: (None, Some) added, (Some, Some) updated or
/// resynced, (Some, None) deleted. Handlers map objects to keys and queue them; they must not
/// block.
pub type Handler = Arc<dyn Fn(Option<&Value>, Option<&Value>) + Send + Sync>;

/// The cache key of an object: `namespace/name`, or `name` when it has no namespace.
pub fn object_key(object: &Value) -> String {
    let meta = |f: &str| {
        object
            .at(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    match meta("namespace") {
        "" => meta("name").to_string(),
        ns => format!("{ns}/{}", meta("name")),
    }
}

/// Splits a cache key into (namespace, name).
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

pub fn uid_of(object: &Value) -> &str {
    object
        .at("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

#[derive(Default)]
struct Cache {
    items: HashMap<String, Arc<Value>>,
    /// uid -> key, for owner lookups.
    by_uid: HashMap<String, String>,
    /// namespace -> keys (namespaced objects only): a controller reads its own namespace on
    /// every reconcile, which must not cost a scan of every object of the kind.
    by_namespace: HashMap<String, HashSet<String>>,
    /// controller uid -> keys of the objects it controls, and (under `orphans_bucket`) a
    /// namespace's objects without a controller: a ReplicaSet claims its pods from these two
    /// sets instead of reading its whole namespace.
    by_controller: HashMap<String, HashSet<String>>,
    /// The store revision everything in `items` reflects.
    revision: i64,
}

/// The `by_controller` bucket of a namespace's objects that no controller owns (a uid never
/// contains a NUL, so it cannot collide with one).
fn orphans_bucket(namespace: &str) -> String {
    format!("\0{namespace}")
}

fn namespace_of(key: &str) -> &str {
    split_key(key).0.unwrap_or("")
}

fn controller_bucket(key: &str, object: &Value) -> String {
    match controller_uid(object) {
        Some(uid) => uid.to_string(),
        None => orphans_bucket(namespace_of(key)),
    }
}

/// Removes `key` from the set under `bucket`, dropping the set when it empties.
fn unindex(index: &mut HashMap<String, HashSet<String>>, bucket: &str, key: &str) {
    if let Some(keys) = index.get_mut(bucket) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(bucket);
        }
    }
}

impl Cache {
    fn insert(&mut self, key: String, object: Arc<Value>) -> Option<Arc<Value>> {
        let uid = uid_of(&object).to_string();
        let bucket = controller_bucket(&key, &object);
        let old = self.items.insert(key.clone(), object);
        match &old {
            Some(old) => {
                self.by_uid.remove(uid_of(old));
                let old_bucket = controller_bucket(&key, old);
                if old_bucket != bucket {
                    unindex(&mut self.by_controller, &old_bucket, &key);
                }
            }
            None => {
                if let (Some(namespace), _) = split_key(&key) {
                    self.by_namespace
                        .entry(namespace.to_string())
                        .or_default()
                        .insert(key.clone());
                }
            }
        }
        if !uid.is_empty() {
            self.by_uid.insert(uid, key.clone());
        }
        self.by_controller.entry(bucket).or_default().insert(key);
        old
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Value>> {
        let old = self.items.remove(key)?;
        self.by_uid.remove(uid_of(&old));
        if let (Some(namespace), _) = split_key(key) {
            unindex(&mut self.by_namespace, namespace, key);
        }
        unindex(&mut self.by_controller, &controller_bucket(key, &old), key);
        Some(old)
    }

    fn objects_under(
        &self,
        index: &HashMap<String, HashSet<String>>,
        bucket: &str,
    ) -> Vec<Arc<Value>> {
        index
            .get(bucket)
            .into_iter()
            .flatten()
            .filter_map(|key| self.items.get(key).cloned())
            .collect()
    }
}

/// A change to hand to the handlers once the cache lock is released.
type Change = (Option<Arc<Value>>, Option<Arc<Value>>);

/// The cache of one kind and the loop that keeps it current.
pub struct Informer {
    kind: &'static dyn Kind,
    objects: Objects,
    cache: RwLock<Cache>,
    handlers: Mutex<Vec<Handler>>,
    synced: watch::Sender<bool>,
    resync: Duration,
}

impl Informer {
    pub fn new(kind: &'static dyn Kind, objects: Objects, resync: Duration) -> Self {
        Informer {
            kind,
            objects,
            cache: RwLock::new(Cache::default()),
            handlers: Mutex::new(Vec::new()),
            synced: watch::channel(false).0,
            resync,
        }
    }

    pub fn info(&self) -> &'static KindInfo {
        self.kind.info()
    }

    /// Registers a handler; handlers added before `run` also see the initial list.
    pub fn add_handler(&self, handler: Handler) {
        self.handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handler);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.read().items.get(key).cloned()
    }

    pub fn get_by_uid(&self, uid: &str) -> Option<Arc<Value>> {
        let cache = self.read();
        cache
            .by_uid
            .get(uid)
            .and_then(|key| cache.items.get(key))
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<Value>> {
        self.read().items.values().cloned().collect()
    }

    /// The objects of one namespace.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<Value>> {
        let cache = self.read();
        cache.objects_under(&cache.by_namespace, namespace)
    }

    /// The objects whose controller reference names `controller_uid`.
    pub fn list_controlled_by(&self, controller_uid: &str) -> Vec<Arc<Value>> {
        let cache = self.read();
        cache.objects_under(&cache.by_controller, controller_uid)
    }

    /// The objects of one namespace that no controller owns (candidates for adoption).
    pub fn list_orphans(&self, namespace: &str) -> Vec<Arc<Value>> {
        let cache = self.read();
        cache.objects_under(&cache.by_controller, &orphans_bucket(namespace))
    }

    /// The store revision the cache reflects: every write of this kind at or below it is in.
    pub fn revision(&self) -> i64 {
        self.read().revision
    }

    /// Waits for the first full list.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    fn notify(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let handlers = self
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (old, new) in &changes {
            for handler in &handlers {
                handler(old.as_deref(), new.as_deref());
            }
        }
    }

    /// Runs list + watch until the task is dropped, re-listing whenever the watch ends.
    pub async fn run(self: Arc<Self>) {
        let span = tracing::info_span!("informer", resource = self.info().resource);
        async move {
            loop {
                match self.list_and_watch().await {
                    Ok(()) => tracing::debug!("watch ended; re-listing"),
                    Err(e) => tracing::info!(error = %e, "watch failed; re-listing"),
                }
                tokio::time::sleep(RELIST_DELAY).await;
            }
        }
        .instrument(span)
        .await
    }

    async fn list_and_watch(&self) -> Result<(), Error> {
        let info = self.info();
        let listed = self
            .objects
            .list(Scope::new(self.kind, None), &ListOptions::default())
            .await?;
        self.replace(listed.items, listed.revision);
        self.synced.send_replace(true);
        let prefix = list_prefix(info, None);
        let mut watcher = self
            .objects
            .store()
            .node()
            .watch_hub()
            .watch(WatchRequest {
                range: KeyRange::prefix(prefix.as_str()),
                start_revision: listed.revision + 1,
                prev_kv: true,
                progress_notify: true,
            })
            .map_err(Error::Watch)?;
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + self.resync, self.resync);
        loop {
            tokio::select! {
                message = watcher.next() => match message {
                    None => return Ok(()),
                    Some(WatchMessage::Closed(reason)) => return Err(Error::Watch(reason)),
                    Some(WatchMessage::Progress { revision }) => {
                        let mut cache = self.write();
                        cache.revision = cache.revision.max(revision);
                    }
                    Some(WatchMessage::Events { revision, events }) => {
                        let changes = self.apply(&prefix, &events, revision);
                        self.notify(changes);
                    }
                },
                _ = resync.tick() => {
                    let all = self.list();
                    self.notify(all.into_iter().map(|o| (Some(o.clone()), Some(o))).collect());
                }
            }
        }
    }

    /// Swaps in a full list, returning nothing but telling handlers what changed.
    fn replace(&self, items: Vec<Value>, revision: i64) {
        let mut fresh = Cache {
            revision,
            ..Cache::default()
        };
        for item in items {
            fresh.insert(object_key(&item), Arc::new(item));
        }
        let mut changes = Vec::new();
        {
            let mut cache = self.write();
            for (key, new) in &fresh.items {
                match cache.items.get(key) {
                    Some(old) if rv(old) == rv(new) => {}
                    old => changes.push((old.cloned(), Some(new.clone()))),
                }
            }
            for (key, old) in &cache.items {
                if !fresh.items.contains_key(key) {
                    changes.push((Some(old.clone()), None));
                }
            }
            *cache = fresh;
        }
        self.notify(changes);
    }

    /// Applies watch events to the cache; returns the changes for the handlers.
    fn apply(&self, prefix: &str, events: &[skiff_storage::Event], revision: i64) -> Vec<Change> {
        let mut changes = Vec::with_capacity(events.len());
        let mut cache = self.write();
        for event in events {
            let key = String::from_utf8_lossy(&event.kv.key);
            let Some(key) = key.strip_prefix(prefix) else {
                continue;
            };
            match event.kind {
                EventKind::Put => match decode(&event.kv) {
                    Ok(stored) => {
                        let new = Arc::new(stored.object);
                        let old = cache.insert(key.to_string(), new.clone());
                        changes.push((old, Some(new)));
                    }
                    Err(e) => tracing::warn!(key, error = %e, "skipping an undecodable object"),
                },
                EventKind::Delete => {
                    let old = cache.remove(key).or_else(|| {
                        let prev = event.prev_kv.as_ref()?;
                        decode(prev).ok().map(|s| Arc::new(s.object))
                    });
                    if let Some(old) = old {
                        changes.push((Some(old), None));
                    }
                }
            }
        }
        cache.revision = cache.revision.max(revision);
        changes
    }
}

fn rv(object: &Value) -> Option<&str> {
    object
        .at("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

/// The informers of one leadership term, one per kind, created on first use.
pub struct Informers {
    objects: Objects,
    resync: Duration,
    by_resource: Mutex<Vec<Arc<Informer>>>,
}

impl Informers {
    pub fn new(objects: Objects, resync: Duration) -> Self {
        Informers {
            objects,
            resync,
            by_resource: Mutex::new(Vec::new()),
        }
    }

    /// The shared informer of `kind`.
    pub fn of(&self, kind: &'static dyn Kind) -> Arc<Informer> {
        let mut all = self.by_resource.lock().unwrap_or_else(|e| e.into_inner());
        let info = kind.info();
        if let Some(found) = all
            .iter()
            .find(|i| i.info().group == info.group && i.info().resource == info.resource)
        {
            return found.clone();
        }
        let informer = Arc::new(Informer::new(kind, self.objects.clone(), self.resync));
        all.push(informer.clone());
        informer
    }

    /// Every informer created so far.
    pub fn all(&self) -> Vec<Arc<Informer>> {
        self.by_resource
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts every informer created so far in `tasks`.
    pub fn start(&self, tasks: &mut JoinSet<()>) {
        for informer in self.all() {
            tasks.spawn(informer.run());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_namespace_slash_name() {
        let pod = json!({"metadata": {"namespace": "default", "name": "web-1"}});
        assert_eq!(object_key(&pod), "default/web-1");
        assert_eq!(split_key("default/web-1"), (Some("default"), "web-1"));
        let node = json!({"metadata": {"name": "n1"}});
        assert_eq!(object_key(&node), "n1");
        assert_eq!(split_key("n1"), (None, "n1"));
    }

    #[test]
    fn the_cache_indexes_by_uid_and_forgets_replaced_uids() {
        let mut cache = Cache::default();
        cache.insert(
            "ns/a".into(),
            Arc::new(json!({"metadata": {"name": "a", "uid": "u1"}})),
        );
        cache.insert(
            "ns/a".into(),
            Arc::new(json!({"metadata": {"name": "a", "uid": "u2"}})),
        );
        assert!(!cache.by_uid.contains_key("u1"));
        assert_eq!(cache.by_uid.get("u2").map(String::as_str), Some("ns/a"));
        cache.remove("ns/a");
        assert!(cache.by_uid.is_empty());
    }

    #[test]
    fn the_cache_indexes_by_namespace_and_controller() {
        let owned = |name: &str, ns: &str, owner: Option<&str>| {
            let mut pod = json!({"metadata": {"name": name, "namespace": ns, "uid": name}});
            if let Some(uid) = owner {
                pod["metadata"]["ownerReferences"] = json!([{"uid": uid, "controller": true}]);
            }
            Arc::new(pod)
        };
        let mut cache = Cache::default();
        cache.insert("a/p1".into(), owned("p1", "a", Some("rs1")));
        cache.insert("a/p2".into(), owned("p2", "a", None));
        cache.insert("b/p3".into(), owned("p3", "b", None));
        let keys = |objects: Vec<Arc<Value>>| {
            let mut names: Vec<String> = objects.iter().map(|o| object_key(o)).collect();
            names.sort();
            names
        };
        assert_eq!(
            keys(cache.objects_under(&cache.by_namespace, "a")),
            ["a/p1", "a/p2"]
        );
        assert_eq!(
            keys(cache.objects_under(&cache.by_controller, "rs1")),
            ["a/p1"]
        );
        let orphans =
            |c: &Cache, ns: &str| keys(c.objects_under(&c.by_controller, &orphans_bucket(ns)));
        assert_eq!(orphans(&cache, "a"), ["a/p2"]);
        // Adopted: moves from the orphans to its controller; released: back again.
        cache.insert("a/p2".into(), owned("p2", "a", Some("rs1")));
        assert!(orphans(&cache, "a").is_empty());
        assert_eq!(
            keys(cache.objects_under(&cache.by_controller, "rs1")),
            ["a/p1", "a/p2"]
        );
        cache.insert("a/p1".into(), owned("p1", "a", None));
        assert_eq!(orphans(&cache, "a"), ["a/p1"]);
        cache.remove("a/p1");
        cache.remove("a/p2");
        cache.remove("b/p3");
        assert!(cache.by_namespace.is_empty() && cache.by_controller.is_empty());
    }
}
