use k8s_openapi::jiff::SignedDuration;

use super::*;
use crate::controller::rules::MAX_BACKOFF;
use crate::{
    bullmq::{self, VersionError},
    controller::error::tests::{connect, server},
    crd::{JobRetrySpec, SelectionStatus, SourceState},
    error::SecretCategory,
};

const IDS: &str = "queue: {name: payments}\nconnection: {secretRef: {name: payments-redis}}\njobIds: ['1', '2', '3', '4']\n";

/// The facts of the test spec; without jitter, so the backoff schedule itself is pinned
/// (rules.rs tests the jitter).
fn facts(extra: &str) -> Facts {
    let spec: JobRetrySpec = serde_norway::from_str(&format!("{IDS}{extra}")).unwrap();
    Facts::new(&spec, Some(1), 10)
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap() + SignedDuration::from_secs(second)
}

/// One transition from `old` with `failures` consecutive failed tries behind it.
fn step(old: &JobRetryStatus, failures: u32, f: &Facts, p: Progress, now: Timestamp) -> Transition {
    let memory = Memory {
        failures,
        ..Memory::default()
    };
    super::step(old, &memory, f, p, now)
}

fn rows(ids: &[&str], result: &str) -> Vec<JobResultRow> {
    ids.iter()
        .map(|id| JobResultRow {
            id: id.to_string(),
            result: result.into(),
            code: None,
            message: None,
        })
        .collect()
}

/// A slice that ran nothing and ended with `end`.
fn ended(end: End) -> Progress {
    Progress {
        end,
        ..Progress::new(Scope::default())
    }
}

/// A slice that planned 4 jobs, opened the queue, ran `rows` and ended with `end`.
fn slice(rows: Vec<JobResultRow>, end: End) -> Progress {
    let scope = Scope {
        matched: Some(4),
        run_key: Some("payments/incident".into()),
        bullmq_version: Some("6.7.0".into()),
        selection: None,
        refailed: None,
    };
    Progress {
        rows,
        end,
        ..Progress::new(scope)
    }
}

fn batches(ids: &[&str]) -> Progress {
    let last_batch = ids.len();
    slice(rows(ids, "Retried"), End::Batches { last_batch })
}

fn error(e: RunError) -> Progress {
    ended(End::Error(e))
}

/// Redis cannot be reached (transient), saying `why`.
fn unavailable(why: &str) -> RunError {
    connect(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why.to_string()).into())
}

/// Redis refused the credentials or an ACL permission (stalled).
fn access_denied(code: &str) -> RunError {
    connect(server(code, "refused"))
}

fn secret_invalid(message: &str) -> RunError {
    RunError::Secret(SecretError::Invalid {
        category: SecretCategory::MissingKey,
        message: message.into(),
    })
}

fn secret_forbidden(message: &str) -> RunError {
    RunError::Secret(SecretError::Forbidden(message.into()))
}

fn call(e: bullmq::Error) -> RunError {
    RunError::Redis(e)
}

fn queue_data_invalid(message: &str) -> RunError {
    call(bullmq::Error::QueueData(message.into()))
}

fn cond<'a>(st: &'a JobRetryStatus, t: &str) -> (&'a str, &'a str) {
    let c = st.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

fn reasons(t: &Transition) -> Vec<&str> {
    t.events.iter().map(|e| e.reason).collect()
}

#[test]
fn a_run_starts_progresses_and_completes_with_milestone_events_only() {
    let f = facts("");
    let t = step(
        &JobRetryStatus::default(),
        0,
        &f,
        batches(&["1", "2"]),
        at(0),
    );
    let st = &t.status;
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(
        (st.matched, st.processed, st.retried),
        (Some(4), Some(2), Some(2))
    );
    assert_eq!(st.run_key.as_deref(), Some("payments/incident"));
    assert_eq!(st.start_time.as_ref().map(|t| t.0), Some(at(0)));
    assert_eq!(cond(st, "Reconciling"), ("True", "Progressing"));
    assert_eq!(cond(st, "Ready").0, "False");
    assert_eq!(t.requeue, Requeue::After(NEXT_SLICE));
    assert_eq!(reasons(&t), ["Started"]);
    assert_eq!(t.events[0].note, "retrying 4 jobs");

    let t = step(&t.status, 0, &f, batches(&["3"]), at(1));
    assert!(t.events.is_empty(), "no event per batch");
    assert_eq!(t.status.start_time.as_ref().map(|t| t.0), Some(at(0)));

    let t = step(
        &t.status,
        0,
        &f,
        slice(rows(&["4"], "NotFound"), End::Done),
        at(2),
    );
    let st = &t.status;
    assert_eq!(st.phase.as_deref(), Some("PartiallySucceeded"));
    assert_eq!(cond(st, "Complete"), ("True", "PartiallySucceeded"));
    assert_eq!(cond(st, "Ready").0, "True");
    assert_eq!(cond(st, "Reconciling").0, "False");
    assert_eq!(st.completion_time.as_ref().map(|t| t.0), Some(at(2)));
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(t.requeue, Requeue::AwaitChange);
    assert_eq!(reasons(&t), ["Completed"]);
    assert_eq!(t.events[0].note, "3 of 4 jobs retried, 1 skipped, 0 errors");
}

#[test]
fn a_run_done_in_one_slice_publishes_started_then_completed() {
    let one = slice(rows(&["1", "2", "3", "4"], "Retried"), End::Done);
    let t = step(&JobRetryStatus::default(), 0, &facts(""), one, at(0));
    assert_eq!(t.status.phase.as_deref(), Some("Succeeded"));
    assert_eq!(cond(&t.status, "Complete"), ("True", "Succeeded"));
    assert_eq!(reasons(&t), ["Started", "Completed"]);
}

#[test]
fn started_is_published_when_the_queue_opens_even_while_the_run_stays_pending() {
    let f = facts("");
    let unavailable = || unavailable("connection refused");
    // Redis is down before the run starts: Pending, no Started.
    let t = step(
        &JobRetryStatus::default(),
        0,
        &f,
        error(unavailable()),
        at(0),
    );
    assert_eq!(t.status.phase.as_deref(), Some("Pending"));
    assert_eq!(reasons(&t), ["RedisUnavailable"]);
    // The queue opens, then the first batch fails: still Pending, but the run has started.
    let opened = slice(Vec::new(), End::Error(unavailable()));
    let t = step(&t.status, t.memory.failures, &f, opened, at(1));
    assert_eq!(t.status.phase.as_deref(), Some("Pending"));
    assert_eq!(t.status.start_time.as_ref().map(|t| t.0), Some(at(1)));
    assert_eq!(reasons(&t), ["Started"]);
    // It finishes in the next slice: Completed, and no second Started.
    let done = slice(rows(&["1", "2", "3", "4"], "Retried"), End::Done);
    let t = step(&t.status, t.memory.failures, &f, done, at(2));
    assert_eq!(reasons(&t), ["Completed"]);
}

#[test]
fn suspend_then_resume() {
    let f = facts("suspend: true\n");
    let running = step(&JobRetryStatus::default(), 0, &f, batches(&["1"]), at(0)).status;
    let t = step(&running, 0, &f, ended(End::Suspended), at(1));
    let st = &t.status;
    assert_eq!(st.phase.as_deref(), Some("Suspended"));
    assert_eq!(cond(st, "Suspended"), ("True", "Suspended"));
    assert_eq!(cond(st, "Reconciling").0, "False");
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Suspended")
        .unwrap();
    assert_eq!(c.message, "suspended after processed 1 of 4 jobs");
    assert_eq!(st.processed, Some(1), "suspending keeps the progress");
    assert_eq!(t.requeue, Requeue::AwaitChange);
    assert_eq!(reasons(&t), ["Suspended"]);

    let again = step(st, 0, &f, ended(End::Suspended), at(2));
    assert!(again.events.is_empty());
    assert_eq!(again.status, *st, "a repeated suspend changes nothing");

    let t = step(st, 0, &facts(""), batches(&["2"]), at(3));
    assert_eq!(t.status.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&t.status, "Suspended").0, "False");
    assert_eq!(t.status.processed, Some(2));
    assert_eq!(reasons(&t), ["Started"]);
}

#[test]
fn a_rate_limit_pauses_by_the_last_batch() {
    let t = step(
        &JobRetryStatus::default(),
        0,
        &facts("rateLimit: {jobsPerSecond: 4}\n"),
        batches(&["1", "2"]),
        at(0),
    );
    assert_eq!(t.requeue, Requeue::Pause(Duration::from_millis(500)));
    assert_eq!(t.status.phase.as_deref(), Some("Running"));
    let t = step(
        &t.status,
        0,
        &facts("rateLimit: {jobsPerSecond: 3}\n"),
        batches(&["3"]),
        at(1),
    );
    assert_eq!(
        t.requeue,
        Requeue::Pause(Duration::from_secs_f64(1.0 / 3.0))
    );
}

#[test]
fn transient_errors_back_off_from_1s_doubling_to_60s() {
    let f = facts("");
    let mut st = JobRetryStatus::default();
    let mut failures = 0;
    let mut delays = Vec::new();
    for i in 0..9 {
        let t = step(&st, failures, &f, error(unavailable("down")), at(i));
        let Requeue::After(d) = t.requeue else {
            panic!("{:?}", t.requeue)
        };
        delays.push(d.as_secs());
        (st, failures) = (t.status, t.memory.failures);
    }
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    assert_eq!(cond(&st, "Reconciling"), ("True", "RedisUnavailable"));
    assert_eq!(cond(&st, "Stalled").0, "False");

    let t = step(&st, failures, &f, batches(&["1"]), at(10));
    assert_eq!(
        (t.memory.failures, t.requeue),
        (0, Requeue::After(NEXT_SLICE))
    );
    assert_eq!(t.status.phase.as_deref(), Some("Running"));
}

#[test]
fn a_transient_wait_keeps_a_running_run_running_without_an_event() {
    let f = facts("");
    let running = step(&JobRetryStatus::default(), 0, &f, batches(&["1"]), at(0)).status;
    let t = step(&running, 0, &f, error(unavailable("down")), at(1));
    assert_eq!(t.status.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&t.status, "Ready"), ("False", "RedisUnavailable"));
    assert!(t.events.is_empty());

    let fresh = step(
        &JobRetryStatus::default(),
        0,
        &f,
        error(unavailable("down")),
        at(0),
    );
    assert_eq!(fresh.status.phase.as_deref(), Some("Pending"));
    assert_eq!(reasons(&fresh), ["RedisUnavailable"]);
    let down = unavailable("down").to_string();
    assert_eq!(fresh.events[0].note, format!("{down}; retrying in 1s"));
    assert!(fresh.events[0].warning);
}

#[test]
fn an_error_after_some_batches_backs_off_from_the_start() {
    let mut s = slice(rows(&["1"], "Retried"), End::Error(unavailable("x")));
    s.scope.matched = Some(4);
    let t = step(&JobRetryStatus::default(), 5, &facts(""), s, at(0));
    assert_eq!(
        (t.memory.failures, t.requeue),
        (1, Requeue::After(Duration::from_secs(1)))
    );
    assert_eq!(
        t.status.processed,
        Some(1),
        "the rows before the error are kept"
    );
}

#[test]
fn stalled_runs_wait_for_the_user_then_recover() {
    let f = facts("");
    let cases = [
        (
            (|| secret_invalid("Secret p/r has no key url")) as fn() -> RunError,
            "SecretInvalid",
            10,
        ),
        (
            (|| secret_forbidden("the operator may not read Secret p/r")) as fn() -> RunError,
            "SecretForbidden",
            10,
        ),
        (
            (|| access_denied("WRONGPASS")) as fn() -> RunError,
            "RedisAccessDenied",
            10,
        ),
        (
            (|| queue_data_invalid("pc is abc")) as fn() -> RunError,
            "QueueDataInvalid",
            10,
        ),
    ];
    for (e, reason, first_delay) in cases {
        let msg = e().to_string();
        let t = step(&JobRetryStatus::default(), 0, &f, error(e()), at(0));
        let st = &t.status;
        assert_eq!(st.phase.as_deref(), Some("Pending"), "{reason}");
        assert_eq!(cond(st, "Stalled"), ("True", reason));
        assert_eq!(cond(st, "Reconciling").0, "False");
        assert!(
            st.conditions.iter().all(|c| c.type_ != "Failed"),
            "{reason}"
        );
        assert!(st.completion_time.is_none(), "a stalled run is not over");
        assert_eq!(t.requeue, Requeue::After(Duration::from_secs(first_delay)));
        assert_eq!(reasons(&t), [reason]);
        assert_eq!(t.events[0].note, msg);

        let again = step(st, t.memory.failures, &f, error(e()), at(1));
        assert!(
            again.events.is_empty(),
            "{reason}: one event per phase change"
        );

        let fixed = step(
            &again.status,
            again.memory.failures,
            &f,
            batches(&["1"]),
            at(2),
        );
        assert_eq!(fixed.status.phase.as_deref(), Some("Running"), "{reason}");
        assert_eq!(cond(&fixed.status, "Stalled").0, "False");
        assert_eq!(fixed.memory.failures, 0);
        assert_eq!(reasons(&fixed), ["Started"]);
    }
}

#[test]
fn a_stalled_redis_error_rechecks_with_growing_backoff() {
    let f = facts("");
    let denied = || error(access_denied("NOPERM"));
    let t = step(&JobRetryStatus::default(), 6, &f, denied(), at(0));
    assert_eq!(
        (t.memory.failures, t.requeue),
        (7, Requeue::After(MAX_BACKOFF))
    );
    for e in [secret_invalid("missing"), secret_forbidden("may not read")] {
        let t = step(&JobRetryStatus::default(), 6, &f, error(e), at(0));
        assert_eq!(
            (t.memory.failures, t.requeue),
            (6, Requeue::After(STALLED_RECHECK))
        );
    }
}

#[test]
fn a_permanent_error_fails_the_run() {
    let e = call(bullmq::Error::IncompatibleQueue(
        "BullMQ 4.17.0 is not supported".into(),
    ));
    assert_eq!(
        (e.reason(), e.verdict()),
        (Reason::IncompatibleQueue, Verdict::Permanent)
    );
    let t = step(&JobRetryStatus::default(), 0, &facts(""), error(e), at(0));
    let st = &t.status;
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    assert_eq!(cond(st, "Failed"), ("True", "IncompatibleQueue"));
    assert_eq!(cond(st, "Stalled").0, "True");
    assert_eq!(cond(st, "Ready").0, "False");
    assert_eq!(st.completion_time.as_ref().map(|t| t.0), Some(at(0)));
    assert_eq!(t.requeue, Requeue::AwaitChange);
    assert_eq!(reasons(&t), ["IncompatibleQueue"]);
    assert!(t.events[0].warning);
}

#[test]
fn a_terminal_phase_is_a_no_op() {
    let f = facts("");
    let done = slice(rows(&["1", "2", "3", "4"], "Retried"), End::Done);
    let finished = step(&JobRetryStatus::default(), 0, &f, done, at(0)).status;
    let failed = step(
        &JobRetryStatus::default(),
        0,
        &f,
        error(RunError::Version(VersionError::Unknown)),
        at(0),
    )
    .status;
    for st in [finished, failed] {
        for s in [
            batches(&["1"]),
            error(unavailable("x")),
            ended(End::Suspended),
        ] {
            let t = step(&st, 3, &f, s, at(9));
            assert_eq!(t.status, st);
            assert_eq!((t.memory.failures, t.requeue), (3, Requeue::AwaitChange));
            assert!(t.events.is_empty());
        }
    }
}

#[test]
fn a_suspended_run_that_then_waits_stalls_or_fails_is_no_longer_suspended() {
    let f = facts("");
    let errors: [fn() -> RunError; 4] = [
        || unavailable("down"),
        || secret_invalid("no key url"),
        || queue_data_invalid("pc is abc"),
        || call(bullmq::Error::Protocol("ERR unknown command".into())),
    ];
    for e in errors {
        let suspended = step(
            &JobRetryStatus::default(),
            0,
            &f,
            ended(End::Suspended),
            at(0),
        )
        .status;
        assert_eq!(cond(&suspended, "Suspended").0, "True");
        let t = step(&suspended, 0, &f, error(e()), at(1));
        let e = e();
        assert_eq!(cond(&t.status, "Suspended").0, "False", "{e:?}");
        assert_ne!(t.status.phase.as_deref(), Some("Suspended"), "{e:?}");
    }
}

#[test]
fn condition_transition_times_change_only_when_status_flips() {
    let f = facts("");
    let t0 = step(&JobRetryStatus::default(), 0, &f, batches(&["1"]), at(0)).status;
    let t1 = step(&t0, 0, &f, batches(&["2"]), at(5)).status;
    let ready = |st: &JobRetryStatus| {
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Reconciling")
            .unwrap();
        (c.last_transition_time.0, c.message.clone())
    };
    assert_eq!(ready(&t1), (at(0), "processed 2 of 4 jobs".to_string()));
}

#[test]
fn the_position_comes_from_the_record_not_from_a_forged_status() {
    let facts = Facts::default();
    let forged = JobRetryStatus {
        processed: Some(60),
        ..Default::default()
    };
    let mut s = batches(&["1", "2"]);
    s.processed_before = Some(0);
    let t = step(&forged, 0, &facts, s, Timestamp::now());
    assert_eq!(t.status.processed, Some(2));
}

#[test]
fn a_dry_run_that_starts_over_drops_what_it_counted() {
    let facts = Facts {
        row_limit: 100,
        ..Default::default()
    };
    let mut old = JobRetryStatus::default();
    status::add_rows(&mut old, rows(&["1", "2", "3"], "WouldRetry"), 100);
    let mut s = slice(rows(&["1"], "WouldRetry"), End::Batches { last_batch: 1 });
    s.pages = Some(PagesProgress {
        restart: true,
        ..PagesProgress::default()
    });
    let t = step(&old, 0, &facts, s, Timestamp::now());
    assert_eq!((t.status.processed, t.status.jobs.len()), (Some(1), 1));
    assert_eq!(t.status.counts.get("WouldRetry"), Some(&1));
}

#[test]
fn a_busy_queue_waits_reconciling_with_reason_queue_busy() {
    let t = step(
        &JobRetryStatus::default(),
        0,
        &Facts::default(),
        error(RunError::QueueBusy {
            holder: "payments/first".into(),
            state: SourceState::Failed,
        }),
        Timestamp::now(),
    );
    let c = t
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Reconciling")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "QueueBusy")
    );
    assert_eq!(t.requeue, Requeue::After(Duration::from_secs(1)));
}

#[test]
fn a_run_that_skipped_jobs_unexamined_says_so_where_it_reports_its_outcome() {
    let f = facts("");
    let mut done = slice(rows(&["1", "2"], "Retried"), End::Done);
    done.scope.selection = Some(SelectionStatus {
        scanned: 5,
        unexamined: 3,
        ..Default::default()
    });
    let t = step(&JobRetryStatus::default(), 0, &f, done, at(0));
    let complete = |st: &JobRetryStatus| {
        let c = st.conditions.iter().find(|c| c.type_ == "Complete");
        c.unwrap().message.clone()
    };
    let message = complete(&t.status);
    assert!(message.contains("3 jobs not examined"), "{message}");
    assert_eq!(
        t.status.phase.as_deref(),
        Some("PartiallySucceeded"),
        "they may have matched"
    );
    let event = t.events.iter().find(|e| e.reason == "Completed").unwrap();
    assert!(event.note.contains("3 jobs not examined"), "{}", event.note);
    // None unexamined: nothing said.
    let t = step(
        &JobRetryStatus::default(),
        0,
        &f,
        slice(rows(&["1"], "Retried"), End::Done),
        at(0),
    );
    let message = complete(&t.status);
    assert!(!message.contains("examined"), "{message}");
}
