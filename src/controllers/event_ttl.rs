//! Events expire: every minute the leader deletes Events last seen more than the TTL ago
//! (1 h, as kube-apiserver's --event-ttl), so a busy cluster's event history stays bounded.
//! `SKIFF_EVENT_TTL_SECONDS` overrides the TTL (tests use seconds).

use std::time::Duration;

use serde_json::Value;

use crate::apiserver::objects::{DeleteOptions, ListOptions, Objects, Scope};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;

pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub fn ttl() -> Duration {
    std::env::var("SKIFF_EVENT_TTL_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TTL)
}

/// When an event last happened: lastTimestamp, eventTime, or its creation.
fn last_seen(event: &Value) -> Option<jiff::Timestamp> {
    [
        "/lastTimestamp",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .filter_map(|p| event.at(p).and_then(Value::as_str))
    .find_map(|t| t.parse::<jiff::Timestamp>().ok())
}

/// Whether `event` is older than `ttl` at `now`.
pub fn expired(event: &Value, ttl: Duration, now: jiff::Timestamp) -> bool {
    let Some(seen) = last_seen(event) else {
        return false;
    };
    let age = now.as_second() - seen.as_second();
    age >= ttl.as_secs() as i64
}

/// Sweeps until the task is dropped (when leadership ends).
pub async fn run(objects: Objects, events: &'static dyn Kind) {
    let ttl = ttl();
    let every = SWEEP_EVERY.min(ttl.max(Duration::from_secs(1)));
    loop {
        match sweep(&objects, events, ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired events deleted"),
            Err(e) => tracing::warn!(error = %e, "event TTL sweep failed"),
        }
        tokio::time::sleep(every).await;
    }
}

async fn sweep(
    objects: &Objects,
    events: &'static dyn Kind,
    ttl: Duration,
) -> Result<usize, ApiError> {
    let scope = Scope::new(events, None);
    let now = jiff::Timestamp::now();
    let mut deleted = 0;
    for event in objects.list(scope, &ListOptions::default()).await?.items {
        if !expired(&event, ttl, now) {
            continue;
        }
        let meta = |f: &str| {
            event
                .at(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let scope = Scope::new(events, Some(meta("namespace")));
        match objects
            .delete(scope, meta("name"), &DeleteOptions::default())
            .await
        {
            Ok(_) => deleted += 1,
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_expire_by_their_last_time() {
        let now: jiff::Timestamp = "2026-01-01T02:00:00Z".parse().expect("time");
        let ttl = Duration::from_secs(3600);
        let old = json!({"lastTimestamp": "2026-01-01T00:59:59Z", "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}});
        let recent = json!({"lastTimestamp": "2026-01-01T01:30:00Z", "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}});
        let created_only = json!({"metadata": {"creationTimestamp": "2026-01-01T00:30:00Z"}});
        assert!(expired(&old, ttl, now));
        assert!(!expired(&recent, ttl, now), "refreshed by a repeat");
        assert!(expired(&created_only, ttl, now));
        assert!(!expired(&json!({}), ttl, now), "no time: keep");
    }
}
