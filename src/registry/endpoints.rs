//! core/v1 Endpoints (deprecated upstream in favour of EndpointSlice, still what many clients
//! read): addresses need an IP, ports a valid number (protocol TCP by default).

use k8s_openapi::api::core::v1::Endpoints;
use serde_json::Value;

use super::fields::{FieldError, NameRule, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct EndpointsStrategy;

static INFO: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Endpoints",
    resource: "endpoints",
    singular: "endpoints",
    namespaced: true,
    short_names: &["ep"],
    categories: &[],
    tracks_generation: false,
};

/// How many endpoints the ENDPOINTS cell lists before `+ N more...`.
const SHOWN: usize = 3;

/// kubectl's ENDPOINTS cell: `ip:port` per address and port (`ip` alone for port-less subsets).
fn format_endpoints(ep: &Endpoints) -> String {
    let subsets = ep.subsets.as_deref().unwrap_or_default();
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut all: Vec<String> = Vec::new();
    for subset in subsets {
        let addresses = subset.addresses.as_deref().unwrap_or_default();
        match subset.ports.as_deref() {
            None | Some([]) => all.extend(addresses.iter().map(|a| a.ip.clone())),
            Some(ports) => {
                for port in ports {
                    all.extend(addresses.iter().map(|a| match a.ip.contains(':') {
                        true => format!("[{}]:{}", a.ip, port.port),
                        false => format!("{}:{}", a.ip, port.port),
                    }));
                }
            }
        }
    }
    let shown = all[..all.len().min(SHOWN)].join(",");
    if all.len() > SHOWN {
        format!("{shown} + {} more...", all.len() - SHOWN)
    } else {
        shown
    }
}

impl Strategy for EndpointsStrategy {
    type Object = Endpoints;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, ep: &mut Endpoints) {
        for subset in ep.subsets.iter_mut().flatten() {
            for port in subset.ports.iter_mut().flatten() {
                port.protocol.get_or_insert_with(|| "TCP".into());
            }
        }
    }

    fn validate(&self, ep: &Endpoints) -> FieldErrors {
        let mut errors = validate_meta(&ep.metadata, NameRule::Subdomain);
        for (i, subset) in ep.subsets.iter().flatten().enumerate() {
            let ready = subset.addresses.iter().flatten();
            let not_ready = subset.not_ready_addresses.iter().flatten();
            for (j, address) in ready.chain(not_ready).enumerate() {
                if address.ip.parse::<std::net::IpAddr>().is_err() {
                    errors.push(FieldError::invalid(
                        format!("subsets[{i}].addresses[{j}].ip"),
                        &address.ip,
                        "must be a valid IP address",
                    ));
                }
            }
            for (j, port) in subset.ports.iter().flatten().enumerate() {
                if !(1..=65535).contains(&port.port) {
                    errors.push(FieldError::invalid(
                        format!("subsets[{i}].ports[{j}].port"),
                        &port.port.to_string(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![Column::new(
            "Endpoints",
            "string",
            "The set of all endpoints is the union of all subsets.",
        )]
    }

    fn cells(&self, ep: &Endpoints, _now: jiff::Timestamp) -> Vec<Value> {
        vec![Value::String(format_endpoints(ep))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn endpoints(subsets: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "default"}, "subsets": subsets})
    }

    #[test]
    fn ports_default_to_tcp_and_addresses_need_ips() {
        let out = EndpointsStrategy
            .admit_create(endpoints(
                json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]),
            ))
            .expect("admitted");
        assert_eq!(out["subsets"][0]["ports"][0]["protocol"], "TCP");
        let err = EndpointsStrategy
            .admit_create(endpoints(json!([{"addresses": [{"ip": "nope"}]}])))
            .expect_err("invalid");
        assert!(
            matches!(err, AdmitError::Invalid(e) if e.0[0].field == "subsets[0].addresses[0].ip")
        );
    }

    #[test]
    fn table_cells_list_three_then_count() {
        let obj = endpoints(json!([{
            "addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
            "ports": [{"port": 80}, {"port": 443}],
        }]));
        let cells = EndpointsStrategy.table_cells(&obj, jiff::Timestamp::now());
        assert_eq!(cells[1], "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...");
        let empty = EndpointsStrategy.table_cells(&endpoints(json!([])), jiff::Timestamp::now());
        assert_eq!(empty[1], "<none>");
    }
}
