//! Benchmarks that start members and agents (whose proxies program netfilter, whose ingress
//! takes ports 80/443) run in a private network namespace: the command re-executes itself
//! inside `unshare -n`, so nothing on the host's network changes and everything goes when it
//! ends.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::Method;

use crate::apiclient::ApiClient;
use crate::cli::local_cluster::LocalCluster;
use crate::progress::Progress;

/// The member's API inside the namespace.
pub const MEMBER_API: &str = "127.0.0.1:6443";

/// Runs `skiff bench <args>` inside a new network namespace and waits for it.
pub async fn run_unshared(args: Vec<OsString>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the skiff binary")?;
    let status = tokio::process::Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .arg("bench")
        .args(args)
        .status()
        .await
        .context("running unshare -n (util-linux; needs root)")?;
    if !status.success() {
        bail!("the benchmark failed inside its network namespace ({status})");
    }
    Ok(())
}

/// Inside the namespace: loopback up, `dir` emptied, one member on 127.0.0.1 (data under
/// `dir/skiff`), returned once the `default` namespace exists (the member creates it just
/// after it starts serving; a create before that is refused).
pub async fn single_member(dir: &Path, progress: &Progress) -> anyhow::Result<LocalCluster> {
    let status = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    if !status.success() {
        bail!("cannot bring up loopback in the benchmark's namespace");
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut cluster = LocalCluster::start(&dir.join("skiff"), "127.0.0.", 1, &[], progress).await?;
    let pki = cluster.pki()?;
    let api = ApiClient::connect(MEMBER_API, &pki.ca.cert_pem, &pki.admin).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = api
            .call(Method::GET, "/api/v1/namespaces/default", None)
            .await?;
        if status.is_success() {
            return Ok(cluster);
        }
        if Instant::now() > deadline {
            cluster.stop().await;
            bail!("the member never created the default namespace ({status})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
