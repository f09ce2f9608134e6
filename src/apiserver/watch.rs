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
use crate::json_path::JsonPath;
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
                let rv = object.at("/metadata/resourceVersion").cloned();
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

/// One thing a watcher learns, before any wire encoding (the REST watch writes JSON lines, the
/// agents' gRPC watch protobuf messages).
#[derive(Debug)]
pub enum Change {
    /// ADDED, MODIFIED or DELETED.
    Event(&'static str, Value),
    /// The initial list (when one was asked for) is complete at this revision.
    Synced(i64),
    /// Nothing changed up to this revision.
    Progress(i64),
    /// The requested revision is compacted away; the stream ends after this.
    Expired { requested: i64, compacted: i64 },
}

/// What to watch.
pub struct WatchSpec<'a> {
    pub kind: &'static dyn Kind,
    pub namespace: Option<&'a str>,
    pub selectors: ListOptions,
    /// None: the current state as ADDED events first, then changes after it.
    pub after: Option<i64>,
    /// Ask the hub for progress notices (bookmarks).
    pub progress: bool,
}

/// Starts a watch: the changes arrive on the returned channel until the hub closes the watcher
/// or the receiver is dropped (the task then ends and drops the watcher).
pub async fn changes(
    objects: &Objects,
    spec: WatchSpec<'_>,
    buffer: usize,
) -> Result<mpsc::Receiver<Change>, ApiError> {
    let WatchSpec {
        kind,
        namespace,
        mut selectors,
        after,
        progress,
    } = spec;
    selectors.limit = 0;
    selectors.continue_token = None;
    let info = kind.info();
    let (tx, rx) = mpsc::channel::<Change>(buffer);
    let start = match after {
        Some(rv) => rv + 1,
        None => {
            let list = objects
                .list(Scope::new(kind, namespace), &selectors)
                .await?;
            let revision = list.revision;
            let mut initial: Vec<Change> = list
                .items
                .into_iter()
                .map(|item| Change::Event("ADDED", item))
                .collect();
            initial.push(Change::Synced(revision));
            // The initial state may exceed the buffer: a task feeds it in order before the
            // changes (the receiver sees the same sequence either way).
            let (first_tx, first_rx) = (tx.clone(), initial);
            let feed = tokio::spawn(async move {
                for change in first_rx {
                    if first_tx.send(change).await.is_err() {
                        return false;
                    }
                }
                true
            });
            return follow(
                objects,
                info,
                namespace,
                selectors,
                revision + 1,
                progress,
                tx,
                Some(feed),
            )
            .map(|()| rx);
        }
    };
    follow(
        objects, info, namespace, selectors, start, progress, tx, None,
    )
    .map(|()| rx)
}

/// Spawns the task that forwards the hub's events from `start` on (after `initial` is sent).
#[allow(clippy::too_many_arguments)]
fn follow(
    objects: &Objects,
    info: &'static crate::registry::KindInfo,
    namespace: Option<&str>,
    selectors: ListOptions,
    start: i64,
    progress: bool,
    tx: mpsc::Sender<Change>,
    initial: Option<tokio::task::JoinHandle<bool>>,
) -> Result<(), ApiError> {
    let prefix = list_prefix(info, namespace);
    let watcher = objects.store().node().watch_hub().watch(WatchRequest {
        range: KeyRange::prefix(prefix.as_str()),
        start_revision: start,
        prev_kv: true,
        progress_notify: progress,
    });
    let span = tracing::info_span!("watch", resource = info.resource, start);
    tokio::spawn(
        async move {
            if let Some(initial) = initial
                && !initial.await.unwrap_or(false)
            {
                return;
            }
            let mut watcher = match watcher {
                Ok(w) => w,
                Err(WatchError::Compacted { compacted }) => {
                    let _ = tx
                        .send(Change::Expired {
                            requested: start - 1,
                            compacted,
                        })
                        .await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch refused");
                    return;
                }
            };
            loop {
                let changes = match watcher.next().await {
                    None => return,
                    Some(WatchMessage::Closed(WatchError::Compacted { compacted })) => {
                        let _ = tx
                            .send(Change::Expired {
                                requested: start - 1,
                                compacted,
                            })
                            .await;
                        return;
                    }
                    Some(WatchMessage::Closed(reason)) => {
                        tracing::debug!(%reason, "watch closed by the hub");
                        return;
                    }
                    Some(WatchMessage::Progress { revision }) => vec![Change::Progress(revision)],
                    Some(WatchMessage::Events { events, .. }) => events
                        .iter()
                        .filter_map(|e| convert(e, &selectors))
                        .collect(),
                };
                for change in changes {
                    if tx.send(change).await.is_err() {
                        return;
                    }
                }
            }
        }
        .instrument(span),
    );
    Ok(())
}

/// The REST watch: JSON lines over a chunked response.
pub async fn watch(
    objects: &Objects,
    target: &ResourceTarget,
    query: &Query,
    output: Output,
    guard: WatchGuard,
) -> Result<Response, ApiError> {
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
    let after = match query.get("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let mut changes = changes(
        objects,
        WatchSpec {
            kind: target.kind,
            namespace: target.namespace.as_deref(),
            selectors: list_options(query)?,
            after,
            progress: bookmarks,
        },
        STREAM_BUFFER,
    )
    .await?;
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let span = tracing::info_span!("watch_http", resource = target.kind.info().resource);
    tokio::spawn(
        async move {
            // Counts this watch as open until the task ends.
            let _guard = guard;
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            loop {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, changes.recv()).await {
                        Ok(m) => m,
                        Err(_) => return,
                    },
                    None => changes.recv().await,
                };
                let line = match next {
                    None => return,
                    Some(Change::Event(kind, object)) => encoder.event(kind, object),
                    Some(Change::Synced(_)) => continue,
                    Some(Change::Progress(revision)) if bookmarks => encoder.bookmark(revision),
                    Some(Change::Progress(_)) => continue,
                    Some(Change::Expired {
                        requested,
                        compacted,
                    }) => encoder.expired(requested, compacted),
                };
                if tx.send(line).await.is_err() {
                    return;
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

/// One store event as a watch event, or None when the selectors hide both sides of it.
fn convert(event: &skiff_storage::Event, selectors: &ListOptions) -> Option<Change> {
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
                (true, true) => Some(Change::Event("MODIFIED", object)),
                (true, false) => Some(Change::Event("ADDED", object)),
                (false, true) => {
                    let mut gone = prev?;
                    super::store::set_resource_version(&mut gone, event.kv.mod_revision);
                    Some(Change::Event("DELETED", gone))
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
            Some(Change::Event("DELETED", gone))
        }
    }
}
