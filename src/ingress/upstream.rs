//! Connections to backend pods: HTTP/1.1 keep-alive connections pooled per endpoint (nginx's
//! `keepalive` upstream), one multiplexed HTTP/2 connection per endpoint for h2c backends, and
//! one-off connections for protocol upgrades (websockets). A request that never reached a
//! backend — the connect failed, or a pooled connection turned out closed — comes back to the
//! caller untouched ([`SendError::NotSent`]), so it can be retried on another endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tracing::debug;

use super::annotations::UpstreamProtocol;

/// How long a backend may take to accept a connection before the next endpoint is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle pooled connections older than this are closed rather than reused (backends commonly
/// close idle keep-alive connections after 60-75 s; reusing one that is being closed races).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 128;

pub type Response = http::Response<Incoming>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr}: no answer within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: SocketAddr },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("request to {addr} failed: {source}")]
    Request {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// A failed send: with the request when it never left, so another endpoint can take it.
pub enum SendError {
    NotSent(Box<Request<Incoming>>, UpstreamError),
    Failed(UpstreamError),
}

struct Idle {
    sender: http1::SendRequest<Incoming>,
    since: Instant,
}

#[derive(Default)]
pub struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    multiplexed: Mutex<HashMap<SocketAddr, http2::SendRequest<Incoming>>>,
}

async fn connect(addr: SocketAddr) -> Result<TokioIo<TcpStream>, UpstreamError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout { addr })?
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

impl Upstreams {
    /// Sends `request` to `addr` and waits for the response headers.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        request: Request<Incoming>,
    ) -> Result<Response, SendError> {
        match protocol {
            UpstreamProtocol::Http1 => self.send_http1(addr, request).await,
            UpstreamProtocol::H2c => self.send_h2c(addr, request).await,
        }
    }

    fn checkout(&self, addr: SocketAddr) -> Option<http1::SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < IDLE_TIMEOUT && entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Puts `sender` back once its response body has been read to the end (hyper reports the
    /// connection ready then); a connection that closes meanwhile is simply dropped.
    fn check_in_when_ready(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut sender: http1::SendRequest<Incoming>,
    ) {
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(addr).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        });
    }

    async fn send_http1(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut request: Request<Incoming>,
    ) -> Result<Response, SendError> {
        // Pooled connections first; one the backend closed hands the request back.
        while let Some(mut sender) = self.checkout(addr) {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.check_in_when_ready(addr, sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        debug!(%addr, error = %e.error(), "pooled connection was closed; trying another");
                        request = unsent;
                    }
                    None => {
                        return Err(SendError::Failed(UpstreamError::Request {
                            addr,
                            source: e.into_error(),
                        }));
                    }
                },
            }
        }
        let mut sender = match self.handshake_http1(addr, false).await {
            Ok(sender) => sender,
            Err(e) => return Err(SendError::NotSent(Box::new(request), e)),
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                self.check_in_when_ready(addr, sender);
                Ok(response)
            }
            Err(mut e) => {
                let error = |source| UpstreamError::Request { addr, source };
                match e.take_message() {
                    Some(unsent) => {
                        Err(SendError::NotSent(Box::new(unsent), error(e.into_error())))
                    }
                    None => Err(SendError::Failed(error(e.into_error()))),
                }
            }
        }
    }

    async fn handshake_http1(
        &self,
        addr: SocketAddr,
        upgrades: bool,
    ) -> Result<http1::SendRequest<Incoming>, UpstreamError> {
        let io = connect(addr).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            let result = if upgrades {
                connection.with_upgrades().await
            } else {
                connection.await
            };
            if let Err(e) = result {
                debug!(%addr, error = %e, "backend connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends an upgrade request (websocket) on a connection of its own: after a 101 the
    /// connection belongs to the tunnel, never to the pool.
    pub async fn send_upgrade(
        &self,
        addr: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<Response, SendError> {
        let mut sender = match self.handshake_http1(addr, true).await {
            Ok(sender) => sender,
            Err(e) => return Err(SendError::NotSent(Box::new(request), e)),
        };
        sender
            .send_request(request)
            .await
            .map_err(|source| SendError::Failed(UpstreamError::Request { addr, source }))
    }

    async fn send_h2c(
        self: &Arc<Self>,
        addr: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<Response, SendError> {
        let cached = {
            let map = self.multiplexed.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&addr).filter(|s| !s.is_closed()).cloned()
        };
        let mut sender = match cached {
            Some(sender) => sender,
            None => {
                let io = match connect(addr).await {
                    Ok(io) => io,
                    Err(e) => return Err(SendError::NotSent(Box::new(request), e)),
                };
                let (sender, connection) = match http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                {
                    Ok(pair) => pair,
                    Err(source) => {
                        return Err(SendError::NotSent(
                            Box::new(request),
                            UpstreamError::Handshake { addr, source },
                        ));
                    }
                };
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        debug!(%addr, error = %e, "h2c backend connection ended");
                    }
                });
                self.multiplexed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(addr, sender.clone());
                sender
            }
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok(response),
            Err(mut e) => {
                let error = |source| UpstreamError::Request { addr, source };
                match e.take_message() {
                    Some(unsent) => {
                        self.multiplexed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&addr);
                        Err(SendError::NotSent(Box::new(unsent), error(e.into_error())))
                    }
                    None => Err(SendError::Failed(error(e.into_error()))),
                }
            }
        }
    }

    /// Drops idle connections that expired or closed, and endpoints with none left.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|e| e.since.elapsed() < IDLE_TIMEOUT && !e.sender.is_closed());
            !list.is_empty()
        });
        drop(idle);
        self.multiplexed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| !s.is_closed());
    }
}
