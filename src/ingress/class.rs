//! Which Ingresses skiff serves. One rule, used by the agents (what to route), the node API
//! (which TLS Secrets a node may read) and the status controller (whose addresses to publish),
//! so the three never disagree:
//! - `spec.ingressClassName` names an IngressClass whose `spec.controller` is [`CONTROLLER`];
//! - or, without it, the legacy `kubernetes.io/ingress.class` annotation names such a class;
//! - or, with neither, the cluster's default IngressClass (annotation
//!   `ingressclass.kubernetes.io/is-default-class: "true"`; the newest one when several are
//!   marked, as Kubernetes' admission picks it) is one of ours.
//!
//! A class name that no IngressClass object backs is not ours: Kubernetes resolves classes
//! through objects, and an Ingress for `nginx` on a cluster without nginx stays unserved
//! instead of being hijacked.

use std::collections::BTreeSet;

use crate::json_path::JsonPath;
use serde_json::Value;

/// `spec.controller` of the IngressClasses skiff implements.
pub const CONTROLLER: &str = "skiff.dev/ingress";
/// The IngressClass every cluster starts with (marked default).
pub const CLASS_NAME: &str = "skiff";
/// Marks the IngressClass used by Ingresses that name none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The node label an agent sets to "true" when its ingress role serves on the node's address
/// ("false" when turned off): the nodes Ingress status lists.
pub const ROLE_NODE_LABEL: &str = "node.skiff.dev/ingress";
/// The pre-IngressClass way to pick a controller; still set by many charts.
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The IngressClasses as they are now, reduced to what ownership needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Classes {
    /// Names of the classes whose controller is skiff's.
    ours: BTreeSet<String>,
    /// Whether the default class (if any) is one of them.
    default_is_ours: bool,
}

impl Classes {
    pub fn new<'a>(classes: impl IntoIterator<Item = &'a Value>) -> Classes {
        let mut ours = BTreeSet::new();
        // (creationTimestamp, name, ours) of the newest default class.
        let mut default: Option<(&str, &str, bool)> = None;
        for class in classes {
            let name = text(class, "/metadata/name");
            let is_ours = text(class, "/spec/controller") == CONTROLLER;
            if is_ours {
                ours.insert(name.to_string());
            }
            let marked = class
                .at("/metadata/annotations")
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .and_then(Value::as_str)
                == Some("true");
            if marked {
                // RFC 3339 timestamps in UTC compare as strings.
                let candidate = (text(class, "/metadata/creationTimestamp"), name, is_ours);
                if default.is_none_or(|d| (candidate.0, candidate.1) > (d.0, d.1)) {
                    default = Some(candidate);
                }
            }
        }
        Classes {
            ours,
            default_is_ours: default.is_some_and(|d| d.2),
        }
    }

    /// Whether skiff serves `ingress`.
    pub fn owns(&self, ingress: &Value) -> bool {
        let named = text(ingress, "/spec/ingressClassName");
        if !named.is_empty() {
            return self.ours.contains(named);
        }
        let legacy = ingress
            .at("/metadata/annotations")
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !legacy.is_empty() {
            return self.ours.contains(legacy);
        }
        self.default_is_ours
    }
}

/// The Secrets (names, in the Ingress's namespace) that `ingress` takes certificates from.
pub fn tls_secret_names(ingress: &Value) -> impl Iterator<Item = &str> {
    ingress
        .at("/spec/tls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|tls| text(tls, "/secretName"))
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(name: &str, controller: &str, default: bool, created: &str) -> Value {
        let mut class = json!({"metadata": {"name": name, "creationTimestamp": created},
                               "spec": {"controller": controller}});
        if default {
            class["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATION: "true"});
        }
        class
    }

    fn ingress(class: Option<&str>, legacy: Option<&str>) -> Value {
        let mut ingress = json!({"metadata": {"name": "web"}, "spec": {}});
        if let Some(class) = class {
            ingress["spec"]["ingressClassName"] = json!(class);
        }
        if let Some(legacy) = legacy {
            ingress["metadata"]["annotations"] = json!({LEGACY_CLASS_ANNOTATION: legacy});
        }
        ingress
    }

    #[test]
    fn named_classes_need_an_object_with_our_controller() {
        let classes = [
            class("skiff", CONTROLLER, true, "2026-01-01T00:00:00Z"),
            class(
                "nginx",
                "k8s.io/ingress-nginx",
                false,
                "2026-01-01T00:00:00Z",
            ),
        ];
        let classes = Classes::new(&classes);
        assert!(classes.owns(&ingress(Some("skiff"), None)));
        assert!(!classes.owns(&ingress(Some("nginx"), None)));
        // No object named traefik: nobody's, certainly not ours.
        assert!(!classes.owns(&ingress(Some("traefik"), None)));
        assert!(classes.owns(&ingress(None, Some("skiff"))));
        assert!(!classes.owns(&ingress(None, Some("nginx"))));
        // The class name wins over the legacy annotation.
        assert!(!classes.owns(&ingress(Some("nginx"), Some("skiff"))));
        // Unnamed: the default class decides.
        assert!(classes.owns(&ingress(None, None)));
    }

    #[test]
    fn the_newest_default_class_takes_unnamed_ingresses() {
        let skiff_old = class("skiff", CONTROLLER, true, "2026-01-01T00:00:00Z");
        let nginx_new = class(
            "nginx",
            "k8s.io/ingress-nginx",
            true,
            "2026-02-01T00:00:00Z",
        );
        assert!(!Classes::new([&skiff_old, &nginx_new]).owns(&ingress(None, None)));
        let skiff_new = class("skiff", CONTROLLER, true, "2026-03-01T00:00:00Z");
        assert!(Classes::new([&skiff_new, &nginx_new]).owns(&ingress(None, None)));
        // No default at all: unnamed Ingresses are nobody's.
        let plain = class("skiff", CONTROLLER, false, "2026-01-01T00:00:00Z");
        assert!(!Classes::new([&plain]).owns(&ingress(None, None)));
        assert!(!Classes::default().owns(&ingress(None, None)));
    }

    #[test]
    fn tls_secrets_are_listed_by_name() {
        let ingress = json!({"spec": {"tls": [
            {"hosts": ["a.example"], "secretName": "a-cert"},
            {"hosts": ["b.example"]},
            {"secretName": "fallback"}
        ]}});
        assert_eq!(
            tls_secret_names(&ingress).collect::<Vec<_>>(),
            ["a-cert", "fallback"]
        );
    }
}
