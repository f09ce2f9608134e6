//! Leader failover, measured from a leader fault to the first acknowledged write and split in
//! two: until a survivor names a new leader (detection plus election, with the number of terms
//! it took: more than one means split or refused votes), and from there to the first write
//! (the new leader's first commit plus the client path to it).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::PutRequest;
use tokio::time::Instant;

use crate::client::{Endpoints, RaftStatus};
use crate::report::percentile;

/// Give up on a failover after this long (reported as a run error).
const GIVE_UP: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverSample {
    /// Fault -> first acknowledged write.
    pub write_ms: u64,
    /// Fault -> a survivor names a new leader in a later term (None: not seen by the poller).
    pub elected_ms: Option<u64>,
    /// Terms between the old leader's and the new one's (1: a single election round).
    pub terms: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FailoverSummary {
    pub samples: Vec<FailoverSample>,
    pub write_p50_ms: Option<u64>,
    pub write_p99_ms: Option<u64>,
    pub elected_p50_ms: Option<u64>,
    pub elected_p99_ms: Option<u64>,
    /// After the election: new leader named -> first acknowledged write.
    pub commit_p50_ms: Option<u64>,
    pub commit_p99_ms: Option<u64>,
    /// Samples whose election took more than one term.
    pub multi_term_elections: usize,
}

impl FailoverSummary {
    pub fn new(mut samples: Vec<FailoverSample>) -> FailoverSummary {
        samples.sort_by_key(|s| s.write_ms);
        let sorted = |f: &dyn Fn(&FailoverSample) -> Option<u64>| {
            let mut v: Vec<u64> = samples.iter().filter_map(f).collect();
            v.sort_unstable();
            v
        };
        let write = sorted(&|s| Some(s.write_ms));
        let elected = sorted(&|s| s.elected_ms);
        let commit = sorted(&|s| s.elected_ms.map(|e| s.write_ms.saturating_sub(e)));
        FailoverSummary {
            write_p50_ms: percentile(&write, 50.0),
            write_p99_ms: percentile(&write, 99.0),
            elected_p50_ms: percentile(&elected, 50.0),
            elected_p99_ms: percentile(&elected, 99.0),
            commit_p50_ms: percentile(&commit, 50.0),
            commit_p99_ms: percentile(&commit, 99.0),
            multi_term_elections: samples
                .iter()
                .filter(|s| s.terms.is_some_and(|t| t > 1))
                .count(),
            samples,
        }
    }
}

/// Measures one failover. `old` is the victim's status just before the fault (its id and term).
pub async fn failover_probe(
    endpoints: Endpoints,
    victim: usize,
    old: Option<RaftStatus>,
    n: usize,
    salt: u32,
) -> Option<FailoverSample> {
    let started = Instant::now();
    let survivors: Vec<usize> = (0..endpoints.len()).filter(|m| *m != victim).collect();
    let election = old.map(|old| {
        tokio::spawn(watch_election(
            endpoints.clone(),
            survivors.clone(),
            old,
            started,
        ))
    });
    let write_ms = first_write(&endpoints, &survivors, n, salt, started).await;
    let (elected_ms, terms) = match election {
        Some(task) => match tokio::time::timeout(Duration::from_secs(2), task).await {
            Ok(Ok(Some((ms, terms)))) => (Some(ms), Some(terms)),
            Ok(_) => (None, None),
            Err(_) => (None, None),
        },
        None => (None, None),
    };
    Some(FailoverSample {
        write_ms: write_ms?,
        elected_ms,
        terms,
    })
}

/// Polls the survivors until one names a leader other than the old one in a later term.
async fn watch_election(
    endpoints: Endpoints,
    survivors: Vec<usize>,
    old: RaftStatus,
    started: Instant,
) -> Option<(u64, u64)> {
    while started.elapsed() < GIVE_UP {
        for m in &survivors {
            let Some(s) = endpoints.raft_status(*m, Duration::from_millis(300)).await else {
                continue;
            };
            if s.leader != 0 && s.leader != old.id && s.term > old.term {
                return Some((started.elapsed().as_millis() as u64, s.term - old.term));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Writes to the surviving members until one write is acknowledged; milliseconds from the fault.
/// A new attempt starts every 100 ms (round-robin over the survivors) while earlier ones are
/// still waiting, so the time measured is the cluster's, not a client timeout's.
async fn first_write(
    endpoints: &Endpoints,
    survivors: &[usize],
    n: usize,
    salt: u32,
    started: Instant,
) -> Option<u64> {
    let mut clients = Vec::new();
    for m in survivors {
        clients.push(endpoints.kv(*m).ok()?);
    }
    if clients.is_empty() {
        return None;
    }
    let mut attempts = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let give_up = started + GIVE_UP;
    for attempt in 0..200usize {
        let mut kv = clients[attempt % clients.len()].clone();
        let put = PutRequest {
            key: b"/chaos-probe/failover".to_vec(),
            value: format!("fault-{n}-{salt}-{attempt}").into_bytes(),
            ..Default::default()
        };
        attempts.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(5), kv.put(put)).await {
                Ok(Ok(_)) => Some(Instant::now()),
                _ => None,
            }
        });
        tick.tick().await;
        // Collect whatever finished; the earliest success ends the probe.
        let mut first: Option<Instant> = None;
        while let Some(done) = attempts.try_join_next() {
            if let Ok(Some(at)) = done {
                first = Some(first.map_or(at, |f| f.min(at)));
            }
        }
        if let Some(at) = first {
            attempts.abort_all();
            return Some(at.duration_since(started).as_millis() as u64);
        }
        if Instant::now() > give_up {
            break;
        }
    }
    attempts.abort_all();
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_splits_election_from_commit() {
        let samples = vec![
            FailoverSample {
                write_ms: 700,
                elected_ms: Some(650),
                terms: Some(1),
            },
            FailoverSample {
                write_ms: 1500,
                elected_ms: Some(1400),
                terms: Some(2),
            },
        ];
        let s = FailoverSummary::new(samples);
        assert_eq!(s.write_p50_ms, Some(700));
        assert_eq!(s.write_p99_ms, Some(1500));
        assert_eq!(s.elected_p99_ms, Some(1400));
        assert_eq!(s.commit_p50_ms, Some(50));
        assert_eq!(s.commit_p99_ms, Some(100));
        assert_eq!(s.multi_term_elections, 1);
    }
}
