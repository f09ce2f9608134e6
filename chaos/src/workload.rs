//! The etcd-protocol KV workload: concurrent clients doing get / put / compare-and-swap on a
//! small key set, spread over every member, each operation recorded with invoke and return
//! times. Values are unique ("c<client>-<seq>") so a read names the write it saw.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::request_op::Request;
use skiff_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::client::{Endpoints, is_definite_failure};
use crate::history::{NEVER, OpKind, Operation, Outcome, Recorder};

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub clients: usize,
    pub keys: usize,
    /// Every key starts with this prefix (the watchers watch it).
    pub prefix: String,
    pub op_timeout: Duration,
    pub seed: u64,
}

impl WorkloadConfig {
    pub fn key(&self, n: usize) -> String {
        format!("{}k{n}", self.prefix)
    }
}

/// One client, pinned to `member`, until `until`. Returns how many operations it issued.
pub async fn run_client(
    id: usize,
    member: usize,
    endpoints: Endpoints,
    recorder: Recorder,
    config: WorkloadConfig,
    until: Instant,
) -> usize {
    let Ok(mut kv) = endpoints.kv(member) else {
        return 0;
    };
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_mul(1000).wrapping_add(id as u64));
    // What this client last saw per key: the expected value of its next swap.
    let mut last_seen: HashMap<String, Option<String>> = HashMap::new();
    let mut issued = 0usize;
    for seq in 0..10_000_000usize {
        if Instant::now() >= until {
            break;
        }
        let key = config.key(rng.random_range(0..config.keys.max(1)));
        let roll = rng.random_range(0..100);
        let kind = if roll < 40 {
            OpKind::Get
        } else if roll < 70 {
            OpKind::Put {
                value: format!("c{id}-{seq}"),
            }
        } else {
            OpKind::Cas {
                expected: last_seen.get(&key).cloned().flatten(),
                value: format!("c{id}-{seq}"),
            }
        };
        let invoke_ns = recorder.now_ns();
        let result = tokio::time::timeout(config.op_timeout, execute(&mut kv, &key, &kind)).await;
        let return_ns = recorder.now_ns();
        let result = match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(status)) if is_definite_failure(&status) => Outcome::Failed {
                error: status.message().to_string(),
            },
            Ok(Err(status)) => Outcome::Unknown {
                error: format!("{:?}: {}", status.code(), status.message()),
            },
            Err(_) => Outcome::Unknown {
                error: "client timeout".to_string(),
            },
        };
        match (&kind, &result) {
            (_, Outcome::Read { value, .. }) => {
                last_seen.insert(key.clone(), value.clone());
            }
            (OpKind::Put { value }, Outcome::Written { .. })
            | (
                OpKind::Cas { value, .. },
                Outcome::Swapped {
                    succeeded: true, ..
                },
            ) => {
                last_seen.insert(key.clone(), Some(value.clone()));
            }
            _ => {}
        }
        let failed = matches!(result, Outcome::Failed { .. } | Outcome::Unknown { .. });
        let return_ns = if matches!(result, Outcome::Unknown { .. }) {
            NEVER
        } else {
            return_ns
        };
        recorder.record(Operation {
            id: 0,
            client: id,
            member,
            key,
            kind,
            invoke_ns,
            return_ns,
            result,
        });
        issued += 1;
        if failed {
            // Back off a little so a dead member does not turn into a flood of failures.
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await;
        }
    }
    issued
}

async fn execute(
    kv: &mut KvClient<Channel>,
    key: &str,
    kind: &OpKind,
) -> Result<Outcome, tonic::Status> {
    match kind {
        OpKind::Get => {
            let reply = kv
                .range(RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let revision = reply.header.map_or(0, |h| h.revision);
            let found = reply.kvs.first();
            Ok(Outcome::Read {
                value: found.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                mod_revision: found.map_or(0, |kv| kv.mod_revision),
                revision,
            })
        }
        OpKind::Put { value } => {
            let reply = kv
                .put(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok(Outcome::Written {
                revision: reply.header.map_or(0, |h| h.revision),
            })
        }
        OpKind::Cas { expected, value } => {
            let compare = match expected {
                Some(expected) => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: key.as_bytes().to_vec(),
                    target_union: Some(TargetUnion::Value(expected.as_bytes().to_vec())),
                    range_end: Vec::new(),
                },
                None => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Version as i32,
                    key: key.as_bytes().to_vec(),
                    target_union: Some(TargetUnion::Version(0)),
                    range_end: Vec::new(),
                },
            };
            let put = RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })),
            };
            let reply = kv
                .txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![put],
                    failure: Vec::new(),
                })
                .await?
                .into_inner();
            Ok(Outcome::Swapped {
                succeeded: reply.succeeded,
                revision: reply.header.map_or(0, |h| h.revision),
            })
        }
    }
}
