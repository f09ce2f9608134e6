//! `skiff status`: one row per member, each member's own view of term, indexes and revision.

use anyhow::{Context, anyhow};

use crate::cli::StatusArgs;
use crate::pki::PkiPaths;
use crate::server::cluster_status::{ClusterStatus, collect};
use crate::server::identity::NodeIdentity;

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let identity = NodeIdentity::load(&args.data)?.ok_or_else(|| {
        anyhow!(
            "{} holds no member (use --data with a member's data dir)",
            args.data.display()
        )
    })?;
    let pki = PkiPaths::new(&args.data)
        .load()
        .context("loading admin credentials")?;
    let server = args
        .server
        .as_deref()
        .map(|s| s.trim_start_matches("https://").to_string())
        .unwrap_or(identity.api_addr.clone());
    let status = collect(&server, &pki.ca.cert_pem, &pki.admin).await?;
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_table(&status);
    }
    if status.leader.is_none() {
        return Err(anyhow!("the cluster has no leader"));
    }
    Ok(())
}

fn print_table(status: &ClusterStatus) {
    println!(
        "cluster {}  leader {}",
        status.cluster_id,
        status.leader.as_deref().unwrap_or("<none>")
    );
    println!(
        "{:<16} {:<20} {:<22} {:<9} {:>5} {:>9} {:>9} {:>9} {:>10} {:>9}  HEALTH",
        "NAME", "ID", "API", "ROLE", "TERM", "COMMIT", "APPLIED", "REVISION", "COMPACTED", "DB"
    );
    for r in &status.members {
        let health = match &r.error {
            Some(e) => format!("unreachable: {e}"),
            None if r.healthy => "ok".into(),
            None => "no leader".into(),
        };
        println!(
            "{:<16} {:<20} {:<22} {:<9} {:>5} {:>9} {:>9} {:>9} {:>10} {:>9}  {}",
            r.name,
            r.id,
            r.api,
            r.role,
            r.term,
            r.commit,
            r.applied,
            r.revision,
            r.compacted,
            human_bytes(r.db_bytes),
            health
        );
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}
