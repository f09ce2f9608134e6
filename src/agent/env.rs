//! A container's environment as the kubelet builds it: service links, `envFrom`, `env` with
//! `$(VAR)` references, and `valueFrom` (ConfigMap and Secret keys, the Downward API's
//! fieldRef and resourceFieldRef with divisors), in Kubernetes' order and precedence.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::Value;

use crate::json_path::JsonPath;
use crate::registry::quantity;

/// Reads the objects a pod refers to (over the agent's gRPC connection in production).
#[async_trait::async_trait]
pub trait ObjectSource: Send + Sync {
    /// Ok(None) when the object does not exist.
    async fn get(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, String>;
}

/// Why an environment could not be built: the container waits with
/// `CreateContainerConfigError` and this message, as on Kubernetes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What the Downward API needs besides the pod: the node's allocatable resources stand in for
/// unset limits.
#[derive(Clone, Debug, Default)]
pub struct NodeResources {
    pub cpu_cores: f64,
    pub memory_bytes: f64,
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The value of a Downward API `fieldPath` for `pod`.
pub fn field_value(pod: &Value, path: &str) -> Result<String, ConfigError> {
    let simple = match path {
        "metadata.name" => Some("/metadata/name"),
        "metadata.namespace" => Some("/metadata/namespace"),
        "metadata.uid" => Some("/metadata/uid"),
        "spec.nodeName" => Some("/spec/nodeName"),
        "spec.serviceAccountName" => Some("/spec/serviceAccountName"),
        "status.hostIP" => Some("/status/hostIP"),
        "status.podIP" => Some("/status/podIP"),
        _ => None,
    };
    if let Some(pointer) = simple {
        let value = text(pod, pointer);
        if path == "spec.serviceAccountName" && value.is_empty() {
            return Ok("default".into());
        }
        return Ok(value.to_string());
    }
    match path {
        "metadata.labels" | "metadata.annotations" => {
            let field = path.trim_start_matches("metadata.");
            let map = pod
                .at(&format!("/metadata/{field}"))
                .and_then(Value::as_object);
            // key="value" lines, sorted, as the kubelet writes them.
            let mut lines: Vec<String> = map
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", Value::String(v.as_str().unwrap_or("").into())))
                .collect();
            lines.sort();
            Ok(lines.join("\n"))
        }
        "status.podIPs" | "status.hostIPs" => {
            let field = path.trim_start_matches("status.");
            let ips: Vec<&str> = pod
                .at(&format!("/status/{field}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|ip| ip.get("ip").and_then(Value::as_str))
                .collect();
            Ok(ips.join(","))
        }
        _ => {
            for (prefix, field) in [
                ("metadata.labels['", "labels"),
                ("metadata.annotations['", "annotations"),
            ] {
                if let Some(key) = path.strip_prefix(prefix).and_then(|k| k.strip_suffix("']")) {
                    return Ok(pod
                        .at(&format!("/metadata/{field}"))
                        .and_then(|m| m.get(key))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string());
                }
            }
            Err(ConfigError(format!("unsupported fieldPath {path:?}")))
        }
    }
}

/// The value of a `resourceFieldRef` for `container`: the request or limit divided by the
/// divisor and rounded up; an unset limit is the node's allocatable, an unset request 0
/// (as the kubelet does).
pub fn resource_value(
    container: &Value,
    resource: &str,
    divisor: Option<&str>,
    node: &NodeResources,
) -> Result<String, ConfigError> {
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resource {resource:?}")))?;
    if !matches!(section, "limits" | "requests") {
        return Err(ConfigError(format!("unsupported resource {resource:?}")));
    }
    let declared = container
        .at(&format!("/resources/{section}/{name}"))
        .and_then(|q| match q {
            Value::String(s) => quantity::parse(s),
            Value::Number(n) => n.as_f64(),
            _ => None,
        })
        .or_else(|| {
            // A request defaults to the limit when only the limit is set.
            (section == "requests")
                .then(|| container.at(&format!("/resources/limits/{name}")))
                .flatten()
                .and_then(Value::as_str)
                .and_then(quantity::parse)
        });
    let value = match (declared, section, name) {
        (Some(v), _, _) => v,
        (None, "limits", "cpu") => node.cpu_cores,
        (None, "limits", "memory") => node.memory_bytes,
        (None, _, _) => 0.0,
    };
    let divisor = match divisor.filter(|d| !d.is_empty()) {
        Some(d) => {
            quantity::parse(d).ok_or_else(|| ConfigError(format!("invalid divisor {d:?}")))?
        }
        None => 1.0,
    };
    if divisor <= 0.0 {
        return Err(ConfigError(format!("invalid divisor for {resource}")));
    }
    // Quantities are exact decimals; nudge down before ceil so 0.015/0.001 is 15, not 16.
    let ratio = value / divisor;
    Ok(format!("{}", (ratio - 1e-9).ceil().max(0.0) as i64))
}

/// Expands `$(VAR)` from `env` in `input`; `$$` is a literal `$`; unknown references stay.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Docker-link style variables for the Services of the pod's namespace.
pub fn service_links(services: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let ip = text(svc, "/spec/clusterIP");
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let prefix = text(svc, "/metadata/name").to_uppercase().replace('-', "_");
        let ports = svc.at("/spec/ports").and_then(Value::as_array);
        let ports: Vec<&Value> = ports.into_iter().flatten().collect();
        let Some(first) = ports.first() else { continue };
        let port_of = |p: &Value| p.get("port").and_then(Value::as_i64).unwrap_or(0);
        let protocol = |p: &Value| {
            p.get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string()
        };
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{prefix}_SERVICE_PORT"), port_of(first).to_string()));
        for port in &ports {
            if let Some(name) = port
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                let name = name.to_uppercase().replace('-', "_");
                out.push((
                    format!("{prefix}_SERVICE_PORT_{name}"),
                    port_of(port).to_string(),
                ));
            }
        }
        let first_proto = protocol(first).to_lowercase();
        out.push((
            format!("{prefix}_PORT"),
            format!("{first_proto}://{ip}:{}", port_of(first)),
        ));
        for port in &ports {
            let (number, proto) = (port_of(port), protocol(port));
            let base = format!("{prefix}_PORT_{number}_{proto}");
            out.push((
                base.clone(),
                format!("{}://{ip}:{number}", proto.to_lowercase()),
            ));
            out.push((format!("{base}_PROTO"), proto.to_lowercase()));
            out.push((format!("{base}_PORT"), number.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// Decodes a Secret's or ConfigMap's entries into strings.
fn entries(object: &Value, secret: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let fields: &[&str] = if secret {
        &["data"]
    } else {
        &["data", "binaryData"]
    };
    for field in fields {
        for (k, v) in object
            .get(*field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let raw = v.as_str().unwrap_or("");
            let value = if secret || *field == "binaryData" {
                base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            } else {
                raw.to_string()
            };
            out.insert(k.clone(), value);
        }
    }
    if secret {
        for (k, v) in object
            .get("stringData")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            out.insert(k.clone(), v.as_str().unwrap_or("").to_string());
        }
    }
    out
}

/// Builds the environment of `container` in `pod`. `services` are the Services of the pod's
/// namespace plus `default/kubernetes` (used only when enableServiceLinks allows).
pub async fn build(
    pod: &Value,
    container: &Value,
    services: &[Value],
    source: &dyn ObjectSource,
    node: &NodeResources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = text(pod, "/metadata/namespace");
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let set =
        |env: &mut BTreeMap<String, String>, order: &mut Vec<String>, k: String, v: String| {
            if env.insert(k.clone(), v).is_none() {
                order.push(k);
            }
        };
    let links = pod
        .at("/spec/enableServiceLinks")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let linked: Vec<Value> = services
        .iter()
        .filter(|s| {
            let ns = text(s, "/metadata/namespace");
            (links && ns == namespace)
                || (ns == "default" && text(s, "/metadata/name") == "kubernetes")
        })
        .cloned()
        .collect();
    for (k, v) in service_links(&linked) {
        set(&mut env, &mut order, k, v);
    }
    let fetch = |resource: &'static str, name: String| async move {
        source
            .get(resource, namespace, &name)
            .await
            .map_err(|e| ConfigError(format!("cannot read {resource} {name:?}: {e}")))
    };
    for from in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = from.get("prefix").and_then(Value::as_str).unwrap_or("");
        let (resource, key, secret) = if from.get("configMapRef").is_some() {
            ("configmaps", "configMapRef", false)
        } else {
            ("secrets", "secretRef", true)
        };
        let name = text(from, &format!("/{key}/name")).to_string();
        let optional = from
            .at(&format!("/{key}/optional"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        match fetch(resource, name.clone()).await? {
            Some(object) => {
                for (k, v) in entries(&object, secret) {
                    set(&mut env, &mut order, format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => {
                let kind = if secret { "secret" } else { "configmap" };
                return Err(ConfigError(format!("{kind} \"{name}\" not found")));
            }
        }
    }
    for var in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = text(var, "/name").to_string();
        if let Some(value) = var.get("value").and_then(Value::as_str) {
            let expanded = expand(value, &env);
            set(&mut env, &mut order, name, expanded);
            continue;
        }
        let Some(from) = var.get("valueFrom") else {
            set(&mut env, &mut order, name, String::new());
            continue;
        };
        let value = if let Some(field) = from.get("fieldRef") {
            Some(field_value(pod, text(field, "/fieldPath"))?)
        } else if let Some(resource) = from.get("resourceFieldRef") {
            let target = match text(resource, "/containerName") {
                "" => container.clone(),
                other => find_container(pod, other).unwrap_or_else(|| container.clone()),
            };
            let divisor = match resource.get("divisor") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            Some(resource_value(
                &target,
                text(resource, "/resource"),
                divisor.as_deref(),
                node,
            )?)
        } else {
            let (resource, key, secret) = if from.get("configMapKeyRef").is_some() {
                ("configmaps", "configMapKeyRef", false)
            } else {
                ("secrets", "secretKeyRef", true)
            };
            let object_name = text(from, &format!("/{key}/name")).to_string();
            let entry = text(from, &format!("/{key}/key")).to_string();
            let optional = from
                .at(&format!("/{key}/optional"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let kind = if secret { "secret" } else { "configmap" };
            match fetch(resource, object_name.clone()).await? {
                Some(object) => match entries(&object, secret).remove(&entry) {
                    Some(v) => Some(v),
                    None if optional => None,
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {entry} in {kind} {namespace}/{object_name}"
                        )));
                    }
                },
                None if optional => None,
                None => return Err(ConfigError(format!("{kind} \"{object_name}\" not found"))),
            }
        };
        if let Some(value) = value {
            set(&mut env, &mut order, name, value);
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|k| env.get(&k).map(|v| (k.clone(), v.clone())))
        .collect())
}

fn find_container(pod: &Value, name: &str) -> Option<Value> {
    ["containers", "initContainers"].iter().find_map(|list| {
        pod.at(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            .cloned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Objects(Vec<(&'static str, Value)>);

    #[async_trait::async_trait]
    impl ObjectSource for Objects {
        async fn get(
            &self,
            resource: &str,
            _ns: &str,
            name: &str,
        ) -> Result<Option<Value>, String> {
            Ok(self
                .0
                .iter()
                .find(|(r, o)| {
                    *r == resource && o.at("/metadata/name").and_then(Value::as_str) == Some(name)
                })
                .map(|(_, o)| o.clone()))
        }
    }

    /// Seed 003's Downward API pod: the values `kubectl exec downward -- env` prints there.
    #[tokio::test]
    async fn downward_api_as_in_the_seed() {
        let container = json!({"name": "main", "resources": {
            "requests": {"cpu": "15m", "memory": "100Ki"},
            "limits": {"cpu": "100m", "memory": "8Mi"}},
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "CONTAINER_CPU_REQUEST_MILLICORES", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "CONTAINER_MEMORY_LIMIT_KIBIBYTES", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Ki"}}}
        ]});
        let pod = json!({"metadata": {"name": "downward", "namespace": "default"},
            "spec": {"nodeName": "node2", "serviceAccountName": "default", "enableServiceLinks": false, "containers": [container]},
            "status": {"podIP": "10.42.1.7"}});
        let env = build(
            &pod,
            &pod["spec"]["containers"][0],
            &[],
            &Objects(vec![]),
            &NodeResources::default(),
        )
        .await
        .expect("env");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("POD_NAME"), Some("downward"));
        assert_eq!(get("POD_NAMESPACE"), Some("default"));
        assert_eq!(get("POD_IP"), Some("10.42.1.7"));
        assert_eq!(get("NODE_NAME"), Some("node2"));
        assert_eq!(get("SERVICE_ACCOUNT"), Some("default"));
        assert_eq!(get("CONTAINER_CPU_REQUEST_MILLICORES"), Some("15"));
        assert_eq!(get("CONTAINER_MEMORY_LIMIT_KIBIBYTES"), Some("8192"));
    }

    #[tokio::test]
    async fn config_maps_secrets_and_references() {
        let cm = json!({"metadata": {"name": "cfg"}, "data": {"mode": "fast", "level": "3"}});
        let secret = json!({"metadata": {"name": "creds"}, "data": {"password": "czNjcjN0"}});
        let container = json!({"name": "c",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "GREETING", "value": "mode=$(CFG_mode) $$(CFG_mode)"},
            {"name": "MISSING", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": true}}}
        ]});
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [container]}});
        let source = Objects(vec![("configmaps", cm), ("secrets", secret)]);
        let services = vec![
            json!({"metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}),
        ];
        let env = build(
            &pod,
            &pod["spec"]["containers"][0],
            &services,
            &source,
            &NodeResources::default(),
        )
        .await
        .expect("env");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CFG_mode"), Some("fast"));
        assert_eq!(get("PASSWORD"), Some("s3cr3t"));
        assert_eq!(get("GREETING"), Some("mode=fast $(CFG_mode)"));
        assert_eq!(get("MISSING"), None);
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP"), Some("tcp://10.43.0.1:443"));
        let broken = json!({"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}]});
        let error = build(&pod, &broken, &[], &source, &NodeResources::default())
            .await
            .expect_err("missing key");
        assert_eq!(error.0, "couldn't find key nope in secret default/creds");
    }
}
