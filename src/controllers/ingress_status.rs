//! Ingress status for the Ingresses skiff serves: `status.loadBalancer.ingress` lists the
//! InternalIPs of the Ready nodes whose agent runs the ingress role (node label
//! `node.skiff.dev/ingress=true`), since every such node answers on its own address — so
//! `kubectl get ingress` shows an ADDRESS. Ingresses of other classes are another
//! controller's and left alone.

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::informer::{Informer, Informers, object_key};
use super::ownership::enqueue_self;
use super::queue::WorkQueue;
use super::service_lb::{ingress_ips, ready_node_ips, set_load_balancer_ingress};
use super::{Action, Error, Reconcile};
use crate::apiserver::objects::Objects;
use crate::ingress::class::{Classes, ROLE_NODE_LABEL};
use crate::json_path::JsonPath;
use crate::registry::Kind;

pub struct Kinds {
    pub ingresses: &'static dyn Kind,
    pub classes: &'static dyn Kind,
    pub nodes: &'static dyn Kind,
}

pub struct IngressStatusController {
    objects: Objects,
    ingresses_kind: &'static dyn Kind,
    ingresses: Arc<Informer>,
    classes: Arc<Informer>,
    nodes: Arc<Informer>,
}

/// The addresses the served Ingresses get: Ready nodes with the ingress role on.
fn ingress_node_ips(nodes: &[Arc<Value>]) -> Vec<Ipv4Addr> {
    let serving: Vec<Arc<Value>> = nodes
        .iter()
        .filter(|n| {
            n.at("/metadata/labels")
                .and_then(|l| l.get(ROLE_NODE_LABEL))
                .and_then(Value::as_str)
                == Some("true")
        })
        .cloned()
        .collect();
    ready_node_ips(&serving)
}

impl IngressStatusController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        kinds: Kinds,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let ingresses = informers.of(kinds.ingresses);
        ingresses.add_handler(enqueue_self(queue.clone()));
        // A class or a node changing may change every Ingress's owner or addresses.
        let every_ingress = {
            let all = ingresses.clone();
            let queue = queue.clone();
            Arc::new(move |_: Option<&Value>, _: Option<&Value>| {
                for ingress in all.list() {
                    queue.add(object_key(&ingress));
                }
            })
        };
        let classes = informers.of(kinds.classes);
        classes.add_handler(every_ingress.clone());
        let nodes = informers.of(kinds.nodes);
        nodes.add_handler(every_ingress);
        let controller = Arc::new(IngressStatusController {
            objects,
            ingresses_kind: kinds.ingresses,
            ingresses,
            classes,
            nodes,
        });
        (controller, queue)
    }
}

impl Reconcile for IngressStatusController {
    fn name(&self) -> &'static str {
        "ingress-status"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(ingress) = self.ingresses.get(key) else {
            return Ok(Action::Done);
        };
        let classes = self.classes.list();
        if !Classes::new(classes.iter().map(|c| c.as_ref())).owns(&ingress) {
            return Ok(Action::Done);
        }
        let wanted = ingress_node_ips(&self.nodes.list());
        if ingress_ips(&ingress) == wanted {
            return Ok(Action::Done);
        }
        let addresses: Vec<Value> = wanted
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
        set_load_balancer_ingress(&self.objects, self.ingresses_kind, key, addresses).await?;
        tracing::info!(ingress = key, addresses = ?wanted, "Ingress addresses set");
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ready_nodes_with_the_role_on() {
        let node = |ip: &str, ready: &str, role: Option<&str>| {
            let mut node = json!({"metadata": {"labels": {}}, "status": {
                "conditions": [{"type": "Ready", "status": ready}],
                "addresses": [{"type": "InternalIP", "address": ip}]}});
            if let Some(role) = role {
                node["metadata"]["labels"][ROLE_NODE_LABEL] = json!(role);
            }
            Arc::new(node)
        };
        let ips = ingress_node_ips(&[
            node("10.99.0.12", "True", Some("true")),
            node("10.99.0.11", "True", Some("true")),
            node("10.99.0.13", "False", Some("true")),
            node("10.99.0.14", "True", Some("false")),
            node("10.99.0.15", "True", None),
        ]);
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(10, 99, 0, 11), Ipv4Addr::new(10, 99, 0, 12)]
        );
        let ingress = json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.11"}]}}});
        assert_eq!(ingress_ips(&ingress), vec![Ipv4Addr::new(10, 99, 0, 11)]);
    }
}
