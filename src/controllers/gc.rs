//! The garbage collector: ownerReferences across every kind the registry serves.
//!
//! After Kubernetes' garbage collector, without its full graph: an index from owner uid to
//! dependents (kept current by handlers on every kind's informer) is enough to answer the two
//! questions it asks.
//! - As a dependent: are my owners still there? Owners are looked up in the cache and, when
//!   missing there, confirmed absent with a live read (a cache may lag behind a new owner).
//!   All owners gone: delete the dependent (background). Some gone: drop those references.
//! - As an owner being deleted with the `orphan` finalizer: remove my reference from every
//!   dependent, then the finalizer. With `foregroundDeletion`: delete every dependent (in
//!   foreground itself when it has dependents of its own), and remove the finalizer once no
//!   dependent with blockOwnerDeletion remains. Removing the last finalizer deletes the owner.
//!
//! Queue keys are `<kind index>|<cache key>`, the index into `registry::kinds()`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::informer::{Informer, Informers, object_key, uid_of};
use super::ownership::{is_deleting, owner_references, remove_reference};
use super::queue::WorkQueue;
use super::{Action, Error, Reconcile, modify};
use crate::apiserver::objects::{
    DeleteOptions, FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Objects, Part, Scope, finalizers,
    name_of,
};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::{self, Kind};

/// How often an owner waiting for its dependents looks again without news.
const OWNER_RECHECK: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Graph {
    /// owner uid -> queue keys of the objects referring to it.
    dependents: HashMap<String, HashSet<String>>,
    /// uid -> queue key, for every object seen.
    items: HashMap<String, String>,
}

pub struct GarbageCollector {
    objects: Objects,
    kinds: Vec<&'static dyn Kind>,
    informers: Vec<Arc<Informer>>,
    graph: Arc<Mutex<Graph>>,
}

fn item_key(index: usize, key: &str) -> String {
    format!("{index}|{key}")
}

fn parse_item(item: &str) -> Option<(usize, &str)> {
    let (index, key) = item.split_once('|')?;
    Some((index.parse().ok()?, key))
}

fn owner_uids(object: &Value) -> impl Iterator<Item = &str> {
    owner_references(object)
        .iter()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
}

fn has_gc_finalizer(object: &Value) -> bool {
    finalizers(object)
        .iter()
        .any(|f| f == FOREGROUND_FINALIZER || f == ORPHAN_FINALIZER)
}

impl GarbageCollector {
    pub fn new(objects: Objects, informers: &Informers) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let graph = Arc::new(Mutex::new(Graph::default()));
        let kinds: Vec<&'static dyn Kind> = registry::kinds().to_vec();
        let mut all = Vec::with_capacity(kinds.len());
        for (index, kind) in kinds.iter().enumerate() {
            let informer = informers.of(*kind);
            let (q, graph) = (queue.clone(), graph.clone());
            informer.add_handler(Arc::new(move |old, new| {
                observe(&q, &graph, index, old, new);
            }));
            all.push(informer);
        }
        let gc = Arc::new(GarbageCollector {
            objects,
            kinds,
            informers: all,
            graph,
        });
        (gc, queue)
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kind an owner reference names, by apiVersion and kind.
    fn kind_of(&self, reference: &Value) -> Option<usize> {
        let api_version = reference.get("apiVersion").and_then(Value::as_str)?;
        let kind = reference.get("kind").and_then(Value::as_str)?;
        self.kinds
            .iter()
            .position(|k| k.info().kind == kind && k.info().api_version() == api_version)
    }

    /// The owner a reference names, if it exists with that uid (cache first, then a live read).
    async fn owner(&self, reference: &Value, namespace: Option<&str>) -> Result<Owner, Error> {
        let Some(index) = self.kind_of(reference) else {
            return Ok(Owner::Unknown);
        };
        let uid = reference.get("uid").and_then(Value::as_str).unwrap_or("");
        if self.informers[index].get_by_uid(uid).is_some() {
            return Ok(Owner::Present);
        }
        let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
        let scope = Scope::new(self.kinds[index], namespace);
        match self.objects.get(scope, name, true).await {
            Ok(owner) if uid_of(&owner) == uid => Ok(Owner::Present),
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(Owner::Absent),
            Err(e) => Err(e.into()),
        }
    }

    /// An object with owner references: delete it when all owners are gone, or drop the
    /// references to the ones that are.
    async fn check_owners(&self, index: usize, object: &Value) -> Result<(), Error> {
        let namespace = object.at("/metadata/namespace").and_then(Value::as_str);
        let references = owner_references(object).to_vec();
        let mut absent = Vec::new();
        let mut known = 0;
        for reference in &references {
            match self.owner(reference, namespace).await? {
                Owner::Absent => absent.push(reference.clone()),
                Owner::Present | Owner::Unknown => known += 1,
            }
        }
        if absent.is_empty() {
            return Ok(());
        }
        let scope = Scope::new(self.kinds[index], namespace);
        let name = name_of(object);
        if known == 0 {
            tracing::info!(
                kind = self.kinds[index].info().kind,
                name,
                "owners gone; deleting"
            );
            let options = DeleteOptions {
                uid: Some(uid_of(object).to_string()),
                propagation_policy: Some("Background".into()),
                ..DeleteOptions::default()
            };
            return match self.objects.delete(scope, name, &options).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
                // The uid precondition failed: a new object took the name; not ours to delete.
                Err(ApiError::Conflict { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        let gone: Vec<String> = absent
            .iter()
            .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
            .collect();
        let change = |object: &mut Value| {
            for uid in &gone {
                remove_reference(object, uid);
            }
        };
        modify(
            &self.objects,
            self.kinds[index],
            namespace,
            name,
            Part::Main,
            change,
        )
        .await?;
        Ok(())
    }

    /// The live dependents of `uid`: (kind index, object).
    fn dependents(&self, uid: &str) -> Vec<(usize, Arc<Value>)> {
        let items: Vec<String> = self
            .graph()
            .dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        items
            .iter()
            .filter_map(|item| {
                let (index, key) = parse_item(item)?;
                let object = self.informers.get(index)?.get(key)?;
                let refers = owner_uids(&object).any(|u| u == uid);
                refers.then_some((index, object))
            })
            .collect()
    }

    /// `orphan`: every dependent lets go of the owner, then the finalizer goes.
    async fn orphan_dependents(&self, owner: &Value) -> Result<(), Error> {
        let uid = uid_of(owner);
        for (index, dependent) in self.dependents(uid) {
            let (namespace, name) = (
                dependent.at("/metadata/namespace").and_then(Value::as_str),
                name_of(&dependent),
            );
            super::ownership::release(&self.objects, self.kinds[index], namespace, name, uid)
                .await?;
        }
        Ok(())
    }

    /// `foregroundDeletion`: deletes the dependents; true once none blocks the owner.
    async fn delete_dependents(&self, owner: &Value) -> Result<bool, Error> {
        let uid = uid_of(owner);
        let mut blocked = false;
        for (index, dependent) in self.dependents(uid) {
            let blocks = owner_references(&dependent).iter().any(|r| {
                r.get("uid").and_then(Value::as_str) == Some(uid)
                    && r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
            });
            blocked |= blocks;
            if is_deleting(&dependent) {
                continue;
            }
            let has_own = !self.dependents(uid_of(&dependent)).is_empty();
            let options = DeleteOptions {
                uid: Some(uid_of(&dependent).to_string()),
                propagation_policy: Some(if has_own { "Foreground" } else { "Background" }.into()),
                ..DeleteOptions::default()
            };
            let scope = Scope::new(
                self.kinds[index],
                dependent.at("/metadata/namespace").and_then(Value::as_str),
            );
            match self
                .objects
                .delete(scope, name_of(&dependent), &options)
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(!blocked)
    }

    async fn remove_finalizer(
        &self,
        index: usize,
        owner: &Value,
        finalizer: &str,
    ) -> Result<(), Error> {
        let uid = uid_of(owner).to_string();
        // Only from the object we looked at: a new one with the same name is not ours.
        let change = |object: &mut Value| {
            if uid_of(object) != uid {
                return;
            }
            let kept: Vec<Value> = finalizers(object)
                .into_iter()
                .filter(|f| f != finalizer)
                .map(Value::String)
                .collect();
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                if kept.is_empty() {
                    meta.remove("finalizers");
                } else {
                    meta.insert("finalizers".into(), Value::Array(kept));
                }
            }
        };
        let namespace = owner.at("/metadata/namespace").and_then(Value::as_str);
        let kind = self.kinds[index];
        modify(
            &self.objects,
            kind,
            namespace,
            name_of(owner),
            Part::Main,
            change,
        )
        .await?;
        Ok(())
    }
}

enum Owner {
    Present,
    Absent,
    /// A kind we do not serve: leave the reference alone.
    Unknown,
}

/// Keeps the graph current and queues what an event makes worth a look.
fn observe(
    queue: &WorkQueue,
    graph: &Mutex<Graph>,
    index: usize,
    old: Option<&Value>,
    new: Option<&Value>,
) {
    let Some(object) = new.or(old) else {
        return;
    };
    let item = item_key(index, &object_key(object));
    let mut wake = Vec::new();
    {
        let mut g = graph.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = old {
            for uid in owner_uids(old) {
                if let Some(set) = g.dependents.get_mut(uid) {
                    set.remove(&item);
                    if set.is_empty() {
                        g.dependents.remove(uid);
                    }
                }
            }
        }
        match new {
            Some(new) => {
                g.items.insert(uid_of(new).to_string(), item.clone());
                for uid in owner_uids(new) {
                    g.dependents
                        .entry(uid.to_string())
                        .or_default()
                        .insert(item.clone());
                }
                if !owner_references(new).is_empty() || (is_deleting(new) && has_gc_finalizer(new))
                {
                    wake.push(item.clone());
                }
            }
            None => {
                let uid = uid_of(object);
                g.items.remove(uid);
                // Its dependents lost an owner; its owners may be waiting for it to go.
                if let Some(set) = g.dependents.get(uid) {
                    wake.extend(set.iter().cloned());
                }
                for owner in owner_uids(object) {
                    if let Some(owner_item) = g.items.get(owner) {
                        wake.push(owner_item.clone());
                    }
                }
            }
        }
    }
    for item in wake {
        queue.add(item);
    }
}

impl Reconcile for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    async fn reconcile(&self, item: &str) -> Result<Action, Error> {
        let Some((index, key)) = parse_item(item) else {
            return Ok(Action::Done);
        };
        let Some(informer) = self.informers.get(index) else {
            return Ok(Action::Done);
        };
        let Some(object) = informer.get(key) else {
            return Ok(Action::Done);
        };
        if is_deleting(&object) {
            let held = finalizers(&object);
            if held.iter().any(|f| f == ORPHAN_FINALIZER) {
                self.orphan_dependents(&object).await?;
                self.remove_finalizer(index, &object, ORPHAN_FINALIZER)
                    .await?;
                return Ok(Action::Done);
            }
            if held.iter().any(|f| f == FOREGROUND_FINALIZER) {
                if self.delete_dependents(&object).await? {
                    self.remove_finalizer(index, &object, FOREGROUND_FINALIZER)
                        .await?;
                    return Ok(Action::Done);
                }
                return Ok(Action::RequeueAfter(OWNER_RECHECK));
            }
            return Ok(Action::Done);
        }
        if !owner_references(&object).is_empty() {
            self.check_owners(index, &object).await?;
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_graph_follows_owner_references_and_wakes_dependents_of_deleted_owners() {
        let queue = WorkQueue::default();
        let graph = Mutex::new(Graph::default());
        let owner = json!({"metadata": {"name": "rs", "namespace": "ns", "uid": "o1"}});
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "p1",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "o1"}]}});
        observe(&queue, &graph, 0, None, Some(&owner));
        observe(&queue, &graph, 1, None, Some(&pod));
        assert_eq!(queue.len(), 1, "a dependent is checked when seen");
        {
            let g = graph.lock().expect("lock");
            assert!(g.dependents["o1"].contains("1|ns/p"));
        }
        observe(&queue, &graph, 0, Some(&owner), None);
        // The pod was already queued; de-duplicated.
        assert_eq!(queue.len(), 1);
        observe(&queue, &graph, 1, Some(&pod), None);
        let g = graph.lock().expect("lock");
        assert!(!g.dependents.contains_key("o1"));
        assert!(!g.items.contains_key("p1"));
    }

    #[test]
    fn items_round_trip() {
        assert_eq!(parse_item(&item_key(3, "ns/a")), Some((3, "ns/a")));
        assert_eq!(parse_item("nonsense"), None);
    }
}
