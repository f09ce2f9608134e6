//! Shrinks a non-linearizable history of one key to a small offending sub-history.
//!
//! Removing operations can also create violations (drop the write a read saw and the read looks
//! wrong), so removals come in closed groups that provably keep a linearizable history
//! linearizable: a read alone; a write together with every operation that saw or compared
//! against its value (transitively through successful swaps) and every refused swap. Any group
//! whose removal leaves the history non-linearizable is dropped for good, so what remains still
//! proves the violation. Chunks shrink from half the history to single operations (ddmin-like).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::history::{OpKind, Operation, Outcome};
use crate::linearizability::{CheckLimits, Verdict, check_key};

#[derive(Clone, Debug)]
pub struct Minimized {
    pub ops: Vec<Operation>,
    /// False when the time budget ran out before single-operation removal was tried everywhere.
    pub minimal: bool,
}

fn observed_value(op: &Operation) -> Option<&str> {
    match (&op.kind, &op.result) {
        (OpKind::Get, Outcome::Read { value, .. }) => value.as_deref(),
        (OpKind::Cas { expected, .. }, _) => expected.as_deref(),
        _ => None,
    }
}

fn is_refused_cas(op: &Operation) -> bool {
    matches!(
        op.result,
        Outcome::Swapped {
            succeeded: false,
            ..
        }
    )
}

/// Indexes (into `ops`) that must go together with `seed`.
fn closure(ops: &[Operation], seed: usize) -> BTreeSet<usize> {
    let mut group = BTreeSet::from([seed]);
    if !ops[seed].may_write() {
        return group;
    }
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(v) = observed_value(op) {
            readers.entry(v).or_default().push(i);
        }
        if is_refused_cas(op) {
            group.insert(i);
        }
    }
    let mut pending = vec![seed];
    let mut budget = ops.len() * 2 + 1;
    while let Some(writer) = pending.pop() {
        budget = budget.saturating_sub(1);
        if budget == 0 {
            break;
        }
        let Some(value) = ops[writer].kind.written() else {
            continue;
        };
        for &r in readers.get(value).map(Vec::as_slice).unwrap_or(&[]) {
            if group.insert(r) && ops[r].may_write() {
                pending.push(r);
            }
        }
    }
    group
}

fn violates(ops: &[Operation], deadline: Instant) -> bool {
    let limits = CheckLimits {
        max_steps: 20_000_000,
        deadline: Some(deadline),
    };
    matches!(check_key(ops, limits), Verdict::Violation { .. })
}

/// `ops` must be a violation already; returns a subset that still is one.
pub fn minimize(ops: &[Operation], budget: Duration) -> Minimized {
    let deadline = Instant::now() + budget;
    let mut current: Vec<Operation> = ops.to_vec();
    let mut chunk = current.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < current.len() {
            if Instant::now() > deadline {
                return Minimized {
                    ops: current,
                    minimal: false,
                };
            }
            let mut group = BTreeSet::new();
            for seed in start..(start + chunk).min(current.len()) {
                group.extend(closure(&current, seed));
            }
            let candidate: Vec<Operation> = current
                .iter()
                .enumerate()
                .filter(|(i, _)| !group.contains(i))
                .map(|(_, op)| op.clone())
                .collect();
            if candidate.len() < current.len() && violates(&candidate, deadline) {
                current = candidate;
            } else {
                start += chunk;
            }
        }
        if chunk == 1 {
            return Minimized {
                ops: current,
                minimal: true,
            };
        }
        chunk = chunk.div_ceil(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::NEVER;

    fn op(id: usize, kind: OpKind, invoke: u64, ret: u64, result: Outcome) -> Operation {
        Operation {
            id,
            client: 0,
            member: 0,
            key: "k".into(),
            kind,
            invoke_ns: invoke,
            return_ns: ret,
            result,
        }
    }

    #[test]
    fn a_stale_read_shrinks_to_the_write_it_missed_and_the_read() {
        let mut h = Vec::new();
        let mut t = 0;
        // Many good operations, one stale read in the middle.
        for i in 0..40 {
            let v = format!("v{i}");
            h.push(op(
                h.len(),
                OpKind::Put { value: v.clone() },
                t,
                t + 5,
                Outcome::Written { revision: 0 },
            ));
            let seen = if i == 20 { "v19".to_string() } else { v };
            h.push(op(
                h.len(),
                OpKind::Get,
                t + 10,
                t + 15,
                Outcome::Read {
                    value: Some(seen),
                    mod_revision: 0,
                    revision: 0,
                },
            ));
            t += 20;
        }
        h.push(op(
            h.len(),
            OpKind::Put { value: "x".into() },
            t,
            NEVER,
            Outcome::Unknown {
                error: "timeout".into(),
            },
        ));
        assert!(violates(&h, Instant::now() + Duration::from_secs(5)));
        let m = minimize(&h, Duration::from_secs(20));
        assert!(m.minimal);
        assert!(violates(&m.ops, Instant::now() + Duration::from_secs(5)));
        assert!(m.ops.len() <= 3, "{:#?}", m.ops);
        assert!(m.ops.iter().any(|o| o.kind == OpKind::Get));
    }
}
