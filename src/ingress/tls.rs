//! Certificates for the HTTPS listener: `kubernetes.io/tls` Secrets named in the `spec.tls`
//! of the Ingresses skiff serves, chosen per handshake by SNI (exact host, then the wildcard
//! one label up, then a `spec.tls` entry without hosts, then a self-signed certificate made at
//! start, as ingress-nginx's "fake certificate"). The set is swapped whole when a Secret or an
//! Ingress changes: handshakes after the swap get the new certificate, connections already
//! open keep theirs and are never dropped.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::Value;

use super::class::tls_secret_names;
use crate::json_path::JsonPath;
use crate::proxy::model::key_of;

/// The name the built-in fallback certificate is issued for.
const FALLBACK_NAME: &str = "skiff-ingress-default";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make the fallback certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("secret {secret}: {reason}")]
    Secret { secret: String, reason: String },
}

/// The certificates in force, by the names they serve.
#[derive(Default)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// From a `spec.tls` entry without hosts: serves names nothing else covers.
    unnamed: Option<Arc<CertifiedKey>>,
    /// Secrets loaded, for logs.
    pub secrets: usize,
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A certificate chain and key from a TLS Secret's `tls.crt` / `tls.key`.
fn certified_key(secret: &Value) -> Result<CertifiedKey, TlsError> {
    let fail = |reason: String| TlsError::Secret {
        secret: key_of(secret),
        reason,
    };
    let field = |name: &str| -> Result<Vec<u8>, TlsError> {
        let encoded = secret
            .get("data")
            .and_then(|data| data.get(name))
            .and_then(Value::as_str)
            .ok_or_else(|| fail(format!("no {name}")))?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| fail(format!("{name} is not base64: {e}")))
    };
    let cert_pem = field("tls.crt")?;
    let key_pem = field("tls.key")?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("tls.crt: {e}")))?;
    if chain.is_empty() {
        return Err(fail("tls.crt holds no certificate".into()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| fail(format!("tls.key: {e}")))?
        .ok_or_else(|| fail("tls.key holds no private key".into()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| fail(format!("{e}")))
}

impl CertSet {
    /// The certificates of `ingresses` (served ones, oldest first: the first to claim a host
    /// keeps it) from `secrets` (`namespace/name` -> the Secret, or None when there is none;
    /// absent while not yet read). Missing and unusable Secrets are reported in `warnings`.
    pub fn build(
        ingresses: &[&Value],
        secrets: &BTreeMap<String, Option<Value>>,
        warnings: &mut Vec<String>,
    ) -> CertSet {
        let mut set = CertSet::default();
        let mut loaded: HashMap<String, Option<Arc<CertifiedKey>>> = HashMap::new();
        for ingress in ingresses {
            let namespace = ingress
                .at("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let entries = ingress.at("/spec/tls").and_then(Value::as_array);
            for entry in entries.into_iter().flatten() {
                let Some(name) = entry.get("secretName").and_then(Value::as_str) else {
                    continue;
                };
                let key = format!("{namespace}/{name}");
                let cert = loaded
                    .entry(key.clone())
                    .or_insert_with(|| match secrets.get(&key) {
                        None => None,
                        Some(None) => {
                            warnings.push(format!(
                                "secret {key} (ingress {}): not found or not kubernetes.io/tls",
                                key_of(ingress)
                            ));
                            None
                        }
                        Some(Some(secret)) => match certified_key(secret) {
                            Ok(cert) => Some(Arc::new(cert)),
                            Err(e) => {
                                warnings.push(e.to_string());
                                None
                            }
                        },
                    })
                    .clone();
                let Some(cert) = cert else { continue };
                let hosts = entry.get("hosts").and_then(Value::as_array);
                let mut any_host = false;
                for host in hosts.into_iter().flatten().filter_map(Value::as_str) {
                    any_host = true;
                    let host = host.to_ascii_lowercase();
                    let slot = match host.strip_prefix("*.") {
                        Some(suffix) => set.wildcard.entry(suffix.to_string()),
                        None => set.exact.entry(host),
                    };
                    slot.or_insert_with(|| cert.clone());
                }
                if !any_host && set.unnamed.is_none() {
                    set.unnamed = Some(cert);
                }
            }
        }
        set.secrets = loaded.values().filter(|c| c.is_some()).count();
        set
    }

    fn lookup(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        self.exact
            .get(&name)
            .or_else(|| {
                let (label, rest) = name.split_once('.')?;
                (!label.is_empty()).then_some(())?;
                self.wildcard.get(rest)
            })
            .or(self.unnamed.as_ref())
            .cloned()
    }
}

/// The SNI resolver of the HTTPS listener; [`Certificates::replace`] swaps its set.
pub struct Certificates {
    current: RwLock<Arc<CertSet>>,
    fallback: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates").finish_non_exhaustive()
    }
}

impl Certificates {
    pub fn new() -> Result<Certificates, TlsError> {
        let generated = rcgen::generate_simple_self_signed(vec![FALLBACK_NAME.to_string()])?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            generated.signing_key.serialize_der(),
        ));
        let fallback =
            CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider())?;
        Ok(Certificates {
            current: RwLock::new(Arc::new(CertSet::default())),
            fallback: Arc::new(fallback),
        })
    }

    pub fn replace(&self, set: CertSet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// The certificate a handshake naming `server_name` (None: no SNI) gets.
    pub fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let set = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        server_name
            .and_then(|name| set.lookup(name))
            .or_else(|| set.unnamed.clone())
            .unwrap_or_else(|| self.fallback.clone())
    }

    /// A rustls server configuration resolving through `self`, offering HTTP/2 and 1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()))
    }
}

/// The TLS Secrets the served Ingresses name (`namespace/name`): the ones to watch.
pub fn wanted_secrets(ingresses: &[&Value]) -> std::collections::BTreeSet<String> {
    ingresses
        .iter()
        .flat_map(|ingress| {
            let namespace = ingress
                .at("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            tls_secret_names(ingress).map(move |name| format!("{namespace}/{name}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A TLS Secret holding a self-signed certificate for `names`.
    fn secret(namespace: &str, name: &str, names: &[&str]) -> (Value, Vec<u8>) {
        let generated = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .expect("certificate");
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        let der = generated.cert.der().to_vec();
        (
            json!({"metadata": {"namespace": namespace, "name": name}, "type": "kubernetes.io/tls",
                   "data": {"tls.crt": b64(generated.cert.pem()),
                            "tls.key": b64(generated.signing_key.serialize_pem())}}),
            der,
        )
    }

    fn ingress(tls: Value) -> Value {
        json!({"metadata": {"namespace": "default", "name": "web"}, "spec": {"tls": tls}})
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_unnamed_then_fallback() {
        let (a, a_der) = secret("default", "a", &["a.example"]);
        let (w, w_der) = secret("default", "w", &["*.wild.example"]);
        let (u, u_der) = secret("default", "u", &["whatever"]);
        let secrets: BTreeMap<String, Option<Value>> = [
            ("default/a".to_string(), Some(a)),
            ("default/w".to_string(), Some(w)),
            ("default/u".to_string(), Some(u)),
            ("default/missing".to_string(), None),
        ]
        .into();
        let ing = ingress(json!([
            {"hosts": ["a.example"], "secretName": "a"},
            {"hosts": ["*.wild.example"], "secretName": "w"},
            {"secretName": "u"},
            {"hosts": ["missing.example"], "secretName": "missing"},
            {"hosts": ["unread.example"], "secretName": "not-read-yet"},
        ]));
        let mut warnings = Vec::new();
        let set = CertSet::build(&[&ing], &secrets, &mut warnings);
        assert_eq!(set.secrets, 3);
        // The missing Secret is reported; one whose watch has not listed yet is not.
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("default/missing"), "{warnings:?}");
        let certs = Arc::new(Certificates::new().expect("fallback"));
        certs.replace(set);
        let served = |name: Option<&str>| certs.choose(name).cert[0].to_vec();
        assert_eq!(served(Some("A.example")), a_der);
        assert_eq!(served(Some("x.wild.example")), w_der);
        assert_eq!(
            served(Some("x.y.wild.example")),
            u_der,
            "wildcards cover one label"
        );
        assert_eq!(served(None), u_der);
        // Nothing at all: the generated fallback.
        certs.replace(CertSet::default());
        let fallback = served(Some("a.example"));
        assert_ne!(fallback, a_der);
        assert_eq!(served(None), fallback);
    }

    #[test]
    fn broken_secrets_are_reported_not_loaded() {
        let (mut bad, _) = secret("default", "bad", &["a.example"]);
        bad["data"]["tls.key"] = json!("bm90IGEga2V5");
        let (mut mismatched, _) = secret("default", "mismatched", &["a.example"]);
        let (other, _) = secret("default", "other", &["b.example"]);
        mismatched["data"]["tls.key"] = other["data"]["tls.key"].clone();
        let secrets: BTreeMap<String, Option<Value>> = [
            ("default/bad".to_string(), Some(bad)),
            ("default/mismatched".to_string(), Some(mismatched)),
        ]
        .into();
        let ing = ingress(json!([
            {"hosts": ["a.example"], "secretName": "bad"},
            {"hosts": ["a.example"], "secretName": "mismatched"},
        ]));
        let mut warnings = Vec::new();
        let set = CertSet::build(&[&ing], &secrets, &mut warnings);
        assert_eq!(set.secrets, 0);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(
            wanted_secrets(&[&ing]).into_iter().collect::<Vec<_>>(),
            ["default/bad", "default/mismatched"]
        );
    }
}
