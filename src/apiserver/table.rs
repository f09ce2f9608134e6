//! Server-side printing: a list of objects as a meta.k8s.io/v1 Table with the kind's columns.

use serde_json::{Value, json};

use crate::registry::Kind;

/// `includeObject`: what each row carries besides its cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

pub fn column_definitions(kind: &dyn Kind) -> Vec<Value> {
    kind.table_columns()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect()
}

pub fn row(kind: &dyn Kind, object: &Value, include: IncludeObject, now: jiff::Timestamp) -> Value {
    let mut row = json!({ "cells": kind.table_cells(object, now) });
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => row["object"] = object.clone(),
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object.get("metadata").cloned().unwrap_or(json!({})),
            });
        }
    }
    row
}

/// A Table of `objects`; `metadata` carries the list's resourceVersion/continue.
pub fn table(kind: &dyn Kind, objects: &[Value], metadata: Value, include: IncludeObject) -> Value {
    let now = jiff::Timestamp::now();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(kind),
        "rows": objects.iter().map(|o| row(kind, o, include, now)).collect::<Vec<_>>(),
    })
}
