//! The cluster-state index: every name the cluster domain holds, with its records, computed
//! once per change of the inputs. A query is then one hash lookup, and an answer is a pure
//! function of (index, name, type), which is what the unit tests below check without sockets.
//!
//! Names follow the Kubernetes DNS-based service discovery spec (schema 1.1.0).

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::model::{ClusterState, Endpoint, Port, Service, ServiceKind};

/// The spec version answered at `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// What the index is built for: the zone and the TTL every record carries.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// Cluster domain without trailing dot, e.g. "cluster.local".
    pub zone: String,
    /// TTL of every answer and of negative answers (SOA minimum).
    pub ttl: u32,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            zone: "cluster.local".into(),
            ttl: 5,
        }
    }
}

/// The result of looking a question up in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name is ours (in the zone, or a reverse name of a cluster IP): answer authoritatively.
    Authoritative(Answer<'a>),
    /// Not a cluster name: forward it if upstreams are configured, refuse otherwise.
    NotOurs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    pub rcode: ResponseCode,
    /// Borrowed from the index: answering copies no record.
    pub answers: Vec<&'a Record>,
    /// The zone's SOA on NXDOMAIN and NODATA, so resolvers cache the negative answer for its TTL.
    pub authority: Vec<&'a Record>,
}

/// Names to records, keyed by lower-cased name. A name present with no records is an
/// empty non-terminal (`_tcp.web.default.svc.cluster.local.`, `default.svc.cluster.local.`):
/// it exists, so it answers NODATA, not NXDOMAIN.
#[derive(Debug)]
pub struct ClusterIndex {
    zone: String,
    zone_name: LowerName,
    soa: Record,
    names: HashMap<LowerName, Vec<Record>>,
}

impl ClusterIndex {
    /// Builds the index from scratch. Rebuilding on every change keeps the code obviously
    /// consistent; at tens of thousands of objects it is a few milliseconds.
    pub fn build(config: &IndexConfig, state: &ClusterState) -> Self {
        let zone = fqdn(&config.zone.to_ascii_lowercase());
        let mut builder = Builder {
            zone: zone.clone(),
            ttl: config.ttl,
            names: HashMap::new(),
        };
        let soa = builder.apex(config.ttl);
        builder.services(state);
        for pod in &state.pods {
            for ip in &pod.ips {
                let name = format!("{}.{}.pod.{zone}", dashed(ip), pod.namespace);
                builder.address(&name, *ip);
            }
        }
        ClusterIndex {
            zone_name: LowerName::from(name(&zone)),
            zone,
            soa,
            // Built with string keys (ancestor walks are string splits), looked up by
            // `LowerName` so a query needs no formatting or allocation to find its name.
            names: builder
                .names
                .into_iter()
                .map(|(owner, records)| (LowerName::from(name(&owner)), records))
                .collect(),
        }
    }

    /// An empty index for `config`: only the apex records.
    pub fn empty(config: &IndexConfig) -> Self {
        Self::build(config, &ClusterState::default())
    }

    /// The zone this index answers for, lower case with a trailing dot.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Answers one question. Case-insensitive: `LowerName` is already lower case.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        let in_zone = self.zone_name.zone_of(name);
        let records = match self.names.get(name) {
            Some(records) => records,
            // Unknown reverse names fall through to upstreams, as CoreDNS's `fallthrough
            // in-addr.arpa ip6.arpa` does: we only own the reverse names of cluster objects.
            None if !in_zone => return Lookup::NotOurs,
            None => return Lookup::Authoritative(self.negative(ResponseCode::NXDomain)),
        };
        // RFC 1034 4.3.2: at a CNAME, any other type is answered with the CNAME.
        let alias = qtype != RecordType::CNAME
            && records.iter().any(|r| r.record_type() == RecordType::CNAME);
        let wanted = if alias { RecordType::CNAME } else { qtype };
        let mut answers: Vec<&Record> = records
            .iter()
            .filter(|r| wanted == RecordType::ANY || r.record_type() == wanted)
            .collect();
        if alias && let Some(first) = answers.first().copied() {
            answers.extend(self.chase(first, qtype));
        }
        if answers.is_empty() {
            return Lookup::Authoritative(self.negative(ResponseCode::NoError));
        }
        Lookup::Authoritative(Answer {
            rcode: ResponseCode::NoError,
            answers,
            authority: Vec::new(),
        })
    }

    /// RFC 1034 4.3.2 step 3a: a CNAME whose target is in this zone is followed here, its
    /// records of `qtype` appended after the chain (CoreDNS does the same), so stub resolvers
    /// such as busybox's get the address in one answer. A target outside the zone, or a loop,
    /// ends the chain.
    fn chase<'a>(&'a self, alias: &'a Record, qtype: RecordType) -> Vec<&'a Record> {
        const MAX_HOPS: usize = 8;
        let mut found = Vec::new();
        let mut visited: Vec<&Name> = Vec::new();
        let mut next = alias;
        for _ in 0..MAX_HOPS {
            let RData::CNAME(CNAME(target)) = &next.data else {
                break;
            };
            if visited.contains(&target) {
                break;
            }
            visited.push(target);
            let Some(records) = self.names.get(&LowerName::from(target)) else {
                break;
            };
            match records
                .iter()
                .find(|r| r.record_type() == RecordType::CNAME)
            {
                Some(alias) => {
                    found.push(alias);
                    next = alias;
                }
                None => {
                    found.extend(records.iter().filter(|r| r.record_type() == qtype));
                    break;
                }
            }
        }
        found
    }

    fn negative(&self, rcode: ResponseCode) -> Answer<'_> {
        Answer {
            rcode,
            answers: Vec::new(),
            authority: vec![&self.soa],
        }
    }

    /// Number of names held (for logs and tests).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A Service's endpoints, each with the ports of the slice it came from.
type Backends<'a> = Vec<(&'a Endpoint, &'a [Port])>;

struct Builder {
    zone: String,
    ttl: u32,
    names: HashMap<String, Vec<Record>>,
}

impl Builder {
    /// SOA and NS at the apex, `dns-version` TXT, and the `svc`/`pod` subtrees as existing names.
    fn apex(&mut self, ttl: u32) -> Record {
        let zone = self.zone.clone();
        let ns = format!("ns.dns.{zone}");
        let soa = SOA::new(
            name(&ns),
            name(&format!("hostmaster.{zone}")),
            1,
            7200,
            1800,
            86400,
            ttl,
        );
        let soa = self.add(&zone, RData::SOA(soa));
        self.add(&zone, RData::NS(NS(name(&ns))));
        self.add(
            &format!("dns-version.{zone}"),
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
        );
        self.exists(&format!("svc.{zone}"));
        self.exists(&format!("pod.{zone}"));
        soa
    }

    fn services(&mut self, state: &ClusterState) {
        let mut endpoints: HashMap<(&str, &str), Backends<'_>> = HashMap::new();
        for slice in &state.endpoint_slices {
            let entry = endpoints
                .entry((slice.namespace.as_str(), slice.service.as_str()))
                .or_default();
            for endpoint in &slice.endpoints {
                entry.push((endpoint, slice.ports.as_slice()));
            }
        }
        for service in &state.services {
            let key = (service.namespace.as_str(), service.name.as_str());
            let backends = endpoints.get(&key).map(Vec::as_slice).unwrap_or_default();
            self.service(service, backends);
        }
    }

    /// Records of one Service and its endpoints (steps follow the spec's sections 2.3 and 2.4).
    fn service(&mut self, service: &Service, backends: &[(&Endpoint, &[Port])]) {
        let base = format!(
            "{}.{}.svc.{}",
            service.name.to_ascii_lowercase(),
            service.namespace.to_ascii_lowercase(),
            self.zone
        );
        // 1. The service name itself.
        match &service.kind {
            ServiceKind::ExternalName(target) => {
                match Name::from_ascii(fqdn(target)) {
                    Ok(target) => {
                        self.add(&base, RData::CNAME(CNAME(target)));
                    }
                    Err(e) => tracing::warn!(service = %base, error = %e, "bad externalName"),
                }
                return;
            }
            ServiceKind::ClusterIp(ips) => {
                for ip in ips {
                    self.address(&base, *ip);
                    self.reverse(*ip, &base);
                }
                for port in service.ports.iter().filter(|p| !p.name.is_empty()) {
                    self.srv(&base, port, &base);
                }
            }
            ServiceKind::Headless => {}
        }
        // 2. Endpoints: their own names (hostname or dashed IP) and PTRs for any Service; the
        //    service name's A records and per-endpoint SRVs for headless ones.
        let headless = service.kind == ServiceKind::Headless;
        for (endpoint, ports) in backends {
            if !endpoint.ready && !service.publish_not_ready {
                continue;
            }
            for ip in &endpoint.addresses {
                let host = match &endpoint.hostname {
                    Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
                    _ => dashed(ip),
                };
                let endpoint_name = format!("{host}.{base}");
                self.address(&endpoint_name, *ip);
                self.reverse(*ip, &endpoint_name);
                if headless {
                    self.address(&base, *ip);
                    for port in ports.iter().filter(|p| !p.name.is_empty()) {
                        self.srv(&base, port, &endpoint_name);
                    }
                }
            }
        }
    }

    fn srv(&mut self, base: &str, port: &Port, target: &str) {
        let owner = format!(
            "_{}._{}.{base}",
            port.name.to_ascii_lowercase(),
            port.protocol.to_ascii_lowercase()
        );
        self.add(
            &owner,
            RData::SRV(SRV::new(0, 100, port.port, name(target))),
        );
    }

    fn address(&mut self, owner: &str, ip: IpAddr) {
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        self.add(owner, rdata);
    }

    /// A PTR from the IP's reverse name to `target`. Reverse names sit outside the zone, so
    /// their ancestors are not registered (unknown reverse names are not ours).
    fn reverse(&mut self, ip: IpAddr, target: &str) {
        let owner = reverse_name(ip);
        let record = Record::from_rdata(name(&owner), self.ttl, RData::PTR(PTR(name(target))));
        let records = self.names.entry(owner).or_default();
        if !records.contains(&record) {
            records.push(record);
        }
    }

    /// Adds a record at `owner` (in the zone) and registers its ancestors up to the zone as
    /// empty non-terminals.
    fn add(&mut self, owner: &str, rdata: RData) -> Record {
        let record = Record::from_rdata(name(owner), self.ttl, rdata);
        self.exists(owner);
        if let Some(records) = self.names.get_mut(owner)
            && !records.contains(&record)
        {
            records.push(record.clone());
        }
        record
    }

    fn exists(&mut self, owner: &str) {
        let mut current = owner;
        loop {
            if self.names.contains_key(current) {
                // Its ancestors were registered with it.
                if current != owner {
                    return;
                }
            } else {
                self.names.insert(current.to_string(), Vec::new());
            }
            if current == self.zone {
                return;
            }
            match current.split_once('.') {
                Some((_, parent)) if parent.len() >= self.zone.len() => current = parent,
                _ => return,
            }
        }
    }
}

/// `10.42.0.5` -> `10-42-0-5`; `fd00::1` -> `fd00--1` (the spec's pod and endpoint labels).
pub fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The in-addr.arpa / ip6.arpa name of `ip`, lower case with a trailing dot.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(73);
            for byte in v6.octets().iter().rev() {
                out.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            out.push_str("ip6.arpa.");
            out
        }
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// A name we composed from validated labels. Object names the API accepted are DNS labels; a
/// name that still fails to parse becomes the root, which no query matches by accident.
fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap_or_else(|e| {
        tracing::warn!(name = text, error = %e, "unparsable record name");
        Name::root()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::str::FromStr;
    use std::sync::LazyLock;

    use super::*;
    use crate::model::{EndpointSlice, Pod};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    fn port(name: &str, port: u16) -> Port {
        Port {
            name: name.into(),
            protocol: "TCP".into(),
            port,
        }
    }

    fn endpoint(addr: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip(addr)],
            hostname: hostname.map(String::from),
            ready,
        }
    }

    fn state() -> ClusterState {
        ClusterState {
            services: vec![
                Service {
                    namespace: "default".into(),
                    name: "web".into(),
                    kind: ServiceKind::ClusterIp(vec![ip("10.43.0.20")]),
                    ports: vec![port("http", 80), port("", 8080)],
                    publish_not_ready: false,
                },
                Service {
                    namespace: "default".into(),
                    name: "nginx".into(),
                    kind: ServiceKind::Headless,
                    ports: vec![port("web", 80)],
                    publish_not_ready: false,
                },
                Service {
                    namespace: "default".into(),
                    name: "empty".into(),
                    kind: ServiceKind::Headless,
                    ports: vec![],
                    publish_not_ready: false,
                },
                Service {
                    namespace: "prod".into(),
                    name: "db".into(),
                    kind: ServiceKind::ExternalName("db.example.com".into()),
                    ports: vec![],
                    publish_not_ready: false,
                },
            ],
            endpoint_slices: vec![
                EndpointSlice {
                    namespace: "default".into(),
                    service: "nginx".into(),
                    ports: vec![port("web", 8080)],
                    endpoints: vec![
                        endpoint("10.42.0.5", Some("web-0"), true),
                        endpoint("10.42.0.6", Some("web-1"), true),
                        endpoint("10.42.0.7", Some("web-2"), false),
                    ],
                },
                EndpointSlice {
                    namespace: "default".into(),
                    service: "web".into(),
                    ports: vec![port("http", 8080)],
                    endpoints: vec![endpoint("10.42.1.9", None, true)],
                },
            ],
            pods: vec![Pod {
                namespace: "default".into(),
                ips: vec![ip("10.42.0.5")],
            }],
        }
    }

    fn names(index: &ClusterIndex) -> HashSet<String> {
        index.names.keys().map(|n| n.to_string()).collect()
    }

    /// The index of `state()`, built once for the tests that only read it.
    static INDEX: LazyLock<ClusterIndex> = LazyLock::new(index);

    fn index() -> ClusterIndex {
        ClusterIndex::build(&IndexConfig::default(), &state())
    }

    fn ask<'a>(index: &'a ClusterIndex, name: &str, qtype: RecordType) -> Answer<'a> {
        let name = LowerName::from(Name::from_str(name).expect("test name"));
        match index.lookup(&name, qtype) {
            Lookup::Authoritative(answer) => answer,
            Lookup::NotOurs => panic!("{name} should be ours"),
        }
    }

    fn rdata(answer: &Answer) -> Vec<String> {
        let mut out: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
        out.sort();
        out
    }

    #[test]
    fn cluster_ip_service_answers_its_ip_with_ttl_5() {
        let answer = ask(&INDEX, "web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(answer.rcode, ResponseCode::NoError);
        assert_eq!(rdata(&answer), ["10.43.0.20"]);
        assert_eq!(answer.answers[0].ttl, 5);
    }

    #[test]
    fn names_are_case_insensitive() {
        let answer = ask(&INDEX, "WEB.Default.SVC.Cluster.Local.", RecordType::A);
        assert_eq!(rdata(&answer), ["10.43.0.20"]);
    }

    #[test]
    fn headless_service_answers_ready_endpoints_only() {
        let answer = ask(&INDEX, "nginx.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&answer), ["10.42.0.5", "10.42.0.6"]);
    }

    #[test]
    fn publish_not_ready_includes_unready_endpoints() {
        let mut state = state();
        state.services[1].publish_not_ready = true;
        let index = ClusterIndex::build(&IndexConfig::default(), &state);
        let answer = ask(&index, "nginx.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&answer), ["10.42.0.5", "10.42.0.6", "10.42.0.7"]);
    }

    #[test]
    fn headless_without_endpoints_is_nxdomain() {
        let answer = ask(&INDEX, "empty.default.svc.cluster.local.", RecordType::A);
        assert_eq!(answer.rcode, ResponseCode::NXDomain);
        assert_eq!(answer.authority[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn endpoint_hostname_resolves() {
        let answer = ask(
            &INDEX,
            "web-1.nginx.default.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(rdata(&answer), ["10.42.0.6"]);
        let unready = ask(
            &INDEX,
            "web-2.nginx.default.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(unready.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn srv_for_named_ports() {
        let cluster_ip = ask(
            &INDEX,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(
            rdata(&cluster_ip),
            ["0 100 80 web.default.svc.cluster.local."]
        );
        let headless = ask(
            &INDEX,
            "_web._tcp.nginx.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(
            rdata(&headless),
            [
                "0 100 8080 web-0.nginx.default.svc.cluster.local.",
                "0 100 8080 web-1.nginx.default.svc.cluster.local."
            ]
        );
    }

    #[test]
    fn ptr_for_cluster_ips_and_endpoints() {
        let svc = ask(&INDEX, "20.0.43.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(rdata(&svc), ["web.default.svc.cluster.local."]);
        let pod = ask(&INDEX, "5.0.42.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(rdata(&pod), ["web-0.nginx.default.svc.cluster.local."]);
        let plain = ask(&INDEX, "9.1.42.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(rdata(&plain), ["10-42-1-9.web.default.svc.cluster.local."]);
    }

    #[test]
    fn unknown_reverse_and_foreign_names_are_not_ours() {
        let index = index();
        for name in ["1.1.168.192.in-addr.arpa.", "example.com.", "local."] {
            let name = LowerName::from(Name::from_str(name).expect("name"));
            assert_eq!(index.lookup(&name, RecordType::A), Lookup::NotOurs);
        }
    }

    #[test]
    fn an_external_name_inside_the_zone_is_followed() {
        let mut state = state();
        state.services.push(Service {
            namespace: "default".into(),
            name: "alias".into(),
            kind: ServiceKind::ExternalName("web.default.svc.cluster.local".into()),
            ports: vec![],
            publish_not_ready: false,
        });
        let index = ClusterIndex::build(&IndexConfig::default(), &state);
        let answer = ask(&index, "alias.default.svc.cluster.local.", RecordType::A);
        let in_order: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(in_order, ["web.default.svc.cluster.local.", "10.43.0.20"]);
    }

    #[test]
    fn external_name_is_a_cname_for_any_type() {
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            let answer = ask(&INDEX, "db.prod.svc.cluster.local.", qtype);
            assert_eq!(rdata(&answer), ["db.example.com."], "{qtype}");
        }
    }

    #[test]
    fn nxdomain_versus_nodata() {
        let index = index();
        let missing = ask(&index, "nope.default.svc.cluster.local.", RecordType::A);
        assert_eq!(missing.rcode, ResponseCode::NXDomain);
        // The name exists with an A record but no AAAA.
        let nodata = ask(&index, "web.default.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(nodata.rcode, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authority[0].record_type(), RecordType::SOA);
        // Empty non-terminals exist.
        for ent in [
            "default.svc.cluster.local.",
            "_tcp.web.default.svc.cluster.local.",
            "svc.cluster.local.",
        ] {
            let answer = ask(&index, ent, RecordType::A);
            assert_eq!(answer.rcode, ResponseCode::NoError, "{ent}");
        }
    }

    #[test]
    fn dns_version_and_apex() {
        let index = index();
        let version = ask(&index, "dns-version.cluster.local.", RecordType::TXT);
        assert_eq!(rdata(&version), [SCHEMA_VERSION]);
        let soa = ask(&index, "cluster.local.", RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
    }

    #[test]
    fn pod_names_only_for_pod_ips_in_that_namespace() {
        let index = index();
        let answer = ask(
            &index,
            "10-42-0-5.default.pod.cluster.local.",
            RecordType::A,
        );
        assert_eq!(rdata(&answer), ["10.42.0.5"]);
        let other_ns = ask(&index, "10-42-0-5.prod.pod.cluster.local.", RecordType::A);
        assert_eq!(other_ns.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn custom_zone() {
        let config = IndexConfig {
            zone: "Skiff.Test".into(),
            ttl: 30,
        };
        let index = ClusterIndex::build(&config, &state());
        let answer = ask(&index, "web.default.svc.skiff.test.", RecordType::A);
        assert_eq!(answer.answers[0].ttl, 30);
        assert!(names(&index).contains("skiff.test."));
        let name = LowerName::from(Name::from_str("web.default.svc.cluster.local.").expect("n"));
        assert_eq!(index.lookup(&name, RecordType::A), Lookup::NotOurs);
    }

    #[test]
    fn ipv6_names() {
        assert_eq!(dashed(&ip("fd00::1")), "fd00--1");
        assert!(reverse_name(ip("fd00::1")).starts_with("1.0.0.0."));
        assert!(reverse_name(ip("fd00::1")).ends_with("0.0.d.f.ip6.arpa."));
    }
}
