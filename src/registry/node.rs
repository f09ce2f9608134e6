//! core/v1 Node: cluster-scoped; STATUS from the Ready condition, ROLES from
//! `node-role.kubernetes.io/*` labels.

use k8s_openapi::api::core::v1::Node;
use serde_json::Value;

use super::fields::{NameRule, meta_age, or_none, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};
use crate::json_path::JsonPath;

/// Whether the node's Ready condition is True (what schedulers and load balancers go by).
pub fn is_ready(node: &Value) -> bool {
    node.at("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
}

/// The node's InternalIP addresses (IPv4).
pub fn internal_ips(node: &Value) -> Vec<std::net::Ipv4Addr> {
    node.at("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .filter_map(|a| a.get("address")?.as_str()?.parse().ok())
        .collect()
}

pub struct NodeStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Node",
    resource: "nodes",
    singular: "node",
    namespaced: false,
    short_names: &["no"],
    categories: &[],
    tracks_generation: false,
};

impl Strategy for NodeStrategy {
    type Object = Node;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn prepare_for_update(&self, new: &mut Node, old: &Node) {
        new.status = old.status.clone();
    }

    fn validate(&self, node: &Node) -> FieldErrors {
        validate_meta(&node.metadata, NameRule::Subdomain)
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Status", "string", "The status of the node"),
            Column::new("Roles", "string", "The roles of the node"),
            super::AGE_COLUMN,
            Column::new("Version", "string", "Kubelet Version reported by the node."),
            Column::new("Internal-IP", "string", "List of internal IPs.").wide(),
            Column::new("External-IP", "string", "List of external IPs.").wide(),
            Column::new("OS-Image", "string", "OS image reported by the node.").wide(),
            Column::new(
                "Kernel-Version",
                "string",
                "Kernel version reported by the node.",
            )
            .wide(),
            Column::new(
                "Container-Runtime",
                "string",
                "Container runtime reported by the node.",
            )
            .wide(),
        ]
    }

    fn age_column(&self) -> bool {
        false
    }

    fn cells(&self, node: &Node, now: jiff::Timestamp) -> Vec<Value> {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True");
        let mut status = match ready {
            Some(true) => "Ready".to_string(),
            _ => "NotReady".to_string(),
        };
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            status.push_str(",SchedulingDisabled");
        }
        let roles: Vec<String> = node
            .metadata
            .labels
            .iter()
            .flatten()
            .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
            .map(str::to_string)
            .collect();
        let info = node.status.as_ref().and_then(|s| s.node_info.clone());
        let address = |kind: &str| {
            let found: Vec<String> = node
                .status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.type_ == kind)
                .map(|a| a.address)
                .collect();
            or_none(found.join(","))
        };
        vec![
            Value::String(status),
            or_none(roles.join(",")),
            Value::String(meta_age(&node.metadata, now)),
            Value::String(
                info.as_ref()
                    .map(|i| i.kubelet_version.clone())
                    .unwrap_or_default(),
            ),
            address("InternalIP"),
            address("ExternalIP"),
            or_none(
                info.as_ref()
                    .map(|i| i.os_image.clone())
                    .unwrap_or_default(),
            ),
            or_none(
                info.as_ref()
                    .map(|i| i.kernel_version.clone())
                    .unwrap_or_default(),
            ),
            or_none(
                info.as_ref()
                    .map(|i| i.container_runtime_version.clone())
                    .unwrap_or_default(),
            ),
        ]
    }
}
