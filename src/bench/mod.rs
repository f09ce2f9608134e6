//! `skiff bench`: side-by-side benchmarks against a peer run in the same session.
//! Absolute figures on a noisy 2-core VM mean little; the ratio to the peer is the result.

pub mod api;
pub mod backup;
pub mod endpoints;
pub mod ingress;
pub mod load;
pub mod netns;
pub mod peers;
pub mod pods;
pub mod scheduler;
pub mod store;
