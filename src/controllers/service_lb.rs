//! LoadBalancer Services get their ingress addresses here, so `kubectl get svc` shows an
//! EXTERNAL-IP instead of `<pending>` forever on a cluster without a cloud:
//! - with an address pool (`skiff server --service-lb-pool 10.0.0.200-10.0.0.220`, MetalLB's
//!   L2 idea) each Service gets one free pool address (its `spec.loadBalancerIP` when that is
//!   in the pool and free), announced on the network by one Ready node's proxy;
//! - without one, the Ready nodes' InternalIPs (k3s's ServiceLB): every node's proxy already
//!   accepts the Service's port on its own address.
//!
//! Services that change to another type lose the addresses; a Service with a
//! `loadBalancerClass` belongs to another implementation and is left alone.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::informer::{Informer, Informers};
use super::ownership::{enqueue_self, is_deleting};
use super::queue::WorkQueue;
use super::{Action, Error, Reconcile, modify};
use crate::apiserver::objects::{Objects, Part};
use crate::json_path::JsonPath;
use crate::registry::{Kind, node};

/// How long an exhausted pool waits before trying again.
const POOL_EXHAUSTED_RETRY: Duration = Duration::from_secs(30);

/// Addresses LoadBalancer Services may take: ranges `A-B` or CIDRs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPool {
    /// Inclusive ranges.
    ranges: Vec<(u32, u32)>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IPv4 range (A-B) or CIDR (A/N)")]
pub struct PoolSyntaxError(String);

impl FromStr for AddressPool {
    type Err = PoolSyntaxError;

    /// `10.0.0.200-10.0.0.220`, `10.0.0.192/27`, or several comma-separated.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || PoolSyntaxError(text.to_string());
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let range = if let Some((first, last)) = part.split_once('-') {
                let first: Ipv4Addr = first.trim().parse().map_err(|_| bad())?;
                let last: Ipv4Addr = last.trim().parse().map_err(|_| bad())?;
                (u32::from(first), u32::from(last))
            } else if let Some((base, bits)) = part.split_once('/') {
                let base: Ipv4Addr = base.parse().map_err(|_| bad())?;
                let bits: u32 = bits.parse().map_err(|_| bad())?;
                if bits > 32 {
                    return Err(bad());
                }
                let size = 1u64 << (32 - bits);
                let first = u32::from(base) & !((size - 1) as u32);
                (first, (first as u64 + size - 1) as u32)
            } else {
                let ip: Ipv4Addr = part.parse().map_err(|_| bad())?;
                (u32::from(ip), u32::from(ip))
            };
            if range.0 > range.1 {
                return Err(bad());
            }
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err(bad());
        }
        Ok(AddressPool { ranges })
    }
}

impl AddressPool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&ip))
    }

    fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|(a, b)| (*a..=*b).map(Ipv4Addr::from))
    }
}

pub struct ServiceLbController {
    objects: Objects,
    services_kind: &'static dyn Kind,
    services: Arc<Informer>,
    nodes: Arc<Informer>,
    pool: Option<AddressPool>,
    /// Pool address -> the Service (`ns/name`) this controller gave it to. The cache lags this
    /// controller's own writes; this map does not. The lock also serializes reconciles, so two
    /// Services never get the same address.
    assigned: Mutex<BTreeMap<Ipv4Addr, String>>,
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The IPs in `status.loadBalancer.ingress` (a Service's or an Ingress's).
pub(crate) fn ingress_ips(service: &Value) -> Vec<Ipv4Addr> {
    service
        .at("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("ip").and_then(Value::as_str)?.parse().ok())
        .collect()
}

fn key_of(service: &Value) -> String {
    format!(
        "{}/{}",
        text(service, "/metadata/namespace"),
        text(service, "/metadata/name")
    )
}

/// Whether this controller gives `service` addresses.
fn wants_addresses(service: &Value) -> bool {
    text(service, "/spec/type") == "LoadBalancer"
        && service.at("/spec/loadBalancerClass").is_none()
        && !is_deleting(service)
}

/// The InternalIPs of the Ready nodes, sorted.
pub(crate) fn ready_node_ips(nodes: &[Arc<Value>]) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = nodes
        .iter()
        .filter(|n| node::is_ready(n))
        .flat_map(|n| node::internal_ips(n))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

impl ServiceLbController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        services_kind: &'static dyn Kind,
        nodes_kind: &'static dyn Kind,
        pool: Option<AddressPool>,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let services = informers.of(services_kind);
        services.add_handler(enqueue_self(queue.clone()));
        let nodes = informers.of(nodes_kind);
        // Without a pool the addresses are the nodes': every LoadBalancer follows them.
        if pool.is_none() {
            let all = services.clone();
            let queue = queue.clone();
            nodes.add_handler(Arc::new(move |_, _| {
                for service in all.list() {
                    if wants_addresses(&service) {
                        queue.add(key_of(&service));
                    }
                }
            }));
        }
        let controller = Arc::new(ServiceLbController {
            objects,
            services_kind,
            services,
            nodes,
            pool,
            assigned: Mutex::new(BTreeMap::new()),
        });
        (controller, queue)
    }

    /// Whether `ip` is an address this controller gives LoadBalancers.
    fn hands_out(&self, ip: Ipv4Addr) -> bool {
        match &self.pool {
            Some(pool) => pool.contains(ip),
            None => self
                .nodes
                .list()
                .iter()
                .any(|n| node::internal_ips(n).contains(&ip)),
        }
    }

    /// A pool address for `key`: the one it holds, its requested one, or the lowest free one.
    fn pick(
        &self,
        pool: &AddressPool,
        key: &str,
        service: &Value,
        assigned: &BTreeMap<Ipv4Addr, String>,
    ) -> Option<Ipv4Addr> {
        let mut taken: BTreeMap<Ipv4Addr, String> = assigned.clone();
        for other in self.services.list() {
            let other_key = key_of(&other);
            if other_key != key && wants_addresses(&other) {
                for ip in ingress_ips(&other) {
                    taken.entry(ip).or_insert(other_key.clone());
                }
            }
        }
        let free = |ip: &Ipv4Addr| pool.contains(*ip) && taken.get(ip).is_none_or(|k| k == key);
        let requested = text(service, "/spec/loadBalancerIP")
            .parse::<Ipv4Addr>()
            .ok();
        ingress_ips(service)
            .into_iter()
            .chain(requested)
            .find(free)
            .or_else(|| pool.addresses().find(free))
    }
}

impl Reconcile for ServiceLbController {
    fn name(&self) -> &'static str {
        "service-lb"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let mut assigned = self.assigned.lock().await;
        let service = self.services.get(key);
        assigned.retain(|_, owner| owner != key);
        let Some(service) = service else {
            return Ok(Action::Done);
        };
        let wanted: Vec<Ipv4Addr> = if !wants_addresses(&service) {
            // Only addresses this controller hands out are taken back (a type change away
            // from LoadBalancer); a status someone else wrote is theirs.
            let held = ingress_ips(&service);
            if held.is_empty() || !held.iter().all(|ip| self.hands_out(*ip)) {
                return Ok(Action::Done);
            }
            Vec::new()
        } else if let Some(pool) = &self.pool {
            match self.pick(pool, key, &service, &assigned) {
                Some(ip) => vec![ip],
                None => {
                    tracing::warn!(service = key, "the LoadBalancer address pool is exhausted");
                    return Ok(Action::RequeueAfter(POOL_EXHAUSTED_RETRY));
                }
            }
        } else {
            ready_node_ips(&self.nodes.list())
        };
        if let Some(pool) = &self.pool {
            for ip in wanted.iter().filter(|ip| pool.contains(**ip)) {
                assigned.insert(*ip, key.to_string());
            }
        }
        if ingress_ips(&service) == wanted {
            return Ok(Action::Done);
        }
        let ingress: Vec<Value> = wanted
            .iter()
            .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
            .collect();
        set_load_balancer_ingress(&self.objects, self.services_kind, key, ingress).await?;
        tracing::info!(service = key, addresses = ?wanted, "LoadBalancer addresses set");
        Ok(Action::Done)
    }
}

/// Writes `status.loadBalancer.ingress` of the object `key` (`namespace/name`) of `kind` —
/// a Service's or an Ingress's, the same field — with `entries` (none: `loadBalancer: {}`).
pub(crate) async fn set_load_balancer_ingress(
    objects: &Objects,
    kind: &'static dyn Kind,
    key: &str,
    entries: Vec<Value>,
) -> Result<(), Error> {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    modify(
        objects,
        kind,
        Some(namespace),
        name,
        Part::Status,
        |current| {
            current["status"]["loadBalancer"] = if entries.is_empty() {
                json!({})
            } else {
                json!({"ingress": entries.clone()})
            };
        },
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_ranges_cidrs_and_lists() {
        let pool: AddressPool = "10.99.0.200-10.99.0.202, 10.99.1.0/31"
            .parse()
            .expect("pool");
        let all: Vec<String> = pool.addresses().map(|ip| ip.to_string()).collect();
        assert_eq!(
            all,
            [
                "10.99.0.200",
                "10.99.0.201",
                "10.99.0.202",
                "10.99.1.0",
                "10.99.1.1"
            ]
        );
        assert!(pool.contains("10.99.0.201".parse().expect("ip")));
        assert!(!pool.contains("10.99.0.203".parse().expect("ip")));
        for bad in ["", "10.0.0.5-10.0.0.1", "10.0.0.0/33", "nope"] {
            assert!(bad.parse::<AddressPool>().is_err(), "{bad}");
        }
    }

    #[test]
    fn node_addresses_only_of_ready_nodes() {
        let node = |ip: &str, ready: &str| {
            Arc::new(json!({"status": {
                "conditions": [{"type": "Ready", "status": ready}],
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": "x"}]}}))
        };
        let ips = ready_node_ips(&[
            node("10.99.0.12", "True"),
            node("10.99.0.11", "True"),
            node("10.99.0.13", "Unknown"),
        ]);
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(10, 99, 0, 11), Ipv4Addr::new(10, 99, 0, 12)]
        );
    }
}
