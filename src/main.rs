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
mod kubeconfig;
mod nodeapi;
mod pki;
mod progress;
mod proxy;
mod registry;
mod server;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let mut filter = EnvFilter::try_from_env("SKIFF_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    // hickory-server logs every DNS query at info (an access log): off unless named in SKIFF_LOG.
    if !std::env::var("SKIFF_LOG").is_ok_and(|v| v.contains("hickory"))
        && let Ok(quiet) = "hickory_server=warn".parse()
    {
        filter = filter.add_directive(quiet);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
            cli::Command::Bench(cli::BenchCommand::Backup(args)) => bench::backup::run(args).await,
            cli::Command::Backup(args) => cli::backup::run_backup(args).await,
            cli::Command::Restore(args) => cli::backup::run_restore(args).await,
            cli::Command::Chaos(command) => cli::chaos::run(command).await,
            cli::Command::Kubeconfig(args) => cli::kubeconfig::run(args),
            cli::Command::Agent(args) => agent::run(*args).await,
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
