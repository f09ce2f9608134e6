//! The DNS server: hickory's server loop owns the UDP and TCP transports (truncation by the
//! client's EDNS buffer size on UDP, full answers on TCP) and calls [`ClusterDnsHandler`], which
//! answers from the current [`ClusterIndex`] snapshot or forwards non-cluster names upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, LowerQuery, Message, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tracing::Instrument as _;

use crate::index::{ClusterIndex, IndexConfig, Lookup};
use crate::metrics::QueryMetrics;
use crate::model::{ClusterState, EndpointSlice, Pod, Service};

/// The UDP payload size we advertise: the DNS flag day 2020 value, safe from fragmentation.
const EDNS_PAYLOAD: u16 = 1232;
/// How long one upstream gets before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle TCP connections are closed after this.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen on {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
    #[error("DNS server stopped: {0}")]
    Stopped(String),
}

/// Server configuration.
#[derive(Clone, Debug, Default)]
pub struct DnsConfig {
    pub index: IndexConfig,
    /// Where non-cluster names go; empty means they are refused (CoreDNS without `forward`).
    pub upstreams: Vec<SocketAddr>,
}

/// Cluster DNS state shared by the feed (which sets inputs) and the server (which reads the
/// index). Readers take an `Arc` of the current index and never wait for a rebuild.
#[derive(Clone)]
pub struct ClusterDns {
    shared: Arc<Shared>,
}

struct Shared {
    config: DnsConfig,
    inputs: Mutex<ClusterState>,
    index: RwLock<Arc<ClusterIndex>>,
    metrics: QueryMetrics,
}

impl ClusterDns {
    pub fn new(config: DnsConfig) -> Self {
        let index = Arc::new(ClusterIndex::empty(&config.index));
        ClusterDns {
            shared: Arc::new(Shared {
                config,
                inputs: Mutex::new(ClusterState::default()),
                index: RwLock::new(index),
                metrics: QueryMetrics::default(),
            }),
        }
    }

    pub fn set_services(&self, services: Vec<Service>) {
        self.update(|state| state.services = services);
    }

    pub fn set_endpoint_slices(&self, slices: Vec<EndpointSlice>) {
        self.update(|state| state.endpoint_slices = slices);
    }

    pub fn set_pods(&self, pods: Vec<Pod>) {
        self.update(|state| state.pods = pods);
    }

    /// Applies a change to the inputs and swaps in a rebuilt index.
    fn update(&self, change: impl FnOnce(&mut ClusterState)) {
        let Ok(mut inputs) = self.shared.inputs.lock() else {
            tracing::error!("cluster DNS inputs poisoned; answers are frozen");
            return;
        };
        change(&mut inputs);
        let index = Arc::new(ClusterIndex::build(&self.shared.config.index, &inputs));
        tracing::debug!(names = index.len(), "cluster DNS index rebuilt");
        if let Ok(mut current) = self.shared.index.write() {
            *current = index;
        }
    }

    /// The current index snapshot.
    pub fn index(&self) -> Arc<ClusterIndex> {
        match self.shared.index.read() {
            Ok(index) => index.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn metrics(&self) -> &QueryMetrics {
        &self.shared.metrics
    }

    /// Binds UDP and TCP on `listen`. Separate from serving so a used port is reported to the
    /// caller at startup instead of inside a spawned task.
    pub async fn bind(self, listen: SocketAddr) -> Result<BoundServer, DnsError> {
        let failed = |proto| {
            move |source| DnsError::Bind {
                addr: listen,
                proto,
                source,
            }
        };
        // TCP first and without SO_REUSEPORT: a second process on this address fails here,
        // instead of silently sharing the UDP port with us.
        let tcp = TcpListener::bind(listen).await.map_err(failed("tcp"))?;
        let mut server = Server::new(ClusterDnsHandler { dns: self });
        for _ in 0..udp_sockets() {
            server.register_socket(reuseport_udp(listen).map_err(failed("udp"))?);
        }
        server.register_listener(tcp, TCP_TIMEOUT, 64);
        Ok(BoundServer { server, listen })
    }
}

/// One UDP socket per core: hickory reads each socket in one task, so a single socket caps
/// receiving at one core. The kernel spreads clients over the sockets (as knot and CoreDNS do).
fn udp_sockets() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A server whose sockets are bound; [`BoundServer::run`] serves until it fails.
pub struct BoundServer {
    server: Server<ClusterDnsHandler>,
    listen: SocketAddr,
}

impl BoundServer {
    pub async fn run(mut self) -> Result<(), DnsError> {
        tracing::info!(listen = %self.listen, "cluster DNS serving");
        self.server
            .block_until_done()
            .await
            .map_err(|e| DnsError::Stopped(e.to_string()))
    }
}

/// hickory's request handler over the cluster index.
pub struct ClusterDnsHandler {
    dns: ClusterDns,
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let query = match request.queries.queries() {
            [query] => Some(query),
            _ => None,
        };
        let qtype = query.map_or(RecordType::Unknown(0), |q| q.query_type());
        let span = tracing::debug_span!(
            "dns_query",
            name = query.map(|q| tracing::field::display(q.name())),
            qtype = %qtype,
        );
        let info = self
            .respond(request, query, response_handle)
            .instrument(span)
            .await;
        self.dns
            .metrics()
            .record(qtype, info.response_code, started.elapsed());
        info
    }
}

impl ClusterDnsHandler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        query: Option<&LowerQuery>,
        mut response_handle: R,
    ) -> ResponseInfo {
        // Answer EDNS with EDNS; the UDP size limit is the smaller of the client's and ours.
        let edns = request.edns.as_ref().map(|_| {
            let mut edns = Edns::new();
            edns.set_max_payload(request.max_payload().min(EDNS_PAYLOAD));
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let query = match query {
            Some(query) if request.metadata.op_code == OpCode::Query => query,
            _ => {
                let rcode = if request.metadata.op_code == OpCode::Query {
                    ResponseCode::FormErr
                } else {
                    ResponseCode::NotImp
                };
                let response = builder.error_msg(&request.metadata, rcode);
                return send(&mut response_handle, response, &request.metadata).await;
            }
        };
        let index = self.dns.index();
        let answer = match index.lookup(query.name(), query.query_type()) {
            Lookup::Authoritative(answer) => answer,
            Lookup::NotOurs => {
                let upstreams = &self.dns.shared.config.upstreams;
                if upstreams.is_empty() {
                    let response = builder.error_msg(&request.metadata, ResponseCode::Refused);
                    return send(&mut response_handle, response, &request.metadata).await;
                }
                return match forward(upstreams, request.as_slice()).await {
                    Some(reply) => {
                        let mut metadata = Metadata::response_from_request(&request.metadata);
                        metadata.response_code = reply.metadata.response_code;
                        metadata.recursion_available = reply.metadata.recursion_available;
                        let response = builder.build(
                            metadata,
                            reply.answers.iter(),
                            reply.authorities.iter(),
                            std::iter::empty::<&Record>(),
                            reply
                                .additionals
                                .iter()
                                .filter(|r| r.record_type() != RecordType::OPT),
                        );
                        send(&mut response_handle, response, &request.metadata).await
                    }
                    None => {
                        let response = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                        send(&mut response_handle, response, &request.metadata).await
                    }
                };
            }
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.response_code = answer.rcode;
        let response = builder.build(
            metadata,
            answer.answers.iter().copied(),
            std::iter::empty::<&Record>(),
            answer.authority.iter().copied(),
            std::iter::empty::<&Record>(),
        );
        send(&mut response_handle, response, &request.metadata).await
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Metadata,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(error = %e, "cannot send DNS response");
            let mut metadata = Metadata::response_from_request(request);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}

/// Relays the raw query to each upstream in turn over UDP and returns the first reply. The
/// query keeps its id, so the reply's id matches without rewriting.
async fn forward(upstreams: &[SocketAddr], query: &[u8]) -> Option<Message> {
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let attempt = async {
            let socket = UdpSocket::bind(bind).await.ok()?;
            socket.connect(upstream).await.ok()?;
            socket.send(query).await.ok()?;
            let mut buf = vec![0u8; 4096];
            let n = socket.recv(&mut buf).await.ok()?;
            Message::from_vec(&buf[..n]).ok()
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Some(reply)) => return Some(reply),
            _ => tracing::debug!(%upstream, "upstream did not answer"),
        }
    }
    None
}
