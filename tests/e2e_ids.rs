//! End to end, by job ids: a real kube-apiserver, a real Redis, jobs made and processed by the
//! real npm `bullmq`, and the operator binary. What is asserted is what a user would check:
//! `kubectl wait`, the status rows and counts, and which jobs a Worker then processes.

mod support;

use std::{collections::BTreeSet, time::Duration};

use jobretry_operator::crd::{
    JobRetry, JobRetryStatus,
    SourceState::{self, Completed, Failed},
};
use serde_json::{Value, json};
use support::*;

fn job(key: &str, outcome: &str, opts: Value) -> Value {
    json!({"key": key, "name": format!("charge-{key}"), "data": {"key": key, "reason": "ECONNRESET"}, "opts": opts, "outcome": outcome})
}

fn rows(st: &JobRetryStatus) -> Vec<(String, String, Option<i64>)> {
    st.jobs
        .iter()
        .map(|r| (r.id.clone(), r.result.clone(), r.code))
        .collect()
}

fn manifest(name: &str, queue: &str, state: SourceState, ids: &[&str]) -> JobRetry {
    jobretry(name, queue, ids).state(state)
}

#[test]
fn retries_failed_jobs_by_id_and_a_worker_processes_exactly_those() {
    let ns = TestNs::new("e2e-failed");
    let queue = ns.name.as_str();
    let jobs = seed(
        ns.dir.path(),
        queue,
        &json!({"jobs": [
            job("prio", "fail", json!({"priority": 5})),
            job("exhausted", "fail", json!({"attempts": 3})),
            job("plain", "fail", json!({})),
            job("untouched", "fail", json!({})),
            job("done", "complete", json!({})),
        ]}),
    );
    let exhausted = jobs.iter().find(|j| j["key"] == "exhausted").unwrap();
    assert_eq!(
        exhausted["attemptsMade"], 3,
        "fixture: the attempts:3 job must be exhausted"
    );
    let (prio, exh, plain, done) = (
        id_of(&jobs, "prio"),
        id_of(&jobs, "exhausted"),
        id_of(&jobs, "plain"),
        id_of(&jobs, "done"),
    );
    let _op = Operator::start(&ns, &[]);

    let ids = [
        prio.as_str(),
        exh.as_str(),
        plain.as_str(),
        "no-such-job",
        done.as_str(),
    ];
    let applied = ns.apply_jr(&manifest("incident", queue, Failed, &ids).reset_attempts_made());
    assert!(applied.ok, "{}", applied.stderr);
    let waited = ns.wait_condition("incident", "Complete", "60s");
    assert!(waited.ok, "kubectl wait failed: {}", waited.stderr);

    let jr = ns.get("incident");
    let st = status_of(&jr);
    assert_eq!(
        rows(&st),
        vec![
            (prio.clone(), "Retried".into(), Some(1)),
            (exh.clone(), "Retried".into(), Some(1)),
            (plain.clone(), "Retried".into(), Some(1)),
            ("no-such-job".into(), "NotFound".into(), Some(-1)),
            (done.clone(), "NotInState".into(), Some(-3)),
        ]
    );
    assert_eq!(
        st.counts,
        counts([("Retried", 3), ("NotFound", 1), ("NotInState", 1)])
    );
    assert_eq!((st.matched, st.processed), (Some(5), Some(5)));
    assert_eq!(
        (st.retried, st.skipped, st.errors),
        (Some(3), Some(2), Some(0))
    );
    assert_eq!(st.phase_str(), "PartiallySucceeded");
    assert_eq!(st.bullmq_version.as_deref(), Some("6.7.0"));
    assert_eq!(st.run_key, Some(format!("{}/incident", ns.name)));
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert_eq!(
        st.observed_generation,
        jr["metadata"]["generation"].as_i64()
    );
    // The exactly-once ledger: in the queue's keyspace, expiring after the default 7 days.
    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let ledger = format!("bull:{queue}:jobretry:ledger:run:{}/incident", ns.name);
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&ledger).query(&mut con).unwrap();
    assert!(
        ttl_ms > 7 * 24 * 3600 * 1000 - 120_000 && ttl_ms <= 7 * 24 * 3600 * 1000,
        "ledger TTL {ttl_ms}"
    );
    let recorded: Vec<String> = redis::cmd("HKEYS").arg(&ledger).query(&mut con).unwrap();
    assert_eq!(
        recorded.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([prio.clone(), exh.clone(), plain.clone()])
    );

    let processed = node(
        "process.mjs",
        &[
            "--redis",
            &redis_url(),
            "--queue",
            queue,
            "--expect",
            "3",
            "--settle-ms",
            "2500",
        ],
    );
    let seen: Vec<&str> = processed["processed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    let seen_set: BTreeSet<&str> = seen.iter().copied().collect();
    assert_eq!(
        seen.len(),
        3,
        "each retried job processed exactly once: {seen:?}"
    );
    assert_eq!(
        seen_set,
        BTreeSet::from([prio.as_str(), exh.as_str(), plain.as_str()])
    );
    for p in processed["processed"].as_array().unwrap() {
        assert_eq!(
            p["attemptsMade"], 0,
            "resetAttemptsMade: attemptsMade must be 0 when processed again: {p}"
        );
    }
    let retried_events: BTreeSet<&str> = processed["waitingEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["prev"] == "failed")
        .map(|e| e["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(
        retried_events, seen_set,
        "QueueEvents saw one `waiting` event (prev failed) per retried job"
    );
}

#[test]
fn retries_completed_jobs_and_clears_their_return_value() {
    let ns = TestNs::new("e2e-completed");
    let queue = ns.name.as_str();
    let jobs = seed_in(
        &ns,
        &[
            job("c1", "complete", json!({})),
            job("c2", "complete", json!({})),
            job("f1", "fail", json!({})),
        ],
    );
    let (c1, c2, f1) = (id_of(&jobs, "c1"), id_of(&jobs, "c2"), id_of(&jobs, "f1"));
    assert!(jobs.iter().find(|j| j["key"] == "c1").unwrap()["returnvalue"].is_object());
    let _op = Operator::start(&ns, &[]);

    assert!(
        ns.apply_jr(&manifest("redo", queue, Completed, &[&c1, &c2, &c1, &f1]))
            .ok
    );
    assert!(ns.wait_condition("redo", "Complete", "60s").ok);
    let st = ns.status("redo");
    assert_eq!(
        rows(&st),
        vec![
            (c1.clone(), "Retried".into(), Some(1)),
            (c2.clone(), "Retried".into(), Some(1)),
            (f1.clone(), "NotInState".into(), Some(-3))
        ]
    );
    assert_eq!(st.matched, Some(3), "an id listed twice is one job");

    let inspected = node(
        "inspect.mjs",
        &[
            "--redis",
            &redis_url(),
            "--queue",
            queue,
            "--ids",
            &format!("{c1},{c2}"),
        ],
    );
    for j in inspected["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "waiting", "{j}");
        assert!(
            j["returnvalue"].is_null(),
            "returnvalue must be gone after a retry from completed: {j}"
        );
        assert!(j["finishedOn"].is_null(), "{j}");
    }
    let processed = node(
        "process.mjs",
        &["--redis", &redis_url(), "--queue", queue, "--expect", "2"],
    );
    let seen: BTreeSet<&str> = processed["processed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, BTreeSet::from([c1.as_str(), c2.as_str()]));
    assert_eq!(processed["processed"].as_array().unwrap().len(), 2);
}

#[test]
fn a_restarted_operator_changes_nothing_after_completion() {
    let ns = TestNs::new("e2e-restart");
    let queue = ns.name.as_str();
    // A database of its own, so that a full key dump sees only this test's keys.
    let db = format!("{}/4", redis_url());
    ns.secret("redis", &db);
    let jobs = seed_at(
        ns.dir.path(),
        &db,
        queue,
        &json!({"jobs": [job("a", "fail", json!({})), job("b", "fail", json!({}))]}),
    );
    let (a, b) = (id_of(&jobs, "a"), id_of(&jobs, "b"));
    let mut op = Operator::start(&ns, &[]);
    assert!(ns.apply_jr(&manifest("once", queue, Failed, &[&a])).ok);
    assert!(ns.wait_condition("once", "Complete", "60s").ok);
    let status_before = ns.status("once");
    let full_dump = || stable_dump(&db);
    let before = full_dump();
    op.kill();

    let op2 = Operator::start(&ns, &[]);
    // Nudge the finished object (a metadata change triggers a reconcile), then prove the new
    // operator is live by completing a dry run, which must not change Redis either.
    ns.kubectl(&["annotate", "jobretry", "once", "touched=yes"]);
    assert!(
        ns.apply_jr(&manifest("preview", queue, Failed, &[&a, &b]).dry_run())
            .ok
    );
    assert!(
        ns.wait_condition("preview", "Complete", "60s").ok,
        "{}",
        op2.logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        rows(&ns.status("preview")),
        vec![
            (a.clone(), "NotInState".into(), Some(-3)),
            (b.clone(), "WouldRetry".into(), None)
        ]
    );

    let after = full_dump();
    let changed = changed_keys(&before, &after);
    assert!(
        changed.is_empty(),
        "a restart or dry run changed Redis keys: {changed:?}"
    );
    assert_eq!(
        ns.status("once"),
        status_before,
        "the finished status must not change"
    );
}

#[test]
fn a_missing_secret_stalls_with_a_readable_message_and_resumes_when_created() {
    let ns = TestNs::new("e2e-secret");
    let queue = ns.name.as_str();
    let jobs = seed_in(&ns, &[job("a", "fail", json!({}))]);
    let a = id_of(&jobs, "a");
    let _op = Operator::start(&ns, &[]);
    assert!(
        ns.apply_jr(&manifest("later", queue, Failed, &[&a]).secret("payments-redis"))
            .ok
    );
    assert!(ns.wait_condition("later", "Stalled", "30s").ok);
    let st = ns.status("later");
    let stalled = st.condition("Stalled").unwrap();
    assert_eq!(stalled.reason, "SecretInvalid");
    assert_eq!(
        stalled.message,
        format!("Secret {}/payments-redis not found", ns.name)
    );
    assert_eq!(st.phase_str(), "Pending");
    ns.secret("payments-redis", &redis_url());
    assert!(ns.wait_condition("later", "Complete", "90s").ok);
    assert_eq!(ns.status("later").counts, counts([("Retried", 1)]));
}

#[test]
fn a_pypi_bullmq_worker_processes_what_we_retried() {
    let python = std::env::var("JOBRETRY_TEST_PYTHON")
        .expect("JOBRETRY_TEST_PYTHON is not set: tests/run.sh installs the PyPI bullmq client");
    let ns = TestNs::new("e2e-python");
    let queue = ns.name.as_str();
    let jobs = seed_in(
        &ns,
        &[
            job("a", "fail", json!({"attempts": 2})),
            job("b", "fail", json!({})),
            job("c", "fail", json!({})),
        ],
    );
    let (a, b) = (id_of(&jobs, "a"), id_of(&jobs, "b"));
    let _op = Operator::start(&ns, &[]);
    assert!(
        ns.apply_jr(&manifest("py", queue, Failed, &[&a, &b]).reset_attempts_made())
            .ok
    );
    assert!(ns.wait_condition("py", "Complete", "60s").ok);
    let out = run(std::process::Command::new(&python)
        .arg(repo().join("tests/bullmq/py/process.py"))
        .args([
            "--redis",
            &redis_url(),
            "--queue",
            queue,
            "--expect",
            "2",
            "--settle-ms",
            "2000",
        ]));
    assert!(out.ok, "{}", out.stderr);
    let processed: Value = serde_json::from_str(&out.stdout).unwrap();
    let list = processed["processed"].as_array().unwrap();
    let seen: BTreeSet<&str> = list.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(seen, BTreeSet::from([a.as_str(), b.as_str()]));
    assert!(list.iter().all(|p| p["attemptsMade"] == 0), "{list:?}");
}

#[test]
fn health_and_metrics_are_served_with_low_cardinality_labels() {
    let ns = TestNs::new("e2e-metrics");
    let queue = ns.name.as_str();
    let jobs = seed_in(&ns, &[job("a", "fail", json!({}))]);
    let a = id_of(&jobs, "a");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _op = Operator::start(&ns, &["--http-addr", &addr]);
    assert!(ns.apply_jr(&manifest("m", queue, Failed, &[&a, "nope"])).ok);
    assert!(ns.wait_condition("m", "Complete", "60s").ok);
    let get = |path: &str| {
        run(std::process::Command::new("curl").args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ]))
        .stdout
    };
    assert!(get("/readyz").ends_with("\n200"));
    assert!(get("/healthz").ends_with("\n200"));
    let metrics = eventually(
        Duration::from_secs(10),
        "the run counted in /metrics",
        || {
            let m = get("/metrics");
            m.contains("jobretry_runs_finished_total").then_some(m)
        },
    );
    assert!(
        metrics.contains("jobretry_jobs_total{result=\"Retried\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jobretry_jobs_total{result=\"NotFound\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jobretry_runs_finished_total{phase=\"PartiallySucceeded\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains(&a) || !metrics.contains("jobId"),
        "no job ids in labels"
    );
    assert!(!metrics.contains(queue), "no queue names in labels");
    let reasons = eventually(
        Duration::from_secs(10),
        "Started and Completed events",
        || {
            let ev = ns
                .kubectl(&["get", "events", "-o", "jsonpath={.items[*].reason}"])
                .stdout;
            (ev.contains("Started") && ev.contains("Completed")).then_some(ev)
        },
    );
    assert!(
        !reasons.contains("Retried"),
        "events mark milestones, never single jobs: {reasons}"
    );
}
