//! The agent's connection to the control plane: the node certificate (obtained once with the
//! join token and kept in the data dir) and a `NodeAgent` gRPC client that fails over to the
//! next listed member when the current one stops answering.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde_json::Value;
use skiff_proto::agent::node_agent_client::NodeAgentClient;
use skiff_proto::agent::{
    DeletePodRequest, GetRequest, JoinNodeRequest, Object, PodStatusRequest, RenewLeaseRequest,
    ServiceAccountTokenRequest, WatchEvent, WatchRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tracing::{info, warn};

use crate::json_path::JsonPath;
use crate::pki::{JoinToken, PEER_DNS_NAME, write_file};
use crate::registry::pod::service_account_of;

/// The node's credentials, as stored under `DATA/pki/`.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Every member's API address (host:port), the ones given first.
    pub servers: Vec<String>,
}

fn paths(data: &Path) -> [PathBuf; 4] {
    let pki = data.join("pki");
    [
        pki.join("ca.crt"),
        pki.join("node.crt"),
        pki.join("node.key"),
        data.join("servers"),
    ]
}

/// host:port from `https://host:port`, `host:port` or `host` (port 6443).
pub fn server_address(url: &str) -> String {
    let trimmed = url.trim().trim_end_matches('/');
    let host = trimmed.strip_prefix("https://").unwrap_or(trimmed);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:6443")
    }
}

impl Credentials {
    /// Loads the stored credentials, or joins with `token` when there are none.
    pub async fn load_or_join(
        data: &Path,
        servers: &[String],
        token: Option<&str>,
        node_name: &str,
        sans: &[String],
    ) -> anyhow::Result<Self> {
        let [ca, cert, key, list] = paths(data);
        let given: Vec<String> = servers.iter().map(|s| server_address(s)).collect();
        if ca.exists() && cert.exists() && key.exists() {
            let mut known: Vec<String> = std::fs::read_to_string(&list)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect();
            for s in given.iter().rev() {
                known.retain(|k| k != s);
                known.insert(0, s.clone());
            }
            return Ok(Credentials {
                ca_pem: std::fs::read_to_string(&ca)?,
                cert_pem: std::fs::read_to_string(&cert)?,
                key_pem: std::fs::read_to_string(&key)?,
                servers: known,
            });
        }
        let token: JoinToken = token
            .ok_or_else(|| {
                anyhow!(
                    "{} holds no node certificate: pass --token to join",
                    data.display()
                )
            })?
            .parse()?;
        let mut last = anyhow!("no --server given");
        for server in &given {
            match join(server, &token, node_name, sans).await {
                Ok(mut creds) => {
                    for s in given.iter().rev() {
                        creds.servers.retain(|k| k != s);
                        creds.servers.insert(0, s.clone());
                    }
                    std::fs::create_dir_all(data.join("pki"))?;
                    write_file(&ca, creds.ca_pem.as_bytes(), false)?;
                    write_file(&cert, creds.cert_pem.as_bytes(), false)?;
                    write_file(&key, creds.key_pem.as_bytes(), true)?;
                    write_file(&list, creds.servers.join("\n").as_bytes(), false)?;
                    info!(server, node = node_name, "joined the cluster as a node");
                    return Ok(creds);
                }
                Err(e) => {
                    warn!(server, error = %e, "join failed; trying the next server");
                    last = e;
                }
            }
        }
        Err(last)
    }
}

async fn join(
    server: &str,
    token: &JoinToken,
    node_name: &str,
    sans: &[String],
) -> anyhow::Result<Credentials> {
    let ca_pem = crate::server::bootstrap::fetch_trusted_ca(server, token).await?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(PEER_DNS_NAME);
    let channel = Endpoint::from_shared(format!("https://{server}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let response = NodeAgentClient::new(channel)
        .join_node(JoinNodeRequest {
            token_secret: token.secret.clone(),
            node_name: node_name.to_string(),
            san: sans.to_vec(),
        })
        .await
        .map_err(|s| anyhow!("join refused by {server}: {}", s.message()))?
        .into_inner();
    Ok(Credentials {
        ca_pem: response.ca_cert_pem,
        cert_pem: response.cert_pem,
        key_pem: response.key_pem,
        servers: response.api_addrs,
    })
}

/// A `NodeAgent` client over the listed members, reconnecting to the next one on failure.
pub struct ControlPlane {
    credentials: Credentials,
    current: Mutex<Option<NodeAgentClient<Channel>>>,
    next: AtomicUsize,
}

/// Errors that mean "this member is gone or cannot serve": try another.
fn is_transport(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

impl ControlPlane {
    pub fn new(credentials: Credentials) -> Self {
        ControlPlane {
            credentials,
            current: Mutex::new(None),
            next: AtomicUsize::new(0),
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The current client, connecting to the next server in turn when there is none.
    async fn client(&self) -> Result<NodeAgentClient<Channel>, Status> {
        if let Some(client) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(client);
        }
        let servers = &self.credentials.servers;
        if servers.is_empty() {
            return Err(Status::unavailable("no control-plane server known"));
        }
        let mut last = Status::unavailable("no control-plane server reachable");
        for _ in 0..servers.len() {
            let index = self.next.fetch_add(1, Ordering::Relaxed) % servers.len();
            let server = &servers[index];
            match self.connect(server).await {
                Ok(channel) => {
                    info!(server, "connected to the control plane");
                    let client = NodeAgentClient::new(channel).max_decoding_message_size(16 << 20);
                    *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
                    // Stay on this server next time unless it fails.
                    self.next.store(index, Ordering::Relaxed);
                    return Ok(client);
                }
                Err(e) => {
                    warn!(server, error = %e, "control-plane server unreachable");
                    last = Status::unavailable(format!("{server}: {e}"));
                }
            }
        }
        Err(last)
    }

    async fn connect(&self, server: &str) -> anyhow::Result<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.credentials.ca_pem))
            .identity(Identity::from_pem(
                &self.credentials.cert_pem,
                &self.credentials.key_pem,
            ))
            .domain_name(PEER_DNS_NAME);
        Ok(Endpoint::from_shared(format!("https://{server}"))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect()
            .await?)
    }

    /// Forgets the current server (after a transport error) and moves on to the next.
    fn failed(&self, status: &Status) {
        if is_transport(status) {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if current.take().is_some() {
                self.next.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn checked<T>(&self, result: Result<tonic::Response<T>, Status>) -> Result<T, Status> {
        match result {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                self.failed(&s);
                Err(s)
            }
        }
    }

    pub async fn register_node(&self, node: &Value) -> Result<Value, Status> {
        let mut client = self.client().await?;
        let reply = self.checked(client.register_node(object(node)).await)?;
        parse(&reply.object)
    }

    pub async fn update_node_status(&self, node: &Value) -> Result<Value, Status> {
        let mut client = self.client().await?;
        let reply = self.checked(client.update_node_status(object(node)).await)?;
        parse(&reply.object)
    }

    pub async fn renew_lease(&self, seconds: i32) -> Result<(), Status> {
        let mut client = self.client().await?;
        self.checked(
            client
                .renew_lease(RenewLeaseRequest {
                    lease_duration_seconds: seconds,
                })
                .await,
        )
        .map(|_| ())
    }

    pub async fn watch(
        &self,
        request: WatchRequest,
    ) -> Result<tonic::Streaming<WatchEvent>, Status> {
        let mut client = self.client().await?;
        self.checked(client.watch(request).await)
    }

    /// Ok(None) when the object does not exist.
    pub async fn get(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, Status> {
        let mut client = self.client().await?;
        let request = GetRequest {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        match self.checked(client.get(request).await) {
            Ok(reply) => parse(&reply.object).map(Some),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    pub async fn update_pod_status(&self, pod: &Value, status: &Value) -> Result<Value, Status> {
        let mut client = self.client().await?;
        let request = PodStatusRequest {
            namespace: text(pod, "/metadata/namespace").into(),
            name: text(pod, "/metadata/name").into(),
            uid: text(pod, "/metadata/uid").into(),
            status: serde_json::to_vec(status).unwrap_or_default(),
        };
        let reply = self.checked(client.update_pod_status(request).await)?;
        parse(&reply.object)
    }

    pub async fn delete_pod(&self, pod: &Value) -> Result<(), Status> {
        let mut client = self.client().await?;
        let request = DeletePodRequest {
            namespace: text(pod, "/metadata/namespace").into(),
            name: text(pod, "/metadata/name").into(),
            uid: text(pod, "/metadata/uid").into(),
        };
        self.checked(client.delete_pod(request).await).map(|_| ())
    }

    /// Creates (or keeps) the mirror pod of a static pod; returns the stored mirror.
    pub async fn create_mirror_pod(&self, pod: &Value) -> Result<Value, Status> {
        let mut client = self.client().await?;
        let reply = self.checked(client.create_mirror_pod(object(pod)).await)?;
        parse(&reply.object)
    }

    pub async fn record_event(&self, event: &Value) -> Result<(), Status> {
        let mut client = self.client().await?;
        self.checked(client.record_event(object(event)).await)
            .map(|_| ())
    }

    /// A token for the pod's service account, and when it expires (unix seconds).
    pub async fn service_account_token(
        &self,
        pod: &Value,
        audiences: &[String],
        expiration_seconds: i64,
    ) -> Result<(String, i64), Status> {
        let mut client = self.client().await?;
        let account = service_account_of(pod);
        let request = ServiceAccountTokenRequest {
            namespace: text(pod, "/metadata/namespace").into(),
            pod_name: text(pod, "/metadata/name").into(),
            pod_uid: text(pod, "/metadata/uid").into(),
            service_account: account.into(),
            audiences: audiences.to_vec(),
            expiration_seconds,
        };
        let reply = self.checked(client.service_account_token(request).await)?;
        Ok((reply.token, reply.expiration_unix))
    }
}

fn object(value: &Value) -> Object {
    Object {
        object: serde_json::to_vec(value).unwrap_or_default(),
    }
}

fn parse(bytes: &[u8]) -> Result<Value, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::internal(format!("undecodable object: {e}")))
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_default_the_port() {
        assert_eq!(server_address("https://10.0.0.1:6443/"), "10.0.0.1:6443");
        assert_eq!(server_address("10.0.0.1"), "10.0.0.1:6443");
        assert_eq!(server_address("127.0.0.2:7443"), "127.0.0.2:7443");
    }
}
