//! Query counters by type and response code, plus total answer latency. Fixed arrays of atomics:
//! counting must cost nothing next to a 20 µs answer, so no lock and no allocation per query.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;

const QTYPES: [&str; 10] = [
    "A", "AAAA", "SRV", "PTR", "CNAME", "TXT", "SOA", "NS", "ANY", "other",
];
const RCODES: [&str; 6] = [
    "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "FORMERR", "other",
];

#[derive(Debug, Default)]
pub struct QueryMetrics {
    counts: [[AtomicU64; RCODES.len()]; QTYPES.len()],
    latency_micros_sum: AtomicU64,
}

impl QueryMetrics {
    /// Counts one answered query.
    pub fn record(&self, qtype: RecordType, rcode: ResponseCode, took: Duration) {
        self.counts[qtype_index(qtype)][rcode_index(rcode)].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_micros_sum.fetch_add(micros, Ordering::Relaxed);
    }

    /// Queries counted for this type and code (type and code as dig prints them).
    pub fn count(&self, qtype: &str, rcode: &str) -> u64 {
        let q = QTYPES.iter().position(|t| *t == qtype);
        let r = RCODES.iter().position(|c| *c == rcode);
        match (q, r) {
            (Some(q), Some(r)) => self.counts[q][r].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Prometheus text exposition, for the API server's /metrics to append.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP skiff_dns_requests_total DNS queries answered, by type and rcode.\n");
        out.push_str("# TYPE skiff_dns_requests_total counter\n");
        let mut total = 0;
        for (q, qtype) in QTYPES.iter().enumerate() {
            for (r, rcode) in RCODES.iter().enumerate() {
                let n = self.counts[q][r].load(Ordering::Relaxed);
                total += n;
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "skiff_dns_requests_total{{type=\"{qtype}\",rcode=\"{rcode}\"}} {n}"
                    );
                }
            }
        }
        let sum = self.latency_micros_sum.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str("# HELP skiff_dns_request_duration_seconds Time to answer DNS queries.\n");
        out.push_str("# TYPE skiff_dns_request_duration_seconds summary\n");
        let _ = writeln!(out, "skiff_dns_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "skiff_dns_request_duration_seconds_count {total}");
        out
    }
}

fn qtype_index(qtype: RecordType) -> usize {
    match qtype {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::SRV => 2,
        RecordType::PTR => 3,
        RecordType::CNAME => 4,
        RecordType::TXT => 5,
        RecordType::SOA => 6,
        RecordType::NS => 7,
        RecordType::ANY => 8,
        _ => 9,
    }
}

fn rcode_index(rcode: ResponseCode) -> usize {
    match rcode {
        ResponseCode::NoError => 0,
        ResponseCode::NXDomain => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::Refused => 3,
        ResponseCode::FormErr => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let metrics = QueryMetrics::default();
        metrics.record(
            RecordType::A,
            ResponseCode::NoError,
            Duration::from_micros(10),
        );
        metrics.record(
            RecordType::A,
            ResponseCode::NXDomain,
            Duration::from_micros(10),
        );
        metrics.record(
            RecordType::MX,
            ResponseCode::Refused,
            Duration::from_micros(10),
        );
        assert_eq!(metrics.count("A", "NOERROR"), 1);
        assert_eq!(metrics.count("other", "REFUSED"), 1);
        let text = metrics.render();
        assert!(text.contains("skiff_dns_requests_total{type=\"A\",rcode=\"NXDOMAIN\"} 1"));
        assert!(text.contains("skiff_dns_request_duration_seconds_count 3"));
    }
}
