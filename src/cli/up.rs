//! `skiff up`: a whole local cluster from one command — N control-plane members and M node
//! agents, ./skiff.kubeconfig written, and a wait until every node is Ready and cluster DNS
//! answers. Two layouts, and it says which:
//! - containerd (root, with containerd/runc/CNI/nftables installed): hosts made of network
//!   namespaces (`up_hosts`), real containers from locally built images, real pod networking
//!   and Service routing; kubectl reaches the API through a relay on 127.0.0.1:6443;
//! - process (anyone, nothing to install): members on 127.0.0.1..N, agents on 127.0.0.11..
//!   running containers' commands as host processes.
//!
//! Ctrl-C stops agents then members cleanly; `skiff up --down` stops a running `skiff up`
//! (through its pid file) and removes what it made. A member or agent that dies ends
//! `skiff up` with the name of its log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hyper::Method;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::apiclient::ApiClient;
use crate::cli::local_cluster::LocalCluster;
use crate::cli::up_hosts::{self, UpHosts};
use crate::cli::{UpArgs, UpRuntime};
use crate::pki::write_file;
use crate::progress::Progress;

/// Where members listen: 127.0.0.<index>.
const MEMBER_PREFIX: &str = "127.0.0.";
/// Without root, port 53 cannot be bound: cluster DNS listens here instead.
const UNPRIVILEGED_DNS_PORT: u16 = 10053;
/// How long nodes get to become Ready (the first-hour goal is 60 s).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Where kubectl reaches the API in the containerd layout.
const RELAY: &str = "127.0.0.1:6443";
/// The name whose answer shows cluster DNS works.
const PROBE_NAME: &str = "kubernetes.default.svc.cluster.local";

fn pid_file(data: &Path) -> PathBuf {
    data.join("up.pid")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and no memory effects.
    unsafe { libc::geteuid() == 0 }
}

/// Where the members and agents live.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Network-namespace hosts with containerd.
    Containerd,
    /// Loopback addresses with the process runtime.
    Process,
}

impl Layout {
    fn choose(wanted: UpRuntime) -> anyhow::Result<(Layout, Option<String>)> {
        let missing = up_hosts::unavailable();
        match (wanted, missing) {
            (UpRuntime::Process, _) => Ok((Layout::Process, None)),
            (UpRuntime::Containerd, Some(why)) => bail!("--runtime containerd: {why}"),
            (_, None) => Ok((Layout::Containerd, None)),
            (UpRuntime::Auto, Some(why)) => Ok((Layout::Process, Some(why))),
        }
    }

    fn member_prefix(self) -> String {
        match self {
            Layout::Containerd => up_hosts::member_prefix(),
            Layout::Process => MEMBER_PREFIX.to_string(),
        }
    }

    /// Agent `i` (1-based): its name and address.
    fn agent(self, i: usize) -> (String, String) {
        let address = match self {
            Layout::Containerd => up_hosts::agent_ip(i),
            Layout::Process => format!("{MEMBER_PREFIX}{}", 10 + i),
        };
        (format!("agent{i}"), address)
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.down {
        return down(&args).await;
    }
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    if args.agents > 50 {
        bail!("--agents must be at most 50");
    }
    if let Some(pid) = running_up(&args.data) {
        bail!(
            "a skiff up is already running on {} (pid {pid}); stop it with Ctrl-C or `skiff up --down`",
            args.data.display()
        );
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    write_file(
        &pid_file(&args.data),
        std::process::id().to_string().as_bytes(),
        false,
    )?;
    let result = serve(&args).await;
    let _ = std::fs::remove_file(pid_file(&args.data));
    result
}

/// A local cluster made by `skiff up`'s machinery: members, agents and (containerd layout)
/// the hosts they run on. `skiff bench pods` uses it too.
pub struct LocalUp {
    pub cluster: LocalCluster,
    agents: Agents,
    hosts: Option<UpHosts>,
    layout: Layout,
    dns_port: u16,
    /// Where this process (and kubectl) reach the API.
    pub api_address: String,
}

impl LocalUp {
    /// Picks the layout, makes the hosts, starts members and agents and waits until every
    /// node is Ready (and says whether DNS answers). Ctrl-C during start-up abandons it.
    pub async fn start(args: &UpArgs, progress: &Progress) -> anyhow::Result<LocalUp> {
        let (layout, fallback) = Layout::choose(args.runtime)?;
        let dns_port = if is_root() { 53 } else { UNPRIVILEGED_DNS_PORT };
        let what = match layout {
            Layout::Containerd => "network-namespace hosts, containerd".to_string(),
            Layout::Process => format!(
                "loopback, process runtime{}",
                fallback
                    .map(|why| format!("; containerd mode needs root and containerd: {why}"))
                    .unwrap_or_default()
            ),
        };
        progress.step(&format!(
            "starting {} control-plane members and {} agents ({what})",
            args.nodes, args.agents
        ));
        let hosts = match layout {
            Layout::Containerd => {
                progress.step("making the hosts (network namespaces) and building the images");
                let hosts = UpHosts::create(&args.data, args.nodes as usize, args.agents)?;
                if let Err(e) = up_hosts::build_images(&args.data.join("images")) {
                    hosts.remove();
                    return Err(e);
                }
                Some(hosts)
            }
            Layout::Process => None,
        };
        let started = tokio::select! {
            started = start_all(args, layout, dns_port, progress) => started,
            _ = crate::server::shutdown_signal() => Err(anyhow!("interrupted during start-up")),
        };
        match started {
            Ok((cluster, agents, api_address)) => Ok(LocalUp {
                cluster,
                agents,
                hosts,
                layout,
                dns_port,
                api_address,
            }),
            Err(e) => {
                if let Some(hosts) = hosts {
                    hosts.remove();
                }
                Err(e)
            }
        }
    }

    /// An admin client of the API.
    pub async fn client(&self) -> anyhow::Result<ApiClient> {
        client(&self.cluster, &self.api_address).await
    }

    /// "containerd" or "process".
    pub fn runtime_name(&self) -> &'static str {
        match self.layout {
            Layout::Containerd => "containerd",
            Layout::Process => "process",
        }
    }

    /// The agents' process ids (for their RSS).
    pub fn agent_pids(&self) -> Vec<Option<u32>> {
        self.agents.iter().map(|(_, child)| child.id()).collect()
    }

    /// Until Ctrl-C/SIGTERM (None) or a member or agent dies (its name).
    async fn wait_for_exit(&mut self) -> Option<String> {
        tokio::select! {
            member = self.cluster.wait_for_exit() => member,
            agent = wait_for_agent_exit(&mut self.agents) => Some(agent),
        }
    }

    /// Agents, then members, then the hosts.
    pub async fn stop(mut self) {
        stop_agents(&mut self.agents).await;
        self.cluster.stop().await;
        if let Some(hosts) = self.hosts.take() {
            hosts.remove();
        }
    }
}

async fn serve(args: &UpArgs) -> anyhow::Result<()> {
    let progress = Progress::spinner("skiff up");
    let mut up = LocalUp::start(args, &progress).await?;
    progress.step("ready");
    print_next_steps(args, up.layout, &up.cluster, up.dns_port);
    let exited = up.wait_for_exit().await;
    eprintln!("stopping agents and members");
    up.stop().await;
    eprintln!("stopped");
    match exited {
        Some(name) => Err(anyhow!(
            "{name} exited unexpectedly; see {}/{name}.log",
            args.data.display()
        )),
        None => Ok(()),
    }
}

type Agents = Vec<(String, Child)>;

/// Members, then (with the kubeconfig written) agents, then the wait for Ready nodes and DNS.
async fn start_all(
    args: &UpArgs,
    layout: Layout,
    dns_port: u16,
    progress: &Progress,
) -> anyhow::Result<(LocalCluster, Agents, String)> {
    // Every member's DNS on its own address; port 53 needs root.
    let member_args = vec!["--cluster-dns-listen".to_string(), format!(":{dns_port}")];
    let prefix = layout.member_prefix();
    let size = args.nodes as usize;
    let (mut cluster, api_address) = match layout {
        Layout::Containerd => {
            // kubectl (and this process) reach the members through the relay.
            let targets = (1..=size)
                .filter_map(|i| format!("{prefix}{i}:6443").parse().ok())
                .collect();
            up_hosts::relay(RELAY.parse()?, targets).await?;
            let launchers = vec![UpHosts::launcher("cp"); size];
            let cluster = LocalCluster::start_relayed(
                &args.data,
                &prefix,
                size,
                &member_args,
                launchers,
                RELAY,
                progress,
            )
            .await?;
            (cluster, RELAY.to_string())
        }
        Layout::Process => {
            let cluster =
                LocalCluster::start(&args.data, &prefix, size, &member_args, progress).await?;
            (cluster, format!("{prefix}1:6443"))
        }
    };
    let mut agents = Vec::new();
    let outcome = async {
        write_kubeconfigs(
            args,
            &cluster,
            &api_address,
            layout == Layout::Containerd,
            progress,
        )?;
        let servers: Vec<String> = (1..=size)
            .map(|i| format!("https://{}:6443", cluster.member_ip(i)))
            .collect();
        let data1 = LocalCluster::member_dir(&args.data, 1);
        let token = std::fs::read_to_string(data1.join("token")).context("reading the token")?;
        for i in 1..=args.agents {
            let (name, address) = layout.agent(i);
            progress.step(&format!("starting {name} on {address}"));
            let agent = start_agent(args, layout, i, &name, &address, &servers, token.trim())?;
            agents.push((name, agent));
        }
        let api = client(&cluster, &api_address).await?;
        wait_until_ready(&api, args.agents, &mut agents, progress).await?;
        let dns: SocketAddr = format!("{}:{dns_port}", cluster.member_ip(1)).parse()?;
        let answered = dns_answers(layout, dns).await;
        progress.step(if answered {
            "cluster DNS answers"
        } else {
            "cluster DNS did not answer (see the member logs)"
        });
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = outcome {
        stop_agents(&mut agents).await;
        cluster.stop().await;
        return Err(e);
    }
    Ok((cluster, agents, api_address))
}

/// ./skiff.kubeconfig (pointing at `api_address`), and the user's merged one when asked; with
/// `relayed`, the members' admin kubeconfigs point at the relay as well.
fn write_kubeconfigs(
    args: &UpArgs,
    cluster: &LocalCluster,
    api_address: &str,
    relayed: bool,
    progress: &Progress,
) -> anyhow::Result<()> {
    let pki = cluster.pki()?;
    let kubeconfig = crate::kubeconfig::render(
        "skiff",
        &format!("https://{api_address}"),
        &pki.ca.cert_pem,
        &pki.admin.cert_pem,
        &pki.admin.key_pem,
    );
    write_file(&args.kubeconfig, kubeconfig.as_bytes(), true)?;
    if relayed {
        // Each member wrote DATA/admin.kubeconfig with its in-namespace address, which this
        // host cannot reach; `skiff kubeconfig --data` and `skiff backup --data` read the
        // server from there, so point it at the relay too.
        for i in 1..=args.nodes as usize {
            let path = LocalCluster::member_dir(&args.data, i).join("admin.kubeconfig");
            write_file(&path, kubeconfig.as_bytes(), true)?;
        }
    }
    if args.merge_kubeconfig {
        let merged = crate::kubeconfig::merge_into_user_config(kubeconfig.as_bytes(), "skiff")?;
        progress.step(&format!("merged context skiff into {}", merged.display()));
    }
    Ok(())
}

fn start_agent(
    args: &UpArgs,
    layout: Layout,
    index: usize,
    name: &str,
    address: &str,
    servers: &[String],
    token: &str,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(args.data.join(format!("{name}.log")))?;
    let exe = std::env::current_exe().context("locating the skiff binary")?;
    let mut command = match layout {
        Layout::Containerd => {
            let launcher = UpHosts::launcher(&format!("n{index}"));
            let mut command = Command::new(&launcher[0]);
            command.args(&launcher[1..]).arg(exe);
            command
        }
        Layout::Process => Command::new(exe),
    };
    command
        .arg("agent")
        .arg("--server")
        .arg(servers.join(","))
        .args(["--token", token, "--name", name, "--address", address])
        .arg("--data")
        .arg(args.data.join(name));
    match layout {
        Layout::Containerd => {
            command
                .args(["--runtime", "containerd", "--netns"])
                .arg(UpHosts::ns_path(&format!("n{index}")))
                .arg("--import-images")
                .arg(args.data.join("images"));
        }
        Layout::Process => {
            command.args(["--runtime", "process"]);
        }
    }
    command
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

async fn client(cluster: &LocalCluster, api_address: &str) -> anyhow::Result<ApiClient> {
    let pki = cluster.pki()?;
    ApiClient::connect(api_address, &pki.ca.cert_pem, &pki.admin).await
}

/// Waits until `expected` Nodes are Ready, failing early when an agent exits.
async fn wait_until_ready(
    api: &ApiClient,
    expected: usize,
    agents: &mut [(String, Child)],
    progress: &Progress,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = usize::MAX;
    loop {
        for (name, child) in agents.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{name} exited during start-up ({status}); see its log");
            }
        }
        let ready = ready_nodes(api).await;
        if ready != last {
            progress.step(&format!("{ready}/{expected} nodes Ready"));
            last = ready;
        }
        if ready >= expected {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("only {ready} of {expected} nodes became Ready within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn ready_nodes(api: &ApiClient) -> usize {
    let Ok((status, body)) = api.call(Method::GET, "/api/v1/nodes", None).await else {
        return 0;
    };
    if !status.is_success() {
        return 0;
    }
    let list: Value = serde_json::from_slice(&body).unwrap_or_default();
    list.get("items")
        .and_then(Value::as_array)
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| crate::registry::node::is_ready(n))
                .count()
        })
        .unwrap_or(0)
}

/// Whether the member's DNS answers PROBE_NAME (retried for a few seconds), asked from where
/// the member lives.
async fn dns_answers(layout: Layout, server: SocketAddr) -> bool {
    for _ in 0..20 {
        let answer = match layout {
            Layout::Containerd => up_hosts::lookup_inside(server, PROBE_NAME).await,
            Layout::Process => crate::dns_probe::lookup_a(server, PROBE_NAME).await,
        };
        if !answer.is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

async fn wait_for_agent_exit(agents: &mut [(String, Child)]) -> String {
    if agents.is_empty() {
        return std::future::pending().await;
    }
    loop {
        for (name, child) in agents.iter_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                return name.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// SIGTERM every agent (its process-runtime pods die with it), SIGKILL after 10 s.
async fn stop_agents(agents: &mut [(String, Child)]) {
    for (_, child) in agents.iter() {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on a pid we spawned and still own (not yet reaped).
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
    for (_, child) in agents.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

fn print_next_steps(args: &UpArgs, layout: Layout, cluster: &LocalCluster, dns_port: u16) {
    let kubeconfig = args.kubeconfig.display();
    let (first_agent, last_agent) = (layout.agent(1).1, layout.agent(args.agents).1);
    let how = match layout {
        Layout::Containerd => format!(
            "with containerd (network namespaces {}*; the API is relayed to {RELAY})",
            UpHosts::ns("")
        ),
        Layout::Process => "(process runtime: containers run as host processes)".to_string(),
    };
    println!(
        "skiff is up: {} control-plane members on {}..{}, {} agents on {first_agent}..{last_agent} {how}",
        args.nodes,
        cluster.member_ip(1),
        cluster.member_ip(args.nodes as usize),
        args.agents,
    );
    println!("  kubectl --kubeconfig {kubeconfig} get nodes");
    println!(
        "  kubectl --kubeconfig {kubeconfig} run hello --image=busybox -- sh -c 'echo hello; sleep 3600'"
    );
    println!("  kubectl --kubeconfig {kubeconfig} logs hello");
    let dig = format!(
        "dig @{} -p {dns_port} kubernetes.default.svc.cluster.local",
        cluster.member_ip(1)
    );
    match layout {
        Layout::Containerd => println!("  ip netns exec {} {dig}", UpHosts::ns("cp")),
        Layout::Process => println!("  {dig}"),
    }
    println!(
        "  skiff status --data {} --server https://{}",
        LocalCluster::member_dir(&args.data, 1).display(),
        match layout {
            Layout::Containerd => RELAY.to_string(),
            Layout::Process => format!("{}:6443", cluster.member_ip(1)),
        }
    );
    println!("  logs: {}/*.log", args.data.display());
    println!("Press Ctrl-C to stop; `skiff up --down` removes everything.");
}

/// The pid of a `skiff up` running on `data`, if one is.
fn running_up(data: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(data))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive.then_some(pid)
}

/// `skiff up --down`: stops a running `skiff up` and removes its data and kubeconfig.
async fn down(args: &UpArgs) -> anyhow::Result<()> {
    if let Some(pid) = running_up(&args.data) {
        eprintln!("stopping the skiff up running as pid {pid}");
        // SAFETY: kill(2) with SIGTERM on the pid recorded by a running `skiff up`.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while running_up(&args.data).is_some() {
            if Instant::now() > deadline {
                bail!("pid {pid} did not stop within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Whatever a containerd-mode run left on its hosts (harmless when there is none).
    up_hosts::teardown(&args.data);
    if args.data.exists() {
        std::fs::remove_dir_all(&args.data)
            .with_context(|| format!("removing {}", args.data.display()))?;
        eprintln!("removed {}", args.data.display());
    }
    if args.kubeconfig.exists() {
        std::fs::remove_file(&args.kubeconfig)?;
        eprintln!("removed {}", args.kubeconfig.display());
    }
    Ok(())
}
