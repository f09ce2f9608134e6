//! The API server's semantics through the real kubectl on a 3-member cluster: protobuf bodies
//! from kubectl's generators, service IP/port allocation, the scale and status subresources,
//! finalizers, strict field validation, RBAC with a second user, a watch from a compacted
//! revision, and a follower that keeps serving while the leader is SIGKILLed.

mod common;

use std::process::Command;
use std::time::Duration;

use common::kubectl::{Kubectl, kubectl};
use common::{Cluster, wait_for};

fn json(k: &Kubectl, args: &[&str]) -> serde_json::Value {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    serde_json::from_str(&k.ok(&full)).expect("kubectl printed JSON")
}

#[test]
fn kubectl_drives_the_api_semantics() {
    let mut cluster = Cluster::start(55, 3, &[]);
    let k = kubectl(&cluster, None);

    // kubectl's generators send protobuf.
    k.ok(&["create", "namespace", "team"]);
    k.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "-n",
        "team",
        "--from-literal=user=admin",
    ]);
    k.ok(&["create", "serviceaccount", "robot", "-n", "team"]);
    k.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "team",
        "--image=nginx",
        "--replicas=0",
        "--port=80",
    ]);
    let secret = json(&k, &["get", "secret", "pw", "-n", "team"]);
    assert_eq!(secret["data"]["user"], "YWRtaW4=");
    let deploy = json(&k, &["get", "deploy", "web", "-n", "team"]);
    assert_eq!(
        deploy["spec"]["replicas"], 0,
        "an explicit 0 survives protobuf"
    );
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        80
    );

    // Services: cluster IPs from 10.43.0.0/16, node ports from 30000-32767, no duplicates.
    let kubernetes = json(&k, &["get", "svc", "kubernetes", "-n", "default"]);
    assert_eq!(kubernetes["spec"]["clusterIP"], "10.43.0.1");
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "front",
        "-n",
        "team",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    let front = json(&k, &["get", "svc", "front", "-n", "team"]);
    let ip = front["spec"]["clusterIP"].as_str().expect("cluster IP");
    assert!(ip.starts_with("10.43.") && ip != "10.43.0.1", "{ip}");
    assert_eq!(front["spec"]["ports"][0]["nodePort"], 30080);
    let taken = k.fails(&[
        "create",
        "service",
        "nodeport",
        "back",
        "-n",
        "team",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    assert!(
        taken.contains("provided port is already allocated"),
        "{taken}"
    );

    // scale and status subresources.
    k.ok(&["scale", "deployment", "web", "-n", "team", "--replicas=4"]);
    assert_eq!(
        json(&k, &["get", "deploy", "web", "-n", "team"])["spec"]["replicas"],
        4
    );
    k.ok(&[
        "patch", "svc", "front", "-n", "team", "--subresource=status", "--type=merge",
        "-p", r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.7"}]}},"spec":{"type":"ClusterIP"}}"#,
    ]);
    let front = json(&k, &["get", "svc", "front", "-n", "team"]);
    assert_eq!(
        front["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.0.2.7"
    );
    assert_eq!(
        front["spec"]["type"], "NodePort",
        "a status write leaves spec alone"
    );

    // Finalizers hold a deleted object until they are removed.
    k.ok(&[
        "patch",
        "cm",
        "cfg",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    k.ok(&["delete", "cm", "cfg", "-n", "team", "--wait=false"]);
    let held = json(&k, &["get", "cm", "cfg", "-n", "team"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    k.ok(&[
        "patch",
        "cm",
        "cfg",
        "-n",
        "team",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let gone = k.fails(&["get", "cm", "cfg", "-n", "team"]);
    assert!(gone.contains("NotFound"), "{gone}");

    // Strict field validation (kubectl's default) names the unknown fields; nothing is stored.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo, namespace: team}\ndata: {a: b}\nbogus: 1\n",
    )
    .expect("write");
    let err = k.fails(&["apply", "-f", bad.to_str().expect("path")]);
    assert!(
        err.contains(r#"strict decoding error: unknown field "bogus""#),
        "{err}"
    );
    assert!(
        k.fails(&["get", "cm", "typo", "-n", "team"])
            .contains("NotFound")
    );

    // OpenAPI v3 schemas: kubectl explain.
    let explained = k.ok(&["explain", "deployment.spec.strategy"]);
    assert!(
        explained.contains("rollingUpdate") && explained.contains("<DeploymentStrategy>"),
        "{explained}"
    );

    // Bad input: each gets the right Status, nothing is stored.
    let manifest = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("path").to_string()
    };
    let wrong_type = manifest(
        "wrong-type.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: wt, namespace: team}\nspec: {ports: [{port: eighty}]}\n",
    );
    let err = k.fails(&["create", "-f", &wrong_type, "--validate=false"]);
    assert!(
        err.contains("BadRequest") || err.contains("cannot be handled as a Service"),
        "{err}"
    );
    let nameless = manifest(
        "nameless.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: team}\ndata: {a: b}\n",
    );
    let err = k.fails(&["create", "-f", &nameless]);
    assert!(err.contains("name"), "{err}");
    let invalid_yaml = manifest(
        "invalid.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [\n",
    );
    k.fails(&["apply", "-f", &invalid_yaml]);
    let big = dir.path().join("big.txt");
    std::fs::write(&big, vec![b'x'; 1_100_000]).expect("write");
    let err = k.fails(&[
        "create",
        "configmap",
        "too-big",
        "-n",
        "team",
        &format!("--from-file={}", big.display()),
    ]);
    assert!(
        err.contains("Too long: must have at most 1048576 bytes"),
        "{err}"
    );
    let huge = dir.path().join("huge.txt");
    std::fs::write(&huge, vec![b'x'; 4_000_000]).expect("write");
    let err = k.fails(&[
        "create",
        "configmap",
        "huge",
        "-n",
        "team",
        &format!("--from-file={}", huge.display()),
    ]);
    assert!(err.contains("Request entity too large"), "{err}");
    let bad_patch = k.fails(&[
        "patch",
        "svc",
        "front",
        "-n",
        "team",
        "--type=json",
        "-p",
        r#"[{"op":"explode","path":"/spec"}]"#,
    ]);
    assert!(!bad_patch.is_empty());
    for missing in ["wt", "too-big", "huge"] {
        assert!(
            k.run(&["get", "svc,cm", missing, "-n", "team"])
                .stdout
                .is_empty(),
            "{missing} stored"
        );
    }

    // Server-side apply: create, re-apply with a change (a dropped label goes), conflict with
    // the scaler's ownership of replicas, then force.
    let ssa = dir.path().join("ssa.yaml");
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: team, labels: {app: api, tier: back}}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: api}}\n  template:\n    metadata: {labels: {app: api}}\n    spec: {containers: [{name: api, image: nginx}]}\n";
    std::fs::write(&ssa, manifest).expect("write");
    let ssa_path = ssa.to_str().expect("path");
    assert!(
        k.ok(&["apply", "--server-side", "-f", ssa_path])
            .contains("serverside-applied")
    );
    std::fs::write(
        &ssa,
        manifest
            .replace(", tier: back", "")
            .replace("replicas: 2", "replicas: 3"),
    )
    .expect("write");
    k.ok(&["apply", "--server-side", "-f", ssa_path]);
    let api = json(&k, &["get", "deploy", "api", "-n", "team"]);
    assert_eq!(api["spec"]["replicas"], 3);
    assert!(api["metadata"]["labels"].get("tier").is_none(), "{api}");
    k.ok(&["scale", "deploy", "api", "-n", "team", "--replicas=6"]);
    let conflict = k.fails(&["apply", "--server-side", "-f", ssa_path]);
    assert!(
        conflict.contains("Apply failed with 1 conflict") && conflict.contains(".spec.replicas"),
        "{conflict}"
    );
    k.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        ssa_path,
    ]);
    assert_eq!(
        json(&k, &["get", "deploy", "api", "-n", "team"])["spec"]["replicas"],
        3
    );

    // A CRD, then custom resources of it: schema validation, printer columns, cascade delete.
    let crd = dir.path().join("crd.yaml");
    std::fs::write(&crd, CRD).expect("write");
    k.ok(&["apply", "-f", crd.to_str().expect("path")]);
    k.ok(&[
        "wait",
        "--for",
        "condition=established",
        "crd/crontabs.stable.example.com",
        "--timeout=20s",
    ]);
    let cr = dir.path().join("cr.yaml");
    std::fs::write(&cr, CRONTAB).expect("write");
    wait_for(
        Duration::from_secs(10),
        "the custom kind to be served",
        || {
            k.run(&["apply", "-f", cr.to_str().expect("path")])
                .status
                .success()
        },
    );
    let table = k.ok(&["get", "ct", "-n", "team"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS", "AGE"], "{table}");
    assert!(table.contains("my-cron"), "{table}");
    std::fs::write(&cr, CRONTAB.replace("replicas: 2", "replicas: two")).expect("write");
    let invalid = k.fails(&["apply", "-f", cr.to_str().expect("path")]);
    assert!(
        invalid.contains("spec.replicas in body must be of type integer"),
        "{invalid}"
    );
    k.ok(&["delete", "crd", "crontabs.stable.example.com"]);
    wait_for(Duration::from_secs(10), "the custom kind to go", || {
        !k.run(&["get", "crontabs.stable.example.com", "-n", "team"])
            .status
            .success()
    });

    // RBAC: a second user has no rights until bound, then exactly view's.
    let bob = dir.path().join("bob.kubeconfig");
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["kubeconfig", "--user", "bob", "-o"])
        .arg(&bob)
        .arg("--data")
        .arg(&cluster.nodes[0].data)
        .output()
        .expect("skiff kubeconfig");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let as_bob = Kubectl {
        kubeconfig: bob,
        cache: tempfile::tempdir().expect("cache"),
        server: None,
        netns: None,
    };
    let denied = as_bob.fails(&["get", "pods", "-n", "team"]);
    assert!(
        denied.contains(r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "team""#),
        "{denied}"
    );
    assert_eq!(
        k.ok(&["auth", "can-i", "create", "deployments"]).trim(),
        "yes"
    );
    k.ok(&[
        "create",
        "rolebinding",
        "bob-view",
        "-n",
        "team",
        "--clusterrole=view",
        "--user=bob",
    ]);
    wait_for(
        Duration::from_secs(10),
        "bob's binding to take effect",
        || as_bob.run(&["get", "pods", "-n", "team"]).status.success(),
    );
    assert_eq!(
        as_bob
            .ok(&["auth", "can-i", "list", "deployments", "-n", "team"])
            .trim(),
        "yes"
    );
    let no = as_bob.run(&["auth", "can-i", "create", "deployments", "-n", "team"]);
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");
    let denied = as_bob.fails(&["create", "deployment", "x", "-n", "team", "--image=y"]);
    assert!(
        denied.contains("Forbidden") || denied.contains("forbidden"),
        "{denied}"
    );
    let secrets = k.run(&[
        "auth", "can-i", "list", "secrets", "-n", "team", "--as", "bob",
    ]);
    assert_eq!(String::from_utf8_lossy(&secrets.stdout).trim(), "no");

    // A watch from a compacted revision ends with 410 Expired.
    let list: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/namespaces/team/configmaps"]))
            .expect("list JSON");
    let rv: i64 = list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("list resourceVersion");
    k.ok(&["create", "configmap", "later", "-n", "team"]);
    common::assert_ok(
        &cluster.etcdctl(0, &["compaction", &(rv + 1).to_string()]),
        "compact",
    );
    let watch = cluster_get(
        &cluster,
        &format!(
            "/api/v1/namespaces/team/configmaps?watch=1&resourceVersion={}&timeoutSeconds=2",
            rv - 1
        ),
    );
    assert!(
        watch.contains("\"code\":410") && watch.contains("Expired"),
        "{watch}"
    );

    // A client of member 2 keeps working while the leader is SIGKILLed.
    let leader = cluster.leader();
    let survivor = (leader + 1) % 3;
    let k2 = kubectl(&cluster, Some(survivor));
    cluster.kill(leader);
    wait_for(
        Duration::from_secs(20),
        "a write through a surviving member",
        || {
            k2.run(&["create", "configmap", "after-failover", "-n", "team"])
                .status
                .success()
        },
    );
    assert_eq!(
        json(&k2, &["get", "cm", "after-failover", "-n", "team"])["metadata"]["name"],
        "after-failover"
    );
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: crontabs.stable.example.com}
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]}
  versions:
  - name: v1
    served: true
    storage: true
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              cronSpec: {type: string}
              image: {type: string}
              replicas: {type: integer}
";

const CRONTAB: &str = "apiVersion: stable.example.com/v1
kind: CronTab
metadata: {name: my-cron, namespace: team}
spec: {cronSpec: '* * * * */5', image: my-cron-image, replicas: 2}
";

/// A raw GET with the admin certificate (what kubectl cannot ask for directly).
fn cluster_get(cluster: &Cluster, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "--cert"])
        .arg(cluster.pki("admin.crt"))
        .arg("--key")
        .arg(cluster.pki("admin.key"))
        .arg(format!("https://{}{path}", cluster.nodes[0].api()))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
