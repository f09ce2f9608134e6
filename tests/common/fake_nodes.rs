//! Fake nodes and pods for the scheduler and controller tests: there is no kubelet, so nodes
//! are registered through the API (Ready, with allocatable cpu/memory/pods) and pods are
//! marked Running, Ready, Succeeded through the status subresource, as a kubelet would report
//! them.

use std::time::Duration;

use serde_json::{Value, json};

use super::kubectl::Kubectl;

/// `kubectl <args> -o json`, retried a few times: a poll loop should not fail on one dropped
/// connection (kubectl now and then reports a broken pipe on a reused one).
pub fn get(k: &Kubectl, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    for _ in 0..3 {
        let out = k.run(&all);
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("json");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    serde_json::from_str(&k.ok(&all)).expect("json")
}

/// The objects of `resource` matching `selector`, those being deleted left out.
pub fn items(k: &Kubectl, resource: &str, selector: &str) -> Vec<Value> {
    get(k, &["get", resource, "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o.pointer("/metadata/deletionTimestamp").is_none())
        .collect()
}

pub fn node_of(k: &Kubectl, pod: &str) -> String {
    let out = k.run(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fake node: applied, then given a Ready status the way a kubelet would report it.
pub fn add_node(k: &Kubectl, node: &str, cpu: &str, labels: Value, taints: Value) {
    let mut labels = labels;
    labels["kubernetes.io/hostname"] = json!(node);
    let manifest = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": labels}, "spec": {"taints": taints}});
    k.apply(&manifest.to_string());
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"}}});
    k.ok(&[
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
}

pub fn set_phase(k: &Kubectl, pod: &str, phase: &str, ready: bool) {
    let ready = if ready { "True" } else { "False" };
    let patch = json!({"status": {"phase": phase,
        "conditions": [{"type": "Ready", "status": ready}]}});
    // A pod deleted meanwhile is fine.
    let _ = k.run(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
}

pub fn pod_manifest(pod: &str, cpu: &str, extra: Value) -> String {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox:1.36",
        "resources": {"requests": {"cpu": cpu}}}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod}, "spec": spec}).to_string()
}
