//! The ingress's watches over the agent's gRPC stream: Ingresses, IngressClasses, Services and
//! EndpointSlices (every node may watch those), and one watch per TLS Secret a served Ingress
//! names (the node API allows exactly those; see nodeapi/access.rs). Each watch feeds the
//! shared [`Watched`] objects and marks what must be rebuilt.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use skiff_proto::agent::WatchRequest;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::IngressRole;
use crate::agent::control_plane::ControlPlane;
use crate::agent::watch::{Sink, follow, follow_request};
use crate::json_path::JsonPath;
use crate::proxy::model::{Model, key_of};

/// Everything the table and the certificates are built from.
#[derive(Default)]
pub struct Watched {
    pub ingresses: BTreeMap<String, Value>,
    /// By name (cluster-scoped).
    pub classes: BTreeMap<String, Value>,
    pub services: Model,
    /// `namespace/name` -> TLS Secret, None once its watch has found none; absent while the
    /// watch has not listed yet.
    pub secrets: BTreeMap<String, Option<Value>>,
    /// The routes must be rebuilt.
    pub routes_dirty: bool,
    /// The certificates (and the set of Secrets to watch) must be rebuilt.
    pub certs_dirty: bool,
    /// Resources whose first list arrived; routes are served once all four have.
    synced: BTreeSet<&'static str>,
}

impl Watched {
    pub fn loaded(&self) -> bool {
        self.synced.len() == FEEDS.len()
    }
}

#[derive(Clone, Copy, Debug)]
enum Feed {
    Ingresses,
    Classes,
    Services,
    Slices,
}

const FEEDS: [(&str, Feed); 4] = [
    ("ingresses", Feed::Ingresses),
    ("ingressclasses", Feed::Classes),
    ("services", Feed::Services),
    ("endpointslices", Feed::Slices),
];

fn name_of(object: &Value) -> String {
    object
        .at("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

struct FeedSink {
    role: Arc<IngressRole>,
    feed: Feed,
    resource: &'static str,
}

impl FeedSink {
    fn apply(&self, change: impl FnOnce(&mut Watched, Feed)) {
        let feed = self.feed;
        self.role.update(|watched| {
            change(watched, feed);
            watched.routes_dirty = true;
            // Ingresses and classes decide which certificates and Secrets are in use.
            if matches!(feed, Feed::Ingresses | Feed::Classes) {
                watched.certs_dirty = true;
            }
        });
    }
}

impl Sink for FeedSink {
    fn synced(&mut self, items: Vec<Value>) {
        let resource = self.resource;
        self.apply(|w, feed| {
            w.synced.insert(resource);
            match feed {
                Feed::Ingresses => {
                    w.ingresses = items.into_iter().map(|i| (key_of(&i), i)).collect()
                }
                Feed::Classes => w.classes = items.into_iter().map(|c| (name_of(&c), c)).collect(),
                Feed::Services => w.services.replace_services(items),
                Feed::Slices => w.services.replace_slices(items),
            }
        });
    }

    fn upsert(&mut self, object: Value) {
        self.apply(|w, feed| match feed {
            Feed::Ingresses => {
                w.ingresses.insert(key_of(&object), object);
            }
            Feed::Classes => {
                w.classes.insert(name_of(&object), object);
            }
            Feed::Services => w.services.upsert_service(object),
            Feed::Slices => w.services.upsert_slice(object),
        });
    }

    fn delete(&mut self, object: &Value) {
        self.apply(|w, feed| match feed {
            Feed::Ingresses => {
                w.ingresses.remove(&key_of(object));
            }
            Feed::Classes => {
                w.classes.remove(&name_of(object));
            }
            Feed::Services => w.services.delete_service(object),
            Feed::Slices => w.services.delete_slice(object),
        });
    }
}

/// Starts the four cluster-wide watches; they run as long as the agent.
pub fn start(role: &Arc<IngressRole>, control: &Arc<ControlPlane>) -> Vec<JoinHandle<()>> {
    FEEDS
        .iter()
        .map(|&(resource, feed)| {
            let mut sink = FeedSink {
                role: role.clone(),
                feed,
                resource,
            };
            let control = control.clone();
            tokio::spawn(async move { follow(control, resource, String::new(), &mut sink).await })
        })
        .collect()
}

/// One TLS Secret's watch.
struct SecretSink {
    role: Arc<IngressRole>,
    key: String,
}

impl SecretSink {
    fn set(&self, secret: Option<Value>) {
        let key = self.key.clone();
        self.role.update(|w| {
            w.secrets.insert(key, secret);
            w.certs_dirty = true;
        });
    }
}

impl Sink for SecretSink {
    fn synced(&mut self, items: Vec<Value>) {
        self.set(items.into_iter().next());
    }
    fn upsert(&mut self, object: Value) {
        self.set(Some(object));
    }
    fn delete(&mut self, _object: &Value) {
        self.set(None);
    }
}

/// The per-Secret watches, kept to the set the served Ingresses name.
pub struct SecretWatches {
    control: Arc<ControlPlane>,
    running: HashMap<String, JoinHandle<()>>,
}

impl SecretWatches {
    pub fn new(control: Arc<ControlPlane>) -> Self {
        SecretWatches {
            control,
            running: HashMap::new(),
        }
    }

    /// Starts watches for new names in `wanted` (`namespace/name`), stops the others and
    /// forgets their Secrets.
    pub fn follow(&mut self, role: &Arc<IngressRole>, wanted: &BTreeSet<String>) {
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(task) = self.running.remove(&key) {
                task.abort();
            }
            debug!(secret = %key, "no longer watched");
            role.update(|w| {
                w.secrets.remove(&key);
                w.certs_dirty = true;
            });
        }
        for key in wanted {
            if self.running.contains_key(key) {
                continue;
            }
            let Some((namespace, name)) = key.split_once('/') else {
                continue;
            };
            let request = WatchRequest {
                resource: "secrets".into(),
                namespace: namespace.into(),
                field_selector: format!("metadata.name={name}"),
                ..WatchRequest::default()
            };
            let mut sink = SecretSink {
                role: role.clone(),
                key: key.clone(),
            };
            let control = self.control.clone();
            info!(secret = %key, "watching TLS secret");
            let task =
                tokio::spawn(async move { follow_request(control, request, &mut sink).await });
            self.running.insert(key.clone(), task);
        }
    }
}

impl Drop for SecretWatches {
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}
