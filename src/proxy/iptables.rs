//! The iptables data plane (`--proxy-mode iptables`), for nodes without nftables: kube-proxy's
//! iptables mode in small. `SKIFF-SERVICES` matches ClusterIP / external IP and port and jumps
//! to a chain per service port (`SKIFF-SVC-*`), which picks an endpoint chain (`SKIFF-SEP-*`)
//! with `statistic` probabilities 1/n, 1/(n-1), ... (uniform), after `recent` matches for
//! session affinity; node ports go through `SKIFF-NODEPORTS` for local addresses only.
//!
//! The rules are written with one `iptables-restore --noflush`: it replaces only skiff's own
//! chains (each declared chain is flushed and refilled; chains no longer wanted are deleted)
//! atomically per table, and never touches anyone else's rules.

use std::collections::BTreeSet;
use std::fmt::Write;

use sha2::{Digest, Sha256};

use super::model::{Backend, ServicePort};

const SERVICES: &str = "SKIFF-SERVICES";
const NODE_PORTS: &str = "SKIFF-NODEPORTS";
const MARK_MASQ: &str = "SKIFF-MARK-MASQ";
const POSTROUTING: &str = "SKIFF-POSTROUTING";
const FILTER: &str = "SKIFF-FILTER";
const MASQ_MARK: &str = "0x4000";

/// The jumps from the built-in chains into skiff's: (table, built-in chain, skiff chain).
pub const JUMPS: [(&str, &str, &str); 6] = [
    ("nat", "PREROUTING", SERVICES),
    ("nat", "OUTPUT", SERVICES),
    ("nat", "POSTROUTING", POSTROUTING),
    ("filter", "INPUT", FILTER),
    ("filter", "FORWARD", FILTER),
    ("filter", "OUTPUT", FILTER),
];

/// iptables chain names are at most 28 characters: a prefix and 16 characters of a hash.
fn hashed(prefix: &str, text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let suffix: String = digest.iter().take(8).map(|b| format!("{b:02X}")).collect();
    format!("SKIFF-{prefix}-{suffix}")
}

fn endpoint_name(port: &ServicePort, backend: &Backend) -> String {
    hashed(
        "SEP",
        &format!("{}__{}/{}", port.id, backend.ip, backend.port),
    )
}

fn matching(ip: impl std::fmt::Display, port: &ServicePort) -> String {
    format!(
        "-d {ip}/32 -p {p} -m {p} --dport {}",
        port.port,
        p = port.protocol
    )
}

fn node_port_matching(port: &ServicePort, node_port: u16) -> String {
    format!("-p {p} -m {p} --dport {node_port}", p = port.protocol)
}

/// The restore input for `ports`, plus the service chains it declares (so the next render can
/// delete the ones that went away).
pub struct Rendered {
    pub text: String,
    pub chains: BTreeSet<String>,
}

/// Renders the nat and filter tables' skiff chains; `previous` are the chains of the last
/// applied render, deleted here when no longer wanted.
pub fn render(
    ports: &[ServicePort],
    node: &str,
    cluster_cidr: &str,
    previous: &BTreeSet<String>,
) -> Rendered {
    let mut chains: BTreeSet<String> = BTreeSet::new();
    let mut rules = String::new();
    let mut filter = String::new();
    for port in ports {
        if port.backends.is_empty() {
            for ip in port.cluster_ip.iter().chain(&port.external_ips) {
                let _ = writeln!(filter, "-A {FILTER} {} -j REJECT", matching(ip, port));
            }
            if let Some(node_port) = port.node_port {
                let _ = writeln!(
                    filter,
                    "-A {FILTER} -m addrtype --dst-type LOCAL {} -j REJECT",
                    node_port_matching(port, node_port)
                );
            }
            continue;
        }
        let service = hashed("SVC", &port.id);
        let masquerade = format!("! -s {cluster_cidr} -j {MARK_MASQ}");
        balancer(
            &mut rules,
            &mut chains,
            &service,
            port,
            &port.backends,
            Some(&masquerade),
        );
        let mut external = Some(service.clone());
        if port.external_local {
            let local: Vec<Backend> = port
                .backends
                .iter()
                .filter(|b| b.node == node)
                .cloned()
                .collect();
            if local.is_empty() {
                // Dropped, as Kubernetes does for a Local service with no endpoint here.
                external = None;
                for ip in &port.external_ips {
                    let _ = writeln!(filter, "-A {FILTER} {} -j DROP", matching(ip, port));
                }
                if let Some(node_port) = port.node_port {
                    let _ = writeln!(
                        filter,
                        "-A {FILTER} -m addrtype --dst-type LOCAL {} -j DROP",
                        node_port_matching(port, node_port)
                    );
                }
            } else {
                let chain = hashed("EXT", &port.id);
                balancer(&mut rules, &mut chains, &chain, port, &local, None);
                external = Some(chain);
            }
        }
        if let Some(ip) = port.cluster_ip {
            let _ = writeln!(rules, "-A {SERVICES} {} -j {service}", matching(ip, port));
        }
        if let Some(target) = external {
            for ip in &port.external_ips {
                let _ = writeln!(rules, "-A {SERVICES} {} -j {target}", matching(ip, port));
            }
            if let Some(node_port) = port.node_port {
                let _ = writeln!(
                    rules,
                    "-A {NODE_PORTS} {} -j {target}",
                    node_port_matching(port, node_port)
                );
            }
        }
    }
    let mut text = String::from("*nat\n");
    for chain in [SERVICES, NODE_PORTS, MARK_MASQ, POSTROUTING]
        .into_iter()
        .map(str::to_string)
        .chain(chains.iter().cloned())
        .chain(previous.difference(&chains).cloned())
    {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    let _ = writeln!(text, "-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK}");
    let _ = writeln!(
        text,
        "-A {POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(text, "-A {POSTROUTING} -j MARK --xor-mark {MASQ_MARK}");
    let _ = writeln!(text, "-A {POSTROUTING} -j MASQUERADE --random-fully");
    text.push_str(&rules);
    // Node ports last: the ClusterIP rules are more specific.
    let _ = writeln!(
        text,
        "-A {SERVICES} -m addrtype --dst-type LOCAL -j {NODE_PORTS}"
    );
    // Declared above (so flushed), now deleted: nothing jumps to them any more.
    for chain in previous.difference(&chains) {
        let _ = writeln!(text, "-X {chain}");
    }
    text.push_str("COMMIT\n*filter\n");
    let _ = writeln!(text, ":{FILTER} - [0:0]");
    text.push_str(&filter);
    text.push_str("COMMIT\n");
    Rendered { text, chains }
}

/// A chain choosing among `backends` and each backend's DNAT chain.
fn balancer(
    rules: &mut String,
    chains: &mut BTreeSet<String>,
    name: &str,
    port: &ServicePort,
    backends: &[Backend],
    masquerade: Option<&str>,
) {
    chains.insert(name.to_string());
    if let Some(masquerade) = masquerade {
        let _ = writeln!(rules, "-A {name} {masquerade}");
    }
    if let Some(seconds) = port.affinity_seconds {
        for backend in backends {
            let endpoint = endpoint_name(port, backend);
            let _ = writeln!(
                rules,
                "-A {name} -m recent --name {endpoint} --rcheck --seconds {seconds} --reap -j {endpoint}"
            );
        }
    }
    let count = backends.len();
    for (i, backend) in backends.iter().enumerate() {
        let endpoint = endpoint_name(port, backend);
        let remaining = count - i;
        if remaining > 1 {
            let _ = writeln!(
                rules,
                "-A {name} -m statistic --mode random --probability {:.10} -j {endpoint}",
                1.0 / remaining as f64
            );
        } else {
            let _ = writeln!(rules, "-A {name} -j {endpoint}");
        }
        if chains.insert(endpoint.clone()) {
            let _ = writeln!(rules, "-A {endpoint} -s {}/32 -j {MARK_MASQ}", backend.ip);
            let affinity = if port.affinity_seconds.is_some() {
                format!(" -m recent --name {endpoint} --set")
            } else {
                String::new()
            };
            let _ = writeln!(
                rules,
                "-A {endpoint} -p {p}{affinity} -m {p} -j DNAT --to-destination {}:{}",
                backend.ip,
                backend.port,
                p = port.protocol
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::proxy::model::fixtures::{backend, web};

    #[test]
    fn uniform_choice_and_stale_chains_deleted() {
        let three = web(vec![
            backend("10.42.0.5", "a"),
            backend("10.42.0.6", "a"),
            backend("10.42.1.5", "a"),
        ]);
        let first = render(&[three], "a", "10.42.0.0/16", &BTreeSet::new());
        let text = &first.text;
        let svc = hashed("SVC", "default/web/tcp/80");
        assert!(svc.len() <= 28, "{svc}");
        assert!(
            text.contains(&format!(
                "-A SKIFF-SERVICES -d 10.43.0.20/32 -p tcp -m tcp --dport 80 -j {svc}"
            )),
            "{text}"
        );
        assert!(text.contains("--probability 0.3333333333"), "{text}");
        assert!(text.contains("--probability 0.5000000000"), "{text}");
        assert!(
            text.contains("-j DNAT --to-destination 10.42.1.5:8080"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "-A SKIFF-NODEPORTS -p tcp -m tcp --dport 30080 -j {svc}"
            )),
            "{text}"
        );
        assert_eq!(first.chains.len(), 4);

        let none = render(&[web(vec![])], "a", "10.42.0.0/16", &first.chains);
        assert!(none.text.contains(&format!("-X {svc}")), "{}", none.text);
        assert!(
            none.text
                .contains("-A SKIFF-FILTER -d 10.43.0.20/32 -p tcp -m tcp --dport 80 -j REJECT"),
            "{}",
            none.text
        );
        assert!(none.chains.is_empty());
    }

    /// The restore input against the real iptables-restore and kernel, in a private network
    /// namespace: a first load, then a second that drops a service (skipped without root).
    #[test]
    fn renders_load_into_the_kernel() {
        let usable = std::process::Command::new("unshare")
            .args(["-n", "iptables-restore", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !usable {
            eprintln!("skipping: needs root, unshare and iptables");
            return;
        }
        let mut sticky = web(vec![backend("10.42.0.5", "a"), backend("10.42.0.6", "a")]);
        sticky.affinity_seconds = Some(30);
        sticky.external_local = true;
        sticky.external_ips = vec![Ipv4Addr::new(10, 99, 0, 200)];
        let first = render(&[sticky], "a", "10.42.0.0/16", &BTreeSet::new());
        let second = render(&[web(vec![])], "a", "10.42.0.0/16", &first.chains);
        let script = format!(
            "iptables-restore --noflush <<'A'\n{}A\niptables-restore --noflush <<'B'\n{}B\niptables -t nat -S; iptables -S",
            first.text, second.text
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
        assert!(!listing.contains("SKIFF-SVC-"), "{listing}");
        assert!(
            listing.contains("-A SKIFF-FILTER -d 10.43.0.20/32 -p tcp -m tcp --dport 80 -j REJECT"),
            "{listing}"
        );
    }
}
