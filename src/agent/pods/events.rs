//! Pod events leave the pod workers through one queue, as the kubelet's event recorder does:
//! a worker never waits for the control plane to store an event before it starts the next
//! container or reports the pod's status. Each event is a replicated write; awaited inline,
//! the Pulled/Created/Started events of a container cost three round trips on the path from
//! "created" to "Running".

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::debug;

use super::super::control_plane::ControlPlane;

/// Events waiting to be sent; beyond this they are dropped (the kubelet's recorder drops too
/// when its queue of 1000 is full) rather than holding pod work back.
const QUEUE: usize = 1000;

/// Sends pod events to the control plane in the order they were recorded.
pub struct EventRecorder {
    queue: mpsc::Sender<Value>,
}

impl EventRecorder {
    /// Starts the task that sends queued events; it ends when the recorder is dropped.
    pub fn start(control: Arc<ControlPlane>) -> Self {
        let (queue, mut pending) = mpsc::channel::<Value>(QUEUE);
        tokio::spawn(async move {
            while let Some(event) = pending.recv().await {
                if let Err(e) = control.record_event(&event).await {
                    let reason = event.get("reason").and_then(Value::as_str).unwrap_or("");
                    debug!(reason, error = %e.message(), "event not recorded");
                }
            }
        });
        EventRecorder { queue }
    }

    /// Queues the event; never waits.
    pub fn record(&self, event: Value) {
        if let Err(e) = self.queue.try_send(event) {
            debug!(error = %e, "event queue full; event dropped");
        }
    }
}
