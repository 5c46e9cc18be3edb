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
        (st.processed, st.retried, st.failed),
        (Some(5), Some(3), Some(2))
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
        (st.processed, st.retried, st.failed),
        (Some(23), Some(11), Some(12))
    );
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

fn condition<'a>(st: &'a JobRetryStatus, t: &str) -> (&'a str, &'a str) {
    let c = st.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn stages_set_phase_and_kstatus_conditions() {
    let now = Timestamp::from_second(2_000).unwrap();
    let mut st = JobRetryStatus {
        matched: Some(2),
        ..Default::default()
    };
    apply_stage(&mut st, &Stage::Running, Some(1), now);
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&st, "Reconciling"), ("True", "Progressing"));
    assert_eq!(condition(&st, "Ready").0, "False");
    assert!(st.completion_time.is_none());

    add_rows(&mut st, rows(2, "Retried"), 10);
    apply_stage(&mut st, &Stage::Done, Some(1), now);
    assert_eq!(st.phase.as_deref(), Some("Succeeded"));
    assert_eq!(condition(&st, "Complete"), ("True", "Succeeded"));
    assert_eq!(condition(&st, "Ready").0, "True");
    assert_eq!(condition(&st, "Reconciling").0, "False");
    assert_eq!(st.completion_time.as_ref().map(|t| t.0), Some(now));
    assert_eq!(st.observed_generation, Some(1));
}

#[test]
fn a_run_with_failures_is_partially_succeeded_and_a_failed_run_stalls() {
    let now = Timestamp::from_second(3_000).unwrap();
    let mut st = JobRetryStatus::default();
    add_rows(&mut st, rows(1, "Retried"), 10);
    add_rows(&mut st, rows(1, "NotFound"), 10);
    apply_stage(&mut st, &Stage::Done, Some(1), now);
    assert_eq!(st.phase.as_deref(), Some("PartiallySucceeded"));

    let mut failed = JobRetryStatus::default();
    apply_stage(
        &mut failed,
        &Stage::Failed {
            reason: "IncompatibleQueue",
            message: "BullMQ 4.17.0 is not supported",
        },
        Some(1),
        now,
    );
    assert_eq!(failed.phase.as_deref(), Some("Failed"));
    assert_eq!(condition(&failed, "Failed"), ("True", "IncompatibleQueue"));
    assert_eq!(condition(&failed, "Stalled").0, "True");
    assert!(failed.completion_time.is_some());
}

#[test]
fn a_transient_wait_keeps_a_running_run_running() {
    let now = Timestamp::from_second(4_000).unwrap();
    let mut st = JobRetryStatus {
        phase: Some("Running".into()),
        ..Default::default()
    };
    apply_stage(
        &mut st,
        &Stage::Waiting {
            reason: "RedisUnavailable",
            message: "connection refused",
        },
        Some(1),
        now,
    );
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&st, "Ready"), ("False", "RedisUnavailable"));
    let mut fresh = JobRetryStatus::default();
    apply_stage(
        &mut fresh,
        &Stage::Waiting {
            reason: "RedisUnavailable",
            message: "x",
        },
        Some(1),
        now,
    );
    assert_eq!(fresh.phase.as_deref(), Some("Pending"));
}

#[test]
fn a_resumed_run_that_then_waits_stalls_or_fails_is_no_longer_suspended() {
    let now = Timestamp::now();
    let waiting = Stage::Waiting {
        reason: "RedisUnavailable",
        message: "down",
    };
    let stalled = Stage::Stalled {
        reason: "SecretInvalid",
        message: "no key url",
    };
    let failed = Stage::Failed {
        reason: "QueueDataInvalid",
        message: "pc is abc",
    };
    for stage in [waiting, stalled, failed] {
        let mut st = JobRetryStatus::default();
        apply_stage(&mut st, &Stage::Suspended, Some(1), now);
        assert_eq!(condition(&st, "Suspended").0, "True");
        apply_stage(&mut st, &stage, Some(1), now);
        assert_eq!(condition(&st, "Suspended").0, "False", "{stage:?}");
    }
}
