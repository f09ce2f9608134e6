//! `skiff kubeconfig --user NAME [--group G]`: a kubeconfig for another user, signed by the
//! cluster CA found in a member's data dir. The user's rights are whatever RBAC grants the
//! name and groups (none until bound), as with a Kubernetes client certificate.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use crate::kubeconfig;
use crate::pki::{ClusterCa, PkiPaths, write_file};

#[derive(Args, Debug)]
pub struct KubeconfigArgs {
    /// A control-plane member's data dir (its pki/ holds the CA).
    #[arg(long, default_value = "/var/lib/skiff")]
    pub data: PathBuf,
    /// The user name (the certificate's CommonName).
    #[arg(long)]
    pub user: String,
    /// A group the user belongs to (the certificate's Organization).
    #[arg(long)]
    pub group: Option<String>,
    /// API server URL; defaults to the one in DATA/admin.kubeconfig.
    #[arg(long)]
    pub server: Option<String>,
    /// Write here instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

pub fn run(args: KubeconfigArgs) -> anyhow::Result<()> {
    if args.user.trim().is_empty() {
        bail!("--user must not be empty");
    }
    let pki = PkiPaths::new(&args.data)
        .load()
        .with_context(|| format!("reading the cluster CA under {}", args.data.display()))?;
    let server = match args.server {
        Some(s) => s,
        None => server_of(&args.data)?,
    };
    let ca = ClusterCa::from_pem(pki.ca.clone());
    let cert = ca.issue_client(&args.user, args.group.as_deref())?;
    let config = kubeconfig::render(
        "skiff",
        &server,
        &pki.ca.cert_pem,
        &cert.cert_pem,
        &cert.key_pem,
    );
    match args.output {
        Some(path) => write_file(&path, config.as_bytes(), true)?,
        None => print!("{config}"),
    }
    Ok(())
}

/// The `server:` URL of DATA/admin.kubeconfig.
fn server_of(data: &std::path::Path) -> anyhow::Result<String> {
    let path = data.join("admin.kubeconfig");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (or pass --server)", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server:")
                .map(|s| s.trim().to_string())
        })
        .with_context(|| format!("no server in {}", path.display()))
}
