//! What the proxy routes, built from Services and EndpointSlices: per service port, its
//! frontends (ClusterIP; external IPs and load-balancer ingress IPs; the node port) and its
//! ready backends. Pure data: both data planes (`nft`, `iptables`) render from it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::json_path::JsonPath;
use serde_json::Value;

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

fn ipv4s<'a>(values: impl Iterator<Item = &'a Value>) -> impl Iterator<Item = Ipv4Addr> {
    values.filter_map(|v| v.as_str().and_then(|s| s.parse().ok()))
}

fn port_number(v: Option<&Value>) -> Option<u16> {
    v.and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// `namespace/name` of an object.
pub fn key_of(object: &Value) -> String {
    format!(
        "{}/{}",
        text(object, "/metadata/namespace"),
        text(object, "/metadata/name")
    )
}

/// One ready endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The node the endpoint runs on (externalTrafficPolicy Local keeps to this node's).
    pub node: String,
}

/// One port of one Service, ready to render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name/protocol/port`: unique, and stable across changes of everything else.
    pub id: String,
    /// "tcp", "udp" or "sctp" (the data planes' names).
    pub protocol: &'static str,
    pub port: u16,
    pub cluster_ip: Option<Ipv4Addr>,
    /// `spec.externalIPs` and `status.loadBalancer.ingress[].ip`: reached from outside.
    pub external_ips: Vec<Ipv4Addr>,
    pub node_port: Option<u16>,
    /// Sorted, without duplicates.
    pub backends: Vec<Backend>,
    /// externalTrafficPolicy Local: external traffic (node port, external IPs) only to this
    /// node's backends, with the client's address kept.
    pub external_local: bool,
    /// sessionAffinity ClientIP: a client keeps its backend for this many seconds.
    pub affinity_seconds: Option<u32>,
}

/// Services and slices as the proxy last saw them.
#[derive(Default)]
pub struct Model {
    services: BTreeMap<String, Value>,
    /// `namespace/service` -> slice key -> slice
    slices: BTreeMap<String, BTreeMap<String, Value>>,
    /// Node name -> Node (who holds LoadBalancer pool addresses).
    nodes: BTreeMap<String, Value>,
}

/// The Service an EndpointSlice belongs to (`namespace/service`), from its label.
fn slice_owner(slice: &Value) -> String {
    format!(
        "{}/{}",
        text(slice, "/metadata/namespace"),
        text(slice, "/metadata/labels/kubernetes.io~1service-name")
    )
}

impl Model {
    pub fn upsert_service(&mut self, service: Value) {
        self.services.insert(key_of(&service), service);
    }

    pub fn delete_service(&mut self, service: &Value) {
        self.services.remove(&key_of(service));
    }

    pub fn replace_services(&mut self, all: Vec<Value>) {
        self.services = all.into_iter().map(|s| (key_of(&s), s)).collect();
    }

    pub fn upsert_slice(&mut self, slice: Value) {
        // A slice relabelled to another Service must leave its old one.
        self.delete_slice(&slice);
        self.slices
            .entry(slice_owner(&slice))
            .or_default()
            .insert(key_of(&slice), slice);
    }

    pub fn delete_slice(&mut self, slice: &Value) {
        let key = key_of(slice);
        self.slices.retain(|_, slices| {
            slices.remove(&key);
            !slices.is_empty()
        });
    }

    pub fn replace_slices(&mut self, all: Vec<Value>) {
        self.slices.clear();
        for slice in all {
            self.upsert_slice(slice);
        }
    }

    pub fn upsert_node(&mut self, node: Value) {
        self.nodes
            .insert(text(&node, "/metadata/name").to_string(), node);
    }

    pub fn delete_node(&mut self, node: &Value) {
        self.nodes.remove(text(node, "/metadata/name"));
    }

    pub fn replace_nodes(&mut self, all: Vec<Value>) {
        self.nodes.clear();
        for node in all {
            self.upsert_node(node);
        }
    }

    pub fn nodes(&self) -> &BTreeMap<String, Value> {
        &self.nodes
    }

    /// One Service by `namespace/name` (the ingress resolves its backends' ports here).
    pub fn service(&self, key: &str) -> Option<&Value> {
        self.services.get(key)
    }

    /// The EndpointSlices of the Service `namespace/name`.
    pub fn slices_of(&self, key: &str) -> impl Iterator<Item = &Value> + Clone {
        self.slices.get(key).into_iter().flat_map(BTreeMap::values)
    }

    /// The load-balancer ingress addresses of every LoadBalancer Service.
    pub fn load_balancer_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.services
            .values()
            .filter(|s| text(s, "/spec/type") == "LoadBalancer")
            .filter_map(|s| {
                s.at("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
            })
            .flat_map(|ingress| ipv4s(ingress.iter().filter_map(|i| i.get("ip"))))
            .collect()
    }

    /// Every routable service port.
    pub fn ports(&self) -> Vec<ServicePort> {
        let mut out = Vec::new();
        for (key, service) in &self.services {
            let no_slices = BTreeMap::new();
            let slices = self.slices.get(key).unwrap_or(&no_slices);
            service_ports(key, service, slices.values(), &mut out);
        }
        out
    }
}

/// The ports of one Service, with the ready endpoints of its slices.
fn service_ports<'a>(
    key: &str,
    service: &Value,
    slices: impl Iterator<Item = &'a Value> + Clone,
    out: &mut Vec<ServicePort>,
) {
    let cluster_ip = text(service, "/spec/clusterIP");
    if cluster_ip.is_empty()
        || cluster_ip == "None"
        || text(service, "/spec/type") == "ExternalName"
    {
        return;
    }
    let empty = Vec::new();
    let mut external_ips: Vec<Ipv4Addr> = ipv4s(
        service
            .at("/spec/externalIPs")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .iter(),
    )
    .collect();
    let ingress = service
        .at("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    external_ips.extend(ipv4s(ingress.iter().filter_map(|i| i.get("ip"))));
    external_ips.sort();
    external_ips.dedup();
    let affinity_seconds = (text(service, "/spec/sessionAffinity") == "ClientIP").then(|| {
        service
            .at("/spec/sessionAffinityConfig/clientIP/timeoutSeconds")
            .and_then(Value::as_u64)
            .and_then(|s| u32::try_from(s).ok())
            .filter(|s| *s > 0)
            .unwrap_or(10_800)
    });
    let external_local = text(service, "/spec/externalTrafficPolicy") == "Local";
    for port in service
        .at("/spec/ports")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let protocol = match text(port, "/protocol") {
            "UDP" => "udp",
            "SCTP" => "sctp",
            _ => "tcp",
        };
        let Some(number) = port_number(port.get("port")) else {
            continue;
        };
        let mut backends = ready_backends(slices.clone(), text(port, "/name"), protocol);
        backends.sort();
        backends.dedup();
        out.push(ServicePort {
            id: format!("{key}/{protocol}/{number}"),
            protocol,
            port: number,
            cluster_ip: cluster_ip.parse().ok(),
            external_ips: external_ips.clone(),
            node_port: port_number(port.get("nodePort")),
            backends,
            external_local,
            affinity_seconds,
        });
    }
}

/// The ready, not terminating endpoints of the slices' port named `port_name`.
pub fn ready_backends<'a>(
    slices: impl Iterator<Item = &'a Value>,
    port_name: &str,
    protocol: &str,
) -> Vec<Backend> {
    let mut backends = Vec::new();
    for slice in slices {
        if text(slice, "/addressType") == "IPv6" {
            continue;
        }
        let target = slice
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| {
                let slice_protocol = match text(p, "/protocol") {
                    "" => "tcp",
                    other => other,
                };
                text(p, "/name") == port_name && slice_protocol.eq_ignore_ascii_case(protocol)
            })
            .and_then(|p| port_number(p.get("port")));
        let Some(target) = target else { continue };
        for endpoint in slice
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // Kubernetes: a missing `ready` means ready; terminating endpoints get no new
            // connections.
            let ready = endpoint
                .at("/conditions/ready")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let terminating = endpoint
                .at("/conditions/terminating")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            let addresses = endpoint.get("addresses").and_then(Value::as_array);
            for ip in ipv4s(addresses.into_iter().flatten()) {
                backends.push(Backend {
                    ip,
                    port: target,
                    node: text(endpoint, "/nodeName").to_string(),
                });
            }
        }
    }
    backends
}

/// Service ports for the data planes' tests.
#[cfg(test)]
pub mod fixtures {
    use super::*;

    /// `default/web` port 80 at 10.43.0.20 with node port 30080.
    pub fn web(backends: Vec<Backend>) -> ServicePort {
        ServicePort {
            id: "default/web/tcp/80".into(),
            protocol: "tcp",
            port: 80,
            cluster_ip: Some(Ipv4Addr::new(10, 43, 0, 20)),
            external_ips: vec![],
            node_port: Some(30080),
            backends,
            external_local: false,
            affinity_seconds: None,
        }
    }

    /// An endpoint on port 8080 of `node`.
    pub fn backend(ip: &str, node: &str) -> Backend {
        Backend {
            ip: ip.parse().expect("ip"),
            port: 8080,
            node: node.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn web_service() -> Value {
        json!({"metadata": {"namespace": "default", "name": "web"},
               "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.20",
                        "externalIPs": ["192.168.255.100"],
                        "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                                  {"name": "dns", "port": 53, "protocol": "UDP"}]},
               "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.200"}]}}})
    }

    fn slice(name: &str, service: &str, endpoints: Value) -> Value {
        json!({"metadata": {"namespace": "default", "name": name,
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                         {"name": "dns", "port": 5353, "protocol": "UDP"}],
               "endpoints": endpoints})
    }

    #[test]
    fn ports_carry_frontends_ready_backends_and_policies() {
        let mut model = Model::default();
        model.upsert_service(web_service());
        model.upsert_slice(slice(
            "web-1",
            "web",
            json!([
                {"addresses": ["10.42.1.5"], "nodeName": "b", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.5"], "nodeName": "a"},
                {"addresses": ["10.42.0.6"], "nodeName": "a", "conditions": {"ready": false}},
                {"addresses": ["10.42.0.7"], "nodeName": "a", "conditions": {"ready": true, "terminating": true}},
            ]),
        ));
        let ports = model.ports();
        assert_eq!(ports.len(), 2);
        let http = &ports[0];
        assert_eq!(http.id, "default/web/tcp/80");
        assert_eq!(http.cluster_ip, Some(Ipv4Addr::new(10, 43, 0, 20)));
        assert_eq!(
            http.external_ips,
            vec![
                Ipv4Addr::new(10, 99, 0, 200),
                Ipv4Addr::new(192, 168, 255, 100)
            ]
        );
        assert_eq!(http.node_port, Some(30080));
        let ips: Vec<String> = http
            .backends
            .iter()
            .map(|b| format!("{}:{}", b.ip, b.port))
            .collect();
        assert_eq!(ips, ["10.42.0.5:8080", "10.42.1.5:8080"]);
        assert!(http.external_local);
        assert_eq!(http.affinity_seconds, Some(10_800));
        let dns = &ports[1];
        assert_eq!((dns.protocol, dns.port, dns.node_port), ("udp", 53, None));
        assert_eq!(dns.backends[0].port, 5353);
    }

    #[test]
    fn slices_follow_their_service_and_deletes() {
        let mut model = Model::default();
        model.upsert_service(web_service());
        let one = slice("s1", "web", json!([{"addresses": ["10.42.0.5"]}]));
        model.upsert_slice(one.clone());
        assert_eq!(model.ports()[0].backends.len(), 1);
        // Relabelled to another Service: it no longer feeds `web`.
        model.upsert_slice(slice("s1", "other", json!([{"addresses": ["10.42.0.5"]}])));
        assert!(model.ports()[0].backends.is_empty());
        model.upsert_slice(one.clone());
        model.delete_slice(&one);
        assert!(model.ports()[0].backends.is_empty());
        // Headless and ExternalName Services are not routed.
        model.replace_services(vec![
            json!({"metadata": {"namespace": "default", "name": "h"},
                   "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            json!({"metadata": {"namespace": "default", "name": "e"},
                   "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ]);
        assert!(model.ports().is_empty());
    }
}
