//! Subresources beyond `/status` (which is a `Part` of the ordinary update): `/scale` for the
//! replicated workloads, and the pod verb the scheduler uses, `pods/binding`
//! (`pods/eviction` has its own module, `eviction`).

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::handlers::json_response;
use super::objects::{Objects, Part, Scope, WriteOptions, name_of, strings_at};
use super::patch::{self, PatchType};
use super::request::{Query, ResourceTarget, decode_body};
use super::status::ApiError;
use super::tokens::{TokenIssuer, TokenSubject};
use crate::json_path::JsonPath;
use crate::registry::KindInfo;

/// Kinds with `spec.replicas` and a `/scale` subresource.
pub fn has_scale(info: &KindInfo) -> bool {
    matches!(
        (info.group, info.resource),
        ("apps", "deployments" | "replicasets" | "statefulsets") | ("", "replicationcontrollers")
    )
}

/// The subresources discovery lists for a kind, besides the kind itself.
pub fn subresources_of(info: &KindInfo) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !matches!(
        info.kind,
        "ConfigMap"
            | "Secret"
            | "ServiceAccount"
            | "Event"
            | "Endpoints"
            | "LimitRange"
            | "IngressClass"
            | "StorageClass"
            | "EndpointSlice"
            | "Lease"
            | "ControllerRevision"
    ) && !info.group.starts_with("rbac")
    {
        out.push("status");
    }
    if has_scale(info) {
        out.push("scale");
    }
    if info.group.is_empty() && info.resource == "pods" {
        out.extend(["binding", "eviction", "log", "exec", "attach"]);
    }
    if info.group.is_empty() && info.resource == "serviceaccounts" {
        out.push("token");
    }
    out
}

fn scope(target: &ResourceTarget) -> Scope<'_> {
    Scope::new(target.kind, target.namespace.as_deref())
}

/// `spec.selector` as a selector string (`app=web,tier in (a,b)`), what Scale.status carries.
fn selector_string(object: &Value) -> String {
    let Some(selector) = object.at("/spec/selector") else {
        return String::new();
    };
    // ReplicationControllers use a plain map; the apps kinds a LabelSelector.
    let labels = selector.get("matchLabels").unwrap_or(selector);
    let mut parts: Vec<String> = labels
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                .collect()
        })
        .unwrap_or_default();
    for expr in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = expr
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match expr.get("operator").and_then(Value::as_str) {
            Some("In") => parts.push(format!("{key} in ({})", values.join(","))),
            Some("NotIn") => parts.push(format!("{key} notin ({})", values.join(","))),
            Some("Exists") => parts.push(key.to_string()),
            Some("DoesNotExist") => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

/// autoscaling/v1 Scale of a replicated object.
fn scale_of(object: &Value) -> Value {
    let meta = |f: &str| object.at(&format!("/metadata/{f}")).cloned();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta("name"),
            "namespace": meta("namespace"),
            "uid": meta("uid"),
            "resourceVersion": meta("resourceVersion"),
            "creationTimestamp": meta("creationTimestamp"),
        },
        "spec": {"replicas": object.at("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": object.at("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector_string(object),
        },
    })
}

fn not_scalable(_target: &ResourceTarget) -> ApiError {
    ApiError::NoRoute
}

pub async fn get_scale(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
) -> Result<Response, ApiError> {
    if !has_scale(target.kind.info()) {
        return Err(not_scalable(target));
    }
    let object = objects.get(scope(target), name, true).await?;
    Ok(json_response(StatusCode::OK, &scale_of(&object)))
}

/// PUT or PATCH of `/scale`: the new Scale's spec.replicas becomes the object's, guarded by
/// the Scale's resourceVersion (which is the object's).
pub async fn update_scale(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    is_patch: bool,
    query: &Query,
) -> Result<Response, ApiError> {
    if !has_scale(target.kind.info()) {
        return Err(not_scalable(target));
    }
    let patch_type = if is_patch {
        Some(PatchType::from_content_type(
            super::handlers::content_type(headers),
        )?)
    } else {
        None
    };
    let put_body = if is_patch {
        None
    } else {
        Some(decode_body(headers, body)?)
    };
    let transform = move |current: &Value| {
        let scale = match (&put_body, patch_type) {
            (Some(scale), _) => scale.clone(),
            (None, Some(kind)) => patch::apply_to_latest(kind, &scale_of(current), body)?,
            (None, None) => scale_of(current),
        };
        let replicas = scale
            .at("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::BadRequest("Scale.spec.replicas must be an integer".into()))?;
        let mut new = current.clone();
        new["spec"]["replicas"] = json!(replicas);
        match scale
            .at("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv) if !rv.is_empty() => new["metadata"]["resourceVersion"] = json!(rv),
            _ => {
                if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
            }
        }
        Ok(new)
    };
    let dry_run = query.get("dryRun") == Some("All");
    let options = WriteOptions {
        dry_run,
        field_manager: Some(super::handlers::field_manager(query, headers)),
        ..WriteOptions::default()
    };
    let updated = objects
        .update_with(scope(target), name, Part::Main, &transform, &options)
        .await?;
    Ok(json_response(StatusCode::OK, &scale_of(&updated)))
}

/// The Status a successful binding or eviction answers with.
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

/// `POST pods/<name>/binding`: assigns the pod to a node, once.
pub async fn bind(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let binding = decode_body(headers, body)?;
    let node = binding
        .at("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest("Binding.target.name is required".into()))?
        .to_string();
    let info = target.kind.info();
    let transform = move |current: &Value| {
        let assigned = current
            .at("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !assigned.is_empty() {
            return Err(ApiError::conflict(
                info,
                name_of(current),
                format!(
                    "pod {} is already assigned to node {assigned:?}",
                    name_of(current)
                ),
            ));
        }
        if super::objects::is_deleting(current) {
            return Err(ApiError::conflict(
                info,
                name_of(current),
                "pod is being deleted, cannot be assigned to a host".to_string(),
            ));
        }
        let mut new = current.clone();
        new["spec"]["nodeName"] = json!(node);
        Ok(new)
    };
    objects
        .update(scope(target), name, Part::Binding, &transform, false)
        .await?;
    Ok(json_response(StatusCode::CREATED, &success()))
}

/// `POST serviceaccounts/<name>/token` (kubectl create token): a TokenRequest answered with
/// a signed token bound to the ServiceAccount's uid.
pub async fn create_token(
    objects: &Objects,
    tokens: &TokenIssuer,
    target: &ResourceTarget,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let account = objects.get(scope(target), name, true).await?;
    let mut request = if body.is_empty() {
        json!({})
    } else {
        decode_body(headers, body)?
    };
    let audiences = strings_at(&request, "/spec/audiences");
    let ttl = request
        .at("/spec/expirationSeconds")
        .and_then(Value::as_i64);
    let subject = TokenSubject {
        namespace: target.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
        uid: account
            .at("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    };
    let (token, expires) = tokens.issue(&subject, &audiences, ttl).await?;
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    request["metadata"] = json!({
        "name": name,
        "namespace": subject.namespace,
        "creationTimestamp": super::objects::now_rfc3339(),
    });
    request["status"] = json!({
        "token": token,
        "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    });
    Ok(json_response(StatusCode::CREATED, &request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_carries_replicas_and_selector() {
        let d = json!({
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
            "status": {"replicas": 2}
        });
        let s = scale_of(&d);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=web,tier in (a,b)");
        assert_eq!(s["metadata"]["resourceVersion"], "7");
    }
}
