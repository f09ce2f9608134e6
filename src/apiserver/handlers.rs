//! The REST face of the object verbs: turns a request (target, query, body) into a call on
//! `Objects` and its result into a response (plain JSON or a Table). The semantics live in
//! `objects`; this file only translates.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::objects::{
    DeleteOptions, Deleted, FieldValidation, ListOptions, Objects, Part, Scope, WriteOptions,
};
use super::patch::{self, PatchType};
use super::request::{Output, Query, ResourceTarget, decode_body};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::table::{self, IncludeObject};
use crate::json_path::JsonPath;
use crate::registry::Kind;

pub fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(output: Output, kind: &dyn Kind, code: StatusCode, object: Value, query: &Query) -> Response {
    match output {
        Output::Json => json_response(code, &object),
        Output::Table => {
            let rv = object.at("/metadata/resourceVersion").cloned();
            let include = IncludeObject::parse(query.get("includeObject"));
            let t = table::table(kind, &[object], json!({"resourceVersion": rv}), include);
            json_response(code, &t)
        }
    }
}

fn scope(target: &ResourceTarget) -> Scope<'_> {
    Scope::new(target.kind, target.namespace.as_deref())
}

fn dry_run(query: &Query) -> bool {
    query.get("dryRun") == Some("All")
}

fn write_options(query: &Query, headers: &HeaderMap) -> Result<WriteOptions, ApiError> {
    Ok(WriteOptions {
        dry_run: dry_run(query),
        field_validation: FieldValidation::parse(query.get("fieldValidation"))?,
        field_manager: Some(field_manager(query, headers)),
        ..WriteOptions::default()
    })
}

/// The `fieldManager` parameter, else the client's User-Agent up to the first `/` (as
/// kube-apiserver defaults it: `kubectl/v1.32 ...` manages as `kubectl`).
pub fn field_manager(query: &Query, headers: &HeaderMap) -> String {
    if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split(['/', ' ']).next())
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// The list options a query asks for (selectors, paging, resourceVersion=0).
pub fn list_options(query: &Query) -> Result<ListOptions, ApiError> {
    Ok(ListOptions {
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?,
        limit: query.int("limit")?.unwrap_or(0).max(0),
        continue_token: query.get("continue").map(str::to_string),
        any_revision: query.get("resourceVersion") == Some("0"),
    })
}

pub async fn get(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let linearizable = query.get("resourceVersion") != Some("0");
    let object = objects.get(scope(target), name, linearizable).await?;
    Ok(ok(output, target.kind, StatusCode::OK, object, query))
}

pub async fn list(
    objects: &Objects,
    target: &ResourceTarget,
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let info = target.kind.info();
    let result = objects.list(scope(target), &list_options(query)?).await?;
    let mut metadata = json!({"resourceVersion": result.revision.to_string()});
    if let Some(token) = result.continue_token {
        metadata["continue"] = json!(token);
    }
    let body = match output {
        Output::Table => table::table(
            target.kind,
            &result.items,
            metadata,
            IncludeObject::parse(query.get("includeObject")),
        ),
        Output::Json => json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": metadata,
            "items": result.items,
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn create(
    objects: &Objects,
    target: &ResourceTarget,
    headers: &HeaderMap,
    body: &[u8],
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let object = decode_body(headers, body)?;
    let created = objects
        .create_with(scope(target), object, &write_options(query, headers)?)
        .await?;
    Ok(ok(output, target.kind, StatusCode::CREATED, created, query))
}

/// The part of the object a write to this target may change.
fn part(target: &ResourceTarget) -> Part {
    match target.subresource.as_deref() {
        Some("status") => Part::Status,
        _ => Part::Main,
    }
}

pub async fn update(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let object = decode_body(headers, body)?;
    let transform = move |_: &Value| Ok(object.clone());
    update_and_respond(objects, target, name, &transform, headers, query, output).await
}

/// PUT and PATCH: one guaranteed update of the target's part, differing only in `transform`.
async fn update_and_respond(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    transform: &super::objects::Transform<'_>,
    headers: &HeaderMap,
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let updated = objects
        .update_with(
            scope(target),
            name,
            part(target),
            transform,
            &write_options(query, headers)?,
        )
        .await?;
    Ok(ok(output, target.kind, StatusCode::OK, updated, query))
}

pub async fn patch(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    if is_apply(content_type(headers)) {
        return server_side_apply(objects, target, name, headers, body, query, output).await;
    }
    let kind = PatchType::from_content_type(content_type(headers))?;
    let transform = move |current: &Value| patch::apply_to_latest(kind, current, body);
    update_and_respond(objects, target, name, &transform, headers, query, output).await
}

pub fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn delete_options(body: &[u8], query: &Query) -> Result<DeleteOptions, ApiError> {
    let mut options = DeleteOptions::from_body(body)?;
    if let Some(policy) = query.get("propagationPolicy") {
        options.propagation_policy = Some(policy.to_string());
    }
    options.dry_run |= dry_run(query);
    if let Some(grace) = query.int("gracePeriodSeconds")? {
        options.grace_period_seconds = Some(grace);
    }
    Ok(options)
}

pub async fn delete(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    body: &[u8],
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let options = delete_options(body, query)?;
    let (code, object) = match objects.delete(scope(target), name, &options).await? {
        Deleted::Gone(object) => (StatusCode::OK, object),
        // kube-apiserver answers 202 while finalizers hold the object.
        Deleted::Pending(object) => (StatusCode::ACCEPTED, object),
    };
    Ok(ok(output, target.kind, code, object, query))
}

pub async fn delete_collection(
    objects: &Objects,
    target: &ResourceTarget,
    body: &[u8],
    query: &Query,
) -> Result<Response, ApiError> {
    let info = target.kind.info();
    let options = delete_options(body, query)?;
    let mut list = list_options(query)?;
    list.limit = 0;
    list.continue_token = None;
    let items = objects
        .delete_collection(scope(target), &list, &options)
        .await?;
    let body = json!({
        "kind": format!("{}List", info.kind),
        "apiVersion": info.api_version(),
        "metadata": {},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &body))
}

fn is_apply(content_type: &str) -> bool {
    matches!(
        content_type.split(';').next().unwrap_or("").trim(),
        "application/apply-patch+yaml" | "application/apply-patch+json"
    )
}

/// `PATCH` with an apply configuration: creates the object if absent, else applies to it.
async fn server_side_apply(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let manager = query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::BadRequest("fieldManager is required for apply requests".into()))?
        .to_string();
    let force = query.flag("force");
    let config: Value = serde_yaml_ng::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
    let api_version = target.kind.info().api_version();
    let options = WriteOptions {
        field_manager: None,
        ..write_options(query, headers)?
    };
    let scope = scope(target);
    for _ in 0..2 {
        match objects.get(scope, name, true).await {
            Ok(_) => {
                // The precondition is the configuration's resourceVersion, if it has one, not the
                // live object's: an apply racing a controller's status write just retries.
                let wanted_rv = config.at("/metadata/resourceVersion").cloned();
                let transform = |current: &Value| {
                    let mut merged =
                        super::apply::apply(Some(current), &config, &manager, force, &api_version)?;
                    if let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
                        match &wanted_rv {
                            Some(rv) => meta.insert("resourceVersion".into(), rv.clone()),
                            None => meta.remove("resourceVersion"),
                        };
                    }
                    Ok(merged)
                };
                let updated = objects
                    .update_with(scope, name, part(target), &transform, &options)
                    .await?;
                return Ok(ok(output, target.kind, StatusCode::OK, updated, query));
            }
            Err(ApiError::NotFound { .. }) if target.subresource.is_none() => {
                let mut created =
                    super::apply::apply(None, &config, &manager, force, &api_version)?;
                if created.at("/metadata/name").is_none() {
                    created["metadata"]["name"] = serde_json::json!(name);
                }
                match objects.create_with(scope, created, &options).await {
                    Ok(created) => {
                        return Ok(ok(output, target.kind, StatusCode::CREATED, created, query));
                    }
                    // Created meanwhile by someone else: apply to it instead.
                    Err(ApiError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(
        target.kind.info(),
        name,
        super::status::MODIFIED,
    ))
}
