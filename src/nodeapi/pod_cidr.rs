//! Pod CIDR assignment: each Node gets its own /24 out of the cluster CIDR (10.42.0.0/16), held
//! as a claim key in the store so two nodes can never get the same range, whichever member
//! they registered through. (A deleted node's range is not given back yet: 256 registrations.)

use std::net::Ipv4Addr;

use serde_json::json;

use crate::apiserver::status::ApiError;
use crate::apiserver::store::{CreateOutcome, ObjectStore};

/// The cluster's pod network.
pub const CLUSTER_CIDR_BASE: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 0);
/// The same, as a CIDR (the proxy's and the egress masquerade's "inside").
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";
/// /24 per node out of a /16: 256 nodes.
const NODE_RANGES: u32 = 256;

fn claim_key(index: u32) -> String {
    format!("/registry/claims/podcidrs/{index}")
}

/// The CIDR of range `index`.
pub fn cidr(index: u32) -> String {
    let base = u32::from(CLUSTER_CIDR_BASE) + (index << 8);
    format!("{}/24", Ipv4Addr::from(base))
}

/// The range `node` holds, taking the lowest free one when it holds none.
pub async fn assign(store: &ObjectStore, node: &str) -> Result<String, ApiError> {
    let owner = json!({"node": node});
    for index in 0..NODE_RANGES {
        let key = claim_key(index);
        match store.create(&key, &owner, None).await? {
            CreateOutcome::Created(_) => return Ok(cidr(index)),
            _ => {
                let held = store.get(&key, true).await?;
                if held.is_some_and(|h| h.object == owner) {
                    return Ok(cidr(index));
                }
            }
        }
    }
    Err(ApiError::Unavailable(
        "every pod CIDR of 10.42.0.0/16 is assigned".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        assert_eq!(cidr(0), "10.42.0.0/24");
        assert_eq!(cidr(7), "10.42.7.0/24");
    }
}
