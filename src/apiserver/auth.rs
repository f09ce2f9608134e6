//! Authentication: who a REST request comes from, as Kubernetes' user.Info.
//!
//! - An x509 client certificate the TLS handshake verified against the cluster CA: user = the
//!   subject's CommonName, groups = its Organizations (the admin kubeconfig's certificate is
//!   `system:admin` in `system:masters`).
//! - Otherwise the request is anonymous (`system:anonymous` in `system:unauthenticated`) and
//!   RBAC decides; by default that allows only the public info endpoints (/version, /healthz).
//!
//! A bearer token that we cannot verify is a 401, never anonymous: a client that meant to
//! authenticate must learn that it failed.

use axum::http::{Request, header};

use super::status::ApiError;
use crate::server::api_listener::ClientCertificate;

pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const ANONYMOUS: &str = "system:anonymous";

/// The user a request acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn anonymous() -> Self {
        UserInfo {
            name: ANONYMOUS.into(),
            groups: vec![UNAUTHENTICATED.into()],
        }
    }

    /// A user authenticated by some means, with `system:authenticated` added as Kubernetes does.
    pub fn authenticated(name: String, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        UserInfo { name, groups }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

pub fn authenticate<B>(request: &Request<B>) -> Result<UserInfo, ApiError> {
    if let Some(cert) = request.extensions().get::<ClientCertificate>()
        && cert.verified
    {
        if cert.common_name.is_empty() {
            return Err(ApiError::Unauthorized);
        }
        return Ok(UserInfo::authenticated(
            cert.common_name.clone(),
            cert.organizations.clone(),
        ));
    }
    if request.headers().contains_key(header::AUTHORIZATION) {
        // No token authenticator accepts it (none is configured yet).
        return Err(ApiError::Unauthorized);
    }
    Ok(UserInfo::anonymous())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_users_and_groups() {
        let mut request = Request::new(());
        request.extensions_mut().insert(ClientCertificate {
            verified: true,
            common_name: "bob".into(),
            organizations: vec!["dev".into()],
        });
        let user = authenticate(&request).expect("user");
        assert_eq!(user.name, "bob");
        assert_eq!(
            user.groups,
            vec!["dev".to_string(), AUTHENTICATED.to_string()]
        );
    }

    #[test]
    fn no_credentials_is_anonymous_and_a_bad_token_is_401() {
        let request = Request::new(());
        assert_eq!(authenticate(&request).expect("anon"), UserInfo::anonymous());
        let mut with_token = Request::new(());
        with_token.headers_mut().insert(
            header::AUTHORIZATION,
            "Bearer nope".parse().expect("header"),
        );
        assert!(matches!(
            authenticate(&with_token),
            Err(ApiError::Unauthorized)
        ));
    }
}
