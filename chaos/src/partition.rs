//! Network partition nemesis: isolate one member (the leader or a random one) from its peers
//! with blackhole routes inside the member namespaces; clients keep reaching it, so an
//! isolated old leader is exactly where a stale read would come from.

use futures::future::BoxFuture;

use crate::error::ChaosError;
use crate::nemesis::{MemberControl, Nemesis, Target};
use crate::netns::NetnsTopology;

pub struct Partition {
    target: Target,
    topology: NetnsTopology,
    isolated: Option<usize>,
}

impl Partition {
    pub fn new(target: Target, topology: NetnsTopology) -> Partition {
        Partition {
            target,
            topology,
            isolated: None,
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
            self.isolated = Some(member);
            if let Err(e) = self.topology.isolate(member) {
                // Take back whatever half of the cut was made.
                let _ = self.topology.heal(member);
                self.isolated = None;
                return Err(e);
            }
            Ok(format!("isolated member {member} from its peers"))
        })
    }
    fn heal<'a>(
        &'a mut self,
        _ctl: &'a mut dyn MemberControl,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            match self.isolated.take() {
                Some(member) => {
                    self.topology.heal(member)?;
                    Ok(format!("healed the partition of member {member}"))
                }
                None => Ok(String::new()),
            }
        })
    }
}
