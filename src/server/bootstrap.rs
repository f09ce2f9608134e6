//! Becoming a member: create a cluster (`--init`), join one (`--join`), or resume (node.json
//! present). Everything written here lands in the data dir before raft starts, so a crash at any
//! point leaves either no member or a complete one.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use rand::Rng;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use skiff_proto::admin::JoinRequest;
use skiff_proto::admin::admin_client::AdminClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::info;

use super::Addresses;
use crate::kubeconfig;
use crate::pki::at_rest::{AtRestKeys, key_file_from_wire};
use crate::pki::{
    CertKey, ClusterCa, FileSpec, JoinToken, MemberPki, PEER_DNS_NAME, PkiPaths, StagedFiles,
    ca_fingerprint,
};
use crate::server::identity::NodeIdentity;

/// How this start came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A brand new cluster: raft must be initialized with this node alone.
    Created,
    /// Just admitted as a learner: ask to be promoted once caught up.
    Joined,
    /// A restart of an existing member.
    Resumed,
    /// The first start after `skiff restore`: like `Created` (raft is initialized with this
    /// node alone), and the restored state is sealed into a raft snapshot before anyone joins.
    Restored,
}

pub struct Membership {
    pub identity: NodeIdentity,
    pub pki: MemberPki,
    pub token: JoinToken,
    pub origin: Origin,
}

pub fn token_path(data: &Path) -> std::path::PathBuf {
    data.join("token")
}

pub fn load_token(data: &Path) -> anyhow::Result<JoinToken> {
    let path = token_path(data);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.parse()
        .with_context(|| format!("{} holds no valid join token", path.display()))
}

pub async fn become_member(
    data: &Path,
    init: bool,
    join: Option<&str>,
    token: Option<&str>,
    addrs: &Addresses,
) -> anyhow::Result<Membership> {
    std::fs::create_dir_all(data)
        .with_context(|| format!("creating data dir {}", data.display()))?;
    if let Some(identity) = NodeIdentity::load(data)? {
        let pki = PkiPaths::new(data)
            .load()
            .context("loading the member PKI")?;
        let stored_token = load_token(data)?;
        if let Some(given) = token {
            let given: JoinToken = given.parse()?;
            if given.ca_hash != stored_token.ca_hash {
                bail!(
                    "data dir {} belongs to cluster {} (another CA than the --token's); use an empty --data to join this cluster",
                    data.display(),
                    identity.cluster_id
                );
            }
        }
        if init || join.is_some() {
            info!(cluster = %identity.cluster_id, node_id = identity.node_id, "data dir already holds a member; resuming it");
        }
        let origin = if crate::backup::restore::RestoreMarker::exists(data) {
            Origin::Restored
        } else {
            Origin::Resumed
        };
        return Ok(Membership {
            identity,
            pki,
            token: stored_token,
            origin,
        });
    }
    if init {
        return create_cluster(data, addrs);
    }
    match (join, token) {
        (Some(url), Some(token)) => join_cluster(data, url, token, addrs).await,
        _ => bail!(
            "{} holds no member yet: start with --init, or --join URL --token TOKEN",
            data.display()
        ),
    }
}

/// Everything a first member of a new cluster is, before it is written to its data dir.
pub struct NewCluster {
    pub identity: NodeIdentity,
    pub pki: MemberPki,
    pub token: JoinToken,
}

/// A new cluster id, node 1, a join token, and a PKI: a new CA, or `keep_pki`'s CA and admin
/// credentials (restore keeps the old cluster's PKI when asked) with a new node certificate.
/// The at-rest keys are a restored backup's (`backup_keys`, so its Secrets open) and the kept
/// PKI's, or a new key.
pub fn new_cluster(
    addrs: &Addresses,
    keep_pki: Option<&MemberPki>,
    backup_keys: Option<&str>,
) -> anyhow::Result<NewCluster> {
    let cluster_id = hex::encode(rand::rng().random::<[u8; 8]>());
    let (ca, admin) = match keep_pki {
        Some(old) => (ClusterCa::from_pem(old.ca.clone()), old.admin.clone()),
        None => {
            let ca = ClusterCa::generate(&cluster_id)?;
            let admin = ca.issue_client("system:admin", Some("system:masters"))?;
            (ca, admin)
        }
    };
    let node = ca.issue_node(&addrs.name, &addrs.sans())?;
    let kept_keys = keep_pki.and_then(|old| old.secrets_encryption.as_deref());
    let pki = MemberPki {
        ca: ca.ca.clone(),
        node,
        admin,
        secrets_encryption: Some(at_rest_keys(backup_keys, kept_keys)?),
    };
    let token = JoinToken::new(ca.fingerprint());
    let identity = addrs.identity(1, cluster_id);
    Ok(NewCluster {
        identity,
        pki,
        token,
    })
}

/// The at-rest key file of a new cluster: the backup's keys first (they sealed its data), then
/// the kept PKI's; a new key when there are neither.
fn at_rest_keys(backup_keys: Option<&str>, kept_keys: Option<&str>) -> anyhow::Result<String> {
    let parse = |text: &str, whose: &str| {
        AtRestKeys::parse(text).with_context(|| format!("the at-rest keys of {whose}"))
    };
    let keys = match (backup_keys, kept_keys) {
        (Some(backup), Some(kept)) => {
            parse(backup, "the backup")?.merged_with(parse(kept, "the kept PKI")?)
        }
        (Some(backup), None) => parse(backup, "the backup")?,
        (None, Some(kept)) => parse(kept, "the kept PKI")?,
        (None, None) => AtRestKeys::generate()?,
    };
    Ok(keys.render())
}

fn create_cluster(data: &Path, addrs: &Addresses) -> anyhow::Result<Membership> {
    let NewCluster {
        identity,
        pki,
        token,
    } = new_cluster(addrs, None, None)?;
    persist(data, &identity, &pki, &token, addrs)?;
    info!(cluster = %identity.cluster_id, "created a new cluster");
    Ok(Membership {
        identity,
        pki,
        token,
        origin: Origin::Created,
    })
}

/// Writes a member's PKI, token, kubeconfig and, last, node.json.
pub fn persist(
    data: &Path,
    identity: &NodeIdentity,
    pki: &MemberPki,
    token: &JoinToken,
    addrs: &Addresses,
) -> anyhow::Result<()> {
    let files = MemberFiles::new(data, identity, pki, token, addrs)?;
    StagedFiles::write(&files.rest)?.commit()?;
    // Written last: its presence marks a complete member.
    StagedFiles::write(std::slice::from_ref(&files.node))?.commit()?;
    Ok(())
}

/// What makes a data dir a member, as files: `node` (node.json) must go in place last, once the
/// `rest` (PKI, token, admin kubeconfig) are durable.
pub struct MemberFiles {
    pub rest: Vec<FileSpec>,
    pub node: FileSpec,
}

impl MemberFiles {
    pub fn new(
        data: &Path,
        identity: &NodeIdentity,
        pki: &MemberPki,
        token: &JoinToken,
        addrs: &Addresses,
    ) -> anyhow::Result<MemberFiles> {
        let mut rest = PkiPaths::new(data).files(pki);
        rest.push(FileSpec {
            path: token_path(data),
            contents: format!("{token}\n").into_bytes(),
            secret: true,
        });
        let config = kubeconfig::render(
            "skiff",
            &format!("https://{}", addrs.api_advertised),
            &pki.ca.cert_pem,
            &pki.admin.cert_pem,
            &pki.admin.key_pem,
        );
        rest.push(FileSpec {
            path: data.join("admin.kubeconfig"),
            contents: config.into_bytes(),
            secret: true,
        });
        let node = FileSpec {
            path: NodeIdentity::path(data),
            contents: serde_json::to_vec_pretty(identity).context("encoding node.json")?,
            secret: false,
        };
        Ok(MemberFiles { rest, node })
    }
}

async fn join_cluster(
    data: &Path,
    url: &str,
    token: &str,
    addrs: &Addresses,
) -> anyhow::Result<Membership> {
    let token: JoinToken = token.parse()?;
    let server = url
        .trim_end_matches('/')
        .strip_prefix("https://")
        .unwrap_or(url)
        .to_string();
    let ca_pem = fetch_trusted_ca(&server, &token).await?;
    let mut client = admin_client(&server, &ca_pem, None).await?;
    let response = client
        .join(JoinRequest {
            token_secret: token.secret.clone(),
            name: addrs.name.clone(),
            raft_addr: addrs.raft_advertised.clone(),
            api_addr: addrs.api_advertised.clone(),
            client_addr: addrs.client_advertised.clone(),
            san: addrs.sans(),
        })
        .await
        .map_err(|status| anyhow!("join refused by {server}: {}", status.message()))?
        .into_inner();
    let pki = MemberPki {
        ca: CertKey {
            cert_pem: response.ca_cert_pem,
            key_pem: response.ca_key_pem,
        },
        node: CertKey {
            cert_pem: response.node_cert_pem,
            key_pem: response.node_key_pem,
        },
        admin: CertKey {
            cert_pem: response.admin_cert_pem,
            key_pem: response.admin_key_pem,
        },
        // Empty when the cluster was made before Secrets were encrypted: it stores them as
        // they are, and so must this member.
        secrets_encryption: key_file_from_wire(response.secrets_encryption_keys),
    };
    if let Some(text) = &pki.secrets_encryption {
        AtRestKeys::parse(text).context("the at-rest keys sent by the cluster")?;
    }
    let identity = addrs.identity(response.node_id, response.cluster_id);
    persist(data, &identity, &pki, &token, addrs)?;
    info!(cluster = %identity.cluster_id, node_id = identity.node_id, "joined as learner");
    Ok(Membership {
        identity,
        pki,
        token,
        origin: Origin::Joined,
    })
}

/// An admin gRPC client for `server` (host:port), trusting only the cluster CA.
pub async fn admin_client(
    server: &str,
    ca_pem: &str,
    identity: Option<&CertKey>,
) -> anyhow::Result<AdminClient<Channel>> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(PEER_DNS_NAME);
    if let Some(identity) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &identity.cert_pem,
            &identity.key_pem,
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{server}"))?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(15))
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))?;
    Ok(AdminClient::new(channel))
}

/// The cluster CA served at `server` (host:port), trusted only if its hash is the token's.
pub async fn fetch_trusted_ca(server: &str, token: &JoinToken) -> anyhow::Result<String> {
    let ca_pem = fetch_ca(server)
        .await
        .with_context(|| format!("fetching the cluster CA from {server}"))?;
    let fingerprint = ca_fingerprint(&ca_pem);
    if fingerprint != token.ca_hash {
        bail!(
            "the CA served by {server} (sha256 {fingerprint}) does not match the join token; refusing to join"
        );
    }
    Ok(ca_pem)
}

/// GET /cacerts without verifying the server: the caller checks the hash against the token.
async fn fetch_ca(server: &str) -> anyhow::Result<String> {
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(server),
    )
    .await
    .context("connect timed out")??;
    let name = ServerName::try_from(PEER_DNS_NAME).map_err(|e| anyhow!("{e}"))?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(
        format!("GET /cacerts HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tls.read_to_end(&mut response),
    )
    .await
    .context("reading /cacerts timed out")??;
    let text = String::from_utf8(response).context("/cacerts is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "unexpected response: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_string())
}

#[derive(Debug)]
struct AcceptAnyServerCert;

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
