//! Writing kubeconfig files (DATA/admin.kubeconfig, ./skiff.kubeconfig) the way kubectl reads
//! them: one cluster, one user with an embedded client certificate, one context.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

#[derive(Serialize)]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    clusters: Vec<Named<ClusterEntry>>,
    users: Vec<Named<UserEntry>>,
    contexts: Vec<Named<ContextEntry>>,
    #[serde(rename = "current-context")]
    current_context: &'a str,
}

#[derive(Serialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    value: T,
}

#[derive(Serialize)]
struct ClusterEntry {
    cluster: ClusterSpec,
}
#[derive(Serialize)]
struct ClusterSpec {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    ca_data: String,
}
#[derive(Serialize)]
struct UserEntry {
    user: UserSpec,
}
#[derive(Serialize)]
struct UserSpec {
    #[serde(rename = "client-certificate-data")]
    cert_data: String,
    #[serde(rename = "client-key-data")]
    key_data: String,
}
#[derive(Serialize)]
struct ContextEntry {
    context: ContextSpec,
}
#[derive(Serialize)]
struct ContextSpec {
    cluster: String,
    user: String,
}

/// Renders a kubeconfig for `server` (https://host:port) with an embedded CA and client cert.
pub fn render(name: &str, server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let config = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: name.into(),
            value: ClusterEntry {
                cluster: ClusterSpec {
                    server: server.into(),
                    ca_data: STANDARD.encode(ca_pem),
                },
            },
        }],
        users: vec![Named {
            name: format!("{name}-admin"),
            value: UserEntry {
                user: UserSpec {
                    cert_data: STANDARD.encode(cert_pem),
                    key_data: STANDARD.encode(key_pem),
                },
            },
        }],
        contexts: vec![Named {
            name: name.into(),
            value: ContextEntry {
                context: ContextSpec {
                    cluster: name.into(),
                    user: format!("{name}-admin"),
                },
            },
        }],
        current_context: name,
    };
    serde_yaml_ng::to_string(&config).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_kubectl_shape() {
        let yaml = super::render("skiff", "https://127.0.0.1:6443", "CA", "CERT", "KEY");
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("yaml");
        assert_eq!(value["current-context"], "skiff");
        assert_eq!(
            value["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            value["users"][0]["user"]["client-certificate-data"],
            "Q0VSVA=="
        );
    }
}
