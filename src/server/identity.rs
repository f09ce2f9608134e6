//! DATA/node.json: who this member is. Its presence means "already part of a cluster", which is
//! how a restarted node rejoins by itself without --init or --join.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skiff_storage::{NodeId, NodeInfo};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub name: String,
    pub raft_addr: String,
    pub api_addr: String,
    pub client_addr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid node identity: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl NodeIdentity {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("node.json")
    }

    pub fn load(data_dir: &Path) -> Result<Option<Self>, IdentityError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| IdentityError::Parse { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::Read { path, source }),
        }
    }

    pub fn node_info(&self) -> NodeInfo {
        NodeInfo {
            name: self.name.clone(),
            raft_addr: self.raft_addr.clone(),
            api_addr: self.api_addr.clone(),
            client_addr: self.client_addr.clone(),
        }
    }
}
