//! The admin gRPC service on the API port: CA download, join, promotion, removal, status.
//!
//! Authorization: `GetCA` is open (the joiner checks the CA hash from its token); `Join` and
//! `Promote` need the token secret; `Remove`, `Status` and `Backup` need a client certificate signed by
//! the cluster CA (the admin certificate or a member's).

use rand::Rng;
use skiff_proto::admin::admin_server::Admin;
use skiff_proto::admin::{
    BackupRequest, GetCaRequest, GetCaResponse, JoinRequest, JoinResponse, MemberStatus,
    PromoteRequest, PromoteResponse, RemoveRequest, RemoveResponse, StatusRequest, StatusResponse,
};
use skiff_raft::{NodeError, RaftNode};
use skiff_storage::NodeInfo;
use tonic::{Request, Response, Status};
use tracing::info;

use super::api_listener::ClientCertificate;
use crate::pki::{ClusterCa, JoinToken, MemberPki};

pub struct AdminService {
    pub node: RaftNode,
    pub pki: MemberPki,
    pub token: JoinToken,
    pub cluster_id: String,
}

fn require_client_cert<T>(request: &Request<T>) -> Result<(), Status> {
    match request.extensions().get::<ClientCertificate>() {
        Some(c) if c.verified => Ok(()),
        _ => Err(Status::unauthenticated(
            "a client certificate signed by the cluster CA is required",
        )),
    }
}

fn require_secret(token: &JoinToken, secret: &str) -> Result<(), Status> {
    if token.secret_matches(secret) {
        Ok(())
    } else {
        Err(Status::permission_denied("invalid join token"))
    }
}

pub fn node_error_status(error: NodeError) -> Status {
    match error {
        NodeError::NoLeader => Status::unavailable(error.to_string()),
        NodeError::Timeout => Status::deadline_exceeded(error.to_string()),
        NodeError::Membership(_) => Status::failed_precondition(error.to_string()),
        _ => Status::internal(error.to_string()),
    }
}

fn require_addr(field: &str, value: &str) -> Result<(), Status> {
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| Status::invalid_argument(format!("{field} must be IP:PORT, got {value:?}")))
}

#[tonic::async_trait]
impl Admin for AdminService {
    type BackupStream = crate::backup::stream::BackupStream;

    /// A point-in-time snapshot of everything committed before the call (read barrier first).
    #[tracing::instrument(skip_all, fields(node_id = self.node.id()))]
    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        require_client_cert(&request)?;
        self.node.read_barrier().await.map_err(node_error_status)?;
        info!(revision = self.node.kv().revision(), "streaming a backup");
        Ok(Response::new(crate::backup::stream::start(
            self.node.kv().clone(),
            self.pki.secrets_encryption.clone().unwrap_or_default(),
        )))
    }

    async fn get_ca(
        &self,
        _request: Request<GetCaRequest>,
    ) -> Result<Response<GetCaResponse>, Status> {
        Ok(Response::new(GetCaResponse {
            ca_cert_pem: self.pki.ca.cert_pem.clone(),
        }))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = request.into_inner();
        require_secret(&self.token, &req.token_secret)?;
        require_addr("raft_addr", &req.raft_addr)?;
        require_addr("api_addr", &req.api_addr)?;
        require_addr("client_addr", &req.client_addr)?;
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
        }
        let members = self.node.members();
        if let Some(existing) = members
            .iter()
            .find(|m| m.info.name == req.name || m.info.raft_addr == req.raft_addr)
        {
            return Err(Status::already_exists(format!(
                "member {} ({}) already uses this name or raft address; remove it first (skiff server --remove {})",
                existing.info.name, existing.id, existing.info.name
            )));
        }
        let node_id = loop {
            let candidate: u64 = rand::rng().random_range(2..u64::MAX >> 1);
            if !members.iter().any(|m| m.id == candidate) {
                break candidate;
            }
        };
        let ca = ClusterCa::from_pem(self.pki.ca.clone());
        let node_cert = ca
            .issue_node(&req.name, &req.san)
            .map_err(|e| Status::internal(e.to_string()))?;
        let info = NodeInfo {
            name: req.name.clone(),
            raft_addr: req.raft_addr,
            api_addr: req.api_addr,
            client_addr: req.client_addr,
        };
        info!(node_id, %info, "admitting new member as learner");
        self.node
            .add_learner(node_id, info)
            .await
            .map_err(node_error_status)?;
        Ok(Response::new(JoinResponse {
            node_id,
            cluster_id: self.cluster_id.clone(),
            ca_cert_pem: self.pki.ca.cert_pem.clone(),
            ca_key_pem: self.pki.ca.key_pem.clone(),
            node_cert_pem: node_cert.cert_pem,
            node_key_pem: node_cert.key_pem,
            admin_cert_pem: self.pki.admin.cert_pem.clone(),
            admin_key_pem: self.pki.admin.key_pem.clone(),
            api_addrs: self
                .node
                .members()
                .into_iter()
                .map(|m| m.info.api_addr)
                .collect(),
            secrets_encryption_keys: self.pki.secrets_encryption.clone().unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(node_id = request.get_ref().node_id))]
    async fn promote(
        &self,
        request: Request<PromoteRequest>,
    ) -> Result<Response<PromoteResponse>, Status> {
        let req = request.into_inner();
        require_secret(&self.token, &req.token_secret)?;
        self.node
            .promote(req.node_id)
            .await
            .map_err(node_error_status)?;
        Ok(Response::new(PromoteResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<RemoveResponse>, Status> {
        require_client_cert(&request)?;
        let req = request.into_inner();
        let member = self
            .node
            .members()
            .into_iter()
            .find(|m| {
                (req.node_id != 0 && m.id == req.node_id)
                    || (!req.name.is_empty() && m.info.name == req.name)
            })
            .ok_or_else(|| Status::not_found(format!("no member {} {}", req.node_id, req.name)))?;
        self.node
            .remove(member.id)
            .await
            .map_err(node_error_status)?;
        Ok(Response::new(RemoveResponse {}))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        require_client_cert(&request)?;
        let metrics = self.node.metrics();
        let kv = self.node.kv();
        let matched = metrics.replication.clone().unwrap_or_default();
        let members = self
            .node
            .members()
            .into_iter()
            .map(|m| {
                let matched_index = matched
                    .get(&m.id)
                    .cloned()
                    .flatten()
                    .map(|l| l.index)
                    .unwrap_or(0);
                MemberStatus {
                    node_id: m.id,
                    name: m.info.name,
                    raft_addr: m.info.raft_addr,
                    api_addr: m.info.api_addr,
                    voter: m.voter,
                    healthy: matched.contains_key(&m.id),
                    matched_index,
                }
            })
            .collect();
        let commit_index = self.node.leader_commit_index(&metrics).unwrap_or(0);
        Ok(Response::new(StatusResponse {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node.id(),
            leader_id: metrics.current_leader.unwrap_or(0),
            term: metrics.current_term,
            commit_index,
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            revision: kv.revision(),
            compacted_revision: kv.compacted_revision(),
            state: format!("{:?}", metrics.state),
            db_size_bytes: kv.db_size_bytes(),
            members,
            unix_time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            millis_since_quorum_ack: metrics.last_quorum_acked.map(|acked| {
                let since = openraft::Instant::elapsed(&acked.into_inner());
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            }),
        }))
    }
}
