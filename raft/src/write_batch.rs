//! Group proposals: concurrent writes share one raft entry.
//!
//! Why: every raft entry costs the same fixed work whatever it carries — a trip through
//! openraft's core loop, a log append, an AppendEntries to each follower, a forward RPC when this
//! member follows, and an apply call with its own meta update. Under concurrent writes that
//! per-entry cost, not the fsync (already grouped by the log writer), is what limits throughput.
//! So writes queue here; at most `in_flight_limit` proposals are outstanding, and each takes
//! everything queued when it starts (bounded by count and bytes) as one `Command::Batch`. A
//! write that finds a free slot goes out at once, alone, so an idle cluster adds no latency;
//! under load the queue fills while proposals are in flight, and batches grow with the load.
//!
//! The state machine applies a batch command by command, each with its own revision and
//! events, exactly as if each had its own entry, so nothing above this module can tell.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use skiff_storage::{Command, CommandResult, Op};
use tokio::sync::oneshot;

use crate::error::NodeError;

/// Proposals outstanding at once on the leader. Two keep the pipeline busy (one is replicated
/// while the next fills) without splitting the queue into small batches.
const LEADER_IN_FLIGHT: usize = 2;
/// On a follower, whose proposals are forwarded to the leader: one. The forward's round trip
/// is longer, so the queue behind it grows into a bigger batch, and fewer, fuller proposals
/// reach the leader. Measured with `skiff bench store` (64 clients over 3 members, six
/// interleaved runs each): median 7353 puts/s against 6266 with two; four and eight were
/// worse than two.
const FOLLOWER_IN_FLIGHT: usize = 1;

/// How many proposals a member keeps outstanding, by whether it leads.
pub(crate) fn in_flight_limit(leading: bool) -> usize {
    if leading {
        LEADER_IN_FLIGHT
    } else {
        FOLLOWER_IN_FLIGHT
    }
}
/// Commands per batch entry: bounds one apply call and one entry's decode.
const MAX_COMMANDS: usize = 256;
/// Approximate payload bytes per batch entry; a single larger command goes alone.
const MAX_BYTES: usize = 1024 * 1024;

type Reply = Result<CommandResult, NodeError>;

struct Waiting {
    command: Command,
    bytes: usize,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    in_flight: usize,
    waiting: std::collections::VecDeque<Waiting>,
}

impl Queue {
    /// The next proposal's commands: the head of the queue, as many as fit.
    fn take_batch(&mut self) -> Vec<Waiting> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while let Some(next) = self.waiting.front() {
            let fits = batch.is_empty()
                || (batch.len() < MAX_COMMANDS && bytes.saturating_add(next.bytes) <= MAX_BYTES);
            if !fits {
                break;
            }
            bytes = bytes.saturating_add(next.bytes);
            if let Some(item) = self.waiting.pop_front() {
                batch.push(item);
            }
        }
        batch
    }
}

#[derive(Clone, Default)]
pub(crate) struct WriteBatcher {
    queue: Arc<Mutex<Queue>>,
}

impl WriteBatcher {
    /// Proposes `command` (alone or batched with others) through `propose`, which sends one
    /// command — plain or `Command::Batch` — to the leader and returns its result; at most
    /// `in_flight` proposals are outstanding. Proposals run in spawned tasks, so a caller that
    /// gives up never strands the others.
    pub(crate) async fn write<F, Fut>(
        &self,
        command: Command,
        in_flight: usize,
        propose: F,
    ) -> Reply
    where
        F: Fn(Command) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send,
    {
        let (reply, answer) = oneshot::channel();
        let bytes = approximate_size(&command);
        let start_worker = {
            let mut queue = self.lock();
            queue.waiting.push_back(Waiting {
                command,
                bytes,
                reply,
            });
            let start = queue.in_flight < in_flight.max(1);
            if start {
                queue.in_flight += 1;
            }
            start
        };
        if start_worker {
            let queue = self.queue.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
                        let batch = q.take_batch();
                        if batch.is_empty() {
                            q.in_flight = q.in_flight.saturating_sub(1);
                            break;
                        }
                        batch
                    };
                    propose_batch(batch, &propose).await;
                }
            });
        }
        answer.await.unwrap_or(Err(NodeError::Timeout))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue holds plain data that stays valid after any panic.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends one proposal for `batch` and answers each of its writers.
async fn propose_batch<F, Fut>(mut batch: Vec<Waiting>, propose: &F)
where
    F: Fn(Command) -> Fut,
    Fut: Future<Output = Reply>,
{
    if batch.len() == 1
        && let Some(single) = batch.pop()
    {
        let _ = single.reply.send(propose(single.command).await);
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<Reply>>) =
        batch.into_iter().map(|w| (w.command, w.reply)).unzip();
    let count = commands.len();
    match propose(Command::Batch(commands)).await {
        Ok(CommandResult::Batch(results)) if results.len() == count => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Ok(other) => {
            let message = format!("a batch of {count} writes got the result {other:?}");
            for reply in replies {
                let _ = reply.send(Err(NodeError::Fatal(message.clone())));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(same_error(&error)));
            }
        }
    }
}

/// Every writer of a failed batch gets the batch's error.
fn same_error(error: &NodeError) -> NodeError {
    match error {
        NodeError::NoLeader => NodeError::NoLeader,
        NodeError::Timeout => NodeError::Timeout,
        NodeError::Compacted { compacted } => NodeError::Compacted {
            compacted: *compacted,
        },
        NodeError::FutureRevision { current } => NodeError::FutureRevision { current: *current },
        NodeError::Rejected(message) => NodeError::Rejected(message.clone()),
        NodeError::Membership(message) => NodeError::Membership(message.clone()),
        NodeError::Fatal(message) => NodeError::Fatal(message.clone()),
        NodeError::Storage(message) => NodeError::Storage(message.clone()),
    }
}

/// Key and value bytes a command carries: what a batch's size limit is about.
fn approximate_size(command: &Command) -> usize {
    let op_size = |op: &Op| match op {
        Op::Put { key, value, .. } => key.len() + value.len(),
        Op::Delete { range, .. } => range.key.len() + range.range_end.len(),
        Op::Range(r) => r.range.key.len() + r.range.range_end.len(),
    };
    match command {
        Command::Txn(txn) => txn
            .success
            .iter()
            .chain(txn.failure.iter())
            .map(op_size)
            .sum::<usize>()
            .saturating_add(64 * txn.compares.len()),
        Command::Compact { .. } => 16,
        Command::Batch(commands) => commands.iter().map(approximate_size).sum(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use skiff_storage::{TxnRequest, TxnResponse};

    use super::*;

    fn put(n: i64) -> Command {
        Command::Txn(TxnRequest::put(format!("/k/{n}"), "v"))
    }

    /// A leader's answer to `command`: `one`'s result for it, or for each command of a batch
    /// in order.
    fn answer_each(
        command: &Command,
        mut one: impl FnMut(&Command) -> CommandResult,
    ) -> CommandResult {
        match command {
            Command::Batch(commands) => {
                CommandResult::Batch(commands.iter().map(&mut one).collect())
            }
            single => one(single),
        }
    }

    /// A fake leader: applies each command of a proposal in order, giving command i of the
    /// whole sequence revision i; counts proposals.
    fn fake_leader(
        proposals: Arc<AtomicUsize>,
        next_revision: Arc<AtomicUsize>,
    ) -> impl Fn(Command) -> futures::future::BoxFuture<'static, Reply> + Send + Sync + 'static
    {
        move |command| {
            let proposals = proposals.clone();
            let next_revision = next_revision.clone();
            Box::pin(async move {
                proposals.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                let one = |_: &Command| {
                    let revision = next_revision.fetch_add(1, Ordering::SeqCst) as i64 + 1;
                    CommandResult::Txn(TxnResponse {
                        succeeded: true,
                        responses: Vec::new(),
                        revision,
                    })
                };
                Ok(answer_each(&command, one))
            })
        }
    }

    #[tokio::test]
    async fn concurrent_writes_share_proposals_and_each_gets_its_own_result() {
        let batcher = WriteBatcher::default();
        let proposals = Arc::new(AtomicUsize::new(0));
        let revisions = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for n in 0..200 {
            let batcher = batcher.clone();
            let propose = fake_leader(proposals.clone(), revisions.clone());
            tasks.push(tokio::spawn(async move {
                batcher.write(put(n), LEADER_IN_FLIGHT, propose).await
            }));
        }
        let mut seen = std::collections::BTreeSet::new();
        for task in tasks {
            match task.await.expect("join").expect("write") {
                CommandResult::Txn(t) => assert!(seen.insert(t.revision), "revision given twice"),
                other => panic!("a write got {other:?}"),
            }
        }
        assert_eq!(seen.len(), 200);
        assert_eq!(seen.iter().next_back().copied(), Some(200));
        let made = proposals.load(Ordering::SeqCst);
        assert!(made <= 20, "200 concurrent writes took {made} proposals");
    }

    #[tokio::test]
    async fn a_lone_write_is_proposed_at_once_as_itself() {
        let batcher = WriteBatcher::default();
        let got = batcher
            .write(put(1), LEADER_IN_FLIGHT, |command| async move {
                assert!(
                    matches!(command, Command::Txn(_)),
                    "not wrapped: {command:?}"
                );
                Ok(CommandResult::Txn(TxnResponse::default()))
            })
            .await;
        assert!(matches!(got, Ok(CommandResult::Txn(_))));
    }

    #[tokio::test]
    async fn a_failed_proposal_fails_every_write_in_it() {
        let batcher = WriteBatcher::default();
        let mut tasks = Vec::new();
        for n in 0..20 {
            let batcher = batcher.clone();
            tasks.push(tokio::spawn(async move {
                batcher
                    .write(put(n), LEADER_IN_FLIGHT, |_| async {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Err(NodeError::NoLeader)
                    })
                    .await
            }));
        }
        for task in tasks {
            assert!(matches!(
                task.await.expect("join"),
                Err(NodeError::NoLeader)
            ));
        }
    }

    #[test]
    fn batches_respect_the_count_and_byte_limits() {
        fn push(queue: &mut Queue, bytes: usize) {
            let (reply, _answer) = oneshot::channel();
            queue.waiting.push_back(Waiting {
                command: put(0),
                bytes,
                reply,
            });
        }
        let mut queue = Queue::default();
        for _ in 0..300 {
            push(&mut queue, 10);
        }
        assert_eq!(queue.take_batch().len(), MAX_COMMANDS);
        assert_eq!(queue.take_batch().len(), 300 - MAX_COMMANDS);
        push(&mut queue, MAX_BYTES * 2);
        push(&mut queue, 10);
        assert_eq!(queue.take_batch().len(), 1, "an oversized write goes alone");
        assert_eq!(queue.take_batch().len(), 1);
        assert!(queue.take_batch().is_empty());
    }

    #[tokio::test]
    async fn a_follower_keeps_one_proposal_outstanding() {
        assert_eq!(in_flight_limit(false), 1);
        assert_eq!(in_flight_limit(true), LEADER_IN_FLIGHT);
        let batcher = WriteBatcher::default();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for n in 0..50 {
            let batcher = batcher.clone();
            let (outstanding, most) = (outstanding.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                batcher
                    .write(put(n), in_flight_limit(false), move |command| {
                        let (outstanding, most) = (outstanding.clone(), most.clone());
                        async move {
                            let now = outstanding.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            outstanding.fetch_sub(1, Ordering::SeqCst);
                            Ok(answer_each(&command, |_| {
                                CommandResult::Txn(TxnResponse::default())
                            }))
                        }
                    })
                    .await
            }));
        }
        for task in tasks {
            assert!(task.await.expect("join").is_ok());
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }
}
