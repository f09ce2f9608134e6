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

    /// An error out of a snapshot written through `envelope::write_wrapped`: the storage
    /// error it carries (the snapshot itself failed), else writing `path` failed.
    pub fn writing(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        match error.downcast::<StorageError>() {
            Ok(storage) => BackupError::Storage(storage),
            Err(error) => BackupError::io("writing", path, error),
        }
    }
}
