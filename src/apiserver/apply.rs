//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! Every write records which manager (the `fieldManager` query parameter, e.g. `kubectl`,
//! `kubectl-client-side-apply`) set which fields, in the FieldsV1 notation kube-apiserver
//! uses (`f:spec`, `k:{"name":"web"}` for list items keyed by their merge key, `v:"x"` for set
//! members). An apply (`PATCH` with `application/apply-patch+yaml`) then:
//! - conflicts (409) when it would change a field another manager owns, unless `force=true`,
//!   which takes the field over;
//! - merges its configuration into the live object (lists by their merge keys);
//! - removes the fields it applied last time and no longer applies, if nobody else owns them;
//! - records its new field set as the manager's `Apply` entry.
//!
//! Ordinary updates take ownership of the fields they change from whoever held them.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::patch::{list_merge_key, strategic_merge};
use super::status::ApiError;
use crate::json_path::JsonPath;

/// One path from the object root to a field: `["f:spec", "f:containers", "k:{\"name\":\"c\"}",
/// "f:image"]`.
pub type FieldPath = Vec<String>;

/// Metadata the server owns; never tracked.
const UNTRACKED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The leaf field paths an object sets (status excluded: it is the status writers').
pub fn leaves(object: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    if let Value::Object(map) = object {
        for (key, value) in map {
            if matches!(key.as_str(), "apiVersion" | "kind" | "status") {
                continue;
            }
            let mut path = vec![format!("f:{key}")];
            if key == "metadata" {
                if let Value::Object(meta) = value {
                    for (mk, mv) in meta {
                        if UNTRACKED_METADATA.contains(&mk.as_str()) {
                            continue;
                        }
                        path.push(format!("f:{mk}"));
                        walk(mk, mv, &mut path, &mut out);
                        path.pop();
                    }
                }
                continue;
            }
            walk(key, value, &mut path, &mut out);
            path.pop();
        }
    }
    out
}

fn walk(field: &str, value: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(format!("f:{k}"));
                walk(k, v, path, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            if let Some(key) = items
                .iter()
                .find_map(Value::as_object)
                .and_then(|sample| list_merge_key(field, sample))
            {
                for item in items {
                    let Some(id) = item.get(key) else {
                        continue;
                    };
                    path.push(format!("k:{}", json!({ key: id })));
                    walk(field, item, path, out);
                    path.pop();
                }
            } else if field == "finalizers" {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone());
                    path.pop();
                }
            } else {
                out.insert(path.clone());
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at a field path, if present.
fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut current = object;
    for segment in path {
        current = step(current, segment)?;
    }
    Some(current)
}

fn step<'a>(value: &'a Value, segment: &str) -> Option<&'a Value> {
    if let Some(field) = segment.strip_prefix("f:") {
        return value.get(field);
    }
    if let Some(key) = segment.strip_prefix("k:") {
        let wanted: Map<String, Value> = serde_json::from_str(key).ok()?;
        return value
            .as_array()?
            .iter()
            .find(|item| wanted.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    if let Some(member) = segment.strip_prefix("v:") {
        let wanted: Value = serde_json::from_str(member).ok()?;
        return value.as_array()?.iter().find(|item| **item == wanted);
    }
    None
}

/// Removes the field (or list item) at `path`, if present.
fn remove_at(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = object;
    for segment in parents {
        let next = if let Some(field) = segment.strip_prefix("f:") {
            current.get_mut(field)
        } else {
            let Some(index) = position(current, segment) else {
                return;
            };
            current.get_mut(index)
        };
        let Some(next) = next else {
            return;
        };
        current = next;
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(map) = current.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(index) = position(current, last)
        && let Some(items) = current.as_array_mut()
    {
        items.remove(index);
    }
}

fn position(list: &Value, segment: &str) -> Option<usize> {
    let items = list.as_array()?;
    let target = step(list, segment)?;
    items.iter().position(|item| std::ptr::eq(item, target))
}

/// FieldsV1 JSON from a set of paths.
pub fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for segment in path {
            let child = node
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            node = match child {
                Value::Object(map) => map,
                _ => break,
            };
        }
    }
    // Intermediate list items are marked with "." as Kubernetes does.
    mark_items(&mut root);
    Value::Object(root)
}

fn mark_items(node: &mut Map<String, Value>) {
    for (key, child) in node.iter_mut() {
        if let Value::Object(map) = child {
            if (key.starts_with("k:") || key.starts_with("v:")) && !map.is_empty() {
                map.insert(".".into(), json!({}));
            }
            mark_items(map);
        }
    }
}

/// The leaf paths of a FieldsV1 document.
pub fn from_fields_v1(fields: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let mut path = Vec::new();
    collect(fields, &mut path, &mut out);
    out
}

fn collect(node: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(map) = node.as_object() else {
        return;
    };
    let children: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| *k != ".").collect();
    if children.is_empty() {
        if !path.is_empty() {
            out.insert(path.clone());
        }
        return;
    }
    for (key, child) in children {
        path.push(key.clone());
        collect(child, path, out);
        path.pop();
    }
}

/// One `metadata.managedFields` entry.
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
    subresource: String,
}

fn entries(object: &Value) -> Vec<Entry> {
    object
        .at("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let text = |f: &str| e.get(f).and_then(Value::as_str).unwrap_or("").to_string();
            Entry {
                manager: text("manager"),
                operation: text("operation"),
                api_version: text("apiVersion"),
                time: text("time"),
                fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                subresource: text("subresource"),
            }
        })
        .collect()
}

fn store_entries(object: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn now() -> String {
    super::objects::now_rfc3339()
}

/// Records an ordinary write (create, update, non-apply patch) by `manager`: it owns the
/// fields it changed, and nobody else does any more. `old` is None on create.
pub fn record_update(new: &mut Value, old: Option<&Value>, manager: &str, api_version: &str) {
    let mut list = old.map(entries).unwrap_or_default();
    // Fields that vanished are owned by nobody.
    let present = leaves(new);
    let changed: BTreeSet<FieldPath> = present
        .iter()
        .filter(|p| old.is_none_or(|o| value_at(o, p) != value_at(new, p)))
        .cloned()
        .collect();
    for entry in &mut list {
        entry
            .fields
            .retain(|p| present.contains(p) && !changed.contains(p));
    }
    if !changed.is_empty() {
        match list
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update")
        {
            Some(entry) => {
                entry.fields.extend(changed);
                entry.time = now();
            }
            None => list.push(Entry {
                manager: manager.into(),
                operation: "Update".into(),
                api_version: api_version.into(),
                time: now(),
                fields: changed,
                subresource: String::new(),
            }),
        }
    }
    store_entries(new, list);
}

/// Server-side apply of `config` by `manager` onto `live` (None = the object does not exist).
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
) -> Result<Value, ApiError> {
    if !config.is_object() {
        return Err(ApiError::BadRequest(
            "an apply configuration must be an object".into(),
        ));
    }
    let applied = leaves(config);
    let Some(live) = live else {
        let mut created = config.clone();
        store_entries(
            &mut created,
            vec![Entry {
                manager: manager.into(),
                operation: "Apply".into(),
                api_version: api_version.into(),
                time: now(),
                fields: applied,
                subresource: String::new(),
            }],
        );
        return Ok(created);
    };
    let mut list = entries(live);
    let mine = |e: &Entry| e.manager == manager && e.operation == "Apply";
    // Conflicts: fields another manager owns that this apply would change.
    let mut conflicts: Vec<(String, String, FieldPath)> = Vec::new();
    for entry in list.iter().filter(|e| !mine(e)) {
        for path in entry.fields.intersection(&applied) {
            if value_at(live, path) != value_at(config, path) {
                conflicts.push((
                    entry.manager.clone(),
                    entry.api_version.clone(),
                    path.clone(),
                ));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(m, v, p)| format!("conflict with {m:?} using {v}: {}", dotted(p)))
            .collect();
        let message = match lines.as_slice() {
            [one] => format!("Apply failed with 1 conflict: {one}"),
            many => format!(
                "Apply failed with {} conflicts: {}",
                many.len(),
                many.iter().map(|l| format!("\n- {l}")).collect::<String>()
            ),
        };
        return Err(ApiError::ApplyConflict(message));
    }
    if force {
        for entry in list.iter_mut().filter(|e| !mine(e)) {
            entry
                .fields
                .retain(|p| !conflicts.iter().any(|(_, _, c)| c == p));
        }
    }
    let mut merged = strategic_merge(live.clone(), config, "");
    // Fields this manager applied before and no longer applies, owned by nobody else, go.
    let previous: BTreeSet<FieldPath> = list
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for path in previous.difference(&applied) {
        let owned_elsewhere = list.iter().filter(|e| !mine(e)).any(|e| {
            e.fields
                .iter()
                .any(|p| p.starts_with(path) || path.starts_with(p))
        });
        if !owned_elsewhere {
            remove_at(&mut merged, path);
        }
    }
    list.retain(|e| !mine(e));
    list.push(Entry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        time: now(),
        fields: applied,
        subresource: String::new(),
    });
    store_entries(&mut merged, list);
    Ok(merged)
}

/// `.spec.replicas` / `.spec.containers[name="web"].image`, as kubectl prints conflicts.
fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if let Some(f) = segment.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = segment.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = segment.strip_prefix("v:") {
            out.push_str(&format!("[{v}]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    #[test]
    fn fields_v1_round_trips_and_keys_list_items() {
        let paths = leaves(&deployment(2, "nginx"));
        assert!(paths.contains(&vec![
            "f:spec".to_string(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            r#"k:{"name":"web"}"#.into(),
            "f:image".into()
        ]));
        assert!(
            !paths
                .iter()
                .any(|p| p.contains(&"f:name".to_string()) && p.len() == 2)
        );
        assert_eq!(from_fields_v1(&to_fields_v1(&paths)), paths);
    }

    #[test]
    fn apply_creates_then_conflicts_with_another_manager() {
        let created =
            apply(None, &deployment(2, "nginx"), "alice", false, "apps/v1").expect("create");
        assert_eq!(created["metadata"]["managedFields"][0]["manager"], "alice");
        // Bob applies a different replica count: conflict, unless forced.
        let err = apply(
            Some(&created),
            &deployment(5, "nginx"),
            "bob",
            false,
            "apps/v1",
        )
        .expect_err("conflict");
        assert!(
            err.to_string()
                .contains(r#"conflict with "alice" using apps/v1: .spec.replicas"#),
            "{err}"
        );
        let forced = apply(
            Some(&created),
            &deployment(5, "nginx"),
            "bob",
            true,
            "apps/v1",
        )
        .expect("force");
        assert_eq!(forced["spec"]["replicas"], 5);
        // The same value is shared ownership, not a conflict.
        apply(
            Some(&created),
            &deployment(2, "nginx"),
            "bob",
            false,
            "apps/v1",
        )
        .expect("no conflict");
    }

    #[test]
    fn reapplying_without_a_field_removes_it() {
        let mut with_label = deployment(2, "nginx");
        with_label["metadata"]["labels"]["tier"] = json!("front");
        let live = apply(None, &with_label, "alice", false, "apps/v1").expect("create");
        let next = apply(
            Some(&live),
            &deployment(3, "nginx"),
            "alice",
            false,
            "apps/v1",
        )
        .expect("apply");
        assert_eq!(next["spec"]["replicas"], 3);
        assert!(next["metadata"]["labels"].get("tier").is_none(), "{next}");
        assert_eq!(next["metadata"]["labels"]["app"], "web");
    }

    #[test]
    fn updates_take_ownership_of_what_they_change() {
        let live = apply(None, &deployment(2, "nginx"), "alice", false, "apps/v1").expect("create");
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(7);
        record_update(&mut scaled, Some(&live), "kubectl-scale", "apps/v1");
        // Alice re-applying 2 replicas now conflicts with the scaler.
        let err = apply(
            Some(&scaled),
            &deployment(2, "nginx"),
            "alice",
            false,
            "apps/v1",
        )
        .expect_err("conflict");
        assert!(err.to_string().contains("kubectl-scale"), "{err}");
    }
}
