//! core/v1 Event: what `kubectl get events` lists. Columns as kube-apiserver prints them
//! (LAST SEEN TYPE REASON OBJECT MESSAGE).

use k8s_openapi::api::core::v1::Event;
use serde_json::Value;

use super::fields::{FieldError, meta_age};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct EventStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Event",
    resource: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    tracks_generation: false,
};

impl Strategy for EventStrategy {
    type Object = Event;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, event: &Event) -> FieldErrors {
        let mut errors = FieldErrors::default();
        if event.metadata.name.as_deref().unwrap_or("").is_empty() {
            errors.push(FieldError::required("metadata.name"));
        }
        if event
            .involved_object
            .kind
            .as_deref()
            .unwrap_or("")
            .is_empty()
            && event.involved_object.name.is_none()
        {
            errors.push(FieldError::required("involvedObject"));
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Last Seen",
                "string",
                "Time when the most recent occurrence of this event was recorded.",
            ),
            Column::new(
                "Type",
                "string",
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            Column::new(
                "Reason",
                "string",
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            Column::new("Object", "string", "The object that this event is about."),
            Column::new(
                "Message",
                "string",
                "A human-readable description of the status of this operation.",
            ),
        ]
    }

    fn age_column(&self) -> bool {
        false
    }

    fn cells(&self, event: &Event, now: jiff::Timestamp) -> Vec<Value> {
        let last_seen = event
            .last_timestamp
            .as_ref()
            .map(|t| super::fields::human_duration(now.as_second() - t.0.as_second()))
            .unwrap_or_else(|| meta_age(&event.metadata, now));
        let object = format!(
            "{}/{}",
            event
                .involved_object
                .kind
                .clone()
                .unwrap_or_default()
                .to_lowercase(),
            event.involved_object.name.clone().unwrap_or_default()
        );
        vec![
            Value::String(last_seen),
            Value::String(event.type_.clone().unwrap_or_default()),
            Value::String(event.reason.clone().unwrap_or_default()),
            Value::String(object),
            Value::String(event.message.clone().unwrap_or_default()),
        ]
    }
}
