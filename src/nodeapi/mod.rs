//! The control plane's side of node agents: the `NodeAgent` gRPC service on the API port.
//!
//! Agents (kubelet + kube-proxy) use only this service, never the REST API. Every call but
//! `JoinNode` needs the client certificate `JoinNode` issued (CN `system:node:<name>`, O
//! `system:nodes`), and a node may only touch its own Node, Lease and pods, and read what its
//! pods use (see `access`). Writes go through the same `Objects` path as REST requests, so
//! validation, resourceVersions and watches behave the same.

mod access;
pub mod mirror_pods;
pub mod pod_cidr;

use std::pin::Pin;

use serde_json::{Value, json};
use skiff_proto::agent::node_agent_server::{NodeAgent, NodeAgentServer};
use skiff_proto::agent::{
    DeletePodRequest, DeletePodResponse, GetRequest, JoinNodeRequest, JoinNodeResponse, Object,
    PodStatusRequest, RecordEventResponse, RenewLeaseRequest, RenewLeaseResponse,
    ServiceAccountTokenRequest, ServiceAccountTokenResponse, WatchEvent, WatchRequest, watch_event,
};
use skiff_raft::RaftNode;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::apiserver::objects::{DeleteOptions, ListOptions, Objects, Part, Scope, WriteOptions};
use crate::apiserver::selector::{FieldSelector, LabelSelector};
use crate::apiserver::status::ApiError;
use crate::apiserver::tokens::{TokenIssuer, TokenSubject};
use crate::apiserver::watch::{Change, WatchSpec};
use crate::json_path::JsonPath;
use crate::pki::{ClusterCa, JoinToken};
use crate::registry::pod::service_account_of;
use crate::registry::{self, Kind};
use crate::server::api_listener::ClientCertificate;
use access::WatchScope;

/// Annotation marking a Node as run by a skiff agent (graceful pod deletion waits for it).
pub const AGENT_ANNOTATION: &str = "node.skiff.io/agent";
/// Events buffered per agent watch before the hub's own queue takes the strain.
const WATCH_BUFFER: usize = 256;

pub struct NodeApi {
    objects: Objects,
    node: RaftNode,
    ca: ClusterCa,
    token: JoinToken,
    tokens: TokenIssuer,
}

impl NodeApi {
    pub fn server(
        objects: Objects,
        node: RaftNode,
        ca: ClusterCa,
        token: JoinToken,
    ) -> NodeAgentServer<Self> {
        let tokens = TokenIssuer::new(objects.store().clone());
        NodeAgentServer::new(NodeApi {
            objects,
            node,
            ca,
            token,
            tokens,
        })
        .max_decoding_message_size(8 << 20)
    }
}

fn kind(resource: &str) -> Result<&'static dyn Kind, Status> {
    let found = match resource {
        "endpointslices" => registry::lookup("discovery.k8s.io", "v1", resource),
        "ingresses" | "ingressclasses" => registry::lookup("networking.k8s.io", "v1", resource),
        "leases" => registry::lookup("coordination.k8s.io", "v1", resource),
        _ => registry::lookup("", "v1", resource),
    };
    found.ok_or_else(|| Status::invalid_argument(format!("unknown resource {resource:?}")))
}

/// The calling node's name, from its verified client certificate.
fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    let cert = request
        .extensions()
        .get::<ClientCertificate>()
        .filter(|c| c.verified)
        .ok_or_else(|| Status::unauthenticated("a node certificate is required"))?;
    let name = cert
        .common_name
        .strip_prefix("system:node:")
        .filter(|_| cert.organizations.iter().any(|o| o == "system:nodes"))
        .ok_or_else(|| {
            Status::permission_denied(format!("{:?} is not a node identity", cert.common_name))
        })?;
    Ok(name.to_string())
}

/// An API error as the gRPC status agents act on.
fn status(error: ApiError) -> Status {
    let message = error.to_string();
    match error.code().as_u16() {
        400 | 422 => Status::invalid_argument(message),
        401 => Status::unauthenticated(message),
        403 => Status::permission_denied(message),
        404 => Status::not_found(message),
        409 => Status::aborted(message),
        410 => Status::out_of_range(message),
        429 | 503 => Status::unavailable(message),
        504 => Status::deadline_exceeded(message),
        _ => Status::internal(message),
    }
}

fn decode(bytes: &[u8]) -> Result<Value, Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("invalid JSON: {e}")))
}

fn encode(value: &Value) -> Object {
    Object {
        object: serde_json::to_vec(value).unwrap_or_default(),
    }
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.at(pointer).and_then(Value::as_str).unwrap_or("")
}

fn agent_write() -> WriteOptions {
    WriteOptions {
        field_manager: Some("skiff-agent".into()),
        ..WriteOptions::default()
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for NodeApi {
    #[instrument(skip_all, fields(node = %request.get_ref().node_name))]
    async fn join_node(
        &self,
        request: Request<JoinNodeRequest>,
    ) -> Result<Response<JoinNodeResponse>, Status> {
        let request = request.into_inner();
        if !self.token.secret_matches(&request.token_secret) {
            return Err(Status::permission_denied("invalid join token"));
        }
        let name = request.node_name.trim();
        if name.is_empty() || !registry::fields::is_dns1123_subdomain(name) {
            return Err(Status::invalid_argument(format!(
                "node name {name:?} must be a DNS subdomain"
            )));
        }
        let issued = self
            .ca
            .issue_agent(name, &request.san)
            .map_err(|e| Status::internal(e.to_string()))?;
        info!(node = name, "issued a node certificate");
        Ok(Response::new(JoinNodeResponse {
            ca_cert_pem: self.ca.ca.cert_pem.clone(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            api_addrs: self
                .node
                .members()
                .into_iter()
                .map(|m| m.info.api_addr)
                .collect(),
        }))
    }

    #[instrument(skip_all)]
    async fn register_node(&self, request: Request<Object>) -> Result<Response<Object>, Status> {
        let name = caller(&request)?;
        let mut wanted = decode(&request.get_ref().object)?;
        if text(&wanted, "/metadata/name") != name {
            return Err(Status::permission_denied(format!(
                "node {name} may only register itself"
            )));
        }
        let cidr = pod_cidr::assign(self.objects.store(), &name)
            .await
            .map_err(status)?;
        let nodes = kind("nodes")?;
        let scope = Scope::new(nodes, None);
        wanted["metadata"]["annotations"][AGENT_ANNOTATION] = json!("true");
        let stored = match self.objects.get(scope, &name, true).await {
            Ok(_) => {
                let update = |current: &Value| -> Result<Value, ApiError> {
                    let mut next = current.clone();
                    for field in ["labels", "annotations"] {
                        if let Some(map) = wanted.at(&format!("/metadata/{field}")) {
                            for (k, v) in map.as_object().into_iter().flatten() {
                                next["metadata"][field][k] = v.clone();
                            }
                        }
                    }
                    if text(&next, "/spec/podCIDR").is_empty() {
                        next["spec"]["podCIDR"] = json!(cidr);
                        next["spec"]["podCIDRs"] = json!([cidr]);
                    }
                    Ok(next)
                };
                self.objects
                    .update_with(scope, &name, Part::Main, &update, &agent_write())
                    .await
            }
            Err(ApiError::NotFound { .. }) => {
                wanted["spec"]["podCIDR"] = json!(cidr);
                wanted["spec"]["podCIDRs"] = json!([cidr]);
                let status = wanted.get("status").cloned();
                match self
                    .objects
                    .create_with(scope, wanted, &agent_write())
                    .await
                {
                    Ok(created) => match status {
                        Some(status) => self.write_node_status(&name, status).await,
                        None => Ok(created),
                    },
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
        .map_err(status)?;
        info!(node = name, pod_cidr = %cidr, "node registered");
        Ok(Response::new(encode(&stored)))
    }

    #[instrument(skip_all)]
    async fn update_node_status(
        &self,
        request: Request<Object>,
    ) -> Result<Response<Object>, Status> {
        let name = caller(&request)?;
        let node = decode(&request.get_ref().object)?;
        let new_status = node.get("status").cloned().unwrap_or(json!({}));
        let stored = self
            .write_node_status(&name, new_status)
            .await
            .map_err(status)?;
        Ok(Response::new(encode(&stored)))
    }

    #[instrument(skip_all)]
    async fn renew_lease(
        &self,
        request: Request<RenewLeaseRequest>,
    ) -> Result<Response<RenewLeaseResponse>, Status> {
        let name = caller(&request)?;
        let duration = request.get_ref().lease_duration_seconds.clamp(1, 3600);
        self.renew(&name, duration).await.map_err(status)?;
        Ok(Response::new(RenewLeaseResponse {}))
    }

    type WatchStream = WatchStream;

    #[instrument(skip_all, fields(resource = %request.get_ref().resource))]
    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let name = caller(&request)?;
        let request = request.into_inner();
        let scope = access::watchable(&request.resource).ok_or_else(|| {
            Status::permission_denied(format!("nodes may not watch {}", request.resource))
        })?;
        let mut fields = FieldSelector::parse(&request.field_selector).map_err(status)?;
        if scope == WatchScope::OwnPods {
            let own = FieldSelector::parse(&format!("spec.nodeName={name}")).map_err(status)?;
            if request.field_selector.replace(' ', "") != format!("spec.nodeName={name}") {
                return Err(Status::permission_denied(format!(
                    "node {name} may only watch pods with fieldSelector spec.nodeName={name}"
                )));
            }
            fields = own;
        }
        let tls_only = scope == WatchScope::IngressTlsSecret;
        if tls_only {
            let secret = access::single_secret_selector(&request.field_selector)
                .filter(|_| !request.namespace.is_empty())
                .ok_or_else(|| {
                    Status::permission_denied(
                        "nodes watch Secrets one at a time: a namespace and fieldSelector metadata.name=<name>",
                    )
                })?;
            if !self.ingress_tls_allowed(&request.namespace, secret).await? {
                return Err(Status::permission_denied(format!(
                    "no Ingress served by skiff names secret {}/{secret} in spec.tls (node {name})",
                    request.namespace
                )));
            }
            fields = FieldSelector::parse(&format!("metadata.name={secret}")).map_err(status)?;
        }
        let selectors = ListOptions {
            labels: LabelSelector::parse(&request.label_selector).map_err(status)?,
            fields,
            ..ListOptions::default()
        };
        let namespace = Some(request.namespace.as_str()).filter(|ns| !ns.is_empty());
        let changes = crate::apiserver::watch::changes(
            &self.objects,
            WatchSpec {
                kind: kind(&request.resource)?,
                namespace,
                selectors,
                after: (request.resource_version > 0).then_some(request.resource_version),
                progress: true,
            },
            WATCH_BUFFER,
        )
        .await
        .map_err(status)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(changes);
        // An ingress-scoped Secret watch carries only TLS Secrets, whatever else takes the name.
        let stream = tokio_stream::StreamExt::filter(stream, move |change| match change {
            Change::Event(_, object) => !tls_only || access::is_tls_secret(object),
            _ => true,
        });
        let events = tokio_stream::StreamExt::map(stream, |change| match change {
            Change::Event(kind, object) => {
                let event_type = match kind {
                    "ADDED" => watch_event::Type::Added,
                    "MODIFIED" => watch_event::Type::Modified,
                    _ => watch_event::Type::Deleted,
                };
                let revision = text(&object, "/metadata/resourceVersion")
                    .parse()
                    .unwrap_or(0);
                Ok(WatchEvent {
                    r#type: event_type as i32,
                    resource_version: revision,
                    object: serde_json::to_vec(&object).unwrap_or_default(),
                })
            }
            Change::Synced(revision) => Ok(WatchEvent {
                r#type: watch_event::Type::Synced as i32,
                resource_version: revision,
                object: Vec::new(),
            }),
            Change::Progress(revision) => Ok(WatchEvent {
                r#type: watch_event::Type::Bookmark as i32,
                resource_version: revision,
                object: Vec::new(),
            }),
            Change::Expired {
                requested,
                compacted,
            } => Err(Status::out_of_range(format!(
                "too old resource version: {requested} ({compacted})"
            ))),
        });
        Ok(Response::new(Box::pin(events)))
    }

    #[instrument(skip_all, fields(resource = %request.get_ref().resource, name = %request.get_ref().name))]
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Object>, Status> {
        let node_name = caller(&request)?;
        let GetRequest {
            resource,
            namespace,
            name,
        } = request.into_inner();
        let namespace = Some(namespace.as_str()).filter(|ns| !ns.is_empty());
        let allowed = match resource.as_str() {
            "services" | "endpointslices" | "nodes" | "namespaces" | "persistentvolumes" => true,
            "pods" => {
                let pod = self
                    .objects
                    .get(Scope::new(kind("pods")?, namespace), &name, false)
                    .await
                    .map_err(status)?;
                return if text(&pod, "/spec/nodeName") == node_name {
                    Ok(Response::new(encode(&pod)))
                } else {
                    Err(Status::permission_denied(format!(
                        "pod {name} is not bound to node {node_name}"
                    )))
                };
            }
            "secrets" | "configmaps" | "persistentvolumeclaims" | "serviceaccounts" => {
                let ns = namespace.ok_or_else(|| Status::invalid_argument("namespace required"))?;
                let used = self
                    .own_pods(&node_name, ns)
                    .await?
                    .iter()
                    .any(|pod| access::pod_uses(pod, &resource, &name));
                if !used && resource == "secrets" && self.ingress_tls_allowed(ns, &name).await? {
                    let secret = self
                        .objects
                        .get(Scope::new(kind("secrets")?, namespace), &name, false)
                        .await
                        .map_err(status)?;
                    return if access::is_tls_secret(&secret) {
                        Ok(Response::new(encode(&secret)))
                    } else {
                        Err(Status::permission_denied(format!(
                            "secret {ns}/{name} is not of type {}",
                            access::TLS_SECRET_TYPE
                        )))
                    };
                }
                used
            }
            _ => false,
        };
        if !allowed {
            return Err(Status::permission_denied(format!(
                "no pod of node {node_name} uses {resource}/{name}"
            )));
        }
        let object = self
            .objects
            .get(Scope::new(kind(&resource)?, namespace), &name, false)
            .await
            .map_err(status)?;
        Ok(Response::new(encode(&object)))
    }

    #[instrument(skip_all, fields(pod = %request.get_ref().name))]
    async fn update_pod_status(
        &self,
        request: Request<PodStatusRequest>,
    ) -> Result<Response<Object>, Status> {
        let node_name = caller(&request)?;
        let request = request.into_inner();
        let new_status = decode(&request.status)?;
        let scope = Scope::new(kind("pods")?, Some(&request.namespace));
        let update = |current: &Value| -> Result<Value, ApiError> {
            if text(current, "/spec/nodeName") != node_name
                || text(current, "/metadata/uid") != request.uid
            {
                return Err(ApiError::Forbidden(format!(
                    "pod {} (uid {}) is not bound to node {node_name}",
                    request.name, request.uid
                )));
            }
            let mut next = current.clone();
            next["status"] = new_status.clone();
            Ok(next)
        };
        let stored = self
            .objects
            .update_with(scope, &request.name, Part::Status, &update, &agent_write())
            .await
            .map_err(status)?;
        Ok(Response::new(encode(&stored)))
    }

    #[instrument(skip_all)]
    async fn create_mirror_pod(
        &self,
        request: Request<Object>,
    ) -> Result<Response<Object>, Status> {
        let node_name = caller(&request)?;
        let pod = decode(&request.get_ref().object)?;
        let kinds = (kind("pods")?, kind("nodes")?);
        let stored = mirror_pods::create(&self.objects, kinds, &node_name, pod, &agent_write())
            .await
            .map_err(status)?;
        Ok(Response::new(encode(&stored)))
    }

    #[instrument(skip_all, fields(pod = %request.get_ref().name))]
    async fn delete_pod(
        &self,
        request: Request<DeletePodRequest>,
    ) -> Result<Response<DeletePodResponse>, Status> {
        let node_name = caller(&request)?;
        let request = request.into_inner();
        let scope = Scope::new(kind("pods")?, Some(&request.namespace));
        let pod = match self.objects.get(scope, &request.name, true).await {
            Ok(pod) => pod,
            Err(ApiError::NotFound { .. }) => return Ok(Response::new(DeletePodResponse {})),
            Err(e) => return Err(status(e)),
        };
        if text(&pod, "/spec/nodeName") != node_name || text(&pod, "/metadata/uid") != request.uid {
            return Err(Status::permission_denied(format!(
                "pod {} (uid {}) is not bound to node {node_name}",
                request.name, request.uid
            )));
        }
        let options = DeleteOptions {
            uid: Some(request.uid.clone()),
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        match self.objects.delete(scope, &request.name, &options).await {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(Response::new(DeletePodResponse {})),
            Err(e) => Err(status(e)),
        }
    }

    #[instrument(skip_all)]
    async fn record_event(
        &self,
        request: Request<Object>,
    ) -> Result<Response<RecordEventResponse>, Status> {
        let node_name = caller(&request)?;
        let mut event = decode(&request.get_ref().object)?;
        let involved_kind = text(&event, "/involvedObject/kind");
        let allowed = match involved_kind {
            "Node" => text(&event, "/involvedObject/name") == node_name,
            "Pod" => true,
            _ => false,
        };
        if !allowed {
            return Err(Status::permission_denied(format!(
                "node {node_name} may not record events about {involved_kind}"
            )));
        }
        let namespace = match text(&event, "/metadata/namespace") {
            "" => "default".to_string(),
            ns => ns.to_string(),
        };
        event["metadata"]["namespace"] = json!(namespace);
        event["source"] = json!({"component": "kubelet", "host": node_name});
        event["reportingComponent"] = json!("kubelet");
        event["reportingInstance"] = json!(node_name);
        let scope = Scope::new(kind("events")?, Some(&namespace));
        match self.objects.create(scope, event, false).await {
            // The namespace may be going away with its pods: nothing to record it in.
            Ok(_) | Err(ApiError::NotFound { .. }) | Err(ApiError::Forbidden(_)) => {
                Ok(Response::new(RecordEventResponse {}))
            }
            Err(e) => Err(status(e)),
        }
    }

    #[instrument(skip_all, fields(pod = %request.get_ref().pod_name))]
    async fn service_account_token(
        &self,
        request: Request<ServiceAccountTokenRequest>,
    ) -> Result<Response<ServiceAccountTokenResponse>, Status> {
        let node_name = caller(&request)?;
        let request = request.into_inner();
        let pod = self
            .objects
            .get(
                Scope::new(kind("pods")?, Some(&request.namespace)),
                &request.pod_name,
                false,
            )
            .await
            .map_err(status)?;
        let account = service_account_of(&pod);
        if text(&pod, "/spec/nodeName") != node_name
            || text(&pod, "/metadata/uid") != request.pod_uid
            || account != request.service_account
        {
            return Err(Status::permission_denied(format!(
                "pod {} does not run on node {node_name} as {}",
                request.pod_name, request.service_account
            )));
        }
        let sa = self
            .objects
            .get(
                Scope::new(kind("serviceaccounts")?, Some(&request.namespace)),
                account,
                false,
            )
            .await
            .map_err(status)?;
        let subject = TokenSubject {
            namespace: request.namespace.clone(),
            name: account.to_string(),
            uid: text(&sa, "/metadata/uid").to_string(),
        };
        let ttl = (request.expiration_seconds > 0).then_some(request.expiration_seconds);
        let (token, expires) = self
            .tokens
            .issue(&subject, &request.audiences, ttl)
            .await
            .map_err(status)?;
        Ok(Response::new(ServiceAccountTokenResponse {
            token,
            expiration_unix: expires.as_second(),
        }))
    }
}

impl NodeApi {
    /// Replaces the Node's status, keeping what the control plane owns (nothing today but
    /// conditions written by others are overwritten by design: the agent owns NodeReady).
    async fn write_node_status(&self, name: &str, new_status: Value) -> Result<Value, ApiError> {
        let nodes = registry::lookup("", "v1", "nodes")
            .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
        let update = |current: &Value| -> Result<Value, ApiError> {
            let mut next = current.clone();
            next["status"] = new_status.clone();
            Ok(next)
        };
        self.objects
            .update_with(
                Scope::new(nodes, None),
                name,
                Part::Status,
                &update,
                &agent_write(),
            )
            .await
    }

    /// Creates or renews `kube-node-lease/<node>`.
    async fn renew(&self, name: &str, duration: i32) -> Result<(), ApiError> {
        let leases = registry::lookup("coordination.k8s.io", "v1", "leases")
            .ok_or_else(|| ApiError::Internal("leases are not registered".into()))?;
        let scope = Scope::new(leases, Some("kube-node-lease"));
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let renew = |current: &Value| -> Result<Value, ApiError> {
            let mut next = current.clone();
            next["spec"]["holderIdentity"] = json!(name);
            next["spec"]["leaseDurationSeconds"] = json!(duration);
            next["spec"]["renewTime"] = json!(now);
            Ok(next)
        };
        match self
            .objects
            .update_with(scope, name, Part::Main, &renew, &WriteOptions::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(ApiError::NotFound { .. }) => {
                let nodes = registry::lookup("", "v1", "nodes")
                    .ok_or_else(|| ApiError::Internal("nodes are not registered".into()))?;
                let node = self
                    .objects
                    .get(Scope::new(nodes, None), name, false)
                    .await?;
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": name,
                        "namespace": "kube-node-lease",
                        "ownerReferences": [{
                            "apiVersion": "v1", "kind": "Node", "name": name,
                            "uid": text(&node, "/metadata/uid"),
                        }],
                    },
                    "spec": {
                        "holderIdentity": name,
                        "leaseDurationSeconds": duration,
                        "renewTime": now,
                    },
                });
                match self.objects.create(scope, lease, false).await {
                    Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Whether an Ingress skiff serves in `namespace` names the Secret `secret` in spec.tls.
    /// Checked when a read or watch starts (as Kubernetes' Node authorizer does); an agent
    /// drops a Secret's watch itself once no Ingress names it.
    async fn ingress_tls_allowed(&self, namespace: &str, secret: &str) -> Result<bool, Status> {
        let local = ListOptions {
            any_revision: true,
            ..ListOptions::default()
        };
        let ingresses = self
            .objects
            .list(Scope::new(kind("ingresses")?, Some(namespace)), &local)
            .await
            .map_err(status)?;
        let classes = self
            .objects
            .list(Scope::new(kind("ingressclasses")?, None), &local)
            .await
            .map_err(status)?;
        Ok(access::ingress_uses_tls_secret(
            &ingresses.items,
            &classes.items,
            secret,
        ))
    }

    async fn own_pods(&self, node: &str, namespace: &str) -> Result<Vec<Value>, Status> {
        let options = ListOptions {
            fields: FieldSelector::parse(&format!("spec.nodeName={node}")).map_err(status)?,
            any_revision: true,
            ..ListOptions::default()
        };
        let list = self
            .objects
            .list(Scope::new(kind("pods")?, Some(namespace)), &options)
            .await
            .map_err(status)?;
        Ok(list.items)
    }
}
