//! networking.k8s.io/v1 Ingress: rules route host/path to a backend; every path has a pathType
//! (Exact, Prefix or ImplementationSpecific) and exactly one backend. Status (the load
//! balancer's addresses) belongs to the ingress controller.

use k8s_openapi::api::networking::v1::{HTTPIngressPath, Ingress, IngressBackend};
use serde_json::Value;

use super::fields::{FieldError, NameRule, is_dns1123_subdomain, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct IngressStrategy;

static INFO: KindInfo = KindInfo {
    group: "networking.k8s.io",
    version: "v1",
    kind: "Ingress",
    resource: "ingresses",
    singular: "ingress",
    namespaced: true,
    short_names: &["ing"],
    categories: &[],
    tracks_generation: true,
};

const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];
/// How many hosts the HOSTS cell lists before `+ N more...`.
const SHOWN_HOSTS: usize = 3;

fn validate_backend(path: &str, backend: &IngressBackend, errors: &mut FieldErrors) {
    match (&backend.service, &backend.resource) {
        (Some(service), None) => {
            if service.name.is_empty() {
                errors.push(FieldError::required(format!("{path}.service.name")));
            }
            let port = service.port.as_ref();
            let named = port
                .and_then(|p| p.name.as_deref())
                .is_some_and(|n| !n.is_empty());
            let numbered = port.and_then(|p| p.number).is_some_and(|n| n > 0);
            if named == numbered {
                errors.push(FieldError::invalid(
                    format!("{path}.service.port"),
                    "",
                    "port name or number is required",
                ));
            }
        }
        (None, Some(_)) => {}
        _ => errors.push(FieldError::invalid(
            path,
            "",
            "one backend (service or resource) must be specified",
        )),
    }
}

fn validate_path(field: &str, path: &HTTPIngressPath, errors: &mut FieldErrors) {
    let kind = path.path_type.as_str();
    if kind.is_empty() {
        errors.push(FieldError::required(format!("{field}.pathType")));
    } else if !PATH_TYPES.contains(&kind) {
        errors.push(FieldError::unsupported(
            format!("{field}.pathType"),
            kind,
            PATH_TYPES,
        ));
    }
    let value = path.path.as_deref().unwrap_or("");
    if matches!(kind, "Exact" | "Prefix") && !value.starts_with('/') {
        errors.push(FieldError::invalid(
            format!("{field}.path"),
            value,
            "must be an absolute path",
        ));
    }
    validate_backend(&format!("{field}.backend"), &path.backend, errors);
}

/// A rule host: a DNS subdomain, or one with a leading `*.` wildcard label.
fn valid_host(host: &str) -> bool {
    is_dns1123_subdomain(host.strip_prefix("*.").unwrap_or(host))
}

impl Strategy for IngressStrategy {
    type Object = Ingress;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn prepare_for_create(&self, ing: &mut Ingress) {
        ing.status = None;
    }

    fn prepare_for_update(&self, new: &mut Ingress, old: &Ingress) {
        new.status = old.status.clone();
    }

    fn validate(&self, ing: &Ingress) -> FieldErrors {
        let mut errors = validate_meta(&ing.metadata, NameRule::Subdomain);
        let spec = ing.spec.clone().unwrap_or_default();
        let rules = spec.rules.unwrap_or_default();
        match &spec.default_backend {
            Some(backend) => validate_backend("spec.defaultBackend", backend, &mut errors),
            None if rules.is_empty() => errors.push(FieldError::invalid(
                "spec",
                "",
                "either `defaultBackend` or `rules` must be specified",
            )),
            None => {}
        }
        if let Some(class) = &spec.ingress_class_name
            && !is_dns1123_subdomain(class)
        {
            errors.push(FieldError::invalid(
                "spec.ingressClassName",
                class,
                super::fields::SUBDOMAIN_MSG,
            ));
        }
        for (i, rule) in rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            if let Some(host) = rule.host.as_deref().filter(|h| !valid_host(h)) {
                errors.push(FieldError::invalid(
                    format!("{field}.host"),
                    host,
                    super::fields::SUBDOMAIN_MSG,
                ));
            }
            let Some(http) = &rule.http else {
                continue;
            };
            if http.paths.is_empty() {
                errors.push(FieldError::required(format!("{field}.http.paths")));
            }
            for (j, path) in http.paths.iter().enumerate() {
                validate_path(&format!("{field}.http.paths[{j}]"), path, &mut errors);
            }
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Class",
                "string",
                "The name of the IngressClass resource that should be used for additional configuration",
            ),
            Column::new(
                "Hosts",
                "string",
                "Hosts that incoming requests are matched against before the ingress rule",
            ),
            Column::new(
                "Address",
                "string",
                "Address is a list containing ingress points for the load-balancer",
            ),
            Column::new("Ports", "string", "Ports of TLS configurations that open"),
        ]
    }

    fn cells(&self, ing: &Ingress, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = ing.spec.clone().unwrap_or_default();
        let rules = spec.rules.unwrap_or_default();
        let hosts: Vec<String> = rules.iter().filter_map(|r| r.host.clone()).collect();
        let hosts = match hosts.len() {
            0 => "*".to_string(),
            n if n > SHOWN_HOSTS => format!(
                "{} + {} more...",
                hosts[..SHOWN_HOSTS].join(","),
                rules.len() - SHOWN_HOSTS
            ),
            _ => hosts.join(","),
        };
        let mut addresses: Vec<String> = ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip.filter(|ip| !ip.is_empty()).or(i.hostname))
            .collect();
        addresses.sort();
        addresses.dedup();
        let ports = match spec.tls.as_deref() {
            Some([_, ..]) => "80, 443",
            _ => "80",
        };
        vec![
            Value::String(spec.ingress_class_name.unwrap_or_else(|| "<none>".into())),
            Value::String(hosts),
            Value::String(addresses.join(",")),
            Value::String(ports.into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn ingress(path: Value) -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "ingressClassName": "nginx",
                "tls": [{"hosts": ["example.com"]}],
                "rules": [{"host": "example.com", "http": {"paths": [path]}}],
            },
        })
    }

    fn backend() -> Value {
        json!({"service": {"name": "web", "port": {"number": 80}}})
    }

    #[test]
    fn status_is_the_controllers() {
        let mut obj = ingress(json!({"path": "/", "pathType": "Prefix", "backend": backend()}));
        obj["status"] = json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}});
        let out = IngressStrategy.admit_create(obj).expect("admitted");
        assert!(out.get("status").is_none_or(Value::is_null), "{out}");
    }

    #[test]
    fn path_type_required_and_known() {
        let fields = |path: Value| match IngressStrategy.admit_create(ingress(path)) {
            Err(AdmitError::Invalid(e)) => e.0.into_iter().map(|e| e.field).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fields(json!({"path": "/", "backend": backend()})),
            ["spec.rules[0].http.paths[0].pathType"]
        );
        assert_eq!(
            fields(json!({"path": "/", "pathType": "Glob", "backend": backend()})),
            ["spec.rules[0].http.paths[0].pathType"]
        );
        assert_eq!(
            fields(json!({"path": "/", "pathType": "Exact", "backend": {}})),
            ["spec.rules[0].http.paths[0].backend"]
        );
    }

    #[test]
    fn table_cells() {
        let mut obj = ingress(json!({"path": "/", "pathType": "Prefix", "backend": backend()}));
        obj["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.9"}, {"hostname": "lb.example"}]}});
        let cells = IngressStrategy.table_cells(&obj, jiff::Timestamp::now());
        assert_eq!(
            cells[..5],
            [
                json!("web"),
                json!("nginx"),
                json!("example.com"),
                json!("10.0.0.9,lb.example"),
                json!("80, 443")
            ]
        );
    }
}
