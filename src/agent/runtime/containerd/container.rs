//! Containers as CRI sees them: the `ContainerConfig` made from a [`ContainerSpec`], and CRI's
//! container status mapped back to the agent's [`ContainerState`].

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use skiff_proto::cri::{
    self, ContainerConfig, ContainerMetadata, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, Mount as CriMount, PodSandboxConfig,
};

use super::images::normalize_image;
use super::sandbox::HOSTS_FILE_ANNOTATION;
use crate::agent::runtime::{ContainerSpec, ContainerState, Limits, RuntimeError};

/// The CFS period the kubelet uses; quota = millicores × period / 1000.
const CPU_PERIOD_US: i64 = 100_000;
/// The kubelet's smallest quota (1 ms per period): less makes the kernel refuse it.
const MIN_CPU_QUOTA_US: i64 = 1_000;

/// `target` relative to `base` (both absolute), climbing with `..` where needed. CRI joins a
/// container's `log_path` onto the sandbox's `log_directory` (Go's filepath.Join, which
/// cleans `..`), so this puts the log exactly where the agent asked, wherever that is.
pub fn relative_log_path(base: &Path, target: &Path) -> Option<String> {
    if !base.is_absolute() || !target.is_absolute() {
        return None;
    }
    let normal = |p: &Path| -> Option<Vec<std::ffi::OsString>> {
        p.components()
            .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
            .map(|c| match c {
                Component::Normal(s) => Some(s.to_os_string()),
                _ => None,
            })
            .collect()
    };
    let (base, target) = (normal(base)?, normal(target)?);
    let common = base.iter().zip(&target).take_while(|(a, b)| a == b).count();
    if common == target.len() {
        return None;
    }
    let mut relative = PathBuf::new();
    for _ in common..base.len() {
        relative.push("..");
    }
    for part in &target[common..] {
        relative.push(part);
    }
    Some(relative.to_string_lossy().into_owned())
}

/// cgroup limits as CRI resources (zero means "no limit" to CRI).
pub fn resources(limits: &Limits) -> LinuxContainerResources {
    let (cpu_period, cpu_quota) = match limits.cpu_millis {
        Some(millis) => {
            let quota = (millis as i64).saturating_mul(CPU_PERIOD_US) / 1000;
            (CPU_PERIOD_US, quota.max(MIN_CPU_QUOTA_US))
        }
        None => (0, 0),
    };
    LinuxContainerResources {
        cpu_period,
        cpu_quota,
        cpu_shares: 0,
        memory_limit_in_bytes: limits
            .memory_bytes
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX))
            .unwrap_or(0),
        oom_score_adj: 0,
    }
}

/// The CRI config of one container of a sandbox.
pub fn container_config(
    spec: &ContainerSpec,
    sandbox: &PodSandboxConfig,
) -> Result<ContainerConfig, RuntimeError> {
    let log_path = relative_log_path(Path::new(&sandbox.log_directory), &spec.log_path)
        .ok_or_else(|| RuntimeError::Start {
            reason: "CreateContainerConfigError",
            message: format!(
                "log path {} cannot be expressed under the pod's log directory {:?}",
                spec.log_path.display(),
                sandbox.log_directory
            ),
        })?;
    let mut mounts: Vec<CriMount> = spec
        .mounts
        .iter()
        .map(|m| CriMount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.to_string_lossy().into_owned(),
            readonly: m.read_only,
        })
        .collect();
    // The agent's hosts file (pod IP, hostname, hostAliases) replaces containerd's own, as the
    // kubelet's does: containerd skips its /etc/hosts when a mount targets it.
    if let Some(hosts) = sandbox.annotations.get(HOSTS_FILE_ANNOTATION)
        && !mounts.iter().any(|m| m.container_path == "/etc/hosts")
        && Path::new(hosts).exists()
    {
        mounts.push(CriMount {
            container_path: "/etc/hosts".into(),
            host_path: hosts.clone(),
            readonly: false,
        });
    }
    Ok(ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: spec.name.clone(),
            attempt: spec.attempt,
        }),
        image: Some(ImageSpec {
            image: normalize_image(&spec.image),
        }),
        command: spec.command.clone(),
        args: spec.args.clone(),
        working_dir: spec.working_dir.clone().unwrap_or_default(),
        envs: spec
            .env
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        mounts,
        labels: HashMap::from([
            (
                "io.kubernetes.container.name".to_string(),
                spec.name.clone(),
            ),
            (
                "io.kubernetes.pod.uid".to_string(),
                sandbox
                    .metadata
                    .as_ref()
                    .map(|m| m.uid.clone())
                    .unwrap_or_default(),
            ),
        ]),
        annotations: HashMap::new(),
        log_path,
        stdin: spec.stdin,
        stdin_once: spec.stdin_once,
        tty: spec.tty,
        linux: Some(LinuxContainerConfig {
            resources: Some(resources(&spec.limits)),
        }),
    })
}

fn nanos(t: i64) -> Option<SystemTime> {
    (t > 0).then(|| UNIX_EPOCH + Duration::from_nanos(t as u64))
}

/// CRI's container status as the agent's state. containerd already names the terminated
/// reason the kubelet's way ("Completed", "Error", "OOMKilled"); an empty one is filled in.
pub fn state_of(status: &cri::ContainerStatus) -> ContainerState {
    match cri::ContainerState::try_from(status.state) {
        Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running {
            started_at: nanos(status.started_at).unwrap_or_else(SystemTime::now),
        },
        Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited {
            exit_code: status.exit_code,
            reason: match status.reason.as_str() {
                "" if status.exit_code == 0 => "Completed".into(),
                "" => "Error".into(),
                other => other.to_string(),
            },
            started_at: nanos(status.started_at),
            finished_at: nanos(status.finished_at).unwrap_or_else(SystemTime::now),
        },
        _ => ContainerState::Unknown,
    }
}

/// The container's init pid from ContainerStatus's verbose `info` entry (containerd's JSON).
pub fn pid_from_verbose_info(info: &str) -> Option<u32> {
    serde_json::from_str::<Value>(info)
        .ok()?
        .get("pid")?
        .as_u64()
        .filter(|pid| *pid > 0)
        .and_then(|pid| u32::try_from(pid).ok())
}

/// StopContainer's timeout is whole seconds: round up, so a sub-second grace is not SIGKILL
/// straight away.
pub fn stop_timeout_secs(grace: Duration) -> i64 {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::runtime::Mount;

    #[test]
    fn log_paths_are_relative_to_the_log_directory() {
        let dir = Path::new("/data/pods/u/logs");
        assert_eq!(
            relative_log_path(dir, Path::new("/data/pods/u/logs/app/0.log")).as_deref(),
            Some("app/0.log")
        );
        assert_eq!(
            relative_log_path(dir, Path::new("/var/log/x/app.log")).as_deref(),
            Some("../../../../var/log/x/app.log")
        );
        assert_eq!(relative_log_path(dir, Path::new("rel.log")), None);
        assert_eq!(relative_log_path(dir, dir), None);
    }

    #[test]
    fn cpu_millicores_become_a_cfs_quota() {
        let r = resources(&Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(250),
        });
        assert_eq!((r.cpu_period, r.cpu_quota), (100_000, 25_000));
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        let tiny = resources(&Limits {
            memory_bytes: None,
            cpu_millis: Some(1),
        });
        assert_eq!(tiny.cpu_quota, 1_000);
        assert_eq!(resources(&Limits::default()).cpu_quota, 0);
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "app".into(),
            image: "busybox".into(),
            command: vec!["sh".into()],
            args: vec!["-c".into(), "true".into()],
            env: vec![("A".into(), "1".into())],
            working_dir: None,
            mounts: vec![Mount {
                host_path: "/data/v".into(),
                container_path: "/v".into(),
                read_only: true,
            }],
            log_path: "/data/pods/u/logs/app/0.log".into(),
            limits: Limits::default(),
            tty: false,
            stdin: false,
            stdin_once: false,
            attempt: 2,
        }
    }

    #[test]
    fn container_config_mounts_the_pods_hosts_file() {
        let hosts = tempfile::NamedTempFile::new().expect("tmp");
        let sandbox = PodSandboxConfig {
            log_directory: "/data/pods/u/logs".into(),
            annotations: HashMap::from([(
                HOSTS_FILE_ANNOTATION.to_string(),
                hosts.path().to_string_lossy().into_owned(),
            )]),
            ..Default::default()
        };
        let c = container_config(&spec(), &sandbox).expect("config");
        assert_eq!(c.log_path, "app/0.log");
        assert_eq!(
            c.image.map(|i| i.image).as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(c.metadata.map(|m| m.attempt), Some(2));
        let paths: Vec<_> = c.mounts.iter().map(|m| m.container_path.as_str()).collect();
        assert_eq!(paths, ["/v", "/etc/hosts"]);
    }

    #[test]
    fn statuses_map_to_states() {
        let exited = |code, reason: &str| cri::ContainerStatus {
            state: cri::ContainerState::ContainerExited as i32,
            exit_code: code,
            reason: reason.into(),
            started_at: 1_000_000_000,
            finished_at: 2_000_000_000,
            ..Default::default()
        };
        let reason = |s: ContainerState| match s {
            ContainerState::Exited {
                reason, exit_code, ..
            } => (exit_code, reason),
            other => panic!("not exited: {other:?}"),
        };
        assert_eq!(reason(state_of(&exited(0, ""))), (0, "Completed".into()));
        assert_eq!(reason(state_of(&exited(3, ""))), (3, "Error".into()));
        assert_eq!(
            reason(state_of(&exited(137, "OOMKilled"))),
            (137, "OOMKilled".into())
        );
        let running = cri::ContainerStatus {
            state: cri::ContainerState::ContainerRunning as i32,
            started_at: 5_000_000_000,
            ..Default::default()
        };
        assert_eq!(
            state_of(&running),
            ContainerState::Running {
                started_at: UNIX_EPOCH + Duration::from_secs(5)
            }
        );
        let unknown = cri::ContainerStatus {
            state: cri::ContainerState::ContainerUnknown as i32,
            ..Default::default()
        };
        assert_eq!(state_of(&unknown), ContainerState::Unknown);
    }

    #[test]
    fn pid_and_timeout_helpers() {
        assert_eq!(
            pid_from_verbose_info(r#"{"sandboxID":"x","pid":321}"#),
            Some(321)
        );
        assert_eq!(pid_from_verbose_info(r#"{"pid":0}"#), None);
        assert_eq!(pid_from_verbose_info("garbage"), None);
        assert_eq!(stop_timeout_secs(Duration::from_millis(500)), 1);
        assert_eq!(stop_timeout_secs(Duration::from_secs(30)), 30);
        assert_eq!(stop_timeout_secs(Duration::ZERO), 0);
    }
}
