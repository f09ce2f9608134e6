use skiff_proto::etcdserverpb as pb;
use skiff_proto::etcdserverpb::compare::{CompareResult, CompareTarget as PbTarget, TargetUnion};
use skiff_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use skiff_proto::etcdserverpb::request_op::Request;
use skiff_proto::etcdserverpb::response_op::Response;
use skiff_proto::mvccpb;
use skiff_storage::{
    CompareOp, CompareTarget, Event, EventKind, KeyRange, KeyValue, Op, OpResponse, RangeResponse,
    TxnResponse,
};

use super::*;
use crate::etcd::backend::BackendError;
use crate::etcd::error::EtcdError;

fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        create_revision: create,
        mod_revision: modified,
        version,
        value: value.into(),
        lease: 0,
    }
}

fn hdr(revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: 7,
        member_id: 1,
        revision,
        raft_term: 2,
    }
}

fn range(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn put(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    }
}

fn delete(key: &str, range_end: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.to_vec(),
            prev_kv: false,
        })),
    }
}

fn get(req: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestRange(req)),
    }
}

#[test]
fn key_value_and_event_convert_field_by_field() {
    let stored = KeyValue {
        lease: 0,
        ..kv("/a", "1", 3, 5, 2)
    };
    let wire = key_value(stored);
    assert_eq!(
        wire,
        mvccpb::KeyValue {
            key: b"/a".to_vec(),
            create_revision: 3,
            mod_revision: 5,
            version: 2,
            value: b"1".to_vec(),
            lease: 0,
        }
    );
    let deleted = event(Event {
        kind: EventKind::Delete,
        kv: kv("/a", "", 0, 6, 0),
        prev_kv: Some(kv("/a", "1", 3, 5, 2)),
    });
    assert_eq!(deleted.r#type, mvccpb::event::EventType::Delete as i32);
    assert_eq!(deleted.kv.as_ref().map(|kv| kv.mod_revision), Some(6));
    assert_eq!(deleted.prev_kv.map(|kv| kv.value), Some(b"1".to_vec()));
    let put = event(Event {
        kind: EventKind::Put,
        kv: kv("/b", "2", 7, 7, 1),
        prev_kv: None,
    });
    assert_eq!(put.r#type, mvccpb::event::EventType::Put as i32);
    assert!(put.prev_kv.is_none());
}

#[test]
fn range_request_validates_like_etcd() {
    assert_eq!(range_request(range("")).err(), Some(EtcdError::EmptyKey));
    let bad_order = pb::RangeRequest {
        sort_order: 9,
        ..range("a")
    };
    assert_eq!(
        range_request(bad_order).err(),
        Some(EtcdError::InvalidSortOption)
    );
    let bad_target = pb::RangeRequest {
        sort_target: 9,
        ..range("a")
    };
    assert_eq!(
        range_request(bad_target).err(),
        Some(EtcdError::InvalidSortOption)
    );
}

#[test]
fn plain_range_passes_limit_and_flags_to_the_store() {
    let req = pb::RangeRequest {
        range_end: b"b".to_vec(),
        limit: 2,
        revision: -4,
        keys_only: true,
        count_only: true,
        ..range("a")
    };
    let (read, view) = range_request(req).expect("valid");
    assert_eq!(
        read.range,
        KeyRange {
            key: b"a".to_vec(),
            range_end: b"b".to_vec()
        }
    );
    assert_eq!(read.limit, 2);
    assert_eq!(
        read.revision, 0,
        "etcd reads the current revision for revision <= 0"
    );
    assert!(read.keys_only && read.count_only);
    assert!(!view.needs_full_read());
}

#[test]
fn sorting_or_filtering_reads_everything_and_limits_afterwards() {
    // A target other than KEY sorts ascending even when no order is given.
    let (read, view) = range_request(pb::RangeRequest {
        limit: 1,
        sort_target: SortTarget::Mod as i32,
        ..range("a")
    })
    .expect("valid");
    assert_eq!(read.limit, 0);
    assert_eq!(view.sort, Some((SortTarget::Mod, SortOrder::Ascend)));

    // KEY ascending is the store's own order: no full read.
    let (read, view) = range_request(pb::RangeRequest {
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        ..range("a")
    })
    .expect("valid");
    assert_eq!((read.limit, view.sort), (1, None));

    let (read, _) = range_request(pb::RangeRequest {
        limit: 1,
        min_mod_revision: 3,
        ..range("a")
    })
    .expect("valid");
    assert_eq!(read.limit, 0);

    // Sorting by value needs the values even for keys_only.
    let (read, _) = range_request(pb::RangeRequest {
        keys_only: true,
        sort_target: SortTarget::Value as i32,
        ..range("a")
    })
    .expect("valid");
    assert!(!read.keys_only);
}

#[test]
fn range_view_filters_sorts_limits_and_strips_values() {
    let (_, view) = range_request(pb::RangeRequest {
        range_end: vec![0],
        limit: 2,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Mod as i32,
        keys_only: true,
        min_mod_revision: 3,
        max_create_revision: 8,
        ..range("a")
    })
    .expect("valid");
    let read = RangeResponse {
        kvs: vec![
            kv("a", "1", 2, 2, 1), // mod < 3: filtered
            kv("b", "2", 3, 9, 3), // kept
            kv("c", "3", 4, 4, 1), // kept
            kv("d", "4", 9, 9, 1), // create > 8: filtered
            kv("e", "5", 5, 6, 2), // kept
        ],
        more: false,
        count: 5,
        revision: 9,
    };
    let resp = view.apply(read, hdr(9));
    let keys: Vec<_> = resp.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys,
        vec![b"b".to_vec(), b"e".to_vec()],
        "descending by mod revision, limited to 2"
    );
    assert!(resp.more);
    assert_eq!(
        resp.count, 5,
        "count is the store's, before filters (etcd does the same)"
    );
    assert!(resp.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(resp.header, Some(hdr(9)));
}

#[test]
fn range_view_keeps_store_more_flag_without_post_processing() {
    let (_, view) = range_request(pb::RangeRequest {
        limit: 1,
        ..range("a")
    })
    .expect("valid");
    let read = RangeResponse {
        kvs: vec![kv("a", "1", 2, 2, 1)],
        more: true,
        count: 3,
        revision: 4,
    };
    let resp = view.apply(read, hdr(4));
    assert!(resp.more);
    assert_eq!(resp.kvs.len(), 1);
    assert_eq!(resp.kvs[0].value, b"1".to_vec());
}

#[test]
fn descending_sort_is_stable_for_equal_values() {
    let (_, view) = range_request(pb::RangeRequest {
        range_end: vec![0],
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Version as i32,
        ..range("a")
    })
    .expect("valid");
    let read = RangeResponse {
        kvs: vec![
            kv("a", "", 1, 1, 1),
            kv("b", "", 1, 1, 2),
            kv("c", "", 1, 1, 1),
        ],
        more: false,
        count: 3,
        revision: 1,
    };
    let keys: Vec<_> = view
        .apply(read, hdr(1))
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, vec![b"b".to_vec(), b"a".to_vec(), b"c".to_vec()]);
}

#[test]
fn put_validation_matches_etcd() {
    let base = pb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        put_op(pb::PutRequest {
            key: Vec::new(),
            ..base.clone()
        })
        .err(),
        Some(EtcdError::EmptyKey)
    );
    assert_eq!(
        put_op(pb::PutRequest {
            lease: 5,
            ..base.clone()
        })
        .err(),
        Some(EtcdError::LeasesUnsupported)
    );
    assert_eq!(
        put_op(pb::PutRequest {
            ignore_value: true,
            ..base.clone()
        })
        .err(),
        Some(EtcdError::ValueProvided)
    );
    assert_eq!(
        put_op(pb::PutRequest {
            ignore_lease: true,
            lease: 5,
            ..base.clone()
        })
        .err(),
        Some(EtcdError::LeaseProvided)
    );
    assert_eq!(
        put_op(pb::PutRequest {
            ignore_value: true,
            value: Vec::new(),
            ..base.clone()
        })
        .err(),
        Some(EtcdError::Unsupported("ignore_value"))
    );
    assert_eq!(
        put_op(pb::PutRequest {
            ignore_lease: true,
            ..base.clone()
        })
        .err(),
        Some(EtcdError::Unsupported("ignore_lease"))
    );
    assert_eq!(
        put_op(pb::PutRequest {
            prev_kv: true,
            ..base
        }),
        Ok(Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 0,
            prev_kv: true
        })
    );
    assert_eq!(
        delete_op(pb::DeleteRangeRequest::default()).err(),
        Some(EtcdError::EmptyKey)
    );
}

#[test]
fn txn_rejects_too_many_ops_empty_compare_keys_nested_and_empty_ops() {
    let txn = |compare: Vec<pb::Compare>, success: Vec<pb::RequestOp>| pb::TxnRequest {
        compare,
        success,
        failure: Vec::new(),
    };
    let many: Vec<_> = (0..4).map(|i| put(&format!("k{i}"))).collect();
    assert_eq!(
        txn_request(txn(Vec::new(), many.clone()), 3).err(),
        Some(EtcdError::TooManyOps)
    );
    assert!(txn_request(txn(Vec::new(), many), 4).is_ok());

    let no_key = pb::Compare::default();
    assert_eq!(
        txn_request(txn(vec![no_key], Vec::new()), 128).err(),
        Some(EtcdError::EmptyKey)
    );

    let nested = pb::RequestOp {
        request: Some(Request::RequestTxn(pb::TxnRequest::default())),
    };
    assert_eq!(
        txn_request(txn(Vec::new(), vec![nested]), 128).err(),
        Some(EtcdError::Unsupported("nested txn"))
    );
    let empty = pb::RequestOp { request: None };
    assert_eq!(
        txn_request(txn(Vec::new(), vec![empty]), 128).err(),
        Some(EtcdError::EmptyRequestOp)
    );
    let bad_range = get(range(""));
    assert_eq!(
        txn_request(txn(Vec::new(), vec![bad_range]), 128).err(),
        Some(EtcdError::EmptyKey)
    );
}

#[test]
fn txn_rejects_a_key_written_twice_in_one_branch() {
    let txn = |success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>| pb::TxnRequest {
        compare: Vec::new(),
        success,
        failure,
    };
    let dup = EtcdError::DuplicateKey;
    assert_eq!(
        txn_request(txn(vec![put("a"), put("a")], vec![]), 128).err(),
        Some(dup.clone())
    );
    assert_eq!(
        txn_request(txn(vec![], vec![put("a"), put("a")]), 128).err(),
        Some(dup.clone())
    );
    // A put inside a deleted key, range, or open-ended range.
    assert_eq!(
        txn_request(txn(vec![delete("a", b""), put("a")], vec![]), 128).err(),
        Some(dup.clone())
    );
    assert_eq!(
        txn_request(txn(vec![put("b"), delete("a", b"c")], vec![]), 128).err(),
        Some(dup.clone())
    );
    assert_eq!(
        txn_request(txn(vec![put("z"), delete("a", &[0])], vec![]), 128).err(),
        Some(dup)
    );
    // Allowed: the two branches never both run; reads and deletes may overlap anything.
    assert!(txn_request(txn(vec![put("a")], vec![put("a")]), 128).is_ok());
    assert!(txn_request(txn(vec![put("c"), delete("a", b"c")], vec![]), 128).is_ok());
    assert!(
        txn_request(
            txn(
                vec![
                    put("a"),
                    get(range("a")),
                    delete("b", b""),
                    delete("b", b"")
                ],
                vec![]
            ),
            128
        )
        .is_ok()
    );
}

#[test]
fn compares_use_the_target_enum_and_read_zero_for_a_mismatched_union() {
    let compare =
        |result: CompareResult, target: PbTarget, union: Option<TargetUnion>| pb::TxnRequest {
            compare: vec![pb::Compare {
                result: result as i32,
                target: target as i32,
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                target_union: union,
            }],
            success: Vec::new(),
            failure: Vec::new(),
        };
    let first = |req: pb::TxnRequest| {
        let (request, _) = txn_request(req, 128).expect("valid");
        let c = request.compares.into_iter().next().expect("one compare");
        (c.op, c.target, c.range)
    };
    let (op, target, range) = first(compare(
        CompareResult::Greater,
        PbTarget::Mod,
        Some(TargetUnion::ModRevision(4)),
    ));
    assert_eq!(
        (op, target),
        (CompareOp::Greater, CompareTarget::ModRevision(4))
    );
    assert_eq!(
        range,
        KeyRange {
            key: b"k".to_vec(),
            range_end: b"l".to_vec()
        }
    );
    assert_eq!(
        first(compare(
            CompareResult::NotEqual,
            PbTarget::Value,
            Some(TargetUnion::Value(b"x".to_vec()))
        ))
        .1,
        CompareTarget::Value(b"x".to_vec())
    );
    assert_eq!(
        first(compare(
            CompareResult::Less,
            PbTarget::Version,
            Some(TargetUnion::Lease(9))
        ))
        .1,
        CompareTarget::Version(0)
    );
    assert_eq!(
        first(compare(CompareResult::Equal, PbTarget::Create, None)).1,
        CompareTarget::CreateRevision(0)
    );
    assert_eq!(
        first(compare(
            CompareResult::Equal,
            PbTarget::Lease,
            Some(TargetUnion::Lease(0))
        ))
        .1,
        CompareTarget::Lease(0)
    );

    let mut bad = compare(CompareResult::Equal, PbTarget::Version, None);
    bad.compare[0].result = 42;
    assert_eq!(
        txn_request(bad, 128).err(),
        Some(EtcdError::InvalidEnum("compare result"))
    );
    let mut bad = compare(CompareResult::Equal, PbTarget::Version, None);
    bad.compare[0].target = 42;
    assert_eq!(
        txn_request(bad, 128).err(),
        Some(EtcdError::InvalidEnum("compare target"))
    );
}

#[test]
fn txn_response_post_processes_the_branch_that_ran() {
    let sorted = pb::RangeRequest {
        range_end: vec![0],
        sort_order: SortOrder::Descend as i32,
        ..range("a")
    };
    let (_, plan) = txn_request(
        pb::TxnRequest {
            compare: Vec::new(),
            success: vec![put("x")],
            failure: vec![get(sorted), put("y")],
        },
        128,
    )
    .expect("valid");
    let store = TxnResponse {
        succeeded: false,
        responses: vec![
            OpResponse::Range(RangeResponse {
                kvs: vec![kv("a", "1", 1, 1, 1), kv("b", "2", 2, 2, 1)],
                more: false,
                count: 2,
                revision: 3,
            }),
            OpResponse::Put {
                prev_kv: Some(kv("y", "0", 1, 1, 1)),
            },
        ],
        revision: 4,
    };
    let resp = plan.response(store, hdr(4)).expect("matching shapes");
    assert!(!resp.succeeded);
    assert_eq!(resp.header, Some(hdr(4)));
    match &resp.responses[0].response {
        Some(Response::ResponseRange(r)) => {
            assert_eq!(r.kvs[0].key, b"b".to_vec(), "descending by key");
            assert_eq!(r.header, Some(hdr(4)));
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    match &resp.responses[1].response {
        Some(Response::ResponsePut(p)) => assert_eq!(
            p.prev_kv.as_ref().map(|kv| kv.value.clone()),
            Some(b"0".to_vec())
        ),
        other => panic!("expected a put response, got {other:?}"),
    }

    // A store answer that does not fit the request is an internal error, not a panic.
    let wrong = TxnResponse {
        succeeded: true,
        responses: Vec::new(),
        revision: 4,
    };
    assert!(matches!(
        plan.response(wrong, hdr(4)),
        Err(EtcdError::Backend(BackendError::Internal(_)))
    ));
    let wrong_kind = TxnResponse {
        succeeded: true,
        responses: vec![OpResponse::Delete {
            deleted: 1,
            prev_kvs: Vec::new(),
        }],
        revision: 4,
    };
    assert!(plan.response(wrong_kind, hdr(4)).is_err());
}

#[test]
fn single_op_responses_convert() {
    let resp = TxnResponse {
        succeeded: true,
        responses: vec![OpResponse::Delete {
            deleted: 2,
            prev_kvs: vec![kv("a", "1", 1, 1, 1)],
        }],
        revision: 5,
    };
    let op = single_response(resp).expect("one response");
    let deleted = delete_response(op.clone(), hdr(5)).expect("delete");
    assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (2, 1));
    assert!(put_response(op, hdr(5)).is_err());
    assert!(single_response(TxnResponse::default()).is_err());
}

#[test]
fn member_and_status_convert() {
    let m = member(crate::etcd::MemberInfo {
        id: 3,
        name: "n3".into(),
        peer_urls: vec!["https://10.0.0.3:2380".into()],
        client_urls: vec!["https://10.0.0.3:2379".into()],
        is_learner: true,
    });
    assert_eq!((m.id, m.name.as_str(), m.is_learner), (3, "n3", true));
    let s = status(crate::etcd::MemberStatus {
        header: crate::etcd::HeaderInfo {
            cluster_id: 7,
            member_id: 3,
            revision: 11,
            raft_term: 2,
        },
        version: "3.4.0".into(),
        db_size: 4096,
        leader: 1,
        raft_index: 20,
        raft_applied_index: 19,
        raft_term: 2,
        is_learner: false,
    });
    assert_eq!(
        s.header,
        Some(pb::ResponseHeader {
            cluster_id: 7,
            member_id: 3,
            revision: 11,
            raft_term: 2
        })
    );
    assert_eq!(
        (
            s.db_size,
            s.db_size_in_use,
            s.leader,
            s.raft_index,
            s.raft_applied_index
        ),
        (4096, 4096, 1, 20, 19)
    );
}
