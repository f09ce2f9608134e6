//! Shared test harness: a real store in a temp dir, fed entries as raft would feed them.
#![allow(dead_code)]

use std::path::PathBuf;

use openraft::EntryPayload;
use skiff_storage::{
    Command, CommandResult, Compare, CompareOp, CompareTarget, Entry, KeyRange, KeyValue, Op,
    RangeRequest, Revision, Store, StoreOptions, TxnRequest, TxnResponse,
};
use tempfile::TempDir;

/// The id of the entry at `index` written by leader `node_id` in `term`.
pub fn log_id(term: u64, node_id: u64, index: u64) -> skiff_storage::LogId {
    skiff_storage::LogId::new(skiff_storage::CommittedLeaderId { term, node_id }, index)
}

pub struct Harness {
    pub dir: TempDir,
    pub store: Store,
    pub opts: StoreOptions,
    next_index: u64,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_opts(StoreOptions::default())
    }

    pub fn with_opts(opts: StoreOptions) -> Harness {
        let dir = TempDir::new().unwrap();
        let store = Store::open(&dir.path().join("store"), opts.clone()).unwrap();
        Harness {
            dir,
            store,
            opts,
            next_index: 0,
        }
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Drops every handle and opens the store again from disk.
    pub fn reopen(self) -> Harness {
        let Harness {
            dir, store, opts, ..
        } = self;
        drop(store);
        let store = Store::open(&dir.path().join("store"), opts.clone()).unwrap();
        let next_index = store.kv.last_applied().map_or(0, |l| l.index);
        Harness {
            dir,
            store,
            opts,
            next_index,
        }
    }

    pub fn next_entry(&mut self, payload: skiff_storage::Payload) -> Entry {
        self.next_index += 1;
        Entry {
            log_id: log_id(1, 1, self.next_index),
            payload,
        }
    }

    pub async fn apply(&mut self, cmd: Command) -> CommandResult {
        let entry = self.next_entry(EntryPayload::Normal(cmd));
        let mut results = self.store.state_machine.apply_entries(vec![entry]).unwrap();
        assert_eq!(results.len(), 1);
        results.pop().unwrap()
    }

    pub async fn txn(&mut self, req: TxnRequest) -> CommandResult {
        self.apply(Command::Txn(req)).await
    }

    pub async fn txn_ok(&mut self, req: TxnRequest) -> TxnResponse {
        match self.txn(req).await {
            CommandResult::Txn(resp) => resp,
            other => panic!("expected a txn response, got {other:?}"),
        }
    }

    pub async fn put(&mut self, key: &str, value: &str) -> Revision {
        self.txn_ok(TxnRequest::put(key, value)).await.revision
    }

    pub async fn delete(&mut self, range: KeyRange) -> TxnResponse {
        self.txn_ok(TxnRequest {
            compares: vec![],
            success: vec![Op::Delete {
                range,
                prev_kv: true,
            }],
            failure: vec![],
        })
        .await
    }

    pub async fn compact(&mut self, revision: Revision) -> CommandResult {
        self.apply(Command::Compact { revision }).await
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        let resp = self
            .store
            .kv
            .range(&RangeRequest {
                range: KeyRange::single(key),
                ..Default::default()
            })
            .unwrap();
        assert!(resp.kvs.len() <= 1);
        resp.kvs.into_iter().next()
    }

    pub fn get_at(&self, key: &str, revision: Revision) -> Option<KeyValue> {
        let req = RangeRequest {
            range: KeyRange::single(key),
            revision,
            ..Default::default()
        };
        let resp = self.store.kv.range(&req).unwrap();
        resp.kvs.into_iter().next()
    }

    pub fn keys_at(&self, range: KeyRange, revision: Revision) -> Vec<(String, String)> {
        let resp = self
            .store
            .kv
            .range(&RangeRequest {
                range,
                revision,
                ..Default::default()
            })
            .unwrap();
        resp.kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key).unwrap(),
                    String::from_utf8(kv.value).unwrap(),
                )
            })
            .collect()
    }
}

pub fn cmp(key: &str, op: CompareOp, target: CompareTarget) -> Compare {
    Compare {
        range: KeyRange::single(key),
        op,
        target,
    }
}

pub fn put_op(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        lease: 0,
        prev_kv: true,
    }
}

pub fn range_op(range: KeyRange, revision: Revision) -> Op {
    Op::Range(RangeRequest {
        range,
        revision,
        ..Default::default()
    })
}
