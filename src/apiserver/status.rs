//! API errors as metav1.Status objects with the HTTP code, reason and message forms
//! kube-apiserver uses (kubectl prints `Error from server (<Reason>): <message>`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use skiff_raft::NodeError;

use crate::registry::{FieldErrors, KindInfo};

/// Everything a request can fail with. Each variant maps to one metav1.Status reason.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    /// The authorizer said no; the message is kube-apiserver's.
    #[error("{0}")]
    Forbidden(String),
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, name: String },
    /// A path that names nothing we serve.
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, name: String },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {detail}")]
    Conflict {
        resource: String,
        name: String,
        detail: String,
    },
    #[error("{0}")]
    Expired(String),
    /// A server-side apply would change fields other managers own.
    #[error("{0}")]
    ApplyConflict(String),
    #[error("{kind} \"{name}\" is invalid: {}", summary(.errors))]
    Invalid {
        kind: String,
        group: String,
        name: String,
        errors: FieldErrors,
    },
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("Request entity too large: limit is 3145728")]
    TooLarge,
    #[error("{0}")]
    Unavailable(String),
    /// Too many requests in flight; the client should retry after a second.
    #[error("Too many requests, please try again later.")]
    TooManyRequests,
    /// An eviction a PodDisruptionBudget refuses (429, as kube-apiserver answers it); `cause`
    /// is the DisruptionBudget cause's message, naming the budget.
    #[error("Cannot evict pod as it would violate the pod's disruption budget.")]
    DisruptionBudget { cause: String },
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

fn summary(errors: &FieldErrors) -> String {
    let parts: Vec<String> = errors
        .0
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    if parts.len() == 1 {
        parts.join("")
    } else {
        format!("[{}]", parts.join(", "))
    }
}

/// The "object has been modified" conflict of a lost optimistic-concurrency race.
pub const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

impl ApiError {
    pub fn not_found(info: &KindInfo, name: &str) -> Self {
        ApiError::NotFound {
            resource: info.qualified_resource(),
            name: name.to_string(),
        }
    }

    pub fn already_exists(info: &KindInfo, name: &str) -> Self {
        ApiError::AlreadyExists {
            resource: info.qualified_resource(),
            name: name.to_string(),
        }
    }

    pub fn conflict(info: &KindInfo, name: &str, detail: impl Into<String>) -> Self {
        ApiError::Conflict {
            resource: info.qualified_resource(),
            name: name.to_string(),
            detail: detail.into(),
        }
    }

    pub fn invalid(info: &KindInfo, name: &str, errors: FieldErrors) -> Self {
        ApiError::Invalid {
            kind: info.kind.to_string(),
            group: info.group.to_string(),
            name: name.to_string(),
            errors,
        }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::ApplyConflict(_) => StatusCode::CONFLICT,
            ApiError::Expired(_) => StatusCode::GONE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests | ApiError::DisruptionBudget { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict(_) => "Conflict",
            ApiError::Expired(_) => "Expired",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::TooLarge => "RequestEntityTooLarge",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::TooManyRequests | ApiError::DisruptionBudget { .. } => "TooManyRequests",
            ApiError::Timeout(_) => "Timeout",
            ApiError::Internal(_) => "InternalError",
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name, .. } => {
                let (kind, group) = match resource.split_once('.') {
                    Some((r, g)) => (r, g),
                    None => (resource.as_str(), ""),
                };
                let mut d = json!({ "name": name, "kind": kind });
                if !group.is_empty() {
                    d["group"] = json!(group);
                }
                Some(d)
            }
            ApiError::Invalid {
                kind,
                group,
                name,
                errors,
            } => {
                let causes: Vec<Value> = errors
                    .0
                    .iter()
                    .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
                    .collect();
                let mut d = json!({ "name": name, "kind": kind, "causes": causes });
                if !group.is_empty() {
                    d["group"] = json!(group);
                }
                Some(d)
            }
            ApiError::DisruptionBudget { cause } => Some(json!({
                "causes": [{"reason": "DisruptionBudget", "message": cause}],
            })),
            _ => None,
        }
    }

    /// The metav1.Status body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        if let Some(details) = self.details() {
            status["details"] = details;
        }
        status
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NoLeader => ApiError::Unavailable(
                "the cluster has no leader (no quorum or an election is under way)".into(),
            ),
            NodeError::Timeout => ApiError::Timeout(
                "Timeout: request did not complete within the allowed duration".into(),
            ),
            NodeError::Compacted { compacted } => ApiError::Expired(format!(
                "The resourceVersion for the provided list is too old (compacted revision {compacted})."
            )),
            NodeError::FutureRevision { current } => ApiError::Timeout(format!(
                "Too large resource version: the store is at revision {current}"
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        tracing::debug!(code = code.as_u16(), error = %self, "request failed");
        let mut response = (code, self.to_status().to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(self, ApiError::TooManyRequests) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;

    #[test]
    fn messages_match_kubernetes() {
        let cm = lookup("", "v1", "configmaps").expect("cm").info();
        assert_eq!(
            ApiError::not_found(cm, "x").to_string(),
            "configmaps \"x\" not found"
        );
        assert_eq!(
            ApiError::already_exists(cm, "x").to_string(),
            "configmaps \"x\" already exists"
        );
        assert_eq!(
            ApiError::conflict(cm, "x", MODIFIED).to_string(),
            "Operation cannot be fulfilled on configmaps \"x\": the object has been modified; please apply your changes to the latest version and try again"
        );
        let d = lookup("apps", "v1", "deployments").expect("d").info();
        let status = ApiError::not_found(d, "web").to_status();
        assert_eq!(status["message"], "deployments.apps \"web\" not found");
        assert_eq!(status["details"]["group"], "apps");
        assert_eq!(status["code"], 404);
    }
}
