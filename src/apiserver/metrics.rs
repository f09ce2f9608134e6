//! Prometheus metrics of the API server and the member under it, served at `/metrics` in the
//! text exposition format: request counts and latency by verb/resource/code (the names
//! kube-apiserver uses, so existing dashboards work), open watches, the store revision and the
//! raft state.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_raft::RaftNode;

/// Latency buckets in seconds (kube-apiserver's, trimmed).
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// A Prometheus histogram (cumulative buckets, sum, count); the ingress's request latency
/// uses it too, with its own bounds.
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_bounds(BUCKETS)
    }
}

impl Histogram {
    pub(crate) fn with_bounds(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: Vec::new(),
            sum: 0.0,
            total: 0,
        }
    }

    pub(crate) fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; self.bounds.len()];
        }
        for (i, bound) in self.bounds.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.total += 1;
    }

    /// The `_bucket`, `_sum` and `_count` lines of series `name{labels}`.
    /// `labels` may be empty (a series without labels).
    pub(crate) fn write(&self, out: &mut String, name: &str, labels: &str) {
        let (le_prefix, braced) = if labels.is_empty() {
            (String::new(), String::new())
        } else {
            (format!("{labels},"), format!("{{{labels}}}"))
        };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{le_prefix}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{le_prefix}le=\"+Inf\"}} {}",
            self.total
        );
        let _ = writeln!(out, "{name}_sum{braced} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braced} {}", self.total);
    }
}

#[derive(Default)]
struct Inner {
    /// (verb, group, resource, code) -> count
    requests: BTreeMap<(String, String, String, u16), u64>,
    /// (verb, group, resource) -> latency
    latency: BTreeMap<(String, String, String), Histogram>,
}

/// Shared by every request of a member. Cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
    watches: Arc<AtomicI64>,
    /// The member's cluster DNS (its query counters are appended).
    dns: Option<skiff_dns::ClusterDns>,
}

/// Decrements the open-watch gauge when the watch's stream is dropped.
pub struct WatchGuard(Arc<AtomicI64>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn new(dns: Option<skiff_dns::ClusterDns>) -> Self {
        Metrics {
            dns,
            ..Metrics::default()
        }
    }

    pub fn observe(&self, verb: &str, group: &str, resource: &str, code: u16, elapsed: Duration) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        *inner
            .requests
            .entry((verb.into(), group.into(), resource.into(), code))
            .or_default() += 1;
        inner
            .latency
            .entry((verb.into(), group.into(), resource.into()))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    pub fn watch_started(&self) -> WatchGuard {
        self.watches.fetch_add(1, Ordering::Relaxed);
        WatchGuard(self.watches.clone())
    }

    /// The exposition text, with the member's store and raft gauges read now.
    pub fn render(&self, node: &RaftNode) -> String {
        let mut out = String::new();
        let labels =
            |v: &str, g: &str, r: &str| format!("verb=\"{v}\",group=\"{g}\",resource=\"{r}\"");
        if let Ok(inner) = self.inner.lock() {
            out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, resource and HTTP response code.\n# TYPE apiserver_request_total counter\n");
            for ((verb, group, resource, code), n) in &inner.requests {
                let _ = writeln!(
                    out,
                    "apiserver_request_total{{{},code=\"{code}\"}} {n}",
                    labels(verb, group, resource)
                );
            }
            out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group and resource.\n# TYPE apiserver_request_duration_seconds histogram\n");
            for ((verb, group, resource), h) in &inner.latency {
                h.write(
                    &mut out,
                    "apiserver_request_duration_seconds",
                    &labels(verb, group, resource),
                );
            }
        }
        let metrics = node.metrics();
        let gauges: [(&str, &str, i64); 6] = [
            (
                "apiserver_longrunning_requests",
                "Number of open watch requests.",
                self.watches.load(Ordering::Relaxed),
            ),
            (
                "skiff_store_revision",
                "The store revision this member has applied.",
                node.kv().revision(),
            ),
            (
                "skiff_raft_term",
                "The current raft term.",
                metrics.current_term as i64,
            ),
            (
                "skiff_raft_is_leader",
                "1 if this member is the raft leader.",
                i64::from(node.is_leader()),
            ),
            (
                "skiff_raft_last_log_index",
                "The index of the last raft log entry on this member.",
                metrics.last_log_index.map(|i| i as i64).unwrap_or(0),
            ),
            (
                "skiff_raft_last_applied_index",
                "The index of the last raft log entry applied to the store.",
                metrics.last_applied.map(|l| l.index as i64).unwrap_or(0),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        if let Some(dns) = &self.dns {
            out.push_str(&dns.metrics().render());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.07);
        assert_eq!(h.counts[0], 1);
        assert_eq!(
            h.counts[BUCKETS.iter().position(|b| *b == 0.1).expect("bucket")],
            2
        );
        assert_eq!(h.total, 2);
    }

    #[test]
    fn watch_gauge_follows_guards() {
        let m = Metrics::default();
        let a = m.watch_started();
        let b = m.watch_started();
        assert_eq!(m.watches.load(Ordering::Relaxed), 2);
        drop(a);
        drop(b);
        assert_eq!(m.watches.load(Ordering::Relaxed), 0);
    }
}
