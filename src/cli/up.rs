//! `skiff up`: a whole local cluster from one command — N control-plane members on
//! 127.0.0.1..N and M node agents on 127.0.0.11.. with the process runtime (no root, nothing
//! to install), ./skiff.kubeconfig written, and a wait until every node is Ready and cluster
//! DNS answers. Ctrl-C stops agents then members cleanly; `skiff up --down` stops a running
//! `skiff up` (through its pid file) and removes what it made.
//!
//! Members and agents are child processes with their logs under --data; a member or agent
//! that dies ends `skiff up` with the name of its log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hyper::Method;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::apiclient::ApiClient;
use crate::cli::UpArgs;
use crate::cli::local_cluster::LocalCluster;
use crate::pki::write_file;
use crate::progress::Progress;

/// Where members listen: 127.0.0.<index>.
const MEMBER_PREFIX: &str = "127.0.0.";
/// Without root, port 53 cannot be bound: cluster DNS listens here instead.
const UNPRIVILEGED_DNS_PORT: u16 = 10053;
/// How long nodes get to become Ready (the first-hour goal is 60 s).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn pid_file(data: &Path) -> PathBuf {
    data.join("up.pid")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and no memory effects.
    unsafe { libc::geteuid() == 0 }
}

/// Agent `i` (1-based): its name and address.
fn agent_identity(i: usize) -> (String, String) {
    (format!("agent{i}"), format!("{MEMBER_PREFIX}{}", 10 + i))
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

async fn serve(args: &UpArgs) -> anyhow::Result<()> {
    let root = is_root();
    let dns_port = if root { 53 } else { UNPRIVILEGED_DNS_PORT };
    let progress = Progress::spinner(&format!(
        "starting {} control-plane members and {} agents (loopback, process runtime)",
        args.nodes, args.agents
    ));
    // Every member's DNS on its own address; port 53 needs root.
    let member_args = vec!["--cluster-dns-listen".to_string(), format!(":{dns_port}")];
    let mut cluster = LocalCluster::start(
        &args.data,
        MEMBER_PREFIX,
        args.nodes as usize,
        &member_args,
        &progress,
    )
    .await?;
    let mut agents = Vec::new();
    let outcome = async {
        let data1 = LocalCluster::member_dir(&args.data, 1);
        let kubeconfig = std::fs::read(data1.join("admin.kubeconfig"))
            .context("reading the admin kubeconfig")?;
        write_file(&args.kubeconfig, &kubeconfig, true)?;
        if args.merge_kubeconfig {
            let merged = crate::kubeconfig::merge_into_user_config(&kubeconfig, "skiff")?;
            progress.step(&format!("merged context skiff into {}", merged.display()));
        }
        let servers: Vec<String> = (1..=args.nodes as usize)
            .map(|i| format!("https://{}:6443", cluster.member_ip(i)))
            .collect();
        let token = std::fs::read_to_string(data1.join("token")).context("reading the token")?;
        for i in 1..=args.agents {
            let (name, address) = agent_identity(i);
            progress.step(&format!("starting {name} on {address}"));
            agents.push((
                name.clone(),
                start_agent(args, &name, &address, &servers, token.trim())?,
            ));
        }
        let api = client(&cluster).await?;
        wait_until_ready(&api, args.agents, &mut agents, &progress).await?;
        if dns_answers(&cluster.member_ip(1), dns_port).await {
            progress.step("cluster DNS answers");
        } else {
            progress.step("cluster DNS did not answer (see the member logs)");
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = outcome {
        stop_agents(&mut agents).await;
        cluster.stop().await;
        return Err(e);
    }
    progress.finish("ready");
    print_next_steps(args, dns_port, root);
    let exited = tokio::select! {
        member = cluster.wait_for_exit() => member,
        agent = wait_for_agent_exit(&mut agents) => Some(agent),
    };
    eprintln!("stopping agents and members");
    stop_agents(&mut agents).await;
    cluster.stop().await;
    eprintln!("stopped");
    match exited {
        Some(name) => Err(anyhow!(
            "{name} exited unexpectedly; see {}/{name}.log",
            args.data.display()
        )),
        None => Ok(()),
    }
}

fn start_agent(
    args: &UpArgs,
    name: &str,
    address: &str,
    servers: &[String],
    token: &str,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(args.data.join(format!("{name}.log")))?;
    let exe = std::env::current_exe().context("locating the skiff binary")?;
    Command::new(exe)
        .arg("agent")
        .arg("--server")
        .arg(servers.join(","))
        .args(["--token", token, "--name", name, "--address", address])
        .arg("--data")
        .arg(args.data.join(name))
        .args(["--runtime", "process"])
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

async fn client(cluster: &LocalCluster) -> anyhow::Result<ApiClient> {
    let pki = cluster.pki()?;
    ApiClient::connect(
        &format!("{}:6443", cluster.member_ip(1)),
        &pki.ca.cert_pem,
        &pki.admin,
    )
    .await
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

/// Whether the member's DNS answers `kubernetes.default.svc.cluster.local`.
async fn dns_answers(ip: &str, port: u16) -> bool {
    let Ok(server) = format!("{ip}:{port}").parse::<std::net::SocketAddr>() else {
        return false;
    };
    for _ in 0..20 {
        let found =
            crate::dns_probe::lookup_a(server, "kubernetes.default.svc.cluster.local").await;
        if !found.is_empty() {
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

fn print_next_steps(args: &UpArgs, dns_port: u16, root: bool) {
    let kubeconfig = args.kubeconfig.display();
    println!(
        "skiff is up: {} control-plane members on 127.0.0.1..{}, {} agents on 127.0.0.11..{} (process runtime: containers run as host processes)",
        args.nodes,
        args.nodes,
        args.agents,
        10 + args.agents
    );
    println!("  kubectl --kubeconfig {kubeconfig} get nodes");
    println!(
        "  kubectl --kubeconfig {kubeconfig} run hello --image=busybox -- sh -c 'echo hello; sleep 3600'"
    );
    println!("  kubectl --kubeconfig {kubeconfig} logs hello");
    println!(
        "  dig @127.0.0.1 -p {dns_port} kubernetes.default.svc.cluster.local{}",
        if root { "" } else { "   (port 53 needs root)" }
    );
    println!(
        "  skiff status --data {}",
        LocalCluster::member_dir(&args.data, 1).display()
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
