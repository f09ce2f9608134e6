//! A control plane of N `skiff server` child processes on one machine (127.X.Y.1..N), used by
//! `skiff up` and `skiff bench`. Each member logs to BASE/nodeN.log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use skiff_proto::admin::StatusRequest;
use tokio::process::{Child, Command};

use crate::pki::{MemberPki, PkiPaths};
use crate::progress::Progress;
use crate::server::bootstrap::{admin_client, load_token};
use crate::server::identity::NodeIdentity;

pub struct LocalCluster {
    pub base: PathBuf,
    /// e.g. "127.0.0." — member i listens on PREFIX(i+1).
    pub ip_prefix: String,
    members: Vec<(String, Child)>,
    /// How members are started again after a chaos fault.
    exe: PathBuf,
    extra_args: Vec<String>,
    /// Per member, a command the server is started through (e.g. `ip netns exec NS`).
    launchers: Vec<Vec<String>>,
    /// Where this process reaches a member's admin API when the members' own addresses are
    /// not reachable from here (a relay into their network namespace).
    admin_addr: Option<String>,
    /// Members this machine runs: each member's runtime gets its share of the cores.
    size: usize,
}

impl LocalCluster {
    pub fn member_dir(base: &Path, index: usize) -> PathBuf {
        base.join(format!("node{index}"))
    }

    pub fn member_ip(&self, index: usize) -> String {
        format!("{}{index}", self.ip_prefix)
    }

    /// Starts (or resumes) `size` members and waits until all are voters under one leader.
    pub async fn start(
        base: &Path,
        ip_prefix: &str,
        size: usize,
        extra_args: &[String],
        progress: &Progress,
    ) -> anyhow::Result<Self> {
        Self::start_with_launchers(base, ip_prefix, size, extra_args, Vec::new(), progress).await
    }

    /// As `start`, with member i (1-based) started through `launchers[i - 1]` when present
    /// (`skiff chaos --netns` puts each member in its own network namespace this way).
    pub async fn start_with_launchers(
        base: &Path,
        ip_prefix: &str,
        size: usize,
        extra_args: &[String],
        launchers: Vec<Vec<String>>,
        progress: &Progress,
    ) -> anyhow::Result<Self> {
        Self::launch(base, ip_prefix, size, extra_args, launchers, None, progress).await
    }

    /// As `start_with_launchers`, reaching the members' admin API at `admin_addr` (a relay into
    /// the namespace they live in: `skiff up` with containerd).
    pub async fn start_relayed(
        base: &Path,
        ip_prefix: &str,
        size: usize,
        extra_args: &[String],
        launchers: Vec<Vec<String>>,
        admin_addr: &str,
        progress: &Progress,
    ) -> anyhow::Result<Self> {
        let admin = Some(admin_addr.to_string());
        Self::launch(
            base, ip_prefix, size, extra_args, launchers, admin, progress,
        )
        .await
    }

    async fn launch(
        base: &Path,
        ip_prefix: &str,
        size: usize,
        extra_args: &[String],
        launchers: Vec<Vec<String>>,
        admin_addr: Option<String>,
        progress: &Progress,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let exe = std::env::current_exe().context("locating the skiff binary")?;
        let mut cluster = LocalCluster {
            base: base.to_path_buf(),
            ip_prefix: ip_prefix.to_string(),
            members: Vec::new(),
            exe: exe.clone(),
            extra_args: extra_args.to_vec(),
            launchers,
            admin_addr,
            size,
        };
        let outcome = cluster
            .start_members(&exe, size, extra_args, progress)
            .await;
        if let Err(e) = outcome {
            cluster.stop().await;
            return Err(e);
        }
        Ok(cluster)
    }

    async fn start_members(
        &mut self,
        exe: &Path,
        size: usize,
        extra_args: &[String],
        progress: &Progress,
    ) -> anyhow::Result<()> {
        for index in 1..=size {
            let dir = Self::member_dir(&self.base, index);
            let ip = self.member_ip(index);
            let mut command = self.member_command(exe, index, extra_args);
            if NodeIdentity::load(&dir)?.is_none() {
                if index == 1 {
                    command.arg("--init");
                } else {
                    let token = load_token(&Self::member_dir(&self.base, 1))?;
                    command
                        .arg("--join")
                        .arg(format!("https://{}:6443", self.member_ip(1)))
                        .arg("--token")
                        .arg(token.to_string());
                }
            }
            std::fs::create_dir_all(&dir)?;
            let log = std::fs::File::create(self.base.join(format!("node{index}.log")))?;
            command
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .kill_on_drop(true);
            progress.step(&format!("starting node{index} on {ip}"));
            let child = command
                .spawn()
                .with_context(|| format!("starting node{index}"))?;
            self.members.push((format!("node{index}"), child));
            self.wait_until_member(&dir, index).await?;
            progress.step(&format!("node{index} is a member"));
        }
        progress.step("waiting for every member to become a voter");
        self.wait_for_voters(size).await
    }

    fn member_command(&self, exe: &Path, index: usize, extra_args: &[String]) -> Command {
        let launcher = self
            .launchers
            .get(index.wrapping_sub(1))
            .filter(|l| !l.is_empty());
        let mut command = match launcher {
            Some(launcher) => {
                let mut command = Command::new(&launcher[0]);
                command.args(&launcher[1..]).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        command
            .arg("server")
            .arg("--data")
            .arg(Self::member_dir(&self.base, index))
            .arg("--advertise")
            .arg(self.member_ip(index))
            .arg("--name")
            .arg(format!("node{index}"));
        if !extra_args.iter().any(|a| a.starts_with("--worker-threads")) {
            command
                .arg("--worker-threads")
                .arg(worker_share(self.size).to_string());
        }
        command.args(extra_args);
        command
    }

    fn child_mut(&mut self, index: usize) -> anyhow::Result<&mut Child> {
        self.members
            .get_mut(index.wrapping_sub(1))
            .map(|(_, child)| child)
            .ok_or_else(|| anyhow!("no member node{index}"))
    }

    /// The process id of member `index` (1-based) while it runs.
    pub fn member_pid(&self, index: usize) -> Option<u32> {
        self.members.get(index.wrapping_sub(1))?.1.id()
    }

    /// SIGKILL member `index` and reap it.
    pub async fn kill_member(&mut self, index: usize) -> anyhow::Result<()> {
        let child = self.child_mut(index)?;
        child.kill().await.context("SIGKILL")
    }

    /// SIGTERM member `index`, SIGKILL after 10 s.
    pub async fn stop_member(&mut self, index: usize) -> anyhow::Result<()> {
        let child = self.child_mut(index)?;
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on a pid we spawned and still own (not yet reaped).
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            child.kill().await.context("SIGKILL after SIGTERM")?;
        }
        Ok(())
    }

    /// Starts a stopped member `index` again on its data dir (its log is appended to).
    pub fn restart_member(&mut self, index: usize) -> anyhow::Result<()> {
        let command = self.member_command(&self.exe, index, &self.extra_args);
        self.respawn(index, command)
    }

    /// Runs `command` as stopped member `index`'s new process, appending to its log.
    fn respawn(&mut self, index: usize, mut command: Command) -> anyhow::Result<()> {
        if self.member_pid(index).is_some() {
            bail!("node{index} is still running");
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.base.join(format!("node{index}.log")))?;
        command
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting node{index} again"))?;
        *self.child_mut(index)? = child;
        Ok(())
    }

    /// Removes member `index` from the cluster the way an operator does: `skiff server
    /// --remove NAME --data DIR` with member `via`'s data dir, so the request goes through
    /// `via`'s admin API (forwarded to the leader). Returns the raft id the member had.
    pub async fn remove_member(&self, index: usize, via: usize) -> anyhow::Result<u64> {
        let identity = NodeIdentity::load(&Self::member_dir(&self.base, index))?
            .ok_or_else(|| anyhow!("node{index} holds no member"))?;
        let removal = Command::new(&self.exe)
            .arg("server")
            .arg("--remove")
            .arg(&identity.name)
            .arg("--data")
            .arg(Self::member_dir(&self.base, via))
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), removal)
            .await
            .map_err(|_| anyhow!("skiff server --remove {} took over 30 s", identity.name))?
            .context("running skiff server --remove")?;
        if !output.status.success() {
            bail!(
                "skiff server --remove {} via node{via}: {}",
                identity.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(identity.node_id)
    }

    /// Starts stopped member `index` from an empty data dir as a new member that joins through
    /// member `via` with the cluster's join token. Returns once the cluster admitted it (it
    /// wrote its identity), with its new raft id; promotion to voter follows by itself.
    pub async fn rejoin_member(&mut self, index: usize, via: usize) -> anyhow::Result<u64> {
        if self.member_pid(index).is_some() {
            bail!("node{index} is still running");
        }
        let dir = Self::member_dir(&self.base, index);
        let token = load_token(&Self::member_dir(&self.base, via))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("wiping {}", dir.display())),
        }
        std::fs::create_dir_all(&dir)?;
        let mut command = self.member_command(&self.exe, index, &self.extra_args);
        command
            .arg("--join")
            .arg(format!("https://{}:6443", self.member_ip(via)))
            .arg("--token")
            .arg(token.to_string());
        self.respawn(index, command)?;
        self.wait_until_member(&dir, index).await?;
        let identity =
            NodeIdentity::load(&dir)?.ok_or_else(|| anyhow!("node{index} has no identity"))?;
        Ok(identity.node_id)
    }

    /// Whether member `index`'s current raft id is a voter, as member `via` sees the cluster.
    pub async fn is_voter(&self, index: usize, via: usize) -> anyhow::Result<bool> {
        let Some(identity) = NodeIdentity::load(&Self::member_dir(&self.base, index))? else {
            return Ok(false);
        };
        let via_dir = Self::member_dir(&self.base, via);
        let via_identity =
            NodeIdentity::load(&via_dir)?.ok_or_else(|| anyhow!("node{via} has no identity"))?;
        let pki = PkiPaths::new(&via_dir).load()?;
        let addr = self.admin_addr.as_deref().unwrap_or(&via_identity.api_addr);
        let mut client = admin_client(addr, &pki.ca.cert_pem, Some(&pki.admin)).await?;
        let status = tokio::time::timeout(Duration::from_secs(3), client.status(StatusRequest {}))
            .await
            .map_err(|_| anyhow!("node{via}'s status timed out"))?
            .map_err(|s| anyhow!("node{via}'s status: {}", s.message()))?
            .into_inner();
        Ok(status
            .members
            .iter()
            .any(|m| m.node_id == identity.node_id && m.voter))
    }

    async fn wait_until_member(&mut self, dir: &Path, index: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while NodeIdentity::load(dir)?.is_none() {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("node{index} did not become a member within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub fn pki(&self) -> anyhow::Result<MemberPki> {
        Ok(PkiPaths::new(&Self::member_dir(&self.base, 1)).load()?)
    }

    async fn wait_for_voters(&mut self, expected: usize) -> anyhow::Result<()> {
        let dir = Self::member_dir(&self.base, 1);
        let identity = NodeIdentity::load(&dir)?.ok_or_else(|| anyhow!("node1 has no identity"))?;
        let pki = self.pki()?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.check_alive()?;
            let addr = self.admin_addr.as_deref().unwrap_or(&identity.api_addr);
            if let Ok(mut client) = admin_client(addr, &pki.ca.cert_pem, Some(&pki.admin)).await
                && let Ok(status) = client.status(StatusRequest {}).await
            {
                let status = status.into_inner();
                if status.leader_id != 0
                    && status.members.iter().filter(|m| m.voter).count() >= expected
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the cluster did not reach {expected} voters within 90 s");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The member (1-based) that leads now: the one running the controllers and the
    /// scheduler, which a benchmark profiles and reports on.
    pub async fn leader_index(&self) -> anyhow::Result<usize> {
        let pki = self.pki()?;
        for index in 1..=self.members.len() {
            let dir = Self::member_dir(&self.base, index);
            let Some(identity) = NodeIdentity::load(&dir)? else {
                continue;
            };
            let addr = self.admin_addr.as_deref().unwrap_or(&identity.api_addr);
            let mut client = admin_client(addr, &pki.ca.cert_pem, Some(&pki.admin)).await?;
            let status = client.status(StatusRequest {}).await?.into_inner();
            if status.leader_id != 0 && status.leader_id == status.node_id {
                return Ok(index);
            }
        }
        bail!("no member says it leads")
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in self.members.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "{name} exited during start-up ({status}); see {}/{name}.log",
                    self.base.display()
                );
            }
        }
        Ok(())
    }

    /// Returns the name of a member that exited, or None on Ctrl-C/SIGTERM.
    pub async fn wait_for_exit(&mut self) -> Option<String> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return None,
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => return None,
                _ = tick.tick() => {
                    for (name, child) in self.members.iter_mut() {
                        if let Ok(Some(_)) = child.try_wait() {
                            return Some(name.clone());
                        }
                    }
                }
            }
        }
    }

    /// SIGTERM every member (each shuts raft down cleanly), SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        for (_, child) in self.members.iter_mut() {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on a pid we spawned and still own (not yet reaped).
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        for (_, child) in self.members.iter_mut() {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.members.clear();
    }
}

/// Worker threads for each of `members` members sharing this machine: its cores split evenly,
/// at least one. More workers than cores only add wake-ups and context switches.
fn worker_share(members: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / members.max(1)).max(1)
}
