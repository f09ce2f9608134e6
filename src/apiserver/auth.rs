//! Authentication and authorization of REST requests.
//!
//! Authentication: an x509 client certificate verified against the cluster CA during the TLS
//! handshake (`ClientCertificate { verified }`, set by the API listener); anything else is 401.
//! Authorization: for now every verified certificate from the cluster CA is allowed everything.
//! RBAC (user = CN, groups = O, the default ClusterRoles and bindings), bearer and
//! ServiceAccount tokens are the next step and will plug in here.

use axum::http::Request;

use super::status::ApiError;
use crate::server::api_listener::ClientCertificate;

/// Who made a request. Only the certificate's presence is known until RBAC needs the names.
#[derive(Clone, Debug)]
pub enum Identity {
    ClusterCertificate,
}

pub fn authenticate<B>(request: &Request<B>) -> Result<Identity, ApiError> {
    match request.extensions().get::<ClientCertificate>() {
        Some(cert) if cert.verified => Ok(Identity::ClusterCertificate),
        _ => Err(ApiError::Unauthorized),
    }
}
