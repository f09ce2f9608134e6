//! Pod egress: traffic from this node's pods to anything outside the pod network leaves with
//! the node's address, as flannel's ipMasq does, so control-plane members, other hosts and
//! Services with host-network endpoints (the API server, cluster DNS on the members) answer
//! it without routes back to the pod CIDRs. Pod-to-pod traffic keeps its addresses.

use crate::proxy::{ProxyError, apply_nft};

const TABLE: &str = "skiff-egress";

fn ruleset(cluster_cidr: &str) -> String {
    // Create-then-delete replaces a table left by an earlier agent in one transaction.
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n  chain postrouting {{\n    \
         type nat hook postrouting priority srcnat + 10; policy accept;\n    \
         ip saddr {cluster_cidr} ip daddr != {cluster_cidr} masquerade\n  }}\n}}\n"
    )
}

/// Installs (or replaces) the masquerade rule.
pub async fn install(cluster_cidr: &str) -> Result<(), ProxyError> {
    apply_nft(&ruleset(cluster_cidr)).await
}

/// Removes it (`skiff agent --cleanup`).
pub async fn remove() -> Result<(), ProxyError> {
    apply_nft(&format!("table ip {TABLE}\ndelete table ip {TABLE}\n")).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn masquerades_only_traffic_leaving_the_pod_network() {
        let text = super::ruleset("10.42.0.0/16");
        assert!(
            text.contains("ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 masquerade"),
            "{text}"
        );
        assert!(text.starts_with("table ip skiff-egress\ndelete table ip skiff-egress\n"));
    }
}
