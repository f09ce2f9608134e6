//! A closed-loop load generator over the etcd v3 protocol: C concurrent clients, each waiting
//! for its reply before the next request; latencies recorded per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::Channel;

#[derive(Clone, Copy, Debug)]
pub enum Workload {
    Put,
    LinearizableGet,
    /// Served from the member's local state, no read index (etcd's --consistency=s).
    SerializableGet,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadResult {
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `total` requests spread over `channels` (one per member, round robin by client).
pub async fn run(
    channels: &[Channel],
    workload: Workload,
    clients: usize,
    total: u64,
    value_size: usize,
    keys: u64,
) -> LoadResult {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = KvClient::new(channels[c % channels.len()].clone());
        let next = next.clone();
        let errors = errors.clone();
        let value = vec![b'v'; value_size];
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let key = format!("/bench/{:08}", n % keys.max(1)).into_bytes();
                let begin = Instant::now();
                let ok = match workload {
                    Workload::Put => client
                        .put(PutRequest {
                            key,
                            value: value.clone(),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    Workload::LinearizableGet => client
                        .range(RangeRequest {
                            key,
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    Workload::SerializableGet => client
                        .range(RangeRequest {
                            key,
                            serializable: true,
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                };
                if ok {
                    latencies.push(begin.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for task in tasks {
        if let Ok(mut l) = task.await {
            latencies.append(&mut l);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[idx].as_secs_f64() * 1000.0
    };
    let ops = latencies.len() as u64;
    LoadResult {
        ops,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        per_second: ops as f64 / seconds.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}
