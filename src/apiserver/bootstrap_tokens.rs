//! Bearer tokens for joining, as kube-apiserver's bootstrap token authenticator:
//! - Kubernetes bootstrap tokens `abcdef.0123456789abcdef`, each a Secret
//!   `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token` (kubeadm's
//!   `token create` writes the same), valid while `usage-bootstrap-authentication` is "true"
//!   and `expiration` has not passed; the user is `system:bootstrap:<id>` in
//!   `system:bootstrappers` plus the secret's `auth-extra-groups`.
//! - The cluster's own join token (`DATA/token`), which authenticates as
//!   `system:bootstrap:skiff` in `system:bootstrappers`.
//!
//! Either way RBAC decides what the user may do: by default only what every authenticated user
//! may (discovery, `kubectl auth whoami`, can-i), as on Kubernetes.

use base64::Engine as _;
use serde_json::Value;

use super::auth::UserInfo;
use crate::json_path::JsonPath;
use crate::pki::{JoinToken, constant_time_eq};

pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers";
const USER_PREFIX: &str = "system:bootstrap:";
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const SECRET_NAMESPACE: &str = "kube-system";

/// The (id, secret) of a token shaped like a bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The name of the Secret holding bootstrap token `id`.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// One decoded `data` entry of a Secret.
fn data(secret: &Value, key: &str) -> Option<String> {
    let raw = secret.at(&format!("/data/{key}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}

/// The user bootstrap token `id.secret_part` stands for, given its Secret, or None when the
/// Secret does not make it valid at `now`.
pub fn user_from_secret(
    id: &str,
    secret_part: &str,
    secret: &Value,
    now: jiff::Timestamp,
) -> Option<UserInfo> {
    if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
        return None;
    }
    if secret.at("/metadata/deletionTimestamp").is_some() {
        return None;
    }
    if !constant_time_eq(&data(secret, "token-id")?, id)
        || !constant_time_eq(&data(secret, "token-secret")?, secret_part)
    {
        return None;
    }
    if data(secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return None;
    }
    if let Some(expiration) = data(secret, "expiration") {
        let expires: jiff::Timestamp = expiration.parse().ok()?;
        if expires <= now {
            return None;
        }
    }
    let mut groups = vec![BOOTSTRAP_GROUP.to_string()];
    // Extra groups must stay inside the bootstrappers' namespace of groups (kube refuses the
    // token otherwise).
    for group in data(secret, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        if !group.starts_with("system:bootstrappers:") {
            return None;
        }
        groups.push(group.to_string());
    }
    Some(UserInfo::authenticated(
        format!("{USER_PREFIX}{id}"),
        groups,
    ))
}

/// The user the cluster's join token stands for, when `presented` is that token.
pub fn join_token_user(join: &JoinToken, presented: &str) -> Option<UserInfo> {
    let presented: JoinToken = presented.parse().ok()?;
    (presented.ca_hash == join.ca_hash && join.secret_matches(&presented.secret)).then(|| {
        UserInfo::authenticated(
            format!("{USER_PREFIX}skiff"),
            vec![BOOTSTRAP_GROUP.to_string()],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn secret(expiration: Option<&str>, extra: &str) -> Value {
        let mut data = json!({
            "token-id": b64("abcdef"),
            "token-secret": b64("0123456789abcdef"),
            "usage-bootstrap-authentication": b64("true"),
        });
        if let Some(e) = expiration {
            data["expiration"] = json!(b64(e));
        }
        if !extra.is_empty() {
            data["auth-extra-groups"] = json!(b64(extra));
        }
        json!({"type": SECRET_TYPE, "metadata": {"name": "bootstrap-token-abcdef"}, "data": data})
    }

    #[test]
    fn only_the_bootstrap_shape_parses() {
        assert_eq!(
            parse("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(parse("ABCDEF.0123456789abcdef"), None);
        assert_eq!(parse("abcdef.0123"), None);
        assert_eq!(parse("eyJhbGciOi.x.y"), None);
    }

    #[test]
    fn a_valid_secret_names_the_user_and_groups() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let s = secret(
            Some("2026-02-01T00:00:00Z"),
            "system:bootstrappers:kubeadm:default-node-token",
        );
        let user = user_from_secret("abcdef", "0123456789abcdef", &s, now).expect("valid");
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert!(user.in_group(BOOTSTRAP_GROUP));
        assert!(user.in_group("system:bootstrappers:kubeadm:default-node-token"));
        assert!(user.in_group("system:authenticated"));
    }

    #[test]
    fn wrong_secret_expiry_usage_or_groups_refuse() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let s = secret(None, "");
        assert!(user_from_secret("abcdef", "0123456789abcdee", &s, now).is_none());
        let expired = secret(Some("2025-12-31T00:00:00Z"), "");
        assert!(user_from_secret("abcdef", "0123456789abcdef", &expired, now).is_none());
        let mut unused = secret(None, "");
        unused["data"]["usage-bootstrap-authentication"] = json!(b64("false"));
        assert!(user_from_secret("abcdef", "0123456789abcdef", &unused, now).is_none());
        let escalating = secret(None, "system:masters");
        assert!(user_from_secret("abcdef", "0123456789abcdef", &escalating, now).is_none());
    }

    #[test]
    fn the_join_token_is_a_bootstrapper() {
        let join = JoinToken::new("ab".repeat(32));
        let user = join_token_user(&join, &join.to_string()).expect("valid");
        assert_eq!(user.name, "system:bootstrap:skiff");
        let other = JoinToken::new("ab".repeat(32));
        assert!(join_token_user(&join, &other.to_string()).is_none());
        assert!(join_token_user(&join, "garbage").is_none());
    }
}
