//! What a node may read: Kubernetes' Node authorizer in small. A kubelet reads its own Node,
//! the pods bound to it, and only the Secrets, ConfigMaps, PVCs and service accounts those pods
//! use; Services, EndpointSlices and Nodes are readable by every node (kube-proxy needs them).

use serde_json::Value;

/// Resources an agent may watch, and whether the watch must be narrowed to its own pods.
pub fn watchable(resource: &str) -> Option<WatchScope> {
    match resource {
        "pods" => Some(WatchScope::OwnPods),
        "services" | "endpointslices" | "nodes" | "ingresses" | "ingressclasses" => {
            Some(WatchScope::Any)
        }
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchScope {
    /// Only with `spec.nodeName=<caller>` as field selector.
    OwnPods,
    Any,
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
                if let Some(n) = volume.pointer("/secret/secretName").and_then(Value::as_str) {
                    f(n);
                }
            }
            "configmaps" => {
                if let Some(n) = volume.pointer("/configMap/name").and_then(Value::as_str) {
                    f(n);
                }
            }
            "persistentvolumeclaims" => {
                if let Some(n) = volume
                    .pointer("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str)
                {
                    f(n);
                }
            }
            _ => {}
        }
        let sources = volume
            .pointer("/projected/sources")
            .and_then(Value::as_array);
        for source in sources.into_iter().flatten() {
            let pointer = match resource {
                "secrets" => "/secret/name",
                "configmaps" => "/configMap/name",
                _ => continue,
            };
            if let Some(n) = source.pointer(pointer).and_then(Value::as_str) {
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
                if let Some(n) = env.pointer(&pointer).and_then(Value::as_str) {
                    f(n);
                }
            }
            let from = container.get("envFrom").and_then(Value::as_array);
            for source in from.into_iter().flatten() {
                let pointer = format!("/{env_from_ref}/name");
                if let Some(n) = source.pointer(&pointer).and_then(Value::as_str) {
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
        assert_eq!(watchable("secrets"), None);
    }
}
