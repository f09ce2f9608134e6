//! kube-proxy's Prometheus series, served on the agent's /metrics under kube-proxy's own names
//! (so its dashboards and alerts apply): how long rule syncs take, when the last one landed,
//! and how often the packet filter refused the rules.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::DataPlane;
use crate::apiserver::metrics::Histogram;

/// kube-proxy's buckets for sync durations: 1 ms doubling to ~16 s.
const BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

struct Series {
    duration: Histogram,
    last_sync_unix: f64,
    failures: u64,
}

pub struct ProxyMetrics {
    plane: DataPlane,
    series: Mutex<Series>,
}

impl ProxyMetrics {
    pub fn new(plane: DataPlane) -> Self {
        ProxyMetrics {
            plane,
            series: Mutex::new(Series {
                duration: Histogram::with_bounds(BUCKETS),
                last_sync_unix: 0.0,
                failures: 0,
            }),
        }
    }

    /// A sync that reached the packet filter (or found nothing to change).
    pub fn synced(&self, took: Duration) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series.duration.observe(took.as_secs_f64());
        series.last_sync_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
    }

    pub fn failed(&self) {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failures += 1;
    }

    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds\n# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n");
        series
            .duration
            .write(&mut out, "kubeproxy_sync_proxy_rules_duration_seconds", "");
        let _ = writeln!(
            out,
            "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time proxy rules were successfully synced\n# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\nkubeproxy_sync_proxy_rules_last_timestamp_seconds {}",
            series.last_sync_unix
        );
        let failures = match self.plane {
            DataPlane::Nftables => "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            DataPlane::Iptables => "kubeproxy_iptables_restore_failures_total",
        };
        let _ = writeln!(
            out,
            "# HELP {failures} Syncs the packet filter refused\n# TYPE {failures} counter\n{failures} {}",
            series.failures
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kube_proxy_series() {
        let metrics = ProxyMetrics::new(DataPlane::Nftables);
        metrics.synced(Duration::from_millis(3));
        metrics.failed();
        let text = metrics.render();
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1"),
            "{text}"
        );
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 1"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1"));
        assert!(!text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds 0\n"));
    }
}
