//! The watch guarantees etcd's robustness tests check, over recorded watch sessions:
//! - ordered: event revisions never go back within a session;
//! - unique: no (revision, key) is delivered twice;
//! - atomic: all events of one revision (one transaction) come in one response, complete;
//! - reliable: every committed revision in the session's window appears (no gap);
//! - resumable: a session started at revision R sees exactly the committed suffix from R;
//! - bookmarkable: progress notifications never go back, and no event arrives at or below a
//!   revision a progress notification already covered;
//! - compaction: a stream cut because its history was compacted names a compaction above the
//!   revisions it still owed (its window ends at what it delivered; the next session resumes
//!   from the compacted revision).
//!
//! The committed history is the union of what acknowledged writes, the final read and every
//! watcher reported; two sources disagreeing about one revision is itself a violation.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WatchEvent {
    pub revision: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "item", rename_all = "snake_case")]
pub enum WatchItem {
    /// One watch response carrying events.
    Events { events: Vec<WatchEvent> },
    /// A progress notification / bookmark: everything up to `revision` was delivered.
    Progress { revision: i64 },
    /// The stream was cancelled because history below `revision` is compacted away (etcd's
    /// `compact_revision`); a client resumes from `revision` after re-listing.
    Compacted { revision: i64 },
}

/// One watch stream from creation until it ended (member killed, run over).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WatchSession {
    pub watcher: String,
    pub member: usize,
    /// The first revision the session asked for.
    pub start_revision: i64,
    /// Started from a revision another session of the same watcher stopped at.
    pub resumed: bool,
    pub items: Vec<WatchItem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchViolationKind {
    Inconsistent,
    Unordered,
    Duplicate,
    NotAtomic,
    Gap,
    NotResumable,
    BeforeStart,
    ProgressWentBack,
    EventBehindProgress,
    /// Refused as compacted although the revision asked for was not below the compaction.
    FalseCompaction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchViolation {
    pub kind: WatchViolationKind,
    pub watcher: String,
    pub revision: i64,
    pub detail: String,
}

/// Events of one revision as a sorted set: what the transaction changed within the range.
type RevisionEvents = BTreeSet<(String, Option<String>)>;

#[derive(Clone, Debug, Default)]
pub struct Committed {
    revisions: BTreeMap<i64, RevisionEvents>,
    conflicts: Vec<WatchViolation>,
}

impl Committed {
    /// Adds a change known from `source` (an acknowledged write, the final read, a watcher).
    pub fn add(&mut self, source: &str, revision: i64, key: &str, value: Option<&str>) {
        let entry = (key.to_string(), value.map(str::to_string));
        let events = self.revisions.entry(revision).or_default();
        if let Some((_, other)) = events.iter().find(|(k, _)| k == key)
            && other.as_deref() != value
        {
            self.conflicts.push(WatchViolation {
                kind: WatchViolationKind::Inconsistent,
                watcher: source.to_string(),
                revision,
                detail: format!("{key} = {value:?} but another source saw {other:?}"),
            });
            return;
        }
        events.insert(entry);
    }

    pub fn revisions(&self) -> usize {
        self.revisions.len()
    }
}

/// Builds the committed history from every source, then checks every session against it.
pub fn check_watches(mut committed: Committed, sessions: &[WatchSession]) -> Vec<WatchViolation> {
    for s in sessions {
        for item in &s.items {
            if let WatchItem::Events { events } = item {
                for e in events {
                    committed.add(&s.watcher, e.revision, &e.key, e.value.as_deref());
                }
            }
        }
    }
    let mut violations = std::mem::take(&mut committed.conflicts);
    for s in sessions {
        check_session(&committed, s, &mut violations);
    }
    violations
}

fn check_session(committed: &Committed, s: &WatchSession, out: &mut Vec<WatchViolation>) {
    let mut push = |kind, revision, detail: String| {
        out.push(WatchViolation {
            kind,
            watcher: s.watcher.clone(),
            revision,
            detail,
        })
    };
    let mut seen: BTreeMap<i64, RevisionEvents> = BTreeMap::new();
    let mut keys_seen: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut last_revision = 0i64;
    let mut last_progress = 0i64;
    let mut covered_to = s.start_revision - 1;
    for (response, item) in s.items.iter().enumerate() {
        match item {
            WatchItem::Compacted { revision } => {
                let owed = covered_to + 1;
                if *revision <= owed {
                    push(
                        WatchViolationKind::FalseCompaction,
                        *revision,
                        format!("cancelled as compacted at {revision} while owing {owed}"),
                    );
                }
            }
            WatchItem::Progress { revision } => {
                if *revision < last_progress {
                    push(
                        WatchViolationKind::ProgressWentBack,
                        *revision,
                        format!("progress {revision} after progress {last_progress}"),
                    );
                }
                last_progress = last_progress.max(*revision);
                covered_to = covered_to.max(*revision);
            }
            WatchItem::Events { events } => {
                let mut in_response: BTreeSet<i64> = BTreeSet::new();
                for e in events {
                    if e.revision < s.start_revision {
                        push(
                            WatchViolationKind::BeforeStart,
                            e.revision,
                            format!("event below the start revision {}", s.start_revision),
                        );
                    }
                    if e.revision < last_revision {
                        push(
                            WatchViolationKind::Unordered,
                            e.revision,
                            format!("revision {} after {last_revision}", e.revision),
                        );
                    } else if e.revision == last_revision && !in_response.contains(&e.revision) {
                        push(
                            WatchViolationKind::NotAtomic,
                            e.revision,
                            format!("revision split across responses (at response {response})"),
                        );
                    }
                    if e.revision <= last_progress {
                        push(
                            WatchViolationKind::EventBehindProgress,
                            e.revision,
                            format!("event after progress {last_progress} covered it"),
                        );
                    }
                    if !keys_seen.insert((e.revision, e.key.clone())) {
                        push(
                            WatchViolationKind::Duplicate,
                            e.revision,
                            format!("{} delivered twice", e.key),
                        );
                    }
                    in_response.insert(e.revision);
                    last_revision = last_revision.max(e.revision);
                    covered_to = covered_to.max(e.revision);
                    seen.entry(e.revision)
                        .or_default()
                        .insert((e.key.clone(), e.value.clone()));
                }
            }
        }
    }
    // Atomic: every revision delivered is complete.
    for (revision, events) in &seen {
        if let Some(expected) = committed.revisions.get(revision)
            && expected != events
        {
            push(
                WatchViolationKind::NotAtomic,
                *revision,
                format!("delivered {events:?}, committed {expected:?}"),
            );
        }
    }
    // Reliable / resumable: no committed revision in the window is missing.
    let gap_kind = if s.resumed {
        WatchViolationKind::NotResumable
    } else {
        WatchViolationKind::Gap
    };
    // An empty window (a stream refused at once, e.g. as compacted) owes nothing; a
    // `start..=start-1` range would panic.
    let missing: Vec<i64> = committed
        .revisions
        .range(s.start_revision..covered_to.saturating_add(1).max(s.start_revision))
        .map(|(r, _)| *r)
        .filter(|r| !seen.contains_key(r))
        .collect();
    if let Some(first) = missing.first() {
        let shown: Vec<String> = missing.iter().take(10).map(i64::to_string).collect();
        push(
            gap_kind,
            *first,
            format!(
                "{} committed revision(s) in [{}, {covered_to}] never delivered: {}",
                missing.len(),
                s.start_revision,
                shown.join(", ")
            ),
        );
    }
}

#[cfg(test)]
#[path = "watch_checker_tests.rs"]
mod tests;
