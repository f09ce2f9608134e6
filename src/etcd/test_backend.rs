//! Tests only: a `KvBackend` over a real `skiff_storage::Store` in a temporary directory, without
//! raft. Each write becomes the next log entry and is applied to the state machine directly, in
//! order, exactly as openraft would after commit; reads and watches use the store's own handles.

use std::sync::Arc;
use std::time::Duration;

use openraft::EntryPayload;
use skiff_storage::watch::{WatchError, WatchRequest, Watcher};
use skiff_storage::{
    Command, CommandResult, CommittedLeaderId, Entry, KvError, KvView, LogId, LogStore,
    RangeRequest, RangeResponse, Rejection, Revision, StateMachineStore, Store, StoreOptions,
    TxnRequest, TxnResponse, WatchHub,
};
use tokio::sync::Mutex;

use super::backend::{BackendError, HeaderInfo, KvBackend, MemberInfo, MemberStatus};

#[derive(Clone)]
pub struct StoreBackend {
    inner: Arc<Inner>,
}

struct Inner {
    state_machine: Mutex<Applier>,
    kv: KvView,
    hub: WatchHub,
    _log: LogStore,
    _dir: tempfile::TempDir,
}

struct Applier {
    state_machine: StateMachineStore,
    last_index: u64,
}

impl StoreBackend {
    pub fn open() -> StoreBackend {
        StoreBackend::with_options(StoreOptions {
            progress_interval: Duration::from_millis(200),
            ..StoreOptions::default()
        })
    }

    pub fn with_options(opts: StoreOptions) -> StoreBackend {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), opts).expect("open store");
        StoreBackend {
            inner: Arc::new(Inner {
                state_machine: Mutex::new(Applier {
                    state_machine: store.state_machine,
                    last_index: 0,
                }),
                kv: store.kv,
                hub: store.watch,
                _log: store.log,
                _dir: dir,
            }),
        }
    }

    /// Closes every watcher as the store does when it shuts down.
    pub fn shutdown_watches(&self) {
        self.inner.hub.shutdown();
    }

    pub fn watcher_count(&self) -> usize {
        self.inner.hub.watcher_count()
    }

    async fn apply(&self, command: Command) -> Result<CommandResult, BackendError> {
        let mut applier = self.inner.state_machine.lock().await;
        applier.last_index += 1;
        let entry = Entry {
            log_id: LogId::new(
                CommittedLeaderId {
                    term: 1,
                    node_id: 1,
                },
                applier.last_index,
            ),
            payload: EntryPayload::Normal(command),
        };
        let mut results = applier
            .state_machine
            .apply_entries([entry])
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        results
            .pop()
            .ok_or_else(|| BackendError::Internal("apply returned no result".into()))
    }
}

fn rejection(r: Rejection) -> BackendError {
    match r {
        Rejection::Compacted { compacted } => BackendError::Compacted { compacted },
        Rejection::FutureRevision { current } => BackendError::FutureRevision { current },
        Rejection::Unsupported(what) => BackendError::Rejected(what),
    }
}

impl KvBackend for StoreBackend {
    async fn range(
        &self,
        req: RangeRequest,
        _serializable: bool,
    ) -> Result<RangeResponse, BackendError> {
        self.inner.kv.range(&req).map_err(|e| match e {
            KvError::Compacted { compacted } => BackendError::Compacted { compacted },
            KvError::FutureRevision { current } => BackendError::FutureRevision { current },
            KvError::Storage(msg) => BackendError::Internal(msg),
        })
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, BackendError> {
        match self.apply(Command::Txn(req)).await? {
            CommandResult::Txn(resp) => Ok(resp),
            CommandResult::Rejected(r) => Err(rejection(r)),
            other => Err(BackendError::Internal(format!(
                "unexpected result {other:?}"
            ))),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<Revision, BackendError> {
        match self.apply(Command::Compact { revision }).await? {
            CommandResult::Compacted { revision } => Ok(revision),
            CommandResult::Rejected(r) => Err(rejection(r)),
            other => Err(BackendError::Internal(format!(
                "unexpected result {other:?}"
            ))),
        }
    }

    fn watch(&self, req: WatchRequest) -> Result<Watcher, BackendError> {
        self.inner.hub.watch(req).map_err(|e| match e {
            WatchError::Compacted { compacted } => BackendError::Compacted { compacted },
            other => BackendError::Internal(other.to_string()),
        })
    }

    async fn status(&self) -> Result<MemberStatus, BackendError> {
        let index = self.inner.kv.last_applied().map_or(0, |id| id.index);
        Ok(MemberStatus {
            header: self.header(),
            version: "3.4.0".into(),
            db_size: i64::try_from(self.inner.kv.db_size_bytes()).unwrap_or(i64::MAX),
            leader: 1,
            raft_index: index,
            raft_applied_index: index,
            raft_term: 1,
            is_learner: false,
        })
    }

    fn members(&self) -> Vec<MemberInfo> {
        vec![MemberInfo {
            id: 1,
            name: "test".into(),
            peer_urls: vec!["https://127.0.0.1:2380".into()],
            client_urls: vec!["https://127.0.0.1:2379".into()],
            is_learner: false,
        }]
    }

    fn header(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: 7,
            member_id: 1,
            revision: self.inner.kv.revision(),
            raft_term: 1,
        }
    }
}
