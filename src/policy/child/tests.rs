use super::*;

const POLICY: &str = "
apiVersion: jobretry.io/v1alpha1
kind: JobRetryPolicy
metadata: {name: payments-transient, namespace: payments, uid: 5c1b7a3e-0000-4000-8000-000000000001}
spec:
  jobRetryTemplate:
    metadata: {labels: {team: payments}, annotations: {note: x}}
    spec:
      queue: {name: payments}
      connection: {secretRef: {name: payments-redis}}
      selector: {names: ['charge-*'], maxJobs: 5000}
      resetAttemptsMade: true
      rateLimit: {jobsPerSecond: 50}
  schedule: '*/15 * * * *'
";

fn policy() -> JobRetryPolicy {
    serde_norway::from_str(POLICY).unwrap()
}

#[test]
fn a_tick_names_its_run_by_the_minute() {
    let tick: Timestamp = "2026-12-06T12:15:00Z".parse().unwrap();
    let later_same_minute: Timestamp = "2026-12-06T12:15:59Z".parse().unwrap();
    let name = scheduled_name("payments-transient", tick);
    assert_eq!(
        name,
        format!("payments-transient-{}", tick.as_second() / 60)
    );
    assert_eq!(
        name,
        scheduled_name("payments-transient", later_same_minute)
    );
    assert_eq!(
        manual_name("p", "2026-12-06T12:15:07Z".parse().unwrap()),
        "p-manual-1796559307"
    );
}

#[test]
fn a_run_is_the_template_owned_by_the_policy() {
    let p = policy();
    let tick: Timestamp = "2026-12-06T12:15:00Z".parse().unwrap();
    let name = scheduled_name("payments-transient", tick);
    let run = run(&p, &name, tick, RunCause::Schedule);
    assert_eq!(run.metadata.namespace.as_deref(), Some("payments"));
    assert_eq!(
        run.spec.run_key.as_deref(),
        Some(format!("payments/payments-transient/{}", tick.as_second() / 60).as_str())
    );
    assert_eq!(run.spec.selector.as_ref().unwrap().max_jobs, 5000);
    assert!(run.spec.reset_attempts_made && !run.spec.suspend && run.spec.job_ids.is_none());
    let labels = run.metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get("team").map(String::as_str), Some("payments"));
    assert_eq!(
        labels.get(POLICY_LABEL).map(String::as_str),
        Some("payments-transient")
    );
    assert_eq!(tick_of(&run), Some(tick));
    assert!(owned_by(&run, &p));
    let mut other = policy();
    other.metadata.uid = Some("another".into());
    assert!(
        !owned_by(&run, &other),
        "a policy of the same name but another uid owns nothing"
    );
}

#[test]
fn a_manual_run_keys_by_its_seconds() {
    let at: Timestamp = "2026-12-06T12:15:07Z".parse().unwrap();
    let name = manual_name("payments-transient", at);
    let run = run(&policy(), &name, at, RunCause::Manual);
    assert_eq!(
        run.spec.run_key.as_deref(),
        Some("payments/payments-transient/manual-1796559307")
    );
}
