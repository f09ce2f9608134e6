//! Endpoints and EndpointSlices of Services with a selector: the IPs of the pods the selector
//! matches (ready ones as addresses, the rest as not-ready, unless publishNotReadyAddresses),
//! with each Service port's targetPort resolved against the pod's named container ports, and
//! the pod's hostname when it sits in the Service's subdomain (StatefulSet pods). Services
//! without a selector keep the Endpoints their users write. `default/kubernetes` points at the
//! API servers, the raft members.
//!
//! The DNS and the proxies read the EndpointSlices; `kubectl get endpoints` reads Endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::informer::{Informer, Informers, split_key, uid_of};
use super::ownership::{enqueue_selecting, enqueue_self, is_deleting, labels, string_map};
use super::queue::WorkQueue;
use super::{Action, Error, Reconcile};
use crate::apiserver::bootstrap::DNS_MEMBERS_SLICE;
use crate::apiserver::objects::{DeleteOptions, Objects, Part, Scope};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

pub struct Kinds {
    pub services: &'static dyn Kind,
    pub pods: &'static dyn Kind,
    pub endpoints: &'static dyn Kind,
    pub slices: &'static dyn Kind,
}

pub struct EndpointsController {
    objects: Objects,
    kinds: Kinds,
    services: Arc<Informer>,
    pods: Arc<Informer>,
}

fn name_of(object: &Value) -> &str {
    object
        .at("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The Service's selector, if it has a non-empty one.
fn selector(service: &Value) -> Option<BTreeMap<String, String>> {
    let selector = string_map(service.at("/spec/selector"));
    (!selector.is_empty()).then_some(selector)
}

fn selects(service: &Value, pod_labels: &BTreeMap<String, String>) -> bool {
    selector(service).is_some_and(|s| s.iter().all(|(k, v)| pod_labels.get(k) == Some(v)))
}

fn pod_ready(pod: &Value) -> bool {
    pod.at("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True")))
}

/// A Service port's target on `pod`: the number, or the pod's container port of that name.
fn target_port(service_port: &Value, pod: &Value) -> Option<i64> {
    match service_port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => pod
            .at("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c.get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name.as_str()))
            .and_then(|p| p.get("containerPort"))
            .and_then(Value::as_i64),
        _ => service_port.get("port").and_then(Value::as_i64),
    }
}

/// One endpoint address of a pod.
struct Address {
    ip: String,
    ready: bool,
    node: Option<String>,
    hostname: Option<String>,
    pod: Value,
    ports: Vec<Value>,
}

/// What a Service selects now: one Address per pod with an IP.
fn addresses(service: &Value, pods: &[Arc<Value>]) -> Vec<Address> {
    let publish_not_ready = service.at("/spec/publishNotReadyAddresses") == Some(&json!(true));
    let service_name = name_of(service);
    let service_ports: Vec<Value> = service
        .at("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<Address> = pods
        .iter()
        .filter(|pod| !is_deleting(pod) && selects(service, &labels(pod)))
        .filter_map(|pod| {
            let ip = pod.at("/status/podIP").and_then(Value::as_str).filter(|ip| !ip.is_empty())?;
            let text = |p: &str| pod.at(p).and_then(Value::as_str).map(str::to_string);
            let hostname = text("/spec/hostname")
                .filter(|_| text("/spec/subdomain").as_deref() == Some(service_name));
            let ports = service_ports
                .iter()
                .filter_map(|sp| {
                    let port = target_port(sp, pod)?;
                    let mut p = json!({"port": port, "protocol": sp.get("protocol").cloned().unwrap_or(json!("TCP"))});
                    if let Some(name) = sp.get("name").filter(|n| n.as_str().is_some_and(|n| !n.is_empty())) {
                        p["name"] = name.clone();
                    }
                    Some(p)
                })
                .collect();
            Some(Address {
                ip: ip.to_string(),
                ready: publish_not_ready || pod_ready(pod),
                node: text("/spec/nodeName"),
                hostname,
                pod: json!({"kind": "Pod", "namespace": text("/metadata/namespace"), "name": text("/metadata/name"), "uid": text("/metadata/uid")}),
                ports,
            })
        })
        .collect();
    out.sort_by(|a, b| a.ip.cmp(&b.ip));
    out
}

/// One Endpoints subset being built: the addresses sharing a port set.
#[derive(Default)]
struct Subset {
    ready: Vec<Value>,
    not_ready: Vec<Value>,
    ports: Vec<Value>,
}

/// core/v1 Endpoints subsets: addresses grouped by their resolved port set.
fn subsets(addresses: &[Address]) -> Vec<Value> {
    let mut groups: BTreeMap<String, Subset> = BTreeMap::new();
    for a in addresses {
        let key = serde_json::to_string(&a.ports).unwrap_or_default();
        let entry = groups.entry(key).or_insert_with(|| Subset {
            ports: a.ports.clone(),
            ..Subset::default()
        });
        let mut address = json!({"ip": a.ip, "targetRef": a.pod});
        if let Some(node) = &a.node {
            address["nodeName"] = json!(node);
        }
        if let Some(hostname) = &a.hostname {
            address["hostname"] = json!(hostname);
        }
        if a.ready {
            entry.ready.push(address)
        } else {
            entry.not_ready.push(address)
        }
    }
    groups
        .into_values()
        .map(|group| {
            let mut subset = json!({"ports": group.ports});
            if !group.ready.is_empty() {
                subset["addresses"] = json!(group.ready);
            }
            if !group.not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(group.not_ready);
            }
            subset
        })
        .collect()
}

/// discovery/v1 EndpointSlice endpoints and ports.
fn slice_body(addresses: &[Address], service: &Value) -> (Vec<Value>, Vec<Value>) {
    let endpoints = addresses
        .iter()
        .map(|a| {
            let mut e = json!({
                "addresses": [a.ip],
                "conditions": {"ready": a.ready, "serving": a.ready, "terminating": false},
                "targetRef": a.pod,
            });
            if let Some(node) = &a.node {
                e["nodeName"] = json!(node);
            }
            if let Some(hostname) = &a.hostname {
                e["hostname"] = json!(hostname);
            }
            e
        })
        .collect();
    // Slice ports use the first pod's resolution (named ports may differ per pod; kube then
    // splits slices, which we do not yet).
    // An EndpointSlice port always carries a name, "" when the Service port has none, as
    // kube's controller writes it: `kubectl describe service` dereferences it unchecked (a nil
    // pointer panic in kubectl otherwise).
    let named = |p: &Value| {
        let mut p = p.clone();
        if p.get("name").is_none() {
            p["name"] = json!("");
        }
        p
    };
    let ports = addresses.first().map(|a| a.ports.iter().map(named).collect()).unwrap_or_else(|| {
        service
            .at("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|sp| json!({"name": sp.get("name").cloned().unwrap_or(json!("")), "port": sp.get("port"), "protocol": sp.get("protocol").cloned().unwrap_or(json!("TCP"))}))
            .collect()
    });
    (endpoints, ports)
}

impl EndpointsController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kinds: Kinds,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let services = informers.of(kinds.services);
        let pods = informers.of(kinds.pods);
        services.add_handler(enqueue_self(queue.clone()));
        pods.add_handler(enqueue_selecting(queue.clone(), services.clone(), selects));
        let controller = Arc::new(EndpointsController {
            objects,
            kinds,
            services,
            pods,
        });
        (controller, queue)
    }

    /// Creates or replaces (keeping metadata the server owns) the object `desired`.
    async fn put(
        &self,
        kind: &'static dyn Kind,
        namespace: &str,
        desired: Value,
    ) -> Result<(), Error> {
        let scope = Scope::new(kind, Some(namespace));
        let name = name_of(&desired).to_string();
        match self.objects.create(scope, desired.clone(), false).await {
            Ok(_) => return Ok(()),
            Err(ApiError::AlreadyExists { .. }) => {}
            Err(ApiError::Forbidden(_) | ApiError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let transform = |current: &Value| {
            let mut next = desired.clone();
            next["metadata"] = current["metadata"].clone();
            for field in ["labels", "ownerReferences"] {
                if let Some(v) = desired.at(&format!("/metadata/{field}")) {
                    next["metadata"][field] = v.clone();
                }
            }
            Ok(next)
        };
        match self
            .objects
            .update(scope, &name, Part::Main, &transform, false)
            .await
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_endpoints(&self, namespace: &str, name: &str) -> Result<(), Error> {
        let scope = Scope::new(self.kinds.endpoints, Some(namespace));
        match self
            .objects
            .delete(scope, name, &DeleteOptions::default())
            .await
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every voter's API (host, port).
    fn voter_api_addresses(&self) -> Vec<(String, i64)> {
        self.objects
            .store()
            .node()
            .members()
            .into_iter()
            .filter(|m| m.voter)
            .filter_map(|m| {
                let (host, port) = m.info.api_addr.rsplit_once(':')?;
                Some((
                    host.trim_matches(['[', ']']).to_string(),
                    port.parse().ok()?,
                ))
            })
            .collect()
    }

    /// `kube-system/kube-dns`: members add themselves to its slice when their DNS starts; the
    /// ones no longer voters (removed, or the old members of a restored backup) go here.
    async fn prune_dns_members(&self) -> Result<(), Error> {
        let hosts: Vec<String> = self
            .voter_api_addresses()
            .into_iter()
            .map(|(host, _)| host)
            .collect();
        if hosts.is_empty() {
            return Ok(());
        }
        let keep = |endpoint: &Value| {
            endpoint
                .at("/addresses/0")
                .and_then(Value::as_str)
                .is_some_and(|ip| hosts.iter().any(|h| h == ip))
        };
        let stale = self
            .objects
            .get(
                Scope::new(self.kinds.slices, Some("kube-system")),
                DNS_MEMBERS_SLICE,
                false,
            )
            .await
            .ok()
            .and_then(|slice| slice.get("endpoints").and_then(Value::as_array).cloned())
            .is_some_and(|endpoints| !endpoints.iter().all(keep));
        if !stale {
            return Ok(());
        }
        super::modify(
            &self.objects,
            self.kinds.slices,
            Some("kube-system"),
            DNS_MEMBERS_SLICE,
            Part::Main,
            |slice| {
                if let Some(endpoints) = slice.get_mut("endpoints").and_then(Value::as_array_mut) {
                    endpoints.retain(keep);
                }
            },
        )
        .await?;
        tracing::info!("dropped members that left from kube-dns's endpoints");
        Ok(())
    }

    /// `default/kubernetes`: the API servers (every voter's API address).
    async fn kubernetes_endpoints(&self) -> Result<(), Error> {
        let mut ips = self.voter_api_addresses();
        ips.sort();
        let port = ips.first().map(|(_, p)| *p).unwrap_or(6443);
        let addresses: Vec<Value> = ips.iter().map(|(ip, _)| json!({"ip": ip})).collect();
        let endpoints = json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{"addresses": addresses, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
        });
        self.put(self.kinds.endpoints, "default", endpoints).await?;
        // The proxies route by EndpointSlices: in-cluster clients reach 10.43.0.1:443 by this.
        let slice_endpoints: Vec<Value> = ips
            .iter()
            .map(|(ip, _)| json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        let slice = json!({
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {SERVICE_NAME_LABEL: "kubernetes", MANAGED_BY_LABEL: MANAGED_BY},
            },
            "addressType": "IPv4",
            "endpoints": slice_endpoints,
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        });
        self.put(self.kinds.slices, "default", slice).await
    }
}

impl Reconcile for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let (Some(namespace), name) = split_key(key) else {
            return Ok(Action::Done);
        };
        if key == "default/kubernetes" {
            self.kubernetes_endpoints().await?;
            return Ok(Action::Done);
        }
        if key == "kube-system/kube-dns" {
            self.prune_dns_members().await?;
            return Ok(Action::Done);
        }
        let Some(service) = self.services.get(key) else {
            // Slices go with their owner (garbage collector); Endpoints have none.
            self.delete_endpoints(namespace, name).await?;
            return Ok(Action::Done);
        };
        if selector(&service).is_none() || is_deleting(&service) {
            return Ok(Action::Done);
        }
        let pods = self.pods.list_namespace(namespace);
        let found = addresses(&service, &pods);
        let mut endpoints =
            json!({"metadata": {"name": name, "namespace": namespace, "labels": labels(&service)}});
        let subsets = subsets(&found);
        if !subsets.is_empty() {
            endpoints["subsets"] = json!(subsets);
        }
        self.put(self.kinds.endpoints, namespace, endpoints).await?;
        let (slice_endpoints, ports) = slice_body(&found, &service);
        let uid = uid_of(&service);
        let slice = json!({
            "metadata": {
                "name": format!("{name}-{}", uid.get(..5).unwrap_or("slice")),
                "namespace": namespace,
                "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Service", "name": name, "uid": uid,
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "addressType": "IPv4",
            "endpoints": slice_endpoints,
            "ports": ports,
        });
        self.put(self.kinds.slices, namespace, slice).await?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "hostname": name, "subdomain": "web",
                     "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
    }

    #[test]
    fn ready_and_not_ready_addresses_with_named_ports_and_hostnames() {
        let service = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}});
        let pods = vec![
            pod("web-1", "10.42.0.6", false),
            pod("web-0", "10.42.0.5", true),
        ];
        let found = addresses(&service, &pods);
        let subsets = subsets(&found);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.42.0.5");
        assert_eq!(subsets[0]["addresses"][0]["hostname"], "web-0");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "10.42.0.6");
        assert_eq!(subsets[0]["ports"][0]["port"], 8080);
        let (endpoints, ports) = slice_body(&found, &service);
        assert_eq!(endpoints[1]["conditions"]["ready"], false);
        assert_eq!(ports[0]["name"], "http");
    }

    #[test]
    fn publish_not_ready_makes_everyone_ready_and_other_labels_do_not_match() {
        let service = json!({"metadata": {"name": "db"}, "spec": {"selector": {"app": "web"},
            "publishNotReadyAddresses": true, "ports": [{"port": 5432}]}});
        let mut other = (*pod("x", "10.42.0.9", true)).clone();
        other["metadata"]["labels"] = json!({"app": "other"});
        let found = addresses(&service, &[pod("a", "10.42.0.7", false), Arc::new(other)]);
        assert_eq!(found.len(), 1);
        assert!(found[0].ready);
        assert_eq!(found[0].ports[0]["port"], 5432);
        assert!(found[0].hostname.is_none(), "subdomain is web, not db");
        let (_, ports) = slice_body(&found, &service);
        assert_eq!(
            ports[0]["name"], "",
            "an unnamed port is named \"\" in the slice"
        );
        assert!(subsets(&found)[0]["ports"][0].get("name").is_none());
    }
}
