//! Faults ("nemeses") with a clean heal, over processes the caller owns.
//!
//! The chaos crate never starts skiff itself: the binary hands it a `MemberControl` over its own
//! child processes (loopback mode) and this module decides what to do to them. Every nemesis
//! remembers what it did so `heal` undoes exactly that, and healing twice is harmless.

use futures::future::BoxFuture;

use crate::error::ChaosError;

/// What the chaos crate may do to the member processes.
pub trait MemberControl: Send {
    fn size(&self) -> usize;
    /// The running process of `member`, if any.
    fn pid(&self, member: usize) -> Option<u32>;
    /// SIGKILL and reap: the member is down when this returns.
    fn kill(&mut self, member: usize) -> BoxFuture<'_, Result<(), ChaosError>>;
    /// SIGTERM, wait for a clean exit (bounded), SIGKILL if it does not come.
    fn stop(&mut self, member: usize) -> BoxFuture<'_, Result<(), ChaosError>>;
    /// Starts a stopped member again on its data dir (it resumes by itself).
    fn restart(&mut self, member: usize) -> BoxFuture<'_, Result<(), ChaosError>>;
    /// Removes `member` from the raft membership the way an operator does
    /// (`skiff server --remove NAME`), asking through member `via`'s admin API. Returns the
    /// raft id the member had. The process keeps running: stopping it is a separate step.
    fn remove(&mut self, member: usize, via: usize) -> BoxFuture<'_, Result<u64, ChaosError>>;
    /// Wipes the data dir of the stopped `member` and starts it as a brand-new member that
    /// joins through member `via` with the cluster's join token. Returns once the cluster has
    /// admitted it (as a learner): its new raft id.
    fn rejoin(&mut self, member: usize, via: usize) -> BoxFuture<'_, Result<u64, ChaosError>>;
    /// Whether the cluster, asked through member `via`, counts `member` as a voter.
    fn is_voter(&mut self, member: usize, via: usize) -> BoxFuture<'_, Result<bool, ChaosError>>;
}

/// Sends a signal to a member's process (pause/resume).
pub fn signal(ctl: &dyn MemberControl, member: usize, sig: i32) -> Result<(), ChaosError> {
    let pid = ctl.pid(member).ok_or(ChaosError::Process {
        member,
        reason: "not running".to_string(),
    })?;
    let pid = i32::try_from(pid).map_err(|_| ChaosError::Process {
        member,
        reason: format!("pid {pid} out of range"),
    })?;
    // SAFETY: kill(2) on the pid of a child the caller spawned and has not reaped.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        return Err(ChaosError::Process {
            member,
            reason: format!("kill({pid}, {sig}): {}", std::io::Error::last_os_error()),
        });
    }
    Ok(())
}

/// Which member a fault hits; resolved by the runner at injection time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Leader,
    Random,
    /// A random member other than the leader.
    Follower,
    /// Always this member (0-based): a fault prepared for it before the run (its disk).
    Member(usize),
    /// Round-robin over the members (rolling faults): the n-th injection hits member n % size.
    Next,
    /// A follower on even injections, the leader on odd ones, so one run covers both (member
    /// removal: removing the leader must move leadership, removing a follower must not).
    Alternating,
}

pub trait Nemesis: Send {
    fn name(&self) -> &'static str;
    fn target(&self) -> Target;
    /// Injects the fault on `member`; returns a one-line description for the report.
    fn inject<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
        member: usize,
    ) -> BoxFuture<'a, Result<String, ChaosError>>;
    /// Undoes the last injection (no-op if nothing is injected).
    fn heal<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
    ) -> BoxFuture<'a, Result<String, ChaosError>>;
}

/// SIGKILL a member (the leader or a random one), restart it on heal.
pub struct KillMember {
    pub target: Target,
    down: Option<usize>,
}

impl KillMember {
    pub fn new(target: Target) -> KillMember {
        KillMember { target, down: None }
    }
}

impl Nemesis for KillMember {
    fn name(&self) -> &'static str {
        "kill"
    }
    fn target(&self) -> Target {
        self.target
    }
    fn inject<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
        member: usize,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            ctl.kill(member).await?;
            self.down = Some(member);
            Ok(format!("SIGKILL member {member}"))
        })
    }
    fn heal<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(restart_taken(ctl, self.down.take()))
    }
}

/// SIGSTOP a member (a long GC-like pause), SIGCONT on heal.
pub struct PauseMember {
    pub target: Target,
    paused: Option<usize>,
}

impl PauseMember {
    pub fn new(target: Target) -> PauseMember {
        PauseMember {
            target,
            paused: None,
        }
    }
}

impl Nemesis for PauseMember {
    fn name(&self) -> &'static str {
        "pause"
    }
    fn target(&self) -> Target {
        self.target
    }
    fn inject<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
        member: usize,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            signal(ctl, member, libc::SIGSTOP)?;
            self.paused = Some(member);
            Ok(format!("SIGSTOP member {member}"))
        })
    }
    fn heal<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            match self.paused.take() {
                Some(member) => {
                    signal(ctl, member, libc::SIGCONT)?;
                    Ok(format!("SIGCONT member {member}"))
                }
                None => Ok(String::new()),
            }
        })
    }
}

/// Rolling restart: each injection stops the next member cleanly (SIGTERM), heal starts it.
pub struct RollingRestart {
    stopped: Option<usize>,
}

impl RollingRestart {
    pub fn new() -> RollingRestart {
        RollingRestart { stopped: None }
    }
}

impl Default for RollingRestart {
    fn default() -> Self {
        Self::new()
    }
}

impl Nemesis for RollingRestart {
    fn name(&self) -> &'static str {
        "rolling-restart"
    }
    fn target(&self) -> Target {
        Target::Next
    }
    fn inject<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
        member: usize,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            ctl.stop(member).await?;
            self.stopped = Some(member);
            Ok(format!("SIGTERM member {member}"))
        })
    }
    fn heal<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(restart_taken(ctl, self.stopped.take()))
    }
}

/// Heal for the faults that take a member down: restart it if one is down.
async fn restart_taken(
    ctl: &mut dyn MemberControl,
    member: Option<usize>,
) -> Result<String, ChaosError> {
    match member {
        Some(member) => {
            ctl.restart(member).await?;
            Ok(format!("restarted member {member}"))
        }
        None => Ok(String::new()),
    }
}
