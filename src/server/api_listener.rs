//! The API port (6443): one TLS listener serving HTTP/1.1 and HTTP/2, REST and gRPC alike.
//!
//! Why our own accept loop instead of tonic's server: the same port must serve kubectl (REST,
//! often HTTP/1.1), agents and admin tools (gRPC), and unauthenticated bootstrap (`/cacerts`),
//! with client certificates optional and their presence passed to handlers.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{Instrument, debug, info_span};

/// Attached to every request: whether the client showed a certificate signed by the cluster CA
/// (the handshake verified it), and who it names: Kubernetes reads the user from the subject's
/// CommonName and the groups from its Organizations.
#[derive(Clone, Debug, Default)]
pub struct ClientCertificate {
    pub verified: bool,
    pub common_name: String,
    pub organizations: Vec<String>,
}

impl ClientCertificate {
    fn from_peer(certs: Option<&[CertificateDer<'_>]>) -> Self {
        let Some(first) = certs.and_then(|c| c.first()) else {
            return ClientCertificate::default();
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(first.as_ref()) else {
            return ClientCertificate::default();
        };
        let subject = cert.subject();
        let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            attr.as_str().ok().map(str::to_string)
        };
        ClientCertificate {
            verified: true,
            common_name: subject
                .iter_common_name()
                .find_map(text)
                .unwrap_or_default(),
            organizations: subject.iter_organization().filter_map(text).collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("TLS config: {0}")]
    Tls(#[from] rustls::Error),
}

pub fn tls_acceptor(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<TlsAcceptor, ListenerError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        roots.add(cert)?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| ListenerError::Pem(e.to_string()))?;
    let key = parse_key(key_pem)?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(parse_certs(cert_pem)?, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, ListenerError> {
    rustls_pemfile::certs(&mut cert_pem_reader(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ListenerError::Pem(e.to_string()))
}

pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, ListenerError> {
    rustls_pemfile::private_key(&mut cert_pem_reader(pem))
        .map_err(|e| ListenerError::Pem(e.to_string()))?
        .ok_or_else(|| ListenerError::Pem("no private key".into()))
}

fn cert_pem_reader(pem: &str) -> std::io::BufReader<&[u8]> {
    std::io::BufReader::new(pem.as_bytes())
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, router: Router) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                debug!(error = %e, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(
            async move {
                let _ = tcp.set_nodelay(true);
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let identity = ClientCertificate::from_peer(tls.get_ref().1.peer_certificates());
                let service = hyper::service::service_fn(
                    move |mut request: hyper::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(identity.clone());
                        router.clone().oneshot(request.map(axum::body::Body::new))
                    },
                );
                if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
                {
                    debug!(error = %e, "connection ended with error");
                }
            }
            .instrument(info_span!("api_conn", %remote)),
        );
    }
}
