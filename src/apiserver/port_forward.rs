//! `pods/portforward`: `kubectl port-forward`'s protocol. kubectl 1.32 opens a WebSocket
//! whose binary messages tunnel a SPDY/3.1 session (`SPDY/3.1+portforward.k8s.io`, KEP 4006);
//! every local connection kubectl accepts becomes a pair of SPDY streams sharing a
//! `requestid` — an error stream and a data stream for one `port`. Each pair here becomes one
//! Kubelet `PortForward` gRPC stream to the pod's node, whose bytes go back as data frames;
//! a failure is written on the error stream. Both streams end with FIN when either side
//! closes.
//!
//! The session loop alone owns the SPDY codec (its compression contexts are per connection);
//! per-pair tasks only send data frames, which are not compressed.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use skiff_proto::agent::kubelet_client::KubeletClient;
use skiff_proto::agent::{
    PortForwardInput, PortForwardStart, port_forward_input, port_forward_output,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{Instrument, debug, warn};

use super::objects::{Objects, Scope};
use super::pod_streams::{Kubelets, node_address};
use super::request::ResourceTarget;
use super::status::ApiError;
use crate::spdy::{self, Codec, FLAG_FIN, Frame, Headers};

/// The WebSocket subprotocols of the tunnelled SPDY session (names used by kubectl versions).
const PROTOCOLS: [&str; 2] = ["SPDY/3.1+portforward.k8s.io", "v2.portforward.k8s.io"];
/// The largest data frame sent.
const CHUNK: usize = 32 * 1024;

/// `GET pods/<name>/portforward` with a WebSocket upgrade.
pub async fn port_forward(
    kubelets: &Kubelets,
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let pod = objects
        .get(
            Scope::new(target.kind, target.namespace.as_deref()),
            name,
            false,
        )
        .await?;
    let address = node_address(objects, &pod, name).await?;
    let client = kubelets.client(&address)?;
    let (mut parts, _) = request.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| {
            ApiError::BadRequest(format!(
                "port-forward needs a WebSocket upgrade (SPDY/3.1+portforward.k8s.io): {e}"
            ))
        })?;
    let pod_ref = PodRef {
        namespace: target.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
    };
    let span = tracing::info_span!("port-forward", pod = %name);
    Ok(upgrade
        .protocols(PROTOCOLS)
        .on_upgrade(move |socket| session(socket, client, pod_ref).instrument(span))
        .into_response())
}

#[derive(Clone)]
struct PodRef {
    namespace: String,
    name: String,
}

/// The two streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    port: u32,
    error: Option<u32>,
    data: Option<u32>,
}

async fn session(socket: WebSocket, client: KubeletClient<Channel>, pod: PodRef) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut codec = Codec::default();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Data stream id -> the bytes kubectl sends to the pod.
    let mut inputs: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    'read: while let Some(message) = stream.next().await {
        let bytes = match message {
            Ok(Message::Binary(bytes)) => bytes,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        codec.feed(&bytes);
        loop {
            let frame = match codec.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "port-forward: bad SPDY frame; closing");
                    break 'read;
                }
            };
            match frame {
                Frame::SynStream {
                    stream: id,
                    headers,
                    ..
                } => {
                    let reply = match codec.syn_reply(id, 0, &Headers::new()) {
                        Ok(reply) => reply,
                        Err(e) => {
                            warn!(error = %e, "port-forward: cannot reply");
                            break 'read;
                        }
                    };
                    if out_tx.send(reply).await.is_err() {
                        break 'read;
                    }
                    let request = headers.get("requestid").cloned().unwrap_or_default();
                    let pair = pairs.entry(request.clone()).or_default();
                    pair.port = headers
                        .get("port")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                    match headers.get("streamtype").map(String::as_str) {
                        Some("error") => pair.error = Some(id),
                        Some("data") => pair.data = Some(id),
                        other => debug!(?other, "port-forward: unknown stream type"),
                    }
                    if let (Some(error), Some(data)) = (pair.error, pair.data) {
                        let port = pair.port;
                        pairs.remove(&request);
                        let (input_tx, input_rx) = mpsc::channel(64);
                        inputs.insert(data, input_tx);
                        tokio::spawn(forward(
                            client.clone(),
                            pod.clone(),
                            port,
                            (error, data),
                            input_rx,
                            out_tx.clone(),
                        ));
                    }
                }
                Frame::Data {
                    stream: id,
                    flags,
                    data,
                } => {
                    if let Some(input) = inputs.get(&id)
                        && !data.is_empty()
                        && input.send(data).await.is_err()
                    {
                        inputs.remove(&id);
                    }
                    if flags & FLAG_FIN != 0 {
                        // kubectl's side is done writing: half-close towards the pod.
                        inputs.remove(&id);
                    }
                }
                Frame::RstStream { stream: id, .. } => {
                    inputs.remove(&id);
                }
                Frame::Ping { id } => {
                    if out_tx.send(spdy::ping(id)).await.is_err() {
                        break 'read;
                    }
                }
                Frame::GoAway { .. } => break 'read,
                Frame::SynReply { .. }
                | Frame::Headers { .. }
                | Frame::Settings
                | Frame::WindowUpdate { .. }
                | Frame::Other { .. } => {}
            }
        }
    }
    drop(inputs);
    let _ = out_tx.send(spdy::goaway(0)).await;
    drop(out_tx);
    let _ = writer.await;
}

/// One forwarded connection: kubectl's bytes to the pod's port through the Kubelet, and
/// back as data frames; errors on the error stream.
async fn forward(
    mut client: KubeletClient<Channel>,
    pod: PodRef,
    port: u32,
    (error_stream, data_stream): (u32, u32),
    input: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<Vec<u8>>,
) {
    let start = PortForwardInput {
        input: Some(port_forward_input::Input::Start(PortForwardStart {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            port,
        })),
    };
    let requests =
        futures::stream::once(async move { start }).chain(ReceiverStream::new(input).map(|data| {
            PortForwardInput {
                input: Some(port_forward_input::Input::Data(data)),
            }
        }));
    let failure = match client.port_forward(requests).await {
        Ok(response) => {
            let mut outputs = response.into_inner();
            let mut failure = None;
            loop {
                match outputs.message().await {
                    Ok(Some(message)) => match message.output {
                        Some(port_forward_output::Output::Data(bytes)) => {
                            for chunk in bytes.chunks(CHUNK) {
                                if out.send(spdy::data(data_stream, 0, chunk)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Some(port_forward_output::Output::Error(e)) => {
                            failure = Some(e);
                            break;
                        }
                        None => {}
                    },
                    Ok(None) => break,
                    Err(status) => {
                        failure = Some(status.message().to_string());
                        break;
                    }
                }
            }
            failure
        }
        Err(status) => Some(status.message().to_string()),
    };
    if let Some(message) = failure {
        let text = format!(
            "error forwarding port {port} to pod {}: {message}",
            pod.name
        );
        debug!(%text, "port-forward failed");
        let _ = out.send(spdy::data(error_stream, 0, text.as_bytes())).await;
    }
    let _ = out.send(spdy::data(data_stream, FLAG_FIN, &[])).await;
    let _ = out.send(spdy::data(error_stream, FLAG_FIN, &[])).await;
}
