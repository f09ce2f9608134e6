//! Errors of the chaos crate. Checker verdicts are values, not errors: an error here means the
//! run itself could not be carried out.

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("unknown scenario {0:?} (see `skiff chaos list`)")]
    UnknownScenario(String),
    #[error("member {0} does not exist")]
    NoSuchMember(usize),
    #[error("process control of member {member}: {reason}")]
    Process { member: usize, reason: String },
    #[error("connecting to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("membership of member {member}: {reason}")]
    Membership { member: usize, reason: String },
    #[error("delay relay: {0}")]
    Relay(String),
    #[error("network namespaces: {0}")]
    Netns(String),
    #[error("scenario {0} needs network namespaces: run with --netns (as root)")]
    NeedsNetns(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("the cluster did not {what} within {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("writing the report to {path}: {source}")]
    Report {
        path: String,
        source: std::io::Error,
    },
    #[error("encoding the report: {0}")]
    Encode(#[from] serde_json::Error),
}
