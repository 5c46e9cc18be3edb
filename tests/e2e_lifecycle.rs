//! Run control through the real API server: progress is visible while a large run goes on,
//! suspend stops it between batches and resume finishes it exactly, deleting a running
//! JobRetry stops it, a large run keeps its status small (only non-success rows), and an
//! object replaced under the same name mid-slice never receives the old object's progress.

mod support;

use std::{collections::BTreeSet, time::Duration};

use serde_json::{Value, json};
use support::*;

const JOBS: usize = 3000;

fn seed_failed(ns: &TestNs, queue: &str) -> Vec<String> {
    let spec: Vec<Value> =
        (0..JOBS).map(|i| json!({"key": format!("k{i}"), "name": "charge", "data": {}, "opts": {}, "outcome": "fail"})).collect();
    seed(ns.dir.path(), queue, &json!({ "jobs": spec }))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

fn manifest(name: &str, queue: &str, ids: &[String], per_second: u32) -> String {
    support::manifest(&jobretry(name, queue, ids).jobs_per_second(per_second))
}

fn processed(ns: &TestNs, name: &str) -> (u64, String) {
    let st = ns.status(name);
    (st.processed.unwrap_or(0), st.phase.unwrap_or_default())
}

fn failed_count(queue: &str) -> i64 {
    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("ZCARD")
        .arg(format!("bull:{queue}:failed"))
        .query(&mut con)
        .unwrap()
}

#[test]
fn suspend_stops_between_batches_and_resume_finishes_exactly() {
    let ns = TestNs::new("e2e-suspend");
    let queue = ns.name.clone();
    let ids = seed_failed(&ns, &queue);
    let _op = Operator::start(&ns, &["--batch-size", "100"]);
    assert!(ns.apply("s.yaml", &manifest("slow", &queue, &ids, 600)).ok);

    let mid = eventually(
        Duration::from_secs(30),
        "visible progress while running",
        || {
            let (p, phase) = processed(&ns, "slow");
            (phase == "Running" && p > 0 && (p as usize) < JOBS).then_some(p)
        },
    );
    println!("progress seen while running: {mid}/{JOBS}");
    ns.kubectl(&[
        "patch",
        "jobretry",
        "slow",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    assert!(ns.wait_condition("slow", "Suspended", "30s").ok);
    let (at_suspend, phase) = processed(&ns, "slow");
    assert_eq!(phase, "Suspended");
    assert!(
        (at_suspend as usize) < JOBS,
        "the run must stop before the end: {at_suspend}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        processed(&ns, "slow").0,
        at_suspend,
        "nothing may be processed while suspended"
    );
    assert_eq!(
        failed_count(&queue) as u64,
        JOBS as u64 - at_suspend,
        "Redis agrees with status: no job is half-way"
    );

    ns.kubectl(&[
        "patch",
        "jobretry",
        "slow",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    assert!(ns.wait_condition("slow", "Complete", "60s").ok);
    let st = ns.status("slow");
    assert_eq!(st.counts, counts([("Retried", JOBS as u64)]));
    assert!(
        st.jobs_truncated,
        "a run above the row limit keeps only non-success rows"
    );
    assert!(st.jobs.is_empty(), "no success rows beyond the limit");
    let size = ns
        .kubectl(&["get", "jobretry", "slow", "-o", "json"])
        .stdout
        .len();
    assert!(
        size < 300 * 1024,
        "the object must stay small: {size} bytes"
    );

    let wait = waiting_ids(&redis_url(), &queue);
    let unique: BTreeSet<&String> = wait.iter().collect();
    assert_eq!(
        (wait.len(), unique.len()),
        (JOBS, JOBS),
        "every job in wait exactly once"
    );
}

#[test]
fn deleting_a_running_jobretry_stops_it() {
    let ns = TestNs::new("e2e-delete");
    let queue = ns.name.clone();
    let ids = seed_failed(&ns, &queue);
    let op = Operator::start(&ns, &["--batch-size", "100"]);
    assert!(
        ns.apply("d.yaml", &manifest("doomed", &queue, &ids, 500))
            .ok
    );
    eventually(Duration::from_secs(30), "the run to start", || {
        (processed(&ns, "doomed").0 > 0).then_some(())
    });
    ns.kubectl(&["delete", "jobretry", "doomed", "--wait=true"]);
    std::thread::sleep(Duration::from_millis(500));
    let left = failed_count(&queue);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        failed_count(&queue),
        left,
        "no job may be retried after the delete: {}",
        op.logs()
    );
    assert!(left > 0, "the run was stopped before it finished");
}

/// Blocks the test Redis for `ms` milliseconds with a busy script (other clients' commands
/// wait, they are not refused below Redis's 5 s script limit).
fn block_redis(ms: u64) -> std::thread::JoinHandle<()> {
    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    std::thread::spawn(move || {
        let _: i64 = redis::cmd("EVAL")
            .arg(
                "local t0 = redis.call('TIME') \
                 while true do \
                   local t = redis.call('TIME') \
                   if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) >= tonumber(ARGV[1]) * 1000 then return 1 end \
                 end",
            )
            .arg(0)
            .arg(ms)
            .query(&mut con)
            .unwrap();
    })
}

#[test]
fn a_replaced_jobretry_starts_its_own_status_from_zero() {
    const N: usize = 30;
    let ns = TestNs::new("e2e-replace");
    let queue = ns.name.clone();
    let spec: Vec<Value> = (0..N)
        .map(|i| json!({"key": format!("k{i}"), "name": "charge", "data": {}, "opts": {}, "outcome": "fail"}))
        .collect();
    let ids: Vec<String> = seed(ns.dir.path(), &queue, &json!({ "jobs": spec }))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let op = Operator::start(&ns, &[]);
    let yaml = manifest("again", &queue, &ids, 3);
    assert!(ns.apply("r.yaml", &yaml).ok);
    eventually(Duration::from_secs(30), "the first run to progress", || {
        (processed(&ns, "again").0 >= 6).then_some(())
    });

    // Hold Redis so that the next slice of the first object is in flight (it read the object
    // before the replace and writes its status after it), then replace the object.
    let busy = block_redis(3500);
    std::thread::sleep(Duration::from_millis(1800));
    let old = ns.get("again");
    let old_uid = old["metadata"]["uid"].as_str().unwrap().to_string();
    let old_processed = status_of(&old).processed.unwrap() as usize;
    let path = ns.dir.path().join("r.yaml");
    let out = ns.kubectl(&["replace", "--force", "-f", path.to_str().unwrap()]);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let first = eventually(
        Duration::from_secs(30),
        "the new object's first progress",
        || {
            let o = ns.get("again");
            let p = status_of(&o).processed.unwrap_or(0);
            (o["metadata"]["uid"] != old_uid.as_str() && p > 0).then_some(p)
        },
    );
    busy.join().unwrap();
    println!("old object: processed {old_processed}; new object: first progress {first}");
    assert!(
        first <= 3,
        "the new object must start from 0, one batch at a time, not from the old run's count: {first}\n{}",
        op.logs()
    );

    assert!(
        ns.wait_condition("again", "Complete", "60s").ok,
        "{}",
        op.logs()
    );
    let st = ns.status("again");
    let rows = &st.jobs;
    let seen: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        (st.processed, rows.len(), seen.len()),
        (Some(N as u64), N, N),
        "{st:?}"
    );
    let result = |id: &str| {
        rows.iter()
            .find(|r| r.id == id)
            .map(|r| r.result.clone())
            .unwrap()
    };
    for id in &ids[..old_processed] {
        assert_eq!(
            result(id),
            "AlreadyProcessed",
            "job {id} was retried by the old object, under the same run key: {st:?}"
        );
    }
    assert!(
        st.counts
            .keys()
            .all(|k| k == "Retried" || k == "AlreadyProcessed"),
        "{st:?}"
    );
    assert!(st.counts.get("Retried").is_some_and(|&n| n > 0), "{st:?}");
    assert_eq!(failed_count(&queue), 0, "every job retried once");
}
