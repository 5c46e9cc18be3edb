//! The policy's schema rules, checked without a cluster (kube's client-side CEL evaluation)
//! on the YAML a user would apply.

use kube::CustomResourceExt;
use serde_json::Value;

use super::*;

/// The contract's example (api.md), as a user applies it.
const VALID: &str = "
jobRetryTemplate:
  metadata: {labels: {team: payments}}
  spec:
    queue: {name: payments}
    connection: {secretRef: {name: payments-redis}}
    state: failed
    selector: {names: ['charge-*'], failedReasonContains: ECONNRESET, maxJobs: 5000}
    resetAttemptsMade: true
    rateLimit: {jobsPerSecond: 50}
schedule: '*/15 * * * *'
timeZone: Europe/Berlin
startingDeadlineSeconds: 300
onFailures: {atLeast: 500, within: 10m, checkEverySeconds: 30}
concurrencyPolicy: Forbid
maxRetriesPerJob: 3
guard: {maxRefailedPercent: 50, minSample: 100}
successfulRunsHistoryLimit: 3
failedRunsHistoryLimit: 1
suspend: false
";

fn spec(yaml: &str) -> Value {
    serde_norway::from_str(yaml).unwrap()
}

/// The contract's example with `line` replacing the line that starts with the same key.
fn with(line: &str) -> Value {
    let key = line.split(':').next().unwrap();
    let yaml: String = VALID
        .lines()
        .map(|l| match l.starts_with(&format!("{key}:")) {
            true => format!("{line}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    spec(&yaml)
}

fn refused(v: &Value, message: &str) {
    let err = JobRetryPolicySpec::validate_cel(v, None).expect_err("refused");
    assert!(format!("{err:?}").contains(message), "{err:?}");
}

#[test]
fn the_contracts_example_is_valid_and_defaults_apply() {
    JobRetryPolicySpec::validate_cel(&spec(VALID), None).unwrap();
    let minimal = "jobRetryTemplate: {spec: {queue: {name: q}, connection: {secretRef: {name: s}}, selector: {}}}\nschedule: '@hourly'\n";
    JobRetryPolicySpec::validate_cel(&spec(minimal), None).unwrap();
    let parsed: JobRetryPolicySpec = serde_norway::from_str(minimal).unwrap();
    assert_eq!(parsed.concurrency_policy, ConcurrencyPolicy::Forbid);
    assert_eq!(parsed.max_retries_per_job, 3);
    assert_eq!(
        (
            parsed.successful_runs_history_limit,
            parsed.failed_runs_history_limit
        ),
        (3, 1)
    );
    assert!(parsed.guard.is_none() && !parsed.suspend);
}

#[test]
fn a_policy_needs_a_schedule_or_a_failure_trigger() {
    let neither = "jobRetryTemplate: {spec: {queue: {name: q}, connection: {secretRef: {name: s}}, selector: {}}}\n";
    refused(
        &spec(neither),
        "needs spec.schedule, spec.onFailures or both",
    );
}

#[test]
fn a_wrong_schedule_is_refused_at_apply_time() {
    for bad in [
        "'* * * *'",
        "'60 * * * *'",
        "'* 24 * * *'",
        "'* * 0 * *'",
        "'* * * 13 *'",
        "'* * * * 8'",
        "'*/0 * * * *'",
        "'@every 5m'",
        "'* * * * * *'",
    ] {
        refused(
            &with(&format!("schedule: {bad}")),
            "spec.schedule is not a five-field cron",
        );
    }
    for good in [
        "'0 3 * * mon-fri'",
        "'*/5 9-17 1,15 jan-jun 0,7'",
        "'@daily'",
        "'30 2 * * SUN'",
    ] {
        JobRetryPolicySpec::validate_cel(&with(&format!("schedule: {good}")), None)
            .unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }
}

#[test]
fn a_time_zone_must_be_an_iana_name() {
    refused(
        &with("timeZone: Mars/Olympus_Mons"),
        "spec.timeZone is not an IANA time zone",
    );
    refused(
        &with("timeZone: CEST"),
        "spec.timeZone is not an IANA time zone",
    );
    for good in ["UTC", "America/New_York", "Asia/Kolkata"] {
        JobRetryPolicySpec::validate_cel(&with(&format!("timeZone: {good}")), None)
            .unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }
}

#[test]
fn the_failure_window_is_a_bounded_duration() {
    for bad in ["30s", "169h", "ten minutes"] {
        refused(
            &with(&format!("onFailures: {{atLeast: 5, within: '{bad}'}}")),
            "onFailures.within must be a duration from 1m to 168h",
        );
    }
    JobRetryPolicySpec::validate_cel(&with("onFailures: {atLeast: 5, within: 1h30m}"), None)
        .unwrap();
}

#[test]
fn names_and_columns_match_the_contract() {
    let crd = JobRetryPolicy::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("jobretrypolicies.jobretry.io")
    );
    assert_eq!(crd.spec.names.short_names, Some(vec!["jrp".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["bullmq".to_string()]));
    let cols: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        cols,
        ["SCHEDULE", "SUSPEND", "ACTIVE", "LAST RUN", "PARKED", "AGE"]
    );
}
