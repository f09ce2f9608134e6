//! Pod sandboxes as CRI sees them: the `PodSandboxConfig` made from a [`SandboxSpec`], and the
//! same config read back from containerd after an agent restart.
//!
//! CRI's CreateContainer wants the sandbox's config again (containerd takes the log directory,
//! cgroup parent and namespace modes from it). An agent that restarted no longer has it in
//! memory, so it is recovered from PodSandboxStatus's verbose info, where containerd keeps the
//! config it was given. Things skiff needs later that CRI has no field for (the pod's hosts
//! file) travel as sandbox annotations, which survive the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use skiff_proto::cri::{
    DnsConfig, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PortMapping as CriPortMapping, Protocol,
};

use crate::agent::runtime::{PortMapping, SandboxSpec};
use crate::json_path::JsonPath;

/// Label carrying the pod uid on every sandbox, read back by `list_sandboxes` (the kubelet's
/// own label name, so crictl filters work the same).
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
/// Annotation naming the agent-managed hosts file every container of the pod mounts.
pub const HOSTS_FILE_ANNOTATION: &str = "skiff.io/hosts-file";

/// The directory CRI writes this pod's container logs under (`log_directory`).
pub fn log_directory(pod_dir: &Path) -> PathBuf {
    pod_dir.join("logs")
}

/// A resolv.conf as CRI's DNSConfig: containerd writes the sandbox's resolv.conf from it.
pub fn dns_config(resolv_conf: &str) -> DnsConfig {
    let mut dns = DnsConfig::default();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.map(str::to_string)),
            Some("search") => dns.searches.extend(words.map(str::to_string)),
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    dns
}

fn protocol(name: &str) -> Protocol {
    match name.to_ascii_uppercase().as_str() {
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

fn port_mapping(p: &PortMapping) -> CriPortMapping {
    CriPortMapping {
        protocol: protocol(&p.protocol) as i32,
        container_port: i32::from(p.container_port),
        host_port: i32::from(p.host_port),
        host_ip: p.host_ip.clone().unwrap_or_default(),
    }
}

/// The CRI config of a pod's sandbox. `resolv_conf` is the content of the agent's resolv.conf
/// for the pod.
pub fn sandbox_config(
    spec: &SandboxSpec,
    resolv_conf: &str,
    cgroup_parent: &str,
) -> PodSandboxConfig {
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    labels.insert(POD_UID_LABEL.into(), spec.uid.clone());
    labels.insert("io.kubernetes.pod.name".into(), spec.name.clone());
    labels.insert("io.kubernetes.pod.namespace".into(), spec.namespace.clone());
    let annotations = HashMap::from([(
        HOSTS_FILE_ANNOTATION.to_string(),
        spec.hosts_file.to_string_lossy().into_owned(),
    )]);
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: spec.name.clone(),
            uid: spec.uid.clone(),
            namespace: spec.namespace.clone(),
            attempt: 0,
        }),
        // A hostNetwork pod has the node's hostname (the UTS namespace is the node's).
        hostname: if spec.host_network {
            String::new()
        } else {
            spec.hostname.clone()
        },
        log_directory: log_directory(&spec.pod_dir).to_string_lossy().into_owned(),
        dns_config: Some(dns_config(resolv_conf)),
        port_mappings: spec.port_mappings.iter().map(port_mapping).collect(),
        labels,
        annotations,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_string(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: if spec.host_network {
                        NamespaceMode::Node
                    } else {
                        NamespaceMode::Pod
                    } as i32,
                    // Like the kubelet without shareProcessNamespace.
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                }),
            }),
        }),
    }
}

fn string(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn int(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or_default()
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn string_map(v: &Value, key: &str) -> HashMap<String, String> {
    v.get(key)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The sandbox config containerd recorded, from PodSandboxStatus's verbose `info` entry
/// (containerd's Go JSON of the CRI message: snake_case names, enums as numbers).
pub fn config_from_verbose_info(info: &str) -> Option<PodSandboxConfig> {
    let root: Value = serde_json::from_str(info).ok()?;
    let c = root.get("config")?;
    let metadata = c.get("metadata").map(|m| PodSandboxMetadata {
        name: string(m, "name"),
        uid: string(m, "uid"),
        namespace: string(m, "namespace"),
        attempt: int(m, "attempt") as u32,
    });
    let dns_config = c.get("dns_config").map(|d| DnsConfig {
        servers: strings(d, "servers"),
        searches: strings(d, "searches"),
        options: strings(d, "options"),
    });
    let port_mappings = c
        .get("port_mappings")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| CriPortMapping {
                    protocol: int(p, "protocol") as i32,
                    container_port: int(p, "container_port") as i32,
                    host_port: int(p, "host_port") as i32,
                    host_ip: string(p, "host_ip"),
                })
                .collect()
        })
        .unwrap_or_default();
    let linux = c.get("linux").map(|l| {
        let options = l.at("/security_context/namespace_options");
        LinuxPodSandboxConfig {
            cgroup_parent: string(l, "cgroup_parent"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: options.map(|o| NamespaceOption {
                    network: int(o, "network") as i32,
                    pid: int(o, "pid") as i32,
                    ipc: int(o, "ipc") as i32,
                }),
            }),
        }
    });
    Some(PodSandboxConfig {
        metadata,
        hostname: string(c, "hostname"),
        log_directory: string(c, "log_directory"),
        dns_config,
        port_mappings,
        labels: string_map(c, "labels"),
        annotations: string_map(c, "annotations"),
        linux,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(host_network: bool) -> SandboxSpec {
        SandboxSpec {
            uid: "u-1".into(),
            namespace: "default".into(),
            name: "web".into(),
            hostname: "web".into(),
            host_network,
            pod_dir: PathBuf::from("/data/pods/u-1"),
            resolv_conf: PathBuf::from("/data/pods/u-1/resolv.conf"),
            hosts_file: PathBuf::from("/data/pods/u-1/etc-hosts"),
            port_mappings: vec![PortMapping {
                protocol: "UDP".into(),
                container_port: 53,
                host_port: 5353,
                host_ip: None,
            }],
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
        }
    }

    #[test]
    fn resolv_conf_becomes_dns_config() {
        let dns = dns_config(
            "nameserver 10.43.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n# x\n",
        );
        assert_eq!(dns.servers, ["10.43.0.10"]);
        assert_eq!(
            dns.searches,
            ["default.svc.cluster.local", "svc.cluster.local"]
        );
        assert_eq!(dns.options, ["ndots:5"]);
    }

    #[test]
    fn sandbox_config_carries_identity_network_mode_and_logs() {
        let c = sandbox_config(&spec(false), "nameserver 10.43.0.10\n", "skiff-n1");
        assert_eq!(c.hostname, "web");
        assert_eq!(c.log_directory, "/data/pods/u-1/logs");
        assert_eq!(c.labels[POD_UID_LABEL], "u-1");
        assert_eq!(c.labels["app"], "web");
        assert_eq!(
            c.annotations[HOSTS_FILE_ANNOTATION],
            "/data/pods/u-1/etc-hosts"
        );
        assert_eq!(c.port_mappings[0].protocol, Protocol::Udp as i32);
        assert_eq!(c.port_mappings[0].host_port, 5353);
        let linux = c.linux.expect("linux");
        assert_eq!(linux.cgroup_parent, "skiff-n1");
        let ns = linux
            .security_context
            .and_then(|s| s.namespace_options)
            .expect("ns");
        assert_eq!(ns.network, NamespaceMode::Pod as i32);

        let host = sandbox_config(&spec(true), "", "skiff-n1");
        assert_eq!(host.hostname, "");
        let ns = host
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options);
        assert_eq!(ns.map(|n| n.network), Some(NamespaceMode::Node as i32));
    }

    #[test]
    fn config_is_recovered_from_containerd_verbose_info() {
        // The shape containerd 1.6 returns (abridged).
        let info = r#"{"pid":4242,"processStatus":"running","config":{"metadata":{"name":"web","uid":"u-1","namespace":"default"},"hostname":"web","log_directory":"/data/pods/u-1/logs","dns_config":{"servers":["10.43.0.10"],"options":["ndots:5"]},"port_mappings":[{"protocol":1,"container_port":53,"host_port":5353}],"labels":{"io.kubernetes.pod.uid":"u-1"},"annotations":{"skiff.io/hosts-file":"/data/pods/u-1/etc-hosts"},"linux":{"cgroup_parent":"skiff-n1","security_context":{"namespace_options":{"network":2,"pid":1}}}}}"#;
        let c = config_from_verbose_info(info).expect("config");
        assert_eq!(c.metadata.as_ref().map(|m| m.uid.as_str()), Some("u-1"));
        assert_eq!(c.log_directory, "/data/pods/u-1/logs");
        assert_eq!(
            c.annotations[HOSTS_FILE_ANNOTATION],
            "/data/pods/u-1/etc-hosts"
        );
        assert_eq!(c.port_mappings[0].protocol, Protocol::Udp as i32);
        let ns = c
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options);
        assert_eq!(ns.map(|n| (n.network, n.pid, n.ipc)), Some((2, 1, 0)));
        assert!(config_from_verbose_info("{}").is_none());
        assert!(config_from_verbose_info("not json").is_none());
    }
}
