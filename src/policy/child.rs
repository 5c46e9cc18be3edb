//! A policy's runs (pure): the JobRetry a tick creates from the template, and what the policy
//! reads back of its runs. The run's name makes a tick unique: the API server refuses a second
//! object of that name, so a crash or a second replica never creates a tick twice.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{Resource, ResourceExt};

use crate::crd::{
    JobRetry, JobRetrySpec, Phase, REQUESTER_ANNOTATION,
    policy::{CAUSE_ANNOTATION, JobRetryPolicy, POLICY_LABEL, RunCause},
};

/// The annotation on a run that names its tick (RFC 3339), so the policy reads it back exactly.
pub const TICK_ANNOTATION: &str = "jobretry.io/tick";

/// The name of the run of the tick at `tick`: `<policy>-<minutes since the epoch>`, so a
/// scheduled tick and an onFailures firing in the same minute are one run.
pub fn scheduled_name(policy: &str, tick: Timestamp) -> String {
    format!("{policy}-{}", tick.as_second().div_euclid(60))
}

/// The name of a run started by hand (`kubectl jobretry trigger`): `<policy>-manual-<unix seconds>`.
pub fn manual_name(policy: &str, at: Timestamp) -> String {
    format!("{policy}-manual-{}", at.as_second())
}

/// The JobRetry named `name` for the tick at `tick`: the template's spec with the run key
/// `<namespace>/<policy>/<tick in minutes>`, the template's labels and annotations plus the
/// policy label, the tick and the cause, owned by the policy (deleting the policy deletes its runs).
pub fn run(policy: &JobRetryPolicy, name: &str, tick: Timestamp, cause: RunCause) -> JobRetry {
    let ns = policy.namespace().unwrap_or_default();
    let template = &policy.spec.job_retry_template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels;
    labels.insert(POLICY_LABEL.to_string(), policy.name_any());
    let mut annotations = meta.annotations;
    // Who asked: the policy's recorded requester, never one the template writes. A manual
    // run is asked for by whoever triggers it: admission records them.
    annotations.remove(REQUESTER_ANNOTATION);
    if let Some(who) = policy.requester().filter(|_| cause != RunCause::Manual) {
        annotations.insert(REQUESTER_ANNOTATION.to_string(), who.to_string());
    }
    annotations.insert(TICK_ANNOTATION.to_string(), tick.to_string());
    annotations.insert(
        CAUSE_ANNOTATION.to_string(),
        <&str>::from(cause).to_string(),
    );
    let t = &template.spec;
    let spec = JobRetrySpec {
        queue: t.queue.clone(),
        connection: t.connection.clone(),
        state: t.state,
        job_ids: None,
        selector: Some(t.selector.clone()),
        reset_attempts_made: t.reset_attempts_made,
        reset_attempts_started: t.reset_attempts_started,
        dry_run: t.dry_run,
        rate_limit: t.rate_limit.clone(),
        reason: t.reason.clone(),
        audit: t.audit.clone(),
        suspend: false,
        run_key: Some(format!(
            "{ns}/{}/{}",
            policy.name_any(),
            name_suffix(name, &policy.name_any())
        )),
    };
    let mut run = JobRetry::new(name, spec);
    run.metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: owner(policy).map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    run
}

/// The tick part of a run's name: the minutes of a scheduled tick, `manual-<seconds>` of a
/// manual one.
fn name_suffix<'a>(name: &'a str, policy: &str) -> &'a str {
    name.strip_prefix(policy)
        .and_then(|s| s.strip_prefix('-'))
        .unwrap_or(name)
}

/// The owner reference that ties a run to its policy (controller: true, so the garbage
/// collector deletes runs with their policy, waiting for none).
fn owner(policy: &JobRetryPolicy) -> Option<OwnerReference> {
    let mut owner = policy.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(false);
    Some(owner)
}

/// Whether `run` is a run of `policy`: it names the policy as its controlling owner (a label
/// alone could be set by anyone who can create JobRetries).
pub fn owned_by(run: &JobRetry, policy: &JobRetryPolicy) -> bool {
    let uid = policy.uid();
    run.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && Some(&o.uid) == uid.as_ref()
            && o.kind == JobRetryPolicy::kind(&())
    })
}

/// The tick a run was created for, from its annotation, else its creation time.
pub fn tick_of(run: &JobRetry) -> Option<Timestamp> {
    run.annotations()
        .get(TICK_ANNOTATION)
        .and_then(|t| t.parse().ok())
        .or_else(|| run.creation_timestamp().map(|t| t.0))
}

/// A run's phase, if it has one.
pub fn phase_of(run: &JobRetry) -> Option<Phase> {
    Phase::of(run.status.as_ref())
}

#[cfg(test)]
mod tests;
