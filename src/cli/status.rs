//! `skiff status`: one row per member, each member's own view of term, indexes and revision
//! (and how far its applied index lags the cluster's commit), then the Kubernetes side: nodes
//! Ready/NotReady, pods by phase and the most recent warnings.

use anyhow::anyhow;
use serde::Serialize;

use super::status_objects::{self, ObjectsSummary};
use crate::cli::StatusArgs;
use crate::server::cluster_status::{ClusterStatus, collect};

/// What `-o json` prints: the members' fields at the top level (scripts read `leader` and
/// `members`), the Kubernetes summary under `kubernetes` (absent when the API did not answer).
#[derive(Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    cluster: &'a ClusterStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<&'a ObjectsSummary>,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let target = args.target.resolve()?;
    let status = collect(&target.server, &target.ca_pem, &target.client).await?;
    let objects = status_objects::collect(&target.server, &target.ca_pem, &target.client).await;
    if args.output == "json" {
        let report = Report {
            cluster: &status,
            kubernetes: objects.as_ref().ok(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&status);
        match &objects {
            Ok(summary) => status_objects::print(summary),
            Err(e) => println!("kubernetes: unavailable ({e})"),
        }
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
        "{:<16} {:<20} {:<22} {:<9} {:>5} {:>9} {:>9} {:>5} {:>9} {:>10} {:>9}  HEALTH",
        "NAME",
        "ID",
        "API",
        "ROLE",
        "TERM",
        "COMMIT",
        "APPLIED",
        "LAG",
        "REVISION",
        "COMPACTED",
        "DB"
    );
    let commit = status.members.iter().map(|r| r.commit).max().unwrap_or(0);
    for r in &status.members {
        let (health, lag) = match &r.error {
            Some(e) => (format!("unreachable: {e}"), "-".to_string()),
            None if r.healthy => ("ok".into(), commit.saturating_sub(r.applied).to_string()),
            None => (
                "no leader".into(),
                commit.saturating_sub(r.applied).to_string(),
            ),
        };
        println!(
            "{:<16} {:<20} {:<22} {:<9} {:>5} {:>9} {:>9} {:>5} {:>9} {:>10} {:>9}  {}",
            r.name,
            r.id,
            r.api,
            r.role,
            r.term,
            r.commit,
            r.applied,
            lag,
            r.revision,
            r.compacted,
            human_bytes(r.db_bytes),
            health
        );
    }
}

pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}
