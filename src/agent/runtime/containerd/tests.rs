//! The runtime against a real containerd: a private one in a temporary directory and a network
//! namespace of its own, with images built by images/build.sh. Needs root, containerd, runc,
//! containernetworking-plugins, busybox-static and gcc; without them the test says why and
//! passes.
//!
//! Everything it makes is undone on drop, also when an assertion fails: containers (by the
//! test's own cgroup parent), shims and containerd (by the test's own directory on their
//! command lines), mounts under that directory, the network namespace, CNI's result cache and
//! shim sockets that live outside any configured directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::*;
use crate::agent::runtime::{Limits, Mount};

const POD_CIDR: &str = "10.88.7.0/24";

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for program in [
        "containerd",
        "runc",
        "ctr",
        "nsenter",
        "gcc",
        "ip",
        "python3",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{program} is not installed"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("busybox-static is not installed".into());
    }
    None
}

/// A throwaway node: a directory and a network namespace, torn down on drop.
struct Node {
    dir: tempfile::TempDir,
    netns: String,
    cgroup_parent: String,
    /// Sandboxes made, for the shim sockets to remove if their shims had to be killed.
    sandboxes: Arc<StdMutex<Vec<String>>>,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("skiff-crt-")
            .tempdir()
            .expect("tempdir");
        let netns = format!("skiff-crt-{}", std::process::id());
        let node = Node {
            dir,
            netns: netns.clone(),
            cgroup_parent: format!("skiff-crt-{}", std::process::id()),
            sandboxes: Arc::default(),
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &netns])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", &netns]);
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        node
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.netns))
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("containerd")
    }

    /// Pids of processes started by this test: anything with our directory on its command
    /// line (containerd, shims) or in our cgroup parent (containers).
    fn our_pids(&self) -> Vec<i32> {
        let marker = self.dir.path().to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cgroups = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker)
                || cgroups.contains(&format!(":/{}/", self.cgroup_parent))
            {
                pids.push(pid);
            }
        }
        pids.retain(|p| *p != std::process::id() as i32);
        pids
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let leftovers = self.our_pids();
        if !leftovers.is_empty() {
            eprintln!("cleanup: killing leftover processes {leftovers:?}");
        }
        for pid in leftovers {
            // SAFETY: kill(2) on processes this test started (found by its own markers).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        // Mounts under our directory (rootfs overlays, netns and shm binds), deepest first.
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .map(str::to_string)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            if let Ok(c) = std::ffi::CString::new(mount) {
                // SAFETY: a NUL-terminated path; MNT_DETACH never blocks.
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
        // Empty cgroups the containers left under our parent.
        for controller in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let parent = controller.path().join(&self.cgroup_parent);
            if let Ok(children) = std::fs::read_dir(&parent) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(child.path());
                }
                let _ = std::fs::remove_dir(&parent);
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        // Files containerd and CNI keep outside any configured directory.
        let network = config::network_name(&self.cgroup_parent);
        for entry in std::fs::read_dir("/var/lib/cni/results")
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{network}-"))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let socket = config::Layout::new(&self.state_dir()).socket();
        for id in self.sandboxes.lock().map(|s| s.clone()).unwrap_or_default() {
            let _ = std::fs::remove_file(format!("/var/lib/cni/results/cni-loopback-{id}-lo"));
            for address in [
                socket.clone(),
                PathBuf::from(format!("{}.ttrpc", socket.display())),
            ] {
                let path = format!("{}/k8s.io/{id}", address.display());
                let hash = hex::encode(Sha256::digest(path.as_bytes()));
                let _ = std::fs::remove_file(format!("/run/containerd/s/{hash}"));
            }
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().expect(program);
    assert!(status.success(), "{program} {args:?}: {status}");
}

fn pod(node: &Node, uid: &str, name: &str, host_network: bool) -> SandboxSpec {
    let pod_dir = node.dir.path().join("pods").join(uid);
    std::fs::create_dir_all(&pod_dir).expect("pod dir");
    let resolv_conf = pod_dir.join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        "nameserver 10.43.0.10\nsearch default.svc.cluster.local\noptions ndots:5\n",
    )
    .expect("resolv.conf");
    let hosts_file = pod_dir.join("etc-hosts");
    std::fs::write(
        &hosts_file,
        format!("127.0.0.1\tlocalhost\n10.88.7.99\t{name}-marker\n"),
    )
    .expect("etc-hosts");
    SandboxSpec {
        uid: uid.into(),
        namespace: "default".into(),
        name: name.into(),
        hostname: name.into(),
        host_network,
        pod_dir,
        resolv_conf,
        hosts_file,
        port_mappings: Vec::new(),
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
    }
}

fn container(sandbox: &SandboxSpec, name: &str, image: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: image.into(),
        command: vec!["sh".into(), "-c".into()],
        args: vec![script.into()],
        env: vec![("GREETING".into(), "hello from skiff".into())],
        working_dir: Some("/tmp".into()),
        mounts: Vec::new(),
        log_path: sandbox.pod_dir.join("logs").join(name).join("0.log"),
        limits: Limits::default(),
        tty: false,
        stdin: false,
        stdin_once: false,
        attempt: 0,
    }
}

async fn wait_exited(rt: &ContainerdRuntime, id: &str) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rt.container_state(id).await.expect("container state") {
            ContainerState::Exited {
                exit_code, reason, ..
            } => return (exit_code, reason),
            other if Instant::now() > deadline => panic!("container {id} still {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_containerd_runs_pods_in_a_network_namespace() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping the containerd runtime test: {reason}");
        return;
    }
    let node = Node::new();
    let images = node.dir.path().join("images");
    run(
        "sh",
        &[
            concat!(env!("CARGO_MANIFEST_DIR"), "/images/build.sh"),
            &images.to_string_lossy(),
        ],
    );
    let options = ContainerdOptions {
        state_dir: node.state_dir(),
        socket: None,
        pod_cidr: Some(POD_CIDR.into()),
        netns: Some(node.netns_path()),
        cgroup_parent: node.cgroup_parent.clone(),
        import_images: Some(images),
    };
    let rt = match ContainerdRuntime::start(options.clone()).await {
        Ok(rt) => rt,
        Err(e) => {
            let log = std::fs::read_to_string(node.state_dir().join("containerd.log"));
            panic!("containerd did not start: {e}\n{}", log.unwrap_or_default());
        }
    };

    // Images: local ones serve under every policy; a missing one fails the kubelet's ways.
    for policy in [
        PullPolicy::Always,
        PullPolicy::IfNotPresent,
        PullPolicy::Never,
    ] {
        rt.ensure_image("busybox", policy)
            .await
            .expect("busybox is local");
    }
    rt.ensure_image("skiff/pause:3.9", PullPolicy::IfNotPresent)
        .await
        .expect("pause");
    let never = rt.ensure_image("skiff/absent:1.0", PullPolicy::Never).await;
    assert!(
        matches!(never, Err(RuntimeError::ImageNeverPull(_))),
        "{never:?}"
    );
    let pull = rt
        .ensure_image("skiff/absent:1.0", PullPolicy::IfNotPresent)
        .await;
    assert!(
        matches!(pull, Err(RuntimeError::ImagePull { .. })),
        "{pull:?}"
    );

    // A pod on the node's bridge, with an address from the pod CIDR.
    let web = pod(&node, "uid-web", "web", false);
    let sandbox = rt.run_sandbox(&web).await.expect("sandbox");
    node.sandboxes
        .lock()
        .expect("lock")
        .push(sandbox.id.clone());
    let ip = sandbox.ip.expect("pod IP");
    assert!(ip.to_string().starts_with("10.88.7."), "{ip}");
    eprintln!("sandbox {} has IP {ip}", sandbox.id);
    let listed = rt.list_sandboxes().await.expect("list");
    assert!(
        listed
            .iter()
            .any(|s| s.id == sandbox.id && s.pod_uid == "uid-web" && s.ip == Some(ip)),
        "{listed:?}"
    );

    // A container that prints and fails: its log lands exactly at log_path, in CRI format.
    let volume = node.dir.path().join("volume");
    std::fs::create_dir_all(&volume).expect("volume");
    std::fs::write(volume.join("data"), "from a volume\n").expect("volume file");
    let mut say = container(
        &web,
        "say",
        "busybox",
        "echo \"$GREETING as $(hostname) in $(pwd)\"; grep -c web-marker /etc/hosts; grep ndots /etc/resolv.conf; cat /data/data; touch /data/x || echo read-only; echo oops >&2; exit 3",
    );
    say.mounts.push(Mount {
        host_path: volume.clone(),
        container_path: "/data".into(),
        read_only: true,
    });
    let id = rt.start_container(&sandbox, &say).await.expect("start");
    let (code, reason) = wait_exited(&rt, &id).await;
    assert_eq!((code, reason.as_str()), (3, "Error"));
    let lines = log_lines(&say.log_path);
    eprintln!("log {}:\n{}", say.log_path.display(), lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" stdout F hello from skiff as web in /tmp")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F 1")),
        "hosts file not mounted: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" stdout F options ndots:5")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" stderr F oops")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F from a volume")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F read-only")),
        "{lines:?}"
    );
    assert!(!volume.join("x").exists());
    rt.remove_container(&id).await.expect("remove");
    assert!(matches!(
        rt.container_state(&id).await,
        Err(RuntimeError::NotFound(_))
    ));

    // A long-running HTTP server with limits: reachable from the node, exec, usage, stop.
    let mut echo = container(&web, "echo", "skiff/echo", "");
    echo.command.clear();
    echo.args.clear();
    echo.limits = Limits {
        memory_bytes: Some(64 << 20),
        cpu_millis: Some(500),
    };
    let echo_id = rt.start_container(&sandbox, &echo).await.expect("echo");
    assert!(matches!(
        rt.container_state(&echo_id).await.expect("state"),
        ContainerState::Running { .. }
    ));
    let mut answer = String::new();
    for _ in 0..50 {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", node.netns_path().display()))
            .args([
                "timeout",
                "3",
                "busybox",
                "wget",
                "-qO-",
                &format!("http://{ip}/"),
            ])
            .output()
            .expect("wget");
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("GET http://{ip}/ -> {answer:?}");
    assert_eq!(answer.trim(), "[v1] Hello, Kubernetes! From host: web");
    let exec = rt
        .exec_command(&echo_id, &["sh".into(), "-c".into(), "echo $GREETING; hostname; cat /sys/fs/cgroup/memory/memory.limit_in_bytes; cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us".into()])
        .await
        .expect("exec")
        .output()
        .await
        .expect("exec output");
    let exec_out = String::from_utf8_lossy(&exec.stdout);
    eprintln!(
        "exec -> {exec_out:?} {:?}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert!(exec.status.success());
    let exec_lines: Vec<&str> = exec_out.lines().collect();
    assert_eq!(exec_lines.first().copied(), Some("hello from skiff"));
    assert_eq!(exec_lines.get(1).copied(), Some("web"));
    assert_eq!(exec_lines.get(2).copied(), Some("67108864"), "memory limit");
    assert_eq!(exec_lines.get(3).copied(), Some("50000"), "cpu quota");
    // containerd's own stats serve (the cgroup files are only the fallback).
    let stats = rt
        .runtime
        .clone()
        .container_stats(ContainerStatsRequest {
            container_id: echo_id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner();
    let from_cri = stats.stats.as_ref().and_then(usage::from_stats);
    assert!(from_cri.is_some_and(|u| u.memory_bytes > 0), "{stats:?}");
    let usage = rt.usage(&echo_id).await.expect("usage");
    eprintln!("usage {usage:?}");
    assert!(usage.memory_bytes > 0 && usage.cpu_nanos > 0, "{usage:?}");

    // An agent that restarted: a second client on the same socket knows the sandbox from
    // containerd alone and can still add containers to it.
    let again = ContainerdRuntime::start(ContainerdOptions {
        socket: Some(config::Layout::new(&node.state_dir()).socket()),
        import_images: None,
        ..options.clone()
    })
    .await
    .expect("second client");
    let recovered = again.list_sandboxes().await.expect("list");
    let found = recovered
        .iter()
        .find(|s| s.pod_uid == "uid-web")
        .expect("sandbox");
    let late = container(&web, "late", "busybox", "echo late; exit 0");
    let late_id = again
        .start_container(found, &late)
        .await
        .expect("late start");
    assert_eq!(wait_exited(&again, &late_id).await, (0, "Completed".into()));
    assert!(
        log_lines(&late.log_path)
            .iter()
            .any(|l| l.ends_with(" stdout F late"))
    );
    let state = again.container_state(&echo_id).await.expect("state");
    assert!(matches!(state, ContainerState::Running { .. }), "{state:?}");
    drop(again);

    // Out of memory: the kubelet's OOMKilled.
    let mut hog = container(
        &web,
        "hog",
        "busybox",
        "dd if=/dev/zero of=/dev/null bs=200M count=1",
    );
    hog.limits.memory_bytes = Some(32 << 20);
    let hog_id = rt.start_container(&sandbox, &hog).await.expect("hog");
    let (code, reason) = wait_exited(&rt, &hog_id).await;
    eprintln!("hog exited {code} {reason}");
    assert_eq!(reason, "OOMKilled", "exit {code}");

    // Stop: SIGTERM (busybox httpd exits on it: 143), SIGKILL only after the grace period.
    let started = Instant::now();
    rt.stop_container(&echo_id, Duration::from_millis(1500))
        .await
        .expect("stop");
    let (code, _) = wait_exited(&rt, &echo_id).await;
    eprintln!("echo stopped with {code} after {:?}", started.elapsed());
    assert_ne!(code, 0);
    rt.stop_container(&echo_id, Duration::from_secs(1))
        .await
        .expect("stop is idempotent");
    // A container ignoring SIGTERM gets SIGKILL once the grace period is over.
    let sleeper = container(
        &web,
        "sleeper",
        "busybox",
        "trap '' TERM; while :; do sleep 1; done",
    );
    let sleeper_id = rt
        .start_container(&sandbox, &sleeper)
        .await
        .expect("sleeper");
    let started = Instant::now();
    rt.stop_container(&sleeper_id, Duration::from_secs(1))
        .await
        .expect("stop");
    let (code, _) = wait_exited(&rt, &sleeper_id).await;
    eprintln!("sleeper stopped with {code} after {:?}", started.elapsed());
    assert_eq!(code, 137);
    assert!(started.elapsed() >= Duration::from_secs(1));

    // A hostNetwork pod sees the node's interfaces (the CNI bridge) and has no pod IP.
    let host = pod(&node, "uid-host", "host", true);
    let host_sandbox = rt.run_sandbox(&host).await.expect("host sandbox");
    node.sandboxes
        .lock()
        .expect("lock")
        .push(host_sandbox.id.clone());
    assert_eq!(host_sandbox.ip, None);
    let probe = container(
        &host,
        "probe",
        "busybox",
        &format!("ip link show {}", config::BRIDGE),
    );
    let probe_id = rt
        .start_container(&host_sandbox, &probe)
        .await
        .expect("probe");
    let (code, _) = wait_exited(&rt, &probe_id).await;
    assert_eq!(code, 0, "log: {:?}", log_lines(&probe.log_path));

    // Teardown through the runtime: everything goes, idempotently.
    for id in [&sandbox.id, &host_sandbox.id] {
        rt.stop_sandbox(id).await.expect("stop sandbox");
        rt.remove_sandbox(id).await.expect("remove sandbox");
        rt.remove_sandbox(id).await.expect("remove is idempotent");
    }
    assert!(rt.list_sandboxes().await.expect("list").is_empty());
    rt.shutdown().await;
    let leftovers = node.our_pids();
    assert!(leftovers.is_empty(), "processes left: {leftovers:?}");
}
