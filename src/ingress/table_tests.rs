//! The routing table against the Ingress API's rules: host and path precedence, conflicts
//! between Ingresses, default backends, port resolution, class filtering and rewrites.

use super::*;
use crate::ingress::class::{CONTROLLER, DEFAULT_CLASS_ANNOTATION};
use serde_json::json;

struct World {
    ingresses: BTreeMap<String, Value>,
    classes: BTreeMap<String, Value>,
    services: Model,
}

impl World {
    fn new() -> World {
        let mut classes = BTreeMap::new();
        classes.insert(
            "skiff".into(),
            json!({"metadata": {"name": "skiff", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
                   "spec": {"controller": CONTROLLER}}),
        );
        classes.insert(
            "nginx".into(),
            json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
        );
        let mut world = World {
            ingresses: BTreeMap::new(),
            classes,
            services: Model::default(),
        };
        // Services a..e, each with port 80 named http (to 8080) and 81 unnamed (to 8081),
        // and one ready endpoint 10.42.0.<n>; e has no ready endpoint.
        for (n, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            world.services.upsert_service(json!({
                "metadata": {"namespace": "default", "name": name},
                "spec": {"clusterIP": format!("10.43.0.{}", n + 10),
                         "ports": [{"name": "http", "port": 80}, {"name": "", "port": 81}]}}));
            world.services.upsert_slice(json!({
                "metadata": {"namespace": "default", "name": format!("{name}-1"),
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}, {"name": "", "port": 8081}],
                "endpoints": [{"addresses": [format!("10.42.0.{}", n + 1)],
                               "conditions": {"ready": *name != "e"}}]}));
        }
        world
    }

    fn ingress(&mut self, name: &str, created: &str, spec: Value) -> &mut Value {
        let object = json!({"metadata": {"namespace": "default", "name": name,
                                         "creationTimestamp": created},
                            "spec": spec});
        self.ingresses.insert(format!("default/{name}"), object);
        self.ingresses
            .get_mut(&format!("default/{name}"))
            .expect("inserted")
    }

    fn table(&self) -> (Table, Vec<String>) {
        let mut warnings = Vec::new();
        let inputs = Inputs {
            ingresses: &self.ingresses,
            classes: &self.classes,
            services: &self.services,
        };
        (Table::build(&inputs, &mut warnings), warnings)
    }
}

fn backend(service: &str) -> Value {
    json!({"service": {"name": service, "port": {"number": 80}}})
}

fn path(path: &str, kind: &str, service: &str) -> Value {
    json!({"path": path, "pathType": kind, "backend": backend(service)})
}

fn rule(host: Option<&str>, paths: Vec<Value>) -> Value {
    let mut rule = json!({"http": {"paths": paths}});
    if let Some(host) = host {
        rule["host"] = json!(host);
    }
    rule
}

fn backend_name(backend: &Backend) -> &str {
    match backend {
        Backend::Service(s) => &s.name,
        Backend::Unavailable { service, .. } => service,
    }
}

/// The service a request lands on ("404" when none).
fn service_for(table: &Table, host: &str, request: &str) -> String {
    match table.lookup(&normalize_host(host), request, None) {
        Some(m) => backend_name(&m.route.backend)
            .split([':', '/'])
            .nth(1)
            .unwrap_or("")
            .to_string(),
        None => "404".into(),
    }
}

#[test]
fn the_seeds_ingress_routes_hello_and_httpd() {
    let mut world = World::new();
    world.ingress(
        "hellok8s-ingress",
        "2026-01-01T00:00:00Z",
        json!({"rules": [rule(None, vec![path("/hello", "Prefix", "a"), path("/httpd", "Prefix", "b")])]}),
    );
    let (table, warnings) = world.table();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(service_for(&table, "10.99.0.11", "/hello"), "a");
    assert_eq!(service_for(&table, "10.99.0.11:80", "/hello/there"), "a");
    assert_eq!(service_for(&table, "anything.example", "/httpd"), "b");
    assert_eq!(service_for(&table, "10.99.0.11", "/hellothere"), "404");
    assert_eq!(service_for(&table, "10.99.0.11", "/"), "404");
}

#[test]
fn longest_path_wins_and_exact_beats_prefix_on_ties() {
    let mut world = World::new();
    world.ingress(
        "paths",
        "2026-01-01T00:00:00Z",
        json!({"rules": [rule(Some("foo.example"), vec![
            path("/", "Prefix", "a"),
            path("/foo", "Prefix", "b"),
            path("/foo", "Exact", "c"),
            path("/foo/bar", "Prefix", "d"),
        ])]}),
    );
    let (table, _) = world.table();
    for (request, expected) in [
        ("/", "a"),
        ("/other", "a"),
        ("/foo", "c"),
        ("/foo/", "b"),
        ("/foo/baz", "b"),
        ("/foo/bar", "d"),
        ("/foo/bar/baz", "d"),
        ("/foobar", "a"),
    ] {
        assert_eq!(
            service_for(&table, "foo.example", request),
            expected,
            "{request}"
        );
    }
}

#[test]
fn exact_hosts_then_wildcards_then_hostless_rules() {
    let mut world = World::new();
    world.ingress(
        "hosts",
        "2026-01-01T00:00:00Z",
        json!({"rules": [
            rule(Some("foo.bar.com"), vec![path("/exact", "Prefix", "a")]),
            rule(Some("*.bar.com"), vec![path("/", "Prefix", "b")]),
            rule(None, vec![path("/", "Prefix", "c")]),
        ]}),
    );
    let (table, _) = world.table();
    assert_eq!(service_for(&table, "foo.bar.com", "/exact"), "a");
    assert_eq!(
        service_for(&table, "FOO.bar.com.", "/exact/x"),
        "a",
        "case and final dot"
    );
    // No path of the exact host matches: the wildcard's do.
    assert_eq!(service_for(&table, "foo.bar.com", "/other"), "b");
    assert_eq!(service_for(&table, "baz.bar.com", "/exact"), "b");
    // A wildcard covers exactly one label.
    assert_eq!(service_for(&table, "a.b.bar.com", "/"), "c");
    assert_eq!(service_for(&table, "bar.com", "/"), "c");
    assert_eq!(service_for(&table, "other.example", "/"), "c");
}

#[test]
fn conflicts_go_to_the_oldest_ingress_and_default_backends_catch_the_rest() {
    let mut world = World::new();
    world.ingress(
        "newer",
        "2026-02-01T00:00:00Z",
        json!({"defaultBackend": backend("d"),
               "rules": [rule(Some("x.example"), vec![path("/", "Prefix", "b")])]}),
    );
    world.ingress(
        "older",
        "2026-01-01T00:00:00Z",
        json!({"defaultBackend": backend("c"),
               "rules": [rule(Some("x.example"), vec![path("/", "Prefix", "a")])]}),
    );
    let (table, _) = world.table();
    assert_eq!(service_for(&table, "x.example", "/"), "a");
    assert_eq!(
        service_for(&table, "y.example", "/"),
        "c",
        "the oldest default backend"
    );
    assert_eq!(table.ingresses, 2);
    assert_eq!(table.paths, 2);
}

#[test]
fn only_our_classes_are_routed() {
    let mut world = World::new();
    world.ingress(
        "theirs",
        "2026-01-01T00:00:00Z",
        json!({"ingressClassName": "nginx", "rules": [rule(None, vec![path("/nginx", "Prefix", "a")])]}),
    );
    world.ingress(
        "ours",
        "2026-01-01T00:00:00Z",
        json!({"ingressClassName": "skiff", "rules": [rule(None, vec![path("/skiff", "Prefix", "b")])]}),
    );
    world.ingress(
        "unnamed",
        "2026-01-01T00:00:00Z",
        json!({"rules": [rule(None, vec![path("/default", "Prefix", "c")])]}),
    );
    let (table, _) = world.table();
    assert_eq!(service_for(&table, "h", "/nginx"), "404");
    assert_eq!(service_for(&table, "h", "/skiff"), "b");
    assert_eq!(service_for(&table, "h", "/default"), "c");
}

#[test]
fn backends_resolve_ports_by_number_or_name_to_ready_endpoints() {
    let mut world = World::new();
    world.ingress(
        "ports",
        "2026-01-01T00:00:00Z",
        json!({"rules": [rule(None, vec![
            json!({"path": "/by-number", "pathType": "Prefix",
                   "backend": {"service": {"name": "a", "port": {"number": 81}}}}),
            json!({"path": "/by-name", "pathType": "Prefix",
                   "backend": {"service": {"name": "a", "port": {"name": "http"}}}}),
            json!({"path": "/no-port", "pathType": "Prefix",
                   "backend": {"service": {"name": "a", "port": {"number": 9999}}}}),
            json!({"path": "/no-service", "pathType": "Prefix",
                   "backend": {"service": {"name": "zz", "port": {"number": 80}}}}),
            path("/not-ready", "Prefix", "e"),
        ])]}),
    );
    let (table, _) = world.table();
    let endpoints = |request: &str| match table.lookup("h", request, None).map(|m| m.route) {
        Some(route) => match &route.backend {
            Backend::Service(s) => s.endpoints.iter().map(|e| e.to_string()).collect(),
            Backend::Unavailable { reason, .. } => vec![reason.clone()],
        },
        None => vec!["404".to_string()],
    };
    assert_eq!(endpoints("/by-number"), ["10.42.0.1:8081"]);
    assert_eq!(endpoints("/by-name"), ["10.42.0.1:8080"]);
    assert_eq!(
        endpoints("/no-port"),
        ["service default/a has no port 9999"]
    );
    assert_eq!(
        endpoints("/no-service"),
        ["service default/zz does not exist"]
    );
    assert!(
        endpoints("/not-ready").is_empty(),
        "no ready endpoint: 503, not 404"
    );
}

#[test]
fn round_robin_is_shared_by_every_route_to_a_port() {
    let mut world = World::new();
    world.services.upsert_slice(json!({
        "metadata": {"namespace": "default", "name": "a-2",
                     "labels": {"kubernetes.io/service-name": "a"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["10.42.1.1"]}, {"addresses": ["10.42.1.2"]}]}));
    world.ingress(
        "rr",
        "2026-01-01T00:00:00Z",
        json!({"rules": [rule(None, vec![path("/one", "Prefix", "a"), path("/two", "Prefix", "a")])]}),
    );
    let (table, _) = world.table();
    let first = |request: &str| match table.lookup("h", request, None).map(|m| m.route) {
        Some(route) => match &route.backend {
            Backend::Service(s) => s.rotation().next().map(|e| e.to_string()),
            Backend::Unavailable { .. } => None,
        },
        None => None,
    };
    let picks: Vec<Option<String>> = ["/one", "/two", "/one", "/two"]
        .iter()
        .map(|r| first(r))
        .collect();
    let picks: Vec<String> = picks.into_iter().flatten().collect();
    assert_eq!(
        picks,
        [
            "10.42.0.1:8080",
            "10.42.1.1:8080",
            "10.42.1.2:8080",
            "10.42.0.1:8080"
        ]
    );
    // The rotation after the pick is the retry order: every endpoint once.
    let route = table.lookup("h", "/one", None).expect("route").route;
    let Backend::Service(s) = &route.backend else {
        panic!("a service backend");
    };
    assert_eq!(s.rotation().count(), 3);
}

#[test]
fn rewrites_and_https_redirects_follow_the_annotations() {
    let mut world = World::new();
    let ingress = world.ingress(
        "rewrite",
        "2026-01-01T00:00:00Z",
        json!({"tls": [{"hosts": ["secure.example"], "secretName": "cert"}],
               "rules": [
                   rule(Some("secure.example"), vec![path("/something(/|$)(.*)", "ImplementationSpecific", "a")]),
                   rule(Some("plain.example"), vec![path("/hello", "Prefix", "b")]),
               ]}),
    );
    ingress["metadata"]["annotations"] =
        json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"});
    let (table, warnings) = world.table();
    assert!(warnings.is_empty(), "{warnings:?}");
    let matched = table
        .lookup("secure.example", "/something/new", Some("a=1"))
        .expect("route");
    assert_eq!(matched.rewritten.as_deref(), Some("/new?a=1"));
    assert!(
        matched.route.https_redirect,
        "TLS host, ssl-redirect defaults to true"
    );
    let matched = table
        .lookup("plain.example", "/hello/x", None)
        .expect("route");
    assert_eq!(matched.rewritten.as_deref(), Some("/"));
    assert!(!matched.route.https_redirect, "no TLS for this host");
    assert_eq!(with_query("/a?b=1".into(), Some("c=2")), "/a?b=1&c=2");
    assert_eq!(with_query("/a?".into(), Some("c=2")), "/a");
    // ssl-redirect: "false" turns the redirect off.
    world.ingresses.get_mut("default/rewrite").expect("ingress")["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"] =
        json!("false");
    let (table, _) = world.table();
    let matched = table
        .lookup("secure.example", "/something", None)
        .expect("route");
    assert!(!matched.route.https_redirect);
}

#[test]
fn a_bad_pattern_skips_only_its_path() {
    let mut world = World::new();
    let ingress = world.ingress(
        "bad",
        "2026-01-01T00:00:00Z",
        json!({"rules": [rule(None, vec![path("/(", "ImplementationSpecific", "a"), path("/ok", "Prefix", "b")])]}),
    );
    ingress["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/use-regex": "true"});
    let (table, warnings) = world.table();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("ingress default/bad:"),
        "{warnings:?}"
    );
    assert_eq!(service_for(&table, "h", "/ok"), "b");
    assert_eq!(table.paths, 1);
}

#[test]
fn hosts_normalize_and_wildcards_cover_one_label() {
    assert_eq!(normalize_host("Foo.Example:8080"), "foo.example");
    assert_eq!(normalize_host("foo.example."), "foo.example");
    assert_eq!(normalize_host("[::1]:80"), "::1");
    assert_eq!(normalize_host("10.99.0.11"), "10.99.0.11");
    let hosts: HashSet<String> = ["*.example.com".to_string(), "exact.org".to_string()].into();
    assert!(host_covered(&hosts, "a.example.com"));
    assert!(!host_covered(&hosts, "a.b.example.com"));
    assert!(!host_covered(&hosts, "example.com"));
    assert!(host_covered(&hosts, "exact.org"));
}
