//! The short chaos suite CI runs: `skiff chaos run` against real processes, the main loopback
//! scenarios in two parallel lanes (each on its own loopback /24), and, as root, packet delay
//! in network namespaces beside them; every checker must pass and a report must exist. About
//! two and a half minutes here.

use std::path::{Path, PathBuf};
use std::process::Command;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn run_chaos(scenario: &str, duration: u32, prefix: &str, results: &Path) -> (bool, String) {
    run_chaos_with(scenario, duration, &["--ip-prefix", prefix], results)
}

fn run_chaos_with(scenario: &str, duration: u32, extra: &[&str], results: &Path) -> (bool, String) {
    let out = Command::new(SKIFF)
        .args(["chaos", "run", "--scenario", scenario, "--seed", "7"])
        .args(["--duration", &duration.to_string()])
        .args(extra)
        .arg("--results")
        .arg(results)
        .env("SKIFF_LOG", "warn")
        .env_remove("SKIFF_UNSAFE_SERIALIZABLE_READS")
        .output()
        .expect("run skiff chaos");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn reports(results: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for run in std::fs::read_dir(results).expect("results dir").flatten() {
        let report = run.path().join("report.json");
        if report.exists() {
            found.push(report);
        }
    }
    found
}

/// Two lanes run side by side, each on its own loopback /24, each scenario after the other.
const LANES: [(&str, &[(&str, u32)]); 2] = [
    (
        "127.0.42.",
        &[
            ("kill-leader", 20),
            ("rolling-restart", 15),
            ("kill-follower-snapshot", 15),
        ],
    ),
    (
        "127.0.43.",
        &[
            ("pause", 15),
            ("compaction-watches", 15),
            ("pause-leader", 15),
            ("member-remove-readd", 20),
        ],
    ),
];

#[test]
fn the_main_scenarios_pass_every_checker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lanes: Vec<_> = LANES
        .iter()
        .map(|(prefix, scenarios)| {
            let base = dir.path().to_path_buf();
            std::thread::spawn(move || {
                scenarios
                    .iter()
                    .map(|(name, secs)| {
                        let results = base.join(name);
                        let (ok, output) = run_chaos(name, *secs, prefix, &results);
                        (*name, ok, output, results)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for lane in lanes {
        for (name, ok, output, results) in lane.join().expect("chaos lane") {
            check_report(name, ok, &output, &results);
        }
    }
}

/// Packet delay needs network namespaces (root); it runs beside the loopback lanes.
#[test]
fn packet_delay_in_network_namespaces_passes_every_checker() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping packet-delay: --netns needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let results = dir.path().join("packet-delay");
    let (ok, output) = run_chaos_with(
        "packet-delay",
        20,
        &["--netns", "--netns-prefix", "skct"],
        &results,
    );
    check_report("packet-delay", ok, &output, &results);
}

fn check_report(name: &str, ok: bool, output: &str, results: &Path) {
    assert!(ok, "{name} failed:\n{output}");
    let found = reports(results);
    assert_eq!(found.len(), 1, "{name}: one report.json under {results:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&found[0]).expect("read report")).expect("json");
    assert_eq!(report["passed"], true, "{name}: {output}");
    assert!(
        report["total_ops"].as_u64().unwrap_or(0) > 100,
        "{name}: {output}"
    );
    assert!(
        report["faults"].as_array().is_some_and(|f| !f.is_empty()),
        "{name}: {output}"
    );
    let details: Vec<&str> = report["faults"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["detail"].as_str()).collect())
        .unwrap_or_default();
    if name == "member-remove-readd" {
        // A follower first, then the leader; each back as a voter with a new raft id.
        assert!(
            details.iter().any(|d| d.contains("(leader)")),
            "{name}: {details:?}"
        );
        assert!(
            details
                .iter()
                .filter(|d| d.contains("re-joined as raft id"))
                .count()
                >= 2,
            "{name}: {details:?}"
        );
    }
    if name == "packet-delay" {
        assert!(
            details.iter().any(|d| d.contains("measured round trip")),
            "{name}: {details:?}"
        );
    }
    if name == "kill-leader" {
        assert!(report["failover_p50_ms"].is_u64(), "{name}: {output}");
        // The breakdown: when a survivor first named the new leader, per failover.
        let f = &report["failover"];
        assert!(f["elected_p50_ms"].is_u64(), "{name}: {f}");
    }
}
