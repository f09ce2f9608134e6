//! The ingress's listeners: plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge) and HTTPS
//! (rustls, ALPN h2 or http/1.1, certificates by SNI), served by a few workers — nginx's
//! model: each worker is a thread with a single-threaded runtime, its own listening sockets
//! (SO_REUSEPORT, the kernel spreads connections over them) and its own backend connections,
//! so a request is parsed, forwarded and answered on one thread without cross-thread wake-ups.
//! Every connection is its own task; a slow or broken client only ever holds its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::IngressError;
use super::proxy::{Connection, Proxy, Scheme};

/// A client has this long to send its request headers (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// And this long to finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Pending connections per listening socket.
const BACKLOG: u32 = 1024;
/// How often a worker sweeps its idle backend connections.
const SWEEP_PERIOD: Duration = Duration::from_secs(30);

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
pub(super) async fn serve_http(listener: TcpListener, proxy: Arc<Proxy>) {
    let builder = builder();
    loop {
        let (stream, connection) = accept(&listener, Scheme::Http).await;
        tokio::spawn(serve(stream, proxy.clone(), connection, builder.clone()));
    }
}

/// HTTPS on `listener`, forever.
async fn serve_https(listener: TcpListener, proxy: Arc<Proxy>, tls: Arc<rustls::ServerConfig>) {
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

/// A listening socket other workers may bind too (SO_REUSEPORT).
fn bind_shared(addr: SocketAddr) -> Result<TcpListener, IngressError> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|source| IngressError::Listen { addr, source })
}

/// Where the workers listen, and what they serve with.
pub struct Listeners {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub tls: Arc<rustls::ServerConfig>,
}

/// Starts `count` workers, each serving both listeners with the proxy `make_proxy` gives it
/// (its own backend connections); returns once every worker has bound its sockets, or the
/// first worker's error.
pub async fn start_workers(
    count: usize,
    listeners: Listeners,
    make_proxy: impl Fn() -> Arc<Proxy>,
) -> Result<(), IngressError> {
    let listeners = Arc::new(listeners);
    for index in 0..count.max(1) {
        let (bound, ready) = tokio::sync::oneshot::channel();
        let (proxy, listeners) = (make_proxy(), listeners.clone());
        std::thread::Builder::new()
            .name(format!("ingress-{index}"))
            .spawn(move || worker(proxy, &listeners, bound))
            .map_err(IngressError::Worker)?;
        ready
            .await
            .map_err(|_| IngressError::Worker(std::io::Error::other("worker exited")))??;
    }
    Ok(())
}

/// One worker thread: binds, reports, then serves forever.
fn worker(
    proxy: Arc<Proxy>,
    listeners: &Listeners,
    bound: tokio::sync::oneshot::Sender<Result<(), IngressError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = bound.send(Err(IngressError::Worker(e)));
            return;
        }
    };
    runtime.block_on(async move {
        let (http, https) = match (bind_shared(listeners.http), bind_shared(listeners.https)) {
            (Ok(http), Ok(https)) => (http, https),
            (Err(e), _) | (_, Err(e)) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
        let _ = bound.send(Ok(()));
        let upstreams = proxy.upstreams.clone();
        let sweep = async move {
            let mut every = tokio::time::interval(SWEEP_PERIOD);
            loop {
                every.tick().await;
                upstreams.sweep();
            }
        };
        tokio::join!(
            serve_http(http, proxy.clone()),
            serve_https(https, proxy, listeners.tls.clone()),
            sweep
        );
    });
}
