//! Static pods, as the kubelet's `--pod-manifest-path`: every Pod manifest (YAML or JSON, one
//! pod per file) in a directory runs on this node under the name `<name>-<node>`, shown in the
//! API as a mirror pod (annotated `kubernetes.io/config.mirror`, owned by the Node). The
//! directory is read at start and every few seconds: a new file starts its pod, a changed one
//! replaces it, a removed one stops it, and a mirror deleted through the API comes back.
//!
//! The mirror is the pod the agent runs: it arrives through the node's pod watch like any pod
//! bound here (the control plane makes it; NodeRestriction lets a node create only mirrors of
//! its own). So a static pod starts once a control-plane member answers — unlike the kubelet,
//! which runs static pods with no API server at all (skiff's control plane needs none of them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::control_plane::ControlPlane;
use crate::apiserver::objects::str_at;
use crate::json_path::JsonPath;
use crate::nodeapi::mirror_pods::MIRROR_ANNOTATION;

/// How often the directory is read again (the kubelet's fileCheckFrequency is 20 s).
const SCAN_EVERY: Duration = Duration::from_secs(5);
const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";

/// One static pod as this agent last made it.
#[derive(Clone, Debug, PartialEq)]
struct Running {
    namespace: String,
    name: String,
    uid: String,
    hash: String,
}

#[derive(Debug, thiserror::Error)]
enum ManifestError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a Pod manifest: {reason}")]
    NotAPod { path: String, reason: String },
}

/// A manifest read: the mirror pod it stands for and its content hash, or why not.
type Manifest = Result<(Value, String), ManifestError>;

/// The mirror pod a manifest stands for on `node`, with its content hash.
fn mirror_of(path: &Path, bytes: &[u8], node: &str) -> Manifest {
    let not_a_pod = |reason: String| ManifestError::NotAPod {
        path: path.display().to_string(),
        reason,
    };
    let mut pod: Value = serde_yaml_ng::from_slice(bytes).map_err(|e| not_a_pod(e.to_string()))?;
    if pod.get("kind").and_then(Value::as_str) != Some("Pod") {
        return Err(not_a_pod("kind must be Pod".into()));
    }
    let name = pod
        .at("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| not_a_pod("metadata.name is required".into()))?
        .to_string();
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    hasher.update(node.as_bytes());
    let hash = hex::encode(&hasher.finalize()[..16]);
    let meta = &mut pod["metadata"];
    meta["name"] = json!(format!("{name}-{node}"));
    if meta
        .get("namespace")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        meta["namespace"] = json!("default");
    }
    for field in ["uid", "resourceVersion", "creationTimestamp"] {
        if let Some(m) = meta.as_object_mut() {
            m.remove(field);
        }
    }
    meta["annotations"][MIRROR_ANNOTATION] = json!(hash);
    meta["annotations"][HASH_ANNOTATION] = json!(hash);
    meta["annotations"][SOURCE_ANNOTATION] = json!("file");
    pod["spec"]["nodeName"] = json!(node);
    Ok((pod, hash))
}

/// The manifests of `dir` (hidden files skipped), each as its mirror pod and hash.
fn read_dir(dir: &Path, node: &str) -> Vec<(PathBuf, Manifest)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let parsed = std::fs::read(&path)
                .map_err(|source| ManifestError::Read {
                    path: path.display().to_string(),
                    source,
                })
                .and_then(|bytes| mirror_of(&path, &bytes, node));
            (path, parsed)
        })
        .collect()
}

/// Keeps the mirrors of `dir`'s manifests in the API until the task is dropped.
pub async fn run(control: Arc<ControlPlane>, node: String, dir: PathBuf) {
    info!(dir = %dir.display(), "static pods from manifests");
    let mut running: HashMap<PathBuf, Running> = HashMap::new();
    let mut reported: HashMap<PathBuf, String> = HashMap::new();
    loop {
        let mut seen = Vec::new();
        for (path, parsed) in read_dir(&dir, &node) {
            seen.push(path.clone());
            let (pod, hash) = match parsed {
                Ok(parsed) => parsed,
                Err(e) => {
                    // Said once per distinct problem, not every scan.
                    let message = e.to_string();
                    if reported.get(&path) != Some(&message) {
                        warn!(error = %message, "static pod manifest skipped");
                        reported.insert(path, message);
                    }
                    continue;
                }
            };
            reported.remove(&path);
            if let Some(current) = running.get(&path)
                && current.hash == hash
                && mirror_alive(&control, current).await
            {
                continue;
            }
            match control.create_mirror_pod(&pod).await {
                Ok(mirror) => {
                    let started = Running {
                        namespace: str_at(&mirror, "/metadata/namespace").into(),
                        name: str_at(&mirror, "/metadata/name").into(),
                        uid: str_at(&mirror, "/metadata/uid").into(),
                        hash,
                    };
                    if running.get(&path) != Some(&started) {
                        info!(pod = %started.name, namespace = %started.namespace, "static pod mirrored");
                    }
                    running.insert(path, started);
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "mirror pod not created; retrying")
                }
            }
        }
        let removed: Vec<PathBuf> = running
            .keys()
            .filter(|p| !seen.contains(p))
            .cloned()
            .collect();
        for path in removed {
            let Some(gone) = running.get(&path) else {
                continue;
            };
            let pod = json!({"metadata": {"namespace": gone.namespace, "name": gone.name, "uid": gone.uid}});
            match control.delete_pod(&pod).await {
                Ok(()) => {
                    info!(pod = %gone.name, "static pod manifest removed; pod deleted");
                    running.remove(&path);
                }
                Err(e) => {
                    warn!(pod = %gone.name, error = %e, "deleting a static pod failed; retrying")
                }
            }
        }
        tokio::time::sleep(SCAN_EVERY).await;
    }
}

/// Whether the mirror this agent made is still in the API (a user may delete it).
async fn mirror_alive(control: &ControlPlane, mirror: &Running) -> bool {
    match control.get("pods", &mirror.namespace, &mirror.name).await {
        Ok(Some(pod)) => {
            str_at(&pod, "/metadata/uid") == mirror.uid
                && pod.at("/metadata/deletionTimestamp").is_none()
        }
        Ok(None) => false,
        // Unreachable control plane: assume it is there; the next scan asks again.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_mirrors_named_for_the_node() {
        let yaml = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
        let (pod, hash) = mirror_of(Path::new("web.yaml"), yaml, "node-a").expect("pod");
        assert_eq!(pod["metadata"]["name"], "web-node-a");
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert_eq!(pod["spec"]["nodeName"], "node-a");
        assert_eq!(pod["metadata"]["annotations"][MIRROR_ANNOTATION], hash);
        let (_, other) = mirror_of(Path::new("web.yaml"), yaml, "node-b").expect("pod");
        assert_ne!(hash, other, "the hash is per node");
        let changed = [yaml.as_slice(), b"  restartPolicy: Never\n"].concat();
        let (_, changed_hash) = mirror_of(Path::new("web.yaml"), &changed, "node-a").expect("pod");
        assert_ne!(hash, changed_hash);
    }

    #[test]
    fn other_kinds_and_nameless_pods_are_refused() {
        let svc = b"apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n";
        assert!(mirror_of(Path::new("s.yaml"), svc, "n").is_err());
        let nameless = b"{\"kind\": \"Pod\", \"metadata\": {}}";
        assert!(mirror_of(Path::new("p.json"), nameless, "n").is_err());
        assert!(mirror_of(Path::new("x"), b": : :", "n").is_err());
    }
}
