//! `skiff restore --from FILE --only namespace=NAME`: brings one namespace back from a backup
//! into a running cluster, as ordinary creates through its Kubernetes API (admission,
//! validation and RBAC apply), without touching anything else — neither etcd nor k3s can.
//!
//! What is restored is what a user wrote: objects that a controller owns (ReplicaSets of a
//! Deployment, its Pods, Jobs of a CronJob...) are left for those controllers to recreate from
//! their restored owners, as are objects controllers maintain themselves (Events, EndpointSlices,
//! the Endpoints of selector Services, the `default` ServiceAccount, `kube-root-ca.crt`).
//! Server-assigned fields (uid, resourceVersion, cluster IPs) are assigned anew.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use hyper::Method;
use serde_json::{Value, json};
use skiff_storage::scan_snapshot_kvs;

use crate::apiclient::ApiClient;
use crate::json_path::JsonPath;
use crate::pki::CertKey;
use crate::pki::at_rest::{AtRestKeys, open_with};

/// Credentials and address of the running cluster's API.
pub struct Target {
    pub server: String,
    pub ca_pem: String,
    pub client: CertKey,
}

impl Target {
    /// From a kubeconfig with embedded certificate data (as skiff writes them).
    pub fn from_kubeconfig(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Value = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is not YAML", path.display()))?;
        let field = |pointer: &str| -> anyhow::Result<String> {
            let encoded = config
                .at(pointer)
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("{} has no {pointer}", path.display()))?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(encoded)?;
            Ok(String::from_utf8(bytes)?)
        };
        let server = config
            .at("/clusters/0/cluster/server")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{} has no server", path.display()))?;
        Ok(Target {
            server: server
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_string(),
            ca_pem: field("/clusters/0/cluster/certificate-authority-data")?,
            client: CertKey {
                cert_pem: field("/users/0/user/client-certificate-data")?,
                key_pem: field("/users/0/user/client-key-data")?,
            },
        })
    }
}

/// One object to recreate and where to POST it.
struct Planned {
    path: String,
    object: Value,
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.at(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Objects a controller writes; recreated by that controller, so never restored.
fn controller_maintained(object: &Value, selector_services: &[String]) -> bool {
    let owned = object
        .at("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("controller") == Some(&json!(true)))
        });
    let kind = text(object, "/kind");
    let name = text(object, "/metadata/name");
    owned
        || matches!(kind, "Event" | "EndpointSlice")
        || (kind == "Endpoints" && selector_services.iter().any(|s| s == name))
        || (kind == "ServiceAccount" && name == "default")
        || (kind == "ConfigMap" && name == "kube-root-ca.crt")
}

/// The object as a fresh create: no server-assigned fields, no status, no references to old
/// uids, no cluster IP (a new one is allocated; headless stays headless).
fn cleaned(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "ownerReferences",
            "selfLink",
        ] {
            meta.remove(field);
        }
    }
    if let Some(obj) = object.as_object_mut() {
        obj.remove("status");
    }
    if text(&object, "/kind") == "Service"
        && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        && spec.get("clusterIP").and_then(Value::as_str) != Some("None")
    {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    object
}

/// `/api/v1/namespaces/NS/RESOURCE` or `/apis/GROUP/VERSION/namespaces/NS/RESOURCE`, the
/// resource taken from the store key (`/registry/[group/]resource/ns/name`).
fn collection_path(key: &str, object: &Value, namespace: &str) -> Option<String> {
    let segments: Vec<&str> = key.trim_start_matches("/registry/").split('/').collect();
    let resource = segments.get(segments.len().checked_sub(3)?)?;
    let api_version = text(object, "/apiVersion");
    Some(if api_version.contains('/') {
        format!("/apis/{api_version}/namespaces/{namespace}/{resource}")
    } else {
        format!("/api/{api_version}/namespaces/{namespace}/{resource}")
    })
}

/// Creation order: what others refer to first (kube's own restore tools order it alike).
fn rank(kind: &str) -> u8 {
    match kind {
        "ServiceAccount" | "Role" | "RoleBinding" | "LimitRange" | "ResourceQuota" => 0,
        "Secret" | "ConfigMap" => 1,
        "PersistentVolumeClaim" => 2,
        "Service" | "Endpoints" => 3,
        _ => 4,
    }
}

/// Reads the backup and plans the creates for `namespace`.
fn plan(
    file: &Path,
    token: Option<&str>,
    skip_hash_check: bool,
    namespace: &str,
) -> anyhow::Result<(Option<Value>, Vec<Planned>)> {
    let opened = super::envelope::open(file, token)
        .with_context(|| format!("opening {}", file.display()))?;
    let keys = opened
        .at_rest_keys
        .as_deref()
        .map(AtRestKeys::parse)
        .transpose()
        .with_context(|| format!("the at-rest keys in {}", file.display()))?;
    let mut input = opened.snapshot;
    let mut namespace_object = None;
    let mut found: Vec<(String, Value)> = Vec::new();
    // A Secret that does not open must stop the restore, not go missing from it.
    let mut sealed_error = None;
    scan_snapshot_kvs(&mut input, !skip_hash_check, &mut |kv| {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        if !key.starts_with("/registry/") {
            return;
        }
        let plain = match open_with(keys.as_ref(), &kv.key, &kv.value) {
            Ok(plain) => plain,
            Err(e) => {
                sealed_error.get_or_insert_with(|| format!("{key}: {e}"));
                return;
            }
        };
        let Ok(object) = serde_json::from_slice::<Value>(&plain) else {
            return;
        };
        if key == format!("/registry/namespaces/{namespace}") {
            namespace_object = Some(object);
        } else if text(&object, "/metadata/namespace") == namespace {
            found.push((key, object));
        }
    })
    .with_context(|| format!("{} is not a valid skiff backup", file.display()))?;
    if let Some(error) = sealed_error {
        bail!(
            "{} holds a Secret that cannot be read: {error}",
            file.display()
        );
    }
    let selector_services: Vec<String> = found
        .iter()
        .filter(|(_, o)| {
            text(o, "/kind") == "Service"
                && o.at("/spec/selector")
                    .is_some_and(|s| s.as_object().is_some_and(|m| !m.is_empty()))
        })
        .map(|(_, o)| text(o, "/metadata/name").to_string())
        .collect();
    let mut planned: Vec<Planned> = found
        .into_iter()
        .filter(|(_, o)| !controller_maintained(o, &selector_services))
        .filter_map(|(key, object)| {
            let path = collection_path(&key, &object, namespace)?;
            Some(Planned {
                path,
                object: cleaned(object),
            })
        })
        .collect();
    planned.sort_by_key(|p| (rank(text(&p.object, "/kind")), p.path.clone()));
    Ok((namespace_object.map(cleaned), planned))
}

/// Restores `namespace` from `file` into the cluster `target` serves.
pub async fn run(
    file: &Path,
    token: Option<&str>,
    skip_hash_check: bool,
    namespace: &str,
    target: &Target,
) -> anyhow::Result<()> {
    let (namespace_object, planned) = plan(file, token, skip_hash_check, namespace)?;
    let Some(namespace_object) = namespace_object else {
        bail!("the backup has no namespace {namespace:?}");
    };
    println!(
        "restoring namespace {namespace}: {} objects (controller-owned ones are recreated by their controllers)",
        planned.len()
    );
    let client = ApiClient::connect(&target.server, &target.ca_pem, &target.client).await?;
    let (status, body) = client
        .call(Method::POST, "/api/v1/namespaces", Some(&namespace_object))
        .await?;
    match status.as_u16() {
        201 => println!("namespace/{namespace} created"),
        409 => {
            let (_, current) = client
                .call(
                    Method::GET,
                    &format!("/api/v1/namespaces/{namespace}"),
                    None,
                )
                .await?;
            let current: Value = serde_json::from_slice(&current)?;
            if current.at("/metadata/deletionTimestamp").is_some() {
                bail!(
                    "namespace {namespace} is being deleted; wait until it is gone and run the restore again"
                );
            }
            println!("namespace/{namespace} exists; adding what is missing");
        }
        _ => bail!(
            "creating namespace {namespace}: {status} {}",
            String::from_utf8_lossy(&body)
        ),
    }
    let mut counts: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let mut failures = 0;
    for item in &planned {
        let kind = text(&item.object, "/kind");
        let name = text(&item.object, "/metadata/name");
        let (status, body) = client
            .call(Method::POST, &item.path, Some(&item.object))
            .await?;
        let entry = counts.entry(kind).or_default();
        match status.as_u16() {
            201 => entry.0 += 1,
            409 => entry.1 += 1,
            _ => {
                failures += 1;
                let message = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|s| s.get("message").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| status.to_string());
                eprintln!("{kind}/{name}: not restored: {message}");
            }
        }
    }
    for (kind, (created, existing)) in &counts {
        println!("{kind:<24} {created:>6} created {existing:>6} already there");
    }
    if failures > 0 {
        bail!("{failures} objects could not be restored (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cleaning_and_what_controllers_own() {
        let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u", "resourceVersion": "9"},
            "status": {"replicas": 3}});
        assert_eq!(
            collection_path("/registry/apps/deployments/shop/web", &deploy, "shop").as_deref(),
            Some("/apis/apps/v1/namespaces/shop/deployments")
        );
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        assert_eq!(
            collection_path("/registry/configmaps/shop/c", &cm, "shop").as_deref(),
            Some("/api/v1/namespaces/shop/configmaps")
        );
        let clean = cleaned(deploy);
        assert!(clean["metadata"].get("uid").is_none() && clean.get("status").is_none());
        let rs = json!({"kind": "ReplicaSet", "metadata": {"name": "web-1", "ownerReferences": [{"controller": true}]}});
        assert!(controller_maintained(&rs, &[]));
        let ep = json!({"kind": "Endpoints", "metadata": {"name": "db"}});
        assert!(
            !controller_maintained(&ep, &[]),
            "a selector-less Service's Endpoints are the user's"
        );
        assert!(controller_maintained(&ep, &["db".to_string()]));
        let svc = cleaned(
            json!({"kind": "Service", "spec": {"clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5"]}}),
        );
        assert!(svc["spec"].get("clusterIP").is_none());
        let headless = cleaned(json!({"kind": "Service", "spec": {"clusterIP": "None"}}));
        assert_eq!(headless["spec"]["clusterIP"], "None");
    }
}
