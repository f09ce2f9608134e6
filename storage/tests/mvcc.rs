//! MVCC semantics of apply and reads: revisions, create/mod/version, transactions and compares,
//! deletes, historical reads, compaction.

mod common;

use common::{Harness, cmp, put_op, range_op};
use skiff_storage::{
    CommandResult, CompareOp, CompareTarget, KeyRange, KvError, Op, OpResponse, RangeRequest,
    Rejection, TxnRequest,
};

#[tokio::test]
async fn puts_bump_revision_and_track_create_mod_version() {
    let mut h = Harness::new();
    assert_eq!(h.store.kv.revision(), 0);
    assert_eq!(h.put("/a", "1").await, 1);
    assert_eq!(h.put("/a", "2").await, 2);
    assert_eq!(h.put("/b", "x").await, 3);
    assert_eq!(h.store.kv.revision(), 3);
    let a = h.get("/a").unwrap();
    assert_eq!(
        (
            a.create_revision,
            a.mod_revision,
            a.version,
            a.value.as_slice()
        ),
        (1, 2, 2, &b"2"[..])
    );
    let b = h.get("/b").unwrap();
    assert_eq!((b.create_revision, b.mod_revision, b.version), (3, 3, 1));
    // Re-creating after a delete starts a new life: new create revision, version 1.
    h.delete(KeyRange::single("/a")).await;
    assert_eq!(h.put("/a", "3").await, 5);
    let a = h.get("/a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
}

#[tokio::test]
async fn a_txn_writing_many_keys_uses_exactly_one_revision() {
    let mut h = Harness::new();
    h.put("/x", "0").await;
    let resp = h
        .txn_ok(TxnRequest {
            compares: vec![],
            success: vec![
                put_op("/a", "1"),
                put_op("/b", "2"),
                Op::Delete {
                    range: KeyRange::single("/x"),
                    prev_kv: true,
                },
            ],
            failure: vec![],
        })
        .await;
    assert!(resp.succeeded);
    assert_eq!(resp.revision, 2);
    assert_eq!(h.store.kv.revision(), 2);
    assert_eq!(h.get("/a").unwrap().mod_revision, 2);
    assert_eq!(h.get("/b").unwrap().mod_revision, 2);
    assert!(h.get("/x").is_none());
    match &resp.responses[2] {
        OpResponse::Delete { deleted, prev_kvs } => {
            assert_eq!(*deleted, 1);
            assert_eq!(prev_kvs[0].value, b"0");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn txns_that_write_nothing_do_not_bump_the_revision() {
    let mut h = Harness::new();
    h.put("/a", "1").await;
    let resp = h.delete(KeyRange::single("/missing")).await;
    assert_eq!(resp.revision, 1);
    let resp = h
        .txn_ok(TxnRequest {
            compares: vec![],
            success: vec![range_op(KeyRange::single("/a"), 0)],
            failure: vec![],
        })
        .await;
    assert_eq!(resp.revision, 1);
    assert_eq!(h.store.kv.revision(), 1);
}

#[tokio::test]
async fn create_if_absent_and_update_if_mod_revision_matches() {
    let mut h = Harness::new();
    let create = |value: &str| TxnRequest {
        compares: vec![cmp(
            "/k",
            CompareOp::Equal,
            CompareTarget::CreateRevision(0),
        )],
        success: vec![put_op("/k", value)],
        failure: vec![range_op(KeyRange::single("/k"), 0)],
    };
    let first = h.txn_ok(create("v1")).await;
    assert!(first.succeeded);
    let second = h.txn_ok(create("v2")).await;
    assert!(!second.succeeded, "second create must lose");
    match &second.responses[0] {
        OpResponse::Range(r) => assert_eq!(r.kvs[0].value, b"v1"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        second.revision, first.revision,
        "a failed compare writes nothing"
    );

    let update = |rev, value: &str| TxnRequest {
        compares: vec![cmp("/k", CompareOp::Equal, CompareTarget::ModRevision(rev))],
        success: vec![put_op("/k", value)],
        failure: vec![],
    };
    let ok = h.txn_ok(update(first.revision, "v3")).await;
    assert!(ok.succeeded);
    // A stale mod revision fails and changes nothing.
    let stale = h.txn_ok(update(first.revision, "v4")).await;
    assert!(!stale.succeeded);
    assert_eq!(stale.revision, ok.revision);
    let kv = h.get("/k").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.version),
        (&b"v3"[..], ok.revision, 2)
    );
    assert_eq!(h.store.kv.revision(), ok.revision);
}

#[tokio::test]
async fn compares_on_absent_keys_and_ranges_follow_etcd() {
    let mut h = Harness::new();
    let holds = |compares| TxnRequest {
        compares,
        success: vec![],
        failure: vec![],
    };
    // Absent key: version/create/mod/lease are 0.
    assert!(
        h.txn_ok(holds(vec![cmp(
            "/none",
            CompareOp::Equal,
            CompareTarget::Version(0)
        )]))
        .await
        .succeeded
    );
    assert!(
        h.txn_ok(holds(vec![cmp(
            "/none",
            CompareOp::Equal,
            CompareTarget::Lease(0)
        )]))
        .await
        .succeeded
    );
    // A value compare on an absent key is false whatever the operator.
    for op in [
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Greater,
        CompareOp::Less,
    ] {
        let resp = h
            .txn_ok(holds(vec![cmp(
                "/none",
                op,
                CompareTarget::Value(b"x".to_vec()),
            )]))
            .await;
        assert!(!resp.succeeded, "{op:?}");
    }
    h.put("/r/a", "1").await;
    h.put("/r/b", "2").await;
    let over_range = |op, v: &str| skiff_storage::Compare {
        range: KeyRange::prefix("/r/"),
        op,
        target: CompareTarget::Value(v.as_bytes().to_vec()),
    };
    // Every key in range must satisfy the compare.
    assert!(
        h.txn_ok(holds(vec![over_range(CompareOp::Greater, "0")]))
            .await
            .succeeded
    );
    assert!(
        !h.txn_ok(holds(vec![over_range(CompareOp::Greater, "1")]))
            .await
            .succeeded
    );
    assert!(
        h.txn_ok(holds(vec![cmp(
            "/r/b",
            CompareOp::Greater,
            CompareTarget::Value(b"1".to_vec())
        )]))
        .await
        .succeeded
    );
    // All compares must hold.
    let mixed = vec![
        cmp("/r/a", CompareOp::Equal, CompareTarget::Version(1)),
        cmp("/r/b", CompareOp::Equal, CompareTarget::Version(7)),
    ];
    assert!(!h.txn_ok(holds(mixed)).await.succeeded);
}

#[tokio::test]
async fn duplicate_keys_are_rejected_and_change_nothing() {
    let mut h = Harness::new();
    h.put("/a", "1").await;
    let before = h.store.kv.state_hash().unwrap();
    let dup = h
        .txn(TxnRequest {
            compares: vec![],
            success: vec![put_op("/b", "1"), put_op("/b", "2")],
            failure: vec![],
        })
        .await;
    assert_eq!(
        dup,
        CommandResult::Rejected(Rejection::Unsupported(
            "duplicate key given in txn request".into()
        ))
    );
    let put_in_delete = h
        .txn(TxnRequest {
            compares: vec![],
            success: vec![
                Op::Delete {
                    range: KeyRange::prefix("/"),
                    prev_kv: false,
                },
                put_op("/c", "1"),
            ],
            failure: vec![],
        })
        .await;
    assert!(matches!(
        put_in_delete,
        CommandResult::Rejected(Rejection::Unsupported(_))
    ));
    // Checked in the branch not taken, too (etcd validates both).
    let in_failure = h
        .txn(TxnRequest {
            compares: vec![],
            success: vec![],
            failure: vec![put_op("/d", "1"), put_op("/d", "1")],
        })
        .await;
    assert!(matches!(in_failure, CommandResult::Rejected(_)));
    assert_eq!(h.store.kv.state_hash().unwrap(), before);
    assert_eq!(h.store.kv.revision(), 1);
    // Overlapping deletes are fine.
    let overlapping = h
        .txn_ok(TxnRequest {
            compares: vec![],
            success: vec![
                Op::Delete {
                    range: KeyRange::prefix("/"),
                    prev_kv: false,
                },
                Op::Delete {
                    range: KeyRange::single("/a"),
                    prev_kv: false,
                },
            ],
            failure: vec![],
        })
        .await;
    assert!(overlapping.succeeded);
    assert!(h.get("/a").is_none());
}

#[tokio::test]
async fn later_ops_see_earlier_ops_in_the_same_txn() {
    let mut h = Harness::new();
    h.put("/p/old", "o").await;
    let resp = h
        .txn_ok(TxnRequest {
            compares: vec![],
            success: vec![
                put_op("/p/new", "n"),
                Op::Delete {
                    range: KeyRange::single("/p/old"),
                    prev_kv: false,
                },
                range_op(KeyRange::prefix("/p/"), 0),
                // An explicit read at the pre-txn revision still sees the old state.
                range_op(KeyRange::prefix("/p/"), 1),
            ],
            failure: vec![],
        })
        .await;
    let OpResponse::Range(latest) = &resp.responses[2] else {
        panic!()
    };
    assert_eq!(
        latest
            .kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        vec![b"/p/new".to_vec()]
    );
    assert_eq!(latest.kvs[0].mod_revision, 2);
    let OpResponse::Range(before) = &resp.responses[3] else {
        panic!()
    };
    assert_eq!(
        before
            .kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        vec![b"/p/old".to_vec()]
    );
}

#[tokio::test]
async fn delete_range_removes_every_key_in_range() {
    let mut h = Harness::new();
    for k in ["/d/1", "/d/2", "/d/3", "/e/1"] {
        h.put(k, "v").await;
    }
    let resp = h.delete(KeyRange::prefix("/d/")).await;
    assert_eq!(resp.revision, 5);
    let OpResponse::Delete { deleted, prev_kvs } = &resp.responses[0] else {
        panic!()
    };
    assert_eq!(*deleted, 3);
    assert_eq!(prev_kvs.len(), 3);
    assert_eq!(
        h.keys_at(
            KeyRange {
                key: b"/".to_vec(),
                range_end: vec![0]
            },
            0
        ),
        vec![("/e/1".into(), "v".into())]
    );
}

#[tokio::test]
async fn range_honors_limit_count_keys_only_and_count_only() {
    let mut h = Harness::new();
    for i in 0..5 {
        h.put(&format!("/l/{i}"), "value").await;
    }
    let base = RangeRequest {
        range: KeyRange::prefix("/l/"),
        ..Default::default()
    };
    let limited = h
        .store
        .kv
        .range(&RangeRequest {
            limit: 2,
            ..base.clone()
        })
        .unwrap();
    assert_eq!(
        (
            limited.kvs.len(),
            limited.count,
            limited.more,
            limited.revision
        ),
        (2, 5, true, 5)
    );
    assert_eq!(limited.kvs[0].key, b"/l/0");
    let all = h
        .store
        .kv
        .range(&RangeRequest {
            limit: 5,
            ..base.clone()
        })
        .unwrap();
    assert!(!all.more);
    let keys = h
        .store
        .kv
        .range(&RangeRequest {
            keys_only: true,
            ..base.clone()
        })
        .unwrap();
    assert!(
        keys.kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.mod_revision > 0)
    );
    let counted = h
        .store
        .kv
        .range(&RangeRequest {
            count_only: true,
            ..base.clone()
        })
        .unwrap();
    assert_eq!((counted.kvs.len(), counted.count), (0, 5));
    let inverted = h.store.kv.range(&RangeRequest {
        range: KeyRange {
            key: b"/z".to_vec(),
            range_end: b"/a".to_vec(),
        },
        ..base
    });
    assert_eq!(inverted.unwrap().count, 0);
}

#[tokio::test]
async fn historical_reads_reconstruct_past_states() {
    let mut h = Harness::new();
    h.put("/h/a", "a1").await; // 1
    h.put("/h/b", "b1").await; // 2
    h.put("/h/a", "a2").await; // 3
    h.delete(KeyRange::single("/h/b")).await; // 4
    h.put("/h/c", "c1").await; // 5
    let all = KeyRange::prefix("/h/");
    assert_eq!(
        h.keys_at(all.clone(), 1),
        vec![("/h/a".into(), "a1".into())]
    );
    assert_eq!(
        h.keys_at(all.clone(), 2),
        vec![("/h/a".into(), "a1".into()), ("/h/b".into(), "b1".into())]
    );
    assert_eq!(
        h.keys_at(all.clone(), 3),
        vec![("/h/a".into(), "a2".into()), ("/h/b".into(), "b1".into())]
    );
    assert_eq!(
        h.keys_at(all.clone(), 4),
        vec![("/h/a".into(), "a2".into())]
    );
    assert_eq!(
        h.keys_at(all.clone(), 5),
        vec![("/h/a".into(), "a2".into()), ("/h/c".into(), "c1".into())]
    );
    let a_at_2 = h.get_at("/h/a", 2).unwrap();
    assert_eq!((a_at_2.mod_revision, a_at_2.version), (1, 1));
    let old = h
        .store
        .kv
        .range(&RangeRequest {
            range: all,
            revision: 2,
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (old.kvs.len(), old.count, old.more, old.revision),
        (1, 2, true, 2)
    );
    match h.store.kv.range(&RangeRequest {
        range: KeyRange::single("/h/a"),
        revision: 6,
        ..Default::default()
    }) {
        Err(KvError::FutureRevision { current: 5 }) => {}
        other => panic!("expected a future revision error, got {other:?}"),
    }
}

#[tokio::test]
async fn compaction_refuses_old_and_future_revisions() {
    let mut h = Harness::new();
    for i in 0..6 {
        h.put("/c", &i.to_string()).await;
    }
    assert_eq!(
        h.compact(7).await,
        CommandResult::Rejected(Rejection::FutureRevision { current: 6 })
    );
    assert_eq!(h.compact(4).await, CommandResult::Compacted { revision: 4 });
    assert_eq!(h.store.kv.compacted_revision(), 4);
    assert_eq!(
        h.compact(4).await,
        CommandResult::Rejected(Rejection::Compacted { compacted: 4 })
    );
    assert_eq!(
        h.compact(3).await,
        CommandResult::Rejected(Rejection::Compacted { compacted: 4 })
    );
    let at = |revision| RangeRequest {
        range: KeyRange::single("/c"),
        revision,
        ..Default::default()
    };
    // As in etcd, the compacted revision itself stays readable; only older ones are refused.
    assert_eq!(h.store.kv.range(&at(4)).unwrap().kvs[0].value, b"3");
    assert!(matches!(
        h.store.kv.range(&at(3)),
        Err(KvError::Compacted { compacted: 4 })
    ));
    assert!(matches!(
        h.store.kv.range(&at(1)),
        Err(KvError::Compacted { compacted: 4 })
    ));
    assert_eq!(h.store.kv.range(&at(5)).unwrap().kvs[0].value, b"4");
    assert_eq!(h.store.kv.range(&at(0)).unwrap().kvs[0].value, b"5");
    // A range op at a compacted revision refuses the whole txn, and it writes nothing.
    let refused = h
        .txn(TxnRequest {
            compares: vec![],
            success: vec![put_op("/other", "x"), range_op(KeyRange::single("/c"), 2)],
            failure: vec![],
        })
        .await;
    assert_eq!(
        refused,
        CommandResult::Rejected(Rejection::Compacted { compacted: 4 })
    );
    assert!(h.get("/other").is_none());
    let future = h
        .txn(TxnRequest {
            compares: vec![],
            success: vec![range_op(KeyRange::single("/c"), 99)],
            failure: vec![],
        })
        .await;
    assert_eq!(
        future,
        CommandResult::Rejected(Rejection::FutureRevision { current: 6 })
    );
    // Compacting all the way to the current revision still serves current reads.
    assert_eq!(h.compact(6).await, CommandResult::Compacted { revision: 6 });
    assert_eq!(h.get("/c").unwrap().value, b"5");
}

#[tokio::test]
async fn members_applying_the_same_log_converge_on_the_same_hash() {
    let mut a = Harness::new();
    let mut b = Harness::new();
    for h in [&mut a, &mut b] {
        h.put("/s/1", "x").await;
        h.put("/s/2", "y").await;
        h.delete(KeyRange::single("/s/1")).await;
    }
    let (rev_a, hash_a) = a.store.kv.state_hash().unwrap();
    let (rev_b, hash_b) = b.store.kv.state_hash().unwrap();
    assert_eq!((rev_a, &hash_a), (rev_b, &hash_b));
    b.put("/s/3", "z").await;
    assert_ne!(b.store.kv.state_hash().unwrap().1, hash_a);
}

#[tokio::test]
async fn a_batch_of_entries_applies_in_order_each_seeing_the_previous() {
    use openraft::EntryPayload;
    use skiff_storage::Command;

    let mut h = Harness::new();
    let create_only = |value: &str| {
        Command::Txn(TxnRequest {
            compares: vec![cmp("/once", CompareOp::Equal, CompareTarget::Version(0))],
            success: vec![put_op("/once", value)],
            failure: vec![],
        })
    };
    let entries = vec![
        h.next_entry(EntryPayload::Normal(create_only("first"))),
        h.next_entry(EntryPayload::Blank),
        h.next_entry(EntryPayload::Normal(create_only("second"))),
        h.next_entry(EntryPayload::Normal(Command::Txn(TxnRequest::put(
            "/other", "x",
        )))),
    ];
    let last = entries.last().unwrap().log_id;
    let results = h.store.state_machine.apply_entries(entries).unwrap();
    assert_eq!(results.len(), 4);
    let txn = |r: &CommandResult| match r {
        CommandResult::Txn(t) => (t.succeeded, t.revision),
        other => panic!("{other:?}"),
    };
    assert_eq!(txn(&results[0]), (true, 1));
    assert_eq!(
        txn(&results[2]),
        (false, 1),
        "the second create sees the first"
    );
    assert_eq!(txn(&results[3]), (true, 2));
    assert_eq!(h.get("/once").unwrap().value, b"first");
    assert_eq!(h.store.kv.last_applied(), Some(last));
}

/// A batch entry (group proposal) must be indistinguishable from its commands in entries of
/// their own: same results, same revisions, same state and history, and each command sees its
/// predecessors' writes, current and historical.
#[tokio::test]
async fn a_batch_entry_applies_exactly_like_one_entry_per_command() {
    use openraft::EntryPayload;
    use skiff_storage::{Command, Op};

    let create_only = |value: &str| {
        Command::Txn(TxnRequest {
            compares: vec![cmp("/once", CompareOp::Equal, CompareTarget::Version(0))],
            success: vec![put_op("/once", value)],
            failure: vec![],
        })
    };
    let update_if = |revision: i64, value: &str| {
        Command::Txn(TxnRequest {
            compares: vec![cmp(
                "/once",
                CompareOp::Equal,
                CompareTarget::ModRevision(revision),
            )],
            success: vec![put_op("/once", value)],
            failure: vec![],
        })
    };
    let read_at = |revision: i64| {
        Command::Txn(TxnRequest {
            compares: vec![],
            success: vec![Op::Range(RangeRequest {
                range: KeyRange::single("/once"),
                revision,
                ..Default::default()
            })],
            failure: vec![],
        })
    };
    let commands = vec![
        create_only("first"),
        create_only("second"),
        Command::Txn(TxnRequest::put("/other", "x")),
        update_if(1, "updated"),
        read_at(1),
        Command::Compact { revision: 1 },
        read_at(1),
        Command::Txn(TxnRequest::put("/other", "y")),
    ];

    let mut one_by_one = Harness::new();
    let mut expected = Vec::new();
    for command in &commands {
        expected.push(one_by_one.apply(command.clone()).await);
    }
    // A batch nested in a batch is refused (deterministically), and changes nothing.
    let mut with_nested = commands.clone();
    with_nested.push(Command::Batch(vec![Command::Txn(TxnRequest::put(
        "/nested", "no",
    ))]));
    expected.push(CommandResult::Rejected(
        skiff_storage::Rejection::Unsupported("a batch inside a batch".into()),
    ));

    let mut batched = Harness::new();
    let entry = batched.next_entry(EntryPayload::Normal(Command::Batch(with_nested)));
    let log_id = entry.log_id;
    let mut results = batched
        .store
        .state_machine
        .apply_entries(vec![entry])
        .unwrap();
    let Some(CommandResult::Batch(results)) = results.pop() else {
        panic!("a batch entry returns a batch result");
    };
    assert_eq!(results.len(), expected.len());
    for (i, (got, want)) in results.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "command {i}");
    }
    let txn = |r: &CommandResult| match r {
        CommandResult::Txn(t) => (t.succeeded, t.revision),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        txn(&results[1]),
        (false, 1),
        "the second create sees the first"
    );
    assert_eq!(
        txn(&results[3]),
        (true, 3),
        "the update sees the first's revision"
    );
    assert_eq!(batched.store.kv.last_applied(), Some(log_id));
    assert_eq!(batched.get("/once").unwrap().value, b"updated");
    assert_eq!(batched.store.kv.revision(), 4);
    assert!(batched.get("/nested").is_none());
    assert_eq!(
        batched.store.kv.state_hash().unwrap(),
        one_by_one.store.kv.state_hash().unwrap(),
        "same state and history"
    );
}

/// Openraft hands over many entries per apply call and they are written in one WriteBatch:
/// commands must still read their predecessors' writes (point reads, ranges with limits, ranges
/// that staged deletes hide, compares over ranges, historical reads) exactly as if each had
/// been written on its own, and the state and history must come out the same.
#[tokio::test]
async fn a_run_of_entries_written_at_once_reads_like_entries_written_one_by_one() {
    use openraft::EntryPayload;
    use skiff_storage::{Command, Compare, Op};

    let txn = |compares: Vec<Compare>, success: Vec<Op>, failure: Vec<Op>| {
        Command::Txn(TxnRequest {
            compares,
            success,
            failure,
        })
    };
    let delete = |range: KeyRange| Op::Delete {
        range,
        prev_kv: true,
    };
    let limited = |range: KeyRange, limit: i64| {
        Op::Range(RangeRequest {
            range,
            limit,
            ..Default::default()
        })
    };
    let prefix = || KeyRange::prefix("/r/");
    let commands = vec![
        Command::Txn(TxnRequest::put("/r/c", "1")),
        Command::Txn(TxnRequest::put("/r/a", "2")),
        Command::Txn(TxnRequest::put("/z", "outside")),
        // A range over one staged and one to-be-staged key, with a limit.
        txn(
            vec![],
            vec![limited(prefix(), 1), put_op("/r/b", "3")],
            vec![],
        ),
        txn(vec![], vec![range_op(prefix(), 0)], vec![]),
        // A staged delete hides a key from later ranges and compares.
        txn(vec![], vec![delete(KeyRange::single("/r/a"))], vec![]),
        txn(
            vec![cmp("/r/a", CompareOp::Equal, CompareTarget::Version(0))],
            vec![range_op(prefix(), 0), put_op("/r/d", "4")],
            vec![],
        ),
        // A compare over a range that holds only if every staged key in it matches.
        Command::Txn(TxnRequest {
            compares: vec![Compare {
                range: prefix(),
                op: CompareOp::Greater,
                target: CompareTarget::ModRevision(0),
            }],
            success: vec![delete(prefix())],
            failure: vec![],
        }),
        txn(vec![], vec![range_op(prefix(), 0)], vec![]),
        Command::Txn(TxnRequest::put("/r/a", "5")),
        // Historical reads of revisions the run wrote (the run is written first).
        txn(vec![], vec![range_op(prefix(), 4)], vec![]),
        txn(vec![], vec![range_op(KeyRange::prefix("/"), 2)], vec![]),
        Command::Compact { revision: 3 },
        txn(vec![], vec![range_op(prefix(), 2)], vec![]),
        txn(
            vec![],
            vec![range_op(prefix(), 3), put_op("/r/e", "6")],
            vec![],
        ),
        txn(
            vec![cmp("/r/e", CompareOp::Equal, CompareTarget::Version(2))],
            vec![],
            vec![range_op(KeyRange::prefix("/"), 0)],
        ),
    ];

    let mut one_by_one = Harness::new();
    let mut expected = Vec::new();
    for command in &commands {
        expected.push(one_by_one.apply(command.clone()).await);
    }

    // The same commands as entries of one apply call, some grouped into batch entries.
    let mut at_once = Harness::new();
    let mut entries = Vec::new();
    #[derive(PartialEq)]
    enum Kind {
        Batch,
        Command,
        Blank,
    }
    let mut kinds = Vec::new();
    for (i, chunk) in commands.chunks(3).enumerate() {
        if i % 2 == 0 {
            entries.push(at_once.next_entry(EntryPayload::Normal(Command::Batch(chunk.to_vec()))));
            kinds.push(Kind::Batch);
        } else {
            for command in chunk {
                entries.push(at_once.next_entry(EntryPayload::Normal(command.clone())));
                kinds.push(Kind::Command);
            }
        }
        entries.push(at_once.next_entry(EntryPayload::Blank));
        kinds.push(Kind::Blank);
    }
    let last = entries.last().unwrap().log_id;
    let results = at_once.store.state_machine.apply_entries(entries).unwrap();
    let mut got = Vec::new();
    assert_eq!(results.len(), kinds.len());
    for (result, kind) in results.into_iter().zip(&kinds) {
        match (result, kind) {
            (CommandResult::Batch(inner), Kind::Batch) => got.extend(inner),
            (blank, Kind::Blank) => assert_eq!(blank, CommandResult::default()),
            (result, Kind::Command) => got.push(result),
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got.len(), expected.len());
    for (i, (got, want)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "command {i}");
    }
    assert_eq!(at_once.store.kv.last_applied(), Some(last));
    assert_eq!(
        at_once.store.kv.state_hash().unwrap(),
        one_by_one.store.kv.state_hash().unwrap()
    );
    let current = one_by_one.store.kv.revision();
    for revision in 3..=current {
        assert_eq!(
            at_once.keys_at(KeyRange::prefix("/"), revision),
            one_by_one.keys_at(KeyRange::prefix("/"), revision),
            "state at revision {revision}"
        );
    }
}
