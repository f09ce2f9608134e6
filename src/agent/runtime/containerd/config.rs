//! What a private containerd for one node is told: its config.toml (own root, state, sockets,
//! opt dir, runc root, CNI dirs) and its CNI network. Pure rendering, so tests can read it.
//!
//! What these machines need (design.md "Nodes, containers and networking"): the CRI plugin with
//! `restrict_oom_score_adj` (the VM refuses negative oom_score_adj), `disable_apparmor`,
//! network namespaces under the state dir (so nothing lands in the host's /run/netns), and a
//! locally imported pause image as the sandbox image (no registry is reachable).

use std::path::{Path, PathBuf};

use serde_json::json;

/// The pause image every sandbox runs (built and imported by images/build.sh).
pub const PAUSE_IMAGE: &str = "docker.io/skiff/pause:3.9";
/// Where Debian's containernetworking-plugins installs the CNI plugins (used when dpkg cannot
/// tell).
pub const DEFAULT_CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The bridge each node's pods attach to. Nodes live in network namespaces of their own, so
/// one name serves every node and stays easy to find with `ip link`.
pub const BRIDGE: &str = "skiff0";

/// The files of one node's containerd, all under its state dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
        }
    }
    fn sub(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn config(&self) -> PathBuf {
        self.sub("config.toml")
    }
    pub fn socket(&self) -> PathBuf {
        self.sub("containerd.sock")
    }
    pub fn log(&self) -> PathBuf {
        self.sub("containerd.log")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.sub("cni/conf")
    }
    pub fn ipam_dir(&self) -> PathBuf {
        self.sub("cni/ipam")
    }
    /// Directories containerd (or the CNI plugins) expect to exist before it starts.
    pub fn dirs(&self) -> Vec<PathBuf> {
        ["root", "state", "opt", "runc", "cni/conf", "cni/ipam"]
            .iter()
            .map(|d| self.sub(d))
            .collect()
    }
}

/// containerd's config.toml (version 2 schema, containerd 1.6) for one node.
pub fn config_toml(layout: &Layout, cni_bin_dir: &Path) -> String {
    let p = |sub: &str| layout.sub(sub).to_string_lossy().into_owned();
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
    max_conf_num = 1
"#,
        root = p("root"),
        state_dir = p("state"),
        socket = layout.socket().to_string_lossy(),
        opt = p("opt"),
        pause = PAUSE_IMAGE,
        runc = p("runc"),
        cni_bin = cni_bin_dir.to_string_lossy(),
        cni_conf = layout.cni_conf_dir().to_string_lossy(),
    )
}

/// The node's CNI network: a bridge (the pods' gateway, hairpin so a pod reaches itself
/// through a Service, no masquerade: pod IPs stay visible across nodes) with host-local
/// addresses from the pod CIDR, then hostPort through portmap. No `loopback` plugin: the CRI
/// plugin already brings `lo` up through a network of its own (go-cni's `cni-loopback`), and a
/// second one costs another plugin exec on every sandbox's setup and teardown.
pub fn cni_conflist(network: &str, pod_cidr: &str, ipam_dir: &Path) -> String {
    json!({
        "cniVersion": "0.4.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
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
        ],
    })
    .to_string()
}

/// The CNI network name of a node: unique per node, since CNI's result cache (outside any
/// configured dir) is keyed by it.
pub fn network_name(cgroup_parent: &str) -> String {
    format!("skiff-{}", cgroup_parent.trim_start_matches("skiff-"))
}

/// Where the CNI plugins are, from `dpkg -L containernetworking-plugins` output: the directory
/// holding the `bridge` plugin.
pub fn cni_bin_dir_from_dpkg(listing: &str) -> Option<PathBuf> {
    listing
        .lines()
        .map(str::trim)
        .filter(|line| line.ends_with("/bridge"))
        .map(Path::new)
        .find_map(|p| p.parent().map(Path::to_path_buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_points_everything_at_the_node_dir() {
        let layout = Layout::new(Path::new("/var/lib/skiff/n1"));
        let text = config_toml(&layout, Path::new("/usr/lib/cni"));
        for expected in [
            r#"root = "/var/lib/skiff/n1/root""#,
            r#"state = "/var/lib/skiff/n1/state""#,
            r#"address = "/var/lib/skiff/n1/containerd.sock""#,
            r#"address = "/var/lib/skiff/n1/containerd.sock.ttrpc""#,
            r#"path = "/var/lib/skiff/n1/opt""#,
            r#"Root = "/var/lib/skiff/n1/runc""#,
            r#"conf_dir = "/var/lib/skiff/n1/cni/conf""#,
            r#"bin_dir = "/usr/lib/cni""#,
            r#"sandbox_image = "docker.io/skiff/pause:3.9""#,
            "restrict_oom_score_adj = true",
            "netns_mounts_under_state_dir = true",
            "disable_apparmor = true",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }

    #[test]
    fn conflist_is_bridge_host_local_then_portmap() {
        let text = cni_conflist(
            &network_name("skiff-n1"),
            "10.42.1.0/24",
            Path::new("/x/ipam"),
        );
        let cni: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(cni["name"], "skiff-n1");
        let bridge = &cni["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["hairpinMode"], true);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.42.1.0/24");
        assert_eq!(bridge["ipam"]["dataDir"], "/x/ipam");
        // containerd's CRI plugin sets up `lo` itself; no loopback plugin here.
        let types: Vec<&str> = cni["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
    }

    #[test]
    fn cni_bin_dir_is_where_dpkg_put_bridge() {
        let listing = "/.\n/usr\n/usr/lib\n/usr/lib/cni\n/usr/lib/cni/bandwidth\n/usr/lib/cni/bridge\n/usr/share/doc\n";
        assert_eq!(
            cni_bin_dir_from_dpkg(listing),
            Some(PathBuf::from("/usr/lib/cni"))
        );
        assert_eq!(cni_bin_dir_from_dpkg("/usr\n"), None);
    }
}
