//! A pod's status as the kubelet reports it: phase, conditions, container statuses, IPs.
//! Built from the worker's view of the containers; condition transition times carry over
//! from the last reported status while a condition keeps its value.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

/// One container's state in the status.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting { reason: String, message: String },
    Running { started_at: SystemTime },
    Terminated(Terminated),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub started_at: Option<SystemTime>,
    pub finished_at: SystemTime,
    pub container_id: String,
}

#[derive(Clone, Debug)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub container_id: Option<String>,
    pub state: State,
    pub last: Option<Terminated>,
    pub ready: bool,
    pub started: bool,
    pub restart_count: u32,
}

#[derive(Clone, Debug)]
pub struct PodView {
    pub phase: &'static str,
    /// Pod-level reason/message (e.g. DeadlineExceeded); empty for none.
    pub reason: String,
    pub message: String,
    pub host_ip: String,
    pub pod_ip: String,
    pub start_time: SystemTime,
    pub sandbox_ready: bool,
    pub initialized: bool,
    pub init: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
}

pub fn timestamp(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn terminated_json(t: &Terminated) -> Value {
    let mut out = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "finishedAt": timestamp(t.finished_at),
        "containerID": t.container_id,
    });
    if let Some(started) = t.started_at {
        out["startedAt"] = json!(timestamp(started));
    }
    if !t.message.is_empty() {
        out["message"] = json!(t.message);
    }
    out
}

fn container_json(c: &ContainerView) -> Value {
    let state = match &c.state {
        State::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({"waiting": w})
        }
        State::Running { started_at } => json!({"running": {"startedAt": timestamp(*started_at)}}),
        State::Terminated(t) => json!({"terminated": terminated_json(t)}),
    };
    let mut out = json!({
        "name": c.name,
        "image": c.image,
        "imageID": "",
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restart_count,
        "state": state,
        "lastState": match &c.last {
            Some(t) => json!({"terminated": terminated_json(t)}),
            None => json!({}),
        },
    });
    if let Some(id) = &c.container_id {
        out["containerID"] = json!(id);
    }
    out
}

/// The new status; `current` is the status the API holds now (for transition times and the
/// fields others own, such as qosClass and nominatedNodeName).
pub fn build(current: &Value, view: &PodView) -> Value {
    let mut status: Map<String, Value> = current.as_object().cloned().unwrap_or_default();
    let all_ready = !view.containers.is_empty() && view.containers.iter().all(|c| c.ready);
    let previous = |kind: &str| -> Option<(String, String)> {
        current
            .get("conditions")
            .and_then(Value::as_array)?
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
            .map(|c| {
                let text = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or("").to_string();
                (text("status"), text("lastTransitionTime"))
            })
    };
    let now = timestamp(SystemTime::now());
    let condition = |kind: &str, ok: bool, reason: Option<&str>| {
        let value = if ok { "True" } else { "False" };
        let since = match previous(kind) {
            Some((was, at)) if was == value && !at.is_empty() => at,
            _ => now.clone(),
        };
        // No `lastProbeTime: null`: the API stores statuses through the typed PodStatus, which
        // drops it, and a built status unlike the stored one is re-sent on every sync.
        let mut c = json!({"type": kind, "status": value, "lastTransitionTime": since});
        if let Some(reason) = reason.filter(|_| !ok) {
            c["reason"] = json!(reason);
        }
        c
    };
    let scheduled = previous("PodScheduled")
        .map(|(_, at)| at)
        .unwrap_or_else(|| now.clone());
    let not_ready_reason = if matches!(view.phase, "Succeeded" | "Failed") {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let conditions = vec![
        condition("PodReadyToStartContainers", view.sandbox_ready, None),
        condition(
            "Initialized",
            view.initialized,
            Some("ContainersNotInitialized"),
        ),
        condition("Ready", all_ready, Some(not_ready_reason)),
        condition("ContainersReady", all_ready, Some(not_ready_reason)),
        json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}),
    ];
    status.insert("phase".into(), json!(view.phase));
    status.insert("conditions".into(), json!(conditions));
    status.insert("hostIP".into(), json!(view.host_ip));
    status.insert("hostIPs".into(), json!([{"ip": view.host_ip}]));
    if view.pod_ip.is_empty() {
        status.remove("podIP");
        status.remove("podIPs");
    } else {
        status.insert("podIP".into(), json!(view.pod_ip));
        status.insert("podIPs".into(), json!([{"ip": view.pod_ip}]));
    }
    status.insert("startTime".into(), json!(timestamp(view.start_time)));
    if view.reason.is_empty() {
        status.remove("reason");
        status.remove("message");
    } else {
        status.insert("reason".into(), json!(view.reason));
        status.insert("message".into(), json!(view.message));
    }
    status.insert(
        "containerStatuses".into(),
        json!(
            view.containers
                .iter()
                .map(container_json)
                .collect::<Vec<_>>()
        ),
    );
    if view.init.is_empty() {
        status.remove("initContainerStatuses");
    } else {
        status.insert(
            "initContainerStatuses".into(),
            json!(view.init.iter().map(container_json).collect::<Vec<_>>()),
        );
    }
    Value::Object(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ready: bool) -> PodView {
        PodView {
            phase: "Running",
            reason: String::new(),
            message: String::new(),
            host_ip: "10.0.0.1".into(),
            pod_ip: "10.42.0.3".into(),
            start_time: SystemTime::UNIX_EPOCH,
            sandbox_ready: true,
            initialized: true,
            init: vec![],
            containers: vec![ContainerView {
                name: "app".into(),
                image: "busybox".into(),
                container_id: Some("process://abc".into()),
                state: State::Running {
                    started_at: SystemTime::UNIX_EPOCH,
                },
                last: None,
                ready,
                started: true,
                restart_count: 0,
            }],
        }
    }

    #[test]
    fn ready_follows_containers_and_keeps_transition_times() {
        let first = build(&json!({"qosClass": "BestEffort"}), &view(false));
        assert_eq!(first["qosClass"], "BestEffort");
        let ready = |s: &Value| {
            s["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .find(|c| c["type"] == "Ready")
                .cloned()
                .expect("Ready")
        };
        assert_eq!(ready(&first)["status"], "False");
        assert_eq!(ready(&first)["reason"], "ContainersNotReady");
        let mut aged = first.clone();
        for c in aged["conditions"].as_array_mut().expect("conditions") {
            c["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        }
        let again = build(&aged, &view(false));
        assert_eq!(ready(&again)["lastTransitionTime"], "2020-01-01T00:00:00Z");
        let now_ready = build(&aged, &view(true));
        assert_eq!(ready(&now_ready)["status"], "True");
        assert_ne!(
            ready(&now_ready)["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(
            now_ready["containerStatuses"][0]["state"]["running"]["startedAt"],
            "1970-01-01T00:00:00Z"
        );
    }

    /// The API keeps a status in the form the typed PodStatus gives it; building again from
    /// that form with nothing changed must give it back, or the agent would send the same
    /// status on every sync (it did: `lastProbeTime: null`, 100 no-op updates/s at 100 pods).
    #[test]
    fn an_unchanged_pod_builds_the_status_the_api_stored() {
        let stored_form = |status: &Value| -> Value {
            let typed: k8s_openapi::api::core::v1::PodStatus =
                serde_json::from_value(status.clone()).expect("a PodStatus");
            serde_json::to_value(typed).expect("serializable")
        };
        for ready in [false, true] {
            let stored = stored_form(&build(&json!({"qosClass": "BestEffort"}), &view(ready)));
            assert_eq!(build(&stored, &view(ready)), stored);
        }
    }
}
