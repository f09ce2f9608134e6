//! The per-run report: scenario, seed, faults with times, operation counts, every checker's
//! verdict (with the minimal offending sub-history of a linearizability violation) and the
//! failover times, saved as report.json and report.txt under the run's results directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::convergence::Convergence;
use crate::error::ChaosError;
use crate::failover::FailoverSummary;
use crate::history::{History, NEVER, Operation};
use crate::linearizability::Verdict;
use crate::watch_checker::WatchViolation;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    pub at_ms: u64,
    pub action: String,
    pub member: Option<usize>,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyReport {
    pub key: String,
    pub ops: usize,
    pub verdict: Verdict,
    /// On a violation: a small sub-history that is still not linearizable.
    pub offending: Vec<Operation>,
    pub offending_is_minimal: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WatchReport {
    pub sessions: usize,
    pub resumed_sessions: usize,
    /// Sessions the server cut because the history they still owed was compacted.
    #[serde(default)]
    pub compacted_sessions: usize,
    pub events: usize,
    pub committed_revisions: usize,
    pub violations: Vec<WatchViolation>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub about: String,
    pub seed: u64,
    pub duration_secs: u64,
    pub members: usize,
    pub clients: usize,
    pub faults: Vec<FaultRecord>,
    pub op_counts: BTreeMap<String, usize>,
    pub total_ops: usize,
    pub linearizability: Vec<KeyReport>,
    pub watch: WatchReport,
    pub convergence: Convergence,
    pub lost_writes: Vec<String>,
    /// Operations that saw an older revision than one that had already returned.
    pub revisions_back: Vec<String>,
    /// Kill/pause of the leader -> first acknowledged write, per fault.
    pub failover_ms: Vec<u64>,
    pub failover_p50_ms: Option<u64>,
    pub failover_p99_ms: Option<u64>,
    /// The same failovers split into election and first commit.
    pub failover: FailoverSummary,
    /// Problems running the scenario itself (a fault that could not be injected, ...).
    pub run_errors: Vec<String>,
    pub passed: bool,
}

/// Nearest-rank percentile.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl Report {
    pub fn linearizable(&self) -> bool {
        self.linearizability
            .iter()
            .all(|k| !matches!(k.verdict, Verdict::Violation { .. }))
    }

    pub fn inconclusive(&self) -> bool {
        self.linearizability
            .iter()
            .any(|k| matches!(k.verdict, Verdict::Inconclusive { .. }))
    }

    /// Sets `passed` from the verdicts.
    pub fn decide(&mut self) {
        self.passed = self.linearizable()
            && !self.inconclusive()
            && self.watch.violations.is_empty()
            && self.convergence.converged
            && self.lost_writes.is_empty()
            && self.revisions_back.is_empty()
            && self.run_errors.is_empty();
    }

    pub fn text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "scenario   {} ({})", self.scenario, self.about);
        let _ = writeln!(
            t,
            "seed       {}    duration {} s    members {}    clients {}",
            self.seed, self.duration_secs, self.members, self.clients
        );
        let _ = writeln!(
            t,
            "verdict    {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(t, "\nfaults ({}):", self.faults.len());
        for f in &self.faults {
            let _ = writeln!(t, "  {:>8} ms  {:<7} {}", f.at_ms, f.action, f.detail);
        }
        let _ = writeln!(t, "\noperations ({}):", self.total_ops);
        for (kind, n) in &self.op_counts {
            let _ = writeln!(t, "  {kind:<14} {n}");
        }
        let _ = writeln!(t, "\nlinearizability (per key):");
        for k in &self.linearizability {
            let verdict = match &k.verdict {
                Verdict::Linearizable => "ok".to_string(),
                Verdict::Violation { .. } => "VIOLATION".to_string(),
                Verdict::Inconclusive { reason } => format!("inconclusive: {reason}"),
            };
            let _ = writeln!(t, "  {:<16} {:>6} ops  {verdict}", k.key, k.ops);
            if !k.offending.is_empty() {
                let _ = writeln!(
                    t,
                    "    offending sub-history ({} ops{}):",
                    k.offending.len(),
                    if k.offending_is_minimal {
                        ", minimal"
                    } else {
                        ", shrinking ran out of time"
                    }
                );
                for op in &k.offending {
                    let _ = writeln!(t, "      {}", describe(op));
                }
            }
        }
        let w = &self.watch;
        let _ = writeln!(
            t,
            "\nwatch: {} sessions ({} resumed, {} cut by compaction), {} events, {} committed revisions in range: {}",
            w.sessions,
            w.resumed_sessions,
            w.compacted_sessions,
            w.events,
            w.committed_revisions,
            if w.violations.is_empty() {
                "ok".to_string()
            } else {
                format!("{} VIOLATION(S)", w.violations.len())
            }
        );
        for v in w.violations.iter().take(20) {
            let _ = writeln!(
                t,
                "  {:?} {} at {}: {}",
                v.kind, v.watcher, v.revision, v.detail
            );
        }
        let c = &self.convergence;
        let _ = writeln!(
            t,
            "\nconvergence at revision {}: {}",
            c.revision,
            if c.converged { "ok" } else { "DIVERGED" }
        );
        for (i, m) in c.members.iter().enumerate() {
            match m {
                Ok(d) => {
                    let _ = writeln!(t, "  member {i}: {d}");
                }
                Err(e) => {
                    let _ = writeln!(t, "  member {i}: error {e}");
                }
            }
        }
        let _ = writeln!(
            t,
            "\nlost acknowledged writes: {}",
            if self.lost_writes.is_empty() {
                "none".to_string()
            } else {
                self.lost_writes.join("; ")
            }
        );
        let _ = writeln!(
            t,
            "revisions going back: {}",
            if self.revisions_back.is_empty() {
                "none".to_string()
            } else {
                self.revisions_back.join("; ")
            }
        );
        let _ = writeln!(
            t,
            "failover (leader fault -> first acknowledged write): n={} p50={} p99={} all={:?}",
            self.failover_ms.len(),
            fmt_ms(self.failover_p50_ms),
            fmt_ms(self.failover_p99_ms),
            self.failover_ms
        );
        let f = &self.failover;
        if !f.samples.is_empty() {
            let _ = writeln!(
                t,
                "  fault -> new leader named: p50={} p99={}; new leader -> first write: p50={} p99={}; elections over 1 term: {}",
                fmt_ms(f.elected_p50_ms),
                fmt_ms(f.elected_p99_ms),
                fmt_ms(f.commit_p50_ms),
                fmt_ms(f.commit_p99_ms),
                f.multi_term_elections
            );
        }
        for e in &self.run_errors {
            let _ = writeln!(t, "run error: {e}");
        }
        t
    }

    /// Writes report.json, report.txt and history.json into `dir`; returns the text path.
    pub fn save(&self, dir: &Path, history: &History) -> Result<PathBuf, ChaosError> {
        let io = |path: &Path, source| ChaosError::Report {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_vec_pretty(self)?).map_err(|e| io(&json, e))?;
        let hist = dir.join("history.json");
        std::fs::write(&hist, serde_json::to_vec(history)?).map_err(|e| io(&hist, e))?;
        let text = dir.join("report.txt");
        std::fs::write(&text, self.text()).map_err(|e| io(&text, e))?;
        Ok(text)
    }
}

fn fmt_ms(v: Option<u64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v} ms"))
}

fn describe(op: &Operation) -> String {
    let ret = if op.return_ns == NEVER {
        "never".to_string()
    } else {
        format!("{:.3}", op.return_ns as f64 / 1e9)
    };
    format!(
        "#{:<6} client {:<3} member {} [{:.3} s .. {} s] {:?} -> {:?}",
        op.id,
        op.client,
        op.member,
        op.invoke_ns as f64 / 1e9,
        ret,
        op.kind,
        op.result
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
