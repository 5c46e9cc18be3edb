//! The `JobRetryPolicy` API (`jobretry.io/v1alpha1`): recurring and triggered runs. A policy
//! is to a `JobRetry` what a CronJob is to a Job: it creates JobRetry objects from a template,
//! on a schedule and/or when failures pile up, with guards against retry loops.
//!
//! Like the JobRetry types beside it, this file takes nothing from the rest of the crate but
//! the shared spec parts; every rule a schema can express is expressed here.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Audit, Connection, QueueRef, RateLimit, Selector, SourceState};

/// The annotation `kubectl jobretry resume POLICY` sets: a time (RFC 3339); a guard trip older
/// than it is cleared.
pub const RESUME_AT_ANNOTATION: &str = "jobretry.io/resume-at";
/// The label every run of a policy carries: the policy's name.
pub const POLICY_LABEL: &str = "jobretry.io/policy";

/// What created a policy's run (the run's `jobretry.io/cause` annotation, a metric label).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::EnumIter,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[strum(serialize_all = "snake_case")]
pub enum RunCause {
    /// A tick of `spec.schedule` (or the one catch-up run of missed ticks).
    Schedule,
    /// `spec.onFailures`: enough jobs entered the state within the window.
    Failures,
    /// `kubectl jobretry trigger`.
    Manual,
}

/// The reasons of a policy's Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::EnumIter, strum::IntoStaticStr)]
pub enum PolicyEventReason {
    /// A run was created.
    RunCreated,
    /// A tick was not run: a run was active (Forbid), or it was missed past the deadline.
    TickSkipped,
    /// An active run was deleted to start the new one (Replace).
    RunReplaced,
    /// The loop guard suspended the policy.
    GuardTripped,
    /// The trip was cleared: the spec changed, or `kubectl jobretry resume`.
    GuardCleared,
}

/// The annotation on a run that names what created it ([`RunCause`]).
pub const CAUSE_ANNOTATION: &str = "jobretry.io/cause";

/// Creates JobRetry runs from a template on a schedule and/or when failures pile up, with a
/// per-job retry cap and a loop guard.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "jobretry.io",
    version = "v1alpha1",
    kind = "JobRetryPolicy",
    plural = "jobretrypolicies",
    shortname = "jrp",
    category = "bullmq",
    namespaced,
    status = "JobRetryPolicyStatus",
    doc = "Creates JobRetry runs of BullMQ jobs from a template, on a schedule or when failures pile up; parks jobs retried too often and suspends itself when its retries keep failing.",
    printcolumn = r#"{"name":"SCHEDULE","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"SUSPEND","type":"string","jsonPath":".status.suspend"}"#,
    printcolumn = r#"{"name":"ACTIVE","type":"string","jsonPath":".status.active[*].name"}"#,
    printcolumn = r#"{"name":"LAST RUN","type":"date","jsonPath":".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name":"PARKED","type":"integer","jsonPath":".status.jobsParked"}"#,
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    cel,
    validation = Rule::new("has(self.schedule) || has(self.onFailures)").message("a policy needs spec.schedule, spec.onFailures or both")
)]
#[serde(rename_all = "camelCase")]
pub struct JobRetryPolicySpec {
    /// The JobRetry each run is created from.
    pub job_retry_template: RunTemplate,
    /// When to run: a five-field cron expression (minute hour day-of-month month day-of-week, as a Kubernetes CronJob takes it, or a macro such as @hourly) evaluated in `timeZone`. Optional when `onFailures` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(schedule_rule()).message("spec.schedule is not a five-field cron expression (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or jan-dec, day of week 0-7 or sun-sat; *, a-b, */n, lists) nor a macro (@hourly, @daily, @weekly, @monthly, @yearly)"))]
    pub schedule: Option<String>,
    /// The IANA time zone the schedule is read in, e.g. Europe/Berlin; default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(time_zone_rule()).message("spec.timeZone is not an IANA time zone name the operator knows (e.g. UTC, Europe/Berlin, America/New_York)"))]
    pub time_zone: Option<String>,
    /// A tick missed by more than this many seconds (the operator was down, or the policy suspended) is skipped, not run late. Unset: a missed tick is run late, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub starting_deadline_seconds: Option<i64>,
    /// Run when failures pile up: at least `atLeast` jobs entered the template's state within the last `within`; fires at most once per `within`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failures: Option<OnFailures>,
    /// What a tick does while a run of this policy is active: Forbid (default) skips it; Replace stops the active run between batches and starts the new one.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A job that this policy's runs retried this many times is not retried again: its row is Parked and it stays in the source state (default 3; 0 means no cap).
    #[serde(default = "default_max_retries_per_job")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_retries_per_job: u32,
    /// Loop guard: suspend the policy when, in one run, too many of the matched jobs were already retried by an earlier run of this policy. None when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// Succeeded runs to keep (default 3); older ones are deleted.
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_runs_history_limit: u32,
    /// Runs that did not succeed (Failed or PartiallySucceeded) to keep (default 1); older ones are deleted.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_runs_history_limit: u32,
    /// Create no new run while true; active runs go on.
    #[serde(default)]
    pub suspend: bool,
}

fn default_max_retries_per_job() -> u32 {
    3
}

fn default_successful_history() -> u32 {
    3
}

fn default_failed_history() -> u32 {
    1
}

/// The CEL rule on `spec.schedule`: the cron grammar's shape and ranges, checked by the API
/// server (a reversed range still passes and shows as a condition).
fn schedule_rule() -> String {
    format!(
        "self.matches('{}')",
        super::cron::cel_pattern().replace('\\', "\\\\")
    )
}

/// The CEL rule on `spec.timeZone`: one of the IANA names the operator's time zone database
/// holds.
fn time_zone_rule() -> String {
    let names = super::cron::time_zone_names();
    let list = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    format!("self in [{list}]")
}

impl JobRetryPolicy {
    /// Who created the policy, as recorded at admission (the `jobretry.io/requester`
    /// annotation); its scheduled and triggered runs carry it.
    pub fn requester(&self) -> Option<&str> {
        super::recorded_requester(&self.metadata)
    }
}

/// The JobRetry each run is created from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunTemplate {
    /// Labels and annotations for each run (the operator adds jobretry.io/policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// A JobRetry spec with a selector; without jobIds, runKey or suspend (the policy sets the run key to <namespace>/<policy>/<tick>).
    pub spec: RunTemplateSpec,
}

/// Labels and annotations of each run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels each run gets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations each run gets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The spec of each run: a JobRetry spec with a selector and no jobIds, runKey or suspend.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunTemplateSpec {
    /// The BullMQ queue whose jobs are retried.
    pub queue: QueueRef,
    /// How to reach the Redis that holds the queue.
    pub connection: Connection,
    /// The BullMQ state the jobs are retried from: `failed` (default) or `completed`; also the state whose set `onFailures` counts.
    #[serde(default)]
    pub state: SourceState,
    /// The jobs each run retries (required: a policy's runs always select).
    pub selector: Selector,
    /// Reset the job's attempts-made counter, as BullMQ's `resetAttemptsMade` retry option does.
    #[serde(default)]
    pub reset_attempts_made: bool,
    /// Reset the job's attempts-started counter, as BullMQ's `resetAttemptsStarted` retry option does.
    #[serde(default)]
    pub reset_attempts_started: bool,
    /// Each run plans and reports what would be retried, changing nothing in Redis.
    #[serde(default)]
    pub dry_run: bool,
    /// Pace of each run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Why the policy's runs happen (at most 256 characters): in each run's spec, Events and audit lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
    /// What each run records about itself where BullMQ users look (`audit.jobLog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
}

/// The failure-count trigger.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OnFailures {
    /// How many jobs must have entered the template's state within `within`.
    #[schemars(range(min = 1, max = 100000000))]
    pub at_least: u64,
    /// The window, as a duration such as 10m or 1h30m (1m to 168h); the policy fires at most once per window.
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(h|m|s|ms))+$') && duration(self) >= duration('1m') && duration(self) <= duration('168h')").message("onFailures.within must be a duration from 1m to 168h, e.g. 10m or 1h30m"))]
    pub within: String,
    /// How often the count is read (one bounded ZCOUNT per check); default 30.
    #[serde(default = "default_check_every")]
    #[schemars(range(min = 5, max = 3600))]
    pub check_every_seconds: u32,
}

fn default_check_every() -> u32 {
    30
}

/// What a tick does while a run is active.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum ConcurrencyPolicy {
    /// Skip the tick.
    #[default]
    Forbid,
    /// Stop the active run between batches and start the new one.
    Replace,
}

/// The loop guard.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Guard {
    /// Suspend the policy when more than this percentage of a run's matched jobs were already retried by an earlier run of this policy.
    #[schemars(range(min = 0, max = 100))]
    pub max_refailed_percent: u32,
    /// Only judge runs that matched at least this many jobs (parked jobs not counted); default 100.
    #[serde(default = "default_min_sample")]
    #[schemars(range(min = 1, max = 100000000))]
    pub min_sample: u64,
}

fn default_min_sample() -> u64 {
    100
}

/// Observed state of a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {}))]
pub struct JobRetryPolicyStatus {
    /// The spec generation this status describes; 0 until the operator has seen the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 0))]
    pub observed_generation: Option<i64>,
    /// The tick of the newest run created (for a run on failures, the minute it fired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When the newest run that succeeded completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// When `onFailures` last fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failures_time: Option<Time>,
    /// Runs of this policy still running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub active: Vec<RunRef>,
    /// true, false, or guard while the loop guard holds the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<String>,
    /// Runs this policy created.
    #[serde(default)]
    pub runs_created: u64,
    /// Jobs its finished runs retried.
    #[serde(default)]
    pub jobs_retried: u64,
    /// Jobs its finished runs parked (reached maxRetriesPerJob).
    #[serde(default)]
    pub jobs_parked: u64,
    /// Finished runs already added to the counters (the newest ones, by name); older runs are in the counters once and for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub counted: Vec<String>,
    /// The loop guard's trip, while it holds the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardTrip>,
    /// Ready, Reconciling, Stalled and Suspended (reason RefailRateHigh while the guard holds the policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A run of the policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunRef {
    /// The JobRetry's name.
    pub name: String,
}

/// The loop guard's trip.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GuardTrip {
    /// When the guard suspended the policy.
    pub tripped_at: Time,
    /// The spec generation it tripped at; a changed spec clears the trip.
    pub generation: i64,
    /// The share of the run's matched jobs that earlier runs had retried.
    pub refailed_percent: u32,
    /// The run that tripped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The resume annotation's value when it tripped: a new value clears the trip even when
    /// the clock of whoever set it runs behind the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<String>,
}

/// The JobRetryPolicy CRD as the YAML committed under `crds/` and in the Helm chart.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    use kube::CustomResourceExt;
    let body = serde_norway::to_string(&JobRetryPolicy::crd())?;
    Ok(format!(
        "# Generated by `cargo run --bin crdgen -- --policy`; do not edit by hand.\n{body}"
    ))
}

#[cfg(test)]
mod tests;
