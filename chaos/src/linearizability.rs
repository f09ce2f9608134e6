//! Linearizability of one register (one key), porcupine-style: Wing & Gong's search with Lowe's
//! memoization. Keys are independent registers (P-compositionality), so a history is checked
//! one key at a time.
//!
//! The search walks a doubly-linked list of call and return entries sorted by time:
//! 1. At a call entry, try to linearize its operation now: apply it to the model; if the
//!    (linearized set, state) pair is new, push a frame, lift the call and its return out of the
//!    list and restart from the head.
//! 2. At a return entry, the operation it belongs to should have been linearized before it
//!    returned: backtrack (pop a frame, put its entries back, try its next alternative or move on).
//! 3. The history is linearizable when the list is empty; a backtrack with an empty stack means
//!    no order exists.
//!
//! Unknown-outcome writes return at `NEVER` and have two alternatives (took effect / did not);
//! failed operations and unknown reads constrain nothing and are left out.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::history::{NEVER, OpKind, Operation, Outcome};

/// How much work one key's search may do before it gives up (inconclusive, never a hang).
#[derive(Clone, Copy, Debug)]
pub struct CheckLimits {
    pub max_steps: u64,
    pub deadline: Option<Instant>,
}

impl Default for CheckLimits {
    fn default() -> Self {
        CheckLimits {
            max_steps: 200_000_000,
            deadline: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Linearizable,
    /// No linearization exists; `longest_prefix` is the longest partial linearization found
    /// (operation ids, in linearization order).
    Violation {
        longest_prefix: Vec<usize>,
    },
    /// The search ran out of budget.
    Inconclusive {
        reason: String,
    },
}

/// Register state: 0 = absent, v + 1 = interned value v.
type State = u32;
const ABSENT: State = 0;

#[derive(Clone, Copy, Debug)]
enum Step {
    Get {
        seen: State,
    },
    Put {
        value: State,
        known: bool,
    },
    Cas {
        expected: State,
        value: State,
        result: CasResult,
    },
}

#[derive(Clone, Copy, Debug)]
enum CasResult {
    Succeeded,
    Refused,
    Unknown,
}

struct Prepared {
    id: usize,
    invoke: u64,
    ret: u64,
    step: Step,
}

/// The register model: the states an operation may lead to from `state` (empty: not allowed).
fn next_states(state: State, step: Step) -> ([State; 2], usize) {
    match step {
        Step::Get { seen } if seen == state => ([state, state], 1),
        Step::Get { .. } => ([state, state], 0),
        Step::Put { value, known: true } => ([value, value], 1),
        Step::Put {
            value,
            known: false,
        } => ([value, state], 2),
        Step::Cas {
            expected,
            value,
            result,
        } => match (result, expected == state) {
            (CasResult::Succeeded, true) => ([value, value], 1),
            (CasResult::Refused, false) => ([state, state], 1),
            (CasResult::Unknown, true) => ([value, state], 2),
            (CasResult::Unknown, false) => ([state, state], 1),
            (CasResult::Succeeded, false) | (CasResult::Refused, true) => ([state, state], 0),
        },
    }
}

/// Turns one key's operations into model steps; operations that constrain nothing are dropped.
fn prepare(ops: &[Operation]) -> Vec<Prepared> {
    let mut values: HashMap<String, State> = HashMap::new();
    let mut intern = |v: &str| -> State {
        let next = values.len() as State + 1;
        *values.entry(v.to_string()).or_insert(next)
    };
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let step = match (&op.kind, &op.result) {
            (_, Outcome::Failed { .. }) => continue,
            (OpKind::Get, Outcome::Read { value, .. }) => Step::Get {
                seen: value.as_deref().map_or(ABSENT, &mut intern),
            },
            (OpKind::Get, _) => continue,
            (OpKind::Put { value }, result) => Step::Put {
                value: intern(value),
                known: !matches!(result, Outcome::Unknown { .. }),
            },
            (OpKind::Cas { expected, value }, result) => Step::Cas {
                expected: expected.as_deref().map_or(ABSENT, &mut intern),
                value: intern(value),
                result: match result {
                    Outcome::Swapped {
                        succeeded: true, ..
                    } => CasResult::Succeeded,
                    Outcome::Swapped { .. } => CasResult::Refused,
                    _ => CasResult::Unknown,
                },
            },
        };
        let ret = match op.result {
            Outcome::Unknown { .. } => NEVER,
            _ => op.return_ns.max(op.invoke_ns),
        };
        out.push(Prepared {
            id: op.id,
            invoke: op.invoke_ns,
            ret,
            step,
        });
    }
    out
}

const NIL: usize = usize::MAX;

/// The entry list: entries 0..2n are calls and returns, `head` is a sentinel.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// For a call entry, its return entry.
    matching: Vec<usize>,
    head: usize,
}

impl EntryList {
    fn new(ops: &[Prepared]) -> EntryList {
        // (time, return-after-call at equal times, op) gives a deterministic order.
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.invoke, 0, i));
            order.push((op.ret, 1, i));
        }
        order.sort_unstable();
        let n = order.len();
        let head = n;
        let mut list = EntryList {
            next: vec![NIL; n + 1],
            prev: vec![NIL; n + 1],
            op: vec![0; n],
            is_call: vec![false; n],
            matching: vec![NIL; n],
            head,
        };
        let mut call_of = vec![NIL; ops.len()];
        for (e, &(_, kind, op)) in order.iter().enumerate() {
            list.op[e] = op;
            list.is_call[e] = kind == 0;
            if kind == 0 {
                call_of[op] = e;
            } else {
                list.matching[call_of[op]] = e;
            }
        }
        let mut last = head;
        for e in 0..n {
            list.next[last] = e;
            list.prev[e] = last;
            last = e;
        }
        list
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.matching[call]);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.matching[call]);
        self.relink(call);
    }
}

struct Frame {
    call: usize,
    prev_state: State,
    alt: usize,
}

/// Checks one key's operations against a register that starts absent.
pub fn check_key(ops: &[Operation], limits: CheckLimits) -> Verdict {
    let prepared = prepare(ops);
    if prepared.is_empty() {
        return Verdict::Linearizable;
    }
    let mut list = EntryList::new(&prepared);
    let words = prepared.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut state = ABSENT;
    let mut entry = list.next[list.head];
    let mut alt_start = 0usize;
    let mut steps: u64 = 0;
    while list.next[list.head] != NIL {
        steps += 1;
        if steps > limits.max_steps {
            return Verdict::Inconclusive {
                reason: format!("gave up after {} search steps", limits.max_steps),
            };
        }
        if steps.is_multiple_of(4096)
            && let Some(deadline) = limits.deadline
            && Instant::now() > deadline
        {
            return Verdict::Inconclusive {
                reason: "gave up at the time limit".to_string(),
            };
        }
        if entry == NIL {
            // Cannot happen: every remaining call has its return after it in the list.
            return Verdict::Inconclusive {
                reason: "internal: walked off the entry list".to_string(),
            };
        }
        let op = list.op[entry];
        if list.is_call[entry] {
            let (states, count) = next_states(state, prepared[op].step);
            let mut advanced = false;
            for (alt, &new_state) in states.iter().enumerate().take(count).skip(alt_start) {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), new_state)) {
                    stack.push(Frame {
                        call: entry,
                        prev_state: state,
                        alt,
                    });
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|f| prepared[list.op[f.call]].id).collect();
                    }
                    state = new_state;
                    list.lift(entry);
                    entry = list.next[list.head];
                    advanced = true;
                    break;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            alt_start = 0;
            if !advanced {
                entry = list.next[entry];
            }
        } else {
            let Some(frame) = stack.pop() else {
                return Verdict::Violation {
                    longest_prefix: longest,
                };
            };
            let popped = list.op[frame.call];
            linearized[popped / 64] &= !(1 << (popped % 64));
            state = frame.prev_state;
            list.unlift(frame.call);
            entry = frame.call;
            alt_start = frame.alt + 1;
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
#[path = "linearizability_tests.rs"]
mod tests;
