//! A minimal Kubernetes REST client for skiff's own commands (benchmarks, selective restore):
//! one HTTP/2 connection to an API server over mutual TLS with a client certificate, requests
//! multiplexed on it (as client-go does).

use std::sync::Arc;

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

use crate::pki::CertKey;
use crate::server::api_listener::{parse_certs, parse_key};

#[derive(Clone)]
pub struct ApiClient {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl ApiClient {
    pub async fn connect(addr: &str, ca_pem: &str, client: &CertKey) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in parse_certs(ca_pem)? {
            roots.add(cert)?;
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(parse_certs(&client.cert_pem)?, parse_key(&client.key_pem)?)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
        let ip: std::net::IpAddr = host.parse().context("the API address must be an IP")?;
        let tls = connector
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "bench connection ended");
            }
        });
        Ok(ApiClient {
            sender,
            authority: addr.to_string(),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        Ok(Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(body))?)
    }

    /// One request; the status and the whole body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = self.request(method, path, body)?;
        let mut sender = self.sender.clone();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// A watch: calls `on_line` with each JSON event line until the stream ends or `on_line`
    /// returns false.
    pub async fn watch(
        &self,
        path: &str,
        mut on_line: impl FnMut(&[u8]) -> bool,
    ) -> anyhow::Result<()> {
        let request = self.request(Method::GET, path, None)?;
        let mut sender = self.sender.clone();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            return Err(anyhow!("watch refused: {}", response.status()));
        }
        let mut body = response.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !on_line(&line) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
