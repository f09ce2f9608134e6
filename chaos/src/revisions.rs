//! Revisions never go back: an operation that starts after another one returned must report a
//! store revision at least as high (every acknowledged operation here is linearizable, so the
//! header revision it reports is a point in the one global order). Catches a member serving
//! from an older state than a write or read that already completed elsewhere.

use crate::history::{History, Operation, Outcome};

fn revision(op: &Operation) -> Option<i64> {
    match op.result {
        Outcome::Read { revision, .. }
        | Outcome::Written { revision }
        | Outcome::Swapped { revision, .. } => (revision > 0).then_some(revision),
        _ => None,
    }
}

/// Violations, at most `limit` of them, as readable lines.
pub fn revisions_going_back(history: &History, limit: usize) -> Vec<String> {
    let mut done: Vec<(&Operation, i64)> = history
        .ops
        .iter()
        .filter_map(|op| revision(op).map(|r| (op, r)))
        .collect();
    let mut by_invoke = done.clone();
    done.sort_by_key(|(op, _)| op.return_ns);
    by_invoke.sort_by_key(|(op, _)| op.invoke_ns);
    let mut out = Vec::new();
    let mut next = 0;
    // The highest revision among operations that returned before the current invocation.
    let mut high: Option<(&Operation, i64)> = None;
    for (op, rev) in by_invoke {
        while next < done.len() && done[next].0.return_ns < op.invoke_ns {
            if high.is_none_or(|(_, h)| done[next].1 > h) {
                high = Some(done[next]);
            }
            next += 1;
        }
        if let Some((before, h)) = high
            && rev < h
        {
            out.push(format!(
                "op #{} ({} on member {}) saw revision {rev} after op #{} (member {}) had returned revision {h}",
                op.id,
                op.kind.name(),
                op.member,
                before.id,
                before.member
            ));
            if out.len() >= limit {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::OpKind;

    fn read(id: usize, invoke: u64, ret: u64, revision: i64) -> Operation {
        Operation {
            id,
            client: id,
            member: id % 3,
            key: "k".into(),
            kind: OpKind::Get,
            invoke_ns: invoke,
            return_ns: ret,
            result: Outcome::Read {
                value: None,
                mod_revision: 0,
                revision,
            },
        }
    }

    #[test]
    fn later_operations_never_see_an_older_revision() {
        let ok = History {
            ops: vec![read(0, 0, 10, 5), read(1, 5, 20, 4), read(2, 30, 40, 5)],
        };
        assert!(revisions_going_back(&ok, 10).is_empty());
        let back = History {
            ops: vec![read(0, 0, 10, 5), read(1, 20, 30, 4)],
        };
        assert_eq!(revisions_going_back(&back, 10).len(), 1);
    }
}
