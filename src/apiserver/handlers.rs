//! The verbs on objects: get, list, create, update (PUT), patch, delete. Each reads or writes
//! through `ObjectStore`; every write is one raft transaction guarded by the revision it read,
//! and a lost race is retried (no client precondition) or a 409 (client precondition).

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rand::Rng as _;
use serde_json::{Value, json};

use super::patch::{self, PatchType};
use super::request::{Output, Query, ResourceTarget, decode_body};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, MODIFIED};
use super::store::{CreateOutcome, ObjectStore, Stored, list_prefix, object_key};
use super::table::{self, IncludeObject};
use crate::registry::{self, AdmitError, Kind, KindInfo};

/// How often a write without a client precondition retries a lost race before giving up.
const MAX_RETRIES: usize = 16;

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
            let rv = object.pointer("/metadata/resourceVersion").cloned();
            let include = IncludeObject::parse(query.get("includeObject"));
            let t = table::table(kind, &[object], json!({"resourceVersion": rv}), include);
            json_response(code, &t)
        }
    }
}

fn admit_error(info: &KindInfo, name: &str, e: AdmitError) -> ApiError {
    match e {
        AdmitError::Decode(msg) => ApiError::BadRequest(msg),
        AdmitError::Invalid(errors) => ApiError::invalid(info, name, errors),
    }
}

fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn meta_mut(object: &mut Value) -> Result<&mut serde_json::Map<String, Value>, ApiError> {
    let obj = object
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the object must be a JSON object".into()))?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))
}

/// apiVersion/kind must be absent or name this kind; they are set when absent.
fn check_type(info: &KindInfo, object: &mut Value) -> Result<(), ApiError> {
    let api_version = info.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", info.kind)] {
        match object.get(field).and_then(Value::as_str) {
            None | Some("") => object[field] = json!(want),
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({}) does not match the expected API version ({api_version}) or kind {got} is not {}",
                    object
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    info.kind
                )));
            }
        }
    }
    Ok(())
}

/// The namespace in the body must be empty or match the URL's; it is set from the URL.
fn check_namespace(
    info: &KindInfo,
    object: &mut Value,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    let meta = meta_mut(object)?;
    if !info.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let url_ns = namespace.ok_or_else(|| {
        ApiError::BadRequest("the namespace of the object is required in the URL".into())
    })?;
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(url_ns));
            Ok(())
        }
        Some(ns) if ns == url_ns => Ok(()),
        Some(_) => Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
    }
}

pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// apiserver's SimpleNameGenerator: 5 characters from an alphabet without vowels.
fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub async fn get(
    store: &ObjectStore,
    target: &ResourceTarget,
    name: &str,
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let info = target.kind.info();
    let key = object_key(info, target.namespace.as_deref(), name);
    let linearizable = query.get("resourceVersion") != Some("0");
    let stored = store
        .get(&key, linearizable)
        .await?
        .ok_or_else(|| ApiError::not_found(info, name))?;
    Ok(ok(
        output,
        target.kind,
        StatusCode::OK,
        stored.object,
        query,
    ))
}

/// Continue tokens: the next key and the revision of the first page, base64 JSON.
fn encode_continue(key: &[u8], revision: i64) -> String {
    let token =
        json!({"rv": revision, "start": base64::engine::general_purpose::STANDARD.encode(key)});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(Vec<u8>, i64), ApiError> {
    let bad = || ApiError::BadRequest("continue key is not valid".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(bad)?;
    Ok((start, rv))
}

pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn from_query(query: &Query) -> Result<Self, ApiError> {
        Ok(Selectors {
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// Reads a whole (filtered) list or one page of it; returns items and the list revision.
pub async fn list_items(
    store: &ObjectStore,
    target: &ResourceTarget,
    query: &Query,
) -> Result<(Vec<Value>, i64, Option<String>), ApiError> {
    let info = target.kind.info();
    let selectors = Selectors::from_query(query)?;
    let limit = query.int("limit")?.unwrap_or(0).max(0);
    let (start, revision) = match query.get("continue") {
        Some(token) => {
            let (start, rv) = decode_continue(token)?;
            (Some(start), rv)
        }
        None => (None, 0),
    };
    let linearizable = revision == 0 && query.get("resourceVersion") != Some("0");
    let prefix = list_prefix(info, target.namespace.as_deref());
    let page = store
        .list(&prefix, start, limit, revision, linearizable)
        .await?;
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|s| s.object)
        .filter(|o| selectors.matches(o))
        .collect();
    let token = page
        .next_key
        .map(|key| encode_continue(&key, page.revision));
    Ok((items, page.revision, token))
}

pub async fn list(
    store: &ObjectStore,
    target: &ResourceTarget,
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let info = target.kind.info();
    let (items, revision, token) = list_items(store, target, query).await?;
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(token) = token {
        metadata["continue"] = json!(token);
    }
    let body = match output {
        Output::Table => table::table(
            target.kind,
            &items,
            metadata,
            IncludeObject::parse(query.get("includeObject")),
        ),
        Output::Json => json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn create(
    store: &ObjectStore,
    target: &ResourceTarget,
    headers: &HeaderMap,
    body: &[u8],
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let info = target.kind.info();
    let mut object = decode_body(headers, body)?;
    check_type(info, &mut object)?;
    check_namespace(info, &mut object, target.namespace.as_deref())?;
    let meta = meta_mut(&mut object)?;
    let has_name = meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name && let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
        let name = format!("{prefix}{}", generated_suffix());
        meta.insert("name".into(), json!(name));
    }
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(field);
    }
    if info.tracks_generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    let name = name_of(&object).to_string();
    let mut object = target
        .kind
        .admit_create(object)
        .map_err(|e| admit_error(info, &name, e))?;
    let key = object_key(info, target.namespace.as_deref(), &name);
    if query.get("dryRun") == Some("All") {
        return Ok(ok(output, target.kind, StatusCode::CREATED, object, query));
    }
    let namespace = target.namespace.as_deref().filter(|_| info.namespaced);
    match store.create(&key, &object, namespace).await? {
        CreateOutcome::Created(revision) => {
            super::store::set_resource_version(&mut object, revision);
            Ok(ok(output, target.kind, StatusCode::CREATED, object, query))
        }
        CreateOutcome::AlreadyExists => Err(ApiError::already_exists(info, &name)),
        CreateOutcome::NamespaceMissing => Err(ApiError::NotFound {
            resource: "namespaces".into(),
            name: namespace.unwrap_or("").to_string(),
        }),
    }
}

/// What an update starts from: a function from the current object to the desired one.
type Transform<'a> = dyn Fn(&Value) -> Result<Value, ApiError> + Send + Sync + 'a;

/// The guaranteed-update loop (after kube's GuaranteedUpdate): read, transform, check the
/// client's resourceVersion, admit, write if unchanged since the read; retry a lost race.
/// PUT and PATCH: the same guaranteed update, differing only in how the new object is made.
async fn update_and_respond(
    store: &ObjectStore,
    target: &ResourceTarget,
    name: &str,
    transform: &Transform<'_>,
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let dry_run = query.get("dryRun") == Some("All");
    let updated = guaranteed_update(store, target, name, transform, dry_run).await?;
    Ok(ok(output, target.kind, StatusCode::OK, updated, query))
}

async fn guaranteed_update(
    store: &ObjectStore,
    target: &ResourceTarget,
    name: &str,
    transform: &Transform<'_>,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let info = target.kind.info();
    let key = object_key(info, target.namespace.as_deref(), name);
    for _ in 0..MAX_RETRIES {
        let Stored {
            object: current,
            mod_revision,
        } = store
            .get(&key, true)
            .await?
            .ok_or_else(|| ApiError::not_found(info, name))?;
        let mut new = transform(&current)?;
        check_type(info, &mut new)?;
        check_namespace(info, &mut new, target.namespace.as_deref())?;
        if name_of(&new) != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&new)
            )));
        }
        let client_rv = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
            .map(str::to_string);
        if client_rv
            .as_deref()
            .is_some_and(|rv| rv != mod_revision.to_string())
        {
            return Err(ApiError::conflict(info, name, MODIFIED));
        }
        // Fields the server owns are carried over from the stored object.
        let meta = meta_mut(&mut new)?;
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match current.pointer(&format!("/metadata/{field}")) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.insert("resourceVersion".into(), json!(mod_revision.to_string()));
        let mut new = target
            .kind
            .admit_update(new, &current)
            .map_err(|e| admit_error(info, name, e))?;
        if info.tracks_generation && new.get("spec") != current.get("spec") {
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new)?.insert("generation".into(), json!(generation + 1));
        }
        // A no-op update writes nothing and keeps the resourceVersion (as kube does).
        if new == current || dry_run {
            return Ok(new);
        }
        if let Some(revision) = store.update(&key, &new, mod_revision).await? {
            super::store::set_resource_version(&mut new, revision);
            return Ok(new);
        }
        if client_rv.is_some() {
            return Err(ApiError::conflict(info, name, MODIFIED));
        }
        tracing::debug!(key, "lost an update race; retrying");
    }
    Err(ApiError::conflict(info, name, MODIFIED))
}

pub async fn update(
    store: &ObjectStore,
    target: &ResourceTarget,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let object = decode_body(headers, body)?;
    let transform = move |_: &Value| Ok(object.clone());
    update_and_respond(store, target, name, &transform, query, output).await
}

pub async fn patch(
    store: &ObjectStore,
    target: &ResourceTarget,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let kind = PatchType::from_content_type(content_type)?;
    let transform = move |current: &Value| patch::apply(kind, current, body);
    update_and_respond(store, target, name, &transform, query, output).await
}

pub async fn delete(
    store: &ObjectStore,
    target: &ResourceTarget,
    name: &str,
    body: &[u8],
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let info = target.kind.info();
    let options: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
    };
    let key = object_key(info, target.namespace.as_deref(), name);
    // Deleting a namespace deletes what it holds in the same transaction. Graceful
    // namespace termination (phase Terminating, finalizers) replaces this later.
    let contents: Vec<String> = if info.kind == "Namespace" {
        registry::kinds()
            .iter()
            .map(|k| k.info())
            .filter(|i| i.namespaced)
            .map(|i| list_prefix(i, Some(name)))
            .collect()
    } else {
        Vec::new()
    };
    for _ in 0..MAX_RETRIES {
        let stored = store
            .get(&key, true)
            .await?
            .ok_or_else(|| ApiError::not_found(info, name))?;
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            let want = options
                .pointer(&format!("/preconditions/{field}"))
                .and_then(Value::as_str);
            let have = stored
                .object
                .pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(want) = want
                && want != have
            {
                return Err(ApiError::conflict(
                    info,
                    name,
                    format!(
                        "Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"
                    ),
                ));
            }
        }
        if query.get("dryRun") == Some("All") {
            return Ok(ok(
                output,
                target.kind,
                StatusCode::OK,
                stored.object,
                query,
            ));
        }
        if store
            .delete(&key, stored.mod_revision, &contents)
            .await?
            .is_some()
        {
            return Ok(ok(
                output,
                target.kind,
                StatusCode::OK,
                stored.object,
                query,
            ));
        }
    }
    Err(ApiError::conflict(info, name, MODIFIED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let token = encode_continue(b"/registry/configmaps/default/b\0", 42);
        assert_eq!(
            decode_continue(&token).expect("token"),
            (b"/registry/configmaps/default/b\0".to_vec(), 42)
        );
        assert!(decode_continue("garbage!").is_err());
    }

    #[test]
    fn uids_look_like_uuids() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
    }
}
