//! networking.k8s.io/v1 IngressClass: cluster-scoped; names the controller that implements it
//! (a domain-prefixed path, fixed once set) and optionally a parameters object.

use k8s_openapi::api::networking::v1::IngressClass;
use serde_json::Value;

use super::fields::{FieldError, NameRule, immutable, is_qualified_name, validate_meta};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct IngressClassStrategy;

static INFO: KindInfo = KindInfo {
    group: "networking.k8s.io",
    version: "v1",
    kind: "IngressClass",
    resource: "ingressclasses",
    singular: "ingressclass",
    namespaced: false,
    short_names: &[],
    categories: &[],
    tracks_generation: true,
};

const SCOPES: &[&str] = &["Cluster", "Namespace"];
const CONTROLLER_MAX: usize = 250;

/// `example.com/ingress-controller`: a DNS subdomain, then a path.
fn valid_controller(controller: &str) -> bool {
    controller.len() <= CONTROLLER_MAX
        && controller.split_once('/').is_some_and(|(domain, path)| {
            is_qualified_name(&format!("{domain}/x")) && !path.is_empty()
        })
}

impl Strategy for IngressClassStrategy {
    type Object = IngressClass;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, class: &mut IngressClass) {
        if let Some(params) = class.spec.as_mut().and_then(|s| s.parameters.as_mut()) {
            params.scope.get_or_insert_with(|| "Cluster".into());
        }
    }

    fn validate(&self, class: &IngressClass) -> FieldErrors {
        let mut errors = validate_meta(&class.metadata, NameRule::Subdomain);
        let spec = class.spec.clone().unwrap_or_default();
        match spec.controller.as_deref() {
            None | Some("") => errors.push(FieldError::required("spec.controller")),
            Some(c) if !valid_controller(c) => errors.push(FieldError::invalid(
                "spec.controller",
                c,
                "must be a domain-prefixed path (such as \"acme.io/foo\")",
            )),
            Some(_) => {}
        }
        if let Some(params) = &spec.parameters {
            if params.kind.is_empty() {
                errors.push(FieldError::required("spec.parameters.kind"));
            }
            if params.name.is_empty() {
                errors.push(FieldError::required("spec.parameters.name"));
            }
            let scope = params.scope.as_deref().unwrap_or("Cluster");
            let namespace = params.namespace.as_deref().unwrap_or("");
            if !SCOPES.contains(&scope) {
                errors.push(FieldError::unsupported(
                    "spec.parameters.scope",
                    scope,
                    SCOPES,
                ));
            } else if scope == "Namespace" && namespace.is_empty() {
                errors.push(FieldError::required("spec.parameters.namespace"));
            } else if scope == "Cluster" && !namespace.is_empty() {
                errors.push(FieldError::forbidden(
                    "spec.parameters.namespace",
                    "`parameters.scope` is set to 'Cluster'",
                ));
            }
        }
        errors
    }

    fn validate_update(&self, new: &IngressClass, old: &IngressClass) -> FieldErrors {
        let mut errors = self.validate(new);
        let controller = |c: &IngressClass| c.spec.as_ref().and_then(|s| s.controller.clone());
        errors.extend(immutable(
            &controller(new),
            &controller(old),
            "spec.controller",
        ));
        errors
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Controller",
                "string",
                "Controller that is responsible for handling this class",
            ),
            Column::new(
                "Parameters",
                "string",
                "A reference to a resource with additional parameters",
            ),
        ]
    }

    fn cells(&self, class: &IngressClass, _now: jiff::Timestamp) -> Vec<Value> {
        let spec = class.spec.clone().unwrap_or_default();
        let parameters = match &spec.parameters {
            None => "<none>".to_string(),
            Some(p) => match &p.api_group {
                Some(group) => format!("{}.{group}/{}", p.kind, p.name),
                None => format!("{}/{}", p.kind, p.name),
            },
        };
        vec![
            Value::String(spec.controller.unwrap_or_default()),
            Value::String(parameters),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AdmitError, Kind};
    use serde_json::json;

    fn class(controller: &str) -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "nginx"},
            "spec": {"controller": controller, "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "external-lb"}},
        })
    }

    #[test]
    fn parameters_scope_defaults_to_cluster() {
        let out = IngressClassStrategy
            .admit_create(class("k8s.io/ingress-nginx"))
            .expect("admitted");
        assert_eq!(out["spec"]["parameters"]["scope"], "Cluster");
    }

    #[test]
    fn controller_is_a_fixed_domain_path() {
        let err = IngressClassStrategy
            .admit_create(class("nginx"))
            .expect_err("invalid");
        assert!(matches!(err, AdmitError::Invalid(e) if e.0[0].field == "spec.controller"));
        let old = IngressClassStrategy
            .admit_create(class("k8s.io/ingress-nginx"))
            .expect("admitted");
        assert!(
            IngressClassStrategy
                .admit_update(class("example.com/other"), &old)
                .is_err()
        );
    }

    #[test]
    fn table_cells() {
        let cells = IngressClassStrategy
            .table_cells(&class("k8s.io/ingress-nginx"), jiff::Timestamp::now());
        assert_eq!(cells[1], "k8s.io/ingress-nginx");
        assert_eq!(cells[2], "IngressParameters.k8s.example.com/external-lb");
    }
}
