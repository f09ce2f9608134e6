//! `kubectl attach` with containerd: CRI's Attach hands out a one-time URL of containerd's
//! streaming server, which keeps the container's stdio FIFOs (stdin open when the spec says
//! `stdin: true`, closed by containerd when the first attached client's stdin ends if
//! `stdinOnce`) while its CRI logger still writes the log. The agent speaks the kubelet's
//! remote-command protocol there, as kubectl would: an HTTP upgrade to SPDY/3.1
//! (`v4.channel.k8s.io`), then one stream per channel (error, stdin, stdout, stderr, resize)
//! opened by the client. SPDY rather than the WebSocket variant because only SPDY can end
//! stdin alone (a FIN on its stream) and still read the output that follows.

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span};

use crate::agent::runtime::{AttachInput, AttachOptions, AttachOutput, Attachment, RuntimeError};
use crate::spdy::{self, Codec, FLAG_FIN, Frame, Headers};

const PROTOCOL: &str = "v4.channel.k8s.io";
/// The longest response head accepted from the streaming server.
const MAX_HEAD: usize = 16 * 1024;
/// The largest data frame sent.
const CHUNK: usize = 32 * 1024;

fn attach_error(message: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Runtime(format!(
        "attaching through containerd's streaming server: {message}"
    ))
}

/// The client-opened streams of one session (SPDY ids; 0 = not opened).
#[derive(Clone, Copy, Default)]
struct StreamIds {
    error: u32,
    stdin: u32,
    stdout: u32,
    stderr: u32,
    resize: u32,
}

/// Connects to the streaming server `url` (from CRI Attach, made for `options`) and relays
/// its streams.
pub async fn connect(url: &str, options: AttachOptions) -> Result<Attachment, RuntimeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| attach_error(format!("unexpected URL {url:?}")))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut tcp = TcpStream::connect(host)
        .await
        .map_err(|e| attach_error(format!("{host}: {e}")))?;
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: {PROTOCOL}\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(attach_error)?;
    let leftover = read_upgrade(&mut tcp).await?;
    let mut codec = Codec::default();
    codec.feed(&leftover);

    // 1. Open the streams the server waits for, in kubectl's order.
    let mut ids = StreamIds::default();
    let mut opening = Vec::new();
    let mut next = 1;
    for (kind, wanted, slot) in [
        ("error", true, &mut ids.error),
        ("stdin", options.stdin, &mut ids.stdin),
        ("stdout", options.stdout, &mut ids.stdout),
        ("stderr", options.stderr, &mut ids.stderr),
        ("resize", options.tty, &mut ids.resize),
    ] {
        if !wanted {
            continue;
        }
        let headers = Headers::from([("streamtype".to_string(), kind.to_string())]);
        opening.extend(codec.syn_stream(next, 0, &headers).map_err(attach_error)?);
        *slot = next;
        next += 2;
    }
    tcp.write_all(&opening).await.map_err(attach_error)?;

    // 2. One task writes (client input, pings answered), one reads (output).
    let (reader, writer) = tcp.into_split();
    let (out_tx, out_rx) = mpsc::channel(64);
    let (in_tx, in_rx) = mpsc::channel::<AttachInput>(64);
    let (pong_tx, pong_rx) = mpsc::channel::<Vec<u8>>(8);
    let span = info_span!("cri_attach");
    let writing = tokio::spawn(write_input(writer, ids, in_rx, pong_rx).instrument(span.clone()));
    tokio::spawn(
        async move {
            read_output(reader, codec, ids, out_tx, pong_tx).await;
            // The output is over (the container exited, or containerd closed): so is the
            // session, whatever the client still sends.
            writing.abort();
        }
        .instrument(span),
    );
    Ok(Attachment {
        output: out_rx,
        input: in_tx,
    })
}

/// Reads the upgrade's response head; returns the bytes after it (the first SPDY frames).
async fn read_upgrade(tcp: &mut TcpStream) -> Result<Vec<u8>, RuntimeError> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    let end = loop {
        let n = tcp.read(&mut buffer).await.map_err(attach_error)?;
        if n == 0 {
            return Err(attach_error("the connection closed during the upgrade"));
        }
        head.extend_from_slice(&buffer[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if head.len() > MAX_HEAD {
            return Err(attach_error("an oversized response head"));
        }
    };
    let status = String::from_utf8_lossy(&head[..end]);
    let status = status.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(attach_error(format!(
            "the upgrade was refused: {status} {}",
            String::from_utf8_lossy(&head[end..]).trim()
        )));
    }
    Ok(head[end..].to_vec())
}

async fn write_input(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    ids: StreamIds,
    mut input: mpsc::Receiver<AttachInput>,
    mut pongs: mpsc::Receiver<Vec<u8>>,
) {
    let mut stdin_open = ids.stdin != 0;
    loop {
        let frames = tokio::select! {
            Some(pong) = pongs.recv() => pong,
            event = input.recv() => match event {
                Some(AttachInput::Stdin(data)) if stdin_open => data
                    .chunks(CHUNK)
                    .flat_map(|chunk| spdy::data(ids.stdin, 0, chunk))
                    .collect(),
                Some(AttachInput::CloseStdin) if stdin_open => {
                    stdin_open = false;
                    spdy::data(ids.stdin, FLAG_FIN, &[])
                }
                Some(AttachInput::Resize { width, height }) if ids.resize != 0 => {
                    let size = json!({"Width": width, "Height": height}).to_string();
                    spdy::data(ids.resize, 0, size.as_bytes())
                }
                Some(_) => continue,
                // The client detached: end stdin, then the session.
                None => {
                    let mut last = Vec::new();
                    if stdin_open {
                        last.extend(spdy::data(ids.stdin, FLAG_FIN, &[]));
                    }
                    last.extend(spdy::goaway(0));
                    let _ = writer.write_all(&last).await;
                    let _ = writer.shutdown().await;
                    return;
                }
            },
        };
        if writer.write_all(&frames).await.is_err() {
            return;
        }
    }
}

async fn read_output(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut codec: Codec,
    ids: StreamIds,
    output: mpsc::Sender<AttachOutput>,
    pongs: mpsc::Sender<Vec<u8>>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        loop {
            let frame = match codec.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "unreadable SPDY from containerd");
                    return;
                }
            };
            let chunk = match frame {
                Frame::Data { stream, data, .. } if data.is_empty() => {
                    debug!(stream, "stream ended");
                    continue;
                }
                Frame::Data { stream, data, .. } if stream == ids.stdout => {
                    AttachOutput::Stdout(data)
                }
                Frame::Data { stream, data, .. } if stream == ids.stderr => {
                    AttachOutput::Stderr(data)
                }
                Frame::Data { stream, data, .. } if stream == ids.error => {
                    debug!(status = %String::from_utf8_lossy(&data), "attach ended");
                    continue;
                }
                Frame::Ping { id } => {
                    let _ = pongs.send(spdy::ping(id)).await;
                    continue;
                }
                Frame::GoAway { .. } => return,
                _ => continue,
            };
            if output.send(chunk).await.is_err() {
                return;
            }
        }
        // A client that left ends the session even while the container prints nothing.
        let read = tokio::select! {
            read = reader.read(&mut buffer) => read,
            () = output.closed() => return,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => codec.feed(&buffer[..n]),
        }
    }
}
