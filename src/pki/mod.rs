//! The cluster PKI: one CA per cluster, node certificates for control-plane members (peer and
//! serving), an admin client certificate, and the join token that pins the CA.
//!
//! Why a CA per cluster and a pinned hash in the token: a joining node has nothing to trust yet,
//! so it fetches the CA over an unverified TLS connection and accepts it only if its SHA-256 equals
//! the hash inside the token (the k3s scheme). Everything after that is verified TLS.

pub mod at_rest;
mod staged;
mod token;

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

pub use staged::{FileSpec, StagedFiles};
pub use token::{JoinToken, constant_time_eq};

/// DNS name every member's certificate carries, so peers can verify each other independent of
/// which address (advertise, loopback, listen override) they dialled.
pub const PEER_DNS_NAME: &str = "skiff-peer";
/// The TLS name every agent's Kubelet server certificate carries (the API server dials agents
/// by address and checks this name, so an agent certificate can never pass as a member's).
pub const AGENT_DNS_NAME: &str = "skiff-agent";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA; holds the key, so only control-plane members have one.
#[derive(Clone, Debug)]
pub struct ClusterCa {
    pub ca: CertKey,
}

/// Every PEM file of a member, as laid out under DATA/pki.
#[derive(Clone, Debug)]
pub struct MemberPki {
    pub ca: CertKey,
    pub node: CertKey,
    pub admin: CertKey,
    /// The text of the at-rest key file (see `at_rest`); None for a data dir made before
    /// Secrets were encrypted, whose cluster then keeps storing them as they are.
    pub secrets_encryption: Option<String>,
}

impl ClusterCa {
    pub fn generate(cluster_id: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = distinguished_name(&format!("skiff-ca-{cluster_id}"), None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            ca: CertKey {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
        })
    }

    pub fn from_pem(ca: CertKey) -> Self {
        ClusterCa { ca }
    }

    /// SHA-256 (hex) of the CA certificate PEM: what a join token pins.
    pub fn fingerprint(&self) -> String {
        ca_fingerprint(&self.ca.cert_pem)
    }

    /// A serving + client certificate for a control-plane member. `sans` are extra IPs/names.
    pub fn issue_node(&self, name: &str, sans: &[String]) -> Result<CertKey, PkiError> {
        let mut names: Vec<String> =
            vec![PEER_DNS_NAME.into(), "localhost".into(), "127.0.0.1".into()];
        for san in sans {
            if !san.is_empty() && !names.contains(san) {
                names.push(san.clone());
            }
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name =
            distinguished_name(&format!("system:node:{name}"), Some("system:nodes"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// A node agent's certificate: the kubelet's identity (`system:node:<name>` in group
    /// `system:nodes`) for calls to the control plane, and its Kubelet server certificate.
    pub fn issue_agent(&self, name: &str, sans: &[String]) -> Result<CertKey, PkiError> {
        let mut names: Vec<String> = vec![AGENT_DNS_NAME.into()];
        for san in sans {
            if !san.is_empty() && !names.contains(san) {
                names.push(san.clone());
            }
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name =
            distinguished_name(&format!("system:node:{name}"), Some("system:nodes"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// A client certificate: CN is the user, O the group (Kubernetes' x509 convention).
    pub fn issue_client(&self, user: &str, group: Option<&str>) -> Result<CertKey, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = distinguished_name(user, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<CertKey, PkiError> {
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        params.use_authority_key_identifier_extension = true;
        let ca_key = KeyPair::from_pem(&self.ca.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

pub fn ca_fingerprint(ca_cert_pem: &str) -> String {
    hex::encode(Sha256::digest(ca_cert_pem.as_bytes()))
}

fn distinguished_name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

/// Paths of the PKI files under a data dir.
pub struct PkiPaths {
    dir: PathBuf,
}

impl PkiPaths {
    pub fn new(data_dir: &Path) -> Self {
        PkiPaths {
            dir: data_dir.join("pki"),
        }
    }

    /// The member's PKI as files to write (with `StagedFiles`).
    pub fn files(&self, pki: &MemberPki) -> Vec<FileSpec> {
        [
            ("ca.crt", &pki.ca.cert_pem, false),
            ("ca.key", &pki.ca.key_pem, true),
            ("node.crt", &pki.node.cert_pem, false),
            ("node.key", &pki.node.key_pem, true),
            ("admin.crt", &pki.admin.cert_pem, false),
            ("admin.key", &pki.admin.key_pem, true),
        ]
        .into_iter()
        .chain(
            pki.secrets_encryption
                .as_ref()
                .map(|text| (at_rest::KEY_FILE, text, true)),
        )
        .map(|(file, pem, secret)| FileSpec {
            path: self.dir.join(file),
            contents: pem.as_bytes().to_vec(),
            secret,
        })
        .collect()
    }

    pub fn load(&self) -> Result<MemberPki, PkiError> {
        let read = |file: &str| {
            let path = self.dir.join(file);
            fs::read_to_string(&path).map_err(|source| PkiError::Io { path, source })
        };
        Ok(MemberPki {
            ca: CertKey {
                cert_pem: read("ca.crt")?,
                key_pem: read("ca.key")?,
            },
            node: CertKey {
                cert_pem: read("node.crt")?,
                key_pem: read("node.key")?,
            },
            admin: CertKey {
                cert_pem: read("admin.crt")?,
                key_pem: read("admin.key")?,
            },
            secrets_encryption: match read(at_rest::KEY_FILE) {
                Ok(text) => Some(text),
                Err(PkiError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    None
                }
                Err(e) => return Err(e),
            },
        })
    }
}

/// Writes a file atomically (temp + rename); secrets get mode 0600.
pub fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    let io_err = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut file = opts.open(&tmp).map_err(io_err)?;
        file.write_all(contents).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
    }
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_chain_to_the_ca() {
        let ca = ClusterCa::generate("test").expect("ca");
        let node = ca.issue_node("n1", &["10.0.0.1".into()]).expect("node");
        let admin = ca
            .issue_client("system:admin", Some("system:masters"))
            .expect("admin");
        assert!(node.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(admin.key_pem.contains("PRIVATE KEY"));
        assert_eq!(ca.fingerprint().len(), 64);
        assert_ne!(node.cert_pem, admin.cert_pem);
    }
}
