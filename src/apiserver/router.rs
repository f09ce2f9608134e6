//! The REST routes on the API port, merged into the server's axum Router: discovery, OpenAPI
//! and the resource paths, each request authenticated and traced in its own span.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::audit::{self, AuditLog};
use super::authz::{Attributes, Authorizer, defaults::SUPERUSER_GROUP, reviews};
use super::discovery;
use super::handlers::{self, json_response};
use super::metrics::Metrics;
use super::objects::{Objects, Scope};
use super::request::{Query, Target, negotiate, parse_path};
use super::static_tokens::StaticTokens;
use super::status::ApiError;
use super::tokens::TokenIssuer;
use super::{auth, bootstrap_tokens, eviction, subresources, watch};
use crate::json_path::JsonPath;

/// Largest request body accepted (kube-apiserver's limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Requests (other than watches) served at once before new ones get 429 + Retry-After, as
/// kube-apiserver's --max-requests-inflight.
pub const MAX_IN_FLIGHT: usize = 400;

#[derive(Clone)]
pub struct ApiState {
    pub objects: Objects,
    pub authorizer: Authorizer,
    /// `host:port` clients reach this member at (for /api's serverAddressByClientCIDRs).
    pub server_address: String,
    pub metrics: Metrics,
    pub audit: Option<AuditLog>,
    pub in_flight: Arc<Semaphore>,
    pub tokens: TokenIssuer,
    pub static_tokens: Arc<StaticTokens>,
    /// The cluster's join token (a bootstrap bearer token).
    pub join_token: Option<crate::pki::JoinToken>,
    pub kubelets: super::pod_streams::Kubelets,
    /// The nodes' last usage samples (metrics.k8s.io rates).
    pub usage_samples: super::resource_metrics::UsageSamples,
    /// How the dashboard's /ui/api/cluster reaches the members.
    pub member: super::ui::MemberAccess,
}

/// What a request turned out to be, filled in as `serve` learns it; read for metrics and the
/// audit log once the response is ready.
#[derive(Default)]
struct RequestInfo {
    user: Option<auth::UserInfo>,
    attrs: Attributes,
}

pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/version", get(dispatch))
        // The OpenAPI spec names it /version/ (getCode), which generated clients call.
        .route("/version/", get(dispatch))
        .route("/api", any(dispatch))
        .route("/api/{*rest}", any(dispatch))
        .route("/apis", any(dispatch))
        .route("/apis/{*rest}", any(dispatch))
        .route("/openapi/v2", get(dispatch))
        .route("/openapi/v3", get(dispatch))
        .route("/openapi/v3/{*rest}", get(dispatch))
        .route("/metrics", get(dispatch))
        .route("/ui/api/{*rest}", get(dispatch))
        .merge(super::ui::routes())
        .with_state(state)
}

async fn dispatch(State(state): State<ApiState>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let uri = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| path.clone());
    let request_id = request_id(request.headers());
    let span = tracing::info_span!("api", %method, %path, %request_id);
    async move {
        let started = Instant::now();
        let mut info = RequestInfo::default();
        let is_watch = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        // Watches are long-running and do not count against the in-flight limit.
        let permit = if is_watch {
            None
        } else {
            match state.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return ApiError::TooManyRequests.into_response();
                }
            }
        };
        let result = serve(&state, request, &mut info).await;
        drop(permit);
        let mut response = result.unwrap_or_else(IntoResponse::into_response);
        if let Ok(value) = http::HeaderValue::from_str(&request_id) {
            response
                .headers_mut()
                .insert(REQUEST_ID_HEADER, value.clone());
            response.headers_mut().insert(AUDIT_ID_HEADER, value);
        }
        let code = response.status().as_u16();
        let elapsed = started.elapsed();
        tracing::debug!(code, "served");
        if elapsed > SLOW_REQUEST && !is_watch && !long_running(&info.attrs) {
            let user = info.user.as_ref().map_or("", |u| u.name.as_str());
            tracing::warn!(
                code,
                verb = %info.attrs.verb,
                user,
                elapsed_ms = elapsed.as_millis() as u64,
                "slow request"
            );
        }
        record(&state, &info, &uri, &request_id, code, elapsed);
        response
    }
    .instrument(span)
    .await
}

/// Requests slower than this are logged at warn: Kubernetes' API latency SLO gives
/// single-object mutating calls 1 s at the 99th percentile (reads of one object too).
const SLOW_REQUEST: Duration = Duration::from_secs(1);

/// Where a client may name its request (and where the name is echoed back); `Audit-Id` is the
/// header kube-apiserver uses for the same id.
const REQUEST_ID_HEADER: &str = "x-request-id";
const AUDIT_ID_HEADER: &str = "audit-id";

/// The client's request id when it sent a usable one (printable ASCII, at most 128 bytes),
/// else a new UUID: logged on the request's span, echoed in the response, the audit auditID.
fn request_id(headers: &http::HeaderMap) -> String {
    [REQUEST_ID_HEADER, AUDIT_ID_HEADER]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .find(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(super::objects::new_uid, str::to_string)
}

/// Requests that stream for as long as the client wants (kube-apiserver's long-running
/// check: watch, proxy, log, exec, attach, port-forward), never "slow".
fn long_running(attrs: &Attributes) -> bool {
    attrs.verb == "watch"
        || matches!(
            attrs.subresource.as_str(),
            "log" | "exec" | "attach" | "portforward" | "proxy"
        )
}

/// Metrics and the audit line of one finished request.
fn record(
    state: &ApiState,
    info: &RequestInfo,
    uri: &str,
    request_id: &str,
    code: u16,
    elapsed: Duration,
) {
    let a = &info.attrs;
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let verb = if a.verb.is_empty() {
        "unknown"
    } else {
        a.verb.as_str()
    };
    state
        .metrics
        .observe(verb, &a.api_group, &resource, code, elapsed);
    if let Some(audit) = &state.audit {
        let anonymous = auth::UserInfo::anonymous();
        let user = info.user.as_ref().unwrap_or(&anonymous);
        audit.record(&audit::Record {
            audit_id: request_id,
            user: &user.name,
            groups: &user.groups,
            verb,
            uri,
            group: &a.api_group,
            resource: &a.resource,
            subresource: &a.subresource,
            namespace: &a.namespace,
            name: &a.name,
            code,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
        });
    }
}

/// The user a bearer token stands for: a static token, a bootstrap token (the cluster's join
/// token or a `bootstrap-token-<id>` Secret), or a ServiceAccount token whose account still
/// exists with the uid it was issued to.
async fn token_user(state: &ApiState, token: &str) -> Result<auth::UserInfo, ApiError> {
    if let Some(user) = state.static_tokens.user(token) {
        return Ok(user.clone());
    }
    if let Some(user) = state
        .join_token
        .as_ref()
        .and_then(|join| bootstrap_tokens::join_token_user(join, token))
    {
        return Ok(user);
    }
    if let Some((id, secret)) = bootstrap_tokens::parse(token) {
        return bootstrap_token_user(state, id, secret).await;
    }
    let subject = state
        .tokens
        .verify(token)
        .await
        .ok_or(ApiError::Unauthorized)?;
    let kind =
        crate::registry::lookup("", "v1", "serviceaccounts").ok_or(ApiError::Unauthorized)?;
    let account = state
        .objects
        .get(
            Scope::new(kind, Some(&subject.namespace)),
            &subject.name,
            false,
        )
        .await
        .map_err(|_| ApiError::Unauthorized)?;
    if account
        .at("/metadata/uid")
        .and_then(serde_json::Value::as_str)
        != Some(&subject.uid)
    {
        return Err(ApiError::Unauthorized);
    }
    Ok(auth::service_account_user(
        &subject.namespace,
        &subject.name,
    ))
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

/// A `abcdef.0123456789abcdef` token, checked against its Secret in kube-system.
async fn bootstrap_token_user(
    state: &ApiState,
    id: &str,
    secret: &str,
) -> Result<auth::UserInfo, ApiError> {
    let kind = crate::registry::lookup("", "v1", "secrets").ok_or(ApiError::Unauthorized)?;
    let scope = Scope::new(kind, Some(bootstrap_tokens::SECRET_NAMESPACE));
    let stored = state
        .objects
        .get(scope, &bootstrap_tokens::secret_name(id), false)
        .await
        .map_err(|_| ApiError::Unauthorized)?;
    bootstrap_tokens::user_from_secret(id, secret, &stored, jiff::Timestamp::now())
        .ok_or(ApiError::Unauthorized)
}

async fn serve(
    state: &ApiState,
    request: Request,
    info: &mut RequestInfo,
) -> Result<Response, ApiError> {
    info.attrs = Attributes::of_path(request.uri().path(), request.method());
    let authenticated = match auth::authenticate(&request)? {
        auth::Credential::User(user) => user,
        auth::Credential::Bearer(token) => token_user(state, &token).await?,
    };
    info.user = Some(authenticated.clone());
    let user = impersonate(state, authenticated, request.headers())?;
    info.user = Some(user.clone());
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
        let mut body = super::request::decode_body(&headers, &body)?;
        if review.resource == "tokenreviews" {
            // Answered here: verifying a token needs the store (ServiceAccounts).
            let token = body
                .at("/spec/token")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            let status = match token_user(state, token).await {
                Ok(u) => {
                    serde_json::json!({"authenticated": true, "user": {"username": u.name, "groups": u.groups}})
                }
                Err(_) => {
                    serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
                }
            };
            body["status"] = status;
        }
        let answered = reviews::answer(review, &state.authorizer, &user, body)?;
        return Ok(json_response(StatusCode::CREATED, &answered));
    }
    if path == "/metrics" {
        authorize(&Attributes::of_path(&path, &method))?;
        let text = state.metrics.render(state.objects.store().node());
        return Ok((
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            text,
        )
            .into_response());
    }
    if let Some(rest) = path.strip_prefix("/ui/api/") {
        authorize(&Attributes::of_path(&path, &method))?;
        return super::ui::api(&state.member, rest).await;
    }
    if path == "/version" || path == "/version/" {
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
    if let Some(metrics) = super::resource_metrics::parse(&path) {
        use super::resource_metrics::MetricsTarget;
        let (resource, namespace, name) = match &metrics {
            MetricsTarget::Nodes { name } => ("nodes", None, name.clone()),
            MetricsTarget::Pods { namespace, name } => ("pods", namespace.clone(), name.clone()),
        };
        info.attrs = Attributes {
            verb: if name.is_some() { "get" } else { "list" }.into(),
            api_group: super::resource_metrics::GROUP.into(),
            resource: resource.into(),
            name: name.unwrap_or_default(),
            namespace: namespace.unwrap_or_default(),
            ..Attributes::default()
        };
        authorize(&info.attrs)?;
        if method != Method::GET {
            return Err(ApiError::MethodNotAllowed(format!(
                "{resource}.metrics.k8s.io only supports get and list"
            )));
        }
        let body = super::resource_metrics::serve(
            &state.objects,
            &state.kubelets,
            &state.usage_samples,
            metrics,
            &query,
        )
        .await?;
        return Ok(json_response(StatusCode::OK, &body));
    }
    let target = parse_path(&path)?;
    match &target {
        Target::Resource(resource) => {
            info.attrs = Attributes::of_resource(resource, &method, &query);
            authorize(&info.attrs)?;
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
    // Streams relayed to the pod's node keep the request (exec upgrades the connection).
    if let (Some(sub @ ("log" | "exec" | "attach" | "portforward")), Some(name)) =
        (target.subresource.as_deref(), target.name.as_deref())
        && info.group.is_empty()
        && info.resource == "pods"
    {
        let kubelets = &state.kubelets;
        return match (sub, &method) {
            ("log", &Method::GET) => {
                super::pod_streams::logs(kubelets, &state.objects, &target, name, &query).await
            }
            ("exec", &Method::GET | &Method::POST) => {
                super::pod_streams::exec(kubelets, &state.objects, &target, name, request).await
            }
            ("attach", &Method::GET | &Method::POST) => {
                super::pod_streams::attach(kubelets, &state.objects, &target, name, request).await
            }
            ("portforward", &Method::GET | &Method::POST) => {
                super::port_forward::port_forward(kubelets, &state.objects, &target, name, request)
                    .await
            }
            _ => Err(ApiError::MethodNotAllowed(format!(
                "the server does not allow this method on the requested resource ({method})"
            ))),
        };
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
                eviction::evict(objects, &target, name, &headers, &body).await
            }
            ("token", &Method::POST) => {
                subresources::create_token(objects, &state.tokens, &target, name, &headers, &body)
                    .await
            }
            _ => Err(not_allowed()),
        };
    }
    match (&method, target.name.as_deref()) {
        (&Method::GET, None) if query.flag("watch") => {
            let guard = state.metrics.watch_started();
            watch::watch(objects, &target, &query, output, guard).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_come_from_the_client_when_usable() {
        let mut headers = http::HeaderMap::new();
        let generated = request_id(&headers);
        assert_eq!(generated.len(), 36, "a UUID: {generated}");
        headers.insert("audit-id", http::HeaderValue::from_static("from-audit"));
        assert_eq!(request_id(&headers), "from-audit");
        headers.insert("x-request-id", http::HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123", "X-Request-Id wins");
        headers.insert("x-request-id", http::HeaderValue::from_static("has space"));
        assert_eq!(
            request_id(&headers),
            "from-audit",
            "unprintable ids are ignored"
        );
    }

    #[test]
    fn streaming_requests_are_never_slow() {
        let attrs = |verb: &str, subresource: &str| Attributes {
            verb: verb.into(),
            subresource: subresource.into(),
            ..Default::default()
        };
        assert!(long_running(&attrs("watch", "")));
        assert!(long_running(&attrs("get", "log")));
        assert!(long_running(&attrs("create", "exec")));
        assert!(!long_running(&attrs("list", "")));
        assert!(!long_running(&attrs("update", "status")));
    }
}
