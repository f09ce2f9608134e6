//! The real kubectl against a one-member skiff cluster for the workload kinds beyond
//! Deployment: apply a ReplicaSet, StatefulSet, DaemonSet, ControllerRevision, Job, CronJob,
//! HPA and PDB, read them back by short name with kube's table columns, and see a Job that
//! restarts Always refused.

mod common;

use std::time::Duration;

use common::kubectl::{Kubectl, kubectl};
use common::{Cluster, wait_for};

const WORKLOADS: &str = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - {name: nginx, image: "nginx:1.27"}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
      - {name: pg, image: "postgres:17"}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      nodeSelector: {kubernetes.io/os: linux}
      containers:
      - {name: agent, image: "busybox:1.36"}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: pi
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: pi, image: "perl:5.34", command: [perl, -e, print 1]}
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
spec:
  schedule: "*/5 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - {name: tick, image: "busybox:1.36"}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: web
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: ReplicaSet, name: web}
  maxReplicas: 5
---
apiVersion: apps/v1
kind: ControllerRevision
metadata:
  name: db-7f9c
data: {spec: {template: {}}}
revision: 1
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  minAvailable: 1
  selector:
    matchLabels: {app: web}
"#;

const ALWAYS_JOB: &str = "apiVersion: batch/v1
kind: Job
metadata:
  name: forever
spec:
  template:
    spec:
      restartPolicy: Always
      containers:
      - {name: c, image: busybox}
";

/// The header line of `kubectl get <args>`, split into words, and the whole output.
fn header(k: &Kubectl, args: &[&str]) -> (Vec<String>, String) {
    let table = k.ok(args);
    let words = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (words, table)
}

#[test]
fn kubectl_workload_kinds_print_like_kube() {
    let cluster = Cluster::start(52, 1, &[]);
    let k = kubectl(&cluster, None);
    wait_for(Duration::from_secs(20), "default namespace", || {
        k.run(&["get", "namespace", "default"]).status.success()
    });

    let out = k.apply(WORKLOADS);
    for created in [
        "replicaset.apps/web created",
        "statefulset.apps/db created",
        "daemonset.apps/agent created",
        "job.batch/pi created",
        "cronjob.batch/tick created",
        "horizontalpodautoscaler.autoscaling/web created",
        "controllerrevision.apps/db-7f9c created",
        "poddisruptionbudget.policy/web created",
    ] {
        assert!(out.contains(created), "{created}: {out}");
    }
    // A second apply finds nothing to change: server defaults and the Job's generated selector
    // survive the three-way merge. (kubectl always patches a PDB's selector, whose patch
    // strategy is "replace", so it says "configured" against kube-apiserver too.)
    let out = k.apply(WORKLOADS);
    let changed: Vec<&str> = out.lines().filter(|l| !l.ends_with(" unchanged")).collect();
    assert_eq!(
        changed,
        ["poddisruptionbudget.policy/web configured"],
        "{out}"
    );

    let expected: &[(&[&str], &[&str], &str)] = &[
        (
            &["get", "rs"],
            &["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            "web",
        ),
        (
            &["get", "rs", "-o", "wide"],
            &[
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "AGE",
                "CONTAINERS",
                "IMAGES",
                "SELECTOR",
            ],
            "app=web",
        ),
        (&["get", "sts"], &["NAME", "READY", "AGE"], "0/1"),
        (
            &["get", "sts", "-o", "wide"],
            &["NAME", "READY", "AGE", "CONTAINERS", "IMAGES"],
            "postgres:17",
        ),
        (
            &["get", "ds"],
            &[
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "NODE",
                "SELECTOR",
                "AGE",
            ],
            "kubernetes.io/os=linux",
        ),
        (
            &["get", "jobs"],
            &["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
            "Running",
        ),
        (
            &["get", "jobs", "-o", "wide"],
            &[
                "NAME",
                "STATUS",
                "COMPLETIONS",
                "DURATION",
                "AGE",
                "CONTAINERS",
                "IMAGES",
                "SELECTOR",
            ],
            "batch.kubernetes.io/controller-uid=",
        ),
        (
            &["get", "cj"],
            &[
                "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE",
            ],
            "*/5 * * * *",
        ),
        (
            &["get", "hpa"],
            &[
                "NAME",
                "REFERENCE",
                "TARGETS",
                "MINPODS",
                "MAXPODS",
                "REPLICAS",
                "AGE",
            ],
            "cpu: <unknown>/80%",
        ),
        (
            &["get", "pdb"],
            &[
                "NAME",
                "MIN",
                "AVAILABLE",
                "MAX",
                "UNAVAILABLE",
                "ALLOWED",
                "DISRUPTIONS",
                "AGE",
            ],
            "N/A",
        ),
        (
            &["get", "controllerrevisions"],
            &["NAME", "CONTROLLER", "REVISION", "AGE"],
            "<none>",
        ),
    ];
    for (args, columns, cell) in expected {
        let (words, table) = header(&k, args);
        assert_eq!(words, *columns, "kubectl {args:?}:\n{table}");
        assert!(
            table.contains(cell),
            "kubectl {args:?}: no {cell:?} in\n{table}"
        );
    }
    let (words, table) = header(&k, &["get", "job", "pi", "-o", "wide"]);
    assert_eq!(words.len(), 8, "{table}");
    assert!(table.contains("0/1"), "{table}");

    let job: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "job", "pi", "-o", "json"])).expect("json");
    let uid = job["metadata"]["uid"].as_str().expect("uid");
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"]["job-name"],
        "pi"
    );

    // The "all" category holds the workloads (PDBs and ControllerRevisions are not in it), and
    // kubectl's describers read every kind.
    let all = k.ok(&["get", "all", "-o", "name"]);
    for name in [
        "replicaset.apps/web",
        "statefulset.apps/db",
        "daemonset.apps/agent",
        "job.batch/pi",
        "cronjob.batch/tick",
        "horizontalpodautoscaler.autoscaling/web",
    ] {
        assert!(all.lines().any(|l| l == name), "{name} not in\n{all}");
    }
    assert!(!all.contains("poddisruptionbudget"), "{all}");
    for target in [
        "rs/web", "sts/db", "ds/agent", "job/pi", "cj/tick", "hpa/web", "pdb/web",
    ] {
        let out = k.ok(&["describe", target]);
        assert!(out.starts_with("Name:"), "describe {target}:\n{out}");
    }

    // A Job whose pods restart Always is a 422 with kube's wording.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("forever.yaml");
    std::fs::write(&file, ALWAYS_JOB).expect("write");
    let err = k.fails(&["apply", "-f", file.to_str().expect("path")]);
    assert!(
        err.contains(r#""forever" is invalid"#)
            && err.contains(
                r#"spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never""#
            ),
        "{err}"
    );
}
