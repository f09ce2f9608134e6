//! The agent's watches over gRPC: list, then changes from the last revision seen; after a
//! disconnect they resume from that revision (on any member), and re-list only when it was
//! compacted away.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use skiff_proto::agent::{WatchRequest, watch_event};
use tonic::Code;
use tracing::{debug, info, warn};

use super::control_plane::ControlPlane;
use super::pods::{PodManager, ServiceCache};

/// Something that consumes one resource's watch.
trait Sink: Send {
    /// The initial list is complete: `items` is everything.
    fn synced(&mut self, items: Vec<Value>);
    fn upsert(&mut self, object: Value);
    fn delete(&mut self, object: &Value);
}

async fn follow(
    control: Arc<ControlPlane>,
    resource: &str,
    field_selector: String,
    sink: &mut (dyn Sink + Send),
) {
    let mut revision = 0i64;
    let mut delay = Duration::from_millis(200);
    loop {
        let request = WatchRequest {
            resource: resource.into(),
            field_selector: field_selector.clone(),
            resource_version: revision,
            ..WatchRequest::default()
        };
        let mut stream = match control.watch(request).await {
            Ok(stream) => stream,
            Err(status) => {
                if status.code() == Code::OutOfRange {
                    info!(resource, revision, "watch revision compacted; re-listing");
                    revision = 0;
                } else {
                    warn!(resource, error = %status.message(), "watch failed; retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut initial: Option<Vec<Value>> = (revision == 0).then(Vec::new);
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    delay = Duration::from_millis(200);
                    let kind = watch_event::Type::try_from(event.r#type)
                        .unwrap_or(watch_event::Type::Bookmark);
                    match kind {
                        watch_event::Type::Synced => {
                            if let Some(items) = initial.take() {
                                sink.synced(items);
                            }
                            revision = revision.max(event.resource_version);
                            continue;
                        }
                        watch_event::Type::Bookmark => {
                            revision = revision.max(event.resource_version);
                            continue;
                        }
                        _ => {}
                    }
                    let Ok(object) = serde_json::from_slice::<Value>(&event.object) else {
                        continue;
                    };
                    match (&mut initial, kind) {
                        (Some(items), _) => items.push(object),
                        (None, watch_event::Type::Deleted) => sink.delete(&object),
                        (None, _) => sink.upsert(object),
                    }
                    if initial.is_none() {
                        revision = revision.max(event.resource_version);
                    }
                }
                Ok(None) => {
                    debug!(resource, "watch ended; resuming");
                    break;
                }
                Err(status) => {
                    if status.code() == Code::OutOfRange {
                        revision = 0;
                    }
                    warn!(resource, error = %status.message(), revision, "watch broke; resuming");
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
}

impl Sink for PodManager {
    fn synced(&mut self, items: Vec<Value>) {
        self.retain(&items);
        for pod in items {
            self.update(pod);
        }
    }
    fn upsert(&mut self, object: Value) {
        self.update(object);
    }
    fn delete(&mut self, object: &Value) {
        PodManager::delete(self, object);
    }
}

/// The pods bound to `node`, forever.
pub async fn pods(control: Arc<ControlPlane>, node: String, mut manager: PodManager) {
    follow(
        control,
        "pods",
        format!("spec.nodeName={node}"),
        &mut manager,
    )
    .await
}

struct Services(Arc<ServiceCache>);

impl Sink for Services {
    fn synced(&mut self, items: Vec<Value>) {
        self.0.replace(items);
    }
    fn upsert(&mut self, object: Value) {
        self.0.upsert(object);
    }
    fn delete(&mut self, object: &Value) {
        self.0.remove(object);
    }
}

/// Every Service (for pods' service environment variables), forever.
pub async fn services(control: Arc<ControlPlane>, cache: Arc<ServiceCache>) {
    follow(control, "services", String::new(), &mut Services(cache)).await
}

impl Sink for super::routes::Routes {
    fn synced(&mut self, items: Vec<Value>) {
        self.replace(items);
    }
    fn upsert(&mut self, object: Value) {
        super::routes::Routes::upsert(self, object);
    }
    fn delete(&mut self, object: &Value) {
        self.remove(object);
    }
}

/// Every Node (routes to their pod networks), forever.
pub async fn nodes(control: Arc<ControlPlane>, mut routes: super::routes::Routes) {
    follow(control, "nodes", String::new(), &mut routes).await
}
