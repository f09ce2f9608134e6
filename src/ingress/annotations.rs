//! The ingress-nginx annotations skiff honours — the two the seed uses (`rewrite-target`,
//! `ssl-redirect`) and the ones they lean on (`use-regex`, `force-ssl-redirect`,
//! `backend-protocol`) — read under `nginx.ingress.kubernetes.io/` or `skiff.dev/` (the latter
//! wins when both are set), so manifests written for ingress-nginx work unchanged.

use crate::json_path::JsonPath;
use serde_json::Value;

const PREFIXES: [&str; 2] = ["skiff.dev/", "nginx.ingress.kubernetes.io/"];

/// How the backend is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with pooled keep-alive connections (nginx's default).
    Http1,
    /// HTTP/2 without TLS, prior knowledge (gRPC backends).
    H2c,
}

/// One Ingress's annotations, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotations {
    /// Replaces the whole request path of a match (nginx `rewrite ... break` semantics:
    /// `$1`..`$9` are the path pattern's capture groups; the query string is kept).
    pub rewrite_target: Option<String>,
    /// ImplementationSpecific paths are regular expressions (implied by rewrite-target, as
    /// in ingress-nginx).
    pub use_regex: bool,
    /// Plain-HTTP requests for a host with TLS are redirected to HTTPS (default true).
    pub ssl_redirect: bool,
    /// Redirect to HTTPS even for hosts without TLS.
    pub force_ssl_redirect: bool,
    /// None: as the Service port's appProtocol says.
    pub backend_protocol: Option<UpstreamProtocol>,
}

impl Default for Annotations {
    fn default() -> Self {
        Annotations {
            rewrite_target: None,
            use_regex: false,
            ssl_redirect: true,
            force_ssl_redirect: false,
            backend_protocol: None,
        }
    }
}

impl Annotations {
    /// The annotations of `ingress`; values skiff cannot use are reported in `warnings` and
    /// left at their defaults.
    pub fn of(ingress: &Value, warnings: &mut Vec<String>) -> Annotations {
        let map = ingress.at("/metadata/annotations");
        let get = |name: &str| {
            PREFIXES
                .iter()
                .find_map(|prefix| map?.get(format!("{prefix}{name}"))?.as_str().map(str::trim))
        };
        let mut flag = |name: &str, default: bool| match get(name) {
            None => default,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                warnings.push(format!("annotation {name}: {v:?} is not true or false"));
                default
            }
        };
        let ssl_redirect = flag("ssl-redirect", true);
        let force_ssl_redirect = flag("force-ssl-redirect", false);
        let rewrite_target = get("rewrite-target")
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        let use_regex = flag("use-regex", false) || rewrite_target.is_some();
        let backend_protocol = match get("backend-protocol").map(str::to_ascii_uppercase) {
            None => None,
            Some(p) if p == "HTTP" => Some(UpstreamProtocol::Http1),
            Some(p) if p == "GRPC" || p == "H2C" => Some(UpstreamProtocol::H2c),
            Some(other) => {
                warnings.push(format!(
                    "annotation backend-protocol: {other} is not supported (HTTP, H2C, GRPC); using HTTP"
                ));
                Some(UpstreamProtocol::Http1)
            }
        };
        Annotations {
            rewrite_target,
            use_regex,
            ssl_redirect,
            force_ssl_redirect,
            backend_protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(annotations: Value) -> (Annotations, Vec<String>) {
        let mut warnings = Vec::new();
        let parsed = Annotations::of(
            &json!({"metadata": {"annotations": annotations}}),
            &mut warnings,
        );
        (parsed, warnings)
    }

    #[test]
    fn nginx_names_work_and_skiff_names_win() {
        let (a, warnings) = parse(json!({
            "nginx.ingress.kubernetes.io/rewrite-target": "/$2",
            "nginx.ingress.kubernetes.io/ssl-redirect": "false",
            "nginx.ingress.kubernetes.io/backend-protocol": "GRPC",
            "skiff.dev/force-ssl-redirect": "true",
            "nginx.ingress.kubernetes.io/force-ssl-redirect": "false",
        }));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(a.rewrite_target.as_deref(), Some("/$2"));
        assert!(a.use_regex, "rewrite-target implies regex paths");
        assert!(!a.ssl_redirect);
        assert!(a.force_ssl_redirect);
        assert_eq!(a.backend_protocol, Some(UpstreamProtocol::H2c));
    }

    #[test]
    fn defaults_and_bad_values() {
        let (a, warnings) = parse(json!({}));
        assert_eq!(a, Annotations::default());
        assert!(a.ssl_redirect && warnings.is_empty());
        let (a, warnings) = parse(json!({
            "nginx.ingress.kubernetes.io/ssl-redirect": "yes",
            "nginx.ingress.kubernetes.io/backend-protocol": "FCGI",
        }));
        assert!(a.ssl_redirect, "an unreadable flag keeps its default");
        assert_eq!(a.backend_protocol, Some(UpstreamProtocol::Http1));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }
}
