//! openraft's storage conformance suite against the real RocksDB-backed stores.

use openraft::testing::{StoreBuilder, Suite};
use skiff_storage::{
    LogStore, RaftStorageError, StateMachineStore, Store, StoreOptions, TypeConfig,
};
use tempfile::TempDir;

struct RocksStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), RaftStorageError> {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(dir.path(), StoreOptions::default()).expect("open store");
        Ok((dir, store.log, store.state_machine))
    }
}

#[test]
fn openraft_suite_passes() {
    Suite::test_all(RocksStoreBuilder).expect("openraft storage conformance suite");
}
