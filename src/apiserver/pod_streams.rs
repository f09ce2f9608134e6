//! `pods/log`, `pods/exec` and `pods/attach`: the API server relays them to the Kubelet API of
//! the pod's node (gRPC, mutual TLS, as `kube-apiserver-kubelet-client` in `system:masters`).
//! Logs stream as chunked text; exec and attach speak the WebSocket channel protocol kubectl
//! 1.32 uses (`v5.channel.k8s.io`, also v4): a first byte naming the stream (0 stdin,
//! 1 stdout, 2 stderr, 3 error/status, 4 resize, 255 close) then the data. The node's stream
//! is opened before the upgrade, so what the node refuses (container not running, no stdin)
//! is this request's Status with its HTTP code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use skiff_proto::agent::kubelet_client::KubeletClient;
use skiff_proto::agent::{
    ExecInput, ExecOutput, ExecStart, LogsRequest, TerminalSize, exec_input, exec_output,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{Instrument, debug};

use super::objects::{Objects, Scope};
use super::request::{Query, ResourceTarget};
use super::status::ApiError;
use crate::json_path::JsonPath;
use crate::pki::{AGENT_DNS_NAME, CertKey};

/// Channels to the nodes' Kubelet APIs, one per address, reused.
#[derive(Clone)]
pub struct Kubelets {
    ca_pem: String,
    identity: CertKey,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Kubelets {
    pub fn new(ca_pem: String, identity: CertKey) -> Self {
        Kubelets {
            ca_pem,
            identity,
            channels: Arc::default(),
        }
    }

    pub(super) fn client(&self, address: &str) -> Result<KubeletClient<Channel>, ApiError> {
        if let Some(channel) = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
        {
            return Ok(KubeletClient::new(channel.clone()));
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(
                &self.identity.cert_pem,
                &self.identity.key_pem,
            ))
            .domain_name(AGENT_DNS_NAME);
        let channel = Endpoint::from_shared(format!("https://{address}"))
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| ApiError::Internal(format!("kubelet endpoint {address}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address.to_string(), channel.clone());
        Ok(KubeletClient::new(channel))
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

fn kubelet_error(status: tonic::Status) -> ApiError {
    match status.code() {
        tonic::Code::NotFound => ApiError::BadRequest(status.message().to_string()),
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            ApiError::BadRequest(status.message().to_string())
        }
        _ => ApiError::Unavailable(format!(
            "the pod's node did not answer: {}",
            status.message()
        )),
    }
}

/// The specs of a pod's init and app containers.
fn containers_of(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"].into_iter().flat_map(|l| {
        pod.at(&format!("/spec/{l}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    })
}

/// The pod, its container (named or the only one) and its node's Kubelet address.
async fn locate(
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    container: Option<&str>,
) -> Result<(Value, String, String), ApiError> {
    let pod = objects
        .get(
            Scope::new(target.kind, target.namespace.as_deref()),
            name,
            false,
        )
        .await?;
    let names: Vec<String> = containers_of(&pod)
        .map(|c| text(c, "/name").to_string())
        .collect();
    let apps: Vec<String> = pod
        .at("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| text(c, "/name").to_string())
        .collect();
    let container = match container.filter(|c| !c.is_empty()) {
        Some(c) if names.iter().any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::BadRequest(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if apps.len() == 1 => apps[0].clone(),
        None => {
            return Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                apps.join(" ")
            )));
        }
    };
    let address = node_address(objects, &pod, name).await?;
    Ok((pod, container, address))
}

/// The Kubelet address of the node `pod` (named `name`) is bound to.
pub(super) async fn node_address(
    objects: &Objects,
    pod: &Value,
    name: &str,
) -> Result<String, ApiError> {
    let node_name = text(pod, "/spec/nodeName");
    if node_name.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let nodes = crate::registry::lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
    let node = objects
        .get(Scope::new(nodes, None), node_name, false)
        .await?;
    kubelet_address(&node)
        .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} has no InternalIP")))
}

/// Where a node's Kubelet API listens: its InternalIP and the kubelet port it reported.
pub fn kubelet_address(node: &Value) -> Option<String> {
    let ip = node
        .at("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| text(a, "/type") == "InternalIP")
        .map(|a| text(a, "/address").to_string())?;
    let port = node
        .at("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(10250);
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// `GET pods/<name>/log`.
pub async fn logs(
    kubelets: &Kubelets,
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    query: &Query,
) -> Result<Response, ApiError> {
    let (_, container, address) = locate(objects, target, name, query.get("container")).await?;
    let request = LogsRequest {
        namespace: target.namespace.clone().unwrap_or_default(),
        pod: name.to_string(),
        container,
        follow: query.flag("follow"),
        previous: query.flag("previous"),
        tail_lines: query.int("tailLines")?.unwrap_or(-1),
        since_seconds: query.int("sinceSeconds")?.unwrap_or(0),
        timestamps: query.flag("timestamps"),
        limit_bytes: query.int("limitBytes")?.unwrap_or(0),
    };
    let stream = kubelets
        .client(&address)?
        .logs(request)
        .await
        .map_err(kubelet_error)?
        .into_inner();
    let body = stream.map(|chunk| {
        chunk
            .map(|c| Bytes::from(c.data))
            .map_err(std::io::Error::other)
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(body),
    )
        .into_response())
}

/// `pods/<name>/exec`.
pub async fn exec(
    kubelets: &Kubelets,
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let raw = request.uri().query().map(str::to_string);
    let query = Query::parse(raw.as_deref())?;
    let command = Query::repeated(raw.as_deref(), "command")?;
    if command.is_empty() {
        return Err(ApiError::BadRequest(
            "you must specify at least 1 command".into(),
        ));
    }
    let (_, container, address) = locate(objects, target, name, query.get("container")).await?;
    let start = ExecStart {
        namespace: target.namespace.clone().unwrap_or_default(),
        pod: name.to_string(),
        container,
        command,
        stdin: query.flag("stdin"),
        tty: query.flag("tty"),
        stdout: true,
        stderr: true,
    };
    relay(kubelets, &address, Relayed::Exec, start, request).await
}

/// `pods/<name>/attach`: the running container's main process. The pod must still run, and
/// stdin needs a container started with `stdin: true`.
pub async fn attach(
    kubelets: &Kubelets,
    objects: &Objects,
    target: &ResourceTarget,
    name: &str,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(request.uri().query())?;
    let (pod, container, address) = locate(objects, target, name, query.get("container")).await?;
    let phase = text(&pod, "/status/phase");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::BadRequest(format!(
            "cannot attach to a container in a completed pod; current phase is {phase}"
        )));
    }
    let spec = containers_of(&pod).find(|c| text(c, "/name") == container);
    let declared = |field: &str| {
        spec.and_then(|c| c.get(field))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let start = ExecStart {
        namespace: target.namespace.clone().unwrap_or_default(),
        pod: name.to_string(),
        command: Vec::new(),
        stdin: query.flag("stdin"),
        stdout: query.flag("stdout"),
        stderr: query.flag("stderr"),
        tty: query.flag("tty") && declared("tty"),
        container,
    };
    if !(start.stdin || start.stdout || start.stderr) {
        return Err(ApiError::BadRequest(
            "you must specify at least one of stdin, stdout, stderr".into(),
        ));
    }
    if start.stdin && !declared("stdin") {
        return Err(ApiError::BadRequest(format!(
            "container {} in pod {name} was not started with stdin: true, so stdin cannot be attached",
            start.container
        )));
    }
    relay(kubelets, &address, Relayed::Attach, start, request).await
}

/// Which Kubelet stream a WebSocket is relayed to.
#[derive(Clone, Copy)]
enum Relayed {
    Exec,
    Attach,
}

/// Opens the node's stream for `start`, then upgrades the request to a WebSocket bridged to
/// it.
async fn relay(
    kubelets: &Kubelets,
    address: &str,
    relayed: Relayed,
    start: ExecStart,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (verb, span) = match relayed {
        Relayed::Exec => ("exec", tracing::info_span!("exec", pod = %start.pod)),
        Relayed::Attach => ("attach", tracing::info_span!("attach", pod = %start.pod)),
    };
    let (mut parts, _) = request.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| {
            ApiError::BadRequest(format!(
                "{verb} needs a WebSocket upgrade (v5.channel.k8s.io): {e}"
            ))
        })?;
    let mut client = kubelets.client(address)?;
    let (input_tx, input_rx) = mpsc::channel::<ExecInput>(64);
    let _ = input_tx
        .send(ExecInput {
            input: Some(exec_input::Input::Start(start)),
        })
        .await;
    let inputs = ReceiverStream::new(input_rx);
    let outputs = match relayed {
        Relayed::Exec => client.exec(inputs).await,
        Relayed::Attach => client.attach(inputs).await,
    }
    .map_err(kubelet_error)?
    .into_inner();
    Ok(upgrade
        .protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| bridge(socket, input_tx, outputs).instrument(span))
        .into_response())
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    Message::Binary(out.into())
}

/// The final status kubectl reads on the error channel.
fn exit_status(code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// A close frame with status 1000: clients read it as the end of every stream (a bare close
/// frame, 1005, is an error to them).
async fn close_normally(sink: &mut futures::stream::SplitSink<WebSocket, Message>) {
    let frame = axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}

async fn bridge(
    socket: WebSocket,
    input_tx: mpsc::Sender<ExecInput>,
    mut outputs: tonic::Streaming<ExecOutput>,
) {
    let (mut sink, mut stream) = socket.split();
    // Client -> node: stdin, resize, close.
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let data = match message {
                Message::Binary(data) => data.to_vec(),
                Message::Text(text) => text.as_str().as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, rest)) = data.split_first() else {
                continue;
            };
            let input = match channel {
                STDIN => exec_input::Input::Stdin(rest.to_vec()),
                RESIZE => {
                    let size: Value = serde_json::from_slice(rest).unwrap_or(Value::Null);
                    exec_input::Input::Resize(TerminalSize {
                        width: size.get("Width").and_then(Value::as_u64).unwrap_or(80) as u32,
                        height: size.get("Height").and_then(Value::as_u64).unwrap_or(24) as u32,
                    })
                }
                CLOSE if rest.first() == Some(&STDIN) => exec_input::Input::CloseStdin(true),
                _ => continue,
            };
            if input_tx
                .send(ExecInput { input: Some(input) })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    // Node -> client: output, then the exit status.
    let mut code = None;
    loop {
        match outputs.message().await {
            Ok(Some(out)) => {
                let message = match out.output {
                    Some(exec_output::Output::Stdout(d)) => frame(STDOUT, &d),
                    Some(exec_output::Output::Stderr(d)) => frame(STDERR, &d),
                    Some(exec_output::Output::ExitCode(c)) => {
                        code = Some(c);
                        break;
                    }
                    Some(exec_output::Output::Error(e)) => {
                        let status = json!({"metadata": {}, "status": "Failure", "message": e, "reason": "InternalError"});
                        frame(ERROR, status.to_string().as_bytes())
                    }
                    None => continue,
                };
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(status) => {
                debug!(error = %status.message(), "exec stream broke");
                break;
            }
        }
    }
    let status = exit_status(code.unwrap_or(1));
    let _ = sink.send(frame(ERROR, status.to_string().as_bytes())).await;
    close_normally(&mut sink).await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_become_statuses() {
        assert_eq!(exit_status(0)["status"], "Success");
        let failed = exit_status(3);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }
}
