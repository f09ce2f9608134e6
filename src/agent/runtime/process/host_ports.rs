//! hostPort for the process runtime. Its pods share the node's network, so a container
//! listening on its containerPort is already reachable at NODE_IP:containerPort. A hostPort
//! that differs gets a small userspace relay, NODE_IP:hostPort -> NODE_IP:containerPort (TCP
//! and UDP), doing what CNI's `portmap` DNAT does for containerd without needing root or
//! nftables. Every hostPort is reserved for its sandbox, so a second pod on the node asking for
//! the same one (protocol, address, port) fails to start its sandbox, as the scheduler would
//! have refused it. No hostIP (or 0.0.0.0) means the node's address: several agents may share
//! one host's network, each with its own address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span};

use super::super::{PortMapping, RuntimeError};

/// A UDP client's flow is forgotten after this long without a reply.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// How long a hostPort that reads as in use is tried again. The port is reserved for this
/// sandbox, so the likeliest holder is a relay socket closed a moment ago whose copy still
/// lives in a child this agent is forking (until its exec closes it): a pod restarted at once
/// would otherwise fail its first start.
const REBIND_PATIENCE: Duration = Duration::from_secs(1);

/// (protocol, address, port) of a reserved hostPort.
type Reservation = (String, IpAddr, u16);

pub struct HostPorts {
    node_ip: IpAddr,
    /// Reserved hostPorts and the sandbox holding each.
    reserved: Mutex<HashMap<Reservation, String>>,
    /// Relay tasks by sandbox.
    relays: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
}

impl HostPorts {
    pub fn new(node_ip: IpAddr) -> Self {
        HostPorts {
            node_ip,
            reserved: Mutex::default(),
            relays: Mutex::default(),
        }
    }

    /// Reserves the sandbox's hostPorts and starts a relay for each one that differs from its
    /// containerPort. On failure nothing stays reserved.
    pub async fn open(&self, sandbox: &str, mappings: &[PortMapping]) -> Result<(), RuntimeError> {
        let result = self.open_all(sandbox, mappings).await;
        if result.is_err() {
            self.close(sandbox).await;
        }
        result
    }

    async fn open_all(&self, sandbox: &str, mappings: &[PortMapping]) -> Result<(), RuntimeError> {
        for mapping in mappings {
            let protocol = mapping.protocol.to_ascii_uppercase();
            let ip = match mapping.host_ip.as_deref().filter(|ip| !ip.is_empty()) {
                None => self.node_ip,
                Some(text) => match text.parse::<IpAddr>() {
                    Ok(ip) if ip.is_unspecified() => self.node_ip,
                    Ok(ip) => ip,
                    Err(_) => return Err(start_error(format!("bad hostIP {text:?}"))),
                },
            };
            let key = (protocol.clone(), ip, mapping.host_port);
            {
                let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(holder) = reserved.get(&key).filter(|h| *h != sandbox) {
                    return Err(start_error(format!(
                        "hostPort {}/{protocol} on {ip} is already taken by sandbox {holder}",
                        mapping.host_port
                    )));
                }
                reserved.insert(key, sandbox.to_string());
            }
            if mapping.host_port == mapping.container_port {
                // The container binds it itself.
                continue;
            }
            let listen = SocketAddr::new(ip, mapping.host_port);
            let target = SocketAddr::new(self.node_ip, mapping.container_port);
            let span = info_span!("host_port", %listen, %target, protocol = %protocol);
            let relay = match protocol.as_str() {
                "TCP" => {
                    let listener =
                        bind_patiently(|| TcpListener::bind(listen))
                            .await
                            .map_err(|e| {
                                start_error(format!("cannot bind hostPort {listen}/TCP: {e}"))
                            })?;
                    tokio::spawn(relay_tcp(listener, target).instrument(span))
                }
                "UDP" => {
                    let socket = bind_patiently(|| UdpSocket::bind(listen))
                        .await
                        .map_err(|e| {
                            start_error(format!("cannot bind hostPort {listen}/UDP: {e}"))
                        })?;
                    tokio::spawn(relay_udp(Arc::new(socket), target).instrument(span))
                }
                other => {
                    return Err(start_error(format!(
                        "the process runtime relays TCP and UDP hostPorts, not {other}"
                    )));
                }
            };
            self.relays
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(sandbox.to_string())
                .or_default()
                .push(relay);
        }
        Ok(())
    }

    /// Stops the sandbox's relays and frees its hostPorts; idempotent. Returns once their
    /// sockets are closed, so the ports can be bound again at once.
    pub async fn close(&self, sandbox: &str) {
        let relays = self
            .relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sandbox)
            .unwrap_or_default();
        for relay in relays {
            relay.abort();
            // A cancelled task drops its socket when it is next polled: wait for that.
            let _ = relay.await;
        }
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, holder| holder != sandbox);
    }
}

/// Binds, trying again while the address is in use for up to `REBIND_PATIENCE`.
async fn bind_patiently<T, F, Bind>(bind: Bind) -> std::io::Result<T>
where
    Bind: Fn() -> F,
    F: Future<Output = std::io::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + REBIND_PATIENCE;
    loop {
        match bind().await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bound => return bound,
        }
    }
}

fn start_error(message: String) -> RuntimeError {
    RuntimeError::Start {
        reason: "HostPortUnavailable",
        message,
    }
}

/// Each accepted connection is joined to a new one to the container's port.
async fn relay_tcp(listener: TcpListener, target: SocketAddr) {
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: give connections in flight time to end.
                debug!(error = %e, "accepting a hostPort connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => {
                    debug!(%peer, error = %e, "the container's port refused a relayed connection")
                }
            }
        });
    }
}

/// Each client address gets its own socket towards the container's port, so replies find
/// their way back; a flow idle for `UDP_IDLE` is dropped.
async fn relay_udp(socket: Arc<UdpSocket>, target: SocketAddr) {
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let existing = flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .cloned();
        let upstream = match existing {
            Some(upstream) => upstream,
            None => {
                let local = SocketAddr::new(target.ip(), 0);
                let Ok(upstream) = UdpSocket::bind(local).await else {
                    continue;
                };
                if upstream.connect(target).await.is_err() {
                    continue;
                }
                let upstream = Arc::new(upstream);
                flows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(client, upstream.clone());
                let (socket, flows, replies) = (socket.clone(), flows.clone(), upstream.clone());
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(UDP_IDLE, replies.recv(&mut buffer)).await
                    {
                        if socket.send_to(&buffer[..n], client).await.is_err() {
                            break;
                        }
                    }
                    flows
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&client);
                });
                upstream
            }
        };
        let _ = upstream.send(&buffer[..n]).await;
    }
}
