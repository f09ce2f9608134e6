//! Crash recovery and reopen: everything is recovered from RocksDB alone.

mod common;

use std::time::Duration;

use common::{Harness, log_id};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{EntryPayload, Membership, Vote};
use skiff_storage::{
    Entry, KeyRange, StorageError, Store, StoreOptions, WatchMessage, WatchRequest,
};

fn blank(index: u64) -> Entry {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Blank,
    }
}

#[tokio::test]
async fn reopen_recovers_state_machine_log_vote_and_watch_position() {
    let mut h = Harness::with_opts(StoreOptions {
        cluster_id: "c1".into(),
        ..Default::default()
    });
    let membership = Membership::new_with_defaults(vec![[1u64, 2, 3].into_iter().collect()], []);
    let entry = h.next_entry(EntryPayload::Membership(membership));
    h.store.state_machine.apply_entries(vec![entry]).unwrap();
    for i in 0..10 {
        h.put(&format!("/k/{i}"), &format!("v{i}")).await;
    }
    h.delete(KeyRange::single("/k/0")).await;
    h.compact(3).await;
    let mut log = h.store.log.clone();
    log.blocking_append((1..=13).map(blank)).await.unwrap();
    log.save_vote(&Vote::new(7, 2)).await.unwrap();
    log.save_committed(Some(log_id(1, 1, 13))).await.unwrap();
    log.purge(log_id(1, 1, 2)).await.unwrap();
    drop(log);

    let hash = h.store.kv.state_hash().unwrap();
    let last_applied = h.store.kv.last_applied();
    let membership = h.store.kv.membership();
    let h = h.reopen();
    let kv = &h.store.kv;
    assert_eq!(kv.state_hash().unwrap(), hash);
    assert_eq!(kv.revision(), 11);
    assert_eq!(kv.compacted_revision(), 3);
    assert_eq!(kv.last_applied(), last_applied);
    assert_eq!(kv.membership(), membership);
    assert_eq!(kv.cluster_id(), "c1");
    assert_eq!(h.store.watch.revision(), 11);

    let mut log = h.store.log.clone();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(7, 2)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 13)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 13)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        (3..=13).collect::<Vec<_>>()
    );

    // The history survived too: a watch resumes right after the compacted revision.
    let mut w = h
        .store
        .watch
        .watch(WatchRequest {
            range: KeyRange::prefix("/k/"),
            start_revision: 4,
            ..Default::default()
        })
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    let WatchMessage::Events { revision, events } = message else {
        panic!("{message:?}")
    };
    assert_eq!(revision, 11);
    assert_eq!(
        events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        (4..=11).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn apply_continues_after_reopen() {
    let mut h = Harness::new();
    h.put("/a", "1").await;
    h.put("/a", "2").await;
    let mut h = h.reopen();
    assert_eq!(h.put("/a", "3").await, 3);
    let a = h.get("/a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 3, 3));
}

#[tokio::test]
async fn a_store_refuses_to_open_for_another_cluster() {
    let h = Harness::with_opts(StoreOptions {
        cluster_id: "first".into(),
        ..Default::default()
    });
    let dir = h.store_dir();
    let Harness {
        dir: _tmp, store, ..
    } = h;
    drop(store);
    match Store::open(
        &dir,
        StoreOptions {
            cluster_id: "second".into(),
            ..Default::default()
        },
    ) {
        Err(StorageError::ClusterIdMismatch { stored, expected }) => {
            assert_eq!((stored.as_str(), expected.as_str()), ("first", "second"));
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a store of another cluster"),
    }
    // No cluster id given: the stored one is used.
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(store.kv.cluster_id(), "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_group_committed_and_all_durable() {
    let h = Harness::new();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let mut log = h.store.log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25u64 {
                let index = t * 1000 + i + 1;
                log.blocking_append(vec![blank(index)]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let h = h.reopen();
    let mut log = h.store.log.clone();
    let entries = log.try_get_log_entries(..).await.unwrap();
    assert_eq!(entries.len(), 200);
    assert!(
        entries
            .windows(2)
            .all(|w| w[0].log_id.index < w[1].log_id.index)
    );
}

#[tokio::test]
async fn truncate_removes_the_tail_durably() {
    let h = Harness::new();
    let mut log = h.store.log.clone();
    log.blocking_append((0..=10).map(blank)).await.unwrap();
    log.truncate_after(Some(log_id(1, 1, 5))).await.unwrap();
    log.blocking_append(vec![Entry {
        log_id: log_id(2, 1, 6),
        payload: EntryPayload::Blank,
    }])
    .await
    .unwrap();
    drop(log);
    let h = h.reopen();
    let mut log = h.store.log.clone();
    let entries = log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(entries.len(), 7);
    assert_eq!(entries.last().unwrap().log_id, log_id(2, 1, 6));
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(2, 1, 6))
    );
}

const CRASH_DIR_ENV: &str = "SKIFF_STORAGE_CRASH_CHILD_DIR";

/// Every key under `prefix`, read from the current state.
fn all_under(kv: &skiff_storage::KvView, prefix: &str) -> skiff_storage::RangeResponse {
    kv.range(&skiff_storage::RangeRequest {
        range: KeyRange::prefix(prefix),
        ..Default::default()
    })
    .unwrap()
}

/// The index of the newest entry in the store's raft log (0 when empty).
async fn last_log_index(store: &Store) -> u64 {
    let mut log = store.log.clone();
    log.get_log_state()
        .await
        .unwrap()
        .last_log_id
        .map_or(0, |l| l.index)
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The child half of a kill test: raft-style "append (fsynced), then apply" of the entries
/// `payload(index)` makes, forever, until a timer thread aborts the process mid-stream (no
/// destructors, no flush).
fn append_and_apply_until_aborted(
    dir: &std::path::Path,
    payload: impl Fn(u64) -> skiff_storage::Command,
) -> ! {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(400));
        std::process::abort();
    });
    current_thread_runtime().block_on(async {
        let mut store = Store::open(dir, StoreOptions::default()).unwrap();
        let mut log = store.log.clone();
        for index in 1u64.. {
            let entry = Entry {
                log_id: log_id(1, 1, index),
                payload: EntryPayload::Normal(payload(index)),
            };
            log.blocking_append(vec![entry.clone()]).await.unwrap();
            store.state_machine.apply_entries(vec![entry]).unwrap();
        }
    });
    unreachable!("the loop only ends by abort")
}

/// Runs the test `name` of this binary again as the child (it sees `CRASH_DIR_ENV`) over a
/// store in `dir`, and checks that it was killed rather than finishing.
fn run_child_until_killed(name: &str, dir: &std::path::Path) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(CRASH_DIR_ENV, dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have been killed");
}

#[test]
fn a_killed_process_recovers_a_consistent_prefix() {
    if let Ok(dir) = std::env::var(CRASH_DIR_ENV) {
        append_and_apply_until_aborted(std::path::Path::new(&dir), |index| {
            skiff_storage::Command::Txn(skiff_storage::TxnRequest::put(
                format!("/crash/{index:08}"),
                index.to_string(),
            ))
        });
    }
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path().join("store");
    run_child_until_killed("a_killed_process_recovers_a_consistent_prefix", &dir);

    current_thread_runtime().block_on(async {
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        let applied = store
            .kv
            .last_applied()
            .expect("the child applied something")
            .index;
        assert!(
            applied >= 2,
            "the child made progress before it was killed ({applied})"
        );
        let revision = store.kv.revision();
        // One put per entry: the state is exactly the applied prefix, nothing more, nothing less.
        assert_eq!(
            revision as u64, applied,
            "revision and last applied committed together"
        );
        let all = all_under(&store.kv, "/crash/");
        assert_eq!(all.count as u64, applied);
        for (i, kv) in all.kvs.iter().enumerate() {
            let index = i as u64 + 1;
            assert_eq!(kv.key, format!("/crash/{index:08}").into_bytes());
            assert_eq!(kv.mod_revision as u64, index);
            assert_eq!(kv.value, index.to_string().into_bytes());
        }
        // Every fsynced log entry survived, at least up to what was applied.
        let mut log = store.log.clone();
        let last_log = last_log_index(&store).await;
        assert!(
            last_log >= applied,
            "log {last_log} behind applied {applied}"
        );
        assert_eq!(
            log.try_get_log_entries(1..=last_log).await.unwrap().len() as u64,
            last_log
        );
        // And the store keeps going from there.
        let mut sm = store.state_machine;
        let next = Entry {
            log_id: log_id(1, 1, applied + 1),
            payload: EntryPayload::Normal(skiff_storage::Command::Txn(
                skiff_storage::TxnRequest::put("/after", "x"),
            )),
        };
        sm.apply_entries(vec![next]).unwrap();
        assert_eq!(store.kv.revision(), revision + 1);
    });
}

const PUTS_PER_BATCH: u64 = 100;

/// Key of the n-th put (1-based) of the batch kill test.
fn batch_key(n: u64) -> String {
    format!("/batch/{n:08}")
}

/// Entry `index` of the batch kill test: `PUTS_PER_BATCH` puts. The middle one also reads an
/// older revision, which makes apply write the commands before it on their own (with a marker
/// of how many are done), so that the abort can land between two writes of one entry.
fn batch_of_puts(index: u64) -> skiff_storage::Command {
    use skiff_storage::{KeyRange, Op, RangeRequest, TxnRequest};
    skiff_storage::Command::Batch(
        (1..=PUTS_PER_BATCH)
            .map(|j| {
                let n = (index - 1) * PUTS_PER_BATCH + j;
                let mut txn = TxnRequest::put(batch_key(n), n.to_string());
                if j == PUTS_PER_BATCH / 2 {
                    txn.success.push(Op::Range(RangeRequest {
                        range: KeyRange::single(batch_key(n - 2)),
                        revision: i64::try_from(n - 2).unwrap(),
                        ..Default::default()
                    }));
                }
                skiff_storage::Command::Txn(txn)
            })
            .collect(),
    )
}

/// A crash inside a batch entry leaves some of its commands applied and the entry not; opening
/// the store finishes it from the log, raft applies the rest, and each command takes effect
/// exactly once: every key written once, revisions dense, nothing applied twice.
#[test]
fn a_process_killed_inside_batches_resumes_each_command_exactly_once() {
    if let Ok(dir) = std::env::var(CRASH_DIR_ENV) {
        append_and_apply_until_aborted(std::path::Path::new(&dir), batch_of_puts);
    }
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path().join("store");
    run_child_until_killed(
        "a_process_killed_inside_batches_resumes_each_command_exactly_once",
        &dir,
    );

    current_thread_runtime().block_on(async {
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        let applied = store.kv.last_applied().map_or(0, |l| l.index);
        let revision_at_open = store.kv.revision() as u64;
        assert_eq!(
            revision_at_open,
            applied * PUTS_PER_BATCH,
            "opening finishes an interrupted batch: the state is whole entries only"
        );
        // What raft does after a restart: apply the logged entries past the last applied one.
        let mut log = store.log.clone();
        let last_log = last_log_index(&store).await;
        assert!(
            last_log >= 2,
            "the child made progress ({last_log} entries)"
        );
        let entries = log
            .try_get_log_entries(applied + 1..=last_log)
            .await
            .unwrap();
        let mut sm = store.state_machine;
        sm.apply_entries(entries).unwrap();

        let total = last_log * PUTS_PER_BATCH;
        assert_eq!(
            store.kv.revision() as u64,
            total,
            "one revision per command"
        );
        let all = all_under(&store.kv, "/batch/");
        assert_eq!(all.count as u64, total);
        for (i, kv) in all.kvs.iter().enumerate() {
            let n = i as u64 + 1;
            assert_eq!(kv.key, batch_key(n).into_bytes());
            assert_eq!(kv.version, 1, "{} written twice", batch_key(n));
            assert_eq!(kv.mod_revision as u64, n);
            assert_eq!(kv.create_revision as u64, n);
        }
    });
}
