//! What a node may read: Kubernetes' Node authorizer in small. A kubelet reads its own Node,
//! the pods bound to it, and only the Secrets, ConfigMaps, PVCs and service accounts those pods
//! use; Services, EndpointSlices and Nodes are readable by every node (kube-proxy needs them).
//! The ingress role adds one narrow grant: a `kubernetes.io/tls` Secret that an Ingress skiff
//! serves names in `spec.tls`, read one Secret at a time (watch by `metadata.name` in its
//! namespace), so a node never lists Secrets and never sees any other kind of Secret.

use crate::json_path::JsonPath;
use serde_json::Value;

/// Resources an agent may watch, and whether the watch must be narrowed to its own pods.
pub fn watchable(resource: &str) -> Option<WatchScope> {
    match resource {
        "pods" => Some(WatchScope::OwnPods),
        "services" | "endpointslices" | "nodes" | "ingresses" | "ingressclasses" => {
            Some(WatchScope::Any)
        }
        "secrets" => Some(WatchScope::IngressTlsSecret),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchScope {
    /// Only with `spec.nodeName=<caller>` as field selector.
    OwnPods,
    /// One Secret (`metadata.name=<name>` in a namespace) that [`ingress_uses_tls_secret`]
    /// allows; only its `kubernetes.io/tls` versions are sent ([`is_tls_secret`]).
    IngressTlsSecret,
    Any,
}

/// The Secret type the ingress role may read.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The Secret name a watch of [`WatchScope::IngressTlsSecret`] must select: exactly
/// `metadata.name=<name>`, nothing broader (no `!=`, no second term, no empty name).
pub fn single_secret_selector(field_selector: &str) -> Option<&str> {
    let name = field_selector.trim().strip_prefix("metadata.name=")?.trim();
    let simple = !name.is_empty() && !name.contains([',', '=', '!', ' ']);
    simple.then_some(name)
}

/// Whether an Ingress that skiff serves, among `ingresses` (all of one namespace), names the
/// Secret `secret` in `spec.tls`. `classes` are every IngressClass (they decide ownership).
pub fn ingress_uses_tls_secret(ingresses: &[Value], classes: &[Value], secret: &str) -> bool {
    let classes = crate::ingress::class::Classes::new(classes);
    ingresses.iter().any(|ingress| {
        classes.owns(ingress)
            && crate::ingress::class::tls_secret_names(ingress).any(|n| n == secret)
    })
}

/// Whether `secret` is a TLS Secret (what an ingress-scoped watch or read may return).
pub fn is_tls_secret(secret: &Value) -> bool {
    secret.get("type").and_then(Value::as_str) == Some(TLS_SECRET_TYPE)
}

/// Whether `pod` (bound to the caller) refers to the object `resource/name` in its namespace.
pub fn pod_uses(pod: &Value, resource: &str, name: &str) -> bool {
    let spec = match pod.get("spec") {
        Some(spec) => spec,
        None => return false,
    };
    match resource {
        "serviceaccounts" => {
            spec.get("serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default")
                == name
        }
        "secrets" | "configmaps" | "persistentvolumeclaims" => {
            let mut found = false;
            visit_refs(spec, resource, &mut |n| found |= n == name);
            found
        }
        _ => false,
    }
}

/// Calls `f` with every name of `resource` the pod spec refers to: volumes (also projected
/// sources), env/envFrom of every container, and imagePullSecrets.
fn visit_refs(spec: &Value, resource: &str, f: &mut dyn FnMut(&str)) {
    let key_ref = match resource {
        "secrets" => "secretKeyRef",
        "configmaps" => "configMapKeyRef",
        _ => "",
    };
    let env_from_ref = match resource {
        "secrets" => "secretRef",
        "configmaps" => "configMapRef",
        _ => "",
    };
    for volume in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match resource {
            "secrets" => {
                if let Some(n) = volume.at("/secret/secretName").and_then(Value::as_str) {
                    f(n);
                }
            }
            "configmaps" => {
                if let Some(n) = volume.at("/configMap/name").and_then(Value::as_str) {
                    f(n);
                }
            }
            "persistentvolumeclaims" => {
                if let Some(n) = volume
                    .at("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str)
                {
                    f(n);
                }
            }
            _ => {}
        }
        let sources = volume.at("/projected/sources").and_then(Value::as_array);
        for source in sources.into_iter().flatten() {
            let pointer = match resource {
                "secrets" => "/secret/name",
                "configmaps" => "/configMap/name",
                _ => continue,
            };
            if let Some(n) = source.at(pointer).and_then(Value::as_str) {
                f(n);
            }
        }
    }
    if resource == "secrets" {
        for s in spec
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = s.get("name").and_then(Value::as_str) {
                f(n);
            }
        }
    }
    if key_ref.is_empty() {
        return;
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for container in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for env in container
                .get("env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let pointer = format!("/valueFrom/{key_ref}/name");
                if let Some(n) = env.at(&pointer).and_then(Value::as_str) {
                    f(n);
                }
            }
            let from = container.get("envFrom").and_then(Value::as_array);
            for source in from.into_iter().flatten() {
                let pointer = format!("/{env_from_ref}/name");
                if let Some(n) = source.at(&pointer).and_then(Value::as_str) {
                    f(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_every_kind_of_reference() {
        let pod = json!({"spec": {
            "serviceAccountName": "robot",
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-cm"}},
                {"name": "c", "projected": {"sources": [{"secret": {"name": "proj-secret"}}]}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}
            ],
            "containers": [{"name": "x",
                "env": [{"name": "E", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "envfrom-secret"}}]}]
        }});
        for (resource, name) in [
            ("secrets", "vol-secret"),
            ("secrets", "proj-secret"),
            ("secrets", "envfrom-secret"),
            ("configmaps", "vol-cm"),
            ("configmaps", "env-cm"),
            ("persistentvolumeclaims", "data"),
            ("serviceaccounts", "robot"),
        ] {
            assert!(pod_uses(&pod, resource, name), "{resource}/{name}");
        }
        assert!(!pod_uses(&pod, "secrets", "vol-cm"));
        assert!(!pod_uses(&pod, "configmaps", "other"));
        assert!(!pod_uses(&pod, "serviceaccounts", "default"));
    }

    #[test]
    fn only_known_resources_are_watchable() {
        assert_eq!(watchable("pods"), Some(WatchScope::OwnPods));
        assert_eq!(watchable("services"), Some(WatchScope::Any));
        assert_eq!(watchable("secrets"), Some(WatchScope::IngressTlsSecret));
        assert_eq!(watchable("configmaps"), None);
    }

    #[test]
    fn secret_watches_select_exactly_one_name() {
        assert_eq!(
            single_secret_selector("metadata.name=web-tls"),
            Some("web-tls")
        );
        assert_eq!(
            single_secret_selector(" metadata.name=web-tls "),
            Some("web-tls")
        );
        for broad in [
            "",
            "metadata.name=",
            "metadata.name!=web-tls",
            "metadata.name=a,metadata.namespace=b",
            "metadata.namespace=default",
            "type=kubernetes.io/tls",
        ] {
            assert_eq!(single_secret_selector(broad), None, "{broad:?}");
        }
    }

    #[test]
    fn only_our_ingresses_grant_their_tls_secrets() {
        use crate::ingress::class::{CONTROLLER, DEFAULT_CLASS_ANNOTATION};
        let classes = [
            json!({"metadata": {"name": "skiff", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
                   "spec": {"controller": CONTROLLER}}),
            json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
        ];
        let ingress = |class: Option<&str>, secret: &str| {
            let mut ing = json!({"metadata": {"name": "web", "namespace": "default"},
                                 "spec": {"tls": [{"hosts": ["a.example"], "secretName": secret}]}});
            if let Some(class) = class {
                ing["spec"]["ingressClassName"] = json!(class);
            }
            ing
        };
        let ours = [ingress(Some("skiff"), "web-tls")];
        assert!(ingress_uses_tls_secret(&ours, &classes, "web-tls"));
        assert!(!ingress_uses_tls_secret(&ours, &classes, "db-password"));
        // Unnamed class: skiff's by default.
        assert!(ingress_uses_tls_secret(
            &[ingress(None, "web-tls")],
            &classes,
            "web-tls"
        ));
        // Another controller's Ingress grants nothing, nor does one without a class object.
        assert!(!ingress_uses_tls_secret(
            &[ingress(Some("nginx"), "web-tls")],
            &classes,
            "web-tls"
        ));
        assert!(!ingress_uses_tls_secret(
            &[ingress(Some("gone"), "web-tls")],
            &classes,
            "web-tls"
        ));
        // With the default class gone, unnamed Ingresses grant nothing either.
        assert!(!ingress_uses_tls_secret(
            &[ingress(None, "web-tls")],
            &classes[1..],
            "web-tls"
        ));
        assert!(!ingress_uses_tls_secret(&[], &classes, "web-tls"));
    }

    #[test]
    fn only_tls_secrets_pass() {
        assert!(is_tls_secret(&json!({"type": "kubernetes.io/tls"})));
        assert!(!is_tls_secret(&json!({"type": "Opaque"})));
        assert!(!is_tls_secret(&json!({})));
    }
}
