//! LoadBalancer pool addresses on the wire (MetalLB's L2 mode in small): each address that is
//! no node's own is held by exactly one Ready node, chosen by every proxy alike from the same
//! Node list, which adds it to the interface carrying its node address, so the kernel answers
//! ARP for it; the proxy's DNAT does the rest. When the holder goes NotReady the next node in
//! line takes the address over.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::Value;
use tracing::{info, warn};

use crate::registry::node::{internal_ips, is_ready};

/// Which node holds each of `addresses` that is no node's own: the Ready nodes sorted by name,
/// picked by the address's value modulo their count (stable while the set of nodes is).
pub fn holders(
    addresses: &BTreeSet<Ipv4Addr>,
    nodes: &BTreeMap<String, Value>,
) -> BTreeMap<Ipv4Addr, String> {
    let own: BTreeSet<Ipv4Addr> = nodes.values().flat_map(internal_ips).collect();
    let candidates: Vec<&String> = nodes
        .iter()
        .filter(|(_, n)| is_ready(n))
        .map(|(name, _)| name)
        .collect();
    if candidates.is_empty() {
        return BTreeMap::new();
    }
    addresses
        .iter()
        .filter(|ip| !own.contains(ip))
        .map(|ip| {
            let index = u32::from(*ip) as usize % candidates.len();
            (*ip, candidates[index].clone())
        })
        .collect()
}

/// The addresses this node added, kept equal to what it should hold.
pub struct Announcer {
    node: String,
    node_ip: String,
    held: BTreeSet<Ipv4Addr>,
}

impl Announcer {
    pub fn new(node: String, node_ip: String) -> Self {
        Announcer {
            node,
            node_ip,
            held: BTreeSet::new(),
        }
    }

    /// Adds the addresses this node should hold now and removes the ones it should not.
    pub async fn sync(&mut self, addresses: &BTreeSet<Ipv4Addr>, nodes: &BTreeMap<String, Value>) {
        let wanted: BTreeSet<Ipv4Addr> = holders(addresses, nodes)
            .into_iter()
            .filter(|(_, holder)| *holder == self.node)
            .map(|(ip, _)| ip)
            .collect();
        if wanted == self.held {
            return;
        }
        let Some(interface) = interface_of(&self.node_ip).await else {
            warn!(address = %self.node_ip, "no interface carries the node address; LoadBalancer addresses not announced");
            return;
        };
        for ip in wanted.difference(&self.held.clone()) {
            if ip_addr("add", *ip, &interface).await {
                info!(%ip, %interface, "holding a LoadBalancer address");
                self.held.insert(*ip);
            }
        }
        for ip in self.held.clone().difference(&wanted) {
            ip_addr("del", *ip, &interface).await;
            info!(%ip, %interface, "released a LoadBalancer address");
            self.held.remove(ip);
        }
    }
}

async fn ip_addr(verb: &str, ip: Ipv4Addr, interface: &str) -> bool {
    let address = format!("{ip}/32");
    match tokio::process::Command::new("ip")
        .args(["addr", verb, &address, "dev", interface])
        .output()
        .await
    {
        Ok(out) if out.status.success() => true,
        // Already there (an earlier agent added it): ours now.
        Ok(out)
            if verb == "add" && String::from_utf8_lossy(&out.stderr).contains("File exists") =>
        {
            true
        }
        Ok(out) => {
            warn!(%ip, interface, error = %String::from_utf8_lossy(&out.stderr).trim(), "ip addr {verb} failed");
            false
        }
        Err(e) => {
            warn!(error = %e, "cannot run ip (iproute2)");
            false
        }
    }
}

/// The interface whose addresses include `address` (from `ip -o -4 addr show`).
async fn interface_of(address: &str) -> Option<String> {
    let out = tokio::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .await
        .ok()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    listing.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let _index = words.next()?;
        let interface = words.next()?;
        let found = words
            .skip_while(|w| *w != "inet")
            .nth(1)
            .is_some_and(|cidr| cidr.split('/').next() == Some(address));
        found.then(|| interface.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(ip: &str, ready: bool) -> Value {
        json!({"status": {
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "Unknown" }}],
            "addresses": [{"type": "InternalIP", "address": ip}]}})
    }

    #[test]
    fn one_ready_holder_per_pool_address_and_node_addresses_skipped() {
        let mut nodes = BTreeMap::new();
        nodes.insert("a".to_string(), node("10.99.0.11", true));
        nodes.insert("b".to_string(), node("10.99.0.12", true));
        let addresses: BTreeSet<Ipv4Addr> = ["10.99.0.200", "10.99.0.201", "10.99.0.11"]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        let held = holders(&addresses, &nodes);
        assert_eq!(held.len(), 2, "{held:?}");
        let holders_of: BTreeSet<&String> = held.values().collect();
        assert_eq!(holders_of.len(), 2, "spread over both nodes: {held:?}");
        // b goes NotReady: a holds everything.
        nodes.insert("b".to_string(), node("10.99.0.12", false));
        assert!(holders(&addresses, &nodes).values().all(|h| h == "a"));
    }
}
