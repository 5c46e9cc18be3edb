//! The decision, table by table, on the clock the tests give it.

use super::*;

const POLICY: &str = "
apiVersion: jobretry.io/v1alpha1
kind: JobRetryPolicy
metadata: {name: p, namespace: ns, uid: u1, generation: 1, creationTimestamp: '2026-12-06T10:00:30Z'}
spec:
  jobRetryTemplate: {spec: {queue: {name: q}, connection: {secretRef: {name: r}}, selector: {}}}
  schedule: '*/15 * * * *'
";

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn policy(extra: &str) -> JobRetryPolicy {
    serde_norway::from_str(&format!("{POLICY}{extra}")).unwrap()
}

fn with_status(mut p: JobRetryPolicy, status: JobRetryPolicyStatus) -> JobRetryPolicy {
    p.status = Some(status);
    p
}

fn scheduled_at(tick: &str) -> JobRetryPolicyStatus {
    JobRetryPolicyStatus {
        last_schedule_time: Some(Time(at(tick))),
        ..Default::default()
    }
}

/// A run of the tick at `tick`, in `phase` (None: not started), completed at `done`.
fn run(tick: &str, phase: Option<Phase>, done: Option<&str>) -> Run {
    let tick = at(tick);
    Run {
        name: child::scheduled_name("p", tick),
        tick,
        phase,
        completed: done.map(at),
        matched: 10,
        retried: 10,
        parked: 0,
        refailed: 0,
    }
}

fn decide_at(p: &JobRetryPolicy, runs: &[Run], now: &str, failures: Option<u64>) -> Decision {
    decide(&Inputs {
        policy: p,
        runs,
        now: at(now),
        failures,
    })
}

fn created(d: &Decision) -> Option<(String, String)> {
    d.create
        .as_ref()
        .map(|c| (c.name.clone(), c.tick.to_string()))
}

fn name_of(tick: &str) -> String {
    child::scheduled_name("p", at(tick))
}

#[test]
fn a_due_tick_creates_its_run_once() {
    let p = policy("");
    // Created 10:00:30: the first tick is 10:15; nothing before it.
    assert_eq!(
        created(&decide_at(&p, &[], "2026-12-06T10:14:59Z", None)),
        None
    );
    let d = decide_at(&p, &[], "2026-12-06T10:15:02Z", None);
    assert_eq!(
        created(&d),
        Some((
            name_of("2026-12-06T10:15:00Z"),
            "2026-12-06T10:15:00Z".into()
        ))
    );
    assert_eq!(d.status.runs_created, 1);
    assert_eq!(
        d.requeue, MAX_REQUEUE,
        "the 10:30 tick is 15 minutes away: the cap"
    );
    let waiting = with_status(p.clone(), d.status.clone());
    let r = [run(
        "2026-12-06T10:15:00Z",
        Some(Phase::Succeeded),
        Some("2026-12-06T10:16:00Z"),
    )];
    let d2 = decide_at(&waiting, &r, "2026-12-06T10:27:00Z", None);
    assert_eq!(d2.requeue, Duration::from_secs(180), "until the 10:30 tick");
    // With the run there (the status written, or only the run: a crash between the two).
    let after = with_status(p.clone(), d.status.clone());
    let r = [run("2026-12-06T10:15:00Z", None, None)];
    assert_eq!(
        created(&decide_at(&after, &r, "2026-12-06T10:15:05Z", None)),
        None
    );
    assert_eq!(
        created(&decide_at(&p, &r, "2026-12-06T10:15:05Z", None)),
        None
    );
}

#[test]
fn missed_ticks_give_one_late_run_unless_past_the_deadline() {
    let p = with_status(policy(""), scheduled_at("2026-12-06T10:15:00Z"));
    // Down from 10:16 to 11:20: 10:30 ... 11:15 missed, one run for the latest.
    let d = decide_at(&p, &[], "2026-12-06T11:20:00Z", None);
    assert_eq!(created(&d).unwrap().1, "2026-12-06T11:15:00Z");
    // startingDeadlineSeconds 240: 11:15 was missed by 5 minutes: skipped, said so.
    let strict = with_status(
        policy("  startingDeadlineSeconds: 240\n"),
        scheduled_at("2026-12-06T10:15:00Z"),
    );
    let d = decide_at(&strict, &[], "2026-12-06T11:20:00Z", None);
    assert_eq!(created(&d), None);
    assert!(
        d.notes
            .iter()
            .any(|n| n.reason == PolicyEventReason::TickSkipped && n.text.contains("4 tick(s)")),
        "{:?}",
        d.notes
    );
    // Within the deadline it runs.
    assert!(
        decide_at(&strict, &[], "2026-12-06T11:18:00Z", None)
            .create
            .is_some()
    );
}

#[test]
fn two_hundred_missed_ticks_give_one_run_for_the_latest() {
    let p = with_status(
        policy("").tap_schedule("* * * * *"),
        scheduled_at("2026-12-06T10:00:00Z"),
    );
    let d = decide_at(&p, &[], "2026-12-06T13:20:30Z", None);
    assert_eq!(created(&d).unwrap().1, "2026-12-06T13:20:00Z");
    assert_eq!(d.status.runs_created, 1);
}

#[test]
fn forbid_waits_for_the_active_run_and_replace_deletes_it() {
    let p = with_status(policy(""), scheduled_at("2026-12-06T10:15:00Z"));
    let active = [run("2026-12-06T10:15:00Z", Some(Phase::Running), None)];
    let d = decide_at(&p, &active, "2026-12-06T10:30:05Z", None);
    assert_eq!((created(&d), d.delete.clone()), (None, vec![]));
    assert!(d.notes.iter().any(|n| n.text.contains("Forbid")));
    assert_eq!(
        d.status.active,
        vec![RunRef {
            name: active[0].name.clone()
        }]
    );
    // Once it finished, the tick runs late (no deadline).
    let done = [run(
        "2026-12-06T10:15:00Z",
        Some(Phase::Succeeded),
        Some("2026-12-06T10:31:00Z"),
    )];
    assert!(
        decide_at(&p, &done, "2026-12-06T10:31:05Z", None)
            .create
            .is_some()
    );
    // Replace: the active run is deleted and the new one created.
    let mut r = p.clone();
    r.spec.concurrency_policy = ConcurrencyPolicy::Replace;
    let d = decide_at(&r, &active, "2026-12-06T10:30:05Z", None);
    assert_eq!(d.delete, vec![active[0].name.clone()]);
    assert_eq!(created(&d).unwrap().0, name_of("2026-12-06T10:30:00Z"));
}

#[test]
fn on_failures_fires_at_the_threshold_once_per_window() {
    let p = policy("  onFailures: {atLeast: 5, within: 10m, checkEverySeconds: 30}\n")
        .tap_no_schedule();
    let now = "2026-12-06T10:20:40Z";
    assert_eq!(created(&decide_at(&p, &[], now, Some(4))), None, "N-1");
    let d = decide_at(&p, &[], now, Some(5));
    assert_eq!(
        created(&d),
        Some((
            name_of("2026-12-06T10:20:00Z"),
            "2026-12-06T10:20:00Z".into()
        ))
    );
    assert_eq!(d.status.last_failures_time, Some(Time(at(now))));
    assert_eq!(d.requeue, Duration::from_secs(30));
    // The window (10 m) after a firing: no check is due, so no second run.
    let fired = with_status(p.clone(), d.status.clone());
    assert_eq!(failures_due(&fired, None, at("2026-12-06T10:25:00Z")), None);
    assert!(failures_due(&fired, None, at("2026-12-06T10:30:41Z")).is_some());
    // Checks are every checkEverySeconds.
    let since = failures_due(&p, None, at(now)).unwrap();
    assert_eq!(since, at("2026-12-06T10:10:40Z"));
    assert_eq!(
        failures_due(&p, Some(at("2026-12-06T10:20:20Z")), at(now)),
        None
    );
    assert!(failures_due(&p, Some(at("2026-12-06T10:20:10Z")), at(now)).is_some());
}

#[test]
fn history_keeps_the_newest_runs_of_each_outcome_and_never_an_active_one() {
    let p = with_status(
        policy("  successfulRunsHistoryLimit: 2\n  failedRunsHistoryLimit: 1\n"),
        scheduled_at("2026-12-06T11:30:00Z"),
    );
    let ok = |t: &str, done: &str| run(t, Some(Phase::Succeeded), Some(done));
    let runs = [
        ok("2026-12-06T10:15:00Z", "2026-12-06T10:16:00Z"),
        ok("2026-12-06T10:30:00Z", "2026-12-06T10:31:00Z"),
        run(
            "2026-12-06T10:45:00Z",
            Some(Phase::Failed),
            Some("2026-12-06T10:46:00Z"),
        ),
        run(
            "2026-12-06T11:00:00Z",
            Some(Phase::PartiallySucceeded),
            Some("2026-12-06T11:01:00Z"),
        ),
        ok("2026-12-06T11:15:00Z", "2026-12-06T11:16:00Z"),
        run("2026-12-06T11:30:00Z", Some(Phase::Running), None),
    ];
    let d = decide_at(&p, &runs, "2026-12-06T11:31:00Z", None);
    let mut deleted = d.delete.clone();
    deleted.sort();
    assert_eq!(deleted, vec![runs[0].name.clone(), runs[2].name.clone()]);
    assert_eq!(
        d.status.last_successful_time,
        Some(Time(at("2026-12-06T11:16:00Z")))
    );
    // Counted once: 5 finished runs of 10 retried each.
    assert_eq!(d.status.jobs_retried, 50);
    let again = decide_at(
        &with_status(p, d.status.clone()),
        &runs,
        "2026-12-06T11:32:00Z",
        None,
    );
    assert_eq!(again.status.jobs_retried, 50);
}

#[test]
fn a_clock_that_goes_backwards_creates_nothing_and_does_not_panic() {
    let p = with_status(policy(""), scheduled_at("2026-12-06T11:15:00Z"));
    let runs = [run(
        "2026-12-06T11:15:00Z",
        Some(Phase::Succeeded),
        Some("2026-12-06T11:16:00Z"),
    )];
    for now in [
        "2026-12-06T11:14:00Z",
        "2026-12-06T09:00:00Z",
        "1970-01-01T00:00:00Z",
    ] {
        let d = decide_at(&p, &runs, now, None);
        assert_eq!(created(&d), None, "{now}");
        assert!(d.requeue >= Duration::from_secs(1) && d.requeue <= MAX_REQUEUE);
    }
    // Forward again: the next tick only.
    assert_eq!(
        created(&decide_at(&p, &runs, "2026-12-06T11:30:01Z", None))
            .unwrap()
            .1,
        "2026-12-06T11:30:00Z"
    );
}

#[test]
fn the_guard_trips_on_a_run_of_refailed_jobs_and_a_spec_change_or_resume_clears_it() {
    let p = with_status(
        policy("  guard: {maxRefailedPercent: 50, minSample: 10}\n"),
        scheduled_at("2026-12-06T10:30:00Z"),
    );
    let mut second = run(
        "2026-12-06T10:30:00Z",
        Some(Phase::Succeeded),
        Some("2026-12-06T10:31:00Z"),
    );
    // 5 of 10: not more than 50 %.
    second.refailed = 5;
    assert!(!decide_at(&p, &[second.clone()], "2026-12-06T10:32:00Z", None).tripped);
    // Below minSample: not judged.
    let mut small = second.clone();
    (small.matched, small.refailed) = (9, 9);
    assert!(!decide_at(&p, &[small], "2026-12-06T10:32:00Z", None).tripped);
    second.refailed = 8;
    let d = decide_at(&p, &[second.clone()], "2026-12-06T10:32:00Z", None);
    assert!(d.tripped);
    let trip = d.status.guard.clone().unwrap();
    assert_eq!((trip.refailed_percent, trip.generation), (80, 1));
    assert_eq!(d.status.suspend.as_deref(), Some("guard"));
    let suspended = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == SUSPENDED)
        .unwrap();
    assert_eq!(
        (suspended.status.as_str(), suspended.reason.as_str()),
        ("True", "RefailRateHigh")
    );
    // Held: the next ticks create nothing, and the run is not judged again.
    let held = with_status(p.clone(), d.status.clone());
    let d2 = decide_at(&held, &[second.clone()], "2026-12-06T11:15:01Z", None);
    assert_eq!((created(&d2), d2.tripped), (None, false));
    assert!(d2.status.guard.is_some());
    // A spec change (new generation) clears it.
    let mut changed = held.clone();
    changed.metadata.generation = Some(2);
    let d3 = decide_at(&changed, &[second.clone()], "2026-12-06T11:15:01Z", None);
    assert!(d3.status.guard.is_none() && d3.create.is_some());
    // So does a resume stamped after the trip, or any new stamp (a clock behind ours); the
    // stamp the policy had when it tripped does not.
    let mut stamped = held.clone();
    let mut tripped_status = stamped.status.clone().unwrap();
    tripped_status.guard.as_mut().unwrap().resume_at = Some("2026-12-06T10:20:00Z".into());
    stamped.status = Some(tripped_status);
    for (stamp, clears) in [
        ("2026-12-06T10:40:00Z", true),
        ("2026-12-06T10:25:00Z", true),
        ("2026-12-06T10:20:00Z", false),
    ] {
        let mut resumed = stamped.clone();
        resumed.metadata.annotations = Some(
            [(
                crate::crd::policy::RESUME_AT_ANNOTATION.to_string(),
                stamp.to_string(),
            )]
            .into(),
        );
        let d4 = decide_at(&resumed, &[second.clone()], "2026-12-06T11:15:01Z", None);
        assert_eq!(d4.status.guard.is_none(), clears, "{stamp}");
    }
}

#[test]
fn suspend_creates_nothing_but_still_prunes() {
    let mut p = with_status(
        policy("  successfulRunsHistoryLimit: 0\n"),
        scheduled_at("2026-12-06T10:15:00Z"),
    );
    p.spec.suspend = true;
    let runs = [run(
        "2026-12-06T10:15:00Z",
        Some(Phase::Succeeded),
        Some("2026-12-06T10:16:00Z"),
    )];
    let d = decide_at(&p, &runs, "2026-12-06T10:30:05Z", None);
    assert_eq!(created(&d), None);
    assert_eq!(d.delete, vec![runs[0].name.clone()]);
    assert_eq!(d.status.suspend.as_deref(), Some("true"));
}

/// Test-only edits of the fixture's schedule.
trait Tap {
    fn tap_schedule(self, s: &str) -> Self;
    fn tap_no_schedule(self) -> Self;
}

impl Tap for JobRetryPolicy {
    fn tap_schedule(mut self, s: &str) -> Self {
        self.spec.schedule = Some(s.into());
        self
    }
    fn tap_no_schedule(mut self) -> Self {
        self.spec.schedule = None;
        self
    }
}
