//! The ingress's listeners: plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge) and HTTPS
//! (rustls, ALPN h2 or http/1.1, certificates by SNI). Every connection is its own task; a
//! slow or broken client only ever holds its own.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::proxy::{Connection, Proxy, Scheme};

/// A client has this long to send its request headers (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// And this long to finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder
}

/// Serves one accepted connection (already decrypted for HTTPS) until it closes.
async fn serve<I>(
    io: I,
    proxy: Arc<Proxy>,
    connection: Connection,
    builder: auto::Builder<TokioExecutor>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(request, connection).await) }
    });
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
        debug!(peer = %connection.peer, error = %e, "connection ended with an error");
    }
}

/// The next connection, with the facts its requests need.
async fn accept(listener: &TcpListener, scheme: Scheme) -> (TcpStream, Connection) {
    loop {
        let accepted = listener
            .accept()
            .await
            .and_then(|(stream, peer)| Ok((stream.local_addr()?, stream, peer)));
        match accepted {
            Ok((local, stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let connection = Connection {
                    peer,
                    local,
                    scheme,
                };
                return (stream, connection);
            }
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Plain HTTP on `listener`, forever.
pub async fn serve_http(listener: TcpListener, proxy: Arc<Proxy>) {
    let builder = builder();
    loop {
        let (stream, connection) = accept(&listener, Scheme::Http).await;
        tokio::spawn(serve(stream, proxy.clone(), connection, builder.clone()));
    }
}

/// HTTPS on `listener`, forever.
pub async fn serve_https(listener: TcpListener, proxy: Arc<Proxy>, tls: Arc<rustls::ServerConfig>) {
    let builder = builder();
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, connection) = accept(&listener, Scheme::Https).await;
        let (acceptor, proxy, builder) = (acceptor.clone(), proxy.clone(), builder.clone());
        let peer = connection.peer;
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve(tls, proxy, connection, builder).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
