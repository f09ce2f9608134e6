//! The ingress's Prometheus series, served on the agent's /metrics: requests by Ingress,
//! Service and status code, and latency (until the response headers) by Ingress and Service.
//! Requests no rule matched count under empty `ingress` and `service` labels.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::apiserver::metrics::Histogram;

/// Latency buckets in seconds: a proxy hop is sub-millisecond when all is well.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// `ingress` (`namespace/name`) and `service` (`namespace/name:port`).
type Pair = (Arc<str>, Arc<str>);

#[derive(Default)]
struct Series {
    requests: BTreeMap<(Pair, u16), u64>,
    latency: BTreeMap<Pair, Histogram>,
}

#[derive(Default)]
pub struct IngressMetrics {
    series: Mutex<Series>,
}

/// Label values, escaped as the exposition format wants.
fn escaped(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl IngressMetrics {
    pub fn observe(&self, ingress: &Arc<str>, service: &Arc<str>, code: u16, elapsed: Duration) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let pair = (ingress.clone(), service.clone());
        *series.requests.entry((pair.clone(), code)).or_default() += 1;
        series
            .latency
            .entry(pair)
            .or_insert_with(|| Histogram::with_bounds(BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let labels = |(ingress, service): &Pair| {
            let (namespace, name) = ingress.split_once('/').unwrap_or(("", ingress));
            format!(
                "namespace=\"{}\",ingress=\"{}\",service=\"{}\"",
                escaped(namespace),
                escaped(name),
                escaped(service)
            )
        };
        let mut out = String::new();
        out.push_str("# HELP skiff_ingress_requests_total Requests the ingress answered, by Ingress, backend Service port and HTTP status code.\n# TYPE skiff_ingress_requests_total counter\n");
        for ((pair, code), n) in &series.requests {
            let _ = writeln!(
                out,
                "skiff_ingress_requests_total{{{},code=\"{code}\"}} {n}",
                labels(pair)
            );
        }
        out.push_str("# HELP skiff_ingress_request_duration_seconds Time from the request to the response headers, by Ingress and backend Service port.\n# TYPE skiff_ingress_request_duration_seconds histogram\n");
        for (pair, histogram) in &series.latency {
            histogram.write(
                &mut out,
                "skiff_ingress_request_duration_seconds",
                &labels(pair),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_ingress_service_and_code() {
        let metrics = IngressMetrics::default();
        let ingress: Arc<str> = "default/web".into();
        let service: Arc<str> = "default/a:80".into();
        let none: Arc<str> = "".into();
        metrics.observe(&ingress, &service, 200, Duration::from_micros(300));
        metrics.observe(&ingress, &service, 200, Duration::from_millis(3));
        metrics.observe(&none, &none, 404, Duration::from_micros(50));
        let text = metrics.render();
        assert!(
            text.contains(r#"skiff_ingress_requests_total{namespace="default",ingress="web",service="default/a:80",code="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"skiff_ingress_requests_total{namespace="",ingress="",service="",code="404"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"skiff_ingress_request_duration_seconds_bucket{namespace="default",ingress="web",service="default/a:80",le="0.0005"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"skiff_ingress_request_duration_seconds_count{namespace="default",ingress="web",service="default/a:80"} 2"#),
            "{text}"
        );
    }
}
