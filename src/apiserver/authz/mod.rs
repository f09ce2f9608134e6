//! Authorization: RBAC over the Roles, ClusterRoles and their bindings in the store.
//!
//! Every member keeps the RBAC objects of its own replica in memory (listed once, then followed
//! by a watch, relisted if the watch falls behind compaction), so deciding a request costs no
//! store read. A binding written on any member takes effect everywhere within one replication
//! round trip, as with kube-apiserver's informer-fed authorizer.

pub mod defaults;
pub mod reviews;
pub mod rules;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::Method;
use serde_json::Value;
use skiff_raft::RaftNode;
use skiff_storage::{EventKind, KeyRange, RangeRequest, WatchMessage, WatchRequest};

use super::auth::UserInfo;
use super::request::{Query, ResourceTarget};
use super::status::ApiError;

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
        let verb = match *method {
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
    objects: Arc<RwLock<BTreeMap<String, Value>>>,
}

impl Authorizer {
    /// An authorizer following `node`'s replica from now on.
    pub fn follow(node: RaftNode) -> Self {
        let authorizer = Authorizer::default();
        let cache = authorizer.clone();
        tokio::spawn(async move { cache.sync(node).await });
        authorizer
    }

    /// Whether `user` may do `attrs`; the reason is for logs and access reviews.
    pub fn allows(&self, user: &UserInfo, attrs: &Attributes) -> (bool, String) {
        let Ok(objects) = self.objects.read() else {
            return (false, "authorizer state is poisoned".into());
        };
        let role_rules = |kind: &str, namespace: &str, name: &str| -> Vec<Value> {
            let key = match kind {
                "ClusterRole" => format!("{RBAC_PREFIX}clusterroles/{name}"),
                "Role" if !namespace.is_empty() => format!("{RBAC_PREFIX}roles/{namespace}/{name}"),
                _ => return Vec::new(),
            };
            objects
                .get(&key)
                .and_then(|r| r.get("rules"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        for (key, binding) in objects.iter() {
            let cluster_wide = key.starts_with(&format!("{RBAC_PREFIX}clusterrolebindings/"));
            let namespaced = key.starts_with(&format!("{RBAC_PREFIX}rolebindings/"));
            if !cluster_wide && !namespaced {
                continue;
            }
            let binding_ns = binding
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            // A RoleBinding grants only inside its namespace (and never cluster-scoped or
            // non-resource requests).
            if namespaced && (attrs.path.is_some() || attrs.namespace != binding_ns) {
                continue;
            }
            if !rules::binding_applies(binding, user) {
                continue;
            }
            let kind = binding
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = binding
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if role_rules(kind, binding_ns, name)
                .iter()
                .any(|rule| rules::rule_allows(rule, attrs))
            {
                let binding_name = binding
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let how = if cluster_wide {
                    format!(
                        "RBAC: allowed by ClusterRoleBinding {binding_name:?} of {kind} {name:?}"
                    )
                } else {
                    format!(
                        "RBAC: allowed by RoleBinding \"{binding_name}/{binding_ns}\" of {kind} {name:?}"
                    )
                };
                return (true, how);
            }
        }
        (false, String::new())
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
        let Ok(objects) = self.objects.read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, binding) in objects.iter() {
            let cluster_wide = key.starts_with(&format!("{RBAC_PREFIX}clusterrolebindings/"));
            let binding_ns = binding
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let applies_here = cluster_wide
                || (key.starts_with(&format!("{RBAC_PREFIX}rolebindings/"))
                    && binding_ns == namespace);
            if !applies_here || !rules::binding_applies(binding, user) {
                continue;
            }
            let kind = binding
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = binding
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let key = match kind {
                "ClusterRole" => format!("{RBAC_PREFIX}clusterroles/{name}"),
                _ => format!("{RBAC_PREFIX}roles/{binding_ns}/{name}"),
            };
            if let Some(rules) = objects
                .get(&key)
                .and_then(|r| r.get("rules"))
                .and_then(Value::as_array)
            {
                out.extend(rules.iter().cloned());
            }
        }
        out
    }

    /// Keeps the cache equal to the replica: list, then watch; relist when the watch ends.
    async fn sync(&self, node: RaftNode) {
        loop {
            match self.list_and_watch(&node).await {
                Ok(()) => tracing::debug!("RBAC watch ended; relisting"),
                Err(e) => tracing::warn!(error = %e, "RBAC cache sync failed; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn list_and_watch(&self, node: &RaftNode) -> Result<(), ApiError> {
        let request = RangeRequest {
            range: KeyRange::prefix(RBAC_PREFIX),
            ..Default::default()
        };
        // This member's own replica: the cache follows it, like every read of a follower.
        let listed = node.range(&request, true).await?;
        let mut fresh = BTreeMap::new();
        for kv in &listed.kvs {
            if let Ok(value) = serde_json::from_slice::<Value>(&kv.value) {
                fresh.insert(String::from_utf8_lossy(&kv.key).into_owned(), value);
            }
        }
        if let Ok(mut objects) = self.objects.write() {
            *objects = fresh;
        }
        let mut watcher = node
            .watch_hub()
            .watch(WatchRequest {
                range: KeyRange::prefix(RBAC_PREFIX),
                start_revision: listed.revision + 1,
                prev_kv: false,
                progress_notify: false,
            })
            .map_err(|e| ApiError::Internal(format!("RBAC watch: {e}")))?;
        while let Some(message) = watcher.next().await {
            let WatchMessage::Events { events, .. } = message else {
                if let WatchMessage::Closed(_) = message {
                    return Ok(());
                }
                continue;
            };
            let Ok(mut objects) = self.objects.write() else {
                return Err(ApiError::Internal("authorizer state is poisoned".into()));
            };
            for event in events {
                let key = String::from_utf8_lossy(&event.kv.key).into_owned();
                match event.kind {
                    EventKind::Put => {
                        if let Ok(value) = serde_json::from_slice::<Value>(&event.kv.value) {
                            objects.insert(key, value);
                        }
                    }
                    EventKind::Delete => {
                        objects.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn with_objects(objects: Vec<(String, Value)>) -> Self {
        Authorizer {
            objects: Arc::new(RwLock::new(objects.into_iter().collect())),
        }
    }
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
