//! Image names and local images. No registry is reachable from these machines, so images are
//! built by images/build.sh and imported here with `ctr` into CRI's `k8s.io` namespace.

use std::path::{Path, PathBuf};

use tracing::info;

use crate::agent::runtime::RuntimeError;

/// The containerd namespace CRI keeps its images and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Kubernetes' (docker's) image name normalization: `busybox` is
/// `docker.io/library/busybox:latest`, `skiff/echo` is `docker.io/skiff/echo:latest`.
pub fn normalize_image(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    let tagged = last.contains(':') || image.contains('@');
    let first = image.split('/').next().unwrap_or("");
    let has_registry =
        image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_registry {
        image.to_string()
    } else if image.contains('/') {
        format!("docker.io/{image}")
    } else {
        format!("docker.io/library/{image}")
    };
    if !tagged {
        full.push_str(":latest");
    }
    full
}

/// The image tarballs (`*.tar`) of a directory, in name order.
fn tarballs(dir: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        RuntimeError::Runtime(format!("reading images from {}: {e}", dir.display()))
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    found.sort();
    Ok(found)
}

/// Imports `source` (one tarball, or every `*.tar` of a directory) into the containerd on
/// `socket`, in CRI's namespace so pods can use the images.
pub async fn import_images(socket: &Path, source: &Path) -> Result<(), RuntimeError> {
    let files = if source.is_dir() {
        tarballs(source)?
    } else {
        vec![source.to_path_buf()]
    };
    for tarball in files {
        let output = tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["--namespace", CRI_NAMESPACE, "images", "import"])
            .arg(&tarball)
            .output()
            .await
            .map_err(|e| RuntimeError::Runtime(format!("running ctr: {e}")))?;
        if !output.status.success() {
            return Err(RuntimeError::Runtime(format!(
                "importing {}: {}",
                tarball.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        info!(image = %tarball.display(), "imported");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_normalize_like_kubernetes() {
        for (short, full) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.35", "docker.io/library/busybox:1.35"),
            ("skiff/echo", "docker.io/skiff/echo:latest"),
            ("skiff/pause:3.9", "docker.io/skiff/pause:3.9"),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
            ),
            ("busybox@sha256:abc", "docker.io/library/busybox@sha256:abc"),
        ] {
            assert_eq!(normalize_image(short), full, "{short}");
        }
    }
}
