//! etcd-protocol clients for the members under test: mutual TLS with the cluster's admin
//! credentials, lazily connected channels (a dead member fails requests, it does not fail
//! client creation), leader discovery through the Maintenance status RPC.

use std::time::Duration;

use skiff_proto::etcdserverpb::StatusRequest;
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::ChaosError;

#[derive(Clone, Debug)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The name the members' serving certificates carry (skiff: "skiff-peer").
    pub domain: String,
}

/// One member's answer to the Maintenance status RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    /// The leader's member id as this member sees it (0: none).
    pub leader: u64,
    pub term: u64,
}

#[derive(Clone, Debug)]
pub struct Endpoints {
    /// One "https://IP:2379" per member, index = member index.
    pub members: Vec<String>,
    pub credentials: Credentials,
}

/// Whether a failed request may still have been applied.
pub fn is_definite_failure(status: &tonic::Status) -> bool {
    let text = format!("{status:?}");
    text.contains("Connection refused") || text.contains("tcp connect error")
}

impl Endpoints {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn channel(&self, member: usize) -> Result<Channel, ChaosError> {
        let url = self
            .members
            .get(member)
            .ok_or(ChaosError::NoSuchMember(member))?;
        let c = &self.credentials;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&c.ca_pem))
            .identity(Identity::from_pem(&c.cert_pem, &c.key_pem))
            .domain_name(c.domain.clone());
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| ChaosError::Connect {
                endpoint: url.clone(),
                reason: e.to_string(),
            })?
            .tls_config(tls)
            .map_err(|e| ChaosError::Tls(e.to_string()))?
            .connect_timeout(Duration::from_millis(500))
            .http2_keep_alive_interval(Duration::from_millis(500))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_lazy())
    }

    pub fn kv(&self, member: usize) -> Result<KvClient<Channel>, ChaosError> {
        Ok(KvClient::new(self.channel(member)?).max_decoding_message_size(64 << 20))
    }

    pub fn watch(&self, member: usize) -> Result<WatchClient<Channel>, ChaosError> {
        Ok(WatchClient::new(self.channel(member)?).max_decoding_message_size(64 << 20))
    }

    /// (own member id, leader id as this member sees it), or None if it does not answer.
    pub async fn member_status(&self, member: usize) -> Option<(u64, u64)> {
        self.raft_status(member, Duration::from_millis(800))
            .await
            .map(|s| (s.id, s.leader))
    }

    /// The member's raft view (own id, leader, term), or None if it does not answer in time.
    pub async fn raft_status(&self, member: usize, within: Duration) -> Option<RaftStatus> {
        let mut client = MaintenanceClient::new(self.channel(member).ok()?);
        let reply = tokio::time::timeout(within, client.status(StatusRequest {}))
            .await
            .ok()?
            .ok()?
            .into_inner();
        Some(RaftStatus {
            id: reply.header?.member_id,
            leader: reply.leader,
            term: reply.raft_term,
        })
    }

    /// The index of the member every answering member names as leader (None: no agreement, or
    /// the leader itself does not answer).
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::with_capacity(self.len());
        for i in 0..self.len() {
            ids.push(self.member_status(i).await);
        }
        let leaders: Vec<u64> = ids.iter().flatten().map(|(_, l)| *l).collect();
        let first = *leaders.first()?;
        if first == 0 || leaders.iter().any(|l| *l != first) {
            return None;
        }
        ids.iter()
            .position(|s| matches!(s, Some((own, _)) if *own == first))
    }

    /// Waits until a leader every answering member agrees on is known.
    pub async fn wait_for_leader(&self, within: Duration) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(leader) = self.leader().await {
                return Some(leader);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}
