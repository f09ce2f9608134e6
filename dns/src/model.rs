//! The index's input: plain structs holding only what DNS answers depend on. The binary converts
//! stored Kubernetes objects into these, so this crate never sees JSON or the API types and can
//! be tested with literals.

use std::net::IpAddr;

/// A Service as DNS sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    pub ports: Vec<Port>,
    /// `spec.publishNotReadyAddresses`: headless names list endpoints that are not ready yet
    /// (StatefulSet peers finding each other before they are ready).
    pub publish_not_ready: bool,
}

/// How a Service's own name resolves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ServiceKind {
    /// `spec.clusterIPs`: the name answers with these virtual IPs.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the name answers with the ready endpoints' addresses.
    #[default]
    Headless,
    /// `type: ExternalName`: the name is a CNAME to this DNS name.
    ExternalName(String),
}

/// A named (or unnamed) port; only named ones get SRV records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    /// "TCP", "UDP" or "SCTP" as in the API; lower-cased in SRV names.
    pub protocol: String,
    pub port: u16,
}

/// An EndpointSlice, joined to its Service by the `kubernetes.io/service-name` label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub service: String,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    /// Set for StatefulSet pods (hostname + subdomain): `web-0.nginx.default.svc.<zone>`.
    pub hostname: Option<String>,
    /// `conditions.ready`, with an absent condition counted as ready (as the API says).
    pub ready: bool,
}

/// A pod's addresses, for `a-b-c-d.<ns>.pod.<zone>` (answered only for IPs a pod in that
/// namespace holds, CoreDNS's `pods verified`, so the name cannot be used to forge answers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub ips: Vec<IpAddr>,
}

/// Everything the index is built from.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub pods: Vec<Pod>,
}
