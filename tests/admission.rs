//! Admission that reads other objects, through the real kubectl on a 3-member cluster:
//! ResourceQuota (the must-specify rule, exceeded quotas in kube's words, usage given back by
//! the quota controller, and no over-admission when many creates race for the last units),
//! LimitRange (defaults on pods, bounds on containers and claims), and bootstrap bearer tokens
//! (a `bootstrap-token-<id>` Secret and the cluster's join token).

mod common;

use std::time::Duration;

use common::kubectl::{Kubectl, kubectl};
use common::{Cluster, wait_for};
use serde_json::Value;

fn json(k: &Kubectl, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    serde_json::from_str(&k.ok(&full)).expect("kubectl printed JSON")
}

fn used(k: &Kubectl, quota: &str, ns: &str, resource: &str) -> String {
    let q = json(k, &["get", "quota", quota, "-n", ns]);
    let escaped = resource.replace('~', "~0").replace('/', "~1");
    q.pointer(&format!("/status/used/{escaped}"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn pod_manifest(name: &str, ns: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  containers:\n  - name: app\n    image: busybox\n    command: [sleep, '3600']\n{resources}"
    )
}

const SIZED: &str = "    resources:\n      requests: {cpu: 500m, memory: 256Mi}\n      limits: {cpu: '1', memory: 512Mi}\n";

/// A kubeconfig that authenticates with `token` only (no client certificate).
fn token_kubectl(cluster: &Cluster, token: &str) -> Kubectl {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token.kubeconfig");
    let ca = cluster.nodes[0].data.join("pki").join("ca.crt");
    let server = format!("https://{}", cluster.nodes[0].api());
    let config = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&path)
            .args(args)
            .output()
            .expect("kubectl config");
        assert!(out.status.success(), "kubectl config {args:?}: {out:?}");
    };
    config(&[
        "config",
        "set-cluster",
        "c",
        &format!("--server={server}"),
        &format!("--certificate-authority={}", ca.display()),
        "--embed-certs",
    ]);
    config(&[
        "config",
        "set-credentials",
        "u",
        &format!("--token={token}"),
    ]);
    config(&["config", "set-context", "x", "--cluster=c", "--user=u"]);
    config(&["config", "use-context", "x"]);
    // The kubeconfig outlives the temp dir handle: keep the dir.
    let kept = dir.keep();
    Kubectl {
        kubeconfig: kept.join("token.kubeconfig"),
        cache: tempfile::tempdir().expect("cache dir"),
        server: None,
        netns: None,
    }
}

#[test]
fn quotas_limit_ranges_and_bootstrap_tokens() {
    let cluster = Cluster::start(74, 3, &[]);
    let k = kubectl(&cluster, None);
    // A follower too: admission must see a quota created a moment ago on another member.
    let follower = kubectl(&cluster, Some(2));

    // --- ResourceQuota on compute resources ---
    k.ok(&["create", "namespace", "q"]);
    k.ok(&[
        "create",
        "quota",
        "compute",
        "-n",
        "q",
        "--hard=pods=2,requests.cpu=1,requests.memory=1Gi,limits.cpu=2,limits.memory=2Gi",
    ]);
    let bare = pod_manifest("bare", "q", "");
    let out = apply_fails(&follower, &bare);
    assert!(
        out.contains("pods \"bare\" is forbidden: failed quota: compute: must specify limits.cpu for: app; limits.memory for: app; requests.cpu for: app; requests.memory for: app"),
        "{out}"
    );
    follower.apply(&pod_manifest("one", "q", SIZED));
    k.apply(&pod_manifest("two", "q", SIZED));
    let out = apply_fails(&k, &pod_manifest("three", "q", SIZED));
    assert!(
        out.contains("pods \"three\" is forbidden: exceeded quota: compute, requested: limits.cpu=1,pods=1,requests.cpu=500m, used: limits.cpu=2,pods=2,requests.cpu=1, limited: limits.cpu=2,pods=2,requests.cpu=1"),
        "{out}"
    );
    assert_eq!(used(&k, "compute", "q", "pods"), "2");
    assert_eq!(used(&k, "compute", "q", "requests.memory"), "512Mi");
    let table = k.ok(&["get", "quota", "compute", "-n", "q"]);
    assert!(table.contains("pods: 2/2"), "{table}");
    // Deleting a pod gives its units back (the quota controller's recount).
    k.ok(&["delete", "pod", "one", "-n", "q", "--wait=false"]);
    wait_for(Duration::from_secs(20), "pods used back to 1", || {
        used(&k, "compute", "q", "pods") == "1"
    });
    k.apply(&pod_manifest("three", "q", SIZED));

    // --- Object counts, with a namespace's own kube-root-ca.crt counted ---
    k.ok(&["create", "namespace", "counts"]);
    wait_for(Duration::from_secs(20), "kube-root-ca.crt", || {
        k.run(&["get", "cm", "kube-root-ca.crt", "-n", "counts"])
            .status
            .success()
    });
    k.ok(&[
        "create",
        "quota",
        "objects",
        "-n",
        "counts",
        "--hard=configmaps=2,count/secrets=5",
    ]);
    k.ok(&["create", "configmap", "a", "-n", "counts"]);
    let out = k.fails(&["create", "configmap", "b", "-n", "counts"]);
    assert!(
        out.contains("exceeded quota: objects, requested: configmaps=1, used: configmaps=2, limited: configmaps=2"),
        "{out}"
    );
    // Twelve creates race for five units: exactly five win, on any member.
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let k = kubectl(&cluster, Some(i % 3));
                s.spawn(move || {
                    let name = format!("s{i}");
                    k.run(&["create", "secret", "generic", &name, "-n", "counts"])
                        .status
                        .success()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(results.iter().filter(|ok| **ok).count(), 5, "{results:?}");
    let secrets = json(&k, &["get", "secrets", "-n", "counts"]);
    assert_eq!(secrets["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(used(&k, "objects", "counts", "count/secrets"), "5");

    // --- LimitRange: defaults and bounds ---
    k.ok(&["create", "namespace", "lr"]);
    k.apply(
        "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: limits\n  namespace: lr\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 256Mi}\n    defaultRequest: {cpu: 100m}\n    max: {cpu: '1', memory: 1Gi}\n  - type: PersistentVolumeClaim\n    max: {storage: 2Gi}\n",
    );
    let lr = json(&k, &["get", "limitrange", "limits", "-n", "lr"]);
    assert_eq!(
        lr["spec"]["limits"][0]["defaultRequest"]["memory"], "256Mi",
        "a default limit is the default request (kube's LimitRange defaulting)"
    );
    follower.ok(&[
        "run",
        "plain",
        "-n",
        "lr",
        "--image=busybox",
        "--",
        "sleep",
        "60",
    ]);
    let pod = json(&k, &["get", "pod", "plain", "-n", "lr"]);
    let resources = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"]["cpu"], "500m", "{resources}");
    assert_eq!(resources["requests"]["cpu"], "100m", "{resources}");
    assert_eq!(resources["requests"]["memory"], "256Mi", "{resources}");
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    let ghost = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ghost\n  namespace: lr\nspec:\n  serviceAccountName: ghost\n  containers:\n  - name: app\n    image: busybox\n";
    let out = apply_fails(&k, ghost);
    assert!(
        out.contains("pods \"ghost\" is forbidden: error looking up service account lr/ghost: serviceaccount \"ghost\" not found"),
        "{out}"
    );
    let big = pod_manifest("big", "lr", "    resources:\n      limits: {cpu: '2'}\n");
    let out = apply_fails(&k, &big);
    assert!(
        out.contains(
            "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
        ),
        "{out}"
    );
    let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  namespace: lr\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests: {storage: 5Gi}\n";
    let out = apply_fails(&k, claim);
    assert!(
        out.contains("maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"),
        "{out}"
    );

    // --- Bootstrap tokens ---
    k.ok(&[
        "create",
        "secret",
        "generic",
        "bootstrap-token-abcdef",
        "-n",
        "kube-system",
        "--type=bootstrap.kubernetes.io/token",
        "--from-literal=token-id=abcdef",
        "--from-literal=token-secret=0123456789abcdef",
        "--from-literal=usage-bootstrap-authentication=true",
    ]);
    let bootstrap = token_kubectl(&cluster, "abcdef.0123456789abcdef");
    let me = json(&bootstrap, &["auth", "whoami"]);
    assert_eq!(
        me["status"]["userInfo"]["username"],
        "system:bootstrap:abcdef"
    );
    let groups = me["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("system:bootstrappers"), "{groups}");
    let out = bootstrap.fails(&["get", "pods", "-n", "q"]);
    assert!(
        out.contains("User \"system:bootstrap:abcdef\" cannot list resource \"pods\""),
        "{out}"
    );
    let wrong = token_kubectl(&cluster, "abcdef.0123456789abcdee");
    let out = wrong.fails(&["get", "pods"]);
    assert!(out.contains("provide credentials"), "401: {out}");
    let join = cluster.token();
    let joiner = token_kubectl(&cluster, &join);
    let me = json(&joiner, &["auth", "whoami"]);
    assert_eq!(
        me["status"]["userInfo"]["username"],
        "system:bootstrap:skiff"
    );
}

/// `kubectl apply` of `manifest` that must fail; returns what kubectl printed.
fn apply_fails(k: &Kubectl, manifest: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("manifest.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    k.fails(&["apply", "-f", file.to_str().expect("path")])
}
