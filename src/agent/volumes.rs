//! Pod volumes on the node: each volume becomes a host directory (or file) that runtimes
//! bind-mount at the containers' mountPaths. ConfigMap, Secret, Downward API and projected
//! volumes are rewritten on every pod sync, so changes to their sources reach running
//! containers (each file is replaced atomically by rename).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use super::env::{ConfigError, NodeResources, ObjectSource, field_value, resource_value};
use super::runtime::Mount;
use crate::json_path::JsonPath;

/// Where the kubelet mounts a pod's service account credentials.
pub const SERVICE_ACCOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Issues service account tokens for projected volumes.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync {
    async fn token(
        &self,
        pod: &Value,
        audiences: &[String],
        expiration_seconds: i64,
    ) -> Result<String, String>;
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

/// What the volumes need from the node.
pub struct VolumeContext<'a> {
    pub pod_dir: &'a Path,
    pub objects: &'a dyn ObjectSource,
    pub tokens: &'a dyn TokenSource,
    pub node: &'a NodeResources,
    /// The cluster CA (ca.crt in service account volumes).
    pub ca_pem: &'a str,
}

/// Writes `files` into `dir` (creating it), replacing each atomically and removing files
/// that are no longer listed.
fn write_files(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> Result<(), ConfigError> {
    let io =
        |e: std::io::Error| ConfigError(format!("writing volume files in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    for (relative, (content, mode)) in files {
        if relative
            .split('/')
            .any(|part| part == ".." || part.is_empty())
        {
            return Err(ConfigError(format!("invalid volume path {relative:?}")));
        }
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if std::fs::read(&path).is_ok_and(|current| &current == content) {
            continue;
        }
        let temp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        std::fs::write(&temp, content).map_err(io)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(*mode)).map_err(io)?;
        std::fs::rename(&temp, &path).map_err(io)?;
    }
    // Keys removed from the source disappear from the volume.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let listed = files
                .keys()
                .any(|k| k == &name || k.starts_with(&format!("{name}/")));
            if !listed && entry.path().is_file() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

fn decoded_entries(object: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    for field in ["data", "binaryData"] {
        for (k, v) in object
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let raw = v.as_str().unwrap_or("");
            let bytes = if secret || field == "binaryData" {
                b64.decode(raw).unwrap_or_default()
            } else {
                raw.as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
    }
    out
}

/// Files of a configMap/secret source with `items` (key -> path, mode) and `defaultMode`.
fn project_keys(
    entries: BTreeMap<String, Vec<u8>>,
    source: &Value,
    default_mode: u32,
    what: &str,
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), ConfigError> {
    match source.get("items").and_then(Value::as_array) {
        Some(items) => {
            for item in items {
                let key = text(item, "/key");
                let path = text(item, "/path");
                let mode = item
                    .get("mode")
                    .and_then(Value::as_u64)
                    .map(|m| m as u32)
                    .unwrap_or(default_mode);
                let content = entries
                    .get(key)
                    .ok_or_else(|| ConfigError(format!("couldn't find key {key} in {what}")))?;
                files.insert(path.to_string(), (content.clone(), mode));
            }
        }
        None => {
            for (k, v) in entries {
                files.insert(k, (v, default_mode));
            }
        }
    }
    Ok(())
}

fn downward_files(
    pod: &Value,
    items: &[Value],
    default_mode: u32,
    node: &NodeResources,
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), ConfigError> {
    for item in items {
        let path = text(item, "/path").to_string();
        let mode = item
            .get("mode")
            .and_then(Value::as_u64)
            .map(|m| m as u32)
            .unwrap_or(default_mode);
        let value = if let Some(field) = item.get("fieldRef") {
            field_value(pod, text(field, "/fieldPath"))?
        } else if let Some(resource) = item.get("resourceFieldRef") {
            let name = text(resource, "/containerName");
            let container = ["containers", "initContainers"]
                .iter()
                .flat_map(|l| {
                    pod.at(&format!("/spec/{l}"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .find(|c| text(c, "/name") == name)
                .cloned()
                .ok_or_else(|| {
                    ConfigError(format!("no container {name:?} for resourceFieldRef"))
                })?;
            let divisor = match resource.get("divisor") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            resource_value(
                &container,
                text(resource, "/resource"),
                divisor.as_deref(),
                node,
            )?
        } else {
            continue;
        };
        files.insert(path, (value.into_bytes(), mode));
    }
    Ok(())
}

/// Prepares every volume of `pod`; returns each volume's host path by name.
pub async fn prepare(
    pod: &Value,
    context: &VolumeContext<'_>,
) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let namespace = text(pod, "/metadata/namespace");
    let root = context.pod_dir.join("volumes");
    let mut out = BTreeMap::new();
    let io = |e: std::io::Error| ConfigError(format!("preparing volumes: {e}"));
    for volume in pod
        .at("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = text(volume, "/name").to_string();
        let dir = root.join(&name);
        let mode_of = |v: &Value| {
            v.get("defaultMode")
                .and_then(Value::as_u64)
                .map(|m| m as u32)
                .unwrap_or(0o644)
        };
        if volume.get("emptyDir").is_some() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
        } else if let Some(host) = volume.get("hostPath") {
            let path = PathBuf::from(text(host, "/path"));
            match text(host, "/type") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io)?,
                "FileOrCreate" if !path.exists() => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::write(&path, b"").map_err(io)?;
                }
                "Directory" if !path.is_dir() => {
                    return Err(ConfigError(format!(
                        "hostPath {} is not a directory",
                        path.display()
                    )));
                }
                "File" if !path.is_file() => {
                    return Err(ConfigError(format!(
                        "hostPath {} is not a file",
                        path.display()
                    )));
                }
                _ => {}
            }
            out.insert(name, path);
            continue;
        } else if let Some(source) = volume.get("configMap").or_else(|| volume.get("secret")) {
            let secret = volume.get("secret").is_some();
            let (resource, object_name) = if secret {
                ("secrets", text(source, "/secretName"))
            } else {
                ("configmaps", text(source, "/name"))
            };
            let optional = source
                .get("optional")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let kind = if secret { "secret" } else { "configmap" };
            let mut files = BTreeMap::new();
            match context
                .objects
                .get(resource, namespace, object_name)
                .await
                .map_err(ConfigError)?
            {
                Some(object) => project_keys(
                    decoded_entries(&object, secret),
                    source,
                    mode_of(source),
                    &format!("{kind} {namespace}/{object_name}"),
                    &mut files,
                )?,
                None if optional => {}
                None => return Err(ConfigError(format!("{kind} \"{object_name}\" not found"))),
            }
            write_files(&dir, &files)?;
        } else if let Some(source) = volume.get("downwardAPI") {
            let mut files = BTreeMap::new();
            let items: Vec<Value> = source
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            downward_files(pod, &items, mode_of(source), context.node, &mut files)?;
            write_files(&dir, &files)?;
        } else if let Some(projected) = volume.get("projected") {
            let mut files = BTreeMap::new();
            let default_mode = mode_of(projected);
            for source in projected
                .get("sources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(sa) = source.get("serviceAccountToken") {
                    let audiences: Vec<String> = sa
                        .get("audience")
                        .and_then(Value::as_str)
                        .map(|a| vec![a.to_string()])
                        .unwrap_or_default();
                    let expiration = sa
                        .get("expirationSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(3607);
                    let token = context
                        .tokens
                        .token(pod, &audiences, expiration)
                        .await
                        .map_err(ConfigError)?;
                    let path = match text(sa, "/path") {
                        "" => "token",
                        p => p,
                    };
                    files.insert(path.to_string(), (token.into_bytes(), default_mode));
                } else if let Some(s) = source.get("configMap").or_else(|| source.get("secret")) {
                    let secret = source.get("secret").is_some();
                    let resource = if secret { "secrets" } else { "configmaps" };
                    let object_name = text(s, "/name");
                    let optional = s.get("optional").and_then(Value::as_bool).unwrap_or(false);
                    let kind = if secret { "secret" } else { "configmap" };
                    // kube-root-ca.crt may not exist yet; the kubelet then retries.
                    match context
                        .objects
                        .get(resource, namespace, object_name)
                        .await
                        .map_err(ConfigError)?
                    {
                        Some(object) => project_keys(
                            decoded_entries(&object, secret),
                            s,
                            default_mode,
                            &format!("{kind} {namespace}/{object_name}"),
                            &mut files,
                        )?,
                        None if optional => {}
                        None => {
                            return Err(ConfigError(format!("{kind} \"{object_name}\" not found")));
                        }
                    }
                } else if let Some(d) = source.get("downwardAPI") {
                    let items: Vec<Value> = d
                        .get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    downward_files(pod, &items, default_mode, context.node, &mut files)?;
                }
            }
            write_files(&dir, &files)?;
        } else if let Some(claim) = volume.get("persistentVolumeClaim") {
            out.insert(
                name,
                claim_path(namespace, text(claim, "/claimName"), context).await?,
            );
            continue;
        } else {
            return Err(ConfigError(format!(
                "volume {name:?} has a type this node does not support"
            )));
        }
        out.insert(name, dir);
    }
    if automount(pod) {
        let mut files = BTreeMap::new();
        let token = context
            .tokens
            .token(pod, &[], 3607)
            .await
            .map_err(ConfigError)?;
        files.insert("token".to_string(), (token.into_bytes(), 0o644));
        files.insert(
            "ca.crt".to_string(),
            (context.ca_pem.as_bytes().to_vec(), 0o644),
        );
        files.insert(
            "namespace".to_string(),
            (namespace.as_bytes().to_vec(), 0o644),
        );
        let dir = root.join("kube-api-access");
        write_files(&dir, &files)?;
        out.insert("kube-api-access".into(), dir);
    }
    Ok(out)
}

/// Whether the node mounts the service account credentials itself: the pod (or its account)
/// did not opt out and no volume already sits at the standard path.
fn automount(pod: &Value) -> bool {
    if pod
        .at("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        == Some(false)
    {
        return false;
    }
    let mounted = ["containers", "initContainers"].iter().any(|list| {
        pod.at(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c.get("volumeMounts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .any(|m| text(m, "/mountPath").trim_end_matches('/') == SERVICE_ACCOUNT_PATH)
    });
    !mounted
}

/// The host directory behind a bound PVC: its PV's hostPath or local path.
async fn claim_path(
    namespace: &str,
    claim: &str,
    context: &VolumeContext<'_>,
) -> Result<PathBuf, ConfigError> {
    let pvc = context
        .objects
        .get("persistentvolumeclaims", namespace, claim)
        .await
        .map_err(ConfigError)?
        .ok_or_else(|| ConfigError(format!("persistentvolumeclaim \"{claim}\" not found")))?;
    let volume_name = text(&pvc, "/spec/volumeName");
    if volume_name.is_empty() {
        return Err(ConfigError(format!(
            "persistentvolumeclaim \"{claim}\" is not bound"
        )));
    }
    let pv = context
        .objects
        .get("persistentvolumes", "", volume_name)
        .await
        .map_err(ConfigError)?
        .ok_or_else(|| ConfigError(format!("persistentvolume \"{volume_name}\" not found")))?;
    let path = [
        text(&pv, "/spec/hostPath/path"),
        text(&pv, "/spec/local/path"),
    ]
    .into_iter()
    .find(|p| !p.is_empty())
    .ok_or_else(|| {
        ConfigError(format!(
            "persistentvolume \"{volume_name}\" is neither hostPath nor local"
        ))
    })?;
    std::fs::create_dir_all(path).map_err(|e| ConfigError(format!("creating {path}: {e}")))?;
    Ok(PathBuf::from(path))
}

/// The bind mounts of `container`, from its volumeMounts (subPath honoured).
pub fn mounts(
    pod: &Value,
    container: &Value,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Mount>, ConfigError> {
    let mut out = Vec::new();
    for mount in container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = text(mount, "/name");
        let base = volumes
            .get(name)
            .ok_or_else(|| ConfigError(format!("volume {name:?} is not defined or not ready")))?;
        let sub = text(mount, "/subPath");
        if sub.split('/').any(|p| p == "..") {
            return Err(ConfigError(format!("subPath {sub:?} may not contain '..'")));
        }
        let host_path = if sub.is_empty() {
            base.clone()
        } else {
            base.join(sub)
        };
        if !sub.is_empty() && !host_path.exists() {
            std::fs::create_dir_all(&host_path)
                .map_err(|e| ConfigError(format!("creating subPath: {e}")))?;
        }
        out.push(Mount {
            host_path,
            container_path: text(mount, "/mountPath").to_string(),
            read_only: mount
                .get("readOnly")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        });
    }
    if let Some(dir) = volumes.get("kube-api-access")
        && automount(pod)
    {
        out.push(Mount {
            host_path: dir.clone(),
            container_path: SERVICE_ACCOUNT_PATH.into(),
            read_only: true,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn files_are_replaced_and_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = BTreeMap::new();
        files.insert("a".to_string(), (b"one".to_vec(), 0o644));
        files.insert("b".to_string(), (b"two".to_vec(), 0o600));
        write_files(dir.path(), &files).expect("write");
        assert_eq!(std::fs::read(dir.path().join("a")).expect("a"), b"one");
        files.remove("b");
        files.insert("a".to_string(), (b"uno".to_vec(), 0o644));
        write_files(dir.path(), &files).expect("rewrite");
        assert_eq!(std::fs::read(dir.path().join("a")).expect("a"), b"uno");
        assert!(!dir.path().join("b").exists());
        let mut bad = BTreeMap::new();
        bad.insert("../escape".to_string(), (Vec::new(), 0o644));
        assert!(write_files(dir.path(), &bad).is_err());
    }

    #[test]
    fn items_map_keys_to_paths() {
        let mut entries = BTreeMap::new();
        entries.insert("game.properties".to_string(), b"lives=3".to_vec());
        entries.insert("ui.properties".to_string(), b"color=red".to_vec());
        let source = json!({"items": [{"key": "game.properties", "path": "game"}]});
        let mut files = BTreeMap::new();
        project_keys(entries, &source, 0o644, "configmap x", &mut files).expect("project");
        assert_eq!(files.keys().collect::<Vec<_>>(), vec!["game"]);
    }
}
