//! The ClusterRoles and ClusterRoleBindings every cluster starts with, after Kubernetes'
//! bootstrap policy: cluster-admin, admin, edit, view, the discovery and public-info roles every
//! user gets, and the roles of nodes and the scheduler. Created by the leader if absent; a user
//! may change them afterwards (as `rbac.authorization.kubernetes.io/autoupdate` allows).

use serde_json::{Value, json};
use skiff_raft::RaftNode;

use super::RBAC_PREFIX;
use crate::apiserver::auth::{AUTHENTICATED, UNAUTHENTICATED};
use crate::apiserver::objects::{new_uid, now_rfc3339};

/// Members of this group may do anything, whatever RBAC holds (kube-apiserver's superuser
/// group); the admin kubeconfig's certificate is in it.
pub const SUPERUSER_GROUP: &str = "system:masters";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Namespaced resources `view` may read (no Secrets, as Kubernetes' view role).
fn viewable() -> Vec<Value> {
    vec![
        json!({"apiGroups": [""], "resources": ["pods", "pods/log", "pods/status", "services", "services/status", "endpoints", "configmaps", "persistentvolumeclaims", "persistentvolumeclaims/status", "replicationcontrollers", "replicationcontrollers/scale", "replicationcontrollers/status", "serviceaccounts", "events", "limitranges", "resourcequotas", "resourcequotas/status", "bindings", "namespaces", "namespaces/status"], "verbs": READ}),
        json!({"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale", "deployments/status", "replicasets", "replicasets/scale", "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status", "daemonsets", "daemonsets/status", "controllerrevisions"], "verbs": READ}),
        json!({"apiGroups": ["batch"], "resources": ["jobs", "jobs/status", "cronjobs", "cronjobs/status"], "verbs": READ}),
        json!({"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers", "horizontalpodautoscalers/status"], "verbs": READ}),
        json!({"apiGroups": ["policy"], "resources": ["poddisruptionbudgets", "poddisruptionbudgets/status"], "verbs": READ}),
        json!({"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingresses/status", "networkpolicies"], "verbs": READ}),
        json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ}),
    ]
}

/// Namespaced resources `edit` may change (everything but RBAC and quotas).
fn editable() -> Vec<Value> {
    vec![
        json!({"apiGroups": [""], "resources": ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "pods/eviction", "services", "services/proxy", "endpoints", "configmaps", "secrets", "persistentvolumeclaims", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "serviceaccounts/token", "events"], "verbs": WRITE}),
        json!({"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale", "deployments/rollback", "replicasets", "replicasets/scale", "statefulsets", "statefulsets/scale", "daemonsets", "controllerrevisions"], "verbs": WRITE}),
        json!({"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": WRITE}),
        json!({"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": WRITE}),
        json!({"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": WRITE}),
        json!({"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "networkpolicies"], "verbs": WRITE}),
        json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": WRITE}),
        json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": WRITE}),
    ]
}

fn cluster_roles() -> Vec<(&'static str, Vec<Value>)> {
    let mut edit = editable();
    edit.extend(viewable());
    let mut admin = edit.clone();
    admin.push(json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": WRITE}));
    admin.push(json!({"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]}));
    vec![
        (
            "cluster-admin",
            vec![
                json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ],
        ),
        ("admin", admin),
        ("edit", edit),
        ("view", viewable()),
        (
            "system:discovery",
            vec![
                json!({"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/openapi", "/openapi/*", "/version", "/version/"], "verbs": ["get"]}),
            ],
        ),
        (
            "system:public-info-viewer",
            vec![
                json!({"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}),
            ],
        ),
        (
            "system:basic-user",
            vec![
                json!({"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]}),
                json!({"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}),
            ],
        ),
        (
            "system:node",
            vec![
                json!({"apiGroups": [""], "resources": ["nodes", "nodes/status"], "verbs": ["create", "get", "list", "watch", "patch", "update", "delete"]}),
                json!({"apiGroups": [""], "resources": ["pods", "pods/status", "pods/eviction"], "verbs": ["get", "list", "watch", "create", "delete", "patch", "update"]}),
                json!({"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]}),
                json!({"apiGroups": [""], "resources": ["configmaps", "secrets", "services", "endpoints", "persistentvolumeclaims", "persistentvolumes"], "verbs": READ}),
                json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": WRITE}),
                json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ}),
                json!({"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}),
            ],
        ),
        (
            "system:kube-scheduler",
            vec![
                json!({"apiGroups": [""], "resources": ["pods", "nodes", "persistentvolumeclaims", "persistentvolumes", "services", "replicationcontrollers", "namespaces"], "verbs": READ}),
                json!({"apiGroups": [""], "resources": ["pods/binding", "bindings"], "verbs": ["create"]}),
                json!({"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch", "update"]}),
                json!({"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]}),
                json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": WRITE}),
            ],
        ),
    ]
}

fn cluster_role_bindings() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    vec![
        ("cluster-admin", "cluster-admin", vec![SUPERUSER_GROUP]),
        ("system:discovery", "system:discovery", vec![AUTHENTICATED]),
        (
            "system:basic-user",
            "system:basic-user",
            vec![AUTHENTICATED],
        ),
        (
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![AUTHENTICATED, UNAUTHENTICATED],
        ),
        ("system:node", "system:node", vec!["system:nodes"]),
        (
            "system:kube-scheduler",
            "system:kube-scheduler",
            vec!["system:kube-scheduler"],
        ),
    ]
}

fn metadata(name: &str) -> Value {
    json!({
        "name": name,
        "uid": new_uid(),
        "creationTimestamp": now_rfc3339(),
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

/// Every default object with its store key.
pub fn default_objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, rules) in cluster_roles() {
        out.push((
            format!("{RBAC_PREFIX}clusterroles/{name}"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": metadata(name), "rules": rules}),
        ));
    }
    for (name, role, groups) in cluster_role_bindings() {
        let subjects: Vec<Value> = groups
            .iter()
            .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
            .collect();
        out.push((
            format!("{RBAC_PREFIX}clusterrolebindings/{name}"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": metadata(name),
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                   "subjects": subjects}),
        ));
    }
    out
}

/// Creates the defaults that are missing, while this member leads; returns once all exist in
/// this member's replica.
pub async fn ensure_default_policy(node: RaftNode) {
    crate::apiserver::bootstrap::ensure_stored(&node, "default RBAC object", default_objects())
        .await;
}
