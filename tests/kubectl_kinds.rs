//! The real kubectl against a one-member skiff cluster for the storage, RBAC, networking,
//! discovery and coordination kinds: apply one of each, read them back by their usual names
//! with kube-apiserver's table columns, and see a RoleBinding's roleRef and a claim's spec
//! refuse to change.

mod common;

use std::time::Duration;

use common::kubectl::kubectl;
use common::{Cluster, wait_for};

const KINDS: &str = r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: data-pv
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: local
  hostPath: {path: /tmp/skiff-data-pv}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: local
  resources:
    requests: {storage: 1Gi}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pod-reader
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: read-pods
subjects:
- {kind: User, name: jane, apiGroup: rbac.authorization.k8s.io}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: node-reader
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: read-nodes
subjects:
- {kind: Group, name: ops, apiGroup: rbac.authorization.k8s.io}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-reader}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx
spec:
  controller: k8s.io/ingress-nginx
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
spec:
  ingressClassName: nginx
  rules:
  - host: web.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service: {name: web, port: {number: 80}}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
---
apiVersion: v1
kind: Endpoints
metadata:
  name: web
subsets:
- addresses: [{ip: 10.0.0.1}]
  ports: [{port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
addressType: IPv4
endpoints:
- addresses: [10.0.0.1]
ports:
- {name: http, port: 80, protocol: TCP}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: leader
spec:
  holderIdentity: node-a
  leaseDurationSeconds: 15
---
apiVersion: v1
kind: ResourceQuota
metadata:
  name: compute
spec:
  hard: {pods: "10"}
---
apiVersion: v1
kind: LimitRange
metadata:
  name: defaults
spec:
  limits:
  - type: Container
    default: {cpu: 500m}
    defaultRequest: {cpu: 500m}
"#;

#[test]
fn kubectl_storage_rbac_and_networking_kinds_print_like_kube() {
    let cluster = Cluster::start(53, 1, &[]);
    let k = kubectl(&cluster, None);
    wait_for(Duration::from_secs(20), "default namespace", || {
        k.run(&["get", "namespace", "default"]).status.success()
    });

    let out = k.apply(KINDS);
    for created in [
        "persistentvolume/data-pv created",
        "persistentvolumeclaim/data created",
        "role.rbac.authorization.k8s.io/pod-reader created",
        "rolebinding.rbac.authorization.k8s.io/read-pods created",
        "clusterrole.rbac.authorization.k8s.io/node-reader created",
        "clusterrolebinding.rbac.authorization.k8s.io/read-nodes created",
        "ingressclass.networking.k8s.io/nginx created",
        "ingress.networking.k8s.io/web created",
        "storageclass.storage.k8s.io/local created",
        "endpoints/web created",
        "endpointslice.discovery.k8s.io/web-1 created",
        "lease.coordination.k8s.io/leader created",
        "resourcequota/compute created",
        "limitrange/defaults created",
    ] {
        assert!(out.contains(created), "{created}: {out}");
    }
    // Applying again changes nothing: server defaults survive the three-way merge (lists
    // kubectl replaces whole, like subjects and ports, spell their defaults out above).
    let out = k.apply(KINDS);
    assert!(!out.contains("configured"), "{out}");

    // The binder pairs the claim with the PV of its class.
    wait_for(
        Duration::from_secs(20),
        "claim data bound to data-pv",
        || {
            k.ok(&[
                "get",
                "pvc",
                "data",
                "-o",
                "jsonpath={.status.phase}/{.spec.volumeName}",
            ]) == "Bound/data-pv"
        },
    );
    assert_eq!(
        k.ok(&[
            "get",
            "pv",
            "data-pv",
            "-o",
            "jsonpath={.status.phase}/{.spec.claimRef.name}"
        ]),
        "Bound/data"
    );
    // (kubectl get arguments, header words, a cell the table must show)
    let tables: &[(&[&str], &str, &str)] = &[
        (
            &["get", "pv"],
            "NAME CAPACITY ACCESS MODES RECLAIM POLICY STATUS CLAIM STORAGECLASS VOLUMEATTRIBUTESCLASS REASON AGE",
            "Retain",
        ),
        (
            &["get", "pv", "-o", "wide"],
            "NAME CAPACITY ACCESS MODES RECLAIM POLICY STATUS CLAIM STORAGECLASS VOLUMEATTRIBUTESCLASS REASON AGE VOLUMEMODE",
            "Filesystem",
        ),
        (
            &["get", "pvc"],
            "NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS VOLUMEATTRIBUTESCLASS AGE",
            "Bound",
        ),
        (
            &["get", "pvc", "-o", "wide"],
            "NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS VOLUMEATTRIBUTESCLASS AGE VOLUMEMODE",
            "Filesystem",
        ),
        (&["get", "roles"], "NAME CREATED AT", "pod-reader"),
        (&["get", "rolebindings"], "NAME ROLE AGE", "Role/pod-reader"),
        (
            &["get", "rolebindings", "-o", "wide"],
            "NAME ROLE AGE USERS GROUPS SERVICEACCOUNTS",
            "jane",
        ),
        (&["get", "clusterroles"], "NAME CREATED AT", "node-reader"),
        (
            &["get", "clusterrolebindings", "-o", "wide"],
            "NAME ROLE AGE USERS GROUPS SERVICEACCOUNTS",
            "ClusterRole/node-reader",
        ),
        (
            &["get", "ing"],
            "NAME CLASS HOSTS ADDRESS PORTS AGE",
            "web.example.com",
        ),
        (
            &["get", "ingressclass"],
            "NAME CONTROLLER PARAMETERS AGE",
            "k8s.io/ingress-nginx",
        ),
        (
            &["get", "sc"],
            "NAME PROVISIONER RECLAIMPOLICY VOLUMEBINDINGMODE ALLOWVOLUMEEXPANSION AGE",
            "local (default)",
        ),
        (&["get", "ep"], "NAME ENDPOINTS AGE", "10.0.0.1:80"),
        (
            &["get", "endpointslices"],
            "NAME ADDRESSTYPE PORTS ENDPOINTS AGE",
            "10.0.0.1",
        ),
        (&["get", "leases"], "NAME HOLDER AGE", "node-a"),
        (&["get", "quota"], "NAME AGE REQUEST LIMIT", "compute"),
        (&["get", "limits"], "NAME CREATED AT", "defaults"),
    ];
    for (args, columns, cell) in tables {
        let table = k.ok(args);
        let first = table.lines().next().unwrap_or("");
        assert_eq!(
            first.split_whitespace().collect::<Vec<_>>().join(" "),
            *columns,
            "kubectl {args:?}:\n{table}"
        );
        assert!(
            table.contains(cell),
            "kubectl {args:?} lacks {cell}:\n{table}"
        );
    }

    // A binding's roleRef is fixed: pointing it elsewhere is refused and changes nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let moved = dir.path().join("moved.yaml");
    let binding = KINDS
        .split("---\n")
        .find(|doc| doc.contains("name: read-pods"))
        .expect("binding manifest");
    std::fs::write(&moved, binding.replace("name: pod-reader}", "name: admin}")).expect("write");
    let err = k.fails(&["apply", "-f", moved.to_str().expect("path")]);
    assert!(err.contains("cannot change roleRef"), "{err}");
    let role = k.ok(&[
        "get",
        "rolebinding",
        "read-pods",
        "-o",
        "jsonpath={.roleRef.name}",
    ]);
    assert_eq!(role, "pod-reader");

    // A claim's access modes are fixed after creation.
    let err = k.fails(&[
        "patch",
        "pvc",
        "data",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"accessModes":["ReadWriteMany"]}}"#,
    ]);
    assert!(err.contains("spec is immutable"), "{err}");
}
