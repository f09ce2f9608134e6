//! The nftables data plane, Kubernetes' nftables mode in small: one table `ip skiff-proxy`
//! whose `services` chain looks every packet up in one verdict map (ClusterIP / external IP
//! . protocol . port) and, for the node's own addresses, a node-port map; a chain per service
//! port picks a ready endpoint at random (or the client's previous one, with session
//! affinity) and jumps to the endpoint's DNAT chain. Masquerade is a mark set on the way in
//! and applied in postrouting. Services without endpoints are rejected, not black-holed.
//!
//! Updates are incremental: the wanted state is a set of named chains, set declarations and
//! map elements; a sync sends only the difference to the last applied state, as one `nft -f`
//! transaction (so a change to one Service touches only its chains and elements, and a packet
//! sees either the old rules or the new ones). The first sync, and any after a failed one,
//! replaces the whole table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::model::{Backend, ServicePort};

pub const TABLE: &str = "skiff-proxy";
/// The packet mark asking postrouting to masquerade.
const MASQ_MARK: &str = "0x4000";

const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODE_PORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODE_PORTS: &str = "no-endpoint-nodeports";

/// One element of a map or set: `key` alone, or `key : value` for maps.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Element {
    container: &'static str,
    key: String,
    value: Option<String>,
}

/// Everything the service ports add to the fixed skeleton of the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// chain name -> its rules
    chains: BTreeMap<String, Vec<String>>,
    /// set name -> its declaration (the affinity sets)
    sets: BTreeMap<String, String>,
    elements: BTreeSet<Element>,
}

/// The chain of a service port: `svc-<namespace>/<name>/<protocol>/<port>` ('/' and '.' are
/// legal in nft identifiers and never in Kubernetes names, so names cannot collide).
fn service_chain(port: &ServicePort) -> String {
    format!("svc-{}", port.id)
}

/// The chain for external traffic under externalTrafficPolicy Local.
fn external_chain(port: &ServicePort) -> String {
    format!("ext-{}", port.id)
}

fn endpoint_chain(port: &ServicePort, backend: &Backend) -> String {
    format!("sep-{}__{}/{}", port.id, backend.ip, backend.port)
}

/// The affinity set of one endpoint; the timeout is part of the name, so a changed timeout is
/// a new set rather than an in-place change nft cannot make.
fn affinity_set(port: &ServicePort, backend: &Backend, seconds: u32) -> String {
    format!("aff-{}__{}/{}-{seconds}", port.id, backend.ip, backend.port)
}

impl Ruleset {
    /// The wanted state for `ports` on the node named `node`, pods in `cluster_cidr`.
    pub fn build(ports: &[ServicePort], node: &str, cluster_cidr: &str) -> Ruleset {
        let mut rules = Ruleset::default();
        for port in ports {
            rules.add_port(port, node, cluster_cidr);
        }
        rules
    }

    fn element(&mut self, container: &'static str, key: String, value: Option<String>) {
        self.elements.insert(Element {
            container,
            key,
            value,
        });
    }

    fn add_port(&mut self, port: &ServicePort, node: &str, cluster_cidr: &str) {
        let proto = port.protocol;
        let number = port.port;
        if port.backends.is_empty() {
            for ip in port.cluster_ip.iter().chain(&port.external_ips) {
                self.element(
                    NO_ENDPOINT_SERVICES,
                    format!("{ip} . {proto} . {number}"),
                    None,
                );
            }
            if let Some(node_port) = port.node_port {
                self.element(
                    NO_ENDPOINT_NODE_PORTS,
                    format!("{proto} . {node_port}"),
                    None,
                );
            }
            return;
        }
        // Traffic from outside the pod network (node processes, other hosts) is masqueraded so
        // replies come back through this node.
        let masquerade = format!("ip saddr != {cluster_cidr} jump mark-for-masquerade");
        let service = service_chain(port);
        self.add_balancer(&service, port, &port.backends, Some(&masquerade));
        let mut external = format!("goto {service}");
        if port.external_local {
            let chain = external_chain(port);
            let local: Vec<Backend> = port
                .backends
                .iter()
                .filter(|b| b.node == node)
                .cloned()
                .collect();
            if local.is_empty() {
                // Kubernetes drops external traffic for a Local service with no endpoint here.
                self.chains.insert(chain.clone(), vec!["drop".into()]);
            } else {
                // No masquerade: the backend sees the client's address.
                self.add_balancer(&chain, port, &local, None);
            }
            external = format!("goto {chain}");
        }
        if let Some(ip) = port.cluster_ip {
            self.element(
                SERVICE_IPS,
                format!("{ip} . {proto} . {number}"),
                Some(format!("goto {service}")),
            );
        }
        for ip in &port.external_ips {
            self.element(
                SERVICE_IPS,
                format!("{ip} . {proto} . {number}"),
                Some(external.clone()),
            );
        }
        if let Some(node_port) = port.node_port {
            self.element(
                SERVICE_NODE_PORTS,
                format!("{proto} . {node_port}"),
                Some(external),
            );
        }
    }

    /// A chain choosing among `backends` (affinity first, then at random), and each backend's
    /// DNAT chain.
    fn add_balancer(
        &mut self,
        name: &str,
        port: &ServicePort,
        backends: &[Backend],
        masquerade: Option<&str>,
    ) {
        let mut rules: Vec<String> = masquerade.into_iter().map(str::to_string).collect();
        if let Some(seconds) = port.affinity_seconds {
            for backend in backends {
                let set = affinity_set(port, backend, seconds);
                rules.push(format!(
                    "ip saddr @{set} goto {}",
                    endpoint_chain(port, backend)
                ));
                self.sets.insert(
                    set,
                    format!(
                        "type ipv4_addr; flags dynamic,timeout; timeout {seconds}s; size 65535;"
                    ),
                );
            }
        }
        let targets: Vec<String> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i} : goto {}", endpoint_chain(port, b)))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            backends.len(),
            targets.join(", ")
        ));
        self.chains.insert(name.to_string(), rules);
        for backend in backends {
            let mut rules = vec![
                // A pod reaching itself through its Service (hairpin) is masqueraded too.
                format!("ip saddr {} jump mark-for-masquerade", backend.ip),
            ];
            if let Some(seconds) = port.affinity_seconds {
                rules.push(format!(
                    "update @{} {{ ip saddr }}",
                    affinity_set(port, backend, seconds)
                ));
            }
            rules.push(format!(
                "meta l4proto {} dnat to {}:{}",
                port.protocol, backend.ip, backend.port
            ));
            self.chains.insert(endpoint_chain(port, backend), rules);
        }
    }

    /// How many chains the service ports use (for logs and benchmarks).
    pub fn chain_count(&self) -> usize {
        self.chains.len()
    }
}

/// The fixed part of the table: maps, sets, hooks.
fn skeleton() -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table ip {TABLE} {{");
    let _ = writeln!(
        out,
        "  map {SERVICE_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}"
    );
    let _ = writeln!(
        out,
        "  map {SERVICE_NODE_PORTS} {{ type inet_proto . inet_service : verdict; }}"
    );
    let _ = writeln!(
        out,
        "  set {NO_ENDPOINT_SERVICES} {{ type ipv4_addr . inet_proto . inet_service; }}"
    );
    let _ = writeln!(
        out,
        "  set {NO_ENDPOINT_NODE_PORTS} {{ type inet_proto . inet_service; }}"
    );
    let _ = writeln!(
        out,
        "  chain mark-for-masquerade {{ meta mark set meta mark | {MASQ_MARK}; }}"
    );
    out.push_str(concat!(
        "  chain services {\n",
        "    ip daddr . meta l4proto . th dport vmap @service-ips\n",
        "    fib daddr type local meta l4proto . th dport vmap @service-nodeports\n",
        "  }\n",
        "  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }\n",
        "  chain nat-output { type nat hook output priority -100; policy accept; jump services; }\n",
    ));
    let _ = writeln!(
        out,
        "  chain nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; \
         meta mark & {MASQ_MARK} == {MASQ_MARK} meta mark set meta mark ^ {MASQ_MARK} masquerade fully-random; }}"
    );
    out.push_str(concat!(
        "  chain reject-no-endpoints {\n",
        "    ip daddr . meta l4proto . th dport @no-endpoint-services reject\n",
        "    fib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject\n",
        "  }\n",
        "  chain filter-input { type filter hook input priority filter; policy accept; ct state new jump reject-no-endpoints; }\n",
        "  chain filter-forward { type filter hook forward priority filter; policy accept; ct state new jump reject-no-endpoints; }\n",
        "  chain filter-output { type filter hook output priority filter; policy accept; ct state new jump reject-no-endpoints; }\n",
        "}\n",
    ));
    out
}

fn write_element(out: &mut String, verb: &str, element: &Element, with_value: bool) {
    let value = match (&element.value, with_value) {
        (Some(value), true) => format!(" : {value}"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "{verb} element ip {TABLE} {} {{ {}{value} }}",
        element.container, element.key
    );
}

/// The whole table, replacing whatever is there (create-then-delete makes it idempotent).
pub fn render_full(wanted: &Ruleset) -> String {
    let mut out = format!("table ip {TABLE}\ndelete table ip {TABLE}\n");
    out.push_str(&skeleton());
    out.push_str(&render_diff(&Ruleset::default(), wanted));
    out
}

/// The commands taking the table from `applied` to `wanted`; empty when nothing changed.
/// Order matters inside the transaction: elements pointing at chains go before the chains,
/// chains are filled before elements point at them, and a chain is emptied before it (or a
/// set its rules use) is deleted.
pub fn render_diff(applied: &Ruleset, wanted: &Ruleset) -> String {
    let mut out = String::new();
    // 1. Elements that went away or whose verdict changed (deleted by key, re-added in 3).
    for element in applied.elements.difference(&wanted.elements) {
        write_element(&mut out, "delete", element, false);
    }
    // 2. New sets, then new and changed chains with their rules.
    for (name, declaration) in &wanted.sets {
        if !applied.sets.contains_key(name) {
            let _ = writeln!(out, "add set ip {TABLE} {name} {{ {declaration} }}");
        }
    }
    for name in wanted.chains.keys() {
        if !applied.chains.contains_key(name) {
            let _ = writeln!(out, "add chain ip {TABLE} {name}");
        }
    }
    for (name, rules) in &wanted.chains {
        match applied.chains.get(name) {
            Some(old) if old == rules => continue,
            Some(_) => {
                let _ = writeln!(out, "flush chain ip {TABLE} {name}");
            }
            None => {}
        }
        for rule in rules {
            let _ = writeln!(out, "add rule ip {TABLE} {name} {rule}");
        }
    }
    // 3. New elements (their chains exist now).
    for element in wanted.elements.difference(&applied.elements) {
        write_element(&mut out, "add", element, true);
    }
    // 4. Chains and sets nobody points at any more.
    let gone: Vec<&String> = applied
        .chains
        .keys()
        .filter(|name| !wanted.chains.contains_key(*name))
        .collect();
    for name in &gone {
        let _ = writeln!(out, "flush chain ip {TABLE} {name}");
    }
    for name in &gone {
        let _ = writeln!(out, "delete chain ip {TABLE} {name}");
    }
    for name in applied.sets.keys() {
        if !wanted.sets.contains_key(name) {
            let _ = writeln!(out, "delete set ip {TABLE} {name}");
        }
    }
    out
}

/// Removes the table (`skiff agent --cleanup`); harmless when it is absent.
pub fn render_cleanup() -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::proxy::model::fixtures::{backend, web};

    fn api(backends: Vec<Backend>) -> ServicePort {
        ServicePort {
            id: "default/api/tcp/443".into(),
            port: 443,
            cluster_ip: Some(Ipv4Addr::new(10, 43, 0, 1)),
            node_port: None,
            ..web(backends)
        }
    }

    const CIDR: &str = "10.42.0.0/16";

    #[test]
    fn cluster_ip_and_node_port_go_to_a_random_ready_backend() {
        let rules = Ruleset::build(
            &[web(vec![
                backend("10.42.0.5", "a"),
                backend("10.42.1.5", "b"),
            ])],
            "a",
            CIDR,
        );
        let text = render_full(&rules);
        assert!(text.starts_with("table ip skiff-proxy\ndelete table ip skiff-proxy\n"));
        assert!(text.contains("add element ip skiff-proxy service-ips { 10.43.0.20 . tcp . 80 : goto svc-default/web/tcp/80 }"), "{text}");
        assert!(text.contains("add element ip skiff-proxy service-nodeports { tcp . 30080 : goto svc-default/web/tcp/80 }"), "{text}");
        assert!(text.contains("add rule ip skiff-proxy svc-default/web/tcp/80 numgen random mod 2 vmap { 0 : goto sep-default/web/tcp/80__10.42.0.5/8080, 1 : goto sep-default/web/tcp/80__10.42.1.5/8080 }"), "{text}");
        assert!(text.contains("add rule ip skiff-proxy sep-default/web/tcp/80__10.42.1.5/8080 meta l4proto tcp dnat to 10.42.1.5:8080"), "{text}");
        assert!(text.contains("add rule ip skiff-proxy svc-default/web/tcp/80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade"), "{text}");
    }

    #[test]
    fn a_change_to_one_service_touches_only_its_rules() {
        let before = Ruleset::build(
            &[
                web(vec![backend("10.42.0.5", "a")]),
                api(vec![backend("10.99.0.1", "")]),
            ],
            "a",
            CIDR,
        );
        let after = Ruleset::build(
            &[
                web(vec![backend("10.42.0.5", "a"), backend("10.42.1.5", "b")]),
                api(vec![backend("10.99.0.1", "")]),
            ],
            "a",
            CIDR,
        );
        let diff = render_diff(&before, &after);
        assert!(!diff.contains("api"), "{diff}");
        assert!(
            diff.contains("flush chain ip skiff-proxy svc-default/web/tcp/80\n"),
            "{diff}"
        );
        assert!(
            diff.contains("add chain ip skiff-proxy sep-default/web/tcp/80__10.42.1.5/8080\n"),
            "{diff}"
        );
        assert!(
            !diff.contains("element"),
            "the map entries did not change: {diff}"
        );
        assert_eq!(render_diff(&after, &after), "");
    }

    #[test]
    fn losing_every_endpoint_rejects_and_deletes_chains_after_their_users() {
        let before = Ruleset::build(&[web(vec![backend("10.42.0.5", "a")])], "a", CIDR);
        let after = Ruleset::build(&[web(vec![])], "a", CIDR);
        let diff = render_diff(&before, &after);
        let delete_element = diff
            .find("delete element ip skiff-proxy service-ips { 10.43.0.20 . tcp . 80 }")
            .expect(&diff);
        let delete_chain = diff
            .find("delete chain ip skiff-proxy svc-default/web/tcp/80")
            .expect(&diff);
        assert!(delete_element < delete_chain, "{diff}");
        assert!(
            diff.contains(
                "add element ip skiff-proxy no-endpoint-services { 10.43.0.20 . tcp . 80 }"
            ),
            "{diff}"
        );
        assert!(
            diff.contains("add element ip skiff-proxy no-endpoint-nodeports { tcp . 30080 }"),
            "{diff}"
        );
    }

    #[test]
    fn local_policy_keeps_external_traffic_on_the_node_and_affinity_sticks() {
        let mut port = web(vec![backend("10.42.0.5", "a"), backend("10.42.1.5", "b")]);
        port.external_local = true;
        port.external_ips = vec![Ipv4Addr::new(10, 99, 0, 200)];
        port.affinity_seconds = Some(60);
        let text = render_full(&Ruleset::build(&[port.clone()], "a", CIDR));
        assert!(
            text.contains("service-nodeports { tcp . 30080 : goto ext-default/web/tcp/80 }"),
            "{text}"
        );
        assert!(
            text.contains("service-ips { 10.99.0.200 . tcp . 80 : goto ext-default/web/tcp/80 }"),
            "{text}"
        );
        assert!(
            text.contains("add rule ip skiff-proxy ext-default/web/tcp/80 numgen random mod 1"),
            "{text}"
        );
        assert!(
            !text.contains("add rule ip skiff-proxy ext-default/web/tcp/80 ip saddr != "),
            "{text}"
        );
        assert!(text.contains("add set ip skiff-proxy aff-default/web/tcp/80__10.42.0.5/8080-60 { type ipv4_addr; flags dynamic,timeout; timeout 60s; size 65535; }"), "{text}");
        assert!(text.contains("ip saddr @aff-default/web/tcp/80__10.42.0.5/8080-60 goto sep-default/web/tcp/80__10.42.0.5/8080"), "{text}");
        assert!(
            text.contains("update @aff-default/web/tcp/80__10.42.0.5/8080-60 { ip saddr }"),
            "{text}"
        );
        // No local endpoint on node c: external traffic is dropped there.
        let other = render_full(&Ruleset::build(&[port], "c", CIDR));
        assert!(
            other.contains("add rule ip skiff-proxy ext-default/web/tcp/80 drop"),
            "{other}"
        );
    }

    /// The rendered text against the real nft and kernel, in a private network namespace:
    /// a full load, then diffs on top of it (skipped without root or nft).
    #[test]
    fn full_and_incremental_rulesets_load_into_the_kernel() {
        let usable = std::process::Command::new("unshare")
            .args(["-n", "nft", "list", "tables"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !usable {
            eprintln!("skipping: needs root, unshare and nft");
            return;
        }
        let mut sticky = web(vec![backend("10.42.0.5", "a"), backend("10.42.1.5", "b")]);
        sticky.affinity_seconds = Some(30);
        sticky.external_local = true;
        sticky.external_ips = vec![Ipv4Addr::new(10, 99, 0, 200)];
        let first = Ruleset::build(
            &[sticky.clone(), api(vec![backend("10.99.0.1", "")])],
            "a",
            CIDR,
        );
        let mut udp = api(vec![]);
        udp.protocol = "udp";
        udp.id = "kube-system/dns/udp/53".into();
        let second = Ruleset::build(&[web(vec![backend("10.42.0.5", "a")]), udp], "a", CIDR);
        let script = format!(
            "nft -f - <<'A'\n{}A\nnft -f - <<'B'\n{}B\nnft -f - <<'C'\n{}C\nnft list ruleset",
            render_full(&first),
            render_diff(&first, &second),
            render_diff(&second, &first),
        );
        let out = std::process::Command::new("unshare")
            .args(["-n", "sh", "-c", &script])
            .output()
            .expect("unshare");
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            listing.contains("10.99.0.200 . tcp . 80 : goto ext-default/web/tcp/80"),
            "{listing}"
        );
        assert!(!listing.contains("kube-system/dns"), "{listing}");
    }
}
