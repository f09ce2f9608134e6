//! The peer for the store benchmark: a 3-member etcd 3.4 (Debian's etcd-server) on loopback,
//! with TLS from a throwaway CA so both systems pay the same TLS costs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pki::{CertKey, ClusterCa, PEER_DNS_NAME, write_file};

pub struct EtcdCluster {
    children: Vec<Child>,
    pub endpoints: Vec<String>,
}

/// PEM files for a TLS peer, and the client identity to reach it.
pub struct BenchPki {
    pub ca_pem: String,
    pub client: CertKey,
    dir: PathBuf,
}

impl BenchPki {
    pub fn generate(dir: &Path, ips: &[String]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = ClusterCa::generate("bench")?;
        let server = ca.issue_node("etcd", ips)?;
        let client = ca.issue_client("root", None)?;
        write_file(&dir.join("ca.crt"), ca.ca.cert_pem.as_bytes(), false)?;
        write_file(&dir.join("server.crt"), server.cert_pem.as_bytes(), false)?;
        write_file(&dir.join("server.key"), server.key_pem.as_bytes(), true)?;
        Ok(BenchPki {
            ca_pem: ca.ca.cert_pem,
            client,
            dir: dir.to_path_buf(),
        })
    }
}

/// One TLS channel per endpoint (https://host:port), authenticated with `client`.
pub async fn channels(
    endpoints: &[String],
    ca_pem: &str,
    client: &CertKey,
) -> anyhow::Result<Vec<Channel>> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(&client.cert_pem, &client.key_pem))
        .domain_name(PEER_DNS_NAME);
    let mut channels = Vec::new();
    for endpoint in endpoints {
        let channel = Endpoint::from_shared(endpoint.clone())?
            .tls_config(tls.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

impl EtcdCluster {
    /// The members' process ids while they run.
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.children.iter().map(Child::id).collect()
    }

    pub async fn start(dir: &Path, ip_prefix: &str, pki: &BenchPki) -> anyhow::Result<Self> {
        if which("etcd").is_none() {
            bail!("etcd not found: apt-get install etcd-server");
        }
        let names: Vec<String> = (1..=3).map(|i| format!("e{i}")).collect();
        let ips: Vec<String> = (1..=3).map(|i| format!("{ip_prefix}{i}")).collect();
        let initial = names
            .iter()
            .zip(&ips)
            .map(|(n, ip)| format!("{n}=https://{ip}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        for (name, ip) in names.iter().zip(&ips) {
            let data = dir.join(name);
            let _ = std::fs::remove_dir_all(&data);
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            let p = |f: &str| pki.dir.join(f);
            let child = Command::new("etcd")
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(&data)
                .arg("--listen-client-urls")
                .arg(format!("https://{ip}:2379"))
                .arg("--advertise-client-urls")
                .arg(format!("https://{ip}:2379"))
                .arg("--listen-peer-urls")
                .arg(format!("https://{ip}:2380"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("https://{ip}:2380"))
                .arg("--initial-cluster")
                .arg(&initial)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg("skiff-bench")
                .arg("--cert-file")
                .arg(p("server.crt"))
                .arg("--key-file")
                .arg(p("server.key"))
                .arg("--trusted-ca-file")
                .arg(p("ca.crt"))
                .arg("--client-cert-auth")
                .arg("--peer-cert-file")
                .arg(p("server.crt"))
                .arg("--peer-key-file")
                .arg(p("server.key"))
                .arg("--peer-trusted-ca-file")
                .arg(p("ca.crt"))
                .arg("--peer-client-cert-auth")
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .context("starting etcd")?;
            children.push(child);
            endpoints.push(format!("https://{ip}:2379"));
        }
        let cluster = EtcdCluster {
            children,
            endpoints,
        };
        cluster.wait_ready(pki).await?;
        Ok(cluster)
    }

    async fn wait_ready(&self, pki: &BenchPki) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(chans) = channels(&self.endpoints, &pki.ca_pem, &pki.client).await {
                let mut kv = skiff_proto::etcdserverpb::kv_client::KvClient::new(chans[0].clone());
                let put = skiff_proto::etcdserverpb::PutRequest {
                    key: b"/ready".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                };
                if kv.put(put).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("etcd did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn stop(&mut self) {
        for child in self.children.iter_mut() {
            let _ = child.kill().await;
        }
        self.children.clear();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}
