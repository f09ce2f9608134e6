//! core/v1 Service: type/sessionAffinity/port defaults, DNS-1035 names. ClusterIP allocation
//! comes with the service IP allocator (not yet): until then clusterIP is what the client set.

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::fields::{FieldError, NameRule, or_none, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct ServiceStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Service",
    resource: "services",
    singular: "service",
    namespaced: true,
    short_names: &["svc"],
    categories: &["all"],
    tracks_generation: false,
};

const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

impl Strategy for ServiceStrategy {
    type Object = Service;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, svc: &mut Service) {
        let spec = svc.spec.get_or_insert_with(ServiceSpec::default);
        spec.type_.get_or_insert_with(|| "ClusterIP".into());
        spec.session_affinity.get_or_insert_with(|| "None".into());
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
        for port in spec.ports.iter_mut().flatten() {
            port.protocol.get_or_insert_with(|| "TCP".into());
            if port.target_port.is_none() {
                port.target_port = Some(IntOrString::Int(port.port));
            }
        }
        svc.status.get_or_insert_with(Default::default);
    }

    fn prepare_for_create(&self, svc: &mut Service) {
        svc.status = None;
    }

    fn prepare_for_update(&self, new: &mut Service, old: &Service) {
        new.status = old.status.clone();
    }

    fn validate(&self, svc: &Service) -> FieldErrors {
        let mut errors = validate_meta(&svc.metadata, NameRule::Dns1035);
        let Some(spec) = &svc.spec else {
            return errors;
        };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !TYPES.contains(&kind) {
            errors.push(FieldError::unsupported("spec.type", kind, TYPES));
        }
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ports.is_empty() && kind != "ExternalName" && spec.cluster_ip.as_deref() != Some("None")
        {
            errors.push(FieldError::required("spec.ports"));
        }
        for (i, p) in ports.iter().enumerate() {
            if !(1..=65535).contains(&p.port) {
                errors.push(FieldError::invalid(
                    format!("spec.ports[{i}].port"),
                    &p.port.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            if ports.len() > 1 && p.name.as_deref().unwrap_or("").is_empty() {
                errors.push(FieldError::required(format!("spec.ports[{i}].name")));
            }
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Type",
                "string",
                "type determines how the Service is exposed.",
            ),
            Column::new(
                "Cluster-IP",
                "string",
                "clusterIP is the IP address of the service.",
            ),
            Column::new(
                "External-IP",
                "string",
                "List of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            Column::new(
                "Port(s)",
                "string",
                "The list of ports that are exposed by this service.",
            ),
            Column::new(
                "Selector",
                "string",
                "Route service traffic to pods with label keys and values matching this selector.",
            )
            .wide(),
        ]
    }

    fn cells(&self, svc: &Service, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = svc.spec.clone().unwrap_or_default();
        let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let external = match kind.as_str() {
            "ExternalName" => spec.external_name.clone().unwrap_or_default(),
            "LoadBalancer" => {
                let ips: Vec<String> = svc
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|i| i.ip.or(i.hostname))
                    .collect();
                if ips.is_empty() {
                    "<pending>".into()
                } else {
                    ips.join(",")
                }
            }
            _ => spec.external_ips.clone().unwrap_or_default().join(","),
        };
        let ports: Vec<String> = spec
            .ports
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                match p.node_port {
                    Some(np) if np > 0 => format!("{}:{}/{}", p.port, np, proto),
                    _ => format!("{}/{}", p.port, proto),
                }
            })
            .collect();
        let selector: Vec<String> = spec
            .selector
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        vec![
            Value::String(kind),
            or_none(spec.cluster_ip.clone().unwrap_or_default()),
            or_none(external),
            or_none(ports.join(",")),
            or_none(selector.join(",")),
        ]
    }
}
