//! The gRPC channel to containerd's CRI plugin over its unix socket, and the mapping of gRPC
//! statuses onto runtime errors.
//!
//! tonic dials TCP by default: the connector below opens the unix socket instead (the URI it is
//! handed is a placeholder tonic requires and nobody reads).

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use skiff_proto::cri::VersionRequest;
use skiff_proto::cri::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{debug, info};

use crate::agent::runtime::RuntimeError;

/// The CRI version skiff speaks (containerd 1.6 serves v1 and v1alpha2).
const CRI_VERSION: &str = "v1";

/// Maps a failed RPC: NotFound stays distinguishable (callers treat it as "already gone").
pub fn rpc_error(context: &str, status: tonic::Status) -> RuntimeError {
    if status.code() == tonic::Code::NotFound {
        return RuntimeError::NotFound(format!("{context}: {}", status.message()));
    }
    RuntimeError::Runtime(format!("{context}: {}", status.message()))
}

/// Opens a channel to the socket (lazily multiplexed by tonic; cheap to clone).
pub async fn connect(socket: &Path) -> Result<Channel, RuntimeError> {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://containerd.sock")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| RuntimeError::Runtime(format!("connecting to {}: {e}", socket.display())))
}

/// Asks the CRI plugin for its version: the one call that proves containerd *and* its CRI
/// plugin are up (the socket exists well before the plugin has loaded).
async fn version(channel: Channel) -> Result<(), tonic::Status> {
    let v = RuntimeServiceClient::new(channel)
        .version(VersionRequest {
            version: CRI_VERSION.into(),
        })
        .await?
        .into_inner();
    info!(
        runtime = %v.runtime_name,
        version = %v.runtime_version,
        api = %v.runtime_api_version,
        "containerd answers CRI"
    );
    Ok(())
}

/// Whether a containerd answers CRI on `socket` right now.
pub async fn answers(socket: &Path) -> bool {
    if !socket.exists() {
        return false;
    }
    match connect(socket).await {
        Ok(channel) => version(channel).await.is_ok(),
        Err(_) => false,
    }
}

/// Waits until `socket` answers the Version RPC, up to `timeout`; `alive` is polled between
/// attempts so a containerd that died on start fails fast instead of at the deadline.
pub async fn wait_ready(
    socket: &Path,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), RuntimeError>,
) -> Result<Channel, RuntimeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let failure = match connect(socket).await {
            Ok(channel) => match version(channel.clone()).await {
                Ok(()) => return Ok(channel),
                Err(status) => rpc_error("containerd's CRI plugin", status),
            },
            Err(e) => e,
        };
        alive()?;
        if tokio::time::Instant::now() > deadline {
            return Err(failure);
        }
        debug!(error = %failure, "containerd not ready yet");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
