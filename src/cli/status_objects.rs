//! The Kubernetes half of `skiff status`: nodes Ready/NotReady, pods by phase and the most
//! recent Warning events, read through the API with the admin credentials (one list per kind,
//! served from the member's replica: a status page must work while the cluster is unhappy).

use std::collections::BTreeMap;

use hyper::Method;
use serde::Serialize;
use serde_json::Value;

use crate::apiclient::ApiClient;
use crate::apiserver::objects::str_at;
use crate::json_path::JsonPath;
use crate::pki::CertKey;

/// How many Warning events the summary shows.
const WARNINGS_SHOWN: usize = 5;

#[derive(Serialize, Debug, Default)]
pub struct NodeRow {
    pub name: String,
    pub ready: String,
}

#[derive(Serialize, Debug, Default)]
pub struct WarningRow {
    pub last_seen: String,
    pub object: String,
    pub reason: String,
    pub message: String,
    pub count: i64,
}

#[derive(Serialize, Debug, Default)]
pub struct ObjectsSummary {
    pub nodes: Vec<NodeRow>,
    pub pods_by_phase: BTreeMap<String, usize>,
    pub warnings: Vec<WarningRow>,
}

async fn list(client: &ApiClient, path: &str) -> anyhow::Result<Vec<Value>> {
    let (status, body) = client
        .call(Method::GET, &format!("{path}?resourceVersion=0"), None)
        .await?;
    if !status.is_success() {
        anyhow::bail!("GET {path}: {status}");
    }
    let list: Value = serde_json::from_slice(&body)?;
    Ok(list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// Reads the summary from the API server at `server` (host:port).
pub async fn collect(
    server: &str,
    ca_pem: &str,
    admin: &CertKey,
) -> anyhow::Result<ObjectsSummary> {
    let client = ApiClient::connect(server, ca_pem, admin).await?;
    let nodes = list(&client, "/api/v1/nodes").await?;
    let pods = list(&client, "/api/v1/pods").await?;
    let events = list(&client, "/api/v1/events").await?;
    Ok(summarize(&nodes, &pods, &events))
}

/// The summary of listed nodes, pods and events (pure, for tests).
pub fn summarize(nodes: &[Value], pods: &[Value], events: &[Value]) -> ObjectsSummary {
    let nodes = nodes
        .iter()
        .map(|node| {
            let ready = node
                .at("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| str_at(c, "/type") == "Ready")
                .map(|c| str_at(c, "/status"));
            NodeRow {
                name: str_at(node, "/metadata/name").to_string(),
                ready: match ready {
                    Some("True") => "Ready",
                    Some("False") => "NotReady",
                    _ => "Unknown",
                }
                .to_string(),
            }
        })
        .collect();
    let mut pods_by_phase = BTreeMap::new();
    for pod in pods {
        let phase = match str_at(pod, "/status/phase") {
            "" => "Pending",
            phase => phase,
        };
        *pods_by_phase.entry(phase.to_string()).or_insert(0) += 1;
    }
    let mut warnings: Vec<WarningRow> = events
        .iter()
        .filter(|e| str_at(e, "/type") == "Warning")
        .map(|e| WarningRow {
            last_seen: [str_at(e, "/lastTimestamp"), str_at(e, "/eventTime")]
                .into_iter()
                .find(|t| !t.is_empty())
                .unwrap_or_else(|| str_at(e, "/metadata/creationTimestamp"))
                .to_string(),
            object: format!(
                "{}/{}",
                str_at(e, "/involvedObject/kind").to_lowercase(),
                str_at(e, "/involvedObject/name")
            ),
            reason: str_at(e, "/reason").to_string(),
            message: str_at(e, "/message").to_string(),
            count: e.get("count").and_then(Value::as_i64).unwrap_or(1),
        })
        .collect();
    warnings.sort_by(|a, b| b.last_seen.cmp(&a.last_seen));
    warnings.truncate(WARNINGS_SHOWN);
    ObjectsSummary {
        nodes,
        pods_by_phase,
        warnings,
    }
}

/// The summary as lines under the members' table.
pub fn print(summary: &ObjectsSummary) {
    let ready = summary.nodes.iter().filter(|n| n.ready == "Ready").count();
    let not_ready: Vec<String> = summary
        .nodes
        .iter()
        .filter(|n| n.ready != "Ready")
        .map(|n| format!("{} ({})", n.name, n.ready))
        .collect();
    print!("nodes: {ready}/{} Ready", summary.nodes.len());
    if !not_ready.is_empty() {
        print!("; not ready: {}", not_ready.join(", "));
    }
    println!();
    let phases: Vec<String> = summary
        .pods_by_phase
        .iter()
        .map(|(phase, n)| format!("{phase} {n}"))
        .collect();
    match phases.is_empty() {
        true => println!("pods: none"),
        false => println!("pods: {}", phases.join(", ")),
    }
    if summary.warnings.is_empty() {
        println!("recent warnings: none");
        return;
    }
    println!("recent warnings:");
    for w in &summary.warnings {
        println!(
            "  {}  {}  {} (x{}): {}",
            w.last_seen, w.object, w.reason, w.count, w.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_pods_and_warnings_are_summarized() {
        let nodes = [
            json!({"metadata": {"name": "a"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            json!({"metadata": {"name": "b"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
        ];
        let pods = [
            json!({"status": {"phase": "Running"}}),
            json!({"status": {"phase": "Running"}}),
            json!({}),
        ];
        let events = [
            json!({"type": "Normal", "reason": "Scheduled"}),
            json!({"type": "Warning", "reason": "BackOff", "lastTimestamp": "2026-01-01T00:00:02Z", "involvedObject": {"kind": "Pod", "name": "p"}, "count": 3, "message": "restarting"}),
            json!({"type": "Warning", "reason": "FailedScheduling", "lastTimestamp": "2026-01-01T00:00:05Z", "involvedObject": {"kind": "Pod", "name": "q"}, "message": "0/2 nodes"}),
        ];
        let s = summarize(&nodes, &pods, &events);
        assert_eq!(s.nodes[1].ready, "Unknown");
        assert_eq!(s.pods_by_phase["Running"], 2);
        assert_eq!(s.pods_by_phase["Pending"], 1);
        assert_eq!(s.warnings.len(), 2);
        assert_eq!(s.warnings[0].reason, "FailedScheduling", "newest first");
        assert_eq!(s.warnings[1].object, "pod/p");
        assert_eq!(s.warnings[1].count, 3);
    }
}
