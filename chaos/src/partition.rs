//! Network faults between members (needs `--netns`): partitions as blackhole routes inside the
//! member namespaces, packet loss as an nftables rule there. Clients in the control namespace
//! keep reaching every member, so an isolated old leader is exactly where a stale read would
//! come from.

use futures::future::BoxFuture;

use crate::error::ChaosError;
use crate::nemesis::{MemberControl, Nemesis, Target};
use crate::netns::NetnsTopology;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetFault {
    /// The target is cut off from every other member, both ways (a minority of one against
    /// the majority of the rest).
    Isolate,
    /// The target still reaches everybody, but the others cannot reach each other (Jepsen's
    /// "bridge": two overlapping majorities).
    Bridge,
    /// The target's packets to its peers are dropped; theirs still arrive (asymmetric).
    OneWay,
    /// This percentage of packets between the target and its peers is dropped, both ways.
    Loss(u8),
}

impl NetFault {
    /// The one-way links (from, to) to blackhole when `member` is the target.
    fn links(self, member: usize, size: usize) -> Vec<(usize, usize)> {
        let others: Vec<usize> = (0..size).filter(|o| *o != member).collect();
        match self {
            NetFault::Isolate => others
                .iter()
                .flat_map(|o| [(member, *o), (*o, member)])
                .collect(),
            NetFault::Bridge => {
                let mut links = Vec::new();
                for a in &others {
                    for b in &others {
                        if a != b {
                            links.push((*a, *b));
                        }
                    }
                }
                links
            }
            NetFault::OneWay => others.iter().map(|o| (member, *o)).collect(),
            NetFault::Loss(_) => Vec::new(),
        }
    }
}

enum Applied {
    Links(Vec<(usize, usize)>),
    Loss(usize),
}

pub struct Partition {
    target: Target,
    fault: NetFault,
    topology: NetnsTopology,
    applied: Option<Applied>,
}

impl Partition {
    pub fn new(target: Target, fault: NetFault, topology: NetnsTopology) -> Partition {
        Partition {
            target,
            fault,
            topology,
            applied: None,
        }
    }

    fn undo(&mut self) -> Result<(), ChaosError> {
        match self.applied.take() {
            Some(Applied::Links(links)) => {
                let mut first_error = None;
                for (from, to) in links {
                    if let Err(e) = self.topology.blackhole(from, to, false)
                        && first_error.is_none()
                    {
                        first_error = Some(e);
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
            Some(Applied::Loss(member)) => self.topology.clear_loss(member),
            None => Ok(()),
        }
    }
}

impl Nemesis for Partition {
    fn name(&self) -> &'static str {
        "partition"
    }
    fn target(&self) -> Target {
        self.target
    }
    fn inject<'a>(
        &'a mut self,
        _ctl: &'a mut dyn MemberControl,
        member: usize,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            if let NetFault::Loss(percent) = self.fault {
                self.applied = Some(Applied::Loss(member));
                if let Err(e) = self.topology.drop_randomly(member, percent) {
                    let _ = self.undo();
                    return Err(e);
                }
                return Ok(format!(
                    "dropping {percent}% of packets between member {member} and its peers"
                ));
            }
            let links = self.fault.links(member, self.topology.size);
            let mut done = Vec::new();
            for (from, to) in &links {
                if let Err(e) = self.topology.blackhole(*from, *to, true) {
                    // Take back whatever part of the cut was made.
                    self.applied = Some(Applied::Links(done));
                    let _ = self.undo();
                    return Err(e);
                }
                done.push((*from, *to));
            }
            self.applied = Some(Applied::Links(done));
            Ok(match self.fault {
                NetFault::Bridge => {
                    format!("member {member} bridges the others, cut from each other")
                }
                NetFault::OneWay => format!("member {member}'s packets to its peers are dropped"),
                _ => format!("isolated member {member} from its peers"),
            })
        })
    }
    fn heal<'a>(
        &'a mut self,
        _ctl: &'a mut dyn MemberControl,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            if self.applied.is_none() {
                return Ok(String::new());
            }
            self.undo()?;
            Ok("healed the network".to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_cuts_the_right_links() {
        let mut isolate = NetFault::Isolate.links(1, 3);
        isolate.sort();
        assert_eq!(isolate, vec![(0, 1), (1, 0), (1, 2), (2, 1)]);
        let mut bridge = NetFault::Bridge.links(1, 3);
        bridge.sort();
        assert_eq!(bridge, vec![(0, 2), (2, 0)]);
        assert_eq!(NetFault::OneWay.links(0, 3), vec![(0, 1), (0, 2)]);
        assert!(NetFault::Loss(20).links(0, 3).is_empty());
    }
}
