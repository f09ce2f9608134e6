//! discovery.k8s.io/v1 EndpointSlice: a fixed addressType (IPv4, IPv6 or FQDN), endpoints with
//! at least one address, ports with protocol TCP by default.

use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use serde_json::Value;

use super::fields::{FieldError, NameRule, immutable, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct EndpointSliceStrategy;

static INFO: KindInfo = KindInfo {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    resource: "endpointslices",
    singular: "endpointslice",
    namespaced: true,
    short_names: &[],
    categories: &[],
    tracks_generation: false,
};

const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
/// How many ports or addresses a cell lists before `+ N more...`.
const SHOWN: usize = 3;

/// kubectl's list cell: the first three, `+ N more...`, or `<unset>` when empty.
fn list_cell(items: Vec<String>) -> Value {
    let shown = items[..items.len().min(SHOWN)].join(",");
    Value::String(match items.len() {
        0 => "<unset>".into(),
        n if n > SHOWN => format!("{shown} + {} more...", n - SHOWN),
        _ => shown,
    })
}

fn port_label(port: &EndpointPort) -> String {
    match (port.port, &port.name) {
        (Some(number), _) => number.to_string(),
        (None, Some(name)) => name.clone(),
        (None, None) => "*".into(),
    }
}

fn address_ok(address_type: &str, address: &str) -> bool {
    match address_type {
        "IPv4" => address.parse::<std::net::Ipv4Addr>().is_ok(),
        "IPv6" => address.parse::<std::net::Ipv6Addr>().is_ok(),
        _ => super::fields::is_dns1123_subdomain(address),
    }
}

impl Strategy for EndpointSliceStrategy {
    type Object = EndpointSlice;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, slice: &mut EndpointSlice) {
        for port in slice.ports.iter_mut().flatten() {
            port.protocol.get_or_insert_with(|| "TCP".into());
        }
    }

    fn validate(&self, slice: &EndpointSlice) -> FieldErrors {
        let mut errors = validate_meta(&slice.metadata, NameRule::Subdomain);
        let address_type = slice.address_type.as_str();
        if address_type.is_empty() {
            errors.push(FieldError::required("addressType"));
        } else if !ADDRESS_TYPES.contains(&address_type) {
            errors.push(FieldError::unsupported(
                "addressType",
                address_type,
                ADDRESS_TYPES,
            ));
        }
        for (i, endpoint) in slice.endpoints.iter().enumerate() {
            if endpoint.addresses.is_empty() {
                errors.push(FieldError::required(format!("endpoints[{i}].addresses")));
            }
            for (j, address) in endpoint.addresses.iter().enumerate() {
                if ADDRESS_TYPES.contains(&address_type) && !address_ok(address_type, address) {
                    errors.push(FieldError::invalid(
                        format!("endpoints[{i}].addresses[{j}]"),
                        address,
                        &format!("must be a valid {address_type} address"),
                    ));
                }
            }
        }
        for (i, port) in slice.ports.iter().flatten().enumerate() {
            if let Some(number) = port.port.filter(|p| !(1..=65535).contains(p)) {
                errors.push(FieldError::invalid(
                    format!("ports[{i}].port"),
                    &number.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        errors
    }

    fn validate_update(&self, new: &EndpointSlice, old: &EndpointSlice) -> FieldErrors {
        let mut errors = self.validate(new);
        errors.extend(immutable(
            &new.address_type,
            &old.address_type,
            "addressType",
        ));
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "AddressType",
                "string",
                "addressType specifies the type of address carried by this EndpointSlice.",
            ),
            Column::new(
                "Ports",
                "string",
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
            ),
            Column::new(
                "Endpoints",
                "string",
                "endpoints is a list of unique endpoints in this slice.",
            ),
        ]
    }

    fn cells(&self, slice: &EndpointSlice, _now: jiff::Timestamp) -> Vec<Value> {
        let ports = slice.ports.iter().flatten().map(port_label).collect();
        let addresses = slice
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().cloned())
            .collect();
        vec![
            Value::String(slice.address_type.clone()),
            list_cell(ports),
            list_cell(addresses),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn slice(address_type: &str, addresses: Value) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "default"},
            "addressType": address_type,
            "endpoints": [{"addresses": addresses}],
            "ports": [{"name": "http", "port": 80}, {"name": "named"}],
        })
    }

    #[test]
    fn ports_default_to_tcp() {
        let out = EndpointSliceStrategy
            .admit_create(slice("IPv4", json!(["10.0.0.1"])))
            .expect("admitted");
        assert_eq!(out["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn address_type_required_and_known() {
        let field = |obj: Value| match EndpointSliceStrategy.admit_create(obj) {
            Err(AdmitError::Invalid(e)) => e.0[0].field.clone(),
            other => panic!("{other:?}"),
        };
        let mut missing = slice("IPv4", json!(["10.0.0.1"]));
        missing.as_object_mut().map(|o| o.remove("addressType"));
        assert_eq!(field(missing), "addressType");
        assert_eq!(field(slice("IPv5", json!(["10.0.0.1"]))), "addressType");
        assert_eq!(
            field(slice("IPv6", json!(["10.0.0.1"]))),
            "endpoints[0].addresses[0]"
        );
    }

    #[test]
    fn table_cells() {
        let obj = slice(
            "IPv4",
            json!(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]),
        );
        let cells = EndpointSliceStrategy.table_cells(&obj, jiff::Timestamp::now());
        assert_eq!(
            cells[..4],
            [
                json!("web-abc"),
                json!("IPv4"),
                json!("80,named"),
                json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...")
            ]
        );
    }
}
