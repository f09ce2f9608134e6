//! Watch: a chunked stream of JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
//! "object": ...}` fed by the store's watch hub from a resourceVersion on.
//!
//! - No resourceVersion (or "0"): the current state as ADDED events first, then changes after
//!   the revision it was read at (kube's "get state and start at most recent").
//! - resourceVersion N: changes after N; N older than the compacted revision gets one ERROR
//!   event carrying a 410 Expired Status (kube's reflector then re-lists).
//! - Label/field selectors apply to both sides of a change, so an object leaving the selection
//!   arrives as DELETED and one entering it as ADDED.
//! - allowWatchBookmarks: the hub's progress notices become BOOKMARK events.
//!
//! The stream ends on timeoutSeconds, when the hub closes the watcher (too slow, shutdown) or
//! when the client goes away (the send fails and the task ends, dropping the watcher).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use skiff_storage::{EventKind, KeyRange, WatchError, WatchMessage, WatchRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::handlers::list_options;
use super::metrics::WatchGuard;
use super::objects::{ListOptions, Objects, Scope};
use super::request::{Output, Query, ResourceTarget};
use super::status::ApiError;
use super::store::{decode, list_prefix};
use super::table::{self, IncludeObject};
use crate::registry::Kind;

/// Events buffered towards a slow HTTP client before the hub's own queue takes the strain.
const STREAM_BUFFER: usize = 64;

struct Encoder {
    kind: &'static dyn Kind,
    output: Output,
    include: IncludeObject,
}

impl Encoder {
    fn event(&self, kind: &str, object: Value) -> Bytes {
        let object = match (self.output, kind) {
            (Output::Table, "ADDED" | "MODIFIED" | "DELETED") => {
                let rv = object.pointer("/metadata/resourceVersion").cloned();
                table::table(
                    self.kind,
                    &[object],
                    json!({"resourceVersion": rv}),
                    self.include,
                )
            }
            _ => object,
        };
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        Bytes::from(line)
    }

    fn bookmark(&self, revision: i64) -> Bytes {
        let info = self.kind.info();
        self.event(
            "BOOKMARK",
            json!({
                "kind": info.kind,
                "apiVersion": info.api_version(),
                "metadata": {"resourceVersion": revision.to_string()},
            }),
        )
    }

    fn expired(&self, requested: i64, compacted: i64) -> Bytes {
        let status = ApiError::Expired(format!(
            "too old resource version: {requested} ({compacted})"
        ))
        .to_status();
        self.event("ERROR", status)
    }
}

pub async fn watch(
    objects: &Objects,
    target: &ResourceTarget,
    query: &Query,
    output: Output,
    guard: WatchGuard,
) -> Result<Response, ApiError> {
    let info = target.kind.info();
    let mut selectors = list_options(query)?;
    selectors.limit = 0;
    selectors.continue_token = None;
    let encoder = Encoder {
        kind: target.kind,
        output,
        include: IncludeObject::parse(query.get("includeObject")),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .int("timeoutSeconds")?
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s as u64));
    let requested = match query.get("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    // Initial state: ADDED for every object, then changes after the list's revision.
    let start = match requested {
        Some(rv) => rv + 1,
        None => {
            let scope = Scope::new(target.kind, target.namespace.as_deref());
            let list = objects.list(scope, &selectors).await?;
            let (items, revision) = (list.items, list.revision);
            for item in items {
                // The buffer is fresh; a full one only delays (the task below drains it).
                if tx.send(encoder.event("ADDED", item)).await.is_err() {
                    break;
                }
            }
            revision + 1
        }
    };
    let prefix = list_prefix(info, target.namespace.as_deref());
    let hub_request = WatchRequest {
        range: KeyRange::prefix(prefix.as_str()),
        start_revision: start,
        prev_kv: true,
        progress_notify: bookmarks,
    };
    let watcher = objects.store().node().watch_hub().watch(hub_request);
    let span = tracing::info_span!("watch", resource = info.resource, start);
    tokio::spawn(
        async move {
            // Counts this watch as open until the task ends.
            let _guard = guard;
            let mut watcher = match watcher {
                Ok(w) => w,
                Err(WatchError::Compacted { compacted }) => {
                    let _ = tx.send(encoder.expired(start - 1, compacted)).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch refused");
                    return;
                }
            };
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            loop {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, watcher.next()).await {
                        Ok(m) => m,
                        Err(_) => return,
                    },
                    None => watcher.next().await,
                };
                let lines = match next {
                    None => return,
                    Some(WatchMessage::Closed(WatchError::Compacted { compacted })) => {
                        vec![encoder.expired(start - 1, compacted)]
                    }
                    Some(WatchMessage::Closed(reason)) => {
                        tracing::debug!(%reason, "watch closed by the hub");
                        return;
                    }
                    Some(WatchMessage::Progress { revision }) => {
                        if bookmarks {
                            vec![encoder.bookmark(revision)]
                        } else {
                            Vec::new()
                        }
                    }
                    Some(WatchMessage::Events { events, .. }) => events
                        .iter()
                        .filter_map(|e| convert(e, &selectors, &encoder))
                        .collect(),
                };
                for line in lines {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
        }
        .instrument(span),
    );
    let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), Ok::<Bytes, Infallible>);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The initial list of a watch reads everything (no limit/continue).
/// One store event as a watch event, or None when the selectors hide both sides of it.
fn convert(
    event: &skiff_storage::Event,
    selectors: &ListOptions,
    encoder: &Encoder,
) -> Option<Bytes> {
    let prev = event
        .prev_kv
        .as_ref()
        .and_then(|kv| decode(kv).ok())
        .map(|s| s.object);
    let prev_matches = prev.as_ref().is_some_and(|p| selectors.matches(p));
    match event.kind {
        EventKind::Put => {
            let object = decode(&event.kv).ok()?.object;
            let now_matches = selectors.matches(&object);
            let created = event.kv.create_revision == event.kv.mod_revision;
            match (now_matches, prev_matches && !created) {
                (true, true) => Some(encoder.event("MODIFIED", object)),
                (true, false) => Some(encoder.event("ADDED", object)),
                (false, true) => {
                    let mut gone = prev?;
                    super::store::set_resource_version(&mut gone, event.kv.mod_revision);
                    Some(encoder.event("DELETED", gone))
                }
                (false, false) => None,
            }
        }
        EventKind::Delete => {
            if !prev_matches {
                return None;
            }
            let mut gone = prev?;
            super::store::set_resource_version(&mut gone, event.kv.mod_revision);
            Some(encoder.event("DELETED", gone))
        }
    }
}
