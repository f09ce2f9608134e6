//! The agent's Prometheus endpoint (`--metrics-listen`, default ADDRESS:10249, kube-proxy's
//! metrics port): plain HTTP `GET /metrics` with the series of the roles that keep any (the
//! ingress today). Counters only, no pod data or secrets, so it is unauthenticated like
//! kube-proxy's.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;

/// One role's exposition text, rendered on each scrape.
pub type Source = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for agent metrics: {source}")]
pub struct MetricsListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds `listen` and serves /metrics in the background.
pub async fn serve(
    listen: SocketAddr,
    sources: Vec<Source>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, MetricsListenError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| MetricsListenError {
            addr: listen,
            source,
        })?;
    let sources = Arc::new(sources);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let sources = sources.clone();
            async move {
                let body: String = sources.iter().map(|render| render()).collect();
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }
        }),
    );
    Ok(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ))
}
