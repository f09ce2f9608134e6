//! The recorded client history: every operation's client, key, kind, invoke and return time and
//! outcome. Times are nanoseconds since the run started (one monotonic clock for all clients).
//! An operation whose outcome is unknown (timeout, lost connection) never returns: its return
//! time is `NEVER`, so the checker may place it anywhere after its invocation, or nowhere.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Return time of an operation whose outcome is unknown.
pub const NEVER: u64 = u64::MAX;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// A linearizable read of one key.
    Get,
    /// An unconditional write of a unique value.
    Put { value: String },
    /// Write `value` if the key currently holds `expected` (`None`: the key is absent).
    Cas {
        expected: Option<String>,
        value: String,
    },
}

impl OpKind {
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put { .. } => "put",
            OpKind::Cas { .. } => "cas",
        }
    }

    /// The value this operation writes, if it writes one.
    pub fn written(&self) -> Option<&str> {
        match self {
            OpKind::Get => None,
            OpKind::Put { value } | OpKind::Cas { value, .. } => Some(value),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A get returned: the value seen (`None`: absent) and its mod revision.
    Read {
        value: Option<String>,
        mod_revision: i64,
        revision: i64,
    },
    /// A put was acknowledged at `revision`.
    Written { revision: i64 },
    /// A compare-and-swap returned.
    Swapped { succeeded: bool, revision: i64 },
    /// Definitely did not take effect (e.g. the connection was refused).
    Failed { error: String },
    /// May or may not have taken effect (timeout, connection lost mid-request).
    Unknown { error: String },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Read { .. } | Outcome::Written { .. } | Outcome::Swapped { .. } => "ok",
            Outcome::Failed { .. } => "fail",
            Outcome::Unknown { .. } => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: usize,
    pub client: usize,
    /// Index of the member the client talked to.
    pub member: usize,
    pub key: String,
    #[serde(flatten)]
    pub kind: OpKind,
    pub invoke_ns: u64,
    /// `NEVER` for an unknown outcome.
    pub return_ns: u64,
    pub result: Outcome,
}

impl Operation {
    /// Whether this operation changes the register, or may have.
    pub fn may_write(&self) -> bool {
        match (&self.kind, &self.result) {
            (OpKind::Get, _) => false,
            (_, Outcome::Failed { .. }) => false,
            (OpKind::Cas { .. }, Outcome::Swapped { succeeded, .. }) => *succeeded,
            _ => true,
        }
    }

    /// The revision and value of a write the store acknowledged (a put, or a CAS that swapped).
    pub fn acknowledged_write(&self) -> Option<(i64, &str)> {
        let revision = match (&self.kind, &self.result) {
            (OpKind::Put { .. }, Outcome::Written { revision }) => *revision,
            (
                OpKind::Cas { .. },
                Outcome::Swapped {
                    succeeded: true,
                    revision,
                },
            ) => *revision,
            _ => return None,
        };
        self.kind.written().map(|value| (revision, value))
    }
}

/// All operations of a run, shared by the workload's clients while it runs.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Operation>>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records a finished (or given-up) operation; the id is assigned here.
    pub fn record(&self, mut op: Operation) {
        let mut ops = match self.ops.lock() {
            Ok(ops) => ops,
            Err(poisoned) => poisoned.into_inner(),
        };
        op.id = ops.len();
        ops.push(op);
    }

    pub fn snapshot(&self) -> History {
        let ops = match self.ops.lock() {
            Ok(ops) => ops.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        History { ops }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Operation>,
}

impl History {
    /// Registers are independent, so the history is checked one key at a time.
    pub fn by_key(&self) -> BTreeMap<String, Vec<Operation>> {
        let mut keys: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
        for op in &self.ops {
            keys.entry(op.key.clone()).or_default().push(op.clone());
        }
        keys
    }

    /// Counts per "kind/outcome", e.g. "put/ok".
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for op in &self.ops {
            *counts
                .entry(format!("{}/{}", op.kind.name(), op.result.label()))
                .or_insert(0) += 1;
        }
        counts
    }
}
