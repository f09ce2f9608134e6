//! Watchers on every member, recording each watch stream as a `WatchSession`. A stream that
//! breaks (member killed or stopped) is resumed from the revision after the last one covered,
//! as a new, `resumed` session (from the compacted revision when the server says the history it
//! still owed is compacted). When the run drains, each watcher asks for progress until its
//! stream covers the final revision, so the checker can tell a gap from a stream cut short.

use std::time::Duration;

use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::{WatchCreateRequest, WatchProgressRequest, WatchRequest};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Endpoints;
use crate::watch_checker::{WatchEvent, WatchItem, WatchSession};

#[derive(Clone, Debug)]
pub struct WatchPlan {
    pub name: String,
    pub member: usize,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub start_revision: i64,
    /// The first session already counts as resumed (a watch started from an old revision).
    pub resumed: bool,
    /// Hard stop, whatever happens.
    pub give_up_at: Instant,
}

/// Runs one watcher until `drain_to` is set and covered, or `give_up_at`.
pub async fn record_watcher(
    endpoints: Endpoints,
    plan: WatchPlan,
    mut drain_to: watch::Receiver<Option<i64>>,
) -> Vec<WatchSession> {
    let mut sessions = Vec::new();
    let mut next = plan.start_revision;
    let mut resumed = plan.resumed;
    for _attempt in 0..10_000 {
        if Instant::now() >= plan.give_up_at {
            break;
        }
        let mut session = WatchSession {
            watcher: plan.name.clone(),
            member: plan.member,
            start_revision: next,
            resumed,
            items: Vec::new(),
        };
        let done = run_session(&endpoints, &plan, &mut session, &mut drain_to).await;
        let covered = covered_to(&session);
        if !session.items.is_empty() || done {
            sessions.push(session);
        }
        if let Some(c) = covered {
            next = next.max(c + 1);
        }
        if done {
            break;
        }
        resumed = true;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sessions
}

fn covered_to(session: &WatchSession) -> Option<i64> {
    session
        .items
        .iter()
        .filter_map(|item| match item {
            WatchItem::Events { events } => events.iter().map(|e| e.revision).max(),
            WatchItem::Progress { revision } => Some(*revision),
            // Below the compaction nothing can be delivered any more: resume from it.
            WatchItem::Compacted { revision } => Some(*revision - 1),
        })
        .max()
}

/// One stream; true when the watcher is finished (drained or out of time).
async fn run_session(
    endpoints: &Endpoints,
    plan: &WatchPlan,
    session: &mut WatchSession,
    drain_to: &mut watch::Receiver<Option<i64>>,
) -> bool {
    let Ok(mut client) = endpoints.watch(plan.member) else {
        return true;
    };
    let (tx, rx) = mpsc::channel(8);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: plan.key.clone(),
            range_end: plan.range_end.clone(),
            start_revision: session.start_revision,
            progress_notify: true,
            ..Default::default()
        })),
    };
    if tx.send(create).await.is_err() {
        return false;
    }
    let opened = tokio::time::timeout(
        Duration::from_secs(2),
        client.watch(ReceiverStream::new(rx)),
    )
    .await;
    let Ok(Ok(response)) = opened else {
        return Instant::now() >= plan.give_up_at;
    };
    let mut stream = response.into_inner();
    let mut ask = tokio::time::interval(Duration::from_millis(300));
    loop {
        let target = *drain_to.borrow();
        if let Some(target) = target
            && covered_to(session).is_some_and(|c| c >= target)
        {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(plan.give_up_at) => return true,
            _ = ask.tick(), if target.is_some() => {
                let progress = WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                };
                if tx.send(progress).await.is_err() {
                    return false;
                }
            }
            changed = drain_to.changed() => {
                if changed.is_err() {
                    return true;
                }
            }
            message = stream.next() => {
                let Some(Ok(resp)) = message else { return false };
                if resp.canceled {
                    if resp.compact_revision > 0 {
                        session.items.push(WatchItem::Compacted { revision: resp.compact_revision });
                    }
                    return false;
                }
                if !resp.events.is_empty() {
                    let events = resp
                        .events
                        .iter()
                        .filter_map(|e| {
                            let kv = e.kv.as_ref()?;
                            Some(WatchEvent {
                                revision: kv.mod_revision,
                                key: String::from_utf8_lossy(&kv.key).into_owned(),
                                value: (e.r#type == 0)
                                    .then(|| String::from_utf8_lossy(&kv.value).into_owned()),
                            })
                        })
                        .collect();
                    session.items.push(WatchItem::Events { events });
                } else if !resp.created
                    && let Some(header) = resp.header
                {
                    session.items.push(WatchItem::Progress { revision: header.revision });
                }
            }
        }
    }
}
