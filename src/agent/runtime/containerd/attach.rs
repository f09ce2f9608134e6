//! `kubectl attach` with containerd: CRI's Attach hands out a one-time URL of containerd's
//! streaming server, which keeps the container's stdio FIFOs (its stdin open when the spec
//! says `stdin: true`, closed by containerd after the first attach when `stdinOnce`) while its
//! CRI logger still writes the log. The agent connects there with the WebSocket channel
//! protocol v4 (`v4.channel.k8s.io`: a first byte naming the stream, 0 stdin, 1 stdout,
//! 2 stderr, 3 status, 4 resize) and turns the frames into an [`Attachment`].
//!
//! v4 cannot half-close one stream: a client's end of stdin reaches containerd (and, with
//! `stdinOnce`, the process) only when the client detaches.

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing::{Instrument, debug, info_span};

use crate::agent::runtime::{AttachInput, AttachOutput, Attachment, RuntimeError};

const PROTOCOL: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

fn attach_error(message: String) -> RuntimeError {
    RuntimeError::Runtime(format!("attaching through containerd's streaming server: {message}"))
}

/// Connects to the streaming server `url` (from CRI Attach) and relays its frames.
pub async fn connect(url: &str) -> Result<Attachment, RuntimeError> {
    let ws_url = url
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .ok_or_else(|| attach_error(format!("unexpected URL {url:?}")))?;
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| attach_error(e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        http::HeaderValue::from_static(PROTOCOL),
    );
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| attach_error(format!("no host in {url:?}")))?;
    let tcp = tokio::net::TcpStream::connect(&host)
        .await
        .map_err(|e| attach_error(format!("{host}: {e}")))?;
    let (socket, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| attach_error(e.to_string()))?;
    let (mut sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(64);
    let (in_tx, mut in_rx) = mpsc::channel::<AttachInput>(64);
    let span = info_span!("cri_attach");
    let writer = tokio::spawn(
        async move {
            while let Some(input) = in_rx.recv().await {
                let (channel, data) = match input {
                    AttachInput::Stdin(data) => (STDIN, data),
                    AttachInput::Resize { width, height } => (
                        RESIZE,
                        json!({"Width": width, "Height": height})
                            .to_string()
                            .into_bytes(),
                    ),
                    // Not expressible in v4 (see the module comment).
                    AttachInput::CloseStdin => continue,
                };
                let mut frame = Vec::with_capacity(data.len() + 1);
                frame.push(channel);
                frame.extend_from_slice(&data);
                if sink.send(Message::Binary(frame.into())).await.is_err() {
                    return;
                }
            }
            // The client detached: so does the agent, which ends stdin for containerd.
            let _ = sink.close().await;
        }
        .instrument(span.clone()),
    );
    tokio::spawn(
        async move {
            while let Some(Ok(message)) = stream.next().await {
                let data = match message {
                    Message::Binary(data) => data.to_vec(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Some((&channel, rest)) = data.split_first() else {
                    continue;
                };
                let chunk = match channel {
                    STDOUT if !rest.is_empty() => AttachOutput::Stdout(rest.to_vec()),
                    STDERR if !rest.is_empty() => AttachOutput::Stderr(rest.to_vec()),
                    STATUS if !rest.is_empty() => {
                        debug!(status = %String::from_utf8_lossy(rest), "attach ended");
                        continue;
                    }
                    _ => continue,
                };
                if out_tx.send(chunk).await.is_err() {
                    break;
                }
            }
            // The output is over (the container exited or containerd closed): so is the
            // attachment, whatever the client still sends.
            writer.abort();
        }
        .instrument(span),
    );
    Ok(Attachment {
        output: out_rx,
        input: in_tx,
    })
}
