use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;

fn rows(n: usize, result: &str) -> Vec<JobResultRow> {
    (0..n)
        .map(|i| JobResultRow {
            id: format!("{result}-{i}"),
            result: result.into(),
            code: None,
            message: None,
        })
        .collect()
}

#[test]
fn maps_outcomes_to_contract_rows() {
    let r = job_row("1", &JobOutcome::Retried, "failed");
    assert_eq!((r.result.as_str(), r.code), ("Retried", Some(1)));
    let r = job_row("2", &JobOutcome::NotFound, "failed");
    assert_eq!(
        (r.result.as_str(), r.code, r.message.as_deref()),
        ("NotFound", Some(-1), Some("job does not exist"))
    );
    let r = job_row("3", &JobOutcome::NotInState, "completed");
    assert_eq!(
        (r.result.as_str(), r.code, r.message.as_deref()),
        (
            "NotInState",
            Some(-3),
            Some("job is not in the completed state")
        )
    );
    let r = job_row("4", &JobOutcome::WouldRetry, "failed");
    assert_eq!((r.result.as_str(), r.code), ("WouldRetry", None));
    let r = job_row("5", &JobOutcome::Error("WRONGTYPE".into()), "failed");
    assert_eq!(
        (r.result.as_str(), r.message.as_deref()),
        ("Error", Some("WRONGTYPE"))
    );
}

#[test]
fn a_ledger_hit_of_our_own_object_is_our_earlier_retry() {
    let own = job_row("1", &JobOutcome::RetriedEarlier, "failed");
    assert_eq!((own.result.as_str(), own.code), ("Retried", Some(1)));
    let other = job_row(
        "1",
        &JobOutcome::AlreadyProcessed {
            owner: "them".into(),
        },
        "failed",
    );
    assert_eq!(
        (other.result.as_str(), other.code),
        ("AlreadyProcessed", None)
    );
}

#[test]
fn keeps_every_row_up_to_the_limit() {
    let mut st = JobRetryStatus::default();
    add_rows(&mut st, rows(3, "Retried"), 5);
    add_rows(&mut st, rows(2, "NotFound"), 5);
    assert_eq!(st.jobs.len(), 5);
    assert!(!st.jobs_truncated);
    assert_eq!(
        (st.processed, st.retried, st.skipped, st.errors),
        (Some(5), Some(3), Some(2), Some(0))
    );
}

#[test]
fn beyond_the_limit_keeps_only_failures_and_exact_counts() {
    let mut st = JobRetryStatus::default();
    add_rows(&mut st, rows(4, "Retried"), 5);
    add_rows(&mut st, rows(2, "NotInState"), 5);
    add_rows(&mut st, rows(10, "NotFound"), 5);
    add_rows(&mut st, rows(7, "Retried"), 5);
    assert!(st.jobs_truncated);
    assert_eq!(st.jobs.len(), 5);
    assert!(st.jobs.iter().all(|r| r.result != "Retried"));
    assert_eq!(st.counts.get("Retried"), Some(&11));
    assert_eq!(st.counts.get("NotFound"), Some(&10));
    assert_eq!(
        (st.processed, st.retried, st.skipped),
        (Some(23), Some(11), Some(12))
    );
}

#[test]
fn rows_are_bounded_in_bytes_whatever_their_number() {
    let mut st = JobRetryStatus::default();
    let long = |i: usize| JobResultRow {
        id: format!("{i:0256}"),
        result: "NotFound".into(),
        code: Some(-1),
        message: Some("job does not exist".into()),
    };
    add_rows(&mut st, (0..5_500).map(long).collect(), 10_000);
    let bytes = serde_json::to_vec(&st).unwrap().len();
    assert!(bytes < ROW_BYTES + 4096, "status of {bytes} bytes");
    assert!(st.jobs_truncated && !st.jobs.is_empty());
    assert_eq!((st.processed, st.skipped), (Some(5_500), Some(5_500)));
}

#[test]
fn errors_are_counted_apart_from_skipped_jobs() {
    let mut st = JobRetryStatus::default();
    add_rows(&mut st, rows(2, "Error"), 5);
    add_rows(&mut st, rows(1, "AlreadyProcessed"), 5);
    assert_eq!((st.skipped, st.errors), (Some(1), Some(2)));
}

#[test]
fn transition_time_changes_only_when_status_flips() {
    let t0 = Timestamp::from_second(1_000).unwrap();
    let t1 = t0 + SignedDuration::from_secs(60);
    let mut c = Vec::new();
    set_condition(&mut c, "Ready", false, "Progressing", "a", Some(1), t0);
    set_condition(&mut c, "Ready", false, "Progressing", "b", Some(1), t1);
    assert_eq!(c[0].last_transition_time.0, t0);
    assert_eq!(c[0].message, "b");
    set_condition(&mut c, "Ready", true, "Succeeded", "c", Some(1), t1);
    assert_eq!(c[0].last_transition_time.0, t1);
    assert_eq!(c.len(), 1);
}

#[test]
fn cut_keeps_whole_characters_only() {
    assert_eq!(cut("abc", 5), "abc");
    assert_eq!(cut("abc", 3), "abc");
    assert_eq!(cut("abc", 0), "");
    // 'é' is 2 bytes, '€' 3, '😀' 4: a cut inside one drops the whole character.
    assert_eq!(cut("aé", 2), "a");
    assert_eq!(cut("a€b", 3), "a");
    assert_eq!(cut("a€b", 4), "a€");
    assert_eq!(cut("😀😀", 7), "😀");
}

proptest::proptest! {
    #[test]
    fn cut_is_the_longest_prefix_within_the_limit(
        chars in proptest::collection::vec(proptest::prelude::any::<char>(), 0..40),
        max in 0usize..80,
    ) {
        let text: String = chars.into_iter().collect();
        let out = cut(&text, max);
        proptest::prop_assert!(out.len() <= max);
        proptest::prop_assert!(text.starts_with(out));
        // One more character would not fit.
        if let Some(next) = text[out.len()..].chars().next() {
            proptest::prop_assert!(out.len() + next.len_utf8() > max);
        }
    }
}

#[test]
fn a_long_error_message_from_redis_is_cut_in_its_row() {
    let long = "é".repeat(100_000);
    let r = job_row("1", &JobOutcome::Error(long), "failed");
    let m = r.message.unwrap();
    assert_eq!(m.len(), MESSAGE_BYTES);
    assert!(m.chars().all(|c| c == 'é'));
}

fn value(text: String, count: u64) -> ValueCount {
    ValueCount { value: text, count }
}

fn condition(message: String) -> Condition {
    Condition {
        type_: "Stalled".into(),
        status: "True".into(),
        reason: "QueueDataInvalid".into(),
        message,
        observed_generation: Some(1),
        last_transition_time: Time(Timestamp::from_second(1_000).unwrap()),
    }
}

#[test]
fn huge_names_reasons_and_messages_from_redis_are_cut_to_their_documented_lengths() {
    let mib = |c: &str| c.repeat(1 << 20);
    let mut st = JobRetryStatus {
        preview: Some(crate::crd::Preview {
            matched: 3,
            names: vec![value(mib("n"), 2), value(mib("ü"), 1)],
            reasons: vec![value(mib("€"), 3)],
            ..Default::default()
        }),
        conditions: vec![condition(mib("x"))],
        ..Default::default()
    };
    fit(&mut st, STATUS_BYTES);
    let p = st.preview.as_ref().unwrap();
    assert_eq!(p.names[0].value.len(), VALUE_BYTES);
    assert_eq!(p.names[1].value, "ü".repeat(VALUE_BYTES / 2));
    assert_eq!(p.reasons[0].value, "€".repeat(VALUE_BYTES / 3));
    assert_eq!(st.conditions[0].message.len(), CONDITION_MESSAGE_BYTES);
    assert_eq!((p.names.len(), p.reasons.len()), (2, 1), "nothing dropped");
    assert!(!st.jobs_truncated);
}

#[test]
fn over_the_budget_rows_go_first_from_the_end_and_counts_stay_exact() {
    let mut st = JobRetryStatus::default();
    add_rows(&mut st, rows(3_000, "NotFound"), 10_000);
    assert!(!st.jobs_truncated);
    let before = st.clone();
    fit(&mut st, 32 * 1024);
    let bytes = serde_json::to_vec(&st).unwrap().len();
    assert!(bytes <= 32 * 1024, "{bytes} bytes");
    assert!(st.jobs_truncated && !st.jobs.is_empty());
    assert_eq!(
        st.jobs[..],
        before.jobs[..st.jobs.len()],
        "the first rows stay"
    );
    assert_eq!(
        (st.processed, st.skipped, &st.counts),
        (Some(3_000), Some(3_000), &before.counts)
    );
}

#[test]
fn then_the_least_frequent_preview_values_go() {
    let names = (0..10)
        .map(|i| value(format!("{i}").repeat(200), 10 - i))
        .collect();
    let mut st = JobRetryStatus {
        preview: Some(crate::crd::Preview {
            matched: 100,
            names,
            ..Default::default()
        }),
        ..Default::default()
    };
    let full = serde_json::to_vec(&st).unwrap().len();
    fit(&mut st, full - 300);
    let p = st.preview.unwrap();
    assert_eq!(p.names.len(), 8, "two values of ~220 bytes dropped");
    assert_eq!(p.names.last().unwrap().count, 3, "the most frequent stay");
    assert_eq!(p.matched, 100);
}

#[test]
fn the_crd_documents_every_length() {
    let crd = crate::crd::crd_yaml().unwrap();
    for text in [
        format!("at most {MESSAGE_BYTES} bytes"),
        format!("at most {VALUE_BYTES} bytes"),
        format!("at most {CONDITION_MESSAGE_BYTES} bytes"),
        format!("under {} KiB", STATUS_BYTES / 1024),
    ] {
        assert!(crd.contains(&text), "the CRD does not say {text:?}");
    }
}

/// A string of `n` copies of `c`: cheap to make at any length, and multi-byte for most `c`.
fn repeated() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    (any::<char>(), 0usize..3_000).prop_map(|(c, n)| c.to_string().repeat(n))
}

fn any_status() -> impl proptest::strategy::Strategy<Value = JobRetryStatus> {
    use proptest::{collection::vec, prelude::*};
    let row = (repeated(), proptest::option::of(repeated())).prop_map(|(id, message)| {
        JobResultRow {
            id: cut(&id, 256).to_string(), // ids: from the spec (<= 256) or BullMQ
            result: "Error".into(),
            code: None,
            message,
        }
    });
    let values = || {
        vec(
            (repeated(), any::<u64>()).prop_map(|(v, c)| value(v, c)),
            0..10,
        )
    };
    (
        vec(row, 0..1_500),
        values(),
        values(),
        vec(repeated().prop_map(condition), 0..6),
    )
        .prop_map(|(jobs, names, reasons, conditions)| {
            // Rows as a status may hold them (add_rows bounds them by an estimate only).
            let mut st = JobRetryStatus {
                processed: Some(jobs.len() as u64),
                counts: [("Error".to_string(), jobs.len() as u64)].into(),
                jobs,
                ..Default::default()
            };
            st.preview = Some(crate::crd::Preview {
                matched: 1,
                names,
                reasons,
                ..Default::default()
            });
            st.conditions = conditions;
            st.run_key = Some("k".repeat(253));
            st
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    #[test]
    fn any_status_fits_the_budget_once_fitted(st in any_status()) {
        let mut fitted = st.clone();
        fit(&mut fitted, STATUS_BYTES);
        let bytes = serde_json::to_vec(&fitted).unwrap().len();
        proptest::prop_assert!(bytes <= STATUS_BYTES, "{} bytes", bytes);
        proptest::prop_assert_eq!(&fitted.counts, &st.counts);
        proptest::prop_assert_eq!(fitted.processed, st.processed);
        proptest::prop_assert!(fitted.jobs_truncated || fitted.jobs.len() == st.jobs.len());
    }
}
