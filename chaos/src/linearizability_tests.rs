use super::*;

fn op(id: usize, kind: OpKind, invoke: u64, ret: u64, result: Outcome) -> Operation {
    Operation {
        id,
        client: id,
        member: 0,
        key: "k".to_string(),
        kind,
        invoke_ns: invoke,
        return_ns: ret,
        result,
    }
}

fn put(id: usize, v: &str, invoke: u64, ret: u64) -> Operation {
    op(
        id,
        OpKind::Put {
            value: v.to_string(),
        },
        invoke,
        ret,
        Outcome::Written { revision: 0 },
    )
}

fn unknown_put(id: usize, v: &str, invoke: u64) -> Operation {
    op(
        id,
        OpKind::Put {
            value: v.to_string(),
        },
        invoke,
        NEVER,
        Outcome::Unknown {
            error: "timeout".to_string(),
        },
    )
}

fn get(id: usize, seen: Option<&str>, invoke: u64, ret: u64) -> Operation {
    op(
        id,
        OpKind::Get,
        invoke,
        ret,
        Outcome::Read {
            value: seen.map(str::to_string),
            mod_revision: 0,
            revision: 0,
        },
    )
}

fn cas(
    id: usize,
    expected: Option<&str>,
    v: &str,
    invoke: u64,
    ret: u64,
    succeeded: bool,
) -> Operation {
    op(
        id,
        OpKind::Cas {
            expected: expected.map(str::to_string),
            value: v.to_string(),
        },
        invoke,
        ret,
        Outcome::Swapped {
            succeeded,
            revision: 0,
        },
    )
}

fn check(ops: &[Operation]) -> Verdict {
    check_key(ops, CheckLimits::default())
}

fn is_violation(v: &Verdict) -> bool {
    matches!(v, Verdict::Violation { .. })
}

#[test]
fn sequential_history_is_linearizable() {
    let h = [
        get(0, None, 0, 5),
        put(1, "a", 10, 20),
        get(2, Some("a"), 30, 40),
        put(3, "b", 50, 60),
        get(4, Some("b"), 70, 80),
    ];
    assert_eq!(check(&h), Verdict::Linearizable);
}

#[test]
fn stale_read_after_acknowledged_write_is_caught() {
    let h = [
        put(0, "a", 0, 10),
        put(1, "b", 20, 30),
        get(2, Some("a"), 40, 50),
    ];
    assert!(is_violation(&check(&h)), "{:?}", check(&h));
}

#[test]
fn reads_concurrent_with_a_write_may_see_either_value() {
    let h = [
        put(0, "a", 0, 10),
        put(1, "b", 20, 60),
        get(2, Some("a"), 30, 40),
        get(3, Some("b"), 35, 45),
        get(4, Some("b"), 50, 70),
    ];
    assert_eq!(check(&h), Verdict::Linearizable);
}

#[test]
fn a_value_cannot_be_unseen() {
    // Both reads overlap the write, but once one read saw "a" a later read cannot miss it.
    let h = [
        put(0, "a", 0, 100),
        get(1, Some("a"), 10, 20),
        get(2, None, 30, 40),
    ];
    assert!(is_violation(&check(&h)));
}

#[test]
fn unknown_write_may_or_may_not_take_effect() {
    let took_effect = [
        unknown_put(0, "a", 0),
        get(1, None, 10, 20),
        get(2, Some("a"), 30, 40),
    ];
    assert_eq!(check(&took_effect), Verdict::Linearizable);
    let never = [
        unknown_put(0, "a", 0),
        get(1, None, 10, 20),
        get(2, None, 30, 40),
    ];
    assert_eq!(check(&never), Verdict::Linearizable);
    let undone = [
        unknown_put(0, "a", 0),
        get(1, Some("a"), 10, 20),
        get(2, None, 30, 40),
    ];
    assert!(is_violation(&check(&undone)));
    // An unknown write cannot take effect before it was invoked.
    let early = [get(0, Some("a"), 0, 10), unknown_put(1, "a", 20)];
    assert!(is_violation(&check(&early)));
}

#[test]
fn compare_and_swap_follows_the_register() {
    let ok = [
        put(0, "a", 0, 10),
        cas(1, Some("a"), "b", 20, 30, true),
        cas(2, Some("a"), "c", 40, 50, false),
        cas(3, Some("b"), "d", 60, 70, true),
        get(4, Some("d"), 80, 90),
        cas(5, None, "e", 100, 110, false),
    ];
    assert_eq!(check(&ok), Verdict::Linearizable);
    let double_swap = [
        put(0, "a", 0, 10),
        cas(1, Some("a"), "b", 20, 30, true),
        cas(2, Some("a"), "c", 40, 50, true),
    ];
    assert!(is_violation(&check(&double_swap)));
    let wrongly_refused = [put(0, "a", 0, 10), cas(1, Some("a"), "b", 20, 30, false)];
    assert!(is_violation(&check(&wrongly_refused)));
    let create = [cas(0, None, "a", 0, 10, true), get(1, Some("a"), 20, 30)];
    assert_eq!(check(&create), Verdict::Linearizable);
}

#[test]
fn failed_operations_constrain_nothing() {
    let h = [
        op(
            0,
            OpKind::Put {
                value: "a".to_string(),
            },
            0,
            10,
            Outcome::Failed {
                error: "connection refused".to_string(),
            },
        ),
        get(1, None, 20, 30),
    ];
    assert_eq!(check(&h), Verdict::Linearizable);
}

#[test]
fn violation_reports_a_partial_linearization() {
    let h = [
        put(0, "a", 0, 10),
        put(1, "b", 20, 30),
        get(2, Some("a"), 40, 50),
    ];
    match check(&h) {
        Verdict::Violation { longest_prefix } => {
            assert!(!longest_prefix.is_empty());
            assert_eq!(longest_prefix[0], 0);
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn a_large_concurrent_history_is_checked_quickly() {
    // 8 clients, 4000 operations, each overlapping the neighbours' writes.
    let mut h = Vec::new();
    let mut current: Option<String> = None;
    for i in 0..4000u64 {
        let t = i * 10;
        if i % 3 == 0 {
            let v = format!("v{i}");
            h.push(put(i as usize, &v, t, t + 25));
            current = Some(v);
        } else {
            // Reads start after the last write returned, so they must see it.
            h.push(get(i as usize, current.as_deref(), t + 30, t + 35));
        }
    }
    let started = Instant::now();
    assert_eq!(check(&h), Verdict::Linearizable);
    assert!(started.elapsed().as_secs() < 10);
}

#[test]
fn the_search_budget_is_respected() {
    let h = [
        put(0, "a", 0, 10),
        put(1, "b", 20, 30),
        get(2, Some("a"), 40, 50),
    ];
    let tiny = CheckLimits {
        max_steps: 1,
        deadline: None,
    };
    assert!(matches!(check_key(&h, tiny), Verdict::Inconclusive { .. }));
}
