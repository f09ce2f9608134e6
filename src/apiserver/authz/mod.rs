//! Authorization: RBAC over the Roles, ClusterRoles and their bindings in the store.
//!
//! Every member keeps the RBAC objects of its own replica in memory (a `Mirror`), so deciding
//! a request costs no store read. A binding written on any member takes effect everywhere within one replication
//! round trip, as with kube-apiserver's informer-fed authorizer.

pub mod defaults;
pub mod reviews;
pub mod rules;

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::Value;
use skiff_raft::RaftNode;

use super::auth::UserInfo;
use super::mirror::Mirror;
use super::request::{Query, ResourceTarget};
use super::status::ApiError;
use crate::json_path::JsonPath;

/// Where RBAC objects live in the store.
const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// What a request wants to do, as Kubernetes' authorizer.Attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// Empty for cluster-scoped requests.
    pub namespace: String,
    /// Set for non-resource requests (`/healthz`, `/apis`).
    pub path: Option<String>,
}

impl Attributes {
    /// The attributes of a resource request.
    pub fn of_resource(target: &ResourceTarget, method: &Method, query: &Query) -> Self {
        let info = target.kind.info();
        let named = target.name.is_some();
        // Exec, attach and port-forward run something on a node whichever method opens
        // them: a WebSocket upgrade (GET) needs `create`, as kube-apiserver asks since 1.30.
        let connect = info.group.is_empty()
            && info.resource == "pods"
            && matches!(
                target.subresource.as_deref(),
                Some("exec" | "attach" | "portforward")
            );
        let verb = match *method {
            Method::GET if connect => "create",
            Method::GET | Method::HEAD if query.flag("watch") => "watch",
            Method::GET | Method::HEAD if named => "get",
            Method::GET | Method::HEAD => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if named => "delete",
            Method::DELETE => "deletecollection",
            _ => "unknown",
        };
        Attributes {
            verb: verb.into(),
            api_group: info.group.into(),
            resource: info.resource.into(),
            subresource: target.subresource.clone().unwrap_or_default(),
            name: target.name.clone().unwrap_or_default(),
            namespace: target
                .namespace
                .clone()
                .filter(|_| info.namespaced)
                .unwrap_or_default(),
            path: None,
        }
    }

    pub fn of_path(path: &str, method: &Method) -> Self {
        Attributes {
            verb: method.as_str().to_ascii_lowercase(),
            path: Some(path.to_string()),
            ..Attributes::default()
        }
    }

    /// kube-apiserver's 403 message: `User "bob" cannot create resource "deployments" in API
    /// group "apps" in the namespace "default"`.
    pub fn forbidden_message(&self, user: &UserInfo) -> String {
        if let Some(path) = &self.path {
            return format!(
                "forbidden: User {:?} cannot {} path {path:?}",
                user.name, self.verb
            );
        }
        let resource = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let qualified = if self.api_group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.api_group)
        };
        let subject = if self.name.is_empty() {
            qualified
        } else {
            format!("{qualified} {:?}", self.name)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", self.namespace)
        };
        format!(
            "{subject} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            user.name, self.verb, self.api_group
        )
    }
}

/// The RBAC objects of this member's replica, by store key.
#[derive(Clone, Default)]
pub struct Authorizer {
    objects: Mirror,
}

impl Authorizer {
    /// An authorizer following `node`'s replica from now on.
    pub fn follow(node: RaftNode) -> Self {
        Authorizer {
            objects: Mirror::follow(node, RBAC_PREFIX, |_| {}),
        }
    }

    /// Whether `user` may do `attrs`; the reason is for logs and access reviews.
    pub fn allows(&self, user: &UserInfo, attrs: &Attributes) -> (bool, String) {
        self.objects
            .with(|objects| decide(objects, user, attrs))
            .unwrap_or((false, "authorizer state is poisoned".into()))
    }

    /// 403 unless allowed.
    pub fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), ApiError> {
        match self.allows(user, attrs) {
            (true, _) => Ok(()),
            (false, _) => Err(ApiError::Forbidden(attrs.forbidden_message(user))),
        }
    }

    /// The rules `user` has in `namespace` (SelfSubjectRulesReview): resource rules and
    /// non-resource rules, unmerged.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<Value> {
        self.objects
            .with(|objects| rules_in(objects, user, namespace))
            .unwrap_or_default()
    }

    #[cfg(test)]
    pub fn with_objects(objects: Vec<(String, Value)>) -> Self {
        Authorizer {
            objects: Mirror::with_objects(objects),
        }
    }
}

/// One binding that names a user, with the rules of the role it refers to.
struct Grant<'a> {
    /// A ClusterRoleBinding (else a RoleBinding, which grants only in its namespace).
    cluster_wide: bool,
    namespace: &'a str,
    binding: &'a str,
    role_kind: &'a str,
    role: &'a str,
    rules: Vec<Value>,
}

impl Grant<'_> {
    /// Whether this grant reaches a request in `namespace` (None: cluster scope or a
    /// non-resource URL, which only ClusterRoleBindings reach).
    fn reaches(&self, namespace: Option<&str>) -> bool {
        self.cluster_wide || namespace == Some(self.namespace)
    }

    fn describe(&self) -> String {
        let (kind, name) = (self.role_kind, self.role);
        if self.cluster_wide {
            format!(
                "RBAC: allowed by ClusterRoleBinding {:?} of {kind} {name:?}",
                self.binding
            )
        } else {
            format!(
                "RBAC: allowed by RoleBinding \"{}/{}\" of {kind} {name:?}",
                self.binding, self.namespace
            )
        }
    }
}

/// Every binding in `objects` that names `user`, with its role's rules.
fn grants<'a>(objects: &'a BTreeMap<String, Value>, user: &UserInfo) -> Vec<Grant<'a>> {
    let text = |v: &'a Value, p: &str| v.at(p).and_then(Value::as_str).unwrap_or("");
    let mut out = Vec::new();
    for (key, binding) in objects {
        let cluster_wide = key.starts_with(&format!("{RBAC_PREFIX}clusterrolebindings/"));
        if !cluster_wide && !key.starts_with(&format!("{RBAC_PREFIX}rolebindings/")) {
            continue;
        }
        if !rules::binding_applies(binding, user) {
            continue;
        }
        let namespace = text(binding, "/metadata/namespace");
        let (role_kind, role) = (
            text(binding, "/roleRef/kind"),
            text(binding, "/roleRef/name"),
        );
        let role_key = match role_kind {
            "ClusterRole" => format!("{RBAC_PREFIX}clusterroles/{role}"),
            "Role" if !cluster_wide => format!("{RBAC_PREFIX}roles/{namespace}/{role}"),
            _ => continue,
        };
        let rules = objects
            .get(&role_key)
            .and_then(|r| r.get("rules"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        out.push(Grant {
            cluster_wide,
            namespace,
            binding: text(binding, "/metadata/name"),
            role_kind,
            role,
            rules,
        });
    }
    out
}

/// The RBAC decision over a snapshot of the RBAC objects.
fn decide(
    objects: &BTreeMap<String, Value>,
    user: &UserInfo,
    attrs: &Attributes,
) -> (bool, String) {
    let scope =
        (attrs.path.is_none() && !attrs.namespace.is_empty()).then_some(attrs.namespace.as_str());
    grants(objects, user)
        .into_iter()
        .filter(|g| g.reaches(scope))
        .find(|g| g.rules.iter().any(|rule| rules::rule_allows(rule, attrs)))
        .map(|g| (true, g.describe()))
        .unwrap_or((false, String::new()))
}

/// Every rule bound to `user` that applies in `namespace`.
fn rules_in(objects: &BTreeMap<String, Value>, user: &UserInfo, namespace: &str) -> Vec<Value> {
    grants(objects, user)
        .into_iter()
        .filter(|g| g.reaches(Some(namespace)))
        .flat_map(|g| g.rules)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn authorizer() -> Authorizer {
        Authorizer::with_objects(vec![
            (
                format!("{RBAC_PREFIX}clusterroles/view"),
                json!({"metadata": {"name": "view"}, "rules": [{"verbs": ["get", "list", "watch"], "apiGroups": ["", "apps"], "resources": ["pods", "deployments"]}]}),
            ),
            (
                format!("{RBAC_PREFIX}rolebindings/dev/bob-view"),
                json!({"metadata": {"name": "bob-view", "namespace": "dev"}, "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "bob"}]}),
            ),
        ])
    }

    fn bob() -> UserInfo {
        UserInfo::authenticated("bob".into(), vec![])
    }

    fn request(verb: &str, namespace: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            api_group: "apps".into(),
            resource: "deployments".into(),
            namespace: namespace.into(),
            ..Attributes::default()
        }
    }

    #[test]
    fn role_bindings_grant_only_in_their_namespace() {
        let authz = authorizer();
        assert!(authz.allows(&bob(), &request("list", "dev")).0);
        assert!(!authz.allows(&bob(), &request("list", "prod")).0);
        assert!(!authz.allows(&bob(), &request("create", "dev")).0);
        assert!(
            !authz
                .allows(&UserInfo::anonymous(), &request("list", "dev"))
                .0
        );
    }

    #[test]
    fn forbidden_messages_match_kubernetes() {
        assert_eq!(
            request("create", "dev").forbidden_message(&bob()),
            "deployments.apps is forbidden: User \"bob\" cannot create resource \"deployments\" in API group \"apps\" in the namespace \"dev\""
        );
        let mut nodes = request("list", "");
        nodes.api_group = String::new();
        nodes.resource = "nodes".into();
        assert_eq!(
            nodes.forbidden_message(&bob()),
            "nodes is forbidden: User \"bob\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
    }
}
