//! A private containerd for one node: its config (own root, state, sockets, runc root, CNI
//! config and IPAM store) and its launch, inside the node's network namespace when given.
//!
//! What these machines need (design.md "Nodes, containers and networking"): the CRI plugin with
//! `restrict_oom_score_adj` (the VM refuses negative oom_score_adj), `disable_apparmor`,
//! network namespaces under the state dir, a locally imported pause image; and containerd
//! started with `nsenter --net=` rather than `ip netns exec` (which remounts /sys and hides the
//! cgroup v1 hierarchy from containerd).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::json;

use super::ContainerdOptions;
use crate::agent::runtime::RuntimeError;

/// The pause image every sandbox runs (built and imported by images/build.sh).
pub const PAUSE_IMAGE: &str = "docker.io/skiff/pause:3.9";
/// Where Debian's containernetworking-plugins installs the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

fn io(context: &str) -> impl Fn(std::io::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Runtime(format!("{context}: {e}"))
}

/// containerd's config.toml for a node whose files live under `state`.
pub fn config_toml(state: &Path) -> String {
    let p = |sub: &str| state.join(sub).to_string_lossy().into_owned();
    format!(
        r#"version = 2
root = "{root}"
state = "{state_dir}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
        root = p("root"),
        state_dir = p("state"),
        socket = p("containerd.sock"),
        opt = p("opt"),
        pause = PAUSE_IMAGE,
        runc = p("runc"),
        cni_bin = CNI_BIN_DIR,
        cni_conf = p("cni/conf"),
    )
}

/// The node's CNI network: a bridge with host-local addresses from the pod CIDR.
pub fn cni_conflist(network: &str, pod_cidr: &str, ipam_dir: &Path) -> String {
    json!({
        "cniVersion": "0.4.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "skiff0",
                "isGateway": true,
                "hairpinMode": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir.to_string_lossy(),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"},
        ],
    })
    .to_string()
}

/// Writes the config and CNI files and starts containerd; returns its socket.
pub fn launch(options: &ContainerdOptions) -> Result<(PathBuf, Child), RuntimeError> {
    let state = &options.state_dir;
    for sub in ["root", "state", "opt", "runc", "cni/conf", "cni/ipam"] {
        std::fs::create_dir_all(state.join(sub))
            .map_err(io("creating containerd's directories"))?;
    }
    let config = state.join("config.toml");
    std::fs::write(&config, config_toml(state)).map_err(io("writing containerd's config"))?;
    let cidr = options.pod_cidr.as_deref().ok_or_else(|| {
        RuntimeError::Runtime(
            "the node has no pod CIDR (the control plane assigns one at registration)".into(),
        )
    })?;
    let network = format!(
        "skiff-{}",
        options.cgroup_parent.trim_start_matches("skiff-")
    );
    std::fs::write(
        state.join("cni/conf/10-skiff.conflist"),
        cni_conflist(&network, cidr, &state.join("cni/ipam")),
    )
    .map_err(io("writing the CNI config"))?;
    let socket = state.join("containerd.sock");
    let _ = std::fs::remove_file(&socket);
    let log = std::fs::File::create(state.join("containerd.log"))
        .map_err(io("creating containerd's log"))?;
    let mut command = match &options.netns {
        Some(netns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", netns.display()))
                .arg("--")
                .arg("containerd");
            c
        }
        None => Command::new("containerd"),
    };
    command
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            log.try_clone().map_err(io("containerd's log"))?,
        ))
        .stderr(Stdio::from(log))
        .process_group(0);
    let child = command
        .spawn()
        .map_err(|e| RuntimeError::Runtime(format!("cannot start containerd (apt-get install containerd runc containernetworking-plugins): {e}")))?;
    tracing::info!(socket = %socket.display(), netns = ?options.netns, "started a private containerd");
    Ok((socket, child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_points_everything_at_the_node_dir() {
        let text = config_toml(Path::new("/var/lib/skiff/n1"));
        assert!(text.contains(r#"address = "/var/lib/skiff/n1/containerd.sock""#));
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert!(text.contains(r#"conf_dir = "/var/lib/skiff/n1/cni/conf""#));
        let cni: serde_json::Value =
            serde_json::from_str(&cni_conflist("skiff-n1", "10.42.1.0/24", Path::new("/x")))
                .expect("json");
        assert_eq!(
            cni["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.1.0/24"
        );
    }
}
