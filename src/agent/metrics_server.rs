//! The agent's Prometheus endpoint (`--metrics-listen`, default ADDRESS:10249, kube-proxy's
//! metrics port): plain HTTP `GET /metrics` with the series of each role the agent plays
//! (kubelet, proxy, ingress), under the names the Kubernetes components use. Counters only, no
//! pod data or secrets, so it is unauthenticated like kube-proxy's.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;

use super::pods::PodRegistry;

/// One role's exposition text, rendered on each scrape.
pub type Source = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for agent metrics: {source}")]
pub struct MetricsListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// The kubelet's gauges: which node, pods and running containers it holds.
pub fn kubelet_source(node: String, registry: Arc<PodRegistry>) -> Source {
    Arc::new(move || {
        let (pods, containers) = registry.counts();
        format!(
            "# HELP kubelet_node_name The node's name. The count is always 1.\n# TYPE kubelet_node_name gauge\nkubelet_node_name{{node=\"{}\"}} 1\n\
             # HELP kubelet_running_pods Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {pods}\n\
             # HELP kubelet_running_containers Number of containers currently running\n# TYPE kubelet_running_containers gauge\nkubelet_running_containers{{container_state=\"running\"}} {containers}\n",
            node.replace('\\', "\\\\").replace('"', "\\\"")
        )
    })
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
