//! The REST routes on the API port, merged into the server's axum Router: discovery, OpenAPI
//! and the resource paths, each request authenticated and traced in its own span.

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tracing::Instrument;

use super::authz::{Attributes, Authorizer, defaults::SUPERUSER_GROUP, reviews};
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
    pub authorizer: Authorizer,
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

/// `Impersonate-User` / `Impersonate-Group` (kubectl `--as`, `--as-group`): the request acts as
/// that user if the caller may `impersonate` it, as kube-apiserver's impersonation filter does.
fn impersonate(
    state: &ApiState,
    caller: auth::UserInfo,
    headers: &axum::http::HeaderMap,
) -> Result<auth::UserInfo, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let users = values("impersonate-user");
    let groups = values("impersonate-group");
    let Some(name) = users.first() else {
        if groups.is_empty() {
            return Ok(caller);
        }
        return Err(ApiError::BadRequest(
            "requested impersonation of groups without a user".into(),
        ));
    };
    if !caller.in_group(SUPERUSER_GROUP) {
        let check = |resource: &str, target: &str| {
            state.authorizer.authorize(
                &caller,
                &Attributes {
                    verb: "impersonate".into(),
                    resource: resource.into(),
                    name: target.into(),
                    ..Attributes::default()
                },
            )
        };
        check("users", name)?;
        for group in &groups {
            check("groups", group)?;
        }
    }
    Ok(auth::UserInfo::authenticated(name.clone(), groups))
}

async fn serve(state: &ApiState, request: Request) -> Result<Response, ApiError> {
    let authenticated = auth::authenticate(&request)?;
    let user = impersonate(state, authenticated, request.headers())?;
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let query = Query::parse(request.uri().query())?;
    let output = negotiate(request.headers());
    let superuser = user.in_group(SUPERUSER_GROUP);
    let authorize = |attrs: &Attributes| {
        if superuser {
            Ok(())
        } else {
            state.authorizer.authorize(&user, attrs)
        }
    };
    if let Some(review) = reviews::lookup(&path) {
        if method != Method::POST {
            return Err(ApiError::MethodNotAllowed(format!(
                "{} only supports create",
                review.resource
            )));
        }
        authorize(&Attributes {
            verb: "create".into(),
            api_group: review.group.into(),
            resource: review.resource.into(),
            ..Attributes::default()
        })?;
        let headers = request.headers().clone();
        let body = to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::TooLarge)?;
        let body = super::request::decode_body(&headers, &body)?;
        let answered = reviews::answer(review, &state.authorizer, &user, body)?;
        return Ok(json_response(StatusCode::CREATED, &answered));
    }
    if path == "/version" {
        authorize(&Attributes::of_path(&path, &method))?;
        return Ok(json_response(StatusCode::OK, &discovery::version()));
    }
    if path.starts_with("/openapi") {
        authorize(&Attributes::of_path(&path, &method))?;
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
    let target = parse_path(&path)?;
    match &target {
        Target::Resource(resource) => {
            authorize(&Attributes::of_resource(resource, &method, &query))?;
        }
        _ => authorize(&Attributes::of_path(&path, &method))?,
    }
    let target = match target {
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
