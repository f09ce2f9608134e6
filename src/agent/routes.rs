//! Routes between nodes' pod networks ("host-gw"): every other node's podCIDR is reached via
//! that node's InternalIP, so pods on different nodes talk directly, without encapsulation.
//! Needs the nodes on one L2 segment (as the test hosts' bridge, or a LAN).

use std::collections::BTreeMap;

use crate::json_path::JsonPath;
use serde_json::Value;
use tracing::{info, warn};

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

/// podCIDR -> InternalIP of every node but `me`.
pub fn wanted(nodes: &[Value], me: &str) -> BTreeMap<String, String> {
    nodes
        .iter()
        .filter(|n| text(n, "/metadata/name") != me)
        .filter_map(|n| {
            let cidr = text(n, "/spec/podCIDR");
            let ip = n
                .at("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|a| text(a, "/type") == "InternalIP")
                .map(|a| text(a, "/address"))?;
            (!cidr.is_empty() && !ip.is_empty()).then(|| (cidr.to_string(), ip.to_string()))
        })
        .collect()
}

/// Keeps the kernel's routes equal to `wanted` (adding, changing, removing what changed).
pub struct Routes {
    me: String,
    installed: BTreeMap<String, String>,
    nodes: BTreeMap<String, Value>,
}

impl Routes {
    pub fn new(me: String) -> Self {
        Routes {
            me,
            installed: BTreeMap::new(),
            nodes: BTreeMap::new(),
        }
    }

    pub fn replace(&mut self, nodes: Vec<Value>) {
        self.nodes = nodes
            .into_iter()
            .map(|n| (text(&n, "/metadata/name").to_string(), n))
            .collect();
        self.apply();
    }

    pub fn upsert(&mut self, node: Value) {
        self.nodes
            .insert(text(&node, "/metadata/name").to_string(), node);
        self.apply();
    }

    pub fn remove(&mut self, node: &Value) {
        self.nodes.remove(text(node, "/metadata/name"));
        self.apply();
    }

    fn apply(&mut self) {
        let nodes: Vec<Value> = self.nodes.values().cloned().collect();
        let wanted = wanted(&nodes, &self.me);
        for (cidr, via) in &wanted {
            if self.installed.get(cidr) != Some(via) && ip(&["route", "replace", cidr, "via", via])
            {
                info!(cidr, via, "route to a node's pods");
                self.installed.insert(cidr.clone(), via.clone());
            }
        }
        let stale: Vec<String> = self
            .installed
            .keys()
            .filter(|c| !wanted.contains_key(*c))
            .cloned()
            .collect();
        for cidr in stale {
            ip(&["route", "del", &cidr]);
            self.installed.remove(&cidr);
        }
    }
}

fn ip(args: &[&str]) -> bool {
    match std::process::Command::new("ip").args(args).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            warn!(?args, error = %String::from_utf8_lossy(&out.stderr).trim(), "ip route failed");
            false
        }
        Err(e) => {
            warn!(error = %e, "cannot run ip (iproute2)");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_to_every_other_node() {
        let node = |name: &str, cidr: &str, ip: &str| {
            json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr},
                   "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
        };
        let nodes = vec![
            node("a", "10.42.0.0/24", "10.99.0.11"),
            node("b", "10.42.1.0/24", "10.99.0.12"),
        ];
        let routes = wanted(&nodes, "a");
        assert_eq!(routes.len(), 1);
        assert_eq!(
            routes.get("10.42.1.0/24").map(String::as_str),
            Some("10.99.0.12")
        );
    }
}
