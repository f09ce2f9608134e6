//! The command line: every role of the one binary.

pub mod backup;
pub mod chaos;
pub mod doctor;
pub mod doctor_checks;
pub mod kubeconfig;
pub mod local_cluster;
pub mod status;
pub mod status_objects;
pub mod up;
pub mod up_hosts;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "skiff",
    version,
    about = "A Raft-native Kubernetes distribution in one binary"
)]
pub struct Cli {
    /// Log lines on stderr: text, or json (one object per line with the span's fields, such
    /// as an API request's request_id). Passed on to the processes `skiff up` starts.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SKIFF_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a control-plane member (replicated store, etcd-compatible API, admin API).
    Server(Box<ServerArgs>),
    /// Show the cluster's members, leader, terms, indexes and revisions.
    Status(StatusArgs),
    /// Check quorum, leader, clock skew, disk fsync latency and space, certificates' expiry
    /// and store size; say what to do. Exits non-zero when a check fails.
    Doctor(doctor::DoctorArgs),
    /// Start a local cluster (3 members, 2 agents) and stop it on Ctrl-C.
    Up(UpArgs),
    /// Benchmarks against a peer system run side by side.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Back up the store (`--out FILE`), or verify, list and prune backups.
    Backup(backup::BackupArgs),
    /// Create a new single-member cluster from a backup.
    Restore(backup::RestoreArgs),
    /// Fault injection with linearizability and watch checkers (see `skiff chaos list`).
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// Print a kubeconfig for a user (a client certificate from the cluster CA).
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Run a node agent (kubelet): joins with the token, registers the node, runs its pods.
    Agent(Box<crate::agent::AgentArgs>),
    /// Print a shell completion script: `source <(skiff completion bash)`.
    Completion(CompletionArgs),
}

impl Command {
    /// Commands that only print to stdout and touch no socket: like `ls` or `cat`, they should end
    /// quietly when the reader of a pipe goes away (`skiff backup verify F | head`). Rust ignores
    /// SIGPIPE, which turns that into a panic in `println!`; servers and network clients keep
    /// ignoring it so a peer that hangs up can never kill them.
    pub fn only_prints(&self) -> bool {
        match self {
            Command::Backup(args) => matches!(
                args.command,
                Some(backup::BackupCommand::Verify { .. } | backup::BackupCommand::Ls { .. })
            ),
            Command::Chaos(chaos::ChaosCommand::List) | Command::Completion(_) => true,
            _ => false,
        }
    }

    /// The async runtime this command runs on. The store benchmark's load generator runs on
    /// one thread by default: on a multi-threaded runtime a closed-loop client spends CPU
    /// waking and parking workers, CPU the measured members then lack on a 2-core machine.
    pub fn runtime_shape(&self) -> RuntimeShape {
        match self {
            Command::Bench(BenchCommand::Store(args)) if args.client_threads <= 1 => {
                RuntimeShape::SingleThread
            }
            Command::Bench(BenchCommand::Store(args)) => RuntimeShape::Workers(args.client_threads),
            Command::Server(args) => args.worker_threads.map_or(RuntimeShape::OnePerCore, |n| {
                RuntimeShape::Workers(n.into())
            }),
            _ => RuntimeShape::OnePerCore,
        }
    }
}

/// How many threads run a command's async tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeShape {
    /// Tokio's default: a worker per core.
    OnePerCore,
    /// A multi-threaded runtime with this many workers.
    Workers(usize),
    /// Everything on the main thread (blocking work still goes to the blocking pool).
    SingleThread,
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `shell` to stdout.
pub fn print_completion(args: &CompletionArgs) {
    use clap::CommandFactory;
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "skiff", &mut std::io::stdout());
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// 3-member skiff vs 3-member etcd 3.4 over the etcd v3 protocol.
    Store(crate::bench::store::StoreBenchArgs),
    /// The Kubernetes REST API of a 3-member cluster: create/get/list latency, max create
    /// rate, watch fan-out, member RSS.
    Api(crate::bench::api::ApiBenchArgs),
    /// Backup and restore throughput beside etcdctl snapshot save/restore on the same data.
    Backup(crate::bench::backup::BackupBenchArgs),
    /// EndpointSlice change -> cluster DNS answer and -> nftables rule, p50/p99 (root).
    Endpoints(crate::bench::endpoints::EndpointsBenchArgs),
    /// Pod startup latency (created -> Running and ready, seen by watch) and agent RSS.
    Pods(crate::bench::pods::PodsBenchArgs),
    /// wrk through the built-in ingress vs straight to the pod: requests/s and p99 (root, wrk).
    Ingress(crate::bench::ingress::IngressBenchArgs),
    /// Pods scheduled per second onto fake nodes (bare pods and a Deployment), create ->
    /// bound latency, member RSS.
    Scheduler(crate::bench::scheduler::SchedulerBenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Create a new cluster with this node as its first member.
    #[arg(long, conflicts_with_all = ["join", "remove"])]
    pub init: bool,
    /// Join the cluster served at this URL (https://ADDR:6443).
    #[arg(long, requires = "token", conflicts_with = "remove")]
    pub join: Option<String>,
    /// The join token printed by `skiff server --init` (also in DATA/token).
    #[arg(long, env = "SKIFF_TOKEN")]
    pub token: Option<String>,
    /// Remove a member (by name or id) from the cluster this data dir belongs to, then exit.
    #[arg(long, value_name = "NODE")]
    pub remove: Option<String>,
    /// Data directory (PKI, token, kubeconfig, RocksDB).
    #[arg(long, default_value = "./skiff-data")]
    pub data: PathBuf,
    /// The IP other members and clients reach this node at.
    #[arg(long, default_value = "127.0.0.1")]
    pub advertise: String,
    /// Member name (default: node-<advertise>).
    #[arg(long)]
    pub name: Option<String>,
    /// Worker threads of the member's async runtime (default: one per core). Members that
    /// share a machine should split its cores: `skiff up` gives each its share. Two workers
    /// per member with three members on two cores cost ~40 us more member CPU per request
    /// (122 against 86), spent waking and parking workers (perf stat over `skiff bench store`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// API/agent/admin listen address (default ADVERTISE:6443).
    #[arg(long)]
    pub api_listen: Option<SocketAddr>,
    /// etcd-compatible client listen address (default ADVERTISE:2379).
    #[arg(long)]
    pub client_listen: Option<SocketAddr>,
    /// Raft peer listen address (default ADVERTISE:2380).
    #[arg(long)]
    pub raft_listen: Option<SocketAddr>,
    /// Largest accepted client request, as etcd's --max-request-bytes.
    #[arg(long, default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Bearer tokens for the Kubernetes API: a CSV of `token,user,uid,"group1,group2"`
    /// (kube-apiserver's --token-auth-file).
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// Raft heartbeat interval in milliseconds, as etcd's --heartbeat-interval. openraft also
    /// gives each AppendEntries this long to answer, so set it above the largest round trip
    /// between members (members ~100 ms apart accept no writes with the default).
    #[arg(long, default_value_t = 100, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub heartbeat_interval: u64,
    /// Raft election timeout in milliseconds, as etcd's --election-timeout: a follower that
    /// hears nothing from the leader for between this and 5/3 of it campaigns. Must be at
    /// least twice the heartbeat interval.
    #[arg(long, default_value_t = 300, value_name = "MS", value_parser = clap::value_parser!(u64).range(20..=60_000))]
    pub election_timeout: u64,
    /// Build a raft snapshot after this many log entries.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_after_logs: u64,
    /// Log entries kept below the last snapshot for lagging followers.
    #[arg(long, default_value_t = 1_000)]
    pub logs_to_keep: u64,
    /// Keep at least this much watch history (seconds).
    #[arg(long, default_value_t = 300)]
    pub history_retention_secs: u64,
    /// Keep at least this many revisions of watch history.
    #[arg(long, default_value_t = 1_000)]
    pub history_min_revisions: i64,
    /// How often the leader considers compacting history (seconds).
    #[arg(long, default_value_t = 30)]
    pub compaction_interval_secs: u64,
    #[command(flatten)]
    pub snapshots: backup::SnapshotScheduleArgs,
    /// Where cluster DNS listens (UDP and TCP): IP:PORT, :PORT (on the advertised address), or
    /// "off". Default: <advertise>:53, skipped with a warning when that cannot be bound (not
    /// root).
    #[arg(long, value_name = "ADDR|off")]
    pub cluster_dns_listen: Option<String>,
    /// The cluster domain DNS answers for.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// A DNS server (IP or IP:port) non-cluster names are forwarded to; repeatable. Without one
    /// they are refused.
    #[arg(long, value_name = "ADDR")]
    pub dns_upstream: Vec<String>,
    /// Addresses for LoadBalancer Services (A-B ranges or CIDRs, comma-separated), announced
    /// by one Ready node each. Without a pool they get the Ready nodes' own addresses.
    #[arg(long, value_name = "RANGE")]
    pub service_lb_pool: Option<crate::controllers::service_lb::AddressPool>,
}

impl ServerArgs {
    /// The raft tunables these flags ask for; refuses timings raft cannot work with.
    pub fn tuning(&self) -> anyhow::Result<skiff_raft::RaftTuning> {
        if self.election_timeout < 2 * self.heartbeat_interval {
            anyhow::bail!(
                "--election-timeout ({} ms) must be at least twice --heartbeat-interval ({} ms)",
                self.election_timeout,
                self.heartbeat_interval
            );
        }
        Ok(skiff_raft::RaftTuning {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            election_timeout_min: Duration::from_millis(self.election_timeout),
            election_timeout_max: Duration::from_millis(self.election_timeout * 5 / 3),
            snapshot_after_logs: self.snapshot_after_logs,
            logs_to_keep_after_snapshot: self.logs_to_keep,
            history_retention: Duration::from_secs(self.history_retention_secs),
            history_min_revisions: self.history_min_revisions,
            compaction_interval: Duration::from_secs(self.compaction_interval_secs.max(1)),
            // SKIFF_FAST_ELECTIONS=0 leaves elections to openraft's own timer (to compare).
            fast_elections: std::env::var("SKIFF_FAST_ELECTIONS").map_or(true, |v| v != "0"),
            ..Default::default()
        })
    }
}

/// Which cluster to ask, and with which admin credentials (status, doctor, backup).
#[derive(Args, Debug, Clone)]
pub struct AdminTargetArgs {
    /// Data directory of a member (its admin credentials and address are used).
    #[arg(long, default_value = "./skiff-data")]
    pub data: PathBuf,
    /// Ask this API address instead of the data dir's own member (ADDR:6443 or https://ADDR:6443).
    #[arg(long)]
    pub server: Option<String>,
    /// Use this admin kubeconfig's credentials and server instead of --data.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

impl AdminTargetArgs {
    pub fn resolve(&self) -> anyhow::Result<crate::backup::selective::Target> {
        crate::backup::save::admin_target(
            &self.data,
            self.server.as_deref(),
            self.kubeconfig.as_deref(),
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: AdminTargetArgs,
    /// Output format: table or json.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpRuntime {
    Auto,
    Containerd,
    Process,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Where the members keep their data (one folder per member).
    #[arg(long, default_value = "./skiff-up")]
    pub data: PathBuf,
    /// Number of control-plane members (on 127.0.0.1..N).
    #[arg(long, default_value_t = 3)]
    pub nodes: u8,
    /// Number of node agents.
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// containerd (root: network-namespace hosts, real containers), process (loopback, host
    /// processes) or auto (containerd when it can run here).
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: UpRuntime,
    /// Where to write the kubeconfig.
    #[arg(long, default_value = "./skiff.kubeconfig")]
    pub kubeconfig: PathBuf,
    /// Also merge a `skiff` context into ~/.kube/config (or $KUBECONFIG's first file).
    #[arg(long)]
    pub merge_kubeconfig: bool,
    /// Stop a running `skiff up` on --data and remove its data and kubeconfig.
    #[arg(long)]
    pub down: bool,
}
