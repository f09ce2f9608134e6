//! One chaos run, start to verdict:
//! 1. wait for a leader; start a watcher on every member and the workload's clients;
//! 2. inject and heal the scenario's faults on the seed's schedule (leader faults start a
//!    failover probe: the time until a write is acknowledged again);
//! 3. heal everything, wait until every member answers, check convergence;
//! 4. drain the watchers to the final revision, open resume watchers from a middle revision;
//! 5. run the checkers and build the report.

use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::client::Endpoints;
use crate::convergence::{check_convergence, lost_writes};
use crate::failover::{FailoverSample, FailoverSummary, failover_probe};
use crate::history::{History, Recorder};
use crate::linearizability::{CheckLimits, Verdict, check_key};
use crate::minimize::minimize;
use crate::nemesis::{MemberControl, Nemesis, Target};
use crate::netns::NetnsTopology;
use crate::report::{FaultRecord, KeyReport, Report, WatchReport};
use crate::revisions::revisions_going_back;
use crate::scenario::Scenario;
use crate::watch_checker::{Committed, WatchItem, WatchSession, check_watches};
use crate::watch_recorder::{WatchPlan, record_watcher};
use crate::workload::{WorkloadConfig, run_client};

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub scenario: Scenario,
    pub duration: Duration,
    pub seed: u64,
    pub clients: usize,
    pub keys: usize,
    pub op_timeout: Duration,
    /// Where report.json / report.txt / history.json go.
    pub results: PathBuf,
    /// Set when the members run in network namespaces (partition scenarios).
    pub netns: Option<NetnsTopology>,
    /// The small tmpfs that is member `disk::DISK_MEMBER`'s data dir (disk-full scenario).
    pub disk: Option<PathBuf>,
}

const PREFIX: &str = "/chaos/";
const PREFIX_END: &str = "/chaos0";

/// Runs the scenario against the cluster; never leaves a fault injected.
pub async fn run_scenario(
    config: &RunConfig,
    endpoints: &Endpoints,
    ctl: &mut dyn MemberControl,
) -> (Report, History) {
    let mut report = Report {
        scenario: config.scenario.name.to_string(),
        about: config.scenario.about.to_string(),
        seed: config.seed,
        duration_secs: config.duration.as_secs(),
        members: endpoints.len(),
        clients: config.clients,
        ..Default::default()
    };
    if endpoints
        .wait_for_leader(Duration::from_secs(30))
        .await
        .is_none()
    {
        report.run_errors.push("no leader before the run".into());
    }
    let start = Instant::now();
    let recorder = Recorder::new(start.into_std());
    let end = start + config.duration;
    // Watchers may outlive the workload by the drain time.
    let watch_give_up = end + Duration::from_secs(90);
    let (drain_tx, drain_rx) = watch::channel(None::<i64>);
    let mut watchers: Vec<JoinHandle<Vec<WatchSession>>> = Vec::new();
    for member in 0..endpoints.len() {
        let plan = WatchPlan {
            name: format!("watch-m{member}"),
            member,
            key: PREFIX.as_bytes().to_vec(),
            range_end: PREFIX_END.as_bytes().to_vec(),
            start_revision: 1,
            resumed: false,
            give_up_at: watch_give_up,
        };
        watchers.push(tokio::spawn(record_watcher(
            endpoints.clone(),
            plan,
            drain_rx.clone(),
        )));
    }
    let workload = WorkloadConfig {
        clients: config.clients,
        keys: config.keys,
        prefix: PREFIX.to_string(),
        op_timeout: config.op_timeout,
        seed: config.seed,
    };
    let clients: Vec<JoinHandle<usize>> = (0..config.clients)
        .map(|id| {
            tokio::spawn(run_client(
                id,
                id % endpoints.len().max(1),
                endpoints.clone(),
                recorder.clone(),
                workload.clone(),
                end,
            ))
        })
        .collect();

    let failovers = inject_faults(config, endpoints, ctl, &recorder, start, &mut report).await;
    for handle in clients {
        if handle.await.is_err() {
            report.run_errors.push("a workload client panicked".into());
        }
    }
    let mut samples = Vec::new();
    for probe in failovers {
        match probe.await {
            Ok(Some(sample)) => samples.push(sample),
            Ok(None) => report
                .run_errors
                .push("no write was acknowledged within 20 s of a leader fault".into()),
            Err(_) => report.run_errors.push("a failover probe panicked".into()),
        }
    }
    let failover = FailoverSummary::new(samples);
    report.failover_ms = failover.samples.iter().map(|s| s.write_ms).collect();
    report.failover_p50_ms = failover.write_p50_ms;
    report.failover_p99_ms = failover.write_p99_ms;
    report.failover = failover;

    // 3. Convergence once every member answers.
    if wait_all_answer(endpoints, Duration::from_secs(45))
        .await
        .is_none()
    {
        report
            .run_errors
            .push("not every member answered within 45 s of the heal".into());
    }
    report.convergence = check_convergence(endpoints, Duration::from_secs(30)).await;
    let final_revision = report.convergence.revision;

    // 4. Drain the watchers; resume watchers from the middle of the history.
    let _ = drain_tx.send(Some(final_revision));
    let mut sessions = Vec::new();
    let resume_from = (final_revision / 2).max(1);
    let mut resumers = Vec::new();
    for member in 0..endpoints.len() {
        let plan = WatchPlan {
            name: format!("resume-m{member}-from-{resume_from}"),
            member,
            key: PREFIX.as_bytes().to_vec(),
            range_end: PREFIX_END.as_bytes().to_vec(),
            start_revision: resume_from,
            resumed: true,
            give_up_at: Instant::now() + Duration::from_secs(30),
        };
        resumers.push(tokio::spawn(record_watcher(
            endpoints.clone(),
            plan,
            drain_rx.clone(),
        )));
    }
    for handle in watchers.into_iter().chain(resumers) {
        match handle.await {
            Ok(s) => sessions.extend(s),
            Err(_) => report.run_errors.push("a watcher panicked".into()),
        }
    }

    // 5. Checkers.
    let history = recorder.snapshot();
    report.op_counts = history.counts();
    report.total_ops = history.ops.len();
    report.lost_writes = lost_writes(&history, &report.convergence.state);
    report.revisions_back = revisions_going_back(&history, 20);
    report.watch = check_watch_sessions(&history, &report.convergence.state, &sessions);
    match check_linearizability(&history).await {
        Some(keys) => report.linearizability = keys,
        None => report
            .run_errors
            .push("the linearizability checker panicked".into()),
    }
    report.decide();
    (report, history)
}

/// Steps 1-2: the fault schedule. Returns the failover probes still running.
async fn inject_faults(
    config: &RunConfig,
    endpoints: &Endpoints,
    ctl: &mut dyn MemberControl,
    recorder: &Recorder,
    start: Instant,
    report: &mut Report,
) -> Vec<JoinHandle<Option<FailoverSample>>> {
    let mut probes = Vec::new();
    let scenario = &config.scenario;
    let chosen = scenario.nemesis(config.netns.as_ref(), config.disk.as_deref(), config.seed);
    let mut nemesis = match chosen {
        Ok(Some(nemesis)) => nemesis,
        Ok(None) => {
            tokio::time::sleep_until(start + config.duration).await;
            return probes;
        }
        Err(e) => {
            report.run_errors.push(e.to_string());
            tokio::time::sleep_until(start + config.duration).await;
            return probes;
        }
    };
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5eed);
    let plan = config.scenario.schedule(config.duration, config.seed);
    for (n, fault) in plan.iter().enumerate() {
        tokio::time::sleep_until(start + fault.at).await;
        // Start each fault from a whole cluster so failover times are comparable.
        let leader = wait_all_answer(endpoints, Duration::from_secs(10)).await;
        let size = ctl.size().max(1);
        let member = match (nemesis.target(), leader) {
            (Target::Leader, Some(leader)) => leader,
            (Target::Next, _) => n % size,
            (Target::Member(m), _) => m % size,
            (Target::Alternating, Some(leader)) if n % 2 == 1 => leader,
            (Target::Follower | Target::Alternating, Some(leader)) if size > 1 => {
                (leader + 1 + fault.pick as usize % (size - 1)) % size
            }
            _ => fault.pick as usize % size,
        };
        let is_leader = leader == Some(member);
        // The old leader's id and term, so the probe can tell when a new one is elected.
        let before = if is_leader {
            endpoints
                .raft_status(member, Duration::from_millis(500))
                .await
        } else {
            None
        };
        match nemesis.inject(ctl, member).await {
            Ok(detail) => {
                report.faults.push(FaultRecord {
                    at_ms: recorder.now_ns() / 1_000_000,
                    action: "inject".into(),
                    member: Some(member),
                    detail: format!("{detail}{}", if is_leader { " (leader)" } else { "" }),
                });
                if is_leader {
                    probes.push(tokio::spawn(failover_probe(
                        endpoints.clone(),
                        member,
                        before,
                        n,
                        rng.random(),
                    )));
                }
            }
            Err(e) => report.run_errors.push(format!("inject: {e}")),
        }
        tokio::time::sleep_until(start + fault.at + fault.hold).await;
        heal(nemesis.as_mut(), ctl, recorder, report).await;
    }
    tokio::time::sleep_until(start + config.duration).await;
    heal(nemesis.as_mut(), ctl, recorder, report).await;
    probes
}

async fn heal(
    nemesis: &mut dyn Nemesis,
    ctl: &mut dyn MemberControl,
    recorder: &Recorder,
    report: &mut Report,
) {
    match nemesis.heal(ctl).await {
        Ok(detail) if detail.is_empty() => {}
        Ok(detail) => report.faults.push(FaultRecord {
            at_ms: recorder.now_ns() / 1_000_000,
            action: "heal".into(),
            member: None,
            detail,
        }),
        Err(e) => report.run_errors.push(format!("heal: {e}")),
    }
}

/// The leader once every member answers and agrees on it.
async fn wait_all_answer(endpoints: &Endpoints, within: Duration) -> Option<usize> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let mut answers = Vec::new();
        for m in 0..endpoints.len() {
            answers.push(endpoints.member_status(m).await);
        }
        if answers.iter().all(Option::is_some)
            && let Some(leader) = endpoints.leader().await
        {
            return Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn check_watch_sessions(
    history: &History,
    state: &crate::convergence::StateRows,
    sessions: &[WatchSession],
) -> WatchReport {
    let mut committed = Committed::default();
    for op in &history.ops {
        if let Some((revision, value)) = op.acknowledged_write() {
            committed.add("acknowledged write", revision, &op.key, Some(value));
        }
    }
    for (key, value, mod_revision, _) in state {
        if key.starts_with(PREFIX) {
            committed.add("final read", *mod_revision, key, Some(value));
        }
    }
    let events = sessions
        .iter()
        .flat_map(|s| s.items.iter())
        .map(|i| match i {
            WatchItem::Events { events } => events.len(),
            WatchItem::Progress { .. } | WatchItem::Compacted { .. } => 0,
        })
        .sum();
    let violations = check_watches(committed.clone(), sessions);
    let mut all = committed;
    for s in sessions {
        for item in &s.items {
            if let WatchItem::Events { events } = item {
                for e in events {
                    all.add(&s.watcher, e.revision, &e.key, e.value.as_deref());
                }
            }
        }
    }
    WatchReport {
        sessions: sessions.len(),
        resumed_sessions: sessions.iter().filter(|s| s.resumed).count(),
        compacted_sessions: sessions
            .iter()
            .filter(|s| {
                s.items
                    .iter()
                    .any(|i| matches!(i, WatchItem::Compacted { .. }))
            })
            .count(),
        events,
        committed_revisions: all.revisions(),
        violations,
    }
}

async fn check_linearizability(history: &History) -> Option<Vec<KeyReport>> {
    let keys = history.by_key();
    let checked = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (key, ops) in keys {
            let limits = CheckLimits {
                deadline: Some(std::time::Instant::now() + Duration::from_secs(60)),
                ..Default::default()
            };
            let verdict = check_key(&ops, limits);
            let (offending, minimal) = if matches!(verdict, Verdict::Violation { .. }) {
                warn!(key, "linearizability violation; shrinking the history");
                let m = minimize(&ops, Duration::from_secs(30));
                (m.ops, m.minimal)
            } else {
                (Vec::new(), false)
            };
            let label = match &verdict {
                Verdict::Linearizable => "linearizable",
                Verdict::Violation { .. } => "VIOLATION",
                Verdict::Inconclusive { .. } => "inconclusive",
            };
            info!(
                key,
                ops = ops.len(),
                verdict = label,
                "linearizability checked"
            );
            out.push(KeyReport {
                key,
                ops: ops.len(),
                verdict,
                offending,
                offending_is_minimal: minimal,
            });
        }
        out
    })
    .await;
    checked.ok()
}
