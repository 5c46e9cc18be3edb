//! `kubectl jobretry`, the kubectl plugin: its flags and the JobRetry they describe (pure,
//! with `now` passed in), and the text it prints ([`render`]). The binary
//! (`src/bin/kubectl-jobretry.rs`) only talks to the API server and draws progress.
//!
//! Guarantees: `preview` and `run` given the same selection flags describe the same
//! selector, so a preview shows what the run then retries; a flag the API would refuse is
//! refused here first with a message naming the flag.

mod error;
pub mod render;

pub use error::{PluginError, api_error, status_command};

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SpanRelativeTo, Timestamp},
};

use kube::ResourceExt;

use crate::crd::{
    Connection, ConnectionMode, JobRetry, JobRetrySpec, QueueRef, RateLimit, SecretKeyRef,
    Selector, SourceState,
    policy::{JobRetryPolicy, RESUME_AT_ANNOTATION},
};

/// `kubectl jobretry`: preview, start and follow JobRetry runs.
#[derive(Parser, Debug)]
#[command(name = "kubectl-jobretry", bin_name = "kubectl jobretry", version)]
pub struct Cli {
    /// Namespace of the JobRetry and its connection Secret (default: the kubeconfig's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path of the kubeconfig (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a dry-run selector JobRetry, wait for it, and print what the real run would
    /// retry: matched count, oldest and newest, the most frequent names and reasons.
    Preview(PreviewArgs),
    /// Create the selector JobRetry that retries the jobs (or print it with --output).
    Run(RunArgs),
    /// Print a JobRetry's phase, counts and per-job rows; with --policy, a policy's state and
    /// its runs.
    Status(StatusArgs),
    /// Create a run of a JobRetryPolicy now, from its template (like `kubectl create job
    /// --from=cronjob/...`): `<policy>-manual-<unix seconds>`, a run of the policy like any other.
    Trigger(PolicyArgs),
    /// Let a JobRetryPolicy that its loop guard suspended run again (sets the annotation
    /// jobretry.io/resume-at to now; the operator clears a trip older than it).
    Resume(PolicyArgs),
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Name of the JobRetryPolicy.
    pub name: String,
}

/// Which jobs, of which queue: the selector flags `preview` and `run` share.
#[derive(Args, Debug, Clone)]
pub struct SelectArgs {
    /// Name of the JobRetry to create (default: <queue>-preview-<time> or <queue>-retry-<time>).
    #[arg(value_name = "NAME")]
    pub object: Option<String>,
    /// The BullMQ queue name.
    #[arg(long)]
    pub queue: String,
    /// The BullMQ key prefix.
    #[arg(long, default_value = "bull")]
    pub prefix: String,
    /// The Secret holding the Redis URL (default: <queue>-redis).
    #[arg(long)]
    pub secret: Option<String>,
    /// The key of the Secret holding the Redis URL.
    #[arg(long, default_value = "url")]
    pub secret_key: String,
    /// Redis deployment kind.
    #[arg(long, default_value = "standalone", value_parser = ["standalone", "cluster", "sentinel"])]
    pub mode: String,
    /// The Sentinel master group name (with --mode sentinel).
    #[arg(long)]
    pub sentinel_master: Option<String>,
    /// The BullMQ state to retry jobs from.
    #[arg(long, default_value = "failed", value_parser = ["failed", "completed"])]
    pub state: String,
    /// Only jobs whose name matches this glob (`*`, `?`); repeat for several.
    #[arg(long = "name", value_name = "GLOB")]
    pub names: Vec<String>,
    /// Only jobs whose failedReason contains this text (state failed only).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only jobs that finished since then: a duration ago (30m, 2h, 1d) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only jobs that finished before then: a duration ago or an RFC 3339 time.
    #[arg(long, visible_alias = "until")]
    pub before: Option<String>,
    /// At most this many jobs, oldest first (the API's default is 10000).
    #[arg(long)]
    pub max_jobs: Option<u64>,
    /// The BullMQ version the queue's workers run, when the queue does not record it.
    #[arg(long)]
    pub bullmq_version: Option<String>,
}

#[derive(Args, Debug)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// How long to wait for the preview (e.g. 30s, 5m).
    #[arg(long, default_value = "5m")]
    pub timeout: String,
    /// Keep the dry-run JobRetry afterwards (default: delete it once printed).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Reset the jobs' attempts-made counters (BullMQ's resetAttemptsMade).
    #[arg(long)]
    pub reset_attempts_made: bool,
    /// Reset the jobs' attempts-started counters (BullMQ's resetAttemptsStarted).
    #[arg(long)]
    pub reset_attempts_started: bool,
    /// Retry at most this many jobs per second (0: unlimited).
    #[arg(long, value_name = "JOBS_PER_SECOND")]
    pub rate: Option<u32>,
    /// Identity of the run for exactly-once retries (default: <namespace>/<name>).
    #[arg(long)]
    pub run_key: Option<String>,
    /// Why the run is asked for (spec.reason, at most 256 characters): in Events, `get -o wide` and audit lines.
    #[arg(long, value_name = "TEXT")]
    pub why: Option<String>,
    /// Append an audit line to each retried job's BullMQ log (spec.audit.jobLog).
    #[arg(long)]
    pub audit_log: bool,
    /// Follow the run with a progress display until it ends, then print its counts.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 10m, 1h).
    #[arg(long, default_value = "30m")]
    pub timeout: String,
    /// Print the manifest instead of creating it (for GitOps).
    #[arg(short = 'o', long, value_parser = ["yaml", "json"])]
    pub output: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Name of the JobRetry (of the JobRetryPolicy with --policy).
    pub name: String,
    /// NAME is a JobRetryPolicy: print its state and list its runs.
    #[arg(long)]
    pub policy: bool,
}

/// The run `kubectl jobretry trigger` creates of `policy` at `now`.
pub fn triggered(policy: &JobRetryPolicy, now: Timestamp) -> JobRetry {
    let name = crate::policy::child::manual_name(&policy.name_any(), now);
    crate::policy::child::run(policy, &name, now, crate::crd::policy::RunCause::Manual)
}

/// The merge patch `kubectl jobretry resume` sends: the resume annotation set to `now`.
pub fn resume_patch(now: Timestamp) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {RESUME_AT_ANNOTATION: now.to_string()}}})
}

/// A duration written as a user would: `90s`, `30m`, `2h`, `1d`, `1h30m` (a day is 24 hours).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, PluginError> {
    let bad = |why: String| PluginError::InvalidFlag(format!("{text:?} is not a duration: {why}"));
    let span: k8s_openapi::jiff::Span = text.trim().parse().map_err(|e| bad(format!("{e}")))?;
    let d = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|e| bad(format!("{e}")))?;
    std::time::Duration::try_from(d).map_err(|_| bad("it is negative".into()))
}

/// A point in time given as an RFC 3339 time or as a duration before `now`.
pub fn parse_time(flag: &str, text: &str, now: Timestamp) -> Result<Timestamp, PluginError> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    let ago = parse_duration(text).map_err(|_| {
        PluginError::InvalidFlag(format!(
            "--{flag} {text:?}: give a duration ago (30m, 2h, 1d) or an RFC 3339 time (2026-11-28T10:00:00Z)"
        ))
    })?;
    let ago = k8s_openapi::jiff::SignedDuration::try_from(ago)
        .map_err(|e| PluginError::InvalidFlag(format!("--{flag} {text:?}: {e}")))?;
    now.checked_sub(ago)
        .map_err(|e| PluginError::InvalidFlag(format!("--{flag} {text:?}: {e}")))
}

/// A default object name: `<queue>-<what>-<UTC time>`, made a valid Kubernetes name
/// (lower case, `[a-z0-9-]`, at most 63 characters so it also fits a label value).
pub fn default_name(queue: &str, what: &str, now: Timestamp) -> String {
    let stamp = now.strftime("%Y%m%d-%H%M%S").to_string();
    let suffix = format!("-{what}-{stamp}");
    let mut base: String = queue
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base.truncate(63 - suffix.len());
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "jobretry" } else { base };
    format!("{base}{suffix}")
}

/// The selector JobRetry the flags describe: a dry run for a preview (`run` is None), else
/// the real run with the options only it has; in `namespace` if given.
pub fn jobretry(
    select: &SelectArgs,
    run: Option<&RunArgs>,
    namespace: Option<&str>,
    now: Timestamp,
) -> Result<JobRetry, PluginError> {
    let (after, before) = time_window(select, now)?;
    let state: SourceState = from_flag("state", &select.state)?;
    if select.reason.is_some() && state != SourceState::Failed {
        return Err(PluginError::InvalidFlag(
            "--reason needs --state failed: a completed job can keep a stale failedReason".into(),
        ));
    }
    let mode: ConnectionMode = from_flag("mode", &select.mode)?;
    if (mode == ConnectionMode::Sentinel) != select.sentinel_master.is_some() {
        return Err(PluginError::InvalidFlag(
            "--sentinel-master is needed with --mode sentinel, and only then".into(),
        ));
    }
    let what = if run.is_some() { "retry" } else { "preview" };
    let name = (select.object.clone()).unwrap_or_else(|| default_name(&select.queue, what, now));
    let spec = JobRetrySpec {
        queue: QueueRef {
            name: select.queue.clone(),
            prefix: select.prefix.clone(),
            bullmq_version: select.bullmq_version.clone(),
        },
        connection: connection(select, mode),
        state,
        job_ids: None,
        selector: Some(Selector {
            names: (!select.names.is_empty()).then(|| select.names.clone()),
            failed_reason_contains: select.reason.clone(),
            finished_after: after,
            finished_before: before,
            max_jobs: select.max_jobs.unwrap_or(crate::crd::MAX_JOB_IDS as u64),
        }),
        reset_attempts_made: run.is_some_and(|r| r.reset_attempts_made),
        reset_attempts_started: run.is_some_and(|r| r.reset_attempts_started),
        dry_run: run.is_none(),
        rate_limit: run
            .and_then(|r| r.rate)
            .map(|jobs_per_second| RateLimit { jobs_per_second }),
        suspend: false,
        run_key: run.and_then(|r| r.run_key.clone()),
        reason: run.and_then(|r| r.why.clone()),
        audit: audit_of(run),
    };
    let mut jr = JobRetry::new(&name, spec);
    jr.metadata.namespace = namespace.map(str::to_string);
    jr.metadata.labels = Some(
        [(
            "app.kubernetes.io/created-by".to_string(),
            "kubectl-jobretry".to_string(),
        )]
        .into(),
    );
    Ok(jr)
}

/// `spec.audit` as `--audit-log` asks.
fn audit_of(run: Option<&RunArgs>) -> Option<crate::crd::Audit> {
    let on = run.is_some_and(|r| r.audit_log);
    on.then_some(crate::crd::Audit { job_log: true })
}

/// The connection the flags name: the Secret (`<queue>-redis` unless given) and the mode.
fn connection(select: &SelectArgs, mode: ConnectionMode) -> Connection {
    Connection {
        secret_ref: SecretKeyRef {
            name: (select.secret.clone()).unwrap_or_else(|| format!("{}-redis", select.queue)),
            key: select.secret_key.clone(),
        },
        mode,
        sentinel_master_name: select.sentinel_master.clone(),
    }
}

/// The `--since` and `--before` bounds, the first before the second.
fn time_window(
    select: &SelectArgs,
    now: Timestamp,
) -> Result<(Option<Time>, Option<Time>), PluginError> {
    let time = |flag: &str, v: &Option<String>| -> Result<Option<Time>, PluginError> {
        v.as_deref()
            .map(|t| parse_time(flag, t, now).map(Time))
            .transpose()
    };
    let (after, before) = (
        time("since", &select.since)?,
        time("before", &select.before)?,
    );
    if let (Some(a), Some(b)) = (&after, &before)
        && a.0 >= b.0
    {
        return Err(PluginError::InvalidFlag(format!(
            "--since ({}) must be before --before ({})",
            a.0, b.0
        )));
    }
    Ok((after, before))
}

/// An enum of the API from its flag value (the same words as in a manifest).
fn from_flag<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> Result<T, PluginError> {
    serde_json::from_value(serde_json::Value::String(value.to_string()))
        .map_err(|e| PluginError::InvalidFlag(format!("--{flag} {value:?}: {e}")))
}

/// The manifest as a user would commit it: apiVersion, kind, metadata and spec, no status.
pub fn manifest(jr: &JobRetry, format: &str) -> Result<String, PluginError> {
    let out = |e: &dyn std::fmt::Display| PluginError::Output(e.to_string());
    match format {
        "json" => serde_json::to_string_pretty(jr)
            .map(|s| s + "\n")
            .map_err(|e| out(&e)),
        _ => serde_norway::to_string(jr).map_err(|e| out(&e)),
    }
}

#[cfg(test)]
mod tests;
