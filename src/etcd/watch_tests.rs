//! The watch protocol against a real store (no raft, no gRPC transport): requests go into a
//! `WatchSession` as the tonic stream would deliver them, responses are read off its channel.

use std::time::Duration;

use skiff_proto::etcdserverpb as pb;
use skiff_proto::etcdserverpb::watch_create_request::FilterType;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::mvccpb::event::EventType;
use skiff_storage::{KeyRange, Op, StoreOptions, TxnRequest};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::*;
use crate::etcd::test_backend::StoreBackend;

const PATIENCE: Duration = Duration::from_secs(10);

struct Harness {
    backend: StoreBackend,
    requests: Option<mpsc::Sender<Result<pb::WatchRequest, Status>>>,
    responses: mpsc::Receiver<Result<pb::WatchResponse, Status>>,
    session: JoinHandle<()>,
}

impl Harness {
    fn start(backend: StoreBackend) -> Harness {
        let (req_tx, req_rx) = mpsc::channel(16);
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let session = tokio::spawn(
            WatchSession::new(backend.clone(), out_tx).run(ReceiverStream::new(req_rx)),
        );
        Harness {
            backend,
            requests: Some(req_tx),
            responses: out_rx,
            session,
        }
    }

    async fn send(&self, request: RequestUnion) {
        let requests = self.requests.as_ref().expect("request side open");
        requests
            .send(Ok(pb::WatchRequest {
                request_union: Some(request),
            }))
            .await
            .expect("session alive");
    }

    async fn create(&self, create: pb::WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(create)).await;
    }

    async fn recv_result(&mut self) -> Result<pb::WatchResponse, Status> {
        tokio::time::timeout(PATIENCE, self.responses.recv())
            .await
            .expect("a response in time")
            .expect("response stream open")
    }

    async fn recv(&mut self) -> pb::WatchResponse {
        self.recv_result().await.expect("a response, not an error")
    }

    async fn expect_silence(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(300), self.responses.recv()).await;
        assert!(next.is_err(), "expected no response, got {next:?}");
    }

    async fn put(&self, key: &str, value: &str) -> i64 {
        self.backend
            .txn(TxnRequest::put(key, value))
            .await
            .expect("put")
            .revision
    }

    async fn delete(&self, key: &str) -> i64 {
        let txn = TxnRequest {
            compares: Vec::new(),
            success: vec![Op::Delete {
                range: KeyRange::single(key),
                prev_kv: false,
            }],
            failure: Vec::new(),
        };
        self.backend.txn(txn).await.expect("delete").revision
    }
}

fn watch(key: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn watch_prefix(prefix: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        range_end: skiff_storage::prefix_end(prefix.as_bytes()),
        ..watch(prefix)
    }
}

fn revision(resp: &pb::WatchResponse) -> i64 {
    resp.header.as_ref().map_or(0, |h| h.revision)
}

fn event_revisions(resp: &pb::WatchResponse) -> Vec<i64> {
    resp.events
        .iter()
        .filter_map(|e| e.kv.as_ref())
        .map(|kv| kv.mod_revision)
        .collect()
}

#[tokio::test]
async fn create_assigns_ids_and_streams_events() {
    let mut h = Harness::start(StoreBackend::open());
    let before = h.put("/other", "x").await;
    h.create(watch_prefix("/a/")).await;
    let created = h.recv().await;
    assert!(created.created && !created.canceled);
    assert_eq!(created.watch_id, 0);
    assert_eq!(
        revision(&created),
        before,
        "created carries the revision the watch starts after"
    );
    let header = created.header.expect("header");
    assert_eq!(
        (header.cluster_id, header.member_id, header.raft_term),
        (7, 1, 1)
    );

    h.create(watch("/b")).await;
    assert_eq!(h.recv().await.watch_id, 1);

    let rev = h.put("/a/1", "v1").await;
    let resp = h.recv().await;
    assert_eq!(resp.watch_id, 0);
    assert_eq!(revision(&resp), rev);
    assert_eq!(resp.events.len(), 1);
    let ev = &resp.events[0];
    assert_eq!(ev.r#type, EventType::Put as i32);
    let kv = ev.kv.as_ref().expect("kv");
    assert_eq!(
        (kv.key.as_slice(), kv.value.as_slice(), kv.version),
        (&b"/a/1"[..], &b"v1"[..], 1)
    );
    assert!(ev.prev_kv.is_none(), "prev_kv only when asked for");

    let rev = h.put("/b", "x").await;
    let resp = h.recv().await;
    assert_eq!((resp.watch_id, event_revisions(&resp)), (1, vec![rev]));
}

#[tokio::test]
async fn client_chosen_ids_and_duplicates() {
    let mut h = Harness::start(StoreBackend::open());
    h.create(pb::WatchCreateRequest {
        watch_id: 1,
        ..watch("k")
    })
    .await;
    assert_eq!(h.recv().await.watch_id, 1);
    h.create(pb::WatchCreateRequest {
        watch_id: 1,
        ..watch("k")
    })
    .await;
    let dup = h.recv().await;
    assert_eq!((dup.watch_id, dup.created, dup.canceled), (-1, true, true));
    assert_eq!(dup.cancel_reason, DUPLICATE_WATCH_ID);
    // Server-chosen ids skip the ones in use.
    h.create(watch("k")).await;
    assert_eq!(h.recv().await.watch_id, 0);
    h.create(watch("k")).await;
    assert_eq!(h.recv().await.watch_id, 2);
}

#[tokio::test]
async fn filters_drop_events_and_batches_that_become_empty() {
    let mut h = Harness::start(StoreBackend::open());
    h.create(pb::WatchCreateRequest {
        filters: vec![FilterType::Noput as i32],
        ..watch("k")
    })
    .await;
    h.recv().await;
    h.put("k", "1").await;
    h.expect_silence().await;
    let rev = h.delete("k").await;
    let resp = h.recv().await;
    assert_eq!(event_revisions(&resp), vec![rev]);
    assert_eq!(resp.events[0].r#type, EventType::Delete as i32);

    h.create(pb::WatchCreateRequest {
        filters: vec![FilterType::Nodelete as i32, 17],
        ..watch("j")
    })
    .await;
    h.recv().await;
    h.put("j", "1").await;
    assert_eq!(h.recv().await.events[0].r#type, EventType::Put as i32);
    h.delete("j").await;
    h.expect_silence().await;
}

#[tokio::test]
async fn cancel_stops_a_watch_and_unknown_ids_are_ignored() {
    let mut h = Harness::start(StoreBackend::open());
    h.create(pb::WatchCreateRequest {
        watch_id: 5,
        ..watch("k")
    })
    .await;
    assert_eq!(h.recv().await.watch_id, 5);
    // Events of the watch may be in flight when it is canceled.
    let rev = h.put("k", "1").await;
    h.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
        watch_id: 5,
    }))
    .await;
    let mut resp = h.recv().await;
    if !resp.canceled {
        assert_eq!(event_revisions(&resp), vec![rev]);
        resp = h.recv().await;
    }
    assert!(resp.canceled && !resp.created);
    assert_eq!((resp.watch_id, resp.compact_revision), (5, 0));
    h.put("k", "2").await;
    h.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
        watch_id: 99,
    }))
    .await;
    h.expect_silence().await;
    // The client may reuse a freed id; the old watch's leftovers never leak into the new one.
    h.create(pb::WatchCreateRequest {
        watch_id: 5,
        ..watch("other")
    })
    .await;
    assert_eq!(h.recv().await.watch_id, 5);
    h.put("k", "3").await;
    h.expect_silence().await;
    // Server-chosen ids never go back to freed ones (etcd counts up).
    h.create(watch("k")).await;
    assert_eq!(h.recv().await.watch_id, 0);
    h.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
        watch_id: 0,
    }))
    .await;
    assert!(h.recv().await.canceled);
    h.create(watch("k")).await;
    assert_eq!(h.recv().await.watch_id, 1);
}

#[tokio::test]
async fn start_revision_replays_history_with_prev_kv() {
    let mut h = Harness::start(StoreBackend::open());
    let r1 = h.put("k", "1").await;
    let r2 = h.put("k", "2").await;
    let r3 = h.delete("k").await;
    h.create(pb::WatchCreateRequest {
        start_revision: r1,
        prev_kv: true,
        ..watch("k")
    })
    .await;
    assert!(h.recv().await.created);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.extend(h.recv().await.events);
    }
    let revs: Vec<_> = seen
        .iter()
        .filter_map(|e| e.kv.as_ref())
        .map(|kv| kv.mod_revision)
        .collect();
    assert_eq!(revs, vec![r1, r2, r3]);
    assert!(seen[0].prev_kv.is_none(), "a create has no previous value");
    assert_eq!(
        seen[1].prev_kv.as_ref().map(|kv| kv.value.as_slice()),
        Some(&b"1"[..])
    );
    assert_eq!(seen[2].r#type, EventType::Delete as i32);
    assert_eq!(
        seen[2].prev_kv.as_ref().map(|kv| kv.value.as_slice()),
        Some(&b"2"[..])
    );
}

#[tokio::test]
async fn compacted_start_revision_is_created_then_canceled_with_the_compact_revision() {
    let mut h = Harness::start(StoreBackend::open());
    for i in 0..3 {
        h.put("k", &i.to_string()).await;
    }
    let current = h.backend.header().revision;
    h.backend.compact(current - 1).await.expect("compact");
    h.create(pb::WatchCreateRequest {
        start_revision: 1,
        ..watch("k")
    })
    .await;
    let created = h.recv().await;
    assert!(created.created && !created.canceled);
    let compacted = h.recv().await;
    assert_eq!(compacted.watch_id, created.watch_id);
    assert!(compacted.canceled);
    assert_eq!(compacted.compact_revision, current - 1);
    // The stream itself lives on.
    h.create(watch("k")).await;
    assert!(h.recv().await.created);
}

#[tokio::test]
async fn progress_request_answers_for_the_whole_stream() {
    let mut h = Harness::start(StoreBackend::open());
    let first = h.put("k", "1").await;
    h.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    let resp = h.recv().await;
    assert_eq!((resp.watch_id, revision(&resp)), (-1, first));
    assert!(resp.events.is_empty() && !resp.created && !resp.canceled);

    h.create(watch("k")).await;
    h.recv().await;
    h.create(pb::WatchCreateRequest {
        start_revision: first,
        ..watch("k")
    })
    .await;
    h.recv().await;
    let rev = h.put("other", "1").await;
    h.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    h.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    // The replaying watch delivers its history before the progress answer.
    let replayed = h.recv().await;
    assert_eq!(
        (replayed.watch_id, event_revisions(&replayed)),
        (1, vec![first])
    );
    for _ in 0..2 {
        let resp = h.recv().await;
        assert_eq!((resp.watch_id, revision(&resp)), (-1, rev));
        assert!(resp.events.is_empty());
    }
    h.expect_silence().await;
}

#[tokio::test]
async fn progress_notify_sends_per_watch_progress_while_idle() {
    let mut h = Harness::start(StoreBackend::open());
    let rev = h.put("k", "1").await;
    h.create(pb::WatchCreateRequest {
        progress_notify: true,
        ..watch("k")
    })
    .await;
    h.recv().await;
    let resp = h.recv().await;
    assert_eq!((resp.watch_id, revision(&resp)), (0, rev));
    assert!(
        resp.events.is_empty() && !resp.created && !resp.canceled && resp.compact_revision == 0
    );
}

#[tokio::test]
async fn a_slow_watch_resumes_from_history_without_gaps_or_duplicates() {
    let backend = StoreBackend::with_options(StoreOptions {
        watch_queue_capacity: 2,
        ..StoreOptions::default()
    });
    let mut h = Harness::start(backend);
    h.create(watch_prefix("/k/")).await;
    h.recv().await;
    // Nobody reads responses while these are written, so the session, then the pump, then the
    // store's queue of two fill up and the store closes the watcher as too slow.
    let writes = OUTBOUND_QUEUE + PUMP_QUEUE + 100;
    let mut last = 0;
    for i in 0..writes {
        last = h.put(&format!("/k/{i}"), "v").await;
    }
    let first = last - writes as i64 + 1;
    let mut revs = Vec::new();
    while revs.last() != Some(&last) {
        let resp = h.recv().await;
        assert!(!resp.canceled, "the watch must survive: {resp:?}");
        revs.extend(event_revisions(&resp));
    }
    assert_eq!(revs, (first..=last).collect::<Vec<_>>());
}

#[tokio::test]
async fn half_closed_stream_keeps_delivering() {
    let mut h = Harness::start(StoreBackend::open());
    h.create(watch("k")).await;
    h.recv().await;
    h.requests = None;
    let rev = h.put("k", "1").await;
    assert_eq!(event_revisions(&h.recv().await), vec![rev]);
}

#[tokio::test]
async fn store_shutdown_ends_the_stream_as_unavailable() {
    let mut h = Harness::start(StoreBackend::open());
    h.create(watch("k")).await;
    h.recv().await;
    h.backend.shutdown_watches();
    let err = h
        .recv_result()
        .await
        .expect_err("stream ends with an error");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unavailable, "etcdserver: server stopped")
    );
    tokio::time::timeout(PATIENCE, &mut h.session)
        .await
        .expect("session ends")
        .expect("no panic");
}

#[tokio::test]
async fn session_stops_when_the_client_goes_away() {
    let h = Harness::start(StoreBackend::open());
    h.create(watch("k")).await;
    let Harness {
        responses,
        session,
        backend,
        ..
    } = h;
    drop(responses);
    tokio::time::timeout(PATIENCE, session)
        .await
        .expect("session ends")
        .expect("no panic");
    assert_eq!(
        backend.watcher_count(),
        0,
        "a finished session leaves no store watcher behind"
    );
}

#[test]
fn store_watch_request_follows_etcd_key_rules() {
    let req = store_watch_request(&pb::WatchCreateRequest::default(), 9);
    assert_eq!(
        req.range,
        KeyRange {
            key: vec![0],
            range_end: Vec::new()
        }
    );
    assert_eq!(req.start_revision, 10);
    let req = store_watch_request(
        &pb::WatchCreateRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            start_revision: 3,
            prev_kv: true,
            ..Default::default()
        },
        9,
    );
    assert_eq!(
        req.range,
        KeyRange {
            key: b"a".to_vec(),
            range_end: vec![0]
        }
    );
    assert_eq!((req.start_revision, req.prev_kv), (3, true));
}
