//! etcd's error vocabulary. Clients match on the exact gRPC code and message (clientv3 turns
//! known "etcdserver: ..." messages back into typed errors), so both are copied from etcd 3.4's
//! rpctypes and must not be reworded.

use tonic::{Code, Status};

use super::backend::BackendError;

/// Why the etcd API refused or failed a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A txn op with none of range/put/delete/txn set (etcd reuses "key not found" for it).
    #[error("etcdserver: key not found")]
    EmptyRequestOp,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// An enum field carried a number the API does not define.
    #[error("etcdserver: invalid {0}")]
    InvalidEnum(&'static str),
    /// skiff has no leases; only lease 0 ("no lease") is accepted.
    #[error("etcdserver: leases are not supported")]
    LeasesUnsupported,
    /// A valid etcd feature skiff does not implement.
    #[error("etcdserver: {0} is not supported")]
    Unsupported(&'static str),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl EtcdError {
    pub fn code(&self) -> Code {
        match self {
            EtcdError::EmptyKey
            | EtcdError::EmptyRequestOp
            | EtcdError::ValueProvided
            | EtcdError::LeaseProvided
            | EtcdError::TooManyOps
            | EtcdError::DuplicateKey
            | EtcdError::RequestTooLarge
            | EtcdError::InvalidSortOption
            | EtcdError::InvalidEnum(_)
            | EtcdError::LeasesUnsupported => Code::InvalidArgument,
            EtcdError::Unsupported(_) => Code::Unimplemented,
            EtcdError::Backend(err) => backend_code(err),
        }
    }

    /// The message a client sees: etcd's wording for every condition etcd also has.
    pub fn message(&self) -> String {
        match self {
            EtcdError::Backend(err) => backend_message(err),
            other => other.to_string(),
        }
    }
}

impl From<EtcdError> for Status {
    fn from(err: EtcdError) -> Status {
        Status::new(err.code(), err.message())
    }
}

impl From<BackendError> for Status {
    fn from(err: BackendError) -> Status {
        EtcdError::Backend(err).into()
    }
}

fn backend_code(err: &BackendError) -> Code {
    match err {
        BackendError::Compacted { .. } | BackendError::FutureRevision { .. } => Code::OutOfRange,
        BackendError::NoLeader | BackendError::Timeout => Code::Unavailable,
        BackendError::Rejected(_) => Code::InvalidArgument,
        // etcd answers errors it has no mapping for with Unknown.
        BackendError::Internal(_) => Code::Unknown,
    }
}

fn backend_message(err: &BackendError) -> String {
    match err {
        // The revisions stay out of the message: clientv3 matches these strings exactly.
        BackendError::Compacted { .. } => {
            "etcdserver: mvcc: required revision has been compacted".to_owned()
        }
        BackendError::FutureRevision { .. } => {
            "etcdserver: mvcc: required revision is a future revision".to_owned()
        }
        BackendError::NoLeader => "etcdserver: no leader".to_owned(),
        BackendError::Timeout => "etcdserver: request timed out".to_owned(),
        BackendError::Rejected(reason) => format!("etcdserver: {reason}"),
        BackendError::Internal(reason) => format!("etcdserver: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(err: impl Into<Status>) -> (Code, String) {
        let status = err.into();
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn backend_errors_map_to_etcd_statuses() {
        let cases = [
            (
                BackendError::Compacted { compacted: 7 },
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                BackendError::FutureRevision { current: 3 },
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                BackendError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                BackendError::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                BackendError::Rejected("unsupported operation: x".into()),
                Code::InvalidArgument,
                "etcdserver: unsupported operation: x",
            ),
            (
                BackendError::Internal("disk".into()),
                Code::Unknown,
                "etcdserver: disk",
            ),
        ];
        for (err, code, message) in cases {
            assert_eq!(status(err), (code, message.to_owned()));
        }
    }

    #[test]
    fn request_errors_map_to_etcd_statuses() {
        let cases = [
            (
                EtcdError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                EtcdError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                EtcdError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                EtcdError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                EtcdError::EmptyRequestOp,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                EtcdError::LeasesUnsupported,
                Code::InvalidArgument,
                "etcdserver: leases are not supported",
            ),
            (
                EtcdError::Unsupported("nested txn"),
                Code::Unimplemented,
                "etcdserver: nested txn is not supported",
            ),
        ];
        for (err, code, message) in cases {
            assert_eq!(status(err), (code, message.to_owned()));
        }
    }
}
