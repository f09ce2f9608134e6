//! skiff: one binary for every role of a Raft-native Kubernetes distribution.
//! This file only sets up logging and TLS, parses the command line and hands over.

mod agent;
mod apiclient;
mod apiserver;
mod backup;
mod bench;
mod cli;
mod controllers;
mod dns_feed;
mod dns_probe;
mod etcd;
mod ingress;
mod json_path;
mod kubeconfig;
mod nodeapi;
mod pki;
mod procfs;
mod progress;
mod proxy;
mod registry;
mod server;
mod spdy;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Logs to stderr in the chosen format, filtered by SKIFF_LOG (default info).
fn init_logging(format: cli::LogFormat) {
    // SAFETY: no other thread exists yet (the async runtime starts later), so nothing reads
    // the environment concurrently. Processes this one starts (`skiff up`'s members and
    // agents, benchmarks') inherit the format through it.
    unsafe { std::env::set_var("SKIFF_LOG_FORMAT", format.as_str()) };
    let mut filter = EnvFilter::try_from_env("SKIFF_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    // hickory-server logs every DNS query at info (an access log): off unless named in SKIFF_LOG.
    if !std::env::var("SKIFF_LOG").is_ok_and(|v| v.contains("hickory"))
        && let Ok(quiet) = "hickory_server=warn".parse()
    {
        filter = filter.add_directive(quiet);
    }
    // Colours only for a terminal: log files and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => builder.init(),
        // The event's fields at the top level, and every enclosing span with its fields, so a
        // line carries its request's request_id without a lookup.
        cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    init_logging(args.log_format);
    if args.command.only_prints() {
        // SAFETY: no other thread exists yet; restoring a signal's default disposition has no
        // other effect on this process.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    // Forked while this process still has one thread (see agent::Reaper).
    let reaper = match &args.command {
        cli::Command::Agent(agent) if agent.runtime == agent::RuntimeKind::Process => {
            agent::Reaper::fork_before_threads()
        }
        _ => agent::Reaper::none(),
    };
    let mut builder = match args.command.runtime_shape() {
        cli::RuntimeShape::SingleThread => tokio::runtime::Builder::new_current_thread(),
        cli::RuntimeShape::Workers(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads.max(1));
            builder
        }
        cli::RuntimeShape::OnePerCore => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match args.command {
            cli::Command::Server(args) => server::run(*args).await,
            cli::Command::Status(args) => cli::status::run(args).await,
            cli::Command::Doctor(args) => cli::doctor::run(args).await,
            cli::Command::Up(args) => cli::up::run(args).await,
            cli::Command::Bench(cli::BenchCommand::Store(args)) => bench::store::run(args).await,
            cli::Command::Bench(cli::BenchCommand::Api(args)) => bench::api::run(args).await,
            cli::Command::Bench(cli::BenchCommand::Ingress(args)) => {
                bench::ingress::run(args).await
            }
            cli::Command::Bench(cli::BenchCommand::Endpoints(args)) => {
                bench::endpoints::run(args).await
            }
            cli::Command::Bench(cli::BenchCommand::Pods(args)) => bench::pods::run(args).await,
            cli::Command::Bench(cli::BenchCommand::Scheduler(args)) => {
                bench::scheduler::run(args).await
            }
            cli::Command::Bench(cli::BenchCommand::Backup(args)) => bench::backup::run(args).await,
            cli::Command::Backup(args) => cli::backup::run_backup(args).await,
            cli::Command::Restore(args) => cli::backup::run_restore(args).await,
            cli::Command::Chaos(command) => cli::chaos::run(command).await,
            cli::Command::Kubeconfig(args) => cli::kubeconfig::run(args),
            cli::Command::Agent(args) => agent::run(*args, reaper).await,
            cli::Command::Completion(args) => {
                cli::print_completion(&args);
                Ok(())
            }
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
