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

/// The kubeconfig kubectl reads by default: the first file of $KUBECONFIG, else ~/.kube/config.
fn user_config_path() -> anyhow::Result<std::path::PathBuf> {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).next())
        .filter(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow::anyhow!("HOME is not set"))?;
    Ok(std::path::PathBuf::from(home).join(".kube/config"))
}

/// Merges the one cluster, user and context of `ours` into `existing` under `name` (replacing
/// entries of those names, keeping everything else); current-context becomes `name` only when
/// none is set, so a user's own choice survives.
pub fn merge(existing: &str, ours: &str, name: &str) -> anyhow::Result<String> {
    use serde_yaml_ng::{Mapping, Value};
    let mut config: Value = if existing.trim().is_empty() {
        Value::Mapping(Mapping::new())
    } else {
        serde_yaml_ng::from_str(existing)
            .map_err(|e| anyhow::anyhow!("the kubeconfig is not YAML: {e}"))?
    };
    let ours: Value = serde_yaml_ng::from_str(ours)?;
    let Value::Mapping(map) = &mut config else {
        anyhow::bail!("the kubeconfig is not a YAML mapping");
    };
    map.entry("apiVersion".into()).or_insert("v1".into());
    map.entry("kind".into()).or_insert("Config".into());
    let user = format!("{name}-admin");
    for (section, key, entry_name) in [
        ("clusters", "cluster", name.to_string()),
        ("users", "user", user.clone()),
        ("contexts", "context", name.to_string()),
    ] {
        let mut body = ours
            .get(section)
            .and_then(|s| s.get(0))
            .and_then(|e| e.get(key))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("skiff's kubeconfig has no {section}"))?;
        if section == "contexts" {
            body["cluster"] = name.into();
            body["user"] = user.clone().into();
        }
        let mut entry = Mapping::new();
        entry.insert("name".into(), entry_name.clone().into());
        entry.insert(key.into(), body);
        let list = map
            .entry(section.into())
            .or_insert(Value::Sequence(Vec::new()));
        if !list.is_sequence() {
            *list = Value::Sequence(Vec::new());
        }
        if let Value::Sequence(items) = list {
            items.retain(|e| e.get("name").and_then(Value::as_str) != Some(entry_name.as_str()));
            items.push(Value::Mapping(entry));
        }
    }
    let current = map
        .get("current-context")
        .and_then(Value::as_str)
        .unwrap_or("");
    if current.is_empty() {
        map.insert("current-context".into(), name.into());
    }
    Ok(serde_yaml_ng::to_string(&config)?)
}

/// `skiff up --merge-kubeconfig`: merges `ours` into the user's kubeconfig; returns its path.
pub fn merge_into_user_config(ours: &[u8], name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = user_config_path()?;
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    let merged = merge(&existing, &String::from_utf8_lossy(ours), name)?;
    crate::pki::write_file(&path, merged.as_bytes(), true)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kubectl_shape() {
        let yaml = render("skiff", "https://127.0.0.1:6443", "CA", "CERT", "KEY");
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

    #[test]
    fn merge_keeps_other_entries_and_the_current_context() {
        let ours = render("skiff-local", "https://127.0.0.1:6443", "CA", "CERT", "KEY");
        let existing = "apiVersion: v1\nkind: Config\ncurrent-context: prod\nclusters:\n- name: prod\n  cluster: {server: https://prod:6443}\ncontexts:\n- name: prod\n  context: {cluster: prod, user: me}\nusers:\n- name: me\n  user: {token: t}\n";
        let merged = merge(existing, &ours, "skiff").expect("merge");
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&merged).expect("yaml");
        assert_eq!(value["current-context"].as_str(), Some("prod"));
        assert_eq!(value["clusters"].as_sequence().map(Vec::len), Some(2));
        assert_eq!(
            value["contexts"][1]["context"]["user"].as_str(),
            Some("skiff-admin")
        );
        assert_eq!(
            value["clusters"][1]["cluster"]["server"].as_str(),
            Some("https://127.0.0.1:6443")
        );
        // Merging again replaces skiff's entries instead of adding more.
        let again = merge(&merged, &ours, "skiff").expect("merge");
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&again).expect("yaml");
        assert_eq!(value["users"].as_sequence().map(Vec::len), Some(2));
        // An empty file gets skiff as its current context.
        let fresh: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&merge("", &ours, "skiff").expect("merge")).expect("yaml");
        assert_eq!(fresh["current-context"].as_str(), Some("skiff"));
    }
}
