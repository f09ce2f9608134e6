//! Events the scheduler and the workload controllers record (core/v1 Event objects written
//! through `Objects`), so `kubectl describe` shows why a pod is Pending or what a Job did.
//!
//! Recording is best effort, as client-go's recorder: a failed write is logged, never turned
//! into a reconcile error, because retrying a whole reconcile for a lost event would repeat the
//! actions the event describes.

use serde_json::{Value, json};

use super::informer::uid_of;
use crate::apiserver::objects::{DeleteOptions, Objects, Scope, name_of, now_rfc3339};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::{self, Kind};

/// Normal or Warning, as Kubernetes' event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Writes Events on behalf of one component (the event's `source.component`).
#[derive(Clone)]
pub struct Recorder {
    objects: Objects,
    events: Option<&'static dyn Kind>,
    component: &'static str,
}

impl Recorder {
    pub fn new(objects: Objects, component: &'static str) -> Self {
        Recorder {
            objects,
            events: registry::lookup("", "v1", "events"),
            component,
        }
    }

    /// Records `reason`/`message` about `involved` (a stored object with apiVersion and kind).
    pub async fn record(&self, involved: &Value, kind: EventType, reason: &str, message: &str) {
        let Some(events) = self.events else {
            return;
        };
        let event = event_for(involved, kind, reason, message, self.component);
        let namespace = involved
            .at("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let scope = Scope::new(events, Some(namespace));
        if let Err(e) = self.objects.create(scope, event, false).await {
            tracing::debug!(error = %e, reason, "could not record an event");
        }
    }
}

impl Recorder {
    /// Deletes `dependent` (of `kind`) if it is still the object that was read (a uid
    /// precondition, so a replacement with the same name survives) and records
    /// `SuccessfulDelete` with `message` on `owner`. Already gone, or replaced, counts as done.
    pub async fn delete_dependent(
        &self,
        owner: &Value,
        kind: &'static dyn Kind,
        dependent: &Value,
        propagation: Option<&str>,
        message: &str,
    ) -> Result<(), ApiError> {
        let namespace = dependent.at("/metadata/namespace").and_then(Value::as_str);
        let options = DeleteOptions {
            uid: Some(uid_of(dependent).to_string()),
            propagation_policy: propagation.map(str::to_string),
            ..DeleteOptions::default()
        };
        let scope = Scope::new(kind, namespace);
        match self
            .objects
            .delete(scope, name_of(dependent), &options)
            .await
        {
            Ok(_) => {
                self.record(owner, EventType::Normal, "SuccessfulDelete", message)
                    .await;
                Ok(())
            }
            Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The Event object: named `<object>.<unique hex>` as client-go names them.
pub fn event_for(
    involved: &Value,
    kind: EventType,
    reason: &str,
    message: &str,
    component: &str,
) -> Value {
    let text = |p: &str| involved.at(p).cloned().unwrap_or(Value::Null);
    let now = now_rfc3339();
    let nanos = jiff::Timestamp::now().as_nanosecond();
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{}.{:x}", name_of(involved), nanos),
            "namespace": text("/metadata/namespace"),
        },
        "involvedObject": {
            "apiVersion": text("/apiVersion"),
            "kind": text("/kind"),
            "name": text("/metadata/name"),
            "namespace": text("/metadata/namespace"),
            "uid": text("/metadata/uid"),
            "resourceVersion": text("/metadata/resourceVersion"),
        },
        "reason": reason,
        "message": message,
        "type": match kind { EventType::Normal => "Normal", EventType::Warning => "Warning" },
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_and_describe_their_object() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"}});
        let e = event_for(
            &pod,
            EventType::Warning,
            "FailedScheduling",
            "no",
            "default-scheduler",
        );
        assert!(
            e["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("p."))
        );
        assert_eq!(e["involvedObject"]["uid"], "u");
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["source"]["component"], "default-scheduler");
    }
}
