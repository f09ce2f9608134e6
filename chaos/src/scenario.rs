//! The scenarios `skiff chaos list` shows, and the fault schedule a seed gives: the same seed
//! and duration always give the same schedule, so a failing seed replays its faults.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::ChaosError;
use crate::nemesis::{KillMember, Nemesis, PauseMember, RollingRestart, Target};
use crate::netns::NetnsTopology;
use crate::partition::Partition;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    None,
    Kill(Target),
    Pause(Target),
    RollingRestart,
    /// Needs network namespaces (`--netns`).
    Partition(Target),
}

#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub fault: FaultKind,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "none",
        about: "no faults: the workload and checkers alone",
        fault: FaultKind::None,
    },
    Scenario {
        name: "kill-leader",
        about: "SIGKILL the raft leader, restart it after a while; measures failover",
        fault: FaultKind::Kill(Target::Leader),
    },
    Scenario {
        name: "kill-random",
        about: "SIGKILL a random member, restart it after a while",
        fault: FaultKind::Kill(Target::Random),
    },
    Scenario {
        name: "pause-leader",
        about: "SIGSTOP the leader (a GC-like pause past the election timeout), then SIGCONT",
        fault: FaultKind::Pause(Target::Leader),
    },
    Scenario {
        name: "pause",
        about: "SIGSTOP a random member, then SIGCONT",
        fault: FaultKind::Pause(Target::Random),
    },
    Scenario {
        name: "rolling-restart",
        about: "stop (SIGTERM) and restart every member in turn",
        fault: FaultKind::RollingRestart,
    },
    Scenario {
        name: "partition-leader",
        about: "isolate the leader from its peers (clients still reach it), then heal [--netns]",
        fault: FaultKind::Partition(Target::Leader),
    },
    Scenario {
        name: "partition-random",
        about: "isolate a random member from its peers, then heal [--netns]",
        fault: FaultKind::Partition(Target::Random),
    },
];

impl Scenario {
    pub fn find(name: &str) -> Option<Scenario> {
        SCENARIOS.iter().copied().find(|s| s.name == name)
    }

    pub fn needs_netns(&self) -> bool {
        matches!(self.fault, FaultKind::Partition(_))
    }

    pub fn nemesis(
        &self,
        netns: Option<&NetnsTopology>,
    ) -> Result<Option<Box<dyn Nemesis>>, ChaosError> {
        Ok(match self.fault {
            FaultKind::None => None,
            FaultKind::Kill(target) => Some(Box::new(KillMember::new(target))),
            FaultKind::Pause(target) => Some(Box::new(PauseMember::new(target))),
            FaultKind::RollingRestart => Some(Box::new(RollingRestart::new())),
            FaultKind::Partition(target) => {
                let topology = netns.ok_or_else(|| ChaosError::NeedsNetns(self.name.into()))?;
                Some(Box::new(Partition::new(target, topology.clone())))
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
            let hold = Duration::from_millis(rng.random_range(1000..3000));
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
