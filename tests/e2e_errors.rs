//! Bad input gets a clear condition and loses nothing: an unknown queue, an unsupported or
//! unknown BullMQ version, reset flags the release lacks, a corrupt value in the queue's
//! keys, an unreachable Redis (whose password must never show), all through the real API
//! server and Redis.

mod support;

use jobretry_operator::crd::JobRetryStatus;
use serde_json::{Value, json};
use support::*;

/// A JobRetry of `ids`, with `spec.queue.bullmqVersion` when `version` is given.
fn manifest(name: &str, queue: &str, ids: &[&str], version: Option<&str>) -> String {
    let jr = jobretry(name, queue, ids);
    support::manifest(&match version {
        Some(v) => jr.bullmq_version(v),
        None => jr,
    })
}

fn failing(key: &str, opts: Value) -> Value {
    json!({"key": key, "name": "charge", "data": {}, "opts": opts, "outcome": "fail"})
}

/// Waits for `name` to fail; its Failed condition must give `reason` and a message saying
/// each of `says`. Returns the status.
fn failed_with(ns: &TestNs, name: &str, reason: &str, says: &[&str]) -> JobRetryStatus {
    assert!(ns.wait_condition(name, "Failed", "60s").ok);
    let st = ns.status(name);
    assert_eq!(st.condition_reason("Failed"), reason);
    let message = st.condition_message("Failed");
    assert!(
        says.iter().all(|text| message.contains(text)),
        "{:?}",
        st.condition("Failed")
    );
    st
}

#[test]
fn an_unknown_queue_fails_with_a_condition_naming_the_fix() {
    let ns = TestNs::new("e2e-noqueue");
    let _op = Operator::start(&ns, &[]);
    assert!(
        ns.apply("q.yaml", &manifest("typo", "paymnets", &["1"], None))
            .ok
    );
    let st = failed_with(
        &ns,
        "typo",
        "IncompatibleQueue",
        &["queue \"paymnets\" with prefix \"bull\" not found"],
    );
    assert_eq!(st.phase_str(), "Failed");
    assert_eq!(st.condition_status("Stalled"), "True");
    assert!(st.completion_time.is_some());
}

#[test]
fn an_unsupported_version_fails_before_touching_any_job() {
    let ns = TestNs::new("e2e-version");
    let queue = ns.name.as_str();
    let jobs = seed_in(&ns, &[failing("a", json!({}))]);
    let a = id_of(&jobs, "a");
    let before = queue_dump(queue);
    let _op = Operator::start(&ns, &[]);
    assert!(
        ns.apply("v.yaml", &manifest("future", queue, &[&a], Some("7.0.0")))
            .ok
    );
    failed_with(
        &ns,
        "future",
        "IncompatibleQueue",
        &["BullMQ 7.0.0 is not supported"],
    );
    assert!(before == queue_dump(queue), "nothing may change in Redis");
}

fn raw() -> redis::Connection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap()
}

#[test]
fn an_unknown_version_fails_touching_nothing_and_the_given_version_then_runs() {
    let ns = TestNs::new("e2e-noversion");
    let queue = ns.name.as_str();
    let jobs = seed_in(
        &ns,
        &[
            failing("plain", json!({})),
            failing("prio", json!({"priority": 4})),
        ],
    );
    let (plain, prio) = (id_of(&jobs, "plain"), id_of(&jobs, "prio"));
    // A queue whose meta records no version (BullMQ before 5.20, the Python client).
    let _: i64 = redis::cmd("HDEL")
        .arg(format!("bull:{queue}:meta"))
        .arg("version")
        .query(&mut raw())
        .unwrap();
    let before = queue_dump(queue);
    let _op = Operator::start(&ns, &[]);
    assert!(
        ns.apply(
            "u.yaml",
            &manifest("unknown", queue, &[&plain, &prio], None)
        )
        .ok
    );
    let st = failed_with(
        &ns,
        "unknown",
        "VersionUnknown",
        &["set spec.queue.bullmqVersion"],
    );
    assert_eq!(st.phase_str(), "Failed");
    assert!(before == queue_dump(queue), "nothing may change in Redis");
    // The fix the message names: say which release the workers run.
    let given = Some("6.7.0");
    assert!(
        ns.apply("g.yaml", &manifest("given", queue, &[&plain, &prio], given))
            .ok
    );
    assert!(ns.wait_condition("given", "Complete", "60s").ok);
    let st = ns.status("given");
    assert_eq!(st.bullmq_version.as_deref(), Some("6.7.0"));
    assert_eq!(st.counts, counts([("Retried", 2)]));
    let in_prioritized: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("bull:{queue}:prioritized"))
        .arg(&prio)
        .query(&mut raw())
        .unwrap();
    assert!(
        in_prioritized.is_some(),
        "6.7.0 retries a prioritized job to prioritized"
    );
}

#[test]
fn reset_flags_on_a_release_without_them_fail_before_touching_any_job() {
    let ns = TestNs::new("e2e-options");
    let queue = ns.name.as_str();
    let jobs = seed_in(&ns, &[failing("a", json!({}))]);
    let a = id_of(&jobs, "a");
    let before = queue_dump(queue);
    let _op = Operator::start(&ns, &[]);
    let yaml = support::manifest(
        &jobretry("old", queue, &[&a])
            .bullmq_version("5.65.1")
            .reset_attempts_made(),
    );
    assert!(ns.apply("o.yaml", &yaml).ok);
    failed_with(
        &ns,
        "old",
        "IncompatibleOptions",
        &["resetAttemptsMade", "5.66.0"],
    );
    assert!(before == queue_dump(queue), "nothing may change in Redis");
}

/// Tried as a new user would: a corrupt `pc` on a queue with prioritized jobs used to lose
/// the jobs (out of failed, in no list) while the status said NotInState.
#[test]
fn a_corrupt_priority_counter_stalls_the_run_until_fixed_and_loses_nothing() {
    let ns = TestNs::new("e2e-corrupt");
    let queue = ns.name.as_str();
    let jobs = seed_in(
        &ns,
        &[
            failing("p1", json!({"priority": 5})),
            failing("p2", json!({"priority": 2})),
            failing("plain", json!({})),
        ],
    );
    let ids: Vec<String> = ["p1", "p2", "plain"]
        .iter()
        .map(|k| id_of(&jobs, k))
        .collect();
    let pc = format!("bull:{queue}:pc");
    let _: () = redis::cmd("SET")
        .arg(&pc)
        .arg("abc")
        .query(&mut raw())
        .unwrap();
    let before = queue_dump(queue);
    let _op = Operator::start(&ns, &[]);
    assert!(
        ns.apply(
            "c.yaml",
            &support::manifest(&jobretry("corrupt", queue, &ids))
        )
        .ok
    );
    assert!(ns.wait_condition("corrupt", "Stalled", "60s").ok);
    let st = ns.status("corrupt");
    assert_eq!(st.condition_reason("Stalled"), "QueueDataInvalid");
    let message = st.condition_message("Stalled");
    assert!(
        message.contains(&pc) && message.contains("abc"),
        "{:?}",
        st.condition("Stalled")
    );
    assert_ne!(
        st.phase.as_deref(),
        Some("Failed"),
        "a user can fix the value in place"
    );
    assert!(st.jobs.is_empty(), "no job was processed: {st:?}");
    assert!(before == queue_dump(queue), "nothing may change in Redis");
    // The user repairs the counter; the run goes on by itself.
    let _: () = redis::cmd("SET")
        .arg(&pc)
        .arg("41")
        .query(&mut raw())
        .unwrap();
    assert!(ns.wait_condition("corrupt", "Complete", "90s").ok);
    assert_eq!(ns.status("corrupt").counts, counts([("Retried", 3)]));
    let prioritized: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(format!("bull:{queue}:prioritized"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut raw())
        .unwrap();
    let want = vec![
        (ids[1].clone(), (2u64 * (1 << 32) + 43) as f64),
        (ids[0].clone(), (5u64 * (1 << 32) + 42) as f64),
    ];
    assert_eq!(prioritized, want, "scores continue the repaired counter");
}

#[test]
fn an_unreachable_redis_waits_without_leaking_the_password_and_resumes() {
    let ns = TestNs::new("e2e-noredis");
    let queue = ns.name.as_str();
    let jobs = seed_in(&ns, &[failing("a", json!({}))]);
    let a = id_of(&jobs, "a");
    let password = "hunter2-s3cr3t";
    ns.secret("redis", &format!("redis://app:{password}@127.0.0.1:1/0"));
    let op = Operator::start(&ns, &[]);
    assert!(
        ns.apply("r.yaml", &manifest("later", queue, &[&a], None))
            .ok
    );
    let ready = eventually(
        std::time::Duration::from_secs(60),
        "a RedisUnavailable condition",
        || {
            let c = ns.status("later").condition("Ready").cloned();
            c.filter(|c| c.reason == "RedisUnavailable")
        },
    );
    assert!(
        ready.message.contains("cannot connect to Redis"),
        "{ready:?}"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let jr = ns.get("later");
    assert_eq!(status_of(&jr).phase_str(), "Pending");
    let events = ns.kubectl(&["get", "events", "-o", "json"]).stdout;
    assert!(
        events.contains("RedisUnavailable"),
        "a Warning event is expected: {events}"
    );
    // The object as the API server serves it (raw JSON text): no field may hold the password.
    for (what, text) in [
        ("status", jr.to_string()),
        ("events", events),
        ("logs", op.logs()),
    ] {
        assert!(
            !text.contains(password),
            "the Redis password leaked into {what}"
        );
    }
    ns.secret("redis", &redis_url());
    assert!(
        ns.wait_condition("later", "Complete", "90s").ok,
        "{}",
        op.logs()
    );
    assert_eq!(ns.status("later").counts, counts([("Retried", 1)]));
}

#[test]
fn a_job_key_of_the_wrong_type_refuses_only_that_job() {
    let ns = TestNs::new("e2e-wrongjob");
    let queue = ns.name.as_str();
    let jobs = seed_in(&ns, &[failing("a", json!({})), failing("b", json!({}))]);
    let (a, b) = (id_of(&jobs, "a"), id_of(&jobs, "b"));
    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let key_b = format!("bull:{queue}:{b}");
    let _: () = redis::cmd("DEL").arg(&key_b).query(&mut con).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key_b)
        .arg("not a job")
        .query(&mut con)
        .unwrap();
    let _op = Operator::start(&ns, &[]);
    assert!(
        ns.apply("w.yaml", &manifest("wrong", queue, &[&a, &b], None))
            .ok
    );
    assert!(ns.wait_condition("wrong", "Complete", "60s").ok);
    let st = ns.status("wrong");
    let results: Vec<&str> = st.jobs.iter().map(|r| r.result.as_str()).collect();
    assert_eq!(results[..2], ["Retried", "Error"], "{st:?}");
    assert!(
        st.jobs[1]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("is not a hash"),
        "{st:?}"
    );
    let left: String = redis::cmd("GET").arg(&key_b).query(&mut con).unwrap();
    assert_eq!(left, "not a job");
    let still_failed: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("bull:{queue}:failed"))
        .arg(&b)
        .query(&mut con)
        .unwrap();
    assert!(still_failed.is_some(), "the refused job stays in failed");
}

#[test]
fn a_queue_key_of_the_wrong_type_fails_the_run_and_changes_nothing() {
    let ns = TestNs::new("e2e-wrongqueue");
    let queue = ns.name.as_str();
    let jobs = seed_in(&ns, &[failing("a", json!({}))]);
    let a = id_of(&jobs, "a");
    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("bull:{queue}:wait"))
        .arg("oops")
        .query(&mut con)
        .unwrap();
    let before = queue_dump(queue);
    let _op = Operator::start(&ns, &[]);
    assert!(
        ns.apply("q.yaml", &manifest("broken", queue, &[&a], None))
            .ok
    );
    let wrong_type = format!("bull:{queue}:wait is a string, expected a list");
    failed_with(&ns, "broken", "IncompatibleQueue", &[&wrong_type]);
    assert!(before == queue_dump(queue), "nothing may change in Redis");
}
