//! After the heal: every member must hold the same state. One linearizable read fixes a
//! revision R; each member then serves a serializable full-range read at R from its own state
//! (retried until it has applied R) and the answers must be identical. The final state also
//! proves no acknowledged write was lost.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::RangeRequest;
use tokio::time::Instant;

use crate::client::Endpoints;
use crate::history::History;

/// (key, value, mod revision, version) of every key, in key order.
pub type StateRows = Vec<(String, String, i64, i64)>;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Convergence {
    pub revision: i64,
    /// Per member: the state digest at `revision`, or why it could not be read.
    pub members: Vec<Result<String, String>>,
    pub converged: bool,
    #[serde(skip)]
    pub state: StateRows,
}

async fn read_all(
    endpoints: &Endpoints,
    member: usize,
    revision: i64,
    serializable: bool,
) -> Result<(i64, StateRows), String> {
    let mut kv = endpoints.kv(member).map_err(|e| e.to_string())?;
    let request = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        serializable,
        ..Default::default()
    };
    let reply = tokio::time::timeout(Duration::from_secs(3), kv.range(request))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let rows = reply
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
                kv.version,
            )
        })
        .collect();
    Ok((reply.header.map_or(0, |h| h.revision), rows))
}

fn digest(rows: &StateRows) -> String {
    let mut h = DefaultHasher::new();
    rows.hash(&mut h);
    format!("{:016x} ({} keys)", h.finish(), rows.len())
}

/// Reads every member's state at one revision; `within` bounds the whole check.
pub async fn check_convergence(endpoints: &Endpoints, within: Duration) -> Convergence {
    let deadline = Instant::now() + within;
    let mut fixed: Option<(i64, StateRows)> = None;
    'find: for _ in 0..1000 {
        for member in 0..endpoints.len() {
            if let Ok(read) = read_all(endpoints, member, 0, false).await {
                fixed = Some(read);
                break 'find;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some((revision, reference)) = fixed else {
        return Convergence {
            members: vec![Err("no member answered a linearizable read".into()); endpoints.len()],
            ..Default::default()
        };
    };
    let mut members = Vec::with_capacity(endpoints.len());
    for member in 0..endpoints.len() {
        let mut last = Err("not tried".to_string());
        for _ in 0..1000 {
            last = read_all(endpoints, member, revision, true)
                .await
                .map(|(_, rows)| rows);
            if last.is_ok() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        members.push(last);
    }
    let converged = members
        .iter()
        .all(|m| m.as_ref().is_ok_and(|rows| *rows == reference));
    Convergence {
        revision,
        members: members.into_iter().map(|m| m.map(|r| digest(&r))).collect(),
        converged,
        state: reference,
    }
}

/// Every acknowledged write must still be visible: a key's final mod revision is at least the
/// revision of its last acknowledged write, and equal to it only with that write's value.
pub fn lost_writes(history: &History, state: &StateRows) -> Vec<String> {
    let finals: HashMap<&str, (&str, i64)> = state
        .iter()
        .map(|(k, v, rev, _)| (k.as_str(), (v.as_str(), *rev)))
        .collect();
    let mut last_acked: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    for op in &history.ops {
        let Some((revision, value)) = op.acknowledged_write() else {
            continue;
        };
        let entry = last_acked.entry(op.key.as_str()).or_insert((0, ""));
        if revision > entry.0 {
            *entry = (revision, value);
        }
    }
    let mut lost = Vec::new();
    for (key, (revision, value)) in last_acked {
        match finals.get(key) {
            None => lost.push(format!(
                "{key}: acknowledged {value} at {revision}, now absent"
            )),
            Some((_, final_rev)) if *final_rev < revision => lost.push(format!(
                "{key}: acknowledged {value} at {revision}, final state is older ({final_rev})"
            )),
            Some((final_value, final_rev)) if *final_rev == revision && *final_value != value => {
                lost.push(format!(
                    "{key}: acknowledged {value} at {revision}, final holds {final_value}"
                ))
            }
            _ => {}
        }
    }
    lost
}
