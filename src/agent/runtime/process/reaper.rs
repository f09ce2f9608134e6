//! Containers die with their agent. PR_SET_PDEATHSIG kills a container's first process when the
//! agent exits, but not what that process started: `sh -c 'serve & sleep 3600'` would leave
//! `serve` and `sleep` running under init, nobody's pods, after every agent crash or test.
//!
//! The reaper is a small process of its own, forked from the agent before the agent starts any
//! thread (so it shares the agent's pages instead of loading skiff again) and put in its own
//! process group (a terminal's Ctrl-C reaches it only through the agent). The agent tells it
//! about each container's process group over a pipe. When that pipe closes, the agent has
//! exited, however it died, SIGKILL included. The reaper then kills every group that is still
//! alive, and exits.
//!
//! Protocol, one line per event: `+ <pid> <start time>` when a container starts (its pid is its
//! process group), `- <pid>` when it has exited. The start time (/proc/PID/stat field 22) is
//! checked before a kill, so a reused pid is never signalled.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, PipeWriter, Write};
use std::sync::Mutex;

use tracing::{debug, warn};

use crate::procfs;

/// The agent's end: the pipe to its reaper, or nothing if the reaper could not start or died.
pub struct Reaper {
    pipe: Mutex<Option<PipeWriter>>,
}

impl Reaper {
    /// Forks the reaper. Call it before any other thread exists: the child runs on in a copy
    /// of this process, where only the forking thread survives. Without a reaper, containers
    /// still die with the agent, only their children may not: worth a warning, not a failure.
    pub fn fork_before_threads() -> Reaper {
        let (events, pipe) = match std::io::pipe() {
            Ok(ends) => ends,
            Err(e) => {
                warn!(error = %e, "no container reaper: a container's children may outlive the agent");
                return Reaper::none();
            }
        };
        // SAFETY: the caller guarantees this process is single-threaded, so the child may run
        // ordinary Rust code; it never returns from this function (`_exit`).
        match unsafe { libc::fork() } {
            0 => {
                drop(pipe);
                // SAFETY: setpgid on ourselves; no memory involved.
                unsafe { libc::setpgid(0, 0) };
                let killed = run(BufReader::new(events));
                if killed > 0 {
                    eprintln!(
                        "container reaper: the agent is gone; stopped {killed} of its containers"
                    );
                }
                // SAFETY: ends the child without running the agent's exit handlers.
                unsafe { libc::_exit(0) }
            }
            -1 => {
                let e = std::io::Error::last_os_error();
                warn!(error = %e, "no container reaper: a container's children may outlive the agent");
                Reaper::none()
            }
            _ => Reaper {
                pipe: Mutex::new(Some(pipe)),
            },
        }
    }

    /// A reaper that does nothing (it could not start, or unit tests of the runtime).
    pub fn none() -> Reaper {
        Reaper {
            pipe: Mutex::new(None),
        }
    }

    /// Container process group `pid` started at `start` (clock ticks since boot).
    pub fn started(&self, pid: u32, start: u64) {
        self.send(&format!("+ {pid} {start}\n"));
    }

    /// Container process `pid` has exited (and its group was killed).
    pub fn exited(&self, pid: u32) {
        self.send(&format!("- {pid}\n"));
    }

    /// A line of a few bytes into a pipe the reaper keeps draining: it does not block.
    fn send(&self, line: &str) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(writer) = pipe.as_mut()
            && let Err(e) = writer.write_all(line.as_bytes())
        {
            warn!(error = %e, "the container reaper is gone: a container's children may outlive the agent");
            *pipe = None;
        }
    }
}

/// The reaper process: follows `events` (its pipe) until the agent closes it, then kills the
/// process groups of the containers still running. Returns how many it killed.
pub fn run(events: impl BufRead) -> usize {
    let mut live: HashMap<u32, u64> = HashMap::new();
    for line in events.lines() {
        let Ok(line) = line else {
            break;
        };
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next(), fields.next()) {
            (Some("+"), Some(pid), Some(start)) => {
                if let (Ok(pid), Ok(start)) = (pid.parse(), start.parse()) {
                    live.insert(pid, start);
                }
            }
            (Some("-"), Some(pid), None) => {
                if let Ok(pid) = pid.parse::<u32>() {
                    live.remove(&pid);
                }
            }
            _ => debug!(%line, "reaper: unknown line"),
        }
    }
    let mut killed = 0;
    for (pid, start) in live {
        // The leader may already be gone: PR_SET_PDEATHSIG killed it with the agent, and init
        // may have reaped it. Its group keeps the id while any member lives (the kernel does
        // not hand out a pid still in use as a group id), so the group is still ours to kill.
        // Only a live process started at another time means the pid was reused.
        let reused = procfs::start_time(pid).is_some_and(|now| now != start);
        if !reused && super::kill_group(pid, libc::SIGKILL) {
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// `sh` in its own group with a child of its own: what the process runtime starts.
    fn container() -> (std::process::Child, u32) {
        let child = Command::new("sh")
            .args(["-c", "sleep 300 & wait"])
            .process_group(0)
            .spawn()
            .expect("sh");
        let pid = child.id();
        (child, pid)
    }

    fn group_alive(pgid: u32) -> bool {
        // SAFETY: signal 0 only checks that the group exists and may be signalled.
        unsafe { libc::kill(-(pgid as i32), 0) == 0 }
    }

    /// The group's members other than zombies.
    fn group_running(pgid: u32) -> bool {
        procfs::pids_where(|_, _| true).into_iter().any(|pid| {
            procfs::stat_fields(pid).is_some_and(|f| {
                f.first().is_some_and(|s| s != "Z") && f.get(2) == Some(&pgid.to_string())
            })
        })
    }

    #[test]
    fn kills_the_groups_still_running_when_the_agent_is_gone() {
        let (mut running, running_pid) = container();
        let (mut exited, exited_pid) = container();
        let start = |pid| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(start) = procfs::start_time(pid) {
                    return start;
                }
                assert!(Instant::now() < deadline, "no start time for {pid}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let events = format!(
            "+ {running_pid} {}\n+ {exited_pid} {}\n- {exited_pid}\nnonsense\n+ 1 0\n",
            start(running_pid),
            start(exited_pid),
        );
        assert!(group_alive(running_pid));
        assert_eq!(run(events.as_bytes()), 1, "only the group still registered");
        let _ = running.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_running(running_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!group_running(running_pid), "sh and its sleep are gone");
        assert!(
            group_running(exited_pid),
            "a group said to have exited is left alone"
        );
        // SAFETY: our own child's group.
        unsafe {
            libc::kill(-(exited_pid as i32), libc::SIGKILL);
        }
        let _ = exited.wait();
    }

    #[test]
    fn a_group_whose_leader_died_with_the_agent_is_still_killed() {
        let (mut leader, pid) = container();
        let start = procfs::start_time(pid).expect("start time");
        // Wait for the leader's own child, then kill and reap the leader alone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while procfs::pids_where(|_, parent| parent == pid).is_empty() {
            assert!(Instant::now() < deadline, "sh started no child");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = leader.kill();
        let _ = leader.wait();
        assert!(group_running(pid), "the leader's child lives on");
        assert_eq!(run(format!("+ {pid} {start}\n").as_bytes()), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_running(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!group_running(pid), "what was left of the group is gone");
    }

    #[test]
    fn a_reused_pid_is_not_signalled() {
        let (mut child, pid) = container();
        let events = format!("+ {pid} 1\n");
        assert_eq!(run(events.as_bytes()), 0);
        assert!(group_alive(pid));
        // SAFETY: our own child's group.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
        let _ = child.wait();
    }
}
