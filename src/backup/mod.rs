//! Backup and restore of the replicated store (issue 8, store-level parts).
//!
//! What lives here:
//! - `stream`: the member side of the `Backup` admin RPC (a snapshot streamed in chunks).
//! - `save`: `skiff backup --out FILE` (the client: FILE.part, verify while receiving, fsync,
//!   rename).
//! - `inspect`: `skiff backup verify FILE` and `skiff backup ls/prune`.
//! - `restore`: `skiff restore` and the first start of a restored member.
//! - `schedule`: `skiff server --snapshot-cron ...`; every member writes its own snapshots.
//! - `files`: snapshot directories (naming, atomic writes, listing, pruning).
//! - `cron`: the schedule expression parser.

pub mod cron;
pub mod envelope;
pub mod error;
pub mod files;
pub mod inspect;
pub mod restore;
pub mod save;
pub mod schedule;
pub mod selective;
pub mod stream;
