//! Custom resources: kinds defined at run time by CustomResourceDefinitions.
//!
//! Each served version of an established CRD becomes a `CustomResourceKind`, registered in a
//! process-wide table that `super::lookup` and `super::all_kinds` consult after the built-in
//! kinds. The table is rebuilt from the CRDs in the store (see `apiserver::crd_watch`), so every
//! member serves the same custom kinds. Objects are validated against the version's
//! openAPIV3Schema (types, required, enums, bounds) and pruned of fields the schema does not
//! declare unless it says `x-kubernetes-preserve-unknown-fields`, as kube-apiserver does.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use serde_json::{Map, Value};

use super::fields::{FieldError, FieldErrors, age, is_dns1123_subdomain};
use super::{AGE_COLUMN, AdmitError, Column, Kind, KindInfo, NAME_COLUMN};
use crate::json_path::JsonPath;

/// A printer column of a CRD version (`additionalPrinterColumns`).
#[derive(Clone, Debug, PartialEq)]
struct PrinterColumn {
    name: &'static str,
    kind: &'static str,
    description: &'static str,
    json_path: String,
    priority: u8,
}

/// One served version of a CRD.
pub struct CustomResourceKind {
    info: &'static KindInfo,
    schema: Option<Value>,
    columns: Vec<PrinterColumn>,
}

/// What identifies a registered kind; a CRD event with the same signature reuses the kind
/// (so watch replays do not leak a fresh `&'static` each time).
type Signature = String;

struct Table {
    by_signature: HashMap<Signature, &'static CustomResourceKind>,
    active: Vec<&'static CustomResourceKind>,
}

fn table() -> &'static RwLock<Table> {
    static TABLE: OnceLock<RwLock<Table>> = OnceLock::new();
    TABLE.get_or_init(|| {
        RwLock::new(Table {
            by_signature: HashMap::new(),
            active: Vec::new(),
        })
    })
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_list(values: Option<&Value>) -> &'static [&'static str] {
    let list: Vec<&'static str> = values
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(leak).collect())
        .unwrap_or_default();
    Box::leak(list.into_boxed_slice())
}

/// The kinds an established CRD serves, one per served version.
fn kinds_of(crd: &Value, table: &mut Table) -> Vec<&'static CustomResourceKind> {
    let text = |p: &str| crd.at(p).and_then(Value::as_str).unwrap_or("");
    let group = text("/spec/group");
    let plural = text("/spec/names/plural");
    let kind = text("/spec/names/kind");
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for version in crd
        .at("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if version.get("served") != Some(&Value::Bool(true)) {
            continue;
        }
        let signature = format!(
            "{}|{}",
            serde_json::to_string(crd.get("spec").unwrap_or(&Value::Null)).unwrap_or_default(),
            version.get("name").and_then(Value::as_str).unwrap_or("")
        );
        if let Some(existing) = table.by_signature.get(&signature) {
            out.push(*existing);
            continue;
        }
        let names = crd.at("/spec/names");
        let info: &'static KindInfo = Box::leak(Box::new(KindInfo {
            group: leak(group),
            version: leak(version.get("name").and_then(Value::as_str).unwrap_or("")),
            kind: leak(kind),
            resource: leak(plural),
            singular: leak(
                names
                    .and_then(|n| n.get("singular"))
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or(&kind.to_lowercase()),
            ),
            namespaced: text("/spec/scope") != "Cluster",
            short_names: leak_list(names.and_then(|n| n.get("shortNames"))),
            categories: leak_list(names.and_then(|n| n.get("categories"))),
            tracks_generation: true,
        }));
        let columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some(PrinterColumn {
                    name: leak(c.get("name")?.as_str()?),
                    kind: leak(c.get("type").and_then(Value::as_str).unwrap_or("string")),
                    description: leak(c.get("description").and_then(Value::as_str).unwrap_or("")),
                    json_path: c.get("jsonPath")?.as_str()?.to_string(),
                    priority: c
                        .get("priority")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        .min(1) as u8,
                })
            })
            .collect();
        let custom: &'static CustomResourceKind = Box::leak(Box::new(CustomResourceKind {
            info,
            schema: version.at("/schema/openAPIV3Schema").cloned(),
            columns,
        }));
        table.by_signature.insert(signature, custom);
        out.push(custom);
    }
    out
}

/// Replaces the served custom kinds with those of `crds` (every CRD in the store).
pub fn set_definitions(crds: &[Value]) {
    let Ok(mut table) = table().write() else {
        return;
    };
    let mut active = Vec::new();
    for crd in crds {
        active.extend(kinds_of(crd, &mut table));
    }
    table.active = active;
}

/// The custom kinds served now.
pub fn active() -> Vec<&'static dyn Kind> {
    table()
        .read()
        .map(|t| t.active.iter().map(|k| *k as &'static dyn Kind).collect())
        .unwrap_or_default()
}

/// Validates `value` against an OpenAPI v3 schema, pruning undeclared fields in place.
fn check(value: &mut Value, schema: &Value, path: &str, errors: &mut FieldErrors) {
    let field = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) && !path.is_empty() {
            *value = Value::Null;
        }
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(FieldError::invalid(
                field,
                &value.to_string(),
                "must be an integer or a string",
            ));
        }
        return;
    }
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        let want = schema.get("type").and_then(Value::as_str).unwrap_or("");
        errors.push(FieldError {
            reason: "FieldValueTypeInvalid",
            field: field.to_string(),
            message: format!(
                "Invalid value: {:?}: {field} in body must be of type {want}: {value:?}",
                type_name(value)
            ),
        });
        return;
    }
    if let Some(choices) = schema.get("enum").and_then(Value::as_array)
        && !choices.contains(value)
    {
        let supported: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
        let supported: Vec<&str> = supported.iter().map(String::as_str).collect();
        errors.push(FieldError::unsupported(
            field,
            &value.to_string(),
            &supported,
        ));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            errors.push(FieldError::invalid(
                field,
                &value.to_string(),
                &format!("{field} in body should be greater than or equal to {min}"),
            ));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            errors.push(FieldError::invalid(
                field,
                &value.to_string(),
                &format!("{field} in body should be less than or equal to {max}"),
            ));
        }
    }
    match value {
        Value::Object(map) => check_object(map, schema, path, errors),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    check(item, item_schema, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn check_object(
    map: &mut Map<String, Value>,
    schema: &Value,
    path: &str,
    errors: &mut FieldErrors,
) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(required) {
            errors.push(FieldError::required(join(required)));
        }
    }
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        // The root's apiVersion, kind and metadata are the server's business.
        if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let child_schema = properties.and_then(|p| p.get(&key)).or(additional);
        match (child_schema, map.get_mut(&key)) {
            (Some(s), Some(v)) => check(v, s, &join(&key), errors),
            (None, _)
                if preserve
                    || (properties.is_none()
                        && additional.is_none()
                        && schema.get("type").is_none()) => {}
            (None, _) => {
                map.remove(&key);
            }
            _ => {}
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A simple JSONPath (`.spec.replicas`, `.status.items[0].name`) as printer columns use it.
fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !name.is_empty() {
            current = current.get(name)?;
        }
        if let Some(i) = index {
            current = current.get(i)?;
        }
    }
    Some(current)
}

impl CustomResourceKind {
    fn admit(&self, mut obj: Value, old: Option<&Value>) -> Result<Value, AdmitError> {
        if !obj.is_object() {
            return Err(AdmitError::Decode(format!(
                "{} must be a JSON object",
                self.info.kind
            )));
        }
        let mut errors = FieldErrors::default();
        let name = obj
            .at("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if name.is_empty() {
            errors.push(FieldError::required("metadata.name"));
        } else if !is_dns1123_subdomain(name) {
            errors.push(FieldError::invalid(
                "metadata.name",
                name,
                super::fields::SUBDOMAIN_MSG,
            ));
        }
        // Status is the status subresource's (kept from the old object, dropped on create).
        if let Some(map) = obj.as_object_mut() {
            match old.and_then(|o| o.get("status")) {
                Some(status) if self.has_status_subresource() => {
                    map.insert("status".into(), status.clone());
                }
                _ if self.has_status_subresource() => {
                    map.remove("status");
                }
                _ => {}
            }
        }
        if let Some(schema) = &self.schema {
            check(&mut obj, schema, "", &mut errors);
        }
        if errors.is_empty() {
            Ok(obj)
        } else {
            Err(AdmitError::Invalid(errors))
        }
    }

    fn has_status_subresource(&self) -> bool {
        // Declared per version; with a schema that has a status property we treat it as one.
        self.schema
            .as_ref()
            .and_then(|s| s.at("/properties/status"))
            .is_some()
    }
}

impl Kind for CustomResourceKind {
    fn info(&self) -> &'static KindInfo {
        self.info
    }

    fn admit_create(&self, obj: Value) -> Result<Value, AdmitError> {
        self.admit(obj, None)
    }

    fn admit_update(&self, new: Value, old: &Value) -> Result<Value, AdmitError> {
        self.admit(new, Some(old))
    }

    fn unknown_fields(&self, obj: &Value) -> Vec<String> {
        let Some(schema) = &self.schema else {
            return Vec::new();
        };
        let mut pruned = obj.clone();
        check(&mut pruned, schema, "", &mut FieldErrors::default());
        let mut out = Vec::new();
        super::fields::missing_paths(obj, &pruned, "", &mut out);
        out
    }

    fn admit_status_update(&self, new: Value, _old: &Value) -> Result<Value, AdmitError> {
        let mut obj = new;
        if let Some(schema) = &self.schema {
            let mut errors = FieldErrors::default();
            check(&mut obj, schema, "", &mut errors);
            if !errors.is_empty() {
                return Err(AdmitError::Invalid(errors));
            }
        }
        Ok(obj)
    }

    fn openapi_schema(&self, _generator: &mut schemars::SchemaGenerator) -> Value {
        self.schema.clone().unwrap_or_else(
            || serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        )
    }

    fn table_columns(&self) -> Vec<Column> {
        let mut columns = vec![NAME_COLUMN];
        for c in self.columns.iter().filter(|c| c.priority == 0) {
            columns.push(Column::new(c.name, c.kind, c.description));
        }
        columns.push(AGE_COLUMN);
        for c in self.columns.iter().filter(|c| c.priority > 0) {
            columns.push(Column::new(c.name, c.kind, c.description).wide());
        }
        columns
    }

    fn table_cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let cell = |c: &PrinterColumn| json_path(obj, &c.json_path).cloned().unwrap_or(Value::Null);
        let mut cells = vec![obj.at("/metadata/name").cloned().unwrap_or(Value::Null)];
        cells.extend(self.columns.iter().filter(|c| c.priority == 0).map(cell));
        cells.push(Value::String(age(obj, now)));
        cells.extend(self.columns.iter().filter(|c| c.priority > 0).map(cell));
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd() -> Value {
        json!({"spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 1},
                        "color": {"type": "string", "enum": ["red", "blue"]}}}}}}}]}})
    }

    #[test]
    fn crds_become_kinds_that_validate_and_prune() {
        set_definitions(&[crd()]);
        let kind = super::super::lookup("example.com", "v1", "widgets").expect("served");
        assert_eq!(kind.info().short_names, &["wd"]);
        let ok = kind
            .admit_create(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "a"}, "spec": {"size": 2, "extra": true}}))
            .expect("admitted");
        assert!(ok["spec"].get("extra").is_none(), "pruned: {ok}");
        assert_eq!(
            kind.unknown_fields(&json!({"spec": {"size": 2, "extra": 1}})),
            vec!["spec.extra"]
        );
        let Err(AdmitError::Invalid(errors)) = kind.admit_create(json!({"metadata": {"name": "b"},
            "spec": {"size": "big", "color": "green"}}))
        else {
            panic!("expected invalid");
        };
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.color", "spec.size"]);
        let names: Vec<&str> = kind.table_columns().iter().map(|c| c.name).collect();
        assert_eq!(names, vec!["Name", "Size", "Age"]);
        set_definitions(&[]);
        assert!(super::super::lookup("example.com", "v1", "widgets").is_none());
    }
}
