//! The short chaos suite CI runs: `skiff chaos run` against real processes, the main loopback
//! scenarios in two parallel lanes (each on its own loopback /24); every checker must pass and
//! a report must exist. About two minutes here.

use std::path::{Path, PathBuf};
use std::process::Command;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn run_chaos(scenario: &str, duration: u32, prefix: &str, results: &Path) -> (bool, String) {
    let out = Command::new(SKIFF)
        .args(["chaos", "run", "--scenario", scenario, "--seed", "7"])
        .args(["--duration", &duration.to_string()])
        .args(["--ip-prefix", prefix])
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
    if name == "kill-leader" {
        assert!(report["failover_p50_ms"].is_u64(), "{name}: {output}");
        // The breakdown: when a survivor first named the new leader, per failover.
        let f = &report["failover"];
        assert!(f["elected_p50_ms"].is_u64(), "{name}: {f}");
    }
}
