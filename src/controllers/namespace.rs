//! Namespace lifecycle: a deleted namespace is `Terminating` (the API marks it, and refuses
//! new content in it) until this controller has deleted everything in it and every finalizer
//! of that content has let go; then it drops the namespace's `kubernetes` finalizer and the
//! namespace goes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::informer::{Informer, Informers};
use super::ownership::{enqueue_self, is_deleting};
use super::queue::WorkQueue;
use super::{Action, Error, Reconcile, modify};
use crate::apiserver::objects::{DeleteOptions, ListOptions, Objects, Part, Scope};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::{self, Kind};

/// How often a terminating namespace is looked at while content with finalizers remains.
const RECHECK: Duration = Duration::from_secs(1);

pub struct NamespaceController {
    objects: Objects,
    kind: &'static dyn Kind,
    namespaces: Arc<Informer>,
}

impl NamespaceController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kind: &'static dyn Kind,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let namespaces = informers.of(kind);
        namespaces.add_handler(enqueue_self(queue.clone()));
        let controller = Arc::new(NamespaceController {
            objects,
            kind,
            namespaces,
        });
        (controller, queue)
    }

    /// Deletes what is left in `namespace`; returns how many objects remain (deleted or not).
    async fn delete_contents(&self, namespace: &str) -> Result<usize, Error> {
        let mut remaining = 0;
        let options = DeleteOptions {
            propagation_policy: Some("Background".into()),
            ..DeleteOptions::default()
        };
        for kind in registry::all_kinds()
            .into_iter()
            .filter(|k| k.info().namespaced)
        {
            let scope = Scope::new(kind, Some(namespace));
            let items = self
                .objects
                .list(scope, &ListOptions::default())
                .await?
                .items;
            remaining += items.len();
            for item in items.iter().filter(|i| !is_deleting(i)) {
                let name = item
                    .at("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match self.objects.delete(scope, name, &options).await {
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(remaining)
    }
}

impl Reconcile for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(namespace) = self.namespaces.get(key) else {
            return Ok(Action::Done);
        };
        if !is_deleting(&namespace) {
            return Ok(Action::Done);
        }
        if self.delete_contents(key).await? > 0 {
            return Ok(Action::RequeueAfter(RECHECK));
        }
        tracing::info!(namespace = key, "namespace is empty; finalizing");
        modify(&self.objects, self.kind, None, key, Part::Finalize, |ns| {
            if let Some(spec) = ns.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("finalizers");
            }
        })
        .await?;
        match self
            .objects
            .delete(Scope::new(self.kind, None), key, &DeleteOptions::default())
            .await
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(Action::Done),
            Err(e) => Err(e.into()),
        }
    }
}
