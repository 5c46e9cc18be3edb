use super::*;

/// The pattern as text (its matching is tested against Redis in tests/e2e_selector.rs).
fn shape(glob: &str) -> String {
    String::from_utf8_lossy(&glob_pattern(glob)).into_owned()
}

#[test]
fn globs_become_anchored_patterns_with_magic_characters_escaped() {
    assert_eq!(shape("charge-*"), "^charge%-.*$");
    assert_eq!(shape("a.b"), "^a%.b$");
    assert_eq!(shape("100%"), "^100%%$");
    assert_eq!(shape("[x]+(y)^$"), "^%[x%]%+%(y%)%^%$$");
    assert_eq!(shape("*"), "^.*$");
    let q = glob_pattern("?");
    assert!(q.starts_with(b"^[%z\x01-\x7f\xc2-\xf4][\x80-\xbf]*") && q.ends_with(b"$"));
}

#[test]
fn the_budget_adapts_to_the_call_duration_within_bounds() {
    let ms = Duration::from_millis;
    assert_eq!(next_budget(500, ms(1), ms(4), 50, 5000), 750);
    assert_eq!(next_budget(500, ms(3), ms(4), 50, 5000), 500);
    assert_eq!(next_budget(500, ms(9), ms(4), 50, 5000), 250);
    assert_eq!(next_budget(60, ms(20), ms(4), 50, 5000), 50);
    assert_eq!(next_budget(4000, ms(0), ms(4), 50, 5000), 5000);
    assert_eq!(next_budget(1, ms(0), ms(4), 1, 5000), 2);
}

#[test]
fn decodes_a_page_and_a_busy_reply() {
    let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
    let reply = vec![
        s("more"),
        s("1700000000123"),
        s("42"),
        Value::Int(10),
        Value::Int(3),
        Value::Int(90),
        Value::Array(vec![s("40"), s("1"), s("41"), s("-1"), s("42"), s("W")]),
        Value::Array(vec![s("charge"), Value::Int(3)]),
        Value::Array(vec![s("ECONNRESET"), Value::Int(2), s(""), Value::Int(1)]),
        s("1700000000100"),
        s("1700000000123"),
        Value::Array(vec![s("1"), s("7"), s("E"), s("1")]),
    ];
    let PageOutcome::Page(p) = decode_page(reply).unwrap() else {
        panic!("not a page")
    };
    assert!(!p.done);
    assert_eq!(
        p.cursor,
        Some(Cursor {
            score: "1700000000123".into(),
            id: "42".into()
        })
    );
    assert_eq!((p.scanned, p.matched, p.remaining), (10, 3, 90));
    assert_eq!(p.rows[1], ("41".to_string(), JobOutcome::NotFound));
    assert_eq!(p.rows[2].1, JobOutcome::WouldRetry);
    assert_eq!(
        p.totals,
        vec![
            (JobOutcome::Retried, 7),
            (JobOutcome::Error(String::new()), 1)
        ]
    );
    assert_eq!(p.names, vec![("charge".to_string(), 3)]);
    assert_eq!(p.reasons.len(), 2);
    assert_eq!(
        (p.oldest, p.newest),
        (Some(1700000000100), Some(1700000000123))
    );
    let busy = decode_page(vec![s("busy"), s("payments/other")]).unwrap();
    assert_eq!(busy, PageOutcome::Busy("payments/other".into()));
    assert!(decode_page(vec![s("what")]).is_err());
}
