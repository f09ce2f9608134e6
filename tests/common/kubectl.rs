//! The real kubectl driven against a test cluster: its own cache dir, the admin kubeconfig,
//! optionally a chosen member as server; `ok` / `fails` assert the exit status.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::Cluster;

pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache: tempfile::TempDir,
    pub server: Option<String>,
    /// Run kubectl inside this network namespace (where the members are).
    pub netns: Option<String>,
}

impl Kubectl {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = super::command_in(self.netns.as_deref(), "kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .arg("--request-timeout=20s");
        if let Some(server) = &self.server {
            cmd.arg("--server").arg(server);
        }
        cmd.args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kubectl")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "kubectl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn apply(&self, manifest: &str) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("manifest.yaml");
        std::fs::write(&file, manifest).expect("write manifest");
        self.ok(&["apply", "-f", file.to_str().expect("path")])
    }
}

/// kubectl with the cluster's admin kubeconfig, talking to member `node` (default: the first).
pub fn kubectl(cluster: &Cluster, node: Option<usize>) -> Kubectl {
    Kubectl {
        kubeconfig: cluster.nodes[0].data.join("admin.kubeconfig"),
        cache: tempfile::tempdir().expect("cache dir"),
        server: node.map(|i| format!("https://{}", cluster.nodes[i].api())),
        netns: cluster.netns.clone(),
    }
}
