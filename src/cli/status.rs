//! `skiff status`: one row per member, each member's own view of term, indexes and revision.

use anyhow::anyhow;
use serde::Serialize;
use skiff_proto::admin::StatusRequest;

use crate::cli::StatusArgs;
use crate::pki::CertKey;
use crate::server::bootstrap::admin_client;

#[derive(Serialize, Debug)]
struct MemberRow {
    name: String,
    id: u64,
    api: String,
    role: String,
    healthy: bool,
    term: u64,
    commit: u64,
    applied: u64,
    revision: i64,
    compacted: i64,
    db_bytes: u64,
    error: Option<String>,
}

#[derive(Serialize, Debug)]
struct ClusterStatus {
    cluster_id: String,
    leader: Option<String>,
    members: Vec<MemberRow>,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let target = args.target.resolve()?;
    let status = collect(&target.server, &target.ca_pem, &target.client).await?;
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

async fn collect(server: &str, ca_pem: &str, admin: &CertKey) -> anyhow::Result<ClusterStatus> {
    let mut client = admin_client(server, ca_pem, Some(admin)).await?;
    let first = client
        .status(StatusRequest {})
        .await
        .map_err(|s| anyhow!("status from {server}: {}", s.message()))?
        .into_inner();
    let mut commit = 0;
    let mut rows = Vec::new();
    for member in &first.members {
        let own = match admin_client(&member.api_addr, ca_pem, Some(admin)).await {
            Ok(mut c) => c
                .status(StatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string()),
            Err(e) => Err(e.to_string()),
        };
        let row = match own {
            Ok(s) => {
                commit = commit.max(s.commit_index);
                MemberRow {
                    name: member.name.clone(),
                    id: member.node_id,
                    api: member.api_addr.clone(),
                    role: if s.leader_id == member.node_id {
                        "leader".into()
                    } else if member.voter {
                        "follower".into()
                    } else {
                        "learner".into()
                    },
                    healthy: s.leader_id != 0,
                    term: s.term,
                    commit: s.commit_index,
                    applied: s.applied_index,
                    revision: s.revision,
                    compacted: s.compacted_revision,
                    db_bytes: s.db_size_bytes,
                    error: None,
                }
            }
            Err(e) => MemberRow {
                name: member.name.clone(),
                id: member.node_id,
                api: member.api_addr.clone(),
                role: if member.voter {
                    "voter".into()
                } else {
                    "learner".into()
                },
                healthy: false,
                term: 0,
                commit: 0,
                applied: 0,
                revision: 0,
                compacted: 0,
                db_bytes: 0,
                error: Some(e),
            },
        };
        rows.push(row);
    }
    for row in &mut rows {
        if row.error.is_none() && row.commit == 0 {
            row.commit = commit;
        }
    }
    // The leader as the members it reached say, or as the first member says when the
    // leader itself cannot be reached from here (members behind a relay).
    let leader = rows
        .iter()
        .find(|r| r.role == "leader")
        .map(|r| r.name.clone())
        .or_else(|| {
            first
                .members
                .iter()
                .find(|m| m.node_id == first.leader_id && first.leader_id != 0)
                .map(|m| m.name.clone())
        });
    Ok(ClusterStatus {
        cluster_id: first.cluster_id,
        leader,
        members: rows,
    })
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

pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}
