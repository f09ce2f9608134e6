//! The routing table: every Ingress skiff serves, compiled into per-host path lists in
//! precedence order, each backend resolved to its Service port's ready endpoints (the pods
//! themselves, not the ClusterIP: one hop less, and the ingress balances by request, not by
//! connection). `Table::build` is a pure function of the watched objects; the table is rebuilt
//! whole on any change and swapped in at once, so a request sees one consistent version.
//!
//! Host precedence: an exact host rule, then the wildcard rule covering the host (`*.foo.com`
//! covers exactly one more label, as the API says), then rules without a host; the first of
//! those with a matching path wins, so a host-specific rule set need not repeat the catch-all
//! paths. Nothing matching: the oldest `spec.defaultBackend`, else 404. Equal paths in several
//! Ingresses: the oldest Ingress wins (then namespace/name), as ingress-nginx resolves it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::annotations::{Annotations, UpstreamProtocol};
use super::class::Classes;
use super::paths::PathMatch;
use crate::json_path::JsonPath;
use crate::proxy::model::{Model, key_of, ready_backends};

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Service port `appProtocol`s that mean HTTP/2 without TLS.
const H2C_APP_PROTOCOLS: &[&str] = &["kubernetes.io/h2c", "h2c", "grpc"];

/// A Service port's ready endpoints, shared by every route to it (one round-robin cursor).
#[derive(Debug)]
pub struct ServiceBackend {
    /// `namespace/service:port` as the Ingress names it (metrics, logs).
    pub name: Arc<str>,
    /// Sorted, without duplicates.
    pub endpoints: Vec<SocketAddr>,
    pub protocol: UpstreamProtocol,
    next: AtomicUsize,
}

impl ServiceBackend {
    /// Every endpoint once, starting at the next one in round-robin order: the first is
    /// tried, the others are the retries when it refuses connections.
    pub fn rotation(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let len = self.endpoints.len();
        let start = if len == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % len
        };
        (0..len).map(move |i| self.endpoints[(start + i) % len])
    }
}

#[derive(Debug)]
pub enum Backend {
    Service(Arc<ServiceBackend>),
    /// Routed, but nothing to send to: 503 with `reason`.
    Unavailable {
        service: Arc<str>,
        reason: String,
    },
}

/// Where one matched path sends a request.
#[derive(Debug)]
pub struct Route {
    /// `namespace/name` of the Ingress (metrics, logs).
    pub ingress: Arc<str>,
    pub backend: Backend,
    pub rewrite_target: Option<String>,
    /// Plain-HTTP requests get a 308 to HTTPS instead (ssl-redirect / force-ssl-redirect).
    pub https_redirect: bool,
}

#[derive(Debug)]
struct PathRoute {
    matcher: PathMatch,
    route: Arc<Route>,
}

/// A request's route, and the path and query to send upstream when a rewrite changed them.
pub struct Matched {
    pub route: Arc<Route>,
    pub rewritten: Option<String>,
}

#[derive(Debug, Default)]
pub struct Table {
    exact: HashMap<String, Vec<PathRoute>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Vec<PathRoute>>,
    any: Vec<PathRoute>,
    default_backend: Option<Arc<Route>>,
    /// How many Ingresses (of ours) and paths went in, for logs.
    pub ingresses: usize,
    pub paths: usize,
}

/// What the table is built from: the watched objects.
pub struct Inputs<'a> {
    pub ingresses: &'a BTreeMap<String, Value>,
    pub classes: &'a BTreeMap<String, Value>,
    pub services: &'a Model,
}

/// The Ingresses skiff serves, oldest first (the order conflicts are settled in).
pub fn served<'a>(
    ingresses: &'a BTreeMap<String, Value>,
    classes: &BTreeMap<String, Value>,
) -> Vec<&'a Value> {
    let classes = Classes::new(classes.values());
    let mut ours: Vec<&Value> = ingresses.values().filter(|i| classes.owns(i)).collect();
    ours.sort_by(|a, b| {
        text(a, "/metadata/creationTimestamp")
            .cmp(text(b, "/metadata/creationTimestamp"))
            .then_with(|| key_of(a).cmp(&key_of(b)))
    });
    ours
}

/// A request's Host (or :authority) as rules compare it: lowercase, without port or final dot.
pub fn normalize_host(raw: &str) -> String {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else if raw.matches(':').count() == 1 {
        raw.split(':').next().unwrap_or(raw)
    } else {
        raw
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `host` is covered by one of `hosts` (exact, or a `*.` wildcard one label up).
pub fn host_covered(hosts: &HashSet<String>, host: &str) -> bool {
    hosts.contains(host)
        || host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && hosts.contains(&format!("*.{rest}")))
}

impl Table {
    /// Compiles the Ingresses skiff serves. Problems (a bad regex, an unknown port) skip or
    /// degrade just the path concerned and are reported in `warnings`.
    pub fn build(inputs: &Inputs<'_>, warnings: &mut Vec<String>) -> Table {
        let ours = served(inputs.ingresses, inputs.classes);
        let tls_hosts: HashSet<String> = ours
            .iter()
            .flat_map(|i| {
                i.at("/spec/tls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .flat_map(|t| {
                t.get("hosts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect();
        let mut table = Table {
            ingresses: ours.len(),
            ..Table::default()
        };
        let mut backends = Backends {
            model: inputs.services,
            known: HashMap::new(),
        };
        for ingress in ours {
            let name: Arc<str> = key_of(ingress).into();
            let namespace = text(ingress, "/metadata/namespace");
            let mut notes = Vec::new();
            let annotations = Annotations::of(ingress, &mut notes);
            let route_to = |backend: Backend, host: Option<&str>| {
                let tls = host.is_some_and(|h| host_covered(&tls_hosts, h));
                Arc::new(Route {
                    ingress: name.clone(),
                    backend,
                    rewrite_target: annotations.rewrite_target.clone(),
                    https_redirect: annotations.force_ssl_redirect
                        || (annotations.ssl_redirect && tls),
                })
            };
            if table.default_backend.is_none()
                && let Some(default) = ingress.at("/spec/defaultBackend")
            {
                table.default_backend = Some(Arc::new(Route {
                    ingress: name.clone(),
                    backend: backends.resolve(namespace, default, &annotations),
                    rewrite_target: None,
                    https_redirect: annotations.force_ssl_redirect,
                }));
            }
            let rules = ingress.at("/spec/rules").and_then(Value::as_array);
            for rule in rules.into_iter().flatten() {
                let host = Some(text(rule, "/host").to_ascii_lowercase()).filter(|h| !h.is_empty());
                let paths = rule.at("/http/paths").and_then(Value::as_array);
                for path in paths.into_iter().flatten() {
                    let matcher = match PathMatch::new(
                        text(path, "/path"),
                        text(path, "/pathType"),
                        annotations.use_regex,
                    ) {
                        Ok(m) => m,
                        Err(e) => {
                            notes.push(e.to_string());
                            continue;
                        }
                    };
                    let backend = match path.get("backend") {
                        Some(b) => backends.resolve(namespace, b, &annotations),
                        None => continue,
                    };
                    let bucket = match host.as_deref() {
                        None => &mut table.any,
                        Some(h) => match h.strip_prefix("*.") {
                            Some(suffix) => table.wildcard.entry(suffix.to_string()).or_default(),
                            None => table.exact.entry(h.to_string()).or_default(),
                        },
                    };
                    bucket.push(PathRoute {
                        matcher,
                        route: route_to(backend, host.as_deref()),
                    });
                    table.paths += 1;
                }
            }
            warnings.extend(notes.into_iter().map(|n| format!("ingress {name}: {n}")));
        }
        // Stable: equal paths keep the age order they were added in.
        for bucket in table
            .exact
            .values_mut()
            .chain(table.wildcard.values_mut())
            .chain(std::iter::once(&mut table.any))
        {
            bucket.sort_by(|a, b| a.matcher.precedence(&b.matcher));
        }
        table
    }

    /// The route for a request to `host` (normalized) and `path`, with its query string.
    pub fn lookup(&self, host: &str, path: &str, query: Option<&str>) -> Option<Matched> {
        let wildcard = host
            .split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .and_then(|(_, rest)| self.wildcard.get(rest));
        let buckets = [self.exact.get(host), wildcard, Some(&self.any)];
        for bucket in buckets.into_iter().flatten() {
            if let Some(found) = bucket.iter().find(|p| p.matcher.matches(path)) {
                let rewritten = found
                    .route
                    .rewrite_target
                    .as_deref()
                    .map(|target| with_query(found.matcher.rewrite(path, target), query));
                return Some(Matched {
                    route: found.route.clone(),
                    rewritten,
                });
            }
        }
        self.default_backend.clone().map(|route| Matched {
            route,
            rewritten: None,
        })
    }
}

/// nginx's query handling for a rewritten path: the original arguments are appended (after
/// `&` when the target has its own), unless the target ends in `?`.
fn with_query(path: String, query: Option<&str>) -> String {
    if let Some(bare) = path.strip_suffix('?') {
        return bare.to_string();
    }
    match query.filter(|q| !q.is_empty()) {
        None => path,
        Some(q) if path.contains('?') => format!("{path}&{q}"),
        Some(q) => format!("{path}?{q}"),
    }
}

/// Resolves Ingress backends against the Services, sharing one [`ServiceBackend`] per
/// Service port so round-robin spans every route to it.
struct Backends<'a> {
    model: &'a Model,
    known: HashMap<(String, UpstreamProtocol), Arc<ServiceBackend>>,
}

impl Backends<'_> {
    fn resolve(&mut self, namespace: &str, backend: &Value, annotations: &Annotations) -> Backend {
        let service = text(backend, "/service/name");
        let port = backend.at("/service/port");
        let number = port.and_then(|p| p.get("number")).and_then(Value::as_u64);
        let port_name = port.map(|p| text(p, "/name")).unwrap_or("");
        let port_label = match number {
            Some(n) => n.to_string(),
            None => port_name.to_string(),
        };
        let name: Arc<str> = format!("{namespace}/{service}:{port_label}").into();
        if service.is_empty() {
            let kind = text(backend, "/resource/kind");
            return Backend::Unavailable {
                service: name,
                reason: format!("resource backends ({kind}) are not supported"),
            };
        }
        let key = format!("{namespace}/{service}");
        let Some(svc) = self.model.service(&key) else {
            return Backend::Unavailable {
                service: name,
                reason: format!("service {key} does not exist"),
            };
        };
        if text(svc, "/spec/type") == "ExternalName" {
            return Backend::Unavailable {
                service: name,
                reason: format!("service {key} is an ExternalName; those are not supported"),
            };
        }
        let ports = svc.at("/spec/ports").and_then(Value::as_array);
        let found = ports.into_iter().flatten().find(|p| match number {
            Some(n) => p.get("port").and_then(Value::as_u64) == Some(n),
            None => text(p, "/name") == port_name,
        });
        let Some(service_port) = found else {
            return Backend::Unavailable {
                service: name,
                reason: format!("service {key} has no port {port_label}"),
            };
        };
        let protocol = annotations.backend_protocol.unwrap_or_else(|| {
            if H2C_APP_PROTOCOLS.contains(&text(service_port, "/appProtocol")) {
                UpstreamProtocol::H2c
            } else {
                UpstreamProtocol::Http1
            }
        });
        let number = service_port
            .get("port")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let slot = (format!("{key}:{number}"), protocol);
        let shared = self.known.entry(slot).or_insert_with(|| {
            let mut endpoints: Vec<SocketAddr> = ready_backends(
                self.model.slices_of(&key),
                text(service_port, "/name"),
                "tcp",
            )
            .into_iter()
            .map(|b| SocketAddr::new(IpAddr::V4(b.ip), b.port))
            .collect();
            endpoints.sort();
            endpoints.dedup();
            Arc::new(ServiceBackend {
                name,
                endpoints,
                protocol,
                next: AtomicUsize::new(0),
            })
        });
        Backend::Service(shared.clone())
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
