//! Authentication: who a REST request comes from, as Kubernetes' user.Info.
//!
//! - An x509 client certificate the TLS handshake verified against the cluster CA: user = the
//!   subject's CommonName, groups = its Organizations (the admin kubeconfig's certificate is
//!   `system:admin` in `system:masters`).
//! - A bearer token: a ServiceAccount token (verified by `super::tokens`, and only while its
//!   ServiceAccount exists with the uid it was issued for). A token that does not verify is a
//!   401, never anonymous.
//! - Otherwise the request is anonymous (`system:anonymous` in `system:unauthenticated`) and
//!   RBAC decides; by default that allows only the public info endpoints (/version, /healthz).

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

/// What a request presents: a user already known (certificate, or anonymous), or a bearer
/// token still to verify (that needs the store; see `tokens`).
#[derive(Debug, PartialEq, Eq)]
pub enum Credential {
    User(UserInfo),
    Bearer(String),
}

pub fn authenticate<B>(request: &Request<B>) -> Result<Credential, ApiError> {
    if let Some(cert) = request.extensions().get::<ClientCertificate>()
        && cert.verified
    {
        if cert.common_name.is_empty() {
            return Err(ApiError::Unauthorized);
        }
        return Ok(Credential::User(UserInfo::authenticated(
            cert.common_name.clone(),
            cert.organizations.clone(),
        )));
    }
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        return Ok(Credential::Bearer(token.to_string()));
    }
    Ok(Credential::User(UserInfo::anonymous()))
}

/// The user of a verified ServiceAccount token, with the groups Kubernetes gives it.
pub fn service_account_user(namespace: &str, name: &str) -> UserInfo {
    UserInfo::authenticated(
        format!("system:serviceaccount:{namespace}:{name}"),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
        ],
    )
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
        let Credential::User(user) = authenticate(&request).expect("user") else {
            panic!("a certificate names a user");
        };
        assert_eq!(user.name, "bob");
        assert_eq!(
            user.groups,
            vec!["dev".to_string(), AUTHENTICATED.to_string()]
        );
    }

    #[test]
    fn no_credentials_is_anonymous_and_tokens_are_presented() {
        let request = Request::new(());
        assert_eq!(
            authenticate(&request).expect("anon"),
            Credential::User(UserInfo::anonymous())
        );
        let mut with_token = Request::new(());
        with_token
            .headers_mut()
            .insert(header::AUTHORIZATION, "Bearer abc".parse().expect("header"));
        assert_eq!(
            authenticate(&with_token).expect("token"),
            Credential::Bearer("abc".into())
        );
        let mut basic = Request::new(());
        basic
            .headers_mut()
            .insert(header::AUTHORIZATION, "Basic eDp5".parse().expect("header"));
        assert!(matches!(authenticate(&basic), Err(ApiError::Unauthorized)));
    }
}
