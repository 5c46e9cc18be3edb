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
    let r = job_row("1", &JobOutcome::Retried, "failed", "me");
    assert_eq!((r.result.as_str(), r.code), ("Retried", Some(1)));
    let r = job_row("2", &JobOutcome::NotFound, "failed", "me");
    assert_eq!(
        (r.result.as_str(), r.code, r.message.as_deref()),
        ("NotFound", Some(-1), Some("job does not exist"))
    );
    let r = job_row("3", &JobOutcome::NotInState, "completed", "me");
    assert_eq!(
        (r.result.as_str(), r.code, r.message.as_deref()),
        (
            "NotInState",
            Some(-3),
            Some("job is not in the completed state")
        )
    );
    let r = job_row("4", &JobOutcome::WouldRetry, "failed", "me");
    assert_eq!((r.result.as_str(), r.code), ("WouldRetry", None));
    let r = job_row("5", &JobOutcome::Error("WRONGTYPE".into()), "failed", "me");
    assert_eq!(
        (r.result.as_str(), r.message.as_deref()),
        ("Error", Some("WRONGTYPE"))
    );
}

#[test]
fn a_ledger_hit_of_our_own_object_is_our_earlier_retry() {
    let own = job_row(
        "1",
        &JobOutcome::AlreadyProcessed { owner: "me".into() },
        "failed",
        "me",
    );
    assert_eq!((own.result.as_str(), own.code), ("Retried", Some(1)));
    let other = job_row(
        "1",
        &JobOutcome::AlreadyProcessed {
            owner: "them".into(),
        },
        "failed",
        "me",
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
