use super::*;

fn ev(revision: i64, key: &str, value: &str) -> WatchEvent {
    WatchEvent {
        revision,
        key: key.to_string(),
        value: Some(value.to_string()),
    }
}

fn events(list: Vec<WatchEvent>) -> WatchItem {
    WatchItem::Events { events: list }
}

fn session(start: i64, items: Vec<WatchItem>) -> WatchSession {
    WatchSession {
        watcher: "w".to_string(),
        member: 0,
        start_revision: start,
        resumed: false,
        items,
    }
}

/// Revisions 2..=6 each wrote one key; revision 7 a transaction over two keys.
fn committed() -> Committed {
    let mut c = Committed::default();
    for r in 2..=6 {
        c.add("acked", r, &format!("k{}", r % 2), Some(&format!("v{r}")));
    }
    c.add("acked", 7, "k0", Some("t0"));
    c.add("acked", 7, "k1", Some("t1"));
    c
}

fn full() -> Vec<WatchItem> {
    vec![
        events(vec![ev(2, "k0", "v2"), ev(3, "k1", "v3")]),
        events(vec![ev(4, "k0", "v4")]),
        WatchItem::Progress { revision: 4 },
        events(vec![ev(5, "k1", "v5"), ev(6, "k0", "v6")]),
        events(vec![ev(7, "k0", "t0"), ev(7, "k1", "t1")]),
        WatchItem::Progress { revision: 7 },
    ]
}

fn kinds(v: &[WatchViolation]) -> Vec<WatchViolationKind> {
    let mut k: Vec<_> = v.iter().map(|v| v.kind).collect();
    k.dedup();
    k
}

#[test]
fn a_complete_stream_passes() {
    let v = check_watches(committed(), &[session(1, full())]);
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn a_resumed_suffix_passes_and_a_short_one_fails() {
    let suffix = vec![
        events(vec![ev(5, "k1", "v5"), ev(6, "k0", "v6")]),
        events(vec![ev(7, "k0", "t0"), ev(7, "k1", "t1")]),
    ];
    let mut s = session(5, suffix);
    s.resumed = true;
    assert!(check_watches(committed(), std::slice::from_ref(&s)).is_empty());
    let mut short = session(4, s.items.clone());
    short.resumed = true;
    let v = check_watches(committed(), &[short]);
    assert_eq!(kinds(&v), vec![WatchViolationKind::NotResumable], "{v:?}");
}

#[test]
fn going_back_is_unordered() {
    let mut items = full();
    items.swap(0, 1);
    let v = check_watches(committed(), &[session(1, items)]);
    assert!(kinds(&v).contains(&WatchViolationKind::Unordered), "{v:?}");
}

#[test]
fn a_repeated_event_is_a_duplicate() {
    let mut items = full();
    items.insert(2, events(vec![ev(4, "k0", "v4")]));
    let v = check_watches(committed(), &[session(1, items)]);
    assert!(kinds(&v).contains(&WatchViolationKind::Duplicate), "{v:?}");
}

#[test]
fn a_split_or_partial_transaction_is_not_atomic() {
    let mut split = full();
    split[4] = events(vec![ev(7, "k0", "t0")]);
    split.insert(5, events(vec![ev(7, "k1", "t1")]));
    let v = check_watches(committed(), &[session(1, split)]);
    assert_eq!(kinds(&v), vec![WatchViolationKind::NotAtomic], "{v:?}");
    let mut partial = full();
    partial[4] = events(vec![ev(7, "k0", "t0")]);
    let v = check_watches(committed(), &[session(1, partial)]);
    assert_eq!(kinds(&v), vec![WatchViolationKind::NotAtomic], "{v:?}");
}

#[test]
fn a_missing_revision_is_a_gap() {
    let mut items = full();
    items[1] = events(vec![]);
    let v = check_watches(committed(), &[session(1, items)]);
    assert_eq!(kinds(&v), vec![WatchViolationKind::Gap], "{v:?}");
    assert_eq!(v[0].revision, 4);
}

#[test]
fn a_gap_past_the_last_delivery_is_found_through_progress() {
    // The stream stops at 6 but a progress notification claims 7 was delivered.
    let items = vec![
        events(vec![ev(2, "k0", "v2"), ev(3, "k1", "v3")]),
        events(vec![ev(4, "k0", "v4")]),
        events(vec![ev(5, "k1", "v5"), ev(6, "k0", "v6")]),
        WatchItem::Progress { revision: 7 },
    ];
    let v = check_watches(committed(), &[session(1, items)]);
    assert_eq!(kinds(&v), vec![WatchViolationKind::Gap], "{v:?}");
}

#[test]
fn a_cut_stream_is_not_a_gap() {
    let items = full()[..2].to_vec();
    assert!(check_watches(committed(), &[session(1, items)]).is_empty());
}

#[test]
fn progress_going_back_or_events_behind_it_fail() {
    let mut back = full();
    back.push(WatchItem::Progress { revision: 5 });
    let v = check_watches(committed(), &[session(1, back)]);
    assert_eq!(kinds(&v), vec![WatchViolationKind::ProgressWentBack]);
    let mut early = full();
    early[2] = WatchItem::Progress { revision: 5 };
    let v = check_watches(committed(), &[session(1, early)]);
    assert_eq!(kinds(&v), vec![WatchViolationKind::EventBehindProgress]);
}

#[test]
fn a_value_no_one_else_saw_is_inconsistent() {
    let mut items = full();
    items[1] = events(vec![ev(4, "k0", "phantom")]);
    let v = check_watches(committed(), &[session(1, items)]);
    assert!(
        kinds(&v).contains(&WatchViolationKind::Inconsistent),
        "{v:?}"
    );
}

#[test]
fn events_below_the_start_fail() {
    let v = check_watches(committed(), &[session(3, full())]);
    assert!(
        kinds(&v).contains(&WatchViolationKind::BeforeStart),
        "{v:?}"
    );
}

#[test]
fn a_compacted_stream_ends_its_window_and_a_false_compaction_fails() {
    // Delivered up to 4, then cut because history below 6 is gone: no gap is claimed for 5.
    let cut = session(
        2,
        vec![
            events(vec![ev(2, "k0", "v2"), ev(3, "k1", "v3")]),
            events(vec![ev(4, "k0", "v4")]),
            WatchItem::Compacted { revision: 6 },
        ],
    );
    let resumed = session(
        6,
        vec![
            events(vec![ev(6, "k0", "v6")]),
            events(vec![ev(7, "k0", "t0"), ev(7, "k1", "t1")]),
        ],
    );
    let v = check_watches(committed(), &[cut, resumed]);
    assert!(v.is_empty(), "{v:?}");
    // Refused as compacted at 3 while it still owed 5: the server lied.
    let false_cut = session(
        2,
        vec![
            events(vec![
                ev(2, "k0", "v2"),
                ev(3, "k1", "v3"),
                ev(4, "k0", "v4"),
            ]),
            WatchItem::Compacted { revision: 3 },
        ],
    );
    let v = check_watches(committed(), &[false_cut]);
    assert_eq!(
        kinds(&v),
        vec![WatchViolationKind::FalseCompaction],
        "{v:?}"
    );
}

#[test]
fn a_stream_refused_at_once_owes_nothing() {
    let refused = session(3, vec![WatchItem::Compacted { revision: 5 }]);
    let v = check_watches(committed(), &[refused]);
    assert!(v.is_empty(), "{v:?}");
}
