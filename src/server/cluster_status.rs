//! The cluster as `skiff status` shows it: every member asked over the admin gRPC API for its
//! own view (term, commit and applied index, revision, db size). Used by `skiff status` and the
//! dashboard's /ui/api/cluster.

use anyhow::anyhow;
use serde::Serialize;
use skiff_proto::admin::StatusRequest;

use crate::pki::CertKey;
use crate::server::bootstrap::admin_client;

#[derive(Serialize, Debug)]
pub struct MemberRow {
    pub name: String,
    pub id: u64,
    pub api: String,
    pub role: String,
    pub healthy: bool,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub revision: i64,
    pub compacted: i64,
    pub db_bytes: u64,
    pub error: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub leader: Option<String>,
    pub members: Vec<MemberRow>,
}

/// Asks `server` (host:port) for the membership, then each member for its own status, as
/// `identity` (any client certificate of the cluster CA).
pub async fn collect(
    server: &str,
    ca_pem: &str,
    identity: &CertKey,
) -> anyhow::Result<ClusterStatus> {
    let mut client = admin_client(server, ca_pem, Some(identity)).await?;
    let first = client
        .status(StatusRequest {})
        .await
        .map_err(|s| anyhow!("status from {server}: {}", s.message()))?
        .into_inner();
    let mut commit = 0;
    let mut rows = Vec::new();
    for member in &first.members {
        let own = match admin_client(&member.api_addr, ca_pem, Some(identity)).await {
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
