//! The etcd `Watch` service: many watches multiplexed over one bidirectional stream.
//!
//! One `WatchSession` task owns a stream. It reads client requests and the messages of its
//! watches, and is the only writer of responses, so a watch's `created` response always precedes
//! its events (clientv3 matches creates to responses in order). Each watch has a `pump` task that
//! owns the store `Watcher`; dropping the session's `ActiveWatch` aborts the pump, which drops
//! the `Watcher` and unregisters it.
//!
//! Protocol, as etcd 3.4 speaks it:
//! - create: `watch_id` 0 = server-chosen (lowest free id, from 0 up); a taken id fails with
//!   `watch_id` -1, `created` and `canceled` set and a `cancel_reason`. `start_revision` 0 = after
//!   the revision in the `created` header. A compacted start revision gets `created`, then a
//!   response with `compact_revision` and `canceled`.
//! - cancel: answered with `canceled` for a live id; unknown ids are ignored.
//! - progress request: one response with `watch_id` -1 and no events once every watch of the
//!   stream has delivered everything up to the header revision (the minimum over the watches).
//! - progress_notify: the store's periodic progress messages go out as event-less responses.
//! - filters NOPUT/NODELETE drop events here; a batch that filters to nothing is not sent.
//! - a watch the store closes as too slow is resumed from the first revision it has not
//!   delivered (etcd's unsynced watchers catch up from history the same way); the client sees
//!   no gap and no duplicate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use skiff_proto::etcdserverpb as pb;
use skiff_proto::etcdserverpb::watch_create_request::FilterType;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::watch_server::Watch;
use skiff_storage::watch::{WatchError, WatchMessage, WatchRequest, Watcher};
use skiff_storage::{Event, EventKind, KeyRange, Revision};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::backend::{BackendError, HeaderInfo, KvBackend};
use super::convert;
use super::error::EtcdError;

/// The watch id of responses about the stream rather than one watch.
const STREAM_WATCH_ID: i64 = -1;
/// Responses buffered towards the client before the session waits for it.
const OUTBOUND_QUEUE: usize = 64;
/// Messages buffered from the pumps before they wait for the session.
const PUMP_QUEUE: usize = 256;
/// etcd's text for a client-chosen id already in use on the stream.
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

pub struct WatchService<B> {
    backend: B,
}

impl<B: KvBackend> WatchService<B> {
    pub fn new(backend: B) -> Self {
        WatchService { backend }
    }
}

type ResponseSender = mpsc::Sender<Result<pb::WatchResponse, Status>>;

#[tonic::async_trait]
impl<B: KvBackend> Watch for WatchService<B> {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let remote = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let span = tracing::info_span!("etcd.watch", remote = ?remote);
        tokio::spawn(
            WatchSession::new(self.backend.clone(), tx)
                .run(inbound)
                .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The client is gone (or the stream was ended): stop the session.
#[derive(Debug)]
struct SessionEnded;

type Sent = Result<(), SessionEnded>;

/// A pump's message, tagged so that messages of a canceled watch whose id was reused are
/// recognized as stale.
#[derive(Debug)]
struct Tagged {
    watch_id: i64,
    generation: u64,
    message: WatchMessage,
}

struct ActiveWatch {
    generation: u64,
    filter: EventFilter,
    progress_notify: bool,
    /// Wakes the pump to call `Watcher::request_progress`.
    progress: Arc<Notify>,
    pump: JoinHandle<()>,
}

impl Drop for ActiveWatch {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// The client-side filters of one watch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    no_put: bool,
    no_delete: bool,
}

impl EventFilter {
    /// Unknown filter numbers are ignored, as etcd does.
    pub fn from_request(filters: &[i32]) -> Self {
        let mut filter = EventFilter::default();
        for f in filters {
            match FilterType::try_from(*f) {
                Ok(FilterType::Noput) => filter.no_put = true,
                Ok(FilterType::Nodelete) => filter.no_delete = true,
                Err(_) => {}
            }
        }
        filter
    }

    pub fn keeps(&self, event: &Event) -> bool {
        match event.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        }
    }
}

/// The store watch for an etcd create request. etcd reads an empty key as "\0", the smallest
/// key; a start revision <= 0 means the revision after `current`, the one the `created`
/// header reports.
pub fn store_watch_request(req: &pb::WatchCreateRequest, current: Revision) -> WatchRequest {
    let key = if req.key.is_empty() {
        vec![0]
    } else {
        req.key.clone()
    };
    WatchRequest {
        range: KeyRange {
            key,
            range_end: req.range_end.clone(),
        },
        start_revision: if req.start_revision > 0 {
            req.start_revision
        } else {
            current.saturating_add(1)
        },
        prev_kv: req.prev_kv,
        progress_notify: req.progress_notify,
    }
}

/// A progress request waiting for every watch of the stream to report.
#[derive(Debug, Default)]
struct ProgressRound {
    waiting: HashSet<i64>,
    /// The lowest revision reported so far.
    revision: Option<Revision>,
    /// Another request arrived meanwhile: start a new round when this one completes.
    again: bool,
}

struct WatchSession<B> {
    backend: B,
    out: ResponseSender,
    watches: HashMap<i64, ActiveWatch>,
    next_auto_id: i64,
    next_generation: u64,
    pump_tx: mpsc::Sender<Tagged>,
    pump_rx: mpsc::Receiver<Tagged>,
    progress: Option<ProgressRound>,
}

impl<B: KvBackend> WatchSession<B> {
    fn new(backend: B, out: ResponseSender) -> Self {
        let (pump_tx, pump_rx) = mpsc::channel(PUMP_QUEUE);
        WatchSession {
            backend,
            out,
            watches: HashMap::new(),
            next_auto_id: 0,
            next_generation: 0,
            pump_tx,
            pump_rx,
            progress: None,
        }
    }

    async fn run(
        mut self,
        mut inbound: impl Stream<Item = Result<pb::WatchRequest, Status>> + Unpin,
    ) {
        let mut inbound_open = true;
        loop {
            let step = tokio::select! {
                req = inbound.next(), if inbound_open => match req {
                    Some(Ok(req)) => self.handle_request(req).await,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "watch stream receive failed");
                        Err(SessionEnded)
                    }
                    // A half-closed stream keeps delivering until the client goes away, as in etcd.
                    None => {
                        inbound_open = false;
                        Ok(())
                    }
                },
                Some(tagged) = self.pump_rx.recv() => self.handle_message(tagged).await,
                () = self.out.closed() => Err(SessionEnded),
            };
            if step.is_err() {
                tracing::debug!(watches = self.watches.len(), "watch stream ended");
                self.stop_pumps().await;
                return;
            }
        }
    }

    /// Stops every pump and waits for it, so that the store watchers of a finished session are
    /// unregistered by the time its task ends.
    async fn stop_pumps(&mut self) {
        for (_, mut watch) in self.watches.drain() {
            watch.pump.abort();
            let _ = (&mut watch.pump).await;
        }
    }

    async fn send(&self, resp: pb::WatchResponse) -> Sent {
        self.out.send(Ok(resp)).await.map_err(|_| SessionEnded)
    }

    fn header(&self, revision: Option<Revision>) -> (HeaderInfo, pb::ResponseHeader) {
        let info = self.backend.header();
        let header = convert::header(&info, revision.unwrap_or(info.revision));
        (info, header)
    }

    async fn handle_request(&mut self, req: pb::WatchRequest) -> Sent {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => self.request_progress().await,
            // etcd ignores requests it does not understand rather than failing the stream.
            None => Ok(()),
        }
    }

    /// The id for a new watch, `None` when the client's choice is taken.
    fn assign_id(&mut self, requested: i64) -> Option<i64> {
        if requested != 0 {
            return (!self.watches.contains_key(&requested)).then_some(requested);
        }
        while self.watches.contains_key(&self.next_auto_id) {
            self.next_auto_id += 1;
        }
        let id = self.next_auto_id;
        self.next_auto_id += 1;
        Some(id)
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Sent {
        let (info, header) = self.header(None);
        let Some(watch_id) = self.assign_id(create.watch_id) else {
            return self
                .send(failed_create(header, DUPLICATE_WATCH_ID.to_owned()))
                .await;
        };
        let request = store_watch_request(&create, info.revision);
        tracing::debug!(
            watch_id,
            key = %request.range.key.escape_ascii(),
            range_end = %request.range.range_end.escape_ascii(),
            start = request.start_revision,
            "watch create"
        );
        let watcher = match self.backend.watch(request.clone()) {
            Ok(watcher) => watcher,
            Err(BackendError::Compacted { compacted }) => {
                self.send(created(header, watch_id)).await?;
                return self
                    .send(compacted_response(header, watch_id, compacted))
                    .await;
            }
            Err(err) => {
                return self
                    .send(failed_create(header, EtcdError::from(err).message()))
                    .await;
            }
        };
        self.send(created(header, watch_id)).await?;

        let generation = self.next_generation;
        self.next_generation += 1;
        let progress = Arc::new(Notify::new());
        let pump = Pump {
            backend: self.backend.clone(),
            request,
            watch_id,
            generation,
            progress: progress.clone(),
            out: self.pump_tx.clone(),
        };
        let span = tracing::debug_span!("etcd.watch.pump", watch_id);
        let pump = tokio::spawn(pump.run(watcher).instrument(span));
        if let Some(round) = &mut self.progress {
            // A watch created during a progress round may still be replaying history.
            round.waiting.insert(watch_id);
            progress.notify_one();
        }
        let filter = EventFilter::from_request(&create.filters);
        let progress_notify = create.progress_notify;
        self.watches.insert(
            watch_id,
            ActiveWatch {
                generation,
                filter,
                progress_notify,
                progress,
                pump,
            },
        );
        Ok(())
    }

    async fn cancel(&mut self, watch_id: i64) -> Sent {
        if self.watches.remove(&watch_id).is_none() {
            return Ok(());
        }
        let (_, header) = self.header(None);
        self.send(pb::WatchResponse {
            header: Some(header),
            watch_id,
            canceled: true,
            ..Default::default()
        })
        .await?;
        self.forget_in_progress_round(watch_id).await
    }

    async fn request_progress(&mut self) -> Sent {
        if let Some(round) = &mut self.progress {
            round.again = true;
            return Ok(());
        }
        if self.watches.is_empty() {
            let (_, header) = self.header(None);
            return self.send(progress_response(header, STREAM_WATCH_ID)).await;
        }
        let waiting = self.watches.keys().copied().collect();
        for watch in self.watches.values() {
            watch.progress.notify_one();
        }
        self.progress = Some(ProgressRound {
            waiting,
            revision: None,
            again: false,
        });
        Ok(())
    }

    /// Counts a watch as done for the pending progress round (it reported, or it is gone) and
    /// answers the round when it was the last one.
    async fn settle_progress(&mut self, watch_id: i64, reported: Option<Revision>) -> Sent {
        let Some(round) = &mut self.progress else {
            return Ok(());
        };
        if !round.waiting.remove(&watch_id) {
            return Ok(());
        }
        if let Some(revision) = reported {
            round.revision = Some(round.revision.map_or(revision, |r| r.min(revision)));
        }
        if !round.waiting.is_empty() {
            return Ok(());
        }
        let revision = round.revision;
        let again = round.again;
        self.progress = None;
        let (_, header) = self.header(revision);
        self.send(progress_response(header, STREAM_WATCH_ID))
            .await?;
        if again {
            self.request_progress().await
        } else {
            Ok(())
        }
    }

    async fn forget_in_progress_round(&mut self, watch_id: i64) -> Sent {
        self.settle_progress(watch_id, None).await
    }

    async fn handle_message(&mut self, tagged: Tagged) -> Sent {
        let Tagged {
            watch_id,
            generation,
            message,
        } = tagged;
        let Some(watch) = self
            .watches
            .get(&watch_id)
            .filter(|w| w.generation == generation)
        else {
            return Ok(()); // from a watch already canceled
        };
        match message {
            WatchMessage::Events { revision, events } => {
                let filter = watch.filter;
                let events: Vec<_> = events
                    .into_iter()
                    .filter(|e| filter.keeps(e))
                    .map(convert::event)
                    .collect();
                if events.is_empty() {
                    return Ok(());
                }
                let (_, header) = self.header(Some(revision));
                self.send(pb::WatchResponse {
                    header: Some(header),
                    watch_id,
                    events,
                    ..Default::default()
                })
                .await
            }
            WatchMessage::Progress { revision } => {
                let in_round = self
                    .progress
                    .as_ref()
                    .is_some_and(|r| r.waiting.contains(&watch_id));
                if in_round {
                    return self.settle_progress(watch_id, Some(revision)).await;
                }
                if !watch.progress_notify {
                    return Ok(());
                }
                let (_, header) = self.header(Some(revision));
                self.send(progress_response(header, watch_id)).await
            }
            WatchMessage::Closed(reason) => {
                self.watches.remove(&watch_id);
                let (_, header) = self.header(None);
                let resp = match reason {
                    WatchError::Compacted { compacted } => {
                        compacted_response(header, watch_id, compacted)
                    }
                    WatchError::ShuttingDown => {
                        // The whole node is stopping: end the stream so the client fails over to
                        // another member and resumes there.
                        let _ = self
                            .out
                            .send(Err(Status::unavailable("etcdserver: server stopped")))
                            .await;
                        return Err(SessionEnded);
                    }
                    reason @ (WatchError::TooSlow | WatchError::Storage(_)) => pb::WatchResponse {
                        header: Some(header),
                        watch_id,
                        canceled: true,
                        cancel_reason: format!("etcdserver: {reason}"),
                        ..Default::default()
                    },
                };
                self.send(resp).await?;
                self.forget_in_progress_round(watch_id).await
            }
        }
    }
}

fn created(header: pb::ResponseHeader, watch_id: i64) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(header),
        watch_id,
        created: true,
        ..Default::default()
    }
}

/// A create that never started: etcd reports it with the stream id and both flags.
fn failed_create(header: pb::ResponseHeader, reason: String) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(header),
        watch_id: STREAM_WATCH_ID,
        created: true,
        canceled: true,
        cancel_reason: reason,
        ..Default::default()
    }
}

/// clientv3 turns a non-zero `compact_revision` into `ErrCompacted` and closes the watch.
fn compacted_response(
    header: pb::ResponseHeader,
    watch_id: i64,
    compacted: Revision,
) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(header),
        watch_id,
        canceled: true,
        compact_revision: compacted,
        ..Default::default()
    }
}

/// No events, flags or compaction and a non-zero header revision: clientv3's "progress notify".
fn progress_response(header: pb::ResponseHeader, watch_id: i64) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(header),
        watch_id,
        ..Default::default()
    }
}

/// Moves one store watcher's messages to its session, resuming it when the store drops it as
/// too slow.
struct Pump<B> {
    backend: B,
    request: WatchRequest,
    watch_id: i64,
    generation: u64,
    progress: Arc<Notify>,
    out: mpsc::Sender<Tagged>,
}

impl<B: KvBackend> Pump<B> {
    async fn run(mut self, mut watcher: Watcher) {
        // Everything at or below `delivered` has reached the session.
        let mut delivered = self.request.start_revision.saturating_sub(1);
        loop {
            let next = tokio::select! {
                biased;
                () = self.progress.notified() => {
                    watcher.request_progress();
                    continue;
                }
                // `Watcher::next` is cancel safe: losing the race to a progress request loses
                // no message.
                next = watcher.next() => next,
            };
            let message = match next {
                Some(WatchMessage::Closed(WatchError::TooSlow)) => match self.resume(delivered) {
                    Ok(resumed) => {
                        watcher = resumed;
                        continue;
                    }
                    Err(reason) => WatchMessage::Closed(reason),
                },
                Some(message) => message,
                None => WatchMessage::Closed(WatchError::ShuttingDown),
            };
            if let WatchMessage::Events { revision, .. } | WatchMessage::Progress { revision } =
                &message
            {
                delivered = delivered.max(*revision);
            }
            let closed = matches!(message, WatchMessage::Closed(_));
            let tagged = Tagged {
                watch_id: self.watch_id,
                generation: self.generation,
                message,
            };
            if self.out.send(tagged).await.is_err() || closed {
                return;
            }
        }
    }

    /// A new store watcher starting right after the last delivered revision.
    fn resume(&mut self, delivered: Revision) -> Result<Watcher, WatchError> {
        self.request.start_revision = delivered.saturating_add(1);
        tracing::info!(
            watch_id = self.watch_id,
            from = self.request.start_revision,
            "resuming slow watch from history"
        );
        let watcher = self
            .backend
            .watch(self.request.clone())
            .map_err(|err| match err {
                BackendError::Compacted { compacted } => WatchError::Compacted { compacted },
                other => WatchError::Storage(other.to_string()),
            })?;
        // A progress request may have been queued on the old watcher and lost with it; asking
        // again costs at most one extra progress message.
        watcher.request_progress();
        Ok(watcher)
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
