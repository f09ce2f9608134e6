//! Snapshot / backup format and raft snapshot build + install.

mod common;

use std::time::Duration;

use common::Harness;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, Membership};
use skiff_storage::{
    KeyRange, RangeRequest, SnapshotMeta, StorageError, Store, StoreOptions, WatchError,
    WatchMessage, WatchRequest, verify_snapshot, write_snapshot,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn opts(cluster_id: &str) -> StoreOptions {
    StoreOptions {
        cluster_id: cluster_id.into(),
        ..Default::default()
    }
}

async fn populated(cluster_id: &str) -> Harness {
    let mut h = Harness::with_opts(opts(cluster_id));
    let membership = Membership::new_with_defaults(vec![[1u64].into_iter().collect()], []);
    let entry = h.next_entry(EntryPayload::Membership(membership));
    h.store.state_machine.apply_entries(vec![entry]).unwrap();
    for i in 0..20 {
        h.put(&format!("/registry/pods/ns/p{}", i % 7), &format!("v{i}"))
            .await;
    }
    h.delete(KeyRange::single("/registry/pods/ns/p3")).await;
    h.compact(5).await;
    h
}

fn backup_bytes(h: &Harness) -> Vec<u8> {
    let mut out = Vec::new();
    write_snapshot(&h.store.kv, &mut out, &mut |_, _| {}).unwrap();
    out
}

#[tokio::test]
async fn backup_verifies_and_restores_into_a_new_cluster() {
    let h = populated("cluster-a").await;
    let mut out = Vec::new();
    let mut last_progress = (0, 0);
    let header = write_snapshot(&h.store.kv, &mut out, &mut |records, bytes| {
        last_progress = (records, bytes)
    })
    .unwrap();
    assert_eq!(header.cluster_id, "cluster-a");
    assert_eq!(header.revision, 21);
    assert_eq!(header.compacted_revision, 5);
    assert_eq!(header.last_applied, h.store.kv.last_applied());
    assert_eq!(header.membership, h.store.kv.membership());
    assert!(header.created_unix_ms > 0);

    let (verified, stats) = verify_snapshot(&mut out.as_slice()).unwrap();
    assert_eq!(verified, header);
    assert_eq!(stats.kv_count, 6, "p0..p6 minus the deleted p3");
    assert_eq!(
        stats.history_count, 17,
        "one event per revision 5..=21: the compacted revision's own stays"
    );
    assert_eq!(stats.bytes, out.len() as u64);
    assert_eq!(last_progress, (23, out.len() as u64));

    let dir = TempDir::new().unwrap();
    let target = dir.path().join("restored");
    let restored_header =
        Store::restore_backup(&target, &opts("cluster-b"), &mut out.as_slice()).unwrap();
    assert_eq!(restored_header, header);
    let restored = Store::open(&target, opts("cluster-b")).unwrap();
    assert_eq!(restored.kv.cluster_id(), "cluster-b");
    assert_eq!(restored.kv.revision(), 21);
    assert_eq!(restored.kv.compacted_revision(), 5);
    assert_eq!(
        restored.kv.last_applied(),
        None,
        "a restored store starts a new raft log"
    );
    assert_eq!(
        restored.kv.state_hash().unwrap(),
        h.store.kv.state_hash().unwrap()
    );
    // History came along: historical reads and watch resumes work in the restored store.
    let at = RangeRequest {
        range: KeyRange::prefix("/registry/"),
        revision: 10,
        ..Default::default()
    };
    assert_eq!(
        restored.kv.range(&at).unwrap(),
        h.store.kv.range(&at).unwrap()
    );
    let mut w = restored
        .watch
        .watch(WatchRequest {
            range: KeyRange::prefix("/registry/"),
            start_revision: 6,
            ..Default::default()
        })
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    let WatchMessage::Events { revision, events } = first else {
        panic!("{first:?}")
    };
    assert_eq!((revision, events.len()), (21, 16));

    // Restoring over existing data is refused.
    let again = Store::restore_backup(&target, &opts("cluster-c"), &mut out.as_slice());
    drop(restored);
    assert!(again.is_err());
}

#[tokio::test]
async fn every_flipped_byte_and_every_truncation_is_refused() {
    let h = populated("cluster-a").await;
    let good = backup_bytes(&h);
    assert!(verify_snapshot(&mut good.as_slice()).is_ok());
    for pos in 0..good.len() {
        let mut bad = good.clone();
        bad[pos] ^= 0x5a;
        match verify_snapshot(&mut bad.as_slice()) {
            Err(StorageError::InvalidSnapshot(_)) => {}
            other => panic!("flipped byte {pos} of {}: {other:?}", good.len()),
        }
    }
    for len in 0..good.len() {
        match verify_snapshot(&mut &good[..len]) {
            Err(StorageError::InvalidSnapshot(message)) => {
                assert!(message.contains("truncated"), "{len}: {message}")
            }
            other => panic!("truncated to {len}: {other:?}"),
        }
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(
        verify_snapshot(&mut longer.as_slice()),
        Err(StorageError::InvalidSnapshot(_))
    ));
}

async fn read_all(file: &mut tokio::fs::File) -> Vec<u8> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.unwrap();
    bytes
}

/// A snapshot of `member` built now: its meta and the bytes a follower would receive.
async fn snapshot_now(member: &mut Harness) -> (SnapshotMeta, Vec<u8>) {
    let mut snap = member
        .store
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let bytes = read_all(&mut snap.snapshot).await;
    (snap.meta, bytes)
}

/// Receives `bytes` into `member`'s snapshot inbox, as the raft service does, and installs them;
/// the install's result is what the caller checks.
async fn receive_and_install(
    member: &mut Harness,
    meta: &SnapshotMeta,
    bytes: &[u8],
) -> std::io::Result<()> {
    let (mut receiving, _received) = member
        .store
        .state_machine
        .snapshot_inbox()
        .create()
        .expect("a file in the snapshot inbox");
    receiving.write_all(bytes).await.expect("received bytes");
    receiving.flush().await.expect("received bytes");
    member
        .store
        .state_machine
        .install_snapshot(meta, receiving)
        .await
}

#[tokio::test]
async fn raft_snapshot_is_taken_at_builder_creation_and_installs_on_a_follower() {
    let mut leader = populated("cluster-a").await;
    let hash_at_snapshot = leader.store.kv.state_hash().unwrap();
    let mut builder = leader.store.state_machine.get_snapshot_builder().await;
    // Writes after the builder was created are not in the snapshot.
    leader.put("/registry/pods/ns/late", "x").await;
    let mut snap = builder.build_snapshot().await.unwrap();
    drop(builder);
    assert_eq!(snap.meta.last_log_id.unwrap().index, 23);
    let bytes = read_all(&mut snap.snapshot).await;
    let (header, _) = verify_snapshot(&mut bytes.as_slice()).unwrap();
    assert_eq!(header.revision, 21);
    let current = leader
        .store
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.meta, snap.meta);

    // A follower with a live watcher at its own (empty) head.
    let mut follower = Harness::with_opts(opts("cluster-a"));
    let mut w = follower
        .store
        .watch
        .watch(WatchRequest {
            range: KeyRange::prefix("/registry/"),
            ..Default::default()
        })
        .unwrap();
    follower.put("/registry/local", "y").await; // revision 1, replaced by the snapshot
    let WatchMessage::Events { revision: 1, .. } = w.next().await.unwrap() else {
        panic!()
    };

    receive_and_install(&mut follower, &snap.meta, &bytes)
        .await
        .unwrap();

    assert_eq!(follower.store.kv.state_hash().unwrap(), hash_at_snapshot);
    assert_eq!(follower.store.kv.revision(), 21);
    assert_eq!(follower.store.kv.compacted_revision(), 5);
    assert_eq!(follower.store.kv.cluster_id(), "cluster-a");
    assert_eq!(
        follower.store.state_machine.applied_state().await.unwrap(),
        (snap.meta.last_log_id, snap.meta.last_membership.clone())
    );
    let installed = follower
        .store
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(installed.meta, snap.meta);
    assert_eq!(follower.store.watch.revision(), 21);
    // The watcher had seen revision 1; the snapshot's history starts at 5, so (1, 21] cannot
    // be replayed: it must re-list.
    assert_eq!(
        w.next().await,
        Some(WatchMessage::Closed(WatchError::Compacted { compacted: 5 }))
    );

    // Applying continues from the snapshot.
    assert_eq!(follower.put("/registry/after", "z").await, 22);
}

/// Every event a watch from `start` delivers up to revision `to`, as (revision, key).
async fn watched(store: &Store, start: i64, to: i64) -> Vec<(i64, Vec<u8>)> {
    let mut w = store
        .watch
        .watch(WatchRequest {
            range: KeyRange::prefix("/registry/"),
            start_revision: start,
            ..Default::default()
        })
        .unwrap();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(revision, _)| *revision < to) {
        let message = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("the watch answers")
            .expect("the watch is open");
        let WatchMessage::Events { events, .. } = message else {
            panic!("{message:?}")
        };
        seen.extend(events.into_iter().map(|e| (e.kv.mod_revision, e.kv.key)));
    }
    seen
}

/// A watch may start at the compacted revision itself (etcd allows it, and the live store keeps
/// that revision's events); a member that caught up by snapshot must deliver the same events.
/// Snapshots used to start after the compacted revision, so such a watch skipped it there
/// (found by `skiff chaos run --scenario compaction-watches`, seed 24).
#[tokio::test]
async fn a_watch_from_the_compacted_revision_sees_its_events_after_a_snapshot_install() {
    let mut leader = populated("cluster-a").await;
    let on_leader = watched(&leader.store, 5, 21).await;
    assert_eq!(on_leader.first().map(|(revision, _)| *revision), Some(5));
    assert_eq!(on_leader.len(), 17);

    let (meta, bytes) = snapshot_now(&mut leader).await;
    let mut follower = Harness::with_opts(opts("cluster-a"));
    receive_and_install(&mut follower, &meta, &bytes)
        .await
        .unwrap();
    assert_eq!(follower.store.kv.compacted_revision(), 5);
    assert_eq!(watched(&follower.store, 5, 21).await, on_leader);
}

#[tokio::test]
async fn live_watchers_replay_the_gap_a_snapshot_install_jumps_over() {
    let mut leader = Harness::with_opts(opts("c"));
    for i in 1..=10 {
        leader.put(&format!("/k/{i}"), "v").await;
    }
    let (meta, bytes) = snapshot_now(&mut leader).await;

    // The follower applied the first 4 revisions identically, then fell behind.
    let mut follower = Harness::with_opts(opts("c"));
    for i in 1..=4 {
        follower.put(&format!("/k/{i}"), "v").await;
    }
    let mut w = follower
        .store
        .watch
        .watch(WatchRequest {
            range: KeyRange::prefix("/k/"),
            ..Default::default()
        })
        .unwrap();
    receive_and_install(&mut follower, &meta, &bytes)
        .await
        .unwrap();
    let mut revisions = Vec::new();
    while revisions.last() != Some(&10) {
        match tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
        {
            WatchMessage::Events { events, .. } => {
                revisions.extend(events.iter().map(|e| e.kv.mod_revision))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(revisions, (5..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused_and_changes_nothing() {
    let mut leader = populated("cluster-a").await;
    let (meta, mut bytes) = snapshot_now(&mut leader).await;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;

    let mut follower = Harness::with_opts(opts("cluster-a"));
    follower.put("/mine", "1").await;
    let before = follower.store.kv.state_hash().unwrap();
    assert!(
        receive_and_install(&mut follower, &meta, &bytes)
            .await
            .is_err()
    );
    assert_eq!(follower.store.kv.state_hash().unwrap(), before);
    assert!(
        follower
            .store
            .state_machine
            .get_current_snapshot()
            .await
            .unwrap()
            .is_none()
    );

    // A snapshot of another cluster is refused too.
    let mut stranger = Harness::with_opts(opts("cluster-b"));
    let (good_meta, good_bytes) = snapshot_now(&mut leader).await;
    assert!(
        receive_and_install(&mut stranger, &good_meta, &good_bytes)
            .await
            .is_err()
    );
    assert_eq!(stranger.store.kv.revision(), 0);
}

#[tokio::test]
async fn only_the_newest_two_snapshots_are_kept() {
    let mut h = Harness::new();
    let mut metas = Vec::new();
    for i in 0..4 {
        h.put("/r", &i.to_string()).await;
        let (meta, _) = snapshot_now(&mut h).await;
        metas.push(meta);
    }
    let points: std::collections::BTreeSet<_> = metas
        .iter()
        .map(|m| m.last_log_id.map(|l| l.index))
        .collect();
    assert_eq!(
        points.len(),
        4,
        "each snapshot is of its own point in the log"
    );
    let files: Vec<_> = std::fs::read_dir(h.store_dir().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let current = h
        .store
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&current.meta, metas.last().unwrap());
}
