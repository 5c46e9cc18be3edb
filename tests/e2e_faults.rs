//! Unlucky operators: what happens to a selector run when the world moves under it (real API
//! server, Redis and BullMQ 6.7.0 Workers). A run that waited for the queue keeps the bound of
//! its first sight (jobs failing again meanwhile are not retried twice); a Secret switched to
//! other data mid-run, or a record rolled back (Redis losing acknowledged writes), stops the
//! run with `RunStateLost` and never a success, counts never going backwards; time bounds
//! are exact to the millisecond and a re-created run shows the bound it really uses; a run
//! that stops (suspend, delete) gives the queue back at once.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use jobretry_operator::crd::JobRetryStatus;
use serde_json::Value;
use support::*;

fn selector_yaml(name: &str, queue: &str, extra: &str) -> String {
    format!(
        "apiVersion: jobretry.io/v1alpha1\nkind: JobRetry\nmetadata:\n  name: {name}\nspec:\n  queue:\n    name: {queue}\n  connection:\n    secretRef:\n      name: redis\n  selector:\n    names: [\"charge\"]\n{extra}"
    )
}

fn lock_key(queue: &str) -> String {
    format!("bull:{queue}:jobretry:lock:state:failed")
}

fn record_key(queue: &str, run_key: &str) -> String {
    format!("bull:{queue}:jobretry:record:run:{run_key}")
}

fn exists(key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query(&mut db_conn(0))
        .unwrap();
    n == 1
}

/// The frozen bound in status, in ms.
fn upper_ms(jr: &Value) -> Option<i64> {
    let bound = status_of(jr).selection?.upper_bound?;
    Some(bound.0.as_millisecond())
}

fn time_ms(jr: &Value, path: &[&str]) -> i64 {
    let mut v = jr;
    for p in path {
        v = &v[*p];
    }
    let t: k8s_openapi::jiff::Timestamp = v.as_str().unwrap().parse().unwrap();
    t.as_millisecond()
}

/// Sets `spec.suspend` of `jr`, as a user would with kubectl patch.
fn set_suspend(ns: &TestNs, jr: &str, suspend: bool) {
    let patch = format!(r#"{{"spec":{{"suspend":{suspend}}}}}"#);
    let out = ns.kubectl(&["patch", "jobretry", jr, "--type=merge", "-p", &patch]);
    assert!(out.ok, "{}", out.stderr);
}

/// Waits until `jr` is processing (status.processed at least `n`).
fn wait_processed(ns: &TestNs, jr: &str, n: u64) {
    eventually(Duration::from_secs(60), "the run to progress", || {
        (ns.status(jr).processed.unwrap_or(0) >= n).then_some(())
    });
}

/// Polls `jr` until its phase is terminal, checking on the way that the processed count
/// never goes backwards and the phase is never Succeeded; returns the last status.
fn watch_until_terminal(ns: &TestNs, jr: &str, limit: Duration) -> JobRetryStatus {
    let start = Instant::now();
    let mut last = 0;
    loop {
        let st = ns.status(jr);
        let processed = st.processed.unwrap_or(0);
        assert!(
            processed >= last,
            "processed went from {last} to {processed}"
        );
        last = processed;
        if ["Succeeded", "PartiallySucceeded", "Failed"].contains(&st.phase_str()) {
            return st;
        }
        assert!(start.elapsed() < limit, "no terminal phase: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Defect: a run that waited (`QueueBusy`) took its bound when it got the queue, so jobs the
/// first run retried and that failed again meanwhile were retried a second time.
#[test]
fn a_run_that_waited_for_the_queue_keeps_the_bound_of_its_first_sight() {
    let ns = TestNs::new("e2e-waited");
    let queue = ns.name.as_str();
    let ids = seed_failed(&ns, queue, 300);
    let stop = ns.dir.path().join("stop");
    let stop_arg = stop.to_str().unwrap().to_string();
    let url = redis_url();
    let refail = std::thread::spawn({
        let queue = queue.to_string();
        move || {
            node(
                "refail.mjs",
                &["--redis", &url, "--queue", &queue, "--stop-file", &stop_arg],
            )
        }
    });
    let _op = Operator::start(&ns, &[]);
    let slow = "  rateLimit:\n    jobsPerSecond: 50\n";
    assert!(ns.apply("a.yaml", &selector_yaml("first", queue, slow)).ok);
    wait_processed(&ns, "first", 50);
    assert!(ns.apply("b.yaml", &selector_yaml("second", queue, slow)).ok);
    let waiting = eventually(Duration::from_secs(30), "the second run waits", || {
        let jr = ns.get("second");
        (status_of(&jr).condition_reason("Reconciling") == "QueueBusy").then_some(jr)
    });
    let bound = upper_ms(&waiting).expect("the bound is frozen while the run waits");
    let created = time_ms(&waiting, &["metadata", "creationTimestamp"]);
    assert!(
        bound >= created && bound < created + 5_000,
        "bound {bound}, created {created}"
    );
    assert!(ns.wait_condition("first", "Complete", "60s").ok);
    assert!(ns.wait_condition("second", "Complete", "60s").ok);
    std::fs::write(&stop, "").unwrap();
    let failures = refail.join().unwrap()["failures"]
        .as_array()
        .unwrap()
        .clone();
    let second = ns.get("second");
    assert_eq!(upper_ms(&second), Some(bound), "the bound stayed");
    // Every job the second run retried had failed again before its bound; every job that
    // failed again only after it was left alone.
    let mut first_refail: BTreeMap<String, i64> = BTreeMap::new();
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for f in &failures {
        let id = f["id"].as_str().unwrap().to_string();
        let at = f["finishedOn"].as_i64().expect("finishedOn of a failure");
        first_refail.entry(id.clone()).or_insert(at);
        *times.entry(id).or_default() += 1;
    }
    let retried_by_second: BTreeSet<String> = status_of(&second)
        .jobs
        .into_iter()
        .filter(|r| r.result == "Retried")
        .map(|r| r.id)
        .collect();
    let want: BTreeSet<String> = first_refail
        .iter()
        .filter(|(_, at)| **at < bound)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        retried_by_second, want,
        "exactly the jobs that re-failed before the bound"
    );
    assert!(
        want.len() < ids.len(),
        "some jobs re-failed after the bound: the test bites"
    );
    for id in &ids {
        let expected = 1 + usize::from(retried_by_second.contains(id));
        assert_eq!(times.get(id).copied().unwrap_or(0), expected, "job {id}");
    }
}

/// Defect: switching the Secret's URL mid-run moved the run to another Redis silently:
/// counts went backwards and the run ended Succeeded with selected jobs never retried.
#[test]
fn a_secret_switched_mid_run_stops_the_run_and_it_never_reports_success() {
    let ns = TestNs::new("e2e-switch");
    let queue = ns.name.as_str();
    seed_failed(&ns, queue, 400);
    copy_bullmq_keys(queue, 7);
    let _op = Operator::start(&ns, &[]);
    let slow = "  rateLimit:\n    jobsPerSecond: 50\n";
    assert!(
        ns.apply("a.yaml", &selector_yaml("switched", queue, slow))
            .ok
    );
    wait_processed(&ns, "switched", 60);
    ns.secret("redis", &db_url(7));
    let st = watch_until_terminal(&ns, "switched", Duration::from_secs(60));
    assert_eq!(st.phase_str(), "Failed", "{st:?}");
    assert_eq!(st.condition_reason("Failed"), "RunStateLost", "{st:?}");
    assert!(
        st.condition_message("Failed").contains("no record"),
        "{:?}",
        st.condition("Failed")
    );
    let left: i64 = redis::cmd("ZCARD")
        .arg(format!("bull:{queue}:failed"))
        .query(&mut db_conn(7))
        .unwrap();
    assert_eq!(left, 400, "nothing was retried on the other server");
}

/// Defect: Redis losing acknowledged writes (a rollback of the run's record) made the run
/// retry again jobs it had retried. Now the run stops and says how many jobs that covers.
#[test]
fn a_record_rolled_back_stops_the_run_and_says_how_many_jobs_it_covers() {
    let ns = TestNs::new("e2e-rollback");
    let queue = ns.name.as_str();
    let ids = seed_failed(&ns, queue, 400);
    let _op = Operator::start(&ns, &[]);
    let slow = "  rateLimit:\n    jobsPerSecond: 50\n";
    assert!(ns.apply("s.yaml", &selector_yaml("rolled", queue, slow)).ok);
    let record = record_key(queue, &format!("{}/rolled", ns.name));
    wait_processed(&ns, "rolled", 20);
    let snapshot: Vec<u8> = redis::cmd("DUMP")
        .arg(&record)
        .query(&mut db_conn(0))
        .unwrap();
    wait_processed(&ns, "rolled", 120);
    let _: () = redis::cmd("RESTORE")
        .arg(&record)
        .arg(0)
        .arg(snapshot)
        .arg("REPLACE")
        .query(&mut db_conn(0))
        .unwrap();
    let st = watch_until_terminal(&ns, "rolled", Duration::from_secs(60));
    assert_eq!(st.phase_str(), "Failed", "{st:?}");
    assert_eq!(st.condition_reason("Failed"), "RunStateLost");
    let message = st.condition_message("Failed");
    assert!(
        message.contains("processed jobs are not covered"),
        "{message}"
    );
    // The ids path: its record is rolled back the same way.
    let yaml = manifest(&jobretry("by-id", queue, &ids[300..]).jobs_per_second(20));
    assert!(ns.apply("i.yaml", &yaml).ok);
    wait_processed(&ns, "by-id", 40);
    let ids_record = record_key(queue, &format!("{}/by-id", ns.name));
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&ids_record)
        .query(&mut db_conn(0))
        .unwrap();
    let field = fields.iter().find(|f| f.starts_with("ids:")).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&ids_record)
        .arg(field)
        .arg(5)
        .query(&mut db_conn(0))
        .unwrap();
    let st = watch_until_terminal(&ns, "by-id", Duration::from_secs(60));
    assert_eq!(st.phase_str(), "Failed", "{st:?}");
    assert_eq!(st.condition_reason("Failed"), "RunStateLost");
}

/// Defects: sub-millisecond bounds were truncated (wrong jobs at the boundary), the bound was
/// shown in whole seconds, and a re-created run showed its re-creation time as its bound
/// while it really used the first one (kept in its record).
#[test]
fn time_bounds_are_exact_to_the_millisecond_and_a_recreated_run_shows_its_real_bound() {
    let ns = TestNs::new("e2e-bounds");
    let queue = ns.name.as_str();
    seed_failed(&ns, queue, 120);
    let jobs = node("list.mjs", &["--redis", &redis_url(), "--queue", queue])["jobs"]
        .as_array()
        .unwrap()
        .clone();
    let at = jobs[60]["finishedOn"].as_i64().unwrap();
    let want: BTreeSet<String> = jobs
        .iter()
        .filter(|j| j["finishedOn"].as_i64() == Some(at))
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let iso = |ms: i64, frac: &str| {
        let t = k8s_openapi::jiff::Timestamp::from_millisecond(ms).unwrap();
        let secs = t.strftime("%Y-%m-%dT%H:%M:%S");
        format!("{secs}.{:03}{frac}Z", ms.rem_euclid(1000))
    };
    // [at - 0.5 ms, at + 0.5 ms) holds exactly the jobs that finished at `at`.
    let window = format!(
        "    finishedAfter: \"{}\"\n    finishedBefore: \"{}\"\n  dryRun: true\n",
        iso(at - 1, "5"),
        iso(at, "5")
    );
    let yaml = selector_yaml("window", queue, "").replace(
        "  selector:\n    names: [\"charge\"]\n",
        &format!("  selector:\n    names: [\"charge\"]\n{window}"),
    );
    let out = ns.apply("w.yaml", &yaml);
    assert!(out.ok, "{}", out.stderr);
    let _op = Operator::start(&ns, &[]);
    assert!(ns.wait_condition("window", "Complete", "60s").ok);
    let jr = ns.get("window");
    let got: BTreeSet<String> = status_of(&jr).jobs.into_iter().map(|r| r.id).collect();
    assert_eq!(got, want, "{jr}");
    // The bound as serialized (JSON text): it must carry its milliseconds.
    let shown = jr["status"]["selection"]["upperBound"].as_str().unwrap();
    assert_eq!(upper_ms(&jr), Some(at + 1), "{shown}");
    assert!(
        shown.contains('.'),
        "the bound is shown with its milliseconds: {shown}"
    );

    // A real run, suspended, deleted and re-created under the same run key: it goes on with
    // its first bound, and status shows that one.
    let slow = "  runKey: bounds-run\n  rateLimit:\n    jobsPerSecond: 20\n";
    assert!(ns.apply("r.yaml", &selector_yaml("keyed", queue, slow)).ok);
    wait_processed(&ns, "keyed", 10);
    let first = upper_ms(&ns.get("keyed")).unwrap();
    assert!(ns.kubectl(&["delete", "jobretry", "keyed"]).ok);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(ns.apply("r.yaml", &selector_yaml("keyed", queue, slow)).ok);
    assert!(ns.wait_condition("keyed", "Complete", "60s").ok);
    let again = ns.get("keyed");
    assert_eq!(upper_ms(&again), Some(first), "{again}");
}

/// Defect: deleting or suspending a running selector run kept the queue's lock for 60 s, so
/// the next run waited for nothing.
#[test]
fn suspending_or_deleting_a_running_selector_run_gives_the_queue_back_at_once() {
    let ns = TestNs::new("e2e-unlock");
    let queue = ns.name.as_str();
    seed_failed(&ns, queue, 200);
    let _op = Operator::start(&ns, &[]);
    let slow = "  rateLimit:\n    jobsPerSecond: 20\n";
    assert!(ns.apply("a.yaml", &selector_yaml("held", queue, slow)).ok);
    wait_processed(&ns, "held", 10);
    assert!(
        exists(&lock_key(queue)),
        "a running selector run holds the queue"
    );
    set_suspend(&ns, "held", true);
    eventually(
        Duration::from_secs(5),
        "the lock released on suspend",
        || (!exists(&lock_key(queue))).then_some(()),
    );
    set_suspend(&ns, "held", false);
    eventually(
        Duration::from_secs(20),
        "the run holds the queue again",
        || exists(&lock_key(queue)).then_some(()),
    );
    assert!(ns.kubectl(&["delete", "jobretry", "held"]).ok);
    let deleted = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the lock released on delete",
        || (!exists(&lock_key(queue))).then_some(()),
    );
    // The next run starts at once instead of waiting for the lock to expire.
    assert!(ns.apply("b.yaml", &selector_yaml("next", queue, "")).ok);
    assert!(ns.wait_condition("next", "Complete", "30s").ok);
    assert!(
        deleted.elapsed() < Duration::from_secs(30),
        "the next run waited {:?}",
        deleted.elapsed()
    );
    assert_eq!(ns.status("next").phase_str(), "Succeeded");
}
