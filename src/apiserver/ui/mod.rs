//! The web dashboard at /ui: a static page (HTML, JS, CSS compiled into the binary, no build
//! step, nothing fetched from elsewhere) that reads the cluster through the ordinary Kubernetes
//! API with the bearer token the user pastes in, plus one JSON endpoint of its own,
//! /ui/api/cluster (the members' raft view, as `skiff status` shows it).
//!
//! The shell loads without credentials: a browser cannot present the admin client certificate
//! easily, so the page asks for a token. Every data call, /ui/api/* included, goes through the
//! API's authentication and RBAC (`router::serve`); /ui/api/* is a non-resource URL that only
//! cluster-admin (nonResourceURLs "*") and system:masters hold, so a token that may only read
//! pods is refused there with 403, and the page says so.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::status::ApiError;
use crate::pki::CertKey;
use crate::server::cluster_status;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Only this origin's scripts and connections: the page never talks to another host, and a
/// stored token cannot be sent elsewhere by injected markup.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How this member asks the members for their status (a client certificate of the cluster CA,
/// its own node certificate).
#[derive(Clone)]
pub struct MemberAccess {
    /// This member's API address (host:port).
    pub api_addr: String,
    pub ca_pem: String,
    pub identity: CertKey,
}

/// The static shell; no credentials needed (see the module comment).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `/ui/api/<rest>` for a caller already authenticated and authorized by the router.
pub async fn api(access: &MemberAccess, rest: &str) -> Result<Response, ApiError> {
    match rest {
        "cluster" => {
            let status =
                cluster_status::collect(&access.api_addr, &access.ca_pem, &access.identity)
                    .await
                    .map_err(|e| ApiError::Unavailable(format!("{e:#}")))?;
            let body =
                serde_json::to_value(&status).map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(super::handlers::json_response(StatusCode::OK, &body))
        }
        _ => Err(ApiError::NoRoute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page must not pull anything from another host (no CDN, no network at build time or
    /// in the browser): every src/href is a path on this server.
    #[test]
    fn assets_reference_only_this_origin() {
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            // The SVG namespace is a name, not a fetch.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://"), "no http:// URL in the assets");
            assert!(!text.contains("https://"), "no https:// URL in the assets");
            assert!(!text.contains("//cdn"), "no CDN");
        }
        assert!(INDEX_HTML.contains("/ui/app.js") && INDEX_HTML.contains("/ui/style.css"));
    }

    #[test]
    fn the_shell_is_served_with_a_strict_policy() {
        let response = asset("text/html; charset=utf-8", INDEX_HTML);
        assert_eq!(response.status(), StatusCode::OK);
        let csp = response
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(csp.contains("connect-src 'self'"));
        assert!(csp.contains("script-src 'self'"));
    }
}
