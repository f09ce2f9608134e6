//! skiff-chaos: fault injection, workloads and checkers for the replicated store.
//!
//! What lives here:
//! - `history`: the recorded client history (invoke/return times, outcomes).
//! - `linearizability`: a porcupine-style search per key over a register model, with
//!   `minimize` shrinking a violation to a small offending sub-history.
//! - `watch_checker`: etcd's watch guarantees (ordered, unique, atomic, reliable, resumable,
//!   bookmarks never go back).
//! - `revisions`: no operation sees an older store revision than one that already returned.
//! - `nemesis`: faults with inject/heal over a `MemberControl` the caller provides (the skiff
//!   binary owns the processes; this crate never depends on it).
//! - `disk`: disk full on one member (a small tmpfs data dir filled up).
//! - `membership`: a member removed, wiped and re-joined as a new member.
//! - `netns`, `partition`: namespaces joined by a bridge, and partitions as blackhole routes.
//! - `delay`, `relay`: packet delay as nftables redirects to a userspace relay that holds each
//!   chunk (the kernel here has no netem).
//! - `client`, `workload`, `watch_recorder`: etcd-protocol traffic recorded into a history.
//! - `failover`: leader fault -> new leader -> first acknowledged write, per fault.
//! - `scenario`, `runner`, `convergence`, `report`: one run from fault schedule to verdicts.

pub mod client;
pub mod convergence;
pub mod delay;
pub mod disk;
pub mod error;
pub mod failover;
pub mod history;
pub mod linearizability;
pub mod membership;
pub mod minimize;
pub mod nemesis;
pub mod netns;
pub mod partition;
pub mod relay;
pub mod report;
pub mod revisions;
pub mod runner;
pub mod scenario;
pub mod watch_checker;
pub mod watch_recorder;
pub mod workload;

pub use error::ChaosError;
pub use nemesis::MemberControl;
pub use runner::{RunConfig, run_scenario};
pub use scenario::{SCENARIOS, Scenario};
