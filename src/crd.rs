//! The `JobRetry` API (`jobretry.io/v1alpha1`): spec and status types, the CEL and OpenAPI rules
//! that make the API server refuse bad manifests, printer columns, and the constants for
//! phases, results, condition types and reasons.
//!
//! Takes nothing from the rest of the crate; `crdgen`, the controller, the tests and the Helm
//! chart all lean on it. Guarantees: every rule of the API contract that a schema can express
//! is expressed here, so `kubectl apply` refuses an invalid manifest with a readable message.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Upper bound of `spec.jobIds`, and the default of `spec.selector.maxJobs`.
pub const MAX_JOB_IDS: usize = 10_000;
/// Upper bound of `spec.selector.maxJobs`.
pub const MAX_SELECTED_JOBS: u64 = 100_000_000;
/// Upper bound of the bytes of all `spec.jobIds` together (400 KiB): with the status's own
/// bound, the whole object stays well below etcd's 1.5 MiB request limit.
pub const MAX_JOB_IDS_BYTES: usize = 400 * 1024;

/// Spec fields that may change after creation: only `suspend`. Every other field is listed here and covered by the immutability rule built by [`immutability_rule`].
const IMMUTABLE_FIELDS: &[&str] = &[
    "queue",
    "connection",
    "state",
    "jobIds",
    "selector",
    "resetAttemptsMade",
    "resetAttemptsStarted",
    "dryRun",
    "rateLimit",
    "runKey",
    "reason",
    "audit",
];

/// The annotation that records who asked for a run, as the API server authenticated them:
/// set at admission by the chart's MutatingAdmissionPolicy (where the cluster has that API),
/// otherwise checked against the requesting user by its ValidatingAdmissionPolicy; never
/// changed after creation. A policy's runs carry their policy's.
pub const REQUESTER_ANNOTATION: &str = "jobretry.io/requester";
/// The requester recorded on an object ([`REQUESTER_ANNOTATION`]); `None` if none (or empty).
pub fn recorded_requester(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&str> {
    let notes = meta.annotations.as_ref()?;
    notes
        .get(REQUESTER_ANNOTATION)
        .map(String::as_str)
        .filter(|r| !r.is_empty())
}

/// Upper bound of `spec.reason`, in characters.
pub const MAX_REASON_CHARS: usize = 256;

/// Builds the CEL transition rule that keeps every spec field but `suspend` unchanged: a field may be neither added, removed nor changed.
pub fn immutability_rule() -> String {
    IMMUTABLE_FIELDS
        .iter()
        .map(|f| format!("(has(self.{f}) ? (has(oldSelf.{f}) && self.{f} == oldSelf.{f}) : !has(oldSelf.{f}))"))
        .collect::<Vec<_>>()
        .join(" && ")
}

/// A request to retry finished BullMQ jobs of one queue, once.
///
/// Like a Kubernetes Job, a JobRetry is a one-shot request: its spec cannot change after creation (except `suspend`); to run again, create a new object.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "jobretry.io",
    version = "v1alpha1",
    kind = "JobRetry",
    plural = "jobretries",
    shortname = "jr",
    category = "bullmq",
    namespaced,
    status = "JobRetryStatus",
    doc = "Retries finished BullMQ jobs of one queue in Redis, exactly as BullMQ's Job.retry() would, once per run key.",
    printcolumn = r#"{"name":"QUEUE","type":"string","jsonPath":".spec.queue.name"}"#,
    printcolumn = r#"{"name":"STATE","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"PHASE","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"MATCHED","type":"integer","jsonPath":".status.matched"}"#,
    printcolumn = r#"{"name":"RETRIED","type":"integer","jsonPath":".status.retried"}"#,
    printcolumn = r#"{"name":"SKIPPED","type":"integer","jsonPath":".status.skipped"}"#,
    printcolumn = r#"{"name":"ERRORS","type":"integer","jsonPath":".status.errors"}"#,
    printcolumn = r#"{"name":"SCANNED","type":"integer","jsonPath":".status.selection.scanned","priority":1}"#,
    printcolumn = r#"{"name":"REMAINING","type":"integer","jsonPath":".status.selection.remaining","priority":1}"#,
    printcolumn = r#"{"name":"REQUESTER","type":"string","jsonPath":".status.requester","priority":1}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".spec.reason","priority":1}"#,
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    cel,
    validation = Rule::new("has(self.jobIds) != has(self.selector)").message("exactly one of spec.jobIds and spec.selector must be set"),
    validation = Rule::new("!has(self.jobIds) || self.jobIds.map(id, size(bytes(id))).sum() <= 409600").message("spec.jobIds hold more than 400 KiB of ids, more than the object can store (etcd limits it to 1.5 MiB with its status); split them into several JobRetries, or use a selector"),
    validation = Rule::new("!has(self.selector) || !has(self.selector.failedReasonContains) || !has(self.state) || self.state == 'failed'").message("selector.failedReasonContains needs state failed: a completed job can keep a stale failedReason from an earlier attempt"),
    validation = Rule::new(immutability_rule()).message("spec is immutable after creation except spec.suspend; to retry again, create a new JobRetry")
)]
#[serde(rename_all = "camelCase")]
pub struct JobRetrySpec {
    /// The BullMQ queue whose jobs are retried.
    pub queue: QueueRef,
    /// How to reach the Redis that holds the queue.
    pub connection: Connection,
    /// The BullMQ state the jobs are retried from: `failed` (default) or `completed`.
    #[serde(default)]
    pub state: SourceState,
    /// Explicit job ids to retry, in order (at most 10,000 and 400 KiB in all; an id listed twice is retried once; beyond, use a selector). Exactly one of `jobIds` and `selector` must be set.
    // An atomic list: server-side apply then tracks it as one field, not 10,000 (which made
    // every status write of a large run cost ~0.35 s of API-server time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 10000), inner(length(min = 1, max = 256)), extend("x-kubernetes-list-type" = "atomic"))]
    pub job_ids: Option<Vec<String>>,
    /// A server-side filter over the source state's set: jobs that finished before the run started (and match every filter given) are retried, oldest first, up to maxJobs. Exactly one of `jobIds` and `selector` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Reset the job's attempts-made counter, as BullMQ's `resetAttemptsMade` retry option does.
    #[serde(default)]
    pub reset_attempts_made: bool,
    /// Reset the job's attempts-started counter, as BullMQ's `resetAttemptsStarted` retry option does.
    #[serde(default)]
    pub reset_attempts_started: bool,
    /// Plan and report what would be retried; change nothing in Redis.
    #[serde(default)]
    pub dry_run: bool,
    /// Pace of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Pause (true) or resume (false) the run. Stops between batches, never halfway through a job. The only field that may change after creation.
    #[serde(default)]
    pub suspend: bool,
    /// Identity of the run for exactly-once retries; default "<namespace>/<name>". Every job is retried at most once per run key, even across re-created objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub run_key: Option<String>,
    /// Why the run is asked for (at most 256 characters): shown in `kubectl get jr -o wide`, in the run's Events and in each retried job's audit line (`audit.jobLog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
    /// What the run records about itself where BullMQ users look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
}

/// Where a run leaves its trace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    /// Append one line to each retried job's BullMQ log (`Job.getLogs`, bull-board, Taskforce), in the same atomic Redis call as its retry, exactly as BullMQ's `Job.log` appends (the job's `keepLogs` trims it): who retried it (run, run key, requester), why (`reason`) and what the retry erased (the previous failedReason or returnvalue cut to 200 bytes, finishedOn, and the attempts counters a reset flag clears). Off unless set; a dry run and a skipped job get no line.
    #[serde(default)]
    pub job_log: bool,
}

/// A BullMQ queue.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(cel)]
#[serde(rename_all = "camelCase")]
pub struct QueueRef {
    /// The BullMQ queue name; must not contain ':'.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("!self.contains(':')").message("queue.name must not contain ':' (BullMQ queue names cannot contain colons)"))]
    pub name: String,
    /// The BullMQ key prefix; default "bull". Use a hash tag such as "{bull}" on Redis Cluster.
    #[serde(default = "default_prefix")]
    #[schemars(length(min = 1, max = 256))]
    pub prefix: String,
    /// The BullMQ version the queue's workers run, e.g. "5.81.5", or the Python client's as "python:3.4.4"; overrides the version the queue records in its meta hash (BullMQ 5.20.0 and later record it; the Python client never does). Empty means: detect, and fail with reason VersionUnknown when the queue records none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 64),
        regex(pattern = r"^$|^(python:)?v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$")
    )]
    pub bullmq_version: Option<String>,
}

fn default_prefix() -> String {
    "bull".to_string()
}

/// How to connect to Redis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    cel,
    validation = Rule::new("(has(self.mode) && self.mode == 'sentinel') == (has(self.sentinelMasterName) && self.sentinelMasterName != '')").message("sentinelMasterName must be set when mode is sentinel, and only then")
)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// The Secret, in the JobRetry's namespace, holding the Redis URL (redis:// or rediss:// for TLS; user:password@ supported). An optional key `ca.crt` in the same Secret is a CA certificate (PEM) to trust for rediss:// (standalone, cluster).
    pub secret_ref: SecretKeyRef,
    /// Redis deployment kind: standalone (default), cluster or sentinel.
    #[serde(default)]
    pub mode: ConnectionMode,
    /// The Sentinel master group name; required when mode is sentinel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub sentinel_master_name: Option<String>,
}

/// A key of a Secret in the JobRetry's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret whose value is the Redis URL; default "url".
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "url".to_string()
}

/// Redis deployment kind.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "camelCase")]
pub enum ConnectionMode {
    /// A single Redis server (or a primary behind a stable address).
    #[default]
    Standalone,
    /// Redis Cluster; the queue prefix should be a hash tag such as "{bull}".
    Cluster,
    /// Redis Sentinel; the URL names a sentinel, `sentinelMasterName` the master group.
    Sentinel,
}

/// The BullMQ state jobs are retried from.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "camelCase")]
pub enum SourceState {
    /// The queue's `failed` set.
    #[default]
    Failed,
    /// The queue's `completed` set.
    Completed,
}

impl SourceState {
    /// The BullMQ key suffix and event `prev` value of this state.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Failed => "failed",
            SourceState::Completed => "completed",
        }
    }
}

/// A server-side filter over the jobs of the source state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.finishedAfter) || !has(self.finishedBefore) || self.finishedAfter < self.finishedBefore").message("selector.finishedAfter must be before selector.finishedBefore")
)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// Glob patterns on the whole job name (`*` any run of characters, `?` one character); a job matches if any pattern matches. Every other character stands for itself (no escapes, no classes). Matching is linear in the name's length for each pattern, bounded per Redis call: a job whose name or failedReason is too large to match within one call (see status.selection.unexamined) is skipped and counted, never retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 256)))]
    pub names: Option<Vec<String>>,
    /// Only jobs whose failedReason contains this text (plain, case-sensitive); only with state failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub failed_reason_contains: Option<String>,
    /// Only jobs that finished (finishedOn, the job's score in the state's set) at or after this time (RFC 3339). finishedOn is a whole number of milliseconds, so a time with a finer fraction is rounded up to the next millisecond, which selects exactly the same jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_after: Option<Time>,
    /// Only jobs that finished before this time (RFC 3339); a finer fraction than a millisecond is rounded up to the next millisecond, which selects exactly the same jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_before: Option<Time>,
    /// Hard cap on the number of matched jobs: the run takes the oldest matches first and stops at this many (default 10000, at most 100000000).
    #[serde(default = "default_max_jobs")]
    #[schemars(range(min = 1, max = 100000000))]
    pub max_jobs: u64,
}

fn default_max_jobs() -> u64 {
    MAX_JOB_IDS as u64
}

/// Pace of a run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Maximum jobs retried per second; 0 means unlimited.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub jobs_per_second: u32,
}

/// Observed state of a JobRetry run. The status stays under 256 KiB serialized: beyond, job rows are dropped from the end (jobsTruncated; the counts stay exact), then the preview's least frequent values.
// The schema defaults `status` to `{observedGeneration: 0}` (the API server fills it in on
// every read until the operator writes one): a JobRetry the operator has not seen yet then
// reads as "generation not observed", so kstatus (Flux) says InProgress instead of Current.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {}))]
pub struct JobRetryStatus {
    /// The spec generation this status describes; 0 until the operator has seen the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 0))]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Suspended, Succeeded, PartiallySucceeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The run key in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_key: Option<String>,
    /// Who asked for the run, as the API server authenticated them (the `jobretry.io/requester` annotation recorded at admission; a policy's run: its policy's), frozen when the run is first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// The BullMQ version whose semantics the run follows, as detected or given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bullmq_version: Option<String>,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Jobs selected: ids given, or selector matches up to maxJobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<u64>,
    /// Jobs handled so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed: Option<u64>,
    /// Jobs moved back to waiting (or prioritized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried: Option<u64>,
    /// Processed jobs not retried because BullMQ's retry does not apply: NotFound, NotInState or AlreadyProcessed; and, in a policy's run, Parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
    /// Processed jobs whose retry Redis refused (Error rows); nothing was changed for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// Progress of a selector run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<SelectionStatus>,
    /// A JobRetryPolicy's run: matched jobs (parked ones aside) that an earlier run of the same policy had retried, counted in the same Redis call as the run's retries; what the policy's loop guard judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refailed: Option<u64>,
    /// What a selector dry run found: what the real run would retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
    /// Exact number of processed jobs per result.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
    /// One row per processed job; beyond the row limit only non-success rows are kept, and rows are dropped from the end (jobsTruncated) while the status would exceed 256 KiB.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    pub jobs: Vec<JobResultRow>,
    /// True when `jobs` omits rows: the run exceeded the row limit, or the status its 256 KiB.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jobs_truncated: bool,
    /// Latest observations of the run's state (Ready, Reconciling, Stalled, Complete, Failed, Suspended). A message is at most 1024 bytes (a longer one, e.g. quoting Redis, is cut at a character boundary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Progress of a selector run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SelectionStatus {
    /// Only jobs that finished before this time (millisecond precision) are candidates: the selector's finishedBefore, or the time the operator first saw the object if earlier. Frozen then, and kept across waits, restarts and suspends; a re-created object with the same run key goes on with its first bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_bound: Option<MicroTime>,
    /// Jobs of the source state examined so far.
    #[serde(default)]
    pub scanned: u64,
    /// An estimate of the jobs left to examine in the window.
    #[serde(default)]
    pub remaining: u64,
    /// Jobs skipped without being examined, never retried: their key is not a hash while a filter must read it, or their name or failedReason is too large to match within one bounded Redis call (a failedReason searched over 128,000 bytes, a name or failedReason over 1 MiB, a name whose match needs more than 8,000 matcher steps). A run with unexamined jobs ends PartiallySucceeded and says so in its Complete condition. Retry them by id if they are wanted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unexamined: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a selector dry run found.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// Jobs the selector matches (up to maxJobs): what the real run would retry.
    #[serde(default)]
    pub matched: u64,
    /// finishedOn of the oldest match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<Time>,
    /// finishedOn of the newest match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<Time>,
    /// The 10 most frequent job names among the matches (each at most 200 bytes), with their counts; fewer while the status would exceed 256 KiB.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub names: Vec<ValueCount>,
    /// The 10 most frequent failed reasons among the matches (each at most 200 bytes), with their counts; fewer while the status would exceed 256 KiB.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub reasons: Vec<ValueCount>,
}

/// A value and how many matches have it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ValueCount {
    /// A job name or failed reason, at most 200 bytes: a longer one is cut at a character boundary (never inside a UTF-8 sequence).
    pub value: String,
    /// How many matches have it.
    pub count: u64,
}

/// The result of one job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobResultRow {
    /// The BullMQ job id.
    pub id: String,
    /// Retried, WouldRetry, NotFound, NotInState, AlreadyProcessed, Error or Parked.
    pub result: String,
    /// BullMQ's result code where BullMQ defines one (1, -1, -3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// Why the job was not retried; at most 512 bytes (a longer message from Redis is cut at a character boundary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl JobRetry {
    /// Who asked for the run: the [`REQUESTER_ANNOTATION`] recorded at admission.
    pub fn requester(&self) -> Option<&str> {
        recorded_requester(&self.metadata)
    }

    /// Whether each retried job gets an audit line (`spec.audit.jobLog`).
    pub fn audits(&self) -> bool {
        self.spec.audit.as_ref().is_some_and(|a| a.job_log)
    }

    /// The run key: `spec.runKey`, else `<namespace>/<name>`.
    pub fn run_key(&self) -> String {
        let given = self.spec.run_key.as_deref().filter(|k| !k.is_empty());
        given.map_or_else(
            || {
                let ns = self.metadata.namespace.as_deref().unwrap_or_default();
                let name = self.metadata.name.as_deref().unwrap_or_default();
                format!("{ns}/{name}")
            },
            str::to_string,
        )
    }
}

/// A run's phase (`status.phase`).
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
pub enum Phase {
    Pending,
    Running,
    Suspended,
    Succeeded,
    PartiallySucceeded,
    Failed,
}

impl Phase {
    /// The phase as status shows it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the phase ends the run for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::PartiallySucceeded | Phase::Failed
        )
    }

    /// The phase of a status, if it has a known one.
    pub fn of(status: Option<&JobRetryStatus>) -> Option<Phase> {
        status?.phase.as_deref()?.parse().ok()
    }
}

/// Condition types.
pub mod condition {
    pub const COMPLETE: &str = "Complete";
    pub const FAILED: &str = "Failed";
    pub const SUSPENDED: &str = "Suspended";
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
}

/// Condition reasons: the only place they are named (the README's troubleshooting table has
/// a row for each, `tests/readme.rs`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    strum::EnumIter,
    strum::IntoStaticStr,
    strum::EnumString,
)]
pub enum Reason {
    Succeeded,
    PartiallySucceeded,
    Progressing,
    Suspended,
    SecretInvalid,
    /// The API server forbids the operator to read the connection Secret (Stalled until
    /// granted: `rbac.secretNamespaces`, or a Role allowing `get` on Secrets there).
    SecretForbidden,
    RedisUnavailable,
    IncompatibleQueue,
    /// No BullMQ version is given or recorded by the queue (Failed, nothing touched).
    VersionUnknown,
    /// A spec option that the queue's BullMQ release does not have (Failed, nothing touched).
    IncompatibleOptions,
    /// A value in the queue's keys that the retry must parse is corrupt (Stalled until fixed).
    QueueDataInvalid,
    /// Redis refused the credentials or an ACL permission (Stalled until fixed).
    RedisAccessDenied,
    /// Redis refused the work in a way that cannot succeed as it is (Failed).
    RedisRefused,
    SelectorUnsupported,
    /// Another selector run holds the queue and state; this one waits for it to end.
    QueueBusy,
    LedgerConflict,
    /// The run's own state in Redis (its record) is missing or behind what its status says:
    /// the connection now reaches other data, or Redis lost acknowledged writes (Failed).
    RunStateLost,
    /// A policy's loop guard suspended it: too many of a run's jobs had been retried by an
    /// earlier run of the policy (condition Suspended, until the spec changes or a resume).
    RefailRateHigh,
    /// A policy's schedule or time zone passed the schema but cannot be evaluated (e.g. a
    /// reversed range): Stalled until the spec is fixed.
    ScheduleInvalid,
}

impl Reason {
    /// The reason as conditions and events show it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the reason is one of an error that holds a run (waiting or stalled).
    pub fn holds(self) -> bool {
        use Reason::*;
        !matches!(
            self,
            Succeeded | PartiallySucceeded | Progressing | Suspended | RefailRateHigh
        )
    }
}

/// The reasons of the operator's own Events besides the condition reasons of errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::EnumIter, strum::IntoStaticStr)]
pub enum EventReason {
    /// The run's queue opened for the first time.
    Started,
    /// Every job of the run is processed.
    Completed,
    Suspended,
}

/// A job's result in a status row (`status.jobs[].result`) and in `status.counts`.
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
pub enum JobResult {
    Retried,
    WouldRetry,
    NotFound,
    NotInState,
    AlreadyProcessed,
    Error,
    /// A policy's run: its policy's runs retried the job `maxRetriesPerJob` times already.
    Parked,
}

impl JobResult {
    /// The result as status shows it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether it counts as a success (neither skipped nor an error).
    pub fn is_success(self) -> bool {
        matches!(self, JobResult::Retried | JobResult::WouldRetry)
    }
}

pub mod cron;
pub mod policy;
pub mod reference;

#[cfg(test)]
mod tests;

/// The JobRetry CRD as the YAML committed under `crds/` and in the Helm chart.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    use kube::CustomResourceExt;
    let body = serde_norway::to_string(&JobRetry::crd())?;
    Ok(format!(
        "# Generated by `cargo run --bin crdgen`; do not edit by hand.\n{body}"
    ))
}
