//! Watch hub behaviour: replay then live without gaps or duplicates, filtering, compaction,
//! slow watchers, progress.

mod common;

use std::time::Duration;

use common::Harness;
use skiff_storage::{
    EventKind, KeyRange, Revision, StoreOptions, WatchError, WatchMessage, WatchRequest, Watcher,
};

async fn next(w: &mut Watcher) -> WatchMessage {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch message in time")
        .expect("watch open")
}

/// Collects event revisions until `until` is reached, checking each message's framing.
async fn collect_until(w: &mut Watcher, until: Revision) -> Vec<Revision> {
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < until {
        match next(w).await {
            WatchMessage::Events { revision, events } => {
                assert!(!events.is_empty());
                assert_eq!(
                    events.last().unwrap().kv.mod_revision,
                    revision,
                    "message revision is its last event's"
                );
                seen.extend(events.iter().map(|e| e.kv.mod_revision));
            }
            WatchMessage::Progress { .. } => {}
            WatchMessage::Closed(e) => panic!("closed: {e}"),
        }
    }
    seen
}

fn watch_prefix(prefix: &str, start_revision: Revision) -> WatchRequest {
    WatchRequest {
        range: KeyRange::prefix(prefix),
        start_revision,
        ..Default::default()
    }
}

#[tokio::test]
async fn live_events_after_the_current_revision() {
    let mut h = Harness::new();
    h.put("/w/old", "x").await;
    let mut w = h.store.watch.watch(watch_prefix("/w/", 0)).unwrap();
    h.put("/w/a", "1").await;
    match next(&mut w).await {
        WatchMessage::Events { revision, events } => {
            assert_eq!(revision, 2);
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].kind, EventKind::Put);
            assert_eq!(events[0].kv.key, b"/w/a");
            assert_eq!(events[0].prev_kv, None);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn replay_from_a_revision_then_live_without_gap_or_duplicate() {
    let mut h = Harness::new();
    for i in 1..=30 {
        h.put(&format!("/r/{i}"), "v").await;
    }
    let mut w = h.store.watch.watch(watch_prefix("/r/", 10)).unwrap();
    assert_eq!(h.store.watch.revision(), 30);
    // Writes race with the replay.
    let writer = async {
        for i in 31..=60 {
            h.put(&format!("/r/{i}"), "v").await;
            tokio::task::yield_now().await;
        }
    };
    let (_, seen) = tokio::join!(writer, collect_until(&mut w, 60));
    assert_eq!(seen, (10..=60).collect::<Vec<_>>());
}

#[tokio::test]
async fn one_txn_arrives_as_one_revision_with_all_its_events() {
    let mut h = Harness::new();
    let mut w = h.store.watch.watch(watch_prefix("/t/", 0)).unwrap();
    h.txn_ok(skiff_storage::TxnRequest {
        compares: vec![],
        success: vec![
            common::put_op("/t/a", "1"),
            common::put_op("/t/b", "2"),
            common::put_op("/u/c", "3"),
        ],
        failure: vec![],
    })
    .await;
    match next(&mut w).await {
        WatchMessage::Events { revision, events } => {
            assert_eq!(revision, 1);
            let keys: Vec<_> = events.iter().map(|e| e.kv.key.clone()).collect();
            assert_eq!(keys, vec![b"/t/a".to_vec(), b"/t/b".to_vec()]);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn events_are_filtered_by_range_and_carry_prev_kv_on_request() {
    let mut h = Harness::new();
    let mut w = h
        .store
        .watch
        .watch(WatchRequest {
            range: KeyRange::prefix("/f/"),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap();
    h.put("/f/a", "v1").await; // 1
    h.put("/g/x", "other").await; // 2
    h.put("/f/a", "v2").await; // 3
    h.delete(KeyRange::single("/f/a")).await; // 4
    let mut events = Vec::new();
    while events.len() < 3 {
        if let WatchMessage::Events { events: batch, .. } = next(&mut w).await {
            events.extend(batch);
        }
    }
    assert_eq!(
        events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    assert_eq!(events[0].prev_kv, None);
    assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b"v1");
    assert_eq!(events[2].kind, EventKind::Delete);
    assert_eq!(events[2].kv.key, b"/f/a");
    assert_eq!(events[2].prev_kv.as_ref().unwrap().value, b"v2");
}

#[tokio::test]
async fn start_revisions_below_the_compacted_revision_are_refused() {
    let mut h = Harness::new();
    for i in 1..=5 {
        h.put("/c/k", &i.to_string()).await;
    }
    h.compact(3).await;
    for start in [1, 2] {
        match h.store.watch.watch(watch_prefix("/c/", start)) {
            Err(WatchError::Compacted { compacted: 3 }) => {}
            Err(e) => panic!("start {start}: unexpected error {e}"),
            Ok(_) => panic!("start {start}: watch on compacted history accepted"),
        }
    }
    // As in etcd, watching from the compacted revision itself is allowed.
    let mut w = h.store.watch.watch(watch_prefix("/c/", 3)).unwrap();
    assert_eq!(collect_until(&mut w, 5).await, vec![3, 4, 5]);
}

#[tokio::test]
async fn a_replay_overtaken_by_compaction_closes_as_compacted() {
    let mut h = Harness::new();
    for i in 1..=5 {
        h.put("/o/k", &i.to_string()).await;
    }
    let mut w = h.store.watch.watch(watch_prefix("/o/", 2)).unwrap();
    h.compact(4).await;
    assert_eq!(
        next(&mut w).await,
        WatchMessage::Closed(WatchError::Compacted { compacted: 4 })
    );
    assert_eq!(w.next().await, None);
}

#[tokio::test]
async fn a_future_start_revision_waits_for_it() {
    let mut h = Harness::new();
    h.put("/fu/a", "1").await;
    let mut w = h.store.watch.watch(watch_prefix("/fu/", 4)).unwrap();
    for _ in 0..4 {
        h.put("/fu/a", "x").await;
    }
    assert_eq!(collect_until(&mut w, 5).await, vec![4, 5]);
}

#[tokio::test]
async fn a_slow_watcher_is_closed_and_never_blocks_apply() {
    let mut h = Harness::with_opts(StoreOptions {
        watch_queue_capacity: 4,
        ..Default::default()
    });
    let mut slow = h.store.watch.watch(watch_prefix("/s/", 0)).unwrap();
    let mut fast = h.store.watch.watch(watch_prefix("/s/", 0)).unwrap();
    let applied = tokio::time::timeout(Duration::from_secs(20), async {
        for i in 1..=50 {
            h.put(&format!("/s/{i}"), "v").await;
            // The fast watcher keeps up; the slow one never reads.
            assert_eq!(collect_until(&mut fast, i).await, vec![i]);
        }
    })
    .await;
    assert!(applied.is_ok(), "apply was blocked by a slow watcher");
    assert_eq!(h.store.kv.revision(), 50);
    assert_eq!(
        next(&mut slow).await,
        WatchMessage::Closed(WatchError::TooSlow)
    );
    assert_eq!(slow.next().await, None);
    assert_eq!(
        h.store.watch.watcher_count(),
        1,
        "only the fast watcher remains"
    );
}

#[tokio::test]
async fn requested_progress_is_a_bookmark_after_queued_events() {
    let mut h = Harness::new();
    let mut w = h.store.watch.watch(watch_prefix("/p/", 0)).unwrap();
    h.put("/p/a", "1").await; // 1, matches
    h.put("/q/b", "2").await; // 2, does not
    w.request_progress();
    assert!(matches!(
        next(&mut w).await,
        WatchMessage::Events { revision: 1, .. }
    ));
    assert_eq!(next(&mut w).await, WatchMessage::Progress { revision: 2 });
}

#[tokio::test]
async fn idle_watchers_with_progress_notify_get_periodic_progress() {
    let mut h = Harness::with_opts(StoreOptions {
        progress_interval: Duration::from_millis(50),
        ..Default::default()
    });
    let mut w = h
        .store
        .watch
        .watch(WatchRequest {
            range: KeyRange::prefix("/idle/"),
            progress_notify: true,
            ..Default::default()
        })
        .unwrap();
    h.put("/elsewhere", "x").await;
    h.put("/elsewhere", "y").await;
    assert_eq!(next(&mut w).await, WatchMessage::Progress { revision: 2 });
    // Without progress_notify nothing arrives while idle.
    let mut quiet = h.store.watch.watch(watch_prefix("/idle/", 0)).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), quiet.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn dropping_a_watcher_unregisters_it_and_shutdown_closes_the_rest() {
    let h = Harness::new();
    let w1 = h.store.watch.watch(watch_prefix("/d/", 0)).unwrap();
    let mut w2 = h.store.watch.watch(watch_prefix("/d/", 0)).unwrap();
    assert_ne!(w1.id(), w2.id());
    assert_eq!(h.store.watch.watcher_count(), 2);
    drop(w1);
    assert_eq!(h.store.watch.watcher_count(), 1);
    h.store.watch.shutdown();
    assert_eq!(
        next(&mut w2).await,
        WatchMessage::Closed(WatchError::ShuttingDown)
    );
    assert_eq!(h.store.watch.watcher_count(), 0);
}

#[tokio::test]
async fn long_replays_arrive_in_chunks_without_gap_or_duplicate() {
    let mut h = Harness::new();
    for i in 1..=2500 {
        h.put(&format!("/long/{}", i % 37), "v").await;
    }
    let mut w = h.store.watch.watch(watch_prefix("/long/", 1)).unwrap();
    let mut messages = 0;
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < 2500 {
        let WatchMessage::Events { events, .. } = next(&mut w).await else {
            panic!()
        };
        messages += 1;
        seen.extend(events.iter().map(|e| e.kv.mod_revision));
    }
    assert_eq!(seen, (1..=2500).collect::<Vec<_>>());
    assert!(messages >= 3, "replay is chunked ({messages} messages)");
}

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<skiff_storage::KvView>();
    send_sync::<skiff_storage::WatchHub>();
    send_sync::<skiff_storage::LogStore>();
    send_sync::<skiff_storage::StateMachineStore>();
    send_sync::<skiff_storage::Store>();
    fn watcher_future_is_send(w: &mut Watcher) {
        send(&w.next());
    }
    let _ = watcher_future_is_send;
}
