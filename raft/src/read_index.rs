//! Read index batching: one leadership confirmation serves every read that arrived before it.
//!
//! Why: each read index costs the leader a heartbeat round to a quorum (and a follower an RPC
//! to the leader). Under concurrent reads that is the bottleneck, yet a read index obtained
//! *after* a read arrived is valid for that read. So reads queue here; one task at a time asks
//! for a read index and answers everybody who queued before its request went out. Reads that
//! arrive while a request is in flight wait for the next one (the in-flight one may predate them).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::NodeError;

type Reply = Result<Option<u64>, NodeError>;

#[derive(Default)]
struct Queue {
    in_flight: bool,
    waiters: Vec<oneshot::Sender<Reply>>,
}

#[derive(Clone, Default)]
pub(crate) struct ReadIndexBatcher {
    queue: Arc<Mutex<Queue>>,
}

impl ReadIndexBatcher {
    /// Returns a read index valid for a read that started before this call.
    /// `fetch` asks the leader for one; it runs in a spawned task so a caller that gives up
    /// never strands the others.
    pub(crate) async fn read_index<F, Fut>(&self, fetch: F) -> Reply
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start_worker = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiters.push(tx);
            !std::mem::replace(&mut queue.in_flight, true)
        };
        if start_worker {
            let queue = self.queue.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                        if q.waiters.is_empty() {
                            q.in_flight = false;
                            break;
                        }
                        std::mem::take(&mut q.waiters)
                    };
                    let reply = fetch().await;
                    for waiter in batch {
                        let _ = waiter.send(clone_reply(&reply));
                    }
                }
            });
        }
        rx.await.unwrap_or(Err(NodeError::Timeout))
    }
}

fn clone_reply(reply: &Reply) -> Reply {
    match reply {
        Ok(index) => Ok(*index),
        Err(NodeError::NoLeader) => Err(NodeError::NoLeader),
        Err(NodeError::Timeout) => Err(NodeError::Timeout),
        Err(other) => Err(NodeError::Fatal(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_reads_share_a_fetch_and_later_reads_get_a_newer_one() {
        let batcher = ReadIndexBatcher::default();
        let fetches = Arc::new(AtomicU64::new(0));
        let make_fetch = |fetches: Arc<AtomicU64>| {
            move || {
                let fetches = fetches.clone();
                async move {
                    let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(Some(n))
                }
            }
        };
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let batcher = batcher.clone();
            let fetch = make_fetch(fetches.clone());
            tasks.push(tokio::spawn(async move { batcher.read_index(fetch).await }));
        }
        let mut indexes = Vec::new();
        for t in tasks {
            indexes.push(t.await.expect("join").expect("read index"));
        }
        let total = fetches.load(Ordering::SeqCst);
        assert!(total <= 3, "50 concurrent reads needed {total} fetches");
        // A read issued after all those completed must see a fresh fetch.
        let later = batcher
            .read_index(make_fetch(fetches.clone()))
            .await
            .expect("later");
        assert!(
            later > indexes.into_iter().max().flatten(),
            "later read got a newer read index"
        );
    }
}
