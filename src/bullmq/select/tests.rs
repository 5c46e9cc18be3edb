use super::*;

#[test]
fn globs_match_whole_names_with_star_and_question_mark() {
    let m = |g: &str, n: &str| glob_matches(g, n.as_bytes());
    assert!(m("charge-*", "charge-eu"));
    assert!(!m("charge-*", "refund-charge-eu"));
    assert!(m("*-eu", "charge-eu"));
    assert!(m("a?c", "abc") && m("a?c", "aéc") && !m("a?c", "ac") && !m("a?c", "abbc"));
    assert!(m("*", "") && m("*", "anything") && !m("?", ""));
    assert!(m("a.b%[x]^$", "a.b%[x]^$") && !m("a.b", "axb"));
    assert!(m("*a*a*a*a*a*a*a*a*c", "aaaaaaaaac"));
    assert!(!m("*a*a*a*a*a*a*a*a*c", &"a".repeat(64)));
    assert!(m("??", "éü") && !m("???", "éü"));
}

#[test]
fn a_character_is_a_byte_and_its_continuation_bytes_even_in_invalid_text() {
    assert!(glob_matches("a?", b"a\xff\x80"));
    assert!(!glob_matches("a?", b"a\x80"), "a\\x80 is one character");
    assert!(glob_matches("?", b"a\x80"));
    assert!(glob_matches("?", b"\x80\x80"));
    assert!(!glob_matches("a*", b"\x80a"));
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
        s("1700000009000"),
        Value::Int(2),
        Value::Int(5),
        Value::Int(4),
        Value::Int(3),
        Value::Array(vec![s("1"), s("1"), s("-1"), s("1"), s("W"), s("1")]),
    ];
    let PageOutcome::Page(p) = decode_page(reply, "me").unwrap() else {
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
    assert_eq!((p.call_scanned, p.call_matched), (4, 3));
    assert_eq!(p.counts[1], (JobOutcome::NotFound, 1));
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
    let invalid = Value::BulkString(b"caf\xc3".to_vec());
    assert_eq!(
        text(&invalid).unwrap(),
        "caf\u{fffd}",
        "a cut name still decodes"
    );
    assert_eq!(p.reasons.len(), 2);
    assert_eq!(
        (p.oldest, p.newest),
        (Some(1700000000100), Some(1700000000123))
    );
    let busy = decode_page(vec![s("busy"), s("payments/other")], "me").unwrap();
    assert_eq!(busy, PageOutcome::Busy("payments/other".into()));
    assert_eq!((p.upper, p.unexamined), (1700000009000, 2));
    let lost = decode_page(vec![s("lost"), s(""), Value::Int(0)], "me").unwrap();
    assert_eq!(
        lost,
        PageOutcome::Lost {
            scanned: None,
            matched: 0
        }
    );
    let behind = decode_page(vec![s("lost"), s("120"), s("80")], "me").unwrap();
    assert_eq!(
        behind,
        PageOutcome::Lost {
            scanned: Some(120),
            matched: 80
        }
    );
    assert!(decode_page(vec![s("what")], "me").is_err());
}

/// Glob matching written the obvious (exponential) way, on characters, to check
/// `glob_matches` against on valid UTF-8 names.
fn naive(pattern: &[char], name: &[char]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, _) => name.is_empty(),
        (Some(('*', rest)), _) => (0..=name.len()).any(|i| naive(rest, &name[i..])),
        (Some(('?', rest)), Some((_, n))) => naive(rest, n),
        (Some((p, rest)), Some((c, n))) if p == c => naive(rest, n),
        _ => false,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// The reference matcher agrees with the naive one on names and globs made of the
    /// characters that trip pattern translations (`.`, `%`, `[`, `\`), multi-byte ones,
    /// and the wildcards.
    #[test]
    fn the_reference_glob_matcher_agrees_with_the_naive_one(
        glob in proptest::collection::vec(proptest::sample::select(vec!['*', '?', 'a', 'b', '.', '%', '[', '\\', 'é', '日']), 0..8),
        name in proptest::collection::vec(proptest::sample::select(vec!['a', 'b', '.', '%', '[', '\\', 'é', '日', '?', '*']), 0..10),
    ) {
        let g: String = glob.iter().collect();
        let n: String = name.iter().collect();
        proptest::prop_assert_eq!(glob_matches(&g, n.as_bytes()), naive(&glob, &name), "glob {:?} name {:?}", g, n);
    }
}
