//! ResourceQuota status, as kube-controller-manager's resourcequota controller keeps it:
//! status.hard mirrors spec.hard and status.used is recounted from the namespace's objects.
//! Admission charges growth in the write's own transaction (`apiserver::admission::quota`);
//! this loop is what gives units back when objects go away or pods finish, and what fills in
//! a new or changed quota.
//!
//! A recount is written only if the quota is still at the revision it was read at, so a charge
//! admitted meanwhile is never overwritten by a count that missed it: the write then conflicts
//! and the key is recounted.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::informer::{Handler, Informer, Informers, split_key};
use super::ownership::{enqueue_self, is_deleting};
use super::queue::WorkQueue;
use super::{Action, Error, Reconcile};
use crate::apiserver::admission::quota::{recount, with_status};
use crate::apiserver::objects::{Objects, Part, Scope};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;

/// Kinds without an informer here (Secrets, `count/<anything>`) are recounted this often.
const FULL_RECOUNT_EVERY: Duration = Duration::from_secs(30);

pub struct Kinds {
    pub quotas: &'static dyn Kind,
    /// Kinds whose changes release or take quota: each change requeues the namespace's quotas.
    pub counted: Vec<&'static dyn Kind>,
}

pub struct ResourceQuotaController {
    objects: Objects,
    kind: &'static dyn Kind,
    quotas: Arc<Informer>,
}

/// A handler queueing every quota of a changed object's namespace.
fn enqueue_namespace_quotas(queue: Arc<WorkQueue>, quotas: Arc<Informer>) -> Handler {
    Arc::new(move |old, new| {
        let namespace = new
            .or(old)
            .and_then(|o| o.at("/metadata/namespace"))
            .and_then(Value::as_str);
        if let Some(namespace) = namespace {
            for quota in quotas.list_namespace(namespace) {
                queue.add(super::informer::object_key(&quota));
            }
        }
    })
}

impl ResourceQuotaController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kinds: Kinds,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let quotas = informers.of(kinds.quotas);
        quotas.add_handler(enqueue_self(queue.clone()));
        for kind in kinds.counted {
            informers
                .of(kind)
                .add_handler(enqueue_namespace_quotas(queue.clone(), quotas.clone()));
        }
        let controller = Arc::new(ResourceQuotaController {
            objects,
            kind: kinds.quotas,
            quotas,
        });
        (controller, queue)
    }
}

impl Reconcile for ResourceQuotaController {
    fn name(&self) -> &'static str {
        "resourcequota"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(quota) = self.quotas.get(key) else {
            return Ok(Action::Done);
        };
        if is_deleting(&quota) {
            return Ok(Action::Done);
        }
        let (Some(namespace), name) = split_key(key) else {
            return Ok(Action::Done);
        };
        let used = recount(&self.objects, namespace, &quota).await?;
        let counted = with_status(quota.as_ref().clone(), &used);
        if counted.get("status") == quota.get("status") {
            return Ok(Action::RequeueAfter(FULL_RECOUNT_EVERY));
        }
        // Guarded by the revision the count started from (see the module comment).
        let read_at = quota
            .at("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null);
        let status = counted.get("status").cloned().unwrap_or(Value::Null);
        let transform = |current: &Value| {
            let mut next = current.clone();
            next["status"] = status.clone();
            next["metadata"]["resourceVersion"] = read_at.clone();
            Ok(next)
        };
        let scope = Scope::new(self.kind, Some(namespace));
        match self
            .objects
            .update(scope, name, Part::Status, &transform, false)
            .await
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(Action::RequeueAfter(FULL_RECOUNT_EVERY)),
            Err(e) => Err(e.into()),
        }
    }
}
