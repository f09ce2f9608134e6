//! ServiceAccount tokens: ES256-signed JWTs bound to a ServiceAccount's uid, as Kubernetes'
//! bound service account tokens (`kubectl create token`, TokenRequest).
//!
//! The signing key is cluster-wide and lives in the replicated store (created once by whichever
//! member first needs it, with a create-if-absent transaction), so every member issues and
//! verifies the same tokens, and a backup carries it.

use std::sync::Arc;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::status::ApiError;
use super::store::{CreateOutcome, ObjectStore};
use crate::json_path::JsonPath;

pub(super) const KEY_PATH: &str = "/registry/skiff/serviceaccount-signing-key";
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Tokens last an hour unless asked otherwise; at most a day, at least ten minutes.
const DEFAULT_TTL: i64 = 3600;
const MIN_TTL: i64 = 600;
const MAX_TTL: i64 = 86_400;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// The claims a valid token carries about its ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSubject {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl TokenSubject {
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

/// Issues and verifies tokens with the cluster's key (loaded from the store on first use).
#[derive(Clone)]
pub struct TokenIssuer {
    store: ObjectStore,
    key: Arc<OnceCell<Arc<EcdsaKeyPair>>>,
}

impl TokenIssuer {
    pub fn new(store: ObjectStore) -> Self {
        TokenIssuer {
            store,
            key: Arc::new(OnceCell::new()),
        }
    }

    async fn key(&self) -> Result<Arc<EcdsaKeyPair>, ApiError> {
        self.key
            .get_or_try_init(|| async {
                let pkcs8 = self.load_or_create().await?;
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &pkcs8,
                    &SystemRandom::new(),
                )
                .map(Arc::new)
                .map_err(|e| ApiError::Internal(format!("service account key: {e}")))
            })
            .await
            .cloned()
    }

    async fn load_or_create(&self) -> Result<Vec<u8>, ApiError> {
        let stored = |v: &Value| {
            v.get("pkcs8")
                .and_then(Value::as_str)
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        };
        if let Some(existing) = self.store.get(KEY_PATH, true).await? {
            return stored(&existing.object)
                .ok_or_else(|| ApiError::Internal("the service account key is corrupt".into()));
        }
        let fresh =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|e| {
                    ApiError::Internal(format!("generating the service account key: {e}"))
                })?;
        let object =
            json!({"pkcs8": base64::engine::general_purpose::STANDARD.encode(fresh.as_ref())});
        match self.store.create(KEY_PATH, &object, None).await? {
            CreateOutcome::Created(_) => Ok(fresh.as_ref().to_vec()),
            // Another member won the race: use its key.
            _ => {
                let existing =
                    self.store.get(KEY_PATH, true).await?.ok_or_else(|| {
                        ApiError::Internal("the service account key vanished".into())
                    })?;
                stored(&existing.object)
                    .ok_or_else(|| ApiError::Internal("the service account key is corrupt".into()))
            }
        }
    }

    /// A token for `subject`, valid for `ttl` seconds (clamped), for `audiences`.
    pub async fn issue(
        &self,
        subject: &TokenSubject,
        audiences: &[String],
        ttl: Option<i64>,
    ) -> Result<(String, jiff::Timestamp), ApiError> {
        let key = self.key().await?;
        sign(
            &key,
            subject,
            audiences,
            ttl,
            jiff::Timestamp::now().as_second(),
        )
    }

    /// The ServiceAccount a token was issued to, if the signature, issuer and times hold.
    /// (Whether that ServiceAccount still exists with that uid is the caller's check.)
    pub async fn verify(&self, token: &str) -> Option<TokenSubject> {
        let key = self.key().await.ok()?;
        check(&key, token, jiff::Timestamp::now().as_second())
    }
}

fn sign(
    key: &EcdsaKeyPair,
    subject: &TokenSubject,
    audiences: &[String],
    ttl: Option<i64>,
    now: i64,
) -> Result<(String, jiff::Timestamp), ApiError> {
    let ttl = ttl.unwrap_or(DEFAULT_TTL).clamp(MIN_TTL, MAX_TTL);
    let audiences: Vec<String> = if audiences.is_empty() {
        vec![ISSUER.to_string()]
    } else {
        audiences.to_vec()
    };
    let header = json!({"alg": "ES256", "typ": "JWT"});
    let claims = json!({
        "iss": ISSUER,
        "sub": subject.username(),
        "aud": audiences,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "kubernetes.io": {
            "namespace": subject.namespace,
            "serviceaccount": {"name": subject.name, "uid": subject.uid},
        },
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = key
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))?;
    let expires =
        jiff::Timestamp::from_second(now + ttl).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        format!("{signing_input}.{}", b64(signature.as_ref())),
        expires,
    ))
}

fn check(key: &EcdsaKeyPair, token: &str, now: i64) -> Option<TokenSubject> {
    let mut parts = token.split('.');
    let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref());
    public
        .verify(format!("{header}.{claims}").as_bytes(), &unb64(signature)?)
        .ok()?;
    let claims: Value = serde_json::from_slice(&unb64(claims)?).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(0);
    if claims.get("iss")?.as_str()? != ISSUER || now >= exp || now + 60 < nbf {
        return None;
    }
    let k = claims.get("kubernetes.io")?;
    Some(TokenSubject {
        namespace: k.get("namespace")?.as_str()?.to_string(),
        name: k.at("/serviceaccount/name")?.as_str()?.to_string(),
        uid: k.at("/serviceaccount/uid")?.as_str()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key")
    }

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_their_key() {
        let key = key();
        let subject = TokenSubject {
            namespace: "dev".into(),
            name: "ci".into(),
            uid: "u1".into(),
        };
        let (token, _) = sign(&key, &subject, &[], Some(600), 1_000_000).expect("sign");
        assert_eq!(check(&key, &token, 1_000_100), Some(subject.clone()));
        assert_eq!(check(&key, &token, 1_000_600), None, "expired");
        assert_eq!(check(&self::key(), &token, 1_000_100), None, "another key");
        let mut forged = token.clone();
        forged.insert(token.find('.').expect("dot") + 2, 'x');
        assert_eq!(check(&key, &forged, 1_000_100), None, "tampered");
        assert_eq!(subject.username(), "system:serviceaccount:dev:ci");
    }
}
