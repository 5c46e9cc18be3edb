//! Exactly once under crashes: the operator is SIGKILLed at random points of a 20,000-job run
//! (two JobRetry objects of 10,000 ids, the most one object may list) and restarted each
//! time; at the end a real BullMQ Worker processes every job exactly once, and the status
//! counts are exact. Then deleting and re-creating an object with the same run key retries
//! nothing again.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::*;
use serde_json::{Value, json};

const PER_OBJECT: usize = 10_000;

/// A small deterministic generator; the seed is printed so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

fn manifest(name: &str, queue: &str, ids: &[String]) -> String {
    jobretry_yaml(
        name,
        queue,
        ids,
        "",
        "  rateLimit:\n    jobsPerSecond: 2500\n",
    )
}

fn phase(ns: &TestNs, name: &str) -> Option<String> {
    ns.get(name)["status"]["phase"].as_str().map(str::to_string)
}

#[test]
fn sigkill_at_random_points_never_retries_a_job_twice() {
    let ns = TestNs::new("e2e-crash");
    let queue = ns.name.as_str();
    let ids = seed_failed(&ns, queue, 2 * PER_OBJECT);

    let args = ["--batch-size", "250", "--status-interval-ms", "200"];
    let mut op = Operator::start(&ns, &args);
    for (i, chunk) in ids.chunks(PER_OBJECT).enumerate() {
        let applied = ns.apply(
            &format!("part{i}.yaml"),
            &manifest(&format!("part{i}"), queue, chunk),
        );
        assert!(applied.ok, "{}", applied.stderr);
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill schedule seed: {seed}");
    let mut rng = Lcg(seed);
    let mut kills_mid_run = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.next_ms(300, 1500)));
        let running = ["part0", "part1"]
            .iter()
            .any(|n| phase(&ns, n).as_deref() != Some("Succeeded"));
        op.kill();
        kills_mid_run += usize::from(running);
        op = Operator::start(&ns, &args);
    }
    assert!(
        kills_mid_run >= 3,
        "the kills must land mid-run (only {kills_mid_run} did); the run finished too fast"
    );
    for name in ["part0", "part1"] {
        let waited = ns.wait_condition(name, "Complete", "180s");
        assert!(waited.ok, "{name}: {}\n{}", waited.stderr, op.logs());
        let st = &ns.get(name)["status"];
        assert_eq!(
            st["counts"],
            json!({"Retried": PER_OBJECT}),
            "{name}: every job reported Retried exactly once"
        );
        assert_eq!(st["processed"], PER_OBJECT);
        assert_eq!(st["phase"], "Succeeded");
    }

    assert_processed_exactly_once(queue, &ids);

    // GitOps deletes and re-creates the object: same run key, nothing is retried again.
    let before = queue_dump(queue);
    ns.kubectl(&["delete", "jobretry", "part0", "--wait=true"]);
    assert!(
        ns.apply("part0.yaml", &manifest("part0", queue, &ids[..PER_OBJECT]))
            .ok
    );
    assert!(ns.wait_condition("part0", "Complete", "120s").ok);
    let st = &ns.get("part0")["status"];
    assert_eq!(st["counts"], json!({"AlreadyProcessed": PER_OBJECT}));
    assert_eq!(st["retried"], 0);
    let after = queue_dump(queue);
    // BullMQ's keys are untouched; only our own run record notes the new object's position.
    let record = format!("bull:{queue}:jobretry:record:run:{}/part0", ns.name);
    let changed: Vec<_> = changed_keys(&before, &after)
        .into_iter()
        .filter(|k| **k != record)
        .collect();
    assert!(
        changed.is_empty(),
        "re-creating the JobRetry changed Redis: {changed:?}"
    );
    drop_queue(queue);
}

/// The selector path under crashes, on a queue in production: 100,000 jobs failed by a real
/// Worker; while a selector JobRetry retries them, another Worker keeps adding and failing new
/// jobs (after the run's snapshot) and processes what the run retried. The operator is
/// SIGKILLed 5 times; at the end every matched job was processed exactly once, no new
/// failure was taken, and the counts are exact.
#[test]
fn sigkill_during_a_100000_job_selector_run_on_a_churning_queue() {
    const JOBS: usize = 100_000;
    let ns = TestNs::new("e2e-crash-sel");
    let queue = ns.name.as_str();
    let started = Instant::now();
    let seeded = node(
        "bench-seed.mjs",
        &[
            "--redis",
            &redis_url(),
            "--queue",
            queue,
            "--jobs",
            &JOBS.to_string(),
            "--concurrency",
            "300",
        ],
    );
    assert_eq!(seeded["failed"], JOBS as u64);
    println!("seeded {JOBS} failed jobs in {:?}", started.elapsed());
    let stop = ns.dir.path().join("stop");
    let churn_out = ns.dir.path().join("churn.json");
    let mut churn = std::process::Command::new("node")
        .current_dir(repo().join("tests/bullmq"))
        .args(["churn.mjs", "--redis", &redis_url(), "--queue", queue])
        .args([
            "--stop-file",
            stop.to_str().unwrap(),
            "--expect",
            &JOBS.to_string(),
        ])
        .args(["--add-every-ms", "10", "--settle-ms", "3000"])
        .stdout(std::fs::File::create(&churn_out).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let args = ["--status-interval-ms", "200"];
    let mut op = Operator::start(&ns, &args);
    let yaml = format!(
        "apiVersion: jobretry.io/v1alpha1\nkind: JobRetry\nmetadata:\n  name: incident\nspec:\n  queue:\n    name: {queue}\n  connection:\n    secretRef:\n      name: redis\n  selector:\n    names: [bench]\n    maxJobs: 1000000\n  resetAttemptsMade: true\n  rateLimit:\n    jobsPerSecond: 10000\n"
    );
    assert!(ns.apply("incident.yaml", &yaml).ok);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill schedule seed: {seed}");
    let mut rng = Lcg(seed);
    let mut kills_mid_run = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.next_ms(300, 1500)));
        let running = phase(&ns, "incident").as_deref() != Some("Succeeded");
        op.kill();
        kills_mid_run += usize::from(running);
        op = Operator::start(&ns, &args);
    }
    assert!(
        kills_mid_run >= 3,
        "only {kills_mid_run} kills landed mid-run"
    );
    let waited = ns.wait_condition("incident", "Complete", "180s");
    assert!(waited.ok, "{}\n{}", waited.stderr, op.logs());
    let st = ns.get("incident")["status"].clone();
    assert_eq!(st["counts"], json!({"Retried": JOBS}), "{st}");
    assert_eq!(
        (st["matched"].as_u64(), st["processed"].as_u64()),
        (Some(JOBS as u64), Some(JOBS as u64))
    );
    assert_eq!(st["phase"], "Succeeded");
    std::fs::write(&stop, "").unwrap();
    let status = churn.wait().unwrap();
    assert!(status.success(), "churn.mjs failed");
    let out: Value = serde_json::from_str(&std::fs::read_to_string(&churn_out).unwrap()).unwrap();
    assert_eq!(out["timedOut"], false);
    let mut times: BTreeMap<u64, usize> = BTreeMap::new();
    for id in out["processed"].as_array().unwrap() {
        *times
            .entry(id.as_str().unwrap().parse().unwrap())
            .or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "jobs processed more than once: {twice:?}");
    assert_eq!(times.len(), JOBS, "every matched job processed");
    assert!(
        times.keys().all(|id| (1..=JOBS as u64).contains(id)),
        "a new failure was retried"
    );
    println!(
        "{} new jobs failed meanwhile, none taken; whole test {:?}",
        out["added"],
        started.elapsed()
    );
    drop_queue(queue);
}
