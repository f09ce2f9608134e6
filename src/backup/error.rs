//! Errors of the backup modules that are not the command edge.

use std::path::PathBuf;

use skiff_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl BackupError {
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BackupError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}
