//! Cluster DNS wiring: the flags, the in-process feed that turns this member's copies of
//! Services, EndpointSlices and Pods into skiff-dns's plain input structs, and the server task.
//!
//! The feed follows this member's own replica (a `Mirror` per prefix), so every control-plane
//! member answers from local state: a query never waits for raft, and a deleted Service goes
//! NXDOMAIN as soon as this member applies the delete.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, anyhow};
use serde::Deserialize;
use serde_json::Value;
use skiff_dns::{ClusterDns, DnsConfig, Endpoint, EndpointSlice, IndexConfig, Pod, Port, Service};
use skiff_dns::{ServiceKind, server::BoundServer};
use skiff_raft::RaftNode;

use crate::apiserver::mirror::Mirror;
use crate::cli::ServerArgs;
use crate::json_path::JsonPath;

const SERVICES: &str = "/registry/services/";
const ENDPOINT_SLICES: &str = "/registry/discovery.k8s.io/endpointslices/";
const PODS: &str = "/registry/pods/";
/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where DNS listens, from `--cluster-dns-listen`; `explicit` says whether a bind failure is
/// fatal (the user asked for it) or only a warning (the default port 53 needs root).
#[derive(Debug, PartialEq, Eq)]
pub struct DnsListen {
    pub addr: SocketAddr,
    pub explicit: bool,
}

/// Parses the DNS flags; `None` when DNS is turned off.
pub fn listen_from_args(args: &ServerArgs) -> anyhow::Result<Option<DnsListen>> {
    match args.cluster_dns_listen.as_deref() {
        Some("off") => Ok(None),
        // `:PORT`: the advertised address on another port (`skiff up` without root).
        Some(port) if port.starts_with(':') => {
            let ip: IpAddr = args
                .advertise
                .parse()
                .map_err(|_| anyhow!("--advertise must be an IP address"))?;
            let port: u16 = port[1..]
                .parse()
                .with_context(|| format!("--cluster-dns-listen: {port:?} is not :PORT"))?;
            Ok(Some(DnsListen {
                addr: SocketAddr::new(ip, port),
                explicit: true,
            }))
        }
        Some(addr) => Ok(Some(DnsListen {
            addr: addr
                .parse()
                .with_context(|| format!("--cluster-dns-listen: {addr:?} is not IP:port"))?,
            explicit: true,
        })),
        None => {
            let ip: IpAddr = args
                .advertise
                .parse()
                .map_err(|_| anyhow!("--advertise must be an IP address"))?;
            Ok(Some(DnsListen {
                addr: SocketAddr::new(ip, 53),
                explicit: false,
            }))
        }
    }
}

/// `--dns-upstream` values: an IP means port 53.
pub fn upstreams_from_args(args: &ServerArgs) -> anyhow::Result<Vec<SocketAddr>> {
    args.dns_upstream
        .iter()
        .map(|text| {
            text.parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| anyhow!("--dns-upstream: {text:?} is not an IP or IP:port"))
        })
        .collect()
}

/// Binds cluster DNS (before anything is spawned, so a used port is reported at startup) and
/// returns the server plus the state the feed keeps current. `Ok(None)`: DNS is off, or the
/// default address could not be bound.
pub async fn bind(args: &ServerArgs) -> anyhow::Result<Option<(ClusterDns, BoundServer)>> {
    let Some(listen) = listen_from_args(args)? else {
        return Ok(None);
    };
    let dns = ClusterDns::new(DnsConfig {
        index: IndexConfig {
            zone: args.cluster_domain.trim_end_matches('.').to_string(),
            ..Default::default()
        },
        upstreams: upstreams_from_args(args)?,
    });
    match dns.clone().bind(listen.addr).await {
        Ok(server) => Ok(Some((dns, server))),
        Err(e) if !listen.explicit => {
            tracing::warn!(error = %e, "cluster DNS disabled (pass --cluster-dns-listen to choose an address)");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts the feed (one mirror per prefix, each its own task) and the server task.
pub fn spawn(node: &RaftNode, dns: ClusterDns, server: BoundServer) {
    let feed = dns.clone();
    Mirror::follow(node.clone(), SERVICES, move |objects| {
        feed.set_services(objects.values().filter_map(service).collect())
    });
    let feed = dns.clone();
    Mirror::follow(node.clone(), ENDPOINT_SLICES, move |objects| {
        feed.set_endpoint_slices(objects.values().filter_map(endpoint_slice).collect())
    });
    let feed = dns;
    // Only pods with an address are kept, and only their addresses.
    Mirror::follow_projected(
        node.clone(),
        PODS,
        |_, bytes| pod(bytes),
        move |pods: &BTreeMap<String, Pod>| feed.set_pods(pods.values().cloned().collect()),
    );
    tokio::spawn(async move {
        if let Err(e) = server.run().await {
            tracing::error!(error = %e, "cluster DNS stopped");
        }
    });
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.at(pointer).and_then(Value::as_str)
}

fn ips(values: Option<&Value>) -> Vec<IpAddr> {
    values
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ip_at(object: &Value, pointer: &str) -> Vec<IpAddr> {
    str_at(object, pointer)
        .and_then(|text| text.parse().ok())
        .into_iter()
        .collect()
}

fn ports(values: Option<&Value>, number_field: &str) -> Vec<Port> {
    let Some(list) = values.and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|p| {
            Some(Port {
                name: p.get("name").and_then(Value::as_str).unwrap_or("").into(),
                protocol: p
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .into(),
                port: u16::try_from(p.get(number_field)?.as_u64()?).ok()?,
            })
        })
        .collect()
}

/// A stored Service as DNS sees it; `None` for objects without a name.
pub fn service(object: &Value) -> Option<Service> {
    let kind = if str_at(object, "/spec/type") == Some("ExternalName") {
        ServiceKind::ExternalName(str_at(object, "/spec/externalName")?.to_string())
    } else if str_at(object, "/spec/clusterIP") == Some("None") {
        ServiceKind::Headless
    } else {
        let mut cluster_ips = ips(object.at("/spec/clusterIPs"));
        if cluster_ips.is_empty() {
            cluster_ips = ip_at(object, "/spec/clusterIP");
        }
        ServiceKind::ClusterIp(cluster_ips)
    };
    Some(Service {
        namespace: str_at(object, "/metadata/namespace")?.to_string(),
        name: str_at(object, "/metadata/name")?.to_string(),
        kind,
        ports: ports(object.at("/spec/ports"), "port"),
        publish_not_ready: object
            .at("/spec/publishNotReadyAddresses")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// A stored EndpointSlice; `None` when it belongs to no Service.
pub fn endpoint_slice(object: &Value) -> Option<EndpointSlice> {
    let labels = object.at("/metadata/labels")?;
    let endpoints = object
        .get("endpoints")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| Endpoint {
                    addresses: ips(e.get("addresses")),
                    hostname: e.get("hostname").and_then(Value::as_str).map(String::from),
                    // An absent ready condition means ready (discovery.k8s.io/v1).
                    ready: e
                        .at("/conditions/ready")
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(EndpointSlice {
        namespace: str_at(object, "/metadata/namespace")?.to_string(),
        service: labels.get(SERVICE_NAME_LABEL)?.as_str()?.to_string(),
        ports: ports(object.get("ports"), "port"),
        endpoints,
    })
}

/// A stored Pod's addresses (`status.podIPs`, or `status.podIP` from older writers), decoded
/// from its JSON straight into the few fields used: every member follows every pod, and building
/// each as a JSON tree cost more than anything else the feed does. None: no address yet, or
/// not a pod object.
pub fn pod(bytes: &[u8]) -> Option<Pod> {
    let stored: StoredPod = serde_json::from_slice(bytes).ok()?;
    let mut addresses: Vec<IpAddr> = stored
        .status
        .pod_ips
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.ip.as_deref()?.parse().ok())
        .collect();
    if addresses.is_empty() {
        addresses.extend(
            stored
                .status
                .pod_ip
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    if addresses.is_empty() {
        return None;
    }
    Some(Pod {
        namespace: stored.metadata.namespace?,
        ips: addresses,
    })
}

#[derive(Deserialize)]
struct StoredPod {
    #[serde(default)]
    metadata: StoredPodMeta,
    #[serde(default)]
    status: StoredPodStatus,
}

#[derive(Deserialize, Default)]
struct StoredPodMeta {
    namespace: Option<String>,
}

#[derive(Deserialize, Default)]
struct StoredPodStatus {
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<StoredPodIp>>,
}

#[derive(Deserialize)]
struct StoredPodIp {
    ip: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cluster_ip_headless_and_external_services() {
        let web = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
        let web = service(&web).expect("service");
        assert_eq!(
            web.kind,
            ServiceKind::ClusterIp(vec!["10.43.0.20".parse().expect("ip")])
        );
        assert_eq!(web.ports[0].port, 80);
        let headless = json!({"metadata": {"name": "nginx", "namespace": "default"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}});
        let headless = service(&headless).expect("service");
        assert_eq!(headless.kind, ServiceKind::Headless);
        assert!(headless.publish_not_ready);
        let external = json!({"metadata": {"name": "db", "namespace": "prod"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!(
            service(&external).expect("service").kind,
            ServiceKind::ExternalName("db.example.com".into())
        );
        assert!(service(&json!({"spec": {}})).is_none());
    }

    #[test]
    fn endpoint_slice_readiness_defaults_to_ready() {
        let slice = json!({
        "metadata": {"name": "nginx-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "nginx"}},
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.0.5"], "hostname": "web-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.6"], "conditions": {"ready": false}},
            {"addresses": ["10.42.0.7"]}
        ]});
        let slice = endpoint_slice(&slice).expect("slice");
        assert_eq!(slice.service, "nginx");
        let ready: Vec<bool> = slice.endpoints.iter().map(|e| e.ready).collect();
        assert_eq!(ready, [true, false, true]);
        assert_eq!(slice.endpoints[0].hostname.as_deref(), Some("web-0"));
        let orphan = json!({"metadata": {"name": "x", "namespace": "default", "labels": {}}});
        assert!(endpoint_slice(&orphan).is_none());
    }

    #[test]
    fn pod_ips_from_either_field() {
        let new = json!({"metadata": {"namespace": "a"},
            "status": {"podIP": "10.42.0.5", "podIPs": [{"ip": "10.42.0.5"}, {"ip": "fd00::5"}]}});
        let pod = |v: Value| pod(&serde_json::to_vec(&v).expect("json"));
        assert_eq!(pod(new).expect("pod").ips.len(), 2);
        let old = json!({"metadata": {"namespace": "a"}, "status": {"podIP": "10.42.0.9"}});
        assert_eq!(pod(old).expect("pod").ips.len(), 1);
        let pending = json!({"metadata": {"namespace": "a"}, "status": {}});
        assert!(pod(pending).is_none());
        let nulls = json!({"metadata": {"namespace": "a"}, "status": {"podIPs": null, "podIP": "10.42.0.7"}});
        assert_eq!(pod(nulls).expect("pod").ips.len(), 1);
    }
}
