//! The request path of the ingress: match the route, answer what needs no backend (404, 503,
//! the HTTPS redirect), otherwise forward to a ready endpoint of the Service — round-robin,
//! the next endpoint when one refuses the connection — with the X-Forwarded-* headers set,
//! hop-by-hop headers dropped, websocket upgrades tunnelled, and one access-log line and one
//! metrics sample per request.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug, info, info_span, warn};

use super::annotations::UpstreamProtocol;
use super::metrics::IngressMetrics;
use super::table::{Backend, ServiceBackend, Table, normalize_host};
use super::upstream::{SendError, Upstreams};

/// Endpoints tried per request when connections are refused.
const MAX_ATTEMPTS: usize = 3;
/// How long a backend may take to send its response headers (nginx's proxy_read_timeout).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

pub type Body = Either<Incoming, Full<Bytes>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The routing table in force; swapped whole by the rebuild loop.
#[derive(Default)]
pub struct Routes {
    current: RwLock<Option<Arc<Table>>>,
}

impl Routes {
    pub fn replace(&self, table: Table) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(table));
    }

    /// None until the watches have delivered everything once.
    fn get(&self) -> Option<Arc<Table>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub struct Proxy {
    pub routes: Arc<Routes>,
    /// This worker's backend connections.
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<IngressMetrics>,
    /// The HTTPS listener's port (redirects name it unless it is 443).
    pub https_port: Option<u16>,
    /// Label values for requests no Ingress matched.
    unmatched: Arc<str>,
}

/// One connection's facts a request needs.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub scheme: Scheme,
}

/// What the access log and metrics record about one request.
struct Outcome {
    ingress: Arc<str>,
    service: Arc<str>,
    upstream: Option<SocketAddr>,
}

fn text_response(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Headers meaningful for one connection only (RFC 9110 7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, also those `Connection` lists; keeps `TE: trailers` when
/// `keep_te_trailers` (gRPC over h2 needs it).
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let trailers = keep_te_trailers
        && headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` + `Upgrade`).
fn upgrade_of(request: &Request<Incoming>) -> Option<HeaderValue> {
    let asks = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    (asks && request.version() == Version::HTTP_11)
        .then(|| request.headers().get(header::UPGRADE).cloned())
        .flatten()
}

impl Proxy {
    pub fn new(
        routes: Arc<Routes>,
        upstreams: Arc<Upstreams>,
        metrics: Arc<IngressMetrics>,
        https_port: Option<u16>,
    ) -> Proxy {
        Proxy {
            routes,
            upstreams,
            metrics,
            https_port,
            unmatched: Arc::from(""),
        }
    }

    /// Answers one request; never fails (errors become 4xx/5xx responses).
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        connection: Connection,
    ) -> Response<Body> {
        let started = Instant::now();
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let host = normalize_host(&authority);
        let span = info_span!(
            "ingress",
            method = %request.method(),
            %host,
            path = %request.uri().path(),
            client = %connection.peer.ip()
        );
        let (response, outcome) = self
            .respond(request, connection, &authority, &host)
            .instrument(span.clone())
            .await;
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        self.metrics
            .observe(&outcome.ingress, &outcome.service, status, elapsed);
        let _entered = span.enter();
        info!(
            target: "skiff::ingress::access",
            status,
            ingress = %outcome.ingress,
            service = %outcome.service,
            upstream = outcome.upstream.map(tracing::field::display),
            scheme = connection.scheme.as_str(),
            micros = elapsed.as_micros() as u64,
            "request"
        );
        response
    }

    async fn respond(
        &self,
        request: Request<Incoming>,
        connection: Connection,
        authority: &str,
        host: &str,
    ) -> (Response<Body>, Outcome) {
        let mut outcome = Outcome {
            ingress: self.unmatched.clone(),
            service: self.unmatched.clone(),
            upstream: None,
        };
        let Some(table) = self.routes.get() else {
            let body = "skiff ingress: routes are not loaded yet\n".to_string();
            return (
                text_response(StatusCode::SERVICE_UNAVAILABLE, body),
                outcome,
            );
        };
        let uri = request.uri();
        let Some(matched) = table.lookup(host, uri.path(), uri.query()) else {
            let body = format!(
                "skiff ingress: no Ingress rule matches host {host:?} and path {:?}\n",
                uri.path()
            );
            return (text_response(StatusCode::NOT_FOUND, body), outcome);
        };
        let route = matched.route;
        outcome.ingress = route.ingress.clone();
        if route.https_redirect && connection.scheme == Scheme::Http {
            return (self.redirect(&request, authority), outcome);
        }
        let service = match &route.backend {
            Backend::Service(service) => service.clone(),
            Backend::Unavailable { service, reason } => {
                outcome.service = service.clone();
                let body = format!("skiff ingress: {reason}\n");
                return (
                    text_response(StatusCode::SERVICE_UNAVAILABLE, body),
                    outcome,
                );
            }
        };
        outcome.service = service.name.clone();
        if service.endpoints.is_empty() {
            let body = format!(
                "skiff ingress: service {} has no ready endpoint\n",
                service.name
            );
            return (
                text_response(StatusCode::SERVICE_UNAVAILABLE, body),
                outcome,
            );
        }
        let (response, upstream) = self
            .forward(request, connection, authority, &service, matched.rewritten)
            .await;
        outcome.upstream = upstream;
        (response, outcome)
    }

    /// 308 to the same URL over HTTPS (ingress-nginx's ssl-redirect code).
    fn redirect(&self, request: &Request<Incoming>, authority: &str) -> Response<Body> {
        let host = without_port(authority);
        let port = match self.https_port {
            Some(443) | None => String::new(),
            Some(port) => format!(":{port}"),
        };
        let target = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let location = format!("https://{host}{port}{target}");
        let mut response = text_response(
            StatusCode::PERMANENT_REDIRECT,
            format!("skiff ingress: use {location}\n"),
        );
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }

    /// The request as the backend gets it: origin-form (absolute for h2c) URI, rewritten path,
    /// forwarding headers, no hop-by-hop headers (except an upgrade's own).
    fn upstream_request(
        request: Request<Incoming>,
        connection: Connection,
        authority: &str,
        protocol: UpstreamProtocol,
        rewritten: Option<String>,
        upgrade: Option<&HeaderValue>,
    ) -> Result<Request<Incoming>, http::Error> {
        let (mut parts, body) = request.into_parts();
        let path_and_query = rewritten.unwrap_or_else(|| {
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into())
        });
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers, protocol == UpstreamProtocol::H2c);
        if let Some(protocol) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        let client = connection.peer.ip().to_string();
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {client}"),
            _ => client.clone(),
        };
        let values = [
            ("x-forwarded-for", forwarded_for),
            ("x-real-ip", client),
            ("x-forwarded-proto", connection.scheme.as_str().to_string()),
            ("x-forwarded-host", authority.to_string()),
            ("x-forwarded-port", connection.local.port().to_string()),
        ];
        for (name, value) in values {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        match protocol {
            UpstreamProtocol::Http1 => {
                parts.version = Version::HTTP_11;
                if let Ok(value) = HeaderValue::from_str(authority) {
                    headers.insert(header::HOST, value);
                }
                parts.uri = Uri::builder().path_and_query(path_and_query).build()?;
            }
            UpstreamProtocol::H2c => {
                parts.version = Version::HTTP_2;
                headers.remove(header::HOST);
                parts.uri = Uri::builder()
                    .scheme("http")
                    .authority(if authority.is_empty() {
                        "localhost"
                    } else {
                        authority
                    })
                    .path_and_query(path_and_query)
                    .build()?;
            }
        }
        Ok(Request::from_parts(parts, body))
    }

    /// Sends to the Service's endpoints in round-robin order, moving on while connections are
    /// refused; returns the response and the endpoint that gave it.
    async fn forward(
        &self,
        mut request: Request<Incoming>,
        connection: Connection,
        authority: &str,
        service: &ServiceBackend,
        rewritten: Option<String>,
    ) -> (Response<Body>, Option<SocketAddr>) {
        let upgrade = upgrade_of(&request);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
        // Upgrades speak HTTP/1.1 whatever the backend's usual protocol.
        let protocol = match upgrade {
            Some(_) => UpstreamProtocol::Http1,
            None => service.protocol,
        };
        let mut pending = match Self::upstream_request(
            request,
            connection,
            authority,
            protocol,
            rewritten,
            upgrade.as_ref(),
        ) {
            Ok(request) => request,
            Err(e) => {
                let body = format!("skiff ingress: cannot forward this request: {e}\n");
                return (text_response(StatusCode::BAD_REQUEST, body), None);
            }
        };
        let mut refused = Vec::new();
        for addr in service.rotation().take(MAX_ATTEMPTS) {
            let sent = match upgrade {
                Some(_) => self.upstreams.send_upgrade(addr, pending).await,
                None => {
                    let send = self.upstreams.send(addr, protocol, pending);
                    match tokio::time::timeout(RESPONSE_TIMEOUT, send).await {
                        Ok(sent) => sent,
                        Err(_) => {
                            let body = format!(
                                "skiff ingress: {} ({addr}) sent no response within {RESPONSE_TIMEOUT:?}\n",
                                service.name
                            );
                            return (text_response(StatusCode::GATEWAY_TIMEOUT, body), Some(addr));
                        }
                    }
                }
            };
            match sent {
                Ok(mut response) => {
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        if let Some(client) = client_upgrade {
                            tunnel(client, hyper::upgrade::on(&mut response), addr);
                        }
                    } else {
                        strip_hop_by_hop(response.headers_mut(), false);
                    }
                    return (response.map(Either::Left), Some(addr));
                }
                Err(SendError::NotSent(unsent, error)) => {
                    warn!(service = %service.name, %addr, %error, "endpoint refused; trying the next");
                    refused.push(error.to_string());
                    pending = *unsent;
                }
                Err(SendError::Failed(error)) => {
                    warn!(service = %service.name, %addr, %error, "backend failed");
                    let body = format!("skiff ingress: {} failed: {error}\n", service.name);
                    return (text_response(StatusCode::BAD_GATEWAY, body), Some(addr));
                }
            }
        }
        let body = format!(
            "skiff ingress: no endpoint of {} accepted the request: {}\n",
            service.name,
            refused.join("; ")
        );
        (text_response(StatusCode::BAD_GATEWAY, body), None)
    }
}

/// `host[:port]` or `[v6][:port]` without the port.
fn without_port(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(rest) => match rest.find(']') {
            Some(end) => &authority[..end + 2],
            None => authority,
        },
        None => authority.split(':').next().unwrap_or(authority),
    }
}

/// Copies bytes both ways between the client's and the backend's upgraded connections until
/// either side closes.
fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade, addr: SocketAddr) {
    tokio::spawn(
        async move {
            let (client, backend) = match tokio::try_join!(client, backend) {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
            match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                Ok((up, down)) => debug!(up, down, "tunnel closed"),
                Err(e) => debug!(error = %e, "tunnel broke"),
            }
        }
        .instrument(info_span!("ingress_tunnel", %addr)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_listed_ones_too() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers, gzip"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let mut h2 = headers.clone();
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key(header::ACCEPT));
        strip_hop_by_hop(&mut h2, true);
        assert_eq!(
            h2.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
    }

    #[test]
    fn redirects_drop_the_plain_port() {
        assert_eq!(without_port("secure.example:8080"), "secure.example");
        assert_eq!(without_port("secure.example"), "secure.example");
        assert_eq!(without_port("[::1]:80"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod socket_tests;
