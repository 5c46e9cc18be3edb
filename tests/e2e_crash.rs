//! Exactly once under crashes: the operator is SIGKILLed at random points of a 20,000-job run
//! (two JobRetry objects of 10,000 ids, the most one object may list) and restarted each
//! time; at the end a real BullMQ Worker processes every job exactly once, and the status
//! counts are exact. Then deleting and re-creating an object with the same run key retries
//! nothing again. (The selector path under crashes, on a churning queue, is the first row
//! of tests/e2e_fault_suite.rs.)

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;

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
    support::manifest(&jobretry(name, queue, ids).jobs_per_second(2500))
}

fn phase(ns: &TestNs, name: &str) -> Option<String> {
    ns.status(name).phase
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
        let st = ns.status(name);
        assert_eq!(
            st.counts,
            counts([("Retried", PER_OBJECT as u64)]),
            "{name}: every job reported Retried exactly once"
        );
        assert_eq!(st.processed, Some(PER_OBJECT as u64));
        assert_eq!(st.phase_str(), "Succeeded");
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
    let st = ns.status("part0");
    assert_eq!(st.counts, counts([("AlreadyProcessed", PER_OBJECT as u64)]));
    assert_eq!(st.retried, Some(0));
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
