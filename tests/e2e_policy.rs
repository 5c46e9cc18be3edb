//! JobRetryPolicy end to end: the real API server (with the garbage collector of a real
//! kube-controller-manager), Redis, and a BullMQ 6.7.0 Worker (tests/bullmq/flaky.mjs) that
//! fails some job names forever and the others only once, its processing count per job id
//! the judge. The policy controller's clock is stepped through schedule ticks by a test clock
//! (the skew file `JOBRETRY_TEST_CLOCK_SKEW_FILE`), so a test does not wait for real minutes;
//! every Redis time (finishedOn, the run's snapshot bound) stays real.

mod support;

use std::{
    cell::Cell,
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use jobretry_operator::crd::policy::{ConcurrencyPolicy, Guard, JobRetryPolicy, OnFailures};
use serde_json::Value;
use support::*;

/// The policy controller's clock: real time plus a skew the test moves forward.
struct TestClock {
    file: PathBuf,
    skew: Cell<i64>,
}

impl TestClock {
    fn new(ns: &TestNs) -> Self {
        let file = ns.dir.path().join("clock-skew");
        std::fs::write(&file, "0").unwrap();
        Self {
            file,
            skew: Cell::new(0),
        }
    }

    fn env(&self) -> [(&'static str, String); 1] {
        let file = self.file.to_str().unwrap().to_string();
        [("JOBRETRY_TEST_CLOCK_SKEW_FILE", file)]
    }

    /// Moves the operator's clock 2 s past the next minute: that minute's tick is due. Returns
    /// the tick, in minutes since the epoch.
    fn next_minute(&self) -> i64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let now = real + self.skew.get();
        let add = 60 - now.rem_euclid(60) + 2;
        self.skew.set(self.skew.get() + add);
        std::fs::write(&self.file, self.skew.get().to_string()).unwrap();
        (now + add) / 60
    }
}

/// Starts the operator of `ns` on `clock`.
fn operator(ns: &TestNs, clock: &TestClock, extra: &[&str]) -> Operator {
    let env = clock.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Operator::start_env(ns, extra, &env)
}

/// Makes the operator look at policy `name` now (an annotation change is a watch event).
fn nudge(ns: &TestNs, name: &str) {
    let stamp = format!("test.jobretry.io/nudge={}", nanos());
    let out = ns.kubectl(&["annotate", "jobretrypolicy", name, &stamp, "--overwrite"]);
    assert!(out.ok, "{}", out.stderr);
}

/// Steps the clock to the next minute and waits for that tick's run to complete; its name.
fn tick_and_run(ns: &TestNs, clock: &TestClock, policy: &str) -> String {
    let run = format!("{policy}-{}", clock.next_minute());
    nudge(ns, policy);
    eventually(Duration::from_secs(30), "the tick's run exists", || {
        ns.runs_of(policy).contains(&run).then_some(())
    });
    let done = ns.wait_condition(&run, "Complete", "90s");
    assert!(done.ok, "{run}: {}\n{:?}", done.stderr, ns.status(&run));
    run
}

/// Jobs in `queue`'s `state` set (failed, completed).
fn in_state(queue: &str, state: &str) -> u64 {
    redis::cmd("ZCARD")
        .arg(format!("bull:{queue}:{state}"))
        .query(&mut conn(&redis_url()))
        .unwrap()
}

/// Waits until the Worker has taken every retried job: nothing waits or is active, and
/// `failed` jobs are in the failed set again.
fn settled(queue: &str, failed: u64) {
    let mut con = conn(&redis_url());
    eventually(
        Duration::from_secs(60),
        "the Worker took the retried jobs",
        || {
            let wait: u64 = redis::cmd("LLEN")
                .arg(format!("bull:{queue}:wait"))
                .query(&mut con)
                .unwrap();
            let active: u64 = redis::cmd("LLEN")
                .arg(format!("bull:{queue}:active"))
                .query(&mut con)
                .unwrap();
            (wait == 0 && active == 0 && in_state(queue, "failed") == failed).then_some(())
        },
    );
}

/// A Worker (flaky.mjs) on the queue named as `ns`: `forever` jobs named `charge-forever`
/// fail every time, `once` jobs named `charge-once` only the first; all have failed once when
/// this returns.
fn flaky_worker(ns: &TestNs, forever: usize, once: usize) -> ReadyScript {
    let names: Vec<&str> = std::iter::repeat_n("charge-forever", forever)
        .chain(std::iter::repeat_n("charge-once", once))
        .collect();
    let add = names.join(",");
    let args = [
        "--redis",
        &redis_url(),
        "--queue",
        &ns.name,
        "--add",
        &add,
        "--forever",
        "charge-forever",
    ];
    ReadyScript::node("flaky.mjs", &args, &["still down"], Duration::from_secs(60))
}

/// How often the Worker processed each job, by name: `{name: [times per job]}`.
fn times_by_name(result: &Value) -> BTreeMap<String, Vec<u64>> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for job in result["processed"].as_object().unwrap().values() {
        let name = job["name"].as_str().unwrap().to_string();
        by.entry(name)
            .or_default()
            .push(job["times"].as_u64().unwrap());
    }
    by
}

/// A policy over the `charge-*` jobs of the queue named as `ns`, every minute.
fn every_minute(ns: &TestNs, name: &str) -> JobRetryPolicy {
    let mut sel = selector(1000);
    sel.names = Some(vec!["charge-*".into()]);
    let mut p = policy(name, &ns.name, sel, Some("* * * * *"));
    p.spec.successful_runs_history_limit = 10;
    p.spec.failed_runs_history_limit = 10;
    p
}

#[test]
fn a_scheduled_policy_parks_jobs_that_keep_failing_and_its_deletion_deletes_its_runs() {
    let ns = TestNs::new("policy-park");
    let worker = flaky_worker(&ns, 4, 6);
    let clock = TestClock::new(&ns);
    let _op = operator(&ns, &clock, &[]);
    let mut p = every_minute(&ns, "transient");
    p.spec.max_retries_per_job = 2;
    let applied = ns.apply_policy(&p);
    assert!(applied.ok, "{}", applied.stderr);

    // Run 1 retries all 10; the 6 transient ones then complete, the 4 others fail again.
    let first = tick_and_run(&ns, &clock, "transient");
    assert_eq!(ns.status(&first).counts, counts([("Retried", 10)]));
    settled(&ns.name, 4);
    assert_eq!(in_state(&ns.name, "completed"), 6);
    // Run 2 retries the 4 again (their second automated retry).
    let second = tick_and_run(&ns, &clock, "transient");
    assert_eq!(ns.status(&second).counts, counts([("Retried", 4)]));
    settled(&ns.name, 4);
    // Run 3: each of the 4 was retried twice by this policy: Parked, left where it is.
    let third = tick_and_run(&ns, &clock, "transient");
    let st = ns.status(&third);
    assert_eq!(st.counts, counts([("Parked", 4)]), "{st:?}");
    assert!(
        st.jobs
            .iter()
            .all(|r| r.result == "Parked" && r.code.is_none()),
        "{st:?}"
    );
    assert_eq!(in_state(&ns.name, "failed"), 4, "parked jobs stay failed");

    let mut worker = worker;
    worker.close();
    let by_name = times_by_name(&worker.finish());
    assert_eq!(
        by_name["charge-once"],
        vec![2; 6],
        "failed once, then retried once and completed"
    );
    assert_eq!(
        by_name["charge-forever"],
        vec![3; 4],
        "failed, then retried exactly twice"
    );

    let ps = eventually(
        Duration::from_secs(30),
        "the policy counted its runs",
        || {
            let ps = ns.policy_status("transient");
            (ps.jobs_parked == 4).then_some(ps)
        },
    );
    assert_eq!((ps.runs_created, ps.jobs_retried), (3, 14), "{ps:?}");
    assert!(
        ps.last_schedule_time.is_some() && ps.active.is_empty(),
        "{ps:?}"
    );
    let shown = ns.kubectl(&["get", "jrp", "transient"]);
    assert!(
        shown.stdout.contains("PARKED") && shown.stdout.contains("* * * * *"),
        "{}",
        shown.stdout
    );

    // Deleting the policy deletes its runs (the garbage collector, by their owner reference).
    assert!(
        ns.kubectl(&["delete", "jrp", "transient", "--wait=false"])
            .ok
    );
    eventually(
        Duration::from_secs(90),
        "the garbage collector deleted the runs",
        || ns.runs_of("transient").is_empty().then_some(()),
    );
}

#[test]
fn the_guard_suspends_a_policy_whose_retries_fail_again_until_resumed() {
    let ns = TestNs::new("policy-guard");
    let mut worker = flaky_worker(&ns, 6, 0);
    let clock = TestClock::new(&ns);
    let op = operator(&ns, &clock, &[]);
    let mut p = every_minute(&ns, "loop");
    p.spec.max_retries_per_job = 0;
    p.spec.guard = Some(Guard {
        max_refailed_percent: 50,
        min_sample: 5,
    });
    assert!(ns.apply_policy(&p).ok);

    // Run 1 sees no re-failure yet; run 2 finds all 6 retried before: the guard trips.
    tick_and_run(&ns, &clock, "loop");
    settled(&ns.name, 6);
    tick_and_run(&ns, &clock, "loop");
    settled(&ns.name, 6);
    let ps = eventually(Duration::from_secs(30), "the guard tripped", || {
        let ps = ns.policy_status("loop");
        ps.guard.is_some().then_some(ps)
    });
    assert_eq!(ps.guard.as_ref().unwrap().refailed_percent, 100, "{ps:?}");
    assert_eq!(ps.condition_status("Suspended"), "True", "{ps:?}");
    assert_eq!(ps.condition_reason("Suspended"), "RefailRateHigh");
    assert_eq!(ps.suspend.as_deref(), Some("guard"));
    let events = ns.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=GuardTripped",
        "-o",
        "name",
    ]);
    assert!(!events.stdout.trim().is_empty(), "no GuardTripped event");
    let addr = op.http_addr();
    assert_eq!(
        metric(&addr, "jobretry_policy_guard_trips_total"),
        Some(1.0)
    );
    assert_eq!(metric(&addr, "jobretry_policies_guard_tripped"), Some(1.0));

    // Two more periods: no run.
    for _ in 0..2 {
        clock.next_minute();
        nudge(&ns, "loop");
        std::thread::sleep(Duration::from_secs(3));
    }
    assert_eq!(
        ns.runs_of("loop").len(),
        2,
        "a tripped policy created a run"
    );

    // `kubectl jobretry resume` lets it run again.
    let resumed = run(
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-jobretry"))
            .env("KUBECONFIG", kubeconfig())
            .args(["-n", &ns.name, "resume", "loop"]),
    );
    assert!(resumed.ok, "{}", resumed.stderr);
    // The trip is cleared and the tick missed while held runs (at most one, as CronJob
    // does after a suspend); its jobs still fail every time, so the guard trips again on it.
    let third = eventually(Duration::from_secs(30), "a run after the resume", || {
        let runs = ns.runs_of("loop");
        (runs.len() == 3).then(|| runs[2].clone())
    });
    assert!(ns.wait_condition(&third, "Complete", "60s").ok);
    let ps = eventually(
        Duration::from_secs(30),
        "the guard judged the new run",
        || {
            let ps = ns.policy_status("loop");
            (ps.guard.as_ref()?.run.as_deref() == Some(third.as_str())).then_some(ps)
        },
    );
    assert_eq!(ps.runs_created, 3);
    assert_eq!(
        metric(&addr, "jobretry_policy_guard_trips_total"),
        Some(2.0)
    );
    worker.close();
}

#[test]
fn on_failures_fires_once_the_threshold_is_crossed_and_once_per_window() {
    let ns = TestNs::new("policy-onfail");
    let clock = TestClock::new(&ns);
    let _op = operator(&ns, &clock, &[]);
    let mut p = policy("surge", &ns.name, selector(1000), None);
    p.spec.on_failures = Some(OnFailures {
        at_least: 5,
        within: "10m".into(),
        check_every_seconds: 5,
    });
    assert!(ns.apply_policy(&p).ok);

    // 4 failures: below the threshold, through more than two checks.
    let mut four = flaky_worker(&ns, 4, 0);
    std::thread::sleep(Duration::from_secs(12));
    assert!(ns.runs_of("surge").is_empty(), "fired below the threshold");
    // The fifth: a run within a check (5 s) and the time it takes to create it.
    let mut fifth = flaky_worker(&ns, 1, 0);
    settled(&ns.name, 5);
    let crossed = Instant::now();
    let runs = eventually(Duration::from_secs(30), "a run after the threshold", || {
        let runs = ns.runs_of("surge");
        (!runs.is_empty()).then_some(runs)
    });
    let took = crossed.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "fired {took:?} after the threshold"
    );
    assert_eq!(runs.len(), 1);
    assert!(ns.wait_condition(&runs[0], "Complete", "60s").ok);
    assert_eq!(ns.status(&runs[0]).counts, counts([("Retried", 5)]));
    // The 5 retried jobs fail again (5 more failures in the window): no second run.
    settled(&ns.name, 5);
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(ns.runs_of("surge").len(), 1, "fired twice in one window");
    let ps = ns.policy_status("surge");
    assert!(ps.last_failures_time.is_some(), "{ps:?}");
    four.close();
    fifth.close();
}

#[test]
fn forbid_skips_a_tick_while_a_run_is_active_and_replace_stops_it() {
    let ns = TestNs::new("policy-conc");
    let clock = TestClock::new(&ns);
    let _op = operator(&ns, &clock, &[]);
    failed_ids(&ns, 40);
    let mut p = every_minute(&ns, "slow");
    p.spec.job_retry_template.spec.selector.names = None;
    p.spec.job_retry_template.spec.rate_limit =
        Some(jobretry_operator::crd::RateLimit { jobs_per_second: 2 });
    assert!(ns.apply_policy(&p).ok);
    let first = format!("slow-{}", clock.next_minute());
    nudge(&ns, "slow");
    eventually(Duration::from_secs(30), "the first run runs", || {
        ns.runs_of("slow").contains(&first).then_some(())
    });
    // Forbid: the next tick while the first still runs creates nothing.
    clock.next_minute();
    nudge(&ns, "slow");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ns.runs_of("slow"), vec![first.clone()]);
    // Replace: the next tick deletes the active run (between batches) and starts its own.
    let mut replace = p.clone();
    replace.spec.concurrency_policy = ConcurrencyPolicy::Replace;
    assert!(ns.apply_policy(&replace).ok);
    let third = format!("slow-{}", clock.next_minute());
    nudge(&ns, "slow");
    eventually(Duration::from_secs(30), "the run was replaced", || {
        (ns.runs_of("slow") == vec![third.clone()]).then_some(())
    });
    let before = whole_jobs(&ns.name, 40);
    // Deleting the policy while its run is halfway: the garbage collector deletes the run, the
    // operator stops it between batches, and no job is left half-retried.
    let running = eventually(Duration::from_secs(30), "the new run under way", || {
        let st = ns.status(&third);
        (st.retried.unwrap_or_default() >= 2).then_some(st)
    });
    let out = ns.kubectl(&["delete", "jobretrypolicy", "slow", "--wait=false"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        running.phase.as_deref() == Some("Running") && running.completion_time.is_none(),
        "the run was not halfway when its policy was deleted: {running:?}"
    );
    eventually(
        Duration::from_secs(60),
        "the garbage collector deleted the run",
        || ns.runs_of("slow").is_empty().then_some(()),
    );
    let stopped = whole_jobs(&ns.name, 40);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        whole_jobs(&ns.name, 40),
        stopped,
        "jobs were still retried after the run was deleted"
    );
    assert!(
        stopped.0 >= before.0 && stopped.1 <= before.1,
        "{before:?} -> {stopped:?}"
    );
}

/// Every one of the `n` jobs of `queue` is whole: in exactly one of BullMQ's lists or sets,
/// a waiting job retried (no finishedOn), a failed job still finished (finishedOn set).
/// Returns (waiting, failed).
fn whole_jobs(queue: &str, n: usize) -> (usize, usize) {
    let mut con = conn(&redis_url());
    let key = |k: &str| format!("bull:{queue}:{k}");
    let list = |con: &mut redis::Connection, k: &str| -> Vec<String> {
        redis::cmd("LRANGE")
            .arg(key(k))
            .arg(0)
            .arg(-1)
            .query(con)
            .unwrap()
    };
    let set = |con: &mut redis::Connection, k: &str| -> Vec<String> {
        redis::cmd("ZRANGE")
            .arg(key(k))
            .arg(0)
            .arg(-1)
            .query(con)
            .unwrap()
    };
    let wait = list(&mut con, "wait");
    let failed = set(&mut con, "failed");
    let mut all: Vec<String> = [
        wait.clone(),
        list(&mut con, "active"),
        failed.clone(),
        set(&mut con, "completed"),
    ]
    .concat();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!((total, all.len()), (n, n), "jobs in two places, or lost");
    let finished = |con: &mut redis::Connection, id: &str| -> bool {
        redis::cmd("HEXISTS")
            .arg(key(id))
            .arg("finishedOn")
            .query(con)
            .unwrap()
    };
    for id in &wait {
        assert!(
            !finished(&mut con, id),
            "job {id} waits but is still finished"
        );
    }
    for id in &failed {
        assert!(
            finished(&mut con, id),
            "job {id} is failed without finishedOn"
        );
    }
    (wait.len(), failed.len())
}

#[test]
fn a_leader_killed_as_a_tick_fires_leaves_exactly_one_run_for_it() {
    let ns = TestNs::new("policy-ha");
    failed_ids(&ns, 3);
    let clock = TestClock::new(&ns);
    let start = |id: &str, addr: &str| {
        let args = [
            "--lease-identity",
            id,
            "--lease-duration-seconds",
            "4",
            "--lease-namespace",
            &ns.name,
            "--http-addr",
            addr,
        ];
        operator(&ns, &clock, &args)
    };
    let addrs = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let mut ops = [start("a", &addrs[0]), start("b", &addrs[1])];
    let leader = eventually(Duration::from_secs(30), "a leader", || {
        (0..2).find(|&i| metric(&addrs[i], "jobretry_leader") == Some(1.0))
    });
    assert!(ns.apply_policy(&every_minute(&ns, "ha")).ok);
    std::thread::sleep(Duration::from_secs(1));
    let tick = format!("ha-{}", clock.next_minute());
    nudge(&ns, "ha");
    std::thread::sleep(Duration::from_millis(200));
    ops[leader].kill();
    let follower = 1 - leader;
    eventually(Duration::from_secs(30), "the follower leads", || {
        (metric(&addrs[follower], "jobretry_leader") == Some(1.0)).then_some(())
    });
    nudge(&ns, "ha");
    eventually(Duration::from_secs(30), "the tick's run", || {
        ns.runs_of("ha").contains(&tick).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ns.runs_of("ha"), vec![tick.clone()], "one run for the tick");
    assert!(ns.wait_condition(&tick, "Complete", "60s").ok);
}

#[test]
fn wrong_schedules_and_time_zones_are_refused_at_apply_time() {
    let ns = TestNs::new("policy-schema");
    let cases = [
        (
            "61 * * * *",
            "UTC",
            "spec.schedule is not a five-field cron",
        ),
        (
            "@hourly",
            "Europe/Atlantis",
            "spec.timeZone is not an IANA time zone",
        ),
        ("@hourly", "Europe/Berlin", ""),
    ];
    for (schedule, zone, refusal) in cases {
        let mut p = every_minute(&ns, "bad");
        p.spec.schedule = Some(schedule.into());
        p.spec.time_zone = Some(zone.into());
        let out = ns.apply_policy(&p);
        match refusal {
            "" => assert!(out.ok, "{}", out.stderr),
            why => assert!(!out.ok && out.stderr.contains(why), "{}", out.stderr),
        }
    }
}
