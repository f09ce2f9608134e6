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
use crate::proxy::Proxy;

/// Something that consumes one resource's watch.
pub(crate) trait Sink: Send {
    /// The initial list is complete: `items` is everything.
    fn synced(&mut self, items: Vec<Value>);
    fn upsert(&mut self, object: Value);
    fn delete(&mut self, object: &Value);
}

pub(crate) async fn follow(
    control: Arc<ControlPlane>,
    resource: &str,
    field_selector: String,
    sink: &mut (dyn Sink + Send),
) {
    let base = WatchRequest {
        resource: resource.into(),
        field_selector,
        ..WatchRequest::default()
    };
    follow_request(control, base, sink).await
}

/// `follow` for a watch narrowed beyond a field selector (a namespace, labels): `base` with
/// the resource version filled in on each (re)start.
pub(crate) async fn follow_request(
    control: Arc<ControlPlane>,
    base: WatchRequest,
    sink: &mut (dyn Sink + Send),
) {
    let resource = base.resource.as_str();
    let mut revision = 0i64;
    let mut delay = Duration::from_millis(200);
    loop {
        let request = WatchRequest {
            resource_version: revision,
            ..base.clone()
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

struct Services(Arc<ServiceCache>, Option<Arc<Proxy>>);

impl Sink for Services {
    fn synced(&mut self, items: Vec<Value>) {
        if let Some(proxy) = &self.1 {
            let copy = items.clone();
            proxy.update(|m| m.replace_services(copy));
        }
        self.0.replace(items);
    }
    fn upsert(&mut self, object: Value) {
        if let Some(proxy) = &self.1 {
            let copy = object.clone();
            proxy.update(|m| m.upsert_service(copy));
        }
        self.0.upsert(object);
    }
    fn delete(&mut self, object: &Value) {
        if let Some(proxy) = &self.1 {
            proxy.update(|m| m.delete_service(object));
        }
        self.0.remove(object);
    }
}

/// Every Service (pods' service environment variables, the proxy's rules), forever.
pub async fn services(
    control: Arc<ControlPlane>,
    cache: Arc<ServiceCache>,
    proxy: Option<Arc<Proxy>>,
) {
    follow(
        control,
        "services",
        String::new(),
        &mut Services(cache, proxy),
    )
    .await
}

struct Slices(Arc<Proxy>);

impl Sink for Slices {
    fn synced(&mut self, items: Vec<Value>) {
        self.0.update(|m| m.replace_slices(items));
    }
    fn upsert(&mut self, object: Value) {
        self.0.update(|m| m.upsert_slice(object));
    }
    fn delete(&mut self, object: &Value) {
        self.0.update(|m| m.delete_slice(object));
    }
}

/// Every EndpointSlice (the proxy's backends), forever.
pub async fn endpoint_slices(control: Arc<ControlPlane>, proxy: Arc<Proxy>) {
    follow(control, "endpointslices", String::new(), &mut Slices(proxy)).await
}

/// The Node watch's consumers: the routes to other nodes' pods and the proxy.
pub struct NodeSinks {
    pub routes: Option<super::routes::Routes>,
    pub proxy: Option<Arc<Proxy>>,
}

impl Sink for NodeSinks {
    fn synced(&mut self, items: Vec<Value>) {
        if let Some(proxy) = &self.proxy {
            let copy = items.clone();
            proxy.update(|m| m.replace_nodes(copy));
        }
        if let Some(routes) = &mut self.routes {
            routes.replace(items);
        }
    }
    fn upsert(&mut self, object: Value) {
        if let Some(proxy) = &self.proxy {
            let copy = object.clone();
            proxy.update(|m| m.upsert_node(copy));
        }
        if let Some(routes) = &mut self.routes {
            routes.upsert(object);
        }
    }
    fn delete(&mut self, object: &Value) {
        if let Some(proxy) = &self.proxy {
            proxy.update(|m| m.delete_node(object));
        }
        if let Some(routes) = &mut self.routes {
            routes.remove(object);
        }
    }
}

/// Every Node (routes to their pod networks, LoadBalancer address holders), forever.
pub async fn nodes(control: Arc<ControlPlane>, mut sinks: NodeSinks) {
    follow(control, "nodes", String::new(), &mut sinks).await
}
