//! The REST routes on the API port, merged into the server's axum Router: discovery, OpenAPI
//! and the resource paths, each request authenticated and traced in its own span.

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tracing::Instrument;

use super::discovery;
use super::handlers::{self, json_response};
use super::objects::Objects;
use super::request::{Query, Target, negotiate, parse_path};
use super::status::ApiError;
use super::{auth, subresources, watch};

/// Largest request body accepted (kube-apiserver's limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub objects: Objects,
    /// `host:port` clients reach this member at (for /api's serverAddressByClientCIDRs).
    pub server_address: String,
}

pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/version", get(dispatch))
        .route("/api", any(dispatch))
        .route("/api/{*rest}", any(dispatch))
        .route("/apis", any(dispatch))
        .route("/apis/{*rest}", any(dispatch))
        .route("/openapi/v2", get(dispatch))
        .route("/openapi/v3", get(dispatch))
        .route("/openapi/v3/{*rest}", get(dispatch))
        .with_state(state)
}

async fn dispatch(State(state): State<ApiState>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let span = tracing::info_span!("api", %method, %path);
    async move {
        let result = serve(&state, request).await;
        let response = result.unwrap_or_else(IntoResponse::into_response);
        tracing::debug!(code = response.status().as_u16(), "served");
        response
    }
    .instrument(span)
    .await
}

async fn serve(state: &ApiState, request: Request) -> Result<Response, ApiError> {
    auth::authenticate(&request)?;
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let query = Query::parse(request.uri().query())?;
    let output = negotiate(request.headers());
    if path == "/version" {
        return Ok(json_response(StatusCode::OK, &discovery::version()));
    }
    if path == "/openapi/v2" {
        return Err(ApiError::NoRoute);
    }
    if path == "/openapi/v3" {
        return Ok(json_response(
            StatusCode::OK,
            &discovery::openapi_v3_index(),
        ));
    }
    if let Some(doc) = path.strip_prefix("/openapi/v3/") {
        let doc = discovery::openapi_v3_document(doc).ok_or(ApiError::NoRoute)?;
        return Ok(json_response(StatusCode::OK, &doc));
    }
    let target = match parse_path(&path)? {
        Target::Root { legacy: true } => {
            return Ok(json_response(
                StatusCode::OK,
                &discovery::core_versions(&state.server_address),
            ));
        }
        Target::Root { legacy: false } => {
            return Ok(json_response(StatusCode::OK, &discovery::groups()));
        }
        Target::Group { group } => {
            let doc = discovery::group(&group).ok_or(ApiError::NoRoute)?;
            return Ok(json_response(StatusCode::OK, &doc));
        }
        Target::GroupVersion { group, version } => {
            let doc = discovery::resources(&group, &version).ok_or(ApiError::NoRoute)?;
            return Ok(json_response(StatusCode::OK, &doc));
        }
        Target::Resource(target) => target,
    };
    let info = target.kind.info();
    if info.namespaced && target.name.is_some() && target.namespace.is_none() {
        return Err(ApiError::NoRoute);
    }
    let headers = request.headers().clone();
    let body = to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge)?;
    let objects = &state.objects;
    let not_allowed = || {
        ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))
    };
    if let Some(sub) = target.subresource.as_deref() {
        let name = target.name.as_deref().ok_or(ApiError::NoRoute)?;
        if !subresources::subresources_of(info).contains(&sub) {
            return Err(ApiError::NoRoute);
        }
        return match (sub, &method) {
            ("status", &Method::GET) => handlers::get(objects, &target, name, &query, output).await,
            ("status", &Method::PUT) => {
                handlers::update(objects, &target, name, &headers, &body, &query, output).await
            }
            ("status", &Method::PATCH) => {
                handlers::patch(objects, &target, name, &headers, &body, &query, output).await
            }
            ("scale", &Method::GET) => subresources::get_scale(objects, &target, name).await,
            ("scale", &Method::PUT | &Method::PATCH) => {
                let is_patch = method == Method::PATCH;
                subresources::update_scale(
                    objects, &target, name, &headers, &body, is_patch, &query,
                )
                .await
            }
            ("binding", &Method::POST) => {
                subresources::bind(objects, &target, name, &headers, &body).await
            }
            ("eviction", &Method::POST) => {
                subresources::evict(objects, &target, name, &headers, &body).await
            }
            _ => Err(not_allowed()),
        };
    }
    match (&method, target.name.as_deref()) {
        (&Method::GET, None) if query.flag("watch") => {
            watch::watch(objects, &target, &query, output).await
        }
        (&Method::GET, None) => handlers::list(objects, &target, &query, output).await,
        (&Method::GET, Some(name)) => handlers::get(objects, &target, name, &query, output).await,
        (&Method::POST, None) => {
            handlers::create(objects, &target, &headers, &body, &query, output).await
        }
        (&Method::PUT, Some(name)) => {
            handlers::update(objects, &target, name, &headers, &body, &query, output).await
        }
        (&Method::PATCH, Some(name)) => {
            handlers::patch(objects, &target, name, &headers, &body, &query, output).await
        }
        (&Method::DELETE, Some(name)) => {
            handlers::delete(objects, &target, name, &body, &query, output).await
        }
        (&Method::DELETE, None) => {
            handlers::delete_collection(objects, &target, &body, &query).await
        }
        _ => Err(not_allowed()),
    }
}
