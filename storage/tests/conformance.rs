//! openraft's storage conformance suite against the real RocksDB-backed stores.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use skiff_storage::{LogStore, StateMachineStore, Store, StoreOptions, TypeConfig};
use tempfile::TempDir;

struct RocksStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(dir.path(), StoreOptions::default()).expect("open store");
        Ok((dir, store.log, store.state_machine))
    }
}

#[tokio::test]
async fn openraft_suite_passes() {
    Suite::test_all(RocksStoreBuilder)
        .await
        .expect("openraft storage conformance suite");
}
