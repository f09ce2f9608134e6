//! `skiff up`: a local control plane of N members on 127.0.0.1..N, one child process each,
//! with ./skiff.kubeconfig written and everything stopped cleanly on Ctrl-C.
//! (The agents join here once the agent issue lands.)

use anyhow::{Context, anyhow, bail};

use crate::cli::UpArgs;
use crate::cli::local_cluster::LocalCluster;
use crate::pki::write_file;
use crate::progress::Progress;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    let progress = Progress::spinner(&format!("starting {} control-plane members", args.nodes));
    let mut cluster =
        LocalCluster::start(&args.data, "127.0.0.", args.nodes as usize, &[], &progress).await?;
    let data1 = LocalCluster::member_dir(&args.data, 1);
    let kubeconfig =
        std::fs::read(data1.join("admin.kubeconfig")).context("reading the admin kubeconfig")?;
    write_file(&args.kubeconfig, &kubeconfig, true)?;
    progress.finish(&format!("{} members up", args.nodes));
    println!(
        "skiff is up: {} control-plane members on 127.0.0.1..{}",
        args.nodes, args.nodes
    );
    println!("  kubeconfig:  {}", args.kubeconfig.display());
    println!("  status:      skiff status --data {}", data1.display());
    println!(
        "  etcdctl:     ETCDCTL_API=3 etcdctl --endpoints https://127.0.0.1:2379 --cacert {0}/pki/ca.crt --cert {0}/pki/admin.crt --key {0}/pki/admin.key get / --prefix",
        data1.display()
    );
    println!("  logs:        {}/node*.log", args.data.display());
    println!("Press Ctrl-C to stop.");
    let exited = cluster.wait_for_exit().await;
    cluster.stop().await;
    eprintln!("stopped");
    match exited {
        Some(name) => Err(anyhow!(
            "member {name} exited unexpectedly; see {}/{name}.log",
            args.data.display()
        )),
        None => Ok(()),
    }
}
