//! Starting (and stopping) a node's private containerd.
//!
//! containerd runs in a session of its own (setsid: a terminal hang-up or the agent's process
//! group being signalled must not take the node's containers down with it) and, when the node
//! is a network namespace, inside it through `nsenter --net=`: `ip netns exec` would also
//! remount /sys, which hides the cgroup v1 hierarchy from containerd ("no cgroup mount found in
//! mountinfo").
//!
//! The containerd we start is stopped when its [`Launched`] handle goes (agent shutdown). Its
//! containers do not go with it: their shims outlive containerd, and the next containerd on the
//! same state dir picks them up again.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::ContainerdOptions;
use super::config::{self, Layout};
use crate::agent::runtime::RuntimeError;

/// How long containerd gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn io(context: &str) -> impl Fn(std::io::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Runtime(format!("{context}: {e}"))
}

/// A containerd this agent started.
#[derive(Debug)]
pub struct Launched {
    child: Child,
    pub socket: PathBuf,
}

impl Launched {
    /// Fails if containerd already exited (a bad config ends it within a second or so).
    pub fn check_alive(&mut self, log: &Path) -> Result<(), RuntimeError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(RuntimeError::Runtime(format!(
                "containerd exited ({status}) on start; its log {}:\n{}",
                log.display(),
                log_tail(log)
            ))),
            _ => Ok(()),
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; reaps the process.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own unreaped child, which cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                info!(pid, "containerd stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        warn!(pid, "containerd ignored SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last lines of containerd's log, for start failures.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Where the CNI plugins are installed (`dpkg -L containernetworking-plugins`).
fn cni_bin_dir() -> PathBuf {
    Command::new("dpkg")
        .args(["-L", "containernetworking-plugins"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| config::cni_bin_dir_from_dpkg(&String::from_utf8_lossy(&out.stdout)))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CNI_BIN_DIR))
}

/// Writes the node's containerd config and CNI network, then starts containerd. The caller
/// waits for the socket to answer.
pub fn launch(options: &ContainerdOptions) -> Result<Launched, RuntimeError> {
    let layout = Layout::new(&options.state_dir);
    let cidr = options.pod_cidr.as_deref().ok_or_else(|| {
        RuntimeError::Runtime(
            "the node has no pod CIDR (the control plane assigns one at registration)".into(),
        )
    })?;
    for dir in layout.dirs() {
        std::fs::create_dir_all(&dir).map_err(io("creating containerd's directories"))?;
    }
    let bin_dir = cni_bin_dir();
    if !bin_dir.join("bridge").exists() {
        return Err(RuntimeError::Runtime(format!(
            "no CNI bridge plugin in {} (apt-get install containernetworking-plugins)",
            bin_dir.display()
        )));
    }
    std::fs::write(layout.config(), config::config_toml(&layout, &bin_dir))
        .map_err(io("writing containerd's config"))?;
    std::fs::write(
        layout.cni_conf_dir().join("10-skiff.conflist"),
        config::cni_conflist(
            &config::network_name(&options.cgroup_parent),
            cidr,
            &layout.ipam_dir(),
        ),
    )
    .map_err(io("writing the CNI config"))?;
    let socket = layout.socket();
    // A socket file left by a containerd that is gone (checked by the caller) blocks listen().
    let _ = std::fs::remove_file(&socket);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.log())
        .map_err(io("opening containerd's log"))?;
    let mut command = match &options.netns {
        Some(netns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", netns.display()))
                .arg("--")
                .arg("containerd");
            c
        }
        None => Command::new("containerd"),
    };
    command
        .arg("--config")
        .arg(layout.config())
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            log.try_clone().map_err(io("containerd's log"))?,
        ))
        .stderr(Stdio::from(log));
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        RuntimeError::Runtime(format!(
            "cannot start containerd (apt-get install containerd runc containernetworking-plugins): {e}"
        ))
    })?;
    info!(
        pid = child.id(),
        socket = %socket.display(),
        netns = ?options.netns,
        log = %layout.log().display(),
        "started a private containerd"
    );
    Ok(Launched { child, socket })
}
