//! The arithmetic of a Deployment rollout, free of I/O so it can be tested alone (after
//! Kubernetes' deployment/util): the pod-template-hash, maxSurge/maxUnavailable resolution,
//! how far the new ReplicaSet may grow and how far the old ones may shrink.

use crate::json_path::JsonPath;
use serde_json::Value;

/// The label that ties a ReplicaSet and its pods to one template of a Deployment.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// apimachinery's SafeEncodeString alphabet: no vowels (no words), no look-alikes.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A stable short name for a pod template (`<deployment>-<hash>` names the ReplicaSet).
/// Kubernetes hashes the Go dump of the struct; we hash its canonical JSON (keys sorted, as
/// serde_json's map keeps them) with the same FNV-1a 32 and encoding, so the hash is stable
/// across restarts and members. `collision_count` perturbs it when a name is taken.
pub fn template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut template = template.clone();
    strip_hash_label(&mut template);
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(template.to_string().as_bytes());
    if let Some(count) = collision_count {
        feed(&(count as u32).to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[b as usize % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// Removes the pod-template-hash label (and an emptied labels map) from a template.
pub fn strip_hash_label(template: &mut Value) {
    if let Some(meta) = template.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove(TEMPLATE_HASH_LABEL);
            if labels.is_empty() {
                meta.remove("labels");
            }
        }
        if meta.is_empty()
            && let Some(obj) = template.as_object_mut()
        {
            obj.remove("metadata");
        }
    }
}

/// Whether two pod templates are the same but for the pod-template-hash label.
pub fn equal_ignoring_hash(a: &Value, b: &Value) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    strip_hash_label(&mut a);
    strip_hash_label(&mut b);
    a == b
}

/// An int-or-percent against `total`; percentages round up or down.
pub fn resolve(value: Option<&Value>, total: i64, round_up: bool) -> i64 {
    match value {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => match s.strip_suffix('%').map(str::parse::<i64>) {
            Some(Ok(percent)) => {
                let scaled = percent * total;
                if round_up {
                    (scaled + 99).div_euclid(100)
                } else {
                    scaled.div_euclid(100)
                }
            }
            // Validation refuses anything else; treat it as 0.
            _ => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// (maxSurge, maxUnavailable) for `desired` replicas: surge rounds up, unavailable down, and
/// when both come to 0 unavailable becomes 1 so the rollout can move at all.
pub fn fenceposts(surge: Option<&Value>, unavailable: Option<&Value>, desired: i64) -> (i64, i64) {
    let surge = resolve(surge, desired, true);
    let unavailable = resolve(unavailable, desired, false);
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

/// Replica counts of one ReplicaSet as the rollout sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// spec.replicas
    pub desired: i64,
    /// status.availableReplicas
    pub available: i64,
}

/// The new ReplicaSet's size in a rolling update (Kubernetes' NewRSNewReplicas): grow while
/// the total stays within desired + maxSurge, never beyond desired.
pub fn new_rs_replicas(desired: i64, max_surge: i64, all_desired: i64, new_desired: i64) -> i64 {
    let max_total = desired + max_surge;
    if all_desired >= max_total {
        return new_desired;
    }
    let scale_up = (max_total - all_desired).min(desired - new_desired);
    new_desired + scale_up.max(0)
}

/// New sizes for the old ReplicaSets (given oldest first) in a rolling update, after
/// Kubernetes' reconcileOldReplicaSets: first shed their unavailable pods, then scale down
/// as far as keeping `desired - max_unavailable` available allows. Returns (index, size) for
/// each one that changes.
pub fn scale_down_old(
    old: &[Counts],
    new: Counts,
    desired: i64,
    max_unavailable: i64,
) -> Vec<(usize, i64)> {
    let mut sizes: Vec<i64> = old.iter().map(|c| c.desired).collect();
    let old_total: i64 = sizes.iter().sum();
    if old_total == 0 {
        return Vec::new();
    }
    let all_total = old_total + new.desired;
    let min_available = desired - max_unavailable;
    let new_unavailable = new.desired - new.available;
    let max_scaled_down = all_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    // 1. Unhealthy pods of old ReplicaSets go first: they count for nothing.
    let mut cleaned = 0;
    for (i, counts) in old.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        if sizes[i] == 0 || sizes[i] <= counts.available {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(sizes[i] - counts.available);
        sizes[i] -= down;
        cleaned += down;
    }
    // 2. Then available ones, as long as enough stay available.
    let available: i64 = old.iter().map(|c| c.available).sum::<i64>() + new.available;
    let allowed = available - min_available;
    let mut scaled = 0;
    if allowed > 0 {
        for size in sizes.iter_mut() {
            if scaled >= allowed {
                break;
            }
            if *size == 0 {
                continue;
            }
            let down = (*size).min(allowed - scaled);
            *size -= down;
            scaled += down;
        }
    }
    sizes
        .into_iter()
        .enumerate()
        .filter(|(i, size)| *size != old[*i].desired)
        .collect()
}

/// One active ReplicaSet as proportional scaling sees it.
#[derive(Clone, Debug)]
pub struct Share {
    /// spec.replicas
    pub replicas: i64,
    /// The deployment.kubernetes.io/max-replicas annotation: the Deployment's size + surge
    /// when this set was last scaled.
    pub max_replicas: Option<i64>,
    /// creationTimestamp, to break ties.
    pub created: String,
}

/// New sizes (same order as `sets`) when a Deployment is resized in the middle of a rolling
/// update, after Kubernetes' proportional scaling: every active set grows or shrinks by its
/// share of the change, larger sets first (newer first when growing, older first when
/// shrinking) and the largest takes the rounding leftover. `status_replicas` stands in for a
/// missing max-replicas annotation.
pub fn proportional_sizes(
    sets: &[Share],
    desired: i64,
    max_surge: i64,
    status_replicas: i64,
) -> Vec<i64> {
    let mut sizes: Vec<i64> = sets.iter().map(|s| s.replicas).collect();
    let allowed = if desired > 0 { desired + max_surge } else { 0 };
    let to_add = allowed - sizes.iter().sum::<i64>();
    if to_add == 0 || sets.is_empty() {
        return sizes;
    }
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by(|&a, &b| {
        let by_size = sets[b].replicas.cmp(&sets[a].replicas);
        let by_age = if to_add > 0 {
            sets[b].created.cmp(&sets[a].created)
        } else {
            sets[a].created.cmp(&sets[b].created)
        };
        by_size.then(by_age)
    });
    let mut added = 0;
    for &i in &order {
        let share = proportion(&sets[i], desired, max_surge, status_replicas, to_add, added);
        sizes[i] += share;
        added += share;
    }
    let largest = order[0];
    sizes[largest] = (sizes[largest] + to_add - added).max(0);
    sizes
}

/// One set's part of `to_add` (Kubernetes' GetProportion), never past what is left to add.
fn proportion(
    set: &Share,
    desired: i64,
    max_surge: i64,
    status_replicas: i64,
    to_add: i64,
    added: i64,
) -> i64 {
    if set.replicas == 0 || to_add == added {
        return 0;
    }
    let fraction = if desired == 0 {
        -set.replicas
    } else {
        let annotated = set.max_replicas.unwrap_or(status_replicas);
        if annotated <= 0 {
            return 0;
        }
        let scaled = (set.replicas * (desired + max_surge)) as f64 / annotated as f64;
        scaled.round() as i64 - set.replicas
    };
    let left = to_add - added;
    if to_add > 0 {
        fraction.min(left)
    } else {
        fraction.max(left)
    }
}

// Reading a Deployment or ReplicaSet given as JSON, with the API defaults for absent fields.

pub fn replicas_of(rs: &Value) -> i64 {
    rs.at("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
}

pub fn status_count(object: &Value, field: &str) -> i64 {
    object
        .at(&format!("/status/{field}"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

pub fn counts_of(rs: &Value) -> Counts {
    Counts {
        desired: replicas_of(rs),
        available: status_count(rs, "availableReplicas"),
    }
}

pub fn desired_replicas(d: &Value) -> i64 {
    d.at("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
}

pub fn rolling_fenceposts(d: &Value) -> (i64, i64) {
    fenceposts(
        d.at("/spec/strategy/rollingUpdate/maxSurge"),
        d.at("/spec/strategy/rollingUpdate/maxUnavailable"),
        desired_replicas(d),
    )
}

/// maxUnavailable as a count: 0 for Recreate or no replicas, never more than desired.
pub fn max_unavailable(d: &Value) -> i64 {
    let desired = desired_replicas(d);
    if d.at("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate") || desired == 0 {
        return 0;
    }
    rolling_fenceposts(d).1.min(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_hashes_are_stable_short_and_ignore_the_hash_label() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}});
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t.clone(), None));
        assert!(
            h.len() <= 10 && h.bytes().all(|b| SAFE_ALPHABET.contains(&b)),
            "{h}"
        );
        let mut labelled = t.clone();
        labelled["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!(h.clone());
        assert_eq!(template_hash(&labelled, None), h);
        assert!(equal_ignoring_hash(&labelled, &t));
        let mut changed = t.clone();
        changed["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert_ne!(template_hash(&changed, None), h);
        assert!(!equal_ignoring_hash(&changed, &t));
        assert_ne!(template_hash(&t, Some(1)), h);
        // Pinned: the same template must name the same ReplicaSet in every build and member
        // (FNV-1a 32 of the sorted JSON, digits through the safe alphabet).
        let pinned = json!({"metadata": {"labels": {"app": "web"}}});
        assert_eq!(template_hash(&pinned, None), "65f44fcd74");
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(resolve(Some(&json!("25%")), 10, true), 3);
        assert_eq!(resolve(Some(&json!("25%")), 10, false), 2);
        assert_eq!(resolve(Some(&json!(2)), 10, false), 2);
        assert_eq!(resolve(None, 10, true), 0);
        assert_eq!(
            fenceposts(Some(&json!("25%")), Some(&json!("25%")), 3),
            (1, 0)
        );
        assert_eq!(
            fenceposts(Some(&json!("25%")), Some(&json!("25%")), 4),
            (1, 1)
        );
        assert_eq!(fenceposts(Some(&json!(0)), Some(&json!("10%")), 5), (0, 1));
        assert_eq!(fenceposts(Some(&json!(1)), Some(&json!(1)), 3), (1, 1));
    }

    #[test]
    fn the_new_replica_set_grows_within_the_surge() {
        // 3 desired, surge 1: old 3 + new 0 -> new 1.
        assert_eq!(new_rs_replicas(3, 1, 3, 0), 1);
        // At the limit: no growth.
        assert_eq!(new_rs_replicas(3, 1, 4, 1), 1);
        // Old shrank to 1: new may reach 3 but not beyond desired.
        assert_eq!(new_rs_replicas(3, 1, 2, 1), 3);
        assert_eq!(new_rs_replicas(3, 5, 0, 0), 3);
    }

    #[test]
    fn old_replica_sets_shrink_keeping_enough_available() {
        let old = |desired, available| Counts { desired, available };
        // 3 desired, maxUnavailable 1; old 3 all available, new 1 not yet available:
        // total 4, min available 2, new unavailable 1 -> at most 1 down; 3 available - 2 = 1.
        assert_eq!(scale_down_old(&[old(3, 3)], old(1, 0), 3, 1), vec![(0, 2)]);
        // maxUnavailable 0 and nothing new available: nothing moves.
        assert_eq!(scale_down_old(&[old(3, 3)], old(1, 0), 3, 0), vec![]);
        // Unavailable old pods go first even when availability is at the minimum.
        assert_eq!(scale_down_old(&[old(3, 1)], old(1, 1), 3, 1), vec![(0, 1)]);
        // Oldest first across several old sets.
        assert_eq!(
            scale_down_old(&[old(1, 1), old(2, 2)], old(3, 3), 3, 0),
            vec![(0, 0), (1, 0)]
        );
        assert_eq!(scale_down_old(&[old(0, 0)], old(3, 3), 3, 1), vec![]);
    }

    #[test]
    fn max_unavailable_is_zero_for_recreate_and_capped_by_replicas() {
        let mut d = deployment_json(4);
        assert_eq!(max_unavailable(&d), 1);
        d["spec"]["strategy"] = json!({"type": "Recreate"});
        assert_eq!(max_unavailable(&d), 0);
        let mut d = deployment_json(2);
        d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = json!(5);
        assert_eq!(max_unavailable(&d), 2);
    }

    #[test]
    fn resizing_mid_rollout_scales_every_active_set_proportionally() {
        let share = |replicas, max: Option<i64>, created: &str| Share {
            replicas,
            max_replicas: max,
            created: created.into(),
        };
        // 10 replicas, surge 3, mid-rollout: old 8 + new 5 = 13; scaled to 15 (18 allowed).
        let sets = [
            share(8, Some(13), "2026-01-01T00:00:00Z"),
            share(5, Some(13), "2026-01-02T00:00:00Z"),
        ];
        assert_eq!(proportional_sizes(&sets, 15, 3, 13), vec![11, 7]);
        // Down to 5 (8 allowed): 5 fewer.
        assert_eq!(proportional_sizes(&sets, 5, 3, 13), vec![5, 3]);
        // To zero: everything goes.
        assert_eq!(proportional_sizes(&sets, 0, 3, 13), vec![0, 0]);
        // Nothing to change.
        assert_eq!(proportional_sizes(&sets, 10, 3, 13), vec![8, 5]);
    }

    fn deployment_json(replicas: i64) -> Value {
        json!({"spec": {"replicas": replicas, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}})
    }
}
