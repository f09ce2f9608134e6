//! The scenarios `skiff chaos list` shows, and the fault schedule a seed gives: the same seed
//! and duration always give the same schedule, so a failing seed replays its faults.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::delay::PacketDelay;
use crate::disk::DiskFull;
use crate::error::ChaosError;
use crate::membership::RemoveReadd;
use crate::nemesis::{KillMember, Nemesis, PauseMember, RollingRestart, Target};
use crate::netns::NetnsTopology;
use crate::partition::{NetFault, Partition};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    None,
    Kill(Target),
    Pause(Target),
    RollingRestart,
    /// Needs network namespaces (`--netns`).
    Network(Target, NetFault),
    /// Needs root (a tmpfs for one member's data dir); run in the `--netns` mode.
    DiskFull,
    /// Remove the member from the cluster, stop it, wipe it, re-join it as a new member.
    RemoveReadd(Target),
    /// Delay the member's peer traffic by a per-fault pick from this range (ms, each way)
    /// through a relay in its namespace. Needs `--netns`: redirecting needs nftables in a
    /// namespace of the member's own.
    Delay(Target, (u64, u64)),
}

#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub fault: FaultKind,
    /// How long each fault is held, in milliseconds (a range the seed picks from).
    pub hold_ms: (u64, u64),
    /// Extra `skiff server` flags for the members (e.g. tiny snapshot thresholds).
    pub server_args: &'static [&'static str],
}

const HOLD: (u64, u64) = (1000, 3000);

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "none",
        about: "no faults: the workload and checkers alone",
        fault: FaultKind::None,
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "kill-leader",
        about: "SIGKILL the raft leader, restart it after a while; measures failover",
        fault: FaultKind::Kill(Target::Leader),
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "kill-random",
        about: "SIGKILL a random member, restart it after a while",
        fault: FaultKind::Kill(Target::Random),
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "pause-leader",
        about: "SIGSTOP the leader (a GC-like pause past the election timeout), then SIGCONT",
        fault: FaultKind::Pause(Target::Leader),
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "pause",
        about: "SIGSTOP a random member, then SIGCONT",
        fault: FaultKind::Pause(Target::Random),
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "rolling-restart",
        about: "stop (SIGTERM) and restart every member in turn",
        fault: FaultKind::RollingRestart,
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "kill-follower-snapshot",
        about: "SIGKILL a follower long enough that it must catch up by snapshot install under load (snapshots every 200 entries)",
        fault: FaultKind::Kill(Target::Follower),
        hold_ms: (3000, 5000),
        server_args: &["--snapshot-after-logs", "200", "--logs-to-keep", "10"],
    },
    Scenario {
        name: "compaction-watches",
        about: "history compacted every second (100 revisions kept) while watchers run; SIGKILL a random member so its watcher must resume across the compaction",
        fault: FaultKind::Kill(Target::Random),
        hold_ms: (2000, 4000),
        server_args: &[
            "--compaction-interval-secs",
            "1",
            "--history-retention-secs",
            "1",
            "--history-min-revisions",
            "100",
        ],
    },
    Scenario {
        name: "disk-full",
        about: "fill member 2's data disk (its own 256 MiB tmpfs) while it builds snapshots every 200 entries, then free it and restart the member [--netns: root]",
        fault: FaultKind::DiskFull,
        hold_ms: HOLD,
        // RocksDB preallocates its WAL, so appends alone may never meet the full disk within
        // a fault; snapshot files are new files and do.
        server_args: &["--snapshot-after-logs", "200", "--logs-to-keep", "10"],
    },
    Scenario {
        name: "partition-leader",
        about: "isolate the leader from its peers (clients still reach it), then heal [--netns]",
        fault: FaultKind::Network(Target::Leader, NetFault::Isolate),
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "partition-random",
        about: "majority/minority: isolate a random member from its peers, then heal [--netns]",
        fault: FaultKind::Network(Target::Random, NetFault::Isolate),
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "partition-bridge",
        about: "a random member reaches both others, which cannot reach each other [--netns]",
        fault: FaultKind::Network(Target::Random, NetFault::Bridge),
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "partition-one-way",
        about: "asymmetric: the leader's packets to its peers are dropped, theirs still arrive [--netns]",
        fault: FaultKind::Network(Target::Leader, NetFault::OneWay),
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "member-remove-readd",
        about: "remove a member (a follower, then the leader, in turn) with `skiff server --remove`, stop it, wipe its data, re-join it with the join token as a new member; heal = it is a voter again",
        fault: FaultKind::RemoveReadd(Target::Alternating),
        hold_ms: HOLD,
        server_args: &[],
    },
    Scenario {
        name: "packet-delay",
        about: "delay all peer traffic (raft 2380, API 6443) of a follower, then the leader, in turn, 20-100 ms each way through a userspace relay (no netem here); the added round trip is measured [--netns: root]",
        fault: FaultKind::Delay(Target::Alternating, (20, 100)),
        hold_ms: (3000, 6000),
        server_args: &[],
    },
    Scenario {
        name: "packet-loss",
        about: "drop 30% of the packets between the leader and its peers, both ways [--netns]",
        fault: FaultKind::Network(Target::Leader, NetFault::Loss(30)),
        hold_ms: (2000, 4000),
        server_args: &[],
    },
];

impl Scenario {
    pub fn find(name: &str) -> Option<Scenario> {
        SCENARIOS.iter().copied().find(|s| s.name == name)
    }

    pub fn needs_netns(&self) -> bool {
        matches!(
            self.fault,
            FaultKind::Network(..) | FaultKind::DiskFull | FaultKind::Delay(..)
        )
    }

    /// The scenario's fault. `disk` is the tmpfs data dir of `disk::DISK_MEMBER` (disk-full);
    /// `seed` picks whatever a fault draws per injection (the delay), so a seed replays it.
    pub fn nemesis(
        &self,
        netns: Option<&NetnsTopology>,
        disk: Option<&std::path::Path>,
        seed: u64,
    ) -> Result<Option<Box<dyn Nemesis>>, ChaosError> {
        Ok(match self.fault {
            FaultKind::None => None,
            FaultKind::Kill(target) => Some(Box::new(KillMember::new(target))),
            FaultKind::Pause(target) => Some(Box::new(PauseMember::new(target))),
            FaultKind::RollingRestart => Some(Box::new(RollingRestart::new())),
            FaultKind::Network(target, fault) => {
                let topology = netns.ok_or_else(|| ChaosError::NeedsNetns(self.name.into()))?;
                Some(Box::new(Partition::new(target, fault, topology.clone())))
            }
            FaultKind::DiskFull => {
                let dir = disk.ok_or_else(|| ChaosError::NeedsNetns(self.name.into()))?;
                Some(Box::new(DiskFull::new(dir.to_path_buf())))
            }
            FaultKind::RemoveReadd(target) => Some(Box::new(RemoveReadd::new(target))),
            FaultKind::Delay(target, range_ms) => {
                let topology = netns.ok_or_else(|| ChaosError::NeedsNetns(self.name.into()))?;
                Some(Box::new(PacketDelay::new(
                    target,
                    range_ms,
                    topology.clone(),
                    seed,
                )))
            }
        })
    }

    /// Planned faults: (inject at, hold for), both from the start of the run.
    pub fn schedule(&self, duration: Duration, seed: u64) -> Vec<PlannedFault> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut plan = Vec::new();
        if self.fault == FaultKind::None {
            return plan;
        }
        // Warm up first; leave time at the end for the cluster to recover under load.
        let end = duration.saturating_sub(Duration::from_secs(3));
        let mut at = Duration::from_millis(1500);
        for _ in 0..10_000 {
            let hold = Duration::from_millis(rng.random_range(self.hold_ms.0..self.hold_ms.1));
            if at + hold > end {
                break;
            }
            plan.push(PlannedFault {
                at,
                hold,
                pick: rng.random_range(0..u32::MAX),
            });
            at += hold + Duration::from_millis(rng.random_range(1500..3500));
        }
        plan
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    pub at: Duration,
    pub hold: Duration,
    /// Chooses the member when the target is random.
    pub pick: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_schedule() {
        let s = Scenario::find("kill-leader").expect("scenario");
        let a = s.schedule(Duration::from_secs(60), 7);
        assert_eq!(a, s.schedule(Duration::from_secs(60), 7));
        assert_ne!(a, s.schedule(Duration::from_secs(60), 8));
        assert!(a.len() >= 5);
        assert!(a.iter().all(|f| f.at + f.hold <= Duration::from_secs(57)));
    }

    #[test]
    fn every_scenario_has_a_unique_name() {
        let mut names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
    }
}
