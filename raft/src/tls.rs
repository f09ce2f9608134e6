//! PEM material -> tonic TLS configs. Peers authenticate each other with certificates signed by
//! the cluster CA; the client side always verifies the name `skiff-peer` every member cert has.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The DNS name in every member certificate (see the binary's pki module).
pub const PEER_SERVER_NAME: &str = "skiff-peer";

#[derive(Clone, Debug)]
pub struct PeerTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl PeerTls {
    /// Server side of the peer port: a client certificate from the cluster CA is required.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// Client side: present our member certificate, trust only the cluster CA.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(PEER_SERVER_NAME)
    }
}
