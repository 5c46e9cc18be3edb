//! Run control through the real API server: progress is visible while a large run goes on,
//! suspend stops it between batches and resume finishes it exactly, deleting a running
//! JobRetry stops it, and a large run keeps its status small (only non-success rows).

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::*;
use serde_json::{Value, json};

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
    jobretry_yaml(
        name,
        queue,
        ids,
        "",
        &format!("  rateLimit:\n    jobsPerSecond: {per_second}\n"),
    )
}

fn processed(ns: &TestNs, name: &str) -> (u64, String) {
    let st = ns.get(name)["status"].clone();
    (
        st["processed"].as_u64().unwrap_or(0),
        st["phase"].as_str().unwrap_or("").to_string(),
    )
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
    let st = ns.get("slow")["status"].clone();
    assert_eq!(st["counts"], json!({"Retried": JOBS}));
    assert_eq!(
        st["jobsTruncated"], true,
        "a run above the row limit keeps only non-success rows"
    );
    assert!(
        st.get("jobs")
            .is_none_or(|j| j.as_array().unwrap().is_empty()),
        "no success rows beyond the limit"
    );
    let size = ns
        .kubectl(&["get", "jobretry", "slow", "-o", "json"])
        .stdout
        .len();
    assert!(
        size < 300 * 1024,
        "the object must stay small: {size} bytes"
    );

    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let wait: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("bull:{queue}:wait"))
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
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
