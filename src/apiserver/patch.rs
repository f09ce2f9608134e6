//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch
//! (merge patch whose lists of objects merge by the keys Kubernetes declares for its built-in
//! types, with `$patch` directives). Server-side apply builds on the strategic merge; see
//! `super::apply`.

use serde_json::{Map, Value};

use super::status::ApiError;
use crate::json_path::JsonPath;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
            ))),
        }
    }
}

/// Applies a patch of `kind` to `target`, returning the patched object.
pub fn apply(kind: PatchType, target: &Value, patch: &[u8]) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(patch)
        .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?;
    match kind {
        PatchType::Json => json_patch(target.clone(), &patch),
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            Ok(merge_patch(target.clone(), &patch))
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            }
            Ok(strategic_merge(target.clone(), &patch, ""))
        }
    }
}

/// `apply` for a PATCH request: the result keeps a `metadata.resourceVersion` only when the
/// patch itself names one. The resourceVersion the patch was applied to is not a precondition:
/// a patch that loses a race with another write is applied again to the newer object, as
/// kube-apiserver's GuaranteedUpdate does (controllers writing status must not turn
/// `kubectl patch` or `scale` into 409s).
pub fn apply_to_latest(kind: PatchType, target: &Value, patch: &[u8]) -> Result<Value, ApiError> {
    let mut patched = apply(kind, target, patch)?;
    let names_version = match serde_json::from_slice::<Value>(patch) {
        Ok(Value::Array(ops)) => ops
            .iter()
            .any(|op| op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion")),
        Ok(object) => object.at("/metadata/resourceVersion").is_some(),
        Err(_) => false,
    };
    if !names_version && let Some(meta) = patched.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.remove("resourceVersion");
    }
    Ok(patched)
}

/// RFC 7386.
pub fn merge_patch(target: Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut target = match target {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            let old = target.remove(k).unwrap_or(Value::Null);
            target.insert(k.clone(), merge_patch(old, v));
        }
    }
    Value::Object(target)
}

/// The merge key of a list field of the built-in types (patchMergeKey in the Go types), by
/// field name; `ports` depends on which kind of port the list holds.
fn merge_key(field: &str, sample: &Map<String, Value>) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets"
        | "resourceClaims" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" if sample.contains_key("containerPort") => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// The merge key of list `field` whose items look like `sample`, if it merges by key.
pub fn list_merge_key(field: &str, sample: &Map<String, Value>) -> Option<&'static str> {
    merge_key(field, sample)
}

/// Primitive lists that merge as sets.
fn merges_as_set(field: &str) -> bool {
    matches!(field, "finalizers")
}

pub fn strategic_merge(target: Value, patch: &Value, _field: &str) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            return Value::Object(replaced);
        }
        Some("delete") => return Value::Null,
        _ => {}
    }
    let mut target = match target {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for (k, v) in patch {
        if k == "$patch" || k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(field), v) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if v.is_null() {
            target.remove(k);
            continue;
        }
        let old = target.remove(k).unwrap_or(Value::Null);
        let merged = match (old, v) {
            (Value::Array(old), Value::Array(new)) => merge_list(k, old, new),
            (old, new @ Value::Object(_)) => strategic_merge(old, new, k),
            (_, new) => new.clone(),
        };
        if !merged.is_null() {
            target.insert(k.clone(), merged);
        }
    }
    Value::Object(target)
}

fn merge_list(field: &str, old: Vec<Value>, patch: &[Value]) -> Value {
    if merges_as_set(field) {
        let mut out = old;
        for v in patch {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Value::Array(out);
    }
    let sample = patch.iter().chain(old.iter()).find_map(Value::as_object);
    let key = sample.and_then(|s| merge_key(field, s));
    let Some(key) = key else {
        return Value::Array(patch.to_vec());
    };
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Value::Array(
            patch
                .iter()
                .filter(|p| p.get("$patch").is_none())
                .cloned()
                .collect(),
        );
    }
    let mut out = old;
    for item in patch {
        let id = item.get(key);
        let pos = id.and_then(|id| out.iter().position(|o| o.get(key) == Some(id)));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                let old = std::mem::take(&mut out[i]);
                out[i] = strategic_merge(old, item, field);
            }
            (None, false) => out.push(strategic_merge(Value::Null, item, field)),
        }
    }
    Value::Array(out)
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(Vec<String>, String), ApiError> {
    if path.is_empty() {
        return Err(bad("the root of a document cannot be patched"));
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad(format!("invalid JSON pointer {path:?}")))?;
    let mut tokens: Vec<String> = rest.split('/').map(unescape).collect();
    let last = tokens.pop().unwrap_or_default();
    Ok((tokens, last))
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(map) => map.get_mut(t),
            Value::Array(list) => t.parse::<usize>().ok().and_then(|i| list.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| bad(format!("doc is missing path: \"{path}\": missing value")))?;
    }
    Ok(cur)
}

fn get_at(doc: &Value, path: &str) -> Result<Value, ApiError> {
    doc.at(path)
        .cloned()
        .ok_or_else(|| bad(format!("doc is missing path: \"{path}\": missing value")))
}

fn add_at(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    let (tokens, last) = split_pointer(path)?;
    match parent_mut(doc, &tokens, path)? {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(list) => {
            let i = if last == "-" {
                list.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| bad(format!("invalid array index in {path:?}")))?
            };
            if i > list.len() {
                return Err(bad(format!("array index out of bounds in {path:?}")));
            }
            list.insert(i, value);
            Ok(())
        }
        _ => Err(bad(format!("doc is missing path: \"{path}\""))),
    }
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (tokens, last) = split_pointer(path)?;
    let missing = || bad(format!("doc is missing path: \"{path}\": missing value"));
    match parent_mut(doc, &tokens, path)? {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(list) => {
            let i = last.parse::<usize>().map_err(|_| missing())?;
            if i >= list.len() {
                return Err(missing());
            }
            Ok(list.remove(i))
        }
        _ => Err(missing()),
    }
}

/// RFC 6902.
pub fn json_patch(mut doc: Value, patch: &Value) -> Result<Value, ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| bad("a JSON patch must be a list of operations"))?;
    for op in ops {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("JSON patch operation without \"op\""))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("JSON patch {name} operation without \"path\"")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad(format!("JSON patch {name} operation without \"value\"")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("JSON patch {name} operation without \"from\"")))
        };
        match name {
            "add" => add_at(&mut doc, path, value()?)?,
            "remove" => {
                remove_at(&mut doc, path)?;
            }
            "replace" => {
                remove_at(&mut doc, path)?;
                add_at(&mut doc, path, value()?)?;
            }
            "move" => {
                let moved = remove_at(&mut doc, from()?)?;
                add_at(&mut doc, path, moved)?;
            }
            "copy" => {
                let copied = get_at(&doc, from()?)?;
                add_at(&mut doc, path, copied)?;
            }
            "test" => {
                if get_at(&doc, path)? != value()? {
                    return Err(bad(format!("testing value {path} failed")));
                }
            }
            other => return Err(bad(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_patch_is_conditional_only_on_a_resource_version_it_names() {
        let current = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "7"}, "spec": {"replicas": 1}});
        let merge = br#"{"spec": {"replicas": 3}}"#;
        let plain = apply_to_latest(PatchType::Merge, &current, merge).expect("merge");
        assert_eq!(plain.at("/spec/replicas"), Some(&serde_json::json!(3)));
        assert!(plain.at("/metadata/resourceVersion").is_none());
        let guarded = br#"{"metadata": {"resourceVersion": "6"}, "spec": {"replicas": 3}}"#;
        let pinned = apply_to_latest(PatchType::Strategic, &current, guarded).expect("strategic");
        assert_eq!(
            pinned.at("/metadata/resourceVersion"),
            Some(&serde_json::json!("6"))
        );
        let ops = br#"[{"op": "replace", "path": "/metadata/resourceVersion", "value": "5"}]"#;
        let pinned = apply_to_latest(PatchType::Json, &current, ops).expect("json patch");
        assert_eq!(
            pinned.at("/metadata/resourceVersion"),
            Some(&serde_json::json!("5"))
        );
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_and_removes() {
        let out = merge_patch(
            json!({"a": 1, "b": {"c": 2}}),
            &json!({"a": null, "b": {"d": 3}}),
        );
        assert_eq!(out, json!({"b": {"c": 2, "d": 3}}));
    }

    #[test]
    fn json_patch_ops() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        let out = json_patch(
            doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "test", "path": "/list/0", "value": 1}
            ]),
        )
        .expect("patch");
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"b": "2"}}, "list": [1, 2, 3]})
        );
        assert!(json_patch(json!({}), &json!([{"op": "remove", "path": "/x"}])).is_err());
        assert!(json_patch(json!({}), &json!({"op": "add"})).is_err());
    }

    #[test]
    fn strategic_merge_by_key() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}
        ]}});
        let patch = json!({
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "spec": {"containers": [{"name": "b", "image": "y:2"}, {"name": "a", "$patch": "delete"}]}
        });
        let out = strategic_merge(pod, &patch, "");
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "b", "image": "y:2"}]}})
        );
    }
}
