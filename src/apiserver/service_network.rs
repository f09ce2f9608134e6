//! Service cluster IPs and node ports: allocated by the API server when a Service is created or
//! changes type, each value held as a claim key (`store::Claims`) written in the same
//! transaction as the Service, so no two Services ever share an IP or a node port, on any member.
//!
//! Defaults follow k3s: service CIDR 10.43.0.0/16 with .1 for the `kubernetes` Service and .10
//! for cluster DNS; node ports 30000-32767.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use rand::Rng as _;
use serde_json::{Value, json};
use skiff_storage::{KeyRange, RangeRequest};

use super::status::ApiError;
use super::store::{Claims, ObjectStore};
use crate::json_path::JsonPath;
use crate::registry::KindInfo;
use crate::registry::fields::{FieldError, FieldErrors};

const IP_CLAIMS: &str = "/registry/claims/serviceips/";
const PORT_CLAIMS: &str = "/registry/claims/nodeports/";

/// The cluster IP of the `default/kubernetes` Service (first address of the range).
pub const KUBERNETES_SERVICE_OFFSET: u32 = 1;
/// The cluster IP reserved for cluster DNS (`.10`, as kubeadm and k3s do).
pub const DNS_SERVICE_OFFSET: u32 = 10;

/// The ClusterIP of `kube-system/kube-dns`, the nameserver in pods' resolv.conf.
pub fn cluster_dns_ip() -> Ipv4Addr {
    ServiceNetwork::default().address(DNS_SERVICE_OFFSET)
}

#[derive(Clone, Debug)]
pub struct ServiceNetwork {
    network: u32,
    prefix_len: u8,
    node_ports: RangeInclusive<u16>,
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        ServiceNetwork {
            network: u32::from(Ipv4Addr::new(10, 43, 0, 0)),
            prefix_len: 16,
            node_ports: 30000..=32767,
        }
    }
}

fn ip_claim(ip: &str) -> String {
    format!("{IP_CLAIMS}{ip}")
}

fn port_claim(port: i64) -> String {
    format!("{PORT_CLAIMS}{port}")
}

/// Whether objects of this kind hold claims (only Services do).
pub fn holds_claims(info: &KindInfo) -> bool {
    info.group.is_empty() && info.resource == "services"
}

fn uses_node_ports(object: &Value) -> bool {
    matches!(
        object.at("/spec/type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    )
}

fn cluster_ip(object: &Value) -> Option<&str> {
    object
        .at("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty())
}

/// The claims a stored object holds (none for kinds other than Service).
pub fn claims_of(info: &KindInfo, object: &Value) -> Vec<String> {
    if !holds_claims(info) {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(ip) = cluster_ip(object).filter(|ip| *ip != "None") {
        out.push(ip_claim(ip));
    }
    for port in node_ports(object) {
        let claim = port_claim(port);
        // One node port may serve both TCP and UDP of the same port.
        if !out.contains(&claim) {
            out.push(claim);
        }
    }
    out
}

fn node_ports(object: &Value) -> Vec<i64> {
    object
        .at("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
        .filter(|p| *p != 0)
        .collect()
}

/// The claims to take and release when `old` becomes `new` (old = None on create).
pub fn claim_changes(info: &KindInfo, new: &Value, old: Option<&Value>) -> Claims {
    let new_claims = claims_of(info, new);
    let old_claims = old.map(|o| claims_of(info, o)).unwrap_or_default();
    Claims {
        take: new_claims
            .iter()
            .filter(|c| !old_claims.contains(c))
            .cloned()
            .collect(),
        release: old_claims
            .iter()
            .filter(|c| !new_claims.contains(c))
            .cloned()
            .collect(),
        guarded: Vec::new(),
    }
}

impl ServiceNetwork {
    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix_len))
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix_len));
        u32::from(ip) & mask == self.network
    }

    pub fn address(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.network + offset)
    }

    /// Fills in a Service's cluster IP and node ports (keeping those of `old` on update) and
    /// checks the ones the client chose. Claim conflicts surface at write time.
    pub async fn assign(
        &self,
        info: &KindInfo,
        store: &ObjectStore,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if !holds_claims(info) {
            return Ok(());
        }
        let name = object
            .at("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut errors = FieldErrors::default();
        self.assign_ip(store, object, old, &mut errors).await?;
        self.assign_node_ports(store, object, old, &mut errors)
            .await?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(info, &name, errors))
        }
    }

    async fn assign_ip(
        &self,
        store: &ObjectStore,
        object: &mut Value,
        old: Option<&Value>,
        errors: &mut FieldErrors,
    ) -> Result<(), ApiError> {
        let is_external_name =
            object.at("/spec/type").and_then(Value::as_str) == Some("ExternalName");
        let old_ip = old.and_then(cluster_ip).map(str::to_string);
        let ip = match (cluster_ip(object).map(str::to_string), old_ip) {
            (Some(new), Some(old)) if new != old => {
                errors.push(FieldError::invalid(
                    "spec.clusterIP",
                    &new,
                    "field is immutable",
                ));
                return Ok(());
            }
            (None, Some(old)) => old,
            (Some(ip), _) if ip == "None" => return Ok(()),
            (Some(ip), None) => {
                match ip.parse::<Ipv4Addr>() {
                    Ok(addr) if self.contains(addr) => {}
                    _ => errors.push(FieldError::invalid(
                        "spec.clusterIPs",
                        &ip,
                        &format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}/{}", self.address(0), self.prefix_len),
                    )),
                }
                ip
            }
            (Some(ip), Some(_)) => ip,
            (None, None) if is_external_name => return Ok(()),
            (None, None) => self.free_ip(store).await?.to_string(),
        };
        let spec = &mut object["spec"];
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        spec["ipFamilies"] = json!(["IPv4"]);
        if spec.get("ipFamilyPolicy").is_none() {
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
        Ok(())
    }

    async fn assign_node_ports(
        &self,
        store: &ObjectStore,
        object: &mut Value,
        old: Option<&Value>,
        errors: &mut FieldErrors,
    ) -> Result<(), ApiError> {
        let wanted = uses_node_ports(object);
        let old_ports: Vec<(i64, String, i64)> = old
            .and_then(|o| o.at("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let node_port = p.get("nodePort").and_then(Value::as_i64)?;
                let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                Some((port, protocol.to_string(), node_port))
            })
            .collect();
        let Some(ports) = object
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut)
        else {
            return Ok(());
        };
        let mut taken_here: Vec<i64> = Vec::new();
        for (i, port) in ports.iter_mut().enumerate() {
            if !wanted {
                if let Some(p) = port.as_object_mut() {
                    p.remove("nodePort");
                }
                continue;
            }
            let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            let node_port = match port
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|p| *p != 0)
            {
                Some(p) => {
                    if !self.node_ports.contains(&(p as u16)) || p > i64::from(u16::MAX) {
                        errors.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            &p.to_string(),
                            &format!(
                                "provided port is not in the valid range. The range of valid ports is {}-{}",
                                self.node_ports.start(),
                                self.node_ports.end()
                            ),
                        ));
                    }
                    p
                }
                None => match old_ports
                    .iter()
                    .find(|(n, proto, _)| *n == number && proto == protocol)
                {
                    Some((_, _, p)) => *p,
                    None => self.free_port(store, &taken_here).await?,
                },
            };
            taken_here.push(node_port);
            port["nodePort"] = json!(node_port);
        }
        Ok(())
    }

    async fn claimed(&self, store: &ObjectStore, prefix: &str) -> Result<Vec<String>, ApiError> {
        let request = RangeRequest {
            range: KeyRange::prefix(prefix),
            keys_only: true,
            ..Default::default()
        };
        let response = store.node().range(&request, false).await?;
        Ok(response
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
            .collect())
    }

    /// A free address, at random (so concurrent creates rarely collide), skipping the network
    /// address, the `kubernetes` and DNS addresses, and the broadcast address.
    async fn free_ip(&self, store: &ObjectStore) -> Result<Ipv4Addr, ApiError> {
        let used = self.claimed(store, IP_CLAIMS).await?;
        let size = self.size();
        let start = rand::rng().random_range(1..size - 1);
        (0..size)
            .map(|i| 1 + (start + i) % (size - 2))
            .filter(|o| *o != KUBERNETES_SERVICE_OFFSET && *o != DNS_SERVICE_OFFSET)
            .map(|o| self.address(o))
            .find(|ip| !used.contains(&ip.to_string()))
            .ok_or_else(|| {
                ApiError::Internal(format!(
                    "the service IP range {}/{} is full",
                    self.address(0),
                    self.prefix_len
                ))
            })
    }

    async fn free_port(&self, store: &ObjectStore, also_used: &[i64]) -> Result<i64, ApiError> {
        let used = self.claimed(store, PORT_CLAIMS).await?;
        let (low, high) = (
            i64::from(*self.node_ports.start()),
            i64::from(*self.node_ports.end()),
        );
        let span = high - low + 1;
        let start = rand::rng().random_range(0..span);
        (0..span)
            .map(|i| low + (start + i) % span)
            .find(|p| !also_used.contains(p) && !used.contains(&p.to_string()))
            .ok_or_else(|| ApiError::Internal("the node port range is full".into()))
    }
}

/// The 422 for a claim another Service holds.
pub fn claim_taken(info: &KindInfo, name: &str, claim: &str) -> ApiError {
    let mut errors = FieldErrors::default();
    if let Some(ip) = claim.strip_prefix(IP_CLAIMS) {
        errors.push(FieldError::invalid(
            "spec.clusterIPs",
            ip,
            &format!("failed to allocate IP {ip}: provided IP is already allocated"),
        ));
    } else if let Some(port) = claim.strip_prefix(PORT_CLAIMS) {
        errors.push(FieldError::invalid(
            "spec.ports.nodePort",
            port,
            "provided port is already allocated",
        ));
    }
    ApiError::invalid(info, name, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> &'static KindInfo {
        crate::registry::lookup("", "v1", "services")
            .expect("services")
            .info()
    }

    #[test]
    fn claims_cover_ip_and_distinct_node_ports() {
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.7", "ports": [
            {"port": 53, "protocol": "TCP", "nodePort": 30053},
            {"port": 53, "protocol": "UDP", "nodePort": 30053},
            {"port": 80, "nodePort": 30080}]}});
        assert_eq!(
            claims_of(services(), &svc),
            vec![
                "/registry/claims/serviceips/10.43.0.7".to_string(),
                "/registry/claims/nodeports/30053".to_string(),
                "/registry/claims/nodeports/30080".to_string()
            ]
        );
        let headless = json!({"spec": {"clusterIP": "None"}});
        assert!(claims_of(services(), &headless).is_empty());
    }

    #[test]
    fn changes_take_new_and_release_dropped() {
        let old =
            json!({"spec": {"clusterIP": "10.43.0.7", "ports": [{"port": 80, "nodePort": 30080}]}});
        let new = json!({"spec": {"clusterIP": "10.43.0.7", "ports": [{"port": 80}]}});
        let c = claim_changes(services(), &new, Some(&old));
        assert!(c.take.is_empty());
        assert_eq!(
            c.release,
            vec!["/registry/claims/nodeports/30080".to_string()]
        );
    }

    #[test]
    fn range_membership() {
        let net = ServiceNetwork::default();
        assert!(net.contains(Ipv4Addr::new(10, 43, 200, 1)));
        assert!(!net.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert_eq!(
            net.address(KUBERNETES_SERVICE_OFFSET),
            Ipv4Addr::new(10, 43, 0, 1)
        );
    }
}
