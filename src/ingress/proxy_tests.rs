//! The request path against real sockets in-process: a hyper backend on loopback, the
//! ingress's HTTP listener in front of it, a hyper client. What the container test cannot
//! show cheaply: keep-alive reuse towards the pod, HTTP/2 (h2c) to backends, the retry order.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::*;
use crate::ingress::class::{CONTROLLER, DEFAULT_CLASS_ANNOTATION};
use crate::ingress::metrics::IngressMetrics;
use crate::ingress::table::Inputs;
use crate::ingress::upstream::Upstreams;
use crate::proxy::model::Model;

/// A backend answering `version=<HTTP version> connection=<n> path=<path> xff=<X-Forwarded-For>`,
/// `n` counting the connections it accepted. HTTP/2 only (prior knowledge) when `h2c`.
async fn backend(h2c: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<Incoming>| async move {
                        let xff = request
                            .headers()
                            .get("x-forwarded-for")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = format!(
                            "version={:?} connection={n} path={} xff={xff}",
                            request.version(),
                            request.uri().path()
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if h2c {
                    builder = builder.http2_only();
                }
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, connections)
}

/// An ingress routing `/` of any host to Service `default/web` port 80 whose endpoints are
/// `endpoints` (each with its own slice, so ports may differ); returns its HTTP address.
async fn ingress(endpoints: &[SocketAddr], app_protocol: Option<&str>) -> SocketAddr {
    let mut services = Model::default();
    let mut port = json!({"name": "http", "port": 80});
    if let Some(p) = app_protocol {
        port["appProtocol"] = json!(p);
    }
    services.upsert_service(json!({"metadata": {"namespace": "default", "name": "web"},
                                   "spec": {"clusterIP": "10.43.0.9", "ports": [port]}}));
    for (i, endpoint) in endpoints.iter().enumerate() {
        services.upsert_slice(json!({
            "metadata": {"namespace": "default", "name": format!("web-{i}"),
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": endpoint.port()}],
            "endpoints": [{"addresses": [endpoint.ip().to_string()]}]}));
    }
    let ingresses: BTreeMap<String, Value> = [(
        "default/web".to_string(),
        json!({"metadata": {"namespace": "default", "name": "web"},
               "spec": {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
                   "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
    )]
    .into();
    let classes: BTreeMap<String, Value> = [(
        "skiff".to_string(),
        json!({"metadata": {"name": "skiff", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
               "spec": {"controller": CONTROLLER}}),
    )]
    .into();
    let mut warnings = Vec::new();
    let table = Table::build(
        &Inputs {
            ingresses: &ingresses,
            classes: &classes,
            services: &services,
        },
        &mut warnings,
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    let routes = Arc::new(Routes::default());
    routes.replace(table);
    let proxy = Arc::new(Proxy::new(
        routes,
        Arc::new(Upstreams::default()),
        Arc::new(IngressMetrics::default()),
        Some(443),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(crate::ingress::listen::serve_http(listener, proxy));
    addr
}

/// `count` GETs of `path` on one client connection; the bodies.
async fn get_many(ingress: SocketAddr, path: &str, count: usize) -> Vec<String> {
    let stream = tokio::net::TcpStream::connect(ingress)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut bodies = Vec::new();
    for _ in 0..count {
        let request = Request::get(path)
            .header(header::HOST, "web.example")
            .header("x-forwarded-for", "192.0.2.1")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        bodies.push(String::from_utf8_lossy(&body).into_owned());
    }
    bodies
}

#[tokio::test]
async fn backend_connections_are_kept_alive_and_reused() {
    let (backend, connections) = backend(false).await;
    let ingress = ingress(&[backend], None).await;
    let bodies = get_many(ingress, "/a/b", 5).await;
    for body in &bodies {
        assert!(
            body.starts_with("version=HTTP/1.1 connection=1 path=/a/b"),
            "{body}"
        );
        assert!(body.ends_with("xff=192.0.2.1, 127.0.0.1"), "{body}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
}

#[tokio::test]
async fn h2c_backends_get_http2() {
    let (backend, connections) = backend(true).await;
    let ingress = ingress(&[backend], Some("kubernetes.io/h2c")).await;
    let bodies = get_many(ingress, "/grpc.Service/Method", 3).await;
    for body in &bodies {
        assert!(
            body.starts_with("version=HTTP/2.0 connection=1 path=/grpc.Service/Method"),
            "{body}"
        );
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one multiplexed connection"
    );
}

#[tokio::test]
async fn refused_endpoints_are_skipped_in_round_robin_order() {
    let (live, _) = backend(false).await;
    // A port nobody listens on: bound, then closed.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let ingress = ingress(&[live, dead], None).await;
    let bodies = get_many(ingress, "/", 6).await;
    assert_eq!(bodies.len(), 6, "every request answered: {bodies:?}");
    assert!(bodies.iter().all(|b| b.contains("path=/")), "{bodies:?}");
}
